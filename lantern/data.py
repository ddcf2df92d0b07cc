"""Data that ships with every Python, so nothing is downloaded at run time."""
from __future__ import annotations

import numpy as np


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
