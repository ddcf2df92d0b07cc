"""Issue 14: products reach one canonical form however they are written (``lantern/ir/passes/products.py``):
``W @ h`` and ``h @ W.T``, transposes as flags, one-hot operands on either side as gathers."""
import numpy as np
import pytest

import lantern
from lantern import ops
from lantern.ir.nodes import Op, walk_stmts
from lantern.testing import assert_trees_close, check_grads, check_staged


def _products(module) -> list[Op]:
    return [s for fn in module.functions.values() for s in walk_stmts(fn.body) if isinstance(s, Op) and s.prim == "matmul"]


def _column_products(module) -> list[Op]:
    """Products computed as a single result column (the slow scalar dot-product loop)."""
    return [p for p in _products(module) if p.outs[0].type.shape[-1] == 1 and p.outs[0].type.shape[-2] != 1]


@pytest.mark.parametrize("form", ["matrix_vector", "column", "column_3d", "transposed_a", "dot"])
def test_matrix_vector_products_are_rows(rng, form):
    """``W @ v`` (1-D or a column) is computed as the row ``v^T @ W^T``: no column product is left, values agree."""
    W = rng.standard_normal((7, 5))
    fns = {"matrix_vector": (lambda W, v: W @ v, rng.standard_normal(5)),
           "column": (lambda W, v: W @ v * 2.0, rng.standard_normal((5, 1))),
           "column_3d": (lambda W, v: W @ v, rng.standard_normal((3, 5, 1))),
           "transposed_a": (lambda W, v: W.T @ v, rng.standard_normal((7, 1))),
           "dot": (lambda W, v: W[0] @ v, rng.standard_normal(5))}
    fn, v = fns[form]
    exe = lantern.stage(fn).lower(W, v)
    assert not _column_products(exe.module), exe.optimized_ir
    check_staged(fn, W, v, expected=fn(W, v))
    check_grads(lambda W, v: ops.sum(ops.sin(fn(W, v))), W, v, argnums=(0, 1))


def test_integer_matrix_vector_product(rng):
    W, v = rng.integers(-5, 5, (4, 6)), rng.integers(-5, 5, 6)
    check_staged(lambda W, v: W @ v, W, v, expected=W @ v)


def test_transposes_become_flags(rng):
    """``x @ W.T`` and ``A.T @ B`` read their operands transposed: no transpose is copied."""
    x, W, A = rng.standard_normal((6, 5)), rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    fn = lambda x, W, A: (x @ W.T, A.T @ x.T)  # noqa: E731
    exe = lantern.stage(fn).lower(x, W, A)
    assert "transpose" not in exe.optimized_ir, exe.optimized_ir
    flags = sorted((bool(p.attrs.get("trans_a")), bool(p.attrs.get("trans_b"))) for p in _products(exe.module))
    assert flags == [(False, True), (True, True)]
    check_staged(fn, x, W, A, expected=(x @ W.T, A.T @ x.T))
    check_grads(lambda x, W, A: ops.sum(fn(x, W, A)[0] ** 2) + ops.sum(ops.cos(fn(x, W, A)[1])), x, W, A,
                argnums=(0, 1, 2))


def _no_one_hot_product(module, suffix: str = "") -> bool:
    """No product (of the functions whose names end with ``suffix``) reads a one-hot matrix: every such
    product became a gather."""
    functions = [fn for name, fn in module.functions.items() if name.endswith(suffix)]
    assert functions
    defs = {o.id: s for fn in functions for s in walk_stmts(fn.body) if isinstance(s, Op) for o in s.outs}

    def from_one_hot(v, depth=0) -> bool:
        op = defs.get(v.id)
        if op is None or depth > 6:
            return False
        return op.prim == "cast" or (op.prim in ("reshape", "take", "transpose") and from_one_hot(op.args[0], depth + 1))
    products = [s for fn in functions for s in walk_stmts(fn.body) if isinstance(s, Op) and s.prim == "matmul"]
    return not any(from_one_hot(a) for p in products for a in p.args)


@pytest.mark.parametrize("batch", [1, 3])
def test_one_hot_columns_in_a_loop_are_gathers(rng, batch):
    """min-char-rnn's column layout: ``Wxh @ X[t]`` with ``X`` the one-hot inputs as columns ``[seq, vocab, batch]``
    gathers columns of ``Wxh`` as the row layout's ``Wxh[x]`` does, forward and backward."""
    vocab, hidden, seq = 9, 4, 5
    xs = rng.integers(0, vocab, (seq, batch))
    Wxh, Whh = rng.standard_normal((hidden, vocab)) * 0.5, rng.standard_normal((hidden, hidden)) * 0.5

    def column(Wxh, Whh, xs):
        X = ops.moveaxis(ops.one_hot(xs, vocab, dtype="float64"), 2, 1)

        def body(t, h):
            return ops.tanh(Wxh @ X[t] + Whh @ h)
        return ops.sum(lantern.fori_loop(0, seq, body, ops.zeros((hidden, batch), "float64")) ** 2)

    def row(Wxh, Whh, xs):
        def body(t, h):
            return ops.tanh(Wxh.T[xs[t]] + h @ Whh.T)
        return ops.sum(lantern.fori_loop(0, seq, body, ops.zeros((batch, hidden), "float64")) ** 2)

    step = lantern.stage(lambda Wxh, Whh, xs: lantern.value_and_grad(column, argnums=(0, 1))(Wxh, Whh, xs))
    exe = step.lower(Wxh, Whh, xs)
    assert _no_one_hot_product(exe.traced_module, "_grad"), exe.ir  # a gather before AD: its gradient adds rows
    assert _no_one_hot_product(exe.module), exe.optimized_ir
    assert not _column_products(exe.module), exe.optimized_ir
    expected = lantern.stage(lambda Wxh, Whh, xs: lantern.value_and_grad(row, argnums=(0, 1))(Wxh, Whh, xs))
    assert_trees_close(exe(Wxh, Whh, xs), expected(Wxh, Whh, xs), rtol=1e-12, atol=1e-12)
    check_grads(column, Wxh, Whh, xs, argnums=(0, 1))


