"""Do the sequential baselines need many decision batches? Mean regret of egreedy, softmax
and ucb against their number of batches, paired runs (same splits, oracles and seeds).

    .venv/bin/python benchmarks/experiments/batches_ablation.py [--envs math,commonsenseqa]
        [--budgets 1000,5000,20000] [--batches 10,15,20,50,200] [--runs 100] [--workers 2]
        [--reference 50]

A grid is a number of equal batches ("50") or a number and a growth ratio ("20:1.25": a
geometric grid whose batches grow by 1.25 each).

The paper runs them fully sequentially (one decision at a time); iapo decides in batches, each
from the estimates after the one before. Prints per (environment, budget, learner) the mean
regret (SEM) per number of batches and the Wilcoxon p-value of each against the most batches.

Cited by docs/measured.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import numpy as np
from joblib import Parallel, delayed
from scipy.stats import wilcoxon

from iapo.bench.runner import run_oracle, run_split
from iapo.envs.base import acr, optimal_acr
from iapo.learners import get_learner


def one(env_name: str, budget: int, learner: str, batches: str, run: int) -> float:
    env, train, q = run_split(env_name, 0, run, 0.2)
    oracle, rng = run_oracle(env, train, learner, budget, 0, run)
    count, _, growth = batches.partition(":")  # "50", or "20:1.2" for a growing grid
    spec = get_learner(learner).configure(batches=int(count), growth=float(growth or 1.0))
    result = spec.learner(env.problem, oracle, budget, rng)
    probs = env.problem.grid.probabilities
    return optimal_acr(q, probs) - acr(q, result.choices, probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", default="math,commonsenseqa")
    ap.add_argument("--budgets", default="1000,5000,20000")
    ap.add_argument("--learners", default="egreedy,softmax,ucb")
    ap.add_argument("--batches", default="10,15,20,50,200",
                    help="batch grids: a count (equal batches) or count:growth (geometric)")
    ap.add_argument("--reference", default=None, help="the grid the others are tested "
                    "against (default: the last)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    envs, learners = args.envs.split(","), args.learners.split(",")
    budgets = [int(b) for b in args.budgets.split(",")]
    batches = args.batches.split(",")
    reference = args.reference or batches[-1]
    cells = list(itertools.product(envs, budgets, learners, batches, range(args.runs)))
    regrets = Parallel(n_jobs=args.workers, batch_size=8)(delayed(one)(*c) for c in cells)
    table = dict(zip(cells, regrets, strict=True))
    print(f"mean regret (SEM) over {args.runs} paired runs; p: Wilcoxon against "
          f"{reference}")
    print("env, T, learner | " + " | ".join(f"{b} batches" for b in batches))
    for env, budget, learner in itertools.product(envs, budgets, learners):
        ref = [table[env, budget, learner, reference, r] for r in range(args.runs)]
        row = []
        for b in batches:
            x = [table[env, budget, learner, b, r] for r in range(args.runs)]
            sem = statistics.stdev(x) / len(x) ** 0.5
            p = wilcoxon(x, ref).pvalue if b != reference and np.any(np.subtract(x, ref)) \
                else float("nan")
            row.append(f"{statistics.mean(x):.4f} ({sem:.4f}) p={p:.2g}")
        print(f"{env}, {budget}, {learner} | " + " | ".join(row))


if __name__ == "__main__":
    main()
