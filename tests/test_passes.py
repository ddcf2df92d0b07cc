"""Passes that change what the program computes with, not what it computes: one-hot products
as gathers, loop-invariant copies moved out of loops. Each is checked against the interpreter
on the traced IR (the program as written) and against NumPy."""
import re

import numpy as np
import pytest

import lantern
from lantern import nn
from lantern.testing import check_grads, check_staged


def _prims(ir_text: str) -> list[str]:
    return re.findall(r"= (\w+)\(", ir_text)


def _one_hot_layers(x, W, Wt):
    oh = lantern.one_hot(x, 7, "float64")
    return oh @ W, nn.linear(oh, Wt)


@pytest.mark.parametrize("shape", [(6,), (2, 3), ()])
def test_one_hot_products_are_gathers(rng, shape):
    x = np.array([1, 6, 0, 5, 2, 3])[:int(np.prod(shape))].reshape(shape)
    W, Wt = rng.standard_normal((7, 5)), rng.standard_normal((4, 7))
    eye = np.eye(7)[x]
    check_staged(_one_hot_layers, x, W, Wt, expected=(eye @ W, eye @ Wt.T), rtol=0, atol=0)
    optimized = lantern.stage(_one_hot_layers).lower(x, W, Wt).optimized_ir
    assert "matmul" not in _prims(optimized) and _prims(optimized).count("take") == 2


def test_one_hot_products_out_of_range():
    """An index out of range is an error (one_hot checks, issue 13); with index checks off the gather still
    gives the zero row one_hot would."""
    x, W, Wt = np.array([1, 7, -1]), np.ones((7, 5)), np.ones((4, 7))
    with pytest.raises(lantern.OutOfBoundsError, match="one_hot with 7 classes: index 7"):
        lantern.stage(_one_hot_layers)(x, W, Wt)
    out, out_t = lantern.stage(_one_hot_layers, check_indices=False)(x, W, Wt)
    assert out[0].all() and not out[1:].any() and out_t[0].all() and not out_t[1:].any()


def test_one_hot_product_gradient_adds_rows(rng):
    x = np.array([2, 0, 2, 6])
    W = rng.standard_normal((7, 3))

    def loss(W, Wt):
        a, b = _one_hot_layers(x, W, Wt)
        return (lantern.sin(a) * a).sum() + (b * b).sum()

    gW, gWt = check_grads(loss, W, rng.standard_normal((4, 7)), argnums=(0, 1))
    assert not gW[[1, 3, 4, 5]].any() and gW[[0, 2, 6]].all()  # only the rows taken
    assert not gWt[:, [1, 3, 4, 5]].any()


def _char_rnn(h0, xs, Wx, Wh):
    def body(t, h):
        return lantern.tanh(nn.linear(lantern.one_hot(xs[t], 9, "float64"), Wx) + h @ Wh.T)
    return (lantern.fori_loop(0, xs.shape[0], body, h0) ** 2).sum()


def test_loop_invariant_transposes_leave_the_loop(rng):
    h0, xs = rng.standard_normal((1, 6)), rng.integers(0, 9, size=5)
    Wx, Wh = rng.standard_normal((6, 9)) * 0.5, rng.standard_normal((6, 6)) * 0.5
    check_staged(_char_rnn, h0, xs, Wx, Wh)
    check_grads(_char_rnn, h0, xs, Wx, Wh, argnums=(0, 2, 3))
    for exe in (lantern.stage(_char_rnn).lower(h0, xs, Wx, Wh),
                lantern.value_and_grad(_char_rnn, (2, 3)).lower(h0, xs, Wx, Wh)):
        ir = exe.optimized_ir
        top = [line for line in ir.splitlines() if re.match(r"  %\w+: \S+ = transpose\(", line)]
        nested = [line for line in ir.splitlines() if re.match(r" {4,}%\w+: \S+ = transpose\(", line)]
        assert len(top) >= 2 and not nested, ir  # Wx's table and Wh.T, once each, outside every loop
        # One-row products in loops read transposed copies: no dot-product form (trans_b) is left there.
        assert not re.search(r"^ {4,}%\w+: \S+ = matmul\([^)]*trans_b=True", ir, re.MULTILINE), ir