def test_one_hot_on_the_right_is_a_gather(rng):
    W, idx = rng.standard_normal((4, 6)), rng.integers(0, 6, 3)
    fn = lambda W, idx: W @ ops.one_hot(idx, 6, dtype="float64").T  # noqa: E731
    exe = lantern.stage(fn).lower(W, idx)
    assert _no_one_hot_product(exe.module), exe.optimized_ir
    check_staged(fn, W, idx, expected=W[:, idx])
    check_grads(lambda W: ops.sum(ops.sin(fn(W, idx))), W)


def test_column_and_row_min_char_rnn_compile_to_the_same_products(rng):
    """The two layouts of the benchmark's model: after the passes, the same products and gathers."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import charlm
    vocab, batches = charlm.make_data(6, 1, 1)
    signatures = {}
    for layout in ("row", "column"):
        params = charlm.layout_params("rnn", vocab, 8, layout)
        mem = {k: np.zeros_like(v) for k, v in params.items()}
        args = (params, mem, *batches[0], charlm.zero_state("rnn", 1, 8, layout))
        exe = charlm.lantern_step("rnn", layout).lower(*args)
        products = _products(exe.module)
        signatures[layout] = sorted((tuple(p.outs[0].type.shape), bool(p.attrs.get("trans_a")),
                                     bool(p.attrs.get("trans_b"))) for p in products)
        assert _no_one_hot_product(exe.module)
        signatures[layout + " loss"] = float(exe(*args)[2])
    assert signatures["row loss"] == pytest.approx(signatures["column loss"], rel=1e-6)
    # each product of the column form is a row product (or a weight gradient) of the row form's shapes
    assert len(signatures["row"]) == len(signatures["column"])
    assert not [s for s in signatures["column"] if s[0][-1] == 1 and s[0][-2] != 1]


@pytest.mark.parametrize("columns", ["one", "several"])
def test_columns_of_a_loop_invariant_matrix_are_row_gathers_under_grad(rng, columns):
    """``W[:, i]`` in a loop body: AD reads rows of ``W^T`` (made once), so each reverse step adds a row
    instead of scattering into a whole ``W``-sized matrix."""
    W, xs = rng.standard_normal((4, 9)), rng.integers(0, 9, (5, 3))
    pick = (lambda t: xs[t, 0]) if columns == "one" else (lambda t: xs[t])

    def loss(W, xs):
        def body(t, h):
            return ops.tanh(W[:, xs[t, 0]] + h) if columns == "one" else ops.tanh(W[:, xs[t]] + h)
        h0 = ops.zeros(4 if columns == "one" else (4, 3), "float64")
        return ops.sum(lantern.fori_loop(0, 5, body, h0) ** 2)
    exe = lantern.stage(lambda W, xs: lantern.grad(loss)(W, xs)).lower(W, xs)
    assert "scatter_add" not in exe.ir and "take(%W_t" in exe.ir, exe.ir
    check_grads(loss, W, xs)
    h = np.zeros(4) if columns == "one" else np.zeros((4, 3))
    for t in range(5):
        h = np.tanh(W[:, pick(t)] + h)
    check_staged(loss, W, xs, expected=np.sum(h ** 2))


def test_column_gathers_without_a_gradient_or_a_loop_are_left_alone(rng):
    W, xs = rng.standard_normal((4, 9)), rng.integers(0, 9, 5)

    def forward(W, xs):
        return lantern.fori_loop(0, 5, lambda t, h: ops.tanh(W[:, xs[t]] + h), ops.zeros(4, "float64"))
    assert "transpose" not in lantern.stage(forward).lower(W, xs).optimized_ir  # no copy of W for a forward pass
    once = lantern.stage(lambda W, xs: lantern.grad(lambda W: ops.sum(W[:, xs] ** 2))(W))
    assert "take(%W_t" not in once.lower(W, xs).ir  # outside a loop: one scatter, no copy
    check_grads(lambda W: ops.sum(W[:, xs] ** 2), W)


def test_a_transpose_of_a_buffer_updated_later_is_not_folded():
    """A transpose is a copy: a product reading it must see the buffer as it was when copied."""
    from lantern.ir import Block, Function, Module, Op, TensorType, Var, interpret, verify
    from lantern.ir.nodes import Accumulate
    from lantern.ir.passes import canonical_products

    m22 = TensorType((2, 2), "float64")
    x, buf, t, y = Var(m22, "x"), Var(m22, "buf"), Var(m22, "t"), Var(m22, "y")
    stmts = [Op([buf], prim="fill", args=[], attrs={"value": 0.0, "shape": (2, 2), "dtype": "float64"}),
             Op([t], prim="transpose", args=[buf], attrs={"perm": (1, 0)}),
             Accumulate([], target=buf, value=x),
             Op([y], prim="matmul", args=[x, t], attrs={})]
    module = Module({"f": Function("f", Block([x], stmts, [y]), (m22,))}, "f")
    rewritten = verify(canonical_products(module))
    xv = np.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(interpret(rewritten, [xv])[0], np.zeros((2, 2)))
