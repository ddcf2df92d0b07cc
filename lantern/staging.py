"""``@lantern.stage``: trace a Python function per signature, compile it to C, call it natively.

A *signature* is the structure of the arguments (nested tuples/lists/dicts), the shape
and dtype of every array in it, and the value of every Python constant in it. Each new
signature is traced once, compiled once (or found in the on-disk cache) and kept.

Inside a function that is being traced, calling a staged function does not run it: it
becomes a call of an IR function, which is how staged functions recurse (a TreeLSTM over
a tree stored as child-index arrays). Non-recursive calls are inlined before C is emitted.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import compile_log, dynamic_shapes, eager, ops
from . import python_control_flow as python_control_flow_rewrite
from .compile_log import CompileEvent
from .control import UnknownRecursiveResult
from .errors import ArgumentError, DTypeError, LanternError, TraceError
from .ir.nodes import Block, Call, Function, Module, Var
from .ir.printer import format_module
from .ir.symbolic import ShapeEnv, Size, shape_env
from .ir.types import DTYPES, TensorType
from .ir.verify import verify
from .source import Loc, user_location
from .tensor import Tensor
from .tracing import Frame, ModuleBuilder, current_frame, name_var, trace_callable, with_location
from .tree import TreeDef, _sort_key, flatten, tree_map, unflatten, unflattener

_STATIC_TYPES = (bool, int, float, str, bytes, type(None))
#: shapes a signature with run-time sizes remembers as checked (then it forgets them all and starts again)
_MAX_REMEMBERED_SHAPES = 4096
_NAN = float("nan")


@dataclass(frozen=True)
class ArraySpec:
    """What a staged function expects at one array position of its arguments."""

    path: str
    shape: tuple[int | str, ...]  # a str: a run-time size of that name (lantern/dynamic_shapes.py)
    dtype: str


def _c_hint(path: str) -> str:
    hint = re.sub(r"[^0-9A-Za-z]+", "_", path).strip("_")
    return hint if hint and not hint[0].isdigit() else f"a_{hint}"


def _leaf_key(path: str, leaf: Any) -> tuple:
    """Signature key of one argument leaf; raises ``ArgumentError`` for values lantern cannot take."""
    if isinstance(leaf, np.ndarray) or isinstance(leaf, np.generic):
        name = leaf.dtype.name
        if name not in DTYPES:
            raise ArgumentError(f"argument {path}: dtype {name} is not supported "
                                f"(expected one of {', '.join(DTYPES)})")
        return ("array", leaf.shape, name)
    if isinstance(leaf, float):
        # -0.0 == 0.0 but they are different constants; all NaNs are one constant
        return ("static", type(leaf).__name__, _NAN if leaf != leaf else leaf, math.copysign(1.0, leaf))
    if isinstance(leaf, _STATIC_TYPES):
        return ("static", type(leaf).__name__, leaf)
    if isinstance(leaf, Tensor):
        raise ArgumentError(f"argument {path}: {leaf!r} is a staged value from another trace; "
                            "pass NumPy arrays to a staged function")
    if hasattr(leaf, "__array__"):
        return _leaf_key(path, np.asarray(leaf))
    raise ArgumentError(f"argument {path}: expected a NumPy array, a Python number or a nested "
                        f"tuple/list/dict of them, got {type(leaf).__name__}")


#: dicts' keys in insertion order -> sorted (the order of their leaves), for :func:`_fast_key`
_SORTED_KEYS: dict[tuple, tuple] = {}


def _fast_key(items: Any, key: list[Any], leaves: list[Any]) -> bool:
    """The per-call cache key of ``Staged.__call__``, much cheaper than binding and :func:`flatten`.

    Appends to ``key`` a prefix-free description of ``items`` (a type tag, then the
    container length or dict keys, or the array shape and dtype, or the number) and to
    ``leaves`` the leaves in :func:`flatten` order. False where a leaf or container is
    not one of the common kinds (the caller then takes the general path).
    """
    for a in items:
        t = type(a)
        if t is np.ndarray:
            key += (a.shape, a.dtype)
            leaves.append(a)
        elif t is float:
            key += (t, a if a == a else _NAN, math.copysign(1.0, a))
            leaves.append(a)
        elif t is int or t is bool or t is str:
            key += (t, a)
            leaves.append(a)
        elif t is tuple or t is list:
            key += (t, len(a))
            if not _fast_key(a, key, leaves):
                return False
        elif t is dict:
            names = _SORTED_KEYS.get(tuple(a))  # (sorting them took a microsecond per dict and call)
            if names is None:
                try:
                    names = tuple(sorted(a, key=_sort_key))
                except TypeError:
                    return False
                if len(_SORTED_KEYS) > 4096:
                    _SORTED_KEYS.clear()
                _SORTED_KEYS[tuple(a)] = names
            key += (t, names)
            if not _fast_key([a[k] for k in names], key, leaves):
                return False
        elif a is None:
            key.append(None)
        else:
            return False
    return True


#: what a dispatcher (:meth:`Executable.dispatcher`) returns for arguments it does not serve
_MISS = object()


def _make_dispatcher(exe: Executable) -> Callable[..., Any] | None:
    """:meth:`Executable.dispatcher`'s function: Python source written for this signature, then compiled."""
    native = exe.native
    if exe.pattern is not None or native._sizes or any(k[0] != "array" for k in exe._leaf_keys) \
            or exe.in_treedef.kind != "tuple" or len(exe.in_treedef.children) != len(exe._param_names):
        return None
    constants: dict[str, Any] = {"ndarray": np.ndarray, "MISS": _MISS, "empty": np.empty, "fb": native._from_buffer,
                                 "entry": native._entry, "finish": native._finish, "results": exe._results}
    lines: list[str] = []
    leaves: list[str] = []

    def constant(value: Any) -> str:
        constants[f"k{len(constants)}"] = value
        return f"k{len(constants) - 1}"

    def guard(td: TreeDef, expr: str) -> None:
        name = f"v{len(lines)}"
        lines.append(f"{name} = {expr}")
        if td.kind == "leaf":
            i = len(leaves)
            _, shape, dtype, _ = exe._checks[i]
            lines.append(f"if type({name}) is not ndarray or {name}.shape != {constant(shape)} or "
                         f"{name}.dtype is not {constant(dtype)} or not {name}.flags.carray: return MISS")
            leaves.append(name)
        elif td.kind == "none":
            lines.append(f"if {name} is not None: return MISS")
        elif td.kind in ("tuple", "list", "dict"):
            lines.append(f"if type({name}) is not {td.kind} or len({name}) != {len(td.children)}: return MISS")
            keys = td.aux if td.kind == "dict" else range(len(td.children))
            for key, child in zip(keys, td.children):
                guard(child, f"{name}[{constant(key) if td.kind == 'dict' else key}]")
        else:  # a namedtuple
            lines.append(f"if type({name}) is not {constant(td.aux)}: return MISS")
            for k, child in enumerate(td.children):
                guard(child, f"{name}[{k}]")

    params = [f"p{k}" for k in range(len(exe._param_names))]
    for param, child in zip(params, exe.in_treedef.children):
        guard(child, param)
    outs = [f"o{k}" for k in range(len(native._out_specs))]
    run = [f"{o} = empty({constant(shape)}, {constant(dtype)})" for o, (shape, dtype) in zip(outs, native._out_specs)]
    run.append(f"code = entry({', '.join(f'fb({v})' for v in leaves + outs)})")
    run.append(f"if code: return results(finish(code, [{', '.join(leaves)}], [{', '.join(outs)}]))")
    run.append(f"return results([{', '.join(outs)}])")
    checks = ["try:", *("    " + line for line in lines), "except KeyError:  # (a dict with other keys)",
              "    return MISS"] if lines else []
    body = "\n    ".join(checks + run)
    source = f"def dispatch({', '.join(params)}):\n    {body}\n"
    scope: dict[str, Any] = {}
    exec(compile(source, f"<lantern dispatcher of {exe.name}>", "exec"), constants, scope)
    return scope["dispatch"]


