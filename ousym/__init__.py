"""ousym: the symbolic theory of SGD's limiting dynamics (Kunin et al. 2023), in SymPy.

This package only derives; it never imports numpy or torch. Numeric kernels generated from
these derivations live in the separate ``numeric`` package.
"""

from __future__ import annotations

__version__ = "0.1.0"

# --- public API (symbolic theory) ---------------------------------------------------------
# (filled in by the derivation modules)
