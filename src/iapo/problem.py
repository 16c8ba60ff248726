"""The IAPO problem model (paper, "Problem Formulation" and "IAPO Framework").

A *context* c = (w_1..w_K, w_cost) weighs K task objectives and the cost of every completion.
An *arm* a = (p, N) fixes a prompt and the number of completions, N in 1..N_max.
A *problem* gathers the prompts, the objectives, the aggregator, the context grid, the
stopping rule of majority-voting arms and how their vote counts "no answer": what a learner
may know. Everything here is frozen and validated at construction.

The flat arm index prompt * N_max + (n - 1) (Q's last two axes flattened) has its home here:
:func:`arm_index` and its inverse :func:`arm_at`; the Q table, the learners and
:meth:`Arm.from_index` call them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError

if TYPE_CHECKING:
    from iapo.latency import LatencyModel

Aggregator = Literal["bon", "mv", "mixed"]
AGGREGATORS: tuple[str, ...] = ("bon", "mv", "mixed")
_PROB_TOL = 1e-6


class ProblemError(InputError):
    """A problem, context or arm was specified wrongly; the message says how to fix it."""


STOP_RULES: tuple[str, ...] = ("all", "decided")
# how majority voting counts "no answer" (an unreadable completion); the first is the default.
# abstain: not a candidate while any completion of the group gives an answer, so it wins only
# where every completion abstains. vote: a category like any other (the rule before abstain).
NO_ANSWER_RULES: tuple[str, ...] = ("abstain", "vote")


@dataclass(frozen=True)
class Stopping:
    """When a majority-voting arm (p, N) stops drawing (beyond the paper; :mod:`iapo.stopping`).

    ``all``: always N completions (the paper). ``decided``: in waves of ``wave`` completions,
    stopping after the first wave at which no remaining sample can change the winner; it
    returns the same answer as drawing all N and pays fewer completions on average. ``wave``
    trades completions for latency: 1 is fully sequential, N_max or more is one wave (the
    paper's arm).
    """

    rule: str = "all"
    wave: int = 1
    widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.rule not in STOP_RULES:
            raise ProblemError(f"stopping rule '{self.rule}' is unknown; use one of "
                               f"{list(STOP_RULES)}")
        if (isinstance(self.wave, bool) or not isinstance(self.wave, int | float | np.integer)
                or int(self.wave) != self.wave or self.wave < 1):
            raise ProblemError(f"wave={self.wave!r} must be an integer >= 1 (completions drawn "
                               "at once; 1 is fully sequential)")
        object.__setattr__(self, "wave", int(self.wave))
        widths = tuple(self.widths)
        if widths and (self.rule != "decided" or any(
                isinstance(w, bool) or int(w) != w or w < 1 for w in widths)
                or list(widths) != sorted(set(widths))):
            raise ProblemError(f"widths={widths!r}: the wave width is part of the arm only "
                               "under stop 'decided', from distinct integers >= 1 in "
                               "ascending order")
        object.__setattr__(self, "widths", tuple(int(w) for w in widths))

    @classmethod
    def every_width(cls, n_max: int) -> Stopping:
        """Decided arms whose wave width W is part of the arm: W in 1, 2, 4, ... below
        ``n_max``, and ``n_max`` (one wave)."""
        widths = [1 << k for k in range(max(int(n_max) - 1, 0).bit_length())]  # all < n_max
        return cls("decided", 1, (*widths, int(n_max)))

    @property
    def early(self) -> bool:
        """Whether an arm may stop before N."""
        return self.rule == "decided"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"rule": self.rule, "wave": self.wave}
        if self.widths:
            out["widths"] = list(self.widths)
        return out


def _finite(x: float, what: str) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ProblemError(f"{what} is {x}; give a finite number")
    return x


@dataclass(frozen=True)
class Objective:
    """A bounded task objective O_k with values in [lower, upper] (higher is better)."""

    name: str
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ProblemError("an objective needs a non-empty name")
        lo = _finite(self.lower, f"objective '{self.name}' lower bound")
        hi = _finite(self.upper, f"objective '{self.name}' upper bound")
        if not lo < hi:
            raise ProblemError(
                f"objective '{self.name}' has bounds [{lo}, {hi}]; the lower bound must be "
                "below the upper one"
            )
        object.__setattr__(self, "lower", lo)
        object.__setattr__(self, "upper", hi)


@dataclass(frozen=True)
class CostObjective:
    """The (K+1)-st objective, -Cost: a completion costs a value in [0, upper] (e.g. tokens)."""

    name: str = "cost"
    upper: float = 1.0

    def __post_init__(self) -> None:
        hi = _finite(self.upper, "cost upper bound")
        if hi <= 0:
            raise ProblemError(f"cost upper bound is {hi}; it must be positive")
        object.__setattr__(self, "upper", hi)


@dataclass(frozen=True)
class Context:
    """One user context: task weights (one per objective), a budget level and its cost weight.

    ``weights`` lie in [0, 1]; ``cost_weight`` >= 0 multiplies the summed cost of the N
    completions; ``probability`` is how often this context occurs (for the ACR). Beyond the
    paper, ``latency_weight`` >= 0 is what a second of expected latency costs (utility per
    second), ``latency_limit`` the most expected latency, in seconds, of an eligible arm and
    ``latency_p95`` the most 95th percentile of its latency (None: no limit;
    :mod:`iapo.latency`).
    """

    weights: tuple[float, ...]
    budget: str
    cost_weight: float
    probability: float = 1.0
    latency_weight: float = 0.0
    latency_limit: float | None = None
    latency_p95: float | None = None

    def __post_init__(self) -> None:
        ws = tuple(_finite(w, "objective weight") for w in self.weights)
        if not ws:
            raise ProblemError("a context needs at least one objective weight")
        bad = [w for w in ws if not 0.0 <= w <= 1.0]
        if bad:
            raise ProblemError(
                f"objective weight {bad[0]} is outside [0, 1]; weights must lie in [0, 1]"
            )
        cw = _finite(self.cost_weight, f"cost weight of budget '{self.budget}'")
        if cw < 0:
            raise ProblemError(
                f"cost weight {cw} of budget '{self.budget}' is negative; give a value >= 0"
            )
        pr = _finite(self.probability, "context probability")
        if not 0.0 <= pr <= 1.0:
            raise ProblemError(f"context probability {pr} is outside [0, 1]")
        if not self.budget or not isinstance(self.budget, str):
            raise ProblemError("a context needs a budget level name, e.g. 'low'")
        lw = _finite(self.latency_weight, "latency weight")
        if lw < 0:
            raise ProblemError(f"latency weight {lw} is negative; give the utility a second "
                               "of latency costs, >= 0")
        for name, what in (("latency_limit", "latency limit"), ("latency_p95", "p95 limit")):
            if getattr(self, name) is not None:
                limit = _finite(getattr(self, name), what)
                if limit <= 0:
                    raise ProblemError(f"{what} {limit} must be a positive number of seconds")
                object.__setattr__(self, name, limit)
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "cost_weight", cw)
        object.__setattr__(self, "probability", pr)
        object.__setattr__(self, "latency_weight", lw)

    @property
    def latency_parts(self) -> dict[str, float]:
        """The context's latency terms as its key writes them: ``latency`` (weight per
        second), ``limit`` and ``p95`` (seconds), each only where set."""
        out = {"latency": self.latency_weight} if self.latency_weight else {}
        out |= {} if self.latency_limit is None else {"limit": self.latency_limit}
        return out | ({} if self.latency_p95 is None else {"p95": self.latency_p95})


@dataclass(frozen=True)
class ContextGrid:
    """The finite context set C, with the task objectives whose weights the contexts give."""

    objectives: tuple[Objective, ...]
    contexts: tuple[Context, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        object.__setattr__(self, "contexts", tuple(self.contexts))
        if not self.objectives:
            raise ProblemError("a context grid needs at least one objective")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names) or "budget" in names:
            raise ProblemError(
                f"objective names {names} must be distinct and must not be 'budget'"
            )
        if not self.contexts:
            raise ProblemError("a context grid needs at least one context")
        k = len(self.objectives)
        for c in self.contexts:
            if len(c.weights) != k:
                raise ProblemError(
                    f"context {c} has {len(c.weights)} weights; the grid has {k} objectives"
                )
        total = sum(c.probability for c in self.contexts)
        if abs(total - 1.0) > _PROB_TOL:
            raise ProblemError(f"context probabilities sum to {total}; they must sum to 1")
        keys = self.keys
        if len(set(keys)) != len(keys):
            raise ProblemError("two contexts have the same weights and budget level")

    @classmethod
    def product(
        cls,
        objectives: Sequence[Objective],
        weight_vectors: Iterable[Sequence[float]],
        budgets: Mapping[str, float],
        probabilities: Sequence[float] | None = None,
    ) -> ContextGrid:
        """Every weight vector times every budget level; uniform probabilities by default.

        Order: weight vectors outer, budget levels inner.
        """
        pairs = list(itertools.product([tuple(w) for w in weight_vectors], budgets.items()))
        if probabilities is None:
            probabilities = [1.0 / len(pairs)] * len(pairs) if pairs else []
        if len(probabilities) != len(pairs):
            raise ProblemError(
                f"{len(probabilities)} probabilities given for {len(pairs)} contexts"
            )
        ctx = tuple(
            Context(w, b, cw, pr)
            for (w, (b, cw)), pr in zip(pairs, probabilities, strict=True)
        )
        return cls(tuple(objectives), ctx)

    def __len__(self) -> int:
        return len(self.contexts)

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    @property
    def weights(self) -> npt.NDArray[np.float64]:
        """Task weights, shape [C, K]."""
        return np.array([c.weights for c in self.contexts], dtype=np.float64)

    @property
    def cost_weights(self) -> npt.NDArray[np.float64]:
        """Cost weights, shape [C]."""
        return np.array([c.cost_weight for c in self.contexts], dtype=np.float64)

    @property
    def latency_weights(self) -> npt.NDArray[np.float64]:
        """What a second of expected latency costs in each context: [C]."""
        return np.array([c.latency_weight for c in self.contexts], dtype=np.float64)

    @property
    def latency_limits(self) -> npt.NDArray[np.float64]:
        """The most expected latency of an eligible arm in each context (inf: none): [C]."""
        return self._limits("latency_limit")

    @property
    def p95_limits(self) -> npt.NDArray[np.float64]:
        """The most 95th percentile of the latency of an eligible arm in each context (inf:
        none): [C]."""
        return self._limits("latency_p95")

    def _limits(self, name: str) -> npt.NDArray[np.float64]:
        values = [getattr(c, name) for c in self.contexts]
        return np.array([np.inf if v is None else v for v in values], dtype=np.float64)

    @property
    def prices_latency(self) -> bool:
        """Whether some context weighs or limits latency."""
        return any(c.latency_parts for c in self.contexts)

    @property
    def probabilities(self) -> npt.NDArray[np.float64]:
        """Context probabilities, shape [C]."""
        return np.array([c.probability for c in self.contexts], dtype=np.float64)

    @property
    def keys(self) -> list[str]:
        """Readable keys, e.g. ``helpful=0.3,harmless=0.7,budget=high``."""
        return [self.key(c) for c in self.contexts]

    def key(self, c: Context) -> str:
        parts = [f"{o.name}={w:g}" for o, w in zip(self.objectives, c.weights, strict=True)]
        if len(self.objectives) == 1:
            parts = []  # a single objective's weight carries no choice
        latency = [f"{k}={v:g}" for k, v in c.latency_parts.items()]
        return ",".join([*parts, f"budget={c.budget}", *latency])

    def distinct_weights(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
        """The distinct task-weight vectors [W, K] and, per context, its index into them [C]."""
        uniq, inverse = np.unique(self.weights, axis=0, return_inverse=True)
        return uniq, inverse.reshape(-1).astype(np.intp)

    def find(self, spec: object) -> int:
        """The index of the context named by ``spec``: a mapping of scalars such as
        {"budget": "high"} or a string such as ``helpful=0.3,budget=high``; anything else,
        nested values, and a key given twice are ProblemErrors that say what to give."""
        if isinstance(spec, str):
            return self.index(parse_context(spec))
        if not isinstance(spec, Mapping):
            raise ProblemError("a context must be an object such as {\"budget\": \"high\"} or "
                               "a string such as \"budget=high\"")
        for k, v in spec.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(
                    v, str | int | float):
                raise ProblemError(f"context key {str(k)[:40]!r} must map to a string or a "
                                   "number, not a nested value")
        return self.index(spec)

    def index(self, spec: Mapping[str, object]) -> int:
        """The index of the context that ``spec`` names, e.g. {"helpful": 0.3, "budget": "high"}.

        Every objective weight (except with a single objective) and the budget must be given;
        a context that prices latency also its ``latency`` weight, ``limit`` and ``p95``
        (absent: none).
        """
        names = [o.name for o in self.objectives]
        known = [*names, "budget", *LATENCY_PARTS]
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise ProblemError(f"unknown context key(s) {unknown}; known keys are {known}")
        if "budget" not in spec:
            budgets = sorted({c.budget for c in self.contexts})
            raise ProblemError(f"context needs 'budget', one of {budgets}")
        given = {k: _number(spec, k) for k in LATENCY_PARTS if k in spec}
        for i, c in enumerate(self.contexts):
            if c.budget != str(spec["budget"]) or given.keys() != c.latency_parts.keys():
                continue
            ok = all(abs(v - c.latency_parts[k]) < 1e-9 for k, v in given.items())
            for name, w in zip(names, c.weights, strict=True):
                if name in spec:
                    ok &= abs(_number(spec, name) - w) < 1e-9
                elif len(names) > 1:
                    raise ProblemError(f"context needs a weight for '{name}'")
            if ok:
                return i
        raise ProblemError(
            f"no context matches {dict(spec)}; the grid has: {', '.join(self.keys)}"
        )

    def with_latency(self, specs: Sequence[str]) -> ContextGrid:
        """The grid of the contexts ``specs``, each one of this grid's contexts (its weights and
        budget, as :meth:`find` names it) with a ``latency`` weight per second, a ``limit``
        on the expected latency and/or a ``p95`` limit on its 95th percentile, in seconds,
        e.g. ``budget=mid,latency=0.01``, ``budget=mid,limit=20`` or ``budget=mid,p95=30``;
        equally likely. The ``--contexts`` grammar (:func:`parse_contexts`)."""
        if not specs:
            raise ProblemError("give at least one context, e.g. 'budget=mid,latency=0.01'")
        out = []
        for text in specs:
            spec = parse_context(text)
            extra = {k: _number(spec, k) for k in LATENCY_PARTS if k in spec}
            base = self.contexts[self.index({k: v for k, v in spec.items()
                                             if k not in LATENCY_PARTS})]
            out.append(dataclasses.replace(
                base, probability=1.0 / len(specs), latency_weight=extra.get("latency", 0.0),
                latency_limit=extra.get("limit"), latency_p95=extra.get("p95")))
        return ContextGrid(self.objectives, tuple(out))


LATENCY_PARTS = ("latency", "limit", "p95")  # a context's latency weight and limits, as keys
# name them


def _number(spec: Mapping[str, object], name: str) -> float:
    try:
        return float(spec[name])  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as e:
        raise ProblemError(f"context value '{name}'={str(spec[name])[:40]!r} is not a "
                           "number") from e


def parse_contexts(text: str) -> list[str]:
    """``budget=low; budget=mid,latency=0.01; budget=mid,limit=20`` -> one context spec each
    (:meth:`ContextGrid.with_latency`)."""
    return [p.strip() for p in text.split(";") if p.strip()]


IndexT = TypeVar("IndexT", int, npt.NDArray[np.integer])


def arm_index(prompt: IndexT, n: IndexT, n_max: int) -> IndexT:
    """The flat index of the arm (prompt, n): prompt * n_max + (n - 1), the order of Q's last
    two axes [P, N_max] flattened. Ints, or arrays of them elementwise."""
    return prompt * n_max + n - 1


def arm_at(index: IndexT, n_max: int) -> tuple[IndexT, IndexT]:
    """(prompt, n) of the flat arm index ``index`` (the inverse of :func:`arm_index`)."""
    prompt, n = divmod(index, n_max)
    return prompt, n + 1


@dataclass(frozen=True, order=True)
class Arm:
    """An arm (prompt, N): prompt index (0-based) and number of completions N >= 1."""

    prompt: int
    n: int

    def __post_init__(self) -> None:
        if int(self.prompt) != self.prompt or self.prompt < 0:
            raise ProblemError(f"arm prompt {self.prompt} must be a non-negative integer index")
        if int(self.n) != self.n or self.n < 1:
            raise ProblemError(f"arm N={self.n} must be an integer >= 1")
        object.__setattr__(self, "prompt", int(self.prompt))
        object.__setattr__(self, "n", int(self.n))

    @classmethod
    def from_index(cls, index: int, n_max: int) -> Arm:
        """The arm of a flat index (:func:`arm_index`)."""
        return cls(*arm_at(int(index), n_max))


@dataclass(frozen=True)
class Choice:
    """The arm chosen for one context, with its estimate.

    ``n`` is None when N is drawn uniformly from 1..N_max per query at deployment
    (``triple-nrand``). ``q_hat`` is NaN and ``samples`` 0 for an arm never observed.
    ``wave`` is the wave width W where it is part of the arm (``Stopping.widths``; at most N,
    N for one wave of N), else None; ``latency`` the arm's predicted expected latency in
    seconds where latency is priced, else None.
    """

    prompt: int
    n: int | None
    q_hat: float
    samples: int
    wave: int | None = None
    latency: float | None = None


@dataclass(frozen=True)
class Problem:
    """What a learner knows: prompts, N_max, objectives, aggregator and the context grid,
    and for majority voting the stopping rule and how "no answer" counts (``no_answer``, one
    of :data:`NO_ANSWER_RULES`; :func:`iapo.utility.counted_votes`), and how long its
    completions take (``latency``, :class:`iapo.latency.LatencyModel`; None: the
    environment's own model, for contexts that price latency). ``answers``: how many answers a
    majority-voting query can get, where the task declares them (a live task's label
    extractor: its labels, and "no answer" under the vote rule); with 2, answers that look
    binary are binary by declaration, with no evidence asked of them
    (:func:`iapo.posterior.evidence_needed`). None: any number.

    Arms are indexed ``prompt * n_max + (n - 1)``; Q arrays are shaped [C, P, N_max] with the
    last axis holding N = 1..N_max.
    """

    name: str
    aggregator: Aggregator
    prompts: tuple[str, ...]
    n_max: int
    grid: ContextGrid
    cost: CostObjective = field(default_factory=CostObjective)
    stopping: Stopping = field(default_factory=Stopping)
    no_answer: str = NO_ANSWER_RULES[0]
    latency: LatencyModel | None = None
    answers: int | None = None

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ProblemError(
                f"aggregator '{self.aggregator}' is unknown; use one of {list(AGGREGATORS)}"
            )
        if self.no_answer not in NO_ANSWER_RULES:
            raise ProblemError(f"no_answer rule {self.no_answer!r} is unknown; use one of "
                               f"{list(NO_ANSWER_RULES)}")
        object.__setattr__(self, "prompts", tuple(str(p) for p in self.prompts))
        if not self.prompts:
            raise ProblemError("a problem needs at least one prompt")
        if int(self.n_max) != self.n_max or self.n_max < 1:
            raise ProblemError(f"N_max={self.n_max} must be an integer >= 1")
        object.__setattr__(self, "n_max", int(self.n_max))
        if self.aggregator == "mv" and self.grid.n_objectives != 1:
            raise ProblemError("a majority-voting problem has exactly one task objective")
        if self.stopping.early and self.aggregator != "mv":
            raise ProblemError(f"stopping rule '{self.stopping.rule}' applies to majority "
                               f"voting; '{self.name}' aggregates by {self.aggregator}: use "
                               "stop 'all'")
        if self.answers is not None:
            if self.aggregator != "mv":
                raise ProblemError(f"answers={self.answers}: how many answers a query can get "
                                   "applies to majority voting; leave it out for "
                                   f"{self.aggregator}")
            if isinstance(self.answers, bool) or not isinstance(self.answers, (int, np.integer)) \
                    or self.answers < 2:
                raise ProblemError(f"answers={self.answers!r} must be an integer >= 2 (or None: "
                                   "any number)")
            object.__setattr__(self, "answers", int(self.answers))
        if self.latency is not None and len(self.latency.times) != len(self.prompts):
            raise ProblemError(f"the latency model gives the times of {len(self.latency.times)} "
                               f"prompts; '{self.name}' has {len(self.prompts)}")

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def n_contexts(self) -> int:
        return len(self.grid)

    @property
    def n_objectives(self) -> int:
        return self.grid.n_objectives

    @property
    def n_arms(self) -> int:
        return self.n_prompts * self.n_max

    @property
    def needs_latency(self) -> bool:
        """Whether pricing its arms needs a latency model: contexts weigh or limit latency,
        or the wave width is part of the arm."""
        return self.grid.prices_latency or bool(self.stopping.widths)

    def check_n(self, n: int) -> int:
        if int(n) != n or not 1 <= n <= self.n_max:
            raise ProblemError(f"N={n} is outside 1..{self.n_max} (N_max of '{self.name}')")
        return int(n)


def parse_context(text: str) -> dict[str, str]:
    """``helpful=0.3,harmless=0.7,budget=high`` -> a mapping. A part without "=", an empty
    key or a key given twice is a ProblemError."""
    spec: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ProblemError(f"context part {part[:40]!r} must look like KEY=VALUE")
        k, v = (x.strip() for x in part.split("=", 1))
        if not k:
            raise ProblemError(f"context part {part[:40]!r} has no key; write KEY=VALUE")
        if k in spec:
            raise ProblemError(f"context key {k[:40]!r} is given twice")
        spec[k] = v
    return spec
