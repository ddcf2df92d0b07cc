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
from typing import Any, Callable

import numpy as np

from . import ops
from .eager import eager
from .errors import ArgumentError, DTypeError, ShapeError, TraceError
from .ir.types import FLOAT_DTYPES, INT_DTYPES, canonical_dtype
from .tensor import Tensor
from .tracing import with_location

Params = dict[str, np.ndarray]

__all__ = ["Layer", "Linear", "Embedding", "RNNCell", "LSTMCell", "TreeLSTMCell", "Conv2d", "MaxPool2d", "Dropout",
           "LayerNorm", "RMSNorm", "GRUCell", "MultiheadAttention", "Sequential", "BatchNorm2d", "AvgPool2d",
           "cross_entropy", "nll_loss"]


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(out) != 2 or any(not isinstance(d, (int, np.integer)) for d in out):
        raise with_location(ArgumentError, f"{what} must be an int or a pair of ints, got {v!r}")
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

    def _checked(self, params: Params, kind: str = "parameters", want: tuple[str, ...] | None = None) -> Params:
        """This layer's entries of ``params``, which must have every key of this layer's: a missing or
        misspelled key is an error, not a parameter silently left out. Other keys may be there (one dict
        can hold several layers'), and are left out, so a layer made with ``bias=False`` ignores a
        ``"bias"`` there. ``kind`` and ``want`` name another dict of the layer's (BatchNorm2d's state)."""
        want = self.param_names() if want is None else want
        if not isinstance(params, dict):
            raise with_location(TraceError, f"{type(self).__name__}: {kind} must be a dict with the keys "
                                f"{list(want)}, got {type(params).__name__}")
        missing = [k for k in want if k not in params]
        if missing:
            raise with_location(TraceError, f"{self!r}: {kind} {missing} missing (the dict has "
                                f"{sorted(params, key=str)}; this layer uses {list(want)})")
        return {k: params[k] for k in want}

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
    as PyTorch. Float inputs are convolved directly (the ``conv2d`` primitive) in the layout
    ``[C, H, W, N]``, whose innermost loops run along the batch; the transposes to and from NCHW
    cancel against those of the neighbouring layers (``lantern/ir/passes/layout.py``). Integer
    inputs are computed as im2col followed by one matrix product
    ``weight[out, in*kh*kw] @ columns[in*kh*kw, OH*OW*N]``: the columns come from one gather of
    whole rows of N values of the zero-padded input, with an index computed in the generated
    code. Input ``[N, C, H, W]`` or ``[C, H, W]``.
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
        if dtype in FLOAT_DTYPES:  # direct convolution (no im2col copy), in [C, H, W, N] as the columns below
            y = ops._emit(ops._frame_of(xt, w), "conv2d", [xt, w], stride=(sh, sw))  # [out, OH, OW, N]
            if self.bias:
                y = y + ops.reshape(ops.asarray(params["bias"]), (out_ch, 1, 1, 1))
            return ops.transpose(y, (3, 0, 1, 2))
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


