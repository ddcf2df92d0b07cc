"""lantern.nn: layers and losses against NumPy references (and PyTorch when installed), their
gradients against finite differences, dropout's in-kernel random numbers, and a short training run.

Shapes are small and reused so that tests share compiled kernels; PyTorch comparisons run the
same staged functions on the same shapes as the NumPy ones (cache hits, no new compiles).
"""
from __future__ import annotations

import numpy as np
import pytest

import lantern
from lantern import nn
from lantern.ir.primitives import PRIMITIVES
from lantern.testing import assert_trees_close, check_grads, check_staged

RNG = np.random.default_rng(2024)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def wsum(y):
    """Sum with a distinct fixed weight per element, so permutation mistakes in gradients show."""
    w = lantern.cos(lantern.arange(y.size, dtype="float64") * 1.3 + 0.4)
    return lantern.sum(y * lantern.reshape(w, y.shape).astype(y.dtype))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def torch_or_skip():
    return pytest.importorskip("torch")


# ------------------------------------------------------------------ NumPy references

def ref_conv2d(x, w, b, stride, padding):
    sh, sw = stride
    ph, pw = padding
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    out = np.einsum("nchwij,ocij->nohw", win, w.astype(np.float64))
    return out + (0 if b is None else b[None, :, None, None])


def ref_maxpool(x, k, s):
    win = np.lib.stride_tricks.sliding_window_view(x, k, axis=(-2, -1))[..., ::s[0], ::s[1], :, :]
    return win.max(axis=(-2, -1))


def ref_lstm(p, x, h, c):
    gates = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def ref_treelstm(p, x, hl, cl, hr, cr):
    """Tai et al.'s binary Tree-LSTM written gate by gate from the documented parameter layout."""
    H = hl.shape[-1]
    Wi, Wf, Wo, Wu = np.split(p["weight_ih"], 4)
    bi, bf, bo, bu = np.split(p["bias"], 4)
    U = p["weight_hh"]  # [5H, 2H]: rows i, f_l, f_r, o, u; columns h_l then h_r
    blk = {name: (U[k * H:(k + 1) * H, :H], U[k * H:(k + 1) * H, H:]) for k, name in enumerate("i fl fr o u".split())}

    def pre(W, b, name):
        Ul, Ur = blk[name]
        return x @ W.T + b + hl @ Ul.T + hr @ Ur.T

    i, o = sigmoid(pre(Wi, bi, "i")), sigmoid(pre(Wo, bo, "o"))
    fl, fr = sigmoid(pre(Wf, bf, "fl")), sigmoid(pre(Wf, bf, "fr"))
    u = np.tanh(pre(Wu, bu, "u"))
    c = i * u + fl * cl + fr * cr
    return o * np.tanh(c), c


def ref_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


# ------------------------------------------------------------------ staged functions shared by tests

LIN = nn.Linear(5, 3)
LIN_NB = nn.Linear(5, 3, bias=False)
EMB = nn.Embedding(7, 4)
RNN = nn.RNNCell(5, 4)
RNN_RELU = nn.RNNCell(5, 4, nonlinearity="relu")
LSTM = nn.LSTMCell(5, 4)
TREE = nn.TreeLSTMCell(5, 4)
CONV_CASES = [  # (in, out, kernel, stride, padding, input shape)
    (2, 3, 3, 1, 0, (2, 2, 5, 6)),
    (2, 3, 3, 2, 1, (2, 2, 7, 6)),
    (1, 2, (3, 2), (1, 2), (0, 1), (1, 1, 5, 5)),
]


@lantern.stage
def linear_fwd(p, x):
    return LIN(p, x)


@lantern.stage
def linear_nb_fwd(p, x):
    return LIN_NB(p, x)


@lantern.stage
def lstm_fwd(p, x, h, c):
    return LSTM(p, x, (h, c))


@lantern.stage
def tree_fwd(p, x, hl, cl, hr, cr):
    return TREE(p, x, (hl, cl), (hr, cr))


def conv_fwd(case):
    cin, cout, k, s, pad, _ = case
    layer = nn.Conv2d(cin, cout, k, stride=s, padding=pad)
    return layer, lantern.stage(lambda p, x: layer(p, x))


# ------------------------------------------------------------------ initialisation and layout

