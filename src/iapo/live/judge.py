"""The ``judge`` scorer: an LLM rates each completion on a rubric from the task file.

For Best-of-N (or any objective) when no reward model is at hand. The judge is any
OpenAI-compatible chat endpoint with its own ``base_url`` and ``model`` (and optional
``api_key_env``), asked at temperature 0:

- ``mode = "rating"`` (the default): "rate the response on the rubric, reply with a number
  from lower to upper" (the objective's bounds); the reply is read by :func:`parse_rating`:
  the number after "rating"/"score"/"grade", else a fraction ("8/10", "4 out of 5", rescaled
  to the bounds unless its denominator is the upper bound), else the first number within the
  bounds. A reply with none of these is a scorer failure (the completion scores the lower
  bound and the report counts it).
- ``mode = "yes"``: "does the response meet the rubric? yes or no", one token with its top
  log-probabilities; the score is P(yes) / (P(yes) + P(no)) over the tokens that read "yes" and
  "no", mapped onto the bounds. A server that returns no log-probabilities gives 1 for a reply
  starting with yes, 0 for no (:func:`yes_probability`).

Every judgement is cached in the run's completion store (table ``judgements``, keyed by the
judge's endpoint, model, mode, rubric, bounds, query and completion text) as soon as it
arrives, so a rerun, a resume, a rescoring or another run on the same store never pays for a
judgement twice. The judge's own requests and tokens are counted apart from the policy's
completions (:attr:`JudgeScorer.usage`; ``iapo optimize`` reports them under ``judge``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from iapo.errors import InputError

MODES = ("rating", "yes")
_NUM = r"-?\d+(?:\.\d+)?"
_KEYWORD = re.compile(rf"(?i)\b(?:rating|score|grade|rate)\b\D{{0,12}}?({_NUM})")
_FRACTION = re.compile(rf"({_NUM})\s*\(?\s*(?:/|out\s+of)\s*({_NUM})", re.IGNORECASE)
_NUMBER = re.compile(_NUM)

SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY, score REAL, reply TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, created REAL NOT NULL
);
"""


def parse_rating(reply: str, lower: float, upper: float) -> float | None:
    """The rating in a judge's free-text ``reply``, within [lower, upper], or None."""
    def inside(x: float) -> bool:
        return lower <= x <= upper

    for m in _KEYWORD.finditer(reply):
        x = float(m.group(1))
        frac = _FRACTION.match(reply, m.start(1))
        if frac:  # "score: 4/5"
            return _fraction(float(frac.group(1)), float(frac.group(2)), lower, upper)
        if inside(x):
            return x
    for m in _FRACTION.finditer(reply):
        value = _fraction(float(m.group(1)), float(m.group(2)), lower, upper)
        if value is not None:
            return value
    for m in _NUMBER.finditer(reply):
        x = float(m.group(0))
        if inside(x):
            return x
    return None


def _fraction(num: float, den: float, lower: float, upper: float) -> float | None:
    """num / den as a rating in [lower, upper]: num itself when den is the upper bound,
    else rescaled; None when it is not a fraction of [0, 1]."""
    if den <= 0 or not 0 <= num <= den:
        return None
    if den == upper and lower <= num:
        return num
    return lower + num / den * (upper - lower)


def yes_probability(choice: dict[str, Any]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from a chat choice's first-token log-probabilities; without
    them, 1.0 or 0.0 from a reply that starts with yes or no; else None."""
    content = ((choice.get("logprobs") or {}).get("content") or [])
    if content:
        first = content[0]
        tops = first.get("top_logprobs") or [first]
        mass = {"yes": 0.0, "no": 0.0}
        for t in tops:
            word = str(t.get("token", "")).strip().strip(".,!").casefold()
            if word in mass and t.get("logprob") is not None:
                mass[word] += math.exp(float(t["logprob"]))
        if mass["yes"] + mass["no"] > 0:
            return mass["yes"] / (mass["yes"] + mass["no"])
    text = str((choice.get("message") or {}).get("content") or "").strip().casefold()
    first_word = re.match(r"[a-z]+", text)
    if first_word and first_word.group(0) in ("yes", "no"):
        return 1.0 if first_word.group(0) == "yes" else 0.0
    return None


def check_judge(options: dict[str, Any]) -> None:
    """Raise InputError naming the option a judge scorer is missing or has wrong."""
    if not str(options.get("base_url", "")).startswith(("http://", "https://")):
        raise InputError("scorer 'judge' needs base_url = \"http://.../v1\" (the judge's "
                         "OpenAI-compatible endpoint)")
    if not isinstance(options.get("model"), str) or not options["model"].strip():
        raise InputError("scorer 'judge' needs model = \"...\" (the judge model's name)")
    if not isinstance(options.get("rubric"), str) or not options["rubric"].strip():
        raise InputError("scorer 'judge' needs rubric = \"...\" (what the judge rates)")
    if options.get("mode", "rating") not in MODES:
        raise InputError(f"scorer 'judge': mode {options.get('mode')!r} is unknown; use one "
                         f"of {list(MODES)}")


@dataclass
class JudgeUsage:
    """The judge's own requests and tokens (apart from the policy's completions)."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "cached": self.cached,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


