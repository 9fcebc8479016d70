"""Exact RK4 trajectories of the Ehrenfest equations (docs/physics.md), batched and chunked.

The hot loop is real float64 arithmetic on an O(L^2) stencil, compiled by XLA
(no per-step dispatch, no dense matrix products, no device-specific code):

- rho = X + iY. H is real, so dX/dt = [H, Y] and dY/dt = -[H, X] with
  `[H, M]_ij = -t (M_{i+1,j} + M_{i-1,j} - M_{i,j+1} - M_{i,j-1}) - g (Q_i - Q_j) M_ij`.
- rho is Hermitian, so only the band d = j - i (mod L) in [0, L/2] is stored:
  E[i, d, b] = M_{i, i+d} of trajectory b, "band layout" [L, L/2 + 1, B], about
  half the entries of the full matrix. There the four hops read
      M_{i+1,j} = E[i+1, d-1], M_{i-1,j} = E[i-1, d+1], M_{i,j±1} = E[i, d±1],
  i periodic, and the columns d = -1 and d = L/2 + 1 outside the band come back
  in by Hermiticity: E[i, -1] = conj E[i-1, 1], E[i, L/2+1] = conj E[i+L/2+1, L/2-1].
- A truncated band (`pack(..., bandwidth=W)`, W < L/2) keeps d in [0, W] only and
  takes the entries beyond it as zero: an approximation of O(L W) work per step instead
  of O(L^2), for states whose rho decays away from the diagonal (`baselines`, `rk4:DT:bandW`).
- The batch axis is last, so every shift moves whole vectors of trajectories.
- Each RK4 stage writes a padded copy [L+2, L/2+3, B] of its input holding those
  neighbours, behind an XLA optimization barrier; the stencil then reads plain
  slices of it.

Measured side by side on this project's 2-core CPU at L = 32, one thread, batch
16-32, in trajectory-steps/s: this design 192,000; the full matrix instead of
the band 108,000; complex128 instead of the real split 62,000-70,000; without
the barrier 115,000-125,000 (XLA then fuses the wrap-around gathers into every
consumer); batch first with tf.roll shifts and no barrier 24,000 (real split) or
9,000 (complex128). Two intra-op threads are slower than one: run one process
per core. benchmarks/simulate.py times `simulate` end to end.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as tf2xla

from tf_holstein.physics import ETA, HOPPING, K0

DEFAULT_CHUNK_STEPS = 100  # save intervals per device call and per yielded chunk
COMPLEX = {tf.float64: tf.complex128, tf.float32: tf.complex64}  # rho's dtype per precision


class BandState(NamedTuple):
    """A batch of states in band layout (module docstring), float64 (or float32), batch
    axis last."""

    X: tf.Tensor  # [L, W+1, B]  Re rho_{i, i+d}, W = L/2 (or a truncated bandwidth)
    Y: tf.Tensor  # [L, W+1, B]  Im rho_{i, i+d}
    Q: tf.Tensor  # [L, B]
    P: tf.Tensor  # [L, B]


def _band_index(L: int, W: int) -> np.ndarray:
    """int [L, W+1]: (i, d) -> the flat index i L + (i + d mod L) of rho_{i, i+d}."""
    i, d = np.arange(L)[:, None], np.arange(W + 1)[None, :]
    return i * L + (i + d) % L


def _unband_index(L: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """For each (i, j): the flat index [L, L] into the band [L, W+1] (followed by one zero
    entry, index L (W+1), for pairs beyond a truncated band) holding rho_ij or its
    conjugate, and the sign [L, L] of the imaginary part (-1 where the band holds
    rho_ji = conj rho_ij)."""
    i, j = np.arange(L)[:, None], np.arange(L)[None, :]
    upper, lower = (j - i) % L, (i - j) % L
    index = np.where(upper <= W, i * (W + 1) + upper,
                     np.where(lower <= W, j * (W + 1) + lower, L * (W + 1)))
    return index, np.where(upper <= W, 1.0, -1.0)


def pack(rho: Any, Q: Any, P: Any, dtype: tf.DType = tf.float64,
         bandwidth: int | None = None) -> BandState:
    """Band layout of states rho complex [B, L, L] (Hermitian), Q, P real [B, L], in the
    real precision `dtype` (float64, as the data are made, or float32).

    Only rho's band j - i mod L in [0, W] is read: W = bandwidth, default L/2 (exact).
    """
    rho = tf.cast(tf.convert_to_tensor(rho), COMPLEX[dtype])
    B, L = rho.shape[0], rho.shape[-1]
    W = L // 2 if bandwidth is None else bandwidth
    if not 1 <= W <= L // 2:
        raise ValueError(f"bandwidth {W} must lie in [1, L/2 = {L // 2}]")
    band = tf.gather(tf.reshape(rho, [B, L * L]), _band_index(L, W), axis=1)  # [B, L, W+1]
    band = tf.transpose(band, [1, 2, 0])

    def batch_last(x: Any) -> tf.Tensor:
        return tf.transpose(tf.cast(tf.convert_to_tensor(x), dtype))

    return BandState(tf.math.real(band), tf.math.imag(band), batch_last(Q), batch_last(P))


def unpack(state: BandState) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """States back in batch-first layout: rho complex128 [B, L, L], Q, P float64 [B, L]
    (complex64 and float32 from a float32 state).

    rho is exactly Hermitian: the band's two copies of the d = L/2 entries are
    averaged and the imaginary diagonal (zero up to rounding) is dropped. Entries beyond
    a truncated band are zero.
    """
    L, W = state.X.shape[0], state.X.shape[1] - 1
    index, sign = _unband_index(L, W)

    def full(E: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(E, [-1, tf.shape(E)[-1]])
        if 2 * W < L:  # the pairs beyond a truncated band read this zero entry
            flat = tf.concat([flat, tf.zeros_like(flat[:1])], axis=0)
        return tf.gather(flat, index)

    X, Y = full(state.X), full(state.Y) * sign[:, :, None]  # [L, L, B]
    X = 0.5 * (X + tf.transpose(X, [1, 0, 2]))
    Y = 0.5 * (Y - tf.transpose(Y, [1, 0, 2]))
    rho = tf.transpose(tf.complex(X, Y), [2, 0, 1])
    return rho, tf.transpose(state.Q), tf.transpose(state.P)


def _padded(E: tf.Tensor, parity: float) -> tf.Tensor:
    """E [L, h+1, B] with its stencil neighbours: [L+2, h+3, B] for rows i = -1..L
    (periodic) and columns d = -1..h+1, the outer two by Hermiticity (parity +1 for
    the real part, -1 for the imaginary part, which conjugation flips); beyond a
    truncated band (h < L/2) the column d = h+1 is zero."""
    L, h = E.shape[0], E.shape[1] - 1
    rows = np.arange(-1, L + 1)
    left = parity * tf.gather(E[:, 1], (rows - 1) % L)  # E[i, -1] = conj E[i-1, 1]
    if 2 * h == L:
        right = parity * tf.gather(E[:, h - 1], (rows + h + 1) % L)  # conj E[i+h+1, h-1]
    else:
        right = tf.zeros_like(left)
    return tf.concat([left[:, None], tf.gather(E, rows % L), right[:, None]], axis=1)


def _hops(Ep: tf.Tensor) -> tf.Tensor:
    """M_{i+1,j} + M_{i-1,j} - M_{i,j+1} - M_{i,j-1} in band layout, from the padded copy."""
    return Ep[2:, :-2] + Ep[:-2, 2:] - Ep[1:-1, 2:] - Ep[1:-1, :-2]


def derivatives(state: BandState, g: tf.Tensor) -> BandState:
    """The equations of motion at coupling g (G1 = ETA g) in band layout: d(X, Y, Q, P)/dt."""
    L, h = state.Q.shape[0], state.X.shape[1] - 1
    # The barrier makes XLA write the padded copies once per stage instead of
    # fusing their wrap-around gathers into each slice below.
    Xp, Yp = tf2xla.optimization_barrier(_padded(state.X, 1.0), _padded(state.Y, -1.0))
    partner = (np.arange(L)[:, None] + np.arange(h + 1)[None, :]) % L  # j = i + d
    coupling = g * (state.Q[:, None, :] - tf.gather(state.Q, partner))  # g (Q_i - Q_j)
    dX = -HOPPING * _hops(Yp) - coupling * Yp[1:-1, 1:-1]  # [H, Y]
    dY = HOPPING * _hops(Xp) + coupling * Xp[1:-1, 1:-1]  # -[H, X]
    density = Xp[1:-1, 1]  # Re rho_ii, the d = 0 column
    return BandState(dX, dY, K0 * state.P, ETA * g * (density - 0.5) - K0 * state.Q)


def _axpy(x: BandState, a: tf.Tensor, k: BandState) -> BandState:
    return BandState(*(xi + a * ki for xi, ki in zip(x, k)))


def rk4_step(state: BandState, g: tf.Tensor, dt: tf.Tensor) -> BandState:
    """One classical RK4 step of length dt, u + dt (k1 + 2 k2 + 2 k3 + k4) / 6.

    Traceable anywhere; fast inside `tf.function(jit_compile=True)`, as `integrate` runs it.
    """
    k = derivatives(state, g)
    total = _axpy(state, dt / 6, k)
    k = derivatives(_axpy(state, dt / 2, k), g)
    total = _axpy(total, dt / 3, k)
    k = derivatives(_axpy(state, dt / 2, k), g)
    total = _axpy(total, dt / 3, k)
    k = derivatives(_axpy(state, dt, k), g)
    return _axpy(total, dt / 6, k)


def _advance(state: BandState, n_steps: tf.Tensor, g: tf.Tensor, dt: tf.Tensor,
             steps_per_trajectory: tf.Tensor | None = None) -> BandState:
    """n_steps RK4 steps in one XLA while loop; trajectory b stops after
    steps_per_trajectory[b] steps if that is given."""
    def body(k: tf.Tensor, state: BandState) -> tuple[tf.Tensor, BandState]:
        new = rk4_step(state, g, dt)
        if steps_per_trajectory is not None:
            moving = k < steps_per_trajectory  # [B], broadcast over the batch-last axis
            new = BandState(*(tf.where(moving, a, b) for a, b in zip(new, state)))
        return k + 1, new

    return tf.while_loop(lambda k, _: k < n_steps, body, (tf.constant(0), state))[1]


_advance_compiled = tf.function(_advance, jit_compile=True)


def integrate(state: BandState, n_steps: int | tf.Tensor, g: float, dt: float,
              steps_per_trajectory: Any = None) -> BandState:
    """n_steps RK4 steps of length dt at coupling g, compiled with XLA, in the state's
    precision.

    steps_per_trajectory: optional int [B]; trajectory b then takes
    min(n_steps, steps_per_trajectory[b]) steps.
    """
    if steps_per_trajectory is not None:
        steps_per_trajectory = tf.convert_to_tensor(steps_per_trajectory, tf.int32)
    dtype = state.Q.dtype
    return _advance_compiled(state, tf.convert_to_tensor(n_steps, tf.int32),
                             tf.cast(tf.convert_to_tensor(g, tf.float64), dtype),
                             tf.cast(tf.convert_to_tensor(dt, tf.float64), dtype),
                             steps_per_trajectory)


def _stored(state: BandState) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The state as stored: rho complex64 [B, L, L], Q, P float32 [B, L]."""
    rho, Q, P = unpack(state)
    return tf.cast(rho, tf.complex64), tf.cast(Q, tf.float32), tf.cast(P, tf.float32)


