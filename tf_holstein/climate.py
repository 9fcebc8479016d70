"""The climate of a chaotic quench beyond A(tau): distributions, spectra, Lyapunov exponent,
valid time.

Each compares a truth ensemble with a prediction ensemble (issue 17):
- `wasserstein_1`: the 1-Wasserstein distance between the values of an order parameter pooled
  over time and ensemble, with `pooled_histograms` for a figure;
- `power_spectrum` in time of an order parameter and `structure_factor` S(k) of Q, compared by
  `spectrum_relative_error`;
- `largest_lyapunov`: the largest Lyapunov exponent from twin trajectories renormalised along
  the way (Benettin), for the exact simulator (`simulator_advance`) or a model's rollouts
  (`rollout_advance`);
- `valid_time`: how long a rollout stays within a fraction of the truth's spread.
Each distance has a sampling floor (`bootstrap_floor`): what two ensembles of the same size
drawn from the truth differ by, the least any prediction can be expected to score.
`climate_metrics` computes all but the Lyapunov exponent, in the layout of `metrics.json`.
Times are in units of hbar/t, frequencies in cycles per hbar/t.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tf_holstein import metrics

VALID_TIME_THRESHOLD = 0.5  # normalised error at which a forecast stops being valid
FLOOR_DRAWS = 200  # bootstrap pairs per sampling floor
HISTOGRAM_BINS = 60
# Steps per Welch segment of the time spectra. On 16 deep-quench trajectories at L = 32
# (1000 steps of 2.56) the spectrum's sampling floor is 0.25 from whole series, 0.10 from
# segments of 256 steps, 0.07 from 128; 256 still resolves the main peak near 0.003 per
# hbar/t (grid 0.0015).
SPECTRUM_SEGMENT = 256
MIN_SEGMENT = 3  # the Hann window of 2 points is zero
# Initial twin separation relative to the state's norm. In float64 (the exact simulator)
# rounding is 1e-16 relative, 8 orders below. A float32 model rounds every state it reads
# and writes by ~6e-8 relative: the twins' separation must stay far above that noise, so
# that it, not rounding, is what grows; 1e-4 leaves 3 orders.
EXACT_SEPARATION = 1e-8
MODEL_SEPARATION = 1e-4
# Time (hbar/t) the twins get to turn their separation into the most unstable direction
# before their growth is counted; that of scripts/lyapunov.py.
LYAPUNOV_TRANSIENT = 50.0

State = dict[str, np.ndarray]
# advance(states, n): the states n saved steps later; {key: [B, ...]} in and out.
Advance = Callable[[Mapping[str, np.ndarray], int], State]


# -- sampling floors --------------------------------------------------------------------------
def bootstrap_floor(per_trajectory: np.ndarray,
                    distance: Callable[[np.ndarray, np.ndarray], float],
                    draws: int = FLOOR_DRAWS, seed: int = 0) -> float:
    """The median over `draws` pairs of bootstrap ensembles of distance(x[a], x[b]).

    per_trajectory: [n, ...], one entry per truth trajectory (a series, or a statistic of it
    that the distance averages); a and b each pick n trajectories with replacement. Two
    independent ensembles of n trajectories from the same climate differ by about this much,
    as `metrics.autocorrelation_sampling_floor` argues for A(tau).
    """
    x = np.asarray(per_trajectory)
    picks = np.random.default_rng(seed).integers(0, len(x), size=(draws, 2, len(x)))
    return float(np.median([distance(x[a], x[b]) for a, b in picks]))


# -- distributions ----------------------------------------------------------------------------
def wasserstein_1(truth: np.ndarray, prediction: np.ndarray) -> float:
    """W1 = integral |F_truth(x) - F_prediction(x)| dx of the empirical distributions of all
    values (pooled over trajectories and time). truth [n, T], prediction [m, T'] (any shapes:
    every value counts once), in the values' units. Shifting every value by c gives |c|.
    """
    a = np.sort(_finite(truth, "truth").ravel())
    b = np.sort(_finite(prediction, "prediction").ravel())
    if not a.size or not b.size:
        raise ValueError("wasserstein_1 needs at least one value on each side")
    z = np.sort(np.concatenate([a, b]))  # the CDFs are constant between consecutive values
    cdf_a = np.searchsorted(a, z[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, z[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(z)))


def pooled_histograms(truth: np.ndarray, prediction: np.ndarray | None,
                      bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Densities of the pooled values on common bins spanning both: `edges` [bins + 1],
    `truth`, `prediction` [bins] (None if no prediction). Shapes as `wasserstein_1`."""
    values = [np.ravel(truth)] + ([] if prediction is None else [np.ravel(prediction)])
    both = np.concatenate(values)
    edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=bins)
    density = [np.histogram(v, bins=edges, density=True)[0] for v in values]
    return {"edges": edges, "truth": density[0],
            "prediction": density[1] if prediction is not None else None}


