"""How often do a run's majority-voting answers look binary (every query's wrong answers one and
the same), and how often would that be by chance? The evidence rule of the fitted prior
(:func:`iapo.posterior.shown_binary`).

    .venv/bin/python benchmarks/experiments/binary_evidence.py [--runs 40] \
        [--envs commonsenseqa,math,synth-bernoulli] [--budgets 1000,2000,5000]

For runs 0..R-1 (the bench's split and synthetic instance), psst-auto (its prior fitted where
the answers are binary) spends T. Its answers are then fed again, batch by batch as its rounds
drew them, to :class:`iapo.model.ModelQTable`, which says after each batch whether they are
binary: with the evidence rule (``BINARY_EVIDENCE`` queries with two or more wrong answers),
as the learner judged them, and without it (the same answers; one wrong answer per query
suffices). Printed per (environment, T): the runs in which some batch was called binary with
the rule and without it; the share of batches called binary with the rule; and, at the run's
end, the queries with two or more wrong answers and the share of them that got two different
ones (how often a task with several wrong answers shows it). Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from iapo.bench.runner import run_oracle, run_queries
from iapo.learners import get_learner
from iapo.model import ModelQTable
from iapo.pulls import Observation, Pull
from iapo.report import Recorder


class Batches(Recorder):
    """A recorder that keeps each pull's observations as one batch."""

    def __init__(self, oracle):  # type: ignore[no-untyped-def]
        super().__init__(oracle)
        self.batches: list[list[Observation]] = []

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        got = super().pull(requests)
        self.batches.append(list(got))
        return got


def evidence_of(model: ModelQTable) -> tuple[int, int]:
    """Queries with two or more wrong answers, and those of them with two different ones."""
    _, answers = model.wrong_answers()
    twice = answers.sum(axis=1) >= 2
    return int(twice.sum()), int((twice & ((answers > 0).sum(axis=1) >= 2)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--envs", default="commonsenseqa,math,synth-bernoulli")
    ap.add_argument("--budgets", default="1000,2000,5000")
    args = ap.parse_args()
    print(f"{'env':<16} {'T':>6}  {'binary, rule':>12}  {'binary, none':>12}  "
          f"{'batches':>7}  {'wrong twice':>11}  {'two kinds':>9}")
    for name in args.envs.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            ruled = bare = 0
            share: list[float] = []
            twice: list[int] = []
            kinds: list[float] = []
            for run in range(args.runs):
                env, train, _ = run_queries(name, 0, run, 0.2)
                oracle, rng = run_oracle(env, train, "psst-auto", budget, 0, run)
                recorder = Batches(oracle)
                get_learner("psst-auto").learner(env.problem, recorder, budget, rng)
                rule = ModelQTable(env.problem, prior="fitted")
                none = ModelQTable(env.problem, prior="fitted", evidence=0)
                said: list[bool] = []
                seen_bare = False
                for batch in recorder.batches:
                    rule.update(batch)
                    none.update(batch)
                    said.append(rule.binary() is not None)
                    seen_bare |= none.binary() is not None
                ruled += any(said)
                bare += seen_bare
                share.append(float(np.mean(said)))
                t, k = evidence_of(rule)
                twice.append(t)
                kinds.append(k / t if t else float("nan"))
            print(f"{name:<16} {budget:>6}  {ruled:>5} of {args.runs:<3}  {bare:>5} of "
                  f"{args.runs:<3}  {np.mean(share):>7.2f}  {np.mean(twice):>11.1f}  "
                  f"{np.nanmean(kinds):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
