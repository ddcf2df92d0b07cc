"""Transposes moved past the operations that do not care about layout, so that pairs of them cancel.

A model written in one layout around a kernel that works in another transposes on the way in and on
the way out: ``Conv2d`` computes in ``[C, H, W, N]`` (its im2col rows are N contiguous values) and
returns NCHW, which the next ``Conv2d`` transposes back; between them lie a max-pool, a ReLU, and in
the gradient their adjoints. Each transpose is a full strided copy.

This pass walks each block in order and remembers which values are transposes of another value
(``y = transpose(s, p)``). An operation that does not depend on the layout of its operand is moved
before the transpose: it is computed on ``s`` and its result transposed instead. Those operations
are elementwise ones (their other operands are transposed to match, which is cheap when they are
scalars or small), reductions (the axes renumbered) and reshapes that split or merge axes which stay
adjacent in ``s``. A transpose of a transpose is one transpose, and one that undoes another is no copy
at all (a reshape, a view in C). The values the program computed stay defined (as transposes of the
new ones) for any reader the rewrite did not reach; dead-code elimination drops those nobody reads.

Moving a transpose need not remove it, so each function is rewritten only when the elements its
transposes copy, after dead code is dropped, are fewer than before. The values are the same, up to
the order of a sum's additions where a reduction's axes change order.
"""
from __future__ import annotations

from math import prod

from ..analysis import passed_by_reference, updated_in_place
from ..nodes import Block, Function, Module, Op, Stmt, Var, walk_stmts
from ..primitives import ELEMENTWISE, PRIMITIVES, inverse_perm
from ..rewrite import StmtEmitter, map_blocks
from ..symbolic import hint, is_symbolic
from .dce import eliminate_dead_code

Perm = tuple[int, ...]

#: elementwise primitives that make values from attributes (a shape) rather than from operands
_SHAPED = {"broadcast", "fill"}
#: operands of another layout transposed to match, in the cautious try, when no larger than this (elements)
_SMALL = 4096


def transposes_cancelled(module: Module) -> Module:
    """``module`` with transposes moved past layout-independent operations where that leaves less to copy
    (see the module docstring)."""
    functions = {}
    for name, fn in module.functions.items():
        updated = updated_in_place(fn.body) | passed_by_reference(fn.body)  # (a callee may add into an argument)
        # Two tries: transposing only small operands to match, or any (more cancels, or more copies).
        tries = [_pruned(Function(name, map_blocks(fn.body, lambda stmts: _LayoutWalk(updated, small).run(stmts)),
                                  fn.result_types, fn.loc)) for small in (_SMALL, None)]
        copied, best = min(((_copied(t), i) for i, t in enumerate(tries)))
        functions[name] = tries[best] if copied < _copied(_pruned(fn)) else fn
    return Module(functions, module.entry)


def _pruned(fn: Function) -> Function:
    return eliminate_dead_code(Module({fn.name: fn}, fn.name)).functions[fn.name]


def _copied(fn: Function) -> int:
    """Elements copied by the transposes of ``fn`` (with its dead code dropped: every transpose is read)."""
    return sum(hint(s.outs[0].type.size) for s in walk_stmts(fn.body)  # type: ignore[union-attr]
               if isinstance(s, Op) and s.prim == "transpose")


def _concrete(*shapes: tuple) -> bool:
    return not any(is_symbolic(d) or d == 0 for shape in shapes for d in shape)