def _pool_args(name: str, kernel_size: Any, stride: Any, padding: Any = None
               ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Checked ``(kernel, stride, padding)`` pairs of a pooling layer; ``stride`` None is the kernel size,
    ``padding`` None (a layer without padding) is zero."""
    kernel = _pair(kernel_size, f"{name} kernel_size")
    stride = kernel if stride is None else _pair(stride, f"{name} stride")
    pad = (0, 0) if padding is None else _pair(padding, f"{name} padding")
    if min(kernel) < 1 or min(stride) < 1 or min(pad) < 0:
        raise with_location(ArgumentError, f"{name}: bad kernel_size {kernel}, stride {stride}"
                            + ("" if padding is None else f" or padding {pad}"))
    if any(2 * p > k for p, k in zip(pad, kernel)):  # PyTorch's limit: a window always holds input
        raise with_location(ArgumentError, f"{name}: padding {pad} must be at most half the kernel size {kernel}")
    return kernel, stride, pad


def _pool_windows(x: Tensor, name: str, kernel: tuple[int, int], stride: tuple[int, int],
                  padding: tuple[int, int] = (0, 0)) -> tuple[Tensor, tuple[int, int]]:
    """The pooling windows of ``x [..., H, W]`` zero-padded by ``padding``, and the two axes that run
    over a window: reducing them gives ``[..., OH, OW]`` with ``OH = (H + 2*ph - kh) // sh + 1`` as
    PyTorch. Windows that tile the input are a reshape; others are two gathers (as Conv2d's im2col)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if x.ndim < 2 or x.shape[-2] + 2 * ph < kh or x.shape[-1] + 2 * pw < kw:
        raise with_location(ShapeError, f"{name}: input of shape {x.shape} is smaller than the kernel {kernel}"
                            + (f" with padding {padding}" if ph or pw else ""))
    x = _pad(_pad(x, x.ndim - 2, ph), x.ndim - 1, pw)
    h, w = x.shape[-2:]
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    lead = x.shape[:-2]
    if (kh, kw) == (sh, sw):
        if (oh * kh, ow * kw) != (h, w):
            x = x[..., :oh * kh, :ow * kw]
        return ops.reshape(x, lead + (oh, kh, ow, kw)), (len(lead) + 1, len(lead) + 3)
    x = _gather_windows(_gather_windows(x, x.ndim - 2, kh, sh, oh), x.ndim - 1, kw, sw, ow)
    return ops.reshape(x, lead + (kh, oh, kw, ow)), (len(lead), len(lead) + 2)


class MaxPool2d(Layer):
    """Max over ``kernel_size`` windows of the last two axes (NCHW or CHW), no padding; the
    output has ``floor((H - k) / stride) + 1`` rows as PyTorch. ``stride`` defaults to the kernel size;
    then it is a reshape and one reduction, else two gathers of the windows and one reduction. Gradients of ties
    are shared among the tied elements (PyTorch routes them to one). No parameters."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None):
        self.kernel_size, self.stride, _ = _pool_args("MaxPool2d", kernel_size, stride)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return {}

    def __call__(self, params_or_x: Any, x: Any = None) -> Tensor:
        x = ops.asarray(params_or_x if x is None else x)  # pool(x) and pool(params, x) both work
        windows, axes = _pool_windows(x, "MaxPool2d", self.kernel_size, self.stride)
        return ops.max(windows, axes)


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


# ------------------------------------------------------------------ normalisation, GRU, attention, containers

def _norm_shape(normalized_shape: int | tuple[int, ...], name: str) -> tuple[int, ...]:
    shape = (normalized_shape,) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    if not shape or any(not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
        raise with_location(ArgumentError, f"{name}: normalized_shape must be a positive int or a non-empty "
                            f"tuple of them, got {normalized_shape!r}")
    return tuple(int(d) for d in shape)


def _float_input(x: Any, name: str) -> Tensor:
    x = ops.asarray(x)
    if x.type.dtype not in FLOAT_DTYPES:
        raise with_location(DTypeError, f"{name}: expected a float tensor, got {x.type}")
    return x


def _affine_init(layer: Layer, shape: tuple[int, ...]) -> Params:
    """A normalisation's affine parameters as PyTorch's: ``weight`` ones, ``bias`` zeros (those it has)."""
    return {k: (np.ones if k == "weight" else np.zeros)(shape, layer.dtype) for k in layer.param_names()}


def _trailing_axes(layer: LayerNorm | RMSNorm, x: Any) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` (floats) and its last ``len(normalized_shape)`` axes, which must be ``normalized_shape``."""
    name, shape = type(layer).__name__, layer.normalized_shape
    x = _float_input(x, name)
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise with_location(ShapeError, f"{name}: input of shape {x.shape} does not end in normalized_shape "
                            f"{shape}")
    return x, tuple(range(x.ndim - len(shape), x.ndim))


class LayerNorm(Layer):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last ``len(normalized_shape)`` axes,
    as ``torch.nn.LayerNorm``: the variance is the biased one (mean of squared deviations).

    Parameters ``{"weight": normalized_shape, "bias": normalized_shape}``, ones and zeros; none
    with ``elementwise_affine=False``, no ``"bias"`` with ``bias=False``."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype: Any = "float32"):
        self.normalized_shape = _norm_shape(normalized_shape, "LayerNorm")
        self.eps, self.elementwise_affine, self.bias = float(eps), bool(elementwise_affine), bool(bias)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return _affine_init(self, self.normalized_shape)

    def param_names(self) -> tuple[str, ...]:
        return (("weight", "bias") if self.bias else ("weight",)) if self.elementwise_affine else ()

    def __call__(self, params: Params, x: Any) -> Tensor:
        params = self._checked(params)
        x, axes = _trailing_axes(self, x)
        centred = x - ops.mean(x, axes, keepdims=True)
        y = centred * ops.rsqrt(ops.mean(centred * centred, axes, keepdims=True) + self.eps)
        if self.elementwise_affine:
            y = y * params["weight"]
            if self.bias:
                y = y + params["bias"]
        return y


class RMSNorm(Layer):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last ``len(normalized_shape)`` axes, as
    ``torch.nn.RMSNorm``. ``eps=None`` is the machine epsilon of the input's dtype (PyTorch's
    ``torch.finfo(x.dtype).eps``). Parameters ``{"weight": normalized_shape}`` (ones), none with
    ``elementwise_affine=False``."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float | None = None,
                 elementwise_affine: bool = True, dtype: Any = "float32"):
        self.normalized_shape = _norm_shape(normalized_shape, "RMSNorm")
        self.eps = None if eps is None else float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return _affine_init(self, self.normalized_shape)

    def param_names(self) -> tuple[str, ...]:
        return ("weight",) if self.elementwise_affine else ()

    def __call__(self, params: Params, x: Any) -> Tensor:
        params = self._checked(params)
        x, axes = _trailing_axes(self, x)
        eps = float(np.finfo(x.type.dtype).eps) if self.eps is None else self.eps
        y = x * ops.rsqrt(ops.mean(x * x, axes, keepdims=True) + eps)
        return y * params["weight"] if self.elementwise_affine else y


