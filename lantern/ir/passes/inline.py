"""Inline calls of non-recursive functions, so fusion and memory planning see one body, except a
large function called more than once: that one stays a function, so its code (and its gradient's)
is generated and compiled once however often the program calls it (a transformer block per layer)."""
from __future__ import annotations

import os
from collections import Counter

from ..nodes import Call, Function, Module, Stmt, Var, walk_stmts
from ..rewrite import clone_block
from ..types import FnType

#: A non-recursive function called more than once stays a function (is not inlined) from this
#: many statements, counted after inlining its own callees: a transformer block (86 in the
#: Llama model) stays a function, one-line helpers are inlined (fusion across the call, no call
#: overhead). Not tuned beyond that yet; ``LANTERN_INLINE_LIMIT`` overrides it (0: inline all).
SHARED_FUNCTION_MIN_STMTS = 64


def _callees(fn: Function) -> list[str]:
    return [s.fn for s in walk_stmts(fn.body) if isinstance(s, Call)]


def recursive_functions(module: Module) -> set[str]:
    """Names of functions that can reach themselves through calls."""
    graph = {name: set(_callees(fn)) for name, fn in module.functions.items()}
    recursive = set()
    for start in graph:
        seen, stack = set(), list(graph[start])
        while stack:
            n = stack.pop()
            if n == start:
                recursive.add(start)
                break
            if n not in seen:
                seen.add(n)
                stack.extend(graph.get(n, ()))
    return recursive


def _reachable(module: Module, start: str) -> list[str]:
    """The functions ``start`` calls, directly or not, and itself (in discovery order)."""
    reachable = {start: None}
    frontier = [start]
    while frontier:
        for callee in _callees(module.functions[frontier.pop()]):
            if callee not in reachable:
                reachable[callee] = None
                frontier.append(callee)
    return list(reachable)


def _limit() -> int:
    value = os.environ.get("LANTERN_INLINE_LIMIT", "")
    return int(value) if value.strip().isdigit() else SHARED_FUNCTION_MIN_STMTS


def shared_functions(module: Module, recursive: set[str] | None = None) -> set[str]:
    """The non-recursive functions that stay functions: called from more than one place once the
    functions around them are inlined, and at least :data:`SHARED_FUNCTION_MIN_STMTS` statements
    long with their own inlined callees. (A function taking a continuation, a CPS gradient, is never
    inlined into its callers' continuations: it stays whenever its source function did.) ``recursive``:
    :func:`recursive_functions` of ``module``, when the caller has it."""
    limit = _limit()
    if limit <= 0:
        return set()
    recursive = recursive_functions(module) if recursive is None else recursive
    kept: set[str] = set(recursive) | {module.entry}
    sizes: dict[str, int] = {}

    def size(name: str) -> int:  # statements after inlining (a DAG below the recursive functions)
        if name not in sizes:
            fn = module.functions[name]
            sizes[name] = sum(1 if not isinstance(s, Call) or s.fn in recursive else size(s.fn)
                              for s in walk_stmts(fn.body))
        return sizes[name]

    # How often each function's code would appear: a kept function's body once, an inlined one's
    # once per appearance of its caller. Callers before callees (a topological order of the DAG).
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for callee in _callees(module.functions[name]):
            if callee not in recursive:
                visit(callee)
        order.append(name)

    for name in _reachable(module, module.entry):
        visit(name)
    appearances: Counter[str] = Counter()
    for name in reversed(order):
        fn = module.functions[name]
        if name not in kept:
            takes_continuation = any(isinstance(p.type, FnType) for p in fn.body.params)
            if appearances[name] > 1 and (size(name) >= limit or takes_continuation):
                kept.add(name)
        times = 1 if name in kept else appearances[name]
        for callee in _callees(fn):
            if callee not in recursive:
                appearances[callee] += times
    return kept - {module.entry} - recursive


def inline_calls(module: Module, keep_checkpoints: bool = False) -> Module:
    """Replace every call of a non-recursive function that is not shared (see :func:`shared_functions`)
    by a copy of its body; drop unused functions. ``keep_checkpoints`` (before AD): calls marked
    ``checkpoint`` stay calls too."""
    recursive = recursive_functions(module)
    stay = recursive | shared_functions(module, recursive)

    def inline(call: Call, args: list[Var]) -> tuple[list[Stmt], list[Var]] | None:
        if call.fn in stay or (keep_checkpoints and call.checkpoint):
            return None
        callee = module.functions[call.fn]
        subst = {p.id: a for p, a in zip(callee.body.params, args)}
        params_free = callee.body.__class__([], callee.body.stmts, callee.body.results)
        body = clone_block(params_free, subst, inline)
        return body.stmts, body.results

    checkpointed = {s.fn for fn in module.functions.values() for s in walk_stmts(fn.body)
                    if isinstance(s, Call) and s.checkpoint} if keep_checkpoints else set()
    functions: dict[str, Function] = {}
    for name, fn in module.functions.items():
        if name != module.entry and name not in stay and name not in checkpointed:
            continue
        body = clone_block(fn.body, {}, inline, rename=False)
        functions[name] = Function(name, body, fn.result_types, fn.loc)
    reachable = set(_reachable(Module(functions, module.entry), module.entry))
    return Module({n: f for n, f in functions.items() if n in reachable}, module.entry)
