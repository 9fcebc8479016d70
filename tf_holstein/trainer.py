"""The trainer: curriculum training with a custom GradientTape loop under a distribution
strategy (`distributed`), validated after every epoch (`validation`), resumable from the
checkpoints it writes in its workdir, logged to TensorBoard.

    trainer = Trainer(config, dataset_dir, workdir)
    trainer.state.restore()  # when resuming
    final_metrics = trainer.fit()
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import keras
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hparams
from tqdm import tqdm

from tf_holstein import cli, data, models, plots, records, runs
from tf_holstein.configs import Config, Stage
from tf_holstein.distributed import TrainSteps, is_chief, make_strategy, task_id
from tf_holstein.validation import Validation

LOG_EVERY = 50  # optimizer steps between TensorBoard scalar writes
EPOCH_LOG_KEYS = ("loss/total", "val_loss/total", "val_rollout/Delta_rho_rmse_over_std",
                  "val_rollout/Delta_Q_rmse_over_std", "val_rollout/autocorrelation_max_abs_diff",
                  "best")


def stage_epochs(stages: Sequence[Stage]) -> list[tuple[int, Stage]]:
    """(stage index, stage) for every epoch of the curriculum, in order."""
    return [(k, stage) for k, stage in enumerate(stages) for _ in range(stage.epochs)]


def random_states(model: keras.Model) -> list[keras.Variable]:
    """The states of the model's random number generators (its dropout layers' seed
    generators): what `model.variables` holds beyond the weights. Checkpointed, so that a
    resumed run draws the dropout masks an uninterrupted one would."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class TrainState:
    """What a training checkpoints: the model (seeded by `train_seed`, or warm-started), its
    optimizer and schedule, the epochs completed, the best validation score and the last
    epoch's metrics. Every worker saves; only the chief's checkpoints are the run's."""

    def __init__(self, config: Config, meta: Mapping[str, Any], workdir: Path,
                 strategy: tf.distribute.Strategy, chief: bool):
        train, self.dropout = config.train, config.model.dropout
        keras.utils.set_random_seed(train.train_seed)
        with strategy.scope():
            self.model = runs.dataset_model(config.model, meta)
            if train.init_from:
                models.warm_start(self.model, train.init_from)
            self.schedule, self.optimizer = runs.build_optimizer(train, self.model)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # epochs completed
            self.best = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        # The last epoch's metrics as JSON, for the summary of a run resumed after its
        # training ended (killed during export, say). Outside the strategy: a string.
        self.last_metrics = tf.Variable("{}", dtype=tf.string, trainable=False)
        self._checkpointed = {"model": self.model, "optimizer": self.optimizer,
                              "epoch": self.epoch, "best": self.best,
                              "random_state": random_states(self.model),
                              "last_metrics": self.last_metrics}
        directory = workdir / runs.CHECKPOINTS if chief else \
            workdir / "tmp" / f"worker-{task_id(strategy)}"
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**self._checkpointed),
                                                  str(directory), max_to_keep=2)

    def restore(self) -> bool:
        """Restores the latest checkpoint, if any; returns whether one was found. A checkpoint
        of an earlier version, without the random state or the last metrics, restores the
        rest (with a warning that dropout then draws other masks)."""
        latest = self.manager.latest_checkpoint
        if not latest:
            return False
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(latest)}
        missing = {name for name in ("random_state", "last_metrics") if name not in saved}
        tf.train.Checkpoint(**{name: value for name, value in self._checkpointed.items()
                               if name not in missing}
                            ).restore(latest).assert_existing_objects_matched()
        if "random_state" in missing and self.dropout > 0:
            logging.warning("%s holds no random state of the dropout (written by an earlier "
                            "version): the resumed run draws other dropout masks than an "
                            "uninterrupted one", latest)
        return True

    def end_epoch(self, epochs_completed: int, final: Mapping[str, float]) -> None:
        """Records an epoch's end and its metrics, and checkpoints."""
        self.last_metrics.assign(json.dumps(final))
        self.epoch.assign(epochs_completed)
        self.manager.save(checkpoint_number=epochs_completed)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """With `ema` set: the model holds the moving average of its weights inside the
        block and its trained weights again after it; otherwise, and before the first step
        (when Keras' averages are still zero, not the weights), a no-op."""
        if not runs.averaging(self.optimizer):
            yield
            return
        variables = self.model.trainable_variables
        trained = [v.numpy() for v in variables]
        self.optimizer.finalize_variable_values(variables)
        try:
            yield
        finally:
            for variable, value in zip(variables, trained):
                variable.assign(value)


class TensorBoardLog:
    """A run's TensorBoard events (`<workdir>/tensorboard`; only the chief writes them)."""

    def __init__(self, directory: Path, enabled: bool):
        self.writer = tf.summary.create_file_writer(str(directory)) if enabled \
            else tf.summary.create_noop_writer()

    def config(self, config: Config) -> None:
        """The run's config at step 0: a markdown table of every field (Text) and the fields
        as hyperparameters (HParams), so that runs can be told apart and compared."""
        fields = {"name": config.name, **cli.config_fields(config)}
        table = "\n".join(["| field | value |", "|---|---|",
                           *(f"| {name} | {value} |" for name, value in fields.items())])
        with self.writer.as_default(step=0):
            tf.summary.text("config", table)
            hparams.hparams(fields)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Each value as a scalar of its name at `step`."""
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def order_parameters(self, traces: Mapping[str, Any], step: int) -> None:
        """The validation rollout's order parameters against the truth, as an image."""
        if traces:
            with self.writer.as_default(step=step):
                tf.summary.image("val/order_parameters",
                                 plots.order_parameter_image(traces, trajectory=0)[None])


