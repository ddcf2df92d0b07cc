"""Reductions: sums, products, maxima and minima over axes (vectorized where the innermost axis is reduced),
and argmax/argmin."""
from __future__ import annotations

from math import prod

from lantern.ir.nodes import Fused, Op

from ..c_types import FLOATS, literal
from ..cbuilder import index, strides
from .context import KernelContext
from .elementwise import value_at

#: A floating-point sum may be reassociated (vectorized) here, as BLAS and NumPy do; elsewhere
#: the compiler keeps C's order of operations (no -ffast-math). Needs -fopenmp-simd, not OpenMP.
SIMD_SUM = "#pragma omp simd reduction(+:acc)"


def simd_sum(*accumulators: str) -> str:
    """``SIMD_SUM`` for several accumulators summed in one loop."""
    return f"#pragma omp simd reduction(+:{', '.join(accumulators)})"


def reduce(e: KernelContext, op: Op) -> None:
    out = op.outs[0]
    e.declare(out)
    e.c.open_scope()  # keeps acc/best local to this statement
    if op.prim in ("argmax", "argmin"):
        arg_reduce(e, op)
    else:
        reduce_values(e, op)
    e.c.close()


def collapsed(shape: tuple, axes: set[int]) -> tuple[tuple, set[int]]:
    """``shape`` with neighbouring axes that are both reduced, or both kept, merged into one (C order makes
    them one run of memory): a whole-array sum is one loop, which the compiler vectorizes more simply (and
    compiles faster) than a nest. Axes of run-time size are left alone."""
    merged: list = []
    merged_axes: set[int] = set()
    for d, n in enumerate(shape):
        reduced = d in axes
        if merged and isinstance(n, int) and isinstance(merged[-1], int) and (len(merged) - 1 in merged_axes) == reduced:
            merged[-1] *= n
            continue
        if reduced:
            merged_axes.add(len(merged))
        merged.append(n)
    return tuple(merged), merged_axes


