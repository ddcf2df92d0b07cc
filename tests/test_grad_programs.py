"""Gradients of whole programs with control flow (cond, fori_loop), and RNN/LSTM losses.

Each gradient is checked against an exact reference where one is easy to write (hand-
derived formulas, a NumPy backpropagation through time for the RNN and the LSTM), and
otherwise with ``check_grads`` (native vs interpreter vs central finite differences).
Everything is float64. Shapes are reused so the number of distinct kernels stays small.
"""
import re

import numpy as np
import pytest

import lantern
from lantern.testing import assert_trees_close, check_grads

RTOL, ATOL = 1e-9, 1e-12  # exact references: only rounding differs


def _vg(fn, *args, argnums=0):
    """``value_and_grad(fn)`` natively; checked against the interpreter on the traced and optimized IR."""
    exe = lantern.value_and_grad(fn, argnums).lower(*args)
    out = exe(*args)
    assert_trees_close(exe.interpret(*args), out, RTOL, ATOL, "interpreter vs native")
    assert_trees_close(exe.interpret(*args, optimized=True), out, RTOL, ATOL, "optimized interpreter vs native")
    assert exe.native.arena_in_use() == 0
    return out


def _close(actual, expected, what=""):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


@pytest.fixture
def v3(rng):
    return rng.standard_normal(3)


# ------------------------------------------------------------------ cond

def _branchy(x, w):
    y = lantern.cond(x.sum() > 0, lambda: lantern.tanh(x * w), lambda: x * x * w)
    return (y * y).sum()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_both_branches_exact(sign):
    x = sign * np.array([0.3, -0.2, 0.5])
    w = np.array([1.1, 0.7, -0.4])
    value, (gx, gw) = _vg(_branchy, x, w, argnums=(0, 1))
    if sign > 0:  # y = tanh(x w)
        y = np.tanh(x * w)
        dy = 2 * y * (1 - y * y)
        ex, ew = dy * w, dy * x
    else:  # y = x^2 w
        y = x * x * w
        ex, ew = 2 * y * 2 * x * w, 2 * y * x * x
    _close(value, (y * y).sum(), "value")
    _close(gx, ex, "d/dx")
    _close(gw, ew, "d/dw")


def _tree_cond(p, x):
    # The predicate depends on a parameter; the branches return a dict holding a tuple.
    def yes():
        return {"a": p["w"] * x, "b": (lantern.sin(x).sum(), p["b"] * 2.0)}

    def no():
        return {"a": p["w"] - x, "b": (x.sum() * p["b"], p["b"] * p["b"])}

    out = lantern.cond(p["b"] > 0, yes, no)
    return (out["a"] ** 2).sum() + out["b"][0] * out["b"][1]


@pytest.mark.parametrize("b", [0.7, -0.6])
def test_cond_returning_pytree(v3, b):
    p = {"w": np.array([0.5, -1.2, 0.9]), "b": np.asarray(b)}
    grads = check_grads(_tree_cond, p, v3, argnums=(0, 1))
    gp, gx = grads
    w, x = p["w"], v3
    if b > 0:  # a = w x, b-pair = (sum sin x, 2b)
        a = w * x
        _close(gp["w"], 2 * a * x)
        _close(gp["b"], 2 * np.sin(x).sum())
        _close(gx, 2 * a * w + np.cos(x) * 2 * b)
    else:  # a = w - x, b-pair = (b sum x, b^2)
        a = w - x
        _close(gp["w"], 2 * a)
        _close(gp["b"], 3 * b * b * x.sum())
        _close(gx, -2 * a + b ** 3)


def _nested(x, w):
    s = x.sum()  # used before the cond, inside both levels and after it

    def outer_true():
        z = x * w
        return lantern.cond(z.sum() > 0, lambda: lantern.exp(z) * s, lambda: z * z + s)

    y = lantern.cond(s > 0, outer_true, lambda: lantern.sin(x) * w)
    return (y * x).sum() + s * s


def _nested_np(x, w):
    s = x.sum()
    if s > 0:
        z = x * w
        y = np.exp(z) * s if z.sum() > 0 else z * z + s
    else:
        y = np.sin(x) * w
    return (y * x).sum() + s * s


