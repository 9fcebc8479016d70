"""Physics of the 1D semiclassical Holstein model (docs/physics.md).

Pure TensorFlow maths, batched over any leading axes and generic in
precision (complex64/float32 or complex128/float64): the simulator and the
data pipeline both use it. Energies are in units of the hopping t, time in
units of hbar/t. A state is (rho, Q, P): rho complex [..., L, L] with
rho_ij = <c_j^dagger c_i>, Q and P real [..., L].
"""
from __future__ import annotations

import math

import tensorflow as tf

HOPPING = 1.0  # t, the unit of energy
K0 = 0.3  # dQ/dt = K0 P; the spring constant in the same units
ETA = 0.8  # G1 = ETA * g multiplies the electronic force on P
KT = 1e-8  # temperature of the Fermi-Dirac ground state
CDW_SEED_AMPLITUDE = 0.25  # staggered start of the self-consistent CDW iteration


def stagger(L: int | tf.Tensor, dtype: tf.DType = tf.float64) -> tf.Tensor:
    """s_i = (-1)^(i+1) for 0-based sites: -1 on even sites, +1 on odd ones. [L]

    L may be a tensor, so that graphs serving any chain length can use it.
    """
    return tf.cast(2 * (tf.range(L) % 2) - 1, dtype)


def commutator_with_h(m: tf.Tensor, Q: tf.Tensor, g: float) -> tf.Tensor:
    """[H(Q), m] as an O(L^2) stencil, for any matrix m [..., L, L] and Q [..., L].

    `(H m)_ij = -t (m_{i+1,j} + m_{i-1,j}) - g Q_i m_ij` and
    `(m H)_ij = -t (m_{i,j+1} + m_{i,j-1}) - g Q_j m_ij` on a periodic chain.
    """
    hop = (tf.roll(m, -1, axis=-2) + tf.roll(m, 1, axis=-2)
           - tf.roll(m, -1, axis=-1) - tf.roll(m, 1, axis=-1))
    # g multiplies the real Q difference first: casting a Python float straight to a
    # complex dtype would round it through float32.
    coupling = tf.cast(g * (Q[..., :, None] - Q[..., None, :]), m.dtype)
    return tf.cast(-HOPPING, m.dtype) * hop - coupling * m


