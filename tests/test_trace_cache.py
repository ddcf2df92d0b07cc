"""The trace cache: a fresh process finds its compiled code from a fingerprint of the function, without
tracing -- and never when anything the trace depends on has changed (a stale hit would run wrong code)."""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import lantern
from lantern import trace_cache
from lantern.codegen import toolchain
from lantern.staging import _bind, _leaf_key, _path_name
from lantern.tree import flatten

X = np.linspace(-1.0, 1.0, 6)
SCALE = 2.0
WEIGHTS = np.array([1.0, 2.0, 3.0])


def fingerprint(staged, *args):
    """What ``Staged._compile`` fingerprints for a call with ``args``."""
    bound = _bind(staged.name, staged.signature, args, {})
    with_paths, treedef = flatten(bound, paths=True)
    keys = [_leaf_key(_path_name(p, staged._param_names), leaf) for p, leaf in with_paths]
    return trace_cache.fingerprint(staged, treedef, keys)


def scaled(x):
    return lantern.tanh(x) * SCALE


def weighted(x):
    return lantern.sum(x[:3] * WEIGHTS)


def helper(x):
    return x * 2.0


def uses_helper(x):
    return helper(x) + 1.0


def make_closure(k):
    def closed(x):
        return x * k
    return closed


@pytest.fixture
def trace_cache_on(monkeypatch):
    monkeypatch.setenv("LANTERN_TRACE_CACHE", "1")


def test_same_function_same_fingerprint_and_signature_matters(trace_cache_on):
    f = lantern.stage(scaled)
    a = fingerprint(f, X)
    assert a is not None and a == fingerprint(lantern.stage(scaled), X)
    assert fingerprint(f, X.astype(np.float32)) != a  # dtype
    assert fingerprint(f, X[:4]) != a  # shape
    assert fingerprint(lantern.stage(scaled, check_indices=False), X) != a  # options
    assert fingerprint(lantern.stage(scaled, name="other"), X) != a


def test_changed_global_closure_or_body_changes_the_fingerprint(trace_cache_on, monkeypatch):
    f, g, h = lantern.stage(scaled), lantern.stage(weighted), lantern.stage(uses_helper)
    before = [fingerprint(f, X), fingerprint(g, X), fingerprint(h, X)]
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)
    assert fingerprint(f, X) != before[0]
    WEIGHTS[1] = 5.0  # same object, new content
    try:
        assert fingerprint(g, X) != before[1]
    finally:
        WEIGHTS[1] = 2.0
    assert fingerprint(g, X) == before[1]
    code = helper.__code__
    helper.__code__ = (lambda x: x * 3.0).__code__  # the body of a function it calls
    try:
        assert fingerprint(h, X) != before[2]
    finally:
        helper.__code__ = code
    assert fingerprint(h, X) == before[2]
    assert fingerprint(lantern.stage(make_closure(2.0)), X) != fingerprint(lantern.stage(make_closure(3.0)), X)
    assert fingerprint(lantern.stage(make_closure(2.0)), X) == fingerprint(lantern.stage(make_closure(2.0)), X)


def test_lantern_settings_change_the_fingerprint(trace_cache_on, monkeypatch):
    from lantern.codegen.kernels import matmul
    f = lantern.stage(scaled)
    a = fingerprint(f, X)
    monkeypatch.setattr(matmul, "VECTOR_BLAS_MIN_MACS", 1)  # a threshold set at run time
    assert fingerprint(f, X) != a
    monkeypatch.undo()
    from lantern.codegen.passes import row_products
    monkeypatch.setattr(row_products, "MAX_COPIED_ELEMENTS", 1)  # a pass's threshold
    assert fingerprint(f, X) != a
    monkeypatch.undo()
    monkeypatch.setenv("LANTERN_TRACE_CACHE", "1")
    monkeypatch.setenv("LANTERN_CHECK_FINITE", "1")
    assert fingerprint(f, X) != a
    monkeypatch.delenv("LANTERN_CHECK_FINITE")
    monkeypatch.setenv("CFLAGS", "-O1")
    assert fingerprint(f, X) != a


