"""Failing programs made small and kept: greedy shrinking, what counts as the same failure, saved JSON files.

Each generator supplies its programs' smaller variants (``candidates``) and a size; this module
only searches. A saved file holds the program, what it failed, and its rendered source for reading;
``tests/test_fuzz.py`` replays every file under ``tests/fuzz_regressions/``.
"""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from .report import Failure, Report

Program = dict[str, Any]


def shrink(p: Program, still_fails: Callable[[Program], bool], candidates: Callable[[Program], Iterable[Program]],
           prune: Callable[[Program], Program], size: Callable[[Program], int], budget_s: float = 120.0) -> Program:
    """Greedily take the first smaller variant (without its dead code, else with it) that ``still_fails``."""
    deadline = time.monotonic() + budget_s
    pruned = prune(copy.deepcopy(p))
    p = pruned if size(pruned) < size(p) and still_fails(pruned) else p  # dead code may be what fails
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for q in candidates(p):
            if time.monotonic() > deadline:
                break
            pruned = prune(copy.deepcopy(q))
            found = next((c for c in (pruned, q) if size(c) < size(p) and still_fails(c)), None)
            if found is not None:
                p, progress = found, True
                break
    return p


def signature(failure: Failure) -> tuple[str, str]:
    """What makes two failures the same for shrinking: the stage, and for exceptions the
    C compiler's diagnostic kind or the place the exception came from (not variable names)."""
    msg = failure.message
    if failure.stage == "CompileError":
        kinds = re.findall(r"(?:error|warning): (?:[^\n]*?)(\[-W[^\]]+\]|$)", msg, re.M)
        return failure.stage, ",".join(sorted(set(kinds)))
    where = re.search(r"\(at ([^()]*)\)$", msg)
    return failure.stage, where.group(1) if where and failure.stage not in ("forward", "grad", "fd") else ""


def same_failure(failure: Failure, check: Callable[[list[Program]], Report]) -> Callable[[Program], bool]:
    """A predicate: ``check`` still reports the program failing the same way (see :func:`signature`)."""
    want = signature(failure)

    def still(q: Program) -> bool:
        try:
            return any(signature(f) == want for f in check([q]).failures)
        except Exception:  # noqa: BLE001 (rendering a broken variant)
            return False
    return still


def save_regression(p: Program, failure: Failure, directory: Path, source: str) -> Path:
    """Write ``p``, what it failed and its rendered ``source`` as JSON (named by seed and index)."""
    directory.mkdir(parents=True, exist_ok=True)
    kind = p.get("kind", "")
    path = directory / f"{kind + '_' if kind else ''}seed{p['seed']}_{p['index']}.json"
    record = {"failure": {"stage": failure.stage, "message": failure.message[:4000]},
              "source": source.splitlines(), "program": p}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_regression(path: Path) -> dict:
    """A saved regression: ``program``, ``failure`` and optionally ``xfail`` (a reason)."""
    return json.loads(Path(path).read_text())
