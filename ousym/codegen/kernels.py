r"""The project's kernel specs: the closed forms of :mod:`ousym`, made regime-uniform.

Each spec is built from the derivation modules' expressions (never retyped):

* the propagator :math:`e^{-A_l t}` from the mode drift ``ousym.linreg.A_mode`` by
  :func:`ousym.uniform.uniform_propagator`, at :math:`t = \eta k` (``ousym.symbols.t_of_k``);
* the stationary variances ``ousym.stationary.var_a_ss`` / ``var_b_ss`` (eq. 27), with the
  removable :math:`\rho/(\rho+\lambda)` made explicit by
  :func:`ousym.uniform.split_spectral_fraction`;
* the damping ratio ``ousym.oscillator.zeta`` (appendix F.2);
* the discrete model from ``ousym.discrete`` (``M``, ``P_ss``, ``discrete_var_a``,
  ``discrete_var_v``; docs/theory.md section 6) by :func:`ousym.uniform.uniform_matrix_power`.

The tests in ``tests/codegen`` prove every output equal to the three-regime forms.
"""

from __future__ import annotations

import sympy as sp

from ..symbols import S, a0, b0, beta, eta, h, k, lam, rho, sigma2, t_of_k
from ..uniform import split_spectral_fraction, uniform_matrix_power, uniform_propagator
from .spec import KernelSpec

__all__ = ["ARGUMENT_SYMBOLS", "kernel_specs", "sde_specs", "discrete_specs", "minibatch_specs"]

#: The Python name of each argument of the public kernels and the symbol it stands for.
ARGUMENT_SYMBOLS = {
    "rho": rho, "k": k, "a0": a0, "b0": b0, "eta": eta, "beta": beta, "lam": lam,
    "S": S, "sigma2": sigma2,
}

_PAPER = "Kunin et al., The Limiting Dynamics of SGD (Neural Computation 2023)"


def _arguments(*names: str) -> tuple[tuple[str, sp.Symbol], ...]:
    return tuple((name, ARGUMENT_SYMBOLS[name]) for name in names)


def sde_specs() -> list[KernelSpec]:
    """Kernels of the paper's underdamped Langevin model (eq. 3; time t = eta k)."""
    from ..linreg import A_mode
    from ..oscillator import zeta
    from ..stationary import var_a_ss, var_b_ss

    propagator = uniform_propagator(A_mode, t_of_k)
    mean = propagator * sp.Matrix([a0, b0])
    return [
        KernelSpec(
            name="damping_ratio",
            arguments=_arguments("rho", "eta", "beta", "lam"),
            outputs=[("zeta", zeta)],
            reference=f"appendix F.2 of {_PAPER}",
            description="Damping ratio zeta = gamma / omega = (1 - beta) / sqrt(2 eta (1 + beta) "
                        "(rho + lam)) of one mode.",
        ),
        KernelSpec(
            name="sde_mean_trajectory",
            arguments=_arguments("rho", "k", "a0", "b0", "eta", "beta", "lam"),
            outputs=[("a_k", mean[0]), ("b_k", mean[1])],
            reference=f"eq. (5) and appendix F.2 of {_PAPER}",
            description="Mean (a, b) of one mode after k steps, exp(-A_l eta k) (a0, b0).",
        ),
        KernelSpec(
            name="sde_velocity_correlation",
            arguments=_arguments("rho", "k", "eta", "beta", "lam"),
            outputs=[("correlation", propagator[1, 1])],
            reference=f"appendix G.2 of {_PAPER} (lag time eta k)",
            description="Stationary velocity autocorrelation C(k) = [exp(-A_l eta k)]_22, C(0) = 1.",
        ),
        KernelSpec(
            name="sde_stationary_variance",
            arguments=_arguments("rho", "eta", "beta", "lam", "S", "sigma2"),
            outputs=[("var_a", split_spectral_fraction(var_a_ss, rho, lam)), ("var_v", var_b_ss)],
            reference=f"eq. (27) of {_PAPER}",
            description="Stationary variances of a mode's position a and velocity v.",
        ),
    ]


def discrete_specs() -> list[KernelSpec]:
    """Kernels of the exact discrete recursion (docs/theory.md section 6; k whole steps)."""
    from ..discrete import M, P_ss, discrete_var_a, discrete_var_v

    power = uniform_matrix_power(M, k, x=eta * h, beta=beta)
    mean = power * sp.Matrix([a0, b0])
    # Cov(v_{i+k}, v_i) = [M^k P]_vv, normalised by P_vv
    cross_ratio = sp.factor(sp.cancel(P_ss[0, 1] / P_ss[1, 1]))
    correlation = power[1, 0] * cross_ratio + power[1, 1]
    return [
        KernelSpec(
            name="discrete_mean_trajectory",
            arguments=_arguments("rho", "k", "a0", "b0", "eta", "beta", "lam"),
            outputs=[("a_k", mean[0]), ("v_k", mean[1])],
            reference="docs/theory.md section 6 (exact SGD recursion): M^k (a0, v0)",
            description="Mean (a, v) of one mode after k whole SGD steps, M^k (a0, v0).",
        ),
        KernelSpec(
            name="discrete_velocity_correlation",
            arguments=_arguments("rho", "k", "eta", "beta", "lam"),
            outputs=[("correlation", correlation)],
            reference="docs/theory.md section 6 (exact SGD recursion): [M^k P]_vv / P_vv",
            description="Stationary velocity autocorrelation of the SGD recursion at a lag of "
                        "k whole steps, C(0) = 1.",
        ),
        KernelSpec(
            name="discrete_stationary_variance",
            arguments=_arguments("rho", "eta", "beta", "lam", "S", "sigma2"),
            outputs=[("var_a", split_spectral_fraction(discrete_var_a, rho, lam)),
                     ("var_v", discrete_var_v)],
            reference="docs/theory.md section 6 (exact SGD recursion): P = M P M^T + G G^T sigma^2 rho / S",
            description="Stationary variances of a mode's position a and velocity v under the "
                        "exact recursion (stable modes, 0 < eta (rho + lam) < 2 (1 + beta)).",
        ),
    ]


def minibatch_specs() -> list[KernelSpec]:
    """The cross-mode Stein solution S_lm of real minibatch noise (docs/theory.md section 7)."""
    from ..minibatch import cross_mode_stein, h_l, h_m

    return [
        KernelSpec(
            name="minibatch_cross_mode_stein",
            arguments=(("h_l", h_l), ("h_m", h_m), ("eta", eta), ("beta", beta)),
            outputs=[("s_aa", cross_mode_stein[0, 0]), ("s_av", cross_mode_stein[0, 1]),
                     ("s_va", cross_mode_stein[1, 0]), ("s_vv", cross_mode_stein[1, 1])],
            reference="docs/theory.md section 7 (real minibatch noise): S = M_l S M_m^T + G G^T",
            description="Solution S_lm of the 2x2 Stein equation S = M_l S M_m^T + G G^T of a "
                        "pair of modes with curvatures h_l, h_m (rows: a, v of mode l; columns: "
                        "a, v of mode m); its diagonal h_l = h_m is the section-6 stationary "
                        "covariance per unit noise variance.",
        ),
    ]


def kernel_specs() -> list[KernelSpec]:
    """Every generated kernel, in the order of the generated modules."""
    return sde_specs() + discrete_specs() + minibatch_specs()
