"""A small training loop: feeds batches to a staged step, shows progress, records the losses.

    opt = lantern.optim.Adam(1e-3)

    @lantern.stage
    def step(params, opt_state, x, y):
        loss, grads = lantern.value_and_grad(loss_fn)(params, x, y)
        params, opt_state = opt.update(grads, opt_state, params)
        return params, opt_state, loss

    result = lantern.train.fit(step, params, opt.init(params), batches, steps=1000, plot="loss.png")
    params, losses = result.params, result.losses

The progress display is one line (step, smoothed loss, steps/s) redrawn in place when the
output is a terminal, and plain periodic lines otherwise (logs, CI, notebooks' captured
output). The steps/s figure leaves out the first step, which traces and compiles.
``plot=...`` needs matplotlib (``pip install 'lantern-staged[plot]'``).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple, TextIO

import numpy as np

from .errors import ArgumentError

__all__ = ["FitResult", "fit", "named_arrays", "save_loss_curve", "save_params", "smooth"]

_MATPLOTLIB_HINT = "writing the loss curve needs matplotlib: pip install 'lantern-staged[plot]' (or matplotlib)"


class FitResult(NamedTuple):
    params: Any
    opt_state: Any
    losses: np.ndarray  # one float64 per step run
    aux: Any            # what the last step returned after the loss (None when it returned only a loss)
    seconds: float      # wall time of the whole loop, first (compiling) step included


def smooth(losses: Iterable[float], beta: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (so the first values are not pulled to 0)."""
    out, avg = [], 0.0
    for n, value in enumerate(losses, start=1):
        avg = beta * avg + (1.0 - beta) * float(value)
        out.append(avg / (1.0 - beta ** n))
    return np.asarray(out, dtype=np.float64)


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(_MATPLOTLIB_HINT) from None


