"""Evaluation: statistics against closed forms and NumPy, metrics against direct
computation, chunked and exported rollouts, divergence reporting, the command."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from float32 import kernel_tolerance
from tf_holstein import (baselines, climate, export, loading, metrics, models, near_pi, physics,
                         plots, records, report, rollout, scoring)
from tf_holstein.configs import ModelConfig, get_config

SMOKE = get_config("smoke")
FIGURES = ("snapshots.png", "order_parameters.png", "autocorrelation.png", "distributions.png",
           "spectra.png", "valid_time.png")
EPS32 = float(np.finfo(np.float32).eps)


def direct_autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """docs/physics.md written out: every average over the ensemble and over t."""
    x = np.asarray(x, np.float64)
    mean, mean_sq = x.mean(), (x * x).mean()
    T = x.shape[1]
    return np.array([(np.mean(x[:, :T - tau] * x[:, tau:]) - mean ** 2) / (mean_sq - mean ** 2)
                     for tau in range(max_lag + 1)])


@pytest.fixture(scope="module")
def truth(smoke_dataset):
    return records.load_split(smoke_dataset, "test")


def export_workdir(model: models.HolsteinModel, workdir, smoke_meta) -> str:
    """A training workdir as train.py leaves it: <workdir>/export/{saved_model,model.keras}."""
    export.export_model(model, workdir / "export",
                        metadata=export.dataset_metadata(smoke_meta))
    return workdir


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory, smoke_meta):
    """An untrained CNN: its output conv starts at zero, so every step is the identity."""
    return export_workdir(models.build_model(ModelConfig(), smoke_meta["scales"]),
                          tmp_path_factory.mktemp("identity"), smoke_meta)


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory, smoke_meta, perturbed_cnn):
    """The perturbed CNN and its training-style workdir."""
    return perturbed_cnn, export_workdir(perturbed_cnn, tmp_path_factory.mktemp("perturbed"),
                                         smoke_meta)


# -- statistics -------------------------------------------------------------------------------
def ar1_ensemble(rng: np.random.Generator, n: int, T: int, phi: float = 0.95) -> np.ndarray:
    """n series x_t = phi x_{t-1} + white noise, each started in the stationary law."""
    x = np.empty((n, T))
    x[:, 0] = rng.normal(size=n) / np.sqrt(1 - phi ** 2)
    for t in range(1, T):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=n)
    return x


def test_autocorrelation_of_an_ar1_ensemble_is_phi_to_the_tau():
    phi = 0.8
    x = ar1_ensemble(np.random.default_rng(0), 400, 2000, phi)
    a = metrics.autocorrelation(3.0 + x, 30)  # an offset: the pooled mean must remove it
    assert a.shape == (31,)
    assert a[0] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(a, phi ** np.arange(31), atol=0.02)


def test_sampling_floor_predicts_the_spread_of_independent_ensembles():
    rng = np.random.default_rng(1)
    max_lag, n = 60, 16
    observed = np.median([np.abs(metrics.autocorrelation(ar1_ensemble(rng, n, 300), max_lag)
                                 - metrics.autocorrelation(ar1_ensemble(rng, n, 300), max_lag)
                                 ).max() for _ in range(40)])
    floors = [metrics.autocorrelation_sampling_floor(ar1_ensemble(rng, size, 300), max_lag,
                                                      draws=100) for size in (n, 4 * n)]
    # Bootstrapping one ensemble of n gives the median gap between two independent ones ...
    assert 0.7 * observed < floors[0] < 1.4 * observed, (floors[0], observed)
    # ... and four times the series halve it.
    assert 0.35 < floors[1] / floors[0] < 0.7, floors
    x = ar1_ensemble(rng, n, 300)
    assert metrics.autocorrelation_sampling_floor(x, max_lag, seed=3) == \
        metrics.autocorrelation_sampling_floor(x, max_lag, seed=3)


def test_autocorrelation_equals_the_direct_numpy_formula():
    """Non-stationary series with different means per series: there the pooled definition
    differs from TFP's per-series normalisation, which the result must not follow."""
    rng = np.random.default_rng(1)
    t = np.arange(60)
    x = (rng.normal(size=(5, 1)) + 0.02 * t + np.sin(0.3 * t + rng.uniform(0, 6, (5, 1)))
         + 0.1 * rng.normal(size=(5, 60)))
    expected = direct_autocorrelation(x, 25)
    np.testing.assert_allclose(metrics.autocorrelation(x, 25), expected, rtol=1e-10,
                               atol=1e-12)
    per_series = tf.reduce_mean(tfp.stats.auto_correlation(x, max_lags=25), axis=0).numpy()
    assert np.max(np.abs(per_series - expected)) > 0.05
    # max_lag is capped at T - 1.
    np.testing.assert_allclose(metrics.autocorrelation(x[:, :10], 250),
                               direct_autocorrelation(x[:, :10], 9), rtol=1e-10, atol=1e-12)


