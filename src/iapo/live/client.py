"""An async client for OpenAI-compatible chat-completion endpoints.

- At most ``concurrency`` requests in flight.
- Retries with exponential backoff and full jitter on 429, 5xx, timeouts, connection errors
  and malformed bodies (honouring ``Retry-After``); other 4xx fail at once with the server's
  message; a persistent failure ends with :class:`LLMError` naming the last cause.
- ``n`` is sent where the server honours it. A server that answers ``n`` > 1 with a single
  choice (llama.cpp ignores ``n``) is asked one sample per request from then on; one that
  returns some but fewer choices keeps ``n`` and is asked for the rest.
- ``timeout`` is a deadline: it bounds a whole attempt (connect, send, every byte of the
  answer), whatever the server does; a server that trickles bytes is cut off at it.
- Independent samples: every sample carries its own seed (derived from its request key and
  sample index), never one fixed seed across the N samples; the same key and index ask for the
  same seed again, so a replayed request is reproducible where the server honours seeds.
- Token usage and latency are recorded per completion; with ``n`` > 1 the response's
  completion tokens are split over its choices in proportion to their text lengths and its
  prompt tokens (billed once per request) evenly, so the sums equal what the server billed.
- Each completion carries its finish reason, the retries of its request and their errors.
- Several replicas of one model (``base_url`` a sequence of URLs, or one string of URLs
  separated by spaces): each attempt goes to the healthy replica with the fewest requests in
  flight (ties to the first). A connection error, a timeout or a 5xx rests a replica (5 s,
  doubling up to 60 s, reset by a success) and the retry goes at once to a replica this
  request has not tried; with every replica resting, to the one whose rest ends first. Each
  completion records the replica that answered it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from iapo.errors import RunError

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(RunError):
    """A request failed for good; the message says why."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency: float  # seconds of the request that produced it
    seed: int
    finish_reason: str | None = None
    retries: int = 0
    errors: tuple[str, ...] = ()
    endpoint: str | None = None  # the base URL of the replica that answered


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Replica:
    """One upstream replica and what the client knows of it; times are the client's clock."""

    url: str
    pools: list[httpx.AsyncClient] = field(default_factory=list)
    turn: int = 0
    in_flight: int = 0
    rest: float = 0.0  # seconds of the current rest; 0 while healthy
    rest_until: float = -math.inf
    rested_at: float = -math.inf  # when its last rest began

    def http(self) -> httpx.AsyncClient:
        """The next small connection pool, in turn."""
        self.turn = (self.turn + 1) % len(self.pools)
        return self.pools[self.turn]


