"""The task file (TOML): a live model, prompts, data, scorers, contexts and the training setup.

Example (docs/live.md documents every field)::

    name = "mcq"

    [model]
    base_url = "http://127.0.0.1:8080/v1"   # any OpenAI-compatible endpoint, or a list of
                                             # replicas of one model: ["http://a/v1", ...]
    name = "smollm2"
    api_key_env = "OPENAI_API_KEY"          # optional: the key is read from this variable
    concurrency = 4                          # parallel requests
    timeout = 60                             # seconds per request
    max_retries = 5                          # on 429, 5xx, timeouts and malformed bodies
    supports_n = "auto"                      # true, false or "auto" (llama.cpp ignores n)
    batch = false                            # optional: training's rounds as batch jobs
                                             # (/v1/files and /v1/batches; docs/live.md)

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
    # labels = ["yes", "no"]                 # only with extractor = "label": the answers
    truncated = "explicit"                   # a completion cut by max_tokens: only an explicit
                                             # answer counts ("any": the last number as well)
    no_answer = "abstain"                    # MV: "no answer" wins only if all abstain
                                             # ("vote": a category like any other)

    [contexts]
    weights = [[1.0]]                        # one weight per objective, in [0, 1]
    budgets = { low = 0.0, mid = 0.2, high = 1.0 }   # cost weight of each budget level
    # latency = ["budget=mid", "budget=mid,latency=0.0003", "budget=mid,limit=20"]
                                             # optional: the contexts, each with a weight per
                                             # second of latency and/or a limit in seconds
                                             # on the mean (limit) or the p95 (p95)

    [train]
    n_max = 4
    learner = "psst-auto"
    budget = 40
    seed = 0
    cost_scale = 0.01                        # cost of a completion of the wordiest prompt
    stop = "all"                             # MV only: "decided" stops once the vote is decided
    wave = 1                                 # with stop = "decided": completions drawn at once
                                             # ("auto": the width is part of the arm)
    # latency_pilot = 16                     # timed completions per prompt for the latency
                                             # model, where contexts price latency

    [pricing]                                # optional: what iapo optimize --dry-run prices
    input_per_million = 0.15                 # money per million prompt tokens
    output_per_million = 0.6                 # money per million completion tokens
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iapo.errors import InputError
from iapo.learners import DEFAULT_LEARNER, get_learner
from iapo.problem import (
    NO_ANSWER_RULES,
    ContextGrid,
    CostObjective,
    Objective,
    Problem,
    ProblemError,
    Stopping,
)

DECODING_KEYS = ("temperature", "top_p", "max_tokens")

# The keys each table takes; anything else is a typo that would otherwise be ignored silently.
TASK_KEYS = ("name", "model", "prompts", "data", "objectives", "aggregator", "contexts", "train",
             "pricing")
# how training asks for its completions as batch jobs (iapo.live.batch): they change what a
# run pays and how long it takes, never which completions it draws
BATCH_KEYS = ("batch", "batch_poll_seconds", "batch_window", "batch_price",
              "batch_wait_seconds")
MODEL_KEYS = ("base_url", "name", "api_key_env", "concurrency", "timeout", "max_retries",
              "supports_n", *BATCH_KEYS)
PROMPT_KEYS = ("name", "template", "system", *DECODING_KEYS)
DATA_KEYS = ("path", "test_fraction")
OBJECTIVE_KEYS = ("name", "scorer", "lower", "upper")
AGGREGATOR_KEYS = ("kind", "extractor", "labels", "truncated", "no_answer")
TRUNCATED_MODES = ("explicit", "any")  # aggregator.truncated; the first is the default
CONTEXT_KEYS = ("weights", "budgets", "probabilities", "latency")
TRAIN_KEYS = ("n_max", "learner", "budget", "seed", "cost_scale", "stop", "wave",
              "latency_pilot")
PRICING_KEYS = ("input_per_million", "output_per_million")
# The options each scorer reads, beside name, scorer, lower and upper (see iapo.live.scorers).
SCORER_OPTIONS: dict[str, tuple[str, ...]] = {
    "exact_match": (),
    "math": (),
    "multiple_choice": ("choices",),
    "numeric": ("tolerance",),
    "python": ("callable",),
    "http": ("url", "timeout"),
    "label": ("labels",),
    "judge": ("base_url", "model", "rubric", "mode", "api_key_env", "timeout", "max_tokens",
              "max_retries"),
}

# Upper limits: past them a value is a typo, and would fail much later (out of memory, a run
# that never ends) instead of here.
MAX_N = 1024
MAX_BUDGET = 10**9
MAX_CONCURRENCY = 1024
MAX_RETRIES = 100
MAX_TIMEOUT = 86_400.0  # seconds: a day
MAX_TABLE_CELLS = 10**7  # contexts x prompts x n_max, the size of each exact and Q table
MAX_TASK_BYTES = 16 * 2**20
MAX_TEMPERATURE = 10.0


class TaskError(InputError):
    """The task file is wrong; the message names the field and says what to do."""


def _show(value: Any) -> str:
    """``repr(value)``, shortened: a message quotes the value, not a whole huge list."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


