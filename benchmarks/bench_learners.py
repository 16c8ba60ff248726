"""Learners: the median wall time of one PSST training run on `commonsenseqa` at T = 20,000
(target: under 20 ms on a 2-core machine).

    .venv/bin/python benchmarks/bench_learners.py [--runs 50]

Regret of every learner over many paired runs is what `iapo bench` measures (README).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from iapo.envs import get_environment
from iapo.learners.psst import psst
from iapo.oracle import SimulatedOracle


def psst_speed(runs: int = 50) -> float:
    env = get_environment("commonsenseqa")
    times = []
    for s in range(runs):
        oracle = SimulatedOracle(env, np.arange(1200), 20_000, np.random.default_rng(s))
        t0 = time.perf_counter()
        psst(env.problem, oracle, 20_000, np.random.default_rng(10_000 + s))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    med = psst_speed(args.runs)
    print(f"PSST on commonsenseqa, T = 20,000: median {med * 1000:.1f} ms per training run "
          f"({args.runs} runs)")


if __name__ == "__main__":
    main()
