"""Rounding-error bounds for tolerances that hold on any machine.

A tolerance tighter than about 1e-10 must follow from a bound that every correctly working BLAS,
LAPACK and libm satisfies, never from what one machine printed (BLAS kernels differ in summation
order, blocking and FMA use). The standard a-priori bounds (Higham, "Accuracy and Stability of
Numerical Algorithms", 2nd ed., ch. 3) hold for every order of summation:

* a sum or inner product of ``n`` terms: ``|fl(sum x_i) - sum x_i| <= gamma(n) sum |x_i|``;
* a matrix product of inner dimension ``n``: ``|fl(A B) - A B| <= gamma(n) |A| |B|``
  elementwise (:func:`product_bound`);
* more generally, an expression of sums and products evaluated in ``n`` rounded operations
  along its longest chain: ``gamma(n)`` times the same expression evaluated on absolute values
  (the "envelope"), to first order;
* a correctly rounded operation (``+ - * / sqrt``): half an ulp, ``eps/2`` relative; libm's
  ``exp``, ``log``, ``sin``... are not required to be correctly rounded but are within a few
  ulps on every platform we know of (we allow 4 ulps per call).

``gamma(n) = n u / (1 - n u)`` with the unit roundoff ``u = eps/2``; the helpers use ``eps`` in
place of ``u``, a factor 2 of margin.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EPS", "gamma", "lyapunov_rounding", "power_bound", "product_bound",
           "ULPS_PER_LIBM_CALL"]

EPS = float(np.finfo(np.float64).eps)

#: What a libm transcendental call may be off by, in ulps (not correctly rounded, but close).
ULPS_PER_LIBM_CALL = 4


def gamma(n, eps=EPS):
    """Relative error bound of ``n`` rounded operations in a chain: ``n eps / (1 - n eps)``."""
    n = float(n)
    if n * eps >= 0.5:
        raise ValueError(f"n = {n:g} operations is too many for the a-priori bound at eps = {eps}")
    return n * eps / (1.0 - n * eps)


def product_bound(A, B, eps=EPS):
    """Elementwise bound on ``|fl(A @ B) - A @ B|``: ``gamma(n) |A| |B|`` (n the inner dim)."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    return gamma(A.shape[-1], eps) * (np.abs(A) @ np.abs(B))


def power_bound(M, k, eps=EPS):
    """Elementwise bound on ``|fl(M^k) - M^k|`` for ``numpy.linalg.matrix_power`` (binary
    powering: at most 2 bit_length(k) products, each within gamma(n) |A| |B| <= gamma(n)
    |M|^(a+b)): first order, ``2 bit_length(k) gamma(n) |M|^k``."""
    M = np.asarray(M, dtype=np.float64)
    k = int(k)
    if k <= 1:
        return np.zeros_like(M)
    return 2 * k.bit_length() * gamma(M.shape[-1], eps) * np.linalg.matrix_power(np.abs(M), k)


def lyapunov_rounding(A, eps=EPS):
    """Relative (max-norm) error bound of a backward-stable solution of A B + B A^T = C, seen
    as the linear system K vec(B) = vec(C), K = I kron A + A kron I: ``c n^2 eps cond(K)``
    with c n^2 = 64 (for the n <= 8 used in the tests), any solver and any BLAS."""
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[-1]
    K = np.kron(np.eye(n), A) + np.kron(A, np.eye(n))
    return 64 * eps * np.linalg.cond(K)
