"""Code generation: SymPy expressions of :mod:`ousym` -> NumPy and Torch source text.

Staged as in PyDy: an explicit :class:`KernelSpec` per kernel (name, ordered arguments,
outputs, paper reference; free symbols that are not arguments are refused), a printer subclass
per backend, common subexpressions eliminated over all outputs of a kernel at once, then
render (text) -> write (file) -> load (module). The committed output lives in
``numeric/_generated/``; ``python -m ousym codegen --check`` reports when it is stale (its
specs, the generator version or its printed source changed; never the SymPy version alone).
"""

from __future__ import annotations

from .render import (GENERATOR_VERSION as GENERATOR_VERSION, generator_hash as generator_hash,
                     load_module as load_module, module_is_current as module_is_current,
                     render_function as render_function, render_module as render_module,
                     stale_modules as stale_modules, write_module as write_module)
from .spec import KernelSpec as KernelSpec, specs_hash as specs_hash

__all__ = [
    "GENERATOR_VERSION", "KernelSpec", "specs_hash", "render_function", "render_module",
    "write_module", "load_module", "stale_modules", "generator_hash", "module_is_current",
]
