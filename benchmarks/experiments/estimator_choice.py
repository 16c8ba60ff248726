"""Does psst-auto's validation pick the estimator that decides best?

    .venv/bin/python benchmarks/experiments/estimator_choice.py [--envs a,b] [--budgets 1000,5000]
        [--runs 40] [--workers 2]

For every environment and budget, runs 0..R-1 of `iapo bench` (the same environments, splits,
oracle and learner seeds as its `psst-auto` rows, so the screening draws the same completions)
are trained three times: psst-auto deciding with the model, with blocks, and with the estimator
its validation picks (`decide=validate`, the default). Printed per cell: each one's mean
regret (SEM), how often validation picked the model, and the regret of an oracle that knew, per
run, which fixed estimator would do better (the best validation could do). With --parts, each
mean regret is followed by its two parts (`iapo.training.regret_parts`): the chosen prompt's
shortfall at its best N, and what the chosen N loses on that prompt.

Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from joblib import Parallel, delayed

from iapo.bench.runner import run_oracle, run_queries
from iapo.learners import get_learner
from iapo.training import regret_parts

DECIDE = ("model", "blocks", "validate")


def one_run(env_name: str, budget: int, run: int, seed: int
            ) -> tuple[list[float], bool, list[tuple[float, float]]]:
    """The regrets of the three ways to decide on one run, whether validation picked the
    model, and each regret's (prompt, scale) parts."""
    env, train, test = run_queries(env_name, seed, run, 0.2)
    env.query_table(progress=False)
    arms = env.arm_table(test)
    probs = env.problem.grid.probabilities
    best = arms.optimal_acr(probs)
    base = get_learner("psst-auto").learner
    q = env.query_table(progress=False).q(env.problem, test)
    regrets, picked, parts = [], False, []
    for decide in DECIDE:
        oracle, rng = run_oracle(env, train, "psst-auto", budget, seed, run)
        result = dataclasses.replace(base, decide=decide)(env.problem, oracle, budget, rng)
        regrets.append(best - arms.acr(result.choices, probs))
        prompt, scale = regret_parts(q, result.choices)
        parts.append((float(prompt @ probs), float(scale @ probs)))
        if decide == "validate":
            picked = result.trace.info["estimator"]["choice"] == "model"
    return regrets, picked, parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", default="math,commonsenseqa,synth-bernoulli,synth-categorical,"
                    "helpful-harmless-smollm2,summarization-smollm2")
    ap.add_argument("--budgets", default="1000,2000,5000,10000,20000")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parts", action="store_true", help="also print the regret's two parts")
    args = ap.parse_args()
    print(f"{'env':<26} {'T':>6} " + " ".join(f"{d:>16}" for d in DECIDE)
          + f" {'picks model':>11} {'per-run best':>12}")
    for env_name in args.envs.split(","):
        for budget in map(int, args.budgets.split(",")):
            out = Parallel(n_jobs=args.workers)(
                delayed(one_run)(env_name, budget, r, args.seed) for r in range(args.runs))
            reg = np.array([o[0] for o in out])  # [R, 3]
            picks = np.mean([o[1] for o in out])
            sem = reg.std(axis=0, ddof=1) / np.sqrt(len(out))
            cells = [f"{m:.4f} ({s:.4f})" for m, s in zip(reg.mean(axis=0), sem, strict=True)]
            if args.parts:
                parts = np.array([o[2] for o in out]).mean(axis=0)  # [3, 2]
                cells = [f"{c} = {a:.4f} + {b:.4f}" for c, (a, b) in zip(cells, parts,
                                                                          strict=True)]
            print(f"{env_name:<26} {budget:>6} " + " ".join(f"{c:>16}" for c in cells)
                  + f" {picks:>11.2f} {reg[:, :2].min(axis=1).mean():>12.4f}", flush=True)
    print("cells: mean regret (SEM) over the runs" + (" = prompt part + scale part"
                                                       if args.parts else ""))


if __name__ == "__main__":
    main()
