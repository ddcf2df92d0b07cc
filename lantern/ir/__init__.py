"""The typed, A-normal-form IR: types, nodes, primitives, printer, verifier, interpreter."""
from .interpret import interpret
from .nodes import (Accumulate, Apply, Block, Call, Function, Fused, If, Lambda, Loop, Module, Op, Stmt, Var,
                    While, free_vars, walk_stmts)
from .printer import format_function, format_module
from .types import FnType, TensorType
from .verify import verify

__all__ = ["Accumulate", "Apply", "Block", "Call", "FnType", "Function", "Fused", "If", "Lambda", "Loop",
           "Module", "Op", "Stmt", "TensorType", "Var", "While", "format_function", "format_module",
           "free_vars", "interpret", "verify", "walk_stmts"]
