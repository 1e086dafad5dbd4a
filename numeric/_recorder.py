r"""Trajectory recorder for SGD with momentum: displacements, loss and projections, per step.

Conventions (docs/theory.md section 1, eq. 1-2 of Kunin et al. 2023):

.. math::

    v_{k+1} = \beta v_k - g_B(\theta_k) - \lambda\theta_k,\qquad
    \theta_{k+1} = \theta_k + \eta v_{k+1},\qquad v_0 = 0.

PyTorch's ``SGD(momentum=beta, weight_decay=lam, dampening=0)`` keeps the buffer
:math:`\mathrm{buf}_{k+1} = \beta\,\mathrm{buf}_k + g + \lambda\theta_k` and steps
:math:`\theta_{k+1} = \theta_k - \eta\,\mathrm{buf}_{k+1}`, so the paper's velocity is
:math:`v_k = -\mathrm{buf}_k`. Step :math:`k` is the state after the :math:`k`-th call of
``optimizer.step()``; :math:`\theta_0` is the state when the recorder was created.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write as _atomic_write
from ._trajectory import TrajectoryWriter, load_trajectory, trajectory_manifest

__all__ = ["TrajectoryRecorder", "load_trajectory"]

_START = "start.npz"
_REFERENCE = "reference.npz"
_SCALARS = ("local_displacement_sq", "global_displacement_sq", "loss")
_PROJECTIONS = ("theta_projection", "velocity_projection")


_SPLIT = 1 << 16  # columns per partial product of _project on the CPU


def _project(directions, vectors):
    """``vectors @ directions.T`` for ``(n, P)`` and ``(m, P)`` operands with small n, m and
    large P. On the CPU this skinny product runs at a fraction of the machine's matrix
    throughput when given to BLAS whole; split into column blocks of ``_SPLIT`` (one batched
    product, then a sum over blocks) it runs about 1.7x faster, and the blocked sum also
    rounds less. Elsewhere BLAS splits the inner dimension itself."""
    size = vectors.shape[1]
    blocks = size // _SPLIT
    if vectors.device.type != "cpu" or blocks < 2:
        return torch.mm(vectors, directions.T)
    cut = blocks * _SPLIT
    left = directions[:, :cut].reshape(-1, blocks, _SPLIT).transpose(0, 1)
    right = vectors[:, :cut].reshape(-1, blocks, _SPLIT).transpose(0, 1)
    out = torch.bmm(left, right.transpose(1, 2)).sum(0).T
    if cut < size:
        out += torch.mm(vectors[:, cut:], directions[:, cut:].T)
    return out


class TrajectoryRecorder:
    r"""Record an SGD-with-momentum trajectory, every step or every ``every`` steps.

    For each recorded step :math:`k` (after the :math:`k`-th ``optimizer.step()``):

    - ``step`` :math:`k`;
    - ``local_displacement_sq`` :math:`\|\delta_k\|^2`, :math:`\delta_k = \theta_k -
      \theta_{k-1} = \eta v_k` (eq. 1-2), computed as :math:`\eta^2\|\mathrm{buf}_k\|^2`:
      the step PyTorch applied, free of the rounding of a difference of iterates;
    - ``global_displacement_sq`` :math:`\|\Delta_k\|^2`, :math:`\Delta_k = \theta_k -
      \theta_0` with :math:`\theta_0` the parameters when the recording started (eq. 1);
    - ``loss``: the value passed to :meth:`record` (NaN if none), typically the minibatch
      loss of the forward pass of step :math:`k`, i.e. evaluated at :math:`\theta_{k-1}`;
    - ``theta_projection`` :math:`\langle \theta_k - \theta_{\rm ref}, q_l\rangle` and
      ``velocity_projection`` :math:`\langle v_k, q_l\rangle` for the rows :math:`q_l` of
      ``directions``, with the paper's velocity :math:`v_k = -\mathrm{buf}_k` (the negated
      PyTorch momentum buffer, docs/theory.md section 1). For a parameter group with
      ``momentum=0`` PyTorch keeps no buffer and :math:`v_k = \delta_k / \eta` is used.

    Parameters are flattened in the order of ``optimizer.param_groups`` (groups in order,
    parameters in order within a group); for an optimizer built from ``model.parameters()``
    this is the order of ``model.parameters()`` (the order of
    :func:`numeric.hessian_eigenpairs`' eigenvectors).

    Values are computed on the parameters' device in their dtype and kept there in float64
    buffers of ``chunk_size`` rows; the host sees them only when a chunk is flushed, so
    recording does not synchronise a CUDA device every step. The projections of a block of
    steps are one ``(n, P) x (P, m)`` product. With ``every=1`` and one learning rate across
    groups, a block holds :math:`\theta_{k_0} - \theta_{\rm ref}` for its first step and
    only the velocity for each step after it: the position projections follow from eq. 2,
    :math:`\langle\theta_k - \theta_{\rm ref}, q\rangle = \langle\theta_{k-1} -
    \theta_{\rm ref}, q\rangle + \eta_k\langle v_k, q\rangle` (accumulated in float64 and
    re-anchored on the parameters at every block, so a change made to the parameters outside
    ``optimizer.step()`` shows from the next block on), which halves the dominant cost,
    :math:`2Pm` flops per projected vector. Otherwise each step holds both vectors.

    Files: with ``path`` (a directory, created if needed) the recording is a trajectory folder
    (:mod:`numeric._trajectory`): each full chunk is written as ``chunk_<first step>.npz``
    atomically (temporary file, ``os.replace``), next to ``manifest.json`` (the learning
    rate, momentum and weight decay of the groups, ``settings``, the dtype, the SHA-256 of the
    directions and of the reference, package versions), ``start.npz`` (:math:`\theta_0`) and
    ``reference.npz`` (when given). A killed run loses at most the chunk in progress. A new
    recorder on the same ``path`` *resumes*: it reloads :math:`\theta_0`, continues the step
    count from the last step on disk (:attr:`step`) and appends; the caller restores the
    model and optimizer to that step (e.g. checkpoint when :meth:`flush` is called or every
    ``chunk_size * every`` steps; :func:`numeric.truncate_trajectory` rewinds the files to an
    older checkpoint). A resume with another dtype, other directions or reference, another
    learning rate (``initial_lr`` of a scheduler when present), momentum, weight decay,
    ``every`` or ``settings`` raises :class:`numeric.TrajectoryMismatchError`.
    :func:`load_trajectory` reads the record back, lazily.

    Parameters
    ----------
    optimizer:
        ``torch.optim.SGD`` with ``dampening=0``, ``nesterov=False``, ``maximize=False`` and
        ``momentum`` in [0, 1) (any ``weight_decay``, any learning rate).
    directions:
        ``(m, num_params)`` tensor (or array), e.g. Hessian eigenvectors; ``None`` records no
        projections (``m = 0``). Moved to the parameters' device and dtype.
    reference:
        :math:`\theta_{\rm ref}`: a ``(num_params,)`` tensor, or a sequence of tensors shaped
        like the parameters; default :math:`\theta_0`.
    every:
        record steps that are multiples of ``every`` (>= 1).
    path:
        directory for the chunk files, or ``None`` to keep the record in memory only
        (:meth:`trajectory`).
    chunk_size:
        rows per chunk (>= 1).
    projection_block:
        recorded steps whose projections are computed together, as one matrix product
        (>= 1; default ``max(1, m // 2)``). A block holds ``projection_block + 1`` vectors of
        the model's size (about half the memory of ``directions`` by default; with
        ``every > 1`` or unequal learning rates, half as many steps) and reads ``directions``
        once, which is what makes per-step projections cheap for large models.

    Raises
    ------
    TypeError
        ``optimizer`` is not ``torch.optim.SGD``.
    ValueError
        an unsupported SGD option (named, with its value), parameters on several devices or
        dtypes, ``directions`` or ``reference`` of the wrong shape, ``every``/``chunk_size``/
        ``projection_block`` < 1.
    TypeError
        ``settings`` that are not JSON-serialisable.
    numeric.TrajectoryMismatchError
        (a ``ValueError``) a ``path`` recorded with other settings, dtype, directions,
        reference or hyperparameters (the field is named).

    ``settings`` (a JSON-serialisable dict, e.g. the batch size ``S``, data set, seed) is
    stored in the manifest and must match on resume; ``S`` is read from ``settings["S"]`` or
    ``settings["batch_size"]``.
    """

    def __init__(self, optimizer, *, directions=None, reference=None, every=1, path=None,
                 chunk_size=1024, projection_block=None, settings=None):
        self._optimizer = optimizer
        self._params = self._check_optimizer(optimizer)
        first = self._params[0]
        self._device, self._dtype = first.device, first.dtype
        # (parameter, its slice of the flat vector, its group) in optimizer order, and each
        # non-empty group's slice
        self._layout, self._group_spans = [], []
        offset = 0
        for group in optimizer.param_groups:
            begin = offset
            for p in group["params"]:
                self._layout.append((p, slice(offset, offset + p.numel()), group))
                offset += p.numel()
            if offset > begin:
                self._group_spans.append((group, slice(begin, offset)))
        self.num_params = offset
        self.every = self._check_count(every, "every")
        self.chunk_size = self._check_count(chunk_size, "chunk_size")

        self._directions = self._check_directions(directions)
        self.num_directions = 0 if self._directions is None else self._directions.shape[0]
        self._path = None if path is None else Path(path)
        self._step = 0
        given_reference = None if reference is None else self._check_reference(reference)
        self._writer = None
        start = None
        if self._path is not None:
            start = self._open_directory(settings, given_reference)
        self._start = self._flat_parameters() if start is None else start
        if self._path is not None and not (self._path / _START).exists():
            _save_vector(self._path / _START, self._start)
        self._reference = self._start if given_reference is None else given_reference
        self._reference_is_start = reference is None

        factory = {"device": self._device, "dtype": self._dtype}
        self._work = torch.empty(self.num_params, **factory)
        # theta_{k-1} is needed only by momentum-free groups (PyTorch keeps no buffer there)
        self._previous = None
        if any(group.get("momentum", 0.0) == 0.0 for _, _, group in self._layout):
            self._previous = self._flat_parameters()
        if projection_block is None:
            projection_block = max(1, self.num_directions // 2)
        self.projection_block = self._check_count(projection_block, "projection_block")
        self._pending = (torch.empty(self.projection_block + 1, self.num_params, **factory)
                         if self.num_directions else None)
        self._pending_rows = []  # (row, theta slot or None, velocity slot, learning rate)
        self._pending_used = 0
        rows = {"device": self._device, "dtype": torch.float64}
        self._scalars = torch.full((self.chunk_size, 3), math.nan, **rows)
        self._projections = torch.zeros((self.chunk_size, 2, self.num_directions), **rows)
        self._steps = []
        self._host = []
        self._closed = False

    # ---- validation ---------------------------------------------------------------------

    @staticmethod
    def _check_optimizer(optimizer):
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"optimizer must be torch.optim.SGD, but got "
                            f"{type(optimizer).__name__}")
        params = []
        for index, group in enumerate(optimizer.param_groups):
            momentum = group.get("momentum", 0.0)
            if not 0.0 <= momentum < 1.0:
                raise ValueError(f"param group {index}: momentum must be in [0, 1), but got "
                                 f"{momentum}")
            for option, allowed in (("dampening", 0), ("nesterov", False), ("maximize", False)):
                if group.get(option, allowed) != allowed:
                    raise ValueError(f"param group {index}: {option}={group[option]!r} is not "
                                     f"supported; the recorder follows the paper's update "
                                     f"(eq. 2), which needs {option}={allowed!r}")
            params.extend(group["params"])
        if not params:
            raise ValueError("optimizer has no parameters")
        kinds = {(p.device, p.dtype) for p in params}
        if len(kinds) != 1:
            raise ValueError(f"all parameters must share one device and dtype, but got "
                             f"{sorted(str(k) for k in kinds)}")
        return params

    @staticmethod
    def _check_count(value, name):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, but got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, but got {value}")
        return int(value)

    def _check_directions(self, directions):
        if directions is None:
            return None
        directions = torch.as_tensor(directions)
        if directions.ndim != 2 or directions.shape[1] != self.num_params:
            raise ValueError(f"directions must have shape (m, {self.num_params}) (the "
                             f"optimizer's number of parameters), but got shape "
                             f"{tuple(directions.shape)}")
        if directions.shape[0] == 0:
            return None
        return directions.detach().to(device=self._device, dtype=self._dtype).contiguous()

    def _check_reference(self, reference):
        if isinstance(reference, (list, tuple)):
            shapes = [tuple(p.shape) for p in self._params]
            got = [tuple(torch.as_tensor(r).shape) for r in reference]
            if got != shapes:
                raise ValueError(f"reference must be shaped like the parameters {shapes}, but "
                                 f"got {got}")
            reference = torch.cat([torch.as_tensor(r).reshape(-1).to(self._device)
                                   for r in reference])
        reference = torch.as_tensor(reference)
        if reference.shape != (self.num_params,):
            raise ValueError(f"reference must have shape ({self.num_params},), but got shape "
                             f"{tuple(reference.shape)}")
        return reference.detach().to(device=self._device, dtype=self._dtype).clone()

    def _manifest(self, settings, reference):
        groups = self._optimizer.param_groups

        def per_group(read):
            values = [read(group) for group in groups]
            return values[0] if len(set(values)) == 1 else values

        settings = dict(settings or {})
        return trajectory_manifest(
            eta=per_group(lambda g: float(g.get("initial_lr", g["lr"]))),
            beta=per_group(lambda g: float(g.get("momentum", 0.0))),
            lam=per_group(lambda g: float(g.get("weight_decay", 0.0))),
            S=settings.get("S", settings.get("batch_size")), settings=settings,
            dtype=self._dtype, directions=self._directions, reference=reference, axis=None,
            arrays=list(_SCALARS + _PROJECTIONS),
            array_shapes={key: [] for key in _SCALARS} | {
                key: [self.num_directions] for key in _PROJECTIONS},
            kind="recorder", num_parameters=self.num_params,
            num_directions=self.num_directions, every=self.every)

    def _open_directory(self, settings, reference):
        """Create or resume the directory; returns theta_0 when resuming, else None."""
        self._writer = TrajectoryWriter(self._path, self._manifest(settings, reference))
        self._step = self._writer.last_step or 0
        if reference is not None and not (self._path / _REFERENCE).exists():
            _save_vector(self._path / _REFERENCE, reference)
        start_file = self._path / _START
        if not start_file.exists():
            return None
        with np.load(start_file, allow_pickle=False) as data:
            start = torch.from_numpy(data["vector"])
        return start.to(device=self._device, dtype=self._dtype)

    # ---- recording ----------------------------------------------------------------------

    @property
    def step(self):
        """The step count: the number of ``optimizer.step()`` calls recorded for so far
        (resumed from disk when ``path`` held a recording)."""
        return self._step

    def _flat_parameters(self):
        return torch.cat([p.detach().reshape(-1) for p, _, _ in self._layout])

    def _difference(self, out, base):
        """``out = theta_k - base``, written parameter by parameter (no flat copy of theta)."""
        for p, span, _ in self._layout:
            torch.sub(p.detach().reshape(-1), base[span], out=out[span])

    def _negated_velocity(self, out):
        """Write buf_k = -v_k into ``out``; a momentum-free parameter has no buffer and uses
        -v_k = (theta_{k-1} - theta_k) / lr."""
        for p, span, group in self._layout:
            if group.get("momentum", 0.0) == 0.0:
                torch.sub(self._previous[span], p.detach().reshape(-1), out=out[span])
                out[span].div_(float(group["lr"]))
                continue
            buffer = self._optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is None:  # no gradient yet, so the parameter has not moved (v = 0)
                out[span].zero_()
            else:
                out[span].copy_(buffer.reshape(-1))

    def _capture_previous(self):
        for p, span, group in self._layout:
            if group.get("momentum", 0.0) == 0.0:
                self._previous[span].copy_(p.detach().reshape(-1))

    @torch.no_grad()
    def record(self, loss=None):
        """Account for one ``optimizer.step()``; store the step's values if it is recorded.

        Call once after every ``optimizer.step()`` and before a learning-rate scheduler's
        ``step()`` (the step's learning rate is read from the optimizer). ``loss`` is a float,
        a 0-d tensor (kept on its device, no synchronisation) or ``None`` (stored as NaN).
        """
        if self._closed:
            raise ValueError("record() called on a closed TrajectoryRecorder")
        self._step += 1
        if self._step % self.every == 0:
            self._record_row(loss)
        if self._previous is not None and (self._step + 1) % self.every == 0:
            self._capture_previous()  # the next step is recorded: keep its theta_{k-1}

    def _record_row(self, loss):
        row = len(self._steps)
        rates = {float(group["lr"]) for _, _, group in self._layout}
        theta_slot = None
        if self._pending is None:
            velocity = self._work
        else:
            # every = 1 and one learning rate: theta_k - theta_{k-1} = lr v_k (eq. 2), so the
            # position projection follows from the previous row and this velocity projection
            cumulative = self.every == 1 and len(rates) == 1 and bool(self._pending_rows)
            if self._pending_used + (1 if cumulative else 2) > len(self._pending):
                self._project_pending()
                cumulative = False
            if not cumulative:
                theta_slot = self._pending_used
                self._difference(self._pending[theta_slot], self._reference)
                self._pending_used += 1
            velocity = self._pending[self._pending_used]
            rate = next(iter(rates)) if cumulative else None
            self._pending_rows.append((row, theta_slot, self._pending_used, rate))
            self._pending_used += 1
        self._negated_velocity(velocity)
        # ||delta_k||^2 = sum over groups of lr^2 ||buf_k||^2, since theta_k - theta_{k-1} =
        # -lr buf_k exactly as PyTorch steps (the buffer, not a difference of rounded iterates)
        local = None
        for group, span in self._group_spans:
            part = torch.dot(velocity[span], velocity[span]) * float(group["lr"]) ** 2
            local = part if local is None else local + part
        self._scalars[row, 0] = local
        if theta_slot is not None and self._reference_is_start:
            displacement = self._pending[theta_slot]
        else:
            self._difference(self._work, self._start)
            displacement = self._work
        self._scalars[row, 1] = torch.dot(displacement, displacement)
        if loss is None:
            self._scalars[row, 2] = math.nan
        elif isinstance(loss, torch.Tensor):
            self._scalars[row, 2] = loss.detach().reshape(())
        else:
            self._scalars[row, 2] = float(loss)
        self._steps.append(self._step)
        if len(self._steps) == self.chunk_size:
            self.flush()

    def _project_pending(self):
        """One ``(n, P) x (P, m)`` product for the vectors held back: the directions, the
        largest operand, are read once per block instead of once per step."""
        if not self._pending_rows:
            return
        projected = _project(self._directions, self._pending[:self._pending_used])
        projected = projected.to(torch.float64)
        theta = None
        for row, theta_slot, velocity_slot, rate in self._pending_rows:
            velocity = projected[velocity_slot].neg()  # the buffer holds -v
            theta = projected[theta_slot] if theta_slot is not None else theta + rate * velocity
            self._projections[row, 0] = theta
            self._projections[row, 1] = velocity
        self._pending_rows = []
        self._pending_used = 0

    def flush(self):
        """Move the rows recorded so far to the host and, with ``path``, write them as one
        chunk file (atomically). A no-op when nothing is pending."""
        self._project_pending()
        count = len(self._steps)
        if count == 0:
            return
        scalars = self._scalars[:count].cpu().numpy()
        projections = self._projections[:count].cpu().numpy()
        chunk = {"step": np.asarray(self._steps, dtype=np.int64)}
        for column, key in enumerate(_SCALARS):
            chunk[key] = scalars[:, column].copy()
        chunk["theta_projection"] = projections[:, 0, :].copy()
        chunk["velocity_projection"] = projections[:, 1, :].copy()
        if self._writer is not None:
            self._writer.write_chunk(chunk)
        self._host.append(chunk)
        self._steps = []
        self._scalars.fill_(math.nan)

    def trajectory(self):
        """The rows recorded by this recorder (flushed and pending), as
        :func:`load_trajectory` returns them; without ``path`` this is the whole record."""
        self._project_pending()
        pending = len(self._steps)
        parts = list(self._host)
        if pending:
            scalars = self._scalars[:pending].cpu().numpy()
            projections = self._projections[:pending].cpu().numpy()
            part = {"step": np.asarray(self._steps, dtype=np.int64)}
            part.update({key: scalars[:, i] for i, key in enumerate(_SCALARS)})
            part["theta_projection"] = projections[:, 0, :]
            part["velocity_projection"] = projections[:, 1, :]
            parts.append(part)
        out = {"step": np.zeros(0, np.int64)}
        out.update({key: np.zeros(0) for key in _SCALARS})
        out.update({key: np.zeros((0, self.num_directions)) for key in _PROJECTIONS})
        for key in out:
            out[key] = np.concatenate([out[key]] + [part[key] for part in parts])
        return out

    def close(self):
        """Flush the pending rows and stop recording (idempotent)."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        # On an exception the pending rows are dropped, as a killed run would drop them, so the
        # files always end at a chunk boundary the caller can resume from.
        if exc_type is None:
            self.close()
        else:
            self._closed = True
        return False


def _save_vector(path, vector):
    """A parameter vector as ``.npz`` in float64 (exact for every floating dtype up to
    float64, bfloat16 included, which NumPy cannot hold), written atomically."""
    array = vector.detach().to(torch.float64).cpu().numpy()
    _atomic_write(path, lambda stream: np.savez(stream, vector=array))
