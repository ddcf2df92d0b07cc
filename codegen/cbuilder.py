"""A small structured builder for C text: indented lines, blocks, scopes and loops, and C spellings of
strings, comments and index arithmetic. Code generation writes C only through it (no text surgery)."""
from __future__ import annotations

from math import prod

from typing import Callable, Iterable


def c_string(text: str) -> str:
    """``text`` as a C string literal (non-ASCII and control characters escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~" and ch != "?":  # "?" could start a trigraph
            out.append(ch)
        else:
            out.append("".join(f"\\{b:03o}" for b in ch.encode()))
    return '"' + "".join(out) + '"'


def comment(text: str) -> str:
    return "/* " + text.replace("*/", "* /") + " */"


def around_axis(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """``shape`` seen as ``[before, shape[axis], after]``: the sizes of the axes before, of it, after."""
    return prod(shape[:axis]), shape[axis], prod(shape[axis + 1:])


def strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major strides (in elements) of ``shape``."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def index(terms: Iterable[tuple[str, int]], base: int = 0) -> str:
    """``base + sum(var * coef)`` as tidy C."""
    parts = [] if isinstance(base, int) and base == 0 else [str(base)]
    for var, coef in terms:
        if coef == 0:
            continue
        parts.append(var if coef == 1 else f"{var} * {coef}")
    return " + ".join(parts) or "0"


def offset(pointer: str, term: str) -> str:
    """``pointer + term``, or ``pointer`` alone where the term is 0."""
    return pointer if term in ("", "0") else f"{pointer} + {term}"


class CBuilder:
    """The lines of one C function body, indented by the blocks that are open."""

    def __init__(self, depth: int = 1):
        self.lines: list[str] = []
        self.depth = depth
        self.counter = 0
        #: loops whose iterations are independent (``loop(..., parallel=True)``): where a parallel
        #: backend may split the work across threads (issue 14 adds the work-sharing)
        self.parallel_loops = 0

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def open(self, head: str) -> None:
        """``head {``, indenting what follows until :meth:`close`."""
        self.line(head + " {")
        self.depth += 1

    def close(self, text: str = "}") -> None:
        self.depth -= 1
        self.line(text)

    def reopen(self, text: str = "} else {") -> None:
        """Close the open block and open another at the same level (``} else {``)."""
        self.close(text)
        self.depth += 1

    def open_scope(self) -> None:
        """A bare ``{`` block, keeping its locals to itself."""
        self.line("{")
        self.depth += 1

    def loop(self, var: str, extent: int | str, start: int | str = 0, parallel: bool = False) -> None:
        """Open ``for (int64_t var = start; var < extent; var++)``; ``parallel``: its iterations are independent."""
        self.parallel_loops += parallel
        self.open(f"for (int64_t {var} = {start}; {var} < {extent}; {var}++)")

    def loop_nest(self, shape: tuple[int, ...], body: Callable[[list[str]], None], prefix: str = "i",
                  parallel: bool = False) -> None:
        """Nested loops over ``shape``; ``body`` gets the index variable names. ``parallel``: the
        iterations of the outermost loop are independent."""
        names = [f"{prefix}{k}" for k in range(len(shape))]
        for k, (name, d) in enumerate(zip(names, shape)):
            self.loop(name, d, parallel=parallel and k == 0)
        body(names)
        for _ in shape:
            self.close()

    def fresh(self, base: str) -> str:
        """A name not used before in this function (``base`` and a number)."""
        self.counter += 1
        return f"{base}{self.counter}"
