"""Which signatures of a staged function were compiled, why, and how long each took.

Every new signature of a staged function (argument structure, array shapes and dtypes, Python
constants) is traced and compiled. This module records each such compile with the reason it
happened, compared with the signature compiled before it (``x: dim 0 3 -> 5``, ``lr: 0.1 ->
0.09``); ``LANTERN_LOG_COMPILES=1`` prints one line per compile to stderr;
:meth:`lantern.Staged.cache_info` returns the record; and after :data:`RECOMPILE_WARNING_AFTER`
recompiles of one function a :class:`~lantern.RecompileWarning` says what keeps changing and
what to do about it.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .dynamic_shapes import parameter_of
from .errors import RecompileWarning, UnrolledLoopWarning
from .ir.nodes import Module, walk_stmts
from .source import UNKNOWN, _package_dirs

#: Recompiles of one staged function (compiles after its first) before a RecompileWarning.
RECOMPILE_WARNING_AFTER = 8


@dataclass(frozen=True)
class CompileEvent:
    """One signature compiled: its arguments, why it was needed, how long tracing and compiling took,
    and whether the trace cache supplied the code (no tracing, no C compiler)."""

    signature: str
    reason: str
    seconds: float
    from_trace_cache: bool
    #: Python loops unrolled while tracing (see :func:`unrolled_loops`), e.g. ``model.py:12 ran 20 times``
    unrolled: tuple[str, ...] = ()
    #: seconds per step: ``trace`` (gradients included), ``passes``, ``emit``, ``cc`` (the C compiler, or the
    #: compile cache's lookup), ``load``; empty when the trace cache supplied the code
    stages: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CacheInfo:
    """What :meth:`lantern.Staged.cache_info` reports: the signatures compiled in this process, in order."""

    compiles: int
    signatures: tuple[str, ...]
    events: tuple[CompileEvent, ...]


def _leaf_text(key: tuple) -> str:
    if key[0] == "array":
        dims = ",".join(map(str, key[1]))
        return f"{key[2]}[{dims}]"
    return repr(key[2])


def describe_signature(paths: list[str], keys: list[tuple]) -> str:
    """``x: float32[3,4], lr=0.1``: each argument leaf by its path."""
    return ", ".join(f"{p}: {_leaf_text(k)}" if k[0] == "array" else f"{p}={_leaf_text(k)}" for p, k in zip(paths, keys))


@dataclass(frozen=True)
class Reason:
    """Why a signature was compiled: ``kind`` is 'first', 'structure', 'shape', 'dtype' or 'number'."""

    kind: str
    text: str
    path: str = ""


def recompile_reason(previous: list[tuple[Any, list[tuple], list[str]]], treedef: Any, keys: list[tuple],
                     paths: list[str]) -> Reason:
    """How the signature ``(treedef, keys)`` differs from the closest one compiled before (the one with
    fewest differing leaves)."""
    if not previous:
        return Reason("first", "first call")
    best: list[Reason] | None = None
    for td, old_keys, _ in previous:
        if td != treedef or len(old_keys) != len(keys):
            continue
        diffs = [_leaf_difference(path, old, new) for path, old, new in zip(paths, old_keys, keys) if old != new]
        if best is None or len(diffs) < len(best):
            best = diffs
    if best is None:
        return Reason("structure", "the arguments' structure differs (another nesting, dict keys or number of "
                      "arrays)")
    first = best[0]
    more = f" (and {len(best) - 1} more)" if len(best) > 1 else ""
    return Reason(first.kind, first.text + more, first.path)


def _leaf_difference(path: str, old: tuple, new: tuple) -> Reason:
    if old[0] == new[0] == "array":
        if old[2] != new[2]:
            return Reason("dtype", f"{path}: dtype {old[2]} -> {new[2]}", path)
        if len(old[1]) != len(new[1]):
            return Reason("shape", f"{path}: shape {tuple(old[1])} -> {tuple(new[1])}", path)
        dims = [f"dim {d} {a} -> {b}" for d, (a, b) in enumerate(zip(old[1], new[1])) if a != b]
        return Reason("shape", f"{path}: {', '.join(dims)}", path)
    if old[0] == new[0] == "static":
        return Reason("number", f"{path}: {old[2]!r} -> {new[2]!r}", path)
    return Reason("structure", f"{path}: {_leaf_text(old)} -> {_leaf_text(new)}", path)


#: A source line whose statements repeat this many times in one block was a Python loop's body, unrolled.
UNROLLED_AFTER = 16


def unrolled_loops(module: Module) -> tuple[str, ...]:
    """The Python loops that tracing ``module``'s functions unrolled: a line of the user's code whose
    statements (the same operations on the same types) repeat more than :data:`UNROLLED_AFTER` times in
    one block, each as ``file:line ran N times (S of T statements)``."""
    library = _package_dirs()
    found: dict[tuple[str, int], tuple[int, int]] = {}
    total = 0
    for fn in module.functions.values():
        for block in [fn.body] + [b for s in walk_stmts(fn.body) for b in s.blocks()]:
            total += len(block.stmts)
            counts = Counter((s.loc.file, s.loc.line, getattr(s, "prim", type(s).__name__),
                              tuple(str(o.type) for o in s.outs)) for s in block.stmts
                             if getattr(s, "prim", "") not in ("fill", "constant"))  # (constants repeat anyway)
            per_line: dict[tuple[str, int], list[int]] = {}
            for (file, line, _, _), n in counts.items():
                per_line.setdefault((file, line), []).append(n)
            for (file, line), ns in per_line.items():
                # the iterations: how often most of the line's operations ran (one may run twice a time)
                iterations = min(ns, key=lambda n: (-ns.count(n), n))
                if iterations > UNROLLED_AFTER and file != UNKNOWN.file and not file.startswith(library):
                    times, stmts = found.get((file, line), (0, 0))
                    found[(file, line)] = (max(times, iterations), stmts + sum(ns))
    return tuple(f"{os.path.basename(f)}:{line} ran {times} times ({stmts} of {total} statements)"
                 for (f, line), (times, stmts) in sorted(found.items(), key=lambda kv: -kv[1][1]))


def record(name: str, events: list[CompileEvent], event: CompileEvent, reason: Reason) -> None:
    """Keep ``event``; log it (``LANTERN_LOG_COMPILES=1``); warn once too many recompiles happened, and
    once per function about Python loops unrolled while tracing it."""
    events.append(event)
    if os.environ.get("LANTERN_LOG_COMPILES", "") not in ("", "0"):
        how = "found in the trace cache" if event.from_trace_cache else "traced and compiled"
        unrolled = "".join(f"; unrolled a Python loop: {u}" for u in event.unrolled)
        stages = f" ({', '.join(f'{k} {v:.2f}' for k, v in event.stages)})" if event.stages else ""
        print(f"lantern: {name}({event.signature}) {how} in {event.seconds:.2f} s{stages}: {event.reason}{unrolled}",
              file=sys.stderr, flush=True)
    if event.unrolled and not any(e.unrolled for e in events[:-1]):
        warnings.warn(f"lantern: tracing {name} unrolled a Python loop: {event.unrolled[0]}; its body is compiled "
                      f"once per iteration ({event.seconds:.1f} s here). lantern.fori_loop(lo, hi, body, init) "
                      "compiles it once, which compiles faster and usually runs as fast",
                      UnrolledLoopWarning, stacklevel=5)
    if len(events) == RECOMPILE_WARNING_AFTER + 1:
        warnings.warn(_advice(name, len(events), reason), RecompileWarning, stacklevel=5)


def _advice(name: str, count: int, reason: Reason) -> str:
    head = f"lantern: {name} was compiled {count} times; the last time because {reason.text}. "
    if reason.kind == "number":
        return head + (f"A Python number is a compile-time constant: pass {reason.path} as an array instead "
                       "(np.float32(x), np.int64(x)), a staged scalar, and it compiles once.")
    if reason.kind == "shape":
        return head + (f"Every new shape of {reason.path} is compiled again. Make the dimensions that change "
                       f"run-time sizes: @lantern.stage(dynamic={{{parameter_of(reason.path)!r}: axes}}) (or leave "
                       "dynamic at its default, which does it after a second size, unless "
                       "LANTERN_LOG_COMPILES=1 says why it could not), or pad to a few fixed sizes.")
    if reason.kind == "dtype":
        return head + f"Pass {reason.path} with one dtype (astype) on every call."
    return head + "Keep the arguments' structure (nesting, dict keys, number of arrays) the same on every call."
