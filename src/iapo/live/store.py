"""A durable store of completions in SQLite (WAL).

**Pools are keyed by what was asked.** For every request content (model, the rendered chat
messages: system message and template applied to the query text, decoding settings) the store
is a pool of i.i.d. samples indexed 0, 1, 2, ...: a run takes the next unused indices of the
pool for each pull and asks the LLM only for indices that are not stored, so a rerun or a
resume replays stored samples and never pays twice. A query id is not part of the key: a
changed question text is a new pool; a changed gold keeps the pool and rescores the stored
texts (the scores carry a key of the gold and the scorers they were computed with).

Every completion is kept with its text, extracted answer, scores, scorer failures, tokens (the
prompt's tokens billed once per request, shared among the completions it returned), finish
reason, retries and errors of its request, endpoint, latency, seed, and the cost the first run
that used it charged. Each insert is committed before anyone reads it, so a crash (even
``kill -9``) loses at most the completions in flight.

``served`` is the gateway's log of the requests it answered (``iapo serve --log-store``), one
row per request (:class:`ServedRequest`), its completions stored under the request's id as
pool and query id, in draw order; ``feedback`` the gold answers and scores that arrived for
them later (:class:`Feedback`), appended, the latest of a kind winning. ``runs`` keeps what
every optimize or collect run paid and replayed. One writer at a time: :func:`writer_lock`
holds an exclusive lock on the run folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapo.errors import InputError, RunError

VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arms (
    arm TEXT PRIMARY KEY, model TEXT NOT NULL, prompt_name TEXT NOT NULL,
    template TEXT NOT NULL, system TEXT, decoding TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (id TEXT PRIMARY KEY, query TEXT NOT NULL, gold TEXT);
CREATE TABLE IF NOT EXISTS completions (
    pool TEXT NOT NULL, sample INTEGER NOT NULL, arm TEXT NOT NULL, query_id TEXT NOT NULL,
    text TEXT NOT NULL, answer TEXT, scores TEXT NOT NULL, failures TEXT NOT NULL,
    score_key TEXT, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    finish_reason TEXT, retries INTEGER NOT NULL DEFAULT 0, errors TEXT NOT NULL DEFAULT '[]',
    endpoint TEXT, cost REAL, latency REAL NOT NULL, seed INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (pool, sample)
);
CREATE TABLE IF NOT EXISTS served (
    id TEXT PRIMARY KEY, created REAL NOT NULL, context TEXT NOT NULL, prompt INTEGER NOT NULL,
    arm TEXT NOT NULL, n INTEGER NOT NULL, reason TEXT NOT NULL, caller TEXT,
    answer TEXT, chosen INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, paid INTEGER NOT NULL, latency REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, request TEXT NOT NULL, created REAL NOT NULL,
    caller TEXT, kind TEXT NOT NULL, objective TEXT, value TEXT NOT NULL, source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT NOT NULL, task TEXT NOT NULL,
    digest TEXT NOT NULL, seed INTEGER, started REAL NOT NULL, finished REAL,
    status TEXT NOT NULL, paid INTEGER NOT NULL DEFAULT 0, replayed INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0
);
"""

_SERVED_FIELDS = ("id", "created", "context", "prompt", "arm", "n", "reason", "caller",
                  "answer", "chosen", "prompt_tokens", "completion_tokens", "paid", "latency")
_SERVED = ", ".join(_SERVED_FIELDS)
_COLUMNS = ("pool, sample, arm, query_id, text, answer, scores, failures, score_key, "
            "prompt_tokens, completion_tokens, finish_reason, retries, errors, endpoint, cost, "
            "latency, seed")


