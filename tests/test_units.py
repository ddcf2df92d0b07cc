"""Long functions cut into parts (codegen/passes/outline.py) and large modules compiled as translation units
in parallel, each cached apart (codegen/units.py, codegen/compiler.py): same results as one function in one
file, shared runtime state (errors, arena) across units, an edit recompiling only the units it changes."""
import re

import numpy as np
import pytest

import lantern
from lantern.codegen import recompile_native
from lantern.codegen.toolchain import Toolchain
from lantern.testing import assert_trees_close

#: Small enough that the test programs below are cut into many parts and units.
SMALL = {"LANTERN_PART_STMTS": "6", "LANTERN_UNIT_LINES": "60"}
#: Neither cut nor split: the code before issue 19's third step.
WHOLE = {"LANTERN_PART_STMTS": "0", "LANTERN_UNIT_LINES": "0"}


def _settings(monkeypatch, values: dict) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, v)


def make_step(scale: float = 2.0):
    """A training-like step: a Python loop of layers (unrolled), a staged loop and a branch under grad,
    reshapes whose gradients flow back through views, a scalar accumulated across the program."""
    def step(x, w, b, n):
        def loss(w, b):
            h = x
            for i in range(6):
                h = lantern.tanh(h @ w + b[i])
                h = lantern.reshape(lantern.reshape(h, (-1,)), h.shape) * 0.9
            h = lantern.fori_loop(0, n, lambda i, h: lantern.sin(h) + 0.1 * h, h)
            h = lantern.cond(lantern.sum(h) > 0, lambda h: h * 2.0, lambda h: h - 1.0, h)
            return lantern.sum(h * h) * scale
        value, (gw, gb) = lantern.value_and_grad(loss, argnums=(0, 1))(w, b)
        return value, gw, gb, w - 0.1 * gw, b - 0.1 * gb
    return lantern.stage(step)


def _args():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((4, 5)), rng.standard_normal((5, 5)) * 0.5, rng.standard_normal((6, 5)) * 0.1,
            np.int64(3))


def _assert_same(actual, expected):
    assert_trees_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_long_functions_are_cut_into_parts_that_compute_the_same(monkeypatch):
    args = _args()
    _settings(monkeypatch, WHOLE)
    whole = make_step()(*args)
    _settings(monkeypatch, SMALL)
    exe = make_step().lower(*args)
    parts = re.findall(r"^func @(\w+_part\d+)\(", exe.optimized_ir, re.M)
    assert len(parts) >= 4, exe.optimized_ir
    _assert_same(exe(*args), whole)
    _assert_same(exe.interpret(*args, optimized=True), whole)  # the cut IR itself, by the reference interpreter
    # the continuations of the loop stay with the part that makes them: a part is one C function
    assert all(f"void fn_{p}(" in exe.c_source for p in parts)


def test_large_modules_compile_as_units_linked_into_one_object(monkeypatch, capfd, fresh_cache):
    args = _args()
    _settings(monkeypatch, {**SMALL, "LANTERN_LOG_COMPILES": "1", "LANTERN_TRACE_CACHE": "off"})
    exe = make_step().lower(*args)
    units = exe.native.source.units
    assert len(units) >= 3
    for k, unit in enumerate(units):
        assert f"#define LANTERN_UNIT {k}\n" in unit.text
        assert ("lantern_entry(" in unit.text) == (k == 0)  # the exported entry points: unit 0's
    assert units[0].glue and not all(u.glue for u in units)  # the entry only calls the parts
    stages = dict(exe.compile_stages)
    assert {f"cc unit {k}" for k in range(len(units))} | {"cc link"} <= set(stages)
    assert "cc unit 0" in capfd.readouterr().err  # LANTERN_LOG_COMPILES prints them
    _settings(monkeypatch, WHOLE)
    whole = make_step()(*args)
    _assert_same(exe(*args), whole)
    # the whole module is also one C file that compiles by itself (what people read, what the fuzzer rebuilds)
    one_file = recompile_native(exe.native, "one file", ["-O1"])
    _assert_same(_call(one_file, exe, args), whole)


