"""Neural-network layers and losses on staged tensors.

A layer is a small object holding only hyperparameters. Its parameters are a plain dict
of NumPy arrays that :meth:`init` makes (PyTorch's default initialisation, PyTorch's
parameter names and layouts, so PyTorch and lantern can start from the very same values)
and that the caller passes into staged code, where ``layer(params, ...)`` computes with
them::

    lin = lantern.nn.Linear(784, 10)
    params = {"fc": lin.init(np.random.default_rng(0))}

    @lantern.stage
    def loss(params, x, y):
        return lantern.nn.cross_entropy(lin(params["fc"], x), y)

Everything here is written with :mod:`lantern.ops`, so gradients come from the existing
backward rules (``lantern.value_and_grad``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import ops
from .eager import eager
from .errors import DTypeError, ShapeError, TraceError
from .ir.types import FLOAT_DTYPES, INT_DTYPES, canonical_dtype
from .tensor import Tensor
from .tracing import with_location

Params = dict[str, np.ndarray]

__all__ = ["Layer", "Linear", "Embedding", "RNNCell", "LSTMCell", "TreeLSTMCell", "Conv2d", "MaxPool2d", "Dropout",
           "cross_entropy", "nll_loss"]


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(out) != 2 or any(not isinstance(d, (int, np.integer)) for d in out):
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(out[0]), int(out[1])


@eager
def linear(x: Any, weight: Any, bias: Any = None) -> Tensor:
    """``x @ weight.T + bias`` for ``x`` of shape ``[..., in]`` and ``weight`` of shape ``[out, in]``.

    One matrix product of all leading positions at once, with the weight read transposed
    in place (no copy of the weight)."""
    frame = ops._frame_of(x, weight, bias)
    dtype = ops._promote("linear", np.add, x, weight)
    x, w = ops._lift_as(x, dtype), ops._lift_as(weight, dtype)
    if w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[1]:
        raise with_location(ShapeError, f"linear: input of shape {x.shape} does not fit a weight of shape "
                            f"{w.shape} (expected [..., {w.shape[-1] if w.ndim else '?'}] @ [out, in].T)")
    lead = x.shape[:-1]
    x2 = ops.reshape(x, (math.prod(lead), x.shape[-1]))
    y = ops._emit(frame, "matmul", [x2, w], trans_b=True)
    if bias is not None:
        y = y + bias
    return ops.reshape(y, lead + (w.shape[0],))


class Layer:
    """Base class: hyperparameters in attributes, parameters made by :meth:`init`."""

    dtype: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a layer applied to NumPy arrays outside staging runs eagerly, as lantern's operations do
        super().__init_subclass__(**kwargs)
        for name in ("__call__", "leaf", "zero_state"):
            if name in vars(cls):
                setattr(cls, name, eager(vars(cls)[name]))

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        raise NotImplementedError

    def param_names(self) -> tuple[str, ...]:
        """The keys of this layer's parameter dict (what :meth:`init` makes)."""
        return ()

    def _checked(self, params: Params) -> Params:
        """``params`` if it has every key of this layer's: a missing or misspelled key is an error, not a
        parameter silently left out. (Other keys may be there: one dict can hold several layers'.)"""
        want = self.param_names()
        if not isinstance(params, dict):
            raise with_location(TraceError, f"{type(self).__name__}: parameters must be a dict with the keys "
                                f"{list(want)}, got {type(params).__name__}")
        missing = [k for k in want if k not in params]
        if missing:
            raise with_location(TraceError, f"{self!r}: parameters {missing} missing (the dict has "
                                f"{sorted(params, key=str)}; this layer uses {list(want)})")
        return params

    def _uniform(self, rng: np.random.Generator, bound: float, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(-bound, bound, shape).astype(self.dtype)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Linear(Layer):
    """``y = x @ weight.T + bias``; parameters ``{"weight": [out, in], "bias": [out]}``.

    Initialisation as PyTorch: every entry uniform in ``±1/sqrt(in_features)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = "float32"):
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bool(bias)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        rng = _generator(rng)
        bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
        params = {"weight": self._uniform(rng, bound, (self.out_features, self.in_features))}
        if self.bias:
            params["bias"] = self._uniform(rng, bound, (self.out_features,))
        return params

    def param_names(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.bias else ("weight",)

    def __call__(self, params: Params, x: Any) -> Tensor:
        params = self._checked(params)
        return linear(x, params["weight"], params.get("bias"))


class Embedding(Layer):
    """Rows of a table: ``{"weight": [num_embeddings, embedding_dim]}`` initialised N(0, 1) as PyTorch.

    ``layer(params, ids)`` gathers ``weight[ids]`` for integer ids of any shape (staged or constant)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Any = "float32"):
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        rng = _generator(rng)
        return {"weight": rng.standard_normal((self.num_embeddings, self.embedding_dim)).astype(self.dtype)}

    def param_names(self) -> tuple[str, ...]:
        return ("weight",)

    def __call__(self, params: Params, ids: Any) -> Tensor:
        return ops.take(self._checked(params)["weight"], ids, axis=0)


