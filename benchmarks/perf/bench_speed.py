"""Every learner's wall time per training run, as a ratio to PSST's, measured in one run.

    .venv/bin/python benchmarks/perf/bench_speed.py [--env commonsenseqa] [--budget 20000]
        [--runs 20] [--learners psst,egreedy,...]

Each learner trains ``--runs`` times on the environment's first 80% of queries at T =
``--budget``; learners alternate run by run, so that the machine's drift hits all alike, and a
first run of each, which fills the per-process memos, is not counted. Prints the median
milliseconds per run and the ratio to PSST's median.

Targets (of the learners measured), guards against a slowdown at what the code holds today
with headroom (docs/measured.md): the sequential baselines egreedy, softmax and ucb at most
4.5 x PSST (measured 2.5x to 4.0x; the earlier goal of 1.5x is not met); the other
estimators, PSST with subsets, psst-model and psst-model4 at most 7 x PSST with blocks
(measured 4.2x to 6.0x; the goal of 3x, from "under 50 ms when PSST took 16.8 ms" in
docs/beyond.md, was met then and is not since PSST became twice as fast); the default
psst-auto at most 10 x (measured 6.7x before it chose its estimator by validation, 8.5x
since: on majority voting the validation fits the model on five more fold sets).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from iapo.envs import get_environment
from iapo.learners import LEARNERS, get_learner
from iapo.oracle import SimulatedOracle
from targets import Target, verdict

MAX_RATIO = {"egreedy": 4.5, "softmax": 4.5, "ucb": 4.5,
             "psst:subsets": 7.0, "psst-model": 7.0, "psst-model4": 7.0, "psst-auto": 10.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="commonsenseqa")
    ap.add_argument("--budget", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--learners", default=",".join([*LEARNERS, "psst:subsets"]))
    args = ap.parse_args()
    env = get_environment(args.env)
    env.query_table(progress=False)
    train = np.arange(int(env.n_queries * 0.8))
    names = list(dict.fromkeys(["psst", *args.learners.split(",")]))
    times: dict[str, list[float]] = {name: [] for name in names}
    for s in range(args.runs + 1):  # run 0 warms caches and is not counted
        for name in names:
            oracle = SimulatedOracle(env, train, args.budget, np.random.default_rng(s))
            t0 = time.perf_counter()
            get_learner(name).learner(env.problem, oracle, args.budget,
                                      np.random.default_rng(10_000 + s))
            if s:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["psst"])
    print(f"{args.env}, T = {args.budget:,}, median of {args.runs} runs per learner")
    for name in names:
        med = statistics.median(times[name])
        print(f"  {name:<14} {med * 1000:8.1f} ms   {med / base:5.2f} x psst")
    verdict("bench_speed", [Target(f"{name} / psst", statistics.median(times[name]) / base,
                                   MAX_RATIO[name]) for name in names if name in MAX_RATIO])


if __name__ == "__main__":
    main()
