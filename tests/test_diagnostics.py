"""The noise-contraction diagnostic against steps whose answer is known."""
import numpy as np
import pytest

from tf_holstein import diagnostics

from test_models import random_state


@pytest.mark.parametrize("factor", [0.0, 1.0, 2.0])
def test_gain_is_the_factor_a_linear_step_applies_to_input_errors(factor):
    """step(u) = target + factor (u - u0): clean error 0, gain exactly `factor`."""
    states, targets = random_state(16, 8, seed=1), random_state(16, 8, seed=2)

    def step(state):
        return {key: targets[key] + factor * (np.asarray(state[key]) - states[key])
                for key in states}

    out = diagnostics.noise_contraction(step, states, targets, [1e-3, 1e-2])
    assert out["0"]["error_state"] == 0.0
    for sigma in ("0.001", "0.01"):
        for key in ("rho", "Q", "P", "state"):
            assert out[sigma][f"gain_{key}"] == pytest.approx(factor, rel=1e-4, abs=1e-6)
        # The noise has the training's size: RMS sigma in every variable.
        assert out[sigma]["error_Q"] == pytest.approx(factor * float(sigma), rel=0.15)


def test_clean_error_is_taken_out_of_the_gain():
    states, targets = random_state(64, 8, seed=1), random_state(64, 8, seed=2)
    offset = {key: 0.5 * (np.asarray(states[key]) - targets[key]) for key in states}

    def step(state):  # a fixed error beside a passed-on input error
        return {key: targets[key] + offset[key] + (np.asarray(state[key]) - states[key])
                for key in states}

    out = diagnostics.noise_contraction(step, states, targets, [1e-2])
    assert out["0"]["error_state"] > 1e-2
    assert out["0.01"]["gain_state"] == pytest.approx(1.0, abs=0.1)


def test_noise_levels_must_be_positive():
    state = random_state(1, 4)
    with pytest.raises(ValueError, match="noise levels must be positive"):
        diagnostics.noise_contraction(lambda s: s, state, state, [0.0])


def test_evaluate_reports_the_exact_simulators_noise_contraction(smoke_dataset, tmp_path):
    """Restarted from a stored state, the exact simulator reproduces the next one up to the
    stored float32 rounding; input noise is then carried along by the true flow."""
    from tf_holstein import baselines, report, scoring

    result = scoring.evaluate(baselines.EXACT, smoke_dataset, split="test", out_dir=tmp_path,
                              noise_levels=[1e-3], progress=False)
    entry = result["noise_contraction"]
    assert entry["0"]["error_state"] < 1e-5
    assert 0.1 < entry["0.001"]["gain_state"] < 10.0
    saved = report.to_json(result)["noise_contraction"]
    assert saved["0.001"]["gain_Q"] == pytest.approx(entry["0.001"]["gain_Q"])
