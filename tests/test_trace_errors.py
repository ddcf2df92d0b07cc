"""User errors while tracing: each raises the right lantern exception, says what was wrong
(with shapes), and names this file and the offending line. None crashes the interpreter,
and the staged function stays usable afterwards.

Most of these fail before any C is emitted, so the file compiles only a handful of kernels.
"""
import re

import numpy as np
import pytest

import lantern
from lantern import ConcretizationError, DTypeError, LanternError, ShapeError, TraceError

F = np.float32
THIS = "test_trace_errors.py:"


def a(*shape, dtype=F):
    return np.ones(shape, dtype)


def raises_at(exc_type, fn, *args, line_of=None, match=()):
    """Call ``fn(*args)``; expect ``exc_type`` whose message names this file (and the line
    holding the text ``line_of``) and contains each of ``match``. Returns the message."""
    with pytest.raises(exc_type) as info:
        fn(*args)
    msg = str(info.value)
    assert THIS in msg, msg
    if line_of is not None:
        with open(__file__) as fh:
            lines = [n + 1 for n, text in enumerate(fh) if text.rstrip().endswith(line_of)]
        assert len(lines) == 1, f"marker {line_of!r} must appear on exactly one line"
        assert f"{THIS}{lines[0]})" in msg, (lines[0], msg)
    for m in match:
        assert m in msg, f"{m!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------ shapes

def test_add_shape_mismatch():
    f = lantern.stage(lambda x, y: x + y)  # LINE:add
    raises_at(ShapeError, f, a(3), a(4), line_of="# LINE:add", match=["(3,)", "(4,)"])


def test_matmul_shape_mismatch():
    @lantern.stage
    def f(x, y):
        return lantern.tanh(x @ y)  # LINE:matmul

    raises_at(ShapeError, f, a(2, 3), a(4, 5), line_of="# LINE:matmul", match=["(2, 3)", "(4, 5)"])


def test_reshape_wrong_size():
    @lantern.stage
    def f(x):
        return x.reshape(4, 2)  # LINE:reshape

    raises_at(ShapeError, f, a(2, 3), line_of="# LINE:reshape", match=["(2, 3)", "(4, 2)"])


def test_bad_axis():
    @lantern.stage
    def f(x):
        return x.sum(axis=2)  # LINE:axis

    raises_at(ShapeError, f, a(2, 3), line_of="# LINE:axis", match=["2"])


def test_errors_leave_staged_function_usable():
    @lantern.stage
    def f(x, y):
        return x + y

    with pytest.raises(ShapeError):
        f(a(3), a(4))
    np.testing.assert_array_equal(f(a(3), a(3)), np.full(3, 2, F))
    assert lantern.tracing.current_frame() is None


# ------------------------------------------------------------------ dtypes

def test_logical_ops_on_floats_read_them_as_nonzero():
    # As NumPy's logical_and (issue 18); the operator `&` stays bool-only (below).
    x, y = np.array([0.0, 1.5, -2.0], np.float32), np.array([3.0, 0.0, -1.0], np.float32)
    np.testing.assert_array_equal(lantern.stage(lantern.logical_and)(x, y), np.logical_and(x, y))


def test_logical_operator_on_floats():
    @lantern.stage
    def f(x, y):
        return (x > 0) & y  # LINE:and-op

    raises_at(DTypeError, f, a(3), a(3), line_of="# LINE:and-op", match=["f32[3]", "bool"])


def test_float_index():
    @lantern.stage
    def f(x, i):
        return x[i]  # LINE:float-index

    raises_at(DTypeError, f, a(3), np.float32(1), line_of="# LINE:float-index")


def test_where_with_bool_condition_is_fine():
    f = lantern.stage(lambda c, x, y: lantern.where(c, x, y))
    c = np.array([True, False, True])
    np.testing.assert_array_equal(f(c, a(3), a(3) * 2), np.where(c, 1, 2).astype(F))


# ------------------------------------------------------------------ concretization

def test_python_if_on_staged_value_without_the_rewrite():
    @lantern.stage(python_control_flow=False)
    def f(x):
        if x.sum() > 0:  # LINE:if
            return x
        return -x

    raises_at(ConcretizationError, f, a(3), line_of="# LINE:if", match=["lantern.cond", "while_loop"])


def test_python_while_on_staged_value_without_the_rewrite():
    @lantern.stage(python_control_flow=False)
    def f(x):
        while x.max() < 10:  # LINE:while
            x = x * 2
        return x

    raises_at(ConcretizationError, f, a(3), line_of="# LINE:while", match=["lantern.cond", "while_loop"])


def test_float_of_staged_value():
    @lantern.stage
    def f(x):
        return x * float(x.sum())  # LINE:float

    raises_at(ConcretizationError, f, a(3), line_of="# LINE:float", match=["float()"])


