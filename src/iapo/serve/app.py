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
tokens), ``upstream_seconds``, ``predicted_seconds`` (the policy's expected latency of the
arm, where it has one: :mod:`iapo.latency`) and ``gateway_seconds``, and how the arm stopped:
``stopping``
(the policy's rule), ``completions_used``, ``completions_saved``, ``waves`` and ``cancelled``.
A majority-voting arm of a policy trained with ``stop = "decided"`` asks for its completions in
waves, one request each, and stops once the vote is decided, cancelling requests still in
flight (:mod:`iapo.live.waves`): the same answer as all N, fewer completions.

One name: the gateway serves one model, whose id is the task's ``name`` (the name its policies
record, ``iapo export-env`` stores and ``evaluate`` and ``bench`` print). ``GET /v1/models``
lists it and every response's ``model`` field is it; a request's ``model`` is not checked (the
gateway has no other model to route to: any name, or none, gets this one).
``GET /health`` reports the policy in force and, to key holders, per context the latency
measured against the predicted one and the limit (:class:`iapo.serve.core.LatencyWatch`). With
``replay_store``, a request without history takes samples 0..N-1 of its pool (the completion
store's key: model, messages, decoding): stored samples, training's among them, are replayed
and only missing ones are paid and stored. The
policy file is reloaded when it changes on disk (checked at most once a second); a reload that
fails keeps the old policy and is reported by /health. Limits: N is capped at ``max_n`` per
request, every upstream call has a timeout, at most ``max_concurrency`` upstream calls run at
once. Unknown context keys, weights off the grid and malformed bodies get a 400 with the reason;
an upstream failure gets a 502 with the reason, within the request's deadline.

Who may call (:mod:`iapo.serve.keys`): with keys, every route but an anonymous ``/health``
needs ``Authorization: Bearer <key>`` (401 otherwise); a key limited to some contexts gets 403
for the others, and 429 with Retry-After past its limits. Without keys the gateway serves
loopback only (the command refuses another host). Error bodies and anonymous ``/health`` name
neither the upstream URL nor file paths. Bodies over ``max_body`` bytes get 413. Scorers run
in worker threads (at most ``scoring_threads`` at once), never on the event loop (only the
built-in answer extractors, regular expressions, run inline); one deadline
covers a request's sampling and scoring (504 past it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from iapo.continual import check_moves
from iapo.errors import InputError, RunError
from iapo.live.client import ChatClient, LLMError
from iapo.live.feedback import FeedbackError
from iapo.live.feedback import parse as parse_feedback
from iapo.live.store import SERVED_RUN, CompletionStore, Feedback, FolderBusy, store_errors
from iapo.live.task import Task
from iapo.policy import Policy, PolicyError
from iapo.problem import ProblemError
from iapo.serve.core import (
    LatencyWatch,
    Responder,
    check_policy_arms,
    gateway_fields,
    new_request_id,
)
from iapo.serve.core import Response as CoreResponse
from iapo.serve.guard import RequestGuard, error_body, is_json
from iapo.serve.keys import ApiKey, KeyRing, Limits
from iapo.serve.learning import LearningPulls
from iapo.serve.redis_limits import RedisLimits, open_limits
from iapo.settings import ContinualSettings, ServeConfig, continual_default


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        self.kind = kind
        self.headers = headers


def _error(status: int, message: str, kind: str, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, kind, param), status_code=status,
                        headers=headers)


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
        """Read and validate the policy fully (format, types, N >= 1, prompts in range, the
        task's contexts and name)."""
        policy = Policy.load(self.path)
        check_policy_arms(policy, self.task, self.path.name)
        first = getattr(self, "policy", None)  # a reload: the task version must not change
        if first is not None and first.serving is not None and policy.serving is not None \
                and policy.serving["digest"] != first.serving["digest"]:
            raise PolicyError(f"{self.path.name} was trained for another version of task "
                              f"'{self.task.name}' (prompts, model, scorers or contexts "
                              "differ); restart the gateway to serve it")
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
        except (PolicyError, OSError, ValueError) as e:
            self.reload_error = f"reload failed, keeping the previous policy: {e}"
        self.mtime = mtime


