"""lantern.data: the corpus, the binarized sentence trees, synthetic MNIST and the IDX reader."""
import gzip

import numpy as np
import pytest

from lantern import ArgumentError
from lantern.data import (MNIST_MEAN, MNIST_STD, CharVocab, DataFormatError, load_mnist, read_idx, sentence_trees,
                          sentences, synthetic_mnist, text_corpus)


def test_corpus_and_vocabulary_round_trip():
    text = text_corpus()
    assert len(text) > 100_000 and text == text_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text[:500])
    assert ids.dtype == np.int64 and ids.max() < len(vocab)
    assert vocab.decode(ids) == text[:500]


# ------------------------------------------------------------------ trees

def _leaves_in_order(t, k=0):
    if t["left"][k] < 0:
        return [k]
    return _leaves_in_order(t, t["left"][k]) + _leaves_in_order(t, t["right"][k])


@pytest.fixture(scope="module")
def trees():
    return sentence_trees(50, pad=True)


def test_sentence_trees_are_deterministic(trees):
    vocab, ts = trees
    vocab2, ts2 = sentence_trees(50, pad=True)
    assert vocab == vocab2 == sorted(set(vocab))
    for a, b in zip(ts, ts2, strict=True):
        assert a["n"] == b["n"]
        for key in ("left", "right", "words", "labels", "mask"):
            np.testing.assert_array_equal(a[key], b[key])
    # a prefix of a longer request: the first trees do not depend on how many are asked for
    _, few = sentence_trees(5, pad=True)
    np.testing.assert_array_equal(few[4]["left"], ts[4]["left"])


def test_unpadded_trees_are_the_padded_ones_cut_to_their_size(trees):
    _, padded = trees
    _, own = sentence_trees(50)  # each tree at its own size (the default)
    assert len({t["n"] for t in own}) > 5
    for a, b in zip(own, padded, strict=True):
        for key in ("left", "right", "words", "labels", "mask"):
            assert a[key].shape == (a["n"],)
            np.testing.assert_array_equal(a[key], b[key][:a["n"]])


def test_sentence_trees_shapes_and_structure(trees):
    vocab, ts = trees
    texts = [s for s, _ in zip(sentences(), range(len(ts)))]
    for t, words in zip(ts, texts, strict=True):
        n = t["n"]
        assert n == 2 * len(words) - 1
        for key, dtype in (("left", np.int64), ("right", np.int64), ("words", np.int64), ("labels", np.int64),
                           ("mask", np.float32)):
            assert t[key].shape == (39,) and t[key].dtype == dtype
        left, right = t["left"], t["right"]
        # padding: no children, word 0, label 0, mask 0
        assert (left[n:] == -1).all() and (right[n:] == -1).all() and (t["words"][n:] == 0).all()
        assert (t["labels"][n:] == 0).all() and (t["mask"] == (np.arange(39) < n)).all()
        # pre-order: children follow their parent, the left subtree before the right one;
        # every node but the root has exactly one parent; leaves have no right child either
        inner = left[:n] >= 0
        assert ((right[:n] >= 0) == inner).all()
        ks = np.flatnonzero(inner)
        assert (left[ks] == ks + 1).all() and (right[ks] > left[ks]).all() and (right[ks] < n).all()
        parents = np.bincount(np.concatenate([left[ks], right[ks]]), minlength=n)
        assert parents[0] == 0 and (parents[1:] == 1).all()
        # balanced split: the left half gets the extra word
        for k in ks:
            nl, nr = len(_leaves_in_order(t, left[k])), len(_leaves_in_order(t, right[k]))
            assert nl - nr in (0, 1)
        # leaves in order spell the sentence; labels are letters spanned mod 5
        leaves = _leaves_in_order(t)
        assert [vocab[w] for w in t["words"][leaves]] == words
        labels = t["labels"]
        assert ((0 <= labels) & (labels < 5)).all()
        for k in leaves:
            assert labels[k] == len(vocab[t["words"][k]]) % 5
        for k in ks:
            assert labels[k] == (labels[left[k]] + labels[right[k]]) % 5


def test_sentence_trees_options_and_errors():
    vocab, ts = sentence_trees(3, classes=3, min_words=2, max_words=6, pad=True)
    assert all(t["left"].shape == (11,) and 3 <= t["n"] <= 11 and t["labels"].max() < 3 for t in ts)
    with pytest.raises(ArgumentError, match="count must be a positive int"):
        sentence_trees(0)
    with pytest.raises(ArgumentError, match="corpus has only"):
        sentence_trees(10**7)
    with pytest.raises(ArgumentError, match="min_words <= max_words"):
        sentence_trees(3, min_words=5, max_words=4)


