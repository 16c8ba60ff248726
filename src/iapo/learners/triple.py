"""Contextual TRIPLE-SH (Shi et al. 2024), the paper's inference-agnostic baselines.

Sequential halving over prompts at N = 1 in every context (PSST restricted to the arms
(p, 1), so the same budget rules apply). ``triple-n1`` deploys the chosen prompt with N = 1;
``triple-nrand`` deploys it with N drawn uniformly from 1..N_max per query, whose exact value
is the mean of Q over N.
"""

from __future__ import annotations

import numpy as np

from iapo.learners.base import Choice, LearnerResult
from iapo.learners.psst import psst
from iapo.problem import Problem
from iapo.pulls import Oracle


def _prompt_halving(
    problem: Problem, oracle: Oracle, budget: int, rng: np.random.Generator,
    estimator: str = "blocks",
) -> LearnerResult:
    active = np.zeros((problem.n_contexts, problem.n_prompts, problem.n_max), dtype=bool)
    active[:, :, 0] = True
    return psst(problem, oracle, budget, rng, active=active, estimator=estimator)


def learn_triple_n1(
    problem: Problem, oracle: Oracle, budget: int, rng: np.random.Generator,
    estimator: str = "blocks",
) -> LearnerResult:
    return _prompt_halving(problem, oracle, budget, rng, estimator)


def learn_triple_nrand(
    problem: Problem, oracle: Oracle, budget: int, rng: np.random.Generator,
    estimator: str = "blocks",
) -> LearnerResult:
    result = _prompt_halving(problem, oracle, budget, rng, estimator)
    # the deployed value averages Q over N, which N = 1 data does not estimate
    result.choices = [Choice(ch.prompt, None, float("nan"), ch.samples) for ch in result.choices]
    return result
