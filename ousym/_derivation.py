"""The Derivation record: one derived object with its paper reference, printable as LaTeX.

Descriptions are one line of text whose mathematics is LaTeX between dollar signs, e.g.
``"stationary covariance of a mode's $(a, b) = (\\langle\\theta - \\mu, q\\rangle, \\langle v, q\\rangle)$"``.
The text outside the dollar signs is plain (no LaTeX markup; any character may appear and is
escaped for a LaTeX document); :meth:`Derivation.description_latex` gives the text-mode LaTeX
of a document and :meth:`Derivation.description_text` a Unicode rendering for the terminal. A
literal dollar sign is written ``\\$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.printing.pretty.stringpict import prettyForm

from ._latex import PaperPrettyPrinter, paper_latex, paper_pretty

__all__ = ["Derivation", "LATEX_SETTINGS", "description_latex", "description_text", "latex_text"]

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
        One line saying what it is, including its time unit (steps :math:`k` or
        :math:`t = \\eta k`), with its mathematics as LaTeX between dollar signs (module
        docstring).
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

    def description_latex(self) -> str:
        """The description as text-mode LaTeX (its math kept, its text escaped)."""
        return description_latex(self.description)

    def description_text(self) -> str:
        """The description as Unicode text for the terminal."""
        return description_text(self.description)

    def _repr_latex_(self) -> str:
        return "$\\displaystyle\n\\begin{aligned}\n" + self.latex() + "\n\\end{aligned}$"

    def __repr__(self) -> str:
        return f"Derivation(name={self.name!r}, reference={self.reference!r}, description={self.description!r})"


def _plain_name(name: str) -> str:
    """A symbol named in LaTeX, for the terminal."""
    return _plain_math(name)


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


def _text(lhs, rhs) -> str:
    """Unicode rendering of ``lhs = rhs`` (or of ``rhs`` alone when ``lhs`` is None)."""
    printer = PaperPrettyPrinter({"use_unicode": True, "wrap_line": False})
    form = printer._print(_plain_symbols(rhs))
    if lhs is not None:
        name = lhs.name if isinstance(lhs, sp.Symbol) else (
            str(lhs.args[0]) if isinstance(lhs, sp.MatrixSymbol) else "")
        if "\\" in name or "{" in name:
            # a name written in LaTeX is shown as written (pretty printing would parse ^ and _)
            left = prettyForm(_plain_name(name))
        else:
            left = printer._print(_plain_symbols(lhs))
        form = prettyForm(*left.right(" = ", form))
    return form.render(wrap_line=False)


def _latex_relation(lhs, rhs, *, aligned: bool = True) -> str:
    right = paper_latex(rhs, **LATEX_SETTINGS)
    if lhs is None:
        return ("&" if aligned else "") + right
    left = paper_latex(lhs, **LATEX_SETTINGS)
    return f"{left} {'&' if aligned else ''}= {right}"


# --- descriptions: text with LaTeX math between dollar signs ----------------------------------

_TEXT_ESCAPES = {
    "\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}", "{": r"\{", "}": r"\}", "<": r"\textless{}", ">": r"\textgreater{}",
    "$": r"\$", "|": r"\textbar{}",
}

_MATH_WORDS = {
    "theta": "θ", "eta": "η", "beta": "β", "lambda": "λ", "mu": "μ", "rho": "ρ", "sigma": "σ",
    "Sigma": "Σ", "gamma": "γ", "omega": "ω", "alpha": "α", "zeta": "ζ", "kappa": "κ", "tau": "τ",
    "xi": "ξ", "delta": "δ", "Delta": "Δ", "epsilon": "ε", "varepsilon": "ε", "Psi": "Ψ",
    "Phi": "Φ", "pi": "π", "langle": "⟨", "rangle": "⟩", "lVert": "‖", "rVert": "‖", "top": "ᵀ",
    "cdot": "·", "propto": "∝", "nabla": "∇", "to": "→", "infty": "∞", "le": "≤", "leq": "≤",
    "ge": "≥", "geq": "≥", "ne": "≠", "pm": "±", "mp": "∓", "approx": "≈", "ldots": "…",
    "dots": "…", "in": "∈", "otimes": "⊗", "sum": "Σ", "partial": "∂", "quad": " ", "qquad": " ",
}
_MATH_OPERATORS = {"cdot", "propto", "to", "le", "leq", "ge", "geq", "ne", "pm", "mp", "approx", "in",
                   "otimes", "quad", "qquad"}
_MATH_DROPPED = ("left", "right", "mathbb", "mathrm", "operatorname", "text", "mathcal", "bigl",
                 "bigr", "Bigl", "Bigr", "displaystyle", "tfrac", "dfrac")
_SUPERSCRIPTS = {"T": "ᵀ", "-1": "⁻¹", "2": "²", "3": "³", "k": "ᵏ", "+": "⁺", "-": "⁻", "*": "*"}


def _split_math(description: str) -> list[tuple[bool, str]]:
    """``[(is_math, piece), ...]`` split at unescaped dollar signs; raises ``ValueError`` for an
    unbalanced one."""
    pieces, current, math = [], [], False
    index = 0
    while index < len(description):
        char = description[index]
        if char == "\\" and description[index + 1:index + 2] == "$":
            current.append("$" if not math else r"\$")
            index += 2
            continue
        if char == "$":
            pieces.append((math, "".join(current)))
            current, math = [], not math
        else:
            current.append(char)
        index += 1
    if math:
        raise ValueError(f"description has an unbalanced $: {description!r}")
    pieces.append((False, "".join(current)))
    return [(is_math, piece) for is_math, piece in pieces if piece]


def latex_text(text: str) -> str:
    """Plain text escaped for LaTeX's text mode (every character prints as itself)."""
    return "".join(_TEXT_ESCAPES.get(char, char) for char in text)


