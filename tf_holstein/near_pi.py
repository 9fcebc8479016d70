"""The structure factor S(k, t) of Q at the two wave numbers nearest pi, and its climate.

The CDW of a finite ring locks to the largest wave numbers: at L = 32 most of Q's power sits
at k = pi - 2 pi / L, which Delta_Q cannot see (S(pi, t) = L Delta_Q(t)^2), and the
time-averaged S(k) (`climate.structure_factor`) cannot tell how each mode moves. `series`
picks S(k, t) at k = pi (`S_pi`) and k = pi - 2 pi / L (`S_pi_minus_dk`) from each state's
structure factor, so that the streamed rollout keeps them per step; `near_pi_climate`
compares truth and prediction by their time averages and by the autocorrelation A(tau) of
the series, each with its sampling floor.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from tf_holstein import climate, metrics

SECTION = "structure_factor_near_pi"  # its key in metrics.json
MODES = {"S_pi": 0, "S_pi_minus_dk": 1}  # name: m of k = pi - 2 pi m / L


def wave_number(name: str, L: int) -> float:
    """The k of a mode on a ring of L sites: pi or pi - 2 pi / L."""
    return math.pi - 2 * math.pi * MODES[name] / L


def series(factors: np.ndarray, L: int) -> dict[str, np.ndarray]:
    """Each mode's S(k) from structure factors [..., L/2 + 1] (`climate.structure_factor` of
    Q on a ring of even L, where k = pi is the last wave number): {name: [...]}."""
    if L % 2:
        raise ValueError(f"S(k) near pi needs an even chain (the CDW's period 2), got L = {L}")
    return {name: factors[..., L // 2 - m] for name, m in MODES.items()}


def near_pi_climate(truth: Mapping[str, np.ndarray], prediction: Mapping[str, np.ndarray],
                    L: int, *, kept: np.ndarray | None = None, max_lag: int = metrics.MAX_LAG,
                    draws: int = climate.FLOOR_DRAWS, seed: int = 0) -> dict[str, Any]:
    """The climate of the modes' series, as metrics.json holds it.

    truth, prediction: {name: float [n, T]} (`series` at steps 1..T); kept: bool [n], the
    non-diverged predictions (default all). Returns {'max_lag' (at most T - 1), name: {'k',
    'truth', 'prediction' (the time and ensemble means of S), 'relative_error' (|difference|
    / truth) and 'sampling_floor' (`climate.spectrum_entry`), 'autocorrelation':
    `metrics.autocorrelation_entry` of the series}}; entries of the prediction are None if
    nothing was kept.
    """
    n, steps = np.shape(truth[next(iter(MODES))])
    kept = np.ones(n, bool) if kept is None else np.asarray(kept, bool)
    max_lag = min(max_lag, steps - 1)
    out: dict[str, Any] = {"max_lag": max_lag}
    for name in MODES:
        x = np.asarray(truth[name], np.float64)
        y = np.asarray(prediction[name], np.float64)[kept] if kept.any() else None
        predicted = None if y is None else y.mean(axis=1).mean(axis=0)  # as the truth's
        out[name] = {
            **climate.spectrum_entry(x.mean(axis=1), predicted, draws, seed,
                                     k=wave_number(name, L)),
            "autocorrelation": metrics.autocorrelation_entry(x, y, max_lag, draws, seed)}
    return out
