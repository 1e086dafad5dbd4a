"""Data loaders: the CIFAR-10 pickle format (on small files written in exactly that format),
the synthetic problem's exact properties, and the bundled data sets' preprocessing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from experiments.data import (CIFAR10_FILES, load_cifar10, load_dataset, load_digits,
                              make_synthetic, one_hot, standardize_inputs)


def _write_cifar(directory, rng, per_file=7, skip=(), override=None):
    for name in CIFAR10_FILES:
        if name in skip:
            continue
        batch = {b"batch_label": name.encode(),
                 b"data": rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, size=per_file)],
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_file)]}
        if override and name in override:
            batch = override[name](batch)
        with open(directory / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def test_cifar10_reads_the_python_batches(tmp_path, rng):
    _write_cifar(tmp_path, rng)
    data = load_cifar10(tmp_path, seed=3)
    assert data.X.shape == (6 * 7, 3072)
    assert data.Y.shape == (6 * 7, 10)
    np.testing.assert_allclose(data.X.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.mean(data.X ** 2), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(data.Y.sum(1), 1.0)
    # The pixels survive the round trip up to the affine map (x - mean) / scale.
    raw = np.concatenate([pickle.load(open(tmp_path / n, "rb"), encoding="bytes")[b"data"]
                          for n in CIFAR10_FILES]).astype(float)
    restored = data.X * data.info["input_scale"] + raw.mean(0)
    assert sorted(map(tuple, np.round(restored).astype(int))) == sorted(map(tuple,
                                                                            raw.astype(int)))


def test_cifar10_missing_file_is_named(tmp_path, rng):
    _write_cifar(tmp_path, rng, skip=("data_batch_3",))
    with pytest.raises(FileNotFoundError, match="data_batch_3.*python-pickle batch"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: {b"pixels": b[b"data"]}, "keys b'data' and b'labels'"),
    (lambda b: b | {b"data": b[b"data"][:, :100]}, r"shape \(N, 3072\)"),
    (lambda b: b | {b"data": b[b"data"].astype(np.float32)}, "uint8"),
    (lambda b: b | {b"labels": [11] * len(b[b"labels"])}, r"in \[0, 9\]"),
])
def test_cifar10_malformed_file_is_named(tmp_path, rng, corrupt, message):
    _write_cifar(tmp_path, rng, override={"test_batch": corrupt})
    with pytest.raises(ValueError, match=f"test_batch.*{message}"):
        load_cifar10(tmp_path)


def test_cifar10_not_a_pickle(tmp_path, rng):
    _write_cifar(tmp_path, rng)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="data_batch_1 is not a readable python pickle"):
        load_cifar10(tmp_path)


def test_cifar10_needs_a_directory(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")


def test_synthetic_has_the_chosen_spectrum_and_planted_solution():
    spectrum = np.array([2.0, 0.7, 0.3, 0.05])
    data = make_synthetic(spectrum, num_samples=500, num_outputs=2, noise_std=0.5, seed=1)
    H = data.X.T @ data.X / data.num_samples
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(H))[::-1], spectrum, rtol=1e-12)
    theta_star = np.array(data.info["theta_star"])  # (c, d)
    b = data.X.T @ data.Y / data.num_samples
    np.testing.assert_allclose(np.linalg.solve(H, b).T, theta_star, atol=1e-12)
    residual = data.Y - data.X @ theta_star.T
    np.testing.assert_allclose(np.mean(residual ** 2, axis=0), 0.25, rtol=1e-12)


def test_digits_is_centred_scaled_one_hot_and_shuffled():
    data = load_digits(seed=0)
    assert data.X.shape == (1797, 64) and data.Y.shape == (1797, 10)
    np.testing.assert_allclose(data.X.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.mean(data.X ** 2), 1.0, rtol=1e-12)
    other = load_digits(seed=1)
    assert not np.array_equal(data.Y, other.Y)  # a different shuffle
    np.testing.assert_array_equal(data.Y.sum(0), other.Y.sum(0))  # same samples


def test_input_validation():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="spectrum must be"):
        make_synthetic([1.0, -1.0])
    with pytest.raises(ValueError, match="num_samples must exceed"):
        make_synthetic([1.0, 0.5], num_samples=3)
    with pytest.raises(ValueError, match="only constant features"):
        standardize_inputs(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="num_samples must be in"):
        load_digits(num_samples=5000)
