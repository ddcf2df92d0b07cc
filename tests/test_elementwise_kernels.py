"""Elementwise loops (``codegen/kernels/elementwise.py``): one-element operands read once, flat loops."""
from __future__ import annotations

import re

import numpy as np

import lantern

rng = np.random.default_rng(3)


def test_one_element_operands_are_read_once_before_the_loop():
    def shifted_exp(x, m):
        return lantern.exp(x - m.max(axis=1, keepdims=True))  # (a [1, 1] buffer the loop reads)

    x, m = rng.standard_normal((1, 103)).astype(np.float32), rng.standard_normal((1, 7)).astype(np.float32)
    exe = lantern.stage(shifted_exp).lower(x, m)
    np.testing.assert_allclose(exe(x, m), np.exp(x - m.max(axis=1, keepdims=True)), rtol=1e-6)
    hoisted = re.search(r"const float (\w+_once\d+) = \w+\[0\];", exe.c_source)
    assert hoisted, exe.c_source
    loop = exe.c_source[hoisted.end():].split("}", 1)[0]
    assert hoisted.group(1) in loop and "[0]" not in loop  # the loop reads the local, not the buffer


def test_the_same_one_element_operand_twice_in_one_op_and_in_two_loops():
    c = np.array([True, False, True])  # (one local for both: an unused second one fails under -Werror)
    np.testing.assert_array_equal(lantern.stage(lambda c, s: lantern.where(c, s, s))(c, np.ones(1)), np.ones(3))

    def f(x, s):
        k = s * 2.0
        return x * k, (x + 1.0) * k, lantern.sin(k) * x[:1]

    x, s = rng.standard_normal(9), np.float64(0.7)
    for got, want in zip(lantern.stage(f)(x, s), (x * 1.4, (x + 1.0) * 1.4, np.sin(1.4) * x[:1])):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_operands_differing_by_leading_axes_of_one_run_in_one_flat_loop():
    def f(a, b):
        return lantern.tanh(a + b)  # [1, n] from [n] and [1, n]

    a, b = rng.standard_normal(50), rng.standard_normal((1, 50))
    exe = lantern.stage(f).lower(a, b)
    np.testing.assert_allclose(exe(a, b), np.tanh(a + b), rtol=1e-12)
    assert "i0 < 1" not in exe.c_source  # no loop over the axis of one
    g = lantern.stage(lambda a, b: a + b, dynamic=True)  # run-time sizes keep the nest where they must
    for n in (3, 5, 1):
        a, b = rng.standard_normal((1, n)), rng.standard_normal((4, n))
        np.testing.assert_allclose(g(a, b), a + b, rtol=1e-12)
