"""Plain Python ``if``/``while``/``for``, conditional expressions and ``and``/``or``/``not`` in staged functions
(issue 15, first part): Python values run as Python, staged ones become ``cond``/``while_loop``/``fori_loop``;
the variable rules and their errors; gradients against finite differences; the rewritten source."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import lantern
from lantern.testing import check_grads, check_staged


def piecewise(x, scale):
    if x.sum() > 0:          # staged: a cond
        y = x * scale
    elif x.sum() < -1.0:
        y = -x
    else:
        y = x * 0.0 + 1.0
    if scale > 1.5:          # a Python number: plain Python, no cond
        y = y * 2.0
    return y


def _piecewise_ref(x, scale):
    y = x * scale if x.sum() > 0 else -x if x.sum() < -1.0 else x * 0.0 + 1.0
    return y * 2.0 if scale > 1.5 else y


@pytest.mark.parametrize("x", [np.array([1.0, 2.0]), np.array([-1.0, -2.0]), np.array([0.25, -0.5])])
def test_if_elif_else_on_staged_and_python_values(x):
    check_staged(piecewise, x, 2.0, expected=_piecewise_ref(x, 2.0))
    ir = lantern.stage(piecewise).lower(x, 2.0).ir
    assert ir.count("= if ") == 2 or ir.count("if %") == 2 or len(re.findall(r"\bif\b", ir)) >= 2, ir
    plain = lantern.stage(piecewise).lower(x, 1.0).ir  # scale <= 1.5: the Python if leaves no trace
    assert len(re.findall(r"\bif\b", plain)) == len(re.findall(r"\bif\b", ir))


def loops(x, n):
    total = 0.0
    for i in range(n):                 # staged n: a fori_loop
        total = total + lantern.sum(x) * i
    steps = 0
    while total < 100.0:               # staged test: a while_loop
        total = total * 2.0 + 1.0
        steps = steps + 1
    for row in x:                      # a staged tensor: over its first axis
        total = total + row.max()
    for k in range(3):                 # a Python range: unrolled
        total = total + k
    return total, steps


def _loops_ref(x, n):
    total = sum(x.sum() * i for i in range(n))
    steps = 0
    while total < 100.0:
        total, steps = total * 2.0 + 1.0, steps + 1
    total += sum(row.max() for row in x) + 3
    return total, steps


@pytest.mark.parametrize("n", [0, 1, 4])
def test_loops_over_staged_ranges_tests_and_tensors(n):
    x = np.arange(6.0).reshape(3, 2) * 0.5
    total, steps = lantern.stage(loops)(x, np.int64(n))
    want_total, want_steps = _loops_ref(x, n)
    np.testing.assert_allclose(total, want_total, rtol=1e-12)
    assert int(steps) == want_steps and steps.dtype == np.int64
    ir = lantern.stage(loops).lower(x, np.int64(n)).ir
    assert "while" in ir and "loop" in ir


def nested(x, n):
    acc = x * 0.0
    for i in range(n):
        if lantern.sum(acc) < 5.0:
            y = acc
            while lantern.max(y) < 1.0:
                y = y + x
            acc = acc + y
        else:
            acc = acc * 0.5
    return acc


def test_nesting_a_while_in_an_if_in_a_for():
    x = np.array([0.3, 0.1])
    acc = np.zeros(2)
    for _ in range(5):
        if acc.sum() < 5.0:
            y = acc.copy()
            while y.max() < 1.0:
                y = y + x
            acc = acc + y
        else:
            acc = acc * 0.5
    check_staged(nested, x, np.int64(5), expected=acc)


def expressions(x, flag):
    a = x.sum() if x[0] > 0 else -x.sum()
    b = (x[0] > 0) and (x[1] > 0)
    c = (x[0] > 0) or not (x[1] > 0)
    d = 1.0 if flag else 2.0          # Python: no cond
    return a * d, b, c


@pytest.mark.parametrize("x", [np.array([1.0, 2.0]), np.array([-1.0, 2.0]), np.array([1.0, -2.0])])
def test_conditional_expressions_and_boolean_operators(x):
    a, b, c = lantern.stage(expressions)(x, True)
    np.testing.assert_allclose(a, x.sum() if x[0] > 0 else -x.sum())
    assert bool(b) == bool(x[0] > 0 and x[1] > 0) and bool(c) == bool(x[0] > 0 or not x[1] > 0)


def test_gradients_through_rewritten_control_flow():
    def loss(w, x):
        h = x
        for _ in range(np.int64(3)):  # (a NumPy int: a Python range, unrolled)
            h = lantern.tanh(h @ w)
        if lantern.sum(h) > 0:
            h = h * h
        else:
            h = -h
        k = 0
        while k < 2:
            h = h + 0.5 * h
            k = k + 1
        return lantern.sum(h)

    w = np.random.default_rng(0).standard_normal((3, 3)) * 0.5
    x = np.random.default_rng(1).standard_normal((2, 3))
    check_grads(loss, w, x)

    def staged_loops(w, x, n):
        h = x
        for _ in range(n):
            h = lantern.tanh(h @ w)
        while lantern.max(lantern.abs(h)) < 3.0:
            h = h * 1.5
        return lantern.sum(h * h)

    g = lantern.grad(staged_loops)(w, x, np.int64(2))

    def combinators(w, x, n):
        h = lantern.fori_loop(0, n, lambda i, h: lantern.tanh(h @ w), x)
        h = lantern.while_loop(lambda h: lantern.max(lantern.abs(h)) < 3.0, lambda h: h * 1.5, h)
        return lantern.sum(h * h)
    np.testing.assert_allclose(g, lantern.grad(combinators)(w, x, np.int64(2)), rtol=1e-12)
    check_grads(staged_loops, w, x, np.int64(2))


def tree_sum(left, right, vals, node):
    """Recursion over a tree written with a plain if."""
    if left[node] < 0:
        total = vals[node]
    else:
        total = vals[node] + tree_sum(left, right, vals, left[node]) + tree_sum(left, right, vals, right[node])
    return total


tree_sum = lantern.stage(tree_sum)


def test_recursion_with_a_plain_if():
    left, right = np.array([1, 3, -1, -1, -1]), np.array([2, 4, -1, -1, -1])
    vals = np.arange(5.0)
    assert float(tree_sum(left, right, vals, np.int64(0))) == 10.0
    g = lantern.grad(lambda v: tree_sum(left, right, v, np.int64(0)))(vals)
    np.testing.assert_array_equal(g, np.ones(5))


def test_a_variable_on_one_path_only_is_an_error_naming_it():
    def one_branch(x):
        if x.sum() > 0:
            y = x * 2
        return y  # noqa: F821 (defined on one path only)

    with pytest.raises(lantern.TraceError, match=r"variable 'y' is assigned in only one branch of the staged if at "
                                                 r"line \d+ .*test_python_control_flow\.py"):
        lantern.stage(one_branch)(np.ones(2))

    def carried_undefined(x, n):
        for i in range(n):
            s = x if i == 0 else s + x  # noqa: F821
        return s

    with pytest.raises(lantern.TraceError, match=r"variable 's' is carried by the staged for loop .* has no value "
                                                 "before it"):
        lantern.stage(carried_undefined)(np.ones(2), np.int64(3))

    def changes_dtype(x):
        k = np.int32(0)
        while k < x.sum():
            k = k + 1.5
        return k

    with pytest.raises(lantern.DTypeError, match=r"the variable 'k' carried by the staged while loop at line \d+ "
                                                 r"changes from i32\[\] to f64\[\]"):
        lantern.stage(changes_dtype)(np.ones(2))


def test_the_rewrite_can_be_turned_off_and_shown():
    def f(x):
        if x.sum() > 0:
            x = x * 2
        return x

    assert float(lantern.stage(f)(np.ones(2)).sum()) == 4.0
    with pytest.raises(lantern.ConcretizationError):
        lantern.stage(f, python_control_flow=False)(np.ones(2))
    source = lantern.stage(f).lower(np.ones(2)).converted_source
    assert "__lantern_cf__.if_stmt(__lantern_cf__.call(x.sum) > 0" in source
    assert lantern.stage(lambda x: x + 1).lower(np.ones(2)).converted_source is None


def early_exits(x, n):
    total = x[0] * 0.0
    for i in range(n):
        if total > 5.0:
            break
        if x[i % 3] < 0:
            continue
        total = total + x[i % 3] * x[i % 3]
    k = 0
    while True:
        k = k + 1
        if k * total > 20.0:
            break
    return total * k


def _early_exits_ref(x, n):
    total = 0.0
    for i in range(n):
        if total > 5.0:
            break
        if x[i % 3] < 0:
            continue
        total = total + x[i % 3] ** 2
    k = 0
    while True:
        k += 1
        if k * total > 20.0:
            break
    return total * k


@pytest.mark.parametrize("n", [1, 3, 10])
def test_break_and_continue_on_staged_and_python_values(n):
    x = np.array([1.5, -1.0, 2.0])
    want = _early_exits_ref(x, n)
    np.testing.assert_allclose(lantern.stage(early_exits)(x, np.int64(n)), want, rtol=1e-12)  # staged range
    np.testing.assert_allclose(lantern.stage(early_exits)(x, n), want, rtol=1e-12)            # Python range
    check_grads(early_exits, x, np.int64(n))


def signed(x):
    if x.sum() > 0:
        return x * 2.0
    y = x - 1.0
    if y[0] > -1.5:
        return y
    return -y


def leaf_or_branches(left, right, vals, node):
    if left[node] < 0:
        return vals[node]
    return vals[node] + leaf_or_branches(left, right, vals, left[node]) \
        + leaf_or_branches(left, right, vals, right[node])


leaf_or_branches = lantern.stage(leaf_or_branches)


def test_early_returns_become_one_cond():
    for x in (np.array([1.0, 2.0]), np.array([-0.2, -1.0]), np.array([-3.0, 1.0])):
        want = x * 2 if x.sum() > 0 else (x - 1 if x[0] - 1 > -1.5 else 1 - x)
        check_staged(signed, x, expected=want)
        check_grads(lambda x: lantern.sum(lantern.stage(signed)(x) * np.array([1.0, -0.5])), x)
    left, right = np.array([1, 3, -1, -1, -1]), np.array([2, 4, -1, -1, -1])
    assert float(leaf_or_branches(left, right, np.arange(5.0), np.int64(0))) == 10.0  # "recursion reads naturally"
    np.testing.assert_array_equal(lantern.grad(lambda v: leaf_or_branches(left, right, v, np.int64(0)))(np.arange(5.0)),
                                  np.ones(5))

    def mismatched(x):
        if x.sum() > 0:
            return x
        return x.sum()

    with pytest.raises(lantern.ShapeError, match="cond"):
        lantern.stage(mismatched)(np.ones(2))


def test_a_return_inside_a_loop_on_a_staged_condition():
    def first_positive(x):
        for i in range(3):
            if x[i] > 0:
                return x[i]
        return x[0] * 0.0

    assert lantern.stage(first_positive)(np.array([-1.0, 2.0, 3.0])) == 2.0
    assert lantern.stage(first_positive)(np.array([-1.0, -2.0, -3.0])) == 0.0


def test_a_function_without_source_warns_once():
    namespace = {"lantern": lantern}
    exec("def nosource(x):\n    if x.sum() > 0:\n        x = x * 2\n    return x\n", namespace)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        staged = lantern.stage(namespace["nosource"])
        lantern.stage(namespace["nosource"])
    assert [w.category.__name__ for w in caught] == ["SourceUnavailableWarning"]
    assert "nosource" in str(caught[0].message)
    with pytest.raises(lantern.ConcretizationError):
        staged(np.ones(2))


def _clip_helper(v, limit):
    """A plain function of the user's, called from staged code: rewritten too."""
    if v.max() > limit:
        v = v * (limit / v.max())
    return v


