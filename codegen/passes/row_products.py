"""Single-row products in loops read a transposed copy of a loop-invariant matrix.

``h @ W.T`` with one row ``h`` is a dot product per column: the generated code then needs a
horizontal sum per output, which costs more than the multiply-adds for the small matrices of
recurrent networks. With ``W.T`` made once before the loop (``hoist_loop_invariants`` moves
the copy out), the product is ``h @ W_t``, computed a row strip at a time with no horizontal
sums: 1.3-3x faster per product (``benchmarks/RESULTS.md``), for one transpose per loop.
"""
from __future__ import annotations

import dataclasses

from lantern.ir.nodes import Module, Op, Stmt, Var
from lantern.ir.primitives import infer
from lantern.ir.rewrite import rewrite_in_loops
from lantern.ir.symbolic import hint

#: Only matrices up to this many elements: the copy must cost less than the products it speeds up.
MAX_COPIED_ELEMENTS = 1 << 16


def row_products_read_transposed(module: Module) -> Module:
    return rewrite_in_loops(module, _in_loop)


def _in_loop(s: Stmt, varying: set[int], updated: set[int]) -> list[Stmt]:
    return _transposed(s) if _qualifies(s, updated, varying) else [s]  # type: ignore[arg-type]


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