# ------------------------------------------------------------------ MNIST

def test_synthetic_mnist_shapes_determinism_and_normalisation():
    x, y = synthetic_mnist(300, seed=1)
    assert x.shape == (300, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (300,) and y.dtype == np.int64
    assert set(y.tolist()) == set(range(10))
    x2, y2 = synthetic_mnist(300, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = synthetic_mnist(300, seed=2)
    assert not np.array_equal(x, x3)
    # pixels were clipped to [0, 1] before MNIST's normalisation
    np.testing.assert_allclose([x.min(), x.max()], [-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD], rtol=1e-6)
    assert synthetic_mnist(0)[0].shape == (0, 1, 28, 28)
    with pytest.raises(ArgumentError, match="n must be"):
        synthetic_mnist(-1)


def test_synthetic_mnist_is_learnable():
    """Nearest class mean, fitted on one sample and scored on another, is far above chance (10 %)."""
    x, y = synthetic_mnist(500, seed=0)
    xt, yt = synthetic_mnist(500, seed=1)
    means = np.stack([x[y == k].reshape(-1, 784).mean(0) for k in range(10)])
    d = ((xt.reshape(-1, 1, 784) - means[None]) ** 2).sum(-1)
    assert (d.argmin(1) == yt).mean() > 0.9


def _write_idx(path, array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_and_load_mnist(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    _write_idx(tmp_path / f"img{suffix}", images, 0x08)
    _write_idx(tmp_path / f"lab{suffix}", labels, 0x08)
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    x, y = load_mnist(tmp_path / f"img{suffix}", str(tmp_path / f"lab{suffix}"), n=5)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0], (images[:5] / 255.0 - MNIST_MEAN) / MNIST_STD, rtol=1e-6)
    np.testing.assert_array_equal(y, labels[:5])


@pytest.mark.parametrize("code,dtype", [(0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_idx_multibyte_types_come_back_native(tmp_path, code, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 7.5 * (code >= 0x0D)).astype(dtype)
    _write_idx(tmp_path / "a", a, code)
    out = read_idx(tmp_path / "a")
    assert out.dtype == dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DataFormatError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    _write_idx(short, np.zeros((3, 4), np.uint8), 0x08)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(DataFormatError, match=r"header \[3, 4\]"):
        read_idx(short)
    _write_idx(tmp_path / "img", np.zeros((3, 2, 2), np.uint8), 0x08)
    _write_idx(tmp_path / "lab", np.zeros(4, np.uint8), 0x08)
    with pytest.raises(DataFormatError, match="load_mnist"):
        load_mnist(tmp_path / "img", tmp_path / "lab")


# ------------------------------------------------------------------ minibatches (issue 12)

def test_minibatches_keep_the_last_partial_batch_and_fit_compiles_it_once(monkeypatch):
    import io

    import lantern
    from lantern import nn, optim
    from lantern.data import minibatches
    monkeypatch.setenv("CFLAGS", "-O0")
    x, y = synthetic_mnist(45)
    x = x.reshape(45, -1)
    sizes = [len(b[0]) for b in minibatches(x, y, batch_size=16, epochs=2)]
    assert sizes == [16, 16, 13, 16, 16, 13]
    assert [len(b[0]) for b in minibatches(x, y, batch_size=16, drop_last=True)] == [16, 16]
    rows = np.concatenate([b[1] for b in minibatches(x, y, batch_size=16, seed=3)])
    assert sorted(rows.tolist()) == sorted(y.tolist())  # a permutation of the rows
    opt = optim.SGD(lr=0.1)
    step = lantern.stage(lambda p, s, xb, yb: _sgd_step(opt, nn, p, s, xb, yb))
    params = {"W": np.zeros((784, 10), np.float32), "b": np.zeros(10, np.float32)}
    result = lantern.train.fit(step, params, opt.init(params), minibatches(x, y, batch_size=16, epochs=3),
                               file=io.StringIO())
    assert len(result.losses) == 9 and result.losses[-1] < result.losses[0]
    assert step.cache_info().compiles == 2  # 16, then the batch size a run-time size (13 and 16 after)
    with pytest.raises(ArgumentError, match="one first dimension"):
        next(minibatches(x, y[:3], batch_size=4))


def _sgd_step(opt, nn, p, s, xb, yb):
    import lantern
    loss, g = lantern.value_and_grad(lambda p: nn.cross_entropy(xb @ p["W"] + p["b"], yb))(p)
    p, s = opt.update(g, s, p)
    return p, s, loss
