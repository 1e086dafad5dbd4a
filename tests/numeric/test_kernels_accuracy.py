"""Accuracy of the public closed-form kernels against a 50-digit mpmath reference.

The contract (issue "Code generation", section Accuracy), in float64:

    |got - exact| <= max(|exact|, scale) * (1e-10 + 64 eps (1 + gamma t + alpha t)),

t = eta k, alpha = sqrt|gamma^2 - omega^2|; the second term is the unavoidable rounding of
the decay and the phase (a relative error eps in gamma or alpha moves e^{-gamma t} and the
phase alpha t by eps gamma t and eps alpha t). ``scale`` is the largest entry of the mode's
propagator at that k times the size of the input state, both in the unit-free coordinates
(omega a, b) (see ``_reference``). Underflow to 0 is accepted where the exact value is below
1e8 times the smallest normal number (about 2e-300 in float64). float32 (torch): the same
measure with 1e-4 in place of 1e-10 and the float32 epsilon.

One addition for the discrete model only, near eta h = 1 (|1 - eta h| < 1e-2): the entry
1 - eta h of M is computed with cancellation, and at beta = 0 (M nearly nilpotent) its
rounding dominates; the bound there adds 64 eps (|eta df/deta| + |h df/dh|), the first-order
effect of rounding eta h, which is what the (gamma + alpha) t term is for the SDE.

Grid: zeta log-spaced in [1e-3, 1e3] plus zeta = 1 and 1 +- 1e-12, 1e-8, 1e-4 (and, for the
discrete model, the neighbourhood of its own double eigenvalue), rho in [1e-12, 1e3], beta in
{0, 0.5, 0.9, 0.99, 0.999}, lam in {0, 1e-4, 1e-1}, k from 0 to 1e7; eta solved from zeta.
The default suite runs a grid that keeps every (zeta, beta) pair; the full product is `slow`.
The discrete model is checked on stable modes, eta h < 2 (1 + beta).
"""

from __future__ import annotations


import numpy as np
import pytest

import numeric


import kernel_reference as ref  # noqa: E402  (tests/numeric is on pytest's pythonpath)

MODELS = ("sde", "discrete")
S_BATCH, SIGMA2 = 32.0, 0.7
INITIAL_STATES = ((1.0, 0.0), (0.0, 1.0), (0.75, -1.25))


def allowed_error(exact, scale, cond, dtype, rounding=0.0):
    """The contract's bound, elementwise, with the underflow floor.

    ``rounding`` (discrete model near eta h = 1 only, else 0) is |eta df/deta| + |h df/dh|:
    the first-order effect of rounding eta h, which the SDE's (gamma + alpha) t term covers
    for the SDE but not the cancellation in the entry 1 - eta h of M (see ``_reference``).
    """
    info = np.finfo(dtype)
    relative = 1e-10 if dtype == np.float64 else 1e-4
    eps = float(info.eps)
    size = np.maximum(np.abs(exact), scale)
    bound = size * (relative + 64 * eps * (1 + cond)) + 64 * eps * rounding
    return np.maximum(bound, 1e8 * float(info.tiny))


