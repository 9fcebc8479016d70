"""Speed of the models on this machine against the reference PyTorch code (SPEC section 6).

    python benchmarks/models.py [--repeats 5] [--cases train_tiny,rollout_parc_b1,...]
        [--precisions float32,mixed_bfloat16]

Training: samples/s of a full optimizer step (rollout in training mode, the
reference's RMS loss, backward, AdamW with grad-norm clipping), at L = 32.
Rollout: steps/s (batch 1) or sample-steps/s (larger batches), returning
every step's state as the reference does. Each case runs with and without
XLA (`jit_compile`), in each of `--precisions` (a line each); the medians of
`--repeats` timed runs are printed with the best one's ratio to the
reference's figure. The timed runs of a case's modes and precisions take
turns, so that their ratios hold under changing load. In parentheses: the
share of the cores other processes used meanwhile; numbers taken beside other
load are lower than this machine's.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_holstein import layers, models

flags.DEFINE_integer("repeats", 5, "timed runs per case; the median is reported")
flags.DEFINE_float("min_seconds", 1.0, "minimum duration of one timed run")
flags.DEFINE_list("cases", None, "cases to run (default: all)")
flags.DEFINE_list("modes", ["graph", "xla"], "graph (TensorFlow kernels) and/or xla (jit_compile)")
flags.DEFINE_list("precisions", ["float32"], f"model precisions: {', '.join(layers.PRECISIONS)}")
FLAGS = flags.FLAGS

L = 32
# Shallow-quench scales at L = 32 (SPEC section 3); their values do not change the speed.
SCALES = {"rho": 0.679, "Q": 0.442, "P": 0.108, "drho": 0.0236, "dQ": 0.0325, "dP": 0.0227,
          "delta_rho": 0.0139, "delta_Q": 0.0208, "delta_P": 0.0144}


def random_states(shape: tuple[int, ...], seed: int) -> dict[str, tf.Tensor]:
    """Physically sized random states of leading shape `shape` ([batch] or [batch, steps])."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(*shape, L, L)) + 1j * rng.normal(size=(*shape, L, L))
    rho = 0.5 * np.eye(L) + 0.05 * (a + np.conj(np.swapaxes(a, -1, -2)))
    return {"rho": tf.constant(rho, tf.complex64),
            "Q": tf.constant(0.1 * rng.normal(size=(*shape, L)), tf.float32),
            "P": tf.constant(0.02 * rng.normal(size=(*shape, L)), tf.float32)}


def rms_loss(predicted: dict[str, tf.Tensor], label: dict[str, tf.Tensor]) -> tf.Tensor:
    """The reference's loss: RMS errors of rho's diagonal, its off-diagonal, Q and P, summed."""
    squared = tf.abs(predicted["rho"] - label["rho"]) ** 2
    eye = tf.eye(L)
    diagonal = tf.sqrt(tf.reduce_sum(squared * eye) / tf.reduce_sum(tf.ones_like(squared) * eye))
    off = tf.sqrt(tf.reduce_sum(squared * (1 - eye))
                  / tf.reduce_sum(tf.ones_like(squared) * (1 - eye)))
    q = tf.sqrt(tf.reduce_mean((predicted["Q"] - label["Q"]) ** 2))
    p = tf.sqrt(tf.reduce_mean((predicted["P"] - label["P"]) ** 2))
    return diagonal + off + q + p


def training_step(model: models.HolsteinModel, batch: int, n_step: int,
                  jit_compile: bool) -> Callable[[], tf.Tensor]:
    """One optimizer step on a fixed random batch: (forward + backward + AdamW)."""
    optimizer = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=1e-5,
                                       global_clipnorm=1.0)
    optimizer.build(model.trainable_variables)
    inputs = random_states((batch,), seed=1)
    labels = random_states((batch, n_step), seed=2)
    mid_derivatives = random_states((batch, n_step), seed=3)

    @tf.function(jit_compile=jit_compile)
    def train() -> tf.Tensor:
        with tf.GradientTape() as tape:
            if model.has_derivatives:
                states, derivatives = model.rollout(inputs, n_step, training=True,
                                                    return_derivatives=True)
                loss = rms_loss(states, labels) + rms_loss(derivatives, mid_derivatives)
            else:
                loss = rms_loss(model.rollout(inputs, n_step, training=True), labels)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return train


def rollout(model: models.HolsteinModel, batch: int, n_steps: int,
            jit_compile: bool) -> Callable[[], tf.Tensor]:
    """An inference rollout returning every step's state."""
    state = random_states((batch,), seed=4)
    return lambda: model.rollout(state, n_steps, jit_compile=jit_compile)["Q"]


def busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), NaN elsewhere."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def calls_per_run(run: Callable[[], tf.Tensor]) -> int:
    """Calls of `run` that last `--min_seconds`, after a warm-up (compiling) call."""
    run().numpy()
    start = time.perf_counter()
    run().numpy()
    return max(1, int(FLAGS.min_seconds / (time.perf_counter() - start)))


def timed_run(run: Callable[[], tf.Tensor], calls: int) -> tuple[float, float]:
    """(calls / seconds, share of the cores that other processes used meanwhile)."""
    start, ours, everyone = time.perf_counter(), time.process_time(), busy_cpu_seconds()
    for _ in range(calls):
        result = run()
    result.numpy()
    wall = time.perf_counter() - start
    other_seconds = (busy_cpu_seconds() - everyone) - (time.process_time() - ours)
    return calls / wall, max(other_seconds, 0.0) / wall / os.cpu_count()


def median_rates(runs: dict[Any, Callable[[], tf.Tensor]], units_per_run: float
                 ) -> dict[Any, tuple[float, float]]:
    """For each run: the median of `units_per_run` / seconds over `--repeats` timed runs, and
    the median share of the cores others used; the runs take turns within each repeat."""
    calls = {key: calls_per_run(run) for key, run in runs.items()}
    samples: dict[Any, list[tuple[float, float]]] = {key: [] for key in runs}
    for _ in range(FLAGS.repeats):
        for key, run in runs.items():
            samples[key].append(timed_run(run, calls[key]))
    return {key: (units_per_run * statistics.median(rate for rate, _ in values),
                  statistics.median(other for _, other in values))
            for key, values in samples.items()}


# name: (model kind, preset, what, batch, steps per run, unit, reference figure)
CASES = {
    "train_tiny": ("cnn", "tiny", "train", 64, 8, "samples/s", 124.0),
    "train_parc": ("parc", "medium", "train", 8, 1, "samples/s", 8.5),
    "rollout_tiny_b1": ("cnn", "tiny", "rollout", 1, 400, "steps/s", 1000.0),
    "rollout_tiny_b256": ("cnn", "tiny", "rollout", 256, 20, "sample-steps/s", 1900.0),
    "rollout_parc_b1": ("parc", "medium", "rollout", 1, 10, "steps/s", 21.0),
    "rollout_parc_b32": ("parc", "medium", "rollout", 32, 2, "sample-steps/s", None),
}


def main(argv: list[str]) -> None:
    del argv
    keras.utils.set_random_seed(0)
    names = FLAGS.cases or list(CASES)
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise app.UsageError(f"unknown cases {unknown}; valid: {', '.join(CASES)}")
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, L = {L}, "
          f"median of {FLAGS.repeats} runs of >= {FLAGS.min_seconds} s")
    modes = {"graph": False, "xla": True}
    if not FLAGS.modes or set(FLAGS.modes) - set(modes):
        raise app.UsageError(f"--modes takes graph and/or xla, got {FLAGS.modes}")
    if not FLAGS.precisions or set(FLAGS.precisions) - set(layers.PRECISIONS):
        raise app.UsageError(f"--precisions takes {' and/or '.join(layers.PRECISIONS)}, got "
                             f"{FLAGS.precisions}")
    print(f"{'case':<20}{'precision':>16}{'unit':>16}{'reference':>11}"
          + "".join(f"{mode + ' (others)':>20}" for mode in FLAGS.modes) + f"{'best/ref':>10}")
    for name in names:
        kind, preset, what, batch, steps, unit, reference = CASES[name]
        make = training_step if what == "train" else rollout
        runs = {}
        for precision in FLAGS.precisions:
            model = models.build_model(kind, preset, SCALES, zero_init_output=False,
                                       precision=precision)
            for mode in FLAGS.modes:
                runs[precision, mode] = make(model, batch, steps, modes[mode])
        results = median_rates(runs, batch if what == "train" else batch * steps)
        for precision in FLAGS.precisions:
            row = [results[precision, mode] for mode in FLAGS.modes]
            best = max(rate for rate, _ in row)
            ratio = f"{best / reference:.2f}x" if reference else "-"
            print(f"{name:<20}{precision:>16}{unit:>16}{reference or '-':>11}"
                  + "".join(f"{rate:>12.1f} ({other:4.0%})" for rate, other in row)
                  + f"{ratio:>10}", flush=True)


if __name__ == "__main__":
    app.run(main)
