"""Structured control flow on staged values: ``cond``, ``fori_loop``, ``while_loop``.

Each traces its Python callables into nested IR blocks (never unrolled). Branch and loop
bodies may read any staged value of the enclosing code (lexical capture), and must
return values of the same structure, shapes and dtypes as their counterpart.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from . import ops
from .eager import as_array
from .errors import DTypeError, ShapeError
from .ir.nodes import Accumulate, Block, If, Loop, Var, While
from .ir.symbolic import Size, known_equal
from .ir.types import TensorType, scalar
from .source import Loc, user_location
from .tensor import Tensor
from .tracing import PENDING, Frame, TracedBody, current_frame, trace_callable, with_location
from .tree import TreeDef, flatten, unflatten


class UnknownRecursiveResult(Exception):
    """Internal: a recursive call whose result type is not known yet (see ``staging``)."""

    def __init__(self, function_name: str, loc: Loc):
        super().__init__(function_name)
        self.function_name = function_name
        self.loc = loc  # the user's line with the recursive call


def _is_weak(x: Any) -> bool:
    return isinstance(x, (bool, int, float)) and not isinstance(x, np.generic)


def _trace(frame: Frame, fn: Callable[..., Any], params: list[Var],
           make_args: Callable[[list[Tensor]], tuple]) -> TracedBody:
    return trace_callable(frame, params, fn, make_args, "a traced body", "a traced body's result")


#: A Python number of each kind, as NumPy's promotion sees it (weak), by the dtype it was staged as.
_WEAK_KIND = {"bool": False, "int64": 0, "float32": 0.0}


def _join_weak(strong: str | None, weak: list[str]) -> str:
    """The dtype of outputs where ``weak`` ones are Python numbers: NumPy 2 promotion (``x if p
    else 2.5`` with an int ``x`` is float64); Python numbers alone: the widest kind's default."""
    if strong is None:
        return max(weak, key=list(_WEAK_KIND).index)
    return np.result_type(np.zeros((), strong), *(_WEAK_KIND[w] for w in weak)).name


def _unify(frame: Frame, what: str, traced: list[TracedBody], names: Sequence[str]) -> tuple[list[TensorType], list[bool]]:
    """Make corresponding outputs agree; Python-number outputs adopt the other side's dtype, :data:`PENDING`
    ones the other side's type (as zeros). Returns the types, and which outputs are pending on every side."""
    first = traced[0]
    for other, name in zip(traced[1:], names[1:]):
        if other.treedef != first.treedef:
            if any(any(t.pending) for t in traced):
                raise with_location(ShapeError, "a value returned from inside a staged loop must be a tensor, a "
                                    "number or written as a tuple (return a, b); a tuple variable, a list or a "
                                    "dict returned there has no value yet on the paths that did not return: "
                                    "return its parts (return st[0], st[1])")
            raise with_location(ShapeError, f"{what}: {names[0]} returns structure {first.treedef} but "
                                f"{name} returns {other.treedef}")
    types, pending = [], []
    for i in range(len(first.leaves)):
        assigned = [(t, n) for t, n in zip(traced, names) if not t.pending[i]]
        pending.append(not assigned)
        if not assigned:  # pending on every side: stays so
            types.append(first.types[i])
            continue
        _give_pending_a_type(frame, traced, i, assigned[0][0])
        cands = [t.types[i] for t in traced]
        strong = [c for c, t in zip(cands, traced) if not t.weak[i]]
        target = strong[0] if strong else cands[0]
        same_shapes = all(c.shape == target.shape for c in cands)
        if not same_shapes or {c.dtype for c in strong} - {target.dtype}:
            listing = ", ".join(f"{n} gives {c}" for n, c in zip(names, cands))
            raise with_location(DTypeError if same_shapes else ShapeError,
                                f"{what}: output {i} differs: {listing}")
        target = TensorType(target.shape, _join_weak(target.dtype if strong else None,
                                                     [c.dtype for c, t in zip(cands, traced) if t.weak[i]]))
        for t in traced:
            if t.types[i] != target:
                with frame.block(t.block):
                    t.leaves[i] = ops.astype(t.leaves[i], target.dtype)
                    t.block.results[i] = t.leaves[i].var
        types.append(target)
    return types, pending


