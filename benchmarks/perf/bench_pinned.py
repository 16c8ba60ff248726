"""PSST's speed now against a pinned commit, measured in one run.

    .venv/bin/python benchmarks/perf/bench_pinned.py --commit REV [--runs 30] [--rounds 5]
        [--max-ratio 1.1]

The commit is checked out into a temporary git worktree (benchmarks/pinned.py); both trees run
the same measurement, the median wall time of one PSST training run on `commonsenseqa` at
T = 20,000 on 1,200 training queries, in fresh subprocesses, alternately, ``--rounds`` times
each, so that the machine's drift hits both alike. Prints the medians and now / pinned.

Target: now / pinned at most ``--max-ratio`` (default 1.1: no slower than the pinned commit,
within the noise; ``make bench`` pins HEAD, so it checks the uncommitted changes).
docs/measured.md gives the targets against older commits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from targets import Target, verdict

# pinned.py stays at benchmarks/ top level, shared with benchmarks/same_results.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pinned import ROOT, worktree  # noqa: E402

MEASURE = """
import statistics, time
import numpy as np
from iapo.envs import get_environment
from iapo.learners.psst import psst
from iapo.oracle import SimulatedOracle
env = get_environment("commonsenseqa")
env.query_table(progress=False)
times = []
for s in range({runs}):
    oracle = SimulatedOracle(env, np.arange(1200), 20_000, np.random.default_rng(s))
    t0 = time.perf_counter()
    psst(env.problem, oracle, 20_000, np.random.default_rng(10_000 + s))
    times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def measure(src: Path, runs: int, cache: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "IAPO_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", MEASURE.format(runs=runs)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commit", required=True, help="the commit to compare with, e.g. HEAD")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-ratio", type=float, default=1.1)
    args = ap.parse_args()
    with worktree(args.commit) as pinned, tempfile.TemporaryDirectory() as tmp:
        now, then = [], []
        for _ in range(args.rounds):
            then.append(measure(pinned / "src", args.runs, str(Path(tmp) / "c1")))
            now.append(measure(ROOT / "src", args.runs, str(Path(tmp) / "c2")))
    a, b = statistics.median(now), statistics.median(then)
    print(f"PSST on commonsenseqa, T = 20,000, median of {args.runs} runs x {args.rounds} "
          f"alternating rounds: now {a * 1000:.1f} ms, pinned {args.commit} {b * 1000:.1f} ms")
    verdict("bench_pinned", [Target(f"PSST now / {args.commit}", a / b, args.max_ratio)])


if __name__ == "__main__":
    main()
