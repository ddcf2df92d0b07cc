"""Peak memory of training steps: Lantern against PyTorch eager and ``torch.compile``.

Every measurement runs in its own Python process (``--child``), so one framework's caches and
allocator never count against another. A child imports its framework, builds the parameters,
the optimizer state and the data, then reads its resident memory (the *baseline*), runs three
training steps and reports:

* ``peak_mb``: the highest resident memory over the three steps (``VmHWM``) minus the baseline:
  what the issue measured (the first step includes tracing and compiling);
* ``step_peak_mb``: the same over steps 2 and 3 only (the high-water mark is reset after the first
  step, ``/proc/self/clear_refs``): a steady training step;
* for Lantern, ``arena_mb``: the most the arena of intermediates held at once (``lantern_arena_high``).

Models: Llama small at two batch sizes and three sequence lengths (how memory grows), once more with
``Trainer(checkpoint=True)`` (each block run again in the backward part), and the paper's CNN, char-RNN,
char-LSTM and TreeLSTM. ``LANTERN_MEMORY_PLAN=0`` in a child's environment
turns the memory plan off (``--plan off`` runs Lantern that way too, for the before/after table).

    python benchmarks/bench_memory.py [--quick] [--threads N] [--frameworks ...] [--plan on|off|both]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

LR = np.array(1e-3, np.float32)
#: (label, model, args): Llama (batch, seq) and the paper benchmarks' own training steps
CASES = [("llama small 4x255", "llama", (4, 255)), ("llama small 16x255", "llama", (16, 255)),
         ("llama small 16x127", "llama", (16, 127)), ("llama small 16x63", "llama", (16, 63)),
         ("llama small 32x127", "llama", (32, 127)), ("llama small 16x255 checkpoint", "llama-checkpoint", (16, 255)),
         ("cnn (batch 100)", "cnn", ()), ("char-rnn h100", "rnn", ()), ("char-lstm h200", "lstm", ()),
         ("treelstm", "treelstm", ())]
QUICK_CASES = [("llama tiny 4x31", "llama-tiny", (4, 31))]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)


# ---------------------------------------------------------------------------- one training step per model
def _llama_steps(framework: str, preset: str, batch: int, seq: int, checkpoint: bool = False):
    from lantern.models import llama
    from lantern.models.train_llama import corpus_tokens, window_batches

    cfg = llama.preset(preset)
    params = llama.init_params(cfg, 0)
    get = window_batches(corpus_tokens(), batch, seq)
    data = [get(i) for i in range(3)]
    if framework == "lantern":
        tr = llama.Trainer(cfg, checkpoint=checkpoint)
        st = {"p": params, "s": tr.init(params)}

        def step(i):
            st["p"], st["s"], loss, _ = tr.step(st["p"], st["s"], data[i], LR)
            return float(loss)
        return step
    import torch
    from bench_llama import torch_model
    loss_fn, _ = torch_model(torch, cfg)
    fn = torch.compile(loss_fn) if framework == "torch.compile" else loss_fn
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW([{"params": [v for v in p.values() if v.ndim == 2], "weight_decay": 0.1},
                             {"params": [v for v in p.values() if v.ndim != 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    tdata = [torch.as_tensor(d) for d in data]

    def torch_step(i):
        opt.zero_grad(set_to_none=True)
        loss = fn(p, tdata[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        return float(loss)
    return torch_step


def _paper_steps(framework: str, model: str):
    """The paper benchmarks: Lantern's step from each script's ``lantern_setup`` (the same step the speed
    benchmarks time); PyTorch's from the script's own PyTorch functions."""
    if framework != "lantern":
        return _torch_paper_steps(framework, model)
    import importlib
    setups = {"cnn": ("bench_cnn", ()), "rnn": ("charlm", ("rnn", 100, 25, 1)),
              "lstm": ("charlm", ("lstm", 200, 20, 1)), "treelstm": ("bench_treelstm", ())}
    module, args = setups[model]
    once = importlib.import_module(module).lantern_setup(*args)

    def step(i):
        from lantern.tree import flatten
        return float(np.asarray(flatten(once())[0][-1]).ravel()[0])  # (a loss, for the record)
    return step


def _torch_paper_steps(framework: str, model: str):
    import torch
    compiled = framework == "torch.compile"
    if model == "cnn":
        import bench_cnn
        step = bench_cnn.torch_fns(torch, compiled)
        p, opt = bench_cnn.torch_make(torch, bench_cnn.init_params())
        x, y = (torch.as_tensor(a) for a in bench_cnn.synthetic_mnist(bench_cnn.BATCH))
        return lambda i: float(step(p, opt, x, y))
    if model in ("rnn", "lstm"):
        import charlm
        hidden, seq = (100, 25) if model == "rnn" else (200, 20)
        vocab, batches = charlm.make_data(seq, 1, 1)
        tstep = charlm.torch_step(torch, model, compiled)
        p = {k: torch.tensor(v).requires_grad_(True)
             for k, v in charlm.layout_params(model, vocab, hidden, "row").items()}
        mem = {k: torch.zeros_like(v) for k, v in p.items()}
        xs, ys = (torch.tensor(a) for a in batches[0])
        s0 = tuple(torch.tensor(a) for a in charlm.zero_state(model, 1, hidden))
        return lambda i: float(tstep(p, mem, xs, ys, s0)[0])
    if model == "treelstm":
        import bench_treelstm
        vocab, trees = bench_treelstm.make_trees(1)
        emb, params = bench_treelstm.init_params(vocab)
        make, step = bench_treelstm.torch_epoch_fns(torch, emb, params)
        p, opt = make()
        t = bench_treelstm.torch_tree(torch, trees[0])
        return lambda i: float(step(p, opt, t))
    raise ValueError(model)


def child(framework: str, model: str, args: tuple[int, ...]) -> dict:
    """Run in a fresh process: baseline, three steps, the peaks (see the module docstring)."""
    if model.startswith("llama"):
        step = _llama_steps(framework, "tiny" if model == "llama-tiny" else "small", *args,
                            checkpoint=model == "llama-checkpoint")
    else:
        step = _paper_steps(framework, model)
    baseline = _status_kb("VmRSS")
    step(0)
    first_peak = _status_kb("VmHWM")
    _reset_peak()
    losses = [step(i) for i in (1, 2)]
    steady_peak = _status_kb("VmHWM")
    out = {"peak_mb": round((max(first_peak, steady_peak) - baseline) / 1024, 1),
           "step_peak_mb": round((steady_peak - baseline) / 1024, 1), "baseline_mb": round(baseline / 1024, 1),
           "last_loss": losses[-1]}
    if framework == "lantern":
        from lantern.codegen.loader import arena_high_water
        out["arena_mb"] = round(arena_high_water() / 2**20, 1)
    return out


def measure(framework: str, model: str, args: tuple[int, ...], plan: str, threads: int) -> dict:
    env = dict(os.environ, LANTERN_MEMORY_PLAN="0" if plan == "off" else "1")
    proc = subprocess.run([sys.executable, __file__, "--child", framework, model, *map(str, args),
                           "--threads", str(threads)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} {model} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        framework, model, *rest = sys.argv[i + 1:]
        k = rest.index("--threads")  # (measure() always passes it, after the sizes)
        harness.set_threads(int(rest[k + 1]))
        sizes = tuple(int(a) for a in rest[:k])
        print(json.dumps(child(framework.replace("_", " "), model, sizes)))
        return

    def extra(parser):
        parser.add_argument("--plan", choices=("on", "off", "both"), default="both",
                            help="Lantern with the memory plan on, off, or both (default)")
        parser.add_argument("--cases", help="comma-separated labels to run (default: all)")

    args = harness.parse_args(__doc__.splitlines()[0], extra)
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        wanted = {c.strip() for c in args.cases.split(",")}
        cases = [c for c in cases if c[0] in wanted]
    torch = harness.torch_or_none(args)
    plans = ("on", "off") if args.plan == "both" else (args.plan,)
    rows = []
    for label, model, sizes in cases:
        row: dict = {"framework": label}
        if "lantern" in args.frameworks:
            for plan in plans:
                r = measure("lantern", model, sizes, plan, args.threads)
                suffix = "" if plan == "on" else " (plan off)"
                row[f"lantern{suffix} MB"] = r["peak_mb"]
                row[f"lantern{suffix} step MB"] = r["step_peak_mb"]
                row[f"lantern{suffix} arena MB"] = r["arena_mb"]
        for name in ("torch eager", "torch.compile"):
            if torch is None or name not in args.frameworks or model == "llama-checkpoint" or (
                    name == "torch.compile" and model == "treelstm"):  # (recursion over a Python tree)
                continue
            r = measure(name.replace(" ", "_"), model, sizes, "on", args.threads)
            row[f"{name} MB"] = r["peak_mb"]
            row[f"{name} step MB"] = r["step_peak_mb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    _report(rows, args)


def _report(rows: list[dict], args) -> None:
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c != "framework"]
    lines = ["| case | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    lines += ["| " + r["framework"] + " | " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    table = "\n".join(lines)
    out = {"benchmark": "memory", "threads": args.threads, "machine": harness.machine(), "rows": rows,
           "versions": harness.versions()}
    (harness.RESULTS / "memory.json").write_text(json.dumps(out, indent=2))
    (harness.RESULTS / "memory.md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
