"""Climate statistics: zero between identical ensembles, closed forms for known perturbations,
Lyapunov exponents of linear dynamics, valid times of forecasts that fail at a known step."""
import runpy
from pathlib import Path

import numpy as np
import pytest

from tf_holstein import climate, climate_plots, near_pi, physics, plots

ROOT = Path(__file__).resolve().parents[1]


def noisy_series(n=12, length=256, seed=0):
    """An ensemble of damped random oscillations [n, length]: varied, not periodic."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    return (np.sin(0.2 * t + rng.uniform(0, 6, (n, 1))) + 0.3 * rng.normal(size=(n, length))
            + rng.normal(size=(n, 1)))


def test_identical_ensembles_score_zero_on_every_distance():
    x = noisy_series()
    k, factors = climate.structure_factor(np.random.default_rng(1).normal(size=(len(x), 30, 8)))
    factors = factors.mean(axis=1)
    out = climate.climate_metrics({"Delta_rho": x, "Delta_Q": 2 * x}, {"Delta_rho": x,
                                                                       "Delta_Q": 2 * x},
                                  0.64, structure_factors={"truth": factors,
                                                           "prediction": factors}, draws=5)
    for name in ("Delta_rho", "Delta_Q"):
        assert out["distribution"][name]["wasserstein_1"] == 0.0
        assert out["spectrum"][name]["relative_error"] == 0.0
        # Never above the threshold: every valid time is censored at the last step.
        assert out["valid_time"][name]["median"] == pytest.approx(256 * 0.64)
        assert out["valid_time"][name]["n_censored"] == len(x)
    assert out["spectrum"]["structure_factor"]["relative_error"] == 0.0
    np.testing.assert_allclose(out["spectrum"]["structure_factor"]["k"], k)
    assert out["valid_time"]["median"] == pytest.approx(256 * 0.64)


def test_wasserstein_of_a_shift_is_the_shift():
    x = noisy_series()
    for c in (0.37, -1.5):
        assert climate.wasserstein_1(x, x + c) == pytest.approx(abs(c), rel=1e-12)
    # Ensembles of different sizes: a subset shifted is the subset's distance plus nothing.
    assert climate.wasserstein_1(x[:5], x[:5] - 0.2) == pytest.approx(0.2, rel=1e-12)


def test_wasserstein_is_the_integral_between_quantile_functions():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(7, 13)), rng.gamma(2.0, size=(5, 11))
    # W1 = int_0^1 |F_a^-1(u) - F_b^-1(u)| du: both quantile functions are steps, constant
    # between the breakpoints i / 91 and j / 55.
    u = np.union1d(np.arange(92) / 91, np.arange(56) / 55)
    middle = 0.5 * (u[1:] + u[:-1])
    quantile_a = np.sort(a.ravel())[np.floor(middle * a.size).astype(int)]
    quantile_b = np.sort(b.ravel())[np.floor(middle * b.size).astype(int)]
    expected = np.sum(np.abs(quantile_a - quantile_b) * np.diff(u))
    assert climate.wasserstein_1(a, b) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        climate.wasserstein_1(a, np.full((2, 3), np.nan))


def test_histograms_share_bins_and_are_densities():
    x = noisy_series()
    h = climate.pooled_histograms(x, x + 1.0, bins=20)
    assert h["edges"][0] == pytest.approx(x.min()) and h["edges"][-1] == pytest.approx(
        x.max() + 1.0)
    width = np.diff(h["edges"])
    assert np.sum(h["truth"] * width) == pytest.approx(1.0)
    assert np.sum(h["prediction"] * width) == pytest.approx(1.0)


def test_a_scaled_series_has_a_scaled_spectrum():
    x = noisy_series()
    frequency, truth = climate.power_spectrum(x, 0.64)
    for a in (0.5, 1.3):
        _, scaled = climate.power_spectrum(a * x, 0.64)
        assert climate.spectrum_relative_error(truth, scaled) == pytest.approx(abs(a * a - 1),
                                                                               rel=1e-10)
    assert frequency[-1] == pytest.approx(0.5 / 0.64)  # Nyquist, cycles per hbar/t
    with pytest.raises(ValueError, match="different grids"):
        climate.spectrum_relative_error(truth, truth[:-1])


def test_a_sinusoid_peaks_at_its_frequency_with_its_variance():
    time_step, length, amplitude = 2.56, 400, 0.3
    frequency0 = 37 / (length * time_step)  # on the grid
    t = np.arange(length) * time_step
    x = amplitude * np.sin(2 * np.pi * frequency0 * t + np.array([[0.0], [1.0], [2.5]]))
    frequency, spectrum = climate.power_spectrum(x, time_step)
    assert frequency[np.argmax(spectrum)] == pytest.approx(frequency0)
    # Parseval: the spectrum integrates to the (window-weighted) variance, A^2 / 2.
    total = np.sum(spectrum) * (frequency[1] - frequency[0])
    assert total == pytest.approx(amplitude ** 2 / 2, rel=0.02)


def test_welch_segments_average_white_noise_to_its_level():
    sigma, time_step = 0.3, 0.64
    x = sigma * np.random.default_rng(2).normal(size=(4, 4096))
    level = 2 * sigma ** 2 * time_step  # one-sided density of white noise
    whole = climate.power_spectrum(x, time_step)[1][1:-1]
    frequency, welch = climate.power_spectrum(x, time_step, segment=256)
    assert frequency.shape == (129,) and frequency[1] == pytest.approx(1 / (256 * time_step))
    assert np.mean(welch[1:-1]) == pytest.approx(level, rel=0.03)
    # A periodogram bin scatters by 100% (chi-square, 2 degrees of freedom); averaging four
    # series leaves 50%, and 31 half-overlapping segments each cut it about 5-fold more.
    assert np.std(whole) / np.mean(whole) > 0.4
    assert np.std(welch[1:-1]) / level < 0.15
    with pytest.raises(ValueError, match="segment must lie in 3..4096"):
        climate.periodograms(x, time_step, segment=5000)


def test_structure_factor_of_a_cdw_sits_at_pi():
    L, amplitude = 8, 0.2
    Q = amplitude * np.tile(physics.stagger(L).numpy(), (3, 5, 1))
    k, factor = climate.structure_factor(Q)
    factor = factor.mean(axis=(0, 1))  # over trajectories and time
    assert k[-1] == pytest.approx(np.pi)
    # |sum_j A (-1)^(j+1) e^{-i pi j}|^2 / L = L A^2; every other k vanishes.
    np.testing.assert_allclose(factor, [0, 0, 0, 0, L * amplitude ** 2], atol=1e-12)


def test_s_of_k_near_pi_scaled_keeps_its_autocorrelation():
    """A(tau) does not see a scale: S(k, t) near pi predicted a times too large scores
    max |A_pred - A_true| = 0 and a mean relative error of a - 1, each floor positive;
    nothing kept, nothing predicted; the lags stop at the series' length."""
    x = noisy_series(n=6, length=64) + 5.0
    truth = {"S_pi": x, "S_pi_minus_dk": 2.0 * x}
    a = 1.3
    out = near_pi.near_pi_climate(truth, {name: a * v for name, v in truth.items()}, 8,
                                  max_lag=10, draws=5)
    assert out["max_lag"] == 10
    for name, k in (("S_pi", np.pi), ("S_pi_minus_dk", 0.75 * np.pi)):
        entry = out[name]
        assert entry["k"] == pytest.approx(k)
        assert entry["prediction"] == pytest.approx(a * entry["truth"])
        assert entry["relative_error"] == pytest.approx(a - 1)
        assert entry["autocorrelation"]["max_abs_diff"] == pytest.approx(0.0, abs=1e-12)
        assert len(entry["autocorrelation"]["truth"]) == 11
        assert entry["sampling_floor"] > 0 and entry["autocorrelation"]["sampling_floor"] > 0
    none = near_pi.near_pi_climate(truth, truth, 8, kept=np.zeros(6, bool), draws=5)
    assert none["max_lag"] == 63
    assert none["S_pi"]["prediction"] is None and none["S_pi"]["relative_error"] is None
    assert none["S_pi"]["autocorrelation"]["max_abs_diff"] is None
    with pytest.raises(ValueError, match="even chain"):
        near_pi.series(np.ones((2, 5)), 9)


