r"""Regime-uniform forms of the closed-form theory: one symbol per NaN-safe primitive.

The textbook forms of a mode's propagator (appendix F.2 of Kunin et al. 2023; docs/theory.md section
4) switch between three regimes on the discriminant :math:`\Delta = \gamma^2 - \omega^2`, and
each regime form is singular or overflows somewhere (0/0 at :math:`\Delta = 0`, inf * 0 for
large :math:`\gamma t`). The functions below are single **entire** functions of the
discriminant that equal those forms in every regime:

.. math::
    e^{-\gamma t}\cosh(\sqrt{\Delta}\,t) = e^{-\gamma t}\sum_{n\ge0}\frac{(\Delta t^2)^n}{(2n)!},
    \qquad
    e^{-\gamma t}\frac{\sinh(\sqrt{\Delta}\,t)}{\sqrt{\Delta}}
      = t\,e^{-\gamma t}\sum_{n\ge0}\frac{(\Delta t^2)^n}{(2n+1)!},

and likewise for powers of the one-mode SGD matrix :math:`M` (docs/theory.md section 6) by
Cayley-Hamilton. Each class here is a SymPy ``Function`` that the code generator prints as a
call to the hand-written numeric primitive of the same name in snake_case (see
``numeric._primitives_common`` for the switches and their error bounds); ``rewrite(Piecewise)``
gives the three-regime form, which the tests prove equal to :mod:`ousym.oscillator`'s
propagator and to matrix powers of :mod:`ousym.discrete`'s ``M``; :meth:`series` gives the
entire series in the discriminant.

Builders :func:`uniform_propagator` and :func:`uniform_matrix_power` turn a mode's drift
:math:`A_l` (from :mod:`ousym.linreg`) and SGD matrix :math:`M` into matrices of these
primitives, checking symbolically that the Cayley-Hamilton structure they rely on holds.

This module only derives: no numpy, no torch.
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "UniformPrimitive",
    "DampedCosh",
    "DampedSinhc",
    "DampedCoshPlus",
    "DampedCoshMinus",
    "MomentumPowerS",
    "MomentumPowerAA",
    "MomentumPowerVV",
    "SpectralFraction",
    "PRIMITIVES",
    "uniform_propagator",
    "uniform_matrix_power",
    "split_spectral_fraction",
]


class UniformPrimitive(sp.Function):
    """Base of the NaN-safe primitives; ``numeric_name`` is the numeric function printed."""

    numeric_name: str = ""

    def _eval_evalf(self, prec):
        return self.rewrite(sp.Piecewise)._eval_evalf(prec)


# ---- continuous time: e^{-gamma t} (cosh, sinh/sqrt) of sqrt(Delta) t ---------------------------


def _damped_parts(gamma, omega2, t):
    """(decay, Delta, {regime: (c, s)}) of the three-regime forms, alpha = sqrt|Delta|."""
    delta = gamma**2 - omega2
    over, under = sp.sqrt(delta), sp.sqrt(-delta)
    return sp.exp(-gamma * t), delta, {
        "overdamped": (sp.cosh(over * t), sp.sinh(over * t) / over),
        "underdamped": (sp.cos(under * t), sp.sin(under * t) / under),
        "critical": (sp.Integer(1), t),
    }


def _by_discriminant(delta, forms):
    return sp.Piecewise(
        (forms["overdamped"], sp.StrictGreaterThan(delta, 0)),
        (forms["underdamped"], sp.StrictLessThan(delta, 0)),
        (forms["critical"], True),
    )


class _DampedPrimitive(UniformPrimitive):
    """f(gamma, omega2, t) built from (c, s) as ``combine(gamma, c, s)`` times e^{-gamma t}."""

    nargs = 3

    @staticmethod
    def _combine(gamma, c, s):
        raise NotImplementedError

    def _eval_rewrite_as_Piecewise(self, gamma, omega2, t, **kwargs):
        decay, delta, cs = _damped_parts(gamma, omega2, t)
        return _by_discriminant(
            delta, {name: decay * self._combine(gamma, c, s) for name, (c, s) in cs.items()}
        )

    @classmethod
    def series(cls, gamma, omega2, t, terms):
        r"""The first ``terms`` terms of the entire series in :math:`\Delta t^2` (times the decay)."""
        delta = gamma**2 - omega2
        c = sum((delta * t**2) ** n / sp.factorial(2 * n) for n in range(terms))
        s = t * sum((delta * t**2) ** n / sp.factorial(2 * n + 1) for n in range(terms))
        return sp.exp(-gamma * t) * cls._combine(gamma, c, s)


class DampedCosh(_DampedPrimitive):
    r""":math:`e^{-\gamma t}\cosh(\sqrt{\Delta}\,t)`, :math:`\Delta = \gamma^2 - \omega^2`; args (gamma, omega2, t)."""

    numeric_name = "damped_cosh"

    @staticmethod
    def _combine(gamma, c, s):
        return c


class DampedSinhc(_DampedPrimitive):
    r""":math:`e^{-\gamma t}\sinh(\sqrt{\Delta}\,t)/\sqrt{\Delta}` (:math:`t e^{-\gamma t}` at :math:`\Delta = 0`)."""

    numeric_name = "damped_sinhc"

    @staticmethod
    def _combine(gamma, c, s):
        return s


class DampedCoshPlus(_DampedPrimitive):
    r""":math:`e^{-\gamma t}(\cosh + \gamma\,\sinh/\sqrt\Delta)`, the entry :math:`[e^{-A_l t}]_{11}`."""

    numeric_name = "damped_cosh_plus"

    @staticmethod
    def _combine(gamma, c, s):
        return c + gamma * s


class DampedCoshMinus(_DampedPrimitive):
    r""":math:`e^{-\gamma t}(\cosh - \gamma\,\sinh/\sqrt\Delta)`, the entry :math:`[e^{-A_l t}]_{22}`
    (the velocity autocorrelation, appendix G.2)."""

    numeric_name = "damped_cosh_minus"

    @staticmethod
    def _combine(gamma, c, s):
        return c - gamma * s


# ---- discrete time: M^k = c_k I + s_k (M - m I) ---------------------------------------------------


def _momentum_parts(x, beta):
    """(m, delta, p) of M = [[1 - x, eta beta], [-h, beta]] with x = eta h."""
    m = (1 + beta - x) / 2
    return m, m**2 - beta, (1 - beta - x) / 2


class _MomentumPrimitive(UniformPrimitive):
    r"""f(x, beta, k) = ``_parts(c_k, s_k, p)`` with :math:`x = \eta h`, k whole steps."""

    nargs = 3

    @staticmethod
    def _parts(c, s, p):
        raise NotImplementedError

    def _eval_rewrite_as_Piecewise(self, x, beta, k, **kwargs):
        m, delta, p = _momentum_parts(x, beta)
        root = sp.sqrt(delta)
        plus, minus = m + root, m - root
        real = ((plus**k + minus**k) / 2, (plus**k - minus**k) / (2 * root))
        neg = sp.sqrt(-delta)
        phase = sp.atan2(neg, m)
        complex_ = (beta ** (k / 2) * sp.cos(k * phase), beta ** (k / 2) * sp.sin(k * phase) / neg)
        critical = (m**k, sp.Piecewise((0, sp.Eq(k, 0)), (k * m ** (k - 1), True)))
        return sp.Piecewise(
            (self._parts(*real, p), sp.StrictGreaterThan(delta, 0)),
            (self._parts(*complex_, p), sp.StrictLessThan(delta, 0)),
            (self._parts(*critical, p), True),
        )

    @classmethod
    def series(cls, x, beta, k, terms):
        r"""The binomial expansion in :math:`\delta` (exact once ``terms`` > k/2 for integer k)."""
        m, delta, p = _momentum_parts(x, beta)

        def term(n, i):  # binomial(k, n) m^(k - n) delta^i, zero beyond n > k for whole k
            if k.is_Integer and n > k:
                return sp.Integer(0)
            return sp.binomial(k, n) * m ** (k - n) * delta**i

        c = sum(term(2 * i, i) for i in range(terms))
        s = sum(term(2 * i + 1, i) for i in range(terms))
        return cls._parts(c, s, p)


class MomentumPowerS(_MomentumPrimitive):
    r""":math:`s_k = (\mu_+^k - \mu_-^k)/(\mu_+ - \mu_-)`, the Lucas sequence of M; args (x = eta h, beta, k)."""

    numeric_name = "momentum_power_s"

    @staticmethod
    def _parts(c, s, p):
        return s


class MomentumPowerAA(_MomentumPrimitive):
    r""":math:`c_k + p s_k = [M^k]_{11}`, :math:`p = (1 - \beta - \eta h)/2`."""

    numeric_name = "momentum_power_aa"

    @staticmethod
    def _parts(c, s, p):
        return c + p * s


class MomentumPowerVV(_MomentumPrimitive):
    r""":math:`c_k - p s_k = [M^k]_{22}`."""

    numeric_name = "momentum_power_vv"

    @staticmethod
    def _parts(c, s, p):
        return c - p * s


class SpectralFraction(UniformPrimitive):
    r""":math:`\rho/(\rho + \lambda)`, continued by its :math:`\lambda = 0` value 1 at
    :math:`\rho = \lambda = 0` (the flat, noiseless mode); args (rho, lam)."""

    nargs = 2
    numeric_name = "spectral_fraction"

    def _eval_rewrite_as_Piecewise(self, rho, lam, **kwargs):
        return sp.Piecewise((rho / (rho + lam), sp.StrictGreaterThan(rho + lam, 0)), (1, True))


#: Every primitive class, in the order the numeric runtime defines them.
PRIMITIVES = (DampedCosh, DampedSinhc, DampedCoshPlus, DampedCoshMinus,
              MomentumPowerS, MomentumPowerAA, MomentumPowerVV, SpectralFraction)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"ousym.uniform: the derivation no longer has the structure used here: {what}")


def uniform_propagator(drift: sp.MatrixBase, t: sp.Expr) -> sp.ImmutableMatrix:
    r"""e^{-A t} of a 2x2 mode drift :math:`A = [[0, -1], [\omega^2, 2\gamma]]`, uniformly.

    With :math:`N = \gamma I - A` (so :math:`N^2 = \Delta I`) Cayley-Hamilton gives
    :math:`e^{-At} = e^{-\gamma t}(\cosh(\sqrt\Delta t) I + \sinh(\sqrt\Delta t)/\sqrt\Delta\,N)`;
    the diagonal entries use the fused primitives (no cancellation between the two terms).
    Raises ``RuntimeError`` if ``drift`` does not have that structure.
    """
    gamma = drift.trace() / 2
    omega2 = drift.det()
    n_matrix = gamma * sp.eye(2) - drift
    _require(sp.simplify(n_matrix**2 - (gamma**2 - omega2) * sp.eye(2)) == sp.zeros(2, 2),
             "N^2 = Delta I")
    _require(sp.simplify(n_matrix[0, 0] - gamma) == 0, "N_11 = gamma")
    sinhc = DampedSinhc(gamma, omega2, t)
    return sp.ImmutableMatrix([
        [DampedCoshPlus(gamma, omega2, t), n_matrix[0, 1] * sinhc],
        [n_matrix[1, 0] * sinhc, DampedCoshMinus(gamma, omega2, t)],
    ])


def uniform_matrix_power(matrix: sp.MatrixBase, k: sp.Expr, *, x: sp.Expr, beta: sp.Expr) -> sp.ImmutableMatrix:
    r"""M^k of the one-mode SGD matrix :math:`M = [[1 - x, \eta\beta], [-h, \beta]]`, uniformly.

    :math:`M^k = c_k I + s_k (M - mI)` with :math:`m = (1 + \beta - x)/2`; checks symbolically
    that ``matrix`` has trace :math:`1 + \beta - x` and determinant :math:`\beta` (the only
    facts used), and raises ``RuntimeError`` otherwise. ``k`` is a whole number of steps.
    """
    _require(sp.simplify(matrix.trace() - (1 + beta - x)) == 0, "tr M = 1 + beta - x")
    _require(sp.simplify(matrix.det() - beta) == 0, "det M = beta")
    m = matrix.trace() / 2
    _require(sp.simplify(matrix[0, 0] - m - (1 - beta - x) / 2) == 0, "M_11 - m = p")
    s = MomentumPowerS(x, beta, k)
    return sp.ImmutableMatrix([
        [MomentumPowerAA(x, beta, k), matrix[0, 1] * s],
        [matrix[1, 0] * s, MomentumPowerVV(x, beta, k)],
    ])


def split_spectral_fraction(expr: sp.Expr, rho: sp.Symbol, lam: sp.Symbol) -> sp.Expr:
    r"""Write ``expr`` as ``rest * SpectralFraction(rho, lam)`` with ``rest = expr (rho+lam)/rho``
    cancelled, so the removable 0/0 at :math:`\rho = \lambda = 0` disappears (``rest`` must be
    finite there; raises ``RuntimeError`` otherwise)."""
    rest = sp.factor(sp.cancel(expr * (rho + lam) / rho))
    at_origin = sp.simplify(sp.denom(sp.together(rest)).subs({rho: 0, lam: 0}))
    _require(at_origin != 0, f"{expr} has no removable rho/(rho+lam)")
    return rest * SpectralFraction(rho, lam)
