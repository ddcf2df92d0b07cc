"""IR nodes.

The IR is in A-normal form: every intermediate value is a :class:`Var` defined once by
one statement. Control flow is structured: statements may hold nested :class:`Block`
objects (the branches of :class:`If`, the body of :class:`Loop`, ...). A block may read
variables of the blocks that enclose it (lexical scope); a :class:`Function` body may
not (functions are closed, so they can be called recursively from anywhere).

After reverse-mode AD the IR also holds :class:`Lambda` (a continuation with free
variables), :class:`Apply` (calling one) and :class:`Accumulate` (``x_bar += v``, the
one in-place update).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..source import UNKNOWN, Loc
from .types import FnType, TensorType, Type

_ids = itertools.count(1)


class Var:
    """A named, typed value. ``hint`` is a readable prefix for printed and C names."""

    __slots__ = ("id", "type", "hint")

    def __init__(self, type: Type, hint: str = "t"):
        self.id = next(_ids)
        self.type = type
        self.hint = hint

    @property
    def name(self) -> str:
        return f"{self.hint}_{self.id}"

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass(eq=False)
class Block:
    """Parameters, a list of statements, and the variables it yields."""

    params: list[Var] = field(default_factory=list)
    stmts: list[Stmt] = field(default_factory=list)
    results: list[Var] = field(default_factory=list)


@dataclass(eq=False)
class Stmt:
    """Base class: ``outs`` are the variables the statement defines; ``loc`` the user line."""

    outs: list[Var]
    loc: Loc = field(default=UNKNOWN, kw_only=True)

    def operands(self) -> list[Var]:
        """Variables read directly by this statement (not by its nested blocks)."""
        return []

    def blocks(self) -> list[Block]:
        return []


@dataclass(eq=False)
class Op(Stmt):
    """A primitive operation (see :mod:`lantern.ir.primitives`)."""

    prim: str = ""
    args: list[Var] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    def operands(self) -> list[Var]:
        return list(self.args)


@dataclass(eq=False)
class If(Stmt):
    """``outs = then_block() if pred else else_block()``; branches take no parameters."""

    pred: Var = None  # type: ignore[assignment]
    then_block: Block = field(default_factory=Block)
    else_block: Block = field(default_factory=Block)

    def operands(self) -> list[Var]:
        return [self.pred]

    def blocks(self) -> list[Block]:
        return [self.then_block, self.else_block]


@dataclass(eq=False)
class Loop(Stmt):
    """Counted loop ``for i in range(lo, hi)``; body params are ``[i, *carried]``."""

    lo: Var = None  # type: ignore[assignment]
    hi: Var = None  # type: ignore[assignment]
    init: list[Var] = field(default_factory=list)
    body: Block = field(default_factory=Block)

    def operands(self) -> list[Var]:
        return [self.lo, self.hi, *self.init]

    def blocks(self) -> list[Block]:
        return [self.body]


@dataclass(eq=False)
class While(Stmt):
    """``while cond(carried): carried = body(carried)``; both blocks take the carried values."""

    init: list[Var] = field(default_factory=list)
    cond: Block = field(default_factory=Block)
    body: Block = field(default_factory=Block)

    def operands(self) -> list[Var]:
        return list(self.init)

    def blocks(self) -> list[Block]:
        return [self.cond, self.body]


@dataclass(eq=False)
class Fused(Stmt):
    """Elementwise statements of one output shape, run as a single loop.

    Produced by the fusion pass. ``body.params`` are bound to ``inputs``; ``body.results``
    are the values stored to memory, bound to ``outs``. Everything else stays a scalar
    temporary in the generated loop.
    """

    inputs: list[Var] = field(default_factory=list)
    body: Block = field(default_factory=Block)

    def operands(self) -> list[Var]:
        return list(self.inputs)

    def blocks(self) -> list[Block]:
        return [self.body]


@dataclass(eq=False)
class Call(Stmt):
    """Call of a module-level :class:`Function` by name (may be recursive).

    ``checkpoint`` (``lantern.checkpoint``): reverse mode keeps none of the callee's intermediates for the
    backward part; it calls the callee again there (forward, then backward). Until AD the call is not
    inlined; AD turns it into ordinary calls.
    """

    fn: str = ""
    args: list[Var] = field(default_factory=list)
    checkpoint: bool = False

    def operands(self) -> list[Var]:
        return list(self.args)


@dataclass(eq=False)
class Lambda(Stmt):
    """Defines ``outs[0]``, a function value (continuation) that may read free variables.

    The body may apply ``outs[0]`` itself (letrec): that is how a loop whose trip count is
    decided at run time is written in continuation-passing style.
    """

    body: Block = field(default_factory=Block)

    def blocks(self) -> list[Block]:
        return [self.body]


@dataclass(eq=False)
class Apply(Stmt):
    """Calls a function value: ``outs = fn(*args)``."""

    fn: Var = None  # type: ignore[assignment]
    args: list[Var] = field(default_factory=list)

    def operands(self) -> list[Var]:
        return [self.fn, *self.args]


@dataclass(eq=False)
class Accumulate(Stmt):
    """In-place ``target += value``; defines nothing.

    With ``index`` (int64, a scalar or a vector of K positions) it is
    ``target[index] += value`` along axis 0: ``value`` has the shape of one row of
    ``target``, or K rows, and repeated positions add up. Without ``index``, ``value``
    has exactly the shape of ``target``.

    ``row_store``: a loop's per-iteration output (``lantern.scan``'s ``ys``): row ``index`` of a
    zero-filled stack, written once. AD differentiates it as a store (the row's adjoint is read
    back) and does not repeat it where a loop's backward part recomputes the body.
    """

    target: Var = None  # type: ignore[assignment]
    value: Var = None  # type: ignore[assignment]
    index: Var | None = None
    row_store: bool = False

    def operands(self) -> list[Var]:
        return [self.target, self.value] + ([self.index] if self.index is not None else [])


@dataclass(eq=False)
class Function:
    """A closed, named function. ``body.params`` are its parameters."""

    name: str
    body: Block
    result_types: tuple[Type, ...] | None = None
    loc: Loc = UNKNOWN

    @property
    def param_types(self) -> tuple[Type, ...]:
        return tuple(p.type for p in self.body.params)

    @property
    def type(self) -> FnType:
        return FnType(self.param_types, tuple(self.result_types or ()))


@dataclass(eq=False)
class Module:
    """Functions by name; ``entry`` is the one the host calls."""

    functions: dict[str, Function]
    entry: str

    @property
    def entry_function(self) -> Function:
        return self.functions[self.entry]


def walk_stmts(block: Block) -> Iterator[Stmt]:
    """Every statement in ``block`` and its nested blocks, outer before inner."""
    for stmt in block.stmts:
        yield stmt
        for inner in stmt.blocks():
            yield from walk_stmts(inner)


def free_vars(block: Block) -> list[Var]:
    """Variables read in ``block`` (or nested blocks) but defined outside it, in first-use order."""
    defined: set[int] = set()
    seen: dict[int, Var] = {}

    def visit(b: Block) -> None:
        defined.update(p.id for p in b.params)
        for stmt in b.stmts:
            for v in stmt.operands():
                if v.id not in defined:
                    seen.setdefault(v.id, v)
            # Outputs are defined before the nested blocks are visited: a Lambda is letrec (a
            # loop continuation applies itself), so its own name inside its body is not free.
            defined.update(o.id for o in stmt.outs)
            for inner in stmt.blocks():
                visit(inner)
        for v in b.results:
            if v.id not in defined:
                seen.setdefault(v.id, v)

    visit(block)
    return list(seen.values())


def is_tensor(v: Var) -> bool:
    return isinstance(v.type, TensorType)
