"""Gradients of every differentiable operation, checked with ``lantern.testing.check_grads``.

``check_grads`` compares the native gradient with the reference interpreter (traced and
optimized IR) and with central finite differences along a random direction. Losses weight
each output element differently (``wsum``): with a plain ``sum`` the incoming adjoint is all
ones, which hides permutation mistakes in the backward rules of data movement.
Several operations share one check where that keeps the number of compiled kernels down.
"""
from __future__ import annotations

import numpy as np
import pytest

import lantern
from lantern.testing import assert_trees_close, check_grads

RNG = np.random.default_rng(1234)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, shape)


def wsum(y):
    """A weighted sum with a fixed, distinct weight per element (staged, not differentiated)."""
    y = lantern.asarray(y)
    w = lantern.cos(lantern.arange(y.size, dtype="float64") * 1.3 + 0.4)
    return lantern.sum(y * lantern.reshape(w, y.shape).astype(y.dtype))


def weights(shape):
    """The weights ``wsum`` uses, as a NumPy array."""
    n = int(np.prod(shape))
    return np.cos(np.arange(n, dtype=np.float64) * 1.3 + 0.4).reshape(shape)


# ------------------------------------------------------------------ elementwise

UNARY_GROUPS = {
    "exp_log_log1p_expm1": lambda x: (wsum(lantern.exp(x)) + 0.5 * wsum(lantern.log(x))
                                      - wsum(lantern.log1p(x)) + 0.3 * wsum(lantern.expm1(x))),
    "sin_cos_tanh_sigmoid": lambda x: (wsum(lantern.sin(x)) + 0.7 * wsum(lantern.cos(x))
                                       - 1.1 * wsum(lantern.tanh(x)) + wsum(lantern.sigmoid(x))),
    "silu_sqrt_rsqrt_neg": lambda x: (wsum(lantern.silu(x)) + 0.6 * wsum(lantern.sqrt(x))
                                      - 0.8 * wsum(lantern.rsqrt(x)) + wsum(-x)),
}


@pytest.mark.parametrize("group", sorted(UNARY_GROUPS))
def test_unary(group):
    check_grads(UNARY_GROUPS[group], rand(3, 4, lo=0.3, hi=2.0))


def test_abs_relu_away_from_kinks():
    x = rand(3, 4, lo=0.2, hi=1.5) * np.where(np.arange(12).reshape(3, 4) % 3 == 0, -1.0, 1.0)
    check_grads(lambda x: wsum(lantern.abs(x)) + 0.5 * wsum(lantern.relu(x)) + wsum(abs(x * 2.0)), x)


def _arith(a, b):
    return wsum(a + b) - 0.5 * wsum(a - b) + wsum(a * b) + 0.3 * wsum(a / b) + wsum(b - a * 2.0)


@pytest.mark.parametrize("shapes", [((3, 1), (1, 4)), ((), (3, 4)), ((4,), (3, 4)), ((3, 4), (1,))],
                         ids=["col_row", "scalar_matrix", "row_matrix", "matrix_one"])
def test_arithmetic_broadcasting(shapes):
    sa, sb = shapes
    a = rand(*sa, lo=0.5, hi=2.0)
    b = rand(*sb, lo=0.5, hi=2.0)
    grads = check_grads(_arith, a, b, argnums=(0, 1))
    assert grads[0].shape == a.shape and grads[1].shape == b.shape


def test_power_tensor_exponent_broadcast():
    a = rand(3, 1, lo=0.5, hi=2.0)
    b = rand(1, 4, lo=-1.5, hi=2.5)
    check_grads(lambda a, b: wsum(a ** b) + wsum(lantern.power(b, 2.0) ** a), a, b, argnums=(0, 1))


def test_power_scalar_exponents():
    x = rand(3, 4, lo=0.4, hi=2.0)
    neg = rand(4, lo=-2.0, hi=-0.5)  # integer exponents of a negative base
    check_grads(lambda x, n: (wsum(x ** 2) + wsum(x ** 3) + 0.5 * wsum(x ** 2.5) + wsum(x ** -1.5)
                              + wsum(x ** 0.5) + wsum(x ** 1) + wsum(x ** (1 / 3)) + wsum(2.0 ** x)
                              + wsum(n ** 3) + wsum(n ** -2) + wsum(n ** 2.0)), x, neg, argnums=(0, 1))


