"""Physics of the Holstein model against closed forms and dense-matrix definitions."""
import numpy as np
import pytest
import tensorflow as tf

from numpy_reference import numpy_derivatives as dense_rhs, numpy_rk4
from tf_holstein import physics


def random_state(rng, batch, L):
    a = rng.normal(size=(batch, L, L)) + 1j * rng.normal(size=(batch, L, L))
    return (a + np.conj(np.swapaxes(a, -1, -2))) / 2, rng.normal(size=(batch, L)), \
        rng.normal(size=(batch, L))


def test_stencil_rhs_equals_dense_commutator():
    rho, Q, P = random_state(np.random.default_rng(0), 3, 8)
    got = physics.rhs(tf.constant(rho), tf.constant(Q), tf.constant(P), 0.7)
    for a, b in zip(got, dense_rhs(rho, Q, P, 0.7)):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-14, atol=1e-14)


def test_rhs_in_single_precision_matches_double():
    rho, Q, P = random_state(np.random.default_rng(1), 2, 8)
    single = physics.rhs(tf.constant(rho, tf.complex64), tf.constant(Q, tf.float32),
                         tf.constant(P, tf.float32), 1.0)
    double = physics.rhs(tf.constant(rho), tf.constant(Q), tf.constant(P), 1.0)
    for a, b in zip(single, double):
        assert a.dtype in (tf.complex64, tf.float32)
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_energy_equals_dense_trace():
    rho, Q, P = random_state(np.random.default_rng(2), 2, 8)
    g = 0.8
    H = physics.hamiltonian(tf.constant(Q), g).numpy()
    expected = (np.real(np.trace(H @ rho, axis1=-2, axis2=-1)) + g / 2 * Q.sum(-1)
                + physics.K0 / (2 * physics.ETA) * (P ** 2 + Q ** 2).sum(-1))
    got = physics.energy(tf.constant(rho), tf.constant(Q), tf.constant(P), g).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    # The parts: the electrons' energy at a flat lattice, and what the lattice adds.
    parts = {name: value.numpy() for name, value in
             physics.energy_parts(tf.constant(rho), tf.constant(Q), tf.constant(P), g).items()}
    flat = physics.hamiltonian(tf.zeros_like(tf.constant(Q)), g).numpy()
    np.testing.assert_allclose(parts["hopping"],
                               np.real(np.trace(flat @ rho, axis1=-2, axis2=-1)), rtol=1e-13)
    density = np.real(np.diagonal(rho, axis1=-2, axis2=-1))
    np.testing.assert_allclose(parts["coupling"], -g * (Q * (density - 0.5)).sum(-1),
                               rtol=1e-13)
    np.testing.assert_allclose(parts["lattice_kinetic"],
                               physics.K0 / (2 * physics.ETA) * (P ** 2).sum(-1), rtol=1e-13)


def test_energy_is_stationary_along_the_flow():
    # dE/dt = grad E . F(u) must vanish; check with a central difference along F.
    rho, Q, P = random_state(np.random.default_rng(3), 1, 8)
    g = 1.0
    drho, dQ, dP = dense_rhs(rho, Q, P, g)
    h = 1e-6

    def E(s):
        return physics.energy(tf.constant(rho + s * drho), tf.constant(Q + s * dQ),
                              tf.constant(P + s * dP), g).numpy()

    assert abs((E(h) - E(-h)) / (2 * h)) < 1e-7 * (1 + abs(E(0.0)))


def test_order_parameters_by_hand():
    L = 4
    rho = np.diag([0.2, 0.8, 0.3, 0.7]).astype(complex)[None]
    Q = np.array([[-1.0, 2.0, -3.0, 4.0]])
    d_rho, d_q = physics.order_parameters(tf.constant(rho), tf.constant(Q))
    # s = (-1, +1, -1, +1)
    assert d_rho.numpy()[0] == pytest.approx((-0.2 + 0.8 - 0.3 + 0.7) / L)
    assert d_q.numpy()[0] == pytest.approx((1 + 2 + 3 + 4) / L)


def test_cdw_is_a_fixed_point_with_the_published_amplitude():
    Q = physics.cdw_ground_state(16, 0.5)
    residual = physics.cdw_fixed_point_residual(Q, 0.5).numpy()
    assert np.max(np.abs(residual)) < 1e-10
    np.testing.assert_allclose(np.abs(Q.numpy()), 0.1087, atol=5e-5)
    _, delta_q = physics.order_parameters(tf.zeros([16, 16], tf.complex128), Q)
    assert delta_q > 0  # the documented sign choice: Q_0 < 0


