"""The NumPy reference interpreter: runs any IR module directly.

It is the oracle the tests compare generated C against, and it runs every pass's
output, so a wrong rewrite shows up as a numeric difference.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Sequence

import numpy as np

from .nodes import Accumulate, Apply, Block, Call, Fused, If, Lambda, Loop, Module, Op, Stmt, Var, While
from .primitives import PRIMITIVES
from .analysis import entry_sizes
from .symbolic import evaluate_shape, substitute
from .types import TensorType

Env = dict[int, Any]


def _check(v: Var, value: Any, sizes: dict[str, int]) -> Any:
    if isinstance(v.type, TensorType):
        value = np.asarray(value)
        if value.dtype.name != v.type.dtype:
            value = value.astype(v.type.dtype)
        assert value.shape == evaluate_shape(v.type.shape, sizes), (v, value.shape, v.type)
    return value


class Interpreter:
    def __init__(self, module: Module, sizes: dict[str, int] | None = None):
        self.module = module
        #: the value of each run-time size (``ir/symbolic.py``) in this call
        self.sizes = sizes or {}

    def call(self, fn_name: str, args: Sequence[Any]) -> list[Any]:
        fn = self.module.functions[fn_name]
        env: Env = {}
        return self.block(fn.body, list(args), env)

    def block(self, block: Block, args: Sequence[Any], env: Env) -> list[Any]:
        for p, a in zip(block.params, args, strict=True):
            env[p.id] = _check(p, a, self.sizes)
        for stmt in block.stmts:
            values = self.stmt(stmt, env)
            for o, val in zip(stmt.outs, values, strict=True):
                env[o.id] = _check(o, val, self.sizes)
            self.after(stmt, env)
        return [env[r.id] for r in block.results]

    def after(self, stmt: Stmt, env: Env) -> None:
        """Called after each statement has run and bound its results (a subclass checks something)."""

    def stmt(self, stmt: Stmt, env: Env) -> list[Any]:
        get: Callable[[Var], Any] = lambda v: env[v.id]  # noqa: E731
        match stmt:
            case Op():
                attrs = {k: substitute(v, self.sizes) for k, v in stmt.attrs.items()} if self.sizes else stmt.attrs
                return [PRIMITIVES[stmt.prim].ref(*map(get, stmt.args), **attrs)]
            case If():
                return self.block(stmt.then_block if bool(get(stmt.pred)) else stmt.else_block, [], env)
            case Loop():
                carried = [get(v) for v in stmt.init]
                for i in range(int(get(stmt.lo)), int(get(stmt.hi))):
                    carried = self.block(stmt.body, [np.int64(i), *carried], env)
                return carried
            case While():
                carried = [get(v) for v in stmt.init]
                while bool(self.block(stmt.cond, carried, env)[0]):
                    carried = self.block(stmt.body, carried, env)
                return carried
            case Fused():
                return self.block(stmt.body, [get(v) for v in stmt.inputs], {})
            case Call():
                return self.call(stmt.fn, [get(v) for v in stmt.args])
            case Lambda():
                captured = dict(env)

                def closure(*args: Any) -> list[Any]:
                    return self.block(stmt.body, args, dict(captured))
                captured[stmt.outs[0].id] = closure  # letrec: the body may call itself
                return [closure]
            case Apply():
                return get(stmt.fn)(*[get(v) for v in stmt.args])
            case Accumulate():
                target = get(stmt.target)
                if stmt.index is not None:
                    np.add.at(target, get(stmt.index), get(stmt.value))
                else:
                    np.add(target, get(stmt.value), out=target)
                return []
        raise TypeError(f"unknown statement {type(stmt).__name__}")


def interpret(module: Module, args: Sequence[Any],
              interpreter: Callable[[Module, dict[str, int]], Interpreter] = Interpreter) -> list[np.ndarray]:
    """Run the entry function of ``module`` on flat NumPy ``args``; returns its flat results.
    (``interpreter``: the class to run it with, :class:`Interpreter` or a subclass.)

    Recursion in the program (trees, loops in continuation-passing style) is recursion
    here, so it runs on a thread with a large stack and a high recursion limit.
    """
    arrays = [np.asarray(a) for a in args]
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with np.errstate(all="ignore"):  # NaN and Inf propagate, as in the generated C
                outcome["value"] = interpreter(module, call_sizes(module, arrays)).call(module.entry, arrays)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    old_limit, old_stack = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(max(old_limit, _RECURSION_LIMIT))
    threading.stack_size(_STACK_BYTES)
    try:
        worker = threading.Thread(target=run, name="lantern-interpret")
        worker.start()
    finally:
        threading.stack_size(old_stack)
    worker.join()
    sys.setrecursionlimit(old_limit)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def call_sizes(module: Module, arrays: Sequence[np.ndarray]) -> dict[str, int]:
    """The value of each run-time size of ``module``'s entry function in a call with ``arrays``."""
    return {name: np.shape(arrays[k])[axis] for name, k, axis in entry_sizes(module)}


_RECURSION_LIMIT = 200_000
_STACK_BYTES = 1 << 30  # virtual; only what the recursion touches is committed
