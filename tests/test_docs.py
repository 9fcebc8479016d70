"""The documentation works: the README's example runs, links resolve, scripts run, and
nothing points outside the repository."""
import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from tf_holstein import datagen, models, physics, records
from tf_holstein.configs import ModelConfig, get_config

from test_models import SCALES, assert_states_close, random_state

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
ZOO_README = ROOT / "saved_models" / "README.md"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def readme_example() -> str:
    """The first Python block under the README's "Use a shipped model" heading."""
    section = README.read_text().split("## Use a shipped model", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 180
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first_block == ["pip install -e . && python -m tf_holstein.train --config shallow",
                           'pip install -e ".[test,docs]" && python -m pytest -q -n 2']


def test_readme_example_follows_the_exact_dynamics(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = readme_example()
    full_size = "L, steps = 16, 1200"
    assert full_size in code
    (tmp_path / "saved_models").symlink_to(ROOT / "saved_models")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code.replace(full_size, "L, steps = 16, 50"), "README example", "exec"),
         namespace)
    assert (tmp_path / "delta_rho.png").stat().st_size > 0
    exact, predicted = namespace["exact"][0], namespace["predicted"]["Delta_rho"][0].numpy()
    assert exact.shape == predicted.shape == (50,)
    # The shipped model's Delta_rho RMSE / std is 0.11 on fresh trajectories, from the
    # first steps on; a model that stood still would score about 1.
    assert np.sqrt(np.mean((predicted - exact) ** 2)) / exact.std() < 0.25


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(path.read_text())
            if not re.match(r"[a-z]+:", target)]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, ZOO_README, *DOCS],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert DOCS, "docs/ has no pages"
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        assert resolved.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading #{anchor} in {file}"


def test_nothing_points_outside_the_repository():
    files = [README, ZOO_README, *DOCS,
             *[p for folder in ("tf_holstein", "configs", "scripts", "pipelines")
               for p in (ROOT / folder).rglob("*.py")]]
    for path in files:
        text = path.read_text()
        for outside in ("../shared", "shared/SPEC", "shared/reference"):
            assert outside not in text, f"{path.relative_to(ROOT)} mentions {outside}"


def test_license_and_citation_name_this_version():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
    citation = (ROOT / "CITATION.cff").read_text()
    assert f'version: "{version}"' in citation
    assert "preferred-citation:" in citation


def test_the_faq_quotes_the_errors_as_the_code_words_them():
    """The FAQ answers error messages by their words: those words must still be the code's."""
    faq = " ".join((ROOT / "docs" / "faq.md").read_text().split())
    code = "".join(path.read_text() for folder in ("tf_holstein", "pipelines")
                   for path in (ROOT / folder).glob("*.py"))
    for words in ("model and dataset do not match: ", "the model was trained on L = ",
                  "already holds a dataset made with different parameters",
                  "is not the one the run trained on", "pass --allow_other_L to run it anyway",
                  "the model's signature only takes"):
        assert words in faq and words in code, words
    assert "(docs/faq.md)" in README.read_text()


def load_script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_median_gaps_vanish_between_identical_ensembles(monkeypatch):
    ensemble_gap = load_script("ensemble_gap", monkeypatch)
    x = np.tile(np.sin(0.3 * np.arange(60)), (8, 1))
    rng = np.random.default_rng(0)
    noisy = x + rng.normal(size=x.shape)
    gaps = ensemble_gap.median_gaps((x, noisy), 4, draws=5, max_lag=10, rng=rng)
    assert gaps[0] < 1e-12 < gaps[1]
    with pytest.raises(ValueError, match="need at least 10 series"):
        ensemble_gap.median_gaps((x,), 5, draws=1, max_lag=10, rng=rng)


