"""The Q table: stockpiled utility statistics of every arm in every context.

One group of G completions of prompt p scores every context at once (cross-context reuse) and
yields floor(G/n) disjoint blocks of n completions for every n <= G (nested cross-scale reuse):
block b of size n holds completions [b*n, (b+1)*n). Each block is one i.i.d. sample of the
utility R_x(c, p, n) (paper, Eqs. 1 and 2).

The update is vectorized over all groups of a batch at once: the batch's completions are laid
end to end and every block of every group is a range [start, end) of them. Block vote counts
(MV) and block costs come from prefix sums, block maxima (BoN) from one ``maximum.reduceat``,
and the statistics of all blocks are summed per (prompt, n) by one ``bincount``, so a batch
costs a constant number of numpy calls whatever its group sizes.

Each formula is called from its home, not written here: the parts of the utilities (task
values, the cost term, the MV credit, the mixed strategy's style over the tied winners) from
:mod:`iapo.utility`, the decided rule's replay from :func:`iapo.stopping.stop_points`, the
flat arm index from :func:`iapo.problem.arm_index`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

from iapo.errors import InputError
from iapo.exact import abstain_first, mv_subset_credit
from iapo.memo import Memo
from iapo.problem import Problem, arm_index
from iapo.pulls import Observation, abstain_categories
from iapo.utility import (
    block_counts,
    cost_term,
    credit_from_votes,
    gold_first,
    style_values,
    task_values,
    unique_rows,
    vote_winners,
    winners_mean,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class BlockTable:
    """Every block (n, b) of a group of n_max completions, ordered by n.

    start, end: [B] completion ranges [start, end); size: [B] the block size n.
    """

    start: npt.NDArray[np.intp]
    end: npt.NDArray[np.intp]
    size: npt.NDArray[np.intp]

    @classmethod
    def of(cls, n_max: int) -> BlockTable:
        counts = block_counts(n_max, n_max)  # [n_max]: floor(n_max / n) blocks of each size n
        sizes = np.repeat(np.arange(1, n_max + 1), counts)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        b = np.arange(sizes.size) - np.repeat(first, counts)
        start = (b * sizes).astype(np.intp)
        return cls(start, (start + sizes).astype(np.intp), sizes.astype(np.intp))


def _range_max(values: FloatArray, start: npt.NDArray[np.intp],
               end: npt.NDArray[np.intp]) -> FloatArray:
    """max(values[s:e]) along the first axis for every range (s < e): values [T, ...] ->
    [R, ...]. One ``maximum.reduceat`` over the interleaved bounds (s0, e0, s1, e1, ...):
    its even results are the ranges, its odd ones are dropped."""
    bounds = np.empty(2 * start.size, dtype=np.intp)
    bounds[0::2] = start
    bounds[1::2] = end
    padded = np.concatenate([values, values[:1]])  # so that e = T is a valid bound
    return np.maximum.reduceat(padded, bounds, axis=0)[0::2]


def _rate_chosen(util: FloatArray, values: FloatArray, best: FloatArray,
                 obs: Sequence[Observation], scores: FloatArray, weights: FloatArray,
                 start: npt.NDArray[np.intp], end: npt.NDArray[np.intp],
                 first: npt.NDArray[np.intp], per_group: npt.NDArray[np.intp]) -> None:
    """Best-of-N with values a person gave later (``Observation.rated``): where a block's
    scores choose a rated completion (the first of its best, as the gateway chooses), the
    block is worth that completion's rated value, not its scored one. ``util`` [C, B] is
    corrected in place; ``values`` [T, C] are the completions' scored values, ``best``
    [B, C] the blocks' maxima of them, ``first`` [m] each group's first completion and
    ``per_group`` [m] its number of blocks (a group's blocks are consecutive)."""
    k = weights.shape[1]
    rated = np.concatenate([o.rated_or_nan.reshape(-1, k) for o in obs])  # [T, K]
    which = np.flatnonzero(~np.isnan(rated).all(axis=1))  # the rated completions [R]
    filled = np.concatenate([np.where(np.isnan(rated), scores[:, :k], rated)[which],
                             scores[which, -1:]], axis=1)
    delta = task_values(filled, weights) - values[which]  # [R, C]
    # every (rated completion, block of its group) pair, then those whose block holds it
    g = np.searchsorted(first, which, side="right") - 1  # each one's group [R]
    block0 = np.cumsum(per_group) - per_group  # each group's first block
    pair_r = np.repeat(np.arange(which.size), per_group[g])
    offset = np.arange(pair_r.size) - np.repeat(np.cumsum(per_group[g]) - per_group[g],
                                                per_group[g])
    pair_b = block0[g][pair_r] + offset
    i = which[pair_r]
    inside = (start[pair_b] <= i) & (i < end[pair_b])
    pair_r, pair_b, i = pair_r[inside], pair_b[inside], i[inside]
    # chosen: its value is the block's best, and none before it in the block reaches it
    earlier = np.full((i.size, values.shape[1]), -np.inf)
    has = i > start[pair_b]
    if has.any():
        earlier[has] = _range_max(values, start[pair_b][has], i[has])
    chosen = (values[i] == best[pair_b]) & (earlier < best[pair_b])  # [pairs, C]
    np.add.at(util.T, pair_b, np.where(chosen, delta[pair_r], 0.0))  # util.T: a view


class Estimator(Protocol):
    """What a learner reads and feeds: Q estimates for every arm, and how much data is behind
    them. :class:`QTable` (blocks or subsets of the groups) and
    :class:`iapo.model.ModelQTable` (a per-query model) implement it."""

    @property
    def mean(self) -> FloatArray:
        """Estimated Q(c, p, n): [C, P, N_max], NaN where there is no data."""
        ...

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        """Data behind each arm's estimate (0: none): [P, N_max]."""
        ...

    @property
    def width(self) -> npt.NDArray[np.int64] | None:
        """The wave width W behind each estimate, [C, P, N_max], where it is part of the arm
        (``stopping.widths``); else None."""
        ...

    @property
    def latency(self) -> FloatArray | None:
        """The predicted expected latency (seconds) behind each estimate, [C, P, N_max],
        where contexts price latency or the width is part of the arm; else None."""
        ...

    def update(self, observations: Sequence[Observation]) -> None:
        """Take in a batch of the oracle's observations."""
        ...


class QTable:
    """Stockpiled block statistics: sums and sums of squares [C, P, N_max], counts [P, N_max].

    ``mean`` is NaN for arms with no data. It prices quality and cost, not latency: contexts
    that weigh or limit latency are refused, unless ``without_latency`` (Q without their
    latency terms, which the caller adds; the wave width must not be part of the arm).
    """

    def __init__(self, problem: Problem, estimator: str = "blocks",
                 without_latency: bool = False) -> None:
        if estimator not in ESTIMATORS:
            raise InputError(f"estimator '{estimator}' is unknown; use one of {list(ESTIMATORS)}")
        if estimator == "subsets" and problem.aggregator == "mixed":
            raise InputError("the subsets estimator supports mv and bon problems, not mixed; "
                             "use blocks")
        if estimator == "subsets" and problem.stopping.early:
            raise InputError("the subsets estimator prices arms that pay all N; with stop "
                             f"'{problem.stopping.rule}' use blocks")
        if problem.stopping.widths or (problem.grid.prices_latency and not without_latency):
            raise InputError("the Q table of blocks does not price latency yet; contexts that "
                             "weigh or limit latency, and --wave auto, are learned by the "
                             "per-query model: use psst-auto (the default) or psst-model")
        self.problem = problem
        self.estimator = estimator
        c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
        self.sums = np.zeros((c, p, n))
        self.sumsq = np.zeros((c, p, n))
        self.counts = np.zeros((p, n), dtype=np.int64)
        # every block of a group of N_max, by where it ends (then its size): the blocks of a
        # smaller group of g are the first _fits[g] of them
        blocks = BlockTable.of(n)
        order = np.lexsort((blocks.size, blocks.end))
        self._blocks = BlockTable(blocks.start[order], blocks.end[order], blocks.size[order])
        self._fits = np.searchsorted(self._blocks.end, np.arange(n + 1), side="right")
        self._weights = problem.grid.weights  # [C, K]
        self._cost_weights = problem.grid.cost_weights  # [C]

    width = None  # the wave width is never part of its arms, nor is latency priced (refused
    latency = None  # above)

    @property
    def mean(self) -> FloatArray:
        """Estimated Q(c, p, n): [C, P, N_max] (NaN where no block was seen)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts

    @property
    def variance(self) -> FloatArray:
        """Sample variance of the block utilities: [C, P, N_max] (NaN below 2 blocks)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.counts.astype(np.float64)
            var = (self.sumsq - self.sums**2 / n) / (n - 1)
        return np.where(n >= 2, np.maximum(var, 0.0), np.nan)

    def _pad(self, observations: Sequence[Observation]) -> tuple[
            FloatArray, npt.NDArray[np.intp], npt.NDArray[np.intp],
            npt.NDArray[np.int64] | None, npt.NDArray[np.int64] | None]:
        """Stack a batch's groups, padded to its largest group size G: scores [m, G, K+1],
        sizes [m], prompts [m], and for MV labels [m, G] (-1 = padding) and gold [m]."""
        obs = [o for o in observations if o.count > 0]
        g_pad = max(o.n for o in obs)
        m = sum(o.count for o in obs)
        k1 = obs[0].scores.shape[-1]
        scores = np.zeros((m, g_pad, k1))
        sizes = np.empty(m, dtype=np.intp)
        prompts = np.empty(m, dtype=np.intp)
        mv = self.problem.aggregator in ("mv", "mixed")
        labels = np.full((m, g_pad), -1, dtype=np.int64) if mv else None  # -1: no vote
        gold = np.zeros(m, dtype=np.int64) if mv else None
        i = 0
        for o in obs:  # one iteration per pull request, not per completion
            j = i + o.count
            scores[i:j, : o.n] = o.scores
            sizes[i:j] = o.n
            prompts[i:j] = o.prompt
            if labels is not None and gold is not None:
                if o.labels is None or o.gold is None:
                    raise ValueError("a majority-voting oracle must return answer labels and gold")
                labels[i:j, : o.n] = o.labels
                gold[i:j] = o.gold
            i = j
        return scores, sizes, prompts, labels, gold

    def block_utilities(
        self, observations: Sequence[Observation]
    ) -> tuple[FloatArray, npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Utilities of every block of every group, all contexts.

        Returns (util [B, C], prompt [B], n [B]) for the B blocks (n, b), (b + 1) n <= G, of
        every group of G completions in the batch: group by group, and within a group by where
        the block ends, then by its size (so its last block is the whole group).
        """
        util, prompts, n, _ = self.grouped_blocks(observations)
        return util, prompts, n

    def group_means(
        self, observations: Sequence[Observation]
    ) -> tuple[FloatArray, npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Per group and block size n, the mean utility of the group's floor(G/n) blocks of
        size n: one sample of Q(c, p, n) per group, independent across groups (its blocks
        share a query, so they are not). Returns (util [R, C], prompt [R], n [R], group [R])
        for the R (group, n) pairs, n <= G, by group (in the batch's order), then by n."""
        util, prompts, n, group = self.grouped_blocks(observations)
        n_max = self.problem.n_max
        keys, inverse = np.unique(group * n_max + (n - 1), return_inverse=True)
        blocks = np.bincount(inverse).astype(np.float64)
        means = np.stack([np.bincount(inverse, u, minlength=keys.size) for u in util.T],
                         axis=1) / blocks[:, None]
        first = np.zeros(keys.size, dtype=np.intp)
        first[inverse[::-1]] = np.arange(inverse.size)[::-1]  # a block of every pair
        return means, prompts[first], n[first], group[first]

    def grouped_blocks(
        self, observations: Sequence[Observation]
    ) -> tuple[FloatArray, npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """:meth:`block_utilities` and the group of every block: (util [B, C], prompt [B],
        n [B], group [B]), groups numbered 0.. in the batch's order."""
        obs = [o for o in observations if o.count > 0]
        per_obs = np.array([(o.count, o.n, o.prompt) for o in obs], dtype=np.intp)
        sizes = np.repeat(per_obs[:, 1], per_obs[:, 0])  # [m]
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # each group's first completion
        k1 = obs[0].scores.shape[-1]
        scores = np.concatenate([o.scores.reshape(-1, k1) for o in obs])  # [T, K+1]
        # the blocks of a group of g are the first fits[g] blocks of the table (ordered by end)
        bt, fits = self._blocks, self._fits
        per_group = fits[sizes]
        group = np.repeat(np.arange(sizes.size), per_group)  # [B]
        row = np.arange(group.size) - np.repeat(np.cumsum(per_group) - per_group, per_group)
        start, end, n = first[group] + bt.start[row], first[group] + bt.end[row], bt.size[row]
        # arrays run along the blocks (or completions) in their last axis: reductions over a
        # few answers or contexts are then elementwise over long rows, not short inner loops
        cost_prefix = np.concatenate([[0.0], np.cumsum(scores[:, -1])])
        cost = cost_prefix[end] - cost_prefix[start]  # [B]
        util = -cost_term(self._cost_weights[:, None], cost)  # [C, B]
        w = self._weights
        if self.problem.aggregator in ("mv", "mixed"):
            if any(o.labels is None or o.gold is None for o in obs):
                raise ValueError("a majority-voting oracle must return answer labels and gold")
            labels = np.concatenate([np.asarray(o.labels).reshape(-1) for o in obs])  # [T]
            gold = np.concatenate([np.asarray(o.gold).reshape(-1) for o in obs])[group]  # [B]
            n_cat = int(max(labels.max(initial=0), gold.max(initial=0))) + 1
            onehot = labels == np.arange(n_cat)[:, None]  # [L, T]
            prefix = np.zeros((n_cat, labels.size + 1), dtype=np.int32)
            np.cumsum(onehot, axis=1, out=prefix[:, 1:])
            votes = (np.take(prefix, end, axis=1) - np.take(prefix, start, axis=1)).T  # [B, L]
            abstain = abstain_categories(self.problem, obs)
            no_answer = None if abstain is None else abstain[group]  # [B]
            util += w[:, :1] * credit_from_votes(votes, gold, no_answer)
            stopping = self.problem.stopping
            if stopping.early:  # a block pays what its arm would have: replay the rule on it
                from iapo.stopping import stop_points

                paid_end = start + stop_points(prefix, start, n, stopping.wave, no_answer)
                unpaid = cost_prefix[end] - cost_prefix[paid_end]
                util += cost_term(self._cost_weights[:, None], unpaid)
            if self.problem.aggregator == "mixed" and w.shape[1] > 1:
                # served: the best style among the completions giving the winning answer
                style = style_values(scores, w)  # [T, C]
                mine = np.where(onehot.T[..., None], style[:, None, :], -np.inf)  # [T, L, C]
                util += winners_mean(_range_max(mine, start, end),
                                     vote_winners(votes, no_answer)).T
        else:
            values = task_values(scores, w)  # [T, C]
            best = _range_max(values, start, end)  # [B, C]
            util += best.T
            if any(o.rated is not None for o in obs):
                _rate_chosen(util, values, best, obs, scores, w, start, end, first, per_group)
        util = util.T  # [B, C], a view of [C, B]
        return util, np.repeat(per_obs[:, 2], per_obs[:, 0])[group], n, group

    def subset_utilities(
        self, observations: Sequence[Observation]
    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.intp]]:
        """U-statistics: per group and n <= G, the exact average utility over all size-n
        subsets of its G completions, every context (mv and bon; mixed is refused when the
        table is made).

        Returns (util [m, G, C] with column n-1 for size n, weight [m, G] = floor(G/n) for
        n <= G else 0, prompt [m]). A group counts for as many samples of arm (p, n) as it
        has disjoint blocks, floor(G/n), as with blocks.
        """
        if any(o.rated is not None for o in observations):
            raise ValueError("values a person gave (Observation.rated) are read by the block "
                             "estimates only; use QTable(problem) (blocks)")
        scores, sizes, prompts, labels, gold = self._pad(observations)
        m, g_pad, _ = scores.shape
        n = np.arange(1, g_pad + 1)
        weight = np.where(n[None, :] <= sizes[:, None], sizes[:, None] // n[None, :], 0)
        mean_cost = scores[..., -1].sum(axis=1) / sizes  # [m]
        # cost is linear: a size-n subset costs n times the group's mean on average
        util = -cost_term(self._cost_weights, mean_cost[:, None, None] * n[None, :, None])
        w = self._weights
        if labels is not None and gold is not None:
            abstain = abstain_categories(self.problem, [o for o in observations if o.count > 0])
            util += _mv_subset_credit(labels, gold, sizes, abstain)[..., None] * w[:, 0]
        else:
            util += _bon_subset_max(task_values(scores, w), sizes)
        return util, weight.astype(np.float64), prompts

    def update(self, observations: Sequence[Observation]) -> None:
        """Add every group in ``observations`` to the statistics."""
        if not any(o.count > 0 for o in observations):
            return
        if self.estimator == "subsets":
            util_g, weight_g, prompts_g = self.subset_utilities(observations)
            m, g = weight_g.shape
            keep = weight_g.reshape(-1) > 0
            util = util_g.reshape(m * g, -1)[keep]
            weight = weight_g.reshape(-1)[keep]
            prompts = np.repeat(prompts_g, g)[keep]
            n = np.tile(np.arange(1, g + 1), m)[keep]
        else:
            util, prompts, n = self.block_utilities(observations)
            weight = np.ones(n.size)
        self._add(util, weight, prompts, n)

    def _add(self, util: FloatArray, weight: FloatArray, prompts: npt.NDArray[np.intp],
             n: npt.NDArray[np.intp]) -> None:
        """sums += sum w u, sumsq += sum w u^2, counts += sum w, per (prompt, n), for the
        utilities ``util`` [E, C] of arm (prompts[e], n[e]) with weights [E]."""
        p, n_max = self.counts.shape
        arm = arm_index(prompts, n, n_max)  # [E]
        u = np.ascontiguousarray(util.T)  # [C, E]
        wu = u * weight
        sums = self.sums.reshape(u.shape[0], -1)  # views of [C, P, N]
        sumsq = self.sumsq.reshape(u.shape[0], -1)
        for c in range(u.shape[0]):  # one bincount per context: long rows, no [E, C] scatter
            sums[c] += np.bincount(arm, wu[c], minlength=p * n_max)
            sumsq[c] += np.bincount(arm, wu[c] * u[c], minlength=p * n_max)
        self.counts += np.rint(np.bincount(arm, weight, minlength=p * n_max)).astype(
            np.int64).reshape(p, n_max)


class GroupMeans(QTable):
    """Stockpiled group means (:meth:`QTable.group_means`), one sample of Q(c, p, n) per group:
    sums [C, P, N] and counts [P, N] of groups, so that standard errors and variances over
    them are honest (groups are independent, the blocks of one group are not)."""

    def update(self, observations: Sequence[Observation]) -> None:
        if not any(o.count > 0 for o in observations):
            return
        util, prompts, n, _ = self.group_means(observations)
        self.add(util, prompts, n)

    def add(self, util: FloatArray, prompts: npt.NDArray[np.intp],
            n: npt.NDArray[np.intp]) -> None:
        """Add the group means ``util`` [R, C] of arms (prompts[r], n[r]), one sample each."""
        self._add(util, np.ones(n.size), prompts, n)


ESTIMATORS = ("blocks", "subsets")


def _subset_weights(g: int) -> FloatArray:
    """W[n-1, j-1] = C(j-1, n-1) / C(g, n): the chance that the j-th smallest of g values is
    the largest of a uniformly random size-n subset. [g, g]."""
    j = np.arange(1, g + 1)
    n = np.arange(1, g + 1)[:, None]
    with np.errstate(over="ignore"):
        w = np.exp(gammaln(j) - gammaln(n) - gammaln(np.maximum(j - n, 0) + 1)
                   - (gammaln(g + 1) - gammaln(n + 1) - gammaln(g - n + 1)))
    return np.where(j[None, :] >= n, w, 0.0)


def _bon_subset_max(values: FloatArray, sizes: npt.NDArray[np.intp]) -> FloatArray:
    """Average over all size-n subsets of the max, per group and context: values [m, G, C]
    (padding beyond each group's size ignored) -> [m, G, C] (0 where n > size)."""
    out = np.zeros_like(values)
    for g in np.unique(sizes):
        sel = np.flatnonzero(sizes == g)
        ordered = np.sort(values[sel, :g], axis=1)
        out[sel, :g] = np.einsum("nj,mjc->mnc", _subset_weights(int(g)), ordered)
    return out


_SUBSET_CREDIT = Memo()  # by (group size, gold count, other counts sorted)
_SUBSET_CREDIT_ABSTAIN = Memo()  # by (group size, gold count, "no answer" count, others sorted)


def _mv_subset_credit(labels: npt.NDArray[np.int64], gold: npt.NDArray[np.int64],
                      sizes: npt.NDArray[np.intp],
                      no_answer: npt.NDArray[np.int64] | None = None) -> FloatArray:
    """Average 1/t credit over all size-n subsets of every group: [m, G] (0 where n > size).
    ``no_answer`` [m]: each group's "no answer" category under the abstain rule (None: the
    vote rule).

    The average depends only on the group's size, gold count (and "no answer" count) and the
    multiset of the other counts, so results are memoized by that key (a bounded memo)."""
    m, g_pad = labels.shape
    n_cat = int(max(labels.max(initial=0), gold.max(initial=0))) + 1
    counts = (labels[..., None] == np.arange(n_cat)).sum(axis=1)  # [m, L]
    rows = gold_first(counts, gold) if no_answer is None else abstain_first(counts, gold,
                                                                            no_answer)
    uniq, inverse = unique_rows(np.concatenate([sizes[:, None], rows], axis=1))
    others = 2 if no_answer is None else 3  # the first column of the other counts

    def compute(idx: npt.NDArray[np.intp]) -> list[FloatArray]:
        out: list[FloatArray] = [np.empty(0)] * idx.size
        for g in np.unique(uniq[idx, 0]):  # one call per group size; rows of g credits
            at = np.flatnonzero(uniq[idx, 0] == g)
            key = uniq[idx[at]]
            credit = mv_subset_credit(key[:, 1], key[:, others:], int(g),
                                      None if no_answer is None else key[:, 2])
            for j, row in zip(at, credit, strict=True):
                out[j] = row
        return out

    memo = _SUBSET_CREDIT if no_answer is None else _SUBSET_CREDIT_ABSTAIN
    return memo.rows(uniq, g_pad, compute)[inverse]
