"""Recompute, rather than keep, large values that the backward part reads across a continuation.

In continuation-passing reverse mode a block's forward part runs, then the continuation (the rest of the
network, forward and backward), then the block's backward part. Whatever the backward part reads from
the forward part is held while the whole continuation runs: for a layer of a network, while every later
layer runs. A large value that is cheap to make again from values held anyway (attention weights,
``softmax(q @ k^T)`` from ``q`` and ``k``, which the backward part reads for their own gradients) is
better made again after the continuation returns: the policy below (as JAX's ``checkpoint_policies``
name them: elementwise chains, softmax, layout changes, and products whose result is much larger than
their operands) decides what is cheap.

The forward value then dies at its last forward use (``codegen/memory_plan.py``), and its copy lives
only in the backward part. Results are identical: the same operations on the same values.
"""
from __future__ import annotations

from ..analysis import passed_by_reference, reads, updated_in_place
from ..nodes import Apply, Block, Call, Function, Fused, Lambda, Module, Op, Stmt, Var
from ..primitives import ELEMENTWISE, PRIMITIVES
from ..rewrite import clone_block, fresh, map_blocks, with_operands
from ..types import FnType, TensorType

#: Values at least this large are recomputed when the policy allows (smaller ones are not worth the time).
MIN_BYTES = 1 << 20
#: A product is recomputed when its result is at least this many times larger than its operands together.
PRODUCT_EXPANSION = 4
#: How many producers deep a recomputation may reach for operands that are not held anyway.
MAX_DEPTH = 3
#: Operands smaller than this may be kept alive for a recomputation.
SMALL_BYTES = 1 << 16

_LAYOUT = ("reshape", "transpose", "broadcast", "slice", "concatenate")


def _bytes(v: Var) -> int:
    t = v.type
    n = t.nbytes if isinstance(t, TensorType) else 0
    return n if isinstance(n, int) else 1 << 62  # (a run-time size: assumed large)


def cheap_to_recompute(s: Stmt) -> bool:
    """The policy: what may be computed again instead of kept (deterministic, no effects, cheap per byte)."""
    if isinstance(s, Fused):
        return len(s.outs) == 1
    if not isinstance(s, Op) or s.prim == "fill":
        return False
    card = PRIMITIVES[s.prim]
    if card.kind == ELEMENTWISE or s.prim == "softmax" or s.prim in _LAYOUT:
        return True
    if s.prim == "matmul":
        return _bytes(s.outs[0]) >= PRODUCT_EXPANSION * sum(_bytes(a) for a in s.args)
    return False


def _is_barrier(s: Stmt) -> bool:
    """A statement that runs a continuation: the rest of the program (forward and backward) runs inside it."""
    if isinstance(s, Apply):
        return True
    return isinstance(s, Call) and any(isinstance(a.type, FnType) for a in s.args)


def _recompute_block(stmts: list[Stmt], updated: set[int]) -> list[Stmt]:
    barrier = next((i for i, s in enumerate(stmts) if _is_barrier(s)), None)
    if barrier is None:
        return stmts
    defs = {o.id: s for s in stmts[:barrier] for o in s.outs}
    held_after = {v.id for s in stmts[barrier:] for v in reads(s)}  # (the barrier's own operands included)
    # held through the continuation whatever is done here: what it is passed, and what continuations capture
    captured = {v.id for s in stmts[:barrier] if isinstance(s, Lambda) for v in reads(s)} | {
        v.id for v in reads(stmts[barrier])}

    def available(v: Var) -> bool:
        return v.id not in defs or v.id in held_after or v.id in captured or _bytes(v) < SMALL_BYTES

    def plan(v: Var, depth: int, order: list[Stmt]) -> bool:
        """Append to ``order`` what recomputes ``v`` (producers first); False if the policy does not allow it."""
        s = defs[v.id]
        if not cheap_to_recompute(s) or v.id in updated or any(a.id in updated for a in s.operands()):
            return False
        for a in s.operands():
            if any(a in t.outs for t in order):
                continue
            # a large operand is recomputed too where it can be (so the original dies), else read if held
            big = a.id in defs and a.id not in captured and _bytes(a) >= MIN_BYTES
            trial = list(order)
            if big and depth < MAX_DEPTH and plan(a, depth + 1, trial):
                order[:] = trial
            elif not available(a):
                return False
        if s not in order:
            order.append(s)
        return True

    first_read: dict[int, int] = {}  # value id -> the first statement after the continuation that reads it
    for i, s in enumerate(stmts[barrier + 1:]):
        for v in reads(s):
            first_read.setdefault(v.id, i)
    candidates = [v for s in stmts[:barrier] for v in s.outs
                  if v.id in first_read and v.id not in captured and _bytes(v) >= MIN_BYTES]
    chains: list[tuple[int, list[Stmt]]] = []
    for v in candidates:
        order: list[Stmt] = []
        if plan(v, 0, order):
            # before the first statement that reads any value the chain makes again (every later read of
            # each of them reads the copy)
            chains.append((min(first_read[o.id] for s in order for o in s.outs if o.id in first_read), order))
    if not chains:
        return stmts
    subst: dict[int, Var] = {}
    inserted: dict[int, list[Stmt]] = {}
    done: set[int] = set()
    for first, order in sorted(chains, key=lambda c: c[0]):
        for s in order:
            if id(s) in done:
                continue  # (copied for an earlier chain, before this one's place)
            done.add(id(s))
            copy = with_operands(s, lambda a: subst.get(a.id, a))
            copy.outs = [fresh(o) for o in s.outs]
            for o, c in zip(s.outs, copy.outs):
                subst[o.id] = c
            inserted.setdefault(first, []).append(copy)
    rest = stmts[barrier + 1:]
    out = list(stmts[:barrier + 1])
    for i, s in enumerate(rest):
        out.extend(inserted.get(i, ()))
        out.extend(clone_block(Block([], [s], []), dict(subst), rename=False).stmts)
    return out


def recompute_after_continuations(module: Module) -> Module:
    """Each block's large values that its backward part reads after a continuation, recomputed there when
    the policy (:func:`cheap_to_recompute`) allows and their operands are held anyway."""
    functions = {}
    for name, fn in module.functions.items():
        # (what a call or continuation is handed it may add to: never recomputed, nor read by a recomputation)
        updated = updated_in_place(fn.body) | passed_by_reference(fn.body)
        functions[name] = Function(name, map_blocks(fn.body, lambda stmts: _recompute_block(stmts, updated)),
                                   fn.result_types, fn.loc)
    return Module(functions, module.entry)
