"""Figures of truth against prediction: state snapshots (the paper's Figs. 3 and 6),
order-parameter traces and ensemble bands (Figs. 4 and 7), autocorrelations (Fig. 8, and
those of S(k, t) near pi)."""
from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_holstein import files  # noqa: E402

# Axis and title labels of the series A(tau) is drawn for, in the panels' order.
SYMBOLS = {"Delta_rho": r"$\Delta_\rho$", "Delta_Q": r"$\Delta_Q$",
           "S_pi": r"$S(\pi, t)$", "S_pi_minus_dk": r"$S(\pi - 2\pi/L, t)$"}


def order_parameter_figure(traces: Mapping[str, np.ndarray], trajectory: int = 0,
                           time_step: float | None = None) -> plt.Figure:
    """Delta_rho and Delta_Q of one trajectory, ground truth and prediction.

    traces: `true_Delta_rho`, `pred_Delta_rho`, `true_Delta_Q`, `pred_Delta_Q`, each
    [n_trajectories, n_steps]; time_step: time per saved step (x axis in steps if None).
    """
    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    steps = traces["true_Delta_rho"].shape[1]
    x = np.arange(1, steps + 1) * (time_step or 1.0)
    for ax, name, label in zip(axes, ("Delta_rho", "Delta_Q"), (r"$\Delta_\rho$",
                                                                  r"$\Delta_Q$")):
        ax.plot(x, traces[f"true_{name}"][trajectory], color="black", lw=1.2, label="truth")
        ax.plot(x, traces[f"pred_{name}"][trajectory], color="tab:red", lw=1.0, ls="--",
                label="prediction")
        ax.set_ylabel(label)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time (hbar / t)" if time_step else "step")
    fig.tight_layout()
    return fig


