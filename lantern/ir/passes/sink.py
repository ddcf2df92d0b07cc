"""Fills made where they are first needed: a gradient's zero-filled adjoint buffer is made right before
the first statement that adds to it or reads it, not beside the forward value it belongs to (AD emits it
there), so it takes no memory during the forward part (``codegen/memory_plan.py`` frees buffers after
their last use; this makes them late)."""
from __future__ import annotations

from ..analysis import reads
from ..nodes import Accumulate, Function, Module, Op, Stmt
from ..rewrite import map_blocks


def _is_fill(s: Stmt) -> bool:
    return isinstance(s, Op) and s.prim == "fill"


def _sink(stmts: list[Stmt]) -> list[Stmt]:
    # A value added whole to a buffer may be computed straight into it (codegen/lowering.py): the buffer
    # must exist before the value's producer, too.
    added_to = {s.value.id: s.target.id for s in stmts if isinstance(s, Accumulate) and s.index is None}
    waiting: dict[int, Stmt] = {}  # fill's result id -> the fill, in program order
    out: list[Stmt] = []
    for s in stmts:
        if _is_fill(s):
            waiting[s.outs[0].id] = s
            continue
        if waiting:
            needed = {v.id for v in reads(s)} | {added_to[o.id] for o in s.outs if o.id in added_to}
            for vid in [vid for vid in waiting if vid in needed]:
                out.append(waiting.pop(vid))
        out.append(s)
    return out + list(waiting.values())  # (read by the block's results only)


def fills_where_needed(module: Module) -> Module:
    """Each ``fill`` moved down to just before the first statement of its block that reads it."""
    return Module({name: Function(name, map_blocks(fn.body, _sink), fn.result_types, fn.loc)
                   for name, fn in module.functions.items()}, module.entry)
