"""Elementwise loops: one op, or a fused chain of them (``Fused``), over the result's shape, with
broadcast operands indexed by their own strides; ``check_finite`` checks each value where it is made."""
from __future__ import annotations

from math import prod
from typing import Callable

from lantern.ir.nodes import Fused, Op, Stmt, Var
from lantern.ir.primitives import PRIMITIVES

from ..c_types import FLOATS, elementwise_expr
from ..cbuilder import c_string, index, strides
from .context import KernelContext


def broadcast_index(idx: list[str], shape: tuple) -> str:
    """The element of an operand of ``shape`` (broadcast against the loop's, aligned right) read at the
    loop indices ``idx`` (one per axis of the loop's shape)."""
    offset = len(idx) - len(shape)
    st = strides(shape)
    return index((idx[offset + k], 0 if shape[k] == 1 else st[k]) for k in range(len(shape)))


def _without_leading_ones(shape: tuple) -> tuple:
    return shape[next((k for k, d in enumerate(shape) if d != 1), len(shape)):]


def elementwise(e: KernelContext, outs: list[Var], inputs: list[Var], params: list[Var], body: list[Stmt],
                results: list[Var]) -> None:
    shape: tuple[int, ...] = body[-1].outs[0].type.shape  # type: ignore[union-attr]
    for o in outs:
        e.declare(o)
    # (one flat loop when every operand has the result's layout, leading axes of 1 aside, or one element)
    flat = all(_without_leading_ones(i.type.shape) == _without_leading_ones(shape) or i.type.size == 1  # type: ignore[union-attr]
               for i in inputs)
    uses: dict[int, int] = {}
    for s in body:
        for a in s.operands():
            uses[a.id] = uses.get(a.id, 0) + 1
    result_of = {r.id: o for r, o in zip(results, outs)}

    def operand(v: Var, index_for: Callable[[Var], str]) -> str:
        if v.id in local:
            return local[v.id]
        src = bound[v.id]
        return e.load(src, index_for(src))

    # check_finite: each floating-point op's value is checked where it is computed, so the
    # report names the op itself, not the end of its fused group.
    checked = {s.outs[0].id: e.finite_where(s.prim, s) for s in body
               if e.m.options.check_finite and s.outs[0].type.dtype in FLOATS  # type: ignore[union-attr]
               and PRIMITIVES[s.prim].may_make_nonfinite}

    def emit_body(index_for: Callable[[Var], str], out_index: str) -> None:
        for s in body:
            assert isinstance(s, Op)
            out = s.outs[0]
            expr = elementwise_expr(s.prim, [a.type.dtype for a in s.args], out.type.dtype,  # type: ignore[union-attr]
                                    [operand(a, index_for) for a in s.args], s.attrs)
            if out.id in result_of and uses.get(out.id, 0) == 0 and out.id not in checked:
                e.store(result_of[out.id], out_index, expr)
                continue
            local[out.id] = e.name(out) if out.id not in result_of else e.name(out) + "_v"
            e.c.line(f"{e.ctype(out)} {local[out.id]} = {expr};")
            if out.id in checked:
                e.c.line(f"if (!isfinite({local[out.id]})) lt_nonfinite({c_string(checked[out.id])}, "
                          f"{local[out.id]}, {out_index});")
            if out.id in result_of:
                e.store(result_of[out.id], out_index, local[out.id])

    local: dict[int, str] = {}
    bound = {p.id: i for p, i in zip(params, inputs)}
    if prod(shape) != 1:
        # One-element operands (a softmax's maximum, a scale) are read once, before the loop: read in it,
        # gcc must assume a store of the loop may change them, and left loops calling the vectorized math
        # functions scalar ("control flow in loop").
        for p_, src in zip(params, inputs):
            value = e.load(src, "0")
            if src.type.size == 1 and "[" in value and p_.id not in local:  # type: ignore[union-attr]  # (a number needs none)
                local[p_.id] = e.c.fresh(f"{e.name(p_)}_once")
                e.c.line(f"const {e.ctype(src)} {local[p_.id]} = {value};")
    if not shape:
        emit_body(lambda v: "0", "0")
    elif flat:
        n = prod(shape)
        e.c.loop('i', n, parallel=True, work=n * len(body))
        emit_body(lambda v: "0" if v.type.size == 1 else "i", "i")  # type: ignore[union-attr]
        e.c.close()
    else:
        out_strides = strides(shape)

        def nest(idx: list[str]) -> None:
            emit_body(lambda v: broadcast_index(idx, v.type.shape), index(zip(idx, out_strides)))  # type: ignore[union-attr]
        e.c.loop_nest(shape, nest, parallel=True, ops=len(body))
    if checked:  # a non-finite value was recorded in the loop (kernels never unwind)
        e.check_status()


def value_at(e: KernelContext, producer: Op | Fused, idx: list[str], loop_shape: tuple) -> str:
    """Emit, where the caller's loop is, the statements of the elementwise ``producer`` (an op, or a fused
    chain) for the element at indices ``idx`` of ``loop_shape``: its own shape, or (when every operand has
    its whole shape or one element) that shape with neighbouring axes merged. Returns its value."""
    if isinstance(producer, Fused):
        inputs, params, body, result = producer.inputs, producer.body.params, producer.body.stmts, producer.body.results[0]
    else:
        inputs, params, body, result = producer.args, producer.args, [producer], producer.outs[0]
    local: dict[int, str] = {}
    bound = {p.id: i for p, i in zip(params, inputs)}
    shape = result.type.shape  # type: ignore[union-attr]

    def operand(v: Var) -> str:
        if v.id in local:
            return local[v.id]
        src = bound[v.id]
        if src.type.size == 1:  # type: ignore[union-attr]
            return e.load(src, "0")
        if src.type.shape == shape:  # type: ignore[union-attr]
            return e.load(src, index(zip(idx, strides(loop_shape))))
        return e.load(src, broadcast_index(idx, src.type.shape))  # type: ignore[union-attr]
    for s in body:
        assert isinstance(s, Op)
        out = s.outs[0]
        local[out.id] = e.name(out)
        e.c.line(f"{e.ctype(out)} {local[out.id]} = "
                 f"{elementwise_expr(s.prim, [a.type.dtype for a in s.args], out.type.dtype, [operand(a) for a in s.args], s.attrs)};")  # type: ignore[union-attr]
    return local[result.id]


def op(e: KernelContext, stmt: Op) -> None:
    """One elementwise op."""
    elementwise(e, stmt.outs, stmt.args, stmt.args, [stmt], stmt.outs)


def fused(e: KernelContext, stmt: Fused) -> None:
    """A fused chain of elementwise ops: one loop, intermediate values in registers."""
    elementwise(e, stmt.outs, stmt.inputs, stmt.body.params, stmt.body.stmts, stmt.body.results)
