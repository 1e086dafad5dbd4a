"""Independent high-precision references for the closed-form kernels of :mod:`numeric`.

Everything here is written directly from docs/theory.md sections 4-6 and evaluated with mpmath at
``DIGITS = 50`` significant digits; it never imports :mod:`numeric` or :mod:`ousym`, so a test
that compares the two compares two independent routes.

Per eigenmode (eigenvalue ``rho``, curvature ``h = rho + lam``):

* SDE model (eq. 3, appendix F.2): the drift ``A = [[0, -1], [omega^2, 2 gamma]]`` with
  ``gamma = (1 - beta) / (eta (1 + beta))`` and ``omega^2 = 2 h / (eta (1 + beta))``; the
  propagator ``e^{-A t}`` at ``t = eta k`` from the three-regime closed form, evaluated at 50
  digits (no regime is ill-conditioned there; at exactly ``Delta = 0`` the critical form is
  used). The stationary covariance solves ``A P + P A^T = 2 kappa^{-1} D`` (eq. 19, 26) with
  ``kappa = S (1 - beta^2)``, ``D_22 = 2 (1 - beta) sigma^2 rho / (eta (1 + beta))``, solved as a
  generic 4x4 Kronecker system.
* Discrete model (section 6): ``M = [[1 - eta h, eta beta], [-h, beta]]``, ``G = (-eta, -1)``;
  the propagator is ``M^k`` by repeated squaring and the stationary covariance solves
  ``P = M P M^T + G G^T sigma^2 rho / S``, again a generic 4x4 Kronecker system.

Both models then share the same stationary formulas: lag covariance ``Phi(k) P``, velocity
correlation ``C(k) = [Phi(k) P]_22 / P_22``, instantaneous speed ``eta^2 sum_l P_22`` (eq. 12)
and global displacement (eq. 13)

    E||Delta_k||^2 = eta^2 sum_l P_22,l [k + 2 sum_{j=1}^{k-1} (k - j) C_l(j)],

the lag sum taken in closed form as a matrix geometric series (the step propagator ``Phi(1)``
has no eigenvalue 1 for ``h > 0``) at ``DIGITS + GUARD`` digits, because that closed form
subtracts nearly equal matrices when the slowest rate per step is tiny.

Tolerance scale
---------------
``scale`` follows the issue's accuracy contract: the largest entry of the mode's propagator
times the size of the input state. To make "largest entry" independent of units (``a`` is a
position, ``b`` a velocity; the off-diagonal entries of the propagator carry time units), both
are measured in the energy-balanced coordinates ``(omega a, b)``, in which the undamped
oscillator is a rotation: ``P_bal = T P T^{-1}`` with ``T = diag(omega, 1)``, input size
``max(omega |a0|, |b0|)``. An error bound on ``omega a`` is divided by ``omega`` for ``a``.
"""

from __future__ import annotations

import functools

import mpmath
from mpmath import mp

__all__ = [
    "DIGITS", "GUARD", "sde_propagator", "discrete_propagator", "propagator",
    "stationary_covariance", "mean_trajectory", "velocity_correlation",
    "stationary_variance", "instantaneous_speed", "lag_sum_bracket", "global_displacement",
    "balanced_envelope", "oscillator_rates", "ModeSpec", "brute_force_lag_sum_bracket",
    "condition_steps", "rounding_sensitivity", "eta_for_damping_ratio",
    "discrete_critical_zetas", "is_stable_discrete", "mode_grid", "step_grid",
    "ZETA_CRITICAL", "BETAS", "LAMS",
]

DIGITS = 50
GUARD = 40

MODELS = ("sde", "discrete")


def _mpf(x) -> mpmath.mpf:
    """Exact conversion: every float64 (and so every float32) is a dyadic rational; mpf
    inputs (perturbed parameters, see :func:`rounding_sensitivity`) pass unchanged."""
    if isinstance(x, mpmath.mpf):
        return x
    return mp.mpf(float(x))


# --- 2x2 matrices as tuples (m11, m12, m21, m22) of mpf: fast and exact enough ----------------

def _mul(x, y):
    a, b, c, d = x
    e, f, g, h = y
    return (a * e + b * g, a * f + b * h, c * e + d * g, c * f + d * h)


