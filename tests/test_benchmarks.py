"""The benchmark scripts run in --quick mode and write their results.

Lantern only (``--frameworks lantern``), so the test does not depend on the optional peers and
stays short; with PyTorch installed, one script also runs its torch-eager side to check that
the first-step losses agree. Never asserts on timings.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"framework", "median_ms", "min_ms", "max_ms", "cpu_median_ms", "first_call_s"}


def run_quick(results, script, *extra):
    env = {**os.environ, "LANTERN_BENCH_RESULTS": str(results)}  # never overwrite the real results
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--threads", "1", *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| lantern |" in proc.stdout
    return proc


def load(results, name):
    result = json.loads((results / f"{name}.json").read_text())
    assert (results / f"{name}.md").read_text().startswith(f"### {name} (")
    assert {"benchmark", "unit", "config", "machine", "rows", "first_step_losses", "first_loss_max_difference",
            "date"} <= set(result)
    assert result["benchmark"] == name
    assert result["config"]["threads"] == 1
    for row in result["rows"]:
        assert ROW_KEYS <= set(row)
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"] and row["cpu_median_ms"] > 0
    assert result["rows"][0]["framework"] == "lantern"
    return result


@pytest.mark.parametrize("script,names,extra", [
    ("bench_rnn.py", ["rnn_h100_s25_b1", "rnn_h50_s20_b20"], []),
    ("bench_rnn.py", ["rnn_h100_s25_b1_column", "rnn_h50_s20_b20_column"], ["--layout", "column"]),
    ("bench_lstm.py", ["lstm_h50_s20_b1", "lstm_h200_s20_b1"], []),
    ("bench_treelstm.py", ["treelstm"], []),
])
def test_benchmark_quick_lantern(tmp_path, script, names, extra):
    run_quick(tmp_path, script, "--frameworks", "lantern", *extra)
    for name in names:
        result = load(tmp_path, name)
        assert [r["framework"] for r in result["rows"]] == ["lantern"]
        assert set(result["first_step_losses"]) == {"lantern"}


def test_cnn_quick_against_torch_eager_when_installed(tmp_path):
    have_torch = importlib.util.find_spec("torch") is not None
    run_quick(tmp_path, "bench_cnn.py", "--frameworks", "lantern,torch eager" if have_torch else "lantern")
    result = load(tmp_path, "cnn")
    assert [r["framework"] for r in result["rows"]] == ["lantern", "torch eager"][:1 + have_torch]
    # the same initial parameters and data: the first-step losses agree (the script asserts it too)
    assert set(result["first_step_losses"]) == {r["framework"] for r in result["rows"]}
    assert result["first_loss_max_difference"] < 1e-4
    assert result["data"] == "synthetic MNIST-shaped"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "cnn.png").stat().st_size > 0


def test_transformer_quick_one_compile_and_resume_against_torch_eager_when_installed(tmp_path):
    """Issue 17: a scheduled AdamW step compiles once; a checkpointed and resumed run equals the
    uninterrupted one bit for bit; the losses follow PyTorch's step by step."""
    have_torch = importlib.util.find_spec("torch") is not None
    run_quick(tmp_path, "bench_transformer.py", "--frameworks", "lantern,torch eager" if have_torch else "lantern")
    result = load(tmp_path, "transformer")
    assert result["lantern_compiles"] == 1 and result["checkpoint_and_resume"]["compiles"] == 1
    assert result["checkpoint_and_resume"]["resumed_equals_uninterrupted_bitwise"] is True
    assert result["first_loss_max_difference"] < 1e-4
    if have_torch:
        assert result["loss_max_difference_vs_torch_eager"] < 1e-3


def test_llama_quick_against_torch_eager_when_installed(tmp_path):
    have_torch = importlib.util.find_spec("torch") is not None
    run_quick(tmp_path, "bench_llama.py", "--frameworks", "lantern,torch eager" if have_torch else "lantern")
    names = ["lantern", "torch eager"][:1 + have_torch]
    train, gen = load(tmp_path, "llama_train"), load(tmp_path, "llama_generate")
    assert [r["framework"] for r in train["rows"]] == names == [r["framework"] for r in gen["rows"]]
    assert train["config"] == {"preset": "tiny", "batch": 8, "seq": 32, "threads": 1}
    assert gen["unit"] == "token" and gen["config"]["batch"] == 1
    # the same weights and data: first-step losses (and first decoded logits) agree with PyTorch
    assert train["first_loss_max_difference"] < 2e-3 and gen["first_loss_max_difference"] < 1e-3
    for r in train["rows"]:
        assert r["tokens_per_s"] == pytest.approx(8 * 32 / (r["median_ms"] / 1e3), rel=1e-3)
        assert 0 < r["fraction_of_peak"] < 1
    assert train["peak_gflops_estimate"] > 0 and "FLOP/cycle" in train["peak_assumption"]


