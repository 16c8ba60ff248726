"""UCB: the arm of the sampled context with the highest Q_hat + c * sqrt(ln t / n), n its
number of blocks, t all blocks seen; arms never observed first (paper: c = 0.1)."""

from __future__ import annotations

import numpy as np

from iapo.learners.base import LearnerResult
from iapo.learners.sequential import argmax_random_ties, estimates_or_zero, sequential
from iapo.problem import Problem
from iapo.pulls import Oracle


def learn_ucb(
    problem: Problem,
    oracle: Oracle,
    budget: int,
    rng: np.random.Generator,
    c: float = 0.1,
    batches: int = 50,
    estimator: str = "blocks",
) -> LearnerResult:
    if not c >= 0:
        raise ValueError(f"exploration constant c={c} must be >= 0")

    def select(stats, contexts, feasible, rng):  # type: ignore[no-untyped-def]
        n = stats.counts.reshape(-1).astype(np.float64)
        t = max(float(n.sum()), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.where(n > 0, c * np.sqrt(np.log(t) / n), np.inf)
        index = estimates_or_zero(stats) + bonus
        return argmax_random_ties(np.where(feasible, index, -np.inf), contexts, rng)

    return sequential(problem, oracle, budget, rng, select, batches, estimator)
