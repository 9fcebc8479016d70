"""Fast climate probe: roll out the 256 deep_fresh initial states 1000 saved steps with a
band-layout step, compare A(tau) of Delta_rho, Delta_Q with the truth."""
import time
import numpy as np
import tensorflow as tf
from tf_holstein import records, simulate, metrics

def initial_states(path="runs/surrogate/init.npz"):
    try:
        d = np.load(path); return d["rho"], d["Q"], d["P"]
    except FileNotFoundError:
        pass
    rho, Q, P = [], [], []
    for shard in records.list_shards("data/deep_fresh", "test"):
        for r in records.iterate_shard(shard, ["rho", "Q", "P"]):
            rho.append(r["rho"][0]); Q.append(r["Q"][0]); P.append(r["P"][0])
    np.savez(path, rho=np.stack(rho), Q=np.stack(Q), P=np.stack(P))
    return initial_states(path)

TRUTH = np.load("runs/band_probe/rk4_0.64_float32/order_parameters.npz")
SIGN = np.where(np.arange(32) % 2 == 0, -1.0, 1.0)

def score(dr, dq):
    out = {}
    for name, x in (("rho", dr), ("Q", dq)):
        a = metrics.autocorrelation(x, 250)
        b = metrics.autocorrelation(TRUTH[f"truth_Delta_{name}"], 250)
        out[name] = float(np.nanmax(np.abs(a - b))) if np.all(np.isfinite(x)) else float("nan")
    return out

def probe(step_fn, W=16, steps=1000, batch=128, dtype=tf.float32):
    rho, Q, P = initial_states()
    @tf.function(jit_compile=True)
    def run(state, n):
        def body(k, s, ta_r, ta_q):
            s = step_fn(s)
            return k + 1, s, ta_r.write(k, s.X[:, 0]), ta_q.write(k, s.Q)
        ta_r = tf.TensorArray(dtype, size=n); ta_q = tf.TensorArray(dtype, size=n)
        _, s, ta_r, ta_q = tf.while_loop(lambda k, *_: k < n, body, (tf.constant(0), state, ta_r, ta_q))
        return ta_r.stack(), ta_q.stack()
    drs, dqs, secs = [], [], 0
    for b0 in range(0, len(Q), batch):
        st = simulate.pack(rho[b0:b0+batch], Q[b0:b0+batch], P[b0:b0+batch], dtype, W)
        t = time.perf_counter(); n, q = run(st, steps); secs += time.perf_counter() - t
        n, q = n.numpy(), q.numpy()
        drs.append(np.einsum("nlb,l->bn", n, SIGN) / 32); dqs.append(np.einsum("nlb,l->bn", q, SIGN) / 32)
    return score(np.concatenate(drs), np.concatenate(dqs)), secs