class _Scaler:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, v):
        while v.sum() < 10.0:
            v = v * self.factor
        return v


def test_functions_the_staged_function_calls_are_rewritten_too():
    def model(x):
        scalers = [_Scaler(f) for f in (2.0, 3.0)]
        makers = [lambda v, k=k: v + k for k in (1.0, 2.0)]
        y = _clip_helper(x, 4.0)
        for s in scalers:
            y = s.apply(y)
        return makers[1](y)

    def ref(x):
        y = x * (4.0 / x.max()) if x.max() > 4.0 else x
        for f in (2.0, 3.0):
            while y.sum() < 10.0:
                y = y * f
        return y + 2.0

    for x in (np.array([1.0, 8.0]), np.array([0.5, 1.0])):
        np.testing.assert_allclose(lantern.stage(model)(x), ref(x), rtol=1e-12)


def _rnn_plain(h, xs, w, n):
    for i in range(n):
        h = lantern.tanh(h @ w + xs[i])
    if lantern.sum(h) > 0:
        h = h * 2.0
    else:
        h = -h
    return lantern.sum(h)


def _rnn_combinators(h, xs, w, n):
    h = lantern.fori_loop(0, n, lambda i, h: lantern.tanh(h @ w + xs[i]), h)
    h = lantern.cond(lantern.sum(h) > 0, lambda h: h * 2.0, lambda h: -h, h)
    return lantern.sum(h)


