"""Functional optimizers (PyTorch's ``torch.optim`` semantics) and gradient clipping.

An optimizer is a small immutable object holding its hyperparameters:

    opt = lantern.optim.Adam(lr=1e-3)
    state = opt.init(params)                             # a pytree of NumPy arrays

    @lantern.stage
    def train_step(params, state, x, y):
        loss, grads = lantern.value_and_grad(loss_fn)(params, x, y)
        grads = lantern.optim.clip_by_global_norm(grads, 1.0)
        params, state = opt.update(grads, state, params)
        return params, state, loss                       # forward, backward, update: one native call

``params``, ``grads`` and the optimizer's slots are the same nested structure of dicts, tuples
and lists (see :mod:`lantern.tree`); the state also holds an int64 step counter ``state["step"]``.

Every function here runs on staged tensors (inside ``@lantern.stage``: the update is traced
into the same generated C as the forward and backward pass) and equally on plain NumPy arrays
outside staging: when any leaf of the arguments is a staged :class:`~lantern.Tensor` the
update is written with lantern operations, otherwise with NumPy. Either way the parameters
keep their dtypes (float32 stays float32) and the inputs are never modified.

Hyperparameters are Python numbers, so they are compile-time constants of the generated code:
a different learning rate is a different kernel (compiled once and cached).
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np

from .tree import flatten, tree_map, unflatten

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW", "clip_by_value", "clip_by_global_norm", "global_norm"]


# ------------------------------------------------------------------ backends

class _NumPyOps:
    sqrt = staticmethod(np.sqrt)
    maximum = staticmethod(np.maximum)
    minimum = staticmethod(np.minimum)
    where = staticmethod(np.where)

    @staticmethod
    def zeros_like(x: Any) -> Any:
        return np.zeros_like(np.asarray(x))

    @staticmethod
    def full_like(x: Any, value: float) -> Any:
        return np.full_like(np.asarray(x), value)

    @staticmethod
    def sum(x: Any) -> Any:
        return np.sum(x)

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return np.asarray(x, dtype=dtype)

    @staticmethod
    def dtype(x: Any) -> Any:
        return np.asarray(x).dtype


class _LanternOps:
    def __getattr__(self, name: str) -> Any:
        from . import ops  # at call time: lantern.ops imports the package that imports us
        return getattr(ops, name)

    @staticmethod
    def dtype(x: Any) -> Any:
        return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


_NUMPY, _LANTERN = _NumPyOps(), _LanternOps()


def _ops_for(*trees: Any) -> Any:
    """lantern.ops when any leaf is a staged Tensor, else NumPy."""
    from .tensor import Tensor
    for tree in trees:
        if any(isinstance(leaf, Tensor) for leaf in flatten(tree)[0]):
            return _LANTERN
    return _NUMPY


def _check_same_structure(what: str, a: Any, b: Any) -> None:
    ta, tb = flatten(a)[1], flatten(b)[1]
    if ta != tb:
        raise ValueError(f"{what}: the structures differ: {ta} vs {tb}")


def _nonneg(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:
        raise ValueError(f"invalid {name}: {value} (must be >= 0)")
    return value


# ------------------------------------------------------------------ clipping

def clip_by_value(grads: Any, lo: float, hi: float) -> Any:
    """Each element clipped to ``[lo, hi]`` (min-char-rnn clips to ±5)."""
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        raise ValueError(f"clip_by_value: lo={lo} > hi={hi}")
    xp = _ops_for(grads)
    return tree_map(lambda g: xp.minimum(xp.maximum(g, lo), hi), grads)


def global_norm(grads: Any) -> Any:
    """The L2 norm of all leaves together (a 0-d value of the widest leaf dtype)."""
    xp = _ops_for(grads)
    leaves = flatten(grads)[0]
    if not leaves:
        raise ValueError("global_norm: no arrays in the gradient tree")
    total = None
    for g in leaves:
        sq = xp.sum(g * g)
        total = sq if total is None else total + sq
    return xp.sqrt(total)


def clip_by_global_norm(grads: Any, max_norm: float) -> Any:
    """All leaves scaled together so that their global L2 norm is at most ``max_norm``.

    PyTorch's ``clip_grad_norm_``: ``coef = max_norm / (total_norm + 1e-6)``, applied
    (multiplied into every gradient) only where it is below 1.
    """
    max_norm = _nonneg("max_norm", max_norm)
    xp = _ops_for(grads)
    coef = xp.minimum(max_norm / (global_norm(grads) + 1e-6), 1.0)
    return tree_map(lambda g: g * xp.astype(coef, xp.dtype(g)), grads)


# ------------------------------------------------------------------ optimizers

class Optimizer:
    """Base class: ``init(params) -> state`` and ``update(grads, state, params) -> (params, state)``."""

    slots: tuple[str, ...] = ()

    def _slot_init(self, name: str, xp: Any, p: Any) -> Any:
        return xp.zeros_like(p)

    def init(self, params: Any) -> dict[str, Any]:
        """The initial state: ``{"step": 0 (int64), <slot>: tree like params, ...}``."""
        xp = _ops_for(params)
        state: dict[str, Any] = {"step": np.zeros((), np.int64)}
        for name in self.slots:
            state[name] = tree_map(lambda p, name=name: self._slot_init(name, xp, p), params)
        return state

    def update(self, grads: Any, state: dict[str, Any], params: Any) -> tuple[Any, dict[str, Any]]:
        """New parameters and state after one step with ``grads`` (same structure as ``params``)."""
        name = type(self).__name__
        _check_same_structure(f"{name}.update(grads, state, params)", grads, params)
        missing = [k for k in ("step", *self.slots) if k not in state]
        if missing:
            raise ValueError(f"{name}.update: the state has no {missing} (make it with {name}.init(params))")
        for slot in self.slots:
            _check_same_structure(f"{name}.update: state[{slot!r}] and params", state[slot], params)
        xp = _ops_for(grads, state, params)
        step = state["step"] + 1  # the number of this step, 1-based as in PyTorch
        if xp is _NUMPY:
            step = np.asarray(step, np.int64)
        g_leaves, treedef = flatten(grads)
        p_leaves = flatten(params)[0]
        slot_leaves = [flatten(state[s])[0] for s in self.slots]
        new_p, new_slots = [], [[] for _ in self.slots]
        for i, (g, p) in enumerate(zip(g_leaves, p_leaves)):
            dt = xp.dtype(p)

            def scalar(x: Any, dt: Any = dt) -> Any:  # x (e.g. a step-dependent coefficient) in the parameter dtype
                return xp.astype(x, dt)

            p2, s2 = self._leaf(xp, step, scalar, g, p, [s[i] for s in slot_leaves])
            new_p.append(scalar(p2))  # parameters and slots keep the parameter's dtype (as in PyTorch)
            for lst, v in zip(new_slots, s2):
                lst.append(scalar(v))
        new_state = dict(state)
        new_state["step"] = step
        for slot, lst in zip(self.slots, new_slots):
            new_state[slot] = unflatten(treedef, lst)
        return unflatten(treedef, new_p), new_state

    def _leaf(self, xp: Any, step: Any, scalar: Any, g: Any, p: Any, slots: list[Any]) -> tuple[Any, list[Any]]:
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    """``torch.optim.SGD``: weight decay (L2, added to the gradient), momentum with dampening, Nesterov.

    With momentum, the buffer starts as the first gradient (``buf = g``), then
    ``buf = momentum * buf + (1 - dampening) * g``; the step uses ``g + momentum * buf``
    (Nesterov) or ``buf``; ``p -= lr * step``.
    """

    lr: float = 1e-3
    _: KW_ONLY
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            object.__setattr__(self, name, _nonneg(name, getattr(self, name)))
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("momentum_buffer",) if self.momentum else ()

    def _leaf(self, xp, step, scalar, g, p, slots):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if not self.momentum:
            return p - self.lr * g, []
        (buf,) = slots
        if self.dampening:  # the first step takes the gradient undamped (the buffer is zero then)
            buf = self.momentum * buf + scalar(xp.where(step == 1, 1.0, 1.0 - self.dampening)) * g
        else:
            buf = self.momentum * buf + g
        d = g + self.momentum * buf if self.nesterov else buf
        return p - self.lr * d, [buf]


@dataclass(frozen=True)
class Adagrad(Optimizer):
    """``torch.optim.Adagrad``: ``sum += g * g``; ``p -= clr * g / (sqrt(sum) + eps)`` with
    ``clr = lr / (1 + (step - 1) * lr_decay)``; weight decay adds ``weight_decay * p`` to ``g``."""

    lr: float = 1e-2
    _: KW_ONLY
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    slots = ("sum",)

    def __post_init__(self) -> None:
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            object.__setattr__(self, name, _nonneg(name, getattr(self, name)))

    def _slot_init(self, name, xp, p):
        return xp.full_like(p, self.initial_accumulator_value)

    def _leaf(self, xp, step, scalar, g, p, slots):
        if self.weight_decay:
            g = g + self.weight_decay * p
        (acc,) = slots
        acc = acc + g * g
        lr = scalar(self.lr / (1.0 + (step - 1) * self.lr_decay)) if self.lr_decay else self.lr
        return p - lr * (g / (xp.sqrt(acc) + self.eps)), [acc]


@dataclass(frozen=True)
class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 weight decay added to the gradient; optional AMSGrad)::

        m = m + (1 - beta1) * (g - m)           # lerp, as PyTorch computes it
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    lr: float = 1e-3
    _: KW_ONLY
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    _decoupled = False

    def __post_init__(self) -> None:
        for name in ("lr", "eps", "weight_decay"):
            object.__setattr__(self, name, _nonneg(name, getattr(self, name)))
        b1, b2 = (float(b) for b in self.betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid betas {self.betas}: each must be in [0, 1)")
        object.__setattr__(self, "betas", (b1, b2))

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def _leaf(self, xp, step, scalar, g, p, slots):
        b1, b2 = self.betas
        if self.weight_decay:
            if self._decoupled:
                p = p * (1.0 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        m, v = slots[0], slots[1]
        m = m + (1.0 - b1) * (g - m)
        v = b2 * v + (1.0 - b2) * (g * g)
        step_size = scalar(self.lr / (1.0 - b1 ** step))
        bc2_sqrt = scalar(xp.sqrt(1.0 - b2 ** step))
        out = [m, v]
        if self.amsgrad:
            vmax = xp.maximum(slots[2], v)
            out.append(vmax)
            v = vmax
        return p - step_size * (m / (xp.sqrt(v) / bc2_sqrt + self.eps)), out


@dataclass(frozen=True)
class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay, ``p *= 1 - lr * weight_decay``
    before the Adam step (the gradient is not changed)."""

    weight_decay: float = 1e-2

    _decoupled = True

