"""Learning-rate schedule of the curriculum: warm-up then cosine, restarting at every stage."""
from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_holstein")
class StagedWarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Per stage: linear warm-up to `lr` over `warmup_steps`, then cosine down to eta_min * lr.

    Keras' `CosineDecayRestarts` has no warm-up and restarts at fixed periods; the
    curriculum's stages have their own lengths. Step s of a stage with N steps and
    warm-up W = min(warmup_steps, N): lr (s + 1) / W while s < W, then
    lr (eta_min + (1 - eta_min) (1 + cos(pi (s - W) / (N - W))) / 2). Past the last
    stage the schedule stays at its final value.
    """

    def __init__(self, lr: float, stage_steps: Sequence[int], warmup_steps: int,
                 eta_min: float) -> None:
        if not stage_steps or min(stage_steps) < 1:
            raise ValueError(f"every stage needs at least one step, got {list(stage_steps)}")
        self.lr = float(lr)
        self.stage_steps = [int(n) for n in stage_steps]
        self.warmup_steps = int(warmup_steps)
        self.eta_min = float(eta_min)
        self._ends = tf.constant(list(_cumsum(self.stage_steps)), tf.int64)

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.minimum(tf.cast(step, tf.int64), self._ends[-1] - 1)
        stage = tf.searchsorted(self._ends, step[None], side="right")[0]
        length = tf.gather(tf.constant(self.stage_steps, tf.int64), stage)
        local = tf.cast(step - (tf.gather(self._ends, stage) - length), tf.float64)
        length = tf.cast(length, tf.float64)
        warmup = tf.minimum(tf.constant(self.warmup_steps, tf.float64), length)
        warm = (local + 1.0) / tf.maximum(warmup, 1.0)
        progress = (local - warmup) / tf.maximum(length - warmup, 1.0)
        cosine = self.eta_min + (1.0 - self.eta_min) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.cast(self.lr * tf.where(local < warmup, warm, cosine), tf.float32)

    def stage_of(self, step: int) -> int:
        """The curriculum stage a global optimizer step belongs to."""
        return next((k for k, end in enumerate(_cumsum(self.stage_steps)) if step < end),
                    len(self.stage_steps) - 1)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "stage_steps": self.stage_steps,
                "warmup_steps": self.warmup_steps, "eta_min": self.eta_min}


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out
