r"""Scale-out on ``torch.distributed``: N processes with global batch S follow one process's SGD.

SGD with momentum (eq. 2) on N ranks is the same recursion as on one process when every step
uses the same global minibatch of S samples and the same gradient, the mean over those S:

* **data order**: one seeded permutation per epoch shared by every rank
  (``torch.utils.data.DistributedSampler`` with ``seed`` and ``set_epoch``); rank r takes the
  entries ``r, r + N, r + 2N, ...`` of it, so global batch ``b`` (entries ``b S .. (b+1) S - 1``
  of the permutation, as one process with batch S reads it) is the union of the ranks'
  batches ``b`` of ``S / N`` samples each. :class:`ShardedBatches` keeps ``(epoch, batch)`` as
  its state, so a resumed run continues the order bit for bit.
* **gradient**: DistributedDataParallel averages the ranks' gradients of their mean losses,
  ``(1/N) sum_r (N/S) sum_{i in r} grad l_i``, the mean over the global batch (S divisible by
  N, so every rank holds ``S/N`` samples).
* **batch normalisation**: BatchNorm layers normalise with the statistics of their input,
  which on one rank would be those of ``S/N`` samples; :func:`convert_sync_batchnorm` (the
  default in :func:`wrap_model`) makes them use the statistics of the global batch, in the
  forward and in the backward pass. On CUDA that is ``torch.nn.SyncBatchNorm``; PyTorch's
  SyncBatchNorm refuses CPU tensors, so on CPU (gloo) :class:`SyncBatchNormCPU` does the same
  with two differentiable all-reduces (sums, then centred sums of squares).

What remains is floating-point summation order (per-rank partial sums, then the all-reduce),
so N ranks agree with one process to rounding, not bit for bit.

Everything a user receives is written by rank 0 only (:func:`on_main`); every rank reads the
checkpoint on resume. Hessian-vector products, Lanczos, SLQ and Hutchinson shard their data
across ranks through ``distributed=True`` of :mod:`numeric` (``numeric/_hessian.py``): each
rank passes its shard and the products are all-reduced explicitly, because
``torch.autograd.grad`` does not fire DistributedDataParallel's hooks;
:func:`all_reduce_mean` does the same for other sample averages. The ResNet-18 runner's
spectrum, bulk and noise-trace phases take ``distributed`` the same way
(:func:`run_resnet18_ddp`).

Launch with torchrun, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``::

    torchrun --nproc_per_node=2 -m experiments.distributed --out runs/ddp-demo --steps 200

(``python -m torch.distributed.run`` is the same program). Without those variables every
helper here is the identity of a single process. The module's command line trains a small
convolutional network with BatchNorm on the 8 x 8 digits (the worked example of these helpers,
and what the tests run under torchrun): :func:`train_small_convnet`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from numeric._io import atomic_write

__all__ = [
    "DistributedContext",
    "init_distributed",
    "shutdown",
    "on_main",
    "per_rank_batch_size",
    "make_sampler",
    "ShardedBatches",
    "shard_global_batch",
    "SyncBatchNormCPU",
    "convert_sync_batchnorm",
    "wrap_model",
    "all_reduce_mean",
    "SmallConvNet",
    "train_small_convnet",
    "run_resnet18_ddp",
    "train_and_record_ddp",
    "main",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` in ``[0, world_size)``, ``local_rank`` on its
    machine, the ``device`` it computes on, the ``backend`` (``"gloo"``, ``"nccl"`` or None
    for a single process) and the process ``group`` (None for a single process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    group: object = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op for a single process)."""
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(group=self.group, device_ids=[self.device.index or 0])
            else:
                dist.barrier(group=self.group)


def _env_int(name, default):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be an integer, but got "
                         f"{text!r}") from err


