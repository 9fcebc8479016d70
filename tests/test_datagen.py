"""Dataset generation: protocol semantics, determinism, resume, scale-out, refusals."""
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from numpy_reference import numpy_rk4
from tf_holstein import datagen, physics, records
from tf_holstein.configs import get_config

ROOT = Path(__file__).resolve().parent.parent
SMOKE = get_config("smoke").data  # L = 8, 12 saved steps, 4/2/2 trajectories, shards of 2


def shard_bytes(dataset_dir):
    return {p.name: p.read_bytes() for p in sorted(Path(dataset_dir).glob("*.tfrecord"))}


def test_layout_and_meta(smoke_dataset):
    names = sorted(p.name for p in smoke_dataset.glob("*.tfrecord"))
    assert names == ["test-00000-of-00001.tfrecord", "train-00000-of-00002.tfrecord",
                     "train-00001-of-00002.tfrecord", "val-00000-of-00001.tfrecord"]
    meta = records.read_meta(smoke_dataset)
    assert meta["config"] == dataclasses.asdict(SMOKE)
    assert set(meta["scales"]) == set(records.SCALE_KEYS)
    assert all(v > 0 for v in meta["scales"].values())
    assert [meta["splits"][s]["num_trajectories"] for s in records.SPLITS] == [4, 2, 2]
    # Phases spread evenly over [0, save_interval) before shuffling.
    assert sorted(meta["splits"]["train"]["phases"]) == [0, 2, 4, 6]


def test_the_help_and_docs_name_the_directory_the_data_lands_in(smoke_dataset):
    """`<data_dir>/<name>/`, as datagen writes it (no `_L<L>` suffix)."""
    assert smoke_dataset.name == SMOKE.name == records.read_meta(smoke_dataset)["dataset"]
    for text in (datagen.__doc__, (ROOT / "docs" / "data-format.md").read_text()):
        assert "`<data_dir>/<name>/" in text and "<name>_L<L>" not in text


def test_load_split_shapes_and_invariants(smoke_dataset):
    data = records.load_split(smoke_dataset, "train")
    n, T, L = 4, SMOKE.saved_steps, SMOKE.L
    assert data["rho"].shape == (n, T + 1, L, L) and data["rho"].dtype == np.complex64
    assert data["Q"].shape == data["P"].shape == (n, T + 1, L) and data["Q"].dtype == np.float32
    assert data["mid_rho"].shape == (n, T, L, L) and data["mid_P"].shape == (n, T, L)
    np.testing.assert_array_equal(data["index"], np.arange(n))
    np.testing.assert_array_equal(data["phase"], data["meta"]["splits"]["train"]["phases"])
    rho = data["rho"].astype(np.complex128)
    np.testing.assert_allclose(np.trace(rho, axis1=-2, axis2=-1).real, L / 2, atol=1e-5)
    np.testing.assert_allclose(rho, np.conj(np.swapaxes(rho, -1, -2)), atol=1e-6)
    # The scales in meta.json are those of the train split.
    recomputed = records.trajectory_scales(data, SMOKE.g_f)
    for key, value in data["meta"]["scales"].items():
        assert value == pytest.approx(recomputed[key], rel=1e-6)


def test_protocol_phases_and_mid_states_match_plain_rk4(smoke_dataset):
    data = records.load_split(smoke_dataset, "train")
    k = int(np.argmax(data["phase"]))  # the trajectory with the largest phase offset
    noise_Q, noise_P = datagen.trajectory_noise(SMOKE, "train", [k])
    state = tuple(x.numpy() for x in physics.initial_state(SMOKE.L, SMOKE.g_i, noise_Q, noise_P))
    state = numpy_rk4(state, SMOKE.g_f, SMOKE.pre_steps + int(data["phase"][k]), SMOKE.dt)
    half = SMOKE.save_interval // 2
    for step in range(3):
        for key, value in zip(("rho", "Q", "P"), state):
            np.testing.assert_allclose(data[key][k, step], value[0], atol=2e-7)
        mid = numpy_rk4(state, SMOKE.g_f, half, SMOKE.dt)
        for key, value in zip(("mid_rho", "mid_Q", "mid_P"), mid):
            np.testing.assert_allclose(data[key][k, step], value[0], atol=2e-7)
        state = numpy_rk4(mid, SMOKE.g_f, SMOKE.save_interval - half, SMOKE.dt)


def test_deterministic_for_a_seed(smoke_dataset, tmp_path):
    again = datagen.generate(SMOKE, tmp_path / "a", progress=False)
    assert shard_bytes(again) == shard_bytes(smoke_dataset)
    other = datagen.generate(dataclasses.replace(SMOKE, seed=1), tmp_path / "b", progress=False)
    assert shard_bytes(other).keys() == shard_bytes(smoke_dataset).keys()
    assert all(shard_bytes(other)[k] != v for k, v in shard_bytes(smoke_dataset).items())


