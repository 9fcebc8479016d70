"""The model options beyond the paper: the broadcast and coupling embeddings, PARC's
state-aware integrator, rho's propagation at a frozen lattice and the exact uniform lattice
mode keep the symmetries of the dynamics (with particle-hole and reflection averaging too),
save and reload, and train."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import codec, experiment, models, networks, physics, records, symmetries
from tf_holstein.configs import ModelConfig, get_config

from numpy_reference import numpy_derivatives
from test_models import assert_states_close, build, random_state, shift, transform

VARIANTS = [("cnn", {"embedding": "broadcast"}),
            ("parc", {"embedding": "broadcast"}),
            ("parc", {"integrator_input": "state_and_derivative"}),
            ("parc", {"embedding": "broadcast", "integrator_input": "state_and_derivative"}),
            ("cnn", {"embedding": "coupling"}),
            ("parc", {"embedding": "coupling", "integrator_input": "state_and_derivative"}),
            ("cnn", {"propagate_rho": True, "coupling": 1.0, "time_step": 2.56}),
            ("parc", {"propagate_rho": True, "coupling": 1.0, "time_step": 2.56,
                      "integrator_input": "state_and_derivative"}),
            ("cnn", {"uniform_mode": True, "time_step": 2.56}),
            ("parc", {"uniform_mode": True, "time_step": 2.56}),
            ("cnn", {"split_steps": 1, "coupling": 1.0, "time_step": 2.56}),
            ("parc", {"split_steps": 2, "coupling": 1.0, "time_step": 2.56,
                      "uniform_mode": True}),
            ("cnn", {"conserve_energy": True, "coupling": 1.0})]


def variant(kind: str, **options) -> models.HolsteinModel:
    """A small model whose output convs are not at zero, so that a step does something."""
    keras.utils.set_random_seed(0)
    return build(kind, channels=8, zero_init_output=False, **options)


def embedded_pair(embedding: str) -> tuple[dict, np.ndarray]:
    """A random state and the embedding of its image beside the doubled image (8 channels),
    checked to keep those 8 channels first and unchanged."""
    state = random_state(2, 6)
    image = codec.encode(state)
    pair = tf.concat([image, 2.0 * image], axis=-1)
    embedded = networks.embed(pair, embedding).numpy()
    assert embedded.shape == (2, 6, 6, 8 + 2 * networks.EMBEDDING_CHANNELS[embedding])
    np.testing.assert_array_equal(embedded[..., :8], pair)
    return state, embedded


def test_broadcast_channels_hold_each_sites_q_and_p_along_its_row_and_column():
    state, embedded = embedded_pair("broadcast")
    Q, P = state["Q"], state["P"]
    expected = [Q[:, :, None], Q[:, None, :], P[:, :, None], P[:, None, :]]
    for k, values in enumerate(expected):  # the first image's, then the doubled one's
        np.testing.assert_array_equal(embedded[..., 8 + k], np.broadcast_to(values, (2, 6, 6)))
        np.testing.assert_array_equal(embedded[..., 12 + k],
                                      np.broadcast_to(2.0 * values, (2, 6, 6)))


def test_coupling_channels_hold_the_coupling_term_of_the_equations_of_motion():
    state, embedded = embedded_pair("coupling")
    Q, rho = state["Q"].astype(np.float64), state["rho"].astype(np.complex128)
    coupling = (Q[:, :, None] - Q[:, None, :]) * rho  # -i g times it is in d rho / dt
    for k, factor in ((8, 1.0), (10, 4.0)):  # the second image's Q and rho are both doubled
        np.testing.assert_allclose(embedded[..., k], factor * coupling.real, atol=1e-6)
        np.testing.assert_allclose(embedded[..., k + 1], factor * coupling.imag, atol=1e-6)
    assert np.abs(np.diagonal(embedded[..., 8:], axis1=1, axis2=2)).max() == 0


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_untrained_propagating_model_advances_rho_exactly_at_a_frozen_lattice(kind):
    """With its output conv at zero a model's step is its physics alone: rho -> U rho U^+,
    U = exp(-i H(Q) dt) from NumPy in double precision, Q and P unchanged."""
    g, dt = 1.0, 2.56
    model = build(kind, channels=8, propagate_rho=True, coupling=g, time_step=dt)
    state = random_state(3, 8)
    stepped = model.step(state)
    L = state["Q"].shape[-1]
    ring = np.roll(np.eye(L), 1, axis=1) + np.roll(np.eye(L), -1, axis=1)
    H = -ring - g * state["Q"].astype(np.float64)[:, :, None] * np.eye(L)
    energies, vectors = np.linalg.eigh(H)
    U = vectors * np.exp(-1j * dt * energies)[:, None, :] @ np.swapaxes(vectors, 1, 2)
    expected = U @ state["rho"].astype(np.complex128) @ np.conj(np.swapaxes(U, 1, 2))
    # float32 eigenpairs (rounding 6e-8 of |H| ~ 3) turned into phases E dt ~ 8: ~1e-6.
    np.testing.assert_allclose(stepped["rho"].numpy(), expected, atol=2e-5)
    assert np.abs(expected - state["rho"]).max() > 0.1  # the propagation is not trivial
    for key in ("Q", "P"):
        np.testing.assert_array_equal(stepped[key].numpy(), state[key])


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_untrained_split_step_model_takes_the_split_step(kind):
    """With its output conv at zero a `split_steps` model's step is `physics.split_step`
    (here in double precision); float32 eigenpairs turned into phases E dt ~ 8: ~1e-6."""
    model = build(kind, channels=8, split_steps=2, coupling=1.0, time_step=2.56,
                  uniform_mode=True)
    state = random_state(3, 8)
    expected = physics.split_step(tf.constant(state["rho"], tf.complex128),
                                  tf.constant(state["Q"], tf.float64),
                                  tf.constant(state["P"], tf.float64), 1.0, 2.56, 2)
    stepped = model.step(state)
    for key, value in zip(records.STATE_KEYS, expected):
        np.testing.assert_allclose(stepped[key].numpy(), value.numpy(), atol=2e-5)
        assert np.abs(value.numpy() - state[key]).max() > 0.1  # the step is not trivial


@pytest.mark.parametrize("kind", ["cnn", "parc"])
def test_conserve_energy_keeps_a_rollouts_energy_and_spectrum(kind):
    """With `conserve_energy` (and `conserve`) every step of a rollout ends at its start's
    energy and rho's spectrum, where the same weights without it change the energy."""
    state = random_state(3, 8)
    plain = variant(kind, conserve=True)
    model = variant(kind, conserve=True, conserve_energy=True, coupling=1.0)
    model.set_weights(plain.get_weights())

    def energy(s):
        return physics.energy(tf.cast(s["rho"], tf.complex128), tf.cast(s["Q"], tf.float64),
                              tf.cast(s["P"], tf.float64), 1.0).numpy()

    start = energy(state)
    assert np.abs(energy(plain.step(state)) - start).max() > 1e-2
    rollout = model.rollout(state, 10)
    # float32 rounding of an energy summed over L^2 terms of order one: ~1e-5.
    for t in range(10):
        at = {key: value[:, t].numpy() for key, value in rollout.items()}
        np.testing.assert_allclose(energy(at), start, atol=1e-4)
        np.testing.assert_allclose(np.linalg.eigvalsh(at["rho"]),
                                   np.linalg.eigvalsh(state["rho"]), atol=1e-5)


