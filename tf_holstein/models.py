"""The paper's two models as Keras models: the standard CNN and PARC (docs/training.md).

A state is the dict `{'rho': complex64 [batch, L, L], 'Q': float32 [batch, L],
'P': float32 [batch, L]}`, in physical units (energies in units of t). One step
advances it by the dataset's prediction interval:

    standard CNN:  u -> u + N(u)
    PARC:          u -> u + S(D(u)),  D(u) ~ du/dt at the mid-interval state

Each network sees a 4-channel L x L image (`encode`): Re rho, Im rho, Q and P
on diagonals; its inputs are divided by max-abs scales of the training data and
its outputs multiplied by them (paper Appendix A). The architecture and every
constant follow the reference PyTorch implementation, so that its checkpoints
load (`tf_holstein.convert`) and reproduce its outputs.

Two options go beyond the paper (both off by default, so the reference's checkpoints
load unchanged). The coupling term g (Q_i - Q_j) rho_ij of d rho_ij / dt needs Q_i and Q_j
at pixel (i, j), which a diagonal-only 3 x 3 stack of radius R sees only for |i - j| <= R.
`embedding="broadcast"` adds each image's Q and P broadcast along rows (Q_i at every
(i, j)) and along columns (Q_j); `embedding="coupling"` adds the products (Q_i - Q_j) rho_ij
themselves (real and imaginary parts), so that the whole right-hand side of the equations of
motion is linear in the network's input. PARC's `integrator_input="state_and_derivative"` feeds the
integrator the state beside the derivative (as PARCv2 does), so that it can correct
errors of its input state instead of only integrating D(u).

`propagate_rho=True` advances rho exactly under the electrons' Hamiltonian H(Q) with the
lattice frozen at the step's start, rho -> U rho U^+ with U = exp(-i H(Q) dt), and the
networks learn only what that leaves: the lattice's motion and its back-action on rho. Over
the deep quench's step (dt = 2.56 hbar/t) the free hopping carries rho up to 7 sites, beyond a
small network's reach, while this propagation costs one L x L eigendecomposition per step.
`split_steps=n` goes further: the whole state takes a Strang splitting of the exact
equations of motion in n parts (`physics.split_step`: the electrons and their force exactly
at a frozen lattice, the free lattice's turn exactly), and the networks learn its residual.

Exact symmetries and invariants the networks need not learn (all off by default):
`particle_hole` and `reflection` average each step over the orbit of those symmetries of the
equations of motion, so that it commutes with them; `uniform_mode` moves the lattice's
uniform mode, a free oscillator at half filling, exactly; `conserve` keeps rho's spectrum and
`conserve_energy` the total energy at their values at a rollout's start.

With `precision="mixed_bfloat16"` the networks' convolutions compute in bfloat16
(`tf_holstein.layers`); the weights, the state and its update, the scalings and
the layer norms stay float32, and the state interface keeps its dtypes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import keras
import tensorflow as tf

from tf_holstein import physics
from tf_holstein.layers import PreActResNet
from tf_holstein.records import SCALE_KEYS, STATE_KEYS

State = dict[str, tf.Tensor]
# Inference rollouts of batch * L * L up to this run faster XLA-compiled; larger ones run
# faster on TensorFlow's oneDNN kernels (measured on 2 CPU cores, benchmarks/models.py).
XLA_MAX_PIXELS = 8 * 32 * 32
# Training windows of up to this many steps are unrolled into straight-line code instead of
# a tf.while_loop, whose gradient stacks every step's intermediates in TensorLists: 5% more
# samples/s for the tiny CNN at n_step 8 (benchmarks/models.py's train_tiny, one process).
UNROLL_MAX_STEPS = 16
# Inference rollouts of CHAIN_MIN_BATCH or more trajectories on CPUs run as independent
# chains, one while loop per slice of about CHAIN_BATCH trajectories (at least two):
# TensorFlow runs the loops side by side, so one chain's small serial ops fill the other's
# idle gaps and each chain's activations stay nearer the cache. Tiny CNN on 2 cores, L = 32:
# +4-29% sample-steps/s at batch 16-512 (docs/notes/performance-history.md).
CHAIN_MIN_BATCH = 16
CHAIN_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Size of each network of a model (docs/training.md)."""

    channels: int
    n_blocks: int
    dropout: float = 0.2
    kernel_size: int = 3


