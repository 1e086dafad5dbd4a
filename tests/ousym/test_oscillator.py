"""The damped oscillator of one mode (appendix F.2): regimes, propagator, means, eq. (26)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import sympy as sp
from hypothesis import assume, given
from hypothesis import strategies as st

from ousym import oscillator
from ousym.decomposition import U_mode
from ousym.linreg import A_mode, D_mode, kappa
from ousym.symbols import S, a0, alpha_sym, b0, beta, eta, gamma_sym, lam, rho, sigma2, t

from float_bounds import EPS, gamma  # noqa: E402  (tests/numeric is on the pythonpath)
from ousym_strategies import SPOT, admissible  # noqa: E402  (tests/ousym is on pytest's pythonpath)


def is_zero(expression) -> bool:
    return sp.simplify(expression) == 0


def test_critical_case_is_the_limit_of_both_other_regimes():
    # sympy.limit as alpha = sqrt|Delta| -> 0+ of the overdamped and underdamped propagators.
    critical = oscillator.generic_regime_propagators()["critical"]
    for regime in ("overdamped", "underdamped"):
        limit = oscillator.critical_limit(regime)
        assert all(is_zero(e) for e in limit - critical), regime


def test_critical_limit_refuses_other_regimes():
    with pytest.raises(ValueError, match="overdamped"):
        oscillator.critical_limit("critical")
    with pytest.raises(ValueError, match="one of"):
        oscillator.regime_cs("sideways")


@pytest.mark.parametrize("regime", oscillator.REGIMES)
def test_each_regime_form_solves_the_mode_ode(regime):
    # d/dt P = -A P and P(0) = I, with A = [[0, -1], [omega^2, 2 gamma]] in the generic symbols.
    form = oscillator.generic_regime_propagators()[regime]
    frequency2 = {"overdamped": gamma_sym**2 - alpha_sym**2, "underdamped": gamma_sym**2 + alpha_sym**2,
                  "critical": gamma_sym**2}[regime]
    A = sp.Matrix([[0, -1], [frequency2, 2 * gamma_sym]])
    residual = form.diff(t) + A * form
    assert all(is_zero(sp.expand(e.rewrite(sp.exp))) for e in residual)
    assert form.subs(t, 0) == sp.eye(2)


def test_oscillator_constants_are_consistent_with_the_drift():
    # A_l = [[0, -1], [omega^2, 2 gamma]]; zeta = gamma / omega; Delta = gamma^2 - omega^2 = omega^2 (zeta^2 - 1).
    assert is_zero(A_mode[1, 0] - oscillator.omega2)
    assert is_zero(A_mode[1, 1] - 2 * oscillator.gamma)
    assert is_zero(oscillator.zeta**2 - oscillator.gamma**2 / oscillator.omega2)
    assert is_zero(oscillator.Delta - oscillator.omega2 * (oscillator.zeta**2 - 1))


def test_mean_trajectory_is_the_propagator_applied_to_the_initial_state():
    # a(t), b(t) are [e^{-A t}(a0, b0)]; b = da/dt in every regime; a(0) = a0, b(0) = b0.
    for index, regime in enumerate(oscillator.REGIMES):
        position = oscillator.mean_position.args[index][0]
        velocity = oscillator.mean_velocity.args[index][0]
        assert is_zero(position.subs(t, 0) - a0) and is_zero(velocity.subs(t, 0) - b0)
        P = oscillator.propagator_from(*oscillator.regime_cs(regime))
        assert is_zero(position - (P * sp.Matrix([a0, b0]))[0])
        # a' = b: check at exact rational parameters of this regime, evaluated to 40 digits
        # (the symbolic radicals are slow to simplify). Critical: rho = (1-beta)^2 / (2 eta (1+beta)).
        half, tenth = sp.Rational(1, 2), sp.Rational(1, 10)
        regime_rho = {"overdamped": sp.Rational(1, 20), "underdamped": 2, "critical": sp.Rational(5, 6)}[regime]
        values = {eta: tenth, beta: half, lam: 0, rho: regime_rho, a0: sp.Rational(7, 10), b0: -sp.Rational(3, 10),
                  t: sp.Rational(9, 10)}
        assert (oscillator.Delta.subs(values) == 0) == (regime == "critical")
        difference = (position.diff(t) - velocity).subs(values).evalf(40)
        # a 40-digit evaluation of O(1) terms: its own error is below 1e-38
        assert abs(difference) < 1e-35




@SPOT
@given(values=admissible, steps=st.floats(0.0, 50.0))
def test_propagator_matches_scipy_expm(values, steps, evaluate_at):
    # t = eta * steps; gamma t <= 50 keeps expm's own error (relative to ||e^{-At}||) small.
    values = dict(values)
    values[t] = values[eta] * steps
    A = evaluate_at(A_mode, values)
    reference = scipy.linalg.expm(-A * values[t])
    P = evaluate_at(oscillator.propagator, values, (t,))
    scale = np.abs(reference).max() + np.linalg.norm(A) * values[t] * np.abs(reference).max()
    # expm (Pade, scaling and squaring): error ~ 1e-13 ||A t|| ||e^{-At}|| in float64.
    np.testing.assert_allclose(P, reference, rtol=0, atol=1e-11 * max(scale, 1e-300) + 1e-14)


@pytest.mark.parametrize("offset", [-1e-6, 0.0, 1e-6])
def test_propagator_is_continuous_across_critical_damping(offset, evaluate_at):
    # rho chosen so that Delta is exactly 0 (offset 0) or just beside it: the three branches agree.
    values = {eta: 0.1, beta: 0.5, lam: 0.0, sigma2: 1.0, S: 1.0, t: 0.7}
    critical_rho = (1 - 0.5) ** 2 / (2 * 0.1 * 1.5)
    values[rho] = critical_rho * (1 + offset)
    A = evaluate_at(A_mode, values)
    reference = scipy.linalg.expm(-A * 0.7)
    # expm's forward error is at most about its condition number ||A t|| times eps of its size
    # (64 eps ||A t|| allowed), the 50-digit propagator is rounded once
    atol = 64 * EPS * np.linalg.norm(A * 0.7, 2) * np.abs(reference).max()
    np.testing.assert_allclose(evaluate_at(oscillator.propagator, values, (t,)), reference,
                               rtol=1e-9, atol=atol)


@SPOT
@given(values=admissible, steps=st.floats(0.0, 50.0))
def test_transient_covariance_matches_lyapunov_and_expm(values, steps, evaluate_at):
    # eq. (26) against B - e^{-At} B e^{-A^T t}, B from scipy's solve_continuous_lyapunov(A, 2 D / kappa).
    values = dict(values)
    values[t] = values[eta] * steps
    A = evaluate_at(A_mode, values)
    B = scipy.linalg.solve_continuous_lyapunov(A, 2 * evaluate_at(D_mode, values) / float(evaluate_at(kappa, values)))
    E = scipy.linalg.expm(-A * values[t])
    reference = B - E @ B @ E.T
    covariance = evaluate_at(oscillator.transient_covariance, values, (t,))
    # The Lyapunov solve has backward error ~ 1e-16 cond(A) |B| with cond(A) <~ 1e6 here.
    np.testing.assert_allclose(covariance, reference, rtol=0, atol=1e-8 * np.abs(B).max())


def test_transient_covariance_matches_the_integral_of_the_noise(evaluate_at):
    # eq. (26) against int_0^t e^{-As} 2 kappa^-1 D e^{-A^T s} ds by 40-node Gauss-Legendre quadrature
    # of expm (no Lyapunov solver), one point per regime.
    nodes, weights = np.polynomial.legendre.leggauss(40)
    duration = 0.8
    for rho_value in (0.05, 5 / 6, 2.0):  # overdamped, critical, underdamped at eta = 0.1, beta = 0.5
        values = {eta: 0.1, beta: 0.5, rho: rho_value, lam: 0.0, sigma2: 1.5, S: 4.0, t: duration}
        A = evaluate_at(A_mode, values)
        noise = 2 * evaluate_at(D_mode, values) / float(evaluate_at(kappa, values))
        reference = np.zeros((2, 2))
        envelope = np.zeros((2, 2))
        for node, weight in zip(nodes, weights):
            E = scipy.linalg.expm(-A * duration * (node + 1) / 2)
            reference += weight * duration / 2 * (E @ noise @ E.T)
            envelope += weight * duration / 2 * (np.abs(E) @ np.abs(noise) @ np.abs(E).T)
        covariance = evaluate_at(oscillator.transient_covariance, values, (t,))
        # The integrand is entire with ||A t|| < 20: 40 nodes leave a quadrature error far
        # below rounding. Rounding: each expm within 64 eps ||A t|| of its size (twice per
        # term), the products and the 40-term sum within gamma(44), all relative to the
        # sum of absolute values
        bound = (2 * 64 * EPS * np.linalg.norm(A * duration, 2) + gamma(44)) * envelope
        assert np.all(np.abs(covariance - reference) <= bound + 2 * EPS * np.abs(reference))


def test_transient_covariance_tends_to_the_stationary_law(evaluate_at):
    # t -> infinity gives kappa^-1 U^-1 (eq. 27); t = 0 gives 0.
    values = {eta: 0.1, beta: 0.9, rho: 0.5, lam: 0.01, sigma2: 2.0, S: 8.0}
    stationary = evaluate_at(U_mode.inv() / kappa, values)
    at_zero = evaluate_at(oscillator.transient_covariance, {**values, t: 0.0}, (t,))
    late = evaluate_at(oscillator.transient_covariance, {**values, t: 1e3}, (t,))
    # 50-digit evaluations rounded once: at t = 0 the two terms cancel exactly up to the
    # working precision (1e-45 of the stationary size); late, e^{-2 gamma t} ~ e^{-1000} is
    # far below it, so the two agree to the final rounding (1 ulp)
    np.testing.assert_allclose(at_zero, 0.0, atol=1e-45 * np.abs(stationary).max())
    np.testing.assert_allclose(late, stationary, rtol=2 * EPS)
