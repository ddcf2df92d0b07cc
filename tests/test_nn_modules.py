"""lantern.nn's LayerNorm, RMSNorm, GRUCell, MultiheadAttention, Sequential, BatchNorm2d and AvgPool2d:
each against a NumPy reference (float32 and float64), against PyTorch when it is installed (the
same initial parameters loaded into the torch module), gradients against finite differences,
missing parameter keys, bad input, and eager calls outside a staged function.

One staged function per layer computes several configurations at once, and every test of a layer
reuses its shapes, so the file compiles few programs (PyTorch comparisons are cache hits).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lantern
from lantern import nn
from lantern.testing import assert_trees_close, check_grads, check_staged
from lantern.tree import tree_map

F32, F64 = np.float32, np.float64


def randn(rng, *shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def cast(tree, dtype):
    """Float leaves of ``tree`` as ``dtype`` (integer and boolean leaves, such as num_batches_tracked, stay)."""
    return tree_map(lambda a: np.asarray(a).astype(dtype) if np.asarray(a).dtype.kind == "f" else a, tree)


def wsum(y):
    """Sum with a distinct fixed weight per element, so permutation mistakes in gradients show."""
    w = lantern.cos(lantern.arange(y.size, dtype="float64") * 1.3 + 0.4)
    return lantern.sum(y * lantern.reshape(w, y.shape).astype(y.dtype))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def torch_tensor(torch, a):
    return torch.from_numpy(np.ascontiguousarray(a))


# ------------------------------------------------------------------ NumPy references (float64)

def ref_layer_norm(x, w, b, n_axes, eps):
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    d = x - x.mean(axes, keepdims=True)
    y = d / np.sqrt((d * d).mean(axes, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def ref_rms_norm(x, w, n_axes, eps):
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    return x / np.sqrt((x * x).mean(axes, keepdims=True) + eps) * (1 if w is None else w)


def ref_gru(p, x, h, bias=True):
    gi = x @ p["weight_ih"].T + (p["bias_ih"] if bias else 0)
    gh = h @ p["weight_hh"].T + (p["bias_hh"] if bias else 0)
    (ir, iz, i_n), (hr, hz, hn) = np.split(gi, 3, -1), np.split(gh, 3, -1)
    r, z = sigmoid(ir + hr), sigmoid(iz + hz)
    n = np.tanh(i_n + r * hn)
    return (1 - z) * n + z * h


def ref_mha(p, q, k, v, heads, attn_mask=None, key_padding_mask=None, is_causal=False, average=True):
    """PyTorch's multi_head_attention_forward (batch_first, no dropout): boolean masks are -inf."""
    if q.ndim == 2:
        kpm = None if key_padding_mask is None else key_padding_mask[None]
        out, w = ref_mha(p, q[None], k[None], v[None], heads, attn_mask, kpm, is_causal, average)
        return out[0], w[0]
    (b, n_q, e), n_k = q.shape, k.shape[1]
    hd = e // heads
    W, bias = p["in_proj_weight"], p.get("in_proj_bias", np.zeros(3 * e))
    qp, kp, vp = (t @ W[i * e:(i + 1) * e].T + bias[i * e:(i + 1) * e] for i, t in enumerate((q, k, v)))

    def split(t):
        return t.reshape(b, t.shape[1], heads, hd).transpose(0, 2, 1, 3)
    scores = split(qp) @ split(kp).transpose(0, 1, 3, 2) / math.sqrt(hd)
    masks = []
    if attn_mask is not None:
        masks.append(attn_mask if attn_mask.ndim == 2 else attn_mask.reshape(b, heads, n_q, n_k))
    elif is_causal:
        masks.append(np.triu(np.ones((n_q, n_k), bool), 1))
    if key_padding_mask is not None:
        masks.append(key_padding_mask[:, None, None, :])
    for m in masks:
        scores = scores + (np.where(m, -np.inf, 0.0) if m.dtype == bool else m)
    w = softmax(scores)
    out = (w @ split(vp)).transpose(0, 2, 1, 3).reshape(b, n_q, e)
    out = out @ p["out_proj.weight"].T + p.get("out_proj.bias", 0)
    return out, (w.mean(1) if average else w)


