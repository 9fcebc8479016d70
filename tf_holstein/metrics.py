"""What a rollout is scored by, for evaluation and for training's model selection alike.

Statistics of order-parameter series (the autocorrelation A(tau) of docs/physics.md, its
sampling floor, ensemble bands), per-state scalars and invariant drifts, the divergence
rule, and `compute_metrics`, everything `metrics.json` reports about a rollout collected
by `tf_holstein.rollout` (a `Collected`, defined here so that rollout imports metrics and
not the other way round). `selection_scores` are the numbers that pick the best model in
training; `evaluate` reports the same numbers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_holstein import physics, records

MAX_LAG = 250  # docs/physics.md: tau = 0..250
PERCENTILES = (10.0, 50.0, 90.0)  # ensemble bands: low, median, high
DIVERGENCE_FACTOR = 10.0  # diverged: |value| > this times the training max-abs scale
ORDER_PARAMETERS = ("Delta_rho", "Delta_Q")


# -- statistics -----------------------------------------------------------------------------
def autocorrelation(x: np.ndarray | tf.Tensor, max_lag: int) -> np.ndarray:
    """A(tau) = (<X(t) X(t+tau)> - <X>^2) / (<X^2> - <X>^2) of docs/physics.md. [max_lag + 1]

    x: float [n_series, T], an ensemble of equally long series. Every average runs over
    the ensemble and over t: the lagged product over the T - tau overlapping pairs of each
    series, <X> and <X^2> over all n_series * T values (pooled, not per series). Computed
    in float64; A(0) = 1 up to rounding.
    """
    return weighted_autocorrelation(x, max_lag, np.ones((1, np.shape(x)[0])))[0]


def weighted_autocorrelation(x: np.ndarray | tf.Tensor, max_lag: int,
                             weights: np.ndarray) -> np.ndarray:
    """A(tau) of the ensembles that hold series s of x float [n_series, T] weights[e, s]
    times (a bootstrap resample, say): float [n_ensembles, max_lag + 1].

    Each series' sums are computed once and every ensemble pools them with its weights.
    `tfp.stats.auto_correlation` gives each series' lagged-product mean; it centres and
    normalises per series, which is not this definition, so it is fed the deviations y
    from x's overall mean m0 uncentred and unnormalised. With m the ensemble's mean of y,
    <X X'> - <X>^2 = <y y'> + m0 (<y>_head + <y>_tail) - m^2 - 2 m m0 and
    <X^2> - <X>^2 = <y^2> - m^2 restore the definition.
    """
    x = tf.convert_to_tensor(x, tf.float64)
    length = x.shape[1]
    max_lag = min(int(max_lag), length - 1)
    m0 = tf.reduce_mean(x)
    y = x - m0
    lags = tf.range(max_lag + 1)
    pairs_per_series = tf.cast(length - lags, tf.float64)
    # Fed as complex: for real input TFP casts its complex FFT result back with a warning.
    lagged = tf.math.real(tfp.stats.auto_correlation(
        tf.complex(y, tf.zeros_like(y)), axis=-1, max_lags=max_lag, center=False,
        normalize=False)) * pairs_per_series  # sum over t < T - tau of y(t) y(t + tau)
    prefix = tf.pad(tf.cumsum(y, axis=1), [[0, 0], [1, 0]])
    ends = (tf.gather(prefix, length - lags, axis=1)  # sum over t < T - tau
            + prefix[:, -1:] - tf.gather(prefix, lags, axis=1))  # + sum over t >= tau
    w = tf.convert_to_tensor(weights, tf.float64)
    count = tf.reduce_sum(w, axis=1, keepdims=True)
    mean = w @ prefix[:, -1:] / (count * length)
    second = w @ tf.reduce_sum(y * y, axis=1, keepdims=True) / (count * length)
    covariance = ((w @ lagged + m0 * (w @ ends)) / (count * pairs_per_series)
                  - mean * mean - 2.0 * mean * m0)
    return (covariance / (second - mean * mean)).numpy()


def autocorrelation_sampling_floor(x: np.ndarray | tf.Tensor, max_lag: int, draws: int = 200,
                                   seed: int = 0) -> float:
    """The climate test's noise floor: the median of max_tau |A - A'| over pairs of bootstrap
    ensembles, each len(x) series drawn with replacement from x float [n_series, T].

    Two independent ensembles of the same size from the same climate differ by about this
    much, so a prediction compared with a finite truth ensemble cannot be expected to beat it.
    """
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    picks = np.random.default_rng(seed).integers(0, n, size=(draws * 2, n))
    counts = np.zeros((draws * 2, n))
    np.add.at(counts, (np.arange(draws * 2)[:, None], picks), 1.0)
    a = weighted_autocorrelation(x, max_lag, counts).reshape(draws, 2, -1)
    return float(np.median(np.max(np.abs(a[:, 0] - a[:, 1]), axis=-1)))


def autocorrelation_entry(truth: np.ndarray, prediction: np.ndarray | None, max_lag: int,
                          draws: int = 200, seed: int = 0) -> dict[str, Any]:
    """A(tau) of a truth ensemble and of a prediction ensemble (None: nothing kept), both
    float [n_series, T], as metrics.json holds it: `truth`, `prediction` [max_lag + 1],
    `max_abs_diff` over tau (None without a prediction) and the truth's `sampling_floor`."""
    truth_a = autocorrelation(truth, max_lag)
    pred_a = None if prediction is None else autocorrelation(prediction, max_lag)
    return {"truth": truth_a, "prediction": pred_a,
            "max_abs_diff": None if pred_a is None else float(np.max(np.abs(pred_a - truth_a))),
            "sampling_floor": autocorrelation_sampling_floor(truth, max_lag, draws, seed)}


