"""An independent plain-NumPy Holstein integrator for the tests: docs/physics.md with a
dense H in complex128, and classical RK4. Shares nothing with the library but its
constants."""
import numpy as np

from tf_holstein.physics import ETA, K0


def numpy_derivatives(rho, Q, P, g):
    """(drho, dQ, dP) for rho [B, L, L], Q, P [B, L]."""
    L = Q.shape[-1]
    ring = np.roll(np.eye(L), 1, axis=1) + np.roll(np.eye(L), -1, axis=1)
    H = -ring - g * Q[:, :, None] * np.eye(L)
    drho = -1j * (H @ rho - rho @ H)
    dP = ETA * g * (np.einsum("bii->bi", rho).real - 0.5) - K0 * Q
    return drho, K0 * P, dP


def numpy_rk4(state, g, n_steps, dt=0.01):
    """n_steps classical RK4 steps of length dt from state = (rho, Q, P)."""
    for _ in range(n_steps):
        k1 = numpy_derivatives(*state, g)
        k2 = numpy_derivatives(*(u + dt / 2 * k for u, k in zip(state, k1)), g)
        k3 = numpy_derivatives(*(u + dt / 2 * k for u, k in zip(state, k2)), g)
        k4 = numpy_derivatives(*(u + dt * k for u, k in zip(state, k3)), g)
        state = tuple(u + dt / 6 * (a + 2 * b + 2 * c + d)
                      for u, a, b, c, d in zip(state, k1, k2, k3, k4))
    return state