def test_sampling_floor_vanishes_for_identical_trajectories_only():
    x = noisy_series()
    same = np.tile(x[:1], (len(x), 1))
    assert climate.bootstrap_floor(same, climate.wasserstein_1, draws=10) == 0.0
    floor = climate.bootstrap_floor(x, climate.wasserstein_1, draws=30)
    # Two resamples differ by a fraction of the spread between trajectories (std ~1 here).
    assert 0.01 < floor < 1.0


def upper_triangular_flow(rates, coupling, time_step):
    """Advance for x' = A x, A = [[l1, c], [0, l2]] on state {'Q': [B, 2], 'P': [B, 1]}
    (P constant), with the exact propagator exp(A time_step) per step."""
    l1, l2 = rates
    e1, e2 = np.exp(l1 * time_step), np.exp(l2 * time_step)
    step = np.array([[e1, coupling * (e1 - e2) / (l1 - l2)], [0.0, e2]])

    def advance(state, n):
        return {"Q": state["Q"] @ np.linalg.matrix_power(step, n).T, "P": state["P"]}

    return advance


@pytest.mark.parametrize("rates", [(0.3, -2.0), (-0.2, -2.5)])
def test_lyapunov_of_linear_flow_is_its_largest_rate(rates):
    rng = np.random.default_rng(0)
    state = {"Q": rng.normal(size=(3, 2)), "P": rng.normal(size=(3, 1))}
    out = climate.largest_lyapunov(upper_triangular_flow(rates, 2.0, 0.5), state,
                                   time_step=0.5, n_intervals=20, steps_per_interval=2,
                                   transient_intervals=10, separation=1e-6, perturbed=("Q",))
    # After the transient (10 time units) the separation lies along the unstable eigenvector
    # up to e^{-(l1 - l2) 10} < 1e-9.
    np.testing.assert_allclose(out["per_trajectory"], rates[0], rtol=1e-6)
    assert out["time"][-1] == pytest.approx(20.0)
    np.testing.assert_allclose(out["log_separation"][:, -1], rates[0] * 20.0, rtol=1e-6)


