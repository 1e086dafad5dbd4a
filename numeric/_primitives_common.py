r"""NaN-safe primitives of the closed forms, written once for any array backend.

The generated kernels in :mod:`numeric._generated` call these functions by name; each one is
the numeric side of a SymPy function class in ``ousym.uniform`` (same name in CamelCase),
whose ``rewrite(Piecewise)`` gives the textbook three-regime form that the tests prove equal.

Every primitive is **regime-uniform**: one function for over-, under- and critically
damped modes, finite in value and in gradient on the whole valid domain, including exactly at
the regime boundary. The continuous-time primitives evaluate each regime only on the elements
it owns (gather, compute, scatter: no work on unused branches, nothing for a NaN to hide in);
the discrete-time ones use ``where`` with every branch fed a *safe* argument where it is not
selected, so that ``where`` (which evaluates both sides, in NumPy and in Torch) never sees a
NaN or an inf, not even in the backward pass.

Continuous time (the SDE of eq. 3 of Kunin et al. 2023, appendix F.2), with
:math:`\Delta = \gamma^2 - \omega^2` and :math:`x = \Delta t^2`:

* ``damped_cosh``        :math:`e^{-\gamma t}\cosh(\sqrt{\Delta}\,t)`
* ``damped_sinhc``       :math:`e^{-\gamma t}\sinh(\sqrt{\Delta}\,t)/\sqrt{\Delta}`
* ``damped_cosh_plus``   :math:`e^{-\gamma t}(\cosh + \gamma\,\mathrm{sinhc})` = :math:`[e^{-A_l t}]_{11}`
* ``damped_cosh_minus``  :math:`e^{-\gamma t}(\cosh - \gamma\,\mathrm{sinhc})` = :math:`[e^{-A_l t}]_{22}`

Switches (documented, with the error they leave):

* :math:`|x| \le x_s = 10^{-2}`: the entire series :math:`\cosh\sqrt{x} = \sum x^n/(2n)!`,
  :math:`\sinh\sqrt{x}/\sqrt{x} = \sum x^n/(2n+1)!`, truncated after :math:`n = 5`
  (remainder below :math:`x_s^6/12! < 10^{-20}`), times :math:`e^{-\gamma t}`;
* :math:`x > x_s` (overdamped): two exponentials :math:`e^{r_\pm t}` with the slow root written
  without cancellation, :math:`r_+ = -\omega^2/(\gamma + \alpha)`, and
  :math:`e^{r_- t} = e^{r_+ t} e^{-2\alpha t}` with :math:`e^{-2\alpha t} < e^{-0.2}`: nothing
  overflows for any :math:`\gamma t`, and the sums in the diagonal entries lose at most a
  factor :math:`(1 + e^{-0.2})/(1 - e^{-0.2}) \approx 10` to cancellation; the exponent
  :math:`-2\alpha t` is held at or above -700 (the ratio only ever corrects a term of order 1
  relative to the mode's scale, and exp is several times slower into the subnormal range);
* :math:`x < -x_s` (underdamped): :math:`e^{-\gamma t}\cos\alpha t` and
  :math:`e^{-\gamma t}\sin(\alpha t)/\alpha` with :math:`\alpha t > 0.1`.

The small switch point keeps the series short (it costs one fused multiply-add per term
on every element it owns); the closed forms lose no more than the factor above there.

Discrete time (docs/theory.md section 6): powers of the one-mode SGD matrix
:math:`M = [[1 - x, \eta\beta], [-h, \beta]]` with :math:`x = \eta h`, by Cayley-Hamilton:
with :math:`m = \mathrm{tr} M/2 = (1 + \beta - x)/2`, :math:`\delta = m^2 - \det M = m^2 - \beta`
and :math:`N = M - mI` (so :math:`N^2 = \delta I`),

.. math::
    M^k = c_k I + s_k N,\qquad c_k = \tfrac12(\mu_+^k + \mu_-^k),\qquad
    s_k = \frac{\mu_+^k - \mu_-^k}{\mu_+ - \mu_-},\qquad \mu_\pm = m \pm \sqrt{\delta},

both polynomials in :math:`\delta` (entire functions of the discriminant; :math:`s_k` is the
Lucas sequence :math:`s_{k+1} = 2m s_k - \beta s_{k-1}`). With :math:`p = N_{11} = (1-\beta-x)/2`:

* ``momentum_power_s``   :math:`s_k`
* ``momentum_power_aa``  :math:`c_k + p s_k = [M^k]_{11}`
* ``momentum_power_vv``  :math:`c_k - p s_k = [M^k]_{22}`

Switches: :math:`k^2|\delta| \le m^2`: the binomial series
:math:`c_k = m^k\sum_i \binom{k}{2i} u^i`, :math:`s_k = m^{k-1}\sum_i\binom{k}{2i+1}u^i`,
:math:`u = \delta/m^2`, 13 terms (remainder below :math:`1/26!`); real roots otherwise:
the dominant root :math:`|\mu_d| = 1 - \varepsilon` with :math:`\varepsilon = \chi/(1 - |m| +
\sqrt\delta)`, :math:`\chi = \det(I \mp M) = x` or :math:`2(1+\beta) - x` (no cancellation
near :math:`\mu = \pm1`, which is where slow modes and the stability edge live), the other root
:math:`\beta/\mu_d` (also without cancellation; it is 0 for :math:`\beta = 0`), a negative
dominant root (:math:`x > 1 + \beta`) carrying the sign :math:`(-1)^k`; complex roots
otherwise: :math:`\beta^{k/2}\cos k\varphi` and :math:`\beta^{k/2}\sin(k\varphi)/\sqrt{-\delta}`,
:math:`\varphi = \operatorname{atan2}(\sqrt{-\delta}, m)`. ``k`` must be integer-valued.

At :math:`\beta = 0,\ x = 1` (:math:`M` nilpotent, :math:`m = 0`) the powers of :math:`m` are
taken with ``pow``, whose gradient :math:`k m^{k-1}` is right there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial
from typing import Any, Callable

__all__ = ["Ops", "make_primitives", "SERIES_MAX_CONTINUOUS", "SERIES_TERMS_CONTINUOUS",
           "SERIES_TERMS_DISCRETE"]

#: |Delta t^2| at or below which the continuous-time primitives use their series.
SERIES_MAX_CONTINUOUS = 1e-2
#: Number of series terms n = 0..SERIES_TERMS_CONTINUOUS - 1 used there.
SERIES_TERMS_CONTINUOUS = 6
#: Number of binomial-series terms used for k^2 |delta| <= m^2.
SERIES_TERMS_DISCRETE = 13

#: Share of the elements above which the majority regime runs on the whole arrays (its
#: foreign elements replaced by one of its own) rather than on its gathered elements.
_WHOLE_ARRAY_SHARE = 0.75

#: Lower bound on the exponent of the ratio e^{-2 alpha t} of the two overdamped exponentials.
_FAST_EXPONENT_FLOOR = -700.0

_COSH_COEFFICIENTS = [1.0 / factorial(2 * n) for n in range(SERIES_TERMS_CONTINUOUS)]
_SINHC_COEFFICIENTS = [1.0 / factorial(2 * n + 1) for n in range(SERIES_TERMS_CONTINUOUS)]


@dataclass(frozen=True)
class Ops:
    """The handful of elementwise operations the primitives need, for one backend."""

    where: Callable[..., Any]
    exp: Callable[[Any], Any]
    expm1: Callable[[Any], Any]
    log: Callable[[Any], Any]
    log1p: Callable[[Any], Any]
    sqrt: Callable[[Any], Any]
    cos_sin: Callable[[Any], Any]  # x -> (cos x, sin x)
    abs: Callable[[Any], Any]
    atan2: Callable[[Any, Any], Any]
    fmod: Callable[[Any, Any], Any]
    maximum: Callable[[Any, Any], Any]
    clamp_min: Callable[[Any, float], Any]  # (a, c) -> max(a, c), c a number
    pow: Callable[[Any, Any], Any]
    broadcast: Callable[..., Any]
    broadcast_to: Callable[[Any, Any], Any]
    scatter: Callable[[Any, Any, Any], Any]  # (full array, flat indices, values) -> full array
    count: Callable[[Any], int]
    first_true: Callable[[Any], int]
    indices: Callable[[Any], Any]  # flat indices of the true elements of a mask
    gather: Callable[[Any, Any], Any]  # (full array, flat indices) -> values
    # (shape, [flat indices], [values]) -> a fresh array of that shape; the index sets
    # partition it
    assemble: Callable[[Any, Any, Any], Any]
    one_like: Callable[[Any], Any]
    multiply_add: Callable[[Any, Any, float], Any]  # (a, b, c) -> a * b + c, c a number


def _size(a) -> int:
    return _size_of(a.shape)


def _size_of(shape) -> int:
    size = 1
    for n in shape:
        size *= int(n)
    return size


def _horner(coefficients, x):
    total = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        total = total * x + c
    return total


def make_primitives(ops: Ops) -> dict[str, Callable[..., Any]]:
    """Build the primitive functions for one backend; returns ``{name: function}``."""
    where = ops.where

    # ---- continuous time --------------------------------------------------------------------
    # Each regime is evaluated only on the elements it owns (gather, compute, scatter), so a
    # branch never sees an argument outside its domain, in value or in gradient, and no work
    # is spent on unused branches; when every element is in one regime (the common case) the
    # branch runs on the whole arrays with no gather at all.
    def _by_regime(arrays, regimes):
        shape = ops.broadcast(*arrays)[0].shape
        # one-element arguments stay scalars (no full-size copies to gather from)
        arrays = [a.reshape(()) if _size(a) == 1 else ops.broadcast_to(a, shape) for a in arrays]
        total = _size_of(shape)
        # the regimes partition the elements: the last count is what the others leave
        counts = [ops.count(mask) for mask, _ in regimes[:-1]]
        counts.append(total - sum(counts))
        major = max(range(len(regimes)), key=counts.__getitem__)
        if counts[major] == total:  # one regime everywhere (or no elements at all)
            return ops.broadcast_to(regimes[major][1](*arrays), shape)
        if counts[major] < _WHOLE_ARRAY_SHARE * total:
            # mixed: every regime on its own elements only, assembled in one scatter
            flats, parts = [], []
            for (mask, branch), count in zip(regimes, counts):
                if count == 0:
                    continue
                flat = ops.indices(mask)
                flats.append(flat)
                parts.append(ops.broadcast_to(
                    branch(*(a if _size(a) == 1 else ops.gather(a, flat) for a in arrays)),
                    flat.shape))
            return ops.assemble(shape, flats, parts)
        # the majority regime runs on the whole arrays, its foreign elements replaced by one of
        # its own (so it stays in its domain); the others run on their elements only
        def owned_by(mask):
            index = ops.first_true(mask)
            return [a if _size(a) == 1 else ops.where(mask, a, a.reshape(-1)[index])
                    for a in arrays]

        out = regimes[major][1](*owned_by(regimes[major][0]))
        if tuple(out.shape) != tuple(shape):  # a fresh full-size array to scatter into
            out = ops.broadcast_to(out, shape) * 1.0
        for index, ((mask, branch), count) in enumerate(zip(regimes, counts)):
            if count == 0 or index == major:
                continue
            flat = ops.indices(mask)  # flat positions of this regime's elements
            values = branch(*(a if _size(a) == 1 else ops.gather(a, flat) for a in arrays))
            out = ops.scatter(out, flat, values)
        return out

    def _damped(gamma, omega2, t, series, over, under):
        """Evaluate ``series(g, t, x, decay)``, ``over(g + alpha, t, alpha, slow, e_slow, fast)``
        (``fast`` = :math:`(r_- - r_+)t = -2\alpha t`) or ``under(g, t, alpha, decay, cos, sin)``
        on the elements of each regime."""
        x = (gamma * gamma - omega2) * t * t

        def series_branch(g, w2, tt):
            return series(g, tt, (g * g - w2) * tt * tt, ops.exp(-g * tt))

        def over_branch(g, w2, tt):
            alpha = ops.sqrt(g * g - w2)
            g_plus_alpha = g + alpha
            slow = -w2 / g_plus_alpha  # r_+ = -gamma + alpha, without cancellation
            # (r_- - r_+) t = -2 alpha t < -0.2 here: the branch takes its exp or expm1. Below
            # -700 it is held at -700: e^{-2 alpha t} is only ever a relative correction, to 1
            # or to the slow term, so below e^{-700} ~ 1e-304 its value cannot matter, and exp
            # runs several times slower into the subnormal range
            fast = ops.clamp_min(-2.0 * alpha * tt, _FAST_EXPONENT_FLOOR)
            return over(g_plus_alpha, tt, alpha, slow, ops.exp(slow * tt), fast)

        def under_branch(g, w2, tt):
            alpha = ops.sqrt(w2 - g * g)
            phase = alpha * tt
            return under(g, tt, alpha, ops.exp(-g * tt), *ops.cos_sin(phase))

        over_mask = x > SERIES_MAX_CONTINUOUS
        under_mask = x < -SERIES_MAX_CONTINUOUS
        return _by_regime((gamma, omega2, t), [
            (over_mask, over_branch),
            (under_mask, under_branch),
            (~(over_mask | under_mask), series_branch),
        ])

    def _fused_horner(coefficients, x):
        total = x * coefficients[-1] + coefficients[-2]
        for c in reversed(coefficients[:-2]):
            total = ops.multiply_add(total, x, c)
        return total

    def _series_cosh(x):
        return _fused_horner(_COSH_COEFFICIENTS, x)

    def _series_sinhc(x):
        return _fused_horner(_SINHC_COEFFICIENTS, x)

    def damped_cosh(gamma, omega2, t):
        return _damped(
            gamma, omega2, t,
            series=lambda g, tt, x, decay: decay * _series_cosh(x),
            over=lambda g_alpha, tt, alpha, slow, e_slow, fast:
                e_slow * (1.0 + ops.exp(fast)) * 0.5,
            under=lambda g, tt, alpha, decay, cos, sin: decay * cos,
        )

    def damped_sinhc(gamma, omega2, t):
        return _damped(
            gamma, omega2, t,
            series=lambda g, tt, x, decay: decay * tt * _series_sinhc(x),
            over=lambda g_alpha, tt, alpha, slow, e_slow, fast:
                e_slow * (-ops.expm1(fast)) / (2.0 * alpha),
            under=lambda g, tt, alpha, decay, cos, sin: decay * sin / alpha,
        )

    def damped_cosh_plus(gamma, omega2, t):
        # overdamped: [(gamma + alpha) e^{r+ t} + r_+ e^{r- t}] / (2 alpha), both terms accurate
        return _damped(
            gamma, omega2, t,
            series=lambda g, tt, x, decay: decay * (_series_cosh(x) + g * tt * _series_sinhc(x)),
            over=lambda g_alpha, tt, alpha, slow, e_slow, fast:
                e_slow * (g_alpha + slow * ops.exp(fast)) / (2.0 * alpha),
            under=lambda g, tt, alpha, decay, cos, sin: decay * (cos + g * sin / alpha),
        )

    def damped_cosh_minus(gamma, omega2, t):
        # overdamped: [r_+ e^{r+ t} + (gamma + alpha) e^{r- t}] / (2 alpha)
        return _damped(
            gamma, omega2, t,
            series=lambda g, tt, x, decay: decay * (_series_cosh(x) - g * tt * _series_sinhc(x)),
            over=lambda g_alpha, tt, alpha, slow, e_slow, fast:
                e_slow * (slow + g_alpha * ops.exp(fast)) / (2.0 * alpha),
            under=lambda g, tt, alpha, decay, cos, sin: decay * (cos - g * sin / alpha),
        )

    # ---- discrete time: powers of the SGD matrix -----------------------------------------------
    def _signed_power(sign_negative, log_magnitude, k):
        """(+-1)^k * exp(k log|mu|) for integer-valued k >= 0 (k * log never 0 * -inf)."""
        magnitude = ops.exp(k * log_magnitude)
        odd = ops.fmod(k, 2.0) == 1.0
        return where(sign_negative & odd, -magnitude, magnitude)

    def _log_magnitude(magnitude, one_minus_magnitude, valid):
        """log|mu| from whichever of |mu| and 1 - |mu| is accurate (both given, both exact
        in exact arithmetic): log1p(-(1 - |mu|)) near |mu| = 1, log|mu| near 0."""
        near_one = magnitude > 0.5
        safe_small = where(valid & ~near_one, magnitude, 1.0)
        safe_complement = where(valid & near_one, one_minus_magnitude, 0.0)
        return where(near_one, ops.log1p(-safe_complement), ops.log(safe_small))

    def _momentum(x, beta, k):
        m = (1.0 + beta - x) * 0.5
        one_minus_beta = 1.0 - beta
        p = (one_minus_beta - x) * 0.5
        # delta = m^2 - beta = p^2 - beta x: whichever form has the smaller terms rounds less
        # (p^2 - beta x for slow modes at beta ~ 1, m^2 - beta beyond x = 1 + beta; both exact
        # at beta = 0)
        delta = where(m * m < p * p, m * m - beta, p * p - beta * x)
        negative = m < 0.0
        # 1 - |m|, and chi = det(I - sign(m) M), both without cancellation near |mu| = 1
        one_minus_abs_m = where(negative, (3.0 + beta - x) * 0.5, (one_minus_beta + x) * 0.5)
        chi = where(negative, 2.0 * (1.0 + beta) - x, x)

        series = k * k * ops.abs(delta) <= m * m
        real = (~series) & (delta > 0.0)
        cplx = (~series) & (delta < 0.0)

        # series branch: m^k and m^(k-1) via log(|m|) or log1p(-(1 - |m|)); m = 0 apart
        nonzero_m = m != 0.0
        abs_m = ops.abs(m)
        log_abs_m = _log_magnitude(abs_m, one_minus_abs_m, nonzero_m & series)
        k_minus_one = ops.maximum(k - 1.0, 0.0 * k)
        one = ops.one_like(k)
        # at m = 0 exactly, pow(m, k) carries the right gradient k m^(k-1) (1 for k = 1)
        zero_m = where(nonzero_m, 0.0 * m, m)
        m_k = where(nonzero_m, _signed_power(negative, log_abs_m, k), ops.pow(zero_m, k))
        m_k1 = where(nonzero_m, _signed_power(negative, log_abs_m, k_minus_one),
                     ops.pow(zero_m, k_minus_one))
        u = where(series & nonzero_m, delta, 0.0) / where(nonzero_m, m * m, 1.0)
        c_poly = ops.one_like(k)
        term = ops.one_like(k)
        for i in range(SERIES_TERMS_DISCRETE - 1):
            term = term * u * (k - 2 * i) * (k - 2 * i - 1) / ((2 * i + 1) * (2 * i + 2))
            c_poly = c_poly + term
        s_poly = k * ops.one_like(k)
        term = k * ops.one_like(k)
        for i in range(SERIES_TERMS_DISCRETE - 1):
            term = term * u * (k - 2 * i - 1) * (k - 2 * i - 2) / ((2 * i + 2) * (2 * i + 3))
            s_poly = s_poly + term

        # real branch: dominant root |mu_d| = 1 - eps, other root beta / mu_d, q = (mu_o/mu_d)
        root = ops.sqrt(where(real, delta, 1.0))
        denominator = where(real, one_minus_abs_m + root, 1.0)
        eps = where(real, chi, 0.0) / denominator
        log_mu = _log_magnitude(abs_m + root, eps, real)
        mu_k = _signed_power(negative, log_mu, k)
        # q^k = exp(k (log beta - 2 log|mu_d|)): its rounding is that of the decay rates; the
        # k = 0, 1 cases apart keep beta = 0 (q = 0) finite in value and gradient
        one = ops.one_like(k)
        positive_beta = beta > 0.0
        log_q = where(positive_beta, ops.log(where(positive_beta, beta, 1.0)) - 2.0 * log_mu, 0.0)
        q_k = where(k == 0.0, one, where(k == 1.0, beta * ops.exp(-2.0 * log_mu),
                                          where(positive_beta, ops.exp(k * log_q), 0.0)))
        sign_m = where(negative, -one, one)
        # sqrt(delta) + |p| and sqrt(delta) - |p| = -beta x / (sqrt(delta) + |p|)
        root_plus = root + ops.abs(p)
        root_minus = -beta * x / root_plus

        # complex branch: |mu| = sqrt(beta), phase phi
        beta_c = where(cplx, beta, 1.0)
        root_c = ops.sqrt(where(cplx, -delta, 1.0))
        phi = ops.atan2(root_c, m)
        modulus_k = ops.exp(0.5 * k * ops.log(beta_c))
        cos_k, sin_k = ops.cos_sin(k * phi)
        return dict(m=m, p=p, series=series, real=real, m_k=m_k, m_k1=m_k1, c_poly=c_poly,
                    s_poly=s_poly, root=root, mu_k=mu_k, q_k=q_k, sign_m=sign_m,
                    root_plus=root_plus, root_minus=root_minus, modulus_k=modulus_k,
                    cos_k=cos_k, sin_k=sin_k, root_c=root_c, nonzero_m=nonzero_m)

    def momentum_power_s(x, beta, k):
        d = _momentum(x, beta, k)
        series = d["m_k1"] * d["s_poly"]
        real = d["sign_m"] * d["mu_k"] * (1.0 - d["q_k"]) / (2.0 * d["root"])
        cplx = d["modulus_k"] * d["sin_k"] / d["root_c"]
        return where(d["series"], series, where(d["real"], real, cplx))

    def _momentum_diagonal(x, beta, k, sign):
        d = _momentum(x, beta, k)
        p = sign * d["p"]
        m_safe = where(d["nonzero_m"], d["m"], 1.0)
        series = where(d["nonzero_m"],
                       d["m_k"] * (d["c_poly"] + p / m_safe * d["s_poly"]),
                       d["m_k"] * d["c_poly"] + p * d["m_k1"] * d["s_poly"])
        # c_k + p s_k = mu_d^k [(sqrt(delta) + sign(m) p) + (sqrt(delta) - sign(m) p) q^k] / (2 sqrt(delta))
        aligned = d["sign_m"] * p >= 0.0
        lead = where(aligned, d["root_plus"], d["root_minus"])
        trail = where(aligned, d["root_minus"], d["root_plus"])
        real = d["mu_k"] * (lead + trail * d["q_k"]) / (2.0 * d["root"])
        cplx = d["modulus_k"] * (d["cos_k"] + p * d["sin_k"] / d["root_c"])
        return where(d["series"], series, where(d["real"], real, cplx))

    def momentum_power_aa(x, beta, k):
        return _momentum_diagonal(x, beta, k, +1.0)

    def momentum_power_vv(x, beta, k):
        return _momentum_diagonal(x, beta, k, -1.0)

    def spectral_fraction(rho, lam):
        """rho / (rho + lam), continued by its lam = 0 value 1 at rho = lam = 0."""
        h = rho + lam
        positive = h > 0.0
        return where(positive, rho / where(positive, h, 1.0), 1.0)

    return {
        "damped_cosh": damped_cosh,
        "damped_sinhc": damped_sinhc,
        "damped_cosh_plus": damped_cosh_plus,
        "damped_cosh_minus": damped_cosh_minus,
        "momentum_power_s": momentum_power_s,
        "momentum_power_aa": momentum_power_aa,
        "momentum_power_vv": momentum_power_vv,
        "spectral_fraction": spectral_fraction,
    }
