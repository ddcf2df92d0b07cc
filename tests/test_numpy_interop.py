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
    g = lantern.stage(lambda x: np.hypot(x, x))
    with pytest.raises(lantern.TraceError, match="hypot"):
        g(rng.standard_normal(3))


def test_none_as_an_operand_names_the_operation_and_line():
    f = lantern.stage(lambda a, x, y: a * x + y)
    with pytest.raises(lantern.DTypeError, match=r"add: an operand is a NoneType.*test_numpy_interop.py:"):
        f(2.0, np.ones(3), None)


@pytest.mark.parametrize("name, fn", [
    ("sum", lambda x: np.sum(x, axis=0)),
    ("mean", lambda x: np.mean(x)),
    ("max", lambda x: np.max(x, axis=1, keepdims=True)),
    ("amin", lambda x: np.amin(x, axis=-1)),
    ("argmax", lambda x: np.argmax(x, axis=1)),
    ("dot", lambda x: np.dot(x, x.T)),
    ("where", lambda x: np.where(x > 0.5, x, 0.0)),
    ("clip", lambda x: np.clip(x, -0.5, 0.5)),
    ("concatenate", lambda x: np.concatenate([x, x], axis=1)),
    ("stack", lambda x: np.stack([x, x])),
    ("reshape", lambda x: np.reshape(x, (3, 2))),
    ("transpose", lambda x: np.transpose(x)),
    ("swapaxes", lambda x: np.swapaxes(x, 0, 1)),
    ("expand_dims", lambda x: np.expand_dims(x, 0)),
    ("squeeze", lambda x: np.squeeze(np.expand_dims(x, 0), axis=0)),
    ("broadcast_to", lambda x: np.broadcast_to(x, (4, 2, 3))),
    ("take (flattened, as NumPy)", lambda x: np.take(x, np.array([1, 4]))),
    ("take along an axis", lambda x: np.take(x, np.array([2, 0]), axis=1)),
    ("zeros_like", lambda x: np.zeros_like(x) + x),
])
def test_numpy_functions_on_staged_tensors_are_staged(name, fn, rng):
    """NumPy's functions with a lantern counterpart dispatch to it (NEP 18), with NumPy's results."""
    x = rng.standard_normal((2, 3))
    check_staged(fn, x, expected=fn(x))


def test_numpy_function_keywords_lantern_lacks_are_named():
    with pytest.raises(lantern.TraceError, match=r"np.sum on a staged tensor: keyword arguments \['out'\]"):
        lantern.stage(lambda x: np.sum(x, out=np.zeros(())))(np.ones(3))
    with pytest.raises(lantern.TraceError, match="NumPy's diff cannot run on a staged tensor"):
        lantern.stage(lambda x: np.diff(x))(np.ones(3))
    with pytest.raises(lantern.TraceError, match=r"np.cumsum on a staged tensor: keyword arguments \['dtype'\]"):
        lantern.stage(lambda x: np.cumsum(x, dtype=np.float32))(np.ones(3))


def test_indexing_a_numpy_array_with_a_staged_index_says_how():
    table = np.arange(5.0)
    with pytest.raises(lantern.ConcretizationError, match=r"lantern.asarray\(array\)\[i\]"):
        lantern.stage(lambda i: table[i])(np.int64(2))
    assert float(lantern.stage(lambda i: lantern.asarray(table)[i])(np.int64(2))) == 2.0