def test_ensemble_bands_equal_numpy_percentiles():
    x = np.random.default_rng(2).normal(size=(37, 50))
    bands = metrics.ensemble_bands(x, (10, 50, 90))
    np.testing.assert_allclose(bands, np.percentile(x, [10, 50, 90], axis=0), rtol=1e-12)


def test_state_statistics_match_hand_computed_values():
    rho = np.diag([0.6, 0.4, 0.7, 0.3]).astype(np.complex128)
    rho[0, 1], rho[1, 0] = 0.1 + 0.2j, 0.1 - 0.1j  # not Hermitian: rho_01 - conj(rho_10) = 0.1i
    Q = np.array([1.0, 2.0, 3.0, 5.0])
    stats = metrics.state_statistics(rho, Q, np.zeros(4), g=0.8)
    assert stats["Delta_rho"] == pytest.approx((-0.6 + 0.4 - 0.7 + 0.3) / 4)
    assert stats["Delta_Q"] == pytest.approx((-1 + 2 - 3 + 5) / 4)
    assert stats["trace"] == pytest.approx(2.0)
    assert stats["hermiticity"] == pytest.approx(0.1)
    assert stats["purity"] == pytest.approx(0.36 + 0.16 + 0.49 + 0.09 + 0.05 + 0.02)
    assert stats["energy"] == pytest.approx(float(physics.energy(rho, Q, np.zeros(4), 0.8)))
    delta_rho, delta_q = physics.order_parameters(tf.constant(rho), tf.constant(Q))
    assert float(delta_rho) == pytest.approx(-0.15) and float(delta_q) == pytest.approx(0.75)


def test_out_of_range_flags_non_finite_and_large_values():
    limits = {"rho": 1.0, "Q": 1.0, "P": 1.0}
    rho = np.zeros((5, 2, 2), np.complex64)
    Q, P = np.zeros((5, 2), np.float32), np.zeros((5, 2), np.float32)
    rho[1, 0, 1] = 2j  # imaginary part too large
    Q[2, 1] = np.nan
    P[3, 0] = -np.inf
    Q[4, 0] = 0.99
    assert metrics.out_of_range({"rho": rho, "Q": Q, "P": P}, limits).tolist() == \
        [False, True, True, True, False]


def synthetic_collected(first_diverged: list[int]) -> metrics.Collected:
    """Three trajectories of 40 steps; diverged ones turn NaN from their first bad step."""
    rng = np.random.default_rng(3)
    n, steps = len(first_diverged), 40
    t = np.arange(1, steps + 1)
    truth = {"Delta_rho": 0.1 + 0.02 * np.sin(0.4 * t + rng.uniform(0, 6, (n, 1))),
             "Delta_Q": 0.2 + 0.03 * np.cos(0.3 * t + rng.uniform(0, 6, (n, 1))),
             "energy": np.full((n, steps), -4.0), "trace": np.full((n, steps), 2.0 + 0j),
             "hermiticity": np.zeros((n, steps)), "purity": np.full((n, steps), 1.5)}
    prediction = {key: value + 0.01 * rng.normal(size=value.shape) for key, value in
                  truth.items()}
    mse = {key: rng.uniform(0, 1e-4, (n, steps)) for key in records.STATE_KEYS}
    for k, first in enumerate(first_diverged):
        if first:
            for values in (*prediction.values(), *mse.values()):
                values[k, first - 1:] = np.nan
    initial = {"energy": np.full(n, -4.0), "purity": np.full(n, 1.5)}
    return metrics.Collected(index=np.arange(n), initial=initial, truth=truth,
                              prediction=prediction, mse=mse,
                              first_diverged=np.array(first_diverged), snapshots={},
                              seconds=1.0)


