r"""The seven theory-versus-SGD comparisons of the linear-regression experiment, as numbers.

Each function takes recorded trajectories (:class:`experiments.linreg.Trajectory`) and the
settings, calls the closed-form kernels of :mod:`numeric` for the prediction, and returns a
:class:`Comparison` (name, predicted, measured, standard error, relative error) plus the curves
the figures need. Nothing here retypes a closed form that :mod:`numeric` provides; the only
formulas written out are the model's definition (the drift and diffusion of docs/theory.md section
2) and the exact discrete covariance recursion used for the transient confidence band.

Statistical conventions, used throughout:

* Standard errors come from independent seeds: a per-seed statistic (a time average over a
  stationary window, or the value at one step) is computed for each of ``n`` runs, and the
  standard error of their mean is ``std(ddof=1) / sqrt(n)``. Samples within one run are
  autocorrelated and are never treated as independent.
* Stationary windows start after a burn-in of several relaxation times of the slowest mode
  measured (:func:`relaxation_steps`, from the spectral radius of the exact discrete
  propagator).
* Units: ``k`` counts steps; the SDE time is ``t = eta * k``.
* Batch size in every prediction is the effective one, ``S (N - 1) / (N - S)`` for minibatches
  drawn without replacement (docs/theory.md section 2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

import numeric

__all__ = [
    "Comparison",
    "relaxation_steps",
    "transient_mode_covariance",
    "sgd_drift_diffusion",
    "projected_noise_covariance",
    "noise_trace",
    "positive_spectrum",
    "compare_mean_trajectory",
    "compare_stationary_speed",
    "compare_velocity_correlation",
    "compare_global_displacement",
    "compare_equipartition",
    "compare_noise_covariance",
    "ou_2d_example",
    "Hyperparameters",
    "mean_trajectory_comparison",
    "stationary_speed_comparison",
    "velocity_correlation_comparison",
    "global_displacement_comparison",
    "equipartition_comparison",
    "noise_covariance_comparison",
]


@dataclass
class Comparison:
    """One row of the comparison table.

    ``relative_error = |measured - predicted| / |predicted|``; ``z_score = (measured -
    predicted) / standard_error`` (``nan`` when the standard error is 0). ``details`` holds the
    secondary numbers (the other theory's prediction, R^2, fitted windows, ...).
    """

    name: str
    predicted: float
    measured: float
    standard_error: float
    details: dict = field(default_factory=dict)

    @property
    def relative_error(self) -> float:
        return abs(self.measured - self.predicted) / abs(self.predicted) if self.predicted \
            else float("inf")

    @property
    def z_score(self) -> float:
        return (self.measured - self.predicted) / self.standard_error \
            if self.standard_error > 0 else float("nan")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["relative_error"] = self.relative_error
        out["z_score"] = self.z_score
        return out


def _mean_and_error(per_seed):
    """Mean over the last axis (seeds) and its standard error ``std(ddof=1)/sqrt(n)``."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    n = per_seed.shape[-1]
    if n < 2:
        raise ValueError(f"standard errors need at least 2 independent seeds, but got {n}")
    return per_seed.mean(-1), per_seed.std(-1, ddof=1) / math.sqrt(n)


def positive_spectrum(spectrum, *, rtol: float = 1e-10) -> np.ndarray:
    """The eigenvalues above ``rtol * max``: exact-zero directions carry neither curvature nor
    noise under Assumption 5 (``Sigma = sigma^2 H``), so they add nothing to any prediction,
    and dropping them keeps the kernels away from ``0/0`` at ``rho = lam = 0``."""
    spectrum = np.asarray(spectrum, dtype=np.float64)
    return spectrum[spectrum > rtol * spectrum.max()]


def _mode_propagator(rho, eta, beta, lam):
    """The exact one-step matrix M of docs/theory.md section 6, ``(..., 2, 2)``, state (a, v)."""
    h = np.asarray(rho, dtype=np.float64) + lam
    M = np.empty(h.shape + (2, 2))
    M[..., 0, 0] = 1.0 - eta * h
    M[..., 0, 1] = eta * beta
    M[..., 1, 0] = -h
    M[..., 1, 1] = beta
    return M


def relaxation_steps(rho, *, eta, beta, lam=0.0) -> np.ndarray:
    r"""Relaxation time in steps of each mode, ``-1 / log r(M)`` with ``r`` the spectral radius
    of the exact discrete propagator M (docs/theory.md section 6). For small ``eta`` this is
    ``1 / (eta * rate)`` with ``rate`` the slower decay rate of the SDE mode (``gamma`` when
    underdamped, ``omega^2/(gamma + alpha)`` when overdamped). ``inf`` for ``rho + lam = 0``."""
    radius = np.abs(np.linalg.eigvals(_mode_propagator(rho, eta, beta, lam))).max(-1)
    with np.errstate(divide="ignore"):
        return np.where(radius < 1, -1.0 / np.log(np.minimum(radius, 1 - 1e-16)), np.inf)


def transient_mode_covariance(rho, steps, *, eta, beta, lam=0.0, noise_var) -> np.ndarray:
    r"""Covariance of ``(a_k, v_k)`` of each mode started at a fixed point, ``(K, m, 2, 2)``.

    Exact discrete recursion (docs/theory.md section 6) ``P_{k+1} = M P_k M^T + G G^T s``, ``P_0 = 0``,
    ``G = (-eta, -1)``, with ``s = noise_var`` the per-step gradient-noise variance of the mode
    (``sigma^2 rho / S`` under Assumption 5; ``q^T Sigma q / S`` with a measured Sigma).
    ``rho`` and ``noise_var`` are ``(m,)``; ``steps`` are the K steps wanted (non-negative
    integers). The transient covariance of the SDE (eq. 26) is its small-``eta`` limit.
    """
    rho = np.atleast_1d(np.asarray(rho, dtype=np.float64))
    noise_var = np.broadcast_to(np.asarray(noise_var, dtype=np.float64), rho.shape)
    steps = np.asarray(steps, dtype=np.int64)
    if steps.ndim != 1 or steps.size == 0 or steps.min() < 0:
        raise ValueError(f"steps must be a 1-D array of non-negative integers, but got {steps}")
    M = _mode_propagator(rho, eta, beta, lam)
    GG = np.array([[eta * eta, eta], [eta, 1.0]])
    P = np.zeros(rho.shape + (2, 2))
    out = np.empty((steps.size,) + rho.shape + (2, 2))
    order = np.argsort(steps)
    k = 0
    for i in order:
        while k < steps[i]:
            P = M @ P @ np.swapaxes(M, -1, -2) + GG * noise_var[:, None, None]
            k += 1
        out[i] = P
    return out


def sgd_drift_diffusion(rho, noise_cov, *, eta, beta, lam=0.0):
    r"""Drift A and diffusion D of the OU model (docs/theory.md section 2) on an m-mode subspace.

    In the eigenbasis of H restricted to m modes (curvatures ``rho``, ``(m,)``) with the
    gradient-noise covariance ``noise_cov`` (``(m, m)``, e.g. ``Q^T Sigma Q`` measured), state
    ``(a_1..a_m, v_1..v_m)``:
    ``A = [[0, -I], [2 (diag(rho) + lam)/(eta(1+beta)), 2(1-beta)/(eta(1+beta)) I]]`` and
    ``D = [[0, 0], [0, 2(1-beta)/(eta(1+beta)) noise_cov]]``; with ``kappa = S (1 - beta^2)`` the
    stationary covariance is ``numeric.ou_stationary_covariance(A, D, kappa=kappa)``. Returns
    ``(A, D)``, each ``(2m, 2m)``.
    """
    rho = np.atleast_1d(np.asarray(rho, dtype=np.float64))
    m = rho.size
    noise_cov = np.asarray(noise_cov, dtype=np.float64)
    if noise_cov.shape != (m, m):
        raise ValueError(f"noise_cov must be of shape ({m}, {m}), but got {noise_cov.shape}")
    friction = 2.0 * (1.0 - beta) / (eta * (1.0 + beta))
    A = np.zeros((2 * m, 2 * m))
    A[:m, m:] = -np.eye(m)
    A[m:, :m] = np.diag(2.0 * (rho + lam) / (eta * (1.0 + beta)))
    A[m:, m:] = friction * np.eye(m)
    D = np.zeros((2 * m, 2 * m))
    D[m:, m:] = friction * noise_cov
    return A, D


def _per_sample_residuals(X, Y, theta):
    return X @ np.asarray(theta).T - Y  # (N, c)


def projected_noise_covariance(X, Y, theta, directions) -> np.ndarray:
    r"""``Q Sigma(theta) Q^T`` for directions ``Q`` ``(m, c*d)`` without forming Sigma.

    ``theta`` is ``(c, d)`` (``nn.Linear`` layout, as the eigenvectors of
    :func:`numeric.linear_regression_eigenpairs`); see
    :func:`numeric.linear_regression_noise_covariance`. Returns ``(m, m)`` float64.
    """
    return numeric.linear_regression_noise_covariance(X, Y, theta, directions=directions)


def noise_trace(X, Y, theta) -> float:
    r"""``tr Sigma(theta) = (1/N) sum_i ||x_i||^2 ||r_i||^2 - ||g||^2`` (exact, no matrix)."""
    X = np.asarray(X, dtype=np.float64)
    residuals = _per_sample_residuals(X, Y, theta)
    grad = residuals.T @ X / X.shape[0]
    return float(np.mean((X * X).sum(1) * (residuals * residuals).sum(1)) - (grad ** 2).sum())


# --- 1. mean trajectory --------------------------------------------------------------------

def compare_mean_trajectory(traj, rho, a0, *, eta, beta, lam=0.0, batch_size, noise_var,
                            model="discrete", label="") -> tuple[Comparison, dict]:
    r"""Seed-averaged projections ``a_k = <theta_k - mu, q_l>`` against
    ``numeric.mean_trajectory`` (F.2; exact for the discrete model, since the minibatch
    gradient is unbiased and the dynamics linear), started at ``(a0, 0)``.

    Measured: R^2 between the seed means and the prediction over all recorded steps and modes;
    the table's number is the value at one damping time ``k* = (1+beta)/(1-beta)`` steps of the
    top mode, with the standard error of the seed mean. The confidence band is
    ``1.96 sqrt(P_aa(k) / n)`` of the seed mean, ``P`` from :func:`transient_mode_covariance`
    with the per-step noise variance ``noise_var / batch_size`` per mode.
    """
    rho = np.asarray(rho, dtype=np.float64)
    a0 = np.broadcast_to(np.asarray(a0, dtype=np.float64), rho.shape)
    steps = traj.steps
    pred_a, pred_b = numeric.mean_trajectory(rho[None, :], steps[:, None].astype(float),
                                             a0[None, :], 0.0, eta=eta, beta=beta, lam=lam,
                                             model=model)
    pred_a = np.broadcast_to(np.asarray(pred_a, dtype=np.float64), traj.a.shape[::2])
    mean_a, err_a = _mean_and_error(np.moveaxis(traj.a, 1, -1))  # (R, m)
    residual = ((mean_a - pred_a) ** 2).sum()
    total = ((pred_a - pred_a.mean()) ** 2).sum()
    r2 = 1.0 - residual / total
    cov = transient_mode_covariance(rho, steps, eta=eta, beta=beta, lam=lam,
                                    noise_var=np.asarray(noise_var) / batch_size)
    band = 1.96 * np.sqrt(cov[..., 0, 0] / traj.a.shape[1])
    k_star = int(round((1 + beta) / (1 - beta)))
    i = int(np.argmin(np.abs(steps - k_star)))
    other = "sde" if model == "discrete" else "discrete"
    other_a, _ = numeric.mean_trajectory(rho[None, :], steps[:, None].astype(float),
                                         a0[None, :], 0.0, eta=eta, beta=beta, lam=lam,
                                         model=other)
    other_a = np.broadcast_to(np.asarray(other_a, dtype=np.float64), pred_a.shape)
    r2_other = 1.0 - ((mean_a - other_a) ** 2).sum() / total
    comparison = Comparison(
        f"mean trajectory{label}: a(k*) of top mode, k*={int(steps[i])}",
        float(pred_a[i, 0]), float(mean_a[i, 0]), float(err_a[i, 0]),
        {"r2": float(r2), "model": model, f"r2_{other}": float(r2_other),
         "beta": beta, "eta": eta})
    curves = {"steps": steps, "eta": eta, "measured_a": mean_a, "measured_a_err": err_a,
              "predicted_a": pred_a, f"predicted_a_{other}": other_a, "band": band,
              "predicted_b": np.broadcast_to(np.asarray(pred_b, float), pred_a.shape),
              "measured_b": traj.b.mean(1), "rho": rho}
    return comparison, curves


# --- 2. stationary speed vs eta ------------------------------------------------------------

def compare_stationary_speed(local_sq, spectrum, *, eta, beta, lam=0.0, batch_size, sigma2,
                             label="") -> Comparison:
    r"""Stationary ``E||delta||^2`` against eq. (12) (SDE) and the exact discrete value.

    ``local_sq`` is ``(R, seeds)`` over a stationary window. Measured: the mean over seeds of
    each seed's time average; standard error across seeds. Predicted (table): the discrete
    theory, ``numeric.instantaneous_speed(..., model="discrete")``; the SDE value, and the
    z-scores of both, are in ``details``.
    """
    spectrum = positive_spectrum(spectrum)
    measured, error = _mean_and_error(np.asarray(local_sq).mean(0))
    kwargs = dict(eta=eta, beta=beta, lam=lam, S=batch_size, sigma2=sigma2)
    discrete = float(numeric.instantaneous_speed(spectrum, model="discrete", **kwargs))
    sde = float(numeric.instantaneous_speed(spectrum, model="sde", **kwargs))
    edge = 2 * (1 + beta) / (spectrum.max() + lam)
    return Comparison(f"stationary E||delta||^2{label}, eta={eta:.3g} ({eta / edge:.0%} of edge)",
                      discrete, float(measured), float(error),
                      {"sde": sde, "z_sde": float((measured - sde) / error) if error else None,
                       "eta": eta, "stability_edge_eta": float(edge)})


# --- 3. velocity autocorrelation -----------------------------------------------------------

def compare_velocity_correlation(b, rho, *, eta, beta, lam=0.0, max_lag, record_every=1,
                                 model="discrete", label="") -> tuple[Comparison, dict]:
    r"""Autocorrelation of the velocity projections against ``numeric.velocity_correlation``.

    ``b`` is ``(R, seeds, m)`` over a stationary window, recorded every ``record_every`` steps;
    lags are ``0..max_lag`` records (``record_every`` steps each). ``numeric.autocorrelation``
    estimates the normalised ACF per seed and its standard error across seeds. The table's
    number is the top mode at one damping time of that mode, ``k* = (1+beta)/(1-beta)`` steps,
    where ``gamma eta k* = 1``: in the SDE, for an underdamped mode,
    ``C(k*) = e^{-1} (cos(alpha eta k*) - (gamma/alpha) sin(alpha eta k*))``
    (appendix G.2; ``alpha = sqrt(omega^2 - gamma^2)``).
    """
    rho = np.asarray(rho, dtype=np.float64)
    lags_rec = np.arange(max_lag + 1)
    lags = lags_rec * record_every
    measured = np.empty((max_lag + 1, rho.size))
    errors = np.empty_like(measured)
    for l in range(rho.size):
        measured[:, l], errors[:, l] = numeric.autocorrelation(b[:, :, l], max_lag, axis=0)
    kwargs = dict(eta=eta, beta=beta, lam=lam)
    predicted = np.asarray(numeric.velocity_correlation(rho[None, :], lags[:, None].astype(
        float), model=model, **kwargs), dtype=np.float64)
    sde = np.asarray(numeric.velocity_correlation(rho[None, :], lags[:, None].astype(float),
                                                  model="sde", **kwargs), dtype=np.float64)
    k_star = (1 + beta) / (1 - beta)
    i = int(min(max_lag, round(k_star / record_every)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(errors > 0, (measured - predicted) / errors, 0.0)
    comparison = Comparison(f"velocity autocorrelation{label}: C(k) top mode, k={lags[i]}",
                            float(predicted[i, 0]), float(measured[i, 0]),
                            float(errors[i, 0]),
                            {"model": model, "max_abs_z": float(np.abs(z).max()),
                             "sde": float(sde[i, 0])})
    return comparison, {"lags": lags, "measured": measured, "stderr": errors,
                        "predicted": predicted, "predicted_sde": sde, "rho": rho}


# --- 4. global displacement ----------------------------------------------------------------

def compare_global_displacement(global_sq, steps, spectrum, *, eta, beta, lam=0.0,
                                batch_size, sigma2, window=2 / 3, model="discrete",
                                label="") -> tuple[list[Comparison], dict]:
    r"""``E||Delta_k||^2`` from a stationary start against ``numeric.global_displacement``.

    ``global_sq`` is ``(R, seeds)`` at lags ``steps`` (``(R,)``, > 0) from the start of the
    stationary window. Two rows: the value at the last lag (seed mean and its standard error),
    and the exponent ``c`` of ``numeric.fit_power_law`` on the seed-mean curve (its bootstrap
    standard error) next to the exponent fitted to the predicted curve on the same window.
    """
    spectrum = positive_spectrum(spectrum)
    steps = np.asarray(steps, dtype=np.float64)
    keep = steps > 0
    steps, global_sq = steps[keep], np.asarray(global_sq)[keep]
    mean, error = _mean_and_error(global_sq)
    kwargs = dict(eta=eta, beta=beta, lam=lam, S=batch_size, sigma2=sigma2)
    predicted = np.asarray(numeric.global_displacement(spectrum, steps, model=model, **kwargs),
                           dtype=np.float64)
    sde = np.asarray(numeric.global_displacement(spectrum, steps, model="sde", **kwargs),
                     dtype=np.float64)
    fit_measured = numeric.fit_power_law(steps, mean, window=window,
                                         rng=np.random.default_rng(0))
    fit_predicted = numeric.fit_power_law(steps, predicted, window=window,
                                          rng=np.random.default_rng(0))
    rows = [
        Comparison(f"E||Delta_k||^2{label} at k={int(steps[-1])}", float(predicted[-1]),
                   float(mean[-1]), float(error[-1]), {"model": model, "sde": float(sde[-1])}),
        Comparison(f"E||Delta_k||^2{label} exponent c (last {window:.2g} of k)",
                   float(fit_predicted.exponent), float(fit_measured.exponent),
                   float(fit_measured.standard_error),
                   {"ci_measured": [fit_measured.ci_low, fit_measured.ci_high],
                    "window": window}),
    ]
    curves = {"steps": steps, "measured": mean, "stderr": error, "predicted": predicted,
              "predicted_sde": sde, "fit_measured": tuple(fit_measured),
              "fit_predicted": tuple(fit_predicted)}
    return rows, curves


# --- 5. equipartition ----------------------------------------------------------------------

def compare_equipartition(excess_loss, velocity_sq, *, eta, beta, label="") -> Comparison:
    r"""Equipartition (G.3): ``E[L_lam(theta)] - L_lam(mu)`` against ``E[K]``,
    ``K = m ||v||^2 / 2`` with mass ``m = eta (1 + beta)/2``.

    Both are measured on a stationary window, ``(L, seeds)``. Predicted: the seed mean of the
    time-averaged K; measured: that of the excess loss; standard error across seeds of the
    per-seed difference (they are correlated within a run). The relation is exact in the SDE
    and, for linear regression with Gaussian noise, also in the exact discrete theory (both
    sides carry the same factor ``2(1+beta)/(2(1+beta) - eta h)`` per mode).
    """
    mass = eta * (1 + beta) / 2
    kinetic = 0.5 * mass * np.asarray(velocity_sq).mean(0)
    potential = np.asarray(excess_loss).mean(0)
    k_mean, k_err = _mean_and_error(kinetic)
    p_mean, p_err = _mean_and_error(potential)
    _, diff_err = _mean_and_error(potential - kinetic)
    return Comparison(f"equipartition{label}: E[L]-L(mu) vs E[K]", float(k_mean),
                      float(p_mean), float(diff_err),
                      {"kinetic_stderr": float(k_err), "potential_stderr": float(p_err)})


# --- 6. noise covariance -------------------------------------------------------------------

def compare_noise_covariance(problem, directions, rho, b, *, eta, beta, batch_size, sigma2,
                             label="") -> tuple[list[Comparison], dict]:
    r"""How well Assumption 5 (``Sigma = sigma^2 H``) holds, and the velocity variances of the
    top modes predicted with ``sigma^2 H`` and with the measured Sigma.

    ``Sigma(mu)`` is projected on the m top directions (:func:`projected_noise_covariance`).
    Rows: (i) ``sum_l q_l^T Sigma q_l`` against ``sigma^2 sum_l rho_l`` (exact numbers, error 0);
    (ii)-(iii) the measured ``sum_l Var(b_l)`` (seed mean of per-seed time variances over the
    stationary window ``b``, ``(R, seeds, m)``) against the SDE prediction with ``sigma^2 H``
    (``numeric.stationary_variance``), with the measured Sigma through the general Lyapunov
    route (``numeric.ou_stationary_covariance`` of :func:`sgd_drift_diffusion`,
    ``kappa = S (1 - beta^2)``), and with the measured per-mode noise in the exact discrete
    theory (where ``Var_ss(v_l)`` is linear in the mode's noise variance). Sigma is measured
    at ``mu``; at stationarity SGD sits around mu, where Sigma(theta) is larger.
    """
    sigma_proj = projected_noise_covariance(problem.X, problem.Y, problem.mu, directions)
    return _noise_rows(rho, sigma_proj, b, eta=eta, beta=beta, lam=problem.lam,
                       batch_size=batch_size, sigma2=sigma2, label=label)


def _noise_rows(rho, sigma_proj, b, *, eta, beta, lam, batch_size, sigma2, label):
    rho = np.asarray(rho, dtype=np.float64)
    assumed = sigma2 * rho
    per_seed_var = np.asarray(b).var(axis=0)  # (seeds, m): time variance per seed
    total_var, total_err = _mean_and_error(per_seed_var.sum(-1))
    _, var_v_assumed = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam,
                                                   S=batch_size, sigma2=sigma2, model="sde")
    A, D = sgd_drift_diffusion(rho, sigma_proj, eta=eta, beta=beta, lam=lam)
    cov = numeric.ou_stationary_covariance(A, D, kappa=batch_size * (1 - beta ** 2))
    m = rho.size
    var_v_measured_sigma = np.diag(cov)[m:]
    # Exact discrete per-mode value: Var_ss(v_l) is linear in the mode's noise variance.
    _, unit = numeric.stationary_variance(rho, eta=eta, beta=beta, lam=lam, S=batch_size,
                                          sigma2=1.0, model="discrete")
    safe_rho = np.where(rho > 0, rho, 1.0)
    var_v_discrete_measured = np.asarray(unit) * np.diag(sigma_proj) / safe_rho
    rows = [
        Comparison(f"Assumption 5{label}: sum q^T Sigma q vs sigma^2 sum rho (top {m})",
                   float(assumed.sum()), float(np.trace(sigma_proj)), 0.0,
                   {"sigma2": sigma2,
                    "offdiagonal_fraction": float(np.linalg.norm(sigma_proj - np.diag(np.diag(
                        sigma_proj))) / np.linalg.norm(sigma_proj))}),
        Comparison(f"sum Var(b) top {m}{label}, Sigma = sigma^2 H (SDE)",
                   float(np.sum(var_v_assumed)), float(total_var), float(total_err)),
        Comparison(f"sum Var(b) top {m}{label}, measured Sigma (SDE, Lyapunov)",
                   float(var_v_measured_sigma.sum()), float(total_var), float(total_err)),
        Comparison(f"sum Var(b) top {m}{label}, measured Sigma (discrete)",
                   float(var_v_discrete_measured.sum()), float(total_var), float(total_err)),
    ]
    curves = {"rho": rho, "projected_sigma_diag": np.diag(sigma_proj), "assumed": assumed,
              "var_b_measured": per_seed_var.mean(0),
              "var_b_sigma2H": np.broadcast_to(var_v_assumed, rho.shape),
              "var_b_measured_sigma": var_v_measured_sigma,
              "var_b_measured_sigma_discrete": var_v_discrete_measured}
    return rows, curves


# --- 7. the 2-D anisotropic OU process of Fig. 3 -------------------------------------------

def ou_2d_example(*, num_paths: int = 200, num_steps: int = 2000, dt: float = 0.02,
                  seed: int = 0) -> tuple[Comparison, dict]:
    r"""The paper's Fig. 3: a 2-D OU process ``dz = -H z dt + sqrt(2 D) dW`` whose noise is
    anisotropic and not aligned with H, so the stationary law is not the Gibbs law of
    ``Phi = z^T H z / 2`` but of a modified ``Psi = z^T U z / 2`` (eq. 39; Kwon-Ao,
    ``numeric.ou_decomposition``, ``numeric.ou_modified_loss``), and a probability current
    ``J = -Q U z p_ss`` circulates.

    The number: the stationary correlation ``Cov(z_1, z_2)`` from exact samples
    (``numeric.sample_ou``, ``num_paths`` independent paths, time-averaged after a burn-in of
    5 relaxation times; standard error across paths) against ``B_12`` of the decomposition
    (``kappa = 1``). A Gibbs law of Phi would give ``Cov ∝ H^{-1}``, diagonal here: the
    measured correlation is the signature of the modified potential.
    """
    H = np.array([[1.0, 0.0], [0.0, 0.25]])
    angle = np.pi / 5
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    D = rot @ np.diag([0.1, 1.0]) @ rot.T
    decomposition = numeric.ou_decomposition(H, D)
    rng = np.random.default_rng(seed)
    z0 = np.zeros((num_paths, 2))
    paths = numeric.sample_ou(H, D, z0, dt, num_steps, rng=rng)  # (T+1, paths, 2)
    burn = int(5 / (0.25 * dt))  # 5 relaxation times of the slow direction (rate 0.25)
    window = paths[burn:]
    # The mean is known (0): subtracting each path's own mean would bias the estimate by
    # about -2 tau_corr / T, large for short paths.
    per_path = (window[..., 0] * window[..., 1]).mean(0)
    measured, error = _mean_and_error(per_path)
    B = np.asarray(decomposition.B)
    comparison = Comparison("2-D OU (Fig. 3): stationary Cov(z1, z2)", float(B[0, 1]),
                            float(measured), float(error),
                            {"gibbs_phi_prediction": 0.0, "U": np.asarray(
                                decomposition.U).tolist(),
                             "Q": np.asarray(decomposition.Q).tolist()})
    return comparison, {"H": H, "D": D, "U": np.asarray(decomposition.U),
                        "Q": np.asarray(decomposition.Q), "B": B, "path": paths[:, 0],
                        "dt": dt}


# --- the comparisons as functions of (trajectory, spectrum, hyperparameters, noise model) ----
#
# The same rows as above, for any experiment that records a trajectory in the on-disk format
# (numeric.load_trajectory: arrays with the time axis first, then the seeds or ranks axis) and
# measures a numeric.Spectrum (top-k eigenpairs plus a bulk, possibly partial). Sums over
# modes are predicted from the spectrum (numeric.predicted_speed, predicted_global_displacement,
# predicted_exponent); per-mode quantities from its top eigenvalues. Column j of the recorded
# projections is the spectrum's eigenpair ``trajectory.manifest["modes"][j]`` (default j).


@dataclass(frozen=True)
class Hyperparameters:
    """Learning rate ``eta``, momentum ``beta``, weight decay ``lam`` and the *effective* batch
    size ``batch_size`` of the predictions (docs/theory.md section 2)."""

    eta: float
    beta: float
    batch_size: float
    lam: float = 0.0

    @classmethod
    def from_manifest(cls, manifest: dict, *, batch_size=None) -> "Hyperparameters":
        """From a trajectory manifest (``eta``, ``beta``, ``lam``, ``S``); ``batch_size``
        overrides ``S`` (e.g. the effective batch size of sampling without replacement)."""
        S = manifest.get("S") if batch_size is None else batch_size
        if S is None:
            raise ValueError("the manifest has no batch size S: pass batch_size=")
        return cls(eta=float(manifest["eta"]), beta=float(manifest["beta"]),
                   batch_size=float(S), lam=float(manifest.get("lam") or 0.0))

    def kernel_arguments(self) -> dict:
        return dict(eta=self.eta, beta=self.beta, lam=self.lam, S=self.batch_size)


def _window_rows(trajectory, window_start):
    steps = np.asarray(trajectory.steps)
    return steps >= window_start, steps


def _columns(trajectory, spectrum, modes):
    """Indices of the recorded projection columns holding the spectrum's eigenpairs
    ``modes`` (default: every recorded column), those eigenpairs' indices, and their
    eigenvalues."""
    recorded = list(trajectory.manifest.get("modes") or range(
        np.asarray(trajectory.velocity_projection).shape[-1]))
    modes = recorded if modes is None else [int(m) for m in np.atleast_1d(modes)]
    missing = [m for m in modes if m not in recorded]
    if missing:
        raise ValueError(f"modes {missing} were not recorded; the trajectory holds the "
                         f"spectrum's eigenpairs {recorded}")
    return [recorded.index(m) for m in modes], modes, spectrum.eigenvalues[modes]


def _spectrum_of(spectrum):
    """A numeric.Spectrum, or an exact one built from an array of eigenvalues."""
    if isinstance(spectrum, numeric.Spectrum):
        return spectrum
    rho = np.sort(np.asarray(spectrum, dtype=np.float64))[::-1]
    return numeric.Spectrum(eigenvalues=np.zeros(0), eigenvectors=None, residuals=None,
                            bulk_nodes=rho, bulk_weights=np.ones(rho.size), bulk_method="exact",
                            trace=float(rho.sum()), trace_stderr=0.0,
                            num_parameters=max(1, rho.size))


def mean_trajectory_comparison(trajectory, spectrum, hyper: Hyperparameters, noise, *, a0,
                               modes=None, model="discrete", label=""):
    r""":func:`compare_mean_trajectory` on a recorded trajectory: ``theta_projection`` (its
    reference is the minimum, ``(R, seeds, m)``) against the mean trajectory of the
    spectrum's eigenvalues ``modes`` from ``(a0, 0)``; the confidence band uses the noise
    model's per-mode variance :math:`\sigma^2_l\rho_l`."""
    columns, index, rho = _columns(trajectory, spectrum, modes)
    noise_var = noise.mode_sigma2(spectrum)[index] * rho
    recorded = _Recorded(np.asarray(trajectory.steps),
                         np.asarray(trajectory.theta_projection)[..., columns],
                         np.asarray(trajectory.velocity_projection)[..., columns])
    return compare_mean_trajectory(recorded, rho, a0, eta=hyper.eta, beta=hyper.beta,
                                   lam=hyper.lam, batch_size=hyper.batch_size,
                                   noise_var=noise_var, model=model, label=label)


@dataclass
class _Recorded:
    steps: np.ndarray
    a: np.ndarray
    b: np.ndarray


def stationary_speed_comparison(trajectory, spectrum, hyper: Hyperparameters, noise, *,
                                window_start=0, label="") -> Comparison:
    r"""Stationary ``E||delta||^2`` (eq. 12): the recorded ``local_displacement_sq`` from
    ``window_start`` on (``(R, seeds)``; seed mean of time averages, standard error across
    seeds) against :func:`numeric.predicted_speed` of the spectrum, exact discrete theory in
    the table and the SDE in ``details``. Modes with ``rho <= 0`` are left out (their
    number in ``details["excluded_modes"]``)."""
    spectrum = _spectrum_of(spectrum)
    window, _ = _window_rows(trajectory, window_start)
    measured, error = _mean_and_error(np.asarray(trajectory.local_displacement_sq)[window]
                                      .mean(0))
    kwargs = hyper.kernel_arguments() | {"noise": noise}
    discrete = numeric.predicted_speed(spectrum, model="discrete", **kwargs)
    sde = numeric.predicted_speed(spectrum, model="sde", **kwargs)
    eta, beta = hyper.eta, hyper.beta
    edge = 2 * (1 + beta) / (spectrum.nodes().max() + hyper.lam)
    return Comparison(
        f"stationary E||delta||^2{label}, eta={eta:.3g} ({eta / edge:.0%} of edge)",
        float(discrete), float(measured), float(error),
        {"sde": float(sde), "z_sde": float((measured - float(sde)) / error) if error else None,
         "eta": eta, "stability_edge_eta": float(edge),
         "excluded_modes": discrete.excluded_weight,
         "prediction_stderr": discrete.standard_error})


def velocity_correlation_comparison(trajectory, spectrum, hyper: Hyperparameters, noise=None,
                                    *, modes=None, window_start=0, max_lag, model="discrete",
                                    label=""):
    """:func:`compare_velocity_correlation` on the recorded ``velocity_projection`` from
    ``window_start`` on, for the spectrum's eigenpairs ``modes`` (the normalised correlation
    does not depend on the noise model)."""
    columns, _, rho = _columns(trajectory, spectrum, modes)
    window, steps = _window_rows(trajectory, window_start)
    spacing = np.diff(steps[window])
    record_every = int(spacing[0]) if spacing.size else 1
    if spacing.size and np.any(spacing != record_every):
        raise ValueError("velocity_correlation_comparison needs equally spaced records")
    b = np.asarray(trajectory.velocity_projection)[window][..., columns]
    return compare_velocity_correlation(b, rho, eta=hyper.eta, beta=hyper.beta, lam=hyper.lam,
                                        max_lag=max_lag, record_every=record_every,
                                        model=model, label=label)


def global_displacement_comparison(trajectory, spectrum, hyper: Hyperparameters, noise, *,
                                   window_start=0, window=2 / 3, model="discrete", label=""):
    r"""``E||Delta_k||^2`` from a stationary start (eq. 13): the recorded
    ``global_displacement_sq`` (its reference is the state at ``window_start``, ``(R,
    seeds)``) at lags ``k = step - window_start > 0`` against
    :func:`numeric.predicted_global_displacement` of the spectrum (top-k plus bulk, weighted
    by the noise model). Two rows: the value at the last lag, and the exponent c of
    :func:`numeric.fit_power_law` on the seed-mean curve against the exponent fitted to the
    predicted curve on the same points. Returns ``(rows, curves)``."""
    spectrum = _spectrum_of(spectrum)
    window_rows, steps = _window_rows(trajectory, window_start)
    lags = (steps[window_rows] - window_start).astype(np.float64)
    global_sq = np.asarray(trajectory.global_displacement_sq)[window_rows]
    keep = lags > 0
    lags, global_sq = lags[keep], global_sq[keep]
    mean, error = _mean_and_error(global_sq)
    kwargs = hyper.kernel_arguments() | {"noise": noise}
    predicted = numeric.predicted_global_displacement(spectrum, lags, model=model, **kwargs)
    sde = numeric.predicted_global_displacement(spectrum, lags, model="sde", **kwargs)
    fit_measured = numeric.fit_power_law(lags, mean, window=window,
                                         rng=np.random.default_rng(0))
    fit_predicted = numeric.fit_power_law(lags, predicted.value, window=window,
                                          rng=np.random.default_rng(0))
    rows = [
        Comparison(f"E||Delta_k||^2{label} at k={int(lags[-1])}", float(predicted.value[-1]),
                   float(mean[-1]), float(error[-1]),
                   {"model": model, "sde": float(sde.value[-1]),
                    "excluded_modes": predicted.excluded_weight,
                    "prediction_stderr": float(np.asarray(predicted.standard_error)[-1])}),
        Comparison(f"E||Delta_k||^2{label} exponent c (last {window:.2g} of k)",
                   float(fit_predicted.exponent), float(fit_measured.exponent),
                   float(fit_measured.standard_error),
                   {"ci_measured": [fit_measured.ci_low, fit_measured.ci_high],
                    "window": window}),
    ]
    curves = {"steps": lags, "measured": mean, "stderr": error, "predicted": predicted.value,
              "predicted_sde": sde.value, "fit_measured": tuple(fit_measured),
              "fit_predicted": tuple(fit_predicted)}
    return rows, curves


def equipartition_comparison(trajectory, spectrum, hyper: Hyperparameters, noise=None, *,
                             window_start=0, modes=None, source="projections", label=""):
    r"""Equipartition (G.3) on a recorded trajectory, from ``window_start`` on.

    ``source="projections"``: the potential :math:`\sum_l (\rho_l+\lambda) a_l^2 / 2` and
    :math:`\sum_l b_l^2` over the recorded modes (``theta_projection`` about the minimum and
    ``velocity_projection``); ``source="loss"``: the recorded ``excess_loss`` (rows where it
    is finite) against :math:`\|v\|^2 = \|\delta\|^2/\eta^2` of the same rows, all modes.
    See :func:`compare_equipartition`."""
    window, _ = _window_rows(trajectory, window_start)
    if source == "projections":
        columns, _, rho = _columns(trajectory, spectrum, modes)
        a = np.asarray(trajectory.theta_projection)[window][..., columns]
        b = np.asarray(trajectory.velocity_projection)[window][..., columns]
        potential = 0.5 * (a ** 2 * (rho + hyper.lam)).sum(-1)
        velocity_sq = (b ** 2).sum(-1)
    elif source == "loss":
        excess = np.asarray(trajectory.excess_loss)
        rows = window & np.all(np.isfinite(excess), axis=tuple(range(1, excess.ndim)))
        potential = excess[rows]
        velocity_sq = np.asarray(trajectory.local_displacement_sq)[rows] / hyper.eta ** 2
    else:
        raise ValueError(f"source must be 'projections' or 'loss', but got {source!r}")
    return compare_equipartition(potential, velocity_sq, eta=hyper.eta, beta=hyper.beta,
                                 label=label)


def noise_covariance_comparison(trajectory, spectrum, hyper: Hyperparameters, noise, *,
                                projected_covariance, modes=None, window_start=0, label=""):
    r"""How well Assumption 5 holds on the top modes, and their velocity variances predicted
    with ``noise`` (an :class:`numeric.IsotropicNoise`, :math:`\sigma^2 H`) and with the
    measured ``projected_covariance`` :math:`Q\Sigma Q^\top` on the recorded eigenpairs
    (SDE through the general Lyapunov route, and exact discrete per mode), against the
    recorded ``velocity_projection`` from ``window_start`` on. Same rows as
    :func:`compare_noise_covariance`."""
    columns, _, rho = _columns(trajectory, spectrum, modes)
    window, _ = _window_rows(trajectory, window_start)
    b = np.asarray(trajectory.velocity_projection)[window][..., columns]
    sigma_proj = np.asarray(projected_covariance, dtype=np.float64)[np.ix_(columns, columns)]
    return _noise_rows(rho, sigma_proj, b, eta=hyper.eta, beta=hyper.beta, lam=hyper.lam,
                       batch_size=hyper.batch_size, sigma2=noise.sigma2, label=label)
