"""How long a majority vote that stops once decided makes its caller wait (beyond the paper).

The model, and what it assumes (what ``iapo answer`` and ``iapo serve`` do,
:mod:`iapo.live.waves`):

- A completion of a prompt takes ``overhead + per_token x tokens`` seconds, its tokens drawn
  i.i.d. from the prompt's token distribution (:meth:`CompletionTimes.from_tokens`), or its
  time drawn from observed times (:meth:`CompletionTimes.from_samples`). The time does not
  depend on the answer.
- The arm (p, N, W) asks for its completions in waves of W, and at most ``concurrency`` run
  at once: a wave wider than the concurrency is drawn as waves of the concurrency, so the
  arm runs in rounds of r = min(W, concurrency) (the last one what is left of N), one after
  the other, the completions of a round in parallel.
- The vote is checked after every completion that comes back. Once it is decided, the rest of
  the round is cancelled and no further round is asked for: the caller waits until the
  answer that decided it.

Exact expected latency. Let tau be the number of answers back when the vote is decided (N if
never before). Answers arrive in an order set by times alone, so in arrival order they are
i.i.d. and tau has the law of answers checked one by one: P(tau > t) = P(undecided at t)
(:func:`iapo.stopping.undecided_probability`), for every W. The k-th answer back arrives, in
expectation, after the rounds before its own (each the longest of r) and the j-th shortest
time of its own round (:func:`answer_times`), independently of tau. So

    E[latency of (p, N, W) on a query] = sum over t < N of
        P(undecided at t) x (E[time of answer t + 1] - E[time of answer t])

(:func:`latency_from_undecided`), with the j-th shortest of s i.i.d. discrete times exact:
P(X_(j) <= v) = P(Binomial(s, F(v)) >= j). The paper's arms, which pay all N, are sent at once
and wait for all, at most ``concurrency`` running, each started as soon as one ends, as the
client draws them (:func:`all_times`: exact without a limit, else a seeded Monte Carlo
estimate). A quantile (the p95) is computed on a time grid, with a
stated error (:func:`latency_quantile`).

Completions paid are priced at wave boundaries (:mod:`iapo.stopping`): live pays at most that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.stopping import undecided_probability

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class CompletionTimes:
    """The law of one completion's time: distinct ``values`` [K] (seconds, ascending) with
    ``probs`` [K] (summing to 1)."""

    values: FloatArray
    probs: FloatArray

    def __post_init__(self) -> None:
        v, p = np.asarray(self.values, dtype=np.float64), np.asarray(self.probs, dtype=np.float64)
        if v.ndim != 1 or v.shape != p.shape or v.size == 0:
            raise InputError(f"completion times need values and probabilities of one shape "
                             f"[K], K >= 1; got {v.shape} and {p.shape}")
        if not np.all(np.isfinite(v)) or np.any(v < 0) or np.any(np.diff(v) <= 0):
            raise InputError("completion times must be finite seconds >= 0, distinct and "
                             "ascending; build them with from_samples or from_tokens")
        if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
            raise InputError(f"completion time probabilities must be >= 0 and sum to 1 (sum "
                             f"{p.sum():.6g})")

    @classmethod
    def from_samples(cls, seconds: npt.ArrayLike) -> CompletionTimes:
        """The empirical law of observed completion times (seconds)."""
        values, counts = np.unique(np.asarray(seconds, dtype=np.float64), return_counts=True)
        return cls(values, counts / counts.sum())

    @classmethod
    def from_tokens(cls, tokens: npt.ArrayLike, overhead: float, per_token: float
                    ) -> CompletionTimes:
        """overhead + per_token x tokens, tokens from observed token counts (each equally
        likely)."""
        if overhead < 0 or per_token < 0:
            raise InputError(f"overhead {overhead} and per-token time {per_token} must be "
                             ">= 0 seconds")
        return cls.from_samples(overhead + per_token * np.asarray(tokens, dtype=np.float64))

    def mean(self) -> float:
        return float(self.values @ self.probs)

    def max_of(self, w: int) -> float:
        """E[the longest of w i.i.d. completion times] (0 for w = 0)."""
        if w == 0:
            return 0.0
        cdf = np.minimum(np.cumsum(self.probs), 1.0)
        below = np.concatenate([[0.0], cdf[:-1]])
        return float(self.values @ (cdf ** w - below ** w))

    def order_statistics(self, size: int) -> FloatArray:
        """E[the j-th shortest of ``size`` i.i.d. completion times], j = 1..size: [size]."""
        return self.order_table(size)[size, 1: size + 1]

    def order_table(self, size: int) -> FloatArray:
        """E[the j-th shortest of s i.i.d. completion times] for s, j = 1..``size``, j <= s:
        [size+1, size+1] indexed [s, j] (0 elsewhere). P(X_(j) <= v) = P(at least j of s
        times are <= v) = I_F(v)(j, s - j + 1), the regularized incomplete beta function."""
        from scipy.special import betainc

        cdf = np.minimum(np.cumsum(self.probs), 1.0)
        below = np.concatenate([[0.0], cdf[:-1]])
        s, j = np.tril_indices(size + 1)  # j <= s
        keep = j >= 1
        s, j = s[keep, None], j[keep, None]
        law = betainc(j, s - j + 1, cdf[None, :]) - betainc(j, s - j + 1, below[None, :])
        out = np.zeros((size + 1, size + 1))
        out[s[:, 0], j[:, 0]] = law @ self.values
        return out


@dataclass(frozen=True, eq=False)
class LatencyModel:
    """Each prompt's completion times [P] and the server's ``concurrency`` (None: no limit):
    what the expected latency of every arm (p, N, W) needs. ``description`` says where it
    came from (a synthetic model's parameters, or a store)."""

    times: tuple[CompletionTimes, ...]
    concurrency: int | None = None
    description: str = ""
    prefill: float = 0.0
    _steps: dict[tuple[int, int], FloatArray] = field(init=False, repr=False, compare=False)
    _over: dict[tuple[int | None, int, float], FloatArray] = field(init=False, repr=False,
                                                                  compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", tuple(self.times))
        object.__setattr__(self, "_steps", {})  # steps by (width, n_max)
        object.__setattr__(self, "_over", {})  # over tables by (width, n_max, limit)
        if not self.times:
            raise InputError("a latency model needs the completion times of every prompt")
        if self.concurrency is not None:
            _round_size(1, self.concurrency)
        if not (np.isfinite(self.prefill) and self.prefill >= 0):
            raise InputError(f"prefill {self.prefill} must be a finite number of seconds >= 0")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyModel):
            return NotImplemented
        return (self.concurrency == other.concurrency and self.prefill == other.prefill
                and len(self.times) == len(other.times)
                and all(np.array_equal(a.values, b.values) and np.array_equal(a.probs, b.probs)
                        for a, b in zip(self.times, other.times, strict=True)))

    def __hash__(self) -> int:
        return hash((self.concurrency, len(self.times), self.description))

    @classmethod
    def fit(cls, tokens: Sequence[npt.ArrayLike], seconds: Sequence[npt.ArrayLike],
            concurrency: int | None = None, first: Sequence[npt.ArrayLike] | None = None
            ) -> LatencyModel:
        """The model of observed completions: each prompt's completion ``tokens`` and the
        ``seconds`` each took ([P] sequences of equal-length arrays), and with ``first``
        whether each ran in its request's first round (the prompt not yet read by the
        server). One overhead, one per-token time and one prefill for all prompts, by least
        squares with all >= 0 (NNLS): seconds = overhead + per_token x tokens + prefill x
        first. Each prompt's times are overhead + per_token x its observed token counts,
        each equally likely; the prefill is paid once per request."""
        from scipy.optimize import nnls

        tok = [np.asarray(t, dtype=np.float64).ravel() for t in tokens]
        sec = [np.asarray(s, dtype=np.float64).ravel() for s in seconds]
        cold = [np.zeros_like(t) for t in tok] if first is None else \
            [np.asarray(f, dtype=np.float64).ravel() for f in first]
        if not tok or len(tok) != len(sec) or len(cold) != len(tok) or any(
                t.shape != s.shape or t.shape != f.shape or t.size == 0
                for t, s, f in zip(tok, sec, cold, strict=True)):
            raise InputError("a latency fit needs, for every prompt, at least one completion "
                             "and as many times (and first-round flags) as token counts")
        x, y = np.concatenate(tok), np.concatenate(sec)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x >= 0)
                and np.all(y >= 0)):
            raise InputError("completion tokens and seconds must be finite numbers >= 0")
        design = np.stack([np.ones_like(x), x, np.concatenate(cold)], axis=1)
        (overhead, per_token, prefill), _ = nnls(design, y)
        times = tuple(CompletionTimes.from_tokens(t, overhead, per_token) for t in tok)
        return cls(times, concurrency,
                   f"{FITTED}overhead={overhead:.6g},per_token={per_token:.6g},"
                   f"prefill={prefill:.6g},completions={x.size}", float(prefill))

    def all_times(self, n_max: int) -> FloatArray:
        """E[time until all N completions sent at once are back] of every prompt, N =
        0..n_max (:func:`all_times`; the prefill not included): [P, n_max+1]."""
        return np.stack([all_times(t, n_max, self.concurrency) for t in self.times])

    def steps(self, wave: int, n_max: int) -> FloatArray:
        """Every prompt's :func:`answer_steps` for arms in waves of ``wave``: [P, n_max+1,
        n_max+1]. With an undecided table, :func:`latency_from_undecided` gives the expected
        latency of each arm (p, N, ``wave``)."""
        width = min(round_width(wave, self.concurrency), int(n_max))
        key = (width, int(n_max))
        if key not in self._steps:  # the model is immutable: each table is computed once
            steps = np.stack([answer_steps(t, n_max, width) for t in self.times])
            steps[:, 1:, 0] += self.prefill  # the first answer waits for the prompt's reading
            self._steps[key] = steps
        return self._steps[key]

    def over(self, limits: npt.ArrayLike, n_max: int, wave: int | None,
             undecided: FloatArray | None = None) -> FloatArray | None:
        """P(latency > each context's p95 ``limits`` [C] (inf: none)) of every arm (p, N) in
        waves of ``wave`` that stops once decided, from the undecided table ``undecided``
        [P, N+1, N+1] (the mean over the queries it is judged on), or of the paper's arms
        (``wave`` None: all N paid and waited for): [C, P, n_max] (0 for a context without
        a limit); None where no context has one. An arm meets a p95 limit when this is at
        most 1 - 0.95 (:func:`iapo.utility.latency_priced`)."""
        bounds = np.asarray(limits, dtype=np.float64)
        if not np.isfinite(bounds).any():
            return None
        if wave is not None and undecided is None:
            raise InputError("the p95 of arms that stop once decided needs their undecided "
                             "table")
        out = np.zeros((bounds.size, len(self.times), n_max))
        width = None if wave is None else min(round_width(wave, self.concurrency), int(n_max))
        for limit in np.unique(bounds[np.isfinite(bounds)]):
            key = (width, int(n_max), float(limit))
            if key not in self._over:  # the model is immutable: each table is computed once
                self._over[key] = np.stack(
                    [all_over(t, n_max, limit, self.concurrency, prefill=self.prefill)
                     if width is None else
                     over_steps(t, n_max, width, limit, prefill=self.prefill)
                     for t in self.times])
            table = self._over[key]
            if undecided is not None and width is not None:
                table = latency_from_undecided(undecided, table)
            out[bounds == limit] = table
        return out

    def one_wave(self, n_max: int) -> FloatArray:
        """Expected latency of the arms (p, N) that send all N at once and wait for all (the
        paper's arms), at most ``concurrency`` running: [P, n_max]."""
        return self.all_times(n_max)[:, 1:] + self.prefill

    def to_dict(self) -> dict[str, object]:
        return {"description": self.description, "concurrency": self.concurrency,
                "prefill_seconds": round(self.prefill, 6),
                "mean_seconds": [round(t.mean(), 6) for t in self.times]}


