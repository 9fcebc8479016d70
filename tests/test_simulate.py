"""The RK4 simulator against an independent NumPy RK4, conservation laws and the saving protocol."""
import numpy as np
import pytest
import tensorflow as tf

from numpy_reference import numpy_derivatives, numpy_rk4
from tf_holstein import physics, simulate

DT = 0.01


def random_state(L, batch=3, seed=0):
    """A random Hermitian rho with every entry non-zero, and random Q, P."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(batch, L, L)) + 1j * rng.normal(size=(batch, L, L))
    rho = 0.5 * np.eye(L) + 0.1 * (a + np.conj(np.swapaxes(a, 1, 2)))
    return rho, 0.5 * rng.normal(size=(batch, L)), 0.5 * rng.normal(size=(batch, L))


def quench_state(L, g_i, batch=2, seed=0):
    """The protocol's pre-quench states (docs/physics.md, noise 1e-4) as numpy arrays."""
    rng = np.random.default_rng(seed)
    noise = 1e-4 * rng.normal(size=(2, batch, L))
    return tuple(x.numpy() for x in physics.initial_state(L, g_i, noise[0], noise[1]))


def assert_states_close(got, expected, atol):
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=atol)


def test_pack_unpack_round_trip():
    rho, Q, P = random_state(8)
    assert_states_close(simulate.unpack(simulate.pack(rho, Q, P)), (rho, Q, P), atol=1e-15)


@pytest.mark.parametrize("L", [6, 8])
def test_band_derivatives_equal_dense_ones(L):
    rho, Q, P = random_state(L)
    band = simulate.derivatives(simulate.pack(rho, Q, P), tf.constant(0.7, tf.float64))
    assert_states_close(simulate.unpack(band), numpy_derivatives(rho, Q, P, 0.7), atol=1e-14)


def truncated(rho, W):
    """rho with the entries of |i - j| > W (periodic distance) set to zero."""
    L = rho.shape[-1]
    distance = np.abs(np.arange(L)[:, None] - np.arange(L)[None, :])
    return np.where(np.minimum(distance, L - distance) <= W, rho, 0)


@pytest.mark.parametrize("W", [1, 2, 3])
def test_a_truncated_band_evolves_as_the_truncated_matrix_within_the_band(W):
    """On a band of width W < L/2 the derivative is the dense one of rho with the entries
    beyond the band set to zero, read inside the band; outside, unpack gives zeros."""
    L = 8
    rho, Q, P = random_state(L)
    state = simulate.pack(rho, Q, P, bandwidth=W)
    assert state.X.shape == (L, W + 1, 3)
    assert_states_close(simulate.unpack(state), (truncated(rho, W), Q, P), atol=1e-15)
    expected = numpy_derivatives(truncated(rho, W), Q, P, 0.7)
    got = simulate.unpack(simulate.derivatives(state, tf.constant(0.7, tf.float64)))
    assert_states_close(got, (truncated(expected[0], W), *expected[1:]), atol=1e-14)


