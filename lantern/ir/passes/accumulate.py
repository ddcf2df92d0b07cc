"""Adjoints that receive one contribution need no buffer: ``z = 0; z += v`` becomes ``z = v``.

Reverse-mode AD gives every active value a zero-initialised adjoint and adds each
contribution to it in place. Most values are used once, so most adjoints receive exactly
one contribution; this pass replaces such a buffer by the contribution itself. That
removes a zero fill and an accumulation loop each, and, since in-place updates are
barriers to fusion, lets the backward elementwise code fuse into single loops.

A buffer qualifies when it is a zero ``fill`` whose only in-place update is one
``Accumulate`` (no index) in the same block, nothing reads it between the two, and
neither it nor the contribution is updated in place or passed by reference anywhere.
"""
from __future__ import annotations

from ..analysis import accumulation_targets, passed_by_reference, reads
from ..nodes import Accumulate, Block, Function, Module, Op, Var
from ..rewrite import with_blocks, with_operands


def _rename(block: Block, subst: dict[int, Var]) -> Block:
    def get(v: Var) -> Var:
        return subst.get(v.id, v)
    stmts = [with_blocks(with_operands(s, get), [_rename(b, subst) for b in s.blocks()]) for s in block.stmts]
    return Block(list(block.params), stmts, [get(r) for r in block.results])


def _simplify(block: Block, counts: dict[int, int], by_reference: set[int], subst: dict[int, Var]) -> Block:
    """One pass in program order, so chains (``a_bar += b_bar``, ``b_bar += v``) collapse too."""
    def get(v: Var) -> Var:
        return subst.get(v.id, v)

    pending: dict[int, int] = {}  # zero buffer -> index of its fill, while nothing has read it
    drop: set[int] = set()
    for j, t in enumerate(block.stmts):
        if isinstance(t, Accumulate) and t.index is None and t.target.id in pending:
            v = get(t.value)
            if counts.get(v.id, 0) == 0 and v.id not in by_reference:
                drop.update((pending.pop(t.target.id), j))
                subst[t.target.id] = v
                counts[t.target.id] = 0  # no longer updated in place: it is v now
                continue
        for v in reads(t):
            pending.pop(v.id, None)  # read before its contribution arrived: keep the buffer
        if (isinstance(t, Op) and t.prim == "fill" and t.attrs["value"] == 0 and counts.get(t.outs[0].id) == 1
                and t.outs[0].id not in by_reference):
            pending[t.outs[0].id] = j
    kept = [s for k, s in enumerate(block.stmts) if k not in drop]
    renamed = _rename(Block(list(block.params), kept, list(block.results)), subst)
    return Block(renamed.params,
                 [with_blocks(s, [_simplify(b, counts, by_reference, subst) for b in s.blocks()]) for s in renamed.stmts],
                 renamed.results)


def forward_single_accumulations(module: Module) -> Module:
    functions = {}
    for name, fn in module.functions.items():
        body = _simplify(fn.body, dict(accumulation_targets(fn.body)), passed_by_reference(fn.body), {})
        functions[name] = Function(name, body, fn.result_types, fn.loc)
    return Module(functions, module.entry)
