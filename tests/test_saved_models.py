"""The shipped models: both forms load, agree, stay on their quench's orbit, and check the
inputs of their serving signatures."""
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from float32 import EPS32, KERNEL_ULPS, eigh_tolerance
from tf_holstein import export, loading, near_pi, physics, records, simulate
from tf_holstein.configs import get_config

SHIPPED = Path(__file__).resolve().parent.parent / "saved_models"
EVERY_SHIPPED = sorted(path.name for path in SHIPPED.iterdir()
                       if (path / "saved_model.pb").exists())
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
    served = loading.load_model(SHIPPED / name)
    in_process = loading.load_model(SHIPPED / name / "model.keras")
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
    if in_process.handle.config.split_steps:
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


REFERENCE = np.load(Path(__file__).resolve().parent / "data" / "shipped_outputs.npz")


@pytest.mark.parametrize("name", EVERY_SHIPPED)
def test_shipped_models_give_their_stored_outputs(name):
    """Each form of every shipped model rolls out, and its .keras model steps, as when the
    outputs were stored (make_reference_outputs.py): on the machine that stored them bit for
    bit; on another CPU its kernels may round float32 sums in another order, each step by
    at most KERNEL_ULPS units of the values' scale, carried along as the model's dynamics
    amplify a small error (bounded as in the test above)."""
    stored = {key[len(name) + 1:]: REFERENCE[key] for key in REFERENCE.files
              if key.startswith(name + "/")}
    state = {key: stored[f"input/{key}"] for key in records.STATE_KEYS}
    L = state["Q"].shape[-1]
    forms = {"saved_model": loading.load_model(SHIPPED / name),
             "keras": loading.load_model(SHIPPED / name / "model.keras")}
    model = forms["keras"].handle
    scales = model.scales
    per_step = KERNEL_ULPS * EPS32
    if model.config.split_steps:
        h_norm = 2 * physics.HOPPING + model.coupling * np.abs(state["Q"]).max()
        per_step += eigh_tolerance(L, h_norm, model.time_step) / scales["rho"]
    steps = stored["keras/rollout/Q"].shape[1]
    bound = 4 * per_step * np.cumsum(amplification(model.rollout, state, scales, steps))

    def expected(prefix: str) -> dict[str, np.ndarray]:
        return {key: stored[f"{prefix}/{key}"] for key in records.STATE_KEYS}

    for form, loaded in forms.items():
        gap = scaled_gap(loaded.rollout(state, steps), expected(f"{form}/rollout"), scales)
        assert np.all(gap <= bound), (form, gap, bound)
    if model.has_derivatives:
        step, derivative = model.step(state, return_derivatives=True)
        rate_scales = {key: scales["d" + key] for key in records.STATE_KEYS}
        assert scaled_gap(one_step(derivative), one_step(expected("keras/derivative")),
                          rate_scales)[0] <= KERNEL_ULPS * EPS32
    else:
        step = model.step(state)
    assert scaled_gap(one_step(step), one_step(expected("keras/step")), scales)[0] <= per_step


def one_step(state: dict) -> dict[str, np.ndarray]:
    """A single state (or rate) as a rollout of one step, as `scaled_gap` takes it."""
    return {key: np.asarray(value)[:, None] for key, value in state.items()}


def bad_inputs(L: int) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    """A valid batch of two states, and every way a client can get one wrong, with the error
    each must raise: {case: (inputs, message)}."""
    rng = np.random.default_rng(0)
    good = {"rho_real": np.eye(L, dtype=np.float32)[None].repeat(2, 0) * 0.5,
            "rho_imag": np.zeros((2, L, L), np.float32),
            "Q": (0.1 * rng.normal(size=(2, L))).astype(np.float32),
            "P": np.zeros((2, L), np.float32)}

    def with_value(key, index, value):
        array = good[key].copy()
        array[index] = value
        return {**good, key: array}

    return {
        "good": (good, ""),
        "rho_imag of another batch": ({**good, "rho_imag": good["rho_imag"][:1]},
                                      "rho_imag must have the shape of rho_real"),
        "Q and P of another batch": ({**good, "Q": good["Q"][:1], "P": good["P"][:1]},
                                     r"Q and P must be \[B, L\] with the batch size B"),
        "P of another length": ({**good, "P": good["P"][:, :L - 2]},
                                "P must have the shape of Q"),
        "rho not square": ({**good, "rho_real": good["rho_real"][:, :, :L - 2],
                            "rho_imag": good["rho_imag"][:, :, :L - 2]},
                           r"rho_real must be \[B, L, L\]"),
        "NaN in Q": (with_value("Q", (1, 3), np.nan), "Q holds NaN or inf"),
        "inf in rho_imag": (with_value("rho_imag", (0, 1, 2), np.inf),
                            "rho_imag holds NaN or inf"),
        "NaN in P": (with_value("P", (0, 0), np.nan), "P holds NaN or inf"),
        "inf in rho_real": (with_value("rho_real", (1, 0, 0), -np.inf),
                            "rho_real holds NaN or inf"),
    }


@pytest.mark.parametrize("name", EVERY_SHIPPED)
def test_every_shipped_model_checks_its_serving_inputs(name):
    """Each signature of every model in saved_models/ refuses a bad input with an error
    naming it, never a broadcast batch, a NaN result or an error from deep inside the model;
    an old export without the checks cannot ship again."""
    loaded = tf.saved_model.load(str(SHIPPED / name))
    L = export.read_metadata(SHIPPED / name)["data"]["L"]
    signatures = {signature: loaded.signatures[signature] for signature in export.SIGNATURES}
    for case, (inputs, message) in bad_inputs(L).items():
        for signature, function in signatures.items():
            steps = {} if signature == "step" else {"n_steps": tf.constant(2)}
            if not message:
                out = function(**inputs, **steps)
                assert all(np.isfinite(value.numpy()).all() for value in out.values()), case
                continue
            with pytest.raises(tf.errors.InvalidArgumentError, match=message):
                function(**inputs, **steps)
    good = bad_inputs(L)["good"][0]
    for signature in ("rollout", "rollout_order_parameters"):
        for n_steps in (0, -1):
            with pytest.raises(tf.errors.InvalidArgumentError, match="n_steps must be >= 1"):
                signatures[signature](**good, n_steps=tf.constant(n_steps))
    with pytest.raises((TypeError, tf.errors.InvalidArgumentError), match="float"):
        signatures["step"](**{**good, "Q": tf.constant(good["Q"], tf.float64)})


def _strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for value in obj.values() for s in _strings(value)]
    if isinstance(obj, list):
        return [s for value in obj for s in _strings(value)]
    return []


@pytest.mark.parametrize("name", EVERY_SHIPPED)
def test_every_shipped_evaluation_is_complete_and_names_no_machine_path(name):
    """Each shipped model's metrics.json is the current evaluator's (every climate section,
    each figure beside it), and it names its model and data relative to the repository,
    with no absolute path of the machine it was made on anywhere."""
    result = json.loads((SHIPPED / name / "metrics.json").read_text())
    assert {"distribution", "spectrum", "valid_time", near_pi.SECTION} <= set(result)
    assert result["run"]["model"] == f"saved_models/{name}"
    assert result["run"]["data"].startswith("data/")
    assert not [s for s in _strings(result) if s.startswith("/")]
    figures = {"snapshots.png", "order_parameters.png", "autocorrelation.png",
               "distributions.png", "spectra.png", "valid_time.png"}
    assert figures <= {path.name for path in (SHIPPED / name).glob("*.png")}
