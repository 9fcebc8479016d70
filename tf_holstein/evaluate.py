"""python -m tf_holstein.evaluate: long rollouts of a trained model against ground truth.

    python -m tf_holstein.evaluate --model runs/shallow --data data_test/shallow_L16 \
        [--split test] [--n_traj N] [--steps T] [--out DIR]

Rolls out (batched) from each trajectory's first state and compares with the stored
trajectory (SPEC section 5): per-step state RMSE of rho, Q and P; RMSE and RMSE / std
of the order parameters Delta_rho and Delta_Q; the autocorrelation A(tau) of both,
truth and prediction; ensemble percentile bands; the physical invariants of the
predicted trajectories (energy, Tr rho, Hermiticity, Tr rho rho^dagger); and which
trajectories diverged (non-finite values, or values far outside the training range),
at which step. Writes `metrics.json`, `order_parameters.npz` (every trace) and the
figures `snapshots.png`, `order_parameters.png`, `autocorrelation.png`.

Memory stays bounded on long rollouts: trajectories are streamed from the TFRecords in
batches and each batch is rolled out in chunks of steps, the last state fed back; only
per-step scalars [n_traj, steps] and the snapshot states are kept.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags

from tf_holstein import cli, export, models, physics, plots, records
from tf_holstein.cli import FLAGS

State = dict[str, np.ndarray]
RolloutFn = Callable[[Mapping[str, np.ndarray], int], State]

MAX_LAG = 250  # SPEC section 5: tau = 0..250
PERCENTILES = (10.0, 50.0, 90.0)  # ensemble bands: low, median, high
DIVERGENCE_FACTOR = 10.0  # diverged: |value| > this times the training max-abs scale
SNAPSHOT_HORIZON = 48  # default snapshot steps span 0..48, as in the paper's Fig. 3
SNAPSHOT_COUNT = 5
TRACE_ROWS = 4  # trajectories drawn in order_parameters.png (Fig. 7 shows four)
ORDER_PARAMETERS = ("Delta_rho", "Delta_Q")
EXACT = "exact"  # --model exact: the RK4 simulator itself, the floor for every learned model
INVARIANTS = ("energy_rel_drift", "trace_drift", "hermiticity_error", "purity_drift")


# -- the model ------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedModel:
    """A model ready to roll out, whatever form it was saved in.

    rollout(state, n_steps): state `{'rho': complex64 [B, L, L], 'Q', 'P': float32 [B, L]}`
    -> the states after steps 1..n_steps as NumPy, `[B, n_steps, ...]`.
    """

    path: Path  # the `.keras` file or SavedModel directory actually loaded
    format: str  # "keras", "saved_model" or "exact"
    rollout: RolloutFn
    metadata: dict[str, Any]  # the export's metadata asset; model class and config for .keras
    handle: Any  # the loaded object (keeps a SavedModel's variables alive)


def resolve_model_path(path: str | Path) -> Path:
    """The model file or SavedModel directory that `path` names.

    path: a `.keras` file, a SavedModel directory, an export directory (holding
    `saved_model/` or `model.keras`) or a training workdir (holding `export/`); the
    SavedModel, the artefact that ships, is preferred over the `.keras` file.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".keras":
            raise ValueError(f"{path} is not a .keras file; pass a .keras model, a SavedModel "
                             f"directory or a training workdir")
        return path
    candidates = [path, path / "saved_model", path / "export" / "saved_model",
                  path / "model.keras", path / "export" / "model.keras"]
    for candidate in candidates:
        if candidate.suffix == ".keras" and candidate.is_file():
            return candidate
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise FileNotFoundError(f"no model at {path}: expected a .keras file, a SavedModel "
                            f"directory, or a training workdir with export/saved_model or "
                            f"export/model.keras")


