r"""Closed-form kernels of the limiting dynamics of SGD (Kunin et al. 2023), NumPy and Torch.

The formulas are generated from the SymPy theory (``ousym``) into ``numeric/_generated/`` and
evaluated through regime-uniform, NaN-free primitives (``numeric/_primitives_common.py``):
one expression for over-, under- and critically damped modes, exact at the boundary, with no
overflow for any number of steps, and finite gradients everywhere in torch.

Conventions shared by every function
------------------------------------
* **Backend by input type.** NumPy arrays and Python numbers are computed in float64 and give
  NumPy results (a ``numpy.float64`` for all-scalar input). Any torch tensor among the
  arguments selects torch: the result keeps the tensors' (promoted) floating dtype and their
  device, and is differentiable in every tensor argument. CPU tensors that record no autograd
  graph are evaluated by the NumPy kernels, in float64, on the tensors' memory (faster there;
  see ``CPU_TENSORS_VIA_NUMPY``).
* **Precision: always float64 inside.** Every kernel computes in float64, whatever the input
  dtype (float16, bfloat16, float32 or float64), the device and the route (NumPy kernels,
  torch operations, autograd or not), and rounds the result once to the input dtype. So the
  same float32 input gives the float32 rounding of the float64 value with and without
  ``requires_grad``, on the CPU and on CUDA (gradients flow through the casts). Reason: the
  closed forms cancel by up to a factor :math:`2/(1-\beta)` near critical damping (4000 at
  beta = 0.999) and take :math:`e^{-\gamma t}` of arguments up to about 700, which float32
  cannot carry to its own precision. The one exception is a device without float64 (Apple
  MPS), which computes in the input dtype.
* **Broadcasting.** All array arguments broadcast against each other (batch dimensions lead).
* **Units.** ``k`` is a number of SGD steps (a float is allowed for ``model="sde"``); the
  continuous time of the SDE is :math:`t = \eta k` inside.
* **Models.** ``model="sde"`` is the paper's underdamped Langevin theory (eq. 3);
  ``model="discrete"`` is the exact linear-Gaussian recursion of SGD with momentum on
  linear regression (docs/theory.md section 6), with ``k`` a whole number of steps.
* **Hyperparameters** are keyword-only: learning rate ``eta > 0``, momentum
  ``0 <= beta < 1``, weight decay ``lam >= 0``, batch size ``S > 0``, noise scale
  ``sigma2 >= 0`` (Assumption 5, :math:`\Sigma = \sigma^2 H`).
* **Raises** ``ValueError`` (or ``TypeError`` for non-numeric input), naming the argument, the
  value received and the valid range, for: out-of-range hyperparameters, ``k < 0``, NaN or Inf
  anywhere, an unknown ``model``, tensors on different devices, shapes that do not broadcast,
  negative ``rho`` (with how to proceed), non-integer ``k`` for ``model="discrete"``, and, for
  stationary quantities of ``model="discrete"``, modes beyond the stability edge
  :math:`\eta(\rho+\lambda) \ge 2(1+\beta)`.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np

from . import _validate
from ._validate import Batch

__all__ = [
    "damping_ratio",
    "mean_trajectory",
    "velocity_correlation",
    "stationary_variance",
    "instantaneous_speed",
    "global_displacement",
]

#: Extra memory budget of :func:`global_displacement`, in bytes.
MEMORY_BUDGET_BYTES = 256 * 2**20
#: Upper estimate of the full-size temporaries per (mode, k) element in one chunk's evaluation
#: (the lag sum's intermediates, the variance and the product).
_TEMPORARIES_PER_ELEMENT = 96
#: Elements (mode, k) per chunk of :func:`global_displacement` at most, for cache locality.
_CHUNK_ELEMENTS = 2**17


def _generated(backend: str):
    return importlib.import_module(f"numeric._generated.{backend}_kernels")


def _prepare(arguments: dict[str, Any], *, model: str | None = None,
             separate: tuple[str, ...] = ()) -> Batch:
    if model is not None:
        _validate.check_model(model)
    batch = _validate.prepare(arguments, separate=separate)
    _validate.check_hyperparameters(batch, tuple(arguments))
    if "rho" in arguments:
        _validate.check_rho(batch)
    _check_weights(batch)
    if model == "discrete" and "k" in arguments:
        _validate.check_whole_steps(batch)
    return _widened(batch)


def _widened(batch: Batch) -> Batch:
    """The precision rule (module docstring): torch values below float64 become float64 on
    their device (a differentiable cast), and the batch remembers the dtype to round the
    results to (:func:`_narrowed`)."""
    if batch.backend != "torch":
        return batch
    torch = importlib.import_module("torch")
    first = next(iter(batch.values.values()))
    if first.dtype == torch.float64 or first.device.type == "mps":  # MPS has no float64
        return batch
    values = {n: v.to(torch.float64) for n, v in batch.values.items()}
    return Batch("torch", values, batch.shape, dict(batch.extrema), result_dtype=first.dtype)


def _narrowed(result, batch: Batch):
    """``result`` (a tensor or a tuple of them) rounded once to the inputs' dtype."""
    if batch.result_dtype is None:
        return result
    if isinstance(result, tuple):
        return tuple(r.to(batch.result_dtype) for r in result)
    return result.to(batch.result_dtype)


