"""The shipped models: both forms load, agree, and stay on their quench's orbit."""
from pathlib import Path

import numpy as np
import pytest

from tf_holstein import evaluate, physics, simulate
from tf_holstein.configs import get_config

SHIPPED = Path(__file__).resolve().parent.parent / "saved_models"


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


@pytest.mark.parametrize("name, config_name", [("shallow_L16", "shallow"),
                                               ("shallow_L32", "shallow_L32"),
                                               ("deep_L16", "deep_L16"),
                                               ("deep_L32_cnn", "deep_L32")])
def test_shipped_savedmodel_and_keras_file_agree_and_move(name, config_name):
    state = first_saved_states(config_name)
    L = state["Q"].shape[-1]
    served = evaluate.load_model(SHIPPED / name)
    in_process = evaluate.load_model(SHIPPED / name / "model.keras")
    assert (served.format, in_process.format) == ("saved_model", "keras")
    a, b = served.rollout(state, 50), in_process.rollout(state, 50)
    # float32 rounding differences grow along the chaotic deep-quench rollout: compare
    # the first 10 steps.
    for key in ("rho", "Q", "P"):
        np.testing.assert_allclose(a[key][:, :10], b[key][:, :10], atol=1e-5, err_msg=key)
    # After either quench the phonons move by far more than the initial noise.
    assert np.abs(a["Q"] - state["Q"][:, None]).max() > 1e-2
    trace = np.trace(a["rho"][:, -1], axis1=-2, axis2=-1).real
    np.testing.assert_allclose(trace, L / 2, atol=1e-2)
