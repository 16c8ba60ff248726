"""Speed of one training run on `commonsenseqa` at T = 20,000 (1,200 training queries) with
each estimator: PSST with blocks (the paper's), PSST with subsets (U-statistics), and the
model-based psst-model / psst-model4.

    .venv/bin/python benchmarks/bench_estimators.py [--runs 30]

Target: under 50 ms each (median, after the first run of the process: the subsets and model
tables memoize per count vector, and the first run fills that memo).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from iapo.envs import get_environment
from iapo.learners import get_learner
from iapo.oracle import SimulatedOracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    env = get_environment("commonsenseqa")
    env.query_table(progress=False)
    train = np.arange(1200)
    for name in ("psst", "psst:subsets", "psst-model", "psst-model4"):
        times = []
        for s in range(args.runs):
            oracle = SimulatedOracle(env, train, 20_000, np.random.default_rng(s))
            t0 = time.perf_counter()
            get_learner(name).learner(env.problem, oracle, 20_000, np.random.default_rng(1000 + s))
            times.append(time.perf_counter() - t0)
        print(f"{name:<14} first {times[0] * 1000:6.1f} ms, median "
              f"{statistics.median(times) * 1000:6.1f} ms ({args.runs} runs)")


if __name__ == "__main__":
    main()