def test_np_asarray_of_staged_value():
    @lantern.stage
    def f(x):
        return np.asarray(x) + 1  # LINE:asarray

    raises_at(ConcretizationError, f, a(3), line_of="# LINE:asarray", match=["NumPy"])


def test_staged_value_as_python_index():
    @lantern.stage
    def f(x, n):
        return x.reshape(n, -1)  # LINE:dynamic-shape

    raises_at(TraceError, f, a(4), np.int64(2), line_of="# LINE:dynamic-shape", match=["static"])


def test_range_over_staged_value_without_the_rewrite():
    @lantern.stage(python_control_flow=False)
    def f(x, n):
        for _ in range(n):  # LINE:range
            x = x + 1
        return x

    raises_at(ConcretizationError, f, a(3), np.int64(2), line_of="# LINE:range", match=["fori_loop"])


# ------------------------------------------------------------------ cond

def test_cond_branches_return_different_shapes():
    @lantern.stage
    def f(x, p):
        return lantern.cond(p > 0, lambda: x, lambda: x.sum())  # LINE:cond-shape

    raises_at(ShapeError, f, a(3), F(1), line_of="# LINE:cond-shape", match=["f32[3]", "f32[]"])


def test_cond_branches_return_different_structures():
    @lantern.stage
    def f(x, p):
        return lantern.cond(p > 0, lambda: (x, x), lambda: [x, x])  # LINE:cond-structure

    raises_at(ShapeError, f, a(3), F(1), line_of="# LINE:cond-structure", match=["structure"])


def test_cond_branches_return_different_dtypes():
    @lantern.stage
    def f(x, p):
        return lantern.cond(p > 0, lambda: x, lambda: x.astype("float64"))  # LINE:cond-dtype

    raises_at(DTypeError, f, a(3), F(1), line_of="# LINE:cond-dtype", match=["f32[3]", "f64[3]"])


def test_cond_predicate_not_scalar():
    @lantern.stage
    def f(x):
        return lantern.cond(x > 0, lambda: x, lambda: -x)  # LINE:cond-pred

    raises_at(ShapeError, f, a(3), line_of="# LINE:cond-pred", match=["(3,)"])


def test_cond_branch_error_points_into_branch():
    def bad_branch(x):
        return x @ x  # LINE:in-branch

    @lantern.stage
    def f(x, p):
        return lantern.cond(p > 0, bad_branch, lambda x: x, x)

    raises_at(ShapeError, f, a(3, 2), F(1), line_of="# LINE:in-branch", match=["(3, 2)"])


def test_value_from_cond_branch_used_outside():
    @lantern.stage
    def f(x, p):
        inside = []

        def branch():
            y = x * 2.0
            inside.append(y)
            return y

        out = lantern.cond(p > 0, branch, lambda: x)
        return out + inside[0]  # LINE:escape

    raises_at(TraceError, f, a(3), F(1), line_of="# LINE:escape", match=["lantern.cond"])


def test_value_from_cond_branch_returned_from_function():
    @lantern.stage  # LINE:escape-result
    def f(x, p):
        inside = []

        def branch():
            inside.append(x * 2.0)
            return x

        lantern.cond(p > 0, branch, lambda: x)
        return inside[0]

    # The function has returned when its results are checked: the message names its definition.
    raises_at(TraceError, f, a(3), F(1), line_of="# LINE:escape-result", match=["the result of f", "lantern.cond"])


def test_value_from_one_branch_returned_by_the_other():
    @lantern.stage
    def f(x, p):
        inside = []

        def yes():
            inside.append(x * 2.0)
            return x

        return lantern.cond(p > 0, yes, lambda: inside[0])  # LINE:cross-branch

    raises_at(TraceError, f, a(3), F(1), line_of="# LINE:cross-branch")


def test_value_from_loop_body_used_outside():
    @lantern.stage
    def f(x):
        inside = []

        def body(i, c):
            inside.append(c + 1.0)
            return c

        lantern.fori_loop(0, 2, body, x)
        return inside[0] * 2.0  # LINE:loop-escape

    raises_at(TraceError, f, a(3), line_of="# LINE:loop-escape", match=["loop"])


# ------------------------------------------------------------------ loops

def test_fori_loop_body_changes_shape():
    @lantern.stage
    def f(x):
        return lantern.fori_loop(0, 3, lambda i, c: c.sum(), x)  # LINE:loop-shape

    raises_at(ShapeError, f, a(3), line_of="# LINE:loop-shape", match=["f32[3]", "f32[]"])


def test_fori_loop_body_changes_dtype():
    @lantern.stage
    def f(x):
        return lantern.fori_loop(0, 3, lambda i, c: c.astype("float64"), x)  # LINE:loop-dtype

    raises_at(DTypeError, f, a(3), line_of="# LINE:loop-dtype", match=["f32[3]", "f64[3]", "astype"])


