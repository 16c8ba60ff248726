"""How long the gateway's learning-pull learner takes to build for a reloaded policy.

    .venv/bin/python benchmarks/experiments/learner_rebuild.py [--budget 20000]

``iapo serve --learn-budget`` builds a :class:`iapo.continual.Continual` from training's
groups for each policy it reloads, in a thread off the event loop
(:mod:`iapo.serve.learning`). Per environment: a ``psst-auto`` training run of ``--budget``
completions, its groups split into one observation per (prompt, query), as a run's store
yields them (``iapo.live.refine.training_observations``), and the median time of 5 builds.
Cited by docs/continual.md and ``iapo.serve.learning``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from iapo.bench.runner import run_oracle, run_queries
from iapo.continual import Continual, ContinualSettings
from iapo.learners import get_learner
from iapo.pulls import Observation
from iapo.simulate import Recorder


def per_query(o: Observation) -> list[Observation]:
    """One observation per query of ``o``, as a store's pools are read."""
    return [o.rows(np.array([i])) for i in range(o.count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=int, default=20_000)
    ap.add_argument("--envs", default="math,commonsenseqa,summarization-smollm2")
    args = ap.parse_args()
    for name in args.envs.split(","):
        env, train, _ = run_queries(name, 0, 0, 0.2)
        simulated, rng = run_oracle(env, train, "psst-auto", args.budget, 0, 0)
        recorder = Recorder(simulated)
        choices = get_learner("psst-auto").learner(env.problem, recorder, args.budget,
                                                   rng).choices
        groups = [g for o in recorder.observations for g in per_query(o)]
        times = []
        for _ in range(5):
            t = time.perf_counter()
            Continual(env.problem, ContinualSettings(learn_budget=0.05), groups, choices)
            times.append(time.perf_counter() - t)
        print(f"{name}: {len(groups)} groups, {sum(g.count * g.n for g in groups)} "
              f"completions: {statistics.median(times) * 1000:.0f} ms per build")


if __name__ == "__main__":
    main()
