"""Top-K screening (paper, "Top-K Screening"), then PSST on what is left.

floor(rho T) completions go to N = 1, floor(rho T / |P|) per prompt; every context keeps the K
prompts with the highest estimated Q(c, p, 1) (cost included) and PSST runs on their arms with
the rest of the budget, stockpiling the screening data. If rho T < |P| the screening cannot
give every prompt a sample: it is skipped and PSST gets the whole budget (the trace says so).
"""

from __future__ import annotations

import numpy as np

from iapo.estimate import QTable
from iapo.learners.base import LearnerResult, check_budget, round_record
from iapo.learners.psst import psst
from iapo.problem import Problem
from iapo.pulls import Oracle, Pull


def top_k_screening(
    problem: Problem,
    oracle: Oracle,
    budget: int,
    rng: np.random.Generator,
    *,
    k: int,
    rho: float = 0.2,
    estimator: str = "blocks",
) -> LearnerResult:
    """Screen prompts at N = 1 with rho * T, keep the top ``k`` per context, then PSST."""
    budget = check_budget(oracle, budget)
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho={rho} must lie strictly between 0 and 1")
    if k < 1:
        raise ValueError(f"K={k} must be at least 1")
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    per_prompt = int(rho * budget) // p
    stats = QTable(problem, estimator)
    if per_prompt == 0 or k >= p:
        result = psst(problem, oracle, budget, rng, stats=stats, estimator=estimator)
        result.trace.notes.insert(
            0,
            f"screening skipped: rho*T = {int(rho * budget)} cannot give each of {p} prompts "
            "a sample" if per_prompt == 0 else f"screening skipped: K={k} keeps every prompt",
        )
        return result
    spent = per_prompt * p
    stats.update(oracle.pull([Pull(q, 1, per_prompt) for q in range(p)]))
    q1 = stats.mean[:, :, 0]  # [C, P]
    order = np.lexsort((rng.random((c, p)), -q1), axis=-1)
    active = np.zeros((c, p, n), dtype=bool)
    rows = np.repeat(np.arange(c), k)
    active[rows, order[:, :k].reshape(-1)] = True
    result = psst(problem, oracle, budget - spent, rng, active=active, stats=stats,
                  estimator=estimator)
    trace = result.trace
    trace.completions_used += spent
    trace.rounds.insert(0, round_record(0, int(rho * budget),
                                        [Pull(q, 1, per_prompt) for q in range(p)], active))
    trace.info["screened_prompts"] = order[:, :k].tolist()
    return result
