"""Vanilla RNN language model (min-char-rnn), one training step per call: Lantern vs PyTorch.

Settings from Lantern's NeurIPS'18 CPU evaluation: hidden 100, sequence 25, batch 1, and
hidden 50, sequence 20, batch 20; Adagrad (lr 0.1, min-char-rnn's ``g / sqrt(mem + 1e-8)``),
gradients clipped to +-5; characters of ``pydoc_data.topics``. Every framework starts from
the same NumPy parameters; the first-step losses must agree.

    python benchmarks/bench_rnn.py [--quick] [--threads N]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

LR, CLIP = 0.1, 5.0
CONFIGS = [(100, 25, 1), (50, 20, 20)]  # hidden, sequence, batch


def make_data(seq: int, batch: int, steps: int):
    from lantern.data import CharVocab, text_corpus
    text = text_corpus()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    span = seq * steps + 1
    starts = [b * (len(ids) // batch) for b in range(batch)]
    batches = []
    for s in range(steps):
        xs = np.stack([ids[o + s * seq:o + s * seq + seq] for o in starts], axis=1)  # [seq, batch]
        ys = np.stack([ids[o + s * seq + 1:o + s * seq + seq + 1] for o in starts], axis=1)
        batches.append((xs, ys))
    assert span < len(ids) // batch
    return len(vocab), batches


def init_params(vocab: int, hidden: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"Wxh": (rng.standard_normal((vocab, hidden)) * 0.01).astype(np.float32),
            "Whh": (rng.standard_normal((hidden, hidden)) * 0.01).astype(np.float32),
            "bh": np.zeros(hidden, np.float32),
            "Why": (rng.standard_normal((hidden, vocab)) * 0.01).astype(np.float32),
            "by": np.zeros(vocab, np.float32)}


# ---------------------------------------------------------------------------- Lantern
def lantern_step():
    import lantern
    from lantern import nn
    from lantern.demo import clipped_adagrad

    def loss_fn(p, xs, ys, h0):
        def body(t, carry):
            h, total = carry
            h = lantern.tanh(p["Wxh"][xs[t]] + h @ p["Whh"] + p["bh"])
            return h, total + nn.cross_entropy(h @ p["Why"] + p["by"], ys[t], reduction="sum")
        h, total = lantern.fori_loop(0, xs.shape[0], body, (h0, lantern.zeros((), "float32")))
        return total / xs.size, h

    @lantern.stage
    def step(p, mem, xs, ys, h0):
        (loss, h), g = lantern.value_and_grad(loss_fn, has_aux=True)(p, xs, ys, h0)
        return (*clipped_adagrad(p, mem, g, LR, CLIP), loss, h)

    return step


# ---------------------------------------------------------------------------- PyTorch
def torch_step(torch, compiled: bool):
    def loss_fn(p, xs, ys, h):
        total = 0.0
        for t in range(xs.shape[0]):
            h = torch.tanh(p["Wxh"][xs[t]] + h @ p["Whh"] + p["bh"])
            total = total + torch.nn.functional.cross_entropy(h @ p["Why"] + p["by"], ys[t], reduction="sum")
        return total / xs.numel(), h

    fn = torch.compile(loss_fn) if compiled else loss_fn

    def step(p, mem, xs, ys, h):
        loss, h = fn(p, xs, ys, h)
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for (k, v), g in zip(p.items(), grads):
                g = g.clamp(-CLIP, CLIP)
                mem[k] += g * g
                v -= LR * g / torch.sqrt(mem[k] + 1e-8)
        return loss.detach(), h.detach()

    return step


def run(config, args, torch):
    hidden, seq, batch = config
    steps = 3 if args.quick else 100
    vocab, batches = make_data(seq, batch, steps)
    params = init_params(vocab, hidden)
    rows, first_losses = [], {}

    step = lantern_step()
    state = {"p": params, "m": {k: np.zeros_like(v) for k, v in params.items()}, "h": np.zeros((batch, hidden), np.float32), "i": 0}

    def lantern_once():
        xs, ys = batches[state["i"] % steps]
        state["i"] += 1
        state["p"], state["m"], loss, state["h"] = step(state["p"], state["m"], xs, ys, state["h"])
        return loss

    first_losses["lantern"] = float(step(params, state["m"], *batches[0], state["h"])[2])
    rows.append({"framework": "lantern", **harness.time_steps(lantern_once, steps, 2 if args.quick else args.repeats)})

    if torch is not None:
        for compiled in ([False] if args.quick else [False, True]):
            name = "torch.compile" if compiled else "torch eager"
            tstep = torch_step(torch, compiled)
            p = {k: torch.tensor(v) for k, v in params.items()}
            for v in p.values():
                v.requires_grad_(True)
            mem = {k: torch.zeros_like(v) for k, v in p.items()}
            tb = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
            h = torch.zeros(batch, hidden)
            first_losses[name] = float(tstep({k: v.detach().clone().requires_grad_(True) for k, v in p.items()},
                                             {k: torch.zeros_like(v) for k, v in p.items()}, *tb[0], h)[0])
            tstate = {"h": h, "i": 0}

            def torch_once():
                xs, ys = tb[tstate["i"] % steps]
                tstate["i"] += 1
                _, tstate["h"] = tstep(p, mem, xs, ys, tstate["h"])

            rows.append({"framework": name, **harness.time_steps(torch_once, steps, 2 if args.quick else args.repeats)})

    spread = max(first_losses.values()) - min(first_losses.values())
    extra = {"first_step_losses": first_losses, "first_loss_max_difference": spread}
    if not args.quick:
        code = ("import sys; sys.path.insert(0, 'benchmarks'); import bench_rnn as b, numpy as np; "
                f"v, bt = b.make_data({seq}, {batch}, 1); p = b.init_params(v, {hidden}); "
                "m = {k: np.zeros_like(x) for k, x in p.items()}; "
                f"b.lantern_step()(p, m, *bt[0], np.zeros(({batch}, {hidden}), np.float32))")
        with tempfile.TemporaryDirectory() as cache:
            import os
            os.environ["LANTERN_CACHE_DIR"] = cache
            extra["fresh_process_first_call_s"] = round(harness.fresh_process_seconds(code), 2)
            extra["fresh_process_cache_hit_s"] = round(harness.fresh_process_seconds(code), 2)
            extra["python_startup_and_imports_s"] = round(harness.fresh_process_seconds(
                "import sys; sys.path.insert(0, 'benchmarks'); import bench_rnn, lantern, lantern.nn"), 2)
            del os.environ["LANTERN_CACHE_DIR"]
    harness.report(f"rnn_h{hidden}_s{seq}_b{batch}", {"hidden": hidden, "seq": seq, "batch": batch,
                                                       "threads": args.threads}, rows, extra)
    assert spread < 1e-4, f"first-step losses disagree: {first_losses}"


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    torch = harness.torch_or_none()
    for config in CONFIGS:
        run(config, args, torch)


if __name__ == "__main__":
    main()
