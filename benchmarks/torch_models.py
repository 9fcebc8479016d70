"""The SPEC's networks, models and loss in PyTorch, for `benchmarks/models.py` to time ours against.

Written from the specification (SPEC sections 3 and 4), not taken from the reference
code: channels-first images `[batch, 4, L, L]` as PyTorch convolutions expect, circular
3x3 convolutions, LayerNorm over each pixel's channels, pre-activation residual blocks
with channel dropout, a 1x1 output convolution; the standard CNN and PARC; the same
weight shapes as `tf_holstein.layers` and the same loss as `tf_holstein.losses`.
Needs the `bench` extra (`pip install -e ".[bench]"`); the library never imports it.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

TANH_GAIN = 5.0 / 3.0
State = dict[str, torch.Tensor]


def _convolution(in_channels: int, out_channels: int, kernel_size: int,
                 zero: bool = False) -> nn.Conv2d:
    """A stride-1 convolution that keeps L x L by wrapping around (periodic chain)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                     padding_mode="circular")
    if zero:
        nn.init.zeros_(conv.weight)
    else:
        nn.init.xavier_uniform_(conv.weight, TANH_GAIN)
    nn.init.zeros_(conv.bias)
    return conv


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm of each pixel over its channels, of a channels-first image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResidualBlock(nn.Module):
    """x + conv(dropout(tanh(LN(conv(tanh(LN(x)))))))."""

    def __init__(self, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = ChannelLayerNorm(channels)
        self.conv1 = _convolution(channels, channels, kernel_size)
        self.ln2 = ChannelLayerNorm(channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv2 = _convolution(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(torch.tanh(self.ln1(x)))
        return x + self.conv2(self.dropout(torch.tanh(self.ln2(h))))


class ScaledNetwork(nn.Module):
    """out_scale * net(in_scale * image): conv -> tanh -> blocks -> tanh -> 1x1 conv."""

    def __init__(self, in_scale: list[float], out_scale: list[float], channels: int,
                 n_blocks: int, dropout: float, kernel_size: int, zero_output: bool) -> None:
        super().__init__()
        self.register_buffer("in_scale", torch.tensor(in_scale).view(1, 4, 1, 1))
        self.register_buffer("out_scale", torch.tensor(out_scale).view(1, 4, 1, 1))
        self.input_conv = _convolution(4, channels, kernel_size)
        self.blocks = nn.Sequential(*(ResidualBlock(channels, kernel_size, dropout)
                                      for _ in range(n_blocks)))
        self.output_conv = _convolution(channels, 4, 1, zero=zero_output)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.tanh(self.input_conv(image * self.in_scale)))
        return self.output_conv(torch.tanh(x)) * self.out_scale


def encode(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[Re rho, Im rho, diag(Q), diag(P)] as a `[batch, 4, L, L]` image."""
    rho = state["rho"]
    return torch.stack([rho.real, rho.imag, torch.diag_embed(state["Q"]),
                        torch.diag_embed(state["P"])], dim=1)


def decode(image: torch.Tensor) -> State:
    """Inverse of `encode`."""
    return {"rho": torch.complex(image[:, 0], image[:, 1]),
            "Q": torch.diagonal(image[:, 2], dim1=-2, dim2=-1),
            "P": torch.diagonal(image[:, 3], dim1=-2, dim2=-1)}


def conserving(increment: torch.Tensor) -> torch.Tensor:
    """An increment's rho made Hermitian and trace-free (the dynamics' invariants)."""
    transposed = increment.transpose(-1, -2)
    real = 0.5 * (increment[:, 0] + transposed[:, 0])
    imag = 0.5 * (increment[:, 1] - transposed[:, 1])
    diagonal = torch.diagonal(real, dim1=-2, dim2=-1)
    real = real - torch.diag_embed(diagonal.mean(-1, keepdim=True).expand_as(diagonal))
    return torch.cat([real[:, None], imag[:, None], increment[:, 2:]], dim=1)


def _hermitian_rho(image: torch.Tensor) -> torch.Tensor:
    rho = torch.complex(image[:, 0], image[:, 1])
    return 0.5 * (rho + rho.mH)


def with_spectrum(image: torch.Tensor, eigenvalues: torch.Tensor) -> torch.Tensor:
    """rho replaced by the nearest matrix with the given spectrum (straight-through)."""
    _, vectors = torch.linalg.eigh(_hermitian_rho(image))
    projected = (vectors * eigenvalues.to(vectors.dtype)[:, None, :]) @ vectors.mH
    correction = torch.stack([projected.real, projected.imag], dim=1) - image[:, :2]
    return image + F.pad(correction.detach(), (0, 0, 0, 0, 0, 2))


class HolsteinModel(nn.Module):
    """The standard CNN (u + N(u)) or PARC (u + S(D(u))) of SPEC section 3."""

    def __init__(self, kind: str, scales: Mapping[str, float], channels: int, n_blocks: int,
                 dropout: float, kernel_size: int = 3, conserve: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.conserve = conserve

        def network(inputs: str, outputs: str, zero_output: bool) -> ScaledNetwork:
            def channel_scales(prefix: str) -> list[float]:
                return [scales[prefix + key] for key in ("rho", "rho", "Q", "P")]
            return ScaledNetwork([1.0 / s for s in channel_scales(inputs)],
                                 channel_scales(outputs), channels, n_blocks, dropout,
                                 kernel_size, zero_output)

        if kind == "cnn":
            self.cnn = network("", "delta_", True)
        elif kind == "parc":
            self.differentiator = network("", "d", False)
            self.integrator = network("d", "delta_", True)
        else:
            raise ValueError(f"unknown model kind {kind!r}; valid kinds: cnn, parc")

    def _admissible(self, increment: torch.Tensor) -> torch.Tensor:
        L = increment.shape[-1]
        eye = torch.eye(L, dtype=increment.dtype, device=increment.device)
        mask = torch.stack([torch.ones_like(eye), torch.ones_like(eye), eye, eye])
        increment = increment * mask
        return conserving(increment) if self.conserve else increment

    def advance(self, image: torch.Tensor, eigenvalues: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(next image, derivative image or None)."""
        derivative = None
        if self.kind == "cnn":
            next_image = image + self._admissible(self.cnn(image))
        else:
            derivative = self._admissible(self.differentiator(image))
            next_image = image + self._admissible(self.integrator(derivative))
        if eigenvalues is not None:
            next_image = with_spectrum(next_image, eigenvalues)
        return next_image, derivative

    def rollout(self, state: Mapping[str, torch.Tensor], n_steps: int
                ) -> tuple[State, State | None]:
        """The states after steps 1..n_steps `[batch, n_steps, ...]`, and PARC's derivatives."""
        image = encode(state)
        eigenvalues = torch.linalg.eigvalsh(_hermitian_rho(image)) if self.conserve else None
        images, derivatives = [], []
        for _ in range(n_steps):
            image, derivative = self.advance(image, eigenvalues)
            images.append(image)
            derivatives.append(derivative)
        return _stacked(images), _stacked(derivatives) if self.kind == "parc" else None


def _stacked(images: list[torch.Tensor]) -> State:
    """Per-step images as states `[batch, steps, ...]`."""
    states = [decode(image) for image in images]
    return {key: torch.stack([state[key] for state in states], 1) for key in states[0]}


def loss(predicted: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
         ) -> torch.Tensor:
    """SPEC section 4: RMS errors of rho's diagonal, its off-diagonal, Q and P, summed."""
    squared = (predicted["rho"] - target["rho"]).abs() ** 2
    L = squared.shape[-1]
    diagonal = torch.diagonal(squared, dim1=-2, dim2=-1).sum()
    diagonal_count = squared.numel() // L
    total = torch.sqrt(diagonal / diagonal_count) \
        + torch.sqrt((squared.sum() - diagonal) / (diagonal_count * (L - 1)))
    for key in ("Q", "P"):
        total = total + torch.sqrt(((predicted[key] - target[key]) ** 2).mean())
    return total