def test_metrics_use_non_diverged_trajectories_and_count_the_rest():
    collected = synthetic_collected([0, 7, 0])
    result = metrics.compute_metrics(collected, L=4, max_lag=10)
    summary = result["summary"]
    assert (summary["n_trajectories"], summary["n_diverged"], summary["n_kept"]) == (3, 1, 2)
    assert result["per_trajectory"]["first_diverged_step"] == [None, 7, None]
    kept = [0, 2]
    for name in metrics.ORDER_PARAMETERS:
        truth, pred = collected.truth[name], collected.prediction[name]
        ratio = np.sqrt(np.mean((pred - truth) ** 2, axis=1)) / truth.std(axis=1)
        assert summary[name]["median_rmse_over_std"] == pytest.approx(np.median(ratio[kept]))
        assert summary[name]["median_rmse_over_std_counting_diverged"] == pytest.approx(
            np.median([ratio[0], ratio[2], np.inf]))
        np.testing.assert_allclose(result["autocorrelation"][name]["prediction"],
                                   direct_autocorrelation(pred[kept], 10), rtol=1e-9)
        np.testing.assert_allclose(result["autocorrelation"][name]["truth"],
                                   direct_autocorrelation(truth, 10), rtol=1e-9)
        np.testing.assert_allclose(result["per_step"]["rmse"][name],
                                   np.sqrt(np.mean((pred[kept] - truth[kept]) ** 2, axis=0)))
    np.testing.assert_allclose(result["per_step"]["rmse"]["Q"],
                               np.sqrt(collected.mse["Q"][kept].mean(axis=0)))
    json.dumps(report.to_json(result), allow_nan=False)  # NaN never reaches the file
    # Model selection: the diverged trajectory counts as infinitely wrong in the median and
    # fails the climate test outright.
    assert summary["selection"] == {
        "rollout": sum(summary[name]["median_rmse_over_std_counting_diverged"]
                       for name in metrics.ORDER_PARAMETERS),
        "autocorrelation": np.inf}
    clean = metrics.compute_metrics(synthetic_collected([0, 0, 0]), L=4, max_lag=10)["summary"]
    assert clean["selection"]["autocorrelation"] == max(
        clean[name]["autocorrelation_max_abs_diff"] for name in metrics.ORDER_PARAMETERS)


def test_metrics_when_every_trajectory_diverged_are_none_not_a_crash():
    result = metrics.compute_metrics(synthetic_collected([1, 3, 40]), L=4, max_lag=10)
    summary = report.to_json(result)["summary"]
    assert summary["n_kept"] == 0
    assert summary["Delta_rho"]["median_rmse_over_std"] is None
    assert summary["Delta_rho"]["median_rmse_over_std_counting_diverged"] is None
    assert summary["Delta_Q"]["autocorrelation_max_abs_diff"] is None
    assert summary["physics"]["prediction"]["energy_rel_drift"] is None


# -- rollouts against the stored trajectories -------------------------------------------------
def test_identity_model_metrics_equal_a_direct_computation(identity_run, smoke_dataset, truth):
    """The identity model predicts the initial state forever: every error is the truth's
    distance from its start, computed here straight from load_split."""
    result = scoring.evaluate(identity_run, smoke_dataset, progress=False)
    out = identity_run / "eval-test"  # the default: inside the workdir
    assert all((out / name).stat().st_size > 0 for name in (*FIGURES, "metrics.json"))
    assert json.loads((out / "metrics.json").read_text()) == report.to_json(result)
    assert result["run"]["model_format"] == "saved_model"
    T = truth["Q"].shape[1] - 1
    for key in records.STATE_KEYS:
        error = np.abs(truth[key][:, 1:] - truth[key][:, :1]) ** 2
        axes = (0, 2, 3) if key == "rho" else (0, 2)
        np.testing.assert_allclose(result["per_step"]["rmse"][key],
                                   np.sqrt(error.mean(axis=axes)), rtol=1e-5, atol=1e-9)
    true_rho, true_q = (np.asarray(x) for x in physics.order_parameters(
        truth["rho"].astype(np.complex128), truth["Q"].astype(np.float64)))
    for name, values in (("Delta_rho", true_rho), ("Delta_Q", true_q)):
        series = values[:, 1:]
        ratio = np.sqrt(np.mean((values[:, :1] - series) ** 2, axis=1)) / series.std(axis=1)
        assert result["summary"][name]["median_rmse_over_std"] == pytest.approx(
            np.median(ratio), rel=1e-5)
        np.testing.assert_allclose(result["autocorrelation"][name]["truth"],
                                   direct_autocorrelation(series, T - 1), rtol=1e-6)
    assert result["summary"]["n_diverged"] == 0
    # The prediction is the initial state itself: no drift of any invariant.
    assert result["summary"]["physics"]["prediction"]["energy_rel_drift"] == 0.0
    assert result["summary"]["physics"]["truth"]["energy_rel_drift"] < 1e-5
    traces = np.load(out / "order_parameters.npz")
    np.testing.assert_allclose(traces["truth_Delta_Q"], true_q[:, 1:], rtol=1e-6)


