"""Backend dispatch of the public kernels: NumPy and Torch agree, dtype and device are kept.

NumPy (float64) and Torch (float64, CPU; CUDA under the `gpu` marker) evaluate the same
generated expressions with different elementary-function libraries (and, on CUDA, other
summation orders and fused multiply-adds). The bound that holds for any such pair is the
accuracy contract each meets against a 50-digit reference (test_kernels_accuracy):
max(|exact|, scale) (1e-10 + 64 eps (1 + gamma t + alpha t)); two backends within it agree
within twice it. A tighter figure ("last-bit differences") does not follow: a few ulps of
difference in one libm call are amplified by the closed forms' cancellation, up to
2/(1 - beta) = 2000 at beta = 0.999, and by the decay and phase (gamma + alpha) t.
"""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")

import numeric  # noqa: E402


import kernel_reference as ref  # noqa: E402  (tests/numeric is on pytest's pythonpath)
from float_bounds import EPS  # noqa: E402

MODELS = ("sde", "discrete")
S_BATCH, SIGMA2 = 32.0, 0.7
AGREEMENT = 2 * 1e-10  # twice the contract's relative term (module docstring)


def _grid(model):
    rows = [(rho, beta, lam, eta, k)
            for (_, rho, beta, lam, eta) in ref.mode_grid(full=False, model=model)
            for k in ref.step_grid(full=False, model=model)]
    return {name: np.array(c) for name, c in zip(("rho", "beta", "lam", "eta", "k"), zip(*rows))}


def _scales(grid, model):
    """Propagator scale of every point (mpmath, cached across test modules)."""
    mean, corr = [], []
    for rho, beta, lam, eta, k in zip(*(grid[n] for n in ("rho", "beta", "lam", "eta", "k"))):
        _, (scale_a, scale_b) = ref.mean_trajectory(rho, k, 1.0, -0.5, eta, beta, lam, model)
        mean.append((float(scale_a), float(scale_b)))
        corr.append(float(ref.velocity_correlation(rho, k, eta, beta, lam, model)[1]))
    return np.array(mean).T, np.array(corr)


def _phase_and_decay(grid):
    """(gamma + alpha) t for every point of a grid with rho, eta, beta, lam and k."""
    gamma = (1 - grid["beta"]) / (grid["eta"] * (1 + grid["beta"]))
    omega2 = 2 * (grid["rho"] + grid["lam"]) / (grid["eta"] * (1 + grid["beta"]))
    return (gamma + np.sqrt(np.abs(gamma ** 2 - omega2))) * grid["eta"] * grid["k"]


def _assert_agree(label, from_numpy, from_torch, scale, grid, cond=0.0):
    assert isinstance(from_torch, torch.Tensor), f"{label}: torch in, {type(from_torch)} out"
    assert isinstance(from_numpy, np.ndarray), f"{label}: numpy in, {type(from_numpy)} out"
    assert from_torch.dtype == torch.float64 and from_numpy.dtype == np.float64, label
    other = from_torch.detach().cpu().numpy()
    assert other.shape == from_numpy.shape, (label, other.shape, from_numpy.shape)
    eps = np.finfo(np.float64).eps
    bound = np.maximum(np.abs(from_numpy), scale) * (AGREEMENT + 2 * 64 * eps * (1 + cond))
    bad = np.flatnonzero(~(np.abs(other - from_numpy) <= bound))
    if bad.size:
        i = bad[0]
        point = {name: float(values[i]) for name, values in grid.items()}
        raise AssertionError(f"{label}: {bad.size} points differ, first {point}: numpy "
                             f"{from_numpy[i]!r}, torch {other[i]!r}, bound {bound[i]:.3g}")


@pytest.mark.parametrize("model", MODELS)
def test_numpy_and_torch_agree(model, device="cpu"):
    grid = _grid(model)
    (scale_a, scale_b), scale_c = _scales(grid, model)
    _compare_backends(grid, model, scale_a, scale_b, scale_c, device)


