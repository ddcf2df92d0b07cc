"""The NumPy-like functions on staged tensors. Each lowers to primitives of :mod:`lantern.ir.primitives`.

Dtype promotion follows NumPy 2 exactly (Python scalars are "weak": ``float32 + 1.0``
stays float32), by asking NumPy itself what a ufunc would return.
"""
from __future__ import annotations

import builtins
import math
from math import prod
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DTypeError, OutOfBoundsError, ShapeError, TraceError
from .ir import primitives
from .ir.symbolic import Size, known_equal
from .ir.types import FLOAT_DTYPES, INT_DTYPES, TensorType, canonical_dtype
from .tensor import Tensor
from .source import error_location, user_location
from .tracing import Frame, require_frame, with_location

Scalar = bool | int | float
ArrayLike = Tensor | Scalar | np.ndarray | np.generic

_PY_SCALARS = (bool, int, float)


# ------------------------------------------------------------------ lifting values

def _frame_of(*xs: Any) -> Frame:
    frame = require_frame("lantern operations on tensors")
    for x in xs:
        if isinstance(x, Tensor) and frame.adopt(x).frame is not frame:
            raise with_location(TraceError, f"{x!r} belongs to another trace (a value leaked from an "
                                "earlier staged call or from a different staged function)")
    return frame


def _emit(frame: Frame, prim: str, args: Sequence[Tensor], hint: str | None = None, **attrs: Any) -> Tensor:
    args = [frame.adopt(a) for a in args]  # values of an enclosing function are captured
    for a in args:
        frame.check_in_scope(a.var, prim)
    return Tensor(frame.emit(prim, [a.var for a in args], attrs, hint), frame)


def _default_dtype(value: Scalar) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    return "float32"


