"""pipelines/batch_inference.py: equals the in-process rollout, refuses bad input clearly,
reports diverging trajectories, and imports nothing but TensorFlow and NumPy."""
import ast
import errno
import importlib.util
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from float32 import kernel_tolerance, sum_tolerance
from tf_holstein import export, models, physics, records
from tf_holstein.configs import ModelConfig, get_config

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "batch_inference.py"
SMOKE = get_config("smoke")

_spec = importlib.util.spec_from_file_location("batch_inference", SCRIPT)
bi = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bi)


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory, smoke_meta, perturbed_cnn):
    """The perturbed CNN, exported."""
    model = perturbed_cnn
    directory = tmp_path_factory.mktemp("model")
    saved_model = export.export_model(model, directory,
                                      metadata=export.dataset_metadata(smoke_meta))
    return model, saved_model


@pytest.fixture(scope="module")
def states(smoke_dataset):
    test = records.load_split(smoke_dataset, "test")
    return {key: test[key][:, 0] for key in records.STATE_KEYS}


def run_main(capsys, *argv) -> tuple[int, str]:
    """Runs the command in-process; returns its exit code and stderr."""
    code = bi.main([str(a) for a in argv] + ["--no_progress"])
    return code, capsys.readouterr().err


def save_npz(path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_batch_inference_equals_the_in_process_rollout(perturbed, smoke_dataset, states, tmp_path,
                                                       capsys):
    model, saved_model = perturbed
    steps = 25
    code, err = run_main(capsys, "--model", saved_model, "--input", smoke_dataset, "--steps", steps,
                         "--chunk", 7, "--batch_size", 1, "--out", tmp_path / "pred.npz")
    assert code == 0, err
    out = np.load(tmp_path / "pred.npz")
    expected = model.rollout(states, steps)
    assert out["rho"].shape == (2, steps + 1, 8, 8) and out["rho"].dtype == np.complex64
    # The SavedModel (TensorFlow's kernels, batch 1) and the in-process rollout (XLA for a
    # small batch) differ by float32 summation order, step by step of this regular rollout.
    for key in records.STATE_KEYS:
        np.testing.assert_array_equal(out[key][:, 0], states[key])
        scale = np.abs(expected[key].numpy()).max()
        np.testing.assert_allclose(out[key][:, 1:], expected[key].numpy(), rtol=0,
                                   atol=kernel_tolerance(scale, steps))
    delta_rho, delta_q = physics.order_parameters(out["rho"], out["Q"])
    for name, value, source in (("Delta_rho", delta_rho, out["rho"]), ("Delta_Q", delta_q,
                                                                        out["Q"])):
        np.testing.assert_allclose(out[name], value, rtol=0,
                                   atol=sum_tolerance(8, np.abs(source).max()))
    np.testing.assert_array_equal(out["index"], [0, 1])

    # The same from a .npz of the initial states, into a TFRecord of the smoke_dataset's encoding.
    source = save_npz(tmp_path / "initial.npz", **states, index=np.array([7, 9]))
    code, err = run_main(capsys, "--model", saved_model, "--input", source, "--steps", steps,
                         "--out", tmp_path / "pred.tfrecord")
    assert code == 0, err
    records_out = [tf.io.parse_single_example(r, {
        **{k: tf.io.FixedLenFeature([], tf.string) for k in ("rho", "Q", "Delta_Q")},
        "index": tf.io.FixedLenFeature([], tf.int64)})
        for r in tf.data.TFRecordDataset(str(tmp_path / "pred.tfrecord"))]
    assert [int(r["index"]) for r in records_out] == [7, 9]
    for k, record in enumerate(records_out):
        # The same kernels on the same batches: equal up to summation order at most.
        np.testing.assert_allclose(tf.io.parse_tensor(record["rho"], tf.complex64).numpy(),
                                   out["rho"][k], rtol=0, atol=kernel_tolerance(1.0, steps))
        np.testing.assert_allclose(tf.io.parse_tensor(record["Delta_Q"], tf.float32).numpy(),
                                   out["Delta_Q"][k], rtol=0,
                                   atol=kernel_tolerance(np.abs(out["Q"]).max(), steps))

    # Order parameters alone, from the signature that never materialises states.
    code, err = run_main(capsys, "--model", saved_model, "--input", source, "--steps", steps,
                         "--order_parameters_only", "--out", tmp_path / "op.npz")
    assert code == 0, err
    op = np.load(tmp_path / "op.npz")
    assert set(op.files) == {"index", "Delta_rho", "Delta_Q"}
    np.testing.assert_allclose(op["Delta_Q"], out["Delta_Q"], rtol=0,
                               atol=kernel_tolerance(np.abs(out["Q"]).max(), steps))


def test_order_parameters_match_hand_computed_values():
    rho = np.diag([0.6, 0.4, 0.7, 0.3]).astype(np.complex64)[None]
    Q = np.array([[1.0, 2.0, 3.0, 5.0]], np.float32)
    delta_rho, delta_q = bi.order_parameters(rho, Q)
    assert delta_rho[0] == pytest.approx(-0.15) and delta_q[0] == pytest.approx(0.75)


def test_bad_inputs_fail_with_clear_messages(perturbed, smoke_dataset, states, tmp_path, capsys):
    _, saved_model = perturbed
    rho, Q, P = states["rho"], states["Q"], states["P"]
    nan_Q = Q.copy()
    nan_Q[1, 3] = np.nan
    L10 = np.eye(10, dtype=np.complex64)[None] * 0.5
    cases = {
        "rho_real": (dict(rho=rho.real, Q=Q, P=P), "rho must be complex64 or complex128, got "
                                                   "float32"),
        "int_Q": (dict(rho=rho, Q=Q.astype(np.int64), P=P), "Q must be float32 or float64, got "
                                                            "int64"),
        "not_square": (dict(rho=rho[:, :, :7], Q=Q, P=P), r"rho must have shape \[N, L, L\], "
                                                          r"got \(2, 8, 7\)"),
        "short_P": (dict(rho=rho, Q=Q, P=P[:, :6]), r"P must have shape \[N, L\] = \[2, 8\]"),
        "missing": (dict(rho=rho, Q=Q), "missing P"),
        "non_finite": (dict(rho=rho, Q=nan_Q, P=P), r"Q has non-finite values in 1 state\(s\), "
                                                    r"first at position 1 \(index 1\)"),
        "odd_L": (dict(rho=rho[:, :7, :7], Q=Q[:, :7], P=P[:, :7]), "needs an even L >= 4"),
        "other_L": (dict(rho=L10, Q=np.zeros((1, 10), np.float32),
                         P=np.zeros((1, 10), np.float32)),
                    "the model was trained on L = 8; pass --allow_other_L"),
    }
    for name, (arrays, message) in cases.items():
        source = save_npz(tmp_path / f"{name}.npz", **arrays)
        code, err = run_main(capsys, "--model", saved_model, "--input", source, "--steps", 2,
                             "--out", tmp_path / "out.npz")
        assert code == 2, name
        assert "batch_inference: error:" in err
        assert re.search(message, err), (name, err)
    assert not (tmp_path / "out.npz").exists()


def test_bad_records_models_and_outputs_fail_with_clear_messages(perturbed, smoke_dataset, tmp_path,
                                                                 capsys):
    _, saved_model = perturbed
    shard = records.list_shards(smoke_dataset, "test")[0]
    wrong_dtype = tmp_path / "wrong_dtype.tfrecord"
    with tf.io.TFRecordWriter(str(wrong_dtype)) as writer:
        feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[
            tf.io.serialize_tensor(tf.zeros([3, 8, 8] if key == "rho" else [3, 8])).numpy()]))
            for key in ("rho", "Q", "P")}
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                     .SerializeToString())
    not_ours = tmp_path / "not_ours.tfrecord"
    with tf.io.TFRecordWriter(str(not_ours)) as writer:
        writer.write(tf.train.Example().SerializeToString())
    cases = [
        (["--input", wrong_dtype], "record 0: feature rho must be a serialized complex64 tensor"),
        (["--input", not_ours], "record 0 is not a tf-holstein trajectory"),
        (["--input", shard, "--start_step", 99], "need a step axis with step 99"),
        (["--input", tmp_path / "absent.npz"], "does not exist"),
        (["--input", shard, "--out", tmp_path / "pred.csv"], "must end in .npz or .tfrecord"),
        (["--input", shard, "--model", saved_model.parent], "is not a SavedModel directory: no "
                                                           "saved_model.pb (did you mean"),
        (["--input", shard, "--steps", 0], "--steps must be >= 1"),
    ]
    for extra, message in cases:
        argv = ["--model", saved_model, "--steps", 2, "--out", tmp_path / "pred.npz", *extra]
        code, err = run_main(capsys, *argv)
        assert code == 2 and message in err, (extra, err)


