"""Majority voting that stops once the vote is decided: exact expected cost, and replays.

The rule. An MV arm (prompt, N) draws N i.i.d. answers from a query's answer-category
distribution q [L] and returns the most common answer(s). With early stopping the answers come
in waves of ``wave`` (the last wave is min(wave, N - drawn)). After a wave, with t answers drawn
and r = N - t still to come, the vote is *decided* when

    margin(t) = (leader's count) - (runner-up's count, the largest among the others) > r,

and then no more answers are drawn; at t = N it always stops. wave = N is the paper's arm (one
wave, always N paid); wave = 1 is fully sequential.

Same answer as drawing all N. If leader i holds a votes and every other category at most
a - r - 1 at t, then after all N answers i still leads every other category by at least
a - (a - r - 1) - r = 1: i is the unique winner, as it is at t, so the winner set (and the
1/t tie credit) is exactly that of the full N draws. Margin == r is not enough: the runner-up
could take all r remaining answers and tie, turning the winner set {i} into {i, j}.

Monotonicity. One more answer changes c_i - max_{j != i} c_j by at most 1 (it raises either c_i
or one c_j), while r falls by exactly 1; so decided at t (c_i - max_j c_j > r) stays decided at
t + 1 with the same leader, and at every later t. Hence the answers t count only through the
multinomial(t, q) counts at t, and

    P(another wave is drawn after t answers) = P(not decided at t) = P(margin(t) <= N - t).

Equivalently s(t) = margin(t) + t never decreases, and the vote is decided at t iff s(t) > N.

The dynamic program. For r >= 0 the events "category i leads the rest by more than r" are
disjoint over i (only one category can lead every other), so with leader i holding a votes
and every other category at most b = a - r - 1 votes (their sum m = t - a),

    P(decided at t) = sum_i sum_a C(t, a) q_i^a G_i(b, m),
    G_i(b, m) = sum over c_j <= b (j != i) with sum c_j = m of multinomial(m; c) prod q_j^c_j,

a truncated multinomial that a DP over categories sums (as ``iapo.exact`` does): adding c votes
of category j to m votes multiplies by C(m + c, c) q_j^c, so every table entry is a probability
mass and nothing overflows. One DP per cap b serves every (t, r) with a - r - 1 = b, and every
leader i at once (category i enters its own DP with weight 1 at c = 0 only). The result depends
on q only through its sorted values, so equal rows (common in real data) are computed once, and
categories with probability 0 are dropped.

The abstain rule (:func:`iapo.utility.counted_votes`): "no answer" never wins while an answer
may still come, so the answers alone decide: the margin is taken over the answers, "no answer"
holding any count in the DP and never leading.

Homes. The rule is :func:`vote_decided` (on counted votes, via :func:`vote_margin`): the
blocks' replay (:func:`stop_points`, for :class:`iapo.estimate.QTable`) and the live draw
(:mod:`iapo.live.waves`) call it. The table C(m + c, c) is :func:`iapo.exact.binomial_table`.

Shapes. probs [..., L] -> undecided [..., n_max+1, n_max+1] indexed [N, t]; expected
completions and waves [..., n_max] (column N-1 for the arm N); the blocks' replay: cumulative
votes [L, T+1] and B blocks -> completions paid [B].
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.special import betainc

from iapo.errors import InputError
from iapo.exact import MV_N_MAX_LIMIT, abstain_first, binomial_table
from iapo.utility import unique_rows

__all__ = [
    "expected_paid",
    "paid_from_undecided",
    "stop_points",
    "leader_probability",
    "vote_decided",
    "vote_margin",
    "undecided_probability",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_TOL = 1e-6  # how far a row of probabilities may sum from 1
_CHUNK = 1024  # distinct rows per dynamic program


# --- input checks -------------------------------------------------------------------------------


def _check_int(value: object, name: str, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{name} must be an integer; got {value!r}: {hint}")
    if int(value) < low:
        raise InputError(f"{name} must be at least {low}; got {value}: {hint}")
    return int(value)


def _check_wave(wave: object) -> int:
    return _check_int(wave, "wave", 1, "give the number of answers drawn per wave "
                      "(1 for fully sequential, N or more for one wave of N)")


def _check_n_max(n_max: object) -> int:
    n = _check_int(n_max, "n_max", 1, "give the largest number of answers N of an arm")
    if n > MV_N_MAX_LIMIT:
        raise InputError(f"n_max must be at most {MV_N_MAX_LIMIT}; got {n}: lower n_max")
    return n


def _check_probs(probs: npt.ArrayLike) -> FloatArray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise InputError(f"probs must be [..., L] with L >= 1 answer categories; got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1 + _TOL:
        raise InputError("probs must be finite probabilities in [0, 1]; check the answer "
                         "distribution")
    sums = p.sum(axis=-1)
    bad = np.argwhere(np.abs(sums - 1.0) > _TOL)
    if bad.size:
        first = tuple(int(i) for i in bad[0])
        raise InputError(f"each row of probs must sum to 1; row {first} sums to "
                         f"{sums[first]:g} ({len(bad)} bad rows): normalize the rows")
    return p


# --- the undecided table ------------------------------------------------------------------------


def _decided_dp(q: FloatArray, n_max: int, binom: FloatArray, free: bool = False
                ) -> FloatArray:
    """P(decided at t with r answers to come) = P(margin(t) > r): q [U, k] -> [U, t, r],
    t, r = 0..n_max (entries with t + r > n_max are 0). ``free``: q's first category is "no
    answer" under the abstain rule: any count, never the leader (the answers decide)."""
    u, k = q.shape
    qpow = q[:, :, None] ** np.arange(n_max + 1)  # [U, k, c]: q_j^c (0^0 = 1)
    decided = np.zeros((u, n_max + 1, n_max + 1))
    for b in range(n_max):  # the cap on every other category: b = a - r - 1
        size = n_max - b  # their total m <= n_max - 1 - b, as a = b + 1 + r >= b + 1
        m = np.arange(size)
        diff = m[None, :] - m[:, None]  # [m', m]: votes c = m - m' that category j adds
        full = np.where(diff >= 0, binom[m[:, None], np.clip(diff, 0, None)], 0.0)  # C(m, c)
        coef = np.where(diff <= b, full, 0.0)
        g = np.zeros((u, k, size))  # [row, leader i, others' total m]: G_i(b, m)
        g[:, :, 0] = 1.0
        for j in range(k):
            if free and j == 0:  # "no answer" holds any count
                step = full * np.take(qpow[:, j], np.clip(diff, 0, size - 1), axis=1)
            else:
                step = coef * np.take(qpow[:, j], np.clip(diff, 0, b), axis=1)  # C(m, c) q_j^c
            new = g @ step
            new[:, j] = g[:, j]  # the leader j is not one of its own "others"
            g = new
        # leader i holds a = b + 1 + r votes, the others m: t = a + m, weight C(t, a) q_i^a
        first = 1 if free else 0  # "no answer" never leads
        lead = np.swapaxes(qpow[:, first:, b + 1: b + 1 + size], 1, 2) @ g[:, first:]
        r_idx, m_idx = np.nonzero(np.add.outer(m, m) < size)
        a_idx = b + 1 + r_idx
        decided[:, a_idx + m_idx, r_idx] += lead[:, r_idx, m_idx] * binom[m_idx, a_idx]
    return decided