def init_distributed(*, device=None, backend=None,
                     timeout: datetime.timedelta = datetime.timedelta(minutes=30)
                     ) -> DistributedContext:
    """Join the process group that torchrun describes in the environment, or run alone.

    ``WORLD_SIZE`` unset or 1: no process group, rank 0 of 1, on ``device`` (default CUDA when
    present). Otherwise ``backend`` defaults to ``"nccl"`` on CUDA (each rank on
    ``cuda:LOCAL_RANK``) and ``"gloo"`` on CPU, and ``torch.distributed.init_process_group``
    is called (or reused when already initialised). Raises ValueError for malformed
    variables, a ``device`` other than ``"cpu"``/``"cuda"``, or nccl without CUDA.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE) and WORLD_SIZE >= 1, but got "
                         f"RANK={rank}, WORLD_SIZE={world_size}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', but got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but CUDA is not available")
    if world_size == 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else \
            torch.device("cpu")
        return DistributedContext(0, 1, 0, dev, None, None)
    if backend is None:
        backend = "nccl" if kind == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', but got {backend!r}")
    if backend == "nccl" and kind != "cuda":
        raise ValueError("backend='nccl' needs device='cuda'; use gloo on the CPU")
    if kind == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout,
                                **({"device_id": dev} if kind == "cuda" else {}))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, dev,
                              backend, dist.group.WORLD)


def shutdown(context: DistributedContext) -> None:
    """Wait for every rank, then leave the process group (no-op for a single process). The
    barrier matters: a rank that destroys its gloo group while another still uses it can make
    that one abort ("terminate called without an active exception")."""
    if context.distributed and dist.is_initialized():
        context.barrier()
        dist.destroy_process_group()


def on_main(context: DistributedContext, function, *args, **kwargs):
    """Call ``function`` on rank 0 only, then wait for every rank; returns its result on rank
    0 and None elsewhere. For every write a user receives (checkpoints, records, figures)."""
    result = function(*args, **kwargs) if context.is_main else None
    context.barrier()
    return result


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """``S / N``; ValueError unless N divides S (otherwise the ranks' mean losses would weigh
    samples unequally and the dynamics would not be those of batch S)."""
    if isinstance(global_batch, bool) or not isinstance(global_batch, (int, np.integer)) \
            or global_batch < 1:
        raise ValueError(f"global_batch must be a positive integer, but got {global_batch!r}")
    if global_batch % world_size:
        raise ValueError(f"global_batch must be divisible by the number of ranks "
                         f"{world_size}, but got {global_batch}")
    return int(global_batch) // world_size


def make_sampler(num_samples: int, context: DistributedContext, *, seed: int = 0,
                 shuffle: bool = True) -> torch.utils.data.DistributedSampler:
    """The rank's ``DistributedSampler`` over ``range(num_samples)``: one permutation per epoch
    from ``seed + epoch`` (call ``set_epoch``), rank r taking entries ``r, r + N, ...``;
    ``drop_last=True``, so no rank reads padding and all ranks hold equally many samples."""
    return torch.utils.data.DistributedSampler(
        range(int(num_samples)), num_replicas=context.world_size, rank=context.rank,
        shuffle=shuffle, seed=seed, drop_last=True)


class ShardedBatches:
    """This rank's minibatch indices, ``S / N`` per step, epoch after epoch, resumable.

    Step ``j`` of epoch ``e`` is, on rank r, entries ``j S/N .. (j+1) S/N - 1`` of
    :func:`make_sampler`'s order, whose union over ranks is entries ``j S .. (j+1) S - 1`` of
    the epoch's permutation: what one process with batch S and the same seed reads. An epoch
    has ``floor(num_samples / S)`` steps (the partial batch is dropped on every rank). The
    state is ``{"epoch", "batch"}`` (:meth:`state_dict`), two integers that a checkpoint keeps.
    """

    def __init__(self, num_samples: int, global_batch: int, context: DistributedContext, *,
                 seed: int = 0):
        self.batch_size = per_rank_batch_size(global_batch, context.world_size)
        if global_batch > num_samples:
            raise ValueError(f"global_batch must be at most the number of samples "
                             f"{num_samples}, but got {global_batch}")
        self.sampler = make_sampler(num_samples, context, seed=seed)
        self.steps_per_epoch = int(num_samples) // int(global_batch)
        self.epoch, self.batch = 0, 0
        self._order = None

    def next(self) -> torch.Tensor:
        """The next batch of indices (int64, ``(S/N,)``); advances the state."""
        if self.batch >= self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        if self._order is None or self._order[0] != self.epoch:
            self.sampler.set_epoch(self.epoch)
            self._order = (self.epoch, torch.tensor(list(self.sampler), dtype=torch.int64))
        start = self.batch * self.batch_size
        self.batch += 1
        return self._order[1][start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank; the backward pass sums the incoming gradients over the
    ranks (the derivative of every rank's output with respect to every rank's input is 1)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def shard_global_batch(indices: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """This rank's part of a global batch of sample indices (``(S,)``, S divisible by N):
    entries ``r, r + N, r + 2N, ...``, the rule of ``DistributedSampler``. For runners whose
    data order is one index sampler for the global batch (``experiments.vision.EpochSampler``):
    every rank draws the same global batch from the same seeded state and keeps its shard, so
    the checkpointed sampler state resumes all ranks."""
    per_rank_batch_size(int(indices.shape[0]), context.world_size)
    return indices[context.rank::context.world_size]


class SyncBatchNormCPU(torch.nn.modules.batchnorm._BatchNorm):
    r"""Batch normalisation with the statistics of the global batch, on any device.

    In training mode with an initialised process group of more than one rank, the mean and the
    biased variance per channel are those of the union of the ranks' inputs, from two
    differentiable all-reduces (the backward pass sums the gradients over the ranks, as
    SyncBatchNorm does): the sums and counts, then
    the centred sums of squares (two passes, no ``E[x^2] - E[x]^2`` cancellation). The running
    statistics are updated like BatchNorm's (unbiased variance of the global batch). Otherwise
    it is ``torch.nn.functional.batch_norm``. Input ``(N, C, ...)``.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected an input of shape (N, C, ...), but got "
                             f"{tuple(input.shape)}")

    def forward(self, input):
        self._check_input_dim(input)
        synced = (self.training and dist.is_available() and dist.is_initialized()
                  and dist.get_world_size() > 1)
        if not synced:
            momentum = 0.0 if self.momentum is None else self.momentum
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    momentum = 1.0 / float(self.num_batches_tracked)
            use_batch = self.training or self.running_mean is None
            return torch.nn.functional.batch_norm(
                input, self.running_mean if not self.training or self.track_running_stats
                else None, self.running_var if not self.training or self.track_running_stats
                else None, self.weight, self.bias, use_batch, momentum, self.eps)
        group = dist.group.WORLD

        def all_reduce(tensor):
            return _AllReduceSum.apply(tensor, group)

        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.shape[1]], dtype=input.dtype,
                             device=input.device)
        sums = all_reduce(torch.cat([input.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = input - mean.reshape(shape)
        var = all_reduce((centred * centred).sum(dims)) / total
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                        else self.momentum)
            with torch.no_grad():
                unbiased = var.detach() * (total / (total - 1)).detach()
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def _convert_cpu(module):
    converted = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, SyncBatchNormCPU):
        converted = SyncBatchNormCPU(module.num_features, module.eps, module.momentum,
                                     module.affine, module.track_running_stats)
        converted = converted.to(device=next(iter(module.buffers()), torch.empty(0)).device)
        if module.affine:
            with torch.no_grad():
                converted.weight = module.weight
                converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.training = module.training
    for name, child in module.named_children():
        converted.add_module(name, _convert_cpu(child))
    return converted


def convert_sync_batchnorm(model: torch.nn.Module, context: DistributedContext
                           ) -> torch.nn.Module:
    """Every BatchNorm layer of ``model`` normalised over the global batch: PyTorch's
    ``SyncBatchNorm`` on CUDA, :class:`SyncBatchNormCPU` on the CPU (same parameters and
    buffers, shared, not copied). Returns the model (a new top module only if ``model`` itself
    is a BatchNorm layer)."""
    if context.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model, context.group)
    return _convert_cpu(model)


