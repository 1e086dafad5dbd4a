"""The NaN-safe primitives (see :mod:`numeric._primitives_common`) for torch tensors.

Differentiable: every branch is fed a safe argument where it is not selected, so gradients
are finite everywhere on the valid domain. Dtype and device follow the inputs.
"""

from __future__ import annotations

import numpy as np
import torch

from ._primitives_common import Ops, make_primitives

__all__ = [
    "damped_cosh", "damped_sinhc", "damped_cosh_plus", "damped_cosh_minus",
    "momentum_power_s", "momentum_power_aa", "momentum_power_vv", "spectral_fraction",
]


_WRAPPED = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor",
                   lambda tensor: False)


def plain_cpu(tensor) -> bool:
    """Whether ``tensor`` is an ordinary CPU tensor whose memory NumPy can read: not a
    subclass, not wrapped by a torch.func transform (``grad``, ``jacrev``, ...)."""
    return type(tensor) is torch.Tensor and tensor.device.type == "cpu" and not _WRAPPED(tensor)


def _scatter(out, flat, values):
    # out of place: differentiable in ``values`` (and in the kept elements of ``out``);
    # index_copy is several times faster than index_put on the CPU
    return out.reshape(-1).index_copy(0, flat, values).reshape(out.shape)


def _gather(a, flat):
    return a.reshape(-1).index_select(0, flat)


def _indices(mask):
    # integer indices once per regime: gathering with them is far cheaper than boolean masks
    flat = mask.reshape(-1)
    if plain_cpu(flat):
        # NumPy's flatnonzero is several times faster than torch's nonzero on the CPU (no
        # copy: the tensor and the array share memory)
        return torch.from_numpy(np.flatnonzero(flat.numpy()))
    return flat.nonzero().squeeze(1)


def _count(mask):
    if plain_cpu(mask):
        # NumPy counts a boolean array ~40x faster than torch sums it (no int64 copy)
        return int(np.count_nonzero(mask.numpy()))
    return int(torch.count_nonzero(mask))


def _assemble(shape, flats, parts):
    size = sum(int(flat.shape[0]) for flat in flats)
    if not (torch.is_grad_enabled() and any(part.requires_grad for part in parts)):
        out = parts[0].new_empty(size)
        for flat, values in zip(flats, parts):
            out.index_copy_(0, flat, values)
        return out.reshape(shape)
    # one out-of-place scatter of all the parts: differentiable in every part
    values = torch.cat(parts) if len(parts) > 1 else parts[0]
    flat = torch.cat(flats) if len(flats) > 1 else flats[0]
    out = values.new_empty(values.shape[0])
    return out.index_copy(0, flat, values).reshape(shape)


def _multiply_add(a, b, c):
    if a.device.type == "cpu":
        # one kernel instead of two; a 0-dim float64 tensor acts as a scalar (the result keeps
        # the dtype of a and b)
        return torch.addcmul(torch.tensor(c, dtype=torch.float64), a, b)
    return a * b + c


_OPS = Ops(
    where=torch.where, exp=torch.exp, expm1=torch.expm1, log=torch.log, log1p=torch.log1p,
    sqrt=torch.sqrt, cos_sin=lambda x: (torch.cos(x), torch.sin(x)), abs=torch.abs, atan2=torch.atan2,
    fmod=torch.fmod, maximum=torch.maximum,
    clamp_min=torch.clamp_min, pow=torch.pow, one_like=torch.ones_like,
    broadcast=torch.broadcast_tensors, broadcast_to=torch.broadcast_to, scatter=_scatter,
    count=_count, indices=_indices, gather=_gather,
    first_true=lambda m: int(torch.argmax(m.reshape(-1).to(torch.uint8))), assemble=_assemble,
    multiply_add=_multiply_add,
)
_PRIMITIVES = make_primitives(_OPS)

damped_cosh = _PRIMITIVES["damped_cosh"]
damped_sinhc = _PRIMITIVES["damped_sinhc"]
damped_cosh_plus = _PRIMITIVES["damped_cosh_plus"]
damped_cosh_minus = _PRIMITIVES["damped_cosh_minus"]
momentum_power_s = _PRIMITIVES["momentum_power_s"]
momentum_power_aa = _PRIMITIVES["momentum_power_aa"]
momentum_power_vv = _PRIMITIVES["momentum_power_vv"]
spectral_fraction = _PRIMITIVES["spectral_fraction"]