def test_ensemble_gap_runs_at_a_tiny_size(monkeypatch):
    ensemble_gap = load_script("ensemble_gap", monkeypatch)
    out = ensemble_gap.main(["--config", "smoke_deep", "--n", "8", "--sizes", "2,4",
                             "--long_n", "4", "--long_steps", "24", "--block", "6",
                             "--window", "12", "--max_lag", "5", "--draws", "3"])
    assert set(out["sizes"]) == {2, 4} and set(out["windows"]) == {1, 13}
    assert out["rms_delta_Q"].shape == (4,)
    # |A| <= 1 for every lag, so two autocorrelations differ by at most 2.
    for gaps in [*out["sizes"].values(), *(w["gaps"] for w in out["windows"].values())]:
        assert np.all((gaps >= 0) & (gaps <= 2))


def test_quench_statistics_runs_at_a_tiny_size(monkeypatch, smoke_dataset):
    quench_statistics = load_script("quench_statistics", monkeypatch)
    out = quench_statistics.main(["--data", str(smoke_dataset), "--window", "4",
                                  "--power_steps", "6", "--lags", "0,2", "--max_lag", "5",
                                  "--sizes", "2,3", "--draws", "3"])[str(smoke_dataset)]
    assert out["A_Q"][0] == pytest.approx(1.0)  # A(0) = 1 by definition
    shares = out["power_share_pi_minus_2pi_over_L"] + out["power_share_pi"]
    assert 0 < shares <= 1 + 1e-12
    assert out["rms_delta_Q_first"] > 0 and min(out["sampling_floor"]) >= 0
    assert set(out["gaps_Q"]) == {2, 3}


def test_quench_statistics_gap_between_datasets(monkeypatch, smoke_dataset, tmp_path):
    quench_statistics = load_script("quench_statistics", monkeypatch)
    copy = tmp_path / "copy"
    shutil.copytree(smoke_dataset, copy)
    args = ["--window", "4", "--power_steps", "6", "--lags", "0", "--max_lag", "5",
            "--sizes", "2", "--draws", "1", "--gap"]
    other = datagen.generate(replace(get_config("smoke").data, seed=1), tmp_path / "seed1",
                             progress=False)
    gap = quench_statistics.main(["--data", str(smoke_dataset), str(copy), str(other),
                                  *args])["gap"]
    assert gap[str(smoke_dataset), str(copy)] == [0.0, 0.0]  # an ensemble lies 0 from itself
    # Another seed's trajectories: A(0) = 1 for both, so the gap lies in (0, 2].
    assert all(0 < g <= 2 for g in gap[str(smoke_dataset), str(other)])
    assert gap[str(copy), str(other)] == gap[str(smoke_dataset), str(other)]


def test_error_spectrum_finds_an_unreproduced_jitter(monkeypatch, tmp_path):
    error_spectrum = load_script("error_spectrum", monkeypatch)
    steps = np.arange(400)
    rng = np.random.default_rng(0)
    slow = np.sin(2 * np.pi * 0.02 * steps + rng.uniform(0, 6, size=(6, 1)))
    jitter = 0.1 * np.sin(2 * np.pi * 0.3 * steps + rng.uniform(0, 6, size=(6, 1)))
    np.savez(tmp_path / "order_parameters.npz", first_diverged_step=np.array([0] * 5 + [7]),
             truth_Delta_rho=slow + jitter, prediction_Delta_rho=slow,
             truth_Delta_Q=slow, prediction_Delta_Q=1.1 * slow)
    out = error_spectrum.main(["--traces", str(tmp_path / "order_parameters.npz"),
                               "--window", "100"])
    # The prediction misses exactly the jitter at 0.3 cycles per step, inside the band.
    rho = out["Delta_rho"]
    assert rho["error_power_share_in_band"] == pytest.approx(1.0, abs=1e-3)
    assert rho["error_over_truth_power_in_band"] == pytest.approx(1.0, abs=1e-3)
    assert rho["truth_power_share_in_band"] == pytest.approx(0.01, rel=0.05)  # 0.1^2 / 1
    # A 10% amplitude error of the slow wave: steady along the rollout, outside the band.
    q = out["Delta_Q"]
    assert q["rmse_over_std_per_window"] == pytest.approx([0.1] * 4, rel=0.1)
    assert q["error_power_share_in_band"] < 1e-3


