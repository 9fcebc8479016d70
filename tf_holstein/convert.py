"""Imports a checkpoint of the reference PyTorch implementation into our Keras models.

The reference (apning/holstein-parc) saves `model_weights.pth`, a PyTorch
`state_dict`, beside the model's constructor arguments. A `.pth` is a zip
holding `<name>/data.pkl`, a pickle of the state dict whose tensors point at
raw little-endian storages `<name>/data/<key>`. We read it with a restricted
unpickler that only builds what a state dict needs, so PyTorch is not
required and a checkpoint cannot run code.

    python -m tf_holstein.convert --pth model_weights.pth --kwargs kwargs.json --out model.keras

The kwargs are JSON (the reference pickles torch objects; write them as strings,
e.g. "act_func": "Tanh()", "dtype": "torch.float32").
"""
from __future__ import annotations

import collections
import json
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags

from tf_holstein.configs import ModelConfig
from tf_holstein.models import HolsteinCNN, HolsteinModel, build_model
from tf_holstein.networks import validate_scales


class CheckpointError(ValueError):
    """A checkpoint or its kwargs that this converter cannot import, with the reason."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for `torch.FloatStorage` and friends: just the element type."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2` for numpy: a strided view of a storage, copied."""
    if any(s < 0 for s in (offset, *size, *stride)):
        raise CheckpointError(f"negative tensor geometry: offset {offset}, size {size}, "
                              f"stride {stride}")
    if 0 not in size:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise CheckpointError(f"tensor of size {size}, stride {stride}, offset {offset} "
                                  f"overruns its storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride],
        writeable=False)
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    """`torch._utils._rebuild_parameter`: a Parameter is its data here."""
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into an OrderedDict of numpy arrays, and nothing else."""

    _GLOBALS = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str, byteorder: str) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.byteorder = "<" if byteorder == "little" else ">"

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in self._GLOBALS:
            return self._GLOBALS[(module, name)]
        raise CheckpointError(f"the checkpoint's pickle refers to {module}.{name}, which a "
                              f"state dict of tensors does not need; refusing to load it")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unsupported persistent id in the checkpoint: {pid!r}")
        _, storage_type, key, _location, numel = pid
        path = f"{self.prefix}/data/{key}"
        try:
            raw = self.archive.read(path)
        except KeyError:
            raise CheckpointError(f"the checkpoint lacks the storage {path}") from None
        dtype = storage_type.dtype.newbyteorder(self.byteorder)
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointError(f"storage {path} has {len(raw)} bytes, expected {numel} "
                                  f"{storage_type.name} elements")
        return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))


def read_state_dict(pth_path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch `state_dict` saved with `torch.save` (zip format), by name."""
    pth_path = Path(pth_path)
    if not pth_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {pth_path}")
    if not zipfile.is_zipfile(pth_path):
        raise CheckpointError(f"{pth_path} is not a zip archive: expected a PyTorch checkpoint "
                              f"saved by torch.save (>= 1.6)")
    with zipfile.ZipFile(pth_path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{pth_path} is a zip but not a PyTorch checkpoint: expected "
                                  f"one '<name>/data.pkl', found {pickles or 'none'}")
        prefix = pickles[0][: -len("/data.pkl")]
        byteorder = "little"
        if f"{prefix}/byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"unknown byte order {byteorder!r} in {pth_path}")
        with archive.open(pickles[0]) as file:
            try:
                state_dict = _StateDictUnpickler(file, archive, prefix, byteorder).load()
            except CheckpointError:
                raise
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as error:
                raise CheckpointError(f"cannot read the pickle of {pth_path}: {error}") from None
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state_dict.items()):
        raise CheckpointError(f"{pth_path} does not hold a state dict of tensors")
    return dict(state_dict)


# Constructor arguments of the reference's `HolsteinPARC` and the values we implement.
_REQUIRED = {"act_func": "Tanh()", "use_layernorm": True, "use_residual_scalar": False,
             "dtype": "torch.float32"}
