"""Loop-invariant data movement: hoist a loop body's copies of values from outside the loop.

``h @ W.T`` inside a loop body transposes ``W`` on every iteration, and its gradient
transposes an adjoint back on every reverse iteration. Moved before the loop, the copy is made
once, the product reads a loop-invariant matrix, and the AD transformation can sum that
matrix's gradient over the iterations in one product (``lantern/ad/transform.py``; AD runs
this pass on the function it differentiates). Only statements that cannot fail at run time
and never fuse into elementwise loops are moved, so a loop that runs zero times costs at most
the copy; nothing that reads a buffer updated in place (an adjoint) moves.
"""
from __future__ import annotations

import dataclasses

from ..analysis import updated_in_place
from ..nodes import Block, Function, Loop, Module, Op, Stmt, While
from ..primitives import PRIMITIVES
from ..rewrite import with_blocks

def hoist_loop_invariants(module: Module) -> Module:
    functions = {}
    for name, fn in module.functions.items():
        functions[name] = Function(name, _hoist(fn.body, updated_in_place(fn.body)), fn.result_types, fn.loc)
    return Module(functions, module.entry)


def _hoist(block: Block, updated: set[int]) -> Block:
    stmts: list[Stmt] = []
    for stmt in block.stmts:
        stmt = with_blocks(stmt, [_hoist(b, updated) for b in stmt.blocks()])  # inner loops first
        if isinstance(stmt, (Loop, While)):
            moved, body = _split(stmt.body, updated)
            stmts.extend(moved)
            stmt = dataclasses.replace(stmt, body=body)
        stmts.append(stmt)
    return Block(list(block.params), stmts, list(block.results))


def _split(body: Block, updated: set[int]) -> tuple[list[Stmt], Block]:
    """The body's movable loop-invariant statements, and the body without them."""
    varying = {p.id for p in body.params} | updated
    moved: list[Stmt] = []
    kept: list[Stmt] = []
    for stmt in body.stmts:
        if isinstance(stmt, Op) and PRIMITIVES[stmt.prim].hoistable and not any(a.id in varying for a in stmt.args):
            moved.append(stmt)
        else:
            kept.append(stmt)
            varying.update(o.id for o in stmt.outs)
    return moved, Block(list(body.params), kept, list(body.results))
