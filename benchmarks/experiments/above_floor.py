"""Where the default learner's regret above the floor comes from: its screening, or its
decision among the prompts the screening kept.

    .venv/bin/python benchmarks/experiments/above_floor.py ENV [--budgets 5000,20000]
        [--runs 200]

On the bench's runs (the same environments, splits, seeds and oracles as `iapo bench --seed
0`, so the totals match its runs.csv), per run and context:

- **floor**: the training split's exact best arm, scored on the test split (as
  `floor.py`): what a learner that knew its training queries' Q exactly would lose;
- **screened**: the training split's exact best arm among the prompts `psst-auto`'s
  screening kept for the context (its trace's `screened_prompts`), scored on the test split;
- **psst-auto**: the arm it chose.

So regret = floor + (screened - floor), what the screening cut, + (psst-auto - screened),
what the decision among the kept prompts lost. Printed per budget with paired SEMs; also
the regret on the training queries themselves (how far the choice is from the exact best
on the data it drew from). Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.bench.runner import run_oracle, run_split
from iapo.envs.base import acr, best_arms, optimal_acr
from iapo.learners import get_learner

LEARNER = "psst-auto"


def one_run(env_name: str, budget: int, run: int) -> tuple[float, float, float, float]:
    """(floor, screened, psst-auto, training-split regret) of one bench run."""
    env, train, q_test = run_split(env_name, 0, run, 0.2)
    pr = env.problem.grid.probabilities
    q_train = env.query_table(progress=False).q(env.problem, train)
    oracle, rng = run_oracle(env, train, LEARNER, budget, 0, run)
    result = get_learner(LEARNER).learner(env.problem, oracle, budget, rng)
    best = optimal_acr(q_test, pr)
    kept = np.full(q_train.shape, -np.inf)
    for c, prompts in enumerate(result.trace.info["screened_prompts"]):
        kept[c, prompts] = q_train[c, prompts]
    return (best - acr(q_test, best_arms(q_train), pr),
            best - acr(q_test, best_arms(kept), pr),
            best - acr(q_test, result.choices, pr),
            optimal_acr(q_train, pr) - acr(q_train, result.choices, pr))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("env")
    ap.add_argument("--budgets", default="5000,20000")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    print(f"{args.env}, {LEARNER}, {args.runs} runs: mean (SEM over runs)")
    for budget in (int(b) for b in args.budgets.split(",")):
        rows = np.array([one_run(args.env, budget, r) for r in range(args.runs)])
        floor, screened, actual, on_train = rows.T

        def show(x: np.ndarray) -> str:
            return f"{x.mean():.4f} ({x.std(ddof=1) / np.sqrt(x.size):.4f})"

        print(f"  T = {budget:,}: regret {show(actual)} = floor {show(floor)} "
              f"+ screening {show(screened - floor)} + decision {show(actual - screened)}; "
              f"on the training queries {show(on_train)}")


if __name__ == "__main__":
    main()