# Elements per call of a generated NumPy kernel: a kernel is a few dozen elementwise
# operations, and on blocks this size their temporaries stay in cache (about 1.7x faster on
# 1e6 elements than one pass over whole arrays, measured in benchmarks/).
_NUMPY_BLOCK = 1 << 16

#: Evaluate torch CPU tensors with the NumPy kernels when no autograd graph is recorded.
#: With torch operations each regime's elements are split out by index computations, gathers
#: and scatters that run on one thread, and every operation is a pass over memory: 1e6 pairs
#: of ``velocity_correlation`` took 33-35 ms on one thread and 25-30 ms on two, so about
#: 20 ms of it does not shrink with more threads. The same generated formulas in NumPy, in
#: cache-sized blocks, took 20-22 ms on one core (benchmarks/test_bench_kernels.py times
#: both). ``global_displacement`` takes the same route (1.5 s against 2.4 s with torch
#: operations for 1e5 modes x 1000 k). The tensors' memory is read in place (float64; other
#: dtypes are converted) and the results are CPU tensors of the inputs' dtype. Set to
#: ``False`` to use torch operations on the CPU too. CUDA tensors, and calls that record a
#: graph for autograd, always use torch operations.
CPU_TENSORS_VIA_NUMPY = True


def _call(batch: Batch, kernel: str, names: tuple[str, ...]):
    routed = _numpy_route(batch)
    if routed is not None:
        return tuple(_tensor_result(r, batch) for r in _call(routed, kernel, names))
    args = [batch[n] for n in names]
    if batch.backend == "numpy":
        function = getattr(_generated("numpy"), kernel)
        results = _blocked_numpy(function, args, batch.shape)
        return tuple(_numpy_result(r, batch.shape) for r in results)
    torch = importlib.import_module("torch")
    function = getattr(_generated("torch"), kernel)
    return tuple(torch.broadcast_to(r, batch.shape) for r in function(*args))


def _numpy_route(batch: Batch) -> Batch | None:
    """The same arguments as NumPy float64 arrays (views of the tensors' memory where they are
    float64) if ``batch`` holds torch tensors that may be computed by the NumPy kernels: plain
    CPU tensors (no subclass, no torch.func transform) and no autograd graph to record."""
    if batch.backend != "torch" or not CPU_TENSORS_VIA_NUMPY:
        return None
    torch = importlib.import_module("torch")
    from ._primitives_torch import plain_cpu

    recording = torch.is_grad_enabled()
    tensors = batch.values.values()
    if not all(plain_cpu(t) and not (recording and t.requires_grad) for t in tensors):
        return None
    arrays = {n: t.detach().to(torch.float64).numpy() for n, t in batch.values.items()}
    return Batch("numpy", arrays, batch.shape, dict(batch.extrema))


