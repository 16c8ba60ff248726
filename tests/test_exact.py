"""Exact expectations: E[max of N] for Best-of-N and the expected MV credit, for all N at once.

Checked against closed forms, brute-force enumeration of every N-tuple or every vote composition
(multinomial), and known symmetries.
"""

from __future__ import annotations

import itertools
import math
import warnings
from importlib import resources

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from brute import compositions, mv_brute_force_vectorized
from iapo.errors import InputError
from iapo.exact import (
    MV_N_MAX_LIMIT,
    binomial_table,
    bon_expected_max,
    mv_credit_probability,
    mv_polya_credit,
)

# --- references ---------------------------------------------------------------------------------


def bon_brute_force(values: list[float], probs: list[float], n: int) -> float:
    """E[max] by summing over every N-tuple of support points."""
    total = 0.0
    for tup in itertools.product(range(len(values)), repeat=n):
        pr = math.prod(probs[i] for i in tup)
        total += pr * max(values[i] for i in tup)
    return total




def mv_brute_force(probs: list[float], gold: int, n: int) -> float:
    """Sum over every vote composition: multinomial probability times 1/t if gold is top."""
    total = 0.0
    for comp in compositions(n, len(probs)):
        top = comp.max()
        if comp[gold] != top:
            continue
        t = int((comp == top).sum())
        coef = math.factorial(n) / math.prod(math.factorial(int(c)) for c in comp)
        total += coef * math.prod(p ** int(c) for p, c in zip(probs, comp, strict=True)) / t
    return total


# --- Best-of-N ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.97, 1.0])
def test_bon_of_a_bernoulli_is_one_minus_all_failures(p: float) -> None:
    n = np.arange(1, 33)
    out = bon_expected_max([[0.0, 1.0]], [[1 - p, p]], 32)
    np.testing.assert_allclose(out[0], 1 - (1 - p) ** n, atol=1e-12)


def test_bon_of_a_uniform_die_by_hand() -> None:
    # max of two fair 3-sided dice {1,2,3}: P(max=1)=1/9, P(2)=3/9, P(3)=5/9 -> 22/9
    out = bon_expected_max([[3.0, 1.0, 2.0]], [[1 / 3, 1 / 3, 1 / 3]], 2)
    np.testing.assert_allclose(out[0], [2.0, 22 / 9])


CASES = [
    # (values, probs): unsorted, ties in value, zero-probability points, negative values
    ([0.3, 0.1, 0.7], [0.2, 0.5, 0.3]),
    ([1.0, 1.0, 0.0, 2.0], [0.25, 0.25, 0.5, 0.0]),
    ([2.0, -1.0, 2.0, 0.5], [0.1, 0.6, 0.2, 0.1]),
    ([5.0, 0.0, 3.0], [0.0, 0.0, 1.0]),
    ([0.4], [1.0]),
    ([-0.2, -0.2, -0.7], [0.3, 0.3, 0.4]),
]


@pytest.mark.parametrize(("values", "probs"), CASES)
def test_bon_matches_enumeration_of_all_tuples(values: list[float], probs: list[float]) -> None:
    n_max = 5
    out = bon_expected_max([values], [probs], n_max)
    assert out.shape == (1, n_max)
    expected = [bon_brute_force(values, probs, n) for n in range(1, n_max + 1)]
    np.testing.assert_allclose(out[0], expected, atol=1e-12)


