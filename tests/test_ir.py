"""The IR itself: verifier, printer, reference interpreter, and the passes that prepare it for C."""
import numpy as np
import pytest

import lantern
from lantern.codegen import prepare
from lantern.ir.passes import eliminate_dead_code, fuse_elementwise, inline_calls
from lantern.errors import IRVerificationError
from lantern.ir import (Accumulate, Apply, Block, FnType, Function, Fused, If, Lambda, Module, Op, TensorType, Var,
                        format_module, interpret, verify)
from lantern.ir.nodes import Call, walk_stmts

F3 = TensorType((3,), "float64")
S = TensorType((), "float64")
B = TensorType((), "bool")


def op(prim, args, out_type, **attrs):
    out = Var(out_type, prim)
    return out, Op([out], prim=prim, args=args, attrs=attrs)


def module_of(params, stmts, results, result_types=None):
    fn = Function("f", Block(params, stmts, results), tuple(result_types or [r.type for r in results]))
    return Module({"f": fn}, "f")


def test_verifier_accepts_a_well_formed_function():
    x = Var(F3, "x")
    y, s1 = op("exp", [x], F3)
    z, s2 = op("add", [x, y], F3)
    verify(module_of([x], [s1, s2], [z]))


def test_verifier_rejects_double_assignment():
    x = Var(F3, "x")
    y, s1 = op("exp", [x], F3)
    s2 = Op([y], prim="exp", args=[x])
    with pytest.raises(IRVerificationError, match="assigned twice"):
        verify(module_of([x], [s1, s2], [y]))


def test_verifier_rejects_use_before_definition_and_out_of_scope():
    x = Var(F3, "x")
    y, s1 = op("exp", [x], F3)
    z, s2 = op("add", [x, y], F3)
    with pytest.raises(IRVerificationError, match="out of scope"):
        verify(module_of([x], [s2, s1], [z]))
    # A value defined in a branch is not visible after the If.
    p = Var(B, "p")
    inner, s_inner = op("exp", [x], F3)
    out = Var(F3, "out")
    branch = If([out], pred=p, then_block=Block([], [s_inner], [inner]), else_block=Block([], [], [x]))
    w, s3 = op("add", [inner, x], F3)
    with pytest.raises(IRVerificationError, match="out of scope"):
        verify(module_of([x, p], [branch, s3], [w]))


def test_verifier_rejects_ill_typed_ops_and_branch_mismatch():
    x = Var(F3, "x")
    bad = Var(TensorType((4,), "float64"), "bad")
    with pytest.raises(IRVerificationError, match="result"):
        verify(module_of([x], [Op([bad], prim="exp", args=[x])], [bad]))
    p = Var(B, "p")
    out = Var(F3, "out")
    s = Var(S, "s")
    branch = If([out], pred=p, then_block=Block([], [], [x]), else_block=Block([], [], [s]))
    with pytest.raises(IRVerificationError, match="branch results"):
        verify(module_of([x, p, s], [branch], [out]))


def test_verifier_checks_fused_bodies_are_closed():
    x = Var(F3, "x")
    p = Var(F3, "p")
    y, s1 = op("add", [p, x], F3)  # reads x, which is not a parameter of the fused body
    out = Var(F3, "out")
    fused = Fused([out], inputs=[x], body=Block([p], [s1], [y]))
    with pytest.raises(IRVerificationError, match="out of scope"):
        verify(module_of([x], [fused], [out]))


def test_lambda_apply_and_accumulate_in_the_interpreter():
    # k = lambda v: v * x  (captures x); acc = zeros; acc += k(y); acc += y
    x, y = Var(F3, "x"), Var(F3, "y")
    v = Var(F3, "v")
    kv, s_mul = op("mul", [v, x], F3)
    k = Var(FnType((F3,), (F3,)), "k")
    lam = Lambda([k], body=Block([v], [s_mul], [kv]))
    applied = Var(F3, "applied")
    app = Apply([applied], fn=k, args=[y])
    acc, s_zero = op("fill", [], F3, value=0.0, shape=(3,), dtype="float64")
    m = module_of([x, y], [lam, app, s_zero, Accumulate([], target=acc, value=applied),
                           Accumulate([], target=acc, value=y)], [acc])
    verify(m)
    text = format_module(m)
    assert "lambda" in text and "apply %k" in text and "+= %applied" in text
    xv, yv = np.array([1.0, 2, 3]), np.array([4.0, 5, 6])
    (result,) = interpret(m, [xv, yv])
    np.testing.assert_allclose(result, xv * yv + yv)


def test_verifier_rejects_apply_with_wrong_argument_types():
    k = Var(FnType((F3,), (F3,)), "k")
    v = Var(F3, "v")
    lam = Lambda([k], body=Block([v], [], [v]))
    s = Var(S, "s")
    out = Var(F3, "out")
    with pytest.raises(IRVerificationError, match="apply arguments"):
        verify(module_of([s], [lam, Apply([out], fn=k, args=[s])], [out]))


def _staged_module(fn, *args):
    return lantern.stage(fn).lower(*args).traced_module


