"""Exact expectations for every N at once, with no Monte Carlo.

The home of E[max of N] (:func:`bon_expected_max`: the BoN environments' tables and the model
estimator, :mod:`iapo.model`, call it) and of the table C(m + c, c) (:func:`binomial_table`:
the MV credit here and the stopping rule's dynamic program, :mod:`iapo.stopping`, use it).

- Best-of-N over a finite support u_1 <= ... <= u_m with CDF F:
  E[max of N] = sum_j u_j (F_j^N - F_{j-1}^N).
- Majority voting over L answer categories with probabilities q: the probability-weighted
  1/t credit, summed exactly over all vote compositions by a dynamic program over categories:
  for gold count k, P = C(N, k) q_g^k * sum over the other categories' counts c_i <= k
  (sum c_i = N - k) of multinomial(N - k; c) prod q_i^c_i, each composition weighted
  1/(1 + #{i : c_i = k}). Adding one category with c votes to m votes multiplies by
  C(m + c, c) q_i^c, so every table entry is a probability mass (no overflow).
  Under the abstain rule (:func:`iapo.utility.counted_votes`) "no answer" enters the same sum
  with no cap on its count and is never tied with gold: gold holds k >= 1 votes, so an answer
  is given and "no answer" cannot win.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

from iapo.errors import InputError
from iapo.utility import gold_first, unique_rows

FloatArray = npt.NDArray[np.float64]
MV_N_MAX_LIMIT = 1000  # C(m + c, c) for m + c <= 1000 stays finite (C(1000, 500) ~ 2.7e299)


def bon_expected_max(values: npt.ArrayLike, probs: npt.ArrayLike | None,
                     n_max: int) -> FloatArray:
    """E[max of N i.i.d. draws] for N = 1..n_max.

    values: [M, S], a finite support per row; probs: [M, S], its probabilities, or None for
    S equally likely values (an empirical sample: F_j = j / S for every row) -> [M, n_max].
    """
    v = np.asarray(values, dtype=np.float64)
    n = np.arange(1, n_max + 1, dtype=np.float64)
    # E[max] = u_S - sum_{j<S} (u_{j+1} - u_j) F_j^N  (telescoped; exact with ties)
    if probs is None:  # one CDF for every row: its powers are shared
        v = np.sort(v, axis=-1)
        size = v.shape[-1]
        shared = (np.arange(1, size) / size)[:, None] ** n  # [S-1, N]
        return v[..., -1:] - np.diff(v, axis=-1) @ shared
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(v, axis=-1, kind="stable")
    v = np.take_along_axis(v, order, -1)
    p = np.take_along_axis(p, order, -1)
    cdf = np.minimum(np.cumsum(p, axis=-1), 1.0)  # its last entry (1) is never used
    gaps = np.diff(v, axis=-1)  # [M, S-1]
    powers = cdf[..., :-1, None] ** n  # [M, S-1, N]
    return v[..., -1:] - np.einsum("ms,msn->mn", gaps, powers)


def binomial_table(n_max: int) -> FloatArray:
    """binom[m, c] = C(m + c, c) for m, c = 0..n_max, from log-gamma (finite for m + c <= 1029,
    not rounded): [n_max+1, n_max+1]."""
    idx = np.arange(n_max + 1)
    with np.errstate(over="ignore"):  # inf beyond m + c = 1029, entries no caller reads
        return np.exp(gammaln(idx[:, None] + idx[None, :] + 1) - gammaln(idx[:, None] + 1)
                      - gammaln(idx[None, :] + 1))


def _others_dp(weights: FloatArray, k: int, rest: int,
               binom: FloatArray | None = None, free: bool = False) -> FloatArray:
    """The non-gold categories' share of the MV credit when gold holds k votes.

    h[u, m] = sum over counts c_i <= k of the other categories with sum m <= ``rest`` of
    prod_i weights[u, i, c_i], each composition weighted 1 / (1 + #{i : c_i = k}) (the tie
    credit). With ``binom``, adding c votes to m multiplies by binom[m, c] as well (the
    multinomial form). ``free``: the first category is "no answer" under the abstain rule
    (any count, never tied with gold, which holds k >= 1 votes; :func:`iapo.utility.
    counted_votes`). weights [U, R, C+1] (counts above C weigh 0) -> h [U, rest+1].
    """
    u, r = weights.shape[:2]
    cmax = min(k, rest, weights.shape[2] - 1)
    dp = np.zeros((u, rest + 1, r + 1))  # [row, votes used m, categories tied with gold j]
    dp[:, 0, 0] = 1.0
    for i in range(r):
        abstains = free and i == 0
        new = np.zeros_like(dp)
        for c in range(min(rest, weights.shape[2] - 1) + 1 if abstains else cmax + 1):
            tied = 1 if c == k and not abstains else 0
            span = rest + 1 - c
            term = dp[:, :span, : r + 1 - tied]
            if binom is not None:
                term = term * binom[:span, c, None]
            new[:, c:, tied:] += term * weights[:, i, c, None, None]
        dp = new
    return dp @ (1.0 / (1.0 + np.arange(r + 1)))


def abstain_first(rows: npt.ArrayLike, gold: npt.ArrayLike | None,
                  no_answer: npt.ArrayLike) -> npt.NDArray:
    """Each row as (its gold entry where ``gold`` is given, its "no answer" entry, then the
    other entries sorted descending, with a 0 where "no answer" stood): under the abstain rule
    the MV credit and the decided rule depend on a row only through this. rows [M, L], gold
    [M] or None, no_answer [M] (-1: none, its entry 0) -> [M, L + 1]."""
    r = np.asarray(rows)
    z = np.asarray(no_answer, dtype=np.intp).reshape(-1, 1)
    has = z >= 0
    at = np.where(has, z, 0)
    abstained = np.where(has, np.take_along_axis(r, at, -1), 0)
    rest = r.copy()
    np.put_along_axis(rest, at, np.take_along_axis(r, at, -1) - abstained, -1)
    if gold is None:
        return np.concatenate([abstained, -np.sort(-rest, axis=-1)], axis=-1)
    first = gold_first(rest, gold)
    return np.concatenate([first[:, :1], abstained, first[:, 1:]], axis=-1)


def mv_credit_probability(
    probs: npt.ArrayLike,
    gold: npt.ArrayLike,
    n_max: int,
    progress: Callable[[int], None] | None = None,
    no_answer: npt.ArrayLike | None = None,
) -> FloatArray:
    """Expected MV credit E[1/t * 1(gold among the t most-voted)] for N = 1..n_max.

    probs: [M, L] answer-category probabilities per row (rows sum to 1); gold: [M] category
    index; ``no_answer`` [M]: the category of "no answer" under the abstain rule (-1: none;
    None: the vote rule). Returns [M, n_max]. ``progress(k)`` is called once per gold count
    k = 1..n_max.
    """
    p = np.asarray(probs, dtype=np.float64)
    gi = np.asarray(gold, dtype=np.int64)
    if p.ndim != 2 or gi.shape != (p.shape[0],):
        raise ValueError(f"probs must be [M, L] and gold [M]; got {p.shape} and {gi.shape}")
    m_rows, n_cat = p.shape
    if n_cat == 1:
        return np.ones((m_rows, n_max))
    if n_max > MV_N_MAX_LIMIT:
        raise InputError(
            f"exact MV tables support N_max up to {MV_N_MAX_LIMIT}; got {n_max}: lower the "
            "environment's n_max"
        )
    # MV credit depends only on (gold prob, other probs sorted), and real data repeats it
    free = no_answer is not None
    keys, inverse = unique_rows(abstain_first(p, gi, no_answer) if no_answer is not None
                                else gold_first(p, gi))
    uniq: FloatArray = keys.astype(np.float64, copy=False)
    u = uniq.shape[0]
    g = uniq[:, 0]
    others = uniq[:, 1:]
    credit = np.zeros((u, n_max + 1))
    binom = binomial_table(n_max)
    idx = np.arange(n_max + 1)
    qpow = others[:, :, None] ** idx  # [U, R, n_max+1]: q_i^c
    gpow = g[:, None] ** idx  # [U, n_max+1]: q_gold^k
    for k in range(1, n_max + 1):
        rest = n_max - k  # most votes the other categories can hold together
        # multinomial form: every entry is a probability mass (<= 1), so nothing overflows
        h = _others_dp(qpow, k, rest, binom, free)  # [U, rest+1]
        # P(gold gets credit, N = k + m) gathers C(N, k) q_gold^k h[m]
        credit[:, k:] += binom[: rest + 1, k] * gpow[:, k, None] * h
        if progress is not None:
            progress(k)
    return np.clip(credit[inverse, 1:], 0.0, 1.0)


def mv_subset_credit(gold_count: npt.ArrayLike, other_counts: npt.ArrayLike,
                     group: int, abstained: npt.ArrayLike | None = None) -> FloatArray:
    """Average MV credit over all size-n subsets of a group, for n = 1..group.

    A group of ``group`` answers holds ``gold_count`` [U] gold votes and ``other_counts``
    [U, R] votes for the other answers. A size-n subset drawn without replacement has
    multivariate hypergeometric counts, so the average 1/t credit is
    sum_k C(K_g, k) sum_{c_i <= k, sum c_i = n - k} prod C(K_i, c_i) / (1 + #{c_i = k})
    divided by C(group, n). ``abstained`` [U]: the votes for "no answer" under the abstain
    rule (a category with no cap, never tied; None: the vote rule, where "no answer" is one of
    the other answers). Returns [U, group] (column n-1 for subsets of size n).
    """
    kg = np.asarray(gold_count, dtype=np.int64)
    ko = np.asarray(other_counts, dtype=np.int64).reshape(kg.size, -1)
    ko = ko[:, ko.max(axis=0, initial=0) > 0] if ko.size else ko  # drop empty categories
    free = abstained is not None
    if abstained is not None:
        ko = np.concatenate([np.asarray(abstained, dtype=np.int64).reshape(-1, 1), ko], axis=1)
    u = ko.shape[0]
    idx = np.arange(group + 1)
    comb = np.exp(gammaln(idx[:, None] + 1) - gammaln(idx[None, :] + 1)
                  - gammaln(np.maximum(idx[:, None] - idx[None, :], 0) + 1))
    comb = np.where(idx[None, :] <= idx[:, None], np.rint(comb), 0.0)  # comb[K, c] = C(K, c)
    out = np.zeros((u, group + 1))
    top_other = int(ko.max(initial=0))
    weights = comb[ko][:, :, : top_other + 1]  # [U, R, c]: C(K_i, c)
    for k in range(1, int(kg.max(initial=0)) + 1):
        out[:, k:] += comb[kg, k][:, None] * _others_dp(weights, k, group - k, free=free)
    return out[:, 1:] / comb[group, 1:]


def mv_polya_credit(a_gold: npt.ArrayLike, a_others: npt.ArrayLike, n_max: int,
                    a_abstain: npt.ArrayLike | None = None) -> FloatArray:
    """Expected MV credit of N future answers under a Dirichlet posterior, N = 1..n_max.

    The answers' probabilities are Dirichlet(a) (gold ``a_gold`` [U], the other categories
    ``a_others`` [U, R], real and positive, or 0 for an absent category); N future answers are
    then Dirichlet-multinomial (a Polya urn): P(counts k) = prod GB(a_i, k_i) / GB(A, N), with
    GB(a, k) = Gamma(a + k) / (Gamma(a) k!). The credit sums that over compositions exactly, by
    the same dynamic program as the hypergeometric case. ``a_abstain`` [U]: the parameter of
    "no answer" under the abstain rule (None: the vote rule, "no answer" one of the others).
    Returns [U, n_max].
    """
    ag = np.asarray(a_gold, dtype=np.float64)
    ao = np.asarray(a_others, dtype=np.float64).reshape(ag.size, -1)
    free = a_abstain is not None
    if a_abstain is not None:
        ao = np.concatenate([np.asarray(a_abstain, dtype=np.float64).reshape(-1, 1), ao], axis=1)
    u = ao.shape[0]
    c = np.arange(n_max + 1)

    def gb(a: npt.NDArray[np.float64]) -> FloatArray:  # [..., n_max+1]
        a = a[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.exp(gammaln(a + c) - gammaln(a) - gammaln(c + 1))
        return np.where(a > 0, out, (c == 0).astype(np.float64))

    g_w = gb(ag)  # [U, n_max+1]
    o_w = gb(ao)  # [U, R, n_max+1]
    total = gb(ag + ao.sum(axis=1))  # [U, n_max+1]
    out = np.zeros((u, n_max + 1))
    for k in range(1, n_max + 1):
        out[:, k:] += g_w[:, k, None] * _others_dp(o_w, k, n_max - k, free=free)
    return np.clip(out[:, 1:] / total[:, 1:], 0.0, 1.0)
