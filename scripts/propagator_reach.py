"""How far one saved step carries the density matrix, against the networks' receptive fields.

    python scripts/propagator_reach.py --config deep_L32 shallow
    python scripts/propagator_reach.py --config smoke_deep --max_radius 3   # seconds

Over one prediction interval Delta t the free hopping alone moves rho as
rho' = U rho U^+, U = exp(-i H_hop Delta t), so rho'_ij draws on rho_kl with weight
|U_ik|^2 |U_jl|^2 (a Bessel-function profile J_n(2 t Delta t)^2 in each index). A network
whose output at pixel (i, j) sees inputs within ring distance R in both indices (a
Chebyshev radius: R = (kernel // 2) (1 + 2 n_blocks) for the paper's stack) can at most
represent the share of that weight within R. The coupling g Q_i only adds phases, so the
free propagator sets the reach.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from tf_holstein.configs import get_config


def propagator_share(L: int, time_step: float, max_radius: int) -> np.ndarray:
    """Share of rho' = U rho U^+'s dependence on rho within Chebyshev ring distance R of each
    pixel, R = 0..max_radius, for the free hopping (t = 1) over `time_step`: float [R + 1]."""
    hopping = np.zeros((L, L))
    sites = np.arange(L)
    hopping[sites, (sites + 1) % L] = hopping[(sites + 1) % L, sites] = -1.0
    energies, vectors = np.linalg.eigh(hopping)
    U = (vectors * np.exp(-1j * energies * time_step)) @ vectors.conj().T
    weight = np.abs(U[0]) ** 2  # the same for every row: translation invariance
    distance = np.minimum(sites, L - sites)
    pair = np.outer(weight, weight)
    reach = np.maximum.outer(distance, distance)
    return np.array([pair[reach <= R].sum() for R in range(max_radius + 1)])


def receptive_radius(kernel_size: int, n_blocks: int) -> int:
    """The Chebyshev radius one network sees: an input conv and two convs per block."""
    return (kernel_size // 2) * (1 + 2 * n_blocks)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["deep_L32"])
    parser.add_argument("--max_radius", type=int, default=9)
    args = parser.parse_args(argv)
    out = {}
    for name in args.config:
        config = get_config(name)
        time_step = config.data.dt * config.data.save_interval
        shares = propagator_share(config.data.L, time_step, args.max_radius)
        radius = receptive_radius(3, config.model.n_blocks)
        out[name] = {"time_step": time_step, "shares": shares, "network_radius": radius}
        print(f"{name}: L = {config.data.L}, Delta t = {time_step:g}; each network of "
              f"{config.model.n_blocks} block(s) sees R = {radius}")
        print("  R      " + " ".join(f"{R:>6d}" for R in range(args.max_radius + 1)))
        print("  share  " + " ".join(f"{s:6.3f}" for s in shares))
    return out


if __name__ == "__main__":
    main()
