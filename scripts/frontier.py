"""The accuracy-cost frontier: every model and classical integrator's climate error against
its cost per saved step, measured in one run on one machine.

    python scripts/frontier.py --data data/deep_fresh --out runs/frontier \
        --model exact --model rk4:0.02 --model trotter4:0.32 --model saved_models/deep_L32 \
        --group deep_L32_seeds=runs/s0,runs/s1,runs/s2

Each `--model` (a model path or a baseline spec, `tf_holstein.baselines`) and each member
of a `--group` (the training seeds of one recipe) is evaluated with `tf_holstein.scoring`
into `<out>/<label>` (skipped if its metrics.json is there: the run resumes; `--overwrite`
redoes it), cost included (`tf_holstein.cost`). Writes to `--out`:
- frontier.json and frontier.md: per model the climate error (the larger of
  max |A_pred - A_true| of Delta_rho and Delta_Q), the W1 distances of their distributions,
  max |A_pred - A_true| of S(k, t) at k = pi and pi - 2 pi / L (shown, not part of the error),
  the cost in microseconds per trajectory per saved step and relative to `exact` (if
  evaluated), whether it is Pareto-optimal (no other model both cheaper and more accurate)
  and whether it meets `--bound` (default: the sampling floor + 0.015; below about the
  floor, scores differ by sampling noise alone); a group by the median over its members,
  with the range; and the cheapest model within the bound;
- frontier.png: error against cost, log-log, the Pareto front drawn through its points,
  the sampling floor of the test set as a band.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tf_holstein import baselines, comparison, files, metrics, near_pi, records, scoring
from tf_holstein.plots import plt, save_figure


def evaluated(spec: str, data: str, out_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation of `spec` in out_dir, run unless its metrics.json exists."""
    stored = out_dir / "metrics.json"
    if stored.exists() and not args.overwrite:
        return json.loads(stored.read_text())
    print(f"frontier: evaluating {spec} -> {out_dir}", flush=True)
    return scoring.evaluate(spec, data, out_dir=out_dir, n_traj=args.n_traj,
                            batch_size=args.eval_batch, cost_batch=args.cost_batch,
                            cost_steps=args.cost_steps, cost_repeats=args.cost_repeats,
                            progress=args.progress)


