r"""Batched SGD with momentum on least squares, recording what the theory predicts.

The update is eq. (2) of Kunin et al. 2023 exactly (docs/theory.md section 1), with ``v_0 = 0``:

.. math::
    v_{k+1} = \beta v_k - g_B(\theta_k) - \lambda \theta_k, \qquad
    \theta_{k+1} = \theta_k + \eta v_{k+1},

for the loss ``L(theta) = ||Y - X theta^T||^2 / (2N)`` with weights ``theta`` of shape
``(c, d)`` (c outputs, d inputs; flattened row-major to ``c*d`` wherever a vector is meant,
the convention of ``numeric.linear_regression_eigenpairs``). The Hessian is ``I_c (x) H`` with
``H = X^T X / N``, and the weight-decayed minimum is the ridge solution
``mu = (H + lam I)^{-1} X^T Y / N``.

Many independent runs ("seeds") advance together as one batched computation: every array
carries a leading seed axis and each step is a handful of batched matmuls, on NumPy or on
Torch (on ``device``, CUDA when present; the dtype is kept). Two noise models:

``"minibatch"``
    ``g_B`` is the gradient on ``S`` samples drawn without replacement, fresh every step
    (independent across steps and seeds). Its covariance is ``Sigma(theta) / S`` times the
    finite-population factor ``(N - S)/(N - 1)`` (docs/theory.md section 2), i.e. the theory
    applies with the effective batch size :func:`effective_batch_size`.
``"gaussian"``
    ``g_B = g(theta) + N(0, sigma2 H / S)`` exactly (Assumption 1 with Assumption 5): the
    model under which the discrete theory of docs/theory.md section 6 is exact.

Recorded every ``record_every`` steps (step 0 included): the projections
``a = <theta - mu, q>`` and ``b = <v, q>`` on given directions ``q`` (the top Hessian
eigenvectors), the squared local displacement ``||delta_k||^2 = eta^2 ||v_k||^2``, and the
squared global displacement ``||theta_k - theta_ref||^2`` (``theta_ref = theta_0``, or the
state at step ``displacement_from`` when given: the start of a stationary window), and, every
``loss_every`` steps, the excess loss ``L_lam(theta) - L_lam(mu) = (theta - mu)^T (H + lam I)
(theta - mu) / 2`` (exact: the loss is quadratic).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LeastSquares",
    "Trajectory",
    "NOISE_MODELS",
    "BACKENDS",
    "effective_batch_size",
    "least_squares",
    "run_sgd",
]

NOISE_MODELS = ("minibatch", "gaussian")
BACKENDS = ("numpy", "torch")


def effective_batch_size(batch_size: int, num_samples: int, noise: str = "minibatch") -> float:
    r"""Batch size to use in the predictions: ``S (N - 1) / (N - S)`` for minibatches drawn
    without replacement from ``N`` samples (docs/theory.md section 2), ``S`` for Gaussian noise.

    Raises ValueError unless ``1 <= S < N`` for minibatches (``S = N`` is full-batch: no noise).
    """
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, but got {noise!r}")
    if noise == "gaussian":
        return float(batch_size)
    if not 1 <= batch_size < num_samples:
        raise ValueError(f"batch_size must be in [1, {num_samples - 1}] for minibatch noise "
                         f"on {num_samples} samples, but got {batch_size}")
    return batch_size * (num_samples - 1) / (num_samples - batch_size)


@dataclass(frozen=True)
class LeastSquares:
    r"""The linear algebra of ``min ||Y - X theta^T||^2/(2N) + lam ||theta||^2 / 2``.

    Attributes:
        X: ``(N, d)``; Y: ``(N, c)``; lam: weight decay.
        hessian: ``H = X^T X / N``, ``(d, d)`` (the full Hessian is ``I_c (x) H``).
        eigenvalues: H's eigenvalues, descending, ``(d,)``, clipped at 0.
        eigenvectors: H's eigenvectors as columns, ``(d, d)``.
        mu: the ridge solution ``(H + lam I)^{+} X^T Y / N`` as ``(c, d)`` (pseudo-inverse:
            directions with ``rho + lam = 0`` carry no gradient and are left at 0).
    """

    X: np.ndarray
    Y: np.ndarray
    lam: float
    hessian: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    mu: np.ndarray

    @property
    def spectrum(self) -> np.ndarray:
        """Eigenvalues of the full Hessian ``I_c (x) H``: each of H's repeated c times,
        ``(c*d,)``, descending."""
        return np.repeat(self.eigenvalues, self.Y.shape[1])

    def excess_loss(self, theta) -> np.ndarray:
        """``L_lam(theta) - L_lam(mu)`` for ``theta`` of shape ``(..., c, d)``."""
        e = np.asarray(theta) - self.mu
        return 0.5 * np.einsum("...cd,de,...ce->...", e, self.hessian + self.lam * np.eye(
            self.hessian.shape[0]), e)


def least_squares(X, Y, *, lam: float = 0.0) -> LeastSquares:
    """Hessian, its eigendecomposition and the ridge solution of a least-squares problem.

    Raises ValueError for inconsistent shapes or ``lam < 0``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be of shapes (N, d) and (N, c), but got {X.shape} "
                         f"and {Y.shape}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, but got {lam}")
    n = X.shape[0]
    hessian = X.T @ X / n
    rho, vectors = np.linalg.eigh(hessian)
    rho, vectors = np.clip(rho[::-1], 0.0, None), vectors[:, ::-1]
    h = rho + lam
    tol = h.max() * X.shape[1] * np.finfo(float).eps
    inv_h = np.where(h > tol, 1.0 / np.where(h > tol, h, 1.0), 0.0)
    b = X.T @ Y / n  # (d, c)
    mu = (vectors * inv_h) @ (vectors.T @ b)
    return LeastSquares(X, Y, float(lam), hessian, rho, vectors, mu.T.copy())


