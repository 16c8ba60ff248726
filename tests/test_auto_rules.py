"""``psst-auto``, the default learner: its screening rules pinned by behaviour, by hand.

The oracle here is deterministic: every group is on a fresh query and prompt p's completions
repeat a fixed pattern, so the model (:mod:`iapo.model`) and the blocks see exactly what the
comments say. Majority-voting prompts are always right and differ only in their cost, so any
estimator ranks them by cost; Best-of-N prompts score constants, except where a test makes
the model and the blocks disagree on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fresh_oracle import FreshQueryOracle
from iapo.envs import BoNEnvironment, MVEnvironment
from iapo.errors import InputError
from iapo.learners import PSSTAuto, get_learner
from iapo.learners.auto import group_size, screening_rounds, survivors
from iapo.learners.base import LearnerResult, Round
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, CostObjective, Objective, Problem
from iapo.pulls import Observation, Pull


class PatternOracle(FreshQueryOracle):
    """Group of n completions of prompt p: completion j scores ``patterns[p][j % len]`` on the
    first objective, ``style[p]`` on the second (mixed problems) and costs ``costs[p]``. MV
    and mixed answers are always the gold one. Every group gets a query never used before
    (paired pulls share theirs)."""

    def __init__(self, problem: Problem, budget: int, patterns: Sequence[Sequence[float]],
                 costs: Sequence[float], style: Sequence[float] | None = None) -> None:
        super().__init__(problem, budget)
        self.patterns = [np.asarray(p, dtype=np.float64) for p in patterns]
        self.costs = costs
        self.style = style

    def observe(self, r: Pull, queries: npt.NDArray[np.int64]) -> Observation:
        scores = np.zeros((r.count, r.n, self.problem.n_objectives + 1))
        pattern = self.patterns[r.prompt]
        scores[..., 0] = pattern[np.arange(r.n) % pattern.size]
        if self.style is not None:
            scores[..., 1] = self.style[r.prompt]
        scores[..., -1] = self.costs[r.prompt]
        if self.problem.aggregator == "bon":
            return Observation(r.prompt, r.n, queries, scores)
        return Observation(r.prompt, r.n, queries, scores,
                           np.zeros((r.count, r.n), dtype=np.int16),
                           np.zeros(r.count, dtype=np.int16))


def problem(aggregator: str, n_prompts: int, n_max: int, cost_weight: float = 1.0) -> Problem:
    objectives = [Objective("correct")] + ([Objective("style")] if aggregator == "mixed" else [])
    weights = [(0.5, 0.5)] if aggregator == "mixed" else [(1.0,)]
    grid = ContextGrid.product(objectives, weights, {"only": cost_weight})
    return Problem("hand", aggregator, tuple(f"p{i}" for i in range(n_prompts)), n_max, grid,
                   CostObjective("cost", 1.0))


def pulls(round_: Round) -> list[tuple[int, int, int]]:
    return sorted(round_.pulls)


def rounds(result: LearnerResult) -> list[tuple[int, int, list[tuple[int, int, int]], list[int]]]:
    """(round, allowance, pulls, arms alive per context) of every round of a run."""
    return [(r.round, r.allowance, pulls(r), list(r.alive)) for r in result.trace.rounds]


def run(learner: PSSTAuto, oracle: PatternOracle, budget: int) -> LearnerResult:
    start = oracle.ledger.spent
    result = learner(oracle.problem, oracle, budget, np.random.default_rng(0))
    assert oracle.ledger.spent - start == result.trace.completions_used <= budget
    assert sum(r.spent for r in result.trace.rounds) == result.trace.completions_used
    return result


# MV: eight always-right prompts; prompt p costs COSTS[p], so every estimate ranks them by
# cost, cheapest first: 2, 6, 4, 0, 7, 5, 1, 3. Costs of 0.4 and more make N = 1 the best
# arm of every prompt whatever the credit of N >= 2: Q(p, 1) >= 0.6 - 0.47 > 0, while
# Q(p, N >= 2) <= 1 - 0.8 = 0.2 < Q(2, 1) (shown in the tests).
COSTS = [0.43, 0.46, 0.40, 0.47, 0.42, 0.45, 0.41, 0.44]


# ---------------------------------------------------------------- the pure rules


def test_screening_rounds_halve_prompts_down_to_keep_within_the_budget() -> None:
    # R_s = ceil(log2(#prompts / keep)), at most floor(rho T / (#prompts g))
    assert screening_rounds(8, 2, 100, 4) == 2  # log2(4) = 2; 100 // 32 = 3
    assert screening_rounds(9, 2, 1000, 2) == 3  # ceil(log2 4.5) = 3; 1000 // 18 = 55
    assert screening_rounds(9, 2, 40, 2) == 2  # 40 // 18 = 2 rounds paid
    assert screening_rounds(8, 2, 31, 4) == 0  # one round of 8 groups of 4 costs 32
    assert screening_rounds(6, 2, 48, 4) == 2  # ceil(log2 3) = 2 and 48 // 24 = 2
    assert screening_rounds(5, 1, 10**6, 2) == 3  # ceil(log2 5) = 3
    # nothing to screen: as many prompts as keep, or fewer
    assert screening_rounds(2, 2, 1000, 2) == 0
    assert screening_rounds(3, 4, 1000, 2) == 0
    assert screening_rounds(1, 2, 1000, 4) == 0


def test_groups_are_pairs_for_mv_and_fours_for_bon_within_n_max() -> None:
    assert [group_size("mv", n) for n in (1, 2, 4, 32)] == [1, 2, 2, 2]
    assert [group_size("bon", n) for n in (1, 3, 4, 8)] == [1, 3, 4, 4]


def test_survivors_halve_with_ceil_but_never_below_keep_and_land_on_keep() -> None:
    # before the last round: ceil(size / 2), at least keep
    assert [survivors(s, 2, False) for s in (10, 9, 8, 6, 5, 4, 3, 2)] == [5, 5, 4, 3, 3, 2, 2, 2]
    assert survivors(9, 4, False) == 5 and survivors(7, 4, False) == 4
    # the last round keeps exactly keep, or all when fewer are alive
    assert [survivors(s, 2, True) for s in (10, 5, 2, 1)] == [2, 2, 2, 1]
    assert survivors(10, 3, True) == 3


def test_psst_auto_checks_its_parameters_when_made() -> None:
    assert PSSTAuto() == get_learner("psst-auto").learner
    assert (PSSTAuto().rho, PSSTAuto().keep, PSSTAuto().alpha) == (0.5, 2, 0.5)
    ok = PSSTAuto(rho=0.99, keep=1, alpha=1e-9)
    assert (ok.rho, ok.keep, ok.alpha) == (0.99, 1, 1e-9)
    for bad, message in [({"rho": 0.0}, "rho=0.0 must lie strictly between 0 and 1"),
                         ({"rho": 1.0}, "rho=1.0 must lie strictly between 0 and 1"),
                         ({"keep": 0}, "keep=0 must be an integer of at least 1"),
                         ({"keep": 1.5}, "keep=1.5 must be an integer of at least 1"),
                         ({"alpha": 0.0}, "alpha=0.0 must be positive"),
                         ({"alpha": -1.0}, "alpha=-1.0 must be positive"),
                         ({"prior": "flat"}, "prior='flat' is unknown; use one of fixed, "
                                             "fitted")]:
        with pytest.raises(InputError, match=message):
            PSSTAuto(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- majority voting


@pytest.mark.parametrize("alpha", [0.5, 2.0])
@pytest.mark.parametrize("spent_before", [0, 50])
def test_psst_auto_on_mv_screens_in_pairs_and_decides_with_the_model(alpha: float,
                                                                     spent_before: int) -> None:
    # 8 prompts, N_max 4: groups of g = min(2, 4) = 2. T = 200, rho T = 100:
    # R_s = min(ceil(log2(8 / 2)), 100 // (8 x 2)) = min(2, 6) = 2. The same schedule whether
    # or not the oracle's ledger was used before the learner started (spent_before).
    oracle = PatternOracle(problem("mv", 8, 4), 200 + spent_before, [[1.0]] * 8, COSTS)
    oracle.ledger.charge(spent_before)
    # the fixed Dirichlet prior, whose alpha the estimate below shows (the default's too:
    # every answer is right, so no query shows that the answers are binary)
    result = run(PSSTAuto(alpha=alpha, prior=["fixed", "fitted"][spent_before > 0]), oracle,
                 200)
    assert result.trace.info["prior"] == "fixed"
    assert rounds(result) == [
        # allowance floor(100 x 1 / 2) = 50, M = 16: 3 groups each (48); keep
        # max(2, ceil(8 / 2)) = 4 prompts, the cheapest 2, 6, 4, 0: 4 x N_max = 16 arms
        (-2, 50, [(p, 2, 3) for p in range(8)], [16]),
        # the last: allowance 100 - 48 = 52, M = 8: 6 each (48); keep = 2: prompts 2, 6
        (-1, 52, [(p, 2, 6) for p in (0, 2, 4, 6)], [8]),
        # PSST (psst-model's allocation) over 2 x 4 arms with 200 - 96 = 104: R = 3; groups
        # of 2 of both prompts, M = 4. Allowance floor(104 / 3) = 34: 8 each (32), keep 4 arms
        (1, 34, [(2, 2, 8), (6, 2, 8)], [4]),
        # floor(208 / 3) - 32 = 37: 9 each (36); keep 2 arms, (2, 1) and (6, 1): Q(p, 1) is
        # above 0.6 - 0.41 = 0.19 (the worst N = 1 credit, alpha 2, below) and every other arm
        # below 1 - 2 x 0.4 = 0.2, so both prompts stay
        (2, 37, [(2, 2, 9), (6, 2, 9)], [2]),
        # 104 - 68 = 36: 9 each (36), nothing left for a top-up; keep (2, 1)
        (3, 36, [(2, 2, 9), (6, 2, 9)], [1]),
    ]
    assert result.trace.info["group"] == result.trace.to_dict()["group"] == 2
    assert result.trace.info["screened_prompts"] == [[2, 6]]
    assert result.trace.notes == []
    assert result.trace.completions_used == 200
    (choice,) = result.choices
    assert (choice.prompt, choice.n) == (2, 1)
    # the model's estimate: every query of prompt 2 got one group of 2 gold answers; under
    # Dirichlet(alpha) on gold and on the unseen bucket the next answer is gold with
    # probability (2 + alpha) / (2 + 2 alpha): 5/6 for alpha 1/2, 2/3 for alpha 2
    assert choice.q_hat == pytest.approx((2 + alpha) / (2 + 2 * alpha) - 0.40)
    # it counts the queries behind it, screening included: 3 + 6 + 8 + 9 + 9
    assert choice.samples == 35


def test_psst_auto_on_binary_mv_fits_its_prior_and_finds_the_steady_prompt() -> None:
    """Known by construction (as in test_model.py): a steady prompt, right 62% of the time on
    every query, wins 0.91 of its queries at N = 31; a polarized one, right 97% of the time
    on two thirds of them and 3% on the rest, is the better single shot (0.66) but wins only
    0.67 at N = 31; four more prompts are right 40% of the time. With the cost weighed 0 the
    best arm is (steady, 31). psst-auto, its prior fitted to the answers (the default), finds
    it in 9 of 10 seeds at T = 1,000 (it asks for 8); with the fixed prior, which judges every
    query by its own few answers, it takes the polarized prompt in 8 (it asks for at most 3
    right). The trace says which prior ranked."""
    x = 300
    theta = np.stack([np.full(x, 0.62), np.where(np.arange(x) % 3 < 2, 0.97, 0.03)]
                     + [np.full(x, 0.4)] * 4)
    env = MVEnvironment("steady", np.stack([theta, 1 - theta], axis=-1),
                        np.zeros(x, dtype=np.int16), [0.01] * 6, {"low": 0.0}, 31,
                        cacheable=False)
    found = {}
    for prior in ("fitted", "fixed"):
        right = 0
        for seed in range(10):
            oracle = SimulatedOracle(env, np.arange(x), 1000, np.random.default_rng(seed))
            result = PSSTAuto(prior=prior)(env.problem, oracle, 1000,
                                           np.random.default_rng(100 + seed))
            assert result.trace.info["prior"] == prior
            right += (result.choices[0].prompt, result.choices[0].n) == (0, 31)
        found[prior] = right
    assert found["fitted"] >= 8 and found["fixed"] <= 3, found


def test_a_query_with_two_wrong_answers_keeps_the_fixed_prior() -> None:
    """The same chances of a right answer on 100 queries, the rest one wrong answer or split
    evenly between two: psst-auto (its prior fitted where it can be) fits its prior to the
    first, whose answers are binary with evidence enough (its model counts them), and the
    trace says so; on the second some query is answered wrong in two ways, and the trace
    says the fixed prior ranked."""
    from iapo.model import ModelQTable
    from iapo.report import Recorder

    right = np.random.default_rng(0).uniform(0.3, 0.8, (4, 100))
    for name, probs, prior in [
            ("two", np.stack([right, 1 - right], axis=-1), "fitted"),
            ("three", np.stack([right, (1 - right) / 2, (1 - right) / 2], axis=-1), "fixed")]:
        env = MVEnvironment(name, probs, np.zeros(100, dtype=np.int16), [0.01] * 4,
                            {"low": 0.0}, 5, cacheable=False)
        oracle = Recorder(SimulatedOracle(env, np.arange(100), 600, np.random.default_rng(1)))
        result = get_learner("psst-auto").learner(env.problem, oracle, 600,
                                                  np.random.default_rng(2))
        assert result.trace.info["prior"] == prior, name
        # ... and why: the evidence, or the query answered wrong in two ways
        why = result.trace.info["prior_reason"]
        assert (why.startswith("every query's answers were its right answer or one wrong "
                               "answer, shown by ") if name == "two" else
                why == "some query was answered wrong in two ways"), why
        model = ModelQTable(env.problem, prior="fitted")
        model.update(oracle.observations)
        assert (model.binary() is not None) == (name == "two")
    # a model that made no estimate (no screening round, blocks deciding) names no prior
    oracle = SimulatedOracle(env, np.arange(100), 600, np.random.default_rng(1))
    result = PSSTAuto(decide="blocks", keep=100)(env.problem, oracle, 600,
                                                np.random.default_rng(2))
    assert "prior" not in result.trace.info and "prior_reason" not in result.trace.info


def test_a_screening_cut_short_by_the_budget_still_lands_on_keep() -> None:
    # the same prompts, T = 60: rho T = 30 pays min(ceil(log2 4), 30 // 16) = 1 round, which
    # is the last one and keeps keep = 2 prompts (not half of 8)
    oracle = PatternOracle(problem("mv", 8, 4), 60, [[1.0]] * 8, COSTS)
    result = run(PSSTAuto(), oracle, 60)
    got = rounds(result)
    # allowance 30, M = 16: one group each (16); keep the cheapest two
    assert got[0] == (-1, 30, [(p, 2, 1) for p in range(8)], [8])
    assert result.trace.info["screened_prompts"] == [[2, 6]]
    # PSST with 60 - 16 = 44 over 8 arms, R = 3, M = 4: floor(44 / 3) = 14 -> 3 each (12);
    # 29 - 12 = 17 -> 4 each (16); 44 - 28 = 16 -> 4 each
    assert [(r, a, p) for r, a, p, _ in got[1:]] == [
        (1, 14, [(2, 2, 3), (6, 2, 3)]), (2, 17, [(2, 2, 4), (6, 2, 4)]),
        (3, 16, [(2, 2, 4), (6, 2, 4)])]
    assert (result.choices[0].prompt, result.choices[0].n) == (2, 1)


def test_keep_sets_how_many_prompts_the_screening_ends_with() -> None:
    # keep = 3 of the 8 prompts: R_s = ceil(log2(8 / 3)) = 2, T = 200 (rho T = 100 pays 6).
    # Round -2 keeps max(3, 4) = 4 prompts (2, 6, 4, 0); round -1 keeps 3 (2, 6, 4).
    oracle = PatternOracle(problem("mv", 8, 4), 200, [[1.0]] * 8, COSTS)
    result = run(PSSTAuto(keep=3), oracle, 200)
    got = rounds(result)
    assert got[0] == (-2, 50, [(p, 2, 3) for p in range(8)], [16])
    # 100 - 48 = 52 over 4 prompts in pairs: 6 each (48)
    assert got[1] == (-1, 52, [(p, 2, 6) for p in (0, 2, 4, 6)], [12])
    assert result.trace.info["screened_prompts"] == [[2, 4, 6]]


def test_mv_groups_shrink_to_n_max_when_it_is_below_two() -> None:
    # N_max 1: groups of min(2, 1) = 1. 4 prompts, T = 40: rho T = 20 pays
    # min(ceil(log2 2), 20 // 4) = 1 round: allowance 20, 5 groups of 1 each; keep 2
    oracle = PatternOracle(problem("mv", 4, 1), 40, [[1.0]] * 4, [0.43, 0.40, 0.42, 0.41])
    result = run(PSSTAuto(), oracle, 40)
    assert result.trace.info["group"] == 1
    assert rounds(result)[0] == (-1, 20, [(p, 1, 5) for p in range(4)], [2])
    assert result.trace.info["screened_prompts"] == [[1, 3]]


# ---------------------------------------------------------------- Best-of-N


def test_psst_auto_on_bon_ranks_by_one_completion_where_the_rest_commits() -> None:
    # 6 prompts scoring constants, cost 0.01 each (Q = v - 0.01 n): by value 1 (.9), 5 (.8),
    # 3 (.7), 4 (.5), 0 (.3), 2 (.1); model and blocks agree. N_max 8: groups of 4.
    # T = 200, rho T = 100: R_s = min(ceil(log2(6 / 2)), 100 // 24) = 2. The rest, at least
    # 100, pays 12.5 blocks of 8, fewer than 30 for each of keep = 2 prompts: the context will
    # commit by Q(c, p, 1), so where its groups tell the prompts apart at one completion (here
    # always: alike within a prompt, apart between) it keeps its k best by Q(c, p, 1), not the
    # union of half by each ranking (test_bon_screening_keeps_prompts_that_either_ranking_...).
    # Blocks decide (fixed, so no validation: the default keeps the model, which is exact
    # here, and screens by it alone; tests/test_learner_rules.py works that path by hand).
    values = [0.3, 0.9, 0.1, 0.7, 0.5, 0.8]
    oracle = PatternOracle(problem("bon", 6, 8), 200, [[v] for v in values], [0.01] * 6)
    result = run(PSSTAuto(decide="blocks"), oracle, 200)
    assert result.trace.info["group"] == 4
    assert result.trace.info["screening_ranked_by"] == [
        "union, 1 of 1 contexts by Q(c, p, 1)"] * 2
    assert rounds(result) == [
        # allowance 50, M = 24: 2 each (48); k = max(2, ceil(6 / 2)) = 3: the best 3 by
        # Q(c, p, 1), prompts 1, 5 and 3, 3 x 8 arms (the union: 1 and 5)
        (-2, 50, [(p, 4, 2) for p in range(6)], [24]),
        # the last: 100 - 48 = 52, M = 12: 4 each (48); k = 2: prompts 1 and 5
        (-1, 52, [(1, 4, 4), (3, 4, 4), (5, 4, 4)], [16]),
        # the rest, 104, pays 13 blocks of 8, fewer than 30 for each of 2: the context commits
        # to prompt 1
        # PSST on prompt 1's 8 arms with 104, pulled at the largest live N (blocks): R = 3;
        # floor(104 / 3) = 34 -> 4 groups of 8 (32), keep N = 1..4 (Q falls with N);
        # 69 - 32 = 37 -> 9 groups of 4 (36), keep N = 1, 2; 104 - 68 = 36 -> 18 groups of 2
        (1, 34, [(1, 8, 4)], [4]),
        (2, 37, [(1, 4, 9)], [2]),
        (3, 36, [(1, 2, 18)], [1]),
    ]
    assert result.trace.info["screened_prompts"] == [[1, 5]]
    assert result.trace.info["committed"] == [1]
    (choice,) = result.choices
    assert (choice.prompt, choice.n, choice.q_hat) == (1, 1, pytest.approx(0.89))
    # PSST estimates with the blocks, stockpiled with the screening's: one N = 1 block per
    # completion of prompt 1: 4 (2 + 4) + 32 + 36 + 36 = 128 (the model would count groups)
    assert choice.samples == 128


def test_bon_screening_keeps_prompts_that_either_ranking_puts_first() -> None:
    # Prompts 0 and 1 score a in one completion of every four, 0 in the others (a = 0.7, 0.69);
    # prompts 2 and 3 score 0.75 and 0.74 always. No cost (cost weight 0). N_max 16, groups of 4.
    # Blocks (N <= 4): a group [a, 0, 0, 0] has its best block of 3 or 4 worth a, so the
    # blocks rank 2 (.75), 3 (.74), 0 (.70), 1 (.69).
    # Model: the group mean a / 4 plus E[max of 16 draws] from the residuals
    # (3a/4, -a/4, -a/4, -a/4) x sqrt(4 / 3), equally likely; the max is 3a/4 sqrt(4/3) unless
    # all 16 draws are the low value ((3/4)^16 = 0.0100):
    # a = 0.7: 0.175 + 0.6062 x 0.9900 - 0.2021 x 0.0100 = 0.7731; a = 0.69: 0.7621.
    # The model ranks 0 (.7731), 1 (.7621), 2 (.75), 3 (.74).
    # 4 prompts, keep 2: one round (the last), k = 2: the best one by each ranking, 0 and 2
    # (the best two by the model alone would be 0 and 1, by the blocks alone 2 and 3).
    # Blocks decide (fixed: the union is how they screen). T = 2,000: the rest, at least
    # 1,000, pays 62.5 blocks of 16, 30 for each of 2 prompts, so no context will commit and
    # the union ranks, however far apart one completion puts the prompts.
    patterns = [[0.7, 0, 0, 0], [0.69, 0, 0, 0], [0.75], [0.74]]
    oracle = PatternOracle(problem("bon", 4, 16, cost_weight=0.0), 2000, patterns, [0.01] * 4)
    result = run(PSSTAuto(decide="blocks"), oracle, 2000)
    first = result.trace.rounds[0]
    # rho T = 1,000, M = 4 x 4 = 16: 62 groups each (992)
    assert (first.round, first.allowance, pulls(first)) == (-1, 1000,
                                                           [(p, 4, 62) for p in range(4)])
    assert result.trace.info["screening_ranked_by"] == ["union"]
    assert result.trace.info["screened_prompts"] == [[0, 2]]
    assert list(first.alive) == [2 * 16]
    # the rest, 1,008, pays 63 blocks of 16, 30 for each of the 2 survivors: the context
    # keeps both, and PSST pulls both at their largest N, 16
    assert "committed" not in result.trace.info
    assert {(p, n) for p, n, _ in pulls(result.trace.rounds[1])} == {(0, 16), (2, 16)}


def test_bon_screening_by_one_completion_is_not_by_the_best_of_small_n() -> None:
    # The rest will commit (T = 200, N_max 16) and one completion tells the prompts apart
    # (alike within a prompt, apart between), so the context keeps its best 2 by Q(c, p, 1):
    # prompts 1 (0.4) and 2 (0.3), against 0.7 / 4 = 0.175 for prompt 0, whose best block
    # of 3 or 4 (0.7) would put it first by the blocks' best over N <= 4, and by the model.
    # It then commits to prompt 1. T = 1,500 too: the rest, at least 750, pays 46.9 blocks of
    # 16, 30 for 1 prompt but fewer than 30 for each of keep = 2 (T = 2,000: see
    # test_bon_screening_keeps_prompts_that_either_ranking_puts_first)
    patterns = [[0.7, 0, 0, 0], [0.4], [0.3], [0.1]]
    for budget in (200, 1500):
        oracle = PatternOracle(problem("bon", 4, 16, cost_weight=0.0), budget, patterns,
                               [0.01] * 4)
        result = run(PSSTAuto(decide="blocks"), oracle, budget)
        assert result.trace.info["screening_ranked_by"] == [
            "union, 1 of 1 contexts by Q(c, p, 1)"]
        assert result.trace.info["screened_prompts"] == [[1, 2]]
        assert result.trace.info["committed"] == [1]


def test_bon_screening_where_one_completion_cannot_tell_the_prompts_apart() -> None:
    # Where the rest will commit (T = 200: the rest, at least 100, pays 6 blocks of 16), a
    # context ranks by Q(c, p, 1) only where one completion tells its prompts apart. Here it
    # cannot: every prompt's group mean is 0.2 (patterns [0.8, 0, 0, 0], [0.4, 0, 0.4, 0],
    # [0.2], [0.5, 0.3, 0, 0]; no difference between prompts), so the union ranks. Blocks
    # (N <= 4): the best block of 3 or 4 is worth 0.8, 0.4, 0.2, 0.5: prompt 0 first. Model:
    # mean 0.2 plus E[max of 16] of residuals scaled by sqrt(4 / 3), whose largest, for
    # patterns 0, 1, 3, is 0.6, 0.2 and 0.3 times it, each drawn with probability 1/4 (1/2 for
    # pattern 1): prompt 0 first. One round (the last), k = 2: the best one by each, prompt 0
    # alone; then the context, with one prompt, has nothing to commit between.
    patterns = [[0.8, 0, 0, 0], [0.4, 0, 0.4, 0], [0.2], [0.5, 0.3, 0, 0]]
    oracle = PatternOracle(problem("bon", 4, 16, cost_weight=0.0), 200, patterns, [0.01] * 4)
    result = run(PSSTAuto(decide="blocks"), oracle, 200)
    assert result.trace.info["screening_ranked_by"] == ["union"]
    assert result.trace.info["screened_prompts"] == [[0]]
    assert "committed" not in result.trace.info


class RecordingOracle(PatternOracle):
    """A :class:`PatternOracle` that keeps every pull it is asked for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.requests: list[Pull] = []

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        self.requests += requests
        return super().pull(requests)