FITTED = "fitted: "  # how the description of a model fitted to observed completions begins
LATENCY_KEYS = ("overhead", "per_token", "tokens_per_cost", "cv", "concurrency")


@dataclass(frozen=True)
class SyntheticLatency:
    """The documented latency model of a tabular environment, whose prompts differ only in
    their cost (proportional to their mean tokens in the paper's environments).

    A completion of prompt p takes ``overhead + per_token x tokens`` seconds, tokens Gamma
    distributed with mean ``tokens_per_cost x cost_p`` and coefficient of variation ``cv``
    (discretized at :attr:`POINTS` equally likely quantile midpoints, rescaled to the exact
    mean). Defaults: a 70B model decoding about 33 tokens a second per request (0.03 s a
    token), 0.5 s of queueing and prefill, a completion of cost 0.01 (the paper's dearest
    MATH prompt) about 500 tokens, cv 0.5, no concurrency limit. Each is a key of the
    environment file (``latency_<key>``) and of ``--latency`` (:meth:`parse`)."""

    overhead: float = 0.5
    per_token: float = 0.03
    tokens_per_cost: float = 50_000.0
    cv: float = 0.5
    concurrency: int | None = None
    POINTS = 256

    def __post_init__(self) -> None:
        for key in LATENCY_KEYS[:4]:
            v = getattr(self, key)
            if not (isinstance(v, int | float) and np.isfinite(v) and v >= 0):
                raise InputError(f"latency {key} = {v!r} must be a finite number >= 0")
        if self.concurrency is not None:
            _round_size(1, self.concurrency)

    @classmethod
    def parse(cls, text: str, base: SyntheticLatency | None = None) -> SyntheticLatency:
        """``overhead=0.5,per_token=0.03,tokens_per_cost=50000,cv=0.5,concurrency=8`` (any
        subset; the rest from ``base`` or the defaults; concurrency 0 or none: no limit)."""
        out = dict(vars(base or cls()))
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = (x.strip() for x in part.partition("="))
            if not sep or key not in LATENCY_KEYS:
                raise InputError(f"latency part {part[:40]!r} must be KEY=VALUE with KEY one "
                                 f"of {list(LATENCY_KEYS)}")
            try:
                out[key] = _concurrency(value) if key == "concurrency" else float(value)
            except ValueError as e:
                raise InputError(f"latency {key} = {value[:40]!r} must be a number (concurrency: "
                                 "an integer >= 1, or none)") from e
        return cls(**out)

    @classmethod
    def from_arrays(cls, data: dict[str, npt.NDArray]) -> SyntheticLatency:
        """From an environment file's optional ``latency_<key>`` scalars."""
        parts = [f"{k}={data[f'latency_{k}'].item()}" for k in LATENCY_KEYS
                 if f"latency_{k}" in data]
        return cls.parse(",".join(parts))

    @classmethod
    def from_description(cls, text: str) -> SyntheticLatency | None:
        """The parameters a model's :meth:`describe` wrote (None: not a synthetic model's)."""
        return cls.parse(text.removeprefix(_DESCRIBED)) if text.startswith(_DESCRIBED) else None

    def describe(self) -> str:
        c = "none" if self.concurrency is None else str(self.concurrency)
        return (f"{_DESCRIBED}overhead={self.overhead:.12g},per_token={self.per_token:.12g},"
                f"tokens_per_cost={self.tokens_per_cost:.12g},cv={self.cv:.12g},"
                f"concurrency={c}")

    def model(self, costs: npt.ArrayLike) -> LatencyModel:
        """The latency model of prompts whose completions cost ``costs`` [P] on average."""
        from scipy.stats import gamma

        c = np.asarray(costs, dtype=np.float64)
        if c.ndim != 1 or not np.all(np.isfinite(c)) or np.any(c < 0):
            raise InputError("prompt costs must be finite numbers >= 0, one per prompt")
        if self.cv > 0:
            shape = 1.0 / self.cv ** 2
            mid = gamma.ppf((np.arange(self.POINTS) + 0.5) / self.POINTS, shape)
            unit = mid / mid.mean()  # mean exactly 1
        else:
            unit = np.ones(1)
        times = [CompletionTimes.from_tokens(unit * self.tokens_per_cost * cost,
                                             self.overhead, self.per_token) for cost in c]
        return LatencyModel(tuple(times), self.concurrency, self.describe())


