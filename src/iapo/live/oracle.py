"""The live oracle: pulls served by a real LLM through the completion store.

The same learners that run on simulated environments run here unchanged: a pull
(prompt, n, count) draws ``count`` training queries, takes the next n unused samples of each
(prompt, query) pool, asks the LLM only for samples the store lacks, scores and stores each one
(committed) before building the observation.

Cost of a completion: the paper's normalization, ``cost_scale * mean_tokens(p) /
max_q mean_tokens(q)`` with the per-prompt mean completion tokens over everything stored so far
(so the wordiest prompt costs ``cost_scale`` per completion). The means settle as data arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.estimate import QTable
from iapo.live.client import ChatClient
from iapo.live.scorers import EXTRACTORS, make_scorer
from iapo.live.store import CompletionStore, StoredCompletion, arm_key
from iapo.live.task import Record, Task
from iapo.oracle import Ledger, Observation, Pull, validate_pulls

NO_ANSWER = "\x00no-answer"


def sample_seed(arm: str, query_id: str, sample: int) -> int:
    """The seed of one pool sample: distinct per sample, the same on every replay."""
    digest = hashlib.sha256(f"{arm}|{query_id}|{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class TaskRuntime:
    """A task's live parts: records, arm keys, scorers and the answer extractor."""

    def __init__(self, task: Task, records: Sequence[Record]) -> None:
        self.task = task
        self.records = list(records)
        self.problem = task.problem()
        self.arms = [arm_key(task.model.name, p.template, p.system, p.decoding)
                     for p in task.prompts]
        self._scorers: list[Any] | None = None  # built on first use: export needs none
        self.extract = EXTRACTORS[task.extractor] if task.extractor else None

    @property
    def scorers(self) -> list[Any]:
        if self._scorers is None:
            self._scorers = [make_scorer(o.scorer, o.options) for o in self.task.objectives]
        return self._scorers

    def register(self, store: CompletionStore) -> None:
        """Record the task, its arms and its queries in the store (for export-env)."""
        store.set_meta("task", {"name": self.task.name, "path": str(self.task.path),
                                "digest": self.task.digest(), "raw": self.task.raw})
        for a, p in zip(self.arms, self.task.prompts, strict=True):
            store.add_arm(a, self.task.model.name, p.name, p.template, p.system, p.decoding)
        store.add_queries((r.id, r.query, r.gold) for r in self.records)

    def score(self, record: Record, text: str) -> tuple[str | None, list[float], list[str]]:
        """(extracted answer, one score per objective, failures). A scorer that raises scores
        the completion at its objective's lower bound and is recorded as a failure."""
        scores, failures = [], []
        for obj, scorer in zip(self.task.objectives, self.scorers, strict=True):
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
        if self.extract is not None:
            try:
                answer = self.extract(text)
            except Exception as e:
                failures.append(f"extractor: {type(e).__name__}: {e}"[:300])
        return answer, scores, failures

    def gold_answer(self, record: Record) -> str | None:
        if self.extract is None or record.gold is None:
            return None
        try:
            return self.extract(str(record.gold))
        except Exception:
            return None

    def costs(self, mean_tokens: dict[str, float]) -> npt.NDArray[np.float64]:
        """Cost of one completion per prompt: [P]."""
        known = [mean_tokens[a] for a in self.arms if a in mean_tokens]
        top = max(known) if known and max(known) > 0 else 1.0
        return np.array([self.task.cost_scale * mean_tokens.get(a, top) / top for a in self.arms])

    def client(self) -> ChatClient:
        m = self.task.model
        return ChatClient(m.base_url, m.name, m.api_key(), m.concurrency, m.timeout,
                          m.max_retries, supports_n=m.supports_n)


