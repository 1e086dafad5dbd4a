r"""Printing in the paper's notation: sums in the paper's order and signs, the identity as ``I``.

SymPy stores a sum in a canonical order of its own and prints it that way: ``\beta + 1``,
``\lambda + \rho``, ``\lambda I + H``; it distributes a transpose over a sum
(``(-\mu^T + \theta^T)``) and prints a negated matrix term after a plus sign (``+ - \lambda\theta``).
:class:`PaperLatexPrinter` (LaTeX) and :class:`PaperPrettyPrinter` (Unicode, for the terminal)
print every sum, scalar or matrix, by one rule instead:

* terms that carry a minus sign come after the others and are printed with ``-``;
* a term that is minus a matrix sum is opened into its terms (``v - (g + \lambda\theta)`` prints as
  ``v - g - \lambda\theta``);
* among terms of one sign, numbers come first, then terms by their leading symbol in the
  paper's order of notation (:data:`SYMBOL_ORDER`: gradient, Hessian, position, velocity,
  ..., eigenvalue, weight decay), then the others in SymPy's order; a matrix product is
  placed by its first matrix, and factors that are themselves sums do not lead a term;
* terms of a scalar sum that share an integer factor print as that factor times their sum
  (``2 - 2\beta`` as ``2 (1 - \beta)``);
* in a product, a sum factor whose terms are all negative prints negated, and one whose
  constant alone is negative absorbs the product's minus sign (``-x/(\beta - 1)`` as
  ``x/(1 - \beta)``; ``N - 1`` with no sign to absorb stays as it is);
* a matrix sum whose terms are all transposes prints as the transpose of the sum.

So :math:`(\theta - \mu)^\top(H + \lambda I)(\theta - \mu)`, :math:`1 + \beta`, :math:`\rho + \lambda` and
:math:`\beta v - g_B(\theta) - \lambda\theta` print as the paper writes them. This module only prints: it
changes no expression.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import precedence_traditional
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm, stringPict

__all__ = ["PaperLatexPrinter", "PaperPrettyPrinter", "paper_latex", "paper_pretty", "SYMBOL_ORDER"]

#: Symbol names in the order the paper's formulas list them; a term of a sum is placed by its
#: first symbol in this list (names as in :mod:`ousym.symbols`).
SYMBOL_ORDER: tuple[str, ...] = (
    r"g_{B}(\theta)", r"g(\theta)", "A", "A_l", "H", r"\Sigma(\theta)", "Sigma", "M", "theta", "v", "G", "mu",
    "a", "b", "rho", "lambda",
    # the same names as the terminal rendering spells them
    "g_B(θ)", "g(θ)", "Σ(θ)",
)
_RANK = {name: position for position, name in enumerate(SYMBOL_ORDER)}
_RANK.update({"g_B(θ)": _RANK[r"g_{B}(\theta)"], "g(θ)": _RANK[r"g(\theta)"], "Σ(θ)": _RANK[r"\Sigma(\theta)"]})


def _name(atom) -> str:
    return atom.name if isinstance(atom, sp.Symbol) else str(atom.args[0])


def _is_matrix(expr) -> bool:
    return isinstance(expr, MatrixExpr) or getattr(expr, "is_Matrix", False)


def _negative_coefficient(coefficient) -> bool:
    """Whether a scalar prints with a minus sign: the numeric factor of its printed form is
    negative (``-lambda``, ``-2 x``, ``x/(beta - 1)``, which prints as ``-x/(1 - beta)``; not
    ``1 - beta``, whose sign is a matter of order)."""
    if coefficient.is_Mul:
        coefficient = _paper_factors(coefficient)
    return bool(coefficient.as_coeff_Mul()[0].is_negative)


def _signed(term) -> tuple[bool, sp.Basic]:
    """``(negative, magnitude)`` with ``term == -magnitude`` when ``negative``."""
    if isinstance(term, sp.MatMul):
        coefficient, matrices = term.as_coeff_matrices()
        if _negative_coefficient(coefficient):
            coefficient = -coefficient
            if coefficient == 1:
                magnitude = matrices[0] if len(matrices) == 1 else sp.MatMul(*matrices)
            else:
                magnitude = sp.MatMul(coefficient, *matrices)
            return True, magnitude
        return False, term
    if not _is_matrix(term) and _negative_coefficient(term):
        return True, -term
    return False, term


def _flat_terms(terms, negative: bool = False) -> list[tuple[bool, sp.Basic]]:
    """The signed terms of a sum, with nested matrix sums (and minus a matrix sum) opened."""
    flat = []
    for term in terms:
        sign, magnitude = _signed(term)
        sign = sign != negative
        if isinstance(magnitude, sp.MatAdd):
            flat += _flat_terms(magnitude.args, sign)
        else:
            flat.append((sign, magnitude))
    return flat


def _all_transposes(terms) -> bool:
    return len(terms) > 1 and all(isinstance(magnitude, sp.Transpose) for _, magnitude in terms)


def _leading_rank(term) -> int:
    """Where a term goes among terms of its sign: numbers first, then by leading symbol."""
    if getattr(term, "is_number", False):
        return -1
    factors = list(term.args) if isinstance(term, (sp.Mul, sp.MatMul)) else [term]
    leading = [f for f in factors if not isinstance(f, (sp.Add, sp.MatAdd))] or factors
    matrices = [f for f in leading if _is_matrix(f)]
    if matrices:  # a matrix product is placed by its first matrix (its scalars commute)
        leading = matrices[:1]
    ranks = [_RANK.get(_name(atom), len(_RANK))
             for factor in leading for atom in factor.atoms(sp.Symbol, sp.MatrixSymbol)]
    return min(ranks, default=len(_RANK))


def _integer_factor(term) -> int:
    """The integer factor :math:`|c| > 1` of a scalar term ``c x`` (or of a number), else 1."""
    coefficient = term.as_coeff_Mul()[0]
    if coefficient.is_Integer and abs(coefficient) > 1:
        return int(abs(coefficient))
    return 1


def _ordered_sum(terms, *, group_integer_factors: bool) -> list[tuple[bool, sp.Basic]]:
    """Signed terms of a sum in the paper's order (module docstring): ``(negative, term)``.

    With ``group_integer_factors``, scalar terms that share an integer factor come back as one
    unevaluated product of that factor and their sum (``2 (1 + beta)``)."""
    items = []  # (negative, rank, position, term)
    grouped: dict[int, list[tuple[bool, sp.Basic]]] = {}
    for position, (negative, magnitude) in enumerate(terms):
        factor = _integer_factor(magnitude) if group_integer_factors else 1
        if factor > 1 and sum(_integer_factor(m) == factor for _, m in terms) > 1:
            grouped.setdefault(factor, []).append((negative, magnitude / factor))
            continue
        items.append((negative, _leading_rank(magnitude), position, magnitude))
    for factor, members in grouped.items():
        group_negative = all(negative for negative, _ in members)
        inner = sp.Add(*(-m if negative != group_negative else m for negative, m in members))
        lead = min(_leading_rank(m) for _, m in members)
        items.append((group_negative, lead, -1, sp.Mul(sp.Integer(factor), inner, evaluate=False)))
    items.sort(key=lambda item: item[:3])
    return [(negative, term) for negative, _, _, term in items]


def _negated_reads_better(total) -> str:
    """How a scalar sum reads negated: ``"always"`` when every term is negative
    (``-beta - 1``), ``"to cancel a sign"`` when its constant is negative and every other term
    positive (``beta - 1``: better as ``-(1 - beta)`` when the product has a minus sign to
    absorb, but ``N - 1`` stays as it is otherwise), else ``"never"``."""
    constant, rest = total.as_coeff_Add()
    others = [_negative_coefficient(term) for term in sp.Add.make_args(rest)]
    if all(others) and constant <= 0:
        return "always"
    if constant.is_negative and not any(others):
        return "to cancel a sign"
    return "never"


def _paper_factors(expr):
    """``expr`` (a product) rewritten for printing, or ``expr`` itself: a sum factor that reads
    better negated is negated (``-x/(beta - 1)`` as ``x/(1 - beta)``, ``x (-beta - 1)`` as
    ``-x (1 + beta)``) and the integer content of a sum factor joins the numbers in front
    (``x (2 - 2 beta)`` as ``2 x (1 - beta)``); unevaluated, so the value is unchanged."""
    coefficient, parts, changed = sp.Integer(1), [], False
    for factor in expr.args:
        if factor.is_Number:
            coefficient *= factor
            continue
        base, exponent = (factor.base, factor.exp) if factor.is_Pow else (factor, sp.Integer(1))
        if base.is_Add and exponent.is_Integer:
            if _negated_reads_better(base) == "always":
                base, coefficient, changed = -base, coefficient * (-1) ** exponent, True
            parts.append([base, exponent])
        else:
            parts.append([factor, None])
    if coefficient.is_negative:  # one sum may absorb the sign: -x/(beta - 1) = x/(1 - beta)
        for part in parts:
            base, exponent = part
            if exponent is not None and exponent % 2 and _negated_reads_better(base) == "to cancel a sign":
                part[0], coefficient, changed = -base, -coefficient, True
                break
    factors = []
    for base, exponent in parts:
        if exponent is None:
            factors.append(base)
            continue
        content, primitive = base.primitive()
        if content.is_Integer and content > 1:
            base, coefficient, changed = primitive, coefficient * content**exponent, True
        factors.append(sp.Pow(base, exponent, evaluate=False) if exponent != 1 else base)
    if not changed:
        return expr
    if coefficient == 1:
        return sp.Mul(*factors, evaluate=False)
    return sp.Mul(coefficient, *factors, evaluate=False)


def _without_sign(expr) -> tuple[bool, list]:
    """``(negative, args)`` of a matrix product, the minus sign taken off its coefficient."""
    args = list(expr.args)
    negative = _negative_coefficient(expr.as_coeff_matrices()[0])
    if negative:
        if args[0] == -1:
            args = args[1:]
        else:
            args[0] = -args[0]
    return negative, args


class PaperLatexPrinter(LatexPrinter):
    """SymPy's LaTeX printer with sums in the paper's order and signs (module docstring) and the
    identity matrix printed ``I``."""

    def _print_Identity(self, expr) -> str:
        return "I"

    def _print_Add(self, expr, order=None) -> str:
        if _is_matrix(expr):
            return self._print_signed_sum(_flat_terms(expr.args))
        return self._print_signed_sum(_flat_terms(self._as_ordered_terms(expr, order=order)),
                                      group_integer_factors=True)

    _print_MatAdd = _print_Add

    def _print_Mul(self, expr) -> str:
        # a factor 2 - 2 beta prints as 2 (1 - beta) with the 2 among the numbers in front
        return super()._print_Mul(_paper_factors(expr))

    def _print_MatMul(self, expr) -> str:
        negative, args = _without_sign(expr)

        def factor(x) -> str:
            if isinstance(x, sp.MatAdd) and _all_transposes(_flat_terms(x.args)):
                return self._print(x)  # (sum)^T needs no further parentheses
            if isinstance(x, sp.Mul) and not isinstance(x, sp.MatMul):
                return self._print(x)
            return self.parenthesize(x, precedence_traditional(expr), False)

        return ("- " if negative else "") + " ".join(map(factor, args))

    def _print_signed_sum(self, terms, *, group_integer_factors: bool = False) -> str:
        """``terms``: (negative, magnitude) pairs, printed in the paper's order."""
        if _all_transposes(terms):
            inner = self._print_signed_sum([(sign, m.arg) for sign, m in terms])
            return r"\left(%s\right)^{T}" % inner
        tex = ""
        for position, (negative, term) in enumerate(_ordered_sum(terms, group_integer_factors=group_integer_factors)):
            if position == 0:
                tex += "- " if negative else ""
            else:
                tex += " - " if negative else " + "
            term_tex = self._print(term)
            if isinstance(term, sp.MatAdd) or self._needs_add_brackets(term):
                term_tex = r"\left(%s\right)" % term_tex
            tex += term_tex
        return tex