@pytest.mark.parametrize("path", ["true/true", "true/false", "false"])
def test_nested_conds(path):
    x = {"true/true": np.array([0.4, 0.3, -0.1]), "true/false": np.array([0.4, 0.3, -0.1]),
         "false": np.array([-0.4, 0.3, -0.1])}[path]
    w = {"true/true": np.array([1.0, 0.5, 0.2]), "true/false": np.array([-1.0, -0.5, 0.2]),
         "false": np.array([1.0, 0.5, 0.2])}[path]
    taken = ("true" if x.sum() > 0 else "false") + ("/" + ("true" if (x * w).sum() > 0 else "false")
                                                    if x.sum() > 0 else "")
    assert taken == path
    check_grads(_nested, x, w, argnums=(0, 1))
    np.testing.assert_allclose(lantern.stage(_nested)(x, w), _nested_np(x, w), rtol=1e-12)
    # Exact gradient for the path taken.
    s = x.sum()
    value, (gx, gw) = lantern.value_and_grad(_nested, (0, 1))(x, w)
    if path == "true/true":
        e = np.exp(x * w)
        ex = e * s + x * e * w * s + (x * e).sum() + 2 * s
        ew = x * e * x * s
    elif path == "true/false":
        z = x * w
        ex = (z * z + s) + x * 2 * z * w + x.sum() + 2 * s
        ew = x * 2 * z * x
    else:
        ex = np.sin(x) * w + x * np.cos(x) * w + 2 * s
        ew = x * np.sin(x)
    _close(value, _nested_np(x, w))
    _close(gx, ex, "d/dx")
    _close(gw, ew, "d/dw")


def _before_after(x, w):
    y = lantern.tanh(x * w)
    z = lantern.cond(y.sum() > 0, lambda: y * 3.0, lambda: y * y)
    return (z * y).sum() + y.sum()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_value_used_before_and_after_cond(sign):
    x, w = sign * np.array([0.5, 0.2, -0.1]), np.array([0.9, 1.3, 0.4])
    value, gx = _vg(_before_after, x, w)
    y = np.tanh(x * w)
    if sign > 0:
        assert y.sum() > 0
        ev, dy = (3 * y * y).sum() + y.sum(), 6 * y + 1
    else:
        assert y.sum() < 0
        ev, dy = (y ** 3).sum() + y.sum(), 3 * y * y + 1
    _close(value, ev)
    _close(gx, dy * (1 - y * y) * w)


def _captures(x, W, b):
    # Both branches read parameters defined outside them (W, b) and a value computed before (h).
    h = W @ x
    out = lantern.cond(h[0] > 0, lambda: lantern.tanh(h + b), lambda: (W * W) @ x - b)
    return (out * out).sum()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_branches_capture_parameters(rng, sign):
    W = rng.standard_normal((3, 3))
    x = rng.standard_normal(3)
    x = x * sign * np.sign(W[0] @ x)  # pick the branch
    b = rng.standard_normal(3)
    value, (gW, gb) = _vg(_captures, x, W, b, argnums=(1, 2))
    if sign > 0:
        y = np.tanh(W @ x + b)
        g = 2 * y * (1 - y * y)
        eW, eb = np.outer(g, x), g
    else:
        y = (W * W) @ x - b
        g = 2 * y
        eW, eb = 2 * W * np.outer(g, x), -g
    _close(value, (y * y).sum())
    _close(gW, eW, "d/dW")
    _close(gb, eb, "d/db")


def _param_pred(w, x):
    # The predicate depends on w; only the taken branch contributes to the gradient.
    d = (w * x).sum()
    return lantern.cond(d > 0, lambda: d * d + (w * w).sum(), lambda: -3.0 * d)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cond_predicate_depends_on_parameters(sign):
    x = np.array([0.5, -0.25, 1.0])
    w = sign * np.array([0.4, 0.2, 0.3])
    value, gw = _vg(_param_pred, w, x)
    d = (w * x).sum()
    if sign > 0:
        _close(value, d * d + (w * w).sum())
        _close(gw, 2 * d * x + 2 * w)
    else:
        _close(value, -3 * d)
        _close(gw, -3 * x)


# ------------------------------------------------------------------ fori_loop

