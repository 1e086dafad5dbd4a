"""Sweeps as independent tasks, and the predicted exponent c where the prediction is exact."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import compare, sweep
from experiments.__main__ import main
from experiments.data import make_synthetic
from experiments.experiment import stability_edge
from experiments.linreg import least_squares, run_sgd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--dataset", "digits", "--steps", "300", "--seeds", "3", "--batch-size", "64"]


def _task_index(out, index):
    return main(["sweep", "--out", str(out), "--task-index", str(index), "--no-progress"])


@pytest.fixture(scope="module")
def two_task_sweep(tmp_path_factory):
    """The sweep of the issue: two --task-index invocations, then --summarize."""
    out = tmp_path_factory.mktemp("sweep")
    codes = [main(["sweep", "--out", str(out), "--vary", "eta", "--values", "0.02", "0.05",
                   "--task-index", "0", "--no-progress", *TINY]),
             _task_index(out, 1),
             main(["sweep", "--out", str(out), "--summarize"])]
    return codes, out


def test_two_tasks_and_summarize_produce_the_summary(two_task_sweep):
    codes, out = two_task_sweep
    assert codes == [0, 0, 0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["vary"] == "eta" and summary["missing"] == []
    assert [run["value"] for run in summary["runs"]] == [0.02, 0.05]
    for run in summary["runs"]:
        assert run["eta"] == run["value"] and run["config"]["steps"] == 300
        for block, keys in (("speed", ("measured", "standard_error", "predicted",
                                       "predicted_sde")),
                            ("exponent", ("fitted", "predicted", "standard_error"))):
            for key in keys:
                assert math.isfinite(run[block][key]), (block, key)
        assert run["speed"]["measured"] > 0 and run["speed"]["predicted"] > 0
        low, high = run["exponent"]["ci"]
        assert low <= run["exponent"]["fitted"] <= high
        assert "sigma2 = tr Sigma / tr H" in run["noise_model"]
        assert run["excluded_weight"] >= 0 and run["negative_weight"] >= 0
    # one shared folder, reused: both runs used the same noise scale and start point
    assert len({run["sigma2"] for run in summary["runs"]}) == 1
    assert summary["shared"]["linreg"]["sigma2"] == summary["runs"][0]["sigma2"]
    assert len(summary["comparisons"]) == 4
    assert (out / sweep.FIGURE).read_bytes().startswith(PNG_SIGNATURE)


def test_a_finished_task_is_never_rerun(two_task_sweep):
    _, out = two_task_sweep
    done = out / "tasks" / "000-eta=0.02" / "summary.json"
    before = done.stat().st_mtime_ns
    assert sweep.run_task(out, 0) == "done"
    assert sweep.run_tasks(out, jobs=1, log=lambda *_: None) == {"000-eta=0.02": "done",
                                                                 "001-eta=0.05": "done"}
    assert done.stat().st_mtime_ns == before


def test_a_killed_task_resumes_and_the_summary_lists_missing_tasks(tmp_path):
    manifest = sweep.create_sweep(tmp_path, "linreg", _base_config(), "batch-size", [32, 64])
    assert [t["config"]["batch_size"] for t in manifest["tasks"]] == [32, 64]
    # a task folder without its done marker is what a killed run leaves
    (tmp_path / "tasks" / "001-batch-size=64").mkdir(parents=True)
    assert sweep.run_task(tmp_path, 1) == "resumed"
    summary = sweep.summarize(tmp_path)
    assert summary["missing"] == ["000-batch-size=32"]
    assert [run["value"] for run in summary["runs"]] == [64]


def test_slurm_array_task_id_selects_the_task(tmp_path, monkeypatch):
    sweep.create_sweep(tmp_path, "linreg", _base_config(), "beta", [0.5, 0.8])
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert main(["sweep", "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "tasks" / "001-beta=0.8" / "done").is_file()
    assert not (tmp_path / "tasks" / "000-beta=0.5").exists()


def test_jobs_run_tasks_as_subprocesses(tmp_path):
    sweep.create_sweep(tmp_path, "linreg", _base_config(), "lam", [0.0, 0.01])
    statuses = sweep.run_tasks(tmp_path, jobs=2, log=lambda *_: None)
    assert statuses == {"000-lam=0": "ran", "001-lam=0.01": "ran"}
    summary = sweep.summarize(tmp_path)
    assert [run["lam"] for run in summary["runs"]] == [0.0, 0.01]


def test_errors_name_the_problem(tmp_path, capsys):
    sweep.create_sweep(tmp_path, "linreg", _base_config(), "eta", [0.01, 0.02])
    with pytest.raises(sweep.SweepMismatchError, match="values"):
        sweep.create_sweep(tmp_path, "linreg", _base_config(), "eta", [0.01, 0.03])
    with pytest.raises(ValueError, match=r"task index must be an integer in \[0, 1\]"):
        sweep.run_task(tmp_path, 2)
    with pytest.raises(ValueError, match="vary must be one of"):
        sweep.create_sweep(tmp_path / "x", "linreg", _base_config(), "momentum", [0.5])
    with pytest.raises(ValueError, match="distinct"):
        sweep.create_sweep(tmp_path / "y", "linreg", _base_config(), "eta", [0.1, 0.1])
    with pytest.raises(ValueError, match="no task of the sweep"):
        sweep.summarize(tmp_path)
    assert main(["sweep", "--out", str(tmp_path / "none"), "--summarize"]) == 2
    assert "create the sweep first" in capsys.readouterr().err
    assert main(["sweep", "--out", str(tmp_path / "z"), "--vary", "beta", "--values", "1.5",
                 *TINY]) == 2
    assert "beta must be in [0, 1)" in capsys.readouterr().err


def _base_config():
    import argparse

    parser = argparse.ArgumentParser()
    sweep.LinregSweep().add_options(parser)
    return sweep.LinregSweep().base_config(parser.parse_args(TINY))


def _stationary_mode_covariance(rho, *, eta, beta, noise_var):
    """The exact discrete stationary covariance of (a, v) per mode (docs/theory.md section 6)."""
    M = compare._mode_propagator(rho, eta, beta, 0.0)
    G = np.array([[eta * eta, eta], [eta, 1.0]]) * np.asarray(noise_var)[:, None, None]
    kron = np.einsum("nij,nkl->nikjl", M, M).reshape(-1, 4, 4)
    vec = np.linalg.solve(np.eye(4) - kron, G.reshape(-1, 4, 1))
    return vec.reshape(-1, 2, 2)


def test_predicted_exponent_matches_the_fitted_one_on_linear_regression():
    """Gaussian noise N(0, sigma2 H / S) on least squares: E||Delta_k||^2 from a stationary
    start is exactly the discrete eq. (13), so the exponent fitted to the predicted curve on the
    same window is what the fit of the measured seed-mean curve estimates.

    Spectrum: 4 fast modes and 12 slow ones (relaxation 260 to 2600 steps), so the window
    (lags 667-2000) holds saturated, diffusing and still-ballistic modes and c is anomalous
    (about 0.24), not a trivial 0, 1 or 2. Stationary start: a burn-in of 10 relaxation times
    of the slowest mode from (mu, 0) leaves the covariance within e^-20 of the stationary one.
    Tolerance: 4 jackknife standard errors over the 64 independent seeds (delete-one-seed
    refits of the same estimator; over 16 repetitions at 16 and 64 seeds the z-scores had
    standard deviation 0.9-1.0). The bias of fitting log of a 64-seed mean instead of log E is
    about Var/(2 n E^2) per point and cancels to first order in the slope: far below 0.05.
    """
    import numeric

    spectrum = np.concatenate([np.geomspace(1.0, 0.1, 4), np.geomspace(1e-3, 1e-4, 12)])
    data = make_synthetic(spectrum, num_samples=400, seed=0)
    problem = least_squares(data.X, data.Y)
    beta, S, sigma2, steps = 0.9, 32, 1.0, 2000
    eta = 0.1 * stability_edge(float(problem.spectrum.max()), beta)
    exact = numeric.spectrum_from_least_squares(data.X)
    kwargs = dict(eta=eta, beta=beta, S=S, noise=numeric.IsotropicNoise(sigma2))
    # a stationary start: 10 relaxation times of the slowest mode from (mu, 0)
    relaxation = float(compare.relaxation_steps(spectrum, eta=eta, beta=beta).max())
    burn_in = int(10 * relaxation)
    traj = run_sgd(problem, eta=eta, beta=beta, batch_size=S, num_steps=burn_in + steps,
                   num_seeds=64, seed=7, noise="gaussian", sigma2=sigma2,
                   displacement_from=burn_in)
    window = traj.steps > burn_in
    lags = traj.steps[window] - burn_in
    predicted = numeric.predicted_global_displacement(exact, lags, **kwargs)
    assert predicted.excluded_weight == 0
    row = sweep.exponent_comparison(lags, traj.global_sq[window], predicted.value)
    assert 0.1 < row["predicted"] < 0.5  # anomalous, as designed
    error = row["jackknife_standard_error"]
    assert 0 < error < 0.1
    assert abs(row["fitted"] - row["predicted"]) <= 4 * error, row
    # the stationary speed from the same start, eq. (12), discrete: 4 standard errors
    local = traj.local_sq[traj.steps >= burn_in].mean(0)
    speed = float(numeric.predicted_speed(exact, **kwargs))
    assert abs(local.mean() - speed) <= 4 * local.std(ddof=1) / math.sqrt(local.size)
    # and that prediction is eta^2 sum Var(v) of the exact stationary covariance, solved as a
    # 4x4 linear system per mode whose condition number, about 1 / (1 - r^2) with r the
    # spectral radius of the slowest mode's propagator, is below 1e4 here: its rounding is
    # below 1e4 * 2.2e-16 ~ 2e-12 relative, and 1e-9 leaves a factor of 500
    cov = _stationary_mode_covariance(spectrum, eta=eta, beta=beta,
                                      noise_var=sigma2 * spectrum / S)
    np.testing.assert_allclose(eta * eta * np.sum(cov[:, 1, 1]), speed, rtol=1e-9)


RESNET_TINY = ["--dataset", "digits", "--num-samples", "256", "--width", "4", "--batch-size",
               "32", "--pretrain-batch-size", "32", "--pretrain-steps", "100", "--steps", "150",
               "--checkpoint-every", "50", "--eigenpairs", "3", "--hessian-samples", "128",
               "--trace-samples", "4", "--noise-batches", "8", "--landscape-points", "3",
               "--slq-probes", "2", "--slq-steps", "6", "--dtype", "float64"]


def test_resnet18_tasks_reuse_the_shared_pretrained_point(tmp_path):
    """The wiring, on a ResNet-18 of width 4 (a few seconds): one task, run by the runner from
    the shared pretrained point, spectrum and noise, its rows collected into the summary."""
    import torch

    pytest.importorskip("experiments.resnet18")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on shared cores spin against each other
    try:
        code = main(["sweep", "--out", str(tmp_path), "--experiment", "resnet18", "--vary",
                     "eta", "--values", "0.01", "--no-progress", *RESNET_TINY])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    shared = tmp_path / "shared"
    for name in ("pretrained.pt", "spectrum.pt", "spectrum_bulk.npz", "noise.npz"):
        assert (shared / name).is_file(), name
    task = tmp_path / "tasks" / "000-eta=0.01"
    assert json.loads((task / "config.json").read_text())["pretrained"] == str(shared.resolve())
    assert not (task / "spectrum.pt").exists()  # reused, not recomputed
    (run,) = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert run["eta"] == 0.01 and run["exponent"]["window"] == pytest.approx(2 / 3)
    for value in (run["speed"]["measured"], run["speed"]["predicted"],
                  run["exponent"]["fitted"], run["exponent"]["predicted"]):
        assert math.isfinite(value)
