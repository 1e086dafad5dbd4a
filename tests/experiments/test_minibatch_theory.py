"""Real minibatch SGD against the exact second-moment theory (docs/theory.md section 7).

Each comparison is a z-score: (seed mean of the per-seed time average - prediction) / s.e.,
the standard error across independent seeds (time averages over a window many correlation
times long, so seeds are the independent replicas). |z| <= 3 fails a correct theory with
probability about 0.3% per comparison; the seeds are fixed, so a pass is reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest

import numeric
from experiments.linreg import least_squares, run_sgd
from numeric import _minibatch as mb


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The solver's internals run with one BLAS thread, as the public functions do."""
    with mb._single_threaded_blas():
        yield


def _closure_burn_in(X, Y, *, eta, beta, batch_size, tol=1e-3, max_steps=50_000):
    """Steps from (mu, 0) until E||delta_k||^2 is within ``tol`` (relative) of its stationary
    value, by the mode-diagonal closure run forward in time (its moments are those of the
    exact recursion without the cross-mode covariances, within 1e-4 of it on these problems).
    From P_0 = 0 the moments of a positive linear recursion grow monotonically to their limit,
    so once within ``tol`` they stay within it."""
    data = mb._data(X, Y, 0.0)
    n = X.shape[0]
    mmap = mb._MomentMap(data, eta=eta, beta=beta, lam=0.0,
                         batch_factor=(n - batch_size) / (batch_size * (n - 1)))
    A, b = mmap.closure_matrices()
    target = eta ** 2 * (mmap.unit_var_v * mb._closure_solution(mmap)[0]
                         / np.where(mmap.active, mmap.unit_var_a, 1.0)).sum()
    h = mmap.h
    Paa, Pav, Pvv = (np.zeros_like(b) for _ in range(3))
    for k in range(1, max_steps + 1):
        noise = Paa @ A.T + b
        a2 = (1 - eta * h) ** 2 * Paa + 2 * (1 - eta * h) * eta * beta * Pav + (
            eta * beta) ** 2 * Pvv
        av = -(1 - eta * h) * h * Paa + ((1 - eta * h) * beta - eta * beta * h) * Pav + (
            eta * beta * beta) * Pvv
        v2 = h * h * Paa - 2 * h * beta * Pav + beta * beta * Pvv
        Paa, Pav, Pvv = a2 + eta * eta * noise, av + eta * noise, v2 + noise
        if abs(eta ** 2 * Pvv.sum() - target) <= tol * target:
            return k
    return max_steps


def _z(per_seed, predicted):
    mean = per_seed.mean()
    se = per_seed.std(ddof=1) / np.sqrt(per_seed.size)
    return (mean - predicted) / se, mean, se


def test_small_problem_many_seeds_follow_the_exact_theory():
    rng = np.random.default_rng(7)
    n, d, c = 24, 4, 2
    X = rng.standard_normal((n, d)) * np.geomspace(2.0, 0.5, d)
    Y = X @ rng.standard_normal((d, c)) + 0.5 * rng.standard_normal((n, c))
    beta, S = 0.6, 4
    edge = numeric.minibatch_divergence_edge(X, beta=beta, batch_size=S, closure="exact")
    eta = 0.4 * edge  # well inside the edge: light tails, fast mixing
    theory = numeric.minibatch_moments(X, Y, eta=eta, beta=beta, batch_size=S, closure="exact")
    problem = least_squares(X, Y)
    directions = np.stack([np.kron(np.eye(c)[j], theory.eigenvectors[:, l])
                           for j in range(c) for l in range(d)])
    burn = _closure_burn_in(X, Y, eta=eta, beta=beta, batch_size=S, tol=1e-4)
    traj = run_sgd(problem, eta=eta, beta=beta, batch_size=S, num_steps=burn + 2000,
                   num_seeds=400, seed=11, directions=directions, loss_every=1)
    window = traj.steps >= burn
    z_speed, *_ = _z(traj.local_sq[window].mean(0), theory.speed)
    z_loss, *_ = _z(traj.excess_loss[traj.loss_steps >= burn].mean(0), theory.excess_loss)
    var_b = (traj.b[window] ** 2).mean(0)  # (seeds, c*d): the stationary mean is 0
    z_modes = [_z(var_b[:, p], theory.var_v.reshape(-1)[p])[0] for p in range(c * d)]
    assert abs(z_speed) <= 3, z_speed
    assert abs(z_loss) <= 3, z_loss
    # 8 modes at once: a Bonferroni-style 3.5 keeps the family-wise false failure near 0.4%
    assert max(abs(z) for z in z_modes) <= 3.5, z_modes


@pytest.fixture(scope="module")
def digits():
    from experiments.data import load_digits

    data = load_digits(seed=0)
    return data.X, data.Y


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6])
def test_digits_real_minibatch_sgd_follows_the_exact_theory_not_the_gaussian_one(digits,
                                                                                  fraction):
    X, Y = digits
    n = X.shape[0]
    beta, S = 0.9, 256
    gaussian_edge = 2 * (1 + beta) / np.linalg.eigvalsh(X.T @ X / n).max()
    eta = fraction * gaussian_edge
    theory = numeric.minibatch_moments(X, Y, eta=eta, beta=beta, batch_size=S, closure="exact")
    # The Gaussian theory at its best: section 6 with each mode's noise Sigma(mu)_pp, i.e. the
    # minibatch noise frozen at the optimum (no growth with theta - mu).
    mmap = mb._MomentMap(mb._data(X, Y, 0.0), eta=eta, beta=beta, lam=0.0,
                         batch_factor=theory.batch_factor)
    gaussian = eta ** 2 * float((mmap.unit_var_v * mmap.closure_matrices()[1]).sum())
    burn = _closure_burn_in(X, Y, eta=eta, beta=beta, batch_size=S)
    traj = run_sgd(least_squares(X, Y), eta=eta, beta=beta, batch_size=S,
                   num_steps=burn + 1000, num_seeds=24, seed=3)
    z, measured, se = _z(traj.local_sq[traj.steps >= burn].mean(0), theory.speed)
    z_gaussian = (measured - gaussian) / se
    print(f"digits S={S} eta={fraction:g} of the Gaussian edge: measured {measured:.5g} +- "
          f"{se:.2g}, exact {theory.speed:.5g} (z = {z:.2f}), Gaussian {gaussian:.5g} "
          f"(z = {z_gaussian:.1f}), burn-in {burn}")
    assert abs(z) <= 3
    assert z_gaussian > 3  # the state-dependent noise only adds variance
