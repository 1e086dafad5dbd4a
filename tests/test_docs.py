"""Every reference to the theory document resolves: "docs/theory.md section N" names a section
that docs/theory.md has, in every tracked Python and Markdown file."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
THEORY = ROOT / "docs" / "theory.md"

#: "theory.md section 4", "theory.md sections 4-6", "``docs/theory.md`` sections 3 and 6", also
#: broken over a line.
REFERENCE = re.compile(
    r"theory\.md`*\s+sections?\s+(\d+(?:\s*(?:-|–|,|and|to)\s*\d+)*)", re.IGNORECASE
)
#: The project's old name for its theory notes, which it does not carry (built so that this
#: file does not match itself).
STALE = re.compile(r"\b" + "THEORY" + r"(?:\.md)?`*\s+sections?\b|" + "THEORY" + r"\.md")
HEADING = re.compile(r"^## (\d+)\. (\S.*)$", re.MULTILINE)
#: Directories that are not the project's own files (virtual environments, run outputs).
SKIPPED_DIRECTORIES = {".git", ".venv", "venv", "runs", "build", "dist", "node_modules", "__pycache__"}


def theory_sections(text: str) -> dict[int, str]:
    """Section number -> title of every ``## N. Title`` heading."""
    return {int(number): title for number, title in HEADING.findall(text)}


def referenced_sections(text: str) -> list[tuple[int, int, str]]:
    """(line, section, matched text) for every section a reference names; ranges "4-6" name
    every section in between."""
    found = []
    for match in REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        numbers = match.group(1)
        for part in re.split(r"\s*(?:,|and)\s*", numbers):
            bounds = [int(n) for n in re.split(r"\s*(?:-|–|to)\s*", part) if n]
            for section in range(bounds[0], bounds[-1] + 1):
                found.append((line, section, " ".join(match.group(0).split())))
    return found


def project_files() -> list[Path]:
    """The tracked ``.py`` and ``.md`` files (git), or every such file outside build and
    environment folders when this is not a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.py", "*.md"], cwd=ROOT, capture_output=True,
            check=True, timeout=60,
        ).stdout.decode().split("\0")
        files = [ROOT / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        files = []
        for directory, subdirectories, names in os.walk(ROOT):
            subdirectories[:] = [d for d in subdirectories if d not in SKIPPED_DIRECTORIES
                                 and not d.endswith(".egg-info")]
            files += [Path(directory) / n for n in names if n.endswith((".py", ".md"))]
    return [path for path in files if path.is_file()]


def test_theory_document_has_the_fixed_sections_in_order():
    sections = theory_sections(THEORY.read_text(encoding="utf-8"))
    assert list(sections) == list(range(1, 11)), sections
    assert sections[1].startswith("SGD with momentum")
    assert sections[6].startswith("Exact discrete-time theory")
    assert sections[9] == "Conventions" and sections[10] == "Numerical hazards"


def test_reference_parser_reads_single_sections_ranges_lists_and_line_breaks():
    text = ("see docs/theory.md section 4.\nand ``docs/theory.md`` sections 3 and 6, "
            "docs/theory.md sections 4-6; docs/theory.md section\n    11")
    assert [section for _, section, _ in referenced_sections(text)] == [4, 3, 6, 4, 5, 6, 11]
    assert referenced_sections(text)[-1][0] == 2  # where the reference starts
    assert STALE.search("the notes (" + "THEORY" + " section 4)")
    assert STALE.search("see " + "THEORY" + ".md")
    assert not STALE.search("the theory section of the README")


def test_every_reference_to_the_theory_document_names_a_section_it_has():
    sections = theory_sections(THEORY.read_text(encoding="utf-8"))
    files = project_files()
    assert any(path.name == "kernels.py" for path in files), "no project files found"
    missing, stale = [], []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        relative = path.relative_to(ROOT)
        missing += [f"{relative}:{line}: {matched!r} (no section {section})"
                    for line, section, matched in referenced_sections(text) if section not in sections]
        stale += [f"{relative}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
                  for m in STALE.finditer(text)]
    assert not missing, "references to sections docs/theory.md does not have:\n" + "\n".join(missing)
    assert not stale, ("references to theory notes the project does not carry (cite "
                       "docs/theory.md section N):\n" + "\n".join(stale))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
