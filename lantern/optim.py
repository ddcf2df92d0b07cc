"""Optimizers whose update is staged into the same native call as forward and backward.

Each optimizer is a small object of hyperparameters with two functions over nested
dicts/tuples of parameters:

* ``init(params) -> state``: NumPy arrays (pass them to the staged step with the params);
* ``update(grads, state, params) -> (new_params, new_state)``: call it inside a
  ``@lantern.stage`` function, on staged tensors (it also runs on NumPy arrays).

The formulas are PyTorch's (``torch.optim``), including Adam's bias correction, Nesterov
momentum and AdamW's decoupled weight decay.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import ops
from .tensor import Tensor
from .tree import flatten, tree_map, unflatten

Tree = Any


def _sqrt(x: Any) -> Any:
    return ops.sqrt(x) if isinstance(x, Tensor) else np.sqrt(x)


def _zeros_like(params: Tree, value: float = 0.0) -> Tree:
    return tree_map(lambda p: np.full(np.shape(p), value, dtype=np.asarray(p).dtype), params)


class SGD:
    """``p -= lr * (g + wd p)``, with momentum ``b = mu b + g`` (Nesterov: ``g + mu b``)."""

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay

    def init(self, params: Tree) -> Tree:
        return {"momentum": _zeros_like(params)} if self.momentum else {}

    def update(self, grads: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        if self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        if not self.momentum:
            return tree_map(lambda p, g: p - self.lr * g, params, grads), state
        buf = tree_map(lambda b, g: self.momentum * b + g, state["momentum"], grads)
        step = tree_map(lambda g, b: g + self.momentum * b, grads, buf) if self.nesterov else buf
        return tree_map(lambda p, s: p - self.lr * s, params, step), {"momentum": buf}


class Adagrad:
    """``s += g^2; p -= lr * g / (sqrt(s) + eps)``."""

    def __init__(self, lr: float = 0.01, eps: float = 1e-10, initial_accumulator_value: float = 0.0):
        self.lr, self.eps, self.initial = lr, eps, initial_accumulator_value

    def init(self, params: Tree) -> Tree:
        return {"sum": _zeros_like(params, self.initial)}

    def update(self, grads: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        total = tree_map(lambda s, g: s + g * g, state["sum"], grads)
        new = tree_map(lambda p, g, s: p - self.lr * g / (_sqrt(s) + self.eps), params, grads, total)
        return new, {"sum": total}


class Adam:
    """Adam with bias correction; ``weight_decay`` adds ``wd p`` to the gradient (L2, as in PyTorch)."""

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def init(self, params: Tree) -> Tree:
        return {"step": np.zeros((), np.float64), "m": _zeros_like(params), "v": _zeros_like(params)}

    def update(self, grads: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
        b1, b2 = self.betas
        step = state["step"] + 1.0
        if self.weight_decay and self.decoupled:
            params = tree_map(lambda p: p * (1 - self.lr * self.weight_decay), params)
        elif self.weight_decay:
            grads = tree_map(lambda g, p: g + self.weight_decay * p, grads, params)
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        correction1 = 1 - b1 ** step
        root2 = _sqrt(1 - b2 ** step)

        def apply(p: Any, m: Any, v: Any) -> Any:
            bias = (self.lr / correction1) * root2  # PyTorch: lr / (1 - b1^t) * sqrt(1 - b2^t)
            out = p - _astype_like(bias, p) * m / (_sqrt(v) + _astype_like(self.eps * root2, p))
            return out
        return tree_map(apply, params, m, v), {"step": step, "m": m, "v": v}


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr * wd`` before the Adam step."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(lr, betas, eps, weight_decay)


def _astype_like(x: Any, like: Any) -> Any:
    """A scalar factor in the dtype of ``like`` (a float64 step count must not widen float32 params)."""
    if isinstance(like, Tensor):
        return ops.astype(x, like.dtype) if isinstance(x, Tensor) else x
    return np.asarray(x, dtype=np.asarray(like).dtype)


def clip_by_value(grads: Tree, lo: float, hi: float) -> Tree:
    """Elementwise clip (min-char-rnn's ``np.clip(g, -5, 5)``)."""
    return tree_map(lambda g: ops.clip(g, lo, hi) if isinstance(g, Tensor) else np.clip(g, lo, hi), grads)


def clip_by_global_norm(grads: Tree, max_norm: float) -> Tree:
    """PyTorch's ``clip_grad_norm_``: scale all gradients by ``max_norm / (norm + 1e-6)`` when that is < 1."""
    leaves, td = flatten(grads)
    staged = any(isinstance(g, Tensor) for g in leaves)
    if staged:
        total = ops.sqrt(sum(ops.sum(ops.astype(g, "float64") * ops.astype(g, "float64")) for g in leaves))
        scale = ops.minimum(max_norm / (total + 1e-6), 1.0)
        return unflatten(td, [g * ops.astype(scale, g.dtype) for g in leaves])
    total = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in leaves))
    scale = min(max_norm / (total + 1e-6), 1.0)
    return unflatten(td, [(g * scale).astype(np.asarray(g).dtype) for g in leaves])


__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "clip_by_global_norm", "clip_by_value"]
