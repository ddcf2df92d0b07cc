"""Trace state: the module being built, the open blocks, and statement emission.

A :class:`Frame` is one function being traced. Its ``blocks`` stack is the lexical
scope: statements go to the innermost block, and a value may be used only while the
block that defined it is open (so a value computed inside a ``cond`` branch cannot
leak out of it).
"""
from __future__ import annotations

import contextlib
import keyword
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from .errors import DTypeError, LanternError, ShapeError, TraceError
from .ir import primitives
from .ir.nodes import Block, Function, Module, Op, Stmt, Var
from .ir.rewrite import with_operands
from .ir.types import TensorType
from .source import Loc, error_location, user_location

E = TypeVar("E", bound=LanternError)

#: The largest tensor a staged op may produce: byte counts and flat indices stay far from
#: overflowing in the generated C (int64 indices, size_t allocation sizes rounded up).
MAX_TENSOR_BYTES = 2**62


def with_location(exc_type: type[E], message: str, loc: Loc | None = None) -> E:
    """An exception whose message ends with the user's file:line (and the library line, for an error
    inside ``lantern.nn`` and the like)."""
    return exc_type(f"{message} (at {error_location(loc or user_location())})")


class ModuleBuilder:
    """Collects the functions of one staged program."""

    def __init__(self) -> None:
        self.functions: dict[str, Function] = {}
        self.specializations: dict[Any, str] = {}  # (staged function, signature) -> function name
        self.in_progress: dict[str, Function] = {}
        self.needs_retrace: set[str] = set()
        self.out_treedefs: dict[str, Any] = {}  # function name -> structure of its results

    def fresh_name(self, base: str) -> str:
        name, n = base, 1
        while name in self.functions or name in self.in_progress:
            n += 1
            name = f"{base}_{n}"
        return name

    def module(self, entry: str) -> Module:
        return Module(dict(self.functions), entry)