def test_propagator_reach_is_local_at_no_time_and_spreads_with_it(monkeypatch):
    reach = load_script("propagator_reach", monkeypatch)
    np.testing.assert_allclose(reach.propagator_share(8, 0.0, 2), [1.0, 1.0, 1.0], atol=1e-12)
    short, long = reach.propagator_share(32, 0.64, 9), reach.propagator_share(32, 2.56, 9)
    assert np.all(np.diff(long) >= -1e-12) and long[-1] == pytest.approx(1.0, abs=1e-3)
    assert short[3] > 0.99 > 0.5 > long[3]  # the shallow and the deep quench's saved steps
    assert [reach.receptive_radius(3, n) for n in (1, 2, 4)] == [3, 5, 9]
    out = reach.main(["--config", "smoke_deep", "--max_radius", "3"])
    assert out["smoke_deep"]["shares"].shape == (4,)


def test_the_frozen_lattice_step_beats_the_identity_on_exact_data(monkeypatch, tmp_path):
    """On the deep quench's protocol (L = 8, short saved step), rho's exact evolution at a
    frozen lattice is much closer to the next stored state than keeping rho or hopping alone
    (the coupling's phases g Q dt are not small)."""
    reach = load_script("propagator_reach", monkeypatch)
    dataset = datagen.generate(get_config("smoke_deep").data, tmp_path, progress=False)
    out = reach.main(["--config", "smoke_deep", "--max_radius", "1", "--data", str(dataset),
                      "--split", "train", "--every", "1"])["one_step_rho_errors"]
    assert out["frozen_lattice"] < 0.5 * min(out["identity"], out["free_hopping"]), out


def test_energy_budget_parts_sum_to_the_energy_and_the_simulator_keeps_them(monkeypatch,
                                                                            tmp_path):
    budget = load_script("energy_budget", monkeypatch)
    dataset = datagen.generate(get_config("smoke_deep").data, tmp_path, progress=False)
    data = records.load_split(dataset, "test")
    g = data["meta"]["config"]["g_f"]
    states = {key: data[key] for key in records.STATE_KEYS}
    parts = budget.budget(states, g, [0, 6, 12])
    total = physics.energy(data["rho"].astype(np.complex128), data["Q"].astype(np.float64),
                           data["P"].astype(np.float64), g).numpy()[:, [0, 6, 12]].mean(0)
    np.testing.assert_allclose(sum(np.array(parts[key]) for key in physics.ENERGY_PARTS),
                               total, atol=1e-5 * np.abs(total).max())
    # The simulator restarted from the stored float32 states keeps each part to its rounding.
    out = budget.main(["--model", "exact", "--data", str(dataset), "--n", "2",
                       "--steps", "0,6,12"])
    for key in physics.ENERGY_PARTS:
        np.testing.assert_allclose(out["model"][key], out["truth"][key], atol=1e-4)


def test_apply_options_keeps_the_weights_and_changes_the_step(monkeypatch, tmp_path):
    """A model with reflection averaging applied post hoc has the source's weights and
    steps as a model built with it does; options that would change the weights are refused."""
    apply = load_script("apply_options", monkeypatch)
    keras.utils.set_random_seed(0)
    source = models.build_model(ModelConfig(kind="parc", channels=8, zero_init_output=False),
                                SCALES)
    source.save(tmp_path / "source.keras")
    apply.main([str(tmp_path / "source.keras"), str(tmp_path / "target.keras"),
                "reflection=true", "uniform_mode=true", "time_step=2.56"])
    target = keras.saving.load_model(tmp_path / "target.keras")
    built = models.build_model(ModelConfig(kind="parc", channels=8, zero_init_output=False,
                                           reflection=True, uniform_mode=True), SCALES,
                               time_step=2.56)
    built.set_weights(source.get_weights())
    state = random_state(2, 8)
    assert_states_close(target.step(state), built.step(state), atol=0)
    assert np.abs(target.step(state)["Q"].numpy() - source.step(state)["Q"].numpy()).max() > 1e-4
    with pytest.raises(SystemExit, match="channels would change the weights"):
        apply.main([str(tmp_path / "source.keras"), str(tmp_path / "x.keras"), "channels=4"])


