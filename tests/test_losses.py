"""The loss of SPEC section 4 against direct NumPy formulas."""
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