class Frame:
    """One function under trace."""

    def __init__(self, builder: ModuleBuilder, function_name: str, parent: Frame | None = None,
                 user_arguments: bool = True):
        self.builder = builder
        #: the parameters are the user's arguments (named in shape errors); not for an eager op's wrapper
        self.user_arguments = user_arguments
        self.function_name = function_name
        #: the frame this function is traced inside, when it may read that frame's values
        #: (a function handed to grad); each value read becomes an extra parameter
        self.parent = parent
        self.captured: list[tuple[Var, Var]] = []  # (value in the parent, parameter here)
        self._capture_of: dict[int, Var] = {}
        self.blocks: list[Block] = []
        self.owner: dict[int, Block] = {}  # var id -> defining block
        #: while set, statements record this location instead of the caller's line
        #: (code a transformation emits belongs to the statement it came from)
        self.loc_override: Loc | None = None

    @contextlib.contextmanager
    def block(self, block: Block) -> Iterator[Block]:
        self.blocks.append(block)
        for p in block.params:
            self.owner[p.id] = block
        try:
            yield block
        finally:
            self.blocks.pop()

    def capture(self, var: Var) -> Var | None:
        """The parameter standing here for ``var`` of an enclosing frame (made on first use), or None."""
        if var.id in self._capture_of:
            return self._capture_of[var.id]
        parent = self.parent
        if parent is None:
            return None
        owner = parent.owner.get(var.id)
        outer = var if owner is not None and any(owner is b for b in parent.blocks) else parent.capture(var)
        if outer is None:
            return None
        param = Var(var.type, var.hint)
        self.blocks[0].params.append(param)
        self.owner[param.id] = self.blocks[0]
        self._capture_of[var.id] = param
        self.captured.append((outer, param))
        return param

    def adopt(self, tensor: Any) -> Any:
        """``tensor`` as a value of this frame: itself, or the capture of an enclosing frame's value."""
        if tensor.frame is self:
            return tensor
        param = self.capture(tensor.var)
        return tensor if param is None else type(tensor)(param, self)

    def check_in_scope(self, var: Var, what: str, loc: Loc | None = None) -> None:
        owner = self.owner.get(var.id)
        if owner is None:
            raise with_location(TraceError, f"{what}: %{var.name} belongs to another trace (a value leaked from an "
                                "earlier staged call or from a different staged function); pass it as an argument",
                                loc)
        if not any(owner is b for b in self.blocks):
            raise with_location(TraceError, f"{what}: a value computed inside a lantern.cond branch or loop body "
                                "is used outside it; return it from there instead", loc)

    def check_result(self, value: Any, what: str, loc: Loc | None = None) -> None:
        """``value`` (a staged Tensor) may be yielded by the innermost open block."""
        if getattr(value, "frame", self) is not self:
            raise with_location(TraceError, f"{what}: {value!r} belongs to another trace (a value leaked from an "
                                "earlier staged call or from a different staged function); pass it as an argument",
                                loc)
        self.check_in_scope(value.var, what, loc)

    def add(self, stmt: Stmt) -> None:
        captured = {v.id: p for v in stmt.operands() if v.id not in self.owner
                    for p in [self.capture(v)] if p is not None}
        if captured:
            stmt = with_operands(stmt, lambda v: captured.get(v.id, v))
        for v in stmt.operands():
            self.check_in_scope(v, type(stmt).__name__.lower())
        self.blocks[-1].stmts.append(stmt)
        for o in stmt.outs:
            self.owner[o.id] = self.blocks[-1]

    def _arguments_among(self, args: list[Var], exc: Exception) -> str:
        """For a shape error: which operands are the function's own arguments (by name)."""
        params = {p.id for p in self.blocks[0].params} if self.blocks and self.user_arguments \
            and isinstance(exc, ShapeError) else set()
        named = list(dict.fromkeys(a.hint for a in args if a.id in params))
        if not named:
            return ""
        return f"; operand{'s' if len(named) > 1 else ''} from argument{'s' if len(named) > 1 else ''} " + \
            " and ".join(named)

    def emit(self, prim: str, args: list[Var], attrs: dict[str, Any] | None = None, hint: str | None = None) -> Var:
        """Append ``prim(*args, **attrs)`` to the current block and return its result variable."""
        attrs = attrs or {}
        loc = self.loc_override or user_location()
        try:
            out_type = primitives.infer(prim, [a.type for a in args], attrs)
        except LanternError as exc:
            raise with_location(type(exc), str(exc) + self._arguments_among(args, exc), loc) from None
        if any(d < 0 for d in out_type.shape if isinstance(d, int)):
            raise with_location(ShapeError, f"{prim}: negative dimension in the result shape {out_type.shape}", loc)
        # its byte size would overflow the C code's size_t/int64 arithmetic (with run-time sizes, the
        # allocation fails at run time instead: no guard on every size)
        if isinstance(out_type.nbytes, int) and out_type.nbytes > MAX_TENSOR_BYTES:
            raise with_location(ShapeError, f"{prim}: the result {out_type} would take {out_type.nbytes} bytes; "
                                f"a staged tensor is limited to {MAX_TENSOR_BYTES} (2**62) bytes", loc)
        out = Var(out_type, hint or prim)
        self.add(Op([out], loc=loc, prim=prim, args=list(args), attrs=attrs))
        return out


_state = threading.local()


def current_frame() -> Frame | None:
    stack = getattr(_state, "frames", None)
    return stack[-1] if stack else None


def require_frame(what: str) -> Frame:
    frame = current_frame()
    if frame is None:
        raise with_location(TraceError, f"{what} can only be used inside a function staged with @lantern.stage")
    return frame


@contextlib.contextmanager
def tracing(frame: Frame) -> Iterator[Frame]:
    stack = getattr(_state, "frames", None)
    if stack is None:
        stack = _state.frames = []
    stack.append(frame)
    try:
        yield frame
    finally:
        stack.pop()


