"""Generated-loop matmul against BLAS (OpenBLAS), to choose ``BLAS_MIN_MACS`` in codegen/kernels/matmul.py.

For each shape ``(m, k) @ (k, n)`` the same staged function is compiled twice: once with
``lantern.codegen.kernels.matmul.BLAS_MIN_MACS`` patched to 0 (always BLAS) and once to a huge
value (always the generated loop nest). Both executables are timed on the same inputs
(median of repeated batches, per call, in microseconds, including the ~3 µs call overhead
both share). Each thread count runs in its own process, because OpenBLAS's thread count
is fixed per process (``LANTERN_NUM_THREADS``).

Run: ``python benchmarks/matmul_threshold.py [--threads 1 2] [--dtype float32]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from timing import per_call_us

SQUARE = [4, 8, 12, 16, 24, 32, 40, 48, 64, 96, 128, 192, 256]
# RNN-like: a batch of hidden states times a recurrent/gate matrix (vanilla RNN, LSTM gates)
RNN = [(1, 64, 64), (1, 128, 128), (1, 256, 256), (1, 512, 512), (1, 128, 512), (1, 256, 1024),
       (8, 32, 32), (8, 64, 64), (8, 128, 128), (8, 64, 256), (8, 128, 512),
       (32, 32, 32), (32, 64, 64), (32, 128, 128), (32, 64, 256), (32, 256, 256), (32, 128, 512),
       (64, 100, 100), (20, 50, 50)]


def shapes() -> list[tuple[str, int, int, int]]:
    return [("square", n, n, n) for n in SQUARE] + [("rnn", m, k, n) for m, k, n in RNN]


def worker(dtype: str) -> list[dict]:
    import numpy as np

    import lantern
    from lantern.codegen.kernels import matmul as emit_matmul

    def mm(a, b):
        return a @ b

    rng = np.random.default_rng(0)
    rows = []
    for family, m, k, n in shapes():
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        exes = {}
        for path, threshold in (("loop", 1 << 62), ("blas", 0)):
            saved = emit_matmul.BLAS_MIN_MACS
            emit_matmul.BLAS_MIN_MACS = threshold
            try:
                exes[path] = lantern.stage(mm, name=f"mm_{path}").lower(a, b)
            finally:
                emit_matmul.BLAS_MIN_MACS = saved
            assert ("cblas" in exes[path].c_source) == (path == "blas"), path
            np.testing.assert_allclose(exes[path](a, b), a @ b, rtol=1e-3, atol=1e-3)
        t = {path: statistics.median(per_call_us(lambda e=e: e(a, b), reps=15)) for path, e in exes.items()}
        rows.append({"family": family, "m": m, "k": k, "n": n, "macs": m * k * n,
                     "loop_us": t["loop"], "blas_us": t["blas"]})
        print(f"  {family:6s} {m:4d}x{k:4d} @ {k:4d}x{n:4d}  macs {m * k * n:>10,d}  "
              f"loop {t['loop']:9.2f} µs  blas {t['blas']:9.2f} µs", file=sys.stderr)
    return rows


def crossover(rows: list[dict]) -> int | None:
    """The smallest MAC count from which BLAS is at least as fast for every measured shape."""
    ordered = sorted(rows, key=lambda r: r["macs"])
    for i, r in enumerate(ordered):
        if all(x["blas_us"] <= x["loop_us"] for x in ordered[i:]):
            return r["macs"]
    return None


def format_table(rows: list[dict]) -> str:
    lines = ["| family | m×k @ k×n | MACs | loop µs | BLAS µs | faster |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in sorted(rows, key=lambda r: (r["family"], r["macs"])):
        faster = "BLAS" if r["blas_us"] < r["loop_us"] else "loop"
        lines.append(f"| {r['family']} | {r['m']}×{r['k']} @ {r['k']}×{r['n']} | {r['macs']:,} | "
                     f"{r['loop_us']:.2f} | {r['blas_us']:.2f} | {faster} ({max(r['loop_us'], r['blas_us']) / min(r['loop_us'], r['blas_us']):.1f}×) |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.dtype)))
        return {}
    results = {}
    for threads in dict.fromkeys(args.threads):
        print(f"LANTERN_NUM_THREADS={threads}, {args.dtype}:", file=sys.stderr)
        env = dict(os.environ, LANTERN_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, __file__, "--worker", "--dtype", args.dtype], env=env,
                              stdout=subprocess.PIPE, text=True, check=True)
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        results[threads] = rows
        print(format_table(rows))
        print(f"\nBLAS at least as fast from {crossover(rows)} MACs on (threads={threads})\n")
    return results


if __name__ == "__main__":
    main()
