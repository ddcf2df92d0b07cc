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

Hyperparameters (learning rate, momentum, betas, weight decay, ...) may be

* Python numbers (or NumPy scalars given outside staging): constants of the generated code, so a
  different value is a different kernel (compiled once and cached);
* staged scalars: pass the value into the staged step as an argument (``np.float32(lr)``) and build
  the optimizer there, ``AdamW(lr=lr)``; a new value each call needs no recompilation;
* schedules (:mod:`lantern.optim.schedules`, or any function of the 0-based step index): evaluated on
  the optimizer's own step counter inside the update, so the value changes every step with one compile::

      opt = lantern.optim.AdamW(lr=lantern.optim.schedules.warmup_cosine(3e-4, warmup=100, total=5000))
"""
from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np

from . import schedules
from .errors import ArgumentError
from .tracing import with_location
from .tree import flatten, tree_map, unflatten

#: A hyperparameter: a number, a staged scalar, or a schedule (a function of the 0-based step index).
Hyper = Any

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "AdamW", "clip_by_value", "clip_by_global_norm", "global_norm",
           "schedules"]


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
        raise with_location(ArgumentError, f"{what}: the structures differ: {ta} vs {tb}")


def _is_staged(value: Any) -> bool:
    from .tensor import Tensor
    return isinstance(value, Tensor)


def _nonneg(name: str, value: Any, below_one: bool = False) -> Any:
    """A checked hyperparameter: a number (as a float; >= 0, and < 1 with ``below_one``), or a staged
    scalar or schedule as it is (checked where it is known: never, or when the step runs)."""
    if callable(value) and not isinstance(value, (np.ndarray, np.generic)):
        return value
    if _is_staged(value):
        if value.ndim != 0:
            raise with_location(ArgumentError, f"invalid {name}: a hyperparameter must be a scalar, got {value!r}")
        return value
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) != 0:
        raise with_location(ArgumentError, f"invalid {name}: a hyperparameter must be a scalar, got shape "
                            f"{np.shape(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise with_location(ArgumentError, f"invalid {name}: expected a number, a staged scalar or a schedule, "
                            f"got {type(value).__name__} {value!r}") from None
    if not number >= 0.0 or (below_one and not number < 1.0):
        raise with_location(ArgumentError, f"invalid {name}: {number} (must be at least 0"
                            f"{' and below 1' if below_one else ''})")
    return number


def _is_zero(value: Any) -> bool:
    """A hyperparameter known to be 0 now (a staged value or a schedule may be anything)."""
    return isinstance(value, float) and value == 0.0


# ------------------------------------------------------------------ clipping

def clip_by_value(grads: Any, lo: float, hi: float) -> Any:
    """Each element clipped to ``[lo, hi]`` (min-char-rnn clips to ±5)."""
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        raise with_location(ArgumentError, f"clip_by_value: lo={lo} > hi={hi}")
    xp = _ops_for(grads)
    return tree_map(lambda g: xp.minimum(xp.maximum(g, lo), hi), grads)


def global_norm(grads: Any) -> Any:
    """The L2 norm of all leaves together (a 0-d value of the widest leaf dtype)."""
    xp = _ops_for(grads)
    leaves = flatten(grads)[0]
    if not leaves:
        raise with_location(ArgumentError, "global_norm: no arrays in the gradient tree")
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
            raise with_location(ArgumentError, f"{name}.update: the state has no {missing} (make it with "
                                f"{name}.init(params))")
        for slot in self.slots:
            _check_same_structure(f"{name}.update: state[{slot!r}] and params", state[slot], params)
        xp = _ops_for(grads, state, params)
        step = state["step"] + 1  # the number of this step, 1-based as in PyTorch
        if xp is _NUMPY:
            step = np.asarray(step, np.int64)
        hyper = self._at_step(state["step"])
        g_leaves, treedef = flatten(grads)
        p_leaves = flatten(params)[0]
        slot_leaves = [flatten(state[s])[0] for s in self.slots]
        new_p, new_slots = [], [[] for _ in self.slots]
        for i, (g, p) in enumerate(zip(g_leaves, p_leaves)):
            dt = xp.dtype(p)

            def scalar(x: Any, dt: Any = dt) -> Any:  # x (e.g. a step-dependent coefficient) in the parameter dtype
                return xp.astype(x, dt)

            p2, s2 = hyper._leaf(xp, step, scalar, g, p, [s[i] for s in slot_leaves])
            new_p.append(scalar(p2))  # parameters and slots keep the parameter's dtype (as in PyTorch)
            for lst, v in zip(new_slots, s2):
                lst.append(scalar(v))
        new_state = dict(state)
        new_state["step"] = step
        for slot, lst in zip(self.slots, new_slots):
            new_state[slot] = unflatten(treedef, lst)
        return unflatten(treedef, new_p), new_state

    def _at_step(self, t: Any) -> Optimizer:
        """This optimizer with its schedules evaluated at step index ``t`` (0-based)."""
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        evaluated = {k: v(t) for k, v in changes.items() if callable(v)}
        if isinstance(changes.get("betas"), tuple):
            betas = tuple(b(t) if callable(b) else b for b in changes["betas"])
            if betas != changes["betas"]:
                evaluated["betas"] = betas
        return dataclasses.replace(self, **evaluated) if evaluated else self  # type: ignore[type-var]

    def _leaf(self, xp: Any, step: Any, scalar: Any, g: Any, p: Any, slots: list[Any]) -> tuple[Any, list[Any]]:
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    """``torch.optim.SGD``: weight decay (L2, added to the gradient), momentum with dampening, Nesterov.

    With momentum, the buffer starts as the first gradient (``buf = g``), then
    ``buf = momentum * buf + (1 - dampening) * g``; the step uses ``g + momentum * buf``
    (Nesterov) or ``buf``; ``p -= lr * step``.
    """

    lr: Hyper = 1e-3
    _: KW_ONLY
    momentum: Hyper = 0.0
    dampening: Hyper = 0.0
    weight_decay: Hyper = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "dampening", "weight_decay"):
            object.__setattr__(self, name, _nonneg(name, getattr(self, name)))
        if self.nesterov and (_is_zero(self.momentum) or not _is_zero(self.dampening)):
            raise with_location(ArgumentError, "Nesterov momentum requires a momentum and zero dampening")

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return () if _is_zero(self.momentum) else ("momentum_buffer",)

    def _leaf(self, xp, step, scalar, g, p, slots):
        if not _is_zero(self.weight_decay):
            g = g + self.weight_decay * p
        if _is_zero(self.momentum):
            return p - self.lr * g, []
        (buf,) = slots
        if not _is_zero(self.dampening):  # the first step takes the gradient undamped (the buffer is zero then)
            buf = self.momentum * buf + scalar(xp.where(step == 1, 1.0, 1.0 - self.dampening)) * g
        else:
            buf = self.momentum * buf + g
        d = g + self.momentum * buf if self.nesterov else buf
        return p - self.lr * d, [buf]


@dataclass(frozen=True)
class Adagrad(Optimizer):
    """``torch.optim.Adagrad``: ``sum += g * g``; ``p -= clr * g / (sqrt(sum) + eps)`` with
    ``clr = lr / (1 + (step - 1) * lr_decay)``; weight decay adds ``weight_decay * p`` to ``g``."""

    lr: Hyper = 1e-2
    _: KW_ONLY
    lr_decay: Hyper = 0.0
    weight_decay: Hyper = 0.0
    initial_accumulator_value: float = 0.0
    eps: float = 1e-10

    slots = ("sum",)

    def __post_init__(self) -> None:
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            object.__setattr__(self, name, _nonneg(name, getattr(self, name)))

    def _slot_init(self, name, xp, p):
        return xp.full_like(p, self.initial_accumulator_value)

    def _leaf(self, xp, step, scalar, g, p, slots):
        if not _is_zero(self.weight_decay):
            g = g + self.weight_decay * p
        (acc,) = slots
        acc = acc + g * g
        lr = self.lr if _is_zero(self.lr_decay) else scalar(self.lr / (1.0 + (step - 1) * self.lr_decay))
        return p - lr * (g / (xp.sqrt(acc) + self.eps)), [acc]


@dataclass(frozen=True)
class Adam(Optimizer):
    """``torch.optim.Adam`` (L2 weight decay added to the gradient; optional AMSGrad)::

        m = m + (1 - beta1) * (g - m)           # lerp, as PyTorch computes it
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    lr: Hyper = 1e-3
    _: KW_ONLY
    betas: tuple[Hyper, Hyper] = (0.9, 0.999)
    eps: Hyper = 1e-8
    weight_decay: Hyper = 0.0
    amsgrad: bool = False

    _decoupled = False

    def __post_init__(self) -> None:
        for name in ("lr", "eps", "weight_decay"):
            object.__setattr__(self, name, _nonneg(name, getattr(self, name)))
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise with_location(ArgumentError, f"invalid betas {self.betas!r}: expected a pair")
        object.__setattr__(self, "betas", tuple(_nonneg("betas", b, below_one=True) for b in self.betas))

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def _leaf(self, xp, step, scalar, g, p, slots):
        b1, b2 = self.betas
        if not _is_zero(self.weight_decay):
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

    weight_decay: Hyper = 1e-2

    _decoupled = True

