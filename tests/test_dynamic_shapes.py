"""Run-time sizes (issue 12): symbolic dimensions, guards, one compile for every size, gradients."""
import numpy as np
import pytest

import lantern
from lantern.ir.interpret import interpret
from lantern.ir.symbolic import ShapeEnv, Size, SymbolicSizeError, shape_env

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def quick_compiles(monkeypatch):
    monkeypatch.setenv("CFLAGS", "-O0")


# ------------------------------------------------------------------ sizes and guards

def test_size_arithmetic_is_polynomial_and_prints_as_c():
    n, m = Size.var("n"), Size.var("m")
    assert n * 150 == 150 * n and (n * 150).pretty() == "150 * n" and str(n * 150) == "(150 * n)"
    assert str(n) == "n" and (n + 1 - n) == 1 and isinstance(n - n, int)
    assert (n * m * 3).exact_div(n) == 3 * m and (n * 150).exact_div(150) == n
    assert (n + 1).exact_div(2) is None
    assert (2 * n - 1).pretty() == "2 * n - 1" and (n * n).pretty() == "n * n"
    assert (n + 1) ** 2 == n * n + 2 * n + 1 and n ** 0 == 1
    assert (n * 4 + m).evaluate({"n": 3, "m": 5}) == 17
    assert n * 2 == Size.var("n") * 2
    with pytest.raises(TypeError, match="cannot be hashed"):  # n in {3, 4} would answer without a guard
        hash(n)
    assert n != m and n != 1  # outside a trace: compared as expressions


def test_a_size_in_a_set_is_per_shape_code_never_a_wrong_answer():
    @lantern.stage
    def f(x):
        if x.shape[0] in {3, 4}:  # a set: a run-time size cannot be hashed, so this stays per shape
            return x * 2.0
        return x * 3.0
    for n in (5, 3, 4, 6):
        np.testing.assert_allclose(f(np.ones(n)), np.ones(n) * (2.0 if n in (3, 4) else 3.0))
    assert "cannot be hashed" in f.cache_info().events[1].reason


def test_decisions_outside_a_trace_raise_and_inside_record_guards():
    n = Size.var("n")
    with pytest.raises(SymbolicSizeError, match="known only at run time"):
        bool(n > 3)
    with pytest.raises(SymbolicSizeError):
        int(n)
    env = ShapeEnv({"n": 7})
    with shape_env(env):
        assert n > 3 and not n == 1 and n // 7 == 1 and int(n * 2) == 14
    relations = {str(g) for g in env.guards}
    assert {"n - 3 > 0", "n - 1 != 0", "n - 7 == 0", "2 * n - 14 == 0"} <= relations
    assert env.specialized == {"n": 7}


def test_pattern_binds_sizes_shares_equal_sizes_and_checks_guards():
    from lantern.dynamic_shapes import make_pattern
    keys = [("array", (5, 3), "float32"), ("array", (5,), "int64"), ("static", "float", 0.5)]
    pattern = make_pattern(keys, ["x", "y", "lr"], {(0, 0), (1, 0)}, lambda p: p)
    assert pattern.keys[0] == ("array", ("n_x", 3), "float32") and pattern.keys[1][1] == ("n_x",)
    assert pattern.bind([("array", (9, 3), "float32"), ("array", (9,), "int64"), ("static", "float", 0.5)]) \
        == {"n_x": 9}
    assert pattern.bind([("array", (9, 3), "float32"), ("array", (8,), "int64"), ("static", "float", 0.5)]) is None
    assert pattern.bind([("array", (9, 4), "float32"), ("array", (9,), "int64"), ("static", "float", 0.5)]) is None
    # sizes 0 and 1 stay constants (broadcasting and empty arrays behave differently there)
    assert make_pattern([("array", (1, 3), "float32")], ["x"], {(0, 0)}, str).variables == ()


# ------------------------------------------------------------------ one compile for every size

def _mlp(W, b, x):
    return lantern.sum(lantern.tanh(x @ W + b), axis=1)


def test_automatic_run_time_size_after_a_second_size():
    f = lantern.stage(_mlp)
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    for n in (5, 7, 9, 40, 2):
        x = rng.standard_normal((n, 3))
        np.testing.assert_allclose(f(W, b, x), np.tanh(x @ W + b).sum(1), rtol=1e-12)
    info = f.cache_info()
    assert info.compiles == 2
    assert info.signatures[1] == "W: float64[3,4], b: float64[4], x: float64[n_x,3]"
    exe = f.lower(W, b, np.ones((11, 3)))
    assert exe.pattern is not None and "f64[n_x,4]" in exe.ir and "x.shape[0]" in exe.c_source
    assert "lt_size[0]" in exe.c_source


