"""The exact second-moment theory of real minibatch noise (docs/theory.md section 7).

Independent routes: the forward iteration of the full one-step moment recursion in the original
(row-major) coordinates with Kronecker products, the section-6 kernels, and an entrywise
perturbation bound between the mode-diagonal closure and the exact solution.
"""

from __future__ import annotations

import numpy as np
import pytest

import numeric
from numeric import _minibatch as mb


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The solver's internals run with one BLAS thread, as the public functions do."""
    with mb._single_threaded_blas():
        yield


def _small_problem(rng, n=12, d=3, c=2):
    X = rng.standard_normal((n, d)) * np.geomspace(2.0, 0.5, d)
    Y = rng.standard_normal((n, c)) + X @ rng.standard_normal((d, c))
    return X, Y


def _forward_moments(X, Y, *, eta, beta, lam, c_S, max_steps=50_000):
    """Iterate P_{k+1} = M P M^T + G c_S E[Sigma(theta_k)] G^T from P_0 = 0 (start at mu),
    in the original coordinates: vec row-major, Sigma(theta) = (1/N) sum_i (r r^T) (x) (x x^T)
    - vec g vec g^T, E[r_i r_i^T] = (I (x) x_i^T) P_ee (I (x) x_i) + rbar_i rbar_i^T."""
    n, d = X.shape
    c = Y.shape[1]
    H = X.T @ X / n
    mu = np.linalg.solve(H + lam * np.eye(d), X.T @ Y / n).T
    rbar = X @ mu.T - Y
    gbar = (-lam * mu).reshape(-1)
    eye = np.eye(c * d)
    K = np.kron(np.eye(c), H + lam * np.eye(d))
    M = np.block([[eye - eta * K, eta * beta * eye], [-K, beta * eye]])
    G = np.vstack([-eta * eye, -eye])
    IH = np.kron(np.eye(c), H)
    rows = [np.kron(np.eye(c), X[i][None, :]) for i in range(n)]
    P = np.zeros((2 * c * d, 2 * c * d))
    for _ in range(max_steps):
        Pee = P[:c * d, :c * d]
        sigma = sum(np.kron(R @ Pee @ R.T + np.outer(rb, rb), np.outer(x, x))
                    for R, rb, x in zip(rows, rbar, X)) / n
        sigma -= IH @ Pee @ IH + np.outer(gbar, gbar)
        new = M @ P @ M.T + G @ (c_S * sigma) @ G.T
        if np.abs(new - P).max() <= 1e-14 * np.abs(new).max():  # a few ulps: settled
            return new
        P = new
    raise AssertionError("forward moment recursion did not settle")


def _mode_variances(P, Q, c):
    d = Q.shape[0]
    half = c * d
    basis = np.stack([np.kron(np.eye(c)[j], Q[:, l]) for j in range(c) for l in range(d)])
    var_a = np.einsum("pi,ij,pj->p", basis, P[:half, :half], basis).reshape(c, d)
    var_v = np.einsum("pi,ij,pj->p", basis, P[half:, half:], basis).reshape(c, d)
    return var_a, var_v


