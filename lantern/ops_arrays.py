"""Building and rearranging arrays beyond :mod:`lantern.ops`: sorting (``sort argsort topk
take_along_axis``), construction (``eye linspace tril triu``), rearrangement (``pad flip roll tile
repeat split``), ``nonzero`` with a static size, and ``einsum``. NumPy's semantics; each is written
with lantern's primitives, so its gradient, C and interpreter rule come from theirs (only
``argsort`` is a primitive of its own).

Index maps that depend only on shapes (``pad`` with ``edge``/``reflect``/``wrap``, ``roll``,
``repeat`` with counts) are computed with NumPy while tracing and applied as one gather.
"""
from __future__ import annotations

import builtins
import math
from typing import Any, Sequence

import numpy as np

from . import ops
from .errors import DTypeError, ShapeError, TraceError
from .ir.symbolic import Size
from .ir.types import INT_DTYPES, canonical_dtype
from .ops import ArrayLike
from .source import error_location, user_location
from .tensor import Tensor
from .tracing import with_location


def _axis(x: Tensor, axis: int, op: str) -> int:
    (a,) = ops._axis_list(x.ndim, axis, op, x.shape)
    return a


def _along(x: Tensor, axis: int, index: Any) -> Tensor:
    """``x`` indexed along ``axis`` only (a slice or static indices)."""
    return x[tuple(index if d == axis else slice(None) for d in range(x.ndim))]


# ------------------------------------------------------------------ sorting

def argsort(x: ArrayLike, axis: int | None = -1, descending: bool = False, *, dim: int | None = None) -> Tensor:
    """The indices that sort ``x`` along ``axis`` (flattened when None). Stable: equal elements keep
    their order (NumPy's ``kind="stable"``, PyTorch's ``stable=True``); NaN sorts as the largest value."""
    axis = axis if dim is None else dim
    x = ops.asarray(x)
    if axis is None or x.ndim == 0:  # (NumPy sorts a 0-d array as a 1-element one, whatever the axis)
        x, axis = ops.reshape(x, (-1,)), 0
    return ops._emit(x.frame, "argsort", [x], hint="order", axis=_axis(x, axis, "argsort"),
                     descending=bool(descending))


def take_along_axis(x: ArrayLike, indices: ArrayLike, axis: int) -> Tensor:
    """NumPy's ``take_along_axis``: ``out[..., j, ...] = x[..., indices[..., j, ...], ...]`` along ``axis``,
    the other axes broadcast; negative indices count from the end, others out of range are an error."""
    x, idx = ops.asarray(x), ops.asarray(indices)
    if idx.type.dtype not in INT_DTYPES:
        raise with_location(DTypeError, f"take_along_axis: indices must be integers, got {idx.type}")
    if idx.ndim != x.ndim:
        raise with_location(ShapeError, f"take_along_axis: indices of shape {idx.shape} and an array of shape "
                            f"{x.shape} must have the same number of dimensions")
    axis = _axis(x, axis, "take_along_axis")
    n = x.shape[axis]
    x, idx = ops.moveaxis(x, axis, -1), ops.astype(ops.moveaxis(idx, axis, -1), "int64")
    outer = tuple(builtins.max(a, b) if 1 in (a, b) or a == b else -1 for a, b in zip(x.shape[:-1], idx.shape[:-1]))
    if -1 in outer:
        raise with_location(ShapeError, f"take_along_axis: shapes {x.shape} and {idx.shape} do not broadcast "
                            "outside the indexed axis")
    x = ops.broadcast_to(x, outer + (n,))
    idx = ops.broadcast_to(idx, outer + (idx.shape[-1],))
    where = error_location(user_location())
    idx = ops.where(ops.less(idx, 0), ops.add(idx, n), idx)
    idx = ops._emit(idx.frame, "check_range", [idx], hint="index", n=n,
                    what=f"{where}: take_along_axis on an axis of size {n}")
    rows = math.prod(outer)
    flat = ops.add(idx, ops.reshape(ops.arange(rows) * n, outer + (1,)))  # row r's elements start at r * n
    gathered = ops.take(ops.reshape(x, (rows * n,)), ops.reshape(flat, (-1,)), axis=0)
    return ops.moveaxis(ops.reshape(gathered, idx.shape), -1, axis)


def sort(x: ArrayLike, axis: int | None = -1, descending: bool = False, *, dim: int | None = None) -> Tensor:
    """``x`` sorted along ``axis`` (flattened when None), NaN last (first when ``descending``). The
    gradient flows to the elements where they were."""
    axis = axis if dim is None else dim
    x = ops.asarray(x)
    if axis is None:
        x, axis = ops.reshape(x, (-1,)), 0
    return take_along_axis(x, argsort(x, axis, descending), axis)


