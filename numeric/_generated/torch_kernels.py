"""Generated torch kernels of the limiting dynamics of SGD (Kunin et al. 2023).

GENERATED, DO NOT EDIT: regenerate with `python -m ousym codegen` (make codegen).

generator: ousym.codegen 2
sympy: 1.14.0
spec hash: 01253ab0f7f7350c
source hash: 91d94461857083a5
"""

import torch

from .. import _primitives_torch as _prim

__all__ = ['damping_ratio', 'sde_mean_trajectory', 'sde_velocity_correlation', 'sde_stationary_variance', 'discrete_mean_trajectory', 'discrete_velocity_correlation', 'discrete_stationary_variance', 'minibatch_cross_mode_stein']


def damping_ratio(rho, eta, beta, lam):
    """Damping ratio zeta = gamma / omega = (1 - beta) / sqrt(2 eta (1 + beta) (rho + lam)) of
    one mode.

    Arguments, in order: rho, eta, beta, lam.
    Returns the tuple (zeta,).
    Reference: appendix F.2 of Kunin et al., The Limiting Dynamics of SGD (Neural
    Computation 2023).
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    return ((0.5)*1.4142135623730951*(1 - beta)/(torch.sqrt(eta)*torch.sqrt(beta + 1)*torch.sqrt(lam + rho)),)


def sde_mean_trajectory(rho, k, a0, b0, eta, beta, lam):
    """Mean (a, b) of one mode after k steps, exp(-A_l eta k) (a0, b0).

    Arguments, in order: rho, k, a0, b0, eta, beta, lam.
    Returns the tuple (a_k, b_k,).
    Reference: eq. (5) and appendix F.2 of Kunin et al., The Limiting Dynamics of SGD
    (Neural Computation 2023).
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    _x0 = 1/(eta*(beta + 1))
    _x1 = (0.5)*_x0*(2 - 2*beta)
    _x2 = 2*lam + 2*rho
    _x3 = _x2/(beta*eta + eta)
    _x4 = eta*k
    _x5 = _prim.damped_sinhc(_x1, _x3, _x4)
    return (_x5*b0 + a0*_prim.damped_cosh_plus(_x1, _x3, _x4), -_x0*_x2*_x5*a0 + b0*_prim.damped_cosh_minus(_x1, _x3, _x4),)


def sde_velocity_correlation(rho, k, eta, beta, lam):
    """Stationary velocity autocorrelation C(k) = [exp(-A_l eta k)]_22, C(0) = 1.

    Arguments, in order: rho, k, eta, beta, lam.
    Returns the tuple (correlation,).
    Reference: appendix G.2 of Kunin et al., The Limiting Dynamics of SGD (Neural
    Computation 2023) (lag time eta k).
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    return (_prim.damped_cosh_minus((0.5)*(2 - 2*beta)/(eta*(beta + 1)), (2*lam + 2*rho)/(beta*eta + eta), eta*k),)


def sde_stationary_variance(rho, eta, beta, lam, S, sigma2):
    """Stationary variances of a mode's position a and velocity v.

    Arguments, in order: rho, eta, beta, lam, S, sigma2.
    Returns the tuple (var_a, var_v,).
    Reference: eq. (27) of Kunin et al., The Limiting Dynamics of SGD (Neural Computation
    2023).
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    _x0 = sigma2/S
    return (-0.5*_x0*eta*_prim.spectral_fraction(rho, lam)/(beta - 1), _x0*rho/(1 - torch.pow(beta, 2)),)


def discrete_mean_trajectory(rho, k, a0, b0, eta, beta, lam):
    """Mean (a, v) of one mode after k whole SGD steps, M^k (a0, v0).

    Arguments, in order: rho, k, a0, b0, eta, beta, lam.
    Returns the tuple (a_k, v_k,).
    Reference: docs/theory.md section 6 (exact SGD recursion): M^k (a0, v0).
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    _x0 = lam + rho
    _x1 = _x0*eta
    _x2 = _prim.momentum_power_s(_x1, beta, k)
    return (_x2*b0*beta*eta + a0*_prim.momentum_power_aa(_x1, beta, k), -_x0*_x2*a0 + b0*_prim.momentum_power_vv(_x1, beta, k),)


def discrete_velocity_correlation(rho, k, eta, beta, lam):
    """Stationary velocity autocorrelation of the SGD recursion at a lag of k whole steps, C(0)
    = 1.

    Arguments, in order: rho, k, eta, beta, lam.
    Returns the tuple (correlation,).
    Reference: docs/theory.md section 6 (exact SGD recursion): [M^k P]_vv / P_vv.
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    _x0 = lam + rho
    _x1 = _x0*eta
    return (-0.5*_x0*eta*_prim.momentum_power_s(_x1, beta, k) + _prim.momentum_power_vv(_x1, beta, k),)


def discrete_stationary_variance(rho, eta, beta, lam, S, sigma2):
    """Stationary variances of a mode's position a and velocity v under the exact recursion
    (stable modes, 0 < eta (rho + lam) < 2 (1 + beta)).

    Arguments, in order: rho, eta, beta, lam, S, sigma2.
    Returns the tuple (var_a, var_v,).
    Reference: docs/theory.md section 6 (exact SGD recursion): P = M P M^T + G G^T sigma^2
    rho / S.
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    _x0 = beta - 1
    _x1 = 2*beta + 2
    _x2 = sigma2/S
    return (-_x2*eta*(beta + 1)*_prim.spectral_fraction(rho, lam)/(_x0*(_x1 - eta*lam - eta*rho)), -2*_x2*rho/(_x0*(_x1 - eta*(lam + rho))),)


def minibatch_cross_mode_stein(h_l, h_m, eta, beta):
    """Solution S_lm of the 2x2 Stein equation S = M_l S M_m^T + G G^T of a pair of modes with
    curvatures h_l, h_m (rows: a, v of mode l; columns: a, v of mode m); its diagonal h_l =
    h_m is the section-6 stationary covariance per unit noise variance.

    Arguments, in order: h_l, h_m, eta, beta.
    Returns the tuple (s_aa, s_av, s_va, s_vv,).
    Reference: docs/theory.md section 7 (real minibatch noise): S = M_l S M_m^T + G G^T.
    Backend: torch; arguments must already be broadcastable arrays of one dtype (and
    device).
    """
    _x0 = h_l + h_m
    _x1 = 1 - beta
    _x2 = beta*h_l - h_m
    _x3 = eta*(-beta*h_m + h_l)
    _x4 = torch.pow(_x0*torch.pow(_x1, 2)*(beta + 1) + _x2*_x3, -1)
    _x5 = _x4*eta
    return (_x5*(1 - torch.pow(beta, 2)), _x3*_x4, -_x2*_x5, _x0*_x1*_x4,)
