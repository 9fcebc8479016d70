"""The largest Lyapunov exponent of the exact simulator after a quench, from independent ensembles.

    python scripts/lyapunov.py --config deep_L32 --seeds 1,2 --n 16 --time 400
    python scripts/lyapunov.py --config shallow --seeds 1,2 --n 16 --time 400
    python scripts/lyapunov.py --config smoke_deep --seeds 1,2 --n 2 --time 8 --transient 2

For each seed, `--n` trajectories start as the config's datagen starts them (its noise drawn
from that seed, its pre-quench steps integrated; `tf_holstein.datagen`), then twins displaced
by `--separation` of the state norm are integrated alongside by the RK4 simulator and pulled
back every `--interval` saved steps (`climate.largest_lyapunov`). The first `--transient`
time units after the pre-quench steps are not counted, the next `--time` are. Prints each
ensemble's exponent (mean, std over trajectories, standard error of the mean) in 1/(hbar/t),
its mean over each of `--windows` equal parts of the counted time (is it stationary?), and
the relative difference of the first two ensembles' means; `--out` writes it all as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from tf_holstein import climate, datagen, files, physics, records, simulate
from tf_holstein.configs import get_config


def ensemble(config_name: str, seed: int, n: int, time: float, transient: float,
             interval: int, separation: float) -> dict[str, Any]:
    """`climate.largest_lyapunov` of n trajectories of the config's protocol, noise seed `seed`."""
    data = dataclasses.replace(get_config(config_name).data, seed=seed)
    time_step = data.dt * data.save_interval
    noise_Q, noise_P = datagen.trajectory_noise(data, "test", range(n))
    rho, Q, P = physics.initial_state(data.L, data.g_i, noise_Q, noise_P)
    band = simulate.integrate(simulate.pack(rho, Q, P), data.pre_steps, data.g_f, data.dt)
    state = dict(zip(records.STATE_KEYS, (x.numpy() for x in simulate.unpack(band))))
    return climate.largest_lyapunov(
        climate.simulator_advance(data.g_f, data.dt, data.save_interval), state,
        time_step=time_step, n_intervals=max(1, math.ceil(time / (interval * time_step))),
        steps_per_interval=interval,
        transient_intervals=math.ceil(transient / (interval * time_step)),
        separation=separation, seed=seed)


def window_means(result: dict[str, Any], windows: int) -> list[float]:
    """The exponent averaged over trajectories in each of `windows` equal parts of the counted
    time (as far as the intervals divide), from the accumulated log separations."""
    curves = np.pad(result["log_separation"], [(0, 0), (1, 0)])  # 0 at the transient's end
    time = np.concatenate([[0.0], result["time"]])
    edges = np.linspace(0, len(time) - 1, windows + 1).round().astype(int)
    return [float(np.mean((curves[:, b] - curves[:, a]) / (time[b] - time[a])))
            for a, b in zip(edges[:-1], edges[1:]) if b > a]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default="deep_L32", help="named config (its data protocol)")
    parser.add_argument("--seeds", default="1,2", help="noise seeds, one ensemble each")
    parser.add_argument("--n", type=int, default=16, help="trajectories per ensemble")
    parser.add_argument("--time", type=float, default=400.0, help="counted time (hbar/t)")
    parser.add_argument("--transient", type=float, default=50.0,
                        help="time (hbar/t) for the twins to align, not counted")
    parser.add_argument("--interval", type=int, default=1,
                        help="saved steps between renormalisations")
    parser.add_argument("--separation", type=float, default=climate.EXACT_SEPARATION,
                        help="initial twin distance relative to the state norm")
    parser.add_argument("--windows", type=int, default=4,
                        help="parts of the counted time with an exponent each")
    parser.add_argument("--out", help="write the results as JSON here (None: only print them)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Prints and returns {'ensembles': {seed: result}, 'relative_difference': float}."""
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {seed: ensemble(args.config, seed, args.n, args.time, args.transient,
                              args.interval, args.separation) for seed in seeds}
    for seed, r in results.items():
        r["window_means"] = window_means(r, args.windows)
        print(f"{args.config} seed {seed}: lambda = {r['mean']:.5f} +- {r['standard_error']:.5f}"
              f" (std over {r['n_finite']} trajectories {r['std']:.5f}) per hbar/t; in "
              f"{args.windows} windows {np.round(r['window_means'], 5).tolist()}")
    out: dict[str, Any] = {"config": args.config, "args": vars(args), "ensembles": results}
    if len(seeds) > 1:
        first, second = (results[s]["mean"] for s in seeds[:2])
        out["relative_difference"] = abs(first - second) / abs(0.5 * (first + second))
        print(f"relative difference of the first two means: {out['relative_difference']:.3f}")
    if args.out:
        summary = {**out, "ensembles": {seed: {k: v for k, v in r.items()
                                               if k not in ("time", "log_separation")}
                                        for seed, r in results.items()}}
        files.write_json(args.out, json.loads(json.dumps(summary, default=_plain)))
    return out


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


if __name__ == "__main__":
    main()
