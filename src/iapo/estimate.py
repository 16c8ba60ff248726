"""The Q table: stockpiled utility statistics of every arm in every context.

One group of G completions of prompt p scores every context at once (cross-context reuse) and
yields floor(G/n) disjoint blocks of n completions for every n <= G (nested cross-scale reuse):
block b of size n holds completions [b*n, (b+1)*n). Each block is one i.i.d. sample of the
utility R_x(c, p, n) (paper, Eqs. 1 and 2).

The update is vectorized over all groups of a batch at once: groups are padded to N_max and the
fixed table of all (n, b) blocks of a group of N_max is masked by each group's own size. Block
maxima (BoN) come from a sparse table of power-of-two window maxima, block vote counts (MV) and
block costs from prefix sums, so a batch costs a constant number of numpy calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import gammaln

from iapo.errors import InputError
from iapo.exact import mv_subset_credit
from iapo.memo import Memo
from iapo.problem import Problem
from iapo.pulls import Observation
from iapo.utility import (
    credit_from_votes,
    gold_first,
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
        sizes = np.repeat(np.arange(1, n_max + 1), n_max // np.arange(1, n_max + 1))
        first = np.concatenate([[0], np.cumsum(n_max // np.arange(1, n_max + 1))[:-1]])
        b = np.arange(sizes.size) - np.repeat(first, n_max // np.arange(1, n_max + 1))
        start = (b * sizes).astype(np.intp)
        return cls(start, (start + sizes).astype(np.intp), sizes.astype(np.intp))


def _window_max(values: FloatArray, start: npt.NDArray[np.intp],
                end: npt.NDArray[np.intp]) -> FloatArray:
    """max(values[:, s:e]) for every block, by a sparse table: values [m, G, C] -> [m, B, C]."""
    length = end - start
    level = np.floor(np.log2(length)).astype(np.intp)
    out = np.empty((values.shape[0], start.size, values.shape[2]))
    table = values
    for j in range(int(level.max()) + 1):
        if j > 0:
            half = 1 << (j - 1)
            table = np.maximum(table[:, :-half], table[:, half:])
        sel = np.flatnonzero(level == j)
        if sel.size:
            width = 1 << j
            out[:, sel] = np.maximum(table[:, start[sel]], table[:, end[sel] - width])
    return out


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

    def update(self, observations: Sequence[Observation]) -> None:
        """Take in a batch of the oracle's observations."""
        ...


