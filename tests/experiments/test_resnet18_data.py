"""Image data, models, data order and the training step of the ResNet-18 experiment.

Loaders are tested on small synthetic files written in exactly the formats they read (the
CIFAR-10 python batches, an ImageFolder tree of PNGs); nothing is downloaded.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from experiments.resnet18 import (ResNetConfig, _preserved_state, estimate_noise, make_optimizer,
                                  sgd_step)
from experiments.vision import (EpochSampler, augment_batch, build_model, load_image_dataset,
                                load_image_folder, scale_invariant_weights)


@pytest.fixture(autouse=True)
def one_thread():
    # Two OpenMP threads on a loaded 2-core machine spin against each other (a ResNet step
    # measured 5x slower); one thread is as fast and keeps results independent of the load.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- data ---------------------------------------------------------------------------------


def test_digits_are_shuffled_normalised_and_complete():
    data = load_image_dataset("digits", seed=3)
    assert data.pixels.shape == (1797, 1, 8, 8) and data.num_classes == 10
    x, y = data.batch(torch.arange(data.num_samples), dtype=torch.float64)
    # per-channel normalisation with the set's own mean and standard deviation
    assert abs(float(x.mean())) < 1e-9 and abs(float(x.std()) - 1) < 1e-3
    assert torch.bincount(y).min() > 150
    again = load_image_dataset("digits", seed=3)
    assert torch.equal(again.labels, data.labels)
    other = load_image_dataset("digits", seed=4)
    assert not torch.equal(other.labels, data.labels)


def test_mnist5k_is_shuffled_although_stored_sorted_by_label():
    data = load_image_dataset("mnist5k", num_samples=200)
    assert data.pixels.shape == (200, 1, 28, 28)
    # sorted storage would give 200 zeros; a shuffle gives every class
    assert len(torch.unique(data.labels)) == 10


def _write_cifar(folder, n=20, *, skip=None, bad=None):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5"):
        if name == skip:
            continue
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, n))}
        if name == bad:
            batch = {b"pixels": batch[b"data"]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)


def test_cifar10_reads_the_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar")
    data = load_image_dataset("cifar10", data_dir=tmp_path / "cifar")
    assert data.pixels.shape == (100, 3, 32, 32) and data.pixels.dtype == torch.uint8
    x, _ = data.batch([0, 1])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32


def test_cifar10_errors_name_the_file_and_what_was_expected(tmp_path):
    _write_cifar(tmp_path / "missing", skip="data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_image_dataset("cifar10", data_dir=tmp_path / "missing")
    _write_cifar(tmp_path / "bad", bad="data_batch_2")
    with pytest.raises(ValueError, match=r"data_batch_2.*b'data' and b'labels'"):
        load_image_dataset("cifar10", data_dir=tmp_path / "bad")
    with pytest.raises(ValueError, match="--data-dir"):
        load_image_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_dataset("cifar10", data_dir=tmp_path / "nowhere")


def _write_folder(root, sizes=((6, 6), (6, 6))):
    from PIL import Image

    rng = np.random.default_rng(1)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            size = sizes[c] if i == 2 else (6, 6)
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{i}.png")


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    _write_folder(tmp_path / "tree")
    data = load_image_folder(tmp_path / "tree")
    assert data.pixels.shape == (6, 3, 6, 6) and data.info["classes"] == ["cat", "dog"]
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_image_folder_errors_name_the_offending_path(tmp_path):
    _write_folder(tmp_path / "sizes", sizes=((6, 6), (7, 6)))
    with pytest.raises(ValueError, match=r"dog.2\.png.*one size"):
        load_image_folder(tmp_path / "sizes")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(ValueError, match="holds no image file"):
        load_image_folder(tmp_path / "empty")
    _write_folder(tmp_path / "broken")
    (tmp_path / "broken" / "cat" / "3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"3\.png is not a readable image"):
        load_image_folder(tmp_path / "broken")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "nowhere")


# ---- models ---------------------------------------------------------------------------------


def test_resnet18_is_torchvisions_with_the_stem_adapted():
    import torchvision

    reference = torchvision.models.resnet18(num_classes=10)
    model = build_model("resnet18", in_channels=3)
    assert [p.shape for p in model.parameters()] == [p.shape for p in reference.parameters()]
    gray = build_model("resnet18", in_channels=1, stem="small")
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (3, 3)
    assert gray.conv1.stride == (1, 1) and isinstance(gray.maxpool, torch.nn.Identity)
    assert gray.eval()(torch.zeros(2, 1, 8, 8, dtype=torch.float32)).shape == (2, 10)
    # 20 conv weights feed a batch norm: 17 convolutions and 3 downsampling shortcuts
    assert len(scale_invariant_weights(model)) == 20


def test_narrow_resnet_and_other_classifiers():
    narrow = build_model("resnet18", in_channels=1, width=8, seed=1)
    assert narrow.fc.in_features == 64 and narrow.conv1.out_channels == 8
    same = build_model("resnet18", in_channels=1, width=8, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(narrow.parameters(), same.parameters()))
    other = build_model("squeezenet1_1", in_channels=1, num_classes=10)
    assert other.eval()(torch.zeros(1, 1, 64, 64, dtype=torch.float32)).shape == (1, 10)
    with pytest.raises(ValueError, match="torchvision classifier name"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="apply to torchvision ResNets"):
        build_model("squeezenet1_1", stem="small")
    with pytest.raises(ValueError, match="stem must be one of"):
        build_model("resnet18", stem="tiny")


# ---- data order -----------------------------------------------------------------------------


def test_epoch_sampler_visits_every_sample_once_per_epoch_and_resumes_exactly():
    sampler = EpochSampler(50, 8, seed=2)
    first_epoch = torch.cat([sampler.next_batch() for _ in range(6)])
    assert sorted(first_epoch.tolist()) == sorted(set(first_epoch.tolist()))  # no repeats
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(9)]
    resumed = EpochSampler(50, 8, seed=2)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [resumed.next_batch()
                                                            for _ in range(9)]))
    assert sampler.epoch >= 1
    with pytest.raises(ValueError, match="batch_size"):
        EpochSampler(5, 8)


def test_augmentation_translates_and_is_reproducible():
    x = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(0))
    b = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    # a translation by at most one pixel keeps the central 6x6 block's values in the image
    assert set(a[0, 0, 3:5, 3:5].flatten().tolist()) <= set(x[0].flatten().tolist())


# ---- the training step ----------------------------------------------------------------------


def _counted(optimizer):
    calls = []
    original = optimizer.step

    def step(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    optimizer.step = step
    return calls


def _double_step_bug(model, optimizer, x, y):
    """What published AMP scripts did: scaler.step(optimizer) and then optimizer.step()."""
    model.train()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.step()


def _applied_update_is_one_momentum_step(model, optimizer, step):
    """theta_{k+1} - theta_k == -lr * buf_{k+1} (eq. 2): exactly one update per step."""
    before = [p.detach().clone() for p in model.parameters()]
    step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    lr = optimizer.param_groups[0]["lr"]
    for p, p0 in zip(model.parameters(), before):
        buf = optimizer.state[p]["momentum_buffer"]
        # one float32 subtraction: |error| <= ulp of the larger operand
        bound = 2 * torch.finfo(p.dtype).eps * (p0.abs() + lr * buf.abs())
        if not bool(((p.detach() - (p0 - lr * buf)).abs() <= bound).all()):
            return False
    return True


def _one_update_per_step(amp, device):
    data = load_image_dataset("digits", num_samples=64)
    x, y = data.batch(torch.arange(64), device=device)
    model = build_model("resnet18", in_channels=1, width=8, seed=0, device=device)
    optimizer = make_optimizer(model, eta=0.01, beta=0.9, lam=1e-3)
    calls = _counted(optimizer)
    for _ in range(3):
        assert _applied_update_is_one_momentum_step(
            model, optimizer, lambda: sgd_step(model, optimizer, x, y, amp=amp))
    assert len(calls) == 3


def test_sgd_step_applies_exactly_one_update():
    _one_update_per_step(False, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sgd_step_applies_exactly_one_update_under_amp():
    # bfloat16 autocast: no loss scaling, so no skipped or repeated optimizer step. (On the
    # CPU, torch 2.14's bfloat16 autocast returned non-finite gradients now and then, which is
    # why ResNetConfig refuses amp there.)
    _one_update_per_step(True, "cuda")


def test_the_update_check_catches_the_double_step_bug():
    data = load_image_dataset("digits", num_samples=64)
    model = build_model("resnet18", in_channels=1, width=8, seed=0)
    optimizer = make_optimizer(model, eta=0.01, beta=0.9, lam=1e-3)
    x, y = data.batch(torch.arange(64))
    sgd_step(model, optimizer, x, y)
    assert not _applied_update_is_one_momentum_step(
        model, optimizer, lambda: _double_step_bug(model, optimizer, x, y))


def test_noise_estimate_restores_batch_norm_statistics_and_mode(tmp_path):
    config = ResNetConfig(num_samples=128, width=4, batch_size=16, noise_batches=4,
                          steps=300, checkpoint_every=100)
    data = load_image_dataset("digits", num_samples=128)
    model = build_model("resnet18", in_channels=1, width=4)
    model.eval()
    buffers = [b.clone() for b in model.buffers()]
    vectors = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float32)
    noise = estimate_noise(config, model, data, vectors, tmp_path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert not model.training and noise["trace"] > 0 and noise["mode_variance"].shape == (2,)
    with _preserved_state(model):
        model.train()
        model(torch.randn(4, 1, 8, 8, dtype=torch.float32))  # updates the running statistics
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="beta must be in"):
        ResNetConfig(beta=1.0).validate()
    with pytest.raises(ValueError, match="noise_batches must be even"):
        ResNetConfig(noise_batches=5).validate()
    with pytest.raises(ValueError, match="dataset must be one of"):
        ResNetConfig(dataset="imagenet").validate()
    with pytest.raises(ValueError, match="amp must be False on the CPU"):
        ResNetConfig(amp=True).validate()


def test_a_local_checkpoint_is_the_pretrained_point_and_a_wrong_one_is_refused(tmp_path):
    from experiments.resnet18 import pretrain

    data = load_image_dataset("digits", num_samples=64)
    config = ResNetConfig(num_samples=64, width=8, checkpoint=str(tmp_path / "weights.pt"))
    source = build_model("resnet18", in_channels=1, width=8, seed=7)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "run").mkdir()
    path = pretrain(config, data, tmp_path / "run", progress=False)
    state = torch.load(path, weights_only=True)
    assert all(torch.equal(state["model"][name], value)
               for name, value in source.state_dict().items())
    torch.save(build_model("resnet18", in_channels=3, width=8).state_dict(),
               tmp_path / "other.pt")
    (tmp_path / "run2").mkdir()
    with pytest.raises(ValueError, match="does not fit resnet18 with 10 classes and 1 input"):
        pretrain(ResNetConfig(num_samples=64, width=8, checkpoint=str(tmp_path / "other.pt")),
                 data, tmp_path / "run2", progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        pretrain(ResNetConfig(num_samples=64, width=8, checkpoint=str(tmp_path / "none.pt")),
                 data, tmp_path / "run2", progress=False)


def test_pretraining_killed_between_checkpoints_resumes_bitwise(tmp_path, monkeypatch):
    import experiments.resnet18 as resnet18

    data = load_image_dataset("digits", num_samples=128)
    config = ResNetConfig(num_samples=128, width=4, pretrain_batch_size=16, pretrain_steps=90,
                          checkpoint_every=20, steps=60)
    (tmp_path / "whole").mkdir()
    whole = torch.load(resnet18.pretrain(config, data, tmp_path / "whole", progress=False),
                       weights_only=True)
    calls = []
    original = resnet18.sgd_step

    def dies_at_step_50(*args, **kwargs):
        if len(calls) == 50:
            raise KeyboardInterrupt  # as a kill between the checkpoints at 40 and 60
        calls.append(1)
        return original(*args, **kwargs)

    (tmp_path / "killed").mkdir()
    monkeypatch.setattr(resnet18, "sgd_step", dies_at_step_50)
    with pytest.raises(KeyboardInterrupt):
        resnet18.pretrain(config, data, tmp_path / "killed", progress=False)
    assert not (tmp_path / "killed" / "pretrained.pt").exists()
    monkeypatch.setattr(resnet18, "sgd_step", original)
    resumed = torch.load(resnet18.pretrain(config, data, tmp_path / "killed", progress=False),
                         weights_only=True)
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), name


def test_momentum_buffer_restarts_at_zero_unless_carried(tmp_path):
    """The first resumed step is v_1 = -(g_0 + lam theta_0) when the buffer restarts (the
    paper's protocol) and beta v_0 - (g_0 + lam theta_0), v_0 the pretraining buffer, when it
    is carried: same data, same model, so its length differs only if the option acts."""
    import experiments.resnet18 as resnet18

    data = load_image_dataset("digits", num_samples=64)
    base = dict(num_samples=64, width=4, pretrain_batch_size=16, batch_size=16,
                pretrain_steps=20, checkpoint_every=10, steps=30, eigenpairs=2)
    (tmp_path / "pre").mkdir()
    path = resnet18.pretrain(ResNetConfig(**base), data, tmp_path / "pre", progress=False)
    state = torch.load(path, weights_only=True)
    first = {}
    for carry in (False, True):
        config = ResNetConfig(**base, carry_momentum=carry)
        model = resnet18.make_model(config, data)
        model.load_state_dict(state["model"])
        size = sum(p.numel() for p in model.parameters())
        directions = torch.linalg.qr(torch.randn(size, 2, dtype=torch.float32))[0].T
        out = tmp_path / f"carry_{carry}"
        trajectory = resnet18.train_and_record(config, model, data,
                                               {"eigenvectors": directions}, state, out,
                                               progress=False)
        first[carry] = trajectory["local_displacement_sq"][0]
    assert first[True] != first[False]
