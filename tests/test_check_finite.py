"""Checks compiled into the C on request: ``check_finite`` (NaN/Inf reports naming the op and the
line, forward and gradient, in loops and recursion) and ``check_indices`` (on by default)."""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest

import lantern

HERE = os.path.basename(__file__)


def _line_of(text: str) -> int:
    """The line of this file ending in the comment ``# text`` (once)."""
    lines = [i + 1 for i, line in enumerate(open(__file__).read().splitlines()) if line.endswith(f"# {text}")]
    assert len(lines) == 1, (text, lines)
    return lines[0]


def _raises_at(exc: pytest.ExceptionInfo, value: str, op: str, marker: str, gradient_of: str | None = None) -> None:
    message = str(exc.value)
    where = f"{op} in the gradient of {gradient_of}" if gradient_of else op
    expected = f"{value} from {where} at {HERE}:{_line_of(marker)}: "
    assert message.startswith(expected), (message, expected)
    assert marker in message  # the source line itself is quoted
    assert re.search(r"\(first at flat index \d+\)$", message), message


def _numpy(fn, *args):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


# ---------------------------------------------------------------- forward
def log_of(x):
    y = x * 2.0
    return lantern.log(y) + 1.0  # marker: log_of


def ratio(x, y):
    return lantern.sum(x / y)  # marker: ratio


def grow(x):
    return lantern.exp(x) * 0.5  # marker: grow


def big_sum(x):
    return lantern.sum(x)  # marker: big_sum


def big_matmul(a, b):
    return a @ b  # marker: big_matmul


FORWARD = [
    # (function, arguments, value, op, marker, NumPy reference)
    (log_of, (np.array([1.0, 0.0, 3.0]),), "-inf", "log", "marker: log_of",
     lambda x: np.log(x * 2.0) + 1.0),
    (ratio, (np.zeros(3), np.array([1.0, 0.0, 2.0])), "nan", "div", "marker: ratio",
     lambda x, y: np.sum(x / y)),
    (grow, (np.array([1.0, 100.0], np.float32),), "inf", "exp", "marker: grow",
     lambda x: np.exp(x) * np.float32(0.5)),
    (big_sum, (np.full(4, 3e38, np.float32),), "inf", "reduce_sum", "marker: big_sum",
     lambda x: np.float32(np.sum(x.astype(np.float64)))),
    (big_matmul, (np.full((2, 3), 1e200), np.full((3, 2), 1e200)), "inf", "matmul", "marker: big_matmul",
     lambda a, b: a @ b),
]


@pytest.mark.parametrize("fn, args, value, op, marker, ref", FORWARD, ids=[f[0].__name__ for f in FORWARD])
def test_forward_non_finite_is_reported_with_op_and_line(fn, args, value, op, marker, ref):
    checked = lantern.stage(fn, check_finite=True)
    with pytest.raises(lantern.NonFiniteError) as info:
        checked(*args)
    _raises_at(info, value, op, marker)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, lantern.NativeError)
    # finite inputs give the same result as unchecked code
    finite = tuple(np.ones_like(a) for a in args)
    np.testing.assert_array_equal(checked(*finite), lantern.stage(fn)(*finite))
    # off (the default): non-finite values propagate as in NumPy (finite ones agree to libm's ulp)
    expected = _numpy(ref, *args)
    got = lantern.stage(fn)(*args)
    assert not np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_non_finite_argument_is_reported_as_the_argument():
    checked = lantern.stage(log_of, check_finite=True)
    with pytest.raises(lantern.NonFiniteError, match=r"^nan from argument x \(first at flat index 1\)$"):
        checked(np.array([1.0, np.nan]))
    with pytest.raises(lantern.NonFiniteError, match=r"^-inf from argument x \(first at flat index 0\)$"):
        checked(np.array([-np.inf, 1.0]))


def test_mode_off_costs_nothing_and_is_a_different_cache_entry(monkeypatch):
    x = np.array([1.0, 2.0])
    off = lantern.stage(log_of).lower(x)
    on = lantern.stage(log_of, check_finite=True).lower(x)
    for word in ("isfinite", "lt_nonfinite", "lt_check_finite"):
        assert word not in off.c_source
    assert "lt_nonfinite(" in on.c_source and "lt_check_finite_f64(" in on.c_source
    assert on.so_path != off.so_path
    monkeypatch.setenv("LANTERN_CHECK_FINITE", "1")
    from_env = lantern.stage(log_of)
    assert from_env.options["check_finite"] is True
    assert from_env.lower(x).c_source == on.c_source
    with pytest.raises(lantern.NonFiniteError):
        from_env(np.array([0.0]))


# ---------------------------------------------------------------- gradient code
def sqrt_loss(x):
    return lantern.sum(lantern.sqrt(x))  # marker: sqrt_loss


def test_nan_only_in_the_gradient_names_the_forward_op():
    checked = lantern.stage(sqrt_loss, check_finite=True)
    x = np.array([4.0, 0.0])
    assert checked(x) == 2.0  # the forward value is finite
    with pytest.raises(lantern.NonFiniteError) as info:
        lantern.grad(checked)(x)
    _raises_at(info, "inf", "div", "marker: sqrt_loss", gradient_of="sqrt")
    # unchecked: NumPy's value of the derivative, 0.5 / sqrt(x)
    np.testing.assert_array_equal(lantern.grad(lantern.stage(sqrt_loss))(x), _numpy(lambda v: 0.5 / np.sqrt(v), x))
    np.testing.assert_array_equal(lantern.grad(checked)(np.array([4.0, 1.0])), [0.25, 0.5])


# ---------------------------------------------------------------- loops, continuations, recursion
def overflow_in_fori(x):
    return lantern.fori_loop(0, 40, lambda i, v: v * 10.0, x)  # marker: overflow_in_fori


