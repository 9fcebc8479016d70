"""Layers against direct numpy computations: periodic correlation, the block's formula, init."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import layers


def periodic_correlation(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """out[b, i, j, o] = bias[o] + sum x[b, i + di, j + dj, c] kernel[di + p, dj + p, c, o],
    indices taken modulo the image size."""
    k = kernel.shape[0]
    p = k // 2
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],)) + bias
    for di in range(k):
        for dj in range(k):
            shifted = np.roll(x, shift=(p - di, p - dj), axis=(1, 2))  # x[i + di - p, j + dj - p]
            out += shifted @ kernel[di, dj]
    return out


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_circular_conv_is_a_periodic_cross_correlation(kernel_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)  # H != W: both axes wrap on their own
    conv = layers.CircularConv2D(5, kernel_size)
    conv.build(x.shape)
    conv.bias.assign(rng.normal(size=5))
    out = np.asarray(conv(x))
    assert out.shape == (2, 6, 8, 5)
    expected = periodic_correlation(x, conv.kernel.numpy(), conv.bias.numpy())
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_mixed_bfloat16_conv_convolves_bfloat16_operands_into_a_float32_output():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 8, 16)).astype(np.float32)
    conv = layers.CircularConv2D(8, 3, precision="mixed_bfloat16")
    conv.build(x.shape)
    conv.bias.assign(rng.normal(size=8))
    out = conv(x)
    assert out.dtype == tf.float32 and conv.kernel.dtype == "float32"

    def rounded(a):
        return tf.cast(tf.cast(a, tf.bfloat16), tf.float64).numpy()

    expected = periodic_correlation(rounded(x), rounded(conv.kernel), rounded(conv.bias))
    # The float32 sums are rounded to bfloat16 (relative error <= 2^-9) before and after
    # the bias is added.
    np.testing.assert_allclose(out, expected, atol=2**-8 * np.abs(expected).max())
    assert np.abs(out - periodic_correlation(x, conv.kernel.numpy(), conv.bias.numpy())).max() \
        > 1e-4  # the operands were rounded: the convolution did run in bfloat16


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
@pytest.mark.parametrize("pad", [1, 2])
def test_circular_pad_and_its_gradient_match_a_periodic_gather(pad, dtype):
    """The hand-written gradient must be the exact adjoint of the wrap, in either dtype of
    the convolutions; small integers make every sum exact."""
    rng = np.random.default_rng(3)
    x = tf.constant(rng.integers(-8, 8, size=(2, 5, 6, 3)), dtype)
    weights = tf.constant(rng.integers(-8, 8, size=(2, 5 + 2 * pad, 6 + 2 * pad, 3)), dtype)

    def gathered(x):
        rows, cols = (np.arange(-pad, n + pad) % n for n in (5, 6))
        return tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)

    results = []
    for wrap in (lambda x: layers.circular_pad(x, pad), gathered):
        with tf.GradientTape() as tape:
            tape.watch(x)
            padded = wrap(x)
            loss = tf.reduce_sum(padded * weights)
        results.append((padded.numpy(), tape.gradient(loss, x).numpy()))
    np.testing.assert_array_equal(results[0][0], np.pad(x.numpy(), [(0, 0), (pad, pad),
                                                                    (pad, pad), (0, 0)], "wrap"))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1].dtype == dtype
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_channel_layer_norm_and_its_gradient_match_keras_layer_norm():
    rng = np.random.default_rng(4)
    x = tf.constant(3 * rng.normal(size=(2, 4, 5, 8)) + 1, tf.float32)
    weights = tf.constant(rng.normal(size=(2, 4, 5, 8)), tf.float32)
    ours = layers.ChannelLayerNorm()
    theirs = keras.layers.LayerNormalization(axis=-1, epsilon=1e-5)
    results = []
    for norm in (ours, theirs):
        norm.build(x.shape)
        norm.gamma.assign(np.linspace(0.5, 2, 8))
        norm.beta.assign(np.linspace(-1, 1, 8))
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(norm(x) * weights)
        results.append([norm(x).numpy()] + [g.numpy() for g in
                                             tape.gradient(loss, [x, norm.gamma, norm.beta])])
    for ours_value, theirs_value in zip(*results):
        np.testing.assert_allclose(ours_value, theirs_value, atol=5e-6)


@pytest.mark.parametrize("channels", [8, 64])  # channel means as reductions, as products
@pytest.mark.parametrize("keep", [True, False])
def test_fused_activation_and_its_gradient_match_autodiff_of_its_formula(keep, channels):
    """LN, tanh, dropout mask and wrap in one fusion, with the hand-written backward: the
    same values and gradients as TensorFlow's autodiff of the plain formula, whether the
    forward kept what the gradient needs (training) or the gradient recomputes it."""
    rng = np.random.default_rng(6)
    x = tf.constant(2 * rng.normal(size=(3, 5, 6, channels)) + 0.5, tf.float32)
    mask = tf.constant(rng.choice([0.0, 2.0], size=(3, 1, 1, channels)), tf.float32)
    weights = tf.constant(rng.normal(size=(3, 7, 8, channels)), tf.float32)
    norm = layers.ChannelLayerNorm()
    norm.build(x.shape)
    norm.gamma.assign(np.linspace(0.5, 2, channels))
    norm.beta.assign(np.linspace(-1, 1, channels))

    def formula(x):
        mean, var = tf.nn.moments(x, [-1], keepdims=True)
        y = tf.tanh((x - mean) * tf.math.rsqrt(var + 1e-5) * norm.gamma + norm.beta) * mask
        rows, cols = (np.arange(-1, n + 1) % n for n in (5, 6))
        return tf.gather(tf.gather(y, rows, axis=1), cols, axis=2)

    results = []
    for activation in (lambda x: norm.activation(x, 1, tf.float32, mask, keep), formula):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x)
            loss = tf.reduce_sum(y * weights)
        results.append([y] + tape.gradient(loss, [x, norm.gamma, norm.beta]))
    for ours, theirs in zip(*results):
        # float32 rounding of a few operations per term, relative to the largest value
        np.testing.assert_allclose(ours, theirs, atol=1e-5 * np.abs(theirs).max())


def test_circular_conv_rejects_even_kernels_and_unknown_precisions():
    with pytest.raises(ValueError, match="odd"):
        layers.CircularConv2D(4, 2)
    with pytest.raises(ValueError, match="valid precisions: float32, mixed_bfloat16"):
        layers.PreActResNet(8, 1, precision="float16")


def test_xavier_uniform_with_tanh_gain_and_zero_biases():
    conv = layers.CircularConv2D(64, 3)
    conv.build((None, None, None, 32))
    fan_in, fan_out = 9 * 32, 9 * 64
    bound = 5 / 3 * np.sqrt(6 / (fan_in + fan_out))
    w = conv.kernel.numpy()
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)  # uniform on [-a, a]
    assert not conv.bias.numpy().any()


def test_residual_block_matches_its_formula_at_inference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 5, 6)).astype(np.float32)
    block = layers.ResidualBlock(6, dropout=0.5)
    block.build(x.shape)
    for norm in (block.ln1, block.ln2):
        norm.gamma.assign(rng.normal(size=6))
        norm.beta.assign(rng.normal(size=6))
    c1, c2 = block.conv1, block.conv2
    normed = layer_norm(x, block.ln1.gamma.numpy(), block.ln1.beta.numpy())
    h = periodic_correlation(np.tanh(normed), c1.kernel.numpy(), c1.bias.numpy())
    h = np.tanh(layer_norm(h, block.ln2.gamma.numpy(), block.ln2.beta.numpy()))
    expected = x + periodic_correlation(h, c2.kernel.numpy(), c2.bias.numpy())
    np.testing.assert_allclose(np.asarray(block(x, training=False)), expected, atol=1e-5)


def test_spatial_dropout_drops_whole_channels_only_in_training():
    x = np.random.default_rng(2).normal(size=(4, 5, 5, 16)).astype(np.float32)
    block = layers.ResidualBlock(16, dropout=0.5)
    block.build(x.shape)
    eval_out = np.asarray(block(x, training=False))
    np.testing.assert_array_equal(eval_out, np.asarray(block(x)))
    first, second = np.asarray(block(x, training=True)), np.asarray(block(x, training=True))
    assert np.abs(first - eval_out).max() > 1e-3
    assert np.abs(first - second).max() > 1e-3
    # Whole channels dropped: with conv2 the identity, block(x) - x is the dropout's output,
    # each channel of it either zero or scaled by 1 / (1 - rate) everywhere.
    identity = np.zeros((3, 3, 16, 16), np.float32)
    identity[1, 1] = np.eye(16)
    block.conv2.kernel.assign(identity)
    h = np.asarray(block(x, training=False)) - x
    dropped = np.asarray(block(x, training=True)) - x
    kept = np.isclose(dropped, 2 * h, atol=1e-5)  # rate 0.5: kept channels are scaled by 2
    zero = np.isclose(dropped, 0, atol=1e-6)
    assert (kept | zero).all()
    per_channel = kept.all(axis=(1, 2)) | zero.all(axis=(1, 2))  # [batch, channels]
    assert per_channel.all()
    assert zero.all(axis=(1, 2)).any() and kept.all(axis=(1, 2)).any()


@pytest.mark.parametrize("channels, n_blocks, count",
                         [(16, 1, 5_364), (128, 4, 1_187_972)])
def test_network_parameter_counts(channels, n_blocks, count):
    net = layers.PreActResNet(channels, n_blocks)
    net.build((None, None, None, 4))
    assert sum(int(np.prod(w.shape)) for w in net.trainable_weights) == count


def test_network_precision_reaches_every_convolution_and_its_config():
    net = layers.PreActResNet(8, 2, precision="mixed_bfloat16")
    copy = layers.PreActResNet.from_config(net.get_config())
    convs = [layer for layer in copy._flatten_layers() if isinstance(layer, layers.CircularConv2D)]
    assert len(convs) == 2 + 2 * 2
    assert {conv.precision for conv in convs} == {"mixed_bfloat16"}


def test_zero_initialised_output_gives_the_zero_map_on_any_size():
    net = layers.PreActResNet(8, 2, zero_init_output=True)
    for L in (4, 7):
        x = np.random.default_rng(L).normal(size=(2, L, L, 4)).astype(np.float32)
        out = np.asarray(net(x))
        assert out.shape == (2, L, L, 4)
        assert not out.any()
    other = layers.PreActResNet(8, 2, zero_init_output=False)
    assert np.abs(np.asarray(other(x))).max() > 0