def wrap_model(model: torch.nn.Module, context: DistributedContext, *,
               sync_batchnorm: bool = True) -> torch.nn.Module:
    """``model`` on the rank's device, its BatchNorm layers synchronised (unless
    ``sync_batchnorm=False``) and wrapped in DistributedDataParallel when there are several
    ranks (rank 0's parameters and buffers are broadcast at construction). A single process
    gets the model itself, moved. Keep the unwrapped module (``.module``) for Hessian-vector
    products: they go through ``distributed=True`` of :mod:`numeric`, not through DDP."""
    model = model.to(context.device)
    if not context.distributed:
        return model
    if sync_batchnorm:
        model = convert_sync_batchnorm(model, context)
    ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     process_group=context.group)


def all_reduce_mean(total, count, context: DistributedContext):
    """``sum_r total_r / sum_r count_r`` over the ranks (a float64 tensor or float ``total``
    of any shape, ``count`` a number): a sample mean over the union of the ranks' shards (e.g.
    the noise trace ``(1/N) sum_i ||g_i||^2 - ||g||^2`` from per-rank sums)."""
    total = torch.as_tensor(total, dtype=torch.float64, device=context.device).clone()
    count = torch.tensor([float(count)], dtype=torch.float64, device=context.device)
    if context.distributed:
        dist.all_reduce(total, group=context.group)
        dist.all_reduce(count, group=context.group)
    return total / count


