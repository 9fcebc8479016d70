"""Diagnostics of a one-step model beyond its rollout metrics.

`noise_contraction` asks what a model does with an error in its input state: a model
trained on noisy inputs to predict the clean next state can learn to shrink such errors,
which keeps a long rollout on the attractor; one that passes them on unchanged (gain 1)
or amplifies them drifts off it.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from tf_holstein import data, records

State = Mapping[str, np.ndarray]
StepFn = Callable[[State], State]


def rms_error(a: State, b: State) -> dict[str, float]:
    """Root mean square of a - b per state variable (rho's complex modulus) and over all of
    them together, each entry weighted alike."""
    squares = {key: np.abs(np.asarray(a[key], np.complex128) - np.asarray(b[key])) ** 2
               for key in records.STATE_KEYS}
    out = {key: float(np.sqrt(value.mean())) for key, value in squares.items()}
    total = sum(value.sum() for value in squares.values())
    out["state"] = float(np.sqrt(total / sum(value.size for value in squares.values())))
    return out


def noise_contraction(step: StepFn, states: State, targets: State, sigmas: Sequence[float],
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """One-step errors of `step` from `states` with and without input noise of the training's
    kind (std sigma on Q and P, complex variance sigma^2 on rho), against `targets`, the true
    next states. `{str(sigma): {...}}`, and `"0"` for clean inputs; each entry holds per
    variable (rho, Q, P, state: all together):

        error_<key>   RMS of step(u + eps) - u_true(t + dt)
        gain_<key>    sqrt(error^2 - clean error^2) / RMS(eps): how much of the input error
                      survives the step (< 1: contracted; about 1: passed on)

    states, targets: rho complex [N, L, L], Q, P float [N, L].
    """
    clean = rms_error(step(states), targets)
    out = {"0": {f"error_{key}": value for key, value in clean.items()}}
    for k, sigma in enumerate(sigmas):
        if not sigma > 0:
            raise ValueError(f"noise levels must be positive, got {sigma!r}")
        noisy = {key: value.numpy() for key, value in data.add_noise(
            {key: np.asarray(states[key]) for key in records.STATE_KEYS}, seed + k,
            sigma).items()}
        noise = rms_error(noisy, states)
        error = rms_error(step(noisy), targets)
        entry = {}
        for key in error:
            entry[f"error_{key}"] = error[key]
            entry[f"gain_{key}"] = float(np.sqrt(max(error[key] ** 2 - clean[key] ** 2, 0.0))
                                         / noise[key])
        out[f"{sigma:g}"] = entry
    return out