def rhs(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float
        ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Ehrenfest equations of motion at coupling g: (drho/dt, dQ/dt, dP/dt).

    drho/dt = -i [H(Q), rho], dQ/dt = K0 P, dP/dt = ETA g (Re rho_ii - 1/2) - K0 Q.
    """
    drho = tf.complex(tf.constant(0.0, Q.dtype), tf.constant(-1.0, Q.dtype)) * \
        commutator_with_h(rho, Q, g)
    density = tf.math.real(tf.linalg.diag_part(rho))
    dQ = K0 * P
    dP = ETA * g * (density - 0.5) - K0 * Q
    return drho, dQ, dP


ENERGY_PARTS = ("hopping", "coupling", "lattice_potential", "lattice_kinetic")


def energy_parts(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float) -> dict[str, tf.Tensor]:
    """The four parts of the conserved energy (ENERGY_PARTS), each [...]: hopping
    -t sum_i (rho_{i+1,i} + rho_{i-1,i}), coupling -g sum_i Q_i (Re rho_ii - 1/2), lattice
    potential K0/(2 ETA) sum Q^2 and kinetic K0/(2 ETA) sum P^2 energy."""
    real = tf.math.real(rho)
    stiffness = K0 / (2.0 * ETA)
    return {
        "hopping": -HOPPING * tf.reduce_sum(tf.linalg.diag_part(
            tf.roll(real, -1, axis=-2) + tf.roll(real, 1, axis=-2)), axis=-1),
        "coupling": -g * tf.reduce_sum(Q * (tf.linalg.diag_part(real) - 0.5), axis=-1),
        "lattice_potential": stiffness * tf.reduce_sum(Q * Q, axis=-1),
        "lattice_kinetic": stiffness * tf.reduce_sum(P * P, axis=-1)}


def energy(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float) -> tf.Tensor:
    """The conserved total energy E = Re Tr(H rho) + (g/2) sum Q + K0/(2 ETA) sum (P^2 + Q^2),
    the sum of `energy_parts`.

    Tr(H rho) = -t sum_i (rho_{i+1,i} + rho_{i-1,i}) - g sum_i Q_i rho_ii. [...]
    """
    return tf.add_n(list(energy_parts(rho, Q, P, g).values()))


def order_parameters(rho: tf.Tensor, Q: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """CDW order parameters (Delta_rho, Delta_Q) = (1/L) sum_i s_i (Re rho_ii, Q_i). [...]"""
    s = stagger(tf.shape(Q)[-1], Q.dtype)
    density = tf.math.real(tf.linalg.diag_part(rho))
    return tf.reduce_mean(s * density, axis=-1), tf.reduce_mean(s * Q, axis=-1)


def hamiltonian(Q: tf.Tensor, g: float) -> tf.Tensor:
    """The dense first-quantised H(Q) [..., L, L], real; for diagonalisation only."""
    L = tf.shape(Q)[-1]  # dynamic: a serving graph takes any chain length
    ring = tf.roll(tf.eye(L, dtype=Q.dtype), 1, axis=-1) + tf.roll(tf.eye(L, dtype=Q.dtype), -1,
                                                                     axis=-1)
    return -HOPPING * ring - g * tf.linalg.diag(Q)


def lattice_rotation(Q: tf.Tensor, P: tf.Tensor, time: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The free lattice's exact flow over `time`: dQ/dt = K0 P, dP/dt = -K0 Q turn every
    site's (Q, P) by the angle K0 * time."""
    cos, sin = math.cos(K0 * time), math.sin(K0 * time)
    return cos * Q + sin * P, cos * P - sin * Q


def frozen_lattice_modes(Q: tf.Tensor, g: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The eigenpairs (energies [..., L], real vectors [..., L, L]) of H(Q), constants for
    gradients: eigh's gradient is singular at the degenerate levels of a uniform lattice,
    and what uses them (a model's physics step) holds no trainable weights."""
    return tf.linalg.eigh(hamiltonian(tf.stop_gradient(Q), g))


def frozen_lattice_propagator(Q: tf.Tensor, g: float, time: float) -> tf.Tensor:
    """exp(-i H(Q) time), complex [..., L, L]: the electrons' exact evolution with the
    lattice held at Q. H(Q) is real symmetric, so U = V exp(-i E time) V^T."""
    energies, vectors = frozen_lattice_modes(Q, g)
    phases = tf.exp(tf.complex(tf.zeros_like(energies), -time * energies))
    vectors = tf.cast(vectors, phases.dtype)
    return tf.matmul(vectors * phases[..., None, :], vectors, adjoint_b=True)


def frozen_lattice_flow(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float, time: float
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """The exact flow over `time` of the electrons and of the force they exert, with the
    lattice held at Q: rho -> U rho U^+ (`frozen_lattice_propagator`), and P gains
    ETA g times the time integral of (Re rho_ii - 1/2). Returns (rho, P).

    In the eigenbasis of H(Q) (`frozen_lattice_modes`: energies E, real vectors V)
    rho_ab(s) = rho_ab exp(-i w_ab s) with w_ab = E_a - E_b, so the integral of rho(s) over
    the interval is time * V (rho_ab exp(-i w_ab time / 2) sinc(w_ab time / 2)) V^T.
    """
    energies, vectors = frozen_lattice_modes(Q, g)
    half = 0.5 * time * (energies[..., :, None] - energies[..., None, :])
    sin = tf.sin(half)
    # sin(x) / x, with its limit 1 where x = 0 (every diagonal entry, degenerate levels).
    sinc = tf.math.divide_no_nan(sin, half) + tf.cast(tf.equal(half, 0.0), half.dtype)
    phase = tf.complex(tf.cos(half), -sin)  # exp(-i w time / 2)
    vectors = tf.cast(vectors, rho.dtype)
    eigen_rho = tf.matmul(vectors, tf.matmul(rho, vectors), adjoint_a=True)

    def from_eigenbasis(m: tf.Tensor) -> tf.Tensor:
        return tf.matmul(tf.matmul(vectors, m), vectors, adjoint_b=True)

    halfway = eigen_rho * phase  # rho's eigenbasis entries turned over half the interval
    # diag(V m V^T)_i = sum_b (V m)_ib V_ib
    mean_density = tf.math.real(tf.reduce_sum(
        tf.matmul(vectors, halfway * tf.cast(sinc, rho.dtype)) * vectors, axis=-1))
    return from_eigenbasis(halfway * phase), P + ETA * g * time * (mean_density - 0.5)


def split_step(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, g: float, time_step: float,
               substeps: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A Strang splitting of the equations of motion over `time_step`, in `substeps` equal
    parts h, each the free lattice's turn over h / 2, `frozen_lattice_flow` over h, and
    the turn over h / 2 again. Returns (rho, Q, P).

    H = [Tr H(Q) rho + (g/2) sum Q] + [lattice's P^2 + Q^2] splits into two parts whose
    flows are exact; their symmetric composition is second order in h and keeps rho's
    spectrum exactly. Its energy error stays bounded while h is small against the inverse of
    the electrons' frequencies (up to the bandwidth 4t); at the deep quench's saved interval
    of 2.56 in one part it is not (docs/results-deep.md).
    """
    h = time_step / substeps
    for _ in range(substeps):
        Q, P = lattice_rotation(Q, P, 0.5 * h)
        rho, P = frozen_lattice_flow(rho, Q, P, g, h)
        Q, P = lattice_rotation(Q, P, 0.5 * h)
    return rho, Q, P


@tf.function(reduce_retracing=True)
def fermi_occupations(energies: tf.Tensor, n_electrons: float, kT: float = KT) -> tf.Tensor:
    """Fermi-Dirac occupations [..., L] of sorted levels holding n_electrons in total.

    The chemical potential is found by bisection. Levels degenerate at the Fermi
    energy (within << kT) share the remaining electrons equally: at L = 0 mod 4
    and g = 0 two levels get 1/2 each, a mixed state as docs/physics.md intends.
    """
    lo = tf.reduce_min(energies, axis=-1, keepdims=True) - 1.0
    hi = tf.reduce_max(energies, axis=-1, keepdims=True) + 1.0

    def occupation(mu: tf.Tensor) -> tf.Tensor:
        # 1 / (exp(x) + 1) written with tanh so that |x| ~ 1e8 cannot overflow.
        return 0.5 * (1.0 - tf.tanh((energies - mu) / (2.0 * kT)))

    # 200 halvings shrink any bracket below float64 resolution.
    for _ in tf.range(200):
        mu = 0.5 * (lo + hi)
        too_few = tf.reduce_sum(occupation(mu), axis=-1, keepdims=True) < n_electrons
        lo = tf.where(too_few, mu, lo)
        hi = tf.where(too_few, hi, mu)
    return occupation(0.5 * (lo + hi))


def ground_state(Q: tf.Tensor, g: float) -> tf.Tensor:
    """Half-filled Fermi-Dirac ground-state density matrix of H(Q) at coupling g.

    Q: float64 [..., L]. Returns rho complex128 [..., L, L] with Tr rho = L/2;
    rho = V diag(f) V^T from the (real) eigenvectors V of H.
    """
    Q = tf.convert_to_tensor(Q, tf.float64)
    L = Q.shape[-1]
    energies, vectors = tf.linalg.eigh(hamiltonian(Q, g))
    f = fermi_occupations(energies, tf.constant(L / 2, tf.float64))
    rho = tf.einsum("...in,...n,...jn->...ij", vectors, f, vectors)
    return tf.cast(rho, tf.complex128)


def cdw_fixed_point_residual(Q: tf.Tensor, g: float) -> tf.Tensor:
    """Q - ETA g (n(Q) - 1/2) / K0, zero for the self-consistent CDW. [..., L]"""
    n = tf.math.real(tf.linalg.diag_part(ground_state(Q, g)))
    return Q - ETA * g * (n - 0.5) / K0


def cdw_ground_state(L: int, g: float, tol: float = 1e-13, max_iter: int = 10_000) -> tf.Tensor:
    """Self-consistent CDW displacements Q [L] at coupling g > 0 (docs/physics.md).

    Iterates Q <- ETA g (n - 1/2) / K0 from the staggered Q_i = 0.25 s_i, whose sign
    makes Delta_Q > 0. Raises RuntimeError if the iteration does not converge.
    """
    Q = CDW_SEED_AMPLITUDE * stagger(L)
    for _ in range(max_iter):
        step = cdw_fixed_point_residual(Q, g)
        Q = Q - step
        if float(tf.reduce_max(tf.abs(step))) < tol:
            return Q
    raise RuntimeError(f"CDW self-consistency did not converge in {max_iter} iterations "
                       f"(L={L}, g={g}); last change {float(tf.reduce_max(tf.abs(step))):.2e}")


def initial_state(L: int, g_i: float, noise_Q: tf.Tensor, noise_P: tf.Tensor
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pre-quench states (rho, Q, P) at coupling g_i with given noise [B, L] on Q and P.

    The ground state (the CDW for g_i > 0, Q = 0 for g_i = 0) with P = 0, then the
    noise is added to Q and P, and rho is recomputed as the ground state of H at
    g_i with the noisy Q. Returns complex128 [B, L, L], float64 [B, L], [B, L].
    """
    Q0 = cdw_ground_state(L, g_i) if g_i > 0 else tf.zeros([L], tf.float64)
    Q = Q0[None, :] + tf.convert_to_tensor(noise_Q, tf.float64)
    P = tf.convert_to_tensor(noise_P, tf.float64) + tf.zeros_like(Q)
    return ground_state(Q, g_i), Q, P
