"""Bias of the model-based estimator (iapo.model), measured, not assumed.

    .venv/bin/python benchmarks/experiments/model_bias.py [--reps 10] [--envs a,b]

For each environment, split the queries 80/20 (seed r), draw for every prompt one group of g
completions (g = 2 or 4) on each of as many uniformly drawn training queries as there are
training queries, fit the model, and compare its Q(c, p, n) with the exact Q on the training
queries. Prints, per n, the mean error (bias) over prompts, contexts and repetitions with its
SEM over repetitions, and the root mean squared error.

Cited by docs/beyond.md and docs/default-learner.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.envs import get_environment
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.pulls import Pull
from iapo.split import train_test_split

NS = (1, 2, 4, 8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--envs", default="math,commonsenseqa,synth-bernoulli,synth-categorical")
    args = ap.parse_args()
    print(f"{'env':<18} {'g':>2} " + " ".join(f"{'n=' + str(n):>16}" for n in NS))
    for name in args.envs.split(","):
        env = get_environment(name)
        table = env.query_table(progress=False)
        p = env.problem
        for g in (2, 4):
            bias = np.zeros((args.reps, len(NS)))
            sq = np.zeros((args.reps, len(NS)))
            for r in range(args.reps):
                train, _ = train_test_split(env.n_queries, r)
                oracle = SimulatedOracle(env, train, 10**9, np.random.default_rng(r))
                model = ModelQTable(p)
                model.update(oracle.pull([Pull(q, g, train.size) for q in range(p.n_prompts)]))
                err = model.mean - table.q(p, train)  # [C, P, N]
                for j, n in enumerate(NS):
                    bias[r, j] = err[:, :, n - 1].mean()
                    sq[r, j] = (err[:, :, n - 1] ** 2).mean()
            cells = [f"{bias[:, j].mean():+.4f}±{bias[:, j].std(ddof=1) / np.sqrt(args.reps):.4f}"
                     f" ({np.sqrt(sq[:, j].mean()):.3f})" for j in range(len(NS))]
            print(f"{name:<18} {g:>2} " + " ".join(f"{c:>16}" for c in cells))
    print("cells: mean error (bias) ± SEM over repetitions (RMSE)")


if __name__ == "__main__":
    main()