def ref_batch_norm(p, x, state, training, momentum, eps=1e-5):
    """Output and new state of torch.nn.BatchNorm2d (state None: no running statistics)."""
    c = (1, -1, 1, 1)
    new = state
    if training or state is None:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        if training and state is not None:
            n = x.size // x.shape[1]
            count = state["num_batches_tracked"] + 1
            f = 1 / count if momentum is None else momentum
            new = {"running_mean": (1 - f) * state["running_mean"] + f * mean,
                   "running_var": (1 - f) * state["running_var"] + f * var * n / (n - 1),
                   "num_batches_tracked": np.asarray(count)}
    else:
        mean, var = state["running_mean"], state["running_var"]
    y = (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + eps)
    if p:
        y = y * p["weight"].reshape(c) + p["bias"].reshape(c)
    return y, new


def ref_avg_pool(x, kernel, stride, padding, count_include_pad):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding

    def window_sums(a):
        pad = ((0, 0),) * (a.ndim - 2) + ((ph, ph), (pw, pw))
        win = np.lib.stride_tricks.sliding_window_view(np.pad(a, pad), (kh, kw), axis=(-2, -1))
        return win[..., ::sh, ::sw, :, :].sum((-2, -1))
    inside = kh * kw if count_include_pad else window_sums(np.ones(x.shape[-2:]))
    return window_sums(x) / inside


# ------------------------------------------------------------------ layers and staged functions

LN = nn.LayerNorm((3, 4))
LN_NOBIAS = nn.LayerNorm(4, eps=1e-3, bias=False)
LN_PLAIN = nn.LayerNorm(4, elementwise_affine=False)
RMS = nn.RMSNorm(4)
RMS_EPS = nn.RMSNorm((3, 4), eps=0.1)
RMS_PLAIN = nn.RMSNorm(4, elementwise_affine=False)
GRU = nn.GRUCell(4, 3)
GRU_NB = nn.GRUCell(4, 3, bias=False)
MHA = nn.MultiheadAttention(4, 2)
MHA_NB = nn.MultiheadAttention(4, 2, bias=False)
MLP = nn.Sequential(nn.Linear(4, 5), lantern.relu, nn.LayerNorm(5), nn.Linear(5, 3))
CNN = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.MaxPool2d(2), lambda x: lantern.tanh(x), nn.AvgPool2d(2, 1))
BN = nn.BatchNorm2d(3)
BN_CUMULATIVE = nn.BatchNorm2d(3, momentum=None, eps=1e-3)
BN_UNTRACKED = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
POOLS = [nn.AvgPool2d(2), nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
         nn.AvgPool2d((2, 3), 1, (1, 0), count_include_pad=False)]

X3 = (2, 3, 4)  # [batch, seq, features]: the norms, MHA's query, the MLP
X4 = (2, 3, 4, 5)  # NCHW: BatchNorm2d, AvgPool2d, the CNN
KV = (2, 5, 4)  # MHA's keys and values


@lantern.stage
def norms_fwd(p, x):
    return (LN(p["ln"], x), LN_NOBIAS(p["ln4"], x), LN_PLAIN({}, x),
            RMS(p["rms4"], x), RMS_EPS(p["rms"], x), RMS_PLAIN({}, x))


@lantern.stage
def gru_fwd(p, x, h):
    return GRU(p, x, h), GRU(p, x[0], h[0]), GRU(p, x), GRU_NB(p, x, h)


@lantern.stage
def mha_fwd(p, q, kv, kpm, fmask, bmask3):
    return (MHA(p, q, q, q, is_causal=True),  # self-attention: one projection
            MHA(p, q, kv, kv * 0.5 + 0.25, attn_mask=fmask, key_padding_mask=kpm, average_attn_weights=False),
            MHA(p, q, kv, kv, attn_mask=bmask3, need_weights=False),
            MHA_NB(p, q[0], kv[0], kv[0], key_padding_mask=kpm[0]))  # unbatched, without biases


@lantern.stage
def seq_fwd(p_mlp, p_cnn, x, x4):
    return MLP(p_mlp, x), CNN(p_cnn, x4)


@lantern.stage
def bn_fwd(p, x, state):
    y, trained = BN(p, x, state)
    y_eval, same = BN(p, x, state, training=False)
    y_cum, cumulative = BN_CUMULATIVE(p, x, state)
    y_batch, empty = BN_UNTRACKED({}, x, {}, training=False)  # no running statistics: the batch's
    return y, trained, y_eval, same, y_cum, cumulative, y_batch, empty


@lantern.stage
def pool_fwd(x):
    return tuple(pool(x) for pool in POOLS) + (POOLS[2](x[0]),)


