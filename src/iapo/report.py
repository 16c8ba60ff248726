"""What a run's completions say about every arm: Q, quality apart from cost, completions
paid, and how sure the learner's choice is.

One definition serves the report of ``iapo optimize`` and its calibration check on the
simulated environments (``benchmarks/experiments/p_best.py``):

- **The estimator is the learner's own** (:func:`estimator_for`): the per-query model for
  ``psst-model`` and for ``psst-auto`` where its validation chose the model, the subsets
  estimator for a learner given ``:subsets``, the blocks otherwise. Fed every observation of
  the run, it reproduces the ``q_hat`` the learner wrote into policy.json.
- **Quality** is the same estimator's Q with every cost weight 0 (accuracy for majority voting:
  the expected credit of the vote; the weighted task value for Best-of-N). **Cost** is what it
  subtracts with the cost weight 1, so that Q = quality - cost weight x cost
  (``iapo.utility.cost_term`` is linear). **Completions paid** is that cost when every
  completion costs 1: N, or fewer under a stopping rule.
- **Confidence** (:func:`assess`) comes from draws of every arm's Q: the 95% interval of an
  arm is the 2.5 and 97.5 percentiles of its draws; P(best) of an arm is the share of draws
  where it has the highest Q of its context; P(within margin) is the share where the chosen
  arm's Q is at most ``margin`` below the draw's best. Where every answer is its query's right
  answer or its one wrong answer, and enough queries show it
  (:func:`iapo.posterior.shown_binary`; none where the problem declares two answers,
  :func:`iapo.posterior.evidence_needed`), the draws are a hierarchical posterior of the true Q
  (:mod:`iapo.posterior`); elsewhere a bootstrap over training queries (:func:`bootstrap`):
  B resamples of the queries the run drew, with replacement, each query bringing all its
  groups of every prompt (so the prompts stay paired on the same queries), the estimator
  refitted on each. The bootstrap keeps the learner's selection and is not calibrated
  (docs/report.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo import posterior
from iapo.errors import InputError
from iapo.estimate import Estimator, QTable
from iapo.problem import Choice, Problem
from iapo.pulls import Ledger, Observation, Oracle, Pull, joined

FloatArray = npt.NDArray[np.float64]
MakeEstimator = Callable[[Problem], Estimator]

BOOTSTRAP_ROUNDS = 200
MARGIN = 0.01  # P(within margin): the chosen arm's Q at most this far below the best
# Q values this close are one tie (majority voting between two answers gives an even N the Q
# of N - 1 exactly, which floating point may miss by an ulp)
TIE = 1e-12


class Recorder:
    """The oracle it wraps (:class:`iapo.pulls.Oracle`: its problem, ledger and pulls),
    keeping every observation it serves (``observations``), in order."""

    def __init__(self, oracle: Oracle) -> None:
        self.oracle = oracle
        self.problem: Problem = oracle.problem
        self.ledger: Ledger = oracle.ledger
        self.observations: list[Observation] = []

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        observations: list[Observation] = self.oracle.pull(requests)
        self.observations.extend(observations)
        return observations


def estimator_for(learner: Any, problem: Problem,
                  trace: Mapping[str, Any] | None = None) -> tuple[str, MakeEstimator]:
    """The estimator whose Q the learner's choices carry (module docstring): its name and a
    maker of fresh ones for any problem. ``psst-auto`` decides with the estimator its
    validation chose, which its run's ``trace`` (``Trace.info``) records; without one, with its
    default for the aggregator (the model for majority voting, blocks for Best-of-N)."""
    from iapo.learners import PSSTAuto, PSSTModel
    from iapo.learners.auto import default_estimator
    from iapo.model import ModelQTable

    alpha = getattr(learner, "alpha", None)
    auto = default_estimator(problem)
    chosen = (trace or {}).get("estimator")
    if isinstance(chosen, Mapping):
        auto = chosen.get("choice", auto)
    model = (isinstance(learner, PSSTModel)
             or (isinstance(learner, PSSTAuto) and auto == "model"))
    if model and alpha is not None:
        prior = getattr(learner, "prior", "fixed")
        used = (trace or {}).get("prior")  # the prior the run used, where its trace says
        why = (trace or {}).get("prior_reason")  # ... and why
        if used == "fixed" and prior == "fitted" and why:  # asked for, not used: say why
            name = f"model (alpha = {alpha}; prior not fitted because {why})"
        elif problem.aggregator != "mv" or prior == "fixed" or used == "fixed":
            name = f"model (alpha = {alpha})"
        elif used == "fitted":
            name = "model (prior fitted to the prompts' binary answers)"
        else:
            name = f"model (prior fitted where the answers are binary, else alpha = {alpha})"
        return name, lambda pr: ModelQTable(pr, alpha, prior)
    estimator = getattr(learner, "estimator", "blocks")
    return estimator, lambda pr: QTable(pr, estimator)


@dataclass(frozen=True)
class ArmTable:
    """Every arm's estimates: q and quality [C, P, N_max]; paid [P, N_max] (completions paid
    per query) and cost [P, N_max] (their cost, so that q = quality - cost weight x cost);
    both the same in every context. NaN where the estimator has no data."""

    q: FloatArray
    quality: FloatArray
    paid: FloatArray
    cost: FloatArray


def _cost_weights(problem: Problem, weight: float) -> Problem:
    grid = problem.grid
    contexts = tuple(dataclasses.replace(c, cost_weight=weight) for c in grid.contexts)
    return dataclasses.replace(problem, grid=dataclasses.replace(grid, contexts=contexts))


def _unit_cost(observations: Sequence[Observation]) -> list[Observation]:
    out = []
    for o in observations:
        scores = o.scores.copy()
        scores[..., -1] = 1.0
        out.append(dataclasses.replace(o, scores=scores))
    return out


def fit(make: MakeEstimator, problem: Problem, observations: Sequence[Observation]) -> FloatArray:
    """Q [C, P, N_max] of a fresh estimator fed ``observations``."""
    est = make(problem)
    est.update(observations)
    return np.array(est.mean, dtype=np.float64)


def arm_table(make: MakeEstimator, problem: Problem,
              observations: Sequence[Observation]) -> ArmTable:
    """Q, quality and completions paid of every arm (module docstring)."""
    q = fit(make, problem, observations)
    quality = fit(make, _cost_weights(problem, 0.0), observations)
    weighted = fit(make, _cost_weights(problem, 1.0), observations)
    unit = fit(make, _cost_weights(problem, 1.0), _unit_cost(observations))
    return ArmTable(q, quality, quality[0] - unit[0], quality[0] - weighted[0])


@dataclass(frozen=True)
class Confidence:
    """The bootstrap's verdict: low, high [C, P, N_max] (95% percentile interval of Q),
    p_best [C, P, N_max] (share of resamples where the arm has its context's highest Q, ties
    included), p_within [M, C] (share where the chosen arm is within ``margins[m]`` of the
    best; NaN for a choice without a fixed N), over ``rounds`` resamples."""

    low: FloatArray
    high: FloatArray
    p_best: FloatArray
    p_within: FloatArray
    margins: tuple[float, ...]
    rounds: int
    method: str = "bootstrap"


def resample(groups: dict[tuple[int, int], Observation], queries: npt.NDArray[np.int64],
             copies: npt.NDArray[np.int64]) -> list[Observation]:
    """The groups of a bootstrap sample that takes query ``queries[u]`` ``copies[u]`` times:
    every copy is a query of its own (ids 0..copies.sum()-1), with all the query's groups."""
    offset = np.cumsum(copies) - copies
    out = []
    for o in groups.values():
        u = np.searchsorted(queries, o.queries)
        rep = copies[u]
        rows = np.repeat(np.arange(o.count), rep)
        copy = np.arange(rows.size) - np.repeat(np.cumsum(rep) - rep, rep)
        out.append(dataclasses.replace(o.rows(rows),
                                       queries=(offset[u][rows] + copy).astype(np.int64)))
    return out


