"""Shared helpers for the symbolic-layer tests: numeric evaluation of derived expressions.

Spot checks evaluate a derived SymPy object at admissible parameter values through
``sympy.lambdify(..., "mpmath")`` (50 significant digits, so that the closed forms' own
cancellation does not set the tolerance) and compare with an independent float64 route
(scipy, numpy, or a simulation).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

from ousym.symbols import S, beta, eta, lam, rho, sigma2

#: The mode parameters in a fixed order.
PARAMETERS = (eta, beta, rho, lam, sigma2, S)

_compiled: dict[tuple[int, tuple], object] = {}


def evaluate(expression, values: dict, extra: tuple = ()) -> np.ndarray:
    """Evaluate ``expression`` (scalar or matrix) at ``values`` (symbol -> number) in mpmath
    with 50 digits, returning float64 (an array for matrices).

    ``extra`` lists further symbols (``t``, ``k``, ...) that ``values`` also gives.
    """
    symbols = tuple(PARAMETERS) + tuple(extra)
    key = (id(expression), symbols)
    if key not in _compiled:
        _compiled[key] = (expression, sp.lambdify(symbols, expression, "mpmath"))
    function = _compiled[key][1]
    with mpmath.workdps(50):
        result = function(*(mpmath.mpf(values[s]) if not isinstance(values[s], int) else values[s] for s in symbols))
        if isinstance(result, (sp.MatrixBase, mpmath.matrix)):
            rows = result.rows
            cols = result.cols
            return np.array([[float(mpmath.re(result[r, c])) for c in range(cols)] for r in range(rows)])
        return np.float64(float(mpmath.re(result)))


@pytest.fixture(scope="session")
def evaluate_at():
    return evaluate


def write_out(expression) -> sp.Matrix:
    """An explicit ``Matrix`` of a matrix expression whose symbols were already replaced by
    explicit matrices, multiplied out block by block (SymPy's ``as_explicit`` on products of
    block matrices is about 100 times slower)."""
    if isinstance(expression, sp.MatrixBase):
        return sp.Matrix(expression)
    if isinstance(expression, sp.MatMul):
        scalar, product = sp.Integer(1), None
        for factor in expression.args:
            if isinstance(factor, (sp.MatrixBase, sp.MatrixExpr)):
                matrix = write_out(factor)
                product = matrix if product is None else product * matrix
            else:
                scalar *= factor
        return scalar * product
    if isinstance(expression, sp.MatAdd):
        terms = [write_out(term) for term in expression.args]
        return sum(terms[1:], terms[0])
    if isinstance(expression, sp.BlockMatrix):
        blocks = expression.blocks
        return sp.Matrix.vstack(*(
            sp.Matrix.hstack(*(write_out(blocks[r, c]) for c in range(blocks.cols))) for r in range(blocks.rows)
        ))
    if isinstance(expression, sp.Inverse):
        return write_out(expression.arg).inv()
    if isinstance(expression, sp.Transpose):
        return write_out(expression.arg).T
    if isinstance(expression, sp.ZeroMatrix):
        return sp.zeros(*expression.shape)
    if isinstance(expression, sp.Identity):
        return sp.eye(expression.shape[0])
    return sp.Matrix(expression.as_explicit())


@pytest.fixture(scope="session")
def explicit_matrix():
    return write_out
