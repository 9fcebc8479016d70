"""Batch inference with an exported tf-holstein SavedModel. Needs only TensorFlow.

    python pipelines/batch_inference.py --model runs/shallow/export/saved_model \
        --input data/shallow/test-*.tfrecord --steps 1200 --out predictions.tfrecord

Reads initial states, rolls each out `--steps` steps through the SavedModel's
`rollout` signature in batches (and in chunks of steps, the last state fed back, so
memory stays bounded), and writes the predicted trajectories with their CDW order
parameters. Nothing of tf_holstein is imported: this runs wherever TensorFlow does.

Inputs (`--input`, one or more):
  * TFRecord files of the tf-holstein schema (one `tf.train.Example` per trajectory;
    `rho` complex64 [T+1, L, L], `Q`, `P` float32 [T+1, L], each the bytes of
    `tf.io.serialize_tensor`; `index` int64), or a dataset directory (its `--split`
    shards). The state at `--start_step` of each trajectory is rolled out.
  * a `.npz` holding initial states: `rho` complex [N, L, L] (or `rho_real` and
    `rho_imag` float [N, L, L]), `Q`, `P` float [N, L], optionally `index` int [N].
Inputs are validated first: wrong shapes or dtypes, non-finite values and a chain
length the model cannot take (its signature's static shape, or the L it was trained
on as recorded in `assets/tf_holstein.json`, unless `--allow_other_L`) fail with a
message naming the array and the problem.

Outputs (`--out`):
  * `.npz`: `index` [N], `rho` complex64 [N, steps+1, L, L], `Q`, `P` float32
    [N, steps+1, L], `Delta_rho`, `Delta_Q` float32 [N, steps+1]; step 0 is the input
    state. Held in memory; prefer TFRecord for large runs.
  * `.tfrecord`: one Example per trajectory with the same arrays (serialized tensors, as
    the dataset schema; `Delta_rho`, `Delta_Q` float32 [steps+1]) and `index`; streamed.
With `--order_parameters_only` only `index`, `Delta_rho` and `Delta_Q` are computed
(the `rollout_order_parameters` signature) and written. Files appear atomically: the output
is written to a hidden temporary beside it (`.NAME.PID@HOST.*.tmp`), opened before the
rollout so that a missing, read-only or unwritable place fails at once, and renamed when
complete; a full disk is reported naming the file, and the temporary of a killed run is
removed by the next run on the same output.
Delta_rho = (1/L) sum_i s_i Re rho_ii, Delta_Q = (1/L) sum_i s_i Q_i, s_i = -1 on even
0-based sites and +1 on odd ones.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

METADATA_ASSET = "tf_holstein.json"  # written beside the graph by tf_holstein.export
SIGNATURE_INPUTS = {"rho_real", "rho_imag", "Q", "P", "n_steps"}
STATE_FEATURES = {"rho": tf.complex64, "Q": tf.float32, "P": tf.float32}
FLOAT_DTYPES = (np.float32, np.float64)
SHARD_NAME = re.compile(r"^(train|val|test)-(\d{5})-of-\d{5}\.tfrecord$")  # a dataset's
COMPLEX_DTYPES = (np.complex64, np.complex128)


class InputError(ValueError):
    """Input the pipeline refuses, with what is wrong and what was expected."""


class OutputError(IOError):
    """An output that cannot be written, with the path and the reason."""


# -- the model --------------------------------------------------------------------------------
class Model:
    """An exported SavedModel: its rollout signatures and what it can take."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if not (path / "saved_model.pb").is_file():
            hint = ""
            for nested in (path / "saved_model", path / "export" / "saved_model"):
                if (nested / "saved_model.pb").is_file():
                    hint = f" (did you mean {nested}?)"
            raise InputError(f"{path} is not a SavedModel directory: no saved_model.pb{hint}")
        self.path = path
        self.loaded = tf.saved_model.load(str(path))
        missing = [name for name in ("rollout", "rollout_order_parameters")
                   if name not in self.loaded.signatures]
        if missing:
            raise InputError(f"the SavedModel at {path} lacks the signature(s) "
                             f"{', '.join(missing)} (it has "
                             f"{', '.join(self.loaded.signatures) or 'none'}); export it "
                             f"with tf_holstein.export")
        for name in ("rollout", "rollout_order_parameters"):
            inputs = set(self.loaded.signatures[name].structured_input_signature[1])
            if inputs != SIGNATURE_INPUTS:
                raise InputError(f"the {name} signature of {path} takes {sorted(inputs)}; "
                                 f"expected {sorted(SIGNATURE_INPUTS)}")
        asset = path / "assets" / METADATA_ASSET
        self.metadata: dict[str, Any] = json.loads(asset.read_text()) if asset.exists() else {}

    @property
    def static_L(self) -> int | None:
        """The chain length fixed by the `rollout` signature's input shape, if any."""
        spec = self.loaded.signatures["rollout"].structured_input_signature[1]["Q"]
        return spec.shape[-1] if spec.shape.rank else None

    @property
    def trained_L(self) -> int | None:
        """The chain length of the model's training data, if the export recorded it."""
        return (self.metadata.get("data") or {}).get("L")

    def rollout(self, state: dict[str, np.ndarray], n_steps: int) -> dict[str, np.ndarray]:
        """States after steps 1..n_steps: `rho` complex64 [B, n, L, L], `Q`, `P` [B, n, L],
        `Delta_rho`, `Delta_Q` [B, n]."""
        out = self.loaded.signatures["rollout"](**_inputs(state),
                                                 n_steps=tf.constant(n_steps, tf.int32))
        return {"rho": tf.complex(out["rho_real"], out["rho_imag"]).numpy(),
                **{key: out[key].numpy() for key in ("Q", "P", "Delta_rho", "Delta_Q")}}

    def rollout_order_parameters(self, state: dict[str, np.ndarray], n_steps: int
                                 ) -> dict[str, np.ndarray]:
        """Only `Delta_rho`, `Delta_Q` [B, n_steps]: no states are materialised."""
        out = self.loaded.signatures["rollout_order_parameters"](
            **_inputs(state), n_steps=tf.constant(n_steps, tf.int32))
        return {key: out[key].numpy() for key in ("Delta_rho", "Delta_Q")}


