"""python -m tf_holstein.datagen: exact quench trajectories into sharded TFRecords.

    python -m tf_holstein.datagen --config shallow --L 32 --name shallow_L32 --data_dir data

Writes `<data_dir>/<name>/{train,val,test}-NNNNN-of-MMMMM.tfrecord` and, once
every shard exists, `meta.json` (<name>: the preset's, or `--name`; name a
protocol changed by other flags, since an existing dataset of another protocol
is refused, never overwritten). A shard is the unit of work: it is
written under a temporary name and renamed when complete, so a rerun after
any interruption (kill -9 included) only does the missing shards. Every
trajectory's noise and phase derive from (seed, split, index) alone, so the
result does not depend on how the work was split between tasks or workers.
Scale out with `--num_tasks N --task_index i` (one call per machine or SLURM
array element; the last to finish writes meta.json) or `--workers K` local
processes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import queue
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from absl import app, flags, logging

from tf_holstein import cli, files, physics, records
from tf_holstein.cli import FLAGS
from tf_holstein.configs import DataConfig

PROTOCOL_FILE = "protocol.json"
_SPLIT_IDS = {split: i for i, split in enumerate(records.SPLITS)}


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Trajectories [start, stop) of a split, written as one shard."""

    split: str
    shard: int
    num_shards: int
    start: int
    stop: int

    @property
    def filename(self) -> str:
        return records.shard_name(self.split, self.shard, self.num_shards)


def plan_shards(config: DataConfig) -> list[ShardJob]:
    """All shards of the dataset, split by split, each of at most `shard_size` trajectories."""
    jobs = []
    for split, n in config.split_sizes().items():
        num_shards = -(-n // config.shard_size)
        jobs += [ShardJob(split, k, num_shards, k * config.shard_size,
                          min(n, (k + 1) * config.shard_size)) for k in range(num_shards)]
    return jobs


def split_phases(config: DataConfig, split: str) -> np.ndarray:
    """Phase offsets int64 [n]: spread evenly over [0, save_interval), then shuffled."""
    n = config.split_sizes()[split]
    phases = (np.arange(n) * config.save_interval) // max(n, 1)
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split], 1])
    return rng.permutation(phases).astype(np.int64)


