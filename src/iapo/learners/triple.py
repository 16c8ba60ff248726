"""Contextual TRIPLE-SH (Shi et al. 2024), the paper's inference-agnostic baselines.

Sequential halving over prompts at N = 1 in every context (PSST restricted to the arms
(p, 1), so the same budget rules apply). ``triple-n1`` deploys the chosen prompt with N = 1;
``triple-nrand`` deploys it with N drawn uniformly from 1..N_max per query, whose exact value
is the mean of Q over N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from iapo.errors import InputError
from iapo.estimate import QTable
from iapo.learners.base import Choice, LearnerResult, check_estimator
from iapo.learners.psst import psst
from iapo.problem import Problem
from iapo.pulls import Oracle


@dataclass(frozen=True, kw_only=True)
class TripleSH:
    """Halving over prompts at N = 1, deployed at N = 1 (``deploy="n1"``) or with N uniform in
    1..N_max (``deploy="nrand"``)."""

    deploy: Literal["n1", "nrand"] = "n1"
    estimator: str = "blocks"

    def __post_init__(self) -> None:
        if self.deploy not in ("n1", "nrand"):
            raise InputError(f"deploy={self.deploy!r} must be 'n1' or 'nrand'")
        check_estimator(self.estimator)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        active = np.zeros((problem.n_contexts, problem.n_prompts, problem.n_max), dtype=bool)
        active[:, :, 0] = True
        halving = psst(problem, oracle, budget, rng, active=active,
                       stats=QTable(problem, self.estimator))
        if self.deploy == "n1":
            return halving
        # the deployed value averages Q over N, which N = 1 data does not estimate
        return LearnerResult(
            [Choice(ch.prompt, None, float("nan"), ch.samples) for ch in halving.choices],
            halving.trace)
