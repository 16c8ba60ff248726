"""How long a majority vote that stops once decided makes its caller wait (beyond the paper).

The model, and what it assumes:

- A completion of a prompt takes ``overhead + per_token x tokens`` seconds, its tokens drawn
  i.i.d. from the prompt's token distribution (:meth:`CompletionTimes.from_tokens`), or its
  time drawn from observed times (:meth:`CompletionTimes.from_samples`). The time does not
  depend on the answer.
- A wave of w completions is sent at once. Up to ``concurrency`` of them run in parallel, so
  a wave takes the longest of its completions, in ceil(w / concurrency) rounds, one after the
  other (:func:`wave_times`).
- Waves run one after the other; the arm (p, N, W) draws waves of W (the last one
  min(W, N - drawn)) until the vote is decided (:mod:`iapo.stopping`).

Exact expected latency. A wave that starts after t answers is drawn with probability
P(undecided at t) (:func:`iapo.stopping.undecided_probability`), and its time is independent
of whether it is drawn (times do not depend on answers), so

    E[latency of (p, N, W) on a query] = sum over wave starts t of
        P(undecided at t) x E[time of a wave of min(W, N - t)],

with E[time of a wave of w] from the exact law of the maximum of w i.i.d. discrete times:
E[max] = sum_k v_k (F(v_k)^w - F(v_{k-1})^w). Every wave but the last holds W completions,
so this is (E[waves] - P(last wave drawn)) x E[time of a wave of W] + P(last wave drawn) x
E[time of the last wave] (:func:`latency_from_waves`), both factors from the stopping rule's
dynamic program (:func:`iapo.stopping.expected_waves`). A quantile (the p95) is computed on a
time grid, with a stated error (:func:`latency_quantile`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.stopping import (
    last_wave_probability,
    last_wave_start,
    paid_from_undecided,
    undecided_probability,
)

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


@dataclass(frozen=True, eq=False)
class LatencyModel:
    """Each prompt's completion times [P] and the server's ``concurrency`` (None: no limit):
    what the expected latency of every arm (p, N, W) needs. ``description`` says where it
    came from (a synthetic model's parameters, or a store)."""

    times: tuple[CompletionTimes, ...]
    concurrency: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "times", tuple(self.times))
        if not self.times:
            raise InputError("a latency model needs the completion times of every prompt")
        if self.concurrency is not None:
            _round_size(1, self.concurrency)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyModel):
            return NotImplemented
        return (self.concurrency == other.concurrency and len(self.times) == len(other.times)
                and all(np.array_equal(a.values, b.values) and np.array_equal(a.probs, b.probs)
                        for a, b in zip(self.times, other.times, strict=True)))

    def __hash__(self) -> int:
        return hash((self.concurrency, len(self.times), self.description))

    def wave_times(self, wave: int) -> FloatArray:
        """E[time of a wave of w completions] of every prompt, w = 0..wave: [P, wave+1]."""
        return np.stack([wave_times(t, wave, self.concurrency) for t in self.times])

    def arm_latency(self, waves: npt.ArrayLike, last: npt.ArrayLike, wave: int) -> FloatArray:
        """Expected latency of the arms (p, N, ``wave``) from their waves and last-wave
        probabilities [P, X, n_max] (:func:`iapo.stopping.expected_waves`): [P, X, n_max]."""
        w = np.asarray(waves, dtype=np.float64)
        width = min(int(wave), w.shape[-1])
        return latency_from_waves(w, last, width, self.wave_times(width)[:, None, :])

    def one_wave(self, n_max: int) -> FloatArray:
        """Expected latency of the arms (p, N) that send all N at once (the paper's arms):
        [P, n_max]."""
        return self.wave_times(n_max)[:, 1:]

    def to_dict(self) -> dict[str, object]:
        return {"description": self.description, "concurrency": self.concurrency,
                "mean_seconds": [round(t.mean(), 6) for t in self.times]}


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


