"""The operations of issue 13 point 12 against NumPy (values, dtypes, shapes), the reference interpreter
(``check_staged``), finite differences (``check_grads``, float64) and PyTorch where it is installed; NumPy's
errors as lantern errors at the user's line. Many operations share one staged function, so that the file
compiles a handful of modules."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import lantern
from lantern.testing import check_grads, check_staged

RNG = np.random.default_rng(13)
X = RNG.standard_normal((3, 4))
T = np.tanh(X) * 0.9            # in (-1, 1): arcsin, arccos
Z = np.array([[1.5, 0.0, 2.0, -1.0], [0.5, 3.0, 0.0, 0.0], [1.1, 2.2, 0.7, -0.3]])  # zeros: prod, cumprod
TIES = np.array([[2.0, np.nan, 1.0, 2.0, -0.0, 0.0], [3.0, 3.0, -np.inf, np.nan, 1.0, 3.0]])
INTS = np.array([[3, -1, 4], [1, -5, 9]], np.int32)
FLAGS = np.array([[True, False, True], [False, False, False]])

_erf = np.vectorize(math.erf)


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


# name -> (lantern, NumPy), both functions of the arrays above
VALUES = {
    "tan": (lambda: lantern.tan(T), lambda: np.tan(T)),
    "arcsin": (lambda: lantern.arcsin(T), lambda: np.arcsin(T)),
    "arccos": (lambda: lantern.arccos(T), lambda: np.arccos(T)),
    "arctan": (lambda: lantern.arctan(X), lambda: np.arctan(X)),
    "arctan2": (lambda: lantern.arctan2(X, X[::-1]), lambda: np.arctan2(X, X[::-1])),
    "sinh": (lambda: lantern.sinh(X), lambda: np.sinh(X)),
    "cosh": (lambda: lantern.cosh(X), lambda: np.cosh(X)),
    "erf": (lambda: lantern.erf(X), lambda: _erf(X)),
    "round": (lambda: lantern.round(X * 2), lambda: np.round(X * 2)),
    "round_half_even": (lambda: lantern.round(np.array([0.5, 1.5, 2.5, -0.5])), lambda: np.round([0.5, 1.5, 2.5, -0.5])),
    "round_decimals": (lambda: lantern.round(X, 2), lambda: np.round(X, 2)),
    "round_int": (lambda: lantern.round(INTS, -1), lambda: np.round(INTS, -1)),
    "isnan": (lambda: lantern.isnan(TIES), lambda: np.isnan(TIES)),
    "isinf": (lambda: lantern.isinf(TIES), lambda: np.isinf(TIES)),
    "isfinite": (lambda: lantern.isfinite(TIES), lambda: np.isfinite(TIES)),
    "isnan_int": (lambda: lantern.isnan(INTS), lambda: np.isnan(INTS)),
    "logaddexp": (lambda: lantern.logaddexp(X, X[::-1] * 40), lambda: np.logaddexp(X, X[::-1] * 40)),
    "logaddexp_inf": (lambda: lantern.logaddexp(np.array([np.inf, -np.inf, 1.0]), np.array([np.inf, -np.inf, -np.inf])),
                      lambda: np.logaddexp([np.inf, -np.inf, 1.0], [np.inf, -np.inf, -np.inf])),
    "softplus": (lambda: lantern.softplus(X * 30), lambda: np.logaddexp(X * 30, 0)),
    "log_sigmoid": (lambda: lantern.log_sigmoid(X * 30), lambda: -np.logaddexp(-X * 30, 0)),
    "elu": (lambda: lantern.elu(X, 0.5), lambda: np.where(X > 0, X, 0.5 * np.expm1(X))),
    "leaky_relu": (lambda: lantern.leaky_relu(X), lambda: np.where(X > 0, X, 0.01 * X)),
    "gelu": (lambda: lantern.gelu(X), lambda: _gelu(X)),
    "gelu_tanh": (lambda: lantern.gelu(X, "tanh"),
                  lambda: 0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)))),
    "any": (lambda: lantern.any(FLAGS, axis=1), lambda: np.any(FLAGS, axis=1)),
    "all": (lambda: lantern.all(X, axis=0, keepdims=True), lambda: np.all(X, axis=0, keepdims=True)),
    "any_empty": (lambda: lantern.any(np.zeros((0, 2))), lambda: np.any(np.zeros((0, 2)))),
    "prod": (lambda: lantern.prod(Z, axis=1), lambda: np.prod(Z, axis=1)),
    "prod_int": (lambda: lantern.prod(INTS), lambda: np.prod(INTS)),
    "prod_empty": (lambda: lantern.prod(np.zeros((2, 0)), axis=1), lambda: np.prod(np.zeros((2, 0)), axis=1)),
    "var": (lambda: lantern.var(X, axis=0, ddof=1), lambda: np.var(X, axis=0, ddof=1)),
    "var_too_few": (lambda: lantern.var(X[:1], axis=0, ddof=2), lambda: np.var(X[:1], axis=0, ddof=2)),
    "std": (lambda: lantern.std(INTS, keepdims=True), lambda: np.std(INTS, keepdims=True)),
    "norm": (lambda: lantern.norm(X), lambda: np.linalg.norm(X)),
    "norm_axis": (lambda: lantern.norm(X, 3, axis=1), lambda: np.linalg.norm(X, 3, axis=1)),
    "norm_inf": (lambda: lantern.norm(X, -np.inf, axis=0), lambda: np.linalg.norm(X, -np.inf, axis=0)),
    "norm_zero": (lambda: lantern.norm(Z, 0, axis=1), lambda: np.linalg.norm(Z, 0, axis=1)),
    "norm_matrix_1": (lambda: lantern.norm(X, 1), lambda: np.linalg.norm(X, 1)),
    "norm_matrix_inf": (lambda: lantern.norm(X, np.inf, keepdims=True), lambda: np.linalg.norm(X, np.inf, keepdims=True)),
    "cumsum": (lambda: lantern.cumsum(X, axis=0), lambda: np.cumsum(X, axis=0)),
    "cumsum_flat": (lambda: lantern.cumsum(FLAGS), lambda: np.cumsum(FLAGS)),
    "cumsum_int32": (lambda: lantern.cumsum(INTS, 1), lambda: np.cumsum(INTS, 1)),
    "cumprod": (lambda: lantern.cumprod(Z, axis=1), lambda: np.cumprod(Z, axis=1)),
    "sort": (lambda: lantern.sort(TIES), lambda: np.sort(TIES, kind="stable")),
    "sort_descending": (lambda: lantern.sort(TIES, 1, descending=True),  # NaN first, ties in order
                        lambda: np.flip(np.sort(np.flip(TIES, 1), 1, kind="stable"), 1)),
    "sort_ints": (lambda: lantern.sort(INTS, axis=0), lambda: np.sort(INTS, axis=0)),
    "argsort": (lambda: lantern.argsort(TIES), lambda: np.argsort(TIES, kind="stable")),
    "argsort_flat": (lambda: lantern.argsort(FLAGS, axis=None), lambda: np.argsort(FLAGS, axis=None, kind="stable")),
    "take_along_axis": (lambda: lantern.take_along_axis(X, np.array([[0, -1], [3, 1], [2, 2]]), axis=1),
                        lambda: np.take_along_axis(X, np.array([[0, -1], [3, 1], [2, 2]]), axis=1)),
    "eye": (lambda: lantern.eye(3, 5, k=-1, dtype="int32"), lambda: np.eye(3, 5, k=-1, dtype=np.int32)),
    "linspace": (lambda: lantern.linspace(-1, 2, 7, dtype="float64"), lambda: np.linspace(-1, 2, 7)),
    "linspace_open": (lambda: lantern.linspace(0.0, 1.0, 4, endpoint=False), lambda: np.linspace(0, 1, 4, endpoint=False).astype(np.float32)),
    "tril": (lambda: lantern.tril(X, -1), lambda: np.tril(X, -1)),
    "triu_batched": (lambda: lantern.triu(X.reshape(3, 2, 2), 1), lambda: np.triu(X.reshape(3, 2, 2), 1)),
    "pad": (lambda: lantern.pad(X, ((1, 0), (2, 1)), constant_values=-9.0),
            lambda: np.pad(X, ((1, 0), (2, 1)), constant_values=-9.0)),
    "pad_reflect": (lambda: lantern.pad(X, 2, mode="reflect"), lambda: np.pad(X, 2, mode="reflect")),
    "pad_symmetric": (lambda: lantern.pad(INTS, (0, 3), mode="symmetric"), lambda: np.pad(INTS, (0, 3), mode="symmetric")),
    "flip": (lambda: lantern.flip(X, (0, 1)), lambda: np.flip(X, (0, 1))),
    "roll": (lambda: lantern.roll(X, -5), lambda: np.roll(X, -5)),
    "roll_axes": (lambda: lantern.roll(X, (1, 2), axis=(0, 1)), lambda: np.roll(X, (1, 2), axis=(0, 1))),
    "tile": (lambda: lantern.tile(INTS, (2, 1, 2)), lambda: np.tile(INTS, (2, 1, 2))),
    "repeat": (lambda: lantern.repeat(X, 3, axis=1), lambda: np.repeat(X, 3, axis=1)),
    "repeat_counts": (lambda: lantern.repeat(X, [2, 0, 1], axis=0), lambda: np.repeat(X, [2, 0, 1], axis=0)),
    "split": (lambda: tuple(lantern.split(X, 2, axis=1)), lambda: tuple(np.split(X, 2, axis=1))),
    "split_at": (lambda: tuple(lantern.split(X, [1, 1, 3])), lambda: tuple(np.split(X, [1, 1, 3]))),
    "nonzero": (lambda: lantern.nonzero(X > 0, size=X.size, fill_value=-1),
                lambda: tuple(np.pad(i, (0, X.size - i.size), constant_values=-1) for i in np.nonzero(X > 0))),
    "where_size": (lambda: lantern.where(FLAGS, size=2), lambda: tuple(i[:2] for i in np.nonzero(FLAGS))),
    "einsum_matmul": (lambda: lantern.einsum("ij,jk->ik", X, X.T), lambda: np.einsum("ij,jk->ik", X, X.T)),
    "einsum_trace": (lambda: lantern.einsum("ii", X[:, :3]), lambda: np.einsum("ii", X[:, :3])),
    "einsum_ellipsis": (lambda: lantern.einsum("...ij,...jk", X.reshape(3, 2, 2), X.reshape(3, 2, 2)),
                        lambda: np.einsum("...ij,...jk", X.reshape(3, 2, 2), X.reshape(3, 2, 2))),
    "einsum_three": (lambda: lantern.einsum("ij,j,kj->ik", X, X[0], X), lambda: np.einsum("ij,j,kj->ik", X, X[0], X)),
    "einsum_broadcast": (lambda: lantern.einsum("...i,...i->...", X, X[:1]), lambda: np.einsum("...i,...i->...", X, X[:1])),
}


def test_values_equal_numpy_and_the_interpreter():
    names = list(VALUES)
    staged = check_staged(lambda: tuple(VALUES[n][0]() for n in names))
    for name, value in zip(names, staged):
        with warnings.catch_warnings():  # NumPy warns where it gives NaN (var with too few elements)
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = VALUES[name][1]()
        for got, want in zip(*(v if isinstance(v, tuple) else (v,) for v in (value, expected))):
            want = np.asarray(want)
            assert got.shape == want.shape, (name, got.shape, want.shape)
            assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=name)


def test_float32_results_and_tensor_methods():
    x = X.astype(np.float32)

    def f(x):
        return (lantern.erf(x), lantern.cumsum(x, 1), lantern.sort(x, 0), x.prod(axis=1), x.std(ddof=1), x.mT,
                round(x * 3), x.round(1), x.copy(), x.cumprod(0), x.argsort(), x.any(), x.all(axis=1),
                x.repeat(2, axis=0), np.var(x), np.cumsum(x), np.sort(x), np.round(x), np.isnan(x), np.tan(x))
    got = check_staged(f, x)
    want = (_erf(x).astype(np.float32), np.cumsum(x, 1), np.sort(x, 0), x.prod(axis=1), x.std(ddof=1), x.swapaxes(-1, -2),
            np.round(x * 3), x.round(1), x, x.cumprod(0), np.argsort(x, kind="stable"), x.any(), x.all(axis=1),
            x.repeat(2, axis=0), np.var(x), np.cumsum(x), np.sort(x), np.round(x), np.isnan(x), np.tan(x))
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == np.asarray(b).dtype, (k, a.dtype, np.asarray(b).dtype)
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6, err_msg=str(k))


def _weights(shape, seed):
    return np.cos(np.arange(math.prod(shape)).reshape(shape) * 1.3 + seed)


def _smooth_ops(x):
    """Every differentiable new operation on x (3 x 4, float64), weighted so that mistakes show."""
    t = lantern.tanh(x) * 0.9
    parts = [lantern.tan(t), lantern.arcsin(t), lantern.arccos(t), lantern.arctan(x), lantern.sinh(x), lantern.cosh(x),
             lantern.erf(x), lantern.arctan2(x, x * x + 0.5), lantern.logaddexp(x, x[::-1]), lantern.softplus(x, 2.0),
             lantern.log_sigmoid(x), lantern.elu(x), lantern.leaky_relu(x, 0.2), lantern.gelu(x),
             lantern.gelu(x, "tanh"), lantern.cumsum(x, 0), lantern.cumprod(t + 1.2, 1), lantern.sort(x, 1),
             lantern.flip(x, 0), lantern.roll(x, 2, axis=1), lantern.tril(x), lantern.triu(x, 1),
             lantern.take_along_axis(x, lantern.argsort(x, 0), 0), lantern.einsum("ij,ij->ij", x, t)]
    total = sum(lantern.sum(p * _weights(p.shape, k)) for k, p in enumerate(parts))
    reductions = (lantern.prod(t + 1.2, 1), lantern.var(x, 0, ddof=1), lantern.std(x, 1), lantern.norm(x),
                  lantern.norm(x, 3, axis=0), lantern.topk(x, 2, axis=1)[0], lantern.pad(x, 1, mode="reflect"),
                  lantern.tile(x, (1, 2)), lantern.repeat(x, [1, 2, 0], axis=0), lantern.einsum("ij,kj->ik", x, t),
                  lantern.split(x, 2, axis=1)[1])
    return total + sum(lantern.sum(p * _weights(p.shape, 30 + k)) for k, p in enumerate(reductions))


def test_gradients_against_finite_differences():
    check_grads(_smooth_ops, X)


def test_gradients_of_products_through_zeros():
    """prod and cumprod: exact where elements are zero (one zero in a row, two, none), as PyTorch's."""
    def loss(x):
        return (lantern.sum(lantern.prod(x, axis=1) * np.array([1.0, 2.0, 3.0]))
                + lantern.sum(lantern.cumprod(x, axis=1) * _weights((3, 4), 0))
                + lantern.sum(lantern.cumprod(x, axis=0) * _weights((3, 4), 1)))
    grads = check_grads(loss, Z)
    # row 1 has two zeros: the product's gradient there is zero
    by_hand = lantern.grad(lambda x: lantern.sum(lantern.prod(x, axis=1)))(Z)
    np.testing.assert_array_equal(by_hand[1], 0.0)
    np.testing.assert_allclose(by_hand[0], [0.0, 1.5 * 2.0 * -1.0, 0.0, 0.0])
    assert np.all(np.isfinite(grads))
    np.testing.assert_array_equal(lantern.grad(lambda x: lantern.norm(x))(np.zeros(3)), 0.0)  # PyTorch's choice


