"""Empty arrays cost no code: an op whose result has no elements, or a product or convolution over an empty
axis (all zeros), becomes a ``fill``; an accumulation of an empty value is dropped. The operands
they read then die in dead-code elimination. (A gather with indices but an empty result stays: its
indices are checked, as NumPy checks them.)

The C kernels leave out loops of extent 1 (the index is 0 there), so a gather with no indices or a
batched product with no batches would otherwise run once and touch element 0 of an empty buffer.
"""
from __future__ import annotations

import numpy as np

from ..nodes import Accumulate, Function, Module, Op, Stmt
from ..rewrite import map_blocks
from ..symbolic import known_equal
from ..types import TensorType


def _zeros_instead(stmt: Op) -> bool:
    t: TensorType = stmt.outs[0].type  # type: ignore[assignment]
    if stmt.prim in ("fill", "constant"):
        return False
    # (a run-time size is not known to be 0: its code must work for every size)
    if stmt.prim == "take" and not known_equal(stmt.args[1].type.size, 0):  # type: ignore[union-attr]
        return False  # its indices are still checked (NumPy raises for a bad index into an empty result)
    if known_equal(t.size, 0):
        return True
    if stmt.prim == "matmul":
        a: TensorType = stmt.args[0].type  # type: ignore[assignment]
        return known_equal(a.shape[-2 if stmt.attrs.get("trans_a") else -1], 0)
    if stmt.prim.startswith("conv2d"):  # each result element sums products of one element of each operand
        return any(known_equal(v.type.size, 0) for v in stmt.args)  # type: ignore[union-attr]
    return False


def _rewrite(stmts: list[Stmt]) -> list[Stmt]:
    out: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Accumulate) and known_equal(s.value.type.size, 0):  # type: ignore[union-attr]
            continue
        if isinstance(s, Op) and _zeros_instead(s):
            t: TensorType = s.outs[0].type  # type: ignore[assignment]
            s = Op(list(s.outs), prim="fill", args=[], loc=s.loc,
                   attrs={"value": np.zeros((), t.dtype).item(), "shape": t.shape, "dtype": t.dtype})
        out.append(s)
    return out


def empty_values_as_fills(module: Module) -> Module:
    functions = {name: Function(name, map_blocks(fn.body, _rewrite), fn.result_types, fn.loc)
                 for name, fn in module.functions.items()}
    return Module(functions, module.entry)
