"""The CPS transformation itself: loops decided at run time, recursion, naming, what gets an adjoint."""
import re

import numpy as np
import pytest

import lantern
from lantern.testing import check_grads


def _two_state_loop(w, xs):
    # c only matters through h inside the loop; its final value is unused.
    def body(i, state):
        h, c = state
        c = lantern.tanh(c * w + xs[i])
        return lantern.sigmoid(h + c), c

    h, _ = lantern.fori_loop(0, xs.shape[0], body, (lantern.zeros(3, "float64"), lantern.zeros(3, "float64")))
    return (h * h).sum()


def test_carried_value_whose_final_value_is_unused(rng):
    check_grads(_two_state_loop, rng.standard_normal(3), rng.standard_normal((4, 3)), argnums=(0, 1))


def _while_loss(w, x):
    def cond(c):
        return (c[0] < 4) & (lantern.abs(c[1]).sum() < 100.0)

    def body(c):
        n, h = c
        return n + 1, lantern.tanh(h * w + x)

    _, h = lantern.while_loop(cond, body, (0, x))
    return (h * h).sum() + w.sum()


def test_while_loop_gradient(rng):
    check_grads(_while_loss, rng.standard_normal(3), rng.standard_normal(3), argnums=(0, 1))


def test_fori_loop_with_staged_bounds(rng):
    def loss(w, xs, n):
        h = lantern.fori_loop(0, n, lambda i, h: lantern.tanh(h * w + xs[i]), lantern.zeros(3, "float64"))
        return (h * h).sum()

    w, xs = rng.standard_normal(3), rng.standard_normal((6, 3))
    for n in (0, 1, 4):
        check_grads(loss, w, xs, np.int64(n), argnums=(0, 1))


def test_while_loop_of_ten_thousand_iterations():
    def loss(w):
        _, s = lantern.while_loop(lambda c: c[0] < 10_000, lambda c: (c[0] + 1, c[1] * 0.9999 + w), (0, w))
        return s.sum()

    exe = lantern.value_and_grad(loss).lower(np.ones(2))
    value, g = exe(np.ones(2))
    # s_n = 0.9999^n s_0 + w (1 - 0.9999^n) / (1 - 0.9999), with s_0 = w
    a = 0.9999 ** 10_000
    np.testing.assert_allclose(g, np.full(2, a + (1 - a) / (1 - 0.9999)), rtol=1e-9)
    assert exe.native.arena_in_use() == 0


@lantern.stage
def _tree_value(node, w, values, left, right):
    leaf = lambda: lantern.tanh(values[node] * w)  # noqa: E731
    inner = lambda: lantern.tanh(_tree_value(left[node], w, values, left, right) * w  # noqa: E731
                                 + _tree_value(right[node], w, values, left, right) + values[node])
    return lantern.cond(left[node] < 0, leaf, inner)


def _tree_loss(w, values, left, right):
    return _tree_value(np.int64(0), w, values, left, right) ** 2


def test_recursive_function_gradient_sums_over_all_nodes(rng):
    left = np.array([1, 3, -1, -1, -1], np.int64)
    right = np.array([2, 4, -1, -1, -1], np.int64)
    check_grads(_tree_loss, np.float64(0.7), rng.standard_normal(5), left, right, argnums=(0, 1))


def test_gradient_c_is_named_after_user_variables_and_skips_unneeded_adjoints():
    def loss(w, x):
        h = lantern.tanh(x @ w)
        s = h.sum()
        y = lantern.cond(s > 0, lambda: h * 2.0, lambda: h - 1.0)
        return (y * y).sum()

    exe = lantern.value_and_grad(loss).lower(np.ones((3, 2)), np.ones((4, 3)))
    c = exe.c_source
    assert "double *h_bar_" in c and "y_bar_" in c
    # the forward tanh comes before the continuation call, which comes before the backward use of h_bar
    assert c.index("tanh(") < c.index("lambda_1(&cont_env1") < c.rindex("h_bar_")
    # s feeds only the predicate: it gets no adjoint
    assert "double s_" in c and not re.search(r"\bs_bar_", c)


def test_ad_errors_are_clear():
    with pytest.raises(lantern.TraceError, match="scalar"):
        lantern.grad(lambda x: x * 2.0)(np.ones(3))
    with pytest.raises(lantern.TraceError, match="float scalar"):
        lantern.grad(lambda x: (x > 0).sum())(np.ones(3))


def test_second_order_gradients_of_straight_line_code():
    f = lambda x: lantern.sum(lantern.grad(lambda y: lantern.sum(y * y * y))(x))  # noqa: E731
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(lantern.grad(f)(x), 6 * x)
    check_grads(f, x)


