"""What pulling a round's prompts on shared queries gives psst-auto, and why.

    .venv/bin/python benchmarks/experiments/paired_queries.py [--envs a,b] [--budgets 1000,5000]
        [--runs 200] [--workers 2] [--seed 0]

Two parts, per environment:

- **Why**: on run 0's training queries, for the four best prompts at N = 1 and at N_max (first
  context), the variance over queries of the difference between two prompts' exact values
  (what shared queries leave) over the sum of their variances (what queries of their own
  carry), for every pair: the share of the differences' noise that is not how good a query's
  completions can be.
- **What it gives**: runs 0..R-1 of `iapo bench` (the same splits and seeds as its `psst-auto`
  rows), each trained twice, psst-auto with ``paired=False`` and ``paired=True``; printed per
  budget, each one's mean regret (SEM) and their paired difference (SEM).

Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
from joblib import Parallel, delayed

from iapo.bench.runner import run_oracle, run_queries
from iapo.learners import get_learner


def variance_shares(env_name: str) -> dict[int, list[float]]:
    """Per N (1 and N_max): the paired over unpaired variance of the query-level differences
    of every pair among the four best prompts (context 0, run 0's training queries)."""
    env, train, _ = run_queries(env_name, 0, 0, 0.2)
    table = env.query_table(progress=False)
    task = table.task[:, train, table.weight_index[0], :]  # [P, X, N]
    out = {}
    for n in (1, env.problem.n_max):
        value = task[:, :, n - 1]
        top = np.argsort(-value.mean(axis=1))[:4]
        out[n] = [float((value[a] - value[b]).var() / (value[a].var() + value[b].var()))
                  for a, b in itertools.combinations(top, 2)]
    return out


def one_run(env_name: str, budget: int, run: int, seed: int) -> list[float]:
    """The regret of psst-auto without and with shared queries on one bench run."""
    env, train, test = run_queries(env_name, seed, run, 0.2)
    arms = env.arm_table(test)
    probs = env.problem.grid.probabilities
    best = arms.optimal_acr(probs)
    base = get_learner("psst-auto").learner
    regrets = []
    for paired in (False, True):
        oracle, rng = run_oracle(env, train, "psst-auto", budget, seed, run)
        result = dataclasses.replace(base, paired=paired)(env.problem, oracle, budget, rng)
        regrets.append(best - arms.acr(result.choices, probs))
    return regrets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", default="math,commonsenseqa,synth-bernoulli,synth-categorical,"
                    "helpful-harmless-smollm2,summarization-smollm2")
    ap.add_argument("--budgets", default="1000,2000,5000,10000,20000")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for env_name in args.envs.split(","):
        for n, shares in variance_shares(env_name).items():
            print(f"{env_name} N = {n}: paired / unpaired variance of the differences "
                  f"{min(shares):.2f} to {max(shares):.2f}")
        for budget in map(int, args.budgets.split(",")):
            reg = np.array(Parallel(n_jobs=args.workers)(
                delayed(one_run)(env_name, budget, r, args.seed) for r in range(args.runs)))
            mean, sem = reg.mean(axis=0), reg.std(axis=0, ddof=1) / np.sqrt(args.runs)
            diff = reg[:, 1] - reg[:, 0]
            print(f"{env_name:<26} {budget:>6}  own queries {mean[0]:.4f} ({sem[0]:.4f})  "
                  f"shared {mean[1]:.4f} ({sem[1]:.4f})  shared - own {diff.mean():+.4f} "
                  f"({diff.std(ddof=1) / np.sqrt(args.runs):.4f})", flush=True)


if __name__ == "__main__":
    main()
