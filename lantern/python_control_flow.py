"""Plain Python ``if``/``while``/``for`` on staged values (issue 15): the source of a staged function is
rewritten so that each of these statements (and ``a if c else b``, ``and``, ``or``, ``not``) calls a
function here that decides **while tracing**: on a Python value it runs as plain Python (so shapes and
configuration flags cost nothing), on a staged value it becomes ``lantern.cond``, ``while_loop`` or
``fori_loop``.

The variables a statement hands on are found by liveness: a branch or loop body becomes a function of
the variables it assigns, returning those that are read afterwards (a branch) or carried from one
iteration to the next (a loop). Under a staged condition, such a variable must then be defined on both
paths (before the loop), with one shape and dtype: else a ``TraceError`` names it and the line.

``continue`` moves the rest of the loop body into the other branch of its ``if``; ``break`` also sets a
flag the loop carries (a staged ``while`` tests it, a staged range runs its remaining iterations doing
nothing); an early ``return`` in an ``if`` moves the statements after it into the other branch, so both
branches return and the ``if`` becomes one ``cond``. A ``return v`` inside a loop records ``v`` and
breaks; after the loop, ``if returned: return v`` is such an early return (the recorded value starts as
``PENDING``, which a staged loop or branch gives the type of the value returned). Not rewritten (they
keep today's behaviour: a staged condition there is a ``ConcretizationError``): ``break``/``continue``/
``return`` inside ``try``/``with``, ``yield``, ``try``, ``with``, ``global`` and ``nonlocal`` around staged
conditions; loops with an ``else``. A ``for`` with a tuple target unpacks one loop variable in its body;
``enumerate`` and ``zip`` of staged tensors are staged loops over their first axis. The rewritten function keeps
the original file and line numbers, so errors and the C's comments point at the user's lines.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import linecache
import os
import re
import sys
import textwrap
import types
import warnings
from typing import Any, Callable, Sequence

from .errors import SourceUnavailableWarning, TraceError
from .ir.symbolic import Size
from .source import Loc
from .tracing import PENDING, with_location  # noqa: F401  (PENDING: read by rewritten code)

__all__ = ["convert", "converted_source"]

_HELPER = "__lantern_cf__"
#: Calls that look at their caller's frame: left as they are (through a helper they would see the helper's).
_FRAME_FUNCTIONS = frozenset({"super", "locals", "globals", "vars", "eval", "exec", "dir"})
_BLOCKERS = (ast.Break, ast.Continue, ast.Return, ast.Yield, ast.YieldFrom, ast.Await, ast.Try, ast.With,
             ast.AsyncWith, ast.Global, ast.Nonlocal)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)


# ------------------------------------------------------------------ what statements read and write

def _walk_scope(node: ast.AST):
    """``node`` and what it holds, not entering nested functions, classes or comprehensions."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, _SCOPES):
            yield from _walk_scope(child)
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from (d for deco in child.decorator_list for d in _walk_scope(deco))


def _reads(node: ast.AST) -> set[str]:
    """Names ``node`` reads, nested functions and comprehensions included (they may read them later)."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _assigned(node: ast.AST) -> set[str]:
    """Names ``node`` may assign in this scope."""
    out = set()
    for n in _walk_scope(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n is not node:
            out.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            out.update((a.asname or a.name).split(".")[0] for a in n.names)
    return out


def _surely_assigned(stmt: ast.stmt) -> set[str]:
    """Names ``stmt`` assigns on every path through it."""
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and not (
            isinstance(stmt, ast.AnnAssign) and stmt.value is None):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return {n.id for t in targets for n in _walk_scope(t) if isinstance(n, ast.Name)}
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, ast.If):
        return _sequence_assigned(stmt.body) & _sequence_assigned(stmt.orelse)
    return set()


def _sequence_assigned(stmts: Sequence[ast.stmt]) -> set[str]:
    out: set[str] = set()
    for s in stmts:
        out |= _surely_assigned(s)
    return out


def _exposed(stmts: Sequence[ast.stmt], done: frozenset[str] = frozenset()) -> set[str]:
    """Names read before the statements surely assign them (a loop carries those); ``done``: assigned
    before these statements."""
    assigned = set(done)
    out: set[str] = set()
    for s in stmts:
        if isinstance(s, ast.If):
            out |= (_reads(s.test) - assigned) | _exposed(s.body, frozenset(assigned)) | _exposed(
                s.orelse, frozenset(assigned))
        elif isinstance(s, (ast.While, ast.For)):
            head = s.test if isinstance(s, ast.While) else s.iter
            inside = assigned | (_assigned(s.target) if isinstance(s, ast.For) else set())
            out |= (_reads(head) - assigned) | _exposed(s.body, frozenset(inside)) | _exposed(
                s.orelse, frozenset(assigned))
        else:
            reads = _reads(s)
            if isinstance(s, ast.AugAssign):
                reads |= {n.id for n in _walk_scope(s.target) if isinstance(n, ast.Name)}
            out |= reads - assigned
        assigned |= _surely_assigned(s)
    return out


def _blocked(stmts: Sequence[ast.stmt], allowed: tuple[type, ...] = ()) -> bool:
    """Whether ``stmts`` hold a statement that cannot move into a function of its own (a ``break`` or
    ``continue`` of a loop around them, a ``return``, ``yield``, ``try``...). The exits of a loop inside
    them are that loop's business."""
    def blockers(node: ast.AST, in_loop: bool) -> Any:
        if isinstance(node, _BLOCKERS) and not isinstance(node, allowed) and not (
                in_loop and isinstance(node, (ast.Break, ast.Continue))):
            yield node
        if isinstance(node, (ast.For, ast.While, ast.AsyncFor)):  # its body's exits are its own, not its else's
            for s in node.body:
                yield from blockers(s, True)
            for s in node.orelse:
                yield from blockers(s, in_loop)
            return
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, _SCOPES):
                yield from blockers(child, in_loop)
    return any(True for s in stmts for _ in blockers(s, False))


