"""TFRecord storage of trajectories: schema, atomic shard writing (`files`), reading, metadata.

One `tf.train.Example` per trajectory, every array stored as the bytes of
`tf.io.serialize_tensor` (TFRecord has no complex type, and parse_tensor is
the fastest decoder):

    rho      complex64 [T+1, L, L]   saved states, rho_ij = <c_j^dagger c_i>
    Q, P     float32   [T+1, L]
    mid_rho  complex64 [T, L, L]     state half-way through each save interval
    mid_Q, mid_P float32 [T, L]
    index    int64                   trajectory number within its split
    phase    int64                   extra RK4 steps before the first saved state

A dataset directory holds `{train,val,test}-NNNNN-of-MMMMM.tfrecord` and
`meta.json` (protocol, counts, phases and the scaling constants).
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from . import files, physics

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
STATE_KEYS = ("rho", "Q", "P")
ARRAY_DTYPES = {"rho": tf.complex64, "Q": tf.float32, "P": tf.float32,
                "mid_rho": tf.complex64, "mid_Q": tf.float32, "mid_P": tf.float32}
# The reference's `data_scalars`: max |.| over the training split of the state, of its time
# derivative at the mid-interval states (drho = max |d rho / dt|, ...) and of the one-step
# increments (delta_rho = max |rho(t + dt) - rho(t)|, ...).
SCALE_KEYS = ("rho", "Q", "P", "drho", "dQ", "dP", "delta_rho", "delta_Q", "delta_P")

_FEATURES = {**{key: tf.io.FixedLenFeature([], tf.string) for key in ARRAY_DTYPES},
             "index": tf.io.FixedLenFeature([], tf.int64),
             "phase": tf.io.FixedLenFeature([], tf.int64)}
_SHARD_PATTERN = re.compile(r"^(train|val|test)-(\d{5})-of-(\d{5})\.tfrecord$")


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """`train-00003-of-00008.tfrecord`."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def list_shards(dataset_dir: str | os.PathLike, split: str) -> list[Path]:
    """The finished shards of a split, sorted; partial (temporary) files are never listed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    directory = Path(dataset_dir)
    return sorted(p for p in directory.glob(f"{split}-*.tfrecord")
                  if _SHARD_PATTERN.match(p.name))


def complete_shards(dataset_dir: str | os.PathLike, split: str,
                    meta: Mapping[str, Any]) -> list[Path]:
    """The shards of a split, checked against meta.json: as many as it lists, each holding
    the trajectories it should (a shard cut at a record boundary would otherwise pass
    for a smaller dataset)."""
    shards = list_shards(dataset_dir, split)
    expected = meta["splits"][split]["num_shards"]
    if len(shards) != expected:
        raise IOError(f"{dataset_dir} has {len(shards)} {split} shards, meta.json lists "
                      f"{expected}: the dataset is incomplete")
    total = meta["splits"][split]["num_trajectories"]
    if "shard_size" not in meta.get("config", {}):
        # A dataset written by other tools may size its shards freely: check the total.
        found = sum(count_records(path) for path in shards)
        if found != total:
            raise IOError(f"{dataset_dir}: its {split} shards hold {found} trajectories, "
                          f"meta.json lists {total}: the dataset is incomplete or damaged")
        return shards
    for path, count in zip(shards, shard_sizes(total, meta["config"]["shard_size"])):
        check_record_count(path, count)
    return shards


def shard_sizes(num_trajectories: int, shard_size: int) -> list[int]:
    """Trajectories in each shard of a split: `shard_size` each, the last one the rest."""
    return [min(shard_size, num_trajectories - start)
            for start in range(0, num_trajectories, shard_size)]


def count_records(path: str | os.PathLike) -> int:
    """The records in a TFRecord file, counted from their length headers alone (each record
    is an 8-byte length, a 4-byte CRC, the data and a 4-byte CRC): cheap for any size."""
    path = Path(path)
    size, offset, count = path.stat().st_size, 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(8)
            if len(header) < 8:
                break
            offset += 16 + struct.unpack("<Q", header)[0]
            count += 1
            f.seek(offset)
    if offset != size:
        raise IOError(f"corrupt or truncated TFRecord shard {path}: its last record is cut "
                      f"off (delete it and rerun the datagen command to regenerate it)")
    return count


def check_record_count(path: str | os.PathLike, expected: int) -> None:
    """IOError naming the shard and the fix unless it holds `expected` records."""
    found = count_records(path)
    if found != expected:
        raise IOError(f"{path} holds {found} trajectories, meta.json implies {expected}: the "
                      f"shard is damaged (delete it and rerun the datagen command to "
                      f"regenerate it)")


def verify_shard(path: str | os.PathLike, expected: int) -> None:
    """IOError naming the shard unless it holds `expected` records whose CRCs all check:
    reads the whole file, as a reader would, so a flipped byte anywhere is found."""
    check_record_count(path, expected)  # a cut record is named without reading the rest
    try:
        tf.data.TFRecordDataset(str(path)).reduce(0, lambda count, _: count + 1)
    except tf.errors.DataLossError as e:
        raise IOError(f"corrupt TFRecord shard {path}: {files.error_text(e)} (rerun the datagen "
                      f"command with --verify to regenerate it)") from None


def encode_trajectory(arrays: Mapping[str, np.ndarray], index: int, phase: int) -> bytes:
    """One trajectory (the keys of ARRAY_DTYPES, without a batch axis) as an Example."""
    feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[
        tf.io.serialize_tensor(tf.convert_to_tensor(arrays[key], dtype)).numpy()]))
        for key, dtype in ARRAY_DTYPES.items()}
    feature["index"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)]))
    feature["phase"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(phase)]))
    # Deterministic: map entries in a fixed order, so equal trajectories give equal bytes
    # in any process.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def parse_trajectory(serialized: tf.Tensor, keys: Sequence[str] | None = None
                     ) -> dict[str, tf.Tensor]:
    """Decodes one Example (graph-compatible, for tf.data).

    keys: the arrays to decode (of ARRAY_DTYPES), to skip the others' cost; by
    default all of them plus `index` and `phase`.
    """
    if keys is not None:
        parsed = tf.io.parse_single_example(serialized, {key: _FEATURES[key] for key in keys})
        return {key: tf.io.parse_tensor(parsed[key], ARRAY_DTYPES[key]) for key in keys}
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    out = {key: tf.io.parse_tensor(parsed[key], dtype) for key, dtype in ARRAY_DTYPES.items()}
    out["index"] = parsed["index"]
    out["phase"] = parsed["phase"]
    return out


def write_shard(path: str | os.PathLike, examples: Iterable[bytes]) -> None:
    """Writes serialized Examples to a TFRecord file atomically (temporary name, fsync, rename).

    A crash leaves at most a hidden `.NAME.*.tmp` file (which the next run removes,
    `files.remove_stale_temporaries`), never a partial shard under its final name.
    """
    def write(tmp: str) -> None:
        with tf.io.TFRecordWriter(tmp) as writer:
            for example in examples:
                writer.write(example)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())

    files.write_atomically(path, write)


def read_meta(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The dataset's meta.json; a clear error if the directory is not a finished dataset."""
    path = Path(dataset_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {dataset_dir} is not a finished tf-holstein dataset "
            f"(generate it with `python -m tf_holstein.datagen`, or finish an interrupted "
            f"run by rerunning the same command)")
    meta = json.loads(path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} has schema version {meta.get('schema_version')!r}; this "
                         f"tf-holstein reads version {SCHEMA_VERSION}")
    return meta


