"""Sweep throughput: four linear-regression tasks with ``--jobs 2`` against one after another.

``jobs=1`` runs the tasks in this process; ``jobs=2`` starts one ``python -m
experiments.sweep --task-index I`` subprocess per task, two at a time, each with one BLAS thread, so the
ratio includes the subprocesses' start-up (imports) that a user pays. On 2 cores the ceiling is
2; the ratio is printed, never asserted (benchmarks/conftest.py).
"""

from __future__ import annotations

import argparse
import tempfile

import pytest

from experiments import sweep

pytestmark = pytest.mark.slow

OPTIONS = ["--dataset", "digits", "--steps", "20000", "--seeds", "8", "--batch-size", "64"]


def _base_config():
    parser = argparse.ArgumentParser()
    sweep.LinregSweep().add_options(parser)
    return sweep.LinregSweep().base_config(parser.parse_args(OPTIONS))


def _runner(jobs):
    def run():
        with tempfile.TemporaryDirectory() as out:
            sweep.create_sweep(out, "linreg", _base_config(), "eta", [0.01, 0.02, 0.03, 0.04])
            statuses = sweep.run_tasks(out, jobs=jobs, log=lambda *_: None)
            assert all(status == "ran" for status in statuses.values()), statuses
    return run


def test_sweep_jobs_2_vs_sequential(compare):
    compare(_runner(2), _runner(1), name="sweep: 4 linreg tasks, --jobs 2 vs sequential",
            target=1.3, rounds=1,
            detail="digits, 20000 steps x 8 seeds per task, subprocess start-up included")
