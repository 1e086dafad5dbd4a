"""Scale-out on torch.distributed: 2 gloo ranks under torchrun against one process.

Two launches of ``python -m torch.distributed.run --standalone --nproc_per_node=2`` (a free
port on 127.0.0.1): the first trains the worked example and is killed (SIGKILL to the whole
launcher group) once it has written a checkpoint; the second resumes it on both ranks, then
takes Hessian-vector products, a Lanczos eigensolve and a Hutchinson trace with the data
sharded across the ranks. Everything is compared with the same computation in this process.

Tolerances: float64 throughout, so the ranks differ from one process only in the order of
summation (per-rank partial sums, then the all-reduce). For sums of n terms that reordering
changes the result by at most about n eps sum|terms|; with n <= 2000 samples and the
cancellation of these gradients (sum|terms| / |sum| below 1e3 here) that is below 1e-9
relative, the bound used. Over 40 steps of SGD the rounding differences are propagated by the
dynamics (a contraction or mild expansion at this learning rate, measured 1e-16 to 1e-15 of
the value); 1e-9 relative leaves six orders of magnitude of room for machines whose BLAS
rounds differently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import distributed as ddp

ROOT = Path(__file__).resolve().parents[2]
RTOL = 1e-9


def _torchrun(args, *, wait=True, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    if not wait:
        return process
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out.decode()[-4000:]
    return out.decode()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as each rank has (OMP_NUM_THREADS=1): these products are tiny, and
    on shared cores torch's thread pool made them 50x slower (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _descendants(pid):
    """Every live descendant of ``pid`` (torchrun starts its workers in sessions of their
    own, so killing the launcher's process group would leave them running)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _kill_tree(process):
    """SIGKILL the launcher and all its workers, as a machine failure would."""
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.communicate()


def _hvp_data():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images[:300], dtype=torch.float64)[:, None] / 16.0
    y = torch.tensor(bunch.target[:300], dtype=torch.int64)
    return x, y


def _hvp_model():
    torch.manual_seed(3)
    return ddp.SmallConvNet(dtype=torch.float64)


def _loss(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets)


