"""Programs with control flow: cond, fori_loop, while_loop, unrolled Python loops and recursion.

Every test runs the native code and the reference interpreter (traced and optimized IR)
through ``check_staged`` and compares them with a NumPy computation. Shapes are reused
across tests so the compile cache keeps the number of distinct kernels small.
"""
import os
import re
import sys
from collections import namedtuple

import numpy as np
import pytest

import lantern
from lantern.testing import check_staged

F = np.float32


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(F)


def i64(v):
    return np.asarray(v, dtype=np.int64)


# ------------------------------------------------------------------ cond

def _select(x, p):
    return lantern.cond(p > 0, lambda a: a * 2.0 + 1.0, lambda a: lantern.exp(a) - a, x)


@pytest.mark.parametrize("p", [1.0, -1.0])
def test_cond_both_branches(rng, p):
    x = f32(rng, 4)
    fn = lantern.stage(_select)
    expected = x * 2 + 1 if p > 0 else np.exp(x) - x
    check_staged(fn, x, F(p), expected=expected)


def _cond_tree(x, y, p):
    def yes(a, b):
        return {"sum": a + b, "pair": (a.sum(), [b * 3.0])}

    def no(a, b):
        return {"sum": a - b, "pair": (b.max(), [a])}

    return lantern.cond(p, yes, no, x, y)


@pytest.mark.parametrize("p", [True, False])
def test_cond_returns_pytree(rng, p):
    x, y = f32(rng, 4), f32(rng, 4)
    out = check_staged(lantern.stage(_cond_tree), x, y, np.asarray(p))
    expected = ({"sum": x + y, "pair": (x.sum(), [y * 3])} if p else
                {"sum": x - y, "pair": (y.max(), [x])})
    assert isinstance(out["pair"][1], list) and isinstance(out["pair"], tuple)
    check_staged(lantern.stage(_cond_tree), x, y, np.asarray(p), expected=expected)


def _cond_numbers(x):
    # One branch returns Python numbers, the other tensors: the numbers adopt the tensors' dtypes.
    s = x.sum()
    return lantern.cond(s > 0, lambda: (1.5, 7), lambda: (s, lantern.argmax(x)))


@pytest.mark.parametrize("sign", [1, -1])
def test_cond_python_numbers_vs_tensors(rng, sign):
    x = np.abs(f32(rng, 4)) * sign
    out = check_staged(lantern.stage(_cond_numbers), x)
    if sign > 0:
        expected = (F(1.5), np.int64(7))
    else:
        expected = (F(x.sum()), np.int64(np.argmax(x)))
    check_staged(lantern.stage(_cond_numbers), x, expected=expected)
    assert out[0].dtype == np.float32 and out[1].dtype == np.int64


def _cond_capture(x, w, p):
    # Branches take no operands; they capture x and w from the enclosing scope.
    h = x * 2.0
    return lantern.cond(p > 0, lambda: h @ w, lambda: (x @ w) * -1.0)


@pytest.mark.parametrize("p", [1.0, -1.0])
def test_cond_captures_outer_values(rng, p):
    x, w = f32(rng, 2, 3), f32(rng, 3, 4)
    expected = (x * 2) @ w if p > 0 else -(x @ w)
    check_staged(lantern.stage(_cond_capture), x, w, F(p), expected=expected)


def _nested_cond(x, p, q):
    def outer_true(a):
        return lantern.cond(q > 0, lambda: a + 1.0, lambda: a - 1.0)

    def outer_false(a):
        return lantern.cond(q > 0, lambda: a * 2.0, lambda: lantern.cond(q < -5, lambda: a, lambda: -a))

    return lantern.cond(p > 0, outer_true, outer_false, x)


