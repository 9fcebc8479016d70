"""Cost per trajectory per saved step against the chain length, for learned models and
classical integrators alike, measured in one run: where no truth is affordable, the cost
alone.

    python benchmarks/cost.py --config deep_L32 --sizes 32,64,128,256,512,1024 \
        --model rk4:0.64 --model rk4:0.64:float32 --model split:4 \
        --model saved_models/deep_L32 --out runs/cost_vs_L

At each L, `tf_holstein.cost.measure` times each `--model` (a model path, run at that L
through its serving signature, or a baseline spec of `tf_holstein.baselines` at the
config's protocol) from plausible deep-quench states (free electrons, Q and P of the
magnitude the quench reaches; costs do not depend on the values unless they diverge):
--steps saved steps of a batch of trajectories, the median of --repeats after an untimed
run. The batch is --batch, lowered at large L so that a batch holds at most 2^21 entries
of rho (128 at L <= 128, 32 at 256, 8 from 512 on): per trajectory, a batch that large
already fills the cores. Prints a table; --out writes cost_vs_L.json, cost_vs_L.md and
cost_vs_L.png (log-log, with L^2 and L^3 guides).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from tf_holstein import cli, cost, files, loading, physics
from tf_holstein.configs import get_config
from tf_holstein.plots import plt, save_figure

# --config (tf_holstein.cli, which the library's command modules share): the preset whose
# protocol (g_i, g_f, dt, saved interval) the baselines follow.
flags.FLAGS.set_default("config", "deep_L32")
flags.DEFINE_list("sizes", ["32", "64", "128", "256", "512", "1024"], "chain lengths L")
flags.DEFINE_multi_string("model", None, "model path or baseline spec; repeat")
flags.DEFINE_integer("batch", cost.BATCH, "trajectories per timed call (lowered at large L)")
flags.DEFINE_integer("max_entries", 2 ** 21, "largest batch * L^2")
flags.DEFINE_integer("steps", 5, "saved steps per timed call")
flags.DEFINE_integer("repeats", 3, "timed calls; the median is the cost")
flags.DEFINE_float("max_seconds", 120.0, "skip a model at larger L once one timed call "
                   "took longer than this")
flags.DEFINE_string("out", None, "directory for cost_vs_L.json, .md and .png")
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS

DISTINCT = 8  # different initial states, repeated to fill the batch


def initial_states(L: int, g_i: float, seed: int = 0) -> dict[str, np.ndarray]:
    """DISTINCT pre-quench ground states at g_i with Q and P displaced by 0.3 (about the
    deep quench's spread), in stored precision."""
    rng = np.random.default_rng(seed)
    noise_Q, noise_P = 0.3 * rng.normal(size=(2, DISTINCT, L))
    rho, Q, P = physics.initial_state(L, g_i, noise_Q, noise_P)
    return {"rho": rho.numpy().astype(np.complex64), "Q": Q.numpy().astype(np.float32),
            "P": P.numpy().astype(np.float32)}


def batch_for(L: int) -> int:
    return max(1, min(FLAGS.batch, FLAGS.max_entries // L ** 2))


def figure(table: dict[str, dict[int, float]], title: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 5))
    for k, (model, costs) in enumerate(table.items()):
        sizes = sorted(costs)
        ax.plot(sizes, [costs[L] for L in sizes], marker="osD^v<>ph*"[k % 10], label=model)
    sizes = sorted({L for costs in table.values() for L in costs})
    base = min(min(costs.values()) for costs in table.values() if costs)
    for power, style in ((2, ":"), (3, "--")):
        ax.plot(sizes, [base * (L / sizes[0]) ** power for L in sizes], style, color="0.5",
                label=f"L^{power}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("chain length L")
    ax.set_ylabel("cost (us per trajectory per saved step)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str]) -> None:
    del argv
    config = get_config(FLAGS.config).data
    meta = {"config": {"g_f": config.g_f, "dt": config.dt,
                       "save_interval": config.save_interval},
            "time_step": config.dt * config.save_interval}
    loaded = {spec: loading.load(spec, meta) for spec in FLAGS.model}
    table: dict[str, dict[int, float]] = {spec: {} for spec in FLAGS.model}
    details: list[dict[str, Any]] = []
    too_slow: set[str] = set()
    for L in (int(size) for size in FLAGS.sizes):
        initial = initial_states(L, config.g_i)
        for spec, model in loaded.items():
            if spec in too_slow:
                continue
            measured = cost.measure(model, initial, batch=batch_for(L), steps=FLAGS.steps,
                                    repeats=FLAGS.repeats)
            table[spec][L] = measured["us_per_trajectory_step"]
            details.append({"model": spec, "L": L, **measured})
            seconds = measured["us_per_trajectory_step_range"][1] * 1e-6 * \
                measured["batch"] * measured["steps"]
            if seconds > FLAGS.max_seconds:
                too_slow.add(spec)
            print(f"L={L:5d} batch={measured['batch']:4d} {spec:40s} "
                  f"{measured['us_per_trajectory_step']:14,.1f} us", flush=True)
    sizes = [int(size) for size in FLAGS.sizes]
    lines = ["| model | " + " | ".join(f"L = {L}" for L in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for spec, costs in table.items():
        lines.append(f"| {spec} | " + " | ".join(f"{costs[L]:,.1f}" if L in costs else ""
                                                 for L in sizes) + " |")
    print("\n".join(lines))
    if FLAGS.out:
        out = Path(FLAGS.out)
        out.mkdir(parents=True, exist_ok=True)
        machine = details[0]
        files.write_json(out / "cost_vs_L.json", {"config": FLAGS.config,
                                                     "measurements": details})
        files.atomic_write_bytes(out / "cost_vs_L.md", ("\n".join(lines) + "\n").encode())
        title = (f"{FLAGS.config} protocol; {machine['cpu']}, {machine['intra_op_threads']} "
                 f"threads; batch {batch_for(sizes[0])} at L = {sizes[0]}")
        save_figure(figure(table, title), out / "cost_vs_L.png")
        print(json.dumps({"out": str(out)}))


if __name__ == "__main__":
    app.run(main)