def norm_params(rng, dtype):
    return {"ln": {"weight": randn(rng, 3, 4, dtype=dtype), "bias": randn(rng, 3, 4, dtype=dtype)},
            "ln4": {"weight": randn(rng, 4, dtype=dtype)}, "rms4": {"weight": randn(rng, 4, dtype=dtype)},
            "rms": {"weight": randn(rng, 3, 4, dtype=dtype)}}


def mha_inputs(rng, dtype):
    """Parameters with nonzero biases, query, keys and values, and masks leaving every query a key."""
    p = cast(MHA.init(rng), dtype)
    p["in_proj_bias"], p["out_proj.bias"] = randn(rng, 12, dtype=dtype), randn(rng, 4, dtype=dtype)
    kpm = np.zeros((2, 5), bool)
    kpm[0, 3:], kpm[1, 1] = True, True
    bmask3 = rng.random((4, 3, 5)) < 0.4
    bmask3[..., 0] = False
    return p, randn(rng, *X3, dtype=dtype), randn(rng, *KV, dtype=dtype), kpm, randn(rng, 3, 5, dtype=dtype), bmask3


def mha_reference(p, q, kv, kpm, fmask, bmask3):
    p, q, kv, fmask = cast((p, q, kv, fmask), F64)
    no_bias = {k: p[k] for k in MHA_NB.param_names()}
    return (ref_mha(p, q, q, q, 2, is_causal=True),
            ref_mha(p, q, kv, kv * 0.5 + 0.25, 2, fmask, kpm, average=False),
            (ref_mha(p, q, kv, kv, 2, bmask3)[0], None),
            ref_mha(no_bias, q[0], kv[0], kv[0], 2, key_padding_mask=kpm[0]))


def bn_inputs(rng, dtype):
    p = {"weight": randn(rng, 3, dtype=dtype), "bias": randn(rng, 3, dtype=dtype)}
    state = {"running_mean": randn(rng, 3, dtype=dtype), "running_var": rng.uniform(0.5, 2, 3).astype(dtype),
             "num_batches_tracked": np.array(3, np.int64)}  # momentum=None then weighs the batch 1/4
    return p, randn(rng, *X4, dtype=dtype) * 2 + 1, state


def bn_reference(p, x, state):
    p, x, state64 = cast((p, x, state), F64)
    y, trained = ref_batch_norm(p, x, state64, True, 0.1)
    y_eval, _ = ref_batch_norm(p, x, state64, False, 0.1)
    y_cum, cumulative = ref_batch_norm(p, x, state64, True, None, eps=1e-3)
    y_batch, _ = ref_batch_norm({}, x, None, False, 0.1)
    return y, trained, y_eval, state, y_cum, cumulative, y_batch, {}


DTYPES = pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])


# ------------------------------------------------------------------ forward passes against NumPy, and eagerly

@DTYPES
def test_layer_norm_and_rms_norm(rng, dtype):
    p, x = norm_params(rng, dtype), randn(rng, *X3, dtype=dtype)
    x64, q = x.astype(F64), cast(p, F64)
    machine_eps = np.finfo(dtype).eps  # RMSNorm's eps=None: the input dtype's epsilon, as PyTorch
    want = (ref_layer_norm(x64, q["ln"]["weight"], q["ln"]["bias"], 2, 1e-5),
            ref_layer_norm(x64, q["ln4"]["weight"], None, 1, 1e-3), ref_layer_norm(x64, None, None, 1, 1e-5),
            ref_rms_norm(x64, q["rms4"]["weight"], 1, machine_eps), ref_rms_norm(x64, q["rms"]["weight"], 2, 0.1),
            ref_rms_norm(x64, None, 1, machine_eps))
    out = check_staged(norms_fwd, p, x, expected=cast(want, dtype))
    if dtype == F32:
        eager = (LN(p["ln"], x), LN_NOBIAS(p["ln4"], x), LN_PLAIN({}, x), RMS(p["rms4"], x), RMS_EPS(p["rms"], x),
                 RMS_PLAIN({}, x))
        assert_trees_close(eager, out, rtol=1e-6, atol=1e-6, what="eager vs staged")


@DTYPES
def test_gru_cell(rng, dtype):
    p = cast(GRU.init(rng), dtype)
    x, h = randn(rng, 2, 4, dtype=dtype), randn(rng, 2, 3, dtype=dtype)
    q, x64, h64 = cast((p, x, h), F64)
    want = (ref_gru(q, x64, h64), ref_gru(q, x64[0], h64[0]), ref_gru(q, x64, np.zeros((2, 3))),
            ref_gru(q, x64, h64, bias=False))
    out = check_staged(gru_fwd, p, x, h, expected=cast(want, dtype))
    if dtype == F32:
        assert_trees_close((GRU(p, x, h), GRU(p, x[0], h[0]), GRU(p, x), GRU_NB(p, x, h)), out, rtol=1e-6,
                           atol=1e-6, what="eager vs staged")
        np.testing.assert_array_equal(GRU.zero_state(2), np.zeros((2, 3), F32))


