"""How often do a run's majority-voting answers look binary (every query's wrong answers one and
the same), and how often would that be by chance? The evidence rule of the fitted prior.

    .venv/bin/python benchmarks/experiments/binary_evidence.py [--runs 40] \
        [--envs commonsenseqa,math,synth-bernoulli] [--budgets 1000,2000,5000]

For runs 0..R-1 (the bench's split and synthetic instance), psst-auto with ``prior="fitted"``
spends T; its answers are then fed, in the order they came, to a fresh
:class:`iapo.model.ModelQTable`, and after each batch it is asked whether they are binary
(:meth:`~iapo.model.ModelQTable.binary`). Printed per (environment, T): the runs in which any
prefix of the answers was called binary, with the evidence rule (``BINARY_EVIDENCE`` queries
with two or more wrong answers) and without it; at the run's end, the queries with two or more
wrong answers, and the share of them that got two different ones (the rate at which a task
with several wrong answers shows it). Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo import model as model_module
from iapo.bench.runner import run_oracle, run_queries
from iapo.learners import get_learner
from iapo.model import ModelQTable
from iapo.report import Recorder


def wrong_answers(model: ModelQTable) -> tuple[int, int]:
    """Queries with two or more wrong answers, and those of them with two different ones."""
    votes = model._votes
    asked = np.flatnonzero(votes.sum(axis=(0, 2)) > 0)
    answers = votes[:, asked].sum(axis=0)
    answers[np.arange(asked.size), model._gold[asked]] = 0
    twice = answers.sum(axis=1) >= 2
    return int(twice.sum()), int((twice & ((answers > 0).sum(axis=1) >= 2)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--envs", default="commonsenseqa,math,synth-bernoulli")
    ap.add_argument("--budgets", default="1000,2000,5000")
    args = ap.parse_args()
    evidence = model_module.BINARY_EVIDENCE
    print(f"{'env':<16} {'T':>6}  {'binary, rule':>12}  {'binary, none':>12}  "
          f"{'wrong twice':>11}  {'two kinds':>9}")
    for name in args.envs.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            ruled = bare = 0
            twice: list[int] = []
            kinds: list[float] = []
            for run in range(args.runs):
                env, train, _ = run_queries(name, 0, run, 0.2)
                oracle, rng = run_oracle(env, train, "psst-auto", budget, 0, run)
                recorder = Recorder(oracle)
                get_learner("psst-auto").configure(prior="fitted").learner(
                    env.problem, recorder, budget, rng)
                model = ModelQTable(env.problem, prior="fitted")
                seen_rule = seen_bare = False
                for o in recorder.observations:
                    model.update([o])
                    seen_rule |= model.binary() is not None
                    model_module.BINARY_EVIDENCE = 0
                    try:
                        seen_bare |= model.binary() is not None
                    finally:
                        model_module.BINARY_EVIDENCE = evidence
                ruled += seen_rule
                bare += seen_bare
                t, k = wrong_answers(model)
                twice.append(t)
                kinds.append(k / t if t else float("nan"))
            print(f"{name:<16} {budget:>6}  {ruled:>5} of {args.runs:<3}  {bare:>5} of "
                  f"{args.runs:<3}  {np.mean(twice):>11.1f}  {np.nanmean(kinds):>9.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
