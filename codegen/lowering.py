"""Lowering: where each value of a prepared module will live, decided before any C is written.

* **Destinations.** A block's result computed by one of its own statements is written straight
  into where it ends up (a function's result buffer, an ``if``'s output, a loop's spare state
  buffer) instead of being copied there afterwards.
* **Accumulate-into.** ``t = a @ b; ...; x_bar += t`` with ``t`` read nowhere else computes ``t``
  into ``x_bar`` with ``+=`` (also elementwise loops): no temporary, no second pass (the per-step
  weight gradients of an RNN are such outer products).
* **Reductions of elementwise values.** ``t = g * g; s = sum(t)`` with ``t`` read nowhere else
  computes ``g * g`` in the reduction's loop: no ``t`` array, one loop instead of two (the global
  norm of a model's gradients is a square and a sum per weight).
* **Literals.** A 0-d ``fill`` nobody updates in place is inlined where it is read.
* **Memory.** Each buffer is freed after its last use, and an elementwise result may take the buffer
  of an operand that dies there (``codegen/memory_plan.py``).
* **Closure conversion.** A continuation (``Lambda``) becomes a function plus an environment of
  the values it reads from its frame (its captures, in order); continuations only run while that
  frame is live, so the environment holds pointers into it.

The emitter (``codegen/emit_c.py``) follows the plan; :func:`format_plan` prints it
(``Executable.lowered``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

from lantern.ir.analysis import accumulation_targets, passed_by_reference, reads, use_counts
from lantern.ir.nodes import (Accumulate, Apply, Block, Call, Fused, If, Lambda, Loop, Module, Op, Stmt, Var, While,
                              free_vars)
from lantern.ir.primitives import ELEMENTWISE, PRIMITIVES
from lantern.ir.types import FnType, TensorType

from .memory_plan import MemoryPlan, buffer_bytes, is_view, plan_memory

#: Where a block's result is computed: ("result", k) of its function, ("output", v) an ``if``'s
#: output v, or ("state", v) the spare buffer of a loop's carried value v.
Target = tuple[str, object]


@dataclass
class Plan:
    """The storage decisions for every value of a module (variable ids are unique in a module)."""

    dest: dict[int, Target] = field(default_factory=dict)     # value -> where it is computed
    into: dict[int, Var] = field(default_factory=dict)        # value -> the buffer it is added to
    literals: set[int] = field(default_factory=set)           # 0-d constants inlined where read
    captures: dict[int, list[Var]] = field(default_factory=dict)  # Lambda's out id -> what its body reads
    in_reduction: dict[int, Stmt] = field(default_factory=dict)  # value -> its elementwise producer, run in
    #                                                                the loop of the reduction that reads it
    memory: MemoryPlan | None = None  # when buffers die and which results reuse them (None: at return)

    def elsewhere(self, v: Var) -> bool:
        """``v`` needs no buffer of its own: it is computed into another, added into one, inlined, or
        computed in a reduction's loop."""
        return v.id in self.dest or v.id in self.into or v.id in self.literals or v.id in self.in_reduction

    def owns_buffer(self, s: Stmt, v: Var) -> bool:
        """``v``, made by ``s``, gets a buffer of its own (in the arena)."""
        view = is_view(s) and s.operands()[0].id not in self.literals  # (a literal's reshape is stored)
        return (buffer_bytes(v) is not None and not self.elsewhere(v) and not view
                and not (isinstance(s, Op) and s.prim == "constant"))


def allocates(stmt: Stmt) -> bool:
    """Whether ``stmt`` makes new storage for its results (so it can make it where they end up)."""
    if isinstance(stmt, Op):
        return stmt.prim not in ("reshape", "constant") and not (stmt.prim == "fill" and not stmt.outs[0].type.shape)
    return isinstance(stmt, (Fused, If, Call, Apply))


def _is_array(v: Var) -> bool:
    return isinstance(v.type, TensorType) and v.type.shape != ()


#: Reductions whose operand may be computed in their loop (``kernels/reductions.py``'s ``reduce_values``).
VALUE_REDUCTIONS = ("reduce_sum", "reduce_prod", "reduce_max", "reduce_min")
#: A value this large is never computed in a reduction's loop: storing it fails at once with a clear
#: out-of-memory error on any machine, where the fused loop would run for minutes to years (kernels do not
#: poll for Ctrl-C).
MAX_FUSED_REDUCTION_BYTES = 1 << 40


def lower_module(module: Module, fuse_reductions: bool = True, memory_plan: bool = True) -> Plan:
    """The plan for ``module`` (see the module docstring). ``fuse_reductions`` off (``check_finite`` builds,
    which name the op that made a NaN from its own loop) keeps every elementwise value in memory;
    ``memory_plan`` off keeps every buffer until its function returns."""
    plan = Plan()
    mutated: set[int] = set()
    for fn in module.functions.values():
        mutated |= set(accumulation_targets(fn.body)) | passed_by_reference(fn.body)
    for fn in module.functions.values():
        _Planner(plan, mutated, fn.body, fuse_reductions).block(fn.body, [("result", k) for k in range(len(fn.body.results))])
    if memory_plan:
        plan.memory = plan_memory(module, plan.elsewhere)
    return plan


