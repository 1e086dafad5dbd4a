"""These tests check torch's own operations on the CPU as well as on CUDA.

By default, CPU tensors that record no autograd graph are computed by the NumPy kernels
(``numeric.kernels.CPU_TENSORS_VIA_NUMPY``); here torch operations are used unless a test
asks for that route (test_kernels_cpu_route.py tests it; it is otherwise the NumPy backend,
tested as such).
"""

from __future__ import annotations

import pytest

from numeric import kernels


@pytest.fixture(autouse=True)
def _torch_operations_on_cpu(monkeypatch):
    monkeypatch.setattr(kernels, "CPU_TENSORS_VIA_NUMPY", False)
