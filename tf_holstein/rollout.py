"""Rollouts of a model against stored truth, in chunks that feed back their last state.

One loop for evaluation and for training's validation, so that both score the same
rollout: each chunk's last predicted state is the next chunk's input, so memory stays
O(batch * chunk * L^2) however long the rollout, and only per-step scalars
(`metrics.state_statistics`, errors, divergence, S(k, t) near pi), each trajectory's mean
structure factor and a few snapshot states are kept.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from tf_holstein import climate, metrics, near_pi, records

State = dict[str, np.ndarray]
# rollout(state, n_steps): state {'rho': complex64 [B, L, L], 'Q', 'P': float32 [B, L]} ->
# the states after steps 1..n_steps as NumPy, [B, n_steps, ...].
RolloutFn = Callable[[Mapping[str, np.ndarray], int], State]

BATCH_SIZE = 32  # trajectories rolled out together
CHUNK = 100  # steps per rollout call (bounds memory)


@dataclasses.dataclass
class LoadedModel:
    """A model ready to roll out, whatever form it was saved in, or a baseline.

    rollout(state, n_steps): state `{'rho': complex64 [B, L, L], 'Q', 'P': float32 [B, L]}`
    -> the states after steps 1..n_steps as NumPy, `[B, n_steps, ...]`.
    """

    path: Path  # the `.keras` file or SavedModel directory loaded, or the baseline's spec
    format: str  # "keras", "saved_model", or the baseline's spec
    rollout: RolloutFn
    metadata: dict[str, Any]  # the export's metadata asset; model class and config for .keras
    handle: Any  # the loaded object (keeps a SavedModel's variables alive)
    precision: str = "float32"  # of the arithmetic: float32, mixed_bfloat16 or float64


def keras_rollout(model: Any) -> RolloutFn:
    """A `HolsteinModel`'s in-process rollout behind the RolloutFn interface."""
    def rollout(state: Mapping[str, np.ndarray], n_steps: int) -> State:
        out = model.rollout({key: state[key] for key in records.STATE_KEYS}, n_steps)
        return {key: np.asarray(value) for key, value in out.items()}

    return rollout


