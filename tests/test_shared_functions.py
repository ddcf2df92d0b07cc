"""Issue 19: a large staged function called several times is traced once and compiled as one C function
(its gradient as one CPS function), and ``lantern.scan`` compiles a loop over stacked layers once."""
import re

import numpy as np
import pytest

import lantern
from lantern import ops
from lantern.ir.passes import inline
from lantern.testing import assert_trees_close, check_grads, check_staged

N_STEPS = 12  # the block's unrolled steps: enough statements to stay a function


@lantern.stage
def block(p, x):
    """A residual block of two products and an unrolled elementwise chain (> 64 statements)."""
    h = ops.tanh(x @ p["w1"].T + p["b1"])
    h = h @ p["w2"]
    for _ in range(N_STEPS):
        h = h * 0.5 + ops.sin(h) * 0.25
    return x + h


@lantern.stage
def small(p, x):
    return ops.tanh(x @ p["w1"] + p["b1"])


def through(fn, params, x):
    for p in params:
        x = fn(p, x)
    return ops.sum(x * x)


def deep(params, x):
    return through(block, params, x)


def _params(rng, layers, dtype=np.float64, d=6):
    return [{"w1": (rng.standard_normal((d, d)) * 0.4).astype(dtype), "b1": (rng.standard_normal(d) * 0.1).astype(dtype),
             "w2": (rng.standard_normal((d, d)) * 0.4).astype(dtype)} for _ in range(layers)]


def _definitions(source: str) -> list[str]:
    """Names of the C functions defined (not only declared) in ``source``."""
    return re.findall(r"^static (?:__attribute__\(\(noinline\)\) )?void (fn_\w+)\([^;]*\)\s*\{", source, re.M)


@pytest.fixture
def inline_all(monkeypatch):
    """Code as before issue 19: every non-recursive call inlined."""
    monkeypatch.setenv("LANTERN_INLINE_LIMIT", "0")


def test_repeated_calls_emit_one_function_and_trace_once(rng):
    params, x = _params(rng, 4), rng.standard_normal((3, 6))
    before = block.trace_count
    staged = lantern.stage(lambda params, x: deep(params, x))
    exe = staged.lower(params, x)
    assert block.trace_count == before + 1  # four calls, one signature: traced once
    defined = _definitions(exe.c_source)
    assert sum(name.startswith("fn_block") for name in defined) == 1, defined
    assert len(re.findall(r"\bfn_block\w*\(", exe.c_source)) >= 1 + 4  # the definition (and prototype) + 4 calls
    expected = x
    for p in params:
        h = np.tanh(expected @ p["w1"].T + p["b1"]) @ p["w2"]
        for _ in range(N_STEPS):
            h = h * 0.5 + np.sin(h) * 0.25
        expected = expected + h
    check_staged(staged, params, x, expected=np.sum(expected * expected))


def test_gradient_through_repeated_calls_is_one_cps_function(rng):
    params, x = _params(rng, 3), rng.standard_normal((2, 6))
    step = lantern.stage(lambda params, x: lantern.value_and_grad(deep)(params, x))
    source = step.lower(params, x).c_source
    assert [n for n in _definitions(source) if n.startswith("fn_block")] == ["fn_block_cps"]
    check_grads(deep, params, x, argnums=(0, 1))


def test_gradient_equals_the_inlined_one(rng, monkeypatch):
    params, x = _params(rng, 3, np.float32), rng.standard_normal((5, 6)).astype(np.float32)

    def step(params, x):
        return lantern.value_and_grad(deep)(params, x)
    shared = lantern.stage(step).lower(params, x)
    monkeypatch.setenv("LANTERN_INLINE_LIMIT", "0")
    inlined = lantern.stage(step).lower(params, x)
    assert "fn_block_cps" in shared.c_source and "fn_block" not in inlined.c_source
    # the same operations in the same order: the same bits
    assert_trees_close(shared(params, x), inlined(params, x), rtol=0, atol=0)


@lantern.stage
def scaled_block(p, x, table):
    """``block`` with a float table the caller does not differentiate (a rotary table, a mask)."""
    return block(p, x) * table