def _loop_tuple(x, w):
    def body(i, state):
        h, (s, prod) = state
        h = lantern.tanh(w * h + x)
        return h, (s + h.sum(), prod * h)

    h, (s, prod) = lantern.fori_loop(0, 4, body, (x, (x.sum() * 0.0, lantern.ones_like(x))))
    return s + (prod * h).sum()


def test_loop_carries_arrays_and_tuples(v3):
    w = np.array([0.8, -0.6, 1.1])
    check_grads(_loop_tuple, v3, w, argnums=(0, 1))


def _zero_trip(x, w):
    # No iterations: the loop's outputs are its initial values; the body's captured w gets nothing.
    h, s = lantern.fori_loop(2, 2, lambda i, c: (lantern.sin(c[0] * w), c[1] * w), (x, x * 2.0))
    return (h * h).sum() + (s * w).sum()


def test_zero_trip_loop(v3):
    w = np.array([0.3, 0.4, -0.5])
    value, (gx, gw) = _vg(_zero_trip, v3, w, argnums=(0, 1))
    _close(value, (v3 * v3).sum() + (2 * v3 * w).sum())
    _close(gx, 2 * v3 + 2 * w)
    _close(gw, 2 * v3)


def _swap(a, b, w):
    def body(i, ab):
        a, b = ab
        return b * w, a

    a, b = lantern.fori_loop(0, 3, body, (a, b))
    return (a * 1.5).sum() + (b * b * 0.5).sum()


def test_loop_swaps_carried_values(rng):
    a0, b0, w = rng.standard_normal((3, 3))
    value, (ga, gb, gw) = _vg(_swap, a0, b0, w, argnums=(0, 1, 2))
    # (a, b) -> (b w, a) -> (a w, b w) -> (b w^2, a w)
    _close(value, (1.5 * b0 * w * w).sum() + (0.5 * a0 * a0 * w * w).sum())
    _close(ga, a0 * w * w)
    _close(gb, 1.5 * w * w)
    _close(gw, 3 * b0 * w + a0 * a0 * w)


N_AFFINE = 5


def _affine(c0, w, b):
    # c <- w c + b, with w and b captured by the body: their gradients sum over the iterations.
    return lantern.fori_loop(0, N_AFFINE, lambda i, c: w * c + b, c0).sum()


def test_loop_captured_parameters_sum_over_iterations(rng):
    c0, w, b = rng.standard_normal((3, 3))
    value, (gc, gw, gb) = _vg(_affine, c0, w, b, argnums=(0, 1, 2))
    n = N_AFFINE
    k = np.arange(n)[:, None]
    _close(value, (w ** n * c0 + b * (w ** k).sum(0)).sum())
    _close(gc, w ** n)
    _close(gb, (w ** k).sum(0))
    _close(gw, n * w ** (n - 1) * c0 + b * (k * w ** np.maximum(k - 1, 0)).sum(0))


def _nested_loops(x, W):
    def outer(i, h):
        h = lantern.fori_loop(0, 2, lambda j, g: lantern.tanh(W @ g + x[j]), h)
        return h * x[i] + h

    return (lantern.fori_loop(0, 3, outer, x) ** 2).sum()


def test_nested_loops(v3, rng):
    check_grads(_nested_loops, v3, rng.standard_normal((3, 3)) * 0.7, argnums=(0, 1))


def _loop_in_cond(x, w):
    def looped():
        return lantern.fori_loop(0, 3, lambda i, h: lantern.sin(h * w) + x, x)

    y = lantern.cond(x.sum() > 0, looped, lambda: x * w)
    return (y * y).sum()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_loop_inside_cond_branch(sign):
    x, w = sign * np.array([0.5, 0.2, -0.1]), np.array([0.9, 1.3, 0.4])
    check_grads(_loop_in_cond, x, w, argnums=(0, 1))


def _cond_in_loop(x, w):
    def body(i, h):
        return lantern.cond(i % 2 == 0, lambda: lantern.tanh(h * w + x), lambda: h * h * w - x)

    return (lantern.fori_loop(0, 4, body, x) * x).sum()


