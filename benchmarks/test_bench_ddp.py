"""DDP on the CPU: steps per second of 2 gloo ranks (global batch S) against one process.

Both run the same script: a small conv net with BatchNorm (:class:`experiments.distributed.
SmallConvNet`, width 32, float32) on the digits, SGD with momentum, global batch 256, 20
warm-up steps then 100 timed steps; the 2-rank run under ``torch.distributed.run``
(SyncBatchNorm on the CPU, DDP all-reduce over gloo), each rank with one thread, the single
process with one and with two threads. On 2 shared cores the expected gain is small: each
rank does half the arithmetic but adds two all-reduces per BatchNorm layer and the gradient
all-reduce. The ratio is printed, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, time, torch
from experiments import distributed as ddp
threads = int(sys.argv[2])
torch.set_num_threads(threads)
context = ddp.init_distributed(device="cpu")
x, y = ddp._digit_images(torch.float32)
torch.manual_seed(0)
model = ddp.wrap_model(ddp.SmallConvNet(width=32), context)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
batches = ddp.ShardedBatches(x.shape[0], 256, context, seed=0)

def step():
    index = batches.next()
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
    optimizer.step()

for _ in range(20):
    step()
context.barrier()
start = time.perf_counter()
for _ in range(100):
    step()
context.barrier()
rate = 100 / (time.perf_counter() - start)
if context.is_main:
    with open(sys.argv[1], "w") as stream:
        json.dump({"steps_per_s": rate, "world": context.world_size}, stream)
ddp.shutdown(context)
"""


def _rate(tmp_path, name, launcher, threads):
    script = tmp_path / "ddp_rate.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([*launcher, str(script), str(out), str(threads)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads(out.read_text())["steps_per_s"]


def test_ddp_two_gloo_ranks_vs_one_process(tmp_path, record_ratio):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    two_ranks = _rate(tmp_path, "two", torchrun, 1)
    one_thread = _rate(tmp_path, "one1", [sys.executable], 1)
    two_threads = _rate(tmp_path, "one2", [sys.executable], 2)
    detail = (f"steps/s: 2 ranks {two_ranks:.3g}, 1 process 1 thread {one_thread:.3g}, "
              f"2 threads {two_threads:.3g}; global batch 256, SmallConvNet width 32")
    record_ratio("DDP CPU: 2 gloo ranks vs 1 process (1 thread)", two_ranks / one_thread,
                 detail=detail)
    record_ratio("DDP CPU: 2 gloo ranks vs 1 process (2 threads)", two_ranks / two_threads,
                 detail=detail)
