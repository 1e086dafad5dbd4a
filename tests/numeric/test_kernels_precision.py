"""The kernels' precision rule: float64 inside for every input dtype, device and route; the
result rounded once to the input dtype (numeric/kernels.py, "Precision").

So the same float32 input gives the same numbers whether or not it requires grad (torch
operations or the NumPy kernels), on the CPU and on CUDA. Bound: each route's float64 value is
within the kernels' stated accuracy (relative 1e-10 + 64 eps (1 + gamma t + alpha t), below
1e-9 on this grid) of the exact value, far below float32's half ulp (3e-8 relative), so the
float32 roundings of any two routes, and of the float64 reference, are equal or adjacent:
at most one float32 ulp apart.
"""

from __future__ import annotations

import numpy as np
import pytest

import numeric
from numeric import kernels

torch = pytest.importorskip("torch")

# under-, near critically and overdamped modes, small and large lags
RHO = np.array([1e-3, 0.05, 0.2, 1.0, 7.0], dtype=np.float32)
K = np.array([0.0, 1.0, 3.0, 40.0, 900.0], dtype=np.float32)
# Python floats become tensors of the inputs' dtype: give values that float32 holds exactly, so
# that the float64 reference sees the same numbers
HYPER = {name: float(np.float32(value)) for name, value in
         dict(eta=0.1, beta=0.9, lam=1e-3).items()}
NOISE = dict(S=16.0, sigma2=0.5)


def _kernels():
    """name -> function of (rho, k) tensors returning one tensor, for every public kernel."""
    return {
        "damping_ratio": lambda r, k: numeric.damping_ratio(r, **HYPER),
        "mean_trajectory": lambda r, k: numeric.mean_trajectory(r, k, 1.0, -0.5, **HYPER)[0],
        "velocity_correlation": lambda r, k: numeric.velocity_correlation(r, k, **HYPER),
        "velocity_correlation_discrete": lambda r, k: numeric.velocity_correlation(
            r, k, model="discrete", **HYPER),
        "stationary_variance": lambda r, k: numeric.stationary_variance(
            r, **HYPER, **NOISE)[1],
        "instantaneous_speed": lambda r, k: numeric.instantaneous_speed(r, **HYPER, **NOISE),
        "global_displacement": lambda r, k: numeric.global_displacement(
            r, k[:, None], **HYPER, **NOISE),
        "global_displacement_discrete": lambda r, k: numeric.global_displacement(
            r, k[:, None], model="discrete", **HYPER, **NOISE),
    }


def _float64_reference(function):
    # the float32 inputs are exact in float64: evaluate them there (NumPy kernels)
    value = function(RHO.astype(np.float64), K.astype(np.float64))
    return np.asarray(value, dtype=np.float64)


def _within_one_float32_ulp(got, reference64):
    rounded = reference64.astype(np.float32)
    ulp = np.spacing(np.abs(rounded))
    return np.all(np.abs(got.astype(np.float64) - rounded.astype(np.float64)) <= ulp)


@pytest.mark.parametrize("name", sorted(_kernels()))
@pytest.mark.parametrize("via_numpy", [True, False])
def test_float32_with_and_without_grad_is_the_rounded_float64_value(name, via_numpy,
                                                                    monkeypatch):
    monkeypatch.setattr(kernels, "CPU_TENSORS_VIA_NUMPY", via_numpy)
    function = _kernels()[name]
    reference = _float64_reference(function)
    plain = function(torch.tensor(RHO), torch.tensor(K))
    rho = torch.tensor(RHO, requires_grad=True)
    graphed = function(rho, torch.tensor(K))
    assert plain.dtype == graphed.dtype == torch.float32
    assert graphed.requires_grad
    assert _within_one_float32_ulp(plain.numpy(), reference), name
    assert _within_one_float32_ulp(graphed.detach().numpy(), reference), name
    np.testing.assert_array_less(np.abs(plain.numpy().astype(np.float64)
                                        - graphed.detach().numpy().astype(np.float64)),
                                 np.spacing(np.abs(plain.numpy())) * 1.0001 + 1e-45)
    # the gradient reaches the float32 leaf, in float32
    (gradient,) = torch.autograd.grad(graphed.sum(), rho)
    assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_give_their_dtype_rounded_once(dtype):
    dtype = getattr(torch, dtype)
    hyper = {n: float(torch.tensor(v, dtype=dtype)) for n, v in HYPER.items()}  # exact there
    rho = torch.tensor([0.05, 1.0, 7.0], dtype=dtype)
    got = numeric.velocity_correlation(rho, torch.tensor(40.0, dtype=dtype), **hyper)
    assert got.dtype == dtype
    exact = numeric.velocity_correlation(rho.double().numpy(), 40.0, **hyper)
    # one rounding of the float64 value: the two float64 routes agree far below half an ulp of
    # the format, so their roundings are equal or adjacent: one ulp <= |x| 2^-p apart
    # (p = 10 fraction bits for float16, 7 for bfloat16)
    bits = 10 if dtype == torch.float16 else 7
    rounded = torch.tensor(exact).to(dtype).double().numpy()
    assert np.all(np.abs(got.double().numpy() - rounded) <= np.abs(exact) * 2.0**-bits)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(_kernels()))
def test_float32_on_cuda_is_the_rounded_float64_value(name):
    function = _kernels()[name]
    reference = _float64_reference(function)
    rho = torch.tensor(RHO, device="cuda", requires_grad=True)
    for argument in (rho, rho.detach()):
        got = function(argument, torch.tensor(K, device="cuda"))
        assert got.dtype == torch.float32 and got.device.type == "cuda"
        assert _within_one_float32_ulp(got.detach().cpu().numpy(), reference), name