# --------------------------------------------------------------------------------------------
# the worked example: a small conv net with BatchNorm on the digits, resumable under torchrun
# --------------------------------------------------------------------------------------------


class SmallConvNet(torch.nn.Module):
    """conv(1->8, 3x3) - BatchNorm - ReLU - conv(8->16, 3x3, stride 2) - BatchNorm - ReLU -
    global average pool - linear(16->10), for 8 x 8 one-channel images. Initialised in
    ``dtype`` (so the draws do not depend on torch's default dtype)."""

    def __init__(self, width: int = 8, num_classes: int = 10, *, dtype=torch.float32):
        super().__init__()
        kw = {"dtype": dtype}
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1, bias=False, **kw),
            torch.nn.BatchNorm2d(width, **kw), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False, **kw),
            torch.nn.BatchNorm2d(2 * width, **kw), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(2 * width, num_classes, **kw)

    def forward(self, x):
        return self.head(self.features(x))


def _digit_images(dtype):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=dtype)[:, None] / 16.0
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(bunch.target, dtype=torch.int64)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _velocity(optimizer, model):
    """The paper's ``v_k = -buf_k`` (PyTorch's momentum buffer), flattened."""
    pieces = []
    for p in model.parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        pieces.append(torch.zeros_like(p).reshape(-1) if buf is None else -buf.reshape(-1))
    return torch.cat(pieces)


def _atomic_torch_save(path: Path, obj) -> None:
    atomic_write(path, lambda stream: torch.save(obj, stream))


