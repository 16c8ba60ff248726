"""Settings and defaults shared by the library and the command line, each written once.

Only the standard library: the command line reads these at start without importing numpy or
the gateway's web stack.

- ``DEFAULT_LEARNER`` and ``PAPER_BUDGETS``;
- :class:`ContinualSettings`, how a deployed policy keeps learning (:mod:`iapo.continual`;
  `iapo simulate`, `refine`, `monitor` and the gateway's learning pulls);
- :class:`ServeConfig`, the gateway's one configuration: every setting of `iapo serve` with
  its default. The command line's options take their defaults from it (:func:`serve_default`);
  the gateway's app reads it; with several workers it travels to each worker as JSON.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from iapo.errors import InputError

__all__ = ["DEFAULT_LEARNER", "PAPER_BUDGETS", "ContinualSettings", "ServeConfig",
           "continual_default", "serve_default"]

# the learner of `iapo train` and of task files that name none (docs/default-learner.md)
DEFAULT_LEARNER = "psst-auto"
# the training budgets T of the paper's evaluation protocol
PAPER_BUDGETS = (1000, 2000, 5000, 10000, 20000)


# how a majority-voting context moves without a drift flag (ContinualSettings.moves): the
# first is the default
MOVES = ("evidence", "pessimistic")


@dataclass(frozen=True)
class ServeConfig:
    policy: str
    task: str | None = None  # default: the task the policy embeds
    allow_task_change: bool = False
    host: str = "127.0.0.1"  # without keys, loopback only (and the Host headers allowed)
    port: int = 8000
    workers: int = 1
    keys_file: str | None = None  # else $IAPO_API_KEYS
    default_context: str | None = None
    max_n: int = 32
    upstream_timeout: float = 60.0  # seconds per upstream call
    upstream_retries: int = 2
    deadline: float | None = None  # seconds for sampling and scoring; see request_deadline
    max_concurrency: int = 16  # upstream calls in flight at once
    max_body: int = 1_000_000  # bytes
    body_timeout: float = 10.0  # seconds for a body to arrive (408 past it)
    cors_origins: tuple[str, ...] = ()  # web origins allowed to call (none by default)
    log_store: str | None = None
    replay_store: str | None = None
    limits: str | None = None  # redis://HOST:PORT/DB: the limits shared across machines
    limits_db: str | None = None  # the workers' shared counter file (set by run_gateway)
    seed: int | None = None  # of the samples (without a replay store) and of the ties
    model_name: str | None = None  # the served model's id; default: the task's name
    scoring_threads: int = 4  # scorers running at once, off the event loop
    learn_budget: float = 0.0  # learning completions per served one, at most (0: none)
    learn_per_day: int | None = None  # and at most this many a day (UTC), shared by workers
    refine_every: int | None = None  # run iapo refine on the log every N requests served
    moves: str = MOVES[0]  # how that refine moves a context (ContinualSettings.moves)
    # every this many requests served, that refine spends the saved learning budget as one
    # run of the learner on the logged queries (0: learning pulls request by request)
    retrain: int = 0

    def request_deadline(self) -> float:
        """Seconds for a request's sampling and scoring: ``deadline``, else every try of an
        upstream call and 5 s to score."""
        return self.deadline if self.deadline is not None else \
            self.upstream_timeout * (self.upstream_retries + 1) + 5.0

    def shared_limits(self) -> str | None:
        """Where the keys' usage and the gateway's counts are shared: a Redis URL or the
        workers' file; None: a private file of this process."""
        return self.limits or self.limits_db

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServeConfig:
        return cls(**{**data, "cors_origins": tuple(data.get("cors_origins", ()))})


def serve_default(name: str) -> Any:
    """The default of the gateway's setting ``name`` (for the command line's options)."""
    return next(f.default for f in dataclasses.fields(ServeConfig) if f.name == name)


@dataclass(frozen=True)
class ContinualSettings:
    """How the deployed policy keeps learning (defaults written once, here)."""

    learn_budget: float = 0.05  # learning completions per served completion, at most
    refine_every: int = 1000  # requests between refits (and the drift baselines' unit)
    # a context switches on evidence to an arm no better within a run's horizon with
    # probability at most about 1 - confidence (its switch test, Bonferroni over the
    # refits); also the level of the candidates' bounds and of a Best-of-N or mixed
    # drift move
    confidence: float = 0.95
    min_gain: float = 0.0  # a switch needs its gain's lower bound above this
    candidates: int = 8  # per context, at most
    alarm: float = 0.05  # false-alarm probability of the drift monitor within the horizon
    horizon: int = 20_000  # requests the alarm probability covers
    # refits after a drift flag during which a majority-voting context that served the
    # flagged prompt follows the per-query model's first choice (0: the flag's move only)
    recovery: int = 3
    # how a majority-voting context moves at a refit without a drift flag: "evidence" (a
    # challenger's switch test, at the horizon's level) or "pessimistic" (to the arm of
    # highest pessimistic per-query-model estimate, every refit; iapo.continual's docstring)
    moves: str = MOVES[0]
    # every this many requests, spend the saved learning budget as one run of a learner
    # (psst-auto unless the caller names another) on the traffic's queries and move every
    # context to its choice (0: no retraining; learning pulls are drawn request by request;
    # iapo.continual's docstring)
    retrain: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.learn_budget <= 1.0:
            raise InputError(f"learn budget {self.learn_budget} must lie in [0, 1] (a fraction "
                             "of the completions served)")
        for name in ("refine_every", "candidates", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name.replace('_', ' ')} {value!r} must be a positive "
                                 "integer")
        for name in ("confidence", "alarm"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise InputError(f"{name} {getattr(self, name)} must lie strictly between 0 "
                                 "and 1")
        if not math.isfinite(self.min_gain) or self.min_gain < 0:
            raise InputError(f"min gain {self.min_gain} must be a number >= 0")
        if isinstance(self.recovery, bool) or not isinstance(self.recovery, int) or \
                self.recovery < 0:
            raise InputError(f"recovery {self.recovery!r} must be an integer >= 0 (refits)")
        if self.moves not in MOVES:
            raise InputError(f"moves {self.moves!r} is unknown; use one of {', '.join(MOVES)}")
        if isinstance(self.retrain, bool) or not isinstance(self.retrain, int) or \
                self.retrain < 0:
            raise InputError(f"retrain {self.retrain!r} must be an integer >= 0 (requests "
                             "between retrainings; 0: none)")


def continual_default(name: str) -> Any:
    """The default of the continual-learning setting ``name`` (for the command line)."""
    return next(f.default for f in dataclasses.fields(ContinualSettings) if f.name == name)
