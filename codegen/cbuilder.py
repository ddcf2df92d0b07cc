"""A small structured builder for C text: indented lines, blocks, scopes and loops, and C spellings of
strings, comments and index arithmetic. Code generation writes C only through it (no text surgery)."""
from __future__ import annotations

import os
import re
from math import prod
from typing import Callable, Iterable

from lantern.ir.symbolic import Size

#: A loop marked parallel runs on ``lt_num_threads`` threads (OpenMP) when it has at least this much
#: work (element operations, or multiply-adds): below it, waking the threads and moving the data between
#: cores costs more than they save. benchmarks/parallel_loops.py (RESULTS.md): a chain of four
#: elementwise ops on data the calling thread just wrote gains from 64K operations, a single add not
#: below 1M; an LSTM step's optimizer loops (20K elements, 10 ops each) were slower threaded. So 256K:
#: activations of batched models are threaded, a small model's per-parameter loops are not.
#: ``LANTERN_PARALLEL_MIN_WORK`` overrides.
PARALLEL_MIN_WORK = int(os.environ.get("LANTERN_PARALLEL_MIN_WORK", 1 << 18))

#: Calls that read or write the calling thread's state (the error status, the arena, the stack
#: bounds), or run arbitrary code: a parallel loop whose body makes one stays on the calling thread.
_THREAD_STATE = re.compile(r"\b(lt_record|lt_index|lt_fail|lt_alloc|lt_mark|lt_release|lt_stack_check|"
                           r"lt_poll_interrupt|lt_check_\w+|lt_nonfinite|lt_depth_\w+|lt_cblas_\w+|fn_\w+|"
                           r"lambda_\w+|k_\w*\.fn)\s*\(")


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


def _enough_work(work: int | Size | str) -> str | None:
    """None: too little work to share; "": enough; else the C condition that decides at run time."""
    if isinstance(work, int):
        return "" if work >= PARALLEL_MIN_WORK else None
    return f"{work} >= {PARALLEL_MIN_WORK}"  # a run-time size, or a C expression


def offset(pointer: str, term: str) -> str:
    """``pointer + term``, or ``pointer`` alone where the term is 0."""
    return pointer if term in ("", "0") else f"{pointer} + {term}"


class CBuilder:
    """The lines of one C function body, indented by the blocks that are open."""

    def __init__(self, depth: int = 1):
        self.lines: list[str] = []
        self.depth = depth
        self.counter = 0
        #: loops whose iterations are independent (``loop(..., parallel=True)``), and how many of them
        #: run on several threads (``#pragma omp parallel for``)
        self.parallel_loops = 0
        self.threaded_loops = 0
        #: the open loop that may run threaded: (its line, its depth, the ``if`` condition or "", a reduction)
        self._threaded: tuple[int, int, str, str] | None = None

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def open(self, head: str) -> None:
        """``head {``, indenting what follows until :meth:`close`."""
        self.line(head + " {")
        self.depth += 1

    def close(self, text: str = "}") -> None:
        self.depth -= 1
        self.line(text)
        if self._threaded is not None and self._threaded[1] == self.depth:
            self._close_threaded()

    def _close_threaded(self) -> None:
        """Put the work-sharing pragma before the loop just closed (in place of its ``ivdep``), unless its body
        uses per-thread state. An innermost loop without a reduction is shared as ``parallel for simd``: the
        ``ivdep`` it replaces told the vectorizer its iterations are independent, and the C grammar allows one
        loop pragma only."""
        at, depth, condition, reduction = self._threaded  # type: ignore[misc]
        self._threaded = None
        body = self.lines[at + 2:]  # (after the ivdep and the loop's head)
        if any(_THREAD_STATE.search(line) for line in self.lines[at + 1:]):
            return
        self.threaded_loops += 1
        innermost = not reduction and not any(line.lstrip().startswith(("for (", "while (")) for line in body)
        clause = ((f" reduction({reduction})" if reduction else "")
                  + (f" if (parallel: {condition})" if condition else ""))
        self.lines[at] = ("    " * depth + f"#pragma omp parallel for{' simd' if innermost else ''} schedule(static) "
                          f"num_threads(lt_num_threads){clause}")

    def reopen(self, text: str = "} else {") -> None:
        """Close the open block and open another at the same level (``} else {``)."""
        self.close(text)
        self.depth += 1

    def open_scope(self) -> None:
        """A bare ``{`` block, keeping its locals to itself."""
        self.line("{")
        self.depth += 1

    def loop(self, var: str, extent: int | str, start: int | str = 0, parallel: bool = False,
             work: int | Size | None = None, reduction: str = "", independent: bool = False) -> None:
        """Open ``for (int64_t var = start; var < extent; var++)``; ``parallel``: its iterations are independent,
        so it may run on several threads when its ``work`` (default: ``extent``) is large enough and no
        enclosing loop does (``reduction``: an OpenMP reduction the iterations share, ``"min:bad_at"``).

        A loop whose iterations are independent (``parallel`` or ``independent``) is marked ``LT_IVDEP``
        (``#pragma GCC ivdep``): no iteration reads what another writes. Generated buffers never partly overlap (an output is
        new, or an operand's own buffer computed in place), which the C compiler cannot see; without the mark
        it vectorizes such a loop twice, behind a run-time overlap test, which doubled compile times."""
        self.parallel_loops += parallel
        if parallel or independent:
            # (a loop of one iteration leaves the threads to a loop inside it: a single row's column strips)
            if parallel and self._threaded is None and start == 0 and not (isinstance(extent, int) and extent <= 1):
                work = extent if work is None else work
                condition = _enough_work(work)  # type: ignore[arg-type]
                if condition is not None:
                    self._threaded = (len(self.lines), self.depth, condition, reduction)
            self.ivdep()
        self.open(f"for (int64_t {var} = {start}; {var} < {extent}; {var}++)")

    def ivdep(self) -> None:
        """Mark the loop opened next as one whose iterations are independent (see :meth:`loop`)."""
        self.line("LT_IVDEP")  # (#pragma GCC ivdep, or clang's spelling: runtime/lantern_runtime.h)

    def loop_nest(self, shape: tuple[int, ...], body: Callable[[list[str]], None], prefix: str = "i",
                  parallel: bool = False, ops: int = 1) -> None:
        """Nested loops over ``shape``; ``body`` gets the index variable names. ``parallel``: the
        iterations of the outermost loop are independent (``ops``: operations per iteration of the nest)."""
        names = [f"{prefix}{k}" for k in range(len(shape))]
        for k, (name, d) in enumerate(zip(names, shape)):
            self.loop(name, d, parallel=parallel and k == 0, work=prod(shape) * ops if k == 0 else None,
                      independent=parallel)
        body(names)
        for _ in shape:
            self.close()

    def fresh(self, base: str) -> str:
        """A name not used before in this function (``base`` and a number)."""
        self.counter += 1
        return f"{base}{self.counter}"
