"""TFRecord schema: bit-exact round trips, atomic writes, errors that name the file."""
import errno
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import files, records


def random_trajectory(rng, T=5, L=6):
    def c(*shape):
        return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    return {"rho": c(T + 1, L, L), "Q": r(T + 1, L), "P": r(T + 1, L),
            "mid_rho": c(T, L, L), "mid_Q": r(T, L), "mid_P": r(T, L)}


def test_encode_parse_round_trip_is_bit_exact():
    trajectory = random_trajectory(np.random.default_rng(0))
    parsed = records.parse_trajectory(tf.constant(records.encode_trajectory(trajectory, 7, 3)))
    for key, value in trajectory.items():
        assert parsed[key].dtype == records.ARRAY_DTYPES[key]
        np.testing.assert_array_equal(parsed[key].numpy(), value)
        assert parsed[key].numpy().tobytes() == value.tobytes()
    assert int(parsed["index"]) == 7 and int(parsed["phase"]) == 3


def test_shard_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    trajectories = [random_trajectory(rng) for _ in range(3)]
    path = tmp_path / records.shard_name("train", 0, 1)
    records.write_shard(path, (records.encode_trajectory(t, i, 0)
                               for i, t in enumerate(trajectories)))
    read = list(records.iterate_shard(path))
    assert [int(t["index"]) for t in read] == [0, 1, 2]
    for original, got in zip(trajectories, read):
        for key in original:
            assert got[key].tobytes() == original[key].tobytes()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_failed_write_leaves_no_shard(tmp_path):
    path = tmp_path / records.shard_name("val", 0, 1)

    def examples():
        yield records.encode_trajectory(random_trajectory(np.random.default_rng(2)), 0, 0)
        raise KeyboardInterrupt  # the writer dies half-way

    with pytest.raises(KeyboardInterrupt):
        records.write_shard(path, examples())
    assert list(tmp_path.iterdir()) == []
    assert records.list_shards(tmp_path, "val") == []