def test_init_names_shapes_and_bounds_follow_pytorch():
    rng = np.random.default_rng(0)
    p = nn.Linear(20, 6).init(rng)
    assert set(p) == {"weight", "bias"} and p["weight"].shape == (6, 20) and p["bias"].shape == (6,)
    assert p["weight"].dtype == np.float32 and np.abs(p["weight"]).max() <= 1 / np.sqrt(20)
    assert np.abs(p["weight"]).max() > 0.8 / np.sqrt(20)  # uniform over the whole range, not tiny
    assert set(nn.Linear(20, 6, bias=False).init(rng)) == {"weight"}
    e = nn.Embedding(50, 40).init(rng)["weight"]
    assert e.shape == (50, 40) and abs(e.std() - 1) < 0.05  # N(0, 1)
    r = nn.RNNCell(3, 8).init(rng)
    assert {k: v.shape for k, v in r.items()} == {"weight_ih": (8, 3), "weight_hh": (8, 8), "bias_ih": (8,),
                                                  "bias_hh": (8,)}
    assert max(np.abs(v).max() for v in r.values()) <= 1 / np.sqrt(8)
    lp = nn.LSTMCell(3, 8, dtype="float64").init(rng)
    assert {k: v.shape for k, v in lp.items()} == {"weight_ih": (32, 3), "weight_hh": (32, 8), "bias_ih": (32,),
                                                   "bias_hh": (32,)}
    assert all(v.dtype == np.float64 for v in lp.values())
    t = nn.TreeLSTMCell(3, 8).init(rng)
    assert {k: v.shape for k, v in t.items()} == {"weight_ih": (32, 3), "weight_hh": (40, 16), "bias": (32,)}
    c = nn.Conv2d(3, 5, (3, 2)).init(rng)
    assert c["weight"].shape == (5, 3, 3, 2) and c["bias"].shape == (5,)
    assert np.abs(c["weight"]).max() <= 1 / np.sqrt(18)
    # a seed works as well as a generator, and is deterministic
    assert_trees_close(nn.Linear(4, 2).init(3), nn.Linear(4, 2).init(np.random.default_rng(3)))


def test_parameters_load_into_torch_modules():
    torch = torch_or_skip()
    rng = np.random.default_rng(0)
    pairs = [(nn.Linear(5, 3), torch.nn.Linear(5, 3)), (nn.Embedding(7, 4), torch.nn.Embedding(7, 4)),
             (nn.RNNCell(5, 4), torch.nn.RNNCell(5, 4)), (nn.LSTMCell(5, 4), torch.nn.LSTMCell(5, 4)),
             (nn.Conv2d(2, 3, 3), torch.nn.Conv2d(2, 3, 3))]
    for ours, theirs in pairs:
        state = {k: torch.from_numpy(v) for k, v in ours.init(rng).items()}
        theirs.load_state_dict(state, strict=True)  # same names and shapes, nothing missing


# ------------------------------------------------------------------ forward passes

def test_linear_forward_any_leading_dims():
    p = LIN.init(0)
    x = randn(2, 3, 5)
    check_staged(linear_fwd, p, x, expected=(x @ p["weight"].T + p["bias"]).astype(np.float32))
    v = randn(5)
    check_staged(linear_nb_fwd, {"weight": p["weight"]}, v, expected=(p["weight"] @ v).astype(np.float32))


def test_embedding_gathers_rows():
    p = EMB.init(0)
    ids = np.array([[0, 6, 3], [3, 3, 1]])
    out = check_staged(lambda p, i: EMB(p, i), p, ids, expected=p["weight"][ids])
    assert out.shape == (2, 3, 4)


@pytest.mark.parametrize("cell", [RNN, RNN_RELU], ids=["tanh", "relu"])
def test_rnn_cell(cell):
    p = cell.init(0)
    x, h = randn(3, 5), randn(3, 4)
    pre = x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]
    want = np.tanh(pre) if cell.nonlinearity == "tanh" else np.maximum(pre, 0)
    check_staged(lambda p, x, h: cell(p, x, h), p, x, h, expected=want.astype(np.float32))


def test_lstm_cell():
    p = LSTM.init(0)
    x, h, c = randn(3, 5), randn(3, 4), randn(3, 4)
    want = tuple(a.astype(np.float32) for a in ref_lstm(p, x, h, c))
    check_staged(lstm_fwd, p, x, h, c, expected=want)