def _loop_exits(stmts: Sequence[ast.stmt]) -> list[ast.stmt]:
    """The ``break`` and ``continue`` statements of this loop (not of loops or functions inside it)."""
    out: list[ast.stmt] = []
    for s in stmts:
        if isinstance(s, (ast.Break, ast.Continue)):
            out.append(s)
        elif isinstance(s, (ast.For, ast.While, ast.AsyncFor)):
            out += _loop_exits(s.orelse)  # (a break in an inner loop's else leaves this loop)
        elif not isinstance(s, _SCOPES):
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(s, field, None)
                if isinstance(inner, list):
                    out += _loop_exits([h for x in inner for h in (x.body if isinstance(x, ast.ExceptHandler)
                                                                   else [x])])
    return out


def _always_exits(stmts: Sequence[ast.stmt], kind: type) -> bool:
    """Every path through ``stmts`` ends in a ``kind`` statement (``break`` or ``continue``)."""
    if not stmts:
        return False
    last = stmts[-1]
    return isinstance(last, kind) or (isinstance(last, ast.If) and _always_exits(last.body, kind)
                                      and _always_exits(last.orelse, kind))


def _exits_lowered(stmts: list[ast.stmt], kind: type, replacement: Callable[[], list[ast.stmt]]) -> list[ast.stmt]:
    """``if c: ...; continue`` followed by more statements becomes ``if c: ...`` / ``else:`` those statements
    (as :func:`_early_returns_nested` does for ``return``), and each ``kind`` statement that ends a path is
    replaced (``continue``: by nothing; ``break``: by setting the loop's flag)."""
    for k, stmt in enumerate(stmts):
        rest = stmts[k + 1:]
        if isinstance(stmt, ast.If) and rest:
            if _always_exits(stmt.body, kind) and not _always_exits(stmt.orelse, kind):
                stmt.orelse = stmt.orelse + rest
                stmts = stmts[:k + 1]
                break
            if _always_exits(stmt.orelse, kind) and not _always_exits(stmt.body, kind):
                stmt.body = stmt.body + rest
                stmts = stmts[:k + 1]
                break
    out: list[ast.stmt] = []
    for stmt in stmts:
        if isinstance(stmt, kind):
            out += replacement()
            break  # (what follows a break or continue never runs)
        if isinstance(stmt, ast.If):
            stmt.body = _exits_lowered(stmt.body, kind, replacement) or [ast.Pass()]
            stmt.orelse = _exits_lowered(stmt.orelse, kind, replacement)
        out.append(stmt)
    return out


def _always_returns(stmts: Sequence[ast.stmt]) -> bool:
    """Every path through ``stmts`` ends in ``return`` (or ``raise``)."""
    if not stmts:
        return False
    last = stmts[-1]
    if isinstance(last, (ast.Return, ast.Raise)):
        return True
    return isinstance(last, ast.If) and _always_returns(last.body) and _always_returns(last.orelse)


