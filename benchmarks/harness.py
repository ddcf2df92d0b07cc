"""Shared pieces of the side-by-side benchmarks: threads, peers, timing, fresh-process timing, reports.

Each benchmark script builds the same model in every framework it finds (Lantern always;
PyTorch eager, ``torch.compile`` and ``jax.jit`` when installed: the optional ``peers``
extra), from the same NumPy initial parameters, checks that the first-step losses agree,
and times steady-state training steps (warm-up, repeats, median and min-max). Results go
to ``benchmarks/results/<name>.json``, a Markdown table on stdout (also appended to
``results/<name>.md``) and, when matplotlib is installed, ``results/<name>.png``.

Threads (``--threads N``, default 2) are set before any framework is imported:

* Lantern: ``LANTERN_NUM_THREADS=N`` (OpenMP loops of the generated C and OpenBLAS);
* PyTorch: ``torch.set_num_threads(N)`` and ``torch.set_num_interop_threads(N)``;
* JAX/XLA: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=<N > 1> intra_op_parallelism_threads=N``;
* everything else that reads them: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``;
* when ``N`` is below the cores this process may use, the process is also pinned to the
  first ``N`` of them (``os.sched_setaffinity``), which bounds every framework's thread pool.

First-call time (trace, differentiate, emit C, compile, load, run one step) and cache-hit
time are measured in fresh Python processes, the first with an empty ``LANTERN_CACHE_DIR``
and the second with the same (now filled) one.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = Path(os.environ.get("LANTERN_BENCH_RESULTS") or HERE / "results")  # tests point it elsewhere
FRAMEWORKS = ("lantern", "torch eager", "torch.compile", "jax.jit")


def parse_args(description: str, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few steps only, no fresh-process timing (CI)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LANTERN_NUM_THREADS", 2)),
                        help="threads for every framework (default 2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs (median, min-max)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help="comma-separated subset of: " + ", ".join(FRAMEWORKS))
    parser.add_argument("--no-fresh", action="store_true", help="skip the fresh-process first-call timing")
    if add is not None:
        add(parser)
    args = parser.parse_args()
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown frameworks {sorted(unknown)}; choose from {FRAMEWORKS}")
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.frameworks = [f for f in args.frameworks if f != "torch.compile"]  # compiling takes ~10 s
        args.no_fresh = True
    set_threads(args.threads)
    return args


def set_threads(n: int) -> None:
    """The same thread count for every framework; call before importing any of them."""
    n = max(1, int(n))
    for var in ("LANTERN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))]
    flags += [f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}", f"intra_op_parallelism_threads={n}"]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if n < len(cpus):
            os.sched_setaffinity(0, cpus[:n])


def torch_or_none(args: argparse.Namespace) -> Any:
    """``torch`` with the thread count set, or None when absent or not asked for."""
    if not {"torch eager", "torch.compile"} & set(args.frameworks):
        return None
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: skipping torch eager and torch.compile", file=sys.stderr)
        return None
    n = int(os.environ["LANTERN_NUM_THREADS"])
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set in this process
        pass
    return torch


def jax_or_none(args: argparse.Namespace) -> Any:
    """``jax`` (CPU, float32) or None when absent or not asked for."""
    if "jax.jit" not in args.frameworks:
        return None
    try:
        import jax
    except ImportError:
        print("JAX is not installed: skipping jax.jit", file=sys.stderr)
        return None
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", False)
    return jax


def timed_row(rows: list[dict[str, Any]], first_losses: dict[str, float], name: str, first: Callable[[], Any],
              once: Callable[[], Any], steps: int, repeats: int, warmup: int = 3) -> None:
    """Time ``first()`` (the first call: tracing, compiling; its result is the first loss), then ``once()``
    (one step or epoch) ``steps`` times per repeat; append the row to ``rows``."""
    out, first_s = timed(first)
    first_losses[name] = float(out)
    rows.append({"framework": name, "first_call_s": round(first_s, 3), **time_steps(once, steps, repeats, warmup)})


def cycling_steps(step: Callable[..., Any], params: Any, state: Any, batches: list[tuple], losses: list[float]) -> Callable[[], None]:
    """A thunk that runs ``step(params, state, *batch) -> (params, state, loss)`` on the next batch (in
    turn) each call, carrying the parameters and optimizer state, and appends each loss to ``losses``."""
    carried = {"p": params, "s": state, "i": 0}

    def once() -> None:
        batch = batches[carried["i"] % len(batches)]
        carried["i"] += 1
        carried["p"], carried["s"], loss = step(carried["p"], carried["s"], *batch)
        losses.append(float(loss))
    return once


def lantern_train_step(loss_fn: Callable[..., Any], opt: Any) -> Any:
    """``step(params, state, *batch) -> (params, state, loss)``: forward, backward and the optimizer
    update of ``loss_fn(params, *batch)``, staged as one native call."""
    import lantern

    @lantern.stage
    def step(p, state, *batch):
        loss, g = lantern.value_and_grad(loss_fn)(p, *batch)
        p, state = opt.update(g, state, p)
        return p, state, loss

    return step


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "jax", "jaxlib"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    try:
        from importlib.metadata import version
        out["lantern"] = version("lantern-staged")
        out["scipy-openblas32"] = version("scipy-openblas32")
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        out["cc"] = subprocess.run([os.environ.get("CC", "cc"), "--version"], capture_output=True,
                                   text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip()
    except OSError:
        pass
    return out


def time_steps(step: Callable[[], Any], steps: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Per-step time (ms) over ``repeats`` runs of ``steps`` calls of ``step``: median, min, max.

    Also the process's CPU time per step (all its threads, median): on a machine shared with
    other jobs, wall time includes waiting for a core and CPU time does not; at one thread it
    is the steadier figure to compare (with more threads it also counts threads spinning).
    ``step`` must block until its result is computed (``block_until_ready`` for JAX)."""
    for _ in range(warmup):
        step()
    runs, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t0) / steps * 1e3)
        cpu.append((time.process_time() - c0) / steps * 1e3)
    return {"median_ms": float(np.median(runs)), "min_ms": float(min(runs)), "max_ms": float(max(runs)),
            "cpu_median_ms": float(np.median(cpu)), "steps_per_run": steps, "runs": len(runs)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds (for a framework's first, compiling call)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


FRESH_CODE = """\
import time, json, sys
t0 = time.perf_counter()
sys.path.insert(0, {bench!r})
import {module} as m
t1 = time.perf_counter()
run = m.{setup}
t2 = time.perf_counter()
run()
t3 = time.perf_counter()
from lantern.codegen import cache as compile_cache
print("FRESH " + json.dumps({{"imports_s": t1 - t0, "setup_s": t2 - t1, "first_call_s": t3 - t2,
                              "compiles": compile_cache.STATS["compiles"], "disk_hits": compile_cache.STATS["disk_hits"]}}))
"""


def fresh_process(module: str, setup: str) -> dict[str, Any]:
    """First-call and cache-hit times of Lantern, each in a new Python process.

    ``module.setup`` (a Python expression such as ``"lantern_setup(100, 25, 1)"``) must build
    data and parameters and return a thunk that runs one training step. The first process
    gets an empty compile cache, the second the cache the first one filled. Per process:
    ``wall_s`` (from ``exec`` to exit, interpreter start included), ``imports_s``, ``setup_s``
    (data and parameters), ``first_call_s`` (trace + AD + C + compile-or-cache-hit + load + run)."""
    code = FRESH_CODE.format(bench=str(HERE), module=module, setup=setup)
    out: dict[str, Any] = {}
    old = os.environ.get("LANTERN_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="lantern-bench-cache-") as cache:
        os.environ["LANTERN_CACHE_DIR"] = cache
        try:
            for label in ("empty_cache", "cache_hit"):
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ),
                                      capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    raise RuntimeError(f"fresh process failed:\n{proc.stderr[-3000:]}")
                line = next(x for x in proc.stdout.splitlines() if x.startswith("FRESH "))
                out[label] = {"wall_s": round(wall, 3),
                              **{k: (round(v, 4) if isinstance(v, float) else v)
                                 for k, v in json.loads(line[6:]).items()}}
        finally:
            if old is None:
                os.environ.pop("LANTERN_CACHE_DIR", None)
            else:
                os.environ["LANTERN_CACHE_DIR"] = old
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    out["python_startup_s"] = round(time.perf_counter() - t0, 3)
    return out


def check_losses(first_losses: dict[str, float], tol: float) -> float:
    """The largest difference between the frameworks' first-step losses (asserted below ``tol``)."""
    spread = max(first_losses.values()) - min(first_losses.values()) if first_losses else 0.0
    assert np.isfinite(spread) and spread <= tol, f"first-step losses disagree by {spread:g}: {first_losses}"
    return float(spread)


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, **versions()}


def markdown(name: str, config: dict[str, Any], rows: list[dict[str, Any]], unit: str) -> str:
    base = next((r["median_ms"] for r in rows if r["framework"] == "lantern"), None)
    lines = [f"### {name} ({', '.join(f'{k}={v}' for k, v in config.items())})", "",
             f"| framework | ms/{unit} (median) | min-max | CPU ms/{unit} (median) | first {unit} s "
             "| Lantern is faster by |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['median_ms'] / base:.2f}x" if base and r["framework"] != "lantern" else ""
        first = f"{r['first_call_s']:.2f}" if r.get("first_call_s") is not None else ""
        cpu = f"{r['cpu_median_ms']:.3f}" if r.get("cpu_median_ms") is not None else ""
        lines.append(f"| {r['framework']} | {r['median_ms']:.3f} | {r['min_ms']:.3f}-{r['max_ms']:.3f} | {cpu} "
                     f"| {first} | {ratio} |")
    return "\n".join(lines)


def plot(name: str, rows: list[dict[str, Any]], unit: str) -> Path | None:
    """A bar chart of median time per step with min-max whiskers (None without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 3.2))
    ax = fig.add_subplot()
    med = [r["median_ms"] for r in rows]
    err = [[m - r["min_ms"] for m, r in zip(med, rows)], [r["max_ms"] - m for m, r in zip(med, rows)]]
    colors = ["#d95f02" if r["framework"] == "lantern" else "#7570b3" for r in rows]
    ax.bar([r["framework"] for r in rows], med, yerr=err, color=colors, capsize=4)
    ax.set_ylabel(f"ms per {unit} (median, min-max)")
    ax.set_title(name)
    for i, m in enumerate(med):
        ax.annotate(f"{m:.3g}", (i, m), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=100)
    return path


def report(name: str, config: dict[str, Any], rows: list[dict[str, Any]], extra: dict[str, Any],
           unit: str = "step") -> dict[str, Any]:
    """Write ``results/<name>.json`` (+ ``.md``, ``.png``) and print the Markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"benchmark": name, "unit": unit, "config": config, "machine": machine(), "rows": rows, **extra,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    table = markdown(name, config, rows, unit)
    notes = [f"- {k}: {json.dumps(v)}" for k, v in extra.items()]
    (RESULTS / f"{name}.md").write_text(table + "\n\n" + "\n".join(notes) + "\n")
    png = plot(name, rows, unit)
    if png is not None:
        out["chart"] = str(png)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2))
    print("\n" + table + "\n")
    for line in notes:
        print(line)
    sys.stdout.flush()
    return out
