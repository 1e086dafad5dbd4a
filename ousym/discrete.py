r"""Exact discrete-time theory of SGD with momentum on linear regression (beyond the paper).

docs/theory.md section 6. For linear regression with Gaussian minibatch noise the recursion of eq. (2)
is exactly linear-Gaussian. Per eigenmode, with state :math:`z_k = (a_k, v_k)` (``a`` the
position :math:`\langle\theta_k - \mu, q\rangle`, ``v`` the velocity :math:`\langle v_k, q\rangle`)
and :math:`\xi_k \sim N(0, \sigma^2\rho/S)`:

.. math::
    z_{k+1} = M z_k + G\xi_k,\qquad
    M = \begin{pmatrix} 1 - \eta h & \eta\beta \\ -h & \beta \end{pmatrix},\qquad
    G = \begin{pmatrix} -\eta \\ -1 \end{pmatrix}.

Everything here is indexed by the integer **step** ``k`` (no continuous time). The recursion is
stable iff :math:`0 < \eta h < 2(1+\beta)` (:data:`stability_condition`). The stationary
covariance :math:`P` solves :math:`P = MPM^\top + GG^\top\sigma^2\rho/S` (:data:`P_ss`);
the lag-``k`` covariance is :math:`\mathrm{Cov}(z_{i+k}, z_i) = M^kP`, with :math:`M^k` in closed
form through Cayley-Hamilton: :math:`M^k = s_{k+1} I + s_k (M - T I)` where
:math:`s_k = (\mu_+^k - \mu_-^k)/(\mu_+ - \mu_-)` over the eigenvalues
:math:`\mu_\pm = (T \pm \sqrt{d})/2`, :math:`T = 1 + \beta - \eta h`, :math:`d = T^2 - 4\beta`
(Piecewise: real, complex :math:`\mu_\pm = \sqrt\beta e^{\pm i\varphi}`, or double eigenvalue).

Global displacement: :math:`\Delta_k = \theta_k - \theta_0 = \eta\sum_{i=1}^k v_i`, so
:math:`E\lVert\Delta_k\rVert^2 = \eta^2(kP_{22} + 2[\sum_{m=1}^{k-1}(k-m)M^mP]_{22})`, a
geometric matrix sum in closed form.

The SDE results of :mod:`ousym.stationary` are the limit :math:`\eta h \to 0` of these
(:func:`continuum_limit`, :data:`stationary_variance_ratio`).
"""

from __future__ import annotations

import sympy as sp

from ._lazy import lazy_attributes
from .stationary import lag_weighted_geometric_sum
from .symbols import S, a0, b0, beta, epsilon, eta, h, k, lam, rho, sigma2, x_sym, y_sym

__all__ = [
    "M",
    "G",
    "noise_variance",
    "trace_M",
    "discriminant",
    "DISCRETE_REGIMES",
    "discrete_regime_conditions",
    "stability_condition",
    "P_ss",
    "discrete_var_a",
    "discrete_var_v",
    "discrete_cov_av",
    "M_power",
    "discrete_mean",
    "discrete_lag_covariance",
    "discrete_velocity_correlation",
    "discrete_instantaneous_speed_mode",
    "discrete_global_displacement_mode",
    "stationary_variance_ratio",
    "continuum_limit",
]

#: One step of the mode recursion, z_{k+1} = M z_k + G xi_k (docs/theory.md section 6).
M = sp.ImmutableMatrix([[1 - eta * h, eta * beta], [-h, beta]])
#: How the minibatch noise enters: G = (-eta, -1).
G = sp.ImmutableMatrix([-eta, -1])
#: Variance of the mode's minibatch noise xi_k: sigma^2 rho / S (Assumption 1 with Sigma = sigma^2 H).
noise_variance = sigma2 * rho / S

#: Trace T = 1 + beta - eta h and determinant beta of M; eigenvalues (T +- sqrt(d)) / 2.
trace_M = 1 + beta - eta * h
#: Discriminant d = T^2 - 4 beta of M's characteristic polynomial.
discriminant = trace_M**2 - 4 * beta