def test_cond_inside_loop_body(v3):
    w = np.array([0.7, -0.8, 1.2])
    check_grads(_cond_in_loop, v3, w, argnums=(0, 1))
    # Both branches ran: the result differs from always taking either one.
    h_alt, h_one = v3.copy(), v3.copy()
    for i in range(4):
        h_alt = np.tanh(h_alt * w + v3) if i % 2 == 0 else h_alt * h_alt * w - v3
        h_one = np.tanh(h_one * w + v3)
    _close(lantern.stage(_cond_in_loop)(v3, w), (h_alt * v3).sum())
    assert not np.isclose((h_alt * v3).sum(), (h_one * v3).sum())


def _recurrence(a, x):
    # h_t = a h_{t-1} + x_t (x indexed inside the body); loss = sum_t h_t^2.
    def body(i, state):
        h, acc = state
        h = a * h + x[i]
        return h, acc + h * h

    zero = a * 0.0
    return lantern.fori_loop(0, x.shape[0], body, (zero, zero))[1]


def _recurrence_np(a, x):
    """Forward and hand-derived backward of ``_recurrence``."""
    h = np.zeros(len(x) + 1)
    for t in range(len(x)):
        h[t + 1] = a * h[t] + x[t]
    loss = (h[1:] ** 2).sum()
    gx = np.zeros(len(x))
    ga, hbar = 0.0, 0.0  # hbar: d loss / d h_{t+1} from later steps
    for t in reversed(range(len(x))):
        hbar += 2 * h[t + 1]
        gx[t] = hbar
        ga += hbar * h[t]
        hbar *= a
    return loss, ga, gx


@pytest.mark.parametrize("n", [6, 10_000])
def test_long_linear_recurrence_gradient_wrt_sequence(rng, n):
    a = np.asarray(0.999 if n > 100 else 0.8)
    x = rng.standard_normal(n) * 0.1
    exe = lantern.value_and_grad(_recurrence, (0, 1)).lower(a, x)
    value, (ga, gx) = exe(a, x)
    assert exe.native.arena_in_use() == 0
    loss, ea, ex = _recurrence_np(float(a), x)
    np.testing.assert_allclose(value, loss, rtol=1e-10)
    np.testing.assert_allclose(ga, ea, rtol=1e-10)
    np.testing.assert_allclose(gx, ex, rtol=1e-10, atol=1e-12)
    if n < 100:  # the interpreter too (it is slow for 10,000 iterations)
        assert_trees_close(exe.interpret(a, x), (value, (ga, gx)), RTOL, ATOL)


# Weight gradients of a counted loop: a loop-invariant matrix's gradient is summed over the
# iterations by one product of stacked rows after the reverse loop (ad/transform.py); a
# transpose of it inside the body is moved before the loop first (lantern/ir/passes/hoist.py).

def _stacked_rnn(h0, xs, U, W, V):
    def body(t, h):
        h = lantern.tanh(xs[t] @ U + h @ W.T)
        return lantern.cond(h.sum() > 0, lambda: h * 0.9, lambda: h @ V)  # V: a product inside a branch
    return (lantern.fori_loop(0, xs.shape[0], body, h0) @ V).sum() + (h0 @ W).sum()


def _stacked_after_cond(h0, xs, U, W):
    def body(t, h):  # the products come after a cond: their backward runs in its continuation
        h = lantern.cond(h.sum() > 0, lambda: h * 0.5, lambda: lantern.sin(h))
        return lantern.tanh(xs[t] @ U + h @ W)
    return (lantern.fori_loop(0, xs.shape[0], body, h0) ** 2).sum()


def _stacked_nested(h0, W, V):
    def outer(i, h):  # W in the inner loop and in the outer body
        g = lantern.fori_loop(0, 2, lambda j, g: lantern.sin(g @ W), h)
        return lantern.tanh(g @ W.T + h)
    return (lantern.fori_loop(0, 3, outer, h0) @ V).sum()


def _stacked(fn, argnums, *args):
    """Names of the stacks the gradient's IR fills, and whether a transpose is left in a loop body."""
    ir = str(lantern.value_and_grad(fn, argnums).lower(*args).ir)
    ir = re.search(r"^func @\w+_grad\(.*?(?=^func |\Z)", ir, re.MULTILINE | re.DOTALL).group(0)
    # (Statements of a function's body are indented by 2, those of a loop body by 4 or more.)
    in_loop = re.search(r"^ {4,}%\w+: \S+ = transpose\(%W_", ir, re.MULTILINE)
    return sorted(re.findall(r"%(rows_\w+?)_\d+: \S+ = fill", ir)), in_loop is not None


