"""The benchmark scripts run (quick mode) and write their results."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,result_name", [("bench_rnn.py", "rnn_h100_s25_b1"), ("bench_lstm.py", "lstm_h50_s20_b1")])
def test_benchmark_quick(script, result_name):
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--threads", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| lantern |" in proc.stdout
    result = json.loads((ROOT / f"benchmarks/results/{result_name}.json").read_text())
    assert {"benchmark", "config", "machine", "rows", "first_step_losses"} <= set(result)
    assert result["rows"][0]["framework"] == "lantern" and result["rows"][0]["median_ms"] > 0
