"""Data movement and creation: reshapes (no copy), constants, ranges, transposes, slices and their
adjoint, concatenation, and counter-based random numbers."""
from __future__ import annotations

import numpy as np

from lantern.ir.nodes import Op

from lantern.ir.symbolic import hint

from ..c_types import literal
from ..cbuilder import index, strides
from .context import KernelContext, Storage

#: Transposes copy square tiles of this side.
_TILE = 16


def reshape(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    if not out.type.shape and out.id not in e.dest:  # type: ignore[union-attr]
        e.storage[out.id] = Storage("scalar", e.name(out))
        e.c.line(f"{e.ctype(out)} {e.name(out)} = {e.load(x, '0')};")
    elif e.storage[x.id].kind == "literal":
        e.declare(out)
        e.store(out, "0", e.storage[x.id].name)
    else:
        e.bind_pointer(out, e.ptr(x), view_of=x)  # same bytes, new shape: no copy


def size(e: KernelContext, op: Op) -> None:
    """A run-time size (``x.shape[0]`` used as a value): its C expression."""
    out = op.outs[0]
    e.declare(out)
    e.store(out, "0", f"(int64_t){op.attrs['value']}")


def constant(e: KernelContext, op: Op) -> None:
    out = op.outs[0]
    value: np.ndarray = op.attrs["value"]
    data = e.m.constant_array(value, e.name(out))
    e.bind_pointer(out, f"({e.ctype(out)} *){data}")


def iota(e: KernelContext, op: Op) -> None:
    out = op.outs[0]
    e.declare(out)
    a = op.attrs
    # Integer bounds count in int64 (exact beyond 2**53), others in double.
    exact = all(isinstance(v, (int, np.integer)) for v in (a["start"], a["step"]))
    via, i = ("int64", "i") if exact else ("float64", "(double)i")
    e.c.loop('i', a['n'], parallel=True)
    e.store(out, "i", f"({e.ctype(out)})({literal(a['start'], via)} + {literal(a['step'], via)} * {i})")
    e.c.close()


def transpose(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    e.declare(out)
    st = strides(x.type.shape)  # type: ignore[union-attr]
    perm = op.attrs["perm"]
    shape: tuple[int, ...] = out.type.shape  # type: ignore[union-attr]
    o_st = strides(shape)
    names = [f"i{k}" for k in range(len(shape))]

    def copy(idx: list[str]) -> None:
        e.store(out, index(zip(idx, o_st)), e.load(x, index((idx[k], st[p]) for k, p in enumerate(perm))))

    # The output axis that walks the input's contiguous (last) axis: if it is not the output's
    # last axis too, one side is read or written with a stride. Square tiles of those two
    # axes keep both sides within cache lines (3x faster for an 800 x 200 matrix).
    across, last = perm.index(len(perm) - 1), len(shape) - 1
    if across == last or min(hint(shape[across]), hint(shape[last])) < _TILE:  # (both are right for any size)
        e.c.loop_nest(shape, copy, parallel=True)
        return
    e.c.line(f"/* {_TILE} x {_TILE} tiles */")
    for k in range(len(shape)):
        if k not in (across, last):
            e.c.loop(f"i{k}", shape[k], parallel=True)
    for k in (across, last):
        e.c.open(f"for (int64_t t{k} = 0; t{k} < {shape[k]}; t{k} += {_TILE})")
    for k in (across, last):
        end = (f"t{k} + {_TILE}" if isinstance(shape[k], int) and shape[k] % _TILE == 0  # (else clamped in C)
               else f"(t{k} + {_TILE} < {shape[k]} ? t{k} + {_TILE} : {shape[k]})")
        if k == last:
            e.c.ivdep()
        e.c.open(f"for (int64_t i{k} = t{k}; i{k} < {end}; i{k}++)")
    copy(names)
    for _ in range(len(shape) + 2):
        e.c.close()


def slice_(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    e.declare(out)
    st = strides(x.type.shape)  # type: ignore[union-attr]
    a = op.attrs
    base = sum(s * t for s, t in zip(a["starts"], st))
    oshape = out.type.shape  # type: ignore[union-attr]
    o_st = strides(oshape)
    # Axes of extent 1 get no loop (their index is 0).
    loops = tuple(d for d in oshape if d != 1)

    def body(names: list[str]) -> None:
        it = iter(names)
        idx = [next(it) if d != 1 else None for d in oshape]
        e.store(out, index((i, c) for i, c in zip(idx, o_st) if i),
                   e.load(x, index(((idx[k], a["steps"][k] * st[k]) for k in range(len(st)) if idx[k]), base)))
    e.c.loop_nest(loops, body, parallel=True)


def concatenate(e: KernelContext, op: Op) -> None:
    out = op.outs[0]
    e.declare(out)
    axis = op.attrs["axis"]
    o_st = strides(out.type.shape)  # type: ignore[union-attr]
    offset = 0
    for x in op.args:
        xs = x.type.shape  # type: ignore[union-attr]
        x_st = strides(xs)
        base = offset * o_st[axis]
        e.c.loop_nest(xs, lambda idx, x=x, x_st=x_st, base=base: e.store(
            out, index(zip(idx, o_st), base), e.load(x, index(zip(idx, x_st)))), parallel=True)
        offset += xs[axis]


def unslice(e: KernelContext, op: Op) -> None:
    """Adjoint of a slice: zeros, with the value written where the slice read."""
    g, out = op.args[0], op.outs[0]
    e.declare(out)
    e.zero(out)
    st = strides(out.type.shape)  # type: ignore[union-attr]
    a = op.attrs
    base = sum(s * t for s, t in zip(a["starts"], st))
    g_st = strides(g.type.shape)  # type: ignore[union-attr]
    e.c.loop_nest(g.type.shape, lambda idx: e.store(  # type: ignore[union-attr]
        out, index(((idx[k], a["steps"][k] * st[k]) for k in range(len(st))), base),
        e.load(g, index(zip(idx, g_st)))), parallel=True)


def random(e: KernelContext, op: Op) -> None:
    """random_uniform: counter-based uniform [0, 1) values from an int64 key (lt_uniform_* in the runtime)."""
    key, out = op.args[0], op.outs[0]
    e.declare(out)
    uniform = "lt_uniform_f32" if out.type.dtype == "float32" else "lt_uniform_f64"  # type: ignore[union-attr]
    e.c.open_scope()  # keeps `seed` local
    e.c.line(f"uint64_t seed = lt_random_seed({e.load(key, '0')});")
    if out.type.shape:  # type: ignore[union-attr]
        e.c.loop('i', out.type.size, parallel=True)  # type: ignore[union-attr]
        e.store(out, "i", f"{uniform}(seed, i)")
        e.c.close()
    else:
        e.store(out, "0", f"{uniform}(seed, 0)")
    e.c.close()