@pytest.mark.parametrize(("aggregator", "setting", "paired"), [
    ("bon", None, True), ("mv", None, False), ("bon", False, False), ("mv", True, True)])
def test_bon_pulls_every_round_on_shared_queries_mv_on_their_own(
        aggregator: str, setting: bool | None, paired: bool) -> None:
    # by default (setting None) by the aggregator; ``paired`` forces either way
    # the screening's rounds and PSST's after them, its last round's top-up included (an odd
    # T leaves one), with either estimator deciding
    for decide in ("model", "blocks"):
        oracle = RecordingOracle(problem(aggregator, 6, 8), 401,
                                 [[v] for v in (0.3, 0.9, 0.1, 0.7, 0.5, 0.8)], [0.01] * 6)
        result = run(PSSTAuto(decide=decide, paired=setting), oracle, 401)
        assert result.trace.info["paired"] is paired
        assert len(result.trace.rounds) > 2  # screening and PSST
        assert any(k == 1 for _, _, k in result.trace.rounds[-1].pulls)  # a top-up
        assert oracle.requests and {r.paired for r in oracle.requests} == {paired}


def test_paired_rounds_rank_exactly_where_queries_shift_every_prompt_alike() -> None:
    """Known by construction: prompt p's completion on query x always scores effect(x) +
    0.005 p, the effects spread over 0..0.9. Paired rounds give every prompt alive in a
    round the same queries, so the estimates differ by the offsets (exactly, but for a last
    round's top-up groups, one per prompt at most) and prompt 7 wins in every seed; groups
    on queries of their own (the rule switched off) carry the effects' noise (about 0.27 /
    sqrt(groups)), far above the offsets, and miss it."""
    x, p = 200, 8
    scores = np.zeros((p, x, 1, 2))
    scores[..., 0, 0] = np.linspace(0.0, 0.9, x)[None, :] + 0.005 * np.arange(p)[:, None]
    scores[..., 0, 1] = 0.01
    grid = ContextGrid.product([Objective("a")], [(1.0,)], {"low": 0.0, "high": 1.0})
    env = BoNEnvironment("shift", scores, np.ones((p, x, 1)), grid, n_max=8, cacheable=False)

    def prompts(learner: PSSTAuto) -> list[list[int]]:
        out = []
        for seed in range(10):
            oracle = SimulatedOracle(env, np.arange(x), 2000, np.random.default_rng(seed))
            result = learner(env.problem, oracle, 2000, np.random.default_rng(seed))
            out.append([c.prompt for c in result.choices])
        return out

    assert prompts(PSSTAuto()) == [[7, 7]] * 10  # Best-of-N: paired by default
    assert sum(c != [7, 7] for c in prompts(PSSTAuto(paired=False))) >= 3


def test_bon_groups_are_at_most_four_and_at_most_n_max() -> None:
    # N_max 3: groups of min(4, 3) = 3. 4 prompts, T = 100: rho T = 50 pays
    # min(ceil(log2 2), 50 // 12) = 1 round: 4 groups of 3 each (48). The model is exact (its
    # rise from 1 to 3 exceeds the groups' by rounding alone), so it stands and ranks alone:
    # the best 2, prompts 2 and 3
    oracle = PatternOracle(problem("bon", 4, 3), 100, [[0.2], [0.4], [0.9], [0.6]], [0.01] * 4)
    result = run(PSSTAuto(), oracle, 100)
    assert result.trace.info["group"] == 3
    assert result.trace.info["screening_ranked_by"] == ["model"]
    assert rounds(result)[0] == (-1, 50, [(p, 3, 4) for p in range(4)], [6])
    assert result.trace.info["screened_prompts"] == [[2, 3]]


# ---------------------------------------------------------------- no screening


@pytest.mark.parametrize("keep", [2, 3])
def test_no_screening_when_keep_keeps_every_prompt(keep: int) -> None:
    # 2 prompts and keep >= 2: nothing to screen; PSST decides among all 2 x 4 arms with the
    # whole T = 40: R = 3, LargestN (BoN): floor(40 / 3) = 13 -> 1 group of 4 each (8)
    oracle = PatternOracle(problem("bon", 2, 4), 40, [[0.9], [0.1]], [0.01] * 2)
    result = run(PSSTAuto(keep=keep), oracle, 40)
    assert result.trace.notes[0] == f"screening skipped: keep={keep} keeps every prompt"
    assert result.trace.info["screened_prompts"] == [[0, 1]]
    assert [r.round for r in result.trace.rounds] == [1, 2, 3]
    assert rounds(result)[0] == (1, 13, [(0, 4, 1), (1, 4, 1)], [4])
    assert result.trace.completions_used == 40


def test_a_mixed_problem_gets_plain_psst_and_says_so_first() -> None:
    # mixed aggregator (no model of it): PSST alone, with its own notes after the learner's.
    # 2 prompts, N_max 2, T = 3: one group of both at N = 2 costs 4 > 3, so rule 1 caps N at
    # floor(3 / 2) = 1; |A| = 4, R = 2, but T pays floor(3 / 2) = 1 round of 2 completions.
    # Round 1: allowance 3, one group of each at N = 1 (2), the 1 left to one of them.
    # Q(p, 1) = 0.5 x 1 (always right) + 0.5 x style_p - 0.1: prompt 0 (style 0.8) is best.
    oracle = PatternOracle(problem("mixed", 2, 2), 3, [[1.0], [1.0]], [0.1, 0.1],
                           style=[0.8, 0.2])
    result = run(PSSTAuto(), oracle, 3)
    assert result.trace.notes == [
        "mixed aggregator: no screening, plain PSST",
        "T=3 cannot pay one group of every prompt at its largest N (4); arms with N > 1 were "
        "dropped (scale cap)",
        "1 rounds instead of the paper's 2: T=3 pays for at most 1 rounds of 2 completions"]
    assert result.trace.info == {"rounds_paper": 2, "scale_cap": 1, "rounds_run": 1,
                                 "paired": False}
    (r,) = result.trace.rounds
    assert (r.round, r.allowance, r.spent) == (1, 3, 3)
    assert pulls(r) in ([(0, 1, 1), (0, 1, 1), (1, 1, 1)], [(0, 1, 1), (1, 1, 1), (1, 1, 1)])
    (choice,) = result.choices
    assert (choice.prompt, choice.n, choice.q_hat) == (0, 1, pytest.approx(0.8))


@pytest.mark.parametrize("answers", ["two", "three"])
def test_the_validation_folds_model_fits_its_prior_where_the_screening_s_does(
        answers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folds hold part of the screening's answers, so less evidence that they are binary:
    their model takes the whole screening's decision (fitted where its answers are binary,
    with no evidence asked of a fold), so that the validation scores the model that decides.
    Where the answers are not binary, the folds' model keeps the fixed prior."""
    import iapo.learners.auto as auto
    from iapo.model import ModelQTable

    made: list[ModelQTable] = []
    real = auto.cross_validate

    def spy(problem, seen, alive, candidates, **kw):  # type: ignore[no-untyped-def]
        made.append(candidates["model"]())
        return real(problem, seen, alive, candidates, **kw)

    monkeypatch.setattr(auto, "cross_validate", spy)
    right = np.random.default_rng(0).uniform(0.3, 0.8, (4, 100))
    probs = (np.stack([right, 1 - right], axis=-1) if answers == "two"
             else np.stack([right, (1 - right) / 2, (1 - right) / 2], axis=-1))
    env = MVEnvironment(answers, probs, np.zeros(100, dtype=np.int16), [0.01] * 4,
                        {"low": 0.0}, 5, cacheable=False)
    oracle = SimulatedOracle(env, np.arange(100), 600, np.random.default_rng(1))
    get_learner("psst-auto").learner(env.problem, oracle, 600, np.random.default_rng(2))
    assert made
    want = "fitted" if answers == "two" else "fixed"
    assert all(m.prior == want and m.evidence == 0 for m in made)


class ObservationLog:
    """A simulated oracle that keeps every observation it returns (where
    :class:`RecordingOracle` keeps the pulls asked of a pattern)."""

    def __init__(self, oracle: SimulatedOracle) -> None:
        self.oracle, self.ledger, self.seen = oracle, oracle.ledger, []

    def pull(self, pulls: Sequence[Pull]) -> list[Observation]:
        out = self.oracle.pull(pulls)
        self.seen += out
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.oracle, name)


def test_psst_auto_chooses_among_every_screened_arm_where_the_model_decides() -> None:
    """``math`` (majority voting: the model decides), T = 2,000, ten seeds: each context's
    choice is the best arm, by a model refitted here from every observation of the run,
    among every arm of the prompts the screening kept (its trace's ``screened_prompts``),
    whether or not PSST's last round kept it; the trace says where it did not
    (``reopened``), which happens in some context of these runs. Where blocks decide
    (``summarization-smollm2``, T = 1,000) the choice stays Algorithm 1's: no ``reopened``."""
    from iapo.envs import get_environment
    from iapo.model import ModelQTable

    env = get_environment("math")
    train = np.arange(int(env.n_queries * 0.8))
    reopened = 0
    for seed in range(10):
        oracle = ObservationLog(SimulatedOracle(env, train, 2000,
                                                np.random.default_rng(seed)))
        result = PSSTAuto()(env.problem, oracle, 2000, np.random.default_rng(100 + seed))
        assert result.trace.info["estimator"]["choice"] == "model"
        model = ModelQTable(env.problem, PSSTAuto().alpha, PSSTAuto().prior)
        model.update(oracle.seen)
        for c, (kept, choice) in enumerate(zip(result.trace.info["screened_prompts"],
                                               result.choices, strict=True)):
            values = model.mean[c, kept]  # [kept, N]
            best = np.unravel_index(np.argmax(values), values.shape)
            assert (kept[best[0]], best[1] + 1) == (choice.prompt, choice.n)
            assert choice.q_hat == pytest.approx(values.max(), abs=1e-12)
        reopened += sum(result.trace.info["reopened"])
        # Algorithm 1's choice, recorded: reopened where the choice differs from it
        for choice, was, out in zip(result.choices, result.trace.info["survivors_choice"],
                                    result.trace.info["reopened"], strict=True):
            assert out == (was != [choice.prompt, choice.n])
    assert reopened >= 1
    small = get_environment("summarization-smollm2")
    oracle = SimulatedOracle(small, np.arange(int(small.n_queries * 0.8)), 1000,
                             np.random.default_rng(0))
    result = PSSTAuto()(small.problem, oracle, 1000, np.random.default_rng(1))
    assert result.trace.info["estimator"]["choice"] == "blocks"
    assert "reopened" not in result.trace.info
