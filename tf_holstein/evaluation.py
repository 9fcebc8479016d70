"""Evaluation of a trained model, or of rollouts stored by any framework (`--predictions`):
long rollouts against ground truth, scored and written.

Rolls out (batched) from each trajectory's first state and compares with the stored
trajectory (docs/physics.md): per-step state RMSE of rho, Q and P; RMSE and RMSE / std
of the order parameters Delta_rho and Delta_Q; the autocorrelation A(tau) of both,
truth and prediction; ensemble percentile bands; the physical invariants of the
predicted trajectories (energy, Tr rho, Hermiticity, Tr rho rho^dagger); and which
trajectories diverged (non-finite values, or values far outside the training range),
at which step; the climate beyond A(tau) (`tf_holstein.climate`: distributions, spectra,
S(k), valid time and, on request, the largest Lyapunov exponent; `tf_holstein.near_pi`:
S(k, t) at the two wave numbers nearest pi and its A(tau)). Writes `metrics.json`,
`order_parameters.npz` (every trace) and the figures `snapshots.png`,
`order_parameters.png`, `autocorrelation.png` and those of `climate_plots.FIGURES`.

This module loads the model, streams the trajectories from the TFRecords in batches and
writes the results; `tf_holstein.rollout` rolls each batch out in chunks, the last state
fed back (memory stays bounded on long rollouts), and `tf_holstein.metrics` computes every
number, with the same functions and divergence rule that select the best model in training.
Its command line is `python -m tf_holstein.evaluate` (tf_holstein/evaluate.py).
"""
from __future__ import annotations

import io
import itertools
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_holstein import (baselines, climate, climate_plots, cost, diagnostics, export, metrics,
                         models, near_pi, netcdf, physics, plots, records, rollout)

SNAPSHOT_HORIZON = 48  # default snapshot steps span 0..48, as in the paper's Fig. 3
SNAPSHOT_COUNT = 5
TRACE_ROWS = 4  # trajectories drawn in order_parameters.png (Fig. 7 shows four)
# --noise_contraction measures one-step transitions this many saved steps apart: nearly
# independent states of a chaotic trajectory, and few enough to stay cheap.
NOISE_EVERY = 50


# -- the model ------------------------------------------------------------------------------
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


def load_model(path: str | Path) -> rollout.LoadedModel:
    """Loads a model (see `resolve_model_path`) behind one rollout interface.

    A `.keras` model runs in-process (`HolsteinModel.rollout`); a SavedModel through its
    `rollout` serving signature, exactly as a deployment would.
    """
    path = resolve_model_path(path)
    if path.suffix == ".keras":
        model = keras.saving.load_model(str(path))
        if not isinstance(model, models.HolsteinModel):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a tf-holstein model")
        return rollout.LoadedModel(path, "keras", rollout.keras_rollout(model),
                                   {"model_class": type(model).__name__,
                                    "model_config": json.loads(json.dumps(model.get_config(),
                                                                          default=str))},
                                   model, precision=model.config.precision)
    loaded = tf.saved_model.load(str(path))
    if "rollout" not in loaded.signatures:
        raise ValueError(f"the SavedModel at {path} has no 'rollout' signature (it has "
                         f"{', '.join(loaded.signatures) or 'none'}); export it with "
                         f"tf_holstein.export")
    signature = loaded.signatures["rollout"]

    def saved_model_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        rho = tf.constant(state["rho"], tf.complex64)
        out = signature(rho_real=tf.math.real(rho), rho_imag=tf.math.imag(rho),
                        Q=tf.constant(state["Q"], tf.float32),
                        P=tf.constant(state["P"], tf.float32),
                        n_steps=tf.constant(n_steps, tf.int32))
        return {"rho": tf.complex(out["rho_real"], out["rho_imag"]).numpy(),
                "Q": out["Q"].numpy(), "P": out["P"].numpy()}

    metadata_file = path / "assets" / export.METADATA_ASSET
    metadata = export.read_metadata(path) if metadata_file.exists() else {}
    return rollout.LoadedModel(path, "saved_model", saved_model_rollout, metadata, loaded,
                               precision=metadata.get("model_config", {}).get("precision",
                                                                              "float32"))


