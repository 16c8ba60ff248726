"""The abstain rule against the vote rule on the shipped majority-voting environments.

    .venv/bin/python benchmarks/experiments/abstain.py --runs 200 --budget 5000 --workers 2

(a) Oracle: the best ACR under each rule (the exact optimum over arms per context, on all of an
environment's queries). (b) Bench: the default learner under each rule, ``--runs`` runs at the
budget ``--budget``, paired: the same split and the same training seeds under both rules
(:func:`iapo.bench.runner.run_queries`, :func:`iapo.bench.runner.run_oracle`), so every run
pairs. Reports the mean ACR and regret of each rule and the 95% CI of the paired difference
(abstain minus vote). Prints markdown; cited by docs/abstain.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from iapo.bench.runner import run_oracle, run_queries
from iapo.envs import get_environment
from iapo.envs.base import acr, optimal_acr
from iapo.learners import DEFAULT_LEARNER, get_learner
from iapo.problem import NO_ANSWER_RULES

ENVS = ("math", "commonsenseqa")


def oracle(env_name: str) -> dict[str, Any]:
    """The optimal ACR of each rule on all of ``env_name``'s queries."""
    base = get_environment(env_name)
    out: dict[str, Any] = {"env": env_name,
                           "categories": getattr(base, "no_answer", None) is not None}
    for rule in NO_ANSWER_RULES:
        env = base.with_no_answer(rule)
        out[rule] = optimal_acr(env.q(), env.problem.grid.probabilities)
    return out


def one_run(env_name: str, run: int, budget: int, seed: int, learner: str
            ) -> dict[str, float]:
    """ACR and regret of ``learner`` under each rule on run ``run`` (one split, one seed)."""
    base, train, test = run_queries(env_name, seed, run, 0.2)
    row: dict[str, float] = {}
    for rule in NO_ANSWER_RULES:
        env = base.with_no_answer(rule)
        q = env.query_table(progress=False).q(env.problem, test)
        probs = env.problem.grid.probabilities
        sim, rng = run_oracle(env, train, learner, budget, seed, run)  # the same for both
        result = get_learner(learner).learner(env.problem, sim, budget, rng)
        row[f"acr_{rule}"] = acr(q, result.choices, probs)
        row[f"regret_{rule}"] = optimal_acr(q, probs) - row[f"acr_{rule}"]
    return row


def ci(diff: np.ndarray) -> str:
    """Mean and 95% normal CI of a paired difference."""
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else float("nan")
    return f"{diff.mean():+.5f} [{diff.mean() - half:+.5f}, {diff.mean() + half:+.5f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--budget", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--learner", default=DEFAULT_LEARNER)
    args = ap.parse_args()
    t0 = time.perf_counter()
    print("## Oracle: the best ACR under each rule (all queries)\n")
    print("| env | \"no answer\" category in the data | ACR, vote | ACR, abstain | "
          "abstain - vote |")
    print("|---|---|---|---|---|")
    for env_name in ENVS:
        o = oracle(env_name)
        print(f"| {env_name} | {'yes' if o['categories'] else 'none'} | {o['vote']:.5f} | "
              f"{o['abstain']:.5f} | {o['abstain'] - o['vote']:+.5f} |")
    print(f"\n## Bench: {args.learner}, T = {args.budget:,}, {args.runs} paired runs, seed "
          f"{args.seed}\n")
    print("| env | mean ACR, vote | mean ACR, abstain | mean regret, vote | mean regret, abstain "
          "| ACR abstain - vote, mean [95% CI] | runs that differ |")
    print("|---|---|---|---|---|---|---|")
    for env_name in ENVS:
        get_environment(env_name).query_table(progress=False)  # cache the tables once
        rows = Parallel(n_jobs=args.workers)(
            delayed(one_run)(env_name, run, args.budget, args.seed, args.learner)
            for run in range(args.runs))
        a = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        diff = a["acr_abstain"] - a["acr_vote"]
        print(f"| {env_name} | {a['acr_vote'].mean():.5f} | {a['acr_abstain'].mean():.5f} | "
              f"{a['regret_vote'].mean():.5f} | {a['regret_abstain'].mean():.5f} | {ci(diff)} | "
              f"{int((np.abs(diff) > 1e-12).sum())} |")
    print(f"\n{time.perf_counter() - t0:.0f} s, {args.workers} workers")


if __name__ == "__main__":
    main()
