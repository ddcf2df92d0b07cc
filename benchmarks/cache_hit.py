"""Fresh-process time to the first result when the compile cache already holds the code (issue 4).

For each benchmark's training step: one process fills an empty ``LANTERN_CACHE_DIR``, then
``--repeats`` fresh processes hit it, with the trace cache off (``LANTERN_TRACE_CACHE=0``: trace,
differentiate, emit C, hash it, find the shared object) and on (fingerprint the function, load the
shared object it names). Reported per mode: the whole process (``wall``, from exec to exit), the
first call alone, and imports + setup (NumPy, ``import lantern``, the benchmark's data), as the
median and minimum over the repeats; plus the interpreter's own start (``python -c pass``).

    .venv/bin/python benchmarks/cache_hit.py [--repeats 7] [--only rnn_h100,cnn]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BENCHMARKS = {
    "rnn_h100": ("charlm", "lantern_setup('rnn', 100, 25, 1)"),
    "rnn_h50_b20": ("charlm", "lantern_setup('rnn', 50, 20, 20)"),
    "lstm_h50": ("charlm", "lantern_setup('lstm', 50, 20, 1)"),
    "lstm_h200": ("charlm", "lantern_setup('lstm', 200, 20, 1)"),
    "treelstm": ("bench_treelstm", "lantern_setup()"),
    "cnn": ("bench_cnn", "lantern_setup()"),
}
#: One fresh process: wall (perf_counter) and CPU (process_time) per phase, as harness.FRESH_CODE
#: splits them, plus the trace cache's counters. CPU time is the figure to trust on a busy machine.
CODE = """\
import time
w0, c0 = time.perf_counter(), time.process_time()
import json, sys
sys.path.insert(0, {bench!r})
import numpy
w1, c1 = time.perf_counter(), time.process_time()
import lantern
w2, c2 = time.perf_counter(), time.process_time()
import {module} as m
run = m.{setup}
w3, c3 = time.perf_counter(), time.process_time()
run()
w4, c4 = time.perf_counter(), time.process_time()
from lantern import trace_cache
print("FRESH " + json.dumps({{"numpy_s": w1 - w0, "lantern_s": w2 - w1, "setup_s": w3 - w2, "first_call_s": w4 - w3,
    "numpy_cpu": c1 - c0, "lantern_cpu": c2 - c1, "setup_cpu": c3 - c2, "first_call_cpu": c4 - c3,
    "compiles": lantern.cache_stats()["compiles"], "trace_hits": trace_cache.STATS["hits"]}}))
"""
FIELDS = ("wall_s", "cpu_s", "numpy_s", "lantern_s", "setup_s", "first_call_s", "numpy_cpu", "lantern_cpu",
          "setup_cpu", "first_call_cpu")


def _process(code: str, env: dict[str, str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"fresh process failed:\n{proc.stderr[-3000:]}")
    fresh = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("FRESH "))[6:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, **fresh}


def measure(module: str, setup: str, repeats: int) -> dict:
    code = CODE.format(bench=str(HERE), module=module, setup=setup)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="lantern-hit-cache-") as cache:
        for mode in ("0", "1"):
            env = {**os.environ, "LANTERN_CACHE_DIR": cache, "LANTERN_TRACE_CACHE": mode}
            first = _process(code, env)  # fills the compile cache (and, on, the trace cache)
            runs = [_process(code, env) for _ in range(repeats)]
            assert all(r["compiles"] == 0 for r in runs), runs
            summary: dict = {k: {"median": round(statistics.median(r[k] for r in runs), 4),
                                 "min": round(min(r[k] for r in runs), 4)} for k in FIELDS}
            summary["trace_hits"] = [r["trace_hits"] for r in runs]
            summary["filling_process_first_call_s"] = round(first["first_call_s"], 3)
            out["trace_cache_on" if mode == "1" else "trace_cache_off"] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args()
    start = [_process("import json, time\nprint('FRESH {}')", dict(os.environ)) for _ in range(args.repeats)]
    results: dict = {"python_startup": {k: round(statistics.median(r[k] for r in start), 4) for k in ("wall_s", "cpu_s")},
                     "loadavg": os.getloadavg()}
    print(f"python start: wall {results['python_startup']['wall_s']:.3f} s, cpu {results['python_startup']['cpu_s']:.3f} s; "
          f"load average {results['loadavg'][0]:.1f}")
    print("| benchmark | trace cache | process wall s | process CPU s | first call wall s | first call CPU s | "
          "numpy + lantern + setup CPU s | hits |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in args.only.split(","):
        module, setup = BENCHMARKS[name]
        r = results[name] = measure(module, setup, args.repeats)
        for mode in ("trace_cache_off", "trace_cache_on"):
            m = r[mode]
            before = m["numpy_cpu"]["median"] + m["lantern_cpu"]["median"] + m["setup_cpu"]["median"]
            print(f"| {name} | {mode.split('_')[-1]} | {m['wall_s']['median']:.3f} | {m['cpu_s']['median']:.3f} | "
                  f"{m['first_call_s']['median']:.3f} | {m['first_call_cpu']['median']:.3f} | {before:.3f} | "
                  f"{sum(m['trace_hits'])}/{len(m['trace_hits'])} |", flush=True)
    out = HERE / "results" / "cache_hit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
