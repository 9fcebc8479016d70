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
    assert (deep.model.kind, deep.model.channels, deep.model.n_blocks, deep.batch, deep.steps,
            deep.model.conserve) == ("parc", 16, 1, 32, 8, True)
    assert cases["train_deep_L32_cnn"].model.kind == "cnn"


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_pytorch_models_have_our_weight_shapes(kind):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import torch_models
    finally:
        sys.path.remove(str(BENCHMARKS))
    from tf_holstein import models
    from tf_holstein.configs import ModelConfig

    bench = load("models")
    ours = models.build_model(ModelConfig(kind=kind, channels=8, n_blocks=2), bench.SCALES)
    theirs = torch_models.HolsteinModel(kind, bench.SCALES, channels=8, n_blocks=2, dropout=0.2)
    # Convolution kernels are [k, k, in, out] here and [out, in, k, k] in PyTorch.
    assert sorted(sorted(v.shape) for v in ours.trainable_variables) == \
        sorted(sorted(p.shape) for p in theirs.parameters())
    # An untrained model's step is the identity in both (zero output convolutions).
    state = bench.random_states((2,), seed=0)
    states, _ = theirs.eval().rollout({k: torch.from_numpy(v) for k, v in state.items()}, 1)
    np.testing.assert_array_equal(states["Q"][:, 0].detach().numpy(), state["Q"])


def test_cost_against_size_prices_models_and_baselines_at_every_size(tmp_path):
    """benchmarks/cost.py at two tiny sizes: a baseline and a shipped model (run at a size
    it was not trained at) priced at each, the batch lowered where it would exceed
    --max_entries, the table and figure written."""
    import json
    import subprocess

    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cost.py"), "--config", "smoke_deep", "--sizes",
         "8,16", "--model", "rk4:0.04", "--model", "saved_models/deep_L32_cnn", "--steps",
         "1", "--repeats", "1", "--batch", "16", "--max_entries", "2048", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=600,
        cwd=BENCHMARKS.parent)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads((tmp_path / "cost_vs_L.json").read_text())["measurements"]
    assert [(m["model"], m["L"], m["batch"]) for m in measured] == [
        ("rk4:0.04", 8, 16), ("saved_models/deep_L32_cnn", 8, 16),
        ("rk4:0.04", 16, 8), ("saved_models/deep_L32_cnn", 16, 8)]  # 2048 / 16^2 = 8
    assert all(m["us_per_trajectory_step"] > 0 for m in measured)
    rows = (tmp_path / "cost_vs_L.md").read_text().splitlines()
    assert rows[0] == "| model | L = 8 | L = 16 |" and len(rows) == 4
    assert (tmp_path / "cost_vs_L.png").stat().st_size > 0
