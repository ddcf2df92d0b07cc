"""Inline calls of non-recursive functions, so fusion and memory planning see one body."""
from __future__ import annotations

from ..nodes import Call, Function, Module, Stmt, Var, walk_stmts
from ..rewrite import clone_block


def _callees(fn: Function) -> set[str]:
    return {s.fn for s in walk_stmts(fn.body) if isinstance(s, Call)}


def recursive_functions(module: Module) -> set[str]:
    """Names of functions that can reach themselves through calls."""
    graph = {name: _callees(fn) for name, fn in module.functions.items()}
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


def inline_calls(module: Module) -> Module:
    """Replace every call of a non-recursive function by a copy of its body; drop unused functions."""
    recursive = recursive_functions(module)

    def inline(call: Call, args: list[Var]) -> tuple[list[Stmt], list[Var]] | None:
        if call.fn in recursive:
            return None
        callee = module.functions[call.fn]
        subst = {p.id: a for p, a in zip(callee.body.params, args)}
        params_free = callee.body.__class__([], callee.body.stmts, callee.body.results)
        body = clone_block(params_free, subst, inline)
        return body.stmts, body.results

    functions: dict[str, Function] = {}
    for name, fn in module.functions.items():
        if name != module.entry and name not in recursive:
            continue
        body = clone_block(fn.body, {}, inline, rename=False)
        functions[name] = Function(name, body, fn.result_types, fn.loc)
    reachable = {module.entry}
    frontier = [module.entry]
    while frontier:
        for callee in _callees(functions[frontier.pop()]):
            if callee not in reachable:
                reachable.add(callee)
                frontier.append(callee)
    return Module({n: f for n, f in functions.items() if n in reachable}, module.entry)
