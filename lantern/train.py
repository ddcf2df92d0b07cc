"""A training loop with a one-line progress display and an optional loss-curve PNG.

``step`` is a staged function ``step(params, opt_state, *batch) -> (params, opt_state,
loss, ...)``: forward, backward and the update in one native call. ``fit`` only feeds it
batches, shows progress and records the losses.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np


@dataclass
class History:
    params: Any
    opt_state: Any
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps_per_second(self) -> float:
        return len(self.losses) / self.seconds if self.seconds else float("nan")


def fit(step: Callable[..., tuple], params: Any, opt_state: Any, batches: Iterable[tuple], *,
        steps: int | None = None, log_every: int = 100, plot: str | None = None, out: Any = None) -> History:
    """Run ``step`` over ``batches`` (at most ``steps``); return the final state and the losses.

    Progress (step, smoothed loss, steps/s) is redrawn on one line in a terminal and
    printed every ``log_every`` steps otherwise. ``plot="loss.png"`` writes the loss curve
    (needs matplotlib: ``pip install 'lantern-staged[plot]'``).
    """
    out = out or sys.stdout
    tty = hasattr(out, "isatty") and out.isatty()
    history = History(params, opt_state)
    smooth = None
    start = time.perf_counter()
    for i, batch in enumerate(batches, start=1):
        if steps is not None and i > steps:
            break
        params, opt_state, loss, *_ = step(params, opt_state, *batch)
        value = float(loss)
        history.losses.append(value)
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if tty or i % log_every == 0:
            rate = i / (time.perf_counter() - start)
            line = f"step {i:6d}  loss {smooth:.4f}  {rate:8.1f} steps/s"
            out.write(("\r" + line) if tty else line + "\n")
            out.flush()
    history.seconds = time.perf_counter() - start
    if tty:
        out.write("\n")
    history.params, history.opt_state = params, opt_state
    if plot:
        save_loss_curve(history.losses, plot)
    return history


def save_loss_curve(losses: list[float], path: str) -> None:
    """Write the loss curve (raw and smoothed) as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("writing a loss curve needs matplotlib: pip install 'lantern-staged[plot]'") from exc
    x = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, losses, alpha=0.3, label="loss")
    ax.plot(x[window - 1:], smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
