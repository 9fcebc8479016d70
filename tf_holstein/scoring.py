"""Evaluation of a trained model, a classical integrator, or rollouts stored by any
framework: long rollouts against ground truth, scored (`evaluate`, `evaluate_predictions`).

Rolls out (batched) from each trajectory's first state and compares with the stored
trajectory (docs/physics.md): per-step state RMSE of rho, Q and P; RMSE and RMSE / std
of the order parameters Delta_rho and Delta_Q; the autocorrelation A(tau) of both,
truth and prediction; ensemble percentile bands; the physical invariants of the
predicted trajectories (energy, Tr rho, Hermiticity, Tr rho rho^dagger); and which
trajectories diverged (non-finite values, or values far outside the training range),
at which step; the climate beyond A(tau) (`tf_holstein.climate`: distributions, spectra,
S(k), valid time and, on request, the largest Lyapunov exponent; `tf_holstein.near_pi`:
S(k, t) at the two wave numbers nearest pi and its A(tau)).

The model comes from `tf_holstein.loading`, the truth streams in batches from
`tf_holstein.truth`, stored predictions are replayed by `tf_holstein.predictions`;
`tf_holstein.rollout` rolls each batch out in chunks, the last state fed back (memory stays
bounded on long rollouts), `tf_holstein.metrics` computes every number, with the same
functions and divergence rule that select the best model in training, and
`tf_holstein.report` writes them. The command line is `python -m tf_holstein.evaluate`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tf_holstein import (baselines, climate, cost, diagnostics, loading, metrics, near_pi,
                         records, report, rollout, truth)
from tf_holstein.predictions import read_predictions, replay

SNAPSHOT_HORIZON = 48  # default snapshot steps span 0..48, as in the paper's Fig. 3
SNAPSHOT_COUNT = 5
# --noise_contraction measures one-step transitions this many saved steps apart: nearly
# independent states of a chaotic trajectory, and few enough to stay cheap.
NOISE_EVERY = 50


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
    loaded = loading.load(model, meta)
    if builtin and out_dir is None:
        raise ValueError(f"--model {model} has no directory to write into: pass --out")
    loading.check_protocol(loaded.metadata, meta, allow_other_L)
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
        scales = truth.truth_scales(truth.truth_batches(data, split, n_traj, batch_size))
    initial: list[dict[str, np.ndarray]] = []  # the first initial states, for the cost
    collected, result = _score(
        loaded.rollout, _keeping_initial(truth.truth_batches(data, split, n_traj, batch_size),
                                         initial, cost_batch), data, split, meta,
        n_traj=n_traj, steps=steps, scales=scales, batch_size=batch_size, chunk=chunk,
        max_lag=max_lag, snapshot_steps=snapshot_steps, snapshot_trajectory=snapshot_trajectory,
        divergence_factor=divergence_factor, lyapunov_trajectories=lyapunov_trajectories,
        progress=progress)
    result["run"].update({
        "model": report.recorded_path(loaded.path), "model_format": loaded.format,
        "model_metadata": loaded.metadata, "rollout_seconds": collected.seconds,
        "sample_steps_per_second": n_traj * steps / max(collected.seconds, 1e-9)})
    if noise_levels:
        states, targets = truth.transitions(data, split, n_traj, batch_size, NOISE_EVERY)
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
    report.write_results(
        out_dir if out_dir is not None else report.default_out_dir(model, split),
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
    replayed, batches = replay(
        arrays, truth.truth_batches(data, split, len(index), batch_size, indices=index),
        f"{path}")
    collected, result = _score(
        replayed, batches, data, split, meta, n_traj=len(index), steps=steps,
        scales=meta["scales"], batch_size=batch_size, chunk=steps, max_lag=max_lag,
        snapshot_steps=snapshot_steps, snapshot_trajectory=snapshot_trajectory,
        divergence_factor=divergence_factor, lyapunov_trajectories=lyapunov_trajectories,
        progress=progress)
    result["run"].update({"predictions": report.recorded_path(path),
                          "predictions_hold_states": "Q" in arrays})
    result["cost"] = None  # the rollouts were made elsewhere
    if lyapunov_trajectories:
        result["lyapunov"] = lyapunov_exponents(None, data, split, lyapunov_trajectories,
                                                steps, meta)
    report.write_results(
        out_dir if out_dir is not None else report.predictions_out_dir(path, split),
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
           ) -> tuple[metrics.Collected, dict[str, Any]]:
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
        "data": report.recorded_path(data), "split": split, "L": meta["L"], "g_f": g,
        "time_step": meta["time_step"], "steps": steps, "n_trajectories": n_traj,
        "divergence_factor": divergence_factor, "divergence_limits": limits,
        "snapshot_steps": snapshot_steps, "snapshot_trajectory": snapshot_trajectory}
    return collected, result


def climate_of(collected: metrics.Collected, time_step: float, L: int,
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
    initial = next(truth.truth_batches(data, split, n_traj, n_traj))
    state = {key: initial[key][:, 0] for key in records.STATE_KEYS}
    time_step, config = meta["time_step"], meta["config"]
    transient = min(steps // 4, math.ceil(climate.LYAPUNOV_TRANSIENT / time_step))
    schedule = dict(time_step=time_step, n_intervals=steps - transient,
                    transient_intervals=transient)
    exact = climate.largest_lyapunov(
        climate.simulator_advance(config["g_f"], config["dt"], config["save_interval"]),
        state, separation=climate.EXACT_SEPARATION, **schedule)
    prediction = None if model_rollout is None else climate.largest_lyapunov(
        climate.rollout_advance(model_rollout), state, separation=climate.MODEL_SEPARATION,
        **schedule)
    return {"truth": exact, "prediction": prediction}


def default_snapshot_steps(steps: int) -> list[int]:
    """Five steps from 0 to min(steps, 48), as in the paper's Fig. 3."""
    horizon = min(steps, SNAPSHOT_HORIZON)
    return sorted({int(round(s)) for s in np.linspace(0, horizon, SNAPSHOT_COUNT)})


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
