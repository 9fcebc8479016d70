"""python -m tf_holstein.train: the experiment end to end, around curriculum training.

    python -m tf_holstein.train --config shallow [--workdir runs/shallow] [--resume]

Generates the config's dataset if it is missing, trains with a custom
GradientTape loop under MirroredStrategy (every visible GPU, else the CPU;
MultiWorkerMirroredStrategy when TF_CONFIG is set), validates every epoch,
keeps the best model, writes TensorBoard logs and checkpoints under the
workdir, exports a SavedModel and the `.keras` model, evaluates the export on
the test split (metrics and figures in `eval-test/`) and writes `summary.json`.
The command line of `tf_holstein.experiment`, which runs these stages with the
`tf_holstein.trainer`.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import tensorflow as tf
from absl import app, flags

from tf_holstein import cli, experiment, files
from tf_holstein.cli import FLAGS

flags.DEFINE_string("workdir", None, "run directory (default runs/<config>)")
flags.DEFINE_bool("resume", False, "continue the run in --workdir from its last checkpoint")


def main(argv: Sequence[str]) -> None:
    """Runs the experiment of --config in --workdir; prints its timings and best model."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = cli.config_from_flags()
        workdir = FLAGS.workdir or os.path.join("runs", config.name)
        summary = experiment.run(config, FLAGS.data_dir, workdir, resume=FLAGS.resume,
                                 progress=FLAGS.progress)
    except (ValueError, RuntimeError, IOError) as e:
        sys.exit(f"train: error: {e}")
    except tf.errors.OpError as e:  # e.g. a shard damaged inside a record, found mid-epoch
        sys.exit(f"train: error: {files.error_text(e)}")
    if summary:
        print(json.dumps({"workdir": workdir, "timings": summary["timings"],
                          "best": summary["best"]}, indent=2))


def entry_point() -> None:
    """`python -m tf_holstein.train` and the console script `holstein-train`."""
    cli.run(main)


if __name__ == "__main__":
    entry_point()