@pytest.mark.parametrize("p,q", [(1, 1), (1, -1), (-1, 1), (-1, -1), (-1, -9)])
def test_nested_cond(rng, p, q):
    x = f32(rng, 4)
    if p > 0:
        expected = x + 1 if q > 0 else x - 1
    else:
        expected = x * 2 if q > 0 else (x if q < -5 else -x)
    check_staged(lantern.stage(_nested_cond), x, F(p), F(q), expected=expected)


def test_cond_python_bool_picks_branch_while_tracing(rng):
    @lantern.stage
    def f(x):
        return lantern.cond(True, lambda a: a + 1.0, lambda a: a.sum(), x)

    x = f32(rng, 4)
    exe = f.lower(x)
    assert "= if " not in exe.ir
    assert "= if " in lantern.stage(_select).lower(x, F(1)).ir
    check_staged(f, x, expected=x + 1)


# ------------------------------------------------------------------ fori_loop

def _carry_mixed(x, s):
    def body(i, c):
        arr, total, meta = c
        arr = arr * 0.5 + x
        return arr, total + arr.sum(), {"n": meta["n"] + i, "last": arr[0]}

    return lantern.fori_loop(0, 5, body, (x, s, {"n": 0, "last": 0.0}))


def test_fori_loop_carries_arrays_scalars_pytrees(rng):
    x, s = f32(rng, 4), F(0.25)
    arr, total, n, last = x.copy(), s, 0, F(0)
    for i in range(5):
        arr = arr * F(0.5) + x
        total = total + arr.sum()
        n += i
        last = arr[0]
    out = check_staged(lantern.stage(_carry_mixed), x, s,
                       expected=(arr, F(total), {"n": np.int64(n), "last": F(last)}))
    assert set(out[2]) == {"n", "last"}


def _staged_bounds(x, lo, hi):
    return lantern.fori_loop(lo, hi, lambda i, a: a + i.astype("float32") * x, lantern.zeros_like(x))


@pytest.mark.parametrize("lo,hi", [(2, 6), (0, 0), (5, 3)])
def test_fori_loop_staged_bounds_and_zero_trip(rng, lo, hi):
    x = f32(rng, 4)
    expected = np.zeros(4, F)
    for i in range(lo, hi):
        expected = expected + F(i) * x
    check_staged(lantern.stage(_staged_bounds), x, i64(lo), i64(hi), expected=expected)


def test_fori_loop_zero_trip_static_returns_init(rng):
    @lantern.stage
    def f(x):
        return lantern.fori_loop(3, 3, lambda i, a: a * 100.0, x)

    x = f32(rng, 4)
    check_staged(f, x, expected=x)


def _unchanged(x, y):
    # The body returns one carried value unchanged and updates the other from it.
    return lantern.fori_loop(0, 3, lambda i, c: (c[0], c[1] + c[0]), (x, y))


def test_fori_loop_body_returns_carry_unchanged(rng):
    x, y = f32(rng, 4), f32(rng, 4)
    check_staged(lantern.stage(_unchanged), x, y, expected=(x, y + 3 * x))


def _swap(x, y, n):
    return lantern.fori_loop(0, n, lambda i, c: (c[1], c[0]), (x, y))


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_fori_loop_swaps_carried_arrays(rng, n):
    x, y = f32(rng, 4), f32(rng, 4)
    expected = (x, y) if n % 2 == 0 else (y, x)
    out = check_staged(lantern.stage(_swap), x, y, i64(n), expected=expected)
    # Inputs are never written.
    assert not np.shares_memory(out[0], x) and not np.shares_memory(out[1], y)


def _rotate_and_update(x, y, z):
    # Three-way rotation with one value updated: results alias other carried values.
    return lantern.fori_loop(0, 4, lambda i, c: (c[1], c[2], c[0] + 1.0), (x, y, z))


def test_fori_loop_rotation_aliasing(rng):
    x, y, z = f32(rng, 4), f32(rng, 4), f32(rng, 4)
    a, b, c = x, y, z
    for _ in range(4):
        a, b, c = b, c, a + 1
    check_staged(lantern.stage(_rotate_and_update), x, y, z, expected=(a, b, c))


