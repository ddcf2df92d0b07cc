"""Operators against NumPy: each case runs natively and in the reference interpreter (traced and
optimized IR) through ``check_staged`` and is compared with NumPy's answer, dtypes included.

Many test functions are written once and run on both ``lantern`` and ``numpy`` (the ``xp``
argument), so NumPy computes the expected value of exactly the same expression.
"""
from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import lantern
from lantern.testing import check_staged

FLOATS = ["float32", "float64"]
NUMERIC = ["float32", "float64", "int32", "int64"]


def _sigmoid(x):
    return (1 / (1 + np.exp(-x))).astype(x.dtype)


def _logsumexp(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


#: NumPy plus the few functions lantern has and NumPy lacks, so test bodies can say ``xp.sigmoid``.
npx = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("_")})
npx.sigmoid = _sigmoid
npx.relu = lambda x: np.maximum(x, 0).astype(x.dtype)
npx.silu = lambda x: x * _sigmoid(x)
npx.rsqrt = lambda x: (1 / np.sqrt(x)).astype(x.dtype)
npx.logsumexp = _logsumexp
npx.softmax = lambda x, axis=-1: np.exp(x - _logsumexp(x, axis, keepdims=True))
npx.log_softmax = lambda x, axis=-1: x - _logsumexp(x, axis, keepdims=True)


def data(shape, dtype, seed=0, lo=-3.0, hi=3.0, nonzero=False):
    """Deterministic test data; integers are small, ``nonzero`` avoids zeros (divisors)."""
    rng = np.random.default_rng(seed + 7 * len(shape) + sum(shape))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        out = rng.integers(int(lo) - 2, int(hi) + 3, size=shape).astype(dtype)
    else:
        out = rng.uniform(lo, hi, size=shape).astype(dtype)
    if nonzero:
        out = np.where(out == 0, np.ones_like(out), out)
    return np.asarray(out, dtype=dtype)


def both(fn, *args, rtol=None, atol=None):
    """Run ``fn(lantern, ...)`` staged and ``fn(npx, ...)`` in NumPy; compare (dtypes too)."""
    with np.errstate(all="ignore"):  # NumPy's own warnings (x // 0.0) are not what is tested
        expected = fn(npx, *args)
    expected = tuple(np.asarray(e) for e in expected) if isinstance(expected, tuple) else np.asarray(expected)
    return check_staged(functools.partial(fn, lantern), *args, expected=expected, rtol=rtol, atol=atol)


# ====================================================================== elementwise arithmetic

BROADCAST_PAIRS = [
    ((3, 4), (3, 4)),
    ((3, 4), ()),          # scalar (0-d array)
    ((3, 4), (4,)),        # row
    ((3, 1), (1, 4)),      # outer
    ((2, 3, 4), (3, 1)),   # 3-D against a column
    ((4,), (2, 3, 4)),
]


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS)
def test_binary_broadcasting(sa, sb, dtype):
    a = data(sa, dtype, seed=1)
    b = data(sb, dtype, seed=2, nonzero=True)
    both(lambda xp, a, b: (a + b, a - b, a * b, a / b, -a, a < b, a <= b, a > b, a >= b, a == b, a != b,
                           xp.maximum(a, b), xp.minimum(a, b)), a, b)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_power(dtype):
    a = data((3, 4), dtype, seed=3, lo=0.5, hi=2.0) if dtype in FLOATS else data((3, 4), dtype, seed=3)
    b = data((4,), dtype, seed=4, lo=0.0, hi=3.0) if dtype in FLOATS else np.array([0, 1, 2, 3], dtype)
    both(lambda xp, a, b: (a ** b, a ** 2, a ** 3, 2 ** b, a ** 1, xp.power(a, b)), a, b)


@pytest.mark.parametrize("dtype", FLOATS)
def test_power_fractional(dtype):
    a = data((5,), dtype, lo=0.1, hi=4.0)
    both(lambda xp, a: (a ** 0.5, a ** -1.5, a ** 2.5, 0.5 ** a), a)


@pytest.mark.parametrize("dtype", NUMERIC + ["bool"])
def test_python_scalars_are_weak(dtype):
    x = data((2, 3), dtype, seed=5, nonzero=True)
    if dtype == "bool":
        fn = lambda xp, x: (x + 1, x * 2.5, x == True, x & True, x | False, ~x)  # noqa: E712,E731
    else:
        fn = lambda xp, x: (x + 1, 2 * x, x - 1.5, 1.0 / x, x / 2, 3 - x, x * True,  # noqa: E731
                            x > 0.5, 1 < x, x == 1, x != 2.0, xp.maximum(x, 0.5), xp.minimum(1, x))
    out = both(fn, x)
    if dtype == "float32":
        assert all(o.dtype == np.float32 for o in out[:7])


DTYPE_PAIRS = [("int32", "float32"), ("int64", "float32"), ("int32", "int64"), ("bool", "int32"),
               ("float32", "float64"), ("bool", "float32"), ("int32", "float64"), ("float32", "int32")]


