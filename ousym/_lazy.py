"""Module attributes computed on first access (PEP 562), so that importing ousym stays fast.

SymPy builds large Piecewise matrices slowly (assumption queries during construction); the
derivation modules register such objects here and they are built once, when first read,
including through ``from ousym.oscillator import propagator``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lazy_attributes(
    namespace: dict[str, Any], builders: dict[str, Callable[[], Any]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for a module whose attributes ``builders`` builds lazily.

    ``namespace`` is the module's ``globals()``; a built value is stored there, so each builder
    runs at most once. Unknown names raise ``AttributeError`` naming the module.
    """
    module_name = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        try:
            builder = builders[name]
        except KeyError:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}") from None
        value = builder()
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(builders))

    return __getattr__, __dir__