class _LayoutWalk:
    """One block's statements rewritten in order; ``source[y.id] = (s, p)`` records ``y == transpose(s, p)``."""

    def __init__(self, updated: set[int], small: int | None):
        self.updated = updated
        #: operands of another layout transposed to match when at most this many elements (None: any size)
        self.small = small
        self.source: dict[int, tuple[Var, Perm]] = {}

    def run(self, stmts: list[Stmt]) -> list[Stmt]:
        out: list[Stmt] = []
        for s in stmts:
            new = self._rewrite(s) if isinstance(s, Op) and len(s.outs) == 1 else None
            out.extend([s] if new is None else new)
            if isinstance(s, Op) and s.prim == "transpose" and new is None:
                self._note(s.outs[0], s.args[0], tuple(s.attrs["perm"]))
        return out

    def _note(self, y: Var, s: Var, p: Perm) -> None:
        if y.id not in self.updated and s.id not in self.updated and _concrete(y.type.shape):  # type: ignore[union-attr]
            self.source[y.id] = (s, p)

    def _finish(self, op: Op, emit: StmtEmitter, new: Var, p: Perm) -> list[Stmt]:
        """``op``'s result defined as ``transpose(new, p)`` (a reshape where ``p`` moves only axes of size 1)."""
        y = op.outs[0]
        if _moves_only_units(tuple(new.type.shape), p):  # type: ignore[union-attr]
            emit.stmts.append(Op([y], loc=op.loc, prim="reshape", args=[new], attrs={"shape": tuple(y.type.shape)}))  # type: ignore[union-attr]
        else:
            emit.stmts.append(Op([y], loc=op.loc, prim="transpose", args=[new], attrs={"perm": p}))
            self._note(y, new, p)
        return emit.stmts

    def _rewrite(self, op: Op) -> list[Stmt] | None:
        card = PRIMITIVES.get(op.prim)
        if card is None:
            return None
        if card.kind == ELEMENTWISE and op.prim not in _SHAPED:
            return self._elementwise(op)
        found = self.source.get(op.args[0].id) if op.args else None
        if found is None:
            return None
        if op.prim == "transpose":
            s, q = found
            return self._finish(op, StmtEmitter(op), s, tuple(q[k] for k in op.attrs["perm"]))
        if op.prim == "reshape":
            return self._reshape(op, *found)
        if card.kind == "reduce":
            return self._reduction(op, *found)
        return None

    def _reduction(self, op: Op, s: Var, p: Perm) -> list[Stmt]:
        """A reduction over ``axes`` (sums, extrema) or along one ``axis`` (argmax, argmin) of ``transpose(s, p)``:
        the same over the matching axes of ``s``."""
        emit = StmtEmitter(op)
        if "axes" in op.attrs:
            axes = tuple(op.attrs["axes"])
            attrs = {**op.attrs, "axes": tuple(sorted(p[a] for a in axes))}
        else:
            axes = (op.attrs["axis"],)
            attrs = {**op.attrs, "axis": p[op.attrs["axis"]]}
        new = emit(op.prim, [s], op.outs[0].hint, **attrs)
        if op.attrs["keepdims"]:
            return self._finish(op, emit, new, p)
        kept = [p[j] for j in range(len(p)) if j not in axes]
        rank = {k: r for r, k in enumerate(sorted(kept))}
        return self._finish(op, emit, new, tuple(rank[k] for k in kept))

    def _elementwise(self, op: Op) -> list[Stmt] | None:
        """Computed on the untransposed operands when at least one is a transpose; the others are made to
        match: a transpose by another order of the same axes (up to axes of size 1, a view) or a small
        operand, transposed."""
        y = op.outs[0]
        ndim = y.type.ndim  # type: ignore[union-attr]
        if not _concrete(y.type.shape):  # type: ignore[union-attr]
            return None
        transposed = [(hint(a.type.size), self.source[a.id][1]) for a in op.args  # type: ignore[union-attr]
                      if a.id in self.source and a.type.ndim == ndim]  # type: ignore[union-attr]
        if not transposed:
            return None
        p = max(transposed)[1]  # (the largest operand's order)
        inv = inverse_perm(p)
        small = hint(y.type.size) if self.small is None else self.small  # type: ignore[union-attr]
        emit = StmtEmitter(op)
        args = []
        for a in op.args:
            found = self.source.get(a.id)
            if a.type.ndim == 0:  # type: ignore[union-attr]
                args.append(a)
                continue
            if found is not None and a.type.ndim == ndim:  # type: ignore[union-attr]
                a, q = found  # a == transpose(s, q): in the order of p, transpose(s, q[inv])
                r = tuple(q[k] for k in inv)
            elif hint(a.type.size) <= small and _concrete(a.type.shape):  # type: ignore[union-attr]
                full = tuple(a.type.shape)  # type: ignore[union-attr]
                if len(full) < ndim:  # (NumPy's broadcasting: leading axes of 1)
                    a = emit("reshape", [a], a.hint, shape=(1,) * (ndim - len(full)) + full)
                r = inv
            else:
                return None
            shape = tuple(a.type.shape[k] for k in r)  # type: ignore[union-attr]
            if _moves_only_units(tuple(a.type.shape), r):  # type: ignore[union-attr]
                args.append(a if shape == tuple(a.type.shape) else emit("reshape", [a], a.hint, shape=shape))  # type: ignore[union-attr]
            elif hint(a.type.size) <= small:  # type: ignore[union-attr]
                args.append(emit("transpose", [a], a.hint, perm=r))
            else:
                return None
        new = emit(op.prim, args, y.hint, **op.attrs)
        return self._finish(op, emit, new, p)

    def _reshape(self, op: Op, s: Var, p: Perm) -> list[Stmt] | None:
        z = tuple(op.outs[0].type.shape)  # type: ignore[union-attr]
        if not _concrete(z, s.type.shape):  # type: ignore[union-attr]
            return None
        moved = _reshape_before_transpose(tuple(s.type.shape), p, z)  # type: ignore[union-attr]
        if moved is None:
            return None
        shape, r = moved
        emit = StmtEmitter(op)
        return self._finish(op, emit, emit("reshape", [s], op.outs[0].hint, shape=shape), r)