def test_bon_many_rows_at_once() -> None:
    # rows of one rectangular array: pad with zero-probability points
    rows_v = [[0.3, 0.1, 0.7, 0.0], [1.0, 1.0, 0.0, 2.0], [2.0, -1.0, 2.0, 0.5]]
    rows_p = [[0.2, 0.5, 0.3, 0.0], [0.25, 0.25, 0.5, 0.0], [0.1, 0.6, 0.2, 0.1]]
    out = bon_expected_max(rows_v, rows_p, 4)
    assert out.shape == (3, 4)
    for r in range(3):
        expected = [bon_brute_force(rows_v[r], rows_p[r], n) for n in range(1, 5)]
        np.testing.assert_allclose(out[r], expected, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 3.0]), min_size=1, max_size=4),
    data=st.data(),
)
def test_bon_matches_enumeration_on_random_supports(
    values: list[float], data: st.DataObject
) -> None:
    weights = data.draw(st.lists(st.integers(0, 5), min_size=len(values), max_size=len(values))
                        .filter(lambda w: sum(w) > 0))
    probs = [w / sum(weights) for w in weights]
    n_max = 4
    out = bon_expected_max([values], [probs], n_max)
    expected = [bon_brute_force(values, probs, n) for n in range(1, n_max + 1)]
    np.testing.assert_allclose(out[0], expected, atol=1e-12)
    # more draws never lower the expected maximum
    assert np.all(np.diff(out[0]) >= -1e-12)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from([-1.0, 0.0, 0.25, 0.5, 3.0]), min_size=4,
                              max_size=4), min_size=1, max_size=3))
def test_bon_of_equally_likely_values_matches_enumeration(rows: list[list[float]]) -> None:
    # probs None: every value of a row equally likely (an empirical sample, as the model has)
    out = bon_expected_max(rows, None, 4)
    for r, values in enumerate(rows):
        expected = [bon_brute_force(values, [0.25] * 4, n) for n in range(1, 5)]
        np.testing.assert_allclose(out[r], expected, atol=1e-12)


def test_bon_of_a_sample_by_hand() -> None:
    # max of two draws from {0, 1, 2, 3}: E = sum_v v (((v+1)/4)^2 - (v/4)^2) = 34/16
    np.testing.assert_allclose(bon_expected_max([[2.0, 0.0, 3.0, 1.0]], None, 2)[0],
                               [1.5, 34 / 16])


def test_bon_ignores_a_zero_probability_point_far_above_the_support() -> None:
    # padding a row with a point of probability 0 changes nothing, wherever the point lies.
    # The probabilities (0.4, 0.2, 0.3, 0.1) add up to 1 + 2^-52 in floating point: the CDF
    # below the padding point must be capped at 1, or (1 + 2^-52)^N times its gap of ~1e6
    # (1.4e-8 at N = 64) shows
    values, probs = [0.0, 1.0, 2.0, 3.0], [0.4, 0.2, 0.3, 0.1]
    plain = bon_expected_max([values], [probs], 64)
    padded = bon_expected_max([[*values, 1e6]], [[*probs, 0.0]], 64)
    np.testing.assert_allclose(padded, plain, rtol=0, atol=2e-9)


def test_bon_of_a_narrow_integer_support() -> None:
    # values -100 and 100, equally likely, as int8 (whose range their gap of 200 exceeds):
    # E[max of 1] = 0, E[max of 2] = 100 (1 - 1/4) - 100 / 4 = 50
    values = np.array([[100, -100]], dtype=np.int8)
    np.testing.assert_allclose(bon_expected_max(values, None, 2)[0], [0.0, 50.0])
    np.testing.assert_allclose(bon_expected_max(values, [[0.5, 0.5]], 2)[0], [0.0, 50.0])


def test_the_binomial_table_by_hand() -> None:
    table = binomial_table(30)
    want = [[math.comb(m + c, c) for c in range(31)] for m in range(31)]
    np.testing.assert_allclose(table, want, rtol=1e-12, atol=0)
    assert table[2, 3] == pytest.approx(10.0)  # C(5, 3)


# --- majority voting ----------------------------------------------------------------------------


