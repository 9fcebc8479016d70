"""Building blocks of the paper's networks: periodic convolutions, pre-activation residual blocks.

Images are channels-last, `[batch, L, L, channels]`, on a periodic L x L grid
(the density matrix of a ring: index i + L is index i). Everything here is
faithful to the reference PyTorch implementation (`CNNnd`, `CNNnd_Block` of
apning/holstein-parc), so that its checkpoints load unchanged.

A network's `precision` is "float32", or "mixed_bfloat16": the convolutions then compute in
bfloat16 while the weights, layer norms, tanh and residual sums stay float32.
"""
from __future__ import annotations

from typing import Any, Callable

import keras
import tensorflow as tf
from keras import ops

from tf_holstein import winograd

TANH_GAIN = 5.0 / 3.0  # torch.nn.init.calculate_gain("tanh")
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, used by the reference
# precision -> the dtype the convolutions compute in.
PRECISIONS: dict[str, tf.DType] = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16}


def xavier_uniform(gain: float = TANH_GAIN) -> keras.initializers.Initializer:
    """Glorot/Xavier-uniform with a gain: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).

    Equals `torch.nn.init.xavier_uniform_(w, gain)`; fans count the receptive field as torch does.
    """
    return keras.initializers.VarianceScaling(scale=gain**2, mode="fan_avg",
                                              distribution="uniform")


def convolution_dtype(precision: str) -> tf.DType:
    """The dtype convolutions compute in at `precision`; ValueError naming the valid ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid precisions: "
                         f"{', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


# The elementwise work around the convolutions (layer norm, tanh, dropout mask, circular
# pad, casts) runs as one XLA-compiled function forward and one backward: TensorFlow's own
# kernels made each of these a full memory pass (broadcasts over the channel axis at a
# fraction of memory speed). The backward also sums gamma's and beta's gradients over the
# batch; TensorFlow sums the rest over the pixels, where XLA's CPU code is slow. The
# convolutions stay on TensorFlow's oneDNN kernels, far faster than XLA's on CPUs.


def circular_pad(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Wraps `pad` rows and columns around both spatial axes of `x: [batch, H, W, C]`."""
    return _activation(x, None, None, None, 0.0, pad, x.dtype, False) if pad else x


def _activation(x: tf.Tensor, gamma: tf.Tensor | None, beta: tf.Tensor | None,
                mask: tf.Tensor | None, epsilon: float, pad: int, dtype: tf.DType,
                tanh: bool, keep: bool = True) -> tf.Tensor:
    """wrap(cast(mask * f(x))) with f = tanh(LN(x)) or LN(x) (`tanh`), or without gamma the
    identity; the `mask` (not differentiated) and the wrap by `pad` optional.

    With `keep` the forward pass also stores what the gradient needs (the normalised x and
    1 / std; the backward recomputes tanh from them, cheaper than storing its output: 5%
    more samples/s for the tiny CNN's training); without it (inference) it writes only the
    output, and a gradient, if one is asked for after all, recomputes them.
    """
    norm = gamma is not None
    if not (norm or pad or mask is not None):
        return tf.cast(x, dtype)  # a 1 x 1 convolution's input: only the cast, if any
    if not norm:
        gamma = beta = tf.zeros([0], x.dtype)  # unused
    keep = keep and norm  # only a layer norm has values to store for the gradient

    def forward(keep: bool) -> tuple[tf.Tensor, ...]:
        return _activation_forward(x, gamma, beta, mask, epsilon, pad, dtype, tanh, norm, keep)

    @tf.custom_gradient
    def fused(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor
              ) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple[tf.Tensor, ...]]]:
        y, *saved = forward(keep)

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            x_hat, inv_std = saved if keep else forward(True)[1:] if norm else (None, None)
            dx, *per_pixel = _activation_backward(dy, x_hat, inv_std, gamma, beta, mask, pad,
                                                  x.dtype, tanh, norm)
            if not norm:
                return dx, gamma, beta
            d_beta, d_gamma = per_pixel
            pixels = tf.range(tf.rank(d_beta) - 1)
            return (dx, tf.reduce_sum(d_gamma, axis=pixels), tf.reduce_sum(d_beta, axis=pixels))

        return y, grad

    return fused(x, gamma, beta)


