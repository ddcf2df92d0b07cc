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