def train_small_convnet(out_dir, *, steps: int, global_batch: int = 32, eta: float = 0.05,
                        beta: float = 0.9, lam: float = 0.0, seed: int = 0,
                        num_directions: int = 4, checkpoint_every: int = 10,
                        stop_after: int | None = None, sync_batchnorm: bool = True,
                        dtype=torch.float64, context: DistributedContext | None = None
                        ) -> dict | None:
    r"""Train :class:`SmallConvNet` on the digits with SGD and momentum (eq. 2) on every rank
    of ``context`` (default: :func:`init_distributed`), global batch ``global_batch``.

    Recorded every step, on rank 0, in float64: ``||delta_k||^2 = eta^2 ||v_k||^2`` and
    ``||Delta_k||^2 = ||theta_k - theta_0||^2``, and the projections of ``theta_k - theta_0``
    and ``v_k`` on ``num_directions`` fixed random orthonormal directions (seeded). Every
    ``checkpoint_every`` steps rank 0 writes ``checkpoint.pt`` atomically (parameters, buffers,
    momentum buffers, the data order's state and the record so far; tensors and numbers only,
    read back with ``weights_only=True``); a call on a folder with a checkpoint resumes from
    it on every rank. ``stop_after`` ends the call after that many steps in total (to test
    resuming). Returns the record on rank 0 (``steps``, ``local_sq``, ``global_sq``,
    ``theta_projection``, ``velocity_projection`` as float64 NumPy arrays) and None elsewhere.
    """
    context = init_distributed(device="cpu") if context is None else context
    out_dir = Path(out_dir)
    on_main(context, out_dir.mkdir, parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SmallConvNet(dtype=dtype).to(context.device)
    x, y = _digit_images(dtype)
    x, y = x.to(context.device), y.to(context.device)
    num_params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed + 1)
    directions, _ = torch.linalg.qr(torch.randn(num_params, num_directions, generator=generator,
                                                dtype=torch.float64))
    directions = directions.T.to(context.device)
    network = wrap_model(model, context, sync_batchnorm=sync_batchnorm)
    module = network.module if context.distributed else network
    optimizer = torch.optim.SGD(network.parameters(), lr=eta, momentum=beta, weight_decay=lam)
    batches = ShardedBatches(x.shape[0], global_batch, context, seed=seed)
    theta0 = _flat(module).double()
    record = {"local_sq": [], "global_sq": [], "theta_projection": [],
              "velocity_projection": []}
    step = 0
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=context.device, weights_only=True)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        theta0 = state["theta0"].to(context.device)
        step = int(state["step"])
        record = {key: list(state["record"][key].unbind(0)) if step else []
                  for key in record}
    stop = steps if stop_after is None else min(steps, stop_after)
    network.train()
    while step < stop:
        index = batches.next().to(context.device)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(network(x[index]), y[index])
        loss.backward()
        optimizer.step()
        step += 1
        if context.is_main:
            theta = _flat(module).double()
            velocity = _velocity(optimizer, module).double()
            record["local_sq"].append(eta * eta * (velocity @ velocity))
            record["global_sq"].append(((theta - theta0) ** 2).sum())
            record["theta_projection"].append(directions @ (theta - theta0))
            record["velocity_projection"].append(directions @ velocity)
        if step % checkpoint_every == 0 or step == stop:
            state = {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                     "batches": batches.state_dict(), "theta0": theta0, "step": step,
                     "record": {k: torch.stack(v) if v else torch.zeros(0)
                                for k, v in record.items()}}
            on_main(context, _atomic_torch_save, checkpoint, state)
    if not context.is_main:
        return None
    return {"steps": np.arange(1, step + 1)} | {
        key: torch.stack(value).cpu().numpy() if value else np.zeros(0)
        for key, value in record.items()}


# --------------------------------------------------------------------------------------------
# the ResNet-18 runner under DDP
# --------------------------------------------------------------------------------------------


def run_resnet18_ddp(config, out_dir, *, resume: bool = False, progress: bool = True,
                     context: DistributedContext | None = None) -> dict | None:
    """:func:`experiments.resnet18.run_resnet18` with its resumed SGD phase on every rank.

    One process (``WORLD_SIZE`` unset or 1) is ``run_resnet18`` itself. With N ranks: rank 0
    alone pretrains (the runner's phase function and file); then every rank loads the
    pretrained point and measures the top-k spectrum, the SLQ bulk and the noise trace with
    the data sharded across the ranks and the products all-reduced (the runner's
    ``measure_spectrum``, ``measure_bulk`` and ``estimate_noise`` with ``distributed``; rank 0
    writes their files), and runs :func:`train_and_record_ddp` (global
    batch ``config.batch_size`` split across the ranks, BatchNorm over the global batch,
    DistributedDataParallel); the ranks leave the process group; and rank 0 finishes the run
    with ``run_resnet18(..., resume=True)``, which finds every phase done up to the trajectory
    and computes the landscape, the comparisons and the figures. Returns
    the summary on rank 0 and None elsewhere. ``out_dir`` is required (every rank must name
    the same folder). On CUDA each rank computes on ``cuda:LOCAL_RANK`` with nccl.
    """
    import dataclasses as _dc
    import json

    from . import resnet18 as runner

    context = init_distributed(device=config.device.split(":")[0]) if context is None \
        else context
    if not context.distributed:
        return runner.run_resnet18(config, out_dir, resume=resume, progress=progress)
    if out_dir is None:
        raise ValueError("out_dir must be given when running on several ranks (each rank "
                         "would otherwise pick its own default folder)")
    config.validate()
    per_rank_batch_size(config.batch_size, context.world_size)
    if context.device.type == "cuda":
        config = _dc.replace(config, device=str(context.device))
    out_dir = Path(out_dir)

    def prepare():
        out_dir.mkdir(parents=True, exist_ok=True)
        config_file = out_dir / "config.json"
        if config_file.exists():
            if not resume:
                raise ValueError(f"output folder {out_dir} already holds a run; pass --resume "
                                 "to continue it or choose another --out")
            runner._check_settings(json.loads(config_file.read_text()), config,
                                   [k for k in json.loads(config_file.read_text())
                                    if k != "device"], f"the run in {out_dir}")
        else:
            runner._save_json(config_file, config.to_dict())
        torch.manual_seed(config.seed)
        data = runner.load_image_dataset(config.dataset, data_dir=config.data_dir,
                                         seed=config.seed, num_samples=config.num_samples)
        if config.pretrained is None:
            runner.pretrain(config, data, out_dir, progress=progress)

    error = [None]
    if context.is_main:
        try:
            prepare()
        except (ValueError, FileNotFoundError) as err:  # tell the other ranks, then raise
            error = [f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(error, src=0, group=context.group)
    if error[0] is not None:
        shutdown(context)
        raise ValueError(f"rank 0 could not prepare the run: {error[0]}")
    data = runner.load_image_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                                     num_samples=config.num_samples)
    model, pretrained_state = runner._load_pretrained(
        config, data, runner._pretrained_file(config, out_dir))
    shards = context.group if context.group is not None else True
    show = progress and context.is_main
    spectrum = runner.measure_spectrum(config, model, data, out_dir, progress=show,
                                       distributed=shards)
    runner.measure_bulk(config, model, data, spectrum, out_dir, progress=show,
                        distributed=shards)
    runner.estimate_noise(config, model, data, spectrum["eigenvectors"], out_dir,
                          progress=show, distributed=shards)
    train_and_record_ddp(config, model, data, spectrum, pretrained_state, out_dir,
                         resume=resume, progress=progress, context=context)
    shutdown(context)
    if not context.is_main:
        return None
    return runner.run_resnet18(config, out_dir, resume=True, progress=progress)


