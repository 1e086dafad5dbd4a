r"""Estimators for recorded trajectories: diffusion exponent, oscillation frequency, correlation.

NumPy in, NumPy out (float64). Time is measured in optimizer steps :math:`k` unless a function
says otherwise; continuous time is :math:`t = \eta k` (docs/theory.md section 2).

- :func:`fit_power_law` fits :math:`\|\Delta_k\|^2 \approx \alpha k^c` (eq. 13 and Fig. 7 of
  Kunin et al. 2023; :math:`c = 1` is Brownian motion, :math:`c > 1` superdiffusion) with a
  block-bootstrap confidence interval that accounts for autocorrelated residuals;
  :func:`exponent_vs_window` gives :math:`c` as a function of the fitted window (Fig. 7).
- :func:`dominant_frequency` measures the oscillation frequency of a projected phase-space
  trajectory, :func:`oscillation_frequency` is its theoretical counterpart
  :math:`\eta\sqrt{\omega^2 - \gamma^2}/(2\pi)` (appendix F.2; docs/theory.md section 4).
- :func:`autocorrelation` estimates the normalised autocorrelation of a recorded projection
  (the velocity correlation :math:`C(\eta k)` of docs/theory.md section 5) with standard errors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.signal

__all__ = [
    "PowerLawFit",
    "autocorrelation",
    "dominant_frequency",
    "exponent_vs_window",
    "fit_power_law",
    "oscillation_frequency",
]


class PowerLawFit(NamedTuple):
    r"""Result of :func:`fit_power_law`: :math:`\|\Delta_k\|^2 \approx \alpha k^c`.

    Attributes
    ----------
    exponent:
        the least-squares slope :math:`c` of :math:`\log v` against :math:`\log k`.
    prefactor:
        :math:`\alpha = e^{\text{intercept}}`.
    ci_low, ci_high:
        bounds of the block-bootstrap confidence interval for :math:`c`.
    standard_error:
        the standard deviation of the bootstrap slopes.
    window:
        the fraction of the step range that was fitted (the last ``window`` of it).
    """

    exponent: float
    prefactor: float
    ci_low: float
    ci_high: float
    standard_error: float
    window: float


def _as_series(value, name, ndim_max=1):
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real array, but got {type(value).__name__}") from error
    if array.ndim < 1 or array.ndim > ndim_max:
        raise ValueError(f"{name} must have {'1' if ndim_max == 1 else f'1 to {ndim_max}'} "
                         f"dimension(s), but got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, but it has non-finite entries")
    return array


def _check_fraction(value, name, *, open_upper=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number in (0, 1], but got "
                        f"{type(value).__name__}")
    value = float(value)
    if not (0.0 < value < 1.0 if open_upper else 0.0 < value <= 1.0):
        interval = "(0, 1)" if open_upper else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, but got {value}")
    return value


def _check_power_law_data(steps, values):
    steps = _as_series(steps, "steps")
    values = _as_series(values, "values")
    if steps.shape != values.shape:
        raise ValueError(f"steps and values must have the same shape, but got {steps.shape} "
                         f"and {values.shape}")
    if np.any(steps <= 0):
        raise ValueError(f"steps must be positive (a power law is fitted in log k), but the "
                         f"smallest is {steps.min()}")
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    if np.any(values <= 0):
        raise ValueError(f"values must be positive (a power law is fitted in log space), but "
                         f"the smallest is {values.min()}")
    return steps, values


def _window_mask(steps, window):
    """The last ``window`` fraction of the step range [steps[0], steps[-1]]."""
    start = steps[-1] - window * (steps[-1] - steps[0])
    return steps >= start


def _ols_slope(x, y):
    """Slope and intercept of y on x, y of shape (..., n)."""
    xc = x - x.mean()
    slope = (y - y.mean(axis=-1, keepdims=True)) @ xc / (xc @ xc)
    intercept = y.mean(axis=-1) - slope * x.mean()
    return slope, intercept


def _politis_white_block_size(residuals):
    r"""Automatic block length for the circular block bootstrap (Politis and White 2004,
    with the correction of Patton, Politis and White 2009).

    :math:`b = (2 G^2 / D_{CB})^{1/3} n^{1/3}` with :math:`G = \sum_k \lambda(k/M) |k| R(k)`,
    :math:`D_{CB} = \tfrac43 (\sum_k \lambda(k/M) R(k))^2`, :math:`\lambda` the flat-top kernel
    and :math:`M = 2 \hat m`, :math:`\hat m` the first lag after which :math:`K_n` consecutive
    autocorrelations are insignificant at :math:`2\sqrt{\log_{10} n / n}`.
    """
    n = residuals.size
    centred = residuals - residuals.mean()
    variance = centred @ centred / n
    if variance == 0.0:
        return 1
    # Politis and White search lags up to sqrt(n) + K_n; allow 3 sqrt(n) + 5 so that
    # persistent residuals still find their cut-off
    max_lag = min(n - 1, 3 * int(math.ceil(math.sqrt(n))) + 5)
    spectrum = np.fft.rfft(centred, 2 * n)
    autocovariance = np.fft.irfft(spectrum * spectrum.conj(), 2 * n)[: max_lag + 1] / n
    correlation = autocovariance / variance
    threshold = 2.0 * math.sqrt(math.log10(n) / n)
    run = max(5, int(math.ceil(math.sqrt(math.log10(n)))))
    m_hat = max_lag
    for m in range(1, max_lag - run + 1):
        if np.all(np.abs(correlation[m: m + run]) < threshold):
            m_hat = m - 1
            break
    M = min(max(2 * m_hat, 1), max_lag)
    lags = np.arange(-M, M + 1)
    t = np.abs(lags) / M
    kernel = np.where(t <= 0.5, 1.0, np.where(t <= 1.0, 2.0 * (1.0 - t), 0.0))
    R = autocovariance[np.abs(lags)]
    G = np.sum(kernel * np.abs(lags) * R)
    g0 = np.sum(kernel * R)
    if g0 <= 0.0 or G == 0.0:
        return 1
    b = (2.0 * G**2 / (4.0 / 3.0 * g0**2)) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    return int(min(max(1, math.ceil(b)), max(1, n // 3)))


def _prewhiten(residuals):
    r"""AR(1) prewhitening: :math:`r_t = \phi r_{t-1} + u_t`; returns :math:`\phi` and the
    centred innovations :math:`u_2..u_n`.

    :math:`\phi` is the least-squares estimate with Kendall's first-order bias correction
    :math:`+(1 + 3\phi)/n`, clipped to :math:`[-0.995, 0.995]` so the re-colouring filter is
    stable.
    """
    n = residuals.size
    previous, current = residuals[:-1], residuals[1:]
    denominator = previous @ previous
    phi = 0.0 if denominator == 0.0 else float(previous @ current / denominator)
    phi = min(max(phi + (1.0 + 3.0 * phi) / n, -0.995), 0.995)
    innovations = current - phi * previous
    return phi, innovations - innovations.mean()


def _recolour(shocks, phis):
    """r_t = phi r_{t-1} + u_t row by row (one coefficient per row), r_1 = u_1."""
    out = np.ascontiguousarray(shocks.T)  # time-major, so each update touches contiguous rows
    for t in range(1, out.shape[0]):
        out[t] += phis * out[t - 1]
    return out.T


def fit_power_law(steps, values, *, window=2 / 3, confidence=0.95, num_bootstrap=1000,
                  block_size=None, rng=None):
    r"""Fit :math:`v_k \approx \alpha k^c` on the last part of a curve, with a bootstrap CI for c.

    The fit is ordinary least squares of :math:`\log v_k` on :math:`\log k` over the recorded
    points whose step lies in the last ``window`` fraction of the step range,
    :math:`k \ge k_{\rm last} - w (k_{\rm last} - k_{\rm first})` (the paper fits the last 2/3
    of training, Fig. 7 and section 5). Points are weighted equally on the given grid (record
    on a log-spaced grid to weight decades equally).

    The residuals of such a curve are strongly autocorrelated (:math:`\|\Delta_k\|^2` is a
    running sum), so independent resampling would understate the uncertainty. The confidence
    interval is a percentile interval of the slope over ``num_bootstrap`` resamples of a
    prewhitened circular block bootstrap (Davison and Hinkley 1997, section 8.2): the
    residuals are modelled as :math:`r_t = \phi r_{t-1} + u_t` (least-squares :math:`\phi`
    with Kendall's bias correction); the innovations :math:`u_t` are resampled in circular
    blocks of ``block_size`` consecutive values (Politis and Romano 1992; default the automatic
    length of Politis and White 2004, corrected 2009, computed from the innovations), then
    re-coloured with the AR(1) filter, starting from a randomly chosen residual, and added to
    the fitted line. Each resample re-colours with its own coefficient drawn from the sampling
    law :math:`\mathcal N(\phi, (1-\phi^2)/n)` of the estimate, so the interval also carries
    the uncertainty in the noise's persistence. Measured coverage of the nominal 95% interval
    on AR(1) log-noise with coefficient 0.8-0.9 over 200-1000 points: 0.92-0.94
    (``tests/numeric/test_estimators.py``).

    Parameters
    ----------
    steps:
        ``(n,)`` strictly increasing positive steps :math:`k`.
    values:
        ``(n,)`` positive values, e.g. :math:`\|\Delta_k\|^2`.
    window:
        fraction in (0, 1] of the step range fitted, counted from the end.
    confidence:
        level of the interval, in (0, 1).
    num_bootstrap:
        number of bootstrap resamples (>= 10).
    block_size:
        block length, in points, for resampling the innovations (>= 1); default automatic.
    rng:
        ``numpy.random.Generator`` or seed for the resampling.

    Returns
    -------
    PowerLawFit

    Raises
    ------
    ValueError
        shapes differ; non-positive or non-increasing steps; non-positive values; ``window``,
        ``confidence``, ``num_bootstrap`` or ``block_size`` out of range; fewer than 3 points
        in the window.
    """
    steps, values = _check_power_law_data(steps, values)
    window = _check_fraction(window, "window")
    confidence = _check_fraction(confidence, "confidence", open_upper=True)
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, (int, np.integer)):
        raise TypeError(f"num_bootstrap must be an integer, but got "
                        f"{type(num_bootstrap).__name__}")
    if num_bootstrap < 10:
        raise ValueError(f"num_bootstrap must be >= 10, but got {num_bootstrap}")
    mask = _window_mask(steps, window)
    n = int(mask.sum())
    if n < 3:
        raise ValueError(f"the window {window} of the step range holds {n} point(s); at least "
                         f"3 are needed")
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
            raise TypeError(f"block_size must be an integer or None, but got "
                            f"{type(block_size).__name__}")
        if not 1 <= block_size <= n:
            raise ValueError(f"block_size must be in [1, {n}] (points in the window), but got "
                             f"{block_size}")
    rng = np.random.default_rng(rng)

    x, y = np.log(steps[mask]), np.log(values[mask])
    slope, intercept = _ols_slope(x, y)
    fitted = intercept + slope * x
    residuals = y - fitted
    phi, innovations = _prewhiten(residuals)
    b = _politis_white_block_size(innovations) if block_size is None else int(block_size)
    m = innovations.size
    num_blocks = -(-n // b)
    starts = rng.integers(0, m, size=(num_bootstrap, num_blocks))
    index = (starts[:, :, None] + np.arange(b)).reshape(num_bootstrap, -1)[:, :n] % m
    shocks = innovations[index]
    shocks[:, 0] = residuals[rng.integers(0, n, size=num_bootstrap)]
    # Each replicate re-colours with its own AR coefficient, drawn from the sampling law of
    # the estimate, N(phi, (1 - phi^2) / n): the slope variance is convex in phi, so plugging in
    # the point estimate alone understates it when the noise is persistent.
    phis = np.clip(phi + math.sqrt(max(1.0 - phi**2, 0.0) / n) * rng.standard_normal(num_bootstrap),
                   -0.995, 0.995)
    resampled = _recolour(shocks, phis)
    boot_slopes, _ = _ols_slope(x, fitted + resampled)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot_slopes, [tail, 1.0 - tail])
    return PowerLawFit(exponent=float(slope), prefactor=float(np.exp(intercept)),
                       ci_low=float(low), ci_high=float(high),
                       standard_error=float(boot_slopes.std(ddof=1)), window=window)


def exponent_vs_window(steps, values, windows):
    r"""The fitted exponent :math:`c` as a function of the window (Fig. 7 of Kunin et al. 2023).

    For each fraction ``w`` in ``windows``, the least-squares slope of :math:`\log v_k` on
    :math:`\log k` over the last ``w`` of the step range, exactly as the point estimate of
    :func:`fit_power_law` (no bootstrap; call :func:`fit_power_law` for intervals).

    Parameters
    ----------
    steps, values:
        as in :func:`fit_power_law`, shape ``(n,)``.
    windows:
        fractions in (0, 1], any shape.

    Returns
    -------
    numpy.ndarray
        exponents, float64, same shape as ``windows``.

    Raises
    ------
    ValueError
        as :func:`fit_power_law`.
    """
    steps, values = _check_power_law_data(steps, values)
    windows = np.asarray(windows, dtype=np.float64)
    out = np.empty(windows.shape)
    x_all, y_all = np.log(steps), np.log(values)
    for index, w in np.ndenumerate(windows):
        w = _check_fraction(float(w), "windows entry")
        mask = _window_mask(steps, w)
        if mask.sum() < 2:
            raise ValueError(f"the window {w} of the step range holds {int(mask.sum())} "
                             f"point(s); at least 2 are needed")
        out[index], _ = _ols_slope(x_all[mask], y_all[mask])
    return out


def dominant_frequency(x, *, window="hann", detrend=True):
    r"""Dominant oscillation frequency of a trajectory, in cycles per step.

    The periodogram :math:`P(f_j) = |\sum_k w_k x_k e^{-2\pi i f_j k}|^2`,
    :math:`f_j = j / n`, is summed over every component of ``x`` beyond the time axis (the two
    phase-space coordinates :math:`(a, b)` of a mode, and/or independent seeds, which averages
    the noisy periodogram); its largest bin is refined by quadratic interpolation of
    :math:`\log P` through the bin and its two neighbours (exact for a Gaussian peak, a good
    model of a Hann-windowed line), so the estimate resolves a fraction of the bin width
    :math:`1/n`. A peak at the zero-frequency bin (an overdamped or drifting signal) gives 0.

    Compare with :func:`oscillation_frequency`. Note that for a *stationary noisy* mode the
    periodogram of the position peaks at :math:`\sqrt{\omega^2 - 2\gamma^2}` and that of the
    velocity at :math:`\omega`, not at the damped frequency :math:`\sqrt{\omega^2-\gamma^2}` of
    the free oscillation; the three differ by :math:`O(\gamma^2/\omega)`.

    Parameters
    ----------
    x:
        ``(steps,)`` or ``(steps, ...)``: time along axis 0, at least 4 steps.
    window:
        a ``scipy.signal.get_window`` name or tuple (periodic form), ``None`` for no window,
        or an array of shape ``(steps,)``.
    detrend:
        remove a least-squares straight line from each component before windowing (else only
        the mean is removed).

    Returns
    -------
    float
        frequency in cycles per step, in ``[0, 0.5]``.

    Raises
    ------
    ValueError
        fewer than 4 steps, non-finite values, a window of the wrong length.
    """
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"x must be a real array, but got {type(x).__name__}") from error
    if x.ndim < 1 or x.shape[0] < 4:
        raise ValueError(f"x must have shape (steps, ...) with at least 4 steps, but got shape "
                         f"{x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite, but it has non-finite entries")
    n = x.shape[0]
    x = x.reshape(n, -1)
    if detrend:
        x = scipy.signal.detrend(x, axis=0, type="linear")
    else:
        x = x - x.mean(axis=0)
    if window is None:
        taper = np.ones(n)
    elif isinstance(window, (str, tuple)):
        try:
            taper = scipy.signal.get_window(window, n, fftbins=True)
        except ValueError as error:
            raise ValueError(f"window {window!r} is not a window scipy.signal.get_window "
                             f"knows") from error
    else:
        taper = np.asarray(window, dtype=np.float64)
        if taper.shape != (n,):
            raise ValueError(f"window must have shape ({n},) to match x, but got shape "
                             f"{taper.shape}")
    power = (np.abs(np.fft.rfft(x * taper[:, None], axis=0)) ** 2).sum(axis=1)
    peak = int(np.argmax(power))
    if power[peak] == 0.0:
        return 0.0
    # The spectrum of a real signal is even in f: bin -1 mirrors bin 1, and bin n/2 + 1
    # mirrors bin n/2 - 1 for even n.
    left = power[peak - 1] if peak > 0 else power[1]
    right = power[peak + 1] if peak + 1 < power.size else power[peak - 1]
    tiny = np.finfo(float).tiny
    a, b, c = (math.log(max(p, tiny)) for p in (left, power[peak], right))
    curvature = a - 2.0 * b + c
    offset = 0.5 * (a - c) / curvature if curvature < 0.0 else 0.0
    return float(min(max((peak + offset) / n, 0.0), 0.5))


def oscillation_frequency(rho, *, eta, beta, lam=0.0):
    r"""Theoretical damped frequency of a mode, in cycles per step (appendix F.2).

    .. math::

        f = \frac{\eta \sqrt{\omega^2 - \gamma^2}}{2\pi},\qquad
        \gamma = \frac{1-\beta}{\eta(1+\beta)},\quad
        \omega^2 = \frac{2(\rho+\lambda)}{\eta(1+\beta)}

    (docs/theory.md section 4): :math:`\sqrt{\omega^2-\gamma^2}` is an angular frequency in
    continuous time :math:`t = \eta k`, so one step is :math:`\eta` time units. Zero where the
    mode is critically damped or overdamped (:math:`\omega \le \gamma`, including
    :math:`\rho + \lambda \le 0`).

    Parameters
    ----------
    rho:
        Hessian eigenvalue(s), any shape.
    eta, beta, lam:
        learning rate (> 0), momentum in [0, 1), weight decay (>= 0); scalars or arrays
        broadcasting against ``rho``.

    Returns
    -------
    numpy.ndarray or float
        float64, shape ``broadcast(rho, eta, beta, lam)`` (a Python float for scalar inputs).

    Raises
    ------
    ValueError
        ``eta <= 0``, ``beta`` outside [0, 1), ``lam < 0``, non-finite inputs.
    """
    rho, eta, beta, lam = (np.asarray(value, dtype=np.float64)
                           for value in (rho, eta, beta, lam))
    for name, value in (("rho", rho), ("eta", eta), ("beta", beta), ("lam", lam)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, but got {value}")
    if np.any(eta <= 0):
        raise ValueError(f"eta must be > 0, but got {eta}")
    if np.any((beta < 0) | (beta >= 1)):
        raise ValueError(f"beta must be in [0, 1), but got {beta}")
    if np.any(lam < 0):
        raise ValueError(f"lam must be >= 0, but got {lam}")
    gamma = (1.0 - beta) / (eta * (1.0 + beta))
    omega_sq = 2.0 * (rho + lam) / (eta * (1.0 + beta))
    damped_sq = np.maximum(omega_sq - gamma**2, 0.0)
    frequency = eta * np.sqrt(damped_sq) / (2.0 * math.pi)
    return float(frequency) if frequency.ndim == 0 else frequency


def autocorrelation(x, max_lag, *, axis=0):
    r"""Normalised autocorrelation at lags 0..K with standard errors.

    For one series :math:`x_1..x_n` with mean :math:`\bar x`, the estimate at lag :math:`k` is

    .. math::

        r_k = \frac{\frac{1}{n-k}\sum_{t=1}^{n-k} (x_t - \bar x)(x_{t+k} - \bar x)}
                   {\frac{1}{n}\sum_{t=1}^{n} (x_t - \bar x)^2},\qquad r_0 = 1,

    (the :math:`1/(n-k)` normalisation removes the :math:`-k/n` bias of the :math:`1/n`
    form). For a velocity projection at stationarity this estimates
    :math:`C(\eta k) = [e^{-A_l \eta k}]_{22}` (docs/theory.md section 5).

    Standard errors: with several independent seeds (``x`` of shape ``(steps, seeds)``,
    seeds >= 2), ``acf`` is the mean of the per-seed estimates and ``stderr`` the standard
    deviation across seeds divided by :math:`\sqrt{\text{seeds}}`. With one series, Bartlett's
    large-lag formula :math:`\mathrm{se}(r_k)^2 = (1 + 2\sum_{j=1}^{k-1} r_j^2)/n` (the
    convention of ``statsmodels.tsa.acf``), which is conservative where :math:`r_k` is close
    to 1. ``stderr[0] = 0``.

    Parameters
    ----------
    x:
        ``(steps,)`` or ``(steps, seeds)`` (time along ``axis``).
    max_lag:
        largest lag :math:`K`, an integer in ``[0, steps - 1]``.
    axis:
        the time axis of a 2-D ``x`` (0 or 1; the other axis holds seeds).

    Returns
    -------
    tuple of numpy.ndarray
        ``(acf, stderr)``, each of shape ``(max_lag + 1,)``.

    Raises
    ------
    ValueError
        bad shapes, ``max_lag`` out of range, a constant series, non-finite values.
    """
    x = _as_series(x, "x", ndim_max=2)
    if x.ndim == 2:
        if axis not in (0, 1, -1, -2):
            raise ValueError(f"axis must be 0 or 1 for a 2-D x, but got {axis}")
        x = np.moveaxis(x, axis, 0)
    elif axis not in (0, -1):
        raise ValueError(f"axis must be 0 for a 1-D x, but got {axis}")
    n = x.shape[0]
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)):
        raise TypeError(f"max_lag must be an integer, but got {type(max_lag).__name__}")
    if not 0 <= max_lag <= n - 1:
        raise ValueError(f"max_lag must be in [0, {n - 1}] (steps - 1), but got {max_lag}")
    series = x.reshape(n, -1)
    centred = series - series.mean(axis=0)
    variance = (centred**2).mean(axis=0)
    if np.any(variance == 0.0):
        raise ValueError("x must not be constant along time (its variance is zero)")
    size = 1 << int(math.ceil(math.log2(2 * n)))
    spectrum = np.fft.rfft(centred, size, axis=0)
    sums = np.fft.irfft(np.abs(spectrum) ** 2, size, axis=0)[: max_lag + 1]
    lags = np.arange(max_lag + 1)
    per_series = sums / (n - lags)[:, None] / variance
    per_series[0] = 1.0
    if series.shape[1] >= 2:
        acf = per_series.mean(axis=1)
        stderr = per_series.std(axis=1, ddof=1) / math.sqrt(series.shape[1])
        stderr[0] = 0.0
        return acf, stderr
    acf = per_series[:, 0]
    cumulative = np.concatenate([[0.0], np.cumsum(acf[1:max_lag] ** 2)]) if max_lag else []
    stderr = np.zeros(max_lag + 1)
    if max_lag:
        stderr[1:] = np.sqrt((1.0 + 2.0 * np.asarray(cumulative)) / n)
    return acf, stderr
