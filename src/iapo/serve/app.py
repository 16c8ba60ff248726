"""`iapo serve`: an OpenAI-compatible gateway that applies a learned policy per request.

``POST /v1/chat/completions`` takes the caller's context from the body (``"iapo_context":
{"helpful": 0.3, "harmless": 0.7, "budget": "high"}``, reachable through the openai client's
``extra_body``) or from the ``X-IAPO-Context`` header (``helpful=0.3,harmless=0.7,budget=high``),
else the configured default. It looks up the policy's arm (prompt, N) for that context, applies
the prompt's template (and system message) to the user's last message, asks the upstream model
for N completions concurrently, aggregates them (majority voting by the extracted answers, ties
broken uniformly at random, "no answer" a vote like any other; Best-of-N by the scorers and the
context's weights, the first of equal values) and returns one
choice with the usage summed over the N completions. The extra field ``iapo`` documents what
was done: ``context``, ``prompt`` (and ``prompt_index``), ``n`` (and ``n_capped``),
``aggregator``, ``votes`` / ``answer`` / ``tied`` / ``answers`` (MV) or ``scores`` /
``values`` (BoN), aggregated exactly as training scored groups (:mod:`iapo.live.aggregate`),
``chosen`` (the index of the returned sample), ``samples`` (every completion's text and
tokens), ``upstream_seconds`` and ``gateway_seconds``.

``GET /v1/models`` lists the gateway's model; ``GET /health`` reports the policy in force. With
``replay_store``, a request without history takes samples 0..N-1 of its pool (the completion
store's key: model, messages, decoding): stored samples, training's among them, are replayed
and only missing ones are paid and stored. The
policy file is reloaded when it changes on disk (checked at most once a second); a reload that
fails keeps the old policy and is reported by /health. Limits: N is capped at ``max_n`` per
request, every upstream call has a timeout, at most ``max_concurrency`` upstream calls run at
once. Unknown context keys, weights off the grid and malformed bodies get a 400 with the reason;
an upstream failure gets a 502 with the reason, within the upstream deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iapo.learners.base import Choice
from iapo.live.client import ChatClient, Completion, LLMError
from iapo.live.optimize import check_servable, outcome_fields, parse_context
from iapo.live.oracle import TaskRuntime, sample_seed
from iapo.live.store import CompletionStore, StoredCompletion, pool_key
from iapo.live.task import Record, Task
from iapo.policy import Policy, PolicyError
from iapo.problem import ProblemError


@dataclass(frozen=True)
class ServeConfig:
    max_n: int = 32
    upstream_timeout: float = 60.0
    upstream_retries: int = 2
    max_concurrency: int = 16
    default_context: str | None = None
    model_name: str | None = None
    log_store: Path | None = None
    replay_store: Path | None = None
    seed: int | None = None


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": status}}, status_code=status)


class PolicyHolder:
    """The policy in force, reloaded when its file changes."""

    def __init__(self, path: Path, task: Task) -> None:
        self.path = path
        self.task = task
        self.grid = task.problem().grid
        self.policy = self._load()
        self.mtime = path.stat().st_mtime_ns
        self.loaded_at = time.time()
        self.reload_error: str | None = None
        self._checked = time.monotonic()

    def _load(self) -> Policy:
        policy = Policy.load(self.path)
        if policy.env != self.task.name:
            raise PolicyError(f"the policy was learned for task '{policy.env}', not "
                              f"'{self.task.name}'")
        if policy.contexts != self.grid.keys:
            raise PolicyError(f"the policy's contexts {policy.contexts} do not match the task's "
                              f"{self.grid.keys}")
        for ch in policy.choices:
            if not 0 <= ch.prompt < len(self.task.prompts):
                raise PolicyError(f"the policy names prompt {ch.prompt}; the task has "
                                  f"{len(self.task.prompts)}")
        return policy

    def current(self) -> Policy:
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            self.check()
        return self.policy

    def check(self) -> None:
        """Reload now if the file changed."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError as e:
            self.reload_error = f"policy file unreadable: {e}"
            return
        if mtime == self.mtime:
            return
        try:
            self.policy = self._load()
            self.loaded_at = time.time()
            self.reload_error = None
        except (PolicyError, OSError) as e:
            self.reload_error = f"reload failed, keeping the previous policy: {e}"
        self.mtime = mtime


