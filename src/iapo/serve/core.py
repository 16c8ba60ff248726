"""The serving core: one policy, one context, one query, one outcome.

``iapo answer`` and ``iapo serve`` both call :class:`Responder`: it renders the arm's prompt,
draws the group (replaying a store's samples and paying only for missing ones; in waves,
cancelling once decided, for an arm priced to stop once its vote is decided), scores the
completions, aggregates them the one way training scored groups (:mod:`iapo.live.aggregate`)
and returns one typed :class:`Response`. The command and the gateway only translate arguments
into a call and the response into their output.

A policy is a deployable artifact (:func:`serving_section`): ``policy.json`` embeds the task it
serves and a digest of its serving part (prompts, model name, aggregator, extractor, labels,
objectives, contexts, N_max, stopping), so it serves without its task file. A task file given
beside it must agree on that part: :func:`served_task` names the first field that changed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iapo.latency import round_width
from iapo.live.aggregate import aggregate
from iapo.live.client import ChatClient, Completion
from iapo.live.oracle import TaskRuntime, sample_seed
from iapo.live.scorers import GOLD_SCORERS
from iapo.live.store import (
    CompletionStore,
    ServedRequest,
    StoredCompletion,
    pool_key,
    store_errors,
)
from iapo.live.task import Record, Task, TaskError, load_task, task_from_dict, without_batch
from iapo.live.waves import Drawn, draw_in_waves, stop_fields
from iapo.policy import Policy, PolicyError
from iapo.problem import Choice, Stopping

NO_ANSWER_KEY = "<no answer>"  # how a vote for "no answer" is shown in JSON


# ---------------------------------------------------------------- the deployable policy


def serving_part(task: Task) -> dict[str, Any]:
    """What decides a served outcome (not where the model runs, nor how training ran)."""
    return {
        "name": task.name,
        "model": task.model.name,
        "prompts": [{"name": p.name, "template": p.template, "system": p.system,
                     "decoding": dict(sorted(p.decoding.items()))} for p in task.prompts],
        "aggregator": task.aggregator,
        "extractor": task.extractor,
        "labels": list(task.labels) if task.labels else None,
        # named only when not the default, so that older policies keep their digest
        **({"truncated": task.truncated} if task.truncated != "explicit" else {}),
        # named only when not the rule of older policies ("vote"), for the same reason
        **({"no_answer": task.no_answer} if task.no_answer != "vote" else {}),
        "objectives": [{"name": o.name, "scorer": o.scorer, "lower": o.lower,
                        "upper": o.upper, "options": o.options} for o in task.objectives],
        "contexts": {"weights": [list(w) for w in task.weights], "budgets": task.budgets},
        "n_max": task.n_max,
        "stopping": task.stopping.to_dict(),
    }


def serving_digest(task: Task) -> str:
    blob = json.dumps(serving_part(task), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def serving_section(task: Task) -> dict[str, Any]:
    """The ``serving`` entry of a live policy: the task's fields and their serving digest.
    The task's no-answer rule is written out even where its file takes the default, so that
    a policy serves the rule it was trained with whatever a later default is."""
    raw = without_batch(task.raw)  # how training was paid for does not serve
    return {"task": _with_no_answer(raw, task.no_answer), "digest": serving_digest(task)}


def _with_no_answer(raw: dict[str, Any], rule: str) -> dict[str, Any]:
    """The raw task ``raw`` with ``aggregator.no_answer`` set to ``rule`` where it is unset."""
    aggregator = raw.get("aggregator")
    if not isinstance(aggregator, dict) or "no_answer" in aggregator:
        return raw
    return {**raw, "aggregator": {**aggregator, "no_answer": rule}}


def _first_change(a: Any, b: Any, where: str = "") -> str | None:
    """The path of the first field where ``a`` and ``b`` differ (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            found = _first_change(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (its length)"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_change(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else where


def served_task(policy: Policy, task_path: Path | None, source: Path | str,
                allow_change: bool = False) -> Task:
    """The task ``policy`` serves: its embedded one, or the file ``task_path``, which must
    agree on the serving part unless ``allow_change``. A policy without an embedded task (an
    older one) needs its task file: the one its trace names, or ``task_path``."""
    embedded = None
    if policy.serving is not None:
        try:
            # a policy from before the no-answer rule counted "no answer" as a vote
            embedded = task_from_dict(_with_no_answer(policy.serving["task"], "vote"),
                                      Path(source))
        except TaskError as e:
            raise PolicyError(f"{source}: its embedded task is not valid ({e})") from e
        if serving_digest(embedded) != policy.serving["digest"]:
            raise PolicyError(f"{source}: its embedded task does not match its digest; was "
                              "the file edited by hand? Train it again, or pass --task")
    if task_path is None:
        if embedded is not None:
            return embedded
        path = policy.trace.get("task", {}).get("path")
        if not path:
            raise PolicyError(f"{source} names no task file and embeds none (a policy from an "
                              "older iapo); pass --task")
        if not Path(path).is_file():
            raise PolicyError(f"{source} is a policy from an older iapo: it embeds no task, "
                              f"and its task file {path!r} is not here; pass --task")
        return load_task(path)
    task = load_task(task_path)
    if embedded is not None and not allow_change:
        changed = _first_change(serving_part(embedded), serving_part(task))
        if changed:
            raise PolicyError(f"{task_path}: '{changed}' differs from what {source} was "
                              "trained with; serve the policy without --task, train again, "
                              "or pass --allow-task-change")
    return task


def check_policy_arms(policy: Policy, task: Task, source: Path | str) -> None:
    """The policy was learned for ``task``: same name, contexts, prompts in range, N in
    1..n_max."""
    if policy.env != task.name:
        raise PolicyError(f"{source}: the policy was learned for task '{policy.env}', not "
                          f"'{task.name}'")
    keys = task.problem().grid.keys
    if policy.contexts != keys:
        raise PolicyError(f"{source}: the policy's contexts {policy.contexts} do not match the "
                          f"task's {keys}")
    for key, ch in zip(policy.contexts, policy.choices, strict=True):
        if not 0 <= ch.prompt < len(task.prompts) or (
                ch.n is not None and not 1 <= ch.n <= task.n_max):
            raise PolicyError(f"{source}: context '{key}' has arm (prompt {ch.prompt}, N "
                              f"{ch.n}); task '{task.name}' has prompts 0..{len(task.prompts) - 1}"
                              f" and N in 1..{task.n_max}")


def served_objectives(task: Task) -> list[int]:
    """The objectives whose scores choose the served completion: all of them for BoN, the
    style objectives (all but the first) for mixed, none for MV."""
    k = len(task.objectives)
    return list(range(k)) if task.aggregator == "bon" else list(range(1, k)) \
        if task.aggregator == "mixed" else []


def check_servable(runtime: TaskRuntime) -> None:
    """Refuse a task whose served choice would need a gold answer."""
    for i in served_objectives(runtime.task):
        o = runtime.task.objectives[i]
        if o.scorer in GOLD_SCORERS:
            raise TaskError(f"objective '{o.name}' (scorer {o.scorer}) needs a gold answer, "
                            f"so it cannot choose among completions at answer time; "
                            f"{runtime.task.aggregator} needs reward models here (python or "
                            "http scorers)")


def outcome_fields(task: Task, weights: Any, answers: list[str | None],
                   scores: list[list[float | None]], rng: random.Random) -> dict[str, Any]:
    """Aggregate a group the one way (iapo.live.aggregate) and describe the outcome."""
    k = len(task.objectives)
    values = np.array([[np.nan if v is None else v for v in row] for row in scores],
                      dtype=np.float64).reshape(len(answers), k)
    used = served_objectives(task)
    values[:, [i for i in range(k) if i not in used]] = 0.0
    out = aggregate(task.aggregator, answers, values, weights, rng, task.no_answer)
    fields: dict[str, Any] = {"aggregator": task.aggregator, "choice": out.chosen}
    if task.aggregator in ("mv", "mixed"):
        fields.update({"answer": out.answer,
                       "votes": {NO_ANSWER_KEY if a is None else a: c for a, c in out.votes},
                       "tied": [NO_ANSWER_KEY if a is None else a for a in out.tied]})
    if out.values:
        fields["values"] = list(out.values)
    return fields


# ---------------------------------------------------------------- one response


@dataclass(frozen=True)
class Scored:
    """One completion of a response, scored."""

    text: str
    answer: str | None
    scores: list[float | None]
    failures: list[str]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Response:
    """What serving one query under one context gives."""

    context: str
    prompt: str
    prompt_index: int
    n: int
    n_capped: bool
    samples: list[Scored]
    fields: dict[str, Any]  # aggregator, choice, and answer/votes/tied or values
    stop: dict[str, Any]  # stopping, completions_used, completions_saved, waves, cancelled
    paid: int
    replayed: int
    upstream_seconds: float
    scorer_failures: int = field(default=0)
    request_id: str = ""  # the response's id; in the log, its request's row and pool
    predicted_seconds: float | None = None  # the policy's expected latency of the arm

    @property
    def chosen(self) -> int:
        return int(self.fields["choice"])

    @property
    def text(self) -> str:
        return self.samples[self.chosen].text

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.samples)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.samples)

    def usage(self) -> dict[str, int]:
        """The tokens of every completion drawn, in the OpenAI ``usage`` form."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass(frozen=True)
class Request:
    """One arm's draw, planned: the rendered messages, the seeds, the stored samples."""

    index: int
    prompt: int
    n: int
    capped: bool
    query: str
    messages: list[dict[str, str]]
    decoding: dict[str, Any]
    stopping: Stopping
    pool: str
    use_store: bool
    seeds: list[int]
    stored: dict[int, StoredCompletion]
    id: str  # the response's id (chatcmpl-...)
    caller: str | None  # the API key's name, for the log
    reason: str = "policy"  # why it is drawn: the policy's arm, or "learn" (never returned)
    predicted: float | None = None  # the arm's expected latency (s), where the policy has it