def test_declared_and_disabled_dynamic_axes():
    f = lantern.stage(_mlp, dynamic={"x": 0})
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(4)
    for n in (5, 6, 8):
        f(W, b, rng.standard_normal((n, 3)))
    assert f.cache_info().compiles == 1
    g = lantern.stage(_mlp, dynamic=False)
    for n in (5, 6, 8):
        g(W, b, rng.standard_normal((n, 3)))
    assert g.cache_info().compiles == 3
    h = lantern.stage(lambda x: x.sum(axis=0), dynamic=True)
    for shape in ((3, 4), (5, 6), (7, 2)):
        h(np.ones(shape))
    assert h.cache_info().compiles == 1 and h.cache_info().signatures[0] == "x: float64[n_x,n1_x]"
    with pytest.raises(lantern.ArgumentError, match="not parameters"):
        lantern.stage(_mlp, dynamic={"z": 0})(W, b, np.ones((2, 3)))
    with pytest.raises(lantern.ArgumentError, match="dynamic must be"):
        lantern.stage(_mlp, dynamic="yes")


def test_sizes_zero_and_one_are_served_correctly():
    f = lantern.stage(lambda x, y: (x * 2.0).sum() + y.mean(), dynamic=True)
    for n in (5, 1, 0, 6):
        x, y = np.arange(n, dtype=np.float64), np.ones(4)
        assert f(x, y) == pytest.approx(2 * x.sum() + 1.0)


def test_a_call_that_breaks_a_guard_compiles_again_and_stays_right():
    @lantern.stage(dynamic=True)
    def f(x):
        if x.shape[0] > 4:  # a decision on the size: guarded
            return x.sum()
        return -x.sum()
    assert f(np.ones(6)) == 6.0 and f(np.ones(9)) == 9.0
    assert f.cache_info().compiles == 1
    assert f(np.ones(3)) == -3.0 and f(np.ones(2)) == -2.0
    assert f.cache_info().compiles == 2


def test_different_sizes_of_one_variable_compile_separately_and_mismatches_are_shape_errors():
    f = lantern.stage(lambda x, y: x + y)
    f(np.ones(3), np.ones(3))
    np.testing.assert_allclose(f(np.ones(5), np.ones(5)), 2 * np.ones(5))  # x and y share n_x
    assert f.cache_info().signatures[1] == "x: float64[n_x], y: float64[n_x]"
    with pytest.raises(lantern.ShapeError, match=r"cannot be broadcast together; operands from arguments x and y "
                                                 r"\(at test_dynamic_shapes\.py:\d+"):
        f(np.ones(5), np.ones(6))  # (x and y share n_x: a call where they differ is traced again, and raises)


def test_a_users_shape_error_does_not_turn_run_time_sizes_off():
    f = lantern.stage(lambda x, w: x @ w)
    w = np.ones((3, 2))
    f(np.ones((4, 3)), w)
    with pytest.raises(lantern.ShapeError, match="inner dimensions"):
        f(np.ones((5, 4)), w)  # a new size and a wrong one: the error the per-shape trace gives
    for n in (6, 7, 8):
        np.testing.assert_allclose(f(np.ones((n, 3)), w), 3 * np.ones((n, 2)))
    assert f.cache_info().compiles == 2 and f.cache_info().signatures[1] == "x: float64[n_x,3], w: float64[3,2]"


def test_an_executable_with_sizes_rejects_arrays_that_do_not_fit():
    f = lantern.stage(lambda x, y: x * y.sum(), dynamic=True)
    exe = f.lower(np.ones(4), np.ones(4))
    np.testing.assert_allclose(exe(np.ones(6), np.ones(6)), 6 * np.ones(6))
    with pytest.raises(lantern.ArgumentError, match=r"argument y: axis 0 has size 5, but this code has one size"):
        exe(np.ones(6), np.ones(5))
    with pytest.raises(lantern.ArgumentError, match=r"argument x: expected shape \(n_x,\), got \(6, 2\)"):
        exe(np.ones((6, 2)), np.ones(6))