@pytest.mark.parametrize("da,db", DTYPE_PAIRS)
def test_mixed_dtype_promotion(da, db):
    a = data((3, 4), da, seed=6)
    b = data((4,), db, seed=7, nonzero=True)
    c = data((3, 1), "bool", seed=8)
    both(lambda xp, a, b, c: (a + b, a * b, a - b, a / b, a < b, xp.maximum(a, b), xp.where(c, a, b)), a, b, c)


def test_zero_d_arrays_are_not_weak():
    x = data((3,), "float32")
    s = np.array(2.0)  # a float64 0-d array promotes like any float64 array (NumPy 2)
    i = np.array(3, "int64")
    out = both(lambda xp, x, s, i: (x * s, x + i, s * 2, i + 1, i / 2), x, s, i)
    assert out[0].dtype == np.float64 and out[3].dtype == np.int64


@pytest.mark.parametrize("dtype", NUMERIC)
def test_floordiv_and_mod_python_semantics(dtype):
    a = np.array([7, -7, 7, -7, 0, 5, -5, 3, -8, 9], dtype)
    b = np.array([2, 2, -2, -2, 3, 5, 3, -4, 3, 1], dtype)
    both(lambda xp, a, b: (a // b, a % b, a // 3, a % -3, 10 // b, -10 % b, xp.floor_divide(a, b),
                           xp.mod(a, b)), a, b)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_floordiv_mod_edge_cases(dtype):
    # Python/NumPy: 1.0 // 0.1 == 9.0 and 1.0 % 0.1 == 0.0999..., not floor(1.0 / 0.1) == 10.
    a = np.array([1.0, -1.0, 1.0, 7.5, -7.5, 0.0, -0.0, 1e10, 0.3, 5.0], dtype)
    b = np.array([0.1, 0.1, -0.1, 2.0, 2.0, 3.0, -3.0, 3.0, 0.1, 0.0], dtype)
    both(lambda xp, a, b: (a // b, a % b), a, b)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_division_by_zero_gives_zero(dtype):
    a = np.array([5, -5, 0, 7], dtype)
    b = np.array([0, 0, 0, -1], dtype)
    out = check_staged(lambda a, b: (a // b, a % b), a, b)
    np.testing.assert_array_equal(out[0], [0, 0, 0, -7])
    np.testing.assert_array_equal(out[1], [0, 0, 0, 0])


def test_bool_logic():
    a = data((3, 4), "bool", seed=1)
    b = data((4,), "bool", seed=2)
    both(lambda xp, a, b: (a & b, a | b, ~a, a == b, a != b, xp.maximum(a, b), xp.minimum(a, b),
                           xp.logical_and(a, b), xp.logical_or(a, b), xp.logical_not(b)), a, b)


# ====================================================================== unary math

@pytest.mark.parametrize("dtype", FLOATS)
def test_unary_math(dtype):
    x = data((4, 5), dtype, seed=9)
    p = data((4, 5), dtype, seed=10, lo=0.1, hi=5.0)
    both(lambda xp, x, p: (xp.exp(x), xp.log(p), xp.sin(x), xp.cos(x), xp.tanh(x), xp.sigmoid(x), xp.relu(x),
                           xp.silu(x), xp.sqrt(p), xp.rsqrt(p), xp.abs(x), abs(x), xp.floor(x), xp.sign(x),
                           xp.log1p(p), xp.expm1(x), xp.square(x), xp.negative(x)), x, p)


def test_float32_exp_and_tanh_accuracy_over_their_whole_range():
    # The runtime's vectorizable float32 exp and tanh (not libm's) against float64 NumPy.
    x = np.concatenate([np.linspace(-110, 90, 400_001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 88.7228, 88.7229, -87.33, -103.97, -104.0]),
                        np.float32([np.inf, -np.inf, np.nan])])
    ex, th = lantern.stage(lambda x: (lantern.exp(x), lantern.tanh(x)))(x)
    exact = np.exp(x.astype(np.float64))
    normal = (exact >= np.finfo(np.float32).tiny) & (exact <= np.finfo(np.float32).max)
    ulp = np.spacing(exact[normal].astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(ex[normal] - exact[normal]) / ulp) <= 1.5
    sub = np.isfinite(x) & (exact < np.finfo(np.float32).tiny)  # subnormal results and underflow to 0
    assert np.max(np.abs(ex[sub] - exact[sub])) <= 2 * 2.0 ** -149
    assert np.all(np.isinf(ex[np.isfinite(x) & (exact > np.finfo(np.float32).max)]))
    assert ex[-3] == np.inf and ex[-2] == 0.0 and np.isnan(ex[-1])
    t_exact = np.tanh(x[:-1].astype(np.float64))
    assert np.max(np.abs(th[:-1] - t_exact)) <= 4 * np.finfo(np.float32).eps and np.isnan(th[-1])


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_unary_on_integers(dtype):
    x = data((7,), dtype, seed=11)
    # Float functions of integers compute in float64, like NumPy; abs/sign/neg stay integer.
    both(lambda xp, x: (xp.abs(x), -x, xp.sign(x), xp.exp(x), xp.sqrt(xp.abs(x)), xp.maximum(x, 0)), x)
    check_staged(lambda x: lantern.relu(x), x, expected=np.maximum(x, 0))


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_propagation(dtype):
    nan, inf = np.nan, np.inf
    a = np.array([nan, 1.0, nan, -inf, 2.0, 0.0], dtype)
    b = np.array([1.0, nan, nan, 3.0, inf, -0.0], dtype)
    both(lambda xp, a, b: (xp.maximum(a, b), xp.minimum(a, b), xp.clip(a, -1.0, 1.0), xp.max(a), xp.min(b),
                           xp.argmax(a), xp.argmin(b), xp.sign(a), xp.abs(a)), a, b)


@pytest.mark.parametrize("dtype", FLOATS)
def test_where_and_clip(dtype):
    x = data((3, 4), dtype, seed=12)
    y = data((4,), dtype, seed=13)
    both(lambda xp, x, y: (xp.where(x > 0, x, y), xp.where(x > y, 1.0, 0.0), xp.where(x < 0, 0, x),
                           xp.clip(x, -1, 1), xp.clip(x, -0.5, None), xp.clip(x, None, 0.25), x.clip(-1, 2)), x, y)


def test_where_dtypes():
    c = data((3,), "bool")
    i = data((3,), "int32")
    f = data((3,), "float32")
    out = both(lambda xp, c, i, f: (xp.where(c, i, f), xp.where(c, i, 1), xp.where(c, f, 2.5), xp.where(c, c, False),
                                    xp.where(c, 1.0, 0)), c, i, f)
    assert out[0].dtype == np.float64 and out[1].dtype == np.int32 and out[2].dtype == np.float32


def test_where_with_a_constant_mask_reads_every_element():
    # gcc 12 with AVX-512 (-march=native) miscompiled `mask[i] ? x[i] : 0.0` over a [2, 16, 8] block
    # with a constant causal uint8 mask (a masked load): elements came back 0. Found by the Llama model.
    mask = np.tile(np.tril(np.ones((8, 8), bool)), (2, 1))[None]
    x = np.arange(1.0, 257.0).reshape(2, 16, 8)
    out = lantern.stage(lambda x: lantern.where(lantern.constant(mask), x, 0.0) * 0.5)(x)
    np.testing.assert_array_equal(out, np.where(mask, x, 0.0) * 0.5)


# ====================================================================== matrix products

MATMUL_SHAPES = [
    ((3, 4), (4,)),            # matrix-vector
    ((4,), (4, 5)),            # vector-matrix
    ((4,), (4,)),              # vector-vector
    ((3, 4), (4, 5)),          # matrix-matrix
    ((2, 3, 4), (2, 4, 5)),    # batched
    ((2, 3, 4), (4, 5)),       # batch @ matrix
    ((3, 4), (2, 4, 5)),       # matrix @ batch
    ((2, 1, 3, 4), (5, 4, 2)),  # broadcast batches
    ((2, 3, 4), (4,)),         # batch @ vector
    ((4,), (2, 4, 5)),         # vector @ batch
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_small(sa, sb, dtype):
    a, b = data(sa, dtype, seed=14), data(sb, dtype, seed=15)
    both(lambda xp, a, b: a @ b, a, b)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sa,sb", [((40, 32), (32, 30)), ((3, 40, 32), (3, 32, 30)), ((2, 1, 33, 40), (3, 40, 31)),
                                   ((40, 32), (1, 32, 30)), ((64, 600), (600, 8))])
def test_matmul_large_uses_blas(sa, sb, dtype):
    a, b = data(sa, dtype, seed=16), data(sb, dtype, seed=17)
    f = lantern.stage(lambda a, b: a @ b)
    assert "cblas" in f.lower(a, b).c_source
    tol = 1e-4 if dtype == "float32" else None  # sums of 600 float32 products in another order
    check_staged(f, a, b, expected=a @ b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", FLOATS)
def test_matrix_vector_products_stay_generated_loops(dtype):
    # A single row or column runs faster as a vectorized loop than through BLAS (RESULTS.md).
    a, b = data((64, 600), dtype, seed=16), data((600,), dtype, seed=17)
    f = lantern.stage(lambda a, b: a @ b)
    assert "cblas" not in f.lower(a, b).c_source
    tol = 1e-4 if dtype == "float32" else None
    check_staged(f, a, b, expected=a @ b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4,)), ((40, 32), (32, 30))])
