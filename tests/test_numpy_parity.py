"""Regressions from testing against NumPy itself (issue 18): compiler-miscompiled bool logic, zero-size
gathers and products, dtypes and axis handling that differed from NumPy 2.

The zero-size cases also run under AddressSanitizer (``tests/test_sanitized.py``), which is what
showed their out-of-bounds reads and writes.
"""
import re

import numpy as np
import pytest

import lantern
from lantern.testing import check_grads


def _same(actual, expected):
    """Same shape, dtype and values (NaN equal to NaN)."""
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(actual, expected)


# ------------------------------------------------------------------ bool logic (gcc 12 -O3 -march=native)

@pytest.mark.parametrize("op", ["or", "and", "xor_via_ne"])
def test_bool_logic_with_broadcasting_matches_numpy(op):
    rng = np.random.default_rng(0)
    a = rng.random((1, 16, 1, 2)) < .5
    b = rng.random((16, 6, 2)) < .5
    fn = {"or": lambda a, b: a | b, "and": lambda a, b: a & b, "xor_via_ne": lambda a, b: a != b}[op]
    _same(lantern.stage(fn)(a, b), fn(a, b))
    _same(lantern.stage(lambda a, b: ~(a | b) & a)(a, b), ~(a | b) & a)


@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
@pytest.mark.parametrize("reduce", ["max", "min"])
def test_bool_max_min_reductions_match_numpy(axis, reduce):
    rng = np.random.default_rng(1)
    x = rng.random((5, 17, 3)) < (0.9 if reduce == "min" else 0.1)
    fn = lambda v: getattr(lantern, reduce)(v, axis=axis)  # noqa: E731
    _same(lantern.stage(fn)(x), getattr(np, reduce)(x, axis=axis))


def test_bool_logic_is_emitted_bitwise():
    """No short-circuit operators on data: the form gcc miscompiled is never generated."""
    src = lantern.stage(lambda a, b: (~a | b) & a).lower(np.ones((4, 3), bool), np.ones(3, bool)).c_source
    body = src[src.index("void fn_"):]
    loops = [line for line in body.splitlines() if "result0[" in line or "lt_bool" in line]
    assert loops and not any("||" in line or "&&" in line for line in loops), loops
    reduced = lantern.stage(lambda a: a.max(axis=1)).lower(np.ones((4, 3), bool)).c_source
    assert not re.search(r"acc (\|\||&&)", reduced)


# ------------------------------------------------------------------ zero-size gathers and products

def test_gather_with_no_indices():
    x, i = np.arange(3.), np.zeros(0, np.int64)
    for check in (True, False):
        _same(lantern.stage(lambda x, i: x[i], check_indices=check)(x, i), x[i])


@pytest.mark.parametrize("shape, index", [((3, 0), "rows"), ((0, 3), "columns"), ((3, 0, 2), "rows")])
def test_gather_from_zero_size_arrays(shape, index):
    x = np.zeros(shape)
    i = np.array([2, 0], np.int64) if index == "rows" else np.array([1, 2, 0], np.int64)
    fn = (lambda x, i: x[i]) if index == "rows" else (lambda x, i: x[:, i])
    for check in (True, False):
        _same(lantern.stage(fn, check_indices=check)(x, i), fn(x, i))


@pytest.mark.parametrize("a_shape, b_shape", [((0, 3, 2), (0, 2, 4)), ((3, 0), (0, 4)), ((0, 3), (3, 4)),
                                              ((2, 3, 0), (2, 0, 5)), ((2, 0, 3), (3, 4)), ((0,), (0,))])
def test_zero_size_products(a_shape, b_shape):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    _same(lantern.stage(lambda a, b: a @ b)(a, b), a @ b)
    # gradients: an empty product contributes nothing; a product over an empty inner axis is zeros
    ga, gb = lantern.grad(lambda a, b: ((a @ b) * 2.0 + 1.0).sum(), argnums=(0, 1))(a, b)
    _same(ga, np.zeros(a_shape))
    _same(gb, np.zeros(b_shape))


def test_gradients_of_zero_size_gathers():
    x = np.arange(6.).reshape(3, 2)
    none = np.zeros(0, np.int64)
    g = lantern.grad(lambda x: (x[none] * 3.0).sum())(x)
    _same(g, np.zeros_like(x))
    g = lantern.grad(lambda x, i: (lantern.take(x, i, axis=1) ** 2).sum())(x, np.zeros(0, np.int64))
    _same(g, np.zeros_like(x))
    empty = np.zeros((3, 0))
    g = lantern.grad(lambda x, i: x[i].sum() + 1.0)(empty, np.array([1, 1], np.int64))
    _same(g, np.zeros_like(empty))