def assert_within_contract(label, got, exact, scale, cond, inputs, *, dtype=np.float64,
                           rounding=0.0):
    """Fail with the worst offenders (inputs, expected, got, allowed) listed."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == exact.shape, f"{label}: shape {got.shape}, expected {exact.shape}"
    not_finite = ~np.isfinite(got)
    allowed = allowed_error(exact, scale, cond, dtype, rounding)
    with np.errstate(invalid="ignore"):
        excess = np.where(not_finite, np.inf, np.abs(got - exact) / allowed)
    bad = np.flatnonzero(excess > 1)
    if bad.size:
        worst = bad[np.argsort(-excess[bad])][:8]
        lines = [f"{label}: {bad.size} of {got.size} points outside the contract "
                 f"({int(not_finite.sum())} not finite); worst:"]
        for i in worst:
            point = ", ".join(f"{key}={float(values[i])!r}" for key, values in inputs.items())
            lines.append(f"  {point}: expected {float(exact[i])!r}, got {float(got[i])!r}, "
                         f"allowed error {allowed[i]:.3g}")
        raise AssertionError("\n".join(lines))


def _points(model, full):
    """Flat arrays over (mode grid) x (steps) for one model."""
    rows = [(zeta, rho, beta, lam, eta, k)
            for (zeta, rho, beta, lam, eta) in ref.mode_grid(full=full, model=model)
            for k in ref.step_grid(full=full, model=model)]
    names = ("zeta", "rho", "beta", "lam", "eta", "k")
    return {name: np.array(column) for name, column in zip(names, zip(*rows))}


def _inputs(points, *names):
    return {name: points[name] for name in names}


NEAR_UNIT_STEP = 1e-2


def _rounding(function, model, i, points, *rest, outputs=1):
    """rounding_sensitivity where it can matter: the discrete model with |1 - eta h| small
    (elsewhere the rounding of 1 - eta h is below 100 eps and inside the contract)."""
    x = points["eta"][i] * (points["rho"][i] + points["lam"][i])
    if model != "discrete" or abs(1 - x) >= NEAR_UNIT_STEP:
        return [0.0] * outputs
    return ref.rounding_sensitivity(function, points["rho"][i], points["k"][i],
                                    points["eta"][i], points["beta"][i], points["lam"][i],
                                    model, *rest)


# --- references, computed once per module (mpmath is slow) -----------------------------------

def _mean_reference(points, model):
    n = points["k"].size
    a0 = np.array([INITIAL_STATES[i % 3][0] for i in range(n)])
    b0 = np.array([INITIAL_STATES[i % 3][1] for i in range(n)])
    exact = np.empty((2, n))
    scale = np.empty((2, n))
    cond = np.empty(n)
    rounding = np.empty((2, n))
    for i in range(n):
        args = (points["rho"][i], points["k"][i])
        hyper = (points["eta"][i], points["beta"][i], points["lam"][i])
        values, scales = ref.mean_trajectory(*args, a0[i], b0[i], *hyper, model)
        exact[:, i] = [float(v) for v in values]
        scale[:, i] = [float(s) for s in scales]
        cond[i] = ref.condition_steps(*args, *hyper)
        rounding[:, i] = _rounding(ref.mean_trajectory, model, i, points, a0[i], b0[i],
                                   outputs=2)
    return dict(points, a0=a0, b0=b0, exact=exact, scale=scale, cond=cond, rounding=rounding)


def _correlation_reference(points, model):
    n = points["k"].size
    exact, scale, cond, rounding = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        args = (points["rho"][i], points["k"][i])
        hyper = (points["eta"][i], points["beta"][i], points["lam"][i])
        value, size = ref.velocity_correlation(*args, *hyper, model)
        exact[i], scale[i] = float(value), float(size)
        cond[i] = ref.condition_steps(*args, *hyper)
        rounding[i] = _rounding(ref.velocity_correlation, model, i, points)[0]
    return dict(points, exact=exact, scale=scale, cond=cond, rounding=rounding)


def _single_mode_displacement(rho, k, eta, beta, lam, model):
    return ref.global_displacement([rho], k, eta, beta, lam, S_BATCH, SIGMA2, model)


def _displacement_reference(points, model):
    n = points["k"].size
    exact, scale, cond, rounding = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        rho, k = points["rho"][i], points["k"][i]
        hyper = (points["eta"][i], points["beta"][i], points["lam"][i])
        value, size = ref.global_displacement([rho], k, *hyper, S_BATCH, SIGMA2, model)
        exact[i], scale[i] = float(value), float(size)
        cond[i] = ref.condition_steps(rho, k, *hyper)
        rounding[i] = _rounding(_single_mode_displacement, model, i, points)[0]
    return dict(points, exact=exact, scale=scale, cond=cond, rounding=rounding)


@pytest.fixture(scope="module")
def references():
    cache = {}

    def get(kind, model, full=False):
        key = (kind, model, full)
        if key not in cache:
            points = _points(model, full)
            if kind == "mean":
                cache[key] = _mean_reference(points, model)
            elif kind == "correlation":
                cache[key] = _correlation_reference(points, model)
            elif kind == "displacement":
                keep = points["k"] == np.round(points["k"])  # the double sum needs integer k
                cache[key] = _displacement_reference(
                    {name: values[keep] for name, values in points.items()}, model)
        return cache[key]

    return get


# --- the checks ---------------------------------------------------------------------------

def _check_mean(data, model, *, backend=np, dtype=np.float64):
    args = _cast(backend, dtype, data["rho"], data["k"], data["a0"], data["b0"],
                 data["eta"], data["beta"], data["lam"])
    rho, k, a0, b0, eta, beta, lam = args
    a, b = numeric.mean_trajectory(rho, k, a0, b0, eta=eta, beta=beta, lam=lam, model=model)
    inputs = _inputs(data, "zeta", "rho", "beta", "lam", "eta", "k", "a0", "b0")
    for label, got, row in (("a_k", a, 0), ("b_k", b, 1)):
        assert_within_contract(f"mean_trajectory[{model}] {label}", _to_numpy(got),
                               data["exact"][row], data["scale"][row], data["cond"], inputs,
                               dtype=dtype, rounding=data["rounding"][row])


def _check_correlation(data, model, *, backend=np, dtype=np.float64):
    rho, k, eta, beta, lam = _cast(backend, dtype, data["rho"], data["k"], data["eta"],
                                   data["beta"], data["lam"])
    got = numeric.velocity_correlation(rho, k, eta=eta, beta=beta, lam=lam, model=model)
    assert_within_contract(f"velocity_correlation[{model}]", _to_numpy(got), data["exact"],
                           data["scale"], data["cond"],
                           _inputs(data, "zeta", "rho", "beta", "lam", "eta", "k"), dtype=dtype,
                           rounding=data["rounding"])


def _check_displacement(data, model, *, backend=np, dtype=np.float64):
    """One call per distinct rho (the spectrum is 1-D); hyperparameters broadcast with k."""
    got = np.empty_like(data["exact"])
    for rho in np.unique(data["rho"]):
        sel = data["rho"] == rho
        spectrum, k, eta, beta, lam = _cast(backend, dtype, np.array([rho]), data["k"][sel],
                                            data["eta"][sel], data["beta"][sel], data["lam"][sel])
        out = numeric.global_displacement(spectrum, k, eta=eta, beta=beta, lam=lam, S=S_BATCH,
                                          sigma2=SIGMA2, model=model)
        got[sel] = _to_numpy(out)
    assert_within_contract(f"global_displacement[{model}]", got, data["exact"], data["scale"],
                           data["cond"], _inputs(data, "zeta", "rho", "beta", "lam", "eta", "k"),
                           dtype=dtype, rounding=data["rounding"])


def _cast(backend, dtype, *arrays):
    if backend is np:
        return tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    import torch

    torch_dtype = {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    return tuple(torch.as_tensor(np.asarray(a, dtype=dtype), dtype=torch_dtype) for a in arrays)


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


@pytest.mark.parametrize("model", MODELS)
def test_mean_trajectory_matches_mpmath(references, model):
    _check_mean(references("mean", model), model)


@pytest.mark.parametrize("model", MODELS)
def test_velocity_correlation_matches_mpmath(references, model):
    _check_correlation(references("correlation", model), model)


@pytest.mark.parametrize("model", MODELS)
def test_global_displacement_matches_mpmath(references, model):
    _check_displacement(references("displacement", model), model)


@pytest.mark.parametrize("model", MODELS)
def test_stationary_variance_matches_mpmath(model):
    """Relative accuracy (no k: scale = |exact|, t = 0) over every mode of the grid."""
    modes = ref.mode_grid(full=False, model=model)
    zeta, rho, beta, lam, eta = (np.array(c) for c in zip(*modes))
    exact = np.array([[float(v) for v in ref.stationary_variance(r, e, b, l, S_BATCH, SIGMA2,
                                                                 model)]
                      for (_, r, b, l, e) in modes]).T
    var_a, var_v = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam, S=S_BATCH,
                                               sigma2=SIGMA2, model=model)
    inputs = {"zeta": zeta, "rho": rho, "beta": beta, "lam": lam, "eta": eta}
    zero = np.zeros_like(rho)
    for label, got, row in (("var_a", var_a, 0), ("var_v", var_v, 1)):
        assert_within_contract(f"stationary_variance[{model}] {label}", got, exact[row],
                               np.abs(exact[row]), zero, inputs)


@pytest.mark.parametrize("model", MODELS)
def test_instantaneous_speed_matches_mpmath(model):
    """eq. 12 over a spectrum rho in [1e-12, 1e3] (last axis) for every (zeta, beta, lam);
    eta from zeta at the largest mode, so the others are more and more overdamped."""
    spectrum = np.logspace(-12, 3, 6)
    rows = []
    for zeta in list(np.logspace(-3, 3, 7)) + list(ref.ZETA_CRITICAL[:3]):
        for beta in ref.BETAS:
            for lam in ref.LAMS:
                eta = ref.eta_for_damping_ratio(float(zeta), spectrum[-1], beta, lam)
                if model == "discrete" and not ref.is_stable_discrete(eta, spectrum[-1], beta,
                                                                      lam):
                    continue
                rows.append((float(zeta), beta, lam, eta))
    zeta, beta, lam, eta = (np.array(c) for c in zip(*rows))
    exact = np.array([float(ref.instantaneous_speed(spectrum, e, b, l, S_BATCH, SIGMA2, model))
                      for (_, b, l, e) in rows])
    got = numeric.instantaneous_speed(np.broadcast_to(spectrum, (len(rows), spectrum.size)),
                                      eta=eta[:, None], beta=beta[:, None], lam=lam[:, None],
                                      S=S_BATCH, sigma2=SIGMA2, model=model)
    assert_within_contract(f"instantaneous_speed[{model}]", got, exact, np.abs(exact),
                           np.zeros_like(exact),
                           {"zeta": zeta, "beta": beta, "lam": lam, "eta": eta})


@pytest.mark.parametrize("model", MODELS)
def test_global_displacement_of_a_spectrum_matches_mpmath(model):
    """A whole spectrum in one call; the tolerance takes the worst mode's condition."""
    spectrum = np.array([1e-12, 1e-6, 1e-3, 0.3, 1.0, 1e3])
    ks = np.array([0.0, 1.0, 7.0, 1e3, 1e5, 1e7])
    for beta in (0.0, 0.9, 0.999):
        for zeta_top in (1e-2, 1.0, 1e2):
            lam = 1e-4
            eta = ref.eta_for_damping_ratio(zeta_top, spectrum[-1], beta, lam)
            if model == "discrete" and not ref.is_stable_discrete(eta, spectrum[-1], beta, lam):
                continue
            pairs = [ref.global_displacement(spectrum, k, eta, beta, lam, S_BATCH, SIGMA2, model)
                     for k in ks]
            exact = np.array([float(p[0]) for p in pairs])
            scale = np.array([float(p[1]) for p in pairs])
            cond = np.array([max(ref.condition_steps(r, k, eta, beta, lam) for r in spectrum)
                             for k in ks])
            got = numeric.global_displacement(spectrum, ks, eta=eta, beta=beta, lam=lam,
                                              S=S_BATCH, sigma2=SIGMA2, model=model)
            assert_within_contract(
                f"global_displacement[{model}] spectrum, beta={beta}, zeta_top={zeta_top}",
                got, exact, scale, cond, {"k": ks})