def test_tasks_and_interrupted_runs_complete_to_the_same_shards(smoke_dataset, tmp_path):
    # Task 0 of 2 writes every other shard; meta.json must wait for the rest.
    partial = datagen.generate(SMOKE, tmp_path, num_tasks=2, task_index=0, progress=False)
    assert 0 < len(shard_bytes(partial)) < 4
    assert not (partial / records.META_FILE).exists()
    with pytest.raises(RuntimeError, match="shards are missing"):
        datagen.merge(SMOKE, partial)
    # A writer killed mid-shard leaves only a hidden temporary file.
    (partial / ".train-00001-of-00002.tfrecord.x1y2.tmp").write_bytes(b"half a shard")
    before = {p.name: p.stat().st_mtime_ns for p in partial.glob("*.tfrecord")}
    datagen.generate(SMOKE, tmp_path, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in partial.glob("*.tfrecord")}
    assert all(after[name] == mtime for name, mtime in before.items())  # not redone
    assert shard_bytes(partial) == shard_bytes(smoke_dataset)
    assert (partial / records.META_FILE).read_bytes() == \
        (smoke_dataset / records.META_FILE).read_bytes()


@pytest.mark.slow
def test_workers_give_the_same_shards(smoke_dataset, tmp_path):
    parallel = datagen.generate(SMOKE, tmp_path, workers=2, progress=False)
    assert shard_bytes(parallel) == shard_bytes(smoke_dataset)