def test_inside_fori_loop():
    checked = lantern.stage(overflow_in_fori, check_finite=True)
    with pytest.raises(lantern.NonFiniteError) as info:
        checked(np.array([1.0, 2.0], np.float32))
    _raises_at(info, "inf", "mul", "marker: overflow_in_fori")
    np.testing.assert_array_equal(lantern.stage(overflow_in_fori)(np.array([1.0, 2.0], np.float32)),
                                  [np.inf, np.inf])
    np.testing.assert_array_equal(checked(np.array([0.0], np.float32)), [0.0])


def _sqrt_steps(x, n):
    # the k-th step reads sqrt(x - k): finite forward, infinite derivative where x - k == 0
    return lantern.fori_loop(0, n, lambda k, acc: acc + lantern.sqrt(x - lantern.astype(k, "float64")),  # marker: steps
                             lantern.zeros((), "float64"))


def static_loop_loss(x):
    return _sqrt_steps(x, 4)


def dynamic_loop_loss(x, n):
    return _sqrt_steps(x, n)  # a staged trip count: the gradient runs through continuations


@pytest.mark.parametrize("dynamic", [False, True], ids=["static-bounds", "staged-bounds"])
def test_gradient_inside_a_loop(dynamic):
    fn = dynamic_loop_loss if dynamic else static_loop_loss
    args = (np.float64(3.0),) + ((np.int64(4),) if dynamic else ())
    checked = lantern.stage(fn, check_finite=True)
    assert checked(*args) == pytest.approx(np.sqrt(3.0) + np.sqrt(2.0) + 1.0)  # sqrt(0) is finite
    with pytest.raises(lantern.NonFiniteError) as info:
        lantern.grad(checked)(*args)
    _raises_at(info, "inf", "div", "marker: steps", gradient_of="sqrt")
    ok = (np.float64(5.0),) + args[1:]
    expected = sum(0.5 / np.sqrt(5.0 - k) for k in range(4))
    assert lantern.grad(checked)(*ok) == pytest.approx(expected, rel=1e-12)


@lantern.stage
def log_tree(left, vals, node):
    return lantern.cond(left[node] < 0,
                        lambda: lantern.log(vals[node]),  # marker: log_tree
                        lambda: vals[node] + log_tree(left, vals, left[node]))


def log_tree_root(left, vals):
    return log_tree(left, vals, lantern.asarray(0))


def test_inside_recursion_forward_and_gradient():
    checked = lantern.stage(log_tree_root, check_finite=True)
    left = np.array([1, 2, -1])
    with pytest.raises(lantern.NonFiniteError) as info:
        checked(left, np.array([1.0, 1.0, 0.0]))
    _raises_at(info, "-inf", "log", "marker: log_tree")
    assert checked(left, np.array([1.0, 1.0, 2.0])) == pytest.approx(2.0 + np.log(2.0))
    # log(v) at v = 1e-320 is finite (-736.8); its derivative 1 / v overflows
    with pytest.raises(lantern.NonFiniteError) as info:
        lantern.grad(checked, argnums=1)(left, np.array([1.0, 1.0, 1e-320]))
    _raises_at(info, "inf", "div", "marker: log_tree", gradient_of="log")


# ---------------------------------------------------------------- check_indices
@lantern.stage
def _pick(x, i):
    return x[i] * 2.0


def _take_loss(w, idx):
    return lantern.sum(lantern.take(w, idx, axis=0) ** 2)  # gradient: indexed accumulation


def _take_loss_cols(w, idx):
    return lantern.sum(lantern.take(w, idx, axis=1) ** 2)  # gradient: scatter_add


def _tree(left, vals, node):
    return lantern.cond(left[node] < 0, lambda: vals[node], lambda: vals[node] + _tree_staged(left, vals, left[node]))


_tree_staged = lantern.stage(_tree)

W = np.arange(12.0).reshape(4, 3)
INDEXING = {
    # name: (function, arguments, staged indices in the C with checks on)
    "x[i] (take)": (lambda x, i: _pick(x, i), (np.arange(5.0), np.int64(-2)), 1),
    "take(axis=1)": (lambda x, i: lantern.take(x, i, axis=1), (W, np.array([2, -1, 0])), 1),
    "grad: indexed accumulation": (lantern.grad(_take_loss), (W, np.array([3, -4, 3])), 1),
    "grad: scatter_add": (lantern.grad(_take_loss_cols), (W, np.array([0, -1])), 2),
    "recursion child indices": (lambda left, vals: _tree_staged(left, vals, lantern.asarray(0)),
                                (np.array([1, 2, -1]), np.array([1.0, 2.0, 4.0])), 3),
}


@pytest.mark.parametrize("name", list(INDEXING))
def test_index_checks_on_by_default_off_explicitly(name, monkeypatch):
    fn, args, n_checks = INDEXING[name]
    base = getattr(fn, "fn", fn)
    checked = lantern.stage(base)
    unchecked = lantern.stage(base, check_indices=False)
    c_on, c_off = checked.lower(*args).c_source, unchecked.lower(*args).c_source
    assert len(re.findall(r"\blt_index\(", c_on)) >= n_checks
    assert "lt_wrap(" not in c_on
    assert "lt_index(" not in c_off  # no check at all: the index is only wrapped (negative counts from the end)
    assert len(re.findall(r"\blt_wrap\(", c_off)) == len(re.findall(r"\blt_index\(", c_on))
    assert checked.lower(*args).so_path != unchecked.lower(*args).so_path
    expected = checked(*args)
    np.testing.assert_array_equal(unchecked(*args), expected)  # in range: same values
    monkeypatch.setenv("LANTERN_CHECK_INDICES", "0")
    assert lantern.stage(base).lower(*args).c_source == c_off
