"""Optimizer steps per second of the trainer itself, per curriculum stage, and the projected
training time of a config.

    python -m tf_holstein.datagen --config shallow --n_train 8 --n_val 0 --n_test 0 \\
        --saved_steps 300 --data_dir /tmp/data
    python benchmarks/train_steps.py --config shallow --dataset /tmp/data/shallow

Runs the trainer's compiled step (`TrainSteps.train_step`) on the dataset's batches (the
training input pipeline, the distribution strategy and the per-step bookkeeping of
`Trainer.fit`, without validation)
for `--steps` steps of each distinct n_step of the config's curriculum, after a warm-up,
`--repeats` times in turns, and prints the median ms per step with its range and the
curriculum's optimizer steps times those medians. The dataset only needs the config's L;
its size does not change the speed.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

from absl import flags

from tf_holstein import cli
from tf_holstein.trainer import Trainer

flags.DEFINE_string("dataset", None, "dataset directory (holding meta.json)", required=True)
flags.DEFINE_integer("steps", 100, "optimizer steps per timed run")
flags.DEFINE_integer("repeats", 3, "timed runs per n_step")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    config = cli.config_from_flags()
    stages = config.train.stages
    print(f"{config.name}: batch {config.train.batch_size}, L = {config.data.L}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as workdir:
        trainer = Trainer(config, FLAGS.dataset, workdir)
        runs = {}
        for index, stage in enumerate(stages):
            if stage.n_step not in runs:
                step = trainer.steps.train_step(stage.n_step)
                iterator = iter(trainer.train_dataset(index, stage))
                runs[stage.n_step] = (step, iterator)

        def timed(n_step: int, steps: int) -> float:
            step, iterator = runs[n_step]
            start = time.perf_counter()
            for _ in range(steps):
                step(next(iterator))
                int(trainer.state.optimizer.iterations.numpy())  # as Trainer.fit reads it
            return (time.perf_counter() - start) / steps * 1e3

        for n_step in runs:
            timed(n_step, 5)  # tracing and warm-up
        samples: dict[int, list[float]] = {n_step: [] for n_step in runs}
        for _ in range(FLAGS.repeats):
            for n_step in runs:
                samples[n_step].append(timed(n_step, FLAGS.steps))
    total = 0.0
    for n_step, values in samples.items():
        median = statistics.median(values)
        steps = sum(s.epochs * s.batches_per_epoch for s in stages if s.n_step == n_step)
        total += steps * median / 1e3
        print(f"n_step {n_step:3d}: {median:8.1f} ms/step [{min(values):.1f}-{max(values):.1f}] "
              f"x {steps} steps = {steps * median / 6e4:6.1f} min")
    print(f"training steps in total: {total / 60:.1f} min (without validation)")


if __name__ == "__main__":
    cli.run(main)