_ARCHITECTURE = ("channels", "n_blocks", "dropout_p", "kernel_size", "simple_cnn",
                 "data_scalars")
_IGNORED = ("init_method", "zero_initialize_output")  # initialisation only: the weights load


def model_from_kwargs(kwargs: dict[str, Any]) -> HolsteinModel:
    """An untrained model with the architecture of the reference's constructor `kwargs`."""
    unknown = sorted(set(kwargs) - set(_REQUIRED) - set(_ARCHITECTURE) - set(_IGNORED))
    if unknown:
        raise CheckpointError(f"unknown reference kwargs {unknown}; known: "
                              f"{sorted((*_REQUIRED, *_ARCHITECTURE, *_IGNORED))}")
    missing = [key for key in _ARCHITECTURE if key not in kwargs]
    if missing:
        raise CheckpointError(f"the kwargs lack {missing}")
    for key, supported in _REQUIRED.items():
        if key in kwargs and kwargs[key] != supported:
            raise CheckpointError(f"unsupported reference kwarg {key}={kwargs[key]!r}: "
                                  f"tf-holstein implements only {key}={supported!r}")
    if not isinstance(kwargs["data_scalars"], dict):
        raise CheckpointError(f"data_scalars must be the dict of the nine scaling constants, "
                              f"got {kwargs['data_scalars']!r}")
    try:
        scales = validate_scales(kwargs["data_scalars"])
    except ValueError as error:
        raise CheckpointError(f"bad data_scalars: {error}") from None
    if not isinstance(kwargs["simple_cnn"], bool):
        raise CheckpointError(f"simple_cnn must be true or false, got {kwargs['simple_cnn']!r}")
    for key in ("channels", "n_blocks", "kernel_size"):
        if not isinstance(kwargs[key], int) or isinstance(kwargs[key], bool):
            raise CheckpointError(f"{key} must be an integer, got {kwargs[key]!r}")
    if not isinstance(kwargs["dropout_p"], (int, float)):
        raise CheckpointError(f"dropout_p must be a number, got {kwargs['dropout_p']!r}")
    config = ModelConfig(kind="cnn" if kwargs["simple_cnn"] else "parc",
                         channels=kwargs["channels"], n_blocks=kwargs["n_blocks"],
                         dropout=float(kwargs["dropout_p"]), kernel_size=kwargs["kernel_size"])
    try:
        return build_model(config, scales)
    except ValueError as error:
        raise CheckpointError(f"unsupported architecture: {error}") from None


def _networks(model: HolsteinModel) -> dict[str, Any]:
    """The reference's attribute name -> our scaled network, for each network of `model`."""
    if isinstance(model, HolsteinCNN):
        return {"cnn": model.cnn}
    return {"differentiator": model.differentiator, "integrator": model.integrator}


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # torch [out, in, kh, kw] -> ours [kh, kw, in, out]


def _reference_tensors(model: HolsteinModel) -> dict[str, tuple[Any, Any]]:
    """State-dict key -> (our variable, layout conversion) for every trainable reference tensor."""
    mapping = {}
    for prefix, scaled in _networks(model).items():
        net, base = scaled.network, f"{prefix}.CNN"
        convs = {f"{base}.input_conv": net.input_conv, f"{base}.output_conv": net.output_conv}
        norms = {}
        for i, block in enumerate(net.blocks):
            convs.update({f"{base}.blocks.{i}.conv1": block.conv1,
                          f"{base}.blocks.{i}.conv2": block.conv2})
            norms.update({f"{base}.blocks.{i}.ln1.ln": block.ln1,
                          f"{base}.blocks.{i}.ln2.ln": block.ln2})
        for name, conv in convs.items():
            mapping[f"{name}.weight"] = (conv.kernel, _conv_kernel)
            mapping[f"{name}.bias"] = (conv.bias, np.asarray)
        for name, norm in norms.items():
            mapping[f"{name}.weight"] = (norm.gamma, np.asarray)
            mapping[f"{name}.bias"] = (norm.beta, np.asarray)
    return mapping


