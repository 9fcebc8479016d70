"""Speed of our models against a PyTorch implementation of the same networks, side by side.

    pip install -e ".[bench]"        # PyTorch (CPU build), for this script only
    python benchmarks/models.py [--repeats 5] [--min_seconds 1] [--threads 2] [--cases ...]

Each case builds the same model (SPEC section 3: same weight shapes) in both frameworks
(`benchmarks/torch_models.py` for PyTorch) and times them in turns: after a warm-up,
`--repeats` timed runs of each, alternating ours and PyTorch's, so that both see the
same changes of load. Both run on `--threads` threads. Training: samples/s of full
optimizer steps (rollout with dropout, SPEC section 4's loss, backward, grad-norm
clipping at 1, AdamW) on a fixed random batch; rollouts: steps/s (batch 1) or
sample-steps/s, without gradients, returning every step's state. Printed per case:
the median and range (min-max) of each, the ratio of the medians, and the share of
the cores other processes used meanwhile (numbers taken beside other load are lower
than this machine's). PyTorch's OpenMP threads spin while they wait for each other: beside
other load that stalls them for whole scheduler slices, so on a busy machine run with
OMP_WAIT_POLICY=PASSIVE (the header shows the setting; TensorFlow does not use OpenMP).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import statistics
import time
from typing import Callable

from absl import app, flags

from tf_holstein.configs import PRESETS, ModelConfig

flags.DEFINE_integer("repeats", 5, "timed runs of each framework per case")
flags.DEFINE_float("min_seconds", 1.0, "minimum duration of one timed run")
flags.DEFINE_integer("threads", 2, "threads of each framework (intra-op; TF inter-op too)")
flags.DEFINE_list("cases", None, "cases to run (default: all)")
FLAGS = flags.FLAGS

L = 32
# Shallow-quench scales at L = 32 (SPEC section 5); their values do not change the speed.
SCALES = {"rho": 0.679, "Q": 0.442, "P": 0.108, "drho": 0.0236, "dQ": 0.0325, "dP": 0.0227,
          "delta_rho": 0.0139, "delta_Q": 0.0208, "delta_P": 0.0144}


@dataclasses.dataclass(frozen=True)
class Case:
    """A workload: a model (its config, as training builds it), training or rollout, its
    batch and steps."""

    model: ModelConfig
    what: str  # "train" or "rollout"
    batch: int
    steps: int  # n_step of a training window, or the steps of one rollout
    chains: int = 1  # training's rollout loops side by side (ours only; TrainConfig.chains)

    @property
    def unit(self) -> str:
        if self.what == "train":
            return "samples/s"
        return "steps/s" if self.batch == 1 else "sample-steps/s"

    @property
    def units_per_call(self) -> int:
        return self.batch if self.what == "train" else self.batch * self.steps


def deep_case(config: str) -> Case:
    """Training of a deep-quench config's model at its batch size and n_step 8."""
    train = PRESETS[config].train
    return Case(PRESETS[config].model, "train", train.batch_size, 8, train.chains)


# The shallow quench's tiny CNN (ModelConfig's defaults) and a PARC of the paper's medium size.
TINY = ModelConfig(kind="cnn")
MEDIUM = ModelConfig(kind="parc", channels=128, n_blocks=4)
CASES: dict[str, Callable[[], Case]] = {
    "train_tiny": lambda: Case(TINY, "train", 64, 8),
    "train_parc": lambda: Case(MEDIUM, "train", 8, 1),
    "train_parc_bf16": lambda: Case(dataclasses.replace(MEDIUM, precision="mixed_bfloat16"),
                                    "train", 8, 1),
    "rollout_tiny_b1": lambda: Case(TINY, "rollout", 1, 400),
    "rollout_tiny_b256": lambda: Case(TINY, "rollout", 256, 20),
    "rollout_parc_b1": lambda: Case(MEDIUM, "rollout", 1, 10),
    "train_deep_L32": lambda: deep_case("deep_L32_spec"),
    "train_deep_L32_cnn": lambda: deep_case("deep_L32_cnn"),
}


def random_states(shape: tuple[int, ...], seed: int) -> dict:
    """Physically sized random numpy states of leading shape `shape` ([batch] or [batch, steps])."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(*shape, L, L)) + 1j * rng.normal(size=(*shape, L, L))
    rho = 0.5 * np.eye(L) + 0.05 * (a + np.conj(np.swapaxes(a, -1, -2)))
    return {"rho": rho.astype(np.complex64),
            "Q": (0.1 * rng.normal(size=(*shape, L))).astype(np.float32),
            "P": (0.02 * rng.normal(size=(*shape, L))).astype(np.float32)}


def ours(case: Case) -> Callable[[], object]:
    """A call of our model's workload; returns a tensor to wait for."""
    import keras
    import tensorflow as tf

    from tf_holstein import losses, models

    model = models.build_model(dataclasses.replace(case.model, zero_init_output=False), SCALES)
    inputs = {k: tf.constant(v) for k, v in random_states((case.batch,), 1).items()}
    if case.what == "rollout":
        return lambda: model.rollout(inputs, case.steps)["Q"]
    labels = {k: tf.constant(v) for k, v in random_states((case.batch, case.steps), 2).items()}
    mid = {k: tf.constant(v) for k, v in random_states((case.batch, case.steps), 3).items()}
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-5)
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function
    def train() -> tf.Tensor:
        with tf.GradientTape() as tape:
            if model.has_derivatives:
                states, derivatives = model.rollout(inputs, case.steps, training=True,
                                                    return_derivatives=True, chains=case.chains)
                loss = losses.total_loss(losses.component_losses(states, labels)) \
                    + losses.total_loss(losses.component_losses(derivatives, mid))
            else:
                states = model.rollout(inputs, case.steps, training=True, chains=case.chains)
                loss = losses.total_loss(losses.component_losses(states, labels))
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), 1.0)
        optimizer.apply(grads, variables)
        return loss

    return train