def arm_stopping(policy: Policy, choice: Choice) -> Stopping:
    """How ``choice``'s arm stops when served: the policy's rule, in waves of the choice's
    own width where the width is part of the arm (``Stopping.widths``)."""
    if choice.wave is None:
        return policy.stopping
    return Stopping("decided", choice.wave)


class LatencyWatch:
    """The latency served, against the policy's prediction and each context's limit (what
    ``/health`` shows): per context the latest ``window`` responses whose arm the policy
    predicted (N not capped) and that paid every completion (a replayed sample takes no
    time). Their mean, p50 and p95 in seconds; ``disagrees`` where, over at least
    :attr:`MIN_REQUESTS` of them, the mean is off the mean prediction by more than
    :attr:`TOLERANCE` of it and by more than 3 standard errors; ``over_limit`` where the mean
    exceeds the context's limit (on the expected latency) by more than 3 standard errors;
    ``over_p95`` where more than 5% of them exceed its p95 limit, a binomial test at the
    one-sided level of 3 standard errors (:attr:`LEVEL`)."""

    TOLERANCE = 0.25  # the error the model is held to against a real server (docs/latency.md)
    MIN_REQUESTS = 20
    LEVEL = 0.00135  # P(a normal > 3 standard deviations): the p95 test's false alarms

    def __init__(self, window: int = 1000) -> None:
        self.window = window
        self._seen: dict[str, collections.deque[tuple[float, float]]] = {}

    def add(self, r: Response) -> None:
        if r.predicted_seconds is None or r.replayed:
            return
        seen = self._seen.setdefault(r.context, collections.deque(maxlen=self.window))
        seen.append((r.upstream_seconds, r.predicted_seconds))

    def health(self, limits: dict[str, float | None],
               p95_limits: dict[str, float | None] | None = None) -> dict[str, dict[str, Any]]:
        """Per context key seen: requests, mean, p50, p95, predicted (seconds), limit,
        p95_limit, disagrees, over_limit, over_p95. ``limits`` and ``p95_limits``: each
        context's limit on the expected latency and on its 95th percentile (None: none)."""
        from scipy.stats import binom

        out = {}
        for key, seen in self._seen.items():
            measured, predicted = (np.array(v) for v in zip(*seen, strict=True))
            n, mean, expected = measured.size, float(measured.mean()), float(predicted.mean())
            sem = float(measured.std(ddof=1) / np.sqrt(n)) if n > 1 else math.inf
            enough = n >= self.MIN_REQUESTS
            limit, tail = limits.get(key), (p95_limits or {}).get(key)
            beyond = int((measured > tail).sum()) if tail is not None else 0
            out[key] = {
                "requests": n, "mean": mean, "p50": float(np.quantile(measured, 0.5)),
                "p95": float(np.quantile(measured, 0.95)), "predicted": expected,
                "limit": limit,
                "disagrees": enough and abs(mean - expected) > max(self.TOLERANCE * expected,
                                                                     3 * sem),
                "over_limit": enough and limit is not None and mean - 3 * sem > limit,
                "p95_limit": tail,
                "over_p95": enough and tail is not None and beyond > 0 and float(
                    binom.sf(beyond - 1, n, 0.05)) < self.LEVEL}
        return out


