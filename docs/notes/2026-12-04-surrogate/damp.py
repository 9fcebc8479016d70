"""RK4 on a truncated band with an absorbing edge (prototype of docs/notes/2026-12-04-surrogate.md).

From the repository root, after the frontier run that stores the truth's order parameters
(runs/band_probe/rk4_0.64_float32/order_parameters.npz):
    mkdir -p runs/surrogate; python docs/notes/2026-12-04-surrogate/damp.py
"""
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).parent))
from probe import probe  # noqa: E402
from tf_holstein import simulate  # noqa: E402

g = tf.constant(1.0, tf.float32)
dt = tf.constant(0.64, tf.float32)


def make_step(W, gamma, width):
    prof = np.zeros(W + 1, np.float32)
    for k in range(width):
        prof[W - k] = gamma * (width - k) / width
    prof = tf.constant(prof[None, :, None])

    def deriv(s):
        d = simulate.derivatives(s, g)
        return simulate.BandState(d.X - prof * s.X, d.Y - prof * s.Y, d.Q, d.P)

    def rk4(s):
        ax = lambda x, a, k: simulate.BandState(*(xi + a * ki for xi, ki in zip(x, k)))
        k = deriv(s); tot = ax(s, dt / 6, k)
        k = deriv(ax(s, dt / 2, k)); tot = ax(tot, dt / 3, k)
        k = deriv(ax(s, dt / 2, k)); tot = ax(tot, dt / 3, k)
        k = deriv(ax(s, dt, k)); return ax(tot, dt / 6, k)

    def step(s):
        for _ in range(4):
            s = rk4(s)
        return s
    return step


for W, gamma, width in [(16, 0.0, 1), (8, 0.0, 1)] + [(W, gm, wd) for W in (6, 8) for gm in (0.1, 0.5) for wd in (2, 4)]:
    r, secs = probe(make_step(W, gamma, width), W=W)
    print(W, gamma, width, {k: round(v, 3) for k, v in r.items()}, round(secs, 1), flush=True)
