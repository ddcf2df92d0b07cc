"""Bad input at every boundary: one table of cases, each a lantern error with a clear message or a
documented result compared with NumPy (docs/RELIABILITY.md, "Bad input at every boundary").

Cases that could take the process down if a guard failed (cycles, stack exhaustion, a 2**62-byte
allocation, a never-ending loop under ``grad``) run in a subprocess, so a crash fails the test
instead of killing pytest.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import lantern
from test_control_flow import (_tree_lstm_inputs, chain_tree, on_new_thread, sanitized, tree_lstm_root,  # recursive
                               tree_sum)


# ---------------------------------------------------------------- staged functions under test
@lantern.stage
def weighted(x, y):
    return lantern.sum(x * y, axis=0)


@lantern.stage
def pick(x, i):
    return x[i] * 2.0


@lantern.stage
def gather_cols(x, idx):
    return lantern.take(x, idx, axis=1)


@lantern.stage
def pick2(x, i, j):
    return x[i, j]


def _take_loss(w, idx):
    return lantern.sum(lantern.take(w, idx, axis=0) ** 2)


def _take_loss_axis1(w, idx):
    return lantern.sum(lantern.take(w, idx, axis=1) ** 2)


def _root(left, right, vals):
    return tree_sum(left, right, vals, lantern.asarray(0))


tree_root = lantern.stage(_root)
tree_root_limited = lantern.stage(_root, max_depth=50)


def _tree_lstm_loss(left, right, words, emb, w, u):
    return lantern.sum(tree_lstm_root(left, right, words, emb, w, u)[0])


def tree_lstm_args(left, right, bad_word=False):
    words, emb, w, u = _tree_lstm_inputs(np.random.default_rng(0), left)
    if bad_word:
        words[-1] = 9  # emb has 6 rows
    return left, right, words, emb, w, u


TREE3 = (np.array([1, -1, -1]), np.array([2, -1, -1]))  # a root with two leaves

X = np.arange(12, dtype=np.float32).reshape(3, 4)  # integer values: float sums are exact
Y = np.arange(12, 24, dtype=np.float32).reshape(3, 4)


def _ref_weighted(x, y):
    return np.sum(np.asarray(x, np.float32) * np.asarray(y, np.float32), axis=0)


def _exe():
    return weighted.lower(X, Y)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    view = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    view[...] = a
    assert not view.flags.aligned
    return view


def _np_ignore(fn, *args):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


# ---------------------------------------------------------------- the table
@dataclass
class Case:
    name: str
    category: str
    run: Callable[[], Any]
    #: an exception type and a regex its message must match, or a callable giving the expected result
    raises: type | None = None
    match: str = ""
    expected: Callable[[], Any] | None = None
    at_line: bool = False  # the message must name this file and a line

    def __str__(self) -> str:
        return self.name


def _stage(fn, **options):
    return lantern.stage(fn, **options)


CASES = [
    # -- argument count
    Case("too few arguments", "count", lambda: weighted(X), lantern.ArgumentError,
         r"weighted\(\): missing a required argument: 'y'"),
    Case("too many arguments", "count", lambda: weighted(X, Y, Y), lantern.ArgumentError,
         r"weighted\(\): too many positional arguments"),
    Case("unknown keyword", "count", lambda: weighted(X, Y, z=1), lantern.ArgumentError,
         r"unexpected keyword argument 'z'"),
    Case("argument given twice", "count", lambda: weighted(X, x=X), lantern.ArgumentError, r"multiple values"),
    Case("executable: too few", "count", lambda: _exe()(X), lantern.ArgumentError, r"missing a required argument"),
    # -- dtype
    Case("executable: float64 for float32", "dtype", lambda: _exe()(X.astype(np.float64), Y), lantern.ArgumentError,
         r"argument x: expected float32 array of shape \(3, 4\), got float64 array of shape \(3, 4\)"),
    Case("executable: int32 for float32", "dtype", lambda: _exe()(X, Y.astype(np.int32)), lantern.ArgumentError,
         r"argument y: expected float32 .* got int32"),
    Case("executable: bool for float32", "dtype", lambda: _exe()(X > 3, Y), lantern.ArgumentError,
         r"argument x: expected float32 .* got bool"),
    *[Case(f"unsupported dtype {dt}", "dtype", lambda dt=dt: weighted(X, np.zeros((3, 4), dt)),
           lantern.ArgumentError, rf"argument y: dtype {re.escape(np.dtype(dt).name)} is not supported \(expected one of")
      for dt in ("complex64", "float16", "uint8", "int8", "uint64", "datetime64[s]")],
    Case("long double", "dtype", lambda: weighted(X, np.ones(4, np.longdouble)), lantern.ArgumentError,
         r"argument y: dtype float(128|96|64) is not supported|argument y: dtype longdouble"),
    Case("Python int beyond int64", "dtype", lambda: weighted(X.astype(np.int64), 2**70), lantern.DTypeError,
         r"mul: a Python int operand does not fit the tensor's dtype \['int64'\]", at_line=True),
    Case("float index", "dtype", lambda: pick(np.arange(5.0), np.float32(1)), lantern.DTypeError,
         r"index tensors must be integers, got f32\[\]", at_line=True),
    Case("float loop bound", "dtype",
         lambda: _stage(lambda x: lantern.fori_loop(0, 2.5, lambda i, v: v, x))(X), lantern.DTypeError,
         r"fori_loop: loop bounds must be integer scalars, got f32\[\]", at_line=True),
    Case("structured dtype", "dtype", lambda: weighted(X, np.zeros(3, [("a", "f4"), ("b", "i4")])),
         lantern.ArgumentError, r"argument y: dtype .* is not supported"),
    Case("string array", "dtype", lambda: weighted(X, np.array(["a", "b"])), lantern.ArgumentError,
         r"argument y: dtype str.* is not supported"),
    # -- shape and rank
    Case("executable: wrong shape", "shape", lambda: _exe()(X[:2], Y), lantern.ArgumentError,
         r"argument x: expected float32 array of shape \(3, 4\), got float32 array of shape \(2, 4\)"),
    Case("executable: rank 1 for rank 2", "shape", lambda: _exe()(X.reshape(12), Y), lantern.ArgumentError,
         r"argument x: .* got float32 array of shape \(12,\)"),
    Case("executable: rank 3 for rank 2", "shape", lambda: _exe()(X, Y[None]), lantern.ArgumentError,
         r"argument y: .* got float32 array of shape \(1, 3, 4\)"),
    Case("executable: scalar for array", "shape", lambda: _exe()(np.float32(1), Y), lantern.ArgumentError,
         r"argument x: .* got float32 array of shape \(\)"),
    Case("shapes that do not broadcast", "shape", lambda: weighted(X, np.ones((5,), np.float32)), lantern.ShapeError,
         r"mul: shapes \(3, 4\), \(5,\) cannot be broadcast together", at_line=True),
    Case("transposed shapes", "shape", lambda: weighted(X, Y.T), lantern.ShapeError, r"cannot be broadcast", at_line=True),
    Case("negative dimension", "shape", lambda: _stage(lambda x: lantern.zeros((-1, 3)) + x)(1.0), lantern.ShapeError,
         r"fill: negative dimension in the result shape \(-1, 3\)", at_line=True),
    Case("fractional dimension", "shape", lambda: _stage(lambda x: lantern.zeros((2.5, 3)) + x)(1.0),
         lantern.TraceError, r"full: shape must be a tuple of Python ints, got \(2.5, 3\)", at_line=True),
    Case("arange with step 0", "shape", lambda: _stage(lambda x: lantern.arange(0, 3, 0) + x)(1), lantern.ShapeError,
         r"arange: step must not be zero", at_line=True),
    Case("matmul inner dimensions", "shape", lambda: _stage(lambda a, b: a @ b)(X, Y), lantern.ShapeError,
         r"matmul: inner dimensions differ: \(3, 4\) @ \(3, 4\)", at_line=True),
    # -- objects that are not arrays
    Case("string operand", "non-array", lambda: weighted(X, "abc"), lantern.DTypeError,
         r"mul: an operand is a str 'abc', not a tensor", at_line=True),
    Case("None operand", "non-array", lambda: weighted(X, None), lantern.DTypeError,
         r"mul: an operand is a NoneType None", at_line=True),
    Case("list mixing numbers and strings", "non-array", lambda: weighted(X, [1, "a"]), lantern.DTypeError,
         r"mul: an operand is a list \[1, 'a'\]", at_line=True),
    Case("bytes operand", "non-array", lambda: weighted(X, b"ab"), lantern.DTypeError, r"an operand is a bytes",
         at_line=True),
    Case("set argument", "non-array", lambda: weighted(X, {1, 2}), lantern.ArgumentError, r"argument y: .* got set"),
    Case("plain object argument", "non-array", lambda: weighted(X, object()), lantern.ArgumentError,
         r"argument y: expected a NumPy array, a Python number or a nested tuple/list/dict of them, got object"),
    Case("function argument", "non-array", lambda: weighted(X, print), lantern.ArgumentError,
         r"argument y: .* got builtin_function_or_method"),
    Case("executable: list for array", "non-array", lambda: _exe()(X, Y.tolist()), lantern.ArgumentError,
         r"argument y: expected the structure \* \('\*' is an array or number\), got \[\[\*, "),
    Case("executable: string for array", "non-array", lambda: _exe()(X, "abc"), lantern.ArgumentError,
         r"argument y: .* got str 'abc'"),
    Case("executable: None for array", "non-array", lambda: _exe()(None, Y), lantern.ArgumentError,
         r"argument x: expected the structure \* .* got None: NoneType None"),
    Case("staging a non-function", "non-array", lambda: lantern.stage(42), lantern.ArgumentError,
         r"stage: expected a function, got int"),
    Case("bad stage option", "non-array", lambda: lantern.stage(check_finite="yes"), lantern.ArgumentError,
         r"stage: check_finite must be a bool"),
    Case("negative max_depth", "non-array", lambda: lantern.stage(max_depth=-1), lantern.ArgumentError,
         r"max_depth must be an int >= 0"),
    # -- object arrays
    Case("object array with None", "object array", lambda: weighted(X, np.array([1, None], dtype=object)),
         lantern.ArgumentError, r"argument y: dtype object is not supported"),
    Case("object array of numbers", "object array", lambda: weighted(X, Y.astype(object)), lantern.ArgumentError,
         r"argument y: dtype object is not supported"),
    Case("executable: object array", "object array", lambda: _exe()(X, Y.astype(object)), lantern.ArgumentError,
         r"argument y: expected float32 .* got object array"),
    Case("nested object array", "object array", lambda: weighted({"a": X}, np.array([[1], [2, 3]], dtype=object)),
         lantern.ArgumentError, r"argument y: dtype object"),
    # -- layouts that work (copied before C sees them) and are never written to
    *[Case(f"layout: {name}", "layout (works)", lambda make=make: weighted(make(X), Y),
           expected=lambda make=make: _ref_weighted(make(X), Y))
      for name, make in [
          ("Fortran order", np.asfortranarray),
          ("negative strides", lambda a: a[::-1, ::-1].copy()[::-1, ::-1]),
          ("reversed rows view", lambda a: np.ascontiguousarray(a[::-1])[::-1]),
          ("every other column of a wider array", lambda a: np.repeat(a, 2, axis=1)[:, ::2]),
          ("big-endian", lambda a: a.astype(">f4")),
          ("unaligned", _unaligned),
          ("read-only", _read_only),
          ("zero-stride broadcast view", lambda a: np.broadcast_to(a[:1], a.shape)),
          ("subclass (np.matrix)", lambda a: _np_ignore(np.asmatrix, a)),
          ("memoryview-backed", lambda a: np.frombuffer(memoryview(a.tobytes()), np.float32).reshape(a.shape)),
      ]],
    Case("executable: read-only negative-strided", "layout (works)", lambda: _exe()(_read_only(X)[::-1], Y[::-1]),
         expected=lambda: _ref_weighted(X[::-1], Y[::-1])),
    Case("large zero-stride input", "layout (works)",
         lambda: _stage(lambda x: lantern.sum(x))(np.broadcast_to(np.float64(1.0), (2**12, 2**10))),
         expected=lambda: np.float64(2**22)),
    # -- zero-size dimensions: NumPy's result where it has one, a clear error where it has none
    Case("sum over an empty axis", "zero-size", lambda: weighted(np.ones((0, 4), np.float32), np.ones((0, 4), np.float32)),
         expected=lambda: np.zeros(4, np.float32)),
    Case("mean of empty", "zero-size", lambda: _stage(lambda x: lantern.mean(x))(np.ones(0)),
         expected=lambda: _np_ignore(np.mean, np.ones(0))),
    Case("elementwise on empty", "zero-size", lambda: _stage(lambda x: lantern.exp(x) * 2.0)(np.ones((0, 3))),
         expected=lambda: np.ones((0, 3))),
    Case("matmul with k = 0", "zero-size", lambda: _stage(lambda a, b: a @ b)(np.ones((2, 0)), np.ones((0, 3))),
         expected=lambda: np.zeros((2, 3))),
    Case("concatenate with an empty part", "zero-size",
         lambda: _stage(lambda a, b: lantern.concatenate([a, b]))(np.ones(0), np.arange(3.0)),
         expected=lambda: np.arange(3.0)),
    Case("max of empty", "zero-size", lambda: _stage(lambda x: lantern.max(x))(np.ones(0)), lantern.ShapeError,
         r"reduce_max: zero-size reduction .* has no identity", at_line=True),
    Case("argmax of empty", "zero-size", lambda: _stage(lambda x: lantern.argmax(x))(np.ones((2, 0)), ),
         lantern.ShapeError, r"argmax: .*empty", at_line=True),
    Case("index into an empty axis", "zero-size", lambda: pick(np.ones(0), np.int64(0)), lantern.OutOfBoundsError,
         r"index 0 is out of bounds for an axis of size 0", at_line=True),
    # -- shapes whose byte size overflows: a trace-time error, not a wrapped malloc size
    Case("zeros((2**40, 2**40))", "huge shape", lambda: _stage(lambda x: lantern.zeros((2**40, 2**40)) + x)(1.0),
         lantern.ShapeError, r"f32\[1099511627776,1099511627776\] would take \d+ bytes; a staged tensor is limited to",
         at_line=True),
    Case("broadcast_to 2**62 elements", "huge shape",
         lambda: _stage(lambda x: lantern.sum(lantern.broadcast_to(x, (2**31, 2**31))))(np.float32(1)),
         lantern.ShapeError, r"broadcast: the result f32\[2147483648,2147483648\] would take 18446744073709551616 bytes",
         at_line=True),
    Case("outer product of huge aranges", "huge shape",
         lambda: _stage(lambda x: lantern.arange(2**32)[:, None] * lantern.arange(2**32)[None, :] + x)(0),
         lantern.ShapeError, r"would take \d+ bytes", at_line=True),
    # -- NaN and Inf: they propagate exactly as in NumPy (check_finite=True reports them instead)
    *[Case(f"non-finite: {name}", "NaN/Inf (propagate)", lambda fn=fn: _stage(fn)(np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -1.0])),
           expected=lambda ref=ref: _np_ignore(ref, np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -1.0])))
      for name, fn, ref in [
          ("exp, log, sqrt", lambda x: (lantern.exp(x), lantern.log(x), lantern.sqrt(x)),
           lambda x: (np.exp(x), np.log(x), np.sqrt(x))),
          ("division by zero", lambda x: (x / 0.0, 0.0 / x), lambda x: (x / 0.0, 0.0 / x)),
          ("max/min/argmax with NaN", lambda x: (lantern.max(x), lantern.min(x), lantern.argmax(x), lantern.argmin(x)),
           lambda x: (np.max(x), np.min(x), np.argmax(x), np.argmin(x))),
          ("maximum/minimum with NaN", lambda x: (lantern.maximum(x, 0.5), lantern.minimum(x, 0.5)),
           lambda x: (np.maximum(x, 0.5), np.minimum(x, 0.5))),
          ("sum of inf and -inf", lambda x: (lantern.sum(x), lantern.sum(x[2:4])), lambda x: (np.sum(x), np.sum(x[2:4]))),
          ("tanh, sigmoid, softmax", lambda x: (lantern.tanh(x), lantern.softmax(x)),
           lambda x: (np.tanh(x), np.exp(x - np.max(x)) / np.sum(np.exp(x - np.max(x))))),
      ]],
    # -- staged integer indices out of range: OutOfBoundsError naming the line, also under grad
    Case("x[i], i past the end", "index", lambda: pick(np.arange(5.0), np.int64(5)), lantern.OutOfBoundsError,
         r"index 5 is out of bounds for an axis of size 5", at_line=True),
    Case("x[i], i before the start", "index", lambda: pick(np.arange(5.0), np.int64(-6)), lantern.OutOfBoundsError,
         r"index -6 is out of bounds for an axis of size 5", at_line=True),
    Case("x[i], int32 index", "index", lambda: pick(np.arange(5.0), np.int32(7)), lantern.OutOfBoundsError,
         r"index 7 is out of bounds", at_line=True),
    Case("x[i], i = int64 max", "index", lambda: pick(np.arange(5.0), np.int64(2**63 - 1)), lantern.OutOfBoundsError,
         r"index 9223372036854775807 is out of bounds", at_line=True),
    Case("x[i], i = int64 min", "index", lambda: pick(np.arange(5.0), np.int64(-2**63)), lantern.OutOfBoundsError,
         r"is out of bounds for an axis of size 5", at_line=True),
    Case("x[i, j], bad second index", "index", lambda: pick2(X, np.int64(1), np.int64(4)), lantern.OutOfBoundsError,
         r"index 4 is out of bounds for an axis of size 4", at_line=True),
    Case("gather x[idx] with one bad index", "index", lambda: pick(np.arange(5.0), np.array([0, 4, 9])),
         lantern.OutOfBoundsError, r"index 9 is out of bounds", at_line=True),
    Case("take(axis=1) with a bad index", "index", lambda: gather_cols(X, np.array([3, -5])), lantern.OutOfBoundsError,
         r"indexing axis 1 of shape \(3, 4\): index -5 is out of bounds", at_line=True),
    Case("grad through take (axis 0)", "index", lambda: lantern.grad(_take_loss)(np.ones((4, 3)), np.array([0, 5])),
         lantern.OutOfBoundsError, r"index 5 is out of bounds for an axis of size 4", at_line=True),
    Case("grad through take (axis 1)", "index",
         lambda: lantern.grad(_take_loss_axis1)(np.ones((4, 3)), np.array([0, 3])),
         lantern.OutOfBoundsError, r"index 3 is out of bounds for an axis of size 3", at_line=True),
    Case("grad through take, negative indices fine", "index",
         lambda: lantern.grad(_take_loss)(np.ones((4, 3)), np.array([0, -1, -1])),
         expected=lambda: np.array([[2.0] * 3, [0.0] * 3, [0.0] * 3, [4.0] * 3])),
    # -- recursion over child-index arrays
    Case("tree: bad child index", "recursion", lambda: tree_root(np.array([1, -1, -1]), np.array([7, -1, -1]), np.ones(3)),
         lantern.OutOfBoundsError, r"index 7 is out of bounds for an axis of size 3", at_line=True),
    Case("tree: bad child index under grad", "recursion",
         lambda: lantern.grad(tree_root, argnums=2)(np.array([1, -1, -1]), np.array([-7, -1, -1]), np.ones(3)),
         lantern.OutOfBoundsError, r"index -7 is out of bounds", at_line=True),
    Case("TreeLSTM: word index past the embedding", "recursion", lambda: tree_lstm_root(*tree_lstm_args(*TREE3, True)),
         lantern.OutOfBoundsError, r"indexing axis 0 of shape \(6, 3\): index 9 is out of bounds", at_line=True),
    Case("TreeLSTM: bad word index under grad", "recursion",
         lambda: lantern.grad(_tree_lstm_loss, argnums=3)(*tree_lstm_args(*TREE3, True)),
         lantern.OutOfBoundsError, r"index 9 is out of bounds for an axis of size 6", at_line=True),
    Case("TreeLSTM: bad child index under grad", "recursion",
         lambda: lantern.grad(_tree_lstm_loss, argnums=3)(*tree_lstm_args(np.array([1, -1, -1]), np.array([3, -1, -1]))),
         lantern.OutOfBoundsError, r"index 3 is out of bounds for an axis of size 3", at_line=True),
    Case("tree: depth 40 under max_depth=50", "recursion", lambda: tree_root_limited(*chain_tree(40), np.ones(81)),
         expected=lambda: np.float64(81.0)),
    Case("tree: depth 60 over max_depth=50", "recursion", lambda: tree_root_limited(*chain_tree(60), np.ones(121)),
         lantern.RecursionDepthError, r"tree_sum \(test_control_flow\.py:\d+\): recursion depth 51 exceeds the limit "
         r"max_depth=50"),
    Case("tree: max_depth applies to the gradient", "recursion",
         lambda: lantern.grad(tree_root_limited, argnums=2)(*chain_tree(60), np.ones(121)),
         lantern.RecursionDepthError, r"recursion depth 51 exceeds the limit max_depth=50"),
]


def _check_message(case: Case, exc: BaseException) -> None:
    message = str(exc)
    assert isinstance(exc, lantern.LanternError), f"{type(exc).__name__} is not a lantern error: {message}"
    assert re.search(case.match, message), f"{message!r} does not match {case.match!r}"
    if case.at_line:  # the user's file (this one, or the recursive function's) and line
        m = re.search(r"\b(test_\w+\.py):(\d+)", message)
        assert m, f"{message!r} does not name a file:line"
        assert 0 < int(m.group(2)) <= len(open(os.path.join(os.path.dirname(__file__), m.group(1))).readlines())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input(case: Case):
    if case.raises is not None:
        with pytest.raises(case.raises) as info:
            case.run()
        _check_message(case, info.value)
        return
    got = case.run()
    expected = case.expected()
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64), rtol=1e-6, atol=0)
            assert np.asarray(g).shape == np.asarray(e).shape
    else:
        np.testing.assert_array_equal(got, expected)
        assert np.asarray(got).shape == np.asarray(expected).shape


def test_layouts_are_never_written_to():
    a = _read_only(X)[::-1]
    b = np.asfortranarray(Y)
    before = (a.copy(), b.copy())
    weighted(a, b)
    _exe()(a, b)
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


def test_staged_value_is_usable_after_every_error():
    """An error in C releases the arena: the same executable keeps giving right answers."""
    exe = pick.lower(np.arange(5.0), np.int64(0))
    for i in (5, -6, 99):
        with pytest.raises(lantern.OutOfBoundsError):
            exe(np.arange(5.0), np.int64(i))
        assert exe.native.arena_in_use() == 0
        assert exe(np.arange(5.0), np.int64(3)) == 6.0


def test_max_depth_from_the_environment(monkeypatch):
    monkeypatch.setenv("LANTERN_MAX_DEPTH", "10")
    limited = lantern.stage(_root)
    assert limited.options["max_depth"] == 10
    assert limited(*chain_tree(9), np.ones(19)) == 19.0
    with pytest.raises(lantern.RecursionDepthError, match="max_depth=10"):
        limited(*chain_tree(10), np.ones(21))
    monkeypatch.setenv("LANTERN_MAX_DEPTH", "ten")
    with pytest.raises(lantern.ArgumentError, match=r"\$LANTERN_MAX_DEPTH='ten': expected an integer"):
        lantern.stage(_root)


def test_gradients_of_deep_recursion_run_on_lantern_s_own_stack():
    """Recursion (and loops under grad) run on a stack of LANTERN_STACK_SIZE bytes (1 GiB by default) that each
    thread reserves once, not on the thread's stack: the gradient through a chain 300,000 deep works on any
    thread (it raised at 20,000 on the main thread's 8 MiB); a smaller setting stops it, naming the size."""
    if sanitized():
        pytest.skip("LANTERN_DEBUG=1 builds run on the thread's stack")
    left, right = chain_tree(300_000)
    vals = np.ones(600_001)
    grad = lantern.grad(tree_root, argnums=2)
    np.testing.assert_array_equal(grad(left, right, vals), vals)
    np.testing.assert_array_equal(on_new_thread(lambda: grad(left, right, vals)), vals)
    error = on_new_thread(lambda: grad(left, right, vals), stack_size="16M")
    assert isinstance(error, lantern.RecursionDepthError), error
    # (the recursive function or its continuation: whichever frame crosses the line first reports)
    assert re.search(r"(tree_sum_cps .*|the gradient's continuation at test_control_flow\.py:\d+): recursion too deep: all 16 MiB of lantern's stack used \(each level of a "
                     r"recursion, and each iteration of a loop under grad, holds a frame\); set "
                     r"LANTERN_STACK_SIZE=4G or more", str(error)), str(error)


# ---------------------------------------------------------------- risky cases, each in its own process
_SUBPROCESS_PRELUDE = f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import numpy as np
import lantern
import test_bad_inputs as m
"""

RISKY = {
    "tree with a cycle": ("m.tree_root(np.array([1, 0, -1]), np.array([2, 2, -1]), np.ones(3))",
                          "RecursionDepthError", r"tree_sum \(test_control_flow\.py:\d+\): recursion too deep"),
    "tree with a cycle, under grad": (
        "lantern.grad(m.tree_root, argnums=2)(np.array([1, 0, -1]), np.array([2, 2, -1]), np.ones(3))",
        "RecursionDepthError", r"tree_sum_cps .*recursion too deep"),
    "TreeLSTM with a cycle, under grad": (
        "lantern.grad(m._tree_lstm_loss, argnums=3)(*m.tree_lstm_args(np.array([1, 0, -1]), np.array([2, 2, -1])))",
        "RecursionDepthError", r"tree_lstm_cps .*recursion too deep"),
    "self-loop at the root": ("m.tree_root(np.array([0]), np.array([0]), np.ones(1))",
                              "RecursionDepthError", r"recursion too deep"),
    "tree deeper than lantern's stack": ("m.tree_root(*m.chain_tree(500_000), np.ones(1_000_001))",
                                         "RecursionDepthError", r"recursion too deep: all 16 MiB of lantern's stack",
                                         {"LANTERN_STACK_SIZE": "16M"}),
    "never-ending while_loop under grad": (
        "lantern.grad(lantern.stage(lambda x: lantern.while_loop(lambda s: s > -1.0, lambda s: s + 1.0, x)))"
        "(np.float64(2.0))",
        "RecursionDepthError", r"the gradient's continuation at <string>:\d+: recursion too deep"),
    "intermediates of 2**62 bytes": ("lantern.stage(lambda x: lantern.sum(lantern.zeros((2**30, 2**30)) + x))"
                                     "(np.float32(1))",
                                     "NativeError", r"out of memory allocating 4611686018427387904 bytes for "
                                     r"intermediates of \w+: f32\[1073741824,1073741824\] at <string>:\d+"),
}


@pytest.mark.parametrize("name", list(RISKY))
def test_risky_input_in_a_subprocess(name):
    call, exc_name, pattern, *env = RISKY[name]
    code = _SUBPROCESS_PRELUDE + textwrap.dedent(f"""
    try:
        {call}
    except lantern.LanternError as exc:
        print("RAISED", type(exc).__name__, exc)
    else:
        print("NO ERROR")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env[0] if env else {})))
    assert proc.returncode == 0, f"the process died (code {proc.returncode}):\n{proc.stderr[-3000:]}"
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith(f"RAISED {exc_name} "), line
    assert re.search(pattern, line), line