def test_gather_in_a_loop_with_an_empty_row():
    """Indexed accumulation in the gradient of a loop (the ``x_bar[i] += ...`` emitter) with empty rows."""
    x = np.zeros((4, 0))

    def loss(x):
        def body(i, acc):
            return acc + x[i].sum() + 1.0
        return lantern.fori_loop(0, 4, body, lantern.zeros((), "float64"))

    assert float(lantern.stage(loss)(x)) == 4.0
    _same(lantern.grad(loss)(x), np.zeros_like(x))


def test_zero_size_gradient_against_finite_differences():
    """A program mixing empty and non-empty parts: the non-empty gradient is still right."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2))
    none = np.zeros(0, np.int64)

    def f(x):
        empty = x[none] @ x.T          # (0, 3)
        return lantern.sum(lantern.tanh(x)) + lantern.sum(empty) + lantern.concatenate([x[none], x]).sum()
    check_grads(f, x)


# ------------------------------------------------------------------ dtypes as in NumPy 2

@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_floor_keeps_integer_and_bool_dtypes(dtype):
    x = (np.arange(-3, 4) % 2).astype(dtype) if dtype == "bool" else np.arange(-3, 4).astype(dtype)
    _same(lantern.stage(lantern.floor)(x), np.floor(x))


def test_abs_of_bool_and_bool_products():
    rng = np.random.default_rng(4)
    a, b = rng.random((3, 5)) < .3, rng.random((5, 2)) < .3
    _same(lantern.stage(lambda a: abs(a))(a), np.abs(a))
    _same(lantern.stage(lambda a, b: a @ b)(a, b), a @ b)
    _same(lantern.stage(lambda a, b: a @ b)(a[0], b), a[0] @ b)
    _same(lantern.stage(lambda a: a @ a)(a[0]), a[0] @ a[0])
    big = rng.random((40, 300)) < .01  # large enough for BLAS
    _same(lantern.stage(lambda a, b: a @ b)(big, big.T), big @ big.T)


# ------------------------------------------------------------------ axes as in NumPy

def test_moveaxis_with_several_axes():
    x = np.arange(24.).reshape(2, 3, 4)
    for src, dst in [([0, 1], [1, 0]), ([0, -1], [-1, 0]), ((2, 0), (0, 1)), (1, -1)]:
        _same(lantern.stage(lambda x: lantern.moveaxis(x, src, dst))(x), np.moveaxis(x, src, dst))


def test_concatenate_without_axis_flattens():
    a, b = np.ones((2, 2)), np.arange(3.)
    flat = lantern.stage(lambda a, b: lantern.concatenate([a, b], axis=None))
    _same(flat(a, b), np.concatenate([a, b], axis=None))
    _same(flat(a[0, 0], a), np.concatenate([a[0, 0], a], axis=None))  # 0-d arrays too


def test_transpose_takes_negative_axes_and_single_ints():
    x = np.arange(3.)
    _same(lantern.stage(lambda x: x.transpose(-1))(x), x.transpose(-1))
    y = np.arange(6.).reshape(2, 3)
    _same(lantern.stage(lambda y: y.transpose(-1, 0))(y), y.transpose(-1, 0))
    _same(lantern.stage(lambda y: lantern.transpose(y, (-1, -2)))(y), np.transpose(y, (-1, -2)))


@pytest.mark.parametrize("fn, error, match", [
    (lambda x: lantern.transpose(x, (1,)), lantern.ShapeError, r"transpose: axis 1 is out of bounds for shape \(3,"),
    (lambda x: lantern.transpose(x, (0, 0)), lantern.ShapeError, "repeated axis"),
    (lambda x: lantern.transpose(x.reshape(3, 1), (0,)), lantern.ShapeError, "do not match shape"),
    (lambda x: lantern.expand_dims(x, (0, 0)), lantern.ShapeError, r"expand_dims: repeated axis in \(0, 0\)"),
    (lambda x: lantern.expand_dims(x, 3), lantern.ShapeError, "expand_dims: axis 3 is out of bounds"),
    (lambda x: lantern.argmax(x, axis=(0,)), lantern.TraceError, r"argmax: axis must be an int or None.*\(0,\)"),
    (lambda x: lantern.argmin(x, axis=[0]), lantern.TraceError, "argmin: axis must be an int or None"),
    (lambda x: x.sum().transpose(0), lantern.ShapeError, r"axis 0 is out of bounds for shape \(\)"),
    (lambda x: lantern.moveaxis(x.reshape(1, 3), [0, 1], [0]), lantern.ShapeError, "same number of elements"),
    (lambda x: lantern.sum(x, axis=True), lantern.TraceError, "axis must be a Python int"),
])
def test_axes_numpy_rejects_are_errors(fn, error, match):
    """Where NumPy raises (AxisError, repeated axis, a tuple axis for argmax), lantern raises too, at the user's line."""
    with pytest.raises(error, match=match) as info:
        lantern.stage(fn)(np.arange(3.))
    assert "test_numpy_parity.py" in str(info.value)


