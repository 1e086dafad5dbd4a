r"""One on-disk format for recorded SGD trajectories: a folder of chunked arrays and a manifest.

Layout of a trajectory folder::

    manifest.json               what was run: eta, beta, lam, S, settings, dtype, the
                                directions' and the reference point's SHA-256, the seeds or
                                ranks axis, the arrays recorded, package versions
    start.npz                   theta_0 (recorder only), reference.npz (when one was given)
    chunk_<first step>.npz      rows of consecutive recorded steps: ``step`` (T,) and each
                                array with the time axis first, e.g. (T,), (T, seeds, m)

Every file is written atomically (a temporary file in the folder, then ``os.replace``), so a
killed run leaves complete chunks only and can resume after its last one
(:class:`TrajectoryWriter`; :func:`truncate_trajectory` rewinds to a checkpoint). A resume
whose manifest differs in anything but the package versions and the creation time raises
:class:`TrajectoryMismatchError`, naming the field. Nothing is pickled: ``.npz`` files are read
with ``allow_pickle=False``.

:func:`load_trajectory` reads a folder lazily (the manifest and the steps at once, each array
on first access) and also reads the recorder's earlier format (``meta.json``).

Array names (those :class:`numeric.TrajectoryRecorder` writes; other writers may add more):
``local_displacement_sq`` :math:`\|\delta_k\|^2`, ``global_displacement_sq``
:math:`\|\Delta_k\|^2`, ``loss``, ``theta_projection``
:math:`\langle\theta_k - \theta_{\rm ref}, q_l\rangle`, ``velocity_projection``
:math:`\langle v_k, q_l\rangle` (eq. 1-2 of Kunin et al. 2023, docs/theory.md section 1).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write

__all__ = [
    "Trajectory",
    "TrajectoryMismatchError",
    "TrajectoryWriter",
    "load_trajectory",
    "truncate_trajectory",
    "write_trajectory",
    "trajectory_manifest",
    "array_digest",
    "package_versions",
]

FORMAT = 2
MANIFEST = "manifest.json"
_LEGACY_META = "meta.json"
_CHUNK = re.compile(r"^chunk_(\d{12})\.npz$")
#: Manifest fields that may differ between a run and its resume.
UNCHECKED_FIELDS = ("versions", "created")


class TrajectoryMismatchError(ValueError):
    """A resume whose settings, dtype, directions, reference or hyperparameters differ from
    the recording on disk."""


def package_versions() -> dict:
    """Versions of Python and the packages the numbers depend on (``None`` if absent)."""
    import importlib.metadata as metadata

    out = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "torch", "ousym"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def array_digest(array, *, dtype=None) -> str | None:
    """SHA-256 of an array's shape, dtype and bytes (row by row, so a large tensor on a device
    is never copied to the host whole); ``None`` for ``None``. Tensors are hashed in ``dtype``
    (default their own) as C-contiguous NumPy bytes."""
    if array is None:
        return None
    digest = hashlib.sha256()
    if hasattr(array, "detach"):
        tensor = array.detach()
        if dtype is not None:
            tensor = tensor.to(dtype)
        digest.update(f"{tuple(tensor.shape)}|{str(tensor.dtype).replace('torch.', '')}".encode())
        rows = tensor.reshape(tensor.shape[0], -1) if tensor.ndim > 1 else tensor.reshape(1, -1)
        for row in rows:
            digest.update(np.ascontiguousarray(row.cpu().numpy()).tobytes())
        return digest.hexdigest()
    array = np.ascontiguousarray(array if dtype is None else np.asarray(array, dtype=dtype))
    digest.update(f"{array.shape}|{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _json_ready(value):
    """Settings as plain JSON (tuples as lists, NumPy scalars as numbers); raises TypeError
    naming the offending entry otherwise."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"settings must be JSON-serialisable, but got {type(value).__name__} "
                    f"{value!r}")


def _chunk_files(path: Path):
    if not path.is_dir():
        return []
    return sorted(entry for entry in path.iterdir() if _CHUNK.match(entry.name))


def _write_json(path: Path, value) -> None:
    text = json.dumps(value, indent=1, sort_keys=True).encode()
    atomic_write(path, lambda stream: stream.write(text))


