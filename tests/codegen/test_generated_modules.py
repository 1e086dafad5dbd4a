"""The committed generated modules: current, deterministic, with their header; the CLI."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import sympy as sp

from ousym.codegen import cli
from ousym.codegen import render as render_module_stage
from ousym.codegen.generate import GENERATED_DIR, check_all, generated_paths, render_all

REPO = Path(__file__).resolve().parents[2]


def test_committed_generated_modules_are_current():
    stale = check_all()
    assert stale == [], f"stale: {stale}; run `python -m ousym codegen`"


def test_headers_say_generated_do_not_edit_with_versions_and_hash():
    for backend, path in generated_paths().items():
        head = path.read_text().splitlines()[:10]
        text = "\n".join(head)
        assert "GENERATED, DO NOT EDIT" in text
        assert "sympy: " in text  # information only, not part of the staleness check
        assert "spec hash: " in text
        assert "source hash: " in text
        assert backend in head[0]


def test_rendering_is_deterministic_across_hash_seeds():
    # a fresh interpreter with another hash seed renders byte-identical text (the check's premise)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys; from ousym.codegen.cli import main; sys.exit(main(['--check']))"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_check_exits_nonzero_on_a_stale_module_and_says_how_to_regenerate(tmp_path, capsys):
    rendered = render_all(tmp_path)
    for path, text in rendered.items():
        path.write_text(text)
    args = argparse.Namespace(check=True, directory=tmp_path)
    assert cli.run(args) == 0
    first = next(iter(rendered))
    first.write_text(first.read_text() + "\n# edited by hand\n")
    assert cli.run(args) == 1
    assert "python -m ousym codegen" in capsys.readouterr().err
    # writing repairs it
    assert cli.run(argparse.Namespace(check=False, directory=tmp_path)) == 0
    assert cli.run(args) == 0
    assert GENERATED_DIR != tmp_path


def test_check_passes_under_another_sympy_version(monkeypatch):
    # A SymPy release after the one that printed the committed kernels must not make them stale:
    # the check reads the spec hash (specs + generator version) and the source hash, not the
    # version. Faking the version also makes the fresh rendering carry another header line,
    # so the byte-for-byte comparison cannot be what passes here.
    committed = {path: path.read_text() for path in generated_paths().values()}
    assert all(f"sympy: {sp.__version__}\n" in text for text in committed.values())
    monkeypatch.setattr(sp, "__version__", "99.0.0")
    assert render_module_stage.sp.__version__ == "99.0.0"
    assert all("sympy: 99.0.0\n" in text for text in render_all().values())
    assert check_all() == []


def test_check_under_another_sympy_version_still_sees_a_hand_edit(tmp_path, monkeypatch):
    rendered = render_all(tmp_path)
    for path, text in rendered.items():
        path.write_text(text)
    monkeypatch.setattr(sp, "__version__", "99.0.0")
    assert check_all(tmp_path) == []
    first = next(iter(rendered))
    first.write_text(first.read_text().replace("return (", "return  (", 1))
    assert check_all(tmp_path) == [first]


def test_check_under_another_sympy_version_still_sees_changed_specs(tmp_path, monkeypatch):
    rendered = render_all(tmp_path)
    for path, text in rendered.items():
        # the header of a module generated from other specs (or another generator version)
        path.write_text(text.replace("spec hash: ", "spec hash: 0", 1))
    monkeypatch.setattr(sp, "__version__", "99.0.0")
    assert sorted(check_all(tmp_path)) == sorted(rendered)