def test_function_given_to_grad_may_close_over_staged_values(rng):
    def g(w, idx):
        # the inner loss reads `idx` from the enclosing staged function; it is a constant for grad
        inner = lantern.grad(lambda w: (lantern.tanh(w[idx]) ** 2).sum() + (w[1:3] ** 3).sum())(w)
        return (inner * inner).sum()

    check_grads(g, np.array([0.3, -0.2, 0.5, 0.9]), np.array([0, 2, 2], np.int64))


def test_train_step_with_a_closure_over_the_batch(rng):
    @lantern.stage
    def step(w, x, y):
        loss, g = lantern.value_and_grad(lambda w: ((x @ w - y) ** 2).mean())(w)
        return w - 0.1 * g, loss

    w, x, y = rng.standard_normal(3), rng.standard_normal((8, 3)), rng.standard_normal(8)
    new_w, loss = step(w, x, y)
    np.testing.assert_allclose(loss, ((x @ w - y) ** 2).mean())
    np.testing.assert_allclose(new_w, w - 0.1 * (2 / 8) * x.T @ (x @ w - y))


def test_grad_of_a_gradient_through_control_flow_is_a_clear_error():
    inner = lambda y: lantern.cond(y.sum() > 0, lambda: (y * y).sum(), lambda: y.sum())  # noqa: E731
    f = lambda x: lantern.sum(lantern.grad(inner)(x))  # noqa: E731
    with pytest.raises(lantern.TraceError, match="not supported yet"):
        lantern.grad(f)(np.ones(3))


H = 4


@lantern.stage
def _tree_lstm_like(node, p, emb, words, left, right):
    def leaf():
        return lantern.tanh(emb[words[node]] @ p["W"] + p["b"])

    def inner():
        hl = _tree_lstm_like(left[node], p, emb, words, left, right)
        hr = _tree_lstm_like(right[node], p, emb, words, left, right)
        return lantern.tanh(hl @ p["Ul"] + hr @ p["Ur"] + p["b"])

    return lantern.cond(left[node] < 0, leaf, inner)


def _tree_state_loss(p, emb, words, left, right):
    h = _tree_lstm_like(np.int64(0), p, emb, words, left, right)
    return (h * h).sum()


def _random_tree(rng, n_leaves):
    left, right = [], []

    def build(k):
        i = len(left)
        left.append(-1), right.append(-1)
        if k > 1:
            s = int(rng.integers(1, k))
            left[i], right[i] = build(s), build(k - s)
        return i

    build(n_leaves)
    return np.array(left, np.int64), np.array(right, np.int64)


@pytest.mark.parametrize("leaves", [1, 7, 500])
def test_gradient_over_random_trees(rng, leaves):
    left, right = _random_tree(rng, leaves)  # 2 * leaves - 1 nodes: 999 for 500 leaves
    words = rng.integers(0, 7, len(left))
    p = {"W": rng.standard_normal((3, H)) * 0.5, "Ul": rng.standard_normal((H, H)) * 0.5,
         "Ur": rng.standard_normal((H, H)) * 0.5, "b": rng.standard_normal(H) * 0.1}
    emb = rng.standard_normal((7, 3))
    check_grads(_tree_state_loss, p, emb, words, left, right, argnums=(0, 1))
    exe = lantern.value_and_grad(_tree_state_loss, argnums=(0, 1)).lower(p, emb, words, left, right)
    exe(p, emb, words, left, right)
    assert exe.native.arena_in_use() == 0


def test_counted_loop_stores_its_products_instead_of_recomputing_them(rng):
    """The backward part of a static fori_loop reads the forward products from stores (residuals)."""
    from lantern.ir.nodes import walk_stmts

    def loss(w, u, xs):
        def body(i, h):
            return lantern.tanh(h @ w + xs[i] @ u)

        h = lantern.fori_loop(0, xs.shape[0], body, lantern.zeros((2, 3), "float64"))
        return (h * h).sum()

    w, u, xs = rng.standard_normal((3, 3)), rng.standard_normal((4, 3)), rng.standard_normal((5, 2, 4))
    check_grads(loss, w, u, xs, argnums=(0, 1, 2))
    exe = lantern.value_and_grad(loss, argnums=(0, 1, 2)).lower(w, u, xs)
    products = [s for fn in exe.module.functions.values() for s in walk_stmts(fn.body)
                if getattr(s, "prim", None) == "matmul"]
    # forward: 2 products; backward: 2 per product (the adjoints of both operands), no recomputed 2
    assert len(products) == 6, exe.ir
