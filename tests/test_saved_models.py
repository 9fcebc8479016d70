"""The shipped models: both forms load, agree, and stay on the shallow quench's orbit."""
from pathlib import Path

import numpy as np
import pytest

from tf_holstein import evaluate, physics

SHIPPED = Path(__file__).resolve().parent.parent / "saved_models"


@pytest.mark.parametrize("name, L", [("shallow_L16", 16), ("shallow_L32", 32)])
def test_shipped_savedmodel_and_keras_file_agree_on_a_rollout(name, L):
    rng = np.random.default_rng(0)
    rho, Q, P = physics.initial_state(L, 0.5, 1e-4 * rng.normal(size=(2, L)),
                                      1e-4 * rng.normal(size=(2, L)))
    state = {"rho": rho.numpy().astype(np.complex64), "Q": Q.numpy().astype(np.float32),
             "P": P.numpy().astype(np.float32)}
    served = evaluate.load_model(SHIPPED / name)
    in_process = evaluate.load_model(SHIPPED / name / "model.keras")
    assert (served.format, in_process.format) == ("saved_model", "keras")
    a, b = served.rollout(state, 50), in_process.rollout(state, 50)
    for key in ("rho", "Q", "P"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)
    # After the quench g 0.5 -> 0.8 the CDW order grows and oscillates: the rollout moves.
    assert np.abs(a["Q"] - state["Q"][:, None]).max() > 1e-2
    trace = np.trace(a["rho"][:, -1], axis1=-2, axis2=-1).real
    np.testing.assert_allclose(trace, L / 2, atol=1e-2)
