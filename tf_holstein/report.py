"""What an evaluation leaves behind: `metrics.json`, `order_parameters.npz` (every trace)
and the figures (`snapshots.png`, `order_parameters.png`, `autocorrelation.png` and those
of `climate_plots.FIGURES`, each titled with its model and dataset) in one folder, where
that folder is by default, the headline numbers people quote, and the plain-JSON form of it
all. Paths are recorded relative to the current directory, never machine-local
(`recorded_path`).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tf_holstein import climate_plots, files, metrics, near_pi, plots
from tf_holstein.plots import plt

TRACE_ROWS = 4  # trajectories drawn in order_parameters.png (Fig. 7 shows four)
# Artefact names that say nothing about which model a path is.
GENERIC = ("saved_model", "export", "model.keras")


def default_out_dir(model_path: str | Path, split: str) -> Path:
    """`eval-<split>` in the model's own folder: inside a model directory (a shipped
    SavedModel folder, a training workdir, an export directory), beside a `.keras` file or a
    SavedModel directory named `saved_model` (an export's artefact)."""
    given = Path(model_path)
    if given.is_file() or given.name == "saved_model":
        return given.parent / f"eval-{split}"
    return given / f"eval-{split}"


def predictions_out_dir(path: str | Path, split: str) -> Path:
    """`<file stem>-eval-<split>` beside a predictions file."""
    path = Path(path)
    return path.parent / f"{path.stem}-eval-{split}"


def write_results(out_dir: str | Path, collected: metrics.Collected,
                  result: Mapping[str, Any]) -> None:
    """metrics.json, order_parameters.npz and the `figures`, into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(out_dir / "metrics.json", to_json(result))
    _write_traces(out_dir / "order_parameters.npz", collected)
    for name, fig in figures(collected, result).items():
        plots.save_figure(fig, out_dir / name)


def _write_traces(path: Path, collected: metrics.Collected) -> None:
    """Every order-parameter trace, [N, steps] each, for further analysis."""
    buffer = io.BytesIO()
    np.savez(buffer, index=collected.index, first_diverged_step=collected.first_diverged,
             **{f"{source}_{name}": getattr(collected, source)[name]
                for source in ("truth", "prediction") for name in metrics.ORDER_PARAMETERS})
    files.atomic_write_bytes(path, buffer.getvalue())


def figures(collected: metrics.Collected, result: Mapping[str, Any]) -> dict[str, plt.Figure]:
    """Every figure of an evaluation by file name, each titled `figure_title`: snapshots.png
    (if the prediction has states), order_parameters.png (the first non-diverged trajectories
    and the ensemble bands), autocorrelation.png (with S(k, t) near pi if computed) and, if
    computed, the climate's figures (`climate_plots.climate_figures`)."""
    run = result["run"]
    time_step = run["time_step"]
    out = {}
    snapshots = collected.snapshots
    if snapshots["prediction"]:
        out["snapshots.png"] = plots.snapshot_figure(snapshots["truth"], snapshots["prediction"],
                                                     run["snapshot_steps"], time_step)
    traces = {f"{prefix}_{name}": getattr(collected, source)[name]
              for prefix, source in (("true", "truth"), ("pred", "prediction"))
              for name in metrics.ORDER_PARAMETERS}
    rows = [int(r) for r in np.flatnonzero(collected.first_diverged == 0)[:TRACE_ROWS]]
    bands = {name: result["bands"][name] for name in metrics.ORDER_PARAMETERS}
    out["order_parameters.png"] = plots.order_parameter_traces_figure(
        traces, rows, [f"trajectory {collected.index[r]}" for r in rows], time_step, bands,
        result["bands"]["percentiles"])
    modes = result.get(near_pi.SECTION, {})
    curves = {**result["autocorrelation"],
              **{name: modes[name]["autocorrelation"] for name in near_pi.MODES if name in modes}}
    out["autocorrelation.png"] = plots.autocorrelation_figure(curves, time_step)
    if "distribution" in result:
        out.update(climate_plots.climate_figures(result, result.get("lyapunov")))
    title = figure_title(run)
    return {name: plots.titled(fig, title) for name, fig in out.items()}


def figure_title(run: Mapping[str, Any], source: str | None = None) -> str:
    """What an evaluation's figures are titled, from its metrics.json `run`: `<model> on
    <dataset> (<split>, <N> trajectories)`; the model by `model_name` (a predictions file by
    its stem) unless `source` names it, the dataset by its folder's name."""
    if source is None:
        source = Path(run["predictions"]).stem if "predictions" in run else \
            model_name(os.path.abspath(run["model"]))
    return (f"{source} on {Path(os.path.abspath(run['data'])).name} ({run['split']}, "
            f"{run['n_trajectories']} trajectories)")


def model_name(path: str | Path) -> str:
    """A model's short name: the last component of its path that is not a generic artefact
    name (runs/deep_seed2/export/saved_model -> deep_seed2), a .keras file's stem; a
    baseline's spec as it is."""
    parts = [part for part in Path(path).parts if part not in GENERIC] or [str(path)]
    return Path(parts[-1]).stem if parts[-1].endswith(".keras") else parts[-1]


def recorded_path(path: str | Path) -> str:
    """A model, predictions or dataset path as metrics.json records it, never machine-local:
    relative to the current directory if it lies under it, else from its last component
    that is not a generic artefact name on (the dataset's folder name, `deep_L32`,
    `deep_seed2/export/saved_model`, `best.keras`); a baseline's spec as it is."""
    cwd = Path.cwd()
    for candidate in (Path(os.path.abspath(path)), Path(os.path.realpath(path))):
        if candidate.is_relative_to(cwd):
            return candidate.relative_to(cwd).as_posix()
    parts = Path(os.path.abspath(path)).parts
    named = max((k for k, part in enumerate(parts) if part not in GENERIC), default=0)
    return Path(*parts[named:]).as_posix()


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers people quote from an evaluation: counts, median Delta RMSE / std, the
    autocorrelation mismatch of both order parameters with its sampling floor, the scores
    that select a model in training (`metrics.selection_scores`) and, where computed, the
    climate's distances with their floors (S(k, t) near pi: its mean's relative error and
    its A(tau) mismatch), the median valid time, the Lyapunov exponents and the rollout's
    cost in microseconds per trajectory per saved step."""
    summary = result["summary"]
    numbers = {
        **{key: summary[key] for key in ("n_trajectories", "n_diverged", "steps")},
        **{f"{name}_median_rmse_over_std": summary[name]["median_rmse_over_std"]
           for name in metrics.ORDER_PARAMETERS},
        **{f"{name}_autocorrelation_{key}": summary[name][f"autocorrelation_{key}"]
           for name in metrics.ORDER_PARAMETERS for key in ("max_abs_diff", "sampling_floor")},
        **{f"selection_{key}": summary["selection"][key] for key in sorted(summary["selection"])}}
    # In a fixed order, whether the result is fresh or read back from metrics.json.
    if "distribution" in result:
        for name in metrics.ORDER_PARAMETERS:
            entry = result["distribution"][name]
            numbers[f"{name}_wasserstein_1"] = entry["wasserstein_1"]
            numbers[f"{name}_wasserstein_1_sampling_floor"] = entry["sampling_floor"]
        for name in (*metrics.ORDER_PARAMETERS, "structure_factor"):
            if name not in result["spectrum"]:
                continue
            entry = result["spectrum"][name]
            prefix = name if name == "structure_factor" else f"{name}_spectrum"
            numbers[f"{prefix}_relative_error"] = entry["relative_error"]
            numbers[f"{prefix}_sampling_floor"] = entry["sampling_floor"]
        for name in near_pi.MODES if near_pi.SECTION in result else ():
            entry = result[near_pi.SECTION][name]
            numbers[f"{name}_mean_relative_error"] = entry["relative_error"]
            numbers[f"{name}_mean_sampling_floor"] = entry["sampling_floor"]
            for key in ("max_abs_diff", "sampling_floor"):
                numbers[f"{name}_autocorrelation_{key}"] = entry["autocorrelation"][key]
        numbers["valid_time_median"] = result["valid_time"]["median"]
        # A median at the last time is a lower bound: say how many never left.
        numbers["valid_time_censored"] = result["valid_time"]["n_censored"]
        numbers["valid_time_reference_median"] = result["valid_time"]["reference_median"]
    if "lyapunov" in result:
        for source in ("truth", "prediction"):
            entry = result["lyapunov"][source]
            numbers[f"lyapunov_{source}"] = entry["mean"] if entry else None
    if result.get("cost"):
        numbers["cost_us_per_trajectory_step"] = result["cost"]["us_per_trajectory_step"]
    return to_json(numbers)


def to_json(obj: Any) -> Any:
    """Plain JSON values: arrays to lists, NumPy scalars to Python, NaN and inf to None."""
    if isinstance(obj, Mapping):
        return {str(key): to_json(value) for key, value in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_json(value) for value in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