_DESCRIBED = "synthetic: "  # how a synthetic model's description begins


def _concurrency(value: str) -> int | None:
    if value.lower() in ("none", "0", "0.0"):
        return None
    number = float(value)
    if number != int(number) or number < 1:
        raise ValueError(value)
    return int(number)


def _round_size(wave: int, concurrency: int | None) -> int:
    """The most completions of a wave that run at once: the concurrency, or the whole wave."""
    if wave < 1 or (concurrency is not None and concurrency < 1):
        raise InputError(f"wave {wave} and concurrency {concurrency} must be >= 1")
    return wave if concurrency is None else int(concurrency)


PIPELINE_DRAWS = 20_000  # draws of the Monte Carlo estimate of a pipelined arm's time


def _pipeline_draws(times: CompletionTimes, n: int, concurrency: int) -> FloatArray:
    """Seeded draws of the time until the first k of n completions sent at once are all
    back, k = 1..n, at most ``concurrency`` running, each started as soon as one ends (a
    client's semaphore): [PIPELINE_DRAWS, n]."""
    rng = np.random.default_rng(0)
    # drawn completion by completion: the first k columns are the same whatever n is, so
    # the arm of k completions reads the same draws in every table (all_over, all_times,
    # latency_quantile)
    x = rng.choice(times.values, size=(n, PIPELINE_DRAWS), p=times.probs).T
    free = np.zeros((PIPELINE_DRAWS, concurrency))
    rows = np.arange(PIPELINE_DRAWS)
    out = np.empty((PIPELINE_DRAWS, n))
    for j in range(n):  # each completion to the slot free first
        k = free.argmin(axis=1)
        free[rows, k] += x[:, j]
        out[:, j] = free.max(axis=1)
    return out


