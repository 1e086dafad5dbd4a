"""Validation and backend dispatch for the public kernels, done once, up front.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what was received and
the valid range. Arrays are only read here: one min/max reduction per argument decides the
finiteness and every interval range check at once (elementwise work only to describe a
failure); on a GPU that is one synchronisation per argument, paid once per call.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Batch", "prepare", "require", "MODELS", "check_model", "check_stable"]

MODELS = ("sde", "discrete")


def _torch():
    return sys.modules.get("torch")


def _is_tensor(value: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(value, torch.Tensor)


@dataclass
class Batch:
    """Validated arguments, all of one backend: ``numpy`` float64 arrays or torch tensors of
    one floating dtype and device; ``shape`` is their broadcast shape. ``result_dtype``: the
    torch dtype results are rounded to when the values were widened to float64 for the
    computation (the kernels' precision rule), else None."""

    backend: str
    values: dict[str, Any]
    shape: tuple[int, ...]
    extrema: dict[str, tuple[float, float]] = field(default_factory=dict)
    result_dtype: Any = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def bounds(self, name: str) -> tuple[float, float]:
        """``(min, max)`` of ``batch[name]``, one reduction, computed once; NaN if any
        element is NaN (both reductions propagate it); ``(inf, -inf)`` if empty."""
        if name not in self.extrema:
            value = self.values[name]
            if math.prod(tuple(value.shape)) == 0:
                self.extrema[name] = (math.inf, -math.inf)
            elif self.backend == "torch":
                low, high = _torch().aminmax(value.detach())
                self.extrema[name] = tuple(_torch().stack((low, high)).tolist())
            else:
                self.extrema[name] = (float(value.min()), float(value.max()))
        return self.extrema[name]


def check_model(model: Any) -> str:
    if not isinstance(model, str) or model not in MODELS:
        raise ValueError(f"model must be one of {MODELS!r}, but got {model!r}")
    return model


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{name} must be a real number or array, but got {type(value).__name__} "
                        f"{value!r}")
    try:
        array = np.asarray(value)
    except Exception as error:  # ragged lists and the like
        raise TypeError(f"{name} must be a real number or array, but got {value!r}") from error
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real (bool, integer or float), but got dtype "
                        f"{array.dtype} ({_describe_raw(value)})")
    return array.astype(np.float64, copy=False)


def _describe_raw(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def prepare(arguments: dict[str, Any], *, separate: tuple[str, ...] = ()) -> Batch:
    """Pick the backend from the argument types and convert every argument to it.

    Any torch tensor among the arguments selects torch: the others become tensors of the
    tensors' common floating dtype (the default dtype if none is floating) on their common
    device. Otherwise everything becomes a NumPy float64 array. Checks that every value is
    finite and that the shapes broadcast (those named in ``separate`` excepted).
    """
    tensors = {n: v for n, v in arguments.items() if _is_tensor(v)}
    if tensors:
        torch = _torch()
        devices = {n: v.device for n, v in tensors.items()}
        if len(set(devices.values())) > 1:
            listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
            raise ValueError(f"tensor arguments must be on one device, but got {listed}")
        device = next(iter(devices.values()))
        for n, v in tensors.items():
            if v.is_complex():
                raise TypeError(f"{n} must be a real tensor, but got dtype {v.dtype}")
        floating = [v.dtype for v in tensors.values() if v.is_floating_point()]
        dtype = floating[0] if floating else torch.get_default_dtype()
        for other in floating[1:]:
            dtype = torch.promote_types(dtype, other)
        values = {}
        for n, v in arguments.items():
            if _is_tensor(v):
                values[n] = v.to(dtype=dtype)
            else:
                values[n] = torch.as_tensor(_to_numpy(n, v), dtype=dtype, device=device)
        shapes = {n: tuple(v.shape) for n, v in values.items()}
        backend = "torch"
    else:
        values = {n: _to_numpy(n, v) for n, v in arguments.items()}
        shapes = {n: v.shape for n, v in values.items()}
        backend = "numpy"
    shapes = {n: s for n, s in shapes.items() if n not in separate}
    try:
        shape = tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError as error:
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"arguments must broadcast against each other, but got shapes {listed}") from error
    batch = Batch(backend, values, shape)
    for n in values:
        # one min/max reduction per argument, reused by the range checks: finite extrema
        # mean finite elements (a NaN propagates into both); elementwise only on failure
        low, high = batch.bounds(n)
        if (math.isfinite(low) and math.isfinite(high)) or low > high:  # or empty
            continue
        require(batch, n, _finite(batch, n), "must be finite (no NaN or Inf)")
    return batch


def _finite(batch: Batch, name: str):
    value = batch[name]
    if batch.backend == "torch":
        return _torch().isfinite(value.detach())
    return np.isfinite(value)


