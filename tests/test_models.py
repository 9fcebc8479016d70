"""The two models: codec, presets, symmetry, initial identity, dropout, saving, rollouts and
mixed precision."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import (autoregressive, codec, invariants, layers, models, physics, records,
                         symmetries)
from tf_holstein.configs import ModelConfig

from float32 import kernel_tolerance, sum_tolerance
from numpy_reference import numpy_derivatives

# The shallow-quench scales at L = 16 (docs/training.md); drho etc. as the reference's kwargs.
SCALES = {"rho": 0.7065, "Q": 0.5187, "P": 0.1406, "drho": 0.03766, "dQ": 0.04215,
          "dP": 0.03482, "delta_rho": 0.02141, "delta_Q": 0.02691, "delta_P": 0.02181}
TOL = kernel_tolerance(1.0)  # one step evaluated by other kernels, states of magnitude <= 1
# mixed_bfloat16 against float32, relative to the largest increment of a step: each of a
# small network's 4 convolutions rounds its input, kernel and output to bfloat16 (<= 2^-9
# each), at most 12 * 2^-9 = 2.3% per network if all added up (measured: 1.3% for the CNN,
# 2.4% for PARC's two networks in a row).
BF16_RTOL_PER_NETWORK = 12 * 2**-9


def random_state(batch: int, L: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A Hermitian, CDW-like state of physical magnitude."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, L, L)) + 1j * rng.normal(size=(batch, L, L))
    rho = 0.5 * np.eye(L) + 0.05 * (a + np.conj(np.swapaxes(a, 1, 2)))
    stagger = np.where(np.arange(L) % 2 == 0, -1.0, 1.0)
    Q = 0.1 * stagger + 0.02 * rng.normal(size=(batch, L))
    P = 0.02 * rng.normal(size=(batch, L))
    return {"rho": rho.astype(np.complex64), "Q": Q.astype(np.float32),
            "P": P.astype(np.float32)}


def shift(state: dict, sites: int = 1) -> dict:
    """The chain translated by `sites`: rho_ij -> rho_{i-1, j-1}, Q_i -> Q_{i-1}."""
    return {"rho": np.roll(np.asarray(state["rho"]), sites, axis=(-2, -1)),
            "Q": np.roll(np.asarray(state["Q"]), sites, axis=-1),
            "P": np.roll(np.asarray(state["P"]), sites, axis=-1)}


def assert_states_close(a: dict, b: dict, atol: float = TOL) -> None:
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=atol,
                                   err_msg=key)


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


def build(kind: str, coupling: float | None = None, time_step: float | None = None,
          **fields) -> models.HolsteinModel:
    """A model of `kind` with `fields` of its ModelConfig set (the rest at their defaults,
    the tiny architecture: 16 channels, one block) and the protocol's coupling and time step."""
    return models.build_model(ModelConfig(kind=kind, **fields), SCALES, coupling, time_step)


def small_model(kind: str, **overrides) -> models.HolsteinModel:
    """A trained-looking small model: output convs not at zero, so steps do something."""
    return build(kind, **{"channels": 8, "zero_init_output": False, **overrides})


def test_codec_layout_and_round_trip():
    state = random_state(2, 6)
    image = codec.encode(state).numpy()
    assert image.shape == (2, 6, 6, 4) and image.dtype == np.float32
    np.testing.assert_array_equal(image[..., 0], state["rho"].real)
    np.testing.assert_array_equal(image[..., 1], state["rho"].imag)
    np.testing.assert_array_equal(image[..., 2], np.stack([np.diag(q) for q in state["Q"]]))
    np.testing.assert_array_equal(image[..., 3], np.stack([np.diag(p) for p in state["P"]]))
    decoded = codec.decode(image)
    for key in records.STATE_KEYS:
        np.testing.assert_array_equal(decoded[key].numpy(), state[key])


def test_preset_parameter_counts():
    def count(model):
        return sum(int(np.prod(w.shape)) for w in model.trainable_weights)

    assert count(build("cnn")) == 5_364  # the default ModelConfig: the shallow quench's tiny CNN
    assert count(build("parc")) == 2 * 5_364
    assert count(build("parc", channels=128, n_blocks=4)) == 2 * 1_187_972  # the deep quench's
    # The scales are weights too, but not trainable ones.
    assert len(build("parc").non_trainable_weights) == 4


