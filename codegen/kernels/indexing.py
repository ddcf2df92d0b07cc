"""Gathers with staged indices, their adjoint (scatter-add), and in-place accumulation into rows.

With ``check_indices`` a bad index is recorded (``lt_index`` returns -1), the element is skipped,
and the status is checked after the kernel: kernels never unwind."""
from __future__ import annotations

from lantern.ir.nodes import Accumulate, Op

from ..c_types import literal
from lantern.ir.symbolic import known_equal, more_than_one

from ..cbuilder import around_axis, c_string, index
from .context import KernelContext


def take(e: KernelContext, op: Op) -> None:
    x, idx = op.args
    out = op.outs[0]
    e.declare(out)
    axis = op.attrs["axis"]
    xs = x.type.shape  # type: ignore[union-attr]
    pre, n, inner = around_axis(xs, axis)
    m = idx.type.size  # type: ignore[union-attr]
    where = f"{e.where(op)}: indexing axis {axis} of shape {tuple(xs)}"
    if known_equal(out.type.size, 0):  # type: ignore[union-attr]
        if e.m.options.check_indices:  # nothing to copy, but NumPy still checks every index
            e.c.loop('j', m)
            e.c.line(f"(void){e.index_expr('(int64_t)' + e.load(idx, 'j'), n, where)};")
            e.c.close()
            e.check_status()
        return
    # Loops of extent 1 are left out (their index is 0).
    p, j, r = (("p" if more_than_one(pre) else None), ("j" if more_than_one(m) else None),
               ("r" if more_than_one(inner) else None))
    if not (p or j):
        e.c.open_scope()  # keeps `row` local
    elif e.m.options.check_indices:
        _checked_rows(e, x, idx, out, (p, pre), (j, m), (r, inner), n, where)
        return
    for var, extent in ((p, pre), (j, m)):
        if var:
            e.c.loop(f"{var}", extent, parallel=True, work=pre * m * inner)
    guarded = e.staged_row("row", "(int64_t)" + e.load(idx, j or "0"), n, where)
    _copy_row(e, x, out, p, j, r, m, n, inner)
    if guarded and e.storage[out.id].kind == "scalar":  # (the C compiler cannot see that a bad index
        e.c.close("} else {")                              # unwinds before the value is read)
        e.c.depth += 1
        e.store(out, "0", literal(0, out.type.dtype))  # type: ignore[union-attr]
    for _ in range(sum(1 for v in (p, j) if v) + (not (p or j)) + guarded):
        e.c.close()
    if guarded:
        e.check_status()


def _copy_row(e: KernelContext, x, out, p, j, r, m, n, inner) -> None:
    """``out[p, j, :] = x[p, row, :]`` (loop variables that are None are left out: their extent is 1)."""
    if r:
        e.c.loop('r', inner, independent=True)
    terms = lambda *ts: index((v, c) for v, c in ts if v)  # noqa: E731
    e.store(out, terms((p, m * inner), (j, inner), (r, 1)), e.load(x, terms((p, n * inner), ("row", inner), (r, 1))))
    if r:
        e.c.close()


def _checked_rows(e: KernelContext, x, idx, out, p_loop, j_loop, r_loop, n, where: str) -> None:
    """A gather whose indices are checked, in loops that may run on several threads: a bad index is skipped
    and its position noted (the smallest, an OpenMP ``min`` reduction), then recorded after the loops as the
    first one, with the message one thread would have given (``lt_record`` touches per-thread state)."""
    (p, pre), (j, m), (r, inner) = p_loop, j_loop, r_loop
    position = j or "0"
    e.c.open_scope()  # keeps `bad_at` local
    e.c.line("int64_t bad_at = INT64_MAX; /* the first bad index's position */")
    for var, extent in ((p, pre), (j, m)):
        if var:
            e.c.loop(f"{var}", extent, parallel=True, work=pre * m * inner, reduction="min:bad_at")
    e.c.line(f"int64_t row = lt_index_quiet((int64_t){e.load(idx, position)}, {n});")
    e.c.open("if (row >= 0)")
    _copy_row(e, x, out, p, j, r, m, n, inner)
    e.c.reopen(f"}} else if ({position} < bad_at) {{")
    e.c.line(f"bad_at = {position};")
    e.c.close()
    for var in (p, j):
        if var:
            e.c.close()
    e.c.line(f"if (bad_at != INT64_MAX) (void)lt_index((int64_t){e.load(idx, 'bad_at')}, {n}, {c_string(where)});")
    e.c.close()
    e.check_status()