@DTYPES
def test_multihead_attention(rng, dtype):
    args = mha_inputs(rng, dtype)
    out = check_staged(mha_fwd, *args, expected=cast(mha_reference(*args), dtype))
    assert out[0][1].shape == (2, 3, 3) and out[1][1].shape == (2, 2, 3, 5) and out[2][1] is None
    assert out[3][0].shape == (3, 4) and out[3][1].shape == (3, 5)
    np.testing.assert_array_equal(np.triu(out[0][1][0], 1), 0)  # causal: no weight on later keys
    if dtype == F32:
        p, q, kv, kpm, fmask, bmask3 = args
        eager = (MHA(p, q, q, q, is_causal=True),
                 MHA(p, q, kv, kv * F32(0.5) + F32(0.25), attn_mask=fmask, key_padding_mask=kpm,
                     average_attn_weights=False),
                 MHA(p, q, kv, kv, attn_mask=bmask3, need_weights=False),
                 MHA_NB(p, q[0], kv[0], kv[0], key_padding_mask=kpm[0]))
        assert_trees_close(eager, out, rtol=1e-6, atol=1e-6, what="eager vs staged")


def test_multihead_attention_with_every_key_masked_stays_finite(rng):
    """A departure from PyTorch (NaN there): a query whose keys are all masked averages the values."""
    p, q, kv = MHA.init(rng), randn(rng, *X3), randn(rng, *KV)
    kpm = np.zeros((2, 5), bool)
    kpm[1] = True
    out, w = lantern.stage(lambda p, q, kv, m: MHA(p, q, kv, kv, key_padding_mask=m))(p, q, kv, kpm)
    assert np.all(np.isfinite(out)) and np.allclose(w[1], 1 / 5)
    q, kv = q.astype(F64), kv.astype(F64)
    want, _ = ref_mha(cast(p, F64), q[:1], kv[:1], kv[:1], 2, key_padding_mask=kpm[:1])
    np.testing.assert_allclose(out[:1], want, rtol=2e-5, atol=1e-5)  # rows with a key are unchanged


@DTYPES
def test_sequential(rng, dtype):
    p_mlp, p_cnn = cast(MLP.init(rng), dtype), cast(CNN.init(rng), dtype)
    assert list(p_mlp) == ["0", "1", "2", "3"] and p_mlp["1"] == {} and set(p_mlp["2"]) == {"weight", "bias"}
    assert MLP.param_names() == ("0", "2", "3") and CNN.param_names() == ("0",)
    p_mlp["2"] = {"weight": randn(rng, 5, dtype=dtype), "bias": randn(rng, 5, dtype=dtype)}
    x, x4 = randn(rng, *X3, dtype=dtype), randn(rng, *X4, dtype=dtype)
    q, x64 = cast(p_mlp, F64), x.astype(F64)
    hidden = np.maximum(x64 @ q["0"]["weight"].T + q["0"]["bias"], 0)
    hidden = ref_layer_norm(hidden, q["2"]["weight"], q["2"]["bias"], 1, 1e-5)
    conv, pool, avg = CNN[0], CNN[1], CNN[3]
    by_hand = avg(lantern.tanh(pool(conv(p_cnn["0"], x4))))  # eagerly (interpreted, no compile)
    out = check_staged(seq_fwd, p_mlp, p_cnn, x, x4,
                       expected=(cast(hidden @ q["3"]["weight"].T + q["3"]["bias"], dtype), by_hand))
    assert len(MLP) == 4 and out[1].shape == (2, 2, 1, 1)
    if dtype == F32:
        assert_trees_close((MLP(p_mlp, x), CNN(p_cnn, x4)), out, rtol=1e-6, atol=1e-6, what="eager vs staged")
        del p_cnn["1"], p_cnn["2"], p_cnn["3"]  # parameter-free layers' keys may be left out
        assert_trees_close(CNN(p_cnn, x4), out[1], rtol=1e-6, atol=1e-6)