def test_scales_are_validated():
    with pytest.raises(ValueError, match="missing: \\['delta_P'\\]"):
        models.build_model(ModelConfig(), {k: v for k, v in SCALES.items() if k != "delta_P"})
    with pytest.raises(ValueError, match="positive"):
        models.build_model(ModelConfig(), {**SCALES, "Q": 0.0})
    with pytest.raises(ValueError, match="kind must be one of 'cnn', 'parc', got 'unet'"):
        build("unet")
    with pytest.raises(ValueError, match="need channels >= 1"):
        build("cnn", channels=0)
    with pytest.raises(ValueError, match="HolsteinCNN is kind 'cnn', got a config of kind 'parc'"):
        models.HolsteinCNN(ModelConfig(kind="parc"), SCALES)


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision must be one of 'float32', 'mixed_bfloat16', "
                                         "got 'float16'"):
        build("parc", precision="float16")
    for precision in layers.PRECISIONS:
        assert ModelConfig(precision=precision).validate().precision == precision
    with pytest.raises(ValueError, match="precision must be one of 'float32', 'mixed_bfloat16'"):
        ModelConfig(precision="bfloat16").validate()


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_mixed_bfloat16_step_is_a_float32_step_to_bfloat16_accuracy(kind):
    reference = small_model(kind)
    mixed = small_model(kind, precision="mixed_bfloat16")
    for ours, theirs in zip(mixed.weights, reference.weights):
        ours.assign(theirs)
    state = random_state(2, 16)
    expected = reference.step(state)
    stepped = mixed.step(state)
    for key in records.STATE_KEYS:
        assert stepped[key].dtype == tf.as_dtype(state[key].dtype), key
        increment = np.abs(expected[key].numpy() - state[key]).max()
        error = np.abs(stepped[key].numpy() - expected[key].numpy()).max()
        assert 0 < error < BF16_RTOL_PER_NETWORK * (1 + mixed.has_derivatives) * increment, key


def test_scales_enter_as_input_and_output_factors():
    model = build("parc", channels=8)
    np.testing.assert_allclose(model.differentiator.in_scale.numpy(),
                               [1 / 0.7065, 1 / 0.7065, 1 / 0.5187, 1 / 0.1406], rtol=1e-7)
    np.testing.assert_allclose(model.differentiator.out_scale.numpy(),
                               [0.03766, 0.03766, 0.04215, 0.03482], rtol=1e-7)
    np.testing.assert_allclose(model.integrator.in_scale.numpy(),
                               [1 / 0.03766, 1 / 0.03766, 1 / 0.04215, 1 / 0.03482], rtol=1e-7)
    np.testing.assert_allclose(model.integrator.out_scale.numpy(),
                               [0.02141, 0.02141, 0.02691, 0.02181], rtol=1e-7)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_untrained_models_start_as_the_identity_step(precision):
    """Also in mixed_bfloat16: the state and its update stay float32."""
    state = random_state(3, 8)
    cnn = build("cnn", precision=precision)
    np.testing.assert_array_equal(cnn.step(state)["rho"].numpy(), state["rho"])
    assert_states_close(cnn.step(state), state, atol=0)
    parc = build("parc", precision=precision)
    next_state, derivatives = parc.step(state, return_derivatives=True)
    assert_states_close(next_state, state, atol=0)
    # The differentiator does not start at zero: PARC learns du/dt from the first step.
    assert np.abs(derivatives["Q"].numpy()).max() > 0


def test_parc_derivatives_have_the_state_shapes_and_dtypes():
    state = random_state(3, 10)
    next_state, derivatives = small_model("parc").step(state, return_derivatives=True)
    for key in records.STATE_KEYS:
        assert derivatives[key].shape == state[key].shape
        assert derivatives[key].dtype == next_state[key].dtype == tf.as_dtype(state[key].dtype)
    with pytest.raises(ValueError, match="no differentiator"):
        small_model("cnn").step(state, return_derivatives=True)


@pytest.mark.parametrize("kind", ["cnn", "parc"])
@pytest.mark.parametrize("L", [8, 10])
def test_a_step_commutes_with_translations(kind, L):
    model = small_model(kind)
    state = random_state(2, L)
    stepped = model.step(state)
    assert np.abs(stepped["Q"].numpy() - state["Q"]).max() > 1e-3  # the step is not trivial
    for sites in (1, 3):
        assert_states_close(model.step(shift(state, sites)), shift(stepped, sites))


