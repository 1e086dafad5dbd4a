"""A = (D + Q)U: the SGD closed form (eq. 43), the Lyapunov route, and the symmetric route."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import sympy as sp
from hypothesis import given

from ousym import kwon_ao_decomposition, solve_lyapunov, symmetric_drift_decomposition
from ousym.decomposition import Q_block, Q_mode, U_block, U_mode
from ousym.linreg import A_block, A_mode, D_block, D_mode, kappa
from ousym.stationary import var_a_ss, var_b_ss
from ousym.symbols import H, S, Sigma, beta, eta, lam, n, rho, sigma2

from float_bounds import EPS, lyapunov_rounding  # noqa: E402  (tests/numeric is on the pythonpath)

from ousym_strategies import SPOT, admissible  # noqa: E402  (tests/ousym is on pytest's pythonpath)


def is_zero_matrix(matrix) -> bool:
    # Rational functions: cancel decides zero; simplify is the fallback for anything else.
    return all(sp.cancel(entry) == 0 or sp.simplify(entry) == 0 for entry in sp.Matrix(matrix))


def test_mode_closed_form_satisfies_every_identity():
    # eq. (43), (19): A = (D+Q)U, Q skew, U symmetric, B = U^-1 solves AB + BA^T = 2D.
    B = U_mode.inv()
    assert is_zero_matrix(A_mode - (D_mode + Q_mode) * U_mode)
    assert is_zero_matrix(Q_mode + Q_mode.T)
    assert is_zero_matrix(U_mode - U_mode.T)
    assert is_zero_matrix(A_mode * B + B * A_mode.T - 2 * D_mode)


def test_block_closed_form_for_an_explicit_symmetric_hessian(explicit_matrix):
    # eq. (41)-(43) with n = 2, a generic symmetric H and Sigma = sigma^2 H, written out entrywise.
    h11, h12, h22 = sp.symbols("h11 h12 h22", real=True)
    explicit_H = sp.ImmutableMatrix([[h11, h12], [h12, h22]])
    two = {n: 2}

    def explicit(block):
        return explicit_matrix(block.xreplace(two).xreplace(
            {H.xreplace(two): explicit_H, Sigma.xreplace(two): sigma2 * explicit_H}))

    A, D, Q, U = (explicit(b) for b in (A_block, D_block, Q_block, U_block))
    assert is_zero_matrix(A - (D + Q) * U)
    assert is_zero_matrix(Q + Q.T)
    assert is_zero_matrix(U - U.T)
    # AB + BA^T = 2D with B = U^-1, multiplied by U on both sides (no 4x4 symbolic inverse).
    assert is_zero_matrix(U * A + A.T * U - 2 * U * D * U)


def test_stationary_variances_are_the_diagonal_of_kappa_inverse_U_inverse():
    # eq. (27): the printed closed forms equal kappa^-1 U^-1.
    stationary = U_mode.inv() / kappa
    assert sp.simplify(stationary[0, 0] - var_a_ss) == 0
    assert sp.simplify(stationary[1, 1] - var_b_ss) == 0
    assert stationary[0, 1] == 0


def test_lyapunov_route_recovers_the_sgd_closed_form():
    result = kwon_ao_decomposition(A_mode, D_mode)
    assert is_zero_matrix(result.Q - Q_mode)
    assert is_zero_matrix(result.U - U_mode)
    for name, residual in result.residuals().items():
        assert is_zero_matrix(residual), name


def test_lyapunov_route_on_a_non_normal_three_dimensional_drift():
    A = sp.Matrix([[2, 1, 0], [-1, 3, 1], [0, -2, 1]])
    D = sp.Matrix([[1, 0, 0], [0, 2, 1], [0, 1, 1]])
    result = kwon_ao_decomposition(A, D)
    for name, residual in result.residuals().items():
        assert is_zero_matrix(residual), name
    reference = scipy.linalg.solve_continuous_lyapunov(np.array(A, dtype=float), 2 * np.array(D, dtype=float))
    # exact B (rounded once) against a backward-stable solve (float_bounds.lyapunov_rounding)
    A_float = np.array(A, dtype=float)
    np.testing.assert_allclose(np.array(result.B, dtype=float), reference, rtol=0,
                               atol=(lyapunov_rounding(A_float) + EPS) * np.abs(reference).max())


def test_symmetric_route_refuses_the_sgd_drift():
    with pytest.raises(ValueError, match="symmetric"):
        symmetric_drift_decomposition(A_mode, D_mode)


def test_symmetric_route_agrees_with_the_lyapunov_route_for_a_symmetric_drift():
    # eq. (24)-(25) apply to a symmetric A; the decomposition is unique, so both routes agree.
    A = sp.Matrix([[3, 1], [1, 2]])
    D = sp.Matrix([[1, 0], [0, 2]])
    eigen = symmetric_drift_decomposition(A, D)
    lyapunov = kwon_ao_decomposition(A, D)
    assert is_zero_matrix(eigen.Q - lyapunov.Q)
    assert is_zero_matrix(eigen.U - lyapunov.U)
    for name, residual in eigen.residuals().items():
        assert is_zero_matrix(residual), name


@pytest.mark.parametrize(
    ("A", "D", "error", "match"),
    [
        ("not a matrix", sp.eye(2), TypeError, "A must be an explicit square"),
        (sp.eye(2), sp.eye(3), ValueError, "same shape"),
        (sp.Matrix([[1, 2, 3]]), sp.eye(1), ValueError, "square"),
        (sp.eye(2), sp.Matrix([[1, 1], [0, 1]]), ValueError, "symmetric"),
    ],
)
def test_invalid_inputs_are_refused_with_a_message(A, D, error, match):
    with pytest.raises(error, match=match):
        kwon_ao_decomposition(A, D)


def test_lyapunov_equation_without_a_unique_solution_is_refused():
    # eigenvalues 1 and -1 of A sum to 0: AB + BA^T = 2D is singular in B.
    with pytest.raises(ValueError, match="unique"):
        solve_lyapunov(sp.Matrix([[1, 0], [0, -1]]), sp.eye(2))


mode_parameters = admissible


@SPOT
@given(values=mode_parameters)
def test_U_inverse_matches_scipy_lyapunov(values, evaluate_at):
    # Independent route: scipy's Bartels-Stewart solver for A B + B A^T = 2 D.
    A = evaluate_at(A_mode, values)
    D = evaluate_at(D_mode, values)
    B = np.linalg.inv(evaluate_at(U_mode, values))
    reference = scipy.linalg.solve_continuous_lyapunov(A, 2 * D)
    # rtol: the solver's backward error scales with cond(A) ~ 1/(eta h), at most ~1e6 here.
    # atol: entries near zero are met to the solve's bound (float_bounds.lyapunov_rounding)
    # and the inverse of the 50-digit U (64 eps cond(U)), relative to the largest entry
    rounding = lyapunov_rounding(A) + 64 * EPS * np.linalg.cond(B)
    np.testing.assert_allclose(B, reference, rtol=1e-8, atol=rounding * np.abs(reference).max())
