"""PSST: Prompt Scaling via Sequential Trimming (paper, Algorithm 1 and Eq. 6).

In each of R = ceil(log2 |A|) rounds, every prompt with an active arm in some context is
pulled at its largest active N, all equally often: floor(n_r / M) groups each, M the sum of
those N (Eq. 6). Each group scores every context and, by blocks, every smaller N. Then every
context keeps the better half (ceil) of its active arms, so that after R rounds one remains.

One loop, :func:`psst`, runs Algorithm 1 over three parts, and each learner is a composition
of them, not a set of flags:

- a schedule, :class:`Halving`: R rounds, or at most ``rounds`` (``uniform``: one batch);
- an allocation: :class:`LargestN` (Eq. 6), or :class:`Groups` of a fixed size for an
  estimator that infers every N from small groups (``psst-model``, beyond the paper);
- an estimator: a :class:`iapo.estimate.QTable` of blocks or subsets that stockpiles, a
  :class:`RoundOnly` one that forgets every round, or :class:`iapo.model.ModelQTable`.

``psst`` = Halving + LargestN + a stockpiling QTable; ``uniform`` = Halving(rounds=1) +
LargestN; ``psst-model`` = Halving + Groups + ModelQTable; ``psst-k*`` (Top-K screening)
and ``psst-auto`` screen prompts first, then run the same loop on the survivors' arms, with
the screening's data already in the estimator.

Departures from Algorithm 1 as printed (each is tested):

- Keep ceil(half), not remove ceil(half). Line 21 removes the bottom ceil(|A_c| / 2) arms,
  which would leave no arm after R rounds for some sizes (5 arms: 2, then 1, then 0); the
  text asks for one survivor per context after R rounds, which keeping ceil(|A_c| / 2) gives.
- Stockpiling by default. Algorithm 1 is written with a fresh dataset every round; the
  paper's Remark after Theorem 1 says that aggregating the observations of all previous
  rounds ("stockpiling") "can improve the complexity of T by reducing the outer R-factor,
  and we recommend using it with PSST". ``PSST(stockpile=False)`` runs it as written.
- The budget rules below replace n_r = floor(T / R) (line 7), which wastes up to R - 1
  completions and, for small T, pays for rounds in which some prompt cannot be pulled once.

The budget T is a hard limit, and small budgets get these documented rules (the trace says
which applied):

1. Scale cap. If T cannot pay for one group of every active prompt at its largest N, arms
   whose N exceeds cap = floor(T / #prompts) are dropped before the first round: they could
   not be observed once per prompt within the budget. If even cap = 0 (T < #prompts), a
   random subset of T prompts is kept, at N = 1. (With :class:`Groups` the groups shrink to
   the cap instead and every arm stays.)
2. Fewer rounds. The number of rounds is R_eff = min(R, floor(T / M_1)), with M_1 the cost of
   one group of every active prompt in round 1, so every round can pay for at least one group
   of every prompt it pulls. When R_eff < R the rounds trim faster than halving: a context
   with s arms and q rounds left keeps ceil(s / 2) if halving still reaches one arm in time,
   else ceil(s ** ((q - 1) / q)).
3. Carry. Round r may spend up to floor(r T / R_eff) minus what was spent before it, so what a
   round could not spend moves to the next; the last round spends what is left over its equal
   pulls on single groups of randomly ordered prompts at N <= their largest active N. The whole
   of T is spent whenever rule 1 did not apply or T >= #prompts.
4. No elimination on no data: an active arm without a single block is ranked above every arm
   with data (this cannot happen in a normal run; it guards custom active sets).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.estimate import Estimator, QTable
from iapo.learners.base import (
    Choice,
    LearnerResult,
    Trace,
    best_choices,
    check_budget,
    check_count,
    check_estimator,
    check_positive,
    round_record,
)
from iapo.problem import Problem
from iapo.pulls import Observation, Oracle, Pull

BoolArray = npt.NDArray[np.bool_]


def rounds_for(n_arms: int) -> int:
    """The paper's R = ceil(log2 |A|) (0 for a single arm)."""
    return math.ceil(math.log2(n_arms)) if n_arms > 1 else 0


