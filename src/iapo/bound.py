"""Theorem 1 of the paper (error of PSST) as a calculator.

From the exact Q of an environment: per context c, sort the arms by Q (best first) and take
the gaps Delta_{c,i} = Q(c, a^{c,1}) - Q(c, a^{c,i}); with Nbar = (N(a^{c,1}) + N_max) / 2,

    H1 = max_c max_{i >= 2} Nbar / Delta_{c,i}^2,   H2 = max_c max_{i >= 2} i Nbar / Delta_{c,i}^2.

With R = ceil(log2 |A|) rounds, PSST with budget T returns the best arm of every context with
probability at least  1 - 3 |C| R exp(-T / (M R)),  M = min(2 |P| H1, 8 |C| H2);  so
T = M R ln(3 |C| R / delta) suffices for failure probability delta.

The theorem assumes objectives in [-1, 1]: Q is rescaled by 2 / (upper - lower) of the task
objectives (the widest one) before the gaps are taken. Arms whose Q equals the best one's
(within ``tie``) count as best too: the theorem needs a strict gap, and a learner that returns
any of them has not failed; they are excluded from the maxima (but keep their ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iapo.envs.base import Environment
from iapo.errors import InputError
from iapo.learners.psst import rounds_for
from iapo.problem import Arm


@dataclass(frozen=True)
class ContextBound:
    context: str
    best_prompt: int
    best_n: int
    tied_best: int  # arms within the tie tolerance of the best
    gap: float  # smallest strictly positive gap, rescaled
    h1: float
    h2: float


@dataclass(frozen=True)
class Bound:
    env: str
    rounds: int
    scale: float
    contexts: list[ContextBound]
    h1: float
    h2: float
    m: float  # min(2 |P| H1, 8 |C| H2)

    def success_probability(self, budget: float) -> float:
        """The theorem's lower bound on P(every context gets a best arm) at budget T."""
        c = len(self.contexts)
        if not math.isfinite(self.m):
            return 0.0
        fail = 3 * c * self.rounds * math.exp(-budget / (self.m * self.rounds))
        return max(0.0, 1.0 - fail)

    def budget_for(self, delta: float) -> float:
        """The budget T that the theorem says suffices for failure probability ``delta``."""
        if not 0 < delta < 1:
            raise InputError(f"delta={delta} must lie strictly between 0 and 1, e.g. 0.05")
        c = len(self.contexts)
        return self.m * self.rounds * math.log(3 * c * self.rounds / delta)


def theorem1(env: Environment, queries: npt.ArrayLike | None = None,
             tie: float = 1e-12) -> Bound:
    """Theorem 1's quantities for ``env`` (its exact Q on ``queries``, all by default)."""
    problem = env.problem
    widest = max(o.upper - o.lower for o in problem.grid.objectives)
    scale = 2.0 / widest
    q = env.q(queries) * scale  # [C, P, N]
    c, p, n_max = q.shape
    rounds = max(rounds_for(p * n_max), 1)
    out = []
    for ci, key in enumerate(problem.grid.keys):
        flat = q[ci].reshape(-1)
        order = np.argsort(-flat, kind="stable")
        best = flat[order[0]]
        gaps = best - flat[order]  # [A], rank i = position + 1
        strict = gaps > tie
        top = Arm.from_index(order[0], n_max)
        nbar = (top.n + n_max) / 2.0
        ranks = np.arange(1, flat.size + 1)
        with np.errstate(divide="ignore"):
            h1 = float(np.max(nbar / gaps[strict] ** 2)) if strict.any() else 0.0
            h2 = float(np.max(ranks[strict] * nbar / gaps[strict] ** 2)) if strict.any() else 0.0
        out.append(ContextBound(key, top.prompt, top.n,
                                int((~strict).sum()),
                                float(gaps[strict].min()) if strict.any() else float("inf"),
                                h1, h2))
    h1 = max(b.h1 for b in out)
    h2 = max(b.h2 for b in out)
    m = min(2 * p * h1, 8 * c * h2)
    return Bound(env.name, rounds, scale, out, h1, h2, m)
