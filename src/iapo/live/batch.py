"""PSST's rounds as batch jobs, in the OpenAI Batch format (beyond the paper).

Optimization asks for a few large rounds of completions that nobody waits on. Most hosted
providers, and vLLM's ``run-batch``, answer such a file of requests within a window at about
half the price. Every request a round of pulls lacks in the store becomes one line:

    {"custom_id": "<pool>:<s1>,<s2>,...", "method": "POST", "url": "/v1/chat/completions",
     "body": <what the synchronous client posts: model, messages, seed, decoding, n>}

The custom id names the pool and its sample indices, so each result maps back exactly, in
any order. The body is the synchronous request's own (:func:`iapo.live.client.request_body`):
where the server's samples are reproducible, both modes store the same completions, and the
learner, which sees the same pulls in the same order, writes the same policy. A line asks for
several samples (``n``) where the server honours it; one that gets fewer choices back teaches
that it does not, as the synchronous client learns it, and the rest are asked one per line.

Two ways to run a submission (:class:`Batcher`):

- **API** (``[model] batch = true``, :class:`ApiBatches`): the lines are uploaded with
  ``/v1/files``, submitted with ``/v1/batches``, polled with backoff, and their output and
  error files downloaded.
- **files** (``iapo optimize --batch-files``, :class:`FileBatches`): the lines are written to
  ``batches/round-NN.jsonl`` in the run folder and ``optimize`` stops (exit status 3,
  :data:`WAITING`) saying what to run. A rerun reads ``round-NN.output.jsonl`` (and
  ``round-NN.errors.jsonl`` if there is one) and goes on to the next round.

**Nothing is paid twice.** A submission is named by a key: a hash of the store's id, of its
lines and of how many earlier submissions of the same lines ended. The store records the
key, with its round and uploaded file, before the batch is created; the batch carries the
key in its metadata; the batch id is recorded as soon as it is known. A resume replays the
learner on what the store holds and so reaches the same lines and the same key: it polls
the recorded batch, or finds by its metadata one created just before a crash, and never
creates a second. A batch that finished meanwhile is read as it is. Results are stored
before the submission is marked ended; lines that failed, expired or are missing from the
output are the only ones asked for again, in the next submission. A malformed output line,
or one that matches no request, is reported in one line each and asked for again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from iapo.errors import InputError, RunError
from iapo.files import write_text_atomically
from iapo.live.client import (
    RETRY_STATUS,
    Completion,
    honours_n,
    parse_completions,
    request_body,
)
from iapo.live.store import CompletionStore

if TYPE_CHECKING:
    from iapo.live.oracle import LiveOracle, TaskRuntime
    from iapo.live.task import ModelSpec

ENDPOINT = "/v1/chat/completions"  # the url of every line
TERMINAL = ("completed", "failed", "expired", "cancelled")  # a batch's final statuses
WAITING = 3  # the exit status of `iapo optimize` that stops to wait on a batch
KEY = "iapo_submission"  # the metadata field of a batch that names its submission


class BatchPending(RunError):
    """The run waits on a batch job (still running, or a file to be run): rerun later."""

    exit_code = WAITING


class Gone(RunError):
    """A batch or file the store names is no longer on the server (HTTP 404)."""


@dataclass(frozen=True)
class Line:
    """One request of a submission: samples ``samples`` of prompt ``prompt`` on record
    ``query`` (their pool ``pool``), asked with ``body``."""

    prompt: int
    query: int
    pool: str
    samples: tuple[int, ...]
    body: dict[str, Any]

    @property
    def custom_id(self) -> str:
        return f"{self.pool}:{','.join(map(str, self.samples))}"

    def to_json(self) -> str:
        return json.dumps({"custom_id": self.custom_id, "method": "POST", "url": ENDPOINT,
                           "body": self.body}, sort_keys=True)


def lines_for(runtime: TaskRuntime, missing: dict[tuple[int, int], list[int]],
              supports_n: bool | None) -> list[Line]:
    """The lines that ask for ``missing`` ({(prompt, record): sample indices}): one per
    pool with ``n`` where the server may honour it, else one per sample; each body is what
    the synchronous client would post (:meth:`iapo.live.client.ChatClient.sample`), in the
    order of their custom ids."""
    from iapo.live.oracle import sample_seed

    out = []
    for (p, q), samples in missing.items():
        prompt, record, pool = runtime.task.prompts[p], runtime.records[q], runtime.pool(p, q)
        groups = [samples] if supports_n is not False and len(samples) > 1 else \
            [[s] for s in samples]
        for group in groups:
            body = request_body(runtime.task.model.name, prompt.render(record.query),
                                prompt.decoding, sample_seed(pool, group[0]), len(group))
            out.append(Line(p, q, pool, tuple(group), body))
    return sorted(out, key=lambda line: line.custom_id)


def parse_results(text: str, lines: dict[str, Line], where: str
                  ) -> tuple[dict[str, list[Completion]], dict[str, str], list[str]]:
    """Read an output or error file of the OpenAI Batch format: (completions by custom id,
    the reason of each failed line, problems: one line for each line that is not a batch
    result or matches no request of ``lines``)."""
    done: dict[str, list[Completion]] = {}
    failed: dict[str, str] = {}
    problems: list[str] = []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            cid = row["custom_id"]
            if not isinstance(cid, str):
                raise TypeError("custom_id is not text")
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"{where} line {i}: not a batch result ({type(e).__name__}: "
                            f"{str(e)[:80]}); its request is asked for again")
            continue
        if cid not in lines:
            problems.append(f"{where} line {i}: custom_id {cid[:60]!r} matches no request of "
                            "this submission; ignored")
            continue
        response, error = row.get("response") or {}, row.get("error")
        status = response.get("status_code") if isinstance(response, dict) else None
        if error or status != 200:
            reason = error.get("message") if isinstance(error, dict) else error
            failed[cid] = str(reason or f"HTTP {status}")[:200]
            continue
        try:
            done[cid] = parse_completions(response["body"], 0.0, lines[cid].body["seed"])
        except (ValueError, KeyError, TypeError, IndexError) as e:
            problems.append(f"{where} line {i}: a malformed response body ({type(e).__name__})"
                            "; its request is asked for again")
    return done, failed, problems


@dataclass
class Outcome:
    """What one submission gave: completions by custom id, each failed line's reason, and
    where they came from (the completions' ``endpoint``)."""

    done: dict[str, list[Completion]]
    failed: dict[str, str]
    source: str


class Batcher(ABC):
    """Asks for what a round of pulls lacks as batch submissions (:meth:`fetch`); ``say``
    reports progress (a line each)."""

    def __init__(self, say: Callable[[str], None] | None = None, tries: int = 3) -> None:
        self.say = say or (lambda _line: None)
        self.tries = max(3, tries)  # a batch that expires costs a line a try
        self.submissions = 0  # submitted by this process
        self.read = 0  # submissions whose results this process stored

    def fetch(self, oracle: LiveOracle, missing: dict[tuple[int, int], list[int]]) -> None:
        """Store every sample of ``missing`` ({(prompt, record): sample indices}) through
        submissions of the lines that still lack one. A sample that got no answer in
        :attr:`tries` submissions (counted in the store, across reruns) is a RunError that
        names its line and the reason."""
        runtime, store = oracle.runtime, oracle.store
        while missing:
            lines = lines_for(runtime, missing, runtime.supports_n)
            key, record = submission(store, lines)
            outcome = self.run(store, lines, key, record)
            tries = self._keep(oracle, lines, outcome, key)
            self.read += 1
            missing = _still_missing(oracle, missing)
            spent = [line for line in lines if line.custom_id in outcome.failed and any(
                tries.get(f"{line.pool}:{s}", 0) >= self.tries for s in line.samples)]
            if spent and missing:
                line = spent[0]
                raise RunError(f"batch request {line.custom_id[:60]} failed in {self.tries} "
                               f"submissions; the last: {outcome.failed[line.custom_id]}. Fix "
                               "the cause and rerun iapo optimize: what is stored is kept")
            if missing:
                self.say(f"{sum(map(len, missing.values()))} completion(s) still missing: "
                         "asked for again")

    def _keep(self, oracle: LiveOracle, lines: Sequence[Line], outcome: Outcome, key: str
              ) -> dict[str, int]:
        """Score and store the answered lines of ``outcome``, mark the submission ``key``
        ended and count a try for each sample of a failed line, all in one transaction: a
        crash before it leaves the submission unread, and the resume reads it again. Returns
        the tries of the samples without an answer (``pool:sample``)."""
        from iapo.live.oracle import sample_seed

        runtime, store = oracle.runtime, oracle.store
        items = []
        learned: bool | None = None
        with concurrent.futures.ThreadPoolExecutor(max(1, runtime.task.model.concurrency)
                                                   ) as pool:
            for line in lines:
                got = outcome.done.get(line.custom_id)
                if not got:
                    continue
                comps = [dataclasses.replace(c, seed=sample_seed(line.pool, s),
                                             endpoint=outcome.source)
                         for c, s in zip(got, line.samples, strict=False)]
                record = runtime.records[line.query]
                scored = list(pool.map(lambda c, r=record: runtime.score(r, c.text,
                                                                         c.finish_reason),
                                       comps))
                items.append((line.prompt, line.query, line.samples[:len(comps)], comps,
                              scored))
                if len(line.samples) > 1 and runtime.supports_n is None and learned is None:
                    learned = honours_n(len(line.samples), len(got))  # as the client learns
        tries = dict(store.get_meta("batch tries", {}))
        for line in lines:
            if line.custom_id in outcome.failed:
                for s in line.samples:
                    tries[f"{line.pool}:{s}"] = tries.get(f"{line.pool}:{s}", 0) + 1
        ended = {**(store.get_meta(f"batch {key}") or {}), "done": True,
                 "failed": len(outcome.failed)}
        meta: dict[str, Any] = {f"batch {key}": ended,
                                "batch tries": tries}
        if learned is not None:
            runtime.supports_n = learned
            meta[oracle.supports_key] = learned
        oracle.keep_all(items, batch=True, meta=meta)
        return tries

    def outcome(self, files: Sequence[tuple[str, str]], lines: Sequence[Line], absent: str,
                source: str) -> Outcome:
        """The outcome of ``lines`` from the result ``files`` ((text, where) each: an output
        and an error file), each problem said; a line in neither fails as ``absent``."""
        by_id = {line.custom_id: line for line in lines}
        done: dict[str, list[Completion]] = {}
        failed: dict[str, str] = {}
        for text, where in files:
            got, bad, problems = parse_results(text, by_id, where)
            done.update(got)
            failed.update(bad)
            for problem in problems:
                self.say(problem)
        failed.update({cid: absent for cid in by_id if cid not in done and cid not in failed})
        return Outcome(done, failed, source)

    @abstractmethod
    def run(self, store: CompletionStore, lines: Sequence[Line], key: str,
            record: dict[str, Any] | None) -> Outcome:
        """Run the submission ``key`` of ``lines`` (``record``: what the store holds of it,
        None for a new one) to its end, or raise :class:`BatchPending`."""


def submission(store: CompletionStore, lines: Sequence[Line]) -> tuple[str, dict[str, Any] |
                                                                          None]:
    """The key of the submission of ``lines`` and its record in the store (None: new): the
    hash of the store's own id and the lines, and how many submissions of the same lines
    ended before. The store's id keeps another run's batch of the same lines its own."""
    own = store.get_meta("store id")
    if own is None:
        own = uuid.uuid4().hex
        store.set_meta("store id", own)
    digest = hashlib.sha256("\n".join([own, *(line.to_json() for line in lines)]).encode()
                            ).hexdigest()[:24]
    k = 0
    while True:
        key = f"{digest}-{k}"
        record = store.get_meta(f"batch {key}")
        if record is None or not record.get("done"):
            return key, record
        k += 1


def next_round(store: CompletionStore) -> int:
    """The number of a new submission: one more than the last (1 for the first)."""
    n = int(store.get_meta("batch rounds", 0)) + 1
    store.set_meta("batch rounds", n)
    return n


def _still_missing(oracle: LiveOracle, missing: dict[tuple[int, int], list[int]]
                   ) -> dict[tuple[int, int], list[int]]:
    out = {}
    for (p, q), samples in missing.items():
        have = oracle.store.get(oracle.runtime.pool(p, q), samples)
        rest = [s for s in samples if s not in have]
        if rest:
            out[(p, q)] = rest
    return out


def window_seconds(window: str) -> float:
    """A completion window such as "24h" or "90m", in seconds; InputError otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*([hm])\s*", str(window))
    if m is None or int(m.group(1)) == 0:
        raise InputError(f"batch_window {window!r} must be a number of hours or minutes, e.g. "
                         "\"24h\"")
    return int(m.group(1)) * (3600 if m.group(2) == "h" else 60)


class ApiBatches(Batcher):
    """Submissions through the server's ``/v1/files`` and ``/v1/batches`` endpoints (the
    first replica of ``model``): uploaded, created with the submission's key in their
    metadata, polled every ``poll_seconds`` at most (from 1 s, doubling), read once ended.
    A batch not ended after ``wait`` seconds raises :class:`BatchPending` with its id and
    status; a rerun picks it up."""

    def __init__(self, model: ModelSpec, poll_seconds: float = 30.0, window: str = "24h",
                 wait: float | None = None, say: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(say, model.max_retries + 1)
        self.model = model
        self.url = model.base_urls[0]
        self.poll_seconds = poll_seconds
        self.window = window
        self.wait = window_seconds(window) if wait is None else wait
        self.sleep, self.clock = sleep, clock

    def _call(self, http: httpx.Client, method: str, path: str, retries: int | None = None,
              **kw: Any) -> httpx.Response:
        """One call of the batch API, retried on a connection error, 429 or 5xx (at most
        ``retries`` times; default ``model.max_retries``). A 404 of a batch or a file is
        :class:`Gone`."""
        last = ""
        for attempt in range((self.model.max_retries if retries is None else retries) + 1):
            if attempt:
                self.sleep(min(30.0, 2.0 ** attempt))
            try:
                r = http.request(method, path, **kw)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code == 404 and path in ("/files", "/batches"):
                raise RunError(f"{self.url}{path} answered HTTP 404: the server takes no batch "
                               "jobs; run the rounds as files (iapo optimize --batch-files) or "
                               "set model.batch = false")
            if r.status_code == 404:
                raise Gone(f"{self.url}{path} answered HTTP 404")
            if r.status_code >= 400:
                raise RunError(f"{self.url}{path} answered HTTP {r.status_code}: "
                               f"{r.text[:300]}")
            return r
        raise RunError(f"{self.url}{path} failed {attempt + 1} time(s); last: {last}")

    def _json(self, http: httpx.Client, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """The JSON object a call answers; a body that is not one is a RunError naming it."""
        r = self._call(http, method, path, **kw)
        try:
            body = r.json()
            if not isinstance(body, dict) or ("id" not in body and path != "/batches"):
                raise ValueError("not an object with an id")
        except ValueError as e:
            raise RunError(f"{self.url}{path} answered a body that is not a batch API object "
                           f"({e}): {r.text[:200]!r}") from None
        return dict(body)

    def _find(self, http: httpx.Client, key: str, since: float) -> dict[str, Any] | None:
        """The batch created for the submission ``key`` (by its metadata), if any, among
        the batches created since ``since`` (seconds since the epoch; newest first)."""
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100} | ({"after": after} if after else {})
            page = self._json(http, "GET", "/batches", params=params)
            data = page.get("data") or []
            for b in data:
                if (b.get("metadata") or {}).get(KEY) == key:
                    return dict(b)
            older = any(float(b.get("created_at") or 0) < since for b in data)
            if not page.get("has_more") or not data or older:
                return None
            after = data[-1]["id"]

    def _create(self, http: httpx.Client, key: str, rec: dict[str, Any]) -> dict[str, Any]:
        """The batch of the submission ``key``: found by its metadata (created before a
        crash, or by an attempt whose answer was lost), else created, never twice."""
        since = float(rec.get("since", 0.0))
        for attempt in range(self.model.max_retries + 1):
            found = self._find(http, key, since)
            if found is not None:
                return found
            if attempt:
                self.sleep(min(30.0, 2.0 ** attempt))
            try:  # one attempt: a lost answer may still have created it, so look first
                made = self._json(http, "POST", "/batches", retries=0, json={
                    "input_file_id": rec["file"], "endpoint": ENDPOINT,
                    "completion_window": self.window, "metadata": {KEY: key}})
            except RunError as e:
                if "answered HTTP" in str(e):  # refused: no retry makes it
                    raise
                continue  # no answer, or a lost one: look for it before asking again
            self.submissions += 1
            self.say(f"batch {made['id']}: round {rec['round']}, {rec['lines']} request(s) "
                     "submitted")
            return made
        raise RunError(f"{self.url}/batches: the batch of round {rec['round']} could not be "
                       f"created in {self.model.max_retries + 1} attempts; rerun iapo optimize "
                       "(a batch created meanwhile is found, not made again)")

    def run(self, store: CompletionStore, lines: Sequence[Line], key: str,
            record: dict[str, Any] | None) -> Outcome:
        headers = {} if self.model.api_key() is None else \
            {"Authorization": f"Bearer {self.model.api_key()}"}
        with httpx.Client(base_url=self.url, headers=headers,
                          timeout=max(self.model.timeout, 60.0)) as http:
            rec = dict(record or {})
            if "round" not in rec:  # recorded before anything is uploaded or created
                rec = {"round": next_round(store), "lines": len(lines),
                       "since": time.time() - 3600}
                store.set_meta(f"batch {key}", rec)
            if rec.get("file") is None:
                text = "".join(line.to_json() + "\n" for line in lines)
                rec["file"] = self._json(http, "POST", "/files", data={"purpose": "batch"},
                                         files={"file": (f"iapo-round-{rec['round']:02d}.jsonl",
                                                         text.encode(),
                                                         "application/jsonl")})["id"]
                store.set_meta(f"batch {key}", rec)
            if rec.get("batch") is None:
                rec["batch"] = self._create(http, key, rec)["id"]
                store.set_meta(f"batch {key}", rec)
            try:
                batch = self._poll(http, rec["batch"])
                files = [(self._call(http, "GET", f"/files/{batch[field]}/content").text,
                          f"batch {rec['batch']} {field.removesuffix('_id')}")
                         for field in ("output_file_id", "error_file_id") if batch.get(field)]
            except Gone as e:  # deleted, or its files expired: its lines are asked again
                self.say(f"batch {rec['batch']} is gone from the server ({e}): its requests "
                         "are asked for again")
                return self.outcome([], lines, f"batch {rec['batch']} is gone",
                                    f"batch {rec['batch']}")
        status = batch.get("status")
        outcome = self.outcome(files, lines, f"not in the results of batch {rec['batch']} "
                                             f"({status})", f"batch {rec['batch']}")
        if outcome.failed:
            self.say(f"batch {rec['batch']} ({status}): {len(outcome.done)} of {len(lines)} "
                     "request(s) answered")
        return outcome

    def _poll(self, http: httpx.Client, batch_id: str) -> dict[str, Any]:
        start, delay, seen = self.clock(), min(1.0, self.poll_seconds), None
        while True:
            batch = self._json(http, "GET", f"/batches/{batch_id}")
            status = batch.get("status")
            counts = batch.get("request_counts") or {}
            now = (status, counts.get("completed"), counts.get("failed"))
            if now != seen:
                seen = now
                self.say(f"batch {batch_id}: {status}, {counts.get('completed', 0)} of "
                         f"{counts.get('total', '?')} done")
            if status in TERMINAL:
                return batch
            if self.clock() - start + delay > self.wait:
                raise BatchPending(f"batch {batch_id} is {status} after {self.wait:g} s; "
                                   "rerun iapo optimize to pick it up (nothing is submitted "
                                   "again)")
            self.sleep(delay)
            delay = min(self.poll_seconds, delay * 2)


class FileBatches(Batcher):
    """Submissions as files in ``folder`` for any batch runner: ``round-NN.jsonl`` written,
    ``round-NN.output.jsonl`` (and ``round-NN.errors.jsonl``, if any) read; until the output
    is there, :class:`BatchPending` says what to run (``model``: for the commands)."""

    def __init__(self, folder: Path, model: ModelSpec, rerun: str,
                 say: Callable[[str], None] | None = None) -> None:
        super().__init__(say)
        self.folder = folder
        self.model = model
        self.rerun = rerun

    def run(self, store: CompletionStore, lines: Sequence[Line], key: str,
            record: dict[str, Any] | None) -> Outcome:
        rec = dict(record or {})
        if "round" not in rec:
            rec = {"round": next_round(store), "lines": len(lines)}
            store.set_meta(f"batch {key}", rec)
        name = f"round-{rec['round']:02d}"
        path = self.folder / f"{name}.jsonl"
        output, errors = (self.folder / f"{name}.{kind}.jsonl" for kind in ("output", "errors"))
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            write_text_atomically(path, "".join(line.to_json() + "\n" for line in lines),
                                  "the batch file")
            self.submissions += 1
        if not output.exists() and not errors.exists():  # all failed: an error file alone
            raise BatchPending(
                f"round {rec['round']}: {len(lines)} request(s) in {path}. Run them with a batch "
                f"runner, writing {output}, e.g.\n"
                f"  vllm run-batch -i {path} -o {output} --model {self.model.name}\n"
                f"  iapo run-batch {path} {output} --base-url {self.model.base_urls[0]}\n"
                f"or upload it to a provider's batch API and save its output file there (its "
                f"error file, if any, as {errors.name}); then rerun: {self.rerun}")
        files = [(f.read_text(errors="replace"), str(f)) for f in (output, errors) if f.exists()]
        return self.outcome(files, lines, f"not in {output.name}", f"batch file {name}")


def run_lines(text: str, base_url: str, api_key: str | None = None, concurrency: int = 4,
              timeout: float = 600.0, done: dict[str, str] | None = None,
              on_line: Callable[[str], None] | None = None, retries: int = 3) -> str:
    """Run the requests of a batch file against an OpenAI-compatible server and give its
    output file (one result per line, in the input's order, in the OpenAI Batch format):
    what ``iapo run-batch`` does for a server without a batch API. ``done``: results
    already at hand by custom id (not asked again); ``on_line``: called with each new
    result line as it comes (to keep it). A request is retried ``retries`` times on a
    connection error, 429 or 5xx."""
    rows = []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row.get("custom_id"), str) or not isinstance(row.get("body"),
                                                                           dict):
                raise ValueError("a line needs custom_id and body")
        except (ValueError, AttributeError) as e:
            raise InputError(f"batch file line {i}: not a batch request ({e}); give one JSON "
                             "object per line with custom_id, url and body") from None
        rows.append(row)
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    root = base_url.rstrip("/").removesuffix("/v1")
    have = dict(done or {})

    def one(row: dict[str, Any]) -> str:
        if row["custom_id"] in have:
            return have[row["custom_id"]]
        url = root + str(row.get("url") or ENDPOINT)
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(30.0, 2.0 ** (attempt - 1)))
            try:
                r = httpx.post(url, json=row["body"], headers=headers, timeout=timeout)
                status, ok = r.status_code, r.status_code == 200
                body: Any = r.json() if ok else r.text[:500]
            except (httpx.HTTPError, ValueError) as e:
                ok, body, status = False, f"{type(e).__name__}: {e}", 0
            if ok or (status and status not in RETRY_STATUS):
                break
        line = json.dumps({
            "id": f"batch_req_{hashlib.sha256(row['custom_id'].encode()).hexdigest()[:16]}",
            "custom_id": row["custom_id"],
            "response": {"status_code": status, "body": body} if status else None,
            "error": None if ok else {"code": str(status or "connection"),
                                      "message": str(body)[:300]}})
        if on_line is not None:
            on_line(line)
        return line

    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
        return "".join(line + "\n" for line in pool.map(one, rows))