@DTYPES
def test_batch_norm_2d(rng, dtype):
    p, x, state = bn_inputs(rng, dtype)
    out = check_staged(bn_fwd, p, x, state, expected=cast(bn_reference(p, x, state), dtype))
    assert out[1]["num_batches_tracked"].dtype == np.int64 and out[1]["num_batches_tracked"] == 4
    assert out[1]["running_var"].dtype == dtype  # the state keeps its dtypes, step after step
    fresh = BN.init_state()
    assert fresh["num_batches_tracked"].shape == () and np.all(fresh["running_var"] == 1)
    if dtype == F32:
        eager = BN(p, x, state), BN(p, x, state, training=False)
        assert_trees_close(eager, (out[:2], out[2:4]), rtol=1e-6, atol=1e-6, what="eager vs staged")


def test_batch_norm_running_statistics_get_no_gradient(rng):
    p, x, state = bn_inputs(rng, F64)
    g = lantern.grad(lambda x: lantern.sum(BN(p, x, state)[1]["running_var"]))(x)
    np.testing.assert_array_equal(g, 0)


@DTYPES
def test_avg_pool_2d(rng, dtype):
    x = randn(rng, *X4, dtype=dtype)
    want = [ref_avg_pool(x.astype(F64), pool.kernel_size, pool.stride, pool.padding, pool.count_include_pad)
            for pool in POOLS]
    want.append(want[2][0])
    out = check_staged(pool_fwd, x, expected=cast(tuple(want), dtype))
    assert [o.shape for o in out] == [(2, 3, 2, 2), (2, 3, 2, 3), (2, 3, 2, 3), (2, 3, 5, 3), (3, 2, 3)]
    if dtype == F32:
        assert_trees_close(tuple(pool(x) for pool in POOLS), out[:4], rtol=1e-6, atol=1e-6, what="eager vs staged")


# ------------------------------------------------------------------ initialisation

def test_init_follows_pytorch_defaults(rng):
    assert {k: v.shape for k, v in LN.init().items()} == {"weight": (3, 4), "bias": (3, 4)}
    assert np.all(LN.init()["weight"] == 1) and np.all(LN.init()["bias"] == 0) and LN_PLAIN.init() == {}
    assert set(LN_NOBIAS.init()) == {"weight"} and set(RMS.init()) == {"weight"} and RMS_PLAIN.init() == {}
    g = nn.GRUCell(3, 8, dtype="float64").init(rng)
    assert {k: v.shape for k, v in g.items()} == {"weight_ih": (24, 3), "weight_hh": (24, 8), "bias_ih": (24,),
                                                  "bias_hh": (24,)}
    assert all(v.dtype == F64 for v in g.values()) and max(np.abs(v).max() for v in g.values()) <= 1 / np.sqrt(8)
    m = nn.MultiheadAttention(16, 4).init(rng)
    assert {k: v.shape for k, v in m.items()} == {"in_proj_weight": (48, 16), "in_proj_bias": (48,),
                                                  "out_proj.weight": (16, 16), "out_proj.bias": (16,)}
    bound = math.sqrt(6 / (16 + 48))  # xavier_uniform_ of a [3E, E] matrix
    assert 0.9 * bound < np.abs(m["in_proj_weight"]).max() <= bound
    assert 0.9 / 4 < np.abs(m["out_proj.weight"]).max() <= 1 / 4  # Linear's: ±1/sqrt(E)
    assert np.all(m["in_proj_bias"] == 0) and np.all(m["out_proj.bias"] == 0)
    assert set(MHA_NB.init()) == {"in_proj_weight", "out_proj.weight"}
    assert set(BN.init()) == {"weight", "bias"} and BN_UNTRACKED.init() == {} and BN_UNTRACKED.init_state() == {}
    assert POOLS[0].init() == {}
    assert_trees_close(MLP.init(5), MLP.init(np.random.default_rng(5)))  # a seed is a generator


# ------------------------------------------------------------------ gradients (float64)

def test_grad_norms(rng):
    p, x = norm_params(rng, F64), randn(rng, *X3, dtype=F64)
    check_grads(lambda p, x: wsum(LN(p["ln"], x)) + wsum(LN_NOBIAS(p["ln4"], x)) + wsum(RMS(p["rms4"], x))
                + wsum(RMS_EPS(p["rms"], x)), p, x, argnums=(0, 1))


def test_grad_gru_cell(rng):
    p, x, h = cast(GRU.init(rng), F64), randn(rng, 2, 4, dtype=F64), randn(rng, 2, 3, dtype=F64)
    check_grads(lambda p, x, h: wsum(GRU(p, x, h)), p, x, h, argnums=(0, 1, 2))


