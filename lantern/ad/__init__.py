"""Reverse-mode automatic differentiation: ``grad`` and ``value_and_grad``.

Both work inside a staged function (forward, backward and the update become one native
call) and directly on NumPy arrays (then they stage themselves). The gradient is computed
by a CPS transformation of the function's IR (see :mod:`lantern.ad.transform`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from ..errors import TraceError
from ..ir.nodes import Block, Call, Function, Module, Var
from ..ir.types import FLOAT_DTYPES, FnType
from ..staging import Staged
from ..tensor import Tensor
from ..tracing import Frame, current_frame, tracing, with_location
from ..tree import flatten, unflatten
from .checkpoint import checkpoint
from .functionalize import functionalize
from .transform import Differentiator

__all__ = ["checkpoint", "grad", "value_and_grad"]


def _inlined(builder_functions: dict[str, Function], name: str) -> dict[str, Function]:
    """The functions ``name`` needs with non-recursive calls inlined (recursive ones stay), products in
    their canonical form, one-hot products and columns of loop-invariant matrices as row gathers, and
    loop-invariant copies moved out of loops (their gradients are cheaper)."""
    from ..ir.passes import (canonical_products, column_gathers_as_rows, hoist_loop_invariants, inline_calls,
                             one_hot_products_as_gathers)
    module = column_gathers_as_rows(canonical_products(inline_calls(Module(dict(builder_functions), name),
                                                                    keep_checkpoints=True)))
    return hoist_loop_invariants(one_hot_products_as_gathers(module)).functions


def _differentiate(frame: Frame, name: str, wrt: list[int], loss_index: int) -> str:
    """Add ``<name>_grad`` to the module: the values of ``name``, then d loss / d (params ``wrt``)."""
    builder = frame.builder
    key = ("grad", name, tuple(wrt), loss_index)
    if key in builder.specializations:
        return builder.specializations[key]
    functions = _inlined(builder.functions, name)
    fn = functions[name]
    fn = Function(fn.name, functionalize(fn.body), fn.result_types, fn.loc)  # grad of a gradient
    gname = builder.fresh_name(f"{name}_grad")
    gframe = Frame(builder, gname)
    params = [Var(p.type, p.hint) for p in fn.body.params]
    block = Block(params=params)
    cps = functools.partial(_cps_version, builder, functions)
    with tracing(gframe), gframe.block(block):
        results = Differentiator(gframe, fn, wrt, loss_index, cps).run(params)
        block.results = [t.var for t in results]
    builder.functions[gname] = Function(gname, block, tuple(r.type for r in block.results), fn.loc)
    builder.specializations[key] = gname
    return gname


def _cps_version(builder: Any, functions: dict[str, Function], name: str, final_types: tuple,
                 active: tuple[bool, ...]) -> str:
    """``<name>_cps(args, args_bar, k)`` for continuations returning ``final_types`` (built once per key).

    ``active`` says, per float parameter, whether the caller needs its adjoint: only those get an
    ``_bar`` parameter and backward code (a rotary table or a mask handed to a block costs nothing).
    """
    key = ("cps", name, final_types, active)
    if key in builder.specializations:
        return builder.specializations[key]
    fn = functions[name]
    cname = builder.fresh_name(f"{name}_cps")
    builder.specializations[key] = cname  # before tracing: the body calls it recursively
    floats = [i for i, p in enumerate(fn.body.params) if p.type.dtype in FLOAT_DTYPES]  # type: ignore[union-attr]
    wrt = [i for i, on in zip(floats, active, strict=True) if on]
    float_results = [t for t in fn.result_types or () if t.dtype in FLOAT_DTYPES]  # type: ignore[union-attr]
    params = [Var(p.type, p.hint) for p in fn.body.params]
    bars = [Var(params[i].type, params[i].hint + "_bar") for i in wrt]
    k = Var(FnType(tuple(fn.result_types or ()) + tuple(float_results), final_types), "k")
    frame = Frame(builder, cname)
    block = Block(params=params + bars + [k])
    builder.in_progress[cname] = None  # reserve the name: the body may need a version for other arguments
    try:
        with tracing(frame), frame.block(block):
            d = Differentiator(frame, fn, wrt, 0, functools.partial(_cps_version, builder, functions), final_types)
            block.results = [t.var for t in d.run_cps(params, bars, k)]
    finally:
        del builder.in_progress[cname]
    builder.functions[cname] = Function(cname, block, final_types, fn.loc)
    return cname


def value_and_grad(fun: Callable[..., Any], argnums: int | Sequence[int] = 0,
                   has_aux: bool = False) -> Callable[..., Any]:
    """``fun``'s value and its gradient with respect to the arguments ``argnums``.

    ``fun`` must return a float scalar (with ``has_aux``, a pair ``(scalar, aux)``). The
    gradient has the structure of the differentiated argument (a dict of parameters gives a
    dict of gradients); integer leaves get zero gradients. Returns ``(value, grads)``, or
    ``((value, aux), grads)`` with ``has_aux``; ``grads`` is a tuple when ``argnums`` is.
    """
    staged = fun if isinstance(fun, Staged) else Staged(fun, getattr(fun, "__name__", "fun"))
    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def traced(*args: Any, **kwargs: Any) -> Any:
        frame = current_frame()
        assert frame is not None
        call = staged.trace_closure(args, kwargs, positions)  # (Python floats there become variables)
        # Which IR parameters belong to the differentiated arguments.
        spans, start = [], 0
        for arg in call.bound:
            leaves = flatten(arg)[0]
            spans.append((start, start + len(leaves)))
            start += len(leaves)
        param_of = {}
        for leaf_index, leaf in enumerate(call.leaves):
            if isinstance(leaf, Tensor):
                param_of[leaf_index] = len(param_of)
        for p in positions:
            if not -len(call.bound) <= p < len(call.bound):
                raise with_location(TraceError, f"value_and_grad: argnums {p} is out of range for "
                                    f"{len(call.bound)} arguments")
        positions_n = [p % len(call.bound) for p in positions]
        wrt = [param_of[i] for p in positions_n for i in range(*spans[p]) if i in param_of]
        out_td = frame.builder.out_treedefs[call.name]
        fn = frame.builder.functions[call.name]
        loss_index = _loss_index(out_td, has_aux, fn, staged.name)
        gname = _differentiate(frame, call.name, wrt, loss_index)
        gfn = frame.builder.functions[gname]
        outs = [Var(t, "grad") for t in gfn.result_types or ()]
        frame.add(Call(outs, loc=fn.loc, fn=gname, args=[t.var for t in call.tensors] + call.captured))
        values = [Tensor(v, frame) for v in outs[:len(fn.body.results)]]
        grads = iter(Tensor(v, frame) for v in outs[len(fn.body.results):])
        grad_trees = []
        for p in positions_n:
            lo, hi = spans[p]
            arg_leaves = [next(grads) if i in param_of else None for i in range(lo, hi)]
            grad_trees.append(unflatten(flatten(call.bound[p])[1], arg_leaves))
        value = unflatten(out_td, values)
        return value, (grad_trees[0] if isinstance(argnums, int) else tuple(grad_trees))

    @functools.wraps(staged.fn)
    def host(*args: Any, **kwargs: Any) -> Any:
        return traced(*args, **kwargs)

    host_staged = Staged(host, f"value_and_grad_{staged.name}", staged.options)  # fun's checks apply
    host_staged.interpret_when_unstaged = True

    @functools.wraps(staged.fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_frame() is None:
            return host_staged(*args, **kwargs)
        return traced(*args, **kwargs)

    wrapper.lower = host_staged.lower  # type: ignore[attr-defined]
    return wrapper


def _loss_index(out_td: Any, has_aux: bool, fn: Function, name: str) -> int:
    if has_aux:
        if out_td.kind not in ("tuple", "list") or len(out_td.children) != 2 or out_td.children[0].kind != "leaf":
            raise with_location(TraceError, f"value_and_grad(has_aux=True): {name} must return a pair "
                                f"(loss, aux), got structure {out_td}")
    elif out_td.kind != "leaf":
        raise with_location(TraceError, f"value_and_grad: {name} must return one scalar loss, got structure "
                            f"{out_td} (use has_aux=True to return (loss, aux))")
    loss = fn.body.results[0]
    if loss.type.shape != () or loss.type.dtype not in FLOAT_DTYPES:  # type: ignore[union-attr]
        raise with_location(TraceError, f"value_and_grad: the loss of {name} must be a float scalar, "
                            f"got {loss.type}")
    return 0


def grad(fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable[..., Any]:
    """The gradient of ``fun`` (see :func:`value_and_grad`); with ``has_aux``, ``(grads, aux)``."""
    vg = value_and_grad(fun, argnums, has_aux)

    @functools.wraps(fun)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_frame() is None:
            return _host_grad(*args, **kwargs)
        (value, grads) = vg(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    _host_grad = Staged(functools.wraps(fun)(lambda *a, **k: wrapper(*a, **k)), f"grad_{getattr(fun, '__name__', 'fun')}",
                        fun.options if isinstance(fun, Staged) else None)
    _host_grad.interpret_when_unstaged = True
    wrapper.lower = _host_grad.lower  # type: ignore[attr-defined]
    return wrapper