def _scale_buffers(model: HolsteinModel) -> dict[str, tuple[Any, list[str]]]:
    """Name -> (our [4] scale weight, the reference's scalar buffers for its four channels)."""
    buffers = {}
    for prefix, scaled in _networks(model).items():
        for direction, weight in (("in", scaled.in_scale), ("out", scaled.out_scale)):
            buffers[f"{prefix}.{direction}_scale"] = (
                weight, [f"{prefix}.{direction}_scale_{q}" for q in ("rho", "rho", "Q", "P")])
    return buffers


def from_reference(pth_path: str | Path, kwargs_json_path: str | Path) -> HolsteinModel:
    """Our model holding the weights of a reference checkpoint (`model_weights.pth` + kwargs).

    Checks that the checkpoint has exactly the tensors the kwargs imply, with their shapes,
    and that its scale buffers agree with the kwargs' `data_scalars`; the buffers' exact
    float32 values are kept.
    """
    kwargs_json_path = Path(kwargs_json_path)
    if not kwargs_json_path.is_file():
        raise FileNotFoundError(f"no kwargs file at {kwargs_json_path}")
    try:
        kwargs = json.loads(kwargs_json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{kwargs_json_path} is not JSON ({error}); the reference's "
                              f"model_kwargs.pkl must be written as JSON first") from None
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{kwargs_json_path} must hold a JSON object of kwargs")
    state_dict = read_state_dict(pth_path)
    model = model_from_kwargs(kwargs)

    tensors, buffers = _reference_tensors(model), _scale_buffers(model)
    expected = set(tensors).union(*(keys for _, keys in buffers.values()))
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{pth_path} does not match its kwargs ({type(model).__name__}, "
                              f"{model.config}): missing {missing or 'nothing'}, "
                              f"unexpected {unexpected or 'nothing'}")
    for key, (variable, layout) in tensors.items():
        value = layout(state_dict[key].astype(np.float32))
        if value.shape != tuple(variable.shape):
            raise CheckpointError(f"{key} has shape {state_dict[key].shape}, which does not "
                                  f"fit our {tuple(variable.shape)}")
        variable.assign(value)
    for name, (weight, keys) in buffers.items():
        if any(state_dict[key].shape != () for key in keys):
            raise CheckpointError(f"the scale buffers {sorted(set(keys))} must be scalars")
        value = np.array([state_dict[key] for key in keys], dtype=np.float32)
        implied = weight.numpy()
        if not np.allclose(value, implied, rtol=1e-6, atol=0):
            raise CheckpointError(f"the buffers {name}_(rho, Q, P) = {value[1:]} disagree with "
                                  f"the kwargs' data_scalars, which imply {implied[1:]}")
        weight.assign(value)
    return model


def main(argv: list[str]) -> None:
    """Command line: convert `--pth` with `--kwargs` and save the model to `--out`."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    out = Path(flags.FLAGS.out)
    if out.suffix != ".keras":
        sys.exit(f"convert: --out must end in .keras, got {out}")
    try:
        model = from_reference(flags.FLAGS.pth, flags.FLAGS.kwargs)
    except (CheckpointError, FileNotFoundError) as error:
        sys.exit(f"convert: {error}")
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    n_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"wrote {out}: {type(model).__name__} {model.config}, {n_params:,} parameters")


def _define_flags() -> None:
    """The command's flags, defined only when run as a command (no global flag clashes)."""
    flags.DEFINE_string("pth", None, "the reference's model_weights.pth (a torch state_dict)")
    flags.DEFINE_string("kwargs", None, "its constructor kwargs as JSON")
    flags.DEFINE_string("out", None, "where to write the Keras model (.keras)")
    flags.mark_flags_as_required(["pth", "kwargs", "out"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
