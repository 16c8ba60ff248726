"""Where a learner's regret comes from: the wrong prompt, or the right prompt at the wrong N.

    .venv/bin/python benchmarks/experiments/regret_parts.py ENV [--budget T] [--runs R]
        [--learners a,b]

For the policy a learner returns on runs 0..R-1 (the same environments, seeds, splits and
oracles as `iapo bench`, so the totals match its runs.csv), each context's test-split regret is
split by `iapo.training.regret_parts` into a prompt part (the best any N of the chosen prompt
could do, short of the best arm) and a scale part (what the chosen N loses on that prompt).
Printed per learner: the mean regret and its two parts (weighted by the context
probabilities), and the share of contexts whose chosen prompt is a best one.

Cited by docs/default-learner.md and docs/environments.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.bench.runner import run_oracle, run_split
from iapo.learners import get_learner
from iapo.training import regret_parts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("env")
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--learners", default="psst,uniform,psst-k1,psst-k4,ucb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    args = ap.parse_args()
    t, seed = args.budget, args.seed
    print(f"{args.env}, T = {t}, {args.runs} runs (parts weighted by context probability)")
    print(f"  {'learner':<14} {'regret':>8} {'prompt':>8} {'scale':>8} {'best prompt':>12}")
    for name in args.learners.split(","):
        parts, hits = [], []
        for run in range(args.runs):
            env, train, q = run_split(args.env, seed, run, args.test_fraction)
            oracle, rng = run_oracle(env, train, name, t, seed, run)
            result = get_learner(name).learner(env.problem, oracle, t, rng)
            prompt, scale = regret_parts(q, result.choices)
            pr = env.problem.grid.probabilities
            parts.append((prompt @ pr, scale @ pr))
            hits.append(float(np.mean(prompt == 0)))
        p_part, s_part = np.mean(parts, axis=0)
        print(f"  {name:<14} {p_part + s_part:8.4f} {p_part:8.4f} {s_part:8.4f} "
              f"{np.mean(hits):12.2f}")


if __name__ == "__main__":
    main()