def _shape_of_ir(ir: str) -> str:
    """The IR with every variable and function renamed in order of appearance, and the locations dropped."""
    names: dict[str, str] = {}
    ir = re.sub(r"%[A-Za-z_]\w*", lambda m: names.setdefault(m.group(0), f"%v{len(names)}"), ir)
    return re.sub(r"@\w+", "@f", re.sub(r"#.*", "", ir))


def test_plain_python_and_combinators_compile_to_the_same_ir():
    """So the C and its speed are the same (benchmarks/plain_python_control_flow.py measures it too)."""
    args = (np.zeros(3), np.ones((5, 3)), np.eye(3) * 0.5, np.int64(5))
    for wrap in (lantern.stage, lambda f: lantern.stage(lantern.value_and_grad(f, argnums=2))):
        plain, combinators = (_shape_of_ir(wrap(f).lower(*args).optimized_ir) for f in (_rnn_plain, _rnn_combinators))
        assert plain == combinators


class _Clipper:
    def __init__(self, limit):
        self.limit = limit

    def step(self, x):
        if x.sum() > self.limit:  # staged: a cond, in a method staged bound (stage(obj.step))
            return x * 0.5
        return x


def test_a_bound_method_staged_directly_is_rewritten():
    clip = lantern.stage(_Clipper(1.0).step)
    np.testing.assert_allclose(clip(np.array([1.0, 2.0])), [0.5, 1.0])
    np.testing.assert_allclose(clip(np.array([0.25, 0.5])), [0.25, 0.5])
    assert "__lantern_cf__.if_return(" in clip.lower(np.ones(2)).converted_source