def _give_pending_a_type(frame: Frame, traced: list[TracedBody], i: int, source: TracedBody) -> None:
    """Output ``i`` of the bodies where it is pending becomes zeros of ``source``'s type (as weak as it)."""
    like = source.leaves[i]
    for t in traced:
        if t.pending[i]:
            with frame.block(t.block):
                t.leaves[i] = ops.zeros(like.shape, like.type.dtype)
                t.block.results[i] = t.leaves[i].var
            t.pending[i], t.weak[i] = False, source.weak[i]


def _with_pending(treedef: TreeDef, tensors: list[Tensor], pending: list[bool]) -> Any:
    """The results, with :data:`PENDING` where no branch or iteration assigned a value."""
    return unflatten(treedef, [PENDING if p else t for t, p in zip(tensors, pending)])


def _scalar_pred(pred: Any, what: str) -> Tensor:
    p = ops.asarray(pred)
    if p.ndim != 0:
        raise with_location(ShapeError, f"{what}: the predicate must be a scalar, got shape {p.shape}")
    return p if p.type.dtype == "bool" else ops.not_equal(p, 0)


def cond(pred: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any], *operands: Any) -> Any:
    """``true_fn(*operands) if pred else false_fn(*operands)``, with ``pred`` a staged scalar.

    Both branches are traced (once each) and compiled; only one runs. A Python ``bool``
    predicate simply picks a branch while tracing.
    """
    if isinstance(pred, (bool, np.bool_)):
        return true_fn(*operands) if pred else false_fn(*operands)
    frame = current_frame()
    if frame is None:  # eager (lantern.eager): the branch the value picks
        return true_fn(*operands) if _eager_pred(pred, "cond") else false_fn(*operands)
    loc = user_location()
    p = _scalar_pred(pred, "cond")
    branches: list[TracedBody | None] = []
    unknown: UnknownRecursiveResult | None = None
    for fn in (true_fn, false_fn):
        try:
            branches.append(_trace(frame, fn, [], lambda _: operands))
        except UnknownRecursiveResult as exc:
            # The branch calls a recursive function whose result type is still unknown:
            # type this cond from the other branch; staging traces the function again.
            unknown = exc
            branches.append(None)
    known = [b for b in branches if b is not None]
    if not known:
        raise unknown  # type: ignore[misc]
    types, pending = _unify(frame, "cond", known, [n for n, b in zip(("true_fn", "false_fn"), branches) if b])
    outs = [Var(t, "cond") for t in types]
    if unknown is not None:
        frame.builder.needs_retrace.add(unknown.function_name)
        # A placeholder branch; this trace is discarded and redone with the type known.
        placeholder = Block(results=[])
        blocks = [b.block if b else placeholder for b in branches]
        frame.add(If(outs, loc=loc, pred=p.var, then_block=blocks[0], else_block=blocks[1]))
        return _with_pending(known[0].treedef, [Tensor(v, frame) for v in outs], pending)
    frame.add(If(outs, loc=loc, pred=p.var, then_block=branches[0].block, else_block=branches[1].block))
    return _with_pending(known[0].treedef, [Tensor(v, frame) for v in outs], pending)


def _lift_init(init: Any) -> tuple[TreeDef, list[Tensor], list[bool], list[bool]]:
    """The loop state as tensors, which were Python numbers (weak), and which were :data:`PENDING` (their
    tensor a placeholder until the body gives them a type)."""
    leaves, treedef = flatten(init)
    pending = [x is PENDING for x in leaves]
    return (treedef, [ops.asarray(0.0 if p else x) for x, p in zip(leaves, pending)],
            [_is_weak(x) for x in leaves], pending)


def _carried(what: str, frame: Frame, init_td: TreeDef, init: list[Tensor], body: TracedBody, name: str) -> None:
    if body.treedef != init_td:
        raise with_location(ShapeError, f"{what}: {name} returns structure {body.treedef} but the initial "
                            f"value has structure {init_td}")
    for i, (t0, t1) in enumerate(zip(init, body.leaves)):
        if t0.type == t1.type:
            continue
        if t0.shape == t1.shape and body.weak[i] and _join_weak(t0.type.dtype, [t1.type.dtype]) == t0.type.dtype:
            with frame.block(body.block):
                body.leaves[i] = ops.astype(t1, t0.type.dtype)
                body.block.results[i] = body.leaves[i].var
            continue
        raise with_location(DTypeError if t0.shape == t1.shape else ShapeError,
                            f"{what}: {name} changes carried value {i} from {t0.type} to {t1.type}; "
                            "the loop state must keep its shape and dtype (use astype)")