def test_loop_weight_gradients_summed_after_the_loop(rng):
    h0, xs = rng.standard_normal((2, 8)) * 0.5, rng.standard_normal((5, 2, 6))
    U, W, V = (rng.standard_normal(s) * 0.4 for s in [(6, 8), (8, 8), (8, 8)])
    check_grads(_stacked_rnn, h0, xs, U, W, V, argnums=(0, 1, 2, 3, 4))
    stacks, transposed_in_loop = _stacked(_stacked_rnn, (2, 3, 4), h0, xs, U, W, V)
    # U's and W.T's products are stacked (their row operand and adjoint); V's is in a branch. W.T's row operand
    # is the loop state, whose stack the forward loop fills: its rows are read from there, not copied again.
    assert stacks == ["rows_gather", "rows_matmul_bar", "rows_matmul_bar"], stacks
    assert not transposed_in_loop
    ir = str(lantern.value_and_grad(_stacked_rnn, (2, 3, 4)).lower(h0, xs, U, W, V).ir)
    assert re.search(r"^  %\w+: f64\[10,8\] = reshape\(%saved_carry_\d+", ir, re.MULTILINE), ir
    check_grads(_stacked_after_cond, h0, xs, U, W, argnums=(0, 1, 2, 3))
    after_cond = _stacked(_stacked_after_cond, (2, 3), h0, xs, U, W)[0]
    assert len(after_cond) == 4 and after_cond.count("rows_matmul_bar") == 2, after_cond
    h0 = rng.standard_normal((1, 8)) * 0.5
    check_grads(_stacked_nested, h0, W, V, argnums=(0, 1, 2))
    stacks, transposed_in_loop = _stacked(_stacked_nested, (0, 1, 2), h0, W, V)
    # The outer body's g @ W.T is stacked; the inner loop's W is in a nested loop of the outer one,
    # where it is stacked by the inner loop's reverse part (its rows: the inner loop's stored state).
    assert stacks == ["rows_g", "rows_matmul_bar", "rows_matmul_bar"], stacks
    assert not transposed_in_loop


def test_loop_residuals_within_budget_else_recomputed(rng, monkeypatch):
    # Products and transcendental results are stored by the forward loop (up to a budget);
    # beyond it they are recomputed in the reverse loop: the same gradient either way.
    from lantern.ad import transform
    h0, xs = rng.standard_normal((2, 8)) * 0.5, rng.standard_normal((5, 2, 6))
    U, W, V = (rng.standard_normal(s) * 0.4 for s in [(6, 8), (8, 8), (8, 8)])
    args = (h0, xs, U, W, V)
    stored = lantern.value_and_grad(_stacked_rnn, (2, 3)).lower(*args)
    monkeypatch.setattr(transform, "LOOP_RESIDUAL_MAX_BYTES", 0)
    recomputed = lantern.value_and_grad(_stacked_rnn, (2, 3)).lower(*args)
    assert re.search(r"%saved_h_\d+: f64\[5,2,8\]", str(stored.ir)) and "saved_h" not in str(recomputed.ir)
    assert re.search(r"%saved_matmul", str(stored.ir)) and "saved_matmul" not in str(recomputed.ir)
    assert_trees_close(recomputed(*args), stored(*args), RTOL, ATOL)


def test_loop_weight_gradients_added_per_iteration_when_the_rows_outweigh_the_matrix(rng):
    # W is 2 x 2; the rows and the product 6 x 2 each: adding per iteration moves less memory.
    h0, xs, W = rng.standard_normal((6, 2)) * 0.5, rng.standard_normal((4, 6, 2)), rng.standard_normal((2, 2)) * 0.5

    def rnn(h0, xs, W):
        return lantern.fori_loop(0, 4, lambda t, h: lantern.tanh(h @ W + xs[t]), h0).sum()

    check_grads(rnn, h0, xs, W, argnums=(0, 1, 2))
    assert _stacked(rnn, 2, h0, xs, W) == ([], False)


# ------------------------------------------------------------------ RNN and LSTM language models

V, H, T = 10, 6, 8  # vocabulary, hidden size, sequence length


