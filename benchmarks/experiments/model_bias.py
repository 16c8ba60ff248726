"""Bias of the model-based estimator (iapo.model), measured, not assumed.

    .venv/bin/python benchmarks/experiments/model_bias.py [--reps 10] [--envs a,b]
        [--prompts K]

For each environment, split the queries 80/20 (seed r), draw for every prompt one group of g
completions (g = 2 or 4) on each of as many uniformly drawn training queries as there are
training queries, fit the model, and compare its Q(c, p, n) with the exact Q on the training
queries. Prints, per n, the mean error (bias) over prompts, contexts and repetitions with its
SEM over repetitions, and the root mean squared error.

``--prompts K``: also, per environment and g, the K prompts of highest exact Q(c, p, N_max)
in the first context (averaged over the repetitions' training queries), each with that Q
and the model's error there (mean over repetitions): how much the bias differs from prompt
to prompt, against how much the prompts differ.

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
    ap.add_argument("--prompts", type=int, default=0,
                    help="print the bias at N_max of the K best prompts (first context)")
    args = ap.parse_args()
    ranked: list[str] = []
    print(f"{'env':<18} {'g':>2} " + " ".join(f"{'n=' + str(n):>16}" for n in NS))
    for name in args.envs.split(","):
        env = get_environment(name)
        table = env.query_table(progress=False)
        p = env.problem
        for g in (2, 4):
            bias = np.zeros((args.reps, len(NS)))
            sq = np.zeros((args.reps, len(NS)))
            top = np.zeros((2, args.reps, p.n_prompts))  # exact Q and error at N_max, c = 0
            for r in range(args.reps):
                train, _ = train_test_split(env.n_queries, r)
                oracle = SimulatedOracle(env, train, 10**9, np.random.default_rng(r))
                model = ModelQTable(p)
                model.update(oracle.pull([Pull(q, g, train.size) for q in range(p.n_prompts)]))
                exact = table.q(p, train)
                err = model.mean - exact  # [C, P, N]
                top[:, r] = exact[0, :, -1], err[0, :, -1]
                for j, n in enumerate(NS):
                    bias[r, j] = err[:, :, n - 1].mean()
                    sq[r, j] = (err[:, :, n - 1] ** 2).mean()
            cells = [f"{bias[:, j].mean():+.4f}±{bias[:, j].std(ddof=1) / np.sqrt(args.reps):.4f}"
                     f" ({np.sqrt(sq[:, j].mean()):.3f})" for j in range(len(NS))]
            print(f"{name:<18} {g:>2} " + " ".join(f"{c:>16}" for c in cells))
            q_top, e_top = top.mean(axis=1)
            ranked += [f"{name:<18} {g:>2} prompt {i:>3}: Q {q_top[i]:.4f}, error "
                       f"{e_top[i]:+.4f}" for i in np.argsort(-q_top)[:args.prompts]]
    print("cells: mean error (bias) ± SEM over repetitions (RMSE)")
    if ranked:
        print(f"at N_max, first context, the {args.prompts} best prompts by exact Q:")
        print("\n".join(ranked))


if __name__ == "__main__":
    main()