class JudgeScorer:
    """``judge(query, text, gold) -> score`` (module docstring); thread-safe."""

    def __init__(self, options: dict[str, Any]) -> None:
        check_judge(options)
        self.base_url = str(options["base_url"]).rstrip("/")
        self.model = str(options["model"])
        self.rubric = str(options["rubric"])
        self.mode = str(options.get("mode", "rating"))
        self.lower = float(options.get("lower", 0.0))
        self.upper = float(options.get("upper", 1.0))
        self.max_tokens = int(options.get("max_tokens", 16 if self.mode == "rating" else 1))
        self.max_retries = int(options.get("max_retries", 2))
        key_env = options.get("api_key_env")
        key = os.environ.get(str(key_env)) if key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=float(options.get("timeout", 60.0)))
        self.usage = JudgeUsage()
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._memory: dict[str, tuple[float | None, str]] = {}  # this process's judgements
        self._asking: dict[str, threading.Event] = {}  # judgements in flight, by key

    # ---------------------------------------------------------------- the cache
    def bind(self, store_path: str | os.PathLike[str]) -> None:
        """Cache judgements in the completion store at ``store_path``."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
            db = sqlite3.connect(Path(store_path), timeout=30.0, check_same_thread=False)
            db.executescript(SCHEMA)
            self._db = db

    def close(self) -> None:
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self.client.close()

    def _key(self, query: str, text: str) -> str:
        blob = json.dumps([self.base_url, self.model, self.mode, self.rubric, self.lower,
                           self.upper, query, text])
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cached(self, key: str) -> tuple[float | None, str] | None:
        with self._db_lock:
            if key in self._memory:
                return self._memory[key]
            if self._db is None:
                return None
            row = self._db.execute("SELECT score, reply FROM judgements WHERE key = ?",
                                   (key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def _remember(self, key: str, score: float | None, reply: str, pt: int, ct: int) -> None:
        with self._db_lock:
            self._memory[key] = (score, reply)
            if self._db is not None:
                with self._db:
                    self._db.execute("INSERT OR REPLACE INTO judgements VALUES (?,?,?,?,?,?)",
                                     (key, score, reply, pt, ct, time.time()))

    # ---------------------------------------------------------------- judging
    def messages(self, query: str, text: str) -> list[dict[str, str]]:
        lo, hi = f"{self.lower:g}", f"{self.upper:g}"
        if self.mode == "rating":
            ask = (f"Rate the response on the rubric. Reply with a single number from {lo} to "
                   f"{hi} and nothing else.")
            tail = f"Rating ({lo} to {hi}):"
        else:
            ask = "Does the response meet the rubric? Answer with yes or no only."
            tail = "Answer (yes or no):"
        return [{"role": "system", "content": "You are a strict, fair grader. " + ask},
                {"role": "user", "content": f"Rubric:\n{self.rubric}\n\nQuery:\n{query}\n\n"
                                            f"Response:\n{text}\n\n{tail}"}]

    def __call__(self, query: str, text: str, gold: Any) -> float:
        key = self._key(query, text)
        while True:
            hit = self._cached(key)
            if hit is not None:
                with self.usage.lock:
                    self.usage.cached += 1
                score, reply = hit
                break
            with self._db_lock:  # one request per judgement, even when two threads need it
                waiting = self._asking.get(key)
                if waiting is None:
                    self._asking[key] = threading.Event()
            if waiting is not None:
                waiting.wait()  # then it is cached (or that request failed: ask again)
                continue
            try:
                score, reply = self._ask(query, text, key)
            finally:
                with self._db_lock:
                    self._asking.pop(key).set()
            break
        if score is None:
            raise ValueError(f"the judge's reply has no {self.mode} to read: {reply[:80]!r}")
        return score

    def _ask(self, query: str, text: str, key: str) -> tuple[float | None, str]:
        body: dict[str, Any] = {"model": self.model, "messages": self.messages(query, text),
                                "temperature": 0.0, "max_tokens": self.max_tokens}
        if self.mode == "yes":
            body.update(logprobs=True, top_logprobs=10)
        data = self._post(body)
        choice = (data.get("choices") or [{}])[0]
        reply = str((choice.get("message") or {}).get("content") or "")
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        with self.usage.lock:
            self.usage.requests += 1
            self.usage.prompt_tokens += pt
            self.usage.completion_tokens += ct
        if self.mode == "rating":
            score = parse_rating(reply, self.lower, self.upper)
        else:
            p = yes_probability(choice)
            score = None if p is None else self.lower + p * (self.upper - self.lower)
        self._remember(key, score, reply, pt, ct)  # paid for: never asked again
        return score, reply

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(2.0**attempt * 0.25, 5.0))
            try:
                r = self.client.post("/chat/completions", json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                continue
            r.raise_for_status()
            data = r.json()
            if not isinstance(data, dict):
                raise ValueError("the judge's answer is not a JSON object")
            return data
        raise ConnectionError(f"the judge failed after {self.max_retries + 1} attempts "
                              f"({last})")
