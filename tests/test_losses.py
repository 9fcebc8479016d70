"""The loss of docs/training.md against direct NumPy formulas."""
import numpy as np
import pytest
import tensorflow as tf

from tf_holstein import losses


def test_component_losses_match_numpy():
    rng = np.random.default_rng(0)
    B, S, L = 3, 2, 6
    target = {"rho": (rng.normal(size=(B, S, L, L)) + 1j * rng.normal(size=(B, S, L, L))
                      ).astype(np.complex64),
              "Q": rng.normal(size=(B, S, L)).astype(np.float32),
              "P": rng.normal(size=(B, S, L)).astype(np.float32)}
    pred = {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32) for k, v in target.items()}
    got = {k: float(v) for k, v in losses.component_losses(
        {k: tf.constant(v) for k, v in pred.items()},
        {k: tf.constant(v) for k, v in target.items()}).items()}
    err = pred["rho"] - target["rho"]
    off = ~np.eye(L, dtype=bool)
    assert got["rho_diag"] == pytest.approx(
        np.sqrt(np.mean(np.abs(np.einsum("bsii->bsi", err)) ** 2)), rel=1e-5)
    assert got["rho_offdiag"] == pytest.approx(np.sqrt(np.mean(np.abs(err[..., off]) ** 2)),
                                               rel=1e-5)
    assert got["Q"] == pytest.approx(np.sqrt(np.mean((pred["Q"] - target["Q"]) ** 2)), rel=1e-5)
    assert float(losses.total_loss(got)) == pytest.approx(sum(got.values()), rel=1e-6)


def test_zero_error_gives_zero_loss():
    state = {"rho": tf.ones([1, 4, 4], tf.complex64), "Q": tf.ones([1, 4]),
             "P": tf.zeros([1, 4])}
    assert all(float(v) == 0.0 for v in losses.component_losses(state, state).values())


def test_order_parameter_terms_are_relative_errors_of_the_staggered_components():
    """A staggered offset c on Q and a uniform one on rho's diagonal: Delta_Q is off by
    exactly c, Delta_rho not at all (uniform density has no staggered part)."""
    rng = np.random.default_rng(1)
    B, S, L = 2, 3, 8
    target = {"rho": tf.constant(rng.normal(size=(B, S, L, L)).astype(np.complex64)),
              "Q": tf.constant(rng.normal(size=(B, S, L)).astype(np.float32)),
              "P": tf.zeros([B, S, L])}
    stagger = (-1.0) ** np.arange(L)
    c = 0.03
    pred = {"rho": target["rho"] + 0.2 * tf.eye(L, dtype=tf.complex64),
            "Q": target["Q"] + c * stagger.astype(np.float32), "P": target["P"]}
    sums = losses.order_parameter_error_sums(pred, target)
    true_q = np.mean(stagger * target["Q"].numpy(), axis=-1)
    error, norm = (float(x) for x in sums["Delta_Q"])
    assert error == pytest.approx(B * S * c ** 2, rel=1e-4)
    assert norm == pytest.approx(np.sum(true_q ** 2), rel=1e-5)
    assert float(sums["Delta_rho"][0]) == pytest.approx(0.0, abs=1e-10)