def test_maximum_minimum_clip_where_broadcast():
    a = np.array([[0.1], [0.9], [-0.7]])
    b = np.array([[-0.5, 0.3, 0.6, 1.2]])  # no ties with a
    x = rand(3, 4)
    x[np.abs(x - 0.2) < 0.05] += 0.1   # stay away from the clip bounds
    x[np.abs(x + 0.4) < 0.05] -= 0.1

    def f(a, b, x):
        return (wsum(lantern.maximum(a, b)) + 0.7 * wsum(lantern.minimum(a, b))
                + wsum(lantern.clip(x, -0.4, 0.2)) + wsum(lantern.where(x > 0, a * x, b - x))
                + wsum(lantern.where(a < b, 1.0, b)))
    check_grads(f, a, b, x, argnums=(0, 1, 2))


def test_maximum_minimum_ties_split_evenly():
    a = np.array([1.0, 2.0, 3.0, -1.0])
    b = np.array([1.0, 0.0, 3.0, 5.0])  # ties at 0 and 2
    ga, gb = lantern.grad(lambda a, b: wsum(lantern.maximum(a, b)) + 10 * wsum(lantern.minimum(a, b)),
                          argnums=(0, 1))(a, b)
    w = weights((4,))
    tie = a == b
    np.testing.assert_allclose(ga, np.where(tie, 5.5 * w, np.where(a > b, w, 10 * w)), rtol=1e-12)
    np.testing.assert_allclose(gb, np.where(tie, 5.5 * w, np.where(b > a, w, 10 * w)), rtol=1e-12)


def test_mod_float():
    a = np.array([[1.3, 2.7, -0.6, 5.2]])
    b = np.array([[0.7], [1.1], [-1.6]])  # a / b stays away from integers
    assert np.min(np.abs(a / b - np.round(a / b))) > 0.05
    assert np.min(np.abs(a / 0.8 - np.round(a / 0.8))) > 0.05
    check_grads(lambda a, b: wsum(lantern.mod(a, b)) + wsum(a % 0.8) + wsum(1.7 % b), a, b, argnums=(0, 1))


def test_integer_operands_promote_and_take_no_gradient():
    x = rand(3, 4, lo=0.5, hi=1.5)
    x[np.abs(x - 1.0) < 0.05] += 0.1  # x % 1 jumps at 1
    n = np.array([1, 2, 3, 4], dtype=np.int64)
    check_grads(lambda x, n: (wsum(lantern.power(n, x)) + wsum(lantern.maximum(x, n - 2)) + wsum(x % n)
                              + wsum(n / x) + wsum(lantern.where(x > 1, n, x))), x, n)


def test_astype_round_trip_gradients():
    x64 = rand(3, 4)

    def f(x):  # float64 argument through float32 arithmetic
        y = lantern.astype(x, "float32")
        return lantern.sum(y * y * lantern.astype(weights_t(x.shape), "float32")).astype("float64")

    def weights_t(shape):
        return lantern.reshape(lantern.cos(lantern.arange(12, dtype="float64") * 1.3 + 0.4), shape)

    g = lantern.grad(f)(x64)
    assert g.dtype == np.float64
    x32 = x64.astype(np.float32)
    np.testing.assert_allclose(g, 2 * x32 * weights((3, 4)).astype(np.float32), rtol=1e-6)

    def h(x):  # float32 argument through float64 arithmetic
        y = lantern.astype(x, "float64")
        return lantern.sum(y * y * weights_t(x.shape))
    g32 = lantern.grad(h)(x32)
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, (2 * x32.astype(np.float64) * weights((3, 4))).astype(np.float32), rtol=1e-6)


# ------------------------------------------------------------------ reductions