def load_model(path: str | Path) -> LoadedModel:
    """Loads a model (see `resolve_model_path`) behind one rollout interface.

    A `.keras` model runs in-process (`HolsteinModel.rollout`); a SavedModel through its
    `rollout` serving signature, exactly as a deployment would.
    """
    path = resolve_model_path(path)
    if path.suffix == ".keras":
        model = keras.saving.load_model(str(path))
        if not isinstance(model, models.HolsteinModel):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a tf-holstein model")

        def keras_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> State:
            out = model.rollout({key: state[key] for key in models.STATE_KEYS}, n_steps)
            return {key: value.numpy() for key, value in out.items()}

        return LoadedModel(path, "keras", keras_rollout,
                           {"model_class": type(model).__name__,
                            "model_config": json.loads(json.dumps(model.get_config(),
                                                                  default=str))}, model)
    loaded = tf.saved_model.load(str(path))
    if "rollout" not in loaded.signatures:
        raise ValueError(f"the SavedModel at {path} has no 'rollout' signature (it has "
                         f"{', '.join(loaded.signatures) or 'none'}); export it with "
                         f"tf_holstein.export")
    signature = loaded.signatures["rollout"]

    def saved_model_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> State:
        rho = tf.constant(state["rho"], tf.complex64)
        out = signature(rho_real=tf.math.real(rho), rho_imag=tf.math.imag(rho),
                        Q=tf.constant(state["Q"], tf.float32),
                        P=tf.constant(state["P"], tf.float32),
                        n_steps=tf.constant(n_steps, tf.int32))
        return {"rho": tf.complex(out["rho_real"], out["rho_imag"]).numpy(),
                "Q": out["Q"].numpy(), "P": out["P"].numpy()}

    metadata_file = path / "assets" / export.METADATA_ASSET
    metadata = export.read_metadata(path) if metadata_file.exists() else {}
    return LoadedModel(path, "saved_model", saved_model_rollout, metadata, loaded)


def exact_model(meta: Mapping[str, Any]) -> LoadedModel:
    """The exact RK4 simulator behind the rollout interface, at the dataset's protocol.

    Started from the stored (single-precision) states, it measures what the rounding alone
    does to a chaotic rollout: no learned model can be expected to do better. Each rollout
    call restarts from its (float32) input, so a rollout in chunks is rounded once per chunk.
    """
    from tf_holstein import simulate  # only this model needs the simulator

    config = meta["config"]

    def exact_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> State:
        chunks = list(simulate.simulate(
            np.asarray(state["rho"], np.complex128), np.asarray(state["Q"], np.float64),
            np.asarray(state["P"], np.float64), g=config["g_f"], dt=config["dt"],
            save_interval=config["save_interval"], saved_steps=n_steps))
        return {key: np.concatenate([c[key] for c in chunks], axis=1)[:, 1:]
                for key in models.STATE_KEYS}

    return LoadedModel(Path(EXACT), EXACT, exact_rollout, {}, None)


