"""The classical integrators behind `--model`: their order, what they conserve, and that
RK4 at the data's own time step is the simulator that made the data."""
import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import baselines, integrators, physics, records, simulate

from test_models import random_state

G = 1.0
EPS32 = float(np.finfo(np.float32).eps)


def _double(state):
    return (tf.constant(state["rho"], tf.complex128), tf.constant(state["Q"], tf.float64),
            tf.constant(state["P"], tf.float64))


def _rk4(state, time, dt=1e-4):
    """The state after `time` by RK4 at a step far below any tested one: the reference."""
    band = simulate.integrate(simulate.pack(*state), round(time / dt), G, dt)
    return simulate.unpack(band)


def _distance(a, b):
    return max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize("order", sorted(integrators.COMPOSITIONS))
def test_trotter_converges_at_its_order(order):
    """Halving the step divides the error after a fixed time by 2^order (to 25%), at steps
    where the error is far above double-precision rounding."""
    state = _double(random_state(2, 8, seed=3))
    time = 1.28
    reference = _rk4(state, time)
    steps = (8, 16, 32) if order == 2 else (4, 8, 16)
    errors = [_distance(integrators.trotter_step(*state, G, time / n, order, n), reference)
              for n in steps]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(np.abs(ratios / 2 ** order - 1) < 0.25), (errors, ratios)


def test_trotter_is_unitary_and_its_energy_error_stays_bounded():
    """Every part is an exact flow: rho keeps its spectrum (so trace and purity) and stays
    Hermitian to rounding whatever the step, and the energy error of a symplectic
    splitting oscillates instead of drifting: at a step of 0.16 it is no larger after 400
    steps than its largest over the first 40."""
    rho, Q, P = _double(random_state(2, 8, seed=4))
    spectrum = np.linalg.eigvalsh(rho.numpy())
    energy = physics.energy(rho, Q, P, G).numpy()
    step = tf.function(lambda r, q, p: integrators.trotter_step(r, q, p, G, 0.16, 2, 10))
    errors = []
    for _ in range(40):
        rho, Q, P = step(rho, Q, P)
        errors.append(np.abs(physics.energy(rho, Q, P, G).numpy() - energy).max())
    # 400 steps of four flows each, every flow rounding each entry a few times: in the
    # worst case the roundings add up.
    rounding = 400 * 4 * 4 * np.finfo(np.float64).eps
    assert np.abs(rho.numpy() - np.conj(np.swapaxes(rho.numpy(), 1, 2))).max() < rounding
    assert np.abs(np.linalg.eigvalsh(rho.numpy()) - spectrum).max() < rounding
    assert max(errors[-4:]) <= max(errors[:4]) * 1.5 + rounding, errors


def test_bond_flows_are_the_exponentials_of_the_bond_hamiltonians():
    """bond_flow(rho, tau) = U rho U^+ with U = expm(-i H_bonds tau), H_bonds the hopping
    -t on the even (or odd) bonds alone, computed densely."""
    L, tau = 8, 0.37
    rho = tf.constant(random_state(1, L, seed=5)["rho"], tf.complex128)
    for odd in (False, True):
        hopping = np.zeros((L, L))
        for i in range(int(odd), L, 2):
            hopping[i, (i + 1) % L] = hopping[(i + 1) % L, i] = -physics.HOPPING
        U = tf.linalg.expm(tf.constant(-1j * tau * hopping, tf.complex128))
        expected = U @ rho @ tf.linalg.adjoint(U)
        assert _distance([integrators.bond_flow(rho, tau, odd)], [expected]) < 1e-14


def test_onsite_flow_solves_its_equations():
    """onsite_flow over tau equals RK4 (dt 1e-3, error ~1e-12) on its own equations: drho_ij/dt =
    i g (Q_i - Q_j) rho_ij, dQ/dt = K0 P, dP/dt = ETA g (n - 1/2) - K0 Q."""
    rho, Q, P = _double(random_state(2, 6, seed=6))
    tau, dt = 0.9, 1e-3
    r, q, p = rho, Q, P
    density = tf.math.real(tf.linalg.diag_part(rho))

    def rate(r, q, p):
        phase = tf.cast(G * (q[..., :, None] - q[..., None, :]), tf.complex128)
        return (1j * phase * r, physics.K0 * p,
                physics.ETA * G * (density - 0.5) - physics.K0 * q)

    for _ in range(round(tau / dt)):
        k1 = rate(r, q, p)
        k2 = rate(*(x + 0.5 * dt * k for x, k in zip((r, q, p), k1)))
        k3 = rate(*(x + 0.5 * dt * k for x, k in zip((r, q, p), k2)))
        k4 = rate(*(x + dt * k for x, k in zip((r, q, p), k3)))
        r, q, p = (x + dt / 6 * (a + 2 * b + 2 * c + d)
                   for x, a, b, c, d in zip((r, q, p), k1, k2, k3, k4))
    assert _distance(integrators.onsite_flow(rho, Q, P, G, tau), (r, q, p)) < 1e-10


