"""The training loss of docs/training.md: a sum of RMS errors per state component.

The RMS of a component is over the whole global batch, the predicted steps
and the sites, so under a distribution strategy the squared-error sums and
counts are what replicas combine (`squared_error_sums`), not per-replica RMS.
Optional terms on the order parameters are relative RMS errors, combined the
same way with the truth's squared sum in place of the count.
"""
from __future__ import annotations

from typing import Mapping

import tensorflow as tf

from tf_holstein import physics

COMPONENTS = ("rho_diag", "rho_offdiag", "Q", "P")


def _squared(error: tf.Tensor) -> tf.Tensor:
    """|error|^2, complex errors by modulus."""
    if error.dtype.is_complex:
        return tf.math.real(error * tf.math.conj(error))
    return tf.square(error)


def squared_error_sums(pred: Mapping[str, tf.Tensor], target: Mapping[str, tf.Tensor]
                       ) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """(sum of |label - prediction|^2, number of entries) per component, float32 scalars.

    pred, target: `rho` complex [..., L, L], `Q`, `P` float [..., L] of equal shapes.
    The components: rho's diagonal, rho's off-diagonal elements, Q and P.
    """
    rho = _squared(pred["rho"] - target["rho"])
    diagonal = tf.reduce_sum(tf.linalg.diag_part(rho))
    out = {"rho_diag": (diagonal, tf.cast(tf.size(rho) // rho.shape[-1], tf.float32)),
           "rho_offdiag": (tf.reduce_sum(rho) - diagonal,
                           tf.cast(tf.size(rho) // rho.shape[-1] * (rho.shape[-1] - 1),
                                   tf.float32))}
    for key in ("Q", "P"):
        squared = _squared(pred[key] - target[key])
        out[key] = (tf.reduce_sum(squared), tf.cast(tf.size(squared), tf.float32))
    return out


def order_parameter_error_sums(pred: Mapping[str, tf.Tensor], target: Mapping[str, tf.Tensor]
                               ) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
    """(sum of squared errors, sum of squared truth) of Delta_rho and Delta_Q, float32.

    The ratio is the squared relative RMS error of the order parameters, the observables
    the evaluation judges. After the deep quench at L = 16 they live in the staggered
    mode, which carries ~1e-4 of the state's variance: the per-site loss barely sees
    them, these terms weigh them as much as a whole component.
    """
    out = {}
    for name, p, t in zip(("Delta_rho", "Delta_Q"), physics.order_parameters(pred["rho"], pred["Q"]),
                          physics.order_parameters(target["rho"], target["Q"])):
        out[name] = (tf.cast(tf.reduce_sum(tf.square(p - t)), tf.float32),
                     tf.cast(tf.reduce_sum(tf.square(t)), tf.float32))
    return out


def root_mean(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """sqrt(total / count): an RMS from a `*_error_sums` pair; 0 where both are 0 (a relative
    term over windows whose truth is exactly zero)."""
    return tf.sqrt(total / tf.maximum(count, 1e-30))


def component_losses(pred: Mapping[str, tf.Tensor], target: Mapping[str, tf.Tensor]
                     ) -> dict[str, tf.Tensor]:
    """RMS errors of rho's diagonal, rho's off-diagonal, Q and P over batch, steps and sites."""
    return {key: root_mean(total, count)
            for key, (total, count) in squared_error_sums(pred, target).items()}


def total_loss(components: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The sum of the given component losses."""
    return tf.add_n(list(components.values()))
