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
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from dataclasses import dataclass
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


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatClient:
    """Async chat completions with a concurrency limit and retries."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        supports_n: bool | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.supports_n = supports_n
        self.stats = ClientStats()
        self._rng = rng or random.Random()
        self._sem: asyncio.Semaphore | None = None
        self._pool: list[httpx.AsyncClient] = []
        self._turn = 0

    # httpx's connection pool scans all its connections on every request and release, so one
    # pool of 64 costs ~10 ms of CPU per request at concurrency 50 (measured by
    # benchmarks/bench_gateway_throughput.py); several small pools, used in turn, do not
    POOL_SIZE = 8

    async def __aenter__(self) -> ChatClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        pools = -(-self.concurrency // self.POOL_SIZE)
        size = -(-self.concurrency // pools)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._pool = [httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                        timeout=self.timeout, limits=limits)
                      for _ in range(pools)]
        self._sem = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for http in self._pool:
            await http.aclose()
        self._pool = []

    def _http(self) -> httpx.AsyncClient:
        """The next small connection pool, in turn."""
        self._turn = (self._turn + 1) % len(self._pool)
        return self._pool[self._turn]

    async def sample(
        self, messages: list[dict[str, str]], decoding: dict[str, Any], seeds: list[int]
    ) -> list[Completion]:
        """``len(seeds)`` independent completions of ``messages``."""
        if not seeds:
            return []
        if len(seeds) > 1 and self.supports_n is not False:
            got = await self._request(messages, decoding, seeds[0], len(seeds))
            got = [dataclasses.replace(c, seed=s) for c, s in zip(got, seeds, strict=False)]
            if len(got) >= len(seeds):
                self.supports_n = True
                return got
            if len(got) == 1:
                self.supports_n = False  # the server ignores n: one sample per request
            rest = await self.sample(messages, decoding, seeds[len(got):])
            return got + rest
        batches = await asyncio.gather(*(self._request(messages, decoding, s, 1) for s in seeds))
        return [c for batch in batches for c in batch]

    async def one(self, messages: list[dict[str, str]], decoding: dict[str, Any],
                  seed: int) -> Completion:
        """One completion, in a request of its own (so that it can be cancelled alone)."""
        return (await self._request(messages, decoding, seed, 1))[0]

    async def _request(self, messages: list[dict[str, str]], decoding: dict[str, Any],
                       seed: int, n: int) -> list[Completion]:
        if not self._pool or self._sem is None:
            raise RuntimeError("use the client as 'async with ChatClient(...) as client'")
        body: dict[str, Any] = {"model": self.model, "messages": messages, "seed": seed,
                                **decoding}
        if n > 1:
            body["n"] = n
        last = "no attempt made"
        errors: list[str] = []
        last_retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                errors.append(last)
                self.stats.retries += 1
                await asyncio.sleep(self._delay(attempt, last_retry_after))
            last_retry_after = None
            async with self._sem:
                t0 = time.perf_counter()
                try:
                    self.stats.requests += 1
                    # a deadline for the whole attempt, not a timeout between bytes
                    r = await asyncio.wait_for(
                        self._http().post("/chat/completions", json=body), self.timeout)
                except (httpx.TimeoutException, TimeoutError):
                    last = f"timed out: no complete answer within the {self.timeout:g} s deadline"
                    continue
                except httpx.TransportError as e:
                    last = f"connection failed ({type(e).__name__}: {e})"
                    continue
                latency = time.perf_counter() - t0
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                last_retry_after = _retry_after(r)
                continue
            if r.status_code >= 400:
                raise LLMError(f"{self.base_url}/chat/completions answered HTTP {r.status_code}: "
                               f"{r.text[:500]}")
            try:
                got = self._parse(r.json(), latency, seed)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                last = f"malformed response body ({type(e).__name__}: {e})"
                continue
            return [dataclasses.replace(c, retries=attempt, errors=tuple(errors)) for c in got]
        raise LLMError(
            f"{self.base_url}/chat/completions failed {self.max_retries + 1} times; last: {last}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay = self._rng.uniform(cap / 2, cap)  # jitter: no thundering herd
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _parse(self, body: Any, latency: float, seed: int) -> list[Completion]:
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
        self.stats.completions += k
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += total
        return [Completion(t, p, s, latency, seed, f)
                for t, p, s, f in zip(texts, prompt_shares, shares, reasons, strict=True)]


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