def bootstrap(make: MakeEstimator, problem: Problem, observations: Sequence[Observation],
              rng: np.random.Generator, rounds: int = BOOTSTRAP_ROUNDS
              ) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Q [rounds, C, P, N_max] refitted on ``rounds`` resamples of the training queries
    (module docstring), and the number of distinct training queries of each prompt [P]."""
    groups = joined(observations)
    queries = np.unique(np.concatenate([o.queries for o in groups.values()]
                                       + [np.zeros(0, dtype=np.int64)]))
    c, p, n_max = problem.n_contexts, problem.n_prompts, problem.n_max
    qs = np.full((rounds, c, p, n_max), np.nan)
    for b in range(rounds):
        copies = rng.multinomial(queries.size, np.full(queries.size, 1.0 / queries.size)) \
            if queries.size else np.zeros(0, dtype=np.int64)
        qs[b] = fit(make, problem, resample(groups, queries, copies))
    seen: dict[int, set[int]] = {}
    for (prompt, _), o in groups.items():
        seen.setdefault(prompt, set()).update(o.queries.tolist())
    per_prompt = np.array([len(seen.get(i, ())) for i in range(p)], dtype=np.int64)
    return qs, per_prompt


def confidence(draws: FloatArray, choices: Sequence[Choice],
               margins: Sequence[float] = (MARGIN,)) -> Confidence:
    """Intervals, P(best) and P(within margin) from the bootstrap ``draws`` [B, C, P, N_max]
    of every arm's Q (module docstring)."""
    import warnings

    rounds, c, p, n_max = draws.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN arms stay NaN
        low = np.nanpercentile(draws, 2.5, axis=0)
        high = np.nanpercentile(draws, 97.5, axis=0)
    flat = np.where(np.isfinite(draws), draws, -np.inf).reshape(rounds, c, -1)
    best = flat.max(axis=2)  # [B, C]
    usable = np.isfinite(best)
    p_best = np.full((c, p * n_max), np.nan)
    within = np.full((len(margins), c), np.nan)
    for i in range(c):
        ok = usable[:, i]
        if not ok.any():
            continue
        top = flat[ok, i] >= best[ok, i, None] - TIE  # ties at the top all count as best
        p_best[i] = top.mean(axis=0)
        ch = choices[i]
        if ch.n is None:
            continue
        mine = flat[ok, i, ch.prompt * n_max + ch.n - 1]
        for j, m in enumerate(margins):
            within[j, i] = float(np.mean(mine >= best[ok, i] - m - TIE))
    return Confidence(low, high, p_best.reshape(c, p, n_max), within, tuple(margins), rounds)