def _context_spec(body: dict[str, Any], request: Request, default: str | None) -> object:
    """What the caller named: the body's ``iapo_context``, else the header, else the key's or
    the gateway's default (parsed by ``ContextGrid.find``)."""
    if "iapo_context" in body:
        return body["iapo_context"]
    header = request.headers.get("x-iapo-context")
    if header:
        return header
    if default:
        return default
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


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """(``stream``, ``stream_options.include_usage``), checked."""
    streaming = body.get("stream", False)
    if not isinstance(streaming, bool) and streaming is not None:
        raise BadRequest("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is None:
        return bool(streaming), False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False),
                                                       bool):
        raise BadRequest("stream_options must be an object such as {\"include_usage\": true}",
                         "stream_options")
    if not streaming:
        raise BadRequest("stream_options is only allowed with stream: true", "stream_options")
    return True, bool(options.get("include_usage", False))


def _error_event(status: int, message: str, kind: str) -> bytes:
    """The event that ends a stream that failed after it began."""
    return b"data: " + json.dumps(error_body(status, message, kind)).encode() + b"\n\n"


def _failure(e: LLMError | TimeoutError, deadline: float, base_url: str
             ) -> tuple[int, str, str]:
    """(status, message, kind) of a request the upstream failed or the deadline cut."""
    if isinstance(e, LLMError):
        return 502, f"upstream model failed: {_upstream_reason(e, base_url)}", "upstream_error"
    return 504, (f"the request's deadline of {deadline:g} s passed (sampling and scoring)"), \
        "timeout_error"


def _upstream_reason(e: BaseException, base_url: str) -> str:
    """An upstream failure's kind (HTTP status, deadline, connection, malformed answer),
    never its address or its error body (which may hold a key prefix or a host name)."""
    text = str(e)
    status = re.search(r"HTTP (\d{3})", text)
    if status:
        return f"the upstream answered HTTP {status.group(1)}"
    for words, kind in (("deadline", "no complete answer within the deadline"),
                        ("connection failed", "connection to the upstream failed"),
                        ("malformed", "the upstream's answer was malformed")):
        if words in text:
            return kind
    return "the upstream failed"


async def _read_body(request: Request, limit: int, seconds: float) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (before reading it all) and
    with 408 when it has not all arrived within ``seconds``: a client that declares a body
    and trickles it, or stops, holds no connection longer."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the body has {int(declared):,} bytes; the limit is {limit:,}", None,
                         413, "request_too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"the body exceeds the limit of {limit:,} bytes", None,
                                     413, "request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {seconds:g} s", None, 408,
                         "timeout_error", {"Connection": "close"}) from None
    return b"".join(chunks)


