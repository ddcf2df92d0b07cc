"""Direct 2-D convolution and its two adjoints, in the layout ``[C, H, W, N]`` (``lantern/ir/primitives.py``).

With the batch innermost every kernel's inner loop runs along ``N`` contiguous values, a vector of them at a
time per accumulator, and each vector loaded feeds a block of channels: no im2col copy is made, and each
output element is stored once. Threads share out blocks of channels, or a single block's rows; every element
adds its terms in one fixed order, so results do not depend on the thread count.
"""
from __future__ import annotations

from typing import Callable

from lantern.ir.nodes import Op
from lantern.ir.symbolic import Size

from ..c_types import fma_function, literal
from .context import KernelContext

#: Values of the batch axis in one vector register (AVX-512 float32; narrower machines split it).
_LANES = 16
#: Channels computed together (at most), each from the same vector of the other operand: their
#: accumulators, the vector and the weights fit AVX-512's 32 registers.
_BLOCK = 12
#: The weight gradient's partial sums (one vector each) per block: channels times kernel columns.
_SUMS = 24
#: Kernel columns summed together in the weight gradient (wider kernels: one at a time).
_TAPS = 8


def conv(e: KernelContext, op: Op) -> None:
    out = op.outs[0]
    e.declare(out)
    {"conv2d": _forward, "conv2d_input_grad": _input_grad, "conv2d_weight_grad": _weight_grad}[op.prim](e, op)