def _settled_body(init: list[Tensor], weak: list[bool], trace: Callable[[list[TensorType]], TracedBody],
                  pending: list[bool] | None = None) -> TracedBody:
    """The loop body traced for the carried values' types. A Python number as an initial value whose body
    result is a tensor of a dtype it promotes to (``0.0`` carried through float64 code) takes that dtype,
    as NumPy promotes a Python number, and the body is traced again for it. (Two Python numbers, ``0`` in
    and ``2.5`` out, stay an error: the int carry would truncate.) A :data:`PENDING` initial value that
    the body assigns starts as zeros of the assigned value's type (``pending`` is updated)."""
    body = trace([t.type for t in init])
    changed = False
    for k, t1 in enumerate(body.leaves[:len(init)]):  # (a body of another structure fails in _carried)
        if pending and pending[k] and not body.pending[k]:
            init[k], pending[k], weak[k] = ops.zeros(t1.shape, t1.type.dtype), False, False
            changed = True
    for k, (t0, t1) in enumerate(zip(init, body.leaves)):
        if weak[k] and not body.weak[k] and t0.shape == t1.shape and t0.type.dtype != t1.type.dtype \
                and _join_weak(t1.type.dtype, [t0.type.dtype]) == t1.type.dtype:
            init[k] = ops.astype(t0, t1.type.dtype)
            changed = True
    return trace([t.type for t in init]) if changed else body


def fori_loop(lower: Any, upper: Any, body_fun: Callable[[Tensor, Any], Any], init_val: Any) -> Any:
    """``for i in range(lower, upper): val = body_fun(i, val)``; returns ``val``.

    ``i`` is a staged int64 scalar; the bounds may be Python ints or staged integer scalars.
    """
    frame = current_frame()
    if frame is None:  # eager: a Python loop with the staged loop's checks
        lo, hi = (_eager_int_scalar(b, "fori_loop") for b in (lower, upper))
        td, val = _eager_init(init_val)
        for i in range(lo, hi):
            val = _eager_carried("fori_loop", td, val, body_fun(np.int64(i), unflatten(td, val)), "body_fun")
        return unflatten(td, val)
    loc = user_location()
    lo, hi = (ops.astype(_int_scalar(b, "fori_loop"), "int64") for b in (lower, upper))
    td, init, weak, pending = _lift_init(init_val)
    body = _settled_body(init, weak, lambda types: _trace(
        frame, body_fun, [Var(scalar("int64"), "i")] + [Var(t, "carry") for t in types],
        lambda ts: (ts[0], _with_pending(td, ts[1:], pending))), pending)
    _carried("fori_loop", frame, td, init, body, "body_fun")
    outs = [Var(t.type, "loop") for t in init]
    frame.add(Loop(outs, loc=loc, lo=lo.var, hi=hi.var, init=[t.var for t in init], body=body.block))
    return _with_pending(td, [Tensor(v, frame) for v in outs], pending)


def _int_scalar(x: Any, what: str) -> Tensor:
    t = ops.asarray(x)
    if t.ndim != 0 or t.type.dtype not in ("int32", "int64"):
        raise with_location(DTypeError, f"{what}: loop bounds must be integer scalars, got {t.type}")
    return t


def while_loop(cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any) -> Any:
    """``while cond_fun(val): val = body_fun(val)``; returns ``val``. The trip count is decided at run time."""
    frame = current_frame()
    if frame is None:  # eager: a Python loop with the staged loop's checks
        td, val = _eager_init(init_val)
        while _eager_pred(cond_fun(unflatten(td, val)), "while_loop cond_fun"):
            val = _eager_carried("while_loop", td, val, body_fun(unflatten(td, val)), "body_fun")
        return unflatten(td, val)
    loc = user_location()
    td, init, weak, pending = _lift_init(init_val)
    body = _settled_body(init, weak, lambda types: _trace(frame, body_fun, [Var(t, "carry") for t in types],
                                                          lambda ts: (_with_pending(td, ts, pending),)), pending)
    cparams = [Var(t.type, "carry") for t in init]
    cblock = _trace(frame, lambda *a: _scalar_pred(cond_fun(*a), "while_loop cond_fun"), cparams,
                    lambda ts: (_with_pending(td, ts, pending),))
    _carried("while_loop", frame, td, init, body, "body_fun")
    outs = [Var(t.type, "while") for t in init]
    frame.add(While(outs, loc=loc, init=[t.var for t in init], cond=cblock.block, body=body.block))
    return _with_pending(td, [Tensor(v, frame) for v in outs], pending)


