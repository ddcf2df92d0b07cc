"""Fuse chains of elementwise ops of one output shape into single :class:`Fused` loops.

Within a block, an elementwise op joins the open group (same output shape) that defines
one of its operands; groups it reads from are merged into it. A group closes as soon as
anything outside it reads one of its values, so emitting the group where its last
member stood keeps every definition before its uses. Values read outside a group become
its outputs (stored to memory); the rest stay scalar temporaries in the C loop.
Scalar constants (0-d ``fill``) stay out of groups: the emitter inlines them as literals.
"""
from __future__ import annotations

from ..analysis import has_effects, reads
from ..nodes import Block, Function, Fused, Module, Op, Stmt, Var
from ..primitives import ELEMENTWISE, PRIMITIVES
from ..rewrite import fresh, with_blocks


def _fusible(stmt: Stmt) -> bool:
    if not isinstance(stmt, Op) or PRIMITIVES[stmt.prim].kind != ELEMENTWISE:
        return False
    return not (stmt.prim == "fill" and stmt.outs[0].type.shape == ())


class _Group:
    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.members: list[Op] = []
        self.defines: set[int] = set()


def _group_statements(stmts: list[Stmt]) -> list[Stmt | _Group]:
    placed: list[Stmt | _Group | None] = []
    slot: dict[int, int] = {}  # id(group) -> index in placed
    open_by_var: dict[int, _Group] = {}

    def close(g: _Group) -> None:
        for v in g.defines:
            open_by_var.pop(v, None)

    for stmt in stmts:
        if _fusible(stmt):
            shape = stmt.outs[0].type.shape
            joined = None
            for v in stmt.operands():
                g = open_by_var.get(v.id)
                if g is None or g is joined:
                    continue
                if g.shape != shape:
                    close(g)  # read at another shape (broadcast): materialize it
                elif joined is None:
                    joined = g
                else:  # merge g into joined
                    joined.members.extend(g.members)
                    joined.defines |= g.defines
                    for d in g.defines:
                        open_by_var[d] = joined
                    placed[slot.pop(id(g))] = None
            if joined is None:
                joined = _Group(shape)
            else:
                placed[slot[id(joined)]] = None
            # Emit the group where its newest member stands.
            joined.members.append(stmt)  # type: ignore[arg-type]
            joined.defines.add(stmt.outs[0].id)
            open_by_var[stmt.outs[0].id] = joined
            slot[id(joined)] = len(placed)
            placed.append(joined)
        elif has_effects(stmt):
            # In-place updates (adjoints) and calls that may make them: no group may be
            # moved across, so every open group closes here.
            for g in set(open_by_var.values()):
                close(g)
            placed.append(stmt)
        else:
            for v in reads(stmt):
                g = open_by_var.get(v.id)
                if g is not None:
                    close(g)
            placed.append(stmt)
    return [p for p in placed if p is not None]


def _make_fused(group: _Group, used_outside: set[int]) -> Stmt:
    if len(group.members) == 1:
        return group.members[0]
    subst: dict[int, Var] = {}
    inputs: list[Var] = []
    params: list[Var] = []
    body_stmts: list[Stmt] = []
    for op in group.members:
        args = []
        for a in op.args:
            if a.id not in subst:
                subst[a.id] = fresh(a)
                inputs.append(a)
                params.append(subst[a.id])
            args.append(subst[a.id])
        out = fresh(op.outs[0])
        subst[op.outs[0].id] = out
        body_stmts.append(Op([out], loc=op.loc, prim=op.prim, args=args, attrs=op.attrs))
    outs = [op.outs[0] for op in group.members if op.outs[0].id in used_outside]
    return Fused(outs, loc=group.members[-1].loc, inputs=inputs,
                 body=Block(params, body_stmts, [subst[o.id] for o in outs]))


def _fuse_list(stmts: list[Stmt], results: list[Var]) -> list[Stmt]:
    grouped = _group_statements(stmts)
    used_outside = {r.id for r in results}
    for item in grouped:
        if isinstance(item, _Group):
            used_outside.update(a.id for m in item.members for a in m.args if a.id not in item.defines)
        else:
            used_outside.update(v.id for v in reads(item))
    return [_make_fused(item, used_outside) if isinstance(item, _Group) else item for item in grouped]


def _fuse_block(block: Block) -> Block:
    stmts = [with_blocks(s, [_fuse_block(b) for b in s.blocks()]) for s in block.stmts]
    return Block(list(block.params), _fuse_list(stmts, block.results), list(block.results))


def fuse_elementwise(module: Module) -> Module:
    return Module({name: Function(name, _fuse_block(fn.body), fn.result_types, fn.loc)
                   for name, fn in module.functions.items()}, module.entry)
