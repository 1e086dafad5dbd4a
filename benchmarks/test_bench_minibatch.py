"""The real-minibatch moment solver (docs/theory.md section 7): ratios in one run.

* ``closure="exact"`` on digits (640 weights, S = 128) at 60% of the Gaussian edge, where the
  moment map's radius is 0.84: GMRES started at the closure's solution against the plain
  fixed-point iteration E <- L(E) + B of the stationary equation, from zero, to the same
  relative residual (target >= 10x). Both apply the same operator; the fixed point needs about
  log(tol) / log(radius) applications.
* ``closure="diagonal"`` on mnist5k (7840 weights): the whole call (eigendecomposition, the
  O(N d^2) reductions, radius and solve) against a 2 s budget, and its ratio to one d x d solve.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import numeric
from experiments.data import load_digits, load_mnist5k
from numeric import _minibatch as mb

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The solver's internals run with one BLAS thread, as the public functions do."""
    with mb._single_threaded_blas():
        yield

TOL = 1e-10


def _fixed_point(mmap, tol=TOL, start=None, max_iter=100_000):
    """E <- L(E) + B until ||(I - L)E - B|| <= tol ||B|| (GMRES's stopping rule)."""
    B = mmap.constant()
    norm_b = np.linalg.norm(B)
    E = np.zeros_like(B) if start is None else start.copy()
    for count in range(1, max_iter + 1):
        LE = mmap.linear_part(E)
        if np.linalg.norm(E - LE - B) <= tol * norm_b:
            return E, count
        E = LE + B
    raise AssertionError("fixed point did not converge")


@pytest.fixture(scope="module")
def digits_map():
    data = load_digits(seed=0)
    X, Y = data.X, data.Y
    n, beta, S = X.shape[0], 0.9, 128
    eta = 0.6 * 2 * (1 + beta) / np.linalg.eigvalsh(X.T @ X / n).max()
    mmap = mb._MomentMap(mb._data(X, Y, 0.0), eta=eta, beta=beta, lam=0.0,
                         batch_factor=(n - S) / (S * (n - 1)))
    return X, Y, eta, mmap


def _krylov(mmap):
    p, _ = mb._closure_solution(mmap)
    d = mmap.h.size
    x0 = np.zeros((p.shape[0], d, d))
    x0[:, np.arange(d), np.arange(d)] = p
    return mb._solve_exact(mmap, TOL, x0=x0)


def test_exact_solver_vs_fixed_point_on_digits(compare, record_ratio, digits_map):
    X, Y, eta, mmap = digits_map
    E_krylov, matvecs = _krylov(mmap)
    E_fixed, iterations = _fixed_point(mmap)
    # same equation, same tolerance: the two solutions agree to the tolerance times 1/(1 - r)
    assert np.abs(E_krylov - E_fixed).max() <= 1e-8 * np.abs(E_fixed).max()
    ratio = compare(lambda: _krylov(mmap), lambda: _fixed_point(mmap),
                    name="minibatch exact solve, digits at 60% of the Gaussian edge: "
                         "fixed point / GMRES", target=10, rounds=3,
                    detail=f"radius {numeric.minibatch_moments(X, Y, eta=eta, beta=0.9, batch_size=128, closure='exact').radius:.2f}; "
                           f"{matvecs} vs {iterations} operator applications")
    record_ratio("minibatch exact solve, digits 60%: operator applications fixed point / GMRES",
                 iterations / matvecs, detail="independent of the machine's load")
    assert ratio > 0


def test_diagonal_closure_on_mnist5k(record_ratio):
    data = load_mnist5k(seed=0)
    X, Y = data.X, data.Y
    n, beta, S = X.shape[0], 0.9, 128
    eta = 0.1 * 2 * (1 + beta) / np.linalg.eigvalsh(X.T @ X / n).max()
    times = []
    for _ in range(3):
        mb._DATA_CACHE.clear()  # the whole call, reductions included
        start = time.perf_counter()
        numeric.minibatch_moments(X, Y, eta=eta, beta=beta, batch_size=S)
        times.append(time.perf_counter() - start)
    system = np.eye(784) + (X[:784] @ X[:784].T) / n
    solves = []
    for _ in range(3):
        start = time.perf_counter()
        np.linalg.solve(system, np.ones((784, 10)))
        solves.append(time.perf_counter() - start)
    t, t_solve = float(np.median(times)), float(np.median(solves))
    record_ratio("minibatch_moments diagonal closure, mnist5k (7840 weights): 2 s / its time",
                 2.0 / t, target=1,
                 detail=f"{t:.2f} s; {t / t_solve:.0f} d x d solves ({t_solve * 1e3:.1f} ms each)")
