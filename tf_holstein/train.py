"""python -m tf_holstein.train: the experiment end to end, around curriculum training.

    python -m tf_holstein.train --config shallow [--workdir runs/shallow] [--resume]

Generates the config's dataset if it is missing, trains with a custom
GradientTape loop under MirroredStrategy (every visible GPU, else the CPU;
MultiWorkerMirroredStrategy when TF_CONFIG is set), validates every epoch,
keeps the best model, writes TensorBoard logs and checkpoints under the
workdir, exports a SavedModel and the `.keras` model, evaluates the export on
the test split (metrics and figures in `eval-test/`) and writes `summary.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tensorboard.plugins.hparams import api as hparams

from tf_holstein import (cli, data, datagen, export, losses, metrics, models, plots, records,
                         rollout, runs)
from tf_holstein.cli import FLAGS
from tf_holstein.configs import Config, Stage

flags.DEFINE_string("workdir", None, "run directory (default runs/<config>)")
flags.DEFINE_bool("resume", False, "continue the run in --workdir from its last checkpoint")

LOCK_FILE = ".lock"  # held by the training running in a workdir (`hold_workdir`)
LOG_EVERY = 50  # optimizer steps between TensorBoard scalar writes
EPOCH_LOG_KEYS = ("loss/total", "val_loss/total", "val_rollout/Delta_rho_rmse_over_std",
                  "val_rollout/Delta_Q_rmse_over_std", "val_rollout/autocorrelation_max_abs_diff",
                  "best")
# Model selection metric per `select_by`; lower is better. The rollout scores are
# `metrics.selection_scores`, which `evaluate` reports as well.
SELECTION_KEYS = {"rollout": "val_rollout/score", "loss": "val_loss/total",
                  "autocorrelation": "val_rollout/autocorrelation_max_abs_diff"}


def make_strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy under TF_CONFIG, else MirroredStrategy over `devices`
    (default: every GPU, or the CPU when there is none)."""
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if devices is None and not tf.config.list_logical_devices("GPU"):
        devices = ["/cpu:0"]
    return tf.distribute.MirroredStrategy(devices)