def test_another_openblas_installation_changes_the_fingerprint(trace_cache_on, monkeypatch, tmp_path):
    # The compile key names the OpenBLAS installation (each checkout's virtual environment has its own):
    # a fingerprint without it would find, from another checkout, a record naming another entry.
    import importlib.util
    import types as pytypes
    f = lantern.stage(scaled)
    a = fingerprint(f, X)
    other = tmp_path / "scipy_openblas32"
    (other / "lib").mkdir(parents=True)
    (other / "lib" / "libscipy_openblas.so").touch()
    real_find_spec = importlib.util.find_spec
    toolchain.blas_paths.cache_clear()
    try:
        with monkeypatch.context() as m:
            m.setattr(importlib.util, "find_spec", lambda name, *rest: pytypes.SimpleNamespace(
                origin=str(other / "__init__.py")) if name == "scipy_openblas32" else real_find_spec(name, *rest))
            assert toolchain.blas_paths()[1] == str(other / "lib")
            assert fingerprint(f, X) != a
    finally:
        toolchain.blas_paths.cache_clear()
    assert fingerprint(f, X) == a


class Config:
    scale = 2.0


CONFIG = Config()


def with_user_object(x):
    return x * CONFIG.scale


def with_numpy_random(x):
    return x * np.random.rand()


def with_getattr(x):
    return x * getattr(CONFIG, "scale")


@pytest.mark.parametrize("fn", [with_user_object, with_numpy_random, with_getattr])
def test_what_cannot_be_fingerprinted_is_traced(trace_cache_on, fresh_cache, fn):
    assert fingerprint(lantern.stage(fn), X) is None
    for _ in range(2):  # never recorded: every new staged object traces
        f = lantern.stage(fn)
        f(X)
        assert f.trace_count == 1


class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, x):
        return x * self.k


def test_staged_methods_fingerprint_their_object(trace_cache_on):
    # stage(obj.method), as llama.Trainer does: a lantern object's state is part of the fingerprint.
    from lantern import nn
    layer = nn.Linear(6, 2, dtype="float64")
    params = layer.init(0)
    a = fingerprint(lantern.stage(layer.__call__), params, X)
    assert a is not None and a == fingerprint(lantern.stage(nn.Linear(6, 2, dtype="float64").__call__), params, X)
    assert fingerprint(lantern.stage(nn.Linear(6, 2, bias=False, dtype="float64").__call__), params, X) != a
    assert fingerprint(lantern.stage(Scaler(2.0).apply), X) is None  # an object of the user's class: traced


def test_monkeypatched_lantern_disables_the_cache(trace_cache_on, monkeypatch):
    f = lantern.stage(scaled)
    assert fingerprint(f, X) is not None
    monkeypatch.setattr(lantern.ops, "tanh", lambda x: x)
    assert fingerprint(f, X) is None
    monkeypatch.undo()
    monkeypatch.setenv("LANTERN_TRACE_CACHE", "1")
    assert fingerprint(f, X) is not None
    monkeypatch.setattr(lantern.Tensor, "__mul__", lambda self, other: self)  # a method of a lantern class
    assert fingerprint(f, X) is None


def test_in_process_hit_skips_tracing_and_ir_is_traced_on_demand(trace_cache_on, fresh_cache):
    first = lantern.stage(scaled)
    np.testing.assert_allclose(first(X), np.tanh(X) * SCALE)
    assert first.trace_count == 1
    hits = trace_cache.STATS["hits"]
    again = lantern.stage(scaled)
    np.testing.assert_allclose(again(X), np.tanh(X) * SCALE)
    assert again.trace_count == 0 and trace_cache.STATS["hits"] == hits + 1
    exe = again.lower(X)
    assert exe.so_path == first.lower(X).so_path and exe.c_source == first.lower(X).c_source
    assert "tanh" in exe.ir and again.trace_count == 1  # traced only when asked
    np.testing.assert_allclose(exe.interpret(X), np.tanh(X) * SCALE)


