r"""Partial Hessian spectra: the top-k eigenpairs plus a quadrature of the bulk, and the
predictions of the theory from them.

A network of millions of parameters gives no full Hessian spectrum, yet the predictions that
matter most (eq. 12 and 13 of Kunin et al. 2023, docs/theory.md sections 5 and 8) sum over
*every* mode. A :class:`Spectrum` holds what can be measured:

* the top ``k`` eigenpairs :math:`(\rho_i, q_i)`, exact or from
  :func:`numeric.hessian_eigenpairs` (with their residuals);
* the rest of the spectrum, the *bulk*, as a spectral density given by quadrature nodes
  :math:`\theta_j` and weights :math:`w_j` with :math:`\sum_j w_j = P - k`, from stochastic
  Lanczos quadrature (SLQ) with the top ``k`` deflated, or exactly;
* the trace :math:`\mathrm{tr}\,H` with its standard error, and the number of parameters
  :math:`P`.

Every mode sum :math:`\sum_{l=1}^{P} f(\rho_l)` is then approximated by
:math:`\sum_{i \le k} f(\rho_i) + \sum_j w_j f(\theta_j)`.

**Stochastic Lanczos quadrature** (Golub and Meurant 1994; Ubaru, Chen and Saad 2017; as used
for neural-network Hessians by Ghorbani, Krishnan and Xiao 2019 and PyHessian). Let
:math:`\Pi = I - Q^\top Q` project out the top ``k`` eigenvectors (rows of :math:`Q`). For a
probe :math:`u = \Pi z / \|\Pi z\|` with Gaussian :math:`z`, ``u`` is uniform on the unit
sphere of the :math:`(P-k)`-dimensional complement, so
:math:`E[u^\top f(H) u] = \mathrm{tr}(\Pi f(H) \Pi) / (P - k)`. Lanczos started at ``u`` on
:math:`\Pi H \Pi` (each new vector orthogonalised against :math:`Q` and against all previous
Lanczos vectors) gives after ``m`` steps a tridiagonal :math:`T_m = Y \mathrm{diag}(\theta) Y^\top`
and the Gauss quadrature :math:`u^\top f(H) u \approx \sum_j \tau_j f(\theta_j)` with
:math:`\tau_j = Y_{1j}^2`, exact for polynomials of degree :math:`\le 2m - 1`. Averaging over
``n`` probes, the bulk nodes are all :math:`\theta_j` with weights
:math:`w_j = (P - k)\tau_j / n`. The moments :math:`\mathrm{tr}(\Pi H^q \Pi)` for
:math:`q \le 2m - 1` are thus unbiased with a standard error from the spread over probes
(:meth:`Spectrum.moment`).

**Modes with** :math:`\rho + \lambda \le 0`. Negative curvature is kept in the spectrum and
reported (:attr:`Spectrum.negative_weight`), never clipped. The theory has no stationary law
along a mode with :math:`\rho + \lambda \le 0`, and under Assumption 5
(:math:`\Sigma = \sigma^2 H`) a mode with :math:`\rho \le 0` carries no gradient noise. Every
prediction here therefore **excludes** the modes (top-k and bulk nodes) with
:math:`\rho \le \epsilon\,\rho_{\max}` (``rtol``, default :math:`10^{-10}`), which contains
every mode with :math:`\rho + \lambda \le 0`, and returns the excluded number of modes in
:attr:`Prediction.excluded_weight` (of which :attr:`Prediction.negative_weight` have
:math:`\rho + \lambda < 0`). A mode beyond the stability edge :math:`\eta(\rho+\lambda) \ge
2(1+\beta)` is an error for ``model="discrete"`` (no stationary law), as in the kernels.

Storage: :meth:`Spectrum.save` writes one ``.npz`` (arrays, and the scalars as a JSON text
entry) atomically; :meth:`Spectrum.load` reads it with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels
from ._estimators import fit_power_law
from ._io import atomic_write
from ._noise import noise_scale_fit

__all__ = [
    "Spectrum",
    "LanczosQuadrature",
    "IsotropicNoise",
    "PerModeNoise",
    "Prediction",
    "stochastic_lanczos_quadrature",
    "spectrum_from_model",
    "spectrum_from_least_squares",
    "predicted_speed",
    "predicted_global_displacement",
    "predicted_exponent",
]

_FORMAT = 1
#: Modes with rho <= NONPOSITIVE_RTOL * rho_max are left out of every prediction.
NONPOSITIVE_RTOL = 1e-10


def _float_array(value, name, ndim=1):
    if value is None:
        return None
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real array, but got {type(value).__name__}") from error
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, but got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, but got {int((~np.isfinite(array)).sum())} "
                         "NaN or Inf values")
    return array


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, but got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {value}")
    return int(value)


# --------------------------------------------------------------------------------------------
# the spectrum
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Spectrum:
    r"""A Hessian spectrum that may be partial: top-k eigenpairs plus a quadrature of the bulk.

    Attributes
    ----------
    eigenvalues:
        ``(k,)`` float64 NumPy, descending, :math:`\rho_1 \ge \dots \ge \rho_k` (``k`` may be 0).
    eigenvectors:
        ``(k, P)`` orthonormal rows (a torch tensor on the model's device and dtype, or a NumPy
        array), parameters flattened in the order of ``model.parameters()``; or ``None``.
    residuals:
        ``(k,)`` float64, :math:`\|H q_i - \rho_i q_i\| / |\rho_1|` (see
        :class:`numeric.HessianEigenpairs`), or ``None``.
    bulk_nodes, bulk_weights:
        ``(n,)`` float64: the density of the other :math:`P - k` eigenvalues as quadrature
        nodes and weights, :math:`\sum_j w_j = P - k` (up to rounding). Negative nodes are
        kept.
    bulk_probes:
        ``(n,)`` int64: the SLQ probe each node came from (``0..num_probes-1``); all 0 for an
        exact bulk.
    bulk_method:
        ``"slq"`` (estimated; moments carry standard errors), ``"exact"`` (the nodes are the
        eigenvalues themselves, weights their multiplicities) or ``"none"`` (``k = P``).
    trace, trace_stderr:
        :math:`\mathrm{tr}\,H` and its standard error (0 when exact).
    num_parameters:
        :math:`P`.
    num_hvps:
        Hessian-vector products spent building it (0 for exact spectra).
    info:
        JSON-serialisable details (solver settings, convergence).
    """

    eigenvalues: np.ndarray
    eigenvectors: Any
    residuals: np.ndarray | None
    bulk_nodes: np.ndarray
    bulk_weights: np.ndarray
    trace: float
    trace_stderr: float
    num_parameters: int
    bulk_probes: np.ndarray | None = None
    bulk_method: str = "slq"
    num_hvps: int = 0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        set_ = object.__setattr__
        eigenvalues = _float_array(self.eigenvalues, "eigenvalues")
        if eigenvalues.size > 1 and np.any(np.diff(eigenvalues) > 0):
            raise ValueError("eigenvalues must be sorted descending")
        set_(self, "eigenvalues", eigenvalues)
        k = eigenvalues.size
        if self.residuals is not None:
            residuals = _float_array(self.residuals, "residuals")
            if residuals.shape != (k,):
                raise ValueError(f"residuals must have shape ({k},), but got {residuals.shape}")
            set_(self, "residuals", residuals)
        if self.eigenvectors is not None and tuple(self.eigenvectors.shape) != (
                k, self.num_parameters):
            raise ValueError(f"eigenvectors must have shape ({k}, {self.num_parameters}), but "
                             f"got {tuple(self.eigenvectors.shape)}")
        nodes = _float_array(self.bulk_nodes, "bulk_nodes")
        weights = _float_array(self.bulk_weights, "bulk_weights")
        if nodes.shape != weights.shape:
            raise ValueError(f"bulk_nodes and bulk_weights must have one shape, but got "
                             f"{nodes.shape} and {weights.shape}")
        if np.any(weights < 0):
            raise ValueError("bulk_weights must be >= 0, but got "
                             f"{int((weights < 0).sum())} negative")
        set_(self, "bulk_nodes", nodes)
        set_(self, "bulk_weights", weights)
        probes = np.zeros(nodes.shape, np.int64) if self.bulk_probes is None else np.asarray(
            self.bulk_probes, dtype=np.int64)
        if probes.shape != nodes.shape:
            raise ValueError(f"bulk_probes must have shape {nodes.shape}, but got {probes.shape}")
        set_(self, "bulk_probes", probes)
        _check_int(self.num_parameters, "num_parameters", max(1, k))
        if self.bulk_method not in ("slq", "exact", "none"):
            raise ValueError(f"bulk_method must be 'slq', 'exact' or 'none', but got "
                             f"{self.bulk_method!r}")
        for name in ("trace", "trace_stderr"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, but got {value}")
            set_(self, name, value)
        set_(self, "info", dict(self.info))

    # ---- views --------------------------------------------------------------------------

    @property
    def k(self) -> int:
        """Number of top eigenpairs."""
        return int(self.eigenvalues.size)

    @property
    def num_bulk_modes(self) -> int:
        """:math:`P - k`, the number of modes the bulk stands for."""
        return self.num_parameters - self.k

    @property
    def num_probes(self) -> int:
        """Number of SLQ probes behind the bulk (1 for an exact bulk, 0 for none)."""
        return 0 if self.bulk_nodes.size == 0 else int(self.bulk_probes.max()) + 1

    def nodes(self) -> np.ndarray:
        """All modes: the top eigenvalues then the bulk nodes, ``(k + n,)`` float64."""
        return np.concatenate([self.eigenvalues, self.bulk_nodes])

    def weights(self) -> np.ndarray:
        """Weights of :meth:`nodes`: 1 for each top eigenvalue, then the bulk weights; they
        sum to :math:`P` (up to rounding)."""
        return np.concatenate([np.ones(self.k), self.bulk_weights])

    @property
    def negative_weight(self) -> float:
        """Number of modes (top ones plus bulk weight) with a negative eigenvalue."""
        return float(self.weights()[self.nodes() < 0].sum())

    def moment(self, order: int) -> tuple[float, float]:
        r"""``(value, standard_error)`` of :math:`\mathrm{tr}\,H^q = \sum_l \rho_l^q`, ``q = order``.

        The top eigenvalues count exactly; the bulk part is the mean over SLQ probes of
        :math:`(P-k)\,u^\top H^q u` (exact per probe for ``q <= 2 m - 1``, ``m`` Lanczos
        steps), with the standard error of that mean (0 for an exact bulk).
        """
        order = _check_int(order, "order", 0)
        top = float(np.sum(self.eigenvalues ** order))
        if self.bulk_nodes.size == 0:
            return top, 0.0
        contributions = self.bulk_weights * self.bulk_nodes ** order
        if self.bulk_method != "slq":
            return top + float(contributions.sum()), 0.0
        n = self.num_probes
        per_probe = np.bincount(self.bulk_probes, weights=contributions, minlength=n) * n
        error = float(per_probe.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
        return top + float(per_probe.mean()), error

    def density(self, grid, *, width) -> np.ndarray:
        r"""The bulk density smoothed by a Gaussian of standard deviation ``width``, on
        ``grid``: :math:`\sum_j w_j \mathcal N(x; \theta_j, \mathrm{width}^2)` (integrates to
        :math:`P - k`). For plots."""
        grid = np.asarray(grid, dtype=np.float64)
        if not width > 0:
            raise ValueError(f"width must be > 0, but got {width}")
        z = (grid[..., None] - self.bulk_nodes) / width
        return (self.bulk_weights * np.exp(-0.5 * z * z)).sum(-1) / (width * math.sqrt(
            2 * math.pi))

    def summary(self) -> dict:
        """The scalars of this spectrum as a JSON-ready dict."""
        tr2, tr2_err = self.moment(2)
        return {"num_parameters": self.num_parameters, "k": self.k,
                "top_eigenvalues": self.eigenvalues.tolist(),
                "bulk_method": self.bulk_method, "num_probes": self.num_probes,
                "num_bulk_nodes": int(self.bulk_nodes.size), "trace": self.trace,
                "trace_stderr": self.trace_stderr, "trace_h2": tr2, "trace_h2_stderr": tr2_err,
                "negative_weight": self.negative_weight, "num_hvps": self.num_hvps,
                "info": self.info}

    # ---- storage ------------------------------------------------------------------------

    def save(self, path, *, eigenvectors: bool = True) -> Path:
        """Write to ``path`` (one ``.npz``, written atomically; no pickle). The eigenvectors
        are stored as a NumPy array of their dtype unless ``eigenvectors=False``."""
        path = Path(path)
        meta = {"format": _FORMAT, "trace": self.trace, "trace_stderr": self.trace_stderr,
                "num_parameters": self.num_parameters, "bulk_method": self.bulk_method,
                "num_hvps": self.num_hvps, "info": self.info,
                "has_residuals": self.residuals is not None,
                "has_eigenvectors": eigenvectors and self.eigenvectors is not None}
        arrays = {"eigenvalues": self.eigenvalues, "bulk_nodes": self.bulk_nodes,
                  "bulk_weights": self.bulk_weights, "bulk_probes": self.bulk_probes,
                  "meta": np.array(json.dumps(meta))}
        if self.residuals is not None:
            arrays["residuals"] = self.residuals
        if meta["has_eigenvectors"]:
            vectors = self.eigenvectors
            if hasattr(vectors, "detach"):
                vectors = vectors.detach().cpu().numpy()
            arrays["eigenvectors"] = np.asarray(vectors)
        atomic_write(path, lambda stream: np.savez(stream, **arrays))
        return path

    @classmethod
    def load(cls, path, *, device=None, dtype=None) -> "Spectrum":
        """Read a spectrum written by :meth:`save` (``allow_pickle=False``). With ``device``
        or ``dtype`` (torch) the eigenvectors become a tensor there; else a NumPy array."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{str(path)!r} is a spectrum of format {meta.get('format')!r}, "
                                 f"but this version reads format {_FORMAT}")
            vectors = data["eigenvectors"] if meta["has_eigenvectors"] else None
            residuals = data["residuals"] if meta["has_residuals"] else None
            arrays = {key: data[key] for key in ("eigenvalues", "bulk_nodes", "bulk_weights",
                                                 "bulk_probes")}
        if vectors is not None and (device is not None or dtype is not None):
            import torch

            vectors = torch.from_numpy(vectors).to(device=device, dtype=dtype)
        return cls(eigenvectors=vectors, residuals=residuals, trace=meta["trace"],
                   trace_stderr=meta["trace_stderr"], num_parameters=meta["num_parameters"],
                   bulk_method=meta["bulk_method"], num_hvps=meta["num_hvps"],
                   info=meta["info"], **arrays)


