"""Softmax (Boltzmann) exploration: an arm of the sampled context with probability
proportional to exp(Q_hat / temperature) (paper: temperature 0.05). Arms never observed
count as 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iapo.errors import InputError
from iapo.estimate import Estimator
from iapo.learners.base import LearnerResult, check_batches, check_estimator
from iapo.learners.sequential import (
    BoolArray,
    IntpArray,
    estimates_or_zero,
    sample_rows,
    sequential,
)
from iapo.problem import Problem
from iapo.pulls import Oracle


@dataclass(frozen=True, kw_only=True)
class Softmax:
    """Softmax exploration over all arms with shared estimates, in ``batches`` batches."""

    temperature: float = 0.05
    batches: int = 50
    estimator: str = "blocks"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"temperature={self.temperature} must be positive")
        check_batches(self.batches)
        check_estimator(self.estimator)

    def select(self, stats: Estimator, contexts: IntpArray, feasible: BoolArray,
               rng: np.random.Generator) -> IntpArray:
        logits = np.where(feasible, estimates_or_zero(stats) / self.temperature, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        return sample_rows(np.exp(logits), contexts, rng)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        return sequential(problem, oracle, budget, rng, self.select, batches=self.batches,
                          estimator=self.estimator)
