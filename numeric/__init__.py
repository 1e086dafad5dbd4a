"""numeric: fast kernels for the limiting dynamics of SGD, and the instruments to measure it.

Array convention for every public function: arguments broadcast against each other; batch
dimensions lead and matrix dimensions trail; the dtype and device of tensor inputs are kept
(NumPy arrays and Python floats are computed in float64). This package never imports sympy.
"""

from __future__ import annotations

__all__: list[str] = []

# --- closed-form kernels (generated from ousym) ---------------------------------------------

# --- Hessian eigenpairs, trace -------------------------------------------------------------

# --- trajectory recorder and estimators ----------------------------------------------------

# --- general Ornstein-Uhlenbeck numerics ---------------------------------------------------
