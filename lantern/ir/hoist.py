"""Loop-invariant data movement: hoist a loop body's copies of values from outside the loop.

``h @ W.T`` inside a loop body transposes ``W`` on every iteration, and its gradient
transposes an adjoint back on every reverse iteration. Moved before the loop, the copy is made
once, the product reads a loop-invariant matrix, and the AD transformation can sum that
matrix's gradient over the iterations in one product (``ad/transform.py``). Only statements
that cannot fail at run time and never fuse into elementwise loops are moved, so a loop that
runs zero times costs at most the copy.
"""
from __future__ import annotations

import dataclasses

from .nodes import Block, Function, Loop, Op, Stmt, While
from .rewrite import with_blocks

#: Primitives moved out of loops when all their operands come from outside.
MOVABLE = frozenset({"transpose", "reshape", "slice", "concatenate"})


def hoist_loop_invariants(fn: Function) -> Function:
    return dataclasses.replace(fn, body=_hoist(fn.body))


def _hoist(block: Block) -> Block:
    stmts: list[Stmt] = []
    for stmt in block.stmts:
        stmt = with_blocks(stmt, [_hoist(b) for b in stmt.blocks()])  # inner loops first
        if isinstance(stmt, (Loop, While)):
            moved, body = _split(stmt.body)
            stmts.extend(moved)
            stmt = dataclasses.replace(stmt, body=body)
        stmts.append(stmt)
    return Block(list(block.params), stmts, list(block.results))


def _split(body: Block) -> tuple[list[Stmt], Block]:
    """The body's movable loop-invariant statements, and the body without them."""
    varying = {p.id for p in body.params}
    moved: list[Stmt] = []
    kept: list[Stmt] = []
    for stmt in body.stmts:
        if isinstance(stmt, Op) and stmt.prim in MOVABLE and not any(a.id in varying for a in stmt.args):
            moved.append(stmt)
        else:
            kept.append(stmt)
            varying.update(o.id for o in stmt.outs)
    return moved, Block(list(body.params), kept, list(body.results))