def array_batches(arrays: Mapping[str, np.ndarray], batch_size: int = BATCH_SIZE
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Trajectories held in memory (`records.load_split`) in batches as `against_truth`
    takes them: `rho`, `Q`, `P` [B, T+1, ...] and `index` [B]."""
    n = len(arrays["index"])
    for start in range(0, n, batch_size):
        yield {key: arrays[key][start:start + batch_size]
               for key in (*records.STATE_KEYS, "index")}


def against_truth(rollout: RolloutFn, batches: Iterator[Mapping[str, np.ndarray]],
                  steps: int, g: float, limits: Mapping[str, float], *, chunk: int = CHUNK,
                  snapshot_trajectory: int = 0, snapshot_steps: Sequence[int] = (),
                  progress: Callable[[int], None] | None = None) -> metrics.Collected:
    """Rolls every batch out for `steps` steps in chunks, comparing with its truth.

    batches: `rho`, `Q`, `P` [B, T+1, ...] and `index` [B] each (`array_batches`,
    `truth.truth_batches`); limits: `metrics.divergence_limits`. Each chunk's last
    predicted state is fed back as the next chunk's input, so memory is
    O(batch * chunk * L^2) however long the rollout; chunking does not change the result.
    A rollout may return the order parameters alone (`Delta_rho`, `Delta_Q` [B, n]: stored
    predictions replayed, `predictions.replay`); then only they are scored, and `mse`,
    `structure_factors`, `structure_series` and the predicted snapshots are empty.
    progress(n) is called with the sample-steps done.
    """
    parts: dict[str, list] = {}
    snapshots: dict[str, list] = {"truth": [], "prediction": []}
    offset, seconds, states = 0, 0.0, True
    for batch in batches:
        size = batch["rho"].shape[0]
        truth = {key: batch[key][:, :steps + 1] for key in records.STATE_KEYS}
        state = {key: value[:, 0] for key, value in truth.items()}
        rows: dict[str, list] = {"truth": [], "prediction": [], "bad": [],
                                 **{f"mse_{key}": [] for key in records.STATE_KEYS},
                                 **{f"{prefix}_{source}": [] for source in snapshots
                                    for prefix in ("S", "near_pi")}}
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
            states = "rho" in predicted
            window = {key: value[:, start + 1:start + n + 1] for key, value in truth.items()}
            rows["truth"].append(metrics.state_statistics(window["rho"], window["Q"],
                                                          window["P"], g))
            rows["bad"].append(metrics.out_of_range(predicted, limits))
            if not states:
                rows["prediction"].append({name: predicted[name]
                                           for name in metrics.ORDER_PARAMETERS})
            else:
                rows["prediction"].append(metrics.state_statistics(
                    predicted["rho"], predicted["Q"], predicted["P"], g))
                _errors(rows, predicted, window)
                if keep_snapshots:
                    for step in snapshot_steps:
                        if start < step <= start + n:
                            for source, values in (("truth", window), ("prediction", predicted)):
                                snapshots[source].append({key: value[local, step - start - 1]
                                                          for key, value in values.items()})
            state = {key: value[:, -1] for key, value in predicted.items()}
            if progress:
                progress(size * n)
        _append(parts, "initial", metrics.state_statistics(
            truth["rho"][:, 0], truth["Q"][:, 0], truth["P"][:, 0], g))
        for source in ("truth", "prediction"):
            _append(parts, source, _join_steps(rows[source]))
        bad = np.concatenate(rows["bad"], axis=1)
        _append(parts, "first_diverged", np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, 0))
        _append(parts, "index", batch["index"])
        if states:
            _append(parts, "mse", {key: np.concatenate(rows[f"mse_{key}"], axis=1)
                                   for key in records.STATE_KEYS})
            _append(parts, "structure_factors", {source: sum(rows[f"S_{source}"]) / steps
                                                 for source in snapshots})
            _append(parts, "structure_series", {source: _join_steps(rows[f"near_pi_{source}"])
                                                for source in snapshots})
        offset += size
    if not offset:
        raise ValueError("no trajectories to evaluate")
    merged = {name: _concatenate(values) for name, values in parts.items()}
    return metrics.Collected(
        index=merged["index"], initial=merged["initial"], truth=merged["truth"],
        prediction=merged["prediction"], mse=merged.get("mse", {}),
        first_diverged=merged["first_diverged"],
        snapshots={source: {key: np.stack([s[key] for s in kept]) for key in records.STATE_KEYS}
                   if kept and states else {}
                   for source, kept in snapshots.items()},
        seconds=seconds, structure_factors=merged.get("structure_factors"),
        structure_series=merged.get("structure_series"))


def _errors(rows: dict[str, list], predicted: Mapping[str, np.ndarray],
            truth: Mapping[str, np.ndarray]) -> None:
    """Appends a chunk's mean squared errors over sites of rho, Q, P [B, n], the summed
    structure factors of its truth and prediction [B, L/2 + 1] and their S(k, t) near pi
    ({name: [B, n]}) to `rows`."""
    with np.errstate(over="ignore", invalid="ignore"):
        for source, Q in (("truth", truth["Q"]), ("prediction", predicted["Q"])):
            factors = climate.structure_factor(Q)[1]
            rows[f"S_{source}"].append(factors.sum(axis=1))
            rows[f"near_pi_{source}"].append(near_pi.series(factors, Q.shape[-1]))
        for key in records.STATE_KEYS:
            error = np.abs(predicted[key].astype(np.complex128 if key == "rho"
                                                 else np.float64) - truth[key]) ** 2
            rows[f"mse_{key}"].append(error.mean(axis=(-2, -1) if key == "rho" else -1))


def _append(parts: dict[str, list], name: str, value: Any) -> None:
    parts.setdefault(name, []).append(value)


def _join_steps(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-chunk series {name: [B, n]} joined along the steps: {name: [B, steps]}."""
    return {key: np.concatenate([c[key] for c in chunks], axis=1) for key in chunks[0]}


def _concatenate(values: list) -> Any:
    """Per-batch values (arrays or nested dicts of them) joined along the trajectories."""
    if isinstance(values[0], dict):
        return {key: _concatenate([v[key] for v in values]) for key in values[0]}
    return np.concatenate(values)