def mv_binary(p: float, n: int) -> float:
    """Two answers: gold wins with more than half the votes, and half the credit on a tie."""
    return float(binom.sf(n // 2, n, p) + (0.5 * binom.pmf(n // 2, n, p) if n % 2 == 0 else 0.0))


def test_paper_worked_example() -> None:
    # prompt 1: 40% / 90% on two queries; prompt 2: 62% on both (binary answers, gold = 0)
    probs = [[0.4, 0.6], [0.9, 0.1], [0.62, 0.38], [0.62, 0.38]]
    out = mv_credit_probability(probs, [0, 0, 0, 0], 10)
    prompt1 = out[:2].mean(axis=0)
    prompt2 = out[2:].mean(axis=0)
    assert prompt1[0] == pytest.approx(0.65)
    assert prompt2[0] == pytest.approx(0.62)
    assert prompt1[9] == pytest.approx(0.633, abs=5e-4)
    assert prompt2[9] == pytest.approx(0.774, abs=5e-4)
    assert prompt1[9] == pytest.approx((mv_binary(0.4, 10) + mv_binary(0.9, 10)) / 2, abs=1e-12)
    assert prompt2[9] == pytest.approx(mv_binary(0.62, 10), abs=1e-12)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.62, 0.99, 1.0])
def test_binary_mv_matches_the_binomial(p: float) -> None:
    out = mv_credit_probability([[p, 1 - p], [1 - p, p]], [0, 1], 32)
    expected = [mv_binary(p, n) for n in range(1, 33)]
    np.testing.assert_allclose(out[0], expected, atol=1e-12)
    np.testing.assert_allclose(out[1], expected, atol=1e-12)


def test_hand_worked_three_way_tie() -> None:
    # p = (1/2, 1/4, 1/4), gold 0.
    # N=2: (2,0,0) 1/4 -> 1; (1,1,0) and (1,0,1) 1/4 each -> 1/2        => 1/2
    # N=3: (3,0,0) 1/8; (2,1,0), (2,0,1) 3/16 each -> 1; (1,1,1) 3/16 -> 1/3 => 9/16
    out = mv_credit_probability([[0.5, 0.25, 0.25]], [0], 3)
    np.testing.assert_allclose(out[0], [0.5, 0.5, 9 / 16], atol=1e-12)


def test_hand_worked_four_way_tie() -> None:
    # p = (0.1, 0.3, 0.3, 0.3), gold 0, N = 4:
    # (1,1,1,1): 24 * 0.1 * 0.3^3 = 0.0648, credit 1/4        -> 0.0162
    # gold 2, one other 2:  3 * 6 * 0.01 * 0.09 = 0.0162, 1/2  -> 0.0081
    # gold 2, two others 1: 3 * 12 * 0.01 * 0.09 = 0.0324      -> 0.0324
    # gold 3: 4 * 0.001 * 0.9 = 0.0036; gold 4: 0.0001
    out = mv_credit_probability([[0.1, 0.3, 0.3, 0.3]], [0], 4)
    assert out[0, 3] == pytest.approx(0.0162 + 0.0081 + 0.0324 + 0.0036 + 0.0001, abs=1e-12)
    assert out[0, 0] == pytest.approx(0.1)


MV_CASES = [
    # (probs, gold, n_max): 2-, 3- and 4-way ties, zero-probability categories, certain answers
    ([0.5, 0.5], 0, 8),
    ([0.3, 0.7], 0, 9),
    ([0.2, 0.5, 0.3], 2, 9),
    ([1 / 3, 1 / 3, 1 / 3], 1, 9),
    ([0.25, 0.25, 0.25, 0.25], 3, 8),
    ([0.4, 0.3, 0.2, 0.1], 0, 8),
    ([0.1, 0.2, 0.3, 0.4], 0, 8),
    ([0.0, 0.6, 0.4, 0.0], 2, 8),  # zero-probability categories on both sides of gold
    ([0.0, 0.6, 0.4], 0, 6),  # gold never drawn: credit 0
    ([0.0, 1.0, 0.0], 1, 6),  # gold certain: credit 1
    ([0.3, 0.25, 0.25, 0.1, 0.1], 4, 7),
    ([0.22, 0.2, 0.2, 0.19, 0.19], 0, 7),
]