def test_grad_multihead_attention(rng):
    p, q, kv, kpm, fmask, _ = mha_inputs(rng, F64)

    def loss(p, q, kv, v):  # (one call: each variant adds seconds of C compiling)
        out, w = MHA(p, q, kv, v, attn_mask=fmask, key_padding_mask=kpm, average_attn_weights=False)
        return wsum(out) + wsum(w)
    check_grads(loss, p, q, kv, randn(rng, *KV, dtype=F64), argnums=(0, 1, 2, 3))


def test_grad_sequential(rng):
    p, x = cast(MLP.init(rng), F64), randn(rng, *X3, dtype=F64)
    check_grads(lambda p, x: wsum(MLP(p, x)), p, x, argnums=(0, 1))


def test_grad_batch_norm_2d(rng):
    p, x, state = bn_inputs(rng, F64)
    check_grads(lambda p, x: wsum(BN(p, x, state)[0]) + wsum(BN(p, x, state, training=False)[0]), p, x,
                argnums=(0, 1))


def test_grad_avg_pool_2d(rng):
    # the reshape path, and gathered windows over padding left out of the divisor
    check_grads(lambda x: wsum(POOLS[0](x)) + wsum(POOLS[2](x)), randn(rng, *X4, dtype=F64))


# ------------------------------------------------------------------ missing parameters and bad input

MISSING = [  # (layer, key to remove, which dict: "parameters" or "state", call on an input of shape X3)
    (LN, "bias", "parameters", lambda p, x: LN(p, x)),
    (RMS, "weight", "parameters", lambda p, x: RMS(p, x)),
    (GRU, "weight_hh", "parameters", lambda p, x: GRU(p, x[0])),
    (MHA, "out_proj.weight", "parameters", lambda p, x: MHA(p, x, x, x)),
    (MLP, "3", "parameters", lambda p, x: MLP(p, x)),
    (BN, "bias", "parameters", lambda p, x: BN(p, x[..., None], BN.init_state())),
    (BN, "running_var", "state", lambda s, x: BN(BN.init(), x[..., None], s)),
]


@pytest.mark.parametrize("layer, key, kind, call", MISSING,
                         ids=["LayerNorm", "RMSNorm", "GRUCell", "MultiheadAttention", "Sequential",
                              "BatchNorm2d", "BatchNorm2d-state"])
def test_a_missing_parameter_is_an_error_naming_it(layer, key, kind, call):
    params = layer.init_state() if kind == "state" else layer.init(0)
    del params[key]
    with pytest.raises(lantern.TraceError, match=rf"{type(layer).__name__}\(.*{kind} \[{re.escape(repr(key))}\] "
                       "missing") as info:
        lantern.stage(call)(params, np.ones(X3, F32))
    assert "test_nn_modules.py" in str(info.value)  # the user's line


