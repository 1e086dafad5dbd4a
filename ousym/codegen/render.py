"""Staged code generation: render (specs -> text), write (text -> file), load (file -> module).

A generated module is deterministic for a given SymPy version: the same specs give the same
text byte for byte. Its header records

- ``spec hash``: the specs (``srepr`` of every expression, names, references) and
  :data:`GENERATOR_VERSION`, i.e. what the code was generated from;
- ``source hash``: the printed source below the header, so that an edit by hand shows;
- ``sympy``: the SymPy version that printed it, for information only.

The staleness check (:func:`stale_modules`) depends on what the generated code is, never on
the SymPy version installed: a module is stale when it is missing, when its spec hash differs
from the current specs' (the theory or the generator changed), or when its source no longer
matches its source hash (it was edited). Under the SymPy version that printed it, the module
must in addition equal a fresh rendering byte for byte. A later SymPy release, which may print
the same specs in another order, therefore leaves committed kernels current.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
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
    "generator_hash",
    "module_is_current",
]

#: Bump when the generator's output changes (printers, templates): it is part of the spec hash,
#: so every generated module becomes stale and must be regenerated.
GENERATOR_VERSION = "2"

_HEADER_FIELD = re.compile(r"^(generator|sympy|spec hash|source hash): (\S+)$", re.MULTILINE)


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
    imports = [
        *printer_class.module_imports,
        "",
        f"from .. import {printer_class.primitive_module} as {PRIMITIVE_MODULE_ALIAS}",
        "",
        f"__all__ = {[spec.name for spec in specs]!r}",
    ]
    body = "\n\n".join(["\n".join(imports) + "\n"]
                       + [render_function(spec, backend) for spec in specs])
    header = [
        f'"""Generated {backend} kernels of the limiting dynamics of SGD (Kunin et al. 2023).',
        "",
        "GENERATED, DO NOT EDIT: regenerate with `python -m ousym codegen` (make codegen).",
        "",
        f"generator: ousym.codegen {GENERATOR_VERSION}",
        f"sympy: {sp.__version__}",
        f"spec hash: {generator_hash(specs)}",
        f"source hash: {_source_hash(body)}",
        '"""',
    ]
    return "\n".join(header) + "\n\n" + body


def generator_hash(specs: list[KernelSpec]) -> str:
    """Hash of what generated code is made from: the specs and :data:`GENERATOR_VERSION`.

    It leaves out the SymPy version on purpose (see the module docstring)."""
    return specs_hash(specs, extra=f"generator {GENERATOR_VERSION}")


def _source_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _split_module(text: str) -> tuple[dict[str, str], str] | None:
    """(header fields, body) of a generated module's text, or None if it has no such header."""
    if not text.startswith('"""'):
        return None
    end = text.find('"""', 3)
    if end < 0 or not text.startswith('"""\n\n', end):
        return None
    fields = dict(_HEADER_FIELD.findall(text[:end]))
    return fields, text[end + len('"""\n\n'):]


def module_is_current(text: str, rendered: str, specs: list[KernelSpec]) -> bool:
    """Whether a generated module's ``text`` is current, given a fresh rendering of ``specs``.

    Current means: its spec hash is that of ``specs`` and the generator version, its body is
    unedited (it matches its source hash), and, when it was printed by the SymPy version
    installed now, it equals ``rendered`` byte for byte. The installed SymPy version alone
    never makes a module stale.
    """
    parsed = _split_module(text)
    if parsed is None:
        return False
    fields, body = parsed
    if fields.get("spec hash") != generator_hash(specs):
        return False
    if fields.get("source hash") != _source_hash(body):
        return False
    if fields.get("sympy") == sp.__version__:
        return text == rendered
    return True


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


def stale_modules(rendered: dict[Path, str], specs: list[KernelSpec]) -> list[Path]:
    """The paths that are missing or not current (:func:`module_is_current`) for ``specs``,
    given ``rendered``, path -> freshly rendered text."""
    return [path for path, text in rendered.items()
            if not Path(path).exists()
            or not module_is_current(Path(path).read_text(), text, specs)]
