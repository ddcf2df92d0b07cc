"""Training a small byte-level Llama on the corpus lantern ships, checkpoints, and the commands
``python -m lantern llama-train`` and ``python -m lantern llama-generate``.

Tokens are the UTF-8 bytes of :func:`lantern.data.text_corpus` (vocabulary 256, no tokenizer
to ship). The first 95% of the bytes are for training, the rest for a held-out loss.

A checkpoint is one safetensors file with the parameters under their Hugging Face names and the
config (JSON) in the metadata under ``"lantern.llama_config"``; :func:`load_checkpoint` also takes
a file without that entry when the config is given.
"""
from __future__ import annotations

import codecs
import json
import os
import sys
import time
from typing import Any, Callable, TextIO

import numpy as np

from .. import safetensors
from ..data import text_corpus
from ..errors import ArgumentError
from . import llama
from .llama import LlamaConfig
from .sampling import stream

__all__ = ["corpus_tokens", "window_batches", "train", "save_checkpoint", "load_checkpoint", "held_out_loss"]

CONFIG_KEY = "lantern.llama_config"


def corpus_tokens(split: str = "train") -> np.ndarray:
    """The corpus as int64 byte values: ``"train"`` (the first 95%) or ``"val"`` (the rest)."""
    data = np.frombuffer(text_corpus().encode("utf-8"), np.uint8).astype(np.int64)
    cut = int(0.95 * len(data))
    if split not in ("train", "val"):
        raise ArgumentError(f"corpus_tokens: split must be 'train' or 'val', got {split!r}")
    return data[:cut] if split == "train" else data[cut:]


def window_batches(data: np.ndarray, batch: int, seq: int, seed: int = 0) -> Callable[[int], np.ndarray]:
    """A function ``i -> tokens [batch, seq + 1]`` of windows at random offsets (deterministic in
    ``seed`` and ``i``): the model predicts ``[:, 1:]`` from ``[:, :-1]``."""
    if len(data) < seq + 2:
        raise ArgumentError(f"window_batches: {len(data)} tokens cannot fill windows of {seq + 1}")
    offsets = np.arange(seq + 1)

    def get(i: int) -> np.ndarray:
        starts = np.random.default_rng((seed, i)).integers(0, len(data) - seq - 1, batch)
        return data[starts[:, None] + offsets]

    return get


def held_out_loss(config: LlamaConfig, params: dict[str, np.ndarray], batch: int, seq: int,
                  batches: int = 4) -> float:
    """The mean loss over a few fixed windows of the held-out split."""
    get = window_batches(corpus_tokens("val"), batch, seq, seed=12345)
    loss = llama.staged_loss(config)
    return float(np.mean([loss(params, get(i)) for i in range(batches)]))


def save_checkpoint(path: str, config: LlamaConfig, params: dict[str, np.ndarray], **info: Any) -> None:
    """Parameters (HF names) and ``config`` (plus ``info``, JSON) in one safetensors file."""
    llama.check_params(config, params)
    meta = {CONFIG_KEY: json.dumps(config.to_dict())}
    meta.update({f"lantern.{k}": json.dumps(v) for k, v in info.items()})
    safetensors.save_file(params, path, meta)