def _early_returns_nested(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """``if c: return a`` followed by more statements becomes ``if c: return a`` / ``else:`` those statements
    (and the same with the branches swapped), so that an early return is an ``if`` both of whose branches
    return: one expression, a ``cond`` when ``c`` is staged."""
    for k, stmt in enumerate(stmts):
        rest = stmts[k + 1:]
        if not isinstance(stmt, ast.If) or not rest:
            continue
        stmt.body = _early_returns_nested(stmt.body)
        stmt.orelse = _early_returns_nested(stmt.orelse)
        if _always_returns(stmt.body) and not _always_returns(stmt.orelse):
            stmt.orelse = _early_returns_nested(stmt.orelse + rest)
            return stmts[:k + 1]
        if _always_returns(stmt.orelse) and stmt.orelse and not _always_returns(stmt.body):
            stmt.body = _early_returns_nested(stmt.body + rest)
            return stmts[:k + 1]
    return stmts


def _returns_to_breaks(stmts: list[ast.stmt], flag: str, values: list[str], as_tuple: bool) -> list[ast.stmt]:
    """Each ``return v`` of a loop body (at the top or in ``if`` branches) becomes ``value = v; flag = True;
    break`` (``as_tuple``: every return is ``return a, b``, and ``values`` has one variable per element)."""
    out: list[ast.stmt] = []
    for s in stmts:
        if isinstance(s, ast.Return):
            target = _tuple(values, store=True) if as_tuple else _name(values[0], store=True)
            out += [_located(ast.Assign(targets=[target], value=s.value), s),
                    _located(ast.Assign(targets=[_name(flag, store=True)], value=ast.Constant(True)), s),
                    _located(ast.Break(), s)]
            break  # (what follows a return never runs)
        if isinstance(s, ast.If):
            s.body = _returns_to_breaks(s.body, flag, values, as_tuple)
            s.orelse = _returns_to_breaks(s.orelse, flag, values, as_tuple)
        out.append(s)
    return out


def _returns_in_ifs(stmts: Sequence[ast.stmt]) -> int:
    """How many ``return`` statements ``stmts`` hold at the top or inside ``if`` branches."""
    return sum(1 if isinstance(s, ast.Return) else
               _returns_in_ifs(s.body) + _returns_in_ifs(s.orelse) if isinstance(s, ast.If) else 0 for s in stmts)


def _returns_in_loops_lowered(stmts: list[ast.stmt], fresh: Callable[[str], str]) -> list[ast.stmt]:
    """A loop whose body returns (``for x in xs: if c: return v``) becomes a loop that records the value
    and breaks, followed by ``if returned: return value`` (which the early-return rewrite then makes an
    ``if`` whose other branch is the rest of the function). The recorded value starts as
    :data:`~lantern.tracing.PENDING`: a staged loop gives it the type of the returned value. Inner loops
    first; loops where a return sits elsewhere (a ``try``, a nested ``with``) or returns nothing are left."""
    out: list[ast.stmt] = []
    for s in stmts:
        if isinstance(s, ast.If):
            s.body = _returns_in_loops_lowered(s.body, fresh)
            s.orelse = _returns_in_loops_lowered(s.orelse, fresh)
        elif isinstance(s, (ast.For, ast.While)) and not s.orelse:
            s.body = _returns_in_loops_lowered(s.body, fresh)
            returns = [n for b in s.body for n in _walk_scope(b) if isinstance(n, ast.Return)]
            if returns and all(r.value is not None for r in returns) and _returns_in_ifs(s.body) == len(returns):
                # a tuple returned everywhere (``return h, c``): one variable per element, so each element
                # takes the type of what is returned there
                sizes = {len(r.value.elts) if isinstance(r.value, ast.Tuple) and not any(  # type: ignore[union-attr]
                    isinstance(e, ast.Starred) for e in r.value.elts) else -1 for r in returns}  # type: ignore[union-attr]
                as_tuple = len(sizes) == 1 and min(sizes) >= 1
                flag = fresh("returned")
                values = [fresh("return_value") for _ in range(max(sizes) if as_tuple else 1)]
                # `while True:` left only by a return: the value is returned after it, unconditionally
                only_returns = isinstance(s, ast.While) and isinstance(s.test, ast.Constant) and bool(s.test.value) \
                    and not any(isinstance(e, ast.Break) for e in _loop_exits(s.body))
                s.body = _returns_to_breaks(s.body, flag, values, as_tuple)
                value = _tuple(values) if as_tuple else _name(values[0])
                tail = ast.Return(value=value) if only_returns else \
                    ast.If(test=_name(flag), body=[ast.Return(value=value)], orelse=[])
                out += [_located(ast.Assign(targets=[_name(flag, store=True)], value=ast.Constant(False)), s),
                        *(_located(ast.Assign(targets=[_name(v, store=True)], value=_helper("PENDING")), s)
                          for v in values), s, _located(tail, s)]
                continue
        out.append(s)
    return out


# ------------------------------------------------------------------ the rewrite

def _name(id_: str, store: bool = False) -> ast.Name:
    return ast.Name(id=id_, ctx=ast.Store() if store else ast.Load())


def _helper(attr: str) -> ast.Attribute:
    return ast.Attribute(value=_name(_HELPER), attr=attr, ctx=ast.Load())


def _tuple(names: Sequence[str], store: bool = False) -> ast.Tuple:
    return ast.Tuple(elts=[_name(n, store) for n in names], ctx=ast.Store() if store else ast.Load())


def _current(names: Sequence[str]) -> ast.Tuple:
    """``(value of n, ...)``: each variable's value now, or the helper's UNDEFINED when it has none."""
    locals_call = ast.Call(func=_name("locals"), args=[], keywords=[])
    return ast.Tuple(elts=[ast.Call(func=_helper("value"), args=[locals_call, ast.Constant(n)], keywords=[])
                           for n in names], ctx=ast.Load())


_LIST_MUTATORS = frozenset({"append", "extend", "insert"})


def _appended_to(body: Sequence[ast.stmt]) -> ast.Tuple:
    """``((value, name, line), ...)`` of the variables from outside a loop body that it appends to
    (``outs.append(h)``): a staged loop runs its body once while tracing, so a Python list there is an
    error (see :func:`_check_no_list_growth`)."""
    assigned = _assigned(ast.Module(body=list(body), type_ignores=[]))
    found: dict[str, int] = {}
    for s in body:
        for n in _walk_scope(s):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _LIST_MUTATORS \
                    and isinstance(n.func.value, ast.Name) and n.func.value.id not in assigned:
                found.setdefault(n.func.value.id, n.lineno)
    values = _current(list(found)).elts
    return ast.Tuple(elts=[ast.Tuple(elts=[v, ast.Constant(name), ast.Constant(line)], ctx=ast.Load())
                           for v, (name, line) in zip(values, found.items())], ctx=ast.Load())


def _function(name: str, params: Sequence[str], body: list[ast.stmt], results: Sequence[str] | None
              ) -> ast.FunctionDef:
    """``def name(params): body; return (results)`` (``results`` None: the body returns by itself)."""
    args = ast.arguments(posonlyargs=[], args=[ast.arg(arg=p) for p in params], vararg=None, kwonlyargs=[],
                         kw_defaults=[], kwarg=None, defaults=[])
    tail = [] if results is None else [ast.Return(value=_tuple(results))]
    return ast.FunctionDef(name=name, args=args, body=body + tail, decorator_list=[], returns=None,
                           type_comment=None)


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.count = 0
        self.changed = False

    def fresh(self, what: str) -> str:
        self.count += 1
        return f"__lantern_{what}_{self.count}"

    # -- statement lists, back to front, with the names live after each statement
    def body(self, stmts: list[ast.stmt], live_out: set[str]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        live = set(live_out)
        stmts = _early_returns_nested(_returns_in_loops_lowered(stmts, self.fresh))
        for stmt in reversed(stmts):
            out[:0] = self.statement(stmt, live)
            live = (live - _surely_assigned(stmt)) | _reads(stmt)
        return out

    def statement(self, stmt: ast.stmt, live: set[str]) -> list[ast.stmt]:
        """``stmt``, rewritten; what the rewrite adds carries its line (errors and the C name it)."""
        return [_located(s, stmt) for s in self.rewrite(stmt, live)]

    def rewrite(self, stmt: ast.stmt, live: set[str]) -> list[ast.stmt]:
        if isinstance(stmt, ast.ClassDef):
            return [stmt]
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stmt.body = self.body(stmt.body, set())
            stmt.decorator_list = [self.visit(d) for d in stmt.decorator_list]
            return [stmt]
        if isinstance(stmt, ast.If) and not _blocked([stmt]):
            return self.if_(stmt, live)
        if isinstance(stmt, ast.If) and _always_returns(stmt.body) and _always_returns(stmt.orelse) \
                and not _blocked([stmt], allowed=(ast.Return,)):
            return self.returning_if(stmt)
        if isinstance(stmt, ast.For) and isinstance(stmt.target, (ast.Tuple, ast.List)) and not stmt.orelse:
            stmt = self.unpacked_in_body(stmt)  # for i, x in enumerate(xs): one loop variable, unpacked
        if isinstance(stmt, (ast.While, ast.For)) and not stmt.orelse and (
                isinstance(stmt, ast.While) or isinstance(stmt.target, ast.Name)):
            flag, lowered = self.loop_exits_lowered(stmt)
            if lowered is not None and not _blocked(lowered.body):
                setup = [ast.Assign(targets=[_name(flag, store=True)], value=ast.Constant(False))] if flag else []
                loop = self.while_(lowered, live, flag) if isinstance(lowered, ast.While) else \
                    self.for_(lowered, live, flag)
                return setup + loop
        # not rewritten: its parts still are
        inner_live = live | _reads(stmt)
        for field in ("body", "orelse", "finalbody"):
            if isinstance(getattr(stmt, field, None), list) and getattr(stmt, field) and \
                    isinstance(getattr(stmt, field)[0], ast.stmt):
                setattr(stmt, field, self.body(getattr(stmt, field), inner_live))
        if isinstance(stmt, ast.Try):
            for handler in stmt.handlers:
                handler.body = self.body(handler.body, inner_live)
        for field, value in ast.iter_fields(stmt):
            if isinstance(value, ast.expr):
                setattr(stmt, field, self.visit(value))
        return [stmt]

    def if_(self, stmt: ast.If, live: set[str]) -> list[ast.stmt]:
        self.changed = True
        params = sorted(_assigned(ast.Module(body=stmt.body + stmt.orelse, type_ignores=[])))
        results = [n for n in params if n in live]
        true_name, false_name = self.fresh("if_true"), self.fresh("if_false")
        true_fn = _function(true_name, params, self.body(stmt.body, set(results)), results)
        false_fn = _function(false_name, params, self.body(stmt.orelse, set(results)) or [ast.Pass()], results)
        call = ast.Call(func=_helper("if_stmt"), args=[
            self.visit(stmt.test), _name(true_name), _name(false_name), _current(params), ast.Constant(tuple(params)),
            ast.Constant(tuple(results)), ast.Constant(stmt.lineno)], keywords=[])
        return [true_fn, false_fn, self.assign(results, call)]

    def loop_exits_lowered(self, stmt: ast.While | ast.For) -> tuple[str | None, Any]:
        """``stmt`` with its ``continue`` statements turned into moved code and its ``break`` statements into a
        flag the loop carries (``(flag name or None, the loop)``), or ``(None, None)`` when an exit sits
        where this cannot be done (inside a ``try``, say)."""
        exits = _loop_exits(stmt.body)
        if not exits:
            return None, stmt
        import copy
        loop = copy.deepcopy(stmt)
        loop.body = _exits_lowered(loop.body, ast.Continue, lambda: [])
        flag = None
        if any(isinstance(e, ast.Break) for e in exits):
            flag = self.fresh("broke")
            loop.body = _exits_lowered(loop.body, ast.Break, lambda: [
                ast.Assign(targets=[_name(flag, store=True)], value=ast.Constant(True))])
            # later iterations do nothing once the flag is set (a staged range cannot stop early)
            loop.body = [ast.If(test=ast.UnaryOp(op=ast.Not(), operand=_name(flag)), body=loop.body, orelse=[])]
        if _loop_exits(loop.body):
            return None, None
        loop.body = loop.body or [ast.Pass()]
        return flag, _located(loop, stmt)

    def unpacked_in_body(self, stmt: ast.For) -> ast.For:
        """``for a, b in it: body`` as ``for item in it: a, b = item; body`` (then a staged ``enumerate`` or
        ``zip`` of tensors gives each item as a tuple)."""
        item = self.fresh("item")
        unpack = _located(ast.Assign(targets=[stmt.target], value=_name(item)), stmt)
        return _located(ast.For(target=_name(item, store=True), iter=stmt.iter, body=[unpack, *stmt.body],
                                orelse=[], type_comment=None), stmt)

    def returning_if(self, stmt: ast.If) -> list[ast.stmt]:
        """``if c: ... return a`` / ``else: ... return b``: ``return`` of the chosen branch's value."""
        self.changed = True
        params = sorted(_assigned(ast.Module(body=stmt.body + stmt.orelse, type_ignores=[])))
        true_name, false_name = self.fresh("if_true"), self.fresh("if_false")
        true_fn = _function(true_name, params, self.body(stmt.body, set()), None)
        false_fn = _function(false_name, params, self.body(stmt.orelse, set()), None)
        call = ast.Call(func=_helper("if_return"), args=[
            self.visit(stmt.test), _name(true_name), _name(false_name), _current(params), ast.Constant(stmt.lineno)],
            keywords=[])
        return [true_fn, false_fn, ast.Return(value=call)]

    def while_(self, stmt: ast.While, live: set[str], flag: str | None = None) -> list[ast.stmt]:
        self.changed = True
        assigned = sorted(_assigned(ast.Module(body=stmt.body, type_ignores=[])))
        carried = [n for n in assigned if n in live or n in _reads(stmt.test) or n in _exposed(stmt.body)]
        test_name, body_name = self.fresh("while_test"), self.fresh("while_body")
        test_fn = _function(test_name, carried, [], [])
        test = self.visit(stmt.test)
        if flag:  # not after a break: `not flag and test`, the test not evaluated after a break
            test = ast.Call(func=_helper("unless_broken"), args=[_name(flag), _thunk(test)], keywords=[])
        test_fn.body = [ast.Return(value=test)]
        appended = _appended_to(stmt.body)
        body_fn = _function(body_name, carried, self.body(stmt.body, set(carried)), carried)
        call = ast.Call(func=_helper("while_stmt"), args=[
            _name(test_name), _name(body_name), _current(carried), ast.Constant(tuple(carried)),
            ast.Constant(stmt.lineno), appended], keywords=[])
        return [test_fn, body_fn, self.assign(carried, call)]

    def for_(self, stmt: ast.For, live: set[str], flag: str | None = None) -> list[ast.stmt]:
        self.changed = True
        target = stmt.target.id  # type: ignore[attr-defined]
        assigned = sorted(_assigned(ast.Module(body=stmt.body, type_ignores=[])) - {target})
        carried = [n for n in assigned if n in live or n in _exposed(stmt.body)]
        results = carried + ([target] if target in live else [])
        body_name = self.fresh("for_body")
        appended = _appended_to(stmt.body)
        body = self.body(stmt.body, set(results))
        body_fn = _function(body_name, [target] + carried, body, results)
        if isinstance(stmt.iter, ast.Call) and isinstance(stmt.iter.func, ast.Name) and stmt.iter.func.id == "range":
            iterable: ast.expr = ast.Call(func=_helper("range_"), args=[self.visit(a) for a in stmt.iter.args],
                                          keywords=[self.visit(k) for k in stmt.iter.keywords])
        else:
            iterable = self.visit(stmt.iter)
        call = ast.Call(func=_helper("for_stmt"), args=[
            iterable, _name(body_name), _current(carried), _current([target]), ast.Constant(tuple(carried)),
            ast.Constant(target in live), ast.Constant(stmt.lineno), ast.Constant(flag), appended], keywords=[])
        return [body_fn, self.assign(results, call)]

    @staticmethod
    def assign(names: Sequence[str], call: ast.Call) -> ast.stmt:
        if not names:
            return ast.Expr(value=call)
        return ast.Assign(targets=[_tuple(names, store=True)], value=call)

    # -- expressions
    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.changed = True
        return _located(ast.Call(func=_helper("if_exp"), args=[
            self.visit(node.test), _thunk(self.visit(node.body)), _thunk(self.visit(node.orelse)),
            ast.Constant(node.lineno)], keywords=[]), node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.changed = True
        attr = "and_" if isinstance(node.op, ast.And) else "or_"
        return _located(ast.Call(func=_helper(attr), args=[_thunk(self.visit(v)) for v in node.values], keywords=[]),
                        node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if isinstance(node.op, ast.Not):
            self.changed = True
            return _located(ast.Call(func=_helper("not_"), args=[node.operand], keywords=[]), node)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node.body = self.visit(node.body)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        """``f(...)`` becomes ``call(f, ...)``: a function of the user's that ``f`` is runs rewritten too."""
        node = self.generic_visit(node)  # type: ignore[assignment]
        if isinstance(node.func, ast.Name) and node.func.id in _FRAME_FUNCTIONS:
            return node
        self.changed = True  # (a function without if/while/for may still call one that has them)
        return _located(ast.Call(func=_helper("call"), args=[node.func, *node.args], keywords=node.keywords), node)


def _located(node: ast.AST, origin: ast.AST) -> Any:
    """``node`` with ``origin``'s position on every part of it that has none."""
    for n in ast.walk(node):
        if "lineno" in n._attributes and not hasattr(n, "lineno"):
            ast.copy_location(n, origin)
    return node


def _thunk(expr: ast.expr) -> ast.Lambda:
    args = ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None,
                         defaults=[])
    return ast.Lambda(args=args, body=expr)


# ------------------------------------------------------------------ converting a function

_warned_about: set[str] = set()


def _parse(fn: Callable[..., Any]) -> tuple[ast.FunctionDef, str, int] | None:
    try:
        lines, first = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return None
    text = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(text)
    except SyntaxError:  # a lambda inside a larger expression, say
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef) or node.name != fn.__name__ or not _same_parameters(node, fn.__code__):
        return None  # (also when the file changed on disk since it was imported: its lines are another function's)
    return node, text, first


def _same_parameters(node: ast.FunctionDef, code: types.CodeType) -> bool:
    a = node.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return names == list(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])


def convert(fn: Callable[..., Any], warn: bool = True) -> Callable[..., Any] | None:
    """``fn`` with its Python control flow rewritten (see the module docstring), or None when there is
    nothing to rewrite or the source cannot be read (then ``fn`` runs as it is; ``warn``: say so once)."""
    if isinstance(fn, types.MethodType):  # a bound method (stage(self.step)): its function, bound again
        new = convert(fn.__func__, warn)
        return None if new is None else types.MethodType(new, fn.__self__)
    if not isinstance(fn, types.FunctionType) or fn.__name__ == "<lambda>" or fn.__code__.co_flags & (
            inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR) \
            or _HELPER in fn.__code__.co_freevars:  # (already rewritten)
        return None
    parsed = _parse(fn)
    if parsed is None:
        if warn and fn.__qualname__ not in _warned_about and _has_branches(fn):
            _warned_about.add(fn.__qualname__)
            warnings.warn(f"lantern: the source of {fn.__qualname__} cannot be read (defined in a REPL or generated): "
                          "its Python if/while/for run as plain Python, so a staged condition there is an error; "
                          "use lantern.cond, while_loop and fori_loop", SourceUnavailableWarning, stacklevel=4)
        return None
    node, _, first = parsed
    ast.increment_lineno(node, first - 1)  # the file's line numbers, before the rewrite records them
    rewriter = _Rewriter()
    node.decorator_list = []
    node.body = rewriter.body(node.body, set())
    if not rewriter.changed:
        return None
    freevars = fn.__code__.co_freevars
    node.name = "__lantern_converted__"  # (under its own name, a recursive call would read the factory's local)
    factory = ast.FunctionDef(name="__lantern_factory__", args=ast.arguments(
        posonlyargs=[], args=[ast.arg(arg=a) for a in (*freevars, _HELPER)], vararg=None, kwonlyargs=[],
        kw_defaults=[], kwarg=None, defaults=[]), body=[node, ast.Return(value=_name(node.name))],
        decorator_list=[], returns=None, type_comment=None)
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, fn.__code__.co_filename, "exec")
    factory_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    inner = next(c for c in factory_code.co_consts if isinstance(c, types.CodeType)
                 and c.co_name == "__lantern_converted__").replace(co_name=fn.__name__, co_qualname=fn.__qualname__)
    cells = dict(zip(freevars, fn.__closure__ or ()))
    cells[_HELPER] = types.CellType(sys.modules[__name__])
    new = types.FunctionType(inner, fn.__globals__, fn.__name__, fn.__defaults__,
                             tuple(cells[name] for name in inner.co_freevars))
    new.__kwdefaults__ = fn.__kwdefaults__
    functools.update_wrapper(new, fn, updated=())
    node.name = fn.__name__
    new.__lantern_converted_source__ = ast.unparse(node)  # type: ignore[attr-defined]
    return new


