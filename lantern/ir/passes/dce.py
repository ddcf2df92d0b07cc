"""Dead-code elimination: drop pure statements whose results nobody reads, and additions into buffers nobody
reads (a loop's stack of a value its backward part turned out not to need)."""
from __future__ import annotations

import dataclasses

from ..analysis import has_effects
from ..nodes import Accumulate, Block, Function, If, Module, Op, Stmt, walk_stmts
from ..rewrite import with_blocks


def _write_only(body: Block) -> set[int]:
    """Zero-filled buffers of this function that only ever have values added into them (``target += value``): nothing
    reads them, not even as a result. Parameters, of the function or of a nested block, never count: a
    lambda's may be its caller's buffer, added into by reference."""
    targets: set[int] = set()
    filled: set[int] = set()  # (only fresh buffers: never a view of another, nor one passed in)
    read: set[int] = {p.id for p in body.params} | {r.id for r in body.results}
    for stmt in walk_stmts(body):
        if isinstance(stmt, Op) and stmt.prim == "fill":
            filled.add(stmt.outs[0].id)
        operands = stmt.operands()
        if isinstance(stmt, Accumulate):
            targets.add(stmt.target.id)
            operands = operands[1:]
        read.update(v.id for v in operands)
        for inner in stmt.blocks():
            read.update(r.id for r in inner.results)
            read.update(p.id for p in inner.params)
    return (targets & filled) - read


def _prune(block: Block, live: set[int], unread: frozenset[int] = frozenset()) -> Block:
    """Keep what ``block``'s results (and ``live``, ids needed after it) depend on; additions into the buffers
    ``unread`` are dropped."""
    needed = set(live) | {r.id for r in block.results}
    kept: list[Stmt] = []
    for stmt in reversed(block.stmts):
        if isinstance(stmt, Accumulate) and stmt.target.id in unread:
            continue
        if not has_effects(stmt) and not any(o.id in needed for o in stmt.outs):
            continue
        if isinstance(stmt, If) and not all(o.id in needed for o in stmt.outs):
            stmt = _drop_outputs(stmt, [k for k, o in enumerate(stmt.outs) if o.id in needed])
        # Nested blocks: their own results are always needed (the statement's outs read them).
        inner = [_prune(b, needed, unread) for b in stmt.blocks()]
        stmt = with_blocks(stmt, inner)
        needed.update(v.id for v in stmt.operands())
        for b in inner:
            needed.update(v.id for s in walk_stmts(b) for v in s.operands())
            needed.update(r.id for r in b.results)
        kept.append(stmt)
    return Block(list(block.params), kept[::-1], list(block.results))


def _drop_outputs(stmt: If, keep: list[int]) -> If:
    """``stmt`` yielding only outputs ``keep``: an If kept for its effects (a gradient's
    accumulations) need not compute a value nobody reads (C warns: set but not used)."""
    def only(b: Block) -> Block:
        return Block(list(b.params), list(b.stmts), [b.results[k] for k in keep])
    return dataclasses.replace(stmt, outs=[stmt.outs[k] for k in keep], then_block=only(stmt.then_block),
                               else_block=only(stmt.else_block))


def eliminate_dead_code(module: Module) -> Module:
    return Module({name: Function(name, _prune(fn.body, set(), frozenset(_write_only(fn.body))), fn.result_types,
                                  fn.loc)
                   for name, fn in module.functions.items()}, module.entry)
