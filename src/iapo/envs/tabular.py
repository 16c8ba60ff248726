"""Tabular environments: majority voting over answer categories, Best-of-N over score vectors.

File formats (``numpy.savez``; no pickles), loaded by :func:`load_environment`:

Majority voting (``aggregator = "mv"``, the format of the paper's MATH and CommonsenseQA data):
  answer_counts     (P, X, L) int    answers of prompt p on query x in category l; each row sums
                                     to samples_per_pair (or ``answer_probs`` (P, X, L) float,
                                     rows summing to 1)
  samples_per_pair  ()        int    completions per (prompt, query) pair
  gold              (X,)      int    the correct category of each query
  cost_per_completion (P,)    float  cost of one completion of prompt p (>= 0)
  budget_levels     (B,)      str    context names, e.g. low, mid, high
  cost_weights      (B,)      float  the cost weight of each budget level (>= 0)
  n_max             ()        int    N_max
  prompt_names      (P,)      str    optional

Best-of-N (``aggregator = "bon"``):
  scores            (P, X, S, K+1) float  S possible score vectors per pair, cost last
  probs             (P, X, S) float  their probabilities, rows summing to 1 (or ``counts``
                                     (P, X, S) int with ``samples_per_pair``); pad unused
                                     support points with probability 0
  objective_names   (K,)  str;  objective_lower (K,) float;  objective_upper (K,) float
  weight_grid       (W, K) float  the task-weight vectors of the contexts, in [0, 1]
  budget_levels     (B,)  str;  cost_weights (B,) float;  n_max () int
  prompt_names      (P,)  str    optional
Contexts are every weight vector times every budget level, uniformly likely.

Either format may also hold (``iapo export-env`` writes both):
  name              ()    str    the environment's name (default: the file name without .npz);
                                 ``iapo export-env`` stores the task's name, the name the
                                 gateway serves the task's policies under
  query_ids         (X,)  str    an id per query, distinct; a live policy's test split names
                                 its queries by these ids
  observed          (P, X) bool  which (prompt, query) pairs have data (default: all); the
                                 rows of the others are placeholders, never drawn: Q of a
                                 prompt averages over its observed queries, and a pull draws
                                 among them (iapo.envs.base.QueryTable)
  latency_overhead, latency_per_token, latency_tokens_per_cost, latency_cv,
  latency_concurrency  ()  float  the synthetic latency model's parameters (any subset; 0
                                 concurrency: no limit), iapo.latency.SyntheticLatency
And the majority-voting format:
  no_answer         (X,)  int    the category of "no answer" (unreadable completions) of each
                                 query, -1 where it has none (default: none anywhere); never
                                 the gold. Under the abstain rule it wins only where every
                                 completion abstains (iapo.utility.counted_votes)
  no_answer_rule    ()    str    how "no answer" counts: abstain (the default) or vote
                                 (iapo.problem.NO_ANSWER_RULES)
  answers           ()    int    how many answers a query can get, where a task declares
                                 them (iapo.problem.Problem.answers; a live task's labels):
                                 with 2, binary-looking answers need no evidence to count as
                                 binary (iapo.posterior.evidence_needed); at least the
                                 categories of positive probability of any query (its "no
                                 answer" left out under abstain). Majority voting only
``iapo export-env`` writes a live task's rule, and its declared answers where it has them.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from iapo.envs.base import Environment, FloatArray, IntArray, Sample
from iapo.errors import InputError
from iapo.problem import (
    NO_ANSWER_RULES,
    Aggregator,
    Arm,
    ContextGrid,
    CostObjective,
    Objective,
    Problem,
    ProblemError,
)
from iapo.utility import task_values

if TYPE_CHECKING:
    from iapo.latency import LatencyModel

_TOL = 1e-6


class DataError(InputError):
    """An environment's data is malformed; the message names the array and the problem."""


def _cdf(probs: FloatArray) -> FloatArray:
    """CDF along the last axis that reaches exactly 1 where no probability mass is left, so
    that a zero-probability category is never drawn."""
    tail = np.cumsum(probs[..., ::-1], axis=-1)[..., ::-1]  # mass at or after j
    return 1.0 - np.concatenate([tail[..., 1:], np.zeros_like(tail[..., :1])], axis=-1)


