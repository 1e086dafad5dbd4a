"""The trajectory format: round trip, kill -9 and resume, refused resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import numeric
from numeric import TrajectoryMismatchError, TrajectoryRecorder, load_trajectory


def test_round_trip_with_a_seeds_axis(tmp_path):
    rng = np.random.default_rng(0)
    steps = np.arange(0, 50, 2)
    arrays = {"step": steps, "global_displacement_sq": rng.random((25, 4)),
              "theta_projection": rng.normal(size=(25, 4, 3))}
    directions = rng.normal(size=(3, 10))
    manifest = numeric.trajectory_manifest(
        eta=0.1, beta=0.9, lam=0.0, S=16, settings={"dataset": "toy", "sizes": (1, 2)},
        dtype="float64", directions=directions,
        axis={"name": "seeds", "size": 4, "seeds": [0, 1, 2, 3]},
        arrays=["global_displacement_sq", "theta_projection"])
    numeric.write_trajectory(tmp_path / "run", arrays, manifest=manifest, chunk_rows=7)
    assert len(list((tmp_path / "run").glob("chunk_*.npz"))) == 4
    traj = load_trajectory(tmp_path / "run")
    np.testing.assert_array_equal(traj.steps, steps)
    assert "theta_projection" not in traj._cache  # read on first access only
    np.testing.assert_array_equal(traj.theta_projection, arrays["theta_projection"])
    np.testing.assert_array_equal(traj["global_displacement_sq"], arrays["global_displacement_sq"])
    assert traj["step"] is traj.steps and "steps" in traj
    assert traj.keys() == ["step", "global_displacement_sq", "theta_projection"]
    m = traj.manifest
    assert (m["eta"], m["beta"], m["S"], m["axis"]["name"]) == (0.1, 0.9, 16, "seeds")
    assert m["settings"] == {"dataset": "toy", "sizes": [1, 2]}
    assert m["directions_sha256"] == numeric.array_digest(directions)
    assert m["versions"]["numpy"] == np.__version__ and m["format"] == 2
    with pytest.raises(KeyError, match="holds"):
        traj["nothing"]
    # the same arrays again on the same folder: the steps are already there
    with pytest.raises(ValueError, match="already holds step 48"):
        numeric.write_trajectory(tmp_path / "run", arrays, manifest=manifest)
    with pytest.raises(TrajectoryMismatchError, match="eta="):
        numeric.write_trajectory(tmp_path / "run", arrays, manifest=manifest | {"eta": 0.2})
    with pytest.raises(FileNotFoundError, match="no trajectory"):
        load_trajectory(tmp_path / "missing")


def test_truncate_rewinds_to_a_step(tmp_path):
    arrays = {"step": np.arange(1, 11), "loss": np.arange(10.0)}
    numeric.write_trajectory(tmp_path, arrays, manifest={"arrays": ["loss"]}, chunk_rows=4)
    numeric.truncate_trajectory(tmp_path, 6)
    traj = load_trajectory(tmp_path)
    assert traj.steps.tolist() == [1, 2, 3, 4, 5, 6]
    assert traj.loss.tolist() == [0.0, 1, 2, 3, 4, 5]


_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import torch, numeric

    torch.set_num_threads(1)
    out, total, pause = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 1)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        numeric.truncate_trajectory(out / "trajectory", state["step"])
    P = sum(p.numel() for p in model.parameters())
    directions = torch.randn(2, P, generator=torch.Generator().manual_seed(1),
                             dtype=torch.float64)
    recorder = numeric.TrajectoryRecorder(optimizer, directions=directions, chunk_size=5,
                                          path=out / "trajectory", settings={"S": 16})
    for step in range(recorder.step + 1, total + 1):
        generator = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
        y = torch.randn(16, 1, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        optimizer.step()
        recorder.record(loss.detach())
        if step % 5 == 0:  # the recorder has just written a chunk: checkpoint this step
            temporary = out / ".checkpoint.tmp"
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "step": step}, temporary)
            os.replace(temporary, checkpoint)
            print(step, flush=True)
            time.sleep(pause)
    recorder.close()
""")


def test_kill_9_and_resume_equals_an_uninterrupted_run_bitwise(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    run = [sys.executable, str(script)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(run + [str(tmp_path / "whole"), "40", "0"], check=True, env=env,
                   capture_output=True)
    # the run pauses 0.5 s after each checkpoint, so the kill lands mid-run
    process = subprocess.Popen(run + [str(tmp_path / "killed"), "40", "0.5"], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if int(line) >= 15:
                break
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    partial = load_trajectory(tmp_path / "killed" / "trajectory")
    assert 15 <= partial.steps[-1] < 40  # killed mid-run
    subprocess.run(run + [str(tmp_path / "killed"), "40", "0"], check=True, env=env,
                   capture_output=True)
    whole = load_trajectory(tmp_path / "whole" / "trajectory")
    resumed = load_trajectory(tmp_path / "killed" / "trajectory")
    assert whole.steps.tolist() == list(range(1, 41))
    for key in whole.keys():
        np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)  # bitwise


def _recorder(path, model, *, lr=0.05, directions=None, settings=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return TrajectoryRecorder(optimizer, path=path, directions=directions, settings=settings)


def test_resume_with_changed_dtype_directions_or_eta_is_refused(tmp_path):
    model = torch.nn.Linear(3, 2).double()
    directions = torch.randn(2, 8, dtype=torch.float64)
    _recorder(tmp_path, model, directions=directions, settings={"S": 4}).close()
    # the same settings resume
    _recorder(tmp_path, model, directions=directions, settings={"S": 4}).close()
    with pytest.raises(TrajectoryMismatchError, match="dtype='float64'.*dtype='float32'"):
        _recorder(tmp_path, torch.nn.Linear(3, 2).float(), directions=directions,
                  settings={"S": 4})
    with pytest.raises(TrajectoryMismatchError, match="directions_sha256"):
        _recorder(tmp_path, model, directions=directions.flip(0), settings={"S": 4})
    with pytest.raises(TrajectoryMismatchError, match="eta=0.05.*eta=0.1"):
        _recorder(tmp_path, model, lr=0.1, directions=directions, settings={"S": 4})
    with pytest.raises(TrajectoryMismatchError, match="settings"):
        _recorder(tmp_path, model, directions=directions, settings={"S": 8})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["S"] == 4 and manifest["kind"] == "recorder"


def test_earlier_recorder_format_is_read_but_not_resumed(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(
        {"format": 1, "num_params": 8, "num_directions": 1, "every": 1, "dtype": "float64"}))
    chunk = {"step": np.arange(1, 4), "local_displacement_sq": np.ones(3),
             "global_displacement_sq": np.ones(3), "loss": np.ones(3),
             "theta_projection": np.ones((3, 1)), "velocity_projection": np.ones((3, 1))}
    np.savez(tmp_path / "chunk_000000000001.npz", **chunk)
    traj = load_trajectory(tmp_path)
    assert traj.steps.tolist() == [1, 2, 3] and traj.velocity_projection.shape == (3, 1)
    with pytest.raises(TrajectoryMismatchError, match="earlier format"):
        _recorder(tmp_path, torch.nn.Linear(3, 2).double())