def load_checkpoint(path: str, config: LlamaConfig | None = None,
                    dtype: Any = None) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """``(config, params)`` from a safetensors file in Hugging Face Llama layout (or a directory
    holding ``model.safetensors``, as ``save_pretrained`` writes). The config comes from the metadata
    lantern writes, else from ``config``, else from a Hugging Face ``config.json`` beside the file;
    parameters are checked against it and converted to ``dtype`` (default: as stored, with
    float16/bfloat16 widened to float32)."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    params, meta = safetensors.load_file(path, with_metadata=True)
    hf_json = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if CONFIG_KEY not in meta and config is None and os.path.exists(hf_json):
        with open(hf_json) as f:
            config = LlamaConfig.from_hf(json.load(f))
    if CONFIG_KEY in meta:
        try:
            stored = LlamaConfig(**json.loads(meta[CONFIG_KEY]))
        except (TypeError, ValueError) as exc:
            raise safetensors.SafetensorsError(f"{path}: bad {CONFIG_KEY} metadata: {exc}") from None
        config = config or stored
    if config is None:
        raise ArgumentError(f"load_checkpoint: {path} carries no {CONFIG_KEY} metadata; pass config=")
    params = {k: v for k, v in params.items() if not k.endswith("rotary_emb.inv_freq")}  # HF buffers
    if dtype is None:
        dtype = np.float32 if any(v.dtype == np.float16 for v in params.values()) else None
    if dtype is not None:
        params = {k: v.astype(dtype) for k, v in params.items()}
    llama.check_params(config, params)
    return config, params


def train(config: LlamaConfig, *, steps: int, batch: int = 16, seq: int = 128, lr: float = 3e-3,
          min_lr: float | None = None, warmup: int | None = None, weight_decay: float = 0.1,
          clip: float = 1.0, seed: int = 0, plot: str | None = None, checkpoint: str | None = None,
          log_every: int | None = None, file: TextIO | None = None,
          recompute_blocks: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Train ``config`` from scratch on the corpus with :class:`~lantern.models.llama.Trainer`
    (AdamW, global-norm clipping, cosine schedule with linear warm-up) and :func:`lantern.train.fit`
    (progress line, optional PNG loss curve); save a checkpoint (the file ``checkpoint``). Returns
    ``(params, losses)``. ``recompute_blocks``: ``Trainer(checkpoint=True)``, each block run again in the
    backward part (less memory, more time)."""
    from ..train import fit, smooth

    if seq > config.max_seq_len:
        raise ArgumentError(f"train: seq={seq} is longer than max_seq_len={config.max_seq_len}")
    out = sys.stdout if file is None else file
    warmup = max(1, steps // 20) if warmup is None else warmup
    min_lr = lr / 10 if min_lr is None else min_lr
    get = window_batches(corpus_tokens("train"), batch, seq, seed)
    params = llama.init_params(config, seed)
    trainer = llama.Trainer(config, weight_decay=weight_decay, clip=clip, checkpoint=recompute_blocks)
    tokens_per_step = batch * seq
    out.write(f"Llama {config.num_params() / 1e6:.2f}M parameters ({config}); {steps} steps of "
              f"{batch} x {seq} tokens; ~{config.flops_per_token(seq) * tokens_per_step / 1e9:.2f} GFLOP per step\n")
    out.flush()

    def batches(i: int) -> tuple[np.ndarray, np.ndarray]:
        # a 0-d array, not np.float32: NumPy scalars take the staged call's slower general path
        return get(i), np.array(llama.cosine_lr(i, lr=lr, warmup=warmup, total=steps, min_lr=min_lr), np.float32)

    result = fit(trainer.step, params, trainer.init(params), batches, steps=steps, plot=plot, log_every=log_every,
                 file=out)
    params, losses = result.params, result.losses
    if len(losses):
        out.write(f"last step's loss {losses[-1]:.3f}, smoothed {smooth(losses)[-1]:.3f} (chance "
                  f"{np.log(256):.3f}); {tokens_per_step} tokens per step\n")
    val: float | None = None
    if len(losses):
        try:
            val = held_out_loss(config, params, batch, seq)
            out.write(f"held-out loss {val:.3f} ({val / np.log(2):.2f} bits per byte)\n")
        except KeyboardInterrupt:  # a second Ctrl-C: the checkpoint is still written, without this figure
            out.write("held-out loss skipped (interrupted)\n")
    if checkpoint and not len(losses):  # never write parameters that were not trained over a checkpoint
        out.write(f"no step finished: {checkpoint} not written\n")
    elif checkpoint:
        save_checkpoint(checkpoint, config, params, steps=len(losses), final_loss=float(losses[-1]) if len(losses)
                        else None, held_out_loss=val, date=time.strftime("%Y-%m-%d %H:%M"))
        out.write(f"checkpoint written to {checkpoint}\n")
    out.flush()
    return params, losses


def generate_text(path: str, prompt: str, max_new_tokens: int = 200, *, temperature: float = 0.8,
                  top_p: float = 0.95, seed: int | None = 0, file: TextIO | None = None) -> str:
    """Continue ``prompt`` (UTF-8 bytes as tokens) with the checkpoint at ``path``, writing the prompt
    and then every completed character to ``file`` (stdout) as soon as it is sampled."""
    out = sys.stdout if file is None else file
    config, params = load_checkpoint(path)
    if config.vocab_size != 256:
        raise ArgumentError(f"generate_text: {path} has a vocabulary of {config.vocab_size}, not bytes (256)")
    prompt_ids = list(prompt.encode("utf-8"))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # bytes may split a character
    out.write(prompt)
    out.flush()
    pieces = []
    room = config.max_seq_len - len(prompt_ids) + 1  # the positions left (the last token needs no decode step)
    if max_new_tokens > room:
        print(f"lantern: generating {max(room, 0)} of the {max_new_tokens} tokens asked for: {path} was trained "
              f"with max_seq_len={config.max_seq_len} positions and the prompt takes {len(prompt_ids)}",
              file=sys.stderr, flush=True)
    for tok in stream(config, params, prompt_ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed):
        text = decoder.decode(bytes([tok]))
        if text:
            out.write(text)
            out.flush()
            pieces.append(text)
    pieces.append(decoder.decode(b"", final=True))
    out.write(pieces[-1] + "\n")
    out.flush()
    return "".join(pieces)
