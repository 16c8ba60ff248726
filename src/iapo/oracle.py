"""The simulated oracle: pulls drawn from an environment, seeded, against a budget ledger.

The pull protocol (Pull, Observation, Ledger, Oracle) lives in :mod:`iapo.pulls`; its names are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.pulls import Ledger, Observation, Pull, draw_queries, validate_pulls

if TYPE_CHECKING:
    from iapo.envs.base import Environment

__all__ = ["SimulatedOracle"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class SimulatedOracle:
    """Draws completions from an environment, on the given training queries, seeded.

    ``queries``: indices of the training queries (the learner never sees the others).
    """

    def __init__(
        self,
        env: Environment,
        queries: npt.ArrayLike,
        budget: int,
        rng: np.random.Generator,
    ) -> None:
        self.env = env
        self.problem = env.problem
        self.queries = np.asarray(queries, dtype=np.int64)
        if self.queries.size == 0:
            raise InputError("the oracle needs at least one training query; pass the indices "
                             "of the queries it may draw from")
        if self.queries.min() < 0 or self.queries.max() >= env.n_queries:
            raise InputError(f"training queries must lie in 0..{env.n_queries - 1}, the queries "
                             f"of '{env.name}'")
        self.ledger = Ledger(budget)
        self.rng = rng

    def _queries_of(self, prompt: int) -> npt.NDArray[np.int64]:
        """The training queries a pull of ``prompt`` draws from: those where it has data."""
        observed = self.env.observed
        if observed is None:
            return self.queries
        pool = self.queries[observed[prompt, self.queries]]
        if pool.size == 0:
            raise InputError(f"prompt {prompt} has no data on any training query of "
                             f"'{self.env.name}'; collect more before training on it")
        return pool

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        """Serve a batch of pulls; all or nothing against the budget.

        Every group draws its query uniformly from the training queries where its prompt has
        data (paired pulls together: :func:`iapo.pulls.draw_queries`); then all groups are
        drawn from the environment at once."""
        total = validate_pulls(self.problem, requests)
        if self.env.observed is None:
            pools = None
        else:
            pools = [self._queries_of(r.prompt) for r in requests]  # may refuse: before charging
        self.ledger.charge(total)
        counts = np.array([r.count for r in requests], dtype=np.intp)
        queries = draw_queries(requests, pools or [self.queries] * len(requests), self.queries,
                               self.rng)
        if not queries.size:
            return [self._empty(r) for r in requests]
        # one draw for the whole batch, every group as wide as the largest; a group of n keeps
        # its first n completions (the rest, independent draws, are never seen)
        width = max(r.n for r in requests if r.count)
        prompts = np.repeat([r.prompt for r in requests], counts)
        s = self.env.sample(prompts, queries, width, self.rng)
        first = np.concatenate([[0], np.cumsum(counts)])
        out = []
        for i, r in enumerate(requests):
            part = slice(first[i], first[i + 1])
            if not r.count:
                out.append(self._empty(r))
                continue
            out.append(Observation.from_sample(r.prompt, width, queries, s).rows(part)
                       .first(r.n))
        return out

    def _empty(self, r: Pull) -> Observation:
        """The observation of a pull of no groups."""
        k1 = self.problem.n_objectives + 1
        mv = self.problem.aggregator != "bon"
        return Observation(r.prompt, r.n, np.zeros(0, dtype=np.int64), np.zeros((0, r.n, k1)),
                           np.zeros((0, r.n), dtype=np.int16) if mv else None,
                           np.zeros(0, dtype=np.int16) if mv else None)
