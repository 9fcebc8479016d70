"""Solver-in-the-loop learned closure for band-truncated RK4 (prototype)."""
# Scratch code of docs/notes/2026-12-04-surrogate.md, kept as run; from the repository root:
#   mkdir -p runs/surrogate; python docs/notes/2026-12-04-surrogate/extract.py data/deep_train256 train 8 runs/surrogate/train_W8.npz
#   python docs/notes/2026-12-04-surrogate/closure.py 8 32 2000 0 4   (W, hidden, steps, seed, K)
import sys, time
import numpy as np
import tensorflow as tf
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from tf_holstein import simulate
from tf_holstein.physics import ETA, HOPPING, K0

W = int(sys.argv[1]); HID = int(sys.argv[2]); STEPS = int(sys.argv[3]); SEED = int(sys.argv[4])
K = int(sys.argv[5]) if len(sys.argv) > 5 else 3  # feature columns at the band edge
tf.random.set_seed(SEED); rng = np.random.default_rng(SEED)
g = tf.constant(1.0); dt = tf.constant(0.64)

class Closure(tf.Module):
    def __init__(self):
        init = tf.keras.initializers.GlorotUniform(seed=SEED)
        cin = 2 * K + 1
        self.w1 = tf.Variable(init((3, cin, HID)))
        self.b1 = tf.Variable(tf.zeros(HID))
        self.w2 = tf.Variable(tf.zeros((1, HID, 2)))
        self.b2 = tf.Variable(tf.zeros(2))
        self.damp = tf.Variable(tf.zeros(W + 1))
    def edge(self, X, Y, Q):
        L = X.shape[0]
        partner = (np.arange(L) + W + 1) % L
        f = tf.concat([X[:, W - K + 1:], Y[:, W - K + 1:], (Q - tf.gather(Q, partner))[:, None]], axis=1)
        f = tf.transpose(f, [2, 0, 1])
        f = tf.concat([f[:, -1:], f, f[:, :1]], axis=1)
        h = tf.tanh(tf.nn.conv1d(f, self.w1, 1, "VALID") + self.b1)
        o = tf.nn.conv1d(h, self.w2, 1, "VALID") + self.b2
        o = tf.transpose(o, [1, 2, 0])
        return o[:, 0], o[:, 1]

def padded(E, parity, right):
    L = E.shape[0]; rows = np.arange(-1, L + 1)
    left = parity * tf.gather(E[:, 1], (rows - 1) % L)
    return tf.concat([left[:, None], tf.gather(E, rows % L), tf.gather(right, rows % L)[:, None]], axis=1)

def deriv(s, net):
    L, h = s.Q.shape[0], W
    cx, cy = net.edge(s.X, s.Y, s.Q)
    Xp, Yp = padded(s.X, 1.0, cx), padded(s.Y, -1.0, cy)
    partner = (np.arange(L)[:, None] + np.arange(h + 1)[None, :]) % L
    coupling = g * (s.Q[:, None, :] - tf.gather(s.Q, partner))
    hops = lambda Ep: Ep[2:, :-2] + Ep[:-2, 2:] - Ep[1:-1, 2:] - Ep[1:-1, :-2]
    damp = net.damp[None, :, None]
    dX = -HOPPING * hops(Yp) - coupling * Yp[1:-1, 1:-1] - damp * s.X
    dY = HOPPING * hops(Xp) + coupling * Xp[1:-1, 1:-1] - damp * s.Y
    return simulate.BandState(dX, dY, K0 * s.P, ETA * g * (Xp[1:-1, 1] - 0.5) - K0 * s.Q)

def ax(x, a, k): return simulate.BandState(*(xi + a * ki for xi, ki in zip(x, k)))
def rk4(s, net):
    k = deriv(s, net); tot = ax(s, dt / 6, k)
    k = deriv(ax(s, dt / 2, k), net); tot = ax(tot, dt / 3, k)
    k = deriv(ax(s, dt / 2, k), net); tot = ax(tot, dt / 3, k)
    k = deriv(ax(s, dt, k), net); return ax(tot, dt / 6, k)
def saved_step(s, net):
    for _ in range(4): s = rk4(s, net)
    return s

if __name__ == "__main__":
    d = np.load("runs/surrogate/train_W8.npz")
    X, Y, Q, P = d["X"][..., :W + 1], d["Y"][..., :W + 1], d["Q"], d["P"]
    N, T1, L = Q.shape
    net = Closure()
    opt = tf.keras.optimizers.Adam(1e-3)
    sx, sq, sp = X[..., 1:].std(), Q.std(), P.std()
    wcol = np.ones(W + 1, np.float32); wcol[:2] = 4.0
    wcol = tf.constant(wcol[None, None, :, None])
    @tf.function(jit_compile=True)
    def train_step(x0, y0, q0, p0, xt, yt, qt, pt, n):
        with tf.GradientTape() as tape:
            s = simulate.BandState(x0, y0, q0, p0); loss = 0.0
            for k in range(n):
                s = saved_step(s, net)
                loss += (tf.reduce_mean(wcol * ((s.X - xt[k]) ** 2 + (s.Y - yt[k]) ** 2)) / sx**2
                         + tf.reduce_mean((s.Q - qt[k]) ** 2) / sq**2 + tf.reduce_mean((s.P - pt[k]) ** 2) / sp**2)
            loss /= n
        grads = tape.gradient(loss, net.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        return loss
    B = 64
    t0 = time.time()
    for it in range(STEPS):
        n = 1 if it < STEPS // 4 else (4 if it < STEPS // 2 else 8)
        b = rng.integers(0, N, B); t = rng.integers(0, T1 - n, B)
        tt = t[:, None] + np.arange(1, n + 1)[None]
        bl = lambda A, idx: np.transpose(A[b[:, None], idx], (1, 2, 3, 0)) if A.ndim == 4 else np.transpose(A[b[:, None], idx], (1, 2, 0))
        x0 = np.transpose(X[b, t], (1, 2, 0)); y0 = np.transpose(Y[b, t], (1, 2, 0))
        q0 = Q[b, t].T; p0 = P[b, t].T
        loss = train_step(x0, y0, q0, p0, bl(X, tt), bl(Y, tt), bl(Q, tt), bl(P, tt), n)
        if it % 100 == 0:
            print(it, n, float(loss), round(time.time() - t0), flush=True)
    np.savez(f"runs/surrogate/closure_W{W}_h{HID}_k{K}_s{SEED}.npz", damp=net.damp.numpy(), w1=net.w1.numpy(), b1=net.b1.numpy(), w2=net.w2.numpy(), b2=net.b2.numpy())
    print("damp", net.damp.numpy())
    from probe import probe
    r, secs = probe(lambda s: saved_step(s, net), W=W)
    print("probe", r, secs, flush=True)
