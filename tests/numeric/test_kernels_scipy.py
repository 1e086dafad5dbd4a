"""The kernels (and the mpmath reference itself) against independent float64 routes in scipy.

SDE model: e^{-A t} from scipy.linalg.expm, the stationary covariance from
scipy.linalg.solve_continuous_lyapunov. Discrete model: numpy.linalg.matrix_power of M and
scipy.linalg.solve_discrete_lyapunov. Global displacement: the explicit double sum over lags
(eq. 13) on small k.

Tolerances: the accuracy contract of test_kernels_accuracy (1e-10 relative to the propagator
scale, plus 64 eps per unit of gamma t + alpha t). The modes here are moderate (|A t| <= ~50,
eta h well inside the stability region), where expm, matrix_power and the Lyapunov solvers are
themselves accurate to a few hundred eps of the same scale.
"""

from __future__ import annotations


import numpy as np
import pytest
import scipy.linalg
from mpmath import mp

import numeric


import kernel_reference as ref  # noqa: E402  (tests/numeric is on pytest's pythonpath)

S_BATCH, SIGMA2 = 16.0, 0.35
EPS = np.finfo(np.float64).eps


# --- float64 building blocks straight from docs/theory.md sections 3 and 6 ------------------------

def drift(rho, eta, beta, lam):
    h = rho + lam
    return np.array([[0.0, -1.0],
                     [2 * h / (eta * (1 + beta)), 2 * (1 - beta) / (eta * (1 + beta))]])


def diffusion(rho, eta, beta, sigma2):
    return np.array([[0.0, 0.0], [0.0, 2 * (1 - beta) * sigma2 * rho / (eta * (1 + beta))]])


def step_matrix(rho, eta, beta, lam):
    h = rho + lam
    return np.array([[1 - eta * h, eta * beta], [-h, beta]])


def propagator(rho, k, eta, beta, lam, model):
    if model == "sde":
        return scipy.linalg.expm(-drift(rho, eta, beta, lam) * eta * k)
    return np.linalg.matrix_power(step_matrix(rho, eta, beta, lam), int(k))


def stationary_covariance(rho, eta, beta, lam, S, sigma2, model):
    if model == "sde":
        kappa = S * (1 - beta ** 2)
        # A P + P A^T = 2 D / kappa  <=>  (-A) P + P (-A)^T = -2 D / kappa
        noise = -2 * diffusion(rho, eta, beta, sigma2) / kappa
        return scipy.linalg.solve_continuous_lyapunov(-drift(rho, eta, beta, lam), noise)
    noise = np.array([[-eta], [-1.0]])
    return scipy.linalg.solve_discrete_lyapunov(step_matrix(rho, eta, beta, lam),
                                                noise @ noise.T * sigma2 * rho / S)


def lyapunov_condition(rho, eta, beta, lam, model):
    """Condition number of the Lyapunov operator on vec(P): the solvers' forward error is
    at most about this times eps (Bartels-Stewart and its discrete analogue are backward
    stable), so it enters every tolerance on a scipy covariance."""
    if model == "sde":
        a = drift(rho, eta, beta, lam)
        operator = np.kron(a, np.eye(2)) + np.kron(np.eye(2), a)
    else:
        m = step_matrix(rho, eta, beta, lam)
        operator = np.eye(4) - np.kron(m, m)
    return np.linalg.cond(operator)


def covariance_within(got, exact, condition):
    """|got - exact| <= the contract at t = 0, plus scipy's own forward error."""
    return abs(got - exact) <= abs(exact) * (1e-10 + 64 * EPS * (1 + condition))


def envelope(matrix, omega):
    """Largest entry in the balanced coordinates (omega a, b), as in the reference."""
    balanced = np.array([[matrix[0, 0], omega * matrix[0, 1]],
                         [matrix[1, 0] / omega, matrix[1, 1]]])
    return np.abs(balanced).max()


def rates(rho, eta, beta, lam):
    gamma = (1 - beta) / (eta * (1 + beta))
    omega2 = 2 * (rho + lam) / (eta * (1 + beta))
    return gamma, np.sqrt(omega2), np.sqrt(abs(gamma ** 2 - omega2))


