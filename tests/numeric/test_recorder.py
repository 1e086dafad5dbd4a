"""Trajectory recorder against a hand-written SGD-with-momentum loop (docs/theory.md section 1),
and its chunked, atomic, resumable files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from float_bounds import EPS, gamma
from numeric import TrajectoryRecorder, load_trajectory


def make_problem(seed=0):
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    batches = [(torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator))
               for _ in range(4)]
    return model, batches


def loss_of(model, batch):
    inputs, targets = batch
    return ((model(inputs) - targets) ** 2).mean()


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def hand_written_run(model, batches, steps, groups, directions, reference):
    """Eq. 2 written out: v <- beta v - g - lam theta; theta <- theta + eta v (v_0 = 0), per
    group (eta, beta, lam); returns the recorded quantities at every step."""
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    velocity = [torch.zeros_like(p) for p in params]
    start = flat(params).detach().clone()
    rows = []
    for k in range(1, steps + 1):
        inputs, targets = batches[(k - 1) % len(batches)]
        outputs = torch.func.functional_call(model, dict(zip(names, params)), (inputs,))
        loss = ((outputs - targets) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        previous = flat(params).detach().clone()
        new_params = []
        for index, (p, g) in enumerate(zip(params, grads)):
            eta, beta, lam = groups[index]
            velocity[index] = beta * velocity[index] - g - lam * p.detach()
            new_params.append((p.detach() + eta * velocity[index]).requires_grad_(True))
        params = new_params
        theta = flat(params).detach()
        v = flat(velocity)
        rows.append({"step": k, "local_displacement_sq": float(((theta - previous) ** 2).sum()),
                     "global_displacement_sq": float(((theta - start) ** 2).sum()),
                     "loss": float(loss.detach()),
                     "theta_projection": (directions @ (theta - reference)).numpy(),
                     "velocity_projection": (directions @ v).numpy()})
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def run_steps(model, optimizer, recorder, batches, first, last, checkpoints=None, fail_at=None):
    for k in range(first, last + 1):
        if k == fail_at:
            raise RuntimeError("simulated kill")
        optimizer.zero_grad()
        loss = loss_of(model, batches[k % len(batches)])
        loss.backward()
        optimizer.step()
        recorder.record(loss=loss.detach())
        if checkpoints is not None:
            checkpoints[k] = (copy.deepcopy(model.state_dict()),
                              copy.deepcopy(optimizer.state_dict()))


def test_recorder_matches_hand_written_loop():
    model, batches = make_problem()
    num_params = sum(p.numel() for p in model.parameters())
    directions = torch.randn(4, num_params)
    reference = torch.randn(num_params)
    eta, beta, lam = 0.05, 0.9, 1e-2
    expected = hand_written_run(model, batches, 25, [(eta, beta, lam)] * 4, directions, reference)

    optimizer = torch.optim.SGD(model.parameters(), lr=eta, momentum=beta, weight_decay=lam)
    # blocks of 3 projections straddle chunks of 7 rows: a flush projects a partial block
    with TrajectoryRecorder(optimizer, directions=directions, reference=reference,
                            chunk_size=7, projection_block=3) as recorder:
        run_steps(model, optimizer, recorder, batches, 0, 24)
    record = recorder.trajectory()
    np.testing.assert_array_equal(record["step"], expected["step"])
    # float64 rounding: PyTorch and eq. 2 order the same operations differently, so the
    # iterates differ by a few ulps of |theta| per step, carried along by the training map
    # over 25 steps. No a-priori bound below 1e-10 follows for a nonlinear net (the map's
    # Lipschitz constant compounds), so the tolerance is 1e-10 of each record's scale:
    # still 1e5 times the differences seen (~1e-15), and a convention error is O(1)
    for key in expected:
        if key != "step":
            np.testing.assert_allclose(record[key], expected[key], rtol=1e-10,
                                       atol=1e-10 * np.abs(expected[key]).max(), err_msg=key)
    # the convention itself: theta_k - theta_{k-1} = eta v_k with v = -buf, so successive
    # position projections differ by eta times the velocity projection
    # (a difference of projections: its rounding is relative to the projections themselves)
    np.testing.assert_allclose(np.diff(record["theta_projection"], axis=0),
                               eta * record["velocity_projection"][1:], rtol=1e-8,
                               atol=1e-10 * np.abs(record["theta_projection"]).max())


def test_recorder_groups_every_and_zero_momentum():
    model, batches = make_problem(seed=1)
    first, second = model[0], model[2]
    num_params = sum(p.numel() for p in model.parameters())
    directions = torch.randn(3, num_params)
    groups = [(0.05, 0.9, 1e-2)] * 2 + [(0.02, 0.0, 0.0)] * 2
    start = flat(model.parameters()).detach()
    expected = hand_written_run(model, batches, 20, groups, directions, start)
    optimizer = torch.optim.SGD([
        {"params": first.parameters(), "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
        {"params": second.parameters(), "lr": 0.02, "momentum": 0.0}])
    recorder = TrajectoryRecorder(optimizer, directions=directions, every=3, projection_block=2)
    for k in range(20):
        optimizer.zero_grad()
        loss_of(model, batches[k % len(batches)]).backward()
        optimizer.step()
        recorder.record()
    recorder.close()
    record = recorder.trajectory()
    chosen = np.arange(2, 20, 3)  # steps 3, 6, ..., 18
    np.testing.assert_array_equal(record["step"], expected["step"][chosen])
    assert np.all(np.isnan(record["loss"]))
    for key in ("local_displacement_sq", "global_displacement_sq", "theta_projection",
                "velocity_projection"):
        # the momentum-free group's velocity is delta/eta: rounding of a difference of
        # iterates relative to the step, about 1e-16 * |theta| / |delta|; otherwise as in
        # the first test (1e-10 of the scale: no a-priori bound below it for a trained net)
        np.testing.assert_allclose(record[key], expected[key][chosen], rtol=1e-9,
                                   atol=1e-10 * np.abs(expected[key]).max(), err_msg=key)


def test_recorder_every_other_step_with_momentum_everywhere():
    """every=2 with momentum everywhere: delta_k comes from the buffer (no theta_{k-1} is
    kept), and each recorded step holds both vectors (no accumulation across skipped steps)."""
    model, batches = make_problem(seed=4)
    num_params = sum(p.numel() for p in model.parameters())
    directions = torch.randn(3, num_params)
    start = flat(model.parameters()).detach()
    expected = hand_written_run(model, batches, 21, [(0.05, 0.9, 1e-2)] * 4, directions, start)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    recorder = TrajectoryRecorder(optimizer, directions=directions, every=2, projection_block=3)
    run_steps(model, optimizer, recorder, batches, 0, 20)
    record = recorder.trajectory()
    chosen = np.arange(1, 21, 2)  # steps 2, 4, ..., 20
    np.testing.assert_array_equal(record["step"], expected["step"][chosen])
    for key in ("local_displacement_sq", "global_displacement_sq", "theta_projection",
                "velocity_projection"):
        # float64: as in the first test, a few ulps that grow slowly with the steps
        np.testing.assert_allclose(record[key], expected[key][chosen], rtol=1e-10,
                                   atol=1e-10 * np.abs(expected[key]).max(), err_msg=key)


def test_recorder_one_rate_with_a_momentum_free_group_every_step():
    """every=1 with one learning rate across groups: position projections are accumulated
    from velocity projections within a block; a momentum-free group's velocity is delta/eta."""
    model, batches = make_problem(seed=2)
    first, second = model[0], model[2]
    num_params = sum(p.numel() for p in model.parameters())
    directions = torch.randn(3, num_params)
    groups = [(0.05, 0.9, 1e-2)] * 2 + [(0.05, 0.0, 1e-3)] * 2
    start = flat(model.parameters()).detach()
    expected = hand_written_run(model, batches, 23, groups, directions, start)
    optimizer = torch.optim.SGD([
        {"params": first.parameters(), "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2},
        {"params": second.parameters(), "lr": 0.05, "momentum": 0.0, "weight_decay": 1e-3}])
    recorder = TrajectoryRecorder(optimizer, directions=directions, projection_block=4,
                                  chunk_size=10)
    run_steps(model, optimizer, recorder, batches, 0, 22)
    record = recorder.trajectory()
    for key in ("local_displacement_sq", "global_displacement_sq", "theta_projection",
                "velocity_projection"):
        # as above: the momentum-free group's delta/eta carries ~1e-16 |theta| / |delta|
        np.testing.assert_allclose(record[key], expected[key], rtol=1e-9,
                                   atol=1e-10 * np.abs(expected[key]).max(), err_msg=key)


def test_recorder_follows_a_learning_rate_schedule():
    """The learning rate changes every step: accumulated position projections must use each
    step's own rate (read from the optimizer before the scheduler steps)."""
    model, batches = make_problem(seed=3)
    num_params = sum(p.numel() for p in model.parameters())
    directions = torch.randn(5, num_params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.08, momentum=0.9, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.8)
    recorder = TrajectoryRecorder(optimizer, directions=directions, projection_block=6)
    start = flat(model.parameters()).detach().clone()
    thetas, buffers = [], []
    for k in range(17):
        optimizer.zero_grad()
        loss_of(model, batches[k % len(batches)]).backward()
        optimizer.step()
        recorder.record()
        scheduler.step()
        thetas.append(flat(model.parameters()).detach().clone())
        buffers.append(flat(optimizer.state[p]["momentum_buffer"] for p in model.parameters()))
    record = recorder.trajectory()
    thetas, buffers = torch.stack(thetas), torch.stack(buffers)
    theta_projection = ((thetas - start) @ directions.T).numpy()
    velocity_projection = (-buffers @ directions.T).numpy()
    # float64 iterates: the accumulated and the direct projections differ by the rounding of
    # the parameter updates (theta + eta v rounds to half an ulp of |theta|, each step) and of
    # the products (gamma(P) |x| |directions| for inner dimension P); over 17 steps, with a
    # factor 4 of margin for the accumulation's own additions
    P = directions.shape[1]
    dirs = np.abs(directions.numpy()).T
    step_envelope = np.abs(np.diff(np.vstack([start.numpy(), thetas.numpy()]), axis=0)) @ dirs
    theta_envelope = np.abs(thetas.numpy()) @ dirs
    bound = 17 * 4 * ((gamma(P) + 4 * EPS) * step_envelope.max() + EPS * theta_envelope.max()
                      ) + gamma(P) * (np.abs((thetas - start).numpy()) @ dirs)
    assert np.all(np.abs(record["theta_projection"] - theta_projection) <= bound)
    # the same buffers projected on the same directions: two products of inner dimension P
    envelope = np.abs(buffers.numpy()) @ np.abs(directions.numpy()).T
    assert np.all(np.abs(record["velocity_projection"] - velocity_projection)
                  <= 2 * gamma(P) * envelope)
    steps = np.diff(np.vstack([start.numpy(), thetas.numpy()]), axis=0)
    np.testing.assert_allclose(record["local_displacement_sq"], (steps ** 2).sum(axis=1),
                               rtol=1e-10)


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    model, batches = make_problem(seed=2)
    num_params = sum(p.numel() for p in model.parameters())
    directions = torch.randn(2, num_params)
    reference = torch.randn(num_params)
    settings = {"directions": directions, "reference": reference, "chunk_size": 4}

    reference_model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference_model.parameters(), lr=0.05, momentum=0.9,
                                weight_decay=1e-3)
    with TrajectoryRecorder(optimizer, path=tmp_path / "whole", **settings) as recorder:
        run_steps(reference_model, optimizer, recorder, batches, 1, 23)
    whole = load_trajectory(tmp_path / "whole")
    assert whole["step"].tolist() == list(range(1, 24))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    checkpoints = {}
    with pytest.raises(RuntimeError, match="simulated kill"):
        with TrajectoryRecorder(optimizer, path=tmp_path / "run", **settings) as recorder:
            run_steps(model, optimizer, recorder, batches, 1, 23, checkpoints, fail_at=11)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["chunk_000000000001.npz", "chunk_000000000005.npz", "manifest.json",
                     "reference.npz", "start.npz"]
    assert load_trajectory(tmp_path / "run")["step"].tolist() == list(range(1, 9))

    # resume from the checkpoint at the last step on disk, with a fresh model and optimizer
    model, _ = make_problem(seed=99)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    state, optimizer_state = checkpoints[8]
    model.load_state_dict(state)
    optimizer.load_state_dict(optimizer_state)
    with TrajectoryRecorder(optimizer, path=tmp_path / "run", **settings) as recorder:
        assert recorder.step == 8
        run_steps(model, optimizer, recorder, batches, 9, 23)
    joined = load_trajectory(tmp_path / "run")
    assert joined.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(joined[key], whole[key], err_msg=key)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    model, batches = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recorder = TrajectoryRecorder(optimizer, path=tmp_path, chunk_size=3)
    run_steps(model, optimizer, recorder, batches, 1, 3)

    def broken_savez(stream, **arrays):
        stream.write(b"PK\x03\x04 partial zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        run_steps(model, optimizer, recorder, batches, 4, 6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_000000000001.npz",
                                                          "manifest.json", "start.npz"]
    assert load_trajectory(tmp_path)["step"].tolist() == [1, 2, 3]


