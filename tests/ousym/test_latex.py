"""LaTeX that a paper can use: expressions in the paper's order and signs, descriptions whose
math is LaTeX, and a standalone document that pdflatex compiles without errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import sympy as sp

import ousym
from ousym._derivation import description_latex, description_text
from ousym._latex import _paper_factors, paper_latex
from ousym.__main__ import latex_document


@pytest.fixture(scope="module")
def catalogue():
    return ousym.expressions()


# --- the printer ----------------------------------------------------------------------------


def test_paper_forms_of_the_catalogue(catalogue):
    # the forms the paper prints (eq. 2, 44, F.2), which SymPy's own order scrambles
    assert (r"\Phi(\theta) &= \left(\theta - \mu\right)^{T} \left(H + \lambda I\right) "
            r"\left(\theta - \mu\right)") in catalogue["original_potential"].latex()
    assert r"\beta v - g_{B}(\theta) - \lambda \theta" in catalogue["sgd_update"].latex()
    assert r"\frac{1 - \beta}{\eta \left(1 + \beta\right)}" in catalogue["damping_rate"].latex()
    assert r"h = \rho + \lambda" in catalogue["drift_matrix_mode"].latex()
    assert r"\frac{2 \left(1 - \beta\right)}{\eta \left(1 + \beta\right)}" in catalogue["drift_matrix_mode"].latex()
    assert r"2 \left(1 + \beta\right) - \eta h" in catalogue["discrete_variance_ratio"].latex()
    assert r"A_{l} U_{l}^{-1} + U_{l}^{-1} A_{l}^{T}" in catalogue["lyapunov"].latex()
    assert r"g(\theta) + \lambda \theta + \left(1 - \beta\right) v" in catalogue["drift"].latex()


#: Written-out forms above this many operations take seconds each to print (the two closed
#: forms of eq. 13); the default suite prints the others, the slow suite all of them.
LARGE = 2500


def _check_signs_and_identity(catalogue, names):
    # the printer orders and groups only: the expressions it prints stay SymPy's, unchanged
    before = {name: sp.srepr(catalogue[name].rhs) for name in names}
    for name in names:
        derivation = catalogue[name]
        for text in (derivation.latex(), derivation.latex(full=True), derivation._repr_latex_()):
            assert " + -" not in text, (name, text)
            assert r"\mathbb{I}" not in text and r"- \left(- " not in text, (name, text)
    assert before == {name: sp.srepr(catalogue[name].rhs) for name in names}


def test_no_derivation_prints_a_sign_after_a_plus_or_sympys_identity(catalogue):
    small = [name for name, d in catalogue.items() if sp.count_ops(d.rhs) <= LARGE]
    assert "discrete_lag_covariance" in small and len(small) >= len(catalogue) - 4
    _check_signs_and_identity(catalogue, small)
    for name in set(catalogue) - set(small):  # their readable forms, at least
        assert " + -" not in catalogue[name].latex(), name


@pytest.mark.slow
def test_no_large_written_out_form_prints_a_sign_after_a_plus(catalogue):
    _check_signs_and_identity(catalogue, [n for n, d in catalogue.items() if sp.count_ops(d.rhs) > LARGE])


def test_terminal_text_uses_the_same_rules(catalogue):
    potential = catalogue["original_potential"].text()
    assert "Φ(θ) = (θ - μ) ⋅(H + λ⋅I)⋅(θ - μ)" in potential  # the T sits on the line above
    assert "β⋅v - g_B(θ) - λ⋅θ" in catalogue["sgd_update"].text()
    assert "where h = ρ + λ" in catalogue["drift_matrix_mode"].text()
    for name, derivation in catalogue.items():
        text = derivation.text()
        assert "Matrix([" not in text and not re.search(r"[^_^]\+ -", text) and "__(" not in text, (name, text)


def test_jupyter_rendering_uses_the_same_printer(catalogue):
    jupyter = catalogue["original_potential"]._repr_latex_()
    assert jupyter.startswith("$\\displaystyle") and jupyter.endswith("$")
    assert r"\left(\theta - \mu\right)^{T} \left(H + \lambda I\right)" in jupyter


def test_printer_rules_on_fresh_expressions():
    x, y, beta, lam, rho = sp.symbols("x y beta lambda rho")
    n = sp.Symbol("n", integer=True, positive=True)
    theta, mu, v = (sp.MatrixSymbol(name, n, 1) for name in ("theta", "mu", "v"))
    H = sp.MatrixSymbol("H", n, n)
    assert paper_latex(beta + 1) == r"1 + \beta"
    assert paper_latex(lam + rho) == r"\rho + \lambda"
    assert paper_latex(2 - 2 * beta) == r"2 \left(1 - \beta\right)"
    assert paper_latex(x * (2 - 2 * beta)) == r"2 x \left(1 - \beta\right)"
    assert paper_latex(-x - y) == "- x - y"
    # minus a matrix sum opens into its terms; a sum of transposes prints transposed
    assert paper_latex(v - (H * theta + lam * theta)) == r"v - H \theta - \lambda \theta"
    assert paper_latex((theta - mu).T * H * (theta - mu)) == (
        r"\left(\theta - \mu\right)^{T} H \left(\theta - \mu\right)")
    assert paper_latex(lam * sp.Identity(n) + H) == r"H + \lambda I"
    # a sum factor absorbs a product's minus sign, or prints negated when all its terms are
    N, S = sp.symbols("N S")
    assert paper_latex(-x / (beta - 1)) == r"\frac{x}{1 - \beta}"
    assert paper_latex((N - S) / (S * (N - 1))) == r"\frac{N - S}{S \left(N - 1\right)}"
    assert paper_latex(x * (-beta - 1)) == r"- x \left(1 + \beta\right)"
    assert sorted(paper_latex(x * (beta - 1) + y).split(" + ")) == [r"x \left(\beta - 1\right)", "y"]
    assert sorted(paper_latex(-x / (beta - 1) + y).split(" + ")) == [r"\frac{x}{1 - \beta}", "y"]


def test_rewritten_products_keep_their_value(catalogue):
    # the printer prints products through _paper_factors; it must be the same number
    products = []
    for derivation in catalogue.values():
        for node in sp.preorder_traversal(derivation.rhs):
            if isinstance(node, sp.Mul) and sp.count_ops(node) < 40:
                products.append(node)
    rewritten = [(m, _paper_factors(m)) for m in products]
    changed = [(m, r) for m, r in rewritten if r is not m]
    assert len(changed) > 10  # the rules do act on the catalogue
    checked = 0
    for original, printed in changed:
        symbols = sorted(original.free_symbols, key=str)
        if not all(isinstance(symbol, sp.Symbol) for symbol in symbols):
            continue
        # exact rationals in, 30 digits out: the two forms differ only by rounding, 1e-30 relative
        point = {symbol: sp.Rational(3 + i, 11 + 2 * i) for i, symbol in enumerate(symbols)}
        want, got = (sp.N(e.subs(point), 30) for e in (original, printed.doit()))
        assert abs(got - want) <= sp.Float("1e-25", 30) * max(1, abs(want)), (original, printed)
        checked += 1
    assert checked > 10


# --- descriptions -----------------------------------------------------------------------------


def test_descriptions_carry_their_math_as_latex(catalogue):
    for name, derivation in catalogue.items():
        latex = derivation.description_latex()  # raises on an unbalanced $
        text_parts = re.sub(r"\$[^$]*\$", "", latex)
        # outside math, <, >, ^ and _ appear only escaped (they print as other glyphs in text mode)
        assert not re.search(r"(?<!\\)[<>^_]", text_parts.replace(r"\textless{}", "")
                             .replace(r"\textgreater{}", "").replace(r"\textasciicircum{}", "")), (
            f"{name}: write the math of a description as LaTeX between dollar signs, e.g. "
            f"'$S_{{lm}}$' rather than 'S_lm' (ousym/_derivation.py); got {derivation.description!r}")
        plain = derivation.description_text()
        assert "$" not in plain and "\\" not in plain, (name, plain)
    assert "$t = \\eta k$" in catalogue["time_units"].description


def test_description_helpers():
    assert description_latex(r"a_b <x> 5% & $\theta_k^2$ ^") == (
        r"a\_b \textless{}x\textgreater{} 5\% \& $\theta_k^2$ \textasciicircum{}")
    assert description_text(r"$(\theta - \mu)^T H^{-1}$, $\frac{1}{2}\lVert v\rVert^2$, $\eta k$") == (
        "(θ - μ)ᵀ H⁻¹, 1/2‖v‖², ηk")
    with pytest.raises(ValueError, match="unbalanced"):
        description_latex("a $b")


# --- the document -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_document_compiles_with_pdflatex_without_errors(tmp_path, catalogue):
    source = tmp_path / "theory.tex"
    source.write_text(latex_document(catalogue.values()), encoding="utf-8")
    completed = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", source.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    log = (tmp_path / "theory.log").read_text(encoding="utf-8", errors="replace")
    errors = [line for line in log.splitlines() if line.startswith("!")]
    assert completed.returncode == 0 and not errors, errors or completed.stdout[-3000:]
    assert "Undefined control sequence" not in log
    assert "Missing character" not in log  # a glyph the fonts lack (text-mode < > in OT1)
    assert (tmp_path / "theory.pdf").stat().st_size > 10_000
