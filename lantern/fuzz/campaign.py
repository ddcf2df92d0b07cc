"""Fuzzing campaigns: many programs of one generator, checked in batches by worker processes.

A share of the batches runs in a separate process built with AddressSanitizer and UBSan
(``LANTERN_DEBUG=1``, the ASan runtime preloaded): a report there stops that process, so the batch's
programs are then re-run one per process to name the one that did it. Other failures are shrunk and
saved as JSON (``--save-dir``) for ``tests/test_fuzz.py`` to replay.
"""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from . import grad_programs, numpy_programs
from .report import Failure, Report

#: The generators, by the oracle their programs are checked against.
ORACLES: dict[str, ModuleType] = {"interpreter": grad_programs, "numpy": numpy_programs}
#: What a sanitizer report looks like.
SANITIZER_REPORT = ("ERROR: AddressSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")

BatchResult = tuple[Report, Counter, list[str]]


def generate(oracle: str, seed: int, index: int, order: int = 1, size: int | None = None) -> dict:
    """Program ``index`` of campaign ``seed`` for ``oracle``."""
    if oracle == "interpreter":
        return grad_programs.generate(seed, index, order=order, size=size)
    return numpy_programs.generate(seed, index, size=size)


def run_batch(oracle: str, seed: int, lo: int, hi: int, save_dir: Path | None = None, shrink_s: float = 120.0,
              order: int = 1, size: int | None = None) -> BatchResult:
    """Check programs ``lo .. hi-1``; shrink and save each failure. Returns log lines too."""
    gen = ORACLES[oracle]
    programs = [generate(oracle, seed, i, order, size) for i in range(lo, hi)]
    rep = gen.check_programs(programs)
    lines = []
    for f in rep.failures:
        lines.append(f"FAIL [{oracle}] {f}"[:3000])
        if save_dir is not None:
            small = gen.shrink(programs[f.index - lo], gen.same_failure(f), shrink_s)
            path = gen.save_regression(small, f, save_dir)
            lines.append(f"  shrunk to size {gen._size(small)} (from {gen._size(programs[f.index - lo])}), "
                         f"saved {path}")
    return rep, gen.coverage(programs), lines


def _child_command(oracle: str, seed: int, lo: int, hi: int, order: int, size: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "lantern.fuzz", "--oracle", oracle, "--seed", str(seed), "--start", str(lo),
           "--count", str(hi - lo), "--batch", str(hi - lo), "--jobs", "1", "--sanitize-share", "0",
           "--order", str(order), "--json-summary"]
    return cmd + (["--size", str(size)] if size else [])


def run_batch_sanitized(oracle: str, seed: int, lo: int, hi: int, save_dir: Path | None = None,
                        shrink_s: float = 0.0, order: int = 1, size: int | None = None) -> BatchResult:
    """:func:`run_batch` in a process built with ASan and UBSan. A sanitizer report names the program it
    came from (each one re-run alone); those are saved as they are (shrinking would need a process per try)."""
    from ..codegen import toolchain
    env = toolchain.sanitizer_env()
    env["LANTERN_WERROR"] = "1"

    def run(a: int, b: int) -> tuple[int, str]:
        proc = subprocess.run(_child_command(oracle, seed, a, b, order, size), env=env, capture_output=True,
                              text=True, timeout=3600)
        return proc.returncode, proc.stdout + proc.stderr

    code, output = run(lo, hi)
    summary = _summary(output)
    if summary is not None and not any(m in output for m in SANITIZER_REPORT):
        rep, cov = summary
        return rep, cov, [f"FAIL [{oracle}, sanitized] {f}"[:3000] for f in rep.failures]
    rep, lines = Report(programs=hi - lo), []
    for i in range(lo, hi):  # a report (or a crash) ended the process: which program?
        code, output = run(i, i + 1)
        if code in (0, 1) and not any(m in output for m in SANITIZER_REPORT) and _summary(output) is not None:
            rep.failures += _summary(output)[0].failures  # type: ignore[index]
            continue
        found = [line for line in output.splitlines() if any(m in line for m in SANITIZER_REPORT)]
        f = Failure(seed, i, "sanitizer", "\n".join(found[:3]) + "\n" + output[-3000:])
        rep.failures.append(f)
        lines.append(f"FAIL [{oracle}, sanitized] {f}"[:3000])
        if save_dir is not None:
            gen = ORACLES[oracle]
            lines.append(f"  saved {gen.save_regression(generate(oracle, seed, i, order, size), f, save_dir)}")
    return rep, ORACLES[oracle].coverage([generate(oracle, seed, i, order, size) for i in range(lo, hi)]), lines


def summary_json(rep: Report, cov: Counter) -> str:
    """One line a parent process reads back (:func:`_summary`)."""
    return json.dumps({"programs": rep.programs, "fd_checked": rep.fd_checked, "fd_skipped": rep.fd_skipped,
                       "failures": [[f.seed, f.index, f.stage, f.message] for f in rep.failures],
                       "coverage": dict(cov)})


def _summary(output: str) -> tuple[Report, Counter] | None:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                return None
            return (Report(d["programs"], d["fd_checked"], d["fd_skipped"], [Failure(*f) for f in d["failures"]]),
                    Counter(d["coverage"]))
    return None


def run_campaign(oracle: str, count: int, seed: int, batch: int = 5, save_dir: Path | None = None,
                 shrink_s: float = 120.0, start: int = 0, time_limit: float | None = None, jobs: int = 1,
                 order: int = 1, size: int | None = None, sanitize_share: float = 0.0,
                 out: TextIO = sys.stdout) -> tuple[Report, Counter]:
    """Check programs ``start .. start+count`` of ``seed`` in batches (``jobs`` processes at a time), every
    ``1/sanitize_share``-th batch sanitized; shrink and save failures. Stops starting batches after
    ``time_limit`` seconds."""
    total, cov = Report(), Counter()
    t0 = time.monotonic()
    batches = [(lo, min(start + count, lo + batch)) for lo in range(start, start + count, batch)]
    every = round(1 / sanitize_share) if sanitize_share > 0 else 0

    def job(k: int, lo: int, hi: int) -> tuple[Any, tuple]:
        sanitized = every and k % every == every - 1
        fn = run_batch_sanitized if sanitized else run_batch
        return fn, (oracle, seed, lo, hi, save_dir, shrink_s, order, size)

    def record(result: BatchResult) -> None:
        rep, c, lines = result
        cov.update(c)
        total.add(rep)
        for line in lines:
            print(line, file=out)
        fd = f", fd checked {total.fd_checked} skipped {total.fd_skipped}" if oracle == "interpreter" else ""
        print(f"[{time.monotonic() - t0:7.1f}s] {total.programs} programs, {len(total.failures)} failures{fd}",
              file=out, flush=True)

    def out_of_time() -> bool:
        return time_limit is not None and time.monotonic() - t0 > time_limit

    if jobs <= 1:
        for k, (lo, hi) in enumerate(batches):
            if out_of_time():
                break
            fn, args = job(k, lo, hi)
            record(fn(*args))
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            pending: set[Future] = set()
            todo = iter(enumerate(batches))
            while True:
                while len(pending) < jobs and not out_of_time():
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    fn, args = job(nxt[0], *nxt[1])
                    pending.add(pool.submit(fn, *args))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    record(fut.result())
    if out_of_time():
        print(f"time limit reached after {total.programs} programs", file=out)
    return total, cov