def _save_npz(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


class TrajectoryWriter:
    """Create or resume a trajectory folder and append chunks to it.

    ``manifest`` is a JSON-ready dict (the caller's fields; ``format``, ``created`` and
    ``versions`` are added). If ``path`` already holds a manifest, every field except
    :data:`UNCHECKED_FIELDS` must be equal, or :class:`TrajectoryMismatchError` names the
    first that differs; :attr:`last_step` is then the last step on disk (``None`` while the
    folder holds no chunk). Leftover temporary
    files of a killed write are removed.
    """

    def __init__(self, path, manifest: dict):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink()
        manifest = _json_ready(manifest) | {"format": FORMAT}
        manifest_file = self.path / MANIFEST
        self.resumed = manifest_file.exists() or (self.path / _LEGACY_META).exists()
        if not self.resumed:
            manifest |= {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                         "versions": package_versions()}
            _write_json(manifest_file, manifest)
        else:
            if not manifest_file.exists():
                raise TrajectoryMismatchError(
                    f"path {str(self.path)!r} holds a recording of an earlier format "
                    f"({_LEGACY_META}); it can be read with load_trajectory but not resumed: "
                    "use a new path")
            stored = json.loads(manifest_file.read_text())
            # the most basic difference first: a dtype change also changes the hashes
            for key in sorted(set(stored) | set(manifest), key=lambda key: (key != "dtype", key)):
                if key in UNCHECKED_FIELDS:
                    continue
                if stored.get(key) != manifest.get(key):
                    raise TrajectoryMismatchError(
                        f"path {str(self.path)!r} holds a recording with {key}="
                        f"{_short(stored.get(key))}, but this run has {key}="
                        f"{_short(manifest.get(key))}; resume with the same settings or use "
                        "a new path")
            manifest = stored
        self.manifest = manifest
        chunks = _chunk_files(self.path)
        self.last_step = None  # no step on disk yet
        if chunks:
            with np.load(chunks[-1], allow_pickle=False) as data:
                self.last_step = int(data["step"][-1])

    def write_chunk(self, arrays: dict) -> Path:
        """Write one chunk atomically: ``arrays["step"]`` (T,) increasing, after
        :attr:`last_step`; every other array has T rows."""
        steps = np.asarray(arrays["step"], dtype=np.int64)
        if steps.ndim != 1 or steps.size == 0 or np.any(np.diff(steps) <= 0):
            raise ValueError(f"step must be a non-empty increasing 1-D array, but got {steps}")
        if self.last_step is not None and steps[0] <= self.last_step:
            raise ValueError(f"chunk starts at step {int(steps[0])}, but the recording already "
                             f"holds step {self.last_step}")
        out = {"step": steps}
        for key, value in arrays.items():
            if key == "step":
                continue
            value = np.asarray(value)
            if value.shape[:1] != steps.shape:
                raise ValueError(f"array {key!r} must have {steps.size} rows (one per step), "
                                 f"but got shape {value.shape}")
            out[key] = value
        name = self.path / f"chunk_{int(steps[0]):012d}.npz"
        _save_npz(name, out)
        self.last_step = int(steps[-1])
        return name


def write_trajectory(path, arrays: dict, *, manifest: dict, chunk_rows: int = 4096) -> Path:
    """Write a whole trajectory held in memory (``arrays["step"]`` and arrays with the time
    axis first) as a new folder, in chunks of ``chunk_rows`` steps. Raises
    :class:`TrajectoryMismatchError` if ``path`` holds a different recording, and
    ``ValueError`` if it already holds these steps."""
    writer = TrajectoryWriter(path, manifest)
    steps = np.asarray(arrays["step"])
    for start in range(0, steps.size, chunk_rows):
        writer.write_chunk({key: np.asarray(value)[start:start + chunk_rows]
                            for key, value in arrays.items()})
    return writer.path


def truncate_trajectory(path, step: int) -> None:
    """Drop every recorded row after ``step`` (to resume from a checkpoint taken there): later
    chunk files are removed, and a chunk that straddles ``step`` is rewritten atomically."""
    path = Path(path)
    for chunk in reversed(_chunk_files(path)):
        first = int(_CHUNK.match(chunk.name).group(1))
        if first > step:
            chunk.unlink()
            continue
        with np.load(chunk, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        keep = arrays["step"] <= step
        if not keep.all():
            _save_npz(chunk, {key: value[keep] for key, value in arrays.items()})
        break


class Trajectory:
    """A trajectory folder, read lazily: :attr:`manifest` and :attr:`steps` at once, every
    array on first access (attribute or ``traj[name]``), concatenated over chunks in step
    order. Arrays have the time axis first (then the seeds or ranks axis of
    ``manifest["axis"]``, if any). ``traj["step"]`` is :attr:`steps`; ``keys()`` lists
    ``"step"`` and the array names."""

    def __init__(self, path):
        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        legacy = self.path / _LEGACY_META
        if manifest_file.is_file():
            self.manifest = json.loads(manifest_file.read_text())
        elif legacy.is_file():
            meta = json.loads(legacy.read_text())
            self.manifest = meta | {"num_parameters": meta.get("num_params")}
        else:
            raise FileNotFoundError(f"no trajectory recording in {str(self.path)!r} (no "
                                    f"{MANIFEST})")
        self._chunks = _chunk_files(self.path)
        self._cache: dict[str, np.ndarray] = {}
        names = self.manifest.get("arrays")
        if names is None:
            names = []
            if self._chunks:
                with np.load(self._chunks[0], allow_pickle=False) as data:
                    names = [key for key in data.files if key != "step"]
            elif "num_directions" in self.manifest:  # an empty recorder recording
                names = ["local_displacement_sq", "global_displacement_sq", "loss",
                         "theta_projection", "velocity_projection"]
        self._names = list(names)
        self.steps = self._read("step")

    def _read(self, key):
        if key in self._cache:
            return self._cache[key]
        parts = []
        for chunk in self._chunks:
            with np.load(chunk, allow_pickle=False) as data:
                parts.append(data[key])
        if parts:
            value = np.concatenate(parts)
        elif key == "step":
            value = np.zeros(0, np.int64)
        else:
            tail = self.manifest.get("array_shapes", {}).get(key)
            if tail is None and key in ("theta_projection", "velocity_projection"):
                tail = [int(self.manifest.get("num_directions", 0))]
            value = np.zeros([0] + list(tail or []))
        self._cache[key] = value
        return value

    def keys(self):
        return ["step"] + self._names

    def __iter__(self):
        return iter(self.keys())

    def __contains__(self, key):
        return key in self.keys() or key == "steps"

    def __len__(self):
        return len(self.keys())

    def __getitem__(self, key):
        if key in ("step", "steps"):
            return self.steps
        if key not in self._names:
            raise KeyError(f"{key!r}: this trajectory holds {self.keys()}")
        return self._read(key)

    def __getattr__(self, key):
        if key.startswith("_") or key not in self.__dict__.get("_names", ()):
            raise AttributeError(key)
        return self._read(key)

    def __repr__(self):
        return (f"Trajectory({str(self.path)!r}, {self.steps.size} steps, arrays "
                f"{self._names})")


def load_trajectory(path) -> Trajectory:
    """Open a trajectory folder (this format or the recorder's earlier one) for lazy reading;
    see :class:`Trajectory`. Raises ``FileNotFoundError`` if ``path`` holds no recording."""
    return Trajectory(path)


def trajectory_manifest(*, eta=None, beta=None, lam=None, S=None, settings=None, dtype=None,
                    directions=None, reference=None, axis=None, arrays=None,
                    array_shapes=None, **extra: Any) -> dict:
    """The common manifest fields, JSON-ready: hyperparameters, ``settings`` (a dict), the
    dtype (as text), the SHA-256 of ``directions`` and ``reference`` (arrays or tensors),
    ``axis`` (e.g. ``{"name": "seeds", "size": 8, "seeds": [...]}``, or ``None``), the array
    names and their shapes after the time axis; ``extra`` fields as given."""
    return _json_ready({
        "eta": eta, "beta": beta, "lam": lam, "S": S, "settings": settings or {},
        "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        "directions_sha256": array_digest(directions),
        "reference_sha256": array_digest(reference), "axis": axis,
        "arrays": arrays, "array_shapes": array_shapes,
    } | extra)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