def test_a_dataset_shard_missing_trajectories_is_refused(perturbed, smoke_dataset, tmp_path,
                                                         capsys):
    """A shard cut at a record boundary reads cleanly; its count against meta.json does not."""
    _, saved_model = perturbed
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for path in smoke_dataset.iterdir():
        (dataset / path.name).write_bytes(path.read_bytes())
    shard = dataset / records.shard_name("test", 0, 1)
    data = shard.read_bytes()
    shard.write_bytes(data[:16 + int.from_bytes(data[:8], "little")])  # the first record
    message = (f"{shard} holds 1 trajectories, its dataset's meta.json implies 2: the shard is "
               f"damaged")
    for source in (dataset, shard):
        code, err = run_main(capsys, "--model", saved_model, "--input", source, "--steps", 2,
                             "--out", tmp_path / "pred.npz")
        assert code == 2 and message in err, err
    shard.unlink()
    code, err = run_main(capsys, "--model", saved_model, "--input", dataset, "--steps", 2,
                         "--out", tmp_path / "pred.npz")
    assert code == 2 and "holds no test-*.tfrecord shards" in err, err


def test_a_signature_with_a_fixed_chain_length_refuses_others(tmp_path, capsys):
    """Any SavedModel with the same signatures works; a static L in them is enforced."""
    class FixedL(tf.Module):
        spec = [tf.TensorSpec([None, 8, 8], tf.float32, name="rho_real"),
                tf.TensorSpec([None, 8, 8], tf.float32, name="rho_imag"),
                tf.TensorSpec([None, 8], tf.float32, name="Q"),
                tf.TensorSpec([None, 8], tf.float32, name="P"),
                tf.TensorSpec([], tf.int32, name="n_steps")]

        @tf.function(input_signature=spec)
        def rollout(self, rho_real, rho_imag, Q, P, n_steps):
            def repeat(x):
                return tf.repeat(x[:, None], n_steps, axis=1)
            return {"rho_real": repeat(rho_real), "rho_imag": repeat(rho_imag), "Q": repeat(Q),
                    "P": repeat(P), "Delta_rho": repeat(Q[:, 0]), "Delta_Q": repeat(Q[:, 0])}

        @tf.function(input_signature=spec)
        def rollout_order_parameters(self, rho_real, rho_imag, Q, P, n_steps):
            return {"Delta_rho": tf.repeat(Q[:, :1], n_steps, axis=1),
                    "Delta_Q": tf.repeat(Q[:, :1], n_steps, axis=1)}

    module = FixedL()
    tf.saved_model.save(module, str(tmp_path / "fixed"), signatures={
        "rollout": module.rollout, "rollout_order_parameters": module.rollout_order_parameters})
    source = save_npz(tmp_path / "L10.npz", rho=np.eye(10, dtype=np.complex64)[None] * 0.5,
                      Q=np.zeros((1, 10), np.float32), P=np.zeros((1, 10), np.float32))
    code, err = run_main(capsys, "--model", tmp_path / "fixed", "--input", source, "--steps", 3,
                         "--out", tmp_path / "out.npz")
    assert code == 2 and "the model's signature only takes L = 8" in err, err
    source = save_npz(tmp_path / "L8.npz", rho=np.eye(8, dtype=np.complex64)[None] * 0.5,
                      Q=np.ones((1, 8), np.float32), P=np.zeros((1, 8), np.float32))
    code, err = run_main(capsys, "--model", tmp_path / "fixed", "--input", source, "--steps", 3,
                         "--out", tmp_path / "out.npz")
    assert code == 0, err
    assert np.load(tmp_path / "out.npz")["Q"].shape == (1, 4, 8)
    tf.saved_model.save(module, str(tmp_path / "partial"), signatures={"rollout": module.rollout})
    code, err = run_main(capsys, "--model", tmp_path / "partial", "--input", source, "--steps",
                         3, "--out", tmp_path / "out.npz")
    assert code == 2 and "lacks the signature(s) rollout_order_parameters" in err, err


