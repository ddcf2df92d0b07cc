"""Readable, deterministic variable names.

Var ids come from a process-wide counter, so the same program traced after different
work would print (and compile) with different numbers. A :class:`Namer` numbers the
variables of one module in order of first use instead: equal programs get equal text,
so printed IR is stable and the compile cache can key on the C text as it is.
"""
from __future__ import annotations

from .nodes import Var


class Namer:
    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def __call__(self, v: Var) -> str:
        name = self._names.get(v.id)
        if name is None:
            name = self._names[v.id] = f"{v.hint}_{len(self._names) + 1}"
        return name
