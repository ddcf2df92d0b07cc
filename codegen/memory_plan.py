"""The memory plan: when each buffer of a prepared module dies, and which results take a dying operand's buffer.

A buffer is freed after the last statement of its block that reads it (``lt_free``: the arena reuses it
for later values), not when its function returns. What a statement reads includes its nested blocks
(a value read in a loop's body lives until the loop ends) and, for a continuation (``Lambda``), what
the continuation captures: a captured value lives until the last statement that reads the
continuation (the call that runs it), since the continuation reads it through its environment. So a
forward value that the backward part reads lives until that read, and one it does not read dies at
its last forward use: the CPS backward part keeps only what its VJP rules use.

Views (a reshape, ``check_range``: ``Primitive.view``) share their operand's buffer; the emitter frees
a buffer once it and all its views are dead. A block's results outlive the block (they are copied or
already computed where the block's statement puts them), so the block never frees them.

In place: the result of an elementwise statement with one output may take the buffer of an operand
of its type that dies at that statement (each element is read before it is written, in the same
iteration). The emitter applies it when the operand's buffer is its own (not a parameter, a view or
a continuation's capture).

:func:`format_memory_plan` prints each function's buffers with their lifetimes and the peak of what
its own statements hold at once (``Executable.memory_plan``).
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from lantern.ir.analysis import reads
from lantern.ir.interpret import Env, Interpreter, interpret
from lantern.ir.nodes import Block, Fused, If, Lambda, Module, Op, Stmt, Var, free_vars
from lantern.ir.primitives import ELEMENTWISE, PRIMITIVES
from lantern.ir.types import TensorType


#: Buffers smaller than this are not freed early (they go with their frame): an ``lt_free`` costs more
#: than the memory is worth (a char-RNN step of 100-float vectors ran 10 % slower freeing them).
#: ``LANTERN_MIN_FREED_BYTES`` sets it (the tests set 0, so that small programs free too).
MIN_FREED_BYTES = 16 << 10


def min_freed_bytes() -> int:
    value = os.environ.get("LANTERN_MIN_FREED_BYTES", "").strip()
    return int(value) if value.isdigit() else MIN_FREED_BYTES


def worth_freeing(nbytes: int | str) -> bool:
    """Whether a buffer of ``nbytes`` (a C expression when known only at run time) is freed after its last use."""
    return not isinstance(nbytes, int) or nbytes >= min_freed_bytes()


@dataclass
class MemoryPlan:
    """Per statement (by ``id``), the values of its block whose last reader it is; per block (by ``id``), its
    results defined in it (an ``if``'s branch frees them after copying them out); in-place results."""

    dies_after: dict[int, list[Var]] = field(default_factory=dict)
    results_of: dict[int, list[Var]] = field(default_factory=dict)
    reuses: dict[int, Var] = field(default_factory=dict)  # result id -> the dying operand whose buffer it takes


def is_view(stmt: Stmt) -> bool:
    """A statement whose result is its operand's memory (no buffer of its own)."""
    return isinstance(stmt, Op) and PRIMITIVES[stmt.prim].view


def plan_memory(module: Module, no_buffer: Callable[[Var], bool]) -> MemoryPlan:
    """The plan for ``module``. ``no_buffer(v)``: the lowering puts ``v`` somewhere else (a destination, a
    buffer it is added to, a reduction's loop), so it cannot take another value's buffer."""
    plan = MemoryPlan()
    for fn in module.functions.values():
        _plan_block(fn.body, plan, no_buffer)
    return plan


def _plan_block(block: Block, plan: MemoryPlan, no_buffer: Callable[[Var], bool]) -> None:
    captures: dict[int, list[Var]] = {}
    last: dict[int, int] = {}
    defined: dict[int, tuple[Var, int]] = {}
    for i, s in enumerate(block.stmts):
        if isinstance(s, Lambda):
            captures[s.outs[0].id] = free_vars(s.body)
        for v in _reads_through_continuations(s, captures):
            last[v] = i
        for o in s.outs:
            defined[o.id] = (o, i)
    results = {r.id for r in block.results}
    plan.results_of[id(block)] = [defined[r][0] for r in dict.fromkeys(results) if r in defined]
    for vid, (v, i) in defined.items():
        if vid not in results:
            plan.dies_after.setdefault(id(block.stmts[max(i, last.get(vid, i))]), []).append(v)
    for i, s in enumerate(block.stmts):
        _in_place(s, i, last, defined, results, plan, no_buffer)
        if not isinstance(s, Fused):
            for inner in s.blocks():
                _plan_block(inner, plan, no_buffer)


def _reads_through_continuations(s: Stmt, captures: dict[int, list[Var]]) -> set[int]:
    """Ids ``s`` reads, with what each continuation it reads (or that one captures) captures."""
    seen: set[int] = set()
    todo = [v for v in reads(s)]
    while todo:
        v = todo.pop()
        if v.id in seen:
            continue
        seen.add(v.id)
        todo.extend(captures.get(v.id, ()))
    return seen


def _in_place(s: Stmt, i: int, last: dict[int, int], defined: dict[int, tuple[Var, int]], results: set[int],
              plan: MemoryPlan, no_buffer: Callable[[Var], bool]) -> None:
    if isinstance(s, Fused):
        one_output = len(s.outs) == 1 and s.body.results[0] is s.body.stmts[-1].outs[0]
    else:
        one_output = (isinstance(s, Op) and PRIMITIVES[s.prim].kind == ELEMENTWISE and s.prim != "fill"
                      and len(s.outs) == 1)
    if not one_output:
        return
    out = s.outs[0]
    if not isinstance(out.type, TensorType) or not out.type.shape or no_buffer(out):
        return
    for x in s.operands():
        if (x.type == out.type and x.id in defined and defined[x.id][1] < i and last.get(x.id) == i
                and x.id not in results and not no_buffer(x)):
            plan.reuses[out.id] = x
            return


class Buffers:
    """The buffers a C function owns, with their views: the rule both the emitter (which frees) and
    :func:`format_memory_plan` (which counts) follow. ``info`` is what the caller keeps per buffer."""

    def __init__(self) -> None:
        self.owned: dict[int, Any] = {}         # owner id -> info
        self.root: dict[int, int] = {}          # view id -> owner id
        self.members: dict[int, set[int]] = {}  # owner id -> the live ids of it and its views

    def make(self, v: Var, info: Any) -> None:
        self.owned[v.id] = info
        self.members[v.id] = {v.id}

    def view(self, v: Var, of: Var) -> None:
        r = self.root.get(of.id, of.id)
        if r in self.members:
            self.root[v.id] = r
            self.members[r].add(v.id)

    def take(self, v: Var, x: Var) -> Any:
        """``v`` takes ``x``'s buffer if ``x`` owns one with no view: its info, else None."""
        if self.members.get(x.id) != {x.id}:
            return None
        del self.members[x.id]
        info = self.owned.pop(x.id)
        self.make(v, info)
        return info

    def dead(self, v: Var) -> Any:
        """``v`` is dead: the info of the buffer this frees (the last of it and its views), else None."""
        r = self.root.pop(v.id, v.id)
        m = self.members.get(r)
        if m is None:
            return None
        m.discard(v.id)
        if m:
            return None
        del self.members[r]
        return self.owned.pop(r)


def buffer_bytes(v: Var) -> int | str | None:
    """The bytes of ``v``'s buffer if it has one (an array), else None."""
    t = v.type
    if isinstance(t, TensorType) and t.shape:
        return t.nbytes
    return None


def format_memory_plan(module: Module, plan: MemoryPlan, allocates: Callable[[Stmt, Var], bool],
                       names: Callable[[Var], str] | None = None) -> str:
    """Per function (and continuation): each buffer its statements make, with its bytes and the statements
    (numbered in its block, nested blocks as ``3.0.2``) where it is made and dies, then the peak of what
    is live at once (buffers of nested blocks counted while their statement runs). ``allocates(s, v)``:
    whether ``v``, made by ``s``, gets a buffer of its own. A size known only at run time counts as 0
    and makes the peak unknown; buffers below :func:`min_freed_bytes` count until their frame ends."""
    name = names or (lambda v: v.name)
    lines: list[str] = []

    def block(b: Block, where: str, depth: int) -> int | None:
        """Print ``b``'s buffers; the peak bytes its statements hold at once (None: a run-time size)."""
        buffers, live, peak, unknown = Buffers(), 0, 0, False
        deaths = {v.id: i for i, s in enumerate(b.stmts) for v in plan.dies_after.get(id(s), ())}
        for i, s in enumerate(b.stmts):
            at = f"{where}{i}"
            for o in s.outs:
                size = buffer_bytes(o)
                if is_view(s):
                    buffers.view(o, s.operands()[0])
                if size is None or not allocates(s, o):
                    continue
                death = f"dies after {where}{deaths[o.id]}" if o.id in deaths else "a result of its block"
                x = plan.reuses.get(o.id)
                if x is not None and buffers.take(o, x) is not None:
                    lines.append(f"{'  ' * depth}  %{name(o)}: {o.type}, in the buffer of %{name(x)}, made at {at}, "
                                 f"{death}")
                    continue
                unknown |= not isinstance(size, int)
                buffers.make(o, size if isinstance(size, int) else 0)
                live += buffers.owned[o.id]
                lines.append(f"{'  ' * depth}  %{name(o)}: {o.type} {size} B, made at {at}, {death}")
            inner = 0
            if not isinstance(s, (Fused, Lambda)):  # (a continuation's frame is printed as its own function)
                for k, nb in enumerate(s.blocks()):
                    sub = block(nb, f"{at}.{k}.", depth + 1)
                    inner = max(inner, sub or 0)
                    unknown |= sub is None
            peak = max(peak, live + inner)
            for v in plan.dies_after.get(id(s), ()):
                freed = buffers.dead(v) or 0
                live -= freed if worth_freeing(freed) else 0
        return None if unknown else peak

    def function(title: str, b: Block) -> None:
        lines.append(f"{title}:")
        peak = block(b, "", 0)
        lines.append(f"  peak: {'depends on run-time sizes' if peak is None else f'{peak} B'}")
        for s in b.stmts:
            _continuations(s, function)

    for fn in module.functions.values():
        function(f"@{fn.name}", fn.body)
    return "\n".join(lines)


def _continuations(s: Stmt, function: Callable[[str, Block], None]) -> None:
    if isinstance(s, Lambda):
        function(f"continuation %{s.outs[0].name}", s.body)  # (which prints the continuations inside it)
    elif not isinstance(s, Fused):
        for b in s.blocks():
            for inner in b.stmts:
                _continuations(inner, function)


# ------------------------------------------------------------------ checking a plan by running it

class PlanViolation(AssertionError):
    """A value was read after the statement where the memory plan frees it."""


class _Freed:
    def __init__(self, where: Stmt):
        self.where = where


class _PlanChecker(Interpreter):
    """The reference interpreter, with each value replaced by a marker where the plan frees it (and a
    continuation reading its frame's values as they are when it runs, not as they were when it was
    made): any later read of a freed value raises :class:`PlanViolation`."""

    def __init__(self, module: Module, sizes: dict[str, int], plan: MemoryPlan):
        super().__init__(module, sizes)
        self.plan = plan

    def stmt(self, stmt: Stmt, env: Env) -> list[Any]:
        for v in stmt.operands():
            self._check(v, env, stmt)
        if isinstance(stmt, Lambda):
            def closure(*args: Any) -> list[Any]:
                return self.block(stmt.body, args, collections.ChainMap({}, env))  # type: ignore[arg-type]
            env[stmt.outs[0].id] = closure  # letrec: the body may call itself
            return [closure]
        values = super().stmt(stmt, env)
        if isinstance(stmt, If):  # a branch's results are freed once copied out
            taken = stmt.then_block if bool(env[stmt.pred.id]) else stmt.else_block
            for v in self.plan.results_of[id(taken)]:
                env[v.id] = _Freed(stmt)
        return values

    def block(self, block: Block, args: Sequence[Any], env: Env) -> list[Any]:
        results = super().block(block, args, env)
        for r, value in zip(block.results, results):
            if isinstance(value, _Freed):
                raise PlanViolation(f"%{r.name} is a result of its block but was freed after {value.where}")
        return results

    def after(self, stmt: Stmt, env: Env) -> None:
        for v in self.plan.dies_after.get(id(stmt), ()):
            env[v.id] = _Freed(stmt)

    @staticmethod
    def _check(v: Var, env: Env, stmt: Stmt) -> None:
        value = env.get(v.id)
        if isinstance(value, _Freed):
            raise PlanViolation(f"%{v.name} is read by {type(stmt).__name__} at {stmt.loc} after the memory plan "
                                f"freed it (after {type(value.where).__name__} at {value.where.loc})")


def check_plan_by_running(module: Module, plan: MemoryPlan, args: Sequence[Any]) -> list[np.ndarray]:
    """Run ``module`` on ``args`` in the reference interpreter with every value erased where ``plan`` frees
    it; its results (equal to the plain interpreter's), or :class:`PlanViolation` at the first read of a
    freed value. Values read in a nested block (a loop's body, a branch, a continuation) are checked
    when that block runs."""
    return interpret(module, args, lambda m, sizes: _PlanChecker(m, sizes, plan))
