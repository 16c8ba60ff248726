"""A hand-made oracle for learner tests: every group on a query never used before, the budget
charged as the real oracles charge it; a subclass says what a group scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from iapo.problem import Problem
from iapo.pulls import Ledger, Observation, Pull, validate_pulls


class FreshQueryOracle:
    """Pulls answered by :meth:`observe`, each group on a fresh query id (0, 1, ...)."""

    def __init__(self, problem: Problem, budget: int) -> None:
        self.problem = problem
        self.ledger = Ledger(budget)
        self.next_query = 0

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        self.ledger.charge(validate_pulls(self.problem, requests))
        out = []
        for r in requests:
            queries = np.arange(self.next_query, self.next_query + r.count, dtype=np.int64)
            self.next_query += r.count
            out.append(self.observe(r, queries))
        return out

    def observe(self, pull: Pull, queries: npt.NDArray[np.int64]) -> Observation:
        """The groups of ``pull``, one on each of ``queries``."""
        raise NotImplementedError