def _probe_vectors(model):
    P = sum(p.numel() for p in model.parameters())
    return torch.randn(3, P, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


# a few probes and Lanczos steps, the top k with a loose tolerance and Hutchinson's trace:
# every path of spectrum_from_model that takes products
SPECTRUM_ARGS = dict(k=2, tol=0.1, num_probes=3, lanczos_steps=5, trace_samples=4, seed=2)


def _runner_problem():
    """The ResNet-18 runner's phases on a width-4 model and 96 digits (float64)."""
    from experiments import resnet18 as runner

    config = runner.ResNetConfig(dataset="digits", num_samples=96, width=4, batch_size=16,
                                 eigenpairs=2, hessian_samples=96, noise_batches=6,
                                 dtype="float64", device="cpu")
    data = runner.load_image_dataset("digits", seed=config.seed, num_samples=96)
    # the initial draws follow torch's default dtype (float64 in this suite, float32 under
    # torchrun): fix it so both sides build the same model
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = runner.make_model(config, data)
    finally:
        torch.set_default_dtype(previous)
    return config, data, model


def _runner_noise(config, data, model, out_dir, *, distributed=False):
    from experiments import resnet18 as runner

    vectors = torch.linalg.qr(torch.randn(sum(p.numel() for p in model.parameters()), 2,
                                          generator=torch.Generator().manual_seed(6),
                                          dtype=torch.float64))[0].T
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return runner.estimate_noise(config, model, data, vectors, out_dir, progress=False,
                                 distributed=distributed)


def _runner_batches(config, data, rank, world_size):
    from experiments import resnet18 as runner

    return runner._hessian_batches(config, data, batch_size=20, rank=rank,
                                   world_size=world_size)


def _runner_gradient(model, batches, group=None):
    from experiments import resnet18 as runner

    return runner._full_gradient(model, batches, group)


RESUME_AND_SHARDED_HESSIAN = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import numeric
    from experiments import distributed as ddp
    sys.path.insert(0, {test_dir!r})
    import test_distributed as t

    out, steps = sys.argv[1], int(sys.argv[2])
    context = ddp.init_distributed(device="cpu")
    record = ddp.train_small_convnet(out, steps=steps, checkpoint_every=5, context=context)
    x, y = t._hvp_data()
    # this rank's shard, in batches of unequal size: the all-reduce weights them by count
    shard = [(x[i:i + 37][context.rank::2], y[i:i + 37][context.rank::2])
             for i in range(0, len(x), 37)]
    model = t._hvp_model()
    hvp = numeric.hessian_vector_product(model, t._loss, shard, t._probe_vectors(model),
                                         distributed=True)
    pairs = numeric.hessian_eigenpairs(model, t._loss, shard, 2, max_hvps=24,
                                       distributed=True)
    trace = numeric.hutchinson_trace(model, t._loss, shard, num_samples=6, distributed=True)
    spectrum = numeric.spectrum_from_model(model, t._loss, shard, distributed=True,
                                           **t.SPECTRUM_ARGS)
    mean = ddp.all_reduce_mean(torch.tensor([float(context.rank + 1)] * 2), 1, context)
    config, data, runner_model = t._runner_problem()
    noise = t._runner_noise(config, data, runner_model, out + "/noise", distributed=True)
    batches = t._runner_batches(config, data, context.rank, 2)
    gradient = t._runner_gradient(runner_model, batches, context.group)
    if context.is_main:
        np.savez(out + "/checks.npz", hvp=hvp.numpy(), values=pairs.eigenvalues.numpy(),
                 vectors=pairs.eigenvectors.numpy(), trace=trace.value, mean=mean.numpy(),
                 world=context.world_size, spectrum_values=spectrum.eigenvalues,
                 spectrum_nodes=spectrum.bulk_nodes, spectrum_weights=spectrum.bulk_weights,
                 spectrum_trace=spectrum.trace, noise_pairs=noise["pair_values"],
                 noise_projections=noise["mode_projections"], gradient=gradient.numpy(),
                 **{{"record_" + k: v for k, v in record.items()}})
    ddp.shutdown(context)
""")


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Launch 1 is SIGKILLed after its first checkpoint; launch 2 resumes it to a few steps
    past the checkpoint and runs the sharded Hessian routines."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the test finds torchrun's workers in /proc")
    out = tmp_path_factory.mktemp("ddp")
    checkpoint = out / "checkpoint.pt"
    process = _torchrun(["-m", "experiments.distributed", "--out", str(out), "--steps",
                         "100000", "--checkpoint-every", "5", "--global-batch", "32"],
                        wait=False)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.exists():
            assert process.poll() is None, process.communicate()[0].decode()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        _kill_tree(process)
    killed_at = int(torch.load(checkpoint, weights_only=True)["step"])
    steps = killed_at + 12  # 12 steps after the resume, past two more checkpoints
    script = out / "resume_and_hessian.py"
    script.write_text(RESUME_AND_SHARDED_HESSIAN.format(test_dir=str(Path(__file__).parent)))
    _torchrun([str(script), str(out), str(steps)])
    with np.load(out / "checks.npz", allow_pickle=False) as data:
        checks = {key: data[key] for key in data.files}
    return killed_at, steps, checks, tmp_path_factory.mktemp("single")


def test_two_killed_and_resumed_gloo_ranks_follow_one_process(killed_and_resumed):
    killed_at, steps, checks, single_dir = killed_and_resumed
    assert checks["world"] == 2 and killed_at >= 5 and killed_at % 5 == 0
    single = ddp.train_small_convnet(single_dir, steps=steps, checkpoint_every=5,
                                     context=ddp.init_distributed(device="cpu"))
    np.testing.assert_array_equal(checks["record_steps"], np.arange(1, steps + 1))
    for key in ("local_sq", "global_sq", "theta_projection", "velocity_projection"):
        measured, expected = checks["record_" + key], single[key]
        np.testing.assert_allclose(measured, expected, rtol=RTOL,
                                   atol=RTOL * np.abs(expected).max(), err_msg=key)
    assert single["local_sq"].min() > 0  # it moved


def test_sharded_hessian_routines_equal_one_process(killed_and_resumed):
    import numeric

    *_, checks, _ = killed_and_resumed
    x, y = _hvp_data()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    model = _hvp_model()
    hvp = numeric.hessian_vector_product(model, _loss, batches, _probe_vectors(model)).numpy()
    np.testing.assert_allclose(checks["hvp"], hvp, rtol=RTOL, atol=RTOL * np.abs(hvp).max())
    # a fixed budget of 24 products (12 Lanczos blocks), converged or not: the same arithmetic
    # on both sides, so the Ritz pairs agree to the rounding of the products, amplified by at
    # most the inverse gaps of the small projected problem (1e-7 leaves a margin of 1e3)
    pairs = numeric.hessian_eigenpairs(model, _loss, batches, 2, max_hvps=24)
    np.testing.assert_allclose(checks["values"], pairs.eigenvalues.numpy(), rtol=1e-7)
    overlap = np.abs(np.sum(checks["vectors"] * pairs.eigenvectors.numpy(), axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-7)
    trace = numeric.hutchinson_trace(model, _loss, batches, num_samples=6)
    np.testing.assert_allclose(float(checks["trace"]), trace.value, rtol=RTOL)
    np.testing.assert_allclose(checks["mean"], [1.5, 1.5], rtol=1e-15)


def test_sharded_spectrum_from_model_equals_one_process(killed_and_resumed):
    """Same probes on both sides (seeded CPU generators): the top k, the SLQ nodes and
    weights and the trace differ only by the rounding of the products (1e-9 relative, above)
    carried through the eigensolver, the deflation and 5 Lanczos steps with full
    reorthogonalisation, each amplifying it by at most the inverse relative gaps of a small
    projected problem; 1e-7 leaves a margin of 1e2 over those. (The top-k stopping test could
    in principle flip if a residual fell within 1e-9 of tol; it is a tenth of rho_1 here.)"""
    import numeric

    *_, checks, _ = killed_and_resumed
    x, y = _hvp_data()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    spectrum = numeric.spectrum_from_model(_hvp_model(), _loss, batches, **SPECTRUM_ARGS)
    np.testing.assert_allclose(checks["spectrum_values"], spectrum.eigenvalues, rtol=1e-7)
    scale = np.abs(spectrum.bulk_nodes).max()
    np.testing.assert_allclose(checks["spectrum_nodes"], spectrum.bulk_nodes, rtol=1e-7,
                               atol=1e-7 * scale)
    np.testing.assert_allclose(checks["spectrum_weights"], spectrum.bulk_weights, rtol=1e-7,
                               atol=1e-7 * spectrum.bulk_weights.sum())
    np.testing.assert_allclose(float(checks["spectrum_trace"]), spectrum.trace, rtol=1e-7)


def test_sharded_noise_trace_and_gradient_equal_one_process(killed_and_resumed, tmp_path):
    """The runner's noise trace with its pairs dealt to 2 ranks: each gradient is one whole
    batch's on one rank and the all-reduce adds zeros, so the values equal this process's up
    to the rounding of the same gradient computed in another process (1e-9 relative, above).
    The full-batch gradient over whole batches dealt to the ranks: a reordered sum of 5
    batches, within the same bound."""
    *_, checks, _ = killed_and_resumed
    config, data, model = _runner_problem()
    noise = _runner_noise(config, data, model, tmp_path)
    assert noise["pair_values"].shape == (3,) and noise["mode_projections"].shape == (6, 2)
    np.testing.assert_allclose(checks["noise_pairs"], noise["pair_values"], rtol=RTOL)
    projections = noise["mode_projections"]
    np.testing.assert_allclose(checks["noise_projections"], projections, rtol=RTOL,
                               atol=RTOL * np.abs(projections).max())
    gradient = _runner_gradient(model, _runner_batches(config, data, 0, 1)).numpy()
    np.testing.assert_allclose(checks["gradient"], gradient, rtol=RTOL,
                               atol=RTOL * np.abs(gradient).max())


def test_single_process_helpers_are_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = ddp.init_distributed(device="cpu")
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    model = ddp.SmallConvNet()
    assert ddp.wrap_model(model, context) is model
    assert ddp.on_main(context, lambda: 7) == 7
    assert ddp.all_reduce_mean(torch.tensor([3.0, 5.0]), 2, context).tolist() == [1.5, 2.5]
    batches = ddp.ShardedBatches(100, 32, context, seed=4)
    first = [batches.next() for _ in range(4)]  # 3 steps an epoch, then epoch 1
    assert batches.state_dict() == {"epoch": 1, "batch": 1}
    order = torch.utils.data.DistributedSampler(range(100), num_replicas=1, rank=0, seed=4,
                                                drop_last=True)
    assert torch.equal(torch.cat(first[:3]), torch.tensor(list(order))[:96])
    resumed = ddp.ShardedBatches(100, 32, context, seed=4)
    resumed.load_state_dict({"epoch": 0, "batch": 2})
    assert torch.equal(resumed.next(), first[2]) and torch.equal(resumed.next(), first[3])


def test_shards_of_a_global_batch_are_the_distributed_sampler_rule():
    order = torch.randperm(96, generator=torch.Generator().manual_seed(1))
    shards = []
    for rank in range(2):
        context = ddp.DistributedContext(rank, 2, rank, torch.device("cpu"), "gloo")
        sampler = torch.utils.data.DistributedSampler(range(96), num_replicas=2, rank=rank,
                                                      shuffle=False, drop_last=True)
        expected = order[list(sampler)][:16]  # first batch of 16 of the rank's order
        shards.append(ddp.shard_global_batch(order[:32], context))
        assert torch.equal(shards[-1], expected)
    assert sorted(torch.cat(shards).tolist()) == sorted(order[:32].tolist())
    with pytest.raises(ValueError, match="divisible"):
        ddp.shard_global_batch(order[:33], context)


def test_sync_batchnorm_cpu_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    reference = ddp.SmallConvNet().double()
    converted = ddp.SmallConvNet().double()
    converted.load_state_dict(reference.state_dict())
    converted = ddp._convert_cpu(converted)
    assert sum(isinstance(m, ddp.SyncBatchNormCPU) for m in converted.modules()) == 2
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    for mode in ("train", "eval", "train"):
        getattr(reference, mode)()
        getattr(converted, mode)()
        a, b = reference(x), converted(x)
        # identical formulas up to the order of the variance's summation: rounding only
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-12,
                                   atol=1e-12)
    for (name, p), q in zip(reference.state_dict().items(), converted.state_dict().values()):
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_errors_name_the_argument(monkeypatch):
    with pytest.raises(ValueError, match="divisible by the number of ranks 2, but got 33"):
        ddp.per_rank_batch_size(33, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, but got 'two'"):
        ddp.init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK must be in"):
        ddp.init_distributed(device="cpu")
    import numeric

    model = ddp.SmallConvNet().double()
    batches = [(torch.zeros(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        numeric.hutchinson_trace(model, _loss, batches, num_samples=2, distributed=True)


RESNET_TINY = ["--dataset", "digits", "--num-samples", "256", "--width", "4", "--batch-size",
               "32", "--pretrain-batch-size", "32", "--pretrain-steps", "100", "--steps", "150",
               "--checkpoint-every", "50", "--eigenpairs", "3", "--hessian-samples", "128",
               "--trace-samples", "4", "--noise-batches", "8", "--landscape-points", "3",
               "--slq-probes", "2", "--slq-steps", "6", "--dtype", "float64", "--no-progress"]


@pytest.mark.slow
def test_resnet18_runner_on_two_gloo_ranks_follows_one_process(tmp_path):
    """``torchrun -m experiments.distributed resnet18``: the resumed phase of the ResNet-18
    runner (width 4, BatchNorm over the global batch) on 2 ranks against the runner in one
    process. Same tolerance as above for float64 quantities; the recorded loss is the runner's
    float32 copy of the minibatch loss, so it agrees to float32 rounding (2^-23 ~ 1.2e-7). The
    spectrum, bulk and noise phases, sharded across the 2 ranks, against the same phases of
    the single process."""
    pytest.importorskip("experiments.resnet18")
    from experiments.resnet18 import load_run_trajectory

    _torchrun(["-m", "experiments.distributed", "resnet18", "--out", str(tmp_path / "two"),
               *RESNET_TINY], timeout=600)
    # the reference in a subprocess too: the runner's initial draws follow torch's default
    # dtype, which this test suite sets to float64
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, "-m", "experiments", "resnet18", "--out",
                    str(tmp_path / "one"), *RESNET_TINY], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)
    two, one = load_run_trajectory(tmp_path / "two"), load_run_trajectory(tmp_path / "one")
    for key in ("local_displacement_sq", "global_displacement_sq", "theta_projection",
                "velocity_projection"):
        expected = np.asarray(one[key])
        np.testing.assert_allclose(np.asarray(two[key]), expected, rtol=RTOL,
                                   atol=RTOL * np.abs(expected).max(), err_msg=key)
    np.testing.assert_allclose(np.asarray(two["loss"]), np.asarray(one["loss"]), rtol=2.4e-7)
    # the spectrum, bulk and noise phases ran on both ranks with sharded data: the top k and
    # the SLQ bulk within the eigensolver bound above (1e-7), the noise trace's pairs (each
    # one batch's gradients on one rank) within RTOL
    import numeric

    spectra = [torch.load(tmp_path / run / "spectrum.pt", weights_only=True)
               for run in ("two", "one")]
    np.testing.assert_allclose(spectra[0]["eigenvalues"].numpy(),
                               spectra[1]["eigenvalues"].numpy(), rtol=1e-7)
    np.testing.assert_allclose(spectra[0]["trace"], spectra[1]["trace"], rtol=1e-7)
    bulks = [numeric.Spectrum.load(tmp_path / run / "spectrum_bulk.npz") for run in ("two", "one")]
    np.testing.assert_allclose(bulks[0].bulk_nodes, bulks[1].bulk_nodes, rtol=1e-7,
                               atol=1e-7 * np.abs(bulks[1].bulk_nodes).max())
    noises = [np.load(tmp_path / run / "noise.npz", allow_pickle=False) for run in ("two", "one")]
    np.testing.assert_allclose(noises[0]["pair_values"], noises[1]["pair_values"], rtol=RTOL)