def _has_branches(fn: Callable[..., Any]) -> bool:
    """Whether ``fn``'s bytecode jumps (an if, a loop, and/or), so a missing source matters."""
    import dis
    return any("JUMP" in ins.opname for ins in dis.get_instructions(fn))


_converted: dict[types.CodeType, Callable[..., Any] | None] = {}


def _users(fn: Any) -> bool:
    """A plain function of the user's: not lantern's (but for its demo and models, written as users write),
    not the standard library's or an installed package's."""
    if not isinstance(fn, types.FunctionType) or fn.__name__ == "<lambda>":
        return False
    from .trace_cache import _trusted_file
    file = fn.__code__.co_filename
    if file.startswith("<"):  # generated code: the user's if its lines were registered (linecache)
        return not file.startswith("<frozen") and bool(linecache.getlines(file))
    return not _trusted_file(file) or written_as_users_write(file)


def written_as_users_write(file: str) -> bool:
    """A file of lantern's that is example code (the demo, the models): its control flow is rewritten too."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    return file.startswith(package) and (file == package + "demo.py" or file.startswith(package + "models" + os.sep))


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with ``fn``'s own if/while/for rewritten when it is a function of the user's
    (converted once per function; the rest is called as it is)."""
    if fn is len and len(args) == 1 and not kwargs and _staged(args[0]) and args[0].ndim \
            and isinstance(args[0].shape[0], Size):
        return args[0].shape[0]  # a run-time length stays one (Python's len() must return an int)
    items = _staged_items(fn, args, kwargs) if fn is enumerate or fn is zip else None
    if items is not None:
        return items
    target, bound = (fn.__func__, fn.__self__) if isinstance(fn, types.MethodType) else (fn, None)
    if not _users(target):
        return fn(*args, **kwargs)
    code = target.__code__
    if code not in _converted:
        _converted[code] = convert(target, warn=False)
    new = _converted[code]
    if new is None:
        return fn(*args, **kwargs)
    if new.__closure__ != _closure_of(target, new) or new.__defaults__ != target.__defaults__:
        new = _rebuilt(new, target)  # the same code for another closure (a function made in a loop, say)
    return new(bound, *args, **kwargs) if bound is not None else new(*args, **kwargs)


