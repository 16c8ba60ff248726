"""Vectorized utilities of a group of completions (paper, Eqs. 1, 2 and 5, and its Remark).

Conventions: ``scores`` has shape [..., n, K+1], the K task objectives first and the cost of the
completion last, as a positive number. ``weights`` [C, K] and ``cost_weights`` [C] come from a
:class:`~iapo.problem.ContextGrid`; every function scores all C contexts at once (cross-context
reuse) and returns [..., C].
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.integer]


def _weights(weights: npt.ArrayLike, cost_weights: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    cw = np.atleast_1d(np.asarray(cost_weights, dtype=np.float64))
    if w.shape[0] != cw.shape[0]:
        raise ValueError(f"{w.shape[0]} weight rows but {cw.shape[0]} cost weights")
    return w, cw


def task_values(scores: npt.ArrayLike, weights: npt.ArrayLike) -> FloatArray:
    """Weighted task reward sum_k w_k o_ik of every completion in every context: [..., n, C]."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    k = w.shape[1]
    if s.shape[-1] != k + 1:
        raise ValueError(f"scores have {s.shape[-1]} columns; expected K+1 = {k + 1} (cost last)")
    return s[..., :k] @ w.T


def bon_utility(
    scores: npt.ArrayLike, weights: npt.ArrayLike, cost_weights: npt.ArrayLike
) -> FloatArray:
    """Best-of-N (Eq. 1): max_i sum_k w_k o_ik - w_cost * sum_i cost_i; shape [..., C]."""
    s = np.asarray(scores, dtype=np.float64)
    w, cw = _weights(weights, cost_weights)
    best = task_values(s, w).max(axis=-2)
    return best - s[..., -1].sum(axis=-1)[..., None] * cw


def ia_utility(
    scores: npt.ArrayLike, weights: npt.ArrayLike, cost_weights: npt.ArrayLike
) -> FloatArray:
    """Inference-agnostic utility (Eq. 5): mean_i (sum_k w_k o_ik - w_cost cost_i); [..., C]."""
    s = np.asarray(scores, dtype=np.float64)
    w, cw = _weights(weights, cost_weights)
    return task_values(s, w).mean(axis=-2) - s[..., -1].mean(axis=-1)[..., None] * cw


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