def test_resume_with_other_settings_is_refused(tmp_path):
    model, _ = make_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    TrajectoryRecorder(optimizer, path=tmp_path).close()
    with pytest.raises(ValueError, match="every=2"):
        TrajectoryRecorder(optimizer, path=tmp_path, every=2)


@pytest.mark.parametrize("options, message", [
    ({"nesterov": True, "momentum": 0.9}, "nesterov"),
    ({"dampening": 0.1, "momentum": 0.9}, "dampening"),
    ({"maximize": True, "momentum": 0.9}, "maximize"),
])
def test_unsupported_sgd_options_are_refused(options, message):
    model, _ = make_problem()
    with pytest.raises(ValueError, match=message):
        TrajectoryRecorder(torch.optim.SGD(model.parameters(), lr=0.1, **options))


def test_other_optimizers_and_bad_directions_are_refused():
    model, _ = make_problem()
    with pytest.raises(TypeError, match="torch.optim.SGD"):
        TrajectoryRecorder(torch.optim.Adam(model.parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"directions must have shape \(m, 32\)"):
        TrajectoryRecorder(optimizer, directions=torch.ones(2, 7))


@pytest.mark.gpu
def test_recorder_on_cuda_matches_cpu():
    records = []
    for device in ("cpu", "cuda"):
        model, batches = make_problem(seed=3)
        model = model.to(device)
        batches = [(x.to(device), y.to(device)) for x, y in batches]
        num_params = sum(p.numel() for p in model.parameters())
        directions = torch.randn(3, num_params, generator=torch.Generator().manual_seed(4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        with TrajectoryRecorder(optimizer, directions=directions, projection_block=2) as recorder:
            run_steps(model, optimizer, recorder, batches, 1, 10)
        records.append(recorder.trajectory())
    for key in records[0]:
        # float64 on both devices; reductions are ordered differently on the GPU, and those
        # differences are carried along by training as in the CPU tests: 1e-9 relative to the
        # record's scale
        np.testing.assert_allclose(records[1][key], records[0][key], rtol=1e-9,
                                   atol=1e-9 * np.abs(records[0][key]).max(), err_msg=key)


def test_blocked_projection_equals_one_product():
    """The CPU path splits the inner dimension of vectors @ directions.T into blocks (used for
    models with more than 2 * 65536 parameters); it must equal the single product."""
    from numeric._recorder import _SPLIT, _project

    generator = torch.Generator().manual_seed(4)
    size = 3 * _SPLIT + 1234  # whole blocks and a remainder
    directions = torch.randn(7, size, generator=generator)
    vectors = torch.randn(5, size, generator=generator)
    # the worst-case rounding bound of a float64 dot product of length n, both ways:
    # n * eps * sum |x_i y_i| (about 6e-6 here; a dropped block or remainder would be ~1e2)
    bound = size * np.finfo(np.float64).eps * (vectors.abs() @ directions.abs().T).numpy()
    error = np.abs(_project(directions, vectors).numpy() - (vectors @ directions.T).numpy())
    assert np.all(error <= 2 * bound)
