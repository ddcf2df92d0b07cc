"""Backward rules: for each differentiable primitive, the adjoint contribution to each operand.

Each rule is the ``vjp`` of its primitive's card (:mod:`lantern.ir.primitives`).

A rule gets the output's adjoint ``g``, the forward operands ``xs``, the forward result
``y`` and the primitive's attributes, all as staged tensors, and returns one contribution
per operand (``None`` where no gradient flows). Contributions may have a broadcast shape;
the transformation sums them back to the operand's shape. Rules are written with the same
staged operations users write, so they read like the math.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .. import ops
from ..ir.primitives import PRIMITIVES, inverse_perm
from ..tensor import Tensor

Rule = Callable[[Tensor, list[Tensor], Tensor, dict[str, Any]], list[Tensor | None]]


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the reverse-mode rule (``vjp``) of the primitives ``names``."""
    def register(fn: Rule) -> Rule:
        for n in names:
            PRIMITIVES[n].vjp = fn
        return fn
    return register


def primitive(name: str, args: list[Tensor], **attrs: Any) -> Tensor:
    """Emit a primitive directly (for the few adjoints the NumPy-like API does not express)."""
    frame = args[0].frame
    return Tensor(frame.emit(name, [a.var for a in args], attrs), frame)


def unbroadcast(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum ``g`` over the axes broadcasting added or stretched, giving ``shape``."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    return ops.reshape(ops.sum(g, axes), shape)


# ------------------------------------------------------------------ elementwise

@rule("add")
def _add(g, xs, y, attrs): return [g, g]
@rule("sub")
def _sub(g, xs, y, attrs): return [g, -g]
@rule("mul")
def _mul(g, xs, y, attrs): return [g * xs[1], g * xs[0]]
@rule("div")
def _div(g, xs, y, attrs): return [g / xs[1], -g * y / xs[1]]
@rule("neg")
def _neg(g, xs, y, attrs): return [-g]
@rule("exp")
def _exp(g, xs, y, attrs): return [g * y]
@rule("expm1")
def _expm1(g, xs, y, attrs): return [g * (y + 1)]
@rule("log")
def _log(g, xs, y, attrs): return [g / xs[0]]
@rule("log1p")
def _log1p(g, xs, y, attrs): return [g / (xs[0] + 1)]
@rule("sin")
def _sin(g, xs, y, attrs): return [g * ops.cos(xs[0])]
@rule("cos")
def _cos(g, xs, y, attrs): return [-g * ops.sin(xs[0])]
@rule("tanh")
def _tanh(g, xs, y, attrs): return [g * (1 - y * y)]
@rule("tan")
def _tan(g, xs, y, attrs): return [g * (1 + y * y)]
@rule("arcsin")
def _arcsin(g, xs, y, attrs): return [g * ops.rsqrt(1 - xs[0] * xs[0])]
@rule("arccos")
def _arccos(g, xs, y, attrs): return [-g * ops.rsqrt(1 - xs[0] * xs[0])]
@rule("arctan")
def _arctan(g, xs, y, attrs): return [g / (1 + xs[0] * xs[0])]
@rule("sinh")
def _sinh(g, xs, y, attrs): return [g * ops.cosh(xs[0])]
@rule("cosh")
def _cosh(g, xs, y, attrs): return [g * ops.sinh(xs[0])]
@rule("erf")
def _erf(g, xs, y, attrs): return [g * (2 / math.sqrt(math.pi)) * ops.exp(-xs[0] * xs[0])]


@rule("arctan2")
def _arctan2(g, xs, y, attrs):
    a, b = xs  # arctan2(a, b): the angle of the point (b, a)
    r2 = a * a + b * b
    return [g * b / r2, -g * a / r2]


@rule("sigmoid")
def _sigmoid(g, xs, y, attrs): return [g * y * (1 - y)]
@rule("sqrt")
def _sqrt(g, xs, y, attrs): return [g * 0.5 / y]
@rule("rsqrt")
def _rsqrt(g, xs, y, attrs): return [g * -0.5 * y / xs[0]]
@rule("abs")
def _abs(g, xs, y, attrs): return [g * ops.sign(xs[0])]
@rule("relu")
def _relu(g, xs, y, attrs): return [ops.where(xs[0] > 0, g, 0)]
@rule("mod")
def _mod(g, xs, y, attrs): return [g, -g * ops.floor_divide(xs[0], xs[1])]
@rule("broadcast")
def _broadcast(g, xs, y, attrs): return [g]  # summed back by the transformation


@rule("pow")
def _pow(g, xs, y, attrs):
    a, b = xs
    # d/db a**b = a**b log a; taken as 0 where a <= 0 (where the power is not differentiable in b)
    return [g * b * ops.power(a, b - 1), ops.where(a > 0, g * y * ops.log(ops.where(a > 0, a, 1)), 0)]


def _extremum(take_a: Callable[[Tensor, Tensor], Tensor]) -> Rule:
    def rule_fn(g, xs, y, attrs):
        a, b = xs
        tie = ops.astype(ops.equal(a, b), g.dtype) * 0.5  # ties split evenly, as in PyTorch and JAX
        wa = ops.astype(take_a(a, b), g.dtype) + tie
        return [g * wa, g * (1 - wa)]
    return rule_fn


rule("maximum")(_extremum(ops.greater))
rule("minimum")(_extremum(ops.less))


@rule("where")
def _where(g, xs, y, attrs):
    c = xs[0]
    return [None, ops.where(c, g, 0), ops.where(c, 0, g)]


@rule("cast")
def _cast(g, xs, y, attrs):
    return [ops.astype(g, xs[0].dtype)]


# ------------------------------------------------------------------ reductions

def _keepdims_shape(x: Tensor, axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape))


