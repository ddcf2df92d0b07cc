"""The main job: stage, compile and run a character-level RNN language model.

A vanilla RNN (Karpathy's min-char-rnn: hidden 100, sequence 25) over the text of
``pydoc_data.topics``. One staged function computes the cross-entropy of a sequence
with a ``fori_loop`` over time steps; another generates text greedily with the RNN
feeding back its own argmax. Until reverse-mode AD lands the weights stay at their
seeded initialisation, so the loss sits near ln(vocabulary size).
"""
from __future__ import annotations

import time

import numpy as np

import lantern
from lantern.data import CharVocab, text_corpus

HIDDEN, SEQ = 100, 25


def init_params(vocab: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "Wxh": (rng.standard_normal((vocab, hidden)) * 0.01).astype(np.float32),
        "Whh": (rng.standard_normal((hidden, hidden)) * 0.01).astype(np.float32),
        "bh": np.zeros(hidden, np.float32),
        "Why": (rng.standard_normal((hidden, vocab)) * 0.01).astype(np.float32),
        "by": np.zeros(vocab, np.float32),
    }


def rnn_step(p, h, char):
    """One step: new hidden state and log-probabilities of the next character."""
    h = lantern.tanh(p["Wxh"][char] + h @ p["Whh"] + p["bh"])
    return h, lantern.log_softmax(h @ p["Why"] + p["by"])


@lantern.stage
def sequence_loss(params, inputs, targets, h0):
    """Mean cross-entropy of predicting ``targets[t]`` from ``inputs[:t+1]``; also the last state."""
    def step(t, carry):
        h, total = carry
        h, logp = rnn_step(params, h, inputs[t])
        return h, total - logp[targets[t]]

    h, total = lantern.fori_loop(0, inputs.shape[0], step, (h0, lantern.zeros((), "float32")))
    return total / inputs.shape[0], h


@lantern.stage
def generate(params, first, h0, length):
    """Greedy decoding: feed back the most likely next character ``length`` times."""
    def step(t, carry):
        h, char, out = carry
        h, logp = rnn_step(params, h, char)
        nxt = lantern.argmax(logp)
        return h, nxt, lantern.where(lantern.arange(length) == t, nxt, out)

    _, _, out = lantern.fori_loop(0, length, step, (h0, first, lantern.zeros((length,), "int64")))
    return out


def main() -> None:
    text = text_corpus()
    vocab = CharVocab(text)
    data = vocab.encode(text)
    params = init_params(len(vocab), HIDDEN)
    h = np.zeros(HIDDEN, np.float32)
    print(f"corpus: pydoc_data.topics, {len(text):,} characters, vocabulary {len(vocab)}")

    t0 = time.perf_counter()
    loss, h = sequence_loss(params, data[:SEQ], data[1:SEQ + 1], h)
    first = time.perf_counter() - t0
    stats = lantern.cache_stats()
    how = "compiled" if stats["compiles"] else "loaded from the compile cache"
    print(f"first call (trace + emit C + {how}): {first * 1e3:.1f} ms, loss {float(loss):.4f} "
          f"(ln {len(vocab)} = {np.log(len(vocab)):.4f})")

    steps = (len(data) - 1) // SEQ
    t0 = time.perf_counter()
    total = 0.0
    for s in range(steps):
        chunk = data[s * SEQ: s * SEQ + SEQ + 1]
        loss, h = sequence_loss(params, chunk[:-1], chunk[1:], h)
        total += float(loss)
    elapsed = time.perf_counter() - t0
    print(f"one pass over the corpus: {steps:,} sequences of {SEQ} in {elapsed:.2f} s "
          f"({elapsed / steps * 1e6:.1f} us per sequence), mean loss {total / steps:.4f}")

    out = generate(params, data[0], np.zeros(HIDDEN, np.float32), 40)
    print(f"greedy sample from the untrained model: {vocab.decode(out)!r}")
    low = sequence_loss.lower(params, data[:SEQ], data[1:SEQ + 1], h)
    print(f"generated C for sequence_loss: {low.c_path} ({len(low.c_source.splitlines())} lines)")


if __name__ == "__main__":
    main()
