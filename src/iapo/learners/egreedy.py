"""epsilon-greedy: the best estimated arm of the sampled context with probability 1 - epsilon,
else a uniformly random feasible arm (paper: epsilon = 0.15). Arms never observed count as 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iapo.errors import InputError
from iapo.estimate import Estimator
from iapo.learners.sequential import (
    BoolArray,
    IntpArray,
    SequentialLearner,
    argmax_random_ties,
    estimates_or_zero,
)


@dataclass(frozen=True, kw_only=True)
class EpsilonGreedy(SequentialLearner):
    """epsilon-greedy over all arms with shared estimates, in ``batches`` decision batches."""

    epsilon: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise InputError(f"epsilon={self.epsilon} must lie in [0, 1]")
        super().__post_init__()

    def select(self, stats: Estimator, contexts: IntpArray, feasible: BoolArray,
               rng: np.random.Generator) -> IntpArray:
        score = np.where(feasible, estimates_or_zero(stats), -np.inf)
        greedy = argmax_random_ties(score, contexts, rng)
        explore = rng.random(contexts.size) < self.epsilon
        return np.where(explore, rng.choice(np.flatnonzero(feasible), size=contexts.size),
                        greedy)
