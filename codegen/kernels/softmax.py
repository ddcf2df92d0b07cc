"""Softmax along one axis: per row, the maximum, then the exponentials of the differences, their sum
(accumulated in double), then each divided by the sum (as ``exp(x - max) / sum`` computes in NumPy: a
NaN in a row, or a row of -inf, gives NaN)."""
from __future__ import annotations

from typing import Callable

from lantern.ir.nodes import Op

from ..c_types import literal
from ..cbuilder import around_axis
from .context import KernelContext
from .reductions import simd_sum


def softmax(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    e.declare(out)
    pre, n, inner = around_axis(x.type.shape, op.attrs["axis"])  # type: ignore[union-attr]
    t = e.ctype(out)
    exp = "lt_exp_f32" if out.type.dtype == "float32" else "exp"  # type: ignore[union-attr]  # (as the exp op)
    e.c.loop("row", pre * inner, parallel=True, work=pre * inner * n * 4)
    base = f"row * {n}" if inner == 1 else f"(row / {inner}) * {n * inner} + row % {inner}"
    e.c.line(f"int64_t base = {base};")
    at = "base + k" if inner == 1 else f"base + k * {inner}"
    e.c.line(f"{t} m = {literal(float('-inf'), out.type.dtype)};")  # type: ignore[union-attr]
    e.c.line("int seen_nan = 0;")

    def over_row(pragma: str, body: Callable[[], None]) -> None:
        e.c.line(pragma)
        e.c.loop("k", n)
        body()
        e.c.close()

    def maximum() -> None:
        e.c.line(f"{t} v = {e.load(x, at)};")
        e.c.line("m = v > m ? v : m;")
        e.c.line("seen_nan |= v != v;")

    over_row("#pragma omp simd reduction(max:m) reduction(|:seen_nan)", maximum)
    e.c.line(f"if (seen_nan) m = ({t})NAN;")
    # Three vectorized loops: the exponentials, their sum (in double), the division. (One loop that also
    # sums into a double does not vectorize: 4x slower.)
    over_row("#pragma omp simd", lambda: e.store(out, at, f"{exp}({e.load(x, at)} - m)"))
    e.c.line("double sum = 0.0;")
    over_row(simd_sum("sum"), lambda: e.c.line(f"sum += {e.load(out, at)};"))
    e.c.line(f"{t} total = ({t})sum;")
    over_row("#pragma omp simd", lambda: e.store(out, at, f"{e.load(out, at)} / total"))
    e.c.close()
