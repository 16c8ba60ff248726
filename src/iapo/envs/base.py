"""The environment interface and the exact per-query Q table.

An environment is a tabular model of a black-box LLM on a query set: for every (prompt, query)
pair, the distribution of one completion's objective vector (and, for MV, its answer
category). It can be sampled (the simulated oracle) and evaluated exactly (the exact Q): the
task tables come from :mod:`iapo.exact` (E[max of N], the MV credit), the expected completions
of arms that stop early from :mod:`iapo.stopping`, and Q subtracts the cost term of
:func:`iapo.utility.cost_term`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from iapo.cache import load_or_compute
from iapo.errors import InputError
from iapo.problem import Arm, Choice, Problem, Stopping
from iapo.utility import cost_term, latency_priced

if TYPE_CHECKING:
    from iapo.latency import LatencyModel, SyntheticLatency

# an environment's decided-vote tables, per width: [P, X, N_max] each, and the undecided
# table averaged over each prompt's queries [P, N_max+1, N_max+1]
STOP_TABLES = ("paid", "waves", "seconds", "undecided")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Sample:
    """``count`` groups of n completions.

    scores: [count, n, K+1] (cost last, positive); labels: [count, n] answer categories and
    gold: [count] the gold category, for MV environments (else None); no_answer: [count] the
    category of "no answer" of each group's query (-1: none; None: the environment has none).
    """

    scores: FloatArray
    labels: npt.NDArray[np.int16] | None = None
    gold: npt.NDArray[np.int16] | None = None
    no_answer: npt.NDArray[np.int16] | None = None


@dataclass(frozen=True)
class QueryTable:
    """Exact per-query expectations.

    task: [P, X, W, N_max], E[task reward of arm (p, N) on query x] for each distinct task
    weight vector w; cost: [P, X], E[cost of one completion]; weight_index: [C], the weight
    vector of each context. ``observed`` [P, X] (None: all) marks the (prompt, query) pairs
    with data: Q of a prompt averages over its observed queries only. ``paid`` and ``waves``
    [P, X, N_max] (None: the paper's arms, N completions in one wave) are the expected
    completions paid and waves drawn by an arm that stops early (:mod:`iapo.stopping`).
    ``latency`` [P, X, N_max] (None: not priced) is each arm's expected latency in seconds
    (:mod:`iapo.latency`), which contexts that price latency subtract and limit. ``over``
    [C, P, N_max] (None: no context has a p95 limit) is P(an arm's latency > its context's
    p95 limit) on all the queries (:meth:`iapo.latency.LatencyModel.over`).
    """

    task: FloatArray
    cost: FloatArray
    weight_index: npt.NDArray[np.intp]
    observed: npt.NDArray[np.bool_] | None = None
    paid: FloatArray | None = None
    waves: FloatArray | None = None
    latency: FloatArray | None = None
    over: FloatArray | None = None

    def q(self, problem: Problem, queries: npt.ArrayLike | None = None) -> FloatArray:
        """Q(c, p, N) averaged over ``queries`` (all if None): [C, P, N_max].

        With ``observed``, a prompt's Q averages over the queries among ``queries`` where it
        was observed; a prompt observed on none of them takes its average over all the queries
        where it was observed (so Q stays defined on any split)."""
        idx = None if queries is None else np.asarray(queries, dtype=np.intp)
        if idx is not None and idx.size == 0:
            raise InputError("Q needs at least one query; pass query indices, or None for all "
                             "queries")
        if self.observed is not None:
            weights = self._query_weights(idx)
            task = np.einsum("px,pxwn->pwn", weights, self.task)
            cost = (weights * self.cost).sum(axis=1)
        elif idx is None:
            task = self.task.mean(axis=1)
            cost = self.cost.mean(axis=1)
        else:
            task = self.task[:, idx].mean(axis=1)
            cost = self.cost[:, idx].mean(axis=1)
        reward = np.moveaxis(task[:, self.weight_index, :], 1, 0)  # [C, P, N]
        cost_weights = problem.grid.cost_weights[:, None, None]
        if self.paid is None:  # the paper's arms pay N completions
            n = np.arange(1, problem.n_max + 1, dtype=np.float64)
            q = reward - cost_term(cost_weights, cost[None, :, None], n)
        else:  # an arm that stops early pays E[cost of one completion x completions paid]
            paid_cost = self.expected(self.cost[:, :, None] * self.paid, idx)
            q = reward - cost_term(cost_weights, paid_cost[None])
        if not problem.grid.prices_latency:
            return q
        # the limits are a property of the arm on the query distribution: judged on all the
        # queries, so that sampling a split alone never moves an arm across them
        grid = problem.grid
        judged = None if idx is None else self.expected(self.seconds())[None]
        return latency_priced(q, self.expected(self.seconds(), idx)[None], grid.latency_weights,
                              grid.latency_limits, judged, self.over)

    def seconds(self) -> FloatArray:
        """``latency``, which contexts that price latency need: [P, X, N_max]."""
        if self.latency is None:
            raise InputError("contexts that price latency need the arms' latency; build the "
                             "table with a latency model")
        return self.latency

    def completions(self, queries: npt.ArrayLike | None = None) -> FloatArray:
        """Expected completions paid per query by every arm (p, N), averaged over ``queries``
        as :meth:`q` does: [P, N_max] (N itself for arms that pay all N)."""
        p, n_max = self.task.shape[0], self.task.shape[-1]
        if self.paid is None:
            return np.broadcast_to(np.arange(1, n_max + 1, dtype=np.float64), (p, n_max))
        return self.expected(self.paid, queries)

    def expected(self, what: FloatArray, queries: npt.ArrayLike | None = None) -> FloatArray:
        """A per-query table ``what`` [P, X, N] averaged over ``queries`` as :meth:`q` does:
        [P, N]."""
        idx = None if queries is None else np.asarray(queries, dtype=np.intp)
        if self.observed is None:  # a plain mean, as q takes it (exact for a constant)
            return what.mean(axis=1) if idx is None else what[:, idx].mean(axis=1)
        return np.einsum("px,pxn->pn", self._query_weights(idx), what)

    def _query_weights(self, idx: npt.NDArray[np.intp] | None) -> FloatArray:
        """Per prompt, the weight of every query in its mean over its observed queries:
        [P, X], rows summing to 1 (``observed`` must be set)."""
        assert self.observed is not None
        everywhere = self.observed.astype(np.float64)  # [P, X]
        w = everywhere.copy()
        if idx is not None:  # each query as often as ``idx`` names it, as the unmasked mean
            times = np.bincount(idx, minlength=everywhere.shape[1]).astype(np.float64)
            w = everywhere * times
        none_here = w.sum(axis=1) == 0
        w[none_here] = everywhere[none_here]
        return w / w.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ArmTable:
    """Exact values of every arm on some queries, for every wave width W the arms may take
    (the widths S of ``stopping.widths``; none: the problem's own arms, S = 1): Q ``q``
    [C, P, N_max, S], expected completions paid ``completions`` and latency ``latency``
    [P, N_max, S] (seconds). What evaluation reads: a choice (p, N, W) takes the first width
    >= W (W = N for one wave of N)."""

    q: FloatArray
    completions: FloatArray
    latency: FloatArray
    widths: tuple[int, ...] = ()

    def index(self, choice: Arm | Choice) -> int:
        """The width axis of ``choice``: its wave's (the last, one wave of N, without one)."""
        wave = getattr(choice, "wave", None)
        if not self.widths:
            return 0
        if wave is None:
            return len(self.widths) - 1
        return min(int(np.searchsorted(self.widths, wave)), len(self.widths) - 1)

    def values(self, what: FloatArray, choices: Sequence[Arm | Choice]) -> FloatArray:
        """``what`` ([C, P, N, S], or [P, N, S] for every context alike) at every context's
        choice: [C]; N = None (``triple-nrand``) averages over N."""
        table = np.broadcast_to(what, (len(choices), *self.completions.shape))
        at_width = np.stack([table[i, ..., self.index(a)] for i, a in enumerate(choices)])
        return policy_values(at_width, choices)

    def acr(self, choices: Sequence[Arm | Choice], probabilities: npt.ArrayLike) -> float:
        """The average contextual return of ``choices`` (Eq. 4)."""
        return float(self.values(self.q, choices) @ np.asarray(probabilities))

    def optimal_acr(self, probabilities: npt.ArrayLike) -> float:
        """The ACR of the best arm (and width) in every context."""
        return float(self.q.reshape(self.q.shape[0], -1).max(axis=1)
                     @ np.asarray(probabilities))


class Environment(ABC):
    """A named, documented tabular environment.

    Subclasses give ``problem``, ``n_queries``, ``sample`` and the exact table computation.
    """

    name: str
    description: str
    problem: Problem
    cacheable: bool = True
    # [P, X]: which (prompt, query) pairs have data (None: all); see QueryTable.q
    observed: npt.NDArray[np.bool_] | None = None
    # the synthetic latency model (from the environment file's latency_* keys; None: the
    # defaults); a problem's own model (Problem.latency) takes precedence
    latency_params: SyntheticLatency | None = None

    def __init__(self) -> None:
        self._table: QueryTable | None = None
        self._widths: dict[int, Environment] = {}

    @property
    @abstractmethod
    def n_queries(self) -> int: ...

    @abstractmethod
    def sample(
        self, prompts: int | IntArray, queries: IntArray, n: int, rng: np.random.Generator
    ) -> Sample:
        """Draw n i.i.d. completions of ``prompts[i]`` on ``queries[i]`` for every group i
        ([count]; one prompt for all groups if ``prompts`` is an int)."""

    @abstractmethod
    def _arrays(self) -> dict[str, npt.NDArray]:
        """The arrays that define the environment (for its fingerprint)."""

    @abstractmethod
    def _compute_table(self, progress: bool) -> tuple[FloatArray, FloatArray]:
        """(task [P, X, W, N_max], cost [P, X]) with W following ``grid.distinct_weights()``."""

    def fingerprint(self) -> str:
        """A hash of everything the exact table depends on."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(str(self.problem.n_max).encode())
        h.update(np.ascontiguousarray(self.problem.grid.distinct_weights()[0]).tobytes())
        for key, arr in sorted(self._arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:20]

    def query_table(self, progress: bool = True) -> QueryTable:
        """The exact per-query table, computed once (cached on disk for cacheable envs)."""
        if self._table is None:
            def compute() -> dict[str, npt.NDArray]:
                task, cost = self._compute_table(progress)
                return {"task": task, "cost": cost}

            if self.cacheable:
                arrays = load_or_compute(f"{self.name}-{self.fingerprint()}", compute,
                                         required=("task", "cost"))
            else:
                arrays = compute()
            _, widx = self.problem.grid.distinct_weights()
            paid = waves = undecided = None
            stopping = self.problem.stopping
            from iapo.latency import SyntheticLatency

            latency = self.latency_model(arrays["cost"])
            n_max = self.problem.n_max
            if stopping.early:
                def stop_compute() -> dict[str, npt.NDArray]:
                    return dict(zip(STOP_TABLES, self._stopping_table(stopping.wave, latency,
                                                                      progress), strict=True))

                # a synthetic model is its description; another is not cached
                cache = (self.cacheable and
                         SyntheticLatency.from_description(latency.description) is not None)
                h = hashlib.sha256(latency.description.encode())
                if self.observed is not None:  # the undecided table averages over it
                    h.update(np.packbits(self.observed).tobytes())
                model = h.hexdigest()[:12]
                key = f"{self.name}-{self.fingerprint()}-decided-w{stopping.wave}-{model}"
                stop = (load_or_compute(key, stop_compute, required=STOP_TABLES) if cache
                        else stop_compute())
                paid, waves, seconds, undecided = (stop[k] for k in STOP_TABLES)
            else:  # one wave of N
                seconds = np.broadcast_to(latency.one_wave(n_max)[:, None, :],
                                          (*arrays["cost"].shape, n_max))
            over = latency.over(self.problem.grid.p95_limits, n_max,
                                stopping.wave if stopping.early else None, undecided)
            self._table = QueryTable(arrays["task"], arrays["cost"], widx, self.observed,
                                     paid, waves, seconds, over)
        return self._table

    def latency_model(self, cost: FloatArray | None = None) -> LatencyModel:
        """The problem's latency model, or else this environment's synthetic one
        (:attr:`latency_params`) on its prompts' costs (:meth:`prompt_costs`; ``cost`` [P, X]
        the exact table's, if at hand)."""
        from iapo.latency import SyntheticLatency

        if self.problem.latency is not None:
            return self.problem.latency
        return (self.latency_params or SyntheticLatency()).model(self.prompt_costs(cost))

    def prompt_costs(self, cost: FloatArray | None = None) -> FloatArray:
        """Each prompt's mean completion cost over its observed queries: [P] (``cost`` [P, X]
        the exact table's, if at hand)."""
        c = self.query_table().cost if cost is None else cost
        seen = np.ones(c.shape, dtype=bool) if self.observed is None else self.observed
        return np.asarray((c * seen).sum(axis=1) / np.maximum(seen.sum(axis=1), 1))

    def with_latency(self, latency: LatencyModel | SyntheticLatency) -> Environment:
        """This environment with completions that take ``latency``: a model of its own, or
        synthetic parameters (:class:`iapo.latency.SyntheticLatency`) on its prompts' costs."""
        from iapo.latency import SyntheticLatency

        if isinstance(latency, SyntheticLatency):
            env = self._with_problem(latency=latency.model(self.prompt_costs()))
            if env is self:
                env = copy.copy(self)
                env._table, env._widths = None, {}
            env.latency_params = latency
            return env
        return self._with_problem(latency=latency)

    def priced_by(self, latency: str | None, contexts: Sequence[str]) -> Environment:
        """This environment with the synthetic latency parameters ``latency`` (text, over its
        own: :meth:`iapo.latency.SyntheticLatency.parse`; None: unchanged) and the contexts
        ``contexts`` (:meth:`with_contexts`; empty: its own): what ``--latency`` and
        ``--contexts`` give."""
        from iapo.latency import SyntheticLatency

        env = self
        if latency is not None:
            env = env.with_latency(SyntheticLatency.parse(latency, env.latency_params))
        return env.with_contexts(contexts) if contexts else env

    def with_contexts(self, specs: Sequence[str]) -> Environment:
        """This environment on the contexts ``specs`` (:meth:`iapo.problem.ContextGrid.
        with_latency`: its own contexts, each with a latency weight and/or limit)."""
        return self._with_problem(grid=self.problem.grid.with_latency(specs))

    def with_stopping(self, stopping: Stopping) -> Environment:
        """This environment with majority-voting arms that stop by ``stopping``: the same
        completions, Q charging the completions actually paid (:mod:`iapo.stopping`)."""
        return self._with_problem(stopping=stopping)

    def with_no_answer(self, rule: str) -> Environment:
        """This environment with majority voting counting "no answer" by ``rule`` (one of
        :data:`iapo.problem.NO_ANSWER_RULES`): the same completions, Q and training scoring
        groups by that rule."""
        return self._with_problem(no_answer=rule)

    def _with_problem(self, **changes: Any) -> Environment:
        """This environment with its problem's fields ``changes`` (validated), the same
        completions; itself where nothing changes."""
        problem = dataclasses.replace(self.problem, **changes)  # validates
        if problem == self.problem:
            return self
        env = copy.copy(self)
        env.problem = problem
        env._table, env._widths = None, {}
        if problem.latency is None and problem.needs_latency:
            # a learner prices latency with the model the environment draws from
            env.problem = dataclasses.replace(problem, latency=env.latency_model())
        return env

    def _stopping_table(self, wave: int, latency: LatencyModel, progress: bool
                        ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(paid, waves, seconds) [P, X, N_max]: expected completions paid, waves drawn and
        latency under ``latency`` (:mod:`iapo.latency`) of arms that stop once decided, in
        waves of ``wave``; and each prompt's undecided table averaged over its observed
        queries (:func:`iapo.stopping.undecided_probability`), [P, N_max+1, N_max+1]."""
        raise self._cannot_stop()

    def _cannot_stop(self) -> InputError:
        return InputError(f"'{self.name}' has no answer distributions to stop early on; use "
                          "stop 'all'")

    def arm_summary(self, arm: Arm, wave: int | None) -> dict[str, float]:
        """On all queries, the arm (p, N) in waves of ``wave`` (None: all N at once): its
        expected completions ``paid``, ``waves`` drawn, ``latency`` and ``latency_p95``
        (seconds)."""
        env = self.with_stopping(Stopping()) if wave is None else self.at_width(wave)
        table = env.query_table()
        p, n = arm.prompt, arm.n - 1
        paid = table.completions()[p, n]
        waves = 1.0 if table.waves is None else table.expected(table.waves)[p, n]
        return {"paid": float(paid), "waves": float(waves),
                "latency": float(table.expected(table.seconds())[p, n]),
                "latency_p95": env.latency_quantile(arm, wave)}

    def latency_quantile(self, arm: Arm, wave: int | None, quantile: float = 0.95) -> float:
        """The ``quantile`` of the latency of the arm (p, N, ``wave``) on a uniformly drawn
        query (:func:`iapo.latency.latency_quantile`; ``wave`` None: the paper's arm, all N
        waited for). Arms that stop early need answer distributions; the paper's need none."""
        from iapo.latency import latency_quantile

        if wave is not None:
            raise self._cannot_stop()
        model = self.latency_model()
        return latency_quantile(np.ones((1, 1)), arm.n, None, model.times[arm.prompt],
                                quantile, model.concurrency, prefill=model.prefill)

    def q(self, queries: npt.ArrayLike | None = None) -> FloatArray:
        """Exact Q(c, p, N) on ``queries`` (all if None): [C, P, N_max]. Where the wave width
        W is part of the arm (``stopping.widths``), Q of (p, N) with its best width in each
        context (:meth:`width_q`)."""
        if self.problem.stopping.widths:
            return self.width_q(queries).max(axis=-1)
        return self.query_table().q(self.problem, queries)

    def at_width(self, wave: int) -> Environment:
        """This environment with decided arms in waves of ``wave`` (one width of
        ``stopping.widths``, or any), kept for reuse."""
        if wave not in self._widths:
            self._widths[wave] = self.with_stopping(Stopping("decided", wave))
        return self._widths[wave]

    def arm_table(self, queries: npt.ArrayLike | None = None) -> ArmTable:
        """:class:`ArmTable` on ``queries`` (all if None), every width of
        ``stopping.widths`` (none: the problem's own arms)."""
        widths = self.problem.stopping.widths
        envs = [self.at_width(w) for w in widths] if widths else [self]
        tables = [e.query_table() for e in envs]
        stack = partial(np.stack, axis=-1)
        return ArmTable(stack([t.q(e.problem, queries) for e, t in zip(envs, tables,
                                                                       strict=True)]),
                        stack([t.completions(queries) for t in tables]),
                        stack([t.expected(t.seconds(), queries) for t in tables]), widths)

    def width_q(self, queries: npt.ArrayLike | None = None) -> FloatArray:
        """Exact Q(c, p, N, W) for every width W of ``stopping.widths``: [C, P, N_max, S]
        (W above N is one wave of N, as W = N)."""
        if not self.problem.stopping.widths:
            raise InputError("the wave width is part of the arm only with stopping widths; "
                             "use Stopping.every_width")
        return self.arm_table(queries).q

    def __repr__(self) -> str:
        p = self.problem
        return (
            f"<{type(self).__name__} '{self.name}': {p.aggregator}, {p.n_prompts} prompts, "
            f"{self.n_queries} queries, {p.n_contexts} contexts, N_max {p.n_max}>"
        )


def best_arms(q: FloatArray) -> list[Arm]:
    """The arm with the highest Q in every context (lowest prompt, then lowest N, on ties)."""
    c, _, n_max = q.shape
    return [Arm.from_index(i, n_max) for i in q.reshape(c, -1).argmax(axis=1)]


def policy_values(q: FloatArray, arms: Sequence[Arm | Choice]) -> FloatArray:
    """Q(c, pi(c)) per context: [C]; N = None (a Choice of ``triple-nrand``) averages Q over
    N = 1..N_max."""
    return np.array([
        q[i, a.prompt].mean() if a.n is None else q[i, a.prompt, a.n - 1]
        for i, a in enumerate(arms)
    ])


def acr(q: FloatArray, arms: Sequence[Arm | Choice], probabilities: npt.ArrayLike) -> float:
    """Average contextual return (Eq. 4): sum_c P(c) Q(c, pi(c))."""
    pr = np.asarray(probabilities, dtype=np.float64)
    if len(arms) != q.shape[0] or pr.shape != (q.shape[0],):
        raise ValueError(f"need one arm and one probability per context ({q.shape[0]})")
    return float(policy_values(q, arms) @ pr)


def optimal_acr(q: FloatArray, probabilities: npt.ArrayLike) -> float:
    """The ACR of the best arm in every context (the oracle policy)."""
    return acr(q, best_arms(q), probabilities)


def oracle_report(env: Environment, stopping: Stopping) -> dict[str, Any]:
    """The best arm per context on all of ``env``'s queries and the optimal ACR (``iapo
    oracle --json``): {"env", "acr", "latency_model", "contexts": [{"context", "prompt", "n",
    "wave", "q", "paid", "waves", "latency", "latency_p95"}]}: per context the chosen arm, its
    wave width W (N for one wave of N), expected completions paid and waves drawn, and its
    expected and 95th-percentile latency in seconds under the latency model. With arms that
    stop early, also "stopping", "acr_all" (the optimal ACR of the arms that send all N at
    once, W = N: they pay all N, as the paper's, and answer once decided) and "gain", and
    per context the best such arm ("all_prompt", "all_n", "all_q") and the context's
    "gain". A context whose latency limit no arm meets is an InputError that names the
    fastest arm."""
    stopped = env.with_stopping(stopping)
    if stopping.widths:  # Q of every width once: its best, and which width that is
        q4 = stopped.width_q()
        q, width = q4.max(axis=-1), q4.argmax(axis=-1)  # [C, P, N]
    else:
        q, width = stopped.q(), None
    arms = best_arms(q)
    grid = env.problem.grid
    _check_eligible(stopped, q, arms)
    rows: list[dict[str, Any]] = []
    for i, (key, a) in enumerate(zip(grid.keys, arms, strict=True)):
        wave = (stopping.widths[width[i, a.prompt, a.n - 1]] if width is not None
                else stopping.wave if stopping.early else a.n)
        rows.append({"context": key, "prompt": a.prompt, "n": a.n, "wave": min(wave, a.n),
                     "q": float(q[i, a.prompt, a.n - 1]),
                     **stopped.arm_summary(a, wave if stopping.early else None)})
    result: dict[str, Any] = {"env": env.name, "acr": acr(q, arms, grid.probabilities),
                              "latency_model": stopped.latency_model().to_dict()}
    if stopping.early:
        # one wave of N that answers once decided: the paper's arm in completions paid
        q_all = env.with_stopping(Stopping("decided", env.problem.n_max)).q()
        arms_all = best_arms(q_all)
        value_all = acr(q_all, arms_all, grid.probabilities)
        for i, (r, a) in enumerate(zip(rows, arms_all, strict=True)):
            r.update(all_prompt=a.prompt, all_n=a.n, all_q=float(q_all[i, a.prompt, a.n - 1]),
                     gain=round(r["q"] - float(q_all[i, a.prompt, a.n - 1]), 12) + 0.0)
        result.update(stopping=stopping.to_dict(), acr_all=value_all,
                      gain=result["acr"] - value_all)
    result["contexts"] = rows
    return result


def _check_eligible(env: Environment, q: FloatArray, arms: Sequence[Arm]) -> None:
    """Every context has an arm within its latency limit; else an InputError naming the
    fastest arm."""
    for i, a in enumerate(arms):
        if np.isfinite(q[i, a.prompt, a.n - 1]):
            continue
        context = env.problem.grid.contexts[i]
        paper = env.with_stopping(Stopping())
        table = paper.query_table()
        fastest = table.expected(table.seconds())  # [P, N]
        p, n = (int(v) for v in np.unravel_index(int(fastest.argmin()), fastest.shape))
        bounds = [f"{v:g} s {what}" for v, what in ((context.latency_limit, "on average"),
                                                   (context.latency_p95, "at the p95"))
                  if v is not None]
        p95 = paper.latency_quantile(Arm(p, n + 1), None)
        raise InputError(f"no arm meets the latency limit of {' and '.join(bounds)} in "
                         f"context {env.problem.grid.key(context)}: the fastest, prompt {p} "
                         f"with N = {n + 1}, takes {fastest[p, n]:.3g} s on average and "
                         f"{p95:.3g} s at the p95; raise the limit")