REDUCTIONS = {
    "sum": lambda x: (wsum(x.sum(0)) + wsum(x.sum(1)) + wsum(x.sum((0, 2))) + wsum(x.sum(-1, keepdims=True))
                      + x.sum() + wsum(lantern.sum(x, (1, 2), keepdims=True))),
    "mean": lambda x: (wsum(x.mean(0)) + wsum(x.mean(2)) + wsum(x.mean((0, 1), keepdims=True)) + 3 * x.mean()
                       + wsum(lantern.mean(x, 1, keepdims=True))),
    "max": lambda x: (wsum(x.max(0)) + wsum(x.max(1)) + wsum(x.max((0, 2))) + wsum(x.max(-1, keepdims=True))
                      + x.max() + wsum(lantern.max(x, None, keepdims=True))),
    "min": lambda x: (wsum(x.min(0)) + wsum(x.min(2)) + wsum(x.min((1, 2))) + wsum(x.min(1, keepdims=True))
                      + x.min()),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name):
    x = RNG.permutation(24).reshape(2, 3, 4) * 0.1 + rand(2, 3, 4) * 0.01  # distinct values: no ties
    check_grads(REDUCTIONS[name], x)


def test_max_min_ties_share_gradient_evenly():
    x = np.array([[1.0, 3.0, 3.0, 0.0],
                  [2.0, 2.0, 2.0, -1.0],
                  [5.0, -4.0, 0.5, -4.0]])
    g = lantern.grad(lambda x: wsum(x.max(1)) + 10 * wsum(x.min(1)) + 100 * x.max())(x)
    w = weights((3,))
    expected = np.zeros_like(x)
    expected[0, 1:3] = w[0] / 2
    expected[1, :3] = w[1] / 3
    expected[2, 0] = w[2] + 100
    expected[0, 3] += 10 * w[0]
    expected[1, 3] += 10 * w[1]
    expected[2, [1, 3]] += 10 * w[2] / 2
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_stop_gradient_is_the_identity_held_constant(rng):
    x = rng.standard_normal(4)
    value, g = lantern.value_and_grad(lambda x: (x * lantern.stop_gradient(x * x)).sum())(x)
    np.testing.assert_allclose(value, (x ** 3).sum(), rtol=1e-15)
    np.testing.assert_allclose(g, x * x, rtol=1e-15)  # not 3 x**2
    assert lantern.stage(lambda x: lantern.stop_gradient(x > 0))(x).dtype == np.bool_


def test_logsumexp_softmax_log_softmax():
    x = rand(3, 5, lo=-2.0, hi=2.0)
    check_grads(lambda x: (wsum(lantern.logsumexp(x, 1)) + wsum(lantern.logsumexp(x, 0, keepdims=True))
                           + lantern.logsumexp(x) + wsum(lantern.softmax(x)) + wsum(lantern.softmax(x, 0))
                           + wsum(lantern.log_softmax(x, -1))), x)


# ------------------------------------------------------------------ matmul

MATMUL_SHAPES = {
    "vec_vec": ((4,), (4,)),
    "mat_vec": ((3, 4), (4,)),
    "vec_mat": ((4,), (4, 5)),
    "mat_mat": ((3, 4), (4, 5)),
    "batched": ((2, 3, 4), (2, 4, 5)),
    "broadcast_batch": ((2, 1, 3, 4), (5, 4, 2)),
    "mat_times_batch": ((3, 4), (2, 4, 5)),
    "batch_times_mat": ((2, 3, 4), (4, 5)),
    "batch_times_vec": ((2, 3, 4), (4,)),
    "blas": ((16, 24), (24, 20)),
    "blas_batched": ((3, 16, 24), (24, 12)),
}


@pytest.mark.parametrize("name", sorted(MATMUL_SHAPES))
def test_matmul(name):
    sa, sb = MATMUL_SHAPES[name]
    a, b = rand(*sa), rand(*sb)
    ga, gb = check_grads(lambda a, b: wsum(a @ b), a, b, argnums=(0, 1))
    assert ga.shape == a.shape and gb.shape == b.shape
    if name == "blas":
        assert np.prod(sa) * sb[-1] >= 4096
        g = weights((16, 20))
        np.testing.assert_allclose(ga, g @ b.T, rtol=1e-10)
        np.testing.assert_allclose(gb, a.T @ g, rtol=1e-10)


# ------------------------------------------------------------------ shapes and indexing

def test_reshape_transpose_swapaxes():
    x = rand(2, 3, 4)
    check_grads(lambda x: (wsum(x.reshape(4, 6)) + wsum(lantern.transpose(x, (2, 0, 1)))
                           + wsum(x.transpose(1, 2, 0) * 2.0) + wsum(x.T) + wsum(lantern.swapaxes(x, 0, 2) ** 2)
                           + wsum(lantern.moveaxis(x, 0, -1)) + wsum(x.reshape(-1)[3:])), x)


