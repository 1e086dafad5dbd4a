"""Test-suite settings: float64 by default, fixed seeds, a `gpu` skip when CUDA is absent."""

from __future__ import annotations

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the torch extra is optional for the symbolic layer
    torch = None


@pytest.fixture(autouse=True)
def _float64_and_seed():
    if torch is not None:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(0)
        yield
        torch.set_default_dtype(previous)
    else:
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(20230107)


def pytest_collection_modifyitems(config, items):
    cuda = torch is not None and torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)
