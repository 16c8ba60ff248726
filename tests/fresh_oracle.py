"""A hand-made oracle for learner tests: every group on a query never used before (paired
pulls share theirs), the budget charged as the real oracles charge it; a subclass says what a
group scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from iapo.problem import Problem
from iapo.pulls import Ledger, Observation, Pull, validate_pulls


class FreshQueryOracle:
    """Pulls answered by :meth:`observe`, each group on a fresh query id (0, 1, ...), the i-th
    paired groups of every prompt in a batch on one."""

    def __init__(self, problem: Problem, budget: int) -> None:
        self.problem = problem
        self.ledger = Ledger(budget)
        self.next_query = 0

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        self.ledger.charge(validate_pulls(self.problem, requests))
        # paired pulls share fresh queries, as the real oracles share theirs: a prompt's
        # paired groups take the shared ones in turn, across the batch's pulls
        totals: dict[int, int] = {}
        for r in requests:
            if r.paired:
                totals[r.prompt] = totals.get(r.prompt, 0) + r.count
        shared = self.next_query
        self.next_query += max(totals.values(), default=0)
        used: dict[int, int] = {}
        out = []
        for r in requests:
            if r.paired:
                first = shared + used.get(r.prompt, 0)
                used[r.prompt] = used.get(r.prompt, 0) + r.count
                queries = np.arange(first, first + r.count, dtype=np.int64)
            else:
                queries = np.arange(self.next_query, self.next_query + r.count, dtype=np.int64)
                self.next_query += r.count
            out.append(self.observe(r, queries))
        return out

    def observe(self, pull: Pull, queries: npt.NDArray[np.int64]) -> Observation:
        """The groups of ``pull``, one on each of ``queries``."""
        raise NotImplementedError
