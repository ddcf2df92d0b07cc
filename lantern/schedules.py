"""Learning-rate (and other hyperparameter) schedules: functions of the step index ``t`` (0 for the first
step) that give the value for that step, as PyTorch's ``lr_scheduler`` classes and optax's schedules do.

A schedule works on a Python int (a float comes back) and on a staged int64 scalar (a staged float64
comes back), so an optimizer given one evaluates it inside the staged training step on its own step
counter: the value changes every step with no recompilation::

    opt = lantern.optim.AdamW(lr=lantern.optim.schedules.warmup_cosine(3e-4, warmup=100, total=5000))

Schedules compose with :func:`join` (one schedule after another, at given boundaries) and by
multiplying with a number (``0.5 * cosine(...)``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Schedule", "constant", "linear", "linear_warmup", "cosine", "step_decay", "exponential", "one_cycle",
           "join", "warmup_cosine"]


def _math(t: Any) -> Any:
    """lantern's operations for a staged step, NumPy's otherwise."""
    from .tensor import Tensor
    if isinstance(t, Tensor):
        from . import ops
        return ops
    return np


def _result(t: Any, value: Any) -> Any:
    from .tensor import Tensor
    return value if isinstance(t, Tensor) else float(value)


def _fraction(xp: Any, t: Any, length: int) -> Any:
    """``t / length`` clamped to [0, 1] (1 for an empty phase)."""
    if length <= 0:
        return t * 0.0 + 1.0
    return xp.minimum(xp.maximum(t * 1.0, 0.0), float(length)) / float(length)


class Schedule:
    """A function of the step index; ``schedule(t)`` is the value at step ``t`` (0-based)."""

    def __call__(self, t: Any) -> Any:
        xp = _math(t)
        return _result(t, self.value(xp, t))

    def value(self, xp: Any, t: Any) -> Any:
        raise NotImplementedError

    def __mul__(self, factor: float) -> Schedule:
        return _Scaled(self, float(factor))

    __rmul__ = __mul__


@dataclass(frozen=True)
class _Scaled(Schedule):
    inner: Schedule
    factor: float

    def value(self, xp: Any, t: Any) -> Any:
        return self.inner.value(xp, t) * self.factor


@dataclass(frozen=True)
class _Constant(Schedule):
    level: float

    def value(self, xp: Any, t: Any) -> Any:
        return t * 0.0 + self.level


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    return _Constant(float(value))


@dataclass(frozen=True)
class _Linear(Schedule):
    start: float
    end: float
    steps: int

    def value(self, xp: Any, t: Any) -> Any:
        return self.start + (self.end - self.start) * _fraction(xp, t, self.steps)


def linear(start: float, end: float, steps: int) -> Schedule:
    """From ``start`` at step 0 to ``end`` at step ``steps``, then ``end`` (optax's ``linear_schedule``;
    PyTorch's ``LinearLR`` with ``start = lr * start_factor``)."""
    return _Linear(float(start), float(end), int(steps))


def linear_warmup(peak: float, steps: int, start: float = 0.0) -> Schedule:
    """From ``start`` up to ``peak`` over ``steps`` steps, then ``peak``."""
    return linear(start, peak, steps)


@dataclass(frozen=True)
class _Cosine(Schedule):
    peak: float
    steps: int
    final: float

    def value(self, xp: Any, t: Any) -> Any:
        return self.final + (self.peak - self.final) * 0.5 * (1.0 + xp.cos(math.pi * _fraction(xp, t, self.steps)))


def cosine(peak: float, steps: int, final: float = 0.0) -> Schedule:
    """Cosine annealing from ``peak`` at step 0 to ``final`` at step ``steps``, then ``final`` (PyTorch's
    ``CosineAnnealingLR`` with ``T_max=steps, eta_min=final`` over its first half-period)."""
    return _Cosine(float(peak), int(steps), float(final))


@dataclass(frozen=True)
class _Power(Schedule):
    base: float
    gamma: float
    every: int

    def value(self, xp: Any, t: Any) -> Any:
        return self.base * self.gamma ** (t // self.every)


def step_decay(value: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``value * gamma ** (t // step_size)`` (PyTorch's ``StepLR``)."""
    if int(step_size) < 1:
        raise ValueError(f"step_decay: step_size must be at least 1, got {step_size}")
    return _Power(float(value), float(gamma), int(step_size))


def exponential(value: float, gamma: float) -> Schedule:
    """``value * gamma ** t`` (PyTorch's ``ExponentialLR``)."""
    return _Power(float(value), float(gamma), 1)


@dataclass(frozen=True)
class _Joined(Schedule):
    parts: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def value(self, xp: Any, t: Any) -> Any:
        out = self.parts[0].value(xp, t)
        for part, start in zip(self.parts[1:], self.boundaries):
            out = xp.where(t >= start, part.value(xp, t - start), out)
        return out


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]`` counting its steps from there, and so
    on (optax's ``join_schedules``)."""
    schedules, boundaries = tuple(schedules), tuple(int(b) for b in boundaries)
    if len(boundaries) != len(schedules) - 1 or list(boundaries) != sorted(boundaries):
        raise ValueError(f"join: {len(schedules)} schedules need {len(schedules) - 1} increasing boundaries, "
                         f"got {list(boundaries)}")
    return _Joined(schedules, boundaries)


def warmup_cosine(peak: float, warmup: int, total: int, final: float = 0.0, start: float = 0.0) -> Schedule:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` steps, then cosine decay to ``final`` at
    step ``total`` (the usual transformer schedule; optax's ``warmup_cosine_decay_schedule``)."""
    return join([linear_warmup(peak, warmup, start), cosine(peak, max(int(total) - int(warmup), 0), final)],
                [int(warmup)])


@dataclass(frozen=True)
class _OneCycle(Schedule):
    peak: float
    total: int
    pct_start: float
    div_factor: float
    final_div_factor: float

    def value(self, xp: Any, t: Any) -> Any:
        initial = self.peak / self.div_factor
        low = initial / self.final_div_factor
        rise_end = float(self.pct_start * self.total) - 1.0  # PyTorch's phase boundaries
        fall_end = float(self.total - 1)

        def anneal(start: float, end: float, pct: Any) -> Any:
            return end + (start - end) / 2.0 * (xp.cos(math.pi * pct) + 1.0)

        rise = anneal(initial, self.peak, xp.minimum(t / rise_end, 1.0) if rise_end > 0 else t * 0.0 + 1.0)
        fall = anneal(self.peak, low, xp.minimum((t - rise_end) / (fall_end - rise_end), 1.0))
        return xp.where(t <= rise_end, rise, fall)


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> Schedule:
    """PyTorch's ``OneCycleLR`` (cosine annealing, two phases): from ``max_lr / div_factor`` up to
    ``max_lr`` over the first ``pct_start`` of the steps, then down to ``max_lr / div_factor /
    final_div_factor`` at the last step."""
    if not 0.0 < pct_start < 1.0 or int(total_steps) < 2:
        raise ValueError(f"one_cycle: pct_start must be in (0, 1) and total_steps at least 2, got {pct_start}, "
                         f"{total_steps}")
    return _OneCycle(float(max_lr), int(total_steps), float(pct_start), float(div_factor), float(final_div_factor))
