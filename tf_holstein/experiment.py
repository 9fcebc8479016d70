"""The experiment end to end, as `python -m tf_holstein.train` runs it: the config's dataset
(generated if missing), training (`trainer`), the export of the best model, its evaluation on
the test split (metrics and figures in `eval-test/`) and `summary.json`.

    summary = experiment.run(get_config("shallow"), "data", "runs/shallow")
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from tf_holstein import datagen, export, files, report, runs, scoring, __version__
from tf_holstein.configs import Config
from tf_holstein.trainer import Trainer


def run(config: Config, data_dir: str | os.PathLike, workdir: str | os.PathLike, *,
        resume: bool = False, progress: bool = True,
        strategy: tf.distribute.Strategy | None = None) -> dict[str, Any]:
    """Data (generated if missing), training, export: the whole experiment. Returns the summary."""
    workdir = Path(workdir)
    timings = {}
    tic = time.perf_counter()
    # Idempotent: simulates only missing shards, and refuses an existing dataset made
    # with another protocol rather than training on it.
    dataset_dir = datagen.generate(config.data, data_dir, progress=progress)
    timings["data_s"] = time.perf_counter() - tic
    # The trainer checks the settings against the dataset before the workdir is made, so
    # that a corrected rerun starts cleanly; it writes nothing there itself.
    trainer = Trainer(config, dataset_dir, workdir, strategy)
    with contextlib.ExitStack() as stack:
        if trainer.is_chief:
            stack.enter_context(runs.hold_workdir(workdir))
            runs.prepare_workdir(config, workdir, resume)
        if trainer.state.restore() and not resume:
            raise ValueError(f"{workdir} has checkpoints: pass --resume to continue")
        tic = time.perf_counter()
        final = trainer.fit(progress=progress)
        timings["train_s"] = time.perf_counter() - tic
        return finish(trainer, dataset_dir, final, timings, progress) if trainer.is_chief \
            else {}


def finish(trainer: Trainer, dataset_dir: Path, final: Mapping[str, Any],
           timings: dict[str, float], progress: bool) -> dict[str, Any]:
    """Exports the best model, evaluates it on the test split and writes `summary.json`;
    returns the summary."""
    workdir, model = trainer.workdir, trainer.state.model
    tic = time.perf_counter()
    if (workdir / runs.BEST_WEIGHTS).exists():
        model.load_weights(str(workdir / runs.BEST_WEIGHTS))
    export.export_trained(model, trainer.meta, workdir / "export")
    timings["export_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    test = None
    if trainer.meta["splits"]["test"]["num_trajectories"]:
        test = report.headline(scoring.evaluate(
            workdir / "export", dataset_dir, split="test", out_dir=workdir / "eval-test",
            progress=progress))
    timings["evaluate_s"] = time.perf_counter() - tic
    summary = {
        "config": runs.read_config(workdir),
        "dataset": str(dataset_dir),
        "versions": {"tf_holstein": __version__,
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "replicas": trainer.strategy.num_replicas_in_sync,
        "optimizer_steps": int(trainer.state.optimizer.iterations.numpy()),
        "timings": timings,
        "final": final,
        "test": test,
        "best": json.loads((workdir / "best.json").read_text())
        if (workdir / "best.json").exists() else None,
    }
    files.write_json(workdir / "summary.json", summary)
    return summary
