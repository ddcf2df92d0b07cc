"""``Tensor``: the staged value (the ``Rep[Tensor]`` of Lantern) users compute with while tracing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import ConcretizationError, TraceError
from .ir.nodes import Var
from .ir.types import TensorType
from .tracing import with_location

if TYPE_CHECKING:
    from .tracing import Frame


def _ops():
    from . import ops
    return ops


def _operation(name: str) -> Any:
    """lantern's function ``name`` (from ops, ops_reduce or ops_arrays)."""
    for module in (_ops(), _reduce_ops(), _array_ops()):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(name)


def _reduce_ops():
    from . import ops_reduce
    return ops_reduce


def _array_ops():
    from . import ops_arrays
    return ops_arrays


# NumPy ufunc name -> lantern.ops function
_UFUNCS = {n: n for n in ("add", "subtract", "multiply", "divide", "floor_divide", "power", "negative", "exp",
                          "log", "log1p", "expm1", "sin", "cos", "tanh", "sqrt", "floor", "sign", "maximum",
                          "minimum", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
                          "logical_and", "logical_or", "logical_not", "matmul", "square", "positive", "invert",
                          "bitwise_and", "bitwise_or", "tan", "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh",
                          "isnan", "isinf", "isfinite", "logaddexp")}
_UFUNCS.update(true_divide="divide", remainder="mod", absolute="abs", rint="round")

#: NumPy functions (not ufuncs) staged on tensors: lantern's function, the keyword arguments it takes.
_FUNCTIONS: dict[str, tuple[str, frozenset[str]]] = {
    **{n: (n, frozenset({"axis", "keepdims"})) for n in ("sum", "mean", "max", "min")},
    "amax": ("max", frozenset({"axis", "keepdims"})), "amin": ("min", frozenset({"axis", "keepdims"})),
    "argmax": ("argmax", frozenset({"axis", "keepdims"})), "argmin": ("argmin", frozenset({"axis", "keepdims"})),
    "dot": ("dot", frozenset()), "where": ("where", frozenset()), "clip": ("clip", frozenset()),
    "concatenate": ("concatenate", frozenset({"axis"})), "stack": ("stack", frozenset({"axis"})),
    "reshape": ("reshape", frozenset({"shape", "newshape"})), "transpose": ("transpose", frozenset({"axes"})),
    "swapaxes": ("swapaxes", frozenset()), "moveaxis": ("moveaxis", frozenset()),
    "expand_dims": ("expand_dims", frozenset({"axis"})), "squeeze": ("squeeze", frozenset({"axis"})),
    "broadcast_to": ("broadcast_to", frozenset({"shape"})), "take": ("take", frozenset({"axis"})),
    "zeros_like": ("zeros_like", frozenset({"dtype"})), "ones_like": ("ones_like", frozenset({"dtype"})),
    "full_like": ("full_like", frozenset({"dtype"})), "astype": ("astype", frozenset()),
    "any": ("any", frozenset({"axis", "keepdims"})), "all": ("all", frozenset({"axis", "keepdims"})),
    "prod": ("prod", frozenset({"axis", "keepdims"})), "var": ("var", frozenset({"axis", "ddof", "keepdims"})),
    "std": ("std", frozenset({"axis", "ddof", "keepdims"})), "norm": ("norm", frozenset({"ord", "axis", "keepdims"})),
    "cumsum": ("cumsum", frozenset({"axis"})), "cumprod": ("cumprod", frozenset({"axis"})),
    "sort": ("sort", frozenset({"axis"})), "argsort": ("argsort", frozenset({"axis"})),
    "take_along_axis": ("take_along_axis", frozenset({"axis"})), "einsum": ("einsum", frozenset()),
    "tril": ("tril", frozenset({"k"})), "triu": ("triu", frozenset({"k"})),
    "pad": ("pad", frozenset({"mode", "constant_values"})), "flip": ("flip", frozenset({"axis"})),
    "roll": ("roll", frozenset({"axis"})), "tile": ("tile", frozenset()), "repeat": ("repeat", frozenset({"axis"})),
    "split": ("split", frozenset({"axis"})), "round": ("round", frozenset({"decimals"})),
    "around": ("round", frozenset({"decimals"})), "nonzero": ("nonzero", frozenset()),
}

_NUMPY_HINT = ("a staged Tensor has no value while the function is traced, so NumPy cannot use it. Use the "
               "lantern function of the same name (lantern.sum, lantern.exp, ...); to index a NumPy array with "
               "a staged index, stage the array: lantern.asarray(array)[i] (or lantern.take(array, i))")

