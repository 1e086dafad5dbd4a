"""Partial spectra (top-k + SLQ bulk), noise models and the predictions from them.

Tolerances: SLQ estimates are unbiased for the moments tr H^q (q <= 2m - 1) with a standard
error from the spread over probes (numeric/_spectrum.py); tests allow 4 standard errors
(a false failure has probability about 6e-5 for a normal estimate, per check). Exact routes
are compared at rounding level, with bounds stated where used.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import numeric
from numeric import IsotropicNoise, PerModeNoise, Spectrum

Z = 4.0  # standard errors allowed for an SLQ estimate (see the module docstring)


@pytest.fixture(scope="module")
def digits_X():
    from experiments.data import load_dataset

    return load_dataset("digits", seed=0).X


def _exact_moments(X, c, q):
    rho = np.linalg.eigvalsh(X.T @ X / X.shape[0])
    return c * float(np.sum(rho ** q))


@pytest.mark.parametrize("k", [0, 10])
def test_slq_moments_on_linear_regression_within_standard_errors(digits_X, k):
    c = 10
    slq = numeric.spectrum_from_least_squares(digits_X, num_outputs=c, k=k, bulk="slq",
                                              num_probes=30, lanczos_steps=20, seed=1)
    assert slq.num_parameters == c * digits_X.shape[1]
    # weights: each probe's Gauss weights sum to 1 exactly, times (P - k) / num_probes
    assert slq.weights().sum() == pytest.approx(slq.num_parameters, rel=1e-12)
    assert slq.num_hvps == 30 * 20
    for q in (1, 2, 3):
        value, error = slq.moment(q)
        exact = _exact_moments(digits_X, c, q)
        assert error > 0
        assert abs(value - exact) <= Z * error, (q, value, exact, error)
    assert abs(slq.trace - _exact_moments(digits_X, c, 1)) <= Z * slq.trace_stderr
    # nodes are Ritz values of the deflated operator: inside its spectrum (up to rounding)
    exact = numeric.spectrum_from_least_squares(digits_X, num_outputs=c, k=k)
    top = exact.bulk_nodes.max()
    assert slq.bulk_nodes.max() <= top * (1 + 1e-10)
    assert slq.bulk_nodes.min() >= exact.bulk_nodes.min() - 1e-10 * top


def test_exact_least_squares_spectrum_counts_every_mode(digits_X):
    c = 10
    spectrum = numeric.spectrum_from_least_squares(digits_X, num_outputs=c, k=25)
    eig = numeric.linear_regression_eigenpairs(digits_X, 25, num_outputs=c)
    np.testing.assert_array_equal(spectrum.eigenvalues, eig.eigenvalues)
    np.testing.assert_array_equal(spectrum.eigenvectors, eig.eigenvectors)
    assert spectrum.weights().sum() == spectrum.num_parameters
    full = np.sort(np.repeat(np.linalg.eigvalsh(digits_X.T @ digits_X / len(digits_X)), c))
    nodes, weights = spectrum.nodes(), spectrum.weights()
    order = np.argsort(nodes)
    rebuilt = np.repeat(nodes[order], weights[order].astype(int))
    # eigvalsh twice on the same matrix: identical up to a few ulps of the largest eigenvalue
    np.testing.assert_allclose(rebuilt, full, rtol=0, atol=64 * np.finfo(float).eps * full[-1])
    for q in (1, 2):
        assert spectrum.moment(q) == (pytest.approx(_exact_moments(digits_X, c, q),
                                                    rel=1e-12), 0.0)


def _mlp_problem():
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(64, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                                torch.nn.Linear(12, 2)).double()
    batches = [(X[:32], y[:32]), (X[32:], y[32:])]

    def loss(out, target):
        return ((out - target) ** 2).mean()

    return model, loss, batches


def test_slq_bulk_on_a_small_mlp_matches_the_dense_hessian():
    model, loss, batches = _mlp_problem()
    P = sum(p.numel() for p in model.parameters())
    dense = numeric.hessian_vector_product(model, loss, batches,
                                           torch.eye(P, dtype=torch.float64))
    dense = ((dense + dense.T) / 2).numpy()
    rho = np.linalg.eigvalsh(dense)[::-1]
    assert rho.min() < 0  # an MLP away from a minimum has negative curvature, kept below
    # 10 Lanczos steps make the quadrature exact for moments up to degree 19; 10 probes share
    # each operator call
    spectrum = numeric.spectrum_from_model(model, loss, batches, k=4, num_probes=30,
                                           lanczos_steps=10, tol=1e-8, seed=0, block_size=10)
    assert spectrum.num_parameters == P
    # top-k: Davis-Kahan, eigenvalue error <= residual^2 / gap; residual <= 1e-8 |rho_1|
    np.testing.assert_allclose(spectrum.eigenvalues, rho[:4], rtol=1e-9)
    assert isinstance(spectrum.eigenvectors, torch.Tensor)
    assert spectrum.eigenvectors.dtype == torch.float64
    for q in (1, 2, 3):
        value, error = spectrum.moment(q)
        exact = float(np.sum(rho ** q))
        assert abs(value - exact) <= Z * error, (q, value, exact, error)
    assert abs(spectrum.trace - rho.sum()) <= Z * spectrum.trace_stderr
    assert spectrum.negative_weight > 0  # negative curvature reported, never clipped
    assert spectrum.bulk_nodes.min() < 0
    assert spectrum.num_hvps >= 30 * 10
    assert model.training  # mode restored


@pytest.mark.gpu
def test_spectrum_from_model_on_cuda_keeps_the_device_and_equals_the_cpu_one():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, loss, batches = _mlp_problem()
    kwargs = dict(k=4, num_probes=10, lanczos_steps=10, tol=1e-8, seed=0, block_size=10)
    cpu = numeric.spectrum_from_model(model, loss, batches, **kwargs)
    cuda_batches = [(x.cuda(), y.cuda()) for x, y in batches]
    gpu = numeric.spectrum_from_model(model.cuda(), loss, cuda_batches, **kwargs)
    assert gpu.eigenvectors.device.type == "cuda" and gpu.eigenvectors.dtype == torch.float64
    # Same probes (CPU generators) and float64 products in another summation order: the top-k
    # agree to the residual bound, the quadrature nodes and weights to rounding amplified by
    # the Lanczos recurrences of 10 steps (1e-8 leaves a margin of ~1e5 over float64 rounding).
    np.testing.assert_allclose(gpu.eigenvalues, cpu.eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(gpu.bulk_nodes, cpu.bulk_nodes, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(gpu.bulk_weights, cpu.bulk_weights, rtol=1e-8, atol=1e-8)


def test_spectrum_save_load_round_trip(tmp_path, digits_X):
    spectrum = numeric.spectrum_from_least_squares(digits_X, num_outputs=3, k=5, bulk="slq",
                                                   num_probes=4, lanczos_steps=6)
    path = spectrum.save(tmp_path / "spectrum.npz")
    loaded = Spectrum.load(path)
    for name in ("eigenvalues", "residuals", "bulk_nodes", "bulk_weights", "bulk_probes",
                 "eigenvectors"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(spectrum, name))
    assert loaded.summary() == spectrum.summary()
    as_tensor = Spectrum.load(path, dtype=torch.float32)
    assert as_tensor.eigenvectors.dtype == torch.float32
    with np.load(path, allow_pickle=False) as data:  # nothing in the file needs pickle
        assert set(data.files) >= {"meta", "eigenvalues", "bulk_nodes"}
    light = Spectrum.load(spectrum.save(tmp_path / "light.npz", eigenvectors=False))
    assert light.eigenvectors is None


def _toy_spectrum(nodes, weights, top=(4.0, 3.0)):
    top = np.asarray(top, dtype=float)
    return Spectrum(eigenvalues=top, eigenvectors=None, residuals=None,
                    bulk_nodes=np.asarray(nodes, float), bulk_weights=np.asarray(weights, float),
                    bulk_method="exact", trace=float(top.sum() + np.dot(nodes, weights)),
                    trace_stderr=0.0, num_parameters=int(len(top) + sum(weights)))


def test_predictions_equal_the_kernels_on_an_exact_spectrum():
    spectrum = _toy_spectrum([2.0, 0.5, 0.1], [3.0, 2.0, 5.0])
    rho = np.array([4.0, 3.0] + [2.0] * 3 + [0.5] * 2 + [0.1] * 5)
    hyper = dict(eta=0.05, beta=0.9, lam=0.01, S=8.0)
    k = np.array([1.0, 10.0, 1000.0])
    for model in ("sde", "discrete"):
        speed = numeric.predicted_speed(spectrum, noise=IsotropicNoise(0.7), model=model,
                                        **hyper)
        expected = numeric.instantaneous_speed(rho, sigma2=0.7, model=model, **hyper)
        # a sum of 12 positive terms in two groupings: a few ulps
        assert float(speed) == pytest.approx(float(expected), rel=1e-13)
        assert speed.excluded_weight == 0 and speed.standard_error == 0
        disp = numeric.predicted_global_displacement(spectrum, k, noise=IsotropicNoise(0.7),
                                                     model=model, **hyper)
        np.testing.assert_allclose(disp.value, numeric.global_displacement(
            rho, k, sigma2=0.7, model=model, **hyper), rtol=1e-13)


def test_per_mode_noise_reduces_to_assumption_5():
    spectrum = _toy_spectrum([2.0, 0.5], [3.0, 2.0])
    hyper = dict(eta=0.05, beta=0.9, S=8.0, model="discrete")
    iso = numeric.predicted_speed(spectrum, noise=IsotropicNoise(0.3), **hyper)
    per = numeric.predicted_speed(spectrum, noise=PerModeNoise(0.3 * spectrum.eigenvalues, 0.3),
                                  **hyper)
    assert float(per) == pytest.approx(float(iso), rel=1e-14)
    # doubling the top modes' measured noise doubles exactly their part
    top_only = _toy_spectrum([], [])
    double = numeric.predicted_speed(spectrum, noise=PerModeNoise(
        0.6 * spectrum.eigenvalues, 0.3), **hyper)
    part = numeric.predicted_speed(top_only, noise=IsotropicNoise(0.3), **hyper)
    assert float(double) == pytest.approx(float(iso) + float(part), rel=1e-13)
    with pytest.raises(ValueError, match="top_variances"):
        numeric.predicted_speed(spectrum, noise=PerModeNoise([1.0], 0.3), **hyper)
    with pytest.raises(TypeError, match="noise"):
        numeric.predicted_speed(spectrum, noise=0.3, **hyper)


def test_isotropic_noise_fit_and_trace():
    rho = np.array([3.0, 2.0, 1.0])
    fitted = IsotropicNoise.fit(np.diag(0.5 * rho), rho)
    assert fitted.sigma2 == pytest.approx(0.5, rel=1e-14)
    assert fitted.fit_result.relative_mismatch == pytest.approx(0.0, abs=1e-14)
    spectrum = _toy_spectrum([1.0], [2.0])
    assert IsotropicNoise.from_trace(2.0 * spectrum.trace, spectrum).sigma2 == 2.0
    with pytest.raises(ValueError, match="sigma2"):
        IsotropicNoise(-1.0)


def test_nonpositive_modes_are_excluded_and_counted():
    spectrum = _toy_spectrum([1.0, 0.0, -0.5], [2.0, 3.0, 4.0])
    assert spectrum.negative_weight == 4.0
    hyper = dict(eta=0.05, beta=0.9, S=8.0, noise=IsotropicNoise(1.0), model="discrete")
    for lam, negative in ((0.0, 4.0), (1.0, 0.0)):
        speed = numeric.predicted_speed(spectrum, lam=lam, **hyper)
        assert speed.excluded_weight == 7.0  # rho <= 0: no noise under Assumption 5
        assert speed.negative_weight == negative  # of which rho + lam < 0
        kept = _toy_spectrum([1.0], [2.0])
        assert float(speed) == float(numeric.predicted_speed(kept, lam=lam, **hyper))
    with pytest.raises(ValueError, match="stability edge"):
        numeric.predicted_speed(spectrum, eta=2.0, beta=0.9, S=8.0, noise=IsotropicNoise(1.0))


def test_spectrum_validation_names_the_argument():
    with pytest.raises(ValueError, match="descending"):
        _toy_spectrum([], [], top=(1.0, 2.0))
    with pytest.raises(ValueError, match="bulk_weights"):
        _toy_spectrum([1.0], [-1.0])
    with pytest.raises(ValueError, match="num_probes"):
        numeric.stochastic_lanczos_quadrature(lambda v: v, 5, num_probes=0)
    with pytest.raises(ValueError, match="deflate"):
        numeric.stochastic_lanczos_quadrature(lambda v: v, 5, deflate=torch.zeros(2, 4))


def test_slq_exhausts_a_small_space_exactly():
    # P - k = 6 dimensions and 10 steps asked: the Krylov space is exhausted after at most 6
    # steps and the quadrature is exact for every moment.
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    values = np.array([5.0, 4.0, 2.0, 1.0, 0.5, 0.0, -1.0, -2.0])
    H = torch.from_numpy((basis * values) @ basis.T)
    result = numeric.stochastic_lanczos_quadrature(lambda v: v @ H, 8, num_probes=3,
                                                   lanczos_steps=10,
                                                   deflate=torch.from_numpy(basis[:, :2].T))
    assert result.steps.max() <= 6 and result.dimension == 6
    # an exhausted Krylov space makes the Ritz values exact eigenvalues of the deflated
    # operator (float64 Lanczos with full reorthogonalisation: ~1e-14 here)
    nodes = result.nodes[result.weights > 1e-12]
    distance = np.abs(nodes[:, None] - values[None, 2:]).min(1)
    assert distance.max() <= 1e-10
    assert result.weights.sum() == pytest.approx(6.0, rel=1e-14)


# --- mnist5k linear regression: top 30 exact + SLQ bulk against the full exact spectrum ----


@pytest.fixture(scope="module")
def mnist_spectra():
    from experiments.data import load_dataset

    data = load_dataset("mnist5k", seed=0)
    exact = numeric.spectrum_from_least_squares(data.X, num_outputs=data.num_outputs, k=30)
    return data, exact


def _demo_hyper(exact):
    # the demo's setting: eta at 10% of the stability edge 2(1 + beta)/h_max, S = 128
    beta = 0.9
    return dict(eta=0.1 * 2 * (1 + beta) / exact.eigenvalues[0], beta=beta, S=128.0,
                noise=IsotropicNoise(1.0))


def test_mnist5k_displacement_from_top30_plus_slq_bulk(mnist_spectra):
    data, exact = mnist_spectra
    slq = numeric.spectrum_from_least_squares(data.X, num_outputs=data.num_outputs, k=30,
                                              bulk="slq", num_probes=30, lanczos_steps=100)
    hyper = _demo_hyper(exact)
    k = np.unique(np.round(np.logspace(0, 4, 60)))
    reference = numeric.predicted_global_displacement(exact, k, **hyper)
    estimate = numeric.predicted_global_displacement(slq, k, **hyper)
    # unbiased up to the quadrature's resolution: 100 Gauss nodes per probe resolve the
    # density down to curvatures ~1/(eta k) for k <= 1e4 (a longer range needs more steps,
    # see the slow test); the error is the probes' spread, 4 standard errors
    assert np.all(np.abs(estimate.value - reference.value) <= Z * estimate.standard_error)
    assert np.all(estimate.standard_error / estimate.value < 0.01)
    # the exponent on the demo's window (1500 steps, last 2/3): the fit's slope moves by
    # less than the curve's relative error over the window (< 4% here) over log(1500/500)
    steps = np.arange(1, 1501)
    c_exact = numeric.predicted_exponent(exact, steps, **hyper)
    c_slq = numeric.predicted_exponent(slq, steps, **hyper)
    assert abs(c_slq.value - c_exact.value) <= 0.02
    assert reference.excluded_weight == 1310  # the 131 always-zero pixels, times 10 outputs


@pytest.mark.slow
def test_mnist5k_displacement_within_2_percent_up_to_1e6_steps(mnist_spectra):
    data, exact = mnist_spectra
    # k up to 1e6 needs the density resolved down to curvatures ~1/(eta 1e6) ~ 3e-6 rho_max:
    # 400 Lanczos steps per probe (100 steps leave 22% there, 50 steps 25% at k ~ 6e4, from
    # the nodes near rho = 0). Two sources of error: the probes' spread, largest at small k
    # (relative standard error <= 0.6% with 80 probes, so 2% is >= 3.4 standard errors,
    # checked below), and the quadrature's resolution near rho = 0, which dominates at
    # k ~ 1e6 (1.3% there, 18 standard errors: a bias, not noise).
    slq = numeric.spectrum_from_least_squares(data.X, num_outputs=data.num_outputs, k=30,
                                              bulk="slq", num_probes=80, lanczos_steps=400,
                                              seed=2)
    hyper = _demo_hyper(exact)
    k = np.unique(np.round(np.logspace(0, 6, 120)))
    reference = numeric.predicted_global_displacement(exact, k, **hyper).value
    estimate = numeric.predicted_global_displacement(slq, k, **hyper)
    assert np.all(estimate.standard_error / estimate.value <= 0.02 / 3.4)
    assert np.all(np.abs(estimate.value / reference - 1) <= 0.02)
    steps = np.arange(1, 1501)
    assert abs(numeric.predicted_exponent(slq, steps, **hyper).value
               - numeric.predicted_exponent(exact, steps, **hyper).value) <= 0.02
