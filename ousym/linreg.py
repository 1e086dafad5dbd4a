r"""Linear regression under SGD with momentum as an Ornstein-Uhlenbeck process.

Eq. (4), (41)-(42) of Kunin et al. 2023: with the least-squares loss
:math:`L(\theta) = \lVert Y - X\theta\rVert^2/(2N)`, :math:`H = X^\top X/N`, :math:`b = X^\top Y/N`,
the phase-space state :math:`z = (\theta, v)` follows

.. math::
    dz = -A\,(z - (\mu, 0))\,dt + \sqrt{2\kappa^{-1} D}\,dW, \qquad \kappa = S(1-\beta^2),

in continuous time :math:`t = \eta k`. Under Assumption 5 (:math:`\Sigma = \sigma^2 H`) the
process decouples into one 2-D OU process per Hessian eigenmode, with state
:math:`(a, b) = (\langle\theta-\mu, q\rangle, \langle v, q\rangle)` and curvature
:math:`h = \rho + \lambda` (docs/theory.md section 3).

Module-level objects (all SymPy, in the symbols of :mod:`ousym.symbols`):

``kappa``      :math:`S(1-\beta^2)`, the inverse temperature (scalar).
``A_mode``     2x2 drift of one mode, :math:`A_l`.
``D_mode``     2x2 diffusion of one mode, :math:`D_l`.
``A_block``    2n x 2n drift as a ``BlockMatrix`` over ``H``.
``D_block``    2n x 2n diffusion as a ``BlockMatrix`` over ``Sigma``.
``mu``         ridge solution :math:`(H + \lambda I)^{-1} b` (n x 1 matrix expression).
"""

from __future__ import annotations

import sympy as sp

from .symbols import I_n, S, Sigma, b_vec, beta, eta, h, lam, n, rho, sigma2, H

__all__ = ["kappa", "A_mode", "D_mode", "A_block", "D_block", "mu", "mode_drift_coefficients"]

#: Inverse temperature kappa = S (1 - beta^2) (eq. 4).
kappa = S * (1 - beta**2)

#: Ridge-regression solution mu = (H + lambda I)^{-1} b, the stationary mean of theta (eq. 42).
mu = (H + lam * I_n).I * b_vec


def mode_drift_coefficients() -> tuple[sp.Expr, sp.Expr]:
    r"""The two nonzero coefficients of the mode drift, :math:`2h/(\eta(1+\beta))` and
    :math:`2(1-\beta)/(\eta(1+\beta))` (units: 1/time^2 and 1/time, time t = eta k)."""
    return 2 * h / (eta * (1 + beta)), 2 * (1 - beta) / (eta * (1 + beta))


_spring, _friction = mode_drift_coefficients()

#: Drift of one eigenmode (docs/theory.md section 3, from eq. 41 with H -> rho, lambda I -> lambda).
A_mode = sp.ImmutableMatrix([[0, -1], [_spring, _friction]])

#: Diffusion of one eigenmode under Sigma = sigma^2 H (eq. 42 with Sigma -> sigma^2 rho).
D_mode = sp.ImmutableMatrix([[0, 0], [0, 2 * (1 - beta) * sigma2 * rho / (eta * (1 + beta))]])

_Z = sp.ZeroMatrix(n, n)

#: Drift over the Hessian, eq. (41): [[0, -I], [2/(eta(1+beta)) (H + lambda I), 2(1-beta)/(eta(1+beta)) I]].
A_block = sp.BlockMatrix(
    [
        [_Z, -I_n],
        [2 / (eta * (1 + beta)) * (H + lam * I_n), 2 * (1 - beta) / (eta * (1 + beta)) * I_n],
    ]
)

#: Diffusion over the noise covariance, eq. (42): [[0, 0], [0, 2(1-beta)/(eta(1+beta)) Sigma]].
D_block = sp.BlockMatrix([[_Z, _Z], [_Z, 2 * (1 - beta) / (eta * (1 + beta)) * Sigma]])
