"""Estimators against curves and processes with known answers: power laws with autocorrelated
noise (CI coverage over many seeds), exact OU modes (frequency, autocorrelation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
from scipy.stats import binom

from float_bounds import EPS, ULPS_PER_LIBM_CALL, gamma
from numeric import (autocorrelation, dominant_frequency, exponent_vs_window, fit_power_law,
                     ou_lag_covariance, ou_stationary_covariance, oscillation_frequency,
                     sample_ou)


def sgd_mode(eta, beta, h, sigma2_rho):
    """docs/theory.md section 3: drift and diffusion of one eigenmode, state (a, b)."""
    A = np.array([[0.0, -1.0], [2 * h / (eta * (1 + beta)), 2 * (1 - beta) / (eta * (1 + beta))]])
    D = np.array([[0.0, 0.0], [0.0, 2 * (1 - beta) * sigma2_rho / (eta * (1 + beta))]])
    return A, D


def noisy_power_laws(rng, seeds, num_steps, exponent, phi, scale):
    """v_k = 2 k^c exp(e_k), e_k a stationary AR(1) with coefficient phi and sd `scale`:
    multiplicative noise correlated over about (1 + phi)/(1 - phi) steps, like a recorded
    ||Delta_k||^2 whose fluctuations persist."""
    shocks = rng.standard_normal((seeds, num_steps)) * math.sqrt(1 - phi**2)
    shocks[:, 0] = rng.standard_normal(seeds)
    noise = scipy.signal.lfilter([1.0], [1.0, -phi], shocks, axis=1)
    k = np.arange(1, num_steps + 1, dtype=float)
    return k, 2.0 * k**exponent * np.exp(scale * noise)


def ols_slope_rounding(k, slope, window=2 / 3):
    """First-order bound on the rounding error of the least-squares slope of log v on log k
    over the last ``window`` of k, for v = C k^slope computed in a few rounded operations.

    The slope is sum_i w_i y_i with w_i = xc_i / sum xc^2 (xc = x - mean x). Each y_i = log v_i
    is off by at most dy (libm's log, a few ulps of |y|; v's own pow and product, a few eps
    absolute in log; the mean and centring, 2 gamma(n+1) max|y|), each x_i by dx likewise, and
    the two sums of products by gamma(n+1) of their absolute values.
    """
    low = k[-1] - window * (k[-1] - k[0])
    x = np.log(k[k >= low])
    n = x.size
    y = slope * x + 10.0  # |log v| <= |slope x| + |log C| with |log C| <= 10 here
    libm = ULPS_PER_LIBM_CALL * EPS
    dx = libm * np.abs(x).max() + 2 * gamma(n + 1) * np.abs(x).max()
    dy = libm * np.abs(y).max() + 8 * EPS + 2 * gamma(n + 1) * np.abs(y).max()
    xc = x - x.mean()
    yc = y - y.mean()
    total = xc @ xc
    spread = np.abs(xc).sum()
    return (dy * spread + abs(slope) * dx * 2 * spread
            + 2 * gamma(n + 1) * (np.abs(yc) @ np.abs(xc) + abs(slope) * total)) / total


def test_power_law_exact_curve():
    k = np.arange(1, 1001, dtype=float)
    fit = fit_power_law(k, 3.5 * k**1.37, rng=0)
    bound = ols_slope_rounding(k, 1.37)
    assert bound < 1e-10  # a sharp check
    assert fit.exponent == pytest.approx(1.37, abs=bound)
    # the intercept mean(y) - slope mean(x) carries the slope's error times |mean x| <= 7
    assert fit.prefactor == pytest.approx(3.5, rel=1e-10 + 8 * bound)
    assert fit.window == pytest.approx(2 / 3)
    # no residuals but rounding (each |r_i| <= dy + |slope| dx + the slope's error times |x|),
    # so the bootstrap resamples almost nothing: re-coloured with |phi| <= 0.995, a resampled
    # residual is at most 2 / (1 - 0.995) = 400 times the largest one, and each bootstrap slope
    # moves by at most sum |w_i| times that, plus its own rounding
    x = np.log(k[k >= k[-1] - 2 / 3 * (k[-1] - k[0])])
    xc = x - x.mean()
    weights = np.abs(xc).sum() / (xc @ xc)
    residual = 8 * bound * np.abs(x).max()
    assert fit.ci_high - fit.ci_low <= 2 * (weights * 400 * residual + bound)


def test_power_law_window_is_last_fraction():
    # c = 1 on the first third of the range, c = 2 (continuously joined) afterwards: the
    # default window (last 2/3) sees only the c = 2 part.
    k = np.arange(1, 3001, dtype=float)
    v = np.where(k <= 1000, k, k**2 / 1000)
    # v = k^2 / 1000 in two rounded operations: the bound of ols_slope_rounding applies
    bound = ols_slope_rounding(k, 2.0)
    assert fit_power_law(k, v, num_bootstrap=50, rng=0).exponent == pytest.approx(2.0, abs=bound)
    windows = np.array([0.2, 0.5, 2 / 3, 1.0])
    curve = exponent_vs_window(k, v, windows)
    for w, c in zip(windows[:3], curve[:3]):
        assert c == pytest.approx(2.0, abs=ols_slope_rounding(k, 2.0, window=w))
    assert 1.0 < curve[3] < 2.0
    for w, c in zip(windows, curve):
        # the same least-squares slope, batched or not: the two evaluations may sum in other
        # orders, each within ols_slope_rounding's bound (slope <= 2 on these windows)
        fit = fit_power_law(k, v, window=w, num_bootstrap=50, rng=0)
        assert c == pytest.approx(fit.exponent, abs=2 * ols_slope_rounding(k, 2.0, window=w))


def coverage(rng, seeds, num_steps, phi, scale, num_bootstrap, exponent=1.3):
    k, curves = noisy_power_laws(rng, seeds, num_steps, exponent, phi, scale)
    hits = 0
    for v in curves:
        fit = fit_power_law(k, v, num_bootstrap=num_bootstrap, rng=rng)
        hits += fit.ci_low <= exponent <= fit.ci_high
    return hits / seeds


# Binomial bound: with a true coverage p in [0.93, 0.96] the count over 200 seeds falls
# outside [0.88, 0.99] with probability below 0.5% (binom.cdf / sf, checked in the test).
def test_power_law_ci_coverage_fast(rng):
    seeds = 200
    assert binom.cdf(0.88 * seeds - 1, seeds, 0.93) < 0.005
    assert binom.sf(0.99 * seeds, seeds, 0.96) < 0.005
    result = coverage(rng, seeds, num_steps=300, phi=0.8, scale=0.05, num_bootstrap=400)
    assert 0.88 <= result <= 0.99


@pytest.mark.slow
def test_power_law_ci_coverage_long_persistent_noise(rng):
    seeds = 400
    # 400 seeds: for p in [0.93, 0.96], outside [0.89, 0.99] with probability below 0.5%
    assert binom.cdf(0.89 * seeds - 1, seeds, 0.93) < 0.005
    assert binom.sf(0.99 * seeds, seeds, 0.96) < 0.005
    result = coverage(rng, seeds, num_steps=1500, phi=0.9, scale=0.05, num_bootstrap=1000)
    assert 0.89 <= result <= 0.99


def test_power_law_validation():
    k = np.arange(1, 11, dtype=float)
    with pytest.raises(ValueError, match="values must be positive"):
        fit_power_law(k, -k)
    with pytest.raises(ValueError, match="window must be in"):
        fit_power_law(k, k, window=1.5)
    with pytest.raises(ValueError, match="same shape"):
        fit_power_law(k, k[:-1])
    with pytest.raises(ValueError, match="steps must be positive"):
        fit_power_law(k - 1, k)


def test_dominant_frequency_of_sinusoids_sub_bin():
    n = 2048
    rng = np.random.default_rng(1)
    for f0 in rng.uniform(0.02, 0.45, 40):
        x = np.cos(2 * np.pi * f0 * np.arange(n) + rng.uniform(0, 2 * np.pi))
        # Hann window + log-parabolic interpolation: bias below 2% of a bin; allow 5%
        assert abs(dominant_frequency(x) - f0) < 0.05 / n


def test_dominant_frequency_of_underdamped_ou_mode(rng):
    eta, beta, h = 0.1, 0.999, 0.5
    A, D = sgd_mode(eta, beta, h, sigma2_rho=1.0)
    expected = oscillation_frequency(h, eta=eta, beta=beta)
    # the damped frequency is the imaginary part of A's eigenvalues (an independent route).
    # A backward-stable eigensolver returns eigenvalues of A + E, ||E||_2 <= p eps ||A||_F
    # (p = 16 for 2 x 2), so they move by at most kappa p eps ||A||_F, kappa = |x||y|/|y^H x|
    # the eigenvalue's condition number (left and right eigenvectors y, x); the closed form
    # sqrt(omega^2 - gamma^2) eta / (2 pi) takes a few correctly rounded operations
    import scipy.linalg

    values, left, right = scipy.linalg.eig(A, left=True, right=True)
    condition = max(np.linalg.norm(left[:, i]) * np.linalg.norm(right[:, i])
                    / abs(np.vdot(left[:, i], right[:, i])) for i in range(2))
    eigensolver = condition * 16 * EPS * np.linalg.norm(A) * eta / (2 * np.pi)
    assert expected == pytest.approx(eta * np.abs(np.linalg.eigvals(A).imag).max() / (2 * np.pi),
                                     rel=gamma(16), abs=eigensolver)
    n = 4096
    # Damping time 1/(gamma eta) = 2000 steps, so the line is narrower than a bin and the
    # position-spectrum peak sqrt(omega^2 - 2 gamma^2) differs from the damped frequency by
    # 4e-4 bins. Relaxation from 20 stationary spreads away: the free oscillation dominates
    # the noise it is sampled with.
    spread = np.sqrt(ou_stationary_covariance(A, D)[0, 0])
    z0 = np.array([20 * spread, 0.0])
    path = sample_ou(A, D, np.broadcast_to(z0, (4, 2)), eta, n - 1, rng=rng)
    estimate = dominant_frequency(path)  # phase-space components and 4 seeds summed
    assert abs(estimate - expected) < 1.0 / n  # the FFT resolution


def test_oscillation_frequency_overdamped_is_zero():
    # h below the critical value (1-beta)^2/(2 eta (1+beta)) -> overdamped
    eta, beta = 0.1, 0.5
    critical = (1 - beta) ** 2 / (2 * eta * (1 + beta))
    f = oscillation_frequency(np.array([0.5 * critical, critical, 2 * critical, -1.0]),
                              eta=eta, beta=beta)
    assert f[0] == 0.0 and f[1] == 0.0 and f[3] == 0.0 and f[2] > 0.0
    with pytest.raises(ValueError, match="beta"):
        oscillation_frequency(1.0, eta=0.1, beta=1.0)


def exact_velocity_correlation(A, D, eta, lags):
    cov = ou_lag_covariance(A, D, eta * lags)
    return cov[:, 1, 1] / cov[0, 1, 1]


def test_autocorrelation_matches_ou_lag_covariance_seeds(rng):
    eta, beta, h = 0.1, 0.8, 2.0
    A, D = sgd_mode(eta, beta, h, sigma2_rho=1.0)
    seeds, n, max_lag = 16, 10000, 40
    z0 = rng.multivariate_normal(np.zeros(2), ou_stationary_covariance(A, D), size=seeds)
    velocity = sample_ou(A, D, z0, eta, n - 1, rng=rng)[:, :, 1]  # (steps, seeds)
    acf, stderr = autocorrelation(velocity, max_lag)
    exact = exact_velocity_correlation(A, D, eta, np.arange(max_lag + 1))
    assert acf[0] == 1.0 and stderr[0] == 0.0
    # 4 standard errors on 40 lags: family-wise false alarm below 0.3%
    np.testing.assert_array_less(np.abs(acf - exact)[1:], 4 * stderr[1:])
    # the same data with time along axis 1: the same FFT correlation of a differently strided
    # array, which may sum in another order. An FFT convolution of length N is accurate to
    # c log2(N) eps ||x||^2 in every entry (c = 8 is generous); the mean and centring move each
    # sum by at most 2 gamma(n) max|x| sum|x - mean|; dividing by (n - k) var scales both.
    acf_t, stderr_t = autocorrelation(velocity.T, max_lag, axis=1)
    size = 1 << int(math.ceil(math.log2(2 * n)))
    centred = velocity - velocity.mean(axis=0)
    energy = (centred**2).sum(axis=0)
    mean_shift = 2 * gamma(n) * np.abs(velocity).max(axis=0) * np.abs(centred).sum(axis=0)
    per_sum = (8 * math.log2(size) * EPS * energy + 2 * mean_shift) / energy  # of n var
    lags = np.arange(max_lag + 1)
    bound = 2 * per_sum.max() * n / (n - lags) + gamma(8)
    assert np.all(np.abs(acf_t - acf) <= bound)


def test_autocorrelation_bartlett_single_series(rng):
    eta, beta, h = 0.1, 0.5, 1.0
    A, D = sgd_mode(eta, beta, h, sigma2_rho=1.0)
    n, max_lag = 40000, 30
    z0 = rng.multivariate_normal(np.zeros(2), ou_stationary_covariance(A, D))
    velocity = sample_ou(A, D, z0, eta, n - 1, rng=rng)[:, 1]
    acf, stderr = autocorrelation(velocity, max_lag)
    exact = exact_velocity_correlation(A, D, eta, np.arange(max_lag + 1))
    # Bartlett's large-lag formula is conservative where r_k is near 1: 4 SE on 30 lags
    np.testing.assert_array_less(np.abs(acf - exact)[1:], 4 * stderr[1:])
    # Bartlett: se_k^2 = (1 + 2 sum_{j<k} r_j^2) / n, computed here by a loop
    for lag in (1, 5, 30):
        expected = math.sqrt((1 + 2 * sum(acf[j] ** 2 for j in range(1, lag))) / n)
        # two sums of at most 30 positive terms and a square root, on either side
        assert stderr[lag] == pytest.approx(expected, rel=2 * gamma(34))


def test_autocorrelation_validation():
    with pytest.raises(ValueError, match="max_lag"):
        autocorrelation(np.arange(5.0), 5)
    with pytest.raises(ValueError, match="constant"):
        autocorrelation(np.ones(10), 2)
