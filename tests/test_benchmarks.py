"""The benchmark scripts run (quick mode) and write their results."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rnn_benchmark_quick(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/bench_rnn.py", "--quick", "--threads", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| lantern |" in proc.stdout
    result = json.loads((ROOT / "benchmarks/results/rnn_h100_s25_b1.json").read_text())
    assert {"benchmark", "config", "machine", "rows", "first_step_losses"} <= set(result)
    assert result["rows"][0]["framework"] == "lantern" and result["rows"][0]["median_ms"] > 0
