"""numeric: fast kernels for the limiting dynamics of SGD, and the instruments to measure it.

Array convention for every public function: arguments broadcast against each other; batch
dimensions lead and matrix dimensions trail; the dtype and device of tensor inputs are kept
(NumPy arrays and Python floats are computed in float64). This package never imports sympy.

Precision rule of the closed-form kernels (``numeric.kernels``): they always compute in
float64, whatever the input dtype (float16, bfloat16, float32, float64), the device and the
route (NumPy kernels for CPU tensors without an autograd graph, torch operations with one or
on CUDA), and round the result once to the input dtype; gradients flow through the casts. The
same float32 input therefore gives the float32 rounding of the float64 value, to one ulp, with
or without ``requires_grad`` and on any device. Reason: the closed forms cancel by up to a
factor 2/(1 - beta) near critical damping, more than float32 can carry. Only a device without
float64 (Apple MPS) computes in the input dtype.
"""

from __future__ import annotations

__all__: list[str] = []

# --- closed-form kernels (generated from ousym) ---------------------------------------------
from .kernels import damping_ratio as damping_ratio
from .kernels import global_displacement as global_displacement
from .kernels import instantaneous_speed as instantaneous_speed
from .kernels import mean_trajectory as mean_trajectory
from .kernels import stationary_variance as stationary_variance
from .kernels import velocity_correlation as velocity_correlation

__all__ += [
    "damping_ratio", "mean_trajectory", "velocity_correlation", "stationary_variance",
    "instantaneous_speed", "global_displacement",
]

# --- Hessian eigenpairs, trace (torch-based: loaded on first use, see __getattr__) -------
_TORCH_MODULES = {
    "._hessian": ["HessianEigenpairs", "TraceEstimate", "hessian_eigenpairs",
                  "hessian_vector_product", "hutchinson_trace", "linear_regression_eigenpairs",
                  "linear_regression_hessian", "power_iteration_eigenpairs"],
    "._recorder": ["TrajectoryRecorder"],
    "._trajectory": ["Trajectory", "TrajectoryMismatchError", "TrajectoryWriter",
                     "array_digest", "load_trajectory", "trajectory_manifest",
                     "truncate_trajectory", "write_trajectory"],
    # partial spectra and the predictions from them (torch only inside the builders)
    "._spectrum": ["Spectrum", "LanczosQuadrature", "IsotropicNoise", "PerModeNoise",
                   "Prediction", "stochastic_lanczos_quadrature", "spectrum_from_model",
                   "spectrum_from_least_squares", "predicted_speed",
                   "predicted_global_displacement", "predicted_exponent"],
}
__all__ += [name for names in _TORCH_MODULES.values() for name in names]

# --- trajectory recorder and estimators ----------------------------------------------------
from ._estimators import PowerLawFit as PowerLawFit
from ._estimators import autocorrelation as autocorrelation
from ._estimators import dominant_frequency as dominant_frequency
from ._estimators import exponent_vs_window as exponent_vs_window
from ._estimators import fit_power_law as fit_power_law
from ._estimators import oscillation_frequency as oscillation_frequency
from ._noise import NoiseFit as NoiseFit
from ._noise import gradient_noise_projection as gradient_noise_projection
from ._noise import linear_regression_noise_covariance as linear_regression_noise_covariance
from ._noise import noise_scale_fit as noise_scale_fit

__all__ += [
    "NoiseFit", "PowerLawFit", "autocorrelation", "dominant_frequency",
    "exponent_vs_window", "fit_power_law", "gradient_noise_projection",
    "linear_regression_noise_covariance", "noise_scale_fit",
    "oscillation_frequency",
]

# --- general Ornstein-Uhlenbeck numerics ---------------------------------------------------
from ._ou import OUDecomposition as OUDecomposition
from ._ou import ou_decomposition as ou_decomposition
from ._ou import ou_lag_covariance as ou_lag_covariance
from ._ou import ou_modified_loss as ou_modified_loss
from ._ou import ou_stationary_covariance as ou_stationary_covariance
from ._ou import sample_ou as sample_ou

__all__ += ["OUDecomposition", "ou_decomposition", "ou_lag_covariance", "ou_modified_loss",
            "ou_stationary_covariance", "sample_ou"]

# --- real minibatch noise on least squares: exact stationary second moments ----------------
from ._minibatch import MinibatchMoments as MinibatchMoments
from ._minibatch import minibatch_divergence_edge as minibatch_divergence_edge
from ._minibatch import minibatch_moments as minibatch_moments

__all__ += ["MinibatchMoments", "minibatch_moments", "minibatch_divergence_edge"]


_LAZY = {name: module for module, names in _TORCH_MODULES.items() for name in names}


def __getattr__(name):
    # torch is an optional extra: the closed-form kernels, estimators and OU numerics import
    # without it, and the torch-only instruments load (and import torch) on first access.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'numeric' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