# How a network sees a 4-channel image: as is ("diagonal", the paper's), with Q and P also
# broadcast along rows and columns ("broadcast"), or with (Q_i - Q_j) rho_ij ("coupling"):
# the extra channels per image.
EMBEDDING_CHANNELS = {"diagonal": 0, "broadcast": 4, "coupling": 2}
EMBEDDINGS = tuple(EMBEDDING_CHANNELS)
# What PARC's integrator sees: the derivative (the paper's) or the state and the derivative.
INTEGRATOR_INPUTS = ("derivative", "state_and_derivative")

PRESETS: dict[str, Architecture] = {
    "tiny": Architecture(channels=16, n_blocks=1),  # shallow quench, standard CNN: 5,364 params
    "medium": Architecture(channels=128, n_blocks=4),  # deep quench, PARC: 1,187,972 per network
}


def encode(state: Mapping[str, Any]) -> tf.Tensor:
    """The state as an image `[batch, L, L, 4]`: [Re rho, Im rho, diag(Q), diag(P)]."""
    rho = tf.cast(state["rho"], tf.complex64)
    Q = tf.cast(state["Q"], tf.float32)
    P = tf.cast(state["P"], tf.float32)
    if rho.shape.rank != 3 or Q.shape.rank != 2 or P.shape.rank != 2:
        raise ValueError(f"a state is rho [batch, L, L], Q and P [batch, L]; got shapes "
                         f"{rho.shape}, {Q.shape}, {P.shape}")
    return tf.stack([tf.math.real(rho), tf.math.imag(rho), tf.linalg.diag(Q), tf.linalg.diag(P)],
                    axis=-1)


def decode(image: tf.Tensor) -> State:
    """Inverse of `encode`: rho from channels 0-1, Q and P from the diagonals of 2-3."""
    # One unstack, whose gradient is one stack, rather than four slices, whose gradients are
    # four full-size images summed: 8% less CPU per sample in tiny training.
    real, imag, Q, P = tf.unstack(image, axis=-1)
    return {"rho": tf.complex(real, imag), "Q": tf.linalg.diag_part(Q),
            "P": tf.linalg.diag_part(P)}