def iterate_shard(path: str | os.PathLike, keys: Sequence[str] | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Yields the trajectories of one shard as NumPy dicts (the arrays `keys` and `index`,
    by default everything); a corrupt file is named."""
    index = {"index": _FEATURES["index"]}
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            arrays = parse_trajectory(record, keys)
            if keys is not None:
                arrays["index"] = tf.io.parse_single_example(record, index)["index"]
            yield {k: v.numpy() for k, v in arrays.items()}
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise IOError(f"corrupt or truncated TFRecord shard {path}: {files.error_text(e)} "
                      f"(delete it and rerun the datagen command to regenerate it)") from None


def load_split(dataset_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """A whole split as NumPy arrays, for small data, analysis and tests.

    Returns `rho` complex64 [N, T+1, L, L], `Q`, `P` float32 [N, T+1, L],
    `mid_rho`, `mid_Q`, `mid_P` [N, T, ...], `index` and `phase` int64 [N] (in
    trajectory order), and `meta` (the dataset's meta.json).
    """
    meta = read_meta(dataset_dir)
    shards = complete_shards(dataset_dir, split, meta)
    L, T = meta["config"]["L"], meta["config"]["saved_steps"]
    trajectories = []
    for path in shards:
        for trajectory in iterate_shard(path):
            for key in ARRAY_DTYPES:
                if trajectory[key].shape != _expected_shape(key, L, T):
                    raise IOError(f"{path}: {key} has shape {trajectory[key].shape}, but "
                                  f"meta.json (L={L}, T={T}) implies {_expected_shape(key, L, T)}")
            trajectories.append(trajectory)
    trajectories.sort(key=lambda t: int(t["index"]))
    keys = (*ARRAY_DTYPES, "index", "phase")
    if trajectories:
        arrays = {key: np.stack([t[key] for t in trajectories]) for key in keys}
    else:
        arrays = {key: np.zeros((0, *_expected_shape(key, L, T)), ARRAY_DTYPES[key].as_numpy_dtype)
                  if key in ARRAY_DTYPES else np.zeros((0,), np.int64) for key in keys}
    arrays["meta"] = meta
    return arrays


def _expected_shape(key: str, L: int, T: int) -> tuple[int, ...]:
    steps = T if key.startswith("mid_") else T + 1
    return (steps, L, L) if key.endswith("rho") else (steps, L)


def trajectory_scales(arrays: Mapping[str, np.ndarray], g: float) -> dict[str, float]:
    """Max-abs statistics (docs/training.md) of a batch of trajectories [N, T(+1), ...].

    rho over real and imaginary parts; the derivatives are the exact right-hand
    side at coupling g evaluated (in float64) at the stored mid states; the
    deltas are the differences of consecutive saved states.
    """
    def max_abs(x: np.ndarray) -> float:
        x = np.asarray(x)
        if np.iscomplexobj(x):
            return float(max(np.max(np.abs(x.real), initial=0.0),
                             np.max(np.abs(x.imag), initial=0.0)))
        return float(np.max(np.abs(x), initial=0.0))

    drho, dQ, dP = physics.rhs(tf.constant(arrays["mid_rho"], tf.complex128),
                               tf.constant(arrays["mid_Q"], tf.float64),
                               tf.constant(arrays["mid_P"], tf.float64), g)
    scales = {key: max_abs(arrays[key]) for key in STATE_KEYS}
    scales.update({f"d{key}": max_abs(d.numpy()) for key, d in zip(STATE_KEYS, (drho, dQ, dP))})
    scales.update({f"delta_{key}": max_abs(np.diff(arrays[key], axis=1)) for key in STATE_KEYS})
    return scales


def merge_scales(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Combines per-shard max-abs statistics into the dataset's."""
    merged = {key: 0.0 for key in SCALE_KEYS}
    for part in parts:
        merged = {key: max(merged[key], float(part[key])) for key in SCALE_KEYS}
    return merged


def shard_scales(path: str | os.PathLike, g: float) -> dict[str, float]:
    """The max-abs statistics of one shard, streamed trajectory by trajectory."""
    return merge_scales(trajectory_scales({k: v[None] for k, v in t.items()}, g)
                        for t in iterate_shard(path))


def scales_from_records(dataset_dir: str | os.PathLike, split: str, g: float
                        ) -> dict[str, float]:
    """The scaling constants of a split, streamed (bounded memory).

    For users who bring their own TFRecords of the documented schema.
    """
    return merge_scales(shard_scales(path, g) for path in list_shards(dataset_dir, split))
