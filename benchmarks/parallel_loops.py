"""Issue 14: where a generated loop gains from running on several threads (OpenMP), to choose
``PARALLEL_MIN_WORK`` (``codegen/cbuilder.py``). For a fused elementwise chain, a row reduction and a
transposed copy of growing size: microseconds per call with every marked loop threaded
(``LANTERN_PARALLEL_MIN_WORK=1``) against none threaded (a huge threshold), at ``--threads`` threads,
each setting in a fresh process.

    python benchmarks/parallel_loops.py [--threads N] [--repeats R]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CHILD = """\
import json, time
import numpy as np
import lantern
kernels = {{
    "elementwise": (lambda x: lantern.tanh(x) * 0.5 + x * x, lambda n: (n,)),
    "row sums": (lambda x: lantern.sum(lantern.exp(x), axis=1), lambda n: (n // 64, 64)),
    "transpose": (lambda x: x.T + 0.0, lambda n: (n // 64, 64)),
}}
out = {{}}
for name, (fn, shape) in kernels.items():
    for n in {sizes}:
        x = np.random.default_rng(0).standard_normal(shape(n)).astype(np.float32)
        staged = lantern.stage(fn)
        staged(x)
        reps = max(20, 2_000_000 // n)
        best = []
        for _ in range({repeats}):
            s = time.perf_counter()
            for _ in range(reps):
                staged(x)
            best.append((time.perf_counter() - s) / reps * 1e6)
        out[f"{{name}} {{n}}"] = float(np.median(best))
print("LOOPS " + json.dumps(out))
"""

SIZES = [1 << 12, 1 << 14, 1 << 15, 1 << 16, 1 << 18, 1 << 20]


def run(min_work: int, threads: int, repeats: int) -> dict[str, float]:
    env = {**os.environ, "LANTERN_PARALLEL_MIN_WORK": str(min_work), "LANTERN_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", CHILD.format(sizes=SIZES, repeats=repeats)],
                          cwd=harness.ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("LOOPS "))[6:])


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    serial = run(1 << 62, args.threads, args.repeats)
    threaded = run(1, args.threads, args.repeats)
    print(f"### parallel_loops (threads={args.threads}; microseconds per call, medians of {args.repeats})")
    print("| kernel, elements | one thread | threaded | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for key in serial:
        print(f"| {key} | {serial[key]:.1f} | {threaded[key]:.1f} | {serial[key] / threaded[key]:.2f}x |")


if __name__ == "__main__":
    main()