def transform(name: str, state: dict, increment: bool = False) -> dict:
    """`state` (or a rate) under the symmetry `symmetries.SYMMETRIES[name]`."""
    return codec.decode(symmetries.SYMMETRIES[name](codec.encode(state), increment))


@pytest.mark.parametrize("name, order_sign", [("particle_hole", -1), ("reflection", 1)])
def test_symmetries_are_involutions_and_symmetries_of_the_equations_of_motion(name, order_sign):
    """d(T u)/dt = T'(du/dt): the exact flow commutes with T (T' without PH's identity);
    PH flips the staggered order parameters, the reflection keeps them (L even)."""
    L, g = 8, 1.0
    state = random_state(1, L, seed=3)
    image = codec.encode(state)
    symmetry = symmetries.SYMMETRIES[name]
    np.testing.assert_allclose(symmetry(symmetry(image)), image, atol=1e-7)
    mirrored = transform(name, state)
    assert np.abs(np.asarray(mirrored["Q"]) - state["Q"]).max() > 1e-3  # not the identity

    def rate(s):
        return numpy_derivatives(np.asarray(s["rho"], np.complex128),
                                 np.asarray(s["Q"], np.float64), np.asarray(s["P"], np.float64), g)

    expected = transform(name, dict(zip(("rho", "Q", "P"), rate(state))), increment=True)
    mirrored_rate = rate(mirrored)
    for key, value in zip(("rho", "Q", "P"), mirrored_rate):
        np.testing.assert_allclose(value, np.asarray(expected[key]), atol=1e-6, err_msg=key)
    orders = physics.order_parameters(state["rho"], state["Q"])
    transformed = physics.order_parameters(mirrored["rho"], mirrored["Q"])
    np.testing.assert_allclose(transformed, order_sign * np.asarray(orders), atol=1e-6)


@pytest.mark.parametrize("kind", ["cnn", "parc"])
@pytest.mark.parametrize("names", [("particle_hole",), ("reflection",),
                                   ("particle_hole", "reflection")])
def test_symmetrized_models_commute_with_their_symmetries(kind, names):
    state = random_state(2, 8)
    plain = small_model(kind)
    symmetric = small_model(kind, **dict.fromkeys(names, True))
    symmetric.set_weights(plain.get_weights())
    for name in names:
        assert np.abs(np.asarray(plain.step(transform(name, state))["Q"]) -
                      np.asarray(transform(name, plain.step(state))["Q"])).max() > 1e-3
        assert_states_close(symmetric.step(transform(name, state)),
                            transform(name, symmetric.step(state)), atol=1e-5)
        if kind == "parc":
            _, rate = symmetric.step(state, return_derivatives=True)
            _, mirrored_rate = symmetric.step(transform(name, state), return_derivatives=True)
            assert_states_close(mirrored_rate, transform(name, rate, increment=True), atol=1e-5)


def test_translation_by_one_site_flips_the_order_parameters():
    state = random_state(3, 8)
    d_rho, d_q = physics.order_parameters(state["rho"], state["Q"])
    stagger = np.where(np.arange(8) % 2 == 0, -1.0, 1.0)
    # Float32 means of 8 values, summed in whatever order: sum_tolerance.
    diagonal = np.diagonal(state["rho"].real, axis1=1, axis2=2)
    atol = {"Q": sum_tolerance(8, np.abs(state["Q"]).max()),
            "rho": sum_tolerance(8, np.abs(diagonal).max())}
    np.testing.assert_allclose(d_q, (stagger * state["Q"]).mean(-1), rtol=0, atol=atol["Q"])
    np.testing.assert_allclose(d_rho, (stagger * diagonal).mean(-1), rtol=0, atol=atol["rho"])
    shifted = shift(state)
    flipped = physics.order_parameters(shifted["rho"], shifted["Q"])
    np.testing.assert_allclose(flipped[0], -d_rho, rtol=0, atol=atol["rho"])
    np.testing.assert_allclose(flipped[1], -d_q, rtol=0, atol=atol["Q"])


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_dropout_acts_only_in_training(kind):
    model = small_model(kind, dropout=0.5)
    state = random_state(4, 8)
    inference = model.step(state)
    assert_states_close(model.step(state), inference, atol=0)
    assert_states_close(model(state), inference, atol=0)
    first, second = model.step(state, training=True), model.step(state, training=True)
    assert np.abs(first["Q"].numpy() - inference["Q"].numpy()).max() > 1e-4
    assert np.abs(first["Q"].numpy() - second["Q"].numpy()).max() > 1e-4


