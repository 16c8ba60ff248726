"""The regret floor of the protocol: a learner that knew the exact Q of its training split (an
infinite training budget) still has regret on the test split, because the best arm on 252 (or
1,200) training queries need not be the best on the other 20%. Per context the best arm on the
training split, scored on the test split: the floor any learner trained on that split faces.

    .venv/bin/python benchmarks/experiments/floor.py [--envs math,commonsenseqa] [--runs 200]

Uses the same 80/20 splits as `iapo bench --seed 0` (`iapo.bench.runner.run_split`). Cited by
docs/beyond.md and docs/default-learner.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.bench.runner import run_split
from iapo.envs.base import acr, best_arms, optimal_acr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", default="math,commonsenseqa")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    for name in args.envs.split(","):
        regrets = []
        for r in range(args.runs):
            env, train, q_test = run_split(name, 0, r, 0.2)
            pr = env.problem.grid.probabilities
            q_train = env.query_table(progress=False).q(env.problem, train)
            regrets.append(optimal_acr(q_test, pr) - acr(q_test, best_arms(q_train), pr))
        reg = np.array(regrets)
        print(f"{name}: regret of the training split's exact best arms on the test split "
              f"{reg.mean():.4f} (SEM {reg.std(ddof=1) / np.sqrt(reg.size):.4f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
