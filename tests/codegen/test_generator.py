"""KernelSpec, the printers, and the render -> write -> load stages."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from ousym.codegen import KernelSpec, load_module, render_function, render_module, specs_hash, write_module
from ousym.codegen.printers import NumPyKernelPrinter, TorchKernelPrinter
from ousym.uniform import DampedCoshMinus

x, y, z = sp.symbols("x y z", positive=True)


def _spec(outputs, arguments=(("x", x), ("y", y)), name="kernel"):
    return KernelSpec(name=name, arguments=arguments, outputs=outputs, reference="test eq. (1)",
                      description="A test kernel.")


def test_spec_refuses_free_symbols_that_are_not_arguments():
    with pytest.raises(ValueError, match=r"not arguments: z"):
        _spec([("out", x + z)])


@pytest.mark.parametrize("bad", [
    dict(name="not an identifier"),
    dict(arguments=(("x", x), ("x", y))),
    dict(outputs=()),
    dict(outputs=(("m", sp.Matrix([x, y])),)),
])
def test_spec_refuses_malformed_contracts(bad):
    fields = dict(name="kernel", arguments=(("x", x), ("y", y)), outputs=(("out", x * y),),
                  reference="test")
    fields.update(bad)
    with pytest.raises(ValueError):
        KernelSpec(**fields)


def test_spec_hash_follows_the_expressions():
    assert specs_hash([_spec([("out", x * y)])]) == specs_hash([_spec([("out", x * y)])])
    assert specs_hash([_spec([("out", x * y)])]) != specs_hash([_spec([("out", x + y)])])


@pytest.mark.parametrize("printer", [NumPyKernelPrinter, TorchKernelPrinter])
def test_printers_refuse_piecewise_and_matrices(printer):
    with pytest.raises(TypeError, match="Piecewise"):
        printer().doprint(sp.Piecewise((x, x > 1), (y, True)))
    with pytest.raises(TypeError, match="matrix"):
        printer().doprint(sp.ImmutableMatrix([x, y]))


def test_printers_call_the_primitive_runtime_and_print_constants_as_floats():
    expr = sp.sqrt(2) * DampedCoshMinus(x, y, z) - sp.Rational(1, 3)
    for printer in (NumPyKernelPrinter, TorchKernelPrinter):
        text = printer().doprint(expr)
        assert "_prim.damped_cosh_minus(x, y, z)" in text
        assert "1.4142135623730951" in text and "0.3333333333333333" in text
        assert "sqrt(2)" not in text


def test_cse_runs_over_all_outputs_and_the_docstring_lists_arguments():
    shared = sp.exp(x * y + 1)
    text = render_function(_spec([("first", shared + x), ("second", shared * y)]), "numpy")
    assert text.count("numpy.exp") == 1  # computed once, used by both outputs
    assert "Arguments, in order: x, y." in text
    assert "Reference: test eq. (1)." in text


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_render_write_load_evaluates_the_expressions(tmp_path, backend):
    spec = _spec([("total", x + y**2), ("ratio", sp.log(x) / y)])
    text = render_module([spec], backend).replace("from .. import", "from numeric import")
    path = tmp_path / f"generated_{backend}.py"
    assert write_module(text, path)
    assert not write_module(text, path)  # unchanged text: not rewritten
    module = load_module(path)
    args = [np.array([1.5, 2.0]), np.array([3.0, 0.5])]
    if backend == "torch":
        torch = pytest.importorskip("torch")
        args = [torch.tensor(a) for a in args]
    total, ratio = module.kernel(*args)
    # x + y^2 on these values is exact (dyadic, few bits); log(x) / y: a libm log (within 4
    # ulps, numpy's and torch's may differ) and a correctly rounded division on either side
    eps = np.finfo(np.float64).eps
    np.testing.assert_array_equal(np.asarray(total), [1.5 + 9.0, 2.0 + 0.25])
    np.testing.assert_allclose(np.asarray(ratio), [np.log(1.5) / 3.0, np.log(2.0) / 0.5],
                               rtol=2 * (4 + 1) * eps)


def test_generated_primitives_match_sympy_at_30_digits_across_regimes():
    from numeric import _primitives_numpy as prim
    from ousym.uniform import DampedCoshPlus, DampedSinhc

    eps = np.finfo(float).eps
    gamma = sp.Rational(3, 2)
    for omega2 in (sp.Rational(1, 5), gamma**2, sp.Rational(9, 1)):  # over, critical, under
        alpha = sp.sqrt(abs(gamma**2 - omega2))
        for time in (sp.Rational(1, 1000), sp.Rational(1, 3), 4, 300):
            exact = DampedCoshMinus(gamma, omega2, time).evalf(30)
            value = prim.damped_cosh_minus(np.float64(gamma), np.float64(omega2), np.float64(time))
            # float64 inputs are exact here. The bound: relative to the largest entry of
            # the propagator, 1e-10 + 64 eps (1 + gamma t + alpha t) (decay and phase rounding)
            entries = (DampedCoshPlus(gamma, omega2, time), DampedSinhc(gamma, omega2, time),
                       omega2 * DampedSinhc(gamma, omega2, time), exact)
            scale = max(abs(float(e.evalf(30))) for e in entries)
            bound = (1e-10 + 64 * eps * float(1 + gamma * time + alpha * time)) * scale
            assert abs(float(exact) - float(value)) <= bound