def test_copies_of_updated_buffers_stay_in_the_loop(rng):
    # In the gradient, adjoints are updated in place inside the reverse loop: a transpose of
    # one must not move before the updates (hoist_loop_invariants skips buffers updated in place).
    x = rng.standard_normal((3, 3))

    def f(x):
        return lantern.fori_loop(0, 4, lambda i, h: lantern.tanh(h.T @ x) + h, x).sum()

    check_grads(f, x)


def test_hoisting_keeps_reads_of_buffers_updated_through_a_reshape():
    # buf (2 x 2) is updated in the loop through its reshape r (the same memory in C): a transpose
    # of buf inside the loop reads it after each update and must stay there.
    from lantern.ir.passes import hoist_loop_invariants
    from lantern.ir import Block, Function, Loop, Module, Op, TensorType, Var, interpret, verify
    from lantern.ir.nodes import Accumulate

    m22, f4, i64 = TensorType((2, 2), "float64"), TensorType((4,), "float64"), TensorType((), "int64")
    x, acc0 = Var(f4, "x"), Var(m22, "acc0")
    buf, r, lo, hi = Var(m22, "buf"), Var(f4, "r"), Var(i64, "lo"), Var(i64, "hi")
    i, carry, t, new = Var(i64, "i"), Var(m22, "carry"), Var(m22, "t"), Var(m22, "new")
    body = Block([i, carry], [Accumulate([], target=r, value=x),
                              Op([t], prim="transpose", args=[buf], attrs={"perm": (1, 0)}),
                              Op([new], prim="add", args=[carry, t], attrs={})], [new])
    out = Var(m22, "out")
    stmts = [Op([buf], prim="fill", args=[], attrs={"value": 0.0, "shape": (2, 2), "dtype": "float64"}),
             Op([acc0], prim="fill", args=[], attrs={"value": 0.0, "shape": (2, 2), "dtype": "float64"}),
             Op([r], prim="reshape", args=[buf], attrs={"shape": (4,)}),
             Op([lo], prim="fill", args=[], attrs={"value": 0, "shape": (), "dtype": "int64"}),
             Op([hi], prim="fill", args=[], attrs={"value": 3, "shape": (), "dtype": "int64"}),
             Loop([out], lo=lo, hi=hi, init=[acc0], body=body)]
    module = Module({"f": Function("f", Block([x], stmts, [out]), (m22,))}, "f")
    hoisted = verify(hoist_loop_invariants(module))
    loop = hoisted.functions["f"].body.stmts[-1]
    assert any(isinstance(s, Op) and s.prim == "transpose" for s in loop.body.stmts)
    xv = np.arange(4.0)
    expected = sum(k * xv.reshape(2, 2).T for k in (1, 2, 3))  # buf holds k * x after k updates
    np.testing.assert_allclose(interpret(hoisted, [xv])[0], expected)


def test_reductions_over_axes_of_one_are_reshapes(rng):
    def f(x, i):
        return (x.sum(0), x.max(axis=0, keepdims=True), lantern.prod(x[:, :1], axis=1), x.sum(1),
                i.sum(0), lantern.exp(x).min(0))

    x, i = rng.standard_normal((1, 5)), np.arange(3, dtype=np.int32)[None, :]
    expected = (x.sum(0), x.max(axis=0, keepdims=True), np.prod(x[:, :1], axis=1), x.sum(1), i.sum(0),
                np.exp(x).min(0))
    check_staged(f, x, i, expected=expected, rtol=1e-12, atol=0)
    optimized = lantern.stage(f).lower(x, i).optimized_ir
    # x.sum(1) is a real sum, and the integer sum widens to int64: those two stay reductions
    assert [p for p in _prims(optimized) if p.startswith("reduce")] == ["reduce_sum", "reduce_sum"], optimized
    check_grads(lambda x: (lantern.tanh(x).sum(0) * lantern.arange(5.0)).sum(), x)
    g = lantern.stage(lambda x: x.sum(0), dynamic=True)  # a run-time extent is not known to be 1
    for n in (1, 3):
        np.testing.assert_allclose(g(np.ones((n, 4))), np.full(4, float(n)))