def scatter(e: KernelContext, op: Op) -> None:
    """Adjoint of take: zeros, with each row of the value added at its index (repeats add up)."""
    g, idx = op.args
    out = op.outs[0]
    e.declare(out)
    e.zero(out)
    axis = op.attrs["axis"]
    os_ = out.type.shape  # type: ignore[union-attr]
    pre, n, inner = around_axis(os_, axis)
    m = idx.type.size  # type: ignore[union-attr]
    e.c.loop('p', pre, parallel=True)
    e.c.loop('j', m)
    guarded = e.staged_row("row", "(int64_t)" + e.load(idx, "j"), n, e.where(op))
    e.c.loop('r', inner)
    e.c.line(f"{e.ptr(out)}[(p * {n} + row) * {inner} + r] += {e.load(g, f'(p * {m} + j) * {inner} + r')};")
    for _ in range(3 + guarded):
        e.c.close()
    if guarded:
        e.check_status()


def accumulate(e: KernelContext, stmt: Accumulate) -> None:
    t, v = stmt.target, stmt.value
    row = v.type.size  # type: ignore[union-attr]
    if known_equal(row, 0):  # nothing to add and no index to read (passes/empty.py drops these before C)
        return
    if stmt.index is None and not t.type.shape:  # type: ignore[union-attr]
        e.store(t, "0", f"{e.load(t, '0')} + {e.load(v, '0')}")
        return
    e.c.open_scope()
    index = stmt.index
    k = index.type.size if index is not None else 1  # type: ignore[union-attr]
    row //= k
    many = more_than_one(k)
    if many:
        e.c.loop('j', k)
    guarded = False
    if index is not None:
        n = t.type.shape[0]  # type: ignore[union-attr]
        guarded = e.staged_row("base", e.load(index, "j" if many else "0"), n, e.where(stmt), row)
    else:
        e.c.line("int64_t base = 0;")
    e.c.loop('i', row, independent=True)  # (the value is never a view of the target's buffer)
    e.c.line(f"{e.ptr(t)}[base + i] += {e.load(v, 'j * ' + str(row) + ' + i' if many else 'i')};")
    e.c.close()
    if guarded:
        e.c.close()
    if many:
        e.c.close()
    e.c.close()
    if guarded:
        e.check_status()


def check_range(e: KernelContext, op: Op) -> None:
    """Its operand, after checking every value against ``[0, n)`` (with ``check_indices``; the values are
    read in place, no copy)."""
    x, out = op.args[0], op.outs[0]
    if e.m.options.check_indices:
        where = c_string(op.attrs["what"])  # (names the user's line: see ops.one_hot)
        n = op.attrs["n"]
        e.c.loop("i", x.type.size)  # type: ignore[union-attr]
        e.c.line(f"int64_t v = (int64_t){e.load(x, 'i')};")
        e.c.line(f"if (v < 0 || v >= {n}) lt_record(LT_ERR_INDEX, \"%s: index %lld is out of bounds for an axis "
                 f"of size %lld\", {where}, (long long)v, (long long){n});")
        e.c.close()
        e.check_status()
    if not out.type.shape and e.storage[x.id].kind != "pointer":  # type: ignore[union-attr]
        e.declare(out)
        e.store(out, "0", e.load(x, "0"))
    else:
        e.bind_pointer(out, e.ptr(x), view_of=x)
