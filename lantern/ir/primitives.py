"""The primitive operations of the IR: one card per primitive with everything known about it.

A card (:class:`Primitive`) holds the typing rule (the front end builds statements through
:func:`infer`, so a bad program fails while tracing, with the user's line; the verifier re-runs
it on every statement), the NumPy meaning (``ref``, run by the reference interpreter), the
policy flags that passes, AD and the backends read, and slots for the rules of each program
transformation: the reverse-mode rule (``vjp``, filled in by :mod:`lantern.ad.rules`), and room
for forward mode (``jvp``) and batching (``batch``). A backend keeps its kernels in a table keyed
by the same names (``lantern.codegen.kernels``); ``tests/test_primitives.py`` checks that every
registry is complete.

Conventions the front end guarantees (it inserts casts and broadcasts to get there):
elementwise operands share one dtype (``where``'s condition is bool), reductions name
their axes as a sorted tuple of non-negative ints, and ``matmul`` sees 2-D or 3-D operands.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import DTypeError, ShapeError
from .symbolic import Size, shape_text
from .types import FLOAT_DTYPES, INT_DTYPES, TensorType

Infer = Callable[[list[TensorType], dict[str, Any]], TensorType]

ELEMENTWISE = "elementwise"


@dataclass
class Primitive:
    """Everything known about one primitive (see the module docstring)."""

    name: str
    kind: str                        # elementwise, reduce, matmul, take, ...: how backends compute it
    infer: Infer                     # operand types and attributes -> result type (raises on bad input)
    ref: Callable[..., np.ndarray]   # the NumPy meaning
    differentiable: bool = True      # gradients flow through it (else it is a constant for AD)
    #: finite operands may give NaN or Inf (``check_finite`` checks its float results)
    may_make_nonfinite: bool = True
    #: AD stores its result per iteration of a counted loop for the reverse loop, rather than
    #: recomputing it (the expensive part of a loop body: products, transcendental functions)
    saved_in_loops: bool = False
    #: a copy of loop-invariant operands: moved out of loop bodies (``ir/passes/hoist.py``)
    hoistable: bool = False
    #: its result is its operand's memory, seen with another shape or after a check (C makes no copy)
    view: bool = False
    # rules of the program transformations, filled in where each is defined
    vjp: Callable[..., Any] | None = None    # reverse mode (lantern/ad/rules.py)
    jvp: Callable[..., Any] | None = None    # forward mode (not yet)
    batch: Callable[..., Any] | None = None  # vmap (not yet)


PRIMITIVES: dict[str, Primitive] = {}


def _register(name: str, kind: str, infer: Infer, ref: Callable[..., np.ndarray], differentiable: bool = True,
              **flags: bool) -> None:
    PRIMITIVES[name] = Primitive(name, kind, infer, ref, differentiable, **flags)


def broadcast_shapes(*shapes: tuple[int, ...], op: str = "broadcast") -> tuple[int, ...]:
    """NumPy broadcasting of shapes, raising ``ShapeError`` naming ``op``. With run-time sizes each
    ``== 1`` and each equality is a decision of the trace (a guard, see ``ir/symbolic.py``)."""
    # By hand: np.broadcast_shapes also rejects shapes too large for an array, with the same
    # ValueError; lantern reports size separately (tracing.Frame.emit).
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(ndim):
        dim = None
        for s in shapes:
            if k - ndim + len(s) < 0:
                continue
            d = s[k - ndim + len(s)]
            if d == 1:
                continue
            if dim is None:
                dim = d
            elif d != dim:
                raise ShapeError(f"{op}: shapes {', '.join(map(shape_str, shapes))} cannot be broadcast together")
        out.append(1 if dim is None else dim)
    return tuple(out)


def shape_str(shape: tuple) -> str:
    """A shape as NumPy prints it, run-time sizes by name: ``(n_words, 150)``."""
    return f"({shape_text(shape).replace(',', ', ')}{',' if len(shape) == 1 else ''})"


def infer(prim: str, arg_types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return PRIMITIVES[prim].infer(arg_types, attrs)


# ---------------------------------------------------------------- elementwise

def _same_dtype(name: str, types: list[TensorType]) -> str:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise DTypeError(f"{name}: operands have different dtypes {sorted(dtypes)}")
    return types[0].dtype


def _elementwise(name: str, arity: int, ref: Callable[..., np.ndarray], *, out_dtype: str | None = None,
                 allowed: tuple[str, ...] | None = None, differentiable: bool = True, **flags: bool) -> None:
    def infer_fn(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        if len(types) != arity:
            raise ShapeError(f"{name}: expected {arity} operands, got {len(types)}")
        dtype = _same_dtype(name, types)
        if allowed is not None and dtype not in allowed:
            raise DTypeError(f"{name}: dtype {dtype} not supported (expected one of {', '.join(allowed)})")
        return TensorType(broadcast_shapes(*(t.shape for t in types), op=name), out_dtype or dtype)

    _register(name, ELEMENTWISE, infer_fn, ref, differentiable, **flags)


def _as(dtype: str):
    return lambda f: (lambda *a, **k: np.asarray(f(*a, **k)).astype(dtype, copy=False))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x))).astype(x.dtype)


def _floordiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.floor_divide(a, b)


def _mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.remainder(a, b)


def _ipow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        # Negative integer powers are an error in NumPy; the C code returns 0 for them
        # (except base 1 and -1), so the oracle does the same.
        a, b = np.broadcast_arrays(a, b)
        neg = b < 0
        out = np.power(a, np.where(neg, 0, b))
        small = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 0, 1, -1), 0))
        return np.where(neg, small, out).astype(a.dtype)
    with np.errstate(all="ignore"):
        return np.power(a, b)


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function (NumPy has none; C's ``erf`` is what the generated code calls)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def _errstate(f: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def wrapped(*args: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return f(*args)
    return wrapped


_NUMERIC = ("int32", "int64", "float32", "float64")
_FLOAT = FLOAT_DTYPES
_INT = INT_DTYPES

# Finite in, finite out: check_finite skips these (a NaN they pass on is reported where it was made).
_KEEPS_FINITE = {"may_make_nonfinite": False}

_elementwise("exp", 1, _errstate(np.exp), allowed=_FLOAT, saved_in_loops=True)
_elementwise("log", 1, _errstate(np.log), allowed=_FLOAT)
_elementwise("log1p", 1, _errstate(np.log1p), allowed=_FLOAT)
_elementwise("expm1", 1, _errstate(np.expm1), allowed=_FLOAT)
_elementwise("sin", 1, _errstate(np.sin), allowed=_FLOAT, **_KEEPS_FINITE)
_elementwise("cos", 1, _errstate(np.cos), allowed=_FLOAT, **_KEEPS_FINITE)
_elementwise("tanh", 1, _errstate(np.tanh), allowed=_FLOAT, saved_in_loops=True, **_KEEPS_FINITE)
_elementwise("sigmoid", 1, _errstate(_sigmoid), allowed=_FLOAT, saved_in_loops=True, **_KEEPS_FINITE)
_elementwise("sqrt", 1, _errstate(np.sqrt), allowed=_FLOAT)
_elementwise("rsqrt", 1, _errstate(lambda x: 1 / np.sqrt(x)), allowed=_FLOAT)
_elementwise("floor", 1, _errstate(np.floor), allowed=_FLOAT, differentiable=False, **_KEEPS_FINITE)
_elementwise("round", 1, _errstate(np.rint), allowed=_FLOAT, differentiable=False, **_KEEPS_FINITE)  # half to even
_elementwise("tan", 1, _errstate(np.tan), allowed=_FLOAT)
_elementwise("arcsin", 1, _errstate(np.arcsin), allowed=_FLOAT)
_elementwise("arccos", 1, _errstate(np.arccos), allowed=_FLOAT)
_elementwise("arctan", 1, _errstate(np.arctan), allowed=_FLOAT, **_KEEPS_FINITE)
_elementwise("sinh", 1, _errstate(np.sinh), allowed=_FLOAT, saved_in_loops=True)
_elementwise("cosh", 1, _errstate(np.cosh), allowed=_FLOAT, saved_in_loops=True)
_elementwise("erf", 1, _errstate(lambda x: _erf(x)), allowed=_FLOAT, saved_in_loops=True, **_KEEPS_FINITE)
_elementwise("neg", 1, np.negative, allowed=_NUMERIC, **_KEEPS_FINITE)
_elementwise("abs", 1, np.abs, allowed=_NUMERIC, **_KEEPS_FINITE)
_elementwise("sign", 1, np.sign, allowed=_NUMERIC, differentiable=False, **_KEEPS_FINITE)
_elementwise("relu", 1, lambda x: np.where(x < 0, np.zeros_like(x), x), allowed=_NUMERIC, **_KEEPS_FINITE)
_elementwise("logical_not", 1, np.logical_not, allowed=("bool",), differentiable=False)
# The identity, as a constant for AD: no gradient flows back through it.
_elementwise("stop_gradient", 1, lambda x: np.array(x, copy=True), differentiable=False, **_KEEPS_FINITE)

_elementwise("add", 2, _errstate(np.add), allowed=_NUMERIC)
_elementwise("sub", 2, _errstate(np.subtract), allowed=_NUMERIC)
_elementwise("mul", 2, _errstate(np.multiply), allowed=_NUMERIC)
_elementwise("maximum", 2, _errstate(np.maximum), allowed=_NUMERIC, **_KEEPS_FINITE)
_elementwise("minimum", 2, _errstate(np.minimum), allowed=_NUMERIC, **_KEEPS_FINITE)
_elementwise("div", 2, _errstate(np.true_divide), allowed=_FLOAT)
_elementwise("pow", 2, _ipow, allowed=_NUMERIC)
_elementwise("arctan2", 2, _errstate(np.arctan2), allowed=_FLOAT, **_KEEPS_FINITE)
# Python semantics (floor division; the remainder has the divisor's sign) for every numeric
# dtype; floats follow NumPy's divmod exactly (1.0 // 0.1 == 9.0), integer division by zero gives 0.
_elementwise("floordiv", 2, _floordiv, allowed=_NUMERIC, differentiable=False)
_elementwise("mod", 2, _mod, allowed=_NUMERIC)
for _name, _fn in {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
                   "gt": np.greater, "ge": np.greater_equal}.items():
    _elementwise(_name, 2, _fn, out_dtype="bool", differentiable=False)
_elementwise("logical_and", 2, np.logical_and, allowed=("bool",), differentiable=False)
_elementwise("logical_or", 2, np.logical_or, allowed=("bool",), differentiable=False)


def _infer_where(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if len(types) != 3:
        raise ShapeError(f"where: expected 3 operands, got {len(types)}")
    c, a, b = types
    if c.dtype != "bool":
        raise DTypeError(f"where: condition must be bool, got {c.dtype}")
    dtype = _same_dtype("where", [a, b])
    return TensorType(broadcast_shapes(c.shape, a.shape, b.shape, op="where"), dtype)


_register("where", ELEMENTWISE, _infer_where, np.where, **_KEEPS_FINITE)


def _infer_cast(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    return TensorType(x.shape, attrs["dtype"])


_register("cast", ELEMENTWISE, _infer_cast, lambda x, dtype: _cast(x, dtype))


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    # C converts float to int by truncation toward zero, like NumPy; out-of-range values
    # are undefined in both, so the oracle clips first to stay deterministic.
    if x.dtype.kind == "f" and dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            x = np.nan_to_num(np.clip(x, info.min, info.max), nan=0)
    return x.astype(dtype)


def _infer_broadcast(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    shape = tuple(attrs["shape"])
    if broadcast_shapes(x.shape, shape, op="broadcast_to") != shape:
        raise ShapeError(f"broadcast_to: cannot broadcast {x.shape} to {shape}")
    return TensorType(shape, x.dtype)


_register("broadcast", ELEMENTWISE, _infer_broadcast,
          lambda x, shape: np.broadcast_to(x, shape).copy(), **_KEEPS_FINITE)


def _infer_fill(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if types:
        raise ShapeError("fill takes no operands")
    return TensorType(tuple(attrs["shape"]), attrs["dtype"])


_register("fill", ELEMENTWISE, _infer_fill,
          lambda value, shape, dtype: np.full(shape, value, dtype=dtype), differentiable=False)


# ---------------------------------------------------------------- constants and ranges

def _infer_constant(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    value: np.ndarray = attrs["value"]
    return TensorType(tuple(value.shape), value.dtype.name)


_register("constant", "constant", _infer_constant, lambda value: value.copy(), differentiable=False,
          may_make_nonfinite=False)


def _infer_iota(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    return TensorType((attrs["n"],), attrs["dtype"])


_register("iota", "iota", _infer_iota,
          lambda n, start, step, dtype: (start + step * np.arange(n)).astype(dtype), differentiable=False,
          may_make_nonfinite=False)


def _infer_size(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if types:
        raise ShapeError("size takes no operands")
    return TensorType((), "int64")


# A size as a staged int64 scalar (``x.shape[0]`` used as a value: a loop bound, arithmetic with tensors).
_register("size", "size", _infer_size, lambda value: np.array(value, np.int64), differentiable=False,
          may_make_nonfinite=False)


# ---------------------------------------------------------------- reductions

def _reduced_shape(name: str, x: TensorType, axes: tuple[int, ...], keepdims: bool) -> tuple[int, ...]:
    if list(axes) != sorted(set(axes)) or any(not 0 <= a < x.ndim for a in axes):
        raise ShapeError(f"{name}: bad axes {axes} for shape {x.shape}")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def _reduction(name: str, ref: Callable[..., np.ndarray], dtype_rule: Callable[[str], str],
               nonempty: bool, differentiable: bool = True, **flags: bool) -> None:
    def infer_fn(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        (x,) = types
        axes = tuple(attrs["axes"])
        if nonempty and any(x.shape[a] == 0 for a in axes):
            raise ShapeError(f"{name}: zero-size reduction over axes {axes} of shape {x.shape} has no identity")
        return TensorType(_reduced_shape(name, x, axes, attrs["keepdims"]), dtype_rule(x.dtype))

    _register(name, "reduce", infer_fn, ref, differentiable, **flags)


def _sum_dtype(dtype: str) -> str:
    return dtype if dtype in FLOAT_DTYPES else "int64"


_reduction("reduce_sum", lambda x, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims, dtype=_sum_dtype(x.dtype.name)),
           _sum_dtype, nonempty=False)
_reduction("reduce_max", lambda x, axes, keepdims: np.max(x, axis=axes, keepdims=keepdims), lambda d: d, nonempty=True,
           **_KEEPS_FINITE)
_reduction("reduce_min", lambda x, axes, keepdims: np.min(x, axis=axes, keepdims=keepdims), lambda d: d, nonempty=True,
           **_KEEPS_FINITE)


_reduction("reduce_prod", lambda x, axes, keepdims: np.prod(x, axis=axes, keepdims=keepdims, dtype=_sum_dtype(x.dtype.name)),
           _sum_dtype, nonempty=False, saved_in_loops=True)


def _scan(name: str, ref: Callable[..., np.ndarray]) -> None:
    """A running sum or product along ``axis`` (the result has the operand's shape; NumPy's dtype)."""
    def infer_fn(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        (x,) = types
        if not 0 <= attrs["axis"] < x.ndim:
            raise ShapeError(f"{name}: axis {attrs['axis']} out of range for shape {x.shape}")
        return TensorType(x.shape, _sum_dtype(x.dtype))

    def ref_fn(x: np.ndarray, axis: int) -> np.ndarray:
        with np.errstate(all="ignore"):
            return ref(x, axis=axis, dtype=_sum_dtype(x.dtype.name))

    _register(name, "scan", infer_fn, ref_fn, saved_in_loops=True)


_scan("cumsum", np.cumsum)
_scan("cumprod", np.cumprod)


def _infer_argsort(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    if not 0 <= attrs["axis"] < x.ndim:
        raise ShapeError(f"argsort: axis {attrs['axis']} out of range for shape {x.shape}")
    return TensorType(x.shape, "int64")


def _ref_argsort(x: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """Stable: equal elements keep their order; NaN counts as the largest value (last, or first when
    descending), as NumPy and PyTorch place it."""
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    n = x.shape[axis]
    backwards = np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    return (n - 1 - backwards).astype(np.int64)


_register("argsort", "sort", _infer_argsort, _ref_argsort, differentiable=False, **_KEEPS_FINITE)


def _infer_softmax(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    if x.dtype not in ("float32", "float64"):
        raise DTypeError(f"softmax: expected a floating-point operand, got {x.dtype}")
    if not 0 <= attrs["axis"] < x.ndim:
        raise ShapeError(f"softmax: axis {attrs['axis']} out of range for shape {x.shape}")
    return x


def _ref_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis, keepdims=True))
    return (e / np.sum(e, axis, keepdims=True)).astype(x.dtype)


# One primitive, not exp(x - max) / sum: its gradient reads only its result (as PyTorch's and JAX's do), so the
# backward part keeps one array of attention weights per layer, not the exponentials as well.
_register("softmax", "softmax", _infer_softmax, _ref_softmax, saved_in_loops=True)


def _arg_infer(name: str) -> Infer:
    def infer_fn(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        (x,) = types
        axis = attrs["axis"]
        if not 0 <= axis < x.ndim:
            raise ShapeError(f"{name}: axis {axis} out of range for shape {x.shape}")
        if x.shape[axis] == 0:
            raise ShapeError(f"{name}: attempt to get {name} of an empty axis (shape {x.shape})")
        return TensorType(_reduced_shape(name, x, (axis,), attrs["keepdims"]), "int64")
    return infer_fn


_register("argmax", "reduce", _arg_infer("argmax"),
          lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims), differentiable=False, **_KEEPS_FINITE)
_register("argmin", "reduce", _arg_infer("argmin"),
          lambda x, axis, keepdims: np.argmin(x, axis=axis, keepdims=keepdims), differentiable=False, **_KEEPS_FINITE)


# ---------------------------------------------------------------- matrix product

def _infer_matmul(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    a, b = types
    if a.dtype != b.dtype or a.dtype == "bool":
        raise DTypeError(f"matmul: operands must share a numeric dtype, got {a.dtype} and {b.dtype}")
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ShapeError(f"matmul: expected 2-D or 3-D operands, got {a.shape} and {b.shape}")
    m, k = a.shape[-2:][::-1] if attrs.get("trans_a") else a.shape[-2:]
    k2, n = b.shape[-2:][::-1] if attrs.get("trans_b") else b.shape[-2:]
    if k != k2:
        raise ShapeError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape}")
    batch = [s.shape[0] for s in (a, b) if s.ndim == 3]
    if len(batch) == 2 and batch[0] != batch[1]:
        raise ShapeError(f"matmul: batch sizes differ: {a.shape} @ {b.shape}")
    return TensorType((*batch[:1], m, n), a.dtype)


def _ref_matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    if trans_a:
        a = np.swapaxes(a, -1, -2)
    if trans_b:
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


_register("matmul", "matmul", _infer_matmul, _ref_matmul, saved_in_loops=True)


# ---------------------------------------------------------------- convolution
# Direct 2-D convolution (cross-correlation, as PyTorch's) in the layout [C, H, W, N]: the batch last, so the
# innermost loop of every kernel runs along N contiguous values. Padding is the caller's (``nn.Conv2d`` pads
# first). The three primitives are each other's adjoints: convolution is linear in either operand.

def _conv_out(size: Any, kernel: int, stride: int) -> Any:
    return (size - kernel) // stride + 1


def _check_conv(name: str, types: list[TensorType], stride: Any) -> None:
    if any(t.dtype not in ("float32", "float64") for t in types) or len({t.dtype for t in types}) != 1:
        raise DTypeError(f"{name}: operands must share a floating-point dtype, got {[str(t.dtype) for t in types]}")
    if any(t.ndim != 4 for t in types):
        raise ShapeError(f"{name}: expected 4-D operands, got {[t.shape for t in types]}")
    if len(stride) != 2 or any(not isinstance(v, int) or v < 1 for v in stride):
        raise ShapeError(f"{name}: stride must be two positive ints, got {stride}")


def _infer_conv2d(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, w = types
    _check_conv("conv2d", types, attrs["stride"])
    (sh, sw), (_, h, wd, n), (o, c, kh, kw) = attrs["stride"], x.shape, w.shape
    if x.shape[0] != c or h < kh or wd < kw:
        raise ShapeError(f"conv2d: input [C, H, W, N] {x.shape} does not fit a weight [O, C, KH, KW] {w.shape}")
    return TensorType((o, _conv_out(h, kh, sh), _conv_out(wd, kw, sw), n), x.dtype)


def _infer_conv2d_input_grad(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    dy, w = types
    _check_conv("conv2d_input_grad", types, attrs["stride"])
    (sh, sw), (h, wd), (o, c, kh, kw) = attrs["stride"], attrs["size"], w.shape
    if dy.shape[:3] != (o, _conv_out(h, kh, sh), _conv_out(wd, kw, sw)):
        raise ShapeError(f"conv2d_input_grad: adjoint {dy.shape} does not fit a weight {w.shape} and input size "
                         f"{(h, wd)}")
    return TensorType((c, h, wd, dy.shape[3]), dy.dtype)


def _infer_conv2d_weight_grad(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, dy = types
    _check_conv("conv2d_weight_grad", types, attrs["stride"])
    (sh, sw), (kh, kw) = attrs["stride"], attrs["kernel"]
    if dy.shape[1:] != (_conv_out(x.shape[1], kh, sh), _conv_out(x.shape[2], kw, sw), x.shape[3]):
        raise ShapeError(f"conv2d_weight_grad: adjoint {dy.shape} does not fit an input {x.shape} and kernel "
                         f"{(kh, kw)}")
    return TensorType((dy.shape[0], x.shape[0], kh, kw), x.dtype)


def _windows(x: np.ndarray, di: int, dj: int, oh: int, ow: int, stride: tuple[int, int]) -> np.ndarray:
    """``x[:, i*sh + di, j*sw + dj, :]`` for every output position ``(i, j)``: ``[C, OH, OW, N]``."""
    sh, sw = stride
    return x[:, di:di + sh * (oh - 1) + 1:sh, dj:dj + sw * (ow - 1) + 1:sw, :]


def _ref_conv2d(x: np.ndarray, w: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    o, _, kh, kw = w.shape
    oh, ow = _conv_out(x.shape[1], kh, stride[0]), _conv_out(x.shape[2], kw, stride[1])
    out = np.zeros((o, oh, ow, x.shape[3]), x.dtype)
    for di in range(kh):
        for dj in range(kw):
            out += np.einsum("oc,cijn->oijn", w[:, :, di, dj], _windows(x, di, dj, oh, ow, stride))
    return out


def _ref_conv2d_input_grad(dy: np.ndarray, w: np.ndarray, stride: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    _, c, kh, kw = w.shape
    dx = np.zeros((c, *size, dy.shape[3]), dy.dtype)
    for di in range(kh):
        for dj in range(kw):
            _windows(dx, di, dj, dy.shape[1], dy.shape[2], stride)[...] += np.einsum("oc,oijn->cijn", w[:, :, di, dj], dy)
    return dx


def _ref_conv2d_weight_grad(x: np.ndarray, dy: np.ndarray, stride: tuple[int, int], kernel: tuple[int, int]) -> np.ndarray:
    dw = np.zeros((dy.shape[0], x.shape[0], *kernel), x.dtype)
    for di in range(kernel[0]):
        for dj in range(kernel[1]):
            dw[:, :, di, dj] = np.einsum("oijn,cijn->oc", dy, _windows(x, di, dj, dy.shape[1], dy.shape[2], stride))
    return dw


_register("conv2d", "conv", _infer_conv2d, _ref_conv2d, saved_in_loops=True)
_register("conv2d_input_grad", "conv", _infer_conv2d_input_grad, _ref_conv2d_input_grad, saved_in_loops=True)
_register("conv2d_weight_grad", "conv", _infer_conv2d_weight_grad, _ref_conv2d_weight_grad, saved_in_loops=True)


# ---------------------------------------------------------------- shape and data movement

def _infer_reshape(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    shape = tuple(attrs["shape"])
    if math.prod(shape) != x.size:
        raise ShapeError(f"reshape: cannot reshape {x.shape} (size {x.size}) to {shape}")
    return TensorType(shape, x.dtype)


_register("reshape", "reshape", _infer_reshape, lambda x, shape: np.reshape(x, shape), hoistable=True, view=True,
          **_KEEPS_FINITE)


def _infer_transpose(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"transpose: {perm} is not a permutation of the axes of {x.shape}")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


_register("transpose", "transpose", _infer_transpose, lambda x, perm: np.ascontiguousarray(np.transpose(x, perm)),
          hoistable=True, **_KEEPS_FINITE)


def inverse_perm(perm: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The permutation that undoes ``transpose(x, perm)``: ``transpose(transpose(x, perm), inverse_perm(perm))
    == x``."""
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return tuple(inverse)


