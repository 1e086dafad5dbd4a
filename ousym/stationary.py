r"""Stationary statistics of SGD's limiting dynamics (appendix G of Kunin et al. 2023).

Per eigenmode the stationary law is :math:`N((\mu, 0), \kappa^{-1}U_l^{-1})` (eq. 27). From it:

* :math:`\mathrm{Var}_{ss}(a) = \eta\sigma^2\rho / (2S(1-\beta)h)`,
  :math:`\mathrm{Var}_{ss}(b) = \sigma^2\rho / (S(1-\beta^2))`;
* the velocity autocorrelation :math:`C(\tau) = [e^{-A_l\tau}]_{22}` at a lag time
  :math:`\tau`; a lag of ``k`` **steps** is :math:`\tau = \eta k` (appendix G.2 writes
  :math:`e^{-\gamma k}`, dropping the :math:`\eta`);
* the instantaneous speed (eq. 12) :math:`E\lVert\delta\rVert^2 = \eta^2\sum_l \mathrm{Var}_{ss}(b_l)`;
* the global displacement after ``k`` steps (eq. 13)
  :math:`E\lVert\Delta_k\rVert^2 = \eta^2\sum_l \mathrm{Var}_{ss}(b_l)\,[k + 2\sum_{j=1}^{k-1}(k-j)C_l(\eta j)]`,
  here in closed form: with :math:`E = e^{-A_l\eta}` (one step),
  :math:`\sum_{j=1}^{k-1}(k-j)E^j = E\,(E^k - kE + (k-1)I)(I-E)^{-2}` and :math:`E^k = e^{-A_l\eta k}`;
* equipartition (G.3): :math:`E_{ss}[L_\lambda(\theta)] - L_\lambda(\mu) = E_{ss}[K(v)]` with mass
  :math:`m = \eta(1+\beta)/2`.

Objects named ``*_mode`` are for one eigenmode (curvature :math:`h = \rho + \lambda`); the
summed forms replace :math:`\sum_l \rho_l` by :math:`\mathrm{tr}(H)`. Piecewise objects
(``velocity_correlation*``, ``global_displacement*``) are built on first access.
"""

from __future__ import annotations

import sympy as sp

from ._lazy import lazy_attributes
from .oscillator import by_regime
from .symbols import H, S, beta, eta, h, j, k, rho, sigma2, t, tau

__all__ = [
    "var_a_ss",
    "var_b_ss",
    "velocity_correlation",
    "velocity_correlation_steps",
    "instantaneous_speed_mode",
    "instantaneous_speed",
    "global_displacement_mode",
    "global_displacement_sum_mode",
    "global_displacement_continuous_mode",
    "lag_weighted_geometric_sum",
    "mass",
    "excess_loss_mean_mode",
    "kinetic_energy_mean_mode",
    "kinetic_energy_mean",
    "equipartition_mode",
    "equipartition",
]

#: Stationary variance of a mode's position a = <theta - mu, q>, eq. (27):
#: [kappa^{-1} U_l^{-1}]_{11} = eta sigma^2 rho / (2 S (1 - beta) h) (a test checks the derivation).
var_a_ss = eta * sigma2 * rho / (2 * S * (1 - beta) * h)
#: Stationary variance of a mode's velocity b = <v, q>, eq. (27):
#: [kappa^{-1} U_l^{-1}]_{22} = sigma^2 rho / (S (1 - beta^2)).
var_b_ss = sigma2 * rho / (S * (1 - beta**2))

#: One mode's share of the instantaneous speed, eq. (12): E[delta^2] = eta^2 Var_ss(b).
instantaneous_speed_mode = eta**2 * var_b_ss
#: Instantaneous speed, eq. (12): E||delta||^2 = eta^2 sigma^2 tr(H) / (S (1 - beta^2)).
instantaneous_speed = instantaneous_speed_mode.subs(rho, sp.Trace(H))

