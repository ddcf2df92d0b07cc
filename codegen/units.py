"""Translation units: a large module's C split into files that compile in parallel and are cached apart.

The compiler's time grows faster than a function's length and it uses one core per file, so a
module whose pieces (an IR function with its continuations, ``codegen/emit_c.py``) add up to
more than twice :data:`UNIT_LINES` lines is split, between pieces, into units of about that many
lines; the C compiler runs on several at once (``codegen/compiler.py``) and a linker joins them.
Unit 0 holds the entry function, the exported entry points and the runtime's state. Long
function bodies are first cut into parts by ``codegen/passes/outline.py``, so that no piece is
much longer than a unit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

#: Lines of C per translation unit: about a second of ``cc -O3``. Below twice this a module stays
#: one file (a unit costs the compiler's start and the runtime header, ~0.1 s). ``LANTERN_UNIT_LINES``
#: overrides it (0: always one file).
UNIT_LINES = 1500


@dataclass(frozen=True)
class Unit:
    """One translation unit: its C, and whether it is only glue (functions that call the others, run once
    per call), which compiles at ``-O1``: optimising a long sequence of calls at ``-O3`` takes the
    compiler seconds (its vectorizer pairs up argument stores) and gains nothing."""

    text: str
    glue: bool = False


def unit_lines() -> int:
    """:data:`UNIT_LINES`, or ``$LANTERN_UNIT_LINES`` when set to a number."""
    value = os.environ.get("LANTERN_UNIT_LINES", "").strip()
    return int(value) if value.isdigit() else UNIT_LINES


def plan(sizes: list[int], glue: list[bool], limit: int | None = None) -> list[list[int]]:
    """Pieces (given by their sizes in lines and whether each is glue, the entry function's last) grouped
    into units of consecutive pieces of at most ``limit`` lines (or one longer piece), glue apart from the
    rest; the group with the entry function first. One group when the whole is under twice ``limit``."""
    limit = unit_lines() if limit is None else limit
    if limit <= 0 or sum(sizes) < 2 * limit or len(sizes) < 2:
        return [list(range(len(sizes)))]
    groups: list[list[int]] = [[]]
    filled = 0
    for i, size in enumerate(sizes):
        if filled and (filled + size > limit or glue[i] != glue[groups[-1][0]]):
            groups.append([])  # (a piece longer than a unit is a unit of its own)
            filled = 0
        groups[-1].append(i)
        filled += size
    return [groups[-1], *groups[:-1]]

