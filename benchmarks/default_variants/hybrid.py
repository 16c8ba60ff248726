import math

import numpy as np

from iapo.estimate import QTable
from iapo.learners.base import Trace, check_budget, round_record
from iapo.learners.psst import allowance, equal_pulls, psst
from iapo.model import ModelQTable


def screen_prompts(problem, oracle, budget, rng, stats, extra, g, keep, trace):
    """prompt-level halving with model estimates until `keep` prompts per context remain."""
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    alive = np.ones((c, p), dtype=bool)
    rounds = max(0, math.ceil(math.log2(p / keep))) if p > keep else 0
    r_eff = min(rounds, budget // (p * g)) if rounds else 0
    start = oracle.ledger.spent
    for r in range(r_eff):
        n_r = allowance(budget, r, r_eff, oracle.ledger.spent - start)
        scales = np.where(alive.any(0), g, 0)
        pulls = equal_pulls(scales, n_r)
        obs = oracle.pull(pulls)
        stats.update(obs)
        if extra is not None:
            extra.update(obs)
        mean = stats.mean
        value = np.where(np.isnan(mean), np.inf, mean).max(axis=2)
        value = np.where(alive, value, -np.inf)
        perm = rng.permutation(p)
        order = perm[np.argsort(-value[:, perm], axis=1, kind="stable")]
        new = np.zeros_like(alive)
        for ci in range(c):
            s = int(alive[ci].sum())
            # halve, but never below `keep`; the last round lands on `keep`
            k = max(keep, math.ceil(s / 2)) if r < r_eff - 1 else min(s, keep)
            new[ci, order[ci, :k]] = True
        alive = new
        trace.rounds.append(round_record(r, n_r, pulls, alive.sum(1) * n))
    return alive


def hybrid(problem, oracle, budget, rng, g=2, keep=2, rho=0.5, final="auto", alpha=0.5):
    budget = check_budget(oracle, budget)
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    g = min(g, n)
    model = ModelQTable(problem, alpha)
    final_est = final if final != "auto" else ("model" if problem.aggregator == "mv" else "blocks")
    blocks = QTable(problem) if final_est == "blocks" else None
    trace = Trace()
    start = oracle.ledger.spent
    alive = screen_prompts(problem, oracle, int(rho * budget), rng, model, blocks, g, keep, trace)
    active = np.broadcast_to(alive[:, :, None], (c, p, n)).copy()
    left = budget - (oracle.ledger.spent - start)
    if final_est == "model":
        return psst(problem, oracle, left, rng, active=active, stats=model, pull_scale=g, trace=trace)
    return psst(problem, oracle, left, rng, active=active, stats=blocks, trace=trace)


class Shrink:
    """Block means shrunk toward the model: (kappa * model + k * blocks) / (kappa + k)."""

    def __init__(self, problem, model, blocks, kappa):
        self.model, self.blocks, self.kappa = model, blocks, kappa

    @property
    def mean(self):
        m = self.model.mean
        k = self.blocks.counts.astype(float)[None]
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(k > 0, self.blocks.sums / np.maximum(k, 1), 0.0)
        return np.where(np.isnan(m), self.blocks.mean, (self.kappa * np.nan_to_num(m) + k * b) / (self.kappa + k))

    @property
    def counts(self):
        return np.maximum(self.model.counts, self.blocks.counts)

    def update(self, obs):
        self.model.update(obs)
        self.blocks.update(obs)


def hybrid2(problem, oracle, budget, rng, g=2, keep=2, rho=0.5, kappa=4.0, alpha=0.5, scale=0):
    budget = check_budget(oracle, budget)
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    g = min(g, n)
    model = ModelQTable(problem, alpha)
    blocks = QTable(problem)
    trace = Trace()
    start = oracle.ledger.spent
    alive = screen_prompts(problem, oracle, int(rho * budget), rng, model, blocks, g, keep, trace)
    active = np.broadcast_to(alive[:, :, None], (c, p, n)).copy()
    left = budget - (oracle.ledger.spent - start)
    stats = Shrink(problem, model, blocks, kappa)
    return psst(problem, oracle, left, rng, active=active, stats=stats, trace=trace,
                pull_scale=scale or None)


def screen_union(problem, oracle, budget, rng, model, blocks, g, keep, trace):
    """prompt halving; a prompt survives if it is among the best half/2 by the model's max_n Q
    or by the blocks' max over n <= g (unbiased)."""
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    alive = np.ones((c, p), dtype=bool)
    rounds = max(0, math.ceil(math.log2(p / keep))) if p > keep else 0
    r_eff = min(rounds, budget // (p * g)) if rounds else 0
    start = oracle.ledger.spent
    for r in range(r_eff):
        n_r = allowance(budget, r, r_eff, oracle.ledger.spent - start)
        scales = np.where(alive.any(0), g, 0)
        pulls = equal_pulls(scales, n_r)
        obs = oracle.pull(pulls)
        model.update(obs)
        blocks.update(obs)
        vm = np.where(np.isnan(model.mean), np.inf, model.mean).max(axis=2)
        bm = blocks.mean[:, :, :g]
        vb = np.where(np.isnan(bm), np.inf, bm).max(axis=2)
        new = np.zeros_like(alive)
        for ci in range(c):
            s = int(alive[ci].sum())
            target = max(keep, math.ceil(s / 2)) if r < r_eff - 1 else min(s, keep)
            half = max(1, math.ceil(target / 2))
            for v in (vm[ci], vb[ci]):
                v = np.where(alive[ci], v, -np.inf)
                perm = rng.permutation(p)
                order = perm[np.argsort(-v[perm], kind="stable")]
                new[ci, order[:half]] = True
        alive = new
        trace.rounds.append(round_record(r, n_r, pulls, alive.sum(1) * n))
    return alive


def hybrid3(problem, oracle, budget, rng, g=2, keep=2, rho=0.5, final="auto", alpha=0.5):
    budget = check_budget(oracle, budget)
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    g = min(g, n)
    model = ModelQTable(problem, alpha)
    blocks = QTable(problem)
    final_est = final if final != "auto" else ("model" if problem.aggregator == "mv" else "blocks")
    trace = Trace()
    start = oracle.ledger.spent
    alive = screen_union(problem, oracle, int(rho * budget), rng, model, blocks, g, keep, trace)
    active = np.broadcast_to(alive[:, :, None], (c, p, n)).copy()
    left = budget - (oracle.ledger.spent - start)
    if final_est == "model":
        return psst(problem, oracle, left, rng, active=active, stats=model, pull_scale=g, trace=trace)
    return psst(problem, oracle, left, rng, active=active, stats=blocks, trace=trace)


class AdaptiveShrink:
    """Per arm and context: lam * model + (1 - lam) * blocks, lam = v / max(v, (model - blocks)^2),
    v the variance of the block mean; the model alone where blocks have < 2 samples."""

    def __init__(self, model, blocks):
        self.model, self.blocks = model, blocks

    @property
    def mean(self):
        m = self.model.mean
        b = self.blocks.mean
        k = self.blocks.counts.astype(float)[None]
        v = self.blocks.variance / np.maximum(k, 1)
        d2 = (m - b) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            lam = np.where(np.isfinite(v) & (k >= 2), v / np.maximum(v, d2), 1.0)
        lam = np.nan_to_num(lam, nan=1.0)
        out = np.where(np.isnan(b), m, lam * m + (1 - lam) * b)
        return np.where(np.isnan(m), b, out)

    @property
    def counts(self):
        return np.maximum(self.model.counts, self.blocks.counts)

    def update(self, obs):
        self.model.update(obs)
        self.blocks.update(obs)


def hybrid4(problem, oracle, budget, rng, g=2, keep=2, rho=0.5, alpha=0.5, union=1):
    budget = check_budget(oracle, budget)
    c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
    g = min(g, n)
    model = ModelQTable(problem, alpha)
    blocks = QTable(problem)
    trace = Trace()
    start = oracle.ledger.spent
    if union:
        alive = screen_union(problem, oracle, int(rho * budget), rng, model, blocks, g, keep, trace)
    else:
        alive = screen_prompts(problem, oracle, int(rho * budget), rng, model, blocks, g, keep, trace)
    active = np.broadcast_to(alive[:, :, None], (c, p, n)).copy()
    left = budget - (oracle.ledger.spent - start)
    return psst(problem, oracle, left, rng, active=active, stats=AdaptiveShrink(model, blocks),
                trace=trace)