#: Stability of the recursion: both eigenvalues of M inside the unit disc iff 0 < eta h < 2(1 + beta).
stability_condition = sp.And(sp.StrictGreaterThan(eta * h, 0), sp.StrictLessThan(eta * h, 2 * (1 + beta)))

#: Stationary variance of v: sigma^2 rho / (S(1-beta^2)) * 2(1+beta) / (2(1+beta) - eta h).
discrete_var_v = 2 * sigma2 * rho / (S * (1 - beta) * (2 * (1 + beta) - eta * h))
#: Stationary variance of a: eta sigma^2 rho (1+beta) / (S (1-beta) h (2(1+beta) - eta h)).
discrete_var_a = eta * sigma2 * rho * (1 + beta) / (S * (1 - beta) * h * (2 * (1 + beta) - eta * h))
#: Stationary covariance of (a, v): eta sigma^2 rho / (S (1-beta)(2(1+beta) - eta h)) = eta Var(v) / 2.
discrete_cov_av = eta * sigma2 * rho / (S * (1 - beta) * (2 * (1 + beta) - eta * h))

#: Closed-form solution of the discrete Lyapunov equation P = M P M^T + G G^T sigma^2 rho / S.
P_ss = sp.ImmutableMatrix([[discrete_var_a, discrete_cov_av], [discrete_cov_av, discrete_var_v]])

#: One mode's instantaneous speed E[delta_k^2] = eta^2 Var_ss(v) (the exact version of eq. 12).
discrete_instantaneous_speed_mode = eta**2 * discrete_var_v

#: Ratio of the exact stationary variances to the SDE ones (both a and v): 2(1+beta)/(2(1+beta) - eta h).
stationary_variance_ratio = 2 * (1 + beta) / (2 * (1 + beta) - eta * h)

#: The regimes of M's eigenvalues, in Piecewise order (the last is the fallback).
DISCRETE_REGIMES = ("real", "complex", "double")


def discrete_regime_conditions() -> dict[str, sp.Basic]:
    """Conditions on the discriminant d = T^2 - 4 beta: real (d > 0), complex (d < 0), double."""
    return {
        "real": sp.StrictGreaterThan(discriminant, 0),
        "complex": sp.StrictLessThan(discriminant, 0),
        "double": sp.true,
    }


def _lucas_s(regime: str, steps: sp.Expr) -> sp.Expr:
    r""":math:`s_k = (\mu_+^k - \mu_-^k)/(\mu_+ - \mu_-)` written without complex numbers
    (:math:`s_0 = 0`, :math:`s_1 = 1`, :math:`s_{k+1} = T s_k - \beta s_{k-1}`)."""
    steps = sp.sympify(steps)
    if regime == "real":
        root = sp.sqrt(discriminant)
        upper, lower = (trace_M + root) / 2, (trace_M - root) / 2
        return (upper**steps - lower**steps) / root
    if regime == "complex":
        # mu_+- = sqrt(beta) e^{+-i phi}, cos(phi) = T / (2 sqrt(beta)), sin(phi) = sqrt(-d) / (2 sqrt(beta)).
        phi = sp.acos(trace_M / (2 * sp.sqrt(beta)))
        return beta ** ((steps - 1) / 2) * sp.sin(steps * phi) * 2 * sp.sqrt(beta) / sp.sqrt(-discriminant)
    # double eigenvalue T/2: s_k = k (T/2)^(k-1); s_0 = 0 is spelled out because T = 0 is possible
    # (beta = 0, eta h = 1), where (T/2)^(-1) is infinite.
    return sp.Piecewise((0, sp.Eq(steps, 0)), (steps * (trace_M / 2) ** (steps - 1), True))