@pytest.mark.parametrize(("probs", "gold", "n_max"), MV_CASES)
def test_mv_matches_enumeration_of_all_compositions(
    probs: list[float], gold: int, n_max: int
) -> None:
    out = mv_credit_probability([probs], [gold], n_max)
    assert out.shape == (1, n_max)
    expected = [mv_brute_force(probs, gold, n) for n in range(1, n_max + 1)]
    np.testing.assert_allclose(out[0], expected, atol=1e-12)


def test_mv_many_rows_with_repeats_and_different_golds() -> None:
    probs = [case[0] for case in MV_CASES if len(case[0]) == 4]
    golds = [case[1] for case in MV_CASES if len(case[0]) == 4]
    probs = probs + probs[:2]  # repeated rows are deduplicated inside; results must not mix
    golds = golds + [1, 2]
    out = mv_credit_probability(probs, golds, 6)
    for r, (p, g) in enumerate(zip(probs, golds, strict=True)):
        expected = [mv_brute_force(p, g, n) for n in range(1, 7)]
        np.testing.assert_allclose(out[r], expected, atol=1e-12)


@pytest.mark.parametrize("n_cat", [2, 3, 4, 5, 7])
def test_uniform_answers_give_credit_one_over_l(n_cat: int) -> None:
    # every answer is exchangeable, and the credits of all answers sum to 1
    out = mv_credit_probability([[1 / n_cat] * n_cat], [0], 32)
    np.testing.assert_allclose(out[0], 1 / n_cat, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.integers(0, 6), min_size=2, max_size=5).filter(lambda w: sum(w) > 0),
)
def test_credits_over_every_possible_gold_sum_to_one(weights: list[int]) -> None:
    probs = np.array(weights, dtype=np.float64) / sum(weights)
    n_cat = probs.size
    out = mv_credit_probability(np.tile(probs, (n_cat, 1)), np.arange(n_cat), 12)
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-10)
    # a single vote picks gold with its own probability
    np.testing.assert_allclose(out[:, 0], probs, atol=1e-12)


@pytest.mark.parametrize("n_max", [64, 128, 200])
def test_large_n_max_stays_exact(n_max: int) -> None:
    # nothing in a problem or a data file caps N_max at the paper's 32
    out = mv_credit_probability([[0.55, 0.45, 0.0], [1 / 3, 1 / 3, 1 / 3]], [0, 0], n_max)
    assert np.all(np.isfinite(out))
    for n in (1, 2, 33, n_max - 1, n_max):
        assert out[0, n - 1] == pytest.approx(mv_binary(0.55, n), abs=1e-9)
    np.testing.assert_allclose(out[1], 1 / 3, atol=1e-9)


class _Stop(Exception):
    """Raised by a progress callback to end a long computation once it has started."""


def _stop_at_first(k: int) -> None:
    raise _Stop(k)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # see below
def test_mv_n_max_limit_is_inclusive() -> None:
    # N_max = 1000 is supported: the dynamic program starts (and is stopped after k = 1)
    assert MV_N_MAX_LIMIT == 1000
    with pytest.raises(_Stop):
        mv_credit_probability([[0.6, 0.4]], [0], 1000, progress=_stop_at_first)
    with pytest.raises(InputError, match=r"^exact MV tables support N_max up to 1000; got 1001: "
                                         r"lower the environment's n_max$"):
        mv_credit_probability([[0.6, 0.4]], [0], 1001)


def test_mv_credit_warns_nothing_below_its_n_max_limit() -> None:
    # binomial_table(n_max) holds inf where m + c > 1029, entries the MV dynamic program never
    # reads; from N_max = 515 on, making them once warned of an overflow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(_Stop):
            mv_credit_probability([[0.6, 0.4]], [0], 515, progress=_stop_at_first)