# ------------------------------------------------------------------ return inside loops

def _first_above(xs, limit):
    for i in range(len(xs)):
        if xs[i] > limit:
            return xs[i] * xs[i]     # a return inside a staged loop (a run-time length: dynamic=)
    return xs.sum() * 0.0 - 1.0


def _first_above_ref(xs, limit):
    for v in xs:
        if v > limit:
            return v * v
    return -1.0


@pytest.mark.parametrize("xs", [np.array([0.1, 0.5, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]),
                                np.array([1.5, 0.2, 0.3, 0.4, 0.5])])
def test_return_inside_a_staged_for_loop(xs):
    f = lantern.stage(_first_above, dynamic={"xs": 0})
    check_staged(f, xs, np.float64(1.0), expected=_first_above_ref(xs, 1.0))
    assert re.search(r"= (for|while) ", f.lower(xs, np.float64(1.0)).ir)  # a staged loop, one for every length
    check_grads(_first_above, xs, np.float64(1.0))  # staged per shape: the Python range unrolls, same answer


def _grow(x, limit):
    n = 0
    while n < 10:
        x = x * 1.5
        if x.sum() > limit:
            return x, n              # a tuple from inside a staged while
        n = n + 1
    return x * 0.0, n


def _grown_sum(start, limit):
    return _grow(start, limit)[0].sum()