def save_loss_curve(losses: Iterable[float], path: str, beta: float = 0.9) -> None:
    """Write the loss per step (light) and its moving average (dark) as a PNG at ``path``."""
    _need_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend and figures alone

    losses = np.asarray(list(losses), dtype=np.float64)
    steps = np.arange(1, len(losses) + 1)
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(steps, smooth(losses, beta), color="tab:blue", linewidth=2, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if len(losses) and np.all(losses > 0) and losses.max() > 100 * losses.min():
        ax.set_yscale("log")  # losses spanning orders of magnitude
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")


def named_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The arrays of a nested structure of dicts, lists and tuples under dotted paths (``"layers.0.weight"``),
    as checkpoints store them; ``None`` entries are left out."""
    named: dict[str, np.ndarray] = {}

    def go(t: Any, path: str) -> None:
        if t is None:
            return
        if isinstance(t, dict):
            items: Iterable[tuple[Any, Any]] = t.items()
        elif isinstance(t, (list, tuple)):
            items = zip(getattr(t, "_fields", range(len(t))), t)
        else:
            named[path] = np.asarray(t)
            return
        for key, child in items:
            go(child, f"{path}.{key}" if path else str(key))

    go(tree, "")
    return named


def save_params(params: Any, path: str, **info: Any) -> None:
    """Write ``params`` to the safetensors file ``path`` atomically (see :func:`named_arrays`); ``info``
    goes into the metadata as strings."""
    from .safetensors import save_file
    save_file(named_arrays(params), path, {k: str(v) for k, v in info.items()})


def _batch_source(batches: Any, steps: int | None, start: int) -> Iterable[Any]:
    """The batches from index ``start`` on (an iterable is advanced past the first ``start``)."""
    if callable(batches):
        if steps is None:
            raise ValueError("fit: with a function of the step index as batches, say how many steps (steps=...)")
        return (batches(i) for i in range(start, steps))
    it = iter(batches)
    for _ in range(start):
        next(it, None)
    return it


def _save_training_state(path: str, params: Any, opt_state: Any, losses: list[float]) -> None:
    from .saving import save
    save(path, {"params": params, "opt_state": opt_state, "step": len(losses),
                "losses": np.asarray(losses, dtype=np.float64)}, step=len(losses), loss=losses[-1])


def _resumed(path: str) -> tuple[Any, Any, list[float]]:
    """params, opt_state and the loss history of a checkpoint :func:`fit` wrote."""
    from .saving import load
    state = load(path)
    if not isinstance(state, dict) or not {"params", "opt_state", "step", "losses"} <= set(state):
        raise ArgumentError(f"fit: {path} is not a checkpoint written by fit (it has no params, opt_state, step "
                            "and losses); resume needs one")
    return state["params"], state["opt_state"], [float(v) for v in state["losses"]]


def fit(step: Callable[..., Any], params: Any, opt_state: Any, batches: Iterable[Any] | Callable[[int], Any], *,
        steps: int | None = None, log_every: int | None = None, smoothing: float = 0.9,
        plot: str | None = None, checkpoint: str | None = None, checkpoint_every: int | None = None,
        resume: bool = False, file: TextIO | None = None) -> FitResult:
    """Run ``step(params, opt_state, *batch) -> (params, opt_state, loss[, aux...])`` over ``batches``.

    ``batches``: an iterable of batches (a tuple is spread into arguments, anything else is
    one argument) or a function ``i -> batch``; ``steps`` stops after that many (required
    with a function). ``log_every``: steps between progress lines when the output is not a
    terminal (default: a tenth of ``steps``, or 100); 0 prints nothing. A terminal gets one
    line redrawn about ten times a second. ``plot``: a PNG path for the loss curve.
    ``checkpoint``: a safetensors path the training state is written to at the end (and every
    ``checkpoint_every`` steps) with :func:`lantern.save`: ``{"params", "opt_state", "step",
    "losses"}``, each array under its path (``"params.layers.0.weight"``; ``lantern.load(path)
    ["params"]`` reads the parameters back); written to a temporary file and renamed, and only once
    a step has finished, so a good checkpoint of the same name is never replaced by untrained
    parameters or half a file. ``resume=True`` continues from that checkpoint when it exists: its
    parameters, optimizer state and losses, from the batch after its last step (an iterable of
    batches is advanced past the ones already used), so the run ends as an uninterrupted one would.
    Ctrl-C (in Python or in the staged step's native code) stops the loop early; the last
    finished step is returned, and saved if ``checkpoint`` is given.
    """
    if plot:
        _need_matplotlib()  # before training, not after
    if steps is not None and steps < 0:
        raise ValueError(f"fit: steps={steps} must be >= 0")
    if checkpoint_every is not None and (checkpoint_every < 1 or not checkpoint):
        raise ValueError(f"fit: checkpoint_every={checkpoint_every} needs checkpoint= and must be >= 1")
    if resume and not checkpoint:
        raise ValueError("fit: resume=True needs checkpoint= (the file to resume from)")
    out = sys.stdout if file is None else file
    tty = bool(getattr(out, "isatty", lambda: False)())
    if log_every is None:
        log_every = max(1, steps // 10) if steps else 100
    quiet = log_every == 0
    total = f"/{steps}" if steps is not None else ""

    losses: list[float] = []
    if resume and checkpoint and os.path.exists(checkpoint):
        params, opt_state, losses = _resumed(checkpoint)
    done = len(losses)
    aux: Any = None
    avg = 0.0
    for value in losses:
        avg = smoothing * avg + (1.0 - smoothing) * value
    start = time.perf_counter()
    after_first = start
    last_draw = 0.0
    last_line = ""

    def line(i: int, now: float) -> str:
        rate = (f"{(i - done - 1) / (now - after_first):.1f} steps/s" if i > done + 1 and now > after_first
                else f"first step {now - start:.2f} s")  # the first call traces and compiles (or loads)
        return f"step {i}{total}  smoothed loss {avg / (1.0 - smoothing ** i):.4f}  {rate}"

    try:
        for i, batch in enumerate(_batch_source(batches, steps, done), start=done + 1):
            if steps is not None and i > steps:
                break
            args = batch if isinstance(batch, tuple) else (batch,)
            result = step(params, opt_state, *args)
            if not isinstance(result, tuple) or len(result) < 3:
                raise TypeError("fit: step must return (params, opt_state, loss[, aux...]), got "
                                f"{type(result).__name__}" + (f" of {len(result)}" if isinstance(result, tuple) else ""))
            params, opt_state, loss = result[:3]
            aux = None if len(result) == 3 else result[3] if len(result) == 4 else result[3:]
            value = float(loss)
            losses.append(value)
            avg = smoothing * avg + (1.0 - smoothing) * value
            now = time.perf_counter()
            if i == done + 1:
                after_first = now
            if checkpoint_every and i % checkpoint_every == 0:
                _save_training_state(checkpoint, params, opt_state, losses)
            if quiet:
                continue
            if tty:
                if now - last_draw >= 0.1:
                    text = line(i, now)
                    out.write("\r" + text.ljust(len(last_line)))
                    out.flush()
                    last_draw, last_line = now, text
            elif i % log_every == 0 or i == steps:
                out.write(line(i, now) + "\n")
                out.flush()
    except KeyboardInterrupt:
        if not quiet:
            out.write(f"\ninterrupted after {len(losses)} steps\n")
    seconds = time.perf_counter() - start
    ran = len(losses) - done
    if not quiet and ran:
        if tty:
            out.write("\r" + line(len(losses), time.perf_counter()).ljust(len(last_line)) + "\n")
        rest = f", then {(ran - 1) / max(seconds - (after_first - start), 1e-9):.1f} steps/s" if ran > 1 else ""
        resumed = f" after resuming at step {done}" if done else ""
        out.write(f"{ran} steps in {seconds:.2f} s{resumed} (first step {after_first - start:.2f} s{rest})\n")
        out.flush()
    if checkpoint and len(losses) > done:  # never over an existing checkpoint before a step has finished
        _save_training_state(checkpoint, params, opt_state, losses)
        if not quiet:
            out.write(f"checkpoint after step {len(losses)} written to {checkpoint}\n")
    elif checkpoint and not quiet:
        out.write(f"no step finished: {checkpoint} not written\n")
    history = np.asarray(losses, dtype=np.float64)
    if plot and losses:
        save_loss_curve(history, plot, smoothing)
        if not quiet:
            out.write(f"loss curve written to {plot}\n")
    return FitResult(params, opt_state, history, aux, seconds)