def _bad_count_and_example(batch: Batch, name: str, ok) -> tuple[int, float]:
    value = batch[name]
    if batch.backend == "torch":
        torch = _torch()
        value = value.detach()
        bad = ~ok
        count = int(bad.sum())
        example = float(value[bad].reshape(-1)[0]) if count else float("nan")
        return count, example
    bad = ~np.asarray(ok)
    count = int(bad.sum())
    example = float(np.asarray(value)[bad].reshape(-1)[0]) if count else float("nan")
    return count, example


def require(batch: Batch, name: str, ok, requirement: str) -> None:
    """Raise ``ValueError`` if ``ok`` (a boolean array for ``batch[name]``) is false anywhere."""
    if bool(ok.all()):  # the common case: one reduction, no counting
        return
    count, example = _bad_count_and_example(batch, name, ok)
    if count:
        size = math.prod(tuple(batch[name].shape))
        if size == 1:
            raise ValueError(f"{name} {requirement}, but got {example!r}")
        raise ValueError(f"{name} {requirement}, but got {count} of {size} values outside that "
                         f"range (e.g. {example!r})")


def _values(batch: Batch, name: str):
    value = batch[name]
    return value.detach() if batch.backend == "torch" else value


def check_hyperparameters(batch: Batch, names: tuple[str, ...]) -> None:
    """The ranges of the paper's hyperparameters and inputs (those of ``names`` present)."""
    rules = {
        "eta": (lambda v: v > 0, "(the learning rate) must be > 0"),
        "beta": (lambda v: (v >= 0) & (v < 1), "(the momentum) must be in [0, 1)"),
        "lam": (lambda v: v >= 0, "(the weight decay) must be >= 0"),
        "S": (lambda v: v > 0, "(the batch size) must be > 0"),
        "sigma2": (lambda v: v >= 0, "(the noise scale sigma^2) must be >= 0"),
        "k": (lambda v: v >= 0, "(a number of SGD steps) must be >= 0"),
    }
    for name in names:
        if name in rules and name in batch.values:
            test, requirement = rules[name]
            low, high = batch.bounds(name)
            # every range is an interval: min and max inside it (or no elements) suffice
            if low > high or (test(low) and test(high)):
                continue
            require(batch, name, test(_values(batch, name)), requirement)


def check_rho(batch: Batch) -> None:
    """rho >= 0, with advice: negative Hessian eigenvalues occur at the end of training."""
    if batch.bounds("rho")[0] >= 0:  # or no elements (min is inf)
        return
    rho = _values(batch, "rho")
    negative = rho < 0
    count = int(negative.sum()) if bool(negative.any()) else 0
    if count:
        smallest = float(rho.min())
        size = math.prod(tuple(rho.shape))
        raise ValueError(
            f"rho (Hessian eigenvalues) must be >= 0, but got {count} negative of {size} "
            f"(smallest {smallest!r}). Negative eigenvalues do occur at the end of training; "
            "the theory has no stationary state along them. Clip them (rho = max(rho, 0)) or "
            "project those directions out of the spectrum before calling."
        )


def check_whole_steps(batch: Batch) -> None:
    """model='discrete' counts whole SGD steps."""
    k = _values(batch, "k")
    floor = _torch().floor(k) if batch.backend == "torch" else np.floor(k)
    require(batch, "k", k == floor,
            "must be a whole number of steps for model='discrete' (use model='sde' for "
            "continuous time)")


def check_stable(batch: Batch, *, spectrum_apart: bool = False) -> None:
    """model='discrete' stationary statistics exist only for eta (rho + lam) < 2 (1 + beta).

    With ``spectrum_apart``, ``rho`` is a 1-D spectrum that does not broadcast with the
    hyperparameters: a mode is counted unstable if it is so for some hyperparameters (checked
    against the smallest edge, without forming the (hyperparameters x modes) array).
    """
    eta, rho, lam, beta = (_values(batch, n) for n in ("eta", "rho", "lam", "beta"))
    if spectrum_apart:
        edge_rho = (2 * (1 + beta) / eta - lam).min()
        unstable = rho >= edge_rho
        count = int(unstable.sum())
        if count:
            raise ValueError(
                f"model='discrete': {count} of {rho.shape[0]} mode(s) are beyond the stability "
                f"edge eta*(rho+lam) >= 2*(1+beta) (rho >= {float(edge_rho):.6g} for some of "
                f"the hyperparameters; largest rho {float(rho.max()):.6g}); their stationary "
                "statistics do not exist. Lower eta, or drop those modes."
            )
        return
    curvature = eta * (rho + lam)
    edge = 2 * (1 + beta)
    unstable = curvature >= edge
    count = int(unstable.sum())
    if count:
        worst = float((curvature / edge).max())
        raise ValueError(
            f"model='discrete': {count} mode(s) are beyond the stability edge "
            f"eta*(rho+lam) >= 2*(1+beta) (largest eta*(rho+lam) / (2*(1+beta)) = {worst:.6g}); "
            "their stationary statistics do not exist. Lower eta, or drop those modes."
        )
