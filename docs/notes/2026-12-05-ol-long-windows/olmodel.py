"""O(L) learned surrogate of the deep-quench Holstein dynamics at L = 32 (issue 34).

State per site i: Q_i, P_i, n_i = Re rho_ii, Re/Im rho_{i,i+1}, plus H hidden memory channels
(zero at the start of every rollout and every training window). One saved step (2.56) =
exact free-lattice rotation of (Q, P) + a residual from a small circular 1D CNN.

usage: python olmodel.py --name run --H 8 --width 64 --layers 4 --kernel 5 --minutes 40

Changes for the long-window run (2026-12-05, second session):
- --val_npz takes a comma-separated list of files, concatenated (64 validation trajectories).
- --stages entries are n:length[:batch[:lr_factor]]; length is a number of optimiser steps,
  or @M to run the stage until M minutes since the start (@end: until --minutes). Without
  lr_factor the old rule holds (lr halved in the last stage only).
- --val_minutes V: validate when V minutes have passed since the last validation (in addition
  to every --val_every optimiser steps; --val_every 0 switches that off).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from tf_holstein import metrics  # noqa: E402

K0, ETA, HOP = 0.3, 0.8, 1.0
DT_SAVE = 2.56
SCRATCH = os.environ.get("OL_SCRATCH", "scratch_ol")  # features, runs and logs
NF = 5  # observed channels: Q, P, n, Re b, Im b
MAX_LAG = 250


# ---------------------------------------------------------------- normalisation & physics --
def norm_stats(x):
    """Per-channel (mean, std) of raw features [..., 5]; Q and P share mean 0 and one scale
    so that the lattice rotation commutes with the normalisation."""
    flat = x.reshape(-1, NF).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    s_qp = math.sqrt(0.5 * ((flat[:, 0] ** 2).mean() + (flat[:, 1] ** 2).mean()))
    mean[:2], std[:2] = 0.0, s_qp
    return mean.astype(np.float32), std.astype(np.float32)


def energy_raw(x, g):
    """Energy from the O(L) state (raw units) [..., L, 5] -> [...]:
    -2t sum Re b - g sum Q (n - 1/2) + K0/(2 ETA) sum (Q^2 + P^2)."""
    Q, P, n, br = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
    return (-2.0 * HOP * tf.reduce_sum(br, -1) - g * tf.reduce_sum(Q * (n - 0.5), -1)
            + K0 / (2 * ETA) * tf.reduce_sum(Q * Q + P * P, -1))


def order_params(x):
    """(Delta_rho, Delta_Q) from raw [..., L, 5]; s_i = -1 on even, +1 on odd sites."""
    L = x.shape[-2]
    s = tf.constant(2 * (np.arange(L) % 2) - 1, x.dtype)
    return tf.reduce_mean(s * x[..., 2], -1), tf.reduce_mean(s * x[..., 0], -1)


# ------------------------------------------------------------------------------- model ----
class OLNet(tf.keras.Model):
    def __init__(self, H=8, width=64, layers=4, kernel=5, act="tanh", project=0):
        super().__init__()
        self.H, self.k, self.project = H, kernel, project
        self.act = {"tanh": tf.tanh, "relu": tf.nn.relu, "gelu": tf.nn.gelu}[act]
        self.convs = [tf.keras.layers.Conv1D(width, kernel, padding="valid")
                      for _ in range(layers - 1)]
        self.head = tf.keras.layers.Conv1D(NF + H, 1, kernel_initializer="zeros")
        c, s = math.cos(K0 * DT_SAVE), math.sin(K0 * DT_SAVE)
        self.rot = (c, s)

    def call(self, z):  # z [B, L, NF + H] normalised observed + memory
        p = self.k // 2
        h = z
        for conv in self.convs:
            h = self.act(conv(tf.concat([h[:, -p:], h, h[:, :p]], axis=1)))
        d = self.head(h)
        if self.project:  # the uniform mode of Q, P turns exactly (sum_i (n_i - 1/2) = 0)
            dqp = d[..., :2] - tf.reduce_mean(d[..., :2], axis=1, keepdims=True)
            d = tf.concat([dqp, d[..., 2:]], -1)
        c, s = self.rot
        Q, P = z[..., 0:1], z[..., 1:2]
        base = tf.concat([c * Q + s * P, c * P - s * Q, z[..., 2:]], axis=-1)
        return base + d

    def flops(self, L=32):
        f, cin = 0, NF + self.H
        for conv in self.convs:
            f += 2 * L * cin * conv.filters * self.k
            cin = conv.filters
        return f + 2 * L * cin * (NF + self.H)


def project_state(z, e0, mean_t, std_t, g):
    """Exact invariants on the O(L) state z (normalised, [B, L, NF + H]): particle number
    (mean n = 1/2) and the energy e0 [B], the latter by a uniform shift of Re b (the
    hopping energy -2t sum Re b is linear in it)."""
    x = z[..., :NF] * std_t + mean_t
    Q, P, n, br, bi = [x[..., i] for i in range(NF)]
    n = n - tf.reduce_mean(n, -1, keepdims=True) + 0.5
    x = tf.stack([Q, P, n, br, bi], -1)
    de = energy_raw(x, g) - e0  # [B]
    br = br + (de / (2.0 * HOP * tf.cast(tf.shape(Q)[-1], x.dtype)))[:, None]
    x = tf.stack([Q, P, n, br, bi], -1)
    return tf.concat([(x - mean_t) / std_t, z[..., NF:]], -1)


def clamp_state(z, mean_t, std_t, lim_t):
    """Physical bounds on the observed channels (raw): |Q|, |P| <= 1.5 x the training
    max-abs, 0 <= n <= 1, |Re b|, |Im b| <= 1/2; memory channels squashed into (-4, 4)."""
    x = z[..., :NF] * std_t + mean_t
    x = tf.clip_by_value(x, -lim_t + tf.constant([0, 0, 0.5, 0, 0], tf.float32),
                         lim_t + tf.constant([0, 0, 0.5, 0, 0], tf.float32))
    h = 4.0 * tf.tanh(z[..., NF:] / 4.0)
    return tf.concat([(x - mean_t) / std_t, h], -1)


# ------------------------------------------------------------------------------ rollout ----
def limits(maxabs):
    return tf.constant([1.5 * maxabs[0], 1.5 * maxabs[1], 0.5, 0.5, 0.5], tf.float32)


def make_rollout(model, mean, std, H, jit=True, g=1.0, lim=None):
    mean_t, std_t = tf.constant(mean), tf.constant(std)

    @tf.function(jit_compile=jit)
    def rollout(x0, n_steps):
        """x0 raw [B, L, 5] -> raw states [B, n, L, 5] of steps 1..n."""
        B, L = tf.shape(x0)[0], tf.shape(x0)[1]
        z = tf.concat([(x0 - mean_t) / std_t, tf.zeros([B, L, H], x0.dtype)], -1)
        e0 = energy_raw(x0, g)
        arr = tf.TensorArray(tf.float32, size=n_steps)

        def body(k, z, arr):
            z = model(z)
            if model.project:
                z = project_state(z, e0, mean_t, std_t, g)
            if lim is not None:
                z = clamp_state(z, mean_t, std_t, lim)
            return k + 1, z, arr.write(k, z[..., :NF] * std_t + mean_t)

        _, _, arr = tf.while_loop(lambda k, *_: k < n_steps, body, (tf.constant(0), z, arr))
        return tf.transpose(arr.stack(), [1, 0, 2, 3])
    return rollout


def rollout_chunks(rollout, x0, steps, batch=128, chunk=250):
    """Whole rollout in batches; memory carried only inside one call, so one call of `steps`."""
    outs = []
    for i in range(0, len(x0), batch):
        outs.append(rollout(tf.constant(x0[i:i + batch]), tf.constant(steps)).numpy())
    return np.concatenate(outs)


def climate(truth_x, pred_x, maxabs, g):
    """truth_x, pred_x raw [N, T, L, 5] (steps 1..T). Returns dict of scores."""
    bad = ~np.isfinite(pred_x).all(axis=(1, 2, 3))
    with np.errstate(invalid="ignore", over="ignore"):
        bad |= (np.abs(np.nan_to_num(pred_x, nan=1e9)) > 10 * maxabs).any(axis=(1, 2, 3))
    kept = ~bad
    out = {"n_diverged": int(bad.sum())}
    t_dr, t_dq = [a.numpy() for a in order_params(tf.constant(truth_x))]
    if not kept.any():
        return {**out, "Delta_rho": float("inf"), "Delta_Q": float("inf"), "score": float("inf")}
    p_dr, p_dq = [a.numpy() for a in order_params(tf.constant(pred_x[kept]))]
    for name, t, p in (("Delta_rho", t_dr, p_dr), ("Delta_Q", t_dq, p_dq)):
        out[name] = float(np.max(np.abs(metrics.autocorrelation(p, MAX_LAG)
                                         - metrics.autocorrelation(t, MAX_LAG))))
    out["score"] = max(out["Delta_rho"], out["Delta_Q"])
    return out


# ------------------------------------------------------------------------------ training ---
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--act", default="tanh")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--stages", default="1:600,4:600,8:600,16:600,25:100000")
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--energy_w", type=float, default=0.0)
    ap.add_argument("--val_every", type=int, default=300)
    ap.add_argument("--val_minutes", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jit", type=int, default=1)
    ap.add_argument("--project", type=int, default=0)
    ap.add_argument("--early_frac", type=float, default=0.0)  # windows starting in [0, early_T)
    ap.add_argument("--early_T", type=int, default=60)
    ap.add_argument("--clamp", type=int, default=0)
    ap.add_argument("--train_npz", default=os.path.join(SCRATCH, "ol_train_train.npz"))
    ap.add_argument("--val_npz", default=os.path.join(SCRATCH, "ol_train_val.npz"))
    a = ap.parse_args()
    tf.keras.utils.set_random_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    out_dir = os.path.join(SCRATCH, a.name)
    os.makedirs(out_dir, exist_ok=True)

    tr = np.load(a.train_npz)
    vas = [np.load(f) for f in a.val_npz.split(",")]
    va = {"x": np.concatenate([v["x"] for v in vas]),
          "energy": np.concatenate([v["energy"] for v in vas])}
    g = float(tr["g"])
    assert all(float(v["g"]) == g for v in vas)
    xtr, xva = tr["x"], va["x"]
    print("train", xtr.shape, "val", xva.shape, flush=True)
    mean, std = norm_stats(xtr)
    maxabs = np.abs(xtr).reshape(-1, NF).max(0)
    np.savez(os.path.join(out_dir, "norm.npz"), mean=mean, std=std, maxabs=maxabs)
    ztr = ((xtr - mean) / std).astype(np.float32)
    N, T1, L, _ = ztr.shape

    model = OLNet(a.H, a.width, a.layers, a.kernel, a.act, a.project)
    model(tf.zeros([1, L, NF + a.H]))
    cfg = {**vars(a), "flops_per_step": model.flops(L), "params": model.count_params()}
    print(json.dumps(cfg), flush=True)
    json.dump(cfg, open(os.path.join(out_dir, "config.json"), "w"))
    opt = tf.keras.optimizers.Adam(a.lr, clipnorm=1.0)
    mean_t, std_t = tf.constant(mean), tf.constant(std)
    # per-channel loss weights: each observed channel counts as if normalised by its own std
    wch = tf.constant(1.0 / ztr.reshape(-1, NF).var(0), tf.float32)

    def make_step(n):
        @tf.function(jit_compile=bool(a.jit))
        def step(win, noise):  # win [B, n+1, L, 5] normalised
            with tf.GradientTape() as tape:
                z0 = win[:, 0] + noise
                z = tf.concat([z0, tf.zeros([tf.shape(win)[0], L, a.H])], -1)
                e0 = energy_raw(win[:, 0] * std_t + mean_t, g)
                loss, eloss = 0.0, 0.0
                for k in range(1, n + 1):
                    z = model(z)
                    if a.project:
                        z = project_state(z, e0, mean_t, std_t, g)
                    if a.clamp:
                        z = clamp_state(z, mean_t, std_t, lim_t)
                    loss += tf.reduce_mean(wch * tf.square(z[..., :NF] - win[:, k]))
                    if a.energy_w:
                        e = energy_raw(z[..., :NF] * std_t + mean_t, g)
                        eloss += tf.reduce_mean(tf.square((e - e0) / L))
                loss, eloss = loss / n, eloss / n
                total = loss + a.energy_w * eloss
            grads = tape.gradient(total, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss, eloss
        return step

    stages = []
    for spec in a.stages.split(","):
        f = spec.split(":")
        n = int(f[0])
        length = f[1] if f[1].startswith("@") else int(f[1])
        bs = int(f[2]) if len(f) > 2 else a.batch
        lrf = float(f[3]) if len(f) > 3 else None
        stages.append((n, length, bs, lrf))
    lim_t = limits(maxabs)
    rollout = make_rollout(model, mean, std, a.H, jit=bool(a.jit), g=g,
                           lim=lim_t if a.clamp else None)
    best = {"score": float("inf")}
    log = []
    t_start = time.time()
    budget = a.minutes * 60
    it = 0
    last_val = [time.time()]

    def validate(tag):
        nonlocal best
        tic = time.time()
        last_val[0] = tic
        pred = rollout_chunks(rollout, xva[:, 0], T1 - 1)
        c = climate(xva[:, 1:], pred, maxabs, g)
        e_pred = energy_raw(tf.constant(np.nan_to_num(pred[:, -1])), g).numpy()
        c["energy_drift_med"] = float(np.median(np.abs(e_pred - va["energy"][:, 0])))
        c.update(it=it, tag=tag, minutes=(time.time() - t_start) / 60,
                 val_seconds=time.time() - tic)
        c["sel"] = c["n_diverged"] + (c["score"] if np.isfinite(c["score"]) else 1e3)
        if c["sel"] < best.get("sel", float("inf")):
            best = c
            model.save_weights(os.path.join(out_dir, "best.weights.h5"))
        c["best"] = best.get("sel")
        model.save_weights(os.path.join(out_dir, "last.weights.h5"))
        print("VAL", json.dumps(c), flush=True)
        log.append(c)
        json.dump(log, open(os.path.join(out_dir, "val_log.json"), "w"))

    done = False
    for si, (n, length, bs, lrf) in enumerate(stages):
        step = make_step(n)
        if lrf is not None:
            opt.learning_rate.assign(a.lr * lrf)
        elif si == len(stages) - 1:
            opt.learning_rate.assign(a.lr * 0.5)
        print(f"STAGE n {n} length {length} batch {bs} lr {float(opt.learning_rate):.2e} "
              f"it {it} min {(time.time() - t_start) / 60:.1f}", flush=True)
        if isinstance(length, int):
            n_iter, t_end = length, budget
        else:
            n_iter = 10 ** 9
            t_end = budget if length == "@end" else min(budget, 60 * float(length[1:]))
        for j in range(n_iter):
            traj = rng.integers(0, N, bs)
            t0 = rng.integers(0, T1 - n, bs)
            early = rng.random(bs) < a.early_frac
            t0[early] = rng.integers(0, a.early_T, early.sum())
            win = ztr[traj[:, None], t0[:, None] + np.arange(n + 1)[None]]
            noise = (a.noise * rng.standard_normal((bs, L, NF))).astype(np.float32)
            loss, eloss = step(tf.constant(win), tf.constant(noise))
            it += 1
            if it % 100 == 0 or (n >= 50 and it % 20 == 0):
                print(f"it {it} n {n} loss {float(loss):.4e} eloss {float(eloss):.3e} "
                      f"min {(time.time() - t_start) / 60:.1f}", flush=True)
            if (a.val_every and it % a.val_every == 0) or (
                    a.val_minutes and time.time() - last_val[0] > 60 * a.val_minutes):
                validate(f"n{n}")
            if time.time() - t_start > budget:
                done = True
                break
            if time.time() - t_start > t_end:
                break
        if not done:
            validate(f"end_n{n}")
        if done:
            break
    validate("final")
    print("BEST", json.dumps(best), flush=True)


if __name__ == "__main__":
    main()
