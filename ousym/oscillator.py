r"""One Hessian eigenmode as a damped harmonic oscillator (appendix F.2 of Kunin et al. 2023).

The mean of a mode's state :math:`(a, b)` obeys :math:`\ddot a + 2\gamma\dot a + \omega^2 a = 0`
with :math:`b = \dot a`, in continuous time :math:`t = \eta k` (step :math:`k`):

.. math::
    \gamma = \frac{1-\beta}{\eta(1+\beta)}, \qquad \omega^2 = \frac{2h}{\eta(1+\beta)}, \qquad
    \zeta = \frac{\gamma}{\omega} = \frac{1-\beta}{\sqrt{2\eta(1+\beta)h}}, \qquad
    \Delta = \gamma^2 - \omega^2 .

The propagator (docs/theory.md section 4), with :math:`\alpha = \sqrt{|\Delta|}`,

.. math::
    e^{-A_l t} = e^{-\gamma t}\begin{pmatrix} c + \gamma s & s \\ -\omega^2 s & c - \gamma s
    \end{pmatrix},\quad (c, s) = \begin{cases}
    (\cosh\alpha t,\ \sinh(\alpha t)/\alpha) & \Delta > 0 \text{ (overdamped)}\\
    (\cos\alpha t,\ \sin(\alpha t)/\alpha) & \Delta < 0 \text{ (underdamped)}\\
    (1,\ t) & \Delta = 0 \text{ (critical)}
    \end{cases}

Every object here is a function of continuous time ``t``; evaluate it at a step count by
substituting ``t = eta * k`` (:data:`ousym.symbols.t_of_k`). The plain regime forms are not
numerically safe (overflow for :math:`\gamma t \gtrsim 710`, 0/0 at :math:`\Delta = 0`):
numeric kernels must not evaluate them literally (docs/theory.md section 4).

Matrix-valued objects (``propagator*``, ``transient_covariance``) and ``mean_position``,
``mean_velocity`` are built on first access (they are module attributes all the same).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from ._lazy import lazy_attributes
from .symbols import a0, alpha_sym, b0, beta, eta, gamma_sym, h, omega_sym, t

__all__ = [
    "gamma",
    "omega2",
    "omega",
    "zeta",
    "Delta",
    "REGIMES",
    "regime_conditions",
    "regime_cs",
    "propagator",
    "propagator_overdamped",
    "propagator_underdamped",
    "propagator_critical",
    "propagator_from",
    "by_regime",
    "mean_position",
    "mean_velocity",
    "transient_covariance",
    "generic_regime_propagators",
    "critical_limit",
]

#: Damping rate gamma = (1 - beta) / (eta (1 + beta)), in 1/time (time t = eta k).
gamma = (1 - beta) / (eta * (1 + beta))
#: Squared natural frequency omega^2 = 2h / (eta (1 + beta)), in 1/time^2.
omega2 = 2 * h / (eta * (1 + beta))
#: Natural frequency omega = sqrt(omega^2).
omega = sp.sqrt(omega2)
#: Damping ratio zeta = gamma / omega = (1 - beta) / sqrt(2 eta (1 + beta) h) (dimensionless).
zeta = (1 - beta) / sp.sqrt(2 * eta * (1 + beta) * h)
#: Discriminant Delta = gamma^2 - omega^2: > 0 overdamped, = 0 critical, < 0 underdamped.
Delta = gamma**2 - omega2

#: The three regimes, in the order every Piecewise here lists them (the last is the fallback).
REGIMES = ("overdamped", "underdamped", "critical")

_alpha_over = sp.sqrt(Delta)
_alpha_under = sp.sqrt(-Delta)


def regime_conditions(discriminant: sp.Expr = Delta) -> dict[str, sp.Basic]:
    """The condition selecting each regime, on the discriminant Delta = gamma^2 - omega^2
    (critical is the fallback, ``True``, as the last Piecewise branch)."""
    return {
        "overdamped": sp.StrictGreaterThan(discriminant, 0),
        "underdamped": sp.StrictLessThan(discriminant, 0),
        "critical": sp.true,
    }


def _cs_with(alpha: sp.Expr, regime: str, time: sp.Expr = t) -> tuple[sp.Expr, sp.Expr]:
    if regime == "overdamped":
        return sp.cosh(alpha * time), sp.sinh(alpha * time) / alpha
    if regime == "underdamped":
        return sp.cos(alpha * time), sp.sin(alpha * time) / alpha
    return sp.Integer(1), time


def regime_cs(regime: str, time: sp.Expr = t) -> tuple[sp.Expr, sp.Expr]:
    r"""The pair :math:`(c, s)` of ``regime`` at ``time`` (default ``t``), with
    :math:`\alpha = \sqrt{|\Delta|}` written out in the model parameters (docs/theory.md section 4).

    Raises ``ValueError`` for a name not in :data:`REGIMES`.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, but got {regime!r}")
    alpha = _alpha_under if regime == "underdamped" else _alpha_over
    return _cs_with(alpha, regime, time)


