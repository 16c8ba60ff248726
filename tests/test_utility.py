"""The parts of the utilities (paper Eqs. 1, 2, 5 and the Remark) in iapo.utility, and the
reference utilities of tests/brute.py that the Q table's tests score blocks with.

Hand-worked examples first; then property tests: the parts composed as the Q table composes
them equal the plain-loop references, which are checked by hand and against Counter loops.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from brute import bon_utility, mixed_utility, mv_credit, mv_utility
from iapo.utility import (
    block_counts,
    cost_term,
    credit_from_votes,
    style_values,
    task_values,
    unique_rows,
    vote_counts,
    vote_winners,
    winners_mean,
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
        task_values(GROUP[:, :2], W)
    # a batch of 4 groups of 3 completions with 2 columns: the message counts the columns
    with pytest.raises(ValueError,
                       match=r"^scores have 2 columns; expected K\+1 = 3 \(cost last\)$"):
        task_values(np.zeros((4, 3, 2)), W)


# --- the cost term and the parts composed --------------------------------------------------------


def test_cost_term_by_hand() -> None:
    cw = np.array([0.0, 1.0, 0.5])
    # the cost of all completions paid: 0.7 in every context
    np.testing.assert_allclose(cost_term(cw, np.array(0.7)), [0.0, 0.7, 0.35])
    # the cost of one completion times the completions paid, N = 1..3 per context
    got = cost_term(cw[:, None], np.array(0.2), np.arange(1, 4))
    np.testing.assert_allclose(got, [[0, 0, 0], [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]])
    # expected completions paid may be fractional (arms that stop early)
    np.testing.assert_allclose(cost_term(cw[:, None], np.array(0.2), np.array([2.5])),
                               [[0.0], [0.5], [0.25]])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_groups=st.integers(1, 4), n=st.integers(1, 6), k=st.integers(1, 3),
       c=st.integers(1, 4))
def test_the_parts_compose_to_best_of_n(data: st.DataObject, n_groups: int, n: int, k: int,
                                        c: int) -> None:
    unit = st.floats(0.0, 1.0, allow_nan=False)
    scores = data.draw(hnp.arrays(np.float64, (n_groups, n, k + 1), elements=unit))
    w = data.draw(hnp.arrays(np.float64, (c, k), elements=unit))
    cw = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.0, 2.0)))
    parts = task_values(scores, w).max(axis=-2) - cost_term(cw, scores[..., -1].sum(-1)[:, None])
    np.testing.assert_allclose(parts, bon_utility(scores, w, cw), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(1, 7), k=st.integers(1, 3), c=st.integers(1, 3))
def test_the_parts_compose_to_majority_voting_and_the_mixed_strategy(
        data: st.DataObject, n: int, k: int, c: int) -> None:
    labels = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    gold = data.draw(st.integers(0, 4))
    unit = st.floats(0.0, 1.0, allow_nan=False)
    scores = data.draw(hnp.arrays(np.float64, (n, k + 1), elements=unit))
    w = data.draw(hnp.arrays(np.float64, (c, k), elements=unit))
    cw = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.0, 2.0)))
    votes = vote_counts(labels, 5)
    cost = cost_term(cw, scores[:, -1].sum())
    mv = w[:, 0] * credit_from_votes(votes, gold) - cost
    np.testing.assert_allclose(mv, mv_utility(labels, gold, scores[:, -1], w[:, :1], cw),
                               atol=1e-12)
    # the best style among the completions giving each answer, as the Q table's range max
    style = style_values(scores, w)  # [n, C]
    best = np.stack([np.where((labels == a)[:, None], style, -np.inf).max(axis=0)
                     for a in range(5)])  # [L, C]
    mixed = mv + winners_mean(best, vote_winners(votes))
    np.testing.assert_allclose(mixed, mixed_utility(labels, gold, scores, w, cw), atol=1e-12)


def test_style_values_skip_correctness_and_cost() -> None:
    scores = np.array([[9.0, 0.2, 0.4, 5.0], [9.0, 1.0, 0.0, 5.0]])  # (correct, s1, s2, cost)
    w = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 0.5]])
    np.testing.assert_allclose(style_values(scores, w), [[0.2, 0.3], [1.0, 0.5]])


def test_winners_mean_by_hand() -> None:
    per_answer = np.array([[1.0, 4.0], [3.0, 0.0], [-np.inf, -np.inf]])  # [L=3, C=2]
    np.testing.assert_allclose(winners_mean(per_answer, [True, True, False]), [2.0, 2.0])
    np.testing.assert_allclose(winners_mean(per_answer, [False, True, False]), [3.0, 0.0])


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


def test_credit_from_votes_by_hand() -> None:
    votes = np.array([[2, 2, 0], [0, 3, 1], [1, 1, 1]])
    np.testing.assert_allclose(credit_from_votes(votes, [0, 0, 2]), [0.5, 0.0, 1 / 3])
    np.testing.assert_array_equal(vote_winners(votes),
                                  [[1, 1, 0], [0, 1, 0], [1, 1, 1]])


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
    np.testing.assert_allclose(credit_from_votes(vote_counts(labels, 5), gold), expected)


@settings(max_examples=100, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=1, max_size=9))
def test_mv_credits_of_all_answers_sum_to_one(labels: list[int]) -> None:
    # one of the t tied answers is predicted: the credits over every possible gold sum to 1
    lab = np.array([labels] * 4)
    assert credit_from_votes(vote_counts(lab, 4), np.arange(4)).sum() == pytest.approx(1.0)


def test_vote_counts_by_hand() -> None:
    np.testing.assert_array_equal(vote_counts(np.array([[0, 2, 2], [1, 1, 1]]), 3),
                                  [[1, 0, 2], [0, 3, 0]])
    np.testing.assert_array_equal(vote_counts(np.array([3, 0, 3])), [1, 0, 0, 2])


def test_vote_counts_rejects_negative_labels() -> None:
    with pytest.raises(ValueError, match="^answer labels must be non-negative category indices$"):
        vote_counts(np.array([[0, -1]]), 2)


def test_vote_counts_rejects_labels_beyond_the_category_count() -> None:
    # label 3 does not exist among 3 categories; it must not be counted in another row
    with pytest.raises(ValueError, match=r"^answer label 3 is outside the 3 categories 0\.\.2$"):
        vote_counts(np.array([[0, 3], [0, 0]]), 3)


def test_vote_counts_of_groups_with_no_answers() -> None:
    # no label: no vote, in one category by default (L = largest label + 1, and at least 1)
    # or in the categories asked for
    empty = np.zeros((2, 0), dtype=np.int64)
    np.testing.assert_array_equal(vote_counts(empty), [[0], [0]])
    np.testing.assert_array_equal(vote_counts(empty, 3), [[0, 0, 0], [0, 0, 0]])


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


# --- distinct rows --------------------------------------------------------------------------------


def _check_unique_rows(keys: np.ndarray) -> None:
    """unique_rows against a dict of row tuples: the distinct rows, each once, and every key
    row found again through its index."""
    uniq, inverse = unique_rows(keys)
    distinct = {tuple(row) for row in keys.tolist()}
    assert sorted(tuple(row) for row in uniq.tolist()) == sorted(distinct)
    assert inverse.shape == (keys.shape[0],)
    np.testing.assert_array_equal(uniq[inverse], keys)


def test_unique_rows_by_hand() -> None:
    # (1, 0) twice and (1, 1) once: two distinct rows
    keys = np.array([[1, 0], [1, 1], [1, 0]])
    uniq, inverse = unique_rows(keys)
    assert uniq.shape == (2, 2)
    assert inverse[0] == inverse[2] != inverse[1]
    _check_unique_rows(keys)


def test_unique_rows_keeps_rows_too_wide_for_one_integer_apart() -> None:
    # 40 entries in 0..3 need 80 bits as one integer: two rows that differ only in their last
    # entry are still two rows
    keys = np.zeros((2, 40), dtype=np.int64)
    keys[:, :-1] = np.arange(39) % 4
    keys[1, -1] = 3
    _check_unique_rows(keys)


def test_unique_rows_keeps_rows_with_codes_beyond_float_precision_apart() -> None:
    # 7 entries in 0..199 fit in one int64 (7 log2(200) < 54 bits) but not in a float64
    # mantissa: four rows that differ by 1 in their first entry are four rows
    keys = np.zeros((4, 7), dtype=np.int64)
    keys[:, 0] = np.arange(4)
    keys[:, -1] = 199
    _check_unique_rows(keys)


@settings(max_examples=60, deadline=None)
@given(keys=hnp.arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(1, 5)),
                       elements=st.integers(-2, 9)))
def test_unique_rows_equal_a_dict_of_rows(keys: np.ndarray) -> None:
    _check_unique_rows(keys)
    _check_unique_rows(keys.astype(np.float64) / 4)  # not integers: the general path
