r"""Weight-free models: the classical integrators every learned model is priced against,
behind the same rollout interface, named by a `--model` spec.

| spec | method | order | work per saved step of length T |
|---|---|---|---|
| `exact` | the data's own RK4 (`simulate.simulate`), float64 | 4 | T / dt stencil sweeps x 4 |
| `rk4:DT` | RK4 at time step DT (`simulate.rk4_step`) | 4 | T / DT x 4 stencil sweeps |
| `trotter2:DT`, `trotter4:DT` | Trotter-Suzuki over even and odd bonds (`integrators`) | 2, 4 | T / DT x 4 (x 5 at fourth order) elementwise passes over rho |
| `split:N` | the split step with exact frozen-lattice flows (`physics.split_step`) | 2 | N eigendecompositions of H(Q), O(L^3) |
| `rk4:DT:bandW` | RK4 on rho's band \|i - j\| <= W alone, the rest taken as zero (`simulate`) | approximate | T / DT x 4 sweeps of O(L W) |

Each takes `:float32` after it (e.g. `rk4:0.04:float32`) to run in single precision;
float64 by default. DT must divide the dataset's saved interval. Every rollout call
restarts from its (stored, single-precision) input state and returns stored precision.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from tf_holstein import integrators, physics, records, rollout, simulate

EXACT = "exact"
SPLIT, RK4 = "split", "rk4"
TROTTER = {"trotter2": 2, "trotter4": 4}
PRECISIONS = {"float64": tf.float64, "float32": tf.float32}
BAND = "band"
SPECS = (f"{EXACT}, {SPLIT}:N, {RK4}:DT, {', '.join(f'{name}:DT' for name in TROTTER)}, "
         f"each but {EXACT} optionally followed by :float32; {RK4} also by :{BAND}W "
         f"(W, the kept bandwidth of rho, in [1, L/2])")


def is_baseline(spec: str) -> bool:
    """Whether a `--model` spec names a baseline rather than a file."""
    return spec == EXACT or spec.split(":")[0] in (SPLIT, RK4, *TROTTER)


def baseline_model(spec: str, meta: Mapping[str, Any]) -> rollout.LoadedModel:
    """The baseline that `spec` names (the module's table), at the protocol of the dataset
    whose `meta.json` is `meta`."""
    config, time_step = meta["config"], meta["time_step"]
    if spec == EXACT:
        return rollout.LoadedModel(Path(EXACT), EXACT, exact_rollout(meta), {}, None,
                                   precision="float64")
    method, *rest = spec.split(":")
    if method not in (SPLIT, RK4, *TROTTER) or not 1 <= len(rest) <= 3:
        raise ValueError(f"--model {spec}: not a baseline spec; valid: {SPECS}")
    precision, bandwidth = None, None
    for option in rest[1:]:
        if option in PRECISIONS and precision is None:
            precision = option
        elif option.startswith(BAND) and method == RK4 and bandwidth is None:
            bandwidth = _whole(option[len(BAND):], spec, f"{BAND}W with W a whole number")
            if bandwidth > config["L"] // 2:
                raise ValueError(f"--model {spec}: the bandwidth {bandwidth} exceeds L/2 = "
                                 f"{config['L'] // 2} of the dataset")
        else:
            raise ValueError(f"--model {spec}: option {option!r} is not understood; valid: "
                             f"{SPECS}")
    precision = precision or "float64"
    dtype, g = PRECISIONS[precision], config["g_f"]
    if method == SPLIT:
        parts = _whole(rest[0], spec, "N, a whole number of parts per saved step")
        state_rollout = compiled_rollout(
            lambda state: physics.split_step(*state, g, time_step, parts), dtype,
            jit_compile=False)
    else:
        dt = _positive(rest[0], spec)
        substeps = round(time_step / dt)
        if substeps < 1 or not math.isclose(substeps * dt, time_step, rel_tol=1e-9):
            raise ValueError(f"--model {spec}: the time step {dt:g} must divide the saved "
                             f"interval {time_step:g} of the dataset")
        if method == RK4:
            state_rollout = rk4_rollout(g, dt, substeps, dtype, bandwidth)
        else:
            order = TROTTER[method]
            state_rollout = compiled_rollout(
                lambda state: integrators.trotter_step(*state, g, dt, order, substeps), dtype)
    return rollout.LoadedModel(Path(spec), spec, state_rollout, {}, None,
                               precision=precision)


def exact_rollout(meta: Mapping[str, Any]) -> rollout.RolloutFn:
    """The simulator that made the data (`simulate.simulate`, float64, the dataset's dt).

    Started from the stored (single-precision) states, it measures what the rounding alone
    does to a chaotic rollout: no learned model can be expected to do better. Each rollout
    call restarts from its (float32) input, so a rollout in chunks is rounded once per chunk.
    """
    config = meta["config"]

    def run(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        chunks = list(simulate.simulate(
            np.asarray(state["rho"], np.complex128), np.asarray(state["Q"], np.float64),
            np.asarray(state["P"], np.float64), g=config["g_f"], dt=config["dt"],
            save_interval=config["save_interval"], saved_steps=n_steps))
        return {key: np.concatenate([c[key] for c in chunks], axis=1)[:, 1:]
                for key in records.STATE_KEYS}

    return run


def compiled_rollout(advance: Callable[[Any], Any], dtype: tf.DType, jit_compile: bool = True,
                     pack: Callable[..., Any] = lambda *state: state,
                     unpack: Callable[[Any], tuple[tf.Tensor, ...]] = lambda state: state
                     ) -> rollout.RolloutFn:
    """A rollout of `advance` (a state -> the state one saved step later) in one compiled
    loop over the steps, in precision `dtype`: the state is `pack(rho, Q, P)` (default the
    tuple itself), read back as (rho, Q, P) by `unpack` and recorded in stored precision.

    jit_compile: XLA for the whole loop; off where an op is slower under XLA on CPUs
    (the eigendecompositions of the split step)."""
    complex_dtype = simulate.COMPLEX[dtype]

    @tf.function(jit_compile=jit_compile)
    def run(rho: tf.Tensor, Q: tf.Tensor, P: tf.Tensor, n_steps: int) -> tuple[tf.Tensor, ...]:
        def record(arrays: tuple[tf.TensorArray, ...], k: tf.Tensor, state: Any
                   ) -> tuple[tf.TensorArray, ...]:
            rho, Q, P = unpack(state)
            return tuple(a.write(k, tf.cast(x, a.dtype))
                         for a, x in zip(arrays, (rho, Q, P)))

        arrays = tuple(tf.TensorArray(d, size=n_steps)
                       for d in (tf.complex64, tf.float32, tf.float32))

        def body(k, state, arrays):
            state = advance(state)
            return k + 1, state, record(arrays, k, state)

        state = pack(tf.cast(rho, complex_dtype), tf.cast(Q, dtype), tf.cast(P, dtype))
        _, _, arrays = tf.while_loop(lambda k, *_: k < n_steps, body,
                                     (tf.constant(0), state, arrays))
        # [n, B, ...] -> [B, n, ...]
        return tuple(tf.einsum("nb...->bn...", a.stack()) for a in arrays)

    def state_rollout(state: Mapping[str, np.ndarray], n_steps: int) -> rollout.State:
        out = run(tf.constant(state["rho"]), tf.constant(state["Q"]), tf.constant(state["P"]),
                  int(n_steps))
        return {key: value.numpy() for key, value in zip(records.STATE_KEYS, out)}

    return state_rollout


def rk4_rollout(g: float, dt: float, substeps: int, dtype: tf.DType,
                bandwidth: int | None = None) -> rollout.RolloutFn:
    """RK4 at time step dt, `substeps` steps per saved step, on the simulator's band
    layout (`simulate`), in precision `dtype`; on rho's band |i - j| <= bandwidth alone if
    that is given (the rest taken as zero, an approximation)."""
    g_t, dt_t = tf.constant(g, dtype), tf.constant(dt, dtype)

    def advance(state: simulate.BandState) -> simulate.BandState:
        return tf.while_loop(lambda _: True, lambda s: (simulate.rk4_step(s, g_t, dt_t),),
                             (state,), maximum_iterations=substeps)[0]

    return compiled_rollout(advance, dtype, unpack=simulate.unpack,
                            pack=lambda rho, Q, P: simulate.pack(rho, Q, P, dtype, bandwidth))


def _whole(text: str, spec: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--model {spec}: expected {what}, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--model {spec}: expected {what} >= 1, got {value}")
    return value


def _positive(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"--model {spec}: expected a positive time step, got {text!r}")
    return value