def rnn_loss(p, inputs, targets, h0):
    """min-char-rnn: one-hot input, h = tanh(Wxh x + Whh h + bh), softmax cross-entropy."""
    def step(t, state):
        h, loss = state
        x = lantern.one_hot(inputs[t], V, "float64")
        h = lantern.tanh(p["Wxh"] @ x + p["Whh"] @ h + p["bh"])
        logp = lantern.log_softmax(p["Why"] @ h + p["by"])
        return h, loss - logp[targets[t]]

    return lantern.fori_loop(0, inputs.shape[0], step, (h0, lantern.zeros((), "float64")))[1]


def lstm_loss(p, inputs, targets, state0):
    """LSTM with a row-gather embedding (a column of Wx), gates i, f, o, g; same output layer."""
    def step(t, state):
        h, c, loss = state
        z = p["Wx"][:, inputs[t]] + p["Wh"] @ h + p["b"]
        i = lantern.sigmoid(z[:H])
        f = lantern.sigmoid(z[H:2 * H])
        o = lantern.sigmoid(z[2 * H:3 * H])
        g = lantern.tanh(z[3 * H:])
        c = f * c + i * g
        h = o * lantern.tanh(c)
        logp = lantern.log_softmax(p["Why"] @ h + p["by"])
        return h, c, loss - logp[targets[t]]

    h0, c0 = state0
    return lantern.fori_loop(0, inputs.shape[0], step, (h0, c0, lantern.zeros((), "float64")))[2]


def _softmax(y):
    e = np.exp(y - y.max())
    return e / e.sum()


def rnn_numpy(p, inputs, targets, h0):
    """Forward and hand-derived backpropagation through time; returns loss, d params, d h0."""
    hs, ps, loss = {-1: h0}, {}, 0.0
    for t, (a, b) in enumerate(zip(inputs, targets)):
        hs[t] = np.tanh(p["Wxh"][:, a] + p["Whh"] @ hs[t - 1] + p["bh"])
        ps[t] = _softmax(p["Why"] @ hs[t] + p["by"])
        loss -= np.log(ps[t][b])
    d = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros(H)
    for t in reversed(range(len(inputs))):
        dy = ps[t].copy()
        dy[targets[t]] -= 1
        d["Why"] += np.outer(dy, hs[t])
        d["by"] += dy
        dh = p["Why"].T @ dy + dh_next
        draw = (1 - hs[t] ** 2) * dh
        d["bh"] += draw
        d["Wxh"][:, inputs[t]] += draw
        d["Whh"] += np.outer(draw, hs[t - 1])
        dh_next = p["Whh"].T @ draw
    return loss, d, dh_next


def _sig(x):
    return 1 / (1 + np.exp(-x))


def lstm_numpy(p, inputs, targets, state0):
    """Forward and hand-derived backpropagation through time; returns loss, d params, (d h0, d c0)."""
    h0, c0 = state0
    hs, cs, gates, ps, loss = {-1: h0}, {-1: c0}, {}, {}, 0.0
    for t, (a, b) in enumerate(zip(inputs, targets)):
        z = p["Wx"][:, a] + p["Wh"] @ hs[t - 1] + p["b"]
        i, f, o, g = _sig(z[:H]), _sig(z[H:2 * H]), _sig(z[2 * H:3 * H]), np.tanh(z[3 * H:])
        cs[t] = f * cs[t - 1] + i * g
        hs[t] = o * np.tanh(cs[t])
        gates[t] = (i, f, o, g)
        ps[t] = _softmax(p["Why"] @ hs[t] + p["by"])
        loss -= np.log(ps[t][b])
    d = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next, dc_next = np.zeros(H), np.zeros(H)
    for t in reversed(range(len(inputs))):
        i, f, o, g = gates[t]
        dy = ps[t].copy()
        dy[targets[t]] -= 1
        d["Why"] += np.outer(dy, hs[t])
        d["by"] += dy
        dh = p["Why"].T @ dy + dh_next
        tc = np.tanh(cs[t])
        do = dh * tc
        dc = dc_next + dh * o * (1 - tc ** 2)
        di, df, dg = dc * g, dc * cs[t - 1], dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g ** 2)])
        d["b"] += dz
        d["Wx"][:, inputs[t]] += dz
        d["Wh"] += np.outer(dz, hs[t - 1])
        dh_next, dc_next = p["Wh"].T @ dz, dc * f
    return loss, d, (dh_next, dc_next)


