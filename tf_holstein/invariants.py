"""Projections of a state image (or of an increment) onto what the exact dynamics keeps.

The equations of motion keep rho Hermitian with Tr rho = L/2, its spectrum (the flow is
unitary) and the total energy, and move the lattice's uniform mode as a free oscillator. A
learned step's small violations accumulate over a long rollout; these functions remove them.
"""
from __future__ import annotations

import math

import tensorflow as tf

from tf_holstein import physics

def conserving(increment: tf.Tensor) -> tf.Tensor:
    """The orthogonal projection of an image increment onto those the exact dynamics allows:
    rho's part Hermitian (real part symmetric, imaginary antisymmetric) and trace-free.

    The equations of motion keep rho Hermitian and Tr rho = L/2 exactly; a network's small
    systematic violations accumulate over a long rollout (a trace drifting by 1e-2 per step
    leaves half filling within a few hundred steps). Projecting never moves a prediction
    away from a true increment, which lies in the subspace.
    """
    transposed = tf.transpose(increment, [0, 2, 1, 3])
    real = 0.5 * (increment[..., 0] + transposed[..., 0])
    imag = 0.5 * (increment[..., 1] - transposed[..., 1])
    diagonal = tf.linalg.diag_part(real)
    mean = tf.reduce_mean(diagonal, axis=-1, keepdims=True)
    real -= tf.linalg.diag(tf.broadcast_to(mean, tf.shape(diagonal)))
    return tf.concat([real[..., None], imag[..., None], increment[..., 2:]], axis=-1)


def with_uniform_mode(image: tf.Tensor, increment: tf.Tensor, time_step: float | None,
                      residual: bool = False) -> tf.Tensor:
    """`increment` (of `image`, masked) with the site means of its Q and P parts set to the
    exact motion of the lattice's uniform mode (Q0, P0) = site means of (Q, P); with
    `time_step` None `increment` is a rate du/dt; with `residual` it corrects a step that
    moves the mode exactly already, and its means are set to zero.

    At half filling sum_i (Re rho_ii - 1/2) = 0, so dQ0/dt = K0 P0, dP0/dt = -K0 Q0: the
    uniform mode is a free oscillator that no other degree of freedom drives or feels
    (a uniform Q only shifts every level alike). Over a step it turns by K0 dt. The data
    start it at rest, so a model that lets it drift feeds its networks states they never saw.
    """
    Q0 = tf.reduce_mean(tf.linalg.diag_part(image[..., 2]), axis=-1)
    P0 = tf.reduce_mean(tf.linalg.diag_part(image[..., 3]), axis=-1)
    if residual:
        targets = (tf.zeros_like(Q0), tf.zeros_like(P0))
    elif time_step is None:
        targets = (physics.K0 * P0, -physics.K0 * Q0)
    else:
        cos, sin = math.cos(physics.K0 * time_step), math.sin(physics.K0 * time_step)
        targets = (Q0 * (cos - 1.0) + P0 * sin, -Q0 * sin + P0 * (cos - 1.0))
    channels = []
    for channel, target in zip((2, 3), targets):
        diagonal = tf.linalg.diag_part(increment[..., channel])
        diagonal += (target - tf.reduce_mean(diagonal, axis=-1))[:, None]
        channels.append(tf.linalg.diag(diagonal))
    return tf.concat([increment[..., :2], tf.stack(channels, axis=-1)], axis=-1)


def _hermitian_rho(image: tf.Tensor) -> tf.Tensor:
    """The Hermitian part of the image's rho, complex [batch, L, L]."""
    rho = tf.complex(image[..., 0], image[..., 1])
    return 0.5 * (rho + tf.linalg.adjoint(rho))


def spectrum(image: tf.Tensor) -> tf.Tensor:
    """The eigenvalues of the image's rho (its Hermitian part), ascending: [batch, L]."""
    # Complex from TensorFlow's kernel, real from XLA's.
    return tf.math.real(tf.linalg.eigvalsh(_hermitian_rho(image)))