def test_treelstm_cell_and_leaf():
    p = TREE.init(0)
    x, hl, cl, hr, cr = randn(5), randn(4), randn(4), randn(4), randn(4)
    want = tuple(a.astype(np.float32) for a in ref_treelstm(p, x, hl, cl, hr, cr))
    check_staged(tree_fwd, p, x, hl, cl, hr, cr, expected=want)
    # a leaf is the cell with zero child states
    z = np.zeros(4, np.float32)
    leaf = check_staged(lambda p, x: TREE.leaf(p, x), p, x)
    assert_trees_close(leaf, tree_fwd(p, x, z, z, z, z), rtol=1e-6, atol=1e-7)
    assert_trees_close(leaf, tuple(a.astype(np.float32) for a in ref_treelstm(p, x, z, z, z, z)))


@pytest.mark.parametrize("case", CONV_CASES, ids=["plain", "stride2_pad1", "rect_kernel_stride_pad"])
def test_conv2d(case):
    layer, fwd = conv_fwd(case)
    p = layer.init(0)
    x = randn(*case[-1])
    out = check_staged(fwd, p, x, expected=ref_conv2d(x, p["weight"], p["bias"], layer.stride,
                                                       layer.padding).astype(np.float32))
    assert out.shape[:2] == (x.shape[0], layer.out_channels)


def test_conv2d_unbatched_and_no_bias():
    layer = nn.Conv2d(2, 3, 3, bias=False)
    p = layer.init(0)
    x = randn(2, 5, 6)
    check_staged(lambda p, x: layer(p, x), p, x,
                 expected=ref_conv2d(x[None], p["weight"], None, (1, 1), (0, 0))[0].astype(np.float32))


@pytest.mark.parametrize("kernel,stride,shape", [(2, None, (2, 3, 5, 6)), (3, 2, (2, 3, 7, 6))],
                         ids=["reshape_path_cropped", "strided_slices"])
def test_maxpool2d(kernel, stride, shape):
    pool = nn.MaxPool2d(kernel, stride)
    x = randn(*shape)
    check_staged(lambda x: pool(x), x, expected=ref_maxpool(x, pool.kernel_size, pool.stride))


def test_forward_passes_match_torch():
    torch = torch_or_skip()
    F = torch.nn.functional
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    p = LIN.init(1)
    x = randn(2, 3, 5)
    np.testing.assert_allclose(linear_fwd(p, x), F.linear(t(x), t(p["weight"]), t(p["bias"])).numpy(),
                               rtol=1e-5, atol=1e-6)
    p = LSTM.init(1)
    x, h, c = randn(3, 5), randn(3, 4), randn(3, 4)
    cell = torch.nn.LSTMCell(5, 4)
    cell.load_state_dict({k: t(v) for k, v in p.items()})
    with torch.no_grad():
        th, tc = cell(t(x), (t(h), t(c)))
    assert_trees_close(lstm_fwd(p, x, h, c), (th.numpy(), tc.numpy()), rtol=1e-5, atol=1e-6)
    for case in CONV_CASES:
        layer, fwd = conv_fwd(case)
        p = layer.init(1)
        x = randn(*case[-1])
        want = F.conv2d(t(x), t(p["weight"]), t(p["bias"]), stride=layer.stride, padding=layer.padding)
        np.testing.assert_allclose(fwd(p, x), want.numpy(), rtol=1e-5, atol=1e-5)
    for kernel, stride, shape in [(2, None, (2, 3, 5, 6)), (3, 2, (2, 3, 7, 6))]:
        pool = nn.MaxPool2d(kernel, stride)
        x = randn(*shape)
        np.testing.assert_array_equal(lantern.stage(lambda x: pool(x))(x),
                                      F.max_pool2d(t(x), kernel, stride).numpy())


# ------------------------------------------------------------------ losses

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy(reduction):
    logits = randn(2, 3, 5) * 4
    targets = RNG.integers(0, 5, (2, 3))
    lp = ref_log_softmax(logits)
    each = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    want = {"mean": each.mean(), "sum": each.sum(), "none": each}[reduction].astype(np.float32)
    check_staged(lambda z, y: nn.cross_entropy(z, y, reduction), logits, targets, expected=want)


