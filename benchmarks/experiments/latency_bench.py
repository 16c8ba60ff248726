"""The default learner with and without the wave width W in the arm, against the
latency-aware oracle.

    .venv/bin/python benchmarks/experiments/latency_bench.py [--runs 200] [--seed 0] [--workers 2]

For ``math`` and ``commonsenseqa``, on three contexts of the mid budget (no latency weight; a
weight of 0.0003 per second of expected latency; a limit of 25 s on it), under each
environment's synthetic latency model (:class:`iapo.latency.SyntheticLatency`, defaults) and at
the paper's budgets: in run r the queries are split 80/20 by seed ``seed + r`` and the default
learner is trained twice with that seed, so on the same split and with the same oracle seed:

- with W in the arm: stop once decided, W in 1, 2, 4, ..., N_max (``--wave auto``);
- without: all N sent at once (W = N), the vote answering once decided (what the paper's
  arms pay, answered as soon as the answer is known).

Both policies are evaluated exactly on the test split against the latency-aware oracle there
(the best (p, N, W) of every context). Printed: per environment and budget, the mean regret
(SEM) of each, the mean paired difference, the two-sided paired Wilcoxon signed-rank test, and
the mean expected latency and completions per request of the chosen arms. Raw rows go to
``--out`` (a JSON-lines file, not tracked). Cited by docs/latency.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from scipy.stats import wilcoxon
from tqdm.auto import tqdm

from iapo.envs import get_environment
from iapo.envs.base import Environment
from iapo.learners import DEFAULT_LEARNER
from iapo.problem import Stopping
from iapo.settings import PAPER_BUDGETS
from iapo.training import train_policy

ENVS = ("math", "commonsenseqa")
CONTEXTS = ("budget=mid", "budget=mid,latency=0.0003", "budget=mid,limit=25")
VARIANTS = ("with W", "W = N")


def environments(name: str) -> dict[str, Environment]:
    """The environment on :data:`CONTEXTS`, with W in the arm and without."""
    env = get_environment(name).with_contexts(CONTEXTS)
    return {"with W": env.with_stopping(Stopping.every_width(env.problem.n_max)),
            "W = N": env.with_stopping(Stopping("decided", env.problem.n_max))}


def one_run(run: int, seed: int, budgets: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every environment, budget and variant of run ``run``."""
    rows = []
    for name in ENVS:
        envs = environments(name)
        judge = envs["with W"]  # the latency-aware oracle's arms (p, N, W)
        probs = judge.problem.grid.probabilities
        for budget in budgets:
            for variant, env in envs.items():
                policy = train_policy(env, DEFAULT_LEARNER, budget, seed + run)
                arms = judge.arm_table(np.asarray(policy.split["test"]))
                rows.append({
                    "env": name, "budget": budget, "run": run, "variant": variant,
                    "regret": arms.optimal_acr(probs) - arms.acr(policy.choices, probs),
                    "latency": float(arms.values(arms.latency, policy.choices) @ probs),
                    "completions": float(arms.values(arms.completions, policy.choices)
                                         @ probs),
                    "choices": [[c.prompt, c.n, c.wave] for c in policy.choices]})
    return rows


def summary(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the paired comparison."""
    out = ["| env | T | regret, with W | regret, W = N | with W - (W = N) | Wilcoxon p | "
           "latency (s), with W / W = N | completions, with W / W = N |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ENVS:
        for budget in sorted({r["budget"] for r in rows}):
            cell = {v: sorted((r for r in rows if (r["env"], r["budget"], r["variant"]) ==
                               (name, budget, v)), key=lambda r: r["run"]) for v in VARIANTS}
            if not cell["with W"]:
                continue
            reg = {v: np.array([r["regret"] for r in cell[v]]) for v in VARIANTS}
            diff = reg["with W"] - reg["W = N"]
            sem = {v: reg[v].std(ddof=1) / np.sqrt(reg[v].size) for v in VARIANTS}
            p = wilcoxon(diff).pvalue if np.any(diff != 0) else 1.0
            lat = {v: np.mean([r["latency"] for r in cell[v]]) for v in VARIANTS}
            paid = {v: np.mean([r["completions"] for r in cell[v]]) for v in VARIANTS}
            out.append(f"| {name} | {budget:,} | {reg['with W'].mean():.4f} "
                       f"({sem['with W']:.4f}) | {reg['W = N'].mean():.4f} "
                       f"({sem['W = N']:.4f}) | {diff.mean():+.4f} "
                       f"({diff.std(ddof=1) / np.sqrt(diff.size):.4f}) | {p:.2g} | "
                       f"{lat['with W']:.1f} / {lat['W = N']:.1f} | "
                       f"{paid['with W']:.2f} / {paid['W = N']:.2f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budgets", default=",".join(map(str, PAPER_BUDGETS)))
    parser.add_argument("--out", type=Path, default=Path("docs/latency/bench-runs.jsonl"))
    args = parser.parse_args()
    budgets = tuple(int(b) for b in args.budgets.split(","))
    for name in ENVS:  # the exact tables, once, before the workers read them from the cache
        for env in environments(name).values():
            env.arm_table()
    jobs = Parallel(n_jobs=args.workers, return_as="generator")(
        delayed(one_run)(r, args.seed, budgets) for r in range(args.runs))
    rows = [row for part in tqdm(jobs, total=args.runs, desc="runs") for row in part]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{args.runs} runs, seed {args.seed}, learner {DEFAULT_LEARNER}, contexts "
          f"{'; '.join(CONTEXTS)}\n")
    print(summary(rows))


if __name__ == "__main__":
    main()
