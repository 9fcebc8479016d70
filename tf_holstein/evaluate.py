"""python -m tf_holstein.evaluate: long rollouts of a trained model against ground truth.

    python -m tf_holstein.evaluate --model runs/shallow --data data/shallow \
        [--split test] [--n_traj N] [--steps T] [--out DIR]
    python -m tf_holstein.evaluate --predictions FILE.npz --data DIR --split test --out OUT
    python -m tf_holstein.evaluate --model runs/seed1 --model runs/seed2 --data DIR --out OUT

The command line of `tf_holstein.scoring`, which rolls the model out against the stored
trajectories (or reads rollouts made elsewhere, `--predictions`) and computes the metrics,
and of `tf_holstein.report`, which writes `metrics.json`, `order_parameters.npz` and the
figures (docs/evaluation.md). Prints
the headline numbers as JSON. Several models (`--model` repeated, or `--predictions`
repeated) are each evaluated into OUT/<name> and compared in OUT (`tf_holstein.comparison`:
comparison.md, comparison.json and overlay figures); it prints each number's median and
range over the models.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import tensorflow as tf
from absl import app, flags

from tf_holstein import baselines, cli, comparison, cost, files, metrics, report, rollout, scoring
from tf_holstein.cli import FLAGS

# Flags that set how a model rolls out: they mean nothing for stored predictions.
MODEL_ONLY = ("n_traj", "steps", "chunk", "noise_contraction", "allow_other_L", "cost_batch",
              "cost_steps", "cost_repeats")


def _define_flags() -> None:
    """The command's own flags, defined only when run as a command (no global clashes);
    --config, --data_dir and --progress come from tf_holstein.cli."""
    flags.DEFINE_multi_string("model", None, "a .keras file, a SavedModel directory, a "
                              "training workdir (its export/saved_model), or a classical "
                              "integrator (tf_holstein.baselines): 'exact', the RK4 "
                              "simulator restarted from the stored states, the floor of every "
                              "metric; 'rk4:DT', RK4 at time step DT; 'trotter2:DT', "
                              "'trotter4:DT', Trotter-Suzuki over even and odd bonds; "
                              "'split:N', the split step in N parts; ':float32' after any but "
                              "'exact' runs it in single precision; repeat the flag to "
                              "evaluate and compare several")
    flags.DEFINE_multi_string("predictions", None, "instead of --model: a .npz of rollouts "
                              "made elsewhere, in the layout pipelines/batch_inference.py "
                              "writes (index, Delta_rho, Delta_Q and optionally rho, Q, P; "
                              "step 0 the initial state of trajectory index[n] of --split); "
                              "repeat the flag to compare several")
    flags.DEFINE_string("data", None, "dataset directory (holding meta.json); default "
                        "<data_dir>/<the --config dataset's name>")
    flags.DEFINE_string("split", "test", "split to evaluate on")
    flags.DEFINE_integer("n_traj", None, "evaluate the first N trajectories (default all)")
    flags.DEFINE_integer("steps", None, "rollout length (default the dataset's saved steps)")
    flags.DEFINE_string("out", None, "output directory (default eval-<split> inside the "
                        "model's folder or workdir, beside a .keras file or an export's "
                        "saved_model, or <predictions file>-eval-<split> beside it); with "
                        "several models or a baseline required: each model's results go to "
                        "OUT/<name>, the comparison to OUT")
    flags.DEFINE_bool("overwrite", False, "replace an earlier evaluation's results in the "
                      "output directory (without it, an existing metrics.json is refused)")
    flags.DEFINE_integer("eval_batch", rollout.BATCH_SIZE, "trajectories rolled out together")
    flags.DEFINE_integer("chunk", rollout.CHUNK, "steps per rollout call (bounds memory)")
    flags.DEFINE_integer("max_lag", metrics.MAX_LAG, "largest autocorrelation lag tau, in steps")
    flags.DEFINE_list("snapshot_steps", None, "steps shown in snapshots.png (default five "
                      "from 0 to 48)")
    flags.DEFINE_integer("snapshot_trajectory", 0, "trajectory shown in snapshots.png")
    flags.DEFINE_float("divergence_factor", metrics.DIVERGENCE_FACTOR, "diverged: |value| beyond "
                       "this times the training max-abs scale")
    flags.DEFINE_list("noise_contraction", None, "input-noise levels sigma (e.g. "
                      "0.004,0.01,0.02): also measure how much of such noise one step "
                      "passes on (diagnostics.noise_contraction)")
    flags.DEFINE_bool("allow_other_L", False, "run on a chain length other than the "
                      "training data's")
    flags.DEFINE_integer("cost_batch", cost.BATCH, "trajectories per timed rollout when "
                         "measuring the cost per trajectory per saved step")
    flags.DEFINE_integer("cost_steps", cost.STEPS, "saved steps per timed rollout")
    flags.DEFINE_integer("cost_repeats", cost.REPEATS, "timed rollouts (their median is the "
                         "cost); 0: do not measure the cost")
    flags.DEFINE_integer("lyapunov_trajectories", 0, "also measure the largest Lyapunov "
                         "exponent of the exact simulator and of the model from the first N "
                         "initial states (twin rollouts of the evaluated length: costly; 16 "
                         "is a good choice), 0: not")
    flags.mark_flags_as_mutual_exclusive(["model", "predictions"], required=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        data = FLAGS.data or str(Path(FLAGS.data_dir)
                                 / cli.config_from_flags(sections=["data"]).data.dataset_name)
        common = dict(
            split=FLAGS.split, batch_size=FLAGS.eval_batch, max_lag=FLAGS.max_lag,
            snapshot_steps=[int(s) for s in FLAGS.snapshot_steps]
            if FLAGS.snapshot_steps else None,
            snapshot_trajectory=FLAGS.snapshot_trajectory,
            divergence_factor=FLAGS.divergence_factor,
            lyapunov_trajectories=FLAGS.lyapunov_trajectories, progress=FLAGS.progress)
        for name in ("eval_batch", "chunk", "cost_batch", "cost_steps"):
            if FLAGS[name].value < 1:
                raise ValueError(f"--{name} must be >= 1, got {FLAGS[name].value}")
        if FLAGS.cost_repeats < 0:
            raise ValueError(f"--cost_repeats must be >= 0 (0: no cost), got "
                             f"{FLAGS.cost_repeats}")
        given = [name for name in MODEL_ONLY if FLAGS[name].present]
        if FLAGS.predictions and given:
            raise ValueError(f"--{', --'.join(given)} set how a model rolls out; they do not "
                             f"apply to --predictions")

        def evaluate_one(source: str, out_dir: str | Path | None) -> dict[str, Any]:
            if FLAGS.predictions:
                return scoring.evaluate_predictions(source, data, out_dir=out_dir, **common)
            return scoring.evaluate(
                source, data, out_dir=out_dir, n_traj=FLAGS.n_traj, steps=FLAGS.steps,
                chunk=FLAGS.chunk, allow_other_L=FLAGS.allow_other_L,
                cost_batch=FLAGS.cost_batch, cost_steps=FLAGS.cost_steps,
                cost_repeats=FLAGS.cost_repeats,
                noise_levels=[float(x) for x in FLAGS.noise_contraction or ()], **common)

        sources = FLAGS.predictions or FLAGS.model
        default_out = report.predictions_out_dir if FLAGS.predictions else \
            report.default_out_dir
        if not FLAGS.out and not FLAGS.predictions and baselines.is_baseline(sources[0]):
            raise ValueError(f"--model {sources[0]} has no directory to write into: pass --out")
        if len(sources) > 1 and not FLAGS.out:
            raise ValueError("several models are evaluated into <--out>/<name> and "
                             "compared in --out: pass --out")
        targets = [Path(FLAGS.out) / label for label in comparison.labels(sources)] \
            if len(sources) > 1 else [Path(FLAGS.out or default_out(sources[0], FLAGS.split))]
        existing = [str(t / "metrics.json") for t in targets if (t / "metrics.json").exists()]
        if existing and not FLAGS.overwrite:
            raise ValueError(f"{existing[0]} exists: pass --overwrite to replace it, or "
                             f"another --out")
        if len(sources) > 1:
            compared = comparison.evaluate_several(evaluate_one, sources, FLAGS.out)
            printed = {name: {key: entry[key] for key in ("median", "min", "max")}
                       for name, entry in compared["metrics"].items()}
        else:
            printed = report.headline(evaluate_one(sources[0], FLAGS.out))
        out = FLAGS.out or default_out(sources[0], FLAGS.split)
    except (ValueError, RuntimeError, IOError) as e:
        sys.exit(f"evaluate: error: {e}")
    except tf.errors.OpError as e:
        sys.exit(f"evaluate: error: {files.error_text(e)}")
    print(json.dumps({"out": str(out), **report.to_json(printed)}, indent=2))


def entry_point() -> None:
    """`python -m tf_holstein.evaluate` and the console script `holstein-evaluate`."""
    _define_flags()
    cli.run(main)


if __name__ == "__main__":
    entry_point()