class PaperPrettyPrinter(PrettyPrinter):
    """SymPy's Unicode printer with the same rules as :class:`PaperLatexPrinter`."""

    def _print_Identity(self, expr):
        return prettyForm("I")

    def _print_ZeroMatrix(self, expr):
        return prettyForm("0")

    def _print_Symbol(self, expr, bold_name=False):
        # a name that is itself a formula ("e^(-A_l t)", "C(η k)") prints as written: SymPy
        # would read its ^ and _ as super- and subscripts
        if any(char in expr.name for char in " ()[]"):
            return prettyForm(expr.name)
        return super()._print_Symbol(expr, bold_name)

    def _print_Add(self, expr, order=None):
        if _is_matrix(expr):
            return self._pretty_signed_sum(_flat_terms(expr.args))
        return self._pretty_signed_sum(_flat_terms(self._as_ordered_terms(expr, order=order)),
                                       group_integer_factors=True)

    _print_MatAdd = _print_Add

    def _print_Mul(self, product):
        return super()._print_Mul(_paper_factors(product))

    def _print_MatMul(self, expr):
        negative, args = _without_sign(expr)
        forms = []
        for arg in args:
            if isinstance(arg, sp.MatAdd) and _all_transposes(_flat_terms(arg.args)):
                forms.append(self._print(arg))
            else:
                forms.append(self._parenthesized(arg) if len(args) > 1 else self._print(arg))
        form = prettyForm.__mul__(*forms) if len(forms) > 1 else forms[0]
        if negative:
            form = prettyForm(*stringPict.next("-", form), binding=prettyForm.NEG)
        return form

    def _parenthesized(self, arg):
        form = self._print(arg)
        if isinstance(arg, (sp.Add, sp.MatAdd)) and not (
                isinstance(arg, sp.MatAdd) and _all_transposes(_flat_terms(arg.args))):
            form = prettyForm(*form.parens())
        return form

    def _pretty_signed_sum(self, terms, *, group_integer_factors: bool = False):
        if _all_transposes(terms):
            inner = self._pretty_signed_sum([(sign, m.arg) for sign, m in terms])
            return prettyForm(*inner.parens()) ** prettyForm("T")
        pieces = []
        for position, (negative, term) in enumerate(_ordered_sum(terms, group_integer_factors=group_integer_factors)):
            form = self._parenthesized(term)
            if position == 0:
                if negative:
                    pieces.append("-" if form.height() == 1 else "- ")
            else:
                pieces.append(" - " if negative else " + ")
            pieces.append(form)
        return prettyForm(*stringPict.next(*pieces), binding=prettyForm.ADD)


def paper_latex(expr, **settings) -> str:
    """LaTeX of ``expr`` by :class:`PaperLatexPrinter` (``settings`` as for :func:`sympy.latex`)."""
    return PaperLatexPrinter(settings).doprint(expr)


def paper_pretty(expr, **settings) -> str:
    """Unicode text of ``expr`` by :class:`PaperPrettyPrinter` (``settings`` as for
    :func:`sympy.pretty`)."""
    return PaperPrettyPrinter(settings).doprint(expr)