def _draw(cdf: FloatArray, n: int, rng: np.random.Generator) -> npt.NDArray[np.intp]:
    """n i.i.d. draws per row by the inverse CDF: cdf [M, S] -> indices [M, n]."""
    u = rng.random((cdf.shape[0], n))
    # summed over the categories in the first axis: elementwise over [M, n], not a short
    # inner loop per draw
    return (u[None] >= cdf.T[:, :, None]).sum(0)


def _check_probs(probs: FloatArray, what: str) -> None:
    if not np.all(np.isfinite(probs)):
        raise DataError(f"{what} contains NaN or infinite values")
    if probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1 + _TOL:
        raise DataError(
            f"{what} has probabilities outside [0, 1] (min {probs.min():g}, max {probs.max():g})"
        )
    sums = probs.sum(axis=-1)
    bad = np.argwhere(np.abs(sums - 1.0) > _TOL)
    if bad.size:
        first = tuple(int(i) for i in bad[0])
        raise DataError(
            f"{what} rows must sum to 1; row {first} sums to {sums[first]:g} "
            f"({len(bad)} bad rows)"
        )


def _budgets(levels: npt.ArrayLike, weights: npt.ArrayLike) -> dict[str, float]:
    cw = np.asarray(weights, dtype=np.float64).reshape(-1)
    names = [str(b) for b in np.asarray(levels).reshape(-1)]
    if len(names) != cw.size:
        raise DataError(f"{len(names)} budget levels but {cw.size} cost weights")
    if len(set(names)) != len(names):
        raise DataError(f"budget levels {names} must be distinct")
    return dict(zip(names, cw.tolist(), strict=True))


def _query_ids(ids: Sequence[str] | None, n_queries: int) -> tuple[str, ...] | None:
    if ids is None:
        return None
    out = tuple(str(i) for i in ids)
    if len(out) != n_queries:
        raise DataError(f"{len(out)} query ids for {n_queries} queries")
    if len(set(out)) != len(out):
        raise DataError("query ids must be distinct")
    return out


def _prompt_names(names: Sequence[str] | None, n_prompts: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"p{i}" for i in range(n_prompts))
    if len(names) != n_prompts:
        raise DataError(f"{len(names)} prompt names for {n_prompts} prompts")
    return tuple(str(n) for n in names)


def _problem(name: str, aggregator: Aggregator, grid: ContextGrid,
             prompt_names: Sequence[str] | None, n_prompts: int, n_max: int,
             costs: FloatArray) -> Problem:
    """An environment's problem, its cost bounded by the largest of ``costs``; a problem that
    cannot be built is the data's fault (a DataError)."""
    try:
        return Problem(name, aggregator, _prompt_names(prompt_names, n_prompts), int(n_max), grid,
                       CostObjective("cost", float(max(costs.max(), 1e-12))))
    except ProblemError as e:
        raise DataError(str(e)) from e


