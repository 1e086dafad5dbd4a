"""The pipeline end to end on digits through the command line (in-process), and its errors."""

from __future__ import annotations

import json
import math

import pytest

from experiments.__main__ import main
from experiments.figures import FIGURES
from experiments.report import COMPARISON_KEYS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("linreg-digits")
    code = main(["linreg", "--dataset", "digits", "--steps", "600", "--seeds", "4",
                 "--sweep-steps", "300", "--sweep-fractions", "0.05", "0.3",
                 "--device", "cpu", "--out", str(out), "--no-progress"])
    return code, out


def test_digits_end_to_end_writes_a_complete_summary(digits_run, capsys):
    code, out = digits_run
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("settings", "seeds", "versions", "comparisons", "figures", "arrays"):
        assert key in summary
    assert summary["versions"]["numpy"] and summary["seeds"]["num_seeds"] == 4
    names = [row["name"] for row in summary["comparisons"]]
    # all seven comparisons are present
    for fragment in ("mean trajectory beta=0.9", "mean trajectory beta=0.99",
                     "E||delta||^2 [gaussian]", "E||delta||^2 [minibatch]",
                     "velocity autocorrelation", "E||Delta_k||^2", "exponent",
                     "equipartition", "Assumption 5", "measured Sigma", "2-D OU"):
        assert any(fragment in name for name in names), fragment
    for row in summary["comparisons"]:
        for key in COMPARISON_KEYS:
            assert key in row, (key, row["name"])
        for key in COMPARISON_KEYS[1:]:
            assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row)
    for name in FIGURES.values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    assert set(summary["figures"]) == set(FIGURES.values())
    for name in ("stationary.npz", "transient.npz", "sweep.npz", "report.md"):
        assert (out / name).stat().st_size > 0
    assert "| comparison | predicted | measured |" in (out / "report.md").read_text()


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["linreg", "--dataset", "cifar10", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["linreg", "--dataset", "digits", "--beta", "1.5", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    assert "beta must be in [0, 1)" in capsys.readouterr().err
