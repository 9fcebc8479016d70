"""How far two disjoint truth ensembles' autocorrelations lie apart: the floor of the climate test.

    python scripts/ensemble_gap.py --config deep_L16                  # the deep-quench results
    python scripts/ensemble_gap.py --config smoke_deep --n 8 --sizes 2,4 --long_n 4 \
        --long_steps 24 --block 6 --window 12 --max_lag 5 --draws 3  # seconds

Simulates `--n` trajectories of the config's protocol (the training split's initial noise) and
prints the median over `--draws` random splits of max_tau |A - A'| between disjoint ensembles
of each size in `--sizes`, for Delta_rho and Delta_Q. Then it simulates `--long_n`
trajectories for `--long_steps` saved steps: the RMS of Delta_Q per `--block` steps, and the
gap between the two halves of that ensemble in consecutive windows of `--window` steps. At the
defaults (1024 and 128 x 4000 trajectories of deep_L16) it takes about 16 minutes on 2 cores
and 12 GB of memory.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

from tf_holstein import datagen, metrics, physics, simulate
from tf_holstein.configs import DataConfig, get_config


def order_parameters(data: DataConfig, n: int, saved_steps: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Delta_rho and Delta_Q, float64 [n, saved_steps] (the initial state left out), of n
    exact trajectories of the protocol `data`."""
    noise_Q, noise_P = datagen.trajectory_noise(data, "train", np.arange(n))
    chunks = list(simulate.simulate(*physics.initial_state(data.L, data.g_i, noise_Q, noise_P),
                                    g=data.g_f, dt=data.dt, save_interval=data.save_interval,
                                    saved_steps=saved_steps, pre_steps=data.pre_steps))
    rho, Q = (np.concatenate([c[k] for c in chunks], 1)[:, 1:] for k in ("rho", "Q"))
    delta_rho, delta_q = physics.order_parameters(rho, Q)
    return np.asarray(delta_rho, np.float64), np.asarray(delta_q, np.float64)


def median_gaps(series: Sequence[np.ndarray], n: int, draws: int, max_lag: int,
                rng: np.random.Generator) -> np.ndarray:
    """Median over `draws` random splits of max_tau |A - A'| between disjoint ensembles of n
    series, for each ensemble x float [N, T] of `series` (the same split for all): [len(series)].

    rng draws the splits; a caller that passes one generator to several calls gets different
    splits in each.
    """
    if not 1 <= n <= len(series[0]) // 2:
        raise ValueError(f"ensembles of {n} need at least {2 * n} series, have {len(series[0])}")
    gaps = [[np.abs(metrics.autocorrelation(x[p[:n]], max_lag)
                    - metrics.autocorrelation(x[p[n:2 * n]], max_lag)).max() for x in series]
            for p in (rng.permutation(len(series[0])) for _ in range(draws))]
    return np.median(gaps, axis=0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default="deep_L16", help="preset whose protocol to simulate")
    parser.add_argument("--n", type=int, default=1024, help="trajectories for the size scan")
    parser.add_argument("--sizes", default="64,128,256,512", help="ensemble sizes, comma-separated")
    parser.add_argument("--long_n", type=int, default=128, help="trajectories of the long run")
    parser.add_argument("--long_steps", type=int, default=4000, help="saved steps of the long run")
    parser.add_argument("--block", type=int, default=500, help="steps per RMS Delta_Q value")
    parser.add_argument("--window", type=int, default=1000, help="steps per gap window")
    parser.add_argument("--max_lag", type=int, default=metrics.MAX_LAG, help="largest tau")
    parser.add_argument("--draws", type=int, default=20, help="random splits per median")
    args = parser.parse_args(argv)
    if args.long_steps % args.block or args.long_steps % args.window:
        parser.error("--block and --window must divide --long_steps")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Prints and returns {'sizes': {n: [gap rho, gap Q]}, 'rms_delta_Q': [...],
    'windows': {first step: {'gaps': [gap rho, gap Q], 'A_Q': {tau: A}}}}."""
    args = parse_args(argv)
    data = get_config(args.config).data
    out: dict[str, Any] = {"sizes": {}, "windows": {}}
    series = order_parameters(data, args.n, data.saved_steps)
    for n in (int(s) for s in args.sizes.split(",")):
        out["sizes"][n] = median_gaps(series, n, args.draws, args.max_lag,
                                      np.random.default_rng(0))
        print("disjoint truth ensembles of", n, out["sizes"][n].round(3))
    dr, dq = order_parameters(data, args.long_n, args.long_steps)
    blocks = dq.reshape(args.long_n, args.long_steps // args.block, args.block)
    out["rms_delta_Q"] = np.sqrt((blocks ** 2).mean((0, 2)))
    print(f"RMS Delta_Q per {args.block} steps", out["rms_delta_Q"].round(4))
    lags = [lag for lag in (40, 80, 160) if lag <= args.max_lag] or [args.max_lag]
    for start in range(0, args.long_steps, args.window):
        window = (dr[:, start:start + args.window], dq[:, start:start + args.window])
        gaps = median_gaps(window, args.long_n // 2, args.draws, args.max_lag,
                           np.random.default_rng(0))
        a_q = metrics.autocorrelation(window[1], args.max_lag)
        out["windows"][start + 1] = {"gaps": gaps, "A_Q": {lag: a_q[lag] for lag in lags}}
        print(f"steps {start + 1}-{start + args.window}: {args.long_n // 2} against "
              f"{args.long_n // 2}", gaps.round(3), f"A(Delta_Q) at tau {lags}",
              a_q[lags].round(2))
    return out


if __name__ == "__main__":
    main()
