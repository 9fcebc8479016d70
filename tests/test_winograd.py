"""Winograd's F(4 x 4, 3 x 3) convolution against float64 direct convolutions, within an
a-priori bound on its float32 rounding; and where the layers use it."""
import numpy as np
import pytest
import tensorflow as tf

from tests.float32 import EPS32
from tf_holstein import layers, winograd

MATRICES = (winograd.INPUT_TRANSFORM, winograd.FILTER_TRANSFORM, winograd.OUTPUT_TRANSFORM)
# Roundings of a result outside its matmul's sum: the input transform (6 + 6 terms of a
# tile, twice), the filter's (3 + 3, whose entries such as 1/6 are themselves rounded), the
# output transform (6 + 6, twice) and the bias: fewer than 40.
TRANSFORM_ROUNDINGS = 40


def numpy_winograd(wrapped, kernel, d_output, matrices=MATRICES):
    """(output, d_wrapped, d_kernel) of F(4, 3) in float64 numpy, tile by tile, without the
    bias. Called with the matrices' and operands' absolute values it gives the sums of
    |terms| that bound each result's rounding error."""
    bt, g, at = matrices
    batch, height, width = d_output.shape[:3]
    tiles = np.lib.stride_tricks.sliding_window_view(wrapped, (6, 6), axis=(1, 2))
    tiles = tiles[:, ::4, ::4]  # [batch, T_h, T_w, C, 6, 6]
    v = np.einsum("ki,bxycij,lj->bxyckl", bt, tiles, bt)
    u = np.einsum("ki,ijcd,lj->klcd", g, kernel, g)
    m = np.einsum("bxyckl,klcd->bxydkl", v, u)
    output = np.einsum("pk,bxydkl,ql->bxpyqd", at, m, at).reshape(d_output.shape)
    dy = d_output.reshape(batch, height // 4, 4, width // 4, 4, -1)
    dm = np.einsum("pk,bxpyqd,ql->bxydkl", at, dy, at)
    d_tiles = np.einsum("ki,bxyckl,lj->bxycij", bt, np.einsum("bxydkl,klcd->bxyckl", dm, u), bt)
    d_wrapped = np.zeros_like(wrapped)
    for i in range(6):
        for j in range(6):
            d_wrapped[:, i:i + height - 3:4, j:j + width - 3:4] += d_tiles[..., i, j]
    d_kernel = np.einsum("ki,klcd,lj->ijcd", g, np.einsum("bxyckl,bxydkl->klcd", v, dm), g)
    return output, d_wrapped, d_kernel


def rounding_bounds(wrapped, kernel, d_output, matmul_sums):
    """Bounds on the rounding errors of (output without bias, d_wrapped, d_kernel): a chain
    of n roundings errs by at most n EPS32 times the sum of its terms' magnitudes (Higham,
    Accuracy and Stability of Numerical Algorithms, 2002, sec. 3.1), which the same
    transforms give run on absolute values; n adds the matmul's sum over channels (forward),
    filters (input gradient) or tiles (kernel gradient) given in `matmul_sums`."""
    magnitudes = numpy_winograd(*(np.abs(a).astype(np.float64) for a in
                                  (wrapped, kernel, d_output)),
                                matrices=[np.abs(m) for m in MATRICES])
    return [(n + TRANSFORM_ROUNDINGS) * EPS32 * m for n, m in zip(matmul_sums, magnitudes)]


def direct(wrapped, kernel, bias, d_output):
    """(output, d_wrapped, d_kernel, d_bias) of TensorFlow's direct convolution."""
    wrapped, kernel, bias = (tf.convert_to_tensor(a) for a in (wrapped, kernel, bias))
    with tf.GradientTape() as tape:
        tape.watch([wrapped, kernel, bias])
        out = tf.nn.bias_add(tf.nn.conv2d(wrapped, kernel, 1, "VALID"), bias)
    return (out, *tape.gradient(out, [wrapped, kernel, bias], output_gradients=d_output))


def operands(rng, batch, height, width, channels, filters):
    wrapped = rng.normal(size=(batch, height + 2, width + 2, channels))
    kernel = rng.normal(size=(3, 3, channels, filters)) / np.sqrt(9 * channels)
    bias = rng.normal(size=filters)
    d_output = rng.normal(size=(batch, height, width, filters))
    return [a.astype(np.float32) for a in (wrapped, kernel, bias, d_output)]


@pytest.mark.parametrize("shape", [(2, 8, 12, 64, 72), (1, 16, 16, 128, 64)])
def test_winograd_convolution_and_gradients_are_exact_up_to_their_float32_rounding(shape):
    rng = np.random.default_rng(3)
    wrapped, kernel, bias, d_output = operands(rng, *shape)
    exact = [t.numpy() for t in direct(*(a.astype(np.float64) for a in
                                         (wrapped, kernel, bias, d_output)))]
    # The numpy transcription agrees with the convolution in float64: it is F(4, 3).
    transcribed = numpy_winograd(*(a.astype(np.float64) for a in (wrapped, kernel, d_output)))
    for got, want in zip((transcribed[0] + bias, *transcribed[1:]), exact):
        np.testing.assert_allclose(got, want, atol=1e-10 * np.abs(want).max())
    wrapped_t, kernel_t, bias_t = (tf.constant(a) for a in (wrapped, kernel, bias))
    with tf.GradientTape() as tape:
        tape.watch([wrapped_t, kernel_t, bias_t])
        out = winograd.conv3x3(wrapped_t, kernel_t, bias_t)
    got = (out, *tape.gradient(out, [wrapped_t, kernel_t, bias_t], output_gradients=d_output))
    batch, height, width, channels, filters = shape
    bounds = rounding_bounds(wrapped, kernel, d_output,
                             (channels, filters, batch * height * width // 16))
    # The bias is one more term of the output's sum.
    bounds[0] += (channels + TRANSFORM_ROUNDINGS) * EPS32 * np.abs(bias)
    for name, result, want, bound in zip(("output", "d_wrapped", "d_kernel"), got, exact,
                                         bounds):
        assert np.all(np.abs(result.numpy() - want) <= bound), name
    pixels = batch * height * width
    assert np.all(np.abs(got[3].numpy() - exact[3])
                  <= pixels * EPS32 * np.abs(d_output).sum(axis=(0, 1, 2)))


def test_a_wrong_transform_is_far_outside_the_rounding_bound():
    # The bound is tight enough to catch a slip of a single coefficient.
    rng = np.random.default_rng(4)
    wrapped, kernel, _, d_output = (a.astype(np.float64) for a in operands(rng, 1, 8, 8, 64, 64))
    slipped = winograd.INPUT_TRANSFORM.copy()
    slipped[3, 1] = -slipped[3, 1]
    exact = numpy_winograd(wrapped, kernel, d_output)[0]
    wrong = numpy_winograd(wrapped, kernel, d_output, (slipped, *MATRICES[1:]))[0]
    bound = rounding_bounds(wrapped, kernel, d_output, (64, 64, 4))[0]
    assert np.mean(np.abs(wrong - exact) > bound) > 0.5


@pytest.mark.parametrize("wrapped_shape, kernel_shape, dtype, expected", [
    ((8, 34, 34, 128), (3, 3, 128, 128), tf.float32, True),
    ((8, 34, 34, 32), (3, 3, 32, 32), tf.float32, True),
    ((8, 34, 34, 16), (3, 3, 16, 16), tf.float32, False),    # narrow: direct is faster
    ((8, 34, 34, 128), (3, 3, 128, 16), tf.float32, False),
    ((8, 32, 32, 128), (3, 3, 128, 128), tf.float32, False),  # 30 x 30 output: no 4 x 4 tiles
    ((8, 36, 36, 128), (5, 5, 128, 128), tf.float32, False),
    ((8, 34, 34, 128), (3, 3, 128, 128), tf.bfloat16, False),
])
def test_winograd_applies_to_wide_float32_3x3_convolutions_of_whole_tiles(
        wrapped_shape, kernel_shape, dtype, expected):
    assert winograd.applies(tf.zeros(wrapped_shape, dtype), tf.zeros(kernel_shape, dtype)) \
        == expected


def test_a_wide_layer_convolves_with_winograd_in_training_and_directly_in_inference():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 9, 10, 64)).astype(np.float32)
    conv = layers.CircularConv2D(64, 3)
    conv.build(x.shape)
    wrapped = layers.circular_pad(tf.constant(x), 1)
    # 9 x 10 is not a whole number of tiles: both modes convolve directly.
    np.testing.assert_array_equal(conv.convolve_wrapped(wrapped, training=True),
                                  conv.convolve_wrapped(wrapped))
    wrapped = wrapped[:, :10, :10]
    conv.bias.assign(rng.normal(size=64))
    kernel, bias = tf.convert_to_tensor(conv.kernel), tf.convert_to_tensor(conv.bias)
    np.testing.assert_array_equal(conv.convolve_wrapped(wrapped, training=True),
                                  winograd.conv3x3(wrapped, kernel, bias))
    np.testing.assert_array_equal(conv.convolve_wrapped(wrapped),
                                  tf.nn.bias_add(tf.nn.conv2d(wrapped, kernel, 1, "VALID"), bias))
