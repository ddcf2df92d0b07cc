"""Reductions and running reductions beyond :mod:`lantern.ops`' sums and extrema: ``any all prod var
std norm cumsum cumprod``, with NumPy's semantics (axes, ``keepdims``, result dtypes, empty axes)."""
from __future__ import annotations

import builtins
import math
from typing import Any

from . import ops
from .errors import ShapeError, TraceError
from .ir.symbolic import Size
from .ops import ArrayLike
from .tensor import Tensor
from .tracing import with_location


def any(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,  # noqa: A001
        keepdim: bool | None = None) -> Tensor:
    """Whether any element is nonzero (NaN counts as nonzero); False over an empty axis."""
    axis, keepdims = ops.torch_names("any", axis, dim, keepdims, keepdim)
    return ops.greater(ops.sum(ops.astype(ops.not_equal(x, 0), "int64"), axis, keepdims), 0)


def all(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,  # noqa: A001
        keepdim: bool | None = None) -> Tensor:
    """Whether every element is nonzero (NaN counts as nonzero); True over an empty axis."""
    axis, keepdims = ops.torch_names("all", axis, dim, keepdims, keepdim)
    return ops.equal(ops.sum(ops.astype(ops.equal(x, 0), "int64"), axis, keepdims), 0)


def prod(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
         keepdim: bool | None = None) -> Tensor:
    """The product of the elements (integers and bools multiply as int64, as in NumPy; 1 over an empty
    axis). Its gradient is exact where elements are zero (PyTorch's rule)."""
    return ops._reduce("reduce_prod", x, *ops.torch_names("prod", axis, dim, keepdims, keepdim))


def var(x: ArrayLike, axis: Any = None, ddof: int = 0, keepdims: bool = False, *, dim: Any = None,
        keepdim: bool | None = None) -> Tensor:
    """The variance, ``sum((x - mean)**2) / (n - ddof)`` (NumPy's; ``ddof=1`` is PyTorch's default)."""
    axis, keepdims = ops.torch_names("var", axis, dim, keepdims, keepdim)
    x = ops._float(x)
    axes = ops._axes(x, axis, "var")
    n = math.prod(x.shape[a] for a in axes)
    deviation = ops.subtract(x, ops.mean(x, axes, keepdims=True))
    squares = ops.sum(ops.multiply(deviation, deviation), axes, keepdims)
    ddof = ops.operator_index(ddof)
    if isinstance(n, Size):  # a run-time count: divided by at run time
        divisor = ops.maximum(ops.subtract(ops.constant(n), ddof), 0)
        return ops.divide(squares, ops.astype(divisor, squares.type.dtype))
    divisor = builtins.max(n - ddof, 0)  # NumPy's: n <= ddof gives NaN or Inf
    return ops.divide(squares, float(divisor))


def std(x: ArrayLike, axis: Any = None, ddof: int = 0, keepdims: bool = False, *, dim: Any = None,
        keepdim: bool | None = None) -> Tensor:
    """The standard deviation, ``sqrt(var(x, axis, ddof))``."""
    axis, keepdims = ops.torch_names("std", axis, dim, keepdims, keepdim)
    return ops.sqrt(var(x, axis, ddof, keepdims))


def _root_of_squares(x: Tensor, axes: tuple[int, ...], keepdims: bool) -> Tensor:
    """``sqrt(sum(x**2))`` whose gradient at 0 is 0 (PyTorch's choice), not the NaN of sqrt's rule."""
    squares = ops.sum(ops.multiply(x, x), axes, keepdims)
    positive = ops.greater(squares, 0)
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, 1.0)), 0.0)


def norm(x: ArrayLike, ord: Any = None, axis: Any = None, keepdims: bool = False, *,  # noqa: A002
         dim: Any = None, keepdim: bool | None = None) -> Tensor:
    """``numpy.linalg.norm``: the 2-norm of all elements (``axis=None``), a vector norm over one axis
    (``ord`` = 2, 1, inf, -inf, 0 or any p), or a matrix norm over two (``"fro"``, 1, -1, inf, -inf;
    2, -2 and ``"nuc"`` need singular values, which lantern does not compute)."""
    axis, keepdims = ops.torch_names("norm", axis, dim, keepdims, keepdim)
    x = ops._float(x)
    if ord is None and axis is None:
        return _root_of_squares(x, tuple(range(x.ndim)), keepdims)
    axes = tuple(range(x.ndim)) if axis is None else ops._axis_list(x.ndim, axis, "norm", x.shape)
    if axis is None and ord is not None and x.ndim not in (1, 2):
        raise with_location(ShapeError, f"norm: ord={ord!r} needs a 1-D or 2-D array or an axis, got shape {x.shape}")
    magnitude = ops.abs(x)
    if len(axes) == 1 or (axis is None and x.ndim == 1):
        if ord is None or ord == 2:
            return _root_of_squares(x, axes, keepdims)
        if ord == math.inf:
            return ops.max(magnitude, axes, keepdims)
        if ord == -math.inf:
            return ops.min(magnitude, axes, keepdims)
        if ord == 0:
            return ops.sum(ops.astype(ops.not_equal(x, 0), x.type.dtype), axes, keepdims)
        if ord == 1:
            return ops.sum(magnitude, axes, keepdims)
        if isinstance(ord, str):
            raise with_location(TraceError, f"norm: ord={ord!r} is a matrix norm; a vector norm takes a number")
        return ops.power(ops.sum(ops.power(magnitude, float(ord)), axes, keepdims), 1.0 / float(ord))
    if len(axes) != 2:
        raise with_location(ShapeError, f"norm: axis must name one or two axes, got {axis!r}")
    if ord is None or ord == "fro":
        return _root_of_squares(x, tuple(sorted(axes)), keepdims)
    rows, cols = axes
    if ord in (1, -1, math.inf, -math.inf):
        # 1: the largest column sum of magnitudes; inf: the largest row sum (-1, -inf: the smallest)
        summed, over = (rows, cols) if ord in (1, -1) else (cols, rows)
        sums = ops.sum(magnitude, summed, keepdims=True)
        best = (ops.max if ord > 0 else ops.min)(sums, over, keepdims=True)
        return best if keepdims else ops.squeeze(best, tuple(sorted(axes)))
    raise with_location(TraceError, f"norm: ord={ord!r} over two axes needs singular values, which lantern does "
                        "not compute (supported: None, 'fro', 1, -1, inf, -inf)")


def _scan(prim: str, x: ArrayLike, axis: int | None) -> Tensor:
    x = ops.asarray(x)
    if axis is None:  # NumPy: over the flattened array
        x, axis = ops.reshape(x, (-1,)), 0
    (axis,) = ops._axis_list(x.ndim, axis, prim, x.shape)
    return ops._emit(x.frame, prim, [x], hint=prim, axis=axis)


def cumsum(x: ArrayLike, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Running sums along ``axis`` (the flattened array when None); integers and bools sum as int64."""
    return _scan("cumsum", x, ops.torch_names("cumsum", axis, dim)[0])


def cumprod(x: ArrayLike, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Running products along ``axis`` (the flattened array when None); its gradient is exact at zeros."""
    return _scan("cumprod", x, ops.torch_names("cumprod", axis, dim)[0])