def _compare_backends(grid, model, scale_a, scale_b, scale_c, device):
    t = {name: torch.as_tensor(values, device=device) for name, values in grid.items()}
    a0, b0 = np.ones_like(grid["rho"]), -0.5 * np.ones_like(grid["rho"])
    hyper_np = {"eta": grid["eta"], "beta": grid["beta"], "lam": grid["lam"], "model": model}
    hyper_t = {"eta": t["eta"], "beta": t["beta"], "lam": t["lam"], "model": model}

    a_np, b_np = numeric.mean_trajectory(grid["rho"], grid["k"], a0, b0, **hyper_np)
    a_t, b_t = numeric.mean_trajectory(t["rho"], t["k"], torch.as_tensor(a0, device=device),
                                       torch.as_tensor(b0, device=device), **hyper_t)
    cond = _phase_and_decay(grid)
    _assert_agree(f"mean_trajectory[{model}] a", a_np, a_t, scale_a, grid, cond)
    _assert_agree(f"mean_trajectory[{model}] b", b_np, b_t, scale_b, grid, cond)

    c_np = numeric.velocity_correlation(grid["rho"], grid["k"], **hyper_np)
    c_t = numeric.velocity_correlation(t["rho"], t["k"], **hyper_t)
    _assert_agree(f"velocity_correlation[{model}]", c_np, c_t, scale_c, grid, cond)

    stable = grid["eta"] * (grid["rho"] + grid["lam"]) < 2 * (1 + grid["beta"])
    sub = {name: values[stable] for name, values in grid.items()}
    sub_t = {name: values[torch.as_tensor(stable, device=device)] for name, values in t.items()}
    noise = {"S": S_BATCH, "sigma2": SIGMA2, "model": model}
    var_np = numeric.stationary_variance(sub["rho"], eta=sub["eta"], beta=sub["beta"],
                                         lam=sub["lam"], **noise)
    var_t = numeric.stationary_variance(sub_t["rho"], eta=sub_t["eta"], beta=sub_t["beta"],
                                        lam=sub_t["lam"], **noise)
    for which in (0, 1):
        _assert_agree(f"stationary_variance[{model}][{which}]", var_np[which], var_t[which],
                      0.0, sub)
    speed_np = numeric.instantaneous_speed(sub["rho"][:, None], eta=sub["eta"][:, None],
                                           beta=sub["beta"][:, None], lam=sub["lam"][:, None],
                                           **noise)
    speed_t = numeric.instantaneous_speed(sub_t["rho"][:, None], eta=sub_t["eta"][:, None],
                                          beta=sub_t["beta"][:, None],
                                          lam=sub_t["lam"][:, None], **noise)
    _assert_agree(f"instantaneous_speed[{model}]", speed_np, speed_t, 0.0, sub)

    spectrum = np.array([1e-12, 1e-6, 1e-3, 0.3, 1.0, 1e3])
    ks = np.array([0.0, 1.0, 7.0, 1e3, 1e5, 1e7])
    for beta in (0.0, 0.9, 0.999):
        for zeta_top in (1e-2, 1.0, 1e2):
            eta = ref.eta_for_damping_ratio(zeta_top, spectrum[-1], beta, 1e-4)
            if model == "discrete" and not ref.is_stable_discrete(eta, spectrum[-1], beta, 1e-4):
                continue
            kwargs = dict(eta=eta, beta=beta, lam=1e-4, **noise)
            d_np = numeric.global_displacement(spectrum, ks, **kwargs)
            d_t = numeric.global_displacement(torch.as_tensor(spectrum, device=device),
                                              torch.as_tensor(ks, device=device), **kwargs)
            # scale: the diagonal of the double sum, eta^2 sum_l Var_ss(b_l) max(k, 1)
            diagonal = eta ** 2 * np.sum(numeric.stationary_variance(
                spectrum, eta=eta, beta=beta, lam=1e-4, **noise)[1]) * np.maximum(ks, 1)
            modes = {"rho": spectrum[:, None], "eta": eta, "beta": beta, "lam": 1e-4,
                     "k": ks[None, :]}
            _assert_agree(f"global_displacement[{model}] beta={beta} zeta_top={zeta_top}",
                          d_np, d_t, diagonal, {"k": ks}, _phase_and_decay(modes).max(0))


@pytest.mark.gpu
@pytest.mark.parametrize("model", MODELS)
def test_cuda_agrees_with_numpy(model):
    grid = _grid(model)
    (scale_a, scale_b), scale_c = _scales(grid, model)
    _compare_backends(grid, model, scale_a, scale_b, scale_c, "cuda")


# --- dispatch: the type, dtype and device of the output follow the input ---------------------