class _Planner:
    """Plans one C function: a module function's body, or a continuation's."""

    def __init__(self, plan: Plan, mutated: set[int], body: Block, fuse_reductions: bool = True):
        self.plan, self.mutated, self.fuse_reductions = plan, mutated, fuse_reductions
        self.uses = use_counts(body)

    def block(self, block: Block, targets: list[Target | None]) -> None:
        counts = Counter(r.id for r in block.results)
        top = {o.id: s for s in block.stmts for o in s.outs}
        for r, target in zip(block.results, targets):
            s = top.get(r.id)
            if target is not None and counts[r.id] == 1 and s is not None and allocates(s):
                self.plan.dest[r.id] = target
        self.accumulations(block)
        if self.fuse_reductions:
            self.reductions(block)
        for s in block.stmts:
            self.stmt(s)

    def stmt(self, s: Stmt) -> None:
        match s:
            case Op(prim="fill") if not s.outs[0].type.shape and s.outs[0].id not in self.mutated:
                self.plan.literals.add(s.outs[0].id)
            case If():
                # an output gets a buffer where it is an array or itself goes into one
                outputs = [("output", o) if _is_array(o) or o.id in self.plan.dest else None for o in s.outs]
                self.block(s.then_block, outputs)
                self.block(s.else_block, outputs)
            case Loop() | While():
                if isinstance(s, While):
                    self.block(s.cond, [])
                self.block(s.body, [("state", o) if _is_array(o) else None for o in s.outs])
            case Lambda():
                self.plan.captures[s.outs[0].id] = free_vars(s.body)
                function = s.outs[0].type
                assert isinstance(function, FnType)
                _Planner(self.plan, self.mutated, s.body, self.fuse_reductions).block(
                    s.body, [("result", k) for k in range(len(function.results))])

    def reductions(self, block: Block) -> None:
        """Elementwise values read once, by the reduction right after them (broadcast operands included: the
        sum of an outer product never makes the product)."""
        for producer, reduction in zip(block.stmts, block.stmts[1:]):
            if not (isinstance(reduction, Op) and reduction.prim in VALUE_REDUCTIONS):
                continue
            value = reduction.args[0]
            elementwise = isinstance(producer, Fused) or (
                isinstance(producer, Op) and PRIMITIVES[producer.prim].kind == ELEMENTWISE and producer.prim != "fill")
            nbytes = value.type.nbytes  # type: ignore[union-attr]
            if (elementwise and len(producer.outs) == 1 and producer.outs[0] is value
                    and self.uses.get(value.id) == 1 and value.id not in self.mutated
                    and value.id not in self.plan.dest and value.type.shape  # type: ignore[union-attr]
                    and isinstance(nbytes, int) and nbytes < MAX_FUSED_REDUCTION_BYTES):
                self.plan.in_reduction[value.id] = producer

    def accumulations(self, block: Block) -> None:
        """Values added (once, whole) to a buffer in the same block, read nowhere else, whose producer
        can add instead of store (a product or an elementwise loop), with nothing reading the buffer
        in between."""
        position = {o.id: i for i, s in enumerate(block.stmts) for o in s.outs}
        for j, acc in enumerate(block.stmts):
            if not isinstance(acc, Accumulate) or acc.index is not None or self.uses.get(acc.value.id) != 1:
                continue
            i = position.get(acc.value.id)
            if i is None:
                continue
            producer = block.stmts[i]
            if not ((isinstance(producer, Op) and (producer.prim == "matmul" or
                                                   PRIMITIVES[producer.prim].kind == ELEMENTWISE)
                     and not (producer.prim == "fill" and not producer.outs[0].type.shape))
                    or isinstance(producer, Fused)):
                continue
            if any(acc.target.id in {v.id for v in reads(s)} for s in block.stmts[i:j]):
                continue  # (the producer must not read the target either)
            self.plan.into[acc.value.id] = acc.target


def format_plan(module: Module, plan: Plan, names: Callable[[Var], str] | None = None) -> str:
    """The plan as text: per function, the values with a decision, in program order."""
    name = names or (lambda v: v.name)
    lines = []
    for fn in module.functions.values():
        lines.append(f"@{fn.name}:")
        for s in _walk(fn.body):
            for o in s.outs:
                if o.id in plan.dest:
                    kind, where = plan.dest[o.id]
                    target = (f"result {where}" if kind == "result"
                              else f"{kind} %{name(where)}")  # type: ignore[arg-type]
                    lines.append(f"  %{name(o)}: computed into {target}")
                elif o.id in plan.into:
                    lines.append(f"  %{name(o)}: added into %{name(plan.into[o.id])} (+=)")
                elif o.id in plan.in_reduction:
                    lines.append(f"  %{name(o)}: computed in the loop of the reduction that reads it")
                elif o.id in plan.literals:
                    lines.append(f"  %{name(o)}: inlined literal {s.attrs['value']!r}")  # type: ignore[union-attr]
            if isinstance(s, Lambda):
                captured = ", ".join(f"%{name(v)}" for v in plan.captures[s.outs[0].id]) or "nothing"
                lines.append(f"  %{name(s.outs[0])}: continuation, environment {{{captured}}}")
    return "\n".join(lines)


def _walk(block: Block) -> Iterator[Stmt]:
    for s in block.stmts:
        yield s
        if not isinstance(s, Fused):
            for b in s.blocks():
                yield from _walk(b)