def within(got, exact, scale, cond):
    return abs(got - exact) <= max(abs(exact), scale) * (1e-10 + 64 * EPS * (1 + cond))


def moderate_modes(rng, count, model):
    """Random modes with zeta log-uniform in [0.05, 20] (both sides of critical damping)."""
    modes = []
    while len(modes) < count:
        zeta = float(np.exp(rng.uniform(np.log(0.05), np.log(20.0))))
        rho = float(np.exp(rng.uniform(np.log(1e-3), np.log(10.0))))
        beta = float(rng.choice([0.0, 0.5, 0.9, 0.99]))
        lam = float(rng.choice([0.0, 1e-4, 1e-1]))
        eta = ref.eta_for_damping_ratio(zeta, rho, beta, lam)
        gamma, omega, _ = rates(rho, eta, beta, lam)
        if model == "discrete" and eta * (rho + lam) > 1.5 * (1 + beta):
            continue
        # keep |A t| moderate at the largest k used below, where expm is accurate
        k_max = int(min(200, max(2, 40 / (eta * (gamma + omega)))))
        modes.append((rho, eta, beta, lam, k_max))
    return modes


# --- the reference against scipy (it must be right before it judges anything) ---------------

@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_reference_propagator_and_covariance_match_scipy(rng, model):
    for rho, eta, beta, lam, k_max in moderate_modes(rng, 40, model):
        mode = ref.ModeSpec(rho, eta, beta, lam)
        gamma, omega, alpha = rates(rho, eta, beta, lam)
        for k in sorted({0, 1, 2, k_max // 3, k_max}):
            with mp.workdps(ref.DIGITS):
                exact = np.array([float(x) for x in ref.propagator(mode, k, model)]).reshape(2, 2)
            got = propagator(rho, k, eta, beta, lam, model)
            scale = envelope(exact, omega)
            cond = (gamma + alpha) * eta * k
            for i in range(2):
                for j in range(2):
                    assert within(got[i, j], exact[i, j], scale * _unit(i, j, omega), cond), (
                        model, rho, eta, beta, lam, k, i, j, got[i, j], exact[i, j])
        with mp.workdps(ref.DIGITS):
            cov = ref.stationary_covariance(mode, S=S_BATCH, sigma2=SIGMA2, model=model)
        exact = np.array([float(x) for x in cov]).reshape(2, 2)
        got = stationary_covariance(rho, eta, beta, lam, S_BATCH, SIGMA2, model)
        condition = lyapunov_condition(rho, eta, beta, lam, model)
        for i, j in ((0, 0), (1, 1)):
            assert covariance_within(got[i, j], exact[i, j], condition), (
                model, rho, eta, beta, lam, i, got[i, j], exact[i, j], condition)
        # the off-diagonal is 0 for the SDE (P = kappa^{-1} U^{-1}, eq. 27), not for SGD
        assert abs(got[0, 1] - exact[0, 1]) <= np.sqrt(exact[0, 0] * exact[1, 1]) * (
            1e-10 + 64 * EPS * condition)


def _unit(i, j, omega):
    """Entry (i, j) of X equals entry (i, j) of T X T^{-1} times this, T = diag(omega, 1)."""
    return {(0, 1): 1 / omega, (1, 0): omega}.get((i, j), 1.0)


@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_reference_stationary_variance_matches_theory_closed_forms(model):
    """docs/theory.md sections 3 and 6: the SDE values, and SGD's = SDE x 2(1+b)/(2(1+b) - eta h)."""
    for rho, eta, beta, lam in [(0.7, 0.05, 0.9, 0.01), (3.0, 0.1, 0.0, 0.0),
                                (1e-6, 1e3, 0.999, 1e-4), (2.0, 0.9, 0.5, 0.1)]:
        with mp.workdps(ref.DIGITS):
            var_a, var_v = ref.stationary_variance(rho, eta, beta, lam, S_BATCH, SIGMA2, model)
            r, e, b, lm, S, s2 = (mp.mpf(x) for x in (rho, eta, beta, lam, S_BATCH, SIGMA2))
            h = r + lm
            sde_a = e * s2 * r / (2 * S * (1 - b) * h)
            sde_v = s2 * r / (S * (1 - b ** 2))
            factor = 1 if model == "sde" else 2 * (1 + b) / (2 * (1 + b) - e * h)
            assert abs(var_a / (sde_a * factor) - 1) < mp.mpf(10) ** (-40)
            assert abs(var_v / (sde_v * factor) - 1) < mp.mpf(10) ** (-40)


@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_reference_lag_sum_closed_form_matches_explicit_sum(model):
    """The geometric-series closed form of B(k) against the explicit sum, slow modes included."""
    for zeta, beta in [(0.1, 0.9), (1.0, 0.5), (1.0 + 1e-9, 0.0), (1e3, 0.999), (30.0, 0.0)]:
        rho, lam = 0.5, 1e-4
        eta = ref.eta_for_damping_ratio(zeta, rho, beta, lam)
        for k in (0, 1, 2, 3, 17, 60):
            closed = ref.lag_sum_bracket(rho, k, eta, beta, lam, model)
            explicit = ref.brute_force_lag_sum_bracket(rho, k, eta, beta, lam, model)
            assert abs(closed - explicit) <= mp.mpf(10) ** (-ref.DIGITS) * max(k, 1) ** 2


def test_reference_sde_propagator_matches_mpmath_expm():
    """The three-regime closed form against mpmath's own expm, at and near critical damping."""
    for zeta, beta in [(0.2, 0.9), (1.0, 0.0), (1 + 1e-12, 0.5), (1 - 1e-8, 0.9), (5.0, 0.0)]:
        rho, lam = 0.3, 0.0
        eta = ref.eta_for_damping_ratio(zeta, rho, beta, lam)
        for k in (0, 1, 9, 40):
            with mp.workdps(ref.DIGITS):
                mode = ref.ModeSpec(rho, eta, beta, lam)
                closed = ref.sde_propagator(mode, k)
                with mp.workdps(ref.DIGITS + 30):
                    a = mp.matrix([[0, -1], [mode.omega2, 2 * mode.gamma]])
                    expm = mp.expm(-a * mode.eta * k)
                for i in range(2):
                    for j in range(2):
                        scale = ref.balanced_envelope(mode, closed) * _unit(i, j, mode.omega)
                        assert abs(closed[2 * i + j] - expm[i, j]) <= scale * mp.mpf(10) ** -40


# --- the kernels against scipy ------------------------------------------------------------

@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_mean_trajectory_and_correlation_match_scipy(rng, model):
    rows = []
    for rho, eta, beta, lam, k_max in moderate_modes(rng, 30, model):
        for k in sorted({0, 1, 2, 5, k_max // 2, k_max}):
            rows.append((rho, eta, beta, lam, float(k)))
    rho, eta, beta, lam, k = (np.array(c) for c in zip(*rows))
    a0 = rng.normal(size=rho.size)
    b0 = rng.normal(size=rho.size)
    a, b = numeric.mean_trajectory(rho, k, a0, b0, eta=eta, beta=beta, lam=lam, model=model)
    corr = numeric.velocity_correlation(rho, k, eta=eta, beta=beta, lam=lam, model=model)
    for i in range(rho.size):
        args = (rho[i], eta[i], beta[i], lam[i])
        gamma, omega, alpha = rates(*args)
        cond = (gamma + alpha) * eta[i] * k[i]
        prop = propagator(rho[i], k[i], eta[i], beta[i], lam[i], model)
        cov = stationary_covariance(*args, S_BATCH, SIGMA2, model)
        state = np.array([a0[i], b0[i]])
        expected_a, expected_b = prop @ state
        size = envelope(prop, omega) * max(omega * abs(a0[i]), abs(b0[i]))
        context = (model, *args, k[i])
        assert within(a[i], expected_a, size / omega, cond), (context, a[i], expected_a)
        assert within(b[i], expected_b, size, cond), (context, b[i], expected_b)
        expected_c = (prop @ cov)[1, 1] / cov[1, 1]
        cond_c = cond + lyapunov_condition(*args, model)  # scipy's error in P_12 / P_22
        assert within(corr[i], expected_c, envelope(prop, omega), cond_c), (
            context, corr[i], expected_c)


@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_stationary_variance_and_speed_match_scipy_lyapunov(rng, model):
    modes = moderate_modes(rng, 50, model)
    rho, eta, beta, lam = (np.array(c) for c in list(zip(*modes))[:4])
    var_a, var_v = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam, S=S_BATCH,
                                               sigma2=SIGMA2, model=model)
    for i in range(rho.size):
        args = (rho[i], eta[i], beta[i], lam[i])
        cov = stationary_covariance(*args, S_BATCH, SIGMA2, model)
        condition = lyapunov_condition(*args, model)
        assert covariance_within(var_a[i], cov[0, 0], condition), (model, modes[i], var_a[i],
                                                                     cov[0, 0])
        assert covariance_within(var_v[i], cov[1, 1], condition), (model, modes[i], var_v[i],
                                                                     cov[1, 1])
    # eq. 12 on one shared spectrum (the last axis), eta and beta broadcast from (2, 1)
    spectrum = np.exp(rng.uniform(np.log(1e-4), np.log(3.0), size=200))
    etas, betas = np.array([[0.05], [0.2]]), np.array([[0.9], [0.0]])
    speed = numeric.instantaneous_speed(spectrum, eta=etas, beta=betas, lam=1e-3, S=S_BATCH,
                                        sigma2=SIGMA2, model=model)
    assert np.shape(speed) == (2,)
    for row in range(2):
        e, b = etas[row, 0], betas[row, 0]
        expected = e ** 2 * sum(stationary_covariance(r, e, b, 1e-3, S_BATCH, SIGMA2, model)[1, 1]
                                for r in spectrum)
        condition = max(lyapunov_condition(r, e, b, 1e-3, model) for r in spectrum)
        assert covariance_within(speed[row], expected, condition), (model, row, speed[row],
                                                                    expected)


def explicit_displacement(spectrum, k, eta, beta, lam, model):
    """eta^2 sum_{i,j=1}^{k} Cov(v_i, v_j) at stationarity, lag by lag (eq. 13, section 6)."""
    total = 0.0
    for rho in spectrum:
        cov = stationary_covariance(rho, eta, beta, lam, S_BATCH, SIGMA2, model)
        one_step = propagator(rho, 1, eta, beta, lam, model)
        power = np.eye(2)
        lag_sum = k * cov[1, 1]
        for j in range(1, k):
            power = power @ one_step
            lag_sum += 2 * (k - j) * (power @ cov)[1, 1]
        total += lag_sum
    return eta ** 2 * total


@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_global_displacement_matches_explicit_double_sum(model):
    spectrum = np.array([1e-3, 0.05, 0.4, 1.0, 2.5])
    ks = np.array([0, 1, 2, 3, 10, 37, 150])
    for eta, beta, lam in [(0.1, 0.9, 0.0), (0.3, 0.0, 1e-2), (0.02, 0.99, 1e-4),
                           (0.5, 0.5, 0.1)]:
        got = numeric.global_displacement(spectrum, ks.astype(float), eta=eta, beta=beta,
                                          lam=lam, S=S_BATCH, sigma2=SIGMA2, model=model)
        assert np.shape(got) == ks.shape
        gamma_alpha = [sum(rates(r, eta, beta, lam)[::2]) for r in spectrum]
        for i, k in enumerate(ks):
            expected = explicit_displacement(spectrum, int(k), eta, beta, lam, model)
            diagonal = eta ** 2 * sum(
                stationary_covariance(r, eta, beta, lam, S_BATCH, SIGMA2, model)[1, 1]
                for r in spectrum) * max(k, 1)
            # the explicit sum adds k terms, each rounded: its own error grows like k eps;
            # and it inherits scipy's error in the covariances
            cond = max(gamma_alpha) * eta * k + k + max(
                lyapunov_condition(r, eta, beta, lam, model) for r in spectrum)
            assert within(got[i], expected, diagonal, cond), (model, eta, beta, lam, k,
                                                              got[i], expected)