def _scan_length(xs: list[Tensor], length: Any) -> int | Size:
    """The common leading size of ``xs`` (and ``length``, when given)."""
    if not xs and length is None:
        raise with_location(ShapeError, "scan: give xs or length (the number of iterations)")
    for x in xs:
        if x.ndim == 0:
            raise with_location(ShapeError, f"scan: every leaf of xs needs a leading axis to scan over, got a "
                                f"0-d {x.type}")
    n = xs[0].shape[0] if xs else length
    if length is not None and not isinstance(length, (int, np.integer, Size)):
        raise with_location(ShapeError, f"scan: length must be an int, got {type(length).__name__}")
    sizes = [x.shape[0] for x in xs] + ([length] if length is not None else [])
    if any(not known_equal(d, n) for d in sizes):
        shapes = ", ".join(str(list(x.shape)) for x in xs)
        raise with_location(ShapeError, f"scan: the leaves of xs must share their leading size (and equal length="
                            f"{length}), got shapes {shapes}")
    return n if isinstance(n, Size) else int(n)


def _split_pair(what: str, body: TracedBody) -> tuple[TreeDef, int]:
    """The structure of a scan body's carry and how many leaves it has (the body returns ``(carry, y)``)."""
    td = body.treedef
    if td.kind not in ("tuple", "list") or len(td.children) != 2:
        raise with_location(ShapeError, f"{what}: f must return a pair (carry, y), got structure {td}")
    return td.children[0], td.children[0].num_leaves


def scan(f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any = None, length: int | None = None,
         reverse: bool = False) -> tuple[Any, Any]:
    """JAX's ``lax.scan``: ``carry = init; for x in xs: carry, y = f(carry, x)``; returns ``(carry, ys)``,
    ``ys`` the ``y`` of every iteration stacked along a new leading axis (a pytree like ``y``).

    ``xs`` is a pytree of arrays sharing their leading size (or None, with ``length`` iterations and
    ``x = None``); ``reverse=True`` runs from the last row to the first (``ys`` stays in ``xs``'s order).
    The body is traced and compiled once, however long the scan; it is differentiable, with the
    counted loops' reverse mode (each iteration's carry is stored, its backward part recomputes the body).
    Scanning a block over stacked per-layer weights compiles a deep model as one block.
    """
    frame = current_frame()
    x_leaves, xs_td = flatten(xs)
    if frame is None:
        return _eager_scan(f, init, [as_array(x) for x in x_leaves], xs_td, length, reverse)
    loc = user_location()
    x_tensors = [ops.asarray(x) for x in x_leaves]
    n = _scan_length(x_tensors, length)
    td, init_t, weak, pending = _lift_init(init)
    k = len(init_t)

    def body_fun(i: Tensor, *carry: Any) -> tuple[Any, Any]:
        row = ops.subtract(ops.asarray(n, "int64"), ops.add(i, 1)) if reverse else i
        return f(_with_pending(td, list(carry), pending), unflatten(xs_td, [x[row] for x in x_tensors]))

    def trace(types: list[TensorType]) -> TracedBody:
        body = _trace(frame, body_fun, [Var(scalar("int64"), "i")] + [Var(t, "carry") for t in types],
                      lambda ts: (ts[0], *ts[1:]))
        carry_td, carried = _split_pair("scan", body)
        if carried != k:
            raise with_location(ShapeError, f"scan: f returns a carry of structure {carry_td} but init has "
                                f"structure {td}")
        return body

    body = _settled_body(init_t, weak, trace, pending)
    carry_td, _ = _split_pair("scan", body)
    ys_td = body.treedef.children[1]
    carry = TracedBody(body.block, carry_td, body.leaves[:k], body.weak[:k], body.pending[:k])
    _carried("scan", frame, td, init_t, carry, "f")
    # The ys: zero stacks made before the loop, row i written once per iteration.
    ys = [ops.zeros((n, *y.shape), y.type.dtype) for y in body.leaves[k:]]
    with frame.block(body.block):
        i = Tensor(body.block.params[0], frame)
        row = ops.subtract(ops.asarray(n, "int64"), ops.add(i, 1)) if reverse else i
        for stack, y in zip(ys, body.leaves[k:]):
            frame.add(Accumulate([], loc=loc, target=stack.var, value=ops.asarray(y).var, index=row.var,
                                 row_store=True))
    body.block.results = body.block.results[:k]
    outs = [Var(t.type, "scan") for t in init_t]
    lo, hi = ops.asarray(0, "int64"), ops.asarray(n, "int64")
    frame.add(Loop(outs, loc=loc, lo=lo.var, hi=hi.var, init=[t.var for t in init_t], body=body.block))
    return _with_pending(td, [Tensor(v, frame) for v in outs], pending), unflatten(ys_td, ys)


