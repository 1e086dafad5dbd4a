"""Data loaders: the CIFAR-10 pickle format (on small files written in exactly that format),
the synthetic problem's exact properties, and the bundled data sets' preprocessing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from float_bounds import EPS, gamma
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


def assert_standardized(X, raw, scale):
    """X = (raw - mean) / scale has mean 0 per feature and mean square 1, to rounding:
    the computed mean is within gamma(N) mean|raw| of the true one, and X's own mean sums N
    terms (gamma(N + 1) mean|X|); the mean square sums N d squares (gamma(N d + 4), twice,
    for the scale and for the check)."""
    N, d = X.shape
    mean_bound = gamma(N + 1) * np.abs(raw).mean(0) / scale + 2 * gamma(N + 2) * np.abs(X).mean(0)
    assert np.all(np.abs(X.mean(0)) <= mean_bound)
    assert np.mean(X ** 2) == pytest.approx(1.0, rel=2 * gamma(N * d + 4))


def test_cifar10_reads_the_python_batches(tmp_path, rng):
    _write_cifar(tmp_path, rng)
    data = load_cifar10(tmp_path, seed=3)
    assert data.X.shape == (6 * 7, 3072)
    assert data.Y.shape == (6 * 7, 10)
    raw = np.concatenate([pickle.loads((tmp_path / n).read_bytes(), encoding="bytes")[b"data"]
                          for n in CIFAR10_FILES]).astype(float)
    assert_standardized(data.X, raw, data.info["input_scale"])
    np.testing.assert_array_equal(data.Y.sum(1), 1.0)  # sums of one 1.0 and zeros: exact
    # The pixels survive the round trip up to the affine map (x - mean) / scale.
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


class _RunsCode:
    """What a crafted batch file could hold: a pickle that calls a function when it is read."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_batches_are_read_without_running_code(tmp_path, rng, capsys, protocol):
    def crafted(batch):
        return batch | {b"batch_label": _RunsCode()}

    _write_cifar(tmp_path, rng, override={"data_batch_2": crafted})
    refused = r"data_batch_2 .*refused global (builtins|__builtin__)\.print"
    with pytest.raises(ValueError, match=refused):
        load_cifar10(tmp_path)
    assert "must never run" not in capsys.readouterr().out
    # the honest files, whatever the protocol, still read
    for name in CIFAR10_FILES:
        batch = pickle.loads((tmp_path / name).read_bytes(), encoding="bytes") \
            if name != "data_batch_2" else {b"data": np.zeros((7, 3072), np.uint8),
                                            b"labels": [0] * 7}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    assert load_cifar10(tmp_path).X.shape == (42, 3072)


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
    N, d = data.X.shape
    H = data.X.T @ data.X / N
    # H = X^T X / N equals diag(spectrum) in a rotated basis up to rounding: the whitening
    # (Cholesky of a Gram matrix with condition number below 2 for N / d = 125, and a
    # triangular solve, both backward stable: 16 d^2 eps relative), the rotation and the
    # product (gamma(N + 2 d) of |X|^T |X| / N). Weyl: eigenvalues move by at most ||dH||_2.
    absolute = np.abs(data.X).T @ np.abs(data.X) / N
    dH = gamma(N + 2 * d) * np.linalg.norm(absolute, 2) + 16 * d * d * EPS * spectrum.max()
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(H))[::-1], spectrum, rtol=0, atol=dH)
    theta_star = np.array(data.info["theta_star"])  # (c, d)
    b = data.X.T @ data.Y / N
    # theta* solves H theta = b up to the errors of H (dH), of b (the same product rounding
    # on |X|^T (|X| |theta*| + |Y|) / N, which covers the noise's orthogonality to the inputs
    # too), divided by the smallest eigenvalue; plus the solve's backward error
    db = gamma(2 * N + 2 * d) * np.linalg.norm(
        np.abs(data.X).T @ (np.abs(data.X) @ np.abs(theta_star).T + np.abs(data.Y)) / N, 2)
    solve_bound = ((dH * np.linalg.norm(theta_star, 2) + db) / spectrum.min()
                   + d * d * EPS * spectrum.max() / spectrum.min() * np.linalg.norm(theta_star, 2))
    np.testing.assert_allclose(np.linalg.solve(H, b).T, theta_star, rtol=0, atol=solve_bound)
    residual = data.Y - data.X @ theta_star.T
    # the residual is a difference of |X theta*| and |Y|, so its rounding is relative to them
    # (gamma(d + 2)); the noise was scaled to mean square 1 by a sum of N squares (gamma(N + 3))
    err = gamma(d + 2) * (np.abs(data.X) @ np.abs(theta_star).T + np.abs(data.Y))
    bound = 2 * gamma(N + 3) * 0.25 + 2 * np.mean(np.abs(residual) * err, axis=0) + gamma(N) * 0.25
    assert np.all(np.abs(np.mean(residual ** 2, axis=0) - 0.25) <= bound)


def test_digits_is_centred_scaled_one_hot_and_shuffled():
    data = load_digits(seed=0)
    assert data.X.shape == (1797, 64) and data.Y.shape == (1797, 10)
    from sklearn.datasets import load_digits as raw_digits
    assert_standardized(data.X, raw_digits().data, data.info["input_scale"])
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
