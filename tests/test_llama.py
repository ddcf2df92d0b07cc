"""The Llama model (lantern.models.llama) is exact: logits against a NumPy float64 reference written
here independently (and PyTorch where installed), gradients against finite differences (and torch
autograd), key/value-cached decoding against the full sequence, and a short training run learns.

One tiny config (2 layers, 4 query heads sharing 2 key/value heads, head_dim 4) keeps the
compiled programs few and small.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lantern
from lantern.models import llama
from lantern.models.llama import LlamaConfig
from lantern.models.sampling import generate, sample

CFG = LlamaConfig(dim=16, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=24, vocab_size=11, max_seq_len=16,
                  rope_theta=10000.0, norm_eps=1e-5)
T = 12  # positions beyond a first block of 8 (and past the first half of max_seq_len)


def params64(cfg=CFG, seed=0):
    # std 0.3: large enough that attention is far from uniform and every term matters
    p = llama.init_params(cfg, seed, "float64", std=0.3)
    rng = np.random.default_rng(seed + 1)
    for k, v in p.items():
        if v.ndim == 1:  # norm gains other than 1, so their gradients are tested too
            p[k] = 1.0 + 0.2 * rng.standard_normal(v.shape)
    return p


def tokens(shape, seed=2, vocab=CFG.vocab_size):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int64)


# ------------------------------------------------------------------ NumPy reference (float64)

def ref_forward(cfg, p, toks):
    """Loops over heads, explicit repeat of key/value heads, HF's rotate_half RoPE."""
    b, t = toks.shape
    hd, g = cfg.dim // cfg.n_heads, cfg.n_heads // cfg.n_kv_heads

    def norm(x, w):
        return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + cfg.norm_eps) * w

    inv = cfg.rope_theta ** -(np.arange(hd // 2) * 2.0 / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)  # [T, hd/2]

    def rope(x):  # x [B, T, hd]
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = p["model.embed_tokens.weight"][toks]
    for i in range(cfg.n_layers):
        w = lambda n: p[f"model.layers.{i}.{n}.weight"]  # noqa: E731
        h = norm(x, w("input_layernorm"))
        q, k, v = h @ w("self_attn.q_proj").T, h @ w("self_attn.k_proj").T, h @ w("self_attn.v_proj").T
        heads = []
        for head in range(cfg.n_heads):
            kv = head // g
            qh = rope(q[..., head * hd:(head + 1) * hd])
            kh = rope(k[..., kv * hd:(kv + 1) * hd])
            vh = v[..., kv * hd:(kv + 1) * hd]
            s = qh @ kh.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            heads.append((a / a.sum(-1, keepdims=True)) @ vh)
        x = x + np.concatenate(heads, -1) @ w("self_attn.o_proj").T
        h = norm(x, w("post_attention_layernorm"))
        gate = h @ w("mlp.gate_proj").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w("mlp.up_proj").T)) @ w("mlp.down_proj").T
    return norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T


def ref_loss(cfg, p, toks):
    logits = ref_forward(cfg, p, toks[:, :-1])
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.mean(np.take_along_axis(logp, toks[:, 1:, None], -1))


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


# ------------------------------------------------------------------ configs and parameters