@dataclass
class Trajectory:
    """What :func:`run_sgd` records; arrays on the host as float64 NumPy.

    Attributes:
        steps: recorded steps k, ``(R,)``.
        a: ``<theta_k - mu, q_l>``, ``(R, seeds, m)``.
        b: ``<v_k, q_l>``, ``(R, seeds, m)``.
        local_sq: ``||delta_k||^2 = eta^2 ||v_k||^2``, ``(R, seeds)``.
        global_sq: ``||theta_k - theta_ref||^2``, ``(R, seeds)``.
        loss_steps: steps of the excess-loss records, ``(L,)``.
        excess_loss: ``L_lam(theta_k) - L_lam(mu)``, ``(L, seeds)``.
        velocity_sq_at_loss: ``||v_k||^2`` at the same steps, ``(L, seeds)``.
        final_theta, final_v: ``(seeds, c, d)``.
        settings: the arguments of the run.
    """

    steps: np.ndarray
    a: np.ndarray
    b: np.ndarray
    local_sq: np.ndarray
    global_sq: np.ndarray
    loss_steps: np.ndarray
    excess_loss: np.ndarray
    velocity_sq_at_loss: np.ndarray
    final_theta: np.ndarray
    final_v: np.ndarray
    settings: dict = field(default_factory=dict)

    def arrays(self, prefix: str = "") -> dict:
        """The arrays under ``prefix``-ed names, for ``numpy.savez``."""
        names = ("steps", "a", "b", "local_sq", "global_sq", "loss_steps", "excess_loss",
                 "velocity_sq_at_loss")
        return {prefix + name: getattr(self, name) for name in names}


_CACHE_BYTES = 1 << 20  # gathered rows per seed block of the NumPy gradient