class LiveOracle:
    """Serves pulls from the store and, for what it lacks, from the LLM.

    ``queries``: indices into ``runtime.records`` the learner may sample (the training split).
    ``on_progress(served, paid, tokens, batch)`` is called as completions arrive.
    """

    def __init__(
        self,
        runtime: TaskRuntime,
        store: CompletionStore,
        queries: npt.ArrayLike,
        budget: int,
        rng: np.random.Generator,
        on_progress: Callable[[int, int, int, int], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.problem = runtime.problem
        self.queries = np.asarray(queries, dtype=np.int64)
        if self.queries.size == 0:
            raise ValueError("the oracle needs at least one training query")
        self.ledger = Ledger(budget)
        self.rng = rng
        self.on_progress = on_progress
        self.cursor: dict[tuple[int, int], int] = defaultdict(int)
        self.stats = QTable(self.problem)  # every observation of this run, for the report
        self.paid = 0
        self.tokens = 0
        self.failures = 0
        self.batches = 0
        self._categories: dict[int, dict[str, int]] = {}

    # ---------------------------------------------------------------- pulls
    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        """Serve a batch of pulls; all or nothing against the budget."""
        total = validate_pulls(self.problem, requests)
        self.ledger.charge(total)
        saved_cursor = dict(self.cursor)
        try:
            plan = []
            for r in requests:
                qs = self.queries[self.rng.integers(0, self.queries.size, r.count)]
                for q in qs:
                    start = self.cursor[(r.prompt, int(q))]
                    self.cursor[(r.prompt, int(q))] = start + r.n
                    plan.append((r, int(q), list(range(start, start + r.n))))
            groups = self.serve([(r.prompt, q, idx) for r, q, idx in plan])
        except BaseException:
            self.ledger.spent -= total  # nothing was served: the charge is undone
            self.cursor = defaultdict(int, saved_cursor)
            raise
        self.batches += 1
        observations = self._observations(requests, plan, groups)
        self.stats.update(observations)
        return observations

    def serve(self, wanted: list[tuple[int, int, list[int]]]
              ) -> list[list[StoredCompletion]]:
        """For each (prompt, query index, sample indices), its stored completions, asking the
        LLM for the missing ones first."""
        arms = self.runtime.arms
        have = []
        missing: dict[tuple[int, int], list[int]] = defaultdict(list)
        for p, q, idx in wanted:
            got = self.store.get(arms[p], self.runtime.records[q].id, idx)
            have.append(got)
            for s in idx:
                if s not in got and s not in missing[(p, q)]:
                    missing[(p, q)].append(s)
        missing = {k: v for k, v in missing.items() if v}
        served_before = sum(len(g) for g in have)
        if self.on_progress is not None:
            self.on_progress(served_before, self.paid, self.tokens, self.batches + 1)
        if missing:
            asyncio.run(self._fetch(missing))
        out = []
        for (p, q, idx), got in zip(wanted, have, strict=True):
            if len(got) < len(idx):
                got = self.store.get(arms[p], self.runtime.records[q].id, idx)
            out.append([got[s] for s in idx])
        return out

    async def _fetch(self, missing: dict[tuple[int, int], list[int]]) -> None:
        runtime = self.runtime
        async with runtime.client() as client:

            async def one(p: int, q: int, samples: list[int]) -> None:
                record = runtime.records[q]
                prompt = runtime.task.prompts[p]
                arm = runtime.arms[p]
                seeds = [sample_seed(arm, record.id, s) for s in samples]
                comps = await client.sample(prompt.render(record.query), prompt.decoding, seeds)
                for s, c in zip(samples, comps, strict=False):
                    answer, scores, failures = await asyncio.to_thread(
                        runtime.score, record, c.text)
                    self.store.put(StoredCompletion(
                        arm, record.id, s, c.text, answer, scores, failures, c.prompt_tokens,
                        c.completion_tokens, c.latency, c.seed))
                    self.paid += 1
                    self.tokens += c.prompt_tokens + c.completion_tokens
                    self.failures += len(failures)
                    if self.on_progress is not None:
                        self.on_progress(1, self.paid, self.tokens, self.batches + 1)

            jobs = list(missing.items())
            if client.supports_n is None and jobs:
                (p, q), samples = jobs[0]
                await one(p, q, samples)  # learn whether the server honours n
                jobs = jobs[1:]
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
    def _label(self, q: int, answer: str | None) -> int:
        cats = self._categories.get(q)
        if cats is None:
            gold = self.runtime.gold_answer(self.runtime.records[q])
            cats = {gold if gold is not None else "\x00gold": 0}
            self._categories[q] = cats
        key = NO_ANSWER if answer is None else answer
        if key not in cats:
            cats[key] = len(cats)
        return cats[key]

    def _observations(self, requests: Sequence[Pull], plan: list[tuple[Pull, int, list[int]]],
                      groups: list[list[StoredCompletion]]) -> list[Observation]:
        costs = self.runtime.costs(self.store.mean_tokens())
        mv = self.problem.aggregator in ("mv", "mixed")
        out = []
        i = 0
        for r in requests:
            rows = groups[i: i + r.count]
            qs = [q for _, q, _ in plan[i: i + r.count]]
            i += r.count
            scores = np.zeros((r.count, r.n, len(self.runtime.task.objectives) + 1))
            labels = np.zeros((r.count, r.n), dtype=np.int16) if mv else None
            for g, (row, q) in enumerate(zip(rows, qs, strict=True)):
                scores[g, :, :-1] = [c.scores for c in row]
                if labels is not None:
                    labels[g] = [self._label(q, c.answer) for c in row]
            scores[..., -1] = costs[r.prompt]
            gold = np.zeros(r.count, dtype=np.int16) if mv else None
            out.append(Observation(r.prompt, r.n, np.asarray(qs, dtype=np.int64), scores,
                                   labels, gold))
        return out

    def summary(self) -> dict[str, Any]:
        return {"completions_used": self.ledger.spent, "completions_paid": self.paid,
                "tokens_paid": self.tokens, "scorer_failures": self.failures,
                "batches": self.batches}
