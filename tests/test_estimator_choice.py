"""psst-auto's choice of the estimator that decides, by cross-validation on paid completions.

The rule (:mod:`iapo.learners.validate`) is checked by hand on small cases, and then on two
Best-of-N worlds where the right answer is known by construction:

- model exact: every completion is the query's effect plus noise drawn from one distribution
  per prompt, the same on every query, which is what the per-query model assumes;
- model misspecified: the noise depends on a query feature the model pools over (no noise on
  even queries, twice as much on odd ones), so the model's expected maximum of n, taken over
  the pooled residuals, is too high, more so for the noisier prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from fresh_oracle import FreshQueryOracle
from iapo.bench.runner import run_oracle, run_queries
from iapo.envs import get_environment
from iapo.errors import InputError
from iapo.estimate import GroupMeans, QTable
from iapo.latency import SyntheticLatency
from iapo.learners import PSSTAuto
from iapo.learners.auto import (
    MODEL_LEVEL,
    SEPARATE_LEVEL,
    _committed,
    level_for,
    separated_at_one,
)
from iapo.learners.validate import (
    SlopeCheck,
    Validation,
    beats,
    centred_errors,
    cross_validate,
    query_folds,
    slope_check,
    split_by_fold,
)
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, CostObjective, Objective, Problem
from iapo.pulls import Observation, Pull, joined
from iapo.report import Recorder, arm_table, estimator_for


def bon_problem(n_prompts: int, n_max: int, contexts: int = 1) -> Problem:
    """Best-of-N, no cost; one objective, or two weighed (w, 1 - w) for w = 0 .. 1 in
    ``contexts`` steps."""
    if contexts == 1:
        grid = ContextGrid.product([Objective("quality")], [(1.0,)], {"free": 0.0})
    else:
        weights = [(float(w), float(1 - w)) for w in np.linspace(0, 1, contexts)]
        grid = ContextGrid.product([Objective("a"), Objective("b")], weights, {"free": 0.0})
    return Problem("choice", "bon", tuple(f"p{i}" for i in range(n_prompts)), n_max, grid,
                   CostObjective("cost", 1.0))


class FeatureOracle(FreshQueryOracle):
    """Best-of-N completions of prompt p on a fresh query x, each objective scoring
    mu_x + SHIFT[p] + sd z (z standard normal, mu_x ~ N(0, 0.1^2) the query's effect, drawn
    per objective), cost 1. ``exact``: sd = SD[p] on every query; otherwise sd = 0 on even
    queries and 2 SD[p] on odd ones (the same noise on average). Nine contexts weigh the two
    objectives."""

    SD = tuple(np.linspace(0.05, 0.4, 8))
    SHIFT = tuple(np.linspace(0.3, 0.0, 8))  # the noisier prompts start lower

    def __init__(self, exact: bool, budget: int, seed: int) -> None:
        super().__init__(bon_problem(len(self.SD), 16, contexts=9), budget)
        self.exact = exact
        self.rng = np.random.default_rng(seed)
        self.effects = np.zeros((0, 2))  # mu_x per query id and objective, drawn when first met

    def observe(self, r: Pull, queries: npt.NDArray[np.int64]) -> Observation:
        sd = np.full(r.count, self.SD[r.prompt])
        if not self.exact:
            sd = np.where(queries % 2 == 1, 2 * sd, 0.0)
        new = int(queries.max(initial=-1)) + 1 - self.effects.shape[0]
        if new > 0:
            self.effects = np.concatenate([self.effects, self.rng.normal(0.0, 0.1, (new, 2))])
        scores = np.ones((r.count, r.n, 3))
        for k in range(2):
            mu = self.effects[queries, k] + self.SHIFT[r.prompt]
            scores[..., k] = mu[:, None] + sd[:, None] * self.rng.standard_normal((r.count, r.n))
        return Observation(r.prompt, r.n, queries, scores)


def groups(oracle: FeatureOracle, count: int, n: int = 4) -> list[Observation]:
    return oracle.pull([Pull(p, n, count) for p in range(oracle.problem.n_prompts)])


# ---------------------------------------------------------------- the parts, by hand


def test_folds_deal_every_query_to_one_fold_evenly_at_random() -> None:
    obs = [Observation(0, 2, np.array([5, 1, 9, 5]), np.arange(16.0).reshape(4, 2, 2)),
           Observation(1, 2, np.array([1, 7, 3]), np.zeros((3, 2, 2))),
           Observation(0, 2, np.array([3, 7]), np.ones((2, 2, 2)))]
    folds = query_folds(obs, 3, np.random.default_rng(0))
    assert folds.queries.tolist() == [1, 3, 5, 7, 9]  # the distinct queries
    # an empty observation anywhere is passed over
    first = obs[0]
    obs.insert(0, Observation(1, 2, np.zeros(0, dtype=np.int64), np.zeros((0, 2, 2))))
    assert sorted(np.bincount(folds.fold, minlength=3)) == [1, 2, 2]
    assert folds.of(np.array([9, 1, 9])).tolist() == [folds.fold[4], folds.fold[0],
                                                       folds.fold[4]]
    # another generator deals them otherwise: the order is random
    deals = {tuple(query_folds(obs, 3, np.random.default_rng(s)).fold) for s in range(20)}
    assert len(deals) > 1
    for f in range(3):
        train, held = split_by_fold(obs, folds, f)
        # a query's groups are all on one side, every group on exactly one
        held_q = {int(q) for o in held for q in o.queries}
        train_q = {int(q) for o in train for q in o.queries}
        assert held_q == set(folds.queries[folds.fold == f].tolist())
        assert not held_q & train_q
        assert sum(o.count for o in train + held) == 9
        # one observation per (prompt, n) on each side, the groups with their own scores
        for side in (train, held):
            assert len({(o.prompt, o.n) for o in side}) == len(side)
            for o in side:
                for q, sc in zip(o.queries, o.scores, strict=True):
                    if o.prompt == 0 and q != 3 and q != 7:
                        rows = [i for i, x in enumerate([5, 1, 9, 5]) if x == q]
                        assert any(np.array_equal(sc, first.scores[i]) for i in rows)


def test_rows_and_joined_keep_every_groups_fields() -> None:
    o = Observation(2, 3, np.array([4, 5, 6]), np.arange(18.0).reshape(3, 3, 2),
                    np.array([[0, 1, 1], [2, 2, 0], [1, 1, 1]], dtype=np.int16),
                    np.array([1, 2, 0], dtype=np.int16))
    s = o.rows(np.array([True, False, True]))
    assert (s.prompt, s.n, s.queries.tolist()) == (2, 3, [4, 6])
    assert s.scores[1, 2, 1] == 17.0 and s.labels is not None and s.gold is not None
    assert s.labels.tolist() == [[0, 1, 1], [1, 1, 1]] and s.gold.tolist() == [1, 0]
    assert s.no_answer is None
    # joined: one observation per (prompt, n), in order; a group without a "no answer"
    # category counts -1 beside one that has it
    t = Observation(2, 3, np.array([7]), np.full((1, 3, 2), 9.0),
                    np.array([[3, 3, 0]], dtype=np.int16), np.array([0], dtype=np.int16),
                    np.array([3], dtype=np.int16))
    other = Observation(1, 3, np.array([8]), np.zeros((1, 3, 2)),
                        np.zeros((1, 3), dtype=np.int16), np.zeros(1, dtype=np.int16))
    j = joined([s, other, t])
    assert sorted(j) == [(1, 3), (2, 3)] and j[1, 3] is other
    both = j[2, 3]
    assert both.queries.tolist() == [4, 6, 7] and both.scores[2, 0, 0] == 9.0
    assert both.labels is not None and both.labels[2].tolist() == [3, 3, 0]
    assert both.gold is not None and both.gold.tolist() == [1, 0, 0]
    assert both.no_answer is not None and both.no_answer.tolist() == [-1, -1, 3]


def test_centred_errors_count_only_the_differences_between_a_contexts_arms() -> None:
    held = np.array([[[0.5, 0.6], [0.2, 0.0]]])  # [C=1, P=2, n=2]
    arms = np.array([[[True, True], [True, False]]])
    # a fit off by the same 0.1 everywhere ranks the arms exactly: no error
    assert centred_errors(held + 0.1, held, arms) == pytest.approx([0.0], abs=1e-15)
    # errors d = (0.1, -0.2, 0.4) on the three arms: mean 0.1, centred (0, -0.3, 0.3)
    fit = held + np.array([[[0.1, -0.2], [0.4, 9.0]]])  # the arm not compared is ignored
    assert centred_errors(fit, held, arms) == pytest.approx([0.18])
    # a context with one arm has no difference to get wrong
    assert centred_errors(fit, held, np.array([[[True, False], [False, False]]])).tolist() == [0]
    # contexts are centred apart: the same errors in a second context, shifted by 1, give the
    # same 0.18 there; the first context's alone give 0.18 and 0
    two_fit = np.concatenate([fit, fit + 1.0])
    two_held = np.concatenate([held, held])
    assert centred_errors(two_fit, two_held, np.concatenate([arms, arms])) == pytest.approx(
        [0.18, 0.18])
    only = np.concatenate([arms, np.zeros_like(arms)])
    assert centred_errors(two_fit, two_held, only) == pytest.approx([0.18, 0.0])


class Fixed:
    """A stand-in estimator whose Q is fixed, whatever it is fed."""

    def __init__(self, mean: np.ndarray) -> None:
        self.mean = mean

    def update(self, observations: Sequence[Observation]) -> None:
        pass


def test_a_challenger_must_beat_the_first_candidate_by_the_margin() -> None:
    # one context, 2 prompts, N_max 1; prompt 0 always scores 1, prompt 1 always 0, so every
    # held-out fold's block means are exactly (1, 0)
    problem = bon_problem(2, 1)
    scores = np.zeros((40, 1, 2))
    scores[:20, 0, 0] = 1.0
    obs = [Observation(0, 1, np.arange(20), scores[:20]),
           Observation(1, 1, np.arange(20, 40), scores[20:])]
    alive = np.ones((1, 2), dtype=bool)
    right, wrong = np.array([[[1.0], [0.0]]]), np.array([[[1.0], [0.5]]])

    def choose(first: np.ndarray, second: np.ndarray, level: float | None) -> str:
        return cross_validate(problem, obs, alive, {"a": lambda: Fixed(first),
                                                    "b": lambda: Fixed(second)},
                              upto=1, folds=4, rng=np.random.default_rng(1),
                              level=level).choice

    # b is right and a is off by 0.5 in the difference: a's error is (0.25^2) x 2 = 0.125 in
    # every fold, b's 0, the same gain in all four folds (SE 0): b wins at any level
    assert choose(wrong, right, 0.05) == "b"
    result = cross_validate(problem, obs, alive, {"a": lambda: Fixed(wrong),
                                                  "b": lambda: Fixed(right)},
                            upto=1, folds=4, rng=np.random.default_rng(1))
    assert result.errors == pytest.approx({"a": 4 * 0.125, "b": 0.0})
    assert result.compared == 4 * 2
    # the first keeps its place when the challenger is no better, or worse
    assert choose(right, wrong, 0.05) == "a"
    assert choose(right, right, None) == "a"


def test_the_challengers_test_is_a_one_sided_t_test_over_the_folds() -> None:
    # four folds' gains with mean m and deviations (0.4, -0.4, 0.3, -0.3): sample variance
    # 0.5 / 3, so the SE of their sum is sqrt(4 x 0.5 / 3) = 0.8165. The one-sided 5% point
    # of t with 3 degrees of freedom is 2.353 (a t table): the sum must pass 1.921. A normal
    # 1.645 would ask for 1.343 only.
    assert not beats(np.array([0.8, 0.0, 0.7, 0.1]), 8, 0.05)  # m = 0.4: sum 1.6
    assert beats(np.array([0.9, 0.1, 0.8, 0.2]), 8, 0.05)  # m = 0.5: sum 2.0
    # without a level any positive sum wins, but not one within rounding, nor a loss
    assert beats(np.array([0.8, 0.0, 0.7, 0.1]), 8, None)
    assert beats(np.array([0.5, -0.4]), 8, None)
    assert not beats(np.array([1e-25, 0.0]), 8, None)
    assert not beats(np.array([-0.1, 0.05]), 8, None)
    # m = 0.45: sum 1.8, between the t point with 3 degrees of freedom (1.921) and with 5
    # (2.015 x 0.8165 = 1.645)
    assert not beats(np.array([0.85, 0.05, 0.75, 0.15]), 8, 0.05)
    # two folds: t with 1 degree of freedom, 6.314; gains 1.0, 1.1: SE of the sum
    # sqrt(2 x 0.005) = 0.1, so 2.1 passes 0.63
    assert beats(np.array([1.0, 1.1]), 8, 0.05)
    # one fold cannot show a significant difference; a sum of exactly 0 is no gain
    assert not beats(np.array([5.0]), 8, 0.05) and beats(np.array([5.0]), 8, None)
    assert not beats(np.zeros(2), 0, None)


def test_a_level_asks_for_consistent_folds_and_no_level_for_any_gain() -> None:
    # one context, 2 prompts, N_max 1, 4 queries: 4 folds hold one query each. Prompt 0
    # scores 1.0, 0.6, 0.8, 0.8 on the queries, prompt 1 always 0, so a fold's held-out
    # difference is d = 1.0, 0.6, 0.8, 0.8. With two arms the centred squared errors sum to
    # (predicted difference - d)^2 / 2: candidate a predicts 1.0, b 0.8, so a's errors are
    # 0, 0.08, 0.02, 0.02 and b's 0.02, 0.02, 0, 0 (the order of the folds aside). The gains
    # a - b: -0.02, 0.06, 0.02, 0.02, sum 0.08 > 0, so b wins without a level. With 0.05: the
    # sample variance is 0.0032 / 3, the SE of the sum sqrt(4 x 0.0032 / 3) = 0.0653, and the
    # sum must pass 2.353 x 0.0653 = 0.154: a stays.
    problem = bon_problem(2, 1, contexts=2)
    scores = np.zeros((8, 1, 3))
    scores[:4, 0, :2] = np.array([1.0, 0.6, 0.8, 0.8])[:, None]
    obs = [Observation(0, 1, np.arange(4), scores[:4]),
           Observation(1, 1, np.arange(4), scores[4:])]
    # the second context has prompt 0 alone: one arm, no difference, not compared
    alive = np.array([[True, True], [True, False]])
    a, b = np.array([[[1.0], [0.0]]] * 2), np.array([[[0.8], [0.0]]] * 2)

    def run(level: float | None, folds: int = 4) -> Validation:
        return cross_validate(problem, obs, alive, {"a": lambda: Fixed(a),
                                                    "b": lambda: Fixed(b)},
                              upto=1, folds=folds, rng=np.random.default_rng(3), level=level)

    free, tested = run(None), run(0.05)
    assert (free.choice, tested.choice) == ("b", "a")
    assert free.errors == pytest.approx({"a": 0.12, "b": 0.04})
    assert free.compared == 4 * 2 and free.folds == 4
    assert free.reason.startswith("b chosen") and tested.reason.startswith("a kept")
    # five folds over four queries: one fold is empty and is not counted
    assert run(None, folds=5).folds == 4
    # nothing to compare: the first candidate decides, and says so
    none = cross_validate(problem, obs, np.zeros((2, 2), dtype=bool),
                          {"a": lambda: Fixed(a), "b": lambda: Fixed(b)}, upto=1, folds=4,
                          rng=np.random.default_rng(3))
    assert (none.choice, none.compared, none.folds) == ("a", 0, 0)
    assert "the first candidate decides" in none.reason
    single = cross_validate(problem, obs, np.array([[True, False], [True, False]]),
                            {"a": lambda: Fixed(a), "b": lambda: Fixed(b)}, upto=1, folds=4,
                            rng=np.random.default_rng(3))
    assert (single.choice, single.compared) == ("a", 0)
    assert single.reason.startswith("a: nothing to compare")


def test_psst_auto_checks_decide_and_folds() -> None:
    assert (PSSTAuto().decide, PSSTAuto().folds) == ("validate", 5)
    with pytest.raises(InputError, match="decide='guess' is unknown; use one of validate, "
                                         "model, blocks"):
        PSSTAuto(decide="guess")
    with pytest.raises(InputError, match="folds=1: a validation needs at least 2 folds"):
        PSSTAuto(folds=1)


# ---------------------------------------------------------------- known by construction


def test_the_model_bias_of_the_misspecified_world_is_real() -> None:
    # what the construction claims, checked by brute force before the choice is: on a large
    # sample the model is right at n = 4 in the exact world and too high in the other, by
    # more for the noisier prompts; the blocks are right in both
    for exact in (True, False):
        oracle = FeatureOracle(exact, 10**6, seed=3)
        obs = groups(oracle, 4000)
        model, blocks = ModelQTable(oracle.problem), QTable(oracle.problem)
        model.update(obs)
        blocks.update(obs)
        bias = model.mean[0, :, 3] - blocks.mean[0, :, 3]  # [P], the first context
        if exact:
            assert np.abs(bias).max() < 0.02
        else:
            assert np.all(np.diff(bias) > 0.01) and bias[-1] > 0.08


def test_validation_picks_the_model_where_it_is_exact_and_blocks_where_it_is_not() -> None:
    # both worlds in one test, the same learner and budget: 8 prompts, keep 4, N_max 16,
    # T = 8,000 (rho T = 4,000: one screening round, then PSST on the 4 kept). The model
    # stands first: in the exact world nothing dislodges it (it kept all 40 of these seeds;
    # at least 36 are asked); in the other blocks beat it on the held-out errors (by the t
    # test, 1 of the 40 seeds; 11 when each group drew its own query) or the model's rise
    # from 1 to 4 completions is steeper than the groups' own (the other 39), every time
    picks: dict[bool, list[str]] = {True: [], False: []}
    for seed in range(40):
        for exact in (True, False):
            oracle = FeatureOracle(exact, 8000, seed)
            result = PSSTAuto(keep=4)(oracle.problem, oracle, 8000, np.random.default_rng(seed))
            info = result.trace.info["estimator"]
            picks[exact].append(info["choice"])
            assert info["folds"] == 5 and info["compared"] > 0
            assert set(info["errors"]) == {"model", "blocks"}
            assert info["reason"].startswith(info["choice"])
            if info["choice"] == "model":  # the held-out errors kept it and so did its slope
                assert info["slope"]["rejects"] is False
            elif "slope" not in info:  # blocks won the held-out errors
                assert info["errors"]["blocks"] < info["errors"]["model"]
            else:
                assert info["slope"]["rejects"] and info["slope"]["excess"] > 0
            # the last screening round ranked by what then decides (the union for blocks)
            assert result.trace.info["screening_ranked_by"][-1] == (
                "model" if info["choice"] == "model" else "union")
            # the winner decides: the model pulls groups of 4 on many queries, the blocks
            # each prompt's largest live N (16 in the first of PSST's rounds); 4,000 left pay
            # 250 blocks of 16, more than 30 for each of the 4 prompts kept: none commits
            first = next(r for r in result.trace.rounds if r.round == 1)
            assert {n for _, n, _ in first.pulls} == ({4} if info["choice"] == "model"
                                                      else {16})
            assert "committed" not in result.trace.info
    assert picks[True].count("model") >= 36
    assert picks[False].count("blocks") == 40


def slope_groups(own: Sequence[Sequence[float]], prompt: int = 0) -> Observation:
    """Groups of 2 completions of ``prompt``: the first scores own[i] = (a, b) on the two
    objectives, the second 0 on both."""
    own_ = np.asarray(own, dtype=float)
    scores = np.zeros((own_.shape[0], 2, 3))
    scores[:, 0, :2] = own_
    return Observation(prompt, 2, np.arange(own_.shape[0], dtype=np.int64), scores)


def test_the_slope_check_by_hand() -> None:
    """g = 2, two contexts weighing objectives a and b (0, 1) and (1, 0). A group whose first
    completion scores b = s (and the second 0) has best less mean s / 2 in context 0. The
    model's rise r = task[c, p, 2] - task[c, p, 1]. One sample per group: the mean over the
    contexts where its prompt is alive (context 0 only) of r - 1.04 x (best - mean)."""
    problem = bon_problem(2, 4, contexts=2)
    task = np.zeros((2, 2, 4))
    alive = np.array([[True, False], [False, False]])  # prompt 0 alive in context 0 only

    def check(rise: float, own: Sequence[float]) -> SlopeCheck:
        task[0, 0, 1] = rise
        obs = slope_groups([(5.0, 2 * o) for o in own])  # objective a: the other context
        other = slope_groups([(9.0, 9.0)] * 3, prompt=1)  # a prompt alive nowhere
        short = Observation(0, 1, np.array([7]), np.full((1, 1, 3), 9.0))  # n < g
        return slope_check(problem, task, [obs, other, short], alive, 2)

    # the margin: groups all alike (no spread), so the excess alone decides, at 1.04 x 0.1
    assert check(0.1035, [0.1, 0.1]) == SlopeCheck(pytest.approx(-0.0005), 0.0, 2, False)
    assert check(0.1045, [0.1, 0.1]).rejects
    # an excess of rounding's size is none (an exact model's rise can exceed by 1e-17)
    assert not check(0.104 + 1e-15, [0.1, 0.1]).rejects
    # the bound: own 0 and 0.2, so samples r and r - 0.208, mean r - 0.104, standard error
    # 0.104; rejected beyond a quarter of it, at r > 0.104 + 0.026 = 0.130
    kept = check(0.125, [0.0, 0.2])
    assert (kept.excess, kept.stderr, kept.groups, kept.rejects) == (
        pytest.approx(0.021), pytest.approx(0.104), 2, False)
    assert check(0.135, [0.0, 0.2]).rejects
    # one group is no evidence
    assert check(5.0, [0.0]) == SlopeCheck(0.0, 0.0, 1, False)
    # alive in both contexts: a sample is the mean over them; in context 1 (objective a,
    # 5.0 then 0) the group's own rise is 2.5, so with rises 0.3 and 2.7 each group gives
    # ((0.3 - 1.04 x 0.1) + (2.7 - 1.04 x 2.5)) / 2 = 0.148
    alive[1, 0], task[1, 0, 1] = True, 2.7
    both = check(0.3, [0.1, 0.1])
    assert (both.excess, both.groups, both.rejects) == (pytest.approx(0.148), 2, True)


def test_best_of_n_with_blocks_commits_where_the_rest_pays_few_blocks() -> None:
    """16 completions a block: per context, the rest must pay 30 blocks for each of its own
    surviving prompts, or it commits to its prompt of highest Q(c, p, 1)."""
    q1 = np.array([[0.2, 0.5, 0.9], [0.3, 0.1, 0.0], [0.4, 0.6, 0.8], [0.1, 0.2, 0.3]])
    alive = np.array([[True, True, False], [True, False, False], [True, True, True],
                      [False, False, False]])
    rng = np.random.default_rng(0)
    # 960 / 16 = 60 blocks: 30 for each of 2 prompts (kept), fewer than 30 for each of 3
    assert _committed(q1, alive, 960, 16, rng).tolist() == [
        [True, True, False], [True, False, False], [False, False, True],
        [False, False, False]]
    # 959: the first context commits too (prompt 1, 0.5 against 0.2)
    assert _committed(q1, alive, 959, 16, rng)[0].tolist() == [False, True, False]
    # nothing left: every context with prompts keeps one; one without keeps none
    assert _committed(q1, alive, 0, 16, rng).tolist() == [
        [False, True, False], [True, False, False], [False, False, True],
        [False, False, False]]


def stocked(problem: Problem, observations: Sequence[Observation]) -> GroupMeans:
    """The group means of ``observations``, stockpiled."""
    groups = GroupMeans(problem)
    groups.update(observations)
    return groups


def test_separation_at_one_completion_is_a_one_way_analysis_of_variance() -> None:
    """Against scipy's f_oneway, fed from the completions themselves: per context, each group's
    mean utility of one completion (its task value less the cost weight 0.5 x its cost) is a
    sample, the prompts alive in the context the factor; a context is separated where the
    p-value is below the level. Groups of 4, 2, 3 and 4 completions; prompt p costs 0.1 p."""
    from scipy.stats import f_oneway

    rng = np.random.default_rng(7)
    weights = [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    grid = ContextGrid.product([Objective("a"), Objective("b")], weights, {"priced": 0.5})
    problem = Problem("anova", "bon", ("p0", "p1", "p2", "p3"), 8, grid,
                      CostObjective("cost", 1.0))
    obs = []
    for p, (count, n, shift) in enumerate([(5, 4, 0.0), (3, 2, 0.3), (6, 3, 0.1), (4, 4, 0.2)]):
        scores = np.full((count, n, 3), 0.1 * p)
        scores[..., :2] = shift * np.array([1, 0.2]) + rng.normal(0, 0.3, (count, n, 2))
        obs.append(Observation(p, n, np.arange(count, dtype=np.int64) + 100 * p, scores))
    alive = np.array([[True, True, True, True], [True, False, True, True],
                      [False, True, False, True]])
    pvalue = [f_oneway(*[(o.scores[..., :2] @ np.array(w) - 0.5 * o.scores[..., 2]).mean(axis=1)
                         for o in obs if alive[c, o.prompt]]).pvalue
              for c, w in enumerate(weights)]
    # the contexts' p-values lie apart (0.74, 0.43 and 0.09), so the levels split them
    assert [round(float(v), 3) for v in pvalue] == [0.737, 0.434, 0.091]
    for level, expected in [(0.05, [False] * 3), (0.1, [False, False, True]),
                            (0.5, [False, True, True]), (0.8, [True] * 3)]:
        assert [bool(v < level) for v in pvalue] == expected
        assert separated_at_one(stocked(problem, obs), alive, level).tolist() == expected


def test_separation_at_one_completion_by_hand() -> None:
    """Groups of 2, one objective, no cost: a group [v, v] has mean v."""
    problem = bon_problem(3, 4)

    def group(p: int, values: Sequence[float]) -> Observation:
        scores = np.zeros((len(values), 2, 2))
        scores[..., 0] = np.asarray(values, dtype=float)[:, None]
        return Observation(p, 2, np.arange(len(values), dtype=np.int64), scores)

    def separated(groups: list[Observation], alive: Sequence[bool]) -> bool:
        return bool(separated_at_one(stocked(problem, groups), np.array([alive]))[0])

    apart = [group(0, [0.1, 0.1]), group(1, [0.5, 0.5]), group(2, [0.1, 0.1])]
    # alike within each prompt and apart between: F infinite, separated at any level
    assert separated(apart, [True, True, False])
    # ... but not when the two alive prompts are the alike ones (F = 0 / 0)
    assert not separated(apart, [True, False, True])
    # an alive prompt without groups is no part of it
    assert separated(apart[:2], [True, True, True])
    # one alive prompt, or one group per prompt (no degrees of freedom within), is never apart
    assert not separated(apart, [False, True, False])
    assert not separated([group(0, [0.1]), group(1, [0.9])], [True, True, False])
    # by hand: prompt 0's groups 0.0 and 0.2, prompt 1's 0.4 and 0.6; grand mean 0.3,
    # between = 2 (0.2^2) + 2 (0.2^2) = 0.16 on 1 degree of freedom, within = 4 x 0.01 =
    # 0.04 on 2: F = 0.16 / 0.02 = 8, whose upper tail on (1, 2) is 0.1056
    pair = [group(0, [0.0, 0.2]), group(1, [0.4, 0.6])]
    alive = np.array([[True, True, False]])
    assert separated_at_one(stocked(problem, pair), alive, 0.106)[0]
    assert not separated_at_one(stocked(problem, pair), alive, 0.105)[0]
    # the default level, 5%: not these, but groups 0.0, 0.1 and 0.4, 0.5 (within 0.01 on 2,
    # F = 0.16 / 0.005 = 32, tail 0.0299), which 1% would not separate
    assert SEPARATE_LEVEL == 0.05 and not separated_at_one(stocked(problem, pair), alive)[0]
    closer = [group(0, [0.0, 0.1]), group(1, [0.4, 0.5])]
    assert separated_at_one(stocked(problem, closer), alive)[0]
    assert not separated_at_one(stocked(problem, closer), alive, 0.01)[0]
    # equal prompts whose means differ by rounding alone (0.1 three times against twice; 0.3
    # less a cost, five groups against seven) are not apart, though nothing varies within
    assert not separated([group(0, [0.1] * 3), group(1, [0.1] * 2)], [True, True, False])
    priced = Problem("anova", "bon", ("p0", "p1"), 4,
                     ContextGrid.product([Objective("a")], [(1.0,)], {"priced": 1.0}),
                     CostObjective("cost", 1.0))
    costly = [Observation(p, 2, np.arange(m, dtype=np.int64), np.tile([0.3, 0.0123], (m, 2, 1)))
              for p, m in ((0, 5), (1, 7))]
    assert not separated_at_one(stocked(priced, costly), np.array([[True, True]]))[0]


def test_majority_voting_neither_commits_nor_checks_a_slope() -> None:
    """Both rules are Best-of-N's: majority voting with blocks at a budget that would commit
    a Best-of-N context keeps its survivors, and its validation has no slope check."""
    env, train, _ = run_queries("math", 0, 0, 0.2)
    for decide in ("blocks", "validate"):
        oracle, rng = run_oracle(env, train, "psst-auto", 1000, 0, 0)
        trace = PSSTAuto(decide=decide)(env.problem, oracle, 1000, rng).trace
        info = trace.info
        assert "committed" not in info and "slope" not in info["estimator"]
        # PSST's first round pulls every survivor of every context: none was dropped
        first = next(r for r in trace.rounds if r.round == 1)
        assert {p for p, _, _ in first.pulls} == {p for s in info["screened_prompts"]
                                                   for p in s}
        assert all(len(s) == 2 for s in info["screened_prompts"])


def test_psst_auto_commits_to_the_prompt_that_blocks_rank_first_at_one() -> None:
    """The misspecified world (blocks decide) at T = 2,000, keep 4: one screening round of at
    most 1,000, and the rest pays about 62 blocks of 16, fewer than 30 for each of 3 or 4
    survivors (a context keeps 2 to 4: the union of two rankings). Such a context keeps the
    prompt of highest mean value of one completion in the screening's groups (computed here
    from them), and PSST pulls no other for it."""
    oracle = FeatureOracle(False, 2000, 3)
    recorder = Recorder(oracle)
    result = PSSTAuto(keep=4)(oracle.problem, recorder, 2000, np.random.default_rng(3))
    assert result.trace.info["estimator"]["choice"] == "blocks"
    screening = [o for o in recorder.observations if o.n == 4]
    weights = oracle.problem.grid.weights  # [C, 2]
    value = np.full((weights.shape[0], oracle.problem.n_prompts), -np.inf)
    for p in range(oracle.problem.n_prompts):
        s = np.concatenate([o.scores[..., :2].reshape(-1, 2) for o in screening
                            if o.prompt == p])
        value[:, p] = (s @ weights.T).mean(axis=0)
    survivors = result.trace.info["screened_prompts"]
    left = 2000 - sum(r.spent for r in result.trace.rounds if r.round < 0)
    commits = [len(alive) > 1 and left / 16 < 30 * len(alive) for alive in survivors]
    assert any(commits)
    expected = [max(alive, key=lambda p: value[c, p]) if commit else None
                for c, (alive, commit) in enumerate(zip(survivors, commits, strict=True))]
    assert result.trace.info["committed"] == expected
    decided = {p for r in result.trace.rounds if r.round >= 1 for p, _, _ in r.pulls}
    kept = [[p] if p is not None else alive for p, alive in zip(expected, survivors,
                                                                  strict=True)]
    assert decided <= {p for k in kept for p in k}
    assert all(c.prompt in k for c, k in zip(result.choices, kept, strict=True))


def test_the_level_is_5_percent_unless_set() -> None:
    assert level_for(None) == MODEL_LEVEL == 0.05
    assert level_for(0.2) == 0.2
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(InputError, match=f"level={bad} must lie strictly between 0 and 1"):
            PSSTAuto(level=bad)


@pytest.mark.parametrize("decide", ["model", "blocks"])
def test_a_fixed_estimator_skips_the_validation(decide: str) -> None:
    oracle = FeatureOracle(False, 6000, 0)
    result = PSSTAuto(decide=decide)(oracle.problem, oracle, 6000, np.random.default_rng(0))
    assert result.trace.info["estimator"] == {"choice": decide,
                                              "reason": f"{decide}: set by decide="}
    # the screening ranks as the fixed estimator would: the model alone, or the union of
    # both rankings (the default of Best-of-N, without a validation)
    assert set(result.trace.info["screening_ranked_by"]) == {"model" if decide == "model"
                                                             else "union"}
    first = next(r for r in result.trace.rounds if r.round == 1)
    assert {n for _, n, _ in first.pulls} == ({4} if decide == "model" else {16})


@pytest.mark.parametrize("env_name", ["commonsenseqa", "helpful-harmless-smollm2"])
@pytest.mark.parametrize("decide", ["model", "blocks"])
def test_the_reports_estimator_is_the_one_that_decided(env_name: str, decide: str) -> None:
    # whichever estimator decides, on either aggregator, the report's estimator (named by the
    # trace) fed every observation gives back the learner's q_hat
    env, train, _ = run_queries(env_name, 0, 1, 0.2)
    oracle, rng = run_oracle(env, train, "psst-auto", 800, 0, 1)
    recorder = Recorder(oracle)
    learner = PSSTAuto(decide=decide)
    result = learner(env.problem, recorder, 800, rng)
    name, make = estimator_for(learner, env.problem, result.trace.info)
    assert name.startswith(decide)
    table = arm_table(make, env.problem, recorder.observations)
    for i, ch in enumerate(result.choices):
        assert table.q[i, ch.prompt, ch.n - 1] == pytest.approx(ch.q_hat, abs=1e-12)


def test_best_of_n_with_latency_contexts_is_learned_by_the_model() -> None:
    # blocks do not price latency: the model screens and decides, without a validation, and
    # the report names it even without the run's trace
    env = get_environment("synth-categorical", seed=0).with_latency(SyntheticLatency())
    key = env.problem.grid.keys[0]
    env = env.with_contexts([key, key + ",latency=0.01"])
    oracle = SimulatedOracle(env, np.arange(env.n_queries), 3000, np.random.default_rng(1))
    result = PSSTAuto()(env.problem, oracle, 3000, np.random.default_rng(0))
    info = result.trace.info
    assert info["estimator"]["choice"] == "model"
    assert "do not price latency" in info["estimator"]["reason"]
    assert set(info["screening_ranked_by"]) == {"model"}
    assert estimator_for(PSSTAuto(), env.problem)[0].startswith("model")
    assert result.trace.completions_used <= 3000
