"""Figures: order-parameter traces, truth against prediction (the paper's Figs. 4 and 7)."""
from __future__ import annotations

import io
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


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
