"""What a quench does to a dataset's trajectories: staggered order, its spatial modes, its climate.

    python scripts/quench_statistics.py --data data/deep_L16 data/deep_L32
    python scripts/quench_statistics.py --data data/deep_fresh data/deep_fresh2 --gap
    python scripts/quench_statistics.py --data <smoke_deep dataset> --window 4 --power_steps 6 \
        --lags 1,2 --max_lag 5 --sizes 2,3 --draws 3                  # seconds

For each dataset, from its test split: the RMS of Delta_Q over the first and the last
`--window` saved steps; the shares of Q's spatial power (over the last `--power_steps` steps)
at the two largest wave numbers, k = pi - 2 pi / L and k = pi; the autocorrelation A(tau) of
Delta_Q at `--lags`; the sampling floor of the climate test for Delta_rho and Delta_Q. Then,
pooling the test and training trajectories' Delta_Q, the median gap between disjoint
ensembles of each of `--sizes` (`--draws` random splits from one generator).
With `--gap`, for every pair of datasets also max_tau |A - A'| of Delta_rho and Delta_Q between
their test splits: how far two independent truth ensembles of those sizes lie apart, the
least a model's climate can be expected to miss a truth ensemble by.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tf_holstein import metrics, physics, records

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensemble_gap import median_gaps  # noqa: E402  (a sibling script)


def split_order_parameters(dataset_dir: str | Path, split: str
                           ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Delta_rho and Delta_Q float64 [N, T] of a split (initial state left out), and the split."""
    d = records.load_split(dataset_dir, split)
    delta_rho, delta_q = physics.order_parameters(d["rho"][:, 1:], d["Q"][:, 1:])
    return np.asarray(delta_rho, np.float64), np.asarray(delta_q, np.float64), d


def statistics(dataset_dir: str | Path, window: int, power_steps: int, lags: Sequence[int],
               max_lag: int, sizes: Sequence[int], draws: int) -> dict[str, Any]:
    """The numbers the module docstring lists, for one dataset directory."""
    dr, dq, test = split_order_parameters(dataset_dir, "test")
    Q = np.asarray(test["Q"][:, -power_steps:], np.float64)  # [N, power_steps, L]
    power = (np.abs(np.fft.rfft(Q, axis=-1)) ** 2).mean((0, 1))  # over k = 0 .. pi
    out = {"rms_delta_Q_first": float(np.sqrt((dq[:, :window] ** 2).mean())),
           "rms_delta_Q_last": float(np.sqrt((dq[:, -window:] ** 2).mean())),
           "power_share_pi_minus_2pi_over_L": float(power[-2] / power.sum()),
           "power_share_pi": float(power[-1] / power.sum()),
           "A_Q": {lag: float(a) for lag, a in
                   zip(lags, metrics.autocorrelation(dq, max_lag)[list(lags)])},
           "sampling_floor": [metrics.autocorrelation_sampling_floor(x, max_lag)
                              for x in (dr, dq)]}
    pooled = np.concatenate([dq, split_order_parameters(dataset_dir, "train")[1]])
    rng = np.random.default_rng(0)
    out["gaps_Q"] = {n: float(median_gaps((pooled,), n, draws, max_lag, rng)[0]) for n in sizes}
    return out


def ensemble_gap(a_dir: str | Path, b_dir: str | Path, max_lag: int) -> list[float]:
    """max_tau |A_a - A_b| of Delta_rho and Delta_Q between two datasets' test splits."""
    a, b = (split_order_parameters(d, "test")[:2] for d in (a_dir, b_dir))
    return [float(np.abs(metrics.autocorrelation(x, max_lag)
                         - metrics.autocorrelation(y, max_lag)).max()) for x, y in zip(a, b)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True, help="dataset directories")
    parser.add_argument("--window", type=int, default=100, help="steps of the RMS Delta_Q")
    parser.add_argument("--power_steps", type=int, default=200, help="steps of Q's power")
    parser.add_argument("--lags", default="20,40,80,160", help="tau at which to print A")
    parser.add_argument("--max_lag", type=int, default=metrics.MAX_LAG, help="largest tau")
    parser.add_argument("--sizes", default="24,48,96", help="ensemble sizes of the gap")
    parser.add_argument("--draws", type=int, default=30, help="random splits per median")
    parser.add_argument("--gap", action="store_true",
                        help="also the climate gap between every pair of datasets' test splits")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Prints and returns {dataset directory: statistics}, with `--gap` also
    {'gap': {(directory a, directory b): [Delta_rho gap, Delta_Q gap]}}."""
    args = parse_args(argv)
    lags = [int(s) for s in args.lags.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    out = {}
    for directory in args.data:
        out[directory] = statistics(directory, args.window, args.power_steps, lags,
                                    args.max_lag, sizes, args.draws)
        for key, value in out[directory].items():
            print(directory, key, np.round(list(value.values()) if isinstance(value, dict)
                                           else value, 4))
    if args.gap:
        out["gap"] = {}
        for i, a in enumerate(args.data):
            for b in args.data[i + 1:]:
                out["gap"][a, b] = ensemble_gap(a, b, args.max_lag)
                print(a, b, "gap (Delta_rho, Delta_Q)", np.round(out["gap"][a, b], 4))
    return out


if __name__ == "__main__":
    main()