def check_protocol(metadata: Mapping[str, Any], meta: Mapping[str, Any],
                   allow_other_L: bool = False) -> None:
    """Refuses a dataset whose prediction interval or final coupling differ from the
    model's training data (when the export recorded them): its steps would not match.

    Another chain length is refused too unless `allow_other_L` (as batch inference does):
    the networks are convolutional and run on any chain, but were trained on one.
    """
    trained = metadata.get("data")
    if not trained:
        return
    problems = []
    if trained["L"] != meta["L"] and not allow_other_L:
        problems.append(f"the model was trained on L = {trained['L']}, the dataset has "
                        f"L = {meta['L']} (pass --allow_other_L to run it there anyway)")
    if "time_step" in metadata and not math.isclose(metadata["time_step"], meta["time_step"],
                                                    rel_tol=1e-9):
        problems.append(f"the model predicts steps of {metadata['time_step']:g} hbar/t, the "
                        f"dataset is saved every {meta['time_step']:g}")
    if not math.isclose(trained["g_f"], meta["config"]["g_f"], rel_tol=1e-9):
        problems.append(f"the model was trained at g_f = {trained['g_f']:g}, the dataset "
                        f"quenches to g_f = {meta['config']['g_f']:g}")
    if problems:
        raise ValueError("model and dataset do not match: " + "; ".join(problems))


