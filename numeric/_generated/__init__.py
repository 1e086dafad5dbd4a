"""Kernels generated from the SymPy theory by ``python -m ousym codegen``; do not edit.

``numpy_kernels.py`` and ``torch_kernels.py`` are written by ``ousym.codegen`` from the specs in
``ousym/codegen/kernels.py``; a test fails when they are stale. Use the public functions of
``numeric`` (``numeric/kernels.py``), which validate and dispatch to these.
"""
