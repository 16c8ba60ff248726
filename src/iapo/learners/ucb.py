"""UCB: the arm of the sampled context with the highest Q_hat + c * sqrt(ln t / n), n its
number of blocks, t all blocks seen; arms never observed first (paper: c = 0.1)."""

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
class UCB(SequentialLearner):
    """UCB over all arms with shared estimates, in ``batches`` decision batches."""

    c: float = 0.1

    def __post_init__(self) -> None:
        if not self.c >= 0:
            raise InputError(f"exploration constant c={self.c} must be >= 0")
        super().__post_init__()

    def select(self, stats: Estimator, contexts: IntpArray, feasible: BoolArray,
               rng: np.random.Generator) -> IntpArray:
        n = stats.counts.reshape(-1).astype(np.float64)
        t = max(float(n.sum()), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.where(n > 0, self.c * np.sqrt(np.log(t) / n), np.inf)
        index = estimates_or_zero(stats) + bonus
        return argmax_random_ties(np.where(feasible, index, -np.inf), contexts, rng)