def _pairs(prompts: int | IntArray, queries: IntArray
           ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The (prompt, query) pair of every group to draw: (prompts, queries) [count] each, one
    prompt broadcast to every group."""
    q = np.asarray(queries, dtype=np.intp)
    return np.broadcast_to(np.asarray(prompts, dtype=np.intp), q.shape), q


class MVEnvironment(Environment):
    """Majority voting over answer categories (paper, Eq. 2).

    probs: [P, X, L] category probabilities of one completion; gold: [X]; cost: [P] cost of a
    completion. Contexts: one per budget level, task weight 1 on correctness.
    """

    def __init__(
        self,
        name: str,
        probs: npt.ArrayLike,
        gold: npt.ArrayLike,
        cost: npt.ArrayLike,
        budgets: Mapping[str, float],
        n_max: int,
        prompt_names: Sequence[str] | None = None,
        description: str = "",
        cacheable: bool = True,
        query_ids: Sequence[str] | None = None,
        no_answer: npt.ArrayLike | None = None,
    ) -> None:
        super().__init__()
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 3:
            raise DataError(f"answer probabilities must be (P, X, L); got shape {p.shape}")
        n_prompts, n_queries, n_cat = p.shape
        if n_cat < 2:
            raise DataError("majority voting needs at least 2 answer categories")
        _check_probs(p, "answer probabilities")
        g = np.asarray(gold)
        if g.shape != (n_queries,):
            raise DataError(f"gold must have shape ({n_queries},), one per query; got {g.shape}")
        if not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() >= n_cat:
            raise DataError(f"gold labels must be integers in 0..{n_cat - 1}")
        c = np.asarray(cost, dtype=np.float64)
        if c.shape != (n_prompts,):
            raise DataError(f"cost_per_completion must have shape ({n_prompts},); got {c.shape}")
        if not np.all(np.isfinite(c)) or c.min() < 0:
            raise DataError("cost_per_completion must be finite and >= 0")
        self.name = name
        self.description = description
        self.cacheable = cacheable
        self.query_ids = _query_ids(query_ids, n_queries)
        self.probs = p
        self.gold = g.astype(np.int16)
        self.no_answer = _no_answer(no_answer, self.gold, n_cat)
        self.cost = c
        self._cdf = _cdf(p)[..., :-1]
        try:
            grid = ContextGrid.product([Objective("correct", 0.0, 1.0)], [(1.0,)], budgets)
        except ProblemError as e:
            raise DataError(str(e)) from e
        self.problem = _problem(name, "mv", grid, prompt_names, n_prompts, n_max, c)

    @property
    def n_queries(self) -> int:
        return int(self.probs.shape[1])

    def sample(
        self, prompts: int | IntArray, queries: IntArray, n: int, rng: np.random.Generator
    ) -> Sample:
        p, q = _pairs(prompts, queries)
        labels = _draw(self._cdf[p, q], n, rng).astype(np.int16)
        gold = self.gold[q]
        scores = np.empty((q.size, n, 2))
        scores[..., 0] = labels == gold[:, None]
        scores[..., 1] = self.cost[p][:, None]
        return Sample(scores, labels, gold, None if self.no_answer is None else self.no_answer[q])

    def with_answer_probs(self, probs: npt.ArrayLike, name: str | None = None,
                          prompts: Sequence[int] | None = None) -> MVEnvironment:
        """This environment with the answer probabilities ``probs`` [P', X, L] (e.g. a prompt
        that drifted) of its ``prompts`` (default: all): the same queries, gold, costs and
        problem, computed afresh (not cached)."""
        keep = list(range(self.problem.n_prompts)) if prompts is None else list(prompts)
        budgets = {c.budget: c.cost_weight for c in self.problem.grid.contexts}
        env = MVEnvironment(name or f"{self.name}-changed", probs, self.gold, self.cost[keep],
                            budgets, self.problem.n_max,
                            [self.problem.prompts[i] for i in keep], self.description,
                            cacheable=False, query_ids=self.query_ids, no_answer=self.no_answer)
        env.observed = None if self.observed is None else self.observed[keep]
        out = env._with_problem(stopping=self.problem.stopping, no_answer=self.problem.no_answer)
        assert isinstance(out, MVEnvironment)
        return out

    def latency_quantile(self, arm: Arm, wave: int | None, quantile: float = 0.95) -> float:
        """The ``quantile`` of the latency of the arm (p, N, ``wave``) on a uniformly drawn
        query where its prompt has data (:func:`iapo.latency.latency_quantile`; ``wave``
        None: the paper's arm, all N waited for)."""
        from iapo.latency import latency_quantile

        seen = slice(None) if self.observed is None else self.observed[arm.prompt]
        abstain = self._abstain()
        model = self.latency_model()
        return latency_quantile(self.probs[arm.prompt][seen], arm.n, wave,
                                model.times[arm.prompt], quantile, model.concurrency,
                                no_answer=None if abstain is None else abstain[seen],
                                prefill=model.prefill)

    def _abstain(self) -> npt.NDArray[np.int16] | None:
        """Each query's "no answer" category where the problem's rule is abstain (None where
        both rules score alike: the vote rule, or no category)."""
        return self.no_answer if self.problem.no_answer == "abstain" else None

    def _arrays(self) -> dict[str, npt.NDArray]:
        abstain = self._abstain()  # the tables of the two rules differ only with a category
        return {"probs": self.probs, "gold": self.gold, "cost": self.cost,
                **({} if abstain is None else {"no_answer": abstain})}

    def _compute_table(self, progress: bool) -> tuple[FloatArray, FloatArray]:
        from tqdm.auto import tqdm  # here, not at the top: `import iapo` stays quick

        from iapo.exact import mv_credit_probability

        n_prompts, n_queries, n_cat = self.probs.shape
        n_max = self.problem.n_max
        with tqdm(
            total=n_max, desc=f"exact MV table for {self.name}", disable=not progress,
            leave=False,
        ) as bar:
            abstain = self._abstain()
            credit = mv_credit_probability(
                self.probs.reshape(-1, n_cat),
                np.tile(self.gold, n_prompts),
                n_max,
                progress=lambda _k: bar.update(1),
                no_answer=None if abstain is None else np.tile(abstain, n_prompts),
            ).reshape(n_prompts, n_queries, n_max)
        weights, _ = self.problem.grid.distinct_weights()
        task = credit[:, :, None, :] * weights[None, None, :, 0, None]
        cost = np.broadcast_to(self.cost[:, None], (n_prompts, n_queries)).copy()
        return task, cost

    def _stopping_table(self, wave: int, latency: LatencyModel, progress: bool
                        ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        from tqdm.auto import tqdm

        from iapo.latency import latency_from_undecided
        from iapo.stopping import paid_from_undecided, undecided_probability

        n_prompts, n_queries, _ = self.probs.shape
        n_max = self.problem.n_max
        abstain = self._abstain()
        steps = latency.steps(wave, n_max)  # [P, N+1, N+1]
        paid, waves, seconds = (np.zeros((n_prompts, n_queries, n_max)) for _ in range(3))
        undecided = np.zeros((n_prompts, n_max + 1, n_max + 1))
        seen = np.ones((n_prompts, n_queries)) if self.observed is None else \
            self.observed.astype(np.float64)
        # one prompt's undecided tables [X, N+1, N+1] at a time: all of them may not fit
        for p in tqdm(range(n_prompts), desc=f"decided-vote tables for {self.name}",
                      disable=not progress, leave=False):
            table = undecided_probability(self.probs[p], n_max,
                                          None if abstain is None else abstain)
            paid[p], waves[p] = paid_from_undecided(table, wave)
            seconds[p] = latency_from_undecided(table, steps[p])
            undecided[p] = np.tensordot(seen[p] / max(seen[p].sum(), 1.0), table, axes=1)
        return paid, waves, seconds, undecided

def _no_answer(no_answer: npt.ArrayLike | None, gold: npt.NDArray[np.int16], n_cat: int
               ) -> npt.NDArray[np.int16] | None:
    """The ``no_answer`` array checked: one category per query, -1 or in 0..L-1, never the
    gold; None where no query has one."""
    if no_answer is None:
        return None
    z = np.asarray(no_answer)
    if z.shape != gold.shape or not np.issubdtype(z.dtype, np.integer):
        raise DataError(f"no_answer must be one integer category per query, shape {gold.shape}; "
                        f"got {z.dtype} {z.shape}")
    if z.size and (z.min() < -1 or z.max() >= n_cat):
        raise DataError(f"no_answer categories must lie in 0..{n_cat - 1}, or -1 for none")
    if np.any(z == gold):
        raise DataError(f"query {int(np.flatnonzero(z == gold)[0])}: its \"no answer\" category "
                        "is its gold; an abstention is never the correct answer")
    return None if np.all(z < 0) else z.astype(np.int16)


class BoNEnvironment(Environment):
    """Best-of-N over a finite set of score vectors per (prompt, query) (paper, Eq. 1).

    scores: [P, X, S, K+1] (cost last, positive); probs: [P, X, S].
    """

    def __init__(
        self,
        name: str,
        scores: npt.ArrayLike,
        probs: npt.ArrayLike,
        grid: ContextGrid,
        n_max: int,
        prompt_names: Sequence[str] | None = None,
        description: str = "",
        cacheable: bool = True,
        query_ids: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        s = np.asarray(scores, dtype=np.float64)
        p = np.asarray(probs, dtype=np.float64)
        k = grid.n_objectives
        if s.ndim != 4 or s.shape[-1] != k + 1:
            raise DataError(
                f"scores must be (P, X, S, K+1) with K+1 = {k + 1} (cost last); got {s.shape}"
            )
        if p.shape != s.shape[:3]:
            raise DataError(f"probs must have shape {s.shape[:3]}; got {p.shape}")
        if not np.all(np.isfinite(s)):
            raise DataError("scores contain NaN or infinite values")
        _check_probs(p, "probs")
        live = p > 0
        for j, obj in enumerate(grid.objectives):
            col = s[..., j][live]
            if col.size and (col.min() < obj.lower - _TOL or col.max() > obj.upper + _TOL):
                raise DataError(
                    f"objective '{obj.name}' has scores in [{col.min():g}, {col.max():g}], "
                    f"outside its bounds [{obj.lower:g}, {obj.upper:g}]"
                )
        if s[..., -1][live].min(initial=0.0) < 0:
            raise DataError("cost (the last score column) must be >= 0")
        self.name = name
        self.description = description
        self.cacheable = cacheable
        self.query_ids = _query_ids(query_ids, s.shape[1])
        self.scores = s
        self.probs = p
        self._cdf = _cdf(p)[..., :-1]
        self.problem = _problem(name, "bon", grid, prompt_names, s.shape[0], n_max, s[..., -1])

    @property
    def n_queries(self) -> int:
        return int(self.scores.shape[1])

    def sample(
        self, prompts: int | IntArray, queries: IntArray, n: int, rng: np.random.Generator
    ) -> Sample:
        p, q = _pairs(prompts, queries)
        return Sample(self.scores[p[:, None], q[:, None], _draw(self._cdf[p, q], n, rng)])

    def _arrays(self) -> dict[str, npt.NDArray]:
        return {"scores": self.scores, "probs": self.probs}

    def _compute_table(self, progress: bool) -> tuple[FloatArray, FloatArray]:
        from tqdm.auto import tqdm

        from iapo.exact import bon_expected_max

        n_prompts, n_queries = self.scores.shape[:2]
        n_max = self.problem.n_max
        weights, _ = self.problem.grid.distinct_weights()
        task = np.empty((n_prompts, n_queries, len(weights), n_max))
        with tqdm(
            total=len(weights) * n_prompts, desc=f"exact BoN table for {self.name}",
            disable=not progress, leave=False,
        ) as bar:
            for w_i, w in enumerate(weights):
                for p in range(n_prompts):
                    values = task_values(self.scores[p], w[None])[..., 0]  # [X, S]
                    task[p, :, w_i] = bon_expected_max(values, self.probs[p], n_max)
                    bar.update(1)
        cost = (self.scores[..., -1] * self.probs).sum(-1)
        return task, cost


def _scalar(data: Mapping[str, npt.NDArray], key: str) -> int:
    arr = np.asarray(data[key])
    if arr.size != 1:
        raise DataError(f"'{key}' must be a single number; got shape {arr.shape}")
    value = arr.reshape(-1)[0]
    try:
        whole = int(value)
        exact = whole == value
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact:
        raise DataError(f"'{key}' must be a whole number; got {value!r}")
    return whole


def _with_rules(env: MVEnvironment, data: Mapping[str, npt.NDArray], source: str
                ) -> Environment:
    """The majority-voting ``env`` under the file's ``no_answer_rule`` and ``answers``, where
    it holds them (``iapo export-env`` writes a live task's); ``answers`` must be at least
    the answers that some query can get (:func:`_most_answers`)."""
    changes: dict[str, object] = {}
    if "no_answer_rule" in data:
        rule = np.asarray(data["no_answer_rule"])
        if rule.ndim != 0 or str(rule) not in NO_ANSWER_RULES:
            raise DataError(f"{source}: 'no_answer_rule' must be one of "
                            f"{', '.join(NO_ANSWER_RULES)}; got {rule!r}")
        changes["no_answer"] = str(rule)
    if "answers" in data:
        answers = _scalar(data, "answers")
        if answers < 2:
            raise DataError(f"{source}: 'answers' (how many answers a query can get) must be "
                            f"2 or more; got {answers}")
        counted = str(changes.get("no_answer", env.problem.no_answer))
        most, query = _most_answers(env, counted)
        if most > answers:
            named = f"query {query} ({env.query_ids[query]!r})" if env.query_ids else \
                f"query {query}"
            vote = (' ("no answer" counts as one under the vote rule: a task\'s labels + 1)'
                    if counted == "vote" else "")
            raise DataError(f"{source}: 'answers' = {answers}, but {named} can get {most} "
                            "answers (categories of positive probability, over the prompts "
                            f"with data){vote}; give answers >= {most}, or leave it out")
        changes["answers"] = answers
    try:
        return env._with_problem(**changes)
    except ProblemError as e:
        raise DataError(f"{source}: {e}") from e


def _most_answers(env: MVEnvironment, rule: str) -> tuple[int, int]:
    """The most answers any query can get, and the first query that can get that many: its
    categories of positive probability over the prompts with data on it, its "no answer"
    left out under the abstain rule (it does not count there)."""
    positive = env.probs > 0  # [P, X, L]
    if env.observed is not None:
        positive &= env.observed[:, :, None]
    can = np.asarray(positive.any(axis=0))  # [X, L]
    if rule == "abstain" and env.no_answer is not None:
        has = env.no_answer >= 0
        can[np.flatnonzero(has), env.no_answer[has]] = False
    per = can.sum(axis=1)
    return int(per.max()), int(per.argmax())


def _require(data: Mapping[str, npt.NDArray], keys: Sequence[str], path: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; see iapo.envs.tabular for the format")


def _probs_from(data: Mapping[str, npt.NDArray], probs_key: str, counts_key: str) -> FloatArray:
    if probs_key in data:
        return np.asarray(data[probs_key], dtype=np.float64)
    counts = np.asarray(data[counts_key])
    if not np.issubdtype(counts.dtype, np.integer) or counts.min(initial=0) < 0:
        raise DataError(f"'{counts_key}' must hold non-negative integers")
    total = _scalar(data, "samples_per_pair")
    sums = counts.sum(axis=-1)
    if np.any(sums != total):
        bad = tuple(int(i) for i in np.argwhere(sums != total)[0])
        raise DataError(
            f"'{counts_key}' rows must each sum to samples_per_pair = {total}; "
            f"row {bad} sums to {int(sums[bad])}"
        )
    return counts.astype(np.float64) / total


def environment_from_arrays(
    name: str,
    data: Mapping[str, npt.NDArray],
    description: str = "",
    cacheable: bool = True,
    source: str = "data",
) -> Environment:
    """Build an MV or BoN environment from arrays in the documented file format."""
    agg = str(np.asarray(data["aggregator"])) if "aggregator" in data else None
    if agg is None:
        if "answer_counts" in data or "answer_probs" in data:
            agg = "mv"
        elif "scores" in data:
            agg = "bon"
        else:
            raise DataError(
                f"{source}: neither 'answer_counts' / 'answer_probs' (majority voting) nor "
                "'scores' (Best-of-N) found; see iapo.envs.tabular for the format"
            )
    names = [str(x) for x in data["prompt_names"]] if "prompt_names" in data else None
    ids = None
    if "query_ids" in data:
        if np.ndim(data["query_ids"]) != 1:
            raise DataError(f"{source}: 'query_ids' must be one id per query, (X,)")
        ids = [str(x) for x in data["query_ids"]]
    if agg == "mv":
        _require(data, ["gold", "cost_per_completion", "budget_levels", "cost_weights", "n_max"],
                 source)
        if "answer_probs" not in data:
            _require(data, ["answer_counts", "samples_per_pair"], source)
        probs = _probs_from(data, "answer_probs", "answer_counts")
        mv = MVEnvironment(
            name, probs, data["gold"], data["cost_per_completion"],
            _budgets(data["budget_levels"], data["cost_weights"]), _scalar(data, "n_max"),
            names, description, cacheable, ids, data.get("no_answer"),
        )
        mv.observed = _observed(data, probs.shape[:2], source)
        return _with_latency_keys(_with_rules(mv, data, source), data, source)
    if agg == "bon":
        mv_only = [k for k in ("no_answer", "no_answer_rule", "answers") if k in data]
        if mv_only:
            raise DataError(f"{source}: {', '.join(repr(k) for k in mv_only)} belong(s) to "
                            "majority voting; remove it from this Best-of-N file, or set "
                            "aggregator 'mv' if the file is majority voting's")
        _require(data, ["scores", "objective_names", "objective_lower", "objective_upper",
                        "weight_grid", "budget_levels", "cost_weights", "n_max"], source)
        if "probs" not in data:
            _require(data, ["counts", "samples_per_pair"], source)
        probs = _probs_from(data, "probs", "counts")
        try:
            objectives = [
                Objective(str(n), float(lo), float(hi))
                for n, lo, hi in zip(data["objective_names"], data["objective_lower"],
                                     data["objective_upper"], strict=True)
            ]
            grid = ContextGrid.product(
                objectives, np.atleast_2d(data["weight_grid"]).tolist(),
                _budgets(data["budget_levels"], data["cost_weights"]),
            )
        except (ProblemError, ValueError) as e:
            raise DataError(f"{source}: {e}") from e
        env = BoNEnvironment(name, data["scores"], probs, grid, _scalar(data, "n_max"), names,
                             description, cacheable, ids)
        env.observed = _observed(data, probs.shape[:2], source)
        return _with_latency_keys(env, data, source)
    raise DataError(f"{source}: aggregator '{agg}' is unknown; use 'mv' or 'bon'")


def _with_latency_keys(env: Environment, data: Mapping[str, npt.NDArray], source: str
                       ) -> Environment:
    """``env`` with the synthetic latency model of the file's optional ``latency_<key>``
    scalars (:class:`iapo.latency.SyntheticLatency`; absent keys keep the defaults)."""
    if not any(str(k).startswith("latency_") for k in data):
        return env
    from iapo.latency import SyntheticLatency

    try:
        env.latency_params = SyntheticLatency.from_arrays(dict(data))
    except InputError as e:
        raise DataError(f"{source}: {e}") from e
    return env


def _observed(data: Mapping[str, npt.NDArray], shape: tuple[int, ...], source: str
              ) -> npt.NDArray[np.bool_] | None:
    """The optional ``observed`` mask [P, X], checked: every query and every prompt needs at
    least one observed pair."""
    if "observed" not in data:
        return None
    obs = np.asarray(data["observed"])
    if obs.dtype != np.bool_ or obs.shape != shape:
        raise DataError(f"{source}: 'observed' must be a boolean array of shape {shape} "
                        f"(prompts, queries); got {obs.dtype} {obs.shape}")
    if not obs.any(axis=0).all():
        raise DataError(f"{source}: 'observed' has a query no prompt was observed on "
                        f"(query {int(np.flatnonzero(~obs.any(axis=0))[0])}); drop it")
    if not obs.any(axis=1).all():
        raise DataError(f"{source}: 'observed' has a prompt with no data "
                        f"(prompt {int(np.flatnonzero(~obs.any(axis=1))[0])})")
    return None if obs.all() else obs


# the first bytes of a zip archive (numpy.savez writes one) and of a single .npy array
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def load_environment(path: str | os.PathLike[str], name: str | None = None) -> Environment:
    """Load a tabular environment from an ``.npz`` file in the documented format.

    Its name is ``name``, else :func:`environment_name` of the file.
    """
    p = Path(path)
    data = _read_npz(p)
    return environment_from_arrays(name or _file_name(data, p), data,
                                   f"tabular environment from {p.name}", source=str(p))


def environment_name(path: str | os.PathLike[str]) -> str:
    """The name of the environment file at ``path``: its ``name`` array (``iapo export-env``
    stores the task's name there), else the file name without .npz. Every command calls the
    file by it (``bench`` keys its rows by it, ``evaluate`` prints it, a policy trained on
    it records it); only that array is read."""
    p = Path(path)
    return _file_name(_read_npz(p, ("name",)), p)


def _read_npz(p: Path, only: Sequence[str] | None = None) -> dict[str, npt.NDArray]:
    """The arrays of the ``.npz`` file ``p`` (those of ``only`` that it holds, if given)."""
    if not p.is_file():
        raise DataError(f"environment file {str(p)!r} does not exist")
    try:
        with p.open("rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{p}: not a readable .npz file ({e})") from e
    if not head.startswith(_ZIP_MAGIC):  # np.load would take it for a .npy or a pickle
        what = " but a single .npy array" if head == _NPY_MAGIC else ""
        raise DataError(f"not a readable .npz file: {p} is not an .npz archive "
                        f"(numpy.savez){what}; see iapo.envs.tabular for the format")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if only is None or k in only}
    except (OSError, ValueError, EOFError, NotImplementedError, zipfile.BadZipFile,
            zlib.error) as e:
        raise DataError(f"{p}: not a readable .npz file ({e})") from e


def _file_name(data: Mapping[str, npt.NDArray], path: Path) -> str:
    """The environment name the file gives, else the file name without .npz."""
    if "name" not in data:
        return path.stem
    arr = np.asarray(data["name"])
    if arr.shape != () or arr.dtype.kind != "U" or not str(arr).strip():
        raise DataError(f"{path}: 'name' must be one non-empty string; got {arr!r}")
    return str(arr)
