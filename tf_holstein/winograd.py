"""Winograd F(4 x 4, 3 x 3) convolution: the wide 3 x 3 convolutions of training on CPUs.

A 3 x 3 convolution computes each 4 x 4 output tile from a 6 x 6 input tile. Winograd's
minimal filtering (Lavin & Gray, arXiv:1509.09308) transforms both into 6 x 6 = 36
frequencies, where the convolution becomes 36 independent channel matmuls, and transforms
back: 36 multiplications per tile and channel pair instead of 4 * 4 * 9 = 144. The
transforms are cheap elementwise passes (XLA); the matmuls run on oneDNN. The gradients
are the same three stages backwards, written out here rather than left to autodiff (whose
gradients of the strided tile slices made the whole 15 times slower).

At the medium PARC's 128 channels, [8, 34, 34, 128] -> [8, 32, 32, 128] on 2 CPU cores
(AMD Zen 4), forward + both gradients took 16.5 ms against 27.4 ms for oneDNN's direct
convolution; at 32 channels 3.6 against 4.2 ms (batch 8) and 11.5-11.8 against 12.6-13.6
ms (batch 32). At 16 channels, or at batch 1 in inference, it was slower (forward +
gradients 9.9 against 5.1 ms at [64, 34, 34, 16]): the matmuls are too small.

Its float32 rounding is larger than the direct convolution's (the transforms' entries reach
8 and 1/24): about 1e-5 of the output's largest value against 1e-6, far below the noise of
stochastic gradients, so the layers use it in training only, where it is exact enough, and
keep inference and rollouts on the direct convolution.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

TILE = 4  # output tile side; the input tile side is TILE + 2
MIN_CHANNELS = 32  # narrower convolutions run faster directly (see above)

# Lavin & Gray's F(4, 3) with interpolation points 0, +-1, +-2 and infinity: y = A^T [(G g
# G^T) * (B^T d B)] A for a 6 x 6 input tile d and a 3 x 3 filter g (a cross-correlation).
INPUT_TRANSFORM = np.array([[4, 0, -5, 0, 1, 0],
                            [0, -4, -4, 1, 1, 0],
                            [0, 4, -4, -1, 1, 0],
                            [0, -2, -1, 2, 1, 0],
                            [0, 2, -1, -2, 1, 0],
                            [0, 4, 0, -5, 0, 1]], np.float64)  # B^T
FILTER_TRANSFORM = np.array([[1 / 4, 0, 0],
                             [-1 / 6, -1 / 6, -1 / 6],
                             [-1 / 6, 1 / 6, -1 / 6],
                             [1 / 24, 1 / 12, 1 / 6],
                             [1 / 24, -1 / 12, 1 / 6],
                             [0, 0, 1]], np.float64)  # G
OUTPUT_TRANSFORM = np.array([[1, 1, 1, 1, 1, 0],
                             [0, 1, -1, 2, -2, 0],
                             [0, 1, 1, 4, 4, 0],
                             [0, 1, -1, 8, -8, 1]], np.float64)  # A^T


def applies(wrapped: tf.Tensor, kernel: tf.Tensor) -> bool:
    """Whether `conv3x3` is the faster way for this float32 convolution on this machine:
    a 3 x 3 kernel of >= MIN_CHANNELS channels in and out, an output whose sides are known
    and multiples of TILE, and no GPU (cuDNN chooses its own algorithms)."""
    height, width = (None if n is None else n - 2 for n in wrapped.shape[1:3])
    return (tuple(kernel.shape[:2]) == (3, 3) and wrapped.dtype == tf.float32
            and min(kernel.shape[2:]) >= MIN_CHANNELS
            and height is not None and width is not None
            and height % TILE == 0 and width % TILE == 0
            and not tf.config.list_logical_devices("GPU"))


@tf.custom_gradient
def conv3x3(wrapped: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor
            ) -> tuple[tf.Tensor, Callable[[tf.Tensor], tuple[tf.Tensor, ...]]]:
    """The VALID 3 x 3 cross-correlation of `wrapped: [batch, H + 2, W + 2, C]` with
    `kernel: [3, 3, C, C']`, plus `bias`: [batch, H, W, C'], H and W multiples of TILE."""
    filters = _transform_filter(kernel)
    frequencies = _transform_input(wrapped)
    output = _transform_output(tf.matmul(frequencies, filters), bias, wrapped.shape[1] - 2,
                               wrapped.shape[2] - 2)

    def grad(d_output: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        d_products, d_bias = _transform_output_adjoint(d_output)
        d_wrapped = _transform_input_adjoint(tf.matmul(d_products, filters, transpose_b=True),
                                             d_output.shape[1], d_output.shape[2])
        d_kernel = _transform_filter_adjoint(tf.matmul(frequencies, d_products,
                                                       transpose_a=True))
        return d_wrapped, d_kernel, d_bias

    return output, grad


def _combine(coefficients: np.ndarray, parts: Sequence[tf.Tensor]) -> tf.Tensor:
    """sum_i coefficients[i] * parts[i], skipping zeros and multiplications by +-1."""
    total = None
    for c, part in zip(coefficients, parts):
        if c == 0:
            continue
        term = part if c == 1 else -part if c == -1 else float(c) * part
        total = term if total is None else total + term
    return total


def _two_sided(matrix: np.ndarray, grid: Sequence[Sequence[tf.Tensor]]
               ) -> list[list[tf.Tensor]]:
    """M X M^T for a grid X of tensors: [[sum_ab M[k, a] M[l, b] X[a][b] for l] for k],
    summed over a (the grid's rows) first."""
    rows = [[_combine(coefficients, [row[b] for row in grid]) for b in range(len(grid[0]))]
            for coefficients in matrix]
    return [[_combine(coefficients, row) for coefficients in matrix] for row in rows]


def _flat(grid: Sequence[Sequence[tf.Tensor]]) -> list[tf.Tensor]:
    """The grid's tensors row by row: frequency (k, l) at 6 k + l."""
    return [x for row in grid for x in row]


def _along(x: tf.Tensor, axis: int, start: int | None = None, stop: int | None = None,
           step: int | None = None) -> tf.Tensor:
    """x[start:stop:step] along `axis`."""
    return x[(slice(None),) * axis + (slice(start, stop, step),)]


def _tiles(x: tf.Tensor, axis: int) -> list[tf.Tensor]:
    """The 6 rows (axis 1) or columns (axis 2) of every input tile: x[4 t + i], i < 6."""
    span = x.shape[axis] - 2 - TILE + 1  # from a tile's row i to the last tile's
    return [_along(x, axis, i, i + span, TILE) for i in range(6)]


def _untile(parts: Sequence[tf.Tensor], axis: int) -> tf.Tensor:
    """Adjoint of `_tiles`: parts[i][t] added at 4 t + i, along a side of 4 T + 2."""
    def previous(x: tf.Tensor) -> tf.Tensor:  # x[t - 1] at t, 0 at t = 0
        return tf.pad(_along(x, axis, stop=-1), [[int(a == axis), 0] for a in range(4)])

    # A tile's rows 4 and 5 are the next tile's rows 0 and 1, and the last tile's the
    # side's last two. (Summed so before interleaving: 0.9 against 3.3 ms for the whole
    # adjoint at [8, 34, 34, 128], where padding two interleaved sides and adding them
    # wrote the side twice.)
    body = tf.stack([parts[0] + previous(parts[4]), parts[1] + previous(parts[5]),
                     parts[2], parts[3]], axis=axis + 1)
    shape = tf.concat([tf.shape(body)[:axis], [-1], tf.shape(body)[axis + 2:]], 0)
    return tf.concat([tf.reshape(body, shape), _along(parts[4], axis, -1),
                      _along(parts[5], axis, -1)], axis=axis)


@tf.function(jit_compile=True)
def _transform_input(wrapped: tf.Tensor) -> tf.Tensor:
    """B^T d B of every tile: [batch, H + 2, W + 2, C] -> [36, batch * tiles, C]."""
    pixels = [_tiles(row, 2) for row in _tiles(wrapped, 1)]  # [i][j]: x[4 t + i, 4 s + j]
    return tf.stack([tf.reshape(f, [-1, wrapped.shape[-1]])
                     for f in _flat(_two_sided(INPUT_TRANSFORM, pixels))])


@tf.function(jit_compile=True)
def _transform_input_adjoint(d_frequencies: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """[36, batch * tiles, C] -> [batch, H + 2, W + 2, C], the tiles' overlaps summed."""
    channels = d_frequencies.shape[-1]
    d = tf.reshape(d_frequencies, [6, 6, -1, height // TILE, width // TILE, channels])
    # Each frequency row's columns are untiled before the rows are combined: combining all
    # 36 first and untiling after made XLA's fusion 10 times slower (16.5 against 1.7 ms).
    rows = [_untile([_combine(INPUT_TRANSFORM[:, j], [d[k, m] for m in range(6)])
                     for j in range(6)], axis=2) for k in range(6)]
    return _untile([_combine(INPUT_TRANSFORM[:, i], rows) for i in range(6)], axis=1)


@tf.function(jit_compile=True)
def _transform_filter(kernel: tf.Tensor) -> tf.Tensor:
    """G g G^T: [3, 3, C, C'] -> [36, C, C']."""
    taps = [[kernel[i, j] for j in range(3)] for i in range(3)]
    return tf.stack(_flat(_two_sided(FILTER_TRANSFORM, taps)))


@tf.function(jit_compile=True)
def _transform_filter_adjoint(d_filters: tf.Tensor) -> tf.Tensor:
    """[36, C, C'] -> [3, 3, C, C']."""
    d = tf.reshape(d_filters, [6, 6, *d_filters.shape[1:]])
    taps = _two_sided(FILTER_TRANSFORM.T, [[d[k, m] for m in range(6)] for k in range(6)])
    return tf.stack([tf.stack(row) for row in taps])


@tf.function(jit_compile=True)
def _transform_output(products: tf.Tensor, bias: tf.Tensor, height: int, width: int
                      ) -> tf.Tensor:
    """A^T M A of every tile, plus the bias: [36, batch * tiles, C'] -> [batch, H, W, C']."""
    channels = products.shape[-1]
    tiles = (height // TILE, width // TILE)
    m = tf.reshape(products, [6, 6, -1, *tiles, channels])
    pixels = _two_sided(OUTPUT_TRANSFORM, [[m[k, n] for n in range(6)] for k in range(6)])
    # [batch, T_h, 4, T_w, 4, C']: tile row, row within it, tile column, column within it.
    y = tf.stack([tf.stack(row, axis=3) for row in pixels], axis=2)
    return tf.reshape(y, [-1, height, width, channels]) + bias


@tf.function(jit_compile=True)
def _transform_output_adjoint(d_output: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[batch, H, W, C'] -> ([36, batch * tiles, C'], the bias's gradient)."""
    height, width, channels = d_output.shape[1:]
    d = tf.reshape(d_output, [-1, height // TILE, TILE, width // TILE, TILE, channels])
    pixels = [[d[:, :, p, :, q] for q in range(TILE)] for p in range(TILE)]
    d_products = tf.stack([tf.reshape(f, [-1, channels])
                           for f in _flat(_two_sided(OUTPUT_TRANSFORM.T, pixels))])
    return d_products, tf.reduce_sum(d_output, axis=[0, 1, 2])