def _sub(x, y):
    return tuple(p - q for p, q in zip(x, y))


def _scaled(x, s):
    return tuple(p * s for p in x)


def _identity():
    return (mp.mpf(1), mp.mpf(0), mp.mpf(0), mp.mpf(1))


def _inverse(x):
    a, b, c, d = x
    det = a * d - b * c
    return (d / det, -b / det, -c / det, a / det)


def _power(x, n: int):
    if n < 0 or int(n) != n:
        raise ValueError(f"matrix power needs an integer n >= 0, got {n!r}")
    n = int(n)
    result = _identity()
    base = x
    while n:
        if n & 1:
            result = _mul(result, base)
        n >>= 1
        if n:
            base = _mul(base, base)
    return result


class ModeSpec:
    """The exact (mpf) parameters of one mode: eta, beta, lam, rho, h, gamma, omega^2."""

    def __init__(self, rho, eta, beta, lam):
        self.rho, self.eta, self.beta, self.lam = (_mpf(x) for x in (rho, eta, beta, lam))
        self.h = self.rho + self.lam
        self.gamma = (1 - self.beta) / (self.eta * (1 + self.beta))
        self.omega2 = 2 * self.h / (self.eta * (1 + self.beta))
        self.omega = mp.sqrt(self.omega2)

    def drift(self):
        """A of docs/theory.md section 3, per mode."""
        return (mp.mpf(0), mp.mpf(-1), self.omega2, 2 * self.gamma)

    def step_matrix(self):
        """M of docs/theory.md section 6."""
        eta, beta, h = self.eta, self.beta, self.h
        return (1 - eta * h, eta * beta, -h, beta)


def sde_propagator(mode: ModeSpec, k):
    """e^{-A t} at t = eta k (docs/theory.md section 4), as a 2x2 tuple."""
    t = mode.eta * _mpf(k)
    gamma, omega2 = mode.gamma, mode.omega2
    delta = gamma * gamma - omega2
    if delta > 0:
        alpha = mp.sqrt(delta)
        c, s = mp.cosh(alpha * t), mp.sinh(alpha * t) / alpha
    elif delta < 0:
        alpha = mp.sqrt(-delta)
        c, s = mp.cos(alpha * t), mp.sin(alpha * t) / alpha
    else:
        c, s = mp.mpf(1), t
    decay = mp.exp(-gamma * t)
    return (decay * (c + gamma * s), decay * s, -decay * omega2 * s, decay * (c - gamma * s))


def discrete_propagator(mode: ModeSpec, k):
    """M^k for an integer number of steps k (docs/theory.md section 6)."""
    kf = float(k)
    if kf != int(kf) or kf < 0:
        raise ValueError(f"the discrete model needs an integer k >= 0, got {k!r}")
    return _power(mode.step_matrix(), int(kf))


def propagator(mode: ModeSpec, k, model: str):
    if model == "sde":
        return sde_propagator(mode, k)
    if model == "discrete":
        return discrete_propagator(mode, k)
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def _solve_lyapunov(kron_rows, rhs):
    """Solve the 4x4 linear system  K vec(P) = vec(Q)  and return P as a 2x2 tuple."""
    solution = mp.lu_solve(mp.matrix(kron_rows), mp.matrix(list(rhs)))
    return tuple(solution[i] for i in range(4))


def _kron(x, y):
    """Kronecker product of two 2x2 tuples (row-major vec: vec(X P Y^T) = (X kron Y) vec(P))."""
    rows = []
    for i in range(2):
        for k in range(2):
            rows.append([x[2 * i + j] * y[2 * k + l] for j in range(2) for l in range(2)])
    return rows


def stationary_covariance(mode: ModeSpec, *, S, sigma2, model: str):
    """Stationary covariance P of (a, b) for one mode, from its Lyapunov equation."""
    key = (mode.rho, mode.eta, mode.beta, mode.lam, float(S), float(sigma2), model, mp.dps)
    return _stationary_covariance(*key)