def _blocked_numpy(function, args, shape):
    """``function(*args)`` evaluated on blocks of the leading axis of the broadcast ``shape``
    (about ``_NUMPY_BLOCK`` elements each), written into preallocated results."""
    total = math.prod(shape)
    if total <= 2 * _NUMPY_BLOCK:
        return function(*args)
    rows = max(1, _NUMPY_BLOCK // (total // shape[0]))
    if rows >= shape[0]:
        return function(*args)
    args = [a if a.size == 1 else np.broadcast_to(a, shape) for a in args]
    results = None
    for start in range(0, shape[0], rows):
        part = function(*(a if a.size == 1 else a[start:start + rows] for a in args))
        if results is None:
            results = [np.empty(shape, dtype=np.result_type(p, np.float64)) for p in part]
        for result, value in zip(results, part):
            result[start:start + rows] = value
    return results


def _numpy_result(value, shape):
    value = np.asarray(value, dtype=np.float64)
    if value.shape != tuple(shape):
        value = np.array(np.broadcast_to(value, shape))  # a writable array, not a view
    return value[()] if value.ndim == 0 else value


def _tensor_result(value, batch: Batch):
    """A NumPy result for the torch ``batch`` it was routed from: a fresh CPU tensor of the
    batch's dtype (``value`` already has the shape of the result)."""
    torch = importlib.import_module("torch")
    value = np.asarray(value, dtype=np.float64)
    if value.base is not None or not value.flags.writeable:
        value = np.array(value)  # its own memory, never an input's
    return torch.from_numpy(value).to(next(iter(batch.values.values())).dtype)


def damping_ratio(rho, *, eta, beta, lam=0.0):
    r"""Damping ratio of each mode, :math:`\zeta = \gamma/\omega = (1-\beta)/\sqrt{2\eta(1+\beta)(\rho+\lambda)}`.

    Appendix F.2 of Kunin et al. 2023: :math:`\zeta > 1` overdamped, :math:`= 1` critical,
    :math:`< 1` underdamped. Dimensionless. A mode with :math:`\rho + \lambda = 0` has no
    restoring force and :math:`\zeta = +\infty` (returned as ``inf``, with no warning).

    Shapes: the broadcast shape of ``rho, eta, beta, lam``. Raises as described in the module
    docstring.
    """
    batch = _prepare({"rho": rho, "eta": eta, "beta": beta, "lam": lam})
    with np.errstate(divide="ignore"):
        (zeta,) = _call(batch, "damping_ratio", ("rho", "eta", "beta", "lam"))
    return _narrowed(zeta, batch)


def mean_trajectory(rho, k, a0, b0, *, eta, beta, lam=0.0, model="sde"):
    r"""Mean state of one eigenmode after ``k`` steps: ``(a_k, b_k)``.

    :math:`a = \langle\theta - \mu, q\rangle` and :math:`b = \langle v, q\rangle` for the
    eigenvector :math:`q` of eigenvalue ``rho`` (eq. 5 and appendix F.2 of Kunin et al. 2023),
    starting from ``(a0, b0)``:

    * ``"sde"``: :math:`(a_k, b_k) = e^{-A_l \eta k}(a_0, b_0)` with
      :math:`e^{-A_l t} = e^{-\gamma t}[[c + \gamma s, s], [-\omega^2 s, c - \gamma s]]`,
      evaluated regime-uniformly (no NaN at critical damping, no overflow for large
      :math:`\gamma t`);
    * ``"discrete"``: :math:`(a_k, v_k) = M^k (a_0, v_0)`,
      :math:`M = [[1 - \eta h, \eta\beta], [-h, \beta]]`, :math:`h = \rho + \lambda`, with
      :math:`M^k = c_k I + s_k (M - mI)` by Cayley-Hamilton (:math:`m = \mathrm{tr}M/2`;
      :math:`c_k, s_k` entire in the discriminant; exact and stable for both signs of the
      eigenvalues, :math:`\beta = 0` included). ``k`` must be whole. Modes beyond the
      stability edge are allowed here (they grow, and may overflow to ``inf``).

    Shapes: both outputs have the broadcast shape of all arguments.
    """
    model = _validate.check_model(model)
    batch = _prepare({"rho": rho, "k": k, "a0": a0, "b0": b0, "eta": eta, "beta": beta,
                      "lam": lam}, model=model)
    names = ("rho", "k", "a0", "b0", "eta", "beta", "lam")
    if model == "discrete":
        with np.errstate(over="ignore"):
            return _narrowed(_call(batch, "discrete_mean_trajectory", names), batch)
    return _narrowed(_call(batch, "sde_mean_trajectory", names), batch)


def velocity_correlation(rho, k, *, eta, beta, lam=0.0, model="sde"):
    r"""Stationary velocity autocorrelation :math:`C(k)` at a lag of ``k`` steps, :math:`C(0) = 1`.

    :math:`\mathrm{Cov}_{ss}(b_i, b_{i+k}) = \mathrm{Var}_{ss}(b)\,C(k)` (appendix G.2 of
    Kunin et al. 2023, with the lag time :math:`\tau = \eta k` that G.2's :math:`e^{-\gamma k}`
    drops):

    * ``"sde"``: :math:`C(k) = [e^{-A_l\eta k}]_{22} = e^{-\gamma\tau}(c - \gamma s)`;
    * ``"discrete"``: :math:`C(k) = [M^k P]_{vv}/P_{vv}` with :math:`P` the stationary
      covariance of the recursion (docs/theory.md section 6); ``k`` whole. Raises if a mode is beyond
      the stability edge (there is no stationary law).

    Shapes: the broadcast shape of all arguments.
    """
    model = _validate.check_model(model)
    batch = _prepare({"rho": rho, "k": k, "eta": eta, "beta": beta, "lam": lam}, model=model)
    if model == "discrete":
        _validate.check_stable(batch)
    (correlation,) = _call(batch, f"{model}_velocity_correlation",
                           ("rho", "k", "eta", "beta", "lam"))
    return _narrowed(correlation, batch)


def _stationary(batch: Batch, model: str):
    if model == "discrete":
        _validate.check_stable(batch)
    return _call(batch, f"{model}_stationary_variance",
                 ("rho", "eta", "beta", "lam", "S", "sigma2"))


def stationary_variance(rho, *, eta, beta, lam=0.0, S, sigma2, model="sde", weights=None):
    r"""Stationary variances ``(var_a, var_v)`` of a mode's position and velocity.

    * ``"sde"`` (eq. 27 of Kunin et al. 2023):
      :math:`\mathrm{Var}_{ss}(a) = \eta\sigma^2\rho/(2S(1-\beta)h)`,
      :math:`\mathrm{Var}_{ss}(v) = \sigma^2\rho/(S(1-\beta^2))`;
    * ``"discrete"`` (docs/theory.md section 6): both times :math:`2(1+\beta)/(2(1+\beta)-\eta h)`.

    :math:`h = \rho + \lambda`. At :math:`\rho = \lambda = 0` the ratio :math:`\rho/h` takes its
    :math:`\lambda = 0` value 1. Units: ``var_a`` in squared parameter units, ``var_v`` in
    squared parameter units per step squared over :math:`\eta^2` (:math:`\delta = \eta v`).

    ``weights`` (optional, ``>= 0``, broadcasting with ``rho``): the number of modes at each
    curvature (a multiplicity, or a quadrature weight of a spectral density such as
    :class:`numeric.Spectrum`'s bulk); both variances are multiplied by it, so they are the
    summed variances of those modes.

    Shapes: the broadcast shape of all arguments. Raises for ``"discrete"`` if any mode is
    beyond the stability edge (the message says how many).
    """
    model = _validate.check_model(model)
    arguments = {"rho": rho, "eta": eta, "beta": beta, "lam": lam, "S": S, "sigma2": sigma2}
    batch = _prepare(_with_weights(arguments, weights), model=model)
    var_a, var_v = _stationary(batch, model)
    if weights is None:
        return _narrowed((var_a, var_v), batch)
    return _narrowed((_weighted(var_a, batch), _weighted(var_v, batch)), batch)


def _with_weights(arguments: dict[str, Any], weights) -> dict[str, Any]:
    return arguments if weights is None else arguments | {"weights": weights}


def _check_weights(batch: Batch) -> None:
    if "weights" in batch.values:
        low, _ = batch.bounds("weights")
        if not low >= 0:
            _validate.require(batch, "weights", _validate._values(batch, "weights") >= 0,
                              "(numbers of modes) must be >= 0")


def _weighted(value, batch: Batch):
    """``value * weights`` in the value's own type (a tensor when the batch was routed)."""
    weights = batch["weights"]
    if batch.backend == "torch" and not hasattr(value, "device"):
        value = importlib.import_module("torch").as_tensor(value, dtype=weights.dtype)
    if batch.backend == "numpy":
        return _numpy_result(np.asarray(value) * weights, batch.shape)
    weights = weights.to(value.dtype) if value.dtype != weights.dtype else weights
    return value * weights


def instantaneous_speed(rho, *, eta, beta, lam=0.0, S, sigma2, model="sde", weights=None):
    r"""Expected squared step length :math:`E\|\delta\|^2 = \eta^2\sum_l \mathrm{Var}_{ss}(v_l)` (eq. 12).

    ``rho`` holds the spectrum in its **last axis**; every argument broadcasts against
    ``rho`` and the sum runs over the last axis of the broadcast shape (so a grid of learning
    rates is ``eta=etas[:, None]``). For ``"sde"`` this is
    :math:`\eta^2\sigma^2\,\mathrm{tr}(H)/(S(1-\beta^2))`; ``"discrete"`` uses the exact
    stationary variances (docs/theory.md section 6). ``weights`` (optional, ``>= 0``, broadcasting with
    ``rho``) counts the modes at each curvature, :math:`\eta^2\sum_l w_l
    \mathrm{Var}_{ss}(v_l)` (a spectral density given as quadrature nodes and weights).

    Shapes: the broadcast shape without its last axis. Raises ``ValueError`` if ``rho`` is a
    scalar, and as :func:`stationary_variance`.
    """
    model = _validate.check_model(model)
    if np.ndim(rho) == 0:
        raise ValueError("rho must hold a spectrum in its last axis (at least 1-D), but got a "
                         f"scalar {rho!r}")
    arguments = {"rho": rho, "eta": eta, "beta": beta, "lam": lam, "S": S, "sigma2": sigma2}
    batch = _prepare(_with_weights(arguments, weights), model=model)
    _, var_v = _stationary(batch, model)
    if weights is not None:
        var_v = _weighted(var_v, batch)
    eta_b = batch["eta"]
    speed = eta_b * eta_b * var_v
    if batch.backend == "torch":
        return _narrowed(speed.sum(-1), batch)
    return _numpy_result(speed.sum(-1), batch.shape[:-1])


def global_displacement(rho, k, *, eta, beta, lam=0.0, S, sigma2, model="sde", weights=None):
    r"""Expected squared distance travelled in ``k`` steps at stationarity, :math:`E\|\Delta_k\|^2` (eq. 13).

    .. math::
        E\|\Delta_k\|^2 = \eta^2\sum_l \mathrm{Var}_{ss}(v_l)\Big[k + 2\sum_{j=1}^{k-1}(k-j)\,C_l(j)\Big]

    with :math:`C_l` the velocity autocorrelation of :func:`velocity_correlation` (lag
    :math:`\tau = \eta j`). The bracket is evaluated in closed form, :math:`O(1)` per
    (mode, k), by ``numeric._lagsum.lag_weighted_velocity_sum``; ``"discrete"`` is then
    exactly :math:`\eta^2\sum_{i,j \le k}\mathrm{Cov}(v_i, v_j)` of the SGD recursion.

    ``rho`` is a 1-D spectrum (length ``n``); ``k`` and the hyperparameters broadcast together
    to a batch shape ``B``; the result has shape ``B``. The spectrum is sorted (the sum does not
    depend on the order of the modes; in torch the gradient flows through the permutation) and
    processed in chunks of neighbouring modes, so that each chunk falls in one or two regimes
    of the closed form and the extra memory stays under about 256 MB for any ``n``.
    ``weights`` (optional, shape ``(n,)``, ``>= 0``) counts the modes at each curvature:
    the sum becomes :math:`\sum_l w_l (\dots)`, for a spectral density given as quadrature
    nodes and weights (:class:`numeric.Spectrum`).

    Raises as :func:`stationary_variance`, and ``ValueError`` if ``rho`` is not 1-D or
    ``weights`` is not of the shape of ``rho``.
    """
    model = _validate.check_model(model)
    if np.ndim(rho) != 1:
        raise ValueError(f"rho must be a 1-D spectrum, but got shape {tuple(np.shape(rho))}")
    if weights is not None and tuple(np.shape(weights)) != tuple(np.shape(rho)):
        raise ValueError(f"weights must have the shape of rho {tuple(np.shape(rho))}, but got "
                         f"shape {tuple(np.shape(weights))}")
    arguments = {"rho": rho, "k": k, "eta": eta, "beta": beta, "lam": lam, "S": S,
                 "sigma2": sigma2}
    batch = _prepare(_with_weights(arguments, weights), model=model,
                     separate=("rho", "weights"))
    if model == "discrete":
        _validate.check_stable(batch, spectrum_apart=True)
    routed = _numpy_route(batch)
    if routed is not None:
        return _narrowed(_tensor_result(_global_displacement(routed, model), batch), batch)
    return _narrowed(_global_displacement(batch, model), batch)


def _global_displacement(batch: Batch, model: str):
    from ._lagsum import lag_weighted_velocity_sum

    names = ("k", "eta", "beta", "lam", "S", "sigma2")
    batch_shape = batch.shape
    # the result sums over modes, so their order is free: sorted, each chunk of the spectrum
    # lies in one or two regimes of the lag sum, which then runs on whole arrays instead of
    # gathering and scattering each regime's elements (a gather keeps torch's autograd)
    spectrum, weights = _sorted_spectrum(batch["rho"], batch.backend, batch.values.get("weights"))
    modes = spectrum.shape[0]
    hyper = {n: _expand(batch, batch[n], batch_shape) for n in names}
    itemsize = 8 if batch.backend == "numpy" else spectrum.element_size()
    per_mode = itemsize * max(1, math.prod(batch_shape)) * _TEMPORARIES_PER_ELEMENT
    # chunks also small enough that each temporary stays cache-sized (a larger chunk is
    # slower: its fresh temporaries cost page faults and memory traffic)
    per_mode_elements = max(1, math.prod(batch_shape))
    chunk = max(1, min(modes, MEMORY_BUDGET_BYTES // per_mode,
                       _CHUNK_ELEMENTS // per_mode_elements))
    kernel = getattr(_generated(batch.backend), f"{model}_stationary_variance")

    total = None
    for start in range(0, modes, chunk):
        rho_chunk = spectrum[start:start + chunk]
        _, var_v = kernel(rho_chunk, hyper["eta"], hyper["beta"], hyper["lam"], hyper["S"],
                          hyper["sigma2"])
        if weights is not None:
            var_v = var_v * weights[start:start + chunk]
        lag_sum = lag_weighted_velocity_sum(rho_chunk, hyper["k"], eta=hyper["eta"],
                                            beta=hyper["beta"], lam=hyper["lam"], model=model)
        part = lag_sum @ var_v if var_v.ndim == 1 else (var_v * lag_sum).sum(-1)
        total = part if total is None else total + part
    eta_b = batch["eta"]
    result = eta_b * eta_b * total if total is not None else 0.0 * hyper["k"][..., 0]
    if batch.backend == "torch":
        torch = importlib.import_module("torch")
        return torch.broadcast_to(result, batch_shape)
    return _numpy_result(result, batch_shape)


def _sorted_spectrum(spectrum, backend: str, weights=None):
    """The spectrum sorted ascending, and the weights in the same order (or None)."""
    if backend == "torch":
        torch = importlib.import_module("torch")
        order = torch.argsort(spectrum.detach())
        return (spectrum.index_select(0, order),
                None if weights is None else weights.index_select(0, order))
    if weights is None:
        return np.sort(spectrum), None
    order = np.argsort(spectrum, kind="stable")
    return spectrum[order], weights[order]


def _expand(batch: Batch, value, batch_shape):
    """Add a trailing mode axis; the value keeps its own (broadcastable) shape, so per-mode
    work that does not involve ``k`` is done once per mode, not once per (mode, k)."""
    return value[..., None]
