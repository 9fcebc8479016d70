"""The side-by-side benchmark: importable without PyTorch; its PyTorch models (when the bench
extra is installed) have our models' weights, so that the two frameworks time the same work."""
import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module's annotations up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_cases_need_no_pytorch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch fails
    bench = load("models")
    cases = {name: make() for name, make in bench.CASES.items()}
    assert cases["train_tiny"].units_per_call == 64
    assert cases["rollout_tiny_b256"].units_per_call == 256 * 20
    deep = cases["train_deep_L32"]
    assert (deep.kind, deep.channels, deep.n_blocks, deep.batch, deep.steps, deep.conserve) == \
        ("parc", 16, 1, 32, 8, True)
    assert cases["train_deep_L32_cnn"].kind == "cnn"


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_pytorch_models_have_our_weight_shapes(kind):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import torch_models
    finally:
        sys.path.remove(str(BENCHMARKS))
    from tf_holstein import models

    bench = load("models")
    ours = models.MODELS[kind](bench.SCALES, channels=8, n_blocks=2)
    theirs = torch_models.HolsteinModel(kind, bench.SCALES, channels=8, n_blocks=2, dropout=0.2)
    # Convolution kernels are [k, k, in, out] here and [out, in, k, k] in PyTorch.
    assert sorted(sorted(v.shape) for v in ours.trainable_variables) == \
        sorted(sorted(p.shape) for p in theirs.parameters())
    # An untrained model's step is the identity in both (zero output convolutions).
    state = bench.random_states((2,), seed=0)
    states, _ = theirs.eval().rollout({k: torch.from_numpy(v) for k, v in state.items()}, 1)
    np.testing.assert_array_equal(states["Q"][:, 0].detach().numpy(), state["Q"])
