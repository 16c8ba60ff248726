"""Wall time of the paper's full protocol on `math` and `commonsenseqa`: the paper's 10
learners x 5 budgets x 200 runs each, 2 worker processes, into a fresh folder; with
``--commit``, the same for a pinned earlier commit (checked out into a temporary git worktree
and run with this venv's Python), alternately, and the ratio now / pinned.

    .venv/bin/python benchmarks/bench_protocol.py [--workers 2] [--runs 200] [--commit c339da7]
        [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pinned import ROOT, worktree

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
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--commit", default=None)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    what = (f"full protocol (math + commonsenseqa, 10 learners x 5 budgets x {args.runs} "
            f"runs, {args.workers} workers)")
    if args.commit is None:
        elapsed = protocol(ROOT / "src", args.runs, args.workers)
        print(f"{what}: {elapsed:.0f} s ({elapsed / 60:.1f} min)")
        return
    with worktree(args.commit) as pinned:
        now, then = [], []
        for _ in range(args.rounds):
            then.append(protocol(pinned / "src", args.runs, args.workers))
            now.append(protocol(ROOT / "src", args.runs, args.workers))
    print(f"{what}: now {min(now):.0f} s, pinned {args.commit} {min(then):.0f} s, "
          f"now / pinned = {min(now) / min(then):.2f}")


if __name__ == "__main__":
    main()