def test_a_neutral_direction_hides_a_negative_exponent():
    # P, constant, has exponent 0: perturbed too, it dominates once the twins align
    # (to e^{-0.2 * 100} after a transient of 100 time units).
    state = {"Q": np.ones((2, 2)), "P": np.ones((2, 1))}
    out = climate.largest_lyapunov(upper_triangular_flow((-0.2, -2.5), 2.0, 0.5), state,
                                   time_step=0.5, n_intervals=20, transient_intervals=200)
    np.testing.assert_allclose(out["per_trajectory"], 0.0, atol=1e-8)


def test_lyapunov_of_the_uncoupled_simulator_vanishes():
    # At g = 0 the lattice oscillates harmonically and the electrons hop freely: the flow is
    # linear and norm-preserving, so twins keep their distance.
    L = 8
    rng = np.random.default_rng(0)
    rho, Q, P = physics.initial_state(L, 0.0, 0.05 * rng.normal(size=(2, L)),
                                      0.05 * rng.normal(size=(2, L)))
    state = {"rho": rho.numpy(), "Q": Q.numpy(), "P": P.numpy()}
    advance = climate.simulator_advance(0.0, 0.01, 16)
    exact = climate.largest_lyapunov(advance, state, time_step=0.16, n_intervals=6)
    # Rounding of the 1e-8 separation: 1e-16 / 1e-8 per interval of 0.16.
    assert np.max(np.abs(exact["per_trajectory"])) < 1e-6

    def float32_rollout(state, n_steps):  # the same flow behind a model's interface
        states = [state]
        for _ in range(n_steps):
            states.append({k: v.astype(np.complex64 if k == "rho" else np.float32)
                           for k, v in advance(states[-1], 1).items()})
        return {k: np.stack([s[k] for s in states[1:]], axis=1) for k in state}

    model = climate.largest_lyapunov(climate.rollout_advance(float32_rollout), state,
                                     time_step=0.16, n_intervals=6, steps_per_interval=2,
                                     separation=climate.MODEL_SEPARATION)
    # Float32 rounding (6e-8 relative) of a 1e-4 separation: ~1e-3 per interval of 0.32.
    assert np.max(np.abs(model["per_trajectory"])) < 1e-2
    with pytest.raises(ValueError, match="coincide"):
        climate.largest_lyapunov(climate.rollout_advance(float32_rollout), state,
                                 time_step=0.16, n_intervals=1, separation=1e-12)


