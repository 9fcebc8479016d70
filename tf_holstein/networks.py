"""The networks of a model: each maps state images to an increment or a rate, in physical
units, as out_scale * net(embed(in_scale * images)) (paper Appendix A).

The scaling constants are max-abs scales of the training data (`records.SCALE_KEYS`); the
embeddings (`ModelConfig.embedding`) add channels that make the coupling term
g (Q_i - Q_j) rho_ij of d rho_ij / dt local at every pixel, which a diagonal-only stack of
3 x 3 convolutions of radius R sees only for |i - j| <= R.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from tf_holstein.configs import ModelConfig
from tf_holstein.layers import PreActResNet
from tf_holstein.records import SCALE_KEYS

# How a network sees a 4-channel image: as is ("diagonal", the paper's), with Q and P also
# broadcast along rows and columns ("broadcast"), or with (Q_i - Q_j) rho_ij ("coupling"):
# the extra channels per image.
EMBEDDING_CHANNELS = {"diagonal": 0, "broadcast": 4, "coupling": 2}

def broadcast_diagonals(image: tf.Tensor) -> tf.Tensor:
    """`[batch, L, L, 4k]` -> `[batch, L, L, 8k]`: each 4-channel group's Q and P (diagonals of
    its channels 2 and 3) appended broadcast along rows and along columns.

    Pixel (i, j) then holds Q_i, Q_j, P_i and P_j. Translations of the ring shift both axes
    alike, so the channels are translation-equivariant, as the diagonal ones are.
    """
    extra = []
    for group in range(image.shape[-1] // 4):
        for channel in (4 * group + 2, 4 * group + 3):
            values = tf.linalg.diag_part(image[..., channel])  # [batch, L]
            rows = tf.broadcast_to(values[:, :, None], tf.shape(image[..., 0]))
            extra += [rows, tf.transpose(rows, [0, 2, 1])]
    return tf.concat([image, tf.stack(extra, axis=-1)], axis=-1)


def coupling_channels(image: tf.Tensor) -> tf.Tensor:
    """`[batch, L, L, 4k]` -> `[batch, L, L, 6k]`: each 4-channel group's (Q_i - Q_j) Re rho_ij
    and (Q_i - Q_j) Im rho_ij appended.

    They are the coupling term of d rho_ij / dt (docs/physics.md) up to the factor -i g.
    Local functions of the pixel and of the diagonal, they transform under translations and
    particle-hole (computed after it) as the state does.
    """
    extra = []
    for group in range(image.shape[-1] // 4):
        Q = tf.linalg.diag_part(image[..., 4 * group + 2])  # [batch, L]
        difference = Q[:, :, None] - Q[:, None, :]
        extra += [difference * image[..., 4 * group], difference * image[..., 4 * group + 1]]
    return tf.concat([image, tf.stack(extra, axis=-1)], axis=-1)


def embed(image: tf.Tensor, embedding: str) -> tf.Tensor:
    """The network input of an image of one or more 4-channel groups under `embedding`."""
    if embedding == "broadcast":
        return broadcast_diagonals(image)
    if embedding == "coupling":
        return coupling_channels(image)
    return image



def validate_scales(scales: Mapping[str, float]) -> dict[str, float]:
    """The nine scaling constants as plain floats; ValueError naming missing or bad ones."""
    missing = [key for key in SCALE_KEYS if key not in scales]
    unknown = sorted(set(scales) - set(SCALE_KEYS))
    if missing or unknown:
        raise ValueError(f"scales need exactly the keys {', '.join(SCALE_KEYS)}; "
                         f"missing: {missing or 'none'}, unknown: {unknown or 'none'}")
    values = {key: float(scales[key]) for key in SCALE_KEYS}
    bad = {key: value for key, value in values.items() if not (math.isfinite(value) and value > 0)}
    if bad:
        raise ValueError(f"scales must be finite and positive, got {bad}")
    return values


class ScaledNetwork(keras.layers.Layer):
    """images -> out_scale * net(embed(in_scale * images)): one or more 4-channel images,
    concatenated along channels, the scales per channel and non-trainable.

    The factors are stored as float32 weights (the reference's `in_scale_*` and `out_scale_*`
    buffers), so a converted checkpoint keeps its exact values. The embedding is computed
    from the scaled images inside the network, after any symmetry transform of the state.
    """

    def __init__(self, in_scale: tuple[float, ...], out_scale: tuple[float, ...],
                 config: ModelConfig, zero_init_output: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = PreActResNet(config.channels, config.n_blocks, out_channels=4,
                                    kernel_size=config.kernel_size, dropout=config.dropout,
                                    zero_init_output=zero_init_output,
                                    precision=config.precision, name="network")
        self.embedding = config.embedding
        self._initial_scales = (in_scale, out_scale)
        self.build((None, None, None, len(in_scale)))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_scale, out_scale = self._initial_scales
        self.in_scale = self.add_weight(name="in_scale", shape=(len(in_scale),),
                                        trainable=False,
                                        initializer=keras.initializers.Constant(in_scale))
        self.out_scale = self.add_weight(name="out_scale", shape=(4,), trainable=False,
                                         initializer=keras.initializers.Constant(out_scale))
        groups = input_shape[-1] // 4
        embedded = input_shape[-1] + groups * EMBEDDING_CHANNELS[self.embedding]
        self.network.build((*input_shape[:-1], embedded))

    def call(self, images: Sequence[tf.Tensor], training: bool | None = None,
             output_mask: tf.Tensor | None = None) -> tf.Tensor:
        """The scaled output, times `output_mask` (of 0s and 1s) if given: one multiply by
        mask * out_scale, which gives the same numbers as the two one after the other."""
        image = tf.concat(list(images), axis=-1)
        # The input conv scales a diagonal embedding in its wrap's fusion, saving a pass;
        # the other embeddings are computed from the scaled image.
        input_scale = tf.convert_to_tensor(self.in_scale)
        if self.embedding != "diagonal":
            image, input_scale = embed(image * input_scale, self.embedding), None
        out_scale = self.out_scale if output_mask is None else output_mask * self.out_scale
        return self.network(image, training=training, input_scale=input_scale) * out_scale


def channel_scales(scales: Mapping[str, float], prefix: str) -> tuple[float, float, float, float]:
    """(s_rho, s_rho, s_Q, s_P) for one set of scales: rho's scale covers both of its channels."""
    return tuple(scales[prefix + key] for key in ("rho", "rho", "Q", "P"))


def scaled_network(scales: Mapping[str, float], inputs: Sequence[str], outputs: str,
                   config: ModelConfig, zero_init_output: bool, name: str) -> ScaledNetwork:
    """A network from images of the `inputs` quantities (each '', 'd' or 'delta_' by its
    scales' prefix), in that order, to the `outputs` ones."""
    # 1 / s in double precision, then rounded once to float32, as the reference does.
    in_scale = tuple(1.0 / s for prefix in inputs for s in channel_scales(scales, prefix))
    return ScaledNetwork(in_scale, channel_scales(scales, outputs), config, zero_init_output,
                         name=name)