class _NumpyOps:
    """The few array operations the runner needs, on NumPy (float64 Generator streams)."""

    def __init__(self, seed, dtype):
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype or np.float64)
        self._buffers = {}

    def asarray(self, x):
        return np.asarray(x, dtype=self.dtype)

    def zeros(self, shape):
        return np.zeros(shape, dtype=self.dtype)

    def integers(self, high, shape):
        return self.rng.integers(high, size=shape)

    def sort_rows(self, x):
        return np.sort(x, axis=1)

    def random_subsets(self, high, rows, size):
        return np.argsort(self.rng.random((rows, high)), axis=1)[:, :size]

    def normal(self, shape):
        return self.rng.standard_normal(shape, dtype=self.dtype)

    def minibatch_gradient(self, X, Y, theta, idx):
        """``X_b^T (X_b theta^T - Y_b) / S`` per seed, ``(seeds, c, d)``, for the rows ``idx``
        ``(seeds, S)``.

        Seeds go in blocks whose gathered rows fit in about 1 MB, so each block's rows are
        still in cache when the two products read them: for mnist5k (S = 128, d = 784) that is
        one seed a block, 1.7x faster than gathering all 64 seeds' rows (51 MB) first, which
        runs at memory bandwidth. Buffers are reused across steps.
        """
        seeds, size = idx.shape
        d, c = X.shape[1], Y.shape[1]
        block = max(1, min(seeds, _CACHE_BYTES // (size * d * X.itemsize)))
        key = (id(X), block, size)
        if key not in self._buffers:
            self._buffers[key] = (np.empty((block, size, d), X.dtype),
                                  np.empty((block, size, c), Y.dtype),
                                  np.empty((block, size, c), X.dtype))
        rows, targets, residual = self._buffers[key]
        grad = np.empty((seeds, c, d), dtype=X.dtype)
        for start in range(0, seeds, block):
            stop = min(start + block, seeds)
            n = stop - start
            # mode="clip": "raise" copies through a temporary when given out=; the indices
            # are in range by construction
            np.take(X, idx[start:stop], axis=0, out=rows[:n], mode="clip")
            np.take(Y, idx[start:stop], axis=0, out=targets[:n], mode="clip")
            np.matmul(rows[:n], theta[start:stop].swapaxes(1, 2), out=residual[:n])
            np.subtract(residual[:n], targets[:n], out=residual[:n])
            np.matmul(residual[:n].swapaxes(1, 2), rows[:n], out=grad[start:stop])
        grad /= size
        return grad

    def host(self, x):
        return np.asarray(x, dtype=np.float64)


class _TorchOps:
    """The same operations on Torch, on ``device`` with ``dtype`` (a seeded torch.Generator)."""

    def __init__(self, seed, dtype, device):
        import torch

        self.torch = torch
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or torch.float64
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))

    def asarray(self, x):
        return self.torch.as_tensor(np.ascontiguousarray(x), dtype=self.dtype, device=self.device)

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.dtype, device=self.device)

    def integers(self, high, shape):
        return self.torch.randint(high, tuple(shape), generator=self.gen, device=self.device)

    def sort_rows(self, x):
        return self.torch.sort(x, dim=1).values

    def random_subsets(self, high, rows, size):
        keys = self.torch.rand((rows, high), generator=self.gen, device=self.device)
        return self.torch.argsort(keys, dim=1)[:, :size]

    def normal(self, shape):
        return self.torch.randn(tuple(shape), generator=self.gen, dtype=self.dtype,
                                device=self.device)

    def minibatch_gradient(self, X, Y, theta, idx):
        """As :meth:`_NumpyOps.minibatch_gradient`, all seeds at once (batched products)."""
        # index_select: Torch's 2-D advanced indexing is ~100x slower on CPU
        rows = self.torch.index_select(X, 0, idx.reshape(-1)).reshape(*idx.shape, X.shape[1])
        targets = self.torch.index_select(Y, 0, idx.reshape(-1)).reshape(*idx.shape, Y.shape[1])
        residual = rows @ theta.transpose(1, 2) - targets  # bmm reads the transposed view
        return (residual.transpose(1, 2) @ rows) / idx.shape[1]

    def host(self, x):
        return x.detach().to("cpu", self.torch.float64).numpy()


def _sample_without_replacement(ops, num_samples, num_seeds, batch_size):
    """``(seeds, S)`` indices, each row S distinct draws from ``range(N)``.

    Draw with replacement, then redraw the duplicates until none are left. The procedure
    treats every index alike, so the law of each row's set is invariant under permutations of
    ``range(N)``, which act transitively on S-subsets: every subset is equally likely, as for
    sampling without replacement. Expected redraw rounds are O(1) for ``S^2 << N``; for
    ``4 S > N`` the first S of a random permutation (sorted random keys) is used instead.
    """
    if 4 * batch_size > num_samples:
        return ops.random_subsets(num_samples, num_seeds, batch_size)
    idx = ops.sort_rows(ops.integers(num_samples, (num_seeds, batch_size)))
    while True:
        dup = idx[:, 1:] == idx[:, :-1]
        count = int(dup.sum())
        if count == 0:
            return idx
        tail = idx[:, 1:]
        tail[dup] = ops.integers(num_samples, (count,))
        idx = ops.sort_rows(idx)


