"""Benchmark harness: every figure is a ratio against a baseline timed in the same process.

These machines are noisy, so absolute times mean little; a ratio measured with candidate and
baseline interleaved in one process is stable. Benchmarks never fail on time: they record the
ratio and the target, and `make bench` prints the table (also written to
``runs/bench/ratios.md`` for the README).

Two fixtures:

``compare(candidate, baseline, name=..., target=...)``
    times both callables, interleaved, ``rounds`` times each, and records
    ``speedup = median(baseline) * baseline_scale / median(candidate)``. ``baseline_scale``
    extrapolates a baseline run on a subset (e.g. an O(k) loop timed on 1% of the work).
    The candidate is also run through pytest-benchmark so its statistics show in its table.

``record_ratio(name, value, target=..., detail=...)``
    records a ratio that is not a time (e.g. Hessian-vector products saved).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

_RATIOS: list[dict] = []


def _median_time(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture
def record_ratio():
    def _record(name, value, *, target=None, detail=""):
        met = None if target is None else bool(value >= target)
        _RATIOS.append({"name": name, "ratio": float(value), "target": target, "met": met,
                        "detail": detail})
        return value

    return _record


@pytest.fixture
def compare(benchmark, record_ratio):
    def _compare(candidate, baseline, *, name, target=None, rounds=5, baseline_rounds=None,
                 baseline_scale=1.0, detail=""):
        candidate()  # warm-up: imports, caches, allocator
        baseline()
        cand_times, base_times = [], []
        for _ in range(rounds):
            cand_times.append(_median_time(candidate, 1))
            base_times.append(_median_time(baseline, 1) if baseline_rounds is None else None)
        if baseline_rounds is not None:
            base_times = [_median_time(baseline, 1) for _ in range(baseline_rounds)]
        t_cand = statistics.median(cand_times)
        t_base = statistics.median(base_times) * baseline_scale
        benchmark.pedantic(candidate, rounds=rounds, iterations=1)
        text = f"candidate {t_cand * 1e3:.3g} ms, baseline {t_base * 1e3:.3g} ms"
        if baseline_scale != 1.0:
            text += f" (extrapolated x{baseline_scale:g})"
        return record_ratio(name, t_base / t_cand, target=target,
                            detail=(detail + "; " if detail else "") + text)

    return _compare


def pytest_terminal_summary(terminalreporter):
    if not _RATIOS:
        return
    lines = ["| benchmark | ratio | target | met | detail |", "|---|---|---|---|---|"]
    for r in _RATIOS:
        target = "" if r["target"] is None else f">= {r['target']:g}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        lines.append(f"| {r['name']} | {r['ratio']:.3g} | {target} | {met} | {r['detail']} |")
    terminalreporter.write_sep("=", "ratios against same-run baselines (higher is better)")
    for line in lines:
        terminalreporter.write_line(line)
    out = Path("runs/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ratios.md").write_text("\n".join(lines) + "\n")
    (out / "ratios.json").write_text(json.dumps(_RATIOS, indent=2))