def all_times(times: CompletionTimes, n_max: int, concurrency: int | None = None
              ) -> FloatArray:
    """E[time until all N completions sent at once are back], N = 0..n_max: [n_max+1]. At
    most ``concurrency`` run, each started as soon as one ends (how the client draws the
    paper's arms). Exact where no more than the concurrency are sent (the longest of N) or
    at a concurrency of 1 (N x the mean); else a seeded Monte Carlo estimate over
    :data:`PIPELINE_DRAWS` draws."""
    if n_max < 0 or (concurrency is not None and concurrency < 1):
        raise InputError(f"n_max {n_max} must be >= 0 and concurrency {concurrency} >= 1")
    c = n_max if concurrency is None else int(concurrency)
    out = np.array([times.max_of(n) if c > 1 else n * times.mean()
                    for n in range(n_max + 1)])
    if 1 < c < n_max:
        out[c + 1:] = _pipeline_draws(times, n_max, c).mean(axis=0)[c:]
    return out


def round_width(wave: int, concurrency: int | None) -> int:
    """min(``wave``, ``concurrency``): the completions that run at once in an arm in waves of
    ``wave`` (a wider wave is drawn as waves of the concurrency)."""
    c = _round_size(wave, concurrency)
    return min(int(wave), c)


def answer_times(times: CompletionTimes, n_max: int, width: int) -> FloatArray:
    """E[time until the k-th answer of the arm N is back], completions asked for in rounds
    of ``width``, each round once the one before is back: [n_max+1, n_max+1] indexed [N, k]
    (0 for k = 0 and k > N). The k-th answer is the j-th shortest of its round of s, after m
    full rounds: m x E[longest of width] + E[j-th shortest of s]."""
    if width < 1 or n_max < 1:
        raise InputError(f"width {width} and n_max {n_max} must be >= 1")
    r = min(int(width), int(n_max))
    order = times.order_table(r)  # [s, j]: E[the j-th shortest of s]
    m, size, j, answered = _answer_places(n_max, r)
    return np.where(answered, m * order[r, r] + order[size, j], 0.0)


