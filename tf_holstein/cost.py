"""What a rollout costs: wall time per trajectory per saved step, measured apart from
tracing, compilation, the truth and the scoring, with the settings it depends on (batch,
threads, precision, CPU), so that learned models and classical integrators are priced alike.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tf_holstein import records, rollout

BATCH = 128  # trajectories per timed call: enough to fill the cores of a CPU
STEPS = 100  # saved steps per timed call, one evaluation chunk
REPEATS = 3  # timed calls; their median is the cost


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), or what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The CPU, its logical cores, TensorFlow's thread pools (0 in TensorFlow's settings
    means one thread per core) and TensorFlow's version."""
    cores = os.cpu_count() or 1
    return {"cpu": cpu_model(), "cores": cores,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or cores,
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or cores,
            "tensorflow": tf.__version__}


def batch_of(initial: Mapping[str, np.ndarray], batch: int) -> rollout.State:
    """`batch` initial states from the given ones [n, ...], repeated if n < batch."""
    n = len(initial["Q"])
    rows = np.arange(batch) % n
    return {key: np.asarray(initial[key])[rows] for key in records.STATE_KEYS}


def measure(model: rollout.LoadedModel, initial: Mapping[str, np.ndarray], *,
            batch: int = BATCH, steps: int = STEPS, repeats: int = REPEATS) -> dict[str, Any]:
    """Times `repeats` rollouts of `steps` saved steps of `batch` trajectories from
    `initial` (repeated as needed) after one untimed rollout of the same shape that traces
    and compiles; returns the median (and range) in microseconds per trajectory per saved
    step, with the settings and the machine (`machine`)."""
    if batch < 1 or steps < 1 or repeats < 1:
        raise ValueError(f"cost: need batch, steps and repeats >= 1, got {batch}, {steps}, "
                         f"{repeats}")
    state = batch_of(initial, batch)
    model.rollout(state, steps)
    seconds = []
    for _ in range(repeats):
        tic = time.perf_counter()
        model.rollout(state, steps)
        seconds.append(time.perf_counter() - tic)
    per_step = [1e6 * s / (batch * steps) for s in seconds]
    return {"us_per_trajectory_step": statistics.median(per_step),
            "us_per_trajectory_step_range": [min(per_step), max(per_step)],
            "batch": batch, "steps": steps, "repeats": repeats,
            "precision": model.precision, **machine()}