def test_mv_credit_is_a_probability_where_rounding_would_overshoot() -> None:
    # p = 0.9 on gold of two answers: near N = 60 the summed masses round above 1
    out = mv_credit_probability([[0.9, 0.1]], [0], 64)[0]
    np.testing.assert_allclose(out, [mv_binary(0.9, n) for n in range(1, 65)], atol=1e-12)
    assert out.max() <= 1.0 and out.min() >= 0.0


def test_polya_credit_by_hand_with_an_absent_category() -> None:
    # Dirichlet(2.5 gold, 0.5 other, 0 absent): a Polya urn with A = 3, P(counts) = C(N, k)
    # (2.5)^(k rising) (0.5)^(N-k rising) / 3^(N rising).
    # N = 1: 2.5/3 = 5/6. N = 2: gold twice 2.5*3.5/12, one each 2 * 2.5*0.5/12 (a tie: 1/2)
    # -> (8.75 + 1.25)/12 = 5/6. N = 3: gold 3 times 2.5*3.5*4.5/60 = 0.65625, gold twice
    # 3 * 2.5*3.5*0.5/60 = 0.21875 (wins 2-1) -> 7/8. The absent category's Gamma(0) makes
    # inf - inf inside: no RuntimeWarning may reach the caller.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mv_polya_credit([2.5], [[0.5, 0.0]], 3)
    np.testing.assert_allclose(out[0], [5 / 6, 5 / 6, 7 / 8], atol=1e-12)


def test_polya_credit_is_a_probability_where_rounding_would_overshoot() -> None:
    # a gold answer seen a thousand times: the credit is just below 1 (N = 1: 1000.5 / 1001)
    # and the summed masses round above 1 at some N
    out = mv_polya_credit([1000.5], [[0.5]], 32)[0]
    assert out[0] == pytest.approx(1000.5 / 1001, abs=1e-12)
    assert out.max() <= 1.0 and out.min() > 0.99


def test_single_category_is_always_right() -> None:
    np.testing.assert_array_equal(mv_credit_probability([[1.0], [1.0]], [0, 0], 5), 1.0)


def test_progress_is_reported_once_per_gold_count() -> None:
    seen: list[int] = []
    mv_credit_probability([[0.5, 0.3, 0.2]], [0], 6, progress=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]


def test_mv_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"probs must be \[M, L\] and gold \[M\]"):
        mv_credit_probability([0.5, 0.5], [0], 3)
    with pytest.raises(ValueError, match=r"probs must be \[M, L\] and gold \[M\]"):
        mv_credit_probability([[0.5, 0.5]], [0, 1], 3)


def test_mv_on_real_math_rows_up_to_n_max() -> None:
    """A sample of real answer distributions (5 categories) against the composition sum."""
    path = resources.files("iapo.envs").joinpath("data", "math.npz")
    with path.open("rb") as fh, np.load(fh) as f:
        counts = f["answer_counts"].astype(np.float64)
        gold = f["gold"].astype(np.int64)
        total = float(f["samples_per_pair"])
    n_prompts, n_queries, n_cat = counts.shape
    probs = (counts / total).reshape(-1, n_cat)
    golds = np.tile(gold, n_prompts)
    rng = np.random.default_rng(11)
    gp = probs[np.arange(probs.shape[0]), golds]
    # the interesting rows: gold neither hopeless nor certain, several live answers
    live = np.flatnonzero((gp > 0.05) & (gp < 0.9) & ((probs > 0).sum(axis=1) >= 3))
    rows = rng.choice(live, 60, replace=False)
    out = mv_credit_probability(probs[rows], golds[rows], 32)
    # gold first, the others after it
    others = np.stack([np.delete(probs[r], golds[r]) for r in rows])
    gold_first = np.concatenate([probs[rows, golds[rows]][:, None], others], axis=1)
    expected = mv_brute_force_vectorized(gold_first, 32)
    np.testing.assert_allclose(out, expected, atol=1e-10)