def test_rk4_at_the_datas_time_step_reproduces_exact(smoke_dataset, smoke_meta):
    """`rk4:dt` (its own compiled loop) and `exact` (the simulator that made the data) take
    the same RK4 steps from the same float32 states: their outputs, rounded to float32,
    differ by at most a rounding of float32 (the float64 sums may be ordered differently)."""
    truth = records.load_split(smoke_dataset, "test")
    initial = {key: truth[key][:, 0] for key in records.STATE_KEYS}
    steps = smoke_meta["T"]
    exact = baselines.baseline_model(baselines.EXACT, smoke_meta).rollout(initial, steps)
    rk4 = baselines.baseline_model(f"rk4:{smoke_meta['config']['dt']}", smoke_meta)
    assert rk4.precision == "float64"
    ours = rk4.rollout(initial, steps)
    for key in records.STATE_KEYS:
        bound = 2 * EPS32 * np.abs(exact[key]).max()
        assert ours[key].dtype == exact[key].dtype and ours[key].shape == exact[key].shape
        assert np.abs(ours[key] - exact[key]).max() <= bound, key


@pytest.mark.parametrize("method", ["rk4", "trotter2", "trotter4"])
def test_single_precision_follows_double(smoke_meta, method):
    """`:float32` runs the same method in single precision: over the 12 steps of the smoke
    protocol it stays within a few thousand float32 roundings of the double-precision
    rollout (each of about 100 substeps rounds every entry a few times)."""
    state = random_state(2, smoke_meta["L"], seed=7)
    spec = f"{method}:{smoke_meta['time_step'] / 4}"
    double = baselines.baseline_model(spec, smoke_meta).rollout(state, 12)
    single = baselines.baseline_model(f"{spec}:float32", smoke_meta)
    assert single.precision == "float32"
    out = single.rollout(state, 12)
    for key in records.STATE_KEYS:
        assert np.abs(out[key] - double[key]).max() < 5e3 * EPS32 * np.abs(double[key]).max()


def test_trotter_baseline_steps_like_the_integrator(smoke_meta):
    """`trotter2:DT` is `integrators.trotter_step` over each saved step, recorded in stored
    precision; a rollout in two calls equals one call (each restarts from its input)."""
    state = random_state(2, smoke_meta["L"], seed=8)
    time_step = smoke_meta["time_step"]
    model = baselines.baseline_model(f"trotter2:{time_step / 2}", smoke_meta)
    out = model.rollout(state, 3)
    current = _double(state)
    for step in range(3):
        current = integrators.trotter_step(*current, smoke_meta["config"]["g_f"],
                                           time_step / 2, 2, 2)
        for key, value in zip(records.STATE_KEYS, current):
            np.testing.assert_allclose(out[key][:, step], value.numpy(), atol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("rk4:0.03", "must divide the saved interval"),
    ("rk4:-1", "positive time step"),
    ("trotter2:abc", "positive time step"),
    ("rk4:0.04:float16", "option 'float16' is not understood"),
    ("trotter2:0.04:band4", "option 'band4' is not understood"),
    ("rk4:0.04:band0", "bandW with W a whole number >= 1"),
    ("rk4:0.04:band20", "bandwidth 20 exceeds L/2 = 16"),
    ("split:0", "N, a whole number of parts per saved step >= 1"),
    ("split:two", "expected N, a whole number"),
    ("rk4", "not a baseline spec"),
])
def test_bad_specs_are_refused_with_the_reason(spec, message):
    meta = {"config": {"g_f": 1.0, "dt": 0.01, "L": 32}, "time_step": 2.56}
    assert baselines.is_baseline(spec)
    with pytest.raises(ValueError, match=message):
        baselines.baseline_model(spec, meta)


def test_paths_are_not_baselines():
    assert not baselines.is_baseline("runs/deep_L32")
    assert not baselines.is_baseline("saved_models/deep_L32")
    assert baselines.is_baseline("trotter4:0.32:float32")