class RNNCell(Layer):
    """Elman cell ``h' = act(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)``, ``act`` tanh or relu.

    Parameters as ``torch.nn.RNNCell``: ``weight_ih [hidden, input]``, ``weight_hh [hidden, hidden]``,
    ``bias_ih [hidden]``, ``bias_hh [hidden]``, all uniform in ``±1/sqrt(hidden)``. ``x`` is
    ``[input]`` or ``[batch, input]`` (and ``h`` likewise)."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", bias: bool = True,
                 dtype: Any = "float32"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.nonlinearity, self.bias = nonlinearity, bool(bias)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return _recurrent_init(self, _generator(rng), 1)

    def param_names(self) -> tuple[str, ...]:
        return _recurrent_names(self.bias)

    def __call__(self, params: Params, x: Any, h: Any) -> Tensor:
        params = self._checked(params)
        pre = linear(x, params["weight_ih"], params.get("bias_ih")) + linear(h, params["weight_hh"],
                                                                             params.get("bias_hh"))
        return ops.tanh(pre) if self.nonlinearity == "tanh" else ops.relu(pre)

    def zero_state(self, *batch: int) -> Tensor:
        return ops.zeros(batch + (self.hidden_size,), self.dtype)


def _recurrent_names(bias: bool) -> tuple[str, ...]:
    return ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())


def _recurrent_init(cell: Any, rng: np.random.Generator, gates: int) -> Params:
    """PyTorch's recurrent-cell initialisation: everything uniform in ±1/sqrt(hidden), in the
    order weight_ih, weight_hh, bias_ih, bias_hh."""
    h, n = cell.hidden_size, cell.input_size
    bound = 1 / math.sqrt(h) if h else 0.0
    params = {"weight_ih": cell._uniform(rng, bound, (gates * h, n)),
              "weight_hh": cell._uniform(rng, bound, (gates * h, h))}
    if cell.bias:
        params["bias_ih"] = cell._uniform(rng, bound, (gates * h,))
        params["bias_hh"] = cell._uniform(rng, bound, (gates * h,))
    return params


def _chunks(t: Tensor, n: int) -> list[Tensor]:
    """``n`` equal pieces of the last axis."""
    size = t.shape[-1] // n
    return [t[..., k * size:(k + 1) * size] for k in range(n)]


class LSTMCell(Layer):
    """LSTM cell as ``torch.nn.LSTMCell``: ``layer(params, x, (h, c)) -> (h', c')``.

    Parameters ``weight_ih [4h, input]``, ``weight_hh [4h, h]``, ``bias_ih [4h]``, ``bias_hh [4h]``,
    uniform in ``±1/sqrt(h)``; gate rows in PyTorch's order input, forget, cell (g), output::

        i, f, g, o = split(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c')
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = "float32"):
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bool(bias)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return _recurrent_init(self, _generator(rng), 4)

    def param_names(self) -> tuple[str, ...]:
        return _recurrent_names(self.bias)

    def __call__(self, params: Params, x: Any, state: tuple[Any, Any]) -> tuple[Tensor, Tensor]:
        params = self._checked(params)
        h, c = state
        gates = linear(x, params["weight_ih"], params.get("bias_ih")) + linear(h, params["weight_hh"],
                                                                               params.get("bias_hh"))
        i, f, g, o = _chunks(gates, 4)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * ops.tanh(g)
        return ops.sigmoid(o) * ops.tanh(c), c

    def zero_state(self, *batch: int) -> tuple[Tensor, Tensor]:
        shape = batch + (self.hidden_size,)
        return ops.zeros(shape, self.dtype), ops.zeros(shape, self.dtype)


