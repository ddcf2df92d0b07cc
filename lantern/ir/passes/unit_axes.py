"""Reductions over axes of extent 1 are reshapes: each result element is its one operand element.

A batch-1 model's bias gradient (``sum(g, axis=0)`` of a ``[1, n]`` adjoint) otherwise ran as a reduction
each step: an accumulator array, three loops and a free. Only where the result keeps the operand's dtype
(an integer or boolean sum widens).
"""
from __future__ import annotations

from ..nodes import Function, Module, Op, Stmt
from ..rewrite import map_blocks
from ..symbolic import known_equal

#: reductions whose value over one element is that element
_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod")


def _rewrite(stmts: list[Stmt]) -> list[Stmt]:
    out: list[Stmt] = []
    for s in stmts:
        if (isinstance(s, Op) and s.prim in _REDUCTIONS
                and s.outs[0].type.dtype == s.args[0].type.dtype  # type: ignore[union-attr]
                and all(known_equal(s.args[0].type.shape[a], 1) for a in s.attrs["axes"])):  # type: ignore[union-attr]
            s = Op(list(s.outs), prim="reshape", args=[s.args[0]], loc=s.loc,
                   attrs={"shape": s.outs[0].type.shape})  # type: ignore[union-attr]
        out.append(s)
    return out


def unit_reductions_as_reshapes(module: Module) -> Module:
    functions = {name: Function(name, map_blocks(fn.body, _rewrite), fn.result_types, fn.loc)
                 for name, fn in module.functions.items()}
    return Module(functions, module.entry)
