r"""SGD with momentum (eq. 2) and its underdamped Langevin model (eq. 3), for a general loss.

Eq. (2), step ``k`` to ``k + 1`` (:math:`v_0 = 0`; PyTorch's momentum buffer is :math:`-v`):

.. math::
    v_{k+1} = \beta v_k - g_B(\theta_k) - \lambda\theta_k, \qquad \theta_{k+1} = \theta_k + \eta v_{k+1}.

Eq. (3), in continuous time :math:`t = \eta k`, under Assumption 1
(:math:`g_B - g \sim N(0, \Sigma(\theta)/S)`):

.. math::
    d\begin{pmatrix}\theta\\ v\end{pmatrix} =
    \begin{pmatrix} v \\ -\frac{2}{\eta(1+\beta)}\left(g(\theta) + \lambda\theta + (1-\beta)v\right)\end{pmatrix}dt
    + \begin{pmatrix} 0 & 0 \\ 0 & \frac{2}{1+\beta}\left(\frac{\Sigma(\theta)}{\eta S}\right)^{1/2}\end{pmatrix} dW_t ,

i.e. diffusion coefficient :math:`\sqrt{2\kappa^{-1}D(\theta)}` with
:math:`D(\theta) = \mathrm{diag}(0, \frac{2(1-\beta)}{\eta(1+\beta)}\Sigma(\theta))` and
:math:`\kappa = S(1-\beta^2)`. All objects are SymPy block matrix expressions over
:math:`n \times 1` vectors and :math:`n \times n` matrices (``g(theta)``, ``Sigma(theta)`` are
matrix symbols standing for the functions evaluated at the current :math:`\theta`).
"""

from __future__ import annotations

import sympy as sp

from .symbols import H, I_n, S, Sigma, Sigma_theta, b_vec, beta, eta, g_batch, g_theta, lam, n, theta, v

__all__ = [
    "velocity_update",
    "position_update",
    "drift",
    "diffusion",
    "diffusion_matrix",
    "linear_regression_drift",
    "linear_regression_diffusion",
]

_Z = sp.ZeroMatrix(n, n)

#: Eq. (2): v_{k+1} = beta v_k - g_B(theta_k) - lambda theta_k (n x 1).
velocity_update = beta * v - (g_batch + lam * theta)
#: Eq. (2): theta_{k+1} = theta_k + eta v_{k+1} (n x 1).
position_update = theta + eta * velocity_update

#: Eq. (3), drift of z = (theta, v) (2n x 1), per unit of continuous time t = eta k.
drift = sp.BlockMatrix(
    [[v], [-2 / (eta * (1 + beta)) * (g_theta + lam * theta + (1 - beta) * v)]]
)
#: D(theta) = diag(0, 2(1 - beta) / (eta (1 + beta)) Sigma(theta)) (2n x 2n), eq. (42) for general Sigma.
diffusion_matrix = sp.BlockMatrix([[_Z, _Z], [_Z, 2 * (1 - beta) / (eta * (1 + beta)) * Sigma_theta]])
#: Eq. (3), diffusion coefficient sqrt(2 kappa^{-1} D(theta)) multiplying dW (2n x 2n).
diffusion = sp.BlockMatrix(
    [[_Z, _Z], [_Z, 2 / (1 + beta) * (Sigma_theta / (eta * S)) ** sp.Rational(1, 2)]]
)

#: Eq. (3) for least squares, g(theta) = H theta - b (eq. 4); equals -A (z - (mu, 0)) (eq. 41).
linear_regression_drift = drift.subs(g_theta, H * theta - b_vec)
#: Eq. (3) for least squares with a constant noise covariance Sigma.
linear_regression_diffusion = diffusion.subs(Sigma_theta, Sigma)