@rule("reduce_sum")
def _reduce_sum(g, xs, y, attrs):
    x = xs[0]
    return [ops.broadcast_to(ops.reshape(g, _keepdims_shape(x, attrs["axes"])), x.shape)]


@rule("reduce_prod")
def _reduce_prod(g, xs, y, attrs):
    # PyTorch's rule: y / x over a slice without zeros; where a slice has exactly one zero, that
    # element's gradient is the product of the others (and the rest get 0); with two or more, all 0.
    x = xs[0]
    keep = _keepdims_shape(x, attrs["axes"])
    g, y = ops.reshape(g, keep), ops.reshape(y, keep)
    zero = ops.equal(x, 0)
    zeros = ops.sum(ops.astype(zero, "int64"), attrs["axes"], keepdims=True)
    safe = ops.where(zero, 1, x)
    others = ops.reshape(primitive("reduce_prod", [safe], axes=attrs["axes"], keepdims=False), keep)
    one_zero = ops.where(zero, g * others, 0)
    return [ops.where(ops.equal(zeros, 0), g * y / safe, ops.where(ops.equal(zeros, 1), one_zero, 0))]


def _reversed_cumsum(v: Tensor, axis: int) -> Tensor:
    """Sums from each position to the end of ``axis``."""
    backwards = tuple(slice(None, None, -1) if d == axis else slice(None) for d in range(v.ndim))
    return primitive("cumsum", [v[backwards]], axis=axis)[backwards]


@rule("cumsum")
def _cumsum(g, xs, y, attrs): return [_reversed_cumsum(g, attrs["axis"])]


@rule("cumprod")
def _cumprod(g, xs, y, attrs):
    # Before the first zero z of a row: sum_{j>=i} g_j y_j / x_i. At z: sum_{j>=z} g_j y'_j, with y' the
    # running product with x_z taken as 1. After z: 0 (every product there has the factor x_z = 0).
    x, axis = xs[0], attrs["axis"]
    n = x.shape[axis]
    position = ops.reshape(ops.arange(n), tuple(n if d == axis else 1 for d in range(x.ndim)))
    zero = ops.equal(x, 0)
    first_zero = ops.min(ops.where(zero, position, n), axis, keepdims=True)
    before, at = ops.less(position, first_zero), ops.equal(position, first_zero)
    before_zero = _reversed_cumsum(g * y, axis) / ops.where(before, x, 1)
    skipping_zero = primitive("cumprod", [ops.where(at, 1, x)], axis=axis)
    at_zero = _reversed_cumsum(g * skipping_zero, axis)
    return [ops.where(before, before_zero, ops.where(at, at_zero, 0))]


@rule("reduce_max", "reduce_min")
def _reduce_extremum(g, xs, y, attrs):
    # The gradient is shared evenly among the elements that attain the extremum.
    x = xs[0]
    keep = _keepdims_shape(x, attrs["axes"])
    y = ops.reshape(y, keep)
    # The comparison is written twice, not kept: each copy is computed inside the loop that reads it (the
    # count's reduction, the gradient's elementwise loop), and no x-sized mask is stored (a max-pool's
    # gradient read and wrote it in four passes). The count is an integer sum (a float32 sum would add in
    # double, which the compiler does not vectorize from a comparison).
    count = ops.astype(ops.sum(ops.astype(ops.equal(x, y), "int32"), attrs["axes"], keepdims=True), g.dtype)
    # (a NaN extremum equals nothing: its slice's gradient is NaN, as JAX's and PyTorch's are)
    return [ops.where(ops.equal(x, y), ops.reshape(g, keep) / count, ops.where(ops.equal(y, y), 0.0, math.nan))]


