"""Training: the loss falls, replicas agree with one device, resume is exact, exports reload."""
import dataclasses
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from float32 import kernel_tolerance
from tf_holstein import (cli, experiment, export, files, metrics, physics, records, runs,
                         scoring)
from tf_holstein.configs import get_config
from tf_holstein.trainer import Trainer, stage_epochs
from tf_holstein.validation import SELECTION_KEYS

SMOKE = get_config("smoke")
EXPECTED_TAGS = {"loss/total", "loss/rho_diag", "loss/rho_offdiag", "loss/Q", "loss/P",
                 "learning_rate", "grad_norm", "samples_per_sec", "val_loss/total",
                 "val_rollout/Delta_rho_rmse_over_std", "val_rollout/Delta_Q_rmse_over_std",
                 "val/order_parameters"}


@pytest.fixture(scope="module")
def data_dir(smoke_dataset):
    """The folder holding the smoke dataset (the session's, only read here)."""
    return smoke_dataset.parent


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    return workdir, experiment.run(SMOKE, data_dir, workdir, progress=False)


def summary_values(workdir):
    """(step, summary value) of every summary in the run's TensorBoard event files."""
    for path in sorted(Path(workdir, "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                yield event.step, value


def scalar_events(workdir):
    events = {}
    for step, value in summary_values(workdir):
        events.setdefault(value.tag, []).append(
            (step, float(tf.make_ndarray(value.tensor).ravel()[0])
             if value.metadata.plugin_data.plugin_name == "scalars" else None))
    return events


def config_events(workdir):
    """The config TensorBoard holds: the (step, markdown table) of each Text summary, and the
    hyperparameters of each HParams session."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    tables, sessions = [], []
    for step, value in summary_values(workdir):
        plugin = value.metadata.plugin_data
        if plugin.plugin_name == "text" and value.tag.startswith("config"):
            tables.append((step, tf.make_ndarray(value.tensor).item().decode()))
        if plugin.plugin_name == "hparams" and value.tag == "_hparams_/session_start_info":
            info = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
            sessions.append({name: getattr(v, v.WhichOneof("kind"))
                             for name, v in info.session_start_info.hparams.items()})
    return tables, sessions


def test_smoke_training_halves_the_loss(smoke_run):
    workdir, summary = smoke_run
    losses = sorted(scalar_events(workdir)["loss/total"])
    first, last = losses[0], losses[-1]
    assert first[0] == 1 and last[0] == SMOKE.train.total_steps
    assert last[1] < 0.5 * first[1], losses
    assert summary["optimizer_steps"] == SMOKE.train.total_steps
    assert set(summary["timings"]) == {"data_s", "train_s", "export_s", "evaluate_s"}
    assert summary["test"]["n_trajectories"] == SMOKE.data.n_test
    assert (workdir / "eval-test" / "metrics.json").exists()
    assert (workdir / "eval-test" / "order_parameters.png").exists()


def test_tensorboard_has_every_tag(smoke_run):
    assert EXPECTED_TAGS <= set(scalar_events(smoke_run[0]))


def test_tensorboard_records_the_config_once(smoke_run):
    """The run's config is in TensorBoard, as a table (Text) and as hyperparameters."""
    tables, sessions = config_events(smoke_run[0])
    assert len(tables) == 1 and tables[0][0] == 0, tables
    fields = {"name": "smoke", **cli.config_fields(SMOKE)}
    assert tables[0][1].splitlines()[2:] == [f"| {k} | {v} |" for k, v in fields.items()]
    assert "| data.L | 8 |" in tables[0][1] and "| train.stages | 2:1:0:25,1:2:0:25 |" in \
        tables[0][1]
    assert sessions == [{k: float(v) if type(v) in (int, float) else v
                         for k, v in fields.items()}]


def test_saved_model_rollout_equals_the_keras_model(smoke_run, data_dir):
    workdir = smoke_run[0]
    loaded = tf.saved_model.load(str(workdir / "export" / "saved_model"))
    model = keras.saving.load_model(str(workdir / "export" / "model.keras"))
    rng = np.random.default_rng(0)
    L = SMOKE.data.L
    state = {"rho": (rng.normal(size=(2, L, L)) * 0.1 + np.eye(L) * 0.5).astype(np.complex64),
             "Q": rng.normal(size=(2, L)).astype(np.float32) * 0.1,
             "P": rng.normal(size=(2, L)).astype(np.float32) * 0.1}
    expected = model.rollout(state, 5)
    got = loaded.rollout(rho_real=tf.math.real(state["rho"]), rho_imag=tf.math.imag(state["rho"]),
                         Q=state["Q"], P=state["P"], n_steps=tf.constant(5))
    # TensorFlow's kernels against XLA's (the small in-process batch): float32 summation
    # order, step by step.
    tolerance = {key: kernel_tolerance(float(np.abs(value).max()), 5)
                 for key, value in expected.items()}
    np.testing.assert_allclose(got["rho_real"], np.real(expected["rho"]), rtol=0,
                               atol=tolerance["rho"])
    np.testing.assert_allclose(got["rho_imag"], np.imag(expected["rho"]), rtol=0,
                               atol=tolerance["rho"])
    np.testing.assert_allclose(got["Q"], expected["Q"], rtol=0, atol=tolerance["Q"])
    step = loaded.signatures["step"](rho_real=tf.math.real(state["rho"]),
                                     rho_imag=tf.math.imag(state["rho"]),
                                     Q=tf.constant(state["Q"]), P=tf.constant(state["P"]))
    np.testing.assert_allclose(step["P"], expected["P"][:, 0], rtol=0,
                               atol=kernel_tolerance(float(np.abs(expected["P"]).max())))


def test_the_selected_models_validation_score_is_what_evaluate_reports(smoke_run, data_dir,
                                                                        tmp_path):
    """best.json's scores are the numbers `evaluate` reports for the selected model on the
    validation split: one rollout, one set of metrics, one divergence rule."""
    workdir = smoke_run[0]
    best = json.loads((workdir / "best.json").read_text())
    dataset = data_dir / SMOKE.data.dataset_name
    keys = {"rollout": "val_rollout/score",
            "autocorrelation": "val_rollout/autocorrelation_max_abs_diff"}
    # The .keras file runs the kernels validation ran: the same numbers up to float64
    # rounding in the metrics.
    same_kernels = scoring.evaluate(workdir / "export" / "model.keras", dataset, split="val",
                                    out_dir=tmp_path / "keras", progress=False)["summary"]
    for name, key in keys.items():
        assert same_kernels["selection"][name] == pytest.approx(best[key], rel=1e-9), name
    for name in metrics.ORDER_PARAMETERS:
        assert same_kernels[name]["median_rmse_over_std_counting_diverged"] == pytest.approx(
            best[f"val_rollout/{name}_rmse_over_std"], rel=1e-9)
    # The SavedModel runs TensorFlow's kernels: each predicted value moves by at most
    # kernel_tolerance, so each RMSE by at most that much, each RMSE / std by that over std.
    served = scoring.evaluate(workdir, dataset, split="val", out_dir=tmp_path / "served",
                              progress=False)
    assert served["run"]["model_format"] == "saved_model"
    val = records.load_split(dataset, "val")
    truth = physics.order_parameters(val["rho"][:, 1:], val["Q"][:, 1:])  # Delta_rho, Delta_Q
    scales = val["meta"]["scales"]
    # Delta_rho averages rho's diagonal, Delta_Q averages Q: each moves by at most as much.
    shift = sum(kernel_tolerance(scales[key], SMOKE.data.saved_steps)
                / float(np.min(np.std(series, axis=1))) for key, series in zip(("rho", "Q"), truth))
    assert abs(served["summary"]["selection"]["rollout"] - best[keys["rollout"]]) <= shift


def test_serving_signatures_check_their_inputs(smoke_run):
    """A client gets an error naming the input, not a silent broadcast, NaN or a bare
    'empty list' message."""
    loaded = tf.saved_model.load(str(smoke_run[0] / "export" / "saved_model"))
    L = SMOKE.data.L
    rng = np.random.default_rng(0)
    inputs = {"rho_real": np.eye(L, dtype=np.float32)[None].repeat(2, 0) * 0.5,
              "rho_imag": np.zeros((2, L, L), np.float32),
              "Q": rng.normal(size=(2, L)).astype(np.float32) * 0.1,
              "P": np.zeros((2, L), np.float32)}
    rollout, step = loaded.signatures["rollout"], loaded.signatures["step"]
    assert rollout(**inputs, n_steps=tf.constant(2))["Q"].shape == (2, 2, L)
    for name in ("rollout", "rollout_order_parameters"):
        for n_steps in (0, -1):
            with pytest.raises(tf.errors.InvalidArgumentError, match="n_steps must be >= 1"):
                loaded.signatures[name](**inputs, n_steps=tf.constant(n_steps))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Q and P must be \[B, L\] with the batch size B and chain"):
        step(**{**inputs, "rho_real": inputs["rho_real"][:1], "rho_imag": inputs["rho_imag"][:1]})
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="rho_imag must have the shape of rho_real"):
        step(**{**inputs, "rho_imag": inputs["rho_imag"][:1]})
    nan = inputs["Q"].copy()
    nan[1, 3] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="Q holds NaN or inf"):
        rollout(**{**inputs, "Q": nan}, n_steps=tf.constant(2))


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf_holstein.export", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_the_export_command_exports_the_best_weights_as_training_does(smoke_run, data_dir,
                                                                      tmp_path):
    """`python -m tf_holstein.export` of a run's best weights gives what the run exported at
    its end: a SavedModel rolling out the same numbers, a .keras of the same weights."""
    workdir, out = smoke_run[0], tmp_path / "best"
    result = run_export("--workdir", workdir, "--data_dir", data_dir, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["saved_model"] == str(out / "saved_model")
    for noise in ("will be renamed", "Assets written", "fingerprint", "Sharding callback"):
        assert noise not in result.stderr, "TensorFlow's INFO lines are shown"
    L = SMOKE.data.L
    rng = np.random.default_rng(1)
    inputs = {"rho_real": np.eye(L, dtype=np.float32)[None].repeat(2, 0) * 0.5
              + rng.normal(size=(2, L, L)).astype(np.float32) * 0.01,
              "rho_imag": np.zeros((2, L, L), np.float32),
              "Q": rng.normal(size=(2, L)).astype(np.float32) * 0.1,
              "P": np.zeros((2, L), np.float32), "n_steps": tf.constant(5)}
    got, expected = (tf.saved_model.load(str(path / "saved_model")).signatures["rollout"](
        **inputs) for path in (out, workdir / "export"))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    got, expected = (keras.saving.load_model(str(path / "model.keras")).get_weights()
                     for path in (out, workdir / "export"))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    again = run_export("--workdir", workdir, "--data_dir", data_dir, "--out", out)
    assert again.returncode != 0
    assert f"export: error: {out / 'saved_model'} exists: pass --overwrite" in again.stderr


def test_the_last_weights_are_the_latest_checkpoints(smoke_run, data_dir, tmp_path):
    workdir = smoke_run[0]
    export.export_run(workdir, "last", tmp_path / "last", data_dir=data_dir)
    trainer = Trainer(SMOKE, data_dir / SMOKE.data.dataset_name, workdir)
    assert trainer.state.restore()
    exported = keras.saving.load_model(str(tmp_path / "last" / "model.keras"))
    for a, b in zip(exported.get_weights(), trainer.state.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_export_command_names_what_is_missing(data_dir, tmp_path):
    result = run_export("--workdir", tmp_path / "absent", "--out", tmp_path / "out")
    assert result.returncode != 0
    assert (f"export: error: {tmp_path / 'absent'} does not exist: give the --workdir of a "
            f"training run") in result.stderr, result.stderr[-2000:]
    with pytest.raises(ValueError, match=r"holds no training run \(no config.json\)"):
        export.export_run(tmp_path, "best", tmp_path / "out", data_dir=data_dir)
    runs.prepare_workdir(SMOKE, tmp_path / "new", resume=False)  # started, nothing saved
    with pytest.raises(ValueError, match=r"holds no best.weights.h5 .*export --which last"):
        export.export_run(tmp_path / "new", "best", tmp_path / "out", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"holds no checkpoint yet"):
        export.export_run(tmp_path / "new", "last", tmp_path / "out", data_dir=data_dir)
    assert not (tmp_path / "out").exists()


def test_the_export_refuses_a_dataset_the_run_did_not_train_on(data_dir):
    saved = json.loads(json.dumps(dataclasses.asdict(SMOKE), default=str))
    meta = records.read_meta(data_dir / SMOKE.data.dataset_name)
    runs.check_dataset(saved, meta)
    with pytest.raises(ValueError, match=r"the dataset smoke is not the one the run trained "
                                         r"on: its g_f 0.8 \(the run's 0.9\)"):
        runs.check_dataset({**saved, "data": {**saved["data"], "g_f": 0.9}}, meta)


def test_two_replicas_match_one_device(data_dir, tmp_path):
    config = dataclasses.replace(SMOKE, train=dataclasses.replace(
        SMOKE.train, jit_compile=False, clip_norm=0.05))  # the clip is active
    dataset_dir = data_dir / config.data.dataset_name
    results = []
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        trainer = Trainer(config, dataset_dir, tmp_path / str(len(devices)),
                          tf.distribute.MirroredStrategy(devices))
        stage = config.train.stages[0]
        step = trainer.steps.train_step(stage.n_step)
        batches = iter(trainer.train_dataset(0, stage))
        metrics = [step(next(batches)) for _ in range(3)]
        results.append(([float(m["loss/total"]) for m in metrics],
                        [v.numpy() for v in trainer.state.model.trainable_variables]))
    (loss1, weights1), (loss2, weights2) = results
    np.testing.assert_allclose(loss1, loss2, rtol=1e-5)
    for a, b in zip(weights1, weights2):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(weights1[0], Trainer(
        config, dataset_dir, tmp_path / "fresh").state.model.trainable_variables[0].numpy())


def run_train(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "tf_holstein.train", "--noprogress", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


def checkpoint_values(workdir):
    """Every value of the workdir's latest checkpoint but the bookkeeping: weights, optimizer
    state, curriculum position, best score and the dropout's random state."""
    reader = tf.train.load_checkpoint(str(Path(workdir) / "checkpoints"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter",
                                    "last_metrics"))}


def h5_arrays(path):
    """Every dataset of an HDF5 file (a weights file) by its path inside."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def kill_when(process, path, summary):
    """Kills the training `process` with SIGKILL once `path` exists, before `summary`."""
    deadline = time.time() + 300
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert path.exists(), process.stderr.read()[-3000:]
    assert not summary.exists(), "killed too late"


def without_timing(summary):
    """A summary's metrics without what depends on the machine's speed (samples/s in
    training, the rollout's cost in the test)."""
    speeds = ("samples_per_sec", "cost_us_per_trajectory_step")
    return {key: {k: v for k, v in summary[key].items() if k not in speeds}
            if isinstance(summary[key], dict) else summary[key]
            for key in ("final", "best", "test", "optimizer_steps")}


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_the_same_weights(data_dir, tmp_path):
    """Killed after its first checkpoint, and again during its export, a run with dropout
    resumes to the same checkpoint, best model and summary as an uninterrupted run, bit for
    bit: the checkpoint holds the dropout's random state and the last epoch's metrics."""
    args = ["--config", "smoke", "--dropout", "0.2", "--data_dir", str(data_dir)]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    uninterrupted = run_train(*args, "--workdir", str(clean))
    summary = killed / "summary.json"
    kill_when(run_train(*args, "--workdir", str(killed)),
              killed / "checkpoints" / "ckpt-1.index", summary)
    kill_when(run_train(*args, "--workdir", str(killed), "--resume"), killed / "export",
              summary)
    resumed = run_train(*args, "--workdir", str(killed), "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()
    a, b = checkpoint_values(clean), checkpoint_values(killed)
    assert a.keys() == b.keys() and any(name.startswith("random_state/") for name in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    a, b = (h5_arrays(run / "best.weights.h5") for run in (clean, killed))
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    expected, found = (json.loads((run / "summary.json").read_text()) for run in (clean, killed))
    assert "loss/total" in found["final"] and "val_loss/total" in found["final"]
    assert without_timing(found) == without_timing(expected)
    assert len(config_events(killed)[0]) == 1, "a resumed run does not record its config again"
    left = [*killed.glob(".*tmp*"), *(killed / "export").glob(".*tmp*")]
    assert not left, "the resumed run removes what the killed ones left"


def test_a_second_training_on_a_workdir_in_use_is_refused(data_dir, tmp_path):
    """While one process trains in a workdir, another is refused, naming the lock and its
    holder; the lock goes with its holder, kill -9 included."""
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from tf_holstein import runs; held = runs.hold_workdir(Path(sys.argv[1])); "
         "held.__enter__(); "
         "print('held', flush=True); time.sleep(300)", str(workdir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        lock = workdir / runs.LOCK_FILE
        message = (rf"{re.escape(str(workdir))} is in use by another training \(process "
                   rf"{holder.pid} on host \S+ holds {re.escape(str(lock))}\): wait for it to "
                   rf"finish")
        with pytest.raises(RuntimeError, match=message):
            experiment.run(SMOKE, data_dir, workdir, progress=False)
        assert not (workdir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with runs.hold_workdir(workdir):
        pass


def test_a_checkpoint_from_before_the_random_state_still_resumes(data_dir, tmp_path, caplog):
    """A run checkpointed by an earlier version (no dropout state, no last metrics) resumes
    its weights and epoch, with a warning that its dropout masks will differ."""
    config = get_config("smoke", dropout=0.2)
    dataset_dir = data_dir / config.data.dataset_name
    earlier = Trainer(config, dataset_dir, tmp_path)
    earlier.state.epoch.assign(1)
    earlier.state.model.trainable_variables[0].assign_add(tf.ones_like(
        earlier.state.model.trainable_variables[0]))
    tf.train.Checkpoint(model=earlier.state.model, optimizer=earlier.state.optimizer,
                        epoch=earlier.state.epoch, best=earlier.state.best
                        ).save(str(tmp_path / "checkpoints" / "ckpt"))
    resumed = Trainer(config, dataset_dir, tmp_path)
    assert resumed.state.restore() and int(resumed.state.epoch.numpy()) == 1
    np.testing.assert_array_equal(resumed.state.model.trainable_variables[0].numpy(),
                                  earlier.state.model.trainable_variables[0].numpy())
    assert "holds no random state of the dropout" in caplog.text


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_process_multi_worker_training(data_dir, tmp_path):
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(2)]}
    workers = [run_train("--config", "smoke", "--data_dir", str(data_dir),
                         "--workdir", str(tmp_path / "run"), "--stages", "1:1:0.0:10",
                         env={"TF_CONFIG": json.dumps({"cluster": cluster,
                                                       "task": {"type": "worker",
                                                                "index": i}})})
               for i in range(2)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2
    assert summary["optimizer_steps"] == 10
    assert np.isfinite(summary["final"]["loss/total"])


def test_bad_config_name_or_field(tmp_path):
    result = run_train("--config", "shalow", "--workdir", str(tmp_path))
    assert result.wait() != 0
    assert "unknown config 'shalow'; valid configs:" in result.stderr.read()
    with pytest.raises(ValueError, match="bad stage '3:1': write epochs:n_step:noise"):
        get_config("smoke", stages="3:1")
    with pytest.raises(ValueError, match="unknown config field 'learning_rate'"):
        get_config("smoke", learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"chains must be in \[1, batch_size\], got 0"):
        get_config("smoke", chains=0)


@pytest.mark.parametrize("overrides, message", [
    ({"clip_norm": -1.0}, r"clip_norm \(the gradients' largest global norm\) must be > 0"),
    ({"warmup_steps": -5}, r"warmup_steps must be >= 0, got -5"),
    ({"val_batches": 0}, r"val_batches must be >= 1, got 0"),
    ({"val_rollout_steps": -3}, r"val_rollout_steps must be >= 0 \(0: whole trajectories\)")])
def test_settings_that_cannot_train_are_refused_first(data_dir, tmp_path, overrides, message):
    """Before any work, by the config and by the trainer (for a config built without
    get_config): a bad setting would fail an epoch later or never."""
    with pytest.raises(ValueError, match="invalid train config: " + message):
        get_config("smoke", **overrides)
    unchecked = dataclasses.replace(SMOKE, train=dataclasses.replace(SMOKE.train, **overrides))
    with pytest.raises(ValueError, match="invalid train config: " + message):
        Trainer(unchecked, data_dir / SMOKE.data.dataset_name, tmp_path)


def test_a_stage_longer_than_the_trajectories_is_refused_first(data_dir, tmp_path):
    """Before any work: a stage longer than the stored trajectories would otherwise wait
    forever for its first batch."""
    with pytest.raises(ValueError, match=r"cannot train: stage 1:20:0:5 predicts n_step = 20 "
                                         r"steps, but the dataset's trajectories hold 12: "
                                         r"use n_step <= 12"):
        Trainer(get_config("smoke", stages="1:20:0:5"), data_dir / SMOKE.data.dataset_name,
                tmp_path)


def test_an_empty_training_split_is_refused(tmp_path):
    config = get_config("smoke", n_train=0)
    with pytest.raises(ValueError, match=r"cannot train: the dataset smoke has no training "
                                         r"trajectories: generate it with --n_train >= 1"):
        experiment.run(config, tmp_path / "data", tmp_path / "run", progress=False)


def test_resume_needs_a_run_and_cleans_up_after_a_killed_one(tmp_path):
    with pytest.raises(ValueError, match=r"--resume: .* holds no run to continue"):
        runs.prepare_workdir(SMOKE, tmp_path / "empty", resume=True)
    runs.prepare_workdir(SMOKE, tmp_path, resume=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    mine = files.temporary_prefix("best.weights")
    left = tmp_path / f"{mine.replace(f'.{os.getpid()}@', f'.{dead}@')}tmp.weights.h5"
    left.write_bytes(b"half a weights file")
    live = tmp_path / f"{mine}tmp.weights.h5"  # this process is still writing it
    live.write_bytes(b"in progress")
    runs.prepare_workdir(SMOKE, tmp_path, resume=True)
    assert not left.exists() and live.exists()


def test_refuses_to_reuse_a_workdir_without_resume(smoke_run, data_dir):
    with pytest.raises(ValueError, match="already holds a run: pass --resume"):
        experiment.run(SMOKE, data_dir, smoke_run[0], progress=False)


def test_refuses_a_dataset_made_with_another_protocol(data_dir, tmp_path):
    other = dataclasses.replace(SMOKE, data=dataclasses.replace(SMOKE.data, noise=2e-4))
    before = sorted(p.name for p in (data_dir / SMOKE.data.dataset_name).iterdir())
    with pytest.raises(ValueError, match=r"different parameters \(noise: 0.0001 there, 0.0002"):
        experiment.run(other, data_dir, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (data_dir / SMOKE.data.dataset_name).iterdir()) == before
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_parc_trains_on_states_and_derivatives(tmp_path):
    config = get_config("smoke_deep")
    summary = experiment.run(config, tmp_path / "data", tmp_path / "run", progress=False)
    events = scalar_events(tmp_path / "run")
    for name in ("rho_diag", "rho_offdiag", "Q", "P"):
        assert f"loss/{name}" in events and f"loss/d_{name}" in events
    # Within the noise-free first stage the differentiator learns du/dt.
    end_of_stage = config.train.stages[0].epochs * config.train.stages[0].batches_per_epoch
    derivative = {step: sum(dict(events[f"loss/d_{name}"])[step]
                            for name in ("rho_diag", "rho_offdiag", "Q", "P"))
                  for step in (1, end_of_stage)}
    assert derivative[end_of_stage] < 0.5 * derivative[1]
    assert summary["optimizer_steps"] == config.train.total_steps
    # Selected by loss: the best of the last stage, whose n_step-2 loss exceeds stage 1's.
    assert summary["best"]["epoch"] == len(stage_epochs(config.train.stages))
    loaded = tf.saved_model.load(str(tmp_path / "run" / "export" / "saved_model"))
    L = config.data.L
    out = loaded.rollout_order_parameters(
        rho_real=tf.eye(L, batch_shape=[1]) * 0.5, rho_imag=tf.zeros([1, L, L]),
        Q=tf.zeros([1, L]), P=tf.zeros([1, L]), n_steps=tf.constant(3))
    assert out["Delta_rho"].shape == (1, 3)


def test_warm_start_copies_a_finished_runs_weights(smoke_run, data_dir, tmp_path):
    best = smoke_run[0] / "best.weights.h5"
    dataset = data_dir / SMOKE.data.dataset_name
    source = Trainer(SMOKE, dataset, tmp_path / "source").state.model
    source.load_weights(str(best))
    warm = Trainer(get_config("smoke", init_from=str(best)), dataset, tmp_path / "warm")
    assert warm.state.model.trainable_variables
    for a, b in zip(warm.state.model.trainable_variables, source.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="no such file"):
        Trainer(get_config("smoke", init_from=str(tmp_path / "nothing.weights.h5")),
                dataset, tmp_path / "missing")
    with pytest.raises(ValueError, match="do not fit a HolsteinCNN"):
        Trainer(get_config("smoke", init_from=str(best), channels=12), dataset,
                tmp_path / "wider")


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_the_starting_model_competes_for_best(smoke_run, data_dir, tmp_path, ema):
    """A warm start that training only spoils stays the best model: the run validates where
    it starts (step 0) before its first optimizer step, with weight averaging the weights
    themselves (Keras' averages start at zero)."""
    start = smoke_run[0] / "best.weights.h5"
    dataset = data_dir / SMOKE.data.dataset_name
    config = get_config("smoke", init_from=str(start), lr=1.0, warmup_steps=0,
                        stages="1:1:0.02:4", ema=ema)
    Trainer(config, dataset, tmp_path).fit(progress=False)
    assert [step for step, _ in scalar_events(tmp_path)["val_rollout/score"]] == [0, 4]
    chosen = json.loads((tmp_path / "best.json").read_text())
    assert (chosen["step"], chosen["epoch"]) == (0, 0)
    kept = Trainer(SMOKE, dataset, tmp_path / "kept").state.model
    kept.load_weights(str(tmp_path / "best.weights.h5"))
    source = Trainer(SMOKE, dataset, tmp_path / "source").state.model
    source.load_weights(str(start))
    for a, b in zip(kept.trainable_variables, source.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_autocorrelation_selection_metric(smoke_run, data_dir, tmp_path):
    """Zero for rollouts that reproduce the truth, infinite for diverged ones."""
    trainer = Trainer(get_config("smoke", select_by="autocorrelation"),
                      data_dir / SMOKE.data.dataset_name, tmp_path)
    truth = {key: trainer.validation.split[key][:, 1:] for key in ("rho", "Q", "P")}
    key = SELECTION_KEYS["autocorrelation"]
    # The validation rollout is one chunk (12 steps): a stand-in returns whole trajectories.
    trainer.state.model.rollout = lambda state, steps, **_: truth
    assert trainer.validation.rollout_metrics()[0][key] < 1e-12
    shifted = {name: np.roll(x, 3, axis=1) for name, x in truth.items()}
    trainer.state.model.rollout = lambda state, steps, **_: shifted
    assert 1e-3 < trainer.validation.rollout_metrics()[0][key] < math.inf
    factor = np.where(np.arange(truth["Q"].shape[1]) > 5, 1e3, 1.0)  # per step
    blown_up = {name: (x * factor.reshape(-1, *[1] * (x.ndim - 2))).astype(x.dtype)
                for name, x in truth.items()}
    trainer.state.model.rollout = lambda state, steps, **_: blown_up
    assert trainer.validation.rollout_metrics()[0][key] == math.inf


def test_weight_averaging_validates_and_keeps_the_average(data_dir, tmp_path):
    """With ema set, validation and best.weights.h5 see the moving average of the weights,
    while training continues from the trained weights."""
    config = get_config("smoke", ema=0.5, stages="1:1:0.02:4")
    trainer = Trainer(config, data_dir / SMOKE.data.dataset_name, tmp_path)
    trainer.fit(progress=False)
    variables = trainer.state.model.trainable_variables
    trained = [v.numpy() for v in variables]
    average = [v.numpy() for v in trainer.state.optimizer._model_variables_moving_average]
    assert any(not np.allclose(a, b) for a, b in zip(trained, average))
    with trainer.state.averaged_weights():
        for variable, value in zip(variables, average):
            np.testing.assert_array_equal(variable.numpy(), value)
    for variable, value in zip(variables, trained):
        np.testing.assert_array_equal(variable.numpy(), value)
    best = Trainer(config, data_dir / SMOKE.data.dataset_name, tmp_path / "b").state.model
    best.load_weights(str(tmp_path / "best.weights.h5"))
    for variable, value in zip(best.trainable_variables, average):
        np.testing.assert_array_equal(variable.numpy(), value)
    last = runs.dataset_model(config.model, trainer.meta)  # what `export --which last` gives
    runs.restore_last(last, config.train, tmp_path)
    for variable, value in zip(last.trainable_variables, average):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(ValueError, match=r"ema is a moving-average momentum in \[0, 1\)"):
        get_config("smoke", ema=1.0)


def test_resume_accepts_a_run_from_before_a_new_config_field(tmp_path):
    """A config.json without a field added since (at its default) still resumes; a changed
    setting does not."""
    runs.prepare_workdir(SMOKE, tmp_path, resume=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["train"]["ema"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    runs.prepare_workdir(SMOKE, tmp_path, resume=True)
    with pytest.raises(ValueError, match="holds a run of a different config"):
        runs.prepare_workdir(get_config("smoke", ema=0.9), tmp_path, resume=True)


def test_order_parameter_terms_join_the_loss(data_dir, tmp_path):
    config = get_config("smoke", order_parameter_weight=0.5, stages="1:2:0.0:3")
    trainer = Trainer(config, data_dir / SMOKE.data.dataset_name, tmp_path)
    final = trainer.fit(progress=False)
    terms = {k: v for k, v in final.items() if k.startswith("loss/") and k != "loss/total"}
    assert {"loss/Delta_rho", "loss/Delta_Q", "val_loss/Delta_Q"} <= set(final)
    expected = sum(0.5 * v if "Delta" in k else v for k, v in terms.items())
    assert final["loss/total"] == pytest.approx(expected, rel=1e-5)
