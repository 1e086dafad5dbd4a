"""Hessian eigenpairs, trace and the exact linear-regression Hessian, against dense references.

The reference is the full Hessian of a small MLP formed by torch.autograd.functional.hessian
and diagonalised by numpy.linalg.eigh. Tolerances come from Davis-Kahan: with residual r and
gap g to the rest of the spectrum, the eigenvector angle is at most r / g and the eigenvalue
error at most r**2 / g; each test checks that its tolerance is implied by that bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from numeric import (
    HessianEigenpairs,
    hessian_eigenpairs,
    hessian_vector_product,
    hutchinson_trace,
    linear_regression_eigenpairs,
    linear_regression_hessian,
    power_iteration_eigenpairs,
)

K = 10
F64 = torch.float64
EPS = float(np.finfo(np.float64).eps)


def gamma(n):
    """Rounding bound of n operations in a chain (tests/numeric/float_bounds.py)."""
    return n * EPS / (1 - n * EPS)


# Hessian-vector products come from double backward through a network: no a-priori bound
# below 1e-10 of the operator's scale follows for them (the backward pass sums per-sample terms
# whose magnitudes are not those of H), so comparisons that involve them use 1e-10 of
# || |v| |H| ||, about 1e3 times the rounding seen. Pure linear algebra uses stated bounds.
HVP_RELATIVE = 1e-10


def _mlp(seed, dropout=False):
    generator = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(5, 14, dtype=F64), torch.nn.Tanh()]
    if dropout:
        layers += [torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(14, dtype=F64)]
    layers += [torch.nn.Linear(14, 14, dtype=F64), torch.nn.Tanh(),
               torch.nn.Linear(14, 3, dtype=F64)]
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=F64) / p.shape[-1] ** 0.5)
    return model


def _data(seed, n=200):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=generator, dtype=F64)
    Y = torch.randint(0, 3, (n,), generator=generator)
    return X, Y


def _loss(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets)


def _dense_hessian(model, X, Y):
    """Full Hessian of the mean loss over (X, Y), in eval mode, parameters flattened in order."""
    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    sizes = [p.numel() for p in params]

    def flat_loss(theta):
        pieces = {name: t.view(p.shape) for name, t, p in zip(names, theta.split(sizes), params)}
        return _loss(functional_call(model, pieces, (X,)), Y)

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    H = torch.autograd.functional.hessian(flat_loss, theta, vectorize=True)
    for module, flag in flags:
        module.training = flag
    return H


@pytest.fixture(scope="module")
def trained():
    """An MLP trained to near a minimum (so the top eigenvalues also lead in magnitude, which
    power iteration needs), its data split into unequal batches, and the dense reference."""
    model = _mlp(1)
    X, Y = _data(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(60):
        optimizer.zero_grad()
        _loss(model(X), Y).backward()
        optimizer.step()
    batches = [(X[:130], Y[:130]), (X[130:], Y[130:])]  # unequal: tests the n_b weighting
    H = _dense_hessian(model, X, Y)
    values, vectors = np.linalg.eigh(H.numpy())
    return model, batches, H, values[::-1].copy(), vectors[:, ::-1].T.copy()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: intra-op threads only add synchronisation, which on a loaded
    2-core machine makes each product about 5x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _check_against_dense(result, H, values, vectors, tol):
    rho = result.eigenvalues.numpy()
    q = result.eigenvectors.numpy()
    assert isinstance(result, HessianEigenpairs)
    assert rho.shape == (K,) and q.shape == (K, H.shape[0]) and result.residuals.shape == (K,)
    assert result.converged
    gap = np.min(values[:K] - values[1:K + 1])
    residual_bound = tol * abs(values[0]) * (1 + 1e-6)
    # Davis-Kahan makes the requested accuracy a consequence of the residual test
    assert residual_bound / gap < 1e-4 and residual_bound**2 / gap < 1e-6 * abs(values[K - 1])
    np.testing.assert_allclose(rho, values[:K], rtol=1e-6)
    cosines = np.clip(np.abs(np.sum(q * vectors[:K], axis=1)), 0.0, 1.0)
    assert np.arccos(cosines).max() < 1e-4
    # sorted, orthonormal, sign convention, and the reported residuals are the true ones
    assert np.all(np.diff(rho) <= 0)
    np.testing.assert_allclose(q @ q.T, np.eye(K), atol=1e-10)
    largest = q[np.arange(K), np.abs(q).argmax(axis=1)]
    assert np.all(largest > 0)
    true_residuals = np.linalg.norm(q @ H.numpy() - rho[:, None] * q, axis=1) / abs(rho[0])
    assert np.all(true_residuals <= tol)
    # the reported residuals use Hessian-vector products, the true ones the dense H: both are
    # ||q H - rho q|| / |rho_1|, within HVP_RELATIVE of || |q| |H| || / |rho_1|
    scale = np.linalg.norm(np.abs(q) @ np.abs(H.numpy()), axis=1) / abs(rho[0])
    assert np.all(np.abs(result.residuals.numpy() - true_residuals) <= 2 * HVP_RELATIVE * scale)


def test_lanczos_matches_dense_eigh(trained):
    model, batches, H, values, vectors = trained
    tol = 1e-8
    result = hessian_eigenpairs(model, _loss, batches, K, tol=tol)
    _check_against_dense(result, H, values, vectors, tol)
    assert 0 < result.num_hvps <= max(1000, 100 * K)


def test_power_iteration_baseline_matches_dense_eigh(trained):
    model, batches, H, values, vectors = trained
    assert np.all(np.abs(values[:K]) > np.abs(values[-1]))  # top-K by value = by magnitude
    tol = 1e-6
    full_batch = [tuple(torch.cat(parts) for parts in zip(*batches))]  # one pass per product
    result = power_iteration_eigenpairs(model, _loss, full_batch, K, tol=tol)
    _check_against_dense(result, H, values, vectors, tol)
    lanczos = hessian_eigenpairs(model, _loss, batches, K, tol=tol)
    assert lanczos.converged and lanczos.num_hvps < result.num_hvps


def test_budget_stops_unconverged(trained):
    model, batches, _, _, _ = trained
    result = hessian_eigenpairs(model, _loss, batches, K, tol=1e-12, max_hvps=20, block_size=4)
    assert not result.converged and result.num_hvps <= 20
    assert np.any(result.residuals.numpy() > 1e-12)
    power = power_iteration_eigenpairs(model, _loss, batches, 3, tol=1e-12, max_hvps=12)
    assert not power.converged and power.num_hvps == 12
    # PyHessian's rule compares two Rayleigh quotients: never fewer than two products a pair,
    # even when a tolerance this loose is met by the first product
    loose = power_iteration_eigenpairs(model, _loss, batches, 3, tol=1e6)
    assert loose.converged and loose.num_hvps == 6


def test_power_iteration_not_fooled_by_small_random_residuals(rng):
    # P = 20000 and a rank-6 Hessian with rho_1 = 100: a random unit v has
    # ||H v|| ~ ||H||_F / sqrt(P) ~ 0.77 < tol |rho_1| = 1, so a residual test alone accepts
    # random vectors (Rayleigh quotient ~ 0) as pairs 2..4; the relative change of the
    # Rayleigh quotient (PyHessian's rule) must keep iterating until the true pairs are found
    N, d, k, tol = 6, 20000, 4, 1e-2
    spectrum = 100.0 * 0.4 ** np.arange(N)
    rows, _ = np.linalg.qr(rng.standard_normal((d, N)))
    X = torch.as_tensor(np.sqrt(N * spectrum)[:, None] * rows.T)  # X^T X / N has `spectrum`
    Y = torch.as_tensor(rng.standard_normal((N, 1)))
    layer = torch.nn.Linear(d, 1, bias=False, dtype=F64)

    def half_mse(outputs, targets):
        return ((outputs - targets) ** 2).sum(dim=1).mean() / 2

    result = power_iteration_eigenpairs(layer, half_mse, [(X, Y)], k, tol=tol)
    assert result.converged
    # Davis-Kahan with residual r = tol * rho_1 and gap g_i of rho_i to the rest of the
    # spectrum (zero included): eigenvalue error <= r**2 / g_i, angle <= r / g_i
    full = np.concatenate([spectrum, [0.0]])
    gaps = np.minimum(np.abs(full[:k] - full[1:k + 1]),
                      np.abs(full[:k] - np.concatenate([[np.inf], full[:k - 1]])))
    r = tol * spectrum[0]
    assert np.all(np.abs(result.eigenvalues.numpy() - spectrum[:k]) <= r**2 / gaps)
    cosines = np.abs(np.sum(result.eigenvectors.numpy() * rows.T[:k], axis=1))  # exact q_i
    assert np.all(np.arccos(np.clip(cosines, 0, 1)) <= r / gaps + 1e-7)


def test_dense_route_for_tiny_models():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, dtype=F64), torch.nn.Tanh(),
                                torch.nn.Linear(2, 1, dtype=F64))
    X, _ = _data(3, n=40)
    X = X[:, :3]
    Y = torch.sin(X.sum(dim=1, keepdim=True))

    def mse(outputs, targets):
        return ((outputs - targets) ** 2).mean()

    names = [name for name, _ in model.named_parameters()]
    params = list(model.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def flat_loss(t):
        pieces = {n: s.view(p.shape) for n, s, p in
                  zip(names, t.split([p.numel() for p in params]), params)}
        return mse(functional_call(model, pieces, (X,)), Y)

    H = torch.autograd.functional.hessian(flat_loss, theta).numpy()
    result = hessian_eigenpairs(model, mse, [(X, Y)], 4)
    assert result.num_hvps == H.shape[0]  # P <= max_basis: H formed from P products
    # Rayleigh-Ritz on P products against eigvalsh of the dense H: both backward stable
    # (Weyl: within p(P) eps ||H||_2 each), plus the products' rounding (HVP_RELATIVE ||H||)
    norm = np.linalg.norm(H, 2)
    np.testing.assert_allclose(result.eigenvalues.numpy(), np.linalg.eigvalsh(H)[::-1][:4],
                               rtol=1e-10, atol=2 * (H.shape[0] ** 2 * EPS + HVP_RELATIVE) * norm)


def test_eval_mode_restored_and_operator_deterministic():
    model = _mlp(4, dropout=True)
    model.train()
    model[3].eval()  # one module already in eval mode: its own flag must come back
    flags = [m.training for m in model.modules()]
    X, Y = _data(5)
    with torch.no_grad():  # non-trivial running statistics for the batch norm
        model[3].running_mean.copy_(torch.linspace(-0.3, 0.3, 14, dtype=F64))
        model[3].running_var.copy_(torch.linspace(0.5, 2.0, 14, dtype=F64))
    batches = [(X[:100], Y[:100]), (X[100:], Y[100:])]
    P = sum(p.numel() for p in model.parameters())
    vectors = torch.randn(3, P, generator=torch.Generator().manual_seed(6), dtype=F64)
    first = hessian_vector_product(model, _loss, batches, vectors)
    assert [m.training for m in model.modules()] == flags
    second = hessian_vector_product(model, _loss, batches, vectors)
    assert torch.equal(first, second)
    H = _dense_hessian(model, X, Y)  # eval mode: no dropout, running statistics
    envelope = (np.abs(vectors.numpy()) @ np.abs(H.numpy())).max()
    np.testing.assert_allclose(first.numpy(), (vectors @ H).numpy(), rtol=1e-10,
                               atol=2 * HVP_RELATIVE * envelope)
    result = hessian_eigenpairs(model, _loss, batches, 3, tol=1e-8)
    assert [m.training for m in model.modules()] == flags
    true_residuals = torch.linalg.vector_norm(
        result.eigenvectors @ H - result.eigenvalues[:, None] * result.eigenvectors, dim=1)
    assert torch.all(true_residuals <= 1e-8 * result.eigenvalues[0].abs())


def test_float32_model_keeps_dtype():
    model = _mlp(7).float()
    X, Y = _data(8)
    batches = [(X.float(), Y)]
    result = hessian_eigenpairs(model, _loss, batches, 4, tol=1e-3)
    assert result.eigenvalues.dtype == torch.float32 and result.eigenvectors.dtype == torch.float32
    reference = np.linalg.eigvalsh(_dense_hessian(model.double(), X, Y).numpy())[::-1][:4]
    # residual 1e-3 |rho_1| bounds each eigenvalue error by (1e-3 |rho_1|)^2 / gap; float32
    # products add about 1e-6 relative: 1e-3 relative covers both for this spectrum
    np.testing.assert_allclose(result.eigenvalues.numpy(), reference, rtol=1e-3)


def test_hutchinson_within_three_standard_errors(trained):
    model, batches, H, _, _ = trained
    exact = float(torch.trace(H))
    full_batch = [tuple(torch.cat(parts) for parts in zip(*batches))]
    for seed in range(2):
        estimate = hutchinson_trace(model, _loss, full_batch, num_samples=200,
                                    generator=torch.Generator().manual_seed(seed))
        assert estimate.num_hvps == 200
        assert estimate.standard_error > 0
        assert abs(estimate.value - exact) < 3 * estimate.standard_error


def test_linear_regression_hessian_matches_autograd(rng):
    N, d, c = 50, 6, 3
    X = rng.standard_normal((N, d))
    Yt = torch.as_tensor(rng.standard_normal((N, c)))
    Xt = torch.as_tensor(X)
    layer = torch.nn.Linear(d, c, bias=False, dtype=F64)

    def loss_of(W_flat):
        return ((Yt - Xt @ W_flat.view(c, d).T) ** 2).sum() / (2 * N)

    full = torch.autograd.functional.hessian(loss_of, layer.weight.detach().reshape(-1))
    H = linear_regression_hessian(X)
    assert isinstance(H, np.ndarray) and H.shape == (d, d)
    # X^T X / N and autograd's second derivative of the same sum: each entry a sum of N
    # products, within gamma(2N + 4) of |X|^T |X| / N on either side
    envelope = np.kron(np.eye(c), np.abs(X).T @ np.abs(X) / N)
    assert np.all(np.abs(np.kron(np.eye(c), H) - full.numpy()) <= 2 * gamma(2 * N + 4) * envelope)

    result = linear_regression_eigenpairs(X, num_outputs=c)
    assert isinstance(result.eigenvalues, np.ndarray) and result.num_hvps == 0 and result.converged
    q, rho = result.eigenvectors, result.eigenvalues
    assert q.shape == (c * d, c * d)
    np.testing.assert_allclose(rho, np.linalg.eigvalsh(full.numpy())[::-1], rtol=1e-10)
    # a backward-stable symmetric eigensolver: residuals and loss of orthogonality within
    # p(n) eps (||H||_2 and 1), p(n) = n^2 taken for n = c d; plus the product's rounding
    n = c * d
    norm = np.linalg.norm(full.numpy(), 2)
    np.testing.assert_allclose(q @ full.numpy(), rho[:, None] * q,
                               atol=(n * n * EPS + gamma(n)) * norm)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=n * n * EPS + gamma(n))
    # the reported residuals: the same, normalised by |rho_1| (= ||H||_2)
    assert np.all(result.residuals <= 2 * (n * n * EPS + gamma(n)) * np.sqrt(n))
    # ties across outputs in output order: pair j*c + o lives in the block of output o
    support = np.abs(q).reshape(c * d, c, d).sum(axis=2).argmax(axis=1)
    np.testing.assert_array_equal(support, np.tile(np.arange(c), d))

    torch_result = linear_regression_eigenpairs(Xt.float(), k=4, num_outputs=c)
    assert torch_result.eigenvectors.dtype == torch.float32
    np.testing.assert_allclose(torch_result.eigenvalues.numpy(), rho[:4], rtol=1e-5)
    torch_H = linear_regression_hessian(Xt)
    assert torch_H.dtype == F64
    # the same X^T X / N by torch and by NumPy: gamma(N + 1) |X|^T |X| / N each
    assert np.all(np.abs(torch_H.numpy() - H) <= 2 * gamma(N + 1) * np.abs(X).T @ np.abs(X) / N)


def test_lanczos_on_linear_layer_matches_exact_route(rng):
    N, d = 120, 60
    X = torch.as_tensor(rng.standard_normal((N, d)) * np.linspace(0.2, 3.0, d))
    Y = torch.as_tensor(rng.standard_normal((N, 1)))
    layer = torch.nn.Linear(d, 1, bias=False, dtype=F64)

    def half_mse(outputs, targets):
        return ((outputs - targets) ** 2).sum(dim=1).mean() / 2

    exact = linear_regression_eigenpairs(X, k=5)
    tol = 1e-7
    result = hessian_eigenpairs(layer, half_mse, [(X[:50], Y[:50]), (X[50:], Y[50:])], 5,
                                tol=tol, block_size=1, max_basis=12)
    assert result.converged and result.num_hvps < d  # Lanczos route with restarts, not dense
    all_values = linear_regression_eigenpairs(X).eigenvalues.numpy()
    gap = np.min(all_values[:5] - all_values[1:6])
    bound = tol * all_values[0]  # Davis-Kahan: eigenvalue error <= bound**2/gap, angle <= bound/gap
    # plus rounding: both routes backward stable, within (d^2 eps + gamma(N)) ||H||_2 each
    rounding = 2 * (d * d * EPS + gamma(N)) * all_values[0]
    np.testing.assert_allclose(result.eigenvalues.numpy(), exact.eigenvalues.numpy(),
                               rtol=0, atol=bound**2 / gap + rounding)
    cosines = np.abs(np.sum(result.eigenvectors.numpy() * exact.eigenvectors.numpy(), axis=1))
    assert np.all(np.arccos(np.clip(cosines, 0, 1)) <= bound / gap + 1e-7)


def test_bad_input(trained):
    model, batches, _, _, _ = trained
    P = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="k must satisfy"):
        hessian_eigenpairs(model, _loss, batches, 0)
    with pytest.raises(ValueError, match=f"<= {P}"):
        power_iteration_eigenpairs(model, _loss, batches, P + 1)
    with pytest.raises(TypeError, match="k must be an int"):
        hessian_eigenpairs(model, _loss, batches, 2.0)
    for tol in (0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="tol must be"):
            hessian_eigenpairs(model, _loss, batches, 2, tol=tol)
    with pytest.raises(TypeError, match="re-iterable"):
        hessian_eigenpairs(model, _loss, (batch for batch in batches), 2)
    dataset = torch.utils.data.TensorDataset(*batches[0])
    with pytest.raises(ValueError, match="RandomSampler"):
        hessian_eigenpairs(model, _loss, torch.utils.data.DataLoader(dataset, shuffle=True), 2)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        hessian_eigenpairs(lambda x: x, _loss, batches, 2)
    with pytest.raises(ValueError, match="max_hvps must be >= 7"):
        hessian_eigenpairs(model, _loss, batches, 5, max_hvps=1)
    with pytest.raises(ValueError, match="max_hvps must be >= 10"):
        power_iteration_eigenpairs(model, _loss, batches, 5, max_hvps=9)
    with pytest.raises(ValueError, match="max_basis must be >= "):
        hessian_eigenpairs(model, _loss, batches, 5, max_basis=6)
    with pytest.raises(ValueError, match=r"vectors must have shape \(m, "):
        hessian_vector_product(model, _loss, batches, torch.zeros(2, P + 1))
    with pytest.raises(TypeError, match="pair"):
        hessian_vector_product(model, _loss, [batches[0][0]], torch.zeros(P))
    with pytest.raises(ValueError, match="num_samples must be >= 2"):
        hutchinson_trace(model, _loss, batches, num_samples=1)
    frozen = _mlp(9)
    frozen[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        hessian_eigenpairs(frozen, _loss, batches, 2)
    with pytest.raises(ValueError, match=r"X must have shape \(N, d\)"):
        linear_regression_eigenpairs(np.zeros(5))
    with pytest.raises(ValueError, match="num_outputs must be >= 1"):
        linear_regression_eigenpairs(np.zeros((4, 2)), num_outputs=0)
    # an unshuffled DataLoader is accepted and gives the same operator as the list
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False)
    vector = torch.randn(P, generator=torch.Generator().manual_seed(10), dtype=F64)
    expected = hessian_vector_product(model, _loss, [batches[0]], vector).numpy()
    np.testing.assert_allclose(hessian_vector_product(model, _loss, loader, vector).numpy(),
                               expected, rtol=1e-10, atol=HVP_RELATIVE * np.abs(expected).max())


@pytest.mark.gpu
def test_cuda_matches_cpu(trained):
    model, batches, H, values, vectors = trained
    device = torch.device("cuda")
    cuda_model = _mlp(1).to(device)
    cuda_model.load_state_dict(model.state_dict())
    cuda_batches = [(x.to(device), y.to(device)) for x, y in batches]
    tol = 1e-8
    result = hessian_eigenpairs(cuda_model, _loss, cuda_batches, K, tol=tol)
    assert result.eigenvalues.device.type == "cuda" and result.eigenvectors.device.type == "cuda"
    cpu = HessianEigenpairs(result.eigenvalues.cpu(), result.eigenvectors.cpu(),
                            result.residuals.cpu(), result.num_hvps, result.converged)
    _check_against_dense(cpu, H, values, vectors, tol)
    trace = hutchinson_trace(cuda_model, _loss, cuda_batches, num_samples=200)
    assert abs(trace.value - float(torch.trace(H))) < 3 * trace.standard_error


def test_lanczos_through_an_invariant_subspace(rng):
    # rank-10 Hessian, k = 12: the Krylov space of one start vector holds only one null
    # direction, so the solver must restart from fresh random vectors after the breakdown
    N, d = 10, 40
    X = torch.as_tensor(rng.standard_normal((N, d)))
    Y = torch.as_tensor(rng.standard_normal((N, 1)))
    layer = torch.nn.Linear(d, 1, bias=False, dtype=F64)

    def half_mse(outputs, targets):
        return ((outputs - targets) ** 2).sum(dim=1).mean() / 2

    tol = 1e-8
    result = hessian_eigenpairs(layer, half_mse, [(X, Y)], 12, tol=tol, block_size=1)
    exact = linear_regression_eigenpairs(X, k=12)
    assert result.converged
    scale = exact.eigenvalues[0].item()
    # ten simple eigenvalues to (tol*scale)^2/gap, then two zeros to the residual tol*scale
    np.testing.assert_allclose(result.eigenvalues.numpy(), exact.eigenvalues.numpy(),
                               rtol=0, atol=tol * scale)
    q = result.eigenvectors.numpy()
    np.testing.assert_allclose(q @ q.T, np.eye(12), atol=1e-10)
    H = linear_regression_hessian(X.numpy())
    true_residuals = np.linalg.norm(q @ H - result.eigenvalues.numpy()[:, None] * q, axis=1)
    # HVPs of a linear layer against the dense X^T X / N: within HVP_RELATIVE of the scale
    envelope = np.linalg.norm(np.abs(q) @ np.abs(H), axis=1) / scale
    assert np.all(np.abs(result.residuals.numpy() - true_residuals / scale)
                  <= 2 * HVP_RELATIVE * envelope)
