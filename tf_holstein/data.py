"""Streaming training windows from trajectory TFRecords (docs/physics.md, docs/training.md).

A window is a ground-truth state at saved step k and the n_step states that
follow it, for every start k in 0..T-n_step of every trajectory (T + 1 saved
states). `make_dataset` yields batches of windows as `(inputs, targets)`:

    inputs   rho complex64 [B, L, L], Q, P float32 [B, L]     state k (+ noise)
    targets  rho complex64 [B, n_step, L, L], Q, P float32 [B, n_step, L]
             states k+1..k+n_step (never noisy); with `derivatives=True` also
             drho, dQ, dP [B, n_step, ...]: target j's label is the exact
             right-hand side at g_f evaluated at mid state k+j, the state
             half-way between saved steps k+j and k+j+1.

Memory stays flat however large the data: files are read in an interleave,
each trajectory (one Example) is parsed once, its derivative labels are
computed once for all its mid states, and it is cut into windows by slicing
(views that share its memory, no copies); the windows of `cycle_length`
trajectories are interleaved, each trajectory in its own random start
order, and a shuffle buffer (at most about SHUFFLE_BUFFER_BYTES of windows)
mixes them further. What is held is a small multiple of cycle_length parsed
trajectories (measured: 1.0 GB beyond TensorFlow's own 0.6 GB at L = 32,
T = 1200, with derivatives; benchmarks/pipeline.py). Input noise is drawn per batch from stateless random ops keyed
by a seeded stream, so a seed fixes the whole sequence and no random state
lives in the model (where MirroredStrategy replicas would share it). n_step
and noise are arguments, so each curriculum stage builds its own pipeline
over the same files.

Own data: `make_dataset_from_files` takes file patterns of TFRecords in the
schema of `records.py` (one Example per trajectory; uncompressed) plus g_f,
and runs the same pipeline.

A corrupt or truncated shard raises `tf.errors.InvalidArgumentError` whose
message names the file: each file is read with errors suppressed and the
bytes of the records read are checked against the file's size at its end.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from . import physics, records

AUTOTUNE = tf.data.AUTOTUNE
CYCLE_LENGTH = 16  # trajectories whose windows are interleaved at any time
SHUFFLE_BUFFER_BYTES = 256 * 2**20  # memory of the window shuffle buffer
MAX_SHUFFLE_BUFFER = 2**14  # windows; enough to mix many trajectories at small L
READ_BUFFER_BYTES = 2**20  # per open TFRecord file
_RECORD_OVERHEAD = 16  # bytes of TFRecord framing per record: length, two CRCs
_MID_KEYS = tuple(f"mid_{key}" for key in records.STATE_KEYS)
_DERIVATIVE_KEYS = tuple(f"d{key}" for key in records.STATE_KEYS)


def make_dataset(data_dir: str | os.PathLike, split: str, *, n_step: int, batch_size: int,
                 noise_std: float = 0.0, derivatives: bool = False, shuffle: bool = True,
                 seed: int | None = None, repeat: bool = False, drop_remainder: bool = False,
                 input_context: tf.distribute.InputContext | None = None,
                 cycle_length: int = CYCLE_LENGTH, shuffle_buffer: int | None = None
                 ) -> tf.data.Dataset:
    """Batches of (inputs, targets) windows from a split of a tf-holstein dataset.

    data_dir is the dataset directory (holding meta.json); derivative labels use
    its g_f. See the module docstring for the element structure and
    `make_dataset_from_files` for the arguments.
    """
    meta = records.read_meta(data_dir)
    files = records.complete_shards(data_dir, split, meta)
    if not files:
        raise ValueError(f"the {split} split of {data_dir} has no trajectories")
    return make_dataset_from_files(
        [str(f) for f in files], g_f=meta["config"]["g_f"], L=meta["L"], n_step=n_step,
        batch_size=batch_size, noise_std=noise_std, derivatives=derivatives, shuffle=shuffle,
        seed=seed, repeat=repeat, drop_remainder=drop_remainder, input_context=input_context,
        cycle_length=cycle_length, shuffle_buffer=shuffle_buffer)


def make_dataset_from_files(file_patterns: str | Sequence[str], *, n_step: int,
                            batch_size: int, g_f: float | None = None, L: int | None = None,
                            noise_std: float = 0.0, derivatives: bool = False,
                            shuffle: bool = True, seed: int | None = None, repeat: bool = False,
                            drop_remainder: bool = False,
                            input_context: tf.distribute.InputContext | None = None,
                            cycle_length: int = CYCLE_LENGTH, shuffle_buffer: int | None = None
                            ) -> tf.data.Dataset:
    """Batches of (inputs, targets) windows from TFRecords in the `records.py` schema.

    file_patterns: paths or glob patterns (tf.io.gfile.glob, so gs:// works) of
        uncompressed TFRecord files, one Example per trajectory; trajectories
        may differ in length T but not in L.
    g_f: the post-quench coupling, needed for derivative labels.
    L: chain length; read from the first trajectory if not given.
    n_step: states predicted per window; windows start at every k in
        0..T-n_step (a trajectory with T < n_step contributes none).
    batch_size: the global batch; with `input_context`, each pipeline yields
        `input_context.get_per_replica_batch_size(batch_size)`.
    noise_std: sigma of docs/training.md, on the input state only: N(0, sigma) on Q
        and P, complex noise of variance sigma^2 on rho (real and imaginary
        parts each sigma / sqrt 2; not Hermitian).
    derivatives: add drho, dQ, dP [B, n_step, ...] targets (module docstring).
    shuffle: mix windows across files, trajectories and start steps; without
        it, each window once per epoch, in file, trajectory and start order.
    seed: fixes the order and the noise (each epoch still differs from the
        last); None draws them at random.
    repeat: repeat the epochs forever (shuffling mixes across epoch ends).
    drop_remainder: drop a last partial batch (a static batch size, for training).
    input_context: from `strategy.distribute_datasets_from_function`; each input
        pipeline reads its own files if there are at least as many files as
        pipelines, otherwise every window whose position in the (seeded) window
        stream falls to it, which partitions the windows when all pipelines use
        the same seed.
    cycle_length: trajectories whose windows are interleaved at any time; the
        memory held grows in proportion.
    shuffle_buffer: windows in the shuffle buffer; default about
        SHUFFLE_BUFFER_BYTES of windows.
    """
    if n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {n_step}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be non-negative, got {noise_std}")
    if derivatives and g_f is None:
        raise ValueError("derivative labels need g_f, the coupling after the quench")
    files = _expand(file_patterns)
    if L is None:
        L = _read_L(files[0])
    keys = records.STATE_KEYS + (_MID_KEYS if derivatives else ())
    pipelines, pipeline_id, element_shard = 1, 0, False
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) >= pipelines:
            files = files[pipeline_id::pipelines]
        else:
            element_shard = True
    # Pipelines sharding one window stream need the same order; the noise differs.
    file_seed, trajectory_seed, window_seed = _seeds(
        seed, [0 if element_shard else pipeline_id, 0], 3)
    noise_seed, = _seeds(seed, [pipeline_id, 1], 1)
    file_cycle = min(cycle_length, len(files)) if shuffle else 1

    paths = tf.data.Dataset.from_tensor_slices(
        (files, np.array([tf.io.gfile.stat(f).length for f in files], np.int64)))
    if shuffle:
        paths = paths.shuffle(len(files), seed=file_seed, reshuffle_each_iteration=True)
    if repeat:
        paths = paths.repeat()
    # Sequential interleaves: parallel ones prefetch whole records and
    # trajectories per input (measured: +0.7 GB at L = 32) and were no faster.
    serialized = paths.interleave(_checked_records, cycle_length=file_cycle, block_length=1)
    trajectories = tf.data.Dataset.zip(
        serialized.map(lambda path, record: _trajectory(path, record, keys, L, g_f),
                       num_parallel_calls=AUTOTUNE, deterministic=True),
        tf.data.Dataset.random(seed=trajectory_seed, rerandomize_each_iteration=True))
    windows = trajectories.interleave(
        lambda trajectory, key: _windows(trajectory, key, n_step, shuffle),
        cycle_length=cycle_length if shuffle else 1, block_length=1)
    if element_shard:
        windows = windows.shard(pipelines, pipeline_id)
    if shuffle:
        if shuffle_buffer is None:
            shuffle_buffer = default_shuffle_buffer(L, n_step, derivatives, batch_size)
        windows = windows.shuffle(shuffle_buffer, seed=window_seed,
                                  reshuffle_each_iteration=True)
    batches = windows.batch(batch_size, drop_remainder=drop_remainder,
                            num_parallel_calls=AUTOTUNE, deterministic=True)
    if noise_std > 0:
        batches = tf.data.Dataset.zip(
            batches, tf.data.Dataset.random(seed=noise_seed, rerandomize_each_iteration=True)
        ).map(lambda window, key: (add_noise(window[0], key, noise_std), window[1]),
              num_parallel_calls=AUTOTUNE, deterministic=True)
    return batches.prefetch(AUTOTUNE)


def count_windows(data_dir: str | os.PathLike, split: str, n_step: int) -> int:
    """Windows in one epoch of a split: trajectories x (T - n_step + 1), from meta.json."""
    meta = records.read_meta(data_dir)
    return meta["splits"][split]["num_trajectories"] * max(0, meta["T"] - n_step + 1)


def default_shuffle_buffer(L: int, n_step: int, derivatives: bool, batch_size: int) -> int:
    """Windows that fit SHUFFLE_BUFFER_BYTES, at least a batch, at most MAX_SHUFFLE_BUFFER."""
    state_bytes = 8 * L * L + 2 * 4 * L  # complex64 rho, float32 Q and P
    window_bytes = (n_step + 1 + (n_step if derivatives else 0)) * state_bytes
    return max(batch_size, min(MAX_SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES // window_bytes))


def _seeds(seed: int | None, stream: list[int], n: int) -> list[int | None]:
    """n independent op seeds derived from (seed, stream); None if seed is None."""
    if seed is None:
        return [None] * n
    return [int(s) for s in np.random.SeedSequence([seed, *stream]).generate_state(n)]


def _expand(file_patterns: str | Sequence[str]) -> list[str]:
    patterns = [file_patterns] if isinstance(file_patterns, (str, os.PathLike)) else \
        list(file_patterns)
    files = []
    for pattern in patterns:
        matches = sorted(tf.io.gfile.glob(str(pattern)))
        if not matches:
            raise FileNotFoundError(f"no TFRecord file matches {pattern}")
        files += matches
    return files


def _read_L(path: str) -> int:
    """The chain length of the first trajectory of a file; a clear error if unreadable."""
    try:
        record = next(iter(tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES)), None)
        if record is None:
            raise ValueError("the file holds no record")
        return int(_parse(tf.constant(path), record, ("Q",), None)["Q"].shape[-1])
    except (tf.errors.OpError, ValueError) as e:
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        raise IOError(f"cannot read a trajectory of the tf-holstein schema from {path}: "
                      f"{message.splitlines()[0]}") from None


def _checked_records(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """(path, serialized Example) of one file; an error naming the file if it is corrupt.

    The reader stops at the first unreadable record (errors suppressed); a
    sentinel after the last record checks that the records read cover the file.
    """
    tagged = tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES).ignore_errors().map(
        lambda record: (record, tf.constant(False))).concatenate(
        tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(True))))

    def count(total: tf.Tensor, element: tuple[tf.Tensor, tf.Tensor]
              ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        record, is_end = element
        total = total + tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD
        complete = tf.logical_or(tf.logical_not(is_end),
                                 tf.equal(total - _RECORD_OVERHEAD, size))
        check = tf.debugging.Assert(complete, [
            "corrupt or truncated TFRecord shard", path, "- records readable up to byte",
            total - _RECORD_OVERHEAD, "of", size,
            "(regenerate it: delete it and rerun the datagen command)"])
        with tf.control_dependencies([check]):
            return total, (path, record, tf.identity(is_end))

    return tagged.scan(tf.constant(0, tf.int64), count).filter(
        lambda path, record, is_end: tf.logical_not(is_end)).map(
        lambda path, record, is_end: (path, record))


def _parse(path: tf.Tensor, serialized: tf.Tensor, keys: Sequence[str], L: int | None
           ) -> dict[str, tf.Tensor]:
    """The arrays `keys` of one trajectory, shapes checked (naming the file) and set.

    Only the requested features are decoded, so the mid states cost nothing
    unless derivative labels are wanted.
    """
    arrays = records.parse_trajectory(serialized, keys)
    if L is None:
        return arrays
    states = tf.shape(arrays["Q"], out_type=tf.int64)[0]
    checks = []
    for key, array in arrays.items():
        steps = states - 1 if key.startswith("mid_") else states
        shape = _shape_string(tf.shape(array, out_type=tf.int64))
        expected = _shape_string(tf.stack([steps, L, L] if key.endswith("rho") else [steps, L]))
        checks.append(tf.debugging.Assert(tf.equal(shape, expected), [
            path, ":", key, "has shape", shape, "but L =", L, "and", states,
            "saved states imply", expected]))
    with tf.control_dependencies(checks):
        return {key: tf.ensure_shape(tf.identity(array),
                                     [None, L, L] if key.endswith("rho") else [None, L])
                for key, array in arrays.items()}


def _trajectory(path: tf.Tensor, serialized: tf.Tensor, keys: Sequence[str], L: int,
                g_f: float | None) -> dict[str, tf.Tensor]:
    """The saved states rho, Q, P [T+1, ...] of one trajectory and, if `keys` hold the
    mid states, the exact right-hand side at them, drho, dQ, dP [T, ...].

    A mid state is in up to n_step windows, so computing its derivative once
    here is up to n_step times cheaper than per window.
    """
    arrays = _parse(path, serialized, keys, L)
    if _MID_KEYS[0] in arrays:
        derivatives = physics.rhs(*(arrays.pop(key) for key in _MID_KEYS), g_f)
        arrays.update(zip(_DERIVATIVE_KEYS, derivatives))
    return arrays


def _shape_string(shape: tf.Tensor) -> tf.Tensor:
    """"1001, 32, 32": shapes of any rank compare as strings."""
    return tf.strings.reduce_join(tf.strings.as_string(shape), separator=", ")


def _windows(trajectory: dict[str, tf.Tensor], key: tf.Tensor, n_step: int, shuffle: bool
             ) -> tf.data.Dataset:
    """The windows of one trajectory as (state k, states k+1..k+n_step and derivatives at
    mid states k..k+n_step-1), all slices sharing the trajectory's memory.

    Starts run 0..T-n_step, in a random order keyed by `key` when shuffling.
    """
    starts = tf.range(tf.maximum(tf.shape(trajectory["Q"], out_type=tf.int64)[0] - n_step, 0))
    if shuffle:
        starts = tf.random.experimental.stateless_shuffle(starts, seed=tf.stack([key, 0]))

    def window(k: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        inputs = {name: trajectory[name][k] for name in records.STATE_KEYS}
        targets = {}
        for name, array in trajectory.items():
            first = k + 1 if name in records.STATE_KEYS else k  # derivatives: mid states
            targets[name] = tf.ensure_shape(array[first:first + n_step],
                                            [n_step, *array.shape[1:]])
        return inputs, targets

    return tf.data.Dataset.from_tensor_slices(starts).map(window)


def add_noise(state: Mapping[str, tf.Tensor], key: tf.Tensor | int, noise_std: float
              ) -> dict[str, tf.Tensor]:
    """A batch of states with the training's Gaussian input noise, keyed by `key` (int64):
    N(0, noise_std) on Q and P, complex noise of variance noise_std^2 on rho."""
    key = tf.cast(key, tf.int64)
    seeds = [tf.stack([key, tf.constant(i, tf.int64)]) for i in range(4)]
    rho_std = noise_std / math.sqrt(2.0)
    shape = tf.shape(state["rho"])
    noisy = {"rho": state["rho"] + tf.complex(
        tf.random.stateless_normal(shape, seeds[0], stddev=rho_std),
        tf.random.stateless_normal(shape, seeds[1], stddev=rho_std))}
    for name, seed in zip(("Q", "P"), seeds[2:]):
        noisy[name] = state[name] + tf.random.stateless_normal(
            tf.shape(state[name]), seed, stddev=noise_std)
    return noisy
