"""The public kernel contract: shapes, broadcasting, backends, keyword-only, bad input.

Accuracy against 50-digit references, scipy and gradients live in the other test_kernels_*
files; here the values are only checked where a shape or a route must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import numeric
from numeric import kernels

torch = pytest.importorskip("torch")

from float_bounds import EPS, gamma  # noqa: E402  (tests/numeric is on pytest's pythonpath)

HYPER = dict(eta=0.05, beta=0.9, lam=1e-3)
NOISE = dict(S=16.0, sigma2=0.7)
MODELS = ("sde", "discrete")


def _calls(rho, k):
    """Every public function at (rho, k), with its outputs as a tuple."""
    return {
        "damping_ratio": lambda m: (numeric.damping_ratio(rho, **HYPER),),
        "mean_trajectory": lambda m: numeric.mean_trajectory(rho, k, 1.0, -0.5, **HYPER, model=m),
        "velocity_correlation": lambda m: (numeric.velocity_correlation(rho, k, **HYPER, model=m),),
        "stationary_variance": lambda m: numeric.stationary_variance(rho, **HYPER, **NOISE, model=m),
    }


@pytest.mark.parametrize("model", MODELS)
def test_outputs_broadcast_over_all_arguments(model):
    rho = np.array([1e-6, 0.1, 3.0])[:, None]
    k = np.array([0.0, 1.0, 7.0, 100.0])
    for name, call in _calls(rho, k).items():
        for out in call(model):
            expected = (3, 4) if name in ("mean_trajectory", "velocity_correlation") else (3, 1)
            assert isinstance(out, np.ndarray) and out.dtype == np.float64, name
            assert out.shape == expected, name
    a, b = numeric.mean_trajectory(1.0, k, np.array([1.0, 2.0])[:, None, None], 0.0,
                                   eta=np.array([0.01, 0.02, 0.03])[:, None], beta=0.5, model=model)
    assert a.shape == b.shape == (2, 3, 4)


def test_python_floats_give_numpy_float64_scalars():
    value = numeric.velocity_correlation(1.0, 3, eta=0.1, beta=0.5)
    assert isinstance(value, np.float64)
    a, b = numeric.mean_trajectory(1.0, 3, 1.0, 0.0, eta=0.1, beta=0.5)
    assert isinstance(a, np.float64) and isinstance(b, np.float64)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_inputs_keep_dtype_and_device_and_match_numpy(model, dtype):
    rho = np.array([1e-4, 0.3, 2.0, 5.0])
    k = np.array([0.0, 3.0, 10.0, 250.0])
    for name, call in _calls(rho, k).items():
        expected = call(model)
        got = _calls(torch.tensor(rho, dtype=dtype), torch.tensor(k, dtype=dtype))[name](model)
        for e, g in zip(expected, got):
            assert isinstance(g, torch.Tensor) and g.dtype == dtype and g.device.type == "cpu"
            # float64: each backend meets the accuracy contract, relative
            # 1e-10 + 64 eps (1 + gamma t + alpha t) with (gamma + alpha) t <= 150 on these
            # points, so they agree within twice it (test_kernels_backends.py says why no
            # tighter figure holds); float32: rounding of the inputs, 1e-4 of the scale
            tolerance = (2 * (1e-10 + 64 * EPS * 151) if dtype == torch.float64 else 1e-4)
            scale = np.maximum(np.abs(e), 1.0)
            assert np.all(np.abs(g.numpy().astype(np.float64) - e) <= tolerance * scale), name


@pytest.mark.gpu
def test_cuda_tensors_stay_on_the_device():
    rho = torch.tensor([0.1, 1.0], device="cuda")
    out = numeric.velocity_correlation(rho, 5.0, eta=0.1, beta=0.5)
    assert out.device.type == "cuda"
    total = numeric.global_displacement(rho, torch.tensor([1.0, 10.0], device="cuda"),
                                        eta=0.1, beta=0.5, **NOISE)
    assert total.device.type == "cuda" and total.shape == (2,)


@pytest.mark.parametrize("call", [
    lambda: numeric.damping_ratio(1.0, 0.1, 0.5),
    lambda: numeric.velocity_correlation(1.0, 2.0, 0.1, 0.5),
    lambda: numeric.mean_trajectory(1.0, 2.0, 1.0, 0.0, 0.1, 0.5),
    lambda: numeric.stationary_variance(1.0, 0.1, 0.5, 0.0, 1.0, 1.0),
])
def test_hyperparameters_are_keyword_only(call):
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("argument, value, fragment", [
    ("eta", 0.0, "> 0"),
    ("eta", -1.0, "> 0"),
    ("beta", 1.0, "[0, 1)"),
    ("beta", -0.1, "[0, 1)"),
    ("lam", -1e-3, ">= 0"),
    ("S", 0.0, "> 0"),
    ("sigma2", -1.0, ">= 0"),
    ("k", -1.0, ">= 0"),
    ("eta", float("nan"), "finite"),
    ("sigma2", float("inf"), "finite"),
    ("k", np.array([1.0, np.inf]), "finite"),
])
def test_bad_values_name_the_argument_the_value_and_the_range(argument, value, fragment):
    arguments = dict(rho=np.array([0.5, 1.0]), k=np.array([1.0, 2.0]), eta=0.1, beta=0.5,
                     lam=0.0, S=8.0, sigma2=1.0)
    arguments[argument] = value
    with pytest.raises(ValueError) as error:
        numeric.global_displacement(arguments.pop("rho"), arguments.pop("k"), **arguments)
    message = str(error.value)
    assert message.startswith(argument) and fragment in message
    shown = np.asarray(value, dtype=float).reshape(-1)
    assert repr(float(shown[~(np.isfinite(shown) & (shown >= 0))][0] if shown.size > 1 else shown[0])) in message


def test_negative_rho_says_how_many_and_how_to_proceed():
    with pytest.raises(ValueError) as error:
        numeric.velocity_correlation(np.array([-1e-3, 0.5, -2.0, 1.0]), 1.0, eta=0.1, beta=0.5)
    message = str(error.value)
    assert "2 negative of 4" in message and "-2.0" in message
    assert "clip" in message.lower() and "project" in message


@pytest.mark.parametrize("call", [
    lambda: numeric.stationary_variance(np.array([1.0, 45.0, 60.0]), eta=0.1, beta=0.5, S=1,
                                        sigma2=1, model="discrete"),
    lambda: numeric.velocity_correlation(np.array([1.0, 45.0, 60.0]), 3.0, eta=0.1, beta=0.5,
                                         model="discrete"),
    lambda: numeric.instantaneous_speed(np.array([1.0, 45.0, 60.0]), eta=0.1, beta=0.5, S=1,
                                        sigma2=1, model="discrete"),
    lambda: numeric.global_displacement(np.array([1.0, 45.0, 60.0]), np.array([1.0, 5.0]),
                                        eta=0.1, beta=0.5, S=1, sigma2=1, model="discrete"),
])
def test_discrete_stationary_quantities_refuse_unstable_modes_and_count_them(call):
    # edge: eta (rho + lam) >= 2 (1 + beta) = 3, i.e. rho >= 30: two of the three modes
    with pytest.raises(ValueError, match=r"\b2\b.*stability edge"):
        call()


def test_discrete_mean_trajectory_allows_unstable_modes():
    a, _ = numeric.mean_trajectory(45.0, 3.0, 1.0, 0.0, eta=0.1, beta=0.5, model="discrete")
    M = np.array([[1 - 4.5, 0.05], [-45.0, 0.5]])
    # M^3 by two 2x2 products: within gamma(2) [|M|^3]_00 each; the closed form within the
    # accuracy contract (1e-10 + 64 eps (1 + ...)) of its propagator scale, at most
    # [|M|^3]_00 here (k = 3, |log of the eigenvalues| < 2.5)
    envelope = np.linalg.matrix_power(np.abs(M), 3)[0, 0]
    reference = np.linalg.matrix_power(M, 3)[0, 0]
    assert abs(a - reference) <= 2 * gamma(2) * envelope + (1e-10 + 64 * EPS * 8) * envelope


def test_discrete_model_needs_whole_steps():
    with pytest.raises(ValueError, match=r"k must be a whole number.*2\.5"):
        numeric.velocity_correlation(1.0, np.array([1.0, 2.5]), eta=0.1, beta=0.5, model="discrete")
    # the SDE model takes continuous k
    assert np.isfinite(numeric.velocity_correlation(1.0, 2.5, eta=0.1, beta=0.5))


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: numeric.velocity_correlation(1.0, 1.0, eta=0.1, beta=0.5, model="exact"),
     ValueError, "'exact'"),
    (lambda: numeric.velocity_correlation(np.ones(3), np.ones(4), eta=0.1, beta=0.5),
     ValueError, "broadcast"),
    (lambda: numeric.velocity_correlation("1.0", 1.0, eta=0.1, beta=0.5), TypeError, "rho"),
    (lambda: numeric.velocity_correlation(1.0, 1.0, eta=0.1 + 0j, beta=0.5), TypeError, "eta"),
    (lambda: numeric.velocity_correlation(torch.ones(2), torch.ones(2, device="meta"),
                                          eta=0.1, beta=0.5), ValueError, "device"),
    (lambda: numeric.instantaneous_speed(1.0, eta=0.1, beta=0.5, **NOISE), ValueError, "last axis"),
    (lambda: numeric.global_displacement(np.ones((2, 2)), 1.0, eta=0.1, beta=0.5, **NOISE),
     ValueError, "1-D"),
])
def test_other_bad_input(call, error, fragment):
    with pytest.raises(error, match=None) as caught:
        call()
    assert fragment in str(caught.value)


def test_damping_ratio_regimes_and_flat_modes():
    eta, beta = 0.1, 0.5
    critical = (1 - beta) ** 2 / (2 * eta * (1 + beta))
    zeta = numeric.damping_ratio(np.array([0.0, critical / 4, critical, 4 * critical]),
                                 eta=eta, beta=beta)
    # critical carries gamma(6) (relative), zeta = (1 - beta) / sqrt(2 eta (1 + beta) h)
    # about 8 correctly rounded operations: half of the first plus the second
    np.testing.assert_allclose(zeta[1:], [2.0, 1.0, 0.5], rtol=gamma(14))
    assert zeta[0] == np.inf


@pytest.mark.parametrize("model", MODELS)
def test_mean_trajectory_starts_at_the_initial_state_and_velocity_correlation_at_one(model):
    rho = np.array([0.0, 1e-8, 0.3, 7.0])
    # exact by construction: at k = 0 every primitive is e^0 = 1, cos 0 = 1, sin 0 = tan 0 = 0
    # or an exact product with 0 (exact special values of every libm), so no rounding enters
    a, b = numeric.mean_trajectory(rho, 0.0, 0.25, -3.0, **HYPER, model=model)
    assert np.all(a == 0.25) and np.all(b == -3.0)
    assert np.all(numeric.velocity_correlation(rho, 0.0, **HYPER, model=model) == 1.0)


def test_sde_mean_trajectory_is_the_matrix_exponential():
    eta, beta, lam = 0.05, 0.9, 0.0
    for rho in (1e-3, 0.19, 0.2, 0.21, 30.0):  # over, near-critical (0.2105...), under
        for k in (1.0, 17.5, 400.0):
            gamma, omega2 = (1 - beta) / (eta * (1 + beta)), 2 * rho / (eta * (1 + beta))
            expected = scipy.linalg.expm(-np.array([[0, -1], [omega2, 2 * gamma]]) * eta * k)
            got = np.array(numeric.mean_trajectory(rho, k, 1.0, 0.0, eta=eta, beta=beta, lam=lam))
            # expm (Pade, scaling and squaring) is backward stable; its forward error is at
            # most about its condition number ||A t|| times eps of its size (64 eps ||A t||
            # allowed), and the kernel is within its contract 1e-10 + 64 eps (1 + gamma t +
            # alpha t) of the propagator's size
            drift = np.array([[0, -1], [omega2, 2 * gamma]]) * eta * k
            alpha = np.sqrt(abs(gamma**2 - omega2))
            size = np.abs(expected).max()
            bound = size * (64 * EPS * np.linalg.norm(drift, 2)
                            + 1e-10 + 64 * EPS * (1 + (gamma + alpha) * eta * k))
            assert np.all(np.abs(got - expected[:, 0]) <= bound)


def test_instantaneous_speed_is_the_trace_formula_and_sums_the_last_axis(rng):
    spectrum = rng.exponential(size=(3, 50))
    eta = np.array([0.01, 0.02])[:, None, None]
    speed = numeric.instantaneous_speed(spectrum, eta=eta, beta=0.9, **NOISE)
    assert speed.shape == (2, 3)
    expected = eta[..., 0] ** 2 * NOISE["sigma2"] * spectrum.sum(-1) / (NOISE["S"] * (1 - 0.81))
    # 50 positive terms and a few operations on each side (gamma(60) each); 1 - beta^2 and
    # (1 - beta)(1 + beta) differ by the rounding of 0.9^2 amplified by 0.81 / 0.19: 5 eps
    np.testing.assert_allclose(speed, expected, rtol=2 * gamma(60) + 8 * EPS)


@pytest.mark.parametrize("model", MODELS)
def test_global_displacement_is_the_double_sum_over_lags(model, rng):
    spectrum = np.concatenate([[0.0], rng.exponential(size=20)])
    k = np.array([0.0, 1.0, 2.0, 9.0, 40.0])
    eta, beta = 0.03, 0.8
    total = numeric.global_displacement(spectrum, k, eta=eta, beta=beta, **NOISE, model=model)
    _, var_v = numeric.stationary_variance(spectrum, eta=eta, beta=beta, **NOISE, model=model)
    lags = np.arange(40.0)
    corr = numeric.velocity_correlation(spectrum[:, None], lags, eta=eta, beta=beta, model=model)
    gamma_eta = (1 - beta) / (1 + beta)
    alpha_eta = np.sqrt(np.abs(gamma_eta**2 - 2 * eta * spectrum.max() / (1 + beta)))
    for steps, value in zip(k.astype(int), total):
        weights = steps - lags[1:steps]
        inner = steps + 2 * (weights * corr[:, 1:steps]).sum(-1)
        expected = eta**2 * (var_v * inner).sum()
        # C alternates in sign, so the bound is relative to the sum of absolute values: the
        # explicit sums round within gamma(k + n + 4) of it; each C(j) and the closed-form
        # lag sum are within the contract 1e-10 + 64 eps (1 + (gamma + alpha) eta k)
        envelope = eta**2 * (var_v * (steps + 2 * (weights * np.abs(corr[:, 1:steps])).sum(-1)
                                      )).sum()
        contract = 1e-10 + 64 * EPS * (1 + (gamma_eta + alpha_eta) * max(steps, 1))
        assert abs(value - expected) <= (gamma(steps + spectrum.size + 4) + 2 * contract) * max(
            envelope, 1e-300)


def test_global_displacement_chunks_do_not_change_the_result(monkeypatch, rng):
    spectrum = rng.exponential(size=1000)
    k = np.logspace(0, 4, 7)
    whole = numeric.global_displacement(spectrum, k, eta=0.01, beta=0.9, **NOISE)
    monkeypatch.setattr(kernels, "MEMORY_BUDGET_BYTES", 1)  # one mode per chunk
    chunked = numeric.global_displacement(spectrum, k, eta=0.01, beta=0.9, **NOISE)
    # each mode's term is the same elementwise NumPy operations on the same numbers, so only
    # the order of the sum over 1000 positive terms changes: gamma(1000) on either side
    np.testing.assert_allclose(chunked, whole, rtol=2 * gamma(1001))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shapes", [((40, 1), (1, 9)), ((500,), ())])
def test_numpy_blocks_do_not_change_the_result(monkeypatch, rng, model, shapes):
    """Large NumPy inputs are evaluated in blocks of the leading axis (kernels._NUMPY_BLOCK);
    a block of 7 elements forces many blocks, including one row at a time for 2-D."""
    # overdamped, near-critical and underdamped modes in one array, all below the edge 76
    spread = np.logspace(-4, 1.5, np.prod(shapes[0])).reshape(shapes[0])
    rho = rng.uniform(0.5, 1.5, size=shapes[0]) * spread
    k = np.floor(rng.uniform(0, 300, size=shapes[1]))
    whole = {name: call(model) for name, call in _calls(rho, k).items()}
    monkeypatch.setattr(kernels, "_NUMPY_BLOCK", 7)
    for name, call in _calls(rho, k).items():
        for blocked, reference in zip(call(model), whole[name]):
            assert blocked.shape == reference.shape
            # the same elementwise operations on the same values: equal up to NumPy's SIMD
            # and scalar loops rounding the last bit differently on block tails
            np.testing.assert_allclose(blocked, reference, rtol=4 * np.finfo(float).eps,
                                       atol=0, err_msg=name)


def test_numpy_cos_sin_from_the_half_angle_tangent():
    """The NumPy primitives take cos and sin from tan(x/2) (vectorised, unlike NumPy's float64
    cos and sin); both must stay within a few ulps of the library functions everywhere."""
    from numeric._primitives_numpy import _cos_sin

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(0, 10, 10**5), 10 ** rng.uniform(-300, 9, 10**5),
                        np.pi * np.arange(-8, 9) / 4, [0.0, np.pi / 2, np.pi]])
    cos, sin = _cos_sin(x)
    eps = np.finfo(float).eps
    # bounded functions: absolute error; tan is < 1 ulp and the rational formulas in
    # m = min(|u|, 1/|u|) <= 1 add a few roundings, so 4 ulps of 1 bound both
    np.testing.assert_allclose(cos, np.cos(x), rtol=0, atol=4 * eps)
    np.testing.assert_allclose(sin, np.sin(x), rtol=0, atol=4 * eps)
    # tiny angles keep sin's relative accuracy (sin x = x)
    tiny = x[(x > 0) & (x < 1e-8)]
    np.testing.assert_allclose(_cos_sin(tiny)[1], tiny, rtol=4 * eps)


def test_global_displacement_broadcasts_k_with_the_hyperparameters():
    k = np.array([1.0, 10.0, 100.0])
    out = numeric.global_displacement(np.array([0.1, 1.0]), k, eta=np.array([0.01, 0.02])[:, None],
                                      beta=0.5, **NOISE)
    assert out.shape == (2, 3)
    single = numeric.global_displacement(np.array([0.1, 1.0]), 10.0, eta=0.02, beta=0.5, **NOISE)
    # the same per-mode values summed over 2 modes in possibly another order (as above)
    assert out[1, 1] == pytest.approx(single, rel=2 * gamma(4))


def test_gradients_are_finite_exactly_at_critical_damping():
    eta, beta = 0.1, 0.5
    rho = torch.tensor((1 - beta) ** 2 / (2 * eta * (1 + beta)), requires_grad=True)
    eta_t = torch.tensor(eta, requires_grad=True)
    c = numeric.velocity_correlation(rho, torch.tensor([0.0, 1.0, 10.0, 1e7]), eta=eta_t, beta=beta)
    c.sum().backward()
    assert torch.isfinite(rho.grad) and torch.isfinite(eta_t.grad)