@functools.lru_cache(maxsize=None)
def _stationary_covariance(rho, eta, beta, lam, S, sigma2, model, dps):
    mode = ModeSpec(rho, eta, beta, lam)
    S, sigma2 = _mpf(S), _mpf(sigma2)
    identity = _identity()
    if model == "sde":
        kappa = S * (1 - mode.beta ** 2)
        diffusion = 2 * (1 - mode.beta) * sigma2 * mode.rho / (mode.eta * (1 + mode.beta))
        drift = mode.drift()
        # A P + P A^T = (A kron I + I kron A) vec(P)
        left, right = _kron(drift, identity), _kron(identity, drift)
        rows = [[left[r][c] + right[r][c] for c in range(4)] for r in range(4)]
        rhs = (0, 0, 0, 2 * diffusion / kappa)
    elif model == "discrete":
        step = mode.step_matrix()
        mm = _kron(step, step)
        rows = [[(1 if r == c else 0) - mm[r][c] for c in range(4)] for r in range(4)]
        q = sigma2 * mode.rho / S
        eta = mode.eta
        rhs = (q * eta * eta, q * eta, q * eta, q)
    else:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return _solve_lyapunov(rows, rhs)


def balanced_envelope(mode: ModeSpec, matrix) -> mpmath.mpf:
    """max |entry| of T X T^{-1}, T = diag(omega, 1): the unit-free size of a propagator."""
    m11, m12, m21, m22 = matrix
    return max(abs(m11), abs(mode.omega * m12), abs(m21 / mode.omega), abs(m22))


def oscillator_rates(mode: ModeSpec):
    """(gamma, alpha = sqrt|gamma^2 - omega^2|) in units of 1/time."""
    return mode.gamma, mp.sqrt(abs(mode.gamma ** 2 - mode.omega2))


# --- public-kernel references: float inputs in, (value(s), scale) as mpf out ------------------

@functools.lru_cache(maxsize=None)
def mean_trajectory(rho, k, a0, b0, eta, beta, lam, model):
    """((a_k, b_k), (scale_a, scale_b)): e^{-A eta k} (a0, b0) or M^k (a0, b0)."""
    with mp.workdps(DIGITS):
        mode = ModeSpec(rho, eta, beta, lam)
        p = propagator(mode, k, model)
        a0, b0 = _mpf(a0), _mpf(b0)
        a = p[0] * a0 + p[1] * b0
        b = p[2] * a0 + p[3] * b0
        size = balanced_envelope(mode, p) * max(mode.omega * abs(a0), abs(b0))
        return (a, b), (size / mode.omega, size)


@functools.lru_cache(maxsize=None)
def velocity_correlation(rho, k, eta, beta, lam, model):
    """(C(k), scale): [Phi(k) P]_22 / P_22, normalised so that C(0) = 1 (appendix G.2)."""
    with mp.workdps(DIGITS):
        mode = ModeSpec(rho, eta, beta, lam)
        p = propagator(mode, k, model)
        cov = stationary_covariance(mode, S=1.0, sigma2=1.0, model=model)
        value = (p[2] * cov[1] + p[3] * cov[3]) / cov[3]
        return value, balanced_envelope(mode, p)


@functools.lru_cache(maxsize=None)
def stationary_variance(rho, eta, beta, lam, S, sigma2, model):
    """(Var_ss(a), Var_ss(b)) from the Lyapunov equation of the model."""
    with mp.workdps(DIGITS):
        mode = ModeSpec(rho, eta, beta, lam)
        cov = stationary_covariance(mode, S=S, sigma2=sigma2, model=model)
        return cov[0], cov[3]


def instantaneous_speed(rhos, eta, beta, lam, S, sigma2, model):
    """E||delta||^2 = eta^2 sum_l Var_ss(b_l) (eq. 12) over the spectrum ``rhos``."""
    with mp.workdps(DIGITS):
        total = mp.mpf(0)
        for rho in rhos:
            total += stationary_variance(rho, eta, beta, lam, S, sigma2, model)[1]
        return _mpf(eta) ** 2 * total


