"""ousym: the symbolic theory of SGD's limiting dynamics (Kunin et al. 2023), in SymPy.

This package only derives; it never imports numpy or torch. Numeric kernels generated from
these derivations live in the separate ``numeric`` package.

Start with :func:`expressions`: an ordered mapping ``name -> Derivation`` of every derived
object with its paper reference; each renders as LaTeX in Jupyter. The modules hold the same
objects as plain SymPy: :mod:`ousym.symbols`, :mod:`ousym.langevin` (eq. 2-3),
:mod:`ousym.linreg` (eq. 4, 41-42), :mod:`ousym.decomposition` (eq. 19, 22-25, 43),
:mod:`ousym.potentials` (eq. 8-11, 38-47), :mod:`ousym.oscillator` (appendix F.2, eq. 26),
:mod:`ousym.stationary` (appendix G, eq. 12-13) and :mod:`ousym.discrete` (the exact
discrete-time theory). Command line: ``python -m ousym --help``.
"""

from __future__ import annotations

from ._catalog import expressions as expressions
from ._derivation import Derivation as Derivation
from .decomposition import KwonAo as KwonAo
from .decomposition import kwon_ao_decomposition as kwon_ao_decomposition
from .decomposition import solve_lyapunov as solve_lyapunov
from .decomposition import symmetric_drift_decomposition as symmetric_drift_decomposition

__version__ = "0.1.0"

# --- public API (symbolic theory) ---------------------------------------------------------
__all__ = [
    "Derivation",
    "KwonAo",
    "expressions",
    "kwon_ao_decomposition",
    "solve_lyapunov",
    "symmetric_drift_decomposition",
    "__version__",
]
