"""Issue 19: compile time against model depth. The first training step (trace, AD, C, cc, load, one step)
of the Llama small configuration with 1, 2, 4, 8, ... layers, batch 8 x 128, each in a fresh process with
an empty compile cache; then the median step time in that process. Each depth runs in the default mode
(a block called once per layer compiles as one shared C function; long bodies are cut into parts, compiled
as translation units in parallel) and, for comparison, with every call inlined into one function in one C
file (``LANTERN_INLINE_LIMIT=0 LANTERN_PART_STMTS=0 LANTERN_UNIT_LINES=0``, the code before issue 19), and
with the layers scanned (``layers="scan"``, the weights stored stacked: ``llama.stack_layers``).

    python benchmarks/compile_depth.py [--threads N] [--repeats R] [--layers 1,2,4,8,32] [--modes shared,inlined,scan]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CHILD = """\
import json, re, time
import numpy as np
import lantern
from lantern.models import llama
cfg = llama.preset("small").replace(n_layers={layers})
trainer = llama.Trainer(cfg, layers={scan!r})
params = llama.init_params(cfg, 0)
if {scan!r} == "scan":
    params = llama.stack_layers(params)
state = trainer.init(params)
tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(8, 129)).astype(np.int64)
lr = np.array(1e-3, np.float32)
t1 = time.perf_counter()
out = trainer.step(params, state, tokens, lr)
t2 = time.perf_counter()
event = trainer.step.cache_info().events[0]
source = trainer.step.lower(params, state, tokens, lr).c_source
times = []
for _ in range({repeats}):
    s = time.perf_counter()
    for _ in range({steps}):
        trainer.step(params, state, tokens, lr)
    times.append((time.perf_counter() - s) / {steps} * 1e3)
print("DEPTH " + json.dumps({{"first_step_s": t2 - t1, "stages": dict(event.stages), "c_lines": source.count("\\n"),
      "c_functions": len(set(re.findall(r"^static (?:__attribute__\\(\\(noinline\\)\\) )?void (fn_\\w+)\\(", source, re.M))), "loss": float(out[2]),
      "median_ms": float(np.median(times)), "min_ms": min(times), "max_ms": max(times)}}))
"""

#: inlined: the code before issue 19 (every call inlined, one function, one C file)
MODES = {"shared": ({}, "call"),
         "inlined": ({"LANTERN_INLINE_LIMIT": "0", "LANTERN_PART_STMTS": "0", "LANTERN_UNIT_LINES": "0"}, "call"),
         "scan": ({}, "scan")}


def run(layers: int, mode: str, repeats: int, steps: int) -> dict[str, Any]:
    env_extra, scan = MODES[mode]
    code = CHILD.format(layers=layers, scan=scan, repeats=repeats, steps=steps)
    with tempfile.TemporaryDirectory(prefix="lantern-depth-") as cache:
        env = {**os.environ, "LANTERN_CACHE_DIR": cache, "LANTERN_TRACE_CACHE": "off", **env_extra}
        proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=harness.ROOT, env=env,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} with {layers} layers failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("DEPTH "))
    return json.loads(line[6:])


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--layers", default="1,2,4,8,32"),
        p.add_argument("--modes", default="shared,inlined,scan"),
        p.add_argument("--max-inlined-layers", type=int, default=8,
                       help="deeper inlined models are skipped (8 layers took 66 s to compile)")))
    depths = [int(x) for x in args.layers.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    rows: list[dict[str, Any]] = []
    steps = 1 if args.quick else 3
    for layers in depths:
        for mode in modes:
            if mode == "inlined" and layers > args.max_inlined_layers:
                continue
            start = time.perf_counter()
            r = run(layers, mode, args.repeats, steps)
            r.update(framework=f"{mode}, {layers} layers", layers=layers, mode=mode,
                     first_call_s=r["first_step_s"], process_s=time.perf_counter() - start)
            print(f"{mode:8s} {layers:3d} layers: first step {r['first_step_s']:.2f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in r['stages'].items())}), {r['c_lines']} C lines, "
                  f"{r['c_functions']} C functions, step {r['median_ms']:.1f} ms, loss {r['loss']:.6f}", flush=True)
            rows.append(r)
    harness.report("compile_depth", {"preset": "small", "batch": 8, "seq": 128, "threads": args.threads}, rows,
                   {"note": "first_call_s: the first training step in a fresh process with an empty cache"})


if __name__ == "__main__":
    main()