@tf.function(jit_compile=True)
def _activation_forward(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor,
                        mask: tf.Tensor | None, epsilon: float, pad: int, dtype: tf.DType,
                        tanh: bool, norm: bool, keep: bool) -> tuple[tf.Tensor, ...]:
    """(the output,) and with `keep` (a layer norm's) also (the normalised x, 1 / std) for
    the gradient."""
    y, saved = x, ()
    if norm:
        centred = x - _channel_mean(x)
        inv_std = tf.math.rsqrt(_channel_mean(tf.square(centred)) + epsilon)
        x_hat = centred * inv_std
        saved = (x_hat, inv_std)
        y = x_hat * gamma + beta
        if tanh:
            y = tf.tanh(y)
    if mask is not None:
        y = y * mask
    y = tf.cast(y, dtype)
    # XLA fuses a gather into the rest unless the function also returns values for the
    # gradient; then a concatenation measured faster (2.5 against 3.1 ms at [64, 32, 32, 16]).
    for axis in (1, 2):
        if pad and keep:
            y = tf.concat([_take(y, -pad, None, axis), y, _take(y, None, pad, axis)], axis=axis)
        elif pad:
            n = tf.shape(y)[axis]
            y = tf.gather(y, tf.math.floormod(tf.range(-pad, n + pad), n), axis=axis)
    return (y, *saved) if keep else (y,)


@tf.function(jit_compile=True)
def _activation_backward(dy: tf.Tensor, x_hat: tf.Tensor | None, inv_std: tf.Tensor | None,
                         gamma: tf.Tensor, beta: tf.Tensor, mask: tf.Tensor | None, pad: int,
                         dtype: tf.DType, tanh: bool, norm: bool) -> tuple[tf.Tensor, ...]:
    """(the gradient at x,) and with `norm` those of beta and gamma summed over the batch,
    for TensorFlow to sum over the pixels, from the gradient `dy` at the wrapped output, in
    one pass. (XLA's sums over the leading axis are fast, over more axes slow: 2.2 against
    2.7 ms for this function and TensorFlow's sums at [64, 32, 32, 16], 2.1 against 2.8 at
    [8, 32, 32, 128].)"""
    if pad:  # the wrap's adjoint: the halo added back onto the edges it copies
        dy = _fold_halo(_fold_halo(dy, pad, axis=1), pad, axis=2)
    dy = tf.cast(dy, dtype)
    if mask is not None:
        dy = dy * mask
    if not norm:
        return (dy,)
    if tanh:
        dy = tf.raw_ops.TanhGrad(y=tf.tanh(x_hat * gamma + beta), dy=dy)
    g = dy * gamma
    dx = inv_std * (g - _channel_mean(g) - x_hat * _channel_mean(g * x_hat))
    return dx, tf.reduce_sum(dy, axis=0), tf.reduce_sum(dy * x_hat, axis=0)


def _channel_mean(x: tf.Tensor) -> tf.Tensor:
    """The mean over the last axis, kept. XLA's CPU code splits reductions of more than 32
    elements into partial sums with a pass of their own; from 64 channels on a product
    with a vector of 1 / C is faster (1.5 against 2.1 ms for the backward at
    [8, 32, 32, 128]), below it the reduction (2.0 against 2.1 ms at [64, 32, 32, 16])."""
    channels = x.shape[-1]
    if channels is None or channels < 64:
        return tf.reduce_mean(x, axis=-1, keepdims=True)
    return tf.linalg.matvec(x, tf.fill([channels], tf.cast(1 / channels, x.dtype)))[..., None]


