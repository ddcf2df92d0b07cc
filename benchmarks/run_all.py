"""Run every side-by-side benchmark (``make bench``); pass ``--quick`` or ``--threads N`` through."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_rnn.py", "bench_lstm.py"]

if __name__ == "__main__":
    for name in BENCHMARKS:
        subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]], check=True)