def ensemble_bands(x: np.ndarray | tf.Tensor, percentiles: Sequence[float] = PERCENTILES
                   ) -> np.ndarray:
    """Percentiles over the ensemble at every step, linearly interpolated as NumPy's
    default: x float [n_series, T] -> [len(percentiles), T]."""
    return tfp.stats.percentile(tf.convert_to_tensor(x, tf.float64), list(percentiles), axis=0,
                                interpolation="linear").numpy()


def state_statistics(rho: np.ndarray, Q: np.ndarray, P: np.ndarray, g: float
                     ) -> dict[str, np.ndarray]:
    """Per-state scalars of states rho complex [..., L, L], Q, P float [..., L]. Each [...].

    energy (docs/physics.md, at coupling g, float64), trace Tr rho, hermiticity
    max_ij |rho - rho^H|, purity Tr(rho rho^H) (conserved by the unitary electron
    dynamics) and the order parameters Delta_rho, Delta_Q (docs/physics.md).
    """
    rho64 = tf.constant(rho, tf.complex128)
    Q64, P64 = tf.constant(Q, tf.float64), tf.constant(P, tf.float64)
    delta_rho, delta_q = physics.order_parameters(rho64, Q64)
    return {
        "energy": physics.energy(rho64, Q64, P64, g).numpy(),
        "trace": tf.linalg.trace(rho64).numpy(),
        "hermiticity": tf.reduce_max(tf.abs(rho64 - tf.linalg.adjoint(rho64)),
                                     axis=[-2, -1]).numpy(),
        "purity": tf.reduce_sum(tf.math.real(rho64 * tf.math.conj(rho64)),
                                axis=[-2, -1]).numpy(),
        "Delta_rho": delta_rho.numpy(), "Delta_Q": delta_q.numpy()}


def out_of_range(state: Mapping[str, np.ndarray], limits: Mapping[str, float]) -> np.ndarray:
    """True where a state is non-finite or exceeds the limits: rho complex [..., L, L]
    (real and imaginary parts each), Q, P [..., L] -> bool [...]. Of order parameters alone
    (Delta_rho, Delta_Q [...], stored predictions without states) by the limits of rho and
    Q, which bound them: a mean of s_i x_i exceeds a limit only if some |x_i| does."""
    if "rho" not in state:
        return ~((np.abs(state["Delta_rho"]) <= limits["rho"])
                 & (np.abs(state["Delta_Q"]) <= limits["Q"]))
    rho = state["rho"]
    inside = (np.abs(rho.real) <= limits["rho"]) & (np.abs(rho.imag) <= limits["rho"])
    ok = inside.all(axis=(-2, -1))
    for key in ("Q", "P"):
        ok &= (np.abs(state[key]) <= limits[key]).all(axis=-1)  # NaN compares False
    return ~ok