def _as_native_array(spec: ArraySpec, leaf: Any) -> np.ndarray:
    """``leaf`` as a C-contiguous, aligned, native-order array matching ``spec``, else ``ArgumentError``.

    Arrays that do not fit the C code as they are (views with strides, other byte order,
    unaligned, subclasses) are copied; the caller's array is never written to.
    """
    if isinstance(leaf, (np.ndarray, np.generic, bool, int, float)) or (
            hasattr(leaf, "__array__") and not isinstance(leaf, (str, bytes))):
        arr = np.asarray(leaf)
        got = f"{arr.dtype.name} array of shape {arr.shape}"
    else:
        arr, got = None, f"{type(leaf).__name__} {_short_repr(leaf)}"
    if arr is None or not _fits(spec.shape, arr.shape) or arr.dtype.name != spec.dtype:
        shape = "(" + ", ".join(map(str, spec.shape)) + ("," if len(spec.shape) == 1 else "") + ")"
        raise ArgumentError(f"argument {spec.path}: expected {spec.dtype} array of shape {shape}, got {got}")
    if type(arr) is np.ndarray and arr.flags.c_contiguous and arr.flags.aligned and arr.dtype.isnative:
        return arr
    return np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True, subok=False)


def _fits(expected: tuple[int | str, ...], shape: tuple[int, ...]) -> bool:
    return len(expected) == len(shape) and all(isinstance(e, str) or e == d for e, d in zip(expected, shape))


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Executable:
    """One compiled signature of a staged function: the IR, the C, and the loaded code.

    Calling it runs the native code after checking every argument against the signature
    it was compiled for (``ArgumentError`` names the argument and both shapes/dtypes).
    """

    def __init__(self, name: str, signature: inspect.Signature, in_treedef: TreeDef, leaf_keys: list[tuple],
                 in_paths: list[str], traced: Module | None, optimized: Module | None, out_treedef: TreeDef,
                 out_types: list[TensorType], native: Any,
                 retrace: Callable[[], tuple[Module, Module]] | None = None,
                 pattern: dynamic_shapes.Pattern | None = None):
        self.name = name
        #: the signature's run-time sizes and the guards its code assumes (None: every shape is static)
        self.pattern = pattern
        self._signature = signature
        self._param_names = list(signature.parameters)
        self._simple = _is_simple(signature)
        self.in_treedef = in_treedef
        self._leaf_keys = leaf_keys
        self._array_positions = [i for i, k in enumerate(leaf_keys) if k[0] == "array"]
        self.in_specs = [ArraySpec(in_paths[i], leaf_keys[i][1], leaf_keys[i][2]) for i in self._array_positions]
        # (traced, optimized) IR; None when the code came from the trace cache until someone asks for it
        self._modules = (traced, optimized) if traced is not None and optimized is not None else None
        self._retrace = retrace
        self.out_treedef = out_treedef
        self.out_types = out_types
        self.native = native
        # precomputed for the per-call path
        self._checks = [(i, spec.shape, np.dtype(spec.dtype), spec) for spec, i in zip(self.in_specs, self._array_positions)]
        self._results = unflattener(out_treedef)  # the results' structure from the flat list
        self._dispatcher: Callable[..., Any] | None | bool = False  # (False: not made yet)
        self._accepted: set[tuple] = set()  # argument keys (structure and constants) already checked
        #: how this signature was compiled: its time (tracing, C, compiler), why, loops unrolled
        self.compile_event: compile_log.CompileEvent | None = None
        #: the function's Python with its control flow rewritten (None: nothing was rewritten)
        self.converted_source: str | None = None
        self._fitting_shapes: set[tuple] = set()  # argument shapes the pattern was checked to serve
        #: seconds per step of making it (trace, passes, emit, cc, load); empty when the trace cache had it
        self.compile_stages: dict[str, float] = {}

    def dispatcher(self) -> Callable[..., Any] | None:
        """A function of a call's positional arguments that runs this executable when they are exactly what it
        was compiled for (the same structure, arrays of its shapes and dtypes, C-contiguous, aligned and
        writeable), else returns :data:`_MISS`; made once, in straight-line code (the general per-call path
        walks the arguments, builds a key and looks it up: about half of a small step's overhead). None where
        the signature has constants or run-time sizes (the general path serves those)."""
        if self._dispatcher is False:
            self._dispatcher = _make_dispatcher(self)
        return self._dispatcher  # type: ignore[return-value]

    # ---------------------------------------------------------- inspection
    def _ir_modules(self) -> tuple[Module, Module]:
        if self._modules is None:
            assert self._retrace is not None
            self._modules = self._retrace()
        return self._modules

    @property
    def traced_module(self) -> Module:
        """The IR module as traced (traced now if the code was found through the trace cache)."""
        return self._ir_modules()[0]

    @property
    def module(self) -> Module:
        """The IR module after the passes that prepare it for C."""
        return self._ir_modules()[1]

    @property
    def ir(self) -> str:
        """The IR as traced from the user's function (text)."""
        return format_module(self.traced_module)

    @property
    def optimized_ir(self) -> str:
        """The IR after the passes that prepare it for C (inlining, fusion)."""
        return format_module(self.module)

    @property
    def lowered(self) -> str:
        """The optimized IR, then where each value lives in the C (``codegen/lowering.py``): results computed
        in place, values added into gradient buffers, inlined literals, continuations' environments."""
        from .codegen.lowering import format_plan, lower_module
        from .ir.names import Namer
        namer = Namer()
        ir = format_module(self.module, namer)
        return f"{ir}\nlowering:\n{format_plan(self.module, lower_module(self.module), namer)}\n"

    @property
    def memory_plan(self) -> str:
        """When each buffer of the C is made and freed, and the peak bytes each function holds at once
        (``codegen/memory_plan.py``), on the optimized IR's numbering."""
        from .codegen.lowering import lower_module
        from .codegen.memory_plan import format_memory_plan
        from .ir.names import Namer
        namer = Namer()
        format_module(self.module, namer)  # (the same names as ``lowered``)
        plan = lower_module(self.module, memory_plan=True)
        return format_memory_plan(self.module, plan.memory, plan.owns_buffer, namer)  # type: ignore[arg-type]

    @property
    def c_source(self) -> str:
        return self.native.c_source

    @property
    def c_path(self) -> str:
        return self.native.c_path

    @property
    def so_path(self) -> str:
        return self.native.so_path

    # ---------------------------------------------------------- running
    def run_leaves(self, leaves: list[Any] | tuple[Any, ...]) -> Any:
        """Run on the flat leaves of the arguments (statics already matched).

        This is the per-call path: an argument that is already a C-contiguous, aligned
        array of the right shape and native dtype goes to C as it is; anything else goes
        through :func:`_as_native_array` (copy, or ``ArgumentError``).
        """
        if self.pattern is not None:
            return self._run_with_sizes(leaves)
        arrays = []
        for i, shape, dtype, spec in self._checks:
            a = leaves[i]
            if not (type(a) is np.ndarray and a.shape == shape and (a.dtype is dtype or a.dtype == dtype)
                    and ((flags := a.flags).carray or flags.c_contiguous and flags.aligned)):
                a = _as_native_array(spec, a)
            arrays.append(a)
        return self._results(self.native(arrays))

    def _run_with_sizes(self, leaves: list[Any] | tuple[Any, ...]) -> Any:
        """:meth:`run_leaves` for a signature with run-time sizes: the arrays must fit its pattern."""
        assert self.pattern is not None
        arrays = []
        for i, _, dtype, spec in self._checks:
            a = leaves[i]
            if not (type(a) is np.ndarray and (a.dtype is dtype or a.dtype == dtype) and a.flags.c_contiguous
                    and a.flags.aligned):
                a = _as_native_array(spec, a)
            arrays.append(a)
        shapes = tuple(a.shape for a in arrays)
        if shapes not in self._fitting_shapes:  # (checked once per shape: the guards cost a few us)
            if self.pattern.bind_shapes(list(shapes)) is None:
                raise ArgumentError(f"{self.name}: {self.pattern.mismatch(list(shapes), [s.path for s in self.in_specs])}")
            if len(self._fitting_shapes) > _MAX_REMEMBERED_SHAPES:
                self._fitting_shapes.clear()
            self._fitting_shapes.add(shapes)
        return self._results(self.native(arrays))

    def interpret(self, *args: Any, optimized: bool = False, **kwargs: Any) -> Any:
        """Run the IR (as traced, or after the C-preparing passes) in the NumPy reference interpreter."""
        from .ir.interpret import interpret
        leaves = flatten(_bind(self.name, self._signature, args, kwargs))[0]
        arrays = [np.asarray(leaves[i]) for i in self._array_positions]
        outs = interpret(self.module if optimized else self.traced_module, arrays)
        return unflatten(self.out_treedef, outs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs or not self._simple or len(args) != len(self._param_names):
            args = _bind(self.name, self._signature, args, kwargs)
        else:
            dispatch = self.dispatcher()
            result = _MISS if dispatch is None else dispatch(*args)
            if result is not _MISS:
                return result
        key: list[Any] = []
        leaves: list[Any] = []
        if _fast_key(args, key, leaves):
            # arguments whose structure and constants were accepted before need no second look
            key_t = tuple(key)
            if key_t in self._accepted:
                return self.run_leaves(leaves)
            result = self._checked_call(args)
            self._accepted.add(key_t)
            return result
        return self._checked_call(args)

    def _checked_call(self, args: tuple) -> Any:
        leaves, treedef = flatten(args)
        if treedef != self.in_treedef:
            # name the first parameter whose structure differs (a list or None where an array goes)
            for pname, got, want in zip(self._param_names, treedef.children, self.in_treedef.children):
                if got != want:
                    value = args[self._param_names.index(pname)]
                    raise ArgumentError(f"argument {pname}: expected the structure {want} ('*' is an array or "
                                        f"number), got {got}: {type(value).__name__} {_short_repr(value)}")
            raise ArgumentError(f"{self.name}: arguments have structure {treedef}, expected {self.in_treedef}")
        for i, (key, leaf) in enumerate(zip(self._leaf_keys, leaves)):
            if key[0] == "static":
                path = _path_name(flatten(args, paths=True)[0][i][0], self._param_names)
                if _leaf_key(path, leaf) != key:
                    raise ArgumentError(f"argument {path}: this executable was compiled for the constant "
                                        f"{key[2]!r}, got {leaf!r}")
        return self.run_leaves(leaves)


def _path_name(path: str, names: list[str]) -> str:
    # flatten paths of the bound-arguments tuple start with "[i]": name the parameter instead
    m = re.match(r"\[(\d+)\](.*)", path)
    return f"{names[int(m.group(1))]}{m.group(2)}" if m else path


def _bind(name: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple:
    """The value of each parameter, in order (a ``*args`` parameter's is a tuple, a ``**kwargs`` one's a dict)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ArgumentError(f"{name}(): {exc} (signature {name}{signature})") from None
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _is_simple(signature: inspect.Signature) -> bool:
    """Every parameter positional-or-keyword: the positional arguments are the parameters' values."""
    return all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in signature.parameters.values())


def call_bound(fn: Callable[..., Any], signature: inspect.Signature, values: tuple | list) -> Any:
    """Call ``fn`` with the parameter values :func:`_bind` gave: positional ones by position, ``*args``
    spread, keyword-only ones and ``**kwargs`` by name."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p, v in zip(signature.parameters.values(), values):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            args.extend(v)
        elif p.kind is inspect.Parameter.KEYWORD_ONLY:
            kwargs[p.name] = v
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            kwargs.update(v)
        else:
            args.append(v)
    return fn(*args, **kwargs)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ArgumentError(f"${name}={text!r}: expected an integer") from None


def stage_options(check_indices: bool | None = None, check_finite: bool | None = None,
                  max_depth: int | None = None, memory_plan: bool | None = None) -> dict[str, Any]:
    """The checks compiled into a staged function's C (``codegen.EmitOptions`` fields).

    An option left ``None`` comes from the environment when the function is staged:
    ``LANTERN_CHECK_INDICES`` (default 1), ``LANTERN_CHECK_FINITE`` (default 0),
    ``LANTERN_MAX_DEPTH`` (default 0: recursion is limited by the C stack only), ``LANTERN_MEMORY_PLAN``
    (default 1).
    """
    options = {
        "check_indices": bool(_env_int("LANTERN_CHECK_INDICES", 1)) if check_indices is None else check_indices,
        "check_finite": bool(_env_int("LANTERN_CHECK_FINITE", 0)) if check_finite is None else check_finite,
        "max_depth": _env_int("LANTERN_MAX_DEPTH", 0) if max_depth is None else max_depth,
        "memory_plan": bool(_env_int("LANTERN_MEMORY_PLAN", 1)) if memory_plan is None else memory_plan,
    }
    for key in ("check_indices", "check_finite", "memory_plan"):
        if not isinstance(options[key], (bool, np.bool_)):
            raise ArgumentError(f"stage: {key} must be a bool, got {options[key]!r}")
    if isinstance(options["max_depth"], bool) or not isinstance(options["max_depth"], int) or options["max_depth"] < 0:
        raise ArgumentError(f"stage: max_depth must be an int >= 0 (0: no limit but the C stack), "
                            f"got {options['max_depth']!r}")
    return options


class Staged:
    """A Python function staged with :func:`stage`. Call it with NumPy arrays."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None, options: dict[str, Any] | None = None,
                 python_control_flow: bool = True, dynamic: dynamic_shapes.DynamicOption = None):
        if not callable(fn):
            raise ArgumentError(f"stage: expected a function, got {type(fn).__name__} {_short_repr(fn)}")
        functools.update_wrapper(self, fn, updated=())  # not fn.__dict__: a grad wrapper's .lower would shadow ours
        #: the function as written; ``fn`` is what is traced: its Python if/while/for rewritten to decide on
        #: staged values while tracing (lantern/python_control_flow.py), unless ``python_control_flow=False``
        self.python_fn = fn
        self.python_control_flow = python_control_flow
        self.fn = (python_control_flow_rewrite.convert(fn) or fn) if python_control_flow and not _lanterns_own(fn) \
            else fn
        self.name = name or getattr(fn, "__name__", "staged")
        #: the checks compiled into every signature's C (see :func:`stage_options`)
        self.options = options if options is not None else stage_options()
        self.signature = inspect.signature(fn)
        self._param_names = list(self.signature.parameters)
        self._simple = _is_simple(self.signature)
        self._executables: dict[Any, Executable] = {}
        self._fast: dict[Any, Executable] = {}
        self._dispatch: Callable[..., Any] | None = None  # the last executable's (Executable.dispatcher)
        self.trace_count = 0
        self._compiles: list[CompileEvent] = []  # lantern/compile_log.py
        self._compiled_signatures: list[tuple[TreeDef, list[tuple], list[str]]] = []
        #: under disable_stage, trace and interpret rather than run the Python function (grad's wrappers,
        #: whose Python function only makes sense while tracing)
        self.interpret_when_unstaged = False
        #: which argument dimensions are run-time sizes (lantern/dynamic_shapes.py)
        self.dynamic = dynamic_shapes.check_option(dynamic)
        self._changed_axes: set[tuple[str, int]] = set()  # (path, axis) seen with different sizes
        self._fixed_axes: set[tuple[str, int]] = set()    # (path, axis) a trace needed as a constant
        self._with_sizes: list[tuple[TreeDef, Executable]] = []  # compiled signatures with run-time sizes
        self._no_sizes_because: str | None = None  # why run-time sizes failed here (then: per shape)
        self._fixed_because: list[str] = []  # why each of _fixed_axes is a constant

    def __repr__(self) -> str:
        return f"<lantern.stage {self.name}{self.signature}>"

    def call_bound(self, *values: Any) -> Any:
        """The Python function called with the parameter values of one call (see :func:`call_bound`)."""
        return call_bound(self.fn, self.signature, values)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self, obj)

    # ---------------------------------------------------------- host calls
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_frame() is not None:
            return self._call_while_tracing(args, kwargs)
        if eager.may_be_disabled and eager.stage_disabled():
            return self._call_unstaged(args, kwargs)
        if kwargs or not self._simple or len(args) != len(self._param_names):
            exe, leaves = self._specialize(args, kwargs)
            return exe.run_leaves(leaves)
        dispatch = self._dispatch  # the last executable's, if these arguments are its kind (read once: threads)
        if dispatch is not None:
            result = dispatch(*args)
            if result is not _MISS:
                return result
        # Fast path: a key from the structure, the shapes and dtypes of the arrays and the
        # values of the numbers, without binding or paths (see _fast_key).
        key: list[Any] = []
        leaves: list[Any] = []
        if not _fast_key(args, key, leaves):
            exe, leaves = self._specialize(args, kwargs)
            return exe.run_leaves(leaves)
        fast_key = tuple(key)
        exe = self._fast.get(fast_key)
        if exe is None:
            exe, leaves = self._specialize(args, kwargs)
            if len(self._fast) >= _MAX_REMEMBERED_SHAPES * 16:  # (run-time sizes: one entry per shape seen)
                self._fast.clear()
            self._fast[fast_key] = exe
        self._dispatch = exe.dispatcher()
        return exe.run_leaves(leaves)

    def _call_unstaged(self, args: tuple, kwargs: dict) -> Any:
        """Under :func:`lantern.disable_stage`: the Python function itself, its operations eager; a gradient
        (``interpret_when_unstaged``) is traced and run by the reference interpreter."""
        if self.interpret_when_unstaged:
            return eager.run_traced(self.fn, self.name, args, kwargs)
        result = self.call_bound(*_bind(self.name, self.signature, args, kwargs))
        return tree_map(eager.as_array, result)  # arrays, with the dtypes staged code gives

    def lower(self, *args: Any, **kwargs: Any) -> Executable:
        """The compiled executable for these arguments: ``.ir``, ``.c_source``, ``.c_path``; callable."""
        return self._specialize(args, kwargs)[0]

    def lower_with_sizes(self, args: tuple | list, kwargs: dict, sizes: dict[str, list[tuple[Any, int]]]) -> Executable:
        """The executable for these arguments with the axes in ``sizes`` (name -> (array, axis) pairs, the
        arrays among the arguments) run-time sizes of those names (``python -m lantern inspect --arg
        f32[n,3]``); the arrays' sizes there are only the hints."""
        bound = _bind(self.name, self.signature, tuple(args), kwargs)
        with_paths, treedef = flatten(bound, paths=True)
        paths = [_path_name(p, self._param_names) for p, _ in with_paths]
        keys = [_leaf_key(p, leaf) for p, (_, leaf) in zip(paths, with_paths)]
        position = {id(leaf): i for i, (_, leaf) in enumerate(with_paths)}
        names = {(position[id(array)], axis): name for name, where in sizes.items() for array, axis in where}
        pattern = dynamic_shapes.make_pattern(keys, paths, set(names), _c_hint, names)
        return self._compile(treedef, list(pattern.keys), paths, pattern)

    def trace(self, *args: Any, **kwargs: Any) -> Module:
        """The IR module of this function for these arguments, as traced (gradients included); no C is made."""
        bound = _bind(self.name, self.signature, args, kwargs)
        with_paths, treedef = flatten(bound, paths=True)
        paths = [_path_name(p, self._param_names) for p, _ in with_paths]
        return self._trace(treedef, [_leaf_key(p, leaf) for p, (_, leaf) in zip(paths, with_paths)], paths)[2]

    def _specialize(self, args: tuple, kwargs: dict) -> tuple[Executable, list[Any]]:
        bound = _bind(self.name, self.signature, args, kwargs)
        with_paths, treedef = flatten(bound, paths=True)
        paths = [_path_name(p, self._param_names) for p, _ in with_paths]
        leaves = [leaf for _, leaf in with_paths]
        keys = [_leaf_key(p, leaf) for p, leaf in zip(paths, leaves)]
        key = (treedef, tuple(keys))
        exe = self._executables.get(key)
        if exe is None:
            exe = self._serving(treedef, keys)  # (not remembered per shape here: _fast does that, bounded)
            if exe is None:
                exe = self._executables[key] = self._compile_new(treedef, keys, paths)
        return exe, leaves

    def _serving(self, treedef: TreeDef, keys: list[tuple]) -> Executable | None:
        """A signature with run-time sizes compiled before that serves a call with these leaf keys."""
        for td, exe in reversed(self._with_sizes):
            if td == treedef and exe.pattern is not None and exe.pattern.bind(keys) is not None:
                return exe
        return None

    def _compile_new(self, treedef: TreeDef, keys: list[tuple], paths: list[str]) -> Executable:
        reason = compile_log.recompile_reason(self._compiled_signatures, treedef, keys, paths)
        changed = self._changed_axes | (dynamic_shapes.changed_axes(self._compiled_signatures, treedef, keys, paths)
                                        if self.dynamic is None else set())
        axes = dynamic_shapes.declared_axes(self.dynamic, keys, paths, self._param_names)
        axes |= {(i, a) for i, p in enumerate(paths) for q, a in changed if p == q}
        axes -= {(i, a) for i, p in enumerate(paths) for q, a in self._fixed_axes if p == q}
        pattern = dynamic_shapes.make_pattern(keys, paths, axes, _c_hint) if axes else None
        hits = _trace_cache_hits()
        start = time.perf_counter()
        exe, failed = None, None
        fixed_before = len(self._fixed_because)
        if pattern is not None and pattern.symbolic and self._no_sizes_because is None:
            exe, failed = self._compile_with_sizes(treedef, keys, paths, pattern, axes)
        note = ""
        if exe is not None:
            assert exe.pattern is not None
            note = "; run-time sizes " + ", ".join(f"{name} ({paths[i]} axis {a})" for name, i, a in exe.pattern.variables)
            note += "".join(f"; {why}" for why in self._fixed_because[fixed_before:])
            self._with_sizes.append((treedef, exe))
        else:
            exe = self._compile(treedef, keys, paths)  # (a user's error raises here, as it did before)
            if failed is not None:  # this function compiles per shape from now on
                self._no_sizes_because = failed
            if pattern is not None and pattern.symbolic:
                note = f"; per shape: {self._no_sizes_because}"
        seconds = time.perf_counter() - start
        unrolled = compile_log.unrolled_loops(exe._modules[0]) if exe._modules is not None else ()
        signature = compile_log.describe_signature(paths, list(exe.pattern.keys) if exe.pattern else keys)
        event = compile_log.CompileEvent(signature, reason.text + note, seconds, _trace_cache_hits() > hits, unrolled,
                                         tuple(exe.compile_stages.items()))
        exe.compile_event = event
        exe.converted_source = python_control_flow_rewrite.converted_source(self.fn)
        self._compiled_signatures.append((treedef, keys, paths))
        self._changed_axes = changed  # (learned from calls that compiled: a wrong call teaches nothing)
        compile_log.record(self.name, self._compiles, event, reason)
        return exe

    def _compile_with_sizes(self, treedef: TreeDef, keys: list[tuple], paths: list[str],
                            pattern: dynamic_shapes.Pattern, axes: set[tuple[int, int]]
                            ) -> tuple[Executable | None, str | None]:
        """The code for ``pattern`` (run-time sizes), or (None, why not); once the per-shape compile of the same
        call works, every shape is compiled on its own from then on (``cache_info`` says why). Sizes a trace
        needed as constants (``int(n)``) are constants in later compiles."""
        for _ in range(3):
            env = ShapeEnv(dict(pattern.hints))
            try:
                exe = self._compile(treedef, list(pattern.keys), paths, pattern, env)
            except Exception as exc:  # noqa: BLE001  (the per-shape compile that follows raises a real error again)
                if not env.specialized:
                    where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}"
                                        for f in reversed(traceback.extract_tb(exc.__traceback__)[-3:]))
                    return None, f"run-time sizes failed ({type(exc).__name__}: {exc}, at {where})"
                exe = None  # (a size the trace fixed can make later code ill-typed: again, with it constant)
            fixed = {(paths[i], a) for name, i, a in pattern.variables if name in env.specialized}
            self._fixed_axes |= fixed
            self._fixed_because.extend(f"{paths[i]} axis {a} is needed as a number at {env.fixed_at[name]}"
                                       for name, i, a in pattern.variables if name in env.specialized)
            if exe is not None:
                return exe, None
            # (another axis that shared a fixed variable gets a variable of its own)
            axes = axes - {(i, a) for name, i, a in pattern.variables if name in env.specialized}
            pattern = dynamic_shapes.make_pattern(keys, paths, axes, _c_hint)
            if not pattern.symbolic:
                break
        return None, "the code needs every changing size as a number: " + "; ".join(self._fixed_because)

    def cache_info(self) -> compile_log.CacheInfo:
        """The signatures compiled in this process (in order), with why each was needed and how long it took
        (``LANTERN_LOG_COMPILES=1`` prints the same as it happens)."""
        return compile_log.CacheInfo(len(self._compiles), tuple(e.signature for e in self._compiles),
                                     tuple(self._compiles))

    def _compile(self, treedef: TreeDef, keys: list[tuple], paths: list[str],
                 pattern: dynamic_shapes.Pattern | None = None, env: ShapeEnv | None = None) -> Executable:
        from . import trace_cache
        from .codegen import EmitOptions, build_native

        # Fingerprinted before tracing: what a fresh process sees before it would trace. With run-time
        # sizes, the sizes of this call are part of it (code generation's heuristics read them).
        fingerprint = trace_cache.fingerprint(
            self, treedef, keys if pattern is None else [*keys, ("hints", tuple(sorted(pattern.hints.items())))])
        if fingerprint is not None and trace_cache.mode() == "on":
            record = trace_cache.load(fingerprint)
            found = trace_cache.native_from_record(record) if record else None
            guards = trace_cache.guards_from_record(record) if found and pattern is not None else ()
            if found and guards is not None:
                trace_cache.STATS["hits"] += 1
                native, out_types, out_treedef = found
                return Executable(self.name, self.signature, treedef, keys, paths, None, None, out_treedef,
                                  out_types, native, retrace=lambda: self._trace_modules(treedef, keys, paths, pattern),
                                  pattern=dataclasses.replace(pattern, guards=guards) if pattern else None)
            trace_cache.STATS["misses"] += 1
        if pattern is not None:
            env = env or ShapeEnv(dict(pattern.hints))
        stages: dict[str, float] = {}
        with shape_env(env):
            start = time.perf_counter()
            builder, name, traced = self._trace(treedef, keys, paths)
            stages["trace"] = time.perf_counter() - start  # (gradients included: AD runs while tracing)
            if env is not None:
                env.frozen = True  # (code generation adds no guards)
            native, optimized = build_native(traced, self.name, EmitOptions(**self.options), stages)
        fn = traced.functions[name]
        exe = Executable(self.name, self.signature, treedef, keys, paths, traced, optimized,
                         builder.out_treedefs[name], list(fn.result_types or ()), native,
                         pattern=dataclasses.replace(pattern, guards=tuple(env.guards)) if pattern and env else None)
        exe.compile_stages = stages
        if fingerprint is not None:
            if trace_cache.mode() == "verify":
                trace_cache.check_same(fingerprint, exe)
            trace_cache.store(fingerprint, exe)
        return exe

    def _trace(self, treedef: TreeDef, keys: list[tuple], paths: list[str]) -> tuple[ModuleBuilder, str, Module]:
        builder = ModuleBuilder()
        specs: list[Any] = [TensorType(tuple(Size.var(d) if isinstance(d, str) else d for d in k[1]), k[2])
                            if k[0] == "array" else _Static(k[2]) for k in keys]
        name = trace_function(builder, self, treedef, specs, paths, entry=True)
        traced = builder.module(name)
        verify(traced)
        return builder, name, traced

    def _trace_modules(self, treedef: TreeDef, keys: list[tuple], paths: list[str],
                       pattern: dynamic_shapes.Pattern | None = None) -> tuple[Module, Module]:
        """(traced, prepared) IR of a signature whose code came from the trace cache (for ``.ir`` etc.)."""
        from .codegen import prepare
        env = ShapeEnv(dict(pattern.hints)) if pattern is not None else None
        with shape_env(env):
            traced = self._trace(treedef, keys, paths)[2]
            if env is not None:
                env.frozen = True
            return traced, prepare(traced, memory_plan=self.options["memory_plan"])

    # ---------------------------------------------------------- calls while tracing
    def _call_while_tracing(self, args: tuple, kwargs: dict) -> Any:
        return self.emit_call(self.trace_call(args, kwargs))

    def emit_call(self, call: TracedCall, checkpoint: bool = False) -> Any:
        """A ``Call`` of the traced ``call`` in the current frame (its arguments, then the values it captured;
        ``checkpoint``: see ``lantern.checkpoint``); its results in the function's result structure."""
        frame = current_frame()
        assert frame is not None
        fn = frame.builder.functions.get(call.name) or frame.builder.in_progress[call.name]
        if fn.result_types is None:
            raise UnknownRecursiveResult(call.name, user_location())
        outs = [Var(t, self.name) for t in fn.result_types]
        frame.add(Call(outs, loc=user_location(), fn=call.name, args=[t.var for t in call.tensors] + call.captured,
                       checkpoint=checkpoint))
        return unflatten(frame.builder.out_treedefs[call.name], [Tensor(v, frame) for v in outs])

    def trace_closure(self, args: tuple, kwargs: dict, variables: Sequence[int] = ()) -> TracedCall:
        """Trace this function for a call made while tracing, as a fresh IR function that may read the
        caller's staged values (``grad`` of a closure).

        Values of the enclosing function it reads become extra parameters after its own (they are
        constants for the gradient, as in JAX). The function is not cached by signature, since what
        it captures may differ from call to call. In the parameters at ``variables`` (``grad``'s
        ``argnums``), Python floats are staged float64 scalars rather than constants.
        """
        frame = current_frame()
        assert frame is not None
        builder = frame.builder
        bound = _bind(self.name, self.signature, args, kwargs)
        lifted = set(range(len(bound))) & {v % len(bound) for v in variables if -len(bound) <= v < len(bound)}
        bound = tuple(tree_map(_float_as_scalar, b) if k in lifted else b for k, b in enumerate(bound))
        with_paths, treedef = flatten(bound, paths=True)
        paths = [_path_name(p, self._param_names) for p, _ in with_paths]
        leaves = [leaf if isinstance(leaf, _STATIC_TYPES) else ops.asarray(leaf) for _, leaf in with_paths]
        tensors = [t for t in leaves if isinstance(t, Tensor)]
        name = builder.fresh_name(re.sub(r"\W", "_", self.name))
        builder.in_progress[name] = None  # type: ignore[assignment]  # reserve the name while tracing
        inner = Frame(builder, name, parent=frame)
        params = [Var(t.type, _c_hint(p)) for p, t in zip(paths, leaves) if isinstance(t, Tensor)]
        for p in params:
            name_var(p, p.hint)

        def arguments(param_tensors: list[Tensor]) -> tuple:
            it = iter(param_tensors)
            return unflatten(treedef, [next(it) if isinstance(t, Tensor) else t for t in leaves])
        loc = _definition(self)
        body = trace_callable(inner, params, self.call_bound, arguments, self.name, f"the result of {self.name}",
                              loc, name_locals=True)
        del builder.in_progress[name]
        builder.functions[name] = Function(name, body.block, tuple(body.types), loc)
        builder.out_treedefs[name] = body.treedef
        return TracedCall(name, bound, leaves, tensors, [outer for outer, _ in inner.captured])

    def trace_call(self, args: tuple, kwargs: dict) -> TracedCall:
        """Trace this function for the arguments of a call made while tracing (once per signature)."""
        frame = current_frame()
        assert frame is not None
        bound = _bind(self.name, self.signature, args, kwargs)
        with_paths, treedef = flatten(bound, paths=True)
        paths = [_path_name(p, self._param_names) for p, _ in with_paths]
        leaves: list[Any] = []
        specs: list[Any] = []
        for path, leaf in with_paths:
            if isinstance(leaf, _STATIC_TYPES):
                specs.append(_Static(leaf))
                leaves.append(leaf)
            else:
                t = ops.asarray(leaf)
                specs.append(t.type)
                leaves.append(t)
        name = trace_function(frame.builder, self, treedef, specs, paths, entry=False)
        return TracedCall(name, bound, leaves, [t for t in leaves if isinstance(t, Tensor)])