@pytest.mark.parametrize("kind, precision",
                         [("cnn", "float32"), ("parc", "float32"), ("parc", "mixed_bfloat16")])
def test_keras_file_round_trip_gives_identical_outputs(kind, precision, tmp_path):
    model = small_model(kind, n_blocks=2, dropout=0.1, precision=precision,
                        conserve=kind == "parc", particle_hole=kind == "cnn",
                        reflection=kind == "parc")
    state = random_state(2, 8)
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    assert loaded.scales == model.scales and loaded.config.precision == precision
    for ours, theirs in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    assert_states_close(loaded.step(state), model.step(state), atol=0)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_rollout_equals_repeated_steps(kind, jit_compile):
    model = small_model(kind)
    state = random_state(2, 8)
    return_derivatives = model.has_derivatives
    rolled = model.rollout(state, 4, return_derivatives=return_derivatives,
                           jit_compile=jit_compile)
    states, derivatives = rolled if return_derivatives else (rolled, None)
    assert states["rho"].shape == (2, 4, 8, 8) and states["Q"].shape == (2, 4, 8)
    current = state
    for k in range(4):
        if return_derivatives:
            current, derivative = model.step(current, return_derivatives=True)
            assert_states_close({key: v[:, k] for key, v in derivatives.items()}, derivative,
                                atol=1e-5)
        else:
            current = model.step(current)
        # Step k + 1 of the loop (XLA's kernels with jit_compile) against eager steps.
        assert_states_close({key: v[:, k] for key, v in states.items()}, current,
                            atol=kernel_tolerance(1.0, k + 1))
    order = model.rollout(state, 4, order_parameters_only=True, jit_compile=jit_compile)
    expected = physics.order_parameters(states["rho"], states["Q"])
    # Another compiled loop (outputs fused differently) over 4 steps.
    np.testing.assert_allclose(order["Delta_rho"], expected[0], atol=kernel_tolerance(1.0, 4))
    np.testing.assert_allclose(order["Delta_Q"], expected[1], atol=kernel_tolerance(1.0, 4))


def _while_loops(function, *args) -> int:
    """The while loops of a traced function, also those inside its conds' branches."""
    graph = function.get_concrete_function(*args).graph.as_graph_def()
    nodes = [*graph.node, *(node for f in graph.library.function for node in f.node_def)]
    return sum(node.op in ("While", "StatelessWhile") for node in nodes)


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_large_batches_roll_out_as_chains_that_keep_each_trajectory_in_place(kind):
    """A batch of CHAIN_MIN_BATCH or more runs as independent loops over slices of it; each
    trajectory's rollout must be its own, wherever its slice falls, also in a serving graph
    whose batch is known only at run time."""
    model = small_model(kind)
    batch = 3 * autoregressive.CHAIN_BATCH  # three chains
    state = {key: tf.constant(value) for key, value in random_state(batch, 8).items()}
    rolled = model.rollout(state, 3)
    for start in range(0, batch, 8):  # slices below CHAIN_MIN_BATCH: one loop each
        alone = model.rollout({key: value[start:start + 8] for key, value in state.items()}, 3)
        assert_states_close({key: value[start:start + 8] for key, value in rolled.items()},
                            alone, atol=kernel_tolerance(1.0, 3))
    serve = tf.function(lambda state: model.rollout(state, 3), input_signature=[
        {key: tf.TensorSpec([None, *value.shape[1:]], value.dtype)
         for key, value in state.items()}])
    small = {key: value[:autoregressive.CHAIN_MIN_BATCH - 1] for key, value in state.items()}
    for served, expected in ((serve(state), rolled), (serve(small), model.rollout(small, 3))):
        assert_states_close(served, expected, atol=kernel_tolerance(1.0, 3))
    static = tf.function(lambda state: model.rollout(state, 3))
    assert _while_loops(static, state) == 3
    assert _while_loops(static, small) == 1
    assert _while_loops(serve) == 1 + 2  # a chain below CHAIN_MIN_BATCH, two from it on


