"""The regime-uniform primitives equal the three-regime forms (symbolically and at 30 digits)."""

from __future__ import annotations

import pytest
import sympy as sp

from ousym import discrete, oscillator, stationary
from ousym.linreg import A_mode
from ousym.symbols import alpha_sym, beta, eta, gamma_sym, k, lam, rho, t
from ousym.uniform import (DampedCosh, DampedCoshMinus, DampedCoshPlus, DampedSinhc,
                           MomentumPowerAA, MomentumPowerS, MomentumPowerVV, SpectralFraction,
                           split_spectral_fraction, uniform_matrix_power, uniform_propagator)

omega2_sym = sp.Symbol("omega2", positive=True)


def _generic_drift(omega2):
    return sp.Matrix([[0, -1], [omega2, 2 * gamma_sym]])


@pytest.mark.parametrize("regime, omega2", [
    ("overdamped", gamma_sym**2 - alpha_sym**2),
    ("underdamped", gamma_sym**2 + alpha_sym**2),
    ("critical", gamma_sym**2),
])
def test_uniform_propagator_equals_each_regime_form(regime, omega2):
    uniform = uniform_propagator(_generic_drift(omega2), t).applyfunc(
        lambda e: e.rewrite(sp.Piecewise))
    reference = oscillator.generic_regime_propagators()[regime]
    difference = (uniform - reference).applyfunc(sp.simplify)
    assert difference == sp.zeros(2, 2)


def test_uniform_propagator_of_the_mode_drift_has_the_papers_gamma_and_omega2():
    uniform = uniform_propagator(A_mode, t)
    for entry in (uniform[0, 0], uniform[1, 1]):
        gamma, omega2, time = entry.args
        assert sp.simplify(gamma - oscillator.gamma) == 0
        assert sp.simplify(omega2 - oscillator.omega2) == 0
        assert time == t


@pytest.mark.parametrize("cls, combine", [
    (DampedCosh, lambda g, c, s: c),
    (DampedSinhc, lambda g, c, s: s),
    (DampedCoshPlus, lambda g, c, s: c + g * s),
    (DampedCoshMinus, lambda g, c, s: c - g * s),
])
def test_damped_primitives_are_entire_in_the_discriminant(cls, combine):
    # the series in Delta of the overdamped form is the class's entire series, term by term
    delta = sp.Symbol("Delta")
    root = sp.sqrt(delta)
    plain = sp.exp(-gamma_sym * t) * combine(gamma_sym, sp.cosh(root * t), sp.sinh(root * t) / root)
    terms = 6
    expansion = sp.series(plain, delta, 0, terms).removeO()
    entire = cls.series(gamma_sym, gamma_sym**2 - delta, t, terms)
    assert sp.simplify(sp.expand(expansion - entire)) == 0


def _mode_values(zeta):
    """Exact rational eta, beta and a rho with the given damping ratio squared (zeta^2 rational)."""
    e, b = sp.Rational(1, 10), sp.Rational(1, 2)
    h = (1 - b) ** 2 / (2 * e * (1 + b) * zeta**2)
    return {eta: e, beta: b, lam: sp.Rational(1, 100), rho: h - sp.Rational(1, 100)}


@pytest.mark.parametrize("zeta2", [sp.Rational(9, 4), 1, sp.Rational(1, 9)])
def test_velocity_correlation_spec_equals_stationary_three_regime_form(zeta2):
    values = _mode_values(sp.sqrt(zeta2))
    uniform = uniform_propagator(A_mode, eta * k)[1, 1]
    for steps in (0, 1, sp.Rational(7, 2), 40):
        point = {**values, k: steps}
        mine = uniform.subs(point).rewrite(sp.Piecewise).evalf(30)
        theirs = stationary.velocity_correlation_steps.subs(point).evalf(30)
        assert abs(mine - theirs) <= sp.Float(10) ** -25


def _momentum_point(x, b):
    """Exact (eta, beta, rho, lam) with eta h = x."""
    return {eta: sp.Rational(1, 4), beta: b, lam: 0, rho: 4 * x}


@pytest.mark.parametrize("x, b", [
    (sp.Rational(1, 100), sp.Rational(1, 2)),   # real roots, slow mode
    (sp.Rational(1, 2), sp.Rational(9, 10)),    # complex roots
    ((1 - sp.sqrt(sp.Rational(1, 4))) ** 2, sp.Rational(1, 4)),  # double root (critical)
    (sp.Rational(7, 2), sp.Rational(1, 2)),     # negative real roots, stable
    (sp.Rational(1, 3), 0),                     # beta = 0
    (1, 0),                                     # beta = 0, nilpotent M
])
def test_uniform_matrix_power_equals_matrix_powers_exactly(x, b):
    point = _momentum_point(x, b)
    power = uniform_matrix_power(discrete.M, k, x=eta * (rho + lam), beta=beta)
    matrix = discrete.M.subs(point)
    for steps in range(0, 7):
        exact = matrix**steps
        by_series = power.subs(point).subs(k, steps).replace(
            lambda e: isinstance(e, (MomentumPowerS, MomentumPowerAA, MomentumPowerVV)),
            lambda e: type(e).series(*e.args, terms=steps + 1))
        assert (by_series - exact).applyfunc(sp.simplify) == sp.zeros(2, 2)
        by_regime = power.subs(point).subs(k, steps).applyfunc(
            lambda e: e.rewrite(sp.Piecewise)).evalf(40)
        assert max(abs(v) for v in (by_regime - exact.evalf(40))) <= sp.Float(10) ** -30


def test_split_spectral_fraction_is_an_identity_and_removes_the_singularity():
    for expr in (stationary.var_a_ss, discrete.discrete_var_a):
        split = split_spectral_fraction(expr, rho, lam)
        assert sp.simplify(split.rewrite(sp.Piecewise).subs(lam, 1) - expr.subs(lam, 1)) == 0
        assert SpectralFraction(0, 0).rewrite(sp.Piecewise) == 1
        # finite at rho = lam = 0 (the lam = 0 limit)
        limit = sp.limit(expr.subs(lam, 0), rho, 0, "+")
        assert sp.simplify(split.subs({rho: 0, lam: 0}).rewrite(sp.Piecewise) - limit) == 0


def test_builders_refuse_a_matrix_without_the_assumed_structure():
    with pytest.raises(RuntimeError, match="structure"):
        uniform_propagator(sp.Matrix([[1, -1], [2, 3]]), t)
    with pytest.raises(RuntimeError, match="structure"):
        uniform_matrix_power(sp.Matrix([[1, 0], [0, 2]]), k, x=eta * rho, beta=beta)