def _undecided_unique(p: FloatArray, n_max: int, no_answer: npt.ArrayLike | None = None
                      ) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """The undecided table of every distinct sorted row and each row's index into them:
    probs [M, L], ``no_answer`` [M] or None (the abstain rule's "no answer" category, -1:
    none) -> ([U, n_max+1, n_max+1] indexed [N, t], inverse [M])."""
    if p.shape[-1] < 2:  # one category: the runner-up holds 0 votes
        p = np.concatenate([p, np.zeros_like(p)], axis=-1)
    free = int(no_answer is not None)
    # depends only on the sorted values (after "no answer", under the abstain rule)
    sort = abstain_first(p, None, no_answer) if no_answer is not None else -np.sort(-p, axis=-1)
    keys, inverse = unique_rows(sort)
    uniq: FloatArray = keys.astype(np.float64, copy=False)
    binom = np.rint(binomial_table(n_max))  # C(m + c, c), rounded to the integers they are
    decided = np.zeros((uniq.shape[0], n_max + 1, n_max + 1))  # [U, t, r]
    # zero-probability categories never hold votes; dropping them shrinks the DP ("no answer"
    # stays first under the abstain rule)
    width = np.maximum((uniq[:, free:] > 0).sum(axis=-1), 2) + free
    for k in np.unique(width):
        rows = np.flatnonzero(width == k)
        for part in np.array_split(rows, -(-rows.size // _CHUNK)):  # bounds the [U, N, N] steps
            decided[part] = _decided_dp(uniq[part, :k], n_max, binom, bool(free))
    # [N, t] with r = N - t; t > N is never reached and stays 0
    n_idx, t_idx = np.nonzero(np.tri(n_max + 1, dtype=bool))
    table = np.zeros_like(decided)
    table[:, n_idx, t_idx] = np.clip(1.0 - decided[:, t_idx, n_idx - t_idx], 0.0, 1.0)
    return table, inverse


def undecided_probability(probs: npt.ArrayLike, n_max: int,
                          no_answer: npt.ArrayLike | None = None) -> FloatArray:
    """P(the vote is not decided after t answers of an arm N) = P(margin(t) <= N - t).

    probs [..., L] (rows sum to 1), ``no_answer`` [...] (the abstain rule's category, -1:
    none; None: the vote rule) -> [..., n_max+1, n_max+1] indexed [N, t] for N, t =
    0..n_max; entries with t > N are 0 (never reached). Column t = 0 is 1 (margin 0 <= N);
    at t = N the entry is P(a tie at the top), though the arm stops there anyway.
    """
    p = _check_probs(probs)
    n = _check_n_max(n_max)
    table, inverse = _undecided_unique(p.reshape(-1, p.shape[-1]), n,
                                       _flat_no_answer(no_answer, p.shape[:-1]))
    return table[inverse].reshape(*p.shape[:-1], n + 1, n + 1)


def _flat_no_answer(no_answer: npt.ArrayLike | None, lead: tuple[int, ...]
                    ) -> npt.NDArray[np.intp] | None:
    """``no_answer`` broadcast to the rows ``lead`` and flattened: [M] (None: the vote rule)."""
    if no_answer is None:
        return None
    return np.broadcast_to(np.asarray(no_answer, dtype=np.intp), lead).reshape(-1)


# --- expected cost ------------------------------------------------------------------------------


def _wave_starts(n_max: int, wave: int) -> tuple[FloatArray, FloatArray]:
    """(starts, sizes) [n_max+1, n_max+1] indexed [N, t]: starts is 1 where a wave of the arm N
    begins after t answers (t a multiple of wave, t < N), sizes the size of that wave."""
    n = np.arange(n_max + 1)[:, None]
    t = np.arange(n_max + 1)[None, :]
    starts = ((t % wave == 0) & (t < n)).astype(np.float64)
    return starts, starts * np.minimum(wave, n - t)


def paid_from_undecided(undecided: npt.ArrayLike, wave: int) -> tuple[FloatArray, FloatArray]:
    """Expected completions paid and waves drawn, from an undecided table.

    undecided [..., n_max+1, n_max+1] (from :func:`undecided_probability`) -> (completions,
    waves), each [..., n_max] (column N-1 for the arm N). A wave that starts after t answers is
    drawn with probability P(undecided at t) (monotonicity), so E[paid] = sum over wave starts
    t of (wave size) * undecided[N, t], and E[waves] likewise with 1 per wave.
    """
    w = _check_wave(wave)
    table = np.asarray(undecided, dtype=np.float64)
    if table.ndim < 2 or table.shape[-1] != table.shape[-2] or table.shape[-1] < 2:
        raise InputError(f"undecided must be [..., n_max+1, n_max+1]; got {table.shape}: pass "
                         "the output of undecided_probability")
    sizes = np.arange(w + 1, dtype=np.float64)
    return _per_wave(table, w, sizes), _per_wave(table, w, np.minimum(sizes, 1.0))


def _per_wave(undecided: FloatArray, wave: int, per_size: FloatArray) -> FloatArray:
    """E[sum over the waves drawn of per_size[the wave's size]] for the arms N = 1..n_max:
    [..., n_max]. A wave that starts after t answers is drawn with probability P(undecided
    at t) (monotonicity). per_size [wave+1]: the completions of a wave of each size give
    E[paid], 1 per wave E[waves].
    ``undecided`` and ``wave`` as :func:`paid_from_undecided` checks them."""
    starts, sizes = _wave_starts(undecided.shape[-1] - 1, wave)
    value = starts * np.asarray(per_size, dtype=np.float64)[sizes.astype(np.intp)]  # [N, t]
    return np.einsum("...nt,nt->...n", undecided, value)[..., 1:]


def expected_paid(probs: npt.ArrayLike, n_max: int, wave: int,
                  no_answer: npt.ArrayLike | None = None) -> tuple[FloatArray, FloatArray]:
    """Expected completions paid and waves drawn by the decided rule, for N = 1..n_max.

    probs [..., L] (rows sum to 1); wave >= 1 answers per wave (wave >= N: one wave of N);
    ``no_answer`` [...] (the abstain rule's category, -1: none; None: the vote rule) ->
    (completions, waves), each [..., n_max] (column N-1 for the arm N).
    """
    p = _check_probs(probs)
    n = _check_n_max(n_max)
    w = _check_wave(wave)
    table, inverse = _undecided_unique(p.reshape(-1, p.shape[-1]), n,
                                       _flat_no_answer(no_answer, p.shape[:-1]))
    paid, waves = paid_from_undecided(table, w)
    shape = (*p.shape[:-1], n)
    return paid[inverse].reshape(shape), waves[inverse].reshape(shape)


# --- the rule on counted votes -------------------------------------------------------------------


def vote_margin(counts: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.integer]:
    """The leader's votes minus the runner-up's (0 on a tie at the top; the runner-up holds 0
    votes where fewer than two categories are counted): counts [..., L] along ``axis`` ->
    [...]."""
    c = np.asarray(counts)
    if c.shape[axis] < 2:
        pad = list(c.shape)
        pad[axis] = 2 - c.shape[axis]
        c = np.concatenate([c, np.zeros(pad, dtype=c.dtype)], axis=axis)
    top2 = np.partition(c, -2, axis=axis)
    return np.asarray(np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis))


def vote_decided(counts: npt.ArrayLike, remaining: npt.ArrayLike, axis: int = -1,
                 no_answer: npt.ArrayLike | None = None) -> npt.NDArray[np.bool_]:
    """The decided rule: margin > remaining, for the votes ``counts`` [..., L] (along
    ``axis``) of the answers seen and the ``remaining`` answers still to come (broadcast with
    [...]) -> [...]. Then the winner of all answers is the leader, alone. The one rule that the
    blocks' replay (:func:`stop_points`) and the live draw (:mod:`iapo.live.waves`) apply.

    ``no_answer`` [...] (broadcast; -1 where none): under the abstain rule "no answer" never
    wins while an answer may still come, so its votes never count here (the answers alone
    decide; a group that has only abstained so far is decided at its end only)."""
    c = np.moveaxis(np.asarray(counts), axis, -1)
    if no_answer is not None:
        z = np.broadcast_to(np.asarray(no_answer, dtype=np.intp), c.shape[:-1])
        c = np.where(np.arange(c.shape[-1]) == z[..., None], 0, c)
    return np.asarray(vote_margin(c) > np.asarray(remaining))


def stop_points(prefix: npt.NDArray[np.integer], start: npt.NDArray[np.intp],
                size: npt.NDArray[np.intp], wave: int,
                no_answer: npt.NDArray[np.intp] | None = None) -> IntArray:
    """Completions paid by the arm (size[b], wave) on answers start[b] .. start[b] + size[b]
    - 1 of a batch laid end to end, from its cumulative votes prefix [L, T+1] (prefix[:, j] =
    votes of each category among the first j answers): [B], each in 1..size[b]. ``no_answer``
    [B]: each block's "no answer" category under the abstain rule (-1: none; None: the vote
    rule). The blocks' replay of the rule in :class:`iapo.estimate.QTable`."""
    w = _check_wave(wave)
    if start.size == 0:
        return np.zeros(0, dtype=np.int64)
    n_max = int(size.max())
    t = np.arange(n_max + 1)
    at = np.minimum(start[:, None] + t, prefix.shape[1] - 1)  # [B, t] (clipped past the end)
    counts = prefix[:, at] - prefix[:, start][:, :, None]  # [L, B, t]
    n = size[:, None]
    # decided stays decided (monotonicity), so the first decided t counts the undecided ones
    z = None if no_answer is None else no_answer[:, None]
    first = (~vote_decided(counts, n - t, axis=0, no_answer=z) & (t <= n)).sum(axis=1)
    # noticed at the first wave boundary at or after it, and at n at the latest
    return np.minimum(-(-first // w) * w, size).astype(np.int64)


def leader_probability(leader: npt.ArrayLike, runner_up: npt.ArrayLike) -> FloatArray:
    """P(p_leader > p_runner-up | votes) under a uniform Beta prior on the two leading answers'
    share: P(X > 1/2) for X ~ Beta(leader + 1, runner_up + 1), elementwise. The criterion of
    adaptive self-consistency's Beta stopping rule. Unlike ``decided``, stopping on it can
    change the answer: it is a heuristic, measured in
    ``benchmarks/experiments/probabilistic_stopping.py``, not a rule that Q prices."""
    a = np.asarray(leader, dtype=np.float64) + 1.0
    b = np.asarray(runner_up, dtype=np.float64) + 1.0
    return np.asarray(1.0 - betainc(a, b, 0.5), dtype=np.float64)
