"""The live oracle: pulls served by a real LLM through the completion store.

The same learners that run on simulated environments run here unchanged: a pull
(prompt, n, count) draws ``count`` training queries (paired pulls share theirs:
:func:`iapo.pulls.draw_queries`), takes the next n unused samples of each
pool (see :mod:`iapo.live.store`), asks the LLM only for samples the store lacks, scores and
stores each one (committed) before building the observation.

A run is a pure function of (task, seed, store contents): the cost of a completion is the
paper's normalization, ``cost_scale * mean_tokens(p) / max_q mean_tokens(q)``, with the
per-prompt mean completion tokens over the samples this run has drawn so far (in pull order),
never over the whole store, so replaying stored samples reproduces every decision and a rerun
pays nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.live.aggregate import NO_ANSWER, answer_categories, answer_labels
from iapo.live.client import ChatClient, Completion
from iapo.live.scorers import (
    GOLD_SCORERS,
    TRUNCATION_AWARE,
    make_extractor,
    make_scorer,
    read_answer,
)
from iapo.live.store import CompletionStore, StoredCompletion, arm_key, pool_key
from iapo.live.task import Record, Task, TaskError
from iapo.pulls import Ledger, Observation, Pull, draw_queries, validate_pulls

if TYPE_CHECKING:
    from iapo.live.batch import Batcher


def sample_seed(pool: str, sample: int) -> int:
    """The seed of one pool sample: distinct per sample, the same on every replay."""
    digest = hashlib.sha256(f"{pool}|{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class TaskRuntime:
    """A task's live parts: records, arm and pool keys, scorers and the answer extractor."""

    def __init__(self, task: Task, records: Sequence[Record]) -> None:
        self.task = task
        self.records = list(records)
        self.problem = task.problem()
        self.arms = [arm_key(task.model.name, p.template, p.system, p.decoding)
                     for p in task.prompts]
        self._scorers: list[Any] | None = None  # built on first use: export needs none
        self._cut_scorers: list[Any] | None = None  # the scorers of truncated completions
        self._scorers_lock = threading.Lock()
        labels = getattr(task, "labels", None)
        self.extract = make_extractor(task.extractor, labels) if task.extractor else None
        # a completion cut by max_tokens: only an explicit answer counts (aggregator.truncated)
        self.explicit = task.truncated == "explicit"
        self.extract_cut = (make_extractor(task.extractor, labels, explicit_only=self.explicit)
                            if task.extractor else None)
        self.supports_n = task.model.supports_n
        self._pools: dict[tuple[int, int], str] = {}
        self._spec = json.dumps([[o.scorer, o.options, o.lower, o.upper] for o in task.objectives]
                                + [task.extractor, labels, task.truncated],
                                sort_keys=True, default=str)

    @property
    def scorers(self) -> list[Any]:
        with self._scorers_lock:  # the gateway's threads may ask first at once
            if self._scorers is None:
                # a scorer may read its objective's bounds (the judge's rating scale)
                self._scorers = [make_scorer(o.scorer, {**o.options, "lower": o.lower,
                                                        "upper": o.upper})
                                 for o in self.task.objectives]
                # the same objects where truncation changes nothing (a judge caches)
                self._cut_scorers = [
                    make_scorer(o.scorer, {**o.options, "lower": o.lower, "upper": o.upper},
                                explicit_only=True)
                    if self.explicit and o.scorer in TRUNCATION_AWARE else s
                    for o, s in zip(self.task.objectives, self._scorers, strict=True)]
        return self._scorers

    @staticmethod
    def truncated(finish_reason: str | None) -> bool:
        """Whether a completion was cut by max_tokens (an unknown reason: not cut)."""
        return finish_reason == "length"

    def needs_gold(self) -> list[str]:
        """The objectives whose scorer compares with a gold answer."""
        return [o.name for o in self.task.objectives if o.scorer in GOLD_SCORERS]

    def gold_needers(self) -> list[str]:
        """What needs a record's gold answer: the objectives whose scorer compares with it,
        else majority voting when answers are extracted; [] when nothing does."""
        return self.needs_gold() or (["majority voting"] if self.extract else [])

    def check_golds(self) -> None:
        """Training needs a gold answer on every record where a scorer or MV needs one."""
        needs = self.gold_needers()
        if not needs:
            return
        missing = [r.id for r in self.records if r.gold is None]
        if missing:
            raise TaskError(f"{len(missing)} record(s) of data.path have no gold (first: id "
                            f"{missing[0]!r}); {needs[0]} needs one: add \"gold\" to each line")

    def pool(self, p: int, q: int) -> str:
        """The pool of prompt p on record q."""
        key = self._pools.get((p, q))
        if key is None:
            prompt = self.task.prompts[p]
            key = pool_key(self.task.model.name, prompt.render(self.records[q].query),
                           prompt.decoding)
            self._pools[(p, q)] = key
        return key

    def score_key(self, record: Record) -> str:
        """A key of what a completion's scores depend on besides its text: the gold and the
        scorers' settings."""
        blob = json.dumps([record.gold, self._spec], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def register(self, store: CompletionStore) -> None:
        """Record the task, its arms and its queries in the store (for export-env)."""
        store.set_meta("task", {"name": self.task.name, "path": str(self.task.path),
                                "digest": self.task.digest(), "raw": self.task.raw})
        for a, p in zip(self.arms, self.task.prompts, strict=True):
            store.add_arm(a, self.task.model.name, p.name, p.template, p.system, p.decoding)
        store.add_queries((r.id, r.query, r.gold) for r in self.records)
        for scorer in self.judges():  # judgements are cached in the same store
            scorer.bind(store.path)

    def judges(self) -> list[Any]:
        """The task's judge scorers (:mod:`iapo.live.judge`), built if need be."""
        if not any(o.scorer == "judge" for o in self.task.objectives):
            return []
        return [s for o, s in zip(self.task.objectives, self.scorers, strict=True)
                if o.scorer == "judge"]

    def judge_usage(self) -> dict[str, int]:
        """The judges' own requests and tokens so far, summed (apart from the policy's)."""
        total = {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for scorer in self.judges():
            for k, v in scorer.usage.to_dict().items():
                total[k] += v
        return total

    def score(self, record: Record, text: str, finish_reason: str | None = None
              ) -> tuple[str | None, list[float | None], list[str]]:
        """(extracted answer, one score per objective, failures). A scorer that raises scores
        the completion at its objective's lower bound and is recorded as a failure. Without a
        gold answer, the scorers that need one give None (no score, no failure). A completion
        cut by max_tokens (``finish_reason`` "length") is read by the truncation-aware
        extractor and scorers (only an explicit answer counts, unless the task says "any")."""
        cut = self.truncated(finish_reason)
        scorers = self.scorers
        if cut:
            assert self._cut_scorers is not None
            scorers = self._cut_scorers
        extract = self.extract_cut if cut else self.extract
        scores: list[float | None] = []
        failures = []
        for obj, scorer in zip(self.task.objectives, scorers, strict=True):
            if record.gold is None and obj.scorer in GOLD_SCORERS:
                scores.append(None)
                continue
            try:
                value = float(scorer(record.query, text, record.gold))
                if not np.isfinite(value):
                    raise ValueError(f"score {value}")
                value = min(max(value, obj.lower), obj.upper)
            except Exception as e:  # a scorer is user code: any failure is recorded
                value = obj.lower
                failures.append(f"{obj.name}: {type(e).__name__}: {e}"[:300])
            scores.append(value)
        answer = None
        if extract is not None:
            try:
                answer = extract(text)
            except Exception as e:
                failures.append(f"extractor: {type(e).__name__}: {e}"[:300])
        return answer, scores, failures

    def gold_answer(self, record: Record) -> str | None:
        if self.extract is None or record.gold is None:
            return None
        return read_answer(self.extract, record.gold)

    def costs(self, token_sums: npt.ArrayLike, token_counts: npt.ArrayLike
              ) -> npt.NDArray[np.float64]:
        """Cost of one completion per prompt, [P], from the completion tokens seen per prompt:
        the wordiest prompt costs ``cost_scale``; a prompt not seen yet costs that too."""
        counts = np.asarray(token_counts, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.asarray(token_sums, dtype=np.float64) / counts
        seen = counts > 0
        top = float(means[seen].max()) if seen.any() else 0.0
        if top <= 0:
            return np.full(len(self.arms), self.task.cost_scale)
        return self.task.cost_scale * np.where(seen, means, top) / top

    def client(self) -> ChatClient:
        m = self.task.model
        return ChatClient(m.base_url, m.name, m.api_key(), m.concurrency, m.timeout,
                          m.max_retries, supports_n=self.supports_n)


class LiveOracle:
    """Serves pulls from the store and, for what it lacks, from the LLM.

    ``queries``: indices into ``runtime.records`` the learner may sample (the training split).
    ``costs``: fixed costs per prompt [P] (the test evaluation uses training's); by default
    they follow the tokens of the samples this run has drawn.
    ``on_progress(served, paid, tokens, batch)`` is called as completions arrive.
    ``batcher``: what the store lacks is asked for as batch jobs (:mod:`iapo.live.batch`).
    """

    def __init__(
        self,
        runtime: TaskRuntime,
        store: CompletionStore,
        queries: npt.ArrayLike,
        budget: int,
        rng: np.random.Generator,
        on_progress: Callable[[int, int, int, int], None] | None = None,
        costs: npt.ArrayLike | None = None,
        batcher: Batcher | None = None,
        categories: dict[int, dict[str, int]] | None = None,
        query_ids: npt.ArrayLike | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.problem = runtime.problem
        self.queries = np.asarray(queries, dtype=np.int64)
        if self.queries.size == 0:
            raise InputError("the oracle needs at least one training query; pass the indices "
                             "of the queries it may draw from")
        self.ledger = Ledger(budget)
        self.rng = rng
        self.on_progress = on_progress
        self.cursor: dict[str, int] = defaultdict(int)  # next unused sample of each pool
        self.fixed_costs = None if costs is None else np.asarray(costs, dtype=np.float64)
        p = self.problem.n_prompts
        self.token_sums = np.zeros(p)
        self.token_counts = np.zeros(p, dtype=np.int64)
        self.drawn = np.zeros(p, dtype=np.int64)  # completions served per prompt
        self.tokens_drawn = np.zeros((p, 2))  # their prompt and completion tokens
        self.cut = np.zeros(p, dtype=np.int64)  # of which cut by max_tokens
        self.batcher = batcher
        self.paid = 0
        self.replayed = 0
        self.tokens_io = np.zeros(2, dtype=np.int64)  # prompt and completion tokens paid
        self.paid_batch = 0  # of which from batch jobs
        self.tokens_io_batch = np.zeros(2, dtype=np.int64)
        self.failures = 0
        self.rescored = 0
        self.batches = 0
        # majority voting's answer categories per query (gold first): per record, or per
        # ``query_ids[record]``, in ``categories`` when given, which other oracles may share
        # (refine: a query's answers numbered alike in training's, the log's and its draws)
        self._categories: dict[int, dict[str, int]] = {} if categories is None else categories
        self._query_ids = None if query_ids is None else np.asarray(query_ids, dtype=np.int64)
        key = f"supports_n {runtime.task.model.base_url} {runtime.task.model.name}"
        self.supports_key = key
        if runtime.supports_n is None:  # probed once, remembered by the store
            runtime.supports_n = store.get_meta(key)

    @property
    def tokens(self) -> int:
        """The tokens paid (prompt and completion)."""
        return int(self.tokens_io.sum())

    def costs(self) -> npt.NDArray[np.float64]:
        """The cost of one completion per prompt now: [P]."""
        if self.fixed_costs is not None:
            return self.fixed_costs
        return self.runtime.costs(self.token_sums, self.token_counts)

    # ---------------------------------------------------------------- pulls
    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        """Serve a batch of pulls; all or nothing against the budget."""
        total = validate_pulls(self.problem, requests)
        self.ledger.charge(total)
        saved_cursor = dict(self.cursor)
        try:
            plan = []
            drawn = draw_queries(requests, [self.queries] * len(requests), self.queries,
                                 self.rng)
            starts = np.cumsum([0] + [r.count for r in requests])
            for i, r in enumerate(requests):
                for q in drawn[starts[i]: starts[i + 1]]:
                    pool = self.runtime.pool(r.prompt, int(q))
                    start = self.cursor[pool]
                    self.cursor[pool] = start + r.n
                    plan.append((r.prompt, int(q), list(range(start, start + r.n))))
            groups = self.serve(plan)
        except BaseException:
            self.ledger.refund(total)  # nothing was served: the charge is undone
            self.cursor = defaultdict(int, saved_cursor)
            raise
        self.batches += 1
        observations = []
        i = 0
        for r in requests:
            observations.append(self.observe(r.prompt, r.n, plan[i: i + r.count],
                                             groups[i: i + r.count]))
            i += r.count
        return observations

    def groups(self, arms: Sequence[tuple[int, int]], queries: npt.ArrayLike
               ) -> list[Observation]:
        """For each (prompt, n) of ``arms``, one group of samples 0..n-1 on each of
        ``queries`` (the test evaluation; the ledger is charged), asked for at once (one
        submission in batch mode)."""
        qs = [int(q) for q in np.asarray(queries).reshape(-1)]
        self.ledger.charge(sum(n for _, n in arms) * len(qs))
        plan = [(prompt, q, list(range(n))) for prompt, n in arms for q in qs]
        rows = self.serve(plan)
        return [self.observe(prompt, n, plan[i * len(qs):(i + 1) * len(qs)],
                             rows[i * len(qs):(i + 1) * len(qs)])
                for i, (prompt, n) in enumerate(arms)]

    def serve(self, wanted: list[tuple[int, int, list[int]]], rescore: bool = True
              ) -> list[list[StoredCompletion]]:
        """For each (prompt, query index, sample indices), its stored completions, asking the
        LLM for the missing ones first and (``rescore``) rescoring stored ones scored under
        another gold or other scorers."""
        have = []
        # by pool: two records with the same text, or two prompts that render alike, share
        # their samples and must not pay for one twice; any (p, q) of a pool can ask for it
        by_pool: dict[str, tuple[tuple[int, int], list[int]]] = {}
        for p, q, idx in wanted:
            pool = self.runtime.pool(p, q)
            got = self.store.get(pool, idx)
            have.append(got)
            todo = by_pool.setdefault(pool, ((p, q), []))[1]
            for s in idx:
                if s not in got and s not in todo:
                    todo.append(s)
        missing = {pq: v for pq, v in by_pool.values() if v}
        served_before = sum(len(g) for g in have)
        self.replayed += served_before
        if self.on_progress is not None:
            self.on_progress(served_before, self.paid, self.tokens, self.batches + 1)
        if missing and self.batcher is not None:  # a batch job, or as many as need be
            self.batcher.fetch(self, missing)
        elif missing:
            asyncio.run(self._fetch(missing))
        out = []
        for (p, q, idx), got in zip(wanted, have, strict=True):
            if len(got) < len(idx):
                got = self.store.get(self.runtime.pool(p, q), idx)
            rows = [got[s] for s in idx]
            out.append(self._fresh_scores(q, rows) if rescore else rows)
        return out

    def _fresh_scores(self, q: int, rows: list[StoredCompletion]) -> list[StoredCompletion]:
        """``rows`` with scores computed under the current gold and scorers (stored texts are
        rescored, and the store updated, where the score key differs: no LLM call)."""
        record = self.runtime.records[q]
        key = self.runtime.score_key(record)
        stale = [i for i, c in enumerate(rows) if c.score_key != key]
        if not stale:
            return rows
        fixed = []
        for i in stale:
            c = rows[i]
            answer, scores, failures = self.runtime.score(record, c.text, c.finish_reason)
            rows[i] = dataclasses.replace(c, answer=answer, scores=scores, failures=failures,
                                          score_key=key)
            fixed.append(rows[i])
        self.store.rescore(fixed)
        self.rescored += len(fixed)
        return rows

    def keep(self, p: int, q: int, samples: Sequence[int], comps: Sequence[Completion],
             scored: Sequence[tuple[str | None, list[float | None], list[str]]]) -> None:
        """Store the completions ``comps`` of prompt p on record q as the pool's ``samples``
        (as many as came back), with their ``scored`` (:meth:`TaskRuntime.score`), in one
        transaction: a request with n > 1 carries one seed, so storing part of it would make
        a resume ask a different request."""
        self.keep_all([(p, q, samples, comps, scored)])

    def keep_all(self, items: Sequence[tuple[int, int, Sequence[int], Sequence[Completion],
                                             Sequence[tuple[str | None, list[float | None],
                                                            list[str]]]]],
                 batch: bool = False, meta: dict[str, Any] | None = None) -> None:
        """:meth:`keep` for several requests at once, all in one transaction with ``meta``
        (``batch``: they came from a batch job, whose results are stored whole or not at
        all)."""
        runtime = self.runtime
        rows = []
        for p, q, samples, comps, scored in items:
            record = runtime.records[q]
            pool, arm, key = runtime.pool(p, q), runtime.arms[p], runtime.score_key(record)
            rows += [StoredCompletion(
                pool=pool, sample=s, arm=arm, query_id=record.id, text=c.text,
                answer=answer, scores=scores, failures=failures,
                prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                latency=c.latency, seed=c.seed, score_key=key,
                finish_reason=c.finish_reason, retries=c.retries, errors=list(c.errors),
                endpoint=c.endpoint)
                for s, c, (answer, scores, failures) in zip(samples, comps, scored,
                                                             strict=False)]
        self.store.put_all(rows, meta)
        comps = [c for _, _, _, got, _ in items for c in got]
        paid = len(comps)
        io = np.array([sum(c.prompt_tokens for c in comps),
                       sum(c.completion_tokens for c in comps)])
        self.paid += paid
        self.tokens_io += io
        if batch:
            self.paid_batch += paid
            self.tokens_io_batch += io
        self.failures += sum(len(f) for *_, scored in items for _, _, f in scored)
        if self.on_progress is not None:
            self.on_progress(paid, self.paid, self.tokens, self.batches + 1)

    async def _fetch(self, missing: dict[tuple[int, int], list[int]]) -> None:
        runtime = self.runtime
        async with runtime.client() as client:

            async def one(p: int, q: int, samples: list[int]) -> None:
                record = runtime.records[q]
                prompt = runtime.task.prompts[p]
                seeds = [sample_seed(runtime.pool(p, q), s) for s in samples]
                comps: list[Completion] = await client.sample(
                    prompt.render(record.query), prompt.decoding, seeds)
                scored = await asyncio.gather(*(asyncio.to_thread(runtime.score, record, c.text,
                                                                  c.finish_reason)
                                                 for c in comps))
                self.keep(p, q, samples, comps, scored)

            jobs = list(missing.items())
            if client.supports_n is None and any(len(v) > 1 for _, v in jobs):
                first = next(i for i, (_, v) in enumerate(jobs) if len(v) > 1)
                (p, q), samples = jobs.pop(first)
                await one(p, q, samples)  # learn whether the server honours n, once
                if client.supports_n is not None:
                    runtime.supports_n = client.supports_n
                    self.store.set_meta(self.supports_key, client.supports_n)
            if client.supports_n is False:  # one task per sample: each commits on arrival
                jobs = [(k, [s]) for k, v in jobs for s in v]
            try:
                # the first failure cancels the rest: no hammering of a failing server
                async with asyncio.TaskGroup() as group:
                    for (p, q), s in jobs:
                        group.create_task(one(p, q, s))
            except ExceptionGroup as eg:  # report the cause itself, not the group
                raise eg.exceptions[0] from None

    # ---------------------------------------------------------------- arrays
    def observe(self, prompt: int, n: int, plan: Sequence[tuple[int, int, list[int]]],
                rows: Sequence[list[StoredCompletion]], keep_costs: bool = True
                ) -> Observation:
        """The observation of groups of n samples of ``prompt`` (one per plan entry): scores
        [count, n, K+1] with the cost last, and for MV the answer labels (gold = 0). The
        costs are written to the store unless ``keep_costs`` is False (a reader's)."""
        count = len(plan)
        qs = [q for _, q, _ in plan]
        if self.fixed_costs is None:  # this run's token means, in pull order
            self.token_sums[prompt] += sum(c.completion_tokens for row in rows for c in row)
            self.token_counts[prompt] += count * n
        cost = float(self.costs()[prompt])
        self.drawn[prompt] += sum(len(row) for row in rows)
        self.tokens_drawn[prompt] += [sum(c.prompt_tokens for row in rows for c in row),
                                      sum(c.completion_tokens for row in rows for c in row)]
        self.cut[prompt] += sum(self.runtime.truncated(c.finish_reason) for row in rows
                                for c in row)
        k = len(self.runtime.task.objectives)
        scores = np.zeros((count, n, k + 1))
        mv = self.problem.aggregator in ("mv", "mixed")
        labels = np.zeros((count, n), dtype=np.int16) if mv else None
        no_answer = np.full(count, -1, dtype=np.int16)  # each query's, once it has one
        for g, (row, q) in enumerate(zip(rows, qs, strict=True)):
            scores[g, :, :-1] = [[np.nan if v is None else v for v in c.scores] for c in row]
            if labels is not None:
                key = q if self._query_ids is None else int(self._query_ids[q])
                cats = self._categories.get(key)
                if cats is None:
                    gold = self.runtime.gold_answer(self.runtime.records[q])
                    cats = self._categories[key] = answer_categories(gold, [])
                labels[g] = answer_labels(cats, [c.answer for c in row])
                no_answer[g] = cats.get(NO_ANSWER, -1)
        scores[..., -1] = cost
        if keep_costs:
            self.store.set_costs([(c.pool, c.sample, cost) for row in rows for c in row])
        gold_idx = np.zeros(count, dtype=np.int16) if mv else None
        return Observation(prompt, n, np.asarray(qs, dtype=np.int64), scores, labels, gold_idx,
                           no_answer if mv else None)

    def summary(self) -> dict[str, Any]:
        out = {"completions_used": self.ledger.spent, "completions_paid": self.paid,
               "completions_replayed": self.replayed, "tokens_paid": self.tokens,
               "scorer_failures": self.failures, "rescored": self.rescored,
               "batches": self.batches}
        if self.batcher is not None:  # what batch jobs paid, of the above
            out.update(completions_paid_batch=self.paid_batch,
                       tokens_paid_batch=int(self.tokens_io_batch.sum()))
        return out