@dataclass
class TracedCall:
    """A staged function traced for one call: its IR function, the bound arguments and their leaves."""

    name: str
    bound: tuple
    leaves: list[Any]     # flat leaves of ``bound``: staged tensors and Python constants
    tensors: list[Tensor]  # the tensor leaves: the IR function's parameters, in order
    #: values of the calling function the traced one reads (:meth:`Staged.trace_closure`): its
    #: parameters after ``tensors``
    captured: list[Var] = field(default_factory=list)


def _float_as_scalar(leaf: Any) -> Any:
    """A Python float as a float64 scalar (a variable ``grad`` can differentiate), other leaves as they are."""
    return np.array(leaf, np.float64) if type(leaf) is float else leaf  # (an np.float64 is a float: static)


def _trace_cache_hits() -> int:
    from .trace_cache import STATS
    return STATS["hits"]


def _definition(staged: Staged) -> Loc:
    """Where the staged function is defined (the user's line, for a lambda or a builtin)."""
    code = getattr(inspect.unwrap(staged.fn), "__code__", None)
    return Loc(code.co_filename, code.co_firstlineno) if code else user_location()


@dataclass(frozen=True)
class _Static:
    value: Any


#: How often a recursive function may be traced while its result types settle (a base case
#: returning Python numbers may be widened by the recursive branch, e.g. 0.0 -> float64).
_MAX_TRACES = 4