def test_cross_entropy_is_stable_and_nll_loss_picks_targets():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, 1000.0]], np.float32)
    out = check_staged(lambda z, y: nn.cross_entropy(z, y, "none"), logits, np.array([1, 2]))
    np.testing.assert_allclose(out, [1000.0, 0.0])
    lp = randn(4, 3)
    y = np.array([2, 0, 1, 2], np.int32)
    check_staged(lambda a, b: nn.nll_loss(a, b, "sum"), lp, y, expected=np.float32(-lp[np.arange(4), y].sum()))


def test_cross_entropy_matches_torch():
    torch = torch_or_skip()
    logits = randn(6, 5) * 3
    targets = RNG.integers(0, 5, 6)
    for reduction in ("mean", "sum"):
        ours = lantern.stage(lambda z, y: nn.cross_entropy(z, y, reduction))(logits, targets)
        theirs = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets),
                                                   reduction=reduction)
        np.testing.assert_allclose(ours, theirs.item(), rtol=1e-5)


def test_loss_errors():
    with pytest.raises(lantern.ShapeError, match="targets of shape"):
        lantern.stage(lambda z, y: nn.cross_entropy(z, y))(randn(4, 3), np.zeros(3, np.int64))
    with pytest.raises(lantern.DTypeError, match="integer classes"):
        lantern.stage(lambda z, y: nn.cross_entropy(z, y))(randn(4, 3), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="reduction"):
        lantern.stage(lambda z, y: nn.cross_entropy(z, y, "max"))(randn(4, 3), np.zeros(4, np.int64))
    with pytest.raises(lantern.ShapeError, match="does not fit"):
        linear_fwd(LIN.init(0), randn(2, 4))


# ------------------------------------------------------------------ gradients (float64)

def f64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def test_grad_linear_and_embedding():
    p = f64(LIN.init(0))
    check_grads(lambda p, x: wsum(LIN(p, x)), p, randn(2, 3, 5, dtype=np.float64), argnums=(0, 1))
    e = f64(EMB.init(0))
    ids = np.array([1, 4, 1, 6])  # a repeated id: its row gets both contributions
    g = check_grads(lambda p, i: wsum(EMB(p, i)), e, ids)
    assert np.all(g["weight"][[0, 2, 3, 5]] == 0) and np.all(g["weight"][1] != 0)


def test_grad_rnn_and_lstm_cells():
    x, h, c = randn(3, 5, dtype=np.float64), randn(3, 4, dtype=np.float64), randn(3, 4, dtype=np.float64)
    check_grads(lambda p, x, h: wsum(RNN(p, x, h)), f64(RNN.init(0)), x, h, argnums=(0, 1, 2))

    def lstm_loss(p, x, h, c):
        h, c = LSTM(p, x, (h, c))
        return wsum(h) + 0.5 * wsum(c * c)
    check_grads(lstm_loss, f64(LSTM.init(0)), x, h, c, argnums=(0, 1, 2, 3))


def test_grad_treelstm():
    s = [randn(4, dtype=np.float64) for _ in range(4)]

    def loss(p, x, hl, cl, hr, cr):
        h, c = TREE(p, x, (hl, cl), (hr, cr))
        hh, cc = TREE.leaf(p, h[:1] * x)  # a leaf above, reading the cell's output
        return wsum(h) + wsum(c) + wsum(hh * cc)
    # input size 5: pad x to length 5 -- reuse a 5-vector
    check_grads(loss, f64(TREE.init(0)), randn(5, dtype=np.float64), *s, argnums=(0, 1, 2, 3, 4, 5))


def test_grad_conv2d_and_maxpool():
    layer = nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype="float64")
    pool = nn.MaxPool2d(2)
    x = randn(2, 2, 7, 6, dtype=np.float64)
    check_grads(lambda p, x: wsum(pool(lantern.relu(layer(p, x)))), layer.init(0), x, argnums=(0, 1))
    strided = nn.MaxPool2d(3, 2)
    check_grads(lambda x: wsum(strided(x)), randn(2, 3, 7, 6, dtype=np.float64))