#: Mass of the oscillator, m = eta (1 + beta) / 2 (appendix G.3), so that K(v) = m ||v||^2 / 2.
mass = eta * (1 + beta) / 2
#: One mode's E_ss[L_lambda(theta)] - L_lambda(mu) = h Var_ss(a) / 2 (the gradient vanishes at mu).
excess_loss_mean_mode = h * var_a_ss / 2
#: One mode's E_ss[K(v)] = m Var_ss(b) / 2.
kinetic_energy_mean_mode = mass * var_b_ss / 2
#: E_ss[K(v)] summed over modes: eta sigma^2 tr(H) / (4 S (1 - beta)) (appendix G.3).
kinetic_energy_mean = eta * sigma2 * sp.Trace(H) / (4 * S * (1 - beta))

#: Equipartition for one mode (G.3): E_ss[L_lambda] - L_lambda(mu) = E_ss[K] (unevaluated Eq).
equipartition_mode = sp.Eq(excess_loss_mean_mode, kinetic_energy_mean_mode, evaluate=False)
#: Equipartition summed over modes (G.3): sum_l h_l Var_ss(a_l) / 2 = E_ss[K(v)]; a test shows
#: the per-mode left side is linear in rho, so the sum replaces rho by tr(H).
equipartition = sp.Eq(
    sp.cancel(excess_loss_mean_mode).subs(rho, sp.Trace(H)), kinetic_energy_mean, evaluate=False
)


def lag_weighted_geometric_sum(E: sp.MatrixBase, E_power_k: sp.MatrixBase, steps: sp.Expr) -> sp.Matrix:
    r"""Closed form of :math:`\sum_{j=1}^{k-1}(k-j)E^j = E\,(E^k - kE + (k-1)I)(I-E)^{-2}`.

    ``E``: a square matrix with :math:`I - E` invertible; ``E_power_k``: :math:`E^k` (passed in
    so that a closed form of the power can be used); ``steps``: ``k``. Valid for every integer
    :math:`k \ge 1`: it is the polynomial identity
    :math:`(1-x)^2\sum_{j=1}^{k-1}(k-j)x^j = x(x^k - kx + k - 1)` applied to one matrix.
    Give it small symbolic entries and substitute afterwards: SymPy's matrix algebra on large
    entries is slow.
    """
    identity = sp.eye(E.rows)
    complement = identity - E
    complement_inverse = complement.adjugate() / complement.det()
    return E * (E_power_k - steps * E + (steps - 1) * identity) * complement_inverse * complement_inverse


def _global_displacement_mode() -> sp.Piecewise:
    def build(P):
        inner = lag_weighted_geometric_sum(P(eta), P(eta * k), k)[1, 1]
        return eta**2 * var_b_ss * (k + 2 * inner)

    return by_regime(build)


def _velocity_correlation() -> sp.Piecewise:
    return by_regime(lambda P: P(tau)[1, 1])


__getattr__, __dir__ = lazy_attributes(
    globals(),
    {
        # C(tau) = [e^{-A_l tau}]_{22}, tau a continuous lag time (appendix G.2).
        "velocity_correlation": _velocity_correlation,
        # C at a lag of k steps, tau = eta k.
        "velocity_correlation_steps": lambda: by_regime(lambda P: P(eta * k)[1, 1]),
        # eq. (13), one mode, closed form in k (no Sum).
        "global_displacement_mode": _global_displacement_mode,
        # eq. (13), one mode, as printed: the (k - j)-weighted sum left as a Sum over j.
        "global_displacement_sum_mode": lambda: eta**2 * var_b_ss * (
            k + 2 * sp.Sum((k - j) * by_regime(lambda P: P(eta * j)[1, 1]), (j, 1, k - 1))
        ),
        # exact for the continuous OU process at t = eta k: 2 Var_ss(a) (1 - [e^{-A_l t}]_{11}).
        "global_displacement_continuous_mode": lambda: by_regime(
            lambda P: 2 * var_a_ss * (1 - P(eta * k)[0, 0])
        ),
    },
)
