"""Issue 19: what a C optimisation level costs in run time. Each workload of ``dynamic_shapes.py`` (per
shape) is compiled once, then the same C is rebuilt with each flag set (``lantern.codegen.recompile_native``)
and the builds are timed alternately in one process; the compile time of each build is reported too.

    python benchmarks/compile_flags.py [--threads N] [--repeats R] [--flags "-O2 -march=native ..."]
"""
from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dynamic_shapes  # noqa: E402
import harness  # noqa: E402

BASELINE = "-O3 -march=native"
OTHER = "-O2 -march=native -ftree-vectorize -fvect-cost-model=dynamic"


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0], lambda p: p.add_argument(
        "--flags", default=OTHER, help=f"the flag set compared with {BASELINE!r} (default {OTHER!r})"))
    import lantern
    from lantern.codegen import recompile_native
    workloads = {
        "rnn (fori_loop)": lambda: dynamic_shapes.rnn_workload(lantern, "rnn", fori=True),
        "lstm (fori_loop)": lambda: dynamic_shapes.rnn_workload(lantern, "lstm", fori=True),
        "treelstm": lambda: dynamic_shapes.treelstm_workload(lantern),
        "mlp batch": lambda: dynamic_shapes.mlp_workload(lantern),
        "cnn batch": lambda: dynamic_shapes.cnn_workload(lantern),
        "llama forward": lambda: dynamic_shapes.llama_workload(lantern),
    }
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"baseline": BASELINE, "compared": args.flags}
    for name, make in workloads.items():
        fn, inputs, _ = make()
        exe = lantern.stage(fn, dynamic=False).lower(*inputs)
        builds, compile_s = {}, {}
        for label, flags in (("baseline", BASELINE), ("compared", args.flags)):
            with tempfile.TemporaryDirectory(prefix="lantern-flags-") as cache:  # a compile, not a cache hit
                kept = os.environ.get("LANTERN_CACHE_DIR")
                os.environ["LANTERN_CACHE_DIR"] = cache
                try:
                    start = time.perf_counter()
                    builds[label] = recompile_native(exe.native, name, shlex.split(flags))
                    compile_s[label] = round(time.perf_counter() - start, 2)
                finally:
                    if kept is None:
                        del os.environ["LANTERN_CACHE_DIR"]
                    else:
                        os.environ["LANTERN_CACHE_DIR"] = kept
        calls = 3 if name in ("cnn batch", "llama forward") else 30
        runs: dict[str, list[float]] = {"baseline": [], "compared": []}
        for _ in range(args.repeats):
            for label in runs:  # alternating, so both see the same machine
                exe.native = builds[label]
                start = time.perf_counter()
                for _ in range(calls):
                    exe(*inputs)
                runs[label].append((time.perf_counter() - start) / calls * 1e3)
        for label, times in runs.items():
            rows.append({"framework": f"{name}: {label}", "median_ms": float(np.median(times)),
                         "min_ms": min(times), "max_ms": max(times), "steps_per_run": calls, "runs": len(times),
                         "first_call_s": compile_s[label]})
        extra[f"{name} ratio"] = round(float(np.median(runs["compared"]) / np.median(runs["baseline"])), 3)
    harness.report("compile_flags", {"threads": args.threads}, rows, extra, unit="step")


if __name__ == "__main__":
    main()