def wave_times(times: CompletionTimes, wave: int, concurrency: int | None = None
               ) -> FloatArray:
    """E[time of a wave of w completions] for w = 0..wave: [wave+1]. With ``concurrency`` c,
    a wave runs in rounds of at most c, one after the other (full rounds, then the rest)."""
    c = _round_size(wave, concurrency)
    full = times.max_of(c)
    return np.array([(w // c) * full + times.max_of(w % c) for w in range(wave + 1)])


def latency_from_waves(waves: npt.ArrayLike, last: npt.ArrayLike, wave: int,
                       wave_time: npt.ArrayLike) -> FloatArray:
    """Expected latency of the arms N = 1..n_max from their expected waves and the probability
    that their last wave is drawn (:func:`iapo.stopping.expected_waves`), each [..., n_max],
    and the expected time of a wave of each size 0..wave, ``wave_time`` [..., wave+1]
    (:func:`wave_times`; leading axes broadcast against ``waves``'): [..., n_max].

    Every wave of the arm N but its last holds ``wave`` completions; the last, begun after
    :func:`iapo.stopping.last_wave_start` answers, holds the rest, so E[latency] = (E[waves] -
    P(last drawn)) x E[time of a wave of min(wave, N)] + P(last drawn) x E[time of the last].
    """
    w = np.asarray(waves, dtype=np.float64)
    drawn_last = np.asarray(last, dtype=np.float64)
    times = np.asarray(wave_time, dtype=np.float64)
    n_max = w.shape[-1]
    if wave < 1 or times.shape[-1] != wave + 1 or drawn_last.shape != w.shape:
        raise InputError(f"wave {wave} must be >= 1, wave_time [..., {wave + 1}] (got "
                         f"{times.shape}) and last shaped as waves {w.shape} (got "
                         f"{drawn_last.shape}): pass wave_times' and expected_waves' output")
    n = np.arange(1, n_max + 1)
    full = times[..., np.minimum(wave, n)]
    rest = times[..., np.minimum(n - last_wave_start(n_max, wave), wave)]
    return np.asarray((w - drawn_last) * full + drawn_last * rest, dtype=np.float64)


def latency_from_undecided(undecided: npt.ArrayLike, wave: int, wave_time: npt.ArrayLike
                           ) -> FloatArray:
    """Expected latency from an undecided table (:func:`iapo.stopping.undecided_probability`,
    [..., n_max+1, n_max+1]) and the expected time of a wave of each size 0..wave
    (:func:`wave_times`): [..., n_max], column N-1 for the arm N."""
    table = np.asarray(undecided, dtype=np.float64)
    times = np.asarray(wave_time, dtype=np.float64)
    if wave < 1 or table.ndim < 2 or table.shape[-1] != table.shape[-2]:
        raise InputError(f"wave {wave} must be >= 1 and undecided [..., n_max+1, n_max+1] "
                         f"(got {table.shape}): pass undecided_probability's output")
    if times.shape != (wave + 1,):
        raise InputError(f"wave_time must give the time of a wave of 0..{wave} completions; "
                         f"got shape {times.shape}")
    _, waves = paid_from_undecided(table, wave)
    return latency_from_waves(waves, last_wave_probability(table, wave), wave, times)


def expected_latency(probs: npt.ArrayLike, n_max: int, wave: int, times: CompletionTimes,
                     concurrency: int | None = None,
                     no_answer: npt.ArrayLike | None = None) -> FloatArray:
    """Exact expected latency (seconds) of the arms (p, N, ``wave``), N = 1..n_max, on answer
    distributions ``probs`` [..., L] of one prompt whose completions take ``times``:
    [..., n_max]. ``wave`` >= n_max is the paper's arm (one wave of N)."""
    table = undecided_probability(probs, n_max, no_answer)
    w = min(int(wave), int(n_max))
    return latency_from_undecided(table, w, wave_times(times, w, concurrency))


def _grid_cdf(times: CompletionTimes, step: float) -> FloatArray:
    """The distribution function of one completion's time on the grid of ``step`` seconds
    (each value rounded to the nearest grid point), at grid points 0..G-1: [G]."""
    index = np.rint(times.values / step).astype(np.intp)
    pmf = np.bincount(index, weights=times.probs, minlength=int(index.max()) + 1)
    return np.asarray(np.minimum(np.cumsum(pmf), 1.0), dtype=np.float64)


def _wave_law(cdf: FloatArray, size: int, concurrency: int) -> FloatArray:
    """The law on the grid of a wave of ``size`` completions, in rounds of at most
    ``concurrency`` (each round the longest of its completions): [G'] (a point mass at 0
    for size 0)."""
    law = np.ones(1)
    for r in [concurrency] * (size // concurrency) + ([size % concurrency] if size % concurrency
                                                        else []):
        longest = np.diff(np.concatenate([[0.0], cdf ** r]))
        law = np.convolve(law, longest)
    return law


def latency_quantile(probs: npt.ArrayLike, n: int, wave: int, times: CompletionTimes,
                     quantile: float = 0.95, concurrency: int | None = None,
                     step: float | None = None,
                     no_answer: npt.ArrayLike | None = None) -> float:
    """The ``quantile`` of the latency (seconds) of the arm (p, n, ``wave``) over the rows
    ``probs`` [X, L] (queries drawn uniformly; one row [L] for one query).

    The numeric method: completion times are put on a grid of ``step`` seconds (default the
    mean completion time / 200), each rounded to the nearest grid point; the law of each
    wave's time (the longest of each round) and of their sums are then exact on the grid
    (convolutions), mixed over the number of waves drawn (P(exactly k) = P(undecided at the
    start of wave k) - P(undecided at the start of wave k + 1), by monotonicity) and over
    the rows. The answer is the smallest grid value whose probability of not being exceeded
    reaches ``quantile``; it is off by at most rounds x step / 2 from the exact quantile of
    the unrounded times, rounds being the most rounds the arm can run."""
    if not 0 < quantile < 1:
        raise InputError(f"quantile {quantile} must lie strictly between 0 and 1")
    p = np.asarray(probs, dtype=np.float64)
    rows = p.reshape(-1, p.shape[-1])
    w = min(int(wave), int(n))
    c = _round_size(w, concurrency)
    h = times.mean() / 200 if step is None else float(step)
    if not h > 0:
        raise InputError(f"step {step} must be > 0 seconds")
    undecided = undecided_probability(rows, n, no_answer)[:, n]  # [X, t]
    starts = list(range(0, n, w))
    drawn = undecided[:, starts]  # [X, K]: P(wave k is drawn)
    exactly = drawn - np.concatenate([drawn[:, 1:], np.zeros((drawn.shape[0], 1))], axis=1)
    cdf = _grid_cdf(times, h)
    sums, law = [], np.ones(1)
    for t in starts:  # the law of the time of the first k waves, k = 1..K
        law = np.convolve(law, _wave_law(cdf, min(w, n - t), c))
        sums.append(law)
    size = sums[-1].size
    mixed = np.zeros(size)
    weight = exactly.mean(axis=0)  # [K]: over the rows, uniformly
    for k, law_k in enumerate(sums):
        mixed[: law_k.size] += weight[k] * law_k
    reach = np.cumsum(mixed)
    return float(np.searchsorted(reach, quantile - 1e-12) * h)


__all__ = ["CompletionTimes", "LatencyModel", "SyntheticLatency", "expected_latency",
           "latency_from_undecided", "latency_from_waves", "latency_quantile", "wave_times"]
