"""The SymPy derivation and the numeric code compute the same quantities.

Two links of the pipeline that no other test closes:

* the modified loss Psi (eq. 8, 39, 45-46): ``ousym.potentials`` and ``numeric.ou_modified_loss``
  (with ``numeric.ou_decomposition``'s U) share the paper's normalisation
  Psi = (z - z*)^T U (z - z*) / 2, the one for which e^{-kappa Psi} is the stationary density;
* the global displacement E||Delta_k||^2 (eq. 13): the closed forms of
  ``ousym.stationary.global_displacement_mode`` (SDE) and
  ``ousym.discrete.discrete_global_displacement_mode`` (the exact recursion), evaluated at 50
  digits, against ``numeric.global_displacement``, whose lag sum ``numeric._lagsum`` is derived
  by hand (see its module docstring), on a grid of regimes and lags.

The SymPy expressions are evaluated with mpmath (``lambdify(..., "mpmath")``) at the exact
binary values of the float64 inputs, so both sides see the same numbers and the Piecewise picks
the regime of those exact values.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy as sp

import numeric
from ousym import discrete, potentials, stationary
from ousym.linreg import A_mode, D_mode, kappa
from ousym.symbols import S, a_mode, b_mode, beta, eta, k, lam, rho, sigma2

EPS = np.finfo(np.float64).eps


def _mp(value):
    return mpmath.mpf(float(value))  # the float64's exact binary value


# --- the modified loss Psi ----------------------------------------------------------------------

MODE_ARGUMENTS = (rho, eta, beta, lam, sigma2, S)
MODES = [  # (rho, eta, beta, lam, sigma2, S): under-, near critically and overdamped modes
    (1.0, 0.1, 0.9, 0.0, 1.0, 32.0),
    (2.5, 0.01, 0.5, 0.1, 0.3, 8.0),
    (0.7, 0.3, 0.0, 0.05, 2.0, 1.0),
    (1e-2, 1.0, 0.99, 1e-3, 0.5, 128.0),
]


def _numeric_mode_matrices(rho_, eta_, beta_, lam_, sigma2_):
    # A_l and D_l written from the paper (eq. 41-42 per mode, docs/theory.md section 3), not
    # taken from ousym
    scale = eta_ * (1 + beta_)
    A = np.array([[0.0, -1.0], [2 * (rho_ + lam_) / scale, 2 * (1 - beta_) / scale]])
    D = np.array([[0.0, 0.0], [0.0, 2 * (1 - beta_) * sigma2_ * rho_ / scale]])
    return A, D


def _decomposition_error_bound(A, D, U):
    # U = B^{-1} with A B + B A^T = 2 D solved as a 4x4 linear system K vec(B) = vec(2 D):
    # a backward-stable solve and inverse give relative errors <= c n eps (cond(K) + cond(B))
    # in U (first order), and Psi = z^T U z / 2 >= lambda_min(U) |z|^2 / 2 turns an error in U
    # into a relative error in Psi of at most cond(U) times that. c n = 64 is generous for n = 4.
    K = np.kron(np.eye(2), A) + np.kron(A, np.eye(2))
    return 64 * EPS * (np.linalg.cond(K) + np.linalg.cond(U)) * np.linalg.cond(U)


@pytest.mark.parametrize("mode", MODES)
def test_numeric_modified_loss_is_the_sympy_one(mode):
    symbolic = sp.lambdify((a_mode, b_mode, *MODE_ARGUMENTS), potentials.modified_loss_mode,
                           "mpmath")
    rho_, eta_, beta_, lam_, sigma2_, _ = mode
    A, D = _numeric_mode_matrices(rho_, eta_, beta_, lam_, sigma2_)
    decomposition = numeric.ou_decomposition(A, D)
    bound = _decomposition_error_bound(A, D, decomposition.U)
    assert bound < 1e-8  # well-conditioned modes: the check below is sharp
    points = np.random.default_rng(7).standard_normal((20, 2)) * [0.3, 3.0]
    got = numeric.ou_modified_loss(points, decomposition.U)
    with mpmath.workdps(30):
        expected = [float(symbolic(*map(_mp, z), *map(_mp, mode))) for z in points]
    np.testing.assert_allclose(got, expected, rtol=bound, atol=0)
    # the minimum is the stationary mean z* = (mu, 0): shifting both leaves Psi unchanged
    shift = np.array([0.25, 0.0])
    np.testing.assert_allclose(numeric.ou_modified_loss(points + shift, decomposition.U,
                                                        mean=shift), got, rtol=64 * EPS, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_gibbs_density_of_the_sympy_psi_is_the_numeric_stationary_law(mode):
    # p_ss = kappa sqrt(det U)/(2 pi) e^{-kappa Psi} (ousym) is the Gaussian density with the
    # covariance numeric.ou_stationary_covariance returns (eq. 27): true only with Psi's 1/2
    density = sp.lambdify((a_mode, b_mode, *MODE_ARGUMENTS), potentials.stationary_density_mode,
                          "mpmath")
    rho_, eta_, beta_, lam_, sigma2_, S_ = mode
    A, D = _numeric_mode_matrices(rho_, eta_, beta_, lam_, sigma2_)
    kappa_ = S_ * (1 - beta_**2)
    covariance = numeric.ou_stationary_covariance(A, D, kappa=kappa_)
    precision = np.linalg.inv(covariance)
    points = np.random.default_rng(8).multivariate_normal([0.0, 0.0], covariance, size=10)
    quadratic = np.einsum("ni,ij,nj->n", points, precision, points)
    gaussian = np.exp(-quadratic / 2) / (2 * np.pi * math.sqrt(np.linalg.det(covariance)))
    with mpmath.workdps(30):
        expected = np.array([float(density(*map(_mp, z), *map(_mp, mode))) for z in points])
    # the same first-order bound as above, on the exponent (points within a few standard
    # deviations: |quadratic| <= 50), plus the normalisation's determinant
    bound = _decomposition_error_bound(A, D, precision) * (1 + np.max(np.abs(quadratic)))
    assert bound < 1e-6
    np.testing.assert_allclose(gaussian, expected, rtol=bound, atol=0)


def test_sympy_mode_matrices_are_the_ones_the_numeric_test_builds():
    # the two sides above share their inputs only through these formulas
    for mode in MODES:
        values = dict(zip(MODE_ARGUMENTS, map(sp.Rational, mode)))
        A, D = _numeric_mode_matrices(*mode[:5])
        np.testing.assert_allclose(np.array(A_mode.subs(values), dtype=float), A,
                                   rtol=4 * EPS, atol=0)
        np.testing.assert_allclose(np.array(D_mode.subs(values), dtype=float), D,
                                   rtol=4 * EPS, atol=0)
        assert float(kappa.subs(values)) == pytest.approx(mode[5] * (1 - mode[2] ** 2),
                                                          rel=4 * EPS)


# --- the global displacement: SymPy closed forms against the hand-derived lag sum -------------

DISPLACEMENT_ARGUMENTS = (rho, k, eta, beta, lam, S, sigma2)
LAGS = (1, 2, 3, 10, 1000, 10**5)


def _eta_for(zeta, beta_, h):
    """The learning rate that puts a mode of curvature h at damping ratio zeta (section 4)."""
    return (1 - beta_) ** 2 / (2 * (1 + beta_) * h * zeta**2)


def _regime_grid(model):
    """(rho, eta, beta, lam) over the regimes of ``model``; exactly critical cases are dyadic,
    so that they are exactly critical in binary too."""
    cases = []
    for beta_ in (0.0, 0.5, 0.9, 0.99):
        for zeta in (1e-2, 0.3, 1 - 1e-8, 1 + 1e-8, 3.0, 100.0):
            for rho_, lam_ in ((1.0, 0.0), (1e-6, 1e-4)):
                eta_ = _eta_for(zeta, beta_, rho_ + lam_)
                if model == "sde" or eta_ * (rho_ + lam_) < 2 * (1 + beta_) * (1 - 1e-3):
                    cases.append((rho_, eta_, beta_, lam_))
    if model == "sde":
        # zeta = 1 exactly: (1 - beta)^2 = 2 eta (1 + beta) h, dyadic only for beta = 0
        cases += [(1.0, 0.5, 0.0, 0.0), (0.75, 0.5, 0.0, 0.25), (4.0, 0.125, 0.0, 0.0)]
    else:
        # double roots of the recursion, eta h = (1 -+ sqrt(beta))^2, at beta = 1/4 and 9/16
        cases += [(2.0, 0.125, 0.25, 0.0), (9.0, 0.25, 0.25, 0.0),
                  (0.5, 0.125, 0.5625, 0.0), (48.0, 0.0625, 0.5625, 1.0)]
    return cases


def _kernel_bound(k_, eta_, beta_, h):
    # the lag sum's stated accuracy (numeric/_lagsum.py, tests/numeric/test_lagsum.py):
    # 1e-10 + 64 eps (1 + gamma t + alpha t), plus 16 eps for the stationary variance and the
    # products eta^2 Var(v) W (a few correctly rounded operations)
    g = (1 - beta_) / (1 + beta_)  # eta gamma
    D = g * g - 2 * eta_ * h / (1 + beta_)  # eta^2 (gamma^2 - omega^2)
    return 1e-10 + 64 * EPS * (1 + g * k_ + math.sqrt(abs(D)) * k_) + 16 * EPS


@pytest.fixture(scope="module")
def displacement_closed_forms():
    return {"sde": sp.lambdify(DISPLACEMENT_ARGUMENTS, stationary.global_displacement_mode,
                               "mpmath"),
            "discrete": sp.lambdify(DISPLACEMENT_ARGUMENTS,
                                    discrete.discrete_global_displacement_mode, "mpmath")}


@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_global_displacement_kernel_matches_the_sympy_closed_form(model,
                                                                  displacement_closed_forms):
    closed_form = displacement_closed_forms[model]
    S_, sigma2_ = 32.0, 0.5
    lags = np.array(LAGS, dtype=np.float64)
    failures = []
    for rho_, eta_, beta_, lam_ in _regime_grid(model):
        got = numeric.global_displacement([rho_], lags[:, None], eta=eta_, beta=beta_, lam=lam_, S=S_,
                                          sigma2=sigma2_, model=model)
        for lag, value in zip(LAGS, got):
            inputs = (_mp(rho_), mpmath.mpf(lag), _mp(eta_), _mp(beta_), _mp(lam_), _mp(S_),
                      _mp(sigma2_))
            # the closed forms cancel (k^2 terms at k = 1e5, (I - E)^{-2} for slow modes): 50
            # digits leave more than 20, which the comparison with 70 digits confirms
            with mpmath.workdps(50):
                exact = closed_form(*inputs)
            with mpmath.workdps(70):
                finer = closed_form(*inputs)
            assert abs(exact - finer) <= mpmath.mpf(10) ** -20 * abs(finer)
            error = abs(value - float(exact)) / float(abs(exact))
            if not error <= _kernel_bound(lag, eta_, beta_, rho_ + lam_):
                failures.append((rho_, eta_, beta_, lam_, lag, value, float(exact), error))
    assert not failures, failures[:5]
