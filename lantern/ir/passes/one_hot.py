"""Products with a one-hot matrix become gathers: ``one_hot(i, d) @ W`` is row ``i`` of ``W``.

A character model's input layer (``nn.LSTMCell`` on ``one_hot(x, vocab)``, as in the
benchmarks) otherwise multiplies a matrix that is all zeros but one entry per row, reading
all of ``W`` each step; its gradient is then a full outer product. As a gather it reads one
row, and AD turns it into adding one row of the adjoint. The result is the same: row ``i``
of ``W`` where ``0 <= i < d`` (``one_hot`` checks its indices; with ``check_indices`` off an
index out of range is a zero row in both); it differs only where ``W`` holds an Inf or NaN outside the row taken, which the
product would have spread (``0 * inf``). ``W`` read transposed (``nn.linear``) is gathered
from its transpose, which ``hoist_loop_invariants`` then makes once per loop, not per step.
"""
from __future__ import annotations

from ..nodes import Function, Module, Op, Stmt, Var, walk_stmts
from ..primitives import infer
from ..rewrite import map_blocks
from ..types import FLOAT_DTYPES, INT_DTYPES


def one_hot_products_as_gathers(module: Module) -> Module:
    functions = {}
    for name, fn in module.functions.items():
        defs = {o.id: s for s in walk_stmts(fn.body) if isinstance(s, Op) for o in s.outs}
        body = map_blocks(fn.body, lambda stmts: [new for s in stmts for new in _rewrite(s, defs)])
        functions[name] = Function(name, body, fn.result_types, fn.loc)
    return Module(functions, module.entry)


def _one_hot(v: Var, defs: dict[int, Op]) -> tuple[Var, int] | None:
    """``(i, d)`` when ``v`` is ``cast(eq(i, iota(d)))``, maybe reshaped with the last axis kept:
    a one-hot matrix ``[m, d]`` of the indices ``i`` (shape ``[..., 1]``, ``m`` of them)."""
    op = defs.get(v.id)
    while op is not None and op.prim == "reshape" and op.args[0].type.shape[-1:] == v.type.shape[-1:]:  # type: ignore[union-attr]
        op = defs.get(op.args[0].id)
    eq = defs.get(op.args[0].id) if op is not None and op.prim == "cast" else None
    if eq is None or eq.prim != "eq":
        return None
    for idx, classes in (eq.args, eq.args[::-1]):
        iota = defs.get(classes.id)
        if (iota is not None and iota.prim == "iota" and iota.attrs["start"] == 0 and iota.attrs["step"] == 1
                and iota.attrs["n"] == v.type.shape[-1] and idx.type.dtype in INT_DTYPES  # type: ignore[union-attr]
                and idx.type.shape[-1:] == (1,) and idx.type.size == v.type.shape[0]):  # type: ignore[union-attr]
            return idx, iota.attrs["n"]
    return None


def _rewrite(s: Stmt, defs: dict[int, Op]) -> list[Stmt]:
    if not (isinstance(s, Op) and s.prim == "matmul" and not s.attrs.get("trans_a")
            and all(a.type.ndim == 2 for a in s.args) and s.outs[0].type.dtype in FLOAT_DTYPES):  # type: ignore[union-attr]
        return [s]
    found = _one_hot(s.args[0], defs)
    if found is None:
        return [s]
    idx, depth = found
    out, weight = s.outs[0], s.args[1]
    new: list[Stmt] = []

    def emit(prim: str, args: list[Var], hint: str, **attrs) -> Var:
        v = Var(infer(prim, [a.type for a in args], attrs), hint)
        new.append(Op([v], loc=s.loc, prim=prim, args=args, attrs=attrs))
        return v

    int_t = idx.type.dtype  # type: ignore[union-attr]
    m = out.type.shape[0]  # type: ignore[union-attr]
    if idx.type.shape != (m, 1):  # type: ignore[union-attr]
        idx = emit("reshape", [idx], "index", shape=(m, 1))
    low = emit("fill", [], "c", value=0, shape=(), dtype=int_t)
    high = emit("fill", [], "c", value=depth - 1, shape=(), dtype=int_t)
    clipped = emit("minimum", [emit("maximum", [idx, low], "clip"), high], "clip")
    row = emit("reshape", [clipped], "row", shape=(m,))
    table = emit("transpose", [weight], "table", perm=(1, 0)) if s.attrs.get("trans_b") else weight
    rows = emit("take", [table, row], "rows", axis=0)
    in_range = emit("eq", [clipped, idx], "in_range")
    zero = emit("fill", [], "c", value=0, shape=(), dtype=out.type.dtype)  # type: ignore[union-attr]
    new.append(Op([out], loc=s.loc, prim="where", args=[in_range, rows, zero], attrs={}))
    return new