def test_partial_files_are_not_listed(tmp_path):
    (tmp_path / ".train-00000-of-00002.tfrecord.abc.tmp").write_bytes(b"partial")
    (tmp_path / "train-00001-of-00002.tfrecord").write_bytes(b"")
    assert [p.name for p in records.list_shards(tmp_path, "train")] == [
        "train-00001-of-00002.tfrecord"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_shard_error_names_the_file(tmp_path, damage):
    path = tmp_path / records.shard_name("test", 0, 1)
    records.write_shard(path, [records.encode_trajectory(
        random_trajectory(np.random.default_rng(3)), 0, 0)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 64 + data[64:])
    with pytest.raises(IOError, match=r"corrupt or truncated TFRecord shard .*test-00000-of-00001"):
        list(records.iterate_shard(path))


def test_missing_meta_says_how_to_make_the_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished tf-holstein dataset"):
        records.load_split(tmp_path, "train")


def test_unknown_split_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid splits: train, val, test"):
        records.list_shards(tmp_path, "training")


def test_newer_schema_is_refused(tmp_path):
    (tmp_path / records.META_FILE).write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema version 99"):
        records.read_meta(tmp_path)


def test_scales_are_max_abs_statistics():
    t = random_trajectory(np.random.default_rng(4), T=3, L=4)
    batch = {k: v[None] for k, v in t.items()}
    scales = records.trajectory_scales(batch, 0.8)
    assert scales["rho"] == pytest.approx(max(np.abs(t["rho"].real).max(),
                                              np.abs(t["rho"].imag).max()))
    assert scales["Q"] == pytest.approx(np.abs(t["Q"]).max())
    assert scales["delta_P"] == pytest.approx(np.abs(np.diff(t["P"], axis=0)).max())
    # dQ/dt = K0 P at the mid states.
    assert scales["dQ"] == pytest.approx(0.3 * np.abs(t["mid_P"]).max(), rel=1e-6)
    assert set(scales) == set(records.SCALE_KEYS)
    halves = [records.trajectory_scales({k: v[:, :2] if k.startswith("mid") else v[:, :3]
                                         for k, v in batch.items()}, 0.8), scales]
    assert records.merge_scales(halves) == scales


def test_scales_from_records_stream_the_split(tmp_path):
    rng = np.random.default_rng(5)
    trajectories = [random_trajectory(rng, T=3, L=4) for _ in range(3)]
    for shard, group in enumerate((trajectories[:2], trajectories[2:])):
        records.write_shard(tmp_path / records.shard_name("train", shard, 2),
                            (records.encode_trajectory(t, i, 0) for i, t in enumerate(group)))
    whole = records.trajectory_scales({k: np.stack([t[k] for t in trajectories])
                                       for k in trajectories[0]}, 0.8)
    streamed = records.scales_from_records(tmp_path, "train", 0.8)
    assert streamed == pytest.approx(whole, rel=1e-12)


def test_record_counts_come_from_the_headers_and_a_cut_record_is_named(tmp_path):
    path = tmp_path / records.shard_name("train", 0, 1)
    rng = np.random.default_rng(6)
    records.write_shard(path, [records.encode_trajectory(random_trajectory(rng), i, 0)
                               for i in range(3)])
    assert records.count_records(path) == 3
    records.check_record_count(path, 3)
    with pytest.raises(IOError, match=r"train-00000-of-00001.tfrecord holds 3 trajectories, "
                                      r"meta.json implies 4"):
        records.check_record_count(path, 4)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(IOError, match=r"corrupt or truncated TFRecord shard .*its last record "
                                      r"is cut off"):
        records.count_records(path)
    assert records.shard_sizes(5, 2) == [2, 2, 1] and records.shard_sizes(0, 2) == []


def test_only_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    mine = files.temporary_prefix("train-00000-of-00001.tfrecord")
    host = mine.split("@")[1]
    stale = tmp_path / mine.replace(f".{os.getpid()}@", f".{dead}@")
    names = {"stale_file": f"{stale}abc.tmp", "stale_dir": f"{stale}def.tmp",
             "live": f"{tmp_path / mine}ghi.tmp", "other_host": str(stale).replace(
                 f"@{host}", "@elsewhere") + "jkl.tmp"}
    for key, name in names.items():
        Path(name).mkdir() if key == "stale_dir" else Path(name).write_bytes(b"partial")
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        Path(names[key]).name for key in ("stale_file", "stale_dir"))
    assert Path(names["live"]).exists() and Path(names["other_host"]).exists()


def test_a_lock_is_exclusive_and_names_its_holder(tmp_path):
    path = tmp_path / ".shard.lock"
    first, second = files.FileLock(path), files.FileLock(path)
    assert first.acquire() and not second.acquire()
    host = socket.gethostname().replace(".", "-")
    assert second.holder() == f"process {os.getpid()} on host {host}"
    first.release()
    assert second.acquire()
    second.release(remove=True)
    assert not path.exists()


def test_a_full_disk_while_writing_weights_is_one_line_naming_the_file(tmp_path):
    """HDF5 words a failed write as a page of detail; the error keeps the system's reason
    and names the file, and no temporary stays. (A file-size limit stands in for the full
    disk: the kernel fails the write the same way.)"""
    path = tmp_path / "best.weights.h5"
    script = ("import sys, keras\n"
              "from tf_holstein import files\n"
              "model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512)])\n"
              "try:\n"
              "    files.write_atomically(sys.argv[1], model.save_weights, '.tmp.weights.h5')\n"
              "except IOError as e:\n"
              "    print(e)\n")

    def limit():  # 16 KiB, an eighth of the weights
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))

    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, preexec_fn=limit,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.stdout == (f"cannot write {path}: {os.strerror(errno.EFBIG)} (files already "
                             f"written are intact: free space and rerun the same command)\n"), \
        result.stderr[-3000:]
    assert not list(tmp_path.iterdir())


def test_create_json_writes_only_the_first(tmp_path):
    """Of two processes starting a dataset directory, the second finds the first's protocol
    and compares with it instead of replacing it."""
    path = tmp_path / "protocol.json"
    assert files.create_json(path, {"seed": 0})
    assert not files.create_json(path, {"seed": 5})
    assert json.loads(path.read_text()) == {"seed": 0}
    assert [p.name for p in tmp_path.iterdir()] == ["protocol.json"]