def test_expand_dims_squeeze_broadcast_to():
    x = rand(3, 1, 4)
    check_grads(lambda x: (wsum(lantern.expand_dims(x, 0) * 2.0) + wsum(lantern.squeeze(x, 1))
                           + wsum(lantern.expand_dims(lantern.squeeze(x), (0, 2)))
                           + wsum(lantern.broadcast_to(x, (2, 3, 5, 4)))
                           + wsum(lantern.broadcast_to(x[0, 0], (3, 4)))), x)


def test_static_slices_and_integer_indexing():
    x = rand(5, 6)
    check_grads(lambda x: (wsum(x[1:4]) + wsum(x[::2, 1::3]) + wsum(x[::-1]) + wsum(x[4:0:-2, ::-3])
                           + wsum(x[2]) + wsum(x[:, -1]) + x[3, 2] * 2.0 + wsum(x[None, 1:, ..., 2])
                           + wsum(x[-2:, :-4] ** 2)), x)


def test_gather_repeated_indices_sums_rows():
    emb = rand(5, 3)
    idx = np.array([1, 3, 1, 0, 1, -1], dtype=np.int64)
    f = lambda emb, idx: wsum(lantern.tanh(emb[idx])) + wsum(lantern.take(emb, idx[:2]))
    g = check_grads(f, emb, idx)
    # Row 1 is used three times: its gradient is the sum of the three rows' adjoints.
    w = weights((6, 3))
    expected = np.zeros_like(emb)
    np.add.at(expected, idx, w * (1 - np.tanh(emb[idx]) ** 2))
    np.add.at(expected, idx[:2], weights((2, 3)))
    np.testing.assert_allclose(g, expected, rtol=1e-12)


def test_take_along_axis_1_and_2d_indices():
    x = rand(3, 6)
    idx = np.array([[5, 0], [2, 2]], dtype=np.int64)
    check_grads(lambda x, i: wsum(lantern.take(x, i, axis=1)) + wsum(x[:, i[0]] * 3.0)
                + wsum(lantern.take(x, i[1], axis=0)), x, idx)


def test_concatenate_and_stack():
    a, b, c = rand(2, 3), rand(4, 3), rand(2, 3)
    check_grads(lambda a, b, c: (wsum(lantern.concatenate([a, b, c], axis=0))
                                 + wsum(lantern.concatenate([a, c * 2.0], axis=1) ** 2)
                                 + wsum(lantern.stack([a, c, a], axis=1)) + wsum(lantern.stack([a, c], -1))),
                a, b, c, argnums=(0, 1, 2))


def test_one_hot_cross_entropy():
    logits = rand(4, 5, lo=-2.0, hi=2.0)
    labels = np.array([0, 3, 3, 4], dtype=np.int64)

    def loss(logits, labels):
        return -lantern.mean(lantern.sum(lantern.one_hot(labels, 5, "float64") * lantern.log_softmax(logits), -1))
    g = check_grads(loss, logits, labels)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(g, (p - np.eye(5)[labels]) / 4, rtol=1e-10)


# ------------------------------------------------------------------ non-differentiable operations

def test_argmax_index_stops_gradient():
    x = rand(3, 5)
    v = rand(5, 2)

    def f(x, v):
        i = lantern.argmax(x, axis=1)  # an integer: no gradient flows back through it into x
        return wsum(v[i] * lantern.max(x, 1, keepdims=True)) + wsum(lantern.take(x, i, axis=1))
    check_grads(f, x, v, argnums=(0, 1))


def test_floor_comparisons_integer_arithmetic_stop_gradient():
    x = rand(3, 4, lo=0.1, hi=3.0)
    x[np.abs(x - np.round(x)) < 0.05] += 0.1   # floor is locally constant here

    def f(x):
        k = lantern.astype(lantern.floor(x), "int64") * 3 + 1  # integer arithmetic
        mask = (x > 1.0) & (k % 2 == 1)
        return wsum(lantern.floor(x) * x) + wsum(lantern.where(mask, x * x, -x)) + wsum(k * x)
    g = check_grads(f, x)
    k = np.floor(x) * 3 + 1
    mask = (x > 1.0) & (k % 2 == 1)
    np.testing.assert_allclose(g, weights((3, 4)) * (np.floor(x) + np.where(mask, 2 * x, -1) + k), rtol=1e-12)


