"""Is the report's probability that the chosen arm is the best calibrated?

For each of ``--runs`` runs of the evaluation protocol (the bench's split and seeds) on a
shipped environment, the learner trains through a recording oracle; the report's confidence
(:func:`iapo.report.assess`: the hierarchical posterior of :mod:`iapo.posterior` where every
answer is right or its query's one wrong answer and 30 queries answered wrong twice show it
(:func:`iapo.posterior.shown_binary`), else the bootstrap of the learner's
estimator; ``--method`` forces one) then predicts, per context, P(best) (the chosen arm has
the highest Q) and P(within margin) (its Q is at most the margin below the best).

The truth (``--truth``) is the exact Q on the run's test split (``test``: the quantity the
bench scores), or, for ``synth-bernoulli`` only, the exact Q over the distribution its
queries are drawn from (``population``: Gauss-Hermite quadrature,
:func:`iapo.envs.synthetic.synth_bernoulli_population_q`), which no finite split gives.
Calibration: over all (run, context) pairs, the mean prediction against the observed
frequency, overall and in bins of the prediction (the weighted mean gap of the bins is the
expected calibration error, ECE). Beside it, the chosen arms' mean estimate (policy.json's
q_hat) against their mean true Q: the bias a reader of the report's training Q meets.

    .venv/bin/python benchmarks/experiments/p_best.py --env synth-bernoulli --truth population
    .venv/bin/python benchmarks/experiments/p_best.py --env commonsenseqa --runs 200

Each probability says whether its gap and ECE are both within ``--tolerance`` (0.05); the
exit code is 1 when P(best)'s are not.
Cited by docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from iapo.bench.runner import run_environment_seed, run_oracle, run_queries
from iapo.envs.synthetic import synth_bernoulli_population_q
from iapo.learners import get_learner
from iapo.report import TIE, Recorder, assess, estimator_for

MARGINS = (0.01, 0.02, 0.05)
BINS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0 + 1e-9])


def one_run(env_name: str, learner: str, budget: int, run: int, seed: int, kind: str,
            method: str) -> list[dict[str, Any]]:
    env, train, test = run_queries(env_name, seed, run, 0.2)
    problem = env.problem
    truth = (synth_bernoulli_population_q(run_environment_seed(seed, run))
             if kind == "population" else env.query_table(progress=False).q(problem, test))
    oracle, rng = run_oracle(env, train, learner, budget, seed, run)
    recorder = Recorder(oracle)
    spec = get_learner(learner)
    result = spec.learner(problem, recorder, budget, rng)
    _, make = estimator_for(spec.learner, problem, result.trace.info)
    conf = assess(make, problem, recorder.observations, result.choices,
                  np.random.default_rng([seed, run, 7]), MARGINS, method)
    rows = []
    for i, ch in enumerate(result.choices):
        if ch.n is None:
            continue
        mine = truth[i, ch.prompt, ch.n - 1]
        best = truth[i].max()
        row = {"run": run, "context": i, "q_hat": float(ch.q_hat), "q_true": float(mine),
               "pred_best": float(conf.p_best[i, ch.prompt, ch.n - 1]),
               "best": bool(mine >= best - TIE)}
        for j, m in enumerate(MARGINS):
            row[f"pred_within_{m}"] = float(conf.p_within[j, i])
            row[f"within_{m}"] = bool(mine >= best - m - TIE)
        rows.append(row)
    return rows


def calibration(pred: np.ndarray, observed: np.ndarray) -> dict[str, Any]:
    """Overall mean prediction and frequency, and per bin of the prediction."""
    bins = []
    ece = 0.0
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        inside = (pred >= lo) & (pred < hi)
        if not inside.any():
            continue
        gap = float(pred[inside].mean() - observed[inside].mean())
        ece += inside.mean() * abs(gap)
        bins.append({"bin": [float(lo), float(min(hi, 1.0))], "count": int(inside.sum()),
                     "predicted": float(pred[inside].mean()),
                     "observed": float(observed[inside].mean())})
    return {"predicted": float(pred.mean()), "observed": float(observed.mean()),
            "gap": float(pred.mean() - observed.mean()), "ece": float(ece), "bins": bins}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="commonsenseqa")
    ap.add_argument("--learner", default="psst-auto")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--truth", choices=("test", "population"), default="test")
    ap.add_argument("--method", choices=("auto", "posterior", "bootstrap"), default="auto",
                    help="how the report gets its confidence (iapo.report.assess): auto, the "
                         "posterior where the answers are right or one wrong answer per query, "
                         "with evidence enough (iapo.posterior.shown_binary)")
    args = ap.parse_args(argv)
    if args.truth == "population" and args.env != "synth-bernoulli":
        ap.error("--truth population needs --env synth-bernoulli, the one environment whose "
                 "query distribution is known exactly; use --truth test for the others")
    t0 = time.perf_counter()
    per_run = Parallel(n_jobs=args.jobs)(
        delayed(one_run)(args.env, args.learner, args.budget, r, args.seed, args.truth,
                         args.method)
        for r in range(args.runs))
    rows = [row for run in per_run for row in run]
    out: dict[str, Any] = {"env": args.env, "learner": args.learner, "budget": args.budget,
                           "truth": args.truth, "method": args.method, "runs": args.runs,
                           "margins": MARGINS,
                           "pairs": len(rows),
                           "chosen_q_hat": float(np.mean([r["q_hat"] for r in rows])),
                           "chosen_q_true": float(np.mean([r["q_true"] for r in rows])),
                           "seconds": round(time.perf_counter() - t0, 1)}
    for kind in ("best", *(f"within_{m}" for m in MARGINS)):
        pred = np.array([r[f"pred_{kind}"] for r in rows])
        obs = np.array([r[kind] for r in rows], dtype=float)
        cal = calibration(pred, obs)
        cal["within_tolerance"] = abs(cal["gap"]) <= args.tolerance \
            and cal["ece"] <= args.tolerance
        out[kind] = cal
    print(json.dumps(out, indent=2))
    return 0 if out["best"]["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