@tf.function(jit_compile=True)
def _save_intervals(state: BandState, n_intervals: tf.Tensor, save_interval: tf.Tensor,
                    g: tf.Tensor, dt: tf.Tensor, capacity: int
                    ) -> tuple[BandState, tuple[tf.Tensor, ...], tuple[tf.Tensor, ...]]:
    """Integrates n_intervals <= capacity save intervals, recording the mid and end states.

    Returns the final state and, batch first, the end and mid states [B, capacity, ...]
    (entries past n_intervals are zero).
    """
    half = save_interval // 2
    shapes = [s.shape for s in _stored(state)]
    dtypes = (tf.complex64, tf.float32, tf.float32)

    def arrays() -> tuple[tf.TensorArray, ...]:
        return tuple(tf.TensorArray(d, size=capacity, element_shape=s)
                     for d, s in zip(dtypes, shapes))

    def body(k, state, saved, mids):
        state = _advance(state, half, g, dt)
        mids = tuple(a.write(k, x) for a, x in zip(mids, _stored(state)))
        state = _advance(state, save_interval - half, g, dt)
        saved = tuple(a.write(k, x) for a, x in zip(saved, _stored(state)))
        return k + 1, state, saved, mids

    _, state, saved, mids = tf.while_loop(lambda k, *_: k < n_intervals, body,
                                          (tf.constant(0), state, arrays(), arrays()))

    def batch_first(a: tf.TensorArray) -> tf.Tensor:
        stacked = a.stack()
        return tf.transpose(stacked, [1, 0, *range(2, stacked.shape.rank)])

    return state, tuple(map(batch_first, saved)), tuple(map(batch_first, mids))