def replica_urls(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """The replicas' base URLs, trailing slashes dropped: ``base_url`` is one URL, several
    separated by spaces, or a sequence of URLs."""
    urls = base_url.split() if isinstance(base_url, str) else list(base_url)
    out = tuple(u.rstrip("/") for u in urls)
    if not out:
        raise ValueError("no base URL given; give the endpoint, e.g. http://127.0.0.1:8080/v1")
    if len(set(out)) != len(out):
        raise ValueError(f"base URLs {list(out)} name a replica twice; name each once")
    return out


class ChatClient:
    """Async chat completions over one or more replicas, with a concurrency limit, retries
    and failover."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        supports_n: bool | None = None,
        rng: random.Random | None = None,
        rest: float = 5.0,
        max_rest: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_urls = replica_urls(base_url)
        self.base_url = " ".join(self.base_urls)
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.supports_n = supports_n
        self.stats = ClientStats()
        self.rest = rest
        self.max_rest = max_rest
        self._clock = clock
        self._rng = rng or random.Random()
        self._sem: asyncio.Semaphore | None = None
        self.replicas: list[Replica] = []

    # httpx's connection pool scans all its connections on every request and release, so one
    # pool of 64 costs ~10 ms of CPU per request at concurrency 50 (measured by
    # benchmarks/perf/bench_gateway_throughput.py); several small pools, used in turn, do not
    POOL_SIZE = 8

    async def __aenter__(self) -> ChatClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        pools = -(-self.concurrency // self.POOL_SIZE)
        size = -(-self.concurrency // pools)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        # each replica may take every request in flight (when the others rest)
        self.replicas = [Replica(url, [httpx.AsyncClient(base_url=url, headers=headers,
                                                         timeout=self.timeout, limits=limits)
                                       for _ in range(pools)])
                         for url in self.base_urls]
        self._sem = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for replica in self.replicas:
            for http in replica.pools:
                await http.aclose()
        self.replicas = []

    def _untried(self, tried: set[str]) -> list[Replica]:
        """The healthy replicas this request has not tried yet."""
        now = self._clock()
        return [r for r in self.replicas if r.rest_until <= now and r.url not in tried]

    def _pick(self, tried: set[str]) -> Replica:
        """The replica for the next attempt: the least loaded untried healthy one, else the
        least loaded healthy one, else the one whose rest ends first (ties to the first)."""
        now = self._clock()
        healthy = [r for r in self.replicas if r.rest_until <= now]
        choice = [r for r in healthy if r.url not in tried] or healthy
        if choice:
            return min(choice, key=lambda r: r.in_flight)
        return min(self.replicas, key=lambda r: r.rest_until)

    def _judge(self, replica: Replica, sent: float, healthy: bool) -> None:
        """Rest ``replica`` after a failed attempt (longer each time), or end its rest after a
        good one. An attempt sent before its last rest began tells nothing new: a replica that
        dies fails all its requests in flight at once, and is rested once, not once each."""
        if sent < replica.rested_at:
            return
        if healthy:
            replica.rest, replica.rest_until = 0.0, -math.inf
            return
        now = self._clock()
        replica.rest = min(self.max_rest, 2 * replica.rest if replica.rest else self.rest)
        replica.rested_at, replica.rest_until = now, now + replica.rest

    async def sample(
        self, messages: list[dict[str, str]], decoding: dict[str, Any], seeds: list[int]
    ) -> list[Completion]:
        """``len(seeds)`` independent completions of ``messages``."""
        if not seeds:
            return []
        if len(seeds) > 1 and self.supports_n is not False:
            got = await self._request(messages, decoding, seeds[0], len(seeds))
            got = [dataclasses.replace(c, seed=s) for c, s in zip(got, seeds, strict=False)]
            learned = honours_n(len(seeds), len(got))
            if learned is not None:
                self.supports_n = learned
            if len(got) >= len(seeds):
                return got
            rest = await self.sample(messages, decoding, seeds[len(got):])
            return got + rest
        batches = await asyncio.gather(*(self._request(messages, decoding, s, 1) for s in seeds))
        return [c for batch in batches for c in batch]

    async def one(self, messages: list[dict[str, str]], decoding: dict[str, Any],
                  seed: int) -> Completion:
        """One completion, in a request of its own (so that it can be cancelled alone)."""
        return (await self._request(messages, decoding, seed, 1))[0]

    async def stream(self, messages: list[dict[str, str]], decoding: dict[str, Any],
                     seed: int) -> AsyncIterator[str | Completion]:
        """One completion as the upstream streams it (``stream: true``): the pieces of its
        text as they arrive, then the whole :class:`Completion` (tokens from the usage the
        server sends last, else one per piece). An attempt that fails before its first piece
        is retried as :meth:`one` retries (another replica, backoff); once a piece went out, a
        failure ends the stream with :class:`LLMError`. ``timeout`` bounds each attempt."""
        if not self.replicas or self._sem is None:
            raise RuntimeError("use the client as 'async with ChatClient(...) as client'")
        body: dict[str, Any] = {"model": self.model, "messages": messages, "seed": seed,
                                **decoding, "stream": True,
                                "stream_options": {"include_usage": True}}
        last, errors, tried = "no attempt made", [], set[str]()
        for attempt in range(self.max_retries + 1):
            if attempt:
                errors.append(last)
                self.stats.retries += 1
                if not self._untried(tried):
                    await asyncio.sleep(self._delay(attempt, None))
            async with self._sem:
                replica = self._pick(tried)
                replica.in_flight += 1
                sent, t0 = self._clock(), time.perf_counter()
                pieces: list[str] = []
                try:
                    async with asyncio.timeout(self.timeout):
                        self.stats.requests += 1
                        async with replica.http().stream("POST", "/chat/completions",
                                                         json=body) as r:
                            if r.status_code >= 400:
                                text = (await r.aread()).decode(errors="replace")[:300]
                                self._judge(replica, sent, healthy=r.status_code < 500)
                                if r.status_code not in RETRY_STATUS:
                                    raise LLMError(f"{replica.url}/chat/completions answered "
                                                   f"HTTP {r.status_code}: {text}")
                                last = f"HTTP {r.status_code}: {text}"
                                tried.add(replica.url)
                                continue
                            usage: dict[str, Any] = {}
                            reason = None
                            async for event in _events(r):
                                usage = event.get("usage") or usage
                                for ch in event.get("choices") or []:
                                    reason = ch.get("finish_reason") or reason
                                    piece = (ch.get("delta") or {}).get("content")
                                    if isinstance(piece, str) and piece:
                                        pieces.append(piece)
                                        yield piece
                    self._judge(replica, sent, healthy=True)
                except (httpx.TimeoutException, TimeoutError, httpx.TransportError,
                        ValueError) as e:
                    last = (f"timed out: no complete answer within the {self.timeout:g} s "
                            "deadline" if isinstance(e, (httpx.TimeoutException, TimeoutError))
                            else f"connection failed ({type(e).__name__}: {e})")
                    self._judge(replica, sent, healthy=False)
                    if pieces:  # the caller has part of the text: no retry can mend that
                        raise LLMError(f"{self.base_url}/chat/completions stopped streaming: "
                                       f"{last}") from None
                    tried.add(replica.url)
                    continue
                finally:
                    replica.in_flight -= 1
            text = "".join(pieces)
            completion_tokens = int(usage.get("completion_tokens", len(pieces)))
            prompt_tokens = int(usage.get("prompt_tokens", 0))
            self.stats.completions += 1
            self.stats.prompt_tokens += prompt_tokens
            self.stats.completion_tokens += completion_tokens
            yield Completion(text, prompt_tokens, completion_tokens, time.perf_counter() - t0,
                             seed, reason, attempt, tuple(errors), replica.url)
            return
        raise LLMError(f"{self.base_url}/chat/completions failed {self.max_retries + 1} times; "
                       f"last: {last}")

    async def _request(self, messages: list[dict[str, str]], decoding: dict[str, Any],
                       seed: int, n: int) -> list[Completion]:
        if not self.replicas or self._sem is None:
            raise RuntimeError("use the client as 'async with ChatClient(...) as client'")
        body = request_body(self.model, messages, decoding, seed, n)
        last = "no attempt made"
        errors: list[str] = []
        last_retry_after: float | None = None
        tried: set[str] = set()  # the replicas that failed an attempt of this request
        several = len(self.replicas) > 1
        for attempt in range(self.max_retries + 1):
            if attempt:
                errors.append(last)
                self.stats.retries += 1
                if not self._untried(tried):  # another replica is asked at once
                    await asyncio.sleep(self._delay(attempt, last_retry_after))
            last_retry_after = None
            async with self._sem:
                replica = self._pick(tried)
                where = f"{replica.url}: " if several else ""
                replica.in_flight += 1
                t0 = time.perf_counter()
                sent = self._clock()
                try:
                    self.stats.requests += 1
                    # a deadline for the whole attempt, not a timeout between bytes
                    r = await asyncio.wait_for(
                        replica.http().post("/chat/completions", json=body), self.timeout)
                except (httpx.TimeoutException, TimeoutError):
                    last = (f"{where}timed out: no complete answer within the "
                            f"{self.timeout:g} s deadline")
                    tried.add(replica.url)
                    self._judge(replica, sent, healthy=False)
                    continue
                except httpx.TransportError as e:
                    last = f"{where}connection failed ({type(e).__name__}: {e})"
                    tried.add(replica.url)
                    self._judge(replica, sent, healthy=False)
                    continue
                finally:
                    replica.in_flight -= 1
                latency = time.perf_counter() - t0
            self._judge(replica, sent, healthy=r.status_code < 500)
            if r.status_code in RETRY_STATUS:
                last = f"{where}HTTP {r.status_code}: {r.text[:200]}"
                last_retry_after = _retry_after(r)
                tried.add(replica.url)
                continue
            if r.status_code >= 400:
                raise LLMError(f"{replica.url}/chat/completions answered HTTP {r.status_code}: "
                               f"{r.text[:500]}")
            try:
                got = self._parse(r.json(), latency, seed)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                last = f"{where}malformed response body ({type(e).__name__}: {e})"
                tried.add(replica.url)
                continue
            return [dataclasses.replace(c, retries=attempt, errors=tuple(errors),
                                        endpoint=replica.url) for c in got]
        if several:
            raise LLMError(f"/chat/completions failed {self.max_retries + 1} times on the "
                           f"replicas {', '.join(self.base_urls)}; last: {last}")
        raise LLMError(f"{self.base_url}/chat/completions failed {self.max_retries + 1} times; "
                       f"last: {last}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay = self._rng.uniform(cap / 2, cap)  # jitter: no thundering herd
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _parse(self, body: Any, latency: float, seed: int) -> list[Completion]:
        got = parse_completions(body, latency, seed)
        self.stats.completions += len(got)
        self.stats.prompt_tokens += sum(c.prompt_tokens for c in got)
        self.stats.completion_tokens += sum(c.completion_tokens for c in got)
        return got


def honours_n(asked: int, got: int) -> bool | None:
    """What an answer of ``got`` choices to a request for ``asked`` > 1 says of the server:
    all of them back, it honours n; one, it ignores n (one sample per request from then on);
    some but fewer, nothing (n is kept, the rest asked for)."""
    return True if got >= asked else False if got == 1 else None


def request_body(model: str, messages: list[dict[str, str]], decoding: dict[str, Any],
                 seed: int, n: int) -> dict[str, Any]:
    """The body of a chat-completion request for ``n`` samples of ``messages`` (``n`` sent
    only above 1): what the client posts, and what a batch line carries
    (:mod:`iapo.live.batch`)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "seed": seed, **decoding}
    if n > 1:
        body["n"] = n
    return body


