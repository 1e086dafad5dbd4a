"""Speed of the closed-form kernels against the routes a user would otherwise take.

Ratios (higher is better), each against a baseline timed in the same process:

* velocity_correlation on 10^6 (rho, k) pairs, NumPy and Torch (CPU: by default, and with
  torch operations, the path that autograd and CUDA take; CUDA where there is a device):
  - vs each mode's 2x2 scipy.linalg.expm (a subset timed, extrapolated), target 50;
  - vs sympy.lambdify of the three-regime Piecewise (stock lambdify, which is also NaN at
    zeta = 1), target 3;
  - vs one hand-fused expression of the underdamped formula alone (wrong for the other
    regimes: the floor for the backend), target 0.5, i.e. within 2x.
* global_displacement for a 10^5-mode spectrum at 1000 log-spaced k in [1, 1e6]: its absolute
  time, and the ratio vs the explicit double sum over lags (O(k) per k; timed on a subset of
  modes and of k, extrapolated by the number of (mode, lag) terms), target 1000.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.linalg
import sympy as sp

import numeric
from numeric import kernels

N_PAIRS = 10 ** 6
ETA, BETA, LAM = 1e-2, 0.9, 1e-4  # zeta from ~50 (rho = 1e-4) down to ~0.05 (rho = 1e2)


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(20230107)
    rho = np.exp(rng.uniform(np.log(1e-4), np.log(1e2), N_PAIRS))
    k = np.floor(np.exp(rng.uniform(0.0, np.log(1e4), N_PAIRS)))
    return rho, k


def _expm_correlation(rho, k):
    """[e^{-A eta k}]_22 one mode at a time (docs/theory.md sections 3-5)."""
    out = np.empty(rho.size)
    for i in range(rho.size):
        h = rho[i] + LAM
        drift = np.array([[0.0, -1.0],
                          [2 * h / (ETA * (1 + BETA)), 2 * (1 - BETA) / (ETA * (1 + BETA))]])
        out[i] = scipy.linalg.expm(-drift * ETA * k[i])[1, 1]
    return out


def _three_regime_piecewise():
    rho, k, eta, beta, lam = sp.symbols("rho k eta beta lam", positive=True)
    gamma = (1 - beta) / (eta * (1 + beta))
    omega2 = 2 * (rho + lam) / (eta * (1 + beta))
    t = eta * k
    delta = gamma ** 2 - omega2
    decay = sp.exp(-gamma * t)
    correlation = sp.Piecewise(
        (decay * (sp.cosh(sp.sqrt(delta) * t) - gamma * sp.sinh(sp.sqrt(delta) * t)
                  / sp.sqrt(delta)), delta > 0),
        (decay * (1 - gamma * t), sp.Eq(delta, 0)),
        (decay * (sp.cos(sp.sqrt(-delta) * t) - gamma * sp.sin(sp.sqrt(-delta) * t)
                  / sp.sqrt(-delta)), True))
    return (rho, k, eta, beta, lam), correlation


def _underdamped_numpy(rho, k):
    """The underdamped formula alone, written by hand with each intermediate computed once
    (|.| keeps overdamped modes from raising in sqrt; their values are wrong, which is the
    point: this is the floor, the least work any correct kernel must do with stock NumPy on
    whole arrays). Our NumPy kernel runs below it: it evaluates in cache-sized blocks and
    takes cos and sin from one vectorised tan (NumPy's float64 cos and sin are scalar loops)."""
    gamma = (1 - BETA) / (ETA * (1 + BETA))
    t = ETA * k
    alpha = np.sqrt(np.abs(2 * (rho + LAM) / (ETA * (1 + BETA)) - gamma ** 2))
    return np.exp(-gamma * t) * (np.cos(alpha * t) - gamma * np.sin(alpha * t) / alpha)


def _underdamped_torch(rho, k):
    import torch

    gamma = (1 - BETA) / (ETA * (1 + BETA))
    t = ETA * k
    alpha = torch.sqrt(torch.abs(2 * (rho + LAM) / (ETA * (1 + BETA)) - gamma ** 2))
    return torch.exp(-gamma * t) * (torch.cos(alpha * t) - gamma * torch.sin(alpha * t) / alpha)


EXPM_SUBSET = 2000


@pytest.fixture(scope="module")
def lambdified():
    arguments, correlation = _three_regime_piecewise()
    return {module: sp.lambdify(arguments, correlation, modules=module)
            for module in ("numpy", "torch")}


def _numpy_case(pairs, lambdified, baseline):
    rho, k = pairs

    def candidate():
        return numeric.velocity_correlation(rho, k, eta=ETA, beta=BETA, lam=LAM)

    sub = slice(0, EXPM_SUBSET)
    if baseline == "expm":
        return candidate, lambda: _expm_correlation(rho[sub], k[sub]), N_PAIRS / EXPM_SUBSET

    if baseline == "lambdify":
        def piecewise():
            with np.errstate(all="ignore"):  # numpy.select evaluates every branch
                return lambdified["numpy"](rho, k, ETA, BETA, LAM)

        return candidate, piecewise, 1.0
    return candidate, lambda: _underdamped_numpy(rho, k), 1.0


def _torch_case(pairs, lambdified, baseline, device="cpu", torch_operations=False):
    """Candidate and baseline on tensors; ``torch_operations`` evaluates with torch on the
    CPU too (the path that autograd and CUDA take) instead of the NumPy kernels."""
    import torch

    rho_np, k_np = pairs
    rho = torch.as_tensor(rho_np, device=device)
    k = torch.as_tensor(k_np, device=device)
    hyper = {name: torch.tensor(value, dtype=torch.float64, device=device)
             for name, value in (("eta", ETA), ("beta", BETA), ("lam", LAM))}

    def synchronised(function):
        """On CUDA a call returns before the kernels finish: wait for them, so that the time
        is the work's."""
        if torch.device(device).type != "cuda":
            return function

        def timed():
            out = function()
            torch.cuda.synchronize(device)
            return out

        return timed

    @synchronised
    def candidate():
        if not torch_operations:
            return numeric.velocity_correlation(rho, k, **hyper)
        kernels.CPU_TENSORS_VIA_NUMPY = False
        try:
            return numeric.velocity_correlation(rho, k, **hyper)
        finally:
            kernels.CPU_TENSORS_VIA_NUMPY = True

    sub = slice(0, EXPM_SUBSET)
    if baseline == "expm":
        return candidate, lambda: _expm_correlation(rho_np[sub], k_np[sub]), N_PAIRS / EXPM_SUBSET
    if baseline == "lambdify":
        return candidate, synchronised(lambda: lambdified["torch"](
            rho, k, hyper["eta"], hyper["beta"], hyper["lam"])), 1.0
    return candidate, synchronised(lambda: _underdamped_torch(rho, k)), 1.0


def _host(values):
    """NumPy float64 values of a NumPy array or a tensor on any device."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


# interleaved rounds per ratio: each call takes 10-100 ms, and the median of 9 keeps a
# neighbour's burst on the shared cores from setting the ratio
ROUNDS = 9
TARGETS = {"expm": 50, "lambdify": 3, "floor": 0.5}
LABELS = {"expm": "per-mode scipy expm", "lambdify": "lambdify(three-regime Piecewise)",
          "floor": "fused underdamped formula alone (floor)"}


@pytest.mark.parametrize("baseline", ["expm", "lambdify", "floor"])
@pytest.mark.parametrize("backend", ["numpy", "torch cpu", "torch cpu, torch operations",
                                     "torch cuda"])
def test_velocity_correlation(pairs, lambdified, compare, backend, baseline):
    """``torch cpu`` is what a call with CPU tensors does by default (no autograd graph: the
    NumPy kernels on the tensors' memory); ``torch cpu, torch operations`` is the path that
    autograd and CUDA take, timed on the CPU."""
    if backend.startswith("torch"):
        torch = pytest.importorskip("torch")
        if backend == "torch cuda" and not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        candidate, reference, scale = _torch_case(
            pairs, lambdified, baseline, device=backend.split()[1].rstrip(","),
            torch_operations=backend.endswith("torch operations"))
    else:
        candidate, reference, scale = _numpy_case(pairs, lambdified, baseline)
    # a ratio is only meaningful against a baseline that computes the same thing: compare
    # values once (the floor only on underdamped modes, where it is the right formula)
    rho, k = pairs
    got = _host(candidate())
    expected = _host(reference())
    if baseline == "expm":
        np.testing.assert_allclose(got[:EXPM_SUBSET], expected, rtol=1e-8, atol=1e-12)
    else:
        zeta = (1 - BETA) / np.sqrt(2 * ETA * (1 + BETA) * (rho + LAM))
        comparable = zeta < 0.9 if baseline == "floor" else np.isfinite(expected)
        np.testing.assert_allclose(got[comparable], expected[comparable], rtol=1e-6, atol=1e-9)
    compare(candidate, reference,
            name=f"velocity_correlation {backend}, 1e6 pairs vs {LABELS[baseline]}",
            target=TARGETS[baseline], baseline_scale=scale, rounds=ROUNDS)


# --- global displacement ------------------------------------------------------------------

N_MODES, N_STEPS = 10 ** 5, 1000
S_BATCH, SIGMA2 = 128.0, 1.0


def _explicit_double_sum(spectrum, ks):
    """eta^2 sum_l Var_ss(b_l) [k + 2 sum_{j=1}^{k-1} (k - j) C_l(j)], lag by lag (eq. 13)."""
    var_v = numeric.stationary_variance(spectrum, eta=ETA, beta=BETA, lam=LAM, S=S_BATCH,
                                        sigma2=SIGMA2)[1]
    out = np.empty(len(ks))
    for i, k in enumerate(ks):
        k = int(k)
        lags = np.arange(1, k, dtype=float)
        lag_sum = 0.0
        if lags.size:
            corr = numeric.velocity_correlation(spectrum[:, None], lags, eta=ETA, beta=BETA,
                                                lam=LAM)
            lag_sum = corr @ (k - lags)
        out[i] = ETA ** 2 * np.sum(var_v * (k + 2 * lag_sum))
    return out


def test_global_displacement(compare, record_ratio):
    spectrum = np.logspace(-6, 1, N_MODES)  # a Hessian-like spread of curvatures
    ks = np.logspace(0, 6, N_STEPS)  # the curve a user plots on log-log axes

    def candidate():
        return numeric.global_displacement(spectrum, ks, eta=ETA, beta=BETA, lam=LAM,
                                           S=S_BATCH, sigma2=SIGMA2)

    start = time.perf_counter()
    assert candidate().shape == ks.shape
    seconds = time.perf_counter() - start  # a first call: one-time costs included
    # the baseline on every 1000th mode and on the k up to 3000 (rounded: lags are integers),
    # extrapolated by the number of (mode, lag) terms, which is what its time is linear in
    sub_modes = spectrum[:: N_MODES // 100]
    sub_ks = np.unique(np.round(ks[ks <= 3000]))
    terms_total = N_MODES * np.sum(np.round(ks))
    terms_subset = sub_modes.size * np.sum(sub_ks)
    np.testing.assert_allclose(  # the baseline computes the same quantity
        numeric.global_displacement(sub_modes, sub_ks[-3:], eta=ETA, beta=BETA, lam=LAM,
                                    S=S_BATCH, sigma2=SIGMA2),
        _explicit_double_sum(sub_modes, sub_ks[-3:]), rtol=1e-8)
    record_ratio("global_displacement, 1e5 modes x 1000 k: (5 s) / (its time)", 5.0 / seconds,
                 target=1.0, detail=f"{seconds:.2f} s on this machine (first call)")
    compare(candidate, lambda: _explicit_double_sum(sub_modes, sub_ks),
            name="global_displacement, 1e5 modes x 1000 k vs explicit double sum",
            target=1000, rounds=1, baseline_rounds=1, baseline_scale=terms_total / terms_subset)


# --- informative: torch operations on one thread ----------------------------------------
# On a 2-core machine that other work shares, each torch operation on two threads waits for
# the busy core (an OpenMP barrier), so the time of torch operations is set by their number,
# not by their size: the kernel (one gather and scatter per regime) then pays for every small
# step that a single fused formula does not have. On one thread the same comparison measures
# the work done per element. Same candidates and baselines as above, same inputs.


@pytest.mark.parametrize("baseline", ["lambdify", "floor"])
def test_velocity_correlation_torch_one_thread(pairs, lambdified, compare, baseline):
    torch = pytest.importorskip("torch")
    candidate, reference, scale = _torch_case(pairs, lambdified, baseline,
                                              torch_operations=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compare(candidate, reference,
                name=f"velocity_correlation torch cpu, torch operations (1 thread), 1e6 pairs "
                     f"vs {LABELS[baseline]}",
                target=TARGETS[baseline], baseline_scale=scale, rounds=ROUNDS)
    finally:
        torch.set_num_threads(threads)
