"""Eager execution: lantern's operations and layers called on NumPy arrays outside a staged function,
and :func:`disable_stage`, which runs staged functions as plain Python, op by op (like
``jax.disable_jit()``), so that ``print`` and ``pdb`` see values.

An operation called outside tracing is traced on its own (a small program per operation and
signature, cached) and run by the IR's NumPy reference interpreter: the same typing rules, the same
errors at the user's line and the same results as staged code, with no C compiled. Arrays among the
arguments become parameters of that program; everything else (Python numbers, shapes, axes, dtypes,
layers) stays a constant of it, as when staged.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import threading
from typing import Any, Callable, Iterator

import numpy as np

from .errors import ArgumentError
from .ir.nodes import Function, Var
from .ir.types import TensorType
from .ir.verify import verify
from .tracing import Frame, ModuleBuilder, current_frame, trace_callable
from .tree import TreeDef, flatten, unflatten

_state = threading.local()


def _env_disabled() -> bool:
    value = os.environ.get("LANTERN_DISABLE_STAGE", "0").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ArgumentError(f"$LANTERN_DISABLE_STAGE={value!r}: expected 0 or 1")
    return value in ("1", "true", "yes", "on")


_DISABLED_BY_ENV = _env_disabled()  # read once, when lantern is imported
#: False while no thread can have staging disabled: the per-call check is then one global read
may_be_disabled = _DISABLED_BY_ENV


def stage_disabled() -> bool:
    """Whether staged functions run as plain Python on this thread (:func:`disable_stage`)."""
    return may_be_disabled and getattr(_state, "disabled", _DISABLED_BY_ENV)


@contextlib.contextmanager
def disable_stage(disable: bool = True) -> Iterator[None]:
    """``with lantern.disable_stage():`` runs staged functions as plain Python on this thread.

    Their lantern operations run eagerly on NumPy arrays (see the module docstring), ``cond``,
    ``fori_loop`` and ``while_loop`` become Python's ``if``, ``for`` and ``while``, and ``print``
    and ``pdb`` see values. ``grad`` and ``value_and_grad`` trace the function they differentiate
    and run its gradient in the reference interpreter (no C is compiled). ``LANTERN_DISABLE_STAGE=1``
    in the environment (read when lantern is imported) does the same for the whole process;
    ``disable_stage(False)`` turns it off inside.
    """
    global may_be_disabled
    previous = stage_disabled()
    may_be_disabled = may_be_disabled or disable  # (stays set: other threads may still be inside)
    _state.disabled = disable
    try:
        yield
    finally:
        _state.disabled = previous


# ---------------------------------------------------------------- running one traced call

_CACHE_SIZE = 2048
_cache: collections.OrderedDict[Any, tuple[Any, list[int]]] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (np.ndarray, np.generic))


def _static_key(leaf: Any) -> Any:
    if isinstance(leaf, float):  # -0.0 == 0.0, but they are different constants
        return (float, leaf, math.copysign(1.0, leaf))
    return (type(leaf), leaf)


def _signature_key(fn: Callable[..., Any], treedef: TreeDef, leaves: list[Any]) -> Any:
    """A cache key for one call, or None when a constant cannot be hashed (then it is traced afresh)."""
    key = (fn, treedef, tuple(("array", leaf.shape, leaf.dtype.name) if _is_array(leaf) else _static_key(leaf)
                              for leaf in leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _trace(fn: Callable[..., Any], name: str, treedef: TreeDef, leaves: list[Any]) -> tuple[Any, list[int]]:
    """Trace ``fn`` for the arguments ``unflatten(treedef, leaves)``, arrays as parameters: the IR module,
    the structure of the results, and which leaves are the parameters."""
    positions = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    params = [Var(TensorType(leaves[i].shape, leaves[i].dtype.name), f"a{i}") for i in positions]

    def arguments(tensors: list[Any]) -> tuple:
        values = list(leaves)
        for i, t in zip(positions, tensors):
            values[i] = t
        args, kwargs = unflatten(treedef, values)
        return (lambda: fn(*args, **kwargs),)

    builder = ModuleBuilder()
    body = trace_callable(Frame(builder, name, user_arguments=False), params, lambda call: call(), arguments, name,
                          f"the result of {name}")
    builder.functions[name] = Function(name, body.block, tuple(body.types))
    builder.out_treedefs[name] = body.treedef
    module = builder.module(name)
    verify(module)
    return (module, body.treedef), positions


def run_traced(fn: Callable[..., Any], name: str, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)`` traced (once per signature) and run by the reference interpreter."""
    from .ir.interpret import interpret
    leaves, treedef = flatten((args, kwargs))
    for k, leaf in enumerate(leaves):
        if not _is_array(leaf) and hasattr(leaf, "__array__") and not isinstance(leaf, (str, bytes)) \
                and type(leaf).__module__.split(".")[0] != "lantern":
            leaves[k] = np.asarray(leaf)  # array-likes (memoryview, other libraries' arrays) are arrays
    leaves = [np.asarray(leaf).astype(leaf.dtype.newbyteorder("="))
              if _is_array(leaf) and not leaf.dtype.isnative else leaf for leaf in leaves]
    key = _signature_key(fn, treedef, leaves)
    with _cache_lock:
        found = _cache.get(key) if key is not None else None
        if found is not None:
            _cache.move_to_end(key)
    if found is None:
        found = _trace(fn, name, treedef, leaves)
        if key is not None:
            with _cache_lock:
                _cache[key] = found
                if len(_cache) > _CACHE_SIZE:
                    _cache.popitem(last=False)
    (module, out_treedef), positions = found
    outs = interpret(module, [leaves[i] for i in positions])
    return unflatten(out_treedef, outs)


def eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for lantern's public operations: while tracing, ``fn`` itself; called outside a staged
    function, ``fn`` runs eagerly on its NumPy arguments (see the module docstring)."""
    name = fn.__name__

    @functools.wraps(fn)
    def operation(*args: Any, **kwargs: Any) -> Any:
        if current_frame() is not None:
            return fn(*args, **kwargs)
        return run_traced(fn, name, args, kwargs)

    operation.traced = fn  # type: ignore[attr-defined]
    return operation


def as_array(value: Any) -> np.ndarray:
    """``value`` as staged code returns it: a NumPy array, a Python float as float32 (lantern's rules)."""
    from .ops import asarray
    return run_traced(asarray, "asarray", (value,), {})