@rule("softmax")
def _softmax(g, xs, y, attrs):
    # d softmax: y * (g - <g, y>) along the axis; only the result is read (the operand may die in the forward part)
    return [y * (g - ops.sum(g * y, attrs["axis"], keepdims=True))]


# ------------------------------------------------------------------ matrix product

@rule("matmul")
def _matmul(g, xs, y, attrs):
    a, b = xs
    ta, tb = bool(attrs.get("trans_a")), bool(attrs.get("trans_b"))
    # y = op(a) @ op(b). Each adjoint is another product; transposes become flags for BLAS.
    if ta:
        da = primitive("matmul", [b, g], trans_a=tb, trans_b=True)      # op(b) @ g^T
    else:
        da = primitive("matmul", [g, b], trans_a=False, trans_b=not tb)  # g @ op(b)^T
    if tb:
        db = primitive("matmul", [g, a], trans_a=True, trans_b=ta)       # g^T @ op(a)
    else:
        db = primitive("matmul", [a, g], trans_a=not ta, trans_b=False)  # op(a)^T @ g
    # A 2-D operand used by every matrix of a batch gets the sum over the batch.
    if a.ndim == 2 and da.ndim == 3:
        da = ops.sum(da, 0)
    if b.ndim == 2 and db.ndim == 3:
        db = ops.sum(db, 0)
    return [da, db]


# ------------------------------------------------------------------ convolution
# conv2d is linear in each operand; with J the input map and K the weight map,
# <g, conv2d(x, w)> = <conv2d_input_grad(g, w), x> = <conv2d_weight_grad(x, g), w>, and the two
# gradient primitives' adjoints follow from the same identities.

@rule("conv2d")
def _conv2d(g, xs, y, attrs):
    x, w = xs
    return [primitive("conv2d_input_grad", [g, w], stride=attrs["stride"], size=tuple(x.shape[1:3])),
            primitive("conv2d_weight_grad", [x, g], stride=attrs["stride"], kernel=tuple(w.shape[2:]))]


@rule("conv2d_input_grad")
def _conv2d_input_grad(g, xs, y, attrs):
    dy, w = xs
    return [primitive("conv2d", [g, w], stride=attrs["stride"]),
            primitive("conv2d_weight_grad", [g, dy], stride=attrs["stride"], kernel=tuple(w.shape[2:]))]


@rule("conv2d_weight_grad")
def _conv2d_weight_grad(g, xs, y, attrs):
    x, dy = xs
    return [primitive("conv2d_input_grad", [dy, g], stride=attrs["stride"], size=tuple(x.shape[1:3])),
            primitive("conv2d", [x, g], stride=attrs["stride"])]


# ------------------------------------------------------------------ data movement

@rule("reshape")
def _reshape(g, xs, y, attrs): return [ops.reshape(g, xs[0].shape)]


@rule("transpose")
def _transpose(g, xs, y, attrs):
    return [ops.transpose(g, inverse_perm(attrs["perm"]))]


@rule("slice")
def _slice(g, xs, y, attrs):
    return [primitive("unslice", [g], shape=xs[0].shape, starts=attrs["starts"], stops=attrs["stops"],
                      steps=attrs["steps"])]


@rule("unslice")
def _unslice(g, xs, y, attrs):
    return [primitive("slice", [g], starts=attrs["starts"], stops=attrs["stops"], steps=attrs["steps"])]


@rule("concatenate")
def _concatenate(g, xs, y, attrs):
    axis, out, start = attrs["axis"], [], 0
    for x in xs:
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, start + x.shape[axis])
        out.append(g[tuple(index)])
        start += x.shape[axis]
    return out


class Rows:
    """A contribution to some rows only: ``x_bar[index] += rows`` (the adjoint of a gather)."""

    def __init__(self, rows: Tensor, index: Tensor):
        self.rows, self.index = rows, index


@rule("take")
def _take(g, xs, y, attrs):
    x, idx = xs
    if attrs["axis"] == 0 and idx.ndim <= 1:
        # Embedding rows: add into the gathered rows in place, not into a zero matrix.
        return [Rows(g, ops.astype(idx, "int64")), None]
    return [primitive("scatter_add", [g, idx], axis=attrs["axis"], size=x.shape[attrs["axis"]]), None]


@rule("scatter_add")
def _scatter_add(g, xs, y, attrs):
    return [ops.take(g, xs[1], attrs["axis"]), None]
