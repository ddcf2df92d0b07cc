"""Turn in-place adjoint updates back into values, so a gradient can itself be differentiated.

A first-order gradient holds ``Accumulate`` statements (``x_bar += v``). In straight-line
code each one is equivalent to a new value ``x_bar' = x_bar + v`` that later statements
read instead of ``x_bar``; after this rewrite the IR is pure again and the CPS
transformation applies (``grad(grad(f))``). Updates inside control flow or continuations
are left to a later design and reported as such.
"""
from __future__ import annotations

from ..errors import TraceError
from ..ir.nodes import Accumulate, Apply, Block, Lambda, Op, Stmt, Var, walk_stmts
from ..ir.rewrite import with_operands
from ..ir.types import TensorType
from ..tracing import with_location


def _op(prim: str, args: list[Var], out_type: TensorType, loc, hint: str, **attrs) -> tuple[Var, Op]:
    out = Var(out_type, hint)
    return out, Op([out], loc=loc, prim=prim, args=args, attrs=attrs)


def functionalize(block: Block) -> Block:
    """``block`` with every top-level ``Accumulate`` replaced by an addition (see the module doc)."""
    for s in block.stmts:
        nested = [x for b in s.blocks() for x in walk_stmts(b) if not (isinstance(x, Accumulate) and x.row_store)]
        if isinstance(s, (Lambda, Apply)) or any(isinstance(x, (Accumulate, Lambda, Apply)) for x in nested):
            raise with_location(TraceError, "differentiating a gradient that flows through lantern.cond, a loop "
                                "or recursion is not supported yet (grad of grad works for straight-line code)",
                                s.loc)
    current: dict[int, Var] = {}

    def latest(v: Var) -> Var:
        return current.get(v.id, v)

    stmts: list[Stmt] = []
    for s in block.stmts:
        if not isinstance(s, Accumulate):
            stmts.append(with_operands(s, latest))
            continue
        target, value = latest(s.target), latest(s.value)
        t: TensorType = target.type  # type: ignore[assignment]
        if s.index is not None:  # target[index] += value, as target + scatter_add(rows, positions)
            k = s.index.type.size  # type: ignore[union-attr]
            rows_shape = (k,) + t.shape[1:]
            row, reshape_v = _op("reshape", [value], TensorType(rows_shape, t.dtype), s.loc, "rows", shape=rows_shape)
            idx, reshape_i = _op("reshape", [latest(s.index)], TensorType((k,), "int64"), s.loc, "index", shape=(k,))
            value, scatter = _op("scatter_add", [row, idx], t, s.loc, "update", axis=0, size=t.shape[0])
            stmts += [reshape_v, reshape_i, scatter]
        new, add = _op("add", [target, value], t, s.loc, target.hint)
        stmts.append(add)
        current[s.target.id] = new
    return Block(list(block.params), stmts, [latest(r) for r in block.results])

