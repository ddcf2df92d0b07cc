"""Plain Python control flow against the combinators (issue 15): the same RNN training step (hidden 100,
25 steps, SGD) and a data-dependent ``while`` written both ways, one process, alternating, median ms per
call. The two forms trace to the same IR (``tests/test_python_control_flow.py``), so the C is the same.

    python benchmarks/plain_python_control_flow.py [--rounds 21] [--calls 50]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lantern

HIDDEN, STEPS, LR = 100, 25, 0.01


def rnn_plain(w, h, xs, n):
    for i in range(n):
        h = lantern.tanh(h @ w + xs[i])
    return lantern.sum(h * h)


def rnn_combinators(w, h, xs, n):
    return lantern.sum(lantern.fori_loop(0, n, lambda i, h: lantern.tanh(h @ w + xs[i]), h) ** 2)


def halve_plain(x):
    steps = 0
    while lantern.max(lantern.abs(x)) > 1e-3:
        x = x * 0.5
        steps = steps + 1
    return x, steps


def halve_combinators(x):
    return lantern.while_loop(lambda s: lantern.max(lantern.abs(s[0])) > 1e-3, lambda s: (s[0] * 0.5, s[1] + 1),
                              (x, 0))


def training_step(loss):
    @lantern.stage
    def step(w, h, xs, n):
        value, g = lantern.value_and_grad(loss)(w, h, xs, n)
        return w - LR * g, value
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((HIDDEN, HIDDEN)) * 0.1).astype(np.float32)
    h = np.zeros(HIDDEN, np.float32)
    xs = rng.standard_normal((STEPS, HIDDEN)).astype(np.float32)
    x = rng.standard_normal(1000).astype(np.float32) * 1e6
    cases = {
        f"RNN training step (hidden {HIDDEN}, {STEPS} steps)": (
            (training_step(rnn_plain), training_step(rnn_combinators)), (w, h, xs, np.int64(STEPS))),
        "while loop halving 1000 values (about 30 iterations)": (
            (lantern.stage(halve_plain), lantern.stage(halve_combinators)), (x,)),
    }
    print("| program | plain Python ms | combinators ms | ratio |\n| --- | ---: | ---: | ---: |")
    for name, ((plain, combinators), call_args) in cases.items():
        times: dict[str, list[float]] = {"plain": [], "combinators": []}
        for fn in (plain, combinators):
            fn(*call_args)  # compile
        for _ in range(args.rounds):
            for key, fn in (("plain", plain), ("combinators", combinators)):
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn(*call_args)
                times[key].append((time.perf_counter() - start) / args.calls * 1e3)
        a, b = statistics.median(times["plain"]), statistics.median(times["combinators"])
        print(f"| {name} | {a:.4f} | {b:.4f} | {a / b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
