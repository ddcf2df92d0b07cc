"""Single-row products in loops read a transposed copy of a loop-invariant matrix.

``h @ W.T`` with one row ``h`` is a dot product per column: the generated code then needs a
horizontal sum per output, which costs more than the multiply-adds for the small matrices of
recurrent networks. With ``W.T`` made once before the loop (``hoist_loop_invariants`` moves
the copy out), the product is ``h @ W_t``, computed a row strip at a time with no horizontal
sums: 1.3-3x faster per product (``benchmarks/RESULTS.md``), for one transpose per loop.
"""
from __future__ import annotations

import dataclasses

from lantern.ir.nodes import Block, Function, Loop, Module, Op, Stmt, Var, While
from lantern.ir.primitives import infer
from lantern.ir.symbolic import hint
from lantern.ir.rewrite import with_blocks

from lantern.ir.analysis import updated_in_place

#: Only matrices up to this many elements: the copy must cost less than the products it speeds up.
MAX_COPIED_ELEMENTS = 1 << 16


def row_products_read_transposed(module: Module) -> Module:
    functions = {}
    for name, fn in module.functions.items():
        functions[name] = Function(name, _visit(fn.body, updated_in_place(fn.body), None), fn.result_types, fn.loc)
    return Module(functions, module.entry)


def _visit(block: Block, updated: set[int], varying: set[int] | None) -> Block:
    """``varying``: what the innermost enclosing loop's body defines (None outside loops)."""
    stmts: list[Stmt] = []
    inner_varying = None if varying is None else set(varying) | {p.id for p in block.params}
    for stmt in block.stmts:
        if isinstance(stmt, (Loop, While)):
            new = [with_blocks(stmt, [_visit(b, updated, set()) for b in stmt.blocks()])]
        else:
            stmt = with_blocks(stmt, [_visit(b, updated, inner_varying) for b in stmt.blocks()])
            qualifies = inner_varying is not None and _qualifies(stmt, updated, inner_varying)
            new = _transposed(stmt) if qualifies else [stmt]  # type: ignore[arg-type]
        if inner_varying is not None:
            inner_varying.update(o.id for s in new for o in s.outs)
        stmts.extend(new)
    return Block(list(block.params), stmts, list(block.results))


def _qualifies(s: Stmt, updated: set[int], varying: set[int]) -> bool:
    if not (isinstance(s, Op) and s.prim == "matmul" and s.attrs.get("trans_b") and not s.attrs.get("trans_a")):
        return False
    a, b = s.args
    return (a.type.ndim == 2 and a.type.shape[0] == 1 and b.type.ndim == 2  # type: ignore[union-attr]
            and hint(b.type.size) <= MAX_COPIED_ELEMENTS  # type: ignore[union-attr]
            and b.id not in varying and b.id not in updated)


def _transposed(s: Op) -> list[Stmt]:
    a, b = s.args
    attrs = {"perm": (1, 0)}
    bt = Var(infer("transpose", [b.type], attrs), f"{b.hint}_t")  # type: ignore[list-item]
    return [Op([bt], loc=s.loc, prim="transpose", args=[b], attrs=attrs),
            dataclasses.replace(s, args=[a, bt], attrs={k: v for k, v in s.attrs.items() if k != "trans_b"})]