def vote_winners(votes: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """The answers tied for the most votes: votes [..., L] -> mask [..., L].

    This is the one majority-voting rule of the package: training credits each of the t tied
    answers 1/t (Eq. 2), which is exactly the expected outcome of serving, where the winner is
    drawn uniformly among them (:func:`iapo.live.aggregate.aggregate`).
    """
    v = np.asarray(votes)
    return v == v.max(axis=-1, keepdims=True)


def credit_from_votes(votes: npt.ArrayLike, gold: npt.ArrayLike) -> FloatArray:
    """Eq. 2's credit from vote counts: 1/t if the gold answer is among the t answers tied for
    the most votes, else 0. votes [..., L], gold [...] (broadcast) -> [...]."""
    win = vote_winners(votes)
    g = np.broadcast_to(np.asarray(gold, dtype=np.int64), win.shape[:-1])
    at_gold = np.take_along_axis(win, g[..., None], -1)[..., 0]
    return np.where(at_gold, 1.0 / win.sum(axis=-1), 0.0)


def mv_credit(
    labels: npt.ArrayLike, gold: npt.ArrayLike, n_categories: int | None = None
) -> FloatArray:
    """Majority-voting success credit (Eq. 2): 1/t if the gold answer is among the t answers
    tied for the most votes, else 0. labels [..., n], gold [...] -> [...]."""
    lab = np.asarray(labels)
    g = np.asarray(gold, dtype=np.int64)
    if n_categories is None:
        n_categories = int(max(lab.max(initial=0), g.max(initial=0)) + 1)
    return credit_from_votes(vote_counts(lab, n_categories), g)


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


def mv_utility(
    labels: npt.ArrayLike,
    gold: npt.ArrayLike,
    costs: npt.ArrayLike,
    weights: npt.ArrayLike,
    cost_weights: npt.ArrayLike,
) -> FloatArray:
    """Majority voting (Eq. 2): w_1 * credit - w_cost * sum_i cost_i; [..., C].

    ``costs`` [..., n]; ``weights`` [C, 1] (or [C]).
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    cw = np.asarray(cost_weights, dtype=np.float64).reshape(-1)
    credit = mv_credit(labels, gold)
    return credit[..., None] * w - np.asarray(costs, dtype=np.float64).sum(-1)[..., None] * cw


def best_per_answer(values: npt.ArrayLike, labels: npt.ArrayLike, n_categories: int
                    ) -> FloatArray:
    """The largest value among the completions giving each answer: values [..., n, C],
    labels [..., n] -> [..., L, C], -inf for answers nobody gave."""
    v = np.asarray(values, dtype=np.float64)
    mine = np.asarray(labels)[..., None, :] == np.arange(n_categories)[:, None]  # [..., L, n]
    return np.where(mine[..., None], v[..., None, :, :], -np.inf).max(axis=-2)


def winners_mean(per_answer: npt.ArrayLike, winners: npt.ArrayLike) -> FloatArray:
    """Average of ``per_answer`` [..., L, C] over the tied winners (mask [..., L]): the
    expected value of the uniformly drawn winner; [..., C]."""
    pa = np.asarray(per_answer, dtype=np.float64)
    win = np.asarray(winners)
    picked = np.where(win[..., None], pa, 0.0).sum(axis=-2)
    return picked / win.sum(axis=-1)[..., None]


def mixed_utility(
    labels: npt.ArrayLike,
    gold: npt.ArrayLike,
    scores: npt.ArrayLike,
    weights: npt.ArrayLike,
    cost_weights: npt.ArrayLike,
) -> FloatArray:
    """The paper's mixed strategy (Remark), as it is served: majority voting picks the answer
    (first objective, correctness); among the completions giving that answer, the one with the
    best weighted other objectives (Best-of-N) is returned. In expectation over the uniform
    draw among tied answers:

        sum over tied answers a of (w_1 [a = gold] + max_{i: answer_i = a} sum_{k>1} w_k o_ik) / t
        - w_cost sum_i cost_i.

    ``scores`` [..., n, K+1]: column 0 (per-completion correctness) is not used; weights
    [C, K]. Returns [..., C]."""
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    w, cw = _weights(weights, cost_weights)
    credit = mv_credit(lab, gold)[..., None] * w[:, 0]
    cost = s[..., -1].sum(axis=-1)[..., None] * cw
    if w.shape[1] == 1:
        return credit - cost
    n_cat = int(max(lab.max(initial=0), np.asarray(gold).max(initial=0)) + 1)
    style_values = s[..., 1:-1] @ w[:, 1:].T  # [..., n, C]
    winners = vote_winners(vote_counts(lab, n_cat))
    return credit + winners_mean(best_per_answer(style_values, lab, n_cat), winners) - cost


def block_counts(group_size: int, n_max: int) -> npt.NDArray[np.int64]:
    """Nested block reuse: a group of N completions yields floor(N/n) disjoint blocks of size n.

    Returns [n_max] with entry n-1 = floor(group_size / n) (0 for n > group_size).
    """
    n = np.arange(1, n_max + 1)
    return (group_size // n).astype(np.int64)


def blocks(group: npt.NDArray, n: int, axis: int = -1) -> npt.NDArray:
    """Split the sample axis (length N) of ``group`` into floor(N/n) disjoint blocks of n.

    The axis of length N becomes two axes [N // n, n]; leftover completions are dropped.
    """
    g = np.moveaxis(np.asarray(group), axis, -1)
    m = g.shape[-1] // n
    out = g[..., : m * n].reshape(*g.shape[:-1], m, n)
    # put the (blocks, n) pair back where the sample axis was
    ax = axis if axis >= 0 else g.ndim + axis
    return np.moveaxis(out, (-2, -1), (ax, ax + 1))