@dataclass(frozen=True)
class ServedRequest:
    """One request the gateway answered: ``id`` (the response's id, and the pool and query
    id of its completions in the log), ``created`` (seconds since the epoch), the ``context``
    key and the arm (``prompt`` index, ``arm`` id, ``n``), ``reason`` ("policy": the policy's
    choice, returned; "learn": a learning pull on the request's query, never returned, its
    ``context`` the request's), ``caller`` (the API key's name; None without keys), the
    aggregated ``answer`` (majority voting; None otherwise or for "no answer"), the
    ``chosen`` sample, the tokens of all its completions, the completions ``paid`` upstream
    and the ``latency`` (seconds from the first upstream request to the scored group)."""

    id: str
    created: float
    context: str
    prompt: int
    arm: str
    n: int
    reason: str
    caller: str | None
    answer: str | None
    chosen: int
    prompt_tokens: int
    completion_tokens: int
    paid: int
    latency: float


SERVED_REASONS = ("policy", "learn")
# the meta key of a gateway's log that names the run (the folder of the policy) it served
SERVED_RUN = "served run"
# what a store error also asks for: the gateway's log is a store too
_OR_LOG = " (or, where a log is asked for, the file that iapo serve --log-store wrote)"


@dataclass(frozen=True)
class Feedback:
    """What arrived later for a served request: its ``gold`` answer (``kind`` "gold") or a
    ``score`` for one ``objective`` (``kind`` "score"), from ``caller`` (a key's name, or
    None) through ``source`` ("api": ``POST /v1/feedback``; "label-log": ``iapo label-log``)."""

    request: str
    created: float
    caller: str | None
    kind: str
    objective: str | None
    value: Any
    source: str


_FEEDBACK_FIELDS = ("request", "created", "caller", "kind", "objective", "value", "source")


class StoreError(InputError):
    """The file is not a completion store, or the run folder is busy; the message says what
    to do."""


class FolderBusy(StoreError):
    """The run folder's lock is held by another writer."""


class StoreFailure(RunError):
    """The store could not be read or written (a full disk, a damaged or emptied file); the
    message names the file and what to do."""


def store_failure(path: Path, e: sqlite3.Error) -> StoreFailure:
    """What an SQLite failure on the store at ``path`` means for the user, as one line."""
    name = getattr(e, "sqlite_errorname", "") or ""
    text = str(e)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StoreFailure(
            f"the disk holding {path} is full ({text}); free some space, then run the same "
            f"command again: it resumes from what {path.name} holds and pays nothing twice")
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or \
            "not a database" in text:
        return StoreFailure(
            f"{path} is damaged ({text}); restore it from a backup, or recover what is left "
            f"with `sqlite3 {path} .recover | sqlite3 recovered.sqlite` and put "
            "recovered.sqlite in its place; moving it away starts over (every completion "
            "is paid again)")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")) or \
            "readonly" in text or "unable to open" in text:
        return StoreFailure(f"{path} cannot be written ({text}); give a store in a folder you "
                            "may write to")
    return StoreFailure(f"{path}: SQLite failed ({text}); nothing stored before is lost: run "
                        "the same command again to resume")


@contextlib.contextmanager
def store_errors(path: Path) -> Iterator[None]:
    """Turn an SQLite failure on the store at ``path`` into a :class:`StoreFailure`."""
    try:
        yield
    except sqlite3.Error as e:
        raise store_failure(path, e) from e


def check_not_emptied(path: Path) -> None:
    """Refuse a store file of zero bytes: SQLite would take it for a new, empty store, and the
    run would silently pay for everything again."""
    if path.is_file() and path.stat().st_size == 0 and \
            not Path(f"{path}-wal").is_file():
        raise StoreFailure(
            f"{path} is empty (0 bytes): the completions it held are gone (a full disk or an "
            "interrupted copy can do this). Restore it from a backup, or delete it to start "
            "over (every completion is paid again)")


