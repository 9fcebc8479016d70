"""Importing the reference's PyTorch checkpoints, without PyTorch."""
import collections
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from float32 import kernel_tolerance
from tf_holstein import convert, models, records
from tf_holstein.configs import ModelConfig

# The reference's published checkpoints are not part of this repository: a directory named
# by TF_HOLSTEIN_REFERENCE_DIR, else shared/reference/ beside the checkout where it exists.
REFERENCE = Path(os.environ.get("TF_HOLSTEIN_REFERENCE_DIR")
                 or Path(__file__).resolve().parents[2] / "shared" / "reference")
LENGTHS = [16, 32]


def reference_files(L: int) -> tuple[Path, Path, Path]:
    files = tuple(REFERENCE / f"tiny_shallow_L{L}.{ext}"
                  for ext in ("pth", "kwargs.json", "fixture.npz"))
    if not all(f.is_file() for f in files):
        pytest.skip(f"reference checkpoints not found in {REFERENCE}: set "
                    f"TF_HOLSTEIN_REFERENCE_DIR to a directory holding tiny_shallow_L{L}.pth "
                    f"(the reference's model_weights.pth, from pretrained_weights/ of "
                    f"github.com/apning/holstein-parc), its kwargs as .kwargs.json and the "
                    f"reference implementation's outputs as .fixture.npz")
    return files


@pytest.mark.parametrize("L", LENGTHS)
def test_reference_checkpoints_reproduce_the_fixtures(L):
    pth, kwargs, fixture = reference_files(L)
    model = convert.from_reference(pth, kwargs)
    assert isinstance(model, models.HolsteinCNN)
    data = np.load(fixture)
    state = {key: data[key] for key in records.STATE_KEYS}
    step = model.step(state)
    rollout = model.rollout(state, 50)
    for key in records.STATE_KEYS:
        # PyTorch's kernels against TensorFlow's or XLA's: float32 summation order, step by
        # step of the (regular) shallow quench; states of magnitude <= 1.
        assert np.abs(step[key].numpy() - data[f"step1_{key}"]).max() <= kernel_tolerance(1.0), key
        assert np.abs(rollout[key].numpy() - data[f"rollout50_{key}"]).max() <= \
            kernel_tolerance(1.0, 50), key
    # The fixtures move: a model that did nothing would fail the tolerances above.
    assert np.abs(data["rollout50_Q"][:, -1] - data["Q"]).max() > 0.05


def test_state_dict_reader_sees_the_published_tensors():
    pth, kwargs, _ = reference_files(16)
    state_dict = convert.read_state_dict(pth)
    assert state_dict["cnn.CNN.input_conv.weight"].shape == (16, 4, 3, 3)
    assert state_dict["cnn.CNN.blocks.0.ln1.ln.weight"].shape == (16,)
    assert state_dict["cnn.CNN.output_conv.weight"].shape == (4, 16, 1, 1)
    assert all(v.dtype == np.float32 for v in state_dict.values())
    scalars = json.loads(kwargs.read_text())["data_scalars"]
    assert state_dict["cnn.in_scale_Q"] == np.float32(1 / scalars["Q"])
    assert state_dict["cnn.out_scale_P"] == np.float32(scalars["delta_P"])


def write_torch_checkpoint(path: Path, tensors: dict[str, np.ndarray], monkeypatch,
                           byteorder: str = "little", transposed: tuple[str, ...] = ()) -> None:
    """Writes `tensors` as torch.save does: a zip with data.pkl and raw storages.

    A fake `torch` module stands in for the real one while pickling; tensors named in
    `transposed` are stored column-major (the pickle carries their strides).
    """
    torch = types.ModuleType("torch")
    torch_utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only used for pickling")

    for obj, module in ((FloatStorage, "torch"), (_rebuild_tensor_v2, "torch._utils")):
        obj.__module__, obj.__qualname__ = module, obj.__name__
    torch.FloatStorage, torch_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
    torch._utils = torch_utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", torch_utils)

    storages = {}

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, key, array, column_major):
            order = "F" if column_major else "C"
            storages[key] = np.ravel(array, order=order).astype(np.float32)
            strides = np.array(np.asarray(array, order=order).strides) // array.itemsize
            self.args = (Storage(key, array.size), 0, array.shape, tuple(int(s) for s in strides),
                         False, collections.OrderedDict())

        def __reduce__(self):
            return _rebuild_tensor_v2, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    state_dict = collections.OrderedDict(
        (name, Tensor(str(i), np.asarray(value, np.float32), name in transposed))
        for i, (name, value) in enumerate(tensors.items()))
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("archive/data.pkl", "w") as file:
            Pickler(file, protocol=2).dump(state_dict)
        archive.writestr("archive/byteorder", byteorder)
        dtype = "<f4" if byteorder == "little" else ">f4"
        for key, values in storages.items():
            archive.writestr(f"archive/data/{key}", values.astype(dtype).tobytes())