def is_tracing() -> bool:
    return current_frame() is not None


class Pending:
    """A value not assigned yet: the value a ``return`` inside a loop hands to the code after the loop
    (``lantern/python_control_flow.py``) before any iteration returned. In a staged branch or loop it takes
    the type of the value the other branch or the loop body assigns, with zeros where none was assigned."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<lantern: no value yet>"


PENDING = Pending()


@dataclass
class TracedBody:
    """A Python callable traced into a block: the block, the structure of what it returned, its flat
    results as staged tensors, and which of them were Python numbers (weakly typed, as in NumPy)."""

    block: Block
    treedef: Any
    leaves: list[Any]
    weak: list[bool]
    #: results that were :data:`PENDING` (their leaf is a placeholder until a type is known)
    pending: list[bool] = field(default_factory=list)

    @property
    def types(self) -> list[TensorType]:
        return [t.type for t in self.leaves]


def trace_callable(frame: Frame, params: list[Var], fn: Callable[..., Any], make_args: Callable[[list[Any]], tuple],
                   what: str, result_what: str, loc: Loc | None = None, name_locals: bool = False) -> TracedBody:
    """Trace ``fn(*make_args(tensors of params))`` into a new block of ``frame`` (the current frame while
    it runs): the one way lantern traces a Python callable, for staged functions, functions given to
    ``grad`` and control-flow bodies. Results may be tensors (of this frame, or captured from an
    enclosing one), or numbers and arrays (staged as constants); ``what`` and ``result_what`` name the
    callable and its results in errors. ``name_locals``: name staged values after the callable's locals."""
    from . import ops
    from .tensor import Tensor
    from .tree import flatten
    block = Block(params=params)
    with tracing(frame), frame.block(block):
        args = make_args([Tensor(p, frame) for p in params])
        with user_variable_names() if name_locals else contextlib.nullcontext():
            out = fn(*args)
        leaves, treedef = flatten(out)
        tensors, weak, pending = [], [], []
        for x in leaves:
            pending.append(x is PENDING)
            if x is PENDING:  # a placeholder: the caller (cond, a loop) gives it a type
                x = 0.0
            elif not isinstance(x, (Tensor, bool, int, float, np.ndarray, np.generic)):
                raise with_location(DTypeError, f"{what} returned a {type(x).__name__}; return tensors, numbers "
                                    "or nested tuples/lists/dicts of them", loc)
            if isinstance(x, Tensor):
                x = frame.adopt(x)  # a value of an enclosing function (grad's closures) is captured
                frame.check_result(x, result_what, loc)
            weak.append(isinstance(x, (bool, int, float)) and not isinstance(x, np.generic))
            tensors.append(ops.asarray(x))
        block.results = [t.var for t in tensors]
    return TracedBody(block, treedef, tensors, weak, pending)


def new_var(type_: TensorType, hint: str = "t") -> Var:
    return Var(type_, hint)


# ---------------------------------------------------------------- readable names

_named: set[int] = set()  # ids of variables already named after the user's code


def name_var(var: Var, name: str) -> None:
    """Give ``var`` a name taken from the user's code (only the first name sticks)."""
    if var.id not in _named and name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_"):
        var.hint = name
        _named.add(var.id)


@contextlib.contextmanager
def user_variable_names() -> Iterator[None]:
    """While user code is traced, name staged values after the local variables holding them.

    When a user function returns, each of its locals that holds a staged tensor lends its
    name to the tensor's variable, so the IR and the C say ``h_12`` rather than ``tanh_12``.
    """
    from .source import _internal_prefixes
    from .tensor import Tensor

    previous = sys.getprofile()
    internal = _internal_prefixes()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "return" and not frame.f_code.co_filename.startswith(internal):
            for local, value in frame.f_locals.items():
                if isinstance(value, Tensor):
                    name_var(value.var, local)
        if previous is not None:
            previous(frame, event, arg)

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)