def keep_count(size: int, rounds_left: int) -> int:
    """How many of ``size`` active arms a context keeps with ``rounds_left`` rounds to go
    (this one included), so that exactly one is left after the last round."""
    if size <= 1:
        return size
    if rounds_left <= 1:
        return 1
    if rounds_for(size) <= rounds_left:
        return math.ceil(size / 2)
    return max(1, min(size - 1, math.ceil(size ** ((rounds_left - 1) / rounds_left))))


def _top_scale(active: BoolArray) -> npt.NDArray[np.intp]:
    """Largest active N of every prompt over all contexts (0 for a prompt with none): [P]."""
    any_n: BoolArray = np.any(active, axis=0)  # [P, N]
    n_max = active.shape[2]
    last = n_max - np.argmax(any_n[:, ::-1], axis=1)
    return np.where(any_n.any(axis=1), last, 0).astype(np.intp)


def keep_best(value: npt.NDArray[np.float64], alive: BoolArray, keep: npt.ArrayLike,
              rng: np.random.Generator) -> BoolArray:
    """Per row c of ``value`` [C, X], the ``keep[c]`` alive entries of highest value (a mask
    [C, X]): random among equals, and an entry without data (NaN) ranks above every other,
    so nothing is eliminated on no data."""
    # an alive entry over a latency limit (-inf) still ranks above every entry not alive
    floor = np.finfo(np.float64).min
    score = np.where(alive, np.where(np.isnan(value), np.inf, np.maximum(value, floor)), -np.inf)
    # a stable sort of randomly permuted columns breaks ties uniformly at random
    perm = rng.permutation(value.shape[1])
    order = perm[np.argsort(-score[:, perm], axis=1, kind="stable")]  # best first
    out = np.zeros_like(alive)
    for ci, k in enumerate(np.broadcast_to(keep, value.shape[:1])):
        out[ci, order[ci, :k]] = True
    return alive & out


def trim(
    active: BoolArray, stats: Estimator, rounds_left: int, rng: np.random.Generator
) -> BoolArray:
    """Keep the best ``keep_count`` active arms of every context (random among equals).

    Arms with no data rank above all others, so they are never eliminated on no data.
    """
    c, p, n = active.shape
    flags = active.reshape(c, p * n)
    keep = [keep_count(int(s), rounds_left) for s in flags.sum(axis=1)]
    return keep_best(stats.mean.reshape(c, p * n), flags, keep, rng).reshape(c, p, n)


# ---------------------------------------------------------------- the schedule, pure


def scale_cap(budget: int, n_prompts: int) -> int:
    """Rule 1: the largest N every one of ``n_prompts`` prompts can be pulled at once within
    ``budget``, floor(T / #prompts) (0: not even one completion each)."""
    return budget // n_prompts