def pytorch(case: Case) -> Callable[[], object]:
    """A call of the PyTorch model's workload."""
    import torch

    import torch_models

    config = case.model
    model = torch_models.HolsteinModel(config.kind, SCALES, config.channels, config.n_blocks,
                                       config.dropout, conserve=config.conserve)
    inputs = {k: torch.from_numpy(v) for k, v in random_states((case.batch,), 1).items()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=config.precision == "mixed_bfloat16")
    if case.what == "rollout":
        model.eval()

        def rollout() -> torch.Tensor:
            with torch.inference_mode(), autocast:
                return model.rollout(inputs, case.steps)[0]["Q"]

        return rollout
    labels = {k: torch.from_numpy(v) for k, v in random_states((case.batch, case.steps), 2).items()}
    mid = {k: torch.from_numpy(v) for k, v in random_states((case.batch, case.steps), 3).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    model.train()

    def train() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            states, derivatives = model.rollout(inputs, case.steps)
            loss = torch_models.loss(states, labels)
            if derivatives is not None:
                loss = loss + torch_models.loss(derivatives, mid)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    return train


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), NaN elsewhere."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _wait(result: object) -> None:
    """Blocks until a result is computed (a no-op for PyTorch's synchronous CPU ops)."""
    result.numpy()


def calls_per_run(run: Callable[[], object]) -> int:
    """Calls of `run` that last `--min_seconds`, after two warm-up (tracing) calls."""
    _wait(run())
    start = time.perf_counter()
    _wait(run())
    return max(1, round(FLAGS.min_seconds / (time.perf_counter() - start)))


def timed_run(run: Callable[[], object], calls: int) -> tuple[float, float]:
    """(calls / seconds, share of the cores that other processes used meanwhile)."""
    start, own, everyone = time.perf_counter(), time.process_time(), busy_cpu_seconds()
    for _ in range(calls):
        result = run()
    _wait(result)
    wall = time.perf_counter() - start
    other_seconds = (busy_cpu_seconds() - everyone) - (time.process_time() - own)
    return calls / wall, max(other_seconds, 0.0) / wall / os.cpu_count()


def keep_freed_memory() -> str:
    """Has glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the
    OS, for both frameworks alike; returns what the header prints.

    By default glibc maps each large block afresh until the first frees raise its threshold,
    so whichever framework runs first in a fresh process pays a page fault for every page
    of every large tensor: PyTorch's tiny rollout at batch 256 measured 3,000 instead of
    5,200 sample-steps/s alone in a process (750,000 minor faults per call), and its figure
    then depended on which cases ran before it.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return "malloc thresholds unchanged (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    return "glibc keeps freed blocks < 32 MiB" if ok else "malloc thresholds unchanged"


def main(argv: list[str]) -> None:
    del argv
    names = FLAGS.cases or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise app.UsageError(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    memory = keep_freed_memory()
    try:
        import torch
    except ImportError:
        raise app.UsageError('PyTorch is missing: pip install -e ".[bench]"') from None
    import keras
    import tensorflow as tf

    from tf_holstein import cost

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    torch.set_num_threads(FLAGS.threads)
    torch.set_num_interop_threads(FLAGS.threads)
    keras.utils.set_random_seed(0)
    torch.manual_seed(0)
    print(f"{cost.cpu_model()}, {os.cpu_count()} CPUs, load average "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}; {memory}")
    print(f"TensorFlow {tf.__version__}, PyTorch {torch.__version__} (OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), {FLAGS.threads} threads each, L = {L}; "
          f"median [min-max] of {FLAGS.repeats} interleaved runs of >= {FLAGS.min_seconds} s")
    print(f"{'case':<20}{'unit':>15}{'ours':>26}{'PyTorch':>26}{'ratio':>8}{'others':>8}")
    for name in names:
        case = CASES[name]()
        runs = {"ours": ours(case), "torch": pytorch(case)}
        calls = {key: calls_per_run(run) for key, run in runs.items()}
        samples: dict[str, list[tuple[float, float]]] = {key: [] for key in runs}
        for repeat in range(FLAGS.repeats):
            for key in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
                samples[key].append(timed_run(runs[key], calls[key]))
        cells, medians = [], {}
        for key, values in samples.items():
            rates = [case.units_per_call * rate for rate, _ in values]
            medians[key] = statistics.median(rates)
            cells.append(f"{medians[key]:.1f} [{min(rates):.1f}-{max(rates):.1f}]")
        others = statistics.median(other for values in samples.values() for _, other in values)
        print(f"{name:<20}{case.unit:>15}{cells[0]:>26}{cells[1]:>26}"
              f"{medians['ours'] / medians['torch']:>7.2f}x{others:>8.0%}", flush=True)


if __name__ == "__main__":
    app.run(main)