class Responder:
    """Serves a policy's arms for one task.

    ``replay``: a completion store whose pools are replayed (samples 0..N-1 of the request's
    pool; missing ones are paid and stored). ``log``: a store every response is logged to, each
    a pool of its own. ``seed``: the seed of the samples (without ``replay``) and of the ties.
    ``max_n`` caps N. ``score_in_thread``: run the scorers in a worker thread (the gateway, so
    that a slow reward model never holds the event loop) at most ``scoring`` at once.
    """

    def __init__(self, task: Task, replay: CompletionStore | None = None,
                 log: CompletionStore | None = None, seed: int | None = None,
                 max_n: int | None = None, score_in_thread: bool = False,
                 scoring: int = 4) -> None:
        self.task = task
        self.runtime = TaskRuntime(task, [])
        check_servable(self.runtime)
        self.runtime.scorers  # noqa: B018 - load the scorers now: a broken one fails first
        self.grid = task.problem().grid
        self.replay = replay
        self.log = log
        self.rng = random.Random(seed)
        self.max_n = max_n
        # without a gold answer the gold-based scorers do not run; what is left may be user
        # code (python, http) or math-verify, which may take long: those run in threads
        inline = all(o.scorer in GOLD_SCORERS for o in task.objectives) and \
            task.extractor in (None, "multiple_choice", "numeric", "exact", "label")
        self.threaded = score_in_thread and not inline
        self._scoring = asyncio.Semaphore(scoring) if self.threaded else None
        if log is not None:
            with store_errors(log.path):
                self.runtime.register(log)

    def size(self, policy: Policy, index: int) -> tuple[int, bool]:
        """N of the arm for context ``index`` (drawn when the policy's N is random), capped at
        ``max_n``, and whether it was capped."""
        choice = policy.choices[index]
        n = choice.n if choice.n is not None else self.rng.randint(1, self.task.n_max)
        if self.max_n is not None and n > self.max_n:
            return self.max_n, True
        return n, False

    def request(self, policy: Policy, index: int, query: str,
                history: list[dict[str, str]] | None = None,
                size: tuple[int, bool] | None = None, request_id: str | None = None,
                caller: str | None = None) -> Request:
        """What to ask for ``policy``'s arm for context ``index`` on ``query`` (the caller's
        last message; ``history``: the messages before it); ``size``: N and whether it was
        capped, when the caller drew it already (:meth:`size`); ``request_id``: the
        response's id (a new one if None); ``caller``: the API key's name, for the log."""
        choice = policy.choices[index]
        n, capped = size if size is not None else self.size(policy, index)
        prompt = self.task.prompts[choice.prompt]
        messages = prompt.render(query)
        if history:
            own_system = [m for m in messages if m["role"] == "system"]
            messages = own_system + history + [m for m in messages if m["role"] != "system"]
        use_store = self.replay is not None and not history
        pool = pool_key(self.task.model.name, messages, prompt.decoding)
        return Request(
            index=index, prompt=choice.prompt, n=n, capped=capped, query=query,
            messages=messages, decoding=prompt.decoding, stopping=arm_stopping(policy, choice),
            pool=pool, use_store=use_store,
            seeds=[sample_seed(pool, s) if use_store else self.rng.randrange(2**31)
                   for s in range(n)],
            stored=self.replay.get(pool, list(range(n))) if use_store and self.replay else {},
            id=request_id or new_request_id(), caller=caller,
            # the policy's prediction is of the arm it chose: not of a capped N
            predicted=None if capped else choice.latency)

    async def learn(self, client: ChatClient, prompt: int, n: int, index: int, query: str
                    ) -> Response:
        """A learning pull: ``n`` fresh completions of ``prompt`` on ``query`` (a request of
        context ``index`` already answered), scored, aggregated and logged with reason
        "learn"; the caller never sees it."""
        p = self.task.prompts[prompt]
        messages = p.render(query)
        req = Request(index=index, prompt=prompt, n=n, capped=False, query=query,
                      messages=messages, decoding=p.decoding, stopping=Stopping(),
                      pool=pool_key(self.task.model.name, messages, p.decoding),
                      use_store=False, seeds=[self.rng.randrange(2**31) for _ in range(n)],
                      stored={}, id=new_request_id(), caller=None, reason="learn")
        return await self._respond(client, req, "learn")

    async def respond(self, client: ChatClient, policy: Policy, index: int, query: str,
                      history: list[dict[str, str]] | None = None, origin: str = "serve",
                      size: tuple[int, bool] | None = None, request_id: str | None = None,
                      caller: str | None = None) -> Response:
        """The outcome of ``policy``'s arm for context ``index`` on ``query``."""
        req = self.request(policy, index, query, history, size, request_id, caller)
        return await self._respond(client, req, origin)

    async def _respond(self, client: ChatClient, req: Request, origin: str) -> Response:
        t0 = time.perf_counter()
        comps, indices, paid, drawn = await self._draw(client, req)
        return await self._finish(req, comps, indices, paid, drawn,
                                  time.perf_counter() - t0, origin)

    async def stream(self, client: ChatClient, policy: Policy, index: int, query: str,
                     history: list[dict[str, str]] | None = None, origin: str = "serve",
                     size: tuple[int, bool] | None = None, request_id: str | None = None,
                     caller: str | None = None) -> AsyncIterator[str | Response]:
        """The outcome as it comes: pieces of the returned text, then the :class:`Response`.
        An arm of N = 1 that is not stored streams the upstream's tokens as they arrive; any
        other arm yields the chosen completion whole, once its group is decided."""
        req = self.request(policy, index, query, history, size, request_id, caller)
        if req.n == 1 and 0 not in req.stored:
            t0 = time.perf_counter()
            completion: Completion | None = None
            async for part in client.stream(req.messages, req.decoding, req.seeds[0]):
                if isinstance(part, str):
                    yield part
                else:
                    completion = part
            assert completion is not None
            yield await self._finish(req, [completion], [0], [0], None,
                                     time.perf_counter() - t0, origin)
            return
        response = await self._respond(client, req, origin)
        yield response.text
        yield response

    async def _draw(self, client: ChatClient, req: Request
                    ) -> tuple[list[Completion], list[int], list[int], Drawn[Completion] | None]:
        """The group: (completions, their sample indices, the indices paid now, the waves
        when the arm stops once decided)."""
        stored = req.stored
        paid: list[int] = []

        def from_store(s: int) -> Completion:
            c = stored[s]
            return Completion(c.text, c.prompt_tokens, c.completion_tokens, c.latency, c.seed,
                              c.finish_reason)

        if req.stopping.early and self.task.aggregator == "mv":
            record = Record("request", req.query, None)

            async def start(s: int) -> Completion:
                if s in stored:
                    return from_store(s)
                got = await client.one(req.messages, req.decoding, req.seeds[s])
                paid.append(s)
                return got

            # a wave wider than the completions the server runs at once (the task's
            # concurrency) is drawn as waves of that many, as iapo.latency prices it
            drawn = await draw_in_waves(start, req.n,
                                        round_width(req.stopping.wave,
                                                    self.task.model.concurrency),
                                        lambda c: self.runtime.score(record, c.text,
                                                                          c.finish_reason)[0],
                                        self.task.no_answer)
            return drawn.completions, drawn.indices, paid, drawn
        missing = [s for s in range(req.n) if s not in stored]
        fresh = await client.sample(req.messages, req.decoding, [req.seeds[s] for s in missing])
        paid = missing[: len(fresh)]
        got = {**{s: from_store(s) for s in stored}, **dict(zip(paid, fresh, strict=True))}
        indices = sorted(got)
        return [got[s] for s in indices], indices, paid, None

    async def _finish(self, req: Request, comps: list[Completion], indices: list[int],
                      paid: list[int], drawn: Drawn[Completion] | None, upstream: float,
                      origin: str) -> Response:
        """Score the group, store its new samples, aggregate it."""
        record = Record("request", req.query, None)
        scored = await self._score(record, [(c.text, c.finish_reason) for c in comps])
        if req.use_store and self.replay is not None:  # the new samples of the pool, scored
            at = {s: j for j, s in enumerate(indices)}
            self.replay.put_all([self._stored(req.pool, s, req.prompt, origin, comps[at[s]],
                                              scored[at[s]]) for s in sorted(paid)])
        fields = outcome_fields(self.task, self.grid.contexts[req.index].weights,
                                [s[0] for s in scored], [s[1] for s in scored], self.rng)
        samples = [Scored(c.text, a, sc, f, c.prompt_tokens, c.completion_tokens)
                   for c, (a, sc, f) in zip(comps, scored, strict=True)]
        response = Response(
            self.grid.keys[req.index], self.task.prompts[req.prompt].name, req.prompt, req.n,
            req.capped, samples, fields, stop_fields(drawn, req.n, len(comps), req.stopping),
            len(paid) if req.use_store else len(comps),
            len(comps) - len(paid) if req.use_store else 0, upstream,
            sum(len(s[2]) for s in scored), req.id, req.predicted)
        if self.log is not None:
            self._log(req, comps, scored, response)
        return response

    async def _score(self, record: Record, texts: list[tuple[str, str | None]]
                     ) -> list[tuple[str | None, list[float | None], list[str]]]:
        """Score (text, finish reason) pairs as training did."""
        def run() -> list[tuple[str | None, list[float | None], list[str]]]:
            return [self.runtime.score(record, t, reason) for t, reason in texts]

        if self._scoring is None:
            return run()
        async with self._scoring:  # scorers may be slow (reward models): off the loop
            return await asyncio.to_thread(run)

    def _stored(self, pool: str, sample: int, p: int, query_id: str, c: Completion,
                scored: tuple[str | None, list[float | None], list[str]]) -> StoredCompletion:
        answer, scores, failures = scored
        return StoredCompletion(
            pool=pool, sample=sample, arm=self.runtime.arms[p], query_id=query_id,
            text=c.text, answer=answer, scores=scores, failures=failures,
            prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
            latency=c.latency, seed=c.seed, finish_reason=c.finish_reason,
            retries=c.retries, errors=list(c.errors),
            endpoint=c.endpoint or self.task.model.base_url)

    def _log(self, req: Request, comps: list[Completion],
             scored: list[tuple[str | None, list[float | None], list[str]]],
             response: Response) -> None:
        """Log the request (:class:`iapo.live.store.ServedRequest`) and its completions in
        draw order, as a pool of its own named by the request's id: its samples are not
        i.i.d. draws of a training pool (the caller's history is part of the messages)."""
        assert self.log is not None
        answer = response.fields.get("answer")
        row = ServedRequest(
            id=req.id, created=time.time(), context=response.context, prompt=req.prompt,
            arm=self.runtime.arms[req.prompt], n=req.n, reason=req.reason, caller=req.caller,
            answer=None if answer is None else str(answer), chosen=response.chosen,
            prompt_tokens=response.prompt_tokens, completion_tokens=response.completion_tokens,
            paid=response.paid, latency=response.upstream_seconds)
        with store_errors(self.log.path):
            self.log.log_served(row, [self._stored(req.id, j, req.prompt, req.id, c, s)
                                      for j, (c, s) in enumerate(zip(comps, scored,
                                                                     strict=True))], req.query)