def parse_completions(body: Any, latency: float, seed: int) -> list[Completion]:
    """The completions of a chat-completion response body (a dict or its JSON text): one per
    choice, its finish reason kept, the response's completion tokens split over the choices
    in proportion to their text lengths and its prompt tokens (billed once) evenly. Raises
    ValueError, KeyError, TypeError or IndexError on a malformed body."""
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    choices = body["choices"]
    if not isinstance(choices, list) or not choices:
        raise ValueError("no choices in the response")
    texts, reasons = [], []
    for ch in choices:
        content = ch["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("choice content is not text")
        texts.append(content)
        reason = ch.get("finish_reason")
        reasons.append(reason if isinstance(reason, str) else None)
    usage = body.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens", 0))
    total = int(usage.get("completion_tokens", 0))
    lengths = [max(len(t), 1) for t in texts]
    # largest remainders: non-negative shares that add up to what the server billed
    exact = [total * x / sum(lengths) for x in lengths]
    shares = [int(e) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: shares[i] - exact[i])[
            : total - sum(shares)]:
        shares[i] += 1
    # the prompt is billed once per request: its tokens are shared, not repeated
    k = len(texts)
    prompt_shares = [prompt_tokens // k + (i < prompt_tokens % k) for i in range(k)]
    return [Completion(t, p, s, latency, seed, f)
            for t, p, s, f in zip(texts, prompt_shares, shares, reasons, strict=True)]


async def _events(r: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream, up to ``[DONE]``; ValueError on an
    event that is not JSON or an error event."""
    async for line in r.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if not isinstance(event, dict):
            raise ValueError("a stream event is not a JSON object")
        if "error" in event:
            raise ValueError(f"the upstream sent an error event: {str(event['error'])[:200]}")
        yield event


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