def _call(native, exe, args):
    """Run another build of ``exe``'s code with ``args`` (same calling convention)."""
    swapped = exe.native
    exe.native = native
    try:
        return exe(*args)
    finally:
        exe.native = swapped


def test_runtime_state_is_shared_by_the_units(monkeypatch):
    """An index error raised in a part compiled in another unit unwinds to the entry point in unit 0, with
    its message; the arena those units allocate from is one, and empty after every call."""
    _settings(monkeypatch, SMALL)

    @lantern.stage
    def gather_late(x, w, idx):
        h = x
        for _ in range(8):
            h = lantern.tanh(h @ w)
        return lantern.take(h, idx, axis=0) * 2.0

    x, w = np.ones((4, 3)), np.eye(3) * 0.5
    exe = gather_late.lower(x, w, np.array([0, 3]))
    units = exe.native.source.units
    assert len(units) >= 2 and "lt_index(" not in units[0].text  # the check runs in another unit
    np.testing.assert_allclose(exe(x, w, np.array([0, 3])), gather_late(x, w, np.array([0, 3])))
    with pytest.raises(lantern.OutOfBoundsError, match=r"test_units\.py:\d+: indexing axis 0 of shape "
                       r"\(4, 3\): index 7 is out of bounds for an axis of size 4"):
        exe(x, w, np.array([0, 7]))
    good = exe(x, w, np.array([1, 2]))
    assert np.all(np.isfinite(good)) and exe.native.arena_in_use() == 0


def test_an_edit_recompiles_only_the_units_it_changes(monkeypatch, fresh_cache):
    monkeypatch.setenv("LANTERN_TRACE_CACHE", "off")
    _settings(monkeypatch, SMALL)
    args = _args()
    before = lantern.cache_stats()["compiles"]
    first = make_step(2.0).lower(*args)
    made = lantern.cache_stats()["compiles"] - before
    assert made == len(first.native.source.units) + 1  # every unit, then the link
    second = make_step(3.0).lower(*args)  # the last part's constant changes, nothing else
    changed = [a.text != b.text for a, b in zip(first.native.source.units, second.native.source.units)]
    assert sum(changed) == 1, changed
    assert lantern.cache_stats()["compiles"] - before - made == 2  # that unit, and the link
    np.testing.assert_allclose(second(*args)[0], first(*args)[0] * 1.5, rtol=1e-12)


@pytest.mark.parametrize("flags, lowered", [
    (("-O3", "-march=native"), ("-O3", "-march=native", "-O1")),
    (("-O2", "-g"), ("-O2", "-g", "-O1")),
    (("-O0",), ("-O0",)),
    (("-O3", "-Og"), ("-O3", "-Og")),
    (("-march=native",), ("-march=native",)),  # (no -O: -O0)
])
def test_glue_compiles_at_most_at_O1(flags, lowered):
    assert Toolchain(("cc",), flags).at_most_O1().flags == lowered


def test_cuts_keep_a_reduction_with_the_value_it_adds_up(monkeypatch):
    """A global norm is a square and a sum per weight: however small the parts, no cut falls between the
    two, so every square is computed in its sum's loop."""
    _settings(monkeypatch, SMALL)

    @lantern.stage
    def norm(ws):
        return lantern.sqrt(sum(lantern.sum(lantern.tanh(w) * w) for w in ws))

    ws = [np.full((3, 4), 0.1 * k) for k in range(12)]
    exe = norm.lower(ws)
    assert len(re.findall(r"^func @norm_part\d+\(", exe.optimized_ir, re.M)) >= 3
    assert exe.lowered.count("computed in the loop of the reduction that reads it") == 12
    np.testing.assert_allclose(exe(ws), np.sqrt(sum(np.sum(np.tanh(w) * w) for w in ws)), rtol=1e-12)