def test_shape_arithmetic_slices_reshape_and_sizes_as_values():
    @lantern.stage(dynamic={"x": 0})
    def f(x):
        n = x.shape[0]
        flat = x.reshape(-1)               # f64[3 * n]
        first = flat[: n]                  # a slice with a run-time bound
        tail = x[1:]                       # [n - 1, 3]
        back = x.reshape(n, 3)[-1]
        rows = lantern.arange(3) * n       # a size in arithmetic with a tensor
        return first.sum() + tail.sum() + back.sum() + rows.sum() + len(x) + x.mean()
    for n in (4, 7, 10):
        x = rng.standard_normal((n, 3))
        want = x.reshape(-1)[:n].sum() + x[1:].sum() + x[-1].sum() + 3 * n + n + x.mean()
        assert f(x) == pytest.approx(want)
    assert f.cache_info().compiles == 1


def test_interpreter_and_printer_know_run_time_sizes():
    f = lantern.stage(lambda x, w: lantern.tanh(x @ w).sum(axis=0), dynamic={"x": 0})
    x, w = rng.standard_normal((6, 3)), rng.standard_normal((3, 2))
    exe = f.lower(x, w)
    assert "f64[n_x,3]" in exe.ir
    for n in (3, 8):
        x = rng.standard_normal((n, 3))
        (ref,) = interpret(exe.traced_module, [x, w])
        np.testing.assert_allclose(exe(x, w), ref, rtol=1e-12)
        np.testing.assert_allclose(exe.interpret(x, w, optimized=True), ref, rtol=1e-12)


# ------------------------------------------------------------------ gradients and control flow

def _fd(fn, arg, eps=1e-6):
    """Central finite difference of ``fn`` along a random direction of ``arg``."""
    u = rng.standard_normal(arg.shape)
    return (fn(arg + eps * u) - fn(arg - eps * u)) / (2 * eps), u


def _rnn_loss(W, U, xs, ys):
    h = lantern.zeros(W.shape[1], dtype=W.dtype)
    loss = 0.0
    for t in range(len(xs)):           # a staged loop whose trip count is a run-time size
        h = lantern.tanh(W[xs[t]] + h @ U)
        loss = loss - lantern.log_softmax(h)[ys[t]]
    return loss / len(xs)


@pytest.mark.filterwarnings("ignore::lantern.UnrolledLoopWarning")  # (the per-shape oracle unrolls)
def test_rnn_over_sequences_of_any_length_compiles_twice_with_right_gradients():
    W, U = rng.standard_normal((6, 4)) * 0.5, rng.standard_normal((4, 4)) * 0.5
    grad = lantern.stage(lantern.value_and_grad(_rnn_loss, argnums=(0, 1)))
    per_shape = lantern.stage(lantern.value_and_grad(_rnn_loss, argnums=(0, 1)), dynamic=False)
    for T in (5, 9, 17, 33, 6):
        xs, ys = rng.integers(0, 6, T), rng.integers(0, 4, T)
        value, (gW, gU) = grad(W, U, xs, ys)
        want_value, (want_W, want_U) = per_shape(W, U, xs, ys)
        assert value == pytest.approx(want_value, rel=1e-12)
        np.testing.assert_allclose(gU, want_U, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gW, want_W, rtol=1e-10, atol=1e-12)
        if T == 9:
            run = lantern.stage(_rnn_loss, dynamic=False)
            fd, u = _fd(lambda U2: run(W, U2, xs, ys), U)
            assert fd == pytest.approx(np.sum(gU * u), rel=1e-6, abs=1e-9)
    assert grad.cache_info().compiles == 2
    assert "xs: int64[n_xs], ys: int64[n_xs]" in grad.cache_info().signatures[1]


def _lstm_loss(p, xs, ys):
    H = p["U"].shape[0]

    def step(t, carry):
        h, c, total = carry
        g = p["W"][xs[t]] + h @ p["U"]
        c = lantern.sigmoid(g[H:2 * H]) * c + lantern.sigmoid(g[:H]) * lantern.tanh(g[3 * H:])
        h = lantern.sigmoid(g[2 * H:3 * H]) * lantern.tanh(c)
        return h, c, total - lantern.log_softmax(h @ p["V"])[ys[t]]
    zeros = lantern.zeros(H, dtype=p["U"].dtype)
    return lantern.fori_loop(0, len(xs), step, (zeros, zeros, lantern.zeros((), p["U"].dtype)))[2]