def with_spectrum(image: tf.Tensor, eigenvalues: tf.Tensor) -> tf.Tensor:
    """`image` with rho replaced by the nearest matrix (Frobenius norm) with the given
    ascending `eigenvalues`: rho's own eigenvectors, the eigenvalues matched in order.

    The von Neumann equation is unitary, rho(t) = U rho(0) U^+, so rho's eigenvalues never
    change; projecting onto them after each step (a projection method of geometric
    integration) keeps a long rollout on that manifold, where small errors otherwise make
    the eigenvalues spread and the state blow up. The projection's gradient is taken as the
    identity (straight through): eigh's is singular at the degenerate eigenvalues rho has.
    """
    _, vectors = tf.linalg.eigh(_hermitian_rho(image))
    weights = tf.complex(eigenvalues, tf.zeros_like(eigenvalues))[..., None, :]
    projected = tf.matmul(vectors * weights, vectors, adjoint_b=True)
    correction = tf.stack([tf.math.real(projected), tf.math.imag(projected)], axis=-1) \
        - image[..., :2]
    return image + tf.pad(tf.stop_gradient(correction), [[0, 0], [0, 0], [0, 0], [0, 2]])


# Relative energy errors below this (about 100 float32 roundings) are not corrected.
ENERGY_TOLERANCE = 1e-5


def double_energy(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, coupling: float) -> tf.Tensor:
    """`physics.energy` of a single-precision state, summed in double precision."""
    return physics.energy(tf.cast(rho, tf.complex128), tf.cast(Q, tf.float64),
                          tf.cast(P, tf.float64), coupling)


def with_energy(image: tf.Tensor, energy: tf.Tensor, coupling: float, iterations: int = 3
                ) -> tf.Tensor:
    """`image` with rho moved along its unitary orbit until the total energy is `energy`
    ([batch], float64, as `double_energy`): rho -> exp(e A) rho exp(-e A) with
    A = [H(Q), rho], e by Newton steps.

    The exact flow conserves the energy; a learned step's small errors need not, and off the
    data they can heat the electrons until the charge order melts. Along A the energy changes
    fastest (dE/de = ||A||_F^2) while rho's spectrum stays, so this composes with
    `with_spectrum`. Each Newton step turns rho by at most 0.2 rad (|e| ||A||_F <= 0.2, and
    the generator's eigenvalues are at most ||A||_F), so a far-off state is corrected over a
    few steps rather than thrown. Errors within ENERGY_TOLERANCE of |energy| are left alone:
    near a stationary state ||A|| is small and a Newton step on rounding noise would turn rho
    far. The gradient is straight through, as `with_spectrum`'s.
    """
    rho = tf.stop_gradient(tf.complex(image[..., 0], image[..., 1]))
    Q = tf.stop_gradient(tf.linalg.diag_part(image[..., 2]))
    P = tf.stop_gradient(tf.linalg.diag_part(image[..., 3]))
    H = tf.cast(physics.hamiltonian(Q, coupling), rho.dtype)
    tolerance = tf.cast(ENERGY_TOLERANCE * (1.0 + tf.abs(energy)), Q.dtype)
    target = rho
    for _ in range(iterations):
        A = tf.matmul(H, target) - tf.matmul(target, H)
        norm = tf.sqrt(tf.reduce_sum(tf.math.real(A * tf.math.conj(A)), axis=[-2, -1]))
        error = tf.cast(double_energy(target, Q, P, coupling) - energy, norm.dtype)
        error = tf.where(tf.abs(error) > tolerance, error, 0.0)
        limit = 0.2 / tf.maximum(norm, 1e-12)
        e = tf.clip_by_value(-error / tf.maximum(norm * norm, 1e-24), -limit, limit)
        # exp(e A) = exp(-i e B) with B = i A, Hermitian for Hermitian rho; its Hermitian
        # part is taken so that eigh, which reads one triangle, sees the whole matrix.
        B = 1j * A
        generator, vectors = tf.linalg.eigh(0.5 * (B + tf.linalg.adjoint(B)))
        angles = -e[:, None] * tf.math.real(generator)
        phases = tf.exp(tf.complex(tf.zeros_like(angles), angles))
        U = tf.matmul(vectors * phases[..., None, :], vectors, adjoint_b=True)
        target = tf.matmul(tf.matmul(U, target), U, adjoint_b=True)
    correction = tf.stack([tf.math.real(target - rho), tf.math.imag(target - rho)], axis=-1)
    return image + tf.pad(tf.stop_gradient(correction), [[0, 0], [0, 0], [0, 0], [0, 2]])
