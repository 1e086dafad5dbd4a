"""Render every backend's module from :func:`kernel_specs`, write it, or check it is current."""

from __future__ import annotations

from pathlib import Path

from .kernels import kernel_specs
from .printers import PRINTERS
from .render import render_module, stale_modules, write_module

__all__ = ["GENERATED_DIR", "generated_paths", "render_all", "write_all", "check_all"]

#: numeric/_generated/ of this checkout (ousym and numeric are sibling packages).
GENERATED_DIR = Path(__file__).resolve().parents[2] / "numeric" / "_generated"


def generated_paths(directory: Path = GENERATED_DIR) -> dict[str, Path]:
    """backend -> path of its generated module."""
    return {backend: Path(directory) / f"{backend}_kernels.py" for backend in PRINTERS}


def render_all(directory: Path = GENERATED_DIR) -> dict[Path, str]:
    """path -> freshly rendered text, for every backend."""
    specs = kernel_specs()
    return {path: render_module(specs, backend) for backend, path in generated_paths(directory).items()}


def write_all(directory: Path = GENERATED_DIR) -> list[Path]:
    """Write every generated module; returns the paths that changed."""
    return [path for path, text in render_all(directory).items() if write_module(text, path)]


def check_all(directory: Path = GENERATED_DIR) -> list[Path]:
    """The generated modules that are missing or stale (see :func:`~.render.stale_modules`)."""
    specs = kernel_specs()
    rendered = {path: render_module(specs, backend)
                for backend, path in generated_paths(directory).items()}
    return stale_modules(rendered, specs)
