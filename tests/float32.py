"""Tolerances for comparing two float32 evaluations of the same model, derived from float32.

Two runs of one model may use different kernels: XLA's or TensorFlow's, chosen by batch
size, graph or eager mode, and the CPU's vector width and FMA. They differ only in the
order of float32 sums, and rounding is all that separates their results.
"""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23: one float32 unit relative to a value
# A 3x3 convolution over C <= 32 channels sums K = 9 C <= 288 products; reordering such a
# sum moves it by about sqrt(K) <= 17 units of the terms' magnitude, a step chains a few
# convolutions (input, residual blocks, output) and the increment they produce is a small
# difference of larger activations. 2^7 units of the state's scale per step holds that
# with room (measured: 1-36 units, XLA against TensorFlow kernels, also with XLA limited to
# SSE4.2); a different model (one changed weight) moves a step by orders more.
KERNEL_ULPS = 2 ** 7


def kernel_tolerance(scale: float, steps: int = 1) -> float:
    """The largest |a - b| of a float32 model's results over `steps` steps of a rollout
    that does not amplify errors (short, non-chaotic) when only its kernels differ: each
    step adds KERNEL_ULPS units of the values' scale."""
    return KERNEL_ULPS * EPS32 * scale * steps


def eigh_tolerance(L: int, h_norm: float, duration: float) -> float:
    """The largest change of a state propagated for `duration` through eigendecompositions of
    an L x L Hermitian H (exp(-i H h) from eigh, as a split step does) when another kernel
    computes them. A backward-stable eigensolver is exact for some H + E with
    ||E|| <= O(L) EPS32 ||H||; two solvers' eigenvalues may thus differ by ~L EPS32 ||H||,
    a phase error that grows linearly over the propagated time."""
    return L * EPS32 * h_norm * duration


def sum_tolerance(n_terms: int, scale: float) -> float:
    """The largest change of a float32 sum or mean of `n_terms` values of magnitude <= scale
    (an order parameter, say) when evaluated in another order: each addition rounds once."""
    return n_terms * EPS32 * scale
