"""Wall time of the paper's protocol on `math` and `commonsenseqa` (the paper's 10 learners x
5 budgets x ``--runs`` runs each, ``--workers`` processes, into a fresh folder), now against a
pinned commit, measured in one run.

    .venv/bin/python benchmarks/perf/bench_protocol.py --commit REV [--workers 2] [--runs 200]
        [--rounds 1] [--max-ratio 1.1]

The commit is checked out into a temporary git worktree (benchmarks/pinned.py) and run with
this venv's Python; the two trees run alternately, ``--rounds`` times each (each round in the
other order), and the fastest of each is kept. Target: now / pinned at most ``--max-ratio``
(default 1.1: no slower than the pinned commit, within the noise; ``make bench`` pins HEAD).
docs/measured.md gives the target against an older commit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from targets import Target, verdict

# pinned.py stays at benchmarks/ top level, shared with benchmarks/same_results.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pinned import ROOT, worktree  # noqa: E402

LEARNERS = "psst,psst-k1,psst-k4,psst-k8,uniform,egreedy,softmax,ucb,triple-n1,triple-nrand"


def protocol(src: Path, runs: int, workers: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "iapo.cli", "bench", "--envs", "math,commonsenseqa",
             "--learners", LEARNERS, "--runs", str(runs), "--workers", str(workers),
             "--out", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            cwd=src.parent,
        )
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commit", required=True, help="the commit to compare with, e.g. HEAD")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-ratio", type=float, default=1.1)
    args = ap.parse_args()
    with worktree(args.commit) as pinned:
        times: dict[Path, list[float]] = {pinned / "src": [], ROOT / "src": []}
        for r in range(args.rounds):
            for src in list(times)[::1 if r % 2 == 0 else -1]:  # pinned first, then now first
                times[src].append(protocol(src, args.runs, args.workers))
        then, now = times.values()
    print(f"protocol (math + commonsenseqa, 10 learners x 5 budgets x {args.runs} runs, "
          f"{args.workers} workers), fastest of {args.rounds}: now {min(now):.1f} s, "
          f"pinned {args.commit} {min(then):.1f} s")
    verdict("bench_protocol",
            [Target(f"protocol now / {args.commit}", min(now) / min(then), args.max_ratio)])


if __name__ == "__main__":
    main()
