"""The NaN-safe primitives (see :mod:`numeric._primitives_common`) for torch tensors.

Differentiable: every branch is fed a safe argument where it is not selected, so gradients
are finite everywhere on the valid domain. Dtype and device follow the inputs.
"""

from __future__ import annotations

import torch

from ._primitives_common import Ops, make_primitives

__all__ = [
    "damped_cosh", "damped_sinhc", "damped_cosh_plus", "damped_cosh_minus",
    "momentum_power_s", "momentum_power_aa", "momentum_power_vv", "spectral_fraction",
]


def _scatter(out, flat, values):
    # out of place: differentiable in ``values`` (and in the kept elements of ``out``)
    return out.reshape(-1).index_put((flat,), values).reshape(out.shape)


def _gather(a, flat):
    return a.reshape(-1).index_select(0, flat)


def _indices(mask):
    # integer indices once per regime: gathering with them is far cheaper than boolean masks
    return mask.reshape(-1).nonzero().squeeze(1)


_OPS = Ops(
    where=torch.where, exp=torch.exp, expm1=torch.expm1, log=torch.log, log1p=torch.log1p,
    sqrt=torch.sqrt, cos=torch.cos, sin=torch.sin, abs=torch.abs, atan2=torch.atan2,
    fmod=torch.fmod, maximum=torch.maximum, pow=torch.pow, one_like=torch.ones_like,
    broadcast=torch.broadcast_tensors, broadcast_to=torch.broadcast_to, scatter=_scatter,
    count=lambda m: int(m.sum()), indices=_indices, gather=_gather,
    first_true=lambda m: int(torch.argmax(m.reshape(-1).to(torch.uint8))),
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
