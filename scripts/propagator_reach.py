"""How far one saved step carries the density matrix, against the networks' receptive fields.

    python scripts/propagator_reach.py --config deep_L32 shallow
    python scripts/propagator_reach.py --config deep_L32 --data data/deep_L32
    python scripts/propagator_reach.py --config smoke_deep --max_radius 3   # seconds

Over one prediction interval Delta t the free hopping alone moves rho as
rho' = U rho U^+, U = exp(-i H_hop Delta t), so rho'_ij draws on rho_kl with weight
|U_ik|^2 |U_jl|^2 (a Bessel-function profile J_n(2 t Delta t)^2 in each index). A network
whose output at pixel (i, j) sees inputs within ring distance R in both indices (a
Chebyshev radius: R = (kernel // 2) (1 + 2 n_blocks) for the paper's stack) can at most
represent the share of that weight within R. The coupling g Q_i only adds phases, so the
free propagator sets the reach.

With `--data`, on every `--every`-th stored transition of a split, the one-step RMS error of
rho's off-diagonal entries for three steps that need no network: the identity (rho kept),
the free hopping alone, and the electrons' exact evolution with the lattice frozen at the
step's start (`physics.frozen_lattice_propagator`, what `--propagate_rho` leaves the
networks to learn).
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from tf_holstein import physics, records
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


def one_step_rho_errors(dataset_dir: str, split: str, every: int) -> dict[str, float]:
    """RMS error of rho's off-diagonal entries after one stored step, over the split's
    transitions k -> k + 1 for k = 0, every, 2 every, ...: identity, free hopping, frozen
    lattice."""
    data = records.load_split(dataset_dir, split)
    meta = data["meta"]
    k = np.arange(0, meta["T"], every)
    rho, target = data["rho"][:, k], data["rho"][:, k + 1]
    Q = data["Q"][:, k]
    L = meta["L"]
    off = ~np.eye(L, dtype=bool)

    def error(coupling: float, lattice: np.ndarray) -> float:
        U = physics.frozen_lattice_propagator(lattice.reshape(-1, L).astype(np.float32),
                                              coupling, meta["time_step"]).numpy()
        U = U.reshape(*lattice.shape, L)
        predicted = U @ rho @ np.conj(np.swapaxes(U, -1, -2))
        return float(np.sqrt(np.mean(np.abs(predicted - target)[..., off] ** 2)))

    return {"identity": float(np.sqrt(np.mean(np.abs(rho - target)[..., off] ** 2))),
            "free_hopping": error(0.0, np.zeros_like(Q)),
            "frozen_lattice": error(meta["config"]["g_f"], Q)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["deep_L32"],
                        help="presets whose time step, L and network depth to compare")
    parser.add_argument("--max_radius", type=int, default=9,
                        help="largest ring distance R whose share is printed")
    parser.add_argument("--data", help="a dataset directory: also the one-step rho errors "
                        "(None: not)")
    parser.add_argument("--split", default="val", help="split of --data whose transitions to use")
    parser.add_argument("--every", type=int, default=50, help="every how many transitions")
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
    if args.data:
        out["one_step_rho_errors"] = one_step_rho_errors(args.data, args.split, args.every)
        print(f"{args.data} ({args.split}, every {args.every}th transition): one-step RMS "
              f"error of rho's off-diagonal entries: " + ", ".join(
                  f"{name} {value:.4f}" for name, value in out["one_step_rho_errors"].items()))
    return out


if __name__ == "__main__":
    main()
