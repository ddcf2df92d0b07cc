"""Issue 12: the cost of run-time sizes. Each workload is compiled twice in one process, once per shape
(``dynamic=False``) and once with its varying dimension a run-time size (``dynamic={...}``), and both
are timed on the same inputs of one size; the ratio is what serving every size with one compile costs.

Workloads (forward and backward, float32, the Lantern paper's sizes where they apply):

* ``rnn`` — min-char-rnn, hidden 100, vocabulary 65, a sequence of 25 (run-time length), written two
  ways: ``for t in range(len(xs))`` (per shape Python unrolls it; with a run-time length it is one
  staged loop) and ``lantern.fori_loop(0, len(xs), ...)`` (a staged loop both ways);
* ``lstm`` — the same with an LSTM cell, hidden 100;
* ``treelstm`` — the TreeLSTM training step of ``bench_treelstm.py`` on one tree (run-time node count);
* ``mlp batch`` — a 784-256-10 classifier on a batch of 64 (run-time batch size; products by BLAS);
* ``cnn batch`` — the training step of ``bench_cnn.py`` (batch 100, run-time batch size);
* ``llama forward`` — the Llama ``small`` preset's forward pass on 4 x 128 tokens (run-time length).

    python benchmarks/dynamic_shapes.py [--threads N] [--repeats R]
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

rng = np.random.default_rng(0)


def _f32(*shape: int, scale: float = 0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def rnn_workload(lantern: Any, cell: str, fori: bool = False) -> tuple[Callable[..., Any], tuple, dict]:
    H, V, T = 100, 65, 25
    gates = 4 if cell == "lstm" else 1
    params = {"Wx": _f32(V, gates * H), "Wh": _f32(H, gates * H), "b": np.zeros(gates * H, np.float32),
              "Wy": _f32(H, V), "by": np.zeros(V, np.float32)}

    def cell_step(p, xs, ys, t, h, c, total):
        g = p["Wx"][xs[t]] + h @ p["Wh"] + p["b"]
        if cell == "lstm":
            c = lantern.sigmoid(g[H:2 * H]) * c + lantern.sigmoid(g[:H]) * lantern.tanh(g[3 * H:])
            h = lantern.sigmoid(g[2 * H:3 * H]) * lantern.tanh(c)
        else:
            h = lantern.tanh(g)
        return h, c, total - lantern.log_softmax(h @ p["Wy"] + p["by"])[ys[t]]

    def loss(p, xs, ys):
        h = lantern.zeros(H, dtype="float32")
        c = lantern.zeros(H, dtype="float32")
        total = lantern.zeros((), dtype="float32")
        if fori:
            return lantern.fori_loop(0, len(xs), lambda t, s: cell_step(p, xs, ys, t, *s), (h, c, total))[2]
        for t in range(len(xs)):
            h, c, total = cell_step(p, xs, ys, t, h, c, total)
        return total

    xs, ys = rng.integers(0, V, T), rng.integers(0, V, T)
    return lantern.value_and_grad(loss), (params, xs, ys), {"xs": 0, "ys": 0}


def treelstm_workload(lantern: Any) -> tuple[Callable[..., Any], tuple, dict]:
    import bench_treelstm as tl
    vocab, trees = tl.make_trees(8, pad=False)
    emb, params = tl.init_params(vocab)
    step, opt = tl.lantern_step()
    t = max(trees, key=lambda t: t["n"])
    fn = step.python_fn
    return fn, (params, opt.init(params), emb, t["words"], t["left"], t["right"], t["labels"]), \
        {"words": 0, "left": 0, "right": 0, "labels": 0}


def cnn_workload(lantern: Any) -> tuple[Callable[..., Any], tuple, dict]:
    import bench_cnn
    from lantern.data import synthetic_mnist
    step, opt = bench_cnn.lantern_step()
    params = bench_cnn.init_params()
    x, y = synthetic_mnist(bench_cnn.BATCH)
    return step.python_fn, (params, opt.init(params), x, y), {"batch": 0}


def llama_workload(lantern: Any) -> tuple[Callable[..., Any], tuple, dict]:
    from lantern.models import llama
    cfg = llama.preset("small")
    params = llama.init_params(cfg, 0)
    tokens = rng.integers(0, cfg.vocab_size, (4, 128))
    return (lambda p, tokens: llama.forward(cfg, p, tokens)), (params, tokens), {"tokens": 1}


def mlp_workload(lantern: Any) -> tuple[Callable[..., Any], tuple, dict]:
    from lantern import nn
    params = {"W1": _f32(784, 256), "b1": np.zeros(256, np.float32), "W2": _f32(256, 10),
              "b2": np.zeros(10, np.float32)}

    def loss(p, x, y):
        h = lantern.relu(x @ p["W1"] + p["b1"])
        return nn.cross_entropy(h @ p["W2"] + p["b2"], y)

    x, y = _f32(64, 784, scale=1.0), rng.integers(0, 10, 64)
    return lantern.value_and_grad(loss), (params, x, y), {"x": 0, "y": 0}


def main() -> None:
    args = harness.parse_args(__doc__.splitlines()[0])
    import lantern
    rows = []
    extra: dict[str, Any] = {}
    workloads = {"rnn (Python for)": lambda: rnn_workload(lantern, "rnn"),
                 "rnn (fori_loop)": lambda: rnn_workload(lantern, "rnn", fori=True),
                 "lstm (Python for)": lambda: rnn_workload(lantern, "lstm"),
                 "lstm (fori_loop)": lambda: rnn_workload(lantern, "lstm", fori=True),
                 "treelstm": lambda: treelstm_workload(lantern), "mlp batch": lambda: mlp_workload(lantern),
                 "cnn batch": lambda: cnn_workload(lantern), "llama forward": lambda: llama_workload(lantern)}
    for name, make in workloads.items():
        fn, inputs, axes = make()
        timings = {}
        for label, dynamic in (("per shape", False), ("run-time sizes", axes)):
            staged = lantern.stage(fn, dynamic=dynamic)
            exe = staged.lower(*inputs)
            if dynamic:
                assert exe.pattern is not None, f"{name}: not compiled with run-time sizes"
            steps = 50 if name == "mlp batch" else 5 if name in ("cnn batch", "llama forward") else 20
            timings[label] = harness.time_steps(lambda: exe(*inputs), steps, args.repeats)
        ratio = timings["run-time sizes"]["median_ms"] / timings["per shape"]["median_ms"]
        for label, t in timings.items():
            rows.append({"framework": f"{name}: {label}", **t})
        extra[f"{name} ratio"] = round(ratio, 3)
    harness.report("dynamic_shapes", {"threads": args.threads}, rows, extra, unit="step")


if __name__ == "__main__":
    main()
