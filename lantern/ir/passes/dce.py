"""Dead-code elimination: drop pure statements whose results nobody reads."""
from __future__ import annotations

import dataclasses

from ..analysis import has_effects
from ..nodes import Block, Function, If, Module, Stmt, walk_stmts
from ..rewrite import with_blocks


def _prune(block: Block, live: set[int]) -> Block:
    """Keep what ``block``'s results (and ``live``, ids needed after it) depend on."""
    needed = set(live) | {r.id for r in block.results}
    kept: list[Stmt] = []
    for stmt in reversed(block.stmts):
        if not has_effects(stmt) and not any(o.id in needed for o in stmt.outs):
            continue
        if isinstance(stmt, If) and not all(o.id in needed for o in stmt.outs):
            stmt = _drop_outputs(stmt, [k for k, o in enumerate(stmt.outs) if o.id in needed])
        # Nested blocks: their own results are always needed (the statement's outs read them).
        inner = [_prune(b, needed) for b in stmt.blocks()]
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
    return Module({name: Function(name, _prune(fn.body, set()), fn.result_types, fn.loc)
                   for name, fn in module.functions.items()}, module.entry)