def _scalar_swap(s, t):
    return lantern.fori_loop(0, 3, lambda i, c: (c[1], c[0] * 2.0), (s, t))


def test_fori_loop_swaps_scalars(rng):
    s, t = F(1.5), F(-2.0)
    a, b = s, t
    for _ in range(3):
        a, b = b, a * 2
    check_staged(lantern.stage(_scalar_swap), s, t, expected=(F(a), F(b)))


def _nested_loops(m):
    # out[i, j] style accumulation with two nested loops and the loop indices used as indices.
    def outer(i, acc):
        def inner(j, a):
            return a + m[i][j] * (i + 1).astype("float32")
        return lantern.fori_loop(0, m.shape[1], inner, acc)
    return lantern.fori_loop(0, m.shape[0], outer, 0.0)


def test_nested_fori_loops(rng):
    m = f32(rng, 3, 4)
    expected = F(sum(m[i, j] * (i + 1) for i in range(3) for j in range(4)))
    check_staged(lantern.stage(_nested_loops), m, expected=expected)


def _loop_in_cond(x, p):
    return lantern.cond(p > 0,
                        lambda: lantern.fori_loop(0, 4, lambda i, a: a * 2.0, x),
                        lambda: lantern.fori_loop(0, 2, lambda i, a: a - 1.0, x))


@pytest.mark.parametrize("p", [1.0, -1.0])
def test_loop_inside_cond(rng, p):
    x = f32(rng, 4)
    check_staged(lantern.stage(_loop_in_cond), x, F(p), expected=x * 16 if p > 0 else x - 2)


def _cond_in_loop(x):
    # Even iterations add x[i], odd ones subtract it: the branch depends on the loop index.
    def body(i, acc):
        return lantern.cond(i % 2 == 0, lambda: acc + x[i], lambda: acc - x[i])
    return lantern.fori_loop(0, x.shape[0], body, lantern.zeros((3,)))


def test_cond_inside_loop_and_indexing_with_loop_index(rng):
    x = f32(rng, 4, 3)
    expected = x[0] - x[1] + x[2] - x[3]
    check_staged(lantern.stage(_cond_in_loop), x, expected=expected)


def _gather_rows(x, idx):
    # Staged indices read from data, used inside a loop.
    return lantern.fori_loop(0, idx.shape[0], lambda i, acc: acc + x[idx[i]], lantern.zeros((3,)))


def test_loop_index_reads_index_array(rng):
    x = f32(rng, 4, 3)
    idx = i64([3, 0, 3, 2, 1])
    check_staged(lantern.stage(_gather_rows), x, idx, expected=x[idx].sum(axis=0))


def test_loop_index_out_of_bounds_is_an_error(rng):
    f = lantern.stage(_gather_rows)
    x = f32(rng, 4, 3)
    with pytest.raises(lantern.OutOfBoundsError):
        f(x, i64([0, 4, 1, 1, 1]))


def _long_loop(x):
    return lantern.fori_loop(0, 10000, lambda i, c: (c[0] + x, c[1] + i), (lantern.zeros_like(x), 0))


def test_ten_thousand_iterations(rng):
    x = f32(rng, 4)
    exe = lantern.stage(_long_loop).lower(x)
    acc, n = exe(x)
    expected = np.zeros(4, F)
    for _ in range(10000):
        expected = expected + x
    np.testing.assert_allclose(acc, expected, rtol=1e-5)
    assert n == sum(range(10000)) and n.dtype == np.int64
    ref = exe.interpret(x, optimized=True)
    np.testing.assert_allclose(acc, ref[0], rtol=1e-6)


# ------------------------------------------------------------------ while_loop

