"""Softmax (Boltzmann) exploration: an arm of the sampled context with probability
proportional to exp(Q_hat / temperature). Arms never observed count as 0."""

from __future__ import annotations

import numpy as np

from iapo.learners.base import LearnerResult
from iapo.learners.sequential import estimates_or_zero, sample_rows, sequential
from iapo.problem import Problem
from iapo.pulls import Oracle


def learn_softmax(
    problem: Problem,
    oracle: Oracle,
    budget: int,
    rng: np.random.Generator,
    temperature: float = 0.05,
    batches: int = 50,
    estimator: str = "blocks",
) -> LearnerResult:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be positive")

    def select(stats, contexts, feasible, rng):  # type: ignore[no-untyped-def]
        logits = np.where(feasible, estimates_or_zero(stats) / temperature, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        return sample_rows(np.exp(logits), contexts, rng)

    return sequential(problem, oracle, budget, rng, select, batches, estimator)
