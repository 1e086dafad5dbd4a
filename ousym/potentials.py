r"""Modified loss, conservative force and stationary current (eq. 8, 10, 11, 38-40, 44-47).

With the decomposition :math:`A = (D + Q)U` (:mod:`ousym.decomposition`) and
:math:`z^* = (\mu, 0)`:

.. math::
    \Psi(z) = \tfrac12 (z - z^*)^\top U (z - z^*), \qquad
    j(z) = -A(z - z^*) + DU(z - z^*) = -QU(z - z^*), \qquad
    J_{ss}(z) = j(z)\,p_{ss}(z), \quad p_{ss} \propto e^{-\kappa\Psi}.

:math:`\nabla\cdot j = -\mathrm{tr}(QU) = 0` and :math:`j\cdot\nabla\Psi = 0` because ``Q`` is skew
(eq. 40). The factor 1/2 makes :math:`e^{-\kappa\Psi}` exactly :math:`N(z^*, \kappa^{-1}U^{-1})`
(eq. 27); the paper states Psi "up to" such factors. For comparison, the original potential
:math:`\Phi(\theta) = (\theta - \mu)^\top(H + \lambda I)(\theta - \mu)` (eq. 44, up to a factor).

Block objects (over ``H``, ``theta``, ``v``) and one-mode objects (over the mode coordinates
``a``, ``b`` of :mod:`ousym.symbols`, curvature ``h = rho + lambda``) are both given.
"""

from __future__ import annotations

import sympy as sp

from .decomposition import Q_block, Q_mode, U_block, U_mode
from .linreg import A_mode, D_mode, kappa
from .symbols import H, I_n, a_mode, b_mode, beta, eta, lam, mu_vec, p_ss, sigma2, theta, v

__all__ = [
    "displacement",
    "modified_loss",
    "modified_loss_position",
    "modified_loss_velocity",
    "conservative_force",
    "original_potential",
    "probability_current",
    "p_ss",
    "z_mode",
    "modified_loss_mode",
    "conservative_force_mode",
    "stationary_density_mode",
    "probability_current_mode",
    "fokker_planck_current_mode",
    "original_potential_mode",
]

#: z - z* = (theta - mu, v) as a block column (2n x 1); ``mu_vec`` stands for (H + lambda I)^{-1} b.
displacement = sp.BlockMatrix([[theta - mu_vec], [v]])

#: Eq. (45): Psi_theta = (theta - mu_vec)^T [H^{-1}(H + lambda I) / (eta (1 + beta) sigma^2)] (theta - mu_vec).
modified_loss_position = (theta - mu_vec).T * (H.I * (H + lam * I_n) / (eta * (1 + beta) * sigma2)) * (theta - mu_vec)
#: Eq. (46): Psi_v = v^T H^{-1} v / (2 sigma^2).
modified_loss_velocity = v.T * H.I * v / (2 * sigma2)
#: Eq. (8): Psi(theta, v) = (z - z*)^T U (z - z*) / 2 = Psi_theta + Psi_v (1 x 1).
modified_loss = displacement.T * U_block * displacement / 2

#: Eq. (40), (47): j(theta, v) = -Q U (z - z*) (2n x 1).
conservative_force = -Q_block * U_block * displacement
#: Eq. (11): J_ss = j p_ss (2n x 1); p_ss is the value of N((mu, 0), kappa^{-1} U^{-1}) at (theta, v).
probability_current = conservative_force * p_ss
#: Eq. (44), up to a factor: Phi(theta) = (theta - mu_vec)^T (H + lambda I)(theta - mu_vec) (1 x 1).
original_potential = (theta - mu_vec).T * (H + lam * I_n) * (theta - mu_vec)

#: One mode's phase-space point (a, b) relative to z*.
z_mode = sp.ImmutableMatrix([a_mode, b_mode])
#: Psi for one mode: (a, b) U_l (a, b)^T / 2.
modified_loss_mode = sp.Add(*(U_mode[r, c] * z_mode[r] * z_mode[c] for r in range(2) for c in range(2))) / 2
#: j for one mode: -Q_l U_l (a, b).
conservative_force_mode = sp.ImmutableMatrix(-Q_mode * U_mode * z_mode)
#: Stationary density of one mode, eq. (27): kappa sqrt(det U_l) / (2 pi) exp(-kappa Psi).
stationary_density_mode = kappa * sp.sqrt(sp.factor(U_mode.det())) / (2 * sp.pi) * sp.exp(-kappa * modified_loss_mode)
#: J_ss for one mode: j p_ss.
probability_current_mode = sp.ImmutableMatrix(conservative_force_mode * stationary_density_mode)
#: The Fokker-Planck probability current of one mode at p_ss: -A_l z p_ss - kappa^{-1} D_l grad p_ss.
fokker_planck_current_mode = sp.ImmutableMatrix(
    -A_mode * z_mode * stationary_density_mode
    - D_mode * sp.Matrix([stationary_density_mode.diff(a_mode), stationary_density_mode.diff(b_mode)]) / kappa
)
#: Phi for one mode: h a^2.
original_potential_mode = (A_mode[1, 0] * eta * (1 + beta) / 2) * a_mode**2