def test_unknown_framework_is_an_error():
    proc = subprocess.run([sys.executable, "benchmarks/bench_cnn.py", "--quick", "--frameworks", "tensorflow"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown frameworks" in proc.stderr


# ------------------------------------------------------------------ the benchmark models train
# Short training runs of each benchmark's own Lantern step (the code the benchmarks time),
# on the library's data: the loss goes down.

@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_cnn
    import bench_treelstm
    import charlm
    return charlm, bench_treelstm, bench_cnn


def epoch_means(epochs, batches, step_once):
    return [float(np.mean([step_once(b) for b in batches])) for _ in range(epochs)]


@pytest.mark.parametrize("model", ["rnn", "lstm"])
def test_char_model_trains(bench_modules, model):
    charlm = bench_modules[0]
    vocab, batches = charlm.make_data(10, 4, 8)  # seq 10, batch 4, 8 batches of pydoc_data.topics
    s = {"p": charlm.init_params(model, vocab, 32), "h": charlm.zero_state(model, 4, 32)}
    s["m"] = {k: np.zeros_like(v) for k, v in s["p"].items()}
    step = charlm.lantern_step(model)

    def once(batch):
        s["p"], s["m"], loss, s["h"] = step(s["p"], s["m"], *batch, s["h"])
        return loss

    losses = epoch_means(5, batches, once)
    assert np.log(vocab) - 1.0 < losses[0] < np.log(vocab) + 0.1  # starts near chance
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("model", ["rnn", "lstm"])
def test_char_model_layouts_train_alike(bench_modules, model):
    """min-char-rnn's column layout (W @ h) and the row layout (h @ W) are the same model: the same losses."""
    charlm = bench_modules[0]
    vocab, batches = charlm.make_data(10, 4, 3)
    losses = {}
    for layout in ("row", "column"):
        p = charlm.layout_params(model, vocab, 16, layout)
        m, h = {k: np.zeros_like(v) for k, v in p.items()}, charlm.zero_state(model, 4, 16, layout)
        step, losses[layout] = charlm.lantern_step(model, layout), []
        for batch in batches:
            p, m, loss, h = step(p, m, *batch, h)
            losses[layout].append(float(loss))
    np.testing.assert_allclose(losses["column"], losses["row"], rtol=1e-5)


def test_treelstm_trains(bench_modules):
    bt = bench_modules[1]
    vocab, trees = bt.make_trees(10)
    emb, params = bt.init_params(vocab)
    step, opt = bt.lantern_step()
    s = {"p": params, "a": opt.init(params)}

    def once(t):
        s["p"], s["a"], loss = step(s["p"], s["a"], emb, t["words"], t["left"], t["right"], t["labels"])
        return loss

    losses = epoch_means(3, trees, once)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.6 * losses[0], losses
    assert len({t["n"] for t in trees}) > 3 and step.cache_info().compiles == 2  # trees as they come (issue 12)


def test_cnn_trains(bench_modules, monkeypatch):
    from lantern.data import synthetic_mnist
    bc = bench_modules[2]
    monkeypatch.setattr(bc, "LR", 0.1)  # the benchmark's lr 0.01 needs more steps than a test should take
    x, y = synthetic_mnist(200)
    params = bc.init_params()
    step, opt = bc.lantern_step()
    s = {"p": params, "v": opt.init(params)}

    def once(b):
        s["p"], s["v"], loss = step(s["p"], s["v"], x[b:b + 50], y[b:b + 50])
        return loss

    losses = epoch_means(5, range(0, 200, 50), once)
    assert losses[0] == pytest.approx(np.log(10), abs=0.1)
    assert losses[-1] < 0.5 * losses[0], losses