def test_free_electron_ground_state_is_the_half_occupied_mixed_state():
    rho = physics.ground_state(tf.zeros([1, 16], tf.float64), 0.0).numpy()[0]
    assert np.trace(rho).real == pytest.approx(8.0, abs=1e-12)
    # 7 filled levels and two degenerate ones at the Fermi energy with 1/2 each.
    assert np.trace(rho @ rho).real == pytest.approx(7.5, abs=1e-10)
    np.testing.assert_allclose(rho, np.conj(rho.T), atol=1e-14)
    occupations = np.linalg.eigvalsh(rho)
    np.testing.assert_allclose(np.sort(occupations)[[7, 8]], [0.5, 0.5], atol=1e-7)


def test_gapped_ground_state_is_a_pure_projector():
    # L = 2 mod 4 has no level at the Fermi energy: rho^2 = rho.
    rho = physics.ground_state(tf.zeros([1, 10], tf.float64), 0.0).numpy()[0]
    np.testing.assert_allclose(rho @ rho, rho, atol=1e-12)
    assert np.trace(rho).real == pytest.approx(5.0, abs=1e-12)


def test_initial_state_recomputes_rho_for_the_noisy_q():
    rng = np.random.default_rng(4)
    noise = 1e-3 * rng.normal(size=(2, 2, 8))
    rho, Q, P = physics.initial_state(8, 0.5, noise[0], noise[1])
    np.testing.assert_allclose(P.numpy(), noise[1])
    np.testing.assert_allclose(Q.numpy() - physics.cdw_ground_state(8, 0.5).numpy(), noise[0])
    np.testing.assert_allclose(rho.numpy(), physics.ground_state(Q, 0.5).numpy(), atol=1e-14)
    np.testing.assert_allclose(np.trace(rho.numpy(), axis1=1, axis2=2).real, 4.0, atol=1e-12)


def half_filled_state(rng, batch, L):
    """A pure state at half filling (a projector onto L/2 random orbitals) and a random lattice."""
    a = rng.normal(size=(batch, L, L)) + 1j * rng.normal(size=(batch, L, L))
    _, vectors = np.linalg.eigh(a + np.conj(np.swapaxes(a, -1, -2)))
    occupied = vectors[..., : L // 2]
    return occupied @ np.conj(np.swapaxes(occupied, -1, -2)), 0.5 * rng.normal(size=(batch, L)), \
        0.5 * rng.normal(size=(batch, L))


def split(state, time_step, parts, g=1.0):
    return [x.numpy() for x in physics.split_step(*(tf.constant(x) for x in state), g,
                                                   time_step, parts)]


def test_split_step_converges_to_the_exact_flow_at_second_order():
    """Halving the parts of a Strang splitting quarters its error (a fine RK4 is the truth,
    its own error ~1e-13 here)."""
    state = half_filled_state(np.random.default_rng(4), 2, 8)
    exact = numpy_rk4(state, 1.0, 640, dt=0.001)
    errors = [max(np.abs(a - b).max() for a, b in zip(split(state, 0.64, parts), exact))
              for parts in (2, 4, 8)]
    assert errors[-1] < 1e-3
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.6 < coarse / fine < 4.4, errors


def test_split_step_keeps_the_spectrum_and_the_uniform_mode_exactly():
    """Each part is a unitary conjugation of rho and an exact lattice turn: rho's eigenvalues
    and trace stay, and the uniform mode, which the electrons' force does not reach at half
    filling, turns by K0 dt as a free oscillator."""
    state = half_filled_state(np.random.default_rng(5), 2, 8)
    rho, Q, P = split(state, 2.56, 3)
    np.testing.assert_allclose(np.linalg.eigvalsh(rho), np.linalg.eigvalsh(state[0]), atol=1e-12)
    np.testing.assert_allclose(rho, np.conj(np.swapaxes(rho, -1, -2)), atol=1e-14)
    angle = physics.K0 * 2.56
    Q0, P0 = state[1].mean(-1), state[2].mean(-1)
    np.testing.assert_allclose(Q.mean(-1), np.cos(angle) * Q0 + np.sin(angle) * P0, atol=1e-12)
    np.testing.assert_allclose(P.mean(-1), np.cos(angle) * P0 - np.sin(angle) * Q0, atol=1e-12)


def test_split_step_energy_error_stays_bounded_over_many_steps():
    """A composition of exact Hamiltonian flows: at h = 0.32 its energy error after 200 steps
    is no larger than after 20, and below h^2 / 10 (second order)."""
    state = half_filled_state(np.random.default_rng(6), 2, 8)
    g = 1.0

    def energy(s):
        return physics.energy(*(tf.constant(x) for x in s), g).numpy()

    e0, errors, current = energy(state), [], state
    for _ in range(10):
        for _ in range(20):
            current = split(current, 0.64, 2, g)
        errors.append(np.abs(energy(current) - e0).max())
    assert max(errors) < 0.1 * 0.32 ** 2, errors
    assert max(errors[5:]) < 3 * max(errors[:5]), errors
