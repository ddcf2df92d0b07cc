"""A reduction computes its elementwise operand in its own loop when nothing else reads it
(codegen/lowering.py's ``in_reduction``): no temporary array, broadcasts included, same values as NumPy."""
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lantern
from lantern.testing import assert_trees_close, check_grads


def _reductions(a, b):
    outer = a[:, None] * b[None, :]
    return (lantern.sum(outer),                                   # whole array, broadcast operands
            lantern.sum(lantern.tanh(a[:, None] - b[None, :]), axis=1),  # inner axis, a fused chain
            lantern.max(a[:, None] * b[None, :], axis=0),          # outer axis kept innermost
            lantern.min(lantern.exp(a[:, None]) * 2.0 + b, axis=1, keepdims=True),
            lantern.prod(1.0 + 0.01 * a),                          # flat operand
            lantern.mean(a * a))                                   # a square and a sum (a gradient norm)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reductions_of_elementwise_values_match_numpy_without_temporaries(dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(37).astype(dtype), rng.standard_normal(29).astype(dtype)
    staged = lantern.stage(_reductions)
    exe = staged.lower(a, b)
    assert exe.lowered.count("computed in the loop of the reduction that reads it") == 6, exe.lowered
    allocated = [int(n) for n in re.findall(r"lt_alloc\((\d+)\)", exe.c_source)]
    assert max(allocated, default=0) <= 37 * np.dtype(dtype).itemsize  # no [37, 29] temporary
    outer = a[:, None] * b[None, :]
    expected = (outer.sum(), np.tanh(a[:, None] - b[None, :]).sum(1), outer.max(0),
                (np.exp(a[:, None]) * 2 + b).min(1, keepdims=True), np.prod(1 + 0.01 * a), np.mean(a * a))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_trees_close(exe(a, b), tuple(np.asarray(w, dtype) for w in expected), rtol=tol, atol=tol)


def test_a_nan_in_a_fused_maximum_wins_as_in_numpy():
    a = np.array([1.0, np.nan, 3.0])
    got = lantern.stage(lambda a, b: lantern.max(a[:, None] + b, axis=0))(a, np.zeros(2))
    np.testing.assert_array_equal(got, (a[:, None] + np.zeros(2)).max(0))


def test_gradients_through_fused_reductions():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(7), rng.standard_normal(5)
    check_grads(lambda a, b: sum(lantern.sum(r) for r in _reductions(a, b)), a, b, argnums=(0, 1))


def test_a_value_also_read_elsewhere_is_stored_once():
    """Read twice (by the sum and by the result), the product is computed once into memory."""
    def f(a):
        square = a * a
        return lantern.sum(square), square
    exe = lantern.stage(f).lower(np.ones(4))
    assert "computed in the loop of the reduction" not in exe.lowered
    np.testing.assert_array_equal(exe(np.arange(4.0))[0], 14.0)


def test_the_sum_of_an_outer_product_runs_in_memory_of_its_inputs():
    """Issue 14: ``(a[:, None] * b[None, :]).sum()`` needs no [n, n] product (4 GiB here): the child's peak
    resident memory stays far below it."""
    code = textwrap.dedent("""
        import resource, numpy as np, lantern
        n = 2 ** 15
        a = np.linspace(-1, 1, n, dtype=np.float32); b = np.linspace(0, 2, n, dtype=np.float32)
        total = lantern.stage(lambda a, b: lantern.sum(a[:, None] * b[None, :]))(a, b)
        expected = float(np.sum(a, dtype=np.float64) * np.sum(b, dtype=np.float64))
        assert abs(float(total) - expected) <= 1e-3 * (1 + abs(expected)), (total, expected)
        print("PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stdout.split("PEAK_MB")[1])
    assert peak_mb < 1024, f"peak {peak_mb} MB: the 4 GiB product was made"