def test_signatures_with_run_time_sizes_are_found_too(trace_cache_on, fresh_cache):
    """Issue 12: the second size compiles with a run-time size; another process (here: another staged object
    of the same function) finds that code, its guards and result types without tracing."""
    first = lantern.stage(scaled)
    for n in (6, 8):
        first(np.linspace(-1.0, 1.0, n))
    again = lantern.stage(scaled)
    hits = trace_cache.STATS["hits"]
    for n in (6, 8, 11):
        np.testing.assert_allclose(again(np.linspace(-1.0, 1.0, n)), np.tanh(np.linspace(-1.0, 1.0, n)) * SCALE)
    assert again.trace_count == 0 and trace_cache.STATS["hits"] == hits + 2
    exe = again.lower(np.linspace(-1.0, 1.0, 9))
    assert exe.pattern is not None and exe.pattern.guards == first.lower(np.ones(9)).pattern.guards
    assert "f64[n_x]" in exe.ir  # traced (with the run-time size) only when asked


def test_verify_mode_catches_a_stale_record(fresh_cache, monkeypatch):
    monkeypatch.setenv("LANTERN_TRACE_CACHE", "1")
    f = lantern.stage(scaled)
    f(X)
    g = lantern.stage(weighted)
    g(X)
    # point f's record at g's compiled code, as a fingerprint that missed a dependency would
    path = trace_cache._record_path(fingerprint(f, X))
    record = json.loads(path.read_text())
    other = json.loads(trace_cache._record_path(fingerprint(g, X)).read_text())
    record.update(key=other["key"], so=other["so"])
    path.write_text(json.dumps(record))
    monkeypatch.setenv("LANTERN_TRACE_CACHE", "verify")
    with pytest.raises(lantern.IRVerificationError, match="stale hit"):
        lantern.stage(scaled)(X)


_SCRIPT = """
import json, sys
import numpy as np
import lantern
import helpers_mod

SCALE = float(sys.argv[1])


def build(k):
    def step(x, w):
        y = lantern.tanh(x @ w) * SCALE
        return lantern.value_and_grad(lambda v: lantern.sum((helpers_mod.shift(v) * k) ** 2))(y)
    return lantern.stage(step)


step = build(float(sys.argv[2]))

x = np.linspace(-1, 1, 12).reshape(3, 4)
w = np.linspace(0.5, -0.5, 8).reshape(4, 2)
value, grad = step(x, w)
print(json.dumps({"value": float(value), "grad": grad.tolist(), "trace_count": step.trace_count,
                  "hits": __import__("lantern.trace_cache").trace_cache.STATS["hits"],
                  "stats": lantern.cache_stats()}))
"""


def _reference(scale: float, k: float, offset: float) -> tuple[float, np.ndarray]:
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    w = np.linspace(0.5, -0.5, 8).reshape(4, 2)
    y = np.tanh(x @ w) * scale
    z = (y + offset) * k
    return float(np.sum(z ** 2)), 2 * z * k


def test_fresh_process_hits_and_every_change_retraces(fresh_cache, tmp_path):
    """Processes of one script: a hit with nothing changed; a trace after a changed global, closure value
    or helper module -- and each result is right."""
    script = tmp_path / "trace_script.py"
    script.write_text(_SCRIPT)
    helpers = tmp_path / "helpers_mod.py"
    env = {**os.environ, "LANTERN_CACHE_DIR": str(fresh_cache), "LANTERN_TRACE_CACHE": "1",
           "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}

    def run(scale: float, k: float, offset: float, expect_hit: bool) -> None:
        helpers.write_text(f"def shift(v):\n    return v + {offset!r}\n")
        proc = subprocess.run([sys.executable, str(script), str(scale), str(k)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        value, grad = _reference(scale, k, offset)
        assert result["value"] == pytest.approx(value, rel=1e-12)
        np.testing.assert_allclose(result["grad"], grad, rtol=1e-12)
        assert (result["trace_count"], result["hits"]) == ((0, 1) if expect_hit else (1, 0)), result

    run(2.0, 3.0, 0.5, expect_hit=False)
    run(2.0, 3.0, 0.5, expect_hit=True)
    run(2.5, 3.0, 0.5, expect_hit=False)  # a module global
    run(2.0, 4.0, 0.5, expect_hit=False)  # a closure value (inside the gradient's lambda)
    run(2.0, 3.0, 0.25, expect_hit=False)  # the body of a function in another module
    run(2.0, 3.0, 0.5, expect_hit=True)  # back to the first: its record is still there
