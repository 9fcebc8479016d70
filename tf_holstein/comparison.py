"""Several evaluations side by side (the training seeds of one config, say): each model's
headline numbers with their median and range over models, as comparison.md and
comparison.json, and overlay figures of every model against the one truth."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tf_holstein import files, metrics, report
from tf_holstein.climate_plots import SYMBOLS
from tf_holstein.plots import plt, save_figure, titled

FIGURES = ("autocorrelation_overlay.png", "valid_time_overlay.png", "spectra_overlay.png")
# What every compared evaluation must share, so that one truth stands against all models.
SHARED = ("data", "split", "L", "time_step", "steps", "n_trajectories")


def labels(paths: Sequence[str | Path]) -> list[str]:
    """A short distinct name per model path (`report.model_name`); repeated names get -2,
    -3, ..."""
    names = [report.model_name(path) for path in paths]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def evaluate_several(evaluate_one: Callable[[str, Path], Mapping[str, Any]],
                     paths: Sequence[str], out_dir: str | Path) -> dict[str, Any]:
    """evaluate_one(path, directory) for every path, each into out_dir/<its label>, then
    `compare` them into out_dir; returns the comparison."""
    out_dir = Path(out_dir)
    results = {label: evaluate_one(path, out_dir / label)
               for label, path in zip(labels(paths), paths)}
    return compare(results, out_dir)


def compare(results: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """Writes comparison.json, comparison.md and FIGURES for evaluations `{label: result}`
    (`scoring.evaluate`'s, of the same data, split and steps); returns the comparison:
    the shared run settings, each model's path and, per headline number (`report.headline`),
    `values` per model, their `median`, `min` and `max` over the models that have one, and
    how many do (`n`)."""
    if len(results) < 2:
        raise ValueError(f"a comparison needs at least two evaluations, got {len(results)}")
    runs = {label: result["run"] for label, result in results.items()}
    first = next(iter(runs.values()))
    for label, run in runs.items():
        differing = [key for key in SHARED if run[key] != first[key]]
        if differing:
            raise ValueError(f"{label} was evaluated with another "
                             f"{', '.join(differing)} than {next(iter(runs))}: compare "
                             f"evaluations of the same data, split and steps")
    headlines = {label: report.headline(result) for label, result in results.items()}
    # Every model's headline names, in order of first appearance.
    names = [name for name in dict.fromkeys(name for headline in headlines.values()
                                            for name in headline)
             if name not in ("n_trajectories", "steps")]
    table = {}
    for name in names:
        values = {label: headline.get(name) for label, headline in headlines.items()}
        numbers = [v for v in values.values() if v is not None]
        table[name] = {"values": values, "n": len(numbers),
                       **({"median": float(np.median(numbers)), "min": float(min(numbers)),
                           "max": float(max(numbers))} if numbers else
                          {"median": None, "min": None, "max": None})}
    comparison = {"run": {key: first[key] for key in SHARED},
                  "models": {label: run.get("model", run.get("predictions"))
                             for label, run in runs.items()},
                  "metrics": table}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(out_dir / "comparison.json", report.to_json(comparison))
    files.atomic_write_bytes(out_dir / "comparison.md", markdown(comparison).encode())
    write_overlay_figures(out_dir, results)
    return comparison


def _format(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table: a row per headline number, a column per model,
    then the median and the range over models."""
    run, labels_ = comparison["run"], list(comparison["models"])
    lines = [f"Evaluations of {run['n_trajectories']} trajectories of the {run['split']} "
             f"split of `{run['data']}` (L = {run['L']}), {run['steps']} steps of "
             f"{run['time_step']:g} hbar/t; times in hbar/t, Lyapunov exponents per hbar/t.",
             "", "| metric | " + " | ".join(labels_) + " | median | range |",
             "|---|" + "---:|" * (len(labels_) + 2)]
    for name, entry in comparison["metrics"].items():
        cells = [_format(entry["values"][label]) for label in labels_]
        span = "n/a" if entry["min"] is None else \
            f"{_format(entry['min'])} - {_format(entry['max'])}"
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {_format(entry['median'])} | {span} |")
    return "\n".join(lines) + "\n"


def write_overlay_figures(out_dir: Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    """FIGURES: A(tau) of both order parameters, the median normalised error against time
    and (with the climate) the time spectra, of every model against the truth, titled with
    the dataset (`report.figure_title`)."""
    first = next(iter(results.values()))
    time_step = first["run"]["time_step"]
    title = report.figure_title(first["run"], f"{len(results)} models")
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, name in zip(axes, metrics.ORDER_PARAMETERS):
        truth = np.asarray(first["autocorrelation"][name]["truth"])
        tau = np.arange(len(truth)) * time_step
        ax.plot(tau, truth, color="black", lw=1.6, label="truth")
        for k, (label, result) in enumerate(results.items()):
            curve = result["autocorrelation"][name]["prediction"]
            if curve is not None:
                ax.plot(tau, curve, color=colors(k % 10), lw=1.0, ls="--", label=label)
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_title(rf"$A(\tau)$ of {SYMBOLS[name]}", fontsize=9)
        ax.set_xlabel(r"$\tau$ (hbar / t)")
    axes[0].set_ylabel(r"$A(\tau)$")
    axes[1].legend(loc="upper right", fontsize=7)
    save_figure(titled(fig, title), out_dir / "autocorrelation_overlay.png")
    if "valid_time" not in first:
        return
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, (label, result) in enumerate(results.items()):
        entry = result["valid_time"]
        if entry["bands"] is not None:
            ax.plot(entry["time"], np.asarray(entry["bands"])[len(entry["percentiles"]) // 2],
                    color=colors(k % 10), lw=1.0,
                    label=f"{label}: median valid time {entry['median']:.3g}")
    ax.axhline(first["valid_time"]["threshold"], color="gray", lw=0.8, ls="--",
               label="threshold")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time (hbar / t)")
    ax.set_ylabel("median |prediction - truth| / std(truth)")
    ax.legend(loc="lower right", fontsize=7)
    save_figure(titled(fig, title), out_dir / "valid_time_overlay.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, name in zip(axes, metrics.ORDER_PARAMETERS):
        entry = first["spectrum"][name]
        ax.plot(entry["frequency"], entry["truth"], color="black", lw=1.6, label="truth")
        for k, (label, result) in enumerate(results.items()):
            predicted = result["spectrum"][name]["prediction"]
            if predicted is not None:
                ax.plot(entry["frequency"], predicted, color=colors(k % 10), lw=1.0, ls="--",
                        label=label)
        ax.set_yscale("log")
        ax.set_title(f"power spectrum of {SYMBOLS[name]}", fontsize=9)
        ax.set_xlabel("frequency (1 / (hbar / t))")
    axes[1].legend(loc="upper right", fontsize=7)
    save_figure(titled(fig, title), out_dir / "spectra_overlay.png")