@pytest.mark.parametrize("start", [np.array([1.0, 2.0]), np.array([0.001, 0.0]), np.array([30.0, 1.0])])
def test_return_of_a_tuple_inside_a_staged_while(start):
    x, n, limit = start.copy(), 0, 20.0
    while n < 10:  # the reference, in NumPy
        x = x * 1.5
        if x.sum() > limit:
            break
        n += 1
    else:
        x = x * 0.0
    check_staged(_grow, start, np.float64(limit), expected=(x, n))
    check_grads(_grown_sum, start, np.float64(limit))


def _nested_search(grid, target):
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if grid[i, j] > target:
                return grid[i, j] * 10.0 + i  # returns from the inner loop leave both
    return grid[0, 0] * 0.0


def test_return_from_an_inner_staged_loop_leaves_both():
    f = lantern.stage(_nested_search, dynamic=True)
    for grid, want in ((np.array([[0.1, 0.2], [0.3, 5.0]]), 51.0), (np.array([[0.1, 0.2, 0.3]] * 3), 0.0),
                       (np.array([[0.1, 7.0, 9.0], [8.0, 0.2, 0.3], [0.0, 0.0, 0.0]]), 70.0)):
        assert f(grid, np.float64(1.0)) == pytest.approx(want)
    assert f.cache_info().compiles == 1


def test_a_return_inside_a_loop_in_python_is_python():
    def pick(xs, k):
        for i in range(k):          # a Python range: unrolled, the returns are Python
            if i == 2:
                return xs * i
        return xs
    np.testing.assert_allclose(lantern.stage(pick)(np.ones(2), 5), 2 * np.ones(2))
    np.testing.assert_allclose(lantern.stage(pick)(np.ones(2), 1), np.ones(2))


def test_appending_to_a_python_list_in_a_staged_loop_is_an_error_naming_the_line():
    def collect(xs, n):
        outs = []
        for t in range(n):         # staged: n is a staged int
            outs.append(xs[t] * 2.0)  # LINE:append
        return outs[0]
    line = _line_of("# LINE:append")
    with pytest.raises(lantern.TraceError, match=rf"appends to the Python list 'outs' \(line {line}\).*Carry an array "
                                                 rf"instead.*\(at test_python_control_flow\.py:{line}\)"):
        lantern.stage(collect)(np.array([1.0, 2.0, 3.0]), np.int64(2))
    # over a Python range the loop unrolls and the list is Python's
    assert lantern.stage(collect)(np.array([1.0, 2.0, 3.0]), 2) == 2.0


def _line_of(marker):
    with open(__file__) as source:
        return next(i for i, text in enumerate(source, 1) if marker in text and "_line_of" not in text)


def test_where_the_rewrite_does_not_reach_the_error_is_a_trace_error_with_advice():
    f = lantern.stage(lambda x: x * 2.0 if x.sum() > 0 else x)  # a lambda is not rewritten
    with pytest.raises(lantern.TraceError, match=r"lantern\.cond\(pred, true_fn, false_fn, \*operands\)"):
        f(np.ones(2))
    assert issubclass(lantern.ConcretizationError, lantern.TraceError)