def test_a_missing_parameter_inside_a_sequential_names_the_inner_layer():
    p = MLP.init(0)
    del p["0"]["bias"]
    with pytest.raises(lantern.TraceError, match=r"Linear\(.*\['bias'\] missing"):
        lantern.stage(lambda p, x: MLP(p, x))(p, np.ones((2, 4), F32))


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.MultiheadAttention(6, 4), lantern.ArgumentError,
     "MultiheadAttention: embed_dim=6 must be a positive multiple of num_heads=4"),
    (lambda: nn.AvgPool2d(2, padding=2), lantern.ArgumentError, r"AvgPool2d: padding \(2, 2\) must be at most half"),
    (lambda: nn.AvgPool2d(0), lantern.ArgumentError, r"AvgPool2d: bad kernel_size \(0, 0\)"),
    (lambda: nn.AvgPool2d((2, 2, 2)), lantern.ArgumentError, "AvgPool2d kernel_size must be an int or a pair"),
    (lambda: nn.LayerNorm(()), lantern.ArgumentError, "LayerNorm: normalized_shape"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)), lantern.ArgumentError, "Sequential: layer 1"),
])
def test_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("call, error, match", [
    (lambda x: LN(LN.init(), x[..., :2]), lantern.ShapeError, r"LayerNorm: input of shape \(2, 3, 2\) does not end "
     r"in normalized_shape \(3, 4\)"),
    (lambda x: RMS(RMS.init(), x.astype("int32")), lantern.DTypeError, "RMSNorm: expected a float tensor"),
    (lambda x: GRU(GRU.init(), x[0], x[0, :, :2]), lantern.ShapeError, r"GRUCell: input of shape \(3, 4\) and hidden "
     r"state of shape \(3, 2\)"),
    (lambda x: MHA(MHA.init(), x, x[:, :, :2], x), lantern.ShapeError, r"MultiheadAttention: query \(2, 3, 4\), "
     r"key \(2, 3, 2\)"),
    (lambda x: MHA(MHA.init(), x, x, x, attn_mask=np.zeros((3, 4), bool)), lantern.ShapeError,
     r"attn_mask of shape \(3, 4\) does not fit scores of shape \(2, 2, 3, 3\)"),
    (lambda x: MHA(MHA.init(), x, x, x, key_padding_mask=np.zeros((3, 3), bool)), lantern.ShapeError,
     r"key_padding_mask of shape \(3, 3\)"),
    (lambda x: MHA(MHA.init(), x, x, x, attn_mask=np.zeros((3, 3), np.int64)), lantern.DTypeError,
     "masks must be boolean or float"),
    (lambda x: BN(BN.init(), x, BN.init_state()), lantern.ShapeError, r"BatchNorm2d: input of shape \(2, 3, 4\) "
     r"does not fit num_features=3"),
    (lambda x: BN(BN.init(), x[:1, :, :1, None], BN.init_state()), lantern.ShapeError,
     "more than 1 value per channel"),
    (lambda x: nn.AvgPool2d(4, padding=1)(x[..., :1, :]), lantern.ShapeError, r"AvgPool2d: input of shape "
     r"\(2, 1, 4\) is smaller than the kernel \(4, 4\) with padding \(1, 1\)"),
])
def test_bad_input_is_a_lantern_error_naming_the_layer(call, error, match):
    with pytest.raises(error, match=match):
        lantern.stage(call)(np.ones(X3, F32))
    with pytest.raises(error, match=match):  # eagerly too
        call(np.ones(X3, F32))


# ------------------------------------------------------------------ PyTorch (skipped unless installed)

def test_parameters_load_into_torch_modules():
    torch = pytest.importorskip("torch")
    pairs = [(LN, torch.nn.LayerNorm((3, 4))), (LN_NOBIAS, torch.nn.LayerNorm(4, bias=False)),
             (RMS, torch.nn.RMSNorm(4)), (GRU, torch.nn.GRUCell(4, 3)), (GRU_NB, torch.nn.GRUCell(4, 3, bias=False)),
             (MHA, torch.nn.MultiheadAttention(4, 2, batch_first=True)),
             (MHA_NB, torch.nn.MultiheadAttention(4, 2, bias=False, batch_first=True)),
             (BN, torch.nn.BatchNorm2d(3))]
    for ours, theirs in pairs:
        state = {k: torch_tensor(torch, v) for k, v in ours.init(0).items()}
        if isinstance(ours, nn.BatchNorm2d):
            state.update({k: torch_tensor(torch, v) for k, v in ours.init_state().items()})
        theirs.load_state_dict(state, strict=True)  # same names and shapes, nothing missing


def test_norms_match_torch(rng):
    torch = pytest.importorskip("torch")
    p, x = norm_params(rng, F32), randn(rng, *X3)
    t = lambda a: torch_tensor(torch, a)  # noqa: E731
    mods = [(torch.nn.LayerNorm((3, 4)), p["ln"]), (torch.nn.LayerNorm(4, eps=1e-3, bias=False), p["ln4"]),
            (torch.nn.LayerNorm(4, elementwise_affine=False), {}), (torch.nn.RMSNorm(4), p["rms4"]),
            (torch.nn.RMSNorm((3, 4), eps=0.1), p["rms"]), (torch.nn.RMSNorm(4, elementwise_affine=False), {})]
    with torch.no_grad():
        want = []
        for mod, params in mods:
            mod.load_state_dict({k: t(v) for k, v in params.items()}, strict=True)
            want.append(mod(t(x)).numpy())
    assert_trees_close(norms_fwd(p, x), tuple(want), rtol=1e-5, atol=1e-5)


def test_gru_cell_matches_torch(rng):
    torch = pytest.importorskip("torch")
    p, x, h = GRU.init(rng), randn(rng, 2, 4), randn(rng, 2, 3)
    t = lambda a: torch_tensor(torch, a)  # noqa: E731
    cell, cell_nb = torch.nn.GRUCell(4, 3), torch.nn.GRUCell(4, 3, bias=False)
    cell.load_state_dict({k: t(v) for k, v in p.items()})
    cell_nb.load_state_dict({k: t(p[k]) for k in ("weight_ih", "weight_hh")})
    with torch.no_grad():
        want = (cell(t(x), t(h)), cell(t(x[0]), t(h[0])), cell(t(x)), cell_nb(t(x), t(h)))
    assert_trees_close(gru_fwd(p, x, h), tuple(w.numpy() for w in want), rtol=1e-5, atol=1e-6)


