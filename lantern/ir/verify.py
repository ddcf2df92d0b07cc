"""The IR verifier: types, scopes and single assignment. Tests run it after every pass."""
from __future__ import annotations

from ..errors import IRVerificationError
from .nodes import Accumulate, Apply, Block, Call, Function, Fused, If, Lambda, Loop, Module, Op, Stmt, Var, While
from .primitives import ELEMENTWISE, PRIMITIVES
from .symbolic import shape_key
from .types import FnType, TensorType, scalar


def _fail(where: str, msg: str) -> None:
    raise IRVerificationError(f"{where}: {msg}")


class _Verifier:
    def __init__(self, module: Module):
        self.module = module
        self.assigned: set[int] = set()

    def define(self, v: Var, scope: set[int], where: str) -> None:
        if v.id in self.assigned:
            _fail(where, f"%{v.name} assigned twice")
        self.assigned.add(v.id)
        scope.add(v.id)

    def use(self, v: Var, scope: set[int], where: str) -> None:
        if v.id not in scope:
            _fail(where, f"%{v.name} used out of scope (or before definition)")

    def types_match(self, got: list, expected: list, where: str, what: str) -> None:
        got_t, exp_t = [getattr(x, "type", x) for x in got], [getattr(x, "type", x) for x in expected]
        if got_t != exp_t:
            _fail(where, f"{what}: types {list(map(str, got_t))} != {list(map(str, exp_t))}")

    def block(self, block: Block, outer: set[int], where: str) -> None:
        scope = set(outer)
        for p in block.params:
            self.define(p, scope, where)
        for stmt in block.stmts:
            self.stmt(stmt, scope, f"{where}: {type(stmt).__name__} at {stmt.loc}")
        for r in block.results:
            self.use(r, scope, where + " (results)")

    def stmt(self, stmt: Stmt, scope: set[int], where: str) -> None:
        for v in stmt.operands():
            self.use(v, scope, where)
        outs = [o.type for o in stmt.outs]
        if isinstance(stmt, Op):
            if stmt.prim not in PRIMITIVES:
                _fail(where, f"unknown primitive {stmt.prim}")
            where = f"{where} ({stmt.prim})"
            try:
                expected = PRIMITIVES[stmt.prim].infer([a.type for a in stmt.args], stmt.attrs)
            except Exception as exc:  # a typing rule failing here is an IR bug
                _fail(where, f"ill-typed: {exc}")
            self.types_match(outs, [expected], where, "result")
        elif isinstance(stmt, If):
            if stmt.pred.type != scalar("bool"):
                _fail(where, f"predicate must be bool[], got {stmt.pred.type}")
            for b in stmt.blocks():
                if b.params:
                    _fail(where, "branches take no parameters")
                self.block(b, scope, where)
                self.types_match(b.results, outs, where, "branch results")
        elif isinstance(stmt, Loop):
            for bound in (stmt.lo, stmt.hi):
                if bound.type != scalar("int64"):
                    _fail(where, f"loop bounds must be i64[], got {bound.type}")
            i, *carried = stmt.body.params
            if i.type != scalar("int64"):
                _fail(where, "loop index must be i64[]")
            self.types_match(carried, stmt.init, where, "carried params vs init")
            self.block(stmt.body, scope, where)
            self.types_match(stmt.body.results, stmt.init, where, "body results vs init")
            self.types_match(stmt.outs, stmt.init, where, "outs vs init")
        elif isinstance(stmt, While):
            for b in stmt.blocks():
                self.types_match(b.params, stmt.init, where, "params vs init")
                self.block(b, scope, where)
            self.types_match(stmt.cond.results, [scalar("bool")], where, "condition")
            self.types_match(stmt.body.results, stmt.init, where, "body results vs init")
            self.types_match(stmt.outs, stmt.init, where, "outs vs init")
        elif isinstance(stmt, Fused):
            self.types_match(stmt.body.params, stmt.inputs, where, "params vs inputs")
            # The body may read nothing but its own params: it becomes one closed loop.
            self.block(stmt.body, set(), where)
            self.types_match(stmt.body.results, stmt.outs, where, "results vs outs")
            for inner in stmt.body.stmts:
                if not isinstance(inner, Op) or PRIMITIVES[inner.prim].kind != ELEMENTWISE:
                    _fail(where, "fused bodies hold elementwise ops only")
            shapes = {shape_key(o.type.shape): o.type for s in stmt.body.stmts for o in s.outs}
            if len(shapes) > 1:
                _fail(where, f"fused statements have different shapes {[str(t) for t in shapes.values()]}")
        elif isinstance(stmt, Call):
            fn = self.module.functions.get(stmt.fn)
            if fn is None:
                _fail(where, f"call of unknown function @{stmt.fn}")
            self.types_match(stmt.args, list(fn.param_types), where, f"arguments of @{stmt.fn}")
            self.types_match(stmt.outs, list(fn.result_types or ()), where, f"results of @{stmt.fn}")
        elif isinstance(stmt, Lambda):
            if len(stmt.outs) != 1 or not isinstance(stmt.outs[0].type, FnType):
                _fail(where, "a lambda defines one function value")
            ftype = stmt.outs[0].type
            self.types_match(stmt.body.params, list(ftype.params), where, "lambda params")
            # letrec: the body may apply the lambda itself (a loop in continuation-passing style)
            self.block(stmt.body, scope | {stmt.outs[0].id}, where)
            self.types_match(stmt.body.results, list(ftype.results), where, "lambda results")
        elif isinstance(stmt, Apply):
            ftype = stmt.fn.type
            if not isinstance(ftype, FnType):
                _fail(where, f"apply of a non-function %{stmt.fn.name}")
            self.types_match(stmt.args, list(ftype.params), where, "apply arguments")
            self.types_match(stmt.outs, list(ftype.results), where, "apply results")
        elif isinstance(stmt, Accumulate):
            t, v = stmt.target.type, stmt.value.type
            if not isinstance(t, TensorType) or not isinstance(v, TensorType) or t.dtype != v.dtype:
                _fail(where, f"accumulate: {v} into {t}")
            index = stmt.index
            if index is not None and (index.type.dtype != "int64" or index.type.ndim > 1):  # type: ignore[union-attr]
                _fail(where, f"accumulate: index must be an i64 scalar or vector, got {index.type}")
            rows = (index.type.shape + t.shape[1:]) if index is not None else t.shape  # type: ignore[union-attr]
            if v.shape != rows:
                _fail(where, f"accumulate: value shape {v.shape} does not match {rows}")
        else:
            _fail(where, f"unknown statement {type(stmt).__name__}")
        for o in stmt.outs:
            self.define(o, scope, where)

    def function(self, fn: Function) -> None:
        where = f"@{fn.name}"
        self.block(fn.body, set(), where)
        if fn.result_types is None:
            _fail(where, "result types unknown")
        self.types_match(fn.body.results, list(fn.result_types), where, "returned values")


def verify(module: Module) -> Module:
    """Check ``module``; return it unchanged or raise :class:`IRVerificationError`."""
    if module.entry not in module.functions:
        _fail("module", f"entry @{module.entry} missing")
    v = _Verifier(module)
    for fn in module.functions.values():
        v.function(fn)
    return module
