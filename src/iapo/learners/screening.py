"""Top-K screening (paper, "Top-K Screening"), then PSST on what is left.

floor(rho T) completions go to N = 1, floor(rho T / |P|) per prompt; every context keeps the K
prompts with the highest estimated Q(c, p, 1) (cost included) and PSST runs on their arms with
the rest of the budget, stockpiling the screening data. If rho T < |P| the screening cannot
give every prompt a sample: it is skipped and PSST gets the whole budget (the trace says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iapo.estimate import QTable
from iapo.learners.base import (
    LearnerResult,
    Trace,
    check_budget,
    check_count,
    check_estimator,
    check_fraction,
    round_record,
)
from iapo.learners.psst import psst
from iapo.problem import Problem
from iapo.pulls import Oracle, Pull


@dataclass(frozen=True, kw_only=True)
class TopKScreening:
    """Screen prompts at N = 1 with rho * T, keep the top ``k`` per context, then PSST."""

    k: int
    rho: float = 0.2
    estimator: str = "blocks"

    def __post_init__(self) -> None:
        check_fraction("rho", self.rho)
        check_count("K", self.k)
        check_estimator(self.estimator)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        budget = check_budget(oracle, budget)
        k = self.k
        c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
        screen = int(self.rho * budget)
        per_prompt = screen // p
        stats = QTable(problem, self.estimator)
        trace = Trace()
        if per_prompt == 0 or k >= p:
            trace.notes.append(
                f"screening skipped: rho*T = {screen} cannot give each of {p} prompts a sample"
                if per_prompt == 0 else f"screening skipped: K={k} keeps every prompt")
            return psst(problem, oracle, budget, rng, stats=stats, trace=trace)
        pulls = [Pull(q, 1, per_prompt) for q in range(p)]
        start = oracle.ledger.spent
        stats.update(oracle.pull(pulls))
        q1 = stats.mean[:, :, 0]  # [C, P]
        order = np.lexsort((rng.random((c, p)), -q1), axis=-1)
        active = np.zeros((c, p, n), dtype=bool)
        active[np.repeat(np.arange(c), k), order[:, :k].reshape(-1)] = True
        trace.completions_used = oracle.ledger.spent - start
        trace.rounds.append(round_record(0, screen, pulls, active))
        trace.info["screened_prompts"] = order[:, :k].tolist()
        return psst(problem, oracle, budget - trace.completions_used, rng, active=active,
                    stats=stats, trace=trace)