def _inputs(state: dict[str, np.ndarray]) -> dict[str, tf.Tensor]:
    return {"rho_real": tf.constant(state["rho"].real, tf.float32),
            "rho_imag": tf.constant(state["rho"].imag, tf.float32),
            "Q": tf.constant(state["Q"], tf.float32), "P": tf.constant(state["P"], tf.float32)}


# -- inputs -----------------------------------------------------------------------------------
def expand_inputs(paths: Sequence[str], split: str) -> list[Path]:
    """Input files: each path as given, a dataset directory as its `split` shards."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            shards = sorted(path.glob(f"{split}-*.tfrecord"))
            if not shards:
                raise InputError(f"{path} holds no {split}-*.tfrecord shards")
            expected = shard_sizes(path, split)
            if expected is not None and len(expected) != len(shards):
                raise InputError(f"{path} has {len(shards)} {split} shards, its meta.json "
                                 f"lists {len(expected)}: the dataset is incomplete")
            files.extend(shards)
        elif not path.is_file():
            raise InputError(f"input {path} does not exist")
        elif path.suffix not in (".npz", ".tfrecord"):
            raise InputError(f"input {path}: expected a .tfrecord or .npz file")
        else:
            files.append(path)
    if len({f.suffix for f in files}) > 1:
        raise InputError("inputs mix .npz and .tfrecord files; give one kind")
    return files


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Initial states from a .npz: rho (or rho_real + rho_imag), Q, P, optional index."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(f"{path} is not a readable .npz of numeric arrays: {e}") from None
    if "rho" not in arrays:
        if not {"rho_real", "rho_imag"} <= set(arrays):
            raise InputError(f"{path}: needs `rho` (complex) or `rho_real` and `rho_imag`; "
                             f"found {', '.join(sorted(arrays)) or 'no arrays'}")
        for key in ("rho_real", "rho_imag"):
            _check_dtype(arrays[key], FLOAT_DTYPES, key, path)
        if arrays["rho_real"].shape != arrays["rho_imag"].shape:
            raise InputError(f"{path}: rho_real {arrays['rho_real'].shape} and rho_imag "
                             f"{arrays['rho_imag'].shape} differ in shape")
        arrays["rho"] = arrays.pop("rho_real") + 1j * arrays.pop("rho_imag")
    missing = [key for key in ("Q", "P") if key not in arrays]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}; found "
                         f"{', '.join(sorted(arrays))}")
    states = {key: arrays[key] for key in STATE_FEATURES}
    n = len(states["rho"]) if states["rho"].ndim else 0
    states["index"] = arrays["index"] if "index" in arrays else np.arange(n)
    return states


def shard_sizes(directory: Path, split: str) -> list[int] | None:
    """The trajectories each `split` shard of a tf-holstein dataset directory holds, by its
    meta.json (None without one): shard_size each, the last one the rest."""
    meta_file = directory / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        n, size = meta["splits"][split]["num_trajectories"], meta["config"]["shard_size"]
    except (ValueError, KeyError) as e:
        raise InputError(f"{meta_file} is not a tf-holstein meta.json ({e})") from None
    return [min(size, n - start) for start in range(0, n, size)]


def _expected_records(path: Path) -> int | None:
    """The trajectories a dataset shard (`test-00001-of-00004.tfrecord` beside a meta.json)
    should hold; None for other files."""
    match = SHARD_NAME.match(path.name)
    sizes = shard_sizes(path.parent, match[1]) if match else None
    return sizes[int(match[2])] if sizes and int(match[2]) < len(sizes) else None


def read_tfrecords(paths: Sequence[Path], start_step: int) -> dict[str, np.ndarray]:
    """The state at `start_step` of every trajectory record, in file order; a dataset's
    shard that holds other than the trajectories its meta.json implies is refused."""
    features = {**{key: tf.io.FixedLenFeature([], tf.string) for key in STATE_FEATURES},
                "index": tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
    states: dict[str, list] = {key: [] for key in (*STATE_FEATURES, "index")}
    for path in paths:
        count = 0
        try:
            for k, record in enumerate(tf.data.TFRecordDataset(str(path))):
                count += 1
                where = f"{path} record {k}"
                try:
                    parsed = tf.io.parse_single_example(record, features)
                except tf.errors.InvalidArgumentError as e:
                    raise InputError(f"{where} is not a tf-holstein trajectory: "
                                     f"{e.message.splitlines()[0]} (needs the features rho, "
                                     f"Q, P and index)") from None
                for key, dtype in STATE_FEATURES.items():
                    try:
                        array = tf.io.parse_tensor(parsed[key], dtype).numpy()
                    except tf.errors.InvalidArgumentError:
                        raise InputError(f"{where}: feature {key} must be a serialized "
                                         f"{dtype.name} tensor") from None
                    if array.ndim < 1 or not 0 <= start_step < array.shape[0]:
                        raise InputError(f"{where}: {key} has shape {array.shape}; need a "
                                         f"step axis with step {start_step}")
                    states[key].append(array[start_step])
                index = int(parsed["index"])
                states["index"].append(index if index >= 0 else len(states["index"]))
        except tf.errors.DataLossError as e:
            reason = re.sub(r"\{\{[^}]*\}\}|\[Op:.*", "", e.message.splitlines()[0]).strip()
            raise InputError(f"{path} is not a readable TFRecord file: {reason} (if it is a "
                             f"dataset's shard, delete it and rerun the datagen command to "
                             f"regenerate it)") from None
        expected = _expected_records(path)
        if expected is not None and count != expected:
            raise InputError(f"{path} holds {count} trajectories, its dataset's meta.json "
                             f"implies {expected}: the shard is damaged (delete it and rerun "
                             f"the datagen command to regenerate it)")
    if not states["index"]:
        raise InputError(f"no records in {', '.join(str(p) for p in paths)}")
    shapes = {key: {a.shape for a in states[key]} for key in STATE_FEATURES}
    for key, found in shapes.items():
        if len(found) > 1:
            raise InputError(f"records disagree on the shape of {key}: {sorted(found)}")
    return {key: np.stack(values) for key, values in states.items()}


def _check_dtype(array: np.ndarray, allowed: tuple, name: str, source: Any) -> None:
    if array.dtype not in allowed:
        raise InputError(f"{source}: {name} must be "
                         f"{' or '.join(np.dtype(d).name for d in allowed)}, got {array.dtype}")


def validate_states(states: dict[str, np.ndarray], model: Model, source: Any,
                    allow_other_L: bool = False) -> dict[str, np.ndarray]:
    """Checks dtypes, shapes, finiteness and the chain length; returns complex64/float32
    states `rho` [N, L, L], `Q`, `P` [N, L] and `index` int64 [N]."""
    rho, Q, P = states["rho"], states["Q"], states["P"]
    _check_dtype(rho, COMPLEX_DTYPES, "rho", source)
    _check_dtype(Q, FLOAT_DTYPES, "Q", source)
    _check_dtype(P, FLOAT_DTYPES, "P", source)
    if rho.ndim != 3 or rho.shape[1] != rho.shape[2]:
        raise InputError(f"{source}: rho must have shape [N, L, L], got {rho.shape}")
    n, L = rho.shape[:2]
    for key, array in (("Q", Q), ("P", P)):
        if array.shape != (n, L):
            raise InputError(f"{source}: {key} must have shape [N, L] = {[n, L]} to match "
                             f"rho {rho.shape}, got {array.shape}")
    if n == 0:
        raise InputError(f"{source}: no states")
    index = np.asarray(states["index"])
    if index.shape != (n,) or not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"{source}: index must be integers of shape [N] = [{n}], got "
                         f"{index.dtype} {index.shape}")
    for key, array in (("rho", rho), ("Q", Q), ("P", P)):
        finite = np.isfinite(array).reshape(n, -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise InputError(f"{source}: {key} has non-finite values in {len(bad)} state(s), "
                             f"first at position {bad[0]} (index {index[bad[0]]})")
    if L < 4 or L % 2:
        raise InputError(f"{source}: L = {L}; a half-filled periodic chain needs an even "
                         f"L >= 4")
    if model.static_L is not None and L != model.static_L:
        raise InputError(f"{source}: L = {L}, but the model's signature only takes "
                         f"L = {model.static_L}")
    if model.trained_L is not None and L != model.trained_L and not allow_other_L:
        raise InputError(f"{source}: L = {L}, but the model was trained on L = "
                         f"{model.trained_L}; pass --allow_other_L to run it anyway (its "
                         f"convolutions take any L, its accuracy there is untested)")
    return {"rho": rho.astype(np.complex64), "Q": Q.astype(np.float32),
            "P": P.astype(np.float32), "index": index.astype(np.int64)}


def order_parameters(rho: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Delta_rho, Delta_Q) of states rho complex [..., L, L], Q [..., L]; each [...]."""
    L = Q.shape[-1]
    s = np.where(np.arange(L) % 2 == 0, -1.0, 1.0).astype(Q.dtype)
    density = np.real(np.diagonal(rho, axis1=-2, axis2=-1))
    return (s * density).mean(axis=-1), (s * Q).mean(axis=-1)