def test_against_pytorch():
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, requires_grad=True)
    out = torch.special.erf(x).sum() + torch.nn.functional.gelu(x).sum() + torch.cumprod(x, 1).sum() + torch.sort(x, dim=1, descending=True, stable=True).values[:, 0].sum() \
        + torch.topk(x, 2, dim=0).values.sum() + torch.nn.functional.softplus(x).sum() \
        + torch.nn.functional.elu(x).sum() + torch.var(x, 0).sum() + torch.linalg.vector_norm(x)
    out.backward()

    def loss(x):
        return (lantern.erf(x).sum() + lantern.gelu(x).sum() + lantern.cumprod(x, 1).sum()
                + lantern.sort(x, 1, descending=True)[:, 0].sum() + lantern.topk(x, 2, axis=0)[0].sum()
                + lantern.softplus(x).sum() + lantern.elu(x).sum() + lantern.var(x, 0, ddof=1).sum() + lantern.norm(x))
    value, grad = lantern.value_and_grad(loss)(X)
    np.testing.assert_allclose(value, out.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-10, atol=1e-12)


def _raises(error, pattern, fn, *args):
    with pytest.raises(error, match=pattern + r".*test_more_ops\.py:\d+"):
        lantern.stage(fn)(*args)


def test_numpy_errors_are_lantern_errors_at_the_user_s_line():
    _raises(lantern.TraceError, r"where\(condition\) alone .* pass size=N", lambda x: lantern.where(x > 0), X)
    _raises(lantern.TraceError, r"where: give both x and y", lambda x: lantern.where(x > 0, x), X)
    _raises(lantern.TraceError, r"norm: ord='nuc' over two axes needs singular values", lambda x: lantern.norm(x, "nuc"), X)
    _raises(lantern.ShapeError, r"split: an axis of size 4 does not split into 3 equal parts",
            lambda x: lantern.split(x, 3, axis=1), X)
    _raises(lantern.ShapeError, r"einsum: label 'i' stands for axes of sizes 3 and 4", lambda x: lantern.einsum("ij,i", x, x[0]), X)
    _raises(lantern.ShapeError, r"einsum: bad subscripts", lambda x: lantern.einsum("i2", x), X)
    _raises(lantern.ShapeError, r"topk: k=5 out of range for an axis of size 4", lambda x: lantern.topk(x, 5), X)
    _raises(lantern.ShapeError, r"pad: mode 'reflect' cannot extend the empty axis", lambda x: lantern.pad(x, 1, "reflect"),
            np.zeros((0, 2)))
    _raises(lantern.TraceError, r"pad: mode 'median' is not supported", lambda x: lantern.pad(x, 1, "median"), X)
    _raises(lantern.ShapeError, r"repeat: 2 counts for an axis of size 3", lambda x: lantern.repeat(x, [1, 2], axis=0), X)
    _raises(lantern.ShapeError, r"nonzero: not defined for a 0-d array", lambda x: lantern.nonzero(x, size=1), np.float64(1))
    _raises(lantern.TraceError, r"gelu: approximate must be 'none' or 'tanh'", lambda x: lantern.gelu(x, "erf"), X)
    _raises(lantern.DTypeError, r"round: bool tensors take no decimals", lambda x: lantern.round(x > 0, 1), X)
    _raises(lantern.ConcretizationError, r"item\(\) of Tensor.*call \.item\(\) on the result", lambda x: x.sum().item(), X)
    _raises(lantern.TraceError, r"mT: needs at least 2 dimensions", lambda x: x[0].mT, X)
    with pytest.raises(lantern.OutOfBoundsError, match=r"test_more_ops\.py:\d+: take_along_axis on an axis of size 4: "
                                                       r"index 4 is out of bounds"):
        lantern.stage(lambda x, i: lantern.take_along_axis(x, i, 1))(X, np.array([[0], [4], [1]]))


def test_operations_run_eagerly_too():
    """Outside staging (lantern/eager.py) the new operations give the staged results."""
    for name in ("sort", "cumprod", "einsum_three", "nonzero", "norm_matrix_inf", "pad_reflect", "gelu"):
        eager, staged = VALUES[name][0](), lantern.stage(VALUES[name][0])()
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (eager, staged))):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=name)  # (a BLAS product's last bit may differ)
