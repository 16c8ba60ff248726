"""Brute-force helpers shared by the tests (independent of the code under test)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import gammaln


def compositions(n: int, parts: int) -> np.ndarray:
    """Every vector of ``parts`` non-negative integers summing to n (stars and bars)."""
    rows = []
    for bars in itertools.combinations(range(n + parts - 1), parts - 1):
        cuts = (-1, *bars, n + parts - 1)
        rows.append([cuts[i + 1] - cuts[i] - 1 for i in range(parts)])
    return np.array(rows, dtype=np.int64)


def block_statistics(problem, observations):  # type: ignore[no-untyped-def]
    """(sums [C, P, N], sums of squares, counts [P, N]) of every disjoint block (n, b),
    completions [b n, (b + 1) n), of every group, scored one block at a time by the utility
    functions of iapo.utility (Eqs. 1 and 2, the mixed strategy)."""
    from iapo.utility import bon_utility, mixed_utility, mv_utility

    w, cw = problem.grid.weights, problem.grid.cost_weights
    c, p, n_max = problem.n_contexts, problem.n_prompts, problem.n_max
    sums, sumsq = np.zeros((c, p, n_max)), np.zeros((c, p, n_max))
    counts = np.zeros((p, n_max), dtype=np.int64)
    for o in observations:
        for g in range(o.count):
            for n in range(1, o.n + 1):
                for b in range(o.n // n):
                    part = slice(b * n, (b + 1) * n)
                    if problem.aggregator == "bon":
                        u = bon_utility(o.scores[g, part], w, cw)
                    elif problem.aggregator == "mv":
                        u = mv_utility(o.labels[g, part], o.gold[g], o.scores[g, part, -1], w, cw)
                    else:
                        u = mixed_utility(o.labels[g, part], o.gold[g], o.scores[g, part], w, cw)
                    sums[:, o.prompt, n - 1] += u
                    sumsq[:, o.prompt, n - 1] += u * u
                    counts[o.prompt, n - 1] += 1
    return sums, sumsq, counts


def mv_brute_force_vectorized(probs: np.ndarray, n_max: int) -> np.ndarray:
    """MV credit for N = 1..n_max summed over every vote composition: the multinomial
    probability, times 1/t when gold is among the t most voted; vectorized over rows, gold is
    column 0. probs [R, L] -> [R, n_max]."""
    logp = np.log(np.where(probs > 0, probs, 1.0))
    logp[probs <= 0] = -1e300  # 0 votes * -1e300 = 0; any vote for it -> probability 0
    out = np.zeros((probs.shape[0], n_max))
    for n in range(1, n_max + 1):
        comps = compositions(n, probs.shape[1])
        top = comps.max(axis=1)
        comps = comps[comps[:, 0] == top]
        ties = (comps == comps[:, :1]).sum(axis=1)
        log_coef = gammaln(n + 1) - gammaln(comps + 1).sum(axis=1)
        pr = np.exp(log_coef[:, None] + comps.astype(np.float64) @ logp.T)
        out[:, n - 1] = (1.0 / ties) @ pr
    return out
