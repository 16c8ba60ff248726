"""The parts of the paper's utilities (Eqs. 1, 2 and 5, and its Remark), one home each.

Every Q computes a utility as a task value minus a cost term, and each part has one function
that the others call:

- the weighted task value sum_k w_k o_k of a completion: :func:`task_values` (Best-of-N, Eq. 1,
  takes its max over a group); the weighted other objectives of the mixed strategy:
  :func:`style_values`;
- beyond the paper, the latency term w_latency x expected latency, :func:`latency_term`, and
  a context's latency limits, :func:`within_limit` (expected) and :func:`within_p95`
  (:mod:`iapo.latency`);
- the cost term w_cost x cost x completions paid: :func:`cost_term` (the exact Q,
  :class:`iapo.envs.base.QueryTable`; the Q table, :class:`iapo.estimate.QTable`; the model,
  :class:`iapo.model.ModelQTable`);
- majority voting (Eq. 2): :func:`counted_votes` (the votes that can win: "no answer" only
  where every completion abstains, under the abstain rule), :func:`vote_winners` (the answers
  tied for the most of them) and :func:`credit_from_votes` (1/t if gold is among the t
  tied); the mixed strategy (Remark) averages the best style per answer over the tied
  winners: :func:`winners_mean`;
- nested block reuse: :func:`block_counts` (floor(G/n) blocks of n in a group of G).

The utility of a whole group, scored one group at a time, is the tests' reference
(``tests/brute.py``); the Q table computes it for every block of a batch at once.

Conventions: ``scores`` has shape [..., n, K+1], the K task objectives first and the cost of the
completion last, as a positive number. ``weights`` [C, K] and ``cost_weights`` [C] come from a
:class:`~iapo.problem.ContextGrid`; functions score all C contexts at once (cross-context reuse).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.integer]


def task_values(scores: npt.ArrayLike, weights: npt.ArrayLike) -> FloatArray:
    """Weighted task reward sum_k w_k o_ik of every completion in every context: [..., n, C]."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    k = w.shape[1]
    if s.shape[-1] != k + 1:
        raise ValueError(f"scores have {s.shape[-1]} columns; expected K+1 = {k + 1} (cost last)")
    return s[..., :k] @ w.T


