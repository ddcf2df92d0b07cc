"""Run every side-by-side benchmark (``make bench``) and print one summary table.

Options are passed through to each script (``--quick``, ``--threads N``, ``--repeats N``,
``--frameworks ...``, ``--no-fresh``). The summary (also ``results/summary.md``) gives, per
benchmark, the median time of every framework, how much faster Lantern is than the fastest
peer, and Lantern's first call / cache hit in fresh processes.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from harness import RESULTS  # noqa: E402
BENCHMARKS = {"bench_rnn.py": ["rnn_h100_s25_b1", "rnn_h50_s20_b20"],
              "bench_lstm.py": ["lstm_h50_s20_b1", "lstm_h200_s20_b1"],
              "bench_treelstm.py": ["treelstm"],
              "bench_cnn.py": ["cnn"],
              "bench_llama.py": ["llama_train", "llama_generate"]}
PEERS = ("torch eager", "torch.compile", "jax.jit")


def summary(names: list[str]) -> str:
    lines = ["| benchmark | unit | Lantern ms | " + " | ".join(f"{p} ms" for p in PEERS)
             + " | Lantern vs fastest peer | first call s (fresh, empty cache) | cache hit s (fresh: wall / in-process) |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in PEERS) + " | ---: | ---: | ---: |"]
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        med = {row["framework"]: row["median_ms"] for row in r["rows"]}
        peers = {p: med[p] for p in PEERS if p in med}
        lan = med.get("lantern")
        best = min(peers.items(), key=lambda kv: kv[1]) if peers else None
        vs = f"{best[1] / lan:.2f}x ({best[0]})" if lan and best else ""
        fresh = r.get("lantern_fresh_process", {})
        first = f"{fresh['empty_cache']['first_call_s']:.2f}" if fresh else ""
        hit = (f"{fresh['cache_hit']['wall_s']:.2f} / "
               f"{fresh['cache_hit']['imports_s'] + fresh['cache_hit']['setup_s'] + fresh['cache_hit']['first_call_s']:.2f}"
               if fresh else "")
        cells = " | ".join(f"{peers[p]:.3f}" if p in peers else "-" for p in PEERS)
        lan_s = f"{lan:.3f}" if lan else "-"
        lines.append(f"| {name} | {r.get('unit', 'step')} | {lan_s} | {cells} | {vs} | {first} | {hit} |")
    return "\n".join(lines)


def main() -> int:
    t0 = time.perf_counter()
    failed = []
    for script in BENCHMARKS:
        proc = subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]])
        if proc.returncode != 0:
            failed.append(script)
    names = [n for ns in BENCHMARKS.values() for n in ns]
    table = summary(names)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.md").write_text(table + "\n")
    print("\n## Summary\n\n" + table + f"\n\n(total {time.perf_counter() - t0:.0f} s)")
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