def divergence_limits(scales: Mapping[str, float], factor: float = DIVERGENCE_FACTOR
                      ) -> dict[str, float]:
    """|rho|, |Q|, |P| beyond `factor` times the training max-abs scales count as diverged."""
    return {key: factor * float(scales[key]) for key in records.STATE_KEYS}


# -- metrics of a collected rollout ----------------------------------------------------------
@dataclasses.dataclass
class Collected:
    """What a streamed rollout keeps (`rollout.against_truth`), the input of
    `compute_metrics`: per-step scalars [N, steps] for steps 1..steps, the initial values
    [N], the first diverged step per trajectory, and snapshot states."""

    index: np.ndarray  # [N] trajectory numbers within the split
    initial: dict[str, np.ndarray]  # state_statistics of the initial states, each [N]
    truth: dict[str, np.ndarray]  # state_statistics of the stored states, each [N, steps]
    prediction: dict[str, np.ndarray]  # state_statistics of the predicted states
    mse: dict[str, np.ndarray]  # mean squared error over sites of rho, Q, P, each [N, steps]
    first_diverged: np.ndarray  # [N] first step out of range, 0 if never
    snapshots: dict[str, dict[str, np.ndarray]]  # {'truth'|'prediction': state [S, ...]}
    seconds: float  # wall time of the model's rollouts
    # {'truth'|'prediction': [N, L/2 + 1]}: each trajectory's structure factor S(k) of Q
    # (`climate.structure_factor`) averaged over steps 1..steps
    structure_factors: dict[str, np.ndarray] | None = None
    # {'truth'|'prediction': {name: [N, steps]}}: S(k, t) of Q at the wave numbers nearest
    # pi at steps 1..steps (`near_pi.series`)
    structure_series: dict[str, dict[str, np.ndarray]] | None = None


def invariant_drifts(collected: Collected, L: int) -> dict[str, dict[str, np.ndarray]]:
    """Drifts of the conserved quantities, `{'truth'|'prediction': {name: [N, steps]}}`.

    energy_rel_drift (E(t) - E(0)) / |E(0)|; trace_drift |Tr rho - L/2|; hermiticity_error
    max_ij |rho - rho^H|; purity_drift Tr(rho rho^H)(t) - Tr(rho rho^H)(0). E(0) and the
    initial purity are the stored initial state's, which the prediction starts from. A
    prediction of the order parameters alone has none.
    """
    energy0 = collected.initial["energy"][:, None]
    purity0 = collected.initial["purity"][:, None]
    out = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for source in ("truth", "prediction"):
            values = getattr(collected, source)
            if "energy" not in values:
                continue
            out[source] = {
                "energy_rel_drift": (values["energy"] - energy0) / np.abs(energy0),
                "trace_drift": np.abs(values["trace"] - L / 2),
                "hermiticity_error": values["hermiticity"],
                "purity_drift": values["purity"] - purity0}
    return out