def new_request_id() -> str:
    """A response's id, in the OpenAI form; the log keys the request by it."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def client_for(task: Task, concurrency: int | None = None, timeout: float | None = None,
               retries: int | None = None) -> ChatClient:
    """A client of the task's model (its own settings unless given)."""
    m = task.model
    return ChatClient(m.base_url, m.name, m.api_key(),
                      concurrency if concurrency is not None else m.concurrency,
                      timeout if timeout is not None else m.timeout,
                      retries if retries is not None else m.max_retries,
                      supports_n=m.supports_n)


def load_served(policy_path: Path, task_path: Path | None = None,
                allow_change: bool = False) -> tuple[Policy, Task]:
    """A policy and the task it serves, checked against each other."""
    policy = Policy.load(policy_path)
    task = served_task(policy, task_path, policy_path, allow_change)
    check_policy_arms(policy, task, policy_path)
    return policy, task


def answer(policy_path: Path, context: str, query: str, task_path: Path | None = None,
           seed: int | None = None, store_path: Path | None = None,
           allow_change: bool = False) -> dict[str, Any]:
    """``iapo answer``: the policy's outcome for ``context`` on ``query``, as a dict. With
    ``store_path``, the query's stored samples are replayed and only missing ones are paid
    (and stored)."""
    policy, task = load_served(policy_path, task_path, allow_change)

    async def run(store: CompletionStore | None) -> Response:
        responder = Responder(task, replay=store, seed=seed)
        index = responder.grid.find(context)
        async with client_for(task) as client:
            return await responder.respond(client, policy, index, query, origin="answer")

    if store_path is None:
        response = asyncio.run(run(None))
    else:
        with store_errors(store_path), CompletionStore(store_path) as store:
            response = asyncio.run(run(store))
    return answer_dict(response, task)


