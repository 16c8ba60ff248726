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
E[max] = sum_k v_k (F(v_k)^w - F(v_{k-1})^w). This is :func:`iapo.stopping.paid_from_undecided`
with each wave's size replaced by its expected time. A quantile (the p95) is computed on a
time grid, with a stated error (:func:`latency_quantile`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError
from iapo.stopping import per_wave, undecided_probability

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
    return per_wave(table, wave, times)


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


__all__ = ["CompletionTimes", "expected_latency", "latency_from_undecided", "latency_quantile",
           "wave_times"]