def test_grad_cross_entropy():
    z = randn(2, 3, 5, dtype=np.float64) * 3
    y = RNG.integers(0, 5, (2, 3))
    g = check_grads(lambda z, y: nn.cross_entropy(z, y, "mean"), z, y)
    want = (np.exp(ref_log_softmax(z)) - np.eye(5)[y]) / 6  # softmax - one_hot, over 6 positions
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ random numbers and dropout

def test_random_uniform_primitive_c_equals_numpy_reference():
    ref = PRIMITIVES["random_uniform"].ref
    key = np.int64(-12345)
    a = check_staged(lambda k: lantern.random_uniform(k, (40, 25)), key,
                     expected=ref(key, shape=(40, 25), dtype="float32"), rtol=0, atol=0)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() < 1
    b = check_staged(lambda k: lantern.random_uniform(k, (1000,), "float64"), np.int32(7),
                     expected=ref(np.int64(7), shape=(1000,), dtype="float64"), rtol=0, atol=0)
    assert b.dtype == np.float64 and 0.45 < b.mean() < 0.55 and len(np.unique(b)) == 1000
    # a Python-int key is a constant; shape () gives a scalar
    c = check_staged(lambda: lantern.random_uniform(7, ()))
    assert c.shape == () and c == ref(np.int64(7), shape=(), dtype="float32")
    with pytest.raises(lantern.DTypeError, match="key must be an integer"):
        lantern.stage(lambda k: lantern.random_uniform(k, (3,)))(np.float32(1.0))


DROP = nn.Dropout(0.25)


@lantern.stage
def dropout_fwd(x, key):
    return DROP(x, key)


def test_dropout_is_deterministic_per_key_and_keeps_the_right_fraction():
    x = np.ones((100, 80), np.float32)
    a = dropout_fwd(x, np.int64(1))
    assert np.array_equal(a, dropout_fwd(x, np.int64(1)))  # same key, same mask
    b = dropout_fwd(x, np.int64(2))
    assert not np.array_equal(a, b)
    assert set(np.unique(a)) == {np.float32(0), np.float32(1 / 0.75)}  # inverted dropout scaling
    for out in (a, b):
        kept = np.mean(out != 0)  # 8000 draws: standard deviation of the fraction ~0.005
        assert abs(kept - 0.75) < 0.025
    # masks of different keys are (nearly) independent
    both = np.mean((a != 0) & (b != 0))
    assert abs(both - 0.75 ** 2) < 0.03


def test_dropout_native_equals_reference_and_eval_is_identity():
    x = randn(100, 80)
    key = np.int64(99)
    u = PRIMITIVES["random_uniform"].ref(key, shape=x.shape, dtype="float32")
    want = np.where(u >= 0.25, x * np.float32(1 / 0.75), np.float32(0))
    check_staged(dropout_fwd, x, key, expected=want, rtol=0, atol=0)
    out = check_staged(lambda x: nn.Dropout(0.5)(x, 3, training=False), x[:2])
    assert np.array_equal(out, x[:2])
    assert np.all(check_staged(lambda x: nn.Dropout(1.0)(x, 3), x[:2]) == 0)


def test_dropout_gradient_masks():
    x = randn(6, 5, dtype=np.float64)
    drop = nn.Dropout(0.5)
    g = check_grads(lambda x, k: wsum(drop(x, k)), x, np.int64(5))
    u = PRIMITIVES["random_uniform"].ref(np.int64(5), shape=x.shape, dtype="float64")
    w = np.cos(np.arange(x.size) * 1.3 + 0.4).reshape(x.shape)
    np.testing.assert_allclose(g, np.where(u >= 0.5, 2.0 * w, 0.0), rtol=1e-12)
    assert 0 < np.count_nonzero(g) < x.size


# ------------------------------------------------------------------ training

