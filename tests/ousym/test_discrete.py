"""The exact discrete-time theory (docs/theory.md section 6) and its SDE limit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import sympy as sp
from hypothesis import assume, given
from hypothesis import strategies as st

from ousym import discrete, stationary
from ousym.symbols import S, a0, b0, beta, eta, h, k, lam, rho, sigma2

from float_bounds import EPS, gamma, power_bound  # noqa: E402  (tests/numeric is on the pythonpath)

from ousym_strategies import SPOT, mode_parameters  # noqa: E402  (tests/ousym is on pytest's pythonpath)

#: Stable parameters: eta h up to 0.99 of the edge 2 (1 + beta) (includes negative and complex eigenvalues).
stable = mode_parameters(eta_max=1.0)


def is_stable(values) -> bool:
    return values[eta] * (values[rho] + values[lam]) < 0.99 * 2 * (1 + values[beta])


def numeric_model(values, evaluate_at):
    M = evaluate_at(discrete.M, values)
    G = evaluate_at(discrete.G, values)
    q = float(evaluate_at(discrete.noise_variance, values))
    return M, G, q


def test_stationary_covariance_solves_the_discrete_lyapunov_equation():
    P = discrete.P_ss
    residual = P - discrete.M * P * discrete.M.T - discrete.G * discrete.G.T * discrete.noise_variance
    assert all(sp.cancel(e) == 0 for e in residual)
    assert P == P.T


def test_stationary_variances_are_the_sde_ones_times_the_ratio():
    ratio = discrete.stationary_variance_ratio
    assert sp.cancel(discrete.discrete_var_v - stationary.var_b_ss * ratio) == 0
    assert sp.cancel(discrete.discrete_var_a - stationary.var_a_ss * ratio) == 0
    assert sp.cancel(discrete.discrete_instantaneous_speed_mode - eta**2 * discrete.discrete_var_v) == 0


def test_sde_is_the_limit_eta_h_to_zero_of_the_stationary_statistics():
    # Var_exact / Var_SDE -> 1 as eta h -> 0 at every beta; the (a, v) correlation -> 0 like the SDE's.
    u = sp.Symbol("u", positive=True)  # u = eta h
    ratio = discrete.stationary_variance_ratio.subs(eta, u / h)
    assert sp.limit(ratio, u, 0, "+") == 1
    correlation = discrete.discrete_cov_av / sp.sqrt(discrete.discrete_var_a * discrete.discrete_var_v)
    assert sp.limit(sp.simplify(correlation.subs(eta, u / h)), u, 0, "+") == 0


def test_sde_generator_is_the_continuum_limit_of_the_recursion():
    # 1 - beta = eps x, eta h = eps^2 y, per-step coordinates (a, eta v / eps): both generators -> [[0,1],[-y,-x]].
    limits = discrete.continuum_limit()
    x, y = sp.Symbol("x", positive=True), sp.Symbol("y", positive=True)
    expected = sp.Matrix([[0, 1], [-y, -x]])
    assert sp.Matrix(limits["discrete"]) == expected
    assert sp.Matrix(limits["sde"]) == expected


def test_velocity_correlation_converges_to_the_sde_one_in_the_continuum_limit(evaluate_at):
    # Numeric counterpart: with 1 - beta = eps x, eta h = eps^2 y and k = s / eps steps, the exact
    # lag-k velocity correlation approaches the SDE's C(eta k); the largest error over s in (0, 3]
    # is O(eps^2) (measured: the O(eps) terms cancel, gamma eta = (1-beta)/(1+beta) being a centred
    # rate), so halving eps divides it by about 4 (x = 1, y = 4: underdamped, zeta = 1/4).
    errors = []
    for inverse_epsilon in (25, 50, 100):
        epsilon = 1 / inverse_epsilon
        values = {beta: 1 - epsilon, eta: 0.01, rho: 4 * epsilon**2 / 0.01, lam: 0.0, sigma2: 1.0, S: 1.0}
        worst = 0.0
        for s in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
            steps = int(s * inverse_epsilon)
            exact = evaluate_at(discrete.discrete_velocity_correlation, {**values, k: steps}, (k,))
            sde = evaluate_at(stationary.velocity_correlation_steps, {**values, k: steps}, (k,))
            worst = max(worst, abs(exact - sde))
        errors.append(worst)
    assert 3.2 < errors[0] / errors[1] < 5.0 and 3.2 < errors[1] / errors[2] < 5.0, errors


@pytest.mark.parametrize("regime", ["real", "complex", "double"])
def test_lucas_sequence_satisfies_the_cayley_hamilton_recurrence(regime):
    # s_{k+1} = T s_k - beta s_{k-1}, s_0 = 0, s_1 = 1, in each regime's closed form (exact numbers).
    values = {"real": {eta: sp.Rational(1, 10), beta: sp.Rational(1, 4), rho: 1, lam: 0},
              "complex": {eta: sp.Rational(1, 10), beta: sp.Rational(9, 10), rho: 1, lam: 0},
              "double": {eta: 1, beta: sp.Rational(1, 4), rho: sp.Rational(1, 4), lam: 0}}[regime]
    if regime == "double":
        assert discrete.discriminant.subs(values) == 0
    s = {m: discrete._lucas_s(regime, m).subs(values) for m in range(0, 8)}
    T = discrete.trace_M.subs(values)
    assert sp.nsimplify(s[0].evalf(40)) == 0 and abs(s[1].evalf(40) - 1) < 1e-35
    for m in range(1, 7):
        assert abs((s[m + 1] - T * s[m] + values[beta] * s[m - 1]).evalf(40)) < 1e-30


@SPOT
@given(values=stable, steps=st.integers(0, 40))
def test_matrix_power_matches_numpy(values, steps, evaluate_at):
    assume(is_stable(values))
    M, _, _ = numeric_model(values, evaluate_at)
    closed = evaluate_at(discrete.M_power, {**values, k: steps}, (k,))
    np.testing.assert_allclose(closed, np.linalg.matrix_power(M, steps), rtol=0, atol=1e-10 * max(1, np.abs(M).max()) ** 2)


def test_matrix_power_in_every_regime(evaluate_at):
    # real positive, real negative (eta h > 1 + beta), complex, and a double eigenvalue.
    cases = [
        {eta: 0.1, beta: 0.2, rho: 1.0},
        {eta: 1.0, beta: 0.2, rho: 2.3},
        {eta: 0.1, beta: 0.9, rho: 1.0},
        {eta: 1.0, beta: 0.25, rho: 0.25},
    ]
    for case in cases:
        values = {**case, lam: 0.0, sigma2: 1.0, S: 1.0}
        M, _, _ = numeric_model(values, evaluate_at)
        for steps in (0, 1, 2, 5, 13):
            # the closed form at 50 digits (rounded once: 1 ulp) against matrix_power's
            # products (float_bounds.power_bound)
            expected = np.linalg.matrix_power(M, steps)
            got = evaluate_at(discrete.M_power, {**values, k: steps}, (k,))
            assert np.all(np.abs(got - expected)
                          <= power_bound(M, steps) + 2 * EPS * np.abs(expected)), (case, steps)


@SPOT
@given(values=stable)
def test_stationary_covariance_matches_scipy(values, evaluate_at):
    assume(is_stable(values))
    M, G, q = numeric_model(values, evaluate_at)
    reference = scipy.linalg.solve_discrete_lyapunov(M, q * np.outer(G, G))
    # solve_discrete_lyapunov's error grows like 1 / (1 - spectral radius^2), up to ~1e4 here.
    np.testing.assert_allclose(evaluate_at(discrete.P_ss, values), reference, rtol=1e-8, atol=0)


@SPOT
@given(values=st.fixed_dictionaries({eta: st.floats(1e-3, 3.0), beta: st.floats(0.0, 0.99), rho: st.floats(0.0, 10.0),
                                     lam: st.floats(0.0, 1.0), sigma2: st.just(1.0), S: st.just(1.0)}))
def test_stability_condition_is_the_spectral_radius(values, evaluate_at):
    x = values[eta] * (values[rho] + values[lam])
    edge = 2 * (1 + values[beta])
    assume(min(abs(x), abs(x - edge)) > 1e-6)  # away from the boundary, where the radius is 1
    M, _, _ = numeric_model(values, evaluate_at)
    radius = np.abs(np.linalg.eigvals(M)).max()
    assert bool(discrete.stability_condition.subs(values)) == (radius < 1)


@SPOT
@given(values=stable, steps=st.integers(1, 40))
def test_lag_covariance_and_global_displacement_match_direct_sums(values, steps, evaluate_at):
    assume(is_stable(values))
    M, G, q = numeric_model(values, evaluate_at)
    P = scipy.linalg.solve_discrete_lyapunov(M, q * np.outer(G, G))
    lagged = np.linalg.matrix_power(M, steps) @ P
    scale = np.abs(P).max()
    np.testing.assert_allclose(evaluate_at(discrete.discrete_lag_covariance, {**values, k: steps}, (k,)), lagged,
                               rtol=0, atol=1e-8 * scale)
    # E||Delta_k||^2 = eta^2 sum_{i,j=1..k} Cov(v_i, v_j), Cov(v_i, v_j) = [M^{|i-j|} P]_22.
    powers = [np.linalg.matrix_power(M, m) @ P for m in range(steps)]
    reference = values[eta] ** 2 * sum(powers[abs(i - j)][1, 1] for i in range(steps) for j in range(steps))
    closed = evaluate_at(discrete.discrete_global_displacement_mode, {**values, k: steps}, (k,))
    np.testing.assert_allclose(closed, reference, rtol=0, atol=1e-8 * values[eta] ** 2 * scale * steps**2)


def test_mean_is_the_matrix_power_applied_to_the_initial_state(evaluate_at):
    values = {eta: 0.2, beta: 0.8, rho: 1.5, lam: 0.1, sigma2: 1.0, S: 1.0, a0: 0.4, b0: -1.2}
    M, _, _ = numeric_model(values, evaluate_at)
    for steps in (0, 3, 17):
        start = np.array([0.4, -1.2])
        expected = np.linalg.matrix_power(M, steps) @ start
        # matrix_power's products, then one more (gamma(2)), against a 50-digit value rounded once
        bound = ((power_bound(M, steps) + gamma(2) * np.linalg.matrix_power(np.abs(M), steps))
                 @ np.abs(start) + 2 * EPS * np.abs(expected))
        got = evaluate_at(discrete.discrete_mean, {**values, k: steps}, (k, a0, b0)).ravel()
        assert np.all(np.abs(got - expected) <= bound), steps


def test_stationary_moments_match_a_simulation_of_the_recursion(rng, evaluate_at):
    # Direct simulation of z_{k+1} = M z_k + G xi_k with xi ~ N(0, sigma^2 rho / S): 40000 independent
    # chains from z = 0, run 400 steps (spectral radius 0.93 here, so 0.93^400 ~ 1e-13 of the start
    # remains), then the lag-5 covariance and E||Delta_k||^2 over the next k = 20 steps.
    values = {eta: 0.05, beta: 0.8, rho: 2.0, lam: 0.1, sigma2: 1.5, S: 4.0}
    M, G, q = numeric_model(values, evaluate_at)
    chains, burn_in, lag = 40_000, 400, 5
    z = np.zeros((chains, 2))
    for _ in range(burn_in):
        z = z @ M.T + np.outer(rng.normal(0.0, np.sqrt(q), chains), G)
    start = z.copy()
    velocities = []
    for _ in range(20):
        z = z @ M.T + np.outer(rng.normal(0.0, np.sqrt(q), chains), G)
        velocities.append(z[:, 1])
    positions_displacement = values[eta] * np.sum(velocities, axis=0)
    lagged = np.array(velocities[lag - 1])
    # Each estimate is a mean of iid products across chains; tolerance 5 standard errors.
    checks = {
        "Var(a)": (start[:, 0] ** 2, evaluate_at(discrete.discrete_var_a, values)),
        "Var(v)": (start[:, 1] ** 2, evaluate_at(discrete.discrete_var_v, values)),
        "Cov(a, v)": (start[:, 0] * start[:, 1], evaluate_at(discrete.discrete_cov_av, values)),
        "Cov(v_{i+5}, v_i)": (lagged * start[:, 1],
                              evaluate_at(discrete.discrete_lag_covariance, {**values, k: lag}, (k,))[1, 1]),
        "E Delta_20^2": (positions_displacement**2,
                         evaluate_at(discrete.discrete_global_displacement_mode, {**values, k: 20}, (k,))),
    }
    for name, (samples, predicted) in checks.items():
        standard_error = samples.std(ddof=1) / np.sqrt(chains)
        assert abs(samples.mean() - predicted) < 5 * standard_error, name
