"""The truth a rollout is scored against: the stored trajectories of a split, streamed from
its TFRecord shards in batches (memory bounded by the batch, however many trajectories), and
what scoring derives from them (their scales, one-step transitions).
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Collection, Iterator

import numpy as np

from tf_holstein import records, rollout


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