# --------------------------------------------------------------------------------------------
# stochastic Lanczos quadrature
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanczosQuadrature:
    """Result of :func:`stochastic_lanczos_quadrature`.

    ``nodes`` and ``weights`` are ``(num_probes, lanczos_steps)`` float64 (a probe whose Krylov
    space was exhausted early has zero-weight padding); each probe's weights sum to
    ``dimension / num_probes``, so all weights sum to ``dimension`` (the size of the space
    after deflation). ``quadratic_forms`` is ``(num_probes,)``, :math:`u^\\top H u` of each unit
    probe; ``num_products`` the operator products used; ``steps`` the Lanczos steps each probe
    took.
    """

    nodes: np.ndarray
    weights: np.ndarray
    quadratic_forms: np.ndarray
    dimension: int
    num_products: int
    steps: np.ndarray


def _deflate(block, basis, passes=2):
    for _ in range(passes):
        block = block - (block @ basis.T) @ basis
    return block


def stochastic_lanczos_quadrature(matvec, num_parameters, *, num_probes=30, lanczos_steps=50,
                                  deflate=None, seed=0, dtype=None, device=None,
                                  block_size=1, progress=False) -> LanczosQuadrature:
    r"""Spectral density of a symmetric operator by stochastic Lanczos quadrature, deflated.

    See the module docstring for the estimator. For each of ``num_probes`` Gaussian probes
    (drawn on the CPU in float64 from ``torch.Generator().manual_seed(seed)``, one probe per
    call, so the probes do not depend on ``block_size`` or the device) projected off the rows
    of ``deflate`` and normalised, ``lanczos_steps`` Lanczos steps with full
    reorthogonalisation (two Gram-Schmidt passes against the previous Lanczos vectors and the
    deflated rows) build the tridiagonal :math:`T`; its eigenvalues are the nodes and the
    squared first components of its eigenvectors, times ``dimension / num_probes``, the
    weights. A probe stops early when its Krylov space is exhausted (the new vector's norm
    falls to rounding level, :math:`100\,\epsilon\,\|T\|`).

    Parameters
    ----------
    matvec:
        callable mapping a ``(b, P)`` tensor to the ``(b, P)`` tensor of products :math:`H V`
        (any floating dtype; e.g. ``numeric._hessian._HessianOperator.matmul``).
    num_parameters:
        :math:`P`.
    num_probes, lanczos_steps:
        ``>= 1`` each; the steps are capped at ``dimension = P - len(deflate)``.
    deflate:
        ``(k, P)`` orthonormal rows to project out (tensor or array), or ``None``.
    dtype, device:
        of the Lanczos vectors (default float64, CPU). Memory: ``block_size *
        (lanczos_steps + 1)`` vectors of size ``P`` in ``dtype``, plus ``deflate``.
    block_size:
        probes advanced together (one operator call per step for the block: shared forward
        and backward passes for a network), ``>= 1``.
    progress:
        show a tqdm bar over the Lanczos steps.

    Returns
    -------
    :class:`LanczosQuadrature`. Raises ``ValueError``/``TypeError`` naming the argument.
    """
    import torch

    P = _check_int(num_parameters, "num_parameters", 1)
    num_probes = _check_int(num_probes, "num_probes", 1)
    lanczos_steps = _check_int(lanczos_steps, "lanczos_steps", 1)
    block_size = _check_int(block_size, "block_size", 1)
    if not callable(matvec):
        raise TypeError(f"matvec must be callable, but got {type(matvec).__name__}")
    dtype = torch.float64 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, but got {dtype!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    Q = None
    if deflate is not None:
        Q = torch.as_tensor(deflate).to(device=device, dtype=dtype)
        if Q.ndim != 2 or Q.shape[1] != P:
            raise ValueError(f"deflate must have shape (k, {P}), but got {tuple(Q.shape)}")
        if Q.shape[0] == 0:
            Q = None
    dimension = P - (0 if Q is None else Q.shape[0])
    if dimension < 1:
        raise ValueError(f"deflate removes all {P} dimensions: nothing left for the bulk")
    m = min(lanczos_steps, dimension)
    eps = torch.finfo(dtype).eps
    generator = torch.Generator().manual_seed(int(seed))
    alphas = np.zeros((num_probes, m))
    betas = np.zeros((num_probes, m))
    lengths = np.zeros(num_probes, np.int64)
    products = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_probes * m, desc="SLQ (Lanczos steps)", leave=False)
    for first in range(0, num_probes, block_size):
        b = min(block_size, num_probes - first)
        probes = torch.stack([torch.randn(P, generator=generator, dtype=torch.float64)
                              for _ in range(b)]).to(device=device, dtype=dtype)
        if Q is not None:
            probes = _deflate(probes, Q)
        probes = probes / torch.linalg.vector_norm(probes, dim=1, keepdim=True)
        basis = torch.zeros((b, m + 1, P), dtype=dtype, device=device)
        basis[:, 0] = probes
        active = torch.ones(b, dtype=torch.bool)
        scale = np.zeros(b)
        for j in range(m):
            rows = torch.nonzero(active).flatten()
            if rows.numel() == 0:
                break
            every = rows.numel() == b
            w = matvec(basis[:, j] if every else basis[rows, j]).to(device=device, dtype=dtype)
            products += rows.numel()
            coefficients = torch.zeros((rows.numel(), j + 1), dtype=torch.float64, device=device)
            previous = basis[:, :j + 1] if every else basis[rows, :j + 1]  # (r, j+1, P)
            for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
                c = torch.einsum("rjp,rp->rj", previous, w)
                w = w - torch.einsum("rj,rjp->rp", c, previous)
                coefficients += c.double()
                if Q is not None:
                    w = _deflate(w, Q, passes=1)
            norms = torch.linalg.vector_norm(w.double(), dim=1)
            coefficients = coefficients.cpu().numpy()
            norms = norms.cpu().numpy()
            for index, row in enumerate(rows.tolist()):
                probe = first + row
                alphas[probe, j] = coefficients[index, j]
                scale[row] = max(scale[row], abs(alphas[probe, j]), norms[index])
                lengths[probe] = j + 1
                if norms[index] <= 100 * eps * max(scale[row], 1e-300) or j == m - 1:
                    active[row] = False
                    continue
                betas[probe, j] = norms[index]
                basis[row, j + 1] = w[index] / norms[index]
            if bar is not None:
                bar.update(b)
        del basis
    if bar is not None:
        bar.close()
    nodes = np.zeros((num_probes, m))
    weights = np.zeros((num_probes, m))
    for probe in range(num_probes):
        L = int(lengths[probe])
        T = np.diag(alphas[probe, :L]) + np.diag(betas[probe, :L - 1], 1) + np.diag(
            betas[probe, :L - 1], -1)
        theta, Y = np.linalg.eigh(T)
        nodes[probe, :L] = theta
        weights[probe, :L] = Y[0] ** 2 * dimension / num_probes
    return LanczosQuadrature(nodes=nodes, weights=weights, quadratic_forms=alphas[:, 0].copy(),
                             dimension=dimension, num_products=products, steps=lengths)


