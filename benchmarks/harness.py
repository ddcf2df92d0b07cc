"""Shared pieces of the side-by-side benchmarks: threads, peers, timing, fresh-process timing, reports.

Each benchmark script builds the same model in every framework it finds, from the same
NumPy initial parameters, checks that the first-step losses agree, and times steady-state
training steps (warm-up, repeats, median and min-max). Results go to
``benchmarks/results/<name>.json`` and a Markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few steps only (CI)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LANTERN_NUM_THREADS", 2)))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    set_threads(args.threads)
    return args


def set_threads(n: int) -> None:
    """The same thread count for every framework; call before importing any of them."""
    os.environ["LANTERN_NUM_THREADS"] = str(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}").strip()


def torch_or_none() -> Any:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(os.environ["LANTERN_NUM_THREADS"]))
    return torch


def jax_or_none() -> Any:
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", False)
    return jax


def time_steps(step: Callable[[], Any], steps: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Per-step time (ms) over ``repeats`` runs of ``steps`` steps: median, min, max."""
    for _ in range(warmup):
        step()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t0) / steps * 1e3)
    return {"median_ms": float(np.median(runs)), "min_ms": float(min(runs)), "max_ms": float(max(runs))}


def fresh_process_seconds(code: str) -> float:
    """Wall time of ``python -c code`` in a new process (for first-call and cache-hit times)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE.parent, env=dict(os.environ))
    return time.perf_counter() - t0


def machine() -> dict[str, str]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model or platform.processor(), "cores": str(os.cpu_count()), "python": platform.python_version(),
            "numpy": np.__version__}


def report(name: str, config: dict[str, Any], rows: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    """Write ``results/<name>.json`` and print a Markdown table (speed relative to Lantern)."""
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": name, "config": config, "machine": machine(), "rows": rows, **extra,
           "date": time.strftime("%Y-%m-%d")}
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    base = next((r["median_ms"] for r in rows if r["framework"] == "lantern"), None)
    print(f"\n### {name} ({', '.join(f'{k}={v}' for k, v in config.items())})\n")
    print("| framework | ms/step (median) | min-max | Lantern is faster by |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['median_ms'] / base:.2f}x" if base and r["framework"] != "lantern" else ""
        print(f"| {r['framework']} | {r['median_ms']:.3f} | {r['min_ms']:.3f}-{r['max_ms']:.3f} | {ratio} |")
    for k, v in extra.items():
        print(f"- {k}: {v}")
