"""The main job: stage, compile and train a character-level RNN language model.

Karpathy's min-char-rnn (a vanilla RNN, hidden 100, Adagrad with learning rate 0.1, gradients
clipped to ±5) over the English text of the standard library's ``pydoc_data.topics``, on
sequences of 5 to 80 characters (a random length each step; Karpathy's are 25). One staged
function holds the whole training step: the forward pass over the sequence (a plain Python ``for``
over ``range(len(inputs))``, which becomes one staged loop because the sequence length is declared a
run-time size), the backward pass (reverse-mode AD of that loop), clipping and the Adagrad update,
so each step is one native call, and one compile serves every sequence length.
"""
from __future__ import annotations

import time

import numpy as np

import lantern
from lantern.data import CharVocab, text_corpus

HIDDEN, LEARNING_RATE, CLIP = 100, 0.1, 5.0
SEQ_MIN, SEQ_MAX = 5, 80  # the demo's sequence lengths


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


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


def sequence_loss(params, inputs, targets, h0):
    """Mean cross-entropy of predicting ``targets[t]`` from ``inputs[:t+1]``; also the last state.

    Plain Python: ``len(inputs)`` is a run-time size, so the ``for`` is staged (a ``lantern.fori_loop``,
    the same IR as writing one) rather than unrolled."""
    h, total = h0, lantern.zeros((), h0.dtype)
    for t in range(len(inputs)):
        h, logp = rnn_step(params, h, inputs[t])
        total = total - logp[targets[t]]
    return total / len(inputs), h


def clipped_adagrad(params, memory, grads, lr: float = LEARNING_RATE, clip: float = CLIP):
    """min-char-rnn's update: clip to +-clip, ``mem += g^2``, ``p -= lr g / sqrt(mem + 1e-8)``."""
    new_params, new_memory = {}, {}
    for k in params:
        g = lantern.clip(grads[k], -clip, clip)
        new_memory[k] = memory[k] + g * g
        new_params[k] = params[k] - lr * g / lantern.sqrt(new_memory[k] + 1e-8)
    return new_params, new_memory


@lantern.stage(dynamic={"inputs": 0, "targets": 0})  # the sequence length is known only at run time
def train_step(params, memory, inputs, targets, h0):
    """Forward, backward, clipping and Adagrad in one native call."""
    (loss, h), grads = lantern.value_and_grad(sequence_loss, has_aux=True)(params, inputs, targets, h0)
    return (*clipped_adagrad(params, memory, grads), loss, h)


@lantern.stage(dynamic={"noise": 0})
def generate(params, first, h0, noise):
    """Sample ``len(noise)`` characters, feeding each back in (Gumbel-max: argmax of log p + noise)."""
    h, char, out = h0, lantern.asarray(first), lantern.zeros((len(noise),), "int64")
    for t in range(len(noise)):  # a staged loop (the length is a run-time size)
        h, logp = rnn_step(params, h, char)
        char = lantern.argmax(logp + noise[t])
        out = lantern.where(lantern.arange(len(noise)) == t, char, out)
    return out


def main(steps: int = 5000) -> None:
    text = text_corpus()
    vocab = CharVocab(text)
    data = vocab.encode(text)
    params = init_params(len(vocab), HIDDEN)
    memory = {k: np.zeros_like(v) for k, v in params.items()}
    h = np.zeros(HIDDEN, np.float32)
    print(f"corpus: pydoc_data.topics, {len(text):,} characters, vocabulary {len(vocab)}")

    lengths = np.random.default_rng(0).integers(SEQ_MIN, SEQ_MAX + 1, steps)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) % (len(data) - SEQ_MAX - 1)

    def batch(s: int) -> tuple[np.ndarray, np.ndarray]:
        start, n = int(starts[s]), int(lengths[s])
        return data[start:start + n], data[start + 1:start + n + 1]

    t0 = time.perf_counter()
    params, memory, loss, h = train_step(params, memory, *batch(0), h)
    first = time.perf_counter() - t0
    how = "compiled" if lantern.cache_stats()["compiles"] else "loaded from the compile cache"
    print(f"first step (trace + AD + emit C + {how}): {first * 1e3:.0f} ms, loss {float(loss):.3f} "
          f"(ln {len(vocab)} = {np.log(len(vocab)):.3f})")

    t0 = time.perf_counter()
    smooth = float(loss)
    for s in range(1, steps):
        params, memory, loss, h = train_step(params, memory, *batch(s), h)
        smooth = 0.99 * smooth + 0.01 * float(loss)
        if s % 1000 == 0:
            print(f"step {s:5d}  smoothed loss {smooth:.3f}")
    elapsed = time.perf_counter() - t0
    chars = int(lengths[1:].sum())
    print(f"{steps - 1} training steps in {elapsed:.2f} s ({elapsed / max(chars, 1) * 1e6:.2f} us per character: "
          f"forward, backward and update); {_count(train_step.cache_info().compiles, 'compile')} served "
          f"{len(set(lengths.tolist()))} sequence lengths")
    gumbel = -np.log(-np.log(np.random.default_rng(0).uniform(1e-12, 1, (80, len(vocab))))).astype(np.float32)
    out = generate(params, data[0], np.zeros(HIDDEN, np.float32), gumbel)
    print(f"sample: {vocab.decode(out)!r}")
    low = train_step.lower(params, memory, *batch(0), h)
    print(f"generated C for the training step: {low.c_path} ({len(low.c_source.splitlines())} lines)")


if __name__ == "__main__":
    main()