def style_values(scores: npt.ArrayLike, weights: npt.ArrayLike) -> FloatArray:
    """The mixed strategy's weighted other objectives sum_{k>1} w_k o_ik (the first objective,
    correctness, is majority voting's): scores [..., n, K+1], weights [C, K] -> [..., n, C]."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return s[..., 1:-1] @ w[:, 1:].T


def cost_term(cost_weights: FloatArray, cost: FloatArray,
              completions: npt.NDArray[np.float64] | npt.NDArray[np.int64] | None = None
              ) -> FloatArray:
    """w_cost x cost x completions paid: what every utility subtracts from its task value.

    ``cost`` is the cost of one completion and ``completions`` the number paid; without
    ``completions``, ``cost`` is the cost of all the completions paid. The arrays broadcast:
    the caller puts the context axis of ``cost_weights`` [C] where its result has it.
    """
    term: FloatArray = cost_weights * cost
    return term if completions is None else np.multiply(term, completions)


def latency_term(latency_weights: FloatArray, latency: FloatArray) -> FloatArray:
    """w_latency x expected latency (seconds): what a context that prices latency also
    subtracts (beyond the paper; :mod:`iapo.latency`). Broadcast as :func:`cost_term`."""
    return np.multiply(latency_weights, latency)


def within_limit(latency: FloatArray, limits: FloatArray) -> npt.NDArray[np.bool_]:
    """Whether an arm of expected ``latency`` is eligible under each context's ``limits``
    (inf: none): latency <= limit, elementwise (broadcast)."""
    return np.asarray(np.asarray(latency) <= np.asarray(limits) * (1 + 1e-12))


P95 = 0.95  # the quantile a context's ``p95`` limit bounds


def within_p95(over: FloatArray) -> npt.NDArray[np.bool_]:
    """Whether an arm whose latency exceeds its context's p95 limit with probability ``over``
    is eligible: its 95th percentile is at most the limit, i.e. over <= 1 - 0.95."""
    return np.asarray(np.asarray(over) <= (1 - P95) + 1e-12)


def latency_priced(q: FloatArray, latency: FloatArray, latency_weights: FloatArray,
                   limits: FloatArray, judged: FloatArray | None = None,
                   over: FloatArray | None = None) -> FloatArray:
    """Q of contexts that price latency: ``q`` less :func:`latency_term`, and -inf for an arm
    over its context's limit (:func:`within_limit`) or p95 limit (:func:`within_p95`). q [C,
    ...], latency broadcast against it, latency_weights and limits [C]. ``judged`` (default
    ``latency``): the latency the limit judges, where it differs (the exact Q of a split
    judges an arm on all the queries). ``over`` [C, ...] (None: no p95 limit): P(latency >
    the context's p95 limit) (:meth:`iapo.latency.LatencyModel.over`)."""
    shape = (-1,) + (1,) * (np.ndim(q) - 1)
    w, limit = np.reshape(latency_weights, shape), np.reshape(limits, shape)
    priced = np.asarray(q) - latency_term(w, np.asarray(latency))
    eligible = within_limit(latency if judged is None else judged, limit)
    if over is not None:
        eligible = eligible & within_p95(over)
    return np.where(eligible, priced, -np.inf)


def vote_counts(labels: npt.ArrayLike, n_categories: int | None = None) -> npt.NDArray[np.int64]:
    """Votes per answer category: labels [..., n] (ints >= 0) -> counts [..., L]."""
    lab = np.asarray(labels)
    if lab.size and (lab.min() < 0):
        raise ValueError("answer labels must be non-negative category indices")
    n_cat = int(n_categories if n_categories is not None else (lab.max() + 1 if lab.size else 1))
    if lab.size and lab.max() >= n_cat:
        raise ValueError(
            f"answer label {int(lab.max())} is outside the {n_cat} categories 0..{n_cat - 1}"
        )
    lead = lab.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    offsets = np.arange(rows, dtype=np.int64)[:, None] * n_cat
    flat = lab.reshape(rows, -1).astype(np.int64) + offsets
    counts = np.bincount(flat.ravel(), minlength=rows * n_cat)
    return counts.reshape(*lead, n_cat)


def counted_votes(votes: npt.ArrayLike, no_answer: npt.ArrayLike | None = None
                  ) -> npt.NDArray[np.integer]:
    """The votes that decide majority voting: votes [..., L] -> [..., L].

    ``no_answer`` [...] (broadcast) is the category of "no answer" under the abstain rule
    (-1, or a category beyond L, where a group has none): its votes are set to 0 wherever
    another category holds a vote, so "no answer" wins only a group where every completion
    abstains. None: the vote rule, "no answer" a category like any other (votes unchanged).
    """
    v = np.asarray(votes)
    if no_answer is None:
        return v
    z = np.broadcast_to(np.asarray(no_answer, dtype=np.int64), v.shape[:-1])
    has = (z >= 0) & (z < v.shape[-1])
    at = np.where(has, z, 0)[..., None]
    abstained = np.take_along_axis(v, at, -1)[..., 0]
    answered = v.sum(axis=-1) - np.where(has, abstained, 0) > 0
    out = v.copy()
    np.put_along_axis(out, at, np.where(has & answered, 0, abstained)[..., None], -1)
    return out


def vote_winners(votes: npt.ArrayLike, no_answer: npt.ArrayLike | None = None
                 ) -> npt.NDArray[np.bool_]:
    """The answers tied for the most counted votes (:func:`counted_votes`): votes [..., L],
    ``no_answer`` [...] or None -> mask [..., L].

    This is the one majority-voting rule of the package: training credits each of the t tied
    answers 1/t (Eq. 2), which is exactly the expected outcome of serving, where the winner is
    drawn uniformly among them (:func:`iapo.live.aggregate.aggregate`).
    """
    v = counted_votes(votes, no_answer)
    return v == v.max(axis=-1, keepdims=True)


def credit_from_votes(votes: npt.ArrayLike, gold: npt.ArrayLike,
                      no_answer: npt.ArrayLike | None = None) -> FloatArray:
    """Eq. 2's credit from vote counts: 1/t if the gold answer is among the t answers tied for
    the most counted votes, else 0. votes [..., L], gold [...] and ``no_answer`` [...]
    (broadcast; :func:`counted_votes`) -> [...]."""
    win = vote_winners(votes, no_answer)
    g = np.broadcast_to(np.asarray(gold, dtype=np.int64), win.shape[:-1])
    at_gold = np.take_along_axis(win, g[..., None], -1)[..., 0]
    return np.where(at_gold, 1.0 / win.sum(axis=-1), 0.0)


def gold_first(rows: npt.ArrayLike, gold: npt.ArrayLike) -> npt.NDArray:
    """Each row as (its gold entry, then the other entries sorted descending): MV credit
    depends on a row of answer probabilities or vote counts only through this. rows [M, L],
    gold [M] -> [M, L]."""
    r = np.asarray(rows)
    g = np.asarray(gold, dtype=np.intp).reshape(-1, 1)
    first = np.take_along_axis(r, g, -1)
    keep = np.ones(r.shape, dtype=bool)
    np.put_along_axis(keep, g, False, -1)
    others = r[keep].reshape(r.shape[0], r.shape[1] - 1)
    return np.concatenate([first, -np.sort(-others, axis=-1)], axis=-1)


def unique_rows(keys: npt.ArrayLike) -> tuple[npt.NDArray, npt.NDArray[np.intp]]:
    """The distinct rows of ``keys`` [M, k] and each row's index into them [M]. Rows of
    non-negative integers that fit in one int64 are deduplicated as one integer each."""
    k = np.asarray(keys)
    if np.issubdtype(k.dtype, np.integer) and k.size and k.min() >= 0:
        radix = int(k.max()) + 1
        if k.shape[1] * np.log2(max(radix, 2)) < 62:
            codes = k.astype(np.int64) @ (radix ** np.arange(k.shape[1], dtype=np.int64))
            _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
            return k[first], inverse.reshape(-1).astype(np.intp)
    uniq, inverse = np.unique(k, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1).astype(np.intp)


def winners_mean(per_answer: npt.ArrayLike, winners: npt.ArrayLike) -> FloatArray:
    """Average of ``per_answer`` [..., L, C] over the tied winners (mask [..., L]): the
    expected value of the uniformly drawn winner; [..., C]."""
    pa = np.asarray(per_answer, dtype=np.float64)
    win = np.asarray(winners)
    picked = np.where(win[..., None], pa, 0.0).sum(axis=-2)
    return picked / win.sum(axis=-1)[..., None]


def block_counts(group_size: int, n_max: int) -> npt.NDArray[np.int64]:
    """Nested block reuse: a group of N completions yields floor(N/n) disjoint blocks of size n.

    Returns [n_max] with entry n-1 = floor(group_size / n) (0 for n > group_size).
    """
    n = np.arange(1, n_max + 1)
    return (group_size // n).astype(np.int64)
