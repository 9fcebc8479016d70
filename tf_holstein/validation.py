"""Validation in training: after each epoch, the model's multi-step loss and rollouts on the
validation split, and the best model so far by `select_by` kept in the workdir
(`best.weights.h5`, `best.json`), the model a run exports."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tf_holstein import data, files, losses, metrics, records, rollout, runs
from tf_holstein.distributed import TrainSteps

# Model selection metric per `select_by`; lower is better. The rollout scores are
# `metrics.selection_scores`, which `evaluate` reports as well.
SELECTION_KEYS = {"rollout": "val_rollout/score", "loss": "val_loss/total",
                  "autocorrelation": "val_rollout/autocorrelation_max_abs_diff"}


class Validation:
    """Scores a training's model on the validation split and keeps the best model so far:
    `best` is its score (checkpointed with the training), the chief writes its weights."""

    def __init__(self, steps: TrainSteps, best: tf.Variable, dataset_dir: Path,
                 meta: Mapping[str, Any], workdir: Path, is_chief: bool):
        self.steps, self.best, self.meta, self.workdir, self.is_chief = \
            steps, best, meta, workdir, is_chief
        self.model, self.config, self.dataset_dir = steps.model, steps.config, dataset_dir
        self.split = records.load_split(dataset_dir, "val") if meta["splits"]["val"][
            "num_trajectories"] else None
        self._batches: tuple[tuple[int, int], list[Any]] | None = None

    def losses(self, n_step: int, batches: int) -> dict[str, float]:
        """Multi-step validation loss over `batches` fixed batches of validation windows."""
        if self.split is None:
            return {}
        eval_step = self.steps.eval_step(n_step)
        totals: dict[str, np.ndarray] = {}
        for inputs, targets in self._fixed_batches(n_step, batches):
            for name, (total, count) in eval_step(inputs, targets).items():
                totals[name] = totals.get(name, 0.0) + np.array([float(total), float(count)])
        names = sorted(totals)
        rms = {n: float(losses.root_mean(*totals[n])) for n in names}
        out = {f"val_loss/{n}": v for n, v in rms.items()}
        out["val_loss/total"] = float(sum(w * rms[n] for n, w in zip(
            names, self.steps.loss_weights(names))))
        return out

    def _fixed_batches(self, n_step: int, batches: int) -> list[Any]:
        """The first `batches` batches of the seeded, shuffled validation windows, read once
        per (n_step, batches) and kept until the curriculum moves on: every validation scores
        the same windows, and building the pipeline anew cost seconds of tracing per call."""
        key = (n_step, batches)
        if self._batches is None or self._batches[0] != key:
            dataset = data.make_dataset(self.dataset_dir, "val", n_step=n_step,
                                        batch_size=self.config.batch_size,
                                        derivatives=self.model.has_derivatives, shuffle=True,
                                        seed=self.config.train_seed, repeat=True)
            self._batches = key, list(dataset.take(batches))
        return self._batches[1]

    def rollout_metrics(self) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The validation split rolled out from each trajectory's first state and scored
        as `evaluate` scores it (`metrics.compute_metrics`): the median Delta_rho and
        Delta_Q RMSE / std (a diverged trajectory counting as infinite), the selection
        scores `metrics.selection_scores`, and the order-parameter traces."""
        if self.split is None:
            return {}, {}
        steps = min(self.config.val_rollout_steps or self.meta["T"], self.meta["T"])
        collected = rollout.against_truth(
            rollout.keras_rollout(self.model), rollout.array_batches(self.split), steps,
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

    def new_stage(self) -> None:
        """Called as training enters a curriculum stage: losses over different n_step are
        not comparable, so selecting by loss keeps the best of the latest stage reached."""
        if self.config.select_by == "loss":
            self.best.assign(math.inf)

    def validate(self, n_step: int, step: int, epochs_trained: int
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The scores of the model after `epochs_trained` epochs (`step` optimizer steps),
        with the best score so far, and its order-parameter traces; keeps it if it is best."""
        scores = self.losses(n_step, self.config.val_batches)
        rollout_scores, traces = self.rollout_metrics()
        scores.update(rollout_scores)
        key = SELECTION_KEYS[self.config.select_by]
        if key in scores and scores[key] < float(self.best.numpy()):
            self.best.assign(scores[key])
            if self.is_chief:
                files.write_atomically(self.workdir / runs.BEST_WEIGHTS,
                                         self.model.save_weights, ".tmp.weights.h5")
                files.write_json(self.workdir / "best.json",
                                   {"step": step, "epoch": epochs_trained,
                                    key: scores[key], **scores})
        scores["best"] = float(self.best.numpy())
        return scores, traces
