"""Matrix products: generated loops for small ones and single rows or columns, OpenBLAS for the rest."""
from __future__ import annotations

import os

from lantern.ir.nodes import Op
from lantern.ir.symbolic import Size, hint, known_equal, more_than_one

from ..c_types import FLOATS, literal
from ..cbuilder import offset
from .context import KernelContext
from .reductions import simd_sum

#: Matrix products with at least this many multiply-adds (M*N*K) call BLAS; smaller ones
#: run as generated loops. Chosen with benchmarks/matmul_threshold.py (see RESULTS.md).
BLAS_MIN_MACS = int(os.environ.get("LANTERN_BLAS_MIN_MACS", 4096))
#: The same threshold for products with a single row or column (m == 1 or n == 1).
VECTOR_BLAS_MIN_MACS = int(os.environ.get("LANTERN_VECTOR_BLAS_MIN_MACS", 1 << 20))
#: Generated matrix products keep this many columns of a result row in a local array.
_STRIP = 64


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
    ao, bo, co = ("ao + ", "bo + ", "co + ") if batched else ("", "", "")
    A = ((lambda i, kk: f"{pa}[{ao}{kk} * {m} + {i}]") if ta else (lambda i, kk: f"{pa}[{ao}{i} * {k} + {kk}]"))
    if batched:
        e.c.loop('bi', batch, parallel=True, work=batch * m * n * k)
        e.c.line(f"int64_t ao = bi * {a_bs}, bo = bi * {b_bs}, co = bi * {m * n};")
    e.c.loop('i', m, parallel=True, work=m * n * k)
    c_row = f"{pc}[{co}i * {n} + "
    op_assign = "+=" if out.id in e.accumulating else "="
    if not tb:
        # i-k-j order, a strip of c's row at a time held in a local array (registers): the
        # innermost loop runs along rows of b (vectorizes), and c is not reloaded per k.
        def strip(j0: str, width: int | str, room: int | None = None) -> None:
            e.c.line(f"{t} acc[{room or width}];")
            e.c.loop('l', width)
            e.c.line(f"acc[l] = {c_row + j0 + ' + l]' if out.id in e.accumulating else zero};")
            e.c.close()
            e.c.loop('kk', k)
            e.c.line(f"{t} aik = {A('i', 'kk')};")
            e.c.line(f"const {t} *b_row = {pb} + {bo}kk * {n} + {j0};")
            e.c.loop('l', width)
            e.c.line("acc[l] += aik * b_row[l];")
            e.c.close()
            e.c.close()
            e.c.loop('l', width)
            e.c.line(f"{c_row}{j0} + l] = acc[l];")
            e.c.close()

        if isinstance(n, Size):  # a run-time width: strips of up to _STRIP columns
            e.c.open(f"for (int64_t j0 = 0; j0 < {n}; j0 += {_STRIP})")
            e.c.line(f"int64_t width = {n} - j0 < {_STRIP} ? {n} - j0 : {_STRIP};")
            strip("j0", "width", _STRIP)
            e.c.close()
        else:
            full = n - n % _STRIP
            if full:  # (strips are independent: a single row's product may share them out among threads)
                e.c.loop('s', full // _STRIP, parallel=True, work=m * n * k)
                e.c.line(f"int64_t j0 = s * {_STRIP};")
                strip("j0", _STRIP)
                e.c.close()
            if n % _STRIP:
                e.c.open_scope()
                strip(str(full), n % _STRIP)
                e.c.close()
    else:
        # b transposed: each element is a dot product of two contiguous rows; four rows of
        # b at a time share the loads of a's row.
        def dots(j: str, rows: int) -> None:
            accs = [f"acc{r}" for r in range(rows)]
            e.c.line(f"{t} {', '.join(f'{a} = {zero}' for a in accs)};")
            if dtype in FLOATS:
                e.c.line(simd_sum(*accs))
            e.c.loop('kk', k)
            e.c.line(f"{t} aik = {A('i', 'kk')};")
            cols = [f"({j} + {r})" if r else j for r in range(rows)]
            for col, a in zip(cols, accs):
                e.c.line(f"{a} += aik * {pb}[{bo}{col} * {k} + kk];")
            e.c.close()
            for col, a in zip(cols, accs):
                e.c.line(f"{c_row}{col}] {op_assign} {a};")

        fours = f"{n} - {n} % 4" if isinstance(n, Size) else n - n % 4  # (a run-time width: computed in C)
        if isinstance(n, Size):
            e.c.open(f"for (int64_t j = 0; j < {fours}; j += 4)")
            dots("j", 4)
            e.c.close()
        elif fours:  # (groups of four columns are independent, as strips are above)
            e.c.loop('q', fours // 4, parallel=True, work=m * n * k)
            e.c.line("int64_t j = q * 4;")
            dots("j", 4)
            e.c.close()
        if isinstance(n, Size) or n % 4:
            e.c.open(f"for (int64_t j = {fours}; j < {n}; j++)")
            dots("j", 1)
            e.c.close()
    e.c.close()
    if batched:
        e.c.close()
