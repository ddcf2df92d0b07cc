"""A Llama-3-architecture decoder-only Transformer, staged: forward, loss, training step and
key/value-cached decoding all run as generated C.

Architecture (Meta, "The Llama 3 Herd of Models", 2024): token embedding; ``n_layers`` blocks of
pre-normalised (RMSNorm) grouped-query causal self-attention with rotary position embeddings and
a SwiGLU feed-forward block, each with a residual connection; a final RMSNorm; an untied output
projection (``lm_head``). No biases anywhere.

Parameters are a flat dict of NumPy arrays named as in Hugging Face ``LlamaForCausalLM``
checkpoints, weight matrices ``[out_features, in_features]``::

    model.embed_tokens.weight                      [vocab, dim]
    model.layers.{i}.input_layernorm.weight        [dim]
    model.layers.{i}.self_attn.q_proj.weight       [n_heads * head_dim, dim]
    model.layers.{i}.self_attn.k_proj.weight       [n_kv_heads * head_dim, dim]
    model.layers.{i}.self_attn.v_proj.weight       [n_kv_heads * head_dim, dim]
    model.layers.{i}.self_attn.o_proj.weight       [dim, n_heads * head_dim]
    model.layers.{i}.post_attention_layernorm.weight [dim]
    model.layers.{i}.mlp.gate_proj.weight          [ffn_dim, dim]
    model.layers.{i}.mlp.up_proj.weight            [ffn_dim, dim]
    model.layers.{i}.mlp.down_proj.weight          [dim, ffn_dim]
    model.norm.weight                              [dim]
    lm_head.weight                                 [vocab, dim]

**RoPE convention** (Hugging Face's ``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb``): within
each head, dimension ``j < head_dim/2`` is paired with ``j + head_dim/2`` (the two halves, not
adjacent pairs), rotated by the angle ``pos * rope_theta ** (-2j / head_dim)``::

    rotate_half(x) = concat(-x[..., half:], x[..., :half])
    x' = x * cos(angles2) + rotate_half(x) * sin(angles2),  angles2 = concat(angles, angles)

Meta's original checkpoints rotate adjacent pairs ``(2j, 2j + 1)`` instead; Hugging Face's
conversion script permutes the rows of ``q_proj`` and ``k_proj`` so that the half-split rule
above gives the same model. A checkpoint in Hugging Face layout therefore loads as it is;
a Meta-layout one needs that permutation (:func:`permute_meta_to_hf`). Llama 3.1's long-context
RoPE frequency scaling is not applied (it only matters beyond 8192 positions).

Query head ``h`` uses key/value head ``h // (n_heads // n_kv_heads)`` (HF's ``repeat_kv``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from .. import nn, ops
from ..ad import checkpoint as lantern_checkpoint, value_and_grad
from ..control import scan
from ..errors import ArgumentError, ShapeError
from ..ir.types import canonical_dtype
from ..optim import AdamW, clip_by_global_norm, global_norm
from ..staging import stage
from ..tensor import Tensor
from ..tracing import with_location

Params = dict[str, np.ndarray]

__all__ = ["LlamaConfig", "PRESETS", "preset", "param_shapes", "init_params", "check_params", "stack_layers",
           "unstack_layers", "is_stacked", "block", "layer_params", "forward", "loss_fn",
           "rope_tables", "permute_meta_to_hf", "Trainer", "Decoder", "cosine_lr"]

#: Large negative score for masked attention positions: exp() of it underflows to exactly 0, but
#: (unlike -inf) it keeps ``s - max(s)`` finite, so the finite-value checks stay meaningful.
_MASKED = -1e30


@dataclass(frozen=True)
class LlamaConfig:
    """Shape hyperparameters of a Llama model (Hugging Face ``LlamaConfig`` names in brackets).

    ``dim`` [hidden_size], ``n_layers`` [num_hidden_layers], ``n_heads`` [num_attention_heads],
    ``n_kv_heads`` [num_key_value_heads], ``ffn_dim`` [intermediate_size], ``vocab_size``,
    ``max_seq_len`` [max_position_embeddings], ``rope_theta``, ``norm_eps`` [rms_norm_eps].
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_seq_len: int
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ArgumentError(f"LlamaConfig: {name} must be a positive int, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.dim % self.n_heads:
            raise ArgumentError(f"LlamaConfig: dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ArgumentError(f"LlamaConfig: n_heads={self.n_heads} is not a multiple of "
                                f"n_kv_heads={self.n_kv_heads} (grouped-query attention shares whole groups)")
        if self.head_dim % 2:
            raise ArgumentError(f"LlamaConfig: head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("rope_theta", "norm_eps"):
            v = float(getattr(self, name))
            if not (v > 0 and math.isfinite(v)):
                raise ArgumentError(f"LlamaConfig: {name} must be a positive number, got {v!r}")
            object.__setattr__(self, name, v)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def replace(self, **changes: Any) -> "LlamaConfig":
        return replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "LlamaConfig":
        """From a Hugging Face ``config.json`` (a dict) of a ``LlamaForCausalLM``."""
        if hf.get("tie_word_embeddings") or hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ArgumentError("LlamaConfig.from_hf: tied embeddings and biases are not part of this architecture")
        if hf.get("hidden_act", "silu") != "silu" or hf.get("rope_scaling"):
            raise ArgumentError(f"LlamaConfig.from_hf: hidden_act {hf.get('hidden_act')!r} / rope_scaling "
                                f"{hf.get('rope_scaling')!r} are not supported (silu, no scaling)")
        heads = hf["num_attention_heads"]
        if hf.get("head_dim", hf["hidden_size"] // heads) * heads != hf["hidden_size"]:
            raise ArgumentError("LlamaConfig.from_hf: head_dim * num_attention_heads must equal hidden_size")
        return cls(dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=heads,
                   n_kv_heads=hf.get("num_key_value_heads") or heads, ffn_dim=hf["intermediate_size"],
                   vocab_size=hf["vocab_size"], max_seq_len=hf["max_position_embeddings"],
                   rope_theta=hf.get("rope_theta", 10000.0), norm_eps=hf.get("rms_norm_eps", 1e-6))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def num_params(self) -> int:
        """The number of parameters (embedding and output projection both counted: they are untied)."""
        return sum(math.prod(s) for s in param_shapes(self).values())

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Floating-point operations per token, counting a multiply-add as 2.

        Forward: ``2 * N_matmul`` (every weight matrix but the embedding table, which is a gather)
        plus causal attention, ``4 * n_layers * n_heads * head_dim * (T + 1) / 2`` averaged over the
        positions of a length-``T`` window (scores and weighted values). Training is 3x the forward
        (the backward computes two products per forward product). Elementwise work is not counted.
        """
        t = self.max_seq_len if seq_len is None else int(seq_len)
        n_matmul = self.num_params() - self.vocab_size * self.dim - self.dim * (2 * self.n_layers + 1)
        fwd = 2.0 * n_matmul + 4.0 * self.n_layers * self.n_heads * self.head_dim * (t + 1) / 2.0
        return 3.0 * fwd if training else fwd


#: Published Llama 3 / 3.1 shapes (for parameter counts and FLOP estimates) and small trainable ones.
PRESETS: dict[str, LlamaConfig] = {
    "llama3-8b": LlamaConfig(4096, 32, 32, 8, 14336, 128256, 8192),
    "llama3-70b": LlamaConfig(8192, 80, 64, 8, 28672, 128256, 8192),
    "llama3-405b": LlamaConfig(16384, 126, 128, 8, 53248, 128256, 8192),
    # byte-level vocabulary, trainable on two cores in minutes
    "small": LlamaConfig(128, 4, 8, 2, 384, 256, 256),
    "tiny": LlamaConfig(64, 2, 4, 2, 192, 256, 128),
}


def preset(name: str) -> LlamaConfig:
    """A :data:`PRESETS` entry by name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ArgumentError(f"unknown Llama preset {name!r}; choose from {sorted(PRESETS)}") from None


def _layer(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}.weight"


def param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in Hugging Face order."""
    c, hd = config, config.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.dim)}
    for i in range(c.n_layers):
        shapes.update({
            _layer(i, "input_layernorm"): (c.dim,),
            _layer(i, "self_attn.q_proj"): (c.n_heads * hd, c.dim),
            _layer(i, "self_attn.k_proj"): (c.n_kv_heads * hd, c.dim),
            _layer(i, "self_attn.v_proj"): (c.n_kv_heads * hd, c.dim),
            _layer(i, "self_attn.o_proj"): (c.dim, c.n_heads * hd),
            _layer(i, "post_attention_layernorm"): (c.dim,),
            _layer(i, "mlp.gate_proj"): (c.ffn_dim, c.dim),
            _layer(i, "mlp.up_proj"): (c.ffn_dim, c.dim),
            _layer(i, "mlp.down_proj"): (c.dim, c.ffn_dim),
        })
    shapes["model.norm.weight"] = (c.dim,)
    shapes["lm_head.weight"] = (c.vocab_size, c.dim)
    return shapes


def init_params(config: LlamaConfig, seed: int | np.random.Generator | None = 0, dtype: Any = "float32",
                std: float = 0.02) -> Params:
    """Fresh parameters: weight matrices N(0, std) (HF's ``initializer_range``), the output
    projections of each residual branch (``o_proj``, ``down_proj``) scaled by
    ``1/sqrt(2 * n_layers)`` (GPT-2's residual scaling, which keeps deep stacks stable), norms 1."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    dt = canonical_dtype(dtype)
    out: Params = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 1:
            out[name] = np.ones(shape, dt)
            continue
        s = std / math.sqrt(2 * config.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
        out[name] = (s * rng.standard_normal(shape)).astype(dt)
    return out


def _stacked(name: str) -> str:
    return f"model.layers.{name}.weight"


def stack_layers(params: Params) -> Params:
    """The parameters with each block weight stacked over the layers: ``model.layers.{name}.weight
    [n_layers, ...]`` for every ``model.layers.{i}.{name}.weight`` (JAX's layout for scanning a
    model). :func:`forward` with ``layers="scan"`` reads them without copying; a :class:`Trainer`
    trains them as they are (its compiled step then does not grow with the depth at all). Parameters
    stacked already are returned as they are."""
    if is_stacked(params):
        return dict(params)
    n = sum(1 for k in params if k.endswith(".input_layernorm.weight") and k.startswith("model.layers."))
    out = {k: v for k, v in params.items() if not k.startswith("model.layers.")}
    out.update({_stacked(name): np.stack([np.asarray(params[_layer(i, name)]) for i in range(n)])
                for name in LAYER_PARAMS})
    return out


def unstack_layers(params: Params) -> Params:
    """The inverse of :func:`stack_layers`: Hugging Face's per-layer names again (per-layer parameters are
    returned as they are)."""
    if not is_stacked(params):
        return dict(params)
    out = {k: v for k, v in params.items() if not k.startswith("model.layers.")}
    for name in LAYER_PARAMS:
        for i, w in enumerate(np.asarray(params[_stacked(name)])):
            out[_layer(i, name)] = w
    return out


def is_stacked(params: dict[str, Any]) -> bool:
    """Whether ``params`` hold the block weights stacked (:func:`stack_layers`)."""
    return _stacked("input_layernorm") in params


def check_params(config: LlamaConfig, params: dict[str, Any]) -> None:
    """Raise ``ArgumentError`` naming every missing, unexpected or mis-shaped parameter (per-layer or
    stacked names)."""
    expected = param_shapes(config)
    if is_stacked(params):
        expected = {k: s for k, s in expected.items() if not k.startswith("model.layers.")}
        expected.update({_stacked(name): (config.n_layers, *s) for name, s in
                         ((n, param_shapes(config.replace(n_layers=1))[_layer(0, n)]) for n in LAYER_PARAMS)})
    problems = [f"missing {k} {list(s)}" for k, s in expected.items() if k not in params]
    problems += [f"unexpected {k}" for k in params if k not in expected]
    problems += [f"{k} has shape {list(np.shape(params[k]))}, expected {list(s)}"
                 for k, s in expected.items() if k in params and tuple(np.shape(params[k])) != s]
    dtypes = {np.asarray(v).dtype.name for v in params.values()}
    if len(dtypes) > 1:
        problems.append(f"mixed dtypes {sorted(dtypes)}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ArgumentError(f"Llama parameters do not fit {config}: {shown}")


def permute_meta_to_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """A Meta-layout ``wq``/``wk`` ``[n_heads * head_dim, dim]`` (RoPE on adjacent pairs) in the
    Hugging Face layout (RoPE on halves): the permutation of HF's ``convert_llama_weights_to_hf.py``."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


# ------------------------------------------------------------------ the model (staged ops)

def rope_tables(config: LlamaConfig, dtype: Any = "float32") -> tuple[np.ndarray, np.ndarray]:
    """``cos`` and ``sin`` of the rotation angles, ``[max_seq_len, head_dim]`` each (halves repeated),
    computed in float64 and rounded once to ``dtype``."""
    hd = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.outer(np.arange(config.max_seq_len, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rms_norm(x: Tensor, weight: Any, eps: float) -> Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis."""
    return x * ops.rsqrt(ops.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + _rotate_half(x) * sin


def _batched_matmul(a: Tensor, b: Tensor, trans_b: bool = False) -> Tensor:
    """``a @ b`` (or ``a @ b^T``) for 3-D operands, the transpose read in place by the product."""
    return ops._emit(ops._frame_of(a, b), "matmul", [a, b], trans_b=trans_b)


def _swiglu(layer: dict[str, Any], h: Tensor) -> Tensor:
    gate = nn.linear(h, layer["mlp.gate_proj"])
    up = nn.linear(h, layer["mlp.up_proj"])
    return nn.linear(ops.silu(gate) * up, layer["mlp.down_proj"])


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Grouped-query attention on ``q [G, g*T, hd]`` against ``k, v [G, S, hd]`` (``G`` key/value
    heads, each shared by ``g`` query heads) with a boolean ``mask`` broadcasting to ``[G, g*T, S]``."""
    scores = _batched_matmul(q, k, trans_b=True) * scale
    scores = ops.where(mask, scores, _MASKED)
    return _batched_matmul(ops.softmax(scores, axis=-1), v)


#: The parameters of one block, by their names within ``model.layers.{i}``.
LAYER_PARAMS = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def layer_params(params: dict[str, Any], i: int) -> dict[str, Any]:
    """Block ``i``'s parameters from the model's (per-layer or stacked), keyed by :data:`LAYER_PARAMS`."""
    if is_stacked(params):
        return {name: params[_stacked(name)][i] for name in LAYER_PARAMS}
    return {name: params[_layer(i, name)] for name in LAYER_PARAMS}


def block(config: LlamaConfig, layer: dict[str, Any], x: Tensor, cos: Tensor, sin: Tensor, causal: Tensor) -> Tensor:
    """One decoder block on ``x [B, T, D]``: attention and SwiGLU feed-forward, each pre-normalised and
    residual. ``layer`` holds the block's parameters (:func:`layer_params`); ``cos, sin [T, 1, hd]`` are
    the rotary tables of the positions, ``causal`` a boolean mask broadcasting to ``[1, 1, T, T]``."""
    c, hd = config, config.head_dim
    b, t = x.shape[0], x.shape[1]
    g = c.n_heads // c.n_kv_heads
    h = rms_norm(x, layer["input_layernorm"], c.norm_eps)
    q = ops.reshape(nn.linear(h, layer["self_attn.q_proj"]), (b, t, c.n_kv_heads, g, hd))
    k = ops.reshape(nn.linear(h, layer["self_attn.k_proj"]), (b, t, c.n_kv_heads, hd))
    v = ops.reshape(nn.linear(h, layer["self_attn.v_proj"]), (b, t, c.n_kv_heads, hd))
    q = _apply_rope(q, ops.expand_dims(cos, 1), ops.expand_dims(sin, 1))
    k = _apply_rope(k, cos, sin)
    # heads first: q [B*KV, g*T, hd] (the g query heads of a group stacked), k, v [B*KV, T, hd]
    q = ops.reshape(ops.transpose(q, (0, 2, 3, 1, 4)), (b * c.n_kv_heads, g * t, hd))
    k = ops.reshape(ops.transpose(k, (0, 2, 1, 3)), (b * c.n_kv_heads, t, hd))
    v = ops.reshape(ops.transpose(v, (0, 2, 1, 3)), (b * c.n_kv_heads, t, hd))
    mask = ops.reshape(ops.broadcast_to(causal, (1, g, t, t)), (1, g * t, t))
    o = _attention(q, k, v, mask, 1.0 / math.sqrt(hd))  # [B*KV, g*T, hd]
    o = ops.reshape(ops.transpose(ops.reshape(o, (b, c.n_kv_heads, g, t, hd)), (0, 3, 1, 2, 4)),
                    (b, t, c.n_heads * hd))
    x = x + nn.linear(o, layer["self_attn.o_proj"])
    x = x + _swiglu(layer, rms_norm(x, layer["post_attention_layernorm"], c.norm_eps))
    return x


def _layers_mode(layers: str) -> str:
    if layers not in ("call", "scan"):
        raise ArgumentError(f"llama: layers must be 'call' or 'scan', got {layers!r}")
    return layers


def _check_tokens(config: LlamaConfig, tokens: Tensor, what: str) -> None:
    if tokens.type.dtype not in ("int32", "int64"):
        raise with_location(ArgumentError, f"{what}: tokens must be integers, got {tokens.type}")


def forward(config: LlamaConfig, params: dict[str, Any], tokens: Any, layers: str = "call",
            checkpoint: bool = False) -> Tensor:
    """Logits ``[B, T, vocab]`` for token ids ``[B, T]`` (or ``[T]`` -> ``[T, vocab]``), positions 0..T-1.

    Written with lantern ops: call it inside a staged function (see :func:`Trainer`, :class:`Decoder`).
    ``layers`` says how the blocks are compiled; both compile one block whatever the depth:

    * ``"call"`` (default): a Python loop calling :func:`staged_block` per layer. The block is traced
      once and becomes one C function (its gradient another) that each layer calls; the weights stay
      separate arrays.
    * ``"scan"``: :func:`lantern.scan` over the weights stacked ``[n_layers, ...]`` (JAX's idiom). With
      parameters in per-layer form the stacking copies the block weights once per call (and its
      gradient splits them again); parameters stored stacked (:func:`stack_layers`) are read as they
      are, so the whole training step, optimizer included, is the same code for any depth. The
      backward part recomputes each block's cheap elementwise work from stored products (the counted
      loops' reverse mode), where ``"call"`` keeps every intermediate.

    ``checkpoint``: each block is :func:`lantern.checkpoint`-ed: its gradient keeps only the block's input
    and runs the block again in the backward part (less memory, about a third more compute).
    """
    layers = _layers_mode(layers)
    tokens = ops.asarray(tokens)
    _check_tokens(config, tokens, "llama.forward")
    if tokens.ndim == 1:
        return forward(config, params, ops.expand_dims(tokens, 0), layers, checkpoint)[0]
    if tokens.ndim != 2:
        raise with_location(ShapeError, f"llama.forward: tokens must be [batch, seq], got shape {tokens.shape}")
    c = config
    b, t = tokens.shape
    if t > c.max_seq_len:
        raise with_location(ShapeError, f"llama.forward: sequence of {t} tokens is longer than max_seq_len="
                            f"{c.max_seq_len}")
    p = params
    x = ops.take(p["model.embed_tokens.weight"], tokens, axis=0)  # [B, T, D]
    dtype = x.dtype
    cos_np, sin_np = rope_tables(c, dtype)
    if isinstance(t, int):
        cos = ops.constant(cos_np[:t, None, :])  # [T, 1, hd]: broadcast over heads
        sin = ops.constant(sin_np[:t, None, :])
        causal = ops.constant(np.tril(np.ones((t, t), bool))[None, None])  # [1, 1, T, S]
    else:  # a run-time sequence length: the first t rows of the tables, the mask from positions
        cos = ops.expand_dims(ops.constant(cos_np)[:t], 1)
        sin = ops.expand_dims(ops.constant(sin_np)[:t], 1)
        pos = ops.arange(t)
        causal = ops.expand_dims(ops.greater_equal(ops.expand_dims(pos, 1), pos), (0, 1))
    if is_stacked(p):
        if layers != "scan":
            raise with_location(ArgumentError, "llama.forward: stacked block weights (stack_layers) need "
                                "layers='scan'")
        stacked = {name: p[_stacked(name)] for name in LAYER_PARAMS}
    elif layers == "scan":  # stacked here: a copy of the block weights per call
        stacked = {name: ops.stack([p[_layer(i, name)] for i in range(c.n_layers)]) for name in LAYER_PARAMS}
    if layers == "scan":  # one loop over the layers
        def scanned(layer: dict[str, Any], x: Tensor) -> Tensor:
            return block(c, layer, x, cos, sin, causal)
        step = lantern_checkpoint(scanned) if checkpoint else scanned
        x, _ = scan(lambda x, layer: (step(layer, x), None), x, stacked)
    else:
        staged = lantern_checkpoint(staged_block(c)) if checkpoint else staged_block(c)
        for i in range(c.n_layers):
            x = staged(layer_params(p, i), x, cos, sin, causal)
    x = rms_norm(x, p["model.norm.weight"], c.norm_eps)
    return nn.linear(x, p["lm_head.weight"])


def loss_fn(config: LlamaConfig, params: dict[str, Any], tokens: Any, layers: str = "call",
            checkpoint: bool = False) -> Tensor:
    """Mean next-token cross entropy of ``tokens [B, T+1]``: predict ``tokens[:, 1:]`` from ``tokens[:, :-1]``
    (``layers``, ``checkpoint``: see :func:`forward`)."""
    tokens = ops.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise with_location(ShapeError, f"llama.loss_fn: tokens must be [batch, seq + 1] with seq >= 1, "
                            f"got shape {tokens.shape}")
    logits = forward(config, params, tokens[:, :-1], layers, checkpoint)
    return nn.cross_entropy(logits, tokens[:, 1:])


# ------------------------------------------------------------------ training

def cosine_lr(step: int, *, lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from ``lr / warmup`` to ``lr`` over ``warmup`` steps, then a cosine decay to
    ``min_lr`` at step ``total`` (``step`` counts from 0; later steps stay at ``min_lr``)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))


class Trainer:
    """A staged training step: forward, backward, global-norm clipping and AdamW, one native call.

    ``step(params, opt_state, tokens [B, T+1], lr) -> (params, opt_state, loss, grad_norm)`` with
    ``lr`` a 0-d float array (``np.array(lr, np.float32)``; a NumPy scalar works but takes the slower
    general call path), so a learning-rate schedule needs no recompilation. AdamW is
    PyTorch's (``lantern.optim.AdamW``), decoupled weight decay applied to the weight matrices
    and the embedding, not to the norm gains. The update is linear in the learning rate, so it
    is computed by an ``lr = 1`` optimizer and scaled by the staged ``lr``::

        p_new = p - lr * (adam_direction + weight_decay * p)

    ``layers`` (``"call"`` or ``"scan"``): how the blocks are compiled, and ``checkpoint``: whether the
    backward part runs each block again rather than keep its intermediates; see :func:`forward`.
    """

    def __init__(self, config: LlamaConfig, *, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, clip: float | None = 1.0, layers: str = "call", checkpoint: bool = False):
        self.config = config
        self.layers = _layers_mode(layers)
        self.checkpoint = bool(checkpoint)
        self.weight_decay = float(weight_decay)
        self.clip = None if clip is None else float(clip)
        self.opt = AdamW(lr=1.0, betas=betas, eps=eps, weight_decay=0.0)
        self.step = stage(self._step, name="llama_train_step")

    def init(self, params: Params) -> dict[str, Any]:
        """The optimizer state for ``params``."""
        check_params(self.config, params)
        return self.opt.init(params)

    def _step(self, params: dict[str, Any], opt_state: dict[str, Any], tokens: Any, lr: Any):
        loss, grads = value_and_grad(lambda p: loss_fn(self.config, p, tokens, self.layers, self.checkpoint))(params)
        norm = global_norm(grads)
        if self.clip is not None:
            grads = clip_by_global_norm(grads, self.clip)
        unit, opt_state = self.opt.update(grads, opt_state, params)  # p - adam_direction (lr = 1)
        lr = ops.astype(lr, next(iter(params.values())).dtype)
        new = {}
        for k, p in params.items():
            direction = p - unit[k]
            if self.weight_decay and "norm" not in k:  # (matrices and embeddings; norm gains are not decayed)
                direction = direction + self.weight_decay * p
            new[k] = p - lr * direction
        return new, opt_state, loss, norm


# ------------------------------------------------------------------ decoding with a key/value cache

class Decoder:
    """Token-by-token decoding with a key/value cache, batch 1.

    ``decode(params, token, pos, k_cache, v_cache) -> (logits [vocab], k_cache, v_cache)`` is staged:
    ``token`` and ``pos`` are int64 0-d arrays, the caches ``[n_layers, max_seq_len, n_kv_heads,
    head_dim]`` go in and come back with row ``pos`` of every layer written; attention reads rows
    ``0..pos`` (later rows are masked). One compiled step serves every position and prompt length.
    """

    def __init__(self, config: LlamaConfig):
        self.config = config
        self.decode = stage(self._decode, name="llama_decode_step")
        #: ``greedy(params, prompt, k_cache, v_cache, max_new, stop_token) -> (tokens [max_new], count)``: the
        #: whole greedy continuation in one native call (see :meth:`_greedy`); one compile per ``max_new``
        self.greedy = stage(self._greedy, name="llama_greedy", dynamic={"prompt": 0})

    def empty_cache(self, dtype: Any = "float32") -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        shape = (c.n_layers, c.max_seq_len, c.n_kv_heads, c.head_dim)
        return np.zeros(shape, dtype), np.zeros(shape, dtype)

    def _greedy(self, params: dict[str, Any], prompt: Any, k_cache: Any, v_cache: Any, max_new: int,
                stop_token: int):
        """The prompt through the cache, then up to ``max_new`` tokens, each the argmax of the last logits,
        stopping after ``stop_token`` or at ``max_seq_len``: as :func:`lantern.models.sampling.stream`
        with ``temperature=0``, written in plain Python. The loops and the ``if``/``break`` decide on staged
        values, so they are staged (one loop each, compiled once for every prompt length: the prompt's
        length is a run-time size)."""
        out = ops.full((max_new,), -1, "int64")
        logits, k_cache, v_cache = self._decode(params, prompt[0], 0, k_cache, v_cache)
        for pos in range(1, len(prompt)):
            logits, k_cache, v_cache = self._decode(params, prompt[pos], pos, k_cache, v_cache)
        pos = ops.asarray(len(prompt))
        count = ops.zeros((), "int64")
        while count < max_new:
            token = ops.argmax(logits)
            out = ops.where(ops.equal(ops.arange(max_new), count), token, out)
            count = count + 1
            if ops.logical_or(ops.equal(token, stop_token), pos >= self.config.max_seq_len):
                break
            logits, k_cache, v_cache = self._decode(params, token, pos, k_cache, v_cache)
            pos = pos + 1
        return out, count

    def _decode(self, params: dict[str, Any], token: Any, pos: Any, k_cache: Any, v_cache: Any):
        c, hd, p = self.config, self.config.head_dim, params
        token, pos = ops.asarray(token), ops.asarray(pos)
        k_cache, v_cache = ops.asarray(k_cache), ops.asarray(v_cache)
        _check_tokens(c, token, "llama decode")
        if token.ndim or pos.ndim:
            raise with_location(ShapeError, f"llama decode: token and pos must be 0-d, got {token.shape}, {pos.shape}")
        shape = (c.n_layers, c.max_seq_len, c.n_kv_heads, hd)
        if k_cache.shape != shape or v_cache.shape != shape:
            raise with_location(ShapeError, f"llama decode: caches must be {list(shape)}, got "
                                f"{list(k_cache.shape)} and {list(v_cache.shape)}")
        g = c.n_heads // c.n_kv_heads
        x = p["model.embed_tokens.weight"][token]  # [D]
        cos_np, sin_np = rope_tables(c, x.dtype)
        cos, sin = ops.constant(cos_np)[pos], ops.constant(sin_np)[pos]  # [hd]
        rows = ops.arange(c.max_seq_len)
        here = ops.reshape(ops.equal(rows, pos), (c.max_seq_len, 1, 1))  # the cache row to write
        visible = ops.reshape(ops.less_equal(rows, pos), (1, 1, c.max_seq_len))
        new_k, new_v = [], []
        for i in range(c.n_layers):
            layer = layer_params(p, i)
            h = rms_norm(x, layer["input_layernorm"], c.norm_eps)
            q = _apply_rope(ops.reshape(nn.linear(h, layer["self_attn.q_proj"]), (c.n_kv_heads, g, hd)),
                            cos, sin)
            k = _apply_rope(ops.reshape(nn.linear(h, layer["self_attn.k_proj"]), (c.n_kv_heads, hd)), cos, sin)
            v = ops.reshape(nn.linear(h, layer["self_attn.v_proj"]), (c.n_kv_heads, hd))
            kc = ops.where(here, ops.expand_dims(k, 0), k_cache[i])  # [S, KV, hd] with row pos written
            vc = ops.where(here, ops.expand_dims(v, 0), v_cache[i])
            new_k.append(kc), new_v.append(vc)
            o = _attention(q, ops.transpose(kc, (1, 0, 2)), ops.transpose(vc, (1, 0, 2)), visible,
                           1.0 / math.sqrt(hd))  # [KV, g, hd]
            x = x + nn.linear(ops.reshape(o, (c.n_heads * hd,)), layer["self_attn.o_proj"])
            x = x + _swiglu(layer, rms_norm(x, layer["post_attention_layernorm"], c.norm_eps))
        x = rms_norm(x, p["model.norm.weight"], c.norm_eps)
        return nn.linear(x, p["lm_head.weight"]), ops.stack(new_k), ops.stack(new_v)


@functools.lru_cache(maxsize=None)
def staged_block(config: LlamaConfig) -> Callable[..., Any]:
    """:func:`block` staged for ``config``: ``(layer, x, cos, sin, causal) -> x``. :func:`forward` calls it
    once per layer; every call has the same signature, so it is traced once and, being large, compiled
    as one C function (and one gradient function) that each layer calls: compile time does not grow
    with the number of layers."""
    return stage(lambda layer, x, cos, sin, causal: block(config, layer, x, cos, sin, causal), name="llama_block")


@functools.lru_cache(maxsize=None)
def staged_forward(config: LlamaConfig) -> Callable[..., Any]:
    """``forward`` staged for ``config`` (one per config, shared)."""
    return stage(lambda params, tokens: forward(config, params, tokens), name="llama_forward")


@functools.lru_cache(maxsize=None)
def staged_loss(config: LlamaConfig) -> Callable[..., Any]:
    """``loss_fn`` staged for ``config``."""
    return stage(lambda params, tokens: loss_fn(config, params, tokens), name="llama_loss")