def _bulk_from_quadrature(quadrature: LanczosQuadrature):
    keep = quadrature.weights > 0
    probes = np.broadcast_to(np.arange(quadrature.nodes.shape[0])[:, None],
                             quadrature.nodes.shape)
    return quadrature.nodes[keep], quadrature.weights[keep], probes[keep]


def _trace_from_quadrature(top, quadrature: LanczosQuadrature):
    """tr H = sum of the top eigenvalues (Rayleigh quotients of the deflated rows) plus the
    deflated Hutchinson estimate (P - k) mean_probes u^T H u, and its standard error."""
    forms = quadrature.quadratic_forms * quadrature.dimension
    n = forms.size
    error = float(forms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return float(np.sum(top) + forms.mean()), error


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


def spectrum_from_model(model, loss_fn, batches, *, k, num_probes=30, lanczos_steps=50,
                        trace_samples=0, tol=1e-3, seed=0, dtype=None, block_size=1,
                        eigenpairs=None, progress=False, distributed=False) -> Spectrum:
    r"""The :class:`Spectrum` of the training-loss Hessian of a ``torch.nn.Module``.

    Top ``k`` eigenpairs by :func:`numeric.hessian_eigenpairs` (residual tolerance ``tol``,
    or given as ``eigenpairs``, a :class:`numeric.HessianEigenpairs` of this model), then the
    bulk by :func:`stochastic_lanczos_quadrature` on the same operator with those ``k``
    eigenvectors deflated (``num_probes`` x ``lanczos_steps`` Hessian-vector products at
    most). Every product goes through the operator of :mod:`numeric._hessian`: eval mode
    (each module's flag restored), products in the model's dtype accumulated in float64 over
    ``batches`` (re-iterable, deterministic; see :func:`numeric.hessian_vector_product`).

    The trace is the deflated Hutchinson estimate of the same probes, :math:`\sum_{i\le k}
    \rho_i + (P-k)\,\overline{u^\top H u}`, with its standard error across probes; with
    ``trace_samples >= 2`` it is instead :func:`numeric.hutchinson_trace` with that many
    Rademacher probes (independent of the SLQ probes).

    ``k`` may be 0 (no deflation). ``dtype`` is the working dtype of the Lanczos vectors and
    of the returned eigenvectors (default: the model's); they live on the model's device.
    ``block_size`` probes share each operator call (memory: ``block_size * (lanczos_steps +
    1)`` model-sized vectors). Raises ``TypeError``/``ValueError`` naming the argument.

    ``distributed`` (``True`` or a ``torch.distributed`` process group; default ``False``):
    ``batches`` is this rank's shard of the data, and every product (top-k eigensolver, SLQ,
    Hutchinson) is all-reduced to the operator of the union of the shards (see
    :mod:`numeric._hessian`). The probes come from CPU generators seeded with ``seed``, so
    every rank draws the same ones; the products, hence the Krylov bases and the returned
    Spectrum, are then the same on every rank and equal one process's over all the data up
    to the order of summation. Every rank must call with the same arguments.
    """
    import torch

    from ._hessian import _HessianOperator, _eval_mode, hessian_eigenpairs, hutchinson_trace

    operator = _HessianOperator(model, loss_fn, batches, distributed)
    P = operator.num_params
    k = _check_int(k, "k", 0)
    if k >= P:
        raise ValueError(f"k must be < {P} (the number of parameters) to leave a bulk, but got "
                         f"{k}")
    trace_samples = _check_int(trace_samples, "trace_samples", 0)
    if trace_samples == 1:
        raise ValueError("trace_samples must be 0 (trace from the SLQ probes) or >= 2, but got 1")
    dtype = operator.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, but got {dtype!r}")
    hvps = 0
    if k == 0:
        values, vectors, residuals, converged = np.zeros(0), None, np.zeros(0), True
    else:
        if eigenpairs is None:
            eigenpairs = hessian_eigenpairs(model, loss_fn, batches, k, tol=tol, dtype=dtype,
                                            seed=seed, distributed=distributed)
            hvps += eigenpairs.num_hvps
        if tuple(eigenpairs.eigenvectors.shape) != (k, P):
            raise ValueError(f"eigenpairs must hold k={k} eigenvectors of size {P}, but got "
                             f"shape {tuple(eigenpairs.eigenvectors.shape)}")
        values = _float_array(eigenpairs.eigenvalues, "eigenpairs.eigenvalues")
        residuals = _float_array(eigenpairs.residuals, "eigenpairs.residuals")
        vectors = torch.as_tensor(eigenpairs.eigenvectors).to(operator.device, dtype)
        converged = bool(eigenpairs.converged)
    with _eval_mode(model):
        quadrature = stochastic_lanczos_quadrature(
            operator.matmul, P, num_probes=num_probes, lanczos_steps=lanczos_steps,
            deflate=vectors, seed=seed + 1, dtype=dtype, device=operator.device,
            block_size=block_size, progress=progress)
    hvps += operator.num_hvps
    if trace_samples:
        estimate = hutchinson_trace(model, loss_fn, batches, num_samples=trace_samples,
                                    generator=torch.Generator().manual_seed(seed + 2),
                                    distributed=distributed)
        trace, trace_err = estimate.value, estimate.standard_error
        hvps += estimate.num_hvps
        trace_method = "hutchinson"
    else:
        trace, trace_err = _trace_from_quadrature(values, quadrature)
        trace_method = "deflated hutchinson (SLQ probes)"
    nodes, weights, probes = _bulk_from_quadrature(quadrature)
    return Spectrum(eigenvalues=values, eigenvectors=vectors, residuals=residuals,
                    bulk_nodes=nodes, bulk_weights=weights, bulk_probes=probes,
                    bulk_method="slq", trace=trace, trace_stderr=trace_err, num_parameters=P,
                    num_hvps=hvps,
                    info={"num_probes": num_probes, "lanczos_steps": lanczos_steps,
                          "seed": seed, "tol": tol, "top_converged": converged,
                          "trace_method": trace_method, "dtype": str(dtype),
                          "slq_hvps": quadrature.num_products})


def spectrum_from_least_squares(X, *, num_outputs=1, k=None, bulk="exact", num_probes=30,
                                lanczos_steps=50, seed=0) -> Spectrum:
    r"""The exact :class:`Spectrum` of least squares, :math:`I_c \otimes X^\top X / N`.

    The top ``k`` eigenpairs are those of :func:`numeric.linear_regression_eigenpairs` (same
    order, signs and layout; default ``k = 0``). ``bulk="exact"``: the other
    :math:`cd - k` eigenvalues as nodes, each distinct eigenvalue of :math:`X^\top X/N` once
    with its remaining multiplicity (``c`` minus the copies among the top ``k``) as weight;
    trace exact (``trace_stderr = 0``). ``bulk="slq"``: the bulk by
    :func:`stochastic_lanczos_quadrature` on the exact operator with the top ``k``
    deflated (for testing SLQ against the exact density), trace as in
    :func:`spectrum_from_model`. Eigenvalues are not clipped: rounding may leave tiny
    negative values for zero modes, and they are reported (:attr:`Spectrum.negative_weight`).

    ``X`` ``(N, d)`` NumPy or torch (eigenvectors are then of its dtype and device). Raises
    ``TypeError``/``ValueError`` naming the argument.
    """
    import torch

    from ._hessian import _check_design, linear_regression_eigenpairs

    X = _check_design(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (N, d) with N >= 1, but got {tuple(X.shape)}")
    c = _check_int(num_outputs, "num_outputs", 1)
    d = X.shape[1]
    P = c * d
    k = 0 if k is None else _check_int(k, "k", 0)
    if k > P:
        raise ValueError(f"k must be <= {P} (num_outputs * d), but got {k}")
    if bulk not in ("exact", "slq"):
        raise ValueError(f"bulk must be 'exact' or 'slq', but got {bulk!r}")
    X64 = X.detach().double().cpu().numpy() if isinstance(X, torch.Tensor) else X
    H = X64.T @ X64 / X64.shape[0]
    if k:
        eig = linear_regression_eigenpairs(X, k, num_outputs=c)
        values, vectors = _float_array(eig.eigenvalues, "eigenvalues"), eig.eigenvectors
        residuals = _float_array(eig.residuals, "residuals")
    else:
        values, vectors, residuals = np.zeros(0), None, np.zeros(0)
    info = {"source": "least squares", "num_outputs": c, "num_features": d}
    if bulk == "exact":
        rho = np.linalg.eigvalsh(H)[::-1]
        remaining = np.full(d, float(c))
        np.subtract.at(remaining, np.arange(k) // c, 1.0)
        keep = remaining > 0
        trace = float(c * np.trace(H))
        return Spectrum(eigenvalues=values, eigenvectors=vectors, residuals=residuals,
                        bulk_nodes=rho[keep], bulk_weights=remaining[keep],
                        bulk_method="exact" if k < P else "none", trace=trace,
                        trace_stderr=0.0, num_parameters=P, info=info)
    if k == P:
        raise ValueError(f"bulk='slq' needs k < {P} to leave a bulk, but got k={k}")
    H_t = torch.from_numpy(H)

    def matvec(block):
        block = block.to(torch.float64)
        return (block.reshape(-1, c, d) @ H_t).reshape(block.shape[0], P)

    deflate = None if vectors is None else torch.as_tensor(vectors).to("cpu", torch.float64)
    quadrature = stochastic_lanczos_quadrature(matvec, P, num_probes=num_probes,
                                               lanczos_steps=lanczos_steps, deflate=deflate,
                                               seed=seed, block_size=num_probes)
    trace, trace_err = _trace_from_quadrature(values, quadrature)
    nodes, weights, probes = _bulk_from_quadrature(quadrature)
    return Spectrum(eigenvalues=values, eigenvectors=vectors, residuals=residuals,
                    bulk_nodes=nodes, bulk_weights=weights, bulk_probes=probes,
                    bulk_method="slq", trace=trace, trace_stderr=trace_err, num_parameters=P,
                    num_hvps=quadrature.num_products,
                    info=info | {"num_probes": num_probes, "lanczos_steps": lanczos_steps,
                                 "seed": seed})


# --------------------------------------------------------------------------------------------
# noise models
# --------------------------------------------------------------------------------------------


class IsotropicNoise:
    r"""Assumption 5 of Kunin et al. 2023: :math:`\Sigma = \sigma^2 H` on every mode, so the
    gradient-noise variance of mode ``l`` is :math:`\sigma^2\rho_l`.

    ``IsotropicNoise(sigma2)`` with ``sigma2 >= 0`` given; :meth:`fit` from measured
    projections (:func:`numeric.noise_scale_fit`, least squares in the eigenbasis);
    :meth:`from_trace` as :math:`\mathrm{tr}\,\Sigma / \mathrm{tr}\,H` (which makes eq. 12
    exact in the SDE for any :math:`\Sigma`).
    """

    def __init__(self, sigma2):
        sigma2 = float(sigma2)
        if not (math.isfinite(sigma2) and sigma2 >= 0):
            raise ValueError(f"sigma2 (the noise scale of Assumption 5) must be finite and "
                             f">= 0, but got {sigma2}")
        self.sigma2 = sigma2
        self.fit_result = None

    @classmethod
    def fit(cls, noise, eigenvalues, eigenvectors=None) -> "IsotropicNoise":
        """:math:`\\sigma^2` fitted by :func:`numeric.noise_scale_fit` (same arguments); the
        :class:`numeric.NoiseFit` is kept in ``fit_result``."""
        result = noise_scale_fit(noise, eigenvalues, eigenvectors)
        model = cls(result.sigma2)
        model.fit_result = result
        return model

    @classmethod
    def from_trace(cls, noise_trace, spectrum) -> "IsotropicNoise":
        r""":math:`\sigma^2 = \mathrm{tr}\,\Sigma / \mathrm{tr}\,H` (``spectrum`` a
        :class:`Spectrum` or the value of :math:`\mathrm{tr}\,H`)."""
        trace = spectrum.trace if isinstance(spectrum, Spectrum) else float(spectrum)
        if not trace > 0:
            raise ValueError(f"the Hessian trace must be > 0 to fit sigma2, but got {trace}")
        return cls(float(noise_trace) / trace)

    def mode_sigma2(self, spectrum: Spectrum) -> np.ndarray:
        """:math:`\\sigma^2_l` of every mode of :meth:`Spectrum.nodes` (noise variance over
        curvature)."""
        return np.full(spectrum.k + spectrum.bulk_nodes.size, self.sigma2)

    def __repr__(self):
        return f"IsotropicNoise(sigma2={self.sigma2!r})"


class PerModeNoise:
    r"""Measured gradient-noise variances :math:`s_l = q_l^\top \Sigma q_l` of the top ``k``
    modes, and Assumption 5 (:math:`\Sigma = \sigma^2_{\rm bulk} H`) for the bulk.

    The stationary variances of a mode are linear in its noise variance (eq. 27 and
    docs/theory.md section 6), so mode ``l`` of the top enters every prediction with
    :math:`\sigma^2_l = s_l / \rho_l`. ``top_variances`` ``(k,)`` ``>= 0`` in the order of
    :attr:`Spectrum.eigenvalues`; ``bulk_sigma2 >= 0``. Off-diagonal noise between modes is
    ignored (the per-mode theory has none).
    """

    def __init__(self, top_variances, bulk_sigma2):
        top = _float_array(top_variances, "top_variances")
        if np.any(top < 0):
            raise ValueError(f"top_variances must be >= 0, but got {int((top < 0).sum())} "
                             "negative")
        bulk_sigma2 = float(bulk_sigma2)
        if not (math.isfinite(bulk_sigma2) and bulk_sigma2 >= 0):
            raise ValueError(f"bulk_sigma2 must be finite and >= 0, but got {bulk_sigma2}")
        self.top_variances, self.bulk_sigma2 = top, bulk_sigma2

    @classmethod
    def from_projection(cls, projected_covariance, spectrum: Spectrum, *,
                        bulk_sigma2=None) -> "PerModeNoise":
        """From :math:`Q\\Sigma Q^\\top` ``(k, k)`` on the spectrum's top eigenvectors: its
        diagonal, and for the bulk ``bulk_sigma2`` (default: the Assumption-5 fit of
        :func:`numeric.noise_scale_fit` on the same projection)."""
        projected = _float_array(projected_covariance, "projected_covariance", ndim=2)
        if bulk_sigma2 is None:
            bulk_sigma2 = noise_scale_fit(projected, spectrum.eigenvalues).sigma2
        return cls(np.diag(projected), bulk_sigma2)

    def mode_sigma2(self, spectrum: Spectrum) -> np.ndarray:
        if self.top_variances.shape != (spectrum.k,):
            raise ValueError(f"top_variances must have one entry per top eigenvalue "
                             f"({spectrum.k}), but got shape {self.top_variances.shape}")
        rho = spectrum.eigenvalues
        safe = np.where(rho > 0, rho, 1.0)
        top = np.where(rho > 0, self.top_variances / safe, 0.0)
        return np.concatenate([top, np.full(spectrum.bulk_nodes.size, self.bulk_sigma2)])

    def __repr__(self):
        return (f"PerModeNoise(top_variances=<{self.top_variances.size} values>, "
                f"bulk_sigma2={self.bulk_sigma2!r})")


# --------------------------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """A prediction from a :class:`Spectrum`: ``value`` (float, or an array over ``k``), and
    the modes it left out (see the module docstring): ``excluded_weight`` modes with
    :math:`\\rho \\le` ``rtol`` :math:`\\rho_{\\max}`, of which ``negative_weight`` have
    :math:`\\rho + \\lambda < 0`. ``standard_error`` (shape of ``value``) is the spread of the
    SLQ estimate over its probes, :math:`\\sqrt{n}\\,\\mathrm{std}_p(\\text{bulk part of probe } p)`
    (0 for an exact bulk; ``nan`` where not defined). It does not include the quadrature's
    own bias (Gauss quadrature with ``m`` nodes per probe cannot resolve structure of the
    density finer than its nodes, e.g. near :math:`\\rho = 0`). ``float(p)`` and
    ``numpy.asarray(p)`` give the value."""

    value: Any
    excluded_weight: float
    negative_weight: float
    model: str
    standard_error: Any = 0.0

    def __float__(self):
        return float(self.value)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype=dtype)


def _noise_model(noise):
    if isinstance(noise, (IsotropicNoise, PerModeNoise)):
        return noise
    raise TypeError(f"noise must be an IsotropicNoise or a PerModeNoise, but got "
                    f"{type(noise).__name__} {noise!r}")


def _modes(spectrum: Spectrum, noise, lam, rtol):
    """(curvatures, weights times sigma^2_l, probe of each (-1 for the top), excluded weight,
    negative weight)."""
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be a numeric.Spectrum, but got {type(spectrum).__name__}")
    noise = _noise_model(noise)
    if not (isinstance(rtol, (int, float)) and 0 <= rtol < 1):
        raise ValueError(f"rtol must be in [0, 1), but got {rtol!r}")
    rho, weights = spectrum.nodes(), spectrum.weights()
    sigma2 = noise.mode_sigma2(spectrum)
    top = rho.max() if rho.size else 0.0
    keep = (rho > rtol * top) & (rho > 0)
    lam = float(lam)
    excluded = float(weights[~keep].sum())
    negative = float(weights[rho + lam < 0].sum())
    probes = np.concatenate([np.full(spectrum.k, -1), spectrum.bulk_probes])
    if spectrum.bulk_method != "slq":
        probes = np.full(rho.shape, -1)
    return rho[keep], weights[keep] * sigma2[keep], probes[keep], excluded, negative


def _with_probe_error(evaluate, rho, weights, probes, num_probes):
    """``evaluate(rho, weights)`` over all modes, and the standard error of its SLQ part from
    the spread of the per-probe parts (each probe's part times ``num_probes`` is one unbiased
    estimate of the bulk's part)."""
    value = np.asarray(evaluate(rho, weights), dtype=np.float64)
    if num_probes < 2 or not np.any(probes >= 0):
        return value, np.zeros_like(value)
    parts = []
    for probe in range(num_probes):
        mine = probes == probe
        parts.append(np.asarray(evaluate(rho[mine], weights[mine]), dtype=np.float64)
                     if mine.any() else np.zeros_like(value))
    parts = np.stack(parts) * num_probes
    return value, parts.std(0, ddof=1) / math.sqrt(num_probes)


def predicted_speed(spectrum, *, eta, beta, lam=0.0, S, noise, model="discrete",
                    rtol=NONPOSITIVE_RTOL) -> Prediction:
    r"""Stationary :math:`E\|\delta\|^2 = \eta^2 \sum_l \mathrm{Var}_{ss}(v_l)` (eq. 12) from a
    partial spectrum: :math:`\eta^2 \sum_{\rm modes} w\,\mathrm{Var}_{ss}(v; \rho, \sigma^2_l)`
    over the top eigenvalues (weight 1) and the bulk nodes, by
    :func:`numeric.instantaneous_speed` with ``weights=``. ``model="sde"`` gives eq. 12,
    :math:`\eta^2\sigma^2\mathrm{tr}H/(S(1-\beta^2))` for isotropic noise; ``"discrete"``
    (default) the exact stationary value of the recursion (docs/theory.md section 6).

    ``noise``: :class:`IsotropicNoise` or :class:`PerModeNoise`; ``S`` the (effective) batch
    size. Modes with :math:`\rho \le` ``rtol`` :math:`\rho_{\max}` (all those with
    :math:`\rho+\lambda \le 0` among them) are excluded and counted in the result; a mode
    beyond the stability edge raises ``ValueError`` for ``"discrete"``.
    """
    rho, weights, probes, excluded, negative = _modes(spectrum, noise, lam, rtol)
    if rho.size == 0:
        return Prediction(0.0, excluded, negative, model)

    def evaluate(rho, weights):
        if rho.size == 0:
            return 0.0
        return kernels.instantaneous_speed(rho, eta=eta, beta=beta, lam=lam, S=S, sigma2=1.0,
                                           model=model, weights=weights)

    value, error = _with_probe_error(evaluate, rho, weights, probes, spectrum.num_probes)
    return Prediction(float(value), excluded, negative, model, float(error))


def predicted_global_displacement(spectrum, k, *, eta, beta, lam=0.0, S, noise,
                                  model="discrete", rtol=NONPOSITIVE_RTOL) -> Prediction:
    r""":math:`E\|\Delta_k\|^2` at stationarity (eq. 13) from a partial spectrum, at the steps
    ``k`` (any shape; whole numbers for ``"discrete"``): :func:`numeric.global_displacement`
    over the top eigenvalues and the bulk nodes with ``weights=`` (weight times
    :math:`\sigma^2_l` of the noise model). Modes with :math:`\rho \le` ``rtol``
    :math:`\rho_{\max}` (all those with :math:`\rho+\lambda \le 0` among them) are excluded
    and counted in the result. ``value`` has the shape of ``k``."""
    rho, weights, probes, excluded, negative = _modes(spectrum, noise, lam, rtol)
    if rho.size == 0:
        return Prediction(np.zeros(np.shape(k)), excluded, negative, model,
                          np.zeros(np.shape(k)))

    def evaluate(rho, weights):
        if rho.size == 0:
            return np.zeros(np.shape(k))
        return kernels.global_displacement(rho, k, eta=eta, beta=beta, lam=lam, S=S,
                                           sigma2=1.0, model=model, weights=weights)

    value, error = _with_probe_error(evaluate, rho, weights, probes, spectrum.num_probes)
    return Prediction(value, excluded, negative, model, error)


def predicted_exponent(spectrum, steps, *, eta, beta, lam=0.0, S, noise, model="discrete",
                       window=2 / 3, rtol=NONPOSITIVE_RTOL) -> Prediction:
    r"""The exponent :math:`c` of :math:`E\|\Delta_k\|^2 \approx \alpha k^c` fitted on the last
    ``window`` of ``steps`` exactly as a measurement is (:func:`numeric.fit_power_law`: OLS of
    :math:`\log` value on :math:`\log k` over the same points), applied to
    :func:`predicted_global_displacement` at ``steps`` (1-D, increasing, > 0). Modes are
    treated as there."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.ndim != 1 or steps.size < 3 or not np.all(steps > 0) or np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be a 1-D increasing array of at least 3 steps > 0, but got "
                         f"shape {steps.shape}")
    curve = predicted_global_displacement(spectrum, steps, eta=eta, beta=beta, lam=lam, S=S,
                                          noise=noise, model=model, rtol=rtol)
    fit = fit_power_law(steps, curve.value, window=window, num_bootstrap=10,
                        rng=np.random.default_rng(0))
    return Prediction(float(fit.exponent), curve.excluded_weight, curve.negative_weight, model,
                      math.nan)
