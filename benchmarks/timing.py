"""Shared timing helper of the benchmark scripts (run them as ``python benchmarks/NAME.py``)."""
from __future__ import annotations

import time
from typing import Callable


def per_call_us(fn: Callable[[], object], reps: int, inner: int | None = None, target_s: float = 0.15) -> list[float]:
    """Per-call time in µs of ``reps`` batches of ``inner`` calls of ``fn`` (after one warm-up call).

    Without ``inner``, batches are sized so that all of them take about ``target_s``.
    """
    fn()
    if inner is None:
        inner, t0 = 1, time.perf_counter()
        while True:
            for _ in range(inner):
                fn()
            if time.perf_counter() - t0 > target_s / reps / 4 or inner > 1 << 16:
                break
            inner *= 4
            t0 = time.perf_counter()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner * 1e6)
    return times
