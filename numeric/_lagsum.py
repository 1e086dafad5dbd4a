r"""The lag-weighted velocity sum :math:`W(k)` behind :math:`E\|\Delta_k\|^2` (eq. 13).

Kunin et al. 2023, eq. (13) and appendix G.2, with docs/theory.md sections 4-6: at stationarity

.. math::
    E\|\Delta_k\|^2 = \eta^2 \sum_l \mathrm{Var}_{ss}(v_l)\, W_l(k),\qquad
    W(k) = k + 2\sum_{j=1}^{k-1} (k - j)\, C(j) = \sum_{i,j=0}^{k-1} C(|i - j|),

where :math:`C(j)` is the normalised velocity autocorrelation of one mode at a lag of
:math:`j` SGD steps (continuous lag :math:`\tau = \eta j`):

* ``model="sde"``: :math:`C(j) = [e^{-A_l \eta j}]_{22} = e^{-\gamma\tau}(c - \gamma s)`;
* ``model="discrete"``: :math:`C(j) = [M^j P]_{vv}/P_{vv}` with
  :math:`M = [[1 - \eta h, \eta\beta], [-h, \beta]]` and :math:`P` its stationary covariance, so
  that :math:`\eta^2 \mathrm{Var}_{ss}(v) W(k) = \eta^2\sum_{i,j\le k}\mathrm{Cov}(v_i, v_j)`
  exactly.

``W`` is dimensionless; ``k`` counts steps. The work is :math:`O(1)` per element: closed forms,
no loop over lags and no repeated squaring.

What is generated and what is derived by hand
---------------------------------------------
This module is **written by hand**, not generated: the derivation below, its branch switches
and series coefficients are this file's own. What is generated from the SymPy theory
(``numeric/_generated/``, via ``ousym.codegen``) is the velocity correlation :math:`C`, the
stationary variances :math:`\mathrm{Var}_{ss}(v)` that multiply :math:`W`, and every other
kernel of :mod:`numeric.kernels`. The SymPy derivation has its own closed form of the same
sum (``ousym.stationary.global_displacement_mode`` for the SDE,
``ousym.discrete.discrete_global_displacement_mode`` for the recursion: the geometric matrix
sum of :math:`E^j`, piecewise over the regimes), which is not printed into code because it
divides by :math:`\alpha` and :math:`(I - E)^2` and overflows for large :math:`k`. The two are
tied by a test: ``tests/test_theory_to_kernels.py`` evaluates the SymPy closed forms at 50
digits against :func:`numeric.global_displacement` on a grid of regimes (over-, under- and
exactly critically damped, both models, the recursion's double roots) and lags up to
:math:`10^5`, within the accuracy stated below; ``tests/numeric/test_lagsum.py`` checks this
module against an independent 50-digit evaluation of the definition.

Derivation (the notation of the code)
-------------------------------------
Both correlations are divided differences over the two roots of the mode. Write
:math:`[f]` for the divided difference :math:`(f(x_1) - f(x_2))/(x_1 - x_2)`, and
:math:`W_g(w) = \sum_{i,j<k} w^{|i-j|}` for the sum of one geometric correlation.

*SDE.* In step units the roots are :math:`x_{1,2} = \eta r_\pm = m \pm d` with
:math:`m = -\eta\gamma = -(1-\beta)/(1+\beta)`, :math:`d^2 = D = m^2 - P`,
:math:`P = x_1 x_2 = \eta^2\omega^2 = 2\eta h/(1+\beta)`, and
:math:`C(j) = [x e^{x j}]`, hence :math:`W = [x W_g(e^x)]` with

.. math::
    x W_g(e^x) = 2k\,H(x),\qquad H(x) = \sigma(x/2)\,\varphi_1(kx) - \chi(x/2)
             = \tfrac1k\psi(x)(e^{kx} - 1) - \chi(x/2),

:math:`\sigma(y) = (y/\sinh y)^2`, :math:`\chi(y) = y\coth y`, :math:`\psi(x) = x e^x/(e^x-1)^2`,
:math:`\varphi_1(z) = (e^z - 1)/z`. Two evaluations, switched per mode:

* well separated real roots, :math:`D > m^2/4`: the plain quotient
  :math:`W = k(H(x_1) - H(x_2))/d` with the slow root :math:`x_1 = -P/(|m| + d)` written
  without cancellation (small modes, :math:`x_1 \to 0`, live here); when no gradient is
  recorded, as :math:`c_1\,\mathrm{expm1}(kx_1) - c_2\,\mathrm{expm1}(kx_2) - kc_3` with
  per-mode weights (:math:`k\varphi_1(kx) = \mathrm{expm1}(kx)/x`): three passes per element;
* otherwise (near critical damping and underdamped), the symmetric form
  :math:`W = 2(E_s\bar\psi + E_{c1}[\psi] - k[\chi(x/2)])`, where
  :math:`E_{c1} = e^{km}\cosh(k d) - 1` and :math:`E_s = e^{km}\sinh(kd)/d` are the average
  (minus one) and the divided difference of :math:`e^{kx}`, and :math:`\bar\psi`,
  :math:`[\psi]`, :math:`[\chi(x/2)]` are closed forms in :math:`(m, D)` built from the entire
  functions :math:`\cosh\sqrt D - 1` and :math:`\sinh\sqrt D/\sqrt D` (no :math:`1/d`
  anywhere, so they are smooth through :math:`D = 0`). Complex roots away from the double
  root (:math:`D < -m^2/100`) take the damped cos/sin written out, with the per-mode factors
  folded in once: :math:`W = 2[\psi]\,\mathrm{expm1}(km) + e^{km}S(AC - BS) - 2k[\chi(x/2)]`,
  :math:`S, C = \sin, \cos(k\sqrt{-D}/2)`, :math:`A = 4\bar\psi/\sqrt{-D}`, :math:`B = 4[\psi]`.

*Discrete.* With :math:`a = \eta h`, :math:`\eta\sum_{i\le k} v_i = a_k - a_0` turns the double
sum into a position correlation: :math:`W = \frac{1+\beta}{a}(1 - [M^k u_a]_1)`,
:math:`u_a = (1, h/(1+\beta))` (using :math:`P_{aa}/P_{vv} = \eta(1+\beta)/(2h)`,
:math:`P_{av} = \eta P_{vv}/2`). The eigenvalues of :math:`M` are the roots of
:math:`w^2 - s w + \beta`, :math:`s = 1 + \beta - a`; by Cayley-Hamilton
:math:`M^k = w_1^k I + [w^k](M - w_1 I)`, or symmetrically
:math:`M^k = \overline{w^k} I + [w^k](M - \tfrac s2 I)`. The discriminant
:math:`s^2 - 4\beta = (1-\beta)^2 - a(2(1+\beta) - a)` is taken from whichever of the two
polynomials has the smaller largest term (the second cancels nothing for small modes). Per mode:

* well separated real roots (ratio :math:`r = w_2/w_1 < \sqrt\beta`, or :math:`\beta = 0`):
  the slow root :math:`w_1 = 1 - \varepsilon_1`,
  :math:`\varepsilon_1 = 2a/(1-\beta+a+\sqrt{s^2-4\beta})`, and
  :math:`W = (1+\beta)[k\varphi_1(k\ell)\,L(\varepsilon_1)\,\varepsilon_1/a
  - [w^k](\varepsilon_1/a - 1/(1+\beta))]`, :math:`\ell = \log(1-\varepsilon_1)`,
  :math:`L(\varepsilon) = -\log(1-\varepsilon)/\varepsilon` (finite as :math:`a \to 0`);
  negative roots (:math:`s \le 0`) carry :math:`(-1)^k`;
* otherwise (near either double root, and complex roots) the symmetric form
  :math:`W = \frac{1+\beta}{a}(-(\overline{w^k} - 1) - \kappa[w^k])`,
  :math:`\kappa = \frac{1-\beta}{2}(1 - \frac{a}{1+\beta})`, in :math:`x = \log w`:
  :math:`m = \tfrac12\log\beta`, :math:`D = \operatorname{asinh}^2\sqrt{q}`,
  :math:`q = (s^2 - 4\beta)/(4\beta)`, so that :math:`\overline{w^k} - 1 = E_{c1}` and
  :math:`[w^k] = E_s/(\sqrt\beta\,\sinh\sqrt D/\sqrt D)` with the same :math:`E_{c1}, E_s`
  as above; negative roots (:math:`s < 0`) are reflected, :math:`w = -\tilde w`, and carry
  :math:`(-1)^k`.

Switches (documented; each branch is evaluated only on the elements it owns, compressed by a
boolean mask, so no branch ever sees an argument outside its domain, in value or in gradient;
a branch that owns every element runs on the uncompressed, broadcast arrays):

* per mode, the separated / symmetric split above; within the symmetric form, modes with
  :math:`D > m^2/100` use the two exponentials, :math:`D < -m^2/100` the damped cos/sin
  (both accurate in value for every k), and only :math:`|D| \le m^2/100` switches per element
  to the series of :math:`\cosh\sqrt u`, :math:`\sinh\sqrt u/\sqrt u` in
  :math:`u = k^2 D` for :math:`|u| \le 1` (10 terms, remainder below :math:`1/20!`), which
  keeps the gradient accurate through the double root;
* entire functions of a real per-mode :math:`u`: series for :math:`|u| \le 1`, hyperbolic for
  :math:`u > 1`, trigonometric for :math:`u < -1`;
* :math:`L(\varepsilon)`: series below :math:`10^{-2}` (9 terms, remainder below
  :math:`10^{-19}`); :math:`\varphi_1(z)`: quotient ``expm1(z)/z``, and in torch the series
  below :math:`|z| = 10^{-4}` (5 terms) for an accurate gradient;
* :math:`\operatorname{asinh}^2\sqrt q`: series for :math:`|q| \le 0.05` (14 terms);
  closed form above; :math:`-\operatorname{atan2}(\sqrt{-q}, |s|/(2\sqrt\beta))^2` below.

Accuracy: relative error within :math:`10^{-10} + 64\epsilon(1 + \gamma t + \alpha t)` of a
50-digit evaluation (the tests), the worst cancellation left being a factor of about
:math:`2/(1-\beta)` between terms for near-critical modes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["lag_weighted_velocity_sum"]

# Branch switches (see the module docstring).
_SEPARATED = 0.25  # roots count as well separated when D > _SEPARATED * m^2
_ENTIRE_SERIES_MAX = 1.0  # |u| at or below which entire functions of u use their series
_SMALL_Z = 1e-2  # eps below which L(eps) uses its series
_TINY_Z = 1e-4  # |z| below which phi1(z) uses its series (torch only, for the gradient)
_ASINH2_SERIES_MAX = 0.05  # |q| at or below which asinh(sqrt q)^2 uses its series
_NEAR_DOUBLE_ROOT = 1e-2  # |D| <= this * m^2: e^{kx} switches series/closed form per element

_COSH_M1 = [1.0 / math.factorial(2 * n + 2) for n in range(10)]  # (cosh sqrt u - 1)/u
_SINHC = [1.0 / math.factorial(2 * n + 1) for n in range(11)]  # sinh sqrt u / sqrt u
_SINHC_M1 = [1.0 / math.factorial(2 * n + 3) for n in range(10)]  # (sinhc - 1)/u
_PHI1 = [1.0 / math.factorial(n + 1) for n in range(5)]  # (e^z - 1)/z, |z| <= 1e-4
_LOG_RATIO = [1.0 / (n + 1) for n in range(9)]  # -log(1 - e)/e
_ASINH2 = [  # asinh(sqrt q)^2 / q = sum_n (-1)^n 4^(n+1) q^n / (2 (n+1)^2 binom(2n+2, n+1))
    (-1) ** n * 4 ** (n + 1) / (2 * (n + 1) ** 2 * math.comb(2 * n + 2, n + 1)) for n in range(15)
]


# --- a tiny namespace over numpy and torch -------------------------------------------------


class _NumpyOps:
    is_torch = False
    differentiable = False

    def __init__(self):
        import numpy

        self.np = numpy
        for name in ("exp", "expm1", "log", "log1p", "sqrt", "sin", "cos", "sinh", "cosh",
                     "abs", "where", "arctan2", "arcsinh"):
            setattr(self, name, getattr(numpy, name))

    def asarray(self, x):
        return self.np.asarray(x, dtype=self.np.float64)

    def shape(self, *arrays):
        return self.np.broadcast_shapes(*(a.shape for a in arrays))

    def zeros(self, shape, like):
        return self.np.zeros(shape, dtype=self.np.float64)

    def gather(self, a, shape, mask):
        return self.np.broadcast_to(a, shape)[mask]

    def scatter(self, out, mask, values):
        out[mask] = values
        return out

    def full_mask(self, mask, shape):
        return self.np.broadcast_to(mask, shape)

    def any(self, mask):
        return bool(mask.any())

    def all(self, mask):
        return bool(mask.all())

    def broadcast_to(self, a, shape):
        return self.np.broadcast_to(a, shape)

    def maximum(self, a, floor):
        return self.np.maximum(a, floor)

    def mod2(self, k):
        return self.np.mod(k, 2.0)


class _TorchOps:
    is_torch = True

    def __init__(self, torch, like, differentiable):
        self.torch = torch
        # value-only forms (no series kept for the gradient's sake) when nothing is recorded
        self.differentiable = differentiable
        self.dtype, self.device = like.dtype, like.device
        for name in ("exp", "expm1", "log", "log1p", "sqrt", "sin", "cos", "sinh", "cosh",
                     "abs", "where"):
            setattr(self, name, getattr(torch, name))
        self.arctan2 = torch.atan2
        self.arcsinh = torch.asinh

    def asarray(self, x):
        return self.torch.as_tensor(x, dtype=self.dtype, device=self.device)

    def shape(self, *arrays):
        return tuple(self.torch.broadcast_shapes(*(a.shape for a in arrays)))

    def zeros(self, shape, like):
        return self.torch.zeros(shape, dtype=self.dtype, device=self.device)

    def gather(self, a, shape, mask):
        return self.torch.broadcast_to(a, shape)[mask]

    def scatter(self, out, mask, values):
        return out.index_put((mask,), values)

    def full_mask(self, mask, shape):
        return self.torch.broadcast_to(mask, shape)

    def any(self, mask):
        return bool(mask.any())

    def all(self, mask):
        return bool(mask.all())

    def broadcast_to(self, a, shape):
        return self.torch.broadcast_to(a, shape)

    def maximum(self, a, floor):
        return self.torch.clamp_min(a, floor)

    def mod2(self, k):
        return self.torch.remainder(k, 2.0)


def _namespace(values: Sequence[Any]):
    for v in values:
        if type(v).__module__.split(".")[0] == "torch":
            import torch

            recording = torch.is_grad_enabled() and any(
                getattr(u, "requires_grad", False) for u in values)
            return _TorchOps(torch, v, recording)
    return _NumpyOps()


def _piecewise(xp, shape, n_out: int, branches):
    """Evaluate ``fn(*args)`` only where ``mask`` holds, for each ``(mask, fn, args)``.

    Arguments are broadcast to ``shape`` and compressed by the mask before the call, so a
    branch never sees an element it does not own (no NaN in value or in gradient from the
    unused side, unlike ``where``). Elements owned by no branch are 0.
    """
    final = tuple(shape)
    shape = final or (1,)  # boolean-mask scatter needs at least one dimension
    outs = [xp.zeros(shape, None) for _ in range(n_out)]
    empty = math.prod(shape) == 0
    for mask, fn, args in branches:
        if not empty and xp.all(mask):  # one branch owns everything: plain broadcasting
            values = fn(*args)
            values = [values] if n_out == 1 else list(values)
            values = [v if tuple(v.shape) == final else xp.broadcast_to(v, final) for v in values]
            return values[0] if n_out == 1 else values
        mask = xp.full_mask(mask, shape)
        if not xp.any(mask):
            continue
        values = fn(*(xp.gather(a, shape, mask) for a in args))
        if n_out == 1:
            values = (values,)
        outs = [xp.scatter(o, mask, v) for o, v in zip(outs, values)]
    outs = [o.reshape(final) for o in outs]
    return outs[0] if n_out == 1 else outs


def _horner(coefficients, u):
    total = coefficients[-1] + 0.0 * u
    for c in reversed(coefficients[:-1]):
        total = total * u + c
    return total


# --- entire functions and their series ------------------------------------------------------


def _entire(xp, u):
    r"""(cosh sqrt u - 1, sinh sqrt u / sqrt u, sinh sqrt u / sqrt u - 1) for real u."""

    def series(u):
        return u * _horner(_COSH_M1, u), _horner(_SINHC, u), u * _horner(_SINHC_M1, u)

    def hyperbolic(u):
        r = xp.sqrt(u)
        sinhc = xp.sinh(r) / r
        return 2.0 * xp.sinh(0.5 * r) ** 2, sinhc, (xp.sinh(r) - r) / r

    def trigonometric(u):
        r = xp.sqrt(-u)
        return -2.0 * xp.sin(0.5 * r) ** 2, xp.sin(r) / r, (xp.sin(r) - r) / r

    small = xp.abs(u) <= _ENTIRE_SERIES_MAX
    return _piecewise(xp, u.shape, 3, [
        (small, series, (u,)),
        (u > _ENTIRE_SERIES_MAX, hyperbolic, (u,)),
        (u < -_ENTIRE_SERIES_MAX, trigonometric, (u,)),
    ])


def _phi1(xp, z):
    r""":math:`\varphi_1(z) = (e^z - 1)/z`, entire.

    ``expm1(z)/z`` is accurate to a few ulp in value for every z != 0; the series near 0 is
    there for the gradient (autograd's derivative of the quotient cancels like 1/|z|), so
    NumPy, which has no gradient, takes the quotient everywhere but at z = 0. Torch takes
    the series 1 + z/2 + z^2/6 + z^3/24 + z^4/120 for |z| <= 1e-4 (remainder below 1e-22),
    where the quotient's gradient would lose more than 1e4 ulp, through ``where`` with safe
    arguments on both sides (an elementwise split would cost more than the series).
    """
    if not xp.differentiable:
        zero = z == 0.0
        return xp.where(zero, 1.0, xp.expm1(z) / xp.where(zero, 1.0, z))
    small = xp.abs(z) <= _TINY_Z
    if not xp.any(small):
        return xp.expm1(z) / z
    z_small = xp.where(small, z, 0.0 * z)
    z_large = xp.where(small, 1.0 + 0.0 * z, z)
    return xp.where(small, _horner(_PHI1, z_small), xp.expm1(z_large) / z_large)


def _k_phi1(xp, expm1_kz, k, z):
    r""":math:`k\varphi_1(kz) = (e^{kz} - 1)/z` given ``expm1_kz`` (NumPy reuses it)."""
    if not xp.differentiable:
        zero = z == 0.0
        return xp.where(zero, k, expm1_kz / xp.where(zero, 1.0, z))
    return k * _phi1(xp, k * z)


def _log_ratio(xp, e):
    r""":math:`L(\varepsilon) = -\log(1 - \varepsilon)/\varepsilon` on :math:`[0, 1)`."""
    small = e <= _SMALL_Z
    return _piecewise(xp, e.shape, 1, [
        (small, lambda e: _horner(_LOG_RATIO, e), (e,)),
        (~small, lambda e: -xp.log1p(-e) / e, (e,)),
    ])


def _exp_series(xp, k, m, D):
    u = k * k * D
    em1 = xp.expm1(k * m)
    ekm = em1 + 1.0
    return em1 + ekm * u * _horner(_COSH_M1, u), k * ekm * _horner(_SINHC, u)


def _exp_hyperbolic(xp, k, m, D):
    # two decaying exponentials; the divided difference as e^{k x1} (1 - e^{-2kd})/(2d) is
    # accurate for every k > 0, however small kd is
    r = xp.sqrt(D)
    z1, z2 = k * (m + r), k * (m - r)
    return 0.5 * (xp.expm1(z1) + xp.expm1(z2)), xp.exp(z1) * (-xp.expm1(-2.0 * k * r)) / (2.0 * r)


def _exp_trigonometric(xp, k, m, D):
    r = xp.sqrt(-D)
    em1 = xp.expm1(k * m)
    ekm = em1 + 1.0
    half_sin, half_cos = xp.sin(0.5 * k * r), xp.cos(0.5 * k * r)
    return em1 - 2.0 * ekm * half_sin**2, (2.0 * ekm / r) * half_sin * half_cos


def _exp_avg_dd(xp, k, m, D):
    r"""Average minus one and divided difference of :math:`e^{kx}` over :math:`x = m \pm \sqrt D`.

    Returns :math:`(e^{km}\cosh(k\sqrt D) - 1,\ e^{km}\sinh(k\sqrt D)/\sqrt D)`, for
    :math:`m + \mathrm{Re}\sqrt D \le 0` (decaying modes): nothing overflows. The closed forms
    are accurate in value for every k; the series in :math:`u = k^2 D` (used for
    :math:`|u| \le 1`) keeps the gradient accurate where :math:`\sqrt D` is tiny.
    """
    u = k * k * D
    return _piecewise(xp, u.shape, 2, [
        (xp.abs(u) <= _ENTIRE_SERIES_MAX, lambda *z: _exp_series(xp, *z), (k, m, D)),
        (u > _ENTIRE_SERIES_MAX, lambda *z: _exp_hyperbolic(xp, *z), (k, m, D)),
        (u < -_ENTIRE_SERIES_MAX, lambda *z: _exp_trigonometric(xp, *z), (k, m, D)),
    ])


def _exp_branches(xp, mask, m, D, body, args):
    r"""Split a symmetric-form branch by the mode's discriminant, so that a chunk of modes
    on one side of critical damping runs one closed form on whole arrays: only modes with
    :math:`|D| \le m^2/100` switch element by element (on :math:`k^2 D`)."""
    near = xp.abs(D) <= _NEAR_DOUBLE_ROOT * m * m

    def run(exp_pair):
        return lambda k, m, D, *rest: body(*exp_pair(xp, k, m, D), k, *rest)

    return [
        (mask & near, run(_exp_avg_dd), args),
        (mask & ~near & (D > 0.0), run(_exp_hyperbolic), args),
        (mask & ~near & (D < 0.0), run(_exp_trigonometric), args),
    ]


# --- the SDE model ---------------------------------------------------------------------------


def _sde_separated_coefficients(xp, g, P, D):
    r"""Per mode, well separated real roots: the roots and the k-free parts of H.

    Also returns the value-only weights :math:`(c_1, c_2, c_3)` of
    :math:`W = c_1\,\mathrm{expm1}(k x_1) - c_2\,\mathrm{expm1}(k x_2) - k c_3`
    (:math:`k\varphi_1(kx) = \mathrm{expm1}(kx)/x`; a mode with :math:`x_1 = 0`, that is
    :math:`\rho = \lambda = 0`, moves its :math:`k\sigma_1` into the linear term).
    """
    d = xp.sqrt(D)
    x1 = -P / (g + d)
    x2 = -(g + d)
    _, sinhc1, _ = _entire(xp, 0.25 * x1 * x1)
    _, sinhc2, _ = _entire(xp, 0.25 * x2 * x2)
    sigma1, sigma2 = 1.0 / sinhc1**2, 1.0 / sinhc2**2
    chi_difference = xp.cosh(0.5 * x1) / sinhc1 - xp.cosh(0.5 * x2) / sinhc2
    inv_d = 1.0 / d
    zero = x1 == 0.0
    c1 = xp.where(zero, 0.0 * x1, sigma1 * inv_d / xp.where(zero, 1.0 + 0.0 * x1, x1))
    c2 = sigma2 * inv_d / x2
    c3 = inv_d * (chi_difference - xp.where(zero, sigma1, 0.0 * sigma1))
    return x1, x2, sigma1, sigma2, chi_difference, inv_d, c1, c2, c3


def _sde_symmetric_coefficients(xp, g, D):
    r"""Per mode, near-critical or complex roots: :math:`m, \bar\psi, [\psi], [\chi(x/2)]`."""
    m = -g
    cosh_m1, sinhc, sinhc_m1 = _entire(xp, D)
    _, _, sinhc_m1_mm = _entire(xp, m * m)
    sh2 = xp.sinh(0.5 * m) ** 2  # sinh^2(m/2)
    cm, sm = xp.cosh(m), xp.sinh(m)
    product = sh2 - 0.5 * cosh_m1  # sinh(x1/2) sinh(x2/2)
    base = 2.0 * sh2 + cm * cosh_m1  # cosh m cosh d - 1
    denominator = 8.0 * product * product
    psi_average = (m * base - D * sm * sinhc) / denominator
    psi_dd = (base - m * sm * sinhc) / denominator
    chi_dd = m * (sinhc_m1_mm - sinhc_m1) / (4.0 * product)
    return m, psi_average, psi_dd, chi_dd


def _sde(xp, k, eta, beta, h):
    g = (1.0 - beta) / (1.0 + beta)  # eta * gamma
    P = 2.0 * eta * h / (1.0 + beta)  # (eta * omega)^2
    D = g * g - P  # eta^2 (gamma^2 - omega^2)
    mode_shape = xp.shape(g, P, D)
    separated = D > _SEPARATED * g * g

    x1, x2, s1, s2, dchi, inv_d, c1, c2, c3 = _piecewise(xp, mode_shape, 9, [
        (separated, lambda g, P, D: _sde_separated_coefficients(xp, g, P, D), (g, P, D)),
    ])
    m, psi_avg, psi_dd, chi_dd = _piecewise(xp, mode_shape, 4, [
        (~separated, lambda g, D: _sde_symmetric_coefficients(xp, g, D), (g, D)),
    ])

    if xp.differentiable:
        # the series of phi1 near 0 keeps the gradient in x1 accurate (see _phi1)
        def separated_sum(k, x1, x2, s1, s2, dchi, inv_d):
            return k * inv_d * (s1 * _phi1(xp, k * x1) - s2 * _phi1(xp, k * x2) - dchi)

        separated_args = (k, x1, x2, s1, s2, dchi, inv_d)
    else:
        def separated_sum(k, x1, x2, c1, c2, c3):
            return c1 * xp.expm1(k * x1) - c2 * xp.expm1(k * x2) - k * c3

        separated_args = (k, x1, x2, c1, c2, c3)

    def symmetric_sum(ec1, es, k, psi_avg, psi_dd, chi_dd):
        return 2.0 * (es * psi_avg + ec1 * psi_dd - k * chi_dd)

    # complex roots away from the double root: symmetric_sum with the damped cos/sin of
    # _exp_trigonometric written out and the per-mode factors folded in once per mode,
    # W = 2[psi] expm1(km) + e^{km} s (A c - B s) - 2k[chi(x/2)], s, c = sin, cos(k sqrt(-D)/2)
    oscillating = ~separated & (D < -_NEAR_DOUBLE_ROOT * g * g)
    root = xp.sqrt(xp.where(oscillating, -D, 1.0 + 0.0 * D))

    def oscillating_sum(k, m, half_root, A, B, two_psi_dd, two_chi_dd):
        em1 = xp.expm1(k * m)
        phase = k * half_root
        half_sin = xp.sin(phase)
        return (two_psi_dd * em1 + (em1 + 1.0) * half_sin * (A * xp.cos(phase) - B * half_sin)
                - k * two_chi_dd)

    shape = xp.shape(k, D)
    return _piecewise(xp, shape, 1, [
        (separated, separated_sum, separated_args),
        (oscillating, oscillating_sum,
         (k, m, 0.5 * root, 4.0 * psi_avg / root, 4.0 * psi_dd, 2.0 * psi_dd, 2.0 * chi_dd)),
        *_exp_branches(xp, ~separated & ~oscillating, -g, D, symmetric_sum,
                       (k, m, D, psi_avg, psi_dd, chi_dd)),
    ])


# --- the discrete model ----------------------------------------------------------------------


def _asinh2_sqrt(xp, q, half_s_over_sqrt_beta):
    r""":math:`\operatorname{asinh}^2\sqrt q` (q > 0), continued as :math:`-\theta^2` for q < 0."""
    small = xp.abs(q) <= _ASINH2_SERIES_MAX
    return _piecewise(xp, q.shape, 1, [
        (small, lambda q, c: q * _horner(_ASINH2, q), (q, half_s_over_sqrt_beta)),
        (q > _ASINH2_SERIES_MAX, lambda q, c: xp.arcsinh(xp.sqrt(q)) ** 2,
         (q, half_s_over_sqrt_beta)),
        (q < -_ASINH2_SERIES_MAX, lambda q, c: -xp.arctan2(xp.sqrt(-q), c) ** 2,
         (q, half_s_over_sqrt_beta)),
    ])


def _discrete_slow_root_coefficients(xp, a, beta, E, s):
    r"""Per mode, well separated positive roots: :math:`W = c_1 k\varphi_1(k\ell) - c_2 [w^k]`.

    Also returns :math:`\ell = \log w_1`, the root ratio :math:`r = w_2/w_1`,
    :math:`\ell_r = \log r` and the scale of :math:`[w^k] = w_1^k (1 - r^k)\,\mathrm{scale}`:
    :math:`1/(w_1(1 - r))` for :math:`r \le 1/2`, else :math:`-1/(w_1\,\mathrm{expm1}(\ell_r))`
    with :math:`1 - r^k = -\mathrm{expm1}(k\ell_r)`.
    """
    root_e = xp.sqrt(E)
    w1 = 0.5 * s + root_e
    r = beta / (w1 * w1)
    e_over_a = 2.0 / ((1.0 - beta + a) + 2.0 * root_e)  # eps1 / a, finite as a -> 0
    eps1 = a * e_over_a  # 1 - w1 without cancellation
    ell = xp.log1p(-eps1)
    c1 = (1.0 + beta) * _log_ratio(xp, eps1) * e_over_a
    c2 = (1.0 + beta) * e_over_a - 1.0
    near = r > 0.5  # then beta > 0: log r = log beta - 2 log w1 loses nothing
    ell_r, scale = _piecewise(xp, r.shape, 2, [
        (near, lambda beta, ell: (xp.log(beta) - 2.0 * ell,
                                  xp.exp(-ell) / xp.expm1(xp.log(beta) - 2.0 * ell)), (beta, ell)),
        (~near, lambda r, ell: (0.0 * r, xp.exp(-ell) / (1.0 - r)), (r, ell)),
    ])
    return ell, c1, c2, r, ell_r, scale


def _discrete_negative_root_coefficients(xp, a, beta, E, s):
    """Per mode, well separated negative roots (s <= 0): W = c0 (1 - w1^k) - c3 [w^k]."""
    root_e = xp.sqrt(xp.maximum(E, 1e-300))
    w1 = -0.5 * s + root_e  # |dominant root|
    r = beta / xp.maximum(w1 * w1, 1e-300)
    c0 = (1.0 + beta) / a
    c3 = c0 * (1.0 + w1 - a / (1.0 + beta))
    return c0, c3, xp.maximum(w1, 1e-300), r, 1.0 / (1.0 - r)


def _discrete_symmetric_coefficients(xp, a, beta, E, s):
    """Per mode, near-double or complex roots: m, D and the weights of the symmetric form."""
    m = 0.5 * xp.log(beta)
    q = E / beta
    D = _asinh2_sqrt(xp, q, 0.5 * xp.abs(s) / xp.sqrt(beta))
    _, sinhc, _ = _entire(xp, D)
    c0 = (1.0 + beta) / a
    kappa = 0.5 * (1.0 - beta) * (1.0 - a / (1.0 + beta))
    negative = xp.where(s < 0.0, 1.0 + 0.0 * s, 0.0 * s)
    return m, D, c0, kappa / (xp.sqrt(beta) * sinhc), negative


def _discrete(xp, k, eta, beta, h):
    a = eta * h
    s = 1.0 + beta - a  # trace of M
    # ((w1 - w2)/2)^2 = (s^2 - 4 beta)/4 = ((1 - beta)^2 - a (2 (1 + beta) - a))/4: of the two
    # polynomials take the one whose largest term is smaller (the second for small modes,
    # where s^2 - 4 beta cancels; the first near a = 1 + beta, where beta = 0 leaves s^2 exact)
    trace_form = s * s - 4.0 * beta
    small_a_form = (1.0 - beta) ** 2 - a * (2.0 * (1.0 + beta) - a)
    trace_scale = xp.maximum(s * s, 4.0 * beta)
    small_a_scale = xp.maximum(xp.maximum((1.0 - beta) ** 2, 2.0 * (1.0 + beta) * a), a * a)
    E = 0.25 * xp.where(trace_scale < small_a_scale, trace_form, small_a_form)
    mode_shape = xp.shape(a, s, E, beta)
    stable = a < 2.0 * (1.0 + beta)
    # roots well separated: real, with ratio w2/w1 < sqrt(beta), i.e. D > m^2/4 in x = log w
    positive_e = xp.where(E > 0.0, E, 0.0 * E)
    big = 0.5 * xp.abs(s) + xp.sqrt(positive_e)
    ratio = xp.where(big > 0.0, beta / xp.where(big > 0.0, big * big, 1.0 + 0.0 * big), 0.0 * big)
    separated = stable & (((E > 0.0) & (ratio < xp.sqrt(beta))) | (beta == 0.0))
    slow = separated & (s > 0.0)
    negative = separated & ~(s > 0.0)
    symmetric = stable & ~separated

    args = (a, beta, E, s)
    ell, c1, c2, rp, ell_r, inv_p = _piecewise(xp, mode_shape, 6, [
        (slow, lambda *z: _discrete_slow_root_coefficients(xp, *z), args)])
    c0n, c3n, w1n, rn, inv_n = _piecewise(xp, mode_shape, 5, [
        (negative, lambda *z: _discrete_negative_root_coefficients(xp, *z), args)])
    m, D, c0s, cdd, neg = _piecewise(xp, mode_shape, 5, [
        (symmetric, lambda *z: _discrete_symmetric_coefficients(xp, *z), args)])

    def parity(k):
        return 1.0 - 2.0 * xp.mod2(k)  # (-1)^k for integer-valued k

    def slow_sum_far(k, ell, c1, c2, r, scale):
        decay_m1 = xp.expm1(k * ell)  # w1^k - 1
        power_dd = (1.0 + decay_m1) * (1.0 - r**k) * scale  # [w^k] over the two roots
        return c1 * _k_phi1(xp, decay_m1, k, ell) - c2 * power_dd

    def slow_sum_near(k, ell, c1, c2, ell_r, scale):
        # r near 1: (1 - r^k)/(1 - r) from log r, not from the rounded 1 - r
        decay_m1 = xp.expm1(k * ell)
        power_dd = (1.0 + decay_m1) * xp.expm1(k * ell_r) * scale
        return c1 * _k_phi1(xp, decay_m1, k, ell) - c2 * power_dd

    def negative_sum(k, c0, c3, w1, r, inv):
        sign = parity(k)
        return c0 * (1.0 - sign * w1**k) + sign * c3 * w1 ** (k - 1.0) * (1.0 - r**k) * inv

    def symmetric_sum(ec1, es, k, c0, cdd, neg):
        # reflected roots w = -w~ (s < 0): avg w^k = (-1)^k avg w~^k, [w^k] = -(-1)^k [w~^k]
        sign = 1.0 - neg * (1.0 - parity(k))
        sign_dd = 1.0 - neg * (1.0 + parity(k))
        return c0 * ((1.0 - sign) - sign * ec1 - sign_dd * cdd * es)

    # every branch gives exactly 0 at k = 0
    shape = xp.shape(k, a)
    out = _piecewise(xp, shape, 1, [
        (slow & (rp <= 0.5), slow_sum_far, (k, ell, c1, c2, rp, inv_p)),
        (slow & (rp > 0.5), slow_sum_near, (k, ell, c1, c2, ell_r, inv_p)),
        (negative, negative_sum, (k, c0n, c3n, w1n, rn, inv_n)),
        *_exp_branches(xp, symmetric, m, D, symmetric_sum, (k, m, D, c0s, cdd, neg)),
    ])
    if xp.all(stable):
        return out
    return xp.where(xp.full_mask(~stable, shape), out + float("nan"), out)


def lag_weighted_velocity_sum(rho, k, *, eta, beta, lam, model):
    r"""The lag-weighted velocity sum :math:`W(k) = k + 2\sum_{j=1}^{k-1}(k - j)C(j)` of eq. (13).

    Kunin et al. 2023, eq. (13) with docs/theory.md sections 5-6: per mode,
    :math:`E\|\Delta_k\|^2 = \eta^2\,\mathrm{Var}_{ss}(v)\,W(k)`. ``k`` is a number of SGD
    steps (continuous lag :math:`\tau = \eta j` inside the SDE correlation); :math:`W(0) = 0`,
    :math:`W(1) = 1`. Closed form, :math:`O(1)` work per element.

    Parameters
    ----------
    rho, k, eta, beta, lam
        Already validated (rho >= 0, k >= 0 and integer-valued for ``"discrete"``, eta > 0,
        0 <= beta < 1, lam >= 0), all NumPy float64 arrays (or Python floats), or all torch
        tensors of one dtype and device (kept; nothing moves to the CPU; float32 and lower
        precisions are evaluated in float64 on that device and rounded once, because the
        closed forms cancel by up to a factor 2/(1 - beta) near critical damping). They need only
        broadcast: the per-mode work is done at the broadcast shape of
        ``(rho, eta, beta, lam)``, so pass a spectrum as ``rho[:, None]`` against
        ``k[None, :]`` to pay it once per mode.
    model
        ``"sde"`` (the paper's theory, :math:`C(j) = [e^{-A\eta j}]_{22}`) or ``"discrete"``
        (the exact SGD recursion, :math:`C(j) = [M^jP]_{vv}/P_{vv}`).

    Returns
    -------
    W with the broadcast shape of all inputs, float64 for NumPy, the input dtype and device
    for torch; differentiable in torch with respect to rho, eta, beta and lam (finite
    gradients on the whole valid domain, critical damping included).
    For ``"discrete"``, modes beyond the stability edge :math:`\eta(\rho+\lambda) \ge
    2(1+\beta)` give NaN: the caller must reject them first.

    Raises
    ------
    ValueError
        For an unknown ``model``.
    """
    if model not in ("sde", "discrete"):
        raise ValueError(f"model must be 'sde' or 'discrete', got {model!r}")
    xp = _namespace((rho, k, eta, beta, lam))
    if xp.is_torch and xp.dtype != xp.torch.float64:
        # the closed forms cancel up to a factor 2/(1 - beta) between terms near critical
        # damping (about 4000 at beta = 0.999), more than float32's 1e-4 contract affords:
        # evaluate in float64 on the same device and round the result once
        wide = lag_weighted_velocity_sum(
            *(xp.asarray(v).double() for v in (rho, k)), model=model,
            eta=xp.asarray(eta).double(), beta=xp.asarray(beta).double(),
            lam=xp.asarray(lam).double())
        return wide.to(xp.dtype)
    rho, k, eta, beta, lam = (xp.asarray(v) for v in (rho, k, eta, beta, lam))
    h = rho + lam
    if model == "sde":
        return _sde(xp, k, eta, beta, h)
    return _discrete(xp, k, eta, beta, h)
