"""``python -m lantern.fuzz``: a fuzzing campaign (see :mod:`lantern.fuzz`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .campaign import ORACLES, generate, run_campaign, summary_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lantern.fuzz",
                                 description="Differential fuzzing: random programs, native code vs an oracle.")
    ap.add_argument("--oracle", choices=sorted(ORACLES), default="interpreter",
                    help="interpreter: staged float programs with control flow and gradients, checked against the "
                    "reference interpreter and finite differences; numpy: NumPy-API programs over every dtype, "
                    "shape and layout, checked against NumPy")
    ap.add_argument("--count", type=int, default=200, help="programs to generate and check")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (program i of seed s is reproducible)")
    ap.add_argument("--start", type=int, default=0, help="first program index")
    ap.add_argument("--batch", type=int, default=None, help="programs compiled together as one C file "
                    "(default 5 for interpreter, 10 for numpy)")
    ap.add_argument("--save-dir", type=Path, default=None, help="shrink failures and save them here as JSON")
    ap.add_argument("--shrink-seconds", type=float, default=120.0)
    ap.add_argument("--time-limit", type=float, default=None, help="stop starting batches after this many seconds")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--order", type=int, choices=(1, 2), default=1,
                    help="interpreter oracle, 2: straight-line programs, Hessian-vector products checked too")
    ap.add_argument("--size", type=int, default=None, help="top-level statements per program")
    ap.add_argument("--sanitize-share", type=float, default=0.0,
                    help="this share of the batches runs built with ASan and UBSan, in a process of its own")
    ap.add_argument("--show", type=int, default=None, metavar="INDEX", help="print program INDEX's source and exit")
    ap.add_argument("--json-summary", action="store_true", help="end with one JSON line (for a parent process)")
    a = ap.parse_args(argv)
    gen = ORACLES[a.oracle]
    if a.show is not None:
        print(gen.render([generate(a.oracle, a.seed, a.show, a.order, a.size)]))
        return 0
    batch = a.batch or (10 if a.oracle == "numpy" else 5)
    report, cov = run_campaign(a.oracle, a.count, a.seed, batch, a.save_dir, a.shrink_seconds, a.start,
                               a.time_limit, a.jobs, a.order, a.size, a.sanitize_share,
                               out=sys.stderr if a.json_summary else sys.stdout)
    if a.json_summary:
        print(summary_json(report, cov))
        return 1 if report.failures else 0
    fd = (f"; gradient vs finite differences checked on {report.fd_checked}, skipped {report.fd_skipped} "
          "(not smooth along the direction)" if a.oracle == "interpreter" else "")
    print(f"{report.programs} programs: {len(report.failures)} failures{fd}")
    print("coverage: " + ", ".join(f"{k} {v}" for k, v in sorted(cov.items(), key=lambda kv: -kv[1])))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