def reduce_values(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    producer = e.m.plan.in_reduction.get(x.id)  # x computed here, element by element (codegen/lowering.py)
    xs, axes = x.type.shape, set(op.attrs["axes"])  # type: ignore[union-attr]
    if producer is None or all(a.type.shape == xs or a.type.size == 1 for a in producer.operands()):  # type: ignore[union-attr]
        xs, axes = collapsed(xs, axes)  # (a broadcast operand is indexed per axis: those stay)
    x_strides = strides(xs)
    kept_shape = tuple(1 if d in axes else n for d, n in enumerate(xs))
    o_strides = [0 if d in axes else s for d, s in enumerate(strides(kept_shape))]
    t = e.ctype(out)
    dtype = out.type.dtype  # type: ignore[union-attr]
    if op.prim in ("reduce_sum", "reduce_prod"):
        symbol = "+" if op.prim == "reduce_sum" else "*"
        init = literal(0 if symbol == "+" else 1, dtype)
        combine = lambda acc, v: f"{acc} {symbol} {v}"  # noqa: E731
    elif dtype == "bool":  # max is any, min is all
        is_max = op.prim == "reduce_max"
        init = "0" if is_max else "1"
        combine = lambda acc, v: f"({acc} {'|' if is_max else '&'} {v})"  # noqa: E731 (bitwise: see logical_or)
    else:
        fn = "max" if op.prim == "reduce_max" else "min"
        sfx = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}[dtype]
        if dtype in FLOATS:
            init = literal(float("-inf") if fn == "max" else float("inf"), dtype)
        else:
            init = f"INT{dtype[3:]}_{'MIN' if fn == 'max' else 'MAX'}"
        combine = lambda acc, v: f"lt_{fn}_{sfx}({acc}, {v})"  # noqa: E731
    # float32 sums accumulate in double: a float32 running sum of 2**25 ones stalls at 2**24.
    wide = op.prim == "reduce_sum" and dtype == "float32"
    acc_t = "double" if wide else t
    if producer is None:
        src = lambda idx: e.load(x, index(zip(idx, x_strides)))  # noqa: E731
    else:
        src = lambda idx: value_at(e, producer, idx, xs)  # noqa: E731
    if (len(xs) - 1) in axes:
        # Innermost axis reduced: accumulate each output element in a register.
        kept = [d for d in range(len(xs)) if d not in axes]
        red = sorted(axes)
        kept_names = [f"i{d}" for d in kept]
        for d in kept:
            e.c.loop(f"i{d}", xs[d], parallel=True, work=prod(xs) * (1 + _ops(producer)))
        e.c.line(f"{acc_t} acc = {init};")
        # A float max/min vectorizes as an OpenMP max/min reduction plus a NaN flag (the
        # reduction alone would not say what a NaN does); NaN wins, as in NumPy.
        nan_flag = op.prim in ("reduce_max", "reduce_min") and dtype in FLOATS
        if nan_flag:
            e.c.line("int seen_nan = 0;")
        for d in red:
            if d == red[-1] and dtype in FLOATS:
                if nan_flag:
                    extremum = {"reduce_max": "max", "reduce_min": "min"}[op.prim]
                    e.c.line(f"#pragma omp simd reduction({extremum}:acc) reduction(|:seen_nan)")
                else:
                    e.c.line(SIMD_SUM if op.prim == "reduce_sum" else "#pragma omp simd reduction(*:acc)")
            e.c.loop(f"i{d}", xs[d])
        value = src([f"i{d}" for d in range(len(xs))])
        if nan_flag:
            e.c.line(f"{t} v = {value};")
            e.c.line(f"acc = v {'>' if op.prim == 'reduce_max' else '<'} acc ? v : acc;")
            e.c.line("seen_nan |= v != v;")
        else:
            e.c.line(f"acc = {combine('acc', value)};")
        for _ in red:
            e.c.close()
        if nan_flag:
            e.c.line(f"if (seen_nan) acc = ({t})NAN;")
        e.store(out, index(zip(kept_names, [o_strides[d] for d in kept])), f"({t})acc" if wide else "acc")
        for _ in kept:
            e.c.close()
    else:
        # Innermost axis kept: sweep the input in memory order, updating a row of
        # accumulators (the output itself, or a double buffer for float32 sums).
        n_out = out.type.size  # type: ignore[union-attr]
        if wide:
            e.c.line(f"double *acc = lt_alloc({n_out} * sizeof(double));")
            e.m.uses_arena = True
        target = (lambda i: f"acc[{i}]") if wide else (lambda i: e.load(out, i))  # noqa: E731
        e.c.loop('i', n_out, parallel=True)
        e.c.line(f"{target('i')} = {init};")
        e.c.close()
        # Each output element still adds its values in memory order; a kept outermost axis gives each
        # thread whole slabs of the output, and the innermost (kept) axis updates distinct elements.
        names = [f"i{d}" for d in range(len(xs))]
        for d, name in enumerate(names):
            e.c.loop(name, xs[d], parallel=d == 0 and d not in axes, work=prod(xs) * (1 + _ops(producer)),
                     independent=d == len(xs) - 1)
        o = index(zip(names, o_strides))
        e.c.line(f"{target(o)} = {combine(target(o), src(names))};")
        for _ in names:
            e.c.close()
        if wide:
            e.c.loop('i', n_out, parallel=True)
            e.store(out, "i", f"({t})acc[i]")
            e.c.close()
            e.c.line(f"lt_free(acc, {n_out} * sizeof(double));")


def _ops(producer: Op | Fused | None) -> int:
    """Operations per element of a reduction's elementwise operand computed in its loop."""
    return 0 if producer is None else len(producer.body.stmts) if isinstance(producer, Fused) else 1


def arg_reduce(e: KernelContext, op: Op) -> None:
    x, out = op.args[0], op.outs[0]
    xs: tuple[int, ...] = x.type.shape  # type: ignore[union-attr]
    axis = op.attrs["axis"]
    better = ">" if op.prim == "argmax" else "<"
    st = strides(xs)
    outer = [d for d in range(len(xs)) if d != axis]
    o_shape = tuple(xs[d] for d in outer)
    o_st = strides(o_shape)
    is_float = x.type.dtype in FLOATS  # type: ignore[union-attr]
    t = e.ctype(x)

    def body(idx: list[str]) -> None:
        base = index((i, st[d]) for i, d in zip(idx, outer))
        e.c.line(f"{t} best = {e.load(x, base)};")
        e.c.line("int64_t best_k = 0;")
        e.c.open(f"for (int64_t k = 1; k < {xs[axis]}; k++)")
        e.c.line(f"{t} v = {e.load(x, f'{base} + k * {st[axis]}')};")
        nan = " || (v != v && best == best)" if is_float else ""
        e.c.open(f"if (v {better} best{nan})")
        e.c.line("best = v;")
        e.c.line("best_k = k;")
        e.c.close()
        e.c.close()
        e.store(out, index(zip(idx, o_st)), "best_k")
    e.c.loop_nest(o_shape, body, parallel=True)
