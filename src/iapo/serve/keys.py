"""Who may call the gateway, and how much.

Keys come from the environment variable ``IAPO_API_KEYS`` (comma-separated; every key may use
every context, without limits) or from a keys file (``--keys FILE``, TOML)::

    [[keys]]
    name = "team-a"                  # shown on /health and in logs, never the key itself
    key = "sk-team-a-..."            # or key_env = "TEAM_A_KEY": read from that variable
    contexts = ["budget=low", "budget=mid"]   # optional: the contexts it may ask for
    default_context = "budget=low"   # optional: for its requests that name none
    requests_per_minute = 60         # optional limits, answered with 429 and Retry-After
    completions_per_day = 10000

A caller sends ``Authorization: Bearer <key>``; the key is compared in constant time with
every known key (digests of equal length, ``hmac.compare_digest``).

Limits are fixed windows (the current minute, the current UTC day) counted in a small SQLite
file shared by every worker process of the gateway (``BEGIN IMMEDIATE`` makes the check and
the increment one step), so K workers enforce one limit together, not K limits. The usage of
keys without limits is counted in memory and written at most once a second (and on /health
and at shutdown): a write per request cost ~0.5 ms of the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iapo.errors import InputError


class KeysFileError(InputError):
    """A keys file or IAPO_API_KEYS is wrong; the message names the field."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key: compared in constant time, the key is not kept
    contexts: tuple[str, ...] | None = None  # None: every context
    default_context: str | None = None
    requests_per_minute: int | None = None
    completions_per_day: int | None = None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


MIN_KEY_LENGTH = 8


def _check_secret(secret: object, where: str) -> str:
    """One rule for every key, from a keys file or $IAPO_API_KEYS."""
    if not isinstance(secret, str) or len(secret) < MIN_KEY_LENGTH:
        raise KeysFileError(f"{where} must be a string of at least {MIN_KEY_LENGTH} "
                            "characters")
    return secret


def keys_from_env(value: str | None) -> list[ApiKey]:
    """``IAPO_API_KEYS=k1,k2``: keys named key-1, key-2 with no restrictions."""
    secrets = [s.strip() for s in (value or "").split(",") if s.strip()]
    for i, s in enumerate(secrets):
        _check_secret(s, f"key {i + 1} of $IAPO_API_KEYS")
    if len(set(secrets)) != len(secrets):
        raise KeysFileError("$IAPO_API_KEYS names the same key twice; give distinct keys")
    return [ApiKey(f"key-{i + 1}", _digest(s)) for i, s in enumerate(secrets)]


_FIELDS = {"name", "key", "key_env", "contexts", "default_context", "requests_per_minute",
           "completions_per_day"}


