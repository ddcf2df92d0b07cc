"""Eager execution (issue 13 point 11): lantern's operations and layers on NumPy arrays outside staging
give the staged results; ``lantern.disable_stage()`` / ``LANTERN_DISABLE_STAGE=1`` run staged functions as
plain Python (print sees values, control flow runs in Python, nothing is compiled)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import lantern
from lantern import nn
from lantern.testing import assert_trees_close
from lantern.tree import flatten

RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 4)).astype(np.float32)
Y = RNG.standard_normal((3, 4)).astype(np.float32)
W = RNG.standard_normal((4, 5)).astype(np.float32)
POS = np.abs(X) + 0.5
IDS = np.array([2, 0, 1], np.int64)
CLASSES = np.array([0, 3, 1], np.int64)

# name -> a call of the public operation; each runs eagerly and inside one staged function
CALLS = {
    "exp": lambda: lantern.exp(X), "log": lambda: lantern.log(POS), "log1p": lambda: lantern.log1p(POS),
    "expm1": lambda: lantern.expm1(X), "sin": lambda: lantern.sin(X), "cos": lambda: lantern.cos(X),
    "tanh": lambda: lantern.tanh(X), "sigmoid": lambda: lantern.sigmoid(X), "sqrt": lambda: lantern.sqrt(POS),
    "rsqrt": lambda: lantern.rsqrt(POS), "floor": lambda: lantern.floor(X), "abs": lambda: lantern.abs(X),
    "sign": lambda: lantern.sign(X), "relu": lambda: lantern.relu(X), "silu": lambda: lantern.silu(X),
    "negative": lambda: lantern.negative(X), "square": lambda: lantern.square(X),
    "stop_gradient": lambda: lantern.stop_gradient(X),
    "add": lambda: lantern.add(X, 2.5), "subtract": lambda: lantern.subtract(X, Y),
    "multiply": lambda: lantern.multiply(X, Y), "divide": lambda: lantern.divide(X, POS),
    "power": lambda: lantern.power(POS, 1.5), "maximum": lambda: lantern.maximum(X, Y),
    "minimum": lambda: lantern.minimum(X, 0.0), "mod": lambda: lantern.mod(IDS, 2),
    "remainder": lambda: lantern.remainder(X, 0.7), "floor_divide": lambda: lantern.floor_divide(IDS, 2),
    "less": lambda: lantern.less(X, Y), "greater_equal": lambda: lantern.greater_equal(X, 0.0),
    "greater": lambda: lantern.greater(X, Y), "less_equal": lambda: lantern.less_equal(IDS, 1),
    "logical_or": lambda: lantern.logical_or(X > 0, IDS[:, None] > 0),
    "random_uniform": lambda: lantern.random_uniform(np.int64(11), (2, 3)),
    "equal": lambda: lantern.equal(IDS, 0), "not_equal": lambda: lantern.not_equal(IDS, 0),
    "logical_and": lambda: lantern.logical_and(X > 0, Y > 0), "logical_not": lambda: lantern.logical_not(X > 0),
    "where": lambda: lantern.where(X > 0, X, Y), "clip": lambda: lantern.clip(X, -0.5, 0.5),
    "sum": lambda: lantern.sum(X, axis=1), "mean": lambda: lantern.mean(X), "max": lambda: lantern.max(X, 0),
    "min": lambda: lantern.min(X, keepdims=True), "argmax": lambda: lantern.argmax(X, axis=1),
    "argmin": lambda: lantern.argmin(X), "logsumexp": lambda: lantern.logsumexp(X, axis=-1),
    "softmax": lambda: lantern.softmax(X), "log_softmax": lambda: lantern.log_softmax(X, axis=0),
    "reshape": lambda: lantern.reshape(X, (4, 3)), "transpose": lambda: lantern.transpose(X),
    "swapaxes": lambda: lantern.swapaxes(X, 0, 1), "moveaxis": lambda: lantern.moveaxis(X[None], 0, 2),
    "expand_dims": lambda: lantern.expand_dims(X, 1), "squeeze": lambda: lantern.squeeze(X[:, :1]),
    "broadcast_to": lambda: lantern.broadcast_to(X[0], (2, 4)),
    "concatenate": lambda: lantern.concatenate([X, Y], axis=1), "stack": lambda: lantern.stack([X, Y]),
    "matmul": lambda: lantern.matmul(X, W), "dot": lambda: lantern.dot(X[0], W[:, 0]),
    "take": lambda: lantern.take(W, IDS, axis=1), "one_hot": lambda: lantern.one_hot(CLASSES, 4),
    "astype": lambda: lantern.astype(X, "float64"), "asarray": lambda: lantern.asarray(2.0),
    "constant": lambda: lantern.constant(3, "int32"), "zeros": lambda: lantern.zeros((2, 3)),
    "ones": lambda: lantern.ones(3, "int64"), "full": lambda: lantern.full((2,), 7.5),
    "zeros_like": lambda: lantern.zeros_like(X), "ones_like": lambda: lantern.ones_like(IDS),
    "full_like": lambda: lantern.full_like(X, 2.0), "arange": lambda: lantern.arange(2, 11, 3),
    "tan": lambda: lantern.tan(X), "arcsin": lambda: lantern.arcsin(X * 0.3), "arccos": lambda: lantern.arccos(X * 0.3),
    "arctan": lambda: lantern.arctan(X), "arctan2": lambda: lantern.arctan2(X, Y), "sinh": lambda: lantern.sinh(X),
    "cosh": lambda: lantern.cosh(X), "erf": lambda: lantern.erf(X), "round": lambda: lantern.round(X, 1),
    "isnan": lambda: lantern.isnan(lantern.divide(X, 0.0)), "isinf": lambda: lantern.isinf(lantern.divide(X, 0.0)),
    "isfinite": lambda: lantern.isfinite(X), "logaddexp": lambda: lantern.logaddexp(X, Y),
    "softplus": lambda: lantern.softplus(X), "log_sigmoid": lambda: lantern.log_sigmoid(X),
    "elu": lambda: lantern.elu(X), "leaky_relu": lambda: lantern.leaky_relu(X), "gelu": lambda: lantern.gelu(X),
    "any": lambda: lantern.any(X > 1, axis=0), "all": lambda: lantern.all(X), "prod": lambda: lantern.prod(X, 1),
    "var": lambda: lantern.var(X, ddof=1), "std": lambda: lantern.std(X, 0), "norm": lambda: lantern.norm(X, 1),
    "cumsum": lambda: lantern.cumsum(X, 1), "cumprod": lambda: lantern.cumprod(X),
    "sort": lambda: lantern.sort(X, 0), "argsort": lambda: lantern.argsort(X),
    "topk": lambda: lantern.topk(X, 2), "take_along_axis": lambda: lantern.take_along_axis(X, IDS[:, None], 1),
    "eye": lambda: lantern.eye(3), "linspace": lambda: lantern.linspace(0, 1, 5),
    "tril": lambda: lantern.tril(X), "triu": lambda: lantern.triu(X, 1), "pad": lambda: lantern.pad(X, 1, "wrap"),
    "flip": lambda: lantern.flip(X), "roll": lambda: lantern.roll(X, 1, 1), "tile": lambda: lantern.tile(X, 2),
    "repeat": lambda: lantern.repeat(X, 2, 0), "split": lambda: lantern.split(X, 2, 1),
    "nonzero": lambda: lantern.nonzero(X > 0, size=4), "einsum": lambda: lantern.einsum("ij,jk", X, W),
    "nn.linear": lambda: nn.linear(X, W.T), "nn.cross_entropy": lambda: nn.cross_entropy(X, CLASSES),
    "nn.nll_loss": lambda: nn.nll_loss(lantern.log_softmax(X), CLASSES, reduction="sum"),
}


def test_every_public_operation_runs_eagerly_and_gives_the_staged_result():
    """Each call outside staging gives a NumPy array equal (dtype, shape, values) to the same call staged."""
    eager = {name: call() for name, call in CALLS.items()}
    staged = lantern.stage(lambda: {name: call() for name, call in CALLS.items()})()
    for name in CALLS:
        assert all(isinstance(v, np.ndarray) for v in flatten(eager[name])[0]), (name, type(eager[name]))
        assert_trees_close(eager[name], staged[name], what=name)
    # and NumPy's own values where NumPy has the function
    np.testing.assert_allclose(eager["tanh"], np.tanh(X), rtol=1e-6)
    np.testing.assert_array_equal(eager["arange"], np.arange(2, 11, 3))
    assert eager["asarray"].dtype == np.float32  # a Python float is float32 in lantern, staged or not


def test_the_operations_lantern_exports_are_all_covered_here():
    """A new public operation must run eagerly too: every function lantern exports from its ops is called
    by CALLS above."""
    import inspect
    from lantern import ops
    from lantern import ops_arrays, ops_reduce
    modules = (ops, ops_arrays, ops_reduce)
    exported = [n for n in dir(lantern) if any(inspect.isfunction(getattr(m, n, None)) for m in modules)]
    assert len(exported) > 100
    for n in exported:  # lantern.<op> is the eager form of the plain function
        assert any(getattr(lantern, n).traced is getattr(m, n, None) for m in modules), n
    assert not sorted(set(exported) - set(CALLS)), sorted(set(exported) - set(CALLS))


def test_layers_run_eagerly():
    """Each layer of lantern.nn applied to NumPy arrays outside staging equals the same layer staged."""
    rng = np.random.default_rng(0)
    lin, emb = nn.Linear(4, 5), nn.Embedding(6, 4)
    rnn, lstm, tree = nn.RNNCell(4, 3), nn.LSTMCell(4, 3), nn.TreeLSTMCell(4, 3)
    conv, pool, drop = nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2), nn.Dropout(0.5)
    params = {"lin": lin.init(rng), "emb": emb.init(rng), "rnn": rnn.init(rng), "lstm": lstm.init(rng),
              "tree": tree.init(rng), "conv": conv.init(rng)}
    image = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    key = np.int64(5)

    def apply(p, x, ids, image):
        state = lstm.zero_state(3)
        return {"lin": lin(p["lin"], x), "emb": emb(p["emb"], ids), "rnn": rnn(p["rnn"], x, rnn.zero_state(3)),
                "lstm": lstm(p["lstm"], x, state), "tree": tree(p["tree"], x, state, tree.leaf(p["tree"], x)),
                "conv": pool(conv(p["conv"], image)), "drop": drop(x, key)}

    assert_trees_close(apply(params, X, IDS, image), lantern.stage(apply)(params, X, IDS, image), what="layers")
    with pytest.raises(lantern.TraceError, match=r"parameters \['bias'\] missing .*\(at test_eager\.py:\d+"):
        lin({"weight": params["lin"]["weight"]}, X)


def test_eager_errors_name_the_user_s_line():
    with pytest.raises(lantern.ShapeError, match=r"add: shapes \(3, 4\), \(5,\) cannot be broadcast together "
                                                 r"\(at test_eager\.py:\d+\)"):
        lantern.add(X, np.ones(5, np.float32))
    with pytest.raises(lantern.OutOfBoundsError, match=r"test_eager\.py:\d+, in nn\.py:\d+: one_hot with 4 "
                                                       r"classes: index 9 is out of bounds"):
        nn.cross_entropy(X, np.array([0, 9, 1]))
    with pytest.raises(lantern.TraceError, match="belongs to another trace"):
        leaked = []
        lantern.stage(lambda x: leaked.append(x) or x)(X)
        lantern.exp(leaked[0])


def test_control_flow_outside_staging_runs_in_python_with_the_staged_checks():
    def program(x, n):
        total = lantern.fori_loop(0, n, lambda i, c: c + x * lantern.astype(i, "float32"), lantern.zeros_like(x))
        k, y = lantern.while_loop(lambda s: s[1].sum() < 100.0, lambda s: (s[0] + 1, s[1] * 2.0), (0, total + 1.0))
        return lantern.cond(k > 3, lambda a: a.max(), lambda a: a.min(), y), k

    args = (np.abs(X) + 0.1, np.int64(4))
    assert_trees_close(program(*args), lantern.stage(program)(*args), what="control flow")
    with pytest.raises(lantern.ShapeError, match=r"cond: the predicate must be a scalar, got shape \(3, 4\)"):
        lantern.cond(X > 0, lambda: 1.0, lambda: 2.0)
    with pytest.raises(lantern.DTypeError, match=r"fori_loop: body_fun changes carried value 0 from f32\[4\] to "
                                                 r"f64\[4\]; .*\(at test_eager\.py:\d+\)"):
        lantern.fori_loop(0, 2, lambda i, c: c * np.float64(2.0), X[0])
    with pytest.raises(lantern.DTypeError, match=r"fori_loop: loop bounds must be integer scalars, got f32\[\]"):
        lantern.fori_loop(0, 2.5, lambda i, c: c, X)


@lantern.stage
def _tree_sum(left, right, vals, node):
    return lantern.cond(left[node] < 0, lambda: vals[node],
                        lambda: vals[node] + _tree_sum(left, right, vals, left[node])
                        + _tree_sum(left, right, vals, right[node]))


def _model(x, w, n, talk=True):
    h = x
    for _ in range(2):
        h = lantern.tanh(h @ w)
        if talk:
            print("h.sum() =", h.sum())
    return lantern.fori_loop(0, n, lambda i, c: c * 0.5, h).sum()


def test_disable_stage_runs_staged_functions_as_python(capsys):
    staged = lantern.stage(_model)
    w = np.eye(4, dtype=np.float32) * 0.5
    grad = lantern.grad(staged, argnums=1)
    before = lantern.cache_stats()["compiles"]
    with lantern.disable_stage():
        value = staged(X, w, np.int64(3))
        printed = capsys.readouterr().out
        g = grad(X, w, np.int64(3))
        printed_by_grad = capsys.readouterr().out
        left, right = np.array([1, -1, -1]), np.array([2, -1, -1])
        tree = _tree_sum(left, right, np.array([1.0, 2.0, 4.0]), np.int64(0))
        with lantern.disable_stage(False):
            assert not lantern.eager.stage_disabled()
        other_thread = []
        t = threading.Thread(target=lambda: other_thread.append(lantern.eager.stage_disabled()))
        t.start()
        t.join()
    assert lantern.cache_stats()["compiles"] == before, "disable_stage compiled C"
    assert other_thread == [False], "disable_stage is per thread"
    # the function ran as Python: print saw values; grad traces what it differentiates (as JAX's grad
    # under disable_jit does), so there print shows staged tensors
    assert re.fullmatch(r"(h\.sum\(\) = -?\d+\.\d+\n){2}", printed), printed
    assert re.fullmatch(r"(h\.sum\(\) = Tensor\(f32\[\], staged %\w+\)\n){2}", printed_by_grad), printed_by_grad
    assert isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == ()
    assert float(tree) == 7.0 and tree.dtype == np.float64
    np.testing.assert_allclose(value, staged(X, w, np.int64(3)), rtol=1e-6)
    quiet = lantern.grad(lambda x, w, n: _model(x, w, n, talk=False), argnums=1)
    assert_trees_close(g, quiet(X, w, np.int64(3)), what="gradient under disable_stage vs compiled")


def test_the_environment_variable_disables_staging_for_the_process():
    code = ("import numpy as np, lantern\n"
            "f = lantern.stage(lambda x: print(type(x).__name__, float(lantern.exp(x).sum())))\n"
            "f(np.zeros(3))\n"
            "print(lantern.cache_stats()['compiles'])\n")
    env = dict(os.environ, LANTERN_DISABLE_STAGE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ndarray", "3.0", "0"], out.stdout
    env["LANTERN_DISABLE_STAGE"] = "maybe"
    out = subprocess.run([sys.executable, "-c", "import lantern"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "$LANTERN_DISABLE_STAGE='maybe': expected 0 or 1" in out.stderr, out.stderr