def point(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one evaluation that the frontier shows."""
    summary = result["summary"]
    names = metrics.ORDER_PARAMETERS
    errors = [summary[name]["autocorrelation_max_abs_diff"] for name in names]
    modes = result.get(near_pi.SECTION, {})
    # None where every trajectory diverged: no climate to score.
    return {"error": None if None in errors else max(errors),
            **{f"{name}_autocorrelation": summary[name]["autocorrelation_max_abs_diff"]
               for name in names},
            **{f"{name}_wasserstein_1": result.get("distribution", {}).get(name, {}).get(
                "wasserstein_1") for name in names},
            **{f"{name}_autocorrelation": modes.get(name, {}).get("autocorrelation", {}).get(
                "max_abs_diff") for name in near_pi.MODES},
            "floor": max(summary[name]["autocorrelation_sampling_floor"] for name in names),
            "n_diverged": summary["n_diverged"],
            "cost": result["cost"]["us_per_trajectory_step"],
            "precision": result["cost"]["precision"]}


def grouped(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A group of models (seeds) as the median of each number, with the error's range."""
    errors = [p["error"] for p in points if p["error"] is not None]
    # Numbers that some member has (another may have None: every trajectory diverged).
    numeric = [key for key in points[0]
               if any(isinstance(p[key], (int, float)) for p in points)]

    def median(key: str) -> float | None:
        values = [p[key] for p in points if p[key] is not None]
        return float(np.median(values)) if values else None

    return {**{key: median(key) for key in numeric},
            "precision": points[0]["precision"],
            "error_range": [min(errors), max(errors)] if errors else None,
            "members": len(points)}


def pareto(points: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The labels of the points that no other point beats in both cost and error (a point
    without an error, every trajectory diverged, is on no front)."""
    scored = {label: p for label, p in points.items() if p["error"] is not None}

    def beaten(label: str) -> bool:
        p = scored[label]
        return any(q["cost"] <= p["cost"] and q["error"] <= p["error"]
                   and (q["cost"] < p["cost"] or q["error"] < p["error"])
                   for other, q in scored.items() if other != label)

    return [label for label in scored if not beaten(label)]


def within(p: Mapping[str, Any], bound: float) -> bool:
    return p["error"] is not None and p["error"] <= bound


def cheapest(points: Mapping[str, Mapping[str, Any]], bound: float) -> str | None:
    """The label of the cheapest point whose error is within `bound`, if any."""
    meeting = [label for label, p in points.items() if within(p, bound)]
    return min(meeting, key=lambda label: points[label]["cost"]) if meeting else None


def table(points: Mapping[str, Mapping[str, Any]], front: Sequence[str], bound: float) -> str:
    """frontier.md: one row per model, cheapest first."""
    exact = points.get(baselines.EXACT)
    lines = ["| model | precision | cost (us / trajectory / saved step) | relative to exact | "
             "max \\|A - A_true\\| Delta_rho, Delta_Q | W1 Delta_rho, Delta_Q | "
             "max \\|A - A_true\\| S(pi), S(pi - 2 pi / L) | diverged | "
             f"Pareto | within {bound:.3f} |", "|---|---|---|---|---|---|---|---|---|---|"]
    def pair(p: Mapping[str, Any], key: str, digits: int,
             names: Sequence[str] = metrics.ORDER_PARAMETERS) -> str:
        values = [p.get(f"{name}_{key}") for name in names]
        if None in values:  # no climate, or an evaluation stored before S(k, t) was scored
            return "every trajectory diverged" if p["error"] is None else "n/a"
        return ", ".join(f"{v:.{digits}f}" for v in values)

    for label, p in sorted(points.items(), key=lambda item: item[1]["cost"]):
        error = pair(p, "autocorrelation", 3)
        if "members" in p:
            error += (f" (median of {p['members']}; max of both {p['error_range'][0]:.3f}-"
                      f"{p['error_range'][1]:.3f})")
        relative = f"{p['cost'] / exact['cost']:.3f}" if exact else ""
        lines.append(f"| {label} | {p['precision']} | {p['cost']:,.1f} | {relative} | {error} | "
                     f"{pair(p, 'wasserstein_1', 4)} | "
                     f"{pair(p, 'autocorrelation', 3, list(near_pi.MODES))} | "
                     f"{p['n_diverged']:g} | "
                     f"{'yes' if label in front else ''} | {'yes' if within(p, bound) else ''} |")
    return "\n".join(lines) + "\n"


def figure(points: Mapping[str, Mapping[str, Any]], front: Sequence[str], title: str,
           bound: float) -> plt.Figure:
    """Error against cost, log-log; Pareto points filled and joined; the floor as a band,
    the bound as a dashed line."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    diverged = [label for label, p in points.items() if p["error"] is None]
    points = {label: p for label, p in points.items() if p["error"] is not None}
    floor = max(p["floor"] for p in points.values())
    ax.axhspan(1e-3, floor, color="0.9", label=f"sampling floor ({floor:.3f})")
    ax.axhline(bound, color="0.4", linestyle="--", lw=0.8, label=f"bound ({bound:.3f})")
    families = sorted({label.split(":")[0] if baselines.is_baseline(label) else "learned"
                       for label in points})
    markers = dict(zip(families, "osD^v<>ph*"))
    for label, p in points.items():
        family = label.split(":")[0] if baselines.is_baseline(label) else "learned"
        on_front = label in front
        style = dict(marker=markers[family], markersize=7, linestyle="none",
                     color=f"C{families.index(family)}",
                     markerfacecolor=None if on_front else "white")
        if "members" in p:
            low, high = p["error_range"]
            ax.errorbar([p["cost"]], [p["error"]], yerr=[[p["error"] - low], [high - p["error"]]],
                        capsize=3, **style)
        else:
            ax.plot([p["cost"]], [p["error"]], **style)
        ax.annotate(label, (p["cost"], p["error"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    ordered = sorted(front, key=lambda label: points[label]["cost"])
    ax.step([points[label]["cost"] for label in ordered],
            [points[label]["error"] for label in ordered], where="post", color="k", lw=0.8,
            label="Pareto front")
    for family in families:
        ax.plot([], [], marker=markers[family], linestyle="none",
                color=f"C{families.index(family)}", label=family)
    ax.set_xscale("log")
    ax.set_yscale("log")
    errors = [p["error"] for p in points.values()]
    ax.set_ylim(0.5 * min(min(errors), floor), 1.5 * max(errors))
    ax.set_xlabel("cost (us per trajectory per saved step)")
    ax.set_ylabel("climate error: max |A_pred - A_true| of Delta_rho, Delta_Q")
    if diverged:
        title += f"\nnot shown, every trajectory diverged: {', '.join(diverged)}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset directory (its test split)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", action="append", default=[],
                        help="a model path or baseline spec; repeat")
    parser.add_argument("--group", action="append", default=[],
                        help="NAME=PATH,PATH,...: the seeds of one recipe, shown as their "
                             "median and range; repeat")
    parser.add_argument("--n_traj", type=int, default=None, help="trajectories (None: all)")
    parser.add_argument("--eval_batch", type=int, default=128, help="trajectories per rollout")
    parser.add_argument("--cost_batch", type=int, default=128,
                        help="trajectories per timed rollout when measuring the cost")
    parser.add_argument("--cost_steps", type=int, default=100,
                        help="saved steps per timed rollout")
    parser.add_argument("--cost_repeats", type=int, default=3,
                        help="timed rollouts; their median is the cost")
    parser.add_argument("--bound", type=float, default=None,
                        help="the climate error a model must meet (None: the test set's "
                             "sampling floor + 0.015)")
    parser.add_argument("--overwrite", action="store_true",
                        help="evaluate again even where metrics.json exists")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show progress bars")
    args = parser.parse_args(argv)
    if not args.model and not args.group:
        parser.error("give at least one --model or --group")
    out = Path(args.out)
    points: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []  # every evaluation, for the settings they share

    def measured(spec: str, out_dir: Path) -> dict[str, Any]:
        result = evaluated(spec, args.data, out_dir, args)
        runs.append(result)
        return point(result)

    for label, spec in zip(comparison.labels(args.model), args.model):
        points[label] = measured(spec, out / label.replace(":", "_"))
    for entry in args.group:
        name, _, paths = entry.partition("=")
        members = [path for path in paths.split(",") if path]
        if not name or not members:
            parser.error(f"--group {entry}: expected NAME=PATH,PATH,...")
        points[name] = grouped([measured(path, out / name / label)
                                for label, path in zip(comparison.labels(members), members)])
    front = pareto(points)
    bound = args.bound if args.bound is not None else \
        max(p["floor"] for p in points.values()) + 0.015
    meta = records.read_meta(args.data)
    run, machine = runs[0]["run"], runs[0]["cost"]
    result = {"data": args.data, "L": meta["L"], "n_trajectories": run["n_trajectories"],
              "steps": run["steps"], "machine": machine, "points": points, "pareto": front,
              "bound": bound, "cheapest_within_bound": cheapest(points, bound)}
    files.write_json(out / "frontier.json", result)
    files.atomic_write_bytes(out / "frontier.md", table(points, front, bound).encode())
    title = (f"{Path(args.data).name}: L = {meta['L']}, {run['n_trajectories']} trajectories "
             f"of {run['steps']} steps; {machine['cpu']}, {machine['intra_op_threads']} "
             f"threads, batch {machine['batch']}")
    save_figure(figure(points, front, title, bound), out / "frontier.png")
    print(table(points, front, bound))
    print(f"cheapest within {bound:.3f}: {result['cheapest_within_bound']}")
    return result


if __name__ == "__main__":
    main()
