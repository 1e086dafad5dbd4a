r"""Real minibatch noise on least squares: the exact second moments of SGD with momentum.

Beyond the paper (docs/theory.md section 7). Assumption 1 takes the gradient noise independent of
:math:`\theta`; for least squares it is a quadratic function of :math:`\theta`. The recursion of
eq. (2) stays linear in :math:`(\theta, v)` with zero-mean noise whose conditional covariance is
quadratic in :math:`e = \theta - \mu`, so its first and second moments close exactly.

Conventions. Outputs :math:`c`, inputs :math:`d`, weights :math:`\theta\in\mathbb R^{c\times d}`
(flattened row-major), samples :math:`(x_i, y_i)`, :math:`i = 1..N`; residual
:math:`r_i(\theta) = \theta x_i - y_i`, per-sample gradient :math:`G_i = r_i x_i^\top`,
:math:`g = \frac1N\sum_i G_i`. In :math:`H`'s eigenbasis (:math:`\tilde x = Q^\top x`, eigenvalues
:math:`\rho_l`, :math:`h_l = \rho_l + \lambda`) a mode is :math:`p = (j, l)`: output :math:`j`,
eigenvector :math:`l`, with the section-6 step :math:`z_{k+1} = M_l z_k + G\xi_{p,k}`.

Contents (each a :class:`~ousym._derivation.Derivation` in the catalogue):

* :data:`batch_factor_without_replacement`, :data:`batch_factor_with_replacement`: the factor
  :math:`c_S` of :math:`\mathrm{Cov}(\mathrm{vec}\,g_B\mid\theta) = c_S\Sigma(\theta)`;
* :func:`noise_covariance_entry`: one entry of :math:`\Sigma(\theta)` in the eigenbasis, as a
  quadratic polynomial in :math:`e` (a finite sum over the samples);
* :data:`moment_recursion`: :math:`P_{k+1} = M P_k M^\top + GG^\top\otimes c_S E[\Sigma(\theta_k)]`;
* :data:`cross_mode_stein`: the 2x2 solution :math:`S_{lm}` of
  :math:`S = M_l S M_m^\top + GG^\top` in closed form (its diagonal is section 6);
* :data:`closure_equation`, :data:`divergence_condition`: the mode-diagonal closure and the
  condition for finite second moments.
"""

from __future__ import annotations

import itertools

import sympy as sp

from .symbols import (
    M_moment,
    N_samples,
    P_moment,
    S,
    a_mode,
    beta,
    c_S,
    closure_coupling,
    closure_source,
    eta,
    h_l,
    h_m,
    m_2r,
    m_3r,
    m_4,
    minibatch_noise_moment,
    moment_radius,
    p_mode,
    rho,
)

__all__ = [
    "h_l", "h_m", "N_samples", "c_S",
    "M_mode", "G_mode",
    "batch_factor_without_replacement", "batch_factor_with_replacement",
    "noise_covariance_entry", "enumerated_batch_covariance",
    "cross_mode_stein", "cross_mode_numerator", "cross_mode_denominator", "moment_recursion", "noise_variance_mode",
    "closure_equation", "closure_noise", "divergence_condition", "unit_var_a", "unit_var_v",
    "fourth_moment", "single_mode_edge",
]


def M_mode(curvature) -> sp.ImmutableMatrix:
    """One step of a mode's recursion, ``M = [[1 - eta h, eta beta], [-h, beta]]`` (section 6)."""
    return sp.ImmutableMatrix([[1 - eta * curvature, eta * beta], [-curvature, beta]])


#: How the minibatch noise enters a mode: G = (-eta, -1) (section 6).
G_mode = sp.ImmutableMatrix([-eta, -1])

#: Cov(vec g_B | theta) = c_S Sigma(theta) for S of N samples drawn without replacement.
batch_factor_without_replacement = (N_samples - S) / (S * (N_samples - 1))
#: ... and drawn with replacement (S independent uniform draws).
batch_factor_with_replacement = 1 / S


def noise_covariance_entry(e, xt, rbar, j, l, k, m):
    r"""One entry :math:`\Sigma_{(j,l),(k,m)}(\theta)` of the per-sample gradient covariance in
    :math:`H`'s eigenbasis, a quadratic polynomial in :math:`e = \theta - \mu`:

    .. math::
        \Sigma_{(j,l),(k,m)} = \frac1N\sum_i r_{ij} r_{ik}\,\tilde x_{il}\tilde x_{im}
        - g_{jl}\,g_{km},\qquad r_{ij} = (e\tilde x_i)_j + \bar r_{ij},\quad
        g = \frac1N\sum_i r_i\tilde x_i^\top = e\,\mathrm{diag}(\rho) + \bar g,

    (the last form when the rotated inputs have the diagonal second moment
    :math:`\mathrm{diag}(\rho)` and :math:`\mu` is the ridge solution, so that
    :math:`\bar g = -\lambda\mu`). Arguments are SymPy matrices: ``e`` :math:`(c, d)`, ``xt``
    :math:`(N, d)` (rotated inputs), ``rbar`` :math:`(N, c)` (:math:`\bar r_i = \mu x_i - y_i`);
    the entry uses the full gradient as a sum over samples, so it holds for any ``xt`` and
    any reference point :math:`\mu`.
    """
    n = xt.shape[0]
    r = [[(e * xt[i, :].T)[jj] + rbar[i, jj] for jj in range(e.shape[0])] for i in range(n)]
    g = sp.Matrix(e.shape[0], e.shape[1],
                  lambda jj, ll: sum(r[i][jj] * xt[i, ll] for i in range(n)) / n)
    return sp.expand(sum(r[i][j] * r[i][k] * xt[i, l] * xt[i, m] for i in range(n)) / n
                     - g[j, l] * g[k, m])