def _by_discrete_regime(build) -> sp.Basic:
    """Apply ``build(power)``, with ``power(steps)`` M^steps on placeholders, and join the
    regimes in a Piecewise on d (elementwise for matrices)."""
    powers: dict[sp.Expr, sp.Dummy] = {}

    def power(steps: sp.Expr) -> sp.ImmutableMatrix:
        # M^k = s_{k+1} I + s_k (M - T I) (Cayley-Hamilton; equal to s_k M - beta s_{k-1} I but
        # without s_{-1} = -1/beta, which is infinite for plain SGD, beta = 0).
        steps = sp.sympify(steps)
        if steps not in powers:
            powers[steps] = sp.Dummy("s"), sp.Dummy("s_next")
        s_now, s_next = powers[steps]
        return sp.ImmutableMatrix(s_next * sp.eye(2) + s_now * (M - trace_M * sp.eye(2)))

    generic = build(power)
    conditions = discrete_regime_conditions()
    results = {}
    for name in DISCRETE_REGIMES:
        values = {}
        for steps, (s_now, s_next) in powers.items():
            values[s_now] = _lucas_s(name, steps)
            values[s_next] = _lucas_s(name, steps + 1)
        results[name] = generic.xreplace(values)
    if isinstance(generic, sp.MatrixBase):
        return sp.ImmutableMatrix(
            generic.rows,
            generic.cols,
            lambda r, c: sp.Piecewise(*((results[n][r, c], conditions[n]) for n in DISCRETE_REGIMES)),
        )
    return sp.Piecewise(*((results[n], conditions[n]) for n in DISCRETE_REGIMES))


def _global_displacement() -> sp.Piecewise:
    def build(power):
        # M^1 = s_1 M - beta s_0 I with s_1 = 1, s_0 = 0; keep M itself for the one-step factor.
        inner = (lag_weighted_geometric_sum(M, power(k), k) * P_ss)[1, 1]
        return eta**2 * (k * discrete_var_v + 2 * inner)

    return _by_discrete_regime(build)


def continuum_limit() -> dict[str, sp.ImmutableMatrix]:
    r"""Show that the SDE is the continuum limit of the recursion, symbolically.

    Scale :math:`1 - \beta = \epsilon x`, :math:`\eta h = \epsilon^2 y` and look at
    :math:`k = s/\epsilon` steps, in the per-step coordinates :math:`(a, \eta v/\epsilon)`.
    Returns ``{"discrete": lim (M' - I)/eps, "sde": lim (-A_l eta)'/eps}`` as
    :math:`\epsilon \to 0^+` (primes: in those coordinates). Both equal
    :math:`[[0, 1], [-y, -x]]`, so :math:`M^{s/\epsilon}` and :math:`e^{-A_l \eta s/\epsilon}`
    tend to the same matrix exponential: the SDE propagator is the limit of the discrete one.
    """
    from .linreg import A_mode

    scale = sp.diag(1, eta / epsilon)
    scaling = {beta: 1 - epsilon * x_sym, lam: epsilon**2 * y_sym / eta - rho}
    discrete_step = scale * M * scale.inv() - sp.eye(2)
    sde_step = scale * (-A_mode * eta) * scale.inv()

    def limit(matrix: sp.MatrixBase) -> sp.ImmutableMatrix:
        scaled = (matrix / epsilon).subs(scaling)
        return sp.ImmutableMatrix(scaled.applyfunc(lambda e: sp.limit(sp.simplify(e), epsilon, 0, "+")))

    return {"discrete": limit(discrete_step), "sde": limit(sde_step)}


__getattr__, __dir__ = lazy_attributes(
    globals(),
    {
        # M^k in closed form (Piecewise over real / complex / double eigenvalues), integer k >= 0.
        "M_power": lambda: _by_discrete_regime(lambda power: power(k)),
        # mean M^k (a0, v0); b0 is the initial velocity <v_0, q>.
        "discrete_mean": lambda: _by_discrete_regime(lambda power: power(k) * sp.ImmutableMatrix([a0, b0])),
        # Cov(z_{i+k}, z_i) = M^k P_ss at stationarity.
        "discrete_lag_covariance": lambda: _by_discrete_regime(lambda power: power(k) * P_ss),
        # Cov(v_{i+k}, v_i) / Var(v) = [M^k P_ss]_{22} / P_22.
        "discrete_velocity_correlation": lambda: _by_discrete_regime(
            lambda power: (power(k) * P_ss)[1, 1] / discrete_var_v
        ),
        # E||Delta_k||^2 for one mode, closed form in k.
        "discrete_global_displacement_mode": _global_displacement,
    },
)