class GRUCell(Layer):
    """GRU cell as ``torch.nn.GRUCell``: ``layer(params, x, h=None) -> h'`` (``h`` None: zeros).

    Parameters ``weight_ih [3H, input]``, ``weight_hh [3H, H]``, ``bias_ih [3H]``, ``bias_hh [3H]``,
    uniform in ``±1/sqrt(H)``; gate rows in PyTorch's order reset, update, new::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr);   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) * n + z * h
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = "float32"):
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bool(bias)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return _recurrent_init(self, _generator(rng), 3)

    def param_names(self) -> tuple[str, ...]:
        return _recurrent_names(self.bias)

    def __call__(self, params: Params, x: Any, h: Any = None) -> Tensor:
        params = self._checked(params)
        x = ops.asarray(x)
        h = ops.zeros(x.shape[:-1] + (self.hidden_size,), x.type.dtype) if h is None else ops.asarray(h)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size or h.shape != x.shape[:-1] + (self.hidden_size,):
            raise with_location(ShapeError, f"GRUCell: input of shape {x.shape} and hidden state of shape {h.shape} "
                                f"do not fit input_size={self.input_size}, hidden_size={self.hidden_size} "
                                f"(expected [batch, {self.input_size}] and [batch, {self.hidden_size}], or unbatched)")
        xr, xz, xn = _chunks(linear(x, params["weight_ih"], params.get("bias_ih")), 3)
        hr, hz, hn = _chunks(linear(h, params["weight_hh"], params.get("bias_hh")), 3)
        r, z = ops.sigmoid(xr + hr), ops.sigmoid(xz + hz)
        n = ops.tanh(xn + r * hn)
        return (1 - z) * n + z * h

    def zero_state(self, *batch: int) -> Tensor:
        return ops.zeros(batch + (self.hidden_size,), self.dtype)


#: Score of a masked attention position: exp() of it is exactly 0, but (unlike PyTorch's -inf) a query
#: whose keys are all masked gets finite weights, so neither its output nor any gradient becomes NaN.
_MASKED = -1e30


class MultiheadAttention(Layer):
    """Multi-head attention as ``torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias,
    batch_first=True)`` without dropout: ``layer(params, query, key, value, attn_mask=None,
    key_padding_mask=None, need_weights=True, average_attn_weights=True, is_causal=False)`` returns
    ``(output [B, L, E], weights)`` for ``query [B, L, E]`` and ``key``, ``value`` ``[B, S, E]`` (or all
    unbatched, ``[L, E]`` and ``[S, E]``). ``weights`` is ``[B, L, S]`` averaged over the heads,
    ``[B, num_heads, L, S]`` with ``average_attn_weights=False``, None with ``need_weights=False``.

    Masks as PyTorch's: ``attn_mask`` ``[L, S]`` or ``[B * num_heads, L, S]``, ``key_padding_mask``
    ``[B, S]`` (``[S]`` unbatched); a boolean mask is True where attending is *not* allowed, a float
    mask is added to the scores. ``is_causal=True`` without ``attn_mask`` masks every key after the query's position
    (PyTorch requires the mask itself; with ``attn_mask``, the flag is only a hint and the mask is used).
    A query whose keys are all masked gets uniform weights where PyTorch gives NaN (see :data:`_MASKED`).

    Parameters as PyTorch's ``state_dict`` (one flat dict): ``in_proj_weight [3E, E]`` (rows: query,
    key, value projections; Xavier-uniform), ``in_proj_bias [3E]`` (zeros), ``out_proj.weight [E, E]``
    (uniform in ``±1/sqrt(E)``, as ``Linear``), ``out_proj.bias [E]`` (zeros); no biases with
    ``bias=False``."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, dtype: Any = "float32"):
        self.embed_dim, self.num_heads, self.bias = int(embed_dim), int(num_heads), bool(bias)
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise with_location(ArgumentError, f"MultiheadAttention: embed_dim={embed_dim} must be a positive "
                                f"multiple of num_heads={num_heads}")
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        rng = _generator(rng)
        e = self.embed_dim
        params = {"in_proj_weight": self._uniform(rng, math.sqrt(6 / (e + 3 * e)), (3 * e, e)),  # xavier_uniform_
                  "out_proj.weight": self._uniform(rng, 1 / math.sqrt(e), (e, e))}
        if self.bias:
            params["in_proj_bias"] = np.zeros(3 * e, self.dtype)
            params["out_proj.bias"] = np.zeros(e, self.dtype)
        return params

    def param_names(self) -> tuple[str, ...]:
        names = ("in_proj_weight", "out_proj.weight")
        return names + ("in_proj_bias", "out_proj.bias") if self.bias else names

    def __call__(self, params: Params, query: Any, key: Any, value: Any, attn_mask: Any = None,
                 key_padding_mask: Any = None, need_weights: bool = True, average_attn_weights: bool = True,
                 is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        params = self._checked(params)
        self_attention = query is key and key is value  # then one projection, as PyTorch
        q, k, v = (_float_input(t, "MultiheadAttention") for t in (query, key, value))
        if q.ndim == 2 and k.ndim == 2 and v.ndim == 2:  # unbatched: a batch of one
            kpm = None if key_padding_mask is None else ops.expand_dims(ops.asarray(key_padding_mask), 0)
            q = ops.expand_dims(q, 0)
            k, v = (q, q) if self_attention else (ops.expand_dims(k, 0), ops.expand_dims(v, 0))
            out, weights = self(params, q, k, v, attn_mask, kpm, need_weights, average_attn_weights, is_causal)
            return out[0], None if weights is None else weights[0]
        e, heads = self.embed_dim, self.num_heads
        if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or q.shape[2] != e or k.shape[2] != e \
                or q.shape[0] != k.shape[0]:
            raise with_location(ShapeError, f"MultiheadAttention: query {q.shape}, key {k.shape} and value {v.shape} "
                                f"do not fit embed_dim={e} (expected [B, L, {e}], [B, S, {e}], [B, S, {e}], or "
                                "all unbatched)")
        b, length, _ = q.shape
        w, bias = ops.asarray(params["in_proj_weight"]), params.get("in_proj_bias")
        if self_attention:
            qp, kp, vp = _chunks(linear(q, w, bias), 3)
        else:
            bq, bk, bv = (None,) * 3 if bias is None else (ops.asarray(bias)[i * e:(i + 1) * e] for i in range(3))
            qp, kp, vp = linear(q, w[:e], bq), linear(k, w[e:2 * e], bk), linear(v, w[2 * e:], bv)
        hd = e // heads

        def split_heads(t: Tensor) -> Tensor:  # [B, n, E] -> [B, heads, n, hd]
            return ops.transpose(ops.reshape(t, (b, t.shape[1], heads, hd)), (0, 2, 1, 3))

        # PyTorch scales the query, not the scores, by sqrt(1/hd)
        scores = ops.matmul(split_heads(qp * math.sqrt(1.0 / hd)), ops.swapaxes(split_heads(kp), -1, -2))
        scores = self._masked(scores, attn_mask, key_padding_mask, is_causal)
        weights = ops.softmax(scores, axis=-1)  # [B, heads, L, S]
        out = ops.reshape(ops.transpose(ops.matmul(weights, split_heads(vp)), (0, 2, 1, 3)), (b, length, e))
        out = linear(out, params["out_proj.weight"], params.get("out_proj.bias"))
        if not need_weights:
            return out, None
        return out, ops.mean(weights, 1) if average_attn_weights else weights

    def _masked(self, scores: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        """``scores [B, heads, L, S]`` with the float masks added and the boolean ones (True: not allowed)
        set to :data:`_MASKED`."""
        b, heads, length, src = scores.shape
        masks = []  # (mask, a shape of it that broadcasts against the scores')
        if attn_mask is not None:
            m = ops.asarray(attn_mask)
            if m.shape == (length, src):
                masks.append((m, (length, src)))
            elif m.shape == (b * heads, length, src):
                masks.append((m, (b, heads, length, src)))
            else:
                raise with_location(ShapeError, f"MultiheadAttention: attn_mask of shape {m.shape} does not fit "
                                    f"scores of shape {scores.shape} (expected ({length}, {src}) or "
                                    f"({b * heads}, {length}, {src}))")
        elif is_causal:
            masks.append((ops.constant(np.triu(np.ones((length, src), bool), 1)), (length, src)))
        if key_padding_mask is not None:
            m = ops.asarray(key_padding_mask)
            if m.shape != (b, src):
                raise with_location(ShapeError, f"MultiheadAttention: key_padding_mask of shape {m.shape} does not "
                                    f"fit a batch of {b} with {src} keys (expected ({b}, {src}); ({src},) "
                                    "unbatched)")
            masks.append((m, (b, 1, 1, src)))
        blocked = None
        for m, shape in masks:
            m = ops.reshape(m, shape)
            if m.type.dtype == "bool":
                blocked = m if blocked is None else ops.logical_or(blocked, m)
            elif m.type.dtype in FLOAT_DTYPES:
                scores = scores + ops.astype(m, scores.type.dtype)
            else:
                raise with_location(DTypeError, f"MultiheadAttention: masks must be boolean or float, got {m.type}")
        return scores if blocked is None else ops.where(blocked, _MASKED, scores)


class Sequential(Layer):
    """Layers applied in order: ``Sequential(l0, l1, ...)(params, x) = l1(params["1"], l0(params["0"], x))...``.

    The parameters are a dict keyed ``"0"``, ``"1"``, ... (PyTorch's ``state_dict`` prefixes: the
    dict's ``params["0"]["weight"]`` is PyTorch's ``"0.weight"``) of each layer's parameter dict;
    :meth:`init` gives parameter-free layers (pooling, an activation) an empty dict, and those
    keys may be left out. A plain callable (``lantern.relu``, a lambda) is a parameter-free layer
    called ``f(x)``. Dropout (which needs a key) and BatchNorm2d (which has state) are not
    single-input layers: wrap them in a lambda, or call them between two Sequentials."""

    def __init__(self, *layers: Layer | Callable[[Any], Any]):
        for i, layer in enumerate(layers):
            if isinstance(layer, (Dropout, BatchNorm2d)) or not callable(layer):
                raise with_location(ArgumentError, f"Sequential: layer {i} ({layer!r}) is not a one-input layer "
                                    "or callable (Dropout needs a key and BatchNorm2d its state: wrap the call in "
                                    "a lambda)")
        self.layers = tuple(layers)

    def init(self, rng: np.random.Generator | int | None = None) -> dict[str, Params]:
        rng = _generator(rng)  # one generator for all, so one seed gives different layers different values
        return {str(i): layer.init(rng) if isinstance(layer, Layer) else {} for i, layer in enumerate(self.layers)}

    def param_names(self) -> tuple[str, ...]:
        return tuple(str(i) for i, layer in enumerate(self.layers)
                     if isinstance(layer, Layer) and layer.param_names())

    def __call__(self, params: dict[str, Params], x: Any) -> Any:
        params = self._checked(params)
        for i, layer in enumerate(self.layers):
            x = layer(params.get(str(i), {}), x) if isinstance(layer, Layer) else layer(x)
        return x

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer | Callable[[Any], Any]:
        return self.layers[i]


class BatchNorm2d(Layer):
    """Batch normalisation of NCHW input per channel, as ``torch.nn.BatchNorm2d``, functionally:
    ``layer(params, x, state, training=True) -> (y, new_state)``.

    Parameters ``{"weight": [C], "bias": [C]}`` (ones, zeros; none with ``affine=False``). The
    running statistics are a separate dict, :meth:`init_state`: ``{"running_mean": [C] zeros,
    "running_var": [C] ones, "num_batches_tracked": int64 scalar 0}`` (``{}`` with
    ``track_running_stats=False``). In training, ``x`` is normalised with its own mean and biased
    variance over ``(N, H, W)``, and the new state is PyTorch's update: ``running = (1 - momentum) *
    running + momentum * batch`` with the *unbiased* batch variance (``momentum=None``: the cumulative
    average, ``1 / num_batches_tracked``). In evaluation, the running statistics normalise and the
    state is returned unchanged (without tracked statistics, the batch's are used, as PyTorch).
    No gradient flows into the new state (PyTorch updates its buffers without one)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = "float32"):
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.dtype = canonical_dtype(dtype)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return _affine_init(self, (self.num_features,))

    def param_names(self) -> tuple[str, ...]:
        return ("weight", "bias") if self.affine else ()

    def init_state(self) -> Params:
        """The running statistics before the first batch (empty without ``track_running_stats``)."""
        if not self.track_running_stats:
            return {}
        return {"running_mean": np.zeros(self.num_features, self.dtype),
                "running_var": np.ones(self.num_features, self.dtype),
                "num_batches_tracked": np.array(0, np.int64)}

    def state_names(self) -> tuple[str, ...]:
        """The keys of :meth:`init_state`'s dict."""
        return ("running_mean", "running_var", "num_batches_tracked") if self.track_running_stats else ()

    def __call__(self, params: Params, x: Any, state: Params, training: bool = True) -> tuple[Tensor, Params]:
        params = self._checked(params)
        state = self._checked(state, "state", self.state_names())
        x = _float_input(x, "BatchNorm2d")
        if x.ndim != 4 or x.shape[1] != self.num_features:
            raise with_location(ShapeError, f"BatchNorm2d: input of shape {x.shape} does not fit num_features="
                                f"{self.num_features} (expected [N, {self.num_features}, H, W])")
        count = x.shape[0] * x.shape[2] * x.shape[3]
        per_channel = (1, self.num_features, 1, 1)
        if training or not self.track_running_stats:
            if training and count < 2:  # as PyTorch: one value per channel has no variance
                raise with_location(ShapeError, f"BatchNorm2d: expected more than 1 value per channel when "
                                    f"training, got input of shape {x.shape}")
            mean = ops.mean(x, (0, 2, 3), keepdims=True)
            var = ops.mean(ops.square(x - mean), (0, 2, 3), keepdims=True)
        else:
            mean, var = (ops.reshape(state[k], per_channel) for k in ("running_mean", "running_var"))
        y = (x - mean) * ops.rsqrt(var + self.eps)
        if self.affine:
            y = y * ops.reshape(params["weight"], per_channel) + ops.reshape(params["bias"], per_channel)
        if not (training and self.track_running_stats):
            return y, state
        batches = ops.asarray(state["num_batches_tracked"]) + 1
        if self.momentum is None:
            factor = 1.0 / ops.astype(batches, x.type.dtype)
        else:
            factor = self.momentum

        def update(running: Any, batch: Tensor) -> Tensor:  # in the running statistic's own dtype
            running = ops.asarray(running)
            new = (1 - factor) * running + factor * ops.stop_gradient(ops.reshape(batch, (self.num_features,)))
            return ops.astype(new, running.type.dtype)

        return y, {"running_mean": update(state["running_mean"], mean),
                   "running_var": update(state["running_var"], var * (count / (count - 1))),
                   "num_batches_tracked": ops.astype(batches, ops.asarray(state["num_batches_tracked"]).type.dtype)}


class AvgPool2d(Layer):
    """Mean over ``kernel_size`` windows of the last two axes (NCHW or CHW), as ``torch.nn.AvgPool2d``
    (``ceil_mode=False``): ``padding`` zeros on each side (at most half the kernel), counted in the
    divisor with ``count_include_pad=True`` and not otherwise; ``stride`` defaults to the kernel size.
    The windows are gathered as MaxPool2d's. No parameters: ``pool(x)`` or ``pool(params, x)``."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, count_include_pad: bool = True):
        self.kernel_size, self.stride, self.padding = _pool_args("AvgPool2d", kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def init(self, rng: np.random.Generator | int | None = None) -> Params:
        return {}

    def __call__(self, params_or_x: Any, x: Any = None) -> Tensor:
        x = _float_input(params_or_x if x is None else x, "AvgPool2d")
        windows, axes = _pool_windows(x, "AvgPool2d", self.kernel_size, self.stride, self.padding)
        if self.count_include_pad or not any(self.padding):
            return ops.mean(windows, axes)
        # the divisor of each window: its rows inside the input times its columns inside the input
        rows, cols = (_inside(n, k, s, p) for n, k, s, p in zip(x.shape[-2:], self.kernel_size, self.stride,
                                                                 self.padding))
        return ops.sum(windows, axes) / ops.constant(np.outer(rows, cols), x.type.dtype)


def _inside(n: int, k: int, s: int, p: int) -> np.ndarray:
    """How many of each pooling window's ``k`` positions (stride ``s``) lie inside ``n`` values padded by ``p``."""
    starts = np.arange(0, n + 2 * p - k + 1, s) - p
    return np.minimum(starts + k, n) - np.maximum(starts, 0)


# ------------------------------------------------------------------ losses

def _reduce_loss(losses: Tensor, counted: Tensor | None, reduction: str, what: str) -> Tensor:
    """``losses`` summed, averaged over the ``counted`` positions (all when None), or as they are."""
    if reduction == "mean":
        return ops.mean(losses) if counted is None else ops.sum(losses) / ops.sum(ops.astype(counted, losses.dtype))
    if reduction == "sum":
        return ops.sum(losses)
    if reduction == "none":
        return losses
    raise with_location(ArgumentError, f"{what}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _class_losses(what: str, log_probs: Any, targets: Any, axis: int, ignore_index: int | None,
                  label_smoothing: float = 0.0) -> tuple[Tensor, Tensor | None]:
    """The loss of each position and which positions count (None: all): ``-log_probs[target]`` along the
    class ``axis``, 0 where the target is ``ignore_index``, mixed with the mean over the classes by
    ``label_smoothing`` (PyTorch's definitions)."""
    lp, t = ops.asarray(log_probs), ops.asarray(targets)
    if lp.type.dtype not in FLOAT_DTYPES:
        raise with_location(DTypeError, f"{what}: log-probabilities must be floats, got {lp.type}")
    if t.type.dtype not in INT_DTYPES:
        raise with_location(DTypeError, f"{what}: targets must be integer classes, got {t.type}")
    if lp.ndim == 0:
        raise with_location(ShapeError, f"{what}: the input must have a class axis (got a scalar)")
    (axis,) = ops._axis_list(lp.ndim, axis, what, lp.shape)
    expected = lp.shape[:axis] + lp.shape[axis + 1:]
    if t.shape != expected:
        raise with_location(ShapeError, f"{what}: targets of shape {t.shape} do not match an input of shape "
                            f"{lp.shape} with classes on axis {axis} (expected targets of shape {expected}; "
                            "PyTorch's [N, C, ...] layout is axis=1)")
    if not 0.0 <= label_smoothing <= 1.0:
        raise with_location(ArgumentError, f"{what}: label_smoothing must be in [0, 1], got {label_smoothing}")
    lp = ops.moveaxis(lp, axis, -1)
    counted = None if ignore_index is None else ops.not_equal(t, ignore_index)
    if counted is not None:
        t = ops.where(counted, t, 0)  # (any class: its loss is dropped below)
    losses = -ops.sum(lp * ops.one_hot(t, lp.shape[-1], lp.type.dtype), -1)
    if label_smoothing:
        losses = losses * (1.0 - label_smoothing) - ops.mean(lp, -1) * label_smoothing
    return (losses if counted is None else ops.where(counted, losses, 0.0)), counted


@eager
def nll_loss(log_probs: Any, targets: Any, reduction: str = "mean", *, axis: int = -1, dim: int | None = None,
             ignore_index: int | None = -100) -> Tensor:
    """Negative log-likelihood ``-log_probs[target]`` along the class ``axis`` (or ``dim``): the last by
    default; PyTorch's ``[N, C, d1, ...]`` layout is ``axis=1``.

    ``targets`` are integer classes in ``[0, C)`` (another value is an ``OutOfBoundsError`` at run time,
    as in PyTorch), except ``ignore_index`` (PyTorch's -100 by default; None: none), whose positions
    score 0 and are left out of the mean. ``reduction``: ``"mean"`` over the counted positions,
    ``"sum"``, or ``"none"`` (shape of ``targets``)."""
    axis = ops.torch_names("nll_loss", None if axis == -1 else axis, dim)[0]
    losses, counted = _class_losses("nll_loss", log_probs, targets, -1 if axis is None else axis, ignore_index)
    return _reduce_loss(losses, counted, reduction, "nll_loss")


@eager
def cross_entropy(logits: Any, targets: Any, reduction: str = "mean", *, axis: int = -1, dim: int | None = None,
                  ignore_index: int | None = -100, label_smoothing: float = 0.0) -> Tensor:
    """``nll_loss(log_softmax(logits, axis), targets, ...)`` with PyTorch's ``label_smoothing`` (the target
    mixed with the uniform distribution over the classes); numerically stable for any logits. Classes
    on ``axis`` (or ``dim``): the last by default, ``axis=1`` for PyTorch's ``[N, C, d1, ...]``."""
    axis = ops.torch_names("cross_entropy", None if axis == -1 else axis, dim)[0]
    axis = -1 if axis is None else axis
    logits = ops.asarray(logits)
    if logits.ndim == 0:
        raise with_location(ShapeError, "cross_entropy: logits must have a class axis (got a scalar)")
    losses, counted = _class_losses("cross_entropy", ops.log_softmax(logits, axis), targets, axis, ignore_index,
                                    float(label_smoothing))
    return _reduce_loss(losses, counted, reduction, "cross_entropy")
