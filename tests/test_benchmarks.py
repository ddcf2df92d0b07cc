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

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"framework", "median_ms", "min_ms", "max_ms", "first_call_s"}


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
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert result["rows"][0]["framework"] == "lantern"
    return result


@pytest.mark.parametrize("script,names", [
    ("bench_rnn.py", ["rnn_h100_s25_b1", "rnn_h50_s20_b20"]),
    ("bench_lstm.py", ["lstm_h50_s20_b1", "lstm_h200_s20_b1"]),
    ("bench_treelstm.py", ["treelstm"]),
])
def test_benchmark_quick_lantern(tmp_path, script, names):
    run_quick(tmp_path, script, "--frameworks", "lantern")
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


def test_unknown_framework_is_an_error():
    proc = subprocess.run([sys.executable, "benchmarks/bench_cnn.py", "--quick", "--frameworks", "tensorflow"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown frameworks" in proc.stderr
