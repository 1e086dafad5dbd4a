"""The catalogue of every derivation, in reading order: :func:`expressions`."""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Mapping

import sympy as sp

from ._derivation import Derivation
from .symbols import (
    H,
    S,
    a0,
    a_mode,
    b_mode,
    b0,
    beta,
    epsilon,
    eta,
    gamma_sym,
    h_sym,
    k,
    lam,
    mu_vec,
    n,
    omega_sym,
    rho,
    sigma2,
    t,
    tau,
    theta,
    v,
    x_sym,
    xi,
    y_sym,
)

__all__ = ["expressions"]


def _name(latex: str) -> sp.Symbol:
    """A symbol used only as a printed left-hand side."""
    return sp.Symbol(latex)


def _mat(latex: str, rows=2, cols=2) -> sp.MatrixSymbol:
    return sp.MatrixSymbol(latex, rows, cols)


def _h(expression):
    """Print the mode curvature rho + lambda as h (display only)."""
    return expression.subs(lam, h_sym - rho)


@functools.cache
def _build() -> Mapping[str, Derivation]:
    from . import decomposition as dec
    from . import discrete as dis
    from . import langevin as lan
    from . import linreg as lin
    from . import oscillator as osc
    from . import potentials as pot
    from . import stationary as sta

    c, s = sp.symbols("c s")
    oscillator_where = (
        (gamma_sym, _h(osc.gamma)),
        (omega_sym**2, _h(osc.omega2)),
        *osc.readable_cs(),
    )
    P_readable = osc.propagator_from(c, s, damping=gamma_sym, frequency2=omega_sym**2)
    E_one_step = _mat("E")
    I2 = sp.Identity(2)
    items: list[Derivation] = []
    add = items.append

    # --- section 4 of the paper: SGD and its SDE ----------------------------------------------
    add(Derivation(
        name="time_units", lhs=t, rhs=eta * k, reference="Assumption 2",
        description=r"SDE time of step $k$: $t = \eta k$ (every continuous-time result is evaluated at $t = \eta k$)",
    ))
    add(Derivation(
        name="sgd_update", lhs=sp.BlockMatrix([[_mat("v_{k+1}", n, 1)], [_mat(r"\theta_{k+1}", n, 1)]]),
        rhs=sp.BlockMatrix([[lan.velocity_update], [lan.position_update]]), reference="eq. (2)",
        description=r"one step of SGD with momentum $\beta$, weight decay $\lambda$ and minibatch gradient $g_B$",
    ))
    add(Derivation(
        name="drift", lhs=_mat(r"f(\theta, v)", 2 * n, 1), rhs=lan.drift, reference="eq. (3)",
        description=r"drift of the underdamped Langevin model of SGD, per unit of $t = \eta k$",
    ))
    add(Derivation(
        name="diffusion", lhs=_mat(r"\sqrt{2 \kappa^{-1} D(\theta)}", 2 * n, 2 * n), rhs=lan.diffusion,
        reference="eq. (3)", description=r"diffusion coefficient multiplying $dW$ in the Langevin model",
    ))
    add(Derivation(
        name="kappa", lhs=sp.Symbol("kappa"), rhs=lin.kappa, reference="eq. (4)",
        description=r"inverse temperature of the OU process",
    ))
    add(Derivation(
        name="mu", lhs=mu_vec, rhs=lin.mu, reference="eq. (42)",
        description=r"ridge-regression solution, the stationary mean of $\theta$",
    ))
    add(Derivation(
        name="drift_matrix", lhs=_mat("A", 2 * n, 2 * n), rhs=lin.A_block, reference="eq. (41)",
        description=r"OU drift matrix of linear regression over the Hessian $H$",
    ))
    add(Derivation(
        name="diffusion_matrix", lhs=_mat("D", 2 * n, 2 * n), rhs=lin.D_block, reference="eq. (42)",
        description=r"OU diffusion matrix of linear regression over the noise covariance $\Sigma$",
    ))
    add(Derivation(
        name="linear_regression_drift", lhs=_mat(r"f(\theta, v)", 2 * n, 1),
        rhs=lan.linear_regression_drift, reference="eq. (4), (41)",
        description=r"the Langevin drift with $g(\theta) = H\theta - b$; equals $-A(z - z^\ast)$ with $z^\ast = (\mu, 0)$",
    ))
    add(Derivation(
        name="drift_matrix_mode", lhs=_mat("A_l"), rhs=lin.A_mode, display=_h(lin.A_mode),
        reference="appendix F.2", description=r"drift of one Hessian eigenmode, $h = \rho + \lambda$",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="diffusion_matrix_mode", lhs=_mat("D_l"), rhs=lin.D_mode, reference="appendix F.2",
        description=r"diffusion of one eigenmode under $\Sigma = \sigma^2 H$",
    ))

    # --- the decomposition A = (D + Q) U --------------------------------------------------------
    add(Derivation(
        name="Q", lhs=_mat("Q", 2 * n, 2 * n), rhs=dec.Q_block, reference="eq. (43)",
        description=r"skew-symmetric part of $A = (D + Q)U$ for SGD under $\Sigma = \sigma^2 H$",
    ))
    add(Derivation(
        name="U", lhs=_mat("U", 2 * n, 2 * n), rhs=dec.U_block, reference="eq. (43)",
        description=r"symmetric part of $A = (D + Q)U$ for SGD under $\Sigma = \sigma^2 H$",
    ))
    add(Derivation(
        name="Q_mode", lhs=_mat("Q_l"), rhs=dec.Q_mode, reference="eq. (43)",
        description=r"$Q$ for one eigenmode",
    ))
    add(Derivation(
        name="U_mode", lhs=_mat("U_l"), rhs=dec.U_mode, display=_h(dec.U_mode), reference="eq. (43)",
        description=r"$U$ for one eigenmode", where=((h_sym, rho + lam),),
    ))
    lyapunov = (lin.A_mode * dec.U_mode.inv() + dec.U_mode.inv() * lin.A_mode.T).applyfunc(sp.simplify)
    add(Derivation(
        name="lyapunov", lhs=_mat("A_l") * _mat("U_l") ** -1 + _mat("U_l") ** -1 * _mat("A_l").T,
        rhs=sp.ImmutableMatrix(lyapunov), reference="eq. (19)",
        description=r"$B = U^{-1}$ solves the Lyapunov equation $AB + BA^T = 2D$ (one mode)",
    ))
    stationary = sp.diag(sta.var_a_ss, sta.var_b_ss)
    add(Derivation(
        name="stationary_covariance", lhs=_name(r"\kappa^{-1} U_l^{-1}"), rhs=sp.ImmutableMatrix(stationary),
        display=_h(sp.ImmutableMatrix(stationary)), reference="eq. (27)",
        description=r"stationary covariance of a mode's $(a, b) = (\langle\theta - \mu, q\rangle, \langle v, q\rangle)$",
        where=((h_sym, rho + lam),),
    ))

    # --- modified loss and currents --------------------------------------------------------------
    add(Derivation(
        name="modified_loss", lhs=_name(r"\Psi(\theta, v)"), rhs=pot.modified_loss,
        display=pot.modified_loss_position + pot.modified_loss_velocity,
        reference="eq. (8), (10), (45), (46)",
        description=r"modified loss $\Psi = \tfrac12 (z - z^\ast)^T U (z - z^\ast)$, with $p_{ss} \propto e^{-\kappa\Psi}$",
        where=((mu_vec, lin.mu),),
    ))
    add(Derivation(
        name="modified_loss_mode", lhs=_name(r"\Psi_{l}(a, b)"), rhs=pot.modified_loss_mode,
        display=_h(pot.modified_loss_mode), reference="eq. (8)",
        description=r"modified loss of one eigenmode", where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="conservative_force", lhs=_mat(r"j(\theta, v)", 2 * n, 1), rhs=pot.conservative_force,
        reference="eq. (40), (47)", description=r"force $j = -QU(z - z^\ast)$: divergence-free and orthogonal to $\nabla\Psi$",
        where=((mu_vec, lin.mu),),
    ))
    add(Derivation(
        name="probability_current", lhs=_mat(r"J_{ss}(\theta, v)", 2 * n, 1), rhs=pot.probability_current,
        reference="eq. (11), (47)", description=r"stationary probability current $J_{ss} = j\,p_{ss}$ (broken detailed balance)",
        where=((mu_vec, lin.mu),),
    ))
    add(Derivation(
        name="probability_current_mode", lhs=_mat(r"J_{ss}(a, b)", 2, 1), rhs=pot.probability_current_mode,
        display=_h(pot.conservative_force_mode) * _name(r"p_{ss}(a, b)"),
        where=((_name(r"p_{ss}(a, b)"), _h(pot.stationary_density_mode)), (h_sym, rho + lam)),
        reference="eq. (11), (47)", description=r"stationary probability current of one eigenmode",
    ))
    add(Derivation(
        name="original_potential", lhs=_name(r"\Phi(\theta)"), rhs=pot.original_potential,
        reference="eq. (44)", description=r"the regularized least-squares potential, for comparison with $\Psi$",
        where=((mu_vec, lin.mu),),
    ))

    # --- the damped oscillator ------------------------------------------------------------------
    add(Derivation(
        name="damping_rate", lhs=gamma_sym, rhs=osc.gamma, reference="appendix F.2",
        description=r"damping rate $\gamma$ of every mode, per unit of $t = \eta k$",
    ))
    add(Derivation(
        name="natural_frequency", lhs=omega_sym**2, rhs=osc.omega2, display=_h(osc.omega2),
        reference="appendix F.2", description=r"squared natural frequency of a mode, per unit of $t^2$",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="damping_ratio", lhs=sp.Symbol("zeta"), rhs=osc.zeta,
        display=sp.Mul(1 - beta, sp.Pow(sp.sqrt(sp.Mul(2, eta, 1 + beta, h_sym, evaluate=False), evaluate=False),
                                        -1, evaluate=False), evaluate=False),
        reference="appendix F.2",
        description=r"damping ratio $\gamma/\omega$: $\zeta > 1$ overdamped, $\zeta = 1$ critical, $\zeta < 1$ underdamped",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="propagator", lhs=_name(r"e^{-A_l t}"), rhs=osc.propagator, display=P_readable,
        reference="appendix F.2", description=r"propagator of one mode over continuous time $t = \eta k$, three regimes",
        where=oscillator_where,
    ))
    add(Derivation(
        name="mean_position", lhs=_name("a(t)"), rhs=osc.mean_position,
        display=(P_readable * sp.Matrix([a0, b0]))[0], reference="appendix F.2",
        description=r"mean of a mode's position $\langle\theta - \mu, q\rangle$ at $t = \eta k$, from $a(0) = a_0$, $b(0) = b_0$",
        where=oscillator_where,
    ))
    add(Derivation(
        name="mean_velocity", lhs=_name("b(t)"), rhs=osc.mean_velocity,
        display=(P_readable * sp.Matrix([a0, b0]))[1], reference="appendix F.2",
        description=r"mean of a mode's velocity $\langle v, q\rangle$ at $t = \eta k$, from $a(0) = a_0$, $b(0) = b_0$",
        where=oscillator_where,
    ))
    stationary_symbol = _mat(r"\kappa^{-1} U_l^{-1}")
    add(Derivation(
        name="transient_covariance", lhs=_name(r"\mathrm{Cov}_t(a, b)"), rhs=osc.transient_covariance,
        display=stationary_symbol - _mat(r"e^{-A_l t}") * stationary_symbol * _mat(r"e^{-A_l t}").T,
        reference="eq. (26)", description=r"covariance of a mode at $t = \eta k$ started from a point",
        where=((stationary_symbol, _h(sp.ImmutableMatrix(stationary))), (h_sym, rho + lam)),
    ))

    # --- stationary statistics -------------------------------------------------------------------
    C_readable = sp.exp(-gamma_sym * tau) * (c - gamma_sym * s)
    add(Derivation(
        name="velocity_correlation", lhs=_name(r"C(\tau)"), rhs=sta.velocity_correlation,
        display=C_readable, reference="appendix G.2",
        description=r"stationary velocity autocorrelation of a mode at lag time $\tau$; a lag of $k$ steps is $\tau = \eta k$",
        where=tuple((sym, d.subs(t, tau)) for sym, d in oscillator_where),
    ))
    add(Derivation(
        name="velocity_correlation_steps", lhs=_name("C(\\eta k)"), rhs=sta.velocity_correlation_steps,
        display=C_readable.subs(tau, eta * k), where=tuple((sym, d.subs(t, eta * k)) for sym, d in oscillator_where),
        reference="appendix G.2", description=r"$C$ at a lag of $k$ steps (the paper's $e^{-\gamma k}$ drops the $\eta$)",
    ))
    add(Derivation(
        name="instantaneous_speed", lhs=_name(r"\mathbb{E}_{ss}\lVert\delta_k\rVert^{2}"),
        rhs=sta.instantaneous_speed, reference="eq. (12)",
        description=r"expected squared step length at stationarity, $\delta_k = \theta_k - \theta_{k-1}$",
    ))
    E_k = _mat("E") ** k
    add(Derivation(
        name="global_displacement", lhs=_name(r"\mathbb{E}_{ss}\lVert\Delta_k\rVert^{2}_{l}"),
        rhs=sta.global_displacement_mode,
        display=eta**2 * _h(sta.var_b_ss) * (k + 2 * sp.Indexed(sp.IndexedBase(
            sp.Symbol(r"\left[E (E^{k} - k E + (k-1) I)(I - E)^{-2}\right]")), 2, 2)),
        reference="eq. (13)",
        description=r"one mode's share of $\mathbb{E}\lVert\theta_k - \theta_0\rVert^2$ after $k$ steps, closed form of the $(k - j)$-weighted sum",
        where=((E_one_step, _name(r"e^{-A_l \eta}")), (E_k, _name(r"e^{-A_l \eta k}")), (h_sym, rho + lam)),
    ))
    add(Derivation(
        name="global_displacement_sum", lhs=_name(r"\mathbb{E}_{ss}\lVert\Delta_k\rVert^{2}_{l}"),
        rhs=sta.global_displacement_sum_mode,
        display=eta**2 * _h(sta.var_b_ss) * (k + 2 * sp.Sum((k - sp.Symbol("j")) * sp.Function("C")(eta * sp.Symbol("j")), (sp.Symbol("j"), 1, k - 1))),
        reference="eq. (13)", description=r"eq. (13) for one mode with the $(k - j)$-weighted sum over lags written out",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="global_displacement_continuous", lhs=_name(r"\mathbb{E}\lVert\theta(\eta k) - \theta(0)\rVert^{2}_{l}"),
        rhs=sta.global_displacement_continuous_mode,
        display=2 * _h(sta.var_a_ss) * (1 - sp.Symbol(r"\left[e^{-A_l \eta k}\right]_{11}")),
        reference="appendix G",
        description=r"exact displacement of the continuous OU process at $t = \eta k$ (second route to eq. 13)",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="equipartition", lhs=None, rhs=sta.equipartition,
        display=sp.Eq(
            _name(r"\mathbb{E}_{ss}[L_\lambda(\theta)] - L_\lambda(\mu)"),
            sp.Eq(_name(r"\mathbb{E}_{ss}[K(v)]"), sta.kinetic_energy_mean, evaluate=False), evaluate=False),
        reference="appendix G.3",
        description=r"equipartition: mean excess loss equals mean kinetic energy $K = m\lVert v\rVert^2/2$, $m = \eta(1 + \beta)/2$",
    ))

    # --- exact discrete-time theory (docs/theory.md section 6) -------------------------------------------
    z_next, z_now = _mat("z_{k+1}", 2, 1), _mat("z_k", 2, 1)
    add(Derivation(
        name="discrete_recursion", lhs=z_next,
        rhs=sp.ImmutableMatrix(dis.M * sp.Matrix([a_mode, b_mode]) + dis.G * xi),
        display=sp.MatAdd(_mat("M") * z_now, _mat("G", 2, 1) * xi),
        reference="beyond the paper: docs/theory.md section 6", description=r"exact per-mode recursion of SGD on linear regression, $z = (a, v)$, step $k$",
        where=((_mat("M"), _h(dis.M)), (_mat("G", 2, 1), dis.G), (h_sym, rho + lam)),
    ))
    add(Derivation(
        name="discrete_stability", lhs=None, rhs=dis.stability_condition,
        display=_name(r"0 < \eta h < 2 (1 + \beta)"), where=((h_sym, rho + lam),),
        reference="beyond the paper: docs/theory.md section 6",
        description=r"the recursion is stable if and only if $0 < \eta h < 2(1 + \beta)$",
    ))
    add(Derivation(
        name="discrete_stationary_covariance", lhs=_mat("P"), rhs=dis.P_ss, display=_h(dis.P_ss),
        reference="beyond the paper: docs/theory.md section 6", description=r"exact stationary covariance of $(a, v)$, solving $P = MPM^T + GG^T\sigma^2\rho/S$",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="discrete_velocity_variance", lhs=_name(r"\mathrm{Var}_{ss}(v)"), rhs=dis.discrete_var_v,
        display=_h(dis.discrete_var_v), reference="beyond the paper: docs/theory.md section 6",
        description=r"exact stationary velocity variance of a mode", where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="discrete_position_variance", lhs=_name(r"\mathrm{Var}_{ss}(a)"), rhs=dis.discrete_var_a,
        display=_h(dis.discrete_var_a), reference="beyond the paper: docs/theory.md section 6",
        description=r"exact stationary position variance of a mode", where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="discrete_variance_ratio", lhs=_name(r"\mathrm{Var}^{\mathrm{exact}}_{ss} / \mathrm{Var}^{\mathrm{SDE}}_{ss}"),
        rhs=dis.stationary_variance_ratio, display=_h(dis.stationary_variance_ratio), reference="beyond the paper: docs/theory.md section 6",
        description=r"exact over SDE stationary variances ($a$ and $v$): $1 + O(\eta h)$, diverging at the stability edge",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="discrete_lag_covariance", lhs=_name(r"\mathrm{Cov}(z_{i+k}, z_i)"), rhs=dis.discrete_lag_covariance,
        display=_mat("M") ** k * _mat("P"), reference="beyond the paper: docs/theory.md section 6",
        description=r"exact stationary lag-$k$ covariance $M^k P$ (integer $k$), $M^k$ in closed form",
        where=((_mat("M") ** k, _name(r"s_{k+1} I + s_k (M - T I),\ s_k = \frac{\mu_+^k - \mu_-^k}{\mu_+ - \mu_-},\ \mu_\pm = \frac{T \pm \sqrt{T^2 - 4\beta}}{2},\ T = 1 + \beta - \eta h")),),
    ))
    add(Derivation(
        name="discrete_mean", lhs=_name(r"\mathbb{E}\,z_k"), rhs=dis.discrete_mean,
        display=_mat("M") ** k * sp.Matrix([a0, b0]), reference="beyond the paper: docs/theory.md section 6",
        description=r"exact mean of $(a, v)$ after $k$ steps from $(a_0, b_0)$",
    ))
    add(Derivation(
        name="discrete_instantaneous_speed", lhs=_name(r"\mathbb{E}_{ss}\,\delta_{k,l}^{2}"),
        rhs=dis.discrete_instantaneous_speed_mode, display=_h(dis.discrete_instantaneous_speed_mode),
        reference="beyond the paper: docs/theory.md section 6", description=r"exact stationary squared step of one mode (exact eq. 12)",
        where=((h_sym, rho + lam),),
    ))
    add(Derivation(
        name="discrete_global_displacement", lhs=_name(r"\mathbb{E}_{ss}\lVert\Delta_k\rVert^{2}_{l}"),
        rhs=dis.discrete_global_displacement_mode,
        display=eta**2 * (k * _name(r"P_{22}") + 2 * _name(r"\left[M (M^{k} - k M + (k-1) I)(I - M)^{-2} P\right]_{22}")),
        reference="beyond the paper: docs/theory.md section 6", description=r"exact one-mode $\mathbb{E}\lVert\theta_k - \theta_0\rVert^2$ after $k$ steps (exact eq. 13), closed form",
    ))
    limits = dis.continuum_limit()
    add(Derivation(
        name="continuum_limit", lhs=None,
        rhs=sp.Eq(limits["discrete"], limits["sde"], evaluate=False),
        display=sp.Eq(_name(r"\lim_{\epsilon\to 0^{+}} \epsilon^{-1}(M' - I)"), sp.Eq(
            _name(r"\lim_{\epsilon\to 0^{+}} \epsilon^{-1}(-\eta A_l)'"), limits["sde"], evaluate=False), evaluate=False),
        reference="beyond the paper: docs/theory.md section 6",
        description=r"with $1 - \beta = \epsilon x$ and $\eta h = \epsilon^2 y$, the recursion's generator tends to the SDE's (per step)",
        where=((x_sym, (1 - beta) / epsilon), (y_sym, eta * h_sym / epsilon**2)),
    ))
    # --- real minibatch noise (docs/theory.md section 7) ------------------------------------
    from . import minibatch as mbn

    section7 = "beyond the paper: docs/theory.md section 7"
    add(Derivation(
        name="minibatch_batch_factor", lhs=mbn.c_S, rhs=mbn.batch_factor_without_replacement,
        reference=section7,
        description=r"factor $c_S$ in $\mathrm{Cov}(\mathrm{vec}\,g_B\mid\theta) = c_S\Sigma(\theta)$ for $S$ of $N$ samples drawn without replacement ($c_S = 1/S$ with replacement)",
    ))
    add(Derivation(
        name="minibatch_noise_variance", lhs=_name(r"\mathrm{Var}(g_B \mid \theta)"),
        rhs=mbn.noise_variance_mode, reference=section7,
        description=r"real minibatch noise of one mode, quadratic in $a = \theta - \mu$ ($m_4$, $m_{3r}$, $m_{2r}$: moments of the data and of the residuals at $\mu$)",
    ))
    add(Derivation(
        name="minibatch_moment_recursion", lhs=_mat("P_{k+1}", 2 * n, 2 * n),
        rhs=mbn.moment_recursion, reference=section7,
        description=r"closed recursion of the second moments of $(\theta_k - \mu, v_k)$, exact because the noise's conditional covariance is quadratic in $\theta$",
    ))
    add(Derivation(
        name="minibatch_cross_mode_stein", lhs=_mat("S_{lm}"), rhs=mbn.cross_mode_stein,
        display=sp.MatMul(1 / _name("D_{lm}"), mbn.cross_mode_numerator, evaluate=False),
        where=((_name("D_{lm}"), mbn.cross_mode_denominator),), reference=section7,
        description=r"solution of $S = M_l S M_m^\top + GG^\top$ for two modes; the stationary covariance of modes $p = (j, l)$, $q = (k, m)$ is $\Xi_{pq} S_{lm}$",
    ))
    add(Derivation(
        name="minibatch_closure", lhs=None, rhs=mbn.closure_equation, reference=section7,
        description=r"mode-diagonal closure: position variance of mode $(j, l)$ from the section-6 variance per unit noise and the noise $A p_j + b_j$, $A = c_S(K - \mathrm{diag}\,\rho^2)$",
    ))
    add(Derivation(
        name="minibatch_divergence_condition", lhs=None, rhs=mbn.divergence_condition,
        reference=section7,
        description=r"second moments are finite if and only if the spectral radius $\varrho$ of the stationary moment map is below 1",
    ))
    add(Derivation(
        name="minibatch_single_mode_edge", lhs=_name(r"\eta_{\mathrm{edge}}"),
        rhs=mbn.single_mode_edge, reference=section7,
        description=r"one mode alone: the learning rate where $\varrho = 1$, inside the noiseless edge $2(1 + \beta)/\rho$",
    ))
    return MappingProxyType({item.name: item for item in items})


def expressions() -> Mapping[str, Derivation]:
    """Every derivation of the theory, in reading order: an ordered read-only mapping
    ``name -> Derivation`` (name, derived SymPy object, paper reference, one-line description).

    Built on first call (about a second) and cached. Each value renders as LaTeX in Jupyter.
    """
    return _build()
