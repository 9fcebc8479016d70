"""Speed of the RK4 simulator against plain batched NumPy and the reference C++ (SPEC section 6).

    python benchmarks/simulate.py [--sizes 16,32] [--batches 8,16,32,64] [--repeats 3]

Trajectory-steps per second (RK4 steps x trajectories) of `simulate.simulate`
end to end (the deep protocol's save interval of 256 steps, mid and saved
states converted and fetched), at each L and batch size, for:
  tf   1p x 1t / 1p x 2t: one process with 1 or 2 intra-op threads;
  tf   Kp x 1t: K single-threaded processes running at once, summed (the
       datagen's `--workers K`, K = --workers, by default the number of cores);
  numpy 1p / Kp: the same equations in complex128, batched with np.roll.
Each figure is the median of --repeats timed runs of about --seconds each,
after a warm-up run that compiles. The last lines give the projected time
of the full deep-quench set and `L=32 best: <N> trajectory-steps/s, numpy: <M>`.
"""
from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import app, flags

from tf_holstein import simulate
from tf_holstein.physics import ETA, K0

flags.DEFINE_list("sizes", ["16", "32"], "chain lengths L")
flags.DEFINE_list("batches", ["8", "16", "32", "64"], "trajectories per batch")
flags.DEFINE_integer("repeats", 3, "timed runs per figure; the median is reported")
flags.DEFINE_float("seconds", 1.0, "approximate duration of one timed run")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "processes of the concurrent cases")
FLAGS = flags.FLAGS

G, DT, SAVE_INTERVAL = 1.0, 0.01, 256  # the deep quench's g_f, dt and save interval
REFERENCE_CPP = {16: 17_000, 32: 9_400}  # RK4 steps/s of the reference C++ on one core
DEEP_SET_STEPS = 1516 * 262_400  # trajectories x RK4 steps of the full deep-quench set


def random_states(B: int, L: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hermitian rho complex128 [B, L, L] near half filling, Q, P float64 [B, L]."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(B, L, L)) + 1j * rng.normal(size=(B, L, L))
    rho = 0.5 * np.eye(L) + 0.01 * (a + np.conj(np.swapaxes(a, 1, 2)))
    return rho, 0.1 * rng.normal(size=(B, L)), 0.1 * rng.normal(size=(B, L))


def numpy_derivatives(rho: np.ndarray, Q: np.ndarray, P: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SPEC section 1 as a plain batched NumPy stencil, the way one would write it first."""
    hops = (np.roll(rho, -1, 1) + np.roll(rho, 1, 1) - np.roll(rho, -1, 2) - np.roll(rho, 1, 2))
    commutator = -hops - G * (Q[:, :, None] - Q[:, None, :]) * rho
    density = np.einsum("bii->bi", rho).real
    return -1j * commutator, K0 * P, ETA * G * (density - 0.5) - K0 * Q


def numpy_rk4(state: tuple[np.ndarray, ...], n_steps: int) -> tuple[np.ndarray, ...]:
    for _ in range(n_steps):
        k1 = numpy_derivatives(*state)
        k2 = numpy_derivatives(*(u + DT / 2 * k for u, k in zip(state, k1)))
        k3 = numpy_derivatives(*(u + DT / 2 * k for u, k in zip(state, k2)))
        k4 = numpy_derivatives(*(u + DT * k for u, k in zip(state, k3)))
        state = tuple(u + DT / 6 * (a + 2 * b + 2 * c + d)
                      for u, a, b, c, d in zip(state, k1, k2, k3, k4))
    return state


def _runner(kind: str, B: int, L: int):
    """A function of a work size (NumPy: steps, tf: save intervals) returning the RK4 steps
    it integrated per trajectory."""
    state = random_states(B, L)

    def run_numpy(n_steps: int) -> int:
        numpy_rk4(state, n_steps)
        return n_steps

    def run_tf(intervals: int) -> int:
        for _ in simulate.simulate(*state, g=G, dt=DT, save_interval=SAVE_INTERVAL,
                                   saved_steps=intervals, chunk_steps=16):
            pass
        return intervals * SAVE_INTERVAL
    return run_numpy if kind == "numpy" else run_tf


def _worker(kind: str, L: int, batches: list[int], threads: int, repeats: int, seconds: float,
            barrier: Any, results: Any) -> None:
    """Measures every batch size, starting each in step with the other workers."""
    if kind == "tf":
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    for B in batches:
        run = _runner(kind, B, L)
        run(1)  # compiles
        start = time.perf_counter()
        run(2)
        per_unit = (time.perf_counter() - start) / 2
        units = max(1, round(seconds / per_unit))
        rates = []
        barrier.wait()
        for _ in range(repeats):
            start = time.perf_counter()
            steps = run(units)
            rates.append(B * steps / (time.perf_counter() - start))
        results.put((B, statistics.median(rates)))


def measure(kind: str, L: int, batches: list[int], processes: int, threads: int
            ) -> dict[int, float]:
    """Trajectory-steps/s per batch size, summed over `processes` concurrent processes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_worker, args=(kind, L, batches, threads, FLAGS.repeats,
                                                     FLAGS.seconds, barrier, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    totals = {B: 0.0 for B in batches}
    for _ in range(processes * len(batches)):
        B, rate = results.get()
        totals[B] += rate
    for w in workers:
        w.join()
    return totals


def main(argv: list[str]) -> None:
    del argv
    sizes, batches = [int(s) for s in FLAGS.sizes], [int(b) for b in FLAGS.batches]
    k = FLAGS.workers
    cases = [("tf", 1, 1), ("tf", 1, 2), ("tf", k, 1), ("numpy", 1, 1), ("numpy", k, 1)]
    names = [f"{kind} {p}p x {t}t" if kind == "tf" else f"{kind} {p}p" for kind, p, t in cases]
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores); trajectory-steps/s, median of {FLAGS.repeats}")
    print(f"{'L':>3} {'B':>4} " + " ".join(f"{n:>14}" for n in names))
    best: dict[tuple[str, int], float] = {}
    for L in sizes:
        table = [measure(kind, L, batches, p, t) for kind, p, t in cases]
        for B in batches:
            print(f"{L:>3} {B:>4} " + " ".join(f"{column[B]:>14,.0f}" for column in table),
                  flush=True)
        for (kind, _, _), column in zip(cases, table):
            best[kind, L] = max(best.get((kind, L), 0.0), *column.values())
    for L in sizes:
        ref = REFERENCE_CPP.get(L)
        versus = f" = {best['tf', L] / ref:.1f}x the reference C++ on one core ({ref:,})" \
            if ref else ""
        print(f"L={L} best tf: {best['tf', L]:,.0f}{versus}; numpy: {best['numpy', L]:,.0f}")
    if 32 in sizes:
        hours = DEEP_SET_STEPS / best["tf", 32] / 3600
        print(f"projected deep set (1516 trajectories x 262,400 RK4 steps at L=32) on this "
              f"machine: {hours:.2f} h (reference C++: about 12 core-hours)")
        print(f"L=32 best: {best['tf', 32]:.0f} trajectory-steps/s, numpy: {best['numpy', 32]:.0f}")


if __name__ == "__main__":
    app.run(main)