def check_protocol(metadata: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Refuses a dataset whose prediction interval or final coupling differ from the
    model's training data (when the export recorded them): its steps would not match.

    A different L is allowed: the networks are convolutional and run on any chain.
    """
    trained = metadata.get("data")
    if not trained:
        return
    problems = []
    if "time_step" in metadata and not math.isclose(metadata["time_step"], meta["time_step"],
                                                    rel_tol=1e-9):
        problems.append(f"the model predicts steps of {metadata['time_step']:g} hbar/t, the "
                        f"dataset is saved every {meta['time_step']:g}")
    if not math.isclose(trained["g_f"], meta["config"]["g_f"], rel_tol=1e-9):
        problems.append(f"the model was trained at g_f = {trained['g_f']:g}, the dataset "
                        f"quenches to g_f = {meta['config']['g_f']:g}")
    if problems:
        raise ValueError("model and dataset do not match: " + "; ".join(problems))


# -- statistics -----------------------------------------------------------------------------
def autocorrelation(x: np.ndarray | tf.Tensor, max_lag: int) -> np.ndarray:
    """A(tau) = (<X(t) X(t+tau)> - <X>^2) / (<X^2> - <X>^2) of SPEC section 5. [max_lag + 1]

    x: float [n_series, T], an ensemble of equally long series. Every average runs over
    the ensemble and over t: the lagged product over the T - tau overlapping pairs of each
    series, <X> and <X^2> over all n_series * T values (pooled, not per series). Computed
    in float64; A(0) = 1 up to rounding.
    """
    return weighted_autocorrelation(x, max_lag, np.ones((1, np.shape(x)[0])))[0]


def weighted_autocorrelation(x: np.ndarray | tf.Tensor, max_lag: int,
                             weights: np.ndarray) -> np.ndarray:
    """A(tau) of the ensembles that hold series s of x float [n_series, T] weights[e, s]
    times (a bootstrap resample, say): float [n_ensembles, max_lag + 1].

    Each series' sums are computed once and every ensemble pools them with its weights.
    `tfp.stats.auto_correlation` gives each series' lagged-product mean; it centres and
    normalises per series, which is not this definition, so it is fed the deviations y
    from x's overall mean m0 uncentred and unnormalised. With m the ensemble's mean of y,
    <X X'> - <X>^2 = <y y'> + m0 (<y>_head + <y>_tail) - m^2 - 2 m m0 and
    <X^2> - <X>^2 = <y^2> - m^2 restore the definition.
    """
    x = tf.convert_to_tensor(x, tf.float64)
    length = x.shape[1]
    max_lag = min(int(max_lag), length - 1)
    m0 = tf.reduce_mean(x)
    y = x - m0
    lags = tf.range(max_lag + 1)
    pairs_per_series = tf.cast(length - lags, tf.float64)
    # Fed as complex: for real input TFP casts its complex FFT result back with a warning.
    lagged = tf.math.real(tfp.stats.auto_correlation(
        tf.complex(y, tf.zeros_like(y)), axis=-1, max_lags=max_lag, center=False,
        normalize=False)) * pairs_per_series  # sum over t < T - tau of y(t) y(t + tau)
    prefix = tf.pad(tf.cumsum(y, axis=1), [[0, 0], [1, 0]])
    ends = (tf.gather(prefix, length - lags, axis=1)  # sum over t < T - tau
            + prefix[:, -1:] - tf.gather(prefix, lags, axis=1))  # + sum over t >= tau
    w = tf.convert_to_tensor(weights, tf.float64)
    count = tf.reduce_sum(w, axis=1, keepdims=True)
    mean = w @ prefix[:, -1:] / (count * length)
    second = w @ tf.reduce_sum(y * y, axis=1, keepdims=True) / (count * length)
    covariance = ((w @ lagged + m0 * (w @ ends)) / (count * pairs_per_series)
                  - mean * mean - 2.0 * mean * m0)
    return (covariance / (second - mean * mean)).numpy()


def autocorrelation_sampling_floor(x: np.ndarray | tf.Tensor, max_lag: int, draws: int = 200,
                                   seed: int = 0) -> float:
    """The climate test's noise floor: the median of max_tau |A - A'| over pairs of bootstrap
    ensembles, each len(x) series drawn with replacement from x float [n_series, T].

    Two independent ensembles of the same size from the same climate differ by about this
    much, so a prediction compared with a finite truth ensemble cannot be expected to beat it.
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    picks = np.random.default_rng(seed).integers(0, n, size=(draws * 2, n))
    counts = np.zeros((draws * 2, n))
    np.add.at(counts, (np.arange(draws * 2)[:, None], picks), 1.0)
    a = weighted_autocorrelation(x, max_lag, counts).reshape(draws, 2, -1)
    return float(np.median(np.max(np.abs(a[:, 0] - a[:, 1]), axis=-1)))


def ensemble_bands(x: np.ndarray | tf.Tensor, percentiles: Sequence[float] = PERCENTILES
                   ) -> np.ndarray:
    """Percentiles over the ensemble at every step, linearly interpolated as NumPy's
    default: x float [n_series, T] -> [len(percentiles), T]."""
    return tfp.stats.percentile(tf.convert_to_tensor(x, tf.float64), list(percentiles), axis=0,
                                interpolation="linear").numpy()


def state_statistics(rho: np.ndarray, Q: np.ndarray, P: np.ndarray, g: float
                     ) -> dict[str, np.ndarray]:
    """Per-state scalars of states rho complex [..., L, L], Q, P float [..., L]. Each [...].

    energy (SPEC section 1, at coupling g, float64), trace Tr rho, hermiticity
    max_ij |rho - rho^H|, purity Tr(rho rho^H) (conserved by the unitary electron
    dynamics) and the order parameters Delta_rho, Delta_Q (SPEC section 5).
    """
    rho64 = tf.constant(rho, tf.complex128)
    Q64, P64 = tf.constant(Q, tf.float64), tf.constant(P, tf.float64)
    delta_rho, delta_q = physics.order_parameters(rho64, Q64)
    return {
        "energy": physics.energy(rho64, Q64, P64, g).numpy(),
        "trace": tf.linalg.trace(rho64).numpy(),
        "hermiticity": tf.reduce_max(tf.abs(rho64 - tf.linalg.adjoint(rho64)),
                                     axis=[-2, -1]).numpy(),
        "purity": tf.reduce_sum(tf.math.real(rho64 * tf.math.conj(rho64)),
                                axis=[-2, -1]).numpy(),
        "Delta_rho": delta_rho.numpy(), "Delta_Q": delta_q.numpy()}


def out_of_range(state: Mapping[str, np.ndarray], limits: Mapping[str, float]) -> np.ndarray:
    """True where a state is non-finite or exceeds the limits: rho complex [..., L, L]
    (real and imaginary parts each), Q, P [..., L] -> bool [...]."""
    rho = state["rho"]
    inside = (np.abs(rho.real) <= limits["rho"]) & (np.abs(rho.imag) <= limits["rho"])
    ok = inside.all(axis=(-2, -1))
    for key in ("Q", "P"):
        ok &= (np.abs(state[key]) <= limits[key]).all(axis=-1)  # NaN compares False
    return ~ok


def divergence_limits(scales: Mapping[str, float], factor: float = DIVERGENCE_FACTOR
                      ) -> dict[str, float]:
    """|rho|, |Q|, |P| beyond `factor` times the training max-abs scales count as diverged."""
    return {key: factor * float(scales[key]) for key in records.STATE_KEYS}


# -- streaming rollout ----------------------------------------------------------------------
def truth_batches(dataset_dir: str | Path, split: str, n_traj: int, batch_size: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """The first n_traj trajectories of a split, in shard order, `batch_size` at a time:
    `rho` complex64 [B, T+1, L, L], `Q`, `P` float32 [B, T+1, L], `index` int64 [B]."""
    meta = records.read_meta(dataset_dir)
    shards = records.complete_shards(dataset_dir, split, meta)
    index_feature = {"index": tf.io.FixedLenFeature([], tf.int64)}

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        arrays = records.parse_trajectory(serialized, keys=records.STATE_KEYS)
        arrays["index"] = tf.io.parse_single_example(serialized, index_feature)["index"]
        return arrays

    dataset = tf.data.TFRecordDataset([str(s) for s in shards]).take(n_traj).map(parse)
    L, T = meta["L"], meta["T"]
    for batch in dataset.batch(batch_size):
        arrays = {key: value.numpy() for key, value in batch.items()}
        if arrays["rho"].shape[1:] != (T + 1, L, L):
            raise IOError(f"{dataset_dir} {split}: trajectories have rho of shape "
                          f"{arrays['rho'].shape[1:]}, meta.json implies {(T + 1, L, L)}")
        yield arrays


@dataclasses.dataclass
class Collected:
    """What a streamed rollout keeps: per-step scalars [N, steps] for steps 1..steps, the
    initial values [N], the first diverged step per trajectory, and snapshot states."""

    index: np.ndarray  # [N] trajectory numbers within the split
    initial: dict[str, np.ndarray]  # state_statistics of the initial states, each [N]
    truth: dict[str, np.ndarray]  # state_statistics of the stored states, each [N, steps]
    prediction: dict[str, np.ndarray]  # state_statistics of the predicted states
    mse: dict[str, np.ndarray]  # mean squared error over sites of rho, Q, P, each [N, steps]
    first_diverged: np.ndarray  # [N] first step out of range, 0 if never
    snapshots: dict[str, dict[str, np.ndarray]]  # {'truth'|'prediction': state [S, ...]}
    seconds: float  # wall time of the model's rollouts


def rollout_against_truth(rollout: RolloutFn, batches: Iterator[Mapping[str, np.ndarray]],
                          steps: int, g: float, limits: Mapping[str, float], *,
                          chunk: int = 100, snapshot_trajectory: int = 0,
                          snapshot_steps: Sequence[int] = (),
                          progress: Callable[[int], None] | None = None) -> Collected:
    """Rolls every batch out for `steps` steps in chunks, comparing with its truth.

    batches: as `truth_batches`. Each chunk's last predicted state is fed back as the next
    chunk's input, so memory is O(batch * chunk * L^2) however long the rollout; chunking
    does not change the result. progress(n) is called with the sample-steps done.
    """
    parts: dict[str, list] = {}
    snapshots = {"truth": [], "prediction": []}
    offset, seconds = 0, 0.0
    for batch in batches:
        size = batch["rho"].shape[0]
        truth = {key: batch[key][:, :steps + 1] for key in records.STATE_KEYS}
        state = {key: value[:, 0] for key, value in truth.items()}
        rows: dict[str, list] = {"truth": [], "prediction": [], "bad": [],
                                 **{f"mse_{key}": [] for key in records.STATE_KEYS}}
        local = snapshot_trajectory - offset
        keep_snapshots = 0 <= local < size
        if keep_snapshots and 0 in snapshot_steps:
            for source in snapshots.values():
                source.append({key: value[local] for key, value in state.items()})
        for start in range(0, steps, chunk):
            n = min(chunk, steps - start)
            tic = time.perf_counter()
            predicted = rollout(state, n)  # [B, n, ...]
            seconds += time.perf_counter() - tic
            window = {key: value[:, start + 1:start + n + 1] for key, value in truth.items()}
            rows["truth"].append(state_statistics(window["rho"], window["Q"], window["P"], g))
            rows["prediction"].append(state_statistics(predicted["rho"], predicted["Q"],
                                                       predicted["P"], g))
            rows["bad"].append(out_of_range(predicted, limits))
            with np.errstate(over="ignore", invalid="ignore"):
                for key in records.STATE_KEYS:
                    error = np.abs(predicted[key].astype(np.complex128 if key == "rho"
                                                         else np.float64) - window[key]) ** 2
                    rows[f"mse_{key}"].append(error.mean(axis=(-2, -1) if key == "rho"
                                                         else -1))
            if keep_snapshots:
                for step in snapshot_steps:
                    if start < step <= start + n:
                        snapshots["truth"].append({k: v[local, step - start - 1]
                                                   for k, v in window.items()})
                        snapshots["prediction"].append({k: v[local, step - start - 1]
                                                        for k, v in predicted.items()})
            state = {key: value[:, -1] for key, value in predicted.items()}
            if progress:
                progress(size * n)
        _append(parts, "initial", state_statistics(truth["rho"][:, 0], truth["Q"][:, 0],
                                                   truth["P"][:, 0], g))
        for source in ("truth", "prediction"):
            _append(parts, source, {key: np.concatenate([r[key] for r in rows[source]], axis=1)
                                    for key in rows[source][0]})
        bad = np.concatenate(rows["bad"], axis=1)
        _append(parts, "first_diverged", np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, 0))
        _append(parts, "mse", {key: np.concatenate(rows[f"mse_{key}"], axis=1)
                               for key in records.STATE_KEYS})
        _append(parts, "index", batch["index"])
        offset += size
    if not offset:
        raise ValueError("no trajectories to evaluate")
    merged = {name: _concatenate(values) for name, values in parts.items()}
    return Collected(index=merged["index"], initial=merged["initial"], truth=merged["truth"],
                     prediction=merged["prediction"], mse=merged["mse"],
                     first_diverged=merged["first_diverged"],
                     snapshots={source: {key: np.stack([s[key] for s in states])
                                         for key in records.STATE_KEYS} if states else {}
                                for source, states in snapshots.items()},
                     seconds=seconds)


def _append(parts: dict[str, list], name: str, value: Any) -> None:
    parts.setdefault(name, []).append(value)


def _concatenate(values: list) -> Any:
    if isinstance(values[0], dict):
        return {key: np.concatenate([v[key] for v in values]) for key in values[0]}
    return np.concatenate(values)


# -- metrics --------------------------------------------------------------------------------
def invariant_drifts(collected: Collected, L: int) -> dict[str, dict[str, np.ndarray]]:
    """Drifts of the conserved quantities, `{'truth'|'prediction': {name: [N, steps]}}`.

    energy_rel_drift (E(t) - E(0)) / |E(0)|; trace_drift |Tr rho - L/2|; hermiticity_error
    max_ij |rho - rho^H|; purity_drift Tr(rho rho^H)(t) - Tr(rho rho^H)(0). E(0) and the
    initial purity are the stored initial state's, which the prediction starts from.
    """
    energy0 = collected.initial["energy"][:, None]
    purity0 = collected.initial["purity"][:, None]
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for source in ("truth", "prediction"):
            values = getattr(collected, source)
            out[source] = {
                "energy_rel_drift": (values["energy"] - energy0) / np.abs(energy0),
                "trace_drift": np.abs(values["trace"] - L / 2),
                "hermiticity_error": values["hermiticity"],
                "purity_drift": values["purity"] - purity0}
    return out


def compute_metrics(collected: Collected, L: int, max_lag: int = MAX_LAG,
                    percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
    """Everything metrics.json reports (non-finite numbers as NaN; see `to_json`).

    Errors, statistics and invariants of the prediction use the non-diverged trajectories
    only, and are None if every trajectory diverged; ground-truth statistics use all.
    """
    kept = collected.first_diverged == 0
    n, steps = collected.mse["Q"].shape
    max_lag = min(max_lag, steps - 1)
    per_trajectory: dict[str, Any] = {"index": collected.index,
                                      "first_diverged_step": [int(s) or None for s in
                                                              collected.first_diverged]}
    per_step: dict[str, Any] = {"rmse": {key: _rms(collected.mse[key][kept], axis=0,
                                                   squared=True)
                                         for key in records.STATE_KEYS}}
    summary: dict[str, Any] = {
        "n_trajectories": n, "n_diverged": int((~kept).sum()), "n_kept": int(kept.sum()),
        "steps": steps,
        "state_rmse": {key: _rms(collected.mse[key][kept], squared=True)
                       for key in records.STATE_KEYS}}
    autocorrelations: dict[str, Any] = {"max_lag": max_lag}
    bands: dict[str, Any] = {"percentiles": list(percentiles)}
    for name in ORDER_PARAMETERS:
        truth, pred = collected.truth[name], collected.prediction[name]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            rmse = _rms(pred - truth, axis=1)
            std = truth.std(axis=1)
            ratio = rmse / std
        ratio_counting_diverged = np.where(kept, ratio, np.inf)
        per_trajectory.update({f"{name}_rmse": rmse, f"{name}_std": std,
                               f"{name}_rmse_over_std": ratio})
        per_step["rmse"][name] = _rms(pred[kept] - truth[kept], axis=0)
        truth_a = autocorrelation(truth, max_lag)
        pred_a = autocorrelation(pred[kept], max_lag) if kept.any() else None
        autocorrelations[name] = {
            "truth": truth_a, "prediction": pred_a,
            "max_abs_diff": float(np.max(np.abs(pred_a - truth_a))) if kept.any() else None,
            "sampling_floor": autocorrelation_sampling_floor(truth, max_lag)}
        bands[name] = {"truth": ensemble_bands(truth, percentiles),
                       "prediction": ensemble_bands(pred[kept], percentiles)
                       if kept.any() else None}
        summary[name] = {
            "median_rmse_over_std": _median(ratio[kept]),
            "median_rmse_over_std_counting_diverged": float(np.median(ratio_counting_diverged)),
            "mean_rmse_over_std": _mean(ratio[kept]),
            "median_rmse": _median(rmse[kept]),
            "rmse": _rms(pred[kept] - truth[kept]),
            "pooled_rmse_over_std": _rms(pred[kept] - truth[kept]) / float(truth[kept].std())
            if kept.any() else None,
            "autocorrelation_max_abs_diff": autocorrelations[name]["max_abs_diff"],
            "autocorrelation_sampling_floor": autocorrelations[name]["sampling_floor"]}
    physics_metrics: dict[str, Any] = {}
    drifts = invariant_drifts(collected, L)
    for source, rows in (("truth", slice(None)), ("prediction", kept)):
        physics_metrics[source] = {}
        for name, values in drifts[source].items():
            values = np.abs(values[rows])
            physics_metrics[source][name] = {
                "max_abs": float(values.max()) if values.size else None,
                "final_median_abs": _median(values[:, -1]),
                "per_step_median_abs": np.median(values, axis=0) if values.size else None,
                "per_step_max_abs": values.max(axis=0) if values.size else None}
    summary["physics"] = {source: {name: entry["max_abs"] for name, entry in values.items()}
                          for source, values in physics_metrics.items()}
    return {"summary": summary, "per_step": per_step, "per_trajectory": per_trajectory,
            "autocorrelation": autocorrelations, "bands": bands, "physics": physics_metrics}


def _rms(x: np.ndarray, axis: int | None = None, squared: bool = False) -> Any:
    """Root mean square (of already squared values if `squared`); None for no values."""
    if x.size == 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.mean(x if squared else np.abs(x) ** 2, axis=axis)
    return np.sqrt(mean) if axis is not None else float(np.sqrt(mean))


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if x.size else None


def to_json(obj: Any) -> Any:
    """Plain JSON values: arrays to lists, NumPy scalars to Python, NaN and inf to None."""
    if isinstance(obj, Mapping):
        return {str(key): to_json(value) for key, value in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_json(value) for value in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# -- the command ----------------------------------------------------------------------------
def default_snapshot_steps(steps: int) -> list[int]:
    """Five steps from 0 to min(steps, 48), as in the paper's Fig. 3."""
    horizon = min(steps, SNAPSHOT_HORIZON)
    return sorted({int(round(s)) for s in np.linspace(0, horizon, SNAPSHOT_COUNT)})


def default_out_dir(model_path: str | Path, split: str) -> Path:
    """`<model dir>/eval-<split>`: beside a .keras file or a SavedModel directory, or inside
    a training workdir or export directory."""
    given = Path(model_path)
    resolved = resolve_model_path(given)
    parent = given if resolved != given else resolved.parent
    return parent / f"eval-{split}"


def evaluate(model: str | Path, data: str | Path, *, split: str = "test",
             n_traj: int | None = None, steps: int | None = None,
             out_dir: str | Path | None = None, batch_size: int = 32, chunk: int = 100,
             max_lag: int = MAX_LAG, snapshot_steps: Sequence[int] | None = None,
             snapshot_trajectory: int = 0, divergence_factor: float = DIVERGENCE_FACTOR,
             progress: bool = True) -> dict[str, Any]:
    """Evaluates `model` on `split` of the dataset `data`; writes metrics.json,
    order_parameters.npz and the figures to `out_dir`; returns the metrics.

    n_traj: the first n trajectories (default all); steps: rollout length (default the
    dataset's T). A trajectory counts as diverged from the first step with a non-finite
    value or |rho|, |Q|, |P| above `divergence_factor` times the model's training scales
    (the dataset's if the model records none).
    """
    if split not in records.SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(records.SPLITS)}")
    meta = records.read_meta(data)
    if str(model) != EXACT:
        loaded = load_model(model)
    elif out_dir is None:
        raise ValueError("--model exact has no directory to write into: pass --out")
    else:
        loaded = exact_model(meta)
    check_protocol(loaded.metadata, meta)
    available = meta["splits"][split]["num_trajectories"]
    n_traj = available if n_traj is None else n_traj
    steps = meta["T"] if steps is None else steps
    if not 1 <= n_traj <= available:
        raise ValueError(f"n_traj must be in 1..{available} (the {split} split of {data} "
                         f"has {available} trajectories), got {n_traj}")
    if not 1 <= steps <= meta["T"]:
        raise ValueError(f"steps must be in 1..{meta['T']} (the dataset's saved steps), got "
                         f"{steps}")
    if batch_size < 1 or chunk < 1 or max_lag < 0:
        raise ValueError(f"need batch_size >= 1, chunk >= 1 and max_lag >= 0, got "
                         f"{batch_size}, {chunk}, {max_lag}")
    snapshot_steps = default_snapshot_steps(steps) if snapshot_steps is None else \
        sorted(set(snapshot_steps))
    if not snapshot_steps or not all(0 <= s <= steps for s in snapshot_steps):
        raise ValueError(f"snapshot steps must lie in 0..{steps}, got {snapshot_steps}")
    if not 0 <= snapshot_trajectory < n_traj:
        raise ValueError(f"snapshot_trajectory must be in 0..{n_traj - 1}, got "
                         f"{snapshot_trajectory}")
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model, split)
    out_dir.mkdir(parents=True, exist_ok=True)

    # "Far outside the training range" is judged by the model's own training scales;
    # a dataset made for testing only has none.
    scales = loaded.metadata.get("model_config", {}).get("scales") or meta["scales"]
    if not scales:
        raise ValueError(f"neither the model nor {data} records training scales to judge "
                         f"divergence by; export the model with tf_holstein.export")
    limits = divergence_limits(scales, divergence_factor)
    g = meta["config"]["g_f"]
    from tqdm import tqdm

    with tqdm(total=n_traj * steps, disable=not progress, unit=" sample-steps",
              dynamic_ncols=True, desc="rollout") as bar:
        collected = rollout_against_truth(
            loaded.rollout, truth_batches(data, split, n_traj, batch_size), steps, g, limits,
            chunk=chunk, snapshot_trajectory=snapshot_trajectory,
            snapshot_steps=snapshot_steps, progress=bar.update)
    metrics = compute_metrics(collected, meta["L"], max_lag)
    metrics["run"] = {
        "model": str(loaded.path), "model_format": loaded.format,
        "model_metadata": loaded.metadata, "data": str(data), "split": split,
        "L": meta["L"], "g_f": g, "time_step": meta["time_step"], "steps": steps,
        "n_trajectories": n_traj, "divergence_factor": divergence_factor,
        "divergence_limits": limits, "snapshot_steps": snapshot_steps,
        "snapshot_trajectory": snapshot_trajectory,
        "rollout_seconds": collected.seconds,
        "sample_steps_per_second": n_traj * steps / max(collected.seconds, 1e-9)}
    records.write_json(out_dir / "metrics.json", to_json(metrics))
    _write_traces(out_dir / "order_parameters.npz", collected)
    write_figures(out_dir, collected, metrics, meta["time_step"], snapshot_steps)
    return metrics


def _write_traces(path: Path, collected: Collected) -> None:
    """Every order-parameter trace, [N, steps] each, for further analysis."""
    buffer = io.BytesIO()
    np.savez(buffer, index=collected.index, first_diverged_step=collected.first_diverged,
             **{f"{source}_{name}": getattr(collected, source)[name]
                for source in ("truth", "prediction") for name in ORDER_PARAMETERS})
    records.atomic_write_bytes(path, buffer.getvalue())


def write_figures(out_dir: Path, collected: Collected, metrics: Mapping[str, Any],
                  time_step: float, snapshot_steps: Sequence[int]) -> None:
    """snapshots.png, order_parameters.png (the first non-diverged trajectories and the
    ensemble bands) and autocorrelation.png."""
    snapshots = collected.snapshots
    plots.save_figure(plots.snapshot_figure(snapshots["truth"], snapshots["prediction"],
                                            snapshot_steps, time_step),
                      out_dir / "snapshots.png")
    traces = {f"{prefix}_{name}": getattr(collected, source)[name]
              for prefix, source in (("true", "truth"), ("pred", "prediction"))
              for name in ORDER_PARAMETERS}
    rows = [int(r) for r in np.flatnonzero(collected.first_diverged == 0)[:TRACE_ROWS]]
    bands = {name: metrics["bands"][name] for name in ORDER_PARAMETERS}
    plots.save_figure(plots.order_parameter_traces_figure(
        traces, rows, [f"trajectory {collected.index[r]}" for r in rows], time_step, bands,
        metrics["bands"]["percentiles"]), out_dir / "order_parameters.png")
    plots.save_figure(plots.autocorrelation_figure(metrics["autocorrelation"], time_step),
                      out_dir / "autocorrelation.png")


def _define_flags() -> None:
    """The command's own flags, defined only when run as a command (no global clashes);
    --config, --data_dir and --progress come from tf_holstein.cli."""
    flags.DEFINE_string("model", None, "a .keras file, a SavedModel directory, a training "
                        "workdir (its export/saved_model), or 'exact': the RK4 simulator "
                        "restarted from the stored states, the floor of every metric")
    flags.DEFINE_string("data", None, "dataset directory (holding meta.json); default "
                        "<data_dir>/<the --config dataset's name>")
    flags.DEFINE_string("split", "test", "split to evaluate on")
    flags.DEFINE_integer("n_traj", None, "evaluate the first N trajectories (default all)")
    flags.DEFINE_integer("steps", None, "rollout length (default the dataset's saved steps)")
    flags.DEFINE_string("out", None, "output directory (default <model dir>/eval-<split>)")
    flags.DEFINE_integer("eval_batch", 32, "trajectories rolled out together")
    flags.DEFINE_integer("chunk", 100, "steps per rollout call (bounds memory)")
    flags.DEFINE_integer("max_lag", MAX_LAG, "largest autocorrelation lag tau, in steps")
    flags.DEFINE_list("snapshot_steps", None, "steps shown in snapshots.png (default five "
                      "from 0 to 48)")
    flags.DEFINE_integer("snapshot_trajectory", 0, "trajectory shown in snapshots.png")
    flags.DEFINE_float("divergence_factor", DIVERGENCE_FACTOR, "diverged: |value| beyond "
                       "this times the training max-abs scale")
    flags.mark_flag_as_required("model")


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers people quote from an evaluation: counts, median Delta RMSE / std and
    the autocorrelation mismatch of both order parameters with its sampling floor."""
    summary = metrics["summary"]
    return to_json({
        **{key: summary[key] for key in ("n_trajectories", "n_diverged", "steps")},
        **{f"{name}_median_rmse_over_std": summary[name]["median_rmse_over_std"]
           for name in ORDER_PARAMETERS},
        **{f"{name}_autocorrelation_{key}": summary[name][f"autocorrelation_{key}"]
           for name in ORDER_PARAMETERS for key in ("max_abs_diff", "sampling_floor")}})


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        data = FLAGS.data or str(Path(FLAGS.data_dir)
                                 / cli.config_from_flags(sections=["data"]).data.dataset_name)
        metrics = evaluate(
            FLAGS.model, data, split=FLAGS.split, n_traj=FLAGS.n_traj, steps=FLAGS.steps,
            out_dir=FLAGS.out, batch_size=FLAGS.eval_batch, chunk=FLAGS.chunk,
            max_lag=FLAGS.max_lag,
            snapshot_steps=[int(s) for s in FLAGS.snapshot_steps]
            if FLAGS.snapshot_steps else None,
            snapshot_trajectory=FLAGS.snapshot_trajectory,
            divergence_factor=FLAGS.divergence_factor, progress=FLAGS.progress)
    except (ValueError, RuntimeError, IOError) as e:
        sys.exit(f"evaluate: error: {e}")
    print(json.dumps({"out": str(FLAGS.out or default_out_dir(FLAGS.model, FLAGS.split)),
                      **headline(metrics)}, indent=2))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