def topk(x: ArrayLike, k: int, axis: int = -1, largest: bool = True, *, dim: int | None = None
         ) -> tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) elements along ``axis``, sorted, and their indices
    (``torch.topk``, ``jax.lax.top_k``); ties keep the earlier element first."""
    x = ops.asarray(x)
    axis = _axis(x, axis if dim is None else dim, "topk")
    k = ops.operator_index(k)
    if not 0 <= k <= x.shape[axis]:
        raise with_location(ShapeError, f"topk: k={k} out of range for an axis of size {x.shape[axis]}")
    order = _along(argsort(x, axis, descending=largest), axis, slice(0, k))
    return take_along_axis(x, order, axis), order


# ------------------------------------------------------------------ construction

def eye(n: int, m: int | None = None, k: int = 0, dtype: Any = "float32") -> Tensor:
    """Ones on the ``k``-th diagonal of an ``n`` x ``m`` matrix (float32 by default, as lantern's
    other creation functions)."""
    return ops.constant(np.eye(ops.operator_index(n), None if m is None else ops.operator_index(m),
                               ops.operator_index(k), dtype=canonical_dtype(dtype)))


def linspace(start: ArrayLike, stop: ArrayLike, num: int = 50, endpoint: bool = True, dtype: Any = None) -> Tensor:
    """``num`` evenly spaced values from ``start`` to ``stop`` (included unless ``endpoint=False``).
    Bounds may be staged scalars; the dtype defaults to float32 (NumPy's is float64)."""
    num = num if isinstance(num, Size) else ops.operator_index(num)  # (a run-time size: linspace(0, 1, len(x)))
    if num < 0:
        raise with_location(ShapeError, f"linspace: num must be non-negative, got {num}")
    dt = canonical_dtype(dtype if dtype is not None else "float32")
    if not isinstance(start, Tensor) and not isinstance(stop, Tensor) and not isinstance(num, Size):
        return ops.constant(np.linspace(start, stop, num, endpoint=endpoint).astype(dt))
    start, stop = ops.astype(start, "float64"), ops.astype(stop, "float64")
    steps = builtins.max(num - 1 if endpoint else num, 1)
    values = ops.add(start, ops.multiply(ops.arange(num, dtype="float64"), ops.divide(ops.subtract(stop, start), steps)))
    if endpoint and num > 1:  # the last value is stop exactly, as in NumPy
        values = ops.where(ops.equal(ops.arange(num), num - 1), stop, values)
    return ops.astype(values, dt)


def _triangle(x: ArrayLike, k: int, lower: bool, op: str) -> Tensor:
    x = ops.asarray(x)
    if x.ndim == 0:
        raise with_location(ShapeError, f"{op}: expected at least 1 dimension, got a 0-d array")
    n, m = x.shape[-2:] if x.ndim >= 2 else x.shape * 2  # 1-D: NumPy's (n, n) result
    k = ops.operator_index(k)
    if isinstance(n, Size) or isinstance(m, Size):  # run-time sizes: the mask from positions (j - i <= k)
        above = ops.subtract(ops.expand_dims(ops.arange(m), 0), ops.expand_dims(ops.arange(n), 1))
        keep_t = ops.less_equal(above, k) if lower else ops.greater_equal(above, k)
        return ops.where(keep_t, x, ops.zeros((), x.type.dtype))
    keep = np.tri(n, m, k, dtype=bool)
    return ops.where(ops.constant(keep if lower else ~np.tri(n, m, k - 1, dtype=bool)), x,
                     ops.zeros((), x.type.dtype))


def tril(x: ArrayLike, k: int = 0) -> Tensor:
    """``x`` with the elements above the ``k``-th diagonal of its last two axes set to zero (a 1-D ``x``:
    its ``(n, n)`` broadcast, as NumPy)."""
    return _triangle(x, k, True, "tril")


def triu(x: ArrayLike, k: int = 0) -> Tensor:
    """``x`` with the elements below the ``k``-th diagonal of its last two axes set to zero."""
    return _triangle(x, k, False, "triu")


# ------------------------------------------------------------------ rearrangement

def _pad_widths(pad_width: Any, ndim: int) -> list[tuple[int, int]]:
    """NumPy's forms: ``n``, ``(before, after)``, ``((before, after),)`` or one pair per axis."""
    widths = np.asarray(pad_width)
    if widths.dtype.kind not in "iu" or widths.ndim > 2 or (widths.ndim == 2 and widths.shape[1] != 2):
        raise with_location(ShapeError, f"pad: pad_width {pad_width!r} is not an int, a pair or one pair per axis")
    try:
        widths = np.broadcast_to(widths.reshape(-1, 2) if widths.ndim == 2 else widths, (ndim, 2))
    except ValueError:
        raise with_location(ShapeError, f"pad: pad_width {pad_width!r} does not fit {ndim} axes") from None
    if (widths < 0).any():
        raise with_location(ShapeError, f"pad: pad_width {pad_width!r} has negative widths")
    return [(int(b), int(a)) for b, a in widths]


_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def pad(x: ArrayLike, pad_width: Any, mode: str = "constant", constant_values: Any = 0) -> Tensor:
    """NumPy's ``pad`` with ``mode`` ``constant`` (``constant_values``, a number), ``edge``, ``reflect``,
    ``symmetric`` or ``wrap``."""
    x = ops.asarray(x)
    if mode not in _PAD_MODES:
        raise with_location(TraceError, f"pad: mode {mode!r} is not supported (one of {', '.join(_PAD_MODES)})")
    for axis, (before, after) in enumerate(_pad_widths(pad_width, x.ndim)):
        if not before and not after:
            continue
        n = x.shape[axis]
        if mode == "constant":
            side = lambda w: ops.full(x.shape[:axis] + (w,) + x.shape[axis + 1:], constant_values,  # noqa: E731
                                      x.type.dtype)
            x = ops.concatenate([side(before), x, side(after)], axis=axis)
            continue
        if n == 0:
            raise with_location(ShapeError, f"pad: mode {mode!r} cannot extend the empty axis {axis} of shape {x.shape}")
        x = ops.take(x, ops.constant(np.pad(np.arange(n), (before, after), mode=mode)), axis=axis)
    return x


def flip(x: ArrayLike, axis: int | Sequence[int] | None = None) -> Tensor:
    """``x`` with the order of its elements reversed along ``axis`` (every axis when None)."""
    x = ops.asarray(x)
    axes = ops._axes(x, axis, "flip")
    return x[tuple(slice(None, None, -1) if d in axes else slice(None) for d in range(x.ndim))]


def roll(x: ArrayLike, shift: int | Sequence[int], axis: int | Sequence[int] | None = None) -> Tensor:
    """Elements shifted by ``shift`` along ``axis``, those leaving one end coming back at the other (the
    flattened array when ``axis`` is None)."""
    x = ops.asarray(x)
    if axis is None:
        return ops.reshape(roll(ops.reshape(x, (-1,)), shift, 0), x.shape)
    shifts = np.atleast_1d(np.asarray(shift))
    axes = np.atleast_1d(np.asarray(axis))
    if shifts.dtype.kind not in "iu" or axes.dtype.kind not in "iu":
        raise with_location(DTypeError, f"roll: shift and axis must be integers, got {shift!r} and {axis!r}")
    try:
        shifts, axes = np.broadcast_arrays(shifts, axes)
    except ValueError:
        raise with_location(ShapeError, f"roll: shift {shift!r} and axis {axis!r} do not match") from None
    for s, a in zip(shifts, axes):
        a = _axis(x, int(a), "roll")
        n = x.shape[a]
        if isinstance(n, Size):  # a run-time length: positions (i - s) mod n
            x = ops.take(x, ops.mod(ops.subtract(ops.arange(n), int(s)), n), axis=a)
        elif n:
            x = ops.take(x, ops.constant(np.roll(np.arange(n), int(s))), axis=a)
    return x


def tile(x: ArrayLike, reps: int | Sequence[int]) -> Tensor:
    """``x`` repeated ``reps`` times along each axis (NumPy's ``tile``: ``reps`` and the shape are padded
    with leading ones to the same length)."""
    x = ops.asarray(x)
    reps = tuple(ops.operator_index(r) for r in np.atleast_1d(np.asarray(reps)).tolist())
    if any(r < 0 for r in reps):
        raise with_location(ShapeError, f"tile: negative repetitions {reps}")
    ndim = builtins.max(x.ndim, len(reps))
    reps = (1,) * (ndim - len(reps)) + reps
    shape = (1,) * (ndim - x.ndim) + x.shape
    # [r0, d0, r1, d1, ...] by broadcasting [1, d0, 1, d1, ...], then merged pairwise
    spread = ops.reshape(x, tuple(v for d in shape for v in (1, d)))
    spread = ops.broadcast_to(spread, tuple(v for r, d in zip(reps, shape) for v in (r, d)))
    return ops.reshape(spread, tuple(r * d for r, d in zip(reps, shape)))


def repeat(x: ArrayLike, repeats: int | Sequence[int], axis: int | None = None) -> Tensor:
    """Each element repeated ``repeats`` times along ``axis`` (the flattened array when None); ``repeats``
    may give one count per element."""
    x = ops.asarray(x)
    if axis is None:
        x, axis = ops.reshape(x, (-1,)), 0
    axis = _axis(x, axis, "repeat")
    counts = np.asarray(repeats)
    if counts.dtype.kind not in "iu" or (counts < 0).any():
        raise with_location(ShapeError, f"repeat: repeats must be non-negative integers, got {repeats!r}")
    n = x.shape[axis]
    if counts.ndim == 0:
        r = int(counts)
        spread = ops.broadcast_to(ops.expand_dims(x, axis + 1), x.shape[:axis + 1] + (r,) + x.shape[axis + 1:])
        return ops.reshape(spread, x.shape[:axis] + (n * r,) + x.shape[axis + 1:])
    if counts.shape != (n,):
        raise with_location(ShapeError, f"repeat: {counts.size} counts for an axis of size {n}")
    return ops.take(x, ops.constant(np.repeat(np.arange(n), counts)), axis=axis)


def split(x: ArrayLike, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tensor]:
    """NumPy's ``split``: into ``n`` equal parts (an error if they are not), or at the given indices."""
    x = ops.asarray(x)
    axis = _axis(x, axis, "split")
    n = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        parts = int(indices_or_sections)
        if parts <= 0 or n % parts:
            raise with_location(ShapeError, f"split: an axis of size {n} does not split into {parts} equal parts")
        cuts = [n // parts * k for k in range(1, parts)]
    else:
        cuts = [ops.operator_index(c) for c in indices_or_sections]
    bounds = [0, *cuts, n]
    return [_along(x, axis, slice(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def nonzero(x: ArrayLike, *, size: int, fill_value: int = 0) -> tuple[Tensor, ...]:
    """The indices of the nonzero elements, one int64 array per axis (NumPy's ``nonzero``), with a static
    length: the first ``size`` of them, padded with ``fill_value`` (JAX's ``size=``: how many there are
    is only known when the code runs)."""
    x = ops.asarray(x)
    size = ops.operator_index(size)
    if size < 0:
        raise with_location(ShapeError, f"nonzero: size must be non-negative, got {size}")
    if x.ndim == 0:
        raise with_location(ShapeError, "nonzero: not defined for a 0-d array (as in NumPy 2); use x[None]")
    flat = ops.not_equal(ops.reshape(x, (-1,)), 0)
    if x.size == 0 or size == 0:
        return tuple(ops.full((size,), fill_value, "int64") for _ in range(x.ndim))
    # stable: the nonzero elements first, in order
    order = argsort(ops.astype(ops.logical_not(flat), "int32"), 0)
    if size > x.size:
        order = ops.concatenate([order, ops.zeros((size - x.size,), "int64")])
    found = ops.less(ops.arange(size), ops.sum(ops.astype(flat, "int64")))
    first = order[:size]
    coordinates = []
    strides = np.cumprod((1,) + x.shape[::-1])[-2::-1]  # row-major: (d1 * d2, d2, 1) for (d0, d1, d2)
    for stride, extent in zip(strides, x.shape):
        coordinates.append(ops.where(found, ops.mod(ops.floor_divide(first, int(stride)), extent), fill_value))
    return tuple(coordinates)


# ------------------------------------------------------------------ einsum

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _einsum_terms(subscripts: str, operands: Sequence[Tensor]) -> tuple[list[str], str]:
    """Each operand's labels and the output's, with ``...`` expanded to letters the subscripts leave free
    (right-aligned, as NumPy broadcasts them)."""
    text = subscripts.replace(" ", "")
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        raise with_location(ShapeError, f"einsum: {subscripts!r} has {len(terms)} operands, got {len(operands)}")
    for term in terms + ([output] if arrow else []):
        if any(c not in _LETTERS for c in term.replace("...", "", 1)):
            raise with_location(ShapeError, f"einsum: bad subscripts {term!r} in {subscripts!r} (letters and "
                                "one '...' per operand)")
    spare = [c for c in _LETTERS if c not in text]
    broadcast = builtins.max([x.ndim - len(t) + 3 for t, x in zip(terms, operands) if "..." in t], default=0)
    ellipsis = "".join(spare[:broadcast])
    labels = []
    for term, x in zip(terms, operands):
        if "..." in term:
            extra = x.ndim - len(term) + 3
            if extra < 0:
                raise with_location(ShapeError, f"einsum: {term!r} has more labels than the axes of shape {x.shape}")
            head, _, tail = term.partition("...")
            term = head + ellipsis[broadcast - extra:] + tail
        if len(term) != x.ndim:
            raise with_location(ShapeError, f"einsum: {term!r} labels {len(term)} axes of an operand of shape {x.shape}")
        labels.append(term)
    if arrow:
        output = output.replace("...", ellipsis)
    else:  # implicit: the broadcast axes, then the labels used once, in alphabetical order
        used = "".join(labels)
        output = ellipsis + "".join(sorted(c for c in set(used) if used.count(c) == 1 and c not in ellipsis))
    for c in output:
        if output.count(c) > 1 or not any(c in t for t in labels):
            raise with_location(ShapeError, f"einsum: output label {c!r} of {subscripts!r} is repeated or in no operand")
    return labels, output


def _diagonal(x: Tensor, labels: str) -> tuple[Tensor, str]:
    """Repeated labels in one operand (``ii->i``) take its diagonal."""
    while True:
        repeated = next((c for c in labels if labels.count(c) > 1), None)
        if repeated is None:
            return x, labels
        a = labels.index(repeated)
        b = labels.index(repeated, a + 1)
        n = x.shape[a]
        if x.shape[b] != n:
            raise with_location(ShapeError, f"einsum: label {repeated!r} stands for axes of sizes {n} and {x.shape[b]}")
        rest = [d for d in range(x.ndim) if d not in (a, b)]
        moved = ops.transpose(x, rest + [a, b])
        flat = ops.reshape(moved, moved.shape[:-2] + (n * n,))
        x = ops.take(flat, ops.constant(np.arange(n) * (n + 1)), axis=flat.ndim - 1)
        labels = "".join(labels[d] for d in rest) + repeated


def _sum_out(x: Tensor, labels: str, keep: str) -> tuple[Tensor, str]:
    """Sum over the labels not in ``keep``."""
    gone = tuple(d for d, c in enumerate(labels) if c not in keep)
    if not gone:
        return x, labels
    return ops.sum(x, gone), "".join(c for c in labels if c in keep)


def _contract(a: Tensor, la: str, b: Tensor, lb: str, keep: str) -> tuple[Tensor, str]:
    """``a`` and ``b`` multiplied and summed over their shared labels not in ``keep``, as one batched matmul."""
    sizes: dict[str, int] = {}
    for x, labels in ((a, la), (b, lb)):
        for c, d in zip(labels, x.shape):
            if sizes.setdefault(c, d) != d:
                if 1 not in (d, sizes[c]):
                    raise with_location(ShapeError, f"einsum: label {c!r} stands for axes of sizes {sizes[c]} and {d}")
                sizes[c] = builtins.max(d, sizes[c])
    batch = [c for c in la if c in lb and c in keep]
    summed = [c for c in la if c in lb and c not in keep]
    free_a = [c for c in la if c not in lb]
    free_b = [c for c in lb if c not in la]

    def arrange(x: Tensor, labels: str, groups: list[list[str]]) -> Tensor:
        order = [labels.index(c) for g in groups for c in g]
        x = ops.broadcast_to(ops.transpose(x, order), tuple(sizes[c] for g in groups for c in g))
        return ops.reshape(x, tuple(math.prod(sizes[c] for c in g) for g in groups))

    product = ops.matmul(arrange(a, la, [batch, free_a, summed]), arrange(b, lb, [batch, summed, free_b]))
    labels = "".join(batch + free_a + free_b)
    return ops.reshape(product, tuple(sizes[c] for c in labels)), labels


def einsum(subscripts: str, *operands: ArrayLike) -> Tensor:
    """NumPy's ``einsum`` (explicit ``->`` or implicit output, ``...``, repeated labels for diagonals),
    computed as transposes, sums and batched matrix products, contracting left to right."""
    if not isinstance(subscripts, str):
        raise with_location(TraceError, "einsum: the first argument must be the subscripts string")
    if not operands:
        raise with_location(ShapeError, "einsum: no operands")
    xs = [ops.asarray(x) for x in operands]
    terms, output = _einsum_terms(subscripts, xs)
    pairs = [_diagonal(x, t) for x, t in zip(xs, terms)]
    for k, (x, labels) in enumerate(pairs):
        later = output + "".join(t for _, t in pairs[:k] + pairs[k + 1:])
        pairs[k] = _sum_out(x, labels, later)
    x, labels = pairs[0]
    for k, (y, labels_y) in enumerate(pairs[1:], start=1):
        later = output + "".join(t for _, t in pairs[k + 1:])
        x, labels = _contract(x, labels, y, labels_y, later)
    x, labels = _sum_out(x, labels, output)
    return ops.transpose(x, [labels.index(c) for c in output]) if labels != output else x
