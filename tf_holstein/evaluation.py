"""Evaluation of a trained model: long rollouts against ground truth, scored and written.

Rolls out (batched) from each trajectory's first state and compares with the stored
trajectory (docs/physics.md): per-step state RMSE of rho, Q and P; RMSE and RMSE / std
of the order parameters Delta_rho and Delta_Q; the autocorrelation A(tau) of both,
truth and prediction; ensemble percentile bands; the physical invariants of the
predicted trajectories (energy, Tr rho, Hermiticity, Tr rho rho^dagger); and which
trajectories diverged (non-finite values, or values far outside the training range),
at which step; the climate beyond A(tau) (`tf_holstein.climate`: distributions, spectra,
S(k), valid time and, on request, the largest Lyapunov exponent). Writes `metrics.json`,
`order_parameters.npz` (every trace) and the figures `snapshots.png`,
`order_parameters.png`, `autocorrelation.png` and those of `climate_plots.FIGURES`.

This module loads the model, streams the trajectories from the TFRecords in batches and
writes the results; `tf_holstein.rollout` rolls each batch out in chunks, the last state
fed back (memory stays bounded on long rollouts), and `tf_holstein.metrics` computes every
number, with the same functions and divergence rule that select the best model in training.
Its command line is `python -m tf_holstein.evaluate` (tf_holstein/evaluate.py).
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_holstein import (climate, climate_plots, diagnostics, export, metrics, models, plots,
                         records, rollout)

SNAPSHOT_HORIZON = 48  # default snapshot steps span 0..48, as in the paper's Fig. 3
SNAPSHOT_COUNT = 5
TRACE_ROWS = 4  # trajectories drawn in order_parameters.png (Fig. 7 shows four)
# --noise_contraction measures one-step transitions this many saved steps apart: nearly
# independent states of a chaotic trajectory, and few enough to stay cheap.
NOISE_EVERY = 50
EXACT = "exact"  # --model exact: the RK4 simulator itself, the floor for every learned model


# -- the model ------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedModel:
    """A model ready to roll out, whatever form it was saved in.

    rollout(state, n_steps): state `{'rho': complex64 [B, L, L], 'Q', 'P': float32 [B, L]}`
    -> the states after steps 1..n_steps as NumPy, `[B, n_steps, ...]`.
    """

    path: Path  # the `.keras` file or SavedModel directory actually loaded
    format: str  # "keras", "saved_model" or "exact"
    rollout: rollout.RolloutFn
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
        return LoadedModel(path, "keras", rollout.keras_rollout(model),
                           {"model_class": type(model).__name__,
                            "model_config": json.loads(json.dumps(model.get_config(),
                                                                  default=str))}, model)
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
    return LoadedModel(path, "saved_model", saved_model_rollout, metadata, loaded)


def exact_model(meta: Mapping[str, Any]) -> LoadedModel:
    """The exact RK4 simulator behind the rollout interface, at the dataset's protocol.

    Started from the stored (single-precision) states, it measures what the rounding alone
    does to a chaotic rollout: no learned model can be expected to do better. Each rollout
    call restarts from its (float32) input, so a rollout in chunks is rounded once per chunk.
    """
    from tf_holstein import simulate  # only this model needs the simulator

    config = meta["config"]

    def exact_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        chunks = list(simulate.simulate(
            np.asarray(state["rho"], np.complex128), np.asarray(state["Q"], np.float64),
            np.asarray(state["P"], np.float64), g=config["g_f"], dt=config["dt"],
            save_interval=config["save_interval"], saved_steps=n_steps))
        return {key: np.concatenate([c[key] for c in chunks], axis=1)[:, 1:]
                for key in records.STATE_KEYS}

    return LoadedModel(Path(EXACT), EXACT, exact_rollout, {}, None)


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
def truth_batches(dataset_dir: str | Path, split: str, n_traj: int, batch_size: int
                  ) -> Iterator[dict[str, np.ndarray]]:
    """The first n_traj trajectories of a split, in shard order, `batch_size` at a time:
    `rho` complex64 [B, T+1, L, L], `Q`, `P` float32 [B, T+1, L], `index` int64 [B]."""
    meta = records.read_meta(dataset_dir)
    shards = records.complete_shards(dataset_dir, split, meta)
    trajectories = itertools.islice(
        (trajectory for path in shards
         for trajectory in records.iterate_shard(path, records.STATE_KEYS)), n_traj)
    L, T = meta["L"], meta["T"]
    while batch := list(itertools.islice(trajectories, batch_size)):
        arrays = {key: np.stack([t[key] for t in batch]) for key in batch[0]}
        if arrays["rho"].shape[1:] != (T + 1, L, L):
            raise IOError(f"{dataset_dir} {split}: trajectories have rho of shape "
                          f"{arrays['rho'].shape[1:]}, meta.json implies {(T + 1, L, L)}")
        yield arrays


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
             out_dir: str | Path | None = None, batch_size: int = rollout.BATCH_SIZE,
             chunk: int = rollout.CHUNK,
             max_lag: int = metrics.MAX_LAG, snapshot_steps: Sequence[int] | None = None,
             snapshot_trajectory: int = 0,
             divergence_factor: float = metrics.DIVERGENCE_FACTOR, allow_other_L: bool = False,
             noise_levels: Sequence[float] = (), lyapunov_trajectories: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """Evaluates `model` on `split` of the dataset `data`; writes metrics.json,
    order_parameters.npz and the figures to `out_dir`; returns the metrics.

    n_traj: the first n trajectories (default all); steps: rollout length (default the
    dataset's T). A trajectory counts as diverged from the first step with a non-finite
    value or |rho|, |Q|, |P| above `divergence_factor` times the model's training scales
    (the dataset's if the model records none). With `noise_levels`, metrics.json also holds
    `noise_contraction` (diagnostics.noise_contraction on every NOISE_EVERY-th transition);
    with `lyapunov_trajectories` N > 0, `lyapunov` (`lyapunov_exponents` from the first N
    initial states: twin rollouts, so it costs about 2N more trajectories' rollouts and as
    many of the exact simulator).
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
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model, split)
    out_dir.mkdir(parents=True, exist_ok=True)

    # "Far outside the training range" is judged by the model's own training scales;
    # a dataset made for testing only has none.
    scales = loaded.metadata.get("model_config", {}).get("scales") or meta["scales"]
    if not scales:
        raise ValueError(f"neither the model nor {data} records training scales to judge "
                         f"divergence by; export the model with tf_holstein.export")
    limits = metrics.divergence_limits(scales, divergence_factor)
    g = meta["config"]["g_f"]
    from tqdm import tqdm

    with tqdm(total=n_traj * steps, disable=not progress, unit=" sample-steps",
              dynamic_ncols=True, desc="rollout") as bar:
        collected = rollout.against_truth(
            loaded.rollout, truth_batches(data, split, n_traj, batch_size), steps, g, limits,
            chunk=chunk, snapshot_trajectory=snapshot_trajectory,
            snapshot_steps=snapshot_steps, progress=bar.update)
    result = metrics.compute_metrics(collected, meta["L"], max_lag)
    result.update(climate_of(collected, meta["time_step"]))
    result["run"] = {
        "model": str(loaded.path), "model_format": loaded.format,
        "model_metadata": loaded.metadata, "data": str(data), "split": split,
        "L": meta["L"], "g_f": g, "time_step": meta["time_step"], "steps": steps,
        "n_trajectories": n_traj, "divergence_factor": divergence_factor,
        "divergence_limits": limits, "snapshot_steps": snapshot_steps,
        "snapshot_trajectory": snapshot_trajectory,
        "rollout_seconds": collected.seconds,
        "sample_steps_per_second": n_traj * steps / max(collected.seconds, 1e-9)}
    if noise_levels:
        states, targets = transitions(data, split, n_traj, batch_size, NOISE_EVERY)
        result["noise_contraction"] = diagnostics.noise_contraction(
            lambda state: {key: value[:, 0] for key, value in loaded.rollout(state, 1).items()},
            states, targets, noise_levels)
    if lyapunov_trajectories:
        result["lyapunov"] = lyapunov_exponents(loaded.rollout, data, split,
                                                lyapunov_trajectories, steps, meta)
    records.write_json(out_dir / "metrics.json", to_json(result))
    _write_traces(out_dir / "order_parameters.npz", collected)
    write_figures(out_dir, collected, result, meta["time_step"], snapshot_steps)
    return result


def climate_of(collected: rollout.Collected, time_step: float) -> dict[str, Any]:
    """`climate.climate_metrics` of a collected rollout (steps 1..steps, the diverged
    trajectories left out of the prediction's statistics): `distribution`, `spectrum` and
    `valid_time`; nothing for rollouts too short for a spectrum."""
    if collected.truth["Delta_rho"].shape[1] < climate.MIN_SEGMENT:
        return {}
    return climate.climate_metrics(
        {name: collected.truth[name] for name in metrics.ORDER_PARAMETERS},
        {name: collected.prediction[name] for name in metrics.ORDER_PARAMETERS},
        time_step, kept=collected.first_diverged == 0,
        structure_factors=collected.structure_factors)


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
    """snapshots.png, order_parameters.png (the first non-diverged trajectories and the
    ensemble bands), autocorrelation.png and, if computed, the climate's figures
    (`climate_plots.write_climate_figures`)."""
    snapshots = collected.snapshots
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
    plots.save_figure(plots.autocorrelation_figure(result["autocorrelation"], time_step),
                      out_dir / "autocorrelation.png")
    if "distribution" in result:
        climate_plots.write_climate_figures(out_dir, result, result.get("lyapunov"))


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers people quote from an evaluation: counts, median Delta RMSE / std, the
    autocorrelation mismatch of both order parameters with its sampling floor, the scores
    that select a model in training (`metrics.selection_scores`) and, where computed, the
    climate's distances with their floors, the median valid time and the Lyapunov
    exponents."""
    summary = result["summary"]
    numbers = {
        **{key: summary[key] for key in ("n_trajectories", "n_diverged", "steps")},
        **{f"{name}_median_rmse_over_std": summary[name]["median_rmse_over_std"]
           for name in metrics.ORDER_PARAMETERS},
        **{f"{name}_autocorrelation_{key}": summary[name][f"autocorrelation_{key}"]
           for name in metrics.ORDER_PARAMETERS for key in ("max_abs_diff", "sampling_floor")},
        **{f"selection_{key}": value for key, value in summary["selection"].items()}}
    if "distribution" in result:
        for name, entry in result["distribution"].items():
            numbers[f"{name}_wasserstein_1"] = entry["wasserstein_1"]
            numbers[f"{name}_wasserstein_1_sampling_floor"] = entry["sampling_floor"]
        for name, entry in result["spectrum"].items():
            prefix = name if name == "structure_factor" else f"{name}_spectrum"
            numbers[f"{prefix}_relative_error"] = entry["relative_error"]
            numbers[f"{prefix}_sampling_floor"] = entry["sampling_floor"]
        numbers["valid_time_median"] = result["valid_time"]["median"]
        numbers["valid_time_reference_median"] = result["valid_time"]["reference_median"]
    if "lyapunov" in result:
        for source, entry in result["lyapunov"].items():
            numbers[f"lyapunov_{source}"] = entry["mean"] if entry else None
    return to_json(numbers)
