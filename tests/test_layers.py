"""The layers stay apart: numeric never imports sympy; ousym never imports numpy or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    code = (f"import sys\n{statement}\n"
            f"print(','.join(m for m in {modules!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [m for m in result.stdout.strip().split(",") if m]


def test_numeric_neither_imports_nor_needs_sympy():
    # one interpreter (importing torch is the slow part): after the import, and after running
    # the kernels, sympy is still absent
    statement = ("import numeric\n"
                 "assert 'sympy' not in sys.modules, 'imported by import numeric'\n"
                 "numeric.velocity_correlation(1.0, 3.0, eta=0.1, beta=0.9)\n"
                 "numeric.global_displacement([1.0, 2.0], 3.0, eta=0.1, beta=0.9, S=1, sigma2=1)")
    assert _imported_after(statement, ("sympy",)) == []


@pytest.mark.parametrize("statement", ["import ousym", "import ousym.uniform"])
def test_import_ousym_does_not_import_numpy_or_torch(statement):
    assert _imported_after(statement, ("numpy", "torch")) == []


def test_numeric_imports_without_torch_until_a_torch_instrument_is_used():
    # torch is an optional extra: the NumPy kernels, estimators and OU numerics must not pull
    # it in; the Hessian and recorder instruments load it on first access
    statement = ("import numeric\n"
                 "numeric.velocity_correlation(1.0, 3.0, eta=0.1, beta=0.9)\n"
                 "numeric.ou_stationary_covariance([[1.0]], [[1.0]])\n"
                 "assert 'torch' not in sys.modules, 'torch imported by the numpy paths'\n"
                 "numeric.hessian_eigenpairs\n")
    assert _imported_after(statement, ("torch",)) == ["torch"]
