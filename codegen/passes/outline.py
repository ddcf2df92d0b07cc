"""Split a function too long to compile quickly into a sequence of calls of shorter functions.

A C compiler's optimiser is superlinear in a function's size (register allocation, PRE): the
training step of a deep model, whose per-parameter gradient glue and optimizer updates are one
long straight-line body, compiled slower than its layers together (issue 19). This pass cuts
such a body, between top-level statements, into parts of about :data:`PART_STMTS` statements;
each part becomes a function of the values it reads, returning the values read after it. The
parts can then be compiled separately (``codegen/units.py`` puts them in translation units that
compile in parallel).

What may not cross a cut:

* a continuation made in the body (its environment lives in the frame that made it): a cut
  is only made where no ``Lambda`` value made before it is read after it;
* a view (``reshape``: the same memory; a ``constant``; a scalar ``fill`` not updated in place
  nor handed to a function; a run-time ``size``): it is made again in each part that reads it, from its source, so an
  update through a reshape still reaches the buffer it shares.

Buffers updated in place after a cut (gradient accumulators) are passed by pointer, as every
function argument is, so the update lands in the caller's buffer.
"""
from __future__ import annotations

import os

from lantern.ir.analysis import passed_by_reference, updated_in_place
from lantern.ir.nodes import Block, Call, Function, Lambda, Module, Op, Stmt, Var, free_vars
from lantern.ir.passes import recursive_functions
from lantern.ir.rewrite import clone_block
from lantern.ir.types import FnType

from ..lowering import VALUE_REDUCTIONS

#: Statements (nested ones counted, a fused loop's too) per part. A part of this size compiles in
#: about a second at -O3; a function less than twice as long is left whole. ``LANTERN_PART_STMTS``
#: overrides it (0: never split).
PART_STMTS = 400

#: Operations whose result is a view or a constant, no computation (a scalar ``fill`` too, see below).
VIEW_PRIMS = ("reshape", "constant", "size")


def is_glue(fn: Function) -> bool:
    """Whether ``fn`` only calls other functions (with views between): what this pass leaves of a long body."""
    return len(fn.body.stmts) > 1 and all(
        isinstance(s, Call) or (isinstance(s, Op) and (s.prim in VIEW_PRIMS or s.prim == "fill" and not s.outs[0].type.shape))  # type: ignore[union-attr]
        for s in fn.body.stmts)


def part_stmts() -> int:
    """:data:`PART_STMTS`, or ``$LANTERN_PART_STMTS`` when set to a number."""
    value = os.environ.get("LANTERN_PART_STMTS", "").strip()
    return int(value) if value.isdigit() else PART_STMTS


def weight(stmts: list[Stmt]) -> int:
    """Statements in ``stmts``, those of nested blocks included."""
    return sum(1 + sum(weight(b.stmts) for b in s.blocks()) for s in stmts)


def outline_long_functions(module: Module, limit: int | None = None) -> Module:
    """``module`` with every function longer than twice ``limit`` (default :func:`part_stmts`) statements
    split into calls of parts (see the module docstring)."""
    limit = part_stmts() if limit is None else limit
    if limit <= 0:
        return module
    functions: dict[str, Function] = {}
    recursive = recursive_functions(module)  # (their depth and stack are counted per call: kept whole)
    for name, fn in module.functions.items():
        if name in recursive or weight(fn.body.stmts) < 2 * limit:
            functions[name] = fn
            continue
        outer, parts = _split(fn, limit, set(module.functions) | set(functions))
        functions.update((p.name, p) for p in parts)
        functions[name] = outer
    # callers keep their place before the parts (the entry last: emit order puts it at the end)
    order = [n for n in module.functions if n != module.entry]
    order += [n for n in functions if n not in module.functions] + [module.entry]
    return Module({n: functions[n] for n in order}, module.entry)