# --- float32 (torch): the same measure at 1e-4 ------------------------------------------------

def _float32_representable(data):
    """Keep modes whose gamma^2 and omega^2 lie well inside float32's normal range
    ([1e-30, 1e30]); outside it any float32 formula squares into denormals or overflow."""
    gamma = (1 - data["beta"]) / (data["eta"] * (1 + data["beta"]))
    omega2 = 2 * (data["rho"] + data["lam"]) / (data["eta"] * (1 + data["beta"]))
    keep = np.ones(gamma.shape, dtype=bool)
    for q in (gamma ** 2, omega2):
        keep &= (q == 0) | ((np.abs(q) > 1e-30) & (np.abs(q) < 1e30))
    return keep


def _float32_points(model, full=False):
    """The grid rounded to float32 first, so the reference sees exactly the kernel's inputs."""
    points = _points(model, full)
    for name in ("rho", "eta", "beta", "lam", "k"):
        points[name] = points[name].astype(np.float32).astype(np.float64)
    keep = _float32_representable(points)
    if model == "discrete":
        keep &= points["eta"] * (points["rho"] + points["lam"]) < 2 * (1 + points["beta"])
    return {name: values[keep] for name, values in points.items()}


@pytest.fixture(scope="module")
def float32_references():
    torch = pytest.importorskip("torch")
    del torch
    cache = {}

    def get(kind, model):
        if (kind, model) not in cache:
            points = _float32_points(model)
            if kind == "mean":
                cache[kind, model] = _mean_reference(points, model)
            elif kind == "correlation":
                cache[kind, model] = _correlation_reference(points, model)
            else:
                keep = points["k"] == np.round(points["k"])
                cache[kind, model] = _displacement_reference(
                    {name: values[keep] for name, values in points.items()}, model)
        return cache[kind, model]

    return get


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["mean", "correlation", "displacement"])
def test_float32_torch_matches_mpmath(float32_references, kind, model):
    import torch

    check = {"mean": _check_mean, "correlation": _check_correlation,
             "displacement": _check_displacement}[kind]
    check(float32_references(kind, model), model, backend=torch, dtype=np.float32)


