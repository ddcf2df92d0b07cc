"""IR types: tensors with a static shape and dtype, and function (continuation) values."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from .symbolic import Size, shape_key, shape_text

#: dtypes a staged tensor may have, by their NumPy names.
DTYPES = ("bool", "int32", "int64", "float32", "float64")
FLOAT_DTYPES = ("float32", "float64")
INT_DTYPES = ("int32", "int64")
_SHORT = {"bool": "bool", "int32": "i32", "int64": "i64", "float32": "f32", "float64": "f64"}


def canonical_dtype(dtype) -> str:
    """The lantern name of a NumPy-compatible dtype, or raise ``DTypeError``."""
    from ..errors import DTypeError

    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise DTypeError(f"not a dtype: {dtype!r}") from exc
    if name not in DTYPES:
        raise DTypeError(f"dtype {name} is not supported; lantern supports {', '.join(DTYPES)}")
    return name


@dataclass(frozen=True)
class TensorType:
    """A tensor of ``shape`` and ``dtype`` (a name from :data:`DTYPES`); a dimension is an ``int`` or a
    :class:`~lantern.ir.symbolic.Size` known only at run time."""

    shape: tuple[int | Size, ...]
    dtype: str

    def __hash__(self) -> int:
        return hash((shape_key(self.shape), self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int | Size:
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def is_static(self) -> bool:
        """Every dimension is an ``int``."""
        return not any(isinstance(d, Size) for d in self.shape)

    @property
    def nbytes(self) -> int | Size:
        return self.size * self.itemsize

    def __str__(self) -> str:
        return f"{_SHORT[self.dtype]}[{shape_text(self.shape)}]"


@dataclass(frozen=True)
class FnType:
    """A first-class function value (a continuation): parameter and result types."""

    params: tuple[Type, ...]
    results: tuple[Type, ...]

    def __str__(self) -> str:
        return f"({', '.join(map(str, self.params))}) -> ({', '.join(map(str, self.results))})"


Type = TensorType | FnType


def scalar(dtype: str) -> TensorType:
    return TensorType((), dtype)
