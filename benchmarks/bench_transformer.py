"""A 2-layer Transformer encoder classifier trained with AdamW and a warm-up + cosine learning-rate schedule:
Lantern (the schedule evaluated inside the staged step: one compile) vs PyTorch (eager, torch.compile).

The model a PyTorch user writes first (issue 17): token and position embeddings, two pre-norm encoder
layers (``nn.MultiheadAttention`` with 4 heads, ``nn.LayerNorm``, a GELU feed-forward layer), a final
norm, mean pooling and a linear classifier; cross-entropy. Data: deterministic token sequences whose
class is the sum of their tokens modulo 4 (learnable from the whole sequence). Parameters are made once
with ``lantern.nn`` (PyTorch's initialisation and names) and loaded into the PyTorch model.

Lantern's run is also checkpointed half way with ``lantern.train.fit(checkpoint=...)`` and resumed in a
second ``fit(resume=True)``; the extra fields say whether the result equals the uninterrupted run bit for
bit.

    python benchmarks/bench_transformer.py [--quick] [--threads N]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

VOCAB, SEQ, BATCH, DIM, HEADS, FFN, LAYERS, CLASSES = 32, 32, 16, 64, 4, 128, 2, 4
PEAK_LR, WARMUP, WEIGHT_DECAY = 3e-3, 5, 0.01


def schedule_value(t: int, total: int) -> float:
    from lantern.optim import schedules
    return schedules.warmup_cosine(PEAK_LR, WARMUP, total)(t)


def make_batches(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int64)
        out.append((tokens, (tokens.sum(1) % CLASSES).astype(np.int64)))
    return out


def layers():
    from lantern import nn
    return {"attn": nn.MultiheadAttention(DIM, HEADS), "norm1": nn.LayerNorm(DIM), "norm2": nn.LayerNorm(DIM),
            "ff1": nn.Linear(DIM, FFN), "ff2": nn.Linear(FFN, DIM)}


def init_params() -> dict:
    from lantern import nn
    rng = np.random.default_rng(1)
    block = layers()
    return {"embed": nn.Embedding(VOCAB, DIM).init(rng), "pos": (rng.standard_normal((SEQ, DIM)) * 0.02).astype(np.float32),
            "layers": [{k: m.init(rng) for k, m in block.items()} for _ in range(LAYERS)],
            "norm": nn.LayerNorm(DIM).init(rng), "head": nn.Linear(DIM, CLASSES).init(rng)}


# ---------------------------------------------------------------------------- Lantern
def lantern_step(total: int):
    import lantern
    from lantern import nn, optim

    block, embed, norm, head = layers(), nn.Embedding(VOCAB, DIM), nn.LayerNorm(DIM), nn.Linear(DIM, CLASSES)
    opt = optim.AdamW(lr=optim.schedules.warmup_cosine(PEAK_LR, WARMUP, total), weight_decay=WEIGHT_DECAY)

    def loss_fn(p, tokens, labels):
        x = embed(p["embed"], tokens) + p["pos"]
        for layer in p["layers"]:
            h = block["norm1"](layer["norm1"], x)
            x = x + block["attn"](layer["attn"], h, h, h, need_weights=False)[0]
            h = block["norm2"](layer["norm2"], x)
            x = x + block["ff2"](layer["ff2"], lantern.gelu(block["ff1"](layer["ff1"], h)))
        pooled = lantern.mean(norm(p["norm"], x), axis=1)
        return nn.cross_entropy(head(p["head"], pooled), labels)

    return harness.lantern_train_step(loss_fn, opt), opt


def lantern_setup():
    """One training step (fresh-process timing)."""
    step, opt = lantern_step(40)
    params = init_params()
    state = opt.init(params)
    tokens, labels = make_batches(1)[0]
    return lambda: step(params, state, tokens, labels)


def resume_check(total: int, batches: list) -> dict:
    """fit for half the steps with a checkpoint, resume for the rest: equal to one uninterrupted run?"""
    import lantern
    step, opt = lantern_step(total)
    params = init_params()
    whole = lantern.train.fit(step, params, opt.init(params), batches, steps=total, log_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "run.safetensors")
        lantern.train.fit(step, params, opt.init(params), batches[:total // 2], steps=total, checkpoint=path,
                          log_every=0)
        resumed = lantern.train.fit(step, params, opt.init(params), batches, steps=total, checkpoint=path,
                                    resume=True, log_every=0)
    same = all(np.array_equal(a, b) for a, b in zip(lantern.tree.flatten(whole.params)[0],
                                                  lantern.tree.flatten(resumed.params)[0]))
    return {"steps": total, "checkpoint_at": total // 2, "resumed_equals_uninterrupted_bitwise": bool(same),
            "final_loss": float(whole.losses[-1]), "compiles": step.cache_info().compiles}


# ---------------------------------------------------------------------------- PyTorch
def torch_model(torch, params):
    F = torch.nn.functional

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True)
            self.norm1, self.norm2 = torch.nn.LayerNorm(DIM), torch.nn.LayerNorm(DIM)
            self.ff1, self.ff2 = torch.nn.Linear(DIM, FFN), torch.nn.Linear(FFN, DIM)

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, DIM)
            self.pos = torch.nn.Parameter(torch.zeros(SEQ, DIM))
            self.layers = torch.nn.ModuleList([Block() for _ in range(LAYERS)])
            self.norm, self.head = torch.nn.LayerNorm(DIM), torch.nn.Linear(DIM, CLASSES)

        def forward(self, tokens, labels):
            x = self.embed(tokens) + self.pos
            for layer in self.layers:
                x = layer(x)
            return F.cross_entropy(self.head(self.norm(x).mean(1)), labels)

    model = Model()
    state = {"embed.weight": params["embed"]["weight"], "pos": params["pos"],
             **{f"norm.{k}": v for k, v in params["norm"].items()}, **{f"head.{k}": v for k, v in params["head"].items()}}
    for i, layer in enumerate(params["layers"]):
        for module, values in layer.items():
            state.update({f"layers.{i}.{module}.{k}": v for k, v in values.items()})
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    return model


def torch_step(torch, compiled: bool, params, total: int):
    model = torch_model(torch, params)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=WEIGHT_DECAY)
    fn = torch.compile(model) if compiled else model
    counter = {"t": 0}

    def step(tokens, labels):
        opt.param_groups[0]["lr"] = schedule_value(counter["t"], total)
        counter["t"] += 1
        opt.zero_grad(set_to_none=True)
        loss = fn(tokens, labels)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


# ---------------------------------------------------------------------------- driver
def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    torch = harness.torch_or_none(args)
    steps = 3 if args.quick else 20
    total = 8 if args.quick else 40  # the schedule's length; the timed steps continue past it at its floor
    batches = make_batches(total)
    params = init_params()
    rows, first_losses, losses = [], {}, {}

    def timed_row(name, first, once):
        harness.timed_row(rows, first_losses, name, first, once, steps, args.repeats)

    if "lantern" in args.frameworks:
        step, opt = lantern_step(total)
        lantern_once = harness.cycling_steps(step, params, opt.init(params), batches, losses.setdefault("lantern", []))
        timed_row("lantern", lambda: step(params, opt.init(params), *batches[0])[2], lantern_once)

    if torch is not None:
        tb = [(torch.tensor(a), torch.tensor(b)) for a, b in batches]
        for name in [f for f in ("torch eager", "torch.compile") if f in args.frameworks]:
            compiled = name == "torch.compile"
            tstep = torch_step(torch, compiled, params, total)  # (the first call below uses a model of its own)
            ts = {"i": 0}

            def torch_once(tstep=tstep, ts=ts, name=name):
                tokens, labels = tb[ts["i"] % len(tb)]
                ts["i"] += 1
                losses.setdefault(name, []).append(float(tstep(tokens, labels)))

            timed_row(name, lambda compiled=compiled: torch_step(torch, compiled, params, total)(*tb[0]), torch_once)

    extra = {"first_step_losses": first_losses, "first_loss_max_difference": harness.check_losses(first_losses, 1e-4),
             "schedule": f"warm-up {WARMUP} steps to {PEAK_LR}, cosine to 0 at step {total}"}
    for name in ("torch eager", "torch.compile"):  # the same data, parameters and schedule, step by step
        if "lantern" in losses and name in losses:
            n = min(len(losses["lantern"]), len(losses[name]))
            extra[f"loss_max_difference_vs_{name.replace(' ', '_')}"] = float(np.max(np.abs(
                np.subtract(losses["lantern"][:n], losses[name][:n]))))
    if "lantern" in args.frameworks:
        extra["checkpoint_and_resume"] = resume_check(total, batches)
        extra["lantern_compiles"] = step.cache_info().compiles
    if not args.no_fresh and "lantern" in args.frameworks:
        extra["lantern_fresh_process"] = harness.fresh_process("bench_transformer", "lantern_setup()")
    harness.report("transformer", {"batch": BATCH, "seq": SEQ, "dim": DIM, "heads": HEADS, "layers": LAYERS,
                                   "threads": args.threads}, rows, extra)


if __name__ == "__main__":
    main()
