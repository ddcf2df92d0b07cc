"""Lantern for Python: a staged automatic-differentiation compiler.

Decorate a function with :func:`stage`; call it with NumPy arrays. The first call per
signature traces it into a typed IR, emits C, compiles and loads it; later calls run
the native code directly.
"""
from types import FunctionType

from .ad import checkpoint, grad, value_and_grad
from .saving import load, save
from .control import cond, fori_loop, scan, while_loop
from .eager import disable_stage, eager as _eager
from .errors import (ArgumentError, CacheWarning, CompileError, CompilerNotFoundError, CompilerTimeoutError,
                     ConcretizationError, DTypeError, IRVerificationError, LanternError, LanternWarning,
                     NativeError, NonFiniteError, OutOfBoundsError, RecompileWarning, RecursionDepthError, ShapeError,
                     SourceUnavailableWarning, TraceError, UnrolledLoopWarning)
from .ops import (abs, add, arange, arccos, arcsin, arctan, arctan2, argmax, argmin, asarray, astype, broadcast_to,
                  clip, concatenate, constant, cos, cosh, divide, dot, elu, equal, erf, exp, expand_dims, expm1, floor,
                  floor_divide, full, full_like, gelu, greater, greater_equal, isfinite, isinf, isnan, leaky_relu,
                  less, less_equal, log, log1p, log_sigmoid, log_softmax, logaddexp, logical_and, logical_not,
                  logical_or, logsumexp, matmul, max, maximum, mean, min, minimum, mod, moveaxis, multiply, negative,
                  not_equal, one_hot, ones, ones_like, power, random_uniform, relu, remainder, reshape, round, rsqrt,
                  sigmoid, sign, silu, sin, sinh, softmax, softplus, sqrt, square, squeeze, stack, stop_gradient,
                  subtract, sum, swapaxes, take, tan, tanh, transpose, where, zeros, zeros_like)
from .ops_arrays import (argsort, einsum, eye, flip, linspace, nonzero, pad, repeat, roll, sort, split, take_along_axis,
                         tile, topk, tril, triu)
from .ops_reduce import all, any, cumprod, cumsum, norm, prod, std, var
from .staging import Executable, Staged, stage
from .tensor import Tensor

# Called outside a staged function, on NumPy arrays, the operations run eagerly (lantern/eager.py);
# lantern.ops keeps the plain functions, which lantern's own code calls while tracing.
_OPERATION_MODULES = ("lantern.ops", "lantern.ops_arrays", "lantern.ops_reduce")
globals().update({name: _eager(value) for name, value in list(globals().items())
                  if isinstance(value, FunctionType) and value.__module__ in _OPERATION_MODULES})

from . import nn  # noqa: E402  (layers and losses; after the ops they are written with)
from . import optim  # noqa: E402  (optimizers and gradient clipping)
from . import train  # noqa: E402  (fit: a training loop with progress and loss curve)

__version__ = "0.1.0"

float32, float64, int32, int64 = "float32", "float64", "int32", "int64"
bool_ = "bool"


def cache_stats() -> dict[str, int]:
    """Compiles and disk-cache hits in this process (for tests and benchmarks)."""
    from .codegen.cache import STATS
    return dict(STATS)


__all__ = [n for n in dir() if not n.startswith("_") and n != "FunctionType"]
