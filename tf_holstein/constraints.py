"""The exact physics a model adds around its networks, one piece per concern (the options
of `ModelConfig`), and `Constraints`, which composes the pieces a config asks for.

A model's step on an image u is base(u) + increment, each network's increment adjusted by
the pieces in turn, then the next image projected by them onto what they measured at the
rollout's start (not at the previous step, so that round-off cannot random-walk it).
"""
from __future__ import annotations

import tensorflow as tf

from tf_holstein import physics
from tf_holstein.codec import decode, encode
from tf_holstein.configs import ModelConfig
from tf_holstein.invariants import (conserving, double_energy, spectrum, with_energy,
                                    with_spectrum, with_uniform_mode)


class Constraint:
    """One exact property of the dynamics imposed on a learned step; each hook by default
    leaves its input alone."""

    def adjust(self, image: tf.Tensor, increment: tf.Tensor, rate: bool) -> tf.Tensor:
        """A network's increment of `image` (with `rate` its derivative du/dt) made to obey
        the property."""
        return increment

    def measure(self, image: tf.Tensor) -> tf.Tensor | None:
        """What the property fixes along a rollout, at its start `image`."""
        return None

    def project(self, image: tf.Tensor, measured: tf.Tensor | None) -> tf.Tensor:
        """A predicted image moved back to the `measured` value."""
        return image


class Spectrum(Constraint):
    """`conserve`: Hermitian, trace-free increments and rho's spectrum kept along a rollout."""

    def adjust(self, image: tf.Tensor, increment: tf.Tensor, rate: bool) -> tf.Tensor:
        return conserving(increment)

    def measure(self, image: tf.Tensor) -> tf.Tensor:
        return spectrum(image)

    def project(self, image: tf.Tensor, measured: tf.Tensor) -> tf.Tensor:
        return with_spectrum(image, measured)


class UniformMode(Constraint):
    """`uniform_mode`: the lattice's uniform mode moved exactly, whatever the networks say."""

    def __init__(self, time_step: float, after_split_step: bool) -> None:
        self.time_step = time_step
        # A split step moves the uniform mode exactly already: its residual must vanish.
        self.after_split_step = after_split_step

    def adjust(self, image: tf.Tensor, increment: tf.Tensor, rate: bool) -> tf.Tensor:
        return with_uniform_mode(image, increment, None if rate else self.time_step,
                                 residual=self.after_split_step and not rate)


class Energy(Constraint):
    """`conserve_energy`: the total energy kept at its value at the rollout's start."""

    def __init__(self, coupling: float) -> None:
        self.coupling = coupling

    def measure(self, image: tf.Tensor) -> tf.Tensor:
        state = decode(image)
        return double_energy(state["rho"], state["Q"], state["P"], self.coupling)

    def project(self, image: tf.Tensor, measured: tf.Tensor) -> tf.Tensor:
        return with_energy(image, measured, self.coupling)


def split_step(image: tf.Tensor, coupling: float, time_step: float, parts: int) -> tf.Tensor:
    """`split_steps`: the image advanced by a Strang splitting of the exact equations of
    motion in `parts` parts (`physics.split_step`); the networks learn its residual."""
    state = decode(image)
    rho, Q, P = physics.split_step(state["rho"], state["Q"], state["P"], coupling, time_step,
                                   parts)
    return encode({"rho": rho, "Q": Q, "P": P})


def frozen_lattice_step(image: tf.Tensor, coupling: float, time_step: float) -> tf.Tensor:
    """`propagate_rho`: rho -> U rho U^+ with U = exp(-i H(Q) dt) at the lattice of the step's
    start (`physics.frozen_lattice_propagator`); the networks learn the lattice's motion and
    its back-action. Over the deep quench's step the free hopping carries rho up to 7 sites,
    beyond a small network's reach, for one L x L eigendecomposition per step."""
    U = physics.frozen_lattice_propagator(tf.linalg.diag_part(image[..., 2]), coupling,
                                          time_step)
    rho = tf.matmul(tf.matmul(U, tf.complex(image[..., 0], image[..., 1])), U, adjoint_b=True)
    return tf.concat([tf.stack([tf.math.real(rho), tf.math.imag(rho)], axis=-1),
                      image[..., 2:]], axis=-1)


class Constraints:
    """The pieces a config asks for, in the order they apply: a built-in physics step (the
    split step or rho's propagation at a frozen lattice, if any), then the spectrum, the
    uniform mode and the energy."""

    def __init__(self, config: ModelConfig, coupling: float | None,
                 time_step: float | None) -> None:
        config.check_protocol(coupling, time_step)
        self.config, self.coupling, self.time_step = config, coupling, time_step
        self.pieces: list[Constraint] = []
        if config.conserve:
            self.pieces.append(Spectrum())
        if config.uniform_mode:
            self.pieces.append(UniformMode(time_step, bool(config.split_steps)))
        if config.conserve_energy:
            self.pieces.append(Energy(coupling))

    def base_step(self, image: tf.Tensor) -> tf.Tensor:
        """The image advanced by the built-in physics the networks correct, or unchanged."""
        if self.config.split_steps:
            return split_step(image, self.coupling, self.time_step, self.config.split_steps)
        if self.config.propagate_rho:
            return frozen_lattice_step(image, self.coupling, self.time_step)
        return image

    def adjust(self, image: tf.Tensor, increment: tf.Tensor, rate: bool = False) -> tf.Tensor:
        for piece in self.pieces:
            increment = piece.adjust(image, increment, rate)
        return increment

    def measure(self, image: tf.Tensor) -> list[tf.Tensor | None]:
        return [piece.measure(image) for piece in self.pieces]

    def project(self, image: tf.Tensor, measured: list[tf.Tensor | None]) -> tf.Tensor:
        for piece, value in zip(self.pieces, measured):
            image = piece.project(image, value)
        return image