def test_the_pareto_front_keeps_exactly_the_unbeaten_points(monkeypatch):
    frontier = load_script("frontier", monkeypatch)
    points = {"cheap_bad": {"cost": 1.0, "error": 0.5}, "mid": {"cost": 2.0, "error": 0.1},
              "dear_good": {"cost": 8.0, "error": 0.05}, "beaten": {"cost": 3.0, "error": 0.2},
              "tie": {"cost": 2.0, "error": 0.1}}
    assert frontier.pareto(points) == ["cheap_bad", "mid", "dear_good", "tie"]


@pytest.mark.slow
def test_frontier_evaluates_prices_and_resumes(monkeypatch, smoke_dataset, tmp_path):
    """Two baselines and a group of two: each evaluated with its cost, the group as its
    median and range, the table cheapest first; a second run reads the stored results."""
    frontier = load_script("frontier", monkeypatch)
    meta = records.read_meta(smoke_dataset)
    dt, time_step = meta["config"]["dt"], meta["time_step"]
    args = ["--data", str(smoke_dataset), "--out", str(tmp_path), "--model", "exact",
            "--model", f"trotter2:{time_step}", "--group",
            f"rk4=rk4:{dt},rk4:{2 * dt}", "--cost_batch", "4", "--cost_steps", "2",
            "--cost_repeats", "1", "--no-progress"]
    out = frontier.main(args)
    points = out["points"]
    assert set(points) == {"exact", f"trotter2:{time_step}", "rk4"}
    assert points["rk4"]["members"] == 2
    low, high = points["rk4"]["error_range"]
    assert low <= points["rk4"]["error"] <= high
    assert all(p["cost"] > 0 for p in points.values())
    assert set(out["pareto"]) <= set(points) and out["pareto"]
    cheapest = out["cheapest_within_bound"]
    if cheapest is not None:
        assert points[cheapest]["error"] <= out["bound"]
        assert all(p["cost"] >= points[cheapest]["cost"] for p in points.values()
                   if p["error"] is not None and p["error"] <= out["bound"])
    rows = (tmp_path / "frontier.md").read_text().splitlines()[2:]
    costs = [float(row.split("|")[3].replace(",", "")) for row in rows]
    assert costs == sorted(costs) and len(rows) == 3
    assert (tmp_path / "frontier.png").stat().st_size > 0
    stamp = (tmp_path / "exact" / "metrics.json").stat().st_mtime_ns
    assert frontier.main(args)["points"] == points  # resumed from the stored evaluations
    assert (tmp_path / "exact" / "metrics.json").stat().st_mtime_ns == stamp


def test_a_shipped_keras_model_loads_after_importing_the_package():
    """`import tf_holstein` registers the Keras classes that a `.keras` file names."""
    code = ("import keras, tf_holstein; "
            "m = keras.saving.load_model('saved_models/shallow_L16/model.keras'); "
            "print(type(m).__name__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("HolsteinCNN")


@pytest.mark.slow
def test_the_score_your_own_model_page_runs_and_scores(smoke_dataset, tmp_path, monkeypatch):
    """The page's NumPy rollout, from the netCDF of a test split, is accepted by the
    evaluator (every rollout starts at its stored state) and, being RK4 at a small step,
    follows the truth closely."""
    from tf_holstein import netcdf, scoring

    page = (ROOT / "docs" / "score-your-own-model.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "quickstart").symlink_to(smoke_dataset)
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    netcdf.export(smoke_dataset, tmp_path / "runs" / "quickstart" / "test.nc", split="test")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "score-your-own-model.md", "exec"), {})
    result = scoring.evaluate_predictions("runs/quickstart/my_model.npz", "data/quickstart",
                                          out_dir="runs/quickstart/my_model",
                                          progress=False)
    summary = result["summary"]
    assert summary["n_trajectories"] == 2 and summary["n_diverged"] == 0
    for name in ("Delta_rho", "Delta_Q"):
        assert summary[name]["median_rmse_over_std"] < 1e-2