def _collatz(n):
    # Trip count depends on the data.
    return lantern.while_loop(lambda c: c[0] != 1,
                              lambda c: (lantern.where(c[0] % 2 == 0, c[0] // 2, 3 * c[0] + 1), c[1] + 1),
                              (n, 0))


def _collatz_ref(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@pytest.mark.parametrize("n", [1, 6, 27])
def test_while_loop_data_dependent_trip_count(n):
    out = check_staged(lantern.stage(_collatz), i64(n), expected=(np.int64(1), np.int64(_collatz_ref(n))))
    assert out[1] == _collatz_ref(n)


def _halve_until_small(x):
    return lantern.while_loop(lambda v: lantern.abs(v).max() > 1.0, lambda v: v * 0.5, x)


def test_while_loop_array_state(rng):
    x = f32(rng, 4) * 37
    expected = x.copy()
    while np.abs(expected).max() > 1:
        expected = expected * F(0.5)
    check_staged(lantern.stage(_halve_until_small), x, expected=expected)


def _while_swap(x, y, n):
    def body(c):
        a, b, k = c
        return b, a + 1.0, k - 1
    return lantern.while_loop(lambda c: c[2] > 0, body, (x, y, n))


def test_while_loop_swaps_arrays(rng):
    x, y = f32(rng, 4), f32(rng, 4)
    a, b = x, y
    for _ in range(3):
        a, b = b, a + 1
    check_staged(lantern.stage(_while_swap), x, y, i64(3), expected=(a, b, np.int64(0)))


# ------------------------------------------------------------------ RNN over a sequence

def _rnn(xs, h0, wx, wh, b):
    def step(t, h):
        return lantern.tanh(xs[t] @ wx + h @ wh + b)
    return lantern.fori_loop(0, xs.shape[0], step, h0)


def test_vanilla_rnn_forward(rng):
    T, B, D, H = 7, 2, 3, 5
    xs, h0 = f32(rng, T, B, D), f32(rng, B, H)
    wx, wh, b = f32(rng, D, H) * 0.5, f32(rng, H, H) * 0.5, f32(rng, H)
    h = h0
    for t in range(T):
        h = np.tanh(xs[t] @ wx + h @ wh + b)
    check_staged(lantern.stage(_rnn), xs, h0, wx, wh, b, expected=h, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ Python loops unroll

def test_python_for_unrolls(rng):
    @lantern.stage
    def f(x):
        acc = x
        for k in range(3):
            acc = acc * 2.0 + float(k)
        return acc

    x = f32(rng, 4)
    exe = f.lower(x)
    assert " in range(" not in exe.ir and "while" not in exe.ir
    # ... whereas fori_loop stays a loop in the IR.
    assert " in range(" in lantern.stage(_staged_bounds).lower(x, i64(0), i64(1)).ir
    assert "for (int64_t i = 0; i < 4; i++)" in exe.c_source  # just the elementwise loop
    check_staged(f, x, expected=((x * 2) * 2 + 1) * 2 + 2)


# ------------------------------------------------------------------ generated C

def test_c_source_has_loops_branches_and_source_lines(rng):
    f = lantern.stage(_cond_in_loop)
    x = f32(rng, 4, 3)
    src = f.lower(x).c_source
    assert "for (int64_t i_" in src
    assert "if (" in src
    lines = src.splitlines()
    # The loop and the branch carry comments naming this file's lines.
    loop_line = next(n for n, text in enumerate(lines) if "for (int64_t i_" in text)
    assert re.search(r"/\* test_control_flow\.py:\d+: return lantern\.fori_loop", "\n".join(lines[:loop_line]))
    assert re.search(r"/\* test_control_flow\.py:\d+: return lantern\.cond\(i % 2 == 0", src)


# ------------------------------------------------------------------ recursion over trees

def random_tree(rng, n):
    """A random binary tree with n internal nodes: child-index arrays, -1 marks a leaf. Root 0."""
    left, right = [-1], [-1]
    leaves = [0]
    for _ in range(n):
        k = leaves.pop(rng.integers(len(leaves)))
        left[k], right[k] = len(left), len(left) + 1
        left += [-1, -1]
        right += [-1, -1]
        leaves += [left[k], right[k]]
    return i64(left), i64(right)


def chain_tree(n):
    """A degenerate tree of depth n: node k's right child is node k + 1, its left child a leaf."""
    left = np.full(2 * n + 1, -1, np.int64)
    right = np.full(2 * n + 1, -1, np.int64)
    for k in range(n):
        left[k] = n + 1 + k
        right[k] = k + 1
    return left, right


@lantern.stage
def tree_sum(left, right, vals, node):
    return lantern.cond(left[node] < 0,
                        lambda: vals[node],
                        lambda: vals[node] + tree_sum(left, right, vals, left[node])
                        + tree_sum(left, right, vals, right[node]))


@lantern.stage
def tree_sum_root(left, right, vals):
    return tree_sum(left, right, vals, lantern.asarray(0))


def _tree_sum_ref(left, right, vals, node):
    if left[node] < 0:
        return vals[node]
    return vals[node] + _tree_sum_ref(left, right, vals, left[node]) + _tree_sum_ref(left, right, vals, right[node])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recursive_tree_sum(seed):
    rng = np.random.default_rng(seed)
    left, right = random_tree(rng, 7)  # 15 nodes
    vals = rng.standard_normal(15)
    check_staged(tree_sum_root, left, right, vals, expected=_tree_sum_ref(left, right, vals, 0))


def test_recursive_tree_sum_single_leaf():
    left, right = i64([-1]), i64([-1])
    vals = np.array([2.5])
    check_staged(tree_sum_root, left, right, vals, expected=np.float64(2.5))


def test_recursion_stays_a_call_nonrecursive_is_inlined(rng):
    @lantern.stage
    def helper(a, b):
        return a * b + 1.0

    @lantern.stage
    def entry(left, right, vals):
        total = tree_sum(left, right, vals, lantern.asarray(0))
        return helper(total, vals[0])

    left, right = random_tree(rng, 7)
    vals = rng.standard_normal(15)
    exe = entry.lower(left, right, vals)
    assert "call @helper" in exe.ir
    assert "call @helper" not in exe.optimized_ir
    assert re.search(r"call @tree_sum", exe.optimized_ir)
    assert "fn_helper" not in exe.c_source and "fn_tree_sum(" in exe.c_source
    tsum = _tree_sum_ref(left, right, vals, 0)
    check_staged(entry, left, right, vals, expected=tsum * vals[0] + 1.0)


# A TreeLSTM-like cell: leaves embed their word, inner nodes combine both children's (h, c).
H = 4


@lantern.stage
def tree_lstm(left, right, words, emb, w, u, node):
    def leaf():
        x = emb[words[node]]
        c = lantern.tanh(x @ w[0])
        return lantern.sigmoid(x @ w[1]) * lantern.tanh(c), c

    def inner():
        hl, cl = tree_lstm(left, right, words, emb, w, u, left[node])
        hr, cr = tree_lstm(left, right, words, emb, w, u, right[node])
        hs = lantern.concatenate([hl, hr])
        i = lantern.sigmoid(hs @ u[0])
        fl, fr = lantern.sigmoid(hs @ u[1]), lantern.sigmoid(hs @ u[2])
        c = i * lantern.tanh(hs @ u[3]) + fl * cl + fr * cr
        return lantern.sigmoid(hs @ u[4]) * lantern.tanh(c), c

    return lantern.cond(left[node] < 0, leaf, inner)


@lantern.stage
def tree_lstm_root(left, right, words, emb, w, u):
    return tree_lstm(left, right, words, emb, w, u, lantern.asarray(0))


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _tree_lstm_ref(left, right, words, emb, w, u, node):
    if left[node] < 0:
        x = emb[words[node]]
        c = np.tanh(x @ w[0])
        return _sig(x @ w[1]) * np.tanh(c), c
    hl, cl = _tree_lstm_ref(left, right, words, emb, w, u, left[node])
    hr, cr = _tree_lstm_ref(left, right, words, emb, w, u, right[node])
    hs = np.concatenate([hl, hr])
    c = _sig(hs @ u[0]) * np.tanh(hs @ u[3]) + _sig(hs @ u[1]) * cl + _sig(hs @ u[2]) * cr
    return _sig(hs @ u[4]) * np.tanh(c), c


def _tree_lstm_inputs(rng, left):
    n = left.shape[0]
    words = rng.integers(0, 6, n).astype(np.int64)
    emb = rng.standard_normal((6, 3))
    w = rng.standard_normal((2, 3, H)) * 0.5
    u = rng.standard_normal((5, 2 * H, H)) * 0.5
    return words, emb, w, u


def test_tree_lstm_matches_numpy_recursion(rng):
    left, right = random_tree(rng, 7)
    words, emb, w, u = _tree_lstm_inputs(rng, left)
    expected = _tree_lstm_ref(left, right, words, emb, w, u, 0)
    check_staged(tree_lstm_root, left, right, words, emb, w, u, expected=expected)


def _deep(fn, *args, **kwargs):
    """Run the interpreter on deep recursion: it needs more Python stack than the default."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 100000))
    try:
        return fn(*args, **kwargs)
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize("shape", ["random", "chain"])
def test_thousand_node_trees(shape):
    rng = np.random.default_rng(3)
    # 1001 nodes: a random tree, or a chain of depth 1000 (the C recursion goes 1000 calls deep).
    left, right = random_tree(rng, 500) if shape == "random" else chain_tree(500 * 2)
    n = left.shape[0]
    vals = rng.standard_normal(n)
    expected = _deep(_tree_sum_ref, left, right, vals, 0)
    exe = tree_sum_root.lower(left, right, vals)
    np.testing.assert_allclose(exe(left, right, vals), expected, rtol=1e-9)
    np.testing.assert_allclose(_deep(exe.interpret, left, right, vals, optimized=True), expected, rtol=1e-9)
    words, emb, w, u = _tree_lstm_inputs(rng, left)
    expected_lstm = _deep(_tree_lstm_ref, left, right, words, emb, w, u, 0)
    out = tree_lstm_root(left, right, words, emb, w, u)
    np.testing.assert_allclose(out[0], expected_lstm[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out[1], expected_lstm[1], rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ recursion: typing corner cases

@lantern.stage
def tree_sum_weak(left, right, vals, node):
    # Recursive case first, and the base case is a Python number (weakly typed): the result
    # type (float64, from vals) is only known after the recursive branch has been typed.
    return lantern.cond(left[node] >= 0,
                        lambda: vals[node] + tree_sum_weak(left, right, vals, left[node])
                        + tree_sum_weak(left, right, vals, right[node]),
                        lambda: 0.0)


@lantern.stage
def tree_sum_weak_root(left, right, vals):
    return tree_sum_weak(left, right, vals, lantern.asarray(0))


def test_recursive_base_case_python_number_second(rng):
    left, right = random_tree(rng, 7)
    vals = rng.standard_normal(15)
    internal = vals[left >= 0].sum()
    out = check_staged(tree_sum_weak_root, left, right, vals, expected=np.float64(internal))
    assert out.dtype == np.float64


# Mutual recursion through a helper: the cond is in the outer function ...
@lantern.stage
def count_nodes(left, right, node):
    return lantern.cond(left[node] < 0, lambda: 1, lambda: count_children(left, right, node) + 1)


@lantern.stage
def count_children(left, right, node):
    return count_nodes(left, right, left[node]) + count_nodes(left, right, right[node])


# ... or in the helper.
@lantern.stage
def depth_of(left, right, node):
    return depth_step(left, right, left[node]) + 1


@lantern.stage
def depth_step(left, right, node):
    # Depth along left children; -1 ends the walk.
    return lantern.cond(node < 0, lambda: 0, lambda: depth_of(left, right, node))


@lantern.stage
def mutual_root(left, right):
    return count_nodes(left, right, lantern.asarray(0)), depth_of(left, right, lantern.asarray(0))


def test_mutual_recursion_through_helper(rng):
    left, right = random_tree(rng, 7)
    depth, node = 0, 0
    while node >= 0:
        depth, node = depth + 1, left[node]
    exe = mutual_root.lower(left, right)
    assert "call @count_children" in exe.optimized_ir or "call @count_nodes" in exe.optimized_ir
    check_staged(mutual_root, left, right, expected=(np.int64(15), np.int64(depth)))


# ------------------------------------------------------------------ Python numbers in branches

def _weak_mix(p, x):
    # An int and a float literal: the output is a float (not the int truncating 2.5), and a
    # tensor branch against a float literal follows NumPy promotion (int64 with 2.5 -> float64).
    return lantern.cond(p > 0, lambda: 1, lambda: 2.5), lantern.cond(p > 0, lambda: x.sum(), lambda: 2.5)


@pytest.mark.parametrize("p", [1.0, -1.0])
def test_cond_python_numbers_promote(p):
    x = np.arange(3)
    out = check_staged(lantern.stage(_weak_mix), F(p), x,
                       expected=(F(1.0), np.float64(3)) if p > 0 else (F(2.5), np.float64(2.5)))
    assert out[0].dtype == np.float32 and out[1].dtype == np.float64


def _triangular(n):
    # The inner loop's bound is the outer loop's index.
    return lantern.fori_loop(0, n, lambda i, acc: lantern.fori_loop(0, i, lambda j, a: a + j * i, acc), 0)


def test_inner_loop_bound_is_outer_index():
    check_staged(lantern.stage(_triangular), i64(6), expected=np.int64(sum(j * i for i in range(6) for j in range(i))))


def test_recursive_function_as_entry(rng):
    left, right = random_tree(rng, 7)
    vals = rng.standard_normal(15)
    exe = tree_sum.lower(left, right, vals, i64(0))
    assert "call @tree_sum" in exe.optimized_ir
    check_staged(tree_sum, left, right, vals, i64(3), expected=_tree_sum_ref(left, right, vals, 3))


@lantern.stage
def nary_sum(children, vals, node):
    # An n-ary tree (children padded with -1): the recursive call sits in a cond in a loop body.
    def child(k, acc):
        c = children[node, k]
        return lantern.cond(c >= 0, lambda: acc + nary_sum(children, vals, c), lambda: acc)
    return lantern.fori_loop(0, children.shape[1], child, vals[node])


def test_recursion_inside_loop_body(rng):
    children = i64([[1, 2, 3], [4, -1, -1], [-1, -1, -1], [5, 6, -1], [-1] * 3, [-1] * 3, [-1] * 3])
    vals = rng.standard_normal(7)
    check_staged(nary_sum, children, vals, i64(0), expected=vals.sum())
    check_staged(nary_sum, children, vals, i64(3), expected=vals[[3, 5, 6]].sum())


State = namedtuple("State", ["h", "steps"])


def _namedtuple_state(x, p):
    def body(i, s):
        return State(lantern.cond(p > 0, lambda: s.h * 0.5, lambda: s.h + x), s.steps + 1)
    return lantern.fori_loop(0, 3, body, State(x, 0))


@pytest.mark.parametrize("p", [1.0, -1.0])
def test_namedtuple_state_through_loop_and_cond(rng, p):
    x = f32(rng, 4)
    out = check_staged(lantern.stage(_namedtuple_state), x, F(p),
                       expected=State(x * F(0.125) if p > 0 else x * 4, np.int64(3)))
    assert type(out) is State


@lantern.stage
def _chain_sum(node, values, child):
    return lantern.cond(child[node] < 0, lambda: values[node],
                        lambda: _chain_sum(child[node], values, child) + values[node])


def on_new_thread(fn, stack_size: str | None = None):
    """``fn()`` on a new thread (with ``LANTERN_STACK_SIZE=stack_size`` when it first runs recursive code, which
    is when a thread reserves lantern's stack): its result, or the exception it raised."""
    import os
    import threading
    out: list = []

    def work():
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    old = os.environ.get("LANTERN_STACK_SIZE")
    if stack_size:
        os.environ["LANTERN_STACK_SIZE"] = stack_size
    try:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    finally:
        if old is None:
            os.environ.pop("LANTERN_STACK_SIZE", None)
        else:
            os.environ["LANTERN_STACK_SIZE"] = old
    return out[0]


def sanitized() -> bool:
    """LANTERN_DEBUG=1 builds run on the thread's stack (AddressSanitizer), not on lantern's own."""
    from lantern.codegen.toolchain import debug_mode
    return debug_mode()


def test_recursion_deeper_than_its_stack_raises_instead_of_crashing():
    n = 300_000
    child = np.arange(1, n + 1, dtype=np.int64)
    child[-1] = -1
    values = np.ones(n)
    if not sanitized():  # on lantern's stack (1 GiB by default) this is not deep
        assert _chain_sum(np.int64(0), values, child) == n

    def deep_then_shallow():
        with pytest.raises(lantern.RecursionDepthError) as info:
            _chain_sum(np.int64(0), values, child)
        # The arena and the error state are reset: a shallower call on the same code works.
        return info.value, _chain_sum(np.int64(n - 500), values, child)

    error, shallow = on_new_thread(deep_then_shallow, stack_size="8M")
    assert re.search("recursion too deep for the C stack" if sanitized() else
                     r"recursion too deep: all 8 MiB of lantern's stack used .* LANTERN_STACK_SIZE=4G", str(error))
    assert shallow == 500.0


def test_numpy_scalars_are_zero_dimensional_constants():
    def f(x):
        total = lantern.fori_loop(0, 3, lambda i, c: c + x.sum(), np.float32(0))
        assert lantern.asarray(np.float32(0)).shape == ()
        return total + np.float32(1)

    x = np.ones(3, np.float32)
    out = check_staged(f, x)
    assert out.shape == () and out.dtype == np.float32 and out == 10.0


def _decay(x, n):
    """n steps of s -> s * (1 - 1e-7) + 1e-7 in a while_loop: d result / dx = (1 - 1e-7) ** n."""
    return lantern.while_loop(lambda s: s[1] < n, lambda s: (s[0] * (1.0 - 1e-7) + 1e-7, s[1] + 1),
                              (x, np.int64(0)))[0]


def _resident_mib() -> float:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_gradient_of_a_while_loop_with_millions_of_iterations():
    """Each iteration's continuation is a C frame; on lantern's own stack (issue 13) two million of them fit,
    where the thread's 8 MiB stack ended at about 75,000. Too small a stack names the loop and the memory."""
    if sanitized():
        pytest.skip("LANTERN_DEBUG=1 builds run on the thread's stack")
    grad = lantern.stage(lantern.grad(_decay))
    n = 2_000_000
    grad(np.float64(0.5), np.int64(10))
    before = _resident_mib()
    np.testing.assert_allclose(grad(np.float64(0.5), np.int64(n)), (1.0 - 1e-7) ** n, rtol=1e-9)
    # the call took some 200 MiB of stack; all but the kept top 8 MiB is given back when it returns
    assert _resident_mib() - before < 64, (before, _resident_mib())
    error = on_new_thread(lambda: grad(np.float64(0.5), np.int64(n)), stack_size="8M")
    assert isinstance(error, lantern.RecursionDepthError), error
    assert re.search(r"the gradient's continuation at test_control_flow\.py:\d+: recursion too deep: all 8 MiB of "
                     r"lantern's stack used", str(error)), str(error)