# ---------------------------------------------------------------- eager (outside staging, disable_stage)

def _eager_scan(f: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: list[np.ndarray], xs_td: TreeDef,
                length: Any, reverse: bool) -> tuple[Any, Any]:
    if not xs and length is None:
        raise with_location(ShapeError, "scan: give xs or length (the number of iterations)")
    n = len(xs[0]) if xs else int(length)
    if any(x.ndim == 0 or len(x) != n for x in xs) or (length is not None and int(length) != n):
        raise with_location(ShapeError, f"scan: the leaves of xs must share their leading size (and equal length="
                            f"{length}), got shapes {', '.join(str(list(x.shape)) for x in xs)}")
    td, carry = _eager_init(init)
    ys: list[Any] = [None] * n
    for t in (reversed(range(n)) if reverse else range(n)):
        out = f(unflatten(td, carry), unflatten(xs_td, [x[t] for x in xs]))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise with_location(ShapeError, "scan: f must return a pair (carry, y)")
        carry = _eager_carried("scan", td, carry, out[0], "f")
        ys[t] = flatten(out[1])
    if n == 0:
        raise with_location(ShapeError, "scan: outside a staged function, a scan needs at least one iteration "
                            "(the shape of ys is not known)")
    y_td = ys[0][1]
    stacked = [np.stack([as_array(y[0][j]) for y in ys]) for j in range(len(ys[0][0]))]
    return unflatten(td, carry), unflatten(y_td, stacked)


def _eager_pred(pred: Any, what: str) -> bool:
    p = as_array(pred)
    if p.ndim != 0:
        raise with_location(ShapeError, f"{what}: the predicate must be a scalar, got shape {p.shape}")
    return bool(p)


def _eager_int_scalar(x: Any, what: str) -> int:
    t = as_array(x)
    if t.ndim != 0 or t.dtype.name not in ("int32", "int64"):
        raise with_location(DTypeError, f"{what}: loop bounds must be integer scalars, got "
                            f"{TensorType(t.shape, t.dtype.name)}")
    return int(t)


def _eager_init(init: Any) -> tuple[TreeDef, list[np.ndarray]]:
    leaves, treedef = flatten(init)
    return treedef, [as_array(x) for x in leaves]


def _eager_carried(what: str, init_td: TreeDef, old: list[np.ndarray], new: Any, name: str) -> list[np.ndarray]:
    """The loop state after an iteration, checked as the staged loop checks it (:func:`_carried`)."""
    leaves, treedef = flatten(new)
    if treedef != init_td:
        raise with_location(ShapeError, f"{what}: {name} returns structure {treedef} but the initial "
                            f"value has structure {init_td}")
    out = []
    for i, (t0, x) in enumerate(zip(old, leaves)):
        t1 = as_array(x)
        if t0.shape == t1.shape and (t0.dtype == t1.dtype or (
                _is_weak(x) and _join_weak(t0.dtype.name, [t1.dtype.name]) == t0.dtype.name)):
            out.append(t1.astype(t0.dtype, copy=False))
            continue
        raise with_location(DTypeError if t0.shape == t1.shape else ShapeError,
                            f"{what}: {name} changes carried value {i} from {TensorType(t0.shape, t0.dtype.name)} "
                            f"to {TensorType(t1.shape, t1.dtype.name)}; the loop state must keep its shape and "
                            "dtype (use astype)")
    return out


__all__ = ["cond", "fori_loop", "scan", "while_loop"]