def _context_spec(body: dict[str, Any], request: Request, default: str | None) -> dict[str, Any]:
    if "iapo_context" in body:
        ctx = body["iapo_context"]
        if isinstance(ctx, str):
            return parse_context(ctx)
        if not isinstance(ctx, dict):
            raise BadRequest("iapo_context must be an object such as {\"budget\": \"high\"}",
                             "iapo_context")
        return ctx
    header = request.headers.get("x-iapo-context")
    if header:
        return parse_context(header)
    if default:
        return parse_context(default)
    raise BadRequest("no context: give \"iapo_context\" in the body or an X-IAPO-Context "
                     "header (the gateway has no default context)", "iapo_context")


def _last_user_message(body: dict[str, Any]) -> tuple[list[dict[str, str]], str]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                m.get("content"), str):
            raise BadRequest("every message needs a string role and string content", "messages")
    last = messages[-1]
    if last["role"] != "user":
        raise BadRequest("the last message must come from the user", "messages")
    return messages[:-1], last["content"]


def create_app(policy_path: str | os.PathLike[str], task: Task,
               config: ServeConfig | None = None) -> Starlette:
    cfg = config or ServeConfig()
    holder = PolicyHolder(Path(policy_path), task)
    runtime = TaskRuntime(task, [])
    check_servable(runtime)
    model_id = cfg.model_name or f"iapo-{task.name}"
    rng = random.Random(cfg.seed)
    state: dict[str, Any] = {"client": None, "served": 0, "errors": 0}
    store = CompletionStore(cfg.log_store) if cfg.log_store else None
    replay = CompletionStore(cfg.replay_store) if cfg.replay_store else None
    if store is not None:
        runtime.register(store)

    async def startup() -> None:
        m = task.model
        client = ChatClient(m.base_url, m.name, m.api_key(), cfg.max_concurrency,
                            cfg.upstream_timeout, cfg.upstream_retries,
                            supports_n=m.supports_n)
        await client.__aenter__()
        state["client"] = client

    async def shutdown() -> None:
        if state["client"] is not None:
            await state["client"].__aexit__()
        if store is not None:
            store.close()
        if replay is not None:
            replay.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await startup()
        try:
            yield
        finally:
            await shutdown()

    async def chat(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadRequest(f"the body is not valid JSON ({e})") from e
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            if body.get("stream"):
                raise BadRequest("stream=true is not supported by the gateway", "stream")
            history, user_text = _last_user_message(body)
            spec = _context_spec(body, request, cfg.default_context)
            policy = holder.current()
            try:
                index = holder.grid.index(spec)
            except (ProblemError, ValueError) as e:
                raise BadRequest(str(e), "iapo_context") from e
        except BadRequest as e:
            state["errors"] += 1
            return _error(400, str(e), "invalid_request_error", e.param)
        choice: Choice = policy.choices[index]
        n = choice.n if choice.n is not None else rng.randint(1, task.n_max)
        capped = n > cfg.max_n
        n = min(n, cfg.max_n)
        prompt = task.prompts[choice.prompt]
        messages = prompt.render(user_text)
        if history:
            own_system = [m for m in messages if m["role"] == "system"]
            rest = [m for m in messages if m["role"] != "system"]
            messages = own_system + history + rest
        u0 = time.perf_counter()
        try:
            if replay is not None and not history:
                comps, paid = await _replayed(replay, state["client"], choice.prompt, messages,
                                              n, cfg)
            else:
                seeds = [rng.randrange(2**31) for _ in range(n)]
                comps = await asyncio.wait_for(
                    state["client"].sample(messages, prompt.decoding, seeds),
                    timeout=cfg.upstream_timeout * (cfg.upstream_retries + 1) + 5.0)
                paid = len(comps)
        except (LLMError, TimeoutError) as e:
            state["errors"] += 1
            reason = str(e) or "upstream deadline passed"
            return _error(502, f"upstream model failed: {reason}", "upstream_error")
        upstream = time.perf_counter() - u0
        record = Record("request", user_text, None)
        scored = [runtime.score(record, c.text) for c in comps]
        meta: dict[str, Any] = {
            "context": holder.grid.keys[index], "prompt": prompt.name,
            "prompt_index": choice.prompt, "n": n, "n_capped": capped,
        }
        fields = outcome_fields(task, holder.grid.contexts[index].weights,
                                [s[0] for s in scored], [s[1] for s in scored], rng)
        pick = fields.pop("choice")
        meta.update(fields)
        if task.aggregator in ("mv", "mixed"):
            meta["answers"] = [s[0] for s in scored]
        if task.aggregator in ("bon", "mixed"):
            meta.update({"scores": [s[1] for s in scored],
                         "scorer_failures": sum(len(s[2]) for s in scored)})
        meta.update({"paid": paid, "replayed": n - paid})
        meta.update({"chosen": pick, "upstream_seconds": upstream, "samples": [
            {"text": c.text, "prompt_tokens": c.prompt_tokens,
             "completion_tokens": c.completion_tokens}
            for c in comps]})
        if store is not None:
            rid = f"serve-{uuid.uuid4().hex}"
            store.add_queries([(rid, user_text, None)])
            for j, (c, s) in enumerate(zip(comps, scored, strict=True)):
                # every served request is a pool of its own: its samples are not i.i.d. draws
                # of a training pool (the caller's history is part of the messages)
                store.put(StoredCompletion(rid, j, runtime.arms[choice.prompt], rid, c.text,
                                           s[0], s[1], s[2], c.prompt_tokens,
                                           c.completion_tokens, c.latency, c.seed, None,
                                           c.finish_reason, c.retries, list(c.errors),
                                           task.model.base_url))
        prompt_tokens = sum(c.prompt_tokens for c in comps)
        completion_tokens = sum(c.completion_tokens for c in comps)
        state["served"] += 1
        meta["gateway_seconds"] = time.perf_counter() - t0
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": comps[pick].text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "iapo": meta,
        })

    async def _replayed(cache: CompletionStore, client: ChatClient, p: int,
                        messages: list[dict[str, str]], n: int, cfg: ServeConfig
                        ) -> tuple[list[Completion], int]:
        """Samples 0..n-1 of the request's pool: stored ones replayed, missing ones paid and
        stored (the pool key of training, so training's samples serve identical requests)."""
        prompt = task.prompts[p]
        pool = pool_key(task.model.name, messages, prompt.decoding)
        stored = cache.get(pool, list(range(n)))
        missing = [s for s in range(n) if s not in stored]
        fresh: list[Completion] = []
        if missing:
            fresh = await asyncio.wait_for(
                client.sample(messages, prompt.decoding, [sample_seed(pool, s) for s in missing]),
                timeout=cfg.upstream_timeout * (cfg.upstream_retries + 1) + 5.0)
            for s, c in zip(missing, fresh, strict=False):
                answer, scores, failures = runtime.score(Record("request", "", None), c.text)
                cache.put(StoredCompletion(pool, s, runtime.arms[p], "serve", c.text, answer,
                                           scores, failures, c.prompt_tokens,
                                           c.completion_tokens, c.latency, c.seed, None,
                                           c.finish_reason, c.retries, list(c.errors),
                                           task.model.base_url))
        by_sample = {s: Completion(c.text, c.prompt_tokens, c.completion_tokens, c.latency,
                                   c.seed) for s, c in stored.items()}
        by_sample.update(zip(missing, fresh, strict=False))
        return [by_sample[s] for s in range(n)], len(fresh)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": int(holder.loaded_at),
             "owned_by": "iapo"}]})

    async def health(request: Request) -> JSONResponse:
        holder.check()
        p = holder.policy
        return JSONResponse({
            "status": "ok" if holder.reload_error is None else "degraded",
            "policy": str(holder.path), "learner": p.learner, "task": task.name,
            "loaded_at": holder.loaded_at, "reload_error": holder.reload_error,
            "contexts": {k: {"prompt": task.prompts[c.prompt].name, "n": c.n}
                         for k, c in zip(p.contexts, p.choices, strict=True)},
            "served": state["served"], "errors": state["errors"],
            "default_context": cfg.default_context,
        })

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return _error(404, f"no route {request.method} {request.url.path}", "not_found")

    async def bad_method(request: Request, exc: Exception) -> JSONResponse:
        return _error(405, f"{request.method} is not allowed on {request.url.path}",
                      "invalid_request_error")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: bad_method},
    )