def test_numpy_and_python_floats_give_numpy_float64():
    c = numeric.velocity_correlation(0.5, 3.0, eta=0.1, beta=0.9)
    assert not isinstance(c, torch.Tensor)
    assert np.asarray(c).dtype == np.float64 and np.ndim(c) == 0
    c32 = numeric.velocity_correlation(np.float32(0.5), np.array([3.0, 4.0], np.float32),
                                       eta=0.1, beta=0.9)
    assert isinstance(c32, np.ndarray) and c32.dtype == np.float64 and c32.shape == (2,)
    # float64 is computed even from float32 numpy input: equal to the float64 call (the
    # float32 values 0.5, 3, 4 are exact in float64, so this is the same code on the same
    # numbers: bitwise equality is legitimate)
    expected = numeric.velocity_correlation(0.5, np.array([3.0, 4.0]), eta=0.1, beta=0.9)
    np.testing.assert_array_equal(c32, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_keeps_dtype_and_broadcasts_with_python_floats(dtype):
    rho = torch.tensor([[0.1], [1.0], [4.0]], dtype=dtype)  # (3, 1)
    k = torch.tensor([0.0, 1.0, 10.0, 100.0], dtype=dtype)  # (4,)
    a, b = numeric.mean_trajectory(rho, k, 1.0, 0.0, eta=0.05, beta=0.9, lam=1e-3)
    c = numeric.velocity_correlation(rho, k, eta=0.05, beta=0.9)
    for out in (a, b, c):
        assert isinstance(out, torch.Tensor)
        assert out.dtype == dtype and out.device == rho.device and out.shape == (3, 4)
    # C(0) = 1 and the mean starts at the initial state (the contract at k = 0: scale 1)
    at_zero = 1e-10 if dtype == torch.float64 else 1e-4
    for value, expected in ((c[:, 0], 1.0), (a[:, 0], 1.0), (b[:, 0], 0.0)):
        assert torch.all(torch.abs(value - expected) <= at_zero), value
    # the torch result agrees with numpy's float64 one: within twice the float64 contract
    # (module docstring); in float32 the float64 value rounded once (the precision rule),
    # within the float32 contract 1e-4 + 64 eps32 (1 + (gamma + alpha) t), |C| <= 1 here
    c_np = numeric.velocity_correlation(rho.double().numpy(), k.double().numpy(), eta=0.05,
                                        beta=0.9)
    gamma = (1 - 0.9) / (0.05 * 1.9)
    omega2 = 2 * rho.double().numpy() / (0.05 * 1.9)
    cond = (gamma + np.sqrt(np.abs(gamma ** 2 - omega2))) * 0.05 * k.double().numpy()
    eps = float(torch.finfo(dtype).eps)
    tol = (AGREEMENT + 2 * 64 * eps * (1 + cond) if dtype == torch.float64
           else 1e-4 + 64 * eps * (1 + cond))
    assert np.all(np.abs(c.double().numpy() - c_np) <= tol)


def test_hyperparameter_tensor_selects_torch():
    """Backend chosen by input type: one tensor anywhere makes the result a tensor."""
    eta = torch.tensor([0.05, 0.1])
    var_a, var_v = numeric.stationary_variance(np.array([0.3, 0.3]), eta=eta, beta=0.9,
                                               S=8.0, sigma2=0.5)
    assert isinstance(var_a, torch.Tensor) and isinstance(var_v, torch.Tensor)
    assert var_a.dtype == torch.float64


def test_global_displacement_shape_follows_k_and_hyperparameters():
    spectrum = np.linspace(0.01, 2.0, 7)
    k = np.array([1.0, 10.0, 100.0])
    etas = np.array([[0.01], [0.02]])
    out = numeric.global_displacement(spectrum, k, eta=etas, beta=0.9, S=8.0, sigma2=0.5)
    assert out.shape == (2, 3)
    for row in range(2):
        single = numeric.global_displacement(spectrum, k, eta=float(etas[row, 0]), beta=0.9,
                                             S=8.0, sigma2=0.5)
        # the same NumPy kernels on the same float64 numbers, broadcast or not; but an
        # element's position can decide whether a vectorised libm call takes its SIMD or its
        # scalar path, and the modes are chunked differently: both results are within the
        # contract (gamma t + alpha t <= 10 here), so within twice it of each other
        np.testing.assert_allclose(out[row], single, rtol=AGREEMENT + 2 * 64 * EPS * 11, atol=0)