def _answer_places(n_max: int, r: int) -> tuple[npt.NDArray[Any], ...]:
    """Where answer k of the arm N comes back, in rounds of ``r``: the full rounds m before
    its own, the size s of its own round and its rank j there, and whether the arm has an
    answer k at all (1 <= k <= N); each [n_max+1, n_max+1] indexed [N, k]."""
    n = np.arange(n_max + 1)[:, None]
    k = np.arange(n_max + 1)[None, :]
    m = np.maximum(k - 1, 0) // r
    return m, np.clip(n - m * r, 0, r), np.clip(k - m * r, 0, r), (k >= 1) & (k <= n)


def _steps_of(per_answer: FloatArray) -> FloatArray:
    """The steps the undecided table weighs, from a table [N, k] of a quantity of the k-th
    answer of the arm N (0 at k = 0): its difference from answer t to t + 1, [N, t], 0 for
    t >= N (:func:`latency_from_undecided`, summation by parts over the deciding answer)."""
    steps = np.zeros_like(per_answer)
    steps[:, :-1] = per_answer[:, 1:] - per_answer[:, :-1]
    size = per_answer.shape[0]
    return np.where(np.arange(size)[None, :] < np.arange(size)[:, None], steps, 0.0)


def answer_steps(times: CompletionTimes, n_max: int, width: int) -> FloatArray:
    """E[time from the t-th answer to the (t+1)-th] of the arm N (:func:`answer_times`):
    [n_max+1, n_max+1] indexed [N, t] (0 for t >= N), what the undecided table weighs."""
    return _steps_of(answer_times(times, n_max, width))


