"""Every learner's wall time per training run, as a ratio to PSST's, measured in one run.

    .venv/bin/python benchmarks/bench_speed.py [--env commonsenseqa] [--budget 20000] [--runs 20]

Each learner trains ``--runs`` times on the environment's first 80% of queries at T =
``--budget``; learners alternate run by run, so that the machine's drift hits all alike.
Prints the median milliseconds per run and the ratio to PSST's median (target for the
sequential baselines egreedy, softmax and ucb: at most 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from iapo.envs import get_environment
from iapo.learners import LEARNERS, get_learner
from iapo.oracle import SimulatedOracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="commonsenseqa")
    ap.add_argument("--budget", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--learners", default=",".join(LEARNERS))
    args = ap.parse_args()
    env = get_environment(args.env)
    env.query_table(progress=False)
    train = np.arange(int(env.n_queries * 0.8))
    names = args.learners.split(",")
    times: dict[str, list[float]] = {name: [] for name in names}
    for s in range(args.runs + 1):  # run 0 warms caches and is not counted
        for name in names:
            oracle = SimulatedOracle(env, train, args.budget, np.random.default_rng(s))
            t0 = time.perf_counter()
            get_learner(name).learner(env.problem, oracle, args.budget,
                                      np.random.default_rng(10_000 + s))
            if s:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["psst"]) if "psst" in times else float("nan")
    print(f"{args.env}, T = {args.budget:,}, median of {args.runs} runs per learner")
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:<14} {med * 1000:8.1f} ms   {med / base:5.2f} x psst")


if __name__ == "__main__":
    main()
