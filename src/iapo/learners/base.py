"""What every learner returns: a choice per context and a trace of how the budget was spent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from iapo.estimate import QTable
from iapo.problem import Arm, Choice, Problem
from iapo.pulls import Oracle, Pull

__all__ = ["Choice", "Learner", "LearnerResult", "Trace", "best_choices", "check_budget",
           "round_record"]


@dataclass
class Trace:
    """How a run went: completions used, rounds, and per round what was pulled and kept.

    Each round is a dict with keys ``round``, ``allowance`` (completions it could spend),
    ``spent``, ``pulls`` ([[prompt, n, count], ...]) and ``alive`` (arms alive per context
    after the round's trimming, [C]). ``notes`` say in words what was done differently from
    the paper's schedule and why.
    """

    completions_used: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "completions_used": self.completions_used,
            "rounds": self.rounds,
            "notes": self.notes,
            **self.info,
        }


@dataclass
class LearnerResult:
    choices: list[Choice]
    trace: Trace


class Learner(Protocol):
    def __call__(
        self, problem: Problem, oracle: Oracle, budget: int, rng: np.random.Generator
    ) -> LearnerResult: ...


def round_record(r: int, allowance: int, pulls: Sequence[Pull], alive: np.ndarray
                 ) -> dict[str, Any]:
    """The trace's record of round ``r``: what it could spend, spent and pulled, and the arms
    alive per context after it (``alive`` [C, P, N] bool, or [C] counts)."""
    counts = alive.sum(axis=(1, 2)) if alive.ndim == 3 else alive
    return {
        "round": r,
        "allowance": int(allowance),
        "spent": int(sum(x.cost for x in pulls)),
        "pulls": [[x.prompt, x.n, x.count] for x in pulls if x.count],
        "alive": np.asarray(counts).tolist(),
    }


def check_budget(oracle: Oracle, budget: int) -> int:
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget T={budget} must be a non-negative integer")
    if budget > oracle.ledger.remaining:
        raise ValueError(
            f"budget T={budget} exceeds what the oracle's ledger still allows "
            f"({oracle.ledger.remaining})"
        )
    return int(budget)


def best_choices(
    stats: QTable, allowed: np.ndarray, rng: np.random.Generator
) -> list[Choice]:
    """Per context, the allowed arm with the highest estimate (random among ties).

    ``allowed`` [C, P, N] bool. Arms without data are chosen only if no allowed arm has data.
    """
    mean = stats.mean
    has = np.broadcast_to(stats.counts > 0, mean.shape)
    c, p, n = mean.shape
    jitter = rng.random((c, p * n))
    out = []
    for ci in range(c):
        ok = allowed[ci].reshape(-1)
        if not ok.any():  # a context left without arms (tiny budgets): fall back to all
            ok = np.ones_like(ok)
        seen = ok & has[ci].reshape(-1)
        pool = seen if seen.any() else ok
        score = np.where(pool, np.nan_to_num(mean[ci].reshape(-1), nan=0.0), -np.inf)
        top = score.max()
        idx = int(np.flatnonzero(pool & (score == top))[jitter[ci][pool & (score == top)].argmax()])
        arm = Arm.from_index(idx, n)
        out.append(Choice(arm.prompt, arm.n, float(mean[ci, arm.prompt, arm.n - 1]),
                          int(stats.counts[arm.prompt, arm.n - 1])))
    return out
