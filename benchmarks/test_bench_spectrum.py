"""Stochastic Lanczos quadrature on ResNet-18 (8x8 digits): 30 probes x 50 Lanczos steps.

The operator is the one of ``benchmarks/test_bench_hessian.py`` (eval mode, one fixed batch of
512 unaugmented images, a network after 20 SGD steps). The figure reported is the wall time
of the whole bulk estimate (1500 Hessian-vector products, with full reorthogonalisation of
each probe's 50 Lanczos vectors) over the wall time of one full-data gradient evaluation
(forward and backward on the same batch, eval mode) timed in the same process: the cost of
the spectrum in units of gradient evaluations. The number of HVPs is printed beside it, and
the wall time per HVP over the gradient's (about 2-4 for double backward).

Runs on CUDA when present (else the CPU, where it takes many minutes: 1500 products of about
0.4-3 s each); memory: 51 model-sized vectors (2.3 GB in float32) for the Lanczos basis.
Measured on a loaded two-core CPU with ``OUSYM_SLQ_BENCH=2,3`` (6 HVPs): 2.1 gradient
evaluations per HVP, so the full 30 x 50 run costs about 3200 gradient evaluations there.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from numeric import stochastic_lanczos_quadrature
from numeric._hessian import _HessianOperator, _eval_mode

pytest.importorskip("torchvision")
sys.path.insert(0, str(Path(__file__).parent))
from test_bench_hessian import _resnet_on_digits  # noqa: E402  (same model and batch)

# OUSYM_SLQ_BENCH="probes,steps" shrinks the run (a quick check of the code path on a CPU)
PROBES, STEPS = (int(x) for x in os.environ.get("OUSYM_SLQ_BENCH", "30,50").split(","))


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.slow
def test_resnet18_slq_vs_one_gradient(benchmark, record_ratio):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, batches = _resnet_on_digits(device)
    loss = torch.nn.functional.cross_entropy
    operator = _HessianOperator(model, loss, batches)

    def gradient():
        with _eval_mode(model):
            model.zero_grad(set_to_none=True)
            for inputs, targets in batches:
                loss(model(inputs), targets).backward()
        _synchronize(device)

    gradient()  # warm-up
    gradient_times = []
    for _ in range(5):
        start = time.perf_counter()
        gradient()
        gradient_times.append(time.perf_counter() - start)
    gradient_time = float(np.median(gradient_times))

    timing = {}

    def slq():
        start = time.perf_counter()
        with _eval_mode(model):
            result = stochastic_lanczos_quadrature(
                operator.matmul, operator.num_params, num_probes=PROBES, lanczos_steps=STEPS,
                dtype=operator.dtype, device=device, seed=0)
        _synchronize(device)
        timing["slq"] = time.perf_counter() - start
        return result

    result = benchmark.pedantic(slq, rounds=1, iterations=1)
    hvps = result.num_products
    assert hvps == PROBES * STEPS
    assert np.isclose(result.weights.sum(), operator.num_params, rtol=1e-6)
    per_hvp = timing["slq"] / hvps
    detail = (f"{hvps} HVPs in {timing['slq']:.1f} s ({per_hvp * 1e3:.1f} ms each), one "
              f"gradient {gradient_time * 1e3:.1f} ms, P = {operator.num_params}, device "
              f"{device.type}; nodes in [{result.nodes.min():.3g}, {result.nodes.max():.3g}]")
    print(detail)
    ratio = record_ratio(f"SLQ {PROBES}x{STEPS} on ResNet-18: wall time / one full-data "
                         "gradient (a cost: lower is better)", timing["slq"] / gradient_time,
                         detail=detail)
    per = record_ratio("SLQ on ResNet-18: wall time per HVP / one full-data gradient (a cost)",
                       per_hvp / gradient_time, detail=detail)
    print(f"ratio SLQ / gradient {ratio:.4g}; per HVP / gradient {per:.3g}")
