"""Utilities of a group of completions (paper Eqs. 1, 2, 5 and the Remark) and block reuse.

Hand-worked examples first; then property tests against plain-Python reference loops.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iapo.utility import (
    block_counts,
    blocks,
    bon_utility,
    ia_utility,
    mixed_utility,
    mv_credit,
    mv_utility,
    task_values,
    vote_counts,
)

# three contexts over two objectives: (w_1, w_2) and a cost weight each
W = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
CW = np.array([0.0, 1.0, 0.5])
# two completions: (o_1, o_2, cost)
GROUP = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.2]])


# --- Best-of-N (Eq. 1) --------------------------------------------------------------------------


def test_task_values_by_hand() -> None:
    np.testing.assert_allclose(task_values(GROUP, W), [[0.7, 0.2, 0.5], [0.3, 0.8, 0.5]])


def test_bon_utility_by_hand_three_contexts_at_once() -> None:
    # ctx0: max(0.7, 0.3) - 0 * 0.7 ; ctx1: max(0.2, 0.8) - 1 * 0.7 ; ctx2: 0.5 - 0.5 * 0.7
    np.testing.assert_allclose(bon_utility(GROUP, W, CW), [0.7, 0.1, 0.15])


def test_bon_utility_batched_groups() -> None:
    g1 = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.2], [0.0, 0.0, 0.0]])
    g2 = np.array([[0.5, 0.5, 0.1], [1.0, 1.0, 0.1], [0.0, 0.0, 0.1]])
    out = bon_utility(np.stack([g1, g2]), W, CW)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out[0], [0.7, 0.1, 0.15])
    # best completion is (1, 1) everywhere: task 1; costs sum to 0.3
    np.testing.assert_allclose(out[1], [1.0, 0.7, 0.85])


def test_bon_of_one_completion_is_its_weighted_utility() -> None:
    one = GROUP[:1]
    np.testing.assert_allclose(bon_utility(one, W, CW), [0.7, 0.2 - 0.5, 0.5 - 0.25])


def test_score_columns_must_be_k_plus_one() -> None:
    with pytest.raises(ValueError, match="K\\+1 = 3"):
        bon_utility(GROUP[:, :2], W, CW)


def test_weight_rows_and_cost_weights_must_match() -> None:
    with pytest.raises(ValueError, match="3 weight rows but 2 cost weights"):
        bon_utility(GROUP, W, CW[:2])


def _bon_reference(scores: np.ndarray, w: np.ndarray, cw: np.ndarray) -> np.ndarray:
    out = np.empty((scores.shape[0], w.shape[0]))
    for g, group in enumerate(scores):
        for c in range(w.shape[0]):
            best = max(sum(wk * ok for wk, ok in zip(w[c], row[:-1], strict=True))
                       for row in group)
            out[g, c] = best - cw[c] * sum(row[-1] for row in group)
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_groups=st.integers(1, 4),
    n=st.integers(1, 6),
    k=st.integers(1, 3),
    c=st.integers(1, 4),
)
def test_bon_utility_matches_a_reference_loop(
    data: st.DataObject, n_groups: int, n: int, k: int, c: int
) -> None:
    unit = st.floats(0.0, 1.0, allow_nan=False)
    scores = data.draw(hnp.arrays(np.float64, (n_groups, n, k + 1), elements=unit))
    w = data.draw(hnp.arrays(np.float64, (c, k), elements=unit))
    cw = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.0, 2.0)))
    np.testing.assert_allclose(bon_utility(scores, w, cw), _bon_reference(scores, w, cw),
                               atol=1e-12)


# --- inference-agnostic utility (Eq. 5) ---------------------------------------------------------


def test_ia_utility_by_hand() -> None:
    # mean task values: ctx0 (0.7+0.3)/2, ctx1 (0.2+0.8)/2, ctx2 0.5; mean cost 0.35
    np.testing.assert_allclose(ia_utility(GROUP, W, CW), [0.5, 0.5 - 0.35, 0.5 - 0.175])


def test_ia_utility_is_the_mean_of_single_completion_utilities() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=(5, 7, 3))
    singles = np.stack([bon_utility(scores[:, i:i + 1], W, CW) for i in range(7)])
    np.testing.assert_allclose(ia_utility(scores, W, CW), singles.mean(axis=0))


# --- majority voting (Eq. 2) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "gold", "credit"),
    [
        ([0, 1], 0, 0.5),
        ([0, 1], 1, 0.5),
        ([0, 1, 2], 2, 1 / 3),
        ([0, 0, 1, 1, 2, 2, 3, 3], 3, 0.25),
        ([0, 0, 1, 1, 2, 2, 3, 3], 4, 0.0),
        ([2, 2, 1], 2, 1.0),
        ([2, 2, 1], 1, 0.0),
        ([0, 0, 1, 1, 2], 2, 0.0),  # gold has votes but is not among the top
        ([0, 0, 1, 1, 2], 0, 0.5),
        ([5], 5, 1.0),
        ([5], 0, 0.0),
        ([3, 1, 3, 1, 0, 0], 1, 1 / 3),
    ],
)
def test_mv_credit_by_hand(labels: list[int], gold: int, credit: float) -> None:
    assert mv_credit(np.array(labels), np.array(gold)) == pytest.approx(credit)


def test_mv_credit_batched_rows_with_their_own_gold() -> None:
    labels = np.array([[0, 1, 1, 2], [0, 1, 2, 3], [3, 3, 0, 0]])
    np.testing.assert_allclose(mv_credit(labels, np.array([1, 2, 0])), [1.0, 0.25, 0.5])
    # more categories than any label uses change nothing
    np.testing.assert_allclose(mv_credit(labels, np.array([1, 2, 0]), 7), [1.0, 0.25, 0.5])


def _credit_reference(labels: list[int], gold: int) -> float:
    votes = Counter(labels)
    top = max(votes.values())
    winners = [a for a, v in votes.items() if v == top]
    return 1.0 / len(winners) if gold in winners else 0.0


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.lists(st.integers(0, 4), min_size=6, max_size=6), st.integers(0, 4)),
        min_size=1,
        max_size=5,
    )
)
def test_mv_credit_matches_a_counter_reference(rows: list[tuple[list[int], int]]) -> None:
    labels = np.array([r[0] for r in rows])
    gold = np.array([r[1] for r in rows])
    expected = [_credit_reference(lab, g) for lab, g in rows]
    np.testing.assert_allclose(mv_credit(labels, gold), expected)


@settings(max_examples=100, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=1, max_size=9))
def test_mv_credits_of_all_answers_sum_to_one(labels: list[int]) -> None:
    # one of the t tied answers is predicted: the credits over every possible gold sum to 1
    lab = np.array([labels] * 4)
    assert mv_credit(lab, np.arange(4), 4).sum() == pytest.approx(1.0)


def test_vote_counts_by_hand() -> None:
    np.testing.assert_array_equal(vote_counts(np.array([[0, 2, 2], [1, 1, 1]]), 3),
                                  [[1, 0, 2], [0, 3, 0]])
    np.testing.assert_array_equal(vote_counts(np.array([3, 0, 3])), [1, 0, 0, 2])


def test_vote_counts_rejects_negative_labels() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        vote_counts(np.array([[0, -1]]), 2)


def test_vote_counts_rejects_labels_beyond_the_category_count() -> None:
    # label 3 does not exist among 3 categories; it must not be counted in another row
    with pytest.raises(ValueError, match="3"):
        vote_counts(np.array([[0, 3], [0, 0]]), 3)


def test_mv_utility_by_hand() -> None:
    labels = np.array([[0, 1, 1], [2, 2, 0]])
    gold = np.array([1, 0])
    costs = np.array([[0.1, 0.2, 0.3], [0.1, 0.1, 0.1]])
    weights = np.array([[1.0], [0.5]])
    cw = np.array([0.0, 2.0])
    # row 0: gold wins (credit 1), cost 0.6; row 1: gold loses, cost 0.3
    np.testing.assert_allclose(
        mv_utility(labels, gold, costs, weights, cw), [[1.0, 0.5 - 1.2], [0.0, -0.6]]
    )


def test_mv_utility_credits_a_tie_by_half() -> None:
    out = mv_utility(np.array([0, 1]), np.array(0), np.array([0.01, 0.01]), [[1.0]], [0.2])
    np.testing.assert_allclose(out, [0.5 - 0.004])


# --- the mixed strategy (Remark) ----------------------------------------------------------------


def test_mixed_utility_by_hand() -> None:
    labels = np.array([0, 1, 1, 0])  # two-way tie, gold among it: credit 1/2
    gold = np.array(0)
    # column 0 (per-completion correctness) must not matter: fill it with nonsense
    scores = np.array([
        [9.0, 0.2, 0.1],
        [9.0, 0.9, 0.1],
        [9.0, 0.4, 0.2],
        [9.0, 0.1, 0.1],
    ])
    w = np.array([[0.6, 0.4], [1.0, 0.0], [0.0, 1.0]])
    cw = np.array([1.0, 0.0, 0.5])
    # served: the winner is drawn from the tie {0, 1}; the best style among the completions
    # giving it is returned: answer 0 -> max(0.2, 0.1), answer 1 -> max(0.9, 0.4)
    expected = [
        0.6 * 0.5 + 0.4 * (0.2 + 0.9) / 2 - 0.5,
        0.5,
        (0.2 + 0.9) / 2 - 0.25,
    ]
    np.testing.assert_allclose(mixed_utility(labels, gold, scores, w, cw), expected)


def test_mixed_utility_with_correctness_only() -> None:
    labels = np.array([[2, 2, 1], [0, 1, 2]])
    gold = np.array([2, 0])
    scores = np.zeros((2, 3, 2))
    scores[..., 1] = 0.1
    out = mixed_utility(labels, gold, scores, [[0.8]], [0.5])
    np.testing.assert_allclose(out, [[0.8 - 0.15], [0.8 / 3 - 0.15]])


# --- nested block reuse -------------------------------------------------------------------------


@given(group_size=st.integers(0, 70), n_max=st.integers(1, 40))
def test_block_counts(group_size: int, n_max: int) -> None:
    counts = block_counts(group_size, n_max)
    assert counts.shape == (n_max,)
    for n in range(1, n_max + 1):
        assert counts[n - 1] == group_size // n


def test_block_counts_by_hand() -> None:
    np.testing.assert_array_equal(block_counts(10, 12), [10, 5, 3, 2, 2, 1, 1, 1, 1, 1, 0, 0])


@given(size=st.integers(1, 40), data=st.data())
def test_blocks_are_disjoint_consecutive_slices(size: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, size))
    out = blocks(np.arange(size), n)
    m = size // n
    assert out.shape == (m, n)
    for b in range(m):
        assert out[b].tolist() == list(range(b * n, (b + 1) * n))
    assert len(set(out.ravel().tolist())) == m * n  # disjoint


@pytest.mark.parametrize("axis", [1, -2])
def test_blocks_of_an_observation_keep_other_axes(axis: int) -> None:
    count, size, k1, n = 3, 7, 2, 3
    group = np.arange(count * size * k1).reshape(count, size, k1)
    out = blocks(group, n, axis=axis)
    assert out.shape == (count, 2, n, k1)
    for c in range(count):
        for b in range(2):
            for j in range(n):
                np.testing.assert_array_equal(out[c, b, j], group[c, b * n + j])


def test_blocks_along_the_first_axis() -> None:
    group = np.arange(10).reshape(5, 2)  # [N=5, K+1=2]
    out = blocks(group, 2, axis=0)
    assert out.shape == (2, 2, 2)
    np.testing.assert_array_equal(out[1, 0], [4, 5])
    np.testing.assert_array_equal(out[1, 1], [6, 7])


def test_block_utilities_reuse_one_group_for_every_n() -> None:
    # labels of one group of 6: for n = 2 the blocks are (0,0) (1,2) (1,1): gold 1 gets 0, 1/2, 1
    labels = np.array([0, 0, 1, 2, 1, 1])
    credit = mv_credit(blocks(labels, 2), np.array(1))
    np.testing.assert_allclose(credit, [0.0, 0.5, 1.0])
    credit3 = mv_credit(blocks(labels, 3), np.array(1))
    np.testing.assert_allclose(credit3, [0.0, 1.0])
