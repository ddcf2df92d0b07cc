"""Matrix products: generated loops for small ones and single rows or columns, OpenBLAS for the rest."""
from __future__ import annotations

import os

from lantern.ir.nodes import Op
from lantern.ir.symbolic import Size, hint, known_equal, more_than_one

from ..c_types import FLOATS, fma_function, literal
from ..cbuilder import offset
from .context import KernelContext
from .reductions import simd_sum

#: Matrix products with at least this many multiply-adds (M*N*K) call BLAS; smaller ones
#: run as generated loops. Chosen with benchmarks/matmul_threshold.py (see RESULTS.md).
BLAS_MIN_MACS = int(os.environ.get("LANTERN_BLAS_MIN_MACS", 4096))
#: The same threshold for products with a single row or column (m == 1 or n == 1).
VECTOR_BLAS_MIN_MACS = int(os.environ.get("LANTERN_VECTOR_BLAS_MIN_MACS", 1 << 20))
#: Generated matrix products keep this many columns of a result row in a local array (one row at a time),
_STRIP = 64
#: or this many of each of _ROWS rows computed together (4 x 32 floats: 8 AVX-512 registers of sums).
_ROWS = 4
_BLOCK_STRIP = 32
#: Bytes of one vector register (AVX-512): a strip's sums are kept in arrays of one vector each.
_VECTOR_BYTES = 64