def compute_metrics(collected: Collected, L: int, max_lag: int = MAX_LAG,
                    percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
    """Everything metrics.json reports (non-finite numbers as NaN; see `to_json`).

    Errors, statistics and invariants of the prediction use the non-diverged trajectories
    only, and are None if every trajectory diverged; ground-truth statistics use all. A
    prediction of the order parameters alone (no `mse`) has no state errors (`state_rmse`
    None) and no invariants.
    """
    kept = collected.first_diverged == 0
    n, steps = collected.truth["Delta_Q"].shape
    max_lag = min(max_lag, steps - 1)
    per_trajectory: dict[str, Any] = {"index": collected.index,
                                      "first_diverged_step": [int(s) or None for s in
                                                              collected.first_diverged]}
    per_step: dict[str, Any] = {"rmse": {key: _rms(collected.mse[key][kept], axis=0,
                                                   squared=True)
                                         for key in records.STATE_KEYS if collected.mse}}
    summary: dict[str, Any] = {
        "n_trajectories": n, "n_diverged": int((~kept).sum()), "n_kept": int(kept.sum()),
        "steps": steps,
        "state_rmse": {key: _rms(collected.mse[key][kept], squared=True)
                       for key in records.STATE_KEYS} if collected.mse else None}
    autocorrelations: dict[str, Any] = {"max_lag": max_lag}
    bands: dict[str, Any] = {"percentiles": list(percentiles)}
    for name in ORDER_PARAMETERS:
        truth, pred = collected.truth[name], collected.prediction[name]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            rmse = _rms(pred - truth, axis=1)
            std = truth.std(axis=1)
            ratio = rmse / std
        ratio_counting_diverged = np.where(kept, ratio, np.inf)
        per_trajectory.update({f"{name}_rmse": rmse, f"{name}_std": std,
                               f"{name}_rmse_over_std": ratio})
        per_step["rmse"][name] = _rms(pred[kept] - truth[kept], axis=0)
        autocorrelations[name] = autocorrelation_entry(truth, pred[kept] if kept.any() else None,
                                                       max_lag)
        bands[name] = {"truth": ensemble_bands(truth, percentiles),
                       "prediction": ensemble_bands(pred[kept], percentiles)
                       if kept.any() else None}
        summary[name] = {
            "median_rmse_over_std": _median(ratio[kept]),
            "median_rmse_over_std_counting_diverged": float(np.median(ratio_counting_diverged)),
            "mean_rmse_over_std": _mean(ratio[kept]),
            "median_rmse": _median(rmse[kept]),
            "rmse": _rms(pred[kept] - truth[kept]),
            "pooled_rmse_over_std": _rms(pred[kept] - truth[kept]) / float(truth[kept].std())
            if kept.any() else None,
            "autocorrelation_max_abs_diff": autocorrelations[name]["max_abs_diff"],
            "autocorrelation_sampling_floor": autocorrelations[name]["sampling_floor"]}
    physics_metrics: dict[str, Any] = {}
    drifts = invariant_drifts(collected, L)
    for source, rows in (("truth", slice(None)), ("prediction", kept)):
        if source not in drifts:
            continue
        physics_metrics[source] = {}
        for name, values in drifts[source].items():
            values = np.abs(values[rows])
            physics_metrics[source][name] = {
                "max_abs": float(values.max()) if values.size else None,
                "final_median_abs": _median(values[:, -1]),
                "per_step_median_abs": np.median(values, axis=0) if values.size else None,
                "per_step_max_abs": values.max(axis=0) if values.size else None}
    summary["physics"] = {source: {name: entry["max_abs"] for name, entry in values.items()}
                          for source, values in physics_metrics.items()}
    summary["selection"] = selection_scores(summary)
    return {"summary": summary, "per_step": per_step, "per_trajectory": per_trajectory,
            "autocorrelation": autocorrelations, "bands": bands, "physics": physics_metrics}


def _rms(x: np.ndarray, axis: int | None = None, squared: bool = False) -> Any:
    """Root mean square (of already squared values if `squared`); None for no values."""
    if x.size == 0:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.mean(x if squared else np.abs(x) ** 2, axis=axis)
    return np.sqrt(mean) if axis is not None else float(np.sqrt(mean))


def _median(x: np.ndarray) -> float | None:
    return float(np.median(x)) if x.size else None


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if x.size else None


def selection_scores(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers that select a model (lower is better) from a `compute_metrics` summary.

    rollout: the sum over both order parameters of the median RMSE / std, a diverged
    trajectory counting as infinite; autocorrelation: the largest autocorrelation mismatch
    of either order parameter (the climate of a chaotic quench), infinite if any trajectory
    diverged, which fails the climate test outright instead of leaving the ensemble.
    """
    rollout = sum(summary[name]["median_rmse_over_std_counting_diverged"]
                  for name in ORDER_PARAMETERS)
    climate = math.inf if summary["n_diverged"] else max(
        summary[name]["autocorrelation_max_abs_diff"] for name in ORDER_PARAMETERS)
    return {"rollout": float(rollout), "autocorrelation": float(climate)}