# ------------------------------------------------------------------ found by the NumPy-oracle fuzzer

def test_float32_sigmoid_keeps_relative_accuracy_in_the_tails():
    x = np.concatenate([np.linspace(-100, 100, 2001), [-np.inf, np.inf, -0.0]]).astype(np.float32)
    got = lantern.stage(lantern.sigmoid)(x)
    with np.errstate(over="ignore"):
        ref = 1 / (1 + np.exp(-x.astype(np.float64)))
    tiny = ref < np.finfo(np.float32).tiny  # subnormal results (exp(-x) overflows): absolute accuracy only
    np.testing.assert_allclose(got[~tiny], ref[~tiny], rtol=3e-7)
    np.testing.assert_allclose(got[tiny], ref[tiny], rtol=0, atol=np.finfo(np.float32).tiny)
    assert got[-3] == 0.0 and got[-2] == 1.0
    assert float(lantern.stage(lantern.sigmoid)(np.float32(30.0))) == 1.0


def test_silu_of_infinities_as_x_times_sigmoid():
    x = np.array([-np.inf, np.inf, -3.0], np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = x * (1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(lantern.stage(lantern.silu)(x), expected, rtol=1e-6)


@pytest.mark.parametrize("fn", [np.logical_and, np.logical_or])
def test_logical_functions_read_any_dtype_as_nonzero(fn):
    rng = np.random.default_rng(5)
    a, b = rng.integers(-2, 3, (4, 3)).astype(np.int32), rng.integers(-1, 2, 3).astype(np.float64)
    staged = getattr(lantern, fn.__name__)
    _same(lantern.stage(lambda a, b: staged(a, b))(a, b), fn(a, b))
    _same(lantern.stage(lantern.logical_not)(b), np.logical_not(b))


@pytest.mark.parametrize("fn, match", [
    (lambda a: a & a, "&: expected bool tensors"),
    (lambda a: ~a, "~: expected a bool tensor"),
    (lambda a: +(a > 0), r"\+: not defined for bool"),
    (lambda a: a ** -2, "negative integer powers"),
    (lambda a: (a > 0) // (a > 1), "floordiv of .*bool.*int8"),
])
def test_numpy_errors_are_lantern_errors_at_the_line(fn, match):
    with pytest.raises(lantern.LanternError, match=match) as info:
        lantern.stage(fn)(np.arange(3))
    assert "test_numpy_parity.py" in str(info.value)


def test_empty_integer_tensor_to_a_negative_power_is_empty():
    _same(lantern.stage(lambda a: a ** -2)(np.zeros((0, 2), np.int64)), np.zeros((0, 2), np.int64))


def test_bad_index_into_an_empty_result_is_still_an_error():
    x, i = np.zeros((0, 3), np.int32), np.int64(-4)
    with pytest.raises(lantern.OutOfBoundsError, match="index -4 is out of bounds for an axis of size 3"):
        lantern.stage(lambda x, i: x[:, i])(x, i)
    _same(lantern.stage(lambda x, i: x[:, i])(x, np.int64(-3)), x[:, -3])


def test_empty_slices_with_negative_steps_in_the_interpreter():
    from lantern.testing import check_staged
    x = np.arange(24.).reshape(2, 1, 3, 4)
    out = check_staged(lambda x: x[-1:2, ..., -2:-2:-2, 1:2:1], x)
    _same(out, x[-1:2, ..., -2:-2:-2, 1:2:1])
    check_staged(lambda x: x[:, :, ::-2], x, expected=x[:, :, ::-2])


def test_integer_compared_with_itself():
    x = np.arange(-3, 3, dtype=np.int32)
    for op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
        _same(lantern.stage(lambda v: getattr(v, op)(v))(x), getattr(x, op)(x))


@pytest.mark.parametrize("op", ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"])
def test_bool_comparisons_with_constants_and_arrays(op):
    rng = np.random.default_rng(6)
    a, b = rng.random((3, 4)) < .5, rng.random(4) < .5
    _same(lantern.stage(lambda a, b: getattr(a, op)(b))(a, b), getattr(a, op)(b))
    for k in (False, True):  # against a constant (C warned: `0 <= b` is always true for a byte)
        _same(lantern.stage(lambda a: getattr(a, op)(k))(a), getattr(a, op)(k))
        _same(lantern.stage(lambda a: getattr(lantern.full((), k, "bool"), op)(a))(a), getattr(np.bool_(k), op)(a))
