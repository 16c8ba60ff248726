"""The gateway's per-key limits in Redis, shared by gateways on several machines.

:class:`RedisLimits` counts exactly what :class:`iapo.serve.keys.Limits` counts in its SQLite
file (fixed windows: the current minute, the current UTC day), but in a Redis server that
every ``iapo serve`` instance reaches. The check and the increment are one Lua script, which
Redis runs alone: N gateways enforce one limit together. Keys without limits are counted in
memory and written with one pipeline at most once a second, as in the SQLite file.

Everything lies under a prefix (``iapo:limits:`` unless told), so gateways of several tenants
can share one Redis::

    {prefix}requests:{minute}:{name}     requests of a minute; expires 2 minutes after a write
    {prefix}completions:{day}:{name}     completions of a UTC day; expires 2 days after a write
    {prefix}total:requests               hash: name -> requests ever (kept)
    {prefix}total:completions            hash: name -> completions ever, less refunds (kept)
    {prefix}names                        set: the names that have been counted (kept)
    {prefix}gateway                      hash: kind ('served', 'errors') -> count (kept)

:func:`open_limits` picks the store from the gateway's target: a ``redis://`` or ``rediss://``
URL, or the path of an SQLite file.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from iapo.errors import InputError, RunError
from iapo.serve.keys import ApiKey, Buffered, Limits

__all__ = ["LimitsStoreError", "RedisLimits", "open_limits", "redacted_url"]

DEFAULT_PREFIX = "iapo:limits:"
# seconds a window's counter is kept after its last write: two windows, so it outlives its own
_MINUTE_TTL = 2 * 60
_DAY_TTL = 2 * 86400
_NO_LIMIT = -1

# KEYS: minute counter, day counter, requests totals, completions totals, names
# ARGV: name, requests per minute, completions per day (-1: none), completions, the two TTLs
# returns 0 admitted, 1 refused by requests per minute, 2 refused by completions per day
_ADMIT = """
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local completions = tonumber(redis.call('GET', KEYS[2]) or '0')
local rpm, cpd, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rpm >= 0 and requests + 1 > rpm then return 1 end
if cpd >= 0 and completions + n > cpd then return 2 end
redis.call('INCRBY', KEYS[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('INCRBY', KEYS[2], n)
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('HINCRBY', KEYS[4], ARGV[1], n)
redis.call('SADD', KEYS[5], ARGV[1])
return 0
"""

# KEYS: day counter, completions totals; ARGV: name, completions
# a day never counted is left alone (as SQLite's UPDATE of no row); never below 0
_REFUND = """
local count = redis.call('GET', KEYS[1])
if not count then return 0 end
count = tonumber(count)
local taken = count - math.max(count - tonumber(ARGV[2]), 0)
redis.call('DECRBY', KEYS[1], taken)
redis.call('HINCRBY', KEYS[2], ARGV[1], -taken)
return taken
"""


class LimitsStoreError(RunError):
    """The Redis that holds the gateway's limits cannot be reached or refused the client."""


def redacted_url(url: str) -> str:
    """``url`` without its password or query (which may hold one): fit for a message."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{url.partition(':')[0]}://<unreadable address>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{f':{port}' if port else ''}{parts.path}"


def _window_key(prefix: str, kind: str, window: int, name: str) -> str:
    # the name last: a name with ':' in it cannot be mistaken for another key's window
    return f"{prefix}{kind}:{window}:{name}"


class RedisLimits(Buffered):
    """Per-key usage in fixed windows, in a Redis server every gateway shares; the same
    methods and results as :class:`iapo.serve.keys.Limits`."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX,
                 connect_timeout: float = 5.0) -> None:
        shown = redacted_url(url)
        try:
            self.db: redis.Redis = redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=connect_timeout)
        except ValueError as e:
            raise InputError(f"{shown} is not a Redis URL ({_scrubbed(e, url)}); give "
                             "redis://[user:password@]host[:port][/db]") from e
        try:
            self.db.ping()
        except redis.RedisError as e:
            self.db.close()
            raise LimitsStoreError(
                f"cannot reach Redis at {shown} for the gateway's limits "
                f"({_scrubbed(e, url)}); start it, or check the address and the password"
            ) from e
        self.prefix = prefix
        self._admit = self.db.register_script(_ADMIT)
        self._refund = self.db.register_script(_REFUND)
        super().__init__()

    def _key(self, what: str) -> str:
        return f"{self.prefix}{what}"

    def _write(self, rows: list[tuple[tuple[str, str, int], int]]) -> None:
        """The counts kept in memory, in one pipeline."""
        with self.db.pipeline() as pipe:
            for (name, kind, window), count in rows:
                if name == self.GATEWAY:
                    pipe.hincrby(self._key("gateway"), kind, count)
                    continue
                counter = _window_key(self.prefix, kind, window, name)
                pipe.incrby(counter, count)
                pipe.expire(counter, _MINUTE_TTL if kind == "requests" else _DAY_TTL)
                pipe.hincrby(self._key(f"total:{kind}"), name, count)
                pipe.sadd(self._key("names"), name)
            pipe.execute()

    def _check(self, key: ApiKey, completions: int, t: float) -> tuple[bool, float, str]:
        minute, day = int(t // 60), int(t // 86400)
        refused = self._admit(
            keys=[_window_key(self.prefix, "requests", minute, key.name),
                  _window_key(self.prefix, "completions", day, key.name),
                  self._key("total:requests"), self._key("total:completions"),
                  self._key("names")],
            args=[key.name, _limit(key.requests_per_minute), _limit(key.completions_per_day),
                  completions, _MINUTE_TTL, _DAY_TTL])
        if refused == 1:
            return False, (minute + 1) * 60 - t, "requests_per_minute"
        if refused == 2:
            return False, (day + 1) * 86400 - t, "completions_per_day"
        return True, 0.0, ""

    def refund(self, key: ApiKey, completions: int, at: float) -> None:
        """Take back the completions of a request admitted at ``at`` that the upstream failed
        or the deadline cut (never below 0 for its day). The request still counts against the
        requests per minute."""
        if self.refund_free(key, completions, at):
            return
        day = int(at // 86400)
        self._refund(keys=[_window_key(self.prefix, "completions", day, key.name),
                           self._key("total:completions")],
                     args=[key.name, completions])

    def gateway_total(self, kind: str) -> int:
        """The gateway's count of ``kind``: every gateway's writes and this one's pending."""
        self.flush()
        return int(self.db.hget(self._key("gateway"), kind) or 0)

    def usage(self, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per key: requests this minute, completions today, requests and completions ever."""
        self.flush()
        t = time.time() if now is None else now
        minute, day = int(t // 60), int(t // 86400)
        names = sorted(str(n) for n in self.db.smembers(self._key("names")))
        with self.db.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._key("total:requests"))
            pipe.hgetall(self._key("total:completions"))
            for name in names:
                pipe.get(_window_key(self.prefix, "requests", minute, name))
                pipe.get(_window_key(self.prefix, "completions", day, name))
            got: list[Any] = pipe.execute()
        requests, completions, windows = got[0], got[1], got[2:]
        return {name: {"requests_this_minute": int(windows[2 * i] or 0),
                       "completions_today": int(windows[2 * i + 1] or 0),
                       "requests_total": int(requests.get(name, 0)),
                       "completions_total": int(completions.get(name, 0))}
                for i, name in enumerate(names)}


def _limit(value: int | None) -> int:
    return _NO_LIMIT if value is None else value


def _scrubbed(error: Exception, url: str) -> str:
    """The error's text with the URL's password, if any, taken out."""
    text = str(error) or type(error).__name__
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def open_limits(target: str | os.PathLike[str]) -> Limits | RedisLimits:
    """The limits store of ``target``: a ``redis://`` or ``rediss://`` URL gives
    :class:`RedisLimits`, anything else is the path of an SQLite file (:class:`Limits`)."""
    if isinstance(target, str) and target.lower().startswith(("redis://", "rediss://")):
        return RedisLimits(target)
    return Limits(target)
