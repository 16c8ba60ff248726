"""Softmax (Boltzmann) exploration: an arm of the sampled context with probability
proportional to exp(Q_hat / temperature) (paper: temperature 0.05). Arms never observed
count as 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iapo.estimate import Estimator
from iapo.learners.base import check_positive
from iapo.learners.sequential import (
    BoolArray,
    IntpArray,
    SequentialLearner,
    estimates_or_zero,
    sample_rows,
)


@dataclass(frozen=True, kw_only=True)
class Softmax(SequentialLearner):
    """Softmax exploration over all arms with shared estimates, in ``batches`` batches."""

    temperature: float = 0.05

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature)
        super().__post_init__()

    def select(self, stats: Estimator, contexts: IntpArray, feasible: BoolArray,
               rng: np.random.Generator) -> IntpArray:
        logits = np.where(feasible, estimates_or_zero(stats) / self.temperature, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        return sample_rows(np.exp(logits), contexts, rng)