def _rnn_case(seed=1):
    rng = np.random.default_rng(seed)
    p = {"Wxh": rng.standard_normal((H, V)) * 0.5, "Whh": rng.standard_normal((H, H)) * 0.5,
         "bh": rng.standard_normal(H) * 0.1, "Why": rng.standard_normal((V, H)) * 0.5,
         "by": rng.standard_normal(V) * 0.1}
    inputs, targets = rng.integers(0, V, T), rng.integers(0, V, T)
    return p, inputs, targets, rng.standard_normal(H) * 0.3


def _lstm_case(seed=2):
    rng = np.random.default_rng(seed)
    p = {"Wx": rng.standard_normal((4 * H, V)) * 0.5, "Wh": rng.standard_normal((4 * H, H)) * 0.5,
         "b": rng.standard_normal(4 * H) * 0.1, "Why": rng.standard_normal((V, H)) * 0.5,
         "by": rng.standard_normal(V) * 0.1}
    inputs, targets = rng.integers(0, V, T), rng.integers(0, V, T)
    return p, inputs, targets, (rng.standard_normal(H) * 0.3, rng.standard_normal(H) * 0.3)


MODELS = {"rnn": (rnn_loss, rnn_numpy, _rnn_case), "lstm": (lstm_loss, lstm_numpy, _lstm_case)}


def _model_grads(name):
    loss_fn, _, case = MODELS[name]
    args = case()
    exe = lantern.value_and_grad(loss_fn, (0, 3)).lower(*args)
    return args, exe, exe(*args)


def _rel_close(actual, expected, what):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=what)


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_language_model_gradients_match_hand_derived_bptt(name):
    args, exe, (value, (gp, gstate)) = _model_grads(name)
    loss, ep, estate = MODELS[name][1](*args)
    np.testing.assert_allclose(value, loss, rtol=1e-12, err_msg="loss vs NumPy forward")
    np.testing.assert_allclose(lantern.stage(MODELS[name][0])(*args), loss, rtol=1e-12, err_msg="staged forward")
    assert set(gp) == set(ep)
    for k in ep:
        assert np.abs(ep[k]).max() > 1e-3  # every parameter really gets a gradient
        _rel_close(gp[k], ep[k], f"d loss / d {k}")
    for got, want, what in zip(gstate if name == "lstm" else (gstate,), estate if name == "lstm" else (estate,),
                               ("h0", "c0")):
        _rel_close(got, want, f"d loss / d {what}")
    assert_trees_close(exe.interpret(*args), (value, (gp, gstate)), RTOL, ATOL, "interpreter vs native")
    assert exe.native.arena_in_use() == 0


def _torch_loss(torch, name, p, inputs, targets, state0):
    F = torch.nn.functional
    h = state0[0] if name == "lstm" else state0
    c = state0[1] if name == "lstm" else None
    loss = torch.zeros((), dtype=torch.float64)
    for a, b in zip(inputs, targets):
        if name == "rnn":
            h = torch.tanh(p["Wxh"][:, a] + p["Whh"] @ h + p["bh"])
        else:
            z = p["Wx"][:, a] + p["Wh"] @ h + p["b"]
            i, f, o, g = torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H]), torch.sigmoid(z[2 * H:3 * H]), torch.tanh(z[3 * H:])
            c = f * c + i * g
            h = o * torch.tanh(c)
        loss = loss - F.log_softmax(p["Why"] @ h + p["by"], dim=0)[b]
    return loss


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_language_model_gradients_match_torch(name):
    torch = pytest.importorskip("torch")
    (p, inputs, targets, state0), _, (value, (gp, gstate)) = _model_grads(name)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    ts = tuple(torch.tensor(s, requires_grad=True) for s in (state0 if name == "lstm" else (state0,)))
    loss = _torch_loss(torch, name, tp, inputs.tolist(), targets.tolist(), ts if name == "lstm" else ts[0])
    loss.backward()
    np.testing.assert_allclose(value, loss.item(), rtol=1e-12)
    for k in p:
        _rel_close(gp[k], tp[k].grad.numpy(), f"d loss / d {k} vs torch")
    for got, t in zip(gstate if name == "lstm" else (gstate,), ts):
        _rel_close(got, t.grad.numpy(), "d loss / d initial state vs torch")