def run_datagen(*args):
    return subprocess.Popen([sys.executable, "-m", "tf_holstein.datagen", "--noprogress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path):
    args = ["--config", "smoke", "--saved_steps", "300", "--n_train", "8", "--n_val", "0",
            "--n_test", "0", "--shard_size", "1"]
    killed = run_datagen(*args, "--data_dir", str(tmp_path / "killed"))
    dataset = tmp_path / "killed" / "smoke"
    deadline = time.time() + 120
    while not list(dataset.glob("*.tfrecord")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    written = len(list(dataset.glob("*.tfrecord")))
    assert 1 <= written < 8, "the run should have been killed part-way"
    assert run_datagen(*args, "--data_dir", str(tmp_path / "killed")).wait() == 0
    assert run_datagen(*args, "--data_dir", str(tmp_path / "clean")).wait() == 0
    assert shard_bytes(dataset) == shard_bytes(tmp_path / "clean" / "smoke")
    assert len(shard_bytes(dataset)) == 8 and (dataset / records.META_FILE).exists()
    assert not list(dataset.glob(".*.tmp")), "the rerun removes the killed run's temporaries"
    assert not list(dataset.glob(".*.lock")), "and the lock of the shard it was writing"


def copy_dataset(source, target):
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_shard_cut_at_a_record_boundary_is_regenerated(smoke_dataset, tmp_path):
    """Cut to its first trajectory, a shard still reads cleanly: only its record count
    against meta.json shows the loss. Readers refuse it; a datagen rerun redoes it."""
    dataset = copy_dataset(smoke_dataset, tmp_path / SMOKE.dataset_name)
    shard = dataset / records.shard_name("train", 1, 2)
    first = next(iter(records.iterate_shard(shard)))
    records.write_shard(shard, [records.encode_trajectory(first, int(first["index"]),
                                                          int(first["phase"]))])
    assert records.count_records(shard) == 1
    with pytest.raises(IOError, match=r"train-00001-of-00002.tfrecord holds 1 trajectories, "
                                      r"meta.json implies 2.*rerun the datagen command"):
        records.load_split(dataset, "train")
    datagen.generate(SMOKE, tmp_path, progress=False)
    assert shard_bytes(dataset) == shard_bytes(smoke_dataset)


def test_verify_regenerates_a_shard_whose_records_fail_their_crc(smoke_dataset, tmp_path,
                                                                 caplog):
    """A flipped byte inside a record keeps the length headers whole: readers refuse the
    shard by its CRC, a plain rerun counts it as written, a rerun with verify names and
    rewrites it."""
    dataset = copy_dataset(smoke_dataset, tmp_path / SMOKE.dataset_name)
    shard = dataset / records.shard_name("train", 1, 2)
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0x01  # inside the first record's data
    shard.write_bytes(bytes(data))
    assert records.count_records(shard) == 2
    with pytest.raises(IOError, match=r"corrupt or truncated TFRecord shard .*train-00001"):
        records.load_split(dataset, "train")
    datagen.generate(SMOKE, tmp_path, progress=False, verify=True)
    assert shard_bytes(dataset) == shard_bytes(smoke_dataset)
    assert re.search(r"regenerating train-00001-of-00002.tfrecord: corrupt TFRecord shard "
                     r".*train-00001-of-00002.tfrecord", caplog.text), caplog.text
    assert not list(dataset.glob(".*.lock")) and not list(dataset.glob(".*.tmp"))


@pytest.mark.slow
def test_two_processes_on_one_dataset_write_each_shard_once(smoke_dataset, tmp_path):
    """Two datagen commands on the same dataset at once (a rerun beside a run, two tasks of
    one index) share the shards through their locks: each is written once, and both end with
    the complete dataset."""
    args = ["--config", "smoke", "--data_dir", str(tmp_path), "--verbosity", "0"]
    processes = [run_datagen(*args) for _ in range(2)]
    outputs = [process.communicate() for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    written = [name for _, stderr in outputs for name in re.findall(r"wrote (\S+)", stderr)]
    dataset = tmp_path / SMOKE.dataset_name
    assert sorted(written) == sorted(shard_bytes(smoke_dataset)), written
    assert shard_bytes(dataset) == shard_bytes(smoke_dataset)
    assert (dataset / records.META_FILE).read_bytes() == \
        (smoke_dataset / records.META_FILE).read_bytes()
    assert not list(dataset.glob(".*.lock")) and not list(dataset.glob(".*.tmp"))


@pytest.mark.parametrize("overrides", [{"dt": 2.0}, {"g_f": 1e6}])
def test_an_unstable_integration_writes_nothing(tmp_path, overrides):
    config = dataclasses.replace(SMOKE, n_val=0, n_test=0, **overrides)
    with pytest.raises(ValueError, match=r"train-00000-of-00002.tfrecord: 2 of 2 trajectories "
                                         r"became non-finite.*smaller --dt"):
        datagen.generate(config, tmp_path, progress=False)
    dataset = tmp_path / config.dataset_name
    assert not list(dataset.glob("*.tfrecord")) and not (dataset / records.META_FILE).exists()


def test_a_full_disk_is_reported_and_written_shards_stay(smoke_dataset, tmp_path, monkeypatch):
    """A write that fails (here a writer that raises as TensorFlow does when the disk is
    full) names the file; nothing partial remains and the rerun completes the dataset."""
    class FullDisk:
        def __init__(self, path):
            self.path = path

        def __enter__(self):
            raise tf.errors.ResourceExhaustedError(None, None, f"{self.path}; No space left")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(records.tf.io, "TFRecordWriter", FullDisk)
    with pytest.raises(IOError, match=r"cannot write .*train-00000-of-00002.tfrecord: .*No "
                                      r"space left.*free space and rerun"):
        datagen.generate(SMOKE, tmp_path, progress=False)
    monkeypatch.undo()
    dataset = tmp_path / SMOKE.dataset_name
    assert not list(dataset.glob("*.tfrecord")) and not list(dataset.glob(".*.tmp"))
    datagen.generate(SMOKE, tmp_path, progress=False)
    assert shard_bytes(dataset) == shard_bytes(smoke_dataset)


def test_non_finite_protocol_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"invalid data config: noise=inf must be finite"):
        datagen.generate(dataclasses.replace(SMOKE, noise=float("inf")), tmp_path,
                         progress=False)


def test_refuses_a_directory_made_with_other_parameters(smoke_dataset):
    before = shard_bytes(smoke_dataset)
    with pytest.raises(ValueError, match=r"different parameters \(seed: 0 there, 5 requested\)"):
        datagen.generate(dataclasses.replace(SMOKE, seed=5), smoke_dataset.parent,
                         progress=False)
    assert shard_bytes(smoke_dataset) == before


@pytest.mark.parametrize("overrides, message", [
    ({"L": 7}, "L must be an even integer >= 4"),
    ({"L": 2}, "L must be an even integer >= 4"),
    ({"dt": 0.0}, "dt must be positive"),
    ({"dt": -0.01}, "dt must be positive"),
    ({"save_interval": 0}, "save_interval must be an integer >= 2"),
    ({"n_train": -1}, "n_train must be a non-negative integer"),
    ({"n_test": -3}, "n_test must be a non-negative integer"),
    ({"g_f": -0.8}, "g_f must be non-negative"),
    ({"g_i": -0.1}, "g_i must be non-negative"),
    ({"noise": -1e-4}, "noise must be non-negative"),
])
def test_bad_protocols_are_rejected_with_their_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("smoke", **overrides)


def test_name_is_an_overridable_field():
    assert get_config("smoke", name="mine").data.dataset_name == "mine"


def test_unknown_config_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config 'shalow'; valid configs: .*shallow"):
        get_config("shalow")
    with pytest.raises(ValueError, match=r"unknown config field 'LL'; valid fields: .*data\.L"):
        get_config("smoke", LL=8)


def test_command_line_reports_bad_input_clearly(tmp_path):
    result = run_datagen("--config", "smoke", "--L", "9", "--data_dir", str(tmp_path))
    _, stderr = result.communicate()
    assert result.returncode != 0
    assert "datagen: error: invalid data config: L must be an even integer >= 4" in stderr
    assert not any(tmp_path.iterdir())


def test_a_test_only_dataset_has_no_scales(tmp_path):
    config = dataclasses.replace(SMOKE, n_train=0, n_val=0)
    meta = records.read_meta(datagen.generate(config, tmp_path, progress=False))
    assert meta["scales"] is None
    assert meta["splits"]["test"]["num_trajectories"] == SMOKE.n_test
