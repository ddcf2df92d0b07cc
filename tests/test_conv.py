"""Issue 14: direct 2-D convolution (the ``conv2d`` primitives in ``[C, H, W, N]``, ``codegen/kernels/conv.py``)
against NumPy, finite differences (first and second order), run-time batch sizes and thread counts."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lantern
from lantern import nn, ops
from lantern.ir.primitives import PRIMITIVES
from lantern.testing import check_grads


def _staged(prim: str, **attrs):
    return lantern.stage(lambda a, b: ops._emit(ops._frame_of(), prim, [ops.asarray(a), ops.asarray(b)], **attrs))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (2, 3)])
@pytest.mark.parametrize("batch", [1, 5, 16, 37])
def test_kernels_match_numpy(rng, dtype, stride, batch):
    """Each of the three kernels against its NumPy meaning: batches below, at and above a vector's 16 lanes,
    strides that skip input rows and columns, channel counts that leave a partial block."""
    x = rng.standard_normal((13, 9, 10, batch)).astype(dtype)
    w = rng.standard_normal((14, 13, 3, 2)).astype(dtype)
    ref = PRIMITIVES["conv2d"].ref
    y = ref(x, w, stride=stride)
    g = rng.standard_normal(y.shape).astype(dtype)
    tol = dict(rtol=2e-5, atol=2e-4) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_staged("conv2d", stride=stride)(x, w), y, **tol)
    np.testing.assert_allclose(_staged("conv2d_input_grad", stride=stride, size=(9, 10))(g, w),
                               PRIMITIVES["conv2d_input_grad"].ref(g, w, stride=stride, size=(9, 10)), **tol)
    np.testing.assert_allclose(_staged("conv2d_weight_grad", stride=stride, kernel=(3, 2))(x, g),
                               PRIMITIVES["conv2d_weight_grad"].ref(x, g, stride=stride, kernel=(3, 2)), **tol)


def test_adjoint_identities_of_the_references(rng):
    """The three NumPy meanings are each other's adjoints (what the VJP rules rely on)."""
    x, w = rng.standard_normal((3, 8, 7, 4)), rng.standard_normal((5, 3, 3, 2))
    conv, dx, dw = (PRIMITIVES[p].ref for p in ("conv2d", "conv2d_input_grad", "conv2d_weight_grad"))
    g = rng.standard_normal(conv(x, w, stride=(2, 2)).shape)
    np.testing.assert_allclose((g * conv(x, w, stride=(2, 2))).sum(),
                               (dx(g, w, stride=(2, 2), size=(8, 7)) * x).sum(), rtol=1e-12)
    np.testing.assert_allclose((g * conv(x, w, stride=(2, 2))).sum(),
                               (dw(x, g, stride=(2, 2), kernel=(3, 2)) * w).sum(), rtol=1e-12)


LAYER = nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype="float64")


def test_first_and_second_order_gradients(rng):
    """Gradients of the layer, and of a function of its input gradient (the adjoints' own rules)."""
    p, x = LAYER.init(rng), rng.standard_normal((3, 2, 7, 6))

    def loss(p, x):
        return ops.sum(ops.sin(LAYER(p, x)))

    check_grads(loss, p, x, argnums=(0, 1))
    check_grads(lambda p, x: ops.sum(lantern.grad(loss, argnums=1)(p, x) ** 2), p, x, argnums=(0, 1))


def test_run_time_batch_size(rng):
    """The batch axis as a run-time size: one compile serves every batch, values as NumPy's."""
    p = LAYER.init(rng)
    f = lantern.stage(lambda p, x: LAYER(p, x), dynamic={"x": 0})
    for n in (3, 21, 2):
        x = rng.standard_normal((n, 2, 7, 6))
        xt = np.pad(x.transpose(1, 2, 3, 0), ((0, 0), (1, 1), (1, 1), (0, 0)))
        expected = PRIMITIVES["conv2d"].ref(xt, p["weight"], stride=(2, 2)) + p["bias"][:, None, None, None]
        np.testing.assert_allclose(f(p, x), expected.transpose(3, 0, 1, 2), rtol=1e-12, atol=1e-12)
    assert f.cache_info().compiles == 1


