"""What a retraining gains by reusing the traffic's groups: `--retrain K` with and without.

    .venv/bin/python benchmarks/experiments/banked_retrain.py ENV [--runs 50] [--workers 2]
        [--retrain 6000] [--budget F] [--no-drift] [--rules fresh,reuse]

`iapo simulate --retrain K` spends the saved learning budget as one run of the learner on
the traffic's queries, and gives that run first, free, the groups the traffic has drawn
(`iapo.pulls.Reusing`, docs/continual.md). ``fresh`` gives it none (the run pays for every
group it pulls, as the core did before); ``reuse`` is the core. The runs are paired: the
same requests, training, drift and seeds, so the two differ only in the bank.

Prints, per rule, the window's regret per request and its ratio to frozen (requests 6,000 to
7,000, drift at request 2,000; ``F`` 0.1 by default) or, with ``--no-drift`` (``F`` 0.05),
the cumulative regret against frozen at 20,000 requests; the completions reused per run;
and, for ``reuse``, its paired difference from ``fresh`` (mean and SEM over runs).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import joblib
import numpy as np

import iapo.continual
from iapo import simulate
from iapo.continual import ContinualSettings
from iapo.pulls import Observation, Oracle, Reusing

RULES = ("fresh", "reuse")


class NoBank(Reusing):
    """A retraining's oracle with nothing banked: every group drawn and paid."""

    def __init__(self, oracle: Oracle, groups: list[Observation], rng: np.random.Generator,
                 taken: Any = None) -> None:
        super().__init__(oracle, [], rng, taken)


def one_run(config: simulate.SimConfig, rule: str, run: int) -> dict[str, Any]:
    """`iapo.simulate.simulate_run` with the rule's bank."""
    iapo.continual.Reusing = NoBank if rule == "fresh" else Reusing  # type: ignore[misc]
    return simulate.simulate_run(config, run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("env")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--retrain", type=int, default=6000)
    ap.add_argument("--budget", type=float, default=None,
                    help="the learning budget (default: 0.1 with drift, 0.05 without)")
    ap.add_argument("--no-drift", action="store_true")
    ap.add_argument("--rules", default=",".join(RULES))
    args = ap.parse_args()
    rules = args.rules.split(",")
    if set(rules) - set(RULES):
        raise SystemExit(f"--rules: choose among {', '.join(RULES)}")
    budget = args.budget if args.budget is not None else (0.05 if args.no_drift else 0.1)
    config = simulate.SimConfig(
        env=args.env, budgets=(budget,), runs=args.runs,
        scenario=simulate.Scenario(drift_at=None if args.no_drift else 2000),
        settings=ContinualSettings(retrain=args.retrain))
    key = f"continual@{budget:g}"
    measure: dict[str, np.ndarray] = {}
    for rule in rules:
        start = time.time()
        runs = joblib.Parallel(n_jobs=args.workers)(
            joblib.delayed(one_run)(config, rule, r) for r in range(args.runs))
        summary = simulate.summarize(config, runs)
        row = summary["conditions"][key]
        curves = np.array([r[key]["regret"] for r in runs])
        if args.no_drift:
            measure[rule] = curves[:, -1] - np.array([r["frozen"][-1] for r in runs])
            diff, sem = row["diff_final"]
            what = f"cumulative vs frozen at 20,000 {diff:+.1f} ({sem:.1f})"
        else:
            a, b = (w // simulate.CHECKPOINT - 1 for w in summary["window"])
            measure[rule] = (curves[:, b] - curves[:, a]) / simulate.CHECKPOINT
            w, ws = row["window_regret"]
            what = f"window {w:.4f} ({ws:.4f}), ratio to frozen {row['window_ratio']:.2f}"
        paired = ""
        if rule == "reuse" and "fresh" in measure:
            d = measure["reuse"] - measure["fresh"]
            fmt = "{:+.1f} ({:.1f})" if args.no_drift else "{:+.4f} ({:.4f})"
            paired = ", reuse - fresh " + fmt.format(d.mean(), d.std(ddof=1) / np.sqrt(d.size))
        reused = np.mean([r[key]["reused_completions"] for r in runs])
        print(f"{args.env} {rule}: {what}{paired}, completions reused per run {reused:,.0f}, "
              f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