# -- spectra ----------------------------------------------------------------------------------
def periodograms(x: np.ndarray, time_step: float, segment: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each series' one-sided power spectral density, Hann-windowed, mean removed (Welch).

    x: float [n, T] sampled every time_step (hbar/t). Each series is cut into pieces of
    `segment` steps (default T: the whole series) overlapping by half; the periodogram of a
    piece y of length M is S_k = c_k time_step |sum_t w_t (y_t - <y>) e^{-2 pi i k t / M}|^2
    / sum_t w_t^2, c_k = 2 except at k = 0 and the Nyquist frequency (1), and a series'
    spectrum is the mean over its pieces: about T / segment times less variance per
    frequency, on a grid 1 / (segment time_step) coarser. Returns the frequencies
    f_k = k / (M time_step), k = 0..M//2, in cycles per hbar/t [M//2 + 1], and the spectra
    [n, M//2 + 1] in x's units squared times hbar/t. White noise of variance s^2 has
    S_k = 2 s^2 time_step; the integral sum_k S_k / (M time_step) is the window-weighted
    variance of the series.
    """
    x = np.asarray(x, np.float64)
    length = x.shape[-1] if segment is None else int(segment)
    if not MIN_SEGMENT <= length <= x.shape[-1]:
        raise ValueError(f"segment must lie in {MIN_SEGMENT}..{x.shape[-1]} (the series' "
                         f"length), got {segment}")
    pieces = np.stack([x[..., s:s + length]
                       for s in range(0, x.shape[-1] - length + 1, length // 2)], axis=-2)
    window = np.hanning(length)
    transform = np.fft.rfft(window * (pieces - pieces.mean(axis=-1, keepdims=True)), axis=-1)
    spectra = np.abs(transform) ** 2 * time_step / np.sum(window ** 2)
    spectra[..., 1:(length + 1) // 2] *= 2.0  # the negative frequencies' share
    return np.fft.rfftfreq(length, time_step), spectra.mean(axis=-2)


def power_spectrum(x: np.ndarray, time_step: float, segment: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble-averaged time power spectrum of an order parameter x float [n, T]:
    frequencies (cycles per hbar/t) and the mean of `periodograms` [segment//2 + 1]."""
    frequency, spectra = periodograms(x, time_step, segment)
    return frequency, spectra.mean(axis=0)


def structure_factor(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The static structure factor of each state's displacements Q float [..., L]: wave
    numbers k = 2 pi m / L, m = 0..L/2 [L/2 + 1], and S(k) = |sum_j Q_j e^{-i k j}|^2 / L
    [..., L/2 + 1] (S(-k) = S(k) for real Q; the CDW is the peak at k = pi). Averaged over a
    trajectory's steps it is per state so that a streamed rollout can accumulate it."""
    Q = np.asarray(Q, np.float64)
    L = Q.shape[-1]
    return _wave_numbers(L), np.abs(np.fft.rfft(Q, axis=-1)) ** 2 / L


def _wave_numbers(L: int) -> np.ndarray:
    return 2 * np.pi * np.arange(L // 2 + 1) / L


def spectrum_relative_error(truth: np.ndarray, prediction: np.ndarray) -> float:
    """||S_prediction - S_truth||_1 / ||S_truth||_1 of two spectra on the same grid [F]
    (`power_spectrum` of equally long series with the same time step, or `structure_factor`
    at the same L). Scaling a series by a scales its spectrum by a^2: the error is |a^2 - 1|.
    """
    truth, prediction = np.asarray(truth, np.float64), np.asarray(prediction, np.float64)
    if truth.shape != prediction.shape:
        raise ValueError(f"spectra on different grids ({truth.shape} and {prediction.shape}): "
                         f"compare series of equal length and time step")
    return float(np.sum(np.abs(prediction - truth)) / np.sum(np.abs(truth)))


def _mean_spectrum_error(a: np.ndarray, b: np.ndarray) -> float:
    return spectrum_relative_error(a.mean(axis=0), b.mean(axis=0))


# -- short-term skill -------------------------------------------------------------------------
def normalised_error(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """|prediction - truth| / std(truth), float [n, T] from paired series [n, T] or [n, T, C].

    The std is the truth's over ensemble and time (the climate's spread), per channel; with C
    channels the error is the RMS over them of the normalised errors. Non-finite predictions
    give inf.
    """
    truth, prediction = np.asarray(truth, np.float64), np.asarray(prediction, np.float64)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} must pair "
                         f"trajectory by trajectory and step by step")
    if truth.ndim == 2:
        truth, prediction = truth[..., None], prediction[..., None]
    spread = truth.reshape(-1, truth.shape[-1]).std(axis=0)
    if not np.all(spread > 0):
        raise ValueError("the truth does not vary: its errors cannot be normalised by its "
                         "spread")
    with np.errstate(over="ignore", invalid="ignore"):
        error = np.sqrt(np.mean(((prediction - truth) / spread) ** 2, axis=-1))
    return np.where(np.isfinite(error), error, np.inf)


def valid_time(truth: np.ndarray, prediction: np.ndarray, time_step: float,
               threshold: float = VALID_TIME_THRESHOLD, first_step: int = 1,
               kept: np.ndarray | None = None,
               percentiles: Sequence[float] = metrics.PERCENTILES) -> dict[str, Any]:
    """How long each rollout stays within `threshold` of the truth's spread.

    truth, prediction: paired series [n, T] or [n, T, C] (`normalised_error`), column j at
    time (first_step + j) time_step (hbar/t): the default fits rollouts scored from step 1.
    A trajectory's valid time is the first time its normalised error exceeds the threshold;
    one that never does is censored at the last time (counted in `n_censored`). Returns
    `per_trajectory` [n] and their `median` (hbar/t), and for a figure `time` [T] and the
    error's ensemble `bands` [len(percentiles), T] over the `kept` trajectories (bool [n],
    default all: the non-diverged ones, whose errors are finite).
    """
    error = normalised_error(truth, prediction)
    n, length = error.shape
    time = (first_step + np.arange(length)) * time_step
    exceeded = error > threshold
    valid = np.where(exceeded.any(axis=1), time[exceeded.argmax(axis=1)], time[-1])
    kept = np.ones(n, bool) if kept is None else np.asarray(kept, bool)
    return {"threshold": threshold, "median": float(np.median(valid)), "per_trajectory": valid,
            "n_censored": int((~exceeded.any(axis=1)).sum()), "time": time,
            "percentiles": list(percentiles),
            "bands": metrics.ensemble_bands(error[kept], percentiles) if kept.any() else None}


# -- the largest Lyapunov exponent ------------------------------------------------------------
def simulator_advance(g: float, dt: float, save_interval: int) -> Advance:
    """The exact RK4 simulator (float64) as an Advance: states {'rho' complex [B, L, L], 'Q',
    'P' float [B, L]} -> the states n saved steps (n * save_interval RK4 steps of dt) later,
    rho complex128, Q, P float64."""
    from tf_holstein import simulate  # the simulator only where it is used

    def advance(state: Mapping[str, np.ndarray], n_steps: int) -> State:
        band = simulate.integrate(simulate.pack(state["rho"], state["Q"], state["P"]),
                                  n_steps * save_interval, g, dt)
        return {key: value.numpy() for key, value in zip(("rho", "Q", "P"),
                                                          simulate.unpack(band))}

    return advance


def rollout_advance(rollout: Callable[[Mapping[str, np.ndarray], int], State]) -> Advance:
    """A model's rollout (`rollout.LoadedModel.rollout`: states after steps 1..n [B, n, ...])
    as an Advance (its last state). The model reads complex64 / float32."""
    def advance(state: Mapping[str, np.ndarray], n_steps: int) -> State:
        out = rollout({"rho": np.asarray(state["rho"], np.complex64),
                       "Q": np.asarray(state["Q"], np.float32),
                       "P": np.asarray(state["P"], np.float32)}, n_steps)
        return {key: value[:, -1] for key, value in out.items()}

    return advance


def state_norm(state: Mapping[str, np.ndarray]) -> np.ndarray:
    """sqrt(sum over every array of the sum of |x|^2 over its non-batch axes): [B]. For
    (rho, Q, P) the Frobenius norm of rho joined with the Euclidean norms of Q and P."""
    return np.sqrt(sum(np.sum(np.abs(np.reshape(x, (len(x), -1))) ** 2, axis=1)
                       for x in state.values()))


def largest_lyapunov(advance: Advance, state: Mapping[str, np.ndarray], *, time_step: float,
                     n_intervals: int, steps_per_interval: int = 1,
                     transient_intervals: int = 0, separation: float = EXACT_SEPARATION,
                     perturbed: Sequence[str] = ("Q", "P"), seed: int = 0) -> dict[str, Any]:
    """The largest Lyapunov exponent per unit time from twin trajectories (Benettin et al.).

    state: {key: [B, ...]}, B trajectories (e.g. rho complex [B, L, L], Q, P float [B, L]);
    advance moves every state `steps_per_interval` saved steps of `time_step` (hbar/t) ahead.
    Each trajectory gets a twin displaced by `separation` times its `state_norm` along a random
    direction in the `perturbed` arrays (Q and P: the displaced state is still a valid one).
    After every interval the twins' distance d is logged and the twin is pulled back to the
    initial distance d0 along the current separation, which thereby turns towards the most
    unstable direction; the first `transient_intervals` allow for that and are not counted.
    Returns the exponent 1 / (hbar/t): `mean`, `std` and `standard_error` over trajectories
    and `per_trajectory` [B], sum log(d / d0) / counted time; and for a figure `time` [N] and
    `log_separation` [B, N], the accumulated log(d / d0) at the end of each counted interval.
    """
    if n_intervals < 1 or steps_per_interval < 1 or transient_intervals < 0:
        raise ValueError(f"need n_intervals >= 1, steps_per_interval >= 1 and "
                         f"transient_intervals >= 0, got {n_intervals}, {steps_per_interval}, "
                         f"{transient_intervals}")
    missing = [key for key in perturbed if key not in state]
    if missing or not perturbed:
        raise ValueError(f"perturbed names {list(perturbed)}; the state holds {list(state)}")
    x = {key: np.asarray(value, np.complex128 if np.iscomplexobj(value) else np.float64)
         for key, value in state.items()}
    size = len(next(iter(x.values())))
    rng = np.random.default_rng(seed)
    direction = {key: rng.normal(size=value.shape) if key in perturbed else np.zeros_like(value)
                 for key, value in x.items()}
    d0 = separation * state_norm(x)
    y = _displaced(x, direction, d0 / state_norm(direction))
    log_growth = np.zeros((size, n_intervals))
    for interval in range(transient_intervals + n_intervals):
        both = advance({key: np.concatenate([x[key], y[key]]) for key in x}, steps_per_interval)
        x = {key: np.asarray(value[:size], x[key].dtype) for key, value in both.items()}
        difference = {key: np.asarray(value[size:], x[key].dtype) - x[key]
                      for key, value in both.items()}
        distance = state_norm(difference)
        if np.any(distance == 0):
            raise ValueError(f"twin trajectories coincide after interval {interval + 1}: the "
                             f"separation {separation:g} is below what the dynamics resolves; "
                             f"choose a larger one")
        if interval >= transient_intervals:
            log_growth[:, interval - transient_intervals] = np.log(distance / d0)
        y = _displaced(x, difference, d0 / distance)
    counted = n_intervals * steps_per_interval * time_step
    exponents = log_growth.sum(axis=1) / counted
    finite = exponents[np.isfinite(exponents)]
    return {"mean": float(np.mean(finite)) if finite.size else None,
            "std": float(np.std(finite)) if finite.size else None,
            "standard_error": float(np.std(finite) / np.sqrt(finite.size))
            if finite.size else None,
            "n_trajectories": size, "n_finite": int(finite.size),
            "per_trajectory": exponents, "separation": separation,
            "interval": steps_per_interval * time_step,
            "transient": transient_intervals * steps_per_interval * time_step,
            "time": np.arange(1, n_intervals + 1) * steps_per_interval * time_step,
            "log_separation": np.cumsum(log_growth, axis=1)}


def _displaced(x: Mapping[str, np.ndarray], direction: Mapping[str, np.ndarray],
               scale: np.ndarray) -> State:
    """x + scale * direction, scale [B] broadcast over each array's other axes."""
    return {key: value + scale.reshape(-1, *[1] * (value.ndim - 1)) * direction[key]
            for key, value in x.items()}


# -- everything at once -----------------------------------------------------------------------
def climate_metrics(truth: Mapping[str, np.ndarray], prediction: Mapping[str, np.ndarray],
                    time_step: float, *, kept: np.ndarray | None = None,
                    structure_factors: Mapping[str, np.ndarray] | None = None,
                    threshold: float = VALID_TIME_THRESHOLD, first_step: int = 1,
                    segment: int = SPECTRUM_SEGMENT, draws: int = FLOOR_DRAWS, seed: int = 0
                    ) -> dict[str, Any]:
    """The climate statistics of paired order-parameter series, as metrics.json holds them.

    truth, prediction: {name: float [n, T]} (e.g. Delta_rho, Delta_Q of steps first_step..);
    kept: bool [n], the non-diverged trajectories (default all). Time spectra are Welch's
    over `segment` steps (`periodograms`). structure_factors: {'truth' | 'prediction':
    [n, L/2 + 1]}, each trajectory's `structure_factor` averaged over its steps, adds S(k).
    The distances compare every truth trajectory with the kept predictions and come with
    their sampling floors. The valid time counts every trajectory (a diverged one is invalid
    from its divergence at the latest): `median` of all names' errors together, and
    `reference_median`, that of each truth trajectory forecast by the next one (no skill
    beyond the ensemble's shared start: a model should beat it). Returns {'distribution':
    {name: {wasserstein_1, sampling_floor, histogram}}, 'spectrum': {name: {relative_error,
    sampling_floor, frequency, truth, prediction}, 'structure_factor': {..., k}},
    'valid_time': {median, reference_median, threshold, ..., name: {...}}}; entries of the
    prediction are None if nothing was kept.
    """
    names = list(truth)
    n = len(truth[names[0]])
    kept = np.ones(n, bool) if kept is None else np.asarray(kept, bool)
    out: dict[str, Any] = {"distribution": {}, "spectrum": {}}
    for name in names:
        x, y = np.asarray(truth[name], np.float64), np.asarray(prediction[name])[kept]
        some = bool(kept.any())
        out["distribution"][name] = {
            "wasserstein_1": wasserstein_1(x, y) if some else None,
            "sampling_floor": bootstrap_floor(x, wasserstein_1, draws, seed),
            "histogram": pooled_histograms(x, y if some else None)}
        pieces = min(segment, x.shape[1])
        frequency, spectra = periodograms(x, time_step, pieces)
        predicted = power_spectrum(y, time_step, pieces)[1] if some else None
        out["spectrum"][name] = spectrum_entry(spectra, predicted, draws, seed,
                                               frequency=frequency)
    if structure_factors is not None:
        factors = np.asarray(structure_factors["truth"], np.float64)
        k = _wave_numbers(2 * (factors.shape[-1] - 1))
        predicted = np.asarray(structure_factors["prediction"])[kept].mean(axis=0) \
            if kept.any() else None
        out["spectrum"]["structure_factor"] = spectrum_entry(factors, predicted, draws, seed,
                                                             k=k)
    stacked = [np.stack([np.asarray(s[name], np.float64) for name in names], axis=-1)
               for s in (truth, prediction)]
    combined = valid_time(*stacked, time_step, threshold, first_step, kept)
    # Another truth trajectory as the forecast: what the shared start alone gives.
    reference = valid_time(stacked[0], np.roll(stacked[0], 1, axis=0), time_step, threshold,
                           first_step)["median"] if n > 1 else None
    out["valid_time"] = {**combined, "reference_median": reference,
                         **{name: valid_time(truth[name], prediction[name], time_step,
                                             threshold, first_step, kept) for name in names}}
    return out


def spectrum_entry(per_trajectory: np.ndarray, predicted: np.ndarray | None, draws: int,
                   seed: int, **grid: Any) -> dict[str, Any]:
    """A spectrum as metrics.json holds it: the `grid` entries, the truth's ensemble mean of
    `per_trajectory` [n, ...], the prediction's mean `predicted` (None: nothing kept), their
    `spectrum_relative_error` and its `bootstrap_floor`."""
    truth = per_trajectory.mean(axis=0)
    return {**grid, "truth": truth, "prediction": predicted,
            "relative_error": spectrum_relative_error(truth, predicted)
            if predicted is not None else None,
            "sampling_floor": bootstrap_floor(per_trajectory, _mean_spectrum_error, draws, seed)}


def _finite(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values: leave diverged trajectories out")
    return x