def _forget(builder: ModuleBuilder, keys: set[Any]) -> None:
    """Drop the specializations ``keys`` (and their functions), so they are traced again."""
    for k in keys:
        fname = builder.specializations.pop(k)
        builder.functions.pop(fname, None)
        builder.out_treedefs.pop(fname, None)


def trace_function(builder: ModuleBuilder, staged: Staged, treedef: TreeDef, specs: list[Any],
                   paths: list[str], entry: bool) -> str:
    """Trace ``staged`` for one signature into ``builder`` (once); return the IR function's name."""
    key = (id(staged), treedef, tuple((s.value if isinstance(s, _Static) else s) for s in specs),
           tuple(type(s.value).__name__ for s in specs if isinstance(s, _Static)))
    existing = builder.specializations.get(key)
    if existing is not None:
        return existing
    name = builder.fresh_name(re.sub(r"\W", "_", staged.name))
    builder.specializations[key] = name
    loc = _definition(staged)
    fn = Function(name, Block(), None, loc)
    builder.in_progress[name] = fn
    staged.trace_count += 1
    prev: tuple | None = None
    for attempt in range(_MAX_TRACES):
        # Functions first traced during this attempt may have typed a recursive call of this
        # one from a placeholder; they are traced again whenever this attempt is redone.
        before = set(builder.specializations)
        builder.needs_retrace.discard(name)
        params = [Var(s, _c_hint(p)) for s, p in zip(specs, paths) if isinstance(s, TensorType)]
        for p in params:
            name_var(p, p.hint)  # named after the argument

        def arguments(tensors: list[Tensor]) -> tuple:
            it = iter(tensors)
            return unflatten(treedef, [s.value if isinstance(s, _Static) else next(it) for s in specs])
        try:  # (errors in the results point at the function: the return line is gone)
            body = trace_callable(Frame(builder, name), params, staged.call_bound, arguments, staged.name,
                                  f"the result of {staged.name}", loc, name_locals=True)
        except UnknownRecursiveResult as exc:
            _forget(builder, set(builder.specializations) - before)
            if exc.function_name != name:
                # A function further out is still being traced: its cond handles this.
                _forget(builder, {key})
                del builder.in_progress[name]
                raise
            raise with_location(TraceError, f"the recursive function {staged.name} calls itself before its "
                                "result type is known: put the recursive call inside a lantern.cond branch "
                                "whose other branch is a base case", exc.loc) from None
        block, out_td = body.block, body.treedef
        result_types = tuple(t.type for t in body.leaves)
        # Recursive calls in this attempt were typed as `prev` (attempt 0: from the base case
        # only, and marked for a retrace); stop once a trace reproduces the types it assumed.
        retrace = name in builder.needs_retrace if attempt == 0 else (out_td, result_types) != prev
        prev = (out_td, result_types)
        fn.body, fn.result_types = block, result_types
        builder.out_treedefs[name] = out_td
        if not retrace:
            break
        _forget(builder, set(builder.specializations) - before)
    else:
        raise with_location(DTypeError, f"recursive function {staged.name}: its result types do not settle; "
                            f"the last trace gave {[str(t) for t in result_types]} ({out_td}) after assuming "
                            "different ones for its recursive calls", loc)
    builder.needs_retrace.discard(name)
    del builder.in_progress[name]
    builder.functions[name] = fn
    return name


