"""NumPy functions and arrays meeting staged tensors."""
import numpy as np
import pytest

import lantern
from lantern.testing import check_staged


def test_numpy_ufuncs_and_arrays_on_staged_tensors(rng):
    w = rng.standard_normal((3, 3))

    def f(x):
        # ndarray on the left of an operator, NumPy ufuncs called on tensors
        return np.exp(x) + w @ x - np.maximum(x, 0.5) * (np.ones(3) < x)

    x = rng.standard_normal(3)
    expected = np.exp(x) + w @ x - np.maximum(x, 0.5) * (np.ones(3) < x)
    check_staged(f, x, expected=expected)


def test_numpy_functions_without_a_lantern_counterpart_are_clear_errors(rng):
    f = lantern.stage(lambda x: np.add.reduce(x))
    with pytest.raises(lantern.TraceError, match=r"add\.reduce .*lantern.*test_numpy_interop.py:"):
        f(rng.standard_normal(3))
    g = lantern.stage(lambda x: np.arctan2(x, x))
    with pytest.raises(lantern.TraceError, match="arctan2"):
        g(rng.standard_normal(3))


def test_none_as_an_operand_names_the_operation_and_line():
    f = lantern.stage(lambda a, x, y: a * x + y)
    with pytest.raises(lantern.DTypeError, match=r"add: an operand is a NoneType.*test_numpy_interop.py:"):
        f(2.0, np.ones(3), None)
