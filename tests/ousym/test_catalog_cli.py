"""ousym.expressions() and the `python -m ousym` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sympy as sp

import ousym
import ousym.symbols as symbols
from ousym.__main__ import latex_document, main

REQUIRED = [
    "drift", "diffusion", "kappa", "mu", "Q", "U", "modified_loss", "probability_current", "damping_ratio",
    "mean_position", "mean_velocity", "propagator", "transient_covariance", "velocity_correlation",
    "instantaneous_speed", "global_displacement", "equipartition", "discrete_velocity_variance",
    "discrete_position_variance", "discrete_global_displacement",
]

#: Every symbol a derived object may contain: those of ousym.symbols (display-only ones excluded).
DISPLAY_ONLY = {"gamma_sym", "omega_sym", "alpha_sym", "h_sym"}
ALLOWED = {
    value for name, value in vars(symbols).items()
    if isinstance(value, (sp.Symbol, sp.MatrixSymbol)) and name not in DISPLAY_ONLY
}


@pytest.fixture(scope="module")
def catalogue():
    return ousym.expressions()


def test_every_required_name_is_present_with_reference_and_description(catalogue):
    assert set(REQUIRED) <= set(catalogue)
    for name, derivation in catalogue.items():
        assert derivation.name == name
        assert any(tag in derivation.reference for tag in ("eq. (", "appendix", "Assumption", "beyond the paper"))
        assert derivation.description and "\n" not in derivation.description


def test_derived_objects_use_only_the_declared_symbols(catalogue):
    # No placeholder Dummy or display abbreviation may leak into a derived object.
    for name, derivation in catalogue.items():
        free = derivation.rhs.free_symbols
        stray = {s for s in free if s not in ALLOWED}
        assert not stray, (name, stray)
        assert not derivation.rhs.atoms(sp.Dummy), name


def test_time_units_are_stated(catalogue):
    assert catalogue["time_units"].rhs == symbols.eta * symbols.k
    assert catalogue["velocity_correlation_steps"].rhs.has(symbols.k)
    assert not catalogue["global_displacement"].rhs.has(sp.Sum)


def test_latex_renders_for_every_derivation(catalogue):
    for name, derivation in catalogue.items():
        text = derivation.latex()
        assert text.strip() and text.count("{") == text.count("}"), name
        jupyter = derivation._repr_latex_()
        assert jupyter.startswith("$") and jupyter.endswith("$")
    assert r"\zeta" in catalogue["damping_ratio"].latex()
    assert r"e^{-A_l t}" in catalogue["propagator"].latex()


def test_equation_derivations_render_as_equations(catalogue):
    assert isinstance(catalogue["kappa"].expression, sp.Eq)
    assert catalogue["kappa"].expression.rhs == symbols.S * (1 - symbols.beta**2)


def test_cli_lists_every_name(capsys, catalogue):
    assert main(["latex", "--list"]) == 0
    listed = capsys.readouterr().out
    for name, derivation in catalogue.items():
        assert name in listed and derivation.reference in listed


def test_cli_prints_latex_for_named_derivations(capsys):
    assert main(["latex", "damping_ratio", "kappa"]) == 0
    out = capsys.readouterr().out
    assert r"\zeta" in out and r"\kappa" in out


def test_cli_unknown_name_exits_2_with_the_closest_names(capsys):
    assert main(["latex", "propagatr"]) == 2
    err = capsys.readouterr().err
    assert "propagatr" in err and "propagator" in err


def test_cli_writes_a_standalone_document(tmp_path, capsys, catalogue):
    target = tmp_path / "theory.tex"
    assert main(["latex", "--all", "--document", str(target)]) == 0
    text = target.read_text()
    assert text.startswith(r"\documentclass") and r"\usepackage{amsmath" in text
    assert text.count(r"\subsection*") == len(catalogue)
    assert text.count(r"\begin{aligned}") == text.count(r"\end{aligned}") == len(catalogue)
    assert text.rstrip().endswith(r"\end{document}")
    assert latex_document(catalogue.values()) == text


def test_cli_prints_the_theory_as_text(capsys):
    assert main(["theory"]) == 0
    out = capsys.readouterr().out
    assert "propagator" in out and "eq. (13)" in out


@pytest.mark.parametrize("argv", [["--help"], ["latex", "--help"], ["theory", "--help"], ["codegen", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_cli_usage_errors_exit_2(capsys):
    for argv in (["latex"], ["latex", "--document", "x.tex"], ["latex", "--list", "kappa"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


def test_import_is_sympy_only_and_lazy_attributes_resolve():
    code = (
        "import sys, ousym\n"
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, 'ousym imported numpy/torch'\n"
        "from ousym.oscillator import propagator\n"
        "from ousym.discrete import discrete_global_displacement_mode\n"
        "import ousym.oscillator as o\n"
        "try:\n    o.no_such_thing\nexcept AttributeError as e:\n    assert 'no_such_thing' in str(e)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
        "assert 'numpy' not in sys.modules\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
