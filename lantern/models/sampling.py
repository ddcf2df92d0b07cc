"""Sampling from logits (greedy, temperature, top-p) and prompt continuation with a Llama model.

The model runs as generated C (:class:`lantern.models.llama.Decoder`, one staged decode step with
a key/value cache); choosing the next token from its logits is a few NumPy operations here.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ArgumentError
from .llama import Decoder, LlamaConfig, check_params

__all__ = ["sample", "stream", "generate", "greedy"]


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_p: float = 1.0) -> int:
    """One token id from ``logits [vocab]``.

    ``temperature == 0`` is greedy (the argmax). Otherwise the logits are divided by ``temperature``,
    turned into probabilities (softmax in float64), and with ``top_p < 1`` cut to the smallest set of
    most likely tokens whose probabilities sum to at least ``top_p`` (nucleus sampling, Holtzman
    et al. 2020), renormalised, and sampled with ``rng``."""
    if not temperature >= 0.0:
        raise ValueError(f"sample: temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample: top_p must be in (0, 1], got {top_p}")
    logits = np.asarray(logits, np.float64)
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = logits / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1  # the first prefix reaching top_p
        kept = order[:keep]
        q = np.zeros_like(p)
        q[kept] = p[kept]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


@functools.lru_cache(maxsize=None)
def _decoder(config: LlamaConfig) -> Decoder:
    return Decoder(config)


def _checked_prompt(config: LlamaConfig, params: dict[str, np.ndarray], prompt: Sequence[int]) -> list[int]:
    check_params(config, params)
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ArgumentError("generate: the prompt must hold at least one token")
    bad = [t for t in prompt if not 0 <= t < config.vocab_size]
    if bad:
        raise ArgumentError(f"generate: prompt tokens {bad[:5]} are outside the vocabulary [0, {config.vocab_size})")
    if len(prompt) >= config.max_seq_len:
        raise ArgumentError(f"generate: a prompt of {len(prompt)} tokens leaves no room in max_seq_len="
                            f"{config.max_seq_len}")
    return prompt


def greedy(config: LlamaConfig, params: dict[str, np.ndarray], prompt: Sequence[int], max_new_tokens: int,
           stop_token: int | None = None) -> list[int]:
    """The greedy continuation of ``prompt`` (``stream(..., temperature=0)``, stopping after ``stop_token``),
    computed in one native call: :meth:`lantern.models.llama.Decoder._greedy`, a plain-Python loop staged
    once for every prompt length."""
    prompt = _checked_prompt(config, params, prompt)
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ArgumentError(f"greedy: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    dec = _decoder(config)
    kc, vc = dec.empty_cache(next(iter(params.values())).dtype)
    out, count = dec.greedy(params, np.array(prompt, np.int64), kc, vc, max_new_tokens,
                            -1 if stop_token is None else int(stop_token))
    return out[:int(count)].tolist()


def stream(config: LlamaConfig, params: dict[str, np.ndarray], prompt: Sequence[int], max_new_tokens: int, *,
           temperature: float = 0.8, top_p: float = 0.95, seed: int | None = 0,
           stop: Callable[[int], bool] | None = None) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` token ids continuing ``prompt``, each as soon as it is chosen.

    The prompt is fed token by token through the cached decode step (one compiled step for every
    position); generation stops early at ``max_seq_len`` or when ``stop(token)`` is true."""
    prompt = _checked_prompt(config, params, prompt)
    dec = _decoder(config)
    dtype = next(iter(params.values())).dtype
    kc, vc = dec.empty_cache(dtype)
    rng = np.random.default_rng(seed)
    logits = None
    for pos, tok in enumerate(prompt):
        logits, kc, vc = dec.decode(params, np.array(tok, np.int64), np.array(pos, np.int64), kc, vc)
    pos = len(prompt)
    for _ in range(max_new_tokens):
        tok = sample(logits, rng, temperature, top_p)
        yield tok
        if (stop is not None and stop(tok)) or pos >= config.max_seq_len:
            return
        logits, kc, vc = dec.decode(params, np.array(tok, np.int64), np.array(pos, np.int64), kc, vc)
        pos += 1


def generate(config: LlamaConfig, params: dict[str, np.ndarray], prompt: Sequence[int], max_new_tokens: int,
             **kwargs: Any) -> list[int]:
    """:func:`stream`, collected into a list."""
    return list(stream(config, params, prompt, max_new_tokens, **kwargs))
