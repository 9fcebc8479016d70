"""Safe file writing: temporaries named for their owner, atomic writes and JSON, an exclusive
lock, and one-line reasons for failed writes.

Every file the project writes (shards, meta.json, weights, exports, results) goes through a
temporary beside it that a rename makes final, so a crash or a full disk never leaves a
partial file under the final name, and the next run can remove what a killed one left.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import tensorflow as tf

# temporary_prefix's owner, followed by a random part or `tmp`.
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^.]+)\.(?:\w+\.)?tmp(?:\.|$)")
_ERRNO = re.compile(r"errno = (\d+)|\[Errno (\d+)\]")  # as HDF5 and Python word it


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


def error_text(error: tf.errors.OpError) -> str:
    """A TensorFlow error's message as one line for a user: its first line without the
    graph node and op names TensorFlow wraps around it."""
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]( name: \S*)?", "", error.message.splitlines()[0])
    return " ".join(text.split())