def test_integer_convolution_keeps_the_product_form():
    layer = nn.Conv2d(1, 2, 2, dtype="int64")
    p = {"weight": np.arange(8).reshape(2, 1, 2, 2), "bias": np.array([1, -1])}
    x = np.arange(18).reshape(2, 1, 3, 3)
    expected = np.einsum("ocij,ncyxij->noyx", p["weight"],
                         np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))) + p["bias"][:, None, None]
    np.testing.assert_array_equal(lantern.stage(lambda p, x: layer(p, x))(p, x), expected)


SCRIPT = textwrap.dedent("""\
    import sys
    import numpy as np
    import lantern
    from lantern import nn, ops

    conv1, conv2, pool = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 24, 3, stride=2), nn.MaxPool2d(2)

    def loss(p, x):
        return ops.sum(ops.tanh(conv2(p["c2"], lantern.relu(pool(conv1(p["c1"], x))))))

    p = {"c1": conv1.init(0), "c2": conv2.init(1)}
    x = np.random.default_rng(0).standard_normal((40, 3, 32, 32)).astype(np.float32)
    value, g = lantern.stage(lantern.value_and_grad(loss))(p, x)
    np.save(sys.argv[1], np.concatenate([np.ravel(value)] + [np.ravel(v) for d in g.values() for v in d.values()]))
    """)


def test_results_are_bitwise_the_same_for_any_thread_count(tmp_path, fresh_cache):
    script = tmp_path / "cnn.py"
    script.write_text(SCRIPT)
    results = []
    for threads in ("1", "2"):
        out = tmp_path / f"out_{threads}.npy"
        proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "LANTERN_NUM_THREADS": threads})
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(out.read_bytes())
    assert results[0] == results[1]


@pytest.mark.parametrize("seed", range(6))
def test_random_layers_against_pytorch(seed):
    """Random channel counts, kernels, strides, padding and batches: the value and every gradient as PyTorch's."""
    torch = pytest.importorskip("torch")
    import random
    rng = random.Random(seed)
    c, o, kh, kw = rng.randint(1, 14), rng.randint(1, 26), rng.randint(1, 5), rng.randint(1, 5)
    stride, padding = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(0, kh // 2), rng.randint(0, kw // 2))
    n, h, w = rng.choice([1, 2, 5, 17, 33]), rng.randint(kh, kh + 9), rng.randint(kw, kw + 9)
    layer = nn.Conv2d(c, o, (kh, kw), stride=stride, padding=padding, dtype="float64")
    p, x = layer.init(seed), np.random.default_rng(seed).standard_normal((n, c, h, w))
    value, (gp, gx) = lantern.stage(lantern.value_and_grad(lambda p, x: ops.sum(ops.sin(layer(p, x))),
                                                           argnums=(0, 1)))(p, x)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, p["weight"], p["bias"]))
    tv = torch.sin(torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding)).sum()
    tv.backward()
    for ours, theirs in ((value, tv.item()), (gp["weight"], tw.grad), (gp["bias"], tb.grad), (gx, tx.grad)):
        np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-9, atol=1e-9)


def test_an_empty_batch_gives_zero_weight_gradients(rng):
    """No images: the weight gradient sums nothing (zeros, no kernel with empty loops), the value is 0."""
    p = LAYER.init(rng)
    value, grads = lantern.stage(lantern.value_and_grad(lambda p, x: ops.sum(ops.sin(LAYER(p, x)))))(
        p, np.zeros((0, 2, 7, 6)))
    assert value == 0.0 and not grads["weight"].any() and not grads["bias"].any()
    assert grads["weight"].shape == p["weight"].shape