@functools.lru_cache(maxsize=None)
def lag_sum_bracket(rho, k, eta, beta, lam, model):
    """B(k) = k + 2 sum_{j=1}^{k-1} (k - j) C(j) for integer k >= 0 (the bracket of eq. 13).

    With Phi the one-step propagator and N = (I - Phi)^{-1},
    sum_{j=1}^{k-1} (k - j) Phi^j = [(k - 1) Phi - Phi^2 (I - Phi^{k-1}) N] N.
    """
    kf = float(k)
    if kf != int(kf) or kf < 0:
        raise ValueError(f"the lag sum needs an integer k >= 0, got {k!r}")
    kk = int(kf)
    if kk == 0:
        return mp.mpf(0)
    with mp.workdps(DIGITS + GUARD):
        mode = ModeSpec(rho, eta, beta, lam)
        step = propagator(mode, 1, model)
        cov = stationary_covariance(mode, S=1.0, sigma2=1.0, model=model)
        identity = _identity()
        resolvent = _inverse(_sub(identity, step))
        tail = _mul(_mul(_mul(step, step), _sub(identity, _power(step, kk - 1))), resolvent)
        weighted = _mul(_sub(_scaled(step, kk - 1), tail), resolvent)
        lag_sum = (weighted[2] * cov[1] + weighted[3] * cov[3]) / cov[3]
        result = kk + 2 * lag_sum
    return +result


def global_displacement(rhos, k, eta, beta, lam, S, sigma2, model):
    """(E||Delta_k||^2, scale) at stationarity (eq. 13) over the spectrum ``rhos``.

    scale = eta^2 sum_l Var_ss(b_l) max(k, 1): the diagonal (j = 0) terms of the double sum
    over lags, each lag term being bounded by Var_ss(b_l) because |C| <= 1.
    """
    with mp.workdps(DIGITS):
        eta2 = _mpf(eta) ** 2
        total, diagonal = mp.mpf(0), mp.mpf(0)
        for rho in rhos:
            var_b = stationary_variance(rho, eta, beta, lam, S, sigma2, model)[1]
            total += var_b * lag_sum_bracket(rho, k, eta, beta, lam, model)
            diagonal += var_b
        return eta2 * total, eta2 * diagonal * max(float(k), 1.0)


def brute_force_lag_sum_bracket(rho, k, eta, beta, lam, model):
    """B(k) by the explicit sum over lags, for checking :func:`lag_sum_bracket` (small k)."""
    kk = int(k)
    if kk == 0:
        return mp.mpf(0)
    with mp.workdps(DIGITS + GUARD):
        mode = ModeSpec(rho, eta, beta, lam)
        cov = stationary_covariance(mode, S=1.0, sigma2=1.0, model=model)
        step = propagator(mode, 1, model)
        power = _identity()
        total = mp.mpf(kk)
        for j in range(1, kk):
            power = _mul(power, step)
            total += 2 * (kk - j) * (power[2] * cov[1] + power[3] * cov[3]) / cov[3]
    return +total


def condition_steps(rho, k, eta, beta, lam) -> float:
    """(gamma + alpha) t at t = eta k: the rounding growth term of the accuracy contract."""
    with mp.workdps(DIGITS):
        mode = ModeSpec(rho, eta, beta, lam)
        gamma, alpha = oscillator_rates(mode)
        return float((gamma + alpha) * mode.eta * _mpf(k))


# --- the accuracy grid of the issue, parametrised by the damping ratio -----------------------

ZETA_CRITICAL = (1.0, 1 - 1e-12, 1 + 1e-12, 1 - 1e-8, 1 + 1e-8, 1 - 1e-4, 1 + 1e-4)
BETAS = (0.0, 0.5, 0.9, 0.99, 0.999)
LAMS = (0.0, 1e-4, 1e-1)


def eta_for_damping_ratio(zeta, rho, beta, lam) -> float:
    """Solve zeta = (1 - beta) / sqrt(2 eta (1 + beta) h) (appendix F.2) for eta."""
    h = rho + lam
    return (1 - beta) ** 2 / (2 * (1 + beta) * h * zeta ** 2)


def discrete_critical_zetas(beta):
    """Damping ratios at which M has a double eigenvalue, eta h = (1 -+ sqrt(beta))^2.

    Only the lower one is stable; its neighbourhood is where the discrete closed form has
    its removable singularity, as zeta = 1 is for the SDE.
    """
    zeta_d = (1 + beta ** 0.5) / (2 * (1 + beta)) ** 0.5
    return tuple(zeta_d * (1 + d) for d in (0.0, -1e-12, 1e-12, -1e-8, 1e-8))