def matmul(e: KernelContext, op: Op) -> None:
    a, b = op.args
    out = op.outs[0]
    e.declare(out)
    ta, tb = bool(op.attrs.get("trans_a")), bool(op.attrs.get("trans_b"))
    ash, bsh = a.type.shape, b.type.shape  # type: ignore[union-attr]
    batch = out.type.shape[0] if out.type.ndim == 3 else 1  # type: ignore[union-attr]
    m, n = out.type.shape[-2:]  # type: ignore[union-attr]
    k = ash[-2] if ta else ash[-1]
    a_bs = m * k if len(ash) == 3 else 0
    b_bs = k * n if len(bsh) == 3 else 0
    pa, pb, pc = e.ptr(a), e.ptr(b), e.ptr(out)
    dtype = out.type.dtype  # type: ignore[union-attr]
    t = e.ctype(out)
    # A single row or column (vector-matrix products of RNNs) runs faster as a
    # generated loop than through BLAS's general kernels, until it is very large.
    # (a run-time size decides by its typical value, the one of the call compiled: any size is correct)
    vector = known_equal(m, 1) or known_equal(n, 1) or known_equal(k, 1)
    batched = more_than_one(batch)
    if dtype in FLOATS and hint(m * n * k) >= (VECTOR_BLAS_MIN_MACS if vector else BLAS_MIN_MACS):
        e.m.uses_blas = True
        gemm = "lt_cblas_sgemm" if dtype == "float32" else "lt_cblas_dgemm"
        flags = f"CblasRowMajor, {'CblasTrans' if ta else 'CblasNoTrans'}, {'CblasTrans' if tb else 'CblasNoTrans'}"
        beta = 1 if out.id in e.accumulating else 0

        def call(ao: str, bo: str, co: str) -> str:
            return (f"{gemm}({flags}, {m}, {n}, {k}, 1, {offset(pa, ao)}, {ash[-1]}, {offset(pb, bo)}, {bsh[-1]}, "
                    f"{beta}, {offset(pc, co)}, {n});")
        if not batched:
            e.c.line(call("0", "0", "0"))
        else:
            e.c.loop("bi", batch)
            e.c.line(call(f"bi * {a_bs}", f"bi * {b_bs}", f"bi * {m * n}"))
            e.c.close()
        return
    zero = literal(0, dtype)
    floats = dtype in FLOATS
    fma = fma_function(dtype)

    def mac(acc: str, x: str, y: str) -> str:
        """``acc += x * y``; for floats in one rounding (:func:`fma_function`)."""
        return f"{acc} = {fma}({x}, {y}, {acc});" if floats else f"{acc} += {x} * {y};"

    # Rows of a in blocks of _ROWS share each strip of b they load: a quarter of the loads of one row at a
    # time, and enough independent sums to keep the multiply-add units busy. A transposed b is first copied
    # back to k x n rows for them (a dot product per element would end in a horizontal sum each).
    blocked = not vector and hint(m) >= _ROWS
    b_rows = None
    if blocked and tb:
        copies = batch if len(bsh) == 3 else 1
        b_rows = e.c.fresh("b_rows")
        e.c.line(f"{t} *{b_rows} = lt_alloc({copies * k * n} * sizeof({t})); /* b transposed back to rows */")
        e.c.loop("c", copies * n, independent=True)
        e.c.loop("kk", k, independent=True)
        e.c.line(f"{b_rows}[(c / {n}) * {k * n} + kk * {n} + c % {n}] = {pb}[c * {k} + kk];")
        e.c.close()
        e.c.close()
        pb, tb = b_rows, False
    ao, bo, co = ("ao + ", "bo + ", "co + ") if batched else ("", "", "")
    A = ((lambda i, kk: f"{pa}[{ao}{kk} * {m} + {i}]") if ta else (lambda i, kk: f"{pa}[{ao}{i} * {k} + {kk}]"))
    if batched:
        e.c.loop('bi', batch, parallel=True, work=batch * m * n * k)
        e.c.line(f"int64_t ao = bi * {a_bs}, bo = bi * {b_bs}, co = bi * {m * n};")
    op_assign = "+=" if out.id in e.accumulating else "="

    def row(r: int) -> str:
        return f"(i + {r})" if r else "i"

    def c_at(r: int, j: str) -> str:
        return f"{pc}[{co}{row(r)} * {n} + {j}]"

    # i-k-j order, a strip of each row of c at a time held in local arrays of a vector each (registers; gcc
    # keeps wider arrays in memory): the innermost loops run along rows of b (vectorize), and c is not
    # reloaded per k.
    lanes = _VECTOR_BYTES // out.type.itemsize

    def strip(rows: int, j0: str, width: int | str, room: int) -> None:
        vectors = -(-(width if isinstance(width, int) else room) // lanes)

        def extent(v: int) -> int | str:
            if isinstance(width, int):
                return min(lanes, width - v * lanes)
            return f"lt_min_i64({lanes}, width - {v * lanes})" if v else f"lt_min_i64({lanes}, width)"
        accs = [[f"acc{r}_{v}" if rows > 1 else f"acc{v}" for v in range(vectors)] for r in range(rows)]
        avals = [f"a{r}" for r in range(rows)] if rows > 1 else ["aik"]

        def column(v: int) -> str:  # (of vector v's lane l)
            return " + ".join(term for term in (j0, str(v * lanes), "l") if term != "0")
        zeroed = "" if out.id in e.accumulating else " = {0}"
        e.c.line(f"{t} {', '.join(f'{acc}[{lanes}]{zeroed}' for row_accs in accs for acc in row_accs)};")
        for v in range(vectors if out.id in e.accumulating else 0):
            e.c.loop('l', extent(v), independent=True)
            for r in range(rows):
                e.c.line(f"{accs[r][v]}[l] = {c_at(r, column(v))};")
            e.c.close()
        e.c.loop('kk', k)
        for r, a_ in enumerate(avals):
            e.c.line(f"{t} {a_} = {A(row(r), 'kk')};")
        e.c.line(f"const {t} *b_row = {pb} + {bo}kk * {n} + {j0};")
        for v in range(vectors):
            e.c.loop('l', extent(v), independent=True)
            e.c.line(f"{t} b = b_row[{v * lanes} + l];" if v else f"{t} b = b_row[l];")  # (loaded once)
            for r, a_ in enumerate(avals):
                e.c.line(mac(f"{accs[r][v]}[l]", a_, "b"))
            e.c.close()
        e.c.close()
        for v in range(vectors):
            e.c.loop('l', extent(v), independent=True)
            for r in range(rows):
                e.c.line(f"{c_at(r, column(v))} = {accs[r][v]}[l];")
            e.c.close()

    def strips(rows: int) -> None:
        width = _STRIP if rows == 1 else max(_BLOCK_STRIP * 4 // out.type.itemsize, lanes)
        if isinstance(n, Size):  # a run-time width: strips of up to `width` columns
            e.c.open(f"for (int64_t j0 = 0; j0 < {n}; j0 += {width})")
            e.c.line(f"int64_t width = {n} - j0 < {width} ? {n} - j0 : {width};")
            strip(rows, "j0", "width", width)
            e.c.close()
            return
        full = n - n % width
        if full:  # (strips are independent: a single row's product may share them out among threads)
            e.c.loop('s', full // width, parallel=True, work=m * n * k)
            e.c.line(f"int64_t j0 = s * {width};")
            strip(rows, "j0", width, width)
            e.c.close()
        if n % width:
            e.c.open_scope()
            strip(rows, str(full), n % width, width)
            e.c.close()

    # b transposed, for fewer than _ROWS rows: each element is a dot product of two contiguous rows; four
    # rows of b at a time share the loads of a's row.
    def dots(j: str, rows: int) -> None:
        accs = [f"acc{r}" for r in range(rows)]
        e.c.line(f"{t} {', '.join(f'{a} = {zero}' for a in accs)};")
        if floats:
            e.c.line(simd_sum(*accs))
        e.c.loop('kk', k)
        e.c.line(f"{t} aik = {A('i', 'kk')};")
        cols = [f"({j} + {r})" if r else j for r in range(rows)]
        for col, a in zip(cols, accs):
            e.c.line(f"{a} += aik * {pb}[{bo}{col} * {k} + kk];")  # (an fma here would not vectorize)
        e.c.close()
        for col, a in zip(cols, accs):
            e.c.line(f"{c_at(0, col)} {op_assign} {a};")

    def dot_columns() -> None:
        fours = f"{n} - {n} % 4" if isinstance(n, Size) else n - n % 4  # (a run-time width: computed in C)
        if isinstance(n, Size):
            e.c.open(f"for (int64_t j = 0; j < {fours}; j += 4)")
            dots("j", 4)
            e.c.close()
        elif fours:  # (groups of four columns are independent, as strips are)
            e.c.loop('q', fours // 4, parallel=True, work=m * n * k)
            e.c.line("int64_t j = q * 4;")
            dots("j", 4)
            e.c.close()
        if isinstance(n, Size) or n % 4:
            e.c.open(f"for (int64_t j = {fours}; j < {n}; j++)")
            dots("j", 1)
            e.c.close()

    if known_equal(k, 1):  # an outer product (a weight gradient of one row): each row of c is b scaled
        e.c.loop('i', m, parallel=True, work=m * n)
        e.c.line(f"{t} aik = {A('i', '0')};")
        e.c.loop('j', n, independent=True)
        c_ij = c_at(0, "j")
        e.c.line(mac(c_ij, "aik", f"{pb}[{bo}j]") if out.id in e.accumulating else f"{c_ij} = aik * {pb}[{bo}j];")
        e.c.close()
        e.c.close()
    elif not blocked:
        e.c.loop('i', m, parallel=True, work=m * n * k)
        dot_columns() if tb else strips(1)
        e.c.close()
    else:
        e.c.loop('ib', f"{m} / {_ROWS}" if isinstance(m, Size) else m // _ROWS, parallel=True, work=m * n * k)
        e.c.line(f"int64_t i = ib * {_ROWS};")
        strips(_ROWS)
        e.c.close()
        if isinstance(m, Size):  # the rows after the last whole block, one at a time
            e.c.open(f"for (int64_t i = {m} - {m} % {_ROWS}; i < {m}; i++)")
            strips(1)
            e.c.close()
        elif m % _ROWS:  # the rows after the last whole block, together
            e.c.open_scope()
            e.c.line(f"int64_t i = {m - m % _ROWS};")
            strips(m % _ROWS)
            e.c.close()
    if batched:
        e.c.close()
    if b_rows:
        e.c.line(f"lt_free({b_rows}, {copies * k * n} * sizeof({t}));")