def load_keys(path: str | os.PathLike[str]) -> list[ApiKey]:
    """Read a keys file; every error names the key's row and the field."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise KeysFileError(f"keys file {str(p)!r} cannot be read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise KeysFileError(f"keys file {p.name} is not UTF-8 text; save it as UTF-8") from e
    except tomllib.TOMLDecodeError as e:
        raise KeysFileError(f"keys file {p.name}: not valid TOML ({e})") from e
    rows = raw.get("keys")
    unknown = set(raw) - {"keys"}
    if unknown:
        raise KeysFileError(f"keys file {p.name} has unknown table(s) {sorted(unknown)}; give "
                        "[[keys]] rows")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise KeysFileError(f"keys file {p.name} needs [[keys]] rows, each with name and key")
    out = []
    for i, row in enumerate(rows):
        where = f"keys[{i}]"
        bad = set(row) - _FIELDS
        if bad:
            raise KeysFileError(f"{where} has unknown field(s) {sorted(bad)}; known: "
                            f"{', '.join(sorted(_FIELDS))}")
        name = row.get("name")
        if not isinstance(name, str) or not name:
            raise KeysFileError(f"{where}.name must be a non-empty string")
        secret = _secret(row, f"{where} ({name})")
        contexts = row.get("contexts")
        if contexts is not None and (not isinstance(contexts, list) or not contexts or not all(
                isinstance(c, str) for c in contexts)):
            raise KeysFileError(f"{where} ({name}).contexts must be a list of context strings "
                            "such as \"budget=low\"")
        default = row.get("default_context")
        if default is not None and not isinstance(default, str):
            raise KeysFileError(f"{where} ({name}).default_context must be a string")
        limits: dict[str, int | None] = {}
        for field in ("requests_per_minute", "completions_per_day"):
            value = row.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise KeysFileError(f"{where} ({name}).{field} must be a positive integer")
            limits[field] = value
        out.append(ApiKey(name, _digest(secret),
                          None if contexts is None else tuple(contexts), default,
                          limits["requests_per_minute"], limits["completions_per_day"]))
    names = [k.name for k in out]
    if len(set(names)) != len(names):
        raise KeysFileError(f"keys file {p.name}: key names {names} must be distinct")
    if len({k.digest for k in out}) != len(out):
        raise KeysFileError(f"keys file {p.name}: two rows have the same key")
    return out


def _secret(row: dict[str, Any], where: str) -> str:
    if ("key" in row) == ("key_env" in row):
        raise KeysFileError(f"{where} needs exactly one of key and key_env")
    if "key_env" in row:
        var = row["key_env"]
        value = os.environ.get(var) if isinstance(var, str) else None
        if not value:
            raise KeysFileError(f"{where}.key_env names ${var}, which is not set; export it")
        return _check_secret(value, f"{where}: ${var}")
    return _check_secret(row["key"], f"{where}.key")


class KeyRing:
    """The known keys; ``find`` compares a presented key with all of them in constant time."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, authorization: str | None) -> ApiKey | None:
        """The key of an ``Authorization: Bearer ...`` header, or None."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():  # the scheme is case-insensitive
            return None
        presented = _digest(token.strip())
        found = None
        for k in self.keys:  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(presented, k.digest):
                found = k
        return found


_UPSERT = ("INSERT INTO usage VALUES (?, ?, ?, ?) ON CONFLICT (key, kind, window) DO UPDATE "
           "SET count = count + excluded.count")


class Buffered:
    """What every limits store counts in memory and writes at most once a second (``flush``,
    which a store defines): the usage of keys without limits (a write per request costs the
    event loop), refunds of it, and the gateway's own counts."""

    # the gateway's own counts (requests served, errors) are stored under this key, with
    # window 0; a key's name is never empty
    GATEWAY = ""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, int], int] = {}
        self.flushed = time.monotonic()

    db: Any  # the store's connection

    def flush(self) -> None:
        """Write the counts kept in memory (``_write``, the store's own)."""
        if not self.pending:
            return
        rows = list(self.pending.items())
        self.pending = {}
        self.flushed = time.monotonic()
        self._write(rows)

    def _write(self, rows: list[tuple[tuple[str, str, int], int]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()
        self.db.close()

    def _add(self, slot: tuple[str, str, int], count: int) -> None:
        self.pending[slot] = self.pending.get(slot, 0) + count

    def admit(self, key: ApiKey, completions: int, now: float | None = None
              ) -> tuple[bool, float, str]:
        """Count one request of ``completions`` for ``key`` if its limits allow it. Returns
        (admitted, seconds until it would be, which limit)."""
        t = time.time() if now is None else now
        if self.count_free(key, completions, t):
            return True, 0.0, ""
        return self._check(key, completions, t)

    def _check(self, key: ApiKey, completions: int, t: float) -> tuple[bool, float, str]:
        """Check ``key``'s limits at time ``t`` and count the request, in one step."""
        raise NotImplementedError

    def count_free(self, key: ApiKey, completions: int, t: float) -> bool:
        """Count a request of a key without limits in memory (True); False for a key with
        limits, which the store must check and count at once."""
        if key.requests_per_minute is not None or key.completions_per_day is not None:
            return False
        self._add((key.name, "requests", int(t // 60)), 1)
        self._add((key.name, "completions", int(t // 86400)), completions)
        if time.monotonic() - self.flushed > 1.0:
            self.flush()
        return True

    def refund_free(self, key: ApiKey, completions: int, at: float) -> bool:
        """Take back a key without limits' completions in memory (True); False otherwise."""
        if key.requests_per_minute is not None or key.completions_per_day is not None:
            return False
        self._add((key.name, "completions", int(at // 86400)), -completions)
        return True

    def count_gateway(self, kind: str) -> None:
        """One more ``kind`` for the gateway, written with the next flush."""
        self._add((self.GATEWAY, kind, 0), 1)


class Limits(Buffered):
    """Per-key usage in fixed windows, in an SQLite file every worker shares."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS usage (key TEXT NOT NULL, kind TEXT NOT "
                        "NULL, window INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY "
                        "(key, kind, window))")
        super().__init__()

    def _write(self, rows: list[tuple[tuple[str, str, int], int]]) -> None:
        with self.db:
            self.db.executemany(_UPSERT, [(k, kind, w, c) for (k, kind, w), c in rows])

    def _check(self, key: ApiKey, completions: int, t: float) -> tuple[bool, float, str]:
        minute, day = int(t // 60), int(t // 86400)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            got = dict(self.db.execute(
                "SELECT kind, count FROM usage WHERE key = ? AND ((kind = 'requests' AND "
                "window = ?) OR (kind = 'completions' AND window = ?))",
                (key.name, minute, day)).fetchall())
            if key.requests_per_minute is not None and \
                    got.get("requests", 0) + 1 > key.requests_per_minute:
                self.db.execute("ROLLBACK")
                return False, (minute + 1) * 60 - t, "requests_per_minute"
            if key.completions_per_day is not None and \
                    got.get("completions", 0) + completions > key.completions_per_day:
                self.db.execute("ROLLBACK")
                return False, (day + 1) * 86400 - t, "completions_per_day"
            for kind, window, add in (("requests", minute, 1), ("completions", day, completions)):
                self.db.execute(_UPSERT, (key.name, kind, window, add))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return True, 0.0, ""

    def refund(self, key: ApiKey, completions: int, at: float) -> None:
        """Take back the completions of a request admitted at ``at`` that the upstream failed
        or the deadline cut: they do not count against the key's daily limit. (The request
        still counts against the requests per minute.)"""
        if self.refund_free(key, completions, at):
            return
        slot = (key.name, "completions", int(at // 86400))
        with self.db:
            self.db.execute("UPDATE usage SET count = MAX(count - ?, 0) WHERE key = ? AND "
                            "kind = ? AND window = ?", (completions, *slot))

    def gateway_total(self, kind: str) -> int:
        """The gateway's count of ``kind``: every worker's writes and this one's pending."""
        self.flush()
        row = self.db.execute("SELECT count FROM usage WHERE key = ? AND kind = ? AND "
                              "window = 0", (self.GATEWAY, kind)).fetchone()
        return int(row[0]) if row else 0

    def usage(self, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per key: requests this minute, completions today, requests and completions ever."""
        self.flush()
        t = time.time() if now is None else now
        minute, day = int(t // 60), int(t // 86400)
        out: dict[str, dict[str, int]] = {}
        for key, kind, window, count in self.db.execute("SELECT * FROM usage WHERE key != ?",
                                                         (self.GATEWAY,)):
            row = out.setdefault(key, {"requests_this_minute": 0, "completions_today": 0,
                                       "requests_total": 0, "completions_total": 0})
            row[f"{kind}_total"] += count
            if kind == "requests" and window == minute:
                row["requests_this_minute"] += count
            if kind == "completions" and window == day:
                row["completions_today"] += count
        return out
