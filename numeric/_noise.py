r"""Gradient-noise covariance at a point, and how far it is from :math:`\sigma^2 H` (Assumption 5).

The per-sample gradient covariance at parameters :math:`\theta` is

.. math::

    \Sigma(\theta) = \frac1N \sum_{i=1}^N (g_i - g)(g_i - g)^\top,\qquad
    g_i = \nabla_\theta \ell_i(\theta),\quad g = \frac1N\sum_i g_i,

so that a minibatch of :math:`S` samples drawn with replacement has gradient noise covariance
:math:`\Sigma/S` (Assumption 1 of Kunin et al. 2023; without replacement multiply by
:math:`(N-S)/(N-1)`, docs/theory.md section 2). Assumption 5 posits :math:`\Sigma = \sigma^2 H`;
:func:`noise_scale_fit` fits :math:`\sigma^2` and measures the mismatch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "NoiseFit",
    "gradient_noise_projection",
    "linear_regression_noise_covariance",
    "noise_scale_fit",
]


def _as_numpy(value, name):
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, any device
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a real array, but got {type(value).__name__}") from error


def linear_regression_noise_covariance(X, Y, weight, *, directions=None):
    r"""Exact per-sample gradient covariance of least squares at ``weight``.

    The per-sample loss is :math:`\ell_i = \tfrac12\|y_i - W x_i\|^2`, so that the training
    loss is :math:`L = \|Y - X W^\top\|^2/(2N)` (docs/theory.md section 2), and
    :math:`g_i = \operatorname{vec}(r_i x_i^\top)` with the residual :math:`r_i = W x_i - y_i`.
    Then :math:`\Sigma = \frac1N\sum_i (g_i - g)(g_i - g)^\top` exactly (no sampling).

    Layout: ``weight`` is ``(d,)`` (one output; ``Y`` of shape ``(N,)``) or ``(c, d)``, the
    layout of ``torch.nn.Linear(d, c, bias=False).weight`` (``Y`` of shape ``(N, c)``).
    Gradients are flattened row-major, index ``o * d + p`` for output ``o`` and feature ``p``:
    the layout of :func:`numeric.linear_regression_eigenpairs`, so its eigenvectors can be
    passed as ``directions`` directly.

    Parameters
    ----------
    X:
        ``(N, d)`` design matrix.
    Y:
        ``(N,)`` or ``(N, c)`` targets, matching ``weight``.
    weight:
        ``(d,)`` or ``(c, d)`` parameters.
    directions:
        optional ``(m, c d)`` rows :math:`q_l`. Then the projected covariance
        :math:`[Q\Sigma Q^\top]_{lm}` is returned without forming :math:`\Sigma`:
        :math:`\langle q_l, g_i\rangle = r_i^\top Q_l x_i`, so it costs :math:`O(N c d m)` time
        and no :math:`(cd)^2` memory (490 MB for MNIST with 10 outputs).

    Returns
    -------
    numpy.ndarray
        float64, ``(c d, c d)`` (``(d, d)`` for one output), or ``(m, m)`` with ``directions``;
        symmetric PSD.

    Raises
    ------
    ValueError
        shapes that do not match the layout above; non-finite entries.
    """
    X = _as_numpy(X, "X")
    Y = _as_numpy(Y, "Y")
    weight = _as_numpy(weight, "weight")
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (N, d) with N >= 1, but got shape {X.shape}")
    N, d = X.shape
    if weight.ndim not in (1, 2) or weight.shape[-1] != d:
        raise ValueError(f"weight must have shape ({d},) or (c, {d}) to match X, but got shape "
                         f"{weight.shape}")
    expected_y = (N,) if weight.ndim == 1 else (N, weight.shape[0])
    if Y.shape != expected_y:
        raise ValueError(f"Y must have shape {expected_y} to match X and weight, but got shape "
                         f"{Y.shape}")
    for name, value in (("X", X), ("Y", Y), ("weight", weight)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite, but it has non-finite entries")
    residual = (X @ weight.T - Y).reshape(N, -1)  # (N, c)
    c = residual.shape[1]
    if directions is None:
        gradients = (residual[:, :, None] * X[:, None, :]).reshape(N, -1)
    else:
        directions = _as_numpy(directions, "directions")
        if directions.ndim != 2 or directions.shape[1] != c * d:
            raise ValueError(f"directions must have shape (m, {c * d}), but got shape "
                             f"{directions.shape}")
        blocks = directions.reshape(directions.shape[0], c, d)
        gradients = np.einsum("nc,mcd,nd->nm", residual, blocks, X, optimize=True)
    centred = gradients - gradients.mean(axis=0)
    return centred.T @ centred / N


def gradient_noise_projection(model, loss_fn, inputs, targets, eigenvectors, *, chunk_size=64):
    r"""Per-sample gradient covariance projected on eigenvectors: :math:`V \Sigma V^\top`.

    With :math:`g_i = \nabla_\theta\, \texttt{loss\_fn}(\texttt{model}(x_i), y_i)` (a batch of
    one sample) and the rows :math:`q_l` of ``eigenvectors`` (typically the Hessian's, from
    :func:`numeric.hessian_eigenpairs`), returns
    :math:`[V\Sigma V^\top]_{lm} = \frac1N\sum_i \langle q_l, g_i - g\rangle
    \langle q_m, g_i - g\rangle` without forming :math:`\Sigma`.

    Per-sample gradients come from ``torch.func`` (``functional_call`` + ``vmap(grad)``),
    ``chunk_size`` samples at a time, each projected at once, so memory is
    ``chunk_size`` gradients plus the eigenvectors. The model is in eval mode throughout
    (batch normalisation uses its running statistics, dropout is off; the ``training`` flags
    are restored afterwards, also on error). Work happens on the model's device in its dtype;
    the projections are accumulated in float64.

    Parameters
    ----------
    model:
        a ``torch.nn.Module``; parameters flattened in the order of ``model.parameters()``.
    loss_fn:
        ``loss_fn(outputs, targets)`` returning the mean loss of a batch (a scalar).
    inputs, targets:
        tensors with the sample index first (moved to the model's device).
    eigenvectors:
        ``(m, num_params)`` tensor or array (e.g. ``HessianEigenpairs.eigenvectors``).
    chunk_size:
        samples per vectorised gradient evaluation (>= 1).

    Returns
    -------
    numpy.ndarray
        float64, ``(m, m)``, symmetric PSD.

    Raises
    ------
    TypeError
        ``model`` not a module, ``loss_fn`` not callable.
    ValueError
        eigenvectors of the wrong shape, inputs and targets of different lengths, fewer than
        one sample, a loss that is not a scalar.
    """
    import torch
    from torch.func import functional_call, grad, vmap

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, but got {type(loss_fn).__name__}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, but got {chunk_size!r}")
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("model has no parameters")
    first = next(iter(named.values()))
    device, dtype = first.device, first.dtype
    num_params = sum(p.numel() for p in named.values())
    vectors = torch.as_tensor(eigenvectors).to(device=device, dtype=dtype)
    if vectors.ndim != 2 or vectors.shape[1] != num_params:
        raise ValueError(f"eigenvectors must have shape (m, {num_params}) (the model's number "
                         f"of parameters), but got shape {tuple(vectors.shape)}")
    inputs = torch.as_tensor(inputs).to(device)
    targets = torch.as_tensor(targets).to(device)
    if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
        raise ValueError(f"inputs and targets must hold the same number (>= 1) of samples, but "
                         f"got {inputs.shape[0]} and {targets.shape[0]}")
    params = {name: p.detach() for name, p in named.items()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def sample_loss(parameters, x, y):
        loss = loss_fn(functional_call(model, (parameters, buffers), (x[None],)), y[None])
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar (the mean loss of the batch), but "
                             f"it returned shape {tuple(loss.shape)}")
        return loss

    per_sample_gradients = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    projections = []
    try:
        for start in range(0, inputs.shape[0], chunk_size):
            grads = per_sample_gradients(params, inputs[start:start + chunk_size],
                                         targets[start:start + chunk_size])
            flat = torch.cat([grads[name].reshape(grads[name].shape[0], -1) for name in named],
                             dim=1)
            projections.append((flat @ vectors.T).to(torch.float64).cpu())
    finally:
        for module, training in flags:
            module.training = training
    projected = torch.cat(projections).numpy()
    centred = projected - projected.mean(axis=0)
    covariance = centred.T @ centred / projected.shape[0]
    return 0.5 * (covariance + covariance.T)


class NoiseFit(NamedTuple):
    r"""Result of :func:`noise_scale_fit`, the fit :math:`\Sigma \approx \sigma^2 H`.

    Attributes
    ----------
    sigma2:
        least-squares :math:`\sigma^2 = \sum_l \rho_l \Sigma_{ll} / \sum_l \rho_l^2`.
    relative_mismatch:
        :math:`\|\Sigma_V - \sigma^2\Lambda\|_F / \|\Sigma_V\|_F` in the eigenbasis (0 when
        Assumption 5 holds exactly on the subspace).
    off_diagonal_fraction:
        :math:`\|\Sigma_V - \mathrm{diag}(\Sigma_V)\|_F / \|\Sigma_V\|_F`: the mass of
        :math:`\Sigma` that does not share :math:`H`'s eigenvectors.
    diagonal_ratios:
        ``(m,)``, :math:`\Sigma_{ll}/\rho_l` per direction (NaN where :math:`\rho_l = 0`):
        constant in :math:`l` under Assumption 5.
    projected_covariance:
        ``(m, m)``, :math:`\Sigma_V = V\Sigma V^\top`.
    """

    sigma2: float
    relative_mismatch: float
    off_diagonal_fraction: float
    diagonal_ratios: np.ndarray
    projected_covariance: np.ndarray


def noise_scale_fit(noise, eigenvalues, eigenvectors=None):
    r"""Fit :math:`\sigma^2` in :math:`\Sigma \approx \sigma^2 H` (Assumption 5) on a subspace.

    Let :math:`V` be ``(m, n)`` with orthonormal rows, eigenvectors of :math:`H` with
    eigenvalues :math:`\rho_l` (``Lambda = diag(rho)``). On the subspace they span the
    assumption reads :math:`\Sigma_V := V\Sigma V^\top = \sigma^2 \Lambda`. The
    least-squares fit in the Frobenius norm is

    .. math::

        \sigma^2 = \arg\min_s \|\Sigma_V - s\Lambda\|_F^2
                 = \frac{\sum_l \rho_l [\Sigma_V]_{ll}}{\sum_l \rho_l^2},

    and the mismatch reported is :math:`\|\Sigma_V - \sigma^2\Lambda\|_F / \|\Sigma_V\|_F`,
    which also counts the off-diagonal entries (reported alone as ``off_diagonal_fraction``).

    Parameters
    ----------
    noise:
        either the projected covariance :math:`\Sigma_V` of shape ``(m, m)`` (as returned by
        :func:`gradient_noise_projection`; then ``eigenvectors`` is ``None``), or the full
        :math:`\Sigma` of shape ``(n, n)`` (as returned by
        :func:`linear_regression_noise_covariance`) together with ``eigenvectors``.
    eigenvalues:
        ``(m,)`` Hessian eigenvalues :math:`\rho_l`, not all zero.
    eigenvectors:
        ``(m, n)`` orthonormal rows, or ``None``. NumPy arrays or torch tensors (any device).

    Returns
    -------
    NoiseFit

    Raises
    ------
    ValueError
        shapes that do not match; all eigenvalues zero; a zero covariance.
    """
    noise = _as_numpy(noise, "noise")
    rho = _as_numpy(eigenvalues, "eigenvalues")
    if rho.ndim != 1 or rho.size == 0:
        raise ValueError(f"eigenvalues must have shape (m,) with m >= 1, but got shape "
                         f"{rho.shape}")
    m = rho.size
    if noise.ndim != 2 or noise.shape[0] != noise.shape[1]:
        raise ValueError(f"noise must be a square matrix, but got shape {noise.shape}")
    if eigenvectors is None:
        if noise.shape != (m, m):
            raise ValueError(f"noise must be the projected covariance of shape ({m}, {m}) when "
                             f"eigenvectors is None, but got shape {noise.shape}")
        projected = noise
    else:
        V = _as_numpy(eigenvectors, "eigenvectors")
        if V.shape != (m, noise.shape[0]):
            raise ValueError(f"eigenvectors must have shape ({m}, {noise.shape[0]}) to match "
                             f"eigenvalues and noise, but got shape {V.shape}")
        projected = V @ noise @ V.T
    projected = 0.5 * (projected + projected.T)
    if not (np.all(np.isfinite(projected)) and np.all(np.isfinite(rho))):
        raise ValueError("noise and eigenvalues must be finite")
    scale = rho @ rho
    if scale == 0.0:
        raise ValueError("eigenvalues must not all be zero")
    total = math.sqrt(np.sum(projected**2))
    if total == 0.0:
        raise ValueError("the projected noise covariance is zero; the mismatch is undefined")
    diagonal = np.diag(projected).copy()
    sigma2 = float(rho @ diagonal / scale)
    mismatch = math.sqrt(np.sum((projected - sigma2 * np.diag(rho)) ** 2)) / total
    # the off-diagonal entries themselves, not sqrt(sum P^2 - sum diag^2): that difference
    # cancels to a floor of about eps * sum P^2, i.e. sqrt(eps) ~ 1e-8 relative, whatever the
    # true off-diagonal mass
    off_diagonal = math.sqrt(np.sum((projected - np.diag(diagonal)) ** 2)) / total
    ratios = np.full(m, np.nan)
    np.divide(diagonal, rho, out=ratios, where=rho != 0)
    return NoiseFit(sigma2=sigma2, relative_mismatch=float(mismatch),
                    off_diagonal_fraction=float(off_diagonal), diagonal_ratios=ratios,
                    projected_covariance=projected)