def test_fusion_makes_one_loop_of_an_elementwise_chain():
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    b = np.arange(4.0)
    m = _staged_module(lambda x, b: lantern.sigmoid(lantern.tanh(x * 2.0 + b) - 1.0) * x, x, b)
    fused = fuse_elementwise(m)
    verify(fused)
    stmts = list(walk_stmts(fused.entry_function.body))
    top = [s for s in fused.entry_function.body.stmts if not (isinstance(s, Op) and s.prim == "fill")]
    assert len(top) == 1 and isinstance(top[0], Fused), format_module(fused)
    assert len([s for s in stmts if isinstance(s, Op) and s.prim in ("tanh", "sigmoid", "add", "mul", "sub")]) == 6
    (expected,) = interpret(m, [x, b])
    (got,) = interpret(fused, [x, b])
    np.testing.assert_allclose(got, expected)


def test_fusion_stops_at_a_reduction_and_materializes_shared_values():
    x = np.linspace(-1, 1, 12).reshape(3, 4)

    def f(x):
        e = lantern.exp(x - 1.0)
        s = e.sum(axis=1, keepdims=True)
        return e / s, e * 2.0

    m = prepare(_staged_module(f, x))
    fused = [s for s in m.entry_function.body.stmts if isinstance(s, Fused)]
    # The reduction closes the exp group: e is stored once and read by three consumers;
    # nothing after the reduction joins the closed group.
    assert len(fused) == 1 and [o.hint for o in fused[0].outs] == ["e"], format_module(m)  # named after the local
    readers = [s for s in m.entry_function.body.stmts if fused[0].outs[0] in s.operands()]
    assert len(readers) == 3
    got = interpret(m, [x])
    e = np.exp(x - 1.0)
    np.testing.assert_allclose(got[0], e / e.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got[1], e * 2.0)


def test_dead_code_is_removed():
    x = np.ones(3)

    def f(x):
        lantern.exp(x) @ lantern.exp(x)  # unused
        return x + 1.0

    m = eliminate_dead_code(_staged_module(f, x))
    prims = [s.prim for s in walk_stmts(m.entry_function.body) if isinstance(s, Op)]
    assert "matmul" not in prims and "exp" not in prims


def test_dead_code_includes_buffers_only_added_into():
    """A zero-filled buffer nothing reads (a loop's stack of a value its backward part does not need) goes with
    every addition into it; one read later, a parameter, and a lambda's parameter (its caller's buffer) stay."""
    x = Var(F3, "x")
    stack, s1 = op("fill", [], TensorType((4, 3), "float64"), value=0, shape=(4, 3), dtype="float64")
    kept, s2 = op("fill", [], F3, value=0, shape=(3,), dtype="float64")
    i, s3 = op("fill", [], TensorType((), "int64"), value=1, shape=(), dtype="int64")
    lam_param = Var(F3, "bar")
    lam = Var(FnType((F3,), ()), "k")
    lam_stmt = Lambda([lam], body=Block([lam_param], [Accumulate([], target=lam_param, value=x)], []))
    applied, s4 = op("fill", [], F3, value=0, shape=(3,), dtype="float64")
    stmts = [s1, s2, s3, Accumulate([], target=stack, value=x, index=i), Accumulate([], target=kept, value=x),
             Accumulate([], target=x, value=x), lam_stmt, s4, Apply([], fn=lam, args=[applied]),
             Accumulate([], target=applied, value=x)]
    m = eliminate_dead_code(module_of([x], stmts, [kept], [F3]))
    verify(m)
    left = list(walk_stmts(m.entry_function.body))
    targets = [s.target for s in left if isinstance(s, Accumulate)]
    assert stack not in targets and all(stack not in s.outs for s in left)
    assert kept in targets and x in targets and lam_param in targets  # (applied: its additions are read by no one)
    np.testing.assert_allclose(interpret(m, [np.ones(3)])[0], np.ones(3))


def test_inlining_keeps_only_recursive_calls():
    @lantern.stage
    def helper(x):
        return x * 2.0

    @lantern.stage
    def down(n, x):
        return lantern.cond(n <= 0, lambda: x, lambda: down(n - 1, helper(x)))

    m = _staged_module(down, np.int64(3), np.ones(2))
    assert {"down", "helper"} <= {n.split("_")[0] for n in m.functions}
    inlined = inline_calls(m)
    verify(inlined)
    calls = [s.fn for fn in inlined.functions.values() for s in walk_stmts(fn.body) if isinstance(s, Call)]
    assert calls and all(c.startswith("down") for c in calls)
    assert not any(n.startswith("helper") for n in inlined.functions)
    np.testing.assert_allclose(interpret(inlined, [np.int64(3), np.ones(2)])[0], np.full(2, 8.0))


def test_printer_shows_types_locations_and_structure():
    x = np.ones((2, 3), np.float32)
    text = lantern.stage(lambda x: lantern.fori_loop(0, 3, lambda i, c: c + x, x)).lower(x).ir
    assert "f32[2,3]" in text and "for %i_" in text and "test_ir.py:" in text and "yield" in text


def test_every_statement_records_the_user_line():
    x = np.ones(3)

    def f(x):
        y = lantern.exp(x)
        return lantern.cond(y.sum() > 1, lambda: y * 2.0, lambda: y)

    m = _staged_module(f, x)
    locs = {s.loc.line for s in walk_stmts(m.entry_function.body)}
    assert 0 not in locs
    assert all(s.loc.file.endswith("test_ir.py") for s in walk_stmts(m.entry_function.body))