def test_chunked_keras_and_saved_model_rollouts_agree_with_the_model(perturbed, smoke_dataset,
                                                                     truth, tmp_path):
    model, workdir = perturbed
    steps = 10
    keras_metrics = scoring.evaluate(workdir / "export" / "model.keras", smoke_dataset,
                                     steps=steps, chunk=3, batch_size=1,
                                     out_dir=tmp_path / "keras", snapshot_steps=[0, 4, 10],
                                     progress=False)
    saved_metrics = scoring.evaluate(workdir / "export" / "saved_model", smoke_dataset,
                                     steps=steps, out_dir=tmp_path / "saved", progress=False)
    assert keras_metrics["run"]["model_format"] == "keras"
    predicted = model.rollout({key: truth[key][:, 0] for key in records.STATE_KEYS}, steps)
    expected_q = np.sqrt(np.mean((predicted["Q"].numpy() - truth["Q"][:, 1:steps + 1]) ** 2,
                                 axis=(0, 2)))
    # Each run has its kernels (batch sizes 1, 2 and 32; XLA or TensorFlow's): predictions
    # differ by kernel_tolerance at most, an RMSE by as much, an RMSE / std by that over std.
    shift = {key: kernel_tolerance(float(np.abs(predicted[key]).max()), steps)
             for key in ("rho", "Q")}
    for result in (keras_metrics, saved_metrics):
        np.testing.assert_allclose(result["per_step"]["rmse"]["Q"], expected_q, rtol=0,
                                   atol=shift["Q"])
        assert result["summary"]["steps"] == steps
    for name, key in zip(metrics.ORDER_PARAMETERS, ("rho", "Q")):
        std = np.min(keras_metrics["per_trajectory"][f"{name}_std"])
        assert keras_metrics["summary"][name]["median_rmse_over_std"] == pytest.approx(
            saved_metrics["summary"][name]["median_rmse_over_std"], rel=0, abs=shift[key] / std)


def test_a_diverging_model_is_reported_not_crashed_on(smoke_dataset, smoke_meta, truth, tmp_path):
    """Only P grows, by a constant b * delta_P scale per step: it leaves the range
    |P| <= 10 * P scale at a step computable by hand, finite all along."""
    model = models.build_model(ModelConfig(), smoke_meta["scales"])
    b = 20.0
    model.cnn.network.output_conv.bias.assign([0.0, 0.0, 0.0, b])
    export.export_model(model, tmp_path / "export")
    increment = np.float32(b) * np.float32(smoke_meta["scales"]["delta_P"])
    limit = metrics.DIVERGENCE_FACTOR * smoke_meta["scales"]["P"]
    t = np.arange(1, smoke_meta["T"] + 1)[None, :, None]
    beyond = np.abs(truth["P"][:, :1] + t * increment).max(axis=-1) > limit
    expected = beyond.argmax(axis=1) + 1
    assert 1 < expected.min() and expected.max() < smoke_meta["T"]  # diverges mid-rollout
    result = scoring.evaluate(tmp_path / "export" / "model.keras", smoke_dataset,
                              out_dir=tmp_path / "eval", chunk=4, progress=False)
    assert result["per_trajectory"]["first_diverged_step"] == expected.tolist()
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["summary"]["n_diverged"] == 2 and saved["summary"]["n_kept"] == 0
    assert saved["summary"]["Delta_Q"]["median_rmse_over_std"] is None
    assert all((tmp_path / "eval" / name).exists() for name in FIGURES)


