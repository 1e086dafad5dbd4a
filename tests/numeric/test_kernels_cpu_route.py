"""CPU tensors that record no autograd graph are computed by the NumPy kernels.

The route (``numeric.kernels.CPU_TENSORS_VIA_NUMPY``) must be invisible except in speed: the
values are the NumPy backend's, bit for bit (float64), or those rounded once to the inputs'
dtype; results are fresh CPU tensors of that dtype; and every call that needs torch itself
(a graph for autograd, a torch.func transform, a CUDA tensor) takes torch operations.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import numeric  # noqa: E402
from numeric import kernels  # noqa: E402

S_BATCH, SIGMA2 = 32.0, 0.7


@pytest.fixture(autouse=True)
def _route_on(monkeypatch):
    monkeypatch.setattr(kernels, "CPU_TENSORS_VIA_NUMPY", True)


@pytest.fixture
def numpy_calls(monkeypatch):
    """Counts the evaluations that go through the NumPy kernels."""
    calls = []
    original = kernels._blocked_numpy

    def counted(function, args, shape):
        calls.append(function.__name__)
        return original(function, args, shape)

    monkeypatch.setattr(kernels, "_blocked_numpy", counted)
    return calls


def _modes(n, rng, model):
    """n (rho, k) pairs over all three regimes (zeta from ~50 to ~0.05 at the hyperparameters
    below), k whole; with n > 2 * 65536 the NumPy kernels work in blocks."""
    rho = np.exp(rng.uniform(np.log(1e-4), np.log(1e2), n))
    k = np.floor(np.exp(rng.uniform(0.0, np.log(1e4), n)))
    return rho, k


HYPER = {"eta": 1e-2, "beta": 0.9, "lam": 1e-4}


def _calls(rho, k, model):
    """Every public kernel on (rho, k), as name -> result (tuples flattened)."""
    noise = {"S": S_BATCH, "sigma2": SIGMA2, "model": model}
    out = {
        "damping_ratio": numeric.damping_ratio(rho, **HYPER),
        "velocity_correlation": numeric.velocity_correlation(rho, k, model=model, **HYPER),
        "speed": numeric.instantaneous_speed(rho, **HYPER, **noise),
    }
    a, b = numeric.mean_trajectory(rho, k, 1.0, -0.5, model=model, **HYPER)
    var_a, var_v = numeric.stationary_variance(rho, **HYPER, **noise)
    out.update({"mean a": a, "mean b": b, "var a": var_a, "var v": var_v})
    return out


@pytest.mark.parametrize("n", [7, 3 * 2 ** 16 + 5])
@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_float64_tensors_give_the_numpy_values_bit_for_bit(model, n, rng, numpy_calls):
    rho, k = _modes(n, rng, model)
    expected = _calls(rho, k, model)
    numpy_calls.clear()
    got = _calls(torch.from_numpy(rho), torch.from_numpy(k), model)
    assert numpy_calls, "the CPU tensors did not take the NumPy kernels"
    for name, value in got.items():
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float64, name
        assert value.device.type == "cpu" and not value.requires_grad, name
        if name == "speed":
            # a sum of n positive terms, by torch and by NumPy in their own orders: each is
            # within (n - 1) eps of the exact sum (relative)
            bound = 2 * (n - 1) * np.finfo(np.float64).eps
            np.testing.assert_allclose(value.numpy(), expected[name], rtol=bound, atol=0)
        else:
            np.testing.assert_array_equal(value.numpy(), expected[name], err_msg=name)


@pytest.mark.parametrize("model", ["sde", "discrete"])
def test_global_displacement_gives_the_numpy_values_bit_for_bit(model, rng, monkeypatch):
    backends = []
    original = kernels._global_displacement

    def spied(batch, model):
        backends.append(batch.backend)
        return original(batch, model)

    monkeypatch.setattr(kernels, "_global_displacement", spied)
    spectrum = np.sort(np.exp(rng.uniform(np.log(1e-6), np.log(10.0), 1000)))
    k = np.unique(np.round(np.logspace(0, 6, 40)))
    kwargs = dict(S=S_BATCH, sigma2=SIGMA2, model=model, **HYPER)
    expected = numeric.global_displacement(spectrum, k, **kwargs)
    got = numeric.global_displacement(torch.from_numpy(spectrum), torch.from_numpy(k), **kwargs)
    assert backends == ["numpy", "numpy"]
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), expected)
    # with a graph to record, torch operations
    leaf = torch.from_numpy(spectrum).requires_grad_(True)
    numeric.global_displacement(leaf, torch.from_numpy(k), **kwargs).sum().backward()
    assert backends[-1] == "torch" and torch.all(torch.isfinite(leaf.grad))


def test_other_dtypes_are_rounded_once_from_float64(rng):
    rho, k = _modes(1000, rng, "sde")
    rho32, k32 = torch.from_numpy(rho).float(), torch.from_numpy(k).float()
    # every argument becomes a tensor of the inputs' dtype, the hyperparameters too
    hyper32 = {name: float(np.float32(value)) for name, value in HYPER.items()}
    expected = numeric.velocity_correlation(rho32.double().numpy(), k32.double().numpy(),
                                            **hyper32)
    got = numeric.velocity_correlation(rho32, k32, **HYPER)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(expected).float())
    # half precision: the values are rounded once, from float64 (no float16 arithmetic)
    rho16, k16 = rho32.half(), k32.half()
    hyper16 = {name: float(np.float16(value)) for name, value in HYPER.items()}
    expected16 = numeric.velocity_correlation(rho16.double().numpy(), k16.double().numpy(),
                                              **hyper16)
    got16 = numeric.velocity_correlation(rho16, k16, **HYPER)
    assert got16.dtype == torch.float16
    assert torch.equal(got16, torch.from_numpy(expected16).half())


def test_scalars_broadcasting_and_fresh_memory():
    rho = torch.tensor([[0.1], [1.0], [4.0]])  # (3, 1)
    k = torch.tensor([0.0, 1.0, 10.0])
    c = numeric.velocity_correlation(rho, k, eta=torch.tensor(0.05), beta=0.9)
    assert c.shape == (3, 3) and c.is_contiguous()
    scalar = numeric.velocity_correlation(torch.tensor(0.5), 3.0, eta=0.1, beta=0.9)
    assert isinstance(scalar, torch.Tensor) and scalar.shape == ()
    # the result owns its memory: writing to it leaves every input alone
    before = rho.clone(), k.clone()
    a, _ = numeric.mean_trajectory(rho, k, torch.tensor(1.0), 0.0, eta=0.05, beta=0.9)
    a.add_(1.0)
    c.add_(1.0)
    assert torch.equal(rho, before[0]) and torch.equal(k, before[1])


def test_autograd_takes_torch_operations(numpy_calls):
    rho = torch.tensor([1e-3, 0.3, 30.0], requires_grad=True)
    k = torch.tensor([5.0, 50.0, 500.0])
    c = numeric.velocity_correlation(rho, k, **HYPER)
    assert not numpy_calls and c.grad_fn is not None
    (grad,) = torch.autograd.grad(c.sum(), rho)
    assert torch.all(torch.isfinite(grad)) and torch.all(grad != 0)
    # without a graph to record, the same tensors take the NumPy kernels
    with torch.no_grad():
        plain = numeric.velocity_correlation(rho, k, **HYPER)
    assert numpy_calls and not plain.requires_grad
    # two routes, each within the accuracy contract of the exact C (scale 1):
    # 1e-10 + 64 eps (1 + (gamma + alpha) eta k), (gamma + alpha) eta k <= 310 here
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(plain.numpy(), c.detach().numpy(), rtol=0,
                               atol=2 * (1e-10 + 64 * eps * 311))


def test_torch_func_transforms_take_torch_operations(numpy_calls):
    k = torch.tensor([5.0, 50.0, 500.0])

    def total(rho):
        return numeric.velocity_correlation(rho, k, **HYPER).sum()

    rho = torch.tensor(0.3)
    by_transform = torch.func.grad(total)(rho)
    assert not numpy_calls
    leaf = rho.clone().requires_grad_(True)
    (by_autograd,) = torch.autograd.grad(total(leaf), leaf)
    assert torch.equal(by_transform, by_autograd)


def test_switch_off_uses_torch_operations(monkeypatch, numpy_calls):
    monkeypatch.setattr(kernels, "CPU_TENSORS_VIA_NUMPY", False)
    c = numeric.velocity_correlation(torch.tensor([0.3, 3.0]), torch.tensor(10.0), **HYPER)
    assert not numpy_calls and c.dtype == torch.float64


@pytest.mark.gpu
def test_cuda_tensors_take_torch_operations(numpy_calls):
    c = numeric.velocity_correlation(torch.tensor([0.3, 3.0], device="cuda"), 10.0, **HYPER)
    assert not numpy_calls and c.device.type == "cuda"