def propagator_from(c: sp.Expr, s: sp.Expr, *, damping=gamma, frequency2=omega2, time=t) -> sp.ImmutableMatrix:
    r""":math:`e^{-\gamma t}\,[[c + \gamma s, s], [-\omega^2 s, c - \gamma s]]` for given ``(c, s)``."""
    decay = sp.exp(-damping * time)
    return sp.ImmutableMatrix(
        [[decay * (c + damping * s), decay * s], [-decay * frequency2 * s, decay * (c - damping * s)]]
    )


class _Placeholders:
    """The propagator at chosen times, written on Dummy symbols (fast SymPy algebra); the
    Dummies are replaced by each regime's expressions afterwards."""

    def __init__(self) -> None:
        self.damping = sp.Dummy("gamma")
        self.frequency2 = sp.Dummy("omega2")
        self.times: dict[sp.Expr, tuple[sp.Dummy, sp.Dummy, sp.Dummy]] = {}

    def __call__(self, time: sp.Expr = t) -> sp.ImmutableMatrix:
        time = sp.sympify(time)
        if time not in self.times:
            self.times[time] = (sp.Dummy("e"), sp.Dummy("c"), sp.Dummy("s"))
        decay, c, s = self.times[time]
        g, w2 = self.damping, self.frequency2
        return sp.ImmutableMatrix([[c + g * s, s], [-w2 * s, c - g * s]]) * decay

    def values(self, regime: str) -> dict[sp.Dummy, sp.Expr]:
        replacements: dict[sp.Dummy, sp.Expr] = {self.damping: gamma, self.frequency2: omega2}
        for time, (decay, c, s) in self.times.items():
            c_value, s_value = regime_cs(regime, time)
            replacements.update({decay: sp.exp(-gamma * time), c: c_value, s: s_value})
        return replacements


def by_regime(build: Callable[[Callable[..., sp.ImmutableMatrix]], sp.Basic]) -> sp.Basic:
    r"""Build an expression from the propagator once, then join the three regimes in a Piecewise
    on :math:`\Delta` (elementwise for a matrix result), in the order of :data:`REGIMES`.

    ``build`` receives a function ``P(time=t)`` returning :math:`e^{-A_l\,\mathrm{time}}` on
    placeholder symbols; it may call it at several times (e.g. ``eta`` and ``eta * k``).
    """
    placeholders = _Placeholders()
    generic = build(placeholders)
    conditions = regime_conditions()
    results = {name: generic.xreplace(placeholders.values(name)) for name in REGIMES}
    if isinstance(generic, sp.MatrixBase):
        return sp.ImmutableMatrix(
            generic.rows,
            generic.cols,
            lambda r, c: sp.Piecewise(*((results[name][r, c], conditions[name]) for name in REGIMES)),
        )
    return sp.Piecewise(*((results[name], conditions[name]) for name in REGIMES))


def _plain(regime: str) -> Callable[[], sp.ImmutableMatrix]:
    return lambda: propagator_from(*regime_cs(regime))