def test_a_truncated_band_keeps_the_trace_and_is_refused_beyond_half_the_chain():
    L = 8
    rho, Q, P = random_state(L)
    state = simulate.integrate(simulate.pack(rho, Q, P, bandwidth=2), 200, 0.8, DT)
    np.testing.assert_allclose(np.trace(simulate.unpack(state)[0], axis1=1, axis2=2).real,
                               np.trace(rho, axis1=1, axis2=2).real, atol=1e-12)
    for W in (0, L // 2 + 1):
        with pytest.raises(ValueError, match=f"bandwidth {W} must lie in"):
            simulate.pack(rho, Q, P, bandwidth=W)


def test_one_step_eagerly_matches_numpy():
    rho, Q, P = random_state(8)
    got = simulate.rk4_step(simulate.pack(rho, Q, P), tf.constant(0.8, tf.float64),
                            tf.constant(DT, tf.float64))
    assert_states_close(simulate.unpack(got), numpy_rk4((rho, Q, P), 0.8, 1), atol=1e-14)


@pytest.mark.parametrize("L", [6, 8])
def test_1000_steps_match_numpy_rk4(L):
    state = random_state(L)
    expected = numpy_rk4(state, 0.8, 1000)
    assert np.abs(expected[1] - state[1]).max() > 0.1  # the state has really moved
    got = simulate.unpack(simulate.integrate(simulate.pack(*state), 1000, 0.8, DT))
    assert_states_close(got, expected, atol=1e-10)


def free_solution(rho, Q, P, time):
    """The closed-form solution at g = 0: rho turns under the hopping alone, U rho U^+ with
    U = exp(-i H0 t) diagonal in plane waves; each oscillator turns at angular frequency K0."""
    L = rho.shape[-1]
    k = 2 * np.pi * np.arange(L) / L
    waves = np.exp(1j * np.outer(np.arange(L), k)) / np.sqrt(L)  # columns: plane waves
    energies = -2 * physics.HOPPING * np.cos(k)
    U = waves @ np.diag(np.exp(-1j * energies * time)) @ waves.conj().T
    angle = physics.K0 * time
    return (U @ rho @ U.conj().T, Q * np.cos(angle) + P * np.sin(angle),
            P * np.cos(angle) - Q * np.sin(angle))


def test_rk4_converges_at_fourth_order_to_the_closed_form():
    """At g = 0 the equations have a closed form; halving dt divides RK4's error at a fixed
    time by 2^4 = 16 (the error constant's own variation allows 25%)."""
    rho, Q, P = random_state(8)
    time = 3.2
    exact = free_solution(rho, Q, P, time)
    errors = []
    for dt in (0.2, 0.1, 0.05):
        got = simulate.unpack(simulate.integrate(simulate.pack(rho, Q, P), round(time / dt),
                                                 0.0, dt))
        errors.append(max(np.abs(np.asarray(a) - b).max() for a, b in zip(got, exact)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert errors[-1] > 1e-12  # far above rounding, so the ratio measures truncation
    np.testing.assert_allclose(ratios, 16, rtol=0.25)


@pytest.mark.parametrize("g_i, g_f", [(0.5, 0.8), (0.0, 1.0)], ids=["shallow", "deep"])
def test_energy_conserved_over_100_time_units(g_i, g_f):
    rho, Q, P = quench_state(16, g_i)
    E0 = physics.energy(tf.constant(rho), tf.constant(Q), tf.constant(P), g_f).numpy()
    end = simulate.unpack(simulate.integrate(simulate.pack(rho, Q, P), 10_000, g_f, DT))
    assert np.abs(end[1].numpy() - Q).max() > 1e-2  # the quench has really happened
    E = physics.energy(*end, g_f).numpy()
    np.testing.assert_allclose(E, E0, rtol=1e-9, atol=0)


def test_trace_and_hermiticity_along_a_trajectory():
    L = 16
    state = simulate.pack(*quench_state(L, 0.0))
    for _ in range(10):
        state = simulate.integrate(state, 1000, 1.0, DT)
        # The band stores Im rho_ii and both copies of each rho_{i, i+L/2}: they must stay
        # consistent with a Hermitian rho.
        X, Y = state.X.numpy(), state.Y.numpy()
        np.testing.assert_allclose(Y[:, 0], 0, atol=1e-12)
        np.testing.assert_allclose(X[:L // 2, L // 2], X[L // 2:, L // 2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(Y[:L // 2, L // 2], -Y[L // 2:, L // 2], rtol=0, atol=1e-12)
        rho = simulate.unpack(state)[0].numpy()
        np.testing.assert_allclose(np.trace(rho, axis1=1, axis2=2), L / 2, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(rho, np.conj(np.swapaxes(rho, 1, 2)))


@pytest.mark.parametrize("save_interval", [5, 6])
def test_simulate_saves_the_protocol_in_chunks(save_interval):
    rho, Q, P = random_state(8)
    # pre_steps spans two device calls of at most chunk_steps * save_interval steps.
    pre_steps, saved_steps, phases, g = 19, 7, np.array([0, 2, save_interval - 1]), 0.8
    steps = []
    inputs = (tf.constant(rho), tf.constant(Q), tf.constant(P))
    chunks = list(simulate.simulate(*inputs, g=g, dt=DT, save_interval=save_interval,
                                    saved_steps=saved_steps, pre_steps=pre_steps, phases=phases,
                                    chunk_steps=3, on_steps=steps.append))
    assert sum(steps) == pre_steps + saved_steps * save_interval and len(steps) == 5
    assert [(c["first_saved"], c["first_mid"], c["rho"].shape[1], c["mid_rho"].shape[1])
            for c in chunks] == [(0, 0, 4, 3), (4, 3, 3, 3), (7, 6, 1, 1)]
    out = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]
           if k.endswith(("rho", "Q", "P"))}
    assert out["rho"].dtype == out["mid_rho"].dtype == np.complex64
    assert out["Q"].dtype == out["mid_P"].dtype == np.float32
    assert out["rho"].shape == (3, saved_steps + 1, 8, 8)
    assert out["mid_Q"].shape == (3, saved_steps, 8)

    for b, phase in enumerate(phases):
        state = numpy_rk4((rho[b:b + 1], Q[b:b + 1], P[b:b + 1]), g, pre_steps + phase)
        for s in range(saved_steps + 1):
            assert_states_close((out[k][b, s] for k in ("rho", "Q", "P")),
                                (x[0] for x in state), atol=2e-6)
            if s == saved_steps:
                break
            mid = numpy_rk4(state, g, save_interval // 2)
            assert_states_close((out[k][b, s] for k in ("mid_rho", "mid_Q", "mid_P")),
                                (x[0] for x in mid), atol=2e-6)
            state = numpy_rk4(mid, g, save_interval - save_interval // 2)


def test_simulate_rejects_bad_arguments():
    rho, Q, P = random_state(8)
    protocol = dict(g=1.0, dt=DT, save_interval=4, saved_steps=2)
    with pytest.raises(ValueError, match="phases"):
        next(simulate.simulate(rho, Q, P, phases=[0, 1, 4], **protocol))
    with pytest.raises(ValueError, match="rho0"):
        next(simulate.simulate(rho[:, :6], Q, P, **protocol))