def test_rollout_takes_a_tensor_step_count_inside_a_function():
    """A serving signature feeds n_steps as an input: one graph for every count."""
    model = small_model("cnn")
    state = {key: tf.constant(value) for key, value in random_state(2, 8).items()}
    serve = tf.function(lambda state, n: model.rollout(state, n, order_parameters_only=True))
    for n_steps in (2, 5):
        served = serve(state, tf.constant(n_steps))
        expected = model.rollout(state, n_steps, order_parameters_only=True)
        assert served["Delta_Q"].shape == (2, n_steps)
        # TensorFlow's kernels (the traced function) against XLA's (the eager small batch).
        np.testing.assert_allclose(served["Delta_Q"], expected["Delta_Q"],
                                   atol=kernel_tolerance(1.0, n_steps))
    assert serve.experimental_get_tracing_count() == 1


def test_rollout_rejects_bad_requests():
    model = small_model("parc")
    state = random_state(1, 8)
    with pytest.raises(ValueError, match="n_steps"):
        model.rollout(state, 0)
    with pytest.raises(ValueError, match="not both"):
        model.rollout(state, 2, return_derivatives=True, order_parameters_only=True)
    with pytest.raises(ValueError, match="chains must be a positive int or None"):
        model.rollout(state, 2, chains=0)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_training_rollout_is_differentiable(mode):
    """The PARC loss needs gradients through a multi-step rollout and the derivatives."""
    model = small_model("parc", dropout=0.2)
    state = {key: tf.constant(value) for key, value in random_state(2, 8).items()}

    def loss_and_grads(state):
        with tf.GradientTape() as tape:
            states, derivatives = model.rollout(state, 3, training=True,
                                                return_derivatives=True)
            loss = (tf.reduce_mean(tf.abs(states["rho"] - state["rho"][:, None]) ** 2)
                    + tf.reduce_mean(states["Q"] ** 2)
                    + tf.reduce_mean(tf.abs(derivatives["rho"]) ** 2))
        return loss, tape.gradient(loss, model.trainable_weights)

    if mode != "eager":
        loss_and_grads = tf.function(loss_and_grads, jit_compile=mode == "xla")
    loss, grads = loss_and_grads(state)
    assert np.isfinite(loss.numpy())
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.path
        assert np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).max() > 0, weight.path


def test_training_chains_give_the_one_loop_loss_and_gradients():
    """`chains` (TrainConfig.chains) splits a training batch into loops run side by side:
    the loss and every gradient must be the single loop's, up to float32 summation order."""
    model = small_model("parc", dropout=0.0)
    state = {key: tf.constant(value) for key, value in random_state(6, 8).items()}

    @tf.function
    def loss_and_grads(chains):
        with tf.GradientTape() as tape:
            states, derivatives = model.rollout(state, 3, training=True, chains=chains,
                                                return_derivatives=True)
            loss = (tf.reduce_mean(tf.abs(states["rho"] - state["rho"][:, None]) ** 2)
                    + tf.reduce_mean((states["Q"] - state["Q"][:, None]) ** 2)
                    + tf.reduce_mean(tf.abs(derivatives["rho"]) ** 2))
        return loss, tape.gradient(loss, model.trainable_weights)

    loss, grads = loss_and_grads(1)
    chained_loss, chained_grads = loss_and_grads(3)
    np.testing.assert_allclose(chained_loss, loss, atol=kernel_tolerance(float(loss), 3))
    for weight, grad, chained in zip(model.trainable_weights, grads, chained_grads):
        np.testing.assert_allclose(chained, grad, err_msg=weight.path,
                                   atol=kernel_tolerance(float(np.abs(grad).max()), 3))
    with pytest.raises(ValueError, match="7 chains need a batch of at least 7, got 6"):
        model.rollout(state, 2, training=True, chains=7)