def _stationary_covariance() -> sp.ImmutableMatrix:
    from .decomposition import U_mode
    from .linreg import kappa

    return sp.ImmutableMatrix(U_mode.inv() / kappa)


def _transient_covariance() -> sp.ImmutableMatrix:
    stationary = _stationary_covariance()
    return by_regime(lambda P: stationary - P() * stationary * P().T)


_initial = sp.ImmutableMatrix([a0, b0])

__getattr__, __dir__ = lazy_attributes(
    globals(),
    {
        # e^{-A_l t}: a 2x2 matrix of Piecewise entries over the three regimes (docs/theory.md section 4).
        "propagator": lambda: by_regime(lambda P: P()),
        # the plain forms: Delta > 0, Delta < 0 (alpha = sqrt(-Delta)), Delta = 0.
        "propagator_overdamped": _plain("overdamped"),
        "propagator_underdamped": _plain("underdamped"),
        "propagator_critical": _plain("critical"),
        # mean position a(t) and velocity b(t) = entries of e^{-A_l t} (a0, b0) (appendix F.2).
        "mean_position": lambda: by_regime(lambda P: (P() * _initial)[0]),
        "mean_velocity": lambda: by_regime(lambda P: (P() * _initial)[1]),
        # eq. (26): kappa^{-1} (U^{-1} - e^{-A t} U^{-1} e^{-A^T t}).
        "transient_covariance": _transient_covariance,
    },
)


def generic_regime_propagators() -> dict[str, sp.ImmutableMatrix]:
    r"""The three plain propagators in terms of free symbols :math:`\gamma, \alpha > 0` only.

    Overdamped uses :math:`\omega^2 = \gamma^2 - \alpha^2`, underdamped
    :math:`\omega^2 = \gamma^2 + \alpha^2`, critical :math:`\omega^2 = \gamma^2`; in each,
    :math:`\alpha = \sqrt{|\Delta|}`. These are the forms whose :math:`\alpha \to 0^+` limits
    :func:`critical_limit` takes.
    """
    frequency2 = {
        "overdamped": gamma_sym**2 - alpha_sym**2,
        "underdamped": gamma_sym**2 + alpha_sym**2,
        "critical": gamma_sym**2,
    }
    return {
        name: propagator_from(*_cs_with(alpha_sym, name), damping=gamma_sym, frequency2=frequency2[name])
        for name in REGIMES
    }


def critical_limit(regime: str) -> sp.ImmutableMatrix:
    r"""Entrywise :math:`\lim_{\alpha\to 0^+}` of the ``regime`` propagator (``"overdamped"`` or
    ``"underdamped"``), computed with :func:`sympy.limit`; it equals the critical propagator
    :math:`e^{-\gamma t}[[1 + \gamma t, t], [-\gamma^2 t, 1 - \gamma t]]`.

    Raises ``ValueError`` for any other regime name.
    """
    if regime not in ("overdamped", "underdamped"):
        raise ValueError(f"regime must be 'overdamped' or 'underdamped', but got {regime!r}")
    form = generic_regime_propagators()[regime]
    return sp.ImmutableMatrix(form.applyfunc(lambda entry: sp.limit(entry, alpha_sym, 0, "+")))


def readable_cs() -> list[tuple[sp.Symbol, sp.Basic]]:
    """Definitions of c, s and alpha in gamma, omega (for printing the propagator readably)."""
    c, s = sp.symbols("c s")
    over = sp.StrictGreaterThan(gamma_sym, omega_sym)
    under = sp.StrictLessThan(gamma_sym, omega_sym)
    return [
        (c, sp.Piecewise((sp.cosh(alpha_sym * t), over), (sp.cos(alpha_sym * t), under), (1, True))),
        (s, sp.Piecewise((sp.sinh(alpha_sym * t) / alpha_sym, over), (sp.sin(alpha_sym * t) / alpha_sym, under), (t, True))),
        (alpha_sym, sp.sqrt(sp.Abs(gamma_sym**2 - omega_sym**2))),
    ]