def broadcast_diagonals(image: tf.Tensor) -> tf.Tensor:
    """`[batch, L, L, 4k]` -> `[batch, L, L, 8k]`: each 4-channel group's Q and P (diagonals of
    its channels 2 and 3) appended broadcast along rows and along columns.

    Pixel (i, j) then holds Q_i, Q_j, P_i and P_j. Translations of the ring shift both axes
    alike, so the channels are translation-equivariant, as the diagonal ones are.
    """
    extra = []
    for group in range(image.shape[-1] // 4):
        for channel in (4 * group + 2, 4 * group + 3):
            values = tf.linalg.diag_part(image[..., channel])  # [batch, L]
            rows = tf.broadcast_to(values[:, :, None], tf.shape(image[..., 0]))
            extra += [rows, tf.transpose(rows, [0, 2, 1])]
    return tf.concat([image, tf.stack(extra, axis=-1)], axis=-1)


def coupling_channels(image: tf.Tensor) -> tf.Tensor:
    """`[batch, L, L, 4k]` -> `[batch, L, L, 6k]`: each 4-channel group's (Q_i - Q_j) Re rho_ij
    and (Q_i - Q_j) Im rho_ij appended.

    They are the coupling term of d rho_ij / dt (docs/physics.md) up to the factor -i g.
    Local functions of the pixel and of the diagonal, they transform under translations and
    particle-hole (computed after it) as the state does.
    """
    extra = []
    for group in range(image.shape[-1] // 4):
        Q = tf.linalg.diag_part(image[..., 4 * group + 2])  # [batch, L]
        difference = Q[:, :, None] - Q[:, None, :]
        extra += [difference * image[..., 4 * group], difference * image[..., 4 * group + 1]]
    return tf.concat([image, tf.stack(extra, axis=-1)], axis=-1)


def embed(image: tf.Tensor, embedding: str) -> tf.Tensor:
    """The network input of an image of one or more 4-channel groups under `embedding`."""
    if embedding == "broadcast":
        return broadcast_diagonals(image)
    if embedding == "coupling":
        return coupling_channels(image)
    return image


def _state_mask(image: tf.Tensor) -> tf.Tensor:
    """1 where `encode` puts state variables (all of rho, the diagonals of Q and P), else 0.

    `image + mask * delta` equals `encode(decode(image) + decode(delta))` exactly.
    """
    eye = tf.eye(tf.shape(image)[-2], dtype=image.dtype)
    ones = tf.ones_like(eye)
    return tf.stack([ones, ones, eye, eye], axis=-1)  # [L, L, 4]


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


def particle_hole(image: tf.Tensor, increment: bool = False) -> tf.Tensor:
    """The particle-hole transform of a state image: rho -> 1 - S rho^T S, Q -> -Q, P -> -P
    with S = diag((-1)^i); of an increment (or derivative) image without the 1.

    At half filling on a bipartite chain it maps solutions of the equations of motion to
    solutions (docs/physics.md: the coupling enters as Re rho_ii - 1/2 and a commutator), so
    the exact step commutes with it; it flips the staggered order parameters' sign.
    """
    L = tf.shape(image)[-2]
    sign = physics.stagger(L, image.dtype)
    signs = sign[:, None] * sign[None, :]
    transposed = tf.transpose(image, [0, 2, 1, 3])
    real = -signs * transposed[..., 0]
    if not increment:
        real += tf.eye(L, dtype=image.dtype)
    return tf.stack([real, -signs * transposed[..., 1], -image[..., 2], -image[..., 3]],
                    axis=-1)


def reflection(image: tf.Tensor, increment: bool = False) -> tf.Tensor:
    """The chain's reflection i -> -i (mod L) of a state image (or of an increment alike):
    rho_ij -> rho_{-i,-j}, Q_i -> Q_{-i}, P_i -> P_{-i}.

    The hopping is real and the same both ways, so the reflection maps solutions of the
    equations of motion to solutions and the exact step commutes with it. It turns every
    momentum k into -k: a step that commutes with it cannot shift all of the electrons'
    momenta one way (twist every bond's phase of rho alike), which a plain network can.
    """
    del increment  # linear: a state and an increment transform alike
    for axis in (1, 2):
        image = tf.roll(tf.reverse(image, [axis]), 1, axis)  # index i -> (L - i) mod L
    return image


SYMMETRIES: dict[str, Callable[..., tf.Tensor]] = {"particle_hole": particle_hole,
                                                     "reflection": reflection}


def _transformed(image: tf.Tensor, element: Sequence[str], increment: bool = False
                 ) -> tf.Tensor:
    """`image` under the product of the named `SYMMETRIES` (commuting involutions, so the
    product is its own inverse)."""
    for name in element:
        image = SYMMETRIES[name](image, increment)
    return image


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


def validate_scales(scales: Mapping[str, float]) -> dict[str, float]:
    """The nine scaling constants as plain floats; ValueError naming missing or bad ones."""
    missing = [key for key in SCALE_KEYS if key not in scales]
    unknown = sorted(set(scales) - set(SCALE_KEYS))
    if missing or unknown:
        raise ValueError(f"scales need exactly the keys {', '.join(SCALE_KEYS)}; "
                         f"missing: {missing or 'none'}, unknown: {unknown or 'none'}")
    values = {key: float(scales[key]) for key in SCALE_KEYS}
    bad = {key: value for key, value in values.items() if not (math.isfinite(value) and value > 0)}
    if bad:
        raise ValueError(f"scales must be finite and positive, got {bad}")
    return values


class _ScaledNetwork(keras.layers.Layer):
    """images -> out_scale * net(embed(in_scale * images)): one or more 4-channel images,
    concatenated along channels, the scales per channel and non-trainable.

    The factors are stored as float32 weights (the reference's `in_scale_*` and `out_scale_*`
    buffers), so a converted checkpoint keeps its exact values. The embedding is computed
    from the scaled images inside the network, after any symmetry transform of the state.
    """

    def __init__(self, in_scale: tuple[float, ...], out_scale: tuple[float, ...],
                 architecture: Architecture, zero_init_output: bool, precision: str,
                 embedding: str = "diagonal", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network = PreActResNet(architecture.channels, architecture.n_blocks, out_channels=4,
                                    kernel_size=architecture.kernel_size,
                                    dropout=architecture.dropout,
                                    zero_init_output=zero_init_output, precision=precision,
                                    name="network")
        self.embedding = embedding
        self._initial_scales = (in_scale, out_scale)
        self.build((None, None, None, len(in_scale)))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_scale, out_scale = self._initial_scales
        self.in_scale = self.add_weight(name="in_scale", shape=(len(in_scale),),
                                        trainable=False,
                                        initializer=keras.initializers.Constant(in_scale))
        self.out_scale = self.add_weight(name="out_scale", shape=(4,), trainable=False,
                                         initializer=keras.initializers.Constant(out_scale))
        groups = input_shape[-1] // 4
        embedded = input_shape[-1] + groups * EMBEDDING_CHANNELS[self.embedding]
        self.network.build((*input_shape[:-1], embedded))

    def call(self, images: Sequence[tf.Tensor], training: bool | None = None,
             output_mask: tf.Tensor | None = None) -> tf.Tensor:
        """The scaled output, times `output_mask` (of 0s and 1s) if given: one multiply by
        mask * out_scale, which gives the same numbers as the two one after the other."""
        image = tf.concat(list(images), axis=-1)
        # The input conv scales a diagonal embedding in its wrap's fusion, saving a pass;
        # the other embeddings are computed from the scaled image.
        input_scale = tf.convert_to_tensor(self.in_scale)
        if self.embedding != "diagonal":
            image, input_scale = embed(image * input_scale, self.embedding), None
        out_scale = self.out_scale if output_mask is None else output_mask * self.out_scale
        return self.network(image, training=training, input_scale=input_scale) * out_scale


def _channel_scales(scales: Mapping[str, float], prefix: str) -> tuple[float, float, float, float]:
    """(s_rho, s_rho, s_Q, s_P) for one set of scales: rho's scale covers both of its channels."""
    return tuple(scales[prefix + key] for key in ("rho", "rho", "Q", "P"))


class _FunctionCache:
    """Compiled functions by options, in a plain object: tracking must not save them."""

    def __init__(self) -> None:
        self.functions: dict[tuple, Callable[..., Any]] = {}


class HolsteinModel(keras.Model):
    """Common part of the two models: the state interface, `step` and a compiled `rollout`.

    Subclasses define `_advance`, one step on images. The weights do not depend on L, so the
    model is built at construction and runs on any chain length.
    """

    has_derivatives = False

    def __init__(self, scales: Mapping[str, float], channels: int, n_blocks: int,
                 dropout: float = 0.2, kernel_size: int = 3, zero_init_output: bool = True,
                 precision: str = "float32", conserve: bool = False,
                 particle_hole: bool = False, reflection: bool = False,
                 embedding: str = "diagonal",
                 integrator_input: str = "derivative", propagate_rho: bool = False,
                 coupling: float | None = None, time_step: float | None = None,
                 uniform_mode: bool = False, split_steps: int = 0,
                 conserve_energy: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {embedding!r}; valid embeddings: "
                             f"{', '.join(EMBEDDINGS)}")
        if integrator_input not in INTEGRATOR_INPUTS:
            raise ValueError(f"unknown integrator_input {integrator_input!r}; valid inputs: "
                             f"{', '.join(INTEGRATOR_INPUTS)}")
        if integrator_input != "derivative" and not self.has_derivatives:
            raise ValueError(f"integrator_input={integrator_input!r} needs a PARC model; "
                             f"{type(self).__name__} has no integrator")
        if split_steps < 0 or int(split_steps) != split_steps:
            raise ValueError(f"split_steps must be a whole number >= 0 (0: no split step), "
                             f"got {split_steps!r}")
        if split_steps and propagate_rho:
            raise ValueError("split_steps replaces propagate_rho: choose one")
        # What each option needs of the protocol, and whether it was given.
        g, dt = "coupling g (after the quench)", "time step (> 0)"
        known = {g: coupling is not None and math.isfinite(coupling),
                 dt: time_step is not None and time_step > 0}
        for name, on, needs in (("propagate_rho", propagate_rho, (g, dt)),
                                ("split_steps", split_steps, (g, dt)),
                                ("conserve_energy", conserve_energy, (g,)),
                                ("uniform_mode", uniform_mode, (dt,))):
            if on and not all(known[need] for need in needs):
                raise ValueError(f"{name} needs the protocol's {' and '.join(needs)}; got "
                                 f"coupling={coupling!r}, time_step={time_step!r}")
        self.scales = validate_scales(scales)
        self.architecture = Architecture(channels, n_blocks, dropout, kernel_size)
        self.zero_init_output = zero_init_output
        self.precision = precision
        self.conserve = bool(conserve)
        self.particle_hole = bool(particle_hole)
        self.reflection = bool(reflection)
        self.uniform_mode = bool(uniform_mode)
        # The group the step is averaged over: every product of the chosen symmetries.
        self._group: list[tuple[str, ...]] = [()]
        for name in ("particle_hole", "reflection"):
            if getattr(self, name):
                self._group += [element + (name,) for element in self._group]
        self.embedding = embedding
        self.integrator_input = integrator_input
        self.propagate_rho = bool(propagate_rho)
        self.split_steps = int(split_steps)
        self.conserve_energy = bool(conserve_energy)
        self.coupling = None if coupling is None else float(coupling)
        self.time_step = None if time_step is None else float(time_step)
        self._compiled_rollouts = _FunctionCache()

    def _network(self, inputs: Sequence[str], outputs: str, zero_init_output: bool,
                 name: str) -> _ScaledNetwork:
        """A network from images of the `inputs` quantities (each '', 'd' or 'delta_'), in
        that order, to the `outputs` ones."""
        # 1 / s in double precision, then rounded once to float32, as the reference does.
        in_scale = tuple(1.0 / s for prefix in inputs
                         for s in _channel_scales(self.scales, prefix))
        return _ScaledNetwork(in_scale, _channel_scales(self.scales, outputs), self.architecture,
                              zero_init_output, self.precision, self.embedding, name=name)

    def _admissible(self, image: tf.Tensor, network: _ScaledNetwork,
                    inputs: Sequence[tf.Tensor], training: bool, rate: bool = False
                    ) -> tf.Tensor:
        """A network's output at `inputs` as a state increment (or with `rate` a
        derivative): masked to the state's entries and, with `conserve`, projected onto the
        dynamics' invariants; with `uniform_mode` the lattice's uniform mode moved exactly."""
        increment = network(inputs, training=training, output_mask=_state_mask(image))
        if self.conserve:
            increment = conserving(increment)
        if self.uniform_mode:
            # After a split step, which moves the uniform mode exactly, the increment is a
            # residual whose uniform mode must vanish.
            increment = with_uniform_mode(image, increment, None if rate else self.time_step,
                                          residual=bool(self.split_steps) and not rate)
        return increment

    def _physics_step(self, image: tf.Tensor) -> tf.Tensor:
        """The image advanced by the model's built-in physics, which the networks correct:
        the split step (`split_steps`), rho -> U rho U^+ at frozen Q (`propagate_rho`,
        `physics.frozen_lattice_propagator`), or none."""
        if self.split_steps:
            state = decode(image)
            rho, Q, P = physics.split_step(state["rho"], state["Q"], state["P"], self.coupling,
                                           self.time_step, self.split_steps)
            return encode({"rho": rho, "Q": Q, "P": P})
        if not self.propagate_rho:
            return image
        U = physics.frozen_lattice_propagator(tf.linalg.diag_part(image[..., 2]),
                                              self.coupling, self.time_step)
        rho = tf.matmul(tf.matmul(U, tf.complex(image[..., 0], image[..., 1])), U,
                        adjoint_b=True)
        return tf.concat([tf.stack([tf.math.real(rho), tf.math.imag(rho)], axis=-1),
                          image[..., 2:]], axis=-1)

    def _invariants(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """What the model keeps fixed along a rollout, at its start: rho's spectrum with
        `conserve`, the total energy with `conserve_energy`."""
        invariants = {}
        if self.conserve:
            invariants["spectrum"] = spectrum(image)
        if self.conserve_energy:
            state = decode(image)
            invariants["energy"] = double_energy(state["rho"], state["Q"], state["P"],
                                                 self.coupling)
        return invariants

    def _evolve(self, image: tf.Tensor, training: bool, invariants: Mapping[str, tf.Tensor]
                ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """`_physics_step` plus `_advance`'s increment, then rho projected back onto the
        rollout's initial spectrum and energy (`_invariants`; not the previous step's, so
        round-off cannot random-walk them)."""
        advance = self._symmetric_advance if len(self._group) > 1 else self._advance
        increment, derivative = advance(image, training)
        next_image = self._physics_step(image) + increment
        if "spectrum" in invariants:
            next_image = with_spectrum(next_image, invariants["spectrum"])
        if "energy" in invariants:
            next_image = with_energy(next_image, invariants["energy"], self.coupling)
        return next_image, derivative

    def _symmetric_advance(self, image: tf.Tensor, training: bool
                           ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """`_advance` averaged over the group of the chosen symmetries (`particle_hole`,
        `reflection`): the mean of g^-1 advance(g u) over its elements g (their linear parts
        on increments), so the step commutes with each exactly as the true one does; the
        physics step already does, so it is computed once, for u alone. Particle-hole: a
        state's PH-symmetric errors cannot feed its staggered order, which after the L = 16
        deep quench is a 1e-4 to 1e-2 signal beside per-site errors of 1e-2. Reflection: the
        step cannot push every momentum one way. One network pass over the whole orbit."""
        group = self._group

        def orbit_mean(increments: tf.Tensor) -> tf.Tensor:
            parts = tf.split(increments, len(group))
            return tf.add_n([_transformed(part, element, increment=True)
                             for part, element in zip(parts, group)]) / len(group)

        increments, derivatives = self._advance(
            tf.concat([_transformed(image, element) for element in group], 0), training)
        return orbit_mean(increments), None if derivatives is None else orbit_mean(derivatives)

    def _advance(self, image: tf.Tensor, training: bool
                 ) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(the networks' increment to `_physics_step`, derivative image or None), images
        `[batch, L, L, 4]` in physical units."""
        raise NotImplementedError

    def call(self, state: Mapping[str, Any], training: bool | None = None) -> State:
        """The next state; see `step`."""
        return self.step(state, training=bool(training))

    def step(self, state: Mapping[str, Any], training: bool = False,
             return_derivatives: bool = False) -> State | tuple[State, State]:
        """One prediction step: the next state, and with `return_derivatives` (PARC only)
        also the differentiator's du/dt `{'rho', 'Q', 'P'}` in physical units (per unit time)."""
        self._check_derivatives(return_derivatives)
        image = encode(state)
        next_image, derivative = self._evolve(image, training, self._invariants(image))
        if return_derivatives:
            return decode(next_image), decode(derivative)
        return decode(next_image)

    def rollout(self, state: Mapping[str, Any], n_steps: int | tf.Tensor, *, training: bool = False,
                return_derivatives: bool = False, order_parameters_only: bool = False,
                jit_compile: bool | None = None, chains: int | None = None
                ) -> State | tuple[State, State]:
        """`n_steps` steps, each prediction fed back as the next input, in a `tf.while_loop`
        (unrolled for training windows of up to `UNROLL_MAX_STEPS`).

        Returns the states after steps 1..n_steps, `{'rho': [batch, n_steps, L, L], 'Q', 'P':
        [batch, n_steps, L]}` (the initial state is not included); with `return_derivatives`
        also the derivatives at every step, as `step` does; with `order_parameters_only` just
        `{'Delta_rho', 'Delta_Q': float32 [batch, n_steps]}`, so that memory stays small.
        `chains` independent loops roll out contiguous slices of the batch side by side
        (`CHAIN_BATCH`); by default one in training and on GPUs, and in CPU inference one
        below CHAIN_MIN_BATCH trajectories, else about one per CHAIN_BATCH (at least two).
        Differentiable, with dropout if `training`. Called eagerly it runs one cached
        `tf.function` per (n_steps, flags), XLA-compiled if `jit_compile`; by default XLA
        is used for small inference batches, where it is faster (benchmarks/models.py), and
        never in training: TensorFlow cannot differentiate an XLA-compiled while loop from
        outside it. Inside a `tf.function` the rollout is traced inline, and the enclosing
        function decides on XLA.
        """
        if tf.is_tensor(n_steps) and tf.inside_function():
            # A serving graph takes the number of steps as an input.
            n_steps = tf.cast(n_steps, tf.int32)
        elif not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive Python int (or a tensor inside a "
                             f"tf.function), got {n_steps!r}")
        self._check_derivatives(return_derivatives)
        if return_derivatives and order_parameters_only:
            raise ValueError("choose return_derivatives or order_parameters_only, not both")
        if chains is not None and (not isinstance(chains, int) or chains < 1):
            raise ValueError(f"chains must be a positive int or None (automatic), got {chains!r}")
        options = dict(n_steps=n_steps, training=bool(training),
                       return_derivatives=return_derivatives,
                       order_parameters_only=order_parameters_only, chains=chains)
        if tf.inside_function():
            return self._rollout(state, **options)
        state = {key: tf.convert_to_tensor(state[key]) for key in STATE_KEYS}
        if jit_compile is None:
            jit_compile = not training and state["rho"].shape.num_elements() <= XLA_MAX_PIXELS
        cache_key = (*options.values(), jit_compile)
        functions = self._compiled_rollouts.functions
        if cache_key not in functions:
            functions[cache_key] = tf.function(functools.partial(self._rollout, **options),
                                               jit_compile=jit_compile)
        return functions[cache_key](state)

    def _rollout(self, state: Mapping[str, Any], chains: int | None, **options: Any
                 ) -> State | tuple[State, State]:
        image = encode(state)
        batch = image.shape[0]
        if chains is None:
            if options["training"] or tf.config.list_logical_devices("GPU"):
                # One stream runs a GPU's kernels in turn, so chains would only shrink them.
                # In training they cost the tiny CNN at batch 64 more than they gained (-11%
                # samples/s: its backward ops at half the batch run far below their speed);
                # TrainConfig.chains sets them where they measured faster.
                chains = 1
            elif batch is None:
                # A serving graph's batch is known only when it runs: two chains from
                # CHAIN_MIN_BATCH trajectories on.
                size = tf.shape(image)[0]
                return tf.cond(size >= CHAIN_MIN_BATCH,
                               lambda: self._chains(image, 2, options),
                               lambda: self._chain(image, **options))
            else:
                chains = 1 if batch < CHAIN_MIN_BATCH else max(2, round(batch / CHAIN_BATCH))
        if chains == 1:
            return self._chain(image, **options)
        if batch is not None and batch < chains:
            raise ValueError(f"{chains} chains need a batch of at least {chains}, got {batch}")
        return self._chains(image, chains, options)

    def _chains(self, image: tf.Tensor, count: int, options: Mapping[str, Any]
                ) -> State | tuple[State, State]:
        """`_chain` run on each of `count` near-equal contiguous slices of the batch, joined
        in order."""
        size = image.shape[0] if image.shape[0] is not None else tf.shape(image)[0]
        sizes = [size * (i + 1) // count - size * i // count for i in range(count)]
        parts = [self._chain(part, **options) for part in tf.split(image, sizes)]
        return tf.nest.map_structure(lambda *values: tf.concat(values, axis=0), *parts)

    def _chain(self, image: tf.Tensor, n_steps: int, training: bool, return_derivatives: bool,
               order_parameters_only: bool) -> State | tuple[State, State]:
        """The rollout of an encoded batch in one loop (`rollout`)."""
        def record(next_image: tf.Tensor, derivative: tf.Tensor | None) -> Any:
            next_state = decode(next_image)
            if order_parameters_only:
                order_rho, order_q = physics.order_parameters(next_state["rho"], next_state["Q"])
                return {"Delta_rho": order_rho, "Delta_Q": order_q}
            return (next_state, decode(derivative)) if return_derivatives else next_state

        def body(i: tf.Tensor, image: tf.Tensor, arrays: Any) -> tuple[tf.Tensor, tf.Tensor, Any]:
            next_image, derivative = self._evolve(image, training, invariants)
            arrays = tf.nest.map_structure(lambda array, value: array.write(i, value),
                                           arrays, record(next_image, derivative))
            return i + 1, next_image, arrays

        invariants = self._invariants(image)
        if training and isinstance(n_steps, int) and n_steps <= UNROLL_MAX_STEPS:
            records = []
            for _ in range(n_steps):
                image, derivative = self._evolve(image, training, invariants)
                records.append(record(image, derivative))
            return tf.nest.map_structure(lambda *values: tf.stack(values, axis=1), *records)
        dtypes = {"rho": tf.complex64, "Q": tf.float32, "P": tf.float32}
        if order_parameters_only:
            dtypes = {"Delta_rho": tf.float32, "Delta_Q": tf.float32}
        elif return_derivatives:
            dtypes = (dtypes, dict(dtypes))
        arrays = tf.nest.map_structure(lambda dtype: tf.TensorArray(dtype, size=n_steps), dtypes)
        _, _, arrays = tf.while_loop(lambda i, *_: i < n_steps, body,
                                     (tf.constant(0), image, arrays),
                                     maximum_iterations=n_steps)
        return tf.nest.map_structure(_batch_major, arrays)

    def _check_derivatives(self, return_derivatives: bool) -> None:
        if return_derivatives and not self.has_derivatives:
            raise ValueError(f"{type(self).__name__} has no differentiator: "
                             f"return_derivatives needs a PARC model")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scales": dict(self.scales),
                **dataclasses.asdict(self.architecture), "zero_init_output": self.zero_init_output,
                "precision": self.precision, "conserve": self.conserve,
                "particle_hole": self.particle_hole, "reflection": self.reflection,
                "embedding": self.embedding,
                "integrator_input": self.integrator_input, "propagate_rho": self.propagate_rho,
                "coupling": self.coupling, "time_step": self.time_step,
                "uniform_mode": self.uniform_mode, "split_steps": self.split_steps,
                "conserve_energy": self.conserve_energy}


def _batch_major(array: tf.TensorArray) -> tf.Tensor:
    """Stacks a per-step TensorArray to `[batch, n_steps, ...]`."""
    stacked = array.stack()  # [n_steps, batch, ...]
    rank = stacked.shape.rank
    return tf.transpose(stacked, [1, 0, *range(2, rank)])


@keras.saving.register_keras_serializable(package="tf_holstein")
class HolsteinCNN(HolsteinModel):
    """The standard CNN of the paper (shallow quench): u(t + dt) = u + N(u).

    N maps (rho, Q, P) scaled by the state scales to the increments scaled by the delta
    scales; its output conv starts at zero, so an untrained model's step is the identity.
    """

    def __init__(self, scales: Mapping[str, float], channels: int = 16, n_blocks: int = 1,
                 **kwargs: Any) -> None:
        super().__init__(scales, channels, n_blocks, **kwargs)
        self.cnn = self._network([""], "delta_", self.zero_init_output, name="cnn")
        self.built = True

    def _advance(self, image: tf.Tensor, training: bool) -> tuple[tf.Tensor, None]:
        return self._admissible(image, self.cnn, [image], training), None


@keras.saving.register_keras_serializable(package="tf_holstein")
class HolsteinPARC(HolsteinModel):
    """PARC (deep quench): a differentiator D(u) ~ du/dt and an integrator S(du/dt) ~ delta u.

    u(t + dt) = u + S(D(u)). The differentiator's output is in physical units (per unit
    time) and is trained against du/dt at the mid-interval state. Only the integrator's
    output conv starts at zero.
    """

    has_derivatives = True

    def __init__(self, scales: Mapping[str, float], channels: int = 128, n_blocks: int = 4,
                 **kwargs: Any) -> None:
        super().__init__(scales, channels, n_blocks, **kwargs)
        self.differentiator = self._network([""], "d", False, name="differentiator")
        # The integrator's inputs by their scales' prefixes: the state '' and its rate 'd'.
        self._integrator_inputs = ("", "d") if self.integrator_input == "state_and_derivative" \
            else ("d",)
        self.integrator = self._network(self._integrator_inputs, "delta_",
                                        self.zero_init_output, name="integrator")
        self.built = True

    def _advance(self, image: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        # Decoding then encoding the derivative, as the reference does, zeroes the
        # off-diagonal entries of the Q and P channels: the mask does the same.
        derivative = self._admissible(image, self.differentiator, [image], training, rate=True)
        images = {"": image, "d": derivative}
        inputs = [images[prefix] for prefix in self._integrator_inputs]
        return self._admissible(image, self.integrator, inputs, training), derivative


MODELS: dict[str, type[HolsteinModel]] = {"cnn": HolsteinCNN, "parc": HolsteinPARC}


def build_model(kind: str, preset: str, scales: Mapping[str, float],
                **overrides: Any) -> HolsteinModel:
    """`kind` ('cnn' or 'parc') with the sizes of `preset` ('tiny' or 'medium'), fields of
    `Architecture` (or `zero_init_output`, `precision`, `conserve`, `particle_hole`,
    `reflection`, `embedding`, `integrator_input`, `propagate_rho` or `split_steps` with
    `coupling` and `time_step`, `uniform_mode` with `time_step`, `conserve_energy` with
    `coupling`) overridable by keyword."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {', '.join(MODELS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return MODELS[kind](scales, **{**dataclasses.asdict(PRESETS[preset]), **overrides})


def warm_start(model: HolsteinModel, path: str | Path) -> None:
    """Copies the trainable weights saved at `path` (a `.weights.h5` or `.keras` file of the
    same kind and size) into `model`, keeping `model`'s scales: those of its own data, which
    may be another L."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot warm-start from {path}: no such file (give a run's "
                         f"best.weights.h5 or an exported model.keras)")
    if path.name.endswith(".keras"):
        source = keras.saving.load_model(str(path), compile=False)
    elif path.name.endswith(".weights.h5"):
        source = type(model).from_config(model.get_config())
        try:
            source.load_weights(str(path))
        except ValueError as e:
            raise ValueError(f"cannot warm-start from {path}: its weights do not fit a "
                             f"{type(model).__name__} with {model.architecture} ({e})") from None
    else:
        raise ValueError(f"cannot warm-start from {path}: expected a .weights.h5 or .keras file")
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    if type(source) is not type(model) or \
            [tuple(v.shape) for v in source.trainable_variables] != shapes:
        raise ValueError(f"cannot warm-start from {path}: it holds a {type(source).__name__} "
                         f"whose weights do not fit a {type(model).__name__} with "
                         f"{model.architecture}")
    for target, value in zip(model.trainable_variables, source.trainable_variables):
        target.assign(value)