def simulate(rho0: Any, Q0: Any, P0: Any, *, g: float, dt: float, save_interval: int,
             saved_steps: int, pre_steps: int = 0, phases: Any = None,
             chunk_steps: int = DEFAULT_CHUNK_STEPS,
             on_steps: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Post-quench trajectories from initial states, saved as docs/physics.md describes.

    rho0 complex [B, L, L] (Hermitian), Q0, P0 real [B, L]: the states at t = 0
    (numpy or tensors). g is the post-quench coupling g_f (H uses g, dP uses
    ETA g); time step dt in units of hbar/t. Trajectory b is first integrated
    pre_steps + phases[b] RK4 steps (phases int [B] in [0, save_interval),
    default 0); that is its saved state 0. Saved state s >= 1 follows
    save_interval steps after saved state s - 1; the mid state of interval s
    (between saved states s and s + 1) is save_interval // 2 steps into it.

    Chunk contract. Yields dicts of numpy arrays, in order, `chunk_steps` save
    intervals per chunk (fewer in the last):
      rho complex64 [B, n, L, L], Q, P float32 [B, n, L]: saved states
          first_saved .. first_saved + n - 1;
      mid_rho, mid_Q, mid_P (same dtypes) [B, m, ...]: mid states of intervals
          first_mid .. first_mid + m - 1;
      first_saved, first_mid: ints.
    The first chunk has first_saved = first_mid = 0 and n = m + 1 (it adds saved
    state 0); every later chunk has n = m and first_mid = first_saved - 1, so
    each chunk's mid states lie in the intervals that end in it. Concatenated
    along axis 1 the chunks give saved_steps + 1 saved and saved_steps mid states.
    Device memory stays bounded by one chunk whatever saved_steps is.

    on_steps(n) is called after each device call with the number n of RK4 steps
    it advanced the batch by; the phase offsets are not counted, so the calls
    sum to pre_steps + saved_steps * save_interval.
    """
    rho0, Q0, P0 = (tf.convert_to_tensor(x) for x in (rho0, Q0, P0))
    if (Q0.shape.rank != 2 or P0.shape != Q0.shape or rho0.shape != Q0.shape + Q0.shape[1:]
            or Q0.shape[1] % 2 or Q0.shape[1] < 4):
        raise ValueError(f"need rho0 [B, L, L], Q0 and P0 [B, L] with L even and >= 4; got "
                         f"{rho0.shape}, {Q0.shape}, {P0.shape}")
    B = Q0.shape[0]
    phases = np.zeros(B, np.int64) if phases is None else np.asarray(phases, np.int64)
    if phases.shape != (B,) or np.any(phases < 0) or np.any(phases >= save_interval):
        raise ValueError(f"phases must be int [B={B}] in [0, save_interval={save_interval}), "
                         f"got {phases!r}")
    if save_interval < 2 or saved_steps < 1 or pre_steps < 0 or chunk_steps < 1:
        raise ValueError(f"need save_interval >= 2, saved_steps >= 1, pre_steps >= 0 and "
                         f"chunk_steps >= 1; got {save_interval}, {saved_steps}, {pre_steps}, "
                         f"{chunk_steps}")
    report = on_steps or (lambda n: None)
    g_t, dt_t = tf.constant(g, tf.float64), tf.constant(dt, tf.float64)
    state = pack(rho0, Q0, P0)

    longest_call = chunk_steps * save_interval  # RK4 steps per device call at most
    for start in range(0, pre_steps, longest_call):
        n = min(longest_call, pre_steps - start)
        state = integrate(state, n, g_t, dt_t)
        report(n)
    if phases.any():
        state = integrate(state, int(phases.max()), g_t, dt_t, steps_per_trajectory=phases)

    initial = [x.numpy()[:, None] for x in _stored(state)]
    for first in range(0, saved_steps, chunk_steps):
        n = min(chunk_steps, saved_steps - first)
        state, saved, mids = _save_intervals(state, tf.constant(n), tf.constant(save_interval),
                                             g_t, dt_t, chunk_steps)
        report(n * save_interval)
        saved = [x.numpy()[:, :n] for x in saved]
        if first == 0:
            saved = [np.concatenate([a, b], axis=1) for a, b in zip(initial, saved)]
        chunk: dict[str, Any] = dict(zip(("rho", "Q", "P"), saved))
        chunk.update(zip(("mid_rho", "mid_Q", "mid_P"), (x.numpy()[:, :n] for x in mids)))
        chunk.update(first_saved=first + 1 if first else 0, first_mid=first)
        yield chunk
