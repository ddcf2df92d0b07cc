"""What polling for Ctrl-C costs (issue 13): each program's C as generated, against the same C with its
``lt_poll_interrupt();`` lines taken out, in one process, alternating, median ms per call.

    python benchmarks/interrupt_poll_cost.py [--rounds 15] [--calls 20]

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
    return out


def without_polls(native: NativeFunction, title: str) -> NativeFunction:
    text = native.c_source.replace("lt_poll_interrupt();", "")
    assert text != native.c_source, f"{title}: no poll in the C"
    artifact = compile_c(text, title + "_nopoll", native.uses_blas)
    return NativeFunction(artifact, dataclasses.replace(native.source, text=text), native.out_types)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    print("| program | polls ms | no polls ms | ratio |\n| --- | ---: | ---: | ---: |")
    for name, (fn, call_args) in programs().items():
        exe = fn.lower(*call_args)
        variants = {"polls": exe.native, "none": without_polls(exe.native, name.split()[0])}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for key, native in variants.items():
                exe.native = native
                exe(*call_args)
                start = time.perf_counter()
                for _ in range(args.calls):
                    exe(*call_args)
                times[key].append((time.perf_counter() - start) / args.calls * 1e3)
        exe.native = variants["polls"]
        a, b = statistics.median(times["polls"]), statistics.median(times["none"])
        print(f"| {name} | {a:.4f} | {b:.4f} | {a / b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
