"""The training loss of SPEC section 4: a sum of RMS errors per state component."""
from __future__ import annotations

from typing import Mapping

import tensorflow as tf

COMPONENTS = ("rho_diag", "rho_offdiag", "Q", "P")


def rms(error: tf.Tensor, mask: tf.Tensor | None = None) -> tf.Tensor:
    """sqrt(mean |error|^2) over all entries (complex errors by modulus), or over `mask`."""
    squared = tf.math.real(error * tf.math.conj(error)) if error.dtype.is_complex \
        else tf.square(error)
    if mask is None:
        return tf.sqrt(tf.reduce_mean(squared))
    mask = tf.broadcast_to(tf.cast(mask, squared.dtype), tf.shape(squared))
    return tf.sqrt(tf.reduce_sum(squared * mask) / tf.reduce_sum(mask))


def component_losses(pred: Mapping[str, tf.Tensor], target: Mapping[str, tf.Tensor]
                     ) -> dict[str, tf.Tensor]:
    """RMS errors of rho's diagonal, rho's off-diagonal, Q and P over batch, steps and sites.

    pred, target: `rho` complex [..., L, L], `Q`, `P` float [..., L] of equal shapes.
    """
    error = pred["rho"] - target["rho"]
    L = error.shape[-1]
    diagonal = tf.eye(L, dtype=tf.float32)
    return {"rho_diag": rms(tf.linalg.diag_part(error)),
            "rho_offdiag": rms(error, 1.0 - diagonal),
            "Q": rms(pred["Q"] - target["Q"]),
            "P": rms(pred["P"] - target["P"])}


def total_loss(components: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The sum of the given component losses."""
    return tf.add_n(list(components.values()))