@pytest.mark.parametrize("model", MODELS)
def test_float32_stationary_variance_matches_mpmath(model):
    import torch

    points = _float32_points(model)
    keep = points["k"] == 0  # one row per mode
    zeta, rho, beta, lam, eta = (points[n][keep] for n in ("zeta", "rho", "beta", "lam", "eta"))
    sigma2 = float(np.float32(SIGMA2))
    exact = np.array([[float(v) for v in ref.stationary_variance(r, e, b, l, S_BATCH, sigma2,
                                                                 model)]
                      for r, e, b, l in zip(rho, eta, beta, lam)]).T
    args = _cast(torch, np.float32, rho, eta, beta, lam)
    got = numeric.stationary_variance(args[0], eta=args[1], beta=args[2], lam=args[3],
                                      S=S_BATCH, sigma2=sigma2, model=model)
    inputs = {"zeta": zeta, "rho": rho, "beta": beta, "lam": lam, "eta": eta}
    for label, value, row in (("var_a", got[0], 0), ("var_v", got[1], 1)):
        assert value.dtype == torch.float32
        assert_within_contract(f"float32 stationary_variance[{model}] {label}", _to_numpy(value),
                               exact[row], np.abs(exact[row]), np.zeros_like(rho), inputs,
                               dtype=np.float32)


# --- the full grid --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", ["mean", "correlation", "displacement"])
def test_full_grid_matches_mpmath(references, kind, model):
    check = {"mean": _check_mean, "correlation": _check_correlation,
             "displacement": _check_displacement}[kind]
    check(references(kind, model, full=True), model)
