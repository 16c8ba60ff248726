"""Which prompt does the majority-voting model rank first, with its fixed prior and with the
prior fitted to the answers? Measured on the training queries, where the truth is known.

    .venv/bin/python benchmarks/experiments/mv_prior.py [--runs 10] [--groups 0.2,0.5,1,3,10]

For runs 0..R-1 of each environment (the bench's split and synthetic instance), every prompt
gets k groups of 2 answers per training query (k x the training queries, each on a query drawn
at random; k below 1 leaves most queries unseen, as psst-auto's first screening rounds do).
The per-query model (:class:`iapo.model.ModelQTable`) is fitted to them with ``prior="fixed"``
(Dirichlet(1/2) on each query) and ``prior="fitted"`` (the logit-normal fitted to the answers,
where they are binary; else the fixed one), and the best arm of each context by each is scored
on the exact Q of the training queries: its regret there, averaged over contexts by their
probabilities. Printed per k: the mean regret over runs (SEM), and whether the answers were
binary. Cited by docs/default-learner.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.bench.runner import run_queries
from iapo.envs.base import acr, best_arms
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.pulls import Pull


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--groups", default="0.2,0.5,1,3,10",
                    help="groups of 2 per training query, per prompt")
    ap.add_argument("--envs", default="synth-bernoulli,math")
    args = ap.parse_args()
    print(f"{'env':<16} {'groups':>6}  {'fixed prior':>16}  {'fitted prior':>16}  binary")
    for name in args.envs.split(","):
        for k in (float(g) for g in args.groups.split(",")):
            regret: dict[str, list[float]] = {"fixed": [], "fitted": []}
            binary = []
            for run in range(args.runs):
                env, train, _ = run_queries(name, 0, run, 0.2)
                env.query_table(progress=False)
                p = env.problem
                probs = p.grid.probabilities
                q = env.q(train)
                best = float(q.reshape(q.shape[0], -1).max(axis=1) @ probs)
                oracle = SimulatedOracle(env, train, 10**9, np.random.default_rng(run))
                count = max(1, round(k * train.size))
                observations = oracle.pull([Pull(i, 2, count) for i in range(p.n_prompts)])
                for prior in regret:
                    model = ModelQTable(p, prior=prior)
                    model.update(observations)
                    regret[prior].append(best - acr(q, best_arms(model.mean), probs))
                    if prior == "fitted":
                        binary.append(model.fitted)
            cells = [f"{np.mean(v):.4f} ({np.std(v, ddof=1) / np.sqrt(len(v)):.4f})"
                     for v in regret.values()]
            print(f"{name:<16} {k:>6g}  {cells[0]:>16}  {cells[1]:>16}  "
                  f"{'yes' if all(binary) else 'no' if not any(binary) else 'some'}", flush=True)
    print("cells: regret on the training queries of each prior's best arms, mean over runs (SEM)")


if __name__ == "__main__":
    main()