class TreeLSTMCell(Layer):
    """Binary (N-ary, N = 2) Tree-LSTM cell of Tai, Socher and Manning (2015), with one forget
    gate per child: ``layer(params, x, (h_l, c_l), (h_r, c_r)) -> (h, c)``.

    Parameters (``H = hidden_size``), all uniform in ``±1/sqrt(H)`` like PyTorch's cells:

    * ``weight_ih [4H, input]`` and ``bias [4H]``: the input's part of the gates, rows in the
      order ``i, f, o, u`` (the forget gates of both children share ``W_f x + b_f``, as in Tai et al.);
    * ``weight_hh [5H, 2H]``: the children's part, applied to ``concat(h_l, h_r)``, rows in the order
      ``i, f_l, f_r, o, u`` (so ``f_l`` and ``f_r`` each see both children: ``U_f^{kl}`` of the paper).

    ::

        xi, xf, xo, xu = split(x @ weight_ih.T + bias)
        hi, hfl, hfr, ho, hu = split(concat(h_l, h_r) @ weight_hh.T)
        i, f_l, f_r, o = sigmoid(xi + hi), sigmoid(xf + hfl), sigmoid(xf + hfr), sigmoid(xo + ho)
        c = i * tanh(xu + hu) + f_l * c_l + f_r * c_r;   h = o * tanh(c)

    Leaves have zero child states; :meth:`leaf` computes the same without the children's product.
    """

    def __init__(self, input_size: int, hidden_size: int, dtype: Any = "float32"):
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        rng = _generator(rng)
        h, n = self.hidden_size, self.input_size
        bound = 1 / math.sqrt(h) if h else 0.0
        return {"weight_ih": self._uniform(rng, bound, (4 * h, n)),
                "weight_hh": self._uniform(rng, bound, (5 * h, 2 * h)),
                "bias": self._uniform(rng, bound, (4 * h,))}

    def param_names(self) -> tuple[str, ...]:
        return ("weight_ih", "weight_hh", "bias")

    def __call__(self, params: Params, x: Any, left: tuple[Any, Any], right: tuple[Any, Any]) -> tuple[Tensor, Tensor]:
        params = self._checked(params)
        (hl, cl), (hr, cr) = left, right
        xi, xf, xo, xu = _chunks(linear(x, params["weight_ih"], params["bias"]), 4)
        hi, hfl, hfr, ho, hu = _chunks(linear(ops.concatenate([hl, hr], axis=-1), params["weight_hh"]), 5)
        c = (ops.sigmoid(xi + hi) * ops.tanh(xu + hu) + ops.sigmoid(xf + hfl) * cl + ops.sigmoid(xf + hfr) * cr)
        return ops.sigmoid(xo + ho) * ops.tanh(c), c

    def leaf(self, params: Params, x: Any) -> tuple[Tensor, Tensor]:
        """The cell with zero child states (a leaf of the tree)."""
        params = self._checked(params)
        xi, _, xo, xu = _chunks(linear(x, params["weight_ih"], params["bias"]), 4)
        c = ops.sigmoid(xi) * ops.tanh(xu)
        return ops.sigmoid(xo) * ops.tanh(c), c

    def zero_state(self, *batch: int) -> tuple[Tensor, Tensor]:
        shape = batch + (self.hidden_size,)
        return ops.zeros(shape, self.dtype), ops.zeros(shape, self.dtype)


def _pad(x: Tensor, axis: int, p: int) -> Tensor:
    """``p`` zeros on both sides of ``axis`` (by concatenating zero blocks)."""
    if not p:
        return x
    z = ops.zeros(x.shape[:axis] + (p,) + x.shape[axis + 1:], x.dtype)
    return ops.concatenate([z, x, z], axis=axis)