def test_matmul_int(sa, sb, dtype):
    a, b = data(sa, dtype, seed=18), data(sb, dtype, seed=19)
    both(lambda xp, a, b: a @ b, a, b)


def test_matmul_mixed_dtypes_and_transposed_operands():
    a, b = data((3, 4), "int32"), data((5, 4), "float32")
    both(lambda xp, a, b: (a @ b.T, b @ a.T, xp.matmul(b, b.T), xp.dot(a[0], b[0])), a, b)


# ====================================================================== reductions

X3 = (2, 3, 4)
AXES = [None, 0, 1, 2, -1, -2, (0, 1), (0, 2), (1, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_every_axis(dtype, keepdims):
    x = data(X3, dtype, seed=20)

    def fn(xp, x):
        out = []
        for ax in AXES:
            out += [xp.sum(x, axis=ax, keepdims=keepdims), xp.mean(x, axis=ax, keepdims=keepdims),
                    xp.max(x, axis=ax, keepdims=keepdims), xp.min(x, axis=ax, keepdims=keepdims)]
        for ax in [None, 0, 1, 2, -1]:
            out += [xp.argmax(x, axis=ax, keepdims=keepdims), xp.argmin(x, axis=ax, keepdims=keepdims)]
        return tuple(out)
    both(fn, x)


@pytest.mark.parametrize("dtype", FLOATS)
def test_reduction_methods(dtype):
    x = data(X3, dtype, seed=21)
    both(lambda xp, x: (x.sum(), x.sum(axis=1), x.sum(axis=(0, 2), keepdims=True), x.mean(-1), x.mean(axis=(1, 2)),
                        x.max(axis=0), x.min(axis=-1, keepdims=True), x.argmax(), x.argmax(axis=1),
                        x.argmin(axis=-1, keepdims=True), x.max(), x.min()), x)


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_and_bool_reductions(dtype):
    x = data(X3, dtype, seed=22)

    def fn(xp, x):
        out = (xp.sum(x), xp.sum(x, axis=1), x.sum(axis=(0, 2), keepdims=True), xp.mean(x), xp.mean(x, axis=-1),
               xp.argmax(x, axis=2), xp.argmin(x), xp.max(x, axis=0), xp.min(x, axis=(1, 2)))
        return out
    out = both(fn, x)
    assert out[0].dtype == np.int64 and out[3].dtype == np.float64


@pytest.mark.parametrize("dtype", FLOATS)
def test_max_min_with_nan_and_infinities(dtype):
    # Vectorized as an OpenMP max/min reduction plus a NaN flag: a NaN anywhere wins, as in NumPy.
    x = data((5, 37), dtype, seed=12)
    x[2, 7], x[3, :], x[4, 3], x[0, 36] = np.nan, -np.inf, np.inf, np.nan
    fn = lambda xp, x: (xp.max(x, axis=1), xp.min(x, axis=1), xp.max(x), xp.min(x, axis=(0, 1)),  # noqa: E731
                        xp.max(x[1:2], axis=1), xp.min(x[3:5], axis=1), xp.max(x, axis=0))
    for got, want in zip(lantern.stage(lambda x: fn(lantern, x))(x), fn(np, x)):
        np.testing.assert_array_equal(got, want)


def test_reduce_over_size_one_and_empty_tuple_axes():
    x = data((3, 1, 2), "float32")
    both(lambda xp, x: (xp.sum(x, axis=1), xp.max(x, axis=1, keepdims=True), xp.argmax(x, axis=1), xp.sum(x, axis=()),
                        xp.mean(x, axis=(1,))), x)


# ====================================================================== shapes

@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_reshape_transpose_and_friends(dtype):
    x = data(X3, dtype, seed=23)
    both(lambda xp, x: (x.reshape(6, 4), x.reshape(-1), xp.reshape(x, (4, -1)), x.reshape((3, -1, 2)),
                        x.T, xp.transpose(x), xp.transpose(x, (1, 0, 2)), x.transpose(2, 0, 1),
                        xp.transpose(x, (-1, 0, 1)), x.swapaxes(0, 2), xp.swapaxes(x, -1, 1),
                        xp.moveaxis(x, 0, -1), xp.expand_dims(x, 1), xp.expand_dims(x, -1),
                        xp.expand_dims(x, (0, 2)), xp.squeeze(xp.expand_dims(x, 0)), x.flatten(), x.ravel(),
                        x.reshape(6, 4).T, x[:, :1].squeeze(1), xp.squeeze(x[:1, :, :1]), x.reshape(2, 12).T + 1),
         x)


@pytest.mark.parametrize("shape, perm", [((80, 48), (1, 0)), ((37, 45), (1, 0)), ((3, 40, 50), (0, 2, 1)),
                                         ((40, 3, 50), (2, 1, 0)), ((20, 5, 24, 18), (1, 2, 3, 0)),
                                         ((5, 33, 70), (2, 0, 1))])
def test_large_transposes_copied_in_tiles(shape, perm):
    # Transposes of axes of 16 or more copy 16 x 16 tiles (remainders included); exact copies.
    x = data(shape, "float32", seed=24)
    f = lantern.stage(lambda x: lantern.transpose(x, perm))
    np.testing.assert_array_equal(f(x), np.transpose(x, perm))
    assert "16 x 16 tiles" in f.lower(x).c_source


def test_static_attributes_inside_staged_function():
    x = data(X3, "float32")
    i = data((5,), "int32")

    def fn(xp, x, i):
        assert x.shape == (2, 3, 4) and x.ndim == 3 and x.dtype == np.float32
        assert x.T.shape == (4, 3, 2) and x.size == 24 and len(x) == 2
        assert i.dtype == np.dtype("int32") and i.shape == (5,)
        y = x.sum(axis=1)
        assert y.shape == (2, 4) and y.dtype == np.float32
        assert (x @ x.swapaxes(1, 2)).shape == (2, 3, 3)
        assert (i / 2).dtype == np.float64 and (i + 1).dtype == np.int32 and (x > 0).dtype == np.bool_
        assert x.sum().ndim == 0 and x[0].shape == (3, 4)
        return x.reshape(x.shape[0], -1) * x.ndim, i[1:] + i.ndim
    both(fn, x, i)


@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_static_slicing(dtype):
    x = data((4, 5, 6), dtype, seed=24)
    both(lambda xp, x: (x[1], x[-1], x[1:3], x[::2], x[::-1], x[:, 1:-1], x[..., 2], x[..., ::-2],
                        x[1, ..., -2:], x[None], x[:, None, 2], x[2, :, None], x[-3:-1, ::3, 5:0:-2],
                        x[0, 0, 0], x[-1, -1], x[1:2, 4, ::-3], x[:, :, np.newaxis, 1:4], x[3:1],
                        x[10:], x[-100:2], x[..., None], x[1][2][3]), x)


def test_integer_array_constant_index():
    x = data((4, 5), "float32")
    both(lambda xp, x: (x[[0, 2, -1]], x[:, [1, 1, 0]], x[np.array([[0, 1], [3, 2]])], x[1, [4, 0]]), x)


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_staged_scalar_index(dtype):
    x = data((4, 5), dtype, seed=25)
    for i in (np.array(2, "int64"), np.array(-1, "int64"), np.array(0, "int32")):
        expected = (x[int(i)], x[:, int(i)], x[int(i), 3], x[1:3, int(i)])
        check_staged(lambda x, i: (x[i], x[:, i], x[i, 3], x[1:3, i]), x, i, expected=expected)


def test_staged_scalar_index_out_of_bounds():
    x = data((4, 5), "float32")
    exe = lantern.stage(lambda x, i: x[i]).lower(x, np.array(0, "int64"))
    for bad in (4, -5, 100):
        with pytest.raises(lantern.OutOfBoundsError, match="out of bounds"):
            exe(x, np.array(bad, "int64"))
    np.testing.assert_array_equal(exe(x, np.array(-4, "int64")), x[0])


@pytest.mark.parametrize("idtype", ["int32", "int64"])
def test_embedding_lookup(idtype):
    emb = data((10, 4), "float32", seed=26)
    ids = np.array([[1, 9, -1], [0, 3, -10]], idtype)
    check_staged(lambda e, i: (e[i], lantern.take(e, i, axis=0), e[i].sum(-1)), emb, ids,
                 expected=(emb[ids], np.take(emb, ids, axis=0), emb[ids].sum(-1)))


def test_take_axes():
    x = data(X3, "float64", seed=27)
    ids = np.array([2, -1, 0, 1], "int64")
    scalar = np.array(-2, "int64")
    check_staged(lambda x, i, s: (lantern.take(x, i, axis=2), lantern.take(x, i[:2], axis=1), lantern.take(x, s, axis=1),
                                  lantern.take(x, i[1:3], axis=-1), lantern.take(x, s, axis=0), x[:, i[:3] % 3]),
                 x, ids, scalar,
                 expected=(np.take(x, ids, axis=2), np.take(x, ids[:2], axis=1), np.take(x, scalar, axis=1),
                           np.take(x, ids[1:3], axis=-1), np.take(x, scalar, axis=0), x[:, ids[:3] % 3]))


def test_take_out_of_bounds_raises():
    x = data((3, 4), "float32")
    exe = lantern.stage(lambda x, i: lantern.take(x, i, axis=1)).lower(x, np.array([0, 1], "int64"))
    with pytest.raises(lantern.OutOfBoundsError):
        exe(x, np.array([0, 4], "int64"))
    with pytest.raises(lantern.OutOfBoundsError):
        exe(x, np.array([-5, 0], "int64"))


@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
def test_concatenate_and_stack(dtype):
    a = data((2, 3), dtype, seed=28)
    b = data((2, 3), dtype, seed=29)
    c = data((1, 3), dtype, seed=30)
    both(lambda xp, a, b, c: (xp.concatenate([a, b]), xp.concatenate([a, b, c], axis=0), xp.concatenate([a, b], axis=1),
                              xp.concatenate([a, b], axis=-1), xp.concatenate((a,)), xp.stack([a, b]),
                              xp.stack([a, b, a], axis=1), xp.stack([a, b], axis=-1), xp.stack([a[0], b[1]]),
                              xp.stack((a[:, 0], c[0, :2]), axis=1)), a, b, c)


def test_concatenate_mixed_dtypes():
    a, b = data((2, 3), "int32"), data((1, 3), "float32")
    out = both(lambda xp, a, b: (xp.concatenate([a, b]), xp.stack([a[0], b[0]])), a, b)
    assert out[0].dtype == np.float64


# ====================================================================== higher-level functions

@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_family(dtype):
    x = data((3, 5), dtype, seed=31)
    big = (x * 100 + 1000).astype(dtype)
    both(lambda xp, x, big: (xp.softmax(x), xp.softmax(x, axis=0), xp.log_softmax(x), xp.log_softmax(big, axis=-1),
                             xp.logsumexp(x), xp.logsumexp(x, axis=1), xp.logsumexp(big, axis=0, keepdims=True),
                             xp.softmax(big), xp.logsumexp(-big, axis=(0, 1))), x, big)


def test_softmax_values_are_finite_for_large_inputs():
    x = np.array([[1000.0, 1000.0, 990.0], [-1000.0, -1000.0, -1010.0]], "float32")
    out = check_staged(lambda x: (lantern.softmax(x), lantern.logsumexp(x, axis=-1)), x)
    assert np.all(np.isfinite(out[0])) and np.all(np.isfinite(out[1]))
    np.testing.assert_allclose(out[1], [1000.0 + np.log(2 + np.exp(-10)), -1000.0 + np.log(2 + np.exp(-10))],
                               rtol=1e-6)


@pytest.mark.parametrize("idtype", ["int32", "int64"])
def test_one_hot(idtype):
    idx = np.array([[0, 3], [2, 1]], idtype)
    check_staged(lambda i: (lantern.one_hot(i, 4), lantern.one_hot(i, 5, dtype="int64"), lantern.one_hot(i[0], 4, "bool")),
                 idx, expected=(np.eye(4, dtype="float32")[idx], np.eye(5, dtype="int64")[idx],
                                np.eye(4, dtype=bool)[idx[0]]))


def test_creation_functions_and_dtypes():
    x = data((2, 3), "float64")

    def fn(x):
        return (lantern.zeros((2, 3)), lantern.ones(4), lantern.full((2,), 7), lantern.full((2,), 1.5),
                lantern.full((2, 2), True), lantern.zeros((3,), "int32"), lantern.ones((2,), dtype=np.float64),
                lantern.arange(5), lantern.arange(2, 11, 3), lantern.arange(0.0, 1.0, 0.25), lantern.arange(5, dtype="float64"),
                lantern.arange(10, 0, -3), lantern.zeros_like(x), lantern.ones_like(x, dtype="int32"),
                lantern.full_like(x, 3), x + lantern.ones((3,)), lantern.arange(3, dtype="int32") * 2)

    expected = (np.zeros((2, 3), "float32"), np.ones(4, "float32"), np.full((2,), 7, "int64"),
                np.full((2,), 1.5, "float32"), np.full((2, 2), True), np.zeros(3, "int32"), np.ones(2),
                np.arange(5), np.arange(2, 11, 3), np.arange(0.0, 1.0, 0.25, dtype="float32"),
                np.arange(5, dtype="float64"), np.arange(10, 0, -3), np.zeros_like(x), np.ones_like(x, dtype="int32"),
                np.full_like(x, 3), x + np.ones(3, "float32"), np.arange(3, dtype="int32") * 2)
    check_staged(fn, x, expected=expected)


ALL_DTYPES = ["bool", "int32", "int64", "float32", "float64"]


@pytest.mark.parametrize("src", ALL_DTYPES)
def test_astype_between_all_dtypes(src):
    if src == "bool":
        x = np.array([True, False, True, True])
    elif src in FLOATS:
        x = np.array([-2.7, -0.5, -0.0, 0.0, 0.4, 1.0, 2.9, 1e5, -123.99], src)
    else:
        x = np.array([-3, -1, 0, 1, 2, 1000, -100000], src)
    expected = tuple(x.astype(d) for d in ALL_DTYPES)
    check_staged(lambda x: tuple(x.astype(d) for d in ALL_DTYPES) + (lantern.astype(x, np.float32),),
                 x, expected=expected + (x.astype(np.float32),))


# ====================================================================== edge cases

def test_zero_d_inputs():
    x = np.array(1.5, "float32")
    i = np.array(-2, "int64")
    both(lambda xp, x, i: (xp.exp(x), x * 2, x + i, x.sum(), xp.max(x), xp.argmax(x), x[None], x[..., None], x.T,
                           x.reshape(1, 1), xp.stack([x, x * 3]), xp.expand_dims(i, 0), i // 3, i % 3, x > i,
                           xp.where(x > 0, x, i), xp.mean(x)), x, i)


def test_zero_size_arrays():
    x = np.zeros((0, 3), "float32")
    y = data((2, 3), "float32")
    a, b = np.zeros((3, 0), "float64"), np.zeros((0, 4), "float64")
    both(lambda xp, x, y, a, b: (x.sum(axis=0), x.sum(), x * 2 + 1, x.T, x.reshape(3, 0), xp.concatenate([x, y]),
                                 a @ b, xp.exp(x), x[:, 1], y[2:], xp.mean(y[:, 3:], axis=0)), x, y, a, b)


def test_reduction_of_empty_axis_without_identity_is_an_error():
    with pytest.raises(lantern.ShapeError, match="zero-size|empty"):
        lantern.stage(lambda x: x.max(axis=0)).lower(np.zeros((0, 3), "float32"))
    with pytest.raises(lantern.ShapeError, match="zero-size|empty"):
        lantern.stage(lambda x: x.argmin(axis=0)).lower(np.zeros((0, 3), "float32"))


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_overflow_wraps_like_numpy(dtype):
    info = np.iinfo(dtype)
    a = np.array([info.max, info.min, info.min, info.max, 3], dtype)
    b = np.array([1, -1, -1, 2, -1], dtype)
    with np.errstate(over="ignore"):
        expected = (a + b, a - b, a * b, -a, np.abs(a), a // b, a % b)
    check_staged(lambda a, b: (a + b, a - b, a * b, -a, abs(a), a // b, a % b), a, b, expected=expected)


def test_comparisons_with_out_of_range_python_ints():
    x = np.array([-3, 0, 7], "int32")
    both(lambda xp, x: (x < 2 ** 40, x == 2 ** 40, x > -(2 ** 40), x != 2 ** 63, x >= 1.5), x)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_floordiv_mod_infinities(dtype):
    inf, nan = np.inf, np.nan
    a = np.array([inf, -2.0, 2.0, -inf, 5.0, nan, 3.0], dtype)
    b = np.array([2.0, inf, inf, -3.0, -inf, 2.0, nan], dtype)
    with np.errstate(all="ignore"):
        expected = (a // b, a % b)
    check_staged(lambda a, b: (a // b, a % b), a, b, expected=expected)


def test_staged_indices_combined():
    x = data((4, 5, 6), "float64", seed=40)
    i, j = np.array(3, "int64"), np.array(-2, "int32")
    ids = np.array([[0, -1], [2, 1]], "int64")
    expected = (x[3, -2], x[3, :, -2], x[ids, 2], x[1:, ids], x[:, 1, ids], x[np.argmax(x.sum((1, 2)))],
                x[3, ids[0]], x[::-1, 3], x[ids][..., 0],
                # integers next to an index array are advanced indices: non-adjacent ones put the array's dims first
                x[3, :, ids], x[ids, :, 1], x[3, 1:4, ids[1]], x[ids, None, 2], x[1, ..., ids], x[:, ids, 1])
    check_staged(lambda x, i, j, ids: (x[i, j], x[i, :, j], x[ids, 2], x[1:, ids], x[:, 1, ids],
                                       x[lantern.argmax(x.sum((1, 2)))], x[i, ids[0]], x[::-1, i], x[ids][..., 0],
                                       x[i, :, ids], x[ids, :, 1], x[3, 1:4, ids[1]], x[ids, None, 2], x[1, ..., ids],
                                       x[:, ids, 1]),
                 x, i, j, ids, expected=expected)


def test_constant_index_arrays_follow_numpy_placement():
    x = data((4, 5, 6), "float32", seed=48)
    both(lambda xp, x: (x[2, :, [0, 5, 1]], x[[1, 0], :, -1], x[:, [4, 4], 0], x[np.array([[1], [2]]), ..., 3]), x)


def test_broadcast_to_and_fused_broadcasts():
    x = data((3, 1), "float32", seed=41)
    y = data((4,), "float32", seed=42)
    both(lambda xp, x, y: (xp.broadcast_to(x, (2, 3, 4)), xp.broadcast_to(y, (3, 4)) * x, (x - y) / (x * x + 1),
                           xp.exp(x - xp.max(x * y, axis=0)), (x * y).sum(0) + y), x, y)


def test_matmul_edge_shapes():
    a1, b1 = data((1, 4), "float32"), data((4, 1), "float32")
    v = data((1,), "float32")
    both(lambda xp, a1, b1, v: (a1 @ b1, b1 @ a1, v @ a1[:, :1], a1[0] @ b1, b1[:, 0] @ b1), a1, b1, v)


@pytest.mark.parametrize("m,k,n", [(3, 4, 5), (40, 32, 30)])
@pytest.mark.parametrize("dtype", FLOATS)
def test_matmul_transposed_operand_attributes(m, k, n, dtype):
    # The C emitter also handles matmul(trans_a/trans_b) (reverse-mode AD produces them).
    from lantern.ops import _emit

    a, b = data((2, k, m), dtype, seed=43), data((2, n, k), dtype, seed=44)

    def fn(a, b):
        return (_emit(a.frame, "matmul", [a, b], trans_a=True, trans_b=True),
                _emit(a.frame, "matmul", [a[0], b[1].T], trans_a=True),
                _emit(a.frame, "matmul", [a[1].T, b], trans_b=True))
    at, bt = a.swapaxes(1, 2), b.swapaxes(1, 2)
    tol = 1e-4 if dtype == "float32" else None
    check_staged(fn, a, b, expected=(at @ bt, at[0] @ b[1].T, at[1] @ bt), rtol=tol, atol=tol)


def test_larger_reductions_both_loop_orders():
    x = data((5, 64, 3, 40), "float32", seed=45)

    def fn(xp, x):
        return (x.sum(axis=(0, 2)), x.max(axis=(1, 3)), x.mean(axis=1), x.min(axis=(0, 1, 3), keepdims=True),
                xp.argmax(x, axis=1), xp.argmin(x, axis=2), x.sum(axis=(1, 2, 3)), xp.logsumexp(x, axis=(0, 3)))
    both(fn, x, rtol=5e-5, atol=5e-5)  # sums of up to 7680 float32 terms


def test_large_float32_sum_is_accurate():
    x = np.full(1 << 25, 1.0, "float32")  # a float32 running sum stalls at 2**24
    out = check_staged(lambda x: (x.sum(), x.reshape(1 << 12, 1 << 13).sum(axis=1).sum()), x)
    assert out[0] == 1 << 25 and out[1] == 1 << 25


def test_astype_special_values():
    x = np.array([np.nan, -0.0, 0.0, np.inf, -1e-30], "float64")
    both(lambda xp, x: (x.astype(bool), x.astype("float32"), (x > 0).astype("int32"), x[1:3].astype("int64")), x)


def test_softmax_of_integers_and_transpose_4d():
    i = data((3, 4), "int32", seed=46)
    x = data((2, 3, 4, 5), "float32", seed=47)
    both(lambda xp, i, x: (xp.softmax(i), xp.log_softmax(i, axis=0), xp.transpose(x, (3, 1, 0, 2)), x.T,
                           x.swapaxes(1, 3).reshape(2, 5, -1), xp.stack([x.sum(), x.max()])), i, x)


def test_bool_arithmetic_and_comparisons_like_numpy():
    a, b = data((2, 3), "bool", seed=49), data((3,), "bool", seed=50)
    both(lambda xp, a, b: (a + b, a * b, a < b, a >= True, b > False, a * 2, a - 1, a + 0.5, xp.maximum(a, b),
                           xp.minimum(a, True)), a, b)


def test_numpy_scalars_are_strong_and_powers_promote():
    x = data((3,), "float32", seed=51)
    i = data((3,), "int32", seed=52)
    out = both(lambda xp, x, i: (x * np.float64(2.0), np.float64(2.0) * x, x + np.float32(1), np.ones(3) + x,
                                 x + np.int64(3), i ** 2.0, i ** 2, i ** 0.5, i ** 1, i * np.int32(2)), x, i)
    assert out[0].dtype == np.float64 and out[5].dtype == np.float64 and out[6].dtype == np.int32


def test_arange_is_exact_for_large_integers():
    x = np.zeros(1, "int64")
    check_staged(lambda x: (lantern.arange(2 ** 60, 2 ** 60 + 3) + x, lantern.arange(-2 ** 62, 2 ** 62, 2 ** 61)), x,
                 expected=(np.arange(2 ** 60, 2 ** 60 + 3), np.arange(-2 ** 62, 2 ** 62, 2 ** 61)))


def test_logsumexp_with_infinite_rows():
    inf = np.inf
    x = np.array([[-inf, -inf, -inf], [1.0, -inf, 2.0], [inf, 0.0, 1.0]], "float32")
    lse1 = np.log(np.exp(1.0) + np.exp(2.0))
    check_staged(lambda x: (lantern.logsumexp(x, axis=1), lantern.log_softmax(x[1]), lantern.softmax(x[1])), x,
                 expected=(np.array([-inf, lse1, inf], "float32"), np.array([1 - lse1, -inf, 2 - lse1], "float32"),
                           np.exp(np.array([1 - lse1, -inf, 2 - lse1], "float32"))))


def test_concatenate_and_stack_many_inputs_with_mixed_dtypes():
    a = np.arange(3, dtype=np.int32)
    b = np.linspace(0, 1, 3, dtype=np.float32)

    def f(a, b):
        return lantern.concatenate([a, b, a, b, a]), lantern.stack([a, a, a, a], axis=1)

    check_staged(f, a, b, expected=(np.concatenate([a, b, a, b, a]), np.stack([a, a, a, a], axis=1)))