def _fold_halo(grad: tf.Tensor, pad: int, axis: int) -> tf.Tensor:
    """Adjoint of wrapping along `axis`: [..., n + 2 pad, ...] -> [..., n, ...]."""
    head = _take(grad, pad, 2 * pad, axis) + _take(grad, -pad, None, axis)
    middle = _take(grad, 2 * pad, -2 * pad, axis)
    tail = _take(grad, -2 * pad, -pad, axis) + _take(grad, None, pad, axis)
    return tf.concat([head, middle, tail], axis=axis)


def _take(x: tf.Tensor, start: int | None, stop: int | None, axis: int) -> tf.Tensor:
    """x[start:stop] along `axis` (1 or 2)."""
    return x[:, start:stop] if axis == 1 else x[:, :, start:stop]


@keras.saving.register_keras_serializable(package="tf_holstein")
class CircularConv2D(keras.layers.Layer):
    """A stride-1 2D cross-correlation with circular ("wrap") padding: the output keeps H and W.

    Same as torch `Conv2d(padding="same", padding_mode="circular")` for odd kernels: wrap by
    kernel_size // 2 on each side, then a VALID convolution. With `precision="mixed_bfloat16"`
    the input, kernel and bias are rounded to bfloat16 for the convolution (oneDNN / cuDNN
    accumulate in float32) and the output comes back as float32. Unlike a Keras mixed policy,
    which would put every layer's output in bfloat16, this keeps the layer norms and residual
    sums around the convolutions in float32, and measured as fast (Zen 4 CPU).
    """

    def __init__(self, filters: int, kernel_size: int = 3, zero_init: bool = False,
                 precision: str = "float32", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer (symmetric circular "
                             f"padding), got {kernel_size!r}")
        self.filters = filters
        self.kernel_size = kernel_size
        self.zero_init = zero_init
        self.precision = precision
        self._convolution_dtype = convolution_dtype(precision)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, input_shape[-1], self.filters),
            initializer="zeros" if self.zero_init else xavier_uniform())
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x: tf.Tensor, input_scale: tf.Tensor | None = None) -> tf.Tensor:
        """The convolution of `x`, times `input_scale` per channel first if given (in the
        wrap's fusion: no pass of its own, and the same products as a multiply before)."""
        return self.convolve_wrapped(_activation(x, None, None, input_scale, 0.0,
                                                 self.kernel_size // 2, self._convolution_dtype,
                                                 False))

    def convolve_wrapped(self, wrapped: tf.Tensor, training: bool = False) -> tf.Tensor:
        """The layer's output from its input already wrapped by kernel_size // 2 and cast to
        the convolution dtype (see `ChannelLayerNorm.activation`). In training, wide 3 x 3
        float32 convolutions on CPUs run as Winograd's (`winograd.applies`): faster, with a
        rounding error of about 1e-5 instead of 1e-6 of the output."""
        dtype = self._convolution_dtype  # the casts are no-ops in float32
        kernel, bias = tf.cast(self.kernel, dtype), tf.cast(self.bias, dtype)
        if training and winograd.applies(wrapped, kernel):
            output = winograd.conv3x3(wrapped, kernel, bias)
        else:
            output = tf.nn.bias_add(tf.nn.conv2d(wrapped, kernel, 1, "VALID"), bias)
        return tf.cast(output, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "zero_init": self.zero_init,
                "precision": self.precision}


