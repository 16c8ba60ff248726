"""A durable store of completions in SQLite (WAL).

Every completion is kept with its request key — the arm (model, prompt template, system
message, decoding settings), the query id and the sample index — and its text, extracted
answer, scores, scorer failures, tokens, latency and seed. Each insert is committed before
anyone reads it, so a crash (even ``kill -9``) loses at most the completions in flight.

For every (arm, query) the store is a pool of i.i.d. samples indexed 0, 1, 2, ...: a run takes
the next unused indices of the pool for each pull and asks the LLM only for indices that are
not stored, so a rerun or a resume replays stored samples and never pays twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arms (
    arm TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_name TEXT NOT NULL,
    template TEXT NOT NULL, system TEXT, decoding TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (id TEXT PRIMARY KEY, query TEXT NOT NULL, gold TEXT);
CREATE TABLE IF NOT EXISTS completions (
    arm TEXT NOT NULL, query_id TEXT NOT NULL, sample INTEGER NOT NULL,
    text TEXT NOT NULL, answer TEXT, scores TEXT NOT NULL, failures TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    latency REAL NOT NULL, seed INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (arm, query_id, sample)
);
"""


def arm_key(model: str, template: str, system: str | None, decoding: dict[str, Any]) -> str:
    """A stable key of everything that defines a completion's distribution but the query."""
    blob = json.dumps([model, template, system, decoding], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StoredCompletion:
    arm: str
    query_id: str
    sample: int
    text: str
    answer: str | None
    scores: list[float]
    failures: list[str]
    prompt_tokens: int
    completion_tokens: int
    latency: float
    seed: int


class CompletionStore:
    """SQLite completion store; use one per process (or thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CompletionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- metadata
    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def add_arm(self, arm: str, model: str, prompt_name: str, template: str,
                system: str | None, decoding: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO arms VALUES (?, ?, ?, ?, ?, ?)",
                            (arm, model, prompt_name, template, system,
                             json.dumps(decoding, sort_keys=True)))

    def add_queries(self, rows: Iterable[tuple[str, str, Any]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO queries VALUES (?, ?, ?)",
                                [(i, q, json.dumps(g)) for i, q, g in rows])

    def queries(self) -> list[tuple[str, str, Any]]:
        return [(i, q, json.loads(g)) for i, q, g in
                self.db.execute("SELECT id, query, gold FROM queries ORDER BY rowid")]

    def arms(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT arm, model, prompt_name, template, system, decoding "
                              "FROM arms ORDER BY rowid")
        return [{"arm": a, "model": m, "prompt_name": n, "template": t, "system": s,
                 "decoding": json.loads(d)} for a, m, n, t, s, d in cur]

    # ---------------------------------------------------------------- completions
    def put(self, c: StoredCompletion) -> None:
        """Store one completion and commit it at once."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO completions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (c.arm, c.query_id, c.sample, c.text, c.answer, json.dumps(c.scores),
                 json.dumps(c.failures), c.prompt_tokens, c.completion_tokens, c.latency,
                 c.seed, time.time()),
            )

    def get(self, arm: str, query_id: str, samples: Sequence[int]) -> dict[int, StoredCompletion]:
        """The stored completions among ``samples`` of (arm, query)."""
        if not samples:
            return {}
        lo, hi = min(samples), max(samples)
        cur = self.db.execute(
            "SELECT sample, text, answer, scores, failures, prompt_tokens, completion_tokens, "
            "latency, seed FROM completions WHERE arm = ? AND query_id = ? AND sample BETWEEN "
            "? AND ?", (arm, query_id, lo, hi))
        wanted = set(samples)
        out = {}
        for s, text, ans, sc, fl, pt, ct, lat, seed in cur:
            if s in wanted:
                out[s] = StoredCompletion(arm, query_id, s, text, ans, json.loads(sc),
                                          json.loads(fl), pt, ct, lat, seed)
        return out

    def all_completions(self) -> list[StoredCompletion]:
        cur = self.db.execute(
            "SELECT arm, query_id, sample, text, answer, scores, failures, prompt_tokens, "
            "completion_tokens, latency, seed FROM completions ORDER BY arm, query_id, sample")
        return [StoredCompletion(a, q, s, t, ans, json.loads(sc), json.loads(fl), pt, ct, lat,
                                 seed)
                for a, q, s, t, ans, sc, fl, pt, ct, lat, seed in cur]

    def mean_tokens(self) -> dict[str, float]:
        """Mean completion tokens per arm over everything stored."""
        cur = self.db.execute("SELECT arm, AVG(completion_tokens) FROM completions GROUP BY arm")
        return {a: float(m) for a, m in cur}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM completions").fetchone()[0])
