"""Figures of the climate statistics (`tf_holstein.climate`), truth against prediction, in the
style of `tf_holstein.plots`: pooled distributions, spectra and S(k), the twins' log
separation, and the normalised forecast error with its valid time."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tf_holstein import plots
from tf_holstein.plots import plt

FIGURES = ("distributions.png", "spectra.png", "lyapunov.png", "valid_time.png")
SOURCES = (("truth", "tab:blue"), ("prediction", "tab:red"))
SYMBOLS = {**plots.SYMBOLS, "structure_factor": "S(k) of Q"}


def _score(entry: Mapping[str, Any], key: str, label: str) -> str:
    """`label 0.123 (floor 0.045)` from a distance and its sampling floor, if computed."""
    if entry.get(key) is None:
        return ""
    return f"{label} {entry[key]:.3g} (floor {entry['sampling_floor']:.3g})"


def distribution_figure(distribution: Mapping[str, Mapping[str, Any]]) -> plt.Figure:
    """Pooled histograms of each order parameter: `{name: {'histogram': {edges, truth,
    prediction}, 'wasserstein_1', 'sampling_floor'}}` (`climate.climate_metrics`)."""
    fig, axes = plt.subplots(1, len(distribution), figsize=(5 * len(distribution), 3.4),
                             squeeze=False)
    for ax, (name, entry) in zip(axes[0], distribution.items()):
        histogram = entry["histogram"]
        for source, color in SOURCES:
            if histogram[source] is not None:
                ax.stairs(histogram[source], histogram["edges"], color=color, label=source)
        ax.set_xlabel(SYMBOLS.get(name, name))
        ax.set_title(_score(entry, "wasserstein_1", "W1"), fontsize=9)
    axes[0, 0].set_ylabel("density (pooled over time and ensemble)")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def spectrum_figure(spectrum: Mapping[str, Mapping[str, Any]]) -> plt.Figure:
    """Ensemble-averaged power spectra in time of the order parameters (against frequency)
    and, if present, the structure factor of Q (against k): `climate_metrics`'s 'spectrum'."""
    fig, axes = plt.subplots(1, len(spectrum), figsize=(4.6 * len(spectrum), 3.4),
                             squeeze=False)
    for ax, (name, entry) in zip(axes[0], spectrum.items()):
        x = entry["frequency"] if "frequency" in entry else entry["k"]
        for source, color in SOURCES:
            if entry[source] is not None:
                ax.plot(x, entry[source], color=color, lw=1.0, label=source,
                        ls="--" if source == "prediction" else "-")
        ax.set_yscale("log")
        ax.set_xlabel("frequency (1 / (hbar / t))" if "frequency" in entry else "k")
        ax.set_ylabel(SYMBOLS.get(name, name) if "k" in entry else
                      f"power of {SYMBOLS.get(name, name)}")
        ax.set_title(_score(entry, "relative_error", "relative L1 error"), fontsize=9)
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def lyapunov_figure(results: Mapping[str, Mapping[str, Any] | None]) -> plt.Figure:
    """log(d / d0) of the twins against time, median and 10-90% band over trajectories, with
    the line of the mean exponent: `{'truth' | 'prediction': climate.largest_lyapunov(...)}`."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for source, color in SOURCES:
        result = results.get(source)
        if result is None:
            continue
        t, curves = np.asarray(result["time"]), np.asarray(result["log_separation"])
        low, middle, high = np.percentile(curves, (10, 50, 90), axis=0)
        ax.fill_between(t, low, high, color=color, alpha=0.2, lw=0)
        ax.plot(t, middle, color=color, lw=1.2,
                label=f"{source}: lambda = {result['mean']:.3g} +- "
                      f"{result['standard_error']:.2g} per hbar/t")
        ax.plot(t, result["mean"] * t, color=color, lw=0.8, ls=":")
    ax.set_xlabel("time after the transient (hbar / t)")
    ax.set_ylabel("log(d / d0) of twin trajectories")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def valid_time_figure(valid_time: Mapping[str, Any]) -> plt.Figure:
    """The normalised error's ensemble bands against time, with the threshold, the median
    valid time and that of the reference forecast (another truth trajectory), if given:
    `climate_metrics`'s 'valid_time' (all names together, then each)."""
    panels = {"both": valid_time, **{name: entry for name, entry in valid_time.items()
                                    if isinstance(entry, Mapping) and "bands" in entry}}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False,
                             sharey=True)
    for ax, (name, entry) in zip(axes[0], panels.items()):
        t = np.asarray(entry["time"])
        if entry["bands"] is not None:
            low, middle, high = np.asarray(entry["bands"])
            ax.fill_between(t, low, high, color="tab:red", alpha=0.2, lw=0,
                            label=f"{entry['percentiles'][0]:g}-{entry['percentiles'][-1]:g}%")
            ax.plot(t, middle, color="tab:red", lw=1.0, label="median")
        ax.axhline(entry["threshold"], color="gray", lw=0.8, ls="--", label="threshold")
        ax.axvline(entry["median"], color="black", lw=0.8, ls=":",
                   label=f"median valid time {entry['median']:.3g}")
        if entry.get("reference_median") is not None:
            ax.axvline(entry["reference_median"], color="tab:blue", lw=0.8, ls=":",
                       label=f"another truth trajectory's {entry['reference_median']:.3g}")
        ax.set_xscale("log")  # the growth early on and the saturation after
        ax.set_yscale("log")
        ax.set_xlabel("time (hbar / t)")
        ax.set_title(SYMBOLS.get(name, r"$\Delta_\rho$ and $\Delta_Q$"), fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
    axes[0, 0].set_ylabel("|prediction - truth| / std(truth)")
    fig.tight_layout()
    return fig


def climate_figures(climate_result: Mapping[str, Any],
                    lyapunov: Mapping[str, Mapping[str, Any] | None] | None = None
                    ) -> dict[str, plt.Figure]:
    """FIGURES by file name from `climate.climate_metrics` and, for lyapunov.png,
    `{'truth' | 'prediction': climate.largest_lyapunov(...)}` (left out if None)."""
    figures = {"distributions.png": distribution_figure(climate_result["distribution"]),
               "spectra.png": spectrum_figure(climate_result["spectrum"])}
    if lyapunov is not None:
        figures["lyapunov.png"] = lyapunov_figure(lyapunov)
    figures["valid_time.png"] = valid_time_figure(climate_result["valid_time"])
    return figures
