"""The policy artifact (JSON): context -> (prompt, N), with how it was learned.

Reading it needs nothing of the learners or environments (the gateway loads it); training and
evaluation are in :mod:`iapo.training`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.problem import Choice, ProblemError, Stopping

FORMAT = "iapo-policy/1"


class PolicyError(InputError):
    """A policy file is missing, malformed or does not fit the environment."""


@dataclass
class Policy:
    """A learned policy: context -> (prompt, N), with how it was learned.

    ``split`` holds the seed, the test fraction and the test-query indices; ``choices`` follow
    ``contexts`` (the grid's keys, in order). ``stopping`` is the rule its majority-voting
    arms were priced with, and so the rule they are served with (absent in a file: ``all``).
    Where the wave width is part of the arm (``stopping.widths``), each choice's ``wave``;
    and ``latency`` records the latency model of contexts that price latency
    (:meth:`iapo.latency.LatencyModel.to_dict`).
    """

    env: str
    learner: str
    budget: int
    completions_used: int
    seed: int | None
    split: dict[str, Any]
    contexts: list[str]
    choices: list[Choice]
    trace: dict[str, Any] = field(default_factory=dict)
    stopping: Stopping = field(default_factory=Stopping)
    # a live policy's deployable part (iapo.serve.core): the task it serves and its digest
    serving: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "env": self.env,
            "learner": self.learner,
            "budget": self.budget,
            "completions_used": self.completions_used,
            "seed": self.seed,
            "split": self.split,
            "stopping": self.stopping.to_dict(),
            "policy": [
                {
                    "context": key,
                    "prompt": ch.prompt,
                    "n": ch.n if ch.n is not None else "random",
                    "q_hat": None if math.isnan(ch.q_hat) else ch.q_hat,
                    "samples": ch.samples,
                    **({} if ch.wave is None else {"wave": ch.wave}),
                    **({} if ch.latency is None or math.isnan(ch.latency)
                       else {"latency": ch.latency}),
                }
                for key, ch in zip(self.contexts, self.choices, strict=True)
            ],
            "trace": self.trace,
            **({} if self.serving is None else {"serving": self.serving}),
            **({} if self.latency is None else {"latency": self.latency}),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> Policy:
        """The policy in ``data`` (parsed JSON); PolicyError naming the field (and the row)
        that is missing or of the wrong type."""
        if not isinstance(data, dict):
            raise PolicyError(f"{source}: not an iapo policy (the top level must be a JSON "
                              f"object with \"format\": \"{FORMAT}\", got {_kind(data)})")
        if data.get("format") != FORMAT:
            raise PolicyError(f"{source}: not an iapo policy (expected \"format\": \"{FORMAT}\")")
        missing = [k for k in ("env", "learner", "budget", "completions_used", "split", "policy")
                   if k not in data]
        if missing:
            raise PolicyError(f"{source}: malformed policy (missing {', '.join(missing)})")
        rows = data["policy"]
        if not isinstance(rows, list) or not rows:
            raise PolicyError(f"{source}: malformed policy (policy must be a non-empty list of "
                              f"rows, got {_kind(rows)})")
        contexts, choices = [], []
        for i, row in enumerate(rows):
            context, choice = _row(row, f"{source}: policy row {i}")
            contexts.append(context)
            choices.append(choice)
        seed = data.get("seed")
        trace = data.get("trace", {})
        if not isinstance(trace, dict):
            raise PolicyError(f"{source}: trace must be an object, got {_kind(trace)}")
        return cls(
            env=_text(data["env"], f"{source}: env"),
            learner=_text(data["learner"], f"{source}: learner"),
            budget=_whole(data["budget"], f"{source}: budget", 0),
            completions_used=_whole(data["completions_used"], f"{source}: completions_used", 0),
            seed=None if seed is None else _whole(seed, f"{source}: seed", 0),
            split=_split(data["split"], f"{source}: split"),
            contexts=contexts,
            choices=choices,
            trace=trace,
            stopping=_stopping(data.get("stopping"), f"{source}: stopping"),
            serving=_serving(data.get("serving"), f"{source}: serving"),
            latency=_object(data.get("latency"), f"{source}: latency"),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        from iapo.files import write_text_atomically

        write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n", "the policy")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        p = Path(path)
        if not p.is_file():
            what = "does not exist" if not p.exists() else "is not a regular file"
            raise PolicyError(f"policy file {str(p)!r} {what}; give the policy.json that "
                              "`iapo train` or `iapo optimize` wrote")
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise PolicyError(f"{p}: cannot be read ({e.strerror or e})") from e
        except UnicodeDecodeError as e:
            raise PolicyError(f"{p}: not a policy file (not UTF-8 text: byte {e.start} is "
                              f"{e.object[e.start:e.start + 1]!r})") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"{p}: not valid JSON ({e})") from e
        except RecursionError as e:  # the decoder recurses once per nesting level
            raise PolicyError(f"{p}: not a policy file (JSON nested too deeply)") from e
        return cls.from_dict(data, str(p))

    def test_queries(self, query_ids: Sequence[str] | None = None) -> npt.NDArray[np.int64]:
        """The test split as query indices: [X_test]. A live policy names its test queries by
        record id (strings); they are looked up in ``query_ids``, the environment's ids."""
        test = self.split.get("test", [])
        if not any(isinstance(t, str) for t in test):
            return np.asarray(test, dtype=np.int64)
        if query_ids is None:
            raise PolicyError("the policy's test split names queries by id (e.g. "
                              f"{test[0]!r}); the environment has no query ids to find them by")
        index = {q: i for i, q in enumerate(query_ids)}
        absent = [t for t in test if t not in index]
        if absent:
            shown = ", ".join(repr(t) for t in absent[:5])
            more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
            raise PolicyError(f"the environment has no queries with the policy's test ids "
                              f"{shown}{more}")
        return np.array([index[t] for t in test], dtype=np.int64)

    def check_fixed_n(self, needs: str, error: type[InputError] = InputError) -> None:
        """Raise ``error`` where the policy's learner draws N at random: ``needs`` (e.g.
        "refine needs") one fixed N per context, as the continual core does."""
        if any(c.n is None for c in self.choices):
            raise error(f"policy learner '{self.learner}' draws N at random; {needs} a fixed N "
                        "per context")

    def check_arms(self, n_prompts: int, n_max: int, contexts: Sequence[str], what: str) -> None:
        """Raise PolicyError unless the policy has exactly ``contexts`` (in order) and every
        choice is an arm of a problem with ``n_prompts`` prompts and N up to ``n_max``;
        ``what`` names that problem in the message, e.g. "environment 'math'"."""
        if self.contexts != list(contexts):
            raise PolicyError(f"the policy's contexts {self.contexts} do not match {what} "
                              f"({list(contexts)})")
        for i, (key, ch) in enumerate(zip(self.contexts, self.choices, strict=True)):
            if not 0 <= ch.prompt < n_prompts:
                raise PolicyError(f"policy row {i} (context {key!r}): prompt {ch.prompt} is not "
                                  f"a prompt of {what}, which has {n_prompts} (0..{n_prompts - 1})")
            if ch.n is not None and not 1 <= ch.n <= n_max:
                raise PolicyError(f"policy row {i} (context {key!r}): N {ch.n} is not an arm of "
                                  f"{what}, whose N_max is {n_max}")
            if bool(self.stopping.widths) != (ch.wave is not None) or (
                    ch.wave is not None and ch.n is not None and ch.wave > ch.n):
                raise PolicyError(f"policy row {i} (context {key!r}): wave {ch.wave} must be "
                                  "given, at most N, exactly where the policy's stopping has "
                                  "widths (the wave width is part of the arm)")


def _kind(value: Any) -> str:
    """How a JSON value reads in a message: its text, or its type when long."""
    text = json.dumps(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: Any, what: str, minimum: int) -> int:
    # bool is an int in Python, never in a policy file
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise PolicyError(f"{what} must be {kind}, got {_kind(value)}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{what} must be a string, got {_kind(value)}")
    return value


def _row(row: Any, where: str) -> tuple[str, Choice]:
    """One row of the policy list: (context, choice)."""
    if not isinstance(row, dict):
        raise PolicyError(f"{where} must be an object, got {_kind(row)}")
    if not isinstance(row.get("context"), str):
        raise PolicyError(f"{where}: context must be a string, got {_kind(row.get('context'))}")
    where = f"{where} (context {row['context']!r})"
    for key in ("prompt", "n"):
        if key not in row:
            raise PolicyError(f"{where}: malformed policy (missing {key})")
    n = row["n"]
    if n != "random" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise PolicyError(f"{where}: n must be a positive integer or \"random\", got {_kind(n)}")
    q_hat = row.get("q_hat")
    if q_hat is None:
        q_hat = math.nan
    elif isinstance(q_hat, bool) or not isinstance(q_hat, (int, float)) or abs(q_hat) > 1e300:
        # (the bound keeps float() from overflowing on a huge integer)
        raise PolicyError(f"{where}: q_hat must be a number or null, got {_kind(q_hat)}")
    wave, latency = row.get("wave"), row.get("latency")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)
                                or not 0 <= latency < 1e300):
        raise PolicyError(f"{where}: latency must be a number of seconds >= 0, got "
                          f"{_kind(latency)}")
    return row["context"], Choice(
        _whole(row["prompt"], f"{where}: prompt", 0),
        None if n == "random" else n,
        float(q_hat),
        _whole(row.get("samples", 0), f"{where}: samples", 0),
        None if wave is None else _whole(wave, f"{where}: wave", 1),
        None if latency is None else float(latency),
    )


