"""Matrix products in one canonical form, however the user wrote them.

``W @ h`` with a column ``h`` (min-char-rnn's layout), ``h @ W.T`` with a row ``h`` (PyTorch's), a
product with ``W.T`` or ``x.T`` spelled as a transpose, or with a one-hot operand on either side,
reach the kernels, the one-hot gather (``one_hot.py``), the transposed copy of single-row
products in loops (``codegen/passes/row_products.py``) and AD's stacked weight gradients in one
form:

- A transpose of an operand's last two axes becomes the product's ``trans_a``/``trans_b`` flag
  (BLAS and the generated loops read either layout; no copy is made). Also through a row taken
  out of a transposed stack, ``take(moveaxis(X), t)``, the usual ``X[t]`` of a column layout.
- A product with a single result column (``n == 1``: a matrix-vector product ``W @ h``) is
  computed as its transpose, a single row ``h^T @ W^T``. ``[m, 1]`` and ``[1, m]`` are the same
  memory, so this costs two reshapes, and the row form's kernels apply: a dot product per
  output with vectorised partial sums, or, in a loop, a row strip over a transposed copy of
  ``W`` made once. (A column product otherwise runs as a scalar dot-product loop.)
- A product whose right operand is a one-hot matrix read transposed (``W @ one_hot(i).T``,
  ``Wxh @ X[t]`` with ``X`` a column layout of one-hot vectors) is computed as its transpose
  ``one_hot(i) @ W^T`` and transposed back, so ``one_hot_products_as_gathers`` makes it a gather
  of columns of ``W`` (rows of ``W^T``).

Each rewrite gives the same values up to the order of the summation within a dot product.
"""
from __future__ import annotations

import dataclasses
import functools

from ..analysis import updated_in_place
from ..nodes import Module, Op, Stmt, Var
from ..rewrite import StmtEmitter, rewrite_in_loops, rewrite_ops
from ..symbolic import known_equal
from ..types import FLOAT_DTYPES
from .one_hot import one_hot_rows


def canonical_products(module: Module) -> Module:
    # (a transpose is a copy: it is folded into a product only if what it copies is never updated in place)
    updated = set().union(*(updated_in_place(fn.body) for fn in module.functions.values()))
    return rewrite_ops(module, functools.partial(_rewrite, updated=updated))


def _swaps_last_two(perm: tuple[int, ...]) -> bool:
    n = len(perm)
    return n >= 2 and tuple(perm) == tuple(range(n - 2)) + (n - 1, n - 2)


def _untransposed(v: Var, defs: dict[int, Op], emit: StmtEmitter, updated: set[int]) -> tuple[Var, bool]:
    """``(u, True)`` when ``v`` is ``u`` with its last two axes swapped (``v`` is ``transpose(u)``, or row
    ``t`` of a stack whose last two axes are swapped: then ``u`` is row ``t`` of the unswapped stack)."""
    op = defs.get(v.id)
    if op is None:
        return v, False
    if (op.prim == "transpose" and _swaps_last_two(op.attrs["perm"]) and op.args[0].type.ndim in (2, 3)  # type: ignore[union-attr]
            and op.args[0].id not in updated):
        return op.args[0], True
    if op.prim == "take" and op.attrs["axis"] == 0 and op.args[1].type.ndim == 0 and v.type.ndim == 2:  # type: ignore[union-attr]
        stack = defs.get(op.args[0].id)
        if (stack is not None and stack.prim == "transpose" and tuple(stack.attrs["perm"]) == (0, 2, 1)
                and stack.args[0].id not in updated):
            return emit("take", [stack.args[0], op.args[1]], op.outs[0].hint, axis=0), True
    return v, False


def _rewrite(s: Stmt, defs: dict[int, Op], updated: set[int]) -> list[Stmt]:
    if not (isinstance(s, Op) and s.prim == "matmul"):
        return [s]
    emit = StmtEmitter(s, defs)
    a, b = s.args
    ta, tb = bool(s.attrs.get("trans_a")), bool(s.attrs.get("trans_b"))
    a, flip_a = _untransposed(a, defs, emit, updated)
    b, flip_b = _untransposed(b, defs, emit, updated)
    ta, tb = ta != flip_a, tb != flip_b
    out = s.outs[0]
    m, n = out.type.shape[-2:]  # type: ignore[union-attr]
    k = b.type.shape[-1] if tb else b.type.shape[-2]  # type: ignore[union-attr]
    column = known_equal(n, 1) and not (known_equal(m, 1) and tb and not ta)  # (a dot product already is a row form)
    one_hot_right = (tb and b.type.ndim == 2 and a.type.ndim == 2  # type: ignore[union-attr]
                     and one_hot_rows(b, defs) is not None)
    if not (column or one_hot_right):
        if not (flip_a or flip_b):
            return [s]
        return emit.stmts + [dataclasses.replace(s, args=[a, b], attrs={**s.attrs, "trans_a": ta, "trans_b": tb})]
    # out^T = op(b)^T @ op(a)^T: op(b)^T is b itself when read transposed; a single column is a row
    if not tb:
        b = emit("reshape", [b], b.hint, shape=(*b.type.shape[:-2], 1, k))  # type: ignore[union-attr]
    flipped = emit("matmul", [b, a], out.hint, trans_a=False, trans_b=not ta)
    if column or known_equal(m, 1):
        back = Op([out], loc=s.loc, prim="reshape", args=[flipped], attrs={"shape": out.type.shape})  # type: ignore[union-attr]
    else:
        back = Op([out], loc=s.loc, prim="transpose", args=[flipped], attrs={"perm": (1, 0)})
    return emit.stmts + [back]


def column_gathers_as_rows(module: Module) -> Module:
    """In loop bodies, ``W[:, i]`` of a loop-invariant matrix reads row ``i`` of ``W^T`` (AD runs this pass on
    the function it differentiates; ``hoist_loop_invariants`` then makes ``W^T`` once per call).

    The gradient of a column gather is a whole ``W``-sized scatter per iteration; that of a row gather adds
    one row (``Rows``), as for ``W[i]`` and for one-hot products. Only where a gradient is taken: a forward
    pass alone would pay a copy of ``W`` for gathers that are cheap as they are.
    """
    return rewrite_in_loops(module, _column_gather)


def _column_gather(s: Stmt, varying: set[int], updated: set[int]) -> list[Stmt]:
    if (isinstance(s, Op) and s.prim == "take" and s.attrs["axis"] == 1 and s.args[0].type.ndim == 2  # type: ignore[union-attr]
            and s.args[0].type.dtype in FLOAT_DTYPES  # type: ignore[union-attr]
            and s.args[0].id not in varying and s.args[0].id not in updated):
        return _row_gather(s)
    return [s]


def _row_gather(s: Op) -> list[Stmt]:
    """``take(W, i, axis=1)`` as ``take(W^T, i, axis=0)``, with the index axes moved after ``W``'s rows."""
    emit = StmtEmitter(s)
    w, idx = s.args
    wt = emit("transpose", [w], f"{w.hint}_t", perm=(1, 0))
    n = idx.type.ndim  # type: ignore[union-attr]
    if n == 0:
        return emit.stmts + [Op(list(s.outs), loc=s.loc, prim="take", args=[wt, idx], attrs={"axis": 0})]
    rows = emit("take", [wt, idx], s.outs[0].hint, axis=0)
    return emit.stmts + [Op(list(s.outs), loc=s.loc, prim="transpose", args=[rows], attrs={"perm": (n, *range(n))})]