def _closure_of(original: types.FunctionType, new: types.FunctionType) -> tuple | None:
    cells = dict(zip(original.__code__.co_freevars, original.__closure__ or ()))
    cells[_HELPER] = None
    return tuple(cells.get(n) if n != _HELPER else c for n, c in zip(new.__code__.co_freevars, new.__closure__ or ()))


def _rebuilt(new: types.FunctionType, original: types.FunctionType) -> types.FunctionType:
    """``new``'s rewritten code with ``original``'s closure cells and defaults."""
    cells = dict(zip(original.__code__.co_freevars, original.__closure__ or ()))
    closure = tuple(cells.get(n, c) for n, c in zip(new.__code__.co_freevars, new.__closure__ or ()))
    out = types.FunctionType(new.__code__, original.__globals__, original.__name__, original.__defaults__, closure)
    out.__kwdefaults__ = original.__kwdefaults__
    return out


def converted_source(fn: Callable[..., Any]) -> str | None:
    """The rewritten Python of a converted function (for debugging), or None."""
    return getattr(fn, "__lantern_converted_source__", None)


# ------------------------------------------------------------------ what the rewritten code calls

class _Undefined:
    """The value of a variable that has none on this path; using it says which and where."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<lantern: {self.name} is undefined here>"

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise with_location(TraceError, f"variable {self.name!r} is used where it has no value (it is assigned on "
                            "only some paths through an if or loop before this line)")

    __bool__ = __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _fail
    __matmul__ = __rmatmul__ = __getitem__ = __getattr__ = __call__ = __neg__ = __lt__ = __gt__ = _fail  # type: ignore
    __le__ = __ge__ = __pow__ = __iter__ = __len__ = __index__ = __float__ = __int__ = __array__ = _fail  # type: ignore


def value(scope: dict[str, Any], name: str) -> Any:
    return scope[name] if name in scope else _Undefined(name)


def _staged(x: Any) -> bool:
    from .tensor import Tensor
    return isinstance(x, Tensor)


def _where(line: int) -> Loc:
    from .source import user_location
    loc = user_location()
    return Loc(loc.file, line)


@contextlib.contextmanager
def _naming_carried(names: Sequence[str], what: str, line: int):
    """Errors of the loop combinator about "carried value k" say which variable that is."""
    from .errors import DTypeError, ShapeError
    try:
        yield
    except (DTypeError, ShapeError) as exc:
        m = re.search(r"changes carried value (\d+) from (\S+) to (\S+);", str(exc))
        if m is None or int(m.group(1)) >= len(names):
            raise
        raise with_location(type(exc), f"the variable {names[int(m.group(1))]!r} carried by the {what} at line {line} "
                            f"changes from {m.group(2)} to {m.group(3)}; a loop's variables must keep their shape "
                            "and dtype (use astype)", _where(line)) from None


def _defined(values: Sequence[Any], names: Sequence[str], what: str, line: int) -> None:
    for v, n in zip(values, names):
        if isinstance(v, _Undefined):
            raise with_location(TraceError, f"variable {n!r} {what}", _where(line))


def if_stmt(test: Any, true_fn: Callable[..., tuple], false_fn: Callable[..., tuple], values: tuple,
            params: tuple[str, ...], results: tuple[str, ...], line: int) -> Any:
    """``if test:`` — Python's when ``test`` is a Python value, ``lantern.cond`` when it is staged."""
    return tuple(_run_if(test, true_fn, false_fn, values, results, line))


