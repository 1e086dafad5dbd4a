"""Stationary statistics (appendix G): C, eq. (12), eq. (13) in closed form, equipartition (G.3)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from ousym import oscillator, stationary
from ousym.linreg import A_block, A_mode, D_block, kappa
from ousym.symbols import H, I_n, S, Sigma, beta, eta, j, k, lam, n, rho, sigma2, t, tau

from float_bounds import EPS  # noqa: E402  (tests/numeric is on the pythonpath)
from ousym_strategies import SPOT, admissible  # noqa: E402  (tests/ousym is on pytest's pythonpath)



def test_velocity_correlation_is_the_22_entry_of_the_propagator():
    for index in range(3):
        correlation = stationary.velocity_correlation.args[index][0]
        propagator = oscillator.propagator[1, 1].args[index][0]
        assert sp.simplify(correlation - propagator.subs(t, tau)) == 0
    steps = stationary.velocity_correlation_steps
    assert steps.has(k) and not steps.has(tau)
    assert sp.simplify(steps.args[0][0] - stationary.velocity_correlation.args[0][0].subs(tau, eta * k)) == 0


def test_lag_weighted_sum_closed_form_is_the_geometric_identity():
    # (1 - x)^2 sum_{j=1}^{k-1} (k - j) x^j = x (x^k - k x + k - 1), symbolically in x for k = 1..8,
    # and for symbolic integer k through sympy's own summation.
    x = sp.Symbol("x")
    for steps in range(1, 9):
        direct = sum((steps - i) * x**i for i in range(1, steps))
        closed = stationary.lag_weighted_geometric_sum(sp.Matrix([[x]]), sp.Matrix([[x**steps]]), steps)[0, 0]
        assert sp.cancel(direct - closed) == 0
    integer_k = sp.Symbol("K", integer=True, positive=True)
    summed = sp.summation((integer_k - j) * x**j, (j, 1, integer_k - 1))
    closed = x * (x**integer_k - integer_k * x + integer_k - 1) / (1 - x) ** 2
    assert sp.simplify(sp.piecewise_fold(summed).args[-1][0] - closed) == 0


def test_global_displacement_has_no_sum_left():
    assert not stationary.global_displacement_mode.has(sp.Sum)
    assert stationary.global_displacement_sum_mode.has(sp.Sum)


@SPOT
@given(values=admissible, steps=st.integers(1, 60))
def test_global_displacement_closed_form_matches_the_direct_double_sum(values, steps, evaluate_at):
    # eq. (13) for one mode: eta^2 Var(b) [k + 2 sum_{j<k} (k - j) C(eta j)], C from scipy's expm.
    A = evaluate_at(A_mode, values)
    variance = float(evaluate_at(stationary.var_b_ss, values))
    one_step = scipy.linalg.expm(-A * values[eta])
    power = np.eye(2)
    lag_sum = 0.0
    for lag in range(1, steps):
        power = power @ one_step
        lag_sum += (steps - lag) * power[1, 1]
    reference = values[eta] ** 2 * variance * (steps + 2 * lag_sum)
    closed = evaluate_at(stationary.global_displacement_mode, {**values, k: steps}, (k,))
    # The reference accumulates ~k^2 roundoff-sized terms of size eta^2 Var(b) k.
    scale = values[eta] ** 2 * variance * steps * (1 + 2 * steps)
    np.testing.assert_allclose(closed, reference, rtol=0, atol=1e-10 * scale)


def test_global_displacement_sum_form_agrees_with_the_closed_form(evaluate_at):
    values = {eta: 0.1, beta: 0.6, rho: 0.7, lam: 0.05, sigma2: 1.2, S: 3.0}
    for steps in (1, 2, 7):
        expanded = stationary.global_displacement_sum_mode.subs(k, steps).doit()
        closed = evaluate_at(stationary.global_displacement_mode, {**values, k: steps}, (k,))
        # two high-precision evaluations (30 and 50 digits) of the same value at the same
        # binary inputs, each rounded once: 1 ulp apart; 1e-12 leaves room for the digits the
        # 30-digit evaluation of the sum may lose to cancellation (at most 1e12 here)
        np.testing.assert_allclose(float(expanded.subs(values).evalf(30)), closed, rtol=1e-12)


def test_continuous_displacement_route_limits(evaluate_at):
    # The exact OU route 2 Var(a) (1 - [e^{-A t}]_11): ballistic eta^2 Var(b) k^2 at small t, like the
    # sum route at k = 1 (eta^2 Var(b) exactly), and saturation at 2 Var(a) for t -> infinity.
    for rho_value in (0.3, 300.0):  # over- and underdamped at eta = 1e-3, beta = 0.9
        values = {eta: 1e-3, beta: 0.9, rho: rho_value, lam: 0.0, sigma2: 1.0, S: 1.0}
        ballistic = float(values[eta] ** 2 * evaluate_at(stationary.var_b_ss, values))
        # both 50-digit evaluations rounded once, then one float product for eta^2 Var(b)
        np.testing.assert_allclose(evaluate_at(stationary.global_displacement_mode, {**values, k: 1}, (k,)),
                                   ballistic, rtol=8 * EPS)
        small = 1e-4  # steps; the next term of the expansion is O(gamma eta k) = O(1e-5) relative
        np.testing.assert_allclose(
            evaluate_at(stationary.global_displacement_continuous_mode, {**values, k: small}, (k,)),
            ballistic * small**2, rtol=1e-4,
        )
        late = evaluate_at(stationary.global_displacement_continuous_mode, {**values, k: 10**7}, (k,))
        np.testing.assert_allclose(late, 2 * float(evaluate_at(stationary.var_a_ss, values)), rtol=1e-9)


def test_instantaneous_speed_and_equipartition_identities():
    # eq. (12): eta^2 sigma^2 tr(H) / (S (1 - beta^2)) is eta^2 Var(b) with rho -> tr(H).
    trace = sp.Trace(H)
    assert sp.simplify(stationary.instantaneous_speed - (eta**2 * stationary.var_b_ss).subs(rho, trace)) == 0
    # G.3 per mode: h Var(a) / 2 = m Var(b) / 2.
    assert sp.simplify(stationary.equipartition_mode.lhs - stationary.equipartition_mode.rhs) == 0
    # the per-mode sides are linear in rho with no constant term, so the sum over modes is rho -> tr(H).
    per_mode = sp.cancel(stationary.kinetic_energy_mean_mode)
    assert sp.diff(per_mode, rho, 2) == 0 and per_mode.subs(rho, 0) == 0
    assert sp.simplify(stationary.equipartition.lhs - stationary.equipartition.rhs) == 0
    assert sp.simplify(stationary.kinetic_energy_mean - per_mode.subs(rho, trace)) == 0


@SPOT
@given(values=admissible, seed=st.integers(0, 2**32 - 1))
def test_equipartition_against_the_full_block_lyapunov_solution(values, seed, evaluate_at):
    # Independent route: the 2n x 2n stationary covariance from scipy's Lyapunov solver for a random
    # H (n = 3, Sigma = sigma^2 H). E[L_lambda] - L_lambda(mu) = tr((H + lambda I) Cov_theta) / 2,
    # E[K] = m tr(Cov_v) / 2 with m = eta (1 + beta) / 2, both = eta sigma^2 tr(H) / (4 S (1 - beta)).
    generator = np.random.default_rng(seed)
    basis = np.linalg.qr(generator.normal(size=(3, 3)))[0]
    spectrum = generator.uniform(1e-3, 10.0, size=3)
    hessian = basis @ np.diag(spectrum) @ basis.T
    scalars = {eta: values[eta], beta: values[beta], lam: values[lam], sigma2: values[sigma2], S: values[S]}
    three = {n: 3}
    A = np.array(A_block.subs(three).subs(H.subs(three), sp.Matrix(hessian)).subs(scalars).as_explicit(), dtype=float)
    D = np.array(D_block.subs(three).subs(Sigma.subs(three), sp.Matrix(values[sigma2] * hessian)).subs(scalars)
                 .as_explicit(), dtype=float)
    covariance = scipy.linalg.solve_continuous_lyapunov(A, 2 * D / float(kappa.subs(scalars)))
    excess = np.trace((hessian + values[lam] * np.eye(3)) @ covariance[:3, :3]) / 2
    kinetic = values[eta] * (1 + values[beta]) / 2 * np.trace(covariance[3:, 3:]) / 2
    predicted = values[eta] * values[sigma2] * spectrum.sum() / (4 * values[S] * (1 - values[beta]))
    # Lyapunov backward error ~ 1e-16 cond(A), cond(A) <~ 1e7 over this range.
    np.testing.assert_allclose(excess, predicted, rtol=1e-6)
    np.testing.assert_allclose(kinetic, predicted, rtol=1e-6)
