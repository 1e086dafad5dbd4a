r"""General Ornstein-Uhlenbeck numerics: decomposition, stationary and lag covariances, sampler.

The process is (docs/theory.md section 2, the general form of eq. 3 of Kunin et al. 2023)

.. math::

    dz = -A\,(z - \mu)\,dt + \sqrt{2\kappa^{-1} D}\,dW,

with a *stable* drift matrix :math:`A` (every eigenvalue has a positive real part; :math:`A`
need not be symmetric) and a symmetric positive semi-definite diffusion matrix :math:`D`.
Its stationary law is :math:`\mathcal N(\mu, \kappa^{-1} B)` where :math:`B` solves the Lyapunov
equation

.. math::

    A B + B A^\top = 2 D \qquad\text{(eq. 19)},

and the Kwon-Ao decomposition (eq. 22, 43) :math:`A = (D + Q) U` follows with
:math:`U = B^{-1}` and :math:`Q = A B - D`, skew-symmetric by construction. Eq. 24-25 of the
paper (a closed form in :math:`A`'s eigenbasis) hold only for symmetric :math:`A`; the Lyapunov
route used here holds for any stable :math:`A`.

Time is continuous time :math:`t` (for SGD, :math:`t = \eta k` with :math:`k` the step).

Array convention: ``A`` and ``D`` have shape ``(..., n, n)`` and broadcast against each other;
batch dimensions lead, matrix dimensions trail. Everything is computed in float64 NumPy.

Errors: an unstable ``A`` (an eigenvalue with real part :math:`\le 0`) or a ``D`` that is not
symmetric positive semi-definite raises ``ValueError`` saying which and by how much.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

__all__ = [
    "OUDecomposition",
    "ou_decomposition",
    "ou_lag_covariance",
    "ou_modified_loss",
    "ou_stationary_covariance",
    "sample_ou",
]

# Relative tolerance for "symmetric" and "positive semi-definite": D may carry rounding from
# the caller's arithmetic, a few hundred ulps of its largest entry.
_SYMMETRY_RTOL = 1e-10

# Largest matrix size solved by the batched Kronecker system (n^2 x n^2); larger matrices go
# through scipy's Bartels-Stewart solver one batch element at a time.
_KRONECKER_MAX_N = 8


class OUDecomposition(NamedTuple):
    r"""Kwon-Ao decomposition :math:`A = (D + Q) U` of an OU drift (eq. 22 and 43).

    Attributes
    ----------
    Q:
        ``(..., n, n)``, skew-symmetric: :math:`Q = A B - D`.
    U:
        ``(..., n, n)``, symmetric positive definite: :math:`U = B^{-1}`; the modified loss
        is :math:`\Psi(z) = \tfrac12 (z - \mu)^\top U (z - \mu)` (eq. 8, 39;
        :func:`ou_modified_loss`).
    B:
        ``(..., n, n)``, symmetric positive definite: the solution of
        :math:`A B + B A^\top = 2 D`, i.e. :math:`\kappa` times the stationary covariance.
    """

    Q: np.ndarray
    U: np.ndarray
    B: np.ndarray


def _as_square_batch(value, name):
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real array of shape (..., n, n), but got "
                        f"{type(value).__name__}") from error
    if array.ndim < 2 or array.shape[-1] != array.shape[-2] or array.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., n, n) with n >= 1, but got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, but it has non-finite entries")
    return array


def _check_drift_and_diffusion(A, D):
    A = _as_square_batch(A, "A")
    D = _as_square_batch(D, "D")
    if A.shape[-1] != D.shape[-1]:
        raise ValueError(f"A and D must have the same matrix size, but got A of shape "
                         f"{A.shape} and D of shape {D.shape}")
    try:
        batch = np.broadcast_shapes(A.shape[:-2], D.shape[:-2])
    except ValueError as error:
        raise ValueError(f"the batch shapes of A {A.shape[:-2]} and D {D.shape[:-2]} do not "
                         f"broadcast") from error
    real_parts = np.linalg.eigvals(A).real
    worst = real_parts.min(axis=-1)
    if np.any(worst <= 0):
        index = np.unravel_index(np.argmin(worst), worst.shape) if worst.ndim else ()
        raise ValueError(f"A must be stable (every eigenvalue with real part > 0), but an "
                         f"eigenvalue has real part {worst.min():.6g} <= 0"
                         + (f" (batch index {tuple(int(i) for i in index)})" if index else ""))
    scale = np.abs(D).max(axis=(-2, -1))
    asymmetry = np.abs(D - np.swapaxes(D, -1, -2)).max(axis=(-2, -1))
    if np.any(asymmetry > _SYMMETRY_RTOL * np.maximum(scale, np.finfo(float).tiny)):
        raise ValueError(f"D must be symmetric, but max |D - D^T| = {asymmetry.max():.6g} "
                         f"(largest |D| entry {scale.max():.6g}; relative tolerance "
                         f"{_SYMMETRY_RTOL:g})")
    D = 0.5 * (D + np.swapaxes(D, -1, -2))
    lowest = np.linalg.eigvalsh(D)[..., 0]
    if np.any(lowest < -_SYMMETRY_RTOL * np.maximum(scale, np.finfo(float).tiny)):
        raise ValueError(f"D must be positive semi-definite, but it has an eigenvalue "
                         f"{lowest.min():.6g} < 0 (largest |D| entry {scale.max():.6g})")
    shape = batch + A.shape[-2:]
    return np.broadcast_to(A, shape), np.broadcast_to(D, shape)


def _solve_lyapunov(A, C):
    """Solve A X + X A^T = C for every batch element (A stable, so the solution is unique)."""
    n = A.shape[-1]
    if n <= _KRONECKER_MAX_N:
        # vec(A X + X A^T) = (A (x) I + I (x) A) vec(X) in row-major vec; batched dense solve.
        eye = np.eye(n)
        kron = (np.einsum("...ij,kl->...ikjl", A, eye) + np.einsum("ij,...kl->...ikjl", eye, A))
        system = kron.reshape(A.shape[:-2] + (n * n, n * n))
        solution = np.linalg.solve(system, C.reshape(C.shape[:-2] + (n * n, 1)))
        return solution.reshape(C.shape)
    out = np.empty_like(C)
    for index in np.ndindex(A.shape[:-2]):
        out[index] = scipy.linalg.solve_continuous_lyapunov(A[index], C[index])
    return out


def _stationary_scaled_covariance(A, D):
    B = _solve_lyapunov(A, 2.0 * D)
    return 0.5 * (B + np.swapaxes(B, -1, -2))


def ou_decomposition(A, D):
    r"""Kwon-Ao decomposition :math:`A = (D + Q) U` for a stable drift and PSD diffusion.

    Solves :math:`A B + B A^\top = 2 D` (eq. 19), then :math:`U = B^{-1}` and
    :math:`Q = A B - D` (eq. 22, 43). :math:`Q` is skew-symmetric because
    :math:`(A B - D)^\top = B A^\top - D = D - A B`; the returned ``Q`` is exactly
    skew-symmetrised and ``B``, ``U`` exactly symmetrised (differences are rounding).

    Parameters
    ----------
    A:
        ``(..., n, n)`` real drift matrix, stable: every eigenvalue has a positive real part.
        It need not be symmetric (the SGD drift of docs/theory.md section 2 is not).
    D:
        ``(..., n, n)`` real symmetric positive semi-definite diffusion matrix; broadcasts
        against ``A``.

    Returns
    -------
    OUDecomposition
        ``(Q, U, B)``, float64 arrays of shape ``broadcast(A, D)``.

    Raises
    ------
    ValueError
        ``A`` unstable (the offending real part is given), ``D`` not symmetric or not PSD (the
        asymmetry or the negative eigenvalue is given), shapes that do not match, or ``B``
        singular (the pair ``(A, D)`` is not controllable, so ``U`` does not exist).
    """
    A, D = _check_drift_and_diffusion(A, D)
    B = _stationary_scaled_covariance(A, D)
    condition = np.linalg.cond(B)
    if np.any(~np.isfinite(condition) | (condition > 1.0 / np.finfo(float).eps)):
        raise ValueError(f"B (the solution of A B + B A^T = 2 D) is singular, condition number "
                         f"{np.max(condition):.3g}: the pair (A, D) is not controllable and "
                         f"U = B^-1 does not exist")
    U = np.linalg.inv(B)
    U = 0.5 * (U + np.swapaxes(U, -1, -2))
    Q = A @ B - D
    Q = 0.5 * (Q - np.swapaxes(Q, -1, -2))
    return OUDecomposition(Q=Q, U=U, B=B)


def ou_modified_loss(z, U, *, mean=None):
    r"""The modified loss :math:`\Psi(z) = \tfrac12 (z - \mu)^\top U (z - \mu)` (eq. 8, 39).

    This is the paper's normalisation (eq. 39, 45, 46; docs/theory.md section 3): with it the
    stationary density is the Gibbs law :math:`p_{ss} \propto e^{-\kappa\Psi}
    = N(\mu, \kappa^{-1} U^{-1})` (eq. 27, 36), and for SGD on least squares
    :math:`\Psi = \Psi_\theta + \Psi_v` with
    :math:`\Psi_v = v^\top H^{-1} v / (2\sigma^2)` (eq. 46). ``ousym.potentials`` derives
    the same expression.

    Parameters
    ----------
    z:
        ``(..., n)`` points in phase space.
    U:
        ``(..., n, n)`` symmetric matrix, e.g. ``ou_decomposition(A, D).U``; broadcasts
        against ``z``'s batch dimensions.
    mean:
        ``(..., n)`` the minimum :math:`\mu` (the stationary mean), or ``None`` for 0.

    Returns
    -------
    numpy.ndarray
        float64, ``broadcast(z.shape[:-1], U.shape[:-2], mean.shape[:-1])``.

    Raises
    ------
    ValueError
        ``U`` not square, sizes of ``z``, ``U`` and ``mean`` that do not match, non-finite
        entries.
    """
    U = _as_square_batch(U, "U")
    n = U.shape[-1]
    try:
        z = np.asarray(z, dtype=np.float64)
        center = np.zeros(n) if mean is None else np.asarray(mean, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"z and mean must be real arrays of shape (..., {n}), but got "
                        f"{type(z).__name__} and {type(mean).__name__}") from error
    for name, value in (("z", z), ("mean", center)):
        if value.ndim < 1 or value.shape[-1] != n:
            raise ValueError(f"{name} must have shape (..., {n}) to match U of shape "
                             f"{U.shape}, but got shape {value.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, but it has non-finite entries")
    displacement = z - center
    return 0.5 * np.einsum("...i,...ij,...j->...", displacement, U, displacement)


def _check_kappa(kappa):
    try:
        kappa = np.asarray(kappa, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"kappa must be a positive real number or array, but got "
                        f"{type(kappa).__name__}") from error
    if not np.all(np.isfinite(kappa) & (kappa > 0)):
        raise ValueError(f"kappa must be positive and finite, but got {kappa}")
    return kappa


def ou_stationary_covariance(A, D, *, kappa=1.0):
    r"""Stationary covariance :math:`\kappa^{-1} B` of the OU process (eq. 27).

    :math:`B` solves :math:`A B + B A^\top = 2 D`. For SGD, :math:`\kappa = S (1 - \beta^2)`
    (docs/theory.md section 2).

    Parameters
    ----------
    A, D:
        as in :func:`ou_decomposition`, shapes ``(..., n, n)``.
    kappa:
        positive inverse temperature, scalar or an array broadcasting against the batch shape.

    Returns
    -------
    numpy.ndarray
        float64, shape ``batch + (n, n)``, symmetric.

    Raises
    ------
    ValueError
        as :func:`ou_decomposition` (no controllability requirement), or ``kappa <= 0``.
    """
    A, D = _check_drift_and_diffusion(A, D)
    kappa = _check_kappa(kappa)
    return _stationary_scaled_covariance(A, D) / kappa[..., None, None]


def ou_lag_covariance(A, D, lag, *, kappa=1.0):
    r"""Stationary lag covariance :math:`\mathrm{Cov}(z(t + \tau), z(t)) = e^{-A\tau} B / \kappa`.

    ``lag`` is :math:`\tau` in continuous time (for SGD, :math:`\tau = \eta k` for a lag of
    :math:`k` steps; docs/theory.md section 5). For a negative lag the result is
    :math:`\kappa^{-1} B e^{-A^\top |\tau|}`, the transpose of the positive-lag value, so the
    formula holds for every real :math:`\tau`.

    Parameters
    ----------
    A, D:
        as in :func:`ou_decomposition`, shapes ``(..., n, n)``.
    lag:
        real scalar or array broadcasting against the batch shape.
    kappa:
        positive inverse temperature, scalar or array broadcasting against the batch shape.

    Returns
    -------
    numpy.ndarray
        float64, shape ``broadcast(batch, lag, kappa) + (n, n)``.

    Raises
    ------
    ValueError
        as :func:`ou_stationary_covariance`, or a non-finite ``lag``.
    """
    A, D = _check_drift_and_diffusion(A, D)
    kappa = _check_kappa(kappa)
    try:
        lag = np.asarray(lag, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"lag must be a real number or array, but got "
                        f"{type(lag).__name__}") from error
    if not np.all(np.isfinite(lag)):
        raise ValueError(f"lag must be finite, but got {lag}")
    covariance = _stationary_scaled_covariance(A, D) / kappa[..., None, None]
    shape = np.broadcast_shapes(A.shape[:-2], lag.shape, kappa.shape) + A.shape[-2:]
    A, covariance = np.broadcast_to(A, shape), np.broadcast_to(covariance, shape)
    tau = np.broadcast_to(lag, shape[:-2])[..., None, None]
    propagator = scipy.linalg.expm(-A * np.abs(tau))
    forward = propagator @ covariance
    return np.where(tau >= 0, forward, np.swapaxes(forward, -1, -2))


def sample_ou(A, D, z0, dt, num_steps, *, kappa=1.0, mean=None, rng=None):
    r"""Exact samples of the OU process on a grid of step ``dt``.

    The transition over a time ``dt`` is Gaussian and is sampled exactly (no discretisation
    error):

    .. math::

        z_{j+1} = \mu + e^{-A\,dt} (z_j - \mu) + \xi_j, \qquad
        \xi_j \sim \mathcal N\!\left(0,\; \Sigma_{ss} - e^{-A\,dt} \Sigma_{ss} e^{-A^\top dt}
        \right), \quad \Sigma_{ss} = \kappa^{-1} B

    (eq. 26 for the transient covariance). It is a process for which the theory holds exactly,
    which is what the tests use it for. To sample SGD with learning rate :math:`\eta` once per
    step, use ``dt = eta``.

    Parameters
    ----------
    A, D:
        as in :func:`ou_decomposition`, shapes ``(..., n, n)``.
    z0:
        initial state, shape ``(..., n)``; its batch dimensions broadcast against those of
        ``A`` and ``D`` (e.g. ``(seeds, n)`` for independent paths of one process).
    dt:
        positive time step (continuous time).
    num_steps:
        number of transitions, an integer ``>= 0``.
    kappa:
        positive scalar inverse temperature.
    mean:
        the stationary mean :math:`\mu`, shape ``(..., n)`` broadcasting against ``z0``;
        default 0.
    rng:
        ``numpy.random.Generator`` (or a seed for ``numpy.random.default_rng``).

    Returns
    -------
    numpy.ndarray
        float64 path of shape ``(num_steps + 1,) + batch + (n,)``: time leads (as in a
        recorded trajectory), row 0 is ``z0`` and row ``j`` is the state at time ``j * dt``.

    Raises
    ------
    ValueError
        as :func:`ou_stationary_covariance`; ``dt <= 0``; ``num_steps`` negative; ``z0`` or
        ``mean`` of the wrong size. ``TypeError`` for a non-integer ``num_steps``.
    """
    A, D = _check_drift_and_diffusion(A, D)
    n = A.shape[-1]
    kappa = _check_kappa(kappa)
    if kappa.ndim != 0:
        raise ValueError(f"kappa must be a scalar for sample_ou, but got shape {kappa.shape}")
    if not (np.isscalar(dt) or np.ndim(dt) == 0) or not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite scalar, but got {dt!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an integer, but got {type(num_steps).__name__}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, but got {num_steps}")
    z0 = np.asarray(z0, dtype=np.float64)
    if z0.ndim < 1 or z0.shape[-1] != n:
        raise ValueError(f"z0 must have shape (..., {n}) to match A, but got shape {z0.shape}")
    mean = np.zeros(n) if mean is None else np.asarray(mean, dtype=np.float64)
    if mean.ndim < 1 or mean.shape[-1] != n:
        raise ValueError(f"mean must have shape (..., {n}) to match A, but got shape "
                         f"{mean.shape}")
    rng = np.random.default_rng(rng)

    covariance = _stationary_scaled_covariance(A, D) / kappa
    propagator = scipy.linalg.expm(-A * float(dt))
    transition = covariance - propagator @ covariance @ np.swapaxes(propagator, -1, -2)
    transition = 0.5 * (transition + np.swapaxes(transition, -1, -2))
    # A symmetric square root through eigh: the transition covariance may be singular (or
    # carry tiny negative rounding), where a Cholesky factor would fail.
    values, vectors = np.linalg.eigh(transition)
    root = vectors * np.sqrt(np.clip(values, 0.0, None))[..., None, :]

    batch = np.broadcast_shapes(A.shape[:-2], z0.shape[:-1], mean.shape[:-1])
    path = np.empty((num_steps + 1,) + batch + (n,))
    path[0] = np.broadcast_to(z0, batch + (n,))
    deviation = path[0] - mean
    for j in range(num_steps):
        noise = rng.standard_normal(batch + (n,))
        deviation = (np.einsum("...ij,...j->...i", propagator, deviation)
                     + np.einsum("...ij,...j->...i", root, noise))
        path[j + 1] = mean + deviation
    return path