def _gather_windows(x: Tensor, axis: int, k: int, s: int, out: int) -> Tensor:
    """``x`` with ``axis`` (size n) replaced by ``k * out`` positions ``d + s * o`` (kernel offset
    ``d`` major): one gather with a small constant index, nothing when it is the identity."""
    idx = np.array([d + s * o for d in range(k) for o in range(out)], np.int64)
    if len(idx) == x.shape[axis] and np.array_equal(idx, np.arange(len(idx))):
        return x
    return ops.take(x, idx, axis=axis)


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as PyTorch) over NCHW input.

    Parameters ``{"weight": [out, in, kh, kw], "bias": [out]}``, uniform in ``±1/sqrt(in*kh*kw)``
    as PyTorch. Computed as im2col followed by one matrix product
    ``weight[out, in*kh*kw] @ columns[in*kh*kw, OH*OW*N]`` (BLAS when large). The columns come
    from one gather of whole rows of N values of the zero-padded input, with an index computed
    in the generated code, not one slice per kernel offset, so the generated C and its compile
    time do not grow with the kernel size. Input ``[N, C, H, W]`` or ``[C, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 dtype: Any = "float32"):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "Conv2d kernel_size")
        self.stride = _pair(stride, "Conv2d stride")
        self.padding = _pair(padding, "Conv2d padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: bad kernel_size {self.kernel_size}, stride {self.stride} or "
                             f"padding {self.padding}")
        self.bias = bool(bias)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        rng = _generator(rng)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
        params = {"weight": self._uniform(rng, bound, (self.out_channels, self.in_channels, kh, kw))}
        if self.bias:
            params["bias"] = self._uniform(rng, bound, (self.out_channels,))
        return params

    def param_names(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.bias else ("weight",)

    def __call__(self, params: Params, x: Any) -> Tensor:
        params = self._checked(params)
        x = ops.asarray(x)
        if x.ndim == 3:
            return ops.squeeze(self(params, ops.expand_dims(x, 0)), 0)
        w = ops.asarray(params["weight"])
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if x.ndim != 4 or x.shape[1] != w.shape[1] or w.shape[2:] != (kh, kw):
            raise with_location(ShapeError, f"Conv2d: input of shape {x.shape} does not fit a weight of shape "
                                f"{w.shape} (expected [N, {w.shape[1]}, H, W])")
        if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
            raise with_location(ShapeError, f"Conv2d: input {x.shape} with padding {self.padding} is smaller "
                                f"than the kernel {self.kernel_size}")
        dtype = ops._promote("Conv2d", np.add, x, w)
        x, w = ops._lift_as(x, dtype), ops._lift_as(w, dtype)
        n, c = x.shape[:2]
        out_ch = w.shape[0]
        oh, ow = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
        # im2col as one gather (so the C stays small whatever the kernel size): batch last,
        # [C, H*W, N] padded, so every gathered row is N contiguous values; the rows, ordered
        # [kh, kw, OH, OW], are pixel (i*sh + di, j*sw + dj) of window (i, j) at kernel offset
        # (di, dj). The index is computed in the generated code (a constant would put
        # kh*kw*OH*OW numbers in the C text), and the gather's gradient is one scatter-add.
        xt = ops.transpose(x, (1, 2, 3, 0))
        xt = _pad(_pad(xt, 1, ph), 2, pw)
        wp = xt.shape[2]
        xt = ops.reshape(xt, (c, xt.shape[1] * wp, n))
        down = ops.reshape(ops.arange(kh), (kh, 1, 1, 1)) + ops.reshape(ops.arange(0, oh * sh, sh), (1, 1, oh, 1))
        across = ops.reshape(ops.arange(kw), (1, kw, 1, 1)) + ops.reshape(ops.arange(0, ow * sw, sw), (1, 1, 1, ow))
        idx = ops.reshape(down * wp + across, (kh * kw * oh * ow,))
        cols = ops.reshape(ops.take(xt, idx, axis=1), (c * kh * kw, oh * ow * n))  # [C, kh*kw*OH*OW, N]
        y = ops.matmul(ops.reshape(w, (out_ch, c * kh * kw)), cols)  # [out, OH*OW*N]: one product
        if self.bias:
            y = y + ops.expand_dims(ops.asarray(params["bias"]), 1)
        return ops.transpose(ops.reshape(y, (out_ch, oh, ow, n)), (3, 0, 1, 2))


class MaxPool2d(Layer):
    """Max over ``kernel_size`` windows of the last two axes (NCHW or CHW), no padding; the
    output has ``floor((H - k) / stride) + 1`` rows as PyTorch. ``stride`` defaults to the kernel size;
    then it is a reshape and one reduction, else two gathers of the windows and one reduction. Gradients of ties
    are shared among the tied elements (PyTorch routes them to one). No parameters."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None):
        self.kernel_size = _pair(kernel_size, "MaxPool2d kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "MaxPool2d stride")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"MaxPool2d: bad kernel_size {self.kernel_size} or stride {self.stride}")

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return {}

    def __call__(self, params_or_x: Any, x: Any = None) -> Tensor:
        x = ops.asarray(params_or_x if x is None else x)  # pool(x) and pool(params, x) both work
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if x.ndim < 2 or x.shape[-2] < kh or x.shape[-1] < kw:
            raise with_location(ShapeError, f"MaxPool2d: input of shape {x.shape} is smaller than the kernel "
                                f"{self.kernel_size}")
        h, w = x.shape[-2:]
        oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        if (kh, kw) == (sh, sw):
            if (oh * kh, ow * kw) != (h, w):
                x = x[..., :oh * kh, :ow * kw]
            lead = x.shape[:-2]
            blocks = ops.reshape(x, lead + (oh, kh, ow, kw))
            return ops.max(blocks, (len(lead) + 1, len(lead) + 3))
        # Overlapping or sparse windows: gather them (as Conv2d does), then one reduction.
        lead = x.shape[:-2]
        x = _gather_windows(_gather_windows(x, x.ndim - 2, kh, sh, oh), x.ndim - 1, kw, sw, ow)
        return ops.max(ops.reshape(x, lead + (kh, oh, kw, ow)), (len(lead), len(lead) + 2))


class Dropout(Layer):
    """Inverted dropout: ``layer(x, key, training=True)`` zeroes each element with probability
    ``rate`` and scales the kept ones by ``1 / (1 - rate)``; ``training=False`` is the identity.

    The mask is drawn in the generated code from ``key`` (a Python int or a staged integer
    scalar; see :func:`lantern.random_uniform`): the same key gives the same mask. Use a
    different key per step and per dropout site. No parameters."""

    def __init__(self, rate: float = 0.5):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1], got {rate}")
        self.rate = float(rate)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return {}

    def __call__(self, x: Any, key: Any, training: bool = True) -> Tensor:
        x = ops.asarray(x)
        if not training or self.rate == 0.0:
            return x
        if x.type.dtype not in FLOAT_DTYPES:
            raise with_location(DTypeError, f"Dropout: expected a float tensor, got {x.type}")
        if self.rate == 1.0:
            return ops.zeros_like(x)
        keep = ops.random_uniform(key, x.shape, x.type.dtype) >= self.rate
        return ops.where(keep, x * (1.0 / (1.0 - self.rate)), 0.0)


# ------------------------------------------------------------------ losses

def _reduce_loss(losses: Tensor, reduction: str, what: str) -> Tensor:
    if reduction == "mean":
        return ops.mean(losses)
    if reduction == "sum":
        return ops.sum(losses)
    if reduction == "none":
        return losses
    raise ValueError(f"{what}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@eager
def nll_loss(log_probs: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood ``-log_probs[..., targets]`` with classes on the LAST axis.

    ``log_probs`` is ``[..., C]`` (floats), ``targets`` ``[...]`` integer classes in ``[0, C)``
    (a target outside the range is an ``OutOfBoundsError`` at run time, as in PyTorch). ``reduction``:
    ``"mean"`` over all positions, ``"sum"``, or ``"none"`` (shape of ``targets``)."""
    lp = ops.asarray(log_probs)
    t = ops.asarray(targets)
    if lp.type.dtype not in FLOAT_DTYPES:
        raise with_location(DTypeError, f"nll_loss: log-probabilities must be floats, got {lp.type}")
    if t.type.dtype not in INT_DTYPES:
        raise with_location(DTypeError, f"nll_loss: targets must be integer classes, got {t.type}")
    if lp.ndim == 0 or lp.shape[:-1] != t.shape:
        raise with_location(ShapeError, f"nll_loss: targets of shape {t.shape} do not match log-probabilities "
                            f"of shape {lp.shape} (expected targets of shape {lp.shape[:-1]}; classes are last)")
    picked = ops.sum(lp * ops.one_hot(t, lp.shape[-1], lp.type.dtype), -1)
    return _reduce_loss(-picked, reduction, "nll_loss")


@eager
def cross_entropy(logits: Any, targets: Any, reduction: str = "mean") -> Tensor:
    """``nll_loss(log_softmax(logits, -1), targets)``: logits ``[..., C]`` (classes last) and
    integer targets ``[...]``; numerically stable for any logits."""
    logits = ops.asarray(logits)
    if logits.ndim == 0:
        raise with_location(ShapeError, "cross_entropy: logits must have a class axis (got a scalar)")
    return nll_loss(ops.log_softmax(logits, -1), targets, reduction)