def arm_key(model: str, template: str, system: str | None, decoding: dict[str, Any]) -> str:
    """A stable key of everything that defines a prompt's completions but the query."""
    blob = json.dumps([model, template, system, decoding], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render(template: str, system: str | None, query: str) -> list[dict[str, str]]:
    """The chat messages of a prompt applied to a query text."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": template.replace("{query}", query)})
    return messages


def pool_key(model: str, messages: list[dict[str, str]], decoding: dict[str, Any]) -> str:
    """The pool of a request: model, messages and decoding settings (not the endpoint, not the
    query id)."""
    blob = json.dumps([model, messages, decoding], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class StoredCompletion:
    pool: str
    sample: int
    arm: str
    query_id: str
    text: str
    answer: str | None
    scores: list[float | None]  # None: a scorer that needs a gold answer had none
    failures: list[str]
    prompt_tokens: int
    completion_tokens: int
    latency: float
    seed: int
    score_key: str | None = None
    finish_reason: str | None = None
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    endpoint: str | None = None
    cost: float | None = None


def _row(r: Sequence[Any]) -> StoredCompletion:
    (pool, sample, arm, qid, text, ans, sc, fl, skey, pt, ct, fin, ret, err, ep, cost, lat,
     seed) = r
    return StoredCompletion(pool, sample, arm, qid, text, ans, json.loads(sc), json.loads(fl),
                            pt, ct, lat, seed, skey, fin, ret, json.loads(err), ep, cost)


class CompletionStore:
    """SQLite completion store; use one per process (or thread).

    ``create=False`` opens an existing store read-only and checks that it is one, writing
    nothing (for export-env).
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        check_not_emptied(self.path)
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreFailure(f"cannot create the folder of {self.path} "
                                   f"({e.strerror or e}); give a path you may write to") from e
            with store_errors(self.path):
                self.db = sqlite3.connect(self.path, timeout=30.0)
            try:
                with store_errors(self.path):
                    self._check(allow_empty=True)
                    self.db.execute("PRAGMA journal_mode=WAL")
                    # WAL + NORMAL survives a process crash
                    self.db.execute("PRAGMA synchronous=NORMAL")
                    if self._tables() and "pool" not in self._columns("completions"):
                        self._migrate_v1()
                    self.db.executescript(SCHEMA)
                    self.set_meta("version", VERSION)
            except BaseException:
                self.db.close()
                raise
        else:
            if not self.path.is_file():
                what = "does not exist" if not self.path.exists() else "is not a regular file"
                raise StoreError(f"store {str(self.path)!r} {what}; give the store.sqlite of "
                                 "an iapo run")
            # without a -wal file the store is fully checkpointed: read it as immutable, or
            # SQLite would create -wal and -shm files beside it (and leave them)
            immutable = "" if Path(f"{self.path}-wal").exists() else "&immutable=1"
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro{immutable}",
                                      uri=True, timeout=30.0)
            try:
                with store_errors(self.path):
                    self._check(allow_empty=False)
                    if "pool" not in self._columns("completions"):
                        raise StoreError(f"{self.path} was written by an older iapo; open it "
                                         "once with `iapo optimize` or `iapo collect` to "
                                         "upgrade it")
            except BaseException:
                self.db.close()
                raise

    def _tables(self) -> set[str]:
        try:
            rows = self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            return {r[0] for r in rows}
        except sqlite3.DatabaseError as e:
            if "malformed" in str(e):  # an SQLite file with a damaged page
                raise store_failure(self.path, e) from e
            raise StoreError(f"{self.path} is not an SQLite database ({e}); give the "
                             f"store.sqlite of an iapo run{_OR_LOG}") from e

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}

    def _check(self, allow_empty: bool) -> None:
        tables = self._tables()
        if not tables and allow_empty:
            return
        missing = {"meta", "arms", "queries", "completions"} - tables
        if missing:
            raise StoreError(f"{self.path} is not an iapo completion store (it lacks the "
                             f"tables {sorted(missing)}); give the store.sqlite of an iapo "
                             f"run{_OR_LOG}")

    def _migrate_v1(self) -> None:
        """Stores of version 1 keyed completions by (arm, query id): compute each one's pool
        from the recorded arm and query text, keep everything else, and mark the scores for
        recomputation."""
        arms = {a: (m, t, s, json.loads(d)) for a, m, _, t, s, d in
                self.db.execute("SELECT arm, model, prompt_name, template, system, decoding "
                                "FROM arms")}
        queries = dict(self.db.execute("SELECT id, query FROM queries"))
        old = self.db.execute(
            "SELECT arm, query_id, sample, text, answer, scores, failures, prompt_tokens, "
            "completion_tokens, latency, seed, created FROM completions").fetchall()
        rows = []
        for arm, qid, sample, *rest in old:
            model, template, system, decoding = arms[arm]
            pool = pool_key(model, render(template, system, queries[qid]), decoding)
            text, ans, sc, fl, pt, ct, lat, seed, created = rest
            rows.append((pool, sample, arm, qid, text, ans, sc, fl, None, pt, ct, None, 0, "[]",
                         None, None, lat, seed, created))
        with self.db:
            self.db.execute("ALTER TABLE completions RENAME TO completions_v1")
            self.db.executescript(SCHEMA)
            self.db.executemany(f"INSERT OR IGNORE INTO completions ({_COLUMNS}, created) "
                                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.db.execute("DROP TABLE completions_v1")

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

    # ---------------------------------------------------------------- runs
    def start_run(self, command: str, task: str, digest: str, seed: int | None) -> int:
        with self.db:
            cur = self.db.execute(
                "INSERT INTO runs (command, task, digest, seed, started, status) "
                "VALUES (?, ?, ?, ?, ?, 'running')", (command, task, digest, seed, time.time()))
        return int(cur.lastrowid or 0)

    def update_run(self, run: int, paid: int, replayed: int, tokens: int,
                   status: str | None = None) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET paid = ?, replayed = ?, tokens = ? WHERE id = ?",
                            (paid, replayed, tokens, run))
            if status is not None:
                self.db.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?",
                                (status, time.time(), run))

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first; a run still 'running' that holds no lock was interrupted."""
        cur = self.db.execute("SELECT id, command, task, digest, seed, started, finished, "
                              "status, paid, replayed, tokens FROM runs ORDER BY id")
        keys = ("id", "command", "task", "digest", "seed", "started", "finished", "status",
                "paid", "replayed", "tokens")
        return [dict(zip(keys, r, strict=True)) for r in cur]

    # ---------------------------------------------------------------- completions
    def put(self, c: StoredCompletion) -> None:
        """Store one completion and commit it at once (the first write of a sample wins)."""
        self.put_all([c])

    def put_all(self, rows: Sequence[StoredCompletion],
                meta: dict[str, Any] | None = None) -> None:
        """Store the completions of one request in one transaction: all of them or none
        (a request with n > 1 is seeded once, so a resume must ask for the same n again).
        ``meta``: metadata written in the same transaction (a batch's results and its
        submission's end, :mod:`iapo.live.batch`)."""
        with self.db:
            self._insert(rows, "INSERT OR IGNORE")
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in (meta or {}).items()])

    def _insert(self, rows: Sequence[StoredCompletion], verb: str) -> None:
        """Insert completions inside the caller's transaction."""
        now = time.time()
        self.db.executemany(
            f"{verb} INTO completions ({_COLUMNS}, created) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(c.pool, c.sample, c.arm, c.query_id, c.text, c.answer, json.dumps(c.scores),
              json.dumps(c.failures), c.score_key, c.prompt_tokens, c.completion_tokens,
              c.finish_reason, c.retries, json.dumps(c.errors), c.endpoint, c.cost,
              c.latency, c.seed, now) for c in rows])

    def rescore(self, rows: Sequence[StoredCompletion]) -> None:
        """Replace the answer, scores, failures and score key of stored samples."""
        with self.db:
            self.db.executemany(
                "UPDATE completions SET answer = ?, scores = ?, failures = ?, score_key = ? "
                "WHERE pool = ? AND sample = ?",
                [(c.answer, json.dumps(c.scores), json.dumps(c.failures), c.score_key, c.pool,
                  c.sample) for c in rows])

    def set_costs(self, items: Sequence[tuple[str, int, float]]) -> None:
        """Record the cost charged for (pool, sample) where none is recorded yet."""
        with self.db:
            self.db.executemany("UPDATE completions SET cost = ? WHERE pool = ? AND sample = ? "
                                "AND cost IS NULL", [(c, p, s) for p, s, c in items])

    def get(self, pool: str, samples: Sequence[int]) -> dict[int, StoredCompletion]:
        """The stored completions among ``samples`` of a pool."""
        if not samples:
            return {}
        cur = self.db.execute(
            f"SELECT {_COLUMNS} FROM completions WHERE pool = ? AND sample BETWEEN ? AND ?",
            (pool, min(samples), max(samples)))
        wanted = set(samples)
        return {r[1]: _row(r) for r in cur if r[1] in wanted}

    def pool_sizes(self) -> dict[str, int]:
        """Stored samples per pool."""
        return dict(self.db.execute("SELECT pool, COUNT(*) FROM completions GROUP BY pool"))

    def counts_by_query(self) -> dict[str, int]:
        """Stored samples per query id."""
        return dict(self.db.execute("SELECT query_id, COUNT(*) FROM completions "
                                    "GROUP BY query_id"))

    def all_completions(self) -> list[StoredCompletion]:
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM completions ORDER BY pool, sample")
        return [_row(r) for r in cur]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    # ---------------------------------------------------------------- the gateway's log
    def log_served(self, request: ServedRequest, completions: Sequence[StoredCompletion],
                   query: str) -> None:
        """Log one answered request: its row, its query and its completions, in one
        transaction (all or nothing; several workers may log to one store)."""
        if request.reason not in SERVED_REASONS:
            raise ValueError(f"reason {request.reason!r} is not one of {SERVED_REASONS}")
        with self.db:
            self.db.execute("INSERT INTO queries VALUES (?, ?, ?)", (request.id, query, "null"))
            self._insert(completions, "INSERT")
            self.db.execute(f"INSERT INTO served ({_SERVED}) VALUES "
                            f"({','.join('?' * len(_SERVED_FIELDS))})",
                            tuple(getattr(request, f) for f in _SERVED_FIELDS))

    def served_request(self, request_id: str) -> ServedRequest | None:
        """The logged request of id ``request_id``, or None."""
        if "served" not in self._tables():
            return None
        row = self.db.execute(f"SELECT {_SERVED} FROM served WHERE id = ?",
                              (request_id,)).fetchone()
        return None if row is None else ServedRequest(*row)

    def add_feedback(self, rows: Sequence[Feedback]) -> None:
        """Append feedback, all of ``rows`` or none."""
        with self.db:
            self.db.executemany(
                f"INSERT INTO feedback ({', '.join(_FEEDBACK_FIELDS)}) VALUES (?,?,?,?,?,?,?)",
                [(f.request, f.created, f.caller, f.kind, f.objective, json.dumps(f.value),
                  f.source) for f in rows])

    def feedback(self) -> list[Feedback]:
        """Every feedback row, in the order it arrived ([] for a store without any)."""
        if "feedback" not in self._tables():
            return []
        cur = self.db.execute(f"SELECT {', '.join(_FEEDBACK_FIELDS)} FROM feedback ORDER BY id")
        return [Feedback(r, t, c, k, o, json.loads(v), src) for r, t, c, k, o, v, src in cur]

    def update_meta(self, keys: Sequence[str],
                    change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Read ``keys`` (None where absent) and write what ``change`` makes of them, in one
        transaction that holds off every other writer (another process's refine between
        the read and the write). Returns what ``change`` returned."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            got = {}
            for key in keys:
                row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                got[key] = None if row is None else json.loads(row[0])
            new = change(got)
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in new.items()])
        return new

    def served(self) -> list[ServedRequest]:
        """Every request logged, oldest first ([] for a store without a log)."""
        if "served" not in self._tables():
            return []
        cur = self.db.execute(f"SELECT {_SERVED} FROM served ORDER BY created, rowid")
        return [ServedRequest(*r) for r in cur]


@contextlib.contextmanager
def writer_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold the run folder's exclusive lock; a second writer gets a StoreError at once."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".iapo.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise FolderBusy(f"{folder} is in use by {holder}; wait for it to finish or give "
                             "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"iapo {what} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
