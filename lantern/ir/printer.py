"""A readable text form of the IR."""
from __future__ import annotations

import contextvars

import numpy as np

from .names import Namer
from .nodes import Accumulate, Apply, Block, Call, Function, Fused, If, Lambda, Loop, Module, Op, Stmt, Var, While


_namer: contextvars.ContextVar[Namer] = contextvars.ContextVar("namer")


def _n(v: Var) -> str:
    return _namer.get()(v)


def _vars(vs: list[Var]) -> str:
    return ", ".join(f"%{_n(v)}" for v in vs)


def _typed(vs: list[Var]) -> str:
    return ", ".join(f"%{_n(v)}: {v.type}" for v in vs)


def _attr(value) -> str:
    if isinstance(value, np.ndarray):
        flat = value.ravel()
        head = ", ".join(repr(x.item()) for x in flat[:4])
        return f"array<{value.dtype.name}{list(value.shape)}>[{head}{', ...' if flat.size > 4 else ''}]"
    return repr(value)


def _stmt_lines(stmt: Stmt, indent: str) -> list[str]:
    outs = f"{_typed(stmt.outs)} = " if stmt.outs else ""
    where = f"    # {stmt.loc}" if stmt.loc.line else ""
    inner = indent + "  "
    if isinstance(stmt, Op):
        operands = [f"%{_n(v)}" for v in stmt.args] + [f"{k}={_attr(v)}" for k, v in stmt.attrs.items()]
        return [f"{indent}{outs}{stmt.prim}({', '.join(operands)}){where}"]
    if isinstance(stmt, If):
        return [f"{indent}{outs}if %{_n(stmt.pred)}:{where}", *_block_lines(stmt.then_block, inner),
                f"{indent}else:", *_block_lines(stmt.else_block, inner)]
    if isinstance(stmt, Loop):
        i, *carried = stmt.body.params
        return [f"{indent}{outs}for %{_n(i)} in range(%{_n(stmt.lo)}, %{_n(stmt.hi)}) "
                f"carry ({_typed(carried)}) = ({_vars(stmt.init)}):{where}",
                *_block_lines(stmt.body, inner)]
    if isinstance(stmt, While):
        return [f"{indent}{outs}while carry ({_typed(stmt.cond.params)}) = ({_vars(stmt.init)}):{where}",
                f"{inner}cond:", *_block_lines(stmt.cond, inner + "  "),
                f"{inner}body ({_typed(stmt.body.params)}):", *_block_lines(stmt.body, inner + "  ")]
    if isinstance(stmt, Fused):
        return [f"{indent}{outs}fused ({_typed(stmt.body.params)}) = ({_vars(stmt.inputs)}):{where}",
                *_block_lines(stmt.body, inner)]
    if isinstance(stmt, Call):
        marker = " checkpoint" if stmt.checkpoint else ""
        return [f"{indent}{outs}call{marker} @{stmt.fn}({_vars(stmt.args)}){where}"]
    if isinstance(stmt, Lambda):
        return [f"{indent}{outs}lambda ({_typed(stmt.body.params)}):{where}", *_block_lines(stmt.body, inner)]
    if isinstance(stmt, Apply):
        return [f"{indent}{outs}apply %{_n(stmt.fn)}({_vars(stmt.args)}){where}"]
    if isinstance(stmt, Accumulate):
        at = f"[%{_n(stmt.index)}]" if stmt.index is not None else ""
        op = "= (row)" if stmt.row_store else "+="
        return [f"{indent}%{_n(stmt.target)}{at} {op} %{_n(stmt.value)}{where}"]
    raise TypeError(f"unknown statement {type(stmt).__name__}")


def _block_lines(block: Block, indent: str) -> list[str]:
    lines = []
    for stmt in block.stmts:
        lines.extend(_stmt_lines(stmt, indent))
    lines.append(f"{indent}yield {_vars(block.results)}")
    return lines


def format_function(fn: Function, namer: Namer | None = None) -> str:
    token = _namer.set(namer or Namer())
    try:
        return _format_function(fn)
    finally:
        _namer.reset(token)


def _format_function(fn: Function) -> str:
    results = ", ".join(map(str, fn.result_types or ()))
    head = f"func @{fn.name}({_typed(fn.body.params)}) -> ({results}):"
    lines = [head, *_block_lines(fn.body, "  ")]
    lines[-1] = lines[-1].replace("yield", "return", 1)
    return "\n".join(lines)


def format_module(module: Module, namer: Namer | None = None) -> str:
    """The module as text; the entry function comes last. ``namer``: share variable names with other text."""
    order = [n for n in module.functions if n != module.entry] + [module.entry]
    namer = namer or Namer()
    return "\n\n".join(format_function(module.functions[n], namer) for n in order) + "\n"
