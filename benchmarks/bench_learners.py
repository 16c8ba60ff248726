"""Learners: speed of one PSST run, and mean regret of every learner over many seeds.

    .venv/bin/python benchmarks/bench_learners.py [--seeds 100] [--budget 5000]

1. Speed: the median wall time of one PSST training run on `commonsenseqa` at T = 20,000
   (target: under 20 ms on a 2-core machine).
2. Regret: every learner on `math` and `commonsenseqa` at the given budget, one 80/20 split
   per seed shared by all learners (paired), exact regret on the test split; mean and SEM.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from iapo.envs import get_environment
from iapo.learners import LEARNERS
from iapo.learners.psst import learn_psst
from iapo.oracle import SimulatedOracle
from iapo.policy import evaluate_policy, train_policy


def psst_speed(runs: int = 50) -> float:
    env = get_environment("commonsenseqa")
    times = []
    for s in range(runs):
        oracle = SimulatedOracle(env, np.arange(1200), 20_000, np.random.default_rng(s))
        t0 = time.perf_counter()
        learn_psst(env.problem, oracle, 20_000, np.random.default_rng(10_000 + s))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def regret_table(seeds: int, budget: int) -> None:
    print(f"\nmean regret (exact, test split) at T = {budget:,}, {seeds} seeds, paired splits")
    print(f"{'env':<14} {'learner':<13} {'regret':>8} {'SEM':>8} {'used':>7}")
    for env_name in ("math", "commonsenseqa"):
        env = get_environment(env_name)
        env.query_table(progress=False)
        for name in LEARNERS:
            regrets, used = [], []
            for s in range(seeds):
                policy = train_policy(env, name, budget, s)
                regrets.append(evaluate_policy(env, policy)["regret"])
                used.append(policy.completions_used)
            r = np.array(regrets)
            sem = r.std(ddof=1) / np.sqrt(r.size)
            print(f"{env_name:<14} {name:<13} {r.mean():>8.4f} {sem:>8.4f} {max(used):>7}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--budget", type=int, default=5000)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if not args.skip_speed:
        med = psst_speed()
        print(f"PSST on commonsenseqa, T = 20,000: median {med * 1000:.1f} ms per training run")
    regret_table(args.seeds, args.budget)


if __name__ == "__main__":
    main()