# ------------------------------------------------------------------ memory and readability

def test_arena_back_at_mark_after_gradient_with_loop_and_cond():
    x, w = np.array([0.5, 0.2, -0.1]), np.array([0.9, 1.3, 0.4])
    exe = lantern.value_and_grad(_loop_in_cond, (0, 1)).lower(x, w)
    assert exe.native.arena_in_use() == 0
    for sign in (1.0, -1.0, 1.0):  # the looped branch, the other one, the looped one again
        first = exe(sign * x, w)
        assert exe.native.arena_in_use() == 0
    assert_trees_close(exe(x, w), first, 0, 0, "repeated calls give the same result")


def _straight(x, w):
    a = lantern.sin(x * w)
    b = lantern.tanh(a)
    c = lantern.log(b + 2.0)
    return c.sum()


def test_straight_line_c_reads_forward_then_backward_in_reverse():
    x, w = np.array([0.3, -0.2, 0.5]), np.array([1.1, 0.7, -0.4])
    exe = lantern.value_and_grad(_straight, (0, 1)).lower(x, w)
    value, (gx, gw) = exe(x, w)
    b = np.tanh(np.sin(x * w))
    chain = 1 / (b + 2) * (1 - b * b) * np.cos(x * w)
    _close(value, np.log(b + 2).sum())
    _close(gx, chain * w)
    _close(gw, chain * x)
    src = exe.c_source
    body = src[src.index("void fn_value_and_grad__straight("):src.index("lantern_entry(")]
    assert "tape" not in body.lower()
    # Forward statements: sin, then tanh, then log; then the backward ones in reverse order:
    # log's (divide by b + 2), tanh's (1 - y*y), sin's (cos).
    code = re.sub(r"/\*.*?\*/", "", body)  # positions in the code, not in the source-line comments
    fwd = [code.index(s) for s in ("sin(", "tanh(", "log(")]
    back = [code.index(re.search(p, code).group()) for p in (r"/ add_\w+", r"1\.0 - ", r"cos\(")]
    assert fwd == sorted(fwd) and back == sorted(back) and fwd[-1] < back[0], (fwd, back)
    # Comments name the user's source lines, forward in order and backward in reverse.
    code = _straight.__code__
    lines = {text: code.co_firstlineno + k for k, text in enumerate(
        ["", "a = lantern.sin(x * w)", "b = lantern.tanh(a)", "c = lantern.log(b + 2.0)", "return c.sum()"]) if text}
    comments = [c for c in re.findall(r"/\* (.*?) \*/", body) if "test_grad_programs.py:" in c]
    for text, line in lines.items():
        assert any(f"test_grad_programs.py:{line}: {text}" in c for c in comments), (text, comments)
    # A fused loop's comment lists the lines it came from, so compare positions in the text
    # of all comments: forward lines in order, then the return, then backward lines in reverse.
    stream = " | ".join(comments)
    ret = stream.index("return c.sum()")
    firsts = [stream.index(t) for t in ("a = lantern.sin", "b = lantern.tanh", "c = lantern.log")]
    lasts = [stream.rindex(t) for t in ("c = lantern.log", "b = lantern.tanh", "a = lantern.sin")]
    assert firsts == sorted(firsts) and firsts[-1] < ret < lasts[0] and lasts == sorted(lasts), (firsts, ret, lasts)


def test_cond_gradient_c_has_continuation_function_and_environment():
    x, w = np.array([0.3, -0.2, 0.5]), np.array([1.1, 0.7, -0.4])
    src = lantern.value_and_grad(_branchy, (0, 1)).lower(x, w).c_source
    env = re.search(r"struct (lambda_\w+)_env \{", src)
    assert env, "no environment struct for the continuation"
    name = env.group(1)
    assert re.search(rf"^static void {name}\([^;]*\)$", src, re.M), "no continuation function"
    assert re.search(rf"struct {name}_env \*env\b", src), "the continuation does not read its environment"
    instance = re.search(rf"struct {name}_env (\w+) = \{{", src)
    assert instance, "no environment built on the creating frame"
    # Called from both branches of the if, with that environment.
    assert len(re.findall(rf"\b{name}\(&{instance.group(1)}\b", src)) == 2
