"""Throughput and memory of the streaming window pipeline (tf_holstein/data.py).

    python -m tf_holstein.datagen --config shallow_L32 --n_train 210 --n_val 0 --n_test 0 \\
        --workers 2 --data_dir /tmp/bigdata
    python benchmarks/pipeline.py --data_dir /tmp/bigdata/shallow_L32 --train_rate 300

Streams one epoch of the split (or `--max_batches`) of shuffled windows at
n_step 16, batch 32, first without and then with derivative labels, and
prints windows/s (after a warm-up) and the peak resident memory of this
process (VmHWM, which includes TensorFlow's own ~0.6 GB). The data must be
larger than the memory limit (at least 4 GB on disk) for the memory figure to
show that nothing grows with the data. `--train_rate` is the training
consumption in samples/s measured by benchmarks/models.py; the pipeline's
rate must be at least 5x it.

Measured on the 2-core development machine while other jobs kept its load
near 5 (so every figure is a lower bound), on shallow_L32 with 210 training
trajectories (4.26 GB, T = 1200): 6,205 windows/s without and 6,580 with
derivative labels (about 60 and 100 us of CPU per window); peak resident
memory 1.61 GB. benchmarks/models.py under the same load: tiny CNN training
(L = 32, batch 64, n_step 8) 92.2 samples/s, medium PARC (batch 8, n_step 1)
4.3 samples/s; the pipeline runs at 67x and 1,400x their consumption.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from absl import app, flags

from tf_holstein import data, records

flags.DEFINE_string("data_dir", None, "dataset directory (holding meta.json)", required=True)
flags.DEFINE_string("split", "train", "split to stream")
flags.DEFINE_integer("n_step", 16, "states per window after the input state")
flags.DEFINE_integer("batch_size", 32, "windows per batch")
flags.DEFINE_integer("warmup_batches", 100, "batches before timing starts")
flags.DEFINE_integer("max_batches", None, "stop after this many batches (default: one epoch)")
flags.DEFINE_float("noise_std", 0.02, "input noise (the shallow curriculum's)")
flags.DEFINE_float("train_rate", None, "training consumption in samples/s to compare with")
flags.DEFINE_float("memory_limit_gb", 3.0, "peak resident memory allowed")
flags.DEFINE_float("min_ratio", 5.0, "pipeline rate / training rate required")
FLAGS = flags.FLAGS


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def stream(derivatives: bool) -> tuple[float, int]:
    """(windows/s after the warm-up, windows streamed) over one epoch or max_batches."""
    dataset = data.make_dataset(FLAGS.data_dir, FLAGS.split, n_step=FLAGS.n_step,
                                batch_size=FLAGS.batch_size, noise_std=FLAGS.noise_std,
                                derivatives=derivatives, seed=0, drop_remainder=True)
    if FLAGS.max_batches is not None:
        dataset = dataset.take(FLAGS.max_batches)
    batches, start = 0, None
    for _ in dataset:
        batches += 1
        if batches == FLAGS.warmup_batches:
            start = time.perf_counter()
    if start is None:
        raise ValueError(f"only {batches} batches: fewer than --warmup_batches")
    timed = batches - FLAGS.warmup_batches
    return timed * FLAGS.batch_size / (time.perf_counter() - start), batches * FLAGS.batch_size


def main(argv: Sequence[str]) -> None:
    del argv
    meta = records.read_meta(FLAGS.data_dir)
    size_gb = sum(p.stat().st_size for p in records.list_shards(FLAGS.data_dir, FLAGS.split)) / 1e9
    split = meta["splits"][FLAGS.split]
    print(f"{FLAGS.data_dir} {FLAGS.split}: {split['num_trajectories']} trajectories in "
          f"{split['num_shards']} shards, {size_gb:.2f} GB on disk, L = {meta['L']}, "
          f"T = {meta['T']}; n_step = {FLAGS.n_step}, batch = {FLAGS.batch_size}, "
          f"{data.count_windows(FLAGS.data_dir, FLAGS.split, FLAGS.n_step)} windows per epoch")
    print(f"resident memory before streaming: {proc_status_mb('VmRSS'):.0f} MB")
    rates = {}
    for derivatives in (False, True):
        rate, windows = stream(derivatives)
        rates[derivatives] = rate
        print(f"derivatives={derivatives!s:5}: {rate:8.0f} windows/s over {windows} windows; "
              f"peak resident memory so far {proc_status_mb('VmHWM') / 1024:.2f} GB")
    peak_gb = proc_status_mb("VmHWM") / 1024
    verdicts = [f"peak resident memory {peak_gb:.2f} GB "
                f"({'under' if peak_gb < FLAGS.memory_limit_gb else 'OVER'} "
                f"{FLAGS.memory_limit_gb} GB) while streaming {size_gb:.2f} GB"]
    if FLAGS.train_rate:
        slowest = min(rates.values())
        ratio = slowest / FLAGS.train_rate
        verdicts.append(f"slowest pipeline rate {slowest:.0f} windows/s = {ratio:.1f} x the "
                        f"training consumption of {FLAGS.train_rate:g} samples/s "
                        f"({'meets' if ratio >= FLAGS.min_ratio else 'BELOW'} "
                        f"{FLAGS.min_ratio:g}x)")
    print("\n".join(verdicts))


if __name__ == "__main__":
    app.run(main)