def description_latex(description: str) -> str:
    """Text-mode LaTeX of a description: math pieces as ``$...$``, text pieces escaped."""
    return "".join("$" + piece + "$" if is_math else latex_text(piece)
                   for is_math, piece in _split_math(description))


def _plain_math(tex: str) -> str:
    """A Unicode reading of a short piece of LaTeX math (for terminals; not a LaTeX parser)."""
    def fraction(match):
        parts = [part if re.fullmatch(r"[\\\w{}^]*", part) else f"({part})" for part in match.groups()]
        return "/".join(parts)

    def superscript(match):
        power = match.group(1) or match.group(2)
        return _SUPERSCRIPTS.get(power, "^" + (power if len(power) == 1 else f"({power})"))

    tex = re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", tex)
    tex = re.sub(r"\^\{?\\top\}?", "ᵀ", tex)
    tex = re.sub(r"\^\{?\\ast\}?", "*", tex)
    for _ in range(3):  # nested superscripts, fractions and roots, innermost first
        tex = re.sub(r"\^\{([^{}]*)\}", superscript, tex)
        tex = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", fraction, tex)
        tex = re.sub(r"\\sqrt\{([^{}]*)\}", r"√(\1)", tex)

    def command(match):
        word, space = match.group(1), match.group(2) or ""
        if word in _MATH_DROPPED:
            return ""
        # a letter-like symbol joins what follows (eta k -> ηk); an operator keeps its space
        return _MATH_WORDS.get(word, word) + (space if word in _MATH_OPERATORS else "")

    tex = re.sub(r"\^\{([^{}]*)\}|\^(\w|[*+-])", superscript, tex)
    tex = re.sub(r"\\([A-Za-z]+)( (?=[A-Za-z]))?", command, tex)
    tex = tex.replace(r"\,", " ").replace(r"\;", " ").replace(r"\ ", " ").replace(r"\$", "$")
    tex = re.sub(r"_\{([^{}]*)\}", lambda m: "_" + (m.group(1) if m.group(1).isalnum() else f"({m.group(1)})"), tex)
    return tex.replace("{", "").replace("}", "").replace("\\", "")


def description_text(description: str) -> str:
    """A description for the terminal: its math read as Unicode."""
    return "".join(_plain_math(piece) if is_math else piece for is_math, piece in _split_math(description))
