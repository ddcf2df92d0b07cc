"""Dump the C of every program the test suite compiles, and compare two dumps.

A refactoring of the compiler should leave the generated C alone except where a change is
intended; this makes that checkable (issue 11)::

    python benchmarks/c_diff.py dump before/ [pytest args]    # runs the suite with LANTERN_DUMP_DIR
    ... change the compiler ...
    python benchmarks/c_diff.py dump after/
    python benchmarks/c_diff.py compare before/ after/        # what changed, with diffs

Dumped files are named ``<function>-<cache key>.c``; the key hashes the compiler flags and the
runtime header too, so files are matched by function name and compared by content.
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dump(directory: Path, pytest_args: list[str]) -> int:
    """Run the test suite with every generated C file copied into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    # verify mode traces every function, so every compile produces (and dumps) its C
    env = {**os.environ, "LANTERN_DUMP_DIR": str(directory.resolve()), "LANTERN_TRACE_CACHE": "verify"}
    # (the trace cache's own tests expect hits, which dumping turns off)
    default = ["-n", "2", "tests", "--ignore", "tests/test_trace_cache.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(pytest_args or default)]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def _programs(directory: Path) -> dict[str, dict[str, str]]:
    """function name -> {content hash: text} for the C files of a dump."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for path in directory.glob("*.c"):
        name = re.sub(r"-[0-9a-f]{32}$", "", path.stem)
        text = path.read_text()
        out[name][hashlib.sha256(text.encode()).hexdigest()] = text
    return out


def compare(before: Path, after: Path, max_diff_lines: int = 60) -> int:
    """Print what differs between two dumps; exit status 1 if anything does."""
    a, b = _programs(before), _programs(after)
    same = changed = 0
    report: list[str] = []
    for name in sorted(set(a) | set(b)):
        old, new = a.get(name, {}), b.get(name, {})
        if set(old) == set(new):
            same += len(old)
            continue
        gone, came = [old[h] for h in old if h not in new], [new[h] for h in new if h not in old]
        changed += max(len(gone), len(came))
        report.append(f"== {name}: {len(gone)} version(s) only before, {len(came)} only after")
        for text in came:  # diff each new version against the closest old one
            if not gone:
                break
            closest = max(gone, key=lambda t: difflib.SequenceMatcher(None, t, text, autojunk=False).quick_ratio())
            diff = list(difflib.unified_diff(closest.splitlines(), text.splitlines(), "before", "after", lineterm="",
                                             n=1))
            report += diff[:max_diff_lines] + ([f"... ({len(diff) - max_diff_lines} more lines)"]
                                               if len(diff) > max_diff_lines else [])
    print("\n".join(report))
    print(f"{same} programs identical, {changed} changed ({len(a)} names before, {len(b)} after)")
    return 1 if changed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="run the tests, keeping every generated C file")
    d.add_argument("directory", type=Path)
    d.add_argument("pytest_args", nargs=argparse.REMAINDER)
    c = sub.add_parser("compare", help="compare two dumps")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "dump":
        return dump(a.directory, a.pytest_args)
    return compare(a.before, a.after)


if __name__ == "__main__":
    sys.exit(main())
