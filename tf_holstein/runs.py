"""A training run's workdir (`tf_holstein.train`): the files it keeps, and its model rebuilt
from them with the best or the last weights, as the export command needs.

    <workdir>/config.json         the run's full config (train.prepare_workdir)
    <workdir>/best.weights.h5     the best model so far by the selection metric
    <workdir>/checkpoints/        the last epochs' model, optimizer and curriculum position
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf

from tf_holstein import models, records
from tf_holstein.configs import Config, DataConfig, ModelConfig, Stage, TrainConfig
from tf_holstein.schedules import StagedWarmupCosine

CONFIG_FILE = "config.json"
BEST_WEIGHTS = "best.weights.h5"
CHECKPOINTS = "checkpoints"
WEIGHTS = ("best", "last")  # what a run's model can be rebuilt with
NO_DECAY = ("bias", "gamma", "beta")  # AdamW: no weight decay on biases and LayerNorms


def dataset_model(config: ModelConfig, meta: Mapping[str, Any]) -> models.HolsteinModel:
    """The config's untrained model for a dataset (its meta.json): scaled by its scales and
    told its protocol, the coupling g_f and the time per saved step."""
    return models.build_model(config, meta["scales"], meta["config"]["g_f"], meta["time_step"])


def build_optimizer(config: TrainConfig, model: models.HolsteinModel
                    ) -> tuple[StagedWarmupCosine, keras.optimizers.AdamW]:
    """The learning-rate schedule and the AdamW optimizer of a training, built for `model`'s
    weights (their moments, and their moving average with `ema`), as checkpoints hold them."""
    schedule = StagedWarmupCosine(
        config.lr, [s.epochs * s.batches_per_epoch for s in config.stages],
        config.warmup_steps, config.eta_min)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay, use_ema=config.ema > 0,
        ema_momentum=config.ema)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    optimizer.build(model.trainable_variables)
    return schedule, optimizer


def averaging(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether the optimizer holds a moving average of the weights to use: with `ema`, once
    a step has run (before it Keras' averages are zeros, not the weights)."""
    return optimizer.use_ema and bool(int(optimizer.iterations.numpy()))


def read_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The run's config.json as saved (sections of plain values); a clear error when
    `workdir` holds no training run."""
    path = Path(workdir) / CONFIG_FILE
    if not Path(workdir).is_dir():
        raise ValueError(f"{workdir} does not exist: give the --workdir of a training run")
    if not path.is_file():
        raise ValueError(f"{workdir} holds no training run (no {CONFIG_FILE}): give the "
                         f"--workdir a `python -m tf_holstein.train` run wrote")
    return json.loads(path.read_text())


def run_config(saved: Mapping[str, Any]) -> Config:
    """The Config of a saved config.json; fields added to the library since it was written
    take their defaults."""
    try:
        train = {**saved["train"], "stages": tuple(Stage(**stage)
                                                   for stage in saved["train"]["stages"])}
        return Config(saved["name"], DataConfig(**saved["data"]), ModelConfig(**saved["model"]),
                      TrainConfig(**train))
    except (KeyError, TypeError) as e:
        raise ValueError(f"a {CONFIG_FILE} this version cannot read: {e}") from None


def check_dataset(config: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Refuses a dataset other than the run's (its scales would mis-scale the model): the
    protocol in its meta.json must be the run's data config."""
    differing = [f"{key} {meta['config'].get(key)!r} (the run's {value!r})"
                 for key, value in config["data"].items() if meta["config"].get(key) != value]
    if differing:
        raise ValueError(f"the dataset {meta['dataset']} is not the one the run trained on: "
                         f"its {', '.join(differing)}; give the run's dataset with --data")


def load_model(workdir: str | os.PathLike, which: str, dataset_dir: str | os.PathLike
               ) -> tuple[models.HolsteinModel, dict[str, Any]]:
    """The run's model with its `which` weights and its dataset's meta.json.

    best: `best.weights.h5`, which validation keeps (the moving average of the weights with
    `ema`); last: the latest checkpoint's (its moving average with `ema`, as validated).
    """
    if which not in WEIGHTS:
        raise ValueError(f"unknown weights {which!r}; valid: {', '.join(WEIGHTS)}")
    workdir = Path(workdir)
    saved = read_config(workdir)
    meta = records.read_meta(dataset_dir)
    check_dataset(saved, meta)
    config = run_config(saved)
    model = dataset_model(config.model, meta)
    if which == "best":
        if not (workdir / BEST_WEIGHTS).is_file():
            raise ValueError(f"{workdir} holds no {BEST_WEIGHTS} (no validation has run yet, "
                             f"or the dataset has no validation split): export --which last")
        model.load_weights(str(workdir / BEST_WEIGHTS))
    else:
        restore_last(model, config.train, workdir)
    return model, meta


def restore_last(model: models.HolsteinModel, config: TrainConfig, workdir: Path) -> None:
    """Restores the latest checkpoint's weights into `model`: with `ema` their moving
    average, which the checkpointed optimizer holds (as validation uses them)."""
    latest = tf.train.latest_checkpoint(str(workdir / CHECKPOINTS))
    if not latest:
        raise ValueError(f"{workdir} holds no checkpoint yet (none in "
                         f"{workdir / CHECKPOINTS}): a run writes one after each epoch")
    _, optimizer = build_optimizer(config, model)
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(latest).expect_partial()
    if averaging(optimizer):
        optimizer.finalize_variable_values(model.trainable_variables)
