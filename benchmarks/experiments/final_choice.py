"""What the default learner's final choice among every arm of the screened prompts gives,
against Algorithm 1's choice among PSST's last survivors, on the same completions.

    .venv/bin/python benchmarks/experiments/final_choice.py [--envs math,commonsenseqa]
        [--budgets 1000,2000,5000,10000,20000] [--runs 200] [--workers 2]

On the bench's runs (the same environments, splits, seeds and oracles as `iapo bench --seed
0`, so that the first column matches its runs.csv), per run the test-split regret of
`psst-auto`'s choice and of the choice Algorithm 1 would have made on the same estimates
(its trace's ``survivors_choice``, recorded where the model decided; elsewhere the two are
one). Prints per cell the mean of each, their paired difference with its SEM over runs, and
the share of runs where some context's choice differs from Algorithm 1's (``reopened``).
Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse

import numpy as np
from joblib import Parallel, delayed

from iapo.bench.runner import run_oracle, run_queries
from iapo.learners import get_learner
from iapo.problem import Choice

LEARNER = "psst-auto"
ENVS = ("math,commonsenseqa,synth-bernoulli,synth-categorical,helpful-harmless-smollm2,"
        "summarization-smollm2")


def one_run(env_name: str, budget: int, run: int) -> tuple[float, float, bool]:
    """(psst-auto's regret, Algorithm 1's regret on the same run, whether they differ),
    scored as `iapo bench` scores a run (the environments' own arms: no stopping widths, so
    a choice's prompt and N are the whole arm)."""
    env, train, test = run_queries(env_name, 0, run, 0.2)
    env.query_table(progress=False)
    arms, pr = env.arm_table(test), env.problem.grid.probabilities
    oracle, rng = run_oracle(env, train, LEARNER, budget, 0, run)
    result = get_learner(LEARNER).learner(env.problem, oracle, budget, rng)
    chosen = result.choices
    was = result.trace.info.get("survivors_choice")
    survivors = chosen if was is None else [Choice(p, n, float("nan"), 0) for p, n in was]
    best = arms.optimal_acr(pr)
    return (best - arms.acr(chosen, pr), best - arms.acr(survivors, pr),
            any(result.trace.info.get("reopened", [])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--envs", default=ENVS)
    ap.add_argument("--budgets", default="1000,2000,5000,10000,20000")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(f"{LEARNER}, {args.runs} runs: mean regret (SEM over runs)\n")
    print("| environment | T | every screened arm | Algorithm 1's survivors | difference | "
          "runs changed |")
    print("|---|---|---|---|---|---|")
    for env_name in args.envs.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            rows = Parallel(n_jobs=args.workers)(
                delayed(one_run)(env_name, budget, r) for r in range(args.runs))
            new, old, changed = (np.array(x) for x in zip(*rows, strict=True))

            def show(x: np.ndarray) -> str:
                return f"{x.mean():.4f} ({x.std(ddof=1) / np.sqrt(x.size):.4f})"

            print(f"| `{env_name}` | {budget:,} | {show(new)} | {show(old)} | "
                  f"{(new - old).mean():+.4f} ({(new - old).std(ddof=1) / np.sqrt(new.size):.4f})"
                  f" | {changed.mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