def test_callee_differentiates_only_what_the_caller_needs(rng, monkeypatch):
    """The block's CPS version takes adjoints only for its active arguments: the table's adjoint (a
    reduction over the batch per call) is neither computed nor allocated, as when inlined."""
    params, x = _params(rng, 3), rng.standard_normal((4, 6))
    table = rng.uniform(0.5, 1.0, (4, 6))

    def loss(params, x, table):
        for p in params:
            x = scaled_block(p, x, table)
        return ops.sum(x * x)
    step = lantern.stage(lambda params, x, table: lantern.value_and_grad(loss, argnums=(0, 1))(params, x, table))
    source = step.lower(params, x, table).c_source
    header = re.search(r"void fn_scaled_block_cps\(([^)]*)\)", source).group(1)
    assert "x_bar" in header and "p_w1_bar" in header and "table_bar" not in header, header
    assert "unused_bar" not in source
    check_grads(loss, params, x, table, argnums=(0, 1))
    # Differentiated with respect to the table too, the same function takes its adjoint.
    both = lantern.stage(lambda params, x, table: lantern.grad(loss, argnums=(0, 2))(params, x, table))
    assert "table_bar" in re.search(r"void fn_scaled_block_cps\w*\(([^)]*)\)", both.lower(params, x, table).c_source).group(1)
    check_grads(loss, params, x, table, argnums=(0, 1, 2))
    monkeypatch.setenv("LANTERN_INLINE_LIMIT", "0")
    inlined = lantern.stage(lambda params, x, table: lantern.value_and_grad(loss, argnums=(0, 1))(params, x, table))
    assert_trees_close(step(params, x, table), inlined(params, x, table), rtol=0, atol=0)


@lantern.stage
def halve_until(n, a, b):
    """Recursion whose inner call makes ``a``'s adjoint needed where the outer one may not need it."""
    if n <= 0:
        return ops.sin(a) + b
    return halve_until(n - 1, a * 0.5 + ops.tanh(b), b * 0.5) * 0.5 + a


@pytest.mark.parametrize("argnums", [(1,), (2,), (1, 2)])
def test_recursive_callee_versions_per_needed_adjoints(rng, argnums):
    a, b = rng.standard_normal(3), rng.standard_normal(3)

    def loss(a, b):
        return ops.sum(halve_until(np.int64(3), a, b) ** 2)
    check_grads(lambda n, a, b: loss(a, b), np.int64(3), a, b, argnums=argnums)


def test_small_functions_and_single_calls_are_inlined(rng):
    params, x = _params(rng, 3), rng.standard_normal((2, 6))
    exe = lantern.stage(lambda params, x: through(small, params, x)).lower(params, x)
    assert not [n for n in _definitions(exe.c_source) if "small" in n]
    one = lantern.stage(lambda params, x: deep(params[:1], x)).lower(params, x)
    assert not [n for n in _definitions(one.c_source) if "block" in n]


def test_limit_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("LANTERN_INLINE_LIMIT", "7")
    assert inline._limit() == 7
    monkeypatch.setenv("LANTERN_INLINE_LIMIT", "")
    assert inline._limit() == inline.SHARED_FUNCTION_MIN_STMTS


def test_shared_block_inside_loops_and_branches(rng):
    """Calls replayed by a counted loop's backward part, and under ``cond``, differentiate as inlined code."""
    params, x = _params(rng, 2), rng.standard_normal((2, 6))

    def loss(params, x):
        def body(i, h):
            return block(params[0], block(params[1], h)) * 0.5
        h = lantern.fori_loop(0, 3, body, x)
        h = lantern.cond(ops.sum(h) > 0, lambda h: block(params[0], h), lambda h: block(params[1], h) * 2.0, h)
        return ops.sum(h * h)
    check_grads(loss, params, x, argnums=(0, 1))


# ---------------------------------------------------------------- scan

def _cell(w, h, x):
    h = ops.tanh(h @ w + x)
    return h, (ops.sum(h * h, axis=1), h[0])


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_a_python_loop(rng, reverse):
    w, xs, h0 = rng.standard_normal((4, 4)) * 0.5, rng.standard_normal((5, 3, 4)), rng.standard_normal((3, 4))

    def with_scan(w, xs, h0):
        return lantern.scan(lambda h, x: _cell(w, h, x), h0, xs, reverse=reverse)

    def with_loop(w, xs, h0):
        h, ys = h0, [None] * 5
        for t in (reversed(range(5)) if reverse else range(5)):
            h, ys[t] = _cell(w, h, xs[t])
        return h, (ops.stack([y[0] for y in ys]), ops.stack([y[1] for y in ys]))
    expected = lantern.stage(with_loop)(w, xs, h0)
    check_staged(with_scan, w, xs, h0, expected=expected)

    def numpy_cell(h, x):  # outside a staged function, scan runs eagerly (here on NumPy values)
        h = np.tanh(h @ w + x)
        return h, ((h * h).sum(axis=1), h[0])
    assert_trees_close(lantern.scan(numpy_cell, h0, xs, reverse=reverse), expected, rtol=1e-12, atol=1e-12)

    def loss(fn):
        def f(w, xs, h0):
            h, (sq, first) = fn(w, xs, h0)
            return ops.sum(h) + ops.sum(sq * ops.arange(1.0, 6.0)[:, None]) + ops.sum(ops.sin(first))
        return f
    grads = check_grads(loss(with_scan), w, xs, h0, argnums=(0, 1, 2))
    assert_trees_close(grads, lantern.stage(lambda *a: lantern.grad(loss(with_loop), (0, 1, 2))(*a))(w, xs, h0),
                       rtol=1e-12, atol=1e-12)