def test_bad_requests_are_refused_with_reasons(identity_run, smoke_dataset, smoke_meta, tmp_path):
    cases = [
        (dict(steps=smoke_meta["T"] + 1), r"steps must be in 1\.\.12"),
        (dict(n_traj=3), r"n_traj must be in 1\.\.2 \(the test split"),
        (dict(split="holdout"), "unknown split 'holdout'"),
        (dict(snapshot_steps=[0, 99]), r"snapshot steps must lie in 0\.\.12"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            scoring.evaluate(identity_run, smoke_dataset, out_dir=tmp_path, progress=False,
                             **kwargs)
    with pytest.raises(FileNotFoundError, match="no model at"):
        scoring.evaluate(tmp_path / "nothing", smoke_dataset, progress=False)
    other = export_workdir(models.build_model(ModelConfig(), smoke_meta["scales"]), tmp_path / "run",
                           {**smoke_meta, "config": {**smoke_meta["config"], "g_f": 1.0},
                            "time_step": 2.56})
    with pytest.raises(ValueError, match="predicts steps of 2.56 .* g_f = 1"):
        scoring.evaluate(other, smoke_dataset, progress=False)


def test_the_exact_simulator_reproduces_the_stored_truth(smoke_dataset, tmp_path):
    """--model exact restarts RK4 from the stored float32 states: at L = 8 over 12 steps the
    rounding stays at float32 level, and every metric sits at its floor."""
    result = scoring.evaluate(baselines.EXACT, smoke_dataset, out_dir=tmp_path, chunk=5,
                              progress=False)
    summary = result["summary"]
    assert result["run"]["model_format"] == "exact" and summary["n_diverged"] == 0
    for name in metrics.ORDER_PARAMETERS:
        assert summary[name]["median_rmse_over_std"] < 1e-5, summary[name]
        assert summary[name]["autocorrelation_max_abs_diff"] < 1e-3  # 12 steps: ill-conditioned
    assert max(summary["state_rmse"].values()) < 1e-7, summary["state_rmse"]
    with pytest.raises(ValueError, match="--model exact has no directory to write into"):
        scoring.evaluate(baselines.EXACT, smoke_dataset, progress=False)


def test_the_split_step_converges_on_the_stored_truth(tmp_path):
    """--model split:N rolls out the weight-free split step: its state error falls about
    fourfold from 1 to 2 parts (second order), and on a dataset made for testing only,
    which records no training scales, it is judged by the truth's own range."""
    from tf_holstein import datagen
    from tf_holstein.configs import get_config

    data = get_config("smoke").data
    test_only = datagen.generate(dataclasses.replace(data, n_train=0, n_val=0),
                                 tmp_path / "data", progress=False)
    errors = []
    for parts in (1, 2):
        result = scoring.evaluate(f"{baselines.SPLIT}:{parts}", test_only,
                                  out_dir=tmp_path / str(parts), progress=False)
        assert result["run"]["model_format"] == f"split:{parts}"
        assert result["summary"]["n_diverged"] == 0
        errors.append(max(result["summary"]["state_rmse"].values()))
    assert errors[1] < 1e-3 and 3 < errors[0] / errors[1] < 5, errors
    with pytest.raises(ValueError, match="expected N, a whole number of parts"):
        scoring.evaluate("split:two", test_only, out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("kind", ["saved_model", "keras", "exact", "rk4", "trotter2",
                                  "trotter4:float32", "split"])
def test_the_cost_is_recorded_for_every_kind_of_model(kind, identity_run, smoke_dataset,
                                                      smoke_meta, tmp_path):
    """metrics.json holds the rollout's cost with the settings it depends on, for learned
    models and baselines alike, and the headline (so every comparison table) shows it."""
    time_step, dt = smoke_meta["time_step"], smoke_meta["config"]["dt"]
    model, precision = {
        "saved_model": (identity_run, "float32"),
        "keras": (identity_run / "export" / "model.keras", "float32"),
        "exact": (baselines.EXACT, "float64"),
        "rk4": (f"rk4:{2 * dt}", "float64"),
        "trotter2": (f"trotter2:{time_step / 2}", "float64"),
        "trotter4:float32": (f"trotter4:{time_step}:float32", "float32"),
        "split": ("split:1", "float64")}[kind]
    result = scoring.evaluate(model, smoke_dataset, out_dir=tmp_path, cost_batch=5,
                              cost_steps=3, cost_repeats=2, progress=False)
    cost = json.loads((tmp_path / "metrics.json").read_text())["cost"]
    assert cost == report.to_json(result["cost"])
    assert (cost["batch"], cost["steps"], cost["repeats"], cost["precision"]) == \
        (5, 3, 2, precision)
    low, high = cost["us_per_trajectory_step_range"]
    assert 0 < low <= cost["us_per_trajectory_step"] <= high
    assert cost["cpu"] and cost["intra_op_threads"] >= 1 and cost["inter_op_threads"] >= 1
    assert report.headline(result)["cost_us_per_trajectory_step"] == \
        cost["us_per_trajectory_step"]


def test_no_cost_without_timed_rollouts(identity_run, smoke_dataset, tmp_path):
    result = scoring.evaluate(identity_run, smoke_dataset, out_dir=tmp_path, cost_repeats=0,
                              progress=False)
    assert result["cost"] is None
    assert "cost_us_per_trajectory_step" not in report.headline(result)


def test_model_paths_resolve_to_the_shipped_artefact(identity_run):
    export_dir = identity_run / "export"
    assert loading.resolve_model_path(identity_run) == export_dir / "saved_model"
    assert loading.resolve_model_path(export_dir) == export_dir / "saved_model"
    assert loading.resolve_model_path(export_dir / "model.keras") == export_dir / "model.keras"
    assert report.default_out_dir(export_dir / "saved_model", "val") == export_dir / "eval-val"
    assert report.default_out_dir(identity_run, "test") == identity_run / "eval-test"
    # A shipped model's folder is itself a SavedModel: its results go inside it.
    shipped = Path("saved_models/shallow_L16")
    assert report.default_out_dir(shipped, "test") == shipped / "eval-test"



def test_figures_name_their_model_and_dataset(identity_run, smoke_dataset, tmp_path,
                                              monkeypatch):
    """Issue 37 item 13: every figure an evaluation writes is titled with its model and its
    dataset, so that a figure read alone says what it shows."""
    titles = {}

    def kept_title(fig, path):
        titles[Path(path).name] = fig.get_suptitle()
        plots.plt.close(fig)

    monkeypatch.setattr(plots, "save_figure", kept_title)
    result = scoring.evaluate(identity_run, smoke_dataset, out_dir=tmp_path, cost_repeats=0,
                              progress=False)
    n = result["run"]["n_trajectories"]
    assert titles == dict.fromkeys(
        FIGURES, f"{identity_run.name} on {smoke_dataset.name} (test, {n} trajectories)")
    assert report.figure_title({**result["run"], "model": "exact"}).startswith("exact on ")


def test_metrics_json_records_no_machine_local_path(identity_run, smoke_dataset, tmp_path,
                                                    monkeypatch):
    """metrics.json's run section names the model and the data relative to the current
    directory when it holds them, else by their folders: never an absolute path."""
    saved_model = identity_run / "export" / "saved_model"
    monkeypatch.chdir(os.path.commonpath([identity_run, smoke_dataset]))
    scoring.evaluate(identity_run, smoke_dataset, out_dir=tmp_path / "inside", steps=2,
                     cost_repeats=0, progress=False)
    run = json.loads((tmp_path / "inside" / "metrics.json").read_text())["run"]
    assert run["model"] == os.path.relpath(saved_model)
    assert run["data"] == os.path.relpath(smoke_dataset)
    monkeypatch.chdir(tmp_path)  # holds neither
    scoring.evaluate(identity_run, smoke_dataset, out_dir=tmp_path / "outside", steps=2,
                     cost_repeats=0, progress=False)
    run = json.loads((tmp_path / "outside" / "metrics.json").read_text())["run"]
    assert run["model"] == f"{identity_run.name}/export/saved_model"
    assert run["data"] == smoke_dataset.name
    assert report.recorded_path(baselines.EXACT) == baselines.EXACT


@pytest.mark.slow
def test_command_line(identity_run, smoke_dataset, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tf_holstein.evaluate", "--model", str(identity_run), "--data",
         str(smoke_dataset), "--n_traj", "1", "--steps", "6", "--snapshot_steps", "0,3",
         "--out", str(tmp_path), "--progress=false"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout[result.stdout.index("{"):])
    assert printed["n_trajectories"] == 1 and printed["steps"] == 6
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["run"]["snapshot_steps"] == [0, 3]
    assert len(saved["per_step"]["rmse"]["rho"]) == 6
    again = [sys.executable, "-m", "tf_holstein.evaluate", "--model", str(identity_run),
             "--data", str(smoke_dataset), "--steps", "99", "--out", str(tmp_path),
             "--progress=false"]
    failed = subprocess.run(again, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0  # an earlier result is not replaced unasked
    assert f"evaluate: error: {tmp_path / 'metrics.json'} exists: pass --overwrite" in \
        failed.stderr
    assert json.loads((tmp_path / "metrics.json").read_text()) == saved
    failed = subprocess.run([*again, "--overwrite"], capture_output=True, text=True,
                            timeout=300)
    assert failed.returncode != 0
    assert "evaluate: error: steps must be in 1..12" in failed.stderr


def damaged_copy(smoke_dataset, target, damage):
    """The smoke dataset with its first test shard cut to one record, or with a byte of
    that record's payload flipped (its CRC then fails)."""
    target.mkdir()
    for path in smoke_dataset.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    shard = target / records.shard_name("test", 0, 1)
    data = bytearray(shard.read_bytes())
    first = 16 + int.from_bytes(data[:8], "little")  # one record: header, payload, CRC
    if damage == "cut":
        shard.write_bytes(bytes(data[:first]))
    else:
        data[first // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    return target, shard


def test_a_damaged_shard_is_one_line_naming_it(identity_run, smoke_dataset, tmp_path):
    cut, shard = damaged_copy(smoke_dataset, tmp_path / "cut", "cut")
    with pytest.raises(IOError, match=f"{shard} holds 1 trajectories, meta.json implies 2"):
        scoring.evaluate(identity_run, cut, out_dir=tmp_path / "out", progress=False)
    flipped, shard = damaged_copy(smoke_dataset, tmp_path / "flipped", "flip")
    result = subprocess.run(
        [sys.executable, "-m", "tf_holstein.evaluate", "--model", str(identity_run), "--data",
         str(flipped), "--out", str(tmp_path / "out"), "--progress=false"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"evaluate: error: corrupt or truncated TFRecord shard {shard}")
    assert "rerun the datagen command" in last


def test_another_chain_length_is_refused_unless_allowed(smoke_dataset, smoke_meta, tmp_path):
    """As batch inference does: a model trained on L = 16 does not silently run on L = 8."""
    model = models.build_model(ModelConfig(), smoke_meta["scales"])
    other_L = export_workdir(model, tmp_path / "run", {**smoke_meta, "config": {
        **smoke_meta["config"], "L": 16}})
    with pytest.raises(ValueError, match=r"trained on L = 16, the dataset has L = 8 \(pass "
                                         r"--allow_other_L"):
        scoring.evaluate(other_L, smoke_dataset, out_dir=tmp_path / "out", progress=False)
    result = scoring.evaluate(other_L, smoke_dataset, out_dir=tmp_path / "out", steps=2,
                              allow_other_L=True, progress=False)
    assert result["summary"]["n_trajectories"] == SMOKE.data.n_test


# -- the climate ------------------------------------------------------------------------------
def test_the_climate_of_a_constant_forecast_equals_a_direct_computation(identity_run,
                                                                        smoke_dataset, truth,
                                                                        tmp_path):
    """The identity model forecasts each trajectory's initial state forever: its climate is
    computed here from load_split with the functions of tf_holstein.climate; a constant
    series has no power at any frequency, so its spectral error is exactly 1."""
    result = scoring.evaluate(identity_run, smoke_dataset, out_dir=tmp_path, progress=False)
    time_step = result["run"]["time_step"]
    orders = dict(zip(metrics.ORDER_PARAMETERS, (np.asarray(x) for x in physics.order_parameters(
        truth["rho"].astype(np.complex128), truth["Q"].astype(np.float64)))))
    series = {name: values[:, 1:] for name, values in orders.items()}
    constant = {name: np.repeat(values[:, :1], values.shape[1] - 1, axis=1)
                for name, values in orders.items()}
    for name in metrics.ORDER_PARAMETERS:
        entry = result["distribution"][name]
        assert entry["wasserstein_1"] == pytest.approx(
            climate.wasserstein_1(series[name], constant[name]), rel=1e-9)
        assert entry["sampling_floor"] == pytest.approx(
            climate.bootstrap_floor(series[name], climate.wasserstein_1), rel=1e-9)
        spectrum = result["spectrum"][name]
        np.testing.assert_allclose(spectrum["truth"], climate.power_spectrum(
            series[name], time_step, series[name].shape[1])[1], rtol=1e-9)
        assert spectrum["relative_error"] == pytest.approx(1.0, abs=1e-12)
    factors = result["spectrum"]["structure_factor"]
    np.testing.assert_allclose(factors["truth"], climate.structure_factor(
        truth["Q"][:, 1:])[1].mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(factors["prediction"], climate.structure_factor(
        truth["Q"][:, 0])[1].mean(axis=0), rtol=1e-6)
    expected = climate.valid_time(np.stack(list(series.values()), -1),
                                  np.stack(list(constant.values()), -1), time_step)
    np.testing.assert_allclose(result["valid_time"]["per_trajectory"],
                               expected["per_trajectory"])
    head = report.headline(result)
    assert head["valid_time_median"] == pytest.approx(expected["median"])
    assert head["Delta_Q_spectrum_relative_error"] == pytest.approx(1.0)
    assert head["structure_factor_relative_error"] == pytest.approx(
        factors["relative_error"])
    assert "lyapunov_truth" not in head and not (tmp_path / "lyapunov.png").exists()
    assert all((tmp_path / name).stat().st_size > 0 for name in FIGURES)


def test_the_rollout_keeps_s_of_k_near_pi_step_by_step(truth, smoke_meta):
    """In chunks and batches of one, the S(k, t) series at k = pi and pi - 2 pi / L are
    climate.structure_factor of the stored Q and of the forecast's (constant: step 0's)."""
    L, steps = smoke_meta["L"], smoke_meta["T"]

    def constant(state, n_steps):
        return {key: np.repeat(value[:, None], n_steps, axis=1) for key, value in state.items()}

    collected = rollout.against_truth(
        constant, rollout.array_batches(truth, batch_size=1), steps,
        smoke_meta["config"]["g_f"], metrics.divergence_limits(smoke_meta["scales"]), chunk=5)
    k, factors = climate.structure_factor(truth["Q"])
    for name, m in (("S_pi", L // 2), ("S_pi_minus_dk", L // 2 - 1)):
        assert k[m] == pytest.approx(near_pi.wave_number(name, L))
        np.testing.assert_allclose(collected.structure_series["truth"][name],
                                   factors[:, 1:, m], rtol=1e-12)
        np.testing.assert_allclose(collected.structure_series["prediction"][name],
                                   np.repeat(factors[:, :1, m], steps, axis=1), rtol=1e-12)


def png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")


@pytest.mark.parametrize("states", [True, False])
def test_s_of_k_near_pi_of_the_replayed_truth(truth, smoke_dataset, smoke_meta, tmp_path,
                                              states):
    """The truth replayed as the prediction: S(k, t) near pi scores 0 on its mean and its
    A(tau), against positive floors, in metrics.json, the headline and a second row of
    autocorrelation.png. From the order parameters alone there is no S(k, t): no entries."""
    orders = physics.order_parameters(truth["rho"].astype(np.complex128),
                                      truth["Q"].astype(np.float64))
    path = tmp_path / "truth.npz"
    np.savez(path, index=truth["index"], **dict(zip(metrics.ORDER_PARAMETERS, map(np.asarray,
                                                                                  orders))),
             **({key: truth[key] for key in records.STATE_KEYS} if states else {}))
    result = scoring.evaluate_predictions(path, smoke_dataset, out_dir=tmp_path / "out",
                                          progress=False)
    head = report.headline(result)
    height = png_height(tmp_path / "out" / "autocorrelation.png")
    if not states:
        assert near_pi.SECTION not in result
        assert not [key for key in head if key.startswith(tuple(near_pi.MODES))]
        assert height == 396  # one row: 3.6 inches at 110 dpi
        return
    assert height == 2 * 396
    stored = json.loads((tmp_path / "out" / "metrics.json").read_text())[near_pi.SECTION]
    assert stored["max_lag"] == smoke_meta["T"] - 1
    factors = climate.structure_factor(truth["Q"][:, 1:])[1]
    for name in near_pi.MODES:
        entry = stored[name]
        assert entry["truth"] == pytest.approx(
            factors[..., smoke_meta["L"] // 2 - near_pi.MODES[name]].mean(), rel=1e-12)
        assert entry["relative_error"] == 0.0 and entry["sampling_floor"] > 0
        assert entry["autocorrelation"]["max_abs_diff"] == 0.0
        assert entry["autocorrelation"]["sampling_floor"] > 0
        assert head[f"{name}_autocorrelation_max_abs_diff"] == 0.0
        assert head[f"{name}_autocorrelation_sampling_floor"] == \
            entry["autocorrelation"]["sampling_floor"]


def test_lyapunov_exponents_of_the_exact_model(smoke_dataset, smoke_meta, truth, tmp_path):
    """--lyapunov_trajectories: the truth's exponent is climate.largest_lyapunov of the
    simulator from the split's first initial states; the exact model's, measured through
    float32 states with twins 1e-4 apart, is the same up to that rounding."""
    result = scoring.evaluate(baselines.EXACT, smoke_dataset, out_dir=tmp_path,
                              lyapunov_trajectories=2, progress=False)
    lyapunov = result["lyapunov"]
    steps, time_step = smoke_meta["T"], smoke_meta["time_step"]
    transient = steps // 4  # climate.LYAPUNOV_TRANSIENT is longer than a quarter here
    config = smoke_meta["config"]
    expected = climate.largest_lyapunov(
        climate.simulator_advance(config["g_f"], config["dt"], config["save_interval"]),
        {key: truth[key][:, 0] for key in records.STATE_KEYS}, time_step=time_step,
        n_intervals=steps - transient, transient_intervals=transient)
    np.testing.assert_allclose(lyapunov["truth"]["per_trajectory"], expected["per_trajectory"],
                               rtol=1e-12)
    # Rounding the states to float32 moves a twin distance of 1e-4 |x| by at most
    # 2 eps32 / 1e-4 relative per interval (input and output); such errors of random sign
    # add up as the square root of the intervals' and trajectories' number; 3 sigma.
    intervals = (steps - transient) * 2
    bound = 3 * 2 * EPS32 / climate.MODEL_SEPARATION / np.sqrt(intervals) / time_step
    assert abs(lyapunov["prediction"]["mean"] - lyapunov["truth"]["mean"]) < bound
    head = report.headline(result)
    assert head["lyapunov_truth"] == pytest.approx(expected["mean"], rel=1e-12)
    assert head["lyapunov_prediction"] == pytest.approx(lyapunov["prediction"]["mean"])
    assert (tmp_path / "lyapunov.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"lyapunov_trajectories must be in 0\.\.2"):
        scoring.evaluate(baselines.EXACT, smoke_dataset, out_dir=tmp_path,
                         lyapunov_trajectories=3, progress=False)


def test_a_relaxing_series_can_have_an_autocorrelation_far_above_one():
    """docs/evaluation.md: A(tau) takes the lagged product over the overlapping pairs but the
    mean and variance over the whole series, so for a non-stationary series |A| can exceed 1: a
    forecast that relaxes to a fixed nonzero value (a small variance, a large mean) scores
    |A| of several, and two such scores may differ by more than 2."""
    t = np.arange(200)
    x = (0.3 + 0.05 * np.exp(-t / 20.0))[None, :]
    A = metrics.autocorrelation(x, 60)
    assert abs(A[0] - 1.0) < 1e-9 and np.abs(A).max() > 5