@keras.saving.register_keras_serializable(package="tf_holstein")
class ChannelLayerNorm(keras.layers.Layer):
    """LayerNorm of each pixel over its channels, with scale and bias: torch's `LayerNorm(C)`
    applied channels-last (biased variance, epsilon inside the square root).
    """

    def __init__(self, epsilon: float = LAYER_NORM_EPSILON, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return _activation(x, *self._weights(), None, self.epsilon, 0, x.dtype, False)

    def activation(self, x: tf.Tensor, pad: int, dtype: tf.DType,
                   mask: tf.Tensor | None = None, keep: bool = True) -> tf.Tensor:
        """tanh of the normalised `x`, times a dropout `mask` if given, wrapped by `pad` and
        cast to `dtype`: the input of a `CircularConv2D.convolve_wrapped`, in one fusion.
        Without `keep` (inference) nothing is stored for a gradient (see `_activation`)."""
        return _activation(x, *self._weights(), mask, self.epsilon, pad, dtype, True, keep)

    def _weights(self) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tf_holstein")
class ResidualBlock(keras.layers.Layer):
    """Pre-activation (ResNet-v2) block: x + conv(dropout(tanh(LN(conv(tanh(LN(x))))))).

    LayerNorm normalises each pixel over its channels; the dropout drops whole channels
    (SpatialDropout2D), and only in training.
    """

    def __init__(self, channels: int, kernel_size: int = 3, dropout: float = 0.0,
                 precision: str = "float32", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.kernel_size = kernel_size
        self.dropout_rate = dropout
        self.precision = precision
        self.ln1 = ChannelLayerNorm(name="ln1")
        self.conv1 = CircularConv2D(channels, kernel_size, precision=precision, name="conv1")
        self.ln2 = ChannelLayerNorm(name="ln2")
        self.dropout = keras.layers.SpatialDropout2D(dropout, name="dropout")
        self.conv2 = CircularConv2D(channels, kernel_size, precision=precision, name="conv2")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] != self.channels:
            raise ValueError(f"a residual block of {self.channels} channels got an input of "
                             f"{input_shape[-1]} channels")
        for layer in (self.ln1, self.conv1, self.ln2, self.dropout, self.conv2):
            layer.build(input_shape)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        pad, dtype, keep = self.kernel_size // 2, self.conv1._convolution_dtype, bool(training)
        h = self.conv1.convolve_wrapped(self.ln1.activation(x, pad, dtype, keep=keep), keep)
        mask = None
        if training and self.dropout_rate > 0:
            # The dropout of a ones image [batch, 1, 1, C]: the mask SpatialDropout2D
            # multiplies by, applied inside the fusion.
            mask = self.dropout(tf.ones([tf.shape(x)[0], 1, 1, self.channels]), training=True)
        return x + self.conv2.convolve_wrapped(self.ln2.activation(h, pad, dtype, mask, keep),
                                               keep)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size, "dropout": self.dropout_rate,
                "precision": self.precision}


@keras.saving.register_keras_serializable(package="tf_holstein")
class PreActResNet(keras.layers.Layer):
    """The paper's network: conv k x k -> tanh -> residual blocks -> tanh -> conv 1x1.

    `[batch, L, L, in] -> [batch, L, L, out_channels]`, for any L. With `zero_init_output`
    the last conv starts at zero, so the network starts as the zero map. `precision` is that
    of every convolution.
    """

    def __init__(self, channels: int, n_blocks: int, out_channels: int = 4,
                 kernel_size: int = 3, dropout: float = 0.0, zero_init_output: bool = True,
                 precision: str = "float32", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.channels = channels
        self.n_blocks = n_blocks
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dropout_rate = dropout
        self.zero_init_output = zero_init_output
        self.precision = precision
        self.input_conv = CircularConv2D(channels, kernel_size, precision=precision,
                                         name="input_conv")
        self.blocks = [ResidualBlock(channels, kernel_size, dropout, precision, name=f"block_{i}")
                       for i in range(n_blocks)]
        self.output_conv = CircularConv2D(out_channels, 1, zero_init=zero_init_output,
                                          precision=precision, name="output_conv")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.input_conv.build(input_shape)
        hidden_shape = (*input_shape[:-1], self.channels)
        for block in self.blocks:
            block.build(hidden_shape)
        self.output_conv.build(hidden_shape)

    def call(self, x: tf.Tensor, training: bool | None = None,
             input_scale: tf.Tensor | None = None) -> tf.Tensor:
        """The network's output at `x`, times `input_scale` per channel first if given."""
        x = ops.tanh(self.input_conv(x, input_scale))
        for block in self.blocks:
            x = block(x, training=training)
        return self.output_conv(ops.tanh(x))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.out_channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels, "n_blocks": self.n_blocks,
                "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "dropout": self.dropout_rate, "zero_init_output": self.zero_init_output,
                "precision": self.precision}

