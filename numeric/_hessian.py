"""Top Hessian eigenpairs and the Hessian trace of a training loss, from Hessian-vector products.

The operator is the Hessian of the full-batch training loss at the model's current parameters,

.. math::

    L(\\theta) = \\frac{1}{N} \\sum_{b} n_b \\, \\ell_b(\\theta), \\qquad
    H = \\nabla^2_\\theta L(\\theta),

where :math:`\\ell_b` is ``loss_fn(model(inputs_b), targets_b)`` (the *mean* loss of batch
:math:`b`), :math:`n_b` its number of samples (``len(targets_b)``) and :math:`N = \\sum_b n_b`.
This is the :math:`H` of Kunin et al. 2023 (eq. 3 and Assumption 5; docs/theory.md section 2),
whose eigenvectors :math:`q_l` and eigenvalues :math:`\\rho_l` define the modes the experiments
project on. Parameters are flattened in the order of ``model.parameters()``.

The operator is made deterministic: every Hessian-vector product (HVP) is taken with the model
in eval mode (each module's ``training`` flag is restored afterwards, also on error), so
dropout is off and batch normalisation uses its running statistics; loaders that shuffle are
refused. Data augmentation cannot be detected: the loader must yield the same unaugmented
batches on every pass. Per-batch products are computed in the model's dtype by double backward
(``torch.autograd.grad`` with ``create_graph=True``; the forward pass and first backward are
shared by a block of vectors) and accumulated over batches in float64.

The eigensolver is a thick-restart block Lanczos method with full reorthogonalisation and a
Rayleigh-Ritz step on every iteration; it stops when every wanted Ritz pair has the residual
:math:`\\|H q - \\rho q\\| \\le \\mathrm{tol}\\,|\\rho_1|`. Memory: a basis of
``max_basis`` vectors of the model's size (``2 k + 4`` by default), never a
dense Hessian. The baseline :func:`power_iteration_eigenpairs` is PyHessian's deflated power
iteration (Yao et al. 2020) with PyHessian's stopping rule (relative change of the Rayleigh
quotient) and, in addition, the same residual test.

For linear regression the Hessian is known exactly (:func:`linear_regression_hessian`,
:func:`linear_regression_eigenpairs`), with the same output type as the iterative solvers.

Data sharded across processes (``torch.distributed``): with ``distributed=True`` (the default
process group) or ``distributed=<a process group>``, each rank's ``batches`` are its shard of
the data and every product is all-reduced: :math:`H v = \\sum_r \\sum_{b \\in r} n_b H_b v /
\\sum_r \\sum_{b \\in r} n_b`, the operator of the union of the shards. The reduction is
explicit because ``torch.autograd.grad`` does not fire DistributedDataParallel's hooks (pass
the module itself, not its DDP wrapper). Every rank must make the same calls with the same
arguments (seeds, generators), so random probes and Krylov bases agree across ranks; the
results are then identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

__all__ = [
    "HessianEigenpairs",
    "TraceEstimate",
    "hessian_eigenpairs",
    "hessian_vector_product",
    "hutchinson_trace",
    "linear_regression_eigenpairs",
    "linear_regression_hessian",
    "power_iteration_eigenpairs",
]


@dataclass(frozen=True)
class HessianEigenpairs:
    """Top-k eigenpairs of a Hessian.

    Attributes
    ----------
    eigenvalues:
        shape ``(k,)``, sorted descending (:math:`\\rho_1 \\ge \\rho_2 \\ge \\dots`).
    eigenvectors:
        shape ``(k, num_params)``; row ``i`` is the unit eigenvector of ``eigenvalues[i]``,
        rows orthonormal, parameters flattened in the order of ``model.parameters()``. Sign
        convention: the entry of largest magnitude of each row is positive.
    residuals:
        shape ``(k,)``, :math:`\\|H q_i - \\rho_i q_i\\| / |\\rho_1|` (absolute residuals when
        :math:`\\rho_1 = 0`).
    num_hvps:
        number of Hessian-vector products used (0 for the exact linear-regression route).
    converged:
        whether every residual met the requested tolerance.

    Torch solvers return tensors on the model's device in the solver's working dtype (the
    model's floating dtype unless ``dtype=`` says otherwise); the linear-regression route
    returns the array type, dtype and device of its input.
    """

    eigenvalues: Any
    eigenvectors: Any
    residuals: Any
    num_hvps: int
    converged: bool


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of :math:`\\mathrm{tr}(H)`: ``value`` and its ``standard_error``
    (sample standard deviation of :math:`z^\\top H z` over :math:`\\sqrt{n}`), both floats,
    and the ``num_hvps`` used."""

    value: float
    standard_error: float
    num_hvps: int


# --------------------------------------------------------------------------------------------
# validation and the operator
# --------------------------------------------------------------------------------------------


def _check_model(model):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    params = list(model.parameters())
    if not params:
        raise ValueError("model must have at least one parameter, but model.parameters() is empty")
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(
            "every parameter must have requires_grad=True (the Hessian is taken with respect "
            f"to all of model.parameters()), but these do not: {frozen[:5]}"
        )
    dtypes = {p.dtype for p in params}
    devices = {p.device for p in params}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise TypeError(f"model parameters must share one floating dtype, but got {dtypes}")
    if len(devices) != 1:
        raise ValueError(f"model parameters must live on one device, but got {devices}")
    return params


def _check_batches(batches):
    if isinstance(batches, Iterator) or not isinstance(batches, Iterable):
        raise TypeError(
            "batches must be a re-iterable of (inputs, targets) pairs (a list, a tuple or a "
            "DataLoader without shuffling), because the operator is applied many times; but got "
            f"a one-shot {type(batches).__name__}. Wrap it in list(...) first."
        )
    if isinstance(batches, DataLoader):
        samplers = [getattr(batches, "sampler", None)]
        batch_sampler = getattr(batches, "batch_sampler", None)
        samplers.append(getattr(batch_sampler, "sampler", None))
        if any(isinstance(s, RandomSampler) for s in samplers):
            raise ValueError(
                "batches must yield the same batches on every pass, but got a DataLoader with a "
                "RandomSampler (shuffle=True); use shuffle=False and no data augmentation"
            )


def _check_loss_fn(loss_fn):
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, but got {type(loss_fn).__name__}")


def _check_k(k, num_params):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, but got {type(k).__name__}")
    if not 1 <= k <= num_params:
        raise ValueError(f"k must satisfy 1 <= k <= {num_params} (the number of parameters), "
                         f"but got {k}")
    return int(k)


def _check_tol(tol):
    if not isinstance(tol, (int, float, np.floating)) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a finite number > 0, but got {tol!r}")
    return float(tol)


def _check_positive_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, but got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {value}")
    return int(value)


@contextmanager
def _eval_mode(model):
    """Put every module in eval mode and restore each module's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _batch_size(targets, inputs):
    for item in (targets, inputs):
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return item.shape[0]
    try:
        return len(targets)
    except TypeError as error:
        raise TypeError("cannot tell the batch size: targets must be a tensor or have a len(), "
                        f"but got {type(targets).__name__}") from error


def _to_device(item, device):
    if isinstance(item, torch.Tensor):
        return item.to(device, non_blocking=True)
    if isinstance(item, (list, tuple)):
        return type(item)(_to_device(x, device) for x in item)
    return item


def _check_distributed(distributed):
    """``distributed`` -> the process group to all-reduce over, or None (no reduction)."""
    if distributed is False or distributed is None:
        return None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"distributed={distributed!r} needs an initialised torch.distributed "
                         "process group (torch.distributed.init_process_group), but there is none")
    if distributed is True:
        return torch.distributed.group.WORLD
    if isinstance(distributed, torch.distributed.ProcessGroup):
        return distributed
    raise TypeError(f"distributed must be False, True or a torch.distributed.ProcessGroup, but "
                    f"got {type(distributed).__name__}")


class _HessianOperator:
    """The map V -> H V for a block V of shape (m, num_params), counting the products.

    With ``distributed`` (True or a process group), each rank's batches are its shard and the
    products and sample counts are summed over the ranks of the group before the division."""

    def __init__(self, model, loss_fn, batches, distributed=False):
        self.params = _check_model(model)
        _check_loss_fn(loss_fn)
        _check_batches(batches)
        self.group = _check_distributed(distributed)
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.num_params = sum(self.sizes)
        self.num_hvps = 0

    def _unpack(self, batch):
        try:
            inputs, targets = batch
        except (TypeError, ValueError) as error:
            raise TypeError(
                "each element of batches must be an (inputs, targets) pair, but got "
                f"{type(batch).__name__}"
            ) from error
        return _to_device(inputs, self.device), _to_device(targets, self.device)

    def matmul(self, vectors):
        """(H @ vectors.T).T = vectors @ H (H is symmetric): row i of the result is H applied
        to row i of ``vectors``; (m, P) in -> (m, P) float64 out, on the model's device."""
        vectors = vectors.to(self.device, self.dtype)
        m = vectors.shape[0]
        out = torch.zeros((m, self.num_params), dtype=torch.float64, device=self.device)
        pieces = [v.reshape(m, *shape) for v, shape in
                  zip(vectors.split(self.sizes, dim=1), self.shapes)]
        total = 0
        for batch in self.batches:
            inputs, targets = self._unpack(batch)
            n_b = _batch_size(targets, inputs)
            total += n_b
            self._accumulate(inputs, targets, pieces, n_b, out)
        if self.group is not None:
            # autograd.grad fires no DDP hook: sum the shards' weighted sums and counts here
            count = torch.tensor([float(total)], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(out, group=self.group)
            torch.distributed.all_reduce(count, group=self.group)
            total = int(round(float(count)))
        if total == 0:
            raise ValueError("batches must yield at least one sample, but they yielded none")
        out /= total
        self.num_hvps += m
        return out

    def _accumulate(self, inputs, targets, pieces, weight, out):
        with torch.enable_grad():
            loss = self.loss_fn(self.model(inputs), targets)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return the mean loss of the batch as a scalar "
                                 f"tensor, but got {type(loss).__name__} "
                                 f"{tuple(getattr(loss, 'shape', ()))}")
            grads = torch.autograd.grad(loss.reshape(()), self.params, create_graph=True,
                                        allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:  # the loss is at most linear in the parameters: H = 0 on this batch
            return
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        m = out.shape[0]
        # A loop of double backward passes over one shared graph; torch's is_grads_batched
        # (vmap over the backward) measured no faster on ResNet-18 and is fragile.
        for row in range(m):
            products = torch.autograd.grad(
                [grads[i] for i in live], self.params,
                grad_outputs=[pieces[i][row] for i in live],
                retain_graph=row < m - 1, allow_unused=True,
            )
            for i, product in enumerate(products):
                if product is not None:
                    out[row, offsets[i]:offsets[i + 1]] += weight * product.reshape(-1).double()


def hessian_vector_product(model, loss_fn, batches, vectors, *, distributed=False):
    """Hessian-vector products :math:`H v` of the training loss, for a block of vectors.

    Parameters
    ----------
    model:
        a ``torch.nn.Module``; the Hessian is with respect to all of ``model.parameters()``,
        flattened in that order (``P`` entries). Put in eval mode for the products and
        restored afterwards.
    loss_fn:
        ``loss_fn(outputs, targets)`` -> mean loss of a batch (scalar tensor).
    batches:
        re-iterable of ``(inputs, targets)``; batch :math:`b` is weighted by its sample count
        :math:`n_b`, so :math:`H` is the Hessian of the mean loss over all samples. Must not
        shuffle or augment.
    vectors:
        tensor of shape ``(m, P)`` or ``(P,)``.
    distributed:
        ``False`` (default); ``True`` or a ``torch.distributed`` process group: ``batches``
        is this rank's shard and the products are all-reduced over the group (module
        docstring).

    Returns
    -------
    Tensor of the shape of ``vectors``, float64, on the model's device (products computed in
    the model's dtype, accumulated over batches in float64).

    Raises
    ------
    TypeError / ValueError on a bad model, loss, loader, or a vector of the wrong size.
    """
    operator = _HessianOperator(model, loss_fn, batches, distributed)
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, but got {type(vectors).__name__}")
    if vectors.dim() not in (1, 2) or vectors.shape[-1] != operator.num_params:
        raise ValueError(f"vectors must have shape (m, {operator.num_params}) or "
                         f"({operator.num_params},), but got {tuple(vectors.shape)}")
    block = vectors.reshape(-1, operator.num_params)
    with _eval_mode(model):
        product = operator.matmul(block)
    return product.reshape(vectors.shape)


# --------------------------------------------------------------------------------------------
# eigensolvers
# --------------------------------------------------------------------------------------------


def _sign_convention(vectors):
    """Flip each row so that its entry of largest magnitude is positive."""
    index = vectors.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(vectors.gather(1, index))
    signs[signs == 0] = 1
    return vectors * signs


def _random_block(rows, cols, seed, dtype, device):
    generator = torch.Generator().manual_seed(seed)
    # drawn on the CPU in float64 so that the start is the same on every device
    return torch.randn(rows, cols, generator=generator, dtype=torch.float64).to(device, dtype)


def _orthonormalize(block, basis, seed, scale):
    """Orthonormal rows spanning ``block`` after removing ``basis`` (two Gram-Schmidt passes);
    returns (rows, R) with block_perp = R^T rows. Directions whose norm is below rounding level
    relative to ``scale`` (an invariant subspace was found) get fresh random vectors, and zero
    rows of R."""
    for _ in range(2):
        if basis is not None and basis.shape[0]:
            block = block - (block @ basis.T) @ basis
    q, r = torch.linalg.qr(block.T)
    rows = q.T.contiguous()
    deficient = r.diagonal().abs() <= 100 * torch.finfo(block.dtype).eps * scale
    if bool(deficient.any()):
        fresh = _random_block(int(deficient.sum()), block.shape[1], seed, block.dtype, block.device)
        rows = rows.clone()
        keep = rows[~deficient]
        full_basis = keep if basis is None else torch.cat([basis, keep])
        for _ in range(2):
            fresh = fresh - (fresh @ full_basis.T) @ full_basis
            fresh, _ = torch.linalg.qr(fresh.T)
            fresh = fresh.T
        rows[deficient] = fresh
        r = r.clone()
        r[deficient] = 0
    return rows, r


def _dense_eigenpairs(operator, k, dtype):
    """When the Krylov basis would span the whole space: form H column by column (P HVPs)."""
    identity = torch.eye(operator.num_params, dtype=dtype, device=operator.device)
    hessian = operator.matmul(identity)
    hessian = (hessian + hessian.T) / 2
    values, vectors = torch.linalg.eigh(hessian)
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k].T
    residual = (vectors @ hessian - values[:, None] * vectors).norm(dim=1)
    return values, vectors, residual


def _lanczos(operator, k, tol, max_hvps, block_size, max_basis, seed, dtype):
    """Thick-restart block Lanczos with full reorthogonalisation.

    Keeps the block Arnoldi relation H Q^T = Q^T T + W^T E^T, with Q (n, P) orthonormal,
    T = Q H Q^T (n, n) formed from explicit inner products, and W (b, P) the residual of the
    newest block. The Ritz pair (theta, Q^T y) then has the exact residual ||W^T y_last||,
    with y_last the entries of y on the newest block. On restart the basis is replaced by the
    leading Ritz vectors, T by their Ritz values, and W carries over as the next block.
    """
    device, P, b = operator.device, operator.num_params, block_size
    basis = torch.empty((max_basis, P), dtype=dtype, device=device)
    T = torch.zeros((max_basis, max_basis), dtype=torch.float64)
    block, _ = _orthonormalize(_random_block(b, P, seed, dtype, device), None, seed + 1, 1.0)
    basis[:b] = block
    n, restarts = b, 0
    while True:
        newest = basis[n - b:n]
        product = operator.matmul(newest).to(dtype)
        coefficients = torch.zeros((n, b), dtype=torch.float64)
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
            c = basis[:n] @ product.T
            product = product - c.T @ basis[:n]
            coefficients += c.double().cpu()
        T[:n, n - b:n] = coefficients
        T[n - b:n, :n] = coefficients.T
        T[n - b:n, n - b:n] = (coefficients[n - b:] + coefficients[n - b:].T) / 2
        theta, Y = torch.linalg.eigh(T[:n, :n])
        theta, Y = theta.flip(0), Y.flip(1)
        gram = (product @ product.T).double().cpu()
        tail = Y[n - b:, :]
        residual = torch.einsum("ij,ik,kj->j", tail, gram, tail).clamp_min(0).sqrt()
        scale = abs(float(theta[0])) or 1.0
        wanted = residual[:k] / scale
        converged = n >= k and bool((wanted <= tol).all())
        exhausted = operator.num_hvps + b > max_hvps
        if converged or exhausted:
            vectors = Y[:, :k].T.to(device, dtype) @ basis[:n]
            return theta[:k], vectors, wanted, converged
        next_block, _ = _orthonormalize(product, basis[:n], seed + 2 + n + restarts, scale)
        if n + b > max_basis:
            keep = max(k + b, max_basis // 2)
            restarts += 1
            basis[:keep] = Y[:, :keep].T.to(device, dtype) @ basis[:n]
            T.zero_()
            T[:keep, :keep] = torch.diag(theta[:keep])
            n = keep
        basis[n:n + b] = next_block
        n += b


def hessian_eigenpairs(model, loss_fn, batches, k, *, tol=1e-3, max_hvps=None, block_size=None,
                       max_basis=None, dtype=None, seed=0, distributed=False):
    """Top-k eigenpairs of the training-loss Hessian by thick-restart block Lanczos.

    Computes the ``k`` algebraically largest eigenvalues :math:`\\rho_1 \\ge \\dots \\ge
    \\rho_k` of :math:`H = \\nabla^2 L(\\theta)` (module docstring; the :math:`H` of Kunin et al.
    2023, eq. 3 and Assumption 5) and orthonormal eigenvectors :math:`q_i`, from
    Hessian-vector products only. Every iteration does a Rayleigh-Ritz step on the Krylov
    basis (full reorthogonalisation, two Gram-Schmidt passes) and stops when

    .. math:: \\|H q_i - \\rho_i q_i\\| \\le \\mathrm{tol} \\, |\\rho_1| \\quad (i = 1..k).

    By Davis-Kahan the angle error of :math:`q_i` is at most that residual over the gap to the
    rest of the spectrum, and the eigenvalue error at most its square over the gap.

    Parameters
    ----------
    model, loss_fn, batches:
        as in :func:`hessian_vector_product`. The model is in eval mode for every product
        and each module's mode is restored afterwards. ``batches`` must be re-iterable and
        deterministic: a one-shot generator or a shuffling DataLoader raises; augmentation
        must be off (it cannot be detected).
    k:
        number of eigenpairs, ``1 <= k <= P``.
    tol:
        residual tolerance relative to :math:`|\\rho_1|`, ``> 0``.
    max_hvps:
        budget of HVPs, ``>= k + block_size`` (default ``max(1000, 100 k)``); when the next
        block would exceed it the solver stops and returns ``converged=False`` with the
        current Ritz pairs.
    block_size:
        vectors per Lanczos block (default ``min(k, 2)``); a block shares one forward pass
        and first backward pass per batch, while smaller blocks need fewer products (on a
        trained MLP, top-20 to 1e-3: 54, 60, 78, 72 products for blocks of 1, 2, 3, 4).
    max_basis:
        largest basis size, ``>= k + 2 block_size`` (default ``2 k + 2 block_size``); when
        the next block would not fit, the method restarts from the leading
        ``max(k + block_size, max_basis // 2)`` Ritz vectors. Memory is ``max_basis`` vectors
        of size ``P`` in ``dtype`` plus one block of products in float64. If the whole space
        would fit (``P <= max_basis``), :math:`H` is formed from ``P`` products (identity
        columns) and diagonalised instead.
    dtype:
        working dtype of the basis and of the returned tensors (default: the model's dtype;
        products are always accumulated in float64 first).
    seed:
        seed of the random start block (drawn on the CPU, so results match across devices).
    distributed:
        ``False`` (default); ``True`` or a process group: data sharded across ranks, products
        all-reduced (see the module docstring).

    Returns
    -------
    :class:`HessianEigenpairs` on the model's device: ``eigenvalues`` (k,) descending,
    ``eigenvectors`` (k, P) orthonormal rows with their largest-magnitude entry positive,
    ``residuals`` (k,) relative to :math:`|\\rho_1|` (exact for the returned pairs up to
    rounding: the residual of the block Arnoldi relation), ``num_hvps`` and ``converged``.

    Raises
    ------
    TypeError / ValueError naming the argument for a bad model, loss, loader, ``k``, ``tol``,
    ``max_hvps``, ``block_size``, ``max_basis`` or ``dtype``.
    """
    operator = _HessianOperator(model, loss_fn, batches, distributed)
    P = operator.num_params
    k = _check_k(k, P)
    tol = _check_tol(tol)
    block_size = min(k, 2) if block_size is None else _check_positive_int(block_size,
                                                                          "block_size", 1)
    max_basis = 2 * k + 2 * block_size if max_basis is None else max_basis
    max_basis = _check_positive_int(max_basis, "max_basis", k + 2 * block_size)
    max_hvps = max(1000, 100 * k) if max_hvps is None else _check_positive_int(
        max_hvps, "max_hvps", k + block_size)
    dtype = operator.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, but got {dtype!r}")
    with _eval_mode(model):
        if P <= max_basis:
            values, vectors, residual = _dense_eigenpairs(operator, k, torch.float64)
            scale = abs(float(values[0])) or 1.0
            residual = residual.cpu() / scale
            converged = bool((residual <= tol).all())
        else:
            values, vectors, residual, converged = _lanczos(
                operator, k, tol, max_hvps, block_size, max_basis, seed, dtype)
    return HessianEigenpairs(
        eigenvalues=values.to(operator.device, dtype),
        eigenvectors=_sign_convention(vectors.to(dtype)),
        residuals=residual.to(operator.device, dtype),
        num_hvps=operator.num_hvps,
        converged=converged,
    )


def power_iteration_eigenpairs(model, loss_fn, batches, k, *, tol=1e-3, max_hvps=None,
                               dtype=None, seed=0, distributed=False):
    """Baseline: PyHessian's deflated power iteration (Yao et al. 2020), plus a residual test.

    PyHessian's ``hessian.eigenvalues(maxIter=100, tol=1e-3, top_n=k)`` does, for each pair
    :math:`i = 1..k` in turn: draw a random unit :math:`v`, then repeat

    .. math::

        v \\leftarrow \\frac{v - \\sum_{j<i} (q_j^\\top v) q_j}{\\|\\cdot\\|}, \\quad
        w = H v, \\quad \\rho^{(t)} = v^\\top w, \\quad v \\leftarrow w / \\|w\\|,

    and stops when :math:`|\\rho^{(t-1)} - \\rho^{(t)}| / (|\\rho^{(t-1)}| + 10^{-6}) <
    \\mathrm{tol}`, so never before the second product (or after ``maxIter`` products). This
    function runs exactly that iteration and that stopping rule, and additionally requires
    the residual of the pair just measured to pass the test of :func:`hessian_eigenpairs`,
    :math:`\\|w - \\rho^{(t)} v\\| \\le \\mathrm{tol}\\,|\\rho_1|` (:math:`\\rho_1` the first pair's
    eigenvalue; for the first pair the current :math:`|\\rho^{(t)}|`). Both tests are needed:
    the relative change of :math:`\\rho` alone is not a convergence test (it is small while
    :math:`v` stalls between two close eigenvalues), and with millions of parameters the
    residual alone is not either (a random unit :math:`v` has
    :math:`\\|H v\\| \\approx \\|H\\|_F / \\sqrt{P}`, which can already be below
    :math:`\\mathrm{tol}\\,|\\rho_1|`). Two details differ from PyHessian: the returned pair is
    the measured :math:`(\\rho^{(t)}, v)` (PyHessian returns :math:`\\rho^{(t-1)}` and the next,
    undeflated iterate :math:`w / \\|w\\|`), so the reported residual is exact; and the budget
    ``max_hvps`` is a total over all pairs rather than ``maxIter`` per pair. Each pair is one
    HVP per iteration, with the deflation done twice (Gram-Schmidt, as in
    :func:`hessian_eigenpairs`).

    Power iteration finds eigenvalues in order of *magnitude*; the result is sorted
    descending, so it matches :func:`hessian_eigenpairs` only when the ``k``
    largest-magnitude eigenvalues are the ``k`` algebraically largest.

    ``max_hvps`` (default ``1000 k``) must be ``>= 2 k``: every later pair keeps two products
    in reserve. A pair that runs out of budget is returned as it stands and the result has
    ``converged=False``. Other arguments, return value and errors as in
    :func:`hessian_eigenpairs`.
    """
    operator = _HessianOperator(model, loss_fn, batches, distributed)
    P = operator.num_params
    k = _check_k(k, P)
    tol = _check_tol(tol)
    max_hvps = 1000 * k if max_hvps is None else _check_positive_int(max_hvps, "max_hvps", 2 * k)
    dtype = operator.dtype if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, but got {dtype!r}")
    device = operator.device
    vectors = torch.zeros((k, P), dtype=dtype, device=device)
    values = torch.zeros(k, dtype=torch.float64)
    residuals = torch.zeros(k, dtype=torch.float64)
    converged = True
    with _eval_mode(model):
        for i in range(k):
            budget = max_hvps - operator.num_hvps - 2 * (k - i - 1)
            v = _random_block(1, P, seed + i, dtype, device)[0]
            found = vectors[:i]
            previous = None
            while True:
                for _ in range(2):
                    v = v - (found @ v) @ found
                v = v / v.norm()
                w = operator.matmul(v[None])[0].to(dtype)
                budget -= 1
                rho = float(v.double() @ w.double())
                residual = float((w - rho * v).norm())
                scale = abs(rho) if i == 0 else abs(float(values[0]))
                stalled = (previous is not None
                           and abs(previous - rho) / (abs(previous) + 1e-6) < tol)
                done = stalled and residual <= tol * (scale or 1.0)
                if done or budget <= 0:
                    break
                previous = rho
                v = w / w.norm()
            vectors[i], values[i], residuals[i] = v, rho, residual
            converged &= done
    scale = abs(float(values[0])) or 1.0
    order = torch.argsort(values, descending=True, stable=True)
    return HessianEigenpairs(
        eigenvalues=values[order].to(device, dtype),
        eigenvectors=_sign_convention(vectors[order.to(device)]),
        residuals=(residuals[order] / scale).to(device, dtype),
        num_hvps=operator.num_hvps,
        converged=bool(converged),
    )


def hutchinson_trace(model, loss_fn, batches, *, num_samples=100, generator=None,
                     block_size=8, distributed=False):
    """Hutchinson's estimate of :math:`\\mathrm{tr}(H)` with its standard error.

    :math:`\\widehat{\\mathrm{tr}} = \\frac1n \\sum_{s=1}^n z_s^\\top H z_s` with Rademacher
    :math:`z_s \\in \\{\\pm 1\\}^P` (unbiased, since :math:`E[z z^\\top] = I`); the standard
    error is the sample standard deviation of :math:`z_s^\\top H z_s` over :math:`\\sqrt{n}`.
    ``num_samples`` (``>= 2``) HVPs, taken ``block_size`` at a time in eval mode (model,
    loss and loader as in :func:`hessian_vector_product`). ``generator`` is a CPU
    ``torch.Generator`` for the probes (default: seeded with 0, reproducible); probes are
    drawn on the CPU and moved to the model's device. ``distributed`` (True or a process
    group): ``batches`` is this rank's shard and the products are all-reduced (module
    docstring; every rank must pass a generator in the same state). Returns
    :class:`TraceEstimate` of Python floats.
    """
    operator = _HessianOperator(model, loss_fn, batches, distributed)
    num_samples = _check_positive_int(num_samples, "num_samples", 2)
    block_size = _check_positive_int(block_size, "block_size", 1)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, but got {type(generator).__name__}")
    samples = []
    with _eval_mode(model):
        for start in range(0, num_samples, block_size):
            m = min(block_size, num_samples - start)
            probes = torch.randint(0, 2, (m, operator.num_params), generator=generator,
                                   device=generator.device, dtype=torch.float64) * 2 - 1
            probes = probes.to(operator.device)
            products = operator.matmul(probes)
            samples.append((probes * products).sum(dim=1).cpu())
    samples = torch.cat(samples)
    return TraceEstimate(value=float(samples.mean()),
                         standard_error=float(samples.std(unbiased=True) / math.sqrt(num_samples)),
                         num_hvps=operator.num_hvps)


# --------------------------------------------------------------------------------------------
# linear regression, exactly
# --------------------------------------------------------------------------------------------


def _check_design(X, name="X"):
    if isinstance(X, torch.Tensor):
        if not X.dtype.is_floating_point:
            raise TypeError(f"{name} must have a floating dtype, but got {X.dtype}")
        return X
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numpy array or torch tensor of numbers, but got "
                        f"{type(X).__name__}") from error
    return array


def linear_regression_hessian(X):
    """Exact Hessian :math:`H = X^\\top X / N` of least squares (docs/theory.md section 2).

    For :math:`L(W) = \\|Y - X W^\\top\\|^2 / (2N)` with ``W`` of shape ``(c, d)`` (like
    ``nn.Linear(d, c, bias=False).weight``) the Hessian with respect to ``W`` flattened
    row-major is :math:`I_c \\otimes H`; this returns the per-output block :math:`H`.

    ``X`` has shape ``(..., N, d)`` (leading batch dimensions allowed), ``N >= 1``; returns
    ``(..., d, d)``. NumPy in (or array-like) -> float64 NumPy out; torch in -> torch out with
    the same dtype and device. Raises TypeError for non-numeric input and ValueError for fewer
    than 2 dimensions or ``N = 0``.
    """
    X = _check_design(X)
    if X.ndim < 2 or X.shape[-2] == 0:
        raise ValueError(f"X must have shape (..., N, d) with N >= 1, but got {tuple(X.shape)}")
    N = X.shape[-2]
    if isinstance(X, torch.Tensor):
        return X.mT @ X / N
    return np.swapaxes(X, -1, -2) @ X / N


def linear_regression_eigenpairs(X, k=None, *, num_outputs=1):
    """Exact eigenpairs of the least-squares Hessian :math:`I_c \\otimes X^\\top X / N`.

    Same output type as :func:`hessian_eigenpairs`, for the parameters ``W`` of shape
    ``(c, d)`` flattened row-major (``c = num_outputs``; see
    :func:`linear_regression_hessian`). Each eigenpair :math:`(\\rho_j, u_j)` of
    :math:`H` gives ``c`` eigenvectors :math:`e_o \\otimes u_j`, ``o = 0..c-1``; eigenvalues
    are sorted descending, ties across outputs ordered by output index. ``eigenvectors`` has
    shape ``(k, c d)`` with the largest-magnitude entry of each row positive; ``residuals``
    are the true :math:`\\|H u - \\rho u\\| / |\\rho_1|` of the dense eigendecomposition
    (rounding level); ``num_hvps = 0``; ``converged = True``.

    ``X`` of shape ``(N, d)``; ``k`` in ``1..c d`` (default ``c d``). NumPy in -> float64 NumPy
    out; torch in -> torch out with the dtype and device of ``X``. Raises TypeError/ValueError
    naming ``X``, ``k`` or ``num_outputs``.
    """
    X = _check_design(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (N, d) with N >= 1, but got {tuple(X.shape)}")
    c = _check_positive_int(num_outputs, "num_outputs", 1)
    d = X.shape[1]
    k = c * d if k is None else _check_k(k, c * d)
    H = linear_regression_hessian(X)
    as_torch = isinstance(X, torch.Tensor)
    H64 = H.double() if as_torch else torch.from_numpy(H)
    values, vectors = torch.linalg.eigh(H64)
    values, rows = values.flip(0), vectors.flip(1).T  # rows[j] = u_j, descending
    residual = torch.linalg.vector_norm(rows @ H64 - values[:, None] * rows, dim=1)
    residual = residual / (abs(float(values[0])) or 1.0)
    rows = _sign_convention(rows)
    # eigenpair j of H and output o go to index j * c + o: descending, ties by output index
    index = torch.arange(k, device=H64.device)
    j, o = index // c, index % c
    full = torch.zeros((k, c, d), dtype=torch.float64, device=H64.device)
    full[index, o] = rows[j]
    result = (values[j], full.reshape(k, c * d), residual[j])
    if as_torch:
        result = tuple(t.to(X.dtype) for t in result)
    else:
        result = tuple(t.numpy() for t in result)
    return HessianEigenpairs(eigenvalues=result[0], eigenvectors=result[1], residuals=result[2],
                             num_hvps=0, converged=True)
