"""The ResNet-18 limiting-dynamics experiment against the theory, and kill-and-resume.

A tiny configuration (digits, a ResNet-18 of width 8, batch 32, a few hundred resumed steps,
top-5 eigenpairs) run once per module; every assertion is something the theory predicts and a
wrong pipeline would fail. The longer version is marked ``slow``, the CUDA path ``gpu``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.report import COMPARISON_KEYS, to_jsonable
from experiments.resnet18 import ResNetConfig, load_run_trajectory, run_resnet18
from experiments.resnet18_figures import FIGURES

TINY = dict(dataset="digits", num_samples=512, width=8, batch_size=32, pretrain_batch_size=32,
            pretrain_steps=600, pretrain_eta=0.05, pretrain_final_eta=0.01, eta=0.01, lam=1e-4,
            pretrain_lam=1e-4, steps=400, checkpoint_every=50, eigenpairs=5,
            hessian_samples=256, trace_samples=10, noise_batches=64, landscape_points=5,
            slq_probes=2, slq_steps=8, dtype="float64")
SNAPSHOTS = (0, 50, 175, 400)
REPO = Path(__file__).resolve().parents[2]


def _cli_args(config: dict) -> list:
    names = {"num_samples": "--num-samples", "pretrain_batch_size": "--pretrain-batch-size"}
    args = []
    for key, value in config.items():
        args += [names.get(key, "--" + key.replace("_", "-")), str(value)]
    return args


@pytest.fixture(scope="module")
def one_thread_module():
    # Two OpenMP threads on a loaded 2-core machine spin against each other (a ResNet step
    # measured 5x slower); one thread is as fast, and the subprocesses below use one too, so
    # their arithmetic (and hence the trajectories) is the same as this process's.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread_module):
    out = tmp_path_factory.mktemp("resnet18-tiny")
    config = ResNetConfig(**TINY, snapshot_steps=SNAPSHOTS)
    summary = run_resnet18(config, out, progress=False)
    return config, out, summary


def _row(summary, prefix):
    rows = [row for row in summary["comparisons"] if row["name"].startswith(prefix)]
    assert len(rows) == 1, prefix
    return rows[0]


def test_summary_has_the_linear_regression_row_schema_and_figures(tiny_run):
    _, out, _ = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    for key in ("settings", "seeds", "versions", "comparisons", "figures", "spectrum", "noise",
                "timings_s"):
        assert key in summary
    for row in summary["comparisons"]:
        assert set(COMPARISON_KEYS) <= set(row)
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eigenpairs_are_sorted_with_small_residuals(tiny_run):
    config, _, summary = tiny_run
    rho = np.asarray(summary["spectrum"]["eigenvalues"])
    assert np.all(np.diff(rho) <= 0) and rho[-1] > 0
    # the solver's own stopping rule: every residual ||Hq - rho q|| / rho_1 <= eigen_tol
    assert summary["spectrum"]["converged"]
    assert max(summary["spectrum"]["residuals"]) <= config.eigen_tol
    # the top-k eigenvalues cannot exceed the (Hutchinson) trace by more than its error bar
    assert rho.sum() <= summary["spectrum"]["trace"] + 4 * summary["spectrum"]["trace_stderr"]


def test_speed_matches_eq12_with_the_measured_noise_trace(tiny_run):
    """E||delta||^2 = eta^2 T F / (1 - beta^2) with T = E||g_B - g||^2 measured at theta*.

    The standard error combines the batch-means error of the measured mean (10 blocks), the
    error of T (32 independent pairs) and the bulk's discrete-factor range; 4 standard errors
    is exceeded with probability ~0.3% by a t-distribution with 9 degrees of freedom (the
    fewest behind any part of the error). A missing 1/(1 - beta^2) would be a factor 5.3 off.
    """
    _, _, summary = tiny_run
    row = _row(summary, "speed E||delta||^2")
    assert abs(row["z_score"]) < 4, row
    assert row["standard_error"] < 0.5 * row["predicted"]  # the check has power


def test_speed_is_stationary_over_the_window(tiny_run):
    """Near-constant instantaneous speed: the mean of ||delta_k||^2 over the second half of
    the window equals the first half's within 4 standard errors (batch means, 5 blocks each;
    P(|t_4| > 4) = 1.6%, and the combined error has more degrees of freedom than that)."""
    _, _, summary = tiny_run
    row = _row(summary, "speed drift")
    assert abs(row["z_score"]) < 4, row
    cv = summary["measurements"]["speed_cv"]
    # per-step ||delta||^2 of a Gaussian velocity has CV sqrt(2 tr C^2) / tr C <= sqrt(2)
    assert 0 < cv < math.sqrt(2)


def test_global_displacement_grows_as_a_power_law_with_c_between_0_and_2(tiny_run):
    _, _, summary = tiny_run
    for prefix in ("exponent c of ||Delta_k||^2 from theta*",
                   "exponent c of ||Delta_k||^2 from the window start"):
        row = _row(summary, prefix)
        assert 0 < row["details"]["ci_low"] <= row["measured"] <= row["details"]["ci_high"] < 2
    # eq. 13 over the top-k + SLQ spectrum: a stationary OU displacement grows at most
    # ballistically, c in [0, 2] (reported against the measurement, not asserted equal)
    predicted = _row(summary, "exponent c of ||Delta_k||^2 from theta*")["predicted"]
    assert 0 <= predicted <= 2


def test_recorder_projections_match_saved_parameters(tiny_run):
    """<theta_k - theta*, q_l> from the recorder (products in the model's dtype, positions
    accumulated from eta <v_k, q_l> between anchors) against a direct projection of the saved
    parameters.

    Bound: an inner product of P terms errs by at most P u ||x|| ||q|| in any summation order
    (Higham, Thm 3.1; ||q|| = 1), and each accumulated step adds the rounding of one update,
    u ||theta_k|| per step over the recorder's block (at most 3 steps here). The tiny run is in
    float64 (u = 2^-53) so that this worst-case bound is far below the projections: in
    float32 it would be about a third of them.
    """
    config, out, _ = tiny_run
    trajectory = load_run_trajectory(out)
    spectrum = torch.load(out / "spectrum.pt", weights_only=True)
    q = spectrum["eigenvectors"].double()
    start = torch.load(out / "snapshots" / "step_0.pt", weights_only=True).double()
    u = 2.0 ** -53
    for step in SNAPSHOTS[1:]:
        theta = torch.load(out / "snapshots" / f"step_{step}.pt", weights_only=True).double()
        direct = (q @ (theta - start)).numpy()
        recorded = trajectory["theta_projection"][trajectory["step"] == step][0]
        bound = q.shape[1] * u * float((theta - start).norm()) + 3 * u * float(theta.norm())
        assert np.max(np.abs(recorded - direct)) <= bound, (step, recorded, direct, bound)
        assert np.max(np.abs(direct)) > 10 * bound  # the check is not vacuous


def test_scale_invariant_weights_report_angular_beside_raw_displacement(tiny_run):
    _, out, summary = tiny_run
    trajectory = load_run_trajectory(out)
    assert trajectory["layer_norms"].shape == (TINY["steps"], 20)
    assert np.all(trajectory["angular_sq"] > 0)
    for prefix in ("exponent c of the angular", "exponent c of the raw"):
        assert math.isfinite(_row(summary, prefix)["measured"])


def test_kill_and_resume_reproduces_the_trajectory_bitwise(tiny_run, tmp_path):
    """kill -9 the command-line run in the middle of the resumed phase, restart it with
    --resume, and compare every recorded array with the uninterrupted run, bit for bit. The
    run reuses the tiny run's pretrained point, spectrum and noise (--pretrained), as sweeps
    do."""
    _, reference, _ = tiny_run
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "experiments", "resnet18", *_cli_args(TINY),
               "--pretrained", str(reference), "--device", "cpu", "--out", str(out),
               "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    chunk = out / "trajectory" / f"chunk_{101:012d}.npz"
    deadline = time.monotonic() + 600
    while not chunk.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    time.sleep(0.3)  # somewhere between two checkpoints
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists()
    assert not (out / "spectrum.pt").exists()  # reused from the pretrained run
    resumed = subprocess.run(command + ["--resume"], cwd=REPO, env=env, capture_output=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    expected, got = load_run_trajectory(reference), load_run_trajectory(out)
    assert set(expected) == set(got)
    for key in expected:
        assert np.array_equal(expected[key], got[key], equal_nan=True), key


def test_resuming_a_finished_run_recomputes_no_phase(tiny_run):
    config, out, summary = tiny_run
    files = [out / name for name in ("pretrained.pt", "spectrum.pt", "spectrum_bulk.npz",
                                     "noise.npz", "landscape.npz")]
    files += sorted((out / "trajectory").glob("chunk_*.npz"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = run_resnet18(config, out, resume=True, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert to_jsonable(again["comparisons"]) == to_jsonable(summary["comparisons"])


def test_resume_refuses_other_settings(tiny_run):
    _, out, _ = tiny_run
    with pytest.raises(ValueError, match="pass --resume"):
        run_resnet18(ResNetConfig(**TINY, snapshot_steps=SNAPSHOTS), out, progress=False)
    with pytest.raises(ValueError, match="eta=0.02"):
        run_resnet18(ResNetConfig(**{**TINY, "eta": 0.02}, snapshot_steps=SNAPSHOTS), out,
                     resume=True, progress=False)


@pytest.mark.slow
def test_default_configuration_keeps_the_theory(tmp_path, one_thread_module):
    """The CPU default (digits, width 16, 1200 + 1500 steps; about 4 minutes on two cores):
    the same checks as the tiny run, on a longer window. Longer pretraining is not "more of
    the same": a network that interpolates its training set (train loss ~1e-5, e.g. 4000
    pretraining steps of the tiny model on all digits) has bursty noise and a drifting, nearly
    ballistic displacement, outside the stationary regime the theory describes."""
    summary = run_resnet18(ResNetConfig(), tmp_path, progress=False)
    assert abs(_row(summary, "speed E||delta||^2")["z_score"]) < 4
    assert abs(_row(summary, "speed drift")["z_score"]) < 4
    row = _row(summary, "exponent c of ||Delta_k||^2 from theta*")
    assert 0 < row["details"]["ci_low"] and row["details"]["ci_high"] < 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_amp_keeps_device_and_theory(tmp_path):
    config = ResNetConfig(**{**TINY, "device": "cuda", "amp": True})
    summary = run_resnet18(config, tmp_path, progress=False)
    assert summary["settings"]["device"] == "cuda"
    assert abs(_row(summary, "speed E||delta||^2")["z_score"]) < 4