@pytest.mark.parametrize("physics_step", [{"propagate_rho": True}, {"split_steps": 2}])
@pytest.mark.parametrize("name", list(symmetries.SYMMETRIES))
def test_the_physics_steps_commute_with_the_symmetries(name, physics_step):
    """The exact step does (symmetries.SYMMETRIES), and so do the flows the physics steps are
    made of: H(-Q) = -S H(Q) S for particle-hole, H(R Q) = R H(Q) R for the reflection.
    A symmetrised model relies on it: it computes its physics step for u alone."""
    model = build("cnn", channels=8, coupling=1.0, time_step=2.56,
                  **physics_step)  # untrained: the physics step
    state = random_state(2, 8)
    assert_states_close(model.step(transform(name, state)), transform(name, model.step(state)),
                        atol=2e-5)


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_variants_add_only_input_conv_weights(kind, options):
    """Each extra input channel costs one 3 x 3 kernel per hidden channel of the input conv."""
    plain, model = variant(kind), variant(kind, **options)
    C, k2 = 8, 9
    per_image = 4 + networks.EMBEDDING_CHANNELS[options.get("embedding", "diagonal")]
    extra = (per_image - 4) * C * k2 * (2 if kind == "parc" else 1)  # each network's input
    if options.get("integrator_input") == "state_and_derivative":
        extra += per_image * C * k2  # the state's image into the integrator
    assert model.count_params() - plain.count_params() == extra + (
        4 if options.get("integrator_input") else 0)  # + the state's 4 input scales
    state = random_state(3, 8)
    stepped = model.step(state)
    for key in records.STATE_KEYS:
        assert stepped[key].shape == state[key].shape and stepped[key].dtype == state[key].dtype


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_variants_commute_with_translations(kind, options):
    model = variant(kind, **options)
    state = random_state(2, 10)
    stepped = model.step(state)
    assert np.abs(stepped["Q"].numpy() - state["Q"]).max() > 1e-3  # the step is not trivial
    for sites in (1, 3):
        assert_states_close(model.step(shift(state, sites)), shift(stepped, sites))


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_variants_with_symmetry_averaging_commute_with_the_symmetries(kind, options):
    model = variant(kind, particle_hole=True, reflection=True, **options)
    state = random_state(2, 8)
    for name in symmetries.SYMMETRIES:
        assert_states_close(model.step(transform(name, state)),
                            transform(name, model.step(state)), atol=1e-5)


