"""Gradient-noise covariance: exact linear-regression formula and torch.func projection against
per-sample autograd loops, and the sigma^2 fit on data built so that Sigma = sigma^2 H."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from float_bounds import EPS, gamma
from numeric import (gradient_noise_projection, linear_regression_noise_covariance,
                     noise_scale_fit)


def per_sample_gradients_by_autograd(X, Y, weight):
    """g_i of l_i = ||y_i - W x_i||^2 / 2 by autograd, one sample at a time, W (c, d)."""
    grads = []
    for x, y in zip(torch.as_tensor(X), torch.as_tensor(Y)):
        t = torch.tensor(weight, requires_grad=True)
        loss = 0.5 * ((y - t @ x) ** 2).sum()
        (g,) = torch.autograd.grad(loss, t)
        grads.append(g.reshape(-1).numpy())
    return np.array(grads)


def covariance_envelope(X, Y, weight):
    """(1/N) sum_i e_i e_i^T with e_i = |g_i| + |g| bounded through absolute values: the
    magnitude that the rounding errors of any evaluation of Sigma are relative to."""
    W = np.atleast_2d(weight)
    residual = np.abs(X) @ np.abs(W).T + np.abs(np.reshape(Y, (len(X), -1)))
    g_abs = (residual[:, :, None] * np.abs(X)[:, None, :]).reshape(len(X), -1)
    e = g_abs + g_abs.mean(axis=0)
    return e.T @ e / len(X)


def covariance_rounding(X, Y, weight):
    # each route evaluates Sigma in at most 2N + d + 4 rounded operations along a chain
    # (residual: d; gradient: 1; mean: N; centring: 1; the sum of products: N; / N: 1), so
    # each is within gamma(2N + d + 4) of the envelope, and two routes within twice that
    N, d = X.shape
    return 2 * gamma(2 * N + d + 4), covariance_envelope(X, Y, weight)


@pytest.mark.parametrize("outputs", [None, 3])
def test_linear_regression_covariance_vs_loop(rng, outputs):
    N, d = 40, 5
    X = rng.standard_normal((N, d))
    shape = (d,) if outputs is None else (outputs, d)
    theta = rng.standard_normal(shape)
    Y = rng.standard_normal((N,) + shape[:-1])
    G = per_sample_gradients_by_autograd(X, Y, theta)
    expected = np.zeros((G.shape[1], G.shape[1]))
    g = G.mean(axis=0)
    for gi in G:
        expected += np.outer(gi - g, gi - g) / N
    factor, envelope = covariance_rounding(X, Y, theta)
    got = linear_regression_noise_covariance(X, Y, theta)
    assert np.all(np.abs(got - expected) <= factor * envelope)
    # the projected form agrees with projecting the full matrix; the projection adds 2 c d
    # operations per entry on both sides, relative to |V| envelope |V|^T
    V = np.linalg.qr(rng.standard_normal((G.shape[1], 4)))[0].T
    bound = (factor + 2 * gamma(2 * G.shape[1])) * (np.abs(V) @ envelope @ np.abs(V).T)
    got = linear_regression_noise_covariance(X, Y, theta, directions=V)
    assert np.all(np.abs(got - V @ expected @ V.T) <= bound)


def test_noise_covariance_layout_matches_the_hessian_eigenvectors(rng):
    """Sigma and H = I_c kron X^T X / N share the nn.Linear (c, d) flattening: with residuals
    that are +-s per sample pair (g = 0), Sigma = s^2 H exactly in that layout."""
    from numeric import linear_regression_eigenpairs
    N, d, c, s2 = 30, 4, 3, 0.25
    half = rng.standard_normal((N // 2, d))
    X = np.concatenate([half, half])
    W = rng.standard_normal((c, d))
    offsets = np.sqrt(s2) * np.concatenate([np.ones((N // 2, c)), -np.ones((N // 2, c))])
    offsets[:, 1:] = 0.0  # only output 0 is noisy: the layout must put the noise in block 0
    Y = X @ W.T + offsets
    sigma = linear_regression_noise_covariance(X, Y, W)
    eig = linear_regression_eigenpairs(X, num_outputs=c)
    H_full = (eig.eigenvectors.T * eig.eigenvalues) @ eig.eigenvectors
    expected = np.zeros_like(H_full)
    expected[:d, :d] = s2 * H_full[:d, :d]
    # Sigma carries the rounding of covariance_rounding; the reference s^2 Q diag(rho) Q^T
    # carries the eigensolver's backward error, ||Q diag(rho) Q^T - H||_2 <= p(n) eps ||H||_2
    # for a backward-stable symmetric eigensolver, p(n) a modest polynomial: n^2 here (n = c d)
    factor, envelope = covariance_rounding(X, Y, W)
    n = c * d
    eigensolver = n * n * EPS * s2 * np.abs(eig.eigenvalues).max()
    assert np.all(np.abs(sigma - expected) <= factor * envelope + eigensolver + 2 * n * EPS * s2
                  * np.abs(H_full).max())


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                          torch.nn.Tanh(), torch.nn.Dropout(0.5),
                                          torch.nn.Linear(6, 3))

    def forward(self, x):
        return self.layers(x)


def test_projection_vs_per_sample_loop_eval_mode(rng):
    model = SmallNet()
    model.train()
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        model.layers[1].running_mean.uniform_(-1, 1)
        model.layers[1].running_var.uniform_(0.5, 2)
    inputs = torch.randn(23, 4)
    targets = torch.randint(0, 3, (23,))
    loss_fn = torch.nn.functional.cross_entropy
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    V = torch.linalg.qr(torch.randn(P, 5)).Q.T  # 5 orthonormal directions
    result = gradient_noise_projection(model, loss_fn, inputs, targets, V, chunk_size=7)
    assert model.training and all(m.training for m in model.modules())  # restored

    model.eval()
    projections = []
    for x, y in zip(inputs, targets):
        grads = torch.autograd.grad(loss_fn(model(x[None]), y[None]), params)
        projections.append((V @ torch.cat([g.reshape(-1) for g in grads])).numpy())
    projections = np.array(projections)
    centred = projections - projections.mean(axis=0)
    expected = centred.T @ centred / len(projections)
    # the same gradients batched (vmap) and one by one: the per-sample gradients of this
    # 2-layer net of width 6 agree to a few hundred eps of their magnitude, far below 1e-10
    # of the covariance's scale; a wrong mode (train instead of eval) or layout changes O(1)
    np.testing.assert_allclose(result, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_projection_of_linear_model_matches_exact_formula(rng):
    N, d = 50, 6
    X = rng.standard_normal((N, d))
    Y = rng.standard_normal(N)
    model = torch.nn.Linear(d, 1, bias=False)
    theta = model.weight.detach().numpy()[0]
    V = np.linalg.qr(rng.standard_normal((d, 3)))[0].T
    loss_fn = lambda out, y: 0.5 * ((out[:, 0] - y) ** 2).mean()  # noqa: E731
    result = gradient_noise_projection(model, loss_fn, torch.as_tensor(X), torch.as_tensor(Y),
                                       torch.as_tensor(V))
    sigma = linear_regression_noise_covariance(X, Y, theta)
    # torch.func per-sample gradients (float64) against the closed form: both within the
    # envelope bound of covariance_rounding, plus the projection on 3 directions (2 d ops)
    factor, envelope = covariance_rounding(X, Y, theta)
    bound = (factor + 2 * gamma(2 * d)) * (np.abs(V) @ envelope @ np.abs(V).T)
    assert np.all(np.abs(result - V @ sigma @ V.T) <= bound)


def data_with_sigma_equal_sigma2_h(rng, N, d, sigma2):
    """Each input appears twice, with residuals +sigma and -sigma at theta: then g = 0 and
    Sigma = (1/N) sum x x^T sigma^2 = sigma^2 H exactly."""
    half = rng.standard_normal((N // 2, d)) * rng.uniform(0.2, 3.0, d)
    X = np.concatenate([half, half])
    theta = rng.standard_normal(d)
    signs = np.concatenate([np.ones(N // 2), -np.ones(N // 2)])
    Y = X @ theta + np.sqrt(sigma2) * signs
    return X, Y, theta


def test_sigma2_fit_recovers_sigma2_exactly(rng):
    sigma2 = 0.37
    N, d = 200, 6
    X, Y, theta = data_with_sigma_equal_sigma2_h(rng, N, d, sigma2)
    H = X.T @ X / len(X)
    rho, Q = np.linalg.eigh(H)
    rho, Q = rho[::-1][:4], Q[:, ::-1][:, :4]
    sigma = linear_regression_noise_covariance(X, Y, theta)
    fit = noise_scale_fit(sigma, rho, Q.T)
    # Sigma = sigma^2 H holds exactly in exact arithmetic; in floating point the projected
    # P = Q^T Sigma Q differs from sigma^2 diag(rho) by at most (Frobenius norms)
    #   delta = |Sigma - Sigma_exact| + sigma^2 |H - H_exact|      (rounding of both products)
    #         + sigma^2 p(d) eps ||H||_2                            (eigh's backward error)
    #         + gamma(2d) || |Q|^T |Sigma| |Q| ||                   (the projection)
    # and then, because the fit is the least-squares one, mismatch and off-diagonal mass are
    # <= delta / ||P||_F, the fitted sigma^2 is within delta / ||rho||, each diagonal ratio
    # within delta / rho_l. p(d) = d^2 (a backward-stable symmetric eigensolver).
    factor, envelope = covariance_rounding(X, Y, theta)
    h_rounding = gamma(N + 1) * (np.abs(X).T @ np.abs(X)) / N
    delta = (np.linalg.norm(factor * envelope) + sigma2 * np.linalg.norm(h_rounding)
             + sigma2 * d * d * EPS * rho.max()
             + gamma(2 * d) * np.linalg.norm(np.abs(Q).T @ np.abs(sigma) @ np.abs(Q)))
    norm = np.linalg.norm(fit.projected_covariance)
    # sharp enough to mean something: below the 1e-8 floor of sqrt(sum P^2 - sum diag^2)
    assert delta / norm < 1e-9
    assert abs(fit.sigma2 - sigma2) <= delta / np.linalg.norm(rho)
    assert fit.relative_mismatch <= delta / norm
    assert fit.off_diagonal_fraction <= delta / norm
    assert np.all(np.abs(fit.diagonal_ratios - sigma2) <= delta / rho)
    # the projected form gives the same fit (the same projection, computed by the caller)
    again = noise_scale_fit(Q.T @ sigma @ Q, torch.tensor(rho.copy()))
    assert abs(again.sigma2 - sigma2) <= delta / np.linalg.norm(rho)


def test_sigma2_fit_mismatch_measures_departure():
    rho = np.array([4.0, 2.0, 1.0])
    # diagonal sigma^2 rho with s = 0.5, plus symmetric off-diagonal mass that does not move
    # the least-squares sigma^2 (it only reads the diagonal)
    off = np.array([[0.0, 0.3, 0.0], [0.3, 0.0, -0.1], [0.0, -0.1, 0.0]])
    projected = np.diag(0.5 * rho) + off
    fit = noise_scale_fit(projected, rho)
    # sigma^2 = (rho . diag) / (rho . rho): sums of 3 positive terms and one division, so
    # within gamma(4); the norms are sums of 9 squares and a square root on either side, and
    # the diagonal residuals (zero up to gamma(5) |P_ll|) add only their squares: gamma(32) covers
    # both routes
    assert fit.sigma2 == pytest.approx(0.5, rel=gamma(4))
    norm = np.linalg.norm(projected)
    assert fit.relative_mismatch == pytest.approx(np.linalg.norm(off) / norm, rel=gamma(32))
    assert fit.off_diagonal_fraction == pytest.approx(np.linalg.norm(off) / norm, rel=gamma(32))
    # a diagonal that is not proportional to rho: Sigma = diag(1, 1, 1) against rho
    fit = noise_scale_fit(np.eye(3), rho)
    assert fit.sigma2 == pytest.approx(7.0 / 21.0, rel=gamma(4))
    # the residuals 1 - sigma^2 rho_l (>= 1/3 in size) carry sigma^2's error times rho_l <= 4
    # relative to sigma^2 rho_l <= 4/3: at most 4 gamma(5) relative each, then the norms as above
    assert fit.relative_mismatch == pytest.approx(
        np.linalg.norm(np.eye(3) - (7.0 / 21.0) * np.diag(rho)) / np.sqrt(3), rel=4 * gamma(32))
    # no off-diagonal mass is exactly none: the entries themselves are summed (no cancellation)
    assert fit.off_diagonal_fraction == 0.0


def test_validation():
    with pytest.raises(ValueError, match="weight must have shape"):
        linear_regression_noise_covariance(np.ones((3, 2)), np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="projected covariance"):
        noise_scale_fit(np.eye(3), np.ones(2))
    with pytest.raises(ValueError, match="eigenvectors must have shape"):
        gradient_noise_projection(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss,
                                  torch.ones(3, 2), torch.ones(3, 1), torch.ones(2, 5))