def test_other_chain_lengths_run_when_allowed(perturbed, tmp_path, capsys):
    _, saved_model = perturbed
    rng = np.random.default_rng(0)
    source = save_npz(tmp_path / "L12.npz", rho=(np.eye(12) * 0.5).astype(np.complex128)[None],
                      Q=0.01 * rng.normal(size=(1, 12)), P=np.zeros((1, 12)))
    code, err = run_main(capsys, "--model", saved_model, "--input", source, "--steps", 4,
                         "--allow_other_L", "--out", tmp_path / "out.npz")
    assert code == 0, err
    assert np.load(tmp_path / "out.npz")["rho"].shape == (1, 5, 12, 12)


def test_diverging_trajectories_are_reported_not_crashed_on(smoke_meta, states, tmp_path, capsys):
    model = models.build_model(ModelConfig(), smoke_meta["scales"])
    model.cnn.network.output_conv.bias.assign([0.0, 0.0, np.inf, 0.0])  # Q -> inf at step 1
    saved_model = export.export_model(model, tmp_path / "export")
    source = save_npz(tmp_path / "initial.npz", **states)
    code = bi.main(["--model", str(saved_model), "--input", str(source), "--steps", "3",
                    "--out", str(tmp_path / "out.npz"), "--no_progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["non_finite_trajectories"] == [0, 1]
    Q = np.load(tmp_path / "out.npz")["Q"]
    assert np.isfinite(Q[:, 0]).all() and np.isinf(Q[:, 1]).all()
    assert not np.isfinite(Q[:, 2:]).any()


def run_script(*argv, limit_file_size=None):
    """The command in a process of its own; with `limit_file_size` no file it writes may grow
    beyond that many bytes (the kernel then fails the write as a full disk would)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, resource.RLIM_INFINITY))

    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, argv), "--no_progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=limit if limit_file_size else None,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.parametrize("suffix", [".npz", ".tfrecord"])
def test_a_full_disk_is_one_line_naming_the_output(perturbed, states, tmp_path, suffix):
    """Output that outgrows the space left (here a file-size limit, which the kernel enforces
    like a full disk) fails in one line naming the file; nothing is left behind."""
    _, saved_model = perturbed
    source = save_npz(tmp_path / "initial.npz", **states)
    out = tmp_path / "out" / f"pred{suffix}"
    out.parent.mkdir()
    process = run_script("--model", saved_model, "--input", source, "--steps", 100, "--out", out,
                         limit_file_size=64 * 1024)  # the states take 2 x 101 x 512 bytes
    _, err = process.communicate()
    assert process.returncode == 1, err
    assert [line for line in err.splitlines() if "batch_inference" in line] == [
        f"batch_inference: error: cannot write {out}: {os.strerror(errno.EFBIG)} (nothing was "
        f"written under that name)"], err  # one line beside TensorFlow's start-up notes
    assert not list(out.parent.iterdir())


def test_unwritable_or_missing_outputs_fail_before_the_rollout(perturbed, states, tmp_path,
                                                               capsys, monkeypatch):
    _, saved_model = perturbed
    source = save_npz(tmp_path / "initial.npz", **states)
    argv = ["--model", saved_model, "--input", source, "--steps", 2]
    code, err = run_main(capsys, *argv, "--out", tmp_path / "absent" / "pred.npz")
    assert code == 2 and f"directory {tmp_path / 'absent'} does not exist" in err, err
    (tmp_path / "dir.npz").mkdir()
    code, err = run_main(capsys, *argv, "--out", tmp_path / "dir.npz")
    assert code == 2 and f"--out {tmp_path / 'dir.npz'} is a directory" in err, err

    create_temporary = bi._create_temporary

    def read_only(path):  # what the kernel answers in a read-only mount
        if path.parent != tmp_path:
            return create_temporary(path)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(bi, "_create_temporary", read_only)
    monkeypatch.setattr(bi, "rollout_batches", lambda *args: pytest.fail("rolled out"))
    code, err = run_main(capsys, *argv, "--out", tmp_path / "pred.npz")
    assert (code, err) == (1, f"batch_inference: error: cannot write {tmp_path / 'pred.npz'}: "
                              f"Read-only file system (nothing was written under that name)\n")


def test_a_killed_runs_temporary_is_removed_by_the_next_run(perturbed, states, tmp_path, capsys):
    """kill -9 leaves the hidden temporary of the output; the next run on that output removes
    it (its owner is dead), and leaves a live run's alone."""
    _, saved_model = perturbed
    source = save_npz(tmp_path / "initial.npz", **states)
    out = tmp_path / "pred.tfrecord"
    killed = run_script("--model", saved_model, "--input", source, "--steps", 100_000,
                        "--out", out)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".pred.tfrecord.*.tmp")) and time.time() < deadline \
            and killed.poll() is None:
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    left = list(tmp_path.glob(".pred.tfrecord.*.tmp"))
    assert len(left) == 1 and f".{killed.pid}@" in left[0].name, killed.stderr.read()
    live = tmp_path / left[0].name.replace(f".{killed.pid}@", f".{os.getpid()}@")
    live.write_bytes(b"another run's output in progress")
    code, err = run_main(capsys, "--model", saved_model, "--input", source, "--steps", 2,
                         "--out", out)
    assert code == 0, err
    assert sorted(tmp_path.glob(".pred.tfrecord.*.tmp")) == [live]
    assert out.exists()


def test_the_script_imports_only_the_standard_library_tensorflow_and_numpy():
    tree = ast.parse(SCRIPT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported - set(sys.stdlib_module_names) == {"numpy", "tensorflow"}