def latency_from_undecided(undecided: npt.ArrayLike, steps: npt.ArrayLike) -> FloatArray:
    """Expected latency of the arms N = 1..n_max from an undecided table
    (:func:`iapo.stopping.undecided_probability`, [..., n_max+1, n_max+1]) and the expected
    time between answers (:func:`answer_steps`, broadcast against it): [..., n_max].
    E[latency] = sum over t < N of P(undecided at t) x E[time from answer t to t + 1]."""
    table = np.asarray(undecided, dtype=np.float64)
    step = np.asarray(steps, dtype=np.float64)
    if table.ndim < 2 or table.shape[-1] != table.shape[-2] or step.shape[-2:] != \
            table.shape[-2:]:
        raise InputError(f"undecided [..., n_max+1, n_max+1] (got {table.shape}) and steps of "
                         f"the same last two axes (got {step.shape}): pass "
                         "undecided_probability's and answer_steps' output")
    return np.asarray((table * step).sum(axis=-1)[..., 1:], dtype=np.float64)


def expected_latency(probs: npt.ArrayLike, n_max: int, wave: int, times: CompletionTimes,
                     concurrency: int | None = None,
                     no_answer: npt.ArrayLike | None = None) -> FloatArray:
    """Exact expected latency (seconds) of the arms (p, N, ``wave``) that stop once decided,
    N = 1..n_max, on answer distributions ``probs`` [..., L] of one prompt whose completions
    take ``times``: [..., n_max]."""
    table = undecided_probability(probs, n_max, no_answer)
    width = min(round_width(wave, concurrency), int(n_max))
    return latency_from_undecided(table, answer_steps(times, n_max, width))


def _grid_cdf(times: CompletionTimes, step: float) -> FloatArray:
    """The distribution function of one completion's time on the grid of ``step`` seconds
    (each value rounded to the nearest grid point), at grid points 0..G-1: [G]."""
    index = np.rint(times.values / step).astype(np.intp)
    pmf = np.bincount(index, weights=times.probs, minlength=int(index.max()) + 1)
    return np.asarray(np.minimum(np.cumsum(pmf), 1.0), dtype=np.float64)


def _grid_step(times: CompletionTimes, step: float | None) -> float:
    """The grid step of the quantile method: ``step``, or the mean completion time / 200."""
    h = times.mean() / 200 if step is None else float(step)
    if not (np.isfinite(h) and h > 0):
        raise InputError(f"step {step} must be > 0 seconds")
    return h


