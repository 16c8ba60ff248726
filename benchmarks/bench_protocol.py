"""Wall time of the paper's full protocol on `math` and `commonsenseqa`: 10 learners x 5
budgets x 200 runs each, 2 worker processes, into a fresh folder.

    .venv/bin/python benchmarks/bench_protocol.py [--workers 2] [--runs 200]

Target (2-core machine): under 10 minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "iapo.cli", "bench", "--envs", "math,commonsenseqa",
             "--runs", str(args.runs), "--workers", str(args.workers), "--out", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - t0
    print(f"full protocol (math + commonsenseqa, 10 learners x 5 budgets x {args.runs} runs, "
          f"{args.workers} workers): {elapsed:.0f} s ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
