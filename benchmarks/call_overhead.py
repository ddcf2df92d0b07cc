"""Per-call overhead of compiled staged functions, next to the same operation in NumPy.

Run: ``python benchmarks/call_overhead.py [--reps N] [--write]``. Each case is timed in
batches of ``--inner`` calls; the median, min and max per-call time over ``--reps``
batches are printed in microseconds. ``--write`` updates benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import numpy as np
from timing import per_call_us

import lantern


@lantern.stage
def add_one(x):
    return x + 1.0


@lantern.stage
def fma3(x, y, z):
    return x * y + z


@lantern.stage
def nested(params, x):
    return x * params["w"] + params["b"]


def cases():
    x = np.arange(4, dtype=np.float32)
    y = np.ones(4, dtype=np.float32)
    z = np.full(4, 2.0, dtype=np.float32)
    params = {"w": y, "b": z}
    exe1 = add_one.lower(x)
    exe3 = fma3.lower(x, y, z)
    return [
        ("x + 1.0, f32[4]", lambda: add_one(x), lambda: exe1(x),
         lambda: x + np.float32(1.0)),
        ("x * y + z, 3 x f32[4]", lambda: fma3(x, y, z), lambda: exe3(x, y, z), lambda: x * y + z),
        ("x * p['w'] + p['b'] (dict argument)", lambda: nested(params, x), None,
         lambda: x * params["w"] + params["b"]),
    ]


def run(reps: int, inner: int) -> list[tuple[str, str, list[float]]]:
    rows = []
    for name, staged, exe, numpy_fn in cases():
        rows.append((name, "staged function", per_call_us(staged, reps, inner)))
        if exe is not None:
            rows.append((name, "Executable (f.lower)", per_call_us(exe, reps, inner)))
        rows.append((name, "NumPy", per_call_us(numpy_fn, reps, inner)))
    return rows


def format_rows(rows) -> str:
    lines = ["| case | how | median µs | min–max µs |", "| --- | --- | ---: | ---: |"]
    for name, how, times in rows:
        lines.append(f"| {name} | {how} | {statistics.median(times):.2f} | {min(times):.2f}–{max(times):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="batches per case")
    parser.add_argument("--inner", type=int, default=200, help="calls per batch")
    args = parser.parse_args(argv)
    table = format_rows(run(args.reps, args.inner))
    print(table)
    return table


if __name__ == "__main__":
    main()
