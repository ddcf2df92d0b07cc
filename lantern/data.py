"""Data that ships with every Python, so nothing is downloaded at run time.

* :func:`text_corpus` and :class:`CharVocab`: the English text of the standard library's
  ``pydoc_data.topics`` as a character corpus;
* :func:`sentence_trees`: deterministically binarized sentences of the same text, as
  child-index arrays, each at its own size or padded (the TreeLSTM benchmark's data);
* :func:`minibatches`: shuffled batches of arrays for ``lantern.train.fit``, the last partial one kept;
* :func:`synthetic_mnist`: a deterministic, learnable MNIST-shaped classification task;
  :func:`load_mnist` reads real MNIST from local IDX files (:func:`read_idx`) instead.
"""
from __future__ import annotations

import gzip
import os
import re
from typing import Iterator

import numpy as np

from .errors import ArgumentError, LanternError

#: Mean and standard deviation of MNIST's training pixels (in [0, 1]), the usual normalisation.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class DataFormatError(LanternError, ValueError):
    """A data file is not in the format it was read as (e.g. not an IDX file)."""


def text_corpus() -> str:
    """The English text of the standard library's ``pydoc_data.topics`` (about 460 kB)."""
    from pydoc_data.topics import topics
    return "".join(topics[k] for k in sorted(topics))