def _object(value: Any, what: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise PolicyError(f"{what} must be an object, got {_kind(value)}")
    return value


def _serving(value: Any, what: str) -> dict[str, Any] | None:
    """A live policy's serving part: {"task": the task's fields, "digest": their hash}."""
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("task"), dict) or \
            not isinstance(value.get("digest"), str):
        raise PolicyError(f"{what} must be an object with \"task\" (an object) and \"digest\" "
                          f"(a string), got {_kind(value)}")
    return value


def _stopping(value: Any, what: str) -> Stopping:
    """The stopping rule object ({"rule": "all"|"decided", "wave": W}); absent: ``all``."""
    if value is None:
        return Stopping()
    if not isinstance(value, dict):
        raise PolicyError(f"{what} must be an object like {{\"rule\": \"decided\", "
                          f"\"wave\": 1}}, got {_kind(value)}")
    wave = value.get("wave", 1)
    if isinstance(wave, bool) or not isinstance(wave, int):
        raise PolicyError(f"{what}: wave must be an integer >= 1, got {_kind(wave)}")
    widths = value.get("widths", [])
    if not isinstance(widths, list) or any(isinstance(w, bool) or not isinstance(w, int)
                                           for w in widths):
        raise PolicyError(f"{what}: widths must be a list of integers >= 1, got "
                          f"{_kind(widths)}")
    try:
        return Stopping(_text(value.get("rule", "all"), f"{what}: rule"), wave, tuple(widths))
    except ProblemError as e:
        raise PolicyError(f"{what}: {e}") from e


def _split(split: Any, what: str) -> dict[str, Any]:
    """The split object; its test queries are all indices (simulated) or all record ids (live)."""
    if not isinstance(split, dict):
        raise PolicyError(f"{what} must be an object, got {_kind(split)}")
    test = split.get("test", [])
    if not isinstance(test, list):
        raise PolicyError(f"{what}: test must be a list of query indices or ids, got "
                          f"{_kind(test)}")
    for t in test:
        if not isinstance(t, str) and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
            raise PolicyError(f"{what}: test must list query indices (non-negative integers) or "
                              f"query ids (strings), got {_kind(t)}")
    if len({isinstance(t, str) for t in test}) > 1:
        raise PolicyError(f"{what}: test mixes query indices and query ids; give one kind")
    return dict(split)
