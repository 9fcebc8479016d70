"""Rollouts of a one-step model: each prediction fed back as the next input.

One engine for training windows, validation, evaluation and the exported signatures. It
needs of a model only its step on images (`HolsteinModel.step_image`) and what that step
keeps fixed from a rollout's start (`HolsteinModel.invariants`). It loops in a
`tf.while_loop` (straight-line code for short training windows), runs large CPU batches as
independent chains side by side, and caches one compiled function per set of options.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Protocol

import tensorflow as tf

from tf_holstein import physics
from tf_holstein.codec import State, decode, encode
from tf_holstein.records import STATE_KEYS

# Inference rollouts of batch * L * L up to this run faster XLA-compiled; larger ones run
# faster on TensorFlow's oneDNN kernels (measured on 2 CPU cores, benchmarks/models.py).
XLA_MAX_PIXELS = 8 * 32 * 32
# Training windows of up to this many steps are unrolled into straight-line code instead of
# a tf.while_loop, whose gradient stacks every step's intermediates in TensorLists: 5% more
# samples/s for the tiny CNN at n_step 8 (benchmarks/models.py's train_tiny, one process).
UNROLL_MAX_STEPS = 16
# Inference rollouts of CHAIN_MIN_BATCH or more trajectories on CPUs run as independent
# chains, one while loop per slice of about CHAIN_BATCH trajectories (at least two):
# TensorFlow runs the loops side by side, so one chain's small serial ops fill the other's
# idle gaps and each chain's activations stay nearer the cache. Tiny CNN on 2 cores, L = 32:
# +4-29% sample-steps/s at batch 16-512 (docs/notes/performance-history.md).
CHAIN_MIN_BATCH = 16
CHAIN_BATCH = 64


class OneStepModel(Protocol):
    """What the engine needs of a model."""

    has_derivatives: bool

    def invariants(self, image: tf.Tensor) -> list[tf.Tensor | None]: ...

    def step_image(self, image: tf.Tensor, training: bool, invariants: list[tf.Tensor | None]
                   ) -> tuple[tf.Tensor, tf.Tensor | None]: ...


def check_derivatives(model: OneStepModel, return_derivatives: bool) -> None:
    """Refuses derivatives of a model without a differentiator."""
    if return_derivatives and not model.has_derivatives:
        raise ValueError(f"{type(model).__name__} has no differentiator: "
                         f"return_derivatives needs a PARC model")


class Rollouts:
    """A model's rollouts, with its compiled functions by options (a plain object, so that
    Keras' tracking does not save them)."""

    def __init__(self, model: OneStepModel) -> None:
        self.model = model
        self.functions: dict[tuple, Callable[..., Any]] = {}

    def __call__(self, state: Mapping[str, Any], n_steps: int | tf.Tensor, *,
                 training: bool = False, return_derivatives: bool = False,
                 order_parameters_only: bool = False, jit_compile: bool | None = None,
                 chains: int | None = None) -> State | tuple[State, State]:
        """See `HolsteinModel.rollout`."""
        if tf.is_tensor(n_steps) and tf.inside_function():
            # A serving graph takes the number of steps as an input.
            n_steps = tf.cast(n_steps, tf.int32)
        elif not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive Python int (or a tensor inside a "
                             f"tf.function), got {n_steps!r}")
        check_derivatives(self.model, return_derivatives)
        if return_derivatives and order_parameters_only:
            raise ValueError("choose return_derivatives or order_parameters_only, not both")
        if chains is not None and (not isinstance(chains, int) or chains < 1):
            raise ValueError(f"chains must be a positive int or None (automatic), got {chains!r}")
        options = dict(n_steps=n_steps, training=bool(training),
                       return_derivatives=return_derivatives,
                       order_parameters_only=order_parameters_only, chains=chains)
        if tf.inside_function():
            return self._rollout(state, **options)
        state = {key: tf.convert_to_tensor(state[key]) for key in STATE_KEYS}
        if jit_compile is None:
            jit_compile = not training and state["rho"].shape.num_elements() <= XLA_MAX_PIXELS
        cache_key = (*options.values(), jit_compile)
        if cache_key not in self.functions:
            self.functions[cache_key] = tf.function(functools.partial(self._rollout, **options),
                                                    jit_compile=jit_compile)
        return self.functions[cache_key](state)

    def _rollout(self, state: Mapping[str, Any], chains: int | None, **options: Any
                 ) -> State | tuple[State, State]:
        image = encode(state)
        batch = image.shape[0]
        if chains is None:
            if options["training"] or tf.config.list_logical_devices("GPU"):
                # One stream runs a GPU's kernels in turn, so chains would only shrink them.
                # In training they cost the tiny CNN at batch 64 more than they gained (-11%
                # samples/s: its backward ops at half the batch run far below their speed);
                # TrainConfig.chains sets them where they measured faster.
                chains = 1
            elif batch is None:
                # A serving graph's batch is known only when it runs: two chains from
                # CHAIN_MIN_BATCH trajectories on.
                size = tf.shape(image)[0]
                return tf.cond(size >= CHAIN_MIN_BATCH,
                               lambda: self._chains(image, 2, options),
                               lambda: self._chain(image, **options))
            else:
                chains = 1 if batch < CHAIN_MIN_BATCH else max(2, round(batch / CHAIN_BATCH))
        if chains == 1:
            return self._chain(image, **options)
        if batch is not None and batch < chains:
            raise ValueError(f"{chains} chains need a batch of at least {chains}, got {batch}")
        return self._chains(image, chains, options)

    def _chains(self, image: tf.Tensor, count: int, options: Mapping[str, Any]
                ) -> State | tuple[State, State]:
        """`_chain` run on each of `count` near-equal contiguous slices of the batch, joined
        in order."""
        size = image.shape[0] if image.shape[0] is not None else tf.shape(image)[0]
        sizes = [size * (i + 1) // count - size * i // count for i in range(count)]
        parts = [self._chain(part, **options) for part in tf.split(image, sizes)]
        return tf.nest.map_structure(lambda *values: tf.concat(values, axis=0), *parts)

    def _chain(self, image: tf.Tensor, n_steps: int, training: bool, return_derivatives: bool,
               order_parameters_only: bool) -> State | tuple[State, State]:
        """The rollout of an encoded batch in one loop."""
        model = self.model

        def record(next_image: tf.Tensor, derivative: tf.Tensor | None) -> Any:
            next_state = decode(next_image)
            if order_parameters_only:
                order_rho, order_q = physics.order_parameters(next_state["rho"], next_state["Q"])
                return {"Delta_rho": order_rho, "Delta_Q": order_q}
            return (next_state, decode(derivative)) if return_derivatives else next_state

        def body(i: tf.Tensor, image: tf.Tensor, arrays: Any) -> tuple[tf.Tensor, tf.Tensor, Any]:
            next_image, derivative = model.step_image(image, training, invariants)
            arrays = tf.nest.map_structure(lambda array, value: array.write(i, value),
                                           arrays, record(next_image, derivative))
            return i + 1, next_image, arrays

        invariants = model.invariants(image)
        if training and isinstance(n_steps, int) and n_steps <= UNROLL_MAX_STEPS:
            records = []
            for _ in range(n_steps):
                image, derivative = model.step_image(image, training, invariants)
                records.append(record(image, derivative))
            return tf.nest.map_structure(lambda *values: tf.stack(values, axis=1), *records)
        dtypes = {"rho": tf.complex64, "Q": tf.float32, "P": tf.float32}
        if order_parameters_only:
            dtypes = {"Delta_rho": tf.float32, "Delta_Q": tf.float32}
        elif return_derivatives:
            dtypes = (dtypes, dict(dtypes))
        arrays = tf.nest.map_structure(lambda dtype: tf.TensorArray(dtype, size=n_steps), dtypes)
        _, _, arrays = tf.while_loop(lambda i, *_: i < n_steps, body,
                                     (tf.constant(0), image, arrays),
                                     maximum_iterations=n_steps)
        return tf.nest.map_structure(_batch_major, arrays)


def _batch_major(array: tf.TensorArray) -> tf.Tensor:
    """Stacks a per-step TensorArray to `[batch, n_steps, ...]`."""
    stacked = array.stack()  # [n_steps, batch, ...]
    rank = stacked.shape.rank
    return tf.transpose(stacked, [1, 0, *range(2, rank)])
