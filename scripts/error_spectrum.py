"""Where a rollout's order-parameter error lies: along the rollout, and in frequency.

    python scripts/error_spectrum.py --traces runs/shallow/eval-test/order_parameters.npz

Reads the traces `python -m tf_holstein.evaluate` writes (`order_parameters.npz`; diverged
trajectories are left out) and prints, for Delta_rho and Delta_Q:
- the median over trajectories of the RMSE in consecutive windows of `--window` steps,
  divided by the trajectory's std over the whole rollout: whether the error grows;
- for the frequency band `--band` (cycles per saved step, at most 0.5): the share of the
  error's power in it, the share of the truth's power in it, and the error's power there
  relative to the truth's (1: the model reproduces nothing of the truth in that band).
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import numpy as np

ORDER_PARAMETERS = ("Delta_rho", "Delta_Q")


def power(x: np.ndarray) -> np.ndarray:
    """Power spectrum over time of each series x float [N, T], its mean removed, summed over
    the ensemble: [T // 2 + 1], at frequencies np.fft.rfftfreq(T) cycles per step."""
    x = x - x.mean(axis=1, keepdims=True)
    return (np.abs(np.fft.rfft(x, axis=1)) ** 2).sum(axis=0)


def error_profile(truth: np.ndarray, prediction: np.ndarray, window: int,
                  band: tuple[float, float]) -> dict[str, Any]:
    """The numbers the module docstring lists for one order parameter, truth and prediction
    float [N, T]."""
    error = prediction - truth
    steps = truth.shape[1] // window * window
    rms = np.sqrt((error[:, :steps].reshape(len(error), -1, window) ** 2).mean(axis=2))
    windows = np.median(rms / truth.std(axis=1, keepdims=True), axis=0)
    frequency = np.fft.rfftfreq(truth.shape[1])
    inside = (frequency >= band[0]) & (frequency <= band[1])
    error_power, truth_power = power(error), power(truth)
    return {"rmse_over_std_per_window": windows,
            "error_power_share_in_band": float(error_power[inside].sum() / error_power.sum()),
            "truth_power_share_in_band": float(truth_power[inside].sum() / truth_power.sum()),
            "error_over_truth_power_in_band": float(error_power[inside].sum()
                                                    / truth_power[inside].sum())}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--traces", required=True, help="an evaluation's order_parameters.npz")
    parser.add_argument("--window", type=int, default=200, help="steps per window")
    parser.add_argument("--band", default="0.1,0.5", help="frequency band, cycles per step")
    args = parser.parse_args(argv)
    low, high = (float(f) for f in args.band.split(","))
    if not 0 <= low < high <= 0.5:
        parser.error(f"--band needs 0 <= low < high <= 0.5 cycles per step, got {args.band}")
    args.band = (low, high)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Prints and returns {order parameter: error_profile}."""
    args = parse_args(argv)
    traces = np.load(args.traces)
    kept = traces["first_diverged_step"] == 0
    if not kept.any():
        raise SystemExit(f"{args.traces}: every trajectory diverged")
    out = {}
    for name in ORDER_PARAMETERS:
        out[name] = error_profile(np.asarray(traces[f"truth_{name}"][kept], np.float64),
                                  np.asarray(traces[f"prediction_{name}"][kept], np.float64),
                                  args.window, args.band)
        for key, value in out[name].items():
            print(name, key, np.round(value, 4))
    return out


if __name__ == "__main__":
    main()
