import numpy as np

from iapo.estimate import QTable
from iapo.learners.base import LearnerResult, Trace, best_choices, check_budget, round_record
from iapo.learners.psst import allowance, equal_pulls, keep_count, rounds_for, top_up
from iapo.model import ModelQTable


def prompt_halving(problem, oracle, budget, rng, group=2, alpha=0.5, model=True, rho_n=None):
    budget = check_budget(oracle, budget)
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    stats = ModelQTable(problem, alpha) if model else QTable(problem)
    g = min(group, n)
    alive = np.ones((c, p), dtype=bool)
    r_paper = rounds_for(p)
    r_eff = min(r_paper, budget // (p * g)) if p * g else 0
    trace = Trace()
    start = oracle.ledger.spent
    for r in range(r_eff):
        n_r = allowance(budget, r, r_eff, oracle.ledger.spent - start)
        scales = np.where(alive.any(0), g, 0)
        pulls = equal_pulls(scales, n_r)
        if r == r_eff - 1:
            left = n_r - sum(x.cost for x in pulls)
            pulls += top_up(scales, rng.permutation(np.flatnonzero(scales > 0)), left)
        stats.update(oracle.pull(pulls))
        mean = stats.mean
        value = np.where(np.isnan(mean), np.inf, mean).max(axis=2)  # [C, P]
        value = np.where(alive, value, -np.inf)
        perm = rng.permutation(p)
        order = perm[np.argsort(-value[:, perm], axis=1, kind="stable")]
        new = np.zeros_like(alive)
        for ci in range(c):
            k = keep_count(int(alive[ci].sum()), r_eff - r)
            new[ci, order[ci, :k]] = True
        alive = new
        trace.rounds.append(round_record(r + 1, n_r, pulls, alive.sum(1)))
    trace.completions_used = oracle.ledger.spent - start
    allowed = np.broadcast_to(alive[:, :, None], (c, p, n))
    return LearnerResult(best_choices(stats, allowed, rng), trace)
