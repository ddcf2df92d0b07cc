"""Llama (small preset, byte vocabulary): training step and cached generation, Lantern vs PyTorch.

Training: one step (forward, backward, global-norm clipping, AdamW with the scheduled lr) on a
batch of corpus windows; tokens/s = batch * seq / step time, and the fraction of the machine's
peak FLOP rate that reaches (model FLOPs per token from ``LlamaConfig.flops_per_token``).
Generation: one decode step with a key/value cache at batch 1 (tokens/s = 1 / step time), the
cache as full as the window (position ``seq - 1``, attention over the whole cache either way).
PyTorch runs the same weights and algorithm (eager, and ``torch.compile`` of the loss/decode step).

    python benchmarks/bench_llama.py [--quick] [--threads N] [--preset small] [--batch 8] [--seq 128]

``--quick`` (the test suite's run) uses the tiny preset at batch 8 x 32, the shapes of the training test.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

LR = 1e-3
LR32 = np.array(LR, np.float32)  # 0-d arrays, not NumPy scalars: those miss the fast call path


def peak_flops(threads: int) -> tuple[float, str]:
    """Peak float32 FLOP/s estimate: threads x clock x FLOPs per cycle per core, and the assumption."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = next((float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")), 2500.0)
    flags = next((line.split(":")[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    amd = "AuthenticAMD" in info
    if "avx512f" in flags and not amd:
        per_cycle, what = 64, "AVX-512: 2 FMA units x 16 float32 lanes x 2"
    elif "avx512f" in flags or ("avx2" in flags and "fma" in flags):
        # AMD Zen 4 runs AVX-512 on two 256-bit FMA pipes: the same peak as AVX2 with 2 FMA units
        per_cycle, what = 32, "2 FMA pipes x 8 float32 lanes (256-bit) x 2" + (" (AMD Zen: AVX-512 double-pumped)"
                                                                               if amd else "")
    else:
        per_cycle, what = 8, "SSE: 4 float32 lanes x 2"
    peak = threads * mhz * 1e6 * per_cycle
    return peak, f"{threads} cores x {mhz / 1000:.2f} GHz (cpu MHz in /proc/cpuinfo) x {per_cycle} FLOP/cycle ({what})"


# ---------------------------------------------------------------------------- PyTorch peer
def torch_model(torch, cfg):
    """The same architecture (HF formulation) in PyTorch: a loss function and a cached decode step."""
    import torch.nn.functional as F

    hd, g = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), inv)
    cos_t = torch.cat([ang, ang], -1).cos().float()
    sin_t = torch.cat([ang, ang], -1).sin().float()

    def rope(x, cos, sin):
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def block_mlp(p, i, x):
        h = norm(x, p[f"model.layers.{i}.post_attention_layernorm.weight"])
        gate = F.linear(h, p[f"model.layers.{i}.mlp.gate_proj.weight"])
        up = F.linear(h, p[f"model.layers.{i}.mlp.up_proj.weight"])
        return x + F.linear(F.silu(gate) * up, p[f"model.layers.{i}.mlp.down_proj.weight"])

    def loss_fn(p, tokens):
        x_ids, y = tokens[:, :-1], tokens[:, 1:]
        b, t = x_ids.shape
        cos, sin = cos_t[:t], sin_t[:t]
        x = p["model.embed_tokens.weight"][x_ids]
        for i in range(cfg.n_layers):
            h = norm(x, p[f"model.layers.{i}.input_layernorm.weight"])
            q = F.linear(h, p[f"model.layers.{i}.self_attn.q_proj.weight"]).view(b, t, cfg.n_heads, hd).transpose(1, 2)
            k = F.linear(h, p[f"model.layers.{i}.self_attn.k_proj.weight"]).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
            v = F.linear(h, p[f"model.layers.{i}.self_attn.v_proj.weight"]).view(b, t, cfg.n_kv_heads, hd).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), is_causal=True)
            x = x + F.linear(o.transpose(1, 2).reshape(b, t, cfg.dim), p[f"model.layers.{i}.self_attn.o_proj.weight"])
            x = block_mlp(p, i, x)
        logits = F.linear(norm(x, p["model.norm.weight"]), p["lm_head.weight"])
        return F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))

    def decode(p, token, pos, kc, vc):
        """Logits of one token at ``pos`` (0-d long tensor); caches updated in place."""
        cos, sin = cos_t.index_select(0, pos.view(1))[0], sin_t.index_select(0, pos.view(1))[0]  # no graph break
        x = p["model.embed_tokens.weight"][token]
        visible = torch.arange(cfg.max_seq_len) <= pos
        for i in range(cfg.n_layers):
            h = norm(x, p[f"model.layers.{i}.input_layernorm.weight"])
            q = rope(F.linear(h, p[f"model.layers.{i}.self_attn.q_proj.weight"]).view(cfg.n_kv_heads, g, hd), cos, sin)
            k = rope(F.linear(h, p[f"model.layers.{i}.self_attn.k_proj.weight"]).view(cfg.n_kv_heads, hd), cos, sin)
            v = F.linear(h, p[f"model.layers.{i}.self_attn.v_proj.weight"]).view(cfg.n_kv_heads, hd)
            kc[i].index_copy_(0, pos.view(1), k.unsqueeze(0))
            vc[i].index_copy_(0, pos.view(1), v.unsqueeze(0))
            s = (q @ kc[i].permute(1, 2, 0)) / math.sqrt(hd)  # [KV, g, S]
            a = s.masked_fill(~visible, float("-inf")).softmax(-1)
            o = (a @ vc[i].transpose(0, 1)).reshape(cfg.dim)
            x = x + F.linear(o, p[f"model.layers.{i}.self_attn.o_proj.weight"])
            x = block_mlp(p, i, x)
        return F.linear(norm(x, p["model.norm.weight"]), p["lm_head.weight"])

    return loss_fn, decode


