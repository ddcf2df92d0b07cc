"""What the run-time safety of issue 13 costs: each program's C as generated, against the same C without
one safety measure, in one process, alternating, median ms per call.

    python benchmarks/runtime_safety_cost.py [--without polls|own-stack] [--rounds 15] [--calls 20]

``--without polls`` takes out the ``lt_poll_interrupt();`` lines (Ctrl-C); ``--without own-stack`` runs
the entry on the thread's stack instead of switching to lantern's own (deep recursion and loops under
grad); the tiny gradient program shows the per-call cost of the switch.

Programs: the LSTM (hidden 50) and RNN (hidden 100) training steps of ``make bench`` (a loop of 20
iterations, forward and backward), the TreeLSTM step (recursion and continuations), and the worst case
for the poll: a million iterations of a scalar loop with nothing else in them.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lantern  # noqa: E402
from lantern.codegen import NativeFunction, compile_c  # noqa: E402


def programs() -> dict[str, tuple[object, tuple]]:
    import bench_treelstm
    import charlm
    out = {}
    for model, hidden in (("lstm", 50), ("rnn", 100)):
        vocab, batches = charlm.make_data(20, 1, 1)
        params = charlm.init_params(model, vocab, hidden)
        mem = {k: np.zeros_like(v) for k, v in params.items()}
        out[f"{model} h{hidden} step"] = (charlm.lantern_step(model),
                                          (params, mem, *batches[0], charlm.zero_state(model, 1, hidden)))
    vocab, trees = bench_treelstm.make_trees(1)
    emb, params = bench_treelstm.init_params(vocab)
    step, opt = bench_treelstm.lantern_step()
    t = trees[0]
    out["treelstm step (one tree)"] = (step, (params, opt.init(params), emb, t["words"], t["left"], t["right"],
                                              t["labels"]))

    @lantern.stage
    def scalar_loop(x):
        return lantern.fori_loop(0, 1_000_000, lambda i, c: c * np.float32(0.999) + np.float32(0.001), x)
    out["scalar fori_loop, 10^6 iterations"] = (scalar_loop, (np.float32(1.0),))

    @lantern.stage
    def tiny_gradient(x):
        def loss(y):
            _, z = lantern.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * y), (0, y))
            return z.sum()
        return lantern.grad(loss)(x)
    out["gradient of a 3-iteration while_loop"] = (tiny_gradient, (np.ones(4, np.float32),))
    return out


# What each variant takes out of the generated C: (text, replacement).
VARIANTS = {
    "polls": ("lt_poll_interrupt();", ""),
    "own-stack": ("lt_run_entry(run_entry, arg, 1", "lt_run_entry(run_entry, arg, 0"),
}


def without(native: NativeFunction, title: str, variant: str) -> NativeFunction | None:
    """The same C without `variant`'s safety measure, compiled; None if the program does not have it."""
    text = native.c_source.replace(*VARIANTS[variant])
    if text == native.c_source:
        return None
    artifact = compile_c(text, f"{title}_no_{variant.replace('-', '_')}", native.uses_blas)
    return NativeFunction(artifact, dataclasses.replace(native.source, text=text), native.out_types)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--without", choices=sorted(VARIANTS), default="polls")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    print(f"| program | as generated ms | without {args.without} ms | ratio |\n| --- | ---: | ---: | ---: |")
    for name, (fn, call_args) in programs().items():
        exe = fn.lower(*call_args)
        other = without(exe.native, name.split()[0], args.without)
        if other is None:
            print(f"| {name} | | | (no {args.without} in its C) |", flush=True)
            continue
        variants = {"generated": exe.native, "without": other}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for key, native in variants.items():
                exe.native = native
                exe(*call_args)
                start = time.perf_counter()
                for _ in range(args.calls):
                    exe(*call_args)
                times[key].append((time.perf_counter() - start) / args.calls * 1e3)
        exe.native = variants["generated"]
        a, b = statistics.median(times["generated"]), statistics.median(times["without"])
        print(f"| {name} | {a:.4f} | {b:.4f} | {a / b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
