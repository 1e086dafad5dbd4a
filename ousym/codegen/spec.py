"""The contract between derivation and code generation: one explicit object per kernel."""

from __future__ import annotations

import hashlib
import keyword
from dataclasses import dataclass, field

import sympy as sp

__all__ = ["KernelSpec", "specs_hash"]


@dataclass(frozen=True)
class KernelSpec:
    """One generated kernel: a Python function of ordered arguments returning named outputs.

    Parameters (keyword-only)
    -------------------------
    name : str
        Python name of the generated function.
    arguments : sequence of (str, sympy.Symbol)
        The function's arguments, in order: the Python name and the symbol it stands for.
    outputs : sequence of (str, sympy.Expr)
        Named scalar expressions, returned as a tuple in this order. Every free symbol must be
        one of the argument symbols.
    reference : str
        Where the formula comes from (e.g. "eq. (13) of Kunin et al. 2023").
    description : str
        One sentence for the generated docstring.

    Raises
    ------
    ValueError
        if an output has free symbols that are not arguments (named in the message), if
        names are not distinct Python identifiers, or if an output is a matrix.
    """

    name: str
    arguments: tuple[tuple[str, sp.Symbol], ...]
    outputs: tuple[tuple[str, sp.Expr], ...]
    reference: str
    description: str = field(default="")

    def __init__(self, *, name, arguments, outputs, reference, description=""):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "arguments", tuple((str(a), s) for a, s in arguments))
        object.__setattr__(self, "outputs", tuple((str(o), sp.sympify(e)) for o, e in outputs))
        object.__setattr__(self, "reference", reference)
        object.__setattr__(self, "description", description)
        self._validate()

    def _validate(self) -> None:
        names = [self.name] + [a for a, _ in self.arguments] + [o for o, _ in self.outputs]
        for n in names:
            if not n.isidentifier() or keyword.iskeyword(n):
                raise ValueError(f"KernelSpec {self.name!r}: {n!r} is not a valid Python identifier")
        if len(set(a for a, _ in self.arguments)) != len(self.arguments):
            raise ValueError(f"KernelSpec {self.name!r}: argument names repeat: {names}")
        if not self.outputs:
            raise ValueError(f"KernelSpec {self.name!r}: needs at least one output")
        declared = {s for _, s in self.arguments}
        for out, expr in self.outputs:
            if isinstance(expr, sp.MatrixBase) or getattr(expr, "is_Matrix", False):
                raise ValueError(f"KernelSpec {self.name!r}: output {out!r} is a matrix; "
                                 "give each entry as its own output")
            undeclared = expr.free_symbols - declared
            if undeclared:
                listed = ", ".join(sorted(str(s) for s in undeclared))
                raise ValueError(
                    f"KernelSpec {self.name!r}: output {out!r} has free symbols that are not "
                    f"arguments: {listed} (arguments are: "
                    f"{', '.join(a for a, _ in self.arguments)})"
                )

    @property
    def argument_names(self) -> tuple[str, ...]:
        return tuple(a for a, _ in self.arguments)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o for o, _ in self.outputs)

    def fingerprint(self) -> str:
        """A stable text of everything the generated code depends on (srepr is canonical)."""
        parts = [self.name, self.reference, self.description]
        parts += [f"{a}={sp.srepr(s)}" for a, s in self.arguments]
        parts += [f"{o}={sp.srepr(e)}" for o, e in self.outputs]
        return "\n".join(parts)


def specs_hash(specs, *, extra: str = "") -> str:
    """SHA-256 (first 16 hex digits) of the specs' fingerprints, in order, plus ``extra``."""
    digest = hashlib.sha256()
    for spec in specs:
        digest.update(spec.fingerprint().encode())
        digest.update(b"\0")
    digest.update(extra.encode())
    return digest.hexdigest()[:16]