def test_integer_leaves_get_zero_gradients_of_their_dtype():
    params = {"w": rand(3, 2), "idx": np.array([2, 0, 2], dtype=np.int64),
              "n": np.array(3, dtype=np.int32), "b": rand(2)}

    def f(p):
        return (wsum(p["w"][p["idx"]] * p["b"]) * lantern.astype(p["n"], "float64")
                + wsum(p["w"][p["idx"][1]] ** 2))  # a staged 0-d index
    g = check_grads(f, params)
    expected_w = np.zeros((3, 2))
    np.add.at(expected_w, params["idx"], 3 * weights((3, 2)) * params["b"])
    expected_w[0] += 2 * params["w"][0] * weights((2,))
    np.testing.assert_allclose(g["w"], expected_w, rtol=1e-12)
    assert g["idx"].dtype == np.int64 and g["idx"].shape == (3,) and not g["idx"].any()
    assert g["n"].dtype == np.int32 and g["n"].shape == () and g["n"] == 0
    assert g["w"].dtype == np.float64 and g["b"].shape == (2,)


# ------------------------------------------------------------------ API

def _three(x, y, z):
    return wsum(x * y) + lantern.sum(lantern.sin(z) * y) * lantern.sum(x)


def test_argnums_int_tuple_negative():
    x, y, z = rand(3), rand(3), rand(2, 3)
    w = weights((3,))
    gy = check_grads(_three, x, y, z, argnums=1)
    np.testing.assert_allclose(gy, w * x + np.sin(z).sum(0) * x.sum(), rtol=1e-12)
    g_neg = lantern.grad(_three, argnums=(-1, 0))(x, y, z)
    assert isinstance(g_neg, tuple) and len(g_neg) == 2
    np.testing.assert_allclose(g_neg[0], np.cos(z) * y * x.sum(), rtol=1e-12)
    np.testing.assert_allclose(g_neg[1], w * y + np.sum(np.sin(z) * y), rtol=1e-12)
    (gz,) = lantern.grad(_three, argnums=(2,))(x, y, z)
    np.testing.assert_allclose(gz, g_neg[0], rtol=1e-12)
    gz_neg = lantern.grad(_three, argnums=-1)(x, y, z)
    assert isinstance(gz_neg, np.ndarray)
    np.testing.assert_allclose(gz_neg, g_neg[0], rtol=1e-12)


def test_gradient_that_does_not_read_its_argument():
    # The gradient of a linear loss never reads x: the C parameter stays unused (no warning).
    g = lantern.grad(lambda x: lantern.sum(x * 2.0))(np.ones(3))
    np.testing.assert_array_equal(g, np.full(3, 2.0))


def _with_aux(p, x):
    h = lantern.tanh(x @ p["w"] + p["b"])
    loss = lantern.mean(h * h)
    return loss, {"h": h, "stats": (lantern.max(h), lantern.argmax(h.sum(0)))}


def test_has_aux_value_and_grad_and_grad():
    p = {"w": rand(4, 3), "b": rand(3)}
    x = rand(5, 4)
    (loss, aux), g = lantern.value_and_grad(_with_aux, has_aux=True)(p, x)
    h = np.tanh(x @ p["w"] + p["b"])
    np.testing.assert_allclose(loss, np.mean(h * h), rtol=1e-12)
    np.testing.assert_allclose(aux["h"], h, rtol=1e-12)
    np.testing.assert_allclose(aux["stats"][0], h.max(), rtol=1e-12)
    assert aux["stats"][1] == np.argmax(h.sum(0)) and aux["stats"][1].dtype == np.int64
    dh = 2 * h / h.size * (1 - h * h)
    np.testing.assert_allclose(g["w"], x.T @ dh, rtol=1e-10)
    np.testing.assert_allclose(g["b"], dh.sum(0), rtol=1e-10)
    g2, aux2 = lantern.grad(_with_aux, has_aux=True)(p, x)
    assert_trees_close(g2, g, rtol=1e-12, atol=0)
    assert_trees_close(aux2, aux, rtol=1e-12, atol=0)
    g3 = lantern.grad(lambda p, x: _with_aux(p, x)[0])(p, x)
    assert_trees_close(g3, g, rtol=1e-12, atol=0)