@pytest.mark.parametrize("kind, options", VARIANTS)
def test_variants_round_trip_through_a_keras_file(kind, options, tmp_path):
    model = variant(kind, conserve=True, **options)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    state = random_state(2, 8)
    assert_states_close(loaded.step(state), model.step(state), atol=0)


def test_state_aware_integrator_sees_the_state():
    """The paper's integrator maps equal derivatives to equal increments; given the state
    too, it does not."""
    state = random_state(1, 8)
    other = {key: value.copy() for key, value in state.items()}
    other["Q"] = other["Q"] + 0.05
    for options, differs in (({}, False), ({"integrator_input": "state_and_derivative"}, True)):
        model = variant("parc", **options)
        derivative = codec.encode(model.step(state, return_derivatives=True)[1])

        def integrate(u):
            return model.integrator([codec.encode(u), derivative] if options else [derivative])

        a, b = integrate(state), integrate(other)
        assert (np.abs(a.numpy() - b.numpy()).max() > 1e-4) == differs


def test_propagation_needs_the_protocol():
    with pytest.raises(ValueError, match="propagate_rho needs the protocol's coupling"):
        variant("cnn", propagate_rho=True, coupling=1.0)
    with pytest.raises(ValueError, match="uniform_mode needs the protocol's time step"):
        variant("parc", uniform_mode=True)
    with pytest.raises(ValueError, match="split_steps needs the protocol's coupling"):
        variant("parc", split_steps=2, time_step=2.56)
    with pytest.raises(ValueError, match="replaces propagate_rho"):
        variant("cnn", split_steps=2, propagate_rho=True, coupling=1.0, time_step=2.56)
    with pytest.raises(ValueError, match="split_steps must be a whole number"):
        variant("cnn", split_steps=-1, coupling=1.0, time_step=2.56)
    with pytest.raises(ValueError, match="replaces propagate_rho"):
        ModelConfig(split_steps=1, propagate_rho=True).validate()
    with pytest.raises(ValueError, match="conserve_energy needs the protocol's coupling"):
        variant("cnn", conserve_energy=True)