_CONCRETE_HINT = ("a staged Tensor has no value while the function is traced. Your if/while/for on it are "
                  "rewritten to lantern.cond/while_loop/fori_loop, except inside try/with, in loops with an else, "
                  "in lambdas and code whose source cannot be read; there, use "
                  "lantern.cond(pred, true_fn, false_fn, *operands) or lantern.where, and lantern.while_loop or "
                  "lantern.fori_loop for a loop whose trip count depends on it")


class Tensor:
    """A value of the function being traced: static shape and dtype, no data yet."""

    __slots__ = ("var", "frame")
    __array_priority__ = 1000

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """``np.exp(t)``, ``ndarray + t``: NumPy ufuncs with a lantern counterpart are staged."""
        name = _UFUNCS.get(ufunc.__name__)
        if method != "__call__" or kwargs or name is None:
            call = ufunc.__name__ + ("" if method == "__call__" else f".{method}")
            raise with_location(TraceError, f"NumPy's {call} cannot run on a staged tensor; use the lantern "
                                "function of the same name (lantern.sum, lantern.exp, ...)")
        return _operation(name)(*inputs)

    def __init__(self, var: Var, frame: Frame):
        self.var = var
        self.frame = frame

    # ---------------------------------------------------------- static attributes
    @property
    def type(self) -> TensorType:
        return self.var.type  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.type.dtype)

    @property
    def ndim(self) -> int:
        return self.type.ndim

    @property
    def size(self) -> int:
        return self.type.size

    @property
    def T(self) -> Tensor:
        return _ops().transpose(self)

    def __repr__(self) -> str:
        return f"Tensor({self.type}, staged %{self.var.name})"

    # ---------------------------------------------------------- no concrete value
    def _concretize(self, what: str) -> Any:
        raise with_location(ConcretizationError, f"{what} of {self!r}: {_CONCRETE_HINT}")

    def __bool__(self) -> bool:
        return self._concretize("bool()")

    def __int__(self) -> int:
        return self._concretize("int()")

    def __float__(self) -> float:
        return self._concretize("float()")

    def __index__(self) -> int:  # range(n), a_list[i], a NumPy array indexed by it
        raise with_location(ConcretizationError, f"use as a Python index of {self!r}: {_CONCRETE_HINT}; to index "
                            "a NumPy array with it, stage the array: lantern.asarray(array)[i]")

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise with_location(ConcretizationError, f"conversion to a NumPy array of {self!r}: {_NUMPY_HINT}")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: dict) -> Any:
        """``np.sum(t)``, ``np.dot(a, t)``, ``np.concatenate([t, ...])``: NumPy functions with a lantern
        counterpart are staged (with the keyword arguments lantern has); others are a lantern error."""
        entry = _FUNCTIONS.get(func.__name__)
        if entry is None:
            raise with_location(TraceError, f"NumPy's {func.__name__} cannot run on a staged tensor and has no "
                                "lantern counterpart; see the README's list of operations")
        name, accepted = entry
        extra = sorted(k for k, v in kwargs.items() if k not in accepted and v is not None)
        if extra:
            raise with_location(TraceError, f"np.{func.__name__} on a staged tensor: keyword arguments {extra} are not "
                                f"supported (lantern.{name} takes {sorted(accepted) or 'none'})")
        kwargs = {("shape" if k == "newshape" else k): v for k, v in kwargs.items() if k in accepted}
        if func.__name__ == "take" and kwargs.get("axis") is None:  # NumPy's take flattens first
            return _ops().take(_ops().reshape(args[0], (-1,)), *args[1:], axis=0)
        return _operation(name)(*args, **kwargs)

    def __len__(self) -> int:
        if not self.shape:
            raise with_location(TraceError, "len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        # A static first axis: iterating unrolls, like a Python for over a list.
        for i in range(len(self)):
            yield self[i]

    def __setitem__(self, key: Any, value: Any) -> None:
        raise with_location(TraceError, "staged tensors are immutable; build a new one "
                            "(lantern.where, lantern.concatenate) instead of assigning into it")

    __hash__ = object.__hash__

    # ---------------------------------------------------------- operators
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().subtract(self, o)
    def __rsub__(self, o): return _ops().subtract(o, self)
    def __mul__(self, o): return _ops().multiply(self, o)
    def __rmul__(self, o): return _ops().multiply(o, self)
    def __truediv__(self, o): return _ops().divide(self, o)
    def __rtruediv__(self, o): return _ops().divide(o, self)
    def __floordiv__(self, o): return _ops().floor_divide(self, o)
    def __rfloordiv__(self, o): return _ops().floor_divide(o, self)
    def __mod__(self, o): return _ops().mod(self, o)
    def __rmod__(self, o): return _ops().mod(o, self)
    def __pow__(self, o): return _ops().power(self, o)
    def __rpow__(self, o): return _ops().power(o, self)
    def __matmul__(self, o): return _ops().matmul(self, o)
    def __rmatmul__(self, o): return _ops().matmul(o, self)
    def __neg__(self): return _ops().negative(self)
    def __pos__(self): return _ops().positive(self)
    def __abs__(self): return _ops().abs(self)
    def __invert__(self): return _ops().invert(self)
    def __and__(self, o): return _ops().bitwise_and(self, o)
    def __rand__(self, o): return _ops().bitwise_and(o, self)
    def __or__(self, o): return _ops().bitwise_or(self, o)
    def __ror__(self, o): return _ops().bitwise_or(o, self)
    def __lt__(self, o): return _ops().less(self, o)
    def __le__(self, o): return _ops().less_equal(self, o)
    def __gt__(self, o): return _ops().greater(self, o)
    def __ge__(self, o): return _ops().greater_equal(self, o)
    def __eq__(self, o): return _ops().equal(self, o)  # type: ignore[override]
    def __ne__(self, o): return _ops().not_equal(self, o)  # type: ignore[override]
    def __getitem__(self, key): return _ops().getitem(self, key)

    # ---------------------------------------------------------- NumPy-style methods
    # (dim= and keepdim=: PyTorch's names, accepted too)
    def sum(self, axis=None, keepdims=False, **torch): return _ops().sum(self, axis, keepdims, **torch)
    def mean(self, axis=None, keepdims=False, **torch): return _ops().mean(self, axis, keepdims, **torch)
    def max(self, axis=None, keepdims=False, **torch): return _ops().max(self, axis, keepdims, **torch)
    def min(self, axis=None, keepdims=False, **torch): return _ops().min(self, axis, keepdims, **torch)
    def argmax(self, axis=None, keepdims=False, **torch): return _ops().argmax(self, axis, keepdims, **torch)
    def argmin(self, axis=None, keepdims=False, **torch): return _ops().argmin(self, axis, keepdims, **torch)
    def reshape(self, *shape): return _ops().reshape(self, shape[0] if len(shape) == 1 else shape)
    def transpose(self, *axes): return _ops().transpose(self, axes[0] if len(axes) == 1 else (axes or None))
    def swapaxes(self, a, b): return _ops().swapaxes(self, a, b)
    def squeeze(self, axis=None): return _ops().squeeze(self, axis)
    def flatten(self): return _ops().reshape(self, (-1,))
    def ravel(self): return _ops().reshape(self, (-1,))
    def astype(self, dtype): return _ops().astype(self, dtype)
    def clip(self, lo=None, hi=None): return _ops().clip(self, lo, hi)
    def prod(self, axis=None, keepdims=False, **torch): return _reduce_ops().prod(self, axis, keepdims, **torch)
    def any(self, axis=None, keepdims=False, **torch): return _reduce_ops().any(self, axis, keepdims, **torch)
    def all(self, axis=None, keepdims=False, **torch): return _reduce_ops().all(self, axis, keepdims, **torch)
    def std(self, axis=None, ddof=0, keepdims=False, **torch): return _reduce_ops().std(self, axis, ddof, keepdims, **torch)
    def cumsum(self, axis=None, **torch): return _reduce_ops().cumsum(self, axis, **torch)
    def cumprod(self, axis=None, **torch): return _reduce_ops().cumprod(self, axis, **torch)
    def argsort(self, axis=-1, **torch): return _array_ops().argsort(self, axis, **torch)
    def repeat(self, repeats, axis=None): return _array_ops().repeat(self, repeats, axis)
    def round(self, decimals=0): return _ops().round(self, decimals)
    def __round__(self, ndigits=None): return _ops().round(self, ndigits or 0)

    def copy(self) -> Tensor:
        """``self``: staged tensors are immutable, so a copy is the same value."""
        return self

    @property
    def mT(self) -> Tensor:
        """The last two axes swapped (NumPy's and PyTorch's ``mT``)."""
        if self.ndim < 2:
            raise with_location(TraceError, f"mT: needs at least 2 dimensions, got {self!r}")
        return _ops().swapaxes(self, -1, -2)

    def item(self) -> Any:
        raise with_location(ConcretizationError, f"item() of {self!r}: a staged tensor has a value only when the "
                            "compiled code runs; return it from the staged function and call .item() on the result")