def random_states(model: keras.Model) -> list[keras.Variable]:
    """The states of the model's random number generators (its dropout layers' seed
    generators): what `model.variables` holds beyond the weights. Checkpointed, so that a
    resumed run draws the dropout masks an uninterrupted one would."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def stage_epochs(stages: Sequence[Stage]) -> list[tuple[int, Stage]]:
    """(stage index, stage) for every epoch of the curriculum, in order."""
    return [(k, stage) for k, stage in enumerate(stages) for _ in range(stage.epochs)]


class Trainer:
    """The model, optimizer, curriculum position and their checkpoints, for one workdir."""

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
        self.is_chief = _is_chief(self.strategy)
        train = config.train
        # Rollout chains overlap on a CPU's cores; a GPU would only run smaller kernels.
        self.chains = 1 if tf.config.list_logical_devices("GPU") else train.chains
        self.epochs = stage_epochs(train.stages)
        keras.utils.set_random_seed(train.train_seed)
        with self.strategy.scope():
            self.model = runs.dataset_model(config.model, self.meta)
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
        self.checkpoint = tf.train.Checkpoint(**self._checkpointed)
        directory = self.workdir / runs.CHECKPOINTS
        if not self.is_chief:  # every worker saves; only the chief's copy is kept
            directory = self.workdir / "tmp" / f"worker-{_task_id(self.strategy)}"
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory),
                                                  max_to_keep=2)
        self._steps: dict[int, Any] = {}
        self._evals: dict[int, Any] = {}
        self._val = records.load_split(self.dataset_dir, "val") if self.meta["splits"]["val"][
            "num_trajectories"] else None

    @property
    def has_derivatives(self) -> bool:
        return self.model.has_derivatives

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
        if "random_state" in missing and self.config.model.dropout > 0:
            logging.warning("%s holds no random state of the dropout (written by an earlier "
                            "version): the resumed run draws other dropout masks than an "
                            "uninterrupted one", latest)
        return True

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

    # -- data ---------------------------------------------------------------------------
    def train_dataset(self, epoch: int, stage: Stage) -> tf.distribute.DistributedDataset:
        """The epoch's batches; seeded by (train_seed, epoch) so a resumed run sees the same."""
        seed = self.config.train.train_seed * 1_000_003 + epoch

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return data.make_dataset(
                self.dataset_dir, "train", n_step=stage.n_step,
                batch_size=self.config.train.batch_size, noise_std=stage.noise,
                derivatives=self.has_derivatives, shuffle=True, seed=seed, repeat=True,
                drop_remainder=True, input_context=context)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # -- steps --------------------------------------------------------------------------
    def _losses(self, inputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor],
                n_step: int, training: bool) -> dict[str, tuple[tf.Tensor, tf.Tensor]]:
        """Squared-error sums and counts of every loss term for a (local) batch of windows."""
        out = self.model.rollout(inputs, n_step, training=training,
                                 return_derivatives=self.has_derivatives,
                                 chains=self.chains if training else None)
        states, derivatives = out if self.has_derivatives else (out, None)
        sums = losses.squared_error_sums(states, targets)
        if derivatives is not None:
            labels = {key: targets[f"d{key}"] for key in records.STATE_KEYS}
            sums.update({f"d_{k}": v for k, v in
                         losses.squared_error_sums(derivatives, labels).items()})
        if self.config.train.order_parameter_weight:
            sums.update(losses.order_parameter_error_sums(states, targets))
        return sums

    def _weights(self, names: Sequence[str]) -> list[float]:
        train = self.config.train
        return [train.derivative_weight if n.startswith("d_") else
                train.order_parameter_weight if n.startswith("Delta_") else 1.0 for n in names]

    def _replica_step(self, inputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor],
                      n_step: int) -> dict[str, tf.Tensor]:
        """One optimizer step on this replica's share of the global batch.

        The loss is a sum of RMS errors over the global batch, which is not a mean
        of per-replica losses: replicas all-reduce their squared-error sums, then
        differentiate sum_c w_c S_c,local / (2 RMS_c N_c), whose gradient summed over
        replicas is exactly that of the global loss. Gradients are summed and clipped
        by their global norm here, as on one device; the optimizer sums replicas'
        gradients again, so each hands it 1/replicas of the total.
        """
        context = tf.distribute.get_replica_context()
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            sums = self._losses(inputs, targets, n_step, training=True)
            names = sorted(sums)
            local = tf.stack([sums[n][0] for n in names])
            counts = context.all_reduce("sum", tf.stack([sums[n][1] for n in names]))
            total = context.all_reduce("sum", tf.stop_gradient(local))
            rms = losses.root_mean(total, counts)
            weights = tf.constant(self._weights(names))
            surrogate = tf.reduce_sum(weights * local / (2.0 * tf.maximum(rms, 1e-12) * counts))
        grads = context.all_reduce("sum", tape.gradient(surrogate, variables))
        clipped, norm = tf.clip_by_global_norm(grads, self.config.train.clip_norm)
        replicas = tf.cast(context.num_replicas_in_sync, tf.float32)
        self.optimizer.apply([g / replicas for g in clipped], variables)
        metrics = {f"loss/{n}": r for n, r in zip(names, tf.unstack(rms))}
        metrics["loss/total"] = tf.reduce_sum(weights * rms)
        metrics["grad_norm"] = norm
        return metrics

    def train_step(self, n_step: int) -> Any:
        """The compiled distributed step for windows of n_step (one trace per n_step)."""
        if n_step not in self._steps:
            replica_step = tf.function(lambda i, t: self._replica_step(i, t, n_step),
                                       jit_compile=self._jit())

            @tf.function
            def step(batch: Any) -> dict[str, tf.Tensor]:
                metrics = self.strategy.run(replica_step, args=batch)
                # Every replica holds the same all-reduced values: read the first.
                return tf.nest.map_structure(
                    lambda v: self.strategy.experimental_local_results(v)[0], metrics)

            self._steps[n_step] = step
        return self._steps[n_step]

    def _jit(self) -> bool:
        # XLA compiles the steps on GPUs only. On the CPU its convolution gradients
        # measured 16x slower than TensorFlow's kernels (tiny CNN, L = 16, batch 128:
        # 383 ms against 24 ms per step), and cross-device collectives inside XLA need
        # GPUs (NCCL) anyway.
        return self.config.train.jit_compile and bool(tf.config.list_logical_devices("GPU"))

    def eval_losses(self, n_step: int, batches: int) -> dict[str, float]:
        """Multi-step validation loss over `batches` fixed batches of validation windows."""
        if self._val is None:
            return {}
        if n_step not in self._evals:
            self._evals[n_step] = tf.function(
                lambda i, t: self._losses(i, t, n_step, training=False),
                jit_compile=self._jit())
        dataset = data.make_dataset(self.dataset_dir, "val", n_step=n_step,
                                    batch_size=self.config.train.batch_size,
                                    derivatives=self.has_derivatives, shuffle=True,
                                    seed=self.config.train.train_seed, repeat=True)
        totals: dict[str, np.ndarray] = {}
        for inputs, targets in dataset.take(batches):
            for name, (total, count) in self._evals[n_step](inputs, targets).items():
                totals[name] = totals.get(name, 0.0) + np.array([float(total), float(count)])
        names = sorted(totals)
        rms = {n: float(losses.root_mean(*totals[n])) for n in names}
        out = {f"val_loss/{n}": v for n, v in rms.items()}
        out["val_loss/total"] = float(sum(w * rms[n] for n, w in zip(names,
                                                                       self._weights(names))))
        return out

    def rollout_metrics(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The validation split rolled out from each trajectory's first state and scored
        as `evaluate` scores it (`metrics.compute_metrics`): the median Delta_rho and
        Delta_Q RMSE / std (a diverged trajectory counting as infinite), the selection
        scores `metrics.selection_scores`, and the order-parameter traces."""
        if self._val is None:
            return {}, {}
        steps = min(self.config.train.val_rollout_steps or self.meta["T"], self.meta["T"])
        collected = rollout.against_truth(
            rollout.keras_rollout(self.model), rollout.array_batches(self._val), steps,
            self.meta["config"]["g_f"], metrics.divergence_limits(self.model.scales))
        summary = metrics.compute_metrics(collected, self.meta["L"])["summary"]
        scores = {f"val_rollout/{name}_rmse_over_std":
                  summary[name]["median_rmse_over_std_counting_diverged"]
                  for name in metrics.ORDER_PARAMETERS}
        scores["val_rollout/score"] = summary["selection"]["rollout"]
        scores["val_rollout/autocorrelation_max_abs_diff"] = \
            summary["selection"]["autocorrelation"]
        traces = {f"{prefix}_{name}": getattr(collected, source)[name]
                  for prefix, source in (("true", "truth"), ("pred", "prediction"))
                  for name in metrics.ORDER_PARAMETERS}
        return scores, traces

    # -- the loop -----------------------------------------------------------------------
    def fit(self, progress: bool = True) -> dict[str, Any]:
        """Runs the remaining epochs of the curriculum; returns the final metrics."""
        train = self.config.train
        writer = tf.summary.create_file_writer(str(self.workdir / "tensorboard")) \
            if self.is_chief else tf.summary.create_noop_writer()
        from tqdm import tqdm

        bar = tqdm(total=train.total_steps, initial=int(self.optimizer.iterations.numpy()),
                   disable=not (progress and self.is_chief), unit=" steps", dynamic_ncols=True)
        final: dict[str, Any] = json.loads(self.last_metrics.numpy())  # if none are left
        if not int(self.optimizer.iterations.numpy()):  # once per run, not again on resume
            write_config(writer, self.config)
        start_epoch = int(self.epoch.numpy())
        if start_epoch == 0 and train.select_by != "loss":
            # The starting model competes for best too (a split step, a warm start): the run
            # then never keeps a model whose rollouts are worse than where it began. Losses
            # are compared within the latest stage only, so they skip this.
            self.validate(self.epochs[0][1], writer, epochs_trained=0)
        for epoch in range(start_epoch, len(self.epochs)):
            stage_index, stage = self.epochs[epoch]
            bar.set_description(f"stage {stage_index + 1}/{len(train.stages)} "
                                f"(n_step {stage.n_step}) epoch {epoch + 1}/{len(self.epochs)}")
            step_fn = self.train_step(stage.n_step)
            iterator = iter(self.train_dataset(epoch, stage))
            tic, done = time.perf_counter(), 0
            for _ in range(stage.batches_per_epoch):
                metrics = step_fn(next(iterator))
                done += 1
                step = int(self.optimizer.iterations.numpy())
                bar.update(1)
                if step % LOG_EVERY == 0 or step == 1 or done == stage.batches_per_epoch:
                    rate = done * train.batch_size / (time.perf_counter() - tic)
                    values = {k: float(v) for k, v in metrics.items()}
                    values.update({"samples_per_sec": rate,
                                   "learning_rate": float(self.schedule(step - 1))})
                    bar.set_postfix(loss=f"{values['loss/total']:.4g}",
                                    samples_s=f"{rate:.0f}")
                    _write_scalars(writer, values, step)
            first_of_stage = epoch == 0 or self.epochs[epoch - 1][0] != stage_index
            if first_of_stage and train.select_by == "loss":
                # Losses over different n_step are not comparable: keep the best of the
                # latest stage reached.
                self.best.assign(math.inf)
            final = {**values, **self.validate(stage, writer, epochs_trained=epoch + 1)}
            self.last_metrics.assign(json.dumps(final))
            self.epoch.assign(epoch + 1)
            self.manager.save(checkpoint_number=epoch + 1)
            if self.is_chief:  # one line per epoch for logs of unattended runs
                logging.info("epoch %d/%d (stage %d, n_step %d): step %d, %.0f samples/s, %s",
                             epoch + 1, len(self.epochs), stage_index + 1, stage.n_step, step,
                             rate, ", ".join(f"{k} {v:.4g}" for k, v in sorted(final.items())
                                             if k in EPOCH_LOG_KEYS))
        bar.close()
        writer.flush()
        return final

    def validate(self, stage: Stage, writer: tf.summary.SummaryWriter, epochs_trained: int
                 ) -> dict[str, float]:
        """Validation loss and rollout metric (of the averaged weights with `ema` set) of the
        model after `epochs_trained` epochs; saves the best model so far."""
        step = int(self.optimizer.iterations.numpy())
        with self.averaged_weights():
            scores = self.eval_losses(stage.n_step, self.config.train.val_batches)
            rollout_scores, traces = self.rollout_metrics()
            scores.update(rollout_scores)
            key = SELECTION_KEYS[self.config.train.select_by]
            if key in scores and scores[key] < float(self.best.numpy()):
                self.best.assign(scores[key])
                if self.is_chief:
                    records.write_atomically(self.workdir / runs.BEST_WEIGHTS,
                                             self.model.save_weights, ".tmp.weights.h5")
                    records.write_json(self.workdir / "best.json",
                                       {"step": step, "epoch": epochs_trained,
                                        key: scores[key], **scores})
        scores["best"] = float(self.best.numpy())
        _write_scalars(writer, scores, step)
        if traces:
            with writer.as_default(step=step):
                tf.summary.image("val/order_parameters",
                                 plots.order_parameter_image(traces, trajectory=0)[None])
        return scores


def write_config(writer: tf.summary.SummaryWriter, config: Config) -> None:
    """The run's config in TensorBoard at step 0: a markdown table of every field (Text) and
    the fields as hyperparameters (HParams), so that runs can be told apart and compared."""
    fields = {"name": config.name, **cli.config_fields(config)}
    table = "\n".join(["| field | value |", "|---|---|",
                       *(f"| {name} | {value} |" for name, value in fields.items())])
    with writer.as_default(step=0):
        tf.summary.text("config", table)
        hparams.hparams(fields)


def _write_scalars(writer: tf.summary.SummaryWriter, values: Mapping[str, float],
                   step: int) -> None:
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, value)


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def _task_id(strategy: tf.distribute.Strategy) -> int:
    return int(getattr(strategy.cluster_resolver, "task_id", 0) or 0)


def prepare_workdir(config: Config, workdir: Path, resume: bool) -> None:
    """Creates the workdir, or checks that resuming continues the same experiment."""
    path = workdir / runs.CONFIG_FILE
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
        records.write_json(path, current)
    records.remove_stale_temporaries(workdir)  # best weights a killed run was writing


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
    lock = records.FileLock(workdir / LOCK_FILE)
    if not lock.acquire():
        raise RuntimeError(f"{workdir} is in use by another training ({lock.holder()} holds "
                           f"{lock.path}): wait for it to finish, or choose another --workdir")
    try:
        yield
    finally:
        lock.release()


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
            stack.enter_context(hold_workdir(workdir))
            prepare_workdir(config, workdir, resume)
        if trainer.restore() and not resume:
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
    workdir = trainer.workdir
    tic = time.perf_counter()
    if (workdir / runs.BEST_WEIGHTS).exists():
        trainer.model.load_weights(str(workdir / runs.BEST_WEIGHTS))
    export.export_trained(trainer.model, trainer.meta, workdir / "export")
    timings["export_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    evaluation = None
    if trainer.meta["splits"]["test"]["num_trajectories"]:
        # The experiment's last stage, downstream of training: training itself scores
        # with metrics and rollout only.
        from tf_holstein.evaluation import evaluate, headline

        evaluation = headline(evaluate(
            workdir / "export", dataset_dir, split="test", out_dir=workdir / "eval-test",
            progress=progress))
    timings["evaluate_s"] = time.perf_counter() - tic
    summary = {
        "config": runs.read_config(workdir),
        "dataset": str(dataset_dir),
        "versions": {"tf_holstein": __import__("tf_holstein").__version__,
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "replicas": trainer.strategy.num_replicas_in_sync,
        "optimizer_steps": int(trainer.optimizer.iterations.numpy()),
        "timings": timings,
        "final": final,
        "test": evaluation,
        "best": json.loads((workdir / "best.json").read_text())
        if (workdir / "best.json").exists() else None,
    }
    records.write_json(workdir / "summary.json", summary)
    return summary


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = cli.config_from_flags()
        workdir = FLAGS.workdir or os.path.join("runs", config.name)
        summary = run(config, FLAGS.data_dir, workdir, resume=FLAGS.resume,
                      progress=FLAGS.progress)
    except (ValueError, RuntimeError, IOError) as e:
        sys.exit(f"train: error: {e}")
    except tf.errors.OpError as e:  # e.g. a shard damaged inside a record, found mid-epoch
        sys.exit(f"train: error: {records.error_text(e)}")
    if summary:
        print(json.dumps({"workdir": workdir, "timings": summary["timings"],
                          "best": summary["best"]}, indent=2))


def entry_point() -> None:
    """`python -m tf_holstein.train` and the console script `holstein-train`."""
    cli.run(main)


if __name__ == "__main__":
    entry_point()
