"""What every learner is and returns: the learner protocol, a choice per context, and a trace
of how the budget was spent, round by round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from iapo.errors import InputError
from iapo.estimate import ESTIMATORS, Estimator
from iapo.problem import Arm, Choice, Problem
from iapo.pulls import Oracle, Pull

__all__ = ["Choice", "Learner", "LearnerResult", "Round", "Trace", "best_choices",
           "check_budget", "check_count", "check_estimator", "check_fraction",
           "check_positive", "round_record"]


@dataclass(frozen=True)
class Round:
    """One round of a run, as it happened: ``allowance`` (completions it could spend),
    ``spent``, ``pulls`` ((prompt, n, groups), ...) and ``alive`` (arms alive per context
    after the round's trimming, [C]). Rounds numbered 0 or below are screening rounds before
    PSST's first (Top-K screening: 0; psst-auto: -R_s..-1)."""

    round: int
    allowance: int
    spent: int
    pulls: tuple[tuple[int, int, int], ...]
    alive: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "allowance": self.allowance, "spent": self.spent,
                "pulls": [list(x) for x in self.pulls], "alive": list(self.alive)}


@dataclass
class Trace:
    """How a run went: completions used, its rounds (:class:`Round`, frozen), and ``notes``
    saying in words what was done differently from the paper's schedule and why. A learner
    that runs another (Top-K screening, then PSST) hands it its trace to go on with."""

    completions_used: int = 0
    rounds: list[Round] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,  # never in place of the fields below (tested)
            "completions_used": self.completions_used,
            "rounds": [r.to_dict() for r in self.rounds],
            "notes": self.notes,
        }


@dataclass(frozen=True)
class LearnerResult:
    choices: list[Choice]
    trace: Trace


class Learner(Protocol):
    """A learner: ``learner(problem, oracle, budget, rng)`` spends at most ``budget``
    completions through ``oracle`` and returns a choice per context. Its hyperparameters are
    set when it is made (frozen, keyword-only, validated: see :mod:`iapo.learners`)."""

    def __call__(
        self, problem: Problem, oracle: Oracle, budget: int, rng: np.random.Generator
    ) -> LearnerResult: ...


def round_record(r: int, allowance: int, pulls: Sequence[Pull], alive: np.ndarray) -> Round:
    """The trace's record of round ``r``: what it could spend, spent and pulled, and the arms
    alive per context after it (``alive`` [C, P, N] bool, or [C] counts)."""
    counts = alive.sum(axis=(1, 2)) if alive.ndim == 3 else alive
    return Round(
        round=r,
        allowance=int(allowance),
        spent=int(sum(x.cost for x in pulls)),
        pulls=tuple((x.prompt, x.n, x.count) for x in pulls if x.count),
        alive=tuple(int(a) for a in np.asarray(counts)),
    )


def check_budget(oracle: Oracle, budget: int) -> int:
    if int(budget) != budget or budget < 0:
        raise InputError(f"budget T={budget} must be a non-negative integer")
    if budget > oracle.ledger.remaining:
        raise InputError(
            f"budget T={budget} exceeds what the oracle's ledger still allows "
            f"({oracle.ledger.remaining})"
        )
    return int(budget)


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise InputError(f"estimator '{estimator}' is unknown; use one of "
                         f"{', '.join(ESTIMATORS)}")


# the checks of the learners' hyperparameters, each named in its message


def check_count(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise InputError(f"{name}={value} must be an integer of at least 1")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise InputError(f"{name}={value} must be positive")


def check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise InputError(f"{name}={value} must lie strictly between 0 and 1")


def best_choices(
    stats: Estimator, allowed: np.ndarray, rng: np.random.Generator
) -> list[Choice]:
    """Per context, the allowed arm with the highest estimate (random among ties).

    ``allowed`` [C, P, N] bool. Arms without data are chosen only if no allowed arm has data.
    Where every candidate is predicted over the context's latency limit (-inf), the one
    predicted fastest, its q_hat NaN.
    """
    mean, width, seconds = stats.mean, stats.width, stats.latency
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
        values = mean[ci].reshape(-1)
        if seconds is not None and np.all(np.isneginf(values[pool])):  # none within the limit
            values = -seconds[ci].reshape(-1)
        score = np.where(pool, np.nan_to_num(values, nan=0.0), -np.inf)
        top = score.max()
        idx = int(np.flatnonzero(pool & (score == top))[jitter[ci][pool & (score == top)].argmax()])
        arm = Arm.from_index(idx, n)
        wave = None if width is None else min(int(width[ci, arm.prompt, arm.n - 1]), arm.n)
        value = float(mean[ci, arm.prompt, arm.n - 1])  # -inf: no arm within the limit
        latency = None if seconds is None else float(seconds[ci, arm.prompt, arm.n - 1])
        out.append(Choice(arm.prompt, arm.n, value if np.isfinite(value) else float("nan"),
                          int(stats.counts[arm.prompt, arm.n - 1]), wave, latency))
    return out