def _lanterns_own(fn: Callable[..., Any]) -> bool:
    """A function of lantern's own code (grad's wrappers, say), which is never rewritten."""
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_filename.startswith(os.path.dirname(os.path.abspath(__file__)) + os.sep) \
        and not python_control_flow_rewrite.written_as_users_write(code.co_filename)


def stage(fn: Callable[..., Any] | None = None, *, name: str | None = None, check_indices: bool | None = None,
          check_finite: bool | None = None, max_depth: int | None = None, python_control_flow: bool = True,
          dynamic: dynamic_shapes.DynamicOption = None, memory_plan: bool | None = None) -> Any:
    """Decorator: trace ``fn`` per signature, compile it to native code, and call that.

    ``@lantern.stage`` or ``@lantern.stage(name="...", ...)``. The result has ``.lower(*args)``
    for inspection and is itself callable with NumPy arrays. Checks compiled into the C:

    * ``check_indices`` (default on, ``LANTERN_CHECK_INDICES``): staged indices are checked
      (``OutOfBoundsError``); off saves a compare per index, and a bad index is then undefined.
    * ``check_finite`` (default off, ``LANTERN_CHECK_FINITE``): the first NaN/Inf that an op
      (forward or gradient) produces raises ``NonFiniteError`` naming the op and source line.
    * ``max_depth`` (default 0, ``LANTERN_MAX_DEPTH``): recursion deeper than this raises
      ``RecursionDepthError``; 0 leaves only the C stack guard.
    * ``memory_plan`` (default on, ``LANTERN_MEMORY_PLAN``): each intermediate buffer is freed after its
      last use, for later values to reuse (``.lower(...).memory_plan`` prints the plan); off, buffers
      live until their function returns.

    Each option changes the generated C, so each setting has its own compile-cache entry.

    ``python_control_flow`` (default on): Python ``if``/``while``/``for`` (and ``a if c else b``, ``and``,
    ``or``, ``not``) in ``fn`` run as Python on Python values and become ``cond``/``while_loop``/
    ``fori_loop`` on staged ones (see README, "Control flow"); ``False`` leaves ``fn`` as written.

    ``dynamic``: which array dimensions are sizes known only at run time, so one compile serves every
    size of them (see ``lantern/dynamic_shapes.py``): ``None`` (default) makes a dimension run-time once
    calls differ in it, ``True`` every dimension from the first call, ``{"words": 0, "x": (0, 1)}`` those
    axes of those arguments, ``False`` none (every shape is compiled on its own).
    """
    options = stage_options(check_indices, check_finite, max_depth, memory_plan)
    dynamic = dynamic_shapes.check_option(dynamic)
    if fn is None:
        return lambda f: Staged(f, name, options, python_control_flow, dynamic)
    if isinstance(fn, Staged) and name is None and python_control_flow == fn.python_control_flow and all(
            v is None for v in (check_indices, check_finite, max_depth, dynamic, memory_plan)):
        return fn
    return Staged(fn.python_fn if isinstance(fn, Staged) else fn, name, options, python_control_flow, dynamic)
