"""The Derivation record: one derived object with its paper reference, printable as LaTeX."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm

__all__ = ["Derivation", "LATEX_SETTINGS"]

#: Settings for :func:`sympy.latex` used by every derivation (readable, not minimal).
LATEX_SETTINGS: dict = {"mat_delim": "(", "mat_str": "matrix", "long_frac_ratio": 3}


@dataclass(frozen=True, kw_only=True)
class Derivation:
    r"""A derived object of the theory, with where it comes from.

    Attributes
    ----------
    name : str
        Stable identifier (``"velocity_correlation"``), also the CLI name.
    rhs : sympy object
        The derived object itself, written in the symbols of :mod:`ousym.symbols` only
        (a scalar expression, an explicit ``ImmutableMatrix``, a block matrix expression,
        a relational, or an ``Eq`` when the derivation is an identity).
    reference : str
        Where it is in Kunin et al. 2023 (``"eq. (13)"``, ``"appendix F.2"``), or the section
        of the project's theory document docs/theory.md for results beyond the paper.
    description : str
        One line saying what it is, including its time unit (steps ``k`` or ``t = eta k``).
    lhs : sympy object or None
        A named left-hand side; then :attr:`expression` is ``Eq(lhs, rhs)`` (unevaluated).
    display : sympy object or None
        A readable form of ``rhs`` using abbreviations (``gamma``, ``omega``, ``h``, ``c``,
        ``s``, ...), each defined in :attr:`where`; ``None`` prints ``rhs``.
    where : tuple of (symbol, definition)
        Definitions of the abbreviations used by :attr:`display`.
    """

    name: str
    rhs: sp.Basic
    reference: str
    description: str
    lhs: sp.Basic | None = None
    display: sp.Basic | None = None
    where: tuple[tuple[sp.Basic, sp.Basic], ...] = field(default=())

    @property
    def expression(self) -> sp.Basic:
        """``Eq(lhs, rhs)`` (unevaluated) when a left-hand side is named, else ``rhs``."""
        if self.lhs is None:
            return self.rhs
        return sp.Eq(self.lhs, self.rhs, evaluate=False)

    def latex(self, *, full: bool = False) -> str:
        """LaTeX of the readable form (or, with ``full=True``, of :attr:`expression` written out
        in the base symbols), followed by the ``where`` definitions, as an ``aligned`` body."""
        body = self.rhs if (full or self.display is None) else self.display
        lines = [_latex_relation(self.lhs, body)]
        if not full:
            for position, (symbol, definition) in enumerate(self.where):
                lead = r"&\text{where } " if position == 0 else r"&\phantom{\text{where }} "
                lines.append(lead + _latex_relation(symbol, definition, aligned=False))
        return " \\\\\n".join(lines)

    def text(self, *, full: bool = False) -> str:
        """A plain-text (Unicode) rendering for the terminal."""
        body = self.rhs if (full or self.display is None) else self.display
        parts = [_text(self.lhs, body)]
        if not full:
            for symbol, definition in self.where:
                relation = _text(symbol, definition)
                parts.append(("where\n" if "\n" in relation else "where ") + relation)
        return "\n".join(parts)

    def _repr_latex_(self) -> str:
        return "$\\displaystyle\n\\begin{aligned}\n" + self.latex() + "\n\\end{aligned}$"

    def __repr__(self) -> str:
        return f"Derivation(name={self.name!r}, reference={self.reference!r}, description={self.description!r})"


_UNICODE = (
    (r"\left", ""), (r"\right", ""), (r"\mathbb{E}", "E"), (r"\mathrm", ""), (r"\operatorname", ""),
    (r"\lVert", "‖"), (r"\rVert", "‖"), (r"\lim", "lim"), (r"\to", "→"), (r"\sqrt", "√"),
    (r"\theta", "θ"), (r"\Sigma", "Σ"), (r"\kappa", "κ"), (r"\eta", "η"), (r"\mu", "μ"),
    (r"\delta", "δ"), (r"\Delta", "Δ"), (r"\lambda", "λ"), (r"\tau", "τ"), (r"\epsilon", "ε"),
    (r"\beta", "β"), (r"\Psi", "Ψ"), (r"\Phi", "Φ"), (r"\zeta", "ζ"), (r"\pm", "±"), (r"\frac", ""),
    (r"\text", ""), (r"\,", " "), (r"\ ", " "), ("^{-1}", "⁻¹"), ("^{2}", "²"), ("^{+}", "⁺"),
    ("{", ""), ("}", ""), ("\\", ""),
)


def _plain_name(name: str) -> str:
    name = re.sub(r"\^\{([^{}]{2,})\}", r"^(\1)", name)
    for latex, plain in _UNICODE:
        name = name.replace(latex, plain)
    return name


def _plain_symbols(expression):
    """``expression`` with LaTeX-named symbols renamed plainly (relations rebuilt unevaluated)."""
    if isinstance(expression, sp.Equality):
        return sp.Eq(_plain_symbols(expression.lhs), _plain_symbols(expression.rhs), evaluate=False)
    renames = {}
    for atom in expression.atoms(sp.Symbol, sp.MatrixSymbol):
        name = atom.name if isinstance(atom, sp.Symbol) else str(atom.args[0])
        if "\\" in name or "{" in name:
            plain = _plain_name(name)
            renames[atom] = sp.Symbol(plain) if isinstance(atom, sp.Symbol) else sp.MatrixSymbol(plain, *atom.shape)
    return expression.xreplace(renames)


def _render(expression) -> str:
    if isinstance(expression, (sp.Symbol, sp.MatrixSymbol)):
        return expression.name if isinstance(expression, sp.Symbol) else str(expression.args[0])
    # SymPy's pretty printer drops '+' signs inside matrix sums (MatAdd): print those as strings.
    if expression.atoms(sp.MatAdd):
        return sp.sstr(expression)
    return sp.pretty(expression, use_unicode=True, wrap_line=False)


def _text(lhs, rhs) -> str:
    """Unicode rendering of ``lhs = rhs`` (or of ``rhs`` alone when ``lhs`` is None)."""
    right = _plain_symbols(rhs)
    if lhs is None:
        return _render(right)
    if isinstance(lhs, (sp.Symbol, sp.MatrixSymbol)):
        # A name is shown as written (the pretty printer would parse ^ and _ in it).
        name = lhs.name if isinstance(lhs, sp.Symbol) else str(lhs.args[0])
        if "\\" in name or "{" in name:
            if right.atoms(sp.MatAdd):
                return _plain_name(name) + " = " + _render(right)
            form = prettyForm(*prettyForm(_plain_name(name) + " = ").right(
                PrettyPrinter({"use_unicode": True, "wrap_line": False})._print(right)))
            return form.render(wrap_line=False)
    left = _plain_symbols(lhs)
    if isinstance(left, sp.Symbol) and not isinstance(right, (sp.MatrixBase, sp.MatrixExpr, sp.Equality)):
        return _render(sp.Eq(left, right, evaluate=False))
    left_text, right_text = _render(left), _render(right)
    separator = " =\n" if "\n" in left_text + right_text else " = "
    return left_text + separator + right_text


def _latex_relation(lhs, rhs, *, aligned: bool = True) -> str:
    right = sp.latex(rhs, **LATEX_SETTINGS)
    if lhs is None:
        return ("&" if aligned else "") + right
    left = sp.latex(lhs, **LATEX_SETTINGS)
    return f"{left} {'&' if aligned else ''}= {right}"