def _loss(p, x, y):
    h = lantern.tanh(x @ p["w1"] + p["b1"])
    return lantern.mean((h @ p["w2"] - y) ** 2)


@lantern.stage
def _train_step(p, x, y):
    loss, g = lantern.value_and_grad(_loss)(p, x, y)
    return {k: p[k] - 0.1 * g[k] for k in p}, loss


def test_value_and_grad_inside_stage_train_step():
    p = {"w1": rand(4, 6), "b1": rand(6), "w2": rand(6, 2)}
    x, y = rand(8, 4), rand(8, 2)
    loss, g = lantern.value_and_grad(_loss)(p, x, y)
    new_p, loss2 = _train_step(p, x, y)
    np.testing.assert_allclose(loss2, loss, rtol=1e-12)
    for k in p:
        np.testing.assert_allclose(new_p[k], p[k] - 0.1 * g[k], rtol=1e-12, atol=1e-15)
    exe = _train_step.lower(p, x, y)
    assert_trees_close(exe.interpret(p, x, y), (new_p, loss2), rtol=1e-10, atol=1e-12)
    # A second step from the updated parameters lowers the loss.
    _, loss3 = _train_step(new_p, x, y)
    assert loss3 < loss2


def test_reused_value_accumulates():
    x = rand(3, 4, lo=0.5, hi=1.5)
    g = check_grads(lambda x: wsum(x * lantern.exp(x) + lantern.sin(x)), x)
    np.testing.assert_allclose(g, weights((3, 4)) * ((1 + x) * np.exp(x) + np.cos(x)), rtol=1e-12)


def test_nested_params():
    params = {"layer": {"w": rand(3, 2), "b": rand(2)}, "pair": (rand(2), rand()), "scale": rand()}
    x = rand(4, 3)

    def f(p, x):
        h = lantern.tanh(x @ p["layer"]["w"] + p["layer"]["b"])
        return wsum(h * p["pair"][0] + p["pair"][1]) * p["scale"]
    g = check_grads(f, params, x)
    assert set(g) == {"layer", "pair", "scale"} and isinstance(g["pair"], tuple)
    assert g["pair"][1].shape == () and g["scale"].shape == ()


def test_float32_gradients_match_float64():
    p = {"w1": rand(4, 6), "b1": rand(6), "w2": rand(6, 2)}
    x, y = rand(8, 4), rand(8, 2)
    g64 = lantern.grad(_loss)(p, x, y)
    to32 = lambda t: {k: v.astype(np.float32) for k, v in t.items()}
    g32 = lantern.grad(_loss)(to32(p), x.astype(np.float32), y.astype(np.float32))
    for k in p:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-5)


def test_clear_errors():
    x = rand(3)
    with pytest.raises(lantern.TraceError, match="scalar"):
        lantern.grad(lambda x: x * 2.0)(x)
    with pytest.raises(lantern.TraceError, match="float"):
        lantern.grad(lambda x, i: lantern.sum(i))(x, np.array([1, 2], dtype=np.int64))
    with pytest.raises(lantern.TraceError, match="pair"):
        lantern.value_and_grad(lambda x: lantern.sum(x), has_aux=True)(x)
    with pytest.raises(lantern.TraceError, match="pair"):
        lantern.grad(lambda x: (lantern.sum(x), x, x), has_aux=True)(x)
    with pytest.raises(lantern.TraceError, match="has_aux"):
        lantern.grad(lambda x: (lantern.sum(x), x))(x)


def test_gradient_of_a_nan_maximum_is_nan():
    """A slice whose maximum is NaN equals nothing in it: its gradient is NaN (as JAX's and PyTorch's), the
    other slices' as usual."""
    x = np.array([[1.0, np.nan, 2.0], [3.0, 5.0, 5.0]])
    g = lantern.stage(lantern.grad(lambda x: lantern.ops.sum(lantern.ops.max(x, 1) * np.array([2.0, 4.0]))))(x)
    assert np.isnan(g[0]).all()
    np.testing.assert_array_equal(g[1], [0.0, 2.0, 2.0])
