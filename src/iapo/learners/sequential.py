"""The paper's sequential exploration baselines, in decision batches.

Each step samples a context (by the context probabilities) and lets a selection rule pick an
arm for it from the current estimates; a pull of (p, N) costs N and its blocks update every
context and every smaller N, as in PSST (the paper's baselines share information too).
The paper runs these fully sequentially; here the decisions are made in ``batches`` batches of
about T / batches completions, each batch from the estimates of the one before, so a run costs
tens of numpy calls rather than one per pull (``batches = T`` is fully sequential). With
``growth`` > 1 the batches grow geometrically instead (:func:`batch_sizes`, batched bandits'
geometric grid); it is an option, not the default:
``benchmarks/experiments/batches_ablation.py`` found 20 batches growing by 1.2 as good as 50
equal ones on ``math`` and ``commonsenseqa`` but much worse on ``synth-bernoulli``
(docs/measured.md). Arms whose N exceeds the remaining budget are
never picked, so the budget is never overspent. The final policy is the arm with the highest
estimate in every context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.estimate import Estimator, QTable
from iapo.learners.base import (
    LearnerResult,
    Trace,
    best_choices,
    check_budget,
    check_count,
    check_estimator,
    round_record,
)
from iapo.problem import Problem, arm_at
from iapo.pulls import Oracle, Pull

IntpArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


class SelectionRule(Protocol):
    """How a sequential learner picks arms: for every decision d, a flat arm index
    (:func:`iapo.problem.arm_index`) for context ``contexts[d]`` among the ``feasible`` arms
    [A], from the estimates."""

    def __call__(self, stats: Estimator, contexts: IntpArray, feasible: BoolArray,
                 rng: np.random.Generator) -> IntpArray: ...


def sample_rows(
    weights: npt.NDArray[np.float64], contexts: npt.NDArray[np.intp], rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """For every decision d, an arm drawn with probability proportional to
    weights[contexts[d]]: weights [C, A] (non-negative, each used row with a positive sum),
    contexts [D] -> [D]. One searchsorted per context, not a [D, A] matrix."""
    cdf = np.cumsum(weights, axis=1)
    a = weights.shape[1]
    # every row's CDF scaled to [0, 1] and shifted by its row index, laid end to end: one
    # searchsorted finds each decision's arm in its own context's row
    total = np.where(cdf[:, -1:] > 0, cdf[:, -1:], 1.0)  # (a row no decision uses may be 0)
    flat = (cdf / total + np.arange(cdf.shape[0])[:, None]).reshape(-1)
    out = np.searchsorted(flat, contexts + rng.random(contexts.size), side="right")
    return np.minimum(out - contexts * a, a - 1)


def argmax_random_ties(
    score: npt.NDArray[np.float64], contexts: npt.NDArray[np.intp], rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """For every decision, the best arm of its context, uniformly among equal maxima:
    score [C, A], contexts [D] -> [D]."""
    ties = (score == score.max(axis=1, keepdims=True)).astype(np.float64)
    return sample_rows(ties, contexts, rng)


def sequential(
    problem: Problem,
    oracle: Oracle,
    budget: int,
    rng: np.random.Generator,
    select: SelectionRule,
    *,
    batches: int = 50,
    estimator: str = "blocks",
    growth: float = 1.0,
) -> LearnerResult:
    """Spend ``budget`` in ``batches`` decision batches, each picked by ``select`` from the
    estimates after the batch before; the best estimated arm of every context at the end.
    Batch sizes form the grid of :func:`batch_sizes`."""
    budget = check_budget(oracle, budget)
    check_count("batches", batches)
    p, n = problem.n_prompts, problem.n_max
    arm_cost = arm_at(np.arange(p * n), n)[1]  # N of every flat arm: what a pull of it costs
    stats = QTable(problem, estimator)
    trace = Trace(info={"batches": batches, "growth": growth})
    sizes = batch_sizes(budget, batches, growth)
    ends = np.cumsum(sizes)
    start = oracle.ledger.spent
    probs = problem.grid.probabilities
    while (left := budget - (oracle.ledger.spent - start)) >= 1:
        # the size of the batch whose share of T the spending so far has reached
        k = min(int(np.searchsorted(ends, oracle.ledger.spent - start, "right")), batches - 1)
        room = min(int(sizes[k]), left)
        contexts = rng.choice(problem.n_contexts, size=room, p=probs)
        arms = select(stats, contexts, arm_cost <= left, rng)
        cum = np.cumsum(arm_cost[arms])
        take = int(np.searchsorted(cum, room, side="right")) or 1  # the first always fits
        uniq, counts = np.unique(arms[:take], return_counts=True)
        prompts, ns = arm_at(uniq, n)
        pulls = [Pull(p_, n_, m) for p_, n_, m in
                 zip(prompts.tolist(), ns.tolist(), counts.tolist(), strict=True)]
        stats.update(oracle.pull(pulls))
        trace.rounds.append(round_record(len(trace.rounds) + 1, room, pulls,
                                         np.full(problem.n_contexts, p * n)))
    trace.completions_used = oracle.ledger.spent - start
    allowed = np.ones((problem.n_contexts, p, n), dtype=bool)
    return LearnerResult(best_choices(stats, allowed, rng), trace)


def batch_sizes(budget: int, batches: int, growth: float) -> npt.NDArray[np.int64]:
    """Completions per decision batch: ``batches`` sizes in geometric progression with ratio
    ``growth`` summing to about ``budget`` (growth 1: equal batches of ceil(T / batches)), each
    at least 1. A growing grid decides the first completions nearly one by one, as the paper's
    fully sequential baselines do, in few batches (batched bandits' geometric grid)."""
    if growth == 1.0:
        return np.full(batches, max(1, math.ceil(budget / batches)), dtype=np.int64)
    first = budget * (growth - 1.0) / (growth**batches - 1.0)
    return np.maximum(1, np.ceil(first * growth ** np.arange(batches))).astype(np.int64)


def estimates_or_zero(stats: Estimator) -> npt.NDArray[np.float64]:
    """Estimated Q per context and arm, 0 for arms never observed: [C, A]."""
    mean = stats.mean
    return np.nan_to_num(mean, nan=0.0).reshape(mean.shape[0], -1)


@dataclass(frozen=True, kw_only=True)
class SequentialLearner:
    """What the sequential baselines share: ``batches`` decision batches and an estimator;
    a subclass gives its selection rule as ``select`` (a :class:`SelectionRule`)."""

    batches: int = 50
    estimator: str = "blocks"
    growth: float = 1.0

    def __post_init__(self) -> None:
        check_count("batches", self.batches)
        check_estimator(self.estimator)
        if not (isinstance(self.growth, int | float) and not isinstance(self.growth, bool)
                and 1.0 <= self.growth <= 10.0):
            raise InputError(f"growth={self.growth!r} must be a number in [1, 10] (the ratio "
                             "of one decision batch to the one before; 1: equal batches)")

    def select(self, stats: Estimator, contexts: IntpArray, feasible: BoolArray,
               rng: np.random.Generator) -> IntpArray:
        raise NotImplementedError

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        return sequential(problem, oracle, budget, rng, self.select, batches=self.batches,
                          estimator=self.estimator, growth=self.growth)
