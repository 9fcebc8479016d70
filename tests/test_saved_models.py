"""The shipped models: both forms load, agree, and stay on their quench's orbit."""
from pathlib import Path

import numpy as np
import pytest

from float32 import EPS32, KERNEL_ULPS, eigh_tolerance
from tf_holstein import evaluation, physics, records, simulate
from tf_holstein.configs import get_config

SHIPPED = Path(__file__).resolve().parent.parent / "saved_models"
STEPS = 50


def first_saved_states(config_name: str, n: int = 2) -> dict[str, np.ndarray]:
    """Initial states of the config's protocol carried to its first saved state (t = 0 for
    the shallow quench, 64 time units after the deep one) by the exact simulator."""
    data = get_config(config_name).data
    rng = np.random.default_rng(0)
    rho, Q, P = physics.initial_state(data.L, data.g_i, data.noise * rng.normal(size=(n, data.L)),
                                      data.noise * rng.normal(size=(n, data.L)))
    rho, Q, P = simulate.unpack(simulate.integrate(simulate.pack(rho, Q, P), data.pre_steps,
                                                   data.g_f, data.dt))
    return {"rho": rho.numpy().astype(np.complex64), "Q": Q.numpy().astype(np.float32),
            "P": P.numpy().astype(np.float32)}


def scaled_gap(a: dict, b: dict, scales: dict) -> np.ndarray:
    """max over sites and keys of |a - b| / scale, per step: [steps]."""
    return np.max([np.abs(a[key] - b[key]).reshape(*a[key].shape[:2], -1).max(axis=(0, 2))
                   / scales[key] for key in records.STATE_KEYS], axis=0)


def amplification(rollout, state: dict, scales: dict, steps: int) -> np.ndarray:
    """How much the model's own dynamics amplify a small input error, per step: [steps].

    A random perturbation of 1e-5 of each key's scale (far above float32 rounding, far
    below the state) is rolled out beside the unperturbed state; its growth, made
    non-decreasing, bounds how a one-step discrepancy grows over the following steps.
    """
    rng = np.random.default_rng(1)
    size = 1e-5
    perturbed = {key: (value + size * scales[key] * (rng.normal(size=value.shape)
                                                     + (1j * rng.normal(size=value.shape)
                                                        if key == "rho" else 0))
                       ).astype(value.dtype) for key, value in state.items()}
    gap = scaled_gap(rollout(perturbed, steps), rollout(state, steps), scales) / size
    return np.maximum.accumulate(np.maximum(gap, 1.0))


@pytest.mark.parametrize("name, config_name", [("shallow_L16", "shallow"),
                                               ("shallow_L32", "shallow_L32"),
                                               ("deep_L32_cnn", "deep_L32"),
                                               ("deep_L32", "deep_L32")])
def test_shipped_savedmodel_and_keras_file_agree_and_move(name, config_name):
    state = first_saved_states(config_name)
    L = state["Q"].shape[-1]
    served = evaluation.load_model(SHIPPED / name)
    in_process = evaluation.load_model(SHIPPED / name / "model.keras")
    assert (served.format, in_process.format) == ("saved_model", "keras")
    scales = in_process.handle.scales
    a, b = served.rollout(state, STEPS), in_process.rollout(state, STEPS)
    # The two forms run different kernels (the SavedModel TensorFlow's, the small in-process
    # batch an XLA-compiled loop), which differ only in the order of float32 sums: each step
    # adds at most KERNEL_ULPS float32 units of the values' scale, and the dynamics then
    # carry that discrepancy along, amplified at the rate they amplify any small error
    # (chaotically in the deep quench). Summing over the steps bounds the gap with a factor
    # 4 for the spread between a random perturbation's growth and the worst one's. A model
    # on a split step also propagates through eigendecompositions of H(Q), whose kernels
    # differ by the eigensolvers' backward error, over the step's whole time.
    per_step = KERNEL_ULPS * EPS32
    if in_process.handle.split_steps:
        h_norm = 2 * physics.HOPPING + in_process.handle.coupling * np.abs(state["Q"]).max()
        per_step += eigh_tolerance(L, h_norm, in_process.handle.time_step) / scales["rho"]
    assert scaled_gap(served.rollout(state, 1), in_process.rollout(state, 1), scales)[0] \
        <= per_step
    growth = amplification(served.rollout, state, scales, STEPS)
    bound = 4 * per_step * np.cumsum(growth)
    gap = scaled_gap(a, b, scales)
    assert np.all(gap <= bound), (gap, bound)
    # After either quench the phonons move by far more than the initial noise.
    assert np.abs(a["Q"] - state["Q"][:, None]).max() > 1e-2
    trace = np.trace(a["rho"][:, -1], axis1=-2, axis2=-1).real
    np.testing.assert_allclose(trace, L / 2, atol=1e-2)