def trajectory_noise(config: DataConfig, split: str, indices: Sequence[int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Initial-state noise on Q and P, float64 [len(indices), L], one stream per trajectory."""
    draws = [np.random.default_rng([config.seed, _SPLIT_IDS[split], 0, int(i)]).normal(
        0.0, config.noise, size=(2, config.L)) for i in indices]
    draws = np.stack(draws) if draws else np.zeros((0, 2, config.L))
    return draws[:, 0], draws[:, 1]


def rk4_steps_per_trajectory(config: DataConfig) -> int:
    """RK4 steps of one trajectory, ignoring its phase (< save_interval)."""
    return config.pre_steps + config.saved_steps * config.save_interval


def simulate_shard(config: DataConfig, job: ShardJob,
                   on_steps: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Integrates the trajectories of one shard: arrays [n, T(+1), ...] as stored."""
    from tf_holstein import simulate  # imported here: TensorFlow starts in the worker

    indices = np.arange(job.start, job.stop)
    noise_Q, noise_P = trajectory_noise(config, job.split, indices)
    rho0, Q0, P0 = physics.initial_state(config.L, config.g_i, noise_Q, noise_P)
    chunks = list(simulate.simulate(
        rho0, Q0, P0, g=config.g_f, dt=config.dt, save_interval=config.save_interval,
        saved_steps=config.saved_steps, pre_steps=config.pre_steps,
        phases=split_phases(config, job.split)[indices], on_steps=on_steps))
    return {key: np.concatenate([c[key] for c in chunks], axis=1) for key in records.ARRAY_DTYPES}


def write_shard_job(config: DataConfig, job: ShardJob, dataset_dir: Path,
                    on_steps: Callable[[int], None] | None = None) -> None:
    """Simulates and writes one shard with its statistics sidecar (both atomically).

    Refuses trajectories that left the finite numbers (an unstable integration): written,
    they would count as data and their NaN would vanish from the scales (max(0, nan) = 0).
    """
    arrays = simulate_shard(config, job, on_steps)
    finite = np.all([np.isfinite(value).reshape(len(value), -1).all(axis=1)
                     for value in arrays.values()], axis=0)
    if not finite.all():
        raise ValueError(f"{job.filename}: {int((~finite).sum())} of {len(finite)} "
                         f"trajectories became non-finite: RK4 at dt={config.dt:g} is unstable "
                         f"for this protocol (g_f={config.g_f:g}); choose a smaller --dt. "
                         f"Nothing of this shard was written")
    phases = split_phases(config, job.split)
    files.write_json(dataset_dir / _stats_name(job.filename),
                       records.trajectory_scales(arrays, config.g_f))
    records.write_shard(dataset_dir / job.filename, (
        records.encode_trajectory({k: v[n] for k, v in arrays.items()}, i, phases[i])
        for n, i in enumerate(range(job.start, job.stop))))


def _stats_name(shard_filename: str) -> str:
    return "." + shard_filename.replace(".tfrecord", ".stats.json")


def prepare_dataset_dir(config: DataConfig, data_dir: str | os.PathLike) -> Path:
    """Creates the dataset directory, or checks that an existing one has the same protocol.

    Raises ValueError naming the differing parameters: data is never overwritten.
    """
    dataset_dir = Path(data_dir) / config.dataset_name
    protocol = {"schema_version": records.SCHEMA_VERSION, "config": dataclasses.asdict(config)}
    path = dataset_dir / PROTOCOL_FILE
    if not path.exists():
        dataset_dir.mkdir(parents=True, exist_ok=True)
    # Created only if absent: of two processes starting the directory at once with different
    # protocols, the second is refused rather than mixing its shards in.
    if not files.create_json(path, protocol):
        existing = json.loads(path.read_text())
        if existing != protocol:
            old = existing.get("config", {})
            diffs = [f"{k}: {old.get(k)!r} there, {v!r} requested"
                     for k, v in protocol["config"].items() if old.get(k) != v]
            if existing.get("schema_version") != records.SCHEMA_VERSION:
                diffs.append(f"schema_version: {existing.get('schema_version')!r} there")
            raise ValueError(
                f"{dataset_dir} already holds a dataset made with different parameters "
                f"({'; '.join(diffs)}). Nothing was written: choose another --data_dir or "
                f"--name, or delete that directory to regenerate it.")
    return dataset_dir


def missing_jobs(config: DataConfig, dataset_dir: Path) -> list[ShardJob]:
    """The shards still to write: absent, or holding other than their trajectories (damaged
    after they were written; they are redone)."""
    return [job for job in plan_shards(config) if not _written(dataset_dir, job)]


def _shard_problem(dataset_dir: Path, job: ShardJob, verify: bool = False) -> str | None:
    """Why the job's shard must be (re)written, or None when it is in place and holds its
    trajectories: by the records' length headers or, with `verify`, by reading every record
    and checking its CRCs."""
    path = dataset_dir / job.filename
    if not path.exists():
        return "missing"
    try:
        if verify:
            records.verify_shard(path, job.stop - job.start)
        else:
            records.check_record_count(path, job.stop - job.start)
    except IOError as e:
        return str(e)
    return None


def _written(dataset_dir: Path, job: ShardJob, verify: bool = False) -> bool:
    return _shard_problem(dataset_dir, job, verify) is None


def _to_write(dataset_dir: Path, job: ShardJob, verify: bool) -> bool:
    """Whether the job's shard must be written; a damaged one is named in a warning."""
    problem = _shard_problem(dataset_dir, job, verify)
    if problem not in (None, "missing"):
        logging.warning("regenerating %s: %s", job.filename, problem)
    return problem is not None


def _lock_name(shard_filename: str) -> str:
    return f".{shard_filename}.lock"


def claim_and_write(config: DataConfig, job: ShardJob, dataset_dir: Path, *, wait: bool,
                    verify: bool = False, on_steps: Callable[[int], None] | None = None
                    ) -> str:
    """Writes the job's shard under its lock unless it is whole by then, so that processes
    sharing the dataset (tasks, a rerun beside a run) write each shard once.

    Returns "written", "present" or, if another process holds the lock and not `wait`,
    "busy"; with `wait` it waits for that process and then writes the shard only if the
    other left it unwritten (killed, say).
    """
    lock = files.FileLock(dataset_dir / _lock_name(job.filename))
    if not lock.acquire():
        if not wait:
            return "busy"
        logging.info("waiting for %s, which writes %s", lock.holder(), job.filename)
        lock.acquire(wait=True)
    try:
        outcome = "present" if _written(dataset_dir, job, verify) else "written"
        if outcome == "written":
            write_shard_job(config, job, dataset_dir, on_steps)
            logging.info("wrote %s", job.filename)
    except BaseException:
        lock.release()
        raise
    lock.release(remove=True)  # the shard is whole: whoever takes a stale copy skips it
    return outcome


def merge(config: DataConfig, dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Writes meta.json once every shard exists: protocol, counts, phases and scales."""
    dataset_dir = Path(dataset_dir)
    missing = missing_jobs(config, dataset_dir)
    if missing:
        raise RuntimeError(f"cannot merge {dataset_dir}: {len(missing)} shards are missing "
                           f"(first: {missing[0].filename}); run the remaining tasks first")
    train = [job for job in plan_shards(config) if job.split == "train"]
    # Without training trajectories (a test-only set) there is nothing to scale by.
    scales = records.merge_scales(_shard_scales(config, dataset_dir, job) for job in train) \
        if train else None
    meta = {
        "schema_version": records.SCHEMA_VERSION,
        "dataset": config.dataset_name,
        "config": dataclasses.asdict(config),
        "physics": {"hopping": physics.HOPPING, "K0": physics.K0, "eta": physics.ETA,
                    "kT": physics.KT, "G1": physics.ETA * config.g_f},
        "L": config.L,
        "T": config.saved_steps,
        "time_step": config.dt * config.save_interval,
        "splits": {split: {"num_trajectories": n,
                           "num_shards": -(-n // config.shard_size),
                           "phases": split_phases(config, split).tolist()}
                   for split, n in config.split_sizes().items()},
        "scales": scales,
    }
    files.write_json(dataset_dir / records.META_FILE, meta)
    return meta


def _shard_scales(config: DataConfig, dataset_dir: Path, job: ShardJob) -> dict[str, float]:
    """A shard's statistics from the sidecar written with it, else from its records."""
    sidecar = dataset_dir / _stats_name(job.filename)
    if sidecar.exists():
        return json.loads(sidecar.read_text())
    return records.shard_scales(dataset_dir / job.filename, config.g_f)


class _Progress:
    """A tqdm bar over trajectory RK4 steps, with the trajectory count alongside."""

    def __init__(self, jobs: Sequence[ShardJob], config: DataConfig, enabled: bool):
        from tqdm import tqdm

        self.trajectories = sum(job.stop - job.start for job in jobs)
        self.done = 0
        self.bar = tqdm(total=self.trajectories * rk4_steps_per_trajectory(config),
                        unit=" traj-steps", unit_scale=True, disable=not enabled,
                        desc=config.dataset_name, dynamic_ncols=True, smoothing=0.1)
        self._show()

    def steps(self, n: int) -> None:
        self.bar.update(n)

    def shard_done(self, job: ShardJob) -> None:
        self.done += job.stop - job.start
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix_str(f"trajectories {self.done}/{self.trajectories}")

    def close(self) -> None:
        self.bar.close()


def _worker_init(threads: int, events: "multiprocessing.Queue[Any]") -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    global _EVENTS
    _EVENTS = events


_EVENTS: "multiprocessing.Queue[Any] | None" = None


def _worker_job(config: DataConfig, job: ShardJob, dataset_dir: str, wait: bool,
                verify: bool) -> tuple[ShardJob, str]:
    n = job.stop - job.start
    return job, claim_and_write(config, job, Path(dataset_dir), wait=wait, verify=verify,
                                on_steps=lambda steps: _EVENTS.put(steps * n))


def generate(config: DataConfig, data_dir: str | os.PathLike, *, num_tasks: int = 1,
             task_index: int = 0, workers: int = 1, progress: bool = True,
             verify: bool = False) -> Path:
    """Writes this task's missing shards, and meta.json if the dataset is then complete.

    Returns the dataset directory. Idempotent: completed shards are not redone; with
    `verify` every existing shard of the task is read whole and one whose records fail
    their CRCs is rewritten. Shards that another process is writing are left to it first,
    then waited for.
    """
    config.validate()
    unbounded = [f"{name}={getattr(config, name)!r}" for name in ("dt", "g_i", "g_f", "noise")
                 if not math.isfinite(getattr(config, name))]
    if unbounded:
        raise ValueError(f"invalid data config: {', '.join(unbounded)} must be finite")
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"need num_tasks >= 1 and 0 <= task_index < num_tasks, got "
                         f"num_tasks={num_tasks}, task_index={task_index}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dataset_dir = prepare_dataset_dir(config, data_dir)
    files.remove_stale_temporaries(dataset_dir)
    jobs = [job for k, job in enumerate(plan_shards(config))
            if k % num_tasks == task_index and _to_write(dataset_dir, job, verify)]
    bar = _Progress(jobs, config, progress)
    try:
        run_jobs = _run_here if workers == 1 else _run_pool
        busy = run_jobs(config, jobs, dataset_dir, workers, bar, wait=False, verify=verify)
        run_jobs(config, busy, dataset_dir, workers, bar, wait=True, verify=verify)
    finally:
        bar.close()
    if not (dataset_dir / records.META_FILE).exists() and not missing_jobs(config, dataset_dir):
        merge(config, dataset_dir)
    return dataset_dir


def _run_here(config: DataConfig, jobs: Sequence[ShardJob], dataset_dir: Path, workers: int,
              bar: _Progress, *, wait: bool, verify: bool) -> list[ShardJob]:
    """Runs shards in this process (`claim_and_write`); returns those another one holds."""
    busy = []
    for job in jobs:
        n = job.stop - job.start
        outcome = claim_and_write(config, job, dataset_dir, wait=wait, verify=verify,
                                  on_steps=lambda steps: bar.steps(steps * n))
        if outcome == "busy":
            busy.append(job)
        else:
            bar.shard_done(job)
    return busy


def _run_pool(config: DataConfig, jobs: Sequence[ShardJob], dataset_dir: Path, workers: int,
              bar: _Progress, *, wait: bool, verify: bool) -> list[ShardJob]:
    """Runs shards in `workers` spawned processes sharing the cores, relaying progress;
    returns those another process holds."""
    if not jobs:
        return []
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    busy = []
    with context.Pool(workers, _worker_init, (threads, events)) as pool:
        pending = [pool.apply_async(_worker_job, (config, job, str(dataset_dir), wait, verify))
                   for job in jobs]
        while pending:
            try:
                bar.steps(events.get(timeout=0.2))
            except queue.Empty:
                pass
            for result in [r for r in pending if r.ready()]:
                job, outcome = result.get()
                if outcome == "busy":
                    busy.append(job)
                else:
                    bar.shard_done(job)
                pending.remove(result)
        while not events.empty():
            bar.steps(events.get())
    return busy


flags.DEFINE_integer("num_tasks", 1, "number of tasks (processes or machines) sharing the shards")
flags.DEFINE_integer("task_index", 0, "this task's index in [0, num_tasks)")
flags.DEFINE_integer("workers", 1, "local worker processes (one per core is fastest)")
flags.DEFINE_bool("merge", False, "only write meta.json of a dataset whose shards all exist")
flags.DEFINE_bool("verify", False, "read every existing shard whole, checking its records' "
                  "CRCs, and rewrite a damaged one")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = cli.config_from_flags(sections=["data"]).data
        if FLAGS.merge:
            dataset_dir = Path(FLAGS.data_dir) / config.dataset_name
            prepare_dataset_dir(config, FLAGS.data_dir)
            merge(config, dataset_dir)
        else:
            dataset_dir = generate(config, FLAGS.data_dir, num_tasks=FLAGS.num_tasks,
                                   task_index=FLAGS.task_index, workers=FLAGS.workers,
                                   progress=FLAGS.progress, verify=FLAGS.verify)
    except (ValueError, RuntimeError, IOError) as e:
        sys.exit(f"datagen: error: {e}")
    state = "complete" if (dataset_dir / records.META_FILE).exists() else "incomplete"
    print(f"{dataset_dir}: {state}")


def entry_point() -> None:
    """`python -m tf_holstein.datagen` and the console script `holstein-datagen`."""
    cli.run(main)


if __name__ == "__main__":
    entry_point()