def _infer_slice(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    starts, stops, steps = attrs["starts"], attrs["stops"], attrs["steps"]
    if not len(starts) == len(stops) == len(steps) == x.ndim:
        raise ShapeError(f"slice: need one (start, stop, step) per axis of {x.shape}")
    shape = []
    for d, start, stop, step in zip(x.shape, starts, stops, steps):
        n = slice_length(start, stop, step)
        if n and not (0 <= start < d and 0 <= start + (n - 1) * step < d):
            raise ShapeError(f"slice: {start}:{stop}:{step} out of bounds for axis of size {d}")
        shape.append(n)
    return TensorType(tuple(shape), x.dtype)


def slice_length(start: int | Size, stop: int | Size, step: int) -> int | Size:
    """``len(range(start, stop, step))``, for run-time sizes too (a step other than 1 or -1 fixes them)."""
    if not (isinstance(start, Size) or isinstance(stop, Size)):
        return len(range(start, stop, step))
    if step in (1, -1):
        n = (stop - start) * step
        return n if n > 0 else 0
    return len(range(int(start), int(stop), step))


def _python_slice(start: int, stop: int, step: int) -> slice:
    """The slice reading ``range(start, stop, step)`` (normalized bounds: a stop of -1 means "past 0")."""
    r = range(int(start), int(stop), step)
    if not r:
        return slice(0, 0)
    end = r[-1] + (1 if step > 0 else -1)
    return slice(r[0], end if end >= 0 else None, step)


def _ref_slice(x: np.ndarray, starts, stops, steps) -> np.ndarray:
    return x[tuple(map(_python_slice, starts, stops, steps))].copy()


_register("slice", "slice", _infer_slice, _ref_slice, hoistable=True, **_KEEPS_FINITE)


def _infer_concat(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    axis = attrs["axis"]
    if not types:
        raise ShapeError("concatenate: need at least one array")
    first = types[0]
    if not 0 <= axis < first.ndim:
        raise ShapeError(f"concatenate: axis {axis} out of range for shape {first.shape}")
    _same_dtype("concatenate", types)
    for t in types[1:]:
        if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            raise ShapeError(f"concatenate: shapes {[t.shape for t in types]} differ off axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return TensorType(tuple(shape), first.dtype)


_register("concatenate", "concatenate", _infer_concat, lambda *xs, axis: np.concatenate(xs, axis=axis),
          hoistable=True, **_KEEPS_FINITE)


def _infer_take(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    x, idx = types
    axis = attrs["axis"]
    if idx.dtype not in INT_DTYPES:
        raise DTypeError(f"take: indices must be integers, got {idx.dtype}")
    if not 0 <= axis < x.ndim:
        raise ShapeError(f"take: axis {axis} out of range for shape {x.shape}")
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)


def _ref_take(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    if np.any((idx < -n) | (idx >= n)):
        from ..errors import OutOfBoundsError
        raise OutOfBoundsError(f"take: index out of bounds for axis {axis} with size {n}")
    return np.take(x, idx, axis=axis)


_register("take", "take", _infer_take, _ref_take, **_KEEPS_FINITE)


def _infer_check_range(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (x,) = types
    if x.dtype not in INT_DTYPES:
        raise DTypeError(f"check_range: values must be integers, got {x.dtype}")
    return x


def _ref_check_range(x: np.ndarray, n: int, what: str) -> np.ndarray:
    bad = (x < 0) | (x >= n)
    if np.any(bad):
        from ..errors import OutOfBoundsError
        raise OutOfBoundsError(f"{what}: index {x[bad].ravel()[0]} is out of bounds for an axis of size {n}")
    return x.copy()


# Its operand, after checking that every value is in [0, n) (a class index: one_hot, cross_entropy).
_register("check_range", "check_range", _infer_check_range, _ref_check_range, differentiable=False, view=True,
          **_KEEPS_FINITE)


# ---------------------------------------------------------------- adjoints of data movement

def _infer_unslice(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    (g,) = types
    shape = tuple(attrs["shape"])
    sliced = _infer_slice([TensorType(shape, g.dtype)], {"starts": attrs["starts"], "stops": attrs["stops"],
                                                          "steps": attrs["steps"]})
    if sliced.shape != g.shape:
        raise ShapeError(f"unslice: value of shape {g.shape} does not fit slice of {shape} (gives {sliced.shape})")
    return TensorType(shape, g.dtype)


def _ref_unslice(g: np.ndarray, shape, starts, stops, steps) -> np.ndarray:
    out = np.zeros(shape, g.dtype)
    out[tuple(map(_python_slice, starts, stops, steps))] = g
    return out


# The adjoint of ``slice``: zeros of ``shape`` with ``g`` written where the slice read.
_register("unslice", "unslice", _infer_unslice, _ref_unslice, **_KEEPS_FINITE)


def _infer_scatter_add(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    g, idx = types
    axis, size = attrs["axis"], attrs["size"]
    if idx.dtype not in INT_DTYPES:
        raise DTypeError(f"scatter_add: indices must be integers, got {idx.dtype}")
    if g.shape[axis:axis + idx.ndim] != idx.shape:
        raise ShapeError(f"scatter_add: values {g.shape} do not match indices {idx.shape} at axis {axis}")
    return TensorType(g.shape[:axis] + (size,) + g.shape[axis + idx.ndim:], g.dtype)


def _ref_scatter_add(g: np.ndarray, idx: np.ndarray, axis: int, size: int) -> np.ndarray:
    out = np.zeros(g.shape[:axis] + (size,) + g.shape[axis + idx.ndim:], g.dtype)
    moved = np.moveaxis(out, axis, 0)
    rows = np.reshape(np.moveaxis(g.reshape(g.shape[:axis] + (-1,) + g.shape[axis + idx.ndim:]), axis, 0),
                      (idx.size,) + moved.shape[1:])
    np.add.at(moved, np.where(idx < 0, idx + size, idx).ravel(), rows)
    return out


# The adjoint of ``take``: zeros with the rows of ``g`` added at the indices (repeats add up).
_register("scatter_add", "scatter", _infer_scatter_add, _ref_scatter_add)


# ---------------------------------------------------------------- random numbers

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 arrays (wrapping arithmetic, as in C)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _infer_random_uniform(types: list[TensorType], attrs: dict[str, Any]) -> TensorType:
    if len(types) != 1 or types[0].shape != () or types[0].dtype != "int64":
        raise DTypeError(f"random_uniform: the key must be a 0-d int64, got {types}")
    if attrs["dtype"] not in FLOAT_DTYPES:
        raise DTypeError(f"random_uniform: dtype must be float32 or float64, got {attrs['dtype']}")
    return TensorType(tuple(attrs["shape"]), attrs["dtype"])


def _ref_random_uniform(key: np.ndarray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Counter-based: element ``i`` (flat, row-major) is ``mix64(seed + (i + 1) * golden)`` with
    ``seed = mix64(key + golden)`` -- the SplitMix64 stream seeded by the key. The top 24
    (float32) or 53 (float64) bits give a value in [0, 1) exactly, so C (``lt_uniform_*`` in
    the runtime) produces the same bits."""
    with np.errstate(over="ignore"):
        seed = _mix64(np.asarray(key, np.int64).astype(np.uint64).reshape(1) + _GOLDEN)
        counters = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint64)
        bits = _mix64(seed + counters * _GOLDEN)
    if dtype == "float32":
        out = (bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24)
    else:
        out = (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return out.reshape(shape)


# Uniform [0, 1) values of ``shape`` determined by an int64 key (same in NumPy and C).
_register("random_uniform", "random", _infer_random_uniform, _ref_random_uniform, differentiable=False,
          **_KEEPS_FINITE)
