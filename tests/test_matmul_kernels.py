"""Generated-loop matrix products (``codegen/kernels/matmul.py``) against NumPy, with BLAS turned off.

Rows come in blocks of four and columns in strips of vectors, so the shapes cross each boundary: fewer rows
than a block, whole blocks plus one to three rows, strips with a partial last vector, and run-time sizes.
"""
from __future__ import annotations

import numpy as np
import pytest

import lantern
from lantern.codegen.kernels import matmul

rng = np.random.default_rng(7)

FORMS = {
    "a @ b": (lambda a, b: a @ b, lambda m, k, n: ((m, k), (k, n))),
    "a @ b.T": (lambda a, b: a @ b.T, lambda m, k, n: ((m, k), (n, k))),
    "a.T @ b": (lambda a, b: a.T @ b, lambda m, k, n: ((k, m), (k, n))),
    "a.T @ b.T": (lambda a, b: a.T @ b.T, lambda m, k, n: ((k, m), (n, k))),
}
SHAPES = [(1, 5, 7), (3, 9, 17), (4, 3, 16), (5, 13, 33), (7, 50, 103), (9, 2, 64), (20, 50, 50), (6, 1, 65)]


@pytest.fixture
def loops_only(monkeypatch):
    monkeypatch.setattr(matmul, "BLAS_MIN_MACS", 1 << 62)
    monkeypatch.setattr(matmul, "VECTOR_BLAS_MIN_MACS", 1 << 62)


def _operands(shapes, dtype):
    if np.dtype(dtype).kind == "i":
        return [rng.integers(-9, 10, s).astype(dtype) for s in shapes]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32"])
def test_generated_products_match_numpy(loops_only, form, dtype):
    fn, shapes_of = FORMS[form]
    for m, k, n in SHAPES:
        a, b = _operands(shapes_of(m, k, n), dtype)
        exe = lantern.stage(fn, name="product", dynamic=False).lower(a, b)
        assert "cblas" not in exe.c_source
        got, want = exe(a, b), fn(a, b)
        assert got.dtype == want.dtype
        if dtype == "int32":
            np.testing.assert_array_equal(got, want)
        else:
            tol = 1e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * k)


def test_blocked_rows_and_column_strips_are_what_runs(loops_only):
    a, b = _operands([(20, 50), (50, 103)], "float32")
    src = lantern.stage(lambda a, b: a @ b, name="blocked").lower(a, b).c_source
    assert "acc3_1[16]" in src and "fmaf(a3, b, acc3_1[l])" in src  # four rows, two vectors of 16 each
    bt = np.ascontiguousarray(b.T)
    src = lantern.stage(lambda a, bt: a @ bt.T, name="transposed").lower(a, bt).c_source
    assert "b transposed back to rows" in src and "lt_free(b_rows" in src


def test_batched_products_and_run_time_sizes(loops_only):
    f = lantern.stage(lambda a, b: a @ b, dynamic=True)
    f_t = lantern.stage(lambda a, b: a @ b.T, dynamic=True)
    g = lantern.stage(lambda a, b: a @ b.transpose(0, 2, 1), dynamic=True)
    for m, k, n in [(6, 5, 33), (3, 4, 2), (9, 7, 70), (1, 3, 1), (0, 2, 5), (5, 0, 3)]:
        a, b = _operands([(m, k), (k, n)], "float64")
        np.testing.assert_allclose(f(a, b), a @ b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f_t(a, np.ascontiguousarray(b.T)), a @ b, rtol=1e-12, atol=1e-12)
        a3, b3 = _operands([(2, m, k), (2, n, k)], "float32")
        np.testing.assert_allclose(g(a3, b3), a3 @ b3.transpose(0, 2, 1), rtol=1e-5, atol=1e-5)
    assert f.cache_info().compiles == 1  # (a size 1 may get code of its own:)
    assert f_t.cache_info().compiles <= 2 and g.cache_info().compiles <= 2
    assert "n1_b" in g.cache_info().signatures[0]


def test_product_gradients_through_generated_loops(loops_only):
    x, w, v = _operands([(6, 5), (5, 9), (9, 5)], "float64")

    def loss(x, w, v):
        h = lantern.tanh(x @ w)
        return ((h @ v) * x).sum() + (h @ w.T).sum()

    grads = lantern.stage(lantern.grad(loss, argnums=(0, 1, 2)))(x, w, v)
    for i, (arg, g) in enumerate(zip((x, w, v), grads)):
        def at(z, i=i):
            args = [x, w, v]
            args[i] = z
            h = np.tanh(args[0] @ args[1])
            return ((h @ args[2]) * args[0]).sum() + (h @ args[1].T).sum()
        fd = np.zeros_like(arg)
        for idx in np.ndindex(arg.shape):
            e = np.zeros_like(arg)
            e[idx] = 1e-6
            fd[idx] = (at(arg + e) - at(arg - e)) / 2e-6
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7)


def test_integer_products_with_run_time_sizes(loops_only):
    f = lantern.stage(lambda a, b: a @ b, dynamic=True)
    for dtype in ("int32", "int64"):
        for m, k, n in [(6, 5, 33), (9, 4, 70), (5, 3, 2)]:
            a, b = _operands([(m, k), (k, n)], dtype)
            np.testing.assert_array_equal(f(a, b), a @ b)