# ---------------------------------------------------------------------------- benchmark
def lantern_setup(preset: str, batch: int, seq: int):
    """One training step's thunk (fresh-process first-call timing)."""
    from lantern.models import llama
    from lantern.models.train_llama import corpus_tokens, window_batches

    cfg = llama.preset(preset)
    params = llama.init_params(cfg, 0)
    tr = llama.Trainer(cfg)
    state = tr.init(params)
    toks = window_batches(corpus_tokens(), batch, seq)(0)
    return lambda: tr.step(params, state, toks, LR32)


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0], lambda p: (p.add_argument("--batch", type=int, default=8),
                                                                  p.add_argument("--seq", type=int, default=128),
                                                                  p.add_argument("--preset", default="small")))
    torch = harness.torch_or_none(args)
    from lantern.models import llama
    from lantern.models.train_llama import corpus_tokens, window_batches

    preset = "tiny" if args.quick else args.preset
    cfg = llama.preset(preset)
    batch, seq = (8, 32) if args.quick else (args.batch, args.seq)
    steps = 2 if args.quick else 10
    get = window_batches(corpus_tokens(), batch, seq)
    data = [get(i) for i in range(steps)]
    params = llama.init_params(cfg, 0)
    peak, peak_note = peak_flops(args.threads)
    flops_step = cfg.flops_per_token(seq) * batch * seq

    # ---- training
    rows, first = [], {}

    def row(name, first_fn, once, n):
        out, first_s = harness.timed(first_fn)
        first[name] = float(out)
        r = {"framework": name, "first_call_s": round(first_s, 3), **harness.time_steps(once, n, args.repeats)}
        rows.append(r)
        return r

    if "lantern" in args.frameworks:
        tr = llama.Trainer(cfg)
        st = {"p": params, "s": tr.init(params), "i": 0}

        def lantern_once():
            st["p"], st["s"], loss, _ = tr.step(st["p"], st["s"], data[st["i"] % steps], LR32)
            st["i"] += 1
            return loss

        row("lantern", lambda: tr.step(params, tr.init(params), data[0], LR32)[2], lantern_once, steps)

    for name in [f for f in ("torch eager", "torch.compile") if torch is not None and f in args.frameworks]:
        loss_fn, _ = torch_model(torch, cfg)
        fn = torch.compile(loss_fn) if name == "torch.compile" else loss_fn
        tdata = [torch.as_tensor(d) for d in data]

        def make():
            p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
            decay = [v for v in p.values() if v.ndim == 2]
            rest = [v for v in p.values() if v.ndim != 2]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                    lr=LR, betas=(0.9, 0.95), eps=1e-8)
            return p, opt

        def torch_step(p, opt, toks):
            opt.zero_grad(set_to_none=True)
            loss = fn(p, toks)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
            opt.step()
            return loss

        p, opt = make()
        ts = {"i": 0}

        def torch_once():
            torch_step(p, opt, tdata[ts["i"] % steps])
            ts["i"] += 1

        row(name, lambda: torch_step(*make(), tdata[0]).item(), torch_once, steps)

    for r in rows:
        r["tokens_per_s"] = round(batch * seq / (r["median_ms"] / 1e3), 1)
        r["fraction_of_peak"] = round(flops_step / (r["median_ms"] / 1e3) / peak, 4)
    extra = {"first_step_losses": first, "first_loss_max_difference": harness.check_losses(first, 2e-3),
             "tokens_per_step": batch * seq, "model_gflop_per_step": round(flops_step / 1e9, 3),
             "peak_gflops_estimate": round(peak / 1e9, 1), "peak_assumption": peak_note,
             "tokens_per_s": {r["framework"]: r["tokens_per_s"] for r in rows},
             "fraction_of_peak": {r["framework"]: r["fraction_of_peak"] for r in rows},
             "params": cfg.num_params()}
    if not args.no_fresh and "lantern" in args.frameworks:
        extra["lantern_fresh_process"] = harness.fresh_process("bench_llama", f"lantern_setup({preset!r}, {batch}, {seq})")
    config = {"preset": preset, "batch": batch, "seq": seq, "threads": args.threads}
    harness.report("llama_train", config, rows, extra)

    # ---- generation (batch 1, one token per step, key/value cache)
    rows, first = [], {}
    pos = seq - 1
    tok = int(data[0][0, 0])
    gsteps = 5 if args.quick else 50
    if "lantern" in args.frameworks:
        dec = llama.Decoder(cfg)
        kc, vc = dec.empty_cache()
        kc[:, :pos] = np.random.default_rng(1).standard_normal(kc[:, :pos].shape).astype(np.float32)
        vc[:, :pos] = np.random.default_rng(2).standard_normal(vc[:, :pos].shape).astype(np.float32)
        cache0 = (kc, vc)
        a_tok, a_pos = np.array(tok, np.int64), np.array(pos, np.int64)

        def lantern_decode():
            return dec.decode(params, a_tok, a_pos, *cache0)[0]

        row("lantern", lambda: float(lantern_decode()[0]), lantern_decode, gsteps)
    for name in [f for f in ("torch eager", "torch.compile") if torch is not None and f in args.frameworks]:
        _, decode = torch_model(torch, cfg)
        fn = torch.compile(decode) if name == "torch.compile" else decode
        tp = {k: torch.tensor(v) for k, v in params.items()}
        kc, vc = (torch.tensor(c) for c in cache0) if "lantern" in args.frameworks else (
            torch.zeros(cfg.n_layers, cfg.max_seq_len, cfg.n_kv_heads, cfg.head_dim),) * 2
        t_tok, t_pos = torch.tensor(tok), torch.tensor(pos)

        def torch_decode():
            with torch.no_grad():
                return fn(tp, t_tok, t_pos, kc, vc)

        row(name, lambda: float(torch_decode()[0]), torch_decode, gsteps)
    for r in rows:
        r["tokens_per_s"] = round(1e3 / r["median_ms"], 1)
    extra = {"first_step_losses": first, "first_loss_max_difference": harness.check_losses(first, 1e-3),
             "position": pos, "tokens_per_s": {r["framework"]: r["tokens_per_s"] for r in rows}}
    harness.report("llama_generate", {"preset": preset, "batch": 1, "position": pos, "threads": args.threads},
                   rows, extra, unit="token")


if __name__ == "__main__":
    os.environ.setdefault("LANTERN_NUM_THREADS", "2")
    main()