# -- rollout ----------------------------------------------------------------------------------
class Progress:
    """A minimal progress bar on stderr (no dependency beyond the standard library)."""

    def __init__(self, total: int, enabled: bool, width: int = 30) -> None:
        self.total, self.enabled, self.width = total, enabled, width
        self.done, self.start = 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            filled = int(self.width * self.done / max(self.total, 1))
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            sys.stderr.write(f"\rrollout [{'#' * filled}{'.' * (self.width - filled)}] "
                             f"{self.done}/{self.total} sample-steps ({rate:.0f}/s)")
            sys.stderr.flush()
            if self.done >= self.total:
                sys.stderr.write("\n")


def rollout_batches(model: Model, states: dict[str, np.ndarray], steps: int, batch_size: int,
                    chunk: int, order_parameters_only: bool = False,
                    progress: Callable[[int], None] | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Yields each batch's trajectories, step 0 (the input) to `steps`: `index` [B],
    `Delta_rho`, `Delta_Q` [B, steps+1] and, unless order_parameters_only, `rho`
    [B, steps+1, L, L], `Q`, `P` [B, steps+1, L]."""
    n = len(states["index"])
    for begin in range(0, n, batch_size):
        state = {key: states[key][begin:begin + batch_size] for key in STATE_FEATURES}
        size = len(state["Q"])
        delta_rho, delta_q = order_parameters(state["rho"], state["Q"])
        parts = [{"Delta_rho": delta_rho[:, None], "Delta_Q": delta_q[:, None]}]
        if order_parameters_only:
            parts.append(model.rollout_order_parameters(state, steps))
            if progress:
                progress(size * steps)
        else:
            parts[0].update({key: value[:, None] for key, value in state.items()})
            for start in range(0, steps, chunk):
                n_steps = min(chunk, steps - start)
                out = model.rollout(state, n_steps)
                parts.append(out)
                state = {key: out[key][:, -1] for key in STATE_FEATURES}
                if progress:
                    progress(size * n_steps)
        batch = {key: np.concatenate([p[key] for p in parts], axis=1) for key in parts[0]}
        batch["index"] = states["index"][begin:begin + batch_size]
        yield batch


# -- outputs ----------------------------------------------------------------------------------
def _host() -> str:
    return socket.gethostname().replace(".", "-")  # no dots: the name stays parseable


def _temporary_prefix(path: Path) -> str:
    """A temporary's name for `path` starts with this: hidden, naming its owner."""
    return f".{path.name}.{os.getpid()}@{_host()}."


def _create_temporary(path: Path) -> Path:
    """A new, empty hidden temporary beside `path` with the permissions of a plain open (0666
    less the umask; tempfile's are 0600), so that others can read the output it becomes.
    tf_holstein.files.create_temporary's twin: this script imports nothing of tf_holstein."""
    while True:
        candidate = path.parent / f"{_temporary_prefix(path)}{os.urandom(4).hex()}.tmp"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return candidate
        except FileExistsError:  # another's random part, by chance: draw again
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Removes the temporaries of `path` left by runs of this host that no longer run (killed,
    say); those of live runs and of other hosts stay. Returns what it removed."""
    owned = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)@([^.]+)\..*\.tmp$")
    removed = []
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        match = owned.match(candidate.name)
        if match and match[2] == _host() and not _alive(int(match[1])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _reason(error: BaseException) -> str:
    """Why a write failed, in one line: the system's words for its errno when it has one
    (TensorFlow puts them after the file's name: `NAME; No space left on device`)."""
    code = getattr(error, "errno", None)
    if isinstance(code, int) and code:
        return os.strerror(code)
    if isinstance(error, tf.errors.OpError):
        return error.message.splitlines()[0].rpartition("; ")[2].strip()
    return (str(error).splitlines() or [type(error).__name__])[0]


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turns a failed write (full disk, read-only, no permission) into an OutputError."""
    try:
        yield
    except (OSError, tf.errors.OpError) as e:
        raise OutputError(f"cannot write {path}: {_reason(e)} (nothing was written under that "
                          f"name)") from None


@contextlib.contextmanager
def temporary_output(path: Path) -> Iterator[Path]:
    """A hidden temporary beside `path`, created at once (so that a place that cannot be
    written fails before any work), renamed to `path` when the block completes and removed
    if it fails."""
    remove_stale_temporaries(path)
    with _writing(path):
        tmp = _create_temporary(path)
    try:
        yield tmp
        with _writing(path):
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_npz(tmp: Path, path: Path, batches: Iterator[dict[str, np.ndarray]]
              ) -> dict[str, np.ndarray]:
    """Collects every batch and writes one .npz to `tmp`, the temporary of `path`; returns
    the arrays."""
    parts = list(batches)
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    with _writing(path), open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return arrays


def _bytes_feature(array: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[tf.io.serialize_tensor(tf.constant(array)).numpy()]))


def _examples(batch: dict[str, np.ndarray]) -> Iterator[bytes]:
    """One serialized Example per trajectory of a batch."""
    for k in range(len(batch["index"])):
        feature = {key: _bytes_feature(value[k]) for key, value in batch.items()
                   if key != "index"}
        feature["index"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(batch["index"][k])]))
        yield tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecord(tmp: Path, path: Path, batches: Iterator[dict[str, np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Streams one Example per trajectory into `tmp`, the temporary of `path`; returns the
    order parameters and indices (small) of what it wrote."""
    kept: dict[str, list] = {"index": [], "Delta_rho": [], "Delta_Q": []}
    with _writing(path):
        writer = tf.io.TFRecordWriter(str(tmp))
    try:
        for batch in batches:  # the rollout: its errors are not the output's
            examples = list(_examples(batch))
            with _writing(path):
                for example in examples:
                    writer.write(example)
            for key in kept:
                kept[key].append(batch[key])
        with _writing(path):
            writer.close()
    finally:
        with contextlib.suppress(tf.errors.OpError):
            writer.close()  # after a failure only frees the file: the temporary goes anyway
    return {key: np.concatenate(values) for key, values in kept.items()}


# -- the command ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="batch_inference.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="the SavedModel directory")
    parser.add_argument("--input", required=True, nargs="+",
                        help=".tfrecord files, a dataset directory, or one .npz")
    parser.add_argument("--out", required=True, help="predictions, .npz or .tfrecord")
    parser.add_argument("--steps", type=int, required=True, help="steps to roll out")
    parser.add_argument("--split", default="test", help="shards read from a directory")
    parser.add_argument("--start_step", type=int, default=0,
                        help="TFRecord input: roll out from this stored step")
    parser.add_argument("--n_traj", type=int, default=None, help="only the first N states")
    parser.add_argument("--batch_size", type=int, default=64, help="trajectories per call")
    parser.add_argument("--chunk", type=int, default=100, help="steps per call (memory)")
    parser.add_argument("--order_parameters_only", action="store_true",
                        help="compute and write only Delta_rho and Delta_Q")
    parser.add_argument("--allow_other_L", action="store_true",
                        help="run on a chain length other than the training data's")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Reads, validates, rolls out and writes; returns a summary of the run."""
    for name in ("steps", "batch_size", "chunk"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.n_traj is not None and args.n_traj < 1:
        raise InputError(f"--n_traj must be >= 1, got {args.n_traj}")
    out = Path(args.out)
    if out.suffix not in (".npz", ".tfrecord"):
        raise InputError(f"--out {out}: must end in .npz or .tfrecord")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; give a file name")
    files = expand_inputs(args.input, args.split)
    if files[0].suffix == ".npz":
        if len(files) > 1:
            raise InputError("give a single .npz input")
        raw, source = read_npz(files[0]), files[0]
    else:
        raw, source = read_tfrecords(files, args.start_step), files[0].parent
    if args.n_traj is not None:
        raw = {key: value[:args.n_traj] for key, value in raw.items()}
    model = Model(args.model)
    states = validate_states(raw, model, source, args.allow_other_L)
    n = len(states["index"])
    with temporary_output(out) as tmp:
        bar = Progress(n * args.steps, not args.no_progress)
        tic = time.perf_counter()
        batches = rollout_batches(model, states, args.steps, args.batch_size, args.chunk,
                                  args.order_parameters_only, bar.update)
        written = (write_npz if out.suffix == ".npz" else write_tfrecord)(tmp, out, batches)
        seconds = time.perf_counter() - tic
    finite = np.isfinite(written["Delta_rho"]) & np.isfinite(written["Delta_Q"])
    return {"out": str(out), "trajectories": n, "steps": args.steps,
            "L": int(states["Q"].shape[1]), "seconds": round(seconds, 3),
            "sample_steps_per_second": round(n * args.steps / max(seconds, 1e-9), 1),
            "non_finite_trajectories": [int(i) for i in
                                        written["index"][~finite.all(axis=1)]]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except InputError as e:
        print(f"batch_inference: error: {e}", file=sys.stderr)
        return 2
    except OutputError as e:
        print(f"batch_inference: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
