"""Symbolic checks of the real-minibatch theory (docs/theory.md section 7): every identity is
simplified to zero, the batch factors are checked by enumerating every batch."""

from __future__ import annotations

import itertools

import sympy as sp

from ousym import discrete as dis
from ousym import minibatch as mb
from ousym.symbols import S, beta, eta, lam, rho, sigma2


def test_cross_mode_stein_solves_the_stein_equation():
    Sm = sp.Matrix(mb.cross_mode_stein)
    residual = Sm - mb.M_mode(mb.h_l) * Sm * mb.M_mode(mb.h_m).T - mb.G_mode * mb.G_mode.T
    assert sp.simplify(residual) == sp.zeros(2, 2)
    # the same as solving the four linear equations directly
    assert sp.simplify(mb._solve_cross_mode_stein() - Sm) == sp.zeros(2, 2)


def test_cross_mode_stein_is_symmetric_under_exchanging_the_modes():
    swapped = mb.cross_mode_stein.subs({mb.h_l: mb.h_m, mb.h_m: mb.h_l}, simultaneous=True)
    assert sp.simplify(swapped - mb.cross_mode_stein.T) == sp.zeros(2, 2)


def test_diagonal_stein_solution_is_the_section_6_stationary_covariance():
    diagonal = mb.cross_mode_stein.subs(mb.h_m, mb.h_l).subs(mb.h_l, rho + lam)
    per_unit = dis.P_ss / dis.noise_variance
    assert sp.simplify(diagonal - per_unit) == sp.zeros(2, 2)
    noise = sigma2 * rho / S
    assert sp.simplify(mb.unit_var_a.subs(mb.h_l, rho + lam) * noise - dis.discrete_var_a) == 0
    assert sp.simplify(mb.unit_var_v.subs(mb.h_l, rho + lam) * noise - dis.discrete_var_v) == 0


def test_batch_factors_by_enumerating_every_batch():
    values = sp.symbols("g0:5", real=True)
    n = len(values)
    mean = sum(values) / n
    population = sum((v - mean) ** 2 for v in values) / n
    for size in (1, 2, 3):
        without = mb.enumerated_batch_covariance(values, size, replacement=False)
        factor = mb.batch_factor_without_replacement.subs({mb.N_samples: n, S: size})
        assert sp.simplify(without - factor * population) == 0
    with_replacement = mb.enumerated_batch_covariance(values[:4], 2, replacement=True)
    mean4 = sum(values[:4]) / 4
    population4 = sum((v - mean4) ** 2 for v in values[:4]) / 4
    assert sp.simplify(with_replacement - population4 / 2) == 0


def test_noise_covariance_is_the_batch_gradient_covariance_quadratic_in_theta():
    """c = 1, d = 2, N = 3: Cov(g_B | theta) over every batch of 2 equals c_S Sigma(theta),
    with Sigma from noise_covariance_entry, for symbolic data, weights and reference point."""
    n, size = 3, 2
    x = sp.Matrix(n, 2, sp.symbols("x0:6", real=True))
    y = sp.Matrix(n, 1, sp.symbols("y0:3", real=True))
    theta = sp.Matrix(1, 2, sp.symbols("t0:2", real=True))
    mu = sp.Matrix(1, 2, sp.symbols("m0:2", real=True))
    per_sample = [((theta * x[i, :].T)[0] - y[i]) * x[i, :] for i in range(n)]  # G_i, 1 x 2
    factor = mb.batch_factor_without_replacement.subs({mb.N_samples: n, S: size})
    rbar = sp.Matrix(n, 1, lambda i, _: (mu * x[i, :].T)[0] - y[i])
    for l, m in ((0, 0), (0, 1), (1, 1)):
        batches = [sum((per_sample[i] for i in b), sp.zeros(1, 2)) / size
                   for b in itertools.combinations(range(n), size)]
        avg = sum(batches, sp.zeros(1, 2)) / len(batches)
        cov = sum((b[l] - avg[l]) * (b[m] - avg[m]) for b in batches) / len(batches)
        entry = mb.noise_covariance_entry(theta - mu, x, rbar, 0, l, 0, m)
        assert sp.expand(cov - factor * entry) == 0
        # quadratic in theta: third derivatives vanish
        assert sp.diff(entry, theta[0], 3) == 0


def test_closure_with_no_state_dependence_is_section_6():
    A, b = sorted(mb.closure_noise.free_symbols, key=str)  # (A p_j)_l and b_jl
    assert {str(A), str(b)} == {"(A p_j)_l", "b_{jl}"}
    p = mb.closure_equation.rhs.subs({A: 0, b: sigma2 * rho / S}).subs(mb.h_l, rho + lam)
    assert sp.simplify(p - dis.discrete_var_a) == 0


def test_single_mode_divergence_edge_in_closed_form():
    """One mode alone (c = d = 1, lam = 0): the map is c_S (kappa - rho^2) T_a, kappa = E[x^4];
    its radius reaches 1 exactly at ``single_mode_edge``, inside the noiseless edge."""
    radius = mb.c_S * (mb.fourth_moment - rho**2) * mb.unit_var_a.subs(mb.h_l, rho)
    (edge,) = sp.solve(sp.Eq(radius, 1), eta)
    assert sp.simplify(edge - mb.single_mode_edge) == 0
    ratio = sp.simplify(mb.single_mode_edge / (2 * (1 + beta) / rho))
    assert sp.simplify(ratio - (1 - beta) * rho**2 / ((1 - beta) * rho**2 + (1 + beta) * mb.c_S
                                                      * (mb.fourth_moment - rho**2))) == 0


def test_one_mode_noise_variance_is_quadratic_with_the_stated_moments():
    n = 3
    x = sp.Matrix(n, 1, sp.symbols("x0:3", real=True))
    rbar = sp.Matrix(n, 1, sp.symbols("r0:3", real=True))
    a = sp.Symbol("a", real=True)
    entry = mb.noise_covariance_entry(sp.Matrix([[a]]), x, rbar, 0, 0, 0, 0)
    mean = lambda f: sum(f(i) for i in range(n)) / n  # noqa: E731
    rho_value = mean(lambda i: x[i] ** 2)
    gbar = mean(lambda i: rbar[i] * x[i])
    moments = {mb.m_4: mean(lambda i: x[i] ** 4),
               mb.m_3r: mean(lambda i: rbar[i] * x[i] ** 3) - rho_value * gbar,
               mb.m_2r: mean(lambda i: rbar[i] ** 2 * x[i] ** 2) - gbar ** 2,
               rho: rho_value, mb.c_S: 1, mb.a_mode: a}
    assert sp.expand(mb.noise_variance_mode.subs(moments) - entry) == 0