# -- streaming rollout ----------------------------------------------------------------------
def truth_batches(dataset_dir: str | Path, split: str, n_traj: int, batch_size: int,
                  indices: Collection[int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The first n_traj trajectories of a split (of those whose index is in `indices`, if
    given), in shard order, `batch_size` at a time: `rho` complex64 [B, T+1, L, L], `Q`, `P`
    float32 [B, T+1, L], `index` int64 [B]."""
    meta = records.read_meta(dataset_dir)
    shards = records.complete_shards(dataset_dir, split, meta)
    wanted = None if indices is None else {int(i) for i in indices}
    trajectories = itertools.islice(
        (trajectory for path in shards
         for trajectory in records.iterate_shard(path, records.STATE_KEYS)
         if wanted is None or int(trajectory["index"]) in wanted), n_traj)
    L, T = meta["L"], meta["T"]
    while batch := list(itertools.islice(trajectories, batch_size)):
        arrays = {key: np.stack([t[key] for t in batch]) for key in batch[0]}
        if arrays["rho"].shape[1:] != (T + 1, L, L):
            raise IOError(f"{dataset_dir} {split}: trajectories have rho of shape "
                          f"{arrays['rho'].shape[1:]}, meta.json implies {(T + 1, L, L)}")
        yield arrays


def _keeping_initial(batches: Iterator[dict[str, np.ndarray]],
                     kept: list[dict[str, np.ndarray]], count: int
                     ) -> Iterator[dict[str, np.ndarray]]:
    """`batches` passed on unchanged, their first `count` initial states appended to `kept`
    on the way (so that the cost is measured without reading the trajectories again)."""
    for batch in batches:
        missing = count - sum(len(states["Q"]) for states in kept)
        if missing > 0:
            kept.append({key: batch[key][:missing, 0] for key in records.STATE_KEYS})
        yield batch


def truth_scales(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max-abs of rho's real and imaginary parts, of Q and of P over `truth_batches`."""
    scales = dict.fromkeys(records.STATE_KEYS, 0.0)
    for batch in batches:
        for key in records.STATE_KEYS:
            parts = (batch[key].real, batch[key].imag) if key == "rho" else (batch[key],)
            scales[key] = max(scales[key], *(float(np.abs(part).max()) for part in parts))
    return scales


def transitions(dataset_dir: str | Path, split: str, n_traj: int, batch_size: int, every: int
                ) -> tuple[rollout.State, rollout.State]:
    """Stored states at steps 0, every, 2 every, ... of the first n_traj trajectories and the
    states one step later: rho complex64 [M, L, L], Q, P float32 [M, L] each."""
    parts: dict[str, tuple[list, list]] = {key: ([], []) for key in records.STATE_KEYS}
    for batch in truth_batches(dataset_dir, split, n_traj, batch_size):
        steps = np.arange(0, batch["Q"].shape[1] - 1, every)
        for key, (states, targets) in parts.items():
            states.append(batch[key][:, steps].reshape(-1, *batch[key].shape[2:]))
            targets.append(batch[key][:, steps + 1].reshape(-1, *batch[key].shape[2:]))
    return ({key: np.concatenate(states) for key, (states, _) in parts.items()},
            {key: np.concatenate(targets) for key, (_, targets) in parts.items()})


# -- predictions from any framework ---------------------------------------------------------
def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The rollouts in a predictions `.npz` as pipelines/batch_inference.py writes them:
    `index` int [N] (trajectory numbers of a split), `Delta_rho`, `Delta_Q` [N, steps+1] and
    optionally `rho` complex [N, steps+1, L, L], `Q`, `P` [N, steps+1, L], all three or none;
    step 0 is the initial state; or the same as netCDF (`.nc`, `python -m tf_holstein.netcdf
    --predictions`). Non-finite values are allowed (a diverged rollout)."""
    if Path(path).suffix == ".nc":
        arrays = netcdf.predictions_from_netcdf(path)
    else:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable .npz of arrays (or a .nc netCDF "
                             f"file): {e}") from None
    missing = [key for key in ("index", *metrics.ORDER_PARAMETERS) if key not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: a predictions file holds index, "
                         f"Delta_rho, Delta_Q and optionally rho, Q, P (the layout of "
                         f"pipelines/batch_inference.py)")
    states = [key for key in records.STATE_KEYS if key in arrays]
    if states and len(states) < len(records.STATE_KEYS):
        raise ValueError(f"{path} holds {', '.join(states)} but not all of rho, Q, P: give "
                         f"every state array or none")
    index, shape = arrays["index"], arrays["Delta_rho"].shape
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"{path}: index must be integers [N], got {index.dtype} "
                         f"{list(index.shape)}")
    if len(np.unique(index)) != len(index):
        raise ValueError(f"{path}: index names a trajectory more than once")
    if len(shape) != 2 or shape[0] != len(index) or arrays["Delta_Q"].shape != shape:
        raise ValueError(f"{path}: Delta_rho {list(shape)} and Delta_Q "
                         f"{list(arrays['Delta_Q'].shape)} must both be [N, steps+1] with "
                         f"N = {len(index)}, the length of index")
    if states:
        L = arrays["Q"].shape[-1]
        for key, tail in (("rho", (L, L)), ("Q", (L,)), ("P", (L,))):
            if arrays[key].shape != (*shape, *tail):
                raise ValueError(f"{path}: {key} has shape {list(arrays[key].shape)}, "
                                 f"expected {[*shape, *tail]} beside Delta_rho {list(shape)}")
    return {key: arrays[key] for key in ("index", *metrics.ORDER_PARAMETERS, *states)}


def replay(predictions: Mapping[str, np.ndarray], batches: Iterator[dict[str, np.ndarray]],
           source: str) -> tuple[rollout.RolloutFn, Iterator[dict[str, np.ndarray]]]:
    """Stored rollouts (`read_predictions`) as a rollout for `rollout.against_truth`, with
    the truth `batches` it is to be run on (wrapped to follow them): each batch is answered
    with the stored rows of its trajectory indices, chunk after chunk; the states if stored,
    else the order parameters alone. Step 0 must be the truth's initial state, to float32
    rounding (of a mean over L sites for the order parameters), else the predictions were
    made from another split, dataset or start step."""
    row_of = {int(i): row for row, i in enumerate(predictions["index"])}
    keys = [key for key in records.STATE_KEYS if key in predictions] or \
        list(metrics.ORDER_PARAMETERS)
    cursor: dict[str, Any] = {}

    def followed() -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            cursor.update(rows=np.array([row_of[int(i)] for i in batch["index"]]), step=0,
                          index=batch["index"])
            yield batch

    def replayed(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        rows, step = cursor["rows"], cursor["step"]
        if step == 0:
            _check_start(predictions, rows, state, cursor["index"], source)
        cursor["step"] = step + n_steps
        return {key: predictions[key][rows, step + 1:step + 1 + n_steps] for key in keys}

    return replayed, followed()


def _check_start(predictions: Mapping[str, np.ndarray], rows: np.ndarray,
                 state: Mapping[str, np.ndarray], index: np.ndarray, source: str) -> None:
    """Refuses stored rollouts whose step 0 is not the truth's initial `state`."""
    delta_rho, delta_q = (np.asarray(x) for x in physics.order_parameters(
        np.asarray(state["rho"], np.complex128), np.asarray(state["Q"], np.float64)))
    # {key: (expected, the values it is made of, how many of them it sums)}: a stored state
    # is a copy, equal up to one float32 rounding of its values; an order parameter is a
    # mean over the L sites that its producer may have summed in float32, one rounding each.
    L = state["Q"].shape[-1]
    expected = {**{key: (state[key], state[key], 1) for key in records.STATE_KEYS
                   if key in predictions},
                "Delta_rho": (delta_rho, state["rho"], L), "Delta_Q": (delta_q, state["Q"], L)}
    for key, (value, parts, terms) in expected.items():
        tolerance = 2 * terms * float(np.finfo(np.float32).eps) * float(np.max(np.abs(parts)))
        with np.errstate(invalid="ignore"):
            difference = np.abs(predictions[key][rows, 0] - value).reshape(len(rows), -1)
        wrong = np.flatnonzero(~(difference.max(axis=1) <= tolerance))  # NaN is wrong too
        if wrong.size:
            first = wrong[0]
            raise ValueError(
                f"{source}: row {rows[first]} (index {index[first]}) does not start at "
                f"trajectory {index[first]}'s initial state in the split ({key} differs by "
                f"{difference[first].max():.3g}): each array holds steps + 1 entries, entry 0 "
                f"being the initial state; were the predictions made from another split, "
                f"dataset or start step?")


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
    """`eval-<split>` in the model's own folder: inside a model directory (a shipped
    SavedModel folder, a training workdir, an export directory), beside a `.keras` file or a
    SavedModel directory named `saved_model` (an export's artefact)."""
    given = Path(model_path)
    if given.is_file() or given.name == "saved_model":
        return given.parent / f"eval-{split}"
    return given / f"eval-{split}"


def predictions_out_dir(path: str | Path, split: str) -> Path:
    """`<file stem>-eval-<split>` beside a predictions file."""
    path = Path(path)
    return path.parent / f"{path.stem}-eval-{split}"


def evaluate(model: str | Path, data: str | Path, *, split: str = "test",
             n_traj: int | None = None, steps: int | None = None,
             out_dir: str | Path | None = None, batch_size: int = rollout.BATCH_SIZE,
             chunk: int = rollout.CHUNK,
             max_lag: int = metrics.MAX_LAG, snapshot_steps: Sequence[int] | None = None,
             snapshot_trajectory: int = 0,
             divergence_factor: float = metrics.DIVERGENCE_FACTOR, allow_other_L: bool = False,
             noise_levels: Sequence[float] = (), lyapunov_trajectories: int = 0,
             cost_batch: int = cost.BATCH, cost_steps: int = cost.STEPS,
             cost_repeats: int = cost.REPEATS, progress: bool = True) -> dict[str, Any]:
    """Evaluates `model` on `split` of the dataset `data`; writes metrics.json,
    order_parameters.npz and the figures to `out_dir`; returns the metrics.

    n_traj: the first n trajectories (default all); steps: rollout length (default the
    dataset's T). A trajectory counts as diverged from the first step with a non-finite
    value or |rho|, |Q|, |P| above `divergence_factor` times the model's training scales
    (the dataset's if the model records none). With `noise_levels`, metrics.json also holds
    `noise_contraction` (diagnostics.noise_contraction on every NOISE_EVERY-th transition);
    with `lyapunov_trajectories` N > 0, `lyapunov` (`lyapunov_exponents` from the first N
    initial states: twin rollouts, so it costs about 2N more trajectories' rollouts and as
    many of the exact simulator). `cost` holds the rollout's cost (`cost.measure`: wall time
    per trajectory per saved step at batch `cost_batch`, the median of `cost_repeats` timed
    rollouts of `cost_steps` steps (at most `steps`) from the split's first initial states,
    after the scoring), or None with `cost_repeats` 0.
    """
    meta = _read_meta(data, split)
    builtin = baselines.is_baseline(str(model))
    loaded = baselines.baseline_model(str(model), meta) if builtin else load_model(model)
    if builtin and out_dir is None:
        raise ValueError(f"--model {model} has no directory to write into: pass --out")
    check_protocol(loaded.metadata, meta, allow_other_L)
    available = meta["splits"][split]["num_trajectories"]
    n_traj = available if n_traj is None else n_traj
    steps = meta["T"] if steps is None else steps
    if not 1 <= n_traj <= available:
        raise ValueError(f"n_traj must be in 1..{available} (the {split} split of {data} "
                         f"has {available} trajectories), got {n_traj}")
    if not 1 <= steps <= meta["T"]:
        raise ValueError(f"steps must be in 1..{meta['T']} (the dataset's saved steps), got "
                         f"{steps}")
    # "Far outside the training range" is judged by the model's own training scales;
    # a dataset made for testing only has none.
    scales = loaded.metadata.get("model_config", {}).get("scales") or meta["scales"]
    if not scales and builtin:
        # A physics model has no training range: it is judged by the truth's own.
        scales = truth_scales(truth_batches(data, split, n_traj, batch_size))
    initial: list[dict[str, np.ndarray]] = []  # the first initial states, for the cost
    collected, result = _score(
        loaded.rollout, _keeping_initial(truth_batches(data, split, n_traj, batch_size),
                                         initial, cost_batch), data, split, meta,
        n_traj=n_traj, steps=steps, scales=scales, batch_size=batch_size, chunk=chunk,
        max_lag=max_lag, snapshot_steps=snapshot_steps, snapshot_trajectory=snapshot_trajectory,
        divergence_factor=divergence_factor, lyapunov_trajectories=lyapunov_trajectories,
        progress=progress)
    result["run"].update({
        "model": str(loaded.path), "model_format": loaded.format,
        "model_metadata": loaded.metadata, "rollout_seconds": collected.seconds,
        "sample_steps_per_second": n_traj * steps / max(collected.seconds, 1e-9)})
    if noise_levels:
        states, targets = transitions(data, split, n_traj, batch_size, NOISE_EVERY)
        result["noise_contraction"] = diagnostics.noise_contraction(
            lambda state: {key: value[:, 0] for key, value in loaded.rollout(state, 1).items()},
            states, targets, noise_levels)
    if lyapunov_trajectories:
        result["lyapunov"] = lyapunov_exponents(loaded.rollout, data, split,
                                                lyapunov_trajectories, steps, meta)
    result["cost"] = None
    if cost_repeats:
        result["cost"] = cost.measure(
            loaded, {key: np.concatenate([s[key] for s in initial]) for key in
                     records.STATE_KEYS}, batch=cost_batch, steps=min(cost_steps, steps),
            repeats=cost_repeats)
    write_results(out_dir if out_dir is not None else default_out_dir(model, split),
                  collected, result)
    return result


def evaluate_predictions(predictions: str | Path, data: str | Path, *, split: str = "test",
                         out_dir: str | Path | None = None,
                         batch_size: int = rollout.BATCH_SIZE, max_lag: int = metrics.MAX_LAG,
                         snapshot_steps: Sequence[int] | None = None,
                         snapshot_trajectory: int = 0,
                         divergence_factor: float = metrics.DIVERGENCE_FACTOR,
                         lyapunov_trajectories: int = 0, progress: bool = True
                         ) -> dict[str, Any]:
    """Scores the rollouts in a predictions file (`read_predictions`; from any framework)
    against `split` of the dataset `data` as `evaluate` scores a model's, and writes the
    same files to `out_dir` (default `<file>-eval-<split>` beside it); returns the metrics.

    With states in the file everything is scored (the order parameters computed from the
    states); with `Delta_rho` and `Delta_Q` alone, what they give: no state errors, no
    invariants of the prediction, no S(k) (nor S(k, t) near pi) and no snapshots, and a
    trajectory counts as diverged where an order parameter is non-finite or beyond the
    divergence limits of rho or Q (which bound it). Divergence is judged by the dataset's
    scales. `lyapunov_trajectories` measures the truth's exponent only (there is no model
    to twin).
    """
    path = Path(predictions)
    meta = _read_meta(data, split)
    arrays = read_predictions(path)
    index, steps = arrays["index"], arrays["Delta_rho"].shape[1] - 1
    available = meta["splits"][split]["num_trajectories"]
    outside = index[(index < 0) | (index >= available)]
    if outside.size:
        raise ValueError(f"{path}: index holds {outside[0]}, but the {split} split of {data} "
                         f"has trajectories 0..{available - 1}: are the predictions of "
                         f"another split or dataset?")
    if not 1 <= steps <= meta["T"]:
        raise ValueError(f"{path} holds {steps} steps after the initial state; the "
                         f"trajectories of {data} have {meta['T']}: predictions can be scored "
                         f"over 1..{meta['T']} steps")
    if "Q" in arrays and arrays["Q"].shape[-1] != meta["L"]:
        raise ValueError(f"{path}: the predictions have L = {arrays['Q'].shape[-1]}, {data} "
                         f"has L = {meta['L']}")
    replayed, batches = replay(arrays, truth_batches(data, split, len(index), batch_size,
                                                     indices=index), f"{path}")
    collected, result = _score(
        replayed, batches, data, split, meta, n_traj=len(index), steps=steps,
        scales=meta["scales"], batch_size=batch_size, chunk=steps, max_lag=max_lag,
        snapshot_steps=snapshot_steps, snapshot_trajectory=snapshot_trajectory,
        divergence_factor=divergence_factor, lyapunov_trajectories=lyapunov_trajectories,
        progress=progress)
    result["run"].update({"predictions": str(path),
                          "predictions_hold_states": "Q" in arrays})
    result["cost"] = None  # the rollouts were made elsewhere
    if lyapunov_trajectories:
        result["lyapunov"] = lyapunov_exponents(None, data, split, lyapunov_trajectories,
                                                steps, meta)
    write_results(out_dir if out_dir is not None else predictions_out_dir(path, split),
                  collected, result)
    return result


def _read_meta(data: str | Path, split: str) -> dict[str, Any]:
    if split not in records.SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(records.SPLITS)}")
    return records.read_meta(data)


def _score(rollout_fn: rollout.RolloutFn, batches: Iterator[dict[str, np.ndarray]],
           data: str | Path, split: str, meta: Mapping[str, Any], *, n_traj: int,
           steps: int, scales: Mapping[str, float] | None, batch_size: int, chunk: int,
           max_lag: int, snapshot_steps: Sequence[int] | None, snapshot_trajectory: int,
           divergence_factor: float, lyapunov_trajectories: int, progress: bool
           ) -> tuple[rollout.Collected, dict[str, Any]]:
    """Checks the settings, rolls `rollout_fn` out against the n_traj trajectories of truth
    in `batches` and computes the metrics and the climate; `run` holds the settings."""
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
    if not 0 <= lyapunov_trajectories <= n_traj:
        raise ValueError(f"lyapunov_trajectories must be in 0..{n_traj} (the trajectories "
                         f"evaluated), got {lyapunov_trajectories}")
    if not scales:
        raise ValueError(f"neither the model nor {data} records training scales to judge "
                         f"divergence by; export the model with tf_holstein.export")
    limits = metrics.divergence_limits(scales, divergence_factor)
    g = meta["config"]["g_f"]
    from tqdm import tqdm

    with tqdm(total=n_traj * steps, disable=not progress, unit=" sample-steps",
              dynamic_ncols=True, desc="rollout") as bar:
        collected = rollout.against_truth(
            rollout_fn, batches, steps, g, limits, chunk=chunk,
            snapshot_trajectory=snapshot_trajectory, snapshot_steps=snapshot_steps,
            progress=bar.update)
    result = metrics.compute_metrics(collected, meta["L"], max_lag)
    result.update(climate_of(collected, meta["time_step"], meta["L"], max_lag))
    result["run"] = {
        "data": str(data), "split": split, "L": meta["L"], "g_f": g,
        "time_step": meta["time_step"], "steps": steps, "n_trajectories": n_traj,
        "divergence_factor": divergence_factor, "divergence_limits": limits,
        "snapshot_steps": snapshot_steps, "snapshot_trajectory": snapshot_trajectory}
    return collected, result


def write_results(out_dir: str | Path, collected: rollout.Collected,
                  result: Mapping[str, Any]) -> None:
    """metrics.json, order_parameters.npz and the figures, into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records.write_json(out_dir / "metrics.json", to_json(result))
    _write_traces(out_dir / "order_parameters.npz", collected)
    write_figures(out_dir, collected, result, result["run"]["time_step"],
                  result["run"]["snapshot_steps"])


def climate_of(collected: rollout.Collected, time_step: float, L: int,
               max_lag: int = metrics.MAX_LAG) -> dict[str, Any]:
    """`climate.climate_metrics` of a collected rollout (steps 1..steps, the diverged
    trajectories left out of the prediction's statistics): `distribution`, `spectrum` and
    `valid_time`, and with predicted states `near_pi.near_pi_climate` (A(tau) up to
    max_lag); nothing for rollouts too short for a spectrum."""
    if collected.truth["Delta_rho"].shape[1] < climate.MIN_SEGMENT:
        return {}
    kept = collected.first_diverged == 0
    out = climate.climate_metrics(
        {name: collected.truth[name] for name in metrics.ORDER_PARAMETERS},
        {name: collected.prediction[name] for name in metrics.ORDER_PARAMETERS},
        time_step, kept=kept, structure_factors=collected.structure_factors)
    if collected.structure_series is not None:
        out[near_pi.SECTION] = near_pi.near_pi_climate(
            collected.structure_series["truth"], collected.structure_series["prediction"], L,
            kept=kept, max_lag=max_lag)
    return out


def lyapunov_exponents(model_rollout: rollout.RolloutFn | None, data: str | Path, split: str,
                       n_traj: int, steps: int, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The largest Lyapunov exponent (`climate.largest_lyapunov`) of the exact RK4 simulator
    (`truth`) and of the model (`prediction`; None without a model) from the first n_traj
    initial states of the split, renormalised every saved step for `steps` steps, of which
    the first climate.LYAPUNOV_TRANSIENT hbar/t (at most a quarter) are not counted."""
    initial = next(truth_batches(data, split, n_traj, n_traj))
    state = {key: initial[key][:, 0] for key in records.STATE_KEYS}
    time_step, config = meta["time_step"], meta["config"]
    transient = min(steps // 4, math.ceil(climate.LYAPUNOV_TRANSIENT / time_step))
    schedule = dict(time_step=time_step, n_intervals=steps - transient,
                    transient_intervals=transient)
    truth = climate.largest_lyapunov(
        climate.simulator_advance(config["g_f"], config["dt"], config["save_interval"]),
        state, separation=climate.EXACT_SEPARATION, **schedule)
    prediction = None if model_rollout is None else climate.largest_lyapunov(
        climate.rollout_advance(model_rollout), state, separation=climate.MODEL_SEPARATION,
        **schedule)
    return {"truth": truth, "prediction": prediction}


def _write_traces(path: Path, collected: rollout.Collected) -> None:
    """Every order-parameter trace, [N, steps] each, for further analysis."""
    buffer = io.BytesIO()
    np.savez(buffer, index=collected.index, first_diverged_step=collected.first_diverged,
             **{f"{source}_{name}": getattr(collected, source)[name]
                for source in ("truth", "prediction") for name in metrics.ORDER_PARAMETERS})
    records.atomic_write_bytes(path, buffer.getvalue())


def write_figures(out_dir: Path, collected: rollout.Collected, result: Mapping[str, Any],
                  time_step: float, snapshot_steps: Sequence[int]) -> None:
    """snapshots.png (if the prediction has states), order_parameters.png (the first
    non-diverged trajectories and the ensemble bands), autocorrelation.png (with S(k, t)
    near pi if computed) and, if computed, the climate's figures
    (`climate_plots.write_climate_figures`)."""
    snapshots = collected.snapshots
    if snapshots["prediction"]:
        plots.save_figure(plots.snapshot_figure(snapshots["truth"], snapshots["prediction"],
                                                snapshot_steps, time_step),
                          out_dir / "snapshots.png")
    traces = {f"{prefix}_{name}": getattr(collected, source)[name]
              for prefix, source in (("true", "truth"), ("pred", "prediction"))
              for name in metrics.ORDER_PARAMETERS}
    rows = [int(r) for r in np.flatnonzero(collected.first_diverged == 0)[:TRACE_ROWS]]
    bands = {name: result["bands"][name] for name in metrics.ORDER_PARAMETERS}
    plots.save_figure(plots.order_parameter_traces_figure(
        traces, rows, [f"trajectory {collected.index[r]}" for r in rows], time_step, bands,
        result["bands"]["percentiles"]), out_dir / "order_parameters.png")
    modes = result.get(near_pi.SECTION, {})
    curves = {**result["autocorrelation"],
              **{name: modes[name]["autocorrelation"] for name in near_pi.MODES if name in modes}}
    plots.save_figure(plots.autocorrelation_figure(curves, time_step),
                      out_dir / "autocorrelation.png")
    if "distribution" in result:
        climate_plots.write_climate_figures(out_dir, result, result.get("lyapunov"))


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers people quote from an evaluation: counts, median Delta RMSE / std, the
    autocorrelation mismatch of both order parameters with its sampling floor, the scores
    that select a model in training (`metrics.selection_scores`) and, where computed, the
    climate's distances with their floors (S(k, t) near pi: its mean's relative error and
    its A(tau) mismatch), the median valid time, the Lyapunov exponents and the rollout's
    cost in microseconds per trajectory per saved step."""
    summary = result["summary"]
    numbers = {
        **{key: summary[key] for key in ("n_trajectories", "n_diverged", "steps")},
        **{f"{name}_median_rmse_over_std": summary[name]["median_rmse_over_std"]
           for name in metrics.ORDER_PARAMETERS},
        **{f"{name}_autocorrelation_{key}": summary[name][f"autocorrelation_{key}"]
           for name in metrics.ORDER_PARAMETERS for key in ("max_abs_diff", "sampling_floor")},
        **{f"selection_{key}": summary["selection"][key] for key in sorted(summary["selection"])}}
    # In a fixed order, whether the result is fresh or read back from metrics.json.
    if "distribution" in result:
        for name in metrics.ORDER_PARAMETERS:
            entry = result["distribution"][name]
            numbers[f"{name}_wasserstein_1"] = entry["wasserstein_1"]
            numbers[f"{name}_wasserstein_1_sampling_floor"] = entry["sampling_floor"]
        for name in (*metrics.ORDER_PARAMETERS, "structure_factor"):
            if name not in result["spectrum"]:
                continue
            entry = result["spectrum"][name]
            prefix = name if name == "structure_factor" else f"{name}_spectrum"
            numbers[f"{prefix}_relative_error"] = entry["relative_error"]
            numbers[f"{prefix}_sampling_floor"] = entry["sampling_floor"]
        for name in near_pi.MODES if near_pi.SECTION in result else ():
            entry = result[near_pi.SECTION][name]
            numbers[f"{name}_mean_relative_error"] = entry["relative_error"]
            numbers[f"{name}_mean_sampling_floor"] = entry["sampling_floor"]
            for key in ("max_abs_diff", "sampling_floor"):
                numbers[f"{name}_autocorrelation_{key}"] = entry["autocorrelation"][key]
        numbers["valid_time_median"] = result["valid_time"]["median"]
        # A median at the last time is a lower bound: say how many never left.
        numbers["valid_time_censored"] = result["valid_time"]["n_censored"]
        numbers["valid_time_reference_median"] = result["valid_time"]["reference_median"]
    if "lyapunov" in result:
        for source in ("truth", "prediction"):
            entry = result["lyapunov"][source]
            numbers[f"lyapunov_{source}"] = entry["mean"] if entry else None
    if result.get("cost"):
        numbers["cost_us_per_trajectory_step"] = result["cost"]["us_per_trajectory_step"]
    return to_json(numbers)