def as_reference_state_dict(model: models.HolsteinPARC) -> dict[str, np.ndarray]:
    """A PARC model's weights under the reference's names and torch layouts."""
    tensors = {}
    for prefix in ("differentiator", "integrator"):
        scaled = getattr(model, prefix)
        net = scaled.network
        convs = {"input_conv": net.input_conv, "output_conv": net.output_conv}
        for i, block in enumerate(net.blocks):
            convs.update({f"blocks.{i}.conv1": block.conv1, f"blocks.{i}.conv2": block.conv2})
            for ln in ("ln1", "ln2"):
                norm = getattr(block, ln)
                tensors[f"{prefix}.CNN.blocks.{i}.{ln}.ln.weight"] = norm.gamma.numpy()
                tensors[f"{prefix}.CNN.blocks.{i}.{ln}.ln.bias"] = norm.beta.numpy()
        for name, conv in convs.items():
            tensors[f"{prefix}.CNN.{name}.weight"] = conv.kernel.numpy().transpose(3, 2, 0, 1)
            tensors[f"{prefix}.CNN.{name}.bias"] = conv.bias.numpy()
        for direction in ("in", "out"):
            scale = getattr(scaled, f"{direction}_scale").numpy()
            for quantity, channel in (("rho", 0), ("Q", 2), ("P", 3)):
                tensors[f"{prefix}.{direction}_scale_{quantity}"] = scale[channel]
    return tensors


def parc_kwargs(scales: dict, **overrides) -> dict:
    return {"act_func": "Tanh()", "channels": 8, "data_scalars": scales, "dropout_p": 0.2,
            "dtype": "torch.float32", "init_method": "xavier_uniform", "kernel_size": 3,
            "n_blocks": 2, "simple_cnn": False, "use_layernorm": True,
            "use_residual_scalar": False, "zero_initialize_output": True, **overrides}


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_a_parc_checkpoint_converts_to_the_same_model(tmp_path, monkeypatch, byteorder):
    keras.utils.set_random_seed(0)
    scales = {key: 0.01 * (i + 1) for i, key in enumerate(records.SCALE_KEYS)}
    original = models.build_model(ModelConfig(kind="parc", channels=8, n_blocks=2,
                                              zero_init_output=False), scales)
    tensors = as_reference_state_dict(original)
    write_torch_checkpoint(tmp_path / "model_weights.pth", tensors, monkeypatch, byteorder,
                           transposed=("integrator.CNN.blocks.1.conv2.weight",))
    (tmp_path / "kwargs.json").write_text(json.dumps(parc_kwargs(scales)))
    converted = convert.from_reference(tmp_path / "model_weights.pth", tmp_path / "kwargs.json")
    assert isinstance(converted, models.HolsteinPARC)
    for ours, theirs in zip(original.weights, converted.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def test_unsupported_or_mismatched_kwargs_are_named(tmp_path):
    pth, kwargs_path, _ = reference_files(16)
    kwargs = json.loads(kwargs_path.read_text())
    cases = {
        "use_residual_scalar": {**kwargs, "use_residual_scalar": True},
        "act_func": {**kwargs, "act_func": "ReLU()"},
        "unknown reference kwargs \\['bogus'\\]": {**kwargs, "bogus": 1},
        "does not fit": {**kwargs, "channels": 8},
        "channels must be an integer": {**kwargs, "channels": "16"},
        "odd integer": {**kwargs, "kernel_size": 4},
        "missing \\['cnn.CNN.blocks.1": {**kwargs, "n_blocks": 2},
        "unexpected \\['cnn.CNN": {**kwargs, "simple_cnn": False},
        "disagree with the kwargs' data_scalars": {
            **kwargs, "data_scalars": {**kwargs["data_scalars"], "Q": 0.6}},
    }
    for message, bad in cases.items():
        path = tmp_path / "kwargs.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(convert.CheckpointError, match=message):
            convert.from_reference(pth, path)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        convert.read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not a zip")
    with pytest.raises(convert.CheckpointError, match="not a zip"):
        convert.read_state_dict(tmp_path / "text.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(convert.CheckpointError, match="not a PyTorch checkpoint"):
        convert.read_state_dict(tmp_path / "other.zip")


class Exploit:
    def __reduce__(self):
        return (print, ("a checkpoint must not run code",))


def test_pickles_calling_anything_else_are_refused(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": Exploit()}, protocol=2))
    with pytest.raises(convert.CheckpointError, match="print, which"):
        convert.read_state_dict(tmp_path / "evil.pth")
    assert "must not run code" not in capsys.readouterr().out


def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tf_holstein.convert", *args],
                          capture_output=True, text=True, timeout=120)


def test_command_writes_a_keras_model_that_reproduces_the_fixture(tmp_path):
    pth, kwargs, fixture = reference_files(16)
    out = tmp_path / "tiny_L16.keras"
    result = run_command("--pth", str(pth), "--kwargs", str(kwargs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "5,364 parameters" in result.stdout
    model = keras.saving.load_model(out)
    data = np.load(fixture)
    step = model.step({key: data[key] for key in records.STATE_KEYS})
    assert np.abs(step["rho"].numpy() - data["step1_rho"]).max() <= kernel_tolerance(1.0)


def test_command_reports_what_is_wrong(tmp_path):
    pth, kwargs, _ = reference_files(16)
    bad = tmp_path / "kwargs.json"
    bad.write_text(json.dumps({**json.loads(kwargs.read_text()), "use_residual_scalar": True}))
    result = run_command("--pth", str(pth), "--kwargs", str(bad), "--out",
                         str(tmp_path / "m.keras"))
    assert result.returncode != 0
    assert "use_residual_scalar=True" in result.stderr
    assert not (tmp_path / "m.keras").exists()