def constant(value: Any, dtype: Any = None) -> Tensor:
    """A staged constant from a Python scalar or NumPy array (embedded in the generated code)."""
    frame = _frame_of()
    if isinstance(value, Tensor):
        return astype(value, dtype) if dtype is not None else value
    if isinstance(value, Size):  # a run-time size (x.shape[0]) as an int64 scalar
        size = _emit(frame, "size", [], hint="size", value=value)
        return astype(size, dtype) if dtype is not None else size
    if isinstance(value, _PY_SCALARS) and not isinstance(value, np.generic):
        dt = canonical_dtype(dtype) if dtype is not None else _default_dtype(value)
        return _emit(frame, "fill", [], hint="c", value=_scalar_value(value, dt), shape=(), dtype=dt)
    arr = np.asarray(value)
    if arr.dtype == object:
        raise with_location(DTypeError, f"cannot stage a value of type {type(value).__name__}")
    dt = canonical_dtype(dtype if dtype is not None else arr.dtype)
    arr = np.array(arr, dtype=dt, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if arr.ndim == 0:
        return _emit(frame, "fill", [], hint="c", value=arr.item(), shape=(), dtype=dt)
    arr.setflags(write=False)
    return _emit(frame, "constant", [], hint="const", value=arr)


def _scalar_value(value: Scalar, dtype: str) -> Scalar:
    return np.array(value).astype(dtype).item()


def asarray(x: ArrayLike, dtype: Any = None) -> Tensor:
    """``x`` as a staged tensor (constants are embedded)."""
    if isinstance(x, Tensor):
        x = _frame_of(x).adopt(x)  # a value of an enclosing function, captured
        return astype(x, dtype) if dtype is not None else x
    return constant(x, dtype)


def _dtype_proxy(x: ArrayLike, op: str) -> Any:
    """Something NumPy's promotion treats like ``x``: weak for Python scalars."""
    if isinstance(x, Tensor):  # (an empty tensor has no element to raise on: int ** -1 is fine for NumPy)
        return np.zeros((0,) if known_equal(x.size, 0) else (), x.dtype)
    if isinstance(x, _PY_SCALARS):
        return x
    if isinstance(x, Size):
        return 0  # a Python int (weak) for NumPy's promotion
    arr = np.asarray(x)
    if arr.dtype.kind in "OUS":  # None, strings, lists mixing strings and numbers
        text = repr(x) if len(repr(x)) <= 40 else repr(x)[:37] + "..."
        raise with_location(DTypeError, f"{op}: an operand is a {type(x).__name__} {text}, not a tensor, array "
                            "or number")
    try:
        canonical_dtype(arr.dtype)
    except DTypeError as exc:
        raise with_location(DTypeError, f"{op}: {exc}") from None
    return np.zeros((), arr.dtype)


def _lift_as(x: ArrayLike, dtype: str) -> Tensor:
    if isinstance(x, Tensor):
        return x if x.type.dtype == dtype else astype(x, dtype)
    return constant(x, dtype)


def astype(x: ArrayLike, dtype: Any) -> Tensor:
    dt = canonical_dtype(dtype)
    x = asarray(x)
    if x.type.dtype == dt:
        return x
    return _emit(x.frame, "cast", [x], hint="cast", dtype=dt)


class IntOverflowError(DTypeError, OverflowError):
    """A Python int operand beyond the integer dtype of the tensor it meets (NumPy raises OverflowError)."""


def _promote(name: str, ufunc: Callable[..., Any], *xs: ArrayLike) -> str:
    proxies = [_dtype_proxy(x, name) for x in xs]
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(ufunc(*proxies))
    except TypeError as exc:
        raise with_location(DTypeError, f"{name}: unsupported operand dtypes "
                            f"{[np.asarray(p).dtype.name for p in proxies]}: {exc}") from None
    except ValueError as exc:  # an integer tensor to a negative Python int power
        raise with_location(DTypeError, f"{name}: {exc} (as in NumPy; use a float base)") from None
    except OverflowError as exc:  # NumPy 2: a Python int beyond the array's integer dtype
        raise with_location(IntOverflowError, f"{name}: a Python int operand does not fit the tensor's dtype "
                            f"{[np.asarray(p).dtype.name for p in proxies if not isinstance(p, int)]} ({exc})") from None
    try:
        return canonical_dtype(out.dtype)
    except DTypeError as exc:  # NumPy's result would be int8 (bool // bool) or float16
        raise with_location(DTypeError, f"{name} of {[np.asarray(p).dtype.name for p in proxies]}: {exc}") from None


# ------------------------------------------------------------------ elementwise

def _unary(prim: str, x: ArrayLike, float_only: bool = True) -> Tensor:
    _frame_of(x)
    x = asarray(x)
    if float_only and x.type.dtype not in FLOAT_DTYPES:
        x = astype(x, "float32" if x.type.dtype == "bool" else "float64")
    if prim in ("neg", "relu", "sign") and x.type.dtype == "bool":
        raise with_location(DTypeError, f"{prim}: not defined for bool tensors (shape {x.shape})")
    return _emit(x.frame, prim, [x])


def exp(x: ArrayLike) -> Tensor: return _unary("exp", x)
def log(x: ArrayLike) -> Tensor: return _unary("log", x)
def log1p(x: ArrayLike) -> Tensor: return _unary("log1p", x)
def expm1(x: ArrayLike) -> Tensor: return _unary("expm1", x)
def sin(x: ArrayLike) -> Tensor: return _unary("sin", x)
def cos(x: ArrayLike) -> Tensor: return _unary("cos", x)
def tanh(x: ArrayLike) -> Tensor: return _unary("tanh", x)
def sigmoid(x: ArrayLike) -> Tensor: return _unary("sigmoid", x)
def sqrt(x: ArrayLike) -> Tensor: return _unary("sqrt", x)
def rsqrt(x: ArrayLike) -> Tensor: return _unary("rsqrt", x)
def floor(x: ArrayLike) -> Tensor:
    """NumPy's ``floor``: integers and bools are already whole, so they come back unchanged (same dtype)."""
    x = asarray(x)
    return x if x.type.dtype not in FLOAT_DTYPES else _unary("floor", x)


def tan(x: ArrayLike) -> Tensor: return _unary("tan", x)
def arcsin(x: ArrayLike) -> Tensor: return _unary("arcsin", x)
def arccos(x: ArrayLike) -> Tensor: return _unary("arccos", x)
def arctan(x: ArrayLike) -> Tensor: return _unary("arctan", x)
def sinh(x: ArrayLike) -> Tensor: return _unary("sinh", x)
def cosh(x: ArrayLike) -> Tensor: return _unary("cosh", x)
def erf(x: ArrayLike) -> Tensor: return _unary("erf", x)


def round(x: ArrayLike, decimals: int = 0) -> Tensor:  # noqa: A001
    """NumPy's ``round``: halves to the nearest even value, ``decimals`` places (negative: tens,
    hundreds, ...) computed as ``rint(x * 10**decimals) / 10**decimals``; integers stay integers.
    Its gradient is zero, as PyTorch's."""
    x = asarray(x)
    decimals = operator_index(decimals)
    if x.type.dtype == "bool":  # NumPy: float16 (lantern: float32, as its other float functions of bools)
        if decimals:
            raise with_location(DTypeError, f"round: bool tensors take no decimals (as in NumPy), got {decimals}")
        return _unary("round", x)
    if x.type.dtype not in FLOAT_DTYPES:
        if decimals >= 0:
            return x
        scale = 10.0 ** -decimals
        return astype(multiply(_unary("round", divide(astype(x, "float64"), scale)), scale), x.type.dtype)
    if decimals == 0:
        return _unary("round", x)
    scale = 10.0 ** decimals
    return divide(_unary("round", multiply(x, scale)), scale)


def arctan2(a: ArrayLike, b: ArrayLike) -> Tensor:
    """The angle of the point ``(b, a)``, in ``[-pi, pi]`` (NumPy's ``arctan2``)."""
    a, b = (astype(t, "float32") if _is_bool(t) else t for t in (a, b))
    return _binary("arctan2", np.arctan2, a, b)


def isnan(x: ArrayLike) -> Tensor:
    x = asarray(x)
    return not_equal(x, x) if x.type.dtype in FLOAT_DTYPES else full(x.shape, False, "bool")


def isinf(x: ArrayLike) -> Tensor:
    x = asarray(x)
    return equal(abs(x), math.inf) if x.type.dtype in FLOAT_DTYPES else full(x.shape, False, "bool")


def isfinite(x: ArrayLike) -> Tensor:
    x = asarray(x)
    return less(abs(x), math.inf) if x.type.dtype in FLOAT_DTYPES else full(x.shape, True, "bool")


def negative(x: ArrayLike) -> Tensor: return _unary("neg", x, float_only=False)


def positive(x: ArrayLike) -> Tensor:
    """``+x``: ``x`` itself; an error on bools, as in NumPy."""
    x = asarray(x)
    if x.type.dtype == "bool":
        raise with_location(DTypeError, f"+: not defined for bool tensors (shape {x.shape}), as in NumPy")
    return x


def abs(x: ArrayLike) -> Tensor:  # noqa: A001
    """NumPy's ``absolute``; a bool tensor comes back unchanged, as in NumPy."""
    x = asarray(x)
    return x if x.type.dtype == "bool" else _unary("abs", x, float_only=False)


def sign(x: ArrayLike) -> Tensor: return _unary("sign", x, float_only=False)
def relu(x: ArrayLike) -> Tensor: return _unary("relu", x, float_only=False)


def stop_gradient(x: ArrayLike) -> Tensor:
    """``x``, held constant by ``grad``: no gradient flows back through it (JAX's ``stop_gradient``,
    PyTorch's ``detach``)."""
    return _unary("stop_gradient", x, float_only=False)


def silu(x: ArrayLike) -> Tensor:
    """``x * sigmoid(x)`` (also called swish)."""
    x = _float(x)
    return multiply(x, sigmoid(x))


def logaddexp(a: ArrayLike, b: ArrayLike) -> Tensor:
    """``log(exp(a) + exp(b))`` without overflow (NumPy's ``logaddexp``); the gradient is ``sigmoid(a - b)``
    and its complement, halves where ``a == b``."""
    a, b = (_float(t) for t in (a, b))
    top = maximum(a, b)
    stable = add(top, log1p(exp(negative(abs(subtract(a, b))))))
    return where(logical_and(isinf(top), equal(a, b)), top, stable)  # inf - inf is NaN in `stable`


def softplus(x: ArrayLike, beta: float = 1.0) -> Tensor:
    """``log(1 + exp(beta * x)) / beta``, computed without overflow (PyTorch's ``softplus``, without its
    linear ``threshold``, which only approximates this)."""
    x = _float(x)
    return divide(logaddexp(multiply(x, beta), 0.0), beta) if beta != 1.0 else logaddexp(x, 0.0)


def log_sigmoid(x: ArrayLike) -> Tensor:
    """``log(sigmoid(x))`` without overflow: ``-softplus(-x)``."""
    return negative(softplus(negative(_float(x))))


def elu(x: ArrayLike, alpha: float = 1.0) -> Tensor:
    """``x`` where positive, ``alpha * (exp(x) - 1)`` elsewhere (PyTorch's ``elu``)."""
    x = _float(x)
    # expm1 of the clamped value: the branch not taken must not overflow (its gradient would be NaN)
    return where(greater(x, 0), x, multiply(expm1(minimum(x, 0)), alpha))


def leaky_relu(x: ArrayLike, negative_slope: float = 0.01) -> Tensor:
    """``x`` where positive, ``negative_slope * x`` elsewhere (PyTorch's ``leaky_relu``)."""
    x = asarray(x)
    return where(greater(x, 0), x, multiply(x, negative_slope))


def gelu(x: ArrayLike, approximate: str = "none") -> Tensor:
    """``x * Phi(x)`` with ``Phi`` the standard normal CDF (``approximate="none"``, via ``erf``), or
    PyTorch's and JAX's tanh approximation (``approximate="tanh"``)."""
    x = _float(x)
    if approximate == "none":
        return multiply(multiply(x, 0.5), add(erf(multiply(x, 1 / math.sqrt(2))), 1.0))
    if approximate == "tanh":
        inner = multiply(add(x, multiply(multiply(multiply(x, x), x), 0.044715)), math.sqrt(2 / math.pi))
        return multiply(multiply(x, 0.5), add(tanh(inner), 1.0))
    raise with_location(TraceError, f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def logical_not(x: ArrayLike) -> Tensor:
    """NumPy's ``logical_not``: any dtype, read as ``x != 0``."""
    x = _truth(x)
    return _emit(x.frame, "logical_not", [x])


def invert(x: ArrayLike) -> Tensor:
    """``~x`` on a bool tensor."""
    x = asarray(x)
    if x.type.dtype != "bool":
        raise with_location(DTypeError, f"~: expected a bool tensor, got {x.type} (bitwise operations on "
                            "integers are not supported; lantern.logical_not reads any dtype as x != 0)")
    return _emit(x.frame, "logical_not", [x])


def _binary(prim: str, ufunc: Callable[..., Any], a: ArrayLike, b: ArrayLike, *, compare: bool = False) -> Tensor:
    frame = _frame_of(a, b)
    out_dtype = _promote(prim, ufunc, a, b)
    compute = _compare_dtype(prim, a, b) if compare else out_dtype
    if compute is None:  # an int64 tensor against a Python int beyond int64: the same for every element
        big_first = isinstance(a, int)
        value = bool(ufunc(a, 0) if big_first else ufunc(0, b))
        return full(asarray(b if big_first else a).shape, value, "bool")
    if compute == "bool" and not compare:
        # NumPy on bools: + and maximum are "or", * and minimum are "and"; the rest is an error.
        prim = _BOOL_PRIMS.get(prim, prim)
        if prim not in ("logical_and", "logical_or"):
            raise with_location(DTypeError, f"{prim}: arithmetic on bool tensors is not supported; use astype first")
    if compare and isinstance(a, Tensor) and isinstance(b, Tensor) and a.var is b.var and compute not in FLOAT_DTYPES:
        # an integer compared with itself: known now (and C warns that it is always true or false)
        return full(a.shape, prim in ("eq", "le", "ge"), "bool")
    ta, tb = _lift_as(a, compute), _lift_as(b, compute)
    return _emit(frame, prim, [ta, tb], hint=_HINTS.get(prim))


def _compare_dtype(prim: str, a: ArrayLike, b: ArrayLike) -> str | None:
    """The dtype a comparison computes in. NumPy 2 compares integer tensors with Python ints
    that do not fit their dtype exactly (``int32 < 2**40`` is True), so widen for those;
    None when the int does not even fit int64 (then every element compares alike)."""
    try:
        return _promote(prim, np.add, a, b)
    except OverflowError:
        big = a if isinstance(a, int) else b
        return "int64" if -2**63 <= big < 2**63 else None


_BOOL_PRIMS = {"add": "logical_or", "maximum": "logical_or", "mul": "logical_and", "minimum": "logical_and"}

# Readable variable names for comparison results (and none starting with the runtime's lt_).
_HINTS = {"lt": "less", "le": "less_eq", "gt": "greater", "ge": "greater_eq", "eq": "equal", "ne": "not_equal"}


def add(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("add", np.add, a, b)
def subtract(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("sub", np.subtract, a, b)
def multiply(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("mul", np.multiply, a, b)
def maximum(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("maximum", np.maximum, a, b)
def minimum(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("minimum", np.minimum, a, b)
def equal(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("eq", np.equal, a, b, compare=True)
def not_equal(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("ne", np.not_equal, a, b, compare=True)
def less(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("lt", np.less, a, b, compare=True)
def less_equal(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("le", np.less_equal, a, b, compare=True)
def greater(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("gt", np.greater, a, b, compare=True)
def greater_equal(a: ArrayLike, b: ArrayLike) -> Tensor: return _binary("ge", np.greater_equal, a, b, compare=True)


def _truth(x: ArrayLike) -> Tensor:
    """``x != 0`` as bool (NumPy's logical functions read any dtype that way)."""
    t = asarray(x)
    return t if t.type.dtype == "bool" else not_equal(t, 0)


def _bool_operands(op: str, a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor]:
    """``&`` and ``|``: bools only (on integers NumPy's are bitwise operations, which lantern does not have)."""
    ta, tb = asarray(a), asarray(b)
    if ta.type.dtype != "bool" or tb.type.dtype != "bool":
        raise with_location(DTypeError, f"{op}: expected bool tensors, got {ta.type} and {tb.type} "
                            "(bitwise operations on integers are not supported; lantern.logical_and and "
                            "logical_or read any dtype as x != 0)")
    return ta, tb


def logical_and(a: ArrayLike, b: ArrayLike) -> Tensor:
    frame = _frame_of(a, b)
    return _emit(frame, "logical_and", [_truth(a), _truth(b)])


def logical_or(a: ArrayLike, b: ArrayLike) -> Tensor:
    frame = _frame_of(a, b)
    return _emit(frame, "logical_or", [_truth(a), _truth(b)])


def bitwise_and(a: ArrayLike, b: ArrayLike) -> Tensor:
    """``a & b`` on bool tensors."""
    frame = _frame_of(a, b)
    return _emit(frame, "logical_and", list(_bool_operands("&", a, b)))


def bitwise_or(a: ArrayLike, b: ArrayLike) -> Tensor:
    """``a | b`` on bool tensors."""
    frame = _frame_of(a, b)
    return _emit(frame, "logical_or", list(_bool_operands("|", a, b)))


def divide(a: ArrayLike, b: ArrayLike) -> Tensor:
    return _binary("div", np.true_divide, a, b)


def floor_divide(a: ArrayLike, b: ArrayLike) -> Tensor:
    return _binary("floordiv", np.floor_divide, a, b)


def mod(a: ArrayLike, b: ArrayLike) -> Tensor:
    return _binary("mod", np.remainder, a, b)


remainder = mod


def power(a: ArrayLike, b: ArrayLike) -> Tensor:
    if isinstance(a, Tensor) and isinstance(b, _PY_SCALARS) and not isinstance(b, bool) \
            and _promote("pow", np.power, a, b) == a.type.dtype:  # int32 ** 2.0 is float64
        if b == 2:
            return multiply(a, a)
        if b == 1:
            return a
        if b == 0.5 and a.type.dtype in FLOAT_DTYPES:
            return sqrt(a)
    return _binary("pow", np.power, a, b)


def square(x: ArrayLike) -> Tensor:
    x = asarray(x)
    return multiply(x, x)


_NOT_GIVEN: Any = object()


def where(cond: ArrayLike, a: ArrayLike = _NOT_GIVEN, b: ArrayLike = _NOT_GIVEN, *, size: int | None = None,
          fill_value: int = 0) -> Any:
    """Elementwise ``a if cond else b`` with broadcasting. With ``cond`` alone, NumPy's ``nonzero(cond)``,
    which needs a static ``size`` (see :func:`lantern.nonzero`)."""
    if a is _NOT_GIVEN and b is _NOT_GIVEN:
        if size is None:
            raise with_location(TraceError, "where(condition) alone gives the indices of the nonzero elements, "
                                "whose number is only known when the code runs: pass size=N (the first N, padded "
                                "with fill_value, as jax.numpy.where does)")
        from .ops_arrays import nonzero
        return nonzero(cond, size=size, fill_value=fill_value)
    if a is _NOT_GIVEN or b is _NOT_GIVEN:
        raise with_location(TraceError, "where: give both x and y, or neither")
    frame = _frame_of(cond, a, b)
    c = asarray(cond)
    if c.type.dtype != "bool":
        c = not_equal(c, 0)
    dtype = _promote("where", np.add, a, b) if not (_is_bool(a) and _is_bool(b)) else "bool"
    return _emit(frame, "where", [c, _lift_as(a, dtype), _lift_as(b, dtype)])


def _is_bool(x: ArrayLike) -> bool:
    return (isinstance(x, Tensor) and x.type.dtype == "bool") or isinstance(x, bool)


def clip(x: ArrayLike, lo: ArrayLike | None = None, hi: ArrayLike | None = None) -> Tensor:
    x = asarray(x)
    if lo is not None:
        x = maximum(x, lo)
    if hi is not None:
        x = minimum(x, hi)
    return x


def broadcast_to(x: ArrayLike, shape: Sequence[int]) -> Tensor:
    x = asarray(x)
    shape = _shape_tuple(shape, "broadcast_to")
    if x.shape == shape:
        return x
    return _emit(x.frame, "broadcast", [x], shape=shape)


# ------------------------------------------------------------------ reductions

def _axis_list(ndim: int, axis: Any, op: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``axis`` (an int or a sequence of ints, negative counting from the end) as non-negative axes in the
    order given; an axis out of range or repeated is a ``ShapeError``, as NumPy's ``AxisError``."""
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in items:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
            raise with_location(TraceError, f"{op}: axis must be a Python int, got {type(a).__name__} {a!r}")
        if not -ndim <= a < ndim:
            raise with_location(ShapeError, f"{op}: axis {a} is out of bounds for shape {shape} "
                                f"({ndim} dimensions)")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise with_location(ShapeError, f"{op}: repeated axis in {axis}")
    return tuple(out)


def _axes(x: Tensor, axis: int | Sequence[int] | None, op: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    return tuple(sorted(_axis_list(x.ndim, axis, op, x.shape)))


def torch_names(op: str, axis: Any, dim: Any, keepdims: bool = False, keepdim: bool | None = None) -> tuple[Any, bool]:
    """``axis`` or PyTorch's name for it, ``dim`` (and ``keepdims`` or ``keepdim``); both at once is an error."""
    if dim is not None:
        if axis is not None:
            raise with_location(TraceError, f"{op}: give axis or dim (PyTorch's name for it), not both")
        axis = dim
    return axis, bool(keepdims if keepdim is None else keepdim)


def _reduce(prim: str, x: ArrayLike, axis: Any, keepdims: bool) -> Tensor:
    x = asarray(x)
    axes = _axes(x, axis, prim)
    if not axes:
        summing = prim in ("reduce_sum", "reduce_prod")  # (int32 and bool sums and products are int64)
        return x if not summing or x.type.dtype in FLOAT_DTYPES + ("int64",) else astype(x, "int64")
    return _emit(x.frame, prim, [x], hint=prim.removeprefix("reduce_"), axes=axes, keepdims=bool(keepdims))


def sum(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,  # noqa: A001
        keepdim: bool | None = None) -> Tensor:
    return _reduce("reduce_sum", x, *torch_names("sum", axis, dim, keepdims, keepdim))


def max(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,  # noqa: A001
        keepdim: bool | None = None) -> Tensor:
    return _reduce("reduce_max", x, *torch_names("max", axis, dim, keepdims, keepdim))


def min(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,  # noqa: A001
        keepdim: bool | None = None) -> Tensor:
    return _reduce("reduce_min", x, *torch_names("min", axis, dim, keepdims, keepdim))


def mean(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
         keepdim: bool | None = None) -> Tensor:
    axis, keepdims = torch_names("mean", axis, dim, keepdims, keepdim)
    x = asarray(x)
    axes = _axes(x, axis, "mean")
    count = prod(x.shape[a] for a in axes)
    if x.type.dtype not in FLOAT_DTYPES:
        x = astype(x, "float64")
    if isinstance(count, Size):  # known at run time: divided there (0 / 0 is NaN, as below)
        return divide(sum(x, axes, keepdims), astype(constant(count), x.type.dtype))
    return divide(sum(x, axes, keepdims), float(count) if count else float("nan"))


def _arg(prim: str, x: ArrayLike, axis: int | None, keepdims: bool) -> Tensor:
    x = asarray(x)
    if axis is None:
        flat = reshape(x, (-1,))
        out = _emit(x.frame, prim, [flat], axis=0, keepdims=False)
        return reshape(out, (1,) * x.ndim) if keepdims else out
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_)):
        raise with_location(TraceError, f"{prim}: axis must be an int or None (one axis, as in NumPy), got {axis!r}")
    (a,) = _axes(x, axis, prim)
    return _emit(x.frame, prim, [x], axis=a, keepdims=bool(keepdims))


def argmax(x: ArrayLike, axis: int | None = None, keepdims: bool = False, *, dim: Any = None,
           keepdim: bool | None = None) -> Tensor:
    return _arg("argmax", x, *torch_names("argmax", axis, dim, keepdims, keepdim))


def argmin(x: ArrayLike, axis: int | None = None, keepdims: bool = False, *, dim: Any = None,
           keepdim: bool | None = None) -> Tensor:
    return _arg("argmin", x, *torch_names("argmin", axis, dim, keepdims, keepdim))


def logsumexp(x: ArrayLike, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
              keepdim: bool | None = None) -> Tensor:
    """``log(sum(exp(x)))`` computed stably (the maximum is subtracted first)."""
    axis, keepdims = torch_names("logsumexp", axis, dim, keepdims, keepdim)
    x = _float(x)
    axes = _axes(x, axis, "logsumexp")
    # The shift cancels in the result, so also in its gradient: held constant, no gradient is
    # computed through the maximum (exactly zero in exact arithmetic).
    m = stop_gradient(max(x, axes, keepdims=True))
    m = where(equal(subtract(m, m), 0), m, 0)  # an infinite maximum (a row of -inf) would give inf - inf
    out = add(log(sum(exp(subtract(x, m)), axes, keepdims=True)), m)
    return out if keepdims else squeeze(out, axes)


def softmax(x: ArrayLike, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis`` (or ``dim``; default the last), computed stably."""
    axis = torch_names("softmax", axis, dim)[0]
    axis = -1 if axis is None else axis
    x = _float(x)
    (axis,) = _axes(x, axis, "softmax")
    # one primitive (lantern/ir/primitives.py): computed stably (the row's maximum subtracted first), and its
    # gradient reads only its result
    return _emit(_frame_of(x), "softmax", [x], axis=axis)


def log_softmax(x: ArrayLike, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """``x - logsumexp(x)`` along ``axis`` (or ``dim``; default the last)."""
    axis = torch_names("log_softmax", axis, dim)[0]
    axis = -1 if axis is None else axis
    x = _float(x)
    return subtract(x, logsumexp(x, axis, keepdims=True))


def _float(x: ArrayLike) -> Tensor:
    x = asarray(x)
    return x if x.type.dtype in FLOAT_DTYPES else astype(x, "float64")


# ------------------------------------------------------------------ shapes

def _shape_tuple(shape: Any, op: str) -> tuple[int | Size, ...]:
    """A shape argument as a tuple of dimensions (ints, and run-time sizes such as ``x.shape[0]``)."""
    if isinstance(shape, (int, np.integer, Size)):
        shape = (shape,)
    try:
        out = tuple(d if isinstance(d, Size) else int(operator_index(d)) for d in shape)
    except TypeError:
        raise with_location(TraceError, f"{op}: shape must be a tuple of Python ints, got {shape!r}") from None
    if any(d < 0 for d in out if isinstance(d, int) and d != -1):
        raise with_location(ShapeError, f"{op}: negative dimension in {out}")
    return out


def operator_index(d: Any) -> int:
    if isinstance(d, Tensor):
        raise with_location(TraceError, "shapes must be static: a staged value cannot be a dimension")
    import operator
    return operator.index(d)


def reshape(x: ArrayLike, shape: Any) -> Tensor:
    x = asarray(x)
    shape = _shape_tuple(shape, "reshape")
    inferred = [isinstance(d, int) and d == -1 for d in shape]  # (a run-time size is never -1)
    if inferred.count(True) > 1:
        raise with_location(ShapeError, f"reshape: only one -1 allowed in {shape}")
    if any(inferred):
        known = prod(d for d, infer in zip(shape, inferred) if not infer)
        if known == 0 or x.size % known:
            raise with_location(ShapeError, f"reshape: cannot reshape {x.shape} (size {x.size}) to {shape}")
        shape = tuple(x.size // known if infer else d for d, infer in zip(shape, inferred))
    if shape == x.shape:
        return x
    return _emit(x.frame, "reshape", [x], shape=shape)


def transpose(x: ArrayLike, axes: int | Sequence[int] | None = None) -> Tensor:
    """NumPy's ``transpose``: ``axes`` a permutation of the axes (negative ones count from the end);
    None reverses them."""
    x = asarray(x)
    perm = tuple(range(x.ndim))[::-1] if axes is None else _axis_list(x.ndim, axes, "transpose", x.shape)
    if len(perm) != x.ndim:
        raise with_location(ShapeError, f"transpose: axes {axes} do not match shape {x.shape} "
                            f"(need a permutation of {x.ndim} axes)")
    if perm == tuple(range(x.ndim)):
        return x
    if _is_pure_unit_move(x.shape, perm):
        return reshape(x, tuple(x.shape[p] for p in perm))
    return _emit(x.frame, "transpose", [x], perm=perm)


def _is_pure_unit_move(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """True when the permutation only moves size-1 axes, so it is a reshape."""
    big = [p for p in perm if shape[p] != 1]
    return big == sorted(big)


def swapaxes(x: ArrayLike, a: int, b: int) -> Tensor:
    x = asarray(x)
    (a,) = _axes(x, a, "swapaxes")
    (b,) = _axes(x, b, "swapaxes")
    perm = list(range(x.ndim))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


def moveaxis(x: ArrayLike, source: int | Sequence[int], destination: int | Sequence[int]) -> Tensor:
    """NumPy's ``moveaxis``: one axis, or several (``source`` and ``destination`` sequences of one length)."""
    x = asarray(x)
    src = _axis_list(x.ndim, source, "moveaxis", x.shape)
    dst = _axis_list(x.ndim, destination, "moveaxis", x.shape)
    if len(src) != len(dst):
        raise with_location(ShapeError, f"moveaxis: source {source} and destination {destination} must have "
                            "the same number of elements")
    perm = [i for i in range(x.ndim) if i not in src]
    for d, s in sorted(zip(dst, src)):
        perm.insert(d, s)
    return transpose(x, perm)


def expand_dims(x: ArrayLike, axis: int | Sequence[int]) -> Tensor:
    x = asarray(x)
    ndim = x.ndim + (1 if isinstance(axis, (int, np.integer)) else len(tuple(axis)))
    shape = list(x.shape)
    for a in sorted(_axis_list(ndim, axis, "expand_dims", x.shape)):
        shape.insert(a, 1)
    return reshape(x, tuple(shape))


def squeeze(x: ArrayLike, axis: int | Sequence[int] | None = None) -> Tensor:
    x = asarray(x)
    if axis is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = _axes(x, axis, "squeeze")
        for a in axes:
            if x.shape[a] != 1:
                raise with_location(ShapeError, f"squeeze: axis {a} of shape {x.shape} does not have size 1")
    return reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _common_dtype(name: str, xs: Sequence[ArrayLike]) -> str:
    """NumPy's promotion of all of ``xs`` together (pairwise; ufuncs take at most two)."""
    dtype = _promote(name, np.add, xs[0], xs[1])
    for x in xs[2:]:
        dtype = _promote(name, np.add, np.zeros((), dtype), x)
    return dtype


def concatenate(xs: Sequence[ArrayLike], axis: int | None = 0) -> Tensor:
    """NumPy's ``concatenate``; ``axis=None`` flattens every array first."""
    frame = _frame_of(*xs)
    if not xs:
        raise with_location(ShapeError, "concatenate: need at least one array")
    if axis is None:
        return concatenate([reshape(asarray(x), (-1,)) for x in xs], axis=0)
    dtype = asarray(xs[0]).type.dtype if len(xs) == 1 else _common_dtype("concatenate", xs)
    if builtins.all(_is_bool(x) for x in xs):
        dtype = "bool"
    ts = [_lift_as(x, dtype) for x in xs]
    if ts[0].ndim == 0:
        raise with_location(ShapeError, "concatenate: zero-dimensional arrays cannot be concatenated")
    (a,) = _axes(ts[0], axis, "concatenate")
    if len(ts) == 1:
        return ts[0]
    return _emit(frame, "concatenate", ts, hint="concat", axis=a)


def stack(xs: Sequence[ArrayLike], axis: int = 0) -> Tensor:
    ts = [asarray(x) for x in xs]
    if not ts:
        raise with_location(ShapeError, "stack: need at least one array")
    if builtins.any(t.shape != ts[0].shape for t in ts[1:]):  # (==, not a set: run-time sizes compare so)
        raise with_location(ShapeError, f"stack: all inputs must have the same shape, got {[t.shape for t in ts]}")
    return concatenate([expand_dims(t, axis) for t in ts], axis=axis)


# ------------------------------------------------------------------ matrix product

def matmul(a: ArrayLike, b: ArrayLike) -> Tensor:
    """NumPy ``matmul``: vectors, matrices and broadcast batches of matrices."""
    frame = _frame_of(a, b)
    dtype = _promote("matmul", np.add, a, b)
    if dtype == "bool":
        # NumPy: out[i, j] = any(a[i, :] & b[:, j]). Counted in float32 (BLAS for large products): a sum
        # of zeros and ones is zero exactly when no term is one.
        return not_equal(matmul(astype(a, "float32"), astype(b, "float32")), 0)
    ta, tb = _lift_as(a, dtype), _lift_as(b, dtype)
    if ta.ndim == 0 or tb.ndim == 0:
        raise with_location(ShapeError, f"matmul: operands must be at least 1-D, got {ta.shape} @ {tb.shape}")
    a2 = expand_dims(ta, 0) if ta.ndim == 1 else ta
    b2 = expand_dims(tb, -1) if tb.ndim == 1 else tb
    m, k = a2.shape[-2:]
    k2, n = b2.shape[-2:]
    if k != k2:
        raise with_location(ShapeError, f"matmul: inner dimensions differ: {ta.shape} @ {tb.shape} ({k} != {k2})")
    try:
        batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    except ValueError:
        raise with_location(ShapeError, f"matmul: batch dimensions of {ta.shape} and {tb.shape} "
                            "cannot be broadcast together") from None
    if b2.ndim == 2:
        # (..., m, k) @ (k, n): one product of a (batch*m, k) matrix.
        out = _emit(frame, "matmul", [reshape(a2, (prod(a2.shape[:-1]), k)), b2])
    else:
        nb = prod(batch)
        a3 = a2 if a2.ndim == 2 else reshape(broadcast_to(a2, batch + (m, k)), (nb, m, k))
        b3 = reshape(broadcast_to(b2, batch + (k, n)), (nb, k, n))
        out = _emit(frame, "matmul", [a3, b3])
    out = reshape(out, batch + (m, n))
    if ta.ndim == 1:
        out = squeeze(out, -2)
    if tb.ndim == 1:
        out = squeeze(out, -1)
    return out


def dot(a: ArrayLike, b: ArrayLike) -> Tensor:
    return matmul(a, b)


# ------------------------------------------------------------------ creation

def full(shape: Any, value: Scalar, dtype: Any = None) -> Tensor:
    frame = require_frame("lantern.full")
    shape = _shape_tuple(shape, "full")
    dt = canonical_dtype(dtype) if dtype is not None else _default_dtype(value)
    return _emit(frame, "fill", [], hint="fill", value=_scalar_value(value, dt), shape=shape, dtype=dt)


def zeros(shape: Any, dtype: Any = "float32") -> Tensor:
    return full(shape, 0, dtype)


def ones(shape: Any, dtype: Any = "float32") -> Tensor:
    return full(shape, 1, dtype)


def zeros_like(x: ArrayLike, dtype: Any = None) -> Tensor:
    x = asarray(x)
    return full(x.shape, 0, dtype or x.type.dtype)


def ones_like(x: ArrayLike, dtype: Any = None) -> Tensor:
    x = asarray(x)
    return full(x.shape, 1, dtype or x.type.dtype)


def full_like(x: ArrayLike, value: Scalar, dtype: Any = None) -> Tensor:
    x = asarray(x)
    return full(x.shape, value, dtype or x.type.dtype)


def arange(start: Scalar, stop: Scalar | None = None, step: Scalar = 1, dtype: Any = None) -> Tensor:
    """Like ``np.arange`` with static (Python) bounds."""
    frame = require_frame("lantern.arange")
    for v in (start, stop, step):
        if isinstance(v, Tensor):
            raise with_location(TraceError, "arange: bounds must be Python numbers (shapes are static)")
    if stop is None:
        start, stop = 0, start
    if step == 0:
        raise with_location(ShapeError, "arange: step must not be zero")
    # NumPy's length formula, without building the array (arange(2**40) is a trace-time size error)
    all_ints = builtins.all(isinstance(v, (int, np.integer, Size)) for v in (start, stop, step))
    if builtins.any(isinstance(v, Size) for v in (start, stop)) and isinstance(step, int):
        n = primitives.slice_length(start, stop, step)  # arange(len(x)): a run-time length
    elif all_ints:
        n = len(range(start, stop, step))
    else:
        n = builtins.max(0, math.ceil((stop - start) / step))
    dt = canonical_dtype(dtype if dtype is not None else ("int64" if all_ints else "float32"))
    return _emit(frame, "iota", [], hint="arange", n=n, start=start, step=step, dtype=dt)


def one_hot(idx: ArrayLike, num_classes: int, dtype: Any = "float32") -> Tensor:
    """``out[..., c] = (idx[...] == c)`` as ``dtype``. An index outside ``[0, num_classes)`` is an
    ``OutOfBoundsError`` (as in PyTorch), checked at run time like every staged index."""
    idx = asarray(idx)
    if idx.type.dtype not in INT_DTYPES:
        raise with_location(DTypeError, f"one_hot: indices must be integers, got {idx.type}")
    where = error_location(user_location())  # the user's line, also when called from lantern.nn
    idx = _emit(idx.frame, "check_range", [idx], hint="classes", n=int(num_classes),
                what=f"{where}: one_hot with {int(num_classes)} classes")
    classes = arange(int(num_classes), dtype=idx.type.dtype)
    return astype(equal(expand_dims(idx, -1), classes), dtype)


def random_uniform(key: ArrayLike, shape: Any, dtype: Any = "float32") -> Tensor:
    """Uniform values in [0, 1) of a static ``shape``, drawn in the generated code.

    ``key`` (a Python int or a staged integer scalar) determines them completely: the same
    key gives the same values, on every run and in the reference interpreter (a counter-based
    SplitMix64 stream, see ``random_uniform`` in :mod:`lantern.ir.primitives`). Draws that must
    differ need different keys (e.g. ``step * 1000 + layer``). Not differentiable.
    """
    frame = require_frame("lantern.random_uniform")
    shape = _shape_tuple(shape, "random_uniform")
    if -1 in shape:
        raise with_location(ShapeError, f"random_uniform: shape must be fully known, got {shape}")
    dt = canonical_dtype(dtype)
    if dt not in FLOAT_DTYPES:
        raise with_location(DTypeError, f"random_uniform: dtype must be float32 or float64, got {dt}")
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer, Tensor)):
        raise with_location(DTypeError, f"random_uniform: key must be an integer, got {key!r}")
    if isinstance(key, Tensor):
        k = asarray(key)
        if k.type.dtype not in INT_DTYPES or k.ndim != 0:
            raise with_location(DTypeError, f"random_uniform: key must be an integer scalar, got {k.type}")
    else:
        k = constant(int(key), "int64")
    return _emit(frame, "random_uniform", [astype(k, "int64")], hint="uniform", shape=shape, dtype=dt)


# ------------------------------------------------------------------ indexing

def take(x: ArrayLike, indices: ArrayLike, axis: int = 0) -> Tensor:
    """Gather along ``axis`` with (staged or constant) integer indices; negative indices wrap."""
    x = asarray(x)
    idx = asarray(indices)
    if idx.type.dtype not in INT_DTYPES:
        raise with_location(DTypeError, f"take: indices must be integers, got {idx.type}")
    (a,) = _axes(x, axis, "take")
    return _emit(x.frame, "take", [x, idx], hint="gather", axis=a)


def getitem(x: Tensor, key: Any) -> Tensor:
    """NumPy basic indexing (ints, slices, None, ...) plus indexing with staged integer tensors."""
    key = key if isinstance(key, tuple) else (key,)
    key = tuple(_index_item(k) for k in key)
    consumed = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if builtins.sum(1 for k in key if k is Ellipsis) > 1:
        raise with_location(TraceError, "an index can only have a single ellipsis ('...')")
    if consumed > x.ndim:
        raise with_location(OutOfBoundsError, f"too many indices for a tensor of shape {x.shape}: {len(key)} given")
    ellipsis = [i for i, k in enumerate(key) if k is Ellipsis]
    if ellipsis:
        i = ellipsis[0]
        key = key[:i] + (slice(None),) * (x.ndim - consumed) + key[i + 1:]
    else:
        key = key + (slice(None),) * (x.ndim - consumed)

    starts, stops, steps, out_shape = [], [], [], []
    gathers: list[tuple[int, Tensor]] = []  # (axis in out_shape, index tensor)
    dim = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        size = x.shape[dim]
        if isinstance(k, slice):
            start, stop, step = slice_indices(k, size)
            starts.append(start), stops.append(stop), steps.append(step)
            out_shape.append(primitives.slice_length(start, stop, step))
        elif isinstance(k, Tensor):
            starts.append(0), stops.append(size), steps.append(1)
            gathers.append((len(out_shape), k))
            out_shape.append(size)
        else:
            i = k if isinstance(k, Size) else int(k)
            if not -size <= i < size:
                raise with_location(OutOfBoundsError, f"index {i} is out of bounds for axis {dim} with size {size} "
                                    f"(shape {x.shape})")
            i = i + size if i < 0 else i
            starts.append(i), stops.append(i + 1), steps.append(1)
        dim += 1

    full_slice = builtins.all(s == 0 and e == d and st == 1 for s, e, st, d in zip(starts, stops, steps, x.shape))
    y = x if full_slice else _emit(x.frame, "slice", [x], starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    y = reshape(y, tuple(out_shape))
    if builtins.sum(1 for _, t in gathers if t.ndim > 0) > 1:
        raise with_location(TraceError, "indexing with several index arrays at once is not supported; "
                            "index one axis at a time")
    shift, array_pos = 0, None
    for axis, idx in gathers:
        if idx.ndim:
            array_pos = axis + shift
        y = take(y, idx, axis + shift)
        shift += idx.ndim - 1
    if array_pos is not None:
        # NumPy: with an index array present, integers count as advanced indices too; when the
        # advanced indices are not adjacent, the array's dimensions go first.
        advanced = [i for i, k in enumerate(key) if isinstance(k, (int, Tensor))]
        if advanced[-1] - advanced[0] + 1 != len(advanced):
            nd = builtins.max(idx.ndim for _, idx in gathers)
            moved = list(range(array_pos, array_pos + nd))
            y = transpose(y, moved + [d for d in range(y.ndim) if d not in moved])
    return y


def slice_indices(k: slice, size: int | Size) -> tuple[int | Size, int | Size, int]:
    """``k.indices(size)``, where the size or the bounds may be run-time sizes (each comparison with one is
    a decision of the trace, see ``ir/symbolic.py``)."""
    if not any(isinstance(v, Size) for v in (size, k.start, k.stop)):
        return k.indices(size)  # type: ignore[arg-type]
    step = 1 if k.step is None else operator_index(k.step)
    if step == 0:
        raise with_location(ShapeError, "slice step cannot be zero")

    def bound(i: Any, default: int | Size) -> int | Size:
        if i is None:
            return default
        i = i if isinstance(i, Size) else operator_index(i)
        if i < 0:
            i = i + size
            if i < 0:
                return -1 if step < 0 else 0
        elif i >= size:
            return size - 1 if step < 0 else size
        return i
    return (bound(k.start, size - 1 if step < 0 else 0), bound(k.stop, -1 if step < 0 else size), step)


def _index_item(k: Any) -> Any:
    if k is None or k is Ellipsis or isinstance(k, (slice, Tensor)):
        if isinstance(k, slice) and builtins.any(isinstance(v, Tensor) for v in (k.start, k.stop, k.step)):
            raise with_location(TraceError, "slice bounds must be Python ints (shapes are static); "
                                "use lantern.take or x[i] with a staged integer for a dynamic position")
        if isinstance(k, Tensor) and k.type.dtype not in INT_DTYPES:
            if k.type.dtype == "bool":
                raise with_location(TraceError, "boolean mask indexing gives a data-dependent shape; "
                                    "use lantern.where instead")
            raise with_location(DTypeError, f"index tensors must be integers, got {k.type}")
        return k
    if isinstance(k, (bool, np.bool_)):
        raise with_location(TraceError, "boolean indices are not supported")
    if isinstance(k, (int, np.integer)):
        return int(k)
    if isinstance(k, Size):  # x[y.shape[0] - 1]
        return k
    if isinstance(k, (list, np.ndarray)):
        arr = np.asarray(k)
        if arr.dtype.kind not in "iu":
            raise with_location(TraceError, f"index arrays must hold integers, got {arr.dtype}")
        return constant(arr.astype(np.int64))
    raise with_location(TraceError, f"unsupported index {k!r}")


__all__ = [name for name in dir() if not name.startswith("_") and name not in {
    "annotations", "builtins", "prod", "np", "primitives", "Any", "Callable", "Sequence", "Frame", "Tensor",
    "TensorType", "Scalar", "ArrayLike"}]
