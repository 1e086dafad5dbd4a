r"""Stationary second moments of SGD with momentum on least squares under real minibatch noise.

docs/theory.md section 7 (beyond Kunin et al. 2023). For ``L(theta) = ||Y - X theta^T||^2/(2N)``
with weights :math:`\theta\in\mathbb R^{c\times d}`, a batch of :math:`S` of the :math:`N` samples
gives a gradient whose noise has the conditional covariance

.. math::
    \mathrm{Cov}(\mathrm{vec}\,g_B\mid\theta) = c_S\,\Sigma(\theta),\qquad
    \Sigma(\theta) = \frac1N\sum_i (r_i r_i^\top)\otimes(x_i x_i^\top)
                     - \mathrm{vec}\,g\,\mathrm{vec}\,g^\top,

:math:`c_S = (N-S)/(S(N-1))` without replacement, :math:`1/S` with, quadratic in
:math:`e = \theta - \mu`. The recursion of eq. (2) is linear in :math:`(\theta, v)`, so the
stationary second moments solve a linear equation. In :math:`H`'s eigenbasis
(:math:`\tilde x = Q^\top x`, mode :math:`p = (j, l)`: output :math:`j`, eigenvector :math:`l`)
the stationary covariance of modes :math:`p, q` is :math:`\Xi_{pq} S_{lm}`, with :math:`S_{lm}`
the 2x2 Stein solution (generated from ``ousym.minibatch.cross_mode_stein``) and the noise
covariance

.. math::
    \Xi_{(j,l),(k,m)} = c_S\Big[\frac1N\sum_i (\tilde x_i^\top E_{jk}\tilde x_i
        + \bar r_{ij}\bar r_{ik})\,\tilde x_{il}\tilde x_{im}
        - \rho_l\rho_m (E_{jk})_{lm} - \bar g_{jl}\bar g_{km}\Big],

:math:`E_{jk}` the :math:`d\times d` block of position covariances of outputs :math:`j, k`,
:math:`\bar r_i = \mu x_i - y_i`, :math:`\bar g = -\lambda\mu`. Per-mode quantities need only the
diagonal blocks :math:`E_{jj}`, and the map acts on each block alike:

.. math::
    E_{jj} = \mathcal L(E_{jj}) + B_j,\qquad
    \mathcal L(E) = c_S\,T\circ\Big[\frac1N\tilde X^\top\mathrm{diag}(w(E))\tilde X
        - \rho\rho^\top\circ E\Big],\quad w_i(E) = \tilde x_i^\top E\,\tilde x_i,

with :math:`T_{lm} = [S_{lm}]_{aa}`. Second moments are finite iff the spectral radius of
:math:`\mathcal L` is below 1 (it crosses 1 where the radius of the one-step moment map does:
both maps are positive, and :math:`\mathcal L = (I - \mathcal M)^{-1}\mathcal N` splits the
one-step map :math:`\mathcal M + \mathcal N` into its deterministic and noise parts). The edge
does not depend on ``Y``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

__all__ = ["CLOSURES", "MinibatchMoments", "minibatch_moments", "minibatch_divergence_edge"]

CLOSURES = ("diagonal", "exact")
_EPS = np.finfo(np.float64).eps


# --- the 2x2 Stein coefficients (generated) ----------------------------------------------

def cross_mode_stein(h_l, h_m, *, eta, beta):
    """``(s_aa, s_av, s_va, s_vv)`` of ``S_lm = M_l S_lm M_m^T + G G^T`` for broadcasting
    curvatures ``h_l, h_m`` (generated from ``ousym.minibatch.cross_mode_stein``)."""
    from ._generated import numpy_kernels

    h_l, h_m = np.asarray(h_l, dtype=np.float64), np.asarray(h_m, dtype=np.float64)
    return numpy_kernels.minibatch_cross_mode_stein(h_l, h_m, np.float64(eta), np.float64(beta))


# --- the data of one least-squares problem -----------------------------------------------

def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _host(x) -> np.ndarray:
    if _is_torch(x):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class _Data:
    """The reductions of (X, Y) the moment equations need, in H's eigenbasis.

    ``xt`` (N, d) stays on the inputs' backend and device (and dtype); the d x d and smaller
    arrays are host float64.
    """

    num_samples: int
    xt: object
    rho: np.ndarray  # (d,) descending, clipped at 0
    eigenvectors: np.ndarray  # (d, d)
    mu_t: np.ndarray  # (c, d): mu in the eigenbasis
    rbar: object  # (N, c) residuals at mu, on the inputs' backend
    gbar_t: np.ndarray  # (c, d): -lam mu in the eigenbasis

    @functools.cached_property
    def fourth_moments(self) -> np.ndarray:
        r""":math:`K_{lm} = \frac1N\sum_i\tilde x_{il}^2\tilde x_{im}^2` (d x d), computed once."""
        x2 = _square(self.xt)
        return _host(x2.T @ x2) / self.num_samples

    @functools.cached_property
    def residual_moments(self) -> np.ndarray:
        r""":math:`\frac1N\sum_i\bar r_{ij}^2\tilde x_{il}^2` (c x d), computed once."""
        return _host(_square(self.rbar).T @ _square(self.xt)) / self.num_samples


def _check_matrix(value, name, ndim):
    shape = tuple(getattr(value, "shape", np.shape(value)))
    if len(shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, but got shape {shape}")
    return shape


def _prepare_inputs(X, Y):
    """Validate shapes and dtypes; keep torch tensors (device, dtype), NumPy as float64."""
    xs = _check_matrix(X, "X", 2)
    if Y is not None:
        ys = _check_matrix(Y, "Y", 2) if np.ndim(Y) == 2 or _is_torch(Y) else None
        if ys is None:
            raise ValueError(f"Y must be of shape (N, c), but got shape {np.shape(Y)}")
        if ys[0] != xs[0]:
            raise ValueError(f"X and Y must have the same number of rows N, but got X of shape "
                             f"{xs} and Y of shape {ys}")
    if xs[0] < 2:
        raise ValueError(f"X must hold at least 2 samples, but got shape {xs}")
    if _is_torch(X):
        import torch

        if not X.is_floating_point():
            X = X.double()
        if Y is not None:
            Y = torch.as_tensor(Y, dtype=X.dtype, device=X.device)
    else:
        X = np.asarray(X, dtype=np.float64)
        Y = None if Y is None else _host(Y)
    if not bool(np.isfinite(_host(X).sum())) or (Y is not None and not bool(
            np.isfinite(_host(Y).sum()))):
        raise ValueError("X and Y must be finite, but got NaN or Inf entries")
    return X, Y


_DATA_CACHE: OrderedDict = OrderedDict()


def _cached_data(X, Y, lam) -> _Data:
    """:func:`_data`, remembered for the last two NumPy problems (keyed by a hash of their
    bytes), so that a sweep over eta or the edge search pays the O(N d^2) reductions once."""
    if _is_torch(X):
        return _data(X, Y, lam)
    digest = hashlib.blake2b(digest_size=16)
    for array in (X, Y):
        if array is not None:
            digest.update(repr(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    key = (digest.hexdigest(), Y is None, float(lam))
    if key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        return _DATA_CACHE[key]
    data = _DATA_CACHE[key] = _data(X, Y, lam)
    while len(_DATA_CACHE) > 2:
        _DATA_CACHE.popitem(last=False)
    return data


def _data(X, Y, lam) -> _Data:
    n = X.shape[0]
    if _is_torch(X):
        hessian = _host(X.T @ X) / n
    else:
        hessian = X.T @ X / n
    rho, vectors = np.linalg.eigh(hessian)
    rho, vectors = np.clip(rho[::-1], 0.0, None), np.ascontiguousarray(vectors[:, ::-1])
    if _is_torch(X):
        import torch

        xt = X @ torch.as_tensor(vectors, dtype=X.dtype, device=X.device)
    else:
        xt = X @ vectors
    if Y is None:
        return _Data(n, xt, rho, vectors, np.zeros((0, rho.size)), None, np.zeros((0, rho.size)))
    h = rho + lam
    active = _active(h)
    b_t = _host(Y.T @ xt) / n  # (c, d)
    mu_t = np.where(active, b_t / np.where(active, h, 1.0), 0.0)
    if _is_torch(X):
        import torch

        rbar = xt @ torch.as_tensor(mu_t.T, dtype=X.dtype, device=X.device) - Y
    else:
        rbar = xt @ mu_t.T - Y
    return _Data(n, xt, rho, vectors, mu_t, rbar, -lam * mu_t)


def _active(h):
    """Modes that carry curvature: ``h > d eps h_max`` (modes with ``h = 0`` that no input
    spans get no noise and are left out, docs/theory.md section 7)."""
    return h > h.max(initial=0.0) * h.size * _EPS


def _square(x):
    return x * x


def _batch_factor(batch_size, num_samples, replacement):
    if replacement:
        return 1.0 / batch_size
    return (num_samples - batch_size) / (batch_size * (num_samples - 1))


def _single_threaded_blas():
    """One BLAS thread for the solver. Its products are skinny (N x d times d x d, or d x d
    matrix-vector in Lanczos), and multithreaded BLAS spin-waits collapse when the cores are
    shared: on a loaded 2-core machine one operator application on digits took 170 ms with the
    default threads and 7 ms with one. threadpoolctl ships with scikit-learn; without it the
    BLAS default is kept."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# --- validation ----------------------------------------------------------------------------