class Trainer:
    """Trains a config's model on a dataset through its curriculum, in one workdir."""

    def __init__(self, config: Config, dataset_dir: str | os.PathLike,
                 workdir: str | os.PathLike, strategy: tf.distribute.Strategy | None = None):
        self.config = config
        self.dataset_dir = Path(dataset_dir)
        self.workdir = Path(workdir)
        self.meta = records.read_meta(self.dataset_dir)
        # Before any work: the settings (of a config built without get_config, too) and
        # whether the curriculum can run on this dataset.
        config.train.validate().check_dataset(
            self.meta["dataset"], self.meta["T"],
            self.meta["splits"]["train"]["num_trajectories"])
        self.strategy = strategy or make_strategy()
        self.is_chief = is_chief(self.strategy)
        self.epochs = stage_epochs(config.train.stages)
        self.state = TrainState(config, self.meta, self.workdir, self.strategy, self.is_chief)
        self.steps = TrainSteps(self.state.model, self.state.optimizer, config.train,
                                self.strategy)
        self.validation = Validation(self.steps, self.state.best, self.dataset_dir, self.meta,
                                     self.workdir, self.is_chief)

    def train_dataset(self, epoch: int, stage: Stage) -> tf.distribute.DistributedDataset:
        """The epoch's batches; seeded by (train_seed, epoch) so a resumed run sees the same."""
        seed = self.config.train.train_seed * 1_000_003 + epoch

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return data.make_dataset(
                self.dataset_dir, "train", n_step=stage.n_step,
                batch_size=self.config.train.batch_size, noise_std=stage.noise,
                derivatives=self.state.model.has_derivatives, shuffle=True, seed=seed,
                repeat=True, drop_remainder=True, input_context=context)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def fit(self, progress: bool = True) -> dict[str, Any]:
        """Runs the remaining epochs of the curriculum; returns the final metrics."""
        train, state = self.config.train, self.state
        log = TensorBoardLog(self.workdir / "tensorboard", self.is_chief)
        bar = tqdm(total=train.total_steps, initial=int(state.optimizer.iterations.numpy()),
                   disable=not (progress and self.is_chief), unit=" steps", dynamic_ncols=True)
        final: dict[str, Any] = json.loads(state.last_metrics.numpy())  # if none are left
        if not int(state.optimizer.iterations.numpy()):  # once per run, not again on resume
            log.config(self.config)
        start_epoch = int(state.epoch.numpy())
        if start_epoch == 0 and train.select_by != "loss":
            # The starting model competes for best too (a split step, a warm start): the run
            # then never keeps a model whose rollouts are worse than where it began. Losses
            # are compared within the latest stage only, so they skip this.
            self.validate(self.epochs[0][1], log, epochs_trained=0)
        for epoch in range(start_epoch, len(self.epochs)):
            stage_index, stage = self.epochs[epoch]
            bar.set_description(f"stage {stage_index + 1}/{len(train.stages)} "
                                f"(n_step {stage.n_step}) epoch {epoch + 1}/{len(self.epochs)}")
            step_fn = self.steps.train_step(stage.n_step)
            iterator = iter(self.train_dataset(epoch, stage))
            tic, done = time.perf_counter(), 0
            for _ in range(stage.batches_per_epoch):
                metrics = step_fn(next(iterator))
                done += 1
                step = int(state.optimizer.iterations.numpy())
                bar.update(1)
                if step % LOG_EVERY == 0 or step == 1 or done == stage.batches_per_epoch:
                    rate = done * train.batch_size / (time.perf_counter() - tic)
                    values = {k: float(v) for k, v in metrics.items()}
                    values.update({"samples_per_sec": rate,
                                   "learning_rate": float(state.schedule(step - 1))})
                    bar.set_postfix(loss=f"{values['loss/total']:.4g}",
                                    samples_s=f"{rate:.0f}")
                    log.scalars(values, step)
            if epoch == 0 or self.epochs[epoch - 1][0] != stage_index:
                self.validation.new_stage()
            final = {**values, **self.validate(stage, log, epochs_trained=epoch + 1)}
            state.end_epoch(epoch + 1, final)
            if self.is_chief:  # one line per epoch for logs of unattended runs
                logging.info("epoch %d/%d (stage %d, n_step %d): step %d, %.0f samples/s, %s",
                             epoch + 1, len(self.epochs), stage_index + 1, stage.n_step, step,
                             rate, ", ".join(f"{k} {v:.4g}" for k, v in sorted(final.items())
                                             if k in EPOCH_LOG_KEYS))
        bar.close()
        log.writer.flush()
        return final

    def validate(self, stage: Stage, log: TensorBoardLog, epochs_trained: int
                 ) -> dict[str, float]:
        """Validates the model after `epochs_trained` epochs (its averaged weights, with
        `ema` set), keeping it if it is the best so far, and logs the scores."""
        step = int(self.state.optimizer.iterations.numpy())
        with self.state.averaged_weights():
            scores, traces = self.validation.validate(stage.n_step, step, epochs_trained)
        log.scalars(scores, step)
        log.order_parameters(traces, step)
        return scores