@pytest.mark.parametrize("lam,replacement", [(0.0, False), (0.1, False), (0.0, True)])
def test_exact_solution_is_the_limit_of_the_moment_recursion(rng, lam, replacement):
    X, Y = _small_problem(rng)
    n, beta, S = X.shape[0], 0.5, 4
    edge = numeric.minibatch_divergence_edge(X, beta=beta, lam=lam, batch_size=S,
                                             replacement=replacement, closure="exact")
    eta = 0.6 * edge
    moments = numeric.minibatch_moments(X, Y, eta=eta, beta=beta, lam=lam, batch_size=S,
                                        replacement=replacement, closure="exact")
    c_S = 1 / S if replacement else (n - S) / (S * (n - 1))
    # (n - S) / (S (n - 1)): three correctly rounded operations on either side, in any order
    assert moments.batch_factor == pytest.approx(c_S, rel=6 * np.finfo(float).eps)
    P = _forward_moments(X, Y, eta=eta, beta=beta, lam=lam, c_S=c_S)
    var_a, var_v = _mode_variances(P, moments.eigenvectors, Y.shape[1])
    # GMRES stops at a relative residual of 1e-10; the error is at most that times
    # ||(I - L)^{-1}|| <= 1 / (1 - radius) (about 3 here); the forward iteration stops when a
    # step changes P by 1e-14 relative, leaving radius/(1 - radius) of that. 1e-8 covers both
    # with two orders to spare.
    scale = var_a.max()
    np.testing.assert_allclose(moments.var_a, var_a, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(moments.var_v, var_v, rtol=0, atol=1e-8 * var_v.max())
    assert moments.speed == pytest.approx(eta ** 2 * np.trace(P[P.shape[0] // 2:,
                                                                P.shape[0] // 2:]), rel=1e-8)
    h = moments.eigenvalues + lam
    assert moments.excess_loss == pytest.approx(0.5 * float((h * var_a).sum()), rel=1e-8)


def test_radius_crosses_one_at_the_edge_and_the_recursion_blows_up_beyond(rng):
    X, Y = _small_problem(rng)
    beta, S = 0.5, 4
    edge = numeric.minibatch_divergence_edge(X, beta=beta, batch_size=S, closure="exact")
    gaussian_edge = 2 * (1 + beta) / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    assert 0 < edge < gaussian_edge
    below = numeric.minibatch_moments(X, Y, eta=0.999 * edge, beta=beta, batch_size=S,
                                      closure="exact")
    assert 0.98 < below.radius < 1
    with pytest.raises(ValueError, match=r"second moments diverge.*edge eta = "):
        numeric.minibatch_moments(X, Y, eta=1.001 * edge, beta=beta, batch_size=S,
                                  closure="exact")
    # independent route: beyond the edge the one-step moment recursion grows without bound
    with pytest.raises(AssertionError, match="did not settle"):
        _forward_moments(X, Y, eta=1.05 * edge, beta=beta, lam=0.0,
                         c_S=(12 - S) / (S * 11), max_steps=3000)


def test_cross_mode_stein_solves_the_stein_equation_and_reduces_to_section_6(rng):
    eta, beta = 0.3, 0.8
    h_l, h_m = rng.uniform(0.01, 2 * (1 + beta) / eta * 0.99, size=(2, 50))
    s = np.stack(mb.cross_mode_stein(h_l, h_m, eta=eta, beta=beta), -1).reshape(-1, 2, 2)
    M = lambda h: np.stack([np.stack([1 - eta * h, np.full_like(h, eta * beta)], -1),  # noqa: E731
                            np.stack([-h, np.full_like(h, beta)], -1)], -2)
    GG = np.array([[eta * eta, eta], [eta, 1.0]])
    residual = s - M(h_l) @ s @ np.swapaxes(M(h_m), -1, -2) - GG
    # a rational function evaluated in float64: residual within a few hundred eps of |S|
    assert np.abs(residual).max() <= 1e-12 * np.abs(s).max()
    s_aa, _, _, s_vv = mb.cross_mode_stein(h_l, h_l, eta=eta, beta=beta)
    var_a, var_v = numeric.stationary_variance(h_l, eta=eta, beta=beta, S=1.0, sigma2=1.0,
                                               model="discrete")
    # two closed forms of one rational function, a few dozen rounded operations each; the
    # factor 1 / (2 (1 + beta) - eta h) amplifies the rounding of eta h by at most
    # kappa = 2 (1 + beta) / (2 (1 + beta) - eta h) <= 100 here: 64 eps kappa covers both
    kappa = 2 * (1 + beta) / (2 * (1 + beta) - eta * h_l)
    rtol = 64 * np.finfo(float).eps * kappa
    assert np.all(np.abs(s_aa * h_l - var_a) <= rtol * np.abs(var_a))  # Var(a) per unit noise
    assert np.all(np.abs(s_vv * h_l - var_v) <= rtol * np.abs(var_v))


def test_gaussian_noise_limit_reproduces_section_6(rng):
    """With noise N(0, sigma^2 H / S) (no state dependence) the same solver, operator and
    GMRES route give the section-6 stationary variances."""
    X, Y = _small_problem(rng, n=40, d=4, c=2)
    eta, beta, lam, S, sigma2 = 0.2, 0.9, 0.05, 8, 1.7
    data = mb._data(X, Y, lam)
    mmap = mb._MomentMap(data, eta=eta, beta=beta, lam=lam, batch_factor=1 / S)
    noise = sigma2 * data.rho / S
    mmap.linear_part = lambda E: np.zeros_like(E)
    mmap.constant = lambda: np.broadcast_to(mmap.T * np.diag(noise), (2,) + mmap.T.shape).copy()
    E, _ = mb._solve_exact(mmap, 1e-12)
    var_a, var_v = numeric.stationary_variance(data.rho, eta=eta, beta=beta, lam=lam, S=S,
                                               sigma2=sigma2, model="discrete")
    np.testing.assert_allclose(np.diagonal(E, axis1=1, axis2=2), np.broadcast_to(var_a, (2, 4)),
                               rtol=1e-10)
    # off-diagonal covariances vanish: independent modes under independent noise
    off = E - np.einsum("jll->jl", E)[:, :, None] * np.eye(4)
    assert np.abs(off).max() <= 1e-12 * np.abs(E).max()
    np.testing.assert_allclose(mmap.unit_var_v * noise, var_v, rtol=1e-12)


@pytest.fixture(scope="module")
def digits():
    from experiments.data import load_digits

    data = load_digits(seed=0)
    return data.X, data.Y


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6])
def test_closure_against_exact_on_digits(digits, fraction):
    """The closure drops the cross-mode covariances E_lm (l != m). With o_p the part of the
    exact noise Xi_pp they carry, e = T_a (A e + b + o) and p = T_a (A p + b), so
    e - p = (I - T_a A)^{-1} T_a o; T_a A >= 0 entrywise with radius < 1, hence
    |e - p| <= (I - T_a A)^{-1} T_a |o| entrywise: a rigorous a-posteriori bound."""
    X, Y = digits
    beta, S = 0.9, 256
    gaussian_edge = 2 * (1 + beta) / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    eta = fraction * gaussian_edge
    data = mb._data(X, Y, 0.0)
    c_S = (X.shape[0] - S) / (S * (X.shape[0] - 1))
    mmap = mb._MomentMap(data, eta=eta, beta=beta, lam=0.0, batch_factor=c_S)
    closure, A = mb._closure_solution(mmap)
    E, _ = mb._solve_exact(mmap, 1e-12)
    exact = np.diagonal(E, axis1=1, axis2=2)
    _, b = mmap.closure_matrices()
    o = mmap.noise_diagonal(E) - (exact @ A.T + b)
    Ta = mmap.unit_var_a
    resolvent = np.linalg.inv(np.eye(Ta.size) - Ta[:, None] * A)
    bound = (resolvent @ (Ta[:, None] * np.abs(o).T)).T
    # float slack: GMRES residual 1e-12 relative, amplified by 1/(1 - radius) <= 2 here
    assert np.all(np.abs(exact - closure) <= bound + 1e-9 * exact.max())
    full = numeric.minibatch_moments(X, Y, eta=eta, beta=beta, batch_size=S, closure="exact")
    diag = numeric.minibatch_moments(X, Y, eta=eta, beta=beta, batch_size=S)
    gap = abs(diag.speed / full.speed - 1)
    # measured gaps: 7e-6 (5%), 3e-5 (30%), 7e-5 (60%): the cross-mode share of the noise is
    # small on digits; the entrywise bound above is what guarantees it, this documents it
    assert gap <= 1e-3
    assert abs(diag.radius - full.radius) <= 0.01 * full.radius


def test_diagonal_and_exact_edges_agree_on_digits_and_lie_inside_the_gaussian_edge(digits):
    X, _ = digits
    beta, S = 0.9, 256
    gaussian_edge = 2 * (1 + beta) / np.linalg.eigvalsh(X.T @ X / X.shape[0]).max()
    exact = numeric.minibatch_divergence_edge(X, beta=beta, batch_size=S, closure="exact")
    diag = numeric.minibatch_divergence_edge(X, beta=beta, batch_size=S)
    assert 0.6 * gaussian_edge < exact < gaussian_edge
    assert diag == pytest.approx(exact, rel=0.01)


def test_torch_inputs_give_the_numpy_result(rng):
    torch = pytest.importorskip("torch")
    X, Y = _small_problem(rng, n=30, d=4, c=2)
    kwargs = dict(eta=0.1, beta=0.7, lam=0.01, batch_size=5)
    for closure in mb.CLOSURES:
        ref = numeric.minibatch_moments(X, Y, closure=closure, **kwargs)
        got = numeric.minibatch_moments(torch.as_tensor(X), torch.as_tensor(Y),
                                        closure=closure, **kwargs)
        np.testing.assert_allclose(got.var_v, ref.var_v, rtol=1e-9)
        assert got.radius == pytest.approx(ref.radius, rel=1e-8)


@pytest.mark.gpu
def test_cuda_inputs_give_the_numpy_result(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    X, Y = _small_problem(rng, n=300, d=6, c=3)
    kwargs = dict(eta=0.1, beta=0.7, lam=0.01, batch_size=16)
    for closure in mb.CLOSURES:
        ref = numeric.minibatch_moments(X, Y, closure=closure, **kwargs)
        got = numeric.minibatch_moments(torch.as_tensor(X, device="cuda"),
                                        torch.as_tensor(Y, device="cuda"),
                                        closure=closure, **kwargs)
        np.testing.assert_allclose(got.var_v, ref.var_v, rtol=1e-9)


def test_full_batch_without_replacement_has_no_noise(rng):
    X, Y = _small_problem(rng)
    moments = numeric.minibatch_moments(X, Y, eta=0.1, beta=0.5, batch_size=X.shape[0])
    assert moments.speed == 0 and moments.radius == 0
    assert numeric.minibatch_divergence_edge(X, beta=0.5, batch_size=X.shape[0]) == np.inf


def test_global_displacement_starts_at_the_speed(rng):
    X, Y = _small_problem(rng)
    moments = numeric.minibatch_moments(X, Y, eta=0.1, beta=0.5, batch_size=4, closure="exact")
    disp = moments.global_displacement(np.array([0, 1, 10]))
    assert disp[0] == 0
    assert disp[1] == pytest.approx(moments.speed, rel=1e-12)  # W(1) = 1
    assert disp[2] > disp[1]


@pytest.mark.parametrize("kwargs,match", [
    (dict(eta=0.0), r"eta must be a finite float > 0, but got 0.0"),
    (dict(eta=float("nan")), "eta must be"),
    (dict(beta=1.0), r"beta must be in \[0, 1\), but got 1.0"),
    (dict(lam=-1e-3), r"lam must be a finite float >= 0"),
    (dict(batch_size=0), r"batch_size must be an integer in \[1, N = 12\], but got 0"),
    (dict(batch_size=13), r"batch_size must be an integer in \[1, N = 12\], but got 13"),
    (dict(batch_size=2.5), "batch_size must be an integer"),
    (dict(closure="full"), "closure must be one of"),
    (dict(replacement="yes"), "replacement must be True or False"),
    (dict(eta=10.0), r"eta must be below the stability edge"),
])
def test_bad_arguments_are_named(rng, kwargs, match):
    X, Y = _small_problem(rng)
    args = dict(eta=0.1, beta=0.5, batch_size=4) | kwargs
    with pytest.raises(ValueError, match=match):
        numeric.minibatch_moments(X, Y, **args)


def test_bad_shapes_are_named(rng):
    X, Y = _small_problem(rng)
    with pytest.raises(ValueError, match=r"X must be a 2-D array, but got shape \(12,\)"):
        numeric.minibatch_moments(X[:, 0], Y, eta=0.1, beta=0.5, batch_size=4)
    with pytest.raises(ValueError, match="same number of rows N"):
        numeric.minibatch_moments(X, Y[:-1], eta=0.1, beta=0.5, batch_size=4)
    with pytest.raises(ValueError, match=r"Y must be of shape \(N, c\)"):
        numeric.minibatch_moments(X, Y[:, 0], eta=0.1, beta=0.5, batch_size=4)
    with pytest.raises(ValueError, match="finite"):
        numeric.minibatch_moments(np.full_like(X, np.nan), Y, eta=0.1, beta=0.5, batch_size=4)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        numeric.minibatch_divergence_edge(X, beta=-0.1, batch_size=4)