def _moves_only_units(shape: tuple, p: Perm) -> bool:
    """True when ``transpose(x, p)`` of an ``x`` of this shape keeps its elements in order (a reshape)."""
    kept = [k for k in p if shape[k] != 1]
    return kept == sorted(kept)


def _reshape_before_transpose(s: tuple[int, ...], p: Perm, z: tuple[int, ...]) -> tuple[tuple[int, ...], Perm] | None:
    """``(shape, r)`` with ``reshape(transpose(x, p), z) == transpose(reshape(x, shape), r)`` for any ``x`` of
    shape ``s``, or None when the reshape merges axes that the transpose separates.

    Axes of size 1 play no part in the order of the elements, so they are set aside: the others of the
    transposed shape and of ``z`` are matched in groups of equal product (one axis split in several, or
    several merged in one). Each group must come from axes of ``s`` that are adjacent and in order; then
    ``shape`` lists the groups' ``z`` sizes in the order of ``s``, followed by the size-1 axes of ``z``."""
    s_rank = {k: r for r, k in enumerate(k for k in range(len(s)) if s[k] != 1)}
    src = [s_rank[k] for k in p if s[k] != 1]  # each non-unit transposed axis: its place among s's non-unit axes
    sizes = [s[k] for k in p if s[k] != 1]
    z_axes = [k for k in range(len(z)) if z[k] != 1]
    groups: list[tuple[list[int], list[int]]] = []  # (places in `sizes`, axes of z)
    i = k = 0
    while i < len(sizes):
        if k >= len(z_axes):
            return None
        ys, zs, ny, nz = [i], [z_axes[k]], sizes[i], z[z_axes[k]]
        i, k = i + 1, k + 1
        while ny != nz:
            if ny < nz and i < len(sizes):
                ys.append(i)
                ny, i = ny * sizes[i], i + 1
            elif nz < ny and k < len(z_axes):
                zs.append(z_axes[k])
                nz, k = nz * z[z_axes[k]], k + 1
            else:
                return None
        if [src[t] for t in ys] != list(range(src[ys[0]], src[ys[0]] + len(ys))):
            return None
        groups.append((ys, zs))
    if k != len(z_axes):
        return None
    shape: list[int] = []
    where: dict[int, int] = {}  # axis of z -> its axis in `shape`
    for ys, zs in sorted(groups, key=lambda g: src[g[0][0]]):
        for axis in zs:
            where[axis] = len(shape)
            shape.append(z[axis])
    for axis in range(len(z)):
        if z[axis] == 1:
            where[axis] = len(shape)
            shape.append(1)
    assert prod(shape) == prod(z)
    return tuple(shape), tuple(where[axis] for axis in range(len(z)))


__all__ = ["transposes_cancelled"]