def test_the_uniform_mode_is_a_free_oscillator_and_moves_exactly():
    """At half filling the exact rates of the site means are dQ0/dt = K0 P0, dP0/dt = -K0 Q0;
    with `uniform_mode` a model's step turns (Q0, P0) by K0 dt and PARC's rate is exact,
    whatever its networks output."""
    state = random_state(2, 8, seed=5)
    state["Q"] = state["Q"] + np.float32([[0.3], [-0.1]])  # displace the uniform mode
    state["P"] = state["P"] + np.float32([[0.05], [0.2]])
    filling = np.trace(state["rho"], axis1=1, axis2=2).real / 8
    state["rho"] = state["rho"] + ((0.5 - filling)[:, None, None] * np.eye(8)).astype(np.complex64)
    Q0, P0 = state["Q"].astype(np.float64).mean(-1), state["P"].astype(np.float64).mean(-1)
    _, dQ, dP = numpy_derivatives(state["rho"].astype(np.complex128),
                                  state["Q"].astype(np.float64),
                                  state["P"].astype(np.float64), 1.0)
    np.testing.assert_allclose(dQ.mean(-1), physics.K0 * P0, atol=1e-12)
    np.testing.assert_allclose(dP.mean(-1), -physics.K0 * Q0, atol=1e-7)  # at Tr rho = L/2
    angle = physics.K0 * 2.56
    expected = (Q0 * np.cos(angle) + P0 * np.sin(angle), -Q0 * np.sin(angle) + P0 * np.cos(angle))
    for kind in ("cnn", "parc"):
        plain = variant(kind, time_step=2.56)
        model = variant(kind, uniform_mode=True, time_step=2.56)
        stepped = model.step(state)
        assert np.abs(plain.step(state)["Q"].numpy().mean(-1) - expected[0]).max() > 1e-3
        for key, value in zip(("Q", "P"), expected):
            np.testing.assert_allclose(stepped[key].numpy().mean(-1), value, atol=1e-6)
        if kind == "parc":
            rate = model.step(state, return_derivatives=True)[1]
            np.testing.assert_allclose(rate["Q"].numpy().mean(-1), physics.K0 * P0, atol=1e-6)
            np.testing.assert_allclose(rate["P"].numpy().mean(-1), -physics.K0 * Q0, atol=1e-6)


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ValueError, match="embedding must be one of 'diagonal', 'broadcast', "
                                         "'coupling', got 'rows'"):
        variant("cnn", embedding="rows")
    with pytest.raises(ValueError, match="applies to PARC only"):
        variant("cnn", integrator_input="state_and_derivative")
    with pytest.raises(ValueError, match="PARC only"):
        ModelConfig(kind="cnn", integrator_input="state_and_derivative").validate()


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    {"embedding": "broadcast", "integrator_input": "state_and_derivative"},
    {"propagate_rho": True, "integrator_input": "state_and_derivative", "reflection": True,
     "uniform_mode": True},
    {"split_steps": 1, "reflection": True, "uniform_mode": True, "conserve_energy": True}])
def test_a_parc_variant_trains(tmp_path, options):
    """The trainer builds every option from the config (and the dataset's protocol), the
    loss falls, and the export keeps the options. One stage and no test split: the second
    stage and the evaluation run the same code for every option (tests/test_train.py)."""
    config = get_config("smoke_deep")
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **options),
                                 data=dataclasses.replace(config.data, n_test=0),
                                 train=dataclasses.replace(config.train,
                                                           stages=config.train.stages[:1]))
    summary = experiment.run(config, tmp_path / "data", tmp_path / "run", progress=False)
    from test_train import scalar_events

    losses = sorted(scalar_events(tmp_path / "run")["loss/total"])
    assert losses[-1][1] < 0.5 * losses[0][1], losses
    exported = summary["config"]["model"]
    assert {key: exported[key] for key in options} == options