def _blocks(e: KernelContext, extent: int, var: str, work: int, body: Callable[[str, int], None],
            limit: int = 0) -> None:
    """``body(first, count)`` for blocks of at most ``limit`` (default ``_BLOCK``) consecutive values of ``var``,
    as even as can be (threads share the blocks out), then the rest."""
    limit = limit or _BLOCK
    size = -(-extent // -(-extent // limit))
    full = extent // size
    e.c.loop(f"{var}b", full, parallel=True, work=work)
    e.c.line(f"int64_t {var}0 = {var}b * {size};")
    body(f"{var}0", size)
    e.c.close()
    if extent % size:
        e.c.open_scope()
        e.c.line(f"int64_t {var}0 = {full * size};")
        body(f"{var}0", extent % size)
        e.c.close()


def _vector_strips(e: KernelContext, n: int | Size, body: Callable[[str, int | str], None],
                   part: str | None = None, lanes: int = _LANES) -> None:
    """``body(n0, width)`` for strips of ``lanes`` values of the batch axis (one vector register by default),
    then the rest (``part``: only the ``"full"`` strips, or only the ``"rest"``)."""
    if isinstance(n, Size):
        e.c.open(f"for (int64_t n0 = 0; n0 < {n}; n0 += {lanes})")
        e.c.line(f"int64_t width = {n} - n0 < {lanes} ? {n} - n0 : {lanes};")
        body("n0", "width")
        e.c.close()
        return
    full = n - n % lanes
    if full and part != "rest":
        e.c.open(f"for (int64_t n0 = 0; n0 < {full}; n0 += {lanes})")
        body("n0", lanes)
        e.c.close()
    if n % lanes and part != "full":
        e.c.open_scope()
        body(str(full), n % lanes)
        e.c.close()


def _gathered(e: KernelContext, out, count: int, outer: tuple[tuple[str, int], tuple[str, int]], n: int | Size,
              terms: Callable[[str], int], step: int, target: Callable[[int], str], work: int | Size) -> None:
    """The shape shared by the forward kernel and the input gradient: at each position of the two ``outer``
    loops and each strip of the batch, ``count`` channels' accumulators (one vector each) summing ``wq[q * step]
    * row[l]`` over the terms (``terms(n0)`` opens their loops, defines ``wq`` and ``row``, and says how many
    loops it opened), stored once at ``target(q)`` plus the strip's place; ``work``: the block's multiply-adds."""
    t, zero, fma = e.ctype(out), literal(0, out.type.dtype), fma_function(out.type.dtype)  # type: ignore[union-attr]
    # Few channels: wider strips, so that at least four vectors of sums are in flight (one alone waits on its
    # own previous multiply-add at every term: a one-channel input gradient ran 9x slower)
    lanes = _LANES * max(1, 4 // count)
    # (the rows of a block are independent too: threads share them when there is one block, or in the last)
    for k, (var, extent) in enumerate(outer):
        e.c.loop(var, extent, parallel=k == 0, work=work)

    def strip(n0: str, width: int | str) -> None:
        accs = [f"acc{q}" for q in range(count)]
        e.c.line(f"{t} {', '.join(f'{a}[{lanes}]' for a in accs)};")
        e.c.loop("l", width, independent=True)
        for a in accs:
            e.c.line(f"{a}[l] = {zero};")
        e.c.close()
        opened = terms(n0)
        e.c.loop("l", width, independent=True)
        e.c.line(f"{t} v = row[l];")
        for q, a in enumerate(accs):
            e.c.line(f"{a}[l] = {fma}(wq[{q * step}], v, {a}[l]);")
        for _ in range(opened + 1):
            e.c.close()
        e.c.loop("l", width, independent=True)
        for q, a in enumerate(accs):
            e.c.line(f"{e.ptr(out)}[{target(q)} + {n0} + l] = {a}[l];")
        e.c.close()
    _vector_strips(e, n, strip, lanes=lanes)
    for _ in outer:
        e.c.close()


def _forward(e: KernelContext, op: Op) -> None:
    """``y[o, i, j, :] = sum over c, di, dj of w[o, c, di, dj] * x[c, i*sh + di, j*sw + dj, :]``: a block of
    output channels at a time, so each vector of ``x`` loaded feeds all of them."""
    x, w = op.args
    out = op.outs[0]
    (sh, sw), (c, h, wd, n), (o, _, kh, kw) = op.attrs["stride"], x.type.shape, w.type.shape  # type: ignore[union-attr]
    oh, ow = out.type.shape[1:3]  # type: ignore[union-attr]
    t = e.ctype(out)

    def block(o0: str, count: int) -> None:
        def terms(n0: str) -> int:
            for var, extent in (("ci", c), ("di", kh), ("dj", kw)):
                e.c.loop(var, extent)
            e.c.line(f"const {t} *wq = {e.ptr(w)} + (({o0} * {c} + ci) * {kh} + di) * {kw} + dj;")
            e.c.line(f"const {t} *row = {e.ptr(x)} + ((ci * {h} + i * {sh} + di) * {wd} + j * {sw} + dj) * {n} + {n0};")
            return 3
        _gathered(e, out, count, (("i", oh), ("j", ow)), n, terms, c * kh * kw,
                  lambda q: f"((({o0} + {q}) * {oh} + i) * {ow} + j) * {n}", count * oh * ow * c * kh * kw * n)
    _blocks(e, o, "o", o * oh * ow * c * kh * kw * n, block)


def _input_grad(e: KernelContext, op: Op) -> None:
    """``dx[c, y, x, :] = sum of w[o, c, di, dj] * dy[o, i, j, :]`` over the outputs ``(i, j)`` whose window
    covers ``(y, x)`` at offset ``(di, dj)``: gathered, so each element of ``dx`` is written once; a block of
    input channels at a time, each vector of ``dy`` loaded feeding all of them."""
    dy, w = op.args
    out = op.outs[0]
    (sh, sw), (h, wd) = op.attrs["stride"], op.attrs["size"]
    (o, oh, ow, n), (_, c, kh, kw) = dy.type.shape, w.type.shape  # type: ignore[union-attr]
    t = e.ctype(out)

    def block(c0: str, count: int) -> None:
        def terms(n0: str) -> int:
            e.c.loop("di", kh)
            e.c.line("int64_t i = y - di;")
            e.c.line(f"if (i < 0 || i >= {oh * sh}{f' || i % {sh}' if sh > 1 else ''}) continue;")
            e.c.loop("dj", kw)
            e.c.line("int64_t j = x - dj;")
            e.c.line(f"if (j < 0 || j >= {ow * sw}{f' || j % {sw}' if sw > 1 else ''}) continue;")
            e.c.loop("oi", o)
            e.c.line(f"const {t} *wq = {e.ptr(w)} + ((oi * {c} + {c0}) * {kh} + di) * {kw} + dj;")
            e.c.line(f"const {t} *row = {e.ptr(dy)} + ((oi * {oh} + i / {sh}) * {ow} + j / {sw}) * {n} + {n0};")
            return 3
        _gathered(e, out, count, (("y", h), ("x", wd)), n, terms, kh * kw,
                  lambda q: f"((({c0} + {q}) * {h} + y) * {wd} + x) * {n}", count * oh * ow * o * kh * kw * n)
    _blocks(e, c, "c", o * oh * ow * c * kh * kw * n, block)


def _weight_grad(e: KernelContext, op: Op) -> None:
    """``dw[o, c, di, dj] = sum over i, j, n of dy[o, i, j, n] * x[c, i*sh + di, j*sw + dj, n]``: for a block of
    output channels and a whole kernel row ``dj``, a vector of partial sums each along the batch (each vector of
    ``dy`` loaded feeding the row's taps, each vector of ``x`` the block's channels), added up in order at the
    end."""
    x, dy = op.args
    out = op.outs[0]
    (sh, sw), (kh, kw) = op.attrs["stride"], op.attrs["kernel"]
    (c, h, wd, n), (o, oh, ow, _) = x.type.shape, dy.type.shape  # type: ignore[union-attr]
    px, pdy, pdw = e.ptr(x), e.ptr(dy), e.ptr(out)
    t, zero, fma = e.ctype(out), literal(0, out.type.dtype), fma_function(out.type.dtype)  # type: ignore[union-attr]
    taps = kw if kw <= _TAPS else 1  # (a wide kernel: one tap at a time, dj a loop)
    # Partial sums over the full strips of the batch, then, in a second sweep, over the rest of it (kept apart,
    # so that the compiler holds each set in registers rather than in memory a partial store hits).
    sets = ([("acc", _LANES)] if isinstance(n, Size) or n >= _LANES else []) + \
        ([("rest", n % _LANES)] if not isinstance(n, Size) and n % _LANES else [])

    def block(o0: str, count: int) -> None:
        e.c.loop("ci", c, parallel=True, work=count * oh * ow * c * kh * kw * n)  # (when one block)
        e.c.loop("di", kh)
        if taps == 1:
            e.c.loop("dj", kw)
        sums = [(q, d) for q in range(count) for d in range(taps)]
        tap = "dj" if taps == 1 else None
        for name, width in sets:
            e.c.line(f"{t} {', '.join(f'{name}{q}_{d}[{width}]' for q, d in sums)};")
            e.c.loop("l", width, independent=True)
            for q, d in sums:
                e.c.line(f"{name}{q}_{d}[l] = {zero};")
            e.c.close()

        def strip(n0: str, width: int | str) -> None:
            name = "rest" if isinstance(width, int) and width < _LANES else "acc"
            e.c.loop("l", width, independent=True)
            for q in range(count):
                e.c.line(f"{t} g{q} = dy_row[{q * oh * ow * n} + {n0} + l];")
            for d in range(taps):
                e.c.line(f"{t} v{d} = x_row[{f'{d * n} + ' if d else ''}{n0} + l];")
            for q, d in sums:
                e.c.line(f"{name}{q}_{d}[l] = {fma}(g{q}, v{d}, {name}{q}_{d}[l]);")
            e.c.close()

        for sweep in (["full", "rest"] if len(sets) == 2 else [None]):
            e.c.loop("i", oh)
            e.c.loop("j", ow)
            e.c.line(f"const {t} *x_row = {px} + ((ci * {h} + i * {sh} + di) * {wd} + j * {sw}{f' + {tap}' if tap else ''}) * {n};")
            e.c.line(f"const {t} *dy_row = {pdy} + (({o0} * {oh} + i) * {ow} + j) * {n};")
            _vector_strips(e, n, strip, part=sweep)
            e.c.close()
            e.c.close()
        for q, d in sums:
            e.c.line(f"{t} total{q}_{d} = {zero};")
            for name, width in sets:
                e.c.loop("l", width)
                e.c.line(f"total{q}_{d} += {name}{q}_{d}[l];")
                e.c.close()
            e.c.line(f"{pdw}[((({o0} + {q}) * {c} + ci) * {kh} + di) * {kw} + {tap or d}] = total{q}_{d};")
        for _ in range(2 + (taps == 1)):
            e.c.close()
    _blocks(e, o, "o", o * oh * ow * c * kh * kw * n, block, limit=max(1, _SUMS // taps))
