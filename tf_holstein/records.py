"""TFRecord storage of trajectories: schema, atomic shard writing, reading, metadata.

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

import fcntl
import json
import os
import re
import shutil
import socket
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from . import physics

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
# temporary_prefix's owner, followed by a random part or `tmp`.
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^.]+)\.(?:\w+\.)?tmp(?:\.|$)")
_ERRNO = re.compile(r"errno = (\d+)|\[Errno (\d+)\]")  # as HDF5 and Python word it


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
        raise IOError(f"corrupt TFRecord shard {path}: {error_text(e)} (rerun the datagen "
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


def temporary_prefix(name: str) -> str:
    """The start of a temporary's name for `name`: hidden, and naming its owner (process
    and host), so that a later run can remove what a killed one left behind."""
    return f".{name}.{os.getpid()}@{_host()}."


def create_temporary(path: str | os.PathLike, suffix: str = ".tmp", directory: bool = False
                     ) -> Path:
    """Creates a new, empty temporary file (or directory) beside `path`, to become `path` by
    a rename. Unlike tempfile's (0600, 0700), it gets the permissions of a plain open or
    mkdir: 0666 (0777) less the umask, or the folder's default ACL, so that others can read
    what it becomes, as on a shared filesystem."""
    path = Path(path)
    while True:
        candidate = path.parent / f"{temporary_prefix(path.name)}{os.urandom(4).hex()}{suffix}"
        try:
            if directory:
                os.mkdir(candidate, 0o777)
            else:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:  # another's random part, by chance: draw again
            continue


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporaries (`temporary_prefix`) in `directory` whose owner is a process
    of this host that no longer runs; others' (live, or of another host) stay. Returns them."""
    removed = []
    for path in Path(directory).glob(".*"):
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == _host() and not _alive(int(match["pid"])):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _host() -> str:
    return socket.gethostname().replace(".", "-")  # no dots: the name stays parseable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """An exclusive lock on `path` (flock), which holds its owner's `pid@host` for messages.

    The kernel releases it when its holder exits, kill -9 included, so a dead process never
    leaves it behind; on NFS, Linux takes it as a POSIX lock on the server.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: Any = None

    def acquire(self, wait: bool = False) -> bool:
        """Takes the lock (waiting for its holder with `wait`); False if another holds it."""
        try:
            file = open(self.path, "a+")
        except OSError as e:
            raise IOError(f"cannot create the lock {self.path}: {failure_reason(e)}") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            file.close()
            return False
        try:
            file.truncate(0)
            file.write(f"{os.getpid()}@{_host()}\n")
            file.flush()
        except OSError:
            pass  # the holder's name only serves messages: a full disk leaves the lock held
        self._file = file
        return True

    def holder(self) -> str:
        """Who holds the lock, as its file says: `process PID on host HOST`."""
        try:
            pid, _, host = self.path.read_text().strip().partition("@")
        except OSError:
            pid = host = ""
        return f"process {pid} on host {host}" if pid and host else "another process"

    def release(self, remove: bool = False) -> None:
        """Releases the lock; with `remove` also deletes its file (only once what it guarded
        is complete: a process that then takes a stale copy finds the work done)."""
        if remove:
            self.path.unlink(missing_ok=True)
        self._file.close()
        self._file = None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes a file under a temporary name in the same directory, then renames it."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)


def write_shard(path: str | os.PathLike, examples: Iterable[bytes]) -> None:
    """Writes serialized Examples to a TFRecord file atomically (temporary name, fsync, rename).

    A crash leaves at most a hidden `.NAME.*.tmp` file (which the next run removes,
    `remove_stale_temporaries`), never a partial shard under its final name.
    """
    def write(tmp: str) -> None:
        with tf.io.TFRecordWriter(tmp) as writer:
            for example in examples:
                writer.write(example)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())

    write_atomically(path, write)


def write_atomically(path: str | os.PathLike, write: Callable[[str], None],
                     suffix: str = ".tmp") -> None:
    """write(tmp) fills a temporary beside `path`, which then replaces it; a failed write (a
    full disk, say) removes the temporary and raises IOError naming the file. `suffix` ends
    the temporary's name, for writers that go by the extension (".tmp.keras")."""
    path = Path(path)
    tmp = str(create_temporary(path, suffix))
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError, tf.errors.OpError) as e:  # HDF5 fails with RuntimeError
        Path(tmp).unlink(missing_ok=True)
        raise IOError(f"cannot write {path}: {failure_reason(e)} (files already written are "
                      f"intact: free space and rerun the same command)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_json(path: str | os.PathLike, obj: Any) -> bool:
    """Writes `obj` as write_json does, but only if `path` does not exist yet, atomically (a
    hard link of a complete temporary): False if it did, when that file stays as it was."""
    path = Path(path)
    if path.exists():
        return False
    tmp = None
    try:
        tmp = create_temporary(path)
        with open(tmp, "wb") as f:
            f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise IOError(f"cannot write {path}: {failure_reason(e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def failure_reason(error: BaseException) -> str:
    """Why a write failed, in one line: the system's words for its errno when it carries one
    (HDF5 wraps it in a page of detail, TensorFlow puts it after the file's name), else the
    error's first line."""
    code = getattr(error, "errno", None)
    if not isinstance(code, int):
        found = _ERRNO.search(str(error))
        code = int(found[1] or found[2]) if found else None
    if code:
        return os.strerror(code)
    if isinstance(error, tf.errors.OpError):  # `NAME; No space left on device`
        return error_text(error).rpartition("; ")[2]
    return (str(error).splitlines() or [type(error).__name__])[0]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes indented, key-sorted JSON (byte-identical for equal objects)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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
        raise IOError(f"corrupt or truncated TFRecord shard {path}: {error_text(e)} "
                      f"(delete it and rerun the datagen command to regenerate it)") from None


def error_text(error: tf.errors.OpError) -> str:
    """A TensorFlow error's message as one line for a user: its first line without the
    graph node and op names TensorFlow wraps around it."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]( name: \S*)?", "", error.message.splitlines()[0])
    return " ".join(text.split())


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
