"""The task file (TOML): a live model, prompts, data, scorers, contexts and the training setup.

Example (the README's "Live path" section documents every field)::

    name = "mcq"

    [model]
    base_url = "http://127.0.0.1:8080/v1"   # any OpenAI-compatible endpoint
    name = "smollm2"
    api_key_env = "OPENAI_API_KEY"          # optional: the key is read from this variable
    concurrency = 4                          # parallel requests
    timeout = 60                             # seconds per request
    max_retries = 5                          # on 429, 5xx, timeouts and malformed bodies
    supports_n = "auto"                      # true, false or "auto" (llama.cpp ignores n)

    [[prompts]]
    name = "direct"
    template = "Question: {query}\\nAnswer with the letter only."
    system = "You are a careful assistant."  # optional
    temperature = 0.8                        # optional decoding settings
    top_p = 0.95
    max_tokens = 32

    [data]
    path = "questions.jsonl"                 # one {"id", "query", "gold"} per line
    test_fraction = 0.2

    [[objectives]]
    name = "correct"
    scorer = "multiple_choice"               # see iapo.live.scorers
    lower = 0.0
    upper = 1.0

    [aggregator]
    kind = "mv"                              # bon, mv or mixed
    extractor = "multiple_choice"            # how MV reads an answer from a completion

    [contexts]
    weights = [[1.0]]                        # one weight per objective, in [0, 1]
    budgets = { low = 0.0, mid = 0.2, high = 1.0 }   # cost weight of each budget level

    [train]
    n_max = 4
    learner = "psst"
    budget = 40
    seed = 0
    cost_scale = 0.01                        # cost of a completion of the wordiest prompt
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapo.learners import LEARNERS
from iapo.problem import ContextGrid, CostObjective, Objective, Problem, ProblemError

DECODING_KEYS = ("temperature", "top_p", "max_tokens")


class TaskError(ValueError):
    """The task file is wrong; the message names the field and says what to do."""


def _get(table: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...],
         default: Any = ..., ) -> Any:
    if key not in table:
        if default is ...:
            raise TaskError(f"{where}.{key} is missing; give it")
        return default
    value = table[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise TaskError(f"{where}.{key} must be a number, not {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TaskError(f"{where}.{key} must be a {names}; got {value!r}")
    return value


@dataclass(frozen=True)
class PromptSpec:
    """A candidate prompt: a template with ``{query}``, an optional system message and
    decoding settings (folded into the arm, as the paper does)."""

    name: str
    template: str
    system: str | None = None
    decoding: dict[str, float | int] = field(default_factory=dict)

    def render(self, query: str) -> list[dict[str, str]]:
        """Chat messages for ``query``."""
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.template.replace("{query}", query)})
        return messages


@dataclass(frozen=True)
class ModelSpec:
    base_url: str
    name: str
    api_key_env: str | None = None
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 5
    supports_n: bool | None = None  # None: find out from the first response

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if key is None:
            raise TaskError(
                f"model.api_key_env names ${self.api_key_env}, which is not set; export it"
            )
        return key


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    scorer: str
    lower: float
    upper: float
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A validated task file."""

    name: str
    path: Path
    model: ModelSpec
    prompts: tuple[PromptSpec, ...]
    data_path: Path
    test_fraction: float
    objectives: tuple[ObjectiveSpec, ...]
    aggregator: str
    extractor: str | None
    weights: tuple[tuple[float, ...], ...]
    budgets: dict[str, float]
    probabilities: tuple[float, ...] | None
    n_max: int
    learner: str
    budget: int
    seed: int
    cost_scale: float
    raw: dict[str, Any]

    def digest(self) -> str:
        """A hash of the task's content (not its path)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:16]

    def grid(self) -> ContextGrid:
        objectives = [Objective(o.name, o.lower, o.upper) for o in self.objectives]
        return ContextGrid.product(objectives, self.weights, self.budgets, self.probabilities)

    def problem(self) -> Problem:
        return Problem(self.name, self.aggregator, tuple(p.name for p in self.prompts),  # type: ignore[arg-type]
                       self.n_max, self.grid(), CostObjective("cost", self.cost_scale))


def load_task(path: str | os.PathLike[str]) -> Task:
    """Read and validate a task file; every error names the field."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"task file {str(p)!r} does not exist")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{p}: not valid TOML ({e})") from e
    return task_from_dict(raw, p)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def task_from_dict(raw: dict[str, Any], path: Path) -> Task:
    from iapo.live.scorers import EXTRACTORS, check_scorer

    name = _get(raw, "name", "task", str, path.stem)
    m = _get(raw, "model", "task", dict)
    supports = m.get("supports_n", "auto")
    if supports not in (True, False, "auto"):
        raise TaskError(f"model.supports_n must be true, false or \"auto\"; got {supports!r}")
    model = ModelSpec(
        base_url=_get(m, "base_url", "model", str).rstrip("/"),
        name=_get(m, "name", "model", str),
        api_key_env=_get(m, "api_key_env", "model", str, None),
        concurrency=_get(m, "concurrency", "model", int, 4),
        timeout=float(_get(m, "timeout", "model", (int, float), 60.0)),
        max_retries=_get(m, "max_retries", "model", int, 5),
        supports_n=None if supports == "auto" else bool(supports),
    )
    if not model.base_url.startswith(("http://", "https://")):
        raise TaskError(f"model.base_url {model.base_url!r} must start with http:// or https://")
    if model.concurrency < 1 or model.max_retries < 0 or model.timeout <= 0:
        raise TaskError("model.concurrency must be >= 1, model.max_retries >= 0 and "
                        "model.timeout > 0")

    prompt_rows = _get(raw, "prompts", "task", list)
    if not prompt_rows:
        raise TaskError("task has no [[prompts]]; give at least one")
    prompts = []
    for i, row in enumerate(prompt_rows):
        where = f"prompts[{i}]"
        if not isinstance(row, dict):
            raise TaskError(f"{where} must be a table")
        pname = _get(row, "name", where, str, f"p{i}")
        template = row.get("template")
        if not isinstance(template, str) or not template:
            raise TaskError(f"prompt '{pname}' has no template; give one with {{query}} in it")
        if "{query}" not in template:
            raise TaskError(f"prompt '{pname}' template has no {{query}} placeholder")
        decoding: dict[str, float | int] = {}
        for key in DECODING_KEYS:
            if key in row:
                decoding[key] = _get(row, key, where, (int, float))
        if "max_tokens" in decoding and (int(decoding["max_tokens"]) != decoding["max_tokens"]
                                         or decoding["max_tokens"] < 1):
            raise TaskError(f"prompt '{pname}' max_tokens must be a positive integer")
        unknown = set(row) - {"name", "template", "system", *DECODING_KEYS}
        if unknown:
            raise TaskError(f"prompt '{pname}' has unknown field(s) {sorted(unknown)}; "
                            f"known: name, template, system, {', '.join(DECODING_KEYS)}")
        prompts.append(PromptSpec(pname, template, _get(row, "system", where, str, None),
                                  decoding))
    names = [pr.name for pr in prompts]
    if len(set(names)) != len(names):
        raise TaskError(f"prompt names {names} must be distinct")

    d = _get(raw, "data", "task", dict)
    data_path = Path(_get(d, "path", "data", str))
    if not data_path.is_absolute():
        data_path = (path.parent / data_path).resolve()
    test_fraction = float(_get(d, "test_fraction", "data", (int, float), 0.2))
    if not 0 < test_fraction < 1:
        raise TaskError(f"data.test_fraction {test_fraction} must lie strictly between 0 and 1")

    obj_rows = _get(raw, "objectives", "task", list)
    if not obj_rows:
        raise TaskError("task has no [[objectives]]; give at least one")
    objectives = []
    for i, row in enumerate(obj_rows):
        where = f"objectives[{i}]"
        oname = _get(row, "name", where, str)
        scorer = _get(row, "scorer", where, str)
        lower = float(_get(row, "lower", where, (int, float), 0.0))
        upper = float(_get(row, "upper", where, (int, float), 1.0))
        options = {k: v for k, v in row.items() if k not in {"name", "scorer", "lower", "upper"}}
        target = str(options.get("callable", ""))
        if scorer == "python" and ":" in target:
            file, func = target.rsplit(":", 1)
            if file.endswith(".py") and not Path(file).is_absolute():
                # like data.path: relative to the task file
                options["callable"] = f"{(path.parent / file).resolve()}:{func}"
        try:
            check_scorer(scorer, options)
        except ValueError as e:
            raise TaskError(f"objective '{oname}': {e}") from e
        objectives.append(ObjectiveSpec(oname, scorer, lower, upper, options))

    a = _get(raw, "aggregator", "task", dict)
    kind = _get(a, "kind", "aggregator", str)
    if kind not in ("bon", "mv", "mixed"):
        raise TaskError(f"aggregator.kind {kind!r} must be bon, mv or mixed")
    extractor = _get(a, "extractor", "aggregator", str, None)
    if kind in ("mv", "mixed") and extractor is None:
        raise TaskError(f"aggregator.extractor is missing; {kind} needs one of "
                        f"{sorted(EXTRACTORS)}")
    if extractor is not None and extractor not in EXTRACTORS:
        raise TaskError(f"aggregator.extractor {extractor!r} is unknown; use one of "
                        f"{sorted(EXTRACTORS)}")
    if kind == "mv" and len(objectives) != 1:
        raise TaskError("aggregator.kind = \"mv\" takes exactly one objective (correctness)")

    c = _get(raw, "contexts", "task", dict)
    weights_raw = _get(c, "weights", "contexts", list)
    weights = []
    for i, w in enumerate(weights_raw):
        if not isinstance(w, list) or len(w) != len(objectives):
            raise TaskError(f"contexts.weights[{i}] must list {len(objectives)} weight(s), one "
                            "per objective")
        if not all(_is_number(x) and 0.0 <= x <= 1.0 for x in w):
            raise TaskError(f"contexts.weights[{i}] = {w!r}: every weight must be a number in "
                            "[0, 1]")
        weights.append(tuple(float(x) for x in w))
    budgets_raw = _get(c, "budgets", "contexts", dict)
    budgets = {}
    for b, v in budgets_raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TaskError(f"contexts.budgets.{b} must be a number (the cost weight)")
        budgets[str(b)] = float(v)
    probs = c.get("probabilities")
    if probs is not None and (not isinstance(probs, list)
                              or not all(_is_number(x) for x in probs)):
        raise TaskError("contexts.probabilities must be a list of numbers, one per context "
                        "(weight vectors x budget levels)")

    t = _get(raw, "train", "task", dict)
    n_max = _get(t, "n_max", "train", int)
    learner = _get(t, "learner", "train", str, "psst")
    if learner not in LEARNERS:
        raise TaskError(f"train.learner {learner!r} is unknown; use one of {list(LEARNERS)}")
    budget = _get(t, "budget", "train", int)
    if budget < 0:
        raise TaskError("train.budget must be >= 0")
    seed = _get(t, "seed", "train", int, 0)
    cost_scale = float(_get(t, "cost_scale", "train", (int, float), 0.01))
    if cost_scale <= 0:
        raise TaskError("train.cost_scale must be positive")

    task = Task(
        name=name, path=path.resolve(), model=model, prompts=tuple(prompts),
        data_path=data_path, test_fraction=test_fraction, objectives=tuple(objectives),
        aggregator=kind, extractor=extractor, weights=tuple(weights), budgets=budgets,
        probabilities=None if probs is None else tuple(float(x) for x in probs),
        n_max=n_max, learner=learner, budget=budget, seed=seed, cost_scale=cost_scale,
        raw=raw,
    )
    try:
        task.problem()
    except ProblemError as e:
        raise TaskError(f"contexts/train: {e}") from e
    return task


@dataclass(frozen=True)
class Record:
    """One dataset item."""

    id: str
    query: str
    gold: Any = None


def load_records(path: Path) -> list[Record]:
    """Read the JSONL dataset: one {"id", "query", "gold"} object per line."""
    if not path.is_file():
        raise TaskError(f"data.path {str(path)!r} does not exist")
    records: list[Record] = []
    seen: set[str] = set()
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{line_no}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or "query" not in obj:
            raise TaskError(f"{path}:{line_no}: each line needs an object with a \"query\"")
        rid = str(obj.get("id", line_no))
        if rid in seen:
            raise TaskError(f"{path}:{line_no}: id {rid!r} appears twice; ids must be unique")
        seen.add(rid)
        records.append(Record(rid, str(obj["query"]), obj.get("gold")))
    if len(records) < 2:
        raise TaskError(f"{path}: needs at least 2 records for a train/test split")
    return records