def test_lstm_over_random_lengths_5_to_80_compiles_twice_with_right_gradients():
    H, V = 6, 7
    p = {"W": rng.standard_normal((V, 4 * H)) * 0.4, "U": rng.standard_normal((H, 4 * H)) * 0.4,
         "V": rng.standard_normal((H, V)) * 0.4}
    grad = lantern.stage(lantern.value_and_grad(_lstm_loss))
    lengths = [5, 80, *rng.integers(5, 81, 6).tolist()]
    for k, T in enumerate(lengths):
        xs, ys = rng.integers(0, V, T), rng.integers(0, V, T)
        value, g = grad(p, xs, ys)
        if k < 3:  # against the per-shape code and finite differences
            want_value, want = lantern.stage(lantern.value_and_grad(_lstm_loss), dynamic=False)(p, xs, ys)
            assert value == pytest.approx(float(want_value), rel=1e-12)
            for name in p:
                np.testing.assert_allclose(g[name], want[name], rtol=1e-9, atol=1e-12)
            run = lantern.stage(_lstm_loss, dynamic=False)
            fd, u = _fd(lambda U: run({**p, "U": U}, xs, ys), p["U"])
            assert fd == pytest.approx(np.sum(g["U"] * u), rel=1e-6, abs=1e-8)
    assert grad.cache_info().compiles == 2


def _tree_sum(w, left, right, x, node):
    if left[node] < 0:
        return lantern.tanh(x[node] * w)
    return lantern.tanh(_tree(w, left, right, x, left[node]) + _tree(w, left, right, x, right[node]) * w)


_tree = lantern.stage(_tree_sum)


def _balanced(n_leaves):
    left, right = [], []

    def build(lo, hi):
        k = len(left)
        left.append(-1), right.append(-1)
        if hi - lo > 1:
            mid = (lo + hi + 1) // 2
            left[k] = build(lo, mid)
            right[k] = build(mid, hi)
        return k
    build(0, n_leaves)
    return np.array(left), np.array(right)


def test_recursion_over_trees_of_any_size_with_gradients():
    loss = lantern.stage(lantern.value_and_grad(lambda w, left, right, x: _tree(w, left, right, x,
                                                                                   lantern.asarray(np.int64(0)))))
    w = np.float64(0.7)
    for leaves in (3, 5, 8, 13):
        left, right = _balanced(leaves)
        x = rng.standard_normal(len(left))
        value, g = loss(w, left, right, x)
        run = lantern.stage(lambda w, left, right, x: _tree(w, left, right, x, lantern.asarray(np.int64(0))),
                            dynamic=False)
        assert value == pytest.approx(float(run(w, left, right, x)), rel=1e-12)
        eps = 1e-6
        fd = (run(w + eps, left, right, x) - run(w - eps, left, right, x)) / (2 * eps)
        assert g == pytest.approx(float(fd), rel=1e-6)
    assert loss.cache_info().compiles == 2


def test_cond_and_while_loop_with_run_time_sizes():
    @lantern.stage(dynamic={"x": 0})
    def f(x, k):
        y = lantern.cond(x.sum() > 0, lambda v: v * k, lambda v: v - k, x)
        total = lantern.while_loop(lambda s: s[1] < x.shape[0], lambda s: (s[0] + y[s[1]], s[1] + 1),
                                   (0.0 * k, lantern.asarray(np.int64(0))))[0]
        return total * 2.0
    for n in (4, 9, 15):
        x = rng.standard_normal(n)
        k = 1.5
        want = 2.0 * ((x * k).sum() if x.sum() > 0 else (x - k).sum())
        assert float(f(x, np.float64(k))) == pytest.approx(want)
        g = lantern.stage(lantern.grad(f.python_fn, argnums=1), dynamic={"x": 0})(x, np.float64(k))
        eps = 1e-6
        fd = (f(x, np.float64(k + eps)) - f(x, np.float64(k - eps))) / (2 * eps)
        assert float(g) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    assert f.cache_info().compiles == 1