def completion_cost(problem: Problem, observations: Sequence[Observation]) -> FloatArray:
    """The mean cost of one completion of each prompt over ``observations``: [P] (NaN for a
    prompt with none)."""
    total = np.zeros(problem.n_prompts)
    count = np.zeros(problem.n_prompts)
    for o in observations:
        total[o.prompt] += o.scores[..., -1].sum()
        count[o.prompt] += o.scores[..., -1].size
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def assess(make: MakeEstimator, problem: Problem, observations: Sequence[Observation],
           choices: Sequence[Choice], rng: np.random.Generator,
           margins: Sequence[float] = (MARGIN,), method: str = "auto") -> Confidence:
    """How sure the run is of its choices: the hierarchical posterior of
    :mod:`iapo.posterior` where every answer is its query's right answer or its one wrong
    answer (``method`` "posterior"; "auto": where, besides, enough queries show it,
    :func:`iapo.posterior.shown_binary`, or the problem declares two answers), the bootstrap
    of the learner's estimator otherwise (or with ``method`` "bootstrap")."""
    if method not in ("auto", "posterior", "bootstrap"):
        raise InputError(f"method '{method}' is unknown; use auto, posterior or bootstrap")
    # asked for by name, the posterior takes the task's answers as binary without evidence
    votes = None if method == "bootstrap" else posterior.binary_votes(
        problem, observations, 0 if method == "posterior" else None)
    if votes is None:
        if method == "posterior":
            raise InputError("the posterior needs majority voting between a right and one wrong "
                             "answer per query; use the bootstrap for this run")
        draws, _ = bootstrap(make, problem, observations, rng)
        return confidence(draws, choices, margins)
    draws = posterior.draws(problem, votes, completion_cost(problem, observations),
                            BOOTSTRAP_ROUNDS, rng)
    return dataclasses.replace(confidence(draws, choices, margins), method="posterior")