def test_mixed_bfloat16_training_steps_reduce_the_loss():
    """AdamW on a fixed batch, XLA-compiled as GPU training runs: float32 gradients reach
    every weight through the bfloat16 convolutions."""
    model = small_model("parc", dropout=0.0, precision="mixed_bfloat16")
    state = {key: tf.constant(value) for key, value in random_state(4, 8).items()}
    target = {key: tf.constant(value) for key, value in random_state(4, 8, seed=1).items()}
    optimizer = keras.optimizers.AdamW(learning_rate=3e-3)

    @tf.function(jit_compile=True)
    def train_step():
        with tf.GradientTape() as tape:
            stepped = model.step(state, training=True)
            loss = sum(tf.reduce_mean(tf.abs(stepped[key] - target[key]) ** 2)
                       for key in records.STATE_KEYS)
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss, grads

    loss, grads = train_step()
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad.dtype == tf.float32 and np.abs(grad.numpy()).max() > 0, weight.path
    losses = [loss.numpy()] + [train_step()[0].numpy() for _ in range(5)]
    assert losses[-1] < 0.9 * losses[0], losses


def test_the_same_model_runs_on_any_even_length():
    model = small_model("parc")
    for L in (6, 12):
        state = random_state(1, L)
        rolled = model.rollout(state, 2)
        assert rolled["rho"].shape == (1, 2, L, L) and rolled["P"].shape == (1, 2, L)


def test_conserving_projection_is_the_orthogonal_projection_onto_the_invariants():
    rng = np.random.default_rng(0)
    increment = tf.constant(rng.normal(size=(3, 6, 6, 4)), tf.float32)
    projected = invariants.conserving(increment).numpy()
    rho = projected[..., 0] + 1j * projected[..., 1]
    np.testing.assert_allclose(rho, np.conj(np.swapaxes(rho, 1, 2)), atol=1e-7)
    np.testing.assert_allclose(np.trace(rho.real, axis1=1, axis2=2), 0, atol=1e-6)
    np.testing.assert_array_equal(projected[..., 2:], increment.numpy()[..., 2:])
    np.testing.assert_allclose(invariants.conserving(projected).numpy(), projected, atol=1e-7)
    # The residual is orthogonal to every admissible increment, e.g. the projection itself.
    residual = increment.numpy() - projected
    np.testing.assert_allclose(np.sum(residual * projected, axis=(1, 2, 3)), 0, atol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_conserving_models_keep_rhos_spectrum_over_a_rollout(kind):
    state = random_state(2, 8)
    initial = np.linalg.eigvalsh(state["rho"].astype(np.complex128))[:, None]

    def drifts(model, jit_compile=False):
        rho = model.rollout(state, 30, jit_compile=jit_compile)["rho"].numpy()
        hermiticity = np.abs(rho - np.conj(np.swapaxes(rho, -1, -2))).max()
        spectrum = np.linalg.eigvalsh(0.5 * (rho + np.conj(np.swapaxes(rho, -1, -2))))
        return np.abs(spectrum - initial).max(), hermiticity, rho

    free = small_model(kind)
    conserving = small_model(kind, conserve=True)
    conserving.set_weights(free.get_weights())
    spectrum_free, hermiticity_free, _ = drifts(free)
    spectrum_conserving, hermiticity_conserving, rho = drifts(conserving)
    assert spectrum_free > 1e-2 and hermiticity_free > 1e-2
    assert spectrum_conserving < 1e-4 and hermiticity_conserving < 1e-5
    np.testing.assert_allclose(drifts(conserving, jit_compile=True)[2], rho,
                               atol=kernel_tolerance(1.0, 30))  # XLA against TensorFlow
    # Anchored to the initial spectrum, round-off does not accumulate over long rollouts.
    long = conserving.rollout(state, 300)["rho"].numpy().astype(np.complex128)
    assert np.abs(np.linalg.eigvalsh(long[:, -1]) - initial[:, 0]).max() < 1e-4


def test_conserving_training_rollout_has_finite_gradients():
    """eigh's gradient is singular at degenerate eigenvalues; the projection's is not used."""
    model = small_model("parc", conserve=True)
    state = random_state(2, 8)
    state["rho"] = (np.diag(np.r_[np.ones(4), np.zeros(4)]).astype(np.complex64)
                    * np.ones((2, 1, 1), np.complex64))  # a projector: 4-fold degenerate
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.abs(model.rollout(state, 3, training=True)["rho"]) ** 2)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in gradients)
    assert any(np.abs(g.numpy()).max() > 0 for g in gradients)
