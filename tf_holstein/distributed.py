"""Training under a distribution strategy: the strategy, which worker keeps the run's files,
and the compiled steps whose loss, summed over replicas, is the loss of one device."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from tf_holstein import losses, records
from tf_holstein.configs import TrainConfig
from tf_holstein.models import HolsteinModel


def make_strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy under TF_CONFIG, else MirroredStrategy over `devices`
    (default: every GPU, or the CPU when there is none)."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices is None and not tf.config.list_logical_devices("GPU"):
        devices = ["/cpu:0"]
    return tf.distribute.MirroredStrategy(devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker keeps the run's files (the chief, or worker 0 of a cluster
    without one); always on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in its cluster (0 on one machine)."""
    return int(getattr(strategy.cluster_resolver, "task_id", 0) or 0)


class TrainSteps:
    """The compiled steps of a training, one trace per n_step: an optimizer step on the
    multi-step loss of a global batch of windows, and the loss terms of a validation batch."""

    def __init__(self, model: HolsteinModel, optimizer: keras.optimizers.Optimizer,
                 config: TrainConfig, strategy: tf.distribute.Strategy):
        self.model, self.optimizer, self.config, self.strategy = \
            model, optimizer, config, strategy
        gpu = bool(tf.config.list_logical_devices("GPU"))
        # Rollout chains overlap on a CPU's cores; a GPU would only run smaller kernels.
        self.chains = 1 if gpu else config.chains
        # XLA compiles the steps on GPUs only. On the CPU its convolution gradients
        # measured 16x slower than TensorFlow's kernels (tiny CNN, L = 16, batch 128:
        # 383 ms against 24 ms per step), and cross-device collectives inside XLA need
        # GPUs (NCCL) anyway.
        self.jit_compile = config.jit_compile and gpu
        self._train_steps: dict[int, Any] = {}
        self._eval_steps: dict[int, Any] = {}

    def loss_sums(self, inputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor],
                  n_step: int, training: bool) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
        """Squared-error sums and counts of every loss term for a (local) batch of windows."""
        derivatives_too = self.model.has_derivatives
        out = self.model.rollout(inputs, n_step, training=training,
                                 return_derivatives=derivatives_too,
                                 chains=self.chains if training else None)
        states, derivatives = out if derivatives_too else (out, None)
        sums = losses.squared_error_sums(states, targets)
        if derivatives is not None:
            labels = {key: targets[f"d{key}"] for key in records.STATE_KEYS}
            sums.update({f"d_{k}": v for k, v in
                         losses.squared_error_sums(derivatives, labels).items()})
        if self.config.order_parameter_weight:
            sums.update(losses.order_parameter_error_sums(states, targets))
        return sums

    def loss_weights(self, names: Sequence[str]) -> list[float]:
        """The weight of each named loss term in the total loss."""
        return [self.config.derivative_weight if n.startswith("d_") else
                self.config.order_parameter_weight if n.startswith("Delta_") else 1.0
                for n in names]

    def _replica_step(self, inputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor],
                      n_step: int) -> dict[str, tf.Tensor]:
        """One optimizer step on this replica's share of the global batch.

        The loss is a sum of RMS errors over the global batch, which is not a mean
        of per-replica losses: replicas all-reduce their squared-error sums, then
        differentiate sum_c w_c S_c,local / (2 RMS_c N_c), whose gradient summed over
        replicas is exactly that of the global loss. Gradients are summed and clipped
        by their global norm here, as on one device; the optimizer sums replicas'
        gradients again, so each hands it 1/replicas of the total.
        """
        context = tf.distribute.get_replica_context()
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            sums = self.loss_sums(inputs, targets, n_step, training=True)
            names = sorted(sums)
            local = tf.stack([sums[n][0] for n in names])
            counts = context.all_reduce("sum", tf.stack([sums[n][1] for n in names]))
            total = context.all_reduce("sum", tf.stop_gradient(local))
            rms = losses.root_mean(total, counts)
            weights = tf.constant(self.loss_weights(names))
            surrogate = tf.reduce_sum(weights * local / (2.0 * tf.maximum(rms, 1e-12) * counts))
        grads = context.all_reduce("sum", tape.gradient(surrogate, variables))
        clipped, norm = tf.clip_by_global_norm(grads, self.config.clip_norm)
        replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
        self.optimizer.apply([g / replicas for g in clipped], variables)
        metrics = {f"loss/{n}": r for n, r in zip(names, tf.unstack(rms))}
        metrics["loss/total"] = tf.reduce_sum(weights * rms)
        metrics["grad_norm"] = norm
        return metrics

    def train_step(self, n_step: int) -> Any:
        """The compiled distributed optimizer step for windows of n_step."""
        if n_step not in self._train_steps:
            replica_step = tf.function(lambda i, t: self._replica_step(i, t, n_step),
                                       jit_compile=self.jit_compile)

            @tf.function
            def step(batch: Any) -> dict[str, tf.Tensor]:
                metrics = self.strategy.run(replica_step, args=batch)
                # Every replica holds the same all-reduced values: read the first.
                return tf.nest.map_structure(
                    lambda v: self.strategy.experimental_local_results(v)[0], metrics)

            self._train_steps[n_step] = step
        return self._train_steps[n_step]

    def eval_step(self, n_step: int) -> Any:
        """The compiled loss sums (`loss_sums`, no dropout) of a batch of windows of n_step."""
        if n_step not in self._eval_steps:
            self._eval_steps[n_step] = tf.function(
                lambda i, t: self.loss_sums(i, t, n_step, training=False),
                jit_compile=self.jit_compile)
        return self._eval_steps[n_step]