def figure_to_image(fig: plt.Figure) -> tf.Tensor:
    """A figure as a uint8 RGBA image [H, W, 4] (for TensorBoard); closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return tf.image.decode_png(buffer.getvalue(), channels=4)


def order_parameter_image(traces: Mapping[str, np.ndarray], trajectory: int = 0) -> tf.Tensor:
    """`order_parameter_figure` rendered for TensorBoard: uint8 [H, W, 4]."""
    return figure_to_image(order_parameter_figure(traces, trajectory))


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Writes a figure as PNG atomically (temporary name, then rename) and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    files.atomic_write_bytes(path, buffer.getvalue())


def titled(fig: plt.Figure, title: str) -> plt.Figure:
    """`fig` with `title` above all its panels (laid out again to make room for it)."""
    fig.suptitle(title, fontsize=10)
    if not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
        fig.tight_layout()
    return fig


def snapshot_figure(truth: Mapping[str, np.ndarray], prediction: Mapping[str, np.ndarray],
                    steps: Sequence[int], time_step: float | None = None) -> plt.Figure:
    """Q, P and Re rho of one trajectory at chosen steps, truth above prediction (Figs. 3, 6).

    truth, prediction: `rho` complex [S, L, L], `Q`, `P` float [S, L], one entry per step of
    `steps` [S]. Axis limits and the colour scale come from the truth, so a diverging
    prediction cannot flatten the picture.
    """
    rows = [("Q", "truth"), ("Q", "prediction"), ("P", "truth"), ("P", "prediction"),
            ("rho", "truth"), ("rho", "prediction")]
    columns = len(steps)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.0 * columns + 1.2, 9.0),
                             gridspec_kw={"height_ratios": [1, 1, 1, 1, 2.2, 2.2]},
                             squeeze=False, layout="constrained")
    L = truth["Q"].shape[-1]
    sites = np.arange(L)
    limits = {key: 1.1 * max(float(np.max(np.abs(truth[key]))), 1e-12) for key in ("Q", "P")}
    real = np.real(truth["rho"])
    vmin, vmax = float(real.min()), float(real.max())
    sources = {"truth": truth, "prediction": prediction}
    image = None
    for row, (key, source) in enumerate(rows):
        for column, step in enumerate(steps):
            ax = axes[row, column]
            values = sources[source][key][column]
            if key == "rho":
                image = ax.imshow(np.real(values), vmin=vmin, vmax=vmax, cmap="viridis",
                                  interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.bar(sites, values, color="black" if source == "truth" else "tab:red",
                       width=0.8)
                ax.set_ylim(-limits[key], limits[key])
                ax.set_xticks([])
                if column:
                    ax.set_yticklabels([])
                ax.tick_params(labelsize=7)
            if row == 0:
                title = f"step {step}"
                if time_step:
                    title += f"\nt = {step * time_step:.4g}"
                ax.set_title(title, fontsize=9)
            if column == 0:
                label = "Re " + r"$\rho$" if key == "rho" else key
                ax.set_ylabel(f"{label}\n{source}", fontsize=9)
    fig.colorbar(image, ax=axes[4:, :].ravel().tolist(), shrink=0.8, label=r"Re $\rho_{ij}$")
    return fig


def order_parameter_traces_figure(traces: Mapping[str, np.ndarray], rows: Sequence[int],
                                  labels: Sequence[str] | None = None,
                                  time_step: float | None = None,
                                  bands: Mapping[str, Mapping[str, np.ndarray | None]] | None
                                  = None, percentiles: Sequence[float] = (10, 50, 90)
                                  ) -> plt.Figure:
    """Delta_rho and Delta_Q, truth against prediction, for several trajectories (Figs. 4, 7).

    traces: `true_Delta_rho`, `pred_Delta_rho`, `true_Delta_Q`, `pred_Delta_Q`, each
    [n_trajectories, n_steps] for steps 1..n_steps; rows: which trajectories to draw, one
    panel row each, titled by `labels`. bands: optionally `{name: {'truth': [3, n_steps],
    'prediction': [3, n_steps] or None}}`, the low, middle and high `percentiles` over the
    ensemble at every step, drawn in a last row.
    """
    names = (("Delta_rho", r"$\Delta_\rho$"), ("Delta_Q", r"$\Delta_Q$"))
    n_rows = len(rows) + (1 if bands else 0)
    fig, axes = plt.subplots(max(n_rows, 1), 2, figsize=(11, 1.9 * max(n_rows, 1) + 0.6),
                             sharex=True, squeeze=False)
    steps = traces["true_Delta_rho"].shape[1]
    x = np.arange(1, steps + 1) * (time_step or 1.0)
    for panel_row, row in enumerate(rows):
        for ax, (name, symbol) in zip(axes[panel_row], names):
            ax.plot(x, traces[f"true_{name}"][row], color="tab:blue", lw=1.2, label="truth")
            ax.plot(x, traces[f"pred_{name}"][row], color="tab:red", lw=1.0, ls="--",
                    label="prediction")
            label = labels[panel_row] if labels else f"trajectory {row}"
            ax.set_ylabel(f"{symbol}\n{label}", fontsize=9)
    if bands:
        low, mid, high = percentiles
        for ax, (name, symbol) in zip(axes[-1], names):
            for source, color in (("truth", "tab:blue"), ("prediction", "tab:red")):
                band = bands[name][source]
                if band is None:
                    continue
                ax.fill_between(x, band[0], band[2], color=color, alpha=0.2, lw=0,
                                label=f"{source} {low:g}-{high:g}%")
                ax.plot(x, band[1], color=color, lw=1.0, label=f"{source} median")
            ax.set_ylabel(f"{symbol}\nensemble", fontsize=9)
        axes[-1, 1].legend(loc="upper right", fontsize=7, ncol=2)
    axes[0, 1].legend(loc="upper right", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("time (hbar / t)" if time_step else "step")
    fig.tight_layout()
    return fig


def autocorrelation_figure(curves: Mapping[str, Mapping[str, np.ndarray | None]],
                           time_step: float | None = None) -> plt.Figure:
    """A(tau) of Delta_rho and Delta_Q (Fig. 8) and, where given, of S(k, t) near pi, truth
    against prediction, two panels a row.

    curves: `{name: {'truth': [n_lags], 'prediction': [n_lags] or None}}` for the names of
    SYMBOLS present (others are ignored), tau = 0..n_lags - 1 steps, optionally with
    'max_abs_diff' and 'sampling_floor' (shown in the titles).
    """
    names = [name for name in SYMBOLS if name in curves]
    rows = (len(names) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        truth = np.asarray(curves[name]["truth"])
        tau = np.arange(truth.shape[0]) * (time_step or 1.0)
        ax.plot(tau, truth, color="tab:blue", lw=1.4, label="truth")
        if curves[name]["prediction"] is not None:
            ax.plot(tau, curves[name]["prediction"], color="tab:red", lw=1.2, ls="--",
                    label="prediction")
        ax.axhline(0.0, color="gray", lw=0.6)
        title = rf"$A(\tau)$ of {SYMBOLS[name]}"
        if curves[name].get("max_abs_diff") is not None:
            title += f": max |diff| {curves[name]['max_abs_diff']:.3f}"
        if curves[name].get("sampling_floor") is not None:
            title += f" (sampling floor {curves[name]['sampling_floor']:.3f})"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(r"$\tau$ (hbar / t)" if time_step else r"$\tau$ (steps)")
    for ax in axes[:, 0]:
        ax.set_ylabel(r"$A(\tau)$")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig
