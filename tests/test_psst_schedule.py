"""PSST's budget rules as pure functions, against values worked out by hand (no oracle).

Rule 1 (scale cap), rule 2 (fewer rounds), rule 3 (carry and the last round's top-up), Eq. 6
(equal pulls at each prompt's largest active N) and the keep counts of trimming.
"""

from __future__ import annotations

import inspect

import numpy as np

from iapo.learners.psst import (
    allowance,
    effective_rounds,
    equal_pulls,
    keep_count,
    psst,
    rounds_for,
    scale_cap,
    top_up,
)
from iapo.pulls import Pull


def test_rounds_for_is_ceil_log2_of_the_arms() -> None:
    # |A| = 25 prompts x 32 N = 800 arms: ceil(log2 800) = 10 (2^9 = 512 < 800 <= 1024)
    assert rounds_for(800) == 10
    assert [rounds_for(a) for a in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]


def test_scale_cap_is_the_budget_over_the_prompts() -> None:
    # T = 500 over 25 prompts: N <= 20 fits one group of each; 24 prompts with T = 23: none
    assert scale_cap(500, 25) == 20
    assert scale_cap(23, 24) == 0
    assert scale_cap(48, 48) == 1


def test_effective_rounds_are_what_the_budget_pays_for() -> None:
    # math at T = 1000: one group of every prompt at N = 32 costs 25 * 32 = 800, so one round
    assert effective_rounds(10, 1000, 800) == 1
    # T = 20,000 pays 25 rounds of 800: the paper's 10 stay
    assert effective_rounds(10, 20_000, 800) == 10
    # uniform caps at one round; nothing to pull, no round
    assert effective_rounds(10, 20_000, 800, max_rounds=1) == 1
    assert effective_rounds(10, 5000, 0) == 0


def test_allowance_carries_what_a_round_did_not_spend() -> None:
    # T = 1000 over R_eff = 3: cumulative caps floor(1000 r / 3) = 333, 666, 1000
    assert allowance(1000, 0, 3, 0) == 333
    # round 1 spent only 320: round 2 may spend 666 - 320 = 346
    assert allowance(1000, 1, 3, 320) == 346
    assert allowance(1000, 2, 3, 650) == 350


def test_equal_pulls_follow_eq6() -> None:
    # active scales 32, 0, 16, 8 -> M = 56; n_r = 400 gives floor(400 / 56) = 7 groups each
    scales = np.array([32, 0, 16, 8])
    assert equal_pulls(scales, 400) == [Pull(0, 32, 7), Pull(2, 16, 7), Pull(3, 8, 7)]
    assert equal_pulls(scales, 55) == []  # not even one group each


def test_top_up_spends_what_is_left_in_the_given_order() -> None:
    scales = np.array([32, 0, 16, 8])
    # 400 - 7 * 56 = 8 left: one group of prompt 2 at N = min(16, 8) = 8
    assert top_up(scales, [2, 0, 3], 8) == [Pull(2, 8, 1)]
    # 30 left in order 3, 0: 8 (all of prompt 3's scale), then 22 of prompt 0
    assert top_up(scales, [3, 0, 2], 30) == [Pull(3, 8, 1), Pull(0, 22, 1)]
    assert top_up(scales, [0], 0) == []


def test_halving_from_1536_arms_reaches_one_in_exactly_its_rounds() -> None:
    assert rounds_for(1536) == 11 and rounds_for(9) == 4
    size, sizes = 1536, []
    for left in range(11, 0, -1):
        size = keep_count(size, left)
        sizes.append(size)
    assert sizes == [768, 384, 192, 96, 48, 24, 12, 6, 3, 2, 1]
    assert keep_count(800, 1) == 1  # the last round keeps one, whatever is left


def test_keep_counts_halve_or_trim_faster_when_rounds_are_few() -> None:
    # halving: 800 -> 400 with 10 rounds left (ceil(log2 800) = 10 <= 10)
    assert keep_count(800, 10) == 400
    assert keep_count(7, 3) == 4  # ceil(7 / 2), and log2 7 <= 3
    # 800 arms and 2 rounds: ceil(800 ** (1/2)) = 29 this round, then 1
    assert keep_count(800, 2) == 29
    assert keep_count(29, 1) == 1
    assert keep_count(1, 5) == 1 and keep_count(0, 5) == 0


def test_algorithm_1_is_one_short_loop_over_its_parts() -> None:
    # the variants are compositions of a schedule, an allocation and an estimator, so the
    # loop itself stays readable against the paper's Algorithm 1: at most 40 lines from its
    # def (a decorator aside: mutation testing, `make mutation`, adds one)
    source = inspect.getsource(psst).splitlines()
    assert len(source) - next(i for i, x in enumerate(source) if x.startswith("def ")) <= 40
    assert set(inspect.signature(psst).parameters) == {
        "problem", "oracle", "budget", "rng", "schedule", "allocation", "stats", "active",
        "trace", "paired", "choose_from"}
