"""A unitary Trotter-Suzuki integrator of the equations of motion, the classical method to
weigh learned models against beside the exact RK4 (`simulate`) and the split step
(`physics.split_step`).

The conserved energy E = Tr(H_hop rho) - g sum_i Q_i (n_i - 1/2) + K0/(2 ETA) sum_i (P_i^2 +
Q_i^2) (n_i = Re rho_ii) is a sum of three parts whose flows are exact and cost O(L^2):

- hopping on the even bonds (2k, 2k+1), and on the odd bonds (2k+1, 2k+2 mod L): the bonds
  of one set commute, so rho -> U rho U^+ with U = exp(i t tau sigma_x) on every bond, a
  rotation of 2 x 2 blocks; Q and P do not move;
- the on-site coupling with the lattice: [diag(Q), rho] keeps every n_i, so each (Q_i, P_i)
  turns about its displaced rest point Q*_i = ETA g (n_i - 1/2) / K0 as a free oscillator,
  and rho_ij gains the phase exp(i g int (Q_i - Q_j) dt), known in closed form.

Strang's symmetric composition of the three is second order in the step; a symmetric
composition of Strang steps (`COMPOSITIONS`) raises it to fourth. Every part is unitary on
rho (spectrum, trace and Hermiticity kept to rounding) and symplectic on (Q, P), so the
energy error stays bounded instead of drifting. No eigendecomposition: everything is
elementwise work on rho's 2 x 2 blocks, which XLA fuses.
"""
from __future__ import annotations

import math

import tensorflow as tf

from tf_holstein.physics import ETA, HOPPING, K0

# Weights of the Strang steps that make one step of each order. Fourth order: Suzuki's
# five-step fractal (Suzuki, Phys. Lett. A 146, 319, 1990), whose error constant is several
# times smaller than that of Yoshida's three-step "triple jump": its backward step is -0.66
# of the step instead of -1.70.
_SUZUKI = 1.0 / (4.0 - 4.0 ** (1.0 / 3.0))
COMPOSITIONS: dict[int, tuple[float, ...]] = {
    2: (1.0,),
    4: (_SUZUKI, _SUZUKI, 1.0 - 4.0 * _SUZUKI, _SUZUKI, _SUZUKI),
}


def bond_flow(rho: tf.Tensor, tau: float, odd: bool) -> tf.Tensor:
    """The exact flow of the hopping on the even (or odd) bonds over tau: U rho U^+ with
    U = exp(i t tau sigma_x) = c + i s sigma_x on every bond (c = cos(t tau),
    s = sin(t tau)), acting on rho's 2 x 2 blocks of a pair of rows and a pair of columns."""
    L = rho.shape[-1]
    if odd:  # the odd bonds are the even ones of the chain shifted by one site
        rho = tf.roll(rho, [-1, -1], [-2, -1])
    c, s = math.cos(HOPPING * tau), math.sin(HOPPING * tau)
    # Constants made in rho's precision: tf.cast of a Python number rounds it through float32.
    c2, cross, s2 = (tf.constant(x, rho.dtype) for x in (c * c, 1j * s * c, s * s))
    blocks = tf.reshape(rho, [-1, L // 2, 2, L // 2, 2])
    a, b = blocks[:, :, 0, :, 0], blocks[:, :, 0, :, 1]
    d, e = blocks[:, :, 1, :, 0], blocks[:, :, 1, :, 1]
    # u [[a, b], [d, e]] u^+ with u = [[c, i s], [i s, c]], entry by entry.
    top = tf.stack([c2 * a + cross * (d - b) + s2 * e, c2 * b + cross * (e - a) + s2 * d], -1)
    bottom = tf.stack([c2 * d + cross * (a - e) + s2 * b, c2 * e + cross * (b - d) + s2 * a],
                      -1)
    out = tf.reshape(tf.stack([top, bottom], 2), tf.shape(rho))
    return tf.roll(out, [1, 1], [-2, -1]) if odd else out


def onsite_flow(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float, tau: float
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The exact flow over tau of the on-site coupling and the lattice, the densities held:
    (Q - Q*, P) turns by K0 tau, and rho_ij gains exp(i g (A_i - A_j)) with A the time
    integral of Q over the interval."""
    density = tf.math.real(tf.linalg.diag_part(rho))
    rest = ETA * g / K0 * (density - 0.5)
    cos, sin = math.cos(K0 * tau), math.sin(K0 * tau)
    offset = Q - rest
    area = rest * tau + (offset * sin + P * (1.0 - cos)) / K0  # int_0^tau Q dt
    phase = tf.exp(tf.complex(tf.zeros_like(area), g * area))
    rho = rho * phase[..., :, None] * tf.math.conj(phase)[..., None, :]
    return rho, rest + cos * offset + sin * P, cos * P - sin * offset


def trotter_step(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float, h: float,
                 order: int = 2, substeps: int = 1) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`substeps` Trotter-Suzuki steps of length h at the given order (`COMPOSITIONS`):
    each Strang step of length w h is on-site(w h / 2), even(w h / 2), odd(w h),
    even(w h / 2), on-site(w h / 2); neighbouring on-site halves, within a step and
    between steps, are merged into one flow (the flows of one part form a group).

    rho complex [..., L, L] (L even), Q, P real [..., L]; the precision is theirs.
    """
    if order not in COMPOSITIONS:
        raise ValueError(f"Trotter-Suzuki order {order} is not available; choose one of "
                         f"{sorted(COMPOSITIONS)}")
    if rho.shape[-1] % 2:
        raise ValueError(f"the even/odd bond splitting needs an even L, got {rho.shape[-1]}")
    if substeps < 1:
        raise ValueError(f"need substeps >= 1, got {substeps}")
    lengths = [w * h for w in COMPOSITIONS[order]]

    def composed(rho, Q, P, last_onsite):
        """One step after its first on-site half, ending with an on-site flow of
        `last_onsite`: its own last half, or that merged with the next step's first."""
        for k, tau in enumerate(lengths):
            rho = bond_flow(rho, 0.5 * tau, odd=False)
            rho = bond_flow(rho, tau, odd=True)
            rho = bond_flow(rho, 0.5 * tau, odd=False)
            onsite = 0.5 * (tau + lengths[k + 1]) if k + 1 < len(lengths) else last_onsite
            rho, Q, P = onsite_flow(rho, Q, P, g, onsite)
        return rho, Q, P

    rho, Q, P = onsite_flow(rho, Q, P, g, 0.5 * lengths[0])
    if substeps > 1:
        merged = 0.5 * (lengths[-1] + lengths[0])
        rho, Q, P = tf.while_loop(lambda *_: True, lambda *s: composed(*s, merged),
                                  (rho, Q, P), maximum_iterations=substeps - 1)
    return composed(rho, Q, P, 0.5 * lengths[-1])