def test_loop_exits_review_cases():
    """A break in an inner loop's else is the outer loop's (and keeps Python's meaning); a while True left only
    by a return returns after it; the test of a staged while is not evaluated after a return (it would index
    past the end); a returned tuple variable is a clear error."""
    def hits(rows, k):
        n = 0
        for r in rows:
            for v in r:
                if v == k:
                    break
            else:
                continue
            n += 1
        return n
    assert lantern.stage(hits)([[1, 2], [3, 4], [5, 2]], 2) == 2  # (staging it converts it: that raised SyntaxError)

    def first_negative(xs):
        i = 0
        while True:
            if xs[i] < 0:
                return i
            i = i + 1
    assert lantern.stage(first_negative)(np.array([1.0, 2.0, -3.0])) == 2

    def count_to_end(xs):
        i = 0
        while xs[i] > 0:
            i = i + 1
            if i == xs.shape[0]:
                return i * 10
        return i
    assert lantern.stage(count_to_end)(np.array([1.0, 2.0, 3.0])) == 30
    assert lantern.stage(count_to_end)(np.array([1.0, -2.0, 3.0])) == 1

    def pair_from_loop(x, n):
        st = (x, 2 * x)
        for i in range(n):
            if x[i] > 1:
                return st
        return x, x
    with pytest.raises(lantern.ShapeError, match=r"written as a tuple \(return a, b\)"):
        lantern.stage(pair_from_loop)(np.array([0.5, 2.0]), np.int64(2))


def _weighted_pairs(xs, ys, w):
    total = xs[0] * 0.0
    for i, x in enumerate(xs):       # a staged loop over (index, row)
        total = total + lantern.tanh(x * w) * i
    for a, b in zip(xs, ys):         # and over pairs of rows
        total = total + a * b * w
    return total.sum()


def _pairs_outside_a_for_header(xs, ys):
    pairs = list(zip(xs, ys))                        # Python's zip: the rows, unrolled
    total = xs[0] * 0.0
    for i, (a, b) in enumerate(zip(xs, ys)):         # Python's enumerate around a zip of tensors
        total = total + a * b * i
    return total.sum() + len(pairs) + dict(enumerate(xs))[1].sum()


def test_enumerate_and_zip_of_staged_tensors_outside_a_for_header_are_python_s():
    xs, ys = np.array([[1.0, 0.5], [2.0, -1.0], [0.3, 0.2]]), np.array([[4.0, 1.0], [5.0, 2.0], [6.0, 3.0]])
    want = sum((x * y * i).sum() for i, (x, y) in enumerate(zip(xs, ys))) + 3 + xs[1].sum()
    check_staged(_pairs_outside_a_for_header, xs, ys, expected=want)


def test_for_over_enumerate_and_zip_of_staged_tensors():
    xs, ys = np.array([[1.0, 0.5], [2.0, -1.0], [0.3, 0.2]]), np.array([[4.0, 1.0], [5.0, 2.0], [6.0, 3.0]])
    want = sum(np.tanh(x * 0.7) * i for i, x in enumerate(xs)).sum() + (xs * ys * 0.7).sum()
    check_staged(_weighted_pairs, xs, ys, np.float64(0.7), expected=want)
    ir = lantern.stage(_weighted_pairs).lower(xs, ys, np.float64(0.7)).ir
    assert ir.count("tanh(") == 1  # one staged loop body, not three unrolled copies
    check_grads(_weighted_pairs, xs, ys, np.float64(0.7), argnums=(0, 2))
    f = lantern.stage(_weighted_pairs, dynamic={"xs": 0, "ys": 0})  # and with a run-time length
    for n in (3, 5):
        a, b = np.ones((n, 2)), np.ones((n, 2))
        assert f(a, b, np.float64(0.5)) == pytest.approx(sum(np.tanh(0.5) * i for i in range(n)) * 2 + n)
