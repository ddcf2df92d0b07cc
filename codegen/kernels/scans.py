"""Running sums and products along one axis (``cumsum``, ``cumprod``), in the order NumPy adds."""
from __future__ import annotations

from lantern.ir.nodes import Op
from lantern.ir.symbolic import more_than_one

from ..cbuilder import around_axis, index
from .context import KernelContext


def scan(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    e.declare(out)
    xs: tuple[int, ...] = x.type.shape  # type: ignore[union-attr]
    axis = op.attrs["axis"]
    pre, n, inner = around_axis(xs, axis)
    t = e.ctype(out)
    dtype = out.type.dtype  # type: ignore[union-attr]
    symbol = "+" if op.prim == "cumsum" else "*"
    cast = f"({t})" if x.type.dtype != dtype else ""  # type: ignore[union-attr]  (int32, bool: int64)

    def combine(acc: str, v: str) -> str:
        if dtype == "int64":  # wraps around like NumPy instead of overflowing (undefined in C)
            return f"(int64_t)((uint64_t){acc} {symbol} (uint64_t){v})"
        return f"{acc} {symbol} {v}"

    # out[p, k, :] = out[p, k - 1, :] (+|*) x[p, k, :]: the inner axis is the vectorised one.
    # Loops of extent 1 are left out (their index is 0).
    p, r = ("p" if more_than_one(pre) else None), ("r" if more_than_one(inner) else None)
    at = lambda k: index((v, c) for v, c in ((p, n * inner), (k, inner), (r, 1)) if v)  # noqa: E731
    e.c.open_scope()
    if p:
        e.c.loop(p, pre, parallel=True)
    if r:
        e.c.loop(r, inner)
    e.store(out, at("0"), f"{cast}{e.load(x, at('0'))}")
    if r:
        e.c.close()
    e.c.loop("k", n, start=1)
    if r:
        e.c.loop(r, inner)
    e.store(out, at("k"), combine(e.load(out, at("(k - 1)")), f"{cast}{e.load(x, at('k'))}"))
    for _ in range(1 + bool(r) + bool(p) + 1):
        e.c.close()