def enumerated_batch_covariance(values, batch_size: int, *, replacement: bool):
    """Covariance of the mean of ``batch_size`` draws from the list ``values`` (SymPy
    scalars), by enumerating every batch: all ordered draws with replacement, all subsets
    without. An independent route to :data:`batch_factor_without_replacement` (a test)."""
    n = len(values)
    if replacement:
        batches = list(itertools.product(range(n), repeat=batch_size))
    else:
        batches = list(itertools.combinations(range(n), batch_size))
    means = [sum(values[i] for i in b) / batch_size for b in batches]
    average = sum(means) / len(means)
    return sp.simplify(sum((x - average) ** 2 for x in means) / len(means))


def _solve_cross_mode_stein():
    s = sp.symbols("s_aa s_av s_va s_vv")
    unknown = sp.Matrix([[s[0], s[1]], [s[2], s[3]]])
    equations = unknown - M_mode(h_l) * unknown * M_mode(h_m).T - G_mode * G_mode.T
    solution = sp.solve(list(equations), s, dict=True)[0]
    return sp.ImmutableMatrix([[sp.factor(solution[s[0]]), sp.factor(solution[s[1]])],
                               [sp.factor(solution[s[2]]), sp.factor(solution[s[3]])]])


#: Common denominator of S_lm: (1-beta)^2 (1+beta) (h_l + h_m) + eta (beta h_l - h_m)(h_l - beta h_m).
cross_mode_denominator = ((1 - beta) ** 2 * (1 + beta) * (h_l + h_m)
                          + eta * (beta * h_l - h_m) * (h_l - beta * h_m))

#: S_lm in closed form: the solution of S = M_l S M_m^T + G G^T (2x2, rows (a, v) of mode l,
#: columns (a, v) of mode m), written over :data:`cross_mode_denominator`.
cross_mode_numerator = sp.ImmutableMatrix([
    [eta * (1 - beta ** 2), eta * (h_l - beta * h_m)],
    [eta * (h_m - beta * h_l), (1 - beta) * (h_l + h_m)],
])
cross_mode_stein = cross_mode_numerator / cross_mode_denominator


#: The closed second-moment recursion (mean m_k = 0): P_{k+1} = M P_k M^T + G G^T (x) c_S E[Sigma(theta_k)].
moment_recursion = M_moment * P_moment * M_moment.T + minibatch_noise_moment

#: One mode alone (c = d = 1): Var(g_B | theta) = c_S [(m_4 - rho^2) a^2 + 2 m_3r a + m_2r],
#: quadratic in a = theta - mu (the data moments m_4, m_3r, m_2r of ousym.symbols).
noise_variance_mode = c_S * ((m_4 - rho ** 2) * a_mode ** 2 + 2 * m_3r * a_mode + m_2r)

#: Section-6 stationary variances per unit noise variance (the diagonal of S_ll): T_a, T_v.
unit_var_a = sp.factor(cross_mode_stein[0, 0].subs(h_m, h_l))
unit_var_v = sp.factor(cross_mode_stein[1, 1].subs(h_m, h_l))

#: Noise variance of mode (j, l) under the closure: A p_j + b_j (A = c_S (K - diag rho^2)).
closure_noise = closure_coupling + closure_source
#: The mode-diagonal closure: the position variance p_jl = T_a,l (A p_j + b_j)_l.
closure_equation = sp.Eq(p_mode, unit_var_a * closure_noise, evaluate=False)

#: Second moments are finite iff the spectral radius of the stationary moment map is < 1.
divergence_condition = sp.StrictLessThan(moment_radius, 1)

#: The fourth moment m_4 = (1/N) sum_i x_i^4 of a single input (one mode, c = d = 1).
fourth_moment = m_4
#: One mode alone (c = d = 1, lambda = 0): the radius c_S (kappa - rho^2) T_a reaches 1 at
#: this eta, the noiseless edge 2(1+beta)/rho times (1-beta) rho^2 / ((1-beta) rho^2 + (1+beta) c_S (kappa - rho^2)).
single_mode_edge = (2 * (1 - beta ** 2) * rho
                    / ((1 - beta) * rho ** 2 + (1 + beta) * c_S * (fourth_moment - rho ** 2)))
