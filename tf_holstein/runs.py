"""A training run's workdir (`tf_holstein.train`): the files it keeps, made, checked and
locked for a training, and its model rebuilt from them with the best or the last weights, as
the export command needs.

    <workdir>/config.json         the run's full config (prepare_workdir)
    <workdir>/.lock               held by the training running there (hold_workdir)
    <workdir>/best.weights.h5     the best model so far by the selection metric
    <workdir>/checkpoints/        the last epochs' model, optimizer and curriculum position
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import keras
import tensorflow as tf

from tf_holstein import files, models, records
from tf_holstein.configs import Config, DataConfig, ModelConfig, Stage, TrainConfig
from tf_holstein.schedules import StagedWarmupCosine

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
BEST_WEIGHTS = "best.weights.h5"
CHECKPOINTS = "checkpoints"
WEIGHTS = ("best", "last")  # what a run's model can be rebuilt with
NO_DECAY = ("bias", "gamma", "beta")  # AdamW: no weight decay on biases and LayerNorms


def prepare_workdir(config: Config, workdir: Path, resume: bool) -> None:
    """Creates the workdir, or checks that resuming continues the same experiment."""
    path = workdir / CONFIG_FILE
    current = _as_json(config)
    if resume and not path.exists():
        raise ValueError(f"--resume: {workdir} holds no run to continue (no config.json); "
                         f"drop --resume to start one there")
    if path.exists():
        if not resume:
            raise ValueError(f"{workdir} already holds a run: pass --resume to continue it, or "
                             f"choose another --workdir")
        previous = _with_new_defaults(json.loads(path.read_text()), config)
        if previous != current:
            raise ValueError(f"{workdir} holds a run of a different config; --resume needs the "
                             f"same settings (see {path})")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        files.write_json(path, current)
    files.remove_stale_temporaries(workdir)  # best weights a killed run was writing


def _as_json(config: Any) -> dict[str, Any]:
    """A config dataclass as config.json holds it (stages and the like as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _with_new_defaults(saved: dict[str, Any], config: Config) -> dict[str, Any]:
    """A saved config.json with config fields added to the library since it was written
    filled in at their defaults, so runs started by an older version still resume."""
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value) and isinstance(saved.get(section.name), dict):
            for field, default in _as_json(type(value)()).items():
                saved[section.name].setdefault(field, default)
    return saved


@contextlib.contextmanager
def hold_workdir(workdir: Path) -> Iterator[None]:
    """Holds the workdir's lock (`.lock`) for a training's lifetime: a second training on
    the same workdir is refused, naming the lock and its holder, instead of both writing
    checkpoints and exports over each other."""
    workdir.mkdir(parents=True, exist_ok=True)
    lock = files.FileLock(workdir / LOCK_FILE)
    if not lock.acquire():
        raise RuntimeError(f"{workdir} is in use by another training ({lock.holder()} holds "
                           f"{lock.path}): wait for it to finish, or choose another --workdir")
    try:
        yield
    finally:
        lock.release()


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