def _run_if(test: Any, true_fn: Callable[..., tuple], false_fn: Callable[..., tuple], values: tuple,
            results: tuple[str, ...], line: int) -> tuple:
    if not _staged(test):
        return true_fn(*values) if test else false_fn(*values)
    from .control import cond

    def branch(fn: Callable[..., tuple]) -> Callable[[], tuple]:
        def run() -> tuple:
            out = fn(*values)
            _defined(out, results, f"is assigned in only one branch of the staged if at line {line} and used after "
                     "it; assign it in both branches (or before the if)", line)
            return out
        return run
    return cond(test, branch(true_fn), branch(false_fn))


def if_return(test: Any, true_fn: Callable[..., Any], false_fn: Callable[..., Any], values: tuple, line: int) -> Any:
    """``if test: ... return a`` / ``else: ... return b``: the value the chosen branch returns (``lantern.cond``
    when ``test`` is staged: both branches' results must then have one structure, shapes and dtypes)."""
    if not _staged(test):
        return true_fn(*values) if test else false_fn(*values)
    from .control import cond
    return cond(test, lambda: true_fn(*values), lambda: false_fn(*values))


def if_exp(test: Any, then: Callable[[], Any], otherwise: Callable[[], Any], line: int) -> Any:
    """``a if test else b``: ``lantern.where``-like ``cond`` when ``test`` is staged."""
    if not _staged(test):
        return then() if test else otherwise()
    from .control import cond
    return cond(test, then, otherwise)


