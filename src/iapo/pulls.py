"""What a learner asks and gets: pulls, observations, the budget ledger, the oracle protocol.

A pull (prompt, n, count) asks for ``count`` groups of n completions of one prompt, each on a
training query drawn uniformly at random; *paired* pulls of one batch share their queries,
the i-th group of each prompt on one query (:func:`draw_queries`). Every pull costs
n * count completions; the ledger refuses a batch that would take the total past the budget
T, before anything is drawn. The
simulated oracle (:mod:`iapo.oracle`) and the live one (:mod:`iapo.live.oracle`) implement
:class:`Oracle`; learners depend on this module only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.problem import Problem

if TYPE_CHECKING:
    from iapo.envs.base import Sample

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class BudgetExceededError(RuntimeError):
    """A pull would take the completions spent past the budget T."""


@dataclass(frozen=True)
class Pull:
    """Request ``count`` groups of ``n`` completions of ``prompt``, each on a query drawn at
    random. ``paired``: the pull shares its queries with the other paired pulls of its batch
    (:func:`draw_queries`), so that their differences are free of how hard the queries
    are."""

    prompt: int
    n: int
    count: int = 1
    paired: bool = False

    @property
    def cost(self) -> int:
        return self.n * self.count


@dataclass(frozen=True)
class Observation:
    """What one pull returns: ``count`` groups of n completions of one prompt.

    queries: [count] training-query indices; scores: [count, n, K+1] objective vectors, cost
    last (positive); labels: [count, n] answer categories and gold: [count], for MV (else None);
    no_answer: [count] the category of "no answer" of each group's query (-1: none), for MV
    where answers can be unreadable (None: no group has one). rated: [count, n, K] objective
    values that a person gave later to a completion they were shown (NaN: none; None: no
    group has one), for Best-of-N: they replace its scores as its value, while the scores
    still choose it (read by the block estimates, :meth:`iapo.estimate.QTable.grouped_blocks`,
    which continual learning uses).
    """

    prompt: int
    n: int
    queries: IntArray
    scores: FloatArray
    labels: npt.NDArray[np.int16] | None = None
    gold: npt.NDArray[np.int16] | None = None
    no_answer: npt.NDArray[np.int16] | None = None
    rated: FloatArray | None = None

    @property
    def count(self) -> int:
        return int(self.queries.shape[0])

    @property
    def rated_or_nan(self) -> FloatArray:
        """``rated``, or NaN (no person's value) of its shape [count, n, K] where None."""
        return np.full(self.scores[..., :-1].shape, np.nan) if self.rated is None else self.rated

    def rows(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice
             ) -> Observation:
        """The groups ``index`` picks (a mask, indices (repeats allowed) or a slice), every
        per-group field alike."""
        return dataclasses.replace(self, **{name: getattr(self, name)[index]
                                            for name in _PER_GROUP
                                            if getattr(self, name) is not None})

    def first(self, n: int) -> Observation:
        """The first ``n`` completions of every group (``n`` at most the groups' own): each
        a group of (prompt, n) on its query, as nested reuse has it."""
        if not 1 <= n <= self.n:
            raise ValueError(f"cannot take the first {n} of groups of {self.n} completions")
        return dataclasses.replace(self, n=n, **{name: getattr(self, name)[:, :n]
                                                 for name in ("scores", "labels", "rated")
                                                 if getattr(self, name) is not None})

    @classmethod
    def from_sample(cls, prompt: int, n: int, queries: IntArray, sample: Sample
                    ) -> Observation:
        """The groups of an environment's :meth:`~iapo.envs.base.Environment.sample` of
        ``prompt``, n completions on each of ``queries``."""
        return cls(prompt, n, queries, sample.scores, sample.labels, sample.gold,
                   sample.no_answer)


# the fields of an Observation that hold one row per group (None where absent)
_PER_GROUP = ("queries", "scores", "labels", "gold", "no_answer", "rated")


def joined(observations: Sequence[Observation]) -> dict[tuple[int, int], Observation]:
    """All groups of each (prompt, n), concatenated into one observation (in order). A group
    without a "no answer" category (``no_answer`` None) counts as -1 beside groups that have
    one, one without ``rated`` values as NaN; labels and gold are all there or all absent."""
    by: dict[tuple[int, int], list[Observation]] = {}
    for o in observations:
        if o.count:
            by.setdefault((o.prompt, o.n), []).append(o)
    out = {}
    for key, obs in by.items():
        if len(obs) == 1:
            out[key] = obs[0]
            continue
        fields: dict[str, Any] = {}
        for name in _PER_GROUP:
            parts = [getattr(o, name) for o in obs]
            if all(a is None for a in parts):
                fields[name] = None
            elif name == "no_answer":
                fields[name] = np.concatenate([np.full(o.count, -1, dtype=np.int16) if a is None
                                               else a for o, a in zip(obs, parts, strict=True)])
            elif name == "rated":  # a group without a person's values has NaN
                fields[name] = np.concatenate([o.rated_or_nan for o in obs])
            elif any(a is None for a in parts):
                raise ValueError(f"observations of prompt {key[0]} differ in having {name}")
            else:
                fields[name] = np.concatenate(parts)
        out[key] = dataclasses.replace(obs[0], **fields)
    return out


def draw_queries(requests: Sequence[Pull], pools: Sequence[IntArray], universe: IntArray,
                 rng: np.random.Generator) -> IntArray:
    """The query of every group of ``requests`` (concatenated, in order), uniform on its pull's
    pool of queries (``pools``, one per pull, each within ``universe``, the training
    queries); the draws of every oracle. A pull that is not paired draws each group's query
    on its own (with no paired pull, exactly the draws of one ``rng.integers`` call per pull).
    Paired pulls share one sequence of queries s_i, uniform on ``universe`` (s_i =
    universe[floor(u_i x size)], u_i uniform): a prompt's paired groups take s_0, s_1, ... in
    turn, across the batch's pulls (a second pull of a prompt goes on where its first
    stopped), so the i-th paired groups of all prompts fall on one query; where s_i is not in
    a pull's pool, that group draws from its pool on its own. So each group's query is
    uniform on its pool (P(q) = 1 / |universe| + (1 - |pool| / |universe|) / |pool| =
    1 / |pool|), and the prompts share their queries wherever their pools do."""
    for r, pool in zip(requests, pools, strict=True):
        if r.count and not pool.size:
            raise InputError(f"prompt {r.prompt} has no query to draw from; give it data on "
                             "some training query")
    totals: dict[int, int] = {}
    for r in requests:
        if r.paired:
            totals[r.prompt] = totals.get(r.prompt, 0) + r.count
    u = rng.random(max(totals.values(), default=0))
    shared = universe[np.minimum((u * universe.size).astype(np.int64), universe.size - 1)]
    used: dict[int, int] = {}
    parts = []
    for r, pool in zip(requests, pools, strict=True):
        if not r.paired:
            parts.append(pool[rng.integers(0, pool.size, r.count)])
            continue
        first = used.get(r.prompt, 0)
        used[r.prompt] = first + r.count
        queries = shared[first: first + r.count].copy()
        own = ~np.isin(queries, pool)
        queries[own] = pool[rng.integers(0, pool.size, int(own.sum()))]
        parts.append(queries)
    return np.concatenate([*parts, np.zeros(0, dtype=np.int64)])


def abstain_categories(problem: Problem, observations: Sequence[Observation]
                       ) -> npt.NDArray[np.int64] | None:
    """Each group's "no answer" category, for a problem under the abstain rule (-1 where a
    group has none), the groups of ``observations`` in order: [groups]. None under the vote
    rule, or where no observation names one (then both rules score alike)."""
    if problem.no_answer != "abstain" or all(o.no_answer is None for o in observations):
        return None
    return np.concatenate([np.full(o.count, -1, dtype=np.int64) if o.no_answer is None
                           else np.asarray(o.no_answer, dtype=np.int64).reshape(-1)
                           for o in observations])


class Ledger:
    """Counts completions spent and refuses any charge past the budget."""

    def __init__(self, budget: int) -> None:
        if int(budget) != budget or budget < 0:
            raise InputError(f"budget T={budget} must be a non-negative integer (a number of "
                             "completions)")
        self.budget = int(budget)
        self.spent = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.spent

    def charge(self, completions: int) -> None:
        if completions < 0:
            raise ValueError(f"cannot charge a negative number of completions ({completions})")
        if self.spent + completions > self.budget:
            raise BudgetExceededError(
                f"pull of {completions} completions refused: {self.spent} of the budget "
                f"{self.budget} are spent, {self.remaining} remain"
            )
        self.spent += completions

    def refund(self, completions: int) -> None:
        """Give back a charge whose pull was not served (a live pull that failed)."""
        if not 0 <= completions <= self.spent:
            raise ValueError(f"cannot refund {completions} of {self.spent} spent completions")
        self.spent -= completions


class Oracle(Protocol):
    """What every learner talks to: a simulated environment or a live LLM."""

    problem: Problem
    ledger: Ledger

    def pull(self, requests: Sequence[Pull]) -> list[Observation]: ...


def validate_pulls(problem: Problem, requests: Sequence[Pull]) -> int:
    """Check every pull against the problem; return their total cost in completions."""
    if not requests:
        return 0
    values = [(r.prompt, r.n, r.count) for r in requests]
    kinds = {type(v) for row in values for v in row}
    if bool in kinds or not all(issubclass(k, int | np.integer) for k in kinds):
        for row in values:
            for name, value in zip(("prompt", "n", "count"), row, strict=True):
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise InputError(f"pull {name} {value!r} must be an integer")
    table = np.array(values, dtype=np.int64)  # [R, 3]: prompt, n, count
    bad = np.flatnonzero((table[:, 0] < 0) | (table[:, 0] >= problem.n_prompts))
    if bad.size:
        raise InputError(f"pull names prompt {int(table[bad[0], 0])}; prompts are "
                         f"0..{problem.n_prompts - 1}")
    bad = np.flatnonzero((table[:, 1] < 1) | (table[:, 1] > problem.n_max))
    if bad.size:
        problem.check_n(int(table[bad[0], 1]))
    bad = np.flatnonzero(table[:, 2] < 0)
    if bad.size:
        raise InputError(f"pull count {int(table[bad[0], 2])} must be a non-negative integer")
    return int(table[:, 1] @ table[:, 2])


class Reusing:
    """An oracle that gives groups already drawn before it draws: every pull that is not
    paired takes, of its ``count`` groups, as many as ``groups`` still holds of its prompt
    at least n wide (the first n completions of each, :meth:`Observation.first`; each group
    given once, in an order drawn from ``rng`` once), free; only the rest is drawn from
    ``oracle`` and charged to its ledger (which this oracle shares), all or nothing as
    there: a batch it refuses gives no group either. ``taken`` maps each group drawn to the
    one the learner sees (e.g. its query by id), where ``groups`` are already so mapped.
    ``paid``: the observations drawn and charged, in order, as the learner saw them;
    ``reused_groups``, ``reused_completions``: what was given free."""

    def __init__(self, oracle: Oracle, groups: Sequence[Observation],
                 rng: np.random.Generator,
                 taken: Callable[[Observation], Observation] | None = None) -> None:
        self.oracle, self.problem, self.ledger = oracle, oracle.problem, oracle.ledger
        self.taken = taken
        self._groups = [o for o in groups if o.count]
        sizes = [o.count for o in self._groups]
        order = rng.permutation(sum(sizes))
        self._prompt = np.repeat([o.prompt for o in self._groups], sizes).astype(np.int64)[order]
        self._width = np.repeat([o.n for o in self._groups], sizes).astype(np.int64)[order]
        self._which = np.repeat(np.arange(len(sizes)), sizes)[order]
        self._row = np.concatenate([np.arange(k) for k in sizes] or [np.zeros(0, np.int64)]
                                   ).astype(np.int64)[order]
        self._used = np.zeros(order.size, dtype=bool)
        self.paid: list[Observation] = []
        self.reused_groups = 0
        self.reused_completions = 0

    def _pick(self, r: Pull) -> npt.NDArray[np.intp]:
        """The banked groups (positions) for pull ``r``, none for a paired one, marked
        used."""
        if r.paired or not r.count:
            return np.zeros(0, dtype=np.intp)
        free = ~self._used & (self._prompt == r.prompt) & (self._width >= r.n)
        pick = np.flatnonzero(free)[: r.count]
        self._used[pick] = True
        return pick

    def _given(self, pick: npt.NDArray[np.intp], n: int) -> list[Observation]:
        """The first ``n`` completions of the banked groups ``pick``."""
        return [self._groups[int(i)].rows(self._row[pick[self._which[pick] == i]]).first(n)
                for i in dict.fromkeys(self._which[pick].tolist())]

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        validate_pulls(self.problem, requests)
        picks = [self._pick(r) for r in requests]
        rest = [dataclasses.replace(r, count=r.count - p.size)
                for r, p in zip(requests, picks, strict=True)]
        ask = [i for i, (r, p) in enumerate(zip(rest, picks, strict=True))
               if r.count or not p.size]
        try:
            drawn = dict(zip(ask, self.oracle.pull([rest[i] for i in ask]) if ask else [],
                             strict=True))
        except BaseException:  # refused or failed: nothing given either
            for p in picks:
                self._used[p] = False
            raise
        if self.taken is not None:
            drawn = {i: self.taken(o) if o.count else o for i, o in drawn.items()}
        self.paid.extend(o for o in drawn.values() if o.count)
        out = []
        for i, (r, p) in enumerate(zip(requests, picks, strict=True)):
            self.reused_groups += int(p.size)
            self.reused_completions += int(p.size) * r.n
            parts = [*self._given(p, r.n), drawn[i]] if i in drawn else self._given(p, r.n)
            out.append(parts[0] if len(parts) == 1 else joined(parts)[(r.prompt, r.n)])
        return out
