"""Products with a one-hot matrix become gathers: ``one_hot(i, d) @ W`` is row ``i`` of ``W``.

The one-hot matrix may be reshaped, or a block of a one-hot stack taken by a loop counter
(``X[t]`` with ``X = one_hot(xs)``): its rows are then those of the indices taken the same way.
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

import dataclasses

from ..nodes import Module, Op, Stmt, Var
from ..rewrite import StmtEmitter, rewrite_ops
from ..symbolic import Size, known_equal
from ..types import FLOAT_DTYPES, INT_DTYPES


def one_hot_products_as_gathers(module: Module) -> Module:
    return rewrite_ops(module, _rewrite)


@dataclasses.dataclass
class OneHotRows:
    """A matrix ``[r, d]`` whose memory is ``one_hot(J, d)`` for ``r`` indices ``J``: the rows of a one-hot
    tensor ``cast(eq(indices, iota(d)))``, reshaped, maybe a block of it taken by a loop counter (``X[t]``)."""
    indices: Var                       # the tensor one_hot was made of, ``[..., 1]``
    depth: int
    taken: list[tuple[int, Var]]       # ``take(., t, axis=0)`` of a stack of ``n`` blocks: (n, t), innermost first

    def index_rows(self, emit: StmtEmitter, rows: int | Size) -> Var:
        """``J`` as ``[rows, 1]``, emitted through ``emit``."""
        j = self.indices
        for blocks, t in self.taken:
            j = emit("reshape", [j], "index", shape=(blocks, j.type.size // blocks))  # type: ignore[union-attr]
            j = emit("take", [j, t], "index", axis=0)
        return j if j.type.shape == (rows, 1) else emit("reshape", [j], "index", shape=(rows, 1))  # type: ignore[union-attr]


def one_hot_rows(v: Var, defs: dict[int, Op]) -> OneHotRows | None:
    """How ``v`` (2-D) is made of one-hot rows, or None."""
    if v.type.ndim != 2:  # type: ignore[union-attr]
        return None
    taken: list[tuple[int, Var]] = []
    op = defs.get(v.id)
    while op is not None and op.prim in ("reshape", "take"):
        if op.prim == "take":  # a block of the stack, chosen by a scalar
            stack = op.args[0].type
            if not (op.attrs["axis"] == 0 and op.args[1].type.ndim == 0  # type: ignore[union-attr]
                    and all(isinstance(d, int) for d in stack.shape)):  # type: ignore[union-attr]
                return None
            taken.append((stack.shape[0], op.args[1]))  # type: ignore[union-attr]
        op = defs.get(op.args[0].id)
    eq = defs.get(op.args[0].id) if op is not None and op.prim == "cast" else None
    if eq is None or eq.prim != "eq":
        return None
    depth = v.type.shape[-1]  # type: ignore[union-attr]
    for idx, classes in (eq.args, eq.args[::-1]):
        iota = defs.get(classes.id)
        if (iota is not None and iota.prim == "iota" and iota.attrs["start"] == 0 and iota.attrs["step"] == 1
                and iota.attrs["n"] == depth and idx.type.dtype in INT_DTYPES  # type: ignore[union-attr]
                and idx.type.shape[-1:] == (1,) and known_equal(idx.type.size * depth, eq.outs[0].type.size)  # type: ignore[union-attr]
                and (not taken or all(isinstance(d, int) for d in idx.type.shape))):  # type: ignore[union-attr]
            return OneHotRows(idx, depth, taken[::-1])
    return None


def _rewrite(s: Stmt, defs: dict[int, Op]) -> list[Stmt]:
    if not (isinstance(s, Op) and s.prim == "matmul" and not s.attrs.get("trans_a")
            and all(a.type.ndim == 2 for a in s.args) and s.outs[0].type.dtype in FLOAT_DTYPES):  # type: ignore[union-attr]
        return [s]
    found = one_hot_rows(s.args[0], defs)
    if found is None:
        return [s]
    depth = found.depth
    out, weight = s.outs[0], s.args[1]
    emit = StmtEmitter(s)

    m = out.type.shape[0]  # type: ignore[union-attr]
    idx = found.index_rows(emit, m)
    int_t = idx.type.dtype  # type: ignore[union-attr]
    low = emit("fill", [], "c", value=0, shape=(), dtype=int_t)
    high = emit("fill", [], "c", value=depth - 1, shape=(), dtype=int_t)
    clipped = emit("minimum", [emit("maximum", [idx, low], "clip"), high], "clip")
    row = emit("reshape", [clipped], "row", shape=(m,))
    table = emit("transpose", [weight], "table", perm=(1, 0)) if s.attrs.get("trans_b") else weight
    rows = emit("take", [table, row], "rows", axis=0)
    in_range = emit("eq", [clipped, idx], "in_range")
    zero = emit("fill", [], "c", value=0, shape=(), dtype=out.type.dtype)  # type: ignore[union-attr]
    return emit.stmts + [Op([out], loc=s.loc, prim="where", args=[in_range, rows, zero], attrs={})]
