"""Printers for generated kernels: SymPy's NumPy and Torch printers, made batch- and NaN-safe.

The stock printers are tables on a class; these subclasses change exactly three things:

* the regime-uniform primitives of :mod:`ousym.uniform` print as calls into the hand-written
  numeric runtime (``_prim.damped_cosh(...)``), imported by the generated module;
* ``Piecewise`` and matrices are refused: the stock ``Piecewise`` (``numpy.select`` /
  nested ``torch.where``) evaluates every branch and is not NaN-safe, and the stock Matrix
  printing does not batch (docs/theory.md section 4). Kernels are scalar expressions that broadcast;
* numeric constants print as Python float literals (17 significant digits), which both
  backends accept and which keep the dtype of the array arguments (``torch.sqrt(2)`` would
  fail on a Python int, ``numpy.float64`` would upcast float32 tensors).
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pytorch import TorchPrinter

from ..uniform import UniformPrimitive

__all__ = ["KernelPrinterMixin", "NumPyKernelPrinter", "TorchKernelPrinter", "PRINTERS"]

#: The name under which a generated module imports the backend's primitive runtime.
PRIMITIVE_MODULE_ALIAS = "_prim"


class KernelPrinterMixin:
    """Shared printing rules; ``symbol_names`` maps argument symbols to Python names."""

    #: import lines the generated module needs (besides the primitive runtime)
    module_imports: tuple[str, ...] = ()
    #: the numeric module holding this backend's primitives, relative to numeric/_generated
    primitive_module: str = ""

    def __init__(self, settings=None, *, symbol_names=None):
        super().__init__(settings)
        self.symbol_names = dict(symbol_names or {})

    def _print(self, expr, **kwargs):
        if isinstance(expr, sp.Expr) and expr.is_number and not isinstance(expr, sp.Integer):
            value = float(sp.N(expr, 30))
            return f"({value!r})" if value < 0 else repr(value)
        if isinstance(expr, UniformPrimitive):  # SymPy's dispatch skips Function subclasses' bases
            return self._print_UniformPrimitive(expr)
        return super()._print(expr, **kwargs)

    def _print_Symbol(self, expr):
        return self.symbol_names.get(expr, expr.name)

    def _print_UniformPrimitive(self, expr: UniformPrimitive):
        args = ", ".join(self._print(arg) for arg in expr.args)
        return f"{PRIMITIVE_MODULE_ALIAS}.{expr.numeric_name}({args})"

    def _print_Piecewise(self, expr):
        raise TypeError(
            "refusing to print a Piecewise: write it with a regime-uniform primitive from "
            "ousym.uniform (the stock printing evaluates every branch and is not NaN-safe)"
        )

    def _print_MatrixBase(self, expr):
        raise TypeError("refusing to print a matrix: give each entry as its own kernel output")

    _print_ImmutableDenseMatrix = _print_MatrixBase
    _print_MutableDenseMatrix = _print_MatrixBase


class NumPyKernelPrinter(KernelPrinterMixin, NumPyPrinter):
    """NumPy backend: float64 arrays (and 0-d arrays for scalars)."""

    module_imports = ("import numpy",)
    primitive_module = "_primitives_numpy"
    backend = "numpy"


class TorchKernelPrinter(KernelPrinterMixin, TorchPrinter):
    """Torch backend: differentiable, dtype and device of the argument tensors kept."""

    module_imports = ("import torch",)
    primitive_module = "_primitives_torch"
    backend = "torch"


#: backend name -> printer class
PRINTERS = {"numpy": NumPyKernelPrinter, "torch": TorchKernelPrinter}
