"""``summary.json`` and ``report.md`` of a linear-regression run, and the printed table.

``summary.json`` schema: ``experiment``, ``dataset``, ``data`` (provenance), ``settings``,
``seeds``, ``burn_in``, ``versions`` (package versions), ``figures`` and ``arrays`` (file names
in the run folder), and ``comparisons``: a list of objects with ``name``, ``predicted``,
``measured``, ``standard_error``, ``relative_error``, ``z_score`` and ``details``. Non-finite
numbers are written as ``null`` (strict JSON).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["COMPARISON_KEYS", "format_table", "to_jsonable", "write_outputs"]

COMPARISON_KEYS = ("name", "predicted", "measured", "standard_error", "relative_error")


def to_jsonable(value):
    """NumPy scalars and arrays to Python, non-finite floats to None, recursively."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def _fmt(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return f"{value:.{digits}g}"


def format_table(comparisons) -> str:
    """The comparison table as GitHub markdown (also what the CLI prints)."""
    lines = ["| comparison | predicted | measured | s.e. | rel. error | z |",
             "|---|---|---|---|---|---|"]
    for row in comparisons:
        lines.append(f"| {row['name']} | {_fmt(row['predicted'])} | {_fmt(row['measured'])} "
                     f"| {_fmt(row['standard_error'], 2)} | {_fmt(row['relative_error'], 2)} "
                     f"| {_fmt(row.get('z_score'), 2)} |")
    return "\n".join(lines)


def write_outputs(summary: dict, out_dir) -> None:
    """Write ``summary.json`` and ``report.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    summary = to_jsonable(summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    settings = summary["settings"]
    text = [
        f"# Linear regression on {summary['dataset']}: theory against SGD",
        "",
        f"eta = {_fmt(settings['eta'])}, beta = {settings['beta']}, lam = {settings['lam']}, "
        f"S = {settings['batch_size']} (effective {_fmt(settings['effective_batch_size'])}), "
        f"noise = {settings['noise']}, sigma^2 = {_fmt(settings['sigma2'])}, "
        f"{summary['seeds']['num_seeds']} seeds, burn-in {summary['burn_in']} steps.",
        "Predicted: exact discrete theory unless the row says SDE; standard errors across "
        "independent seeds; z = (measured - predicted) / s.e.",
        "",
        format_table(summary["comparisons"]),
        "",
    ]
    text += [f"![{name}]({name})" for name in summary.get("figures", [])]
    (out_dir / "report.md").write_text("\n".join(text) + "\n")
