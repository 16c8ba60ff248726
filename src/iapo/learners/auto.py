"""``psst-auto``, the default learner: screen prompts cheaply, then decide with PSST.

Beyond the paper. The benches (docs/default-learner.md) show that which learner is best
changes with the environment and the budget, and that almost all of a good learner's regret
is the choice of prompt, not of N. ``psst-auto`` spends its budget in two phases:

1. Screening, at most rho T completions (rho = 1/2). Successive halving over *prompts*: every
   round, every prompt still alive in some context is pulled equally often in groups of g
   completions, each group on a query drawn at random (Eq. 6 with M = g x the prompts
   pulled; Best-of-N's prompts on shared queries, below):
   floor(n_r / M) groups each, n_r the round's allowance (rule 3 of PSST: floor((r+1) rho T /
   R_s) less what was spent). Groups of g feed a per-query model (:mod:`iapo.model`), which
   estimates Q for every N from them, and for Best-of-N also unbiased blocks (N <= g). Then
   every context keeps k of its prompts, k half of them (ceil) but never fewer than ``keep``
   (2), and k = ``keep`` after the last round:

   - majority voting: the k best by the model's value max_N Q(c, p, N);
   - Best-of-N: the k best by the model's value where the validation below, run on the
     groups drawn so far, picks the model (or contexts price latency); else the union of
     the ceil(k / 2) best by the model's value and the ceil(k / 2) best by the blocks' max
     over N <= g of Q, so between ceil(k / 2) and 2 ceil(k / 2) prompts (k + 1 for an odd
     k; fewer when the two rankings agree): on real score distributions the model's large-N
     extrapolation can misrank prompts, while small-N blocks miss prompts that win only at
     large N. Where the rest of the budget is expected to commit (step 3: at least T less
     floor(rho T), it pays fewer than COMMIT_BLOCKS blocks of N_max for each of ``keep``
     prompts), a context whose groups tell its prompts apart at one completion
     (:func:`separated_at_one`, a one-way analysis of variance at SEPARATE_LEVEL) keeps its
     k best by the blocks' Q(c, p, 1) instead: what the commitment will rank by, measured on
     every completion of the screening.

   R_s = ceil(log2(#prompts / keep)) rounds, fewer if rho T cannot pay one group of every
   prompt per round (min(R_s, floor(rho T / (#prompts g)))); with no round the screening is
   skipped and PSST decides among all prompts (the trace says so). g = min(2, N_max) for
   majority voting and min(4, N_max) for Best-of-N.
2. Which estimator decides, by validation on the screening's groups
   (:mod:`iapo.learners.validate`): the per-query model or the unbiased blocks, whichever
   predicts the held-out folds' block means of the prompts alive better. The model stands
   first; blocks replace it when their held-out error is smaller by a one-sided paired t test
   over the folds at 0.05 (:func:`level_for`). For Best-of-N the model must also pass the
   slope check (:func:`iapo.learners.validate.slope_check`): its rise from one completion to
   the best of g no steeper than the groups' own, which is where its error at large N starts;
   else blocks decide. Best-of-N validates in every screening round, on the prompts of that
   round, and decides with the last round's choice, the one that ranked its last cut;
   majority voting validates once, on the survivors. ``decide`` fixes the estimator instead
   (Best-of-N then screens by the model alone for "model", by the union for "blocks").
   Contexts that price latency leave the model alone: blocks do not price it. The trace
   records the choice, the errors, the slope check and why (``estimator``;
   ``screening_ranked_by`` for Best-of-N's rounds; ``committed``, per context the prompt it
   committed to, None where it kept its survivors).
3. Deciding, the rest of T: PSST (Algorithm 1 with its budget rules) over every arm (p, N) of
   each context's surviving prompts, with the chosen estimator: the model with groups of g
   (``psst-model`` on the survivors), or unbiased blocks, stockpiled with the screening's
   groups, pulled at the largest live N. Best-of-N with blocks commits first: a context where
   the rest of the budget (shared by every context) pays fewer than COMMIT_BLOCKS blocks of
   N_max for each of its own surviving prompts keeps only its prompt of highest Q(c, p, 1) by
   blocks (every completion is a block of one); with no screening round, none commits.
   Telling two prompts apart at large N takes many independent blocks, which small budgets
   cannot pay, while the N of one prompt is told from nested blocks of the same groups.
   Where the model decides, the final choice is the best by its last estimates among every
   arm of the prompts the screening kept, not only among PSST's last survivors (beyond the
   paper; ``psst``'s ``choose_from``; the trace's ``survivors_choice`` records Algorithm
   1's choice and ``reopened``, per context, whether the choice differs): every arm of a
   prompt rests on all of its answers, so a prompt cut in an early round, whose later rivals
   fell as their answers grew, can still win on the same evidence. With blocks an arm cut
   early rests on a few blocks of its N, the luckiest of which a choice among all would
   favour; blocks keep Algorithm 1's choice (docs/default-learner.md has both measured).

Majority voting's model fits its prior (``prior="fitted"``, :class:`iapo.model.ModelQTable`;
beyond the paper): where every query's answers are its right answer or one wrong answer (and
enough queries were answered wrong twice to show it, or the problem declares two answers), a
query's chance of a right answer is logit-normal across each prompt's queries, fitted to all
the prompts' answers, which groups of 2 on many queries measure well; the credit at large N
rests on that spread, which a fixed prior on each query cannot see. Elsewhere (several wrong
answers, or too few to tell) the fixed Dirichlet prior stands; ``prior="fixed"`` keeps it
everywhere. The trace records which (``prior``) and why (``prior_reason``), where the model
made an estimate; docs/default-learner.md says what it gives.

Best-of-N pulls every round's prompts on shared queries (:func:`pairs`; beyond the paper):
the i-th group of every prompt pulled in a round falls on one query, so the differences
between prompts, on which every ranking rests, are free of how good each query's completions
can be. Majority voting draws each group's query on its own, as the paper does.

The budget is a hard limit: the screening spends at most floor(rho T), PSST the rest. The
trace numbers the screening rounds -R_s..-1 and PSST's 1..R. A problem with the mixed
aggregator (no model of it) gets plain PSST.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.estimate import Estimator, GroupMeans, QTable
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
from iapo.learners.validate import Validation, cross_validate, slope_check
from iapo.model import PRIORS
from iapo.problem import Problem
from iapo.pulls import Observation, Oracle

if TYPE_CHECKING:
    from iapo.model import ModelQTable

BoolArray = npt.NDArray[np.bool_]
# how psst-auto picks the estimator that decides: by validation (the default), or fixed
DECIDERS = ("validate", "model", "blocks")
# the model stands unless blocks beat it at this one-sided level
MODEL_LEVEL = 0.05
# Best-of-N with blocks keeps one prompt where the rest of the budget pays fewer than this
# many blocks of N_max per surviving prompt (docs/default-learner.md)
COMMIT_BLOCKS = 30
# where the rest is expected to commit, a context ranks its screening by Q(c, p, 1) if its
# groups tell its prompts apart at one completion at this level (docs/default-learner.md)
SEPARATE_LEVEL = 0.05
# a sum of squares below this share of the samples' own sum of squares is rounding
ROUNDING_SHARE = 1e-12


def level_for(level: float | None) -> float:
    """The one-sided level at which blocks must beat the model in the validation: ``level``,
    or by default MODEL_LEVEL (docs/default-learner.md says why)."""
    return MODEL_LEVEL if level is None else level


def default_estimator(problem: Problem) -> str:
    """The estimator psst-auto decides with where no validation runs (no screening round, or
    ``decide`` fixes it): the model for majority voting and wherever contexts price latency
    (blocks do not), blocks for Best-of-N, which then also rank prompts beside the model in
    the screening."""
    return "model" if problem.aggregator == "mv" or problem.needs_latency else "blocks"


def pairs(problem: Problem) -> bool:
    """Whether psst-auto pulls every round's prompts on shared queries by default
    (:class:`Pull`'s ``paired``): for Best-of-N, where how good a query's completions can be
    moves every prompt's utilities alike, and where it measured better in every cell; not
    for majority voting, where it measured better on two environments and no better on
    ``math`` (docs/default-learner.md)."""
    return problem.aggregator == "bon"


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
    decide: str = "validate"
    folds: int = 5
    level: float | None = None
    paired: bool | None = None  # on shared queries; None: by the aggregator (pairs)
    prior: str = "fitted"  # the majority-voting model's prior (iapo.model.PRIORS)

    def __post_init__(self) -> None:
        check_fraction("rho", self.rho)
        check_count("keep", self.keep)
        check_positive("alpha", self.alpha)
        if self.decide not in DECIDERS:
            raise InputError(f"decide='{self.decide}' is unknown; use one of "
                             f"{', '.join(DECIDERS)}")
        if self.folds < 2:
            raise InputError(f"folds={self.folds}: a validation needs at least 2 folds")
        if self.prior not in PRIORS:
            raise InputError(f"prior='{self.prior}' is unknown; use one of {', '.join(PRIORS)}")
        if self.paired is not None and not isinstance(self.paired, bool):
            raise InputError(f"paired={self.paired!r} must be true, false or None (by the "
                             "aggregator)")
        if self.level is not None and not 0 < self.level < 1:
            raise InputError(f"level={self.level} must lie strictly between 0 and 1 (or be "
                             f"None: {MODEL_LEVEL})")

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        from iapo.model import ModelQTable

        budget = check_budget(oracle, budget)
        paired = pairs(problem) if self.paired is None else self.paired
        if problem.aggregator == "mixed":  # no model of mixed outcomes: PSST decides alone
            result = psst(problem, oracle, budget, rng, paired=paired)
            result.trace.info["paired"] = paired
            result.trace.notes.insert(0, "mixed aggregator: no screening, plain PSST")
            return result
        c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
        mv = problem.aggregator == "mv"
        g = group_size(problem.aggregator, n)
        model = ModelQTable(problem, self.alpha, self.prior)
        default = default_estimator(problem)
        # blocks rank prompts beside the model, and may decide, where they are the default
        blocks = QTable(problem) if default == "blocks" else None
        trace = Trace(info={"group": g, "paired": paired})
        start = oracle.ledger.spent
        screen = int(self.rho * budget)
        rounds = screening_rounds(p, self.keep, screen, g)
        alive = np.ones((c, p), dtype=bool)
        seen: list[Observation] = []
        screened: list[str] = []  # BoN: what each screening round ranked by
        # the validations draw their folds from a generator of their own, so that they leave
        # the learner's tie-breaks as they were
        folds_rng = rng.spawn(1)[0]
        validation: Validation | None = None  # BoN: the last screening round's
        # Best-of-N deciding with blocks: whether a context keeping ``keep`` prompts is expected
        # to commit (the screening spends at most ``screen``; _committed decides on what is
        # left), and the groups' means of one completion that tell its prompts apart
        commits_early = not mv and bool(commits(budget - screen, n, self.keep))
        groups = GroupMeans(problem) if blocks is not None and commits_early else None
        for r in range(rounds):
            n_r = allowance(screen, r, rounds, oracle.ledger.spent - start)
            pulls = equal_pulls(np.where(alive.any(axis=0), g, 0), n_r, paired)
            observations = oracle.pull(pulls)
            seen += observations
            model.update(observations)
            k = np.array([survivors(int(s), self.keep, r == rounds - 1)
                          for s in alive.sum(axis=1)])
            by_model = np.max(model.mean, axis=2)
            if blocks is None:  # majority voting, or Best-of-N priced for latency
                alive = _keep_rows(by_model, alive, k, rng)
                if not mv:
                    screened.append("model")
            else:
                blocks.update(observations)
                if groups is not None:
                    groups.update(observations)
                if self.decide == "validate":
                    validation = self._validate(problem, seen, alive, g, folds_rng, model)
                if (validation.choice if validation is not None else self.decide) == "model":
                    screened.append("model")
                    alive = _keep_rows(by_model, alive, k, rng)
                else:
                    by_blocks = np.max(blocks.mean[:, :, :g], axis=2)
                    half = np.maximum(1, np.ceil(k / 2)).astype(int)
                    union = (_keep_rows(by_model, alive, half, rng)
                             | _keep_rows(by_blocks, alive, half, rng))
                    # where the rest is expected to commit by Q(c, p, 1), rank by it too in
                    # the contexts whose groups tell their prompts apart at one completion
                    at_one = (separated_at_one(groups, alive) if groups is not None
                              else np.zeros(c, dtype=bool))
                    if at_one.any():
                        union = np.where(at_one[:, None],
                                         _keep_rows(blocks.mean[:, :, 0], alive, k, rng), union)
                        screened.append(f"union, {int(at_one.sum())} of {c} contexts by "
                                        "Q(c, p, 1)")
                    else:
                        screened.append("union")
                    alive = union
            trace.rounds.append(round_record(-(rounds - r), n_r, pulls, alive.sum(axis=1) * n))
        if rounds == 0:
            trace.notes.append(f"screening skipped: {p} prompts, keep={self.keep}, and rho*T = "
                               f"{screen} cannot pay a round of groups of {g} for every prompt"
                               if p > self.keep else
                               f"screening skipped: keep={self.keep} keeps every prompt")
        trace.info["screened_prompts"] = [np.flatnonzero(a).tolist() for a in alive]
        if screened:
            trace.info["screening_ranked_by"] = screened
        active = np.repeat(alive[:, :, None], n, axis=2)
        trace.completions_used = oracle.ledger.spent - start
        left = budget - trace.completions_used
        if self.decide != "validate":
            choice = self.decide
            trace.info["estimator"] = {"choice": choice, "reason": f"{choice}: set by decide="}
        else:
            # Best-of-N decides with its last screening round's choice, which cut the prompts
            # (the prompts of that round); majority voting validates on the survivors
            if validation is None:
                validation = self._validate(problem, seen, alive, g, folds_rng, model)
            choice = validation.choice
            trace.info["estimator"] = validation.to_dict()
        if mv and rounds:  # the prior the model ranked by (fixed where not binary), and why
            trace.info["prior"] = model.prior_used
            trace.info["prior_reason"] = model.prior_reason
        if choice == "model":  # the choice among every arm of the screening's survivors
            result = psst(problem, oracle, left, rng, active=active, stats=model, trace=trace,
                          allocation=Groups(g), paired=paired, choose_from=active)
            if mv:
                result.trace.info["prior"] = model.prior_used
                result.trace.info["prior_reason"] = model.prior_reason
            return result
        if blocks is None:
            blocks = QTable(problem)
            if seen:
                blocks.update(seen)
        if not mv and seen:
            before = alive.sum(axis=1)
            alive = _committed(blocks.mean[:, :, 0], alive, left, n, rng)
            if (alive.sum(axis=1) < before).any():  # per context: its prompt, or None
                trace.info["committed"] = [int(np.flatnonzero(a)[0]) if k < b else None
                                           for a, k, b in zip(alive, alive.sum(axis=1),
                                                              before, strict=True)]
            active = np.repeat(alive[:, :, None], n, axis=2)
        return psst(problem, oracle, left, rng, active=active, stats=blocks, trace=trace,
                    allocation=LargestN(), paired=paired)

    def _validate(self, problem: Problem, seen: list[Observation], alive: BoolArray, g: int,
                  rng: np.random.Generator, model: ModelQTable) -> Validation:
        """Which estimator, ``model`` or ``blocks``, predicts held-out screening groups of the
        ``alive`` [C, P] prompts better (:mod:`iapo.learners.validate`). The model stands
        first; blocks replace it when their held-out error is smaller, at :func:`level_for`.
        For Best-of-N the model must also pass the slope check, on the groups of size
        ``g`` (``model``: fitted on ``seen``)."""
        from iapo.model import ModelQTable

        default = default_estimator(problem)
        if problem.needs_latency:
            return Validation(default, {}, 0, 0, "model: blocks do not price latency or the "
                              "wave width, so the model decides without a validation")
        if not seen:
            return Validation(default, {}, 0, 0, f"{default}: no screening data to validate "
                              "on; the aggregator's default decides")
        # the folds' model fits its prior where the whole screening's does (a fold, a part
        # of its answers, is binary where they are, with less evidence), so that the
        # validation scores the model that decides
        prior = "fitted" if (problem.aggregator == "mv" and self.prior == "fitted"
                             and model.binary() is not None) else "fixed"
        candidates: dict[str, Callable[[], Estimator]] = {
            "model": lambda: ModelQTable(problem, self.alpha, prior, evidence=0),
            "blocks": lambda: QTable(problem)}
        validation = cross_validate(problem, seen, alive, candidates, upto=g,
                                    folds=self.folds, rng=rng, level=level_for(self.level))
        if problem.aggregator == "mv" or validation.choice != "model":
            return validation
        return validation.checked(slope_check(problem, model.bon_task(), seen, alive, g))


def commits(left: int, n_max: int, prompts: npt.ArrayLike) -> BoolArray:
    """Whether ``left`` completions pay fewer than COMMIT_BLOCKS blocks of ``n_max`` for each
    of ``prompts`` surviving prompts (per context), where Best-of-N deciding with blocks
    commits to one."""
    return np.asarray(left / n_max < COMMIT_BLOCKS * np.asarray(prompts))


def separated_at_one(groups: GroupMeans, alive: BoolArray,
                     level: float = SEPARATE_LEVEL) -> BoolArray:
    """Per context [C]: do the groups of its ``alive`` [C, P] prompts tell them apart at one
    completion? A one-way analysis of variance at ``level``: each group's mean utility of one
    completion is one sample of its prompt's Q(c, p, 1) (``groups``, stockpiled), the prompts
    are the factor, and F = (between / (k - 1)) / (within / (m - k)) for the k alive prompts
    with groups and their m groups in all. Prompts whose sum of squares between is below
    ROUNDING_SHARE of the samples' own differ by rounding alone, and are not apart; with none
    within (and some between), they are, at every level. A context with fewer than two such
    prompts, or no more groups than prompts, is not."""
    from scipy import stats

    size_p = groups.counts[:, 0].astype(np.float64)  # groups per prompt: [P]
    a = alive & (size_p > 0)
    total, squares = groups.sums[:, :, 0], groups.sumsq[:, :, 0]  # [C, P]
    mean = np.divide(total, size_p, out=np.zeros_like(total), where=size_p > 0)
    k, size = a.sum(axis=1), a @ size_p
    grand = np.where(a, total, 0.0).sum(axis=1) / np.maximum(size, 1)
    between = np.where(a, size_p * (mean - grand[:, None]) ** 2, 0.0).sum(axis=1)
    spread = np.nan_to_num(groups.variance[:, :, 0]) * np.maximum(size_p - 1, 0)  # [C, P]
    within = np.where(a, spread, 0.0).sum(axis=1)
    rounding = ROUNDING_SHARE * np.where(a, squares, 0.0).sum(axis=1)
    df1, df2 = k - 1, size - k
    valid = (df1 >= 1) & (df2 >= 1) & (between > rounding)
    # no noise within (and some between): F beyond any bound, apart at every level
    noise = np.maximum(within / np.maximum(df2, 1), np.finfo(np.float64).tiny)
    with np.errstate(over="ignore"):
        f = between / np.maximum(df1, 1) / noise
    tail = stats.f.sf(np.where(valid, f, 0.0), np.maximum(df1, 1), np.maximum(df2, 1))
    return valid & (tail < level)


def _committed(q1: npt.NDArray[np.float64], alive: BoolArray, left: int, n_max: int,
               rng: np.random.Generator) -> BoolArray:
    """Best-of-N deciding with blocks: each context whose ``left`` completions pay fewer than
    COMMIT_BLOCKS blocks of ``n_max`` per alive prompt keeps only its alive prompt of highest
    ``q1`` [C, P] (the blocks' Q(c, p, 1)); the others keep theirs."""
    commit = commits(left, n_max, alive.sum(axis=1))
    if not commit.any():
        return alive
    one = _keep_rows(q1, alive, np.ones(alive.shape[0], dtype=int), rng)
    return np.where(commit[:, None], one, alive)


def _keep_rows(value: npt.NDArray[np.float64], alive: BoolArray, k: npt.NDArray[np.int_],
               rng: np.random.Generator) -> BoolArray:
    """Per context c the k[c] alive prompts of highest ``value`` [C, P] (``keep_best``),
    the contexts that keep the same number together (one random tie-break order each)."""
    out = np.zeros_like(alive)
    for kk in np.unique(k):
        rows = np.flatnonzero(k == kk)
        out[rows] = keep_best(value[rows], alive[rows], int(kk), rng)
    return out