def _check_hyper(eta, beta, lam, batch_size, num_samples, replacement, closure):
    if eta is not None and not (isinstance(eta, (int, float, np.floating)) and math.isfinite(eta)
                                and eta > 0):
        raise ValueError(f"eta must be a finite float > 0, but got {eta!r}")
    if not (isinstance(beta, (int, float, np.floating)) and 0 <= beta < 1):
        raise ValueError(f"beta must be in [0, 1), but got {beta!r}")
    if not (isinstance(lam, (int, float, np.floating)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite float >= 0, but got {lam!r}")
    if not (isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
            and 1 <= batch_size <= num_samples):
        raise ValueError(f"batch_size must be an integer in [1, N = {num_samples}], but got "
                         f"{batch_size!r}")
    if not isinstance(replacement, (bool, np.bool_)):
        raise ValueError(f"replacement must be True or False, but got {replacement!r}")
    if closure not in CLOSURES:
        raise ValueError(f"closure must be one of {CLOSURES}, but got {closure!r}")


# --- the moment map ------------------------------------------------------------------------

class _MomentMap:
    r"""The stationary map :math:`E\mapsto\mathcal L(E) + B` at one (eta, beta, lam, c_S).

    ``apply(E)`` takes a stack ``(c, d, d)`` of symmetric blocks :math:`E_{jj}`.
    """

    def __init__(self, data: _Data, *, eta, beta, lam, batch_factor):
        self.data, self.eta, self.beta, self.lam, self.c_S = data, eta, beta, lam, batch_factor
        h = data.rho + lam
        self.h = h
        self.active = _active(h)
        if np.any(eta * h >= 2 * (1 + beta)):
            raise ValueError(
                f"eta must be below the stability edge 2 (1 + beta) / h_max = "
                f"{2 * (1 + beta) / h.max():.6g} of the noiseless recursion, but got {eta!r}")
        hs = np.where(self.active, h, 1.0)
        s_aa, _, _, s_vv = cross_mode_stein(hs[:, None], hs[None, :], eta=eta, beta=beta)
        mask = self.active[:, None] & self.active[None, :]
        self.T = np.where(mask, s_aa, 0.0)  # T_lm = [S_lm]_aa
        self.unit_var_a = np.diag(self.T).copy()  # section 6, per unit noise variance
        self.unit_var_v = np.where(self.active, np.diag(s_vv), 0.0)
        self.rho_outer = np.outer(data.rho, data.rho)
        self._xt_host = None

    # exact operator -----------------------------------------------------------------------
    def _to_backend(self, E):
        xt = self.data.xt
        if _is_torch(xt):
            import torch

            return torch.as_tensor(E, dtype=xt.dtype, device=xt.device)
        return E

    def fourth_moment_term(self, E):
        r""":math:`\frac1N\tilde X^\top\mathrm{diag}(\tilde x_i^\top E\tilde x_i)\tilde X` for a
        stack ``(c, d, d)``; the per-sample work runs on the data's backend."""
        xt = self.data.xt
        Eb = self._to_backend(E)
        w = ((xt @ Eb) * xt).sum(-1)  # (c, N)
        out = (xt.T * w[:, None, :]) @ xt
        return _host(out) / self.data.num_samples

    def linear_part(self, E):
        return self.c_S * self.T * (self.fourth_moment_term(E) - self.rho_outer * E)

    def constant(self):
        rbar2 = _square(self.data.rbar)  # (N, c)
        xt = self.data.xt
        if _is_torch(xt):
            rbar2 = rbar2.T
        else:
            rbar2 = np.ascontiguousarray(rbar2.T)
        out = _host((xt.T * rbar2[:, None, :]) @ xt) / self.data.num_samples
        g = self.data.gbar_t
        return self.c_S * self.T * (out - g[:, :, None] * g[:, None, :])

    def noise_diagonal(self, E):
        r""":math:`\Xi_{pp}` for every mode from the position blocks ``E`` ``(c, d, d)``."""
        xt = self.data.xt
        w = _host(((xt @ self._to_backend(E)) * xt).sum(-1))  # (c, N)
        x2 = _host(_square(xt))  # (N, d)
        r2 = _host(_square(self.data.rbar)).T  # (c, N)
        n = self.data.num_samples
        diag_e = np.diagonal(E, axis1=1, axis2=2)
        noise = (w + r2) @ x2 / n - self.data.rho ** 2 * diag_e - self.data.gbar_t ** 2
        return np.where(self.active, self.c_S * noise, 0.0)

    # mode-diagonal closure ----------------------------------------------------------------
    def closure_matrices(self):
        r"""``A = c_S (K - diag rho^2)`` (d x d) and ``b`` (c, d) of the closure."""
        A = self.c_S * (self.data.fourth_moments - np.diag(self.data.rho ** 2))
        A[~self.active] = 0.0
        A[:, ~self.active] = 0.0
        if self.data.rbar is None:
            return A, None
        b = self.data.residual_moments - self.data.gbar_t ** 2
        return A, np.where(self.active, self.c_S * b, 0.0)


def _closure_radius(unit_var_a, A):
    r"""Spectral radius of ``diag(T_a) A``: with ``T_a >= 0`` and ``A >= 0`` entrywise it is
    the largest eigenvalue of the symmetric ``T_a^{1/2} A T_a^{1/2}`` (Perron)."""
    from scipy.linalg import eigh
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    root = np.sqrt(unit_var_a)
    sym = root[:, None] * (0.5 * (A + A.T)) * root[None, :]
    d = sym.shape[0]
    if d > 64:
        # Lanczos from the positive vector (the Perron vector is positive): a few dozen
        # products instead of a full O(d^3) eigensolve, the cost of the edge search
        try:
            top = eigsh(sym, k=1, which="LA", v0=np.ones(d), tol=1e-12,
                        return_eigenvectors=False)
            return float(abs(top[0]))
        except ArpackNoConvergence:
            pass
    return float(abs(eigh(sym, eigvals_only=True, subset_by_index=[d - 1, d - 1])[0]))


def _exact_radius(mmap: _MomentMap, tol=1e-10):
    r"""Spectral radius of :math:`\mathcal L` on :math:`d\times d` matrices by ARPACK (largest
    magnitude; a positive map, so the radius is its Perron eigenvalue)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    d = mmap.h.size

    def matvec(x):
        E = x.reshape(1, d, d)
        return mmap.linear_part(E).reshape(-1)

    if d == 1:
        return float(abs(matvec(np.ones(1))[0]))
    op = LinearOperator((d * d, d * d), matvec=matvec, dtype=np.float64)
    start = (np.diag(mmap.unit_var_a) + 1e-3).reshape(-1)
    try:
        values = eigs(op, k=1, which="LM", v0=start, tol=tol, maxiter=5000,
                      return_eigenvectors=False)
    except ArpackNoConvergence as error:  # fall back on what converged
        values = error.eigenvalues
        if len(values) == 0:
            raise
    return float(np.max(np.abs(values)))


# --- public API ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MinibatchMoments:
    r"""Stationary second moments of real-minibatch SGD with momentum on least squares.

    Modes are indexed ``(j, l)``: output ``j`` (``c`` of them), eigenvector ``l`` of
    :math:`H = X^\top X/N` (``d``, eigenvalues descending). Position ``a`` in parameter units,
    velocity ``v`` with :math:`\delta = \eta v` (docs/theory.md section 1).

    Attributes:
        speed: :math:`E\|\delta\|^2 = \eta^2\sum_p\mathrm{Var}(v_p)` (the exact counterpart of
            eq. 12).
        excess_loss: :math:`E[L_\lambda(\theta)] - L_\lambda(\mu) = \frac12\sum_p h_l
            \mathrm{Var}(a_p)`.
        var_a, var_v: per-mode stationary variances, ``(c, d)``.
        mode_noise: :math:`\Xi_{pp}`, the stationary noise variance of each mode, ``(c, d)``.
        radius: spectral radius of the stationary moment map (< 1).
        eigenvalues, eigenvectors: of H, ``(d,)`` descending and ``(d, d)`` columns.
        eta, beta, lam, batch_factor: the hyperparameters (``batch_factor`` is :math:`c_S`).
        closure: ``"diagonal"`` or ``"exact"``.
        matvecs: applications of the exact operator (0 for the closure).
    """

    speed: float
    excess_loss: float
    var_a: np.ndarray
    var_v: np.ndarray
    mode_noise: np.ndarray
    radius: float
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    eta: float
    beta: float
    lam: float
    batch_factor: float
    closure: str
    matvecs: int

    def global_displacement(self, k) -> np.ndarray:
        r""":math:`E\|\Delta_k\|^2 = \eta^2\sum_p\mathrm{Var}(v_p)W_l(k)` from a stationary start,
        ``k`` steps (array). Exact: the noise is a martingale difference, so
        :math:`\mathrm{Cov}(z_{i+k}, z_i) = M^kP` as in docs/theory.md section 6, and
        :math:`W_l` is that section's lag-weighted velocity sum."""
        from ._lagsum import lag_weighted_velocity_sum

        k = np.asarray(k, dtype=np.float64)
        weights = self.var_v.sum(0)
        keep = weights > 0
        if not np.any(keep):
            return np.zeros(k.shape)
        W = lag_weighted_velocity_sum(self.eigenvalues[keep][:, None], k.reshape(1, -1),
                                      eta=self.eta, beta=self.beta, lam=self.lam,
                                      model="discrete")
        return (self.eta ** 2 * (weights[keep] @ W)).reshape(k.shape)


def _solve_exact(mmap: _MomentMap, tol, x0=None):
    """GMRES on ``(I - L) E = B`` for all output blocks at once (block-diagonal operator).

    Preconditioned by the closure: a residual's diagonal entries go through
    ``(I - diag(T_a) A)^{-1}`` (the operator's action among mode variances, one d x d inverse),
    its off-diagonal ones through the identity. The stopping rule is the true residual
    ``||B - (I - L)E|| <= tol ||B||``, checked after GMRES (whose preconditioned residual may
    differ) and resumed if needed."""
    from scipy.sparse.linalg import LinearOperator, gmres

    B = mmap.constant()
    c, d, _ = B.shape
    size = c * d * d
    count = [0]
    diagonal = np.arange(d)
    A, _ = mmap.closure_matrices()
    inverse = np.linalg.inv(np.eye(d) - mmap.unit_var_a[:, None] * A)

    def matvec(x):
        count[0] += 1
        E = x.reshape(c, d, d)
        return (E - mmap.linear_part(E)).reshape(-1)

    def precondition(r):
        R = r.reshape(c, d, d).copy()
        R[:, diagonal, diagonal] = R[:, diagonal, diagonal] @ inverse.T
        return R.reshape(-1)

    op = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    pre = LinearOperator((size, size), matvec=precondition, dtype=np.float64)
    rhs = B.reshape(-1)
    norm = float(np.linalg.norm(rhs))
    solution = np.zeros(size) if x0 is None else x0.reshape(-1).copy()
    for _ in range(3):
        solution, _ = gmres(op, rhs, x0=solution, rtol=tol, atol=0.0, restart=60, maxiter=200,
                            M=pre)
        residual = float(np.linalg.norm(rhs - matvec(solution)))
        count[0] -= 1  # the check is not part of the solve's cost
        if residual <= tol * norm:
            break
    else:
        raise RuntimeError(f"GMRES did not reach rtol={tol:g} in {count[0]} operator "
                           "applications; the map is too close to its divergence edge")
    E = solution.reshape(c, d, d)
    return 0.5 * (E + E.transpose(0, 2, 1)), count[0]


def _closure_solution(mmap: _MomentMap):
    """Per-output position variances ``p`` (c, d) of the mode-diagonal closure."""
    A, b = mmap.closure_matrices()
    Ta = mmap.unit_var_a
    system = np.eye(Ta.size) - Ta[:, None] * A
    p = np.linalg.solve(system, (Ta[None, :] * b).T).T
    return p, A


def _radius(mmap: _MomentMap, closure: str) -> float:
    if closure == "diagonal":
        A, _ = mmap.closure_matrices()
        return _closure_radius(mmap.unit_var_a, A)
    return _exact_radius(mmap)


def _divergence_message(eta, edge):
    return (f"second moments diverge at this learning rate: eta = {eta:.6g} is beyond the "
            f"edge eta = {edge:.6g} where the spectral radius of the moment map reaches 1")


def minibatch_moments(X, Y, *, eta, beta, lam=0.0, batch_size, replacement=False,
                      closure="diagonal", tol=1e-10) -> MinibatchMoments:
    r"""Stationary second moments of SGD with momentum (eq. 2) on least squares with real
    minibatches (docs/theory.md section 7).

    Args:
        X: inputs ``(N, d)``; Y: targets ``(N, c)``. NumPy arrays (float64) or torch tensors:
            the per-sample reductions (O(N d^2)) run on the tensors' device in their dtype; the
            d x d algebra runs on the host in float64, and the results are NumPy float64.
        eta: learning rate > 0, below the noiseless edge ``2 (1 + beta) / h_max``.
        beta: momentum in [0, 1). lam: weight decay >= 0.
        batch_size: S in [1, N]; ``replacement``: batches drawn with replacement (``c_S = 1/S``)
            or without (``c_S = (N - S)/(S (N - 1))``, the default, as the experiments' runner).
        closure: ``"exact"`` solves the full equation for the ``c`` blocks
            :math:`E_{jj}` (``c d^2`` unknowns) by GMRES with operator applications
            (O(c N d^2) each, no Kronecker product), started at the closure's solution;
            ``"diagonal"`` keeps only the mode variances: one d x d solve for all outputs.
        tol: relative residual of GMRES.

    Returns:
        :class:`MinibatchMoments`.

    Raises:
        ValueError: for bad shapes, ``batch_size`` outside [1, N], ``eta``/``beta``/``lam``
            out of range, an unknown closure, and when the spectral radius of the moment map
            is >= 1 (the message gives the edge).
    """
    with _single_threaded_blas():
        return _minibatch_moments(X, Y, eta=eta, beta=beta, lam=lam, batch_size=batch_size,
                                  replacement=replacement, closure=closure, tol=tol)


def _minibatch_moments(X, Y, *, eta, beta, lam, batch_size, replacement, closure,
                       tol) -> MinibatchMoments:
    X, Y = _prepare_inputs(X, Y)
    n = X.shape[0]
    _check_hyper(eta, beta, lam, batch_size, n, replacement, closure)
    data = _cached_data(X, Y, float(lam))
    c_S = _batch_factor(batch_size, n, replacement)
    mmap = _MomentMap(data, eta=float(eta), beta=float(beta), lam=float(lam), batch_factor=c_S)
    radius = _radius(mmap, closure)
    if radius >= 1:
        edge = _divergence_edge(X, beta=beta, lam=lam, batch_size=batch_size,
                                replacement=replacement, closure=closure, rtol=1e-6)
        raise ValueError(_divergence_message(eta, edge))
    p_closure, _ = _closure_solution(mmap)
    matvecs = 0
    if closure == "diagonal":
        var_a = p_closure
        noise = np.where(mmap.active, var_a / np.where(mmap.active, mmap.unit_var_a, 1.0), 0.0)
    else:
        x0 = np.zeros((p_closure.shape[0], mmap.h.size, mmap.h.size))
        x0[:, np.arange(mmap.h.size), np.arange(mmap.h.size)] = p_closure
        E, matvecs = _solve_exact(mmap, tol, x0=x0)
        noise = mmap.noise_diagonal(E)
        var_a = mmap.unit_var_a * noise
    var_v = mmap.unit_var_v * noise
    return MinibatchMoments(
        speed=float(eta ** 2 * var_v.sum()),
        excess_loss=float(0.5 * (mmap.h * var_a).sum()),
        var_a=var_a, var_v=var_v, mode_noise=noise, radius=radius,
        eigenvalues=data.rho, eigenvectors=data.eigenvectors, eta=float(eta),
        beta=float(beta), lam=float(lam), batch_factor=c_S, closure=closure, matvecs=matvecs)


def minibatch_divergence_edge(X, *, beta, lam=0.0, batch_size, replacement=False,
                              closure="diagonal", rtol=1e-6) -> float:
    r"""The learning rate at which the stationary moment map's spectral radius reaches 1.

    Beyond it real-minibatch SGD has infinite second moments (heavy tails) although every mode
    is inside the noiseless edge :math:`\eta h < 2(1+\beta)` (docs/theory.md section 7). It does
    not depend on the targets. Brent's method on ``radius(eta) - 1`` over
    ``(0, 2 (1 + beta) / h_max)``: the radius grows from 0 (it is O(eta)) to infinity at the
    noiseless edge, where the top mode's stationary variance per unit noise diverges.

    Args: as :func:`minibatch_moments` (``X`` only); ``rtol``: relative accuracy in eta.

    Returns:
        The edge ``eta`` (float); ``inf`` when the batch carries no noise (``S = N`` without
        replacement). Capped just below the noiseless edge when no input spans the top mode
        with fluctuating curvature (then the radius need not blow up).

    Raises:
        ValueError: as :func:`minibatch_moments`.
    """
    with _single_threaded_blas():
        return _divergence_edge(X, beta=beta, lam=lam, batch_size=batch_size,
                                replacement=replacement, closure=closure, rtol=rtol)


def _divergence_edge(X, *, beta, lam, batch_size, replacement, closure, rtol) -> float:
    from scipy.optimize import brentq

    X, _ = _prepare_inputs(X, None)
    n = X.shape[0]
    _check_hyper(None, beta, lam, batch_size, n, replacement, closure)
    c_S = _batch_factor(batch_size, n, replacement)
    if c_S == 0:
        return math.inf
    data = _cached_data(X, None, float(lam))
    h_max = float((data.rho + lam).max())
    if h_max <= 0:
        return math.inf
    noiseless = 2 * (1 + beta) / h_max

    def excess(eta):
        mmap = _MomentMap(data, eta=eta, beta=float(beta), lam=float(lam), batch_factor=c_S)
        return _radius(mmap, closure) - 1.0

    hi = noiseless * (1 - 1e-9)
    lo = noiseless * 1e-6
    if closure == "exact":
        # the closure's edge is cheap and close (cross-mode covariances carry little of the
        # noise): bracket the exact edge around it first, each radius costing one eigs call
        guess = _divergence_edge(X, beta=beta, lam=lam, batch_size=batch_size,
                                 replacement=replacement, closure="diagonal", rtol=rtol)
        for width in (0.02, 0.2):
            a, b = guess * (1 - width), min(guess * (1 + width), hi)
            if excess(a) < 0 < excess(b):
                lo, hi = a, b
                break
    if excess(hi) < 0:
        return hi
    return float(brentq(excess, lo, hi, xtol=rtol * noiseless * 1e-3, rtol=rtol))
