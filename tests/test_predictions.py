"""evaluate --predictions: rollouts stored in batch inference's .npz layout score as the model
that made them does, the truth scores 0, known perturbations score what NumPy says, and a file
that does not fit the dataset is refused in one line."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from float32 import kernel_tolerance, sum_tolerance
from tf_holstein import climate, export, metrics, physics, records, report, scoring

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "batch_inference.py"
EPS32 = float(np.finfo(np.float32).eps)
_spec = importlib.util.spec_from_file_location("batch_inference", SCRIPT)
batch_inference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(batch_inference)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, smoke_meta, perturbed_cnn):
    """The perturbed CNN, exported as a SavedModel."""
    return export.export_model(perturbed_cnn, tmp_path_factory.mktemp("model"),
                               metadata=export.dataset_metadata(smoke_meta))


@pytest.fixture(scope="module")
def truth(smoke_dataset):
    return records.load_split(smoke_dataset, "test")


def order_parameters(truth) -> tuple[np.ndarray, np.ndarray]:
    """Delta_rho, Delta_Q [N, T+1] of the stored states, in float64 as evaluate computes them."""
    return tuple(np.asarray(x) for x in physics.order_parameters(
        truth["rho"].astype(np.complex128), truth["Q"].astype(np.float64)))


def truth_file(path, truth, states=True, **changes) -> Path:
    """The test split itself in the predictions layout, with `changes` applied."""
    delta_rho, delta_q = order_parameters(truth)
    arrays = {"index": truth["index"], "Delta_rho": delta_rho, "Delta_Q": delta_q,
              **({key: truth[key] for key in records.STATE_KEYS} if states else {})}
    np.savez(path, **{**arrays, **changes})
    return path


def batch_inference_npz(saved_model, smoke_dataset, out, *extra) -> Path:
    code = batch_inference.main(["--model", str(saved_model), "--input", str(smoke_dataset),
                                 "--split", "test", "--steps", "12", "--out", str(out),
                                 "--no_progress", *extra])
    assert code == 0
    return out


@pytest.mark.slow
def test_batch_inference_output_scores_as_the_model_evaluated_directly(
        saved_model, smoke_dataset, smoke_meta, tmp_path):
    """Batch inference and evaluate run the same SavedModel signature on the same states in
    one batch and one chunk: the same float32 numbers, so every metric agrees up to float64
    rounding in the metrics. The command line is the issue's."""
    direct = scoring.evaluate(saved_model, smoke_dataset, out_dir=tmp_path / "direct",
                              progress=False)
    npz = batch_inference_npz(saved_model, smoke_dataset, tmp_path / "pred.npz")
    run = subprocess.run(
        [sys.executable, "-m", "tf_holstein.evaluate", "--predictions", str(npz), "--data",
         str(smoke_dataset), "--split", "test", "--out", str(tmp_path / "replayed"),
         "--progress=false"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    replayed = json.loads((tmp_path / "replayed" / "metrics.json").read_text())
    expected = report.to_json(direct)
    for section in ("summary", "per_step", "per_trajectory", "autocorrelation", "bands",
                    "physics", "distribution", "spectrum", "valid_time"):
        np.testing.assert_equal(*(_rounded(x[section]) for x in (replayed, expected)))
    assert replayed["run"]["predictions_hold_states"] is True
    assert json.loads(run.stdout[run.stdout.index("{"):])["n_trajectories"] == 2
    assert all((tmp_path / "replayed" / name).stat().st_size > 0
               for name in ("snapshots.png", "order_parameters.png", "autocorrelation.png",
                            "distributions.png", "spectra.png", "valid_time.png"))

    # The order parameters alone (the rollout_order_parameters signature, in float32): its
    # rollout may run other kernels and its means round in float32.
    only = batch_inference_npz(saved_model, smoke_dataset, tmp_path / "op.npz",
                               "--order_parameters_only")
    result = scoring.evaluate_predictions(only, smoke_dataset, out_dir=tmp_path / "op",
                                          progress=False)
    L, steps = smoke_meta["L"], smoke_meta["T"]
    scale = max(smoke_meta["scales"]["rho"], smoke_meta["scales"]["Q"])
    shift = kernel_tolerance(scale, steps) + sum_tolerance(L, scale)  # per value of Delta
    for name in metrics.ORDER_PARAMETERS:
        std = min(direct["per_trajectory"][f"{name}_std"])
        assert result["summary"][name]["median_rmse_over_std"] == pytest.approx(
            direct["summary"][name]["median_rmse_over_std"], rel=0, abs=shift / std)
        # W1 moves by at most the largest shift of a value.
        assert result["distribution"][name]["wasserstein_1"] == pytest.approx(
            direct["distribution"][name]["wasserstein_1"], rel=0, abs=shift)
    assert result["summary"]["state_rmse"] is None
    assert "prediction" not in result["physics"]
    assert "structure_factor" not in result["spectrum"]
    assert not (tmp_path / "op" / "snapshots.png").exists()
    assert (tmp_path / "op" / "order_parameters.png").exists()


def _rounded(x):
    """JSON values with floats to 9 significant digits: float64 rounding of the metrics
    aside."""
    if isinstance(x, dict):
        return {key: _rounded(value) for key, value in x.items()}
    if isinstance(x, list):
        return [_rounded(value) for value in x]
    return float(f"{x:.9g}") if isinstance(x, float) else x


@pytest.mark.parametrize("states", [True, False])
def test_the_truth_scores_zero_on_every_distance(truth, smoke_dataset, smoke_meta, tmp_path,
                                                 states, monkeypatch):
    path = truth_file(tmp_path / "truth.npz", truth, states)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result = scoring.evaluate_predictions(path, smoke_dataset, out_dir=tmp_path / "out",
                                          progress=False)
    summary = result["summary"]
    # Named by the file and the dataset's folder, both outside the current directory.
    assert (result["run"]["predictions"], result["run"]["data"]) == ("truth.npz",
                                                                      smoke_dataset.name)
    assert report.figure_title(result["run"]).startswith(f"truth on {smoke_dataset.name} (test")
    for name in metrics.ORDER_PARAMETERS:
        assert summary[name]["median_rmse_over_std"] == 0.0
        assert summary[name]["autocorrelation_max_abs_diff"] == 0.0
        assert result["distribution"][name]["wasserstein_1"] == 0.0
        assert result["spectrum"][name]["relative_error"] == 0.0
    # Never apart: every valid time is censored at the last step.
    assert result["valid_time"]["median"] == pytest.approx(smoke_meta["T"]
                                                           * smoke_meta["time_step"])
    if states:
        assert set(summary["state_rmse"].values()) == {0.0}
        assert result["spectrum"]["structure_factor"]["relative_error"] == 0.0
        assert result["summary"]["physics"]["prediction"] == \
            result["summary"]["physics"]["truth"]


def test_netcdf_predictions_score_as_their_npz(truth, smoke_dataset, tmp_path):
    """A predictions file in the netCDF layout (HDF5 variables trajectory, Delta_rho,
    Delta_Q, rho_real, rho_imag, Q, P; written here with h5py, as netCDF-4 stores them)
    scores exactly as the same arrays in a .npz, reordered rows included."""
    import h5py

    order = np.arange(len(truth["index"]))[::-1]
    delta_rho, delta_q = order_parameters(truth)
    arrays = {"index": truth["index"][order], "Delta_rho": delta_rho[order],
              "Delta_Q": delta_q[order], **{key: truth[key][order] for key in ("Q", "P")}}
    np.savez(tmp_path / "p.npz", rho=truth["rho"][order], **arrays)
    with h5py.File(tmp_path / "p.nc", "w") as f:
        f["trajectory"] = arrays.pop("index")
        f["rho_real"], f["rho_imag"] = truth["rho"][order].real, truth["rho"][order].imag
        for key, value in arrays.items():
            f[key] = value
    results = [scoring.evaluate_predictions(tmp_path / name, smoke_dataset,
                                            out_dir=tmp_path / f"out-{name}", progress=False)
               for name in ("p.npz", "p.nc")]
    assert results[0]["summary"] == results[1]["summary"]
    (tmp_path / "bad.nc").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.nc is not a readable netCDF-4"):
        scoring.evaluate_predictions(tmp_path / "bad.nc", smoke_dataset,
                                     out_dir=tmp_path / "bad", progress=False)


def test_known_perturbations_score_what_numpy_says(truth, smoke_dataset, smoke_meta, tmp_path):
    """Delta_rho shifted by c, Delta_Q scaled by a (order parameters only); Q displaced by
    b s_i, the staggered pattern whose Delta_Q is exactly b (with states)."""
    c, a, b = 0.01, 1.5, 0.02
    dt = smoke_meta["time_step"]
    rho, q = order_parameters(truth)
    shifted, scaled = rho + c, a * q
    shifted[:, 0], scaled[:, 0] = rho[:, 0], q[:, 0]  # step 0 is the initial state
    path = truth_file(tmp_path / "op.npz", truth, states=False, Delta_rho=shifted,
                      Delta_Q=scaled)
    result = scoring.evaluate_predictions(path, smoke_dataset, out_dir=tmp_path / "op",
                                          progress=False)
    series = {"Delta_rho": rho[:, 1:], "Delta_Q": q[:, 1:]}  # scored: steps 1..T
    assert result["distribution"]["Delta_rho"]["wasserstein_1"] == pytest.approx(c, rel=1e-9)
    assert result["summary"]["Delta_rho"]["median_rmse_over_std"] == pytest.approx(
        np.median(c / series["Delta_rho"].std(axis=1)), rel=1e-9)
    ratio = np.sqrt(np.mean(((a - 1) * series["Delta_Q"]) ** 2, axis=1)) / \
        series["Delta_Q"].std(axis=1)
    assert result["summary"]["Delta_Q"]["median_rmse_over_std"] == pytest.approx(
        np.median(ratio), rel=1e-9)
    # The spectrum removes each segment's mean (a shift is invisible) and scales as a^2.
    assert result["spectrum"]["Delta_rho"]["relative_error"] == pytest.approx(0.0, abs=1e-9)
    assert result["spectrum"]["Delta_Q"]["relative_error"] == pytest.approx(a * a - 1,
                                                                            rel=1e-9)
    error = np.sqrt(((c / series["Delta_rho"].std()) ** 2
                     + ((a - 1) * series["Delta_Q"] / series["Delta_Q"].std()) ** 2) / 2)
    exceeds = error > climate.VALID_TIME_THRESHOLD
    valid = np.where(exceeds.any(axis=1), (exceeds.argmax(axis=1) + 1) * dt,
                     error.shape[1] * dt)
    np.testing.assert_allclose(result["valid_time"]["per_trajectory"], valid)

    stagger = np.where(np.arange(smoke_meta["L"]) % 2 == 0, -1.0, 1.0)
    moved = (truth["Q"] + b * stagger).astype(np.float32)
    path = truth_file(tmp_path / "states.npz", truth, Q=moved)
    with pytest.raises(ValueError, match="row 0 \\(index 0\\) does not start at trajectory "
                                         "0's initial state in the split \\(Q differs by "
                                         "0.02.*steps \\+ 1 entries, entry 0 being the "
                                         "initial state"):
        scoring.evaluate_predictions(path, smoke_dataset, out_dir=tmp_path / "s",
                                     progress=False)
    moved[:, 0] = truth["Q"][:, 0]
    path = truth_file(tmp_path / "states.npz", truth, Q=moved)
    result = scoring.evaluate_predictions(path, smoke_dataset, out_dir=tmp_path / "s",
                                          progress=False)
    # Q and its float32 rounding: |moved - Q| = b up to one float32 unit of |Q| + b.
    rounding = EPS32 * float(np.abs(moved).max())
    assert result["summary"]["state_rmse"]["Q"] == pytest.approx(b, abs=rounding)
    assert result["summary"]["state_rmse"]["rho"] == 0.0
    assert result["distribution"]["Delta_Q"]["wasserstein_1"] == pytest.approx(b, abs=rounding)



def test_files_that_do_not_fit_the_dataset_are_refused(truth, smoke_dataset, smoke_meta,
                                                       tmp_path):
    T, L = smoke_meta["T"], smoke_meta["L"]
    longer = dict(zip(metrics.ORDER_PARAMETERS, order_parameters(truth)),
                  **{key: truth[key] for key in records.STATE_KEYS})
    cases = {
        "index": ({"index": np.array([0, 5])}, r"index holds 5, but the test split of .* has "
                                               r"trajectories 0\.\.1"),
        "length": ({key: np.concatenate([value, value[:, 1:]], axis=1)
                    for key, value in longer.items()},
                   rf"holds {2 * T} steps after the initial state; the trajectories of .* have "
                   rf"{T}"),
        "L": ({"rho": np.zeros((2, T + 1, L + 2, L + 2), np.complex64),
               "Q": np.zeros((2, T + 1, L + 2), np.float32),
               "P": np.zeros((2, T + 1, L + 2), np.float32)}, r"have L = 10, .* has L = 8"),
        "states": ({"rho": truth["rho"][:, :, :1]}, r"rho has shape \[2, 13, 1, 8\], expected "
                                                    r"\[2, 13, 8, 8\]"),
    }
    for name, (changes, message) in cases.items():
        path = truth_file(tmp_path / f"{name}.npz", truth, **changes)
        with pytest.raises(ValueError, match=message):
            scoring.evaluate_predictions(path, smoke_dataset, out_dir=tmp_path / "out",
                                         progress=False)
    # Another split: its trajectories 0 and 1 exist, but start elsewhere.
    path = truth_file(tmp_path / "test.npz", truth, states=False)
    with pytest.raises(ValueError, match="were the predictions made from another split, "
                                         "dataset or start step"):
        scoring.evaluate_predictions(path, smoke_dataset, split="val",
                                     out_dir=tmp_path / "out", progress=False)
    run = subprocess.run(
        [sys.executable, "-m", "tf_holstein.evaluate", "--predictions", str(path), "--data",
         str(smoke_dataset), "--split", "test", "--steps", "5", "--out", str(tmp_path / "o"),
         "--progress=false"], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (
        "evaluate: error: --steps set how a model rolls out; they do not apply to "
        "--predictions")