def train_and_record_ddp(config, model, data, spectrum: dict, pretrained_state: dict, out_dir,
                         *, resume=False, progress=True,
                         context: DistributedContext) -> None:
    """The resumed SGD phase on every rank: :func:`experiments.resnet18.train_and_record` with
    ``context`` (the same files, written by rank 0, with the same global batches)."""
    from . import resnet18 as runner

    runner.train_and_record(config, model, data, spectrum, pretrained_state, out_dir,
                            resume=resume, progress=progress, context=context)


def main(argv=None) -> int:
    """``torchrun --nproc_per_node=N -m experiments.distributed --out DIR --steps K``: train
    :class:`SmallConvNet` (resumable), rank 0 writes ``record.npz``;
    ``torchrun --nproc_per_node=N -m experiments.distributed resnet18 [resnet18 options]``:
    :func:`run_resnet18_ddp`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["resnet18"]:
        return _resnet18_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m experiments.distributed",
                                     description=train_small_convnet.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--eta", type=float, default=0.05)
    parser.add_argument("--beta", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--no-sync-batchnorm", action="store_true")
    parser.add_argument("--float32", action="store_true")
    args = parser.parse_args(argv)
    context = init_distributed(device="cpu")
    try:
        record = train_small_convnet(
            args.out, steps=args.steps, global_batch=args.global_batch, eta=args.eta,
            beta=args.beta, seed=args.seed, checkpoint_every=args.checkpoint_every,
            stop_after=args.stop_after, sync_batchnorm=not args.no_sync_batchnorm,
            dtype=torch.float32 if args.float32 else torch.float64, context=context)
        if record is not None:
            path = Path(args.out) / "record.npz"
            atomic_write(path, lambda stream: np.savez(stream, **record))
            print(f"rank 0 of {context.world_size}: {len(record['steps'])} steps recorded in "
                  f"{path}")
    finally:
        shutdown(context)
    return 0


def _resnet18_main(argv) -> int:
    from . import resnet18 as runner
    from .report import format_table, to_jsonable

    parser = argparse.ArgumentParser(prog="python -m experiments.distributed resnet18")
    runner.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = runner.config_from_args(args)
        summary = run_resnet18_ddp(config, args.out, resume=args.resume,
                                   progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary is not None:
        print(format_table(to_jsonable(summary["comparisons"])))
        print(f"\nfigures, summary.json and report.md in {summary['settings']['out_dir']}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