def and_(*parts: Callable[[], Any]) -> Any:
    value_ = parts[0]()
    for part in parts[1:]:
        if _staged(value_):
            from . import ops
            value_ = ops.logical_and(value_, part())
        elif not value_:
            return value_
        else:
            value_ = part()
    return value_


def or_(*parts: Callable[[], Any]) -> Any:
    value_ = parts[0]()
    for part in parts[1:]:
        if _staged(value_):
            from . import ops
            value_ = ops.logical_or(value_, part())
        elif value_:
            return value_
        else:
            value_ = part()
    return value_


def unless_broken(flag: Any, test: Callable[[], Any]) -> Any:
    """A loop's test after a ``break`` (or a ``return``) set ``flag``: false, without evaluating ``test`` (which
    may index past the end once the loop has stopped), also when the flag is staged (a ``cond``)."""
    if not _staged(flag):
        return False if flag else test()
    from .control import cond
    return cond(flag, lambda: False, test)


def not_(x: Any) -> Any:
    if _staged(x):
        from . import ops
        return ops.logical_not(x)
    return not x


def _check_no_list_growth(appended: tuple, what: str, line: int) -> None:
    """A staged loop that appends to a Python list: its body runs once while tracing, so the list would
    hold one traced value, not one per iteration. Say what to write instead."""
    for value_, name, at in appended:
        if isinstance(value_, list):
            raise with_location(TraceError, f"the {what} at line {line} appends to the Python list {name!r} (line "
                                f"{at}); a staged loop runs its body once while tracing, so the list cannot grow per "
                                "iteration. Carry an array instead (out = lantern.zeros((n, ...)) before the loop, "
                                "out = lantern.where(lantern.arange(n)[:, None] == i, row, out) in it), or loop over "
                                "a Python range (unrolled) and lantern.stack the list", _where(at))