def test_published_shapes():
    assert llama.preset("llama3-8b").num_params() == 8_030_261_248  # "8B": 8.03e9
    assert 70.5e9 < llama.preset("llama3-70b").num_params() < 70.6e9
    assert 405e9 < llama.preset("llama3-405b").num_params() < 406e9
    c = llama.preset("llama3-8b")
    assert (c.head_dim, c.n_heads // c.n_kv_heads, c.rope_theta) == (128, 4, 500000.0)
    # training FLOPs per token: 3 x (2 x the weights used in products + causal attention), 8B at 8192 positions
    n_matmul = 8_030_261_248 - 128256 * 4096 - 4096 * 65  # not the embedding table (a gather) nor the norms
    assert c.flops_per_token(8192) == 3 * (2 * n_matmul + 4 * 32 * 4096 * 8193 / 2)
    assert 6 * 7.5e9 < c.flops_per_token(8192) < 7 * 7.5e9 and c.flops_per_token(8192, training=False) * 3 == \
        c.flops_per_token(8192)
    with pytest.raises(lantern.ArgumentError, match="unknown Llama preset"):
        llama.preset("llama2")


@pytest.mark.parametrize("kwargs,msg", [(dict(dim=15), "multiple of n_heads"), (dict(n_kv_heads=3), "n_kv_heads"),
                                        (dict(dim=12), "head_dim=3 must be even"), (dict(vocab_size=0), "vocab_size"),
                                        (dict(norm_eps=-1.0), "norm_eps")])
def test_bad_configs(kwargs, msg):
    with pytest.raises(lantern.ArgumentError, match=msg):
        CFG.replace(**kwargs)


def test_param_names_and_shapes():
    p = llama.init_params(CFG, 0)
    assert len(p) == 2 + 1 + 9 * CFG.n_layers
    assert p["model.layers.1.self_attn.k_proj.weight"].shape == (8, 16)  # [n_kv_heads * head_dim, dim]
    assert p["model.layers.0.mlp.down_proj.weight"].shape == (16, 24)    # [out, in]
    assert p["lm_head.weight"].shape == (11, 16) and p["model.norm.weight"].dtype == np.float32
    assert sum(v.size for v in p.values()) == CFG.num_params()
    np.testing.assert_array_equal(llama.init_params(CFG, 0)["lm_head.weight"], p["lm_head.weight"])
    llama.check_params(CFG, p)
    bad = dict(p)
    del bad["model.norm.weight"]
    bad["model.layers.0.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(lantern.ArgumentError, match=r"missing model\.norm\.weight.*up_proj.weight has shape \[3, 3\]"):
        llama.check_params(CFG, bad)


def test_meta_permutation_turns_adjacent_pairs_into_halves():
    # Meta's RoPE rotates pairs (2j, 2j+1); HF's rotates (j, j + hd/2): the permuted weights agree.
    hd, n, rng = 8, 2, np.random.default_rng(0)
    w = rng.standard_normal((n * hd, 5))
    x = rng.standard_normal(5)
    ang = 0.7 * np.arange(hd // 2)
    meta = (w @ x).reshape(n, hd // 2, 2)
    meta_rot = np.stack([meta[..., 0] * np.cos(ang) - meta[..., 1] * np.sin(ang),
                         meta[..., 1] * np.cos(ang) + meta[..., 0] * np.sin(ang)], -1)
    hf = (llama.permute_meta_to_hf(w, n) @ x).reshape(n, hd)
    hf_rot = np.concatenate([hf[:, :hd // 2] * np.cos(ang) - hf[:, hd // 2:] * np.sin(ang),
                             hf[:, hd // 2:] * np.cos(ang) + hf[:, :hd // 2] * np.sin(ang)], -1)
    # the same rotated values, in the HF order (first all real parts, then all imaginary parts)
    np.testing.assert_allclose(hf_rot, np.concatenate([meta_rot[..., 0], meta_rot[..., 1]], -1), rtol=1e-12)


# ------------------------------------------------------------------ logits

def test_logits_match_numpy_reference_float64():
    p, toks = params64(), tokens((2, T))
    out = llama.staged_forward(CFG)(p, toks)
    assert out.shape == (2, T, CFG.vocab_size) and out.dtype == np.float64
    assert rel_err(out, ref_forward(CFG, p, toks)) < 1e-5


def test_logits_match_numpy_reference_float32():
    p, toks = params64(seed=3), tokens((2, T), seed=4)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    out = llama.staged_forward(CFG)(p32, toks)
    assert out.dtype == np.float32
    assert rel_err(out, ref_forward(CFG, {k: v.astype(np.float64) for k, v in p32.items()}, toks)) < 1e-4


def test_forward_rejects_bad_tokens():
    p = params64()
    with pytest.raises(lantern.ShapeError, match="longer than max_seq_len=16"):
        llama.staged_forward(CFG)(p, tokens((1, 17)))
    with pytest.raises(lantern.ArgumentError, match="tokens must be integers"):
        llama.staged_forward(CFG)(p, np.zeros((1, 3)))


def torch_forward(torch, cfg, p, toks):
    """The same architecture in PyTorch (HF's formulation: repeat_kv, rotate_half, SDPA-free)."""
    hd, g = cfg.dim // cfg.n_heads, cfg.n_heads // cfg.n_kv_heads
    b, t = toks.shape
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    emb = torch.cat([torch.outer(torch.arange(t, dtype=torch.float64), inv)] * 2, -1)
    cos, sin = emb.cos(), emb.sin()

    def rot(x):
        return torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    x = p["model.embed_tokens.weight"][torch.as_tensor(toks)]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    for i in range(cfg.n_layers):
        w = lambda n: p[f"model.layers.{i}.{n}.weight"]  # noqa: E731
        h = norm(x, w("input_layernorm"))
        q = (h @ w("self_attn.q_proj").T).view(b, t, cfg.n_heads, hd).transpose(1, 2)
        k = (h @ w("self_attn.k_proj").T).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
        v = (h @ w("self_attn.v_proj").T).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        s = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~mask, float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, cfg.dim)
        x = x + o @ w("self_attn.o_proj").T
        h = norm(x, w("post_attention_layernorm"))
        x = x + (torch.nn.functional.silu(h @ w("mlp.gate_proj").T) * (h @ w("mlp.up_proj").T)) @ w("mlp.down_proj").T
    return norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T


def test_logits_and_gradients_match_pytorch():
    torch = pytest.importorskip("torch")
    p, toks = params64(seed=5), tokens((2, T + 1), seed=6)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    logits = torch_forward(torch, CFG, tp, toks[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CFG.vocab_size), torch.as_tensor(toks[:, 1:]).reshape(-1))
    loss.backward()
    assert rel_err(llama.staged_forward(CFG)(p, toks[:, :-1]), logits.detach().numpy()) < 1e-5
    value, grads = loss_and_grad()(p, toks)
    assert abs(value - loss.item()) < 1e-10
    for k in p:
        assert rel_err(grads[k], tp[k].grad.numpy()) < 1e-5, k


def test_hugging_face_checkpoint_loads_and_gives_the_same_logits(tmp_path):
    # A randomly initialised transformers.LlamaForCausalLM saved with save_pretrained: same names,
    # layouts and RoPE convention, so its safetensors file and config.json load as they are.
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from lantern.models.train_llama import load_checkpoint
    hf_cfg = transformers.LlamaConfig(
        vocab_size=CFG.vocab_size, hidden_size=CFG.dim, intermediate_size=CFG.ffn_dim, num_hidden_layers=CFG.n_layers,
        num_attention_heads=CFG.n_heads, num_key_value_heads=CFG.n_kv_heads, max_position_embeddings=CFG.max_seq_len,
        rope_theta=CFG.rope_theta, rms_norm_eps=CFG.norm_eps, tie_word_embeddings=False, initializer_range=0.3)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(hf_cfg).double().eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = load_checkpoint(str(tmp_path))
    assert cfg == CFG and set(params) == set(llama.param_shapes(CFG)) and params["lm_head.weight"].dtype == np.float64
    toks = tokens((2, T), seed=15)
    with torch.no_grad():
        expected = model(torch.as_tensor(toks)).logits.numpy()
    assert rel_err(llama.staged_forward(CFG)(params, toks), expected) < 1e-5


# ------------------------------------------------------------------ gradients

def loss_and_grad():
    return _loss_and_grad


@lantern.stage
def _loss_and_grad(p, toks):
    return lantern.value_and_grad(lambda q: llama.loss_fn(CFG, q, toks))(p)


def test_gradients_match_finite_differences():
    p, toks = params64(seed=7), tokens((2, T + 1), seed=8)
    value, grads = loss_and_grad()(p, toks)
    assert abs(value - ref_loss(CFG, p, toks)) < 1e-10
    assert set(grads) == set(p)
    rng = np.random.default_rng(9)
    eps = 1e-5
    for name, w in p.items():
        for _ in range(3):  # a few random entries of every parameter
            idx = tuple(rng.integers(0, d) for d in w.shape)
            if name == "model.embed_tokens.weight":  # a row that is used (unused rows have gradient 0)
                idx = (toks[0, rng.integers(0, T)],) + idx[1:]
            plus, minus = dict(p), dict(p)
            plus[name], minus[name] = w.copy(), w.copy()
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (ref_loss(CFG, plus, toks) - ref_loss(CFG, minus, toks)) / (2 * eps)
            assert abs(grads[name][idx] - fd) < 1e-6 * max(1.0, abs(fd)), (name, idx, grads[name][idx], fd)


# ------------------------------------------------------------------ decoding with the cache

def test_cached_decoding_matches_the_full_sequence():
    p, toks = params64(seed=10), tokens((1, T), seed=11)
    full = llama.staged_forward(CFG)(p, toks)[0]
    dec = llama.Decoder(CFG)
    kc, vc = dec.empty_cache("float64")
    for pos in range(T):
        logits, kc, vc = dec.decode(p, np.int64(toks[0, pos]), np.int64(pos), kc, vc)
        assert rel_err(logits, full[pos]) < 1e-10, pos
    # rows past the last position are untouched; written rows hold the keys of those positions
    assert not kc[:, T:].any() and not vc[:, T:].any() and np.abs(kc[:, :T]).min(axis=(2, 3)).all()


def test_generate_greedy_is_the_argmax_continuation():
    p = params64(seed=12)
    prompt = [3, 1, 4]
    out = generate(CFG, p, prompt, 5, temperature=0.0)
    seq = list(prompt)
    for _ in range(5):
        seq.append(int(np.argmax(ref_forward(CFG, p, np.array([seq]))[0, -1])))
    assert out == seq[3:]


def test_sampling():
    rng = np.random.default_rng(0)
    logits = np.array([2.0, 1.0, 0.5, -1.0, -3.0])
    assert sample(logits, rng, temperature=0.0) == 0
    probs = np.exp(logits) / np.exp(logits).sum()  # [0.61, 0.22, 0.14, 0.03, 0.004]
    draws = [sample(logits, rng, temperature=1.0, top_p=0.8) for _ in range(2000)]
    assert set(draws) == {0, 1}  # the smallest set whose probability reaches 0.8
    assert abs(np.mean(np.array(draws) == 0) - probs[0] / probs[:2].sum()) < 0.04
    draws = [sample(logits, rng, temperature=1.0) for _ in range(4000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / 4000, probs, atol=0.03)
    hot = [sample(logits, rng, temperature=100.0) for _ in range(2000)]
    assert len(set(hot)) == 5
    with pytest.raises(ValueError, match="top_p"):
        sample(logits, rng, top_p=0.0)


# ------------------------------------------------------------------ training

def test_cosine_schedule():
    lrs = [llama.cosine_lr(s, lr=1.0, warmup=10, total=110, min_lr=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_train_step_is_adamw_with_clipping():
    # one step against the same update computed with NumPy's lantern.optim (lr = 0.01)
    p = params64(seed=13)
    toks = tokens((2, T + 1), seed=14)  # the shape test_gradients_* compiles for
    tr = llama.Trainer(CFG, weight_decay=0.1, clip=0.5)
    state = tr.init(p)
    new, state2, loss, norm = tr.step(p, state, toks, np.float64(0.01))
    value, grads = loss_and_grad()(p, toks)
    assert abs(loss - value) < 1e-12
    assert abs(norm - np.sqrt(sum((g ** 2).sum() for g in grads.values()))) < 1e-10
    clipped = lantern.optim.clip_by_global_norm(grads, 0.5)
    expected, _ = lantern.optim.AdamW(lr=0.01, betas=(0.9, 0.95), weight_decay=0.0).update(
        clipped, lantern.optim.AdamW().init(p), p)
    for k in p:
        wd = 0.1 if p[k].ndim == 2 else 0.0
        np.testing.assert_allclose(new[k], expected[k] - 0.01 * wd * p[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert int(state2["step"]) == 1


def test_short_training_run_lowers_the_loss():
    from lantern.models.train_llama import corpus_tokens, window_batches
    cfg = llama.preset("tiny")
    data = corpus_tokens()
    assert data.dtype == np.int64 and data.max() < 256 and len(data) > 100_000
    batches = window_batches(data, batch=8, seq=32, seed=0)
    params = llama.init_params(cfg, 0)
    tr = llama.Trainer(cfg)
    state = tr.init(params)
    losses = []
    for i in range(40):
        lr = np.float32(llama.cosine_lr(i, lr=3e-3, warmup=5, total=40))
        params, state, loss, _ = tr.step(params, state, batches(i), lr)
        losses.append(float(loss))
    assert abs(losses[0] - math.log(256)) < 0.3  # starts at chance over bytes
    assert np.mean(losses[-5:]) < losses[0] - 1.5, losses


def test_training_that_finished_no_step_keeps_an_existing_checkpoint(tmp_path):
    """Interrupted before the first step (or steps=0): the checkpoint of the same name is not overwritten."""
    import io
    from lantern.models.train_llama import train
    path = tmp_path / "good.safetensors"
    path.write_bytes(b"a good checkpoint")
    out = io.StringIO()
    train(llama.preset("tiny"), steps=0, batch=2, seq=16, checkpoint=str(path), file=out)
    assert path.read_bytes() == b"a good checkpoint"
    assert "no step finished" in out.getvalue()


def test_generation_says_when_max_seq_len_cuts_it_short(tmp_path, capsys):
    import io
    from lantern.models.train_llama import generate_text, save_checkpoint
    cfg = llama.preset("tiny")
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(str(path), cfg, llama.init_params(cfg, 0))
    text = generate_text(str(path), "ab", cfg.max_seq_len + 50, file=io.StringIO())
    err = capsys.readouterr().err
    assert f"generating {cfg.max_seq_len - 1} of the {cfg.max_seq_len + 50} tokens" in err
    assert f"max_seq_len={cfg.max_seq_len}" in err
    assert len(text.encode("utf-8", errors="replace")) <= cfg.max_seq_len * 3


# ------------------------------------------------------------------ run-time sizes (issue 12)

def test_forward_and_training_step_serve_any_sequence_length_with_one_more_compile(monkeypatch):
    monkeypatch.setenv("CFLAGS", "-O0")
    cfg = CFG
    p = params64(cfg)
    fwd = lantern.stage(lambda params, toks: llama.forward(cfg, params, toks))
    per_shape = lantern.stage(lambda params, toks: llama.forward(cfg, params, toks), dynamic=False)
    for t in (5, 9, 14):
        toks = tokens((2, t))
        np.testing.assert_allclose(fwd(p, toks), per_shape(p, toks), rtol=1e-12, atol=1e-14)
    assert fwd.cache_info().compiles == 2
    assert "toks: int64[2,n1_toks]" in fwd.cache_info().signatures[1]
    trainer = llama.Trainer(cfg)
    state = trainer.init(p)
    lr = np.array(1e-3, np.float64)
    for t in (6, 11, 15):
        _, _, loss, _ = trainer.step(p, state, tokens((2, t + 1)), lr)
        want = lantern.stage(lambda params, toks: llama.loss_fn(cfg, params, toks), dynamic=False)(p, tokens((2, t + 1)))
        assert float(loss) == pytest.approx(float(want), rel=1e-12)
    assert trainer.step.cache_info().compiles == 2
    with pytest.raises(lantern.ShapeError, match="longer than max_seq_len"):  # a guard fails: traced again
        trainer.step(p, state, tokens((2, cfg.max_seq_len + 2)), lr)


def test_greedy_generation_in_one_native_call_matches_the_host_loop(monkeypatch):
    """Issue 15: Decoder._greedy is plain Python (for over the prompt, while with if/break on staged values),
    staged once for every prompt length (issue 12); it continues a prompt as stream(temperature=0) does."""
    from lantern.models.sampling import _decoder, greedy
    monkeypatch.setenv("CFLAGS", "-O0")
    p = params64()
    for prompt in ([1, 2, 3], [4, 5, 6, 7, 8], [9, 1, 3, 3]):
        assert greedy(CFG, p, prompt, 5) == generate(CFG, p, prompt, 5, temperature=0.0)
    assert _decoder(CFG).greedy.cache_info().compiles == 1
    full = generate(CFG, p, [1, 2, 3], 5, temperature=0.0)
    assert greedy(CFG, p, [1, 2, 3], 5, stop_token=full[1]) == full[:full.index(full[1]) + 1]  # stops after it
    long = [2] * (CFG.max_seq_len - 3)  # room for 3 more positions: stops at max_seq_len, as the host loop does
    assert greedy(CFG, p, long, 8) == generate(CFG, p, long, 8, temperature=0.0) and len(greedy(CFG, p, long, 8)) < 8


# ------------------------------------------------------------------ depth: one block, compiled once (issue 19)

def test_blocks_compile_once_and_scanned_layers_give_the_same_training_step():
    """The training step calls one C block function (and its one CPS gradient) per layer; scanning the
    layers, over per-layer or stacked weights, gives the same step."""
    cfg = CFG.replace(n_layers=3)
    p, toks = params64(cfg, seed=21), tokens((2, T + 1), seed=22)
    called = llama.Trainer(cfg, weight_decay=0.1, clip=0.5)
    source = called.step.lower(p, called.init(p), toks, np.float64(0.01)).c_source
    block_functions = set(re.findall(r"^static (?:__attribute__\(\(noinline\)\) )?void (fn_llama_block\w*)\(", source, re.M))
    assert block_functions == {"fn_llama_block_cps"}, block_functions
    assert source.count("fn_llama_block_cps(") >= 3 + 1
    new, state, loss, norm = called.step(p, called.init(p), toks, np.float64(0.01))
    scanned = llama.Trainer(cfg, weight_decay=0.1, clip=0.5, layers="scan")
    new_s, _, loss_s, norm_s = scanned.step(p, scanned.init(p), toks, np.float64(0.01))
    stacked = llama.stack_layers(p)
    llama.check_params(cfg, stacked)
    new_st, state_st, loss_st, norm_st = scanned.step(stacked, scanned.init(stacked), toks, np.float64(0.01))
    for other_loss, other_norm in ((loss_s, norm_s), (loss_st, norm_st)):
        assert abs(other_loss - loss) < 1e-12 and abs(other_norm - norm) < 1e-10
    for k in p:
        np.testing.assert_allclose(new_s[k], new[k], rtol=1e-10, atol=1e-13, err_msg=k)
    unstacked = llama.unstack_layers(new_st)
    assert set(unstacked) == set(p)
    for k in p:
        np.testing.assert_allclose(unstacked[k], new[k], rtol=1e-10, atol=1e-13, err_msg=k)
    np.testing.assert_array_equal(llama.unstack_layers(stacked)["model.layers.2.mlp.up_proj.weight"],
                                  p["model.layers.2.mlp.up_proj.weight"])
    # each is idempotent: stacking stacked weights (or unstacking per-layer ones) changes nothing
    assert all(llama.stack_layers(stacked)[k] is v for k, v in stacked.items())
    assert set(llama.unstack_layers(p)) == set(p)


def test_stacked_weights_need_the_scanned_model():
    per_layer = params64()
    p = llama.stack_layers(per_layer)
    dec = llama.Decoder(CFG)
    k_cache, v_cache = dec.empty_cache("float64")
    token, pos = np.array(3, np.int64), np.array(0, np.int64)
    np.testing.assert_allclose(dec.decode(p, token, pos, k_cache, v_cache)[0],
                               dec.decode(per_layer, token, pos, k_cache, v_cache)[0], rtol=1e-12)
    with pytest.raises(lantern.ArgumentError, match="layers='scan'"):
        lantern.stage(lambda p, t: llama.forward(CFG, p, t))(p, tokens((1, 4), seed=1))
    with pytest.raises(lantern.ArgumentError, match="layers must be"):
        llama.Trainer(CFG, layers="unrolled")
    bad = dict(p)
    bad["model.layers.self_attn.q_proj.weight"] = bad["model.layers.self_attn.q_proj.weight"][:1]
    with pytest.raises(lantern.ArgumentError, match=r"model.layers.self_attn.q_proj.weight has shape"):
        llama.check_params(CFG, bad)