def test_small_cnn_trains_with_sgd():
    """conv -> relu -> maxpool -> dropout -> linear -> cross-entropy, trained with plain SGD in
    one staged step (forward, backward and update); the loss on a learnable task goes down."""
    conv, pool, drop, fc = nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Dropout(0.1), nn.Linear(4 * 3 * 3, 3)
    rng = np.random.default_rng(0)
    params = {"conv": conv.init(rng), "fc": fc.init(rng)}
    labels = np.arange(12) % 3
    images = rng.standard_normal((12, 1, 6, 6)).astype(np.float32) * 0.3
    for k in range(3):  # class k: a bright row band at rows 2k, 2k+1
        images[labels == k, 0, 2 * k:2 * k + 2, :] += 1.5

    def loss_fn(p, x, y, key):
        h = pool(lantern.relu(conv(p["conv"], x)))
        h = drop(lantern.reshape(h, (x.shape[0], -1)), key)
        return nn.cross_entropy(fc(p["fc"], h), y)

    @lantern.stage
    def step(p, x, y, key):
        loss, g = lantern.value_and_grad(loss_fn)(p, x, y, key)
        new = {m: {k: p[m][k] - 0.5 * g[m][k] for k in p[m]} for m in p}
        return new, loss

    losses = []
    for s in range(40):
        params, loss = step(params, images, labels, np.int64(s))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
    assert losses[0] == pytest.approx(np.log(3), abs=0.3)


# ------------------------------------------------------------------ parameters and error locations (issue 13)

@pytest.mark.parametrize("layer, rename", [
    (nn.Linear(3, 2), ("bias", "bais")),
    (nn.Linear(3, 2), ("weight", "w")),
    (nn.LSTMCell(3, 2), ("bias_hh", "bias_h")),
    (nn.Conv2d(1, 2, 3), ("bias", "b")),
])
def test_a_missing_or_misspelled_parameter_is_an_error(layer, rename):
    params = layer.init(0)
    params[rename[1]] = params.pop(rename[0])
    x = np.ones((1, 3), np.float32) if not isinstance(layer, nn.Conv2d) else np.ones((1, 1, 5, 5), np.float32)
    state = (np.zeros((1, 2), np.float32),) * 2

    def call(p, x):
        return layer(p, x, state) if isinstance(layer, nn.LSTMCell) else layer(p, x)  # LINE:layer-call
    with pytest.raises(lantern.TraceError, match=rf"\['{rename[0]}'\] missing .*'{rename[1]}'") as info:
        lantern.stage(call)(params, x)
    assert "test_nn.py" in str(info.value)  # the user's line first, then the library's


def test_layers_take_a_dict_holding_other_parameters_too():
    lin = nn.Linear(3, 2)
    params = {**lin.init(0), "other_layer": np.ones(4, np.float32)}
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(lantern.stage(lambda p, x: lin(p, x))(params, x),
                               x @ params["weight"].T + params["bias"], rtol=1e-6)


def test_errors_inside_the_library_name_the_users_line():
    def f(x, w):
        return nn.linear(x, w)  # LINE:user
    with pytest.raises(lantern.ShapeError) as info:
        lantern.stage(f)(np.ones((2, 3)), np.ones((4, 5)))
    line = next(i for i, text in enumerate(open(__file__), 1) if "# LINE:user" in text)
    assert f"(at test_nn.py:{line}, in nn.py:" in str(info.value)


@pytest.mark.parametrize("targets", [[0, 3], [0, -1], [99, 0]])
def test_cross_entropy_rejects_classes_out_of_range(targets):
    """As PyTorch (IndexError): a target outside [0, C) was silently a zero loss."""
    f = lantern.stage(lambda logits, t: nn.cross_entropy(logits, t))  # LINE:ce
    with pytest.raises(lantern.OutOfBoundsError, match=r"test_nn.py:\d+, in nn.py:\d+: one_hot with 3 classes: "
                       rf"index {[t for t in targets if not 0 <= t < 3][0]} is out of bounds"):
        f(np.zeros((2, 3), np.float32), np.array(targets))
    assert float(f(np.zeros((2, 3), np.float32), np.array([0, 2]))) == pytest.approx(np.log(3.0))


def test_one_hot_checks_its_indices_unless_checks_are_off():
    onehot = lantern.stage(lambda i: lantern.one_hot(i, 4))
    np.testing.assert_array_equal(onehot(np.array([1, 3])), np.eye(4, dtype=np.float32)[[1, 3]])
    with pytest.raises(lantern.OutOfBoundsError, match="one_hot with 4 classes: index 5"):
        onehot(np.array(5))
    with pytest.raises(lantern.OutOfBoundsError):  # the reference interpreter agrees
        onehot.lower(np.array(0)).interpret(np.array(5))
    unchecked = lantern.stage(lambda i: lantern.one_hot(i, 4), check_indices=False)
    np.testing.assert_array_equal(unchecked(np.array(5)), np.zeros(4, np.float32))