def effective_rounds(r_paper: int, budget: int, first_cost: int,
                     max_rounds: int | None = None) -> int:
    """Rule 2: min(R, floor(T / M_1)) rounds, M_1 the cost of one group of every prompt in
    round 1 (and at most ``max_rounds``)."""
    r_eff = min(r_paper, budget // first_cost) if first_cost else 0
    return r_eff if max_rounds is None else min(r_eff, max_rounds)


def allowance(budget: int, round_index: int, rounds: int, used: int) -> int:
    """Rule 3 (carry): round r (0-based) may spend floor((r + 1) T / R_eff) less what the
    rounds before it spent."""
    return budget * (round_index + 1) // rounds - used


def equal_pulls(scales: npt.NDArray[np.intp], allowance_: int,
                paired: bool = False) -> list[Pull]:
    """Eq. 6: every prompt with an active arm (scale > 0) pulled floor(n_r / M) times at its
    scale, M the sum of the scales (``paired``: on shared queries, :class:`Pull`)."""
    alive = np.flatnonzero(scales > 0)
    k = allowance_ // int(scales[alive].sum())
    return [Pull(int(q), int(scales[q]), int(k), paired=paired) for q in alive] if k else []


def top_up(scales: npt.NDArray[np.intp], order: npt.ArrayLike, left: int,
           paired: bool = False) -> list[Pull]:
    """Rule 3, last round: what equal pulls leave is spent on single groups of the prompts in
    ``order``, each at most its scale, until nothing is left (``paired``: on shared
    queries)."""
    pulls = []
    for q in np.asarray(order):
        if left <= 0:
            break
        g = int(min(scales[q], left))
        pulls.append(Pull(int(q), g, 1, paired=paired))
        left -= g
    return pulls


# ---------------------------------------------------------------- the parts of a variant


@dataclass(frozen=True)
class Halving:
    """The schedule: Algorithm 1's R = ceil(log2 |A|) rounds, fewer when the budget cannot pay
    them (rule 2), and at most ``rounds`` (``uniform``: 1)."""

    rounds: int | None = None

    def rounds_run(self, r_paper: int, budget: int, first_cost: int, trace: Trace) -> int:
        """How many rounds run (rule 2); the trace says when the budget cut the paper's R."""
        r_eff = effective_rounds(r_paper, budget, first_cost, self.rounds)
        if r_eff < r_paper and self.rounds is None:
            trace.notes.append(
                f"{r_eff} rounds instead of the paper's {r_paper}: T={budget} pays for at most "
                f"{budget // max(first_cost, 1)} rounds of {first_cost} completions"
            )
        trace.info["rounds_run"] = r_eff
        return r_eff


@dataclass(frozen=True)
class LargestN:
    """The allocation of Eq. 6: every prompt with an active arm is pulled at its largest
    active N, so one group also scores, by blocks, every smaller N."""

    def scales(self, flags: BoolArray) -> npt.NDArray[np.intp]:
        """The group size of every prompt, 0 for a prompt without active arms: [P]."""
        return _top_scale(flags)

    def capped(self, flags: BoolArray, cap: int, budget: int, cost: int,
               trace: Trace) -> LargestN:
        """Rule 1 for this allocation, when T = ``budget`` cannot pay the ``cost`` of one
        group of every prompt: the arms with N > cap leave ``flags`` (in place)."""
        trace.notes.append(
            f"T={budget} cannot pay one group of every prompt at its largest N "
            f"({cost}); arms with N > {cap} were dropped (scale cap)"
        )
        flags[:, :, cap:] = False
        return self


@dataclass(frozen=True)
class Groups:
    """Beyond the paper: every prompt with an active arm is pulled in groups of ``size``, for
    an estimator that infers every N from small groups (:class:`iapo.model.ModelQTable`)."""

    size: int

    def scales(self, flags: BoolArray) -> npt.NDArray[np.intp]:
        """``size`` for every prompt with an active arm, else 0: [P]."""
        return np.where(_top_scale(flags) > 0, self.size, 0)

    def capped(self, flags: BoolArray, cap: int, budget: int, cost: int,
               trace: Trace) -> Groups:
        """Rule 1 for this allocation, when T = ``budget`` cannot pay the ``cost`` of one
        group of every prompt: groups of at most ``cap``; every arm stays."""
        trace.notes.append(f"T={budget}: groups of {min(self.size, cap)} (scale cap)")
        return Groups(min(self.size, cap))


Allocation = LargestN | Groups


class RoundOnly:
    """An estimator that forgets at every round: each update replaces what it held, so every
    round estimates from its own pulls, as Algorithm 1 is written (no stockpiling)."""

    def __init__(self, fresh: Callable[[], Estimator]) -> None:
        self._fresh = fresh
        self._stats = fresh()

    @property
    def mean(self) -> npt.NDArray[np.float64]:
        return self._stats.mean

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        return self._stats.counts

    @property
    def width(self) -> npt.NDArray[np.int64] | None:
        return self._stats.width

    @property
    def latency(self) -> npt.NDArray[np.float64] | None:
        return self._stats.latency

    def update(self, observations: Sequence[Observation]) -> None:
        self._stats = self._fresh()
        self._stats.update(observations)


def _scale_cap(flags: BoolArray, allocation: Allocation, budget: int, rng: np.random.Generator,
               trace: Trace) -> Allocation:
    """Rule 1 (in place on ``flags``): when T cannot pay one group of every prompt, groups of
    at most floor(T / #prompts); below one completion each, T random prompts at N = 1."""
    top = allocation.scales(flags)
    alive = np.flatnonzero(top > 0)
    cost = int(top[alive].sum())
    if budget >= cost:
        return allocation
    cap = scale_cap(budget, alive.size)
    if cap == 0:
        kept = rng.choice(alive, size=budget, replace=False) if budget else alive[:0]
        flags[:, np.setdiff1d(alive, kept)] = False
        cap = 1
        trace.notes.append(f"T={budget} is below one completion per prompt ({alive.size}); "
                           f"kept {kept.size} random prompts at N = 1")
    trace.info["scale_cap"] = cap
    return allocation.capped(flags, cap, budget, cost, trace)


# ---------------------------------------------------------------- Algorithm 1


def psst(
    problem: Problem,
    oracle: Oracle,
    budget: int,
    rng: np.random.Generator,
    *,
    schedule: Halving = Halving(),
    allocation: Allocation = LargestN(),
    stats: Estimator | None = None,
    active: BoolArray | None = None,
    trace: Trace | None = None,
    paired: bool = False,
    choose_from: BoolArray | None = None,
) -> LearnerResult:
    """Run PSST with budget T = ``budget`` completions: Algorithm 1's loop over a
    ``schedule`` (how many rounds), an ``allocation`` (which groups a round pulls) and an
    estimator ``stats`` (a stockpiling blocks :class:`QTable` by default; it may hold data
    gathered before, e.g. by a screening), from the arms ``active`` [C, P, N_max] (all by
    default), going on with the ``trace`` of a learner that ran before on the same budget.
    ``paired``: every round's prompts are pulled on shared queries (:class:`Pull`; beyond
    the paper, whose groups each draw their own). ``choose_from``: :func:`final_choices`."""
    budget = check_budget(oracle, budget)
    flags = _start(problem, active)
    among = None if choose_from is None else _start(problem, choose_from, "choose_from")
    stats = stats if stats is not None else QTable(problem)
    trace = trace if trace is not None else Trace()
    start = oracle.ledger.spent
    allocation, r_eff = rounds_planned(flags, budget, schedule, allocation, rng, trace)
    for r in range(r_eff):
        n_r = allowance(budget, r, r_eff, oracle.ledger.spent - start)  # rule 3
        top = allocation.scales(flags)
        pulls = equal_pulls(top, n_r, paired)  # Eq. 6
        if r == r_eff - 1:
            left = n_r - sum(x.cost for x in pulls)
            pulls += top_up(top, rng.permutation(np.flatnonzero(top > 0)), left, paired)
        stats.update(oracle.pull(pulls))
        flags = trim(flags, stats, r_eff - r, rng)  # keep the better half per context
        trace.rounds.append(round_record(r + 1, n_r, pulls, flags))
    trace.completions_used += oracle.ledger.spent - start
    return LearnerResult(final_choices(stats, flags, among, rng, trace), trace)


def final_choices(stats: Estimator, flags: BoolArray, among: BoolArray | None,
                  rng: np.random.Generator, trace: Trace) -> list[Choice]:
    """PSST's choice per context by the last estimates ``stats``: among the last round's
    survivors ``flags`` [C, P, N_max], as Algorithm 1, or among the arms ``among`` (beyond
    the paper; ``psst-auto`` passes every arm it started from where its model decides). With
    ``among``, the trace's ``survivors_choice`` records what Algorithm 1 would have chosen
    ([prompt, N] per context, with the same tie-break draws: a copy of the generator, which
    is left as Algorithm 1 leaves it), and ``reopened`` whether the choice differs from it
    (a choice outside the last round's survivors)."""
    if among is None:
        return best_choices(stats, flags, rng)
    survivors = best_choices(stats, flags, copy.deepcopy(rng))
    choices = best_choices(stats, among, rng)
    trace.info["survivors_choice"] = [[ch.prompt, ch.n] for ch in survivors]
    trace.info["reopened"] = [(ch.prompt, ch.n) != (was.prompt, was.n)
                              for ch, was in zip(choices, survivors, strict=True)]
    return choices


def rounds_planned(flags: BoolArray, budget: int, schedule: Halving, allocation: Allocation,
                   rng: np.random.Generator, trace: Trace) -> tuple[Allocation, int]:
    """What :func:`psst` fixes before its first round, from the active arms ``flags``
    [C, P, N_max] (in place) and T: the paper's R (in ``trace.info``), rule 1 (the scale cap,
    which may narrow ``flags`` and the allocation) and rule 2 (the rounds run). Returns the
    allocation the rounds use and their number; ``iapo optimize --dry-run`` plans with it."""
    r_paper = rounds_for(int(flags.sum(axis=(1, 2)).max()))
    trace.info["rounds_paper"] = r_paper
    allocation = _scale_cap(flags, allocation, budget, rng, trace)  # rule 1
    cost = int(allocation.scales(flags).sum())
    return allocation, schedule.rounds_run(r_paper, budget, cost, trace)  # rule 2


def _start(problem: Problem, active: BoolArray | None, name: str = "active") -> BoolArray:
    """The arms every context starts with (a copy), checked (``name``: the argument's, for
    the message)."""
    shape = (problem.n_contexts, problem.n_prompts, problem.n_max)
    flags = np.ones(shape, dtype=bool) if active is None else np.array(active, dtype=bool)
    if flags.shape != shape or not flags.any(axis=(1, 2)).all():
        raise InputError(f"{name} must be [C, P, N] = {shape} with an arm in every context")
    return flags


# ---------------------------------------------------------------- the learners


@dataclass(frozen=True, kw_only=True)
class PSST:
    """``psst``: PSST over all arms. ``stockpile`` keeps every round's data for the rounds
    after it (the paper recommends it: Remark after Theorem 1); without it each round
    estimates from its own pulls only, as Algorithm 1 is written (:class:`RoundOnly`)."""

    estimator: str = "blocks"
    stockpile: bool = True

    def __post_init__(self) -> None:
        check_estimator(self.estimator)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        def fresh() -> QTable:
            return QTable(problem, self.estimator)

        return psst(problem, oracle, budget, rng,
                    stats=fresh() if self.stockpile else RoundOnly(fresh))


@dataclass(frozen=True, kw_only=True)
class Uniform:
    """``uniform``: every prompt at N_max equally often in one batch, then the best arm of
    every context (all arms share the groups by blocks and contexts): PSST with one round."""

    estimator: str = "blocks"

    def __post_init__(self) -> None:
        check_estimator(self.estimator)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        return psst(problem, oracle, budget, rng, schedule=Halving(rounds=1),
                    stats=QTable(problem, self.estimator))


@dataclass(frozen=True, kw_only=True)
class PSSTModel:
    """``psst-model``: PSST's rounds and trimming over all arms, but every active prompt is
    pulled in groups of ``group`` on many queries, and Q(c, p, n) for every n comes from a
    model of each query's answers (MV, Dirichlet(``alpha``) prior) or of query effects plus
    pooled noise (BoN); see :mod:`iapo.model`. The model is the estimator, so it takes no
    ``estimator``."""

    group: int = 2
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_count("group", self.group)
        check_positive("alpha", self.alpha)

    def __call__(self, problem: Problem, oracle: Oracle, budget: int,
                 rng: np.random.Generator) -> LearnerResult:
        from iapo.model import ModelQTable

        return psst(problem, oracle, budget, rng, stats=ModelQTable(problem, self.alpha),
                    allocation=Groups(min(self.group, problem.n_max)))


__all__ = ["PSST", "Allocation", "Choice", "Groups", "Halving", "LargestN", "PSSTModel",
           "RoundOnly", "Uniform", "allowance", "effective_rounds", "equal_pulls",
           "final_choices", "keep_best", "keep_count", "psst", "rounds_for", "rounds_planned",
           "scale_cap", "top_up", "trim"]