def _single_threaded_blas():
    """One BLAS thread for the step loop. Each step's matmuls are small (S x d x c), so
    threads gain little, and multithreaded BLAS spin-waits collapse when the cores are shared
    (measured 20x slower per step under load on 2 cores). threadpoolctl ships with
    scikit-learn; without it the BLAS default is kept."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def _single_threaded_torch(torch):
    """The same for Torch on CPU (its intra-op pool), restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _validate(eta, beta, lam, batch_size, num_steps, num_seeds, record_every, noise, backend,
              num_samples):
    if not (isinstance(eta, (int, float)) and eta > 0):
        raise ValueError(f"eta must be a positive float, but got {eta!r}")
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must be in [0, 1), but got {beta!r}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, but got {lam!r}")
    for name, value in (("num_steps", num_steps), ("num_seeds", num_seeds),
                        ("record_every", record_every)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, but got {value!r}")
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, but got {noise!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, but got {backend!r}")
    if not (isinstance(batch_size, (int, np.integer)) and 1 <= batch_size <= num_samples):
        raise ValueError(f"batch_size must be an integer in [1, {num_samples}], but got "
                         f"{batch_size!r}")


def run_sgd(problem: LeastSquares, *, eta: float, beta: float, batch_size: int,
            num_steps: int, num_seeds: int, seed: int = 0, theta0=None, directions=None,
            record_every: int = 1, loss_every: int = 0, displacement_from: int = 0,
            noise: str = "minibatch", sigma2: float | None = None, backend: str = "numpy",
            device=None, dtype=None, progress: bool = False) -> Trajectory:
    r"""Run ``num_seeds`` independent SGD-with-momentum trajectories (eq. 2) as one batch.

    Args:
        problem: from :func:`least_squares` (its ``lam`` is the weight decay).
        eta, beta: learning rate > 0 and momentum in [0, 1).
        batch_size: S.
        num_steps: number of steps K; states k = 0..K.
        num_seeds: number of independent runs, advanced together.
        seed: seed of the one random stream that drives all runs (run r is not reproducible
            alone: the runs share the stream; the set of runs is).
        theta0: start ``(c, d)`` or ``(seeds, c, d)``; default ``mu``. ``v_0 = 0``.
        directions: ``(m, c*d)`` unit vectors q to project on (rows); default none.
        record_every: record every n-th state (k = 0, n, 2n, ...).
        loss_every: record the excess loss every n-th state (0: never; costs ``c d^2`` per
            seed and record).
        displacement_from: step at which the reference of the global displacement is reset
            to the current state (0: ``theta_0``).
        noise: ``"minibatch"`` or ``"gaussian"`` (then ``sigma2`` is required:
            ``g_B = g + N(0, sigma2 H / S)``).
        backend: ``"numpy"`` or ``"torch"``; device: torch device (default CUDA when
            present); dtype: default float64.
        progress: show a tqdm progress bar.

    Returns:
        :class:`Trajectory` (host NumPy float64).

    Raises:
        ValueError: for out-of-range arguments or inconsistent shapes (named in the message).
    """
    X, Y = problem.X, problem.Y
    n, d = X.shape
    c = Y.shape[1]
    _validate(eta, beta, problem.lam, batch_size, num_steps, num_seeds, record_every, noise,
              backend, n)
    if noise == "gaussian" and not (sigma2 is not None and sigma2 >= 0):
        raise ValueError(f"sigma2 must be >= 0 for noise='gaussian', but got {sigma2!r}")
    ops = _NumpyOps(seed, dtype) if backend == "numpy" else _TorchOps(seed, dtype, device)

    theta0 = problem.mu if theta0 is None else np.asarray(theta0, dtype=np.float64)
    if theta0.shape not in ((c, d), (num_seeds, c, d)):
        raise ValueError(f"theta0 must be of shape ({c}, {d}) or ({num_seeds}, {c}, {d}), "
                         f"but got {theta0.shape}")
    directions = np.zeros((0, c * d)) if directions is None else np.asarray(directions,
                                                                            dtype=np.float64)
    if directions.ndim != 2 or directions.shape[1] != c * d:
        raise ValueError(f"directions must be of shape (m, {c * d}), but got "
                         f"{directions.shape}")

    Xo, Yo = ops.asarray(X), ops.asarray(Y)
    mu = ops.asarray(problem.mu.reshape(1, c * d))
    Q = ops.asarray(directions.T)  # (c*d, m)
    theta = ops.zeros((num_seeds, c, d)) + ops.asarray(theta0)
    v = ops.zeros((num_seeds, c, d))
    theta_ref = theta + 0
    lam = problem.lam
    if noise == "gaussian":
        # Full gradient g = theta H - b^T, noise xi F^T with F F^T = H, F = V diag(sqrt(rho)).
        hess = ops.asarray(problem.hessian)
        b_t = ops.asarray((X.T @ Y / n).T)
        factor_t = ops.asarray((problem.eigenvectors * np.sqrt(problem.eigenvalues)).T)
        noise_scale = math.sqrt(sigma2 / batch_size)
    else:
        curvature = ops.asarray(problem.hessian + lam * np.eye(d)) if loss_every else None
    if noise == "gaussian" and loss_every:
        curvature = ops.asarray(problem.hessian + lam * np.eye(d))

    num_rec = num_steps // record_every + 1
    rec_a = ops.zeros((num_rec, num_seeds, Q.shape[1]))
    rec_b = ops.zeros((num_rec, num_seeds, Q.shape[1]))
    rec_local = ops.zeros((num_rec, num_seeds))
    rec_global = ops.zeros((num_rec, num_seeds))
    num_loss = num_steps // loss_every + 1 if loss_every else 0
    rec_loss = ops.zeros((num_loss, num_seeds))
    rec_vsq = ops.zeros((num_loss, num_seeds))

    def record(k):
        if k % record_every == 0:
            i = k // record_every
            flat_theta = theta.reshape(num_seeds, c * d)
            flat_v = v.reshape(num_seeds, c * d)
            rec_a[i] = (flat_theta - mu) @ Q
            rec_b[i] = flat_v @ Q
            rec_local[i] = eta * eta * (flat_v * flat_v).sum(1)
            diff = flat_theta - theta_ref.reshape(num_seeds, c * d)
            rec_global[i] = (diff * diff).sum(1)
        if loss_every and k % loss_every == 0:
            e = theta - mu.reshape(1, c, d)
            rec_loss[k // loss_every] = 0.5 * ((e @ curvature) * e).sum((1, 2))
            rec_vsq[k // loss_every] = (v * v).sum((1, 2))

    steps = range(1, num_steps + 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"SGD eta={eta:g} beta={beta:g} x{num_seeds}", leave=False,
                     mininterval=0.5)
    record(0)
    if backend == "numpy":
        threads = _single_threaded_blas()
    elif ops.device.type == "cpu":
        threads = _single_threaded_torch(ops.torch)
    else:
        threads = contextlib.nullcontext()
    with threads:
        for k in steps:
            if noise == "minibatch":
                idx = _sample_without_replacement(ops, n, num_seeds, batch_size)
                grad = ops.minibatch_gradient(Xo, Yo, theta, idx)  # (seeds, c, d)
            else:
                grad = theta @ hess - b_t + noise_scale * (
                    ops.normal((num_seeds, c, d)) @ factor_t)
            if lam:
                grad = grad + lam * theta
            v = beta * v - grad
            theta = theta + eta * v
            if k == displacement_from:
                theta_ref = theta + 0
            record(k)

    host = ops.host
    return Trajectory(
        steps=np.arange(num_rec) * record_every, a=host(rec_a), b=host(rec_b),
        local_sq=host(rec_local), global_sq=host(rec_global),
        loss_steps=np.arange(num_loss) * loss_every if loss_every else np.zeros(0, int),
        excess_loss=host(rec_loss), velocity_sq_at_loss=host(rec_vsq),
        final_theta=host(theta), final_v=host(v),
        settings={"eta": eta, "beta": beta, "lam": problem.lam, "batch_size": batch_size,
                  "num_steps": num_steps, "num_seeds": num_seeds, "seed": seed,
                  "record_every": record_every, "loss_every": loss_every,
                  "displacement_from": displacement_from, "noise": noise,
                  "sigma2": sigma2, "backend": backend,
                  "device": str(getattr(ops, "device", "cpu")),
                  "effective_batch_size": effective_batch_size(batch_size, n, noise)
                  if batch_size < n or noise == "gaussian" else float("inf")})
