"""``argsort`` along one axis: a stable merge sort per row (``lt_argsort_*`` in the runtime header)."""
from __future__ import annotations

from lantern.ir.nodes import Op

from ..c_types import SUFFIX
from ..cbuilder import around_axis
from .context import KernelContext


def argsort(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    e.declare(out)
    xs: tuple[int, ...] = x.type.shape  # type: ignore[union-attr]
    axis = op.attrs["axis"]
    pre, n, inner = around_axis(xs, axis)
    sfx = SUFFIX[x.type.dtype]  # type: ignore[union-attr]
    e.c.open_scope()
    e.m.uses_arena = True
    e.c.line(f"int64_t *order = lt_alloc({2 * n} * sizeof(int64_t)); /* a row's order, and merge space */")
    e.c.loop("p", pre)
    e.c.loop("r", inner)
    e.c.line(f"lt_argsort_{sfx}({e.ptr(x)} + p * {n * inner} + r, {n}, {inner}, {int(op.attrs['descending'])}, "
             f"order, order + {n});")
    e.c.loop("k", n)
    e.store(out, f"(p * {n} + k) * {inner} + r", "order[k]")
    for _ in range(3):
        e.c.close()
    e.c.line(f"lt_free(order, {2 * n} * sizeof(int64_t));")
    e.c.close()