class QTable:
    """Stockpiled block statistics: sums and sums of squares [C, P, N_max], counts [P, N_max].

    ``mean`` is NaN for arms with no data.
    """

    def __init__(self, problem: Problem, estimator: str = "blocks") -> None:
        if estimator not in ESTIMATORS:
            raise InputError(f"estimator '{estimator}' is unknown; use one of {list(ESTIMATORS)}")
        if estimator == "subsets" and problem.aggregator == "mixed":
            raise InputError("the subsets estimator supports mv and bon problems, not mixed; "
                             "use blocks")
        self.problem = problem
        self.estimator = estimator
        c, p, n = problem.n_contexts, problem.n_prompts, problem.n_max
        self.sums = np.zeros((c, p, n))
        self.sumsq = np.zeros((c, p, n))
        self.counts = np.zeros((p, n), dtype=np.int64)
        self._blocks = BlockTable.of(n)
        self._block_onehot = (self._blocks.size[:, None] == np.arange(1, n + 1)).astype(
            np.float64
        )  # [B, N]
        self._block_cache: dict[int, tuple[BlockTable, FloatArray]] = {}
        self._weights = problem.grid.weights  # [C, K]
        self._cost_weights = problem.grid.cost_weights  # [C]

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

    def _blocks_upto(self, g: int) -> tuple[BlockTable, FloatArray]:
        """The blocks that fit in a group of g completions, and their one-hot sizes [B_g, N]."""
        if g not in self._block_cache:
            bt = self._blocks
            keep = np.flatnonzero(bt.end <= g)
            self._block_cache[g] = (
                BlockTable(bt.start[keep], bt.end[keep], bt.size[keep]),
                self._block_onehot[keep],
            )
        return self._block_cache[g]

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
    ) -> tuple[FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.intp], FloatArray]:
        """Utilities of every block of every group, all contexts.

        Groups are padded to the largest group size G of the batch. Returns (util [m, B, C],
        valid [m, B], prompt [m], block one-hot sizes [B, N_max]) for the m groups.
        """
        scores, sizes, prompts, labels, gold = self._pad(observations)
        m, g_pad, k1 = scores.shape
        bt, onehot = self._blocks_upto(g_pad)
        valid = bt.end[None, :] <= sizes[:, None]  # [m, B]
        cost_prefix = np.concatenate([np.zeros((m, 1)), np.cumsum(scores[..., -1], axis=1)], 1)
        block_cost = cost_prefix[:, bt.end] - cost_prefix[:, bt.start]  # [m, B]
        util = -block_cost[..., None] * self._cost_weights  # [m, B, C]
        w = self._weights
        if labels is not None and gold is not None:
            votes = self._block_votes(labels, gold, bt)  # [m, B, L]
            util += credit_from_votes(votes, gold[:, None])[..., None] * w[:, 0]
            if self.problem.aggregator == "mixed" and w.shape[1] > 1:
                # served: the best style among the completions giving the winning answer
                style = scores[..., 1 : k1 - 1] @ w[:, 1:].T  # [m, G, C]
                n_cat = votes.shape[-1]
                mine = np.where((labels[..., None] == np.arange(n_cat))[..., None],
                                style[:, :, None, :], -np.inf)  # [m, G, L, C]
                best = _window_max(mine.reshape(m, g_pad, -1), bt.start, bt.end)
                best = best.reshape(m, bt.size.size, n_cat, style.shape[-1])  # [m, B, L, C]
                with np.errstate(invalid="ignore"):
                    style_term = winners_mean(best, vote_winners(votes))
                util += np.where(valid[..., None], style_term, 0.0)
        else:
            task = task_values(scores, w)  # [m, G, C]
            util += _window_max(task, bt.start, bt.end)
        return util, valid, prompts, onehot

    @staticmethod
    def _block_votes(
        labels: npt.NDArray[np.int64], gold: npt.NDArray[np.int64], bt: BlockTable
    ) -> npt.NDArray[np.int32]:
        """Vote counts of every block: labels [m, G] (-1 = padding), gold [m] -> [m, B, L]."""
        n_cat = int(max(labels.max(initial=0), gold.max(initial=0))) + 1
        onehot = labels[..., None] == np.arange(n_cat)  # [m, G, L]
        prefix = np.zeros((labels.shape[0], labels.shape[1] + 1, n_cat), dtype=np.int32)
        np.cumsum(onehot, axis=1, out=prefix[:, 1:])
        return prefix[:, bt.end] - prefix[:, bt.start]  # [m, B, L]

    def subset_utilities(
        self, observations: Sequence[Observation]
    ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.intp], FloatArray]:
        """U-statistics: per group and n <= G, the exact average utility over all size-n
        subsets of its G completions, every context.

        Returns (util [m, G, C] with column n-1 for size n, weight [m, G] = floor(G/n) for
        n <= G else 0, prompt [m], one-hot sizes [G, N_max]). A group counts for as many
        samples of arm (p, n) as it has disjoint blocks, floor(G/n), as with blocks.
        """
        scores, sizes, prompts, labels, gold = self._pad(observations)
        m, g_pad, k1 = scores.shape
        n = np.arange(1, g_pad + 1)
        weight = np.where(n[None, :] <= sizes[:, None], sizes[:, None] // n[None, :], 0)
        mean_cost = scores[..., -1].sum(axis=1) / sizes  # [m]
        # cost is linear: a size-n subset costs n times the group's mean on average
        util = -(mean_cost[:, None, None] * n[None, :, None]) * self._cost_weights
        w = self._weights
        if labels is not None and gold is not None:
            util += _mv_subset_credit(labels, gold, sizes)[..., None] * w[:, 0]
            if self.problem.aggregator == "mixed" and w.shape[1] > 1:
                util += _bon_subset_max(scores[..., 1 : k1 - 1] @ w[:, 1:].T, sizes)
        else:
            util += _bon_subset_max(task_values(scores, w), sizes)
        onehot = np.eye(g_pad, self.problem.n_max)
        return util, weight.astype(np.float64), prompts, onehot

    def update(self, observations: Sequence[Observation]) -> None:
        """Add every group in ``observations`` to the statistics.

        Groups are processed in size classes (G in 1, 2, 3-4, 5-8, ...) so that padding at
        most doubles the work.
        """
        obs = [o for o in observations if o.count > 0]
        classes: dict[int, list[Observation]] = {}
        for o in obs:
            classes.setdefault((o.n - 1).bit_length(), []).append(o)
        for group in classes.values():
            if self.estimator == "subsets":
                util, weight, prompts, oh = self.subset_utilities(group)
            else:
                util, valid, prompts, oh = self.block_utilities(group)
                weight = valid.astype(np.float64)
            self._add(util, weight, prompts, oh)

    def _add(self, util: FloatArray, weight: FloatArray, prompts: npt.NDArray[np.intp],
             oh: FloatArray) -> None:
        """sums += sum w u, sumsq += sum w u^2, counts += sum w, per (prompt, n); the slots
        of ``util`` [m, B, C] map to n by the one-hot ``oh`` [B, N]."""
        util = util * weight[..., None]
        # sum groups of the same prompt: contiguous runs, then a tiny one-hot product
        order = np.argsort(prompts, kind="stable")
        prompts = prompts[order]
        starts = np.flatnonzero(np.r_[True, prompts[1:] != prompts[:-1]])
        seg_prompt = prompts[starts]
        c = util.shape[2]
        with np.errstate(invalid="ignore", divide="ignore"):
            sq = np.where(weight[..., None] > 0, util * util / weight[..., None], 0.0)
        # one reduction for sums, sums of squares and counts: [m, B, 2C+1]
        stacked = np.concatenate([util, sq, weight[..., None]], axis=2)[order]
        seg = np.add.reduceat(stacked, starts, axis=0)  # [S, B, 2C+1]
        per_n = np.einsum("sbk,bn->ksn", seg, oh)  # [2C+1, S, N]
        self.sums[:, seg_prompt] += per_n[:c]
        self.sumsq[:, seg_prompt] += per_n[c : 2 * c]
        self.counts[seg_prompt] += np.rint(per_n[2 * c]).astype(np.int64)


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


def _mv_subset_credit(labels: npt.NDArray[np.int64], gold: npt.NDArray[np.int64],
                      sizes: npt.NDArray[np.intp]) -> FloatArray:
    """Average 1/t credit over all size-n subsets of every group: [m, G] (0 where n > size).

    The average depends only on the group's size, gold count and the multiset of the other
    counts, so results are memoized by that key (a bounded memo)."""
    m, g_pad = labels.shape
    n_cat = int(max(labels.max(initial=0), gold.max(initial=0))) + 1
    counts = (labels[..., None] == np.arange(n_cat)).sum(axis=1)  # [m, L]
    keys = np.concatenate([sizes[:, None], gold_first(counts, gold)], axis=1)
    uniq, inverse = unique_rows(keys)

    def compute(idx: npt.NDArray[np.intp]) -> list[FloatArray]:
        out: list[FloatArray] = [np.empty(0)] * idx.size
        for g in np.unique(uniq[idx, 0]):  # one call per group size; rows of g credits
            at = np.flatnonzero(uniq[idx, 0] == g)
            credit = mv_subset_credit(uniq[idx[at], 1], uniq[idx[at], 2:], int(g))
            for j, row in zip(at, credit, strict=True):
                out[j] = row
        return out

    return _SUBSET_CREDIT.rows(uniq, g_pad, compute)[inverse]