# a JSON escape of a UTF-16 surrogate, \uD800 to \uDFFF: the only way a body's string can hold
# one (so only such a body needs the check that every string encodes)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object whose every string can be sent on as UTF-8; a BadRequest
    (400) otherwise, whatever the bytes."""
    try:
        body = json.loads(raw)
    except RecursionError as e:
        raise BadRequest("the body is nested too deeply") from e
    except ValueError as e:  # bad JSON or UTF-8, or an integer of more than 4,300 digits
        raise BadRequest(f"the body is not valid JSON ({e})") from e
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if not _SURROGATE_ESCAPE.search(raw):  # UTF-8 itself cannot carry a lone surrogate
        return body
    try:  # a lone surrogate ("\ud800") parses, but can be neither forwarded nor echoed
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest("the body holds a string that is not valid Unicode (a lone "
                         "surrogate escape such as \\ud800); send valid UTF-8 text") from e
    except RecursionError as e:
        raise BadRequest("the body is nested too deeply") from e
    return body


def create_app(task: Task, cfg: ServeConfig, keys: Sequence[ApiKey] = ()) -> Starlette:
    """The gateway's ASGI app for the policy ``cfg.policy`` over ``task``, callers with
    ``keys``; a bad policy or task raises here, before serving."""
    holder = PolicyHolder(Path(cfg.policy), task)
    model_id = cfg.model_name or task.name  # one name: the task's (see the module docstring)
    keyring = KeyRing(list(keys))
    for k in keys:  # a key's contexts and default must be contexts of the grid
        for ctx in [*(k.contexts or ()), *([k.default_context] if k.default_context else [])]:
            try:
                holder.grid.find(ctx)
            except ProblemError as e:
                raise PolicyError(f"key '{k.name}': context {ctx!r}: {e}") from e
    allowed = {k.name: None if k.contexts is None else {holder.grid.find(c) for c in k.contexts}
               for k in keys}
    state: dict[str, Any] = {"client": None, "served": 0, "errors": 0}
    store = _open_store(cfg.log_store)
    replay = _open_store(cfg.replay_store)
    shared = cfg.shared_limits()
    # the serving core: scorers in worker threads, never on the event loop (but for the
    # built-in answer extractors, regular expressions, which run inline)
    responder = Responder(task, replay=replay, log=store, seed=cfg.seed, max_n=cfg.max_n,
                          score_in_thread=True, scoring=cfg.scoring_threads)
    watch = LatencyWatch()  # the latency served against the policy's prediction
    learning = None
    if cfg.learn_per_day is not None and cfg.learn_budget <= 0:
        raise PolicyError(f"--learn-per-day {cfg.learn_per_day} caps the learning pulls that "
                          "--learn-budget F allows, and none is allowed without it: give "
                          "--learn-budget F (a fraction of the completions served)")
    if cfg.learn_per_day and cfg.learn_per_day < cfg.workers:
        raise PolicyError(f"--learn-per-day {cfg.learn_per_day} is shared out among the "
                          f"{cfg.workers} workers, which leaves each none: give at least "
                          f"{cfg.workers}, or fewer --workers")
    if cfg.learn_budget > 0:
        if store is None:
            raise PolicyError("--learn-budget needs --log-store: learning completions are "
                              "logged there, for iapo refine")
        learning = LearningPulls(task, cfg.learn_budget, None if cfg.learn_per_day is None
                                 else cfg.learn_per_day // max(cfg.workers, 1),
                                 run=Path(cfg.policy).parent, save=cfg.retrain > 0)
        learning.plan(holder.current(), 0)  # a policy that cannot learn fails here
    background: set[asyncio.Task[None]] = set()  # learning and refines in flight
    if cfg.refine_every is not None and store is None:
        raise PolicyError("--refine-every needs --log-store: refine learns from the log")
    refine_settings = ContinualSettings(moves=cfg.moves)  # an unknown rule: refused
    if cfg.refine_every is not None:
        refine_settings = dataclasses.replace(refine_settings, refine_every=cfg.refine_every)
        check_moves(task.problem(), refine_settings)  # a task that does not vote: refused
    elif cfg.moves != continual_default("moves"):
        raise PolicyError(f"--moves {cfg.moves} says how the background refine moves: add "
                          "--refine-every N (and --log-store)")
    if cfg.retrain:
        if cfg.refine_every is None or cfg.retrain % cfg.refine_every:
            raise PolicyError(f"--retrain {cfg.retrain}: the background refine retrains, so "
                              "add --refine-every N with N dividing it (and --log-store)")
        if cfg.learn_budget <= 0:
            raise PolicyError(f"--retrain {cfg.retrain} spends the learning budget it saves: "
                              "give --learn-budget F (a fraction of the completions served)")
        if cfg.learn_per_day is not None:
            raise PolicyError(f"--retrain {cfg.retrain} spends what --learn-budget saved, "
                              "all at once: drop --learn-per-day")
        holder.current().check_fixed_n("--retrain needs", PolicyError)
        refine_settings = dataclasses.replace(refine_settings, retrain=cfg.retrain)
    if store is not None:  # the run whose policy the log's requests are served by, once
        store.set_meta(SERVED_RUN, str(Path(cfg.policy).resolve().parent))  # it may start
    refining: dict[str, Any] = {"running": False, "last": None, "last_retraining": None,
                                "error": None, "flags": [], "skipped": 0}
    private_limits: tempfile.TemporaryDirectory[str] | None = None
    limits: Limits | RedisLimits | None = None
    if shared is not None:  # several workers or machines: usage and counts, shared
        limits = open_limits(shared)
    elif keyring:  # one process: a private counter file
        private_limits = tempfile.TemporaryDirectory(prefix="iapo-limits-")
        limits = Limits(Path(private_limits.name) / "limits.sqlite")

    def count(kind: str) -> None:
        """One more request served (or answered with an error), counted for the gateway."""
        state[kind] += 1
        if shared is not None and limits is not None:
            limits.count_gateway(kind)

    def counted(kind: str) -> int:
        """The gateway's count: every worker's when several share ``limits_db``."""
        if shared is not None and limits is not None:
            return limits.gateway_total(kind)
        return int(state[kind])

    def failed(admitted: tuple[ApiKey, int, float] | None) -> None:
        """A request the upstream failed (502) or the deadline cut (504): an error, and its
        completions are not charged to the key's daily limit (the caller got nothing)."""
        count("errors")
        if admitted is not None and limits is not None:
            limits.refund(*admitted)

    base_url = task.model.base_url

    def learning_job(r: CoreResponse, query: str
                     ) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """The learning pulls due after response ``r`` (planned and charged now, by the
        policy in force now: a request that began before a reload does not bring back the
        old policy's learner), as a job to run once the response is sent; None when none is
        due."""
        if learning is None:
            return None
        pulls = learning.plan(holder.policy, len(r.samples))
        if not pulls:
            return None

        async def draw() -> None:
            for pull in pulls:
                try:
                    await responder.learn(state["client"], pull.prompt, pull.n,
                                          holder.grid.find(r.context), query)
                except (LLMError, TimeoutError, RunError):
                    learning.failed += 1  # type: ignore[union-attr]

        return draw

    def refine_due() -> None:
        """Every ``refine_every`` requests this worker served, ``iapo refine`` on the log, in
        a thread (one at a time); the policy it writes comes back through the reload."""
        every = cfg.refine_every
        if every is None or refining["running"] or state["served"] % every:
            return
        from iapo.live.refine import PolicyNotReplaced, refine

        refining["running"] = True

        async def run() -> None:
            try:
                error = None
                try:
                    # with --retrain, refine itself decides (in the log's ledger) whether a
                    # retraining is due and what the gateway saved for it
                    report = await asyncio.to_thread(
                        refine, Path(cfg.policy).parent, Path(str(cfg.log_store)),
                        refine_settings, saved=cfg.learn_budget if cfg.retrain else None)
                except PolicyNotReplaced as e:  # it ran, and says so: "changed" is false
                    report, error = e.report, str(e)
                now = time.time()
                refining.update(last={"at": now, "changed": report["changed"],
                                      "requests": report["log"]["policy"],
                                      "retrained": report["spent"],
                                      "retraining_waits": report.get("retraining_waits")},
                                flags=report["flags"], error=error)
                spent = report["spent"]
                if spent and spent.get("retrain"):  # kept until the next one
                    refining["last_retraining"] = {"at": now, **spent}
                    if learning is not None:  # this worker's retraining drew it
                        learning.drawn += int(spent["paid"])
                holder.check()
            except FolderBusy:  # another worker's refine holds the run: it does this one's
                refining["skipped"] += 1
            except (InputError, RunError, OSError) as e:
                refining["error"] = str(e)
            finally:
                refining["running"] = False

        in_background(run())

    def in_background(work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the event loop without awaiting it, kept alive until it ends."""
        job = asyncio.get_running_loop().create_task(work)
        background.add(job)
        job.add_done_callback(background.discard)

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
        for s in (store, replay, limits):
            if s is not None:
                s.close()
        if private_limits is not None:
            private_limits.cleanup()

    async def flush_counts() -> None:
        """Write the counts of this worker at least once a second, so that /health in any
        worker shows the gateway's."""
        while limits is not None:
            await asyncio.sleep(1.0)
            limits.flush()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await startup()
        flusher = asyncio.create_task(flush_counts()) if shared is not None else None
        try:
            yield
        finally:
            if flusher is not None:
                flusher.cancel()
            await shutdown()

    def caller(request: Request) -> ApiKey | None:
        """The caller's key; BadRequest(401) when keys are required and none matches."""
        if not keyring:
            return None
        key = keyring.find(request.headers.get("authorization"))
        if key is None:
            given = "authorization" in request.headers
            raise BadRequest("the API key is wrong" if given else
                             "no API key: send Authorization: Bearer <key>", None, 401,
                             "authentication_error", {"WWW-Authenticate": "Bearer"})
        return key

    async def json_body(request: Request) -> dict[str, Any]:
        """The request's body as a JSON object, within ``--max-body`` and ``--body-timeout``;
        a BadRequest (415, 413, 408, 400) otherwise."""
        if not is_json(request.headers.get("content-type")):
            raise BadRequest("the body must be JSON, sent with Content-Type: "
                             "application/json", None, 415, "unsupported_media_type")
        return _parse_body(await _read_body(request, cfg.max_body, cfg.body_timeout))

    def admit(key: ApiKey, n: int) -> tuple[ApiKey, int, float] | None:
        """Count a request of ``n`` completions against ``key``'s limits: what to refund on a
        failure (None without limits), or a BadRequest (429, with Retry-After)."""
        if limits is None:
            return None
        now = time.time()
        ok, wait, which = limits.admit(key, n, now)
        if not ok:
            raise BadRequest(f"key '{key.name}' is over its {which} limit; retry in "
                             f"{wait:.0f} s", None, 429, "rate_limit_error",
                             {"Retry-After": str(max(1, math.ceil(wait)))})
        return key, n, now

    async def chat(request: Request) -> Response:
        t0 = time.perf_counter()
        admitted: tuple[ApiKey, int, float] | None = None  # what to refund on a failure
        try:
            key = caller(request)
            body = await json_body(request)
            streaming, include_usage = _stream_options(body)
            history, user_text = _last_user_message(body)
            default = key.default_context if key and key.default_context else \
                cfg.default_context
            spec = _context_spec(body, request, default)
            policy = holder.current()
            try:
                index = holder.grid.find(spec)
            except ProblemError as e:
                raise BadRequest(str(e), "iapo_context") from e
            if key is not None and allowed[key.name] is not None and \
                    index not in allowed[key.name]:  # type: ignore[operator]
                raise BadRequest(f"key '{key.name}' may not use context "
                                 f"'{holder.grid.keys[index]}'", "iapo_context", 403,
                                 "permission_error")
            n, capped = responder.size(policy, index)
            if key is not None and key.completions_per_day is not None and \
                    n > key.completions_per_day:
                raise BadRequest(f"context '{holder.grid.keys[index]}' asks for {n} "
                                 f"completions; key '{key.name}' may use "
                                 f"{key.completions_per_day} a day", "iapo_context", 403,
                                 "permission_error")
            if key is not None:
                admitted = admit(key, n)
        except BadRequest as e:
            count("errors")
            return _error(e.status, str(e), e.kind, e.param, e.headers)
        except ClientDisconnect:  # the caller left while sending its body: nobody to answer
            count("errors")
            return Response(status_code=400)
        rid, name = new_request_id(), None if key is None else key.name
        if streaming:
            return StreamingResponse(
                stream(policy, index, user_text, history, (n, capped), admitted, include_usage,
                       t0, rid, name), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            async with asyncio.timeout(cfg.request_deadline()):  # sampling and scoring
                r = await responder.respond(state["client"], policy, index, user_text,
                                            history, size=(n, capped), request_id=rid,
                                            caller=name)
        except (LLMError, TimeoutError) as e:
            failed(admitted)
            return _error(*_failure(e, cfg.request_deadline(), base_url))
        count("served")
        watch.add(r)
        refine_due()
        # a learning pull re-asks the query alone, which a history would change
        job = None if history else learning_job(r, user_text)
        meta = gateway_fields(r, task.aggregator)
        meta["gateway_seconds"] = time.perf_counter() - t0
        return JSONResponse({
            "id": r.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": r.text}}],
            "usage": r.usage(),
            "iapo": meta,
        }, background=None if job is None else BackgroundTask(job))

    async def stream(policy: Policy, index: int, user_text: str,
                     history: list[dict[str, str]], size: tuple[int, bool],
                     admitted: tuple[ApiKey, int, float] | None, include_usage: bool,
                     t0: float, rid: str, name: str | None) -> AsyncIterator[bytes]:
        """Server-sent events in the OpenAI ``chat.completion.chunk`` format: the role, the
        text as it comes (an arm of N = 1: the upstream's tokens; any other: the chosen
        completion once its group is decided), a last chunk with ``finish_reason`` and the
        ``iapo`` fields, the usage when asked for, then ``[DONE]``. A failure after the
        stream began ends it with an error event."""
        cid, created = rid, int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model_id, "choices": choices, **extra}).encode() + b"\n\n"

        def delta(content: dict[str, str], finish: str | None = None,
                  **extra: Any) -> bytes:
            return event([{"index": 0, "delta": content, "finish_reason": finish}], **extra)

        yield delta({"role": "assistant", "content": ""})
        response: CoreResponse | None = None
        try:
            async with asyncio.timeout(cfg.request_deadline()):  # sampling and scoring
                async for part in responder.stream(state["client"], policy, index, user_text,
                                                   history, size=size, request_id=rid,
                                                   caller=name):
                    if isinstance(part, str):
                        if part:
                            yield delta({"content": part})
                    else:
                        response = part
        except (LLMError, TimeoutError) as e:
            failed(admitted)
            yield _error_event(*_failure(e, cfg.request_deadline(), base_url))
            return
        assert response is not None
        count("served")
        watch.add(response)
        refine_due()
        meta = gateway_fields(response, task.aggregator)
        meta["gateway_seconds"] = time.perf_counter() - t0
        yield delta({}, "stop", iapo=meta)
        if include_usage:
            yield event([], usage=response.usage())
        yield b"data: [DONE]\n\n"
        job = None if history else learning_job(response, user_text)
        if job is not None:  # the stream is sent: learn without holding its connection
            in_background(job())

    async def models(request: Request) -> JSONResponse:
        try:
            caller(request)
        except BadRequest as e:
            return _error(e.status, str(e), e.kind, e.param, e.headers)
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": int(holder.loaded_at),
             "owned_by": "iapo"}]})

    async def feedback(request: Request) -> Response:
        """``POST /v1/feedback``: a gold answer or an objective's score for a logged request
        (:mod:`iapo.live.feedback`). The same auth and rate limit as chat; a key may rate
        only its own requests."""
        try:
            key = caller(request)
            body = await json_body(request)
            if store is None:
                raise BadRequest("feedback needs the gateway's log: start iapo serve with "
                                 "--log-store FILE", None, 404, "not_found")
            try:
                rid, kind, objective, value = parse_feedback(body, task)
            except FeedbackError as e:
                raise BadRequest(str(e), e.param) from e
            served = store.served_request(rid)
            if served is None:
                raise BadRequest(f"no logged request has id {rid!r}", "id", 404, "not_found")
            if key is not None and served.caller != key.name:
                raise BadRequest(f"key '{key.name}' may rate only its own requests", "id",
                                 403, "permission_error")
            if key is not None:
                admit(key, 0)  # a request of no completions, against requests_per_minute
        except BadRequest as e:
            return _error(e.status, str(e), e.kind, e.param, e.headers)
        except ClientDisconnect:
            return Response(status_code=400)
        row = Feedback(rid, time.time(), None if key is None else key.name, kind, objective,
                       value, "api")
        store.add_feedback([row])
        return JSONResponse({"object": "feedback", "request": rid, "kind": kind,
                             "objective": objective, "value": value})

    async def health(request: Request) -> JSONResponse:
        holder.check()
        status = "ok" if holder.reload_error is None else "degraded"
        try:
            key = caller(request)
        except BadRequest:  # anonymous: the status only, nothing about the setup
            return JSONResponse({"status": status})
        mine = [k for k in keys if key is None or k.name == key.name]
        p = holder.policy
        return JSONResponse({
            "status": status,
            "policy": str(holder.path), "learner": p.learner, "task": task.name,
            "loaded_at": holder.loaded_at, "reload_error": holder.reload_error,
            "contexts": {k: {"prompt": task.prompts[c.prompt].name, "n": c.n}
                         for k, c in zip(p.contexts, p.choices, strict=True)},
            # with several workers, the counts of all of them (written once a second)
            "served": counted("served"), "errors": counted("errors"),
            "workers_counted": "all" if shared is not None else "this process",
            "default_context": cfg.default_context,
            # a caller sees its own key only
            "keys": {k.name: {"contexts": list(k.contexts) if k.contexts else "all",
                              "requests_per_minute": k.requests_per_minute,
                              "completions_per_day": k.completions_per_day}
                     for k in mine},
            "usage": {name: u for name, u in (limits.usage() if limits else {}).items()
                      if name in {k.name for k in mine}},
            "learning": None if learning is None else learning.health(),
            # the last background refine of this worker, and the drift flags it raised
            "refine": None if cfg.refine_every is None else {
                "every": cfg.refine_every, "moves": cfg.moves, "retrain": cfg.retrain,
                "running": refining["running"], "skipped_busy": refining["skipped"],
                "last": refining["last"], "last_retraining": refining["last_retraining"],
                "error": refining["error"]},
            "drift": refining["flags"],
            # this worker's: per context, measured against predicted latency and the limit
            "latency": watch.health(*({k: getattr(c, name) for k, c in
                                       zip(responder.grid.keys, responder.grid.contexts,
                                           strict=True)}
                                      for name in ("latency_limit", "latency_p95"))),
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
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: bad_method},
        # without keys, only loopback Host names; with or without, only the named origins
        middleware=[Middleware(RequestGuard, allowed_hosts=None if keyring else [cfg.host],
                               cors_origins=cfg.cors_origins)],
    )


def _open_store(path: str | None) -> CompletionStore | None:
    """The completion store at ``path`` (None: none), or one line saying why it cannot be."""
    if path is None:
        return None
    with store_errors(Path(path)):
        return CompletionStore(path)
