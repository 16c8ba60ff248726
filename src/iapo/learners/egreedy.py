"""epsilon-greedy: the best estimated arm of the sampled context with probability 1 - epsilon,
else a uniformly random arm (paper: epsilon = 0.15). Arms never observed count as 0."""

from __future__ import annotations

import numpy as np

from iapo.learners.base import LearnerResult
from iapo.learners.sequential import argmax_random_ties, estimates_or_zero, sequential
from iapo.problem import Problem
from iapo.pulls import Oracle


def learn_egreedy(
    problem: Problem,
    oracle: Oracle,
    budget: int,
    rng: np.random.Generator,
    epsilon: float = 0.15,
    batches: int = 50,
    estimator: str = "blocks",
) -> LearnerResult:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon={epsilon} must lie in [0, 1]")

    def select(stats, contexts, feasible, rng):  # type: ignore[no-untyped-def]
        score = np.where(feasible, estimates_or_zero(stats), -np.inf)
        greedy = argmax_random_ties(score, contexts, rng)
        explore = rng.random(contexts.size) < epsilon
        return np.where(explore, rng.choice(np.flatnonzero(feasible), size=contexts.size), greedy)

    return sequential(problem, oracle, budget, rng, select, batches, estimator)
