"""How many batch submissions does optimization take? The rounds of pulls of the default
learner (and of PSST) in simulation, each one batch job in batch mode (iapo.live.batch).

    .venv/bin/python benchmarks/experiments/batch_rounds.py [--envs math,commonsenseqa]
        [--budgets 2000,20000] [--learners psst-auto,psst] [--runs 20] [--workers 2]

A run of `iapo optimize` submits one batch per round of training pulls that asks for
completions the store lacks, and one more for the test split. Prints per (environment, budget,
learner) the rounds of training pulls (mean, min, max over the runs), the completions per
round, the learner's own time per run (simulation, no model), and the wall time that the
rounds + 1 submissions take at a turnaround of 1 hour and of the 24-hour window.

Cited by docs/live.md (batch jobs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from joblib import Parallel, delayed

from iapo.bench.runner import run_oracle, run_split
from iapo.learners import get_learner


class Counting:
    """An oracle that counts its rounds (calls of pull) and what each asked for."""

    def __init__(self, oracle: Any) -> None:
        self.oracle = oracle
        self.rounds: list[int] = []

    def pull(self, requests: Any) -> Any:
        self.rounds.append(sum(r.n * r.count for r in requests))
        return self.oracle.pull(requests)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.oracle, name)


def one(env_name: str, budget: int, learner: str, run: int) -> tuple[int, int, float]:
    env, train, _ = run_split(env_name, 0, run, 0.2)
    oracle, rng = run_oracle(env, train, learner, budget, 0, run)
    counting = Counting(oracle)
    start = time.perf_counter()
    get_learner(learner).learner(env.problem, counting, budget, rng)
    return len(counting.rounds), sum(counting.rounds), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", default="math,commonsenseqa")
    ap.add_argument("--budgets", default="2000,20000")
    ap.add_argument("--learners", default="psst-auto,psst")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cells = [(e, int(b), learner) for e in args.envs.split(",")
             for b in args.budgets.split(",") for learner in args.learners.split(",")]
    jobs = [(c, run) for c in cells for run in range(args.runs)]
    results = Parallel(n_jobs=args.workers)(delayed(one)(*c, run) for c, run in jobs)
    print("| env | T | learner | rounds (min-max) | completions per round | learner time "
          "| wall time at 1 h / 24 h per submission |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for c in cells:
        got = [r for (cell, _), r in zip(jobs, results, strict=True) if cell == c]
        rounds = [g[0] for g in got]
        mean = statistics.mean(rounds)
        per_round = statistics.mean(g[1] / g[0] for g in got)
        seconds = statistics.mean(g[2] for g in got)
        subs = mean + 1  # and the test split's submission
        print(f"| {c[0]} | {c[1]:,} | {c[2]} | {mean:.1f} ({min(rounds)}-{max(rounds)}) | "
              f"{per_round:,.0f} | {seconds:.2f} s | {subs:.0f} h / {subs:.0f} days |")


if __name__ == "__main__":
    main()
