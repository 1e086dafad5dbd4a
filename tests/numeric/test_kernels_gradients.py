"""Gradients of the Torch kernels: finite everywhere on the valid domain, and correct.

* Finite: d/d(rho, eta, beta, lam, sigma2) of every kernel over the accuracy grid of
  test_kernels_accuracy (zeta from 1e-3 to 1e3 with zeta = 1 exactly and its neighbourhood,
  rho from 1e-12 to 1e3, k up to 1e7, so gamma t up to ~5e6), float64; plus a mode that is
  exactly critical in floating point (beta = 0, eta = 1, h = 1/2: gamma = omega = 1, Delta = 0
  with no rounding in any order of operations).
* Correct: torch.autograd.gradcheck (float64, its default tolerances) in each regime, at
  exact critical damping and within 1e-9 of it, for both models.
"""

from __future__ import annotations


import pytest

torch = pytest.importorskip("torch")

import numeric  # noqa: E402


import kernel_reference as ref  # noqa: E402  (tests/numeric is on pytest's pythonpath)

MODELS = ("sde", "discrete")
S_BATCH = 8.0


def _grid(model):
    rows = [(rho, beta, lam, eta, k)
            for (_, rho, beta, lam, eta) in ref.mode_grid(full=False, model=model)
            for k in ref.step_grid(full=False, model=model)]
    # exactly critical in floating point for the SDE: gamma = omega = 1
    rows += [(0.5, 0.0, 0.0, 1.0, k) for k in (0.0, 1.0, 10.0, 1e7)]
    rows += [(0.25, 0.0, 0.25, 1.0, k) for k in (1.0, 3.0, 1e3)]
    return [torch.tensor(c, dtype=torch.float64) for c in zip(*rows)]


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _assert_finite_gradients(label, output, inputs, names, context):
    grads = torch.autograd.grad(output.sum(), inputs, allow_unused=True)
    for name, grad in zip(names, grads):
        if grad is None:
            # the output does not depend on it (Var_ss(v) of the SDE on eta): a zero
            # derivative, whose correctness gradcheck below checks against differences
            continue
        bad = ~torch.isfinite(grad)
        if bad.any():
            i = int(torch.nonzero(bad.reshape(-1))[0])
            point = {key: float(values.reshape(-1)[i]) for key, values in context.items()}
            raise AssertionError(f"{label}: d/d{name} not finite at {int(bad.sum())} points, "
                                 f"first {point}: {float(grad.reshape(-1)[i])}")


@pytest.mark.parametrize("model", MODELS)
def test_mean_and_correlation_gradients_are_finite(model):
    rho, beta, lam, eta, k = _grid(model)
    context = {"rho": rho, "beta": beta, "lam": lam, "eta": eta, "k": k}
    if model == "discrete":  # stationary quantities need stable modes; means do not
        stable = eta * (rho + lam) < 2 * (1 + beta)
        rho, beta, lam, eta, k = (x[stable] for x in (rho, beta, lam, eta, k))
        context = {"rho": rho, "beta": beta, "lam": lam, "eta": eta, "k": k}
    leaves = [_leaf(x) for x in (rho, eta, beta, lam)]
    a0, b0 = torch.ones_like(rho), -0.5 * torch.ones_like(rho)
    a, b = numeric.mean_trajectory(leaves[0], k, a0, b0, eta=leaves[1], beta=leaves[2],
                                   lam=leaves[3], model=model)
    names = ("rho", "eta", "beta", "lam")
    _assert_finite_gradients(f"mean_trajectory[{model}] a", a, leaves, names, context)
    leaves = [_leaf(x) for x in (rho, eta, beta, lam)]
    a, b = numeric.mean_trajectory(leaves[0], k, a0, b0, eta=leaves[1], beta=leaves[2],
                                   lam=leaves[3], model=model)
    _assert_finite_gradients(f"mean_trajectory[{model}] b", b, leaves, names, context)
    leaves = [_leaf(x) for x in (rho, eta, beta, lam)]
    c = numeric.velocity_correlation(leaves[0], k, eta=leaves[1], beta=leaves[2], lam=leaves[3],
                                     model=model)
    _assert_finite_gradients(f"velocity_correlation[{model}]", c, leaves, names, context)


@pytest.mark.parametrize("model", MODELS)
def test_stationary_gradients_are_finite(model):
    rho, beta, lam, eta, k = _grid(model)
    if model == "discrete":
        stable = eta * (rho + lam) < 2 * (1 + beta)
        rho, beta, lam, eta, k = (x[stable] for x in (rho, beta, lam, eta, k))
    context = {"rho": rho, "beta": beta, "lam": lam, "eta": eta}
    names = ("rho", "eta", "beta", "lam", "sigma2")
    for which in (0, 1):
        leaves = [_leaf(x) for x in (rho, eta, beta, lam, torch.full_like(rho, 0.3))]
        out = numeric.stationary_variance(leaves[0], eta=leaves[1], beta=leaves[2],
                                          lam=leaves[3], S=S_BATCH, sigma2=leaves[4],
                                          model=model)[which]
        _assert_finite_gradients(f"stationary_variance[{model}][{which}]", out, leaves, names,
                                 context)
    leaves = [_leaf(x) for x in (rho, eta, beta, lam, torch.full_like(rho, 0.3))]
    # one mode per row: the spectrum is the last axis
    out = numeric.instantaneous_speed(leaves[0][:, None], eta=leaves[1][:, None],
                                      beta=leaves[2][:, None], lam=leaves[3][:, None],
                                      S=S_BATCH, sigma2=leaves[4][:, None], model=model)
    _assert_finite_gradients(f"instantaneous_speed[{model}]", out, leaves, names, context)