class _AnswerGrid:
    """The laws, on the grid of :func:`_grid_cdf` up to grid point ``size - 1``, of the time
    of every answer k of every arm N asked for in rounds of ``width`` (:func:`answer_times`:
    m full rounds, each the longest of ``width``, then the j-th shortest of its own round of
    s): the law of the m full rounds (convolutions) and the distribution function of the
    j-th shortest of s, P(X_(j) <= v) = P(Binomial(s, F(v)) >= j)."""

    def __init__(self, cdf: FloatArray, n_max: int, width: int, size: int) -> None:
        from scipy.signal import convolve
        from scipy.special import betainc

        self.r, self.size = int(width), int(size)
        f = cdf[np.minimum(np.arange(self.size), cdf.size - 1)]  # 1 beyond the longest time
        longest = np.diff(np.concatenate([[0.0], f ** self.r]))
        rounds = max(1, -(-int(n_max) // self.r))
        self.before = np.zeros((rounds, self.size))  # [m, i]: the m full rounds' law
        self.before[0, 0] = 1.0
        for m in range(1, rounds):
            law = convolve(self.before[m - 1], longest, method="auto")[: self.size]
            self.before[m] = np.clip(law, 0.0, None)
        s, j = np.tril_indices(self.r + 1)
        keep = j >= 1
        self.order = np.zeros((self.r + 1, self.r + 1, self.size))  # [s, j, i]
        self.order[s[keep], j[keep]] = betainc(j[keep, None], (s - j + 1)[keep, None],
                                               f[None, :])

    def within(self, n_max: int, index: int) -> FloatArray:
        """P(the time of answer k of the arm N <= grid point ``index``): [n_max+1, n_max+1]
        indexed [N, k] (0 for k = 0 and k > N)."""
        out = np.zeros((n_max + 1, n_max + 1))
        if index < 0:
            return out
        i = min(int(index), self.size - 1)
        reach = np.einsum("ma,sja->msj", self.before[:, : i + 1], self.order[:, :, i::-1])
        m, size, j, answered = _answer_places(n_max, self.r)
        at = reach[np.minimum(m, reach.shape[0] - 1), size, j]
        return np.where(answered, np.minimum(at, 1.0), 0.0)


def _grid_index(seconds: float, step: float) -> int:
    """The last grid point at or below ``seconds`` (-1 below 0)."""
    return int(np.floor(seconds / step + 1e-9)) if seconds >= 0 else -1


def over_steps(times: CompletionTimes, n_max: int, width: int, limit: float,
               step: float | None = None, prefill: float = 0.0) -> FloatArray:
    """P(latency > ``limit``) as :func:`latency_from_undecided` reads it: [n_max+1, n_max+1]
    indexed [N, t], with S[N, k] = P(time of answer k of the arm N > limit) (S[N, 0] = 0),
    the differences S[N, t + 1] - S[N, t] for t < N (0 elsewhere). Summed against an
    undecided table U they give sum over k of P(the k-th answer decides) x S[N, k] = P(the
    arm's latency > limit), since the deciding answer does not depend on the times
    (summation by parts). On the grid of :func:`latency_quantile`, with its rounding: the
    arm's p95 is at most ``limit`` exactly when the result is at most 0.05."""
    h = _grid_step(times, step)
    r = min(int(width), int(n_max))
    index = _grid_index(limit - prefill, h)
    grid = _AnswerGrid(_grid_cdf(times, h), n_max, r, max(index, 0) + 1)
    *_, answered = _answer_places(n_max, r)
    return _steps_of(np.where(answered, 1.0 - grid.within(n_max, index), 0.0))


def all_over(times: CompletionTimes, n_max: int, limit: float,
             concurrency: int | None = None, step: float | None = None,
             prefill: float = 0.0) -> FloatArray:
    """P(latency > ``limit``) of the arms that send all N at once and wait for all (the
    paper's), N = 1..n_max: [n_max], as :func:`latency_quantile` computes their quantile
    (on its grid; where more than the concurrency are sent, from the same seeded draws)."""
    h = _grid_step(times, step)
    c = n_max if concurrency is None else min(int(concurrency), int(n_max))
    index = _grid_index(limit - prefill, h)
    grid = _AnswerGrid(_grid_cdf(times, h), n_max, c, max(index, 0) + 1)
    n = np.arange(1, n_max + 1)
    out = 1.0 - grid.within(n_max, index)[n, n]
    if 1 < c < n_max:  # sent at once beyond the concurrency: the draws of all_times
        draws = _pipeline_draws(times, n_max, c)[:, c:]
        out[c:] = (draws > limit - prefill).mean(axis=0)
    return np.asarray(out, dtype=np.float64)


def latency_quantile(probs: npt.ArrayLike, n: int, wave: int | None, times: CompletionTimes,
                     quantile: float = 0.95, concurrency: int | None = None,
                     step: float | None = None,
                     no_answer: npt.ArrayLike | None = None, prefill: float = 0.0) -> float:
    """The ``quantile`` of the latency (seconds) of the arm (p, n, ``wave``) that stops once
    decided, over the rows ``probs`` [X, L] (queries drawn uniformly; one row [L] for one
    query). ``wave`` None: the paper's arm, which pays all n and waits for all (``probs``
    unused); sent at once with more than the concurrency, its quantile is that of the
    seeded draws of :func:`all_times` (a Monte Carlo estimate). ``prefill``: seconds every
    request waits once (a constant shift).

    The numeric method: completion times are put on a grid of ``step`` seconds (default the
    mean completion time / 200), each rounded to the nearest grid point. The law of the time
    of the k-th answer (m full rounds, each the longest of its completions, then the j-th
    shortest of its own round) is then exact on the grid (convolutions), mixed over the
    answer that decides the vote (P(tau = k) = P(undecided at k - 1) - P(undecided at k), k <
    n; the rest at n) and over the rows. The answer is the smallest grid value whose
    probability of not being exceeded reaches ``quantile`` (found by bisection; the same
    probabilities :func:`over_steps` gives a limit). Rounding is monotone, so it is off by at
    most rounds x step / 2 from the exact quantile of the unrounded times, rounds being the
    most rounds the arm can run."""
    if not 0 < quantile < 1:
        raise InputError(f"quantile {quantile} must lie strictly between 0 and 1")
    p = np.asarray(probs, dtype=np.float64)
    rows = p.reshape(-1, p.shape[-1])
    r = min(round_width(n if wave is None else wave, concurrency), int(n))
    h = _grid_step(times, step)
    if wave is None and concurrency is not None and 1 < concurrency < n:
        # the paper's arm, pipelined: a quantile of the seeded draws of all_times
        draws = _pipeline_draws(times, n, concurrency)[:, -1]
        return float(np.quantile(draws, quantile, method="inverted_cdf")) + prefill
    if wave is None:  # every answer is waited for
        decides = np.zeros(n + 1)
        decides[-1] = 1.0
    else:
        undecided = undecided_probability(rows, n, no_answer)[:, n].mean(axis=0)  # [t]
        decides = np.zeros(n + 1)  # P(tau = k), k = 0..n
        decides[1:] = undecided[:n] - np.concatenate([undecided[1:n], [0.0]])
    cdf = _grid_cdf(times, h)
    rounds = -(-n // r)
    grid = _AnswerGrid(cdf, n, r, rounds * (cdf.size - 1) + 1)
    lo, hi = 0, grid.size - 1  # the latency is at most the grid's last point
    while lo < hi:
        mid = (lo + hi) // 2
        if decides @ grid.within(n, mid)[n] >= quantile - 1e-12:
            hi = mid
        else:
            lo = mid + 1
    return float(lo * h) + prefill


__all__ = ["CompletionTimes", "LatencyModel", "SyntheticLatency", "all_over", "all_times",
           "answer_steps", "answer_times", "expected_latency", "latency_from_undecided",
           "latency_quantile", "over_steps", "round_width"]
