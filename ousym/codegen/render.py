"""Staged code generation: render (specs -> text), write (text -> file), load (file -> module).

A generated module is deterministic for a given SymPy version: the same specs give the same
text byte for byte, which is what the staleness check (:func:`stale_modules`) compares.
"""

from __future__ import annotations

import importlib.util
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import sympy as sp

from .printers import PRIMITIVE_MODULE_ALIAS, PRINTERS
from .spec import KernelSpec, specs_hash

__all__ = [
    "GENERATOR_VERSION",
    "GeneratedModule",
    "render_function",
    "render_module",
    "write_module",
    "load_module",
    "stale_modules",
]

#: Bump when the generator's output format changes (it is part of every header and hash).
GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class GeneratedModule:
    """Where one backend's kernels go: file path and backend name."""

    path: Path
    backend: str


def render_function(spec: KernelSpec, backend: str) -> str:
    """Python source of one kernel: CSE over all its outputs at once, then one return."""
    printer_class = PRINTERS[backend]
    symbol_names = {symbol: name for name, symbol in spec.arguments}
    printer = printer_class(symbol_names=symbol_names)
    exprs = [expr for _, expr in spec.outputs]
    temporaries = sp.numbered_symbols("_x")
    replacements, reduced = sp.cse(exprs, symbols=temporaries, order="canonical")

    lines = [f"def {spec.name}({', '.join(spec.argument_names)}):"]
    lines += _docstring(spec, backend)
    for symbol, value in replacements:
        lines.append(f"    {printer.doprint(symbol)} = {printer.doprint(value)}")
    returned = ", ".join(printer.doprint(e) for e in reduced)
    lines.append(f"    return ({returned},)")
    return "\n".join(lines) + "\n"


def _docstring(spec: KernelSpec, backend: str) -> list[str]:
    body = [spec.description or spec.name, ""]
    body.append(f"Arguments, in order: {', '.join(spec.argument_names)}.")
    body.append(f"Returns the tuple ({', '.join(spec.output_names)},).")
    body.append(f"Reference: {spec.reference}.")
    body.append(f"Backend: {backend}; arguments must already be broadcastable arrays of one "
                "dtype (and device).")
    wrapped = []
    for paragraph in body:
        wrapped += textwrap.wrap(paragraph, 88) or [""]
    return ['    """' + wrapped[0]] + [("    " + w) if w else "" for w in wrapped[1:]] + ['    """']


def render_module(specs: list[KernelSpec], backend: str) -> str:
    """The whole generated module for ``backend``: header, imports, one function per spec."""
    printer_class = PRINTERS[backend]
    digest = specs_hash(specs, extra=f"generator {GENERATOR_VERSION}; sympy {sp.__version__}")
    header = [
        f'"""Generated {backend} kernels of the limiting dynamics of SGD (Kunin et al. 2023).',
        "",
        "GENERATED, DO NOT EDIT: regenerate with `python -m ousym codegen` (make codegen).",
        "",
        f"generator: ousym.codegen {GENERATOR_VERSION}",
        f"sympy: {sp.__version__}",
        f"spec hash: {digest}",
        '"""',
        "",
        *printer_class.module_imports,
        "",
        f"from .. import {printer_class.primitive_module} as {PRIMITIVE_MODULE_ALIAS}",
        "",
        f"__all__ = {[spec.name for spec in specs]!r}",
    ]
    parts = ["\n".join(header) + "\n"]
    parts += [render_function(spec, backend) for spec in specs]
    return "\n\n".join(parts)


def write_module(text: str, path: Path) -> bool:
    """Write ``text`` to ``path`` if it differs; returns whether the file changed."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a generated file as a module. A file inside the ``numeric`` package is imported
    under its package name (its relative import of the primitives needs the package)."""
    path = Path(path).resolve()
    if name is None:
        parts = path.with_suffix("").parts
        if "numeric" in parts:
            name = ".".join(parts[len(parts) - 1 - parts[::-1].index("numeric"):])
        else:
            name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a module from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stale_modules(rendered: dict[Path, str]) -> list[Path]:
    """The paths whose file content differs from the freshly rendered text (or is missing)."""
    return [path for path, text in rendered.items()
            if not Path(path).exists() or Path(path).read_text() != text]