@pytest.mark.parametrize("model", MODELS)
def test_global_displacement_gradients_are_finite(model):
    """One call per distinct rho (1-D spectrum); hyperparameters and k broadcast."""
    rho, beta, lam, eta, k = _grid(model)
    keep = k == torch.round(k)
    if model == "discrete":
        keep &= eta * (rho + lam) < 2 * (1 + beta)
    rho, beta, lam, eta, k = (x[keep] for x in (rho, beta, lam, eta, k))
    names = ("rho", "eta", "beta", "lam", "sigma2")
    for value in torch.unique(rho):
        sel = rho == value
        context = {"beta": beta[sel], "lam": lam[sel], "eta": eta[sel], "k": k[sel]}
        leaves = [_leaf(value.reshape(1)), _leaf(eta[sel]), _leaf(beta[sel]), _leaf(lam[sel]),
                  _leaf(torch.tensor(0.3))]
        out = numeric.global_displacement(leaves[0], k[sel], eta=leaves[1], beta=leaves[2],
                                          lam=leaves[3], S=S_BATCH, sigma2=leaves[4],
                                          model=model)
        _assert_finite_gradients(f"global_displacement[{model}] rho={float(value)}", out,
                                 leaves, names, context)


# --- gradcheck ----------------------------------------------------------------------------

def _regime_point(regime, model):
    """(rho, eta, beta, lam, differentiate beta and lam?) with O(1) values over the k used."""
    beta, rho, lam = 0.5, 0.9, 0.1
    zeta = {"underdamped": 0.3, "overdamped": 3.0, "critical+1e-9": 1 + 1e-9,
            "critical-1e-9": 1 - 1e-9}.get(regime)
    if regime == "critical-exact":
        # gamma = omega = 1 exactly; beta = 0 and lam = 0 sit on the boundary of the domain,
        # where a central difference would step outside it, so they are held fixed
        return 0.5, 1.0, 0.0, 0.0, False
    if regime == "nilpotent":
        # beta = 0, eta h = 1: M = [[0, 0], [-h, 0]] is nilpotent (both eigenvalues 0), the
        # discrete model's most degenerate point; beta and lam held at the domain boundary
        return 0.5, 2.0, 0.0, 0.0, False
    if regime == "discrete-double-root":
        # eta h = (1 - sqrt(beta))^2 (1 + 1e-9): M has (nearly) a double eigenvalue
        h = rho + lam
        return rho, (1 - beta ** 0.5) ** 2 * (1 + 1e-9) / h, beta, lam, True
    return rho, ref.eta_for_damping_ratio(zeta, rho, beta, lam), beta, lam, True


REGIMES = ("underdamped", "overdamped", "critical-exact", "critical+1e-9", "critical-1e-9",
           "discrete-double-root", "nilpotent")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("regime", REGIMES)
def test_gradcheck(regime, model):
    rho0, eta0, beta0, lam0, free = _regime_point(regime, model)
    ks = torch.tensor([0.0, 1.0, 2.0, 5.0, 17.0])
    a0, b0 = torch.tensor(0.7), torch.tensor(-0.4)
    spectrum_shape = torch.tensor([0.2, 1.0])  # a second, slower mode for the spectrum kernels

    def kernels(rho, eta, sigma2, beta, lam):
        a, b = numeric.mean_trajectory(rho, ks, a0, b0, eta=eta, beta=beta, lam=lam,
                                       model=model)
        c = numeric.velocity_correlation(rho, ks, eta=eta, beta=beta, lam=lam, model=model)
        var_a, var_v = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam,
                                                   S=S_BATCH, sigma2=sigma2, model=model)
        spectrum = rho * spectrum_shape
        speed = numeric.instantaneous_speed(spectrum, eta=eta, beta=beta, lam=lam, S=S_BATCH,
                                            sigma2=sigma2, model=model)
        disp = numeric.global_displacement(spectrum, ks, eta=eta, beta=beta, lam=lam,
                                           S=S_BATCH, sigma2=sigma2, model=model)
        return torch.cat([a, b, c, var_a.reshape(1), var_v.reshape(1), speed.reshape(1), disp])

    rho = torch.tensor(rho0, requires_grad=True)
    eta = torch.tensor(eta0, requires_grad=True)
    sigma2 = torch.tensor(0.3, requires_grad=True)
    beta = torch.tensor(beta0, requires_grad=free)
    lam = torch.tensor(lam0, requires_grad=free)
    if free:
        assert torch.autograd.gradcheck(kernels, (rho, eta, sigma2, beta, lam))
    else:
        assert torch.autograd.gradcheck(lambda r, e, s: kernels(r, e, s, beta, lam),
                                        (rho, eta, sigma2))