def test_fori_loop_body_changes_structure():
    @lantern.stage
    def f(x):
        return lantern.fori_loop(0, 3, lambda i, c: (c[0], c[1], c[0]), (x, x))  # LINE:loop-structure

    raises_at(ShapeError, f, a(3), line_of="# LINE:loop-structure", match=["structure"])


def test_fori_loop_float_bounds():
    @lantern.stage
    def f(x, n):
        return lantern.fori_loop(0, n, lambda i, c: c + 1.0, x)  # LINE:loop-bounds

    raises_at(DTypeError, f, a(3), F(2), line_of="# LINE:loop-bounds", match=["integer"])


def test_while_loop_body_changes_shape():
    @lantern.stage
    def f(x):
        return lantern.while_loop(lambda c: c.sum() < 10, lambda c: c.reshape(3, 1), x)  # LINE:while-shape

    raises_at(ShapeError, f, a(3), line_of="# LINE:while-shape", match=["f32[3]", "f32[3,1]"])


def test_while_loop_cond_not_scalar():
    @lantern.stage
    def f(x):
        return lantern.while_loop(lambda c: c < 10, lambda c: c * 2.0, x)  # LINE:while-pred

    raises_at(ShapeError, f, a(3), line_of="# LINE:while-pred", match=["(3,)"])


def test_control_flow_outside_staging_runs_eagerly():
    # was a TraceError; since issue 13 lantern's control flow runs eagerly on values (tests/test_eager.py)
    out = lantern.fori_loop(0, 3, lambda i, c: c * 2.0, 1.0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and float(out) == 8.0


# ------------------------------------------------------------------ recursion

@lantern.stage
def unguarded(x, n):
    return unguarded(x, n - 1) + x  # LINE:unguarded


def test_recursion_without_cond():
    raises_at(TraceError, unguarded, a(3), np.int64(3), line_of="# LINE:unguarded",
              match=["unguarded", "lantern.cond"])


@lantern.stage
def both_branches_recurse(x, n):
    return lantern.cond(n > 0, lambda: both_branches_recurse(x, n - 1),
                        lambda: both_branches_recurse(x, n + 1))  # LINE:both-recurse


def test_recursion_in_both_branches():
    raises_at(TraceError, both_branches_recurse, a(3), np.int64(3), line_of="# LINE:both-recurse",
              match=["both_branches_recurse", "base case"])


# ------------------------------------------------------------------ leaked tensors, mutation

def test_tensor_used_after_its_trace_ended():
    leaked = []

    @lantern.stage
    def f(x):
        leaked.append(x * 2.0)
        return x

    f(a(3))
    with pytest.raises(LanternError) as info:
        leaked[0] + 1.0  # LINE:after-trace
    assert THIS in str(info.value)

    @lantern.stage
    def g(y):
        return y + leaked[0]  # LINE:other-trace

    msg = raises_at(TraceError, g, a(3), line_of="# LINE:other-trace")
    assert "another trace" in msg


def test_leaked_tensor_returned_from_other_trace():
    leaked = []

    @lantern.stage
    def f(x):
        leaked.append(x * 2.0)
        return x

    f(a(3))

    @lantern.stage  # LINE:return-leaked
    def g(y):
        return leaked[0]

    raises_at(TraceError, g, a(3), line_of="# LINE:return-leaked", match=["another trace"])

    @lantern.stage
    def h(y, p):
        return lantern.cond(p > 0, lambda: leaked[0], lambda: y)  # LINE:cond-leaked

    raises_at(TraceError, h, a(3), F(1), line_of="# LINE:cond-leaked", match=["another trace"])

    @lantern.stage
    def k(y):
        return lantern.fori_loop(0, 2, lambda i, c: c, leaked[0])  # LINE:loop-leaked

    raises_at(TraceError, k, a(3), line_of="# LINE:loop-leaked", match=["another trace"])


def test_setitem_raises():
    @lantern.stage
    def f(x):
        x[0] = 1  # LINE:setitem
        return x

    raises_at(TraceError, f, a(3), line_of="# LINE:setitem", match=["immutable"])


def test_unsupported_return_value():
    @lantern.stage
    def f(x):
        return "hello"

    with pytest.raises(LanternError) as info:
        f(a(3))
    assert "str" in str(info.value)


def test_all_messages_are_single_location():
    # The location suffix is added once, not once per layer of re-raising.
    @lantern.stage
    def f(x, p):
        return lantern.cond(p > 0, lambda: lantern.fori_loop(0, 2, lambda i, c: c @ c, x), lambda: x)

    with pytest.raises(ShapeError) as info:
        f(a(3, 2), F(1))
    assert len(re.findall(r"\(at [^)]*\)", str(info.value))) == 1, str(info.value)


def test_fori_loop_python_float_into_int_carry():
    @lantern.stage
    def f(x):
        return lantern.fori_loop(0, 3, lambda i, c: 2.5, 0)  # LINE:weak-truncate

    raises_at(DTypeError, f, a(3), line_of="# LINE:weak-truncate", match=["i64[]", "f32[]"])
