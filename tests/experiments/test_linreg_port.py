"""The linear-regression experiment on the shared types (Spectrum, the trajectory format, the
comparison functions) reproduces the numbers of its earlier, array-based implementation.

The reference files were written by the earlier code with the same settings and seeds. The
SGD runs are the same computation (same directions, same random streams), so the measured
numbers agree to rounding; the predictions now sum over a Spectrum (the top eigenpairs of
``linear_regression_eigenpairs`` plus the other eigenvalues from ``eigvalsh`` with their
multiplicities as weights) instead of the repeated eigenvalues of ``eigh``: two LAPACK routines
on the same matrix agree to a few ulps of the largest eigenvalue, and every prediction is a
smooth, well-conditioned sum of those, so relative differences stay near 1e-13; 1e-9 bounds
them with room on any BLAS.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import numeric
from experiments.experiment import LinregConfig, run_linreg

DATA = Path(__file__).parent / "data"
RTOL = 1e-9  # see the module docstring


def _run(reference, tmp_path):
    settings = reference["config"]
    config = LinregConfig(dataset=settings["dataset"], steps=settings["steps"],
                          seeds=settings["seeds"], sweep_steps=settings["sweep_steps"],
                          sweep_fractions=tuple(settings["sweep_fractions"]),
                          transient_betas=tuple(settings["transient_betas"]),
                          seed=settings["seed"], noise=settings["noise"],
                          burn_in=reference["burn_in"])  # the earlier rule's burn-in
    return run_linreg(config, tmp_path, progress=False, log=lambda *args: None)


def _check(reference, summary):
    rows = {row["name"]: row for row in summary["comparisons"]}
    assert summary["burn_in"] == reference["burn_in"]
    for expected in reference["comparisons"]:
        row = rows[expected["name"]]  # every earlier row is still there, under its name
        for key in ("predicted", "measured", "standard_error"):
            np.testing.assert_allclose(row[key], expected[key], rtol=RTOL, atol=0,
                                       err_msg=f"{expected['name']}: {key}")


def test_ported_linreg_reproduces_its_summary_on_digits(tmp_path):
    reference = json.loads((DATA / "linreg_digits_reference_gaussian.json").read_text())
    summary = _run(reference, tmp_path)
    _check(reference, summary)
    # the runs are on disk in the trajectory format, seeds as the second axis
    stationary = numeric.load_trajectory(tmp_path / "trajectories" / "stationary")
    assert stationary.manifest["axis"]["name"] == "seeds"
    assert stationary.velocity_projection.shape[1:] == (4, 30)
    transient = numeric.load_trajectory(tmp_path / "trajectories" / "transient_beta0.9")
    assert transient.manifest["modes"] == [0, 10, 20]  # the distinct top eigenvalues


@pytest.mark.slow
def test_ported_linreg_reproduces_its_summary_with_real_minibatches(tmp_path):
    reference = json.loads((DATA / "linreg_digits_reference_minibatch.json").read_text())
    _check(reference, _run(reference, tmp_path))
