"""Facts about IR that passes, AD and code generation ask: what a statement reads, which statements
have effects, which buffers are updated in place, what is passed by reference, how often a value is read.
"""
from __future__ import annotations

from collections import Counter

from .nodes import Accumulate, Apply, Block, Call, Module, Op, Stmt, Var, free_vars, walk_stmts
from .symbolic import Size


def reads(stmt: Stmt) -> list[Var]:
    """Everything ``stmt`` reads: its operands and the free variables of its nested blocks."""
    return list(stmt.operands()) + [v for b in stmt.blocks() for v in free_vars(b)]


def has_effects(stmt: Stmt) -> bool:
    """True for statements that update memory in place or may (calls, continuations)."""
    if isinstance(stmt, (Accumulate, Apply, Call)):
        return True
    return any(has_effects(s) for b in stmt.blocks() for s in walk_stmts(b))


def accumulation_targets(block: Block) -> Counter:
    """How often each buffer is updated in place (``x_bar += v``); an indexed update counts twice
    (it adds to some rows only, so it never makes the buffer equal to one contribution)."""
    counts: Counter = Counter()
    for s in walk_stmts(block):
        if isinstance(s, Accumulate):
            counts[s.target.id] += 1 if s.index is None else 2
    return counts


def passed_by_reference(block: Block) -> set[int]:
    """Ids of values handed to a function or continuation (by pointer in C: they may be updated there)."""
    return {a.id for s in walk_stmts(block) if isinstance(s, (Call, Apply)) for a in s.args}


def updated_in_place(block: Block) -> set[int]:
    """Ids of the buffers updated in place (``Accumulate`` targets), and of their reshapes (the same
    memory in C), in either direction."""
    updated = set(accumulation_targets(block))
    reshapes = [(s.args[0].id, s.outs[0].id) for s in walk_stmts(block) if isinstance(s, Op) and s.prim == "reshape"]
    grew = True
    while grew:
        grew = False
        for a, b in reshapes:
            if (a in updated) != (b in updated):
                updated |= {a, b}
                grew = True
    return updated


def use_counts(block: Block) -> dict[int, int]:
    """How often each variable is read (operands and yielded results, nested blocks included)."""
    counts: dict[int, int] = {}

    def visit(b: Block) -> None:
        for s in b.stmts:
            for v in s.operands():
                counts[v.id] = counts.get(v.id, 0) + 1
            for inner in s.blocks():
                visit(inner)
        for r in b.results:
            counts[r.id] = counts.get(r.id, 0) + 1

    visit(block)
    return counts


def entry_sizes(module: Module) -> tuple[tuple[str, int, int], ...]:
    """The size variables of ``module`` (``ir/symbolic.py``), each with the first entry parameter axis that
    is exactly it: ``(name, parameter, axis)``, where a call's value of it is read."""
    found: dict[str, tuple[str, int, int]] = {}
    for k, p in enumerate(module.entry_function.body.params):
        for axis, d in enumerate(p.type.shape):  # type: ignore[union-attr]
            if isinstance(d, Size) and d.variable:
                found.setdefault(d.variable, (d.variable, k, axis))
    return tuple(found.values())