def answer_dict(r: Response, task: Task) -> dict[str, Any]:
    """A response as ``iapo answer --json`` prints it."""
    return {"context": r.context, "prompt": r.prompt, "n": r.n,
            "samples": [{"text": s.text, "answer": s.answer, "failures": s.failures,
                         "prompt_tokens": s.prompt_tokens,
                         "completion_tokens": s.completion_tokens,
                         "scores": {o.name: v for o, v in zip(task.objectives, s.scores,
                                                              strict=True) if v is not None}}
                        for s in r.samples],
            "usage": {"completion_tokens": r.completion_tokens,
                      "prompt_tokens": r.prompt_tokens},
            "paid": r.paid, "replayed": r.replayed, **r.stop, **r.fields,
            "upstream_seconds": r.upstream_seconds, "predicted_seconds": r.predicted_seconds,
            "text": r.text}


def gateway_fields(r: Response, aggregator: str) -> dict[str, Any]:
    """A response as the gateway's ``iapo`` object reports it."""
    fields = {k: v for k, v in r.fields.items() if k != "choice"}
    meta: dict[str, Any] = {"context": r.context, "prompt": r.prompt,
                            "prompt_index": r.prompt_index, "n": r.n, "n_capped": r.n_capped,
                            **r.stop, **fields}
    if aggregator in ("mv", "mixed"):
        meta["answers"] = [s.answer for s in r.samples]
    if aggregator in ("bon", "mixed"):
        meta.update({"scores": [s.scores for s in r.samples],
                     "scorer_failures": r.scorer_failures})
    meta.update({"paid": r.paid, "replayed": r.replayed, "chosen": r.chosen,
                 "upstream_seconds": r.upstream_seconds,
                 "predicted_seconds": r.predicted_seconds,
                 "samples": [{"text": s.text, "prompt_tokens": s.prompt_tokens,
                              "completion_tokens": s.completion_tokens} for s in r.samples]})
    return meta