class CharVocab:
    """Characters of a text, sorted, mapped to consecutive int64 ids."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def decode(self, ids: np.ndarray) -> str:
        return "".join(self.chars[int(i)] for i in ids)


# ---------------------------------------------------------------------------- trees
def sentences(min_words: int = 4, max_words: int = 20) -> Iterator[list[str]]:
    """The sentences of :func:`text_corpus` with ``min_words`` to ``max_words`` words, in order.

    A sentence ends at ``.``, ``!`` or ``?`` followed by white space; its words are the runs of
    ASCII letters, lower-cased.
    """
    for s in re.split(r"(?<=[.!?])\s+", text_corpus()):
        words = re.findall(r"[a-z]+", s.lower())
        if min_words <= len(words) <= max_words:
            yield words


def sentence_trees(count: int, classes: int = 5, min_words: int = 4, max_words: int = 20, pad: bool = False,
                   ) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """The first ``count`` :func:`sentences`, each a balanced binary tree: ``(vocabulary, trees)``.

    ``vocabulary`` is the sorted list of the trees' words (a word's id is its position). A
    sentence is split at its middle (the left half gets the extra word) down to single words.
    Nodes are numbered in pre-order: the root is 0 and a node's children come after it, the
    left subtree before the right one. With ``pad`` every tree is padded to ``2 * max_words - 1``
    nodes, so all trees have the same shapes; without, each has its own size (``2 * words - 1``:
    a staged function compiles once more and then serves every size, see ``dynamic=`` of
    :func:`lantern.stage`). A tree is a dict of arrays:

    * ``left``, ``right`` (int64): the children's node numbers, ``-1`` for a leaf and padding;
    * ``words`` (int64): a leaf's word id (0 for inner nodes and padding);
    * ``labels`` (int64): the total number of letters of the words a node spans, mod ``classes``
      (0 for padding) -- a learnable per-node target;
    * ``mask`` (float32): 1 for the tree's nodes, 0 for padding;
    * ``n`` (int): the number of nodes, ``2 * words - 1``.
    """
    if not (isinstance(count, int) and count >= 1):
        raise ArgumentError(f"sentence_trees: count must be a positive int, got {count!r}")
    if not (isinstance(classes, int) and classes >= 1):
        raise ArgumentError(f"sentence_trees: classes must be a positive int, got {classes!r}")
    if not (1 <= min_words <= max_words):
        raise ArgumentError(f"sentence_trees: need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    found = []
    for words in sentences(min_words, max_words):
        found.append(words)
        if len(found) == count:
            break
    else:
        raise ArgumentError(f"sentence_trees: count={count}, but the corpus has only {len(found)} sentences "
                            f"of {min_words} to {max_words} words")
    vocabulary = sorted({w for s in found for w in s})
    index = {w: i for i, w in enumerate(vocabulary)}
    size = 2 * max_words - 1
    return vocabulary, [_binarize(words, index, classes, size if pad else 2 * len(words) - 1) for words in found]


def _binarize(words: list[str], index: dict[str, int], classes: int, size: int) -> dict[str, np.ndarray]:
    left, right, word, label = [], [], [], []

    def build(lo: int, hi: int) -> int:  # the node spanning words[lo:hi]; returns its pre-order number
        k = len(left)
        left.append(-1), right.append(-1), word.append(0)
        label.append(sum(len(w) for w in words[lo:hi]) % classes)
        if hi - lo == 1:
            word[k] = index[words[lo]]
        else:
            mid = (lo + hi + 1) // 2
            left[k] = build(lo, mid)
            right[k] = build(mid, hi)
        return k

    build(0, len(words))
    n = len(left)
    pad = [-1] * (size - n)
    return {"left": np.array(left + pad, np.int64), "right": np.array(right + pad, np.int64),
            "words": np.array(word + [0] * (size - n), np.int64),
            "labels": np.array(label + [0] * (size - n), np.int64),
            "mask": np.array([1.0] * n + [0.0] * (size - n), np.float32), "n": n}


# ---------------------------------------------------------------------------- MNIST
def minibatches(*arrays: np.ndarray, batch_size: int, epochs: int = 1, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """Tuples of rows of ``arrays`` (all with the same first dimension), ``batch_size`` at a time, for
    ``epochs`` passes (reshuffled each pass with ``seed``), as PyTorch's ``DataLoader`` gives them: the last,
    smaller batch of a pass is kept unless ``drop_last``. A staged step compiles once more for it, with
    the batch dimension a run-time size, and that code serves every batch after (``lantern.stage``'s
    ``dynamic=``). Feed them to :func:`lantern.train.fit`."""
    if not arrays or any(np.shape(a)[:1] != np.shape(arrays[0])[:1] for a in arrays):
        raise ArgumentError(f"minibatches: need arrays with one first dimension, got shapes "
                            f"{[np.shape(a) for a in arrays]}")
    if not (isinstance(batch_size, int) and batch_size >= 1) or not (isinstance(epochs, int) and epochs >= 0):
        raise ArgumentError(f"minibatches: batch_size must be an int >= 1 and epochs an int >= 0, got {batch_size!r} "
                            f"and {epochs!r}")
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last else n
        for lo in range(0, stop, batch_size):
            rows = order[lo:lo + batch_size]
            yield tuple(np.ascontiguousarray(a[rows]) for a in arrays)


def synthetic_mnist(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST-shaped examples: images ``[n, 1, 28, 28]`` float32 and int64 labels in ``[0, 10)``.

    Deterministic for a ``seed``, and learnable: class ``k`` is a Gaussian blob at its own
    place on a 2 x 5 grid plus a stroke at angle ``k`` radians, shifted by up to 2 pixels,
    with Gaussian noise (sd 0.3), clipped to [0, 1] and normalised like MNIST
    (``(x - MNIST_MEAN) / MNIST_STD``).
    """
    if not (isinstance(n, (int, np.integer)) and n >= 0):
        raise ArgumentError(f"synthetic_mnist: n must be a non-negative int, got {n!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    templates = []
    for k in range(10):
        cy, cx = 7 + 14 * (k // 5), 4 + 5 * (k % 5)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
        stroke = np.exp(-((np.cos(k) * (yy - 14) + np.sin(k) * (xx - 14)) ** 2) / 4.0)
        templates.append(blob + 0.5 * stroke)
    labels = rng.integers(0, 10, n).astype(np.int64)
    shift = rng.integers(-2, 3, (n, 2))
    images = np.empty((n, 28, 28), np.float32)
    for i in range(n):
        images[i] = np.roll(templates[labels[i]], tuple(shift[i]), axis=(0, 1))
    images += 0.3 * rng.standard_normal(images.shape).astype(np.float32)
    images = np.clip(images, 0.0, 1.0)
    return ((images - MNIST_MEAN) / MNIST_STD).astype(np.float32)[:, None], labels


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped when the name ends in ``.gz``) as a NumPy array.

    Multi-byte types are big-endian in the file and come back in native byte order.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataFormatError(f"read_idx: {path} is not an IDX file (magic bytes {data[:4].hex() or 'missing'})")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim, offset = data[3], 4 + 4 * data[3]
    if len(data) < offset:
        raise DataFormatError(f"read_idx: {path} ends inside its header ({ndim} dimensions)")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = offset + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataFormatError(f"read_idx: {path} holds {len(data)} bytes, but its header {dims} "
                              f"of {dtype.str} needs {expected}")
    out = np.frombuffer(data, dtype, offset=offset).reshape(dims)
    return out.astype(dtype.newbyteorder("="))


def load_mnist(images: str | os.PathLike[str], labels: str | os.PathLike[str],
               n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Real MNIST from local IDX files, in :func:`synthetic_mnist`'s layout and normalisation.

    ``images`` is e.g. ``train-images-idx3-ubyte`` (or ``.gz``), ``labels`` the matching
    ``train-labels-idx1-ubyte``; ``n`` keeps only the first ``n`` examples.
    """
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataFormatError(f"load_mnist: expected images [n, rows, cols] and labels [n], "
                              f"got {list(x.shape)} ({images}) and {list(y.shape)} ({labels})")
    x, y = x[:n], y[:n]
    x = x.astype(np.float32) / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32)[:, None], y.astype(np.int64)
