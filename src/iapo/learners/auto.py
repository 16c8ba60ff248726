"""``psst-auto``, the default learner: screen prompts cheaply, then decide with PSST.

Beyond the paper. The benches (docs/default-learner.md) show that which learner is best
changes with the environment and the budget, and that almost all of a good learner's regret
is the choice of prompt, not of N. ``psst-auto`` spends its budget in two phases:

1. Screening, at most rho T completions (rho = 1/2). Successive halving over *prompts*: every
   round, every prompt still alive in some context is pulled equally often in groups of g
   completions, each group on a fresh query (Eq. 6 with M = g x the prompts pulled):
   floor(n_r / M) groups each, n_r the round's allowance (rule 3 of PSST: floor((r+1) rho T /
   R_s) less what was spent). Groups of g feed a per-query model (:mod:`iapo.model`), which
   estimates Q for every N from them, and for Best-of-N also unbiased blocks (N <= g). Then
   every context keeps k of its prompts, k half of them (ceil) but never fewer than ``keep``
   (2), and k = ``keep`` after the last round:

   - majority voting: the k best by the model's value max_N Q(c, p, N);
   - Best-of-N: the union of the ceil(k / 2) best by the model's value and the ceil(k / 2)
     best by the blocks' max over N <= g of Q, so between ceil(k / 2) and 2 ceil(k / 2)
     prompts (k + 1 for an odd k; fewer when the two rankings agree): on real score
     distributions the model's large-N extrapolation can misrank prompts, while small-N
     blocks miss prompts that win only at large N.

   R_s = ceil(log2(#prompts / keep)) rounds, fewer if rho T cannot pay one group of every
   prompt per round (min(R_s, floor(rho T / (#prompts g)))); with no round the screening is
   skipped and PSST decides among all prompts (the trace says so). g = min(2, N_max) for
   majority voting and min(4, N_max) for Best-of-N.
2. Deciding, the rest of T: PSST (Algorithm 1 with its budget rules) over every arm (p, N) of
   each context's surviving prompts. Majority voting: estimates from the same model, groups
   of g (``psst-model`` on the survivors; the model's choice of N was within 0.0015 of the
   best N on the paper's data). Best-of-N: unbiased blocks, stockpiled with the screening's
   groups, pulled at the largest live N (the model's choice of N is biased on real scores).

The budget is a hard limit: the screening spends at most floor(rho T), PSST the rest. The
trace numbers the screening rounds -R_s..-1 and PSST's 1..R. A problem with the mixed
aggregator (no model of it) gets plain PSST.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iapo.estimate import Estimator, QTable
from iapo.learners.base import (
    LearnerResult,
    Trace,
    check_budget,
    check_count,
    check_fraction,
    check_positive,
    round_record,
)
from iapo.learners.psst import Groups, LargestN, allowance, equal_pulls, keep_best, psst
from iapo.problem import Problem
from iapo.pulls import Oracle

BoolArray = npt.NDArray[np.bool_]


def screening_rounds(n_prompts: int, keep: int, budget: int, group: int) -> int:
    """R_s = ceil(log2(#prompts / keep)), at most floor(budget / (#prompts g)) so that every
    round pays one group of every prompt; 0 when nothing is to screen."""
    if n_prompts <= keep:
        return 0
    return min(math.ceil(math.log2(n_prompts / keep)), budget // (n_prompts * group))


def group_size(aggregator: str, n_max: int) -> int:
    """g: the screening's group size, min(2, N_max) for majority voting and min(4, N_max)
    for Best-of-N."""
    return min(2 if aggregator == "mv" else 4, n_max)


def survivors(size: int, keep: int, last: bool) -> int:
    """How many of ``size`` alive prompts a context keeps: half (ceil), never fewer than
    ``keep``, exactly ``keep`` (or all if fewer) after the last round."""
    return min(size, keep) if last else max(keep, math.ceil(size / 2))


@dataclass(frozen=True, kw_only=True)
class PSSTAuto:
    """The default learner: prompt screening with a per-query model (and, for Best-of-N,
    unbiased blocks), then PSST over the survivors' arms (module docstring)."""

    rho: float = 0.5
    keep: int = 2
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_fraction("rho", self.rho)
        check_count("keep", self.keep)
        check_positive("alpha", self.alpha)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        from iapo.model import ModelQTable

        budget = check_budget(oracle, budget)
        if problem.aggregator == "mixed":  # no model of mixed outcomes: PSST decides alone
            result = psst(problem, oracle, budget, rng)
            result.trace.notes.insert(0, "mixed aggregator: no screening, plain PSST")
            return result
        c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
        mv = problem.aggregator == "mv"
        g = group_size(problem.aggregator, n)
        model = ModelQTable(problem, self.alpha)
        blocks = None if mv else QTable(problem)
        trace = Trace(info={"group": g})
        start = oracle.ledger.spent
        screen = int(self.rho * budget)
        rounds = screening_rounds(p, self.keep, screen, g)
        alive = np.ones((c, p), dtype=bool)
        for r in range(rounds):
            n_r = allowance(screen, r, rounds, oracle.ledger.spent - start)
            pulls = equal_pulls(np.where(alive.any(axis=0), g, 0), n_r)
            observations = oracle.pull(pulls)
            model.update(observations)
            k = np.array([survivors(int(s), self.keep, r == rounds - 1)
                          for s in alive.sum(axis=1)])
            by_model = np.max(model.mean, axis=2)
            if blocks is None:
                alive = _keep_rows(by_model, alive, k, rng)
            else:
                blocks.update(observations)
                by_blocks = np.max(blocks.mean[:, :, :g], axis=2)
                half = np.maximum(1, np.ceil(k / 2)).astype(int)
                alive = (_keep_rows(by_model, alive, half, rng)
                         | _keep_rows(by_blocks, alive, half, rng))
            trace.rounds.append(round_record(-(rounds - r), n_r, pulls, alive.sum(axis=1) * n))
        if rounds == 0:
            trace.notes.append(f"screening skipped: {p} prompts, keep={self.keep}, and rho*T = "
                               f"{screen} cannot pay a round of groups of {g} for every prompt"
                               if p > self.keep else
                               f"screening skipped: keep={self.keep} keeps every prompt")
        trace.info["screened_prompts"] = [np.flatnonzero(a).tolist() for a in alive]
        active = np.repeat(alive[:, :, None], n, axis=2)
        trace.completions_used = oracle.ledger.spent - start
        left = budget - trace.completions_used
        stats: Estimator = model if blocks is None else blocks
        return psst(problem, oracle, left, rng, active=active, stats=stats, trace=trace,
                    allocation=Groups(g) if mv else LargestN())


def _keep_rows(value: npt.NDArray[np.float64], alive: BoolArray, k: npt.NDArray[np.int_],
               rng: np.random.Generator) -> BoolArray:
    """Per context c the k[c] alive prompts of highest ``value`` [C, P] (``keep_best``),
    the contexts that keep the same number together (one random tie-break order each)."""
    out = np.zeros_like(alive)
    for kk in np.unique(k):
        rows = np.flatnonzero(k == kk)
        out[rows] = keep_best(value[rows], alive[rows], int(kk), rng)
    return out