_KIND_NAMES = {dict: "a table", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true or false"}


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = (kind,) if isinstance(kind, type) else kind
    if float in kinds:
        return "a number"
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def _get(table: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...],
         default: Any = ..., ) -> Any:
    if key not in table:
        if default is ...:
            raise TaskError(f"{where}.{key} is missing; give it")
        return default
    value = table[key]
    kinds = (kind,) if isinstance(kind, type) else kind
    if isinstance(value, bool) and bool not in kinds:
        raise TaskError(f"{where}.{key} must be {_kind_name(kind)}, not {value!r}")
    if not isinstance(value, kind):
        raise TaskError(f"{where}.{key} must be {_kind_name(kind)}; got {_show(value)}")
    return value


def _check_keys(table: Mapping[str, Any], known: Sequence[str], what: str) -> None:
    unknown = [k for k in table if k not in known]
    if unknown:
        listed = ", ".join(repr(k) for k in unknown)
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(f"{what} has unknown key{'s' if len(unknown) > 1 else ''} {listed}"
                        f"{hint}; known: {', '.join(known)}")


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return math.inf


def _bounds(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """``"lie in (0, 1]"``, or ``"be > 0"`` with no upper bound."""
    if high == math.inf:
        return f"be {'>' if low_open else '>='} {low:g}"
    return f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _number(table: Mapping[str, Any], key: str, where: str, default: Any = ..., *,
            low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> float:
    """A finite number ``table[key]`` in the given interval."""
    value = _get(table, key, where, (int, float), default)
    x = _as_float(value)
    if not math.isfinite(x):
        raise TaskError(f"{where}.{key} is {_show(value)}; give a finite number")
    if not ((low < x if low_open else low <= x) and (x < high if high_open else x <= high)):
        raise TaskError(f"{where}.{key} = {x:g} must {_bounds(low, high, low_open, high_open)}")
    return x


def _integer(table: Mapping[str, Any], key: str, where: str, default: Any = ..., *,
             low: int, high: int | None = None, why: str = "") -> int:
    """An integer ``table[key]`` in [low, high]; ``why`` explains the upper limit."""
    value: int = _get(table, key, where, int, default)
    if value < low:
        raise TaskError(f"{where}.{key} = {_show(value)} must be at least {low}")
    if high is not None and value > high:
        raise TaskError(f"{where}.{key} = {_show(value)} is too large; give at most {high:,}"
                        f"{why}")
    return value


def _table(table: Mapping[str, Any], key: str, where: str, known: Sequence[str]) -> dict[str, Any]:
    """The sub-table ``[key]``, with no keys but the ``known`` ones."""
    sub: dict[str, Any] = _get(table, key, where, dict)
    _check_keys(sub, known, f"[{key}]")
    return sub


def _rows(raw: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """The array of tables ``[[key]]``: a non-empty list whose every row is a table."""
    if key not in raw:
        raise TaskError(f"task.{key} is missing; give at least one [[{key}]] table")
    rows = raw[key]
    if not isinstance(rows, list):
        raise TaskError(f"task.{key} must be a list of [[{key}]] tables; got {_show(rows)}")
    if not rows:
        raise TaskError(f"task has no [[{key}]]; give at least one")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TaskError(f"{key}[{i}] must be a table (a [[{key}]] section); got {_show(row)}")
    return rows


def _labels(value: Any, name: str) -> tuple[str, ...]:
    """A non-empty list of non-empty strings, distinct ignoring case."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(x, str) and x.strip() for x in value)):
        raise TaskError(f"{name} must be a non-empty list of non-empty strings, e.g. "
                        f"[\"yes\", \"no\"]; got {_show(value)}")
    if len({x.casefold() for x in value}) != len(value):  # labels are read ignoring case
        raise TaskError(f"{name} = {_show(value)} lists a label twice (case is ignored); "
                        "list each once")
    return tuple(value)


def _read_text(path: Path) -> str:
    """The file's text, decoded as UTF-8 (a leading byte-order mark is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TaskError(f"{path} cannot be read ({e.strerror}); check its permissions") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TaskError(f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at position "
                        f"{e.start}, line {line}); save it as UTF-8") from e
    return text.removeprefix("\ufeff")


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


def without_batch(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw task without the model's batch settings (:data:`BATCH_KEYS`)."""
    model = raw.get("model")
    if not isinstance(model, dict) or not set(model) & set(BATCH_KEYS):
        return raw
    return {**raw, "model": {k: v for k, v in model.items() if k not in BATCH_KEYS}}


@dataclass(frozen=True)
class ModelSpec:
    base_url: str  # the replicas' base URLs separated by spaces: one URL for one replica
    name: str
    api_key_env: str | None = None
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 5
    supports_n: bool | None = None  # None: find out from the first response
    batch: bool = False  # training's rounds as OpenAI Batch jobs (iapo.live.batch)
    batch_poll_seconds: float = 30.0  # the longest wait between two looks at a batch
    batch_window: str = "24h"  # the completion window asked for
    batch_price: float = 0.5  # a batch completion's price, as a fraction of a synchronous one
    batch_wait_seconds: float | None = None  # how long optimize waits (None: the window)

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The replicas' base URLs, in the task file's order."""
        return tuple(self.base_url.split())

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
class Pricing:
    """The model's prices, in money per million tokens (any currency: the dry run's money is
    in the same)."""

    input_per_million: float
    output_per_million: float

    def money(self, input_tokens: float, output_tokens: float) -> float:
        """What the tokens cost at these prices."""
        return (input_tokens * self.input_per_million
                + output_tokens * self.output_per_million) / 1e6


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
    labels: tuple[str, ...] | None = None  # the answers of extractor "label"
    stopping: Stopping = field(default_factory=Stopping)  # how MV arms stop
    pricing: Pricing | None = None  # [pricing]: only the dry run reads it
    # how the numeric, multiple-choice and label extractors and scorers read a completion cut
    # by max_tokens: "explicit" (only an explicit answer, iapo.live.scorers.EXPLICIT) or "any"
    truncated: str = TRUNCATED_MODES[0]
    # how majority voting counts "no answer" (iapo.utility.counted_votes): "abstain" or "vote"
    no_answer: str = NO_ANSWER_RULES[0]
    # contexts.latency: the contexts, each one of the grid's with a latency weight and/or limit
    latency_contexts: tuple[str, ...] = ()
    # train.latency_pilot: the timed completions per prompt a latency model is fitted from
    latency_pilot: int = 16

    def digest(self) -> str:
        """A hash of the task's content (not its path); a list of one base URL hashes as the
        URL itself. ``[pricing]`` and the model's batch settings are left out: prices and how
        completions are asked for change no run."""
        raw = without_batch({k: v for k, v in self.raw.items() if k != "pricing"})
        model = raw.get("model")
        if isinstance(model, dict) and isinstance(model.get("base_url"), list) \
                and len(model["base_url"]) == 1:
            raw = {**raw, "model": {**model, "base_url": model["base_url"][0]}}
        return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]

    def grid(self) -> ContextGrid:
        objectives = [Objective(o.name, o.lower, o.upper) for o in self.objectives]
        grid = ContextGrid.product(objectives, self.weights, self.budgets, self.probabilities)
        return grid.with_latency(self.latency_contexts) if self.latency_contexts else grid

    def problem(self) -> Problem:
        return Problem(self.name, self.aggregator, tuple(p.name for p in self.prompts),  # type: ignore[arg-type]
                       self.n_max, self.grid(), CostObjective("cost", self.cost_scale),
                       self.stopping, self.no_answer, answers=self.declared_answers())

    def declared_answers(self) -> int | None:
        """How many answers a majority-voting query can get, where the task declares them: a
        label extractor's labels, and under the vote rule "no answer" beside them (a category
        like any other); None where it declares none, or fewer than two."""
        if self.aggregator != "mv" or self.extractor != "label" or not self.labels:
            return None
        count = len(self.labels) + (self.no_answer == "vote")
        return count if count >= 2 else None


def load_task(path: str | os.PathLike[str]) -> Task:
    """Read and validate a task file; every error names the field."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"task file {str(p)!r} does not exist")
    size = p.stat().st_size
    if size > MAX_TASK_BYTES:
        raise TaskError(f"task file {str(p)!r} is {size:,} bytes; a task file is at most "
                        f"{MAX_TASK_BYTES:,} bytes: is it the right file?")
    text = _read_text(p)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TaskError(f"{p}: not valid TOML ({e})") from e
    except RecursionError as e:
        raise TaskError(f"{p}: nested too deeply to read; a task file needs only tables of "
                        "plain values and lists") from e
    try:
        return task_from_dict(raw, p)
    except RecursionError as e:
        raise TaskError(f"{p}: a value is nested too deeply; give plain values and lists") from e


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _base_urls(m: dict[str, Any]) -> tuple[str, ...]:
    """``model.base_url``: one URL or a non-empty list of distinct URLs (replicas of one
    model), each http:// or https://, trailing slashes dropped."""
    value = _get(m, "base_url", "model", (str, list))
    urls = [value] if isinstance(value, str) else value
    if not urls:
        raise TaskError("model.base_url is an empty list; give at least one endpoint, e.g. "
                        "[\"http://127.0.0.1:8080/v1\"]")
    out = []
    for url in urls:
        if not isinstance(url, str):
            raise TaskError(f"model.base_url must list URLs (strings); got {_show(url)}")
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TaskError(f"model.base_url {url!r} must start with http:// or https://")
        if len(url.split()) > 1:
            raise TaskError(f"model.base_url {url!r} has a space in it; give several replicas "
                            "as a list: [\"http://a/v1\", \"http://b/v1\"]")
        if url in out:
            raise TaskError(f"model.base_url lists {url!r} twice; list each replica once")
        out.append(url)
    return tuple(out)


def _model(m: dict[str, Any]) -> ModelSpec:
    supports = m.get("supports_n", "auto")
    if not (isinstance(supports, bool) or supports == "auto"):
        raise TaskError(f"model.supports_n must be true, false or \"auto\"; got {_show(supports)}")
    return ModelSpec(
        base_url=" ".join(_base_urls(m)),
        name=_get(m, "name", "model", str),
        api_key_env=_get(m, "api_key_env", "model", str, None),
        concurrency=_integer(m, "concurrency", "model", 4, low=1, high=MAX_CONCURRENCY),
        timeout=_number(m, "timeout", "model", 60.0, low=0.0, high=MAX_TIMEOUT, low_open=True),
        max_retries=_integer(m, "max_retries", "model", 5, low=0, high=MAX_RETRIES),
        supports_n=None if supports == "auto" else supports,
        batch=_get(m, "batch", "model", bool, False),
        batch_poll_seconds=_number(m, "batch_poll_seconds", "model", 30.0, low=0.0,
                                   high=MAX_TIMEOUT, low_open=True),
        batch_window=_window(m),
        batch_price=_number(m, "batch_price", "model", 0.5, low=0.0, high=1.0),
        batch_wait_seconds=(None if "batch_wait_seconds" not in m else _number(
            m, "batch_wait_seconds", "model", low=0.0)),
    )


def _window(m: dict[str, Any]) -> str:
    from iapo.live.batch import window_seconds

    window = _get(m, "batch_window", "model", str, "24h")
    try:
        window_seconds(window)
    except InputError as e:
        raise TaskError(f"model.{e}") from None
    return window


def _prompt(row: dict[str, Any], i: int) -> PromptSpec:
    where = f"prompts[{i}]"
    pname = _get(row, "name", where, str, f"p{i}")
    _check_keys(row, PROMPT_KEYS, f"prompt '{pname}'")
    template = row.get("template")
    if not isinstance(template, str) or not template:
        raise TaskError(f"prompt '{pname}' has no template; give one with {{query}} in it")
    if "{query}" not in template:
        raise TaskError(f"prompt '{pname}' template has no {{query}} placeholder")
    decoding: dict[str, float | int] = {}
    if "temperature" in row:
        _number(row, "temperature", where, low=0.0, high=MAX_TEMPERATURE)
    if "top_p" in row:
        _number(row, "top_p", where, low=0.0, high=1.0, low_open=True)
    if "max_tokens" in row:
        tokens = _number(row, "max_tokens", where, low=1.0)
        if int(tokens) != tokens:
            raise TaskError(f"prompt '{pname}' max_tokens must be a positive integer")
    for key in DECODING_KEYS:
        if key in row:
            decoding[key] = row[key]
    return PromptSpec(pname, template, _get(row, "system", where, str, None), decoding)


def _scorer_options(options: dict[str, Any], where: str) -> None:
    """Check the value of each scorer option in ``options``; the keys are checked already."""
    if "choices" in options:
        choices = options["choices"]
        if not (isinstance(choices, str) and choices.isascii() and choices.isalpha()):
            raise TaskError(f"{where}.choices must be the option letters, e.g. \"ABCD\"; got "
                            f"{_show(choices)}")
    if "tolerance" in options:
        _number(options, "tolerance", where, low=0.0)
    if "callable" in options:
        _get(options, "callable", where, str)
    if "url" in options:
        _get(options, "url", where, str)
    if "timeout" in options:
        _number(options, "timeout", where, low=0.0, high=MAX_TIMEOUT, low_open=True)
    if "labels" in options:
        _labels(options["labels"], f"{where}.labels")
    for key in ("base_url", "model", "rubric", "mode", "api_key_env"):  # the judge's
        if key in options:
            _get(options, key, where, str)
    if "max_tokens" in options:
        _integer(options, "max_tokens", where, low=1, high=4096)
    if "max_retries" in options:
        _integer(options, "max_retries", where, low=0, high=MAX_RETRIES)


def _objective(row: dict[str, Any], i: int, path: Path) -> ObjectiveSpec:
    from iapo.live.scorers import SCORERS, check_scorer

    where = f"objectives[{i}]"
    oname = _get(row, "name", where, str)
    scorer = _get(row, "scorer", where, str)
    if scorer in SCORERS:  # an unknown scorer is reported by check_scorer below
        allowed = (*OBJECTIVE_KEYS, *SCORER_OPTIONS.get(scorer, ()))
        _check_keys(row, allowed, f"objective '{oname}' (scorer {scorer!r})")
    lower = _number(row, "lower", where, 0.0, low=-math.inf)
    upper = _number(row, "upper", where, 1.0, low=-math.inf)
    if not lower < upper:
        raise TaskError(f"{where}.lower = {lower:g} must be below {where}.upper = {upper:g}")
    options = {k: v for k, v in row.items() if k not in OBJECTIVE_KEYS}
    _scorer_options(options, where)
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
    return ObjectiveSpec(oname, scorer, lower, upper, options)


def task_from_dict(raw: dict[str, Any], path: Path) -> Task:
    from iapo.live.scorers import EXTRACTORS

    _check_keys(raw, TASK_KEYS, "the task file")
    name = _get(raw, "name", "task", str, path.stem)
    model = _model(_table(raw, "model", "task", MODEL_KEYS))

    prompts = [_prompt(row, i) for i, row in enumerate(_rows(raw, "prompts"))]
    names = [pr.name for pr in prompts]
    if len(set(names)) != len(names):
        raise TaskError(f"prompt names {names} must be distinct")

    d = _table(raw, "data", "task", DATA_KEYS)
    data_path = Path(_get(d, "path", "data", str))
    if not data_path.is_absolute():
        data_path = (path.parent / data_path).resolve()
    test_fraction = _number(d, "test_fraction", "data", 0.2, low=0.0, high=1.0, low_open=True,
                            high_open=True)

    objectives = [_objective(row, i, path) for i, row in enumerate(_rows(raw, "objectives"))]

    a = _table(raw, "aggregator", "task", AGGREGATOR_KEYS)
    kind = _get(a, "kind", "aggregator", str)
    if kind not in ("bon", "mv", "mixed"):
        raise TaskError(f"aggregator.kind {kind!r} must be bon, mv or mixed")
    # "label" is named here as well, for a scorers module that does not list it yet
    extractors = sorted({*EXTRACTORS, "label"})
    extractor = _get(a, "extractor", "aggregator", str, None)
    if kind in ("mv", "mixed") and extractor is None:
        raise TaskError(f"aggregator.extractor is missing; {kind} needs one of {extractors}")
    if extractor is not None and extractor not in extractors:
        raise TaskError(f"aggregator.extractor {extractor!r} is unknown; use one of "
                        f"{extractors}")
    labels = None
    if extractor == "label":
        if "labels" not in a:
            raise TaskError("aggregator.extractor = \"label\" needs aggregator.labels = "
                            "[\"yes\", \"no\", ...]")
        labels = _labels(a["labels"], "aggregator.labels")
    elif "labels" in a:
        raise TaskError("aggregator.labels is read only with aggregator.extractor = \"label\"; "
                        "remove it or set the extractor to \"label\"")
    if kind == "mv" and len(objectives) != 1:
        raise TaskError("aggregator.kind = \"mv\" takes exactly one objective (correctness)")
    truncated = _get(a, "truncated", "aggregator", str, TRUNCATED_MODES[0])
    if truncated not in TRUNCATED_MODES:
        raise TaskError(f"aggregator.truncated {truncated!r} must be \"explicit\" (a completion "
                        "cut by max_tokens counts only an explicit answer, such as \"the answer "
                        "is 7\") or \"any\" (its last number or letter counts too)")
    no_answer = _get(a, "no_answer", "aggregator", str, NO_ANSWER_RULES[0])
    if no_answer not in NO_ANSWER_RULES:
        raise TaskError(f"aggregator.no_answer {no_answer!r} must be \"abstain\" (\"no answer\" "
                        "wins only where every completion abstains) or \"vote\" (it is a vote "
                        "like any other answer)")

    c = _table(raw, "contexts", "task", CONTEXT_KEYS)
    weights = []
    for i, w in enumerate(_get(c, "weights", "contexts", list)):
        if not isinstance(w, list) or len(w) != len(objectives):
            raise TaskError(f"contexts.weights[{i}] must list {len(objectives)} weight(s), one "
                            "per objective")
        if not all(_is_number(x) and 0.0 <= _as_float(x) <= 1.0 for x in w):
            raise TaskError(f"contexts.weights[{i}] = {_show(w)}: every weight must be a finite "
                            "number in [0, 1]")
        weights.append(tuple(float(x) for x in w))
    budgets = {}
    for b, v in _get(c, "budgets", "contexts", dict).items():
        if not _is_number(v) or not 0.0 <= _as_float(v) < math.inf:
            raise TaskError(f"contexts.budgets.{b} = {_show(v)} must be a finite number >= 0 "
                            "(the cost weight)")
        budgets[str(b)] = float(v)
    probs = c.get("probabilities")
    if probs is not None and (not isinstance(probs, list)
                              or not all(_is_number(x) for x in probs)):
        raise TaskError("contexts.probabilities must be a list of numbers, one per context "
                        "(weight vectors x budget levels)")
    if probs is not None and not all(0.0 <= _as_float(x) <= 1.0 for x in probs):
        raise TaskError(f"contexts.probabilities = {_show(probs)}: every probability must be a "
                        "finite number in [0, 1]")

    latency = c.get("latency", [])
    if not isinstance(latency, list) or not all(isinstance(x, str) for x in latency):
        raise TaskError("contexts.latency must be a list of contexts such as "
                        "\"budget=mid,latency=0.0003\" or \"budget=mid,limit=20\" (each one of "
                        "the grid's contexts with a latency weight per second and/or a limit "
                        "on the mean or the p95, e.g. \"budget=mid,p95=30\")")
    if latency and probs is not None:
        raise TaskError("contexts.latency lists the contexts, equally likely: remove "
                        "contexts.probabilities")
    latency = tuple(latency)
    t = _table(raw, "train", "task", TRAIN_KEYS)
    n_max = _integer(t, "n_max", "train", low=1, high=MAX_N,
                     why=" (the exact tables and Q tables are [contexts, prompts, n_max])")
    learner = _get(t, "learner", "train", str, DEFAULT_LEARNER)
    try:
        get_learner(learner)
    except ValueError as e:
        raise TaskError(f"train.learner {learner!r} cannot be used: {e}") from e
    budget = _integer(t, "budget", "train", low=0, high=MAX_BUDGET)
    seed = _integer(t, "seed", "train", 0, low=0)
    cost_scale = _number(t, "cost_scale", "train", 0.01, low=0.0, low_open=True)
    stop = _get(t, "stop", "train", str, "all")
    auto = t.get("wave") == "auto"
    wave = 1 if auto else _integer(t, "wave", "train", 1, low=1, high=MAX_N)
    if auto and stop != "decided":
        raise TaskError("train.wave = \"auto\" (the wave width as part of the arm) needs "
                        "train.stop = \"decided\"")
    try:
        stopping = Stopping.every_width(n_max) if auto else Stopping(stop, wave)
    except ProblemError as e:
        raise TaskError(f"train.stop / train.wave: {e}") from e
    pilot = _integer(t, "latency_pilot", "train", 16, low=1, high=MAX_BUDGET)
    if stopping.early and kind != "mv":
        raise TaskError(f"train.stop = {stop!r} applies to majority voting; this task's "
                        f"aggregator.kind is {kind!r}: use stop = \"all\" (or remove it)")
    pricing = None
    if "pricing" in raw:
        pr = _table(raw, "pricing", "task", PRICING_KEYS)
        pricing = Pricing(*(_number(pr, key, "pricing", low=0.0) for key in PRICING_KEYS))
    cells = len(weights) * len(budgets) * len(prompts) * n_max
    if cells > MAX_TABLE_CELLS:
        raise TaskError(
            f"contexts x prompts x train.n_max = {len(weights) * len(budgets)} x {len(prompts)} "
            f"x {n_max} = {cells:,} cells is too many (at most {MAX_TABLE_CELLS:,}): the exact "
            "and Q tables are [contexts, prompts, n_max]; use fewer contexts or prompts or a "
            "smaller train.n_max")

    task = Task(
        name=name, path=path.resolve(), model=model, prompts=tuple(prompts),
        data_path=data_path, test_fraction=test_fraction, objectives=tuple(objectives),
        aggregator=kind, extractor=extractor, weights=tuple(weights), budgets=budgets,
        probabilities=None if probs is None else tuple(float(x) for x in probs),
        n_max=n_max, learner=learner, budget=budget, seed=seed, cost_scale=cost_scale,
        raw=raw, labels=labels, stopping=stopping, pricing=pricing, truncated=truncated,
        no_answer=no_answer, latency_contexts=latency, latency_pilot=pilot,
    )
    try:
        problem = task.problem()
    except ProblemError as e:
        raise TaskError(f"contexts/train: {e}") from e
    if problem.needs_latency:
        from iapo.report import estimator_for

        estimator, _ = estimator_for(get_learner(learner).learner, problem)
        if not estimator.startswith("model"):
            raise TaskError(f"contexts.latency and train.wave = \"auto\" are priced by the "
                            f"per-query model; train.learner {learner!r} estimates Q by "
                            f"{estimator}: use \"psst-auto\" (the default) or \"psst-model\"")
    return task


@dataclass(frozen=True)
class Record:
    """One dataset item."""

    id: str
    query: str
    gold: Any = None


def load_records(path: Path) -> list[Record]:
    """Read the JSONL dataset: one {"id", "query", "gold"} object per line; "id" (a string or
    an integer) defaults to the line number, "gold" may be any JSON value or absent."""
    if not path.is_file():
        raise TaskError(f"data.path {str(path)!r} does not exist")
    records: list[Record] = []
    seen: set[str] = set()
    # split on "\n" only: JSON strings may hold other line breaks (U+2028, ...) verbatim
    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskError(f"{where}: not valid JSON ({e.msg})") from e
        except RecursionError as e:
            raise TaskError(f"{where}: nested too deeply to read") from e
        if not isinstance(obj, dict) or "query" not in obj:
            raise TaskError(f"{where}: each line needs an object with a \"query\"")
        query = obj["query"]
        if not isinstance(query, str):
            raise TaskError(f"{where}: \"query\" must be a string; got {_show(query)}")
        if not query.strip():
            raise TaskError(f"{where}: \"query\" is empty; give the question text")
        rid = obj.get("id", line_no)
        if isinstance(rid, bool) or not isinstance(rid, str | int):
            raise TaskError(f"{where}: \"id\" must be a string or an integer; got {_show(rid)}")
        rid = str(rid)
        if rid in seen:
            raise TaskError(f"{where}: id {rid!r} appears twice; ids must be unique")
        seen.add(rid)
        records.append(Record(rid, query, obj.get("gold")))
    if len(records) < 2:
        raise TaskError(f"{path}: needs at least 2 records for a train/test split")
    return records
