"""Helpers passes use to rebuild IR: copying statements with renamed variables."""
from __future__ import annotations

import dataclasses
from typing import Callable

from .analysis import updated_in_place
from .nodes import (Accumulate, Apply, Block, Call, Function, Fused, If, Lambda, Loop, Module, Op, Stmt, Var, While,
                    walk_stmts)
from .primitives import infer

Subst = dict[int, Var]


def fresh(v: Var) -> Var:
    return Var(v.type, v.hint)


def with_operands(stmt: Stmt, f: Callable[[Var], Var]) -> Stmt:
    """A shallow copy of ``stmt`` whose direct operands are mapped through ``f``."""
    match stmt:
        case Op() | Call():
            return dataclasses.replace(stmt, args=[f(a) for a in stmt.args])
        case If():
            return dataclasses.replace(stmt, pred=f(stmt.pred))
        case Loop():
            return dataclasses.replace(stmt, lo=f(stmt.lo), hi=f(stmt.hi), init=[f(a) for a in stmt.init])
        case While():
            return dataclasses.replace(stmt, init=[f(a) for a in stmt.init])
        case Fused():
            return dataclasses.replace(stmt, inputs=[f(a) for a in stmt.inputs])
        case Apply():
            return dataclasses.replace(stmt, fn=f(stmt.fn), args=[f(a) for a in stmt.args])
        case Accumulate():
            return dataclasses.replace(stmt, target=f(stmt.target), value=f(stmt.value),
                                       index=f(stmt.index) if stmt.index is not None else None)
        case Lambda():
            return dataclasses.replace(stmt)
    raise TypeError(f"unknown statement {type(stmt).__name__}")


def with_blocks(stmt: Stmt, blocks: list[Block]) -> Stmt:
    """A shallow copy of ``stmt`` with its nested blocks replaced (same order as ``stmt.blocks()``)."""
    match stmt:
        case If():
            return dataclasses.replace(stmt, then_block=blocks[0], else_block=blocks[1])
        case Loop() | Fused() | Lambda():
            return dataclasses.replace(stmt, body=blocks[0])
        case While():
            return dataclasses.replace(stmt, cond=blocks[0], body=blocks[1])
    assert not blocks
    return stmt


def map_blocks(block: Block, f: Callable[[list[Stmt]], list[Stmt]]) -> Block:
    """Rebuild ``block`` bottom-up: nested blocks first, then ``f`` on each statement list."""
    stmts = [with_blocks(s, [map_blocks(b, f) for b in s.blocks()]) for s in block.stmts]
    return Block(list(block.params), f(stmts), list(block.results))


def rewrite_ops(module: Module, rewrite: Callable[[Stmt, dict[int, Op]], list[Stmt]]) -> Module:
    """Each statement ``s`` of each function replaced by ``rewrite(s, defs)``, which may read the Op defining
    any variable of that function (``defs``, by id, as before the rewrite)."""
    functions = {}
    for name, fn in module.functions.items():
        defs = {o.id: s for s in walk_stmts(fn.body) if isinstance(s, Op) for o in s.outs}
        body = map_blocks(fn.body, lambda stmts: [new for s in stmts for new in rewrite(s, defs)])
        functions[name] = Function(name, body, fn.result_types, fn.loc)
    return Module(functions, module.entry)


LoopRewrite = Callable[[Stmt, set[int], set[int]], list[Stmt]]


def rewrite_in_loops(module: Module, rewrite: LoopRewrite) -> Module:
    """Each statement ``s`` of a loop body (at any depth inside it, not in nested loops' own bodies, which
    are theirs) replaced by ``rewrite(s, varying, updated)``: ``varying``, what the innermost loop's body
    defines before ``s`` (its parameters included); ``updated``, the function's buffers updated in place.
    A value in neither is the same on every iteration."""
    functions = {}
    for name, fn in module.functions.items():
        body = _in_loops(fn.body, rewrite, updated_in_place(fn.body), None)
        functions[name] = Function(name, body, fn.result_types, fn.loc)
    return Module(functions, module.entry)


def _in_loops(block: Block, rewrite: LoopRewrite, updated: set[int], varying: set[int] | None) -> Block:
    """``varying``: what the innermost enclosing loop's body defines (None outside loops)."""
    stmts: list[Stmt] = []
    inner = None if varying is None else set(varying) | {p.id for p in block.params}
    for stmt in block.stmts:
        if isinstance(stmt, (Loop, While)):
            new = [with_blocks(stmt, [_in_loops(b, rewrite, updated, set()) for b in stmt.blocks()])]
        else:
            stmt = with_blocks(stmt, [_in_loops(b, rewrite, updated, inner) for b in stmt.blocks()])
            new = [stmt] if inner is None else rewrite(stmt, inner, updated)
        if inner is not None:
            inner.update(o.id for s in new for o in s.outs)
        stmts.extend(new)
    return Block(list(block.params), stmts, list(block.results))


class StmtEmitter:
    """New operations at a statement's place (its source location), collected in ``stmts``; each is also
    entered in ``defs`` when given, so later rules recognise what was made."""

    def __init__(self, at: Stmt, defs: dict[int, Op] | None = None):
        self.at, self.defs = at, defs
        self.stmts: list[Stmt] = []

    def __call__(self, prim: str, args: list[Var], hint: str, **attrs) -> Var:
        v = Var(infer(prim, [a.type for a in args], attrs), hint)
        op = Op([v], loc=self.at.loc, prim=prim, args=args, attrs=attrs)
        self.stmts.append(op)
        if self.defs is not None:
            self.defs[v.id] = op
        return v


InlineHook = Callable[[Call, list[Var]], tuple[list[Stmt], list[Var]] | None]


def clone_block(block: Block, subst: Subst, inline: InlineHook | None = None, rename: bool = True) -> Block:
    """Copy ``block``; with ``rename``, everything it defines gets a fresh variable.

    ``subst`` maps ids of free variables to their replacements and is extended with the
    copies. ``inline`` may replace a ``Call`` by statements plus the values of its results.
    Without ``rename`` the copy keeps the original variables (for a block that is copied
    once, so names in the output stay those of the input).
    """
    def get(v: Var) -> Var:
        return subst.get(v.id, v)

    def define(v: Var) -> Var:
        subst[v.id] = fresh(v) if rename else v
        return subst[v.id]

    params = [define(p) for p in block.params]
    stmts: list[Stmt] = []
    for stmt in block.stmts:
        if inline is not None and isinstance(stmt, Call):
            replaced = inline(stmt, [get(a) for a in stmt.args])
            if replaced is not None:
                body, results = replaced
                stmts.extend(body)
                for o, r in zip(stmt.outs, results):
                    subst[o.id] = r
                continue
        new = with_operands(stmt, get)
        # A lambda's own name is in scope in its body (letrec), so define it first.
        outs = [define(o) for o in stmt.outs] if isinstance(stmt, Lambda) else []
        new = with_blocks(new, [clone_block(b, subst if not isinstance(stmt, Fused) else {}, inline, rename)
                                for b in stmt.blocks()])
        new.outs = outs or [define(o) for o in stmt.outs]
        stmts.append(new)
    return Block(params, stmts, [get(r) for r in block.results])