def test_scan_with_length_and_no_outputs(rng):
    a = rng.standard_normal(3)

    def f(a):
        carry, ys = lantern.scan(lambda c, _: (c * 0.9 + ops.sin(c), None), a, length=4)
        assert ys is None
        return ops.sum(carry ** 2)
    check_grads(f, a)


def test_scan_over_a_run_time_length(rng):
    f = lantern.stage(lambda xs: lantern.scan(lambda c, x: (c + x, c * x), ops.zeros(2, "float64"), xs),
                      dynamic={"xs": 0})
    for n in (3, 7):
        xs = rng.standard_normal((n, 2))
        carry, ys = f(xs)
        np.testing.assert_allclose(carry, xs.sum(0))
        np.testing.assert_allclose(ys, np.concatenate([np.zeros((1, 2)), np.cumsum(xs, 0)[:-1]]) * xs)
    assert f.cache_info().compiles == 1  # declared: one compile for every length


def test_scan_errors_name_the_problem(rng):
    xs, ys = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    with pytest.raises(lantern.ShapeError, match=r"leading size.*\[4, 2\], \[5, 2\]"):
        lantern.stage(lambda a, b: lantern.scan(lambda c, x: (c, None), 0.0, (a, b)))(xs, ys)
    with pytest.raises(lantern.ShapeError, match="pair"):
        lantern.stage(lambda a: lantern.scan(lambda c, x: c + x, ops.zeros(2, "float64"), a))(xs)
    with pytest.raises(lantern.ShapeError, match="xs or length"):
        lantern.stage(lambda a: lantern.scan(lambda c, x: (c, None), a))(xs)
    with pytest.raises(lantern.ShapeError, match="changes carried value"):
        lantern.stage(lambda a: lantern.scan(lambda c, x: (ops.stack([c, c]), None), ops.zeros(2, "float64"), a))(xs)


def test_scan_inside_a_scan_and_a_loop(rng):
    """A stack made inside a body that the reverse pass recomputes is filled again there (the outer
    stack is not)."""
    w, xs = rng.standard_normal((3, 3)) * 0.5, rng.standard_normal((4, 5, 3))

    def inner(h, row):
        h, ys = lantern.scan(lambda c, x: (ops.tanh(c @ w + x), ops.sin(c)), h, row)
        h = h + ops.sum(ys * ys, axis=0)
        return h, ops.cos(h)

    def with_scan(w, xs):
        h, ys = lantern.scan(inner, ops.zeros(3, "float64"), xs)
        h = lantern.fori_loop(0, 2, lambda i, h: inner(h, xs[i])[0], h)
        return ops.sum(h) + ops.sum(ys * ops.arange(1.0, 5.0)[:, None])

    def inner_loop(h, xs, i):  # (Python ranges: unrolled)
        hs = []
        for j in range(5):
            hs.append(ops.sin(h))
            h = ops.tanh(h @ w + xs[i, j])
        return h + ops.sum(ops.stack(hs) ** 2, axis=0)

    def with_loops(w, xs):
        h, ys = ops.zeros(3, "float64"), []
        for i in range(4):
            h = inner_loop(h, xs, i)
            ys.append(ops.cos(h))
        for i in range(2):
            h = inner_loop(h, xs, i)
        return ops.sum(h) + ops.sum(ops.stack(ys) * ops.arange(1.0, 5.0)[:, None])

    grads = check_grads(with_scan, w, xs, argnums=(0, 1))
    assert_trees_close(grads, lantern.stage(lambda *a: lantern.grad(with_loops, (0, 1))(*a))(w, xs),
                       rtol=1e-10, atol=1e-12)