def is_stable_discrete(eta, rho, beta, lam) -> bool:
    """0 < eta h < 2 (1 + beta) (docs/theory.md section 6)."""
    return 0 < eta * (rho + lam) < 2 * (1 + beta)


def mode_grid(*, full: bool, model: str):
    """(zeta, rho, beta, lam, eta) tuples over the issue's accuracy grid.

    full: zeta log-spaced in [1e-3, 1e3] (25 points) plus the critical neighbourhood, rho in
    {1e-12, 1e-9, ..., 1e3}, every beta and lam. The default grid keeps every (zeta, beta)
    pair (they set the regime and the decay per step) and cycles (rho, lam) through the
    extremes, so every value of each appears.
    """
    import numpy as np

    zetas = list(np.logspace(-3, 3, 25 if full else 13)) + list(ZETA_CRITICAL)
    rhos = list(np.logspace(-12, 3, 6)) if full else [1e-12, 1e3, 1.0]
    grid = []
    counter = 0
    for beta in BETAS:
        zs = zetas + (list(discrete_critical_zetas(beta)) if model == "discrete" else [])
        for zeta in zs:
            if full:
                pairs = [(rho, lam) for rho in rhos for lam in LAMS]
            else:
                pairs = [(rhos[counter % 3], LAMS[(counter // 3) % 3])]
                counter += 1
            for rho, lam in pairs:
                eta = eta_for_damping_ratio(float(zeta), rho, beta, lam)
                if model == "discrete" and not is_stable_discrete(eta, rho, beta, lam):
                    continue
                grid.append((float(zeta), float(rho), float(beta), float(lam), float(eta)))
    # modes that sit exactly on a regime boundary in floating point, whatever the order of
    # operations: gamma = omega = 1 (Delta = 0), and for SGD M nilpotent (beta = 0, eta h = 1)
    grid += [(1.0, 0.5, 0.0, 0.0, 1.0), (1.0, 0.25, 0.0, 0.25, 1.0)]
    if model == "discrete":
        grid += [(0.5 ** 0.5, 1.0, 0.0, 0.0, 1.0), (0.5 ** 0.5, 0.5, 0.0, 0.0, 2.0)]
    return grid


def step_grid(*, full: bool, model: str):
    """k from 0 to 1e7; non-integer k only for the SDE (M^k is not real for every M)."""
    ks = [0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7] if full else [
        0.0, 1.0, 2.0, 10.0, 1e3, 1e5, 1e7]
    if model == "sde":
        ks += [0.5, 12.5, 3333.25] if full else [12.5]
    return ks


def rounding_sensitivity(function, rho, k, eta, beta, lam, model, *rest):
    """|eta d f/d eta| + |h d f/d h| (h = rho + lam), by central differences at 50 digits.

    The first-order effect of a relative rounding of the products eta h and of the sum
    rho + lam. For the SDE the contract's (gamma + alpha) t term is exactly this; for the
    discrete model it also carries the cancellation in the entry 1 - eta h of M, which near
    eta h = 1 (beta = 0: M nearly nilpotent) dominates. ``function`` is one of the cached
    references returning a value or a tuple of values first.
    """
    delta = mp.mpf(10) ** -15
    with mp.workdps(DIGITS):
        def value(r, e, lm):
            out = function(r, k, *rest[:2], e, beta, lm, model) if rest else function(
                r, k, e, beta, lm, model)
            out = out[0]
            return list(out) if isinstance(out, tuple) else [out]

        e, r, lm = _mpf(eta), _mpf(rho), _mpf(lam)
        up_eta, down_eta = value(r, e * (1 + delta), lm), value(r, e * (1 - delta), lm)
        up_h = value(r * (1 + delta), e, lm * (1 + delta))
        down_h = value(r * (1 - delta), e, lm * (1 - delta))
        return [float((abs(a - b) + abs(c - d)) / (2 * delta))
                for a, b, c, d in zip(up_eta, down_eta, up_h, down_h)]