def test_multihead_attention_matches_torch(rng):
    torch = pytest.importorskip("torch")
    p, q, kv, kpm, fmask, bmask3 = args = mha_inputs(rng, F32)
    t = lambda a: torch_tensor(torch, a)  # noqa: E731
    mha, mha_nb = (torch.nn.MultiheadAttention(4, 2, bias=b, batch_first=True) for b in (True, False))
    mha.load_state_dict({k: t(v) for k, v in p.items()}, strict=True)
    mha_nb.load_state_dict({k: t(p[k]) for k in MHA_NB.param_names()}, strict=True)
    causal = t(np.triu(np.ones((3, 3), bool), 1))
    float_kpm = t(np.where(kpm, -np.inf, 0).astype(F32))  # PyTorch wants both masks of one kind
    with torch.no_grad():  # (training mode, dropout 0: PyTorch's reference path, not its fused one)
        want = (mha(t(q), t(q), t(q), attn_mask=causal, is_causal=True),
                mha(t(q), t(kv), t(kv * F32(0.5) + F32(0.25)), attn_mask=t(fmask), key_padding_mask=float_kpm,
                    average_attn_weights=False),
                mha(t(q), t(kv), t(kv), attn_mask=t(bmask3), need_weights=False),
                mha_nb(t(q[0]), t(kv[0]), t(kv[0]), key_padding_mask=t(kpm[0])))
    want = tuple((o.numpy(), None if w is None else w.numpy()) for o, w in want)
    assert_trees_close(mha_fwd(*args), want, rtol=1e-5, atol=1e-5)


def test_sequential_matches_torch(rng):
    torch = pytest.importorskip("torch")
    p_mlp, p_cnn = MLP.init(rng), CNN.init(rng)
    x, x4 = randn(rng, *X3), randn(rng, *X4)
    t = lambda a: torch_tensor(torch, a)  # noqa: E731
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.MaxPool2d(2), torch.nn.Tanh(),
                              torch.nn.AvgPool2d(2, 1))
    for ours, theirs in ((p_mlp, mlp), (p_cnn, cnn)):  # params["0"]["weight"] is state_dict()["0.weight"]
        theirs.load_state_dict({f"{i}.{k}": t(v) for i, layer in ours.items() for k, v in layer.items()},
                               strict=True)
    with torch.no_grad():
        want = (mlp(t(x)).numpy(), cnn(t(x4)).numpy())
    assert_trees_close(seq_fwd(p_mlp, p_cnn, x, x4), want, rtol=1e-5, atol=1e-5)


def test_batch_norm_2d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    p, x, state = bn_inputs(rng, F32)
    t = lambda a: torch_tensor(torch, a)  # noqa: E731
    ours = bn_fwd(p, x, state)
    for layer, y_ours, state_ours in ((BN, ours[0], ours[1]), (BN_CUMULATIVE, ours[4], ours[5])):
        mod = torch.nn.BatchNorm2d(3, eps=layer.eps, momentum=layer.momentum)
        mod.load_state_dict({**{k: t(v) for k, v in p.items()}, **{k: t(v) for k, v in state.items()}}, strict=True)
        with torch.no_grad():
            y = mod.train()(t(x)).numpy()
        assert_trees_close((y_ours, state_ours), (y, {k: v.numpy() for k, v in mod.state_dict().items()
                                                      if k in state}), rtol=1e-5, atol=1e-5)
    mod = torch.nn.BatchNorm2d(3)
    mod.load_state_dict({**{k: t(v) for k, v in p.items()}, **{k: t(v) for k, v in state.items()}})
    untracked = torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    with torch.no_grad():
        want = (mod.eval()(t(x)).numpy(), untracked.eval()(t(x)).numpy())
    assert_trees_close((ours[2], ours[6]), want, rtol=1e-5, atol=1e-5)


def test_avg_pool_2d_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = randn(rng, *X4)
    F = torch.nn.functional
    want = [F.avg_pool2d(torch_tensor(torch, x), pool.kernel_size, pool.stride, pool.padding,
                         count_include_pad=pool.count_include_pad).numpy() for pool in POOLS]
    assert_trees_close(pool_fwd(x)[:4], tuple(want), rtol=1e-5, atol=1e-6)
