"""Reductions over axes of extent 1 are reshapes: each result element is its one operand element.

A batch-1 model's bias gradient (``sum(g, axis=0)`` of a ``[1, n]`` adjoint) otherwise ran as a reduction
each step: an accumulator array, three loops and a free. Only where the result keeps the operand's dtype
(an integer or boolean sum widens).
"""
from __future__ import annotations

from ..nodes import Module, Op, Stmt
from ..rewrite import rewrite_ops
from ..symbolic import known_equal

#: reductions whose value over one element is that element
_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod")


def _rewrite(s: Stmt, defs: dict[int, Op]) -> list[Stmt]:
    if (isinstance(s, Op) and s.prim in _REDUCTIONS
            and s.outs[0].type.dtype == s.args[0].type.dtype  # type: ignore[union-attr]
            and all(known_equal(s.args[0].type.shape[a], 1) for a in s.attrs["axes"])):  # type: ignore[union-attr]
        return [Op(list(s.outs), prim="reshape", args=[s.args[0]], loc=s.loc,
                   attrs={"shape": s.outs[0].type.shape})]  # type: ignore[union-attr]
    return [s]


def unit_reductions_as_reshapes(module: Module) -> Module:
    return rewrite_ops(module, _rewrite)
