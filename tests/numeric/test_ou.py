"""General OU numerics against independent routes: scipy's Lyapunov solver and expm, the
closed-form SGD mode of docs/theory.md section 3, and the sampler's empirical moments."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from float_bounds import EPS, lyapunov_rounding
from numeric import (ou_decomposition, ou_lag_covariance, ou_stationary_covariance,
                     sample_ou)


def random_stable_pair(rng, batch, n, rank=None):
    """Non-symmetric A with spectrum shifted into Re > 0 (margin 0.1..1), and D = L L^T."""
    M = rng.standard_normal(batch + (n, n))
    shift = -np.linalg.eigvals(M).real.min(axis=-1) + rng.uniform(0.1, 1.0, batch)
    A = M + shift[..., None, None] * np.eye(n)
    L = rng.standard_normal(batch + (n, n if rank is None else rank))
    return A, L @ np.swapaxes(L, -1, -2)


def sgd_mode(eta, beta, h, sigma2_rho):
    A = np.array([[0.0, -1.0], [2 * h / (eta * (1 + beta)), 2 * (1 - beta) / (eta * (1 + beta))]])
    D = np.array([[0.0, 0.0], [0.0, 2 * (1 - beta) * sigma2_rho / (eta * (1 + beta))]])
    return A, D


# scipy's Bartels-Stewart and our Kronecker route are both backward stable: agreement to
# 1e-9 relative for these well-conditioned draws (stability margin >= 0.1).
@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_decomposition_identities_random_nonsymmetric(rng, n):
    A, D = random_stable_pair(rng, (16,), n)
    Q, U, B = ou_decomposition(A, D)
    scale = np.abs(D).max()
    np.testing.assert_allclose(A @ B + B @ np.swapaxes(A, -1, -2), 2 * D, atol=1e-9 * scale)
    # exact: Q is returned as (Q - Q^T) / 2, and fl(a - b) = -fl(b - a) in IEEE arithmetic
    np.testing.assert_array_equal(Q, -np.swapaxes(Q, -1, -2))
    np.testing.assert_allclose((D + Q) @ U, A, atol=1e-8 * np.abs(A).max())
    np.testing.assert_allclose(U @ B, np.broadcast_to(np.eye(n), B.shape), atol=1e-8)
    for i in range(A.shape[0]):
        reference = scipy.linalg.solve_continuous_lyapunov(A[i], 2 * D[i])
        np.testing.assert_allclose(B[i], reference, rtol=1e-9, atol=1e-9 * np.abs(reference).max())
    assert np.all(np.linalg.eigvalsh(B) > 0)


def test_decomposition_matches_sgd_mode_closed_form():
    # docs/theory.md section 3, with s = sigma^2 rho:
    # Q_l = [[0, -s], [s, 0]], U_l = diag(2h/(eta(1+beta) s), 1/s)
    for eta, beta, h, s in [(0.1, 0.9, 2.0, 0.3), (1e-3, 0.5, 7.0, 1.5), (0.5, 0.0, 0.2, 2.0)]:
        A, D = sgd_mode(eta, beta, h, s)
        Q, U, B = ou_decomposition(A, D)
        # Q's diagonal is exactly 0 (see above); its off-diagonal is checked relatively
        np.testing.assert_allclose(Q, [[0, -s], [s, 0]], rtol=1e-10, atol=0)
        expected = np.diag([2 * h / (eta * (1 + beta) * s), 1 / s])
        # U = B^{-1}: B within lyapunov_rounding of the exact solution (relative), and the
        # inverse adds cond(B) times that and its own 64 eps cond(B), relative to max|U|: this
        # is how close to zero U's off-diagonal entries can be expected to come
        condition = np.linalg.cond(B)
        zero_level = (lyapunov_rounding(A) + 64 * EPS) * condition * expected.max()
        assert zero_level < 1e-4 * expected.max()
        np.testing.assert_allclose(np.diag(U), np.diag(expected), rtol=1e-10, atol=0)
        assert abs(U[0, 1]) <= zero_level and abs(U[1, 0]) <= zero_level


def test_broadcasting_and_kappa(rng):
    A, D = random_stable_pair(rng, (4, 1), 3)
    D2 = D[:, 0][None]  # (1, 4, 3, 3) against A (4, 1, 3, 3) -> (4, 4, 3, 3)
    Q, U, B = ou_decomposition(A, D2)
    assert B.shape == (4, 4, 3, 3)
    kappa = np.array([1.0, 2.0, 4.0, 8.0])
    stationary = ou_stationary_covariance(A, D2, kappa=kappa)
    # two solves of the same system, each within lyapunov_rounding of the exact B
    bound = np.array([[2 * lyapunov_rounding(A[i, 0]) * np.abs(B[i, j]).max()
                       for j in range(4)] for i in range(4)])
    difference = np.abs(stationary - B / kappa[:, None, None]).max(axis=(-2, -1))
    assert np.all(difference <= bound / kappa + 4 * EPS * np.abs(B).max(axis=(-2, -1)))


def test_lag_covariance_against_expm(rng):
    A, D = random_stable_pair(rng, (5,), 4)
    lags = np.array([0.0, 0.3, 1.0, 2.5, -0.7])
    kappa = 3.0
    result = ou_lag_covariance(A, D, lags, kappa=kappa)
    for i in range(5):
        sigma = scipy.linalg.solve_continuous_lyapunov(A[i], 2 * D[i]) / kappa
        tau = lags[i]
        expected = (scipy.linalg.expm(-A[i] * tau) @ sigma if tau >= 0
                    else sigma @ scipy.linalg.expm(-A[i].T * -tau))
        # scipy's expm (Pade with scaling and squaring) and both Lyapunov solvers are accurate
        # to about 1e-13 relative to the matrices' size here; 1e-9 of the largest entry
        # bounds every entry, including those that happen to be near zero
        np.testing.assert_allclose(result[i], expected, rtol=1e-9,
                                   atol=1e-9 * np.abs(expected).max())
    # lag 0 is the stationary covariance (e^{0} = I exactly): two solves of one system
    stationary = ou_stationary_covariance(A[0], D[0], kappa=kappa)
    bound = 2 * lyapunov_rounding(A[0]) * np.abs(stationary).max() + 4 * EPS * np.abs(
        stationary).max()
    assert np.abs(result[0] - stationary).max() <= bound


def test_sampler_transient_moments_within_standard_errors(rng):
    A, D = sgd_mode(0.1, 0.8, 1.5, 0.4)
    kappa, dt, steps, paths = 2.0, 0.1, 15, 20000
    z0 = np.array([1.0, -0.5])
    path = sample_ou(A, D, np.broadcast_to(z0, (paths, 2)), dt, steps, kappa=kappa, rng=rng)
    assert path.shape == (steps + 1, paths, 2)
    np.testing.assert_array_equal(path[0], np.broadcast_to(z0, (paths, 2)))
    t = dt * steps
    propagator = scipy.linalg.expm(-A * t)
    sigma = ou_stationary_covariance(A, D, kappa=kappa)
    mean = propagator @ z0
    cov = sigma - propagator @ sigma @ propagator.T  # eq. 26
    final = path[-1]
    # mean: standard error sqrt(var / paths); 4.5 SE on 2 components, false alarm < 1e-4
    np.testing.assert_array_less(np.abs(final.mean(0) - mean), 4.5 * np.sqrt(np.diag(cov) / paths))
    # covariance entries: Var(S_ij) = (C_ii C_jj + C_ij^2) / paths for Gaussian samples
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / paths)
    np.testing.assert_array_less(np.abs(np.cov(final.T, bias=True) - cov), 4.5 * se)


def test_sampler_with_mean_keeps_stationary_law(rng):
    A, D = random_stable_pair(rng, (), 3)
    mu = np.array([1.0, -2.0, 0.5])
    sigma = ou_stationary_covariance(A, D)
    paths = 20000
    z0 = mu + rng.multivariate_normal(np.zeros(3), sigma, size=paths)
    final = sample_ou(A, D, z0, 0.37, 3, mean=mu, rng=rng)[-1]
    np.testing.assert_array_less(np.abs(final.mean(0) - mu), 4.5 * np.sqrt(np.diag(sigma) / paths))
    se = np.sqrt((np.outer(np.diag(sigma), np.diag(sigma)) + sigma**2) / paths)
    np.testing.assert_array_less(np.abs(np.cov(final.T, bias=True) - sigma), 4.5 * se)


def test_unstable_drift_is_refused_with_amount():
    A = np.array([[0.5, 0.0], [0.0, -0.25]])
    with pytest.raises(ValueError, match=r"stable.*real part -0\.25"):
        ou_decomposition(A, np.eye(2))
    with pytest.raises(ValueError, match=r"real part 0 "):
        ou_stationary_covariance(np.array([[0.0, -1.0], [1.0, 0.0]]), np.eye(2))


def test_bad_diffusion_is_refused_with_amount():
    A = np.eye(2)
    with pytest.raises(ValueError, match=r"symmetric.*0\.5"):
        ou_decomposition(A, np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"positive semi-definite.*-1"):
        ou_decomposition(A, np.array([[1.0, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="shape"):
        ou_decomposition(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="dt"):
        sample_ou(A, np.eye(2), np.zeros(2), -1.0, 3)
    with pytest.raises(ValueError, match="kappa"):
        ou_stationary_covariance(A, np.eye(2), kappa=0.0)