class _Views:
    """The views defined at the top of one body: which statement makes each, and what each one reads."""

    def __init__(self, body: Block):
        mutated = updated_in_place(body) | passed_by_reference(body)  # (a callee may add to it)
        self.maker: dict[int, Op] = {}
        for s in body.stmts:
            if isinstance(s, Op) and (s.prim in VIEW_PRIMS or (
                    s.prim == "fill" and not s.outs[0].type.shape and s.outs[0].id not in mutated)):  # type: ignore[union-attr]
                self.maker[s.outs[0].id] = s

    def drop_unread(self, stmts: list[Stmt]) -> list[Stmt]:
        """``stmts`` without the views nothing in ``stmts`` reads."""
        while True:  # (a view read only by a dropped view goes too)
            read = {v.id for s in stmts for v in free_vars(Block(stmts=[s]))}
            kept = [s for s in stmts if not (isinstance(s, Op) and self.maker.get(s.outs[0].id) is s
                                             and s.outs[0].id not in read)]
            if len(kept) == len(stmts):
                return kept
            stmts = kept

    def sources(self, values: list[Var]) -> list[Var]:
        """``values`` with each view replaced by what it is made from (transitively), in first-seen order."""
        seen: dict[int, Var] = {}
        stack = list(reversed(values))
        while stack:
            v = stack.pop()
            op = self.maker.get(v.id)
            if op is not None:
                stack.extend(reversed(op.args))
            else:
                seen.setdefault(v.id, v)
        return list(seen.values())

    def remade(self, values: list[Var]) -> list[Stmt]:
        """The statements that make the views among ``values`` (and the views they read), sources first."""
        order: dict[int, Op] = {}

        def visit(v: Var) -> None:
            op = self.maker.get(v.id)
            if op is None or v.id in order:
                return
            for a in op.args:
                visit(a)
            order[v.id] = op
        for v in values:
            visit(v)
        return list(order.values())


def _cuts(stmts: list[Stmt], limit: int) -> list[int]:
    """Where to cut ``stmts``: after about ``limit`` statements, where no continuation is live across, and
    not between a reduction and the statement before it that makes its operand (a square and the sum
    that adds it up stay together: the C emitter computes such pairs in one loop, ``codegen/lowering.py``)."""
    last_use: dict[int, int] = {}
    reduces_previous = [False] * (len(stmts) + 1)
    for i, s in enumerate(stmts):
        for v in free_vars(Block(stmts=[s])):
            last_use[v.id] = i
        if i and isinstance(s, Op) and s.prim in VALUE_REDUCTIONS:
            reduces_previous[i] = any(o is s.args[0] for o in stmts[i - 1].outs)
    after = [0] * (len(stmts) + 1)  # after[i]: the weight of stmts[i:]
    for i in range(len(stmts) - 1, -1, -1):
        after[i] = after[i + 1] + weight([stmts[i]])
    cuts, size, open_lambdas = [], 0, set()
    for i, s in enumerate(stmts):
        size += weight([s])
        open_lambdas = {k for k in open_lambdas if last_use.get(k, -1) > i}
        if isinstance(s, Lambda) and last_use.get(s.outs[0].id, -1) > i:
            open_lambdas.add(s.outs[0].id)
        if size >= limit and not open_lambdas and not reduces_previous[i + 1] and after[i + 1] >= limit // 2:
            cuts.append(i + 1)
            size = 0
    return cuts


def _split(fn: Function, limit: int, taken: set[str]) -> tuple[Function, list[Function]]:
    body = fn.body
    bounds = [0, *_cuts(body.stmts, limit), len(body.stmts)]
    if len(bounds) <= 2:
        return fn, []
    views = _Views(body)
    # a view is made again where it is read, so a piece that does not read its own view drops it
    pieces = [p for p in (views.drop_unread(body.stmts[a:b]) for a, b in zip(bounds, bounds[1:])) if p]
    # what each piece must return: its values read after it (views counted as their sources)
    needed = {v.id for v in views.sources(list(body.results))}
    returns: list[list[Var]] = []
    reads: list[list[Var]] = []
    for piece in reversed(pieces):
        read = free_vars(Block(stmts=piece))
        defined = [o for s in piece for o in s.outs if o.id in needed and o.id not in views.maker]
        assert not any(isinstance(o.type, FnType) for o in defined), "a continuation crosses a cut"
        returns.append(defined)
        reads.append(read)
        needed |= {v.id for v in views.sources(read)}
    returns.reverse()
    reads.reverse()
    parts: list[Function] = []
    stmts: list[Stmt] = []
    for k, (piece, read, results) in enumerate(zip(pieces, reads, returns), start=1):
        name = _fresh_name(f"{fn.name}_part{k}", taken)
        taken.add(name)
        params = views.sources(read)
        inner = Block(params, views.remade(read) + piece, results)
        parts.append(Function(name, clone_block(inner, {}), tuple(v.type for v in results),
                              piece[0].loc))
        stmts.append(Call(list(results), fn=name, args=params, loc=piece[0].loc))
    stmts += views.remade(list(body.results))
    return Function(fn.name, Block(list(body.params), stmts, list(body.results)), fn.result_types, fn.loc), parts


def _fresh_name(name: str, taken: set[str]) -> str:
    k, candidate = 1, name
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    return candidate


__all__ = ["PART_STMTS", "VIEW_PRIMS", "is_glue", "outline_long_functions", "part_stmts", "weight"]