def test_valid_time_is_when_the_forecast_departs():
    truth = noisy_series(n=6, length=50)
    spread = truth.std()
    prediction = truth.copy()
    departs = np.array([3, 10, 10, 20, 50, 50])  # column where the error jumps; 50: never
    for row, column in enumerate(departs):
        prediction[row, column:] += 0.6 * spread
        prediction[row, :column] += 0.4 * spread  # below the threshold 0.5
    prediction[5, 40:] = np.nan  # diverged: invalid from there
    out = climate.valid_time(truth, prediction, time_step=2.0, first_step=1)
    expected = (np.array([3, 10, 10, 20, 49, 40]) + 1) * 2.0  # row 4: censored at the end
    np.testing.assert_allclose(out["per_trajectory"], expected)
    assert out["median"] == pytest.approx(np.median(expected))
    assert out["n_censored"] == 1
    assert out["bands"].shape == (3, 50)
    # Channels count together: the RMS of their normalised errors.
    both = climate.normalised_error(np.stack([truth, truth], -1),
                                    np.stack([truth, truth + 2 * spread], -1))
    np.testing.assert_allclose(both, np.sqrt(2.0), rtol=1e-12)


def test_reference_valid_time_is_where_the_ensemble_fans_out():
    # Six trajectories share a sinusoid, then from column 20 on sit at +-3 alternately: each
    # forecasts its neighbour within the threshold until then, and misses by 6 (about 2.6
    # of the truth's spread) after.
    t = np.arange(50)
    truth = np.tile(np.sin(0.3 * t), (6, 1))
    truth[:, 20:] += 3.0 * np.array([1, -1, 1, -1, 1, -1])[:, None]
    out = climate.climate_metrics({"Delta_Q": truth}, {"Delta_Q": truth}, 2.0, draws=3)
    assert out["valid_time"]["reference_median"] == pytest.approx((20 + 1) * 2.0)


def test_climate_figures_are_written(tmp_path):
    x = noisy_series(n=4, length=64)
    prediction = x + 0.1
    out = climate.climate_metrics({"Delta_rho": x, "Delta_Q": x}, {"Delta_rho": prediction,
                                                                   "Delta_Q": prediction},
                                  2.56, structure_factors={"truth": np.ones((4, 5)),
                                                           "prediction": np.ones((4, 5))},
                                  draws=3,
                                  kept=np.array([True, True, True, False]))
    assert out["distribution"]["Delta_Q"]["wasserstein_1"] > 0
    lyapunov = climate.largest_lyapunov(upper_triangular_flow((0.1, -0.1), 0.0, 1.0),
                                        {"Q": np.ones((2, 2)), "P": np.ones((2, 1))},
                                        time_step=1.0, n_intervals=5)
    figures = climate_plots.climate_figures(out, {"truth": lyapunov, "prediction": lyapunov})
    assert list(figures) == list(climate_plots.FIGURES)
    for name, fig in figures.items():
        plots.save_figure(fig, tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_lyapunov_script_runs_at_a_tiny_size(tmp_path):
    main = runpy.run_path(str(ROOT / "scripts" / "lyapunov.py"))["main"]
    out = main(["--config", "smoke_deep", "--seeds", "1,2", "--n", "2", "--time", "5.12",
                "--transient", "2.56", "--out", str(tmp_path / "lyapunov.json")])
    for result in out["ensembles"].values():
        assert result["n_finite"] == 2 and result["time"][-1] == pytest.approx(5.12)
    assert out["relative_difference"] >= 0
    assert (tmp_path / "lyapunov.json").exists()