_OPS_WITH_SIZES = {
    "var and std": lambda x: lantern.var(x, axis=0).sum() + lantern.std(x, ddof=1),
    "tril and triu": lambda x: lantern.tril(x[:, :3] @ x[:, :3].T).sum() + lantern.triu(x @ x.T, 1).sum(),
    "roll and flip": lambda x: lantern.roll(x, 2, axis=0)[0].sum() + lantern.flip(x, 0)[0].sum(),
    "linspace": lambda x: (lantern.linspace(0, 1, x.shape[0]) @ x).sum(),
    "pad, tile, repeat": lambda x: lantern.pad(x, ((1, 2), (0, 0))).sum() + lantern.tile(x, (2, 1))[-1].sum()
    + lantern.repeat(x, 2, axis=0)[3].sum(),
    "sort, topk, argsort": lambda x: lantern.sort(x, axis=0)[0].sum() + lantern.topk(x[:, 0], 2)[0].sum()
    + lantern.argsort(x[:, 1])[0],
    "cumsum, softmax, logsumexp": lambda x: lantern.cumsum(x, axis=0)[-1].sum() + lantern.softmax(x, axis=0)[1].sum()
    + lantern.logsumexp(x, axis=0).sum(),
    "einsum, stack, concatenate": lambda x: lantern.einsum("ij,ik->jk", x, x).sum()
    + lantern.stack([x, x])[1, -1].sum() + lantern.concatenate([x, x], axis=0)[-1].sum(),
    "reductions and indexing": lambda x: lantern.max(x, axis=0).sum() + lantern.argmax(x[:, 0]) + x[-2:].sum()
    + lantern.norm(x, axis=0).sum() + lantern.any(x > 0, axis=0).sum(),
    "creation": lambda x: lantern.zeros_like(x).sum() + lantern.ones((x.shape[0], 2)).sum()
    + lantern.random_uniform(0, x.shape).sum() + lantern.nonzero(x[:, 0] > 0, size=3)[0].sum(),
}


@pytest.mark.parametrize("name", sorted(_OPS_WITH_SIZES))
def test_ops_with_a_run_time_size_match_per_shape_code(name):
    fn = _OPS_WITH_SIZES[name]
    f = lantern.stage(fn, dynamic=True)
    per_shape = lantern.stage(fn, dynamic=False)
    for n in (6, 9, 13):
        x = rng.standard_normal((n, 4))
        np.testing.assert_allclose(f(x), per_shape(x), rtol=1e-12, atol=1e-12)
    assert f.cache_info().compiles == 1 and f.lower(x).pattern is not None


def test_a_size_needed_as_a_number_stays_a_constant_and_other_axes_keep_theirs():
    @lantern.stage
    def g(x, y):
        return (x[::2] * 2).sum() + y.sum()  # a step of 2 needs x's length as a number
    for n in (6, 8, 10):
        assert g(np.ones(n), np.ones(n)) == pytest.approx(len(range(0, n, 2)) * 2 + n)
    events = g.cache_info().events
    assert events[1].signature == "x: float64[8], y: float64[n_y]"
    assert "x axis 0 is needed as a number at test_dynamic_shapes.py:" in events[1].reason
    assert events[2].signature == "x: float64[10], y: float64[n_y]"


def test_a_program_that_cannot_run_with_sizes_falls_back_to_per_shape_and_says_why():
    @lantern.stage
    def f(x):
        return lantern.asarray(np.arange(int(x.shape[0]) * 2.0)).sum() + x.sum()  # needs the size as a number
    for n in (3, 4, 5):
        assert f(np.ones(n)) == pytest.approx(np.arange(2.0 * n).sum() + n)
    events = f.cache_info().events
    assert len(events) == 3  # the code with n as a constant serves only that n
    assert "run-time sizes" in events[1].reason


def test_code_generation_never_drops_a_loop_a_run_time_size_may_need():
    """Review: an extent that is 1 in the call compiled (n - 1 at n = 2) must keep its loop."""
    @lantern.stage
    def tail_rows(x, i):
        return lantern.take(x, i[1:], axis=0)
    x = np.arange(18.0).reshape(6, 3)
    for idx in (np.array([0, 5, 4]), np.array([1, 2]), np.array([0, 5, 4, 3])):
        np.testing.assert_array_equal(tail_rows(x, idx), x[idx[1:]])

    @lantern.stage
    def running(x):
        return lantern.cumsum(x[:, 1:], axis=0)
    for w in (3, 2, 5):
        x = np.arange(4.0 * w).reshape(4, w)
        np.testing.assert_array_equal(running(x), np.cumsum(x[:, 1:], axis=0))
    assert running.cache_info().signatures[-1] == "x: float64[4,n1_x]"


def test_an_equality_the_trace_guarded_holds_in_code_generation():
    """Review: after the trace, sizes it guarded equal (n_y == 4 n_x) compare equal, so the module verifies."""
    f = lantern.stage(lambda x, y: x.reshape(-1) + y, dynamic=True)
    for n in (3, 5):
        x, y = np.ones((n, 4)), np.arange(4.0 * n)
        np.testing.assert_array_equal(f(x, y), 1 + y)
    assert f._no_sizes_because is None and f.lower(np.ones((7, 4)), np.ones(28)).pattern is not None