def while_stmt(test: Callable[..., Any], body: Callable[..., tuple], values: tuple, names: tuple[str, ...],
               line: int, appended: tuple = ()) -> Any:
    """``while test:`` — a Python loop while the test gives Python values; ``lantern.while_loop`` from the
    first staged test on."""
    values = tuple(values)
    while True:
        t = test(*values)
        if _staged(t):
            _defined(values, names, f"is carried by the staged while loop at line {line} but has no value before "
                     "it; assign it before the loop", line)
            _check_no_list_growth(appended, "staged while loop", line)
            from .control import while_loop
            with _naming_carried(names, "staged while loop", line):
                values = while_loop(lambda s: test(*s), lambda s: tuple(body(*s)), values)
            break
        if not t:
            break
        values = tuple(body(*values))
    return values


class _StagedItems:
    """``enumerate(xs)`` or ``zip(xs, ys)`` of staged tensors in a rewritten ``for``: a staged loop over
    ``length`` items, item ``i`` being ``item(i)`` (``(i, xs[i])``, ``(xs[i], ys[i])``). Iterated anywhere
    else (``list(zip(xs, ys))``, an ``enumerate`` around it) it is Python's own, over the tensors' rows."""

    def __init__(self, length: Any, item: Callable[[Any], Any], python: Callable[[], Any]):
        self.length, self.item, self.python = length, item, python

    def __iter__(self) -> Any:
        return iter(self.python())


def _staged_items(fn: Any, args: tuple, kwargs: dict) -> _StagedItems | None:
    """``enumerate``/``zip`` over staged tensors (every argument one, for ``zip``), else None."""
    if fn is enumerate and args and _staged(args[0]) and args[0].ndim and set(kwargs) <= {"start"}:
        xs, start = args[0], (args[1] if len(args) > 1 else kwargs.get("start", 0))
        return _StagedItems(xs.shape[0], lambda i: (i + start if not (isinstance(start, int) and start == 0)
                                                    else i, xs[i]), lambda: enumerate(*args, **kwargs))
    if fn is zip and args and not kwargs and all(_staged(a) and a.ndim for a in args):
        return _StagedItems(min(a.shape[0] for a in args), lambda i: tuple(a[i] for a in args), lambda: zip(*args))
    return None


class _StagedRange:
    """``range(lo, hi)`` with a staged bound: a ``fori_loop``."""

    def __init__(self, lo: Any, hi: Any, step: Any):
        self.lo, self.hi, self.step = lo, hi, step


def range_(*args: Any) -> Any:
    """``range(...)`` in a rewritten ``for``: Python's, or a staged range when a bound is staged or a run-time
    size (``range(len(xs))`` where ``xs`` has a run-time length: one loop for every length)."""
    if not any(_staged(a) or isinstance(a, Size) for a in args):
        return range(*args)
    lo, hi, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    return _StagedRange(lo, hi, step)


def for_stmt(iterable: Any, body: Callable[..., tuple], values: tuple, target: tuple, names: tuple[str, ...],
             target_live: bool, line: int, flag: str | None = None, appended: tuple = ()) -> Any:
    """``for x in iterable:`` — Python's loop over Python iterables (unrolled while tracing); over a staged
    range or the first axis of a staged tensor, ``lantern.fori_loop``."""
    values = tuple(values)
    last = target[0]
    if isinstance(iterable, (_StagedRange, _StagedItems)) or _staged(iterable):
        if target_live:
            raise with_location(TraceError, "the loop variable of the staged for loop at line "
                                f"{line} is used after the loop; keep a copy in a variable the loop assigns",
                                _where(line))
        _defined(values, names, f"is carried by the staged for loop at line {line} but has no value before it; "
                 "assign it before the loop", line)
        _check_no_list_growth(appended, "staged for loop", line)
        from .control import fori_loop
        if isinstance(iterable, _StagedRange):
            if not isinstance(iterable.step, int) or iterable.step != 1:
                raise with_location(TraceError, f"the for loop at line {line} runs over a staged range with step "
                                    f"{iterable.step!r}; only step 1 is staged (use lantern.while_loop)", _where(line))
            lo, hi, item = iterable.lo, iterable.hi, (lambda i: i)
        elif isinstance(iterable, _StagedItems):
            lo, hi, item = 0, iterable.length, iterable.item
        else:
            if not iterable.shape:
                raise with_location(TraceError, f"the for loop at line {line} iterates over a 0-d staged tensor")
            lo, hi, item = 0, iterable.shape[0], (lambda i, xs=iterable: xs[i])
        with _naming_carried(names, "staged for loop", line):
            return tuple(fori_loop(lo, hi, lambda i, s: tuple(body(item(i), *s)), values))
    stop = names.index(flag) if flag else None
    for x in iterable:
        values, last = tuple(body(x, *values))[:len(names)], x
        if stop is not None and not _staged(values[stop]) and values[stop]:
            break  # a Python break (a staged one: the remaining iterations do nothing)
    return values + ((last,) if target_live else ())
