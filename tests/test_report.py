"""The report's estimates (iapo.report): quality, cost and completions paid by hand, the
learner's own q_hat reproduced, the bootstrap's resampling and its verdict by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from iapo.bench.runner import run_oracle, run_queries
from iapo.envs.synthetic import synth_bernoulli
from iapo.errors import InputError
from iapo.estimate import QTable
from iapo.learners import PSSTAuto, get_learner
from iapo.problem import Choice, ContextGrid, CostObjective, Objective, Problem, Stopping
from iapo.pulls import Observation
from iapo.report import (
    Recorder,
    arm_table,
    assess,
    bootstrap,
    completion_cost,
    confidence,
    estimator_for,
    resample,
)
from test_posterior import problem_of, votes_of


def mv_problem(stop: str = "all") -> Problem:
    grid = ContextGrid.product([Objective("correct", 0.0, 1.0)], [(1.0,)],
                               {"low": 0.0, "high": 1.0})
    return Problem("t", "mv", ("a", "b"), 3, grid, CostObjective("cost", 0.1), Stopping(stop))


def two_groups() -> Observation:
    """Prompt 0, two groups of 3 answers (gold = category 0), each completion costing 0.1."""
    return Observation(0, 3, np.array([4, 9]), np.full((2, 3, 2), [1.0, 0.1]),
                       np.array([[0, 0, 1], [1, 2, 1]], dtype=np.int16),
                       np.zeros(2, dtype=np.int16))


@pytest.mark.parametrize("stop", ["all", "decided"])
def test_quality_cost_and_completions_of_the_blocks_by_hand(stop: str) -> None:
    table = arm_table(lambda pr: QTable(pr), mv_problem(stop), [two_groups()])
    # N = 1: six blocks, two of them gold. N = 2: [0, 0] right, [1, 2] a tie without the
    # gold. N = 3: [0, 0, 1] right, [1, 2, 1] wrong.
    assert table.quality[:, 0].ravel().tolist() == pytest.approx([1 / 3, 0.5, 0.5] * 2)
    # decided (wave 1): [0, 0] needs both; [0, 0, 1] is decided after 2 (margin 2 > 1 left),
    # [1, 2, 1] needs all 3
    paid = [1.0, 2.0, 2.5] if stop == "decided" else [1.0, 2.0, 3.0]
    assert table.paid[0].tolist() == pytest.approx(paid)
    assert table.cost[0].tolist() == pytest.approx([0.1 * k for k in paid])
    # context low (cost weight 0): Q is the quality; high (1): less the cost
    assert table.q[0, 0].tolist() == pytest.approx([1 / 3, 0.5, 0.5])
    assert table.q[1, 0].tolist() == pytest.approx([1 / 3 - 0.1, 0.5 - 0.2,
                                                    0.5 - 0.1 * paid[2]])
    assert np.isnan(table.q[:, 1]).all()  # prompt 1 never observed


@pytest.mark.parametrize("env_name", ["commonsenseqa", "helpful-harmless-smollm2",
                                      "synth-bernoulli"])
@pytest.mark.parametrize("learner", ["psst-auto", "psst", "psst-model", "uniform", "egreedy",
                                     "psst-k4"])
def test_the_learners_estimator_fed_every_observation_gives_its_q_hat(env_name: str,
                                                                      learner: str) -> None:
    env, train, _ = run_queries(env_name, 0, 1, 0.2)
    oracle, rng = run_oracle(env, train, learner, 800, 0, 1)
    recorder = Recorder(oracle)
    spec = get_learner(learner)
    result = spec.learner(env.problem, recorder, 800, rng)
    assert sum(o.n * o.count for o in recorder.observations) == oracle.ledger.spent
    if learner == "psst-auto" and env_name == "synth-bernoulli":  # binary answers
        assert result.trace.info["prior"] == "fitted"
    _, make = estimator_for(spec.learner, env.problem, result.trace.info)
    table = arm_table(make, env.problem, recorder.observations)
    for i, ch in enumerate(result.choices):
        assert table.q[i, ch.prompt, ch.n - 1] == pytest.approx(ch.q_hat, abs=1e-12)


def test_the_estimator_named_for_each_learner() -> None:
    mv = mv_problem()
    assert estimator_for(get_learner("psst-model").learner, mv)[0] == "model (alpha = 0.5)"
    assert estimator_for(PSSTAuto(prior="fixed"), mv)[0] == "model (alpha = 0.5)"
    # psst-auto's majority-voting prior (fitted by default): as its run's trace records it
    fitted = get_learner("psst-auto").learner
    assert estimator_for(fitted, mv)[0] == (
        "model (prior fitted where the answers are binary, else alpha = 0.5)")
    assert estimator_for(fitted, mv, {"prior": "fitted"})[0] == (
        "model (prior fitted to the prompts' binary answers)")
    assert estimator_for(fitted, mv, {"prior": "fixed"})[0] == "model (alpha = 0.5)"
    # with the trace's reason, the report says why the prior was not fitted
    assert estimator_for(fitted, mv, {"prior": "fixed", "prior_reason": "some query was "
                                      "answered wrong in two ways"})[0] == (
        "model (alpha = 0.5; prior not fitted because some query was answered wrong in two "
        "ways)")
    # ... where the run asked for the fitted prior: a fixed one needs no reason
    assert estimator_for(PSSTAuto(prior="fixed"), mv, {"prior": "fixed", "prior_reason": "x"}
                         )[0] == "model (alpha = 0.5)"
    assert estimator_for(get_learner("psst").learner, mv)[0] == "blocks"
    assert estimator_for(get_learner("psst:subsets").learner, mv)[0] == "subsets"
    # psst-auto: the estimator its validation chose, as its trace records it
    auto = get_learner("psst-auto").learner
    bon = Problem("t", "bon", ("a", "b"), 3, mv.grid, CostObjective("cost", 0.1))
    assert estimator_for(auto, bon)[0] == "blocks"
    assert estimator_for(auto, bon, {"estimator": {"choice": "model"}})[0] == "model (alpha = 0.5)"
    assert estimator_for(auto, mv, {"estimator": {"choice": "blocks"}})[0] == "blocks"


def test_a_resample_repeats_each_query_with_all_its_groups_under_new_ids() -> None:
    a = Observation(0, 1, np.array([3, 5, 3]), np.arange(6.0).reshape(3, 1, 2))
    b = Observation(1, 1, np.array([5]), np.full((1, 1, 2), 9.0))
    groups = {(0, 1): a, (1, 1): b}
    # query 3 twice, query 5 not at all
    out = resample(groups, np.array([3, 5]), np.array([2, 0]))
    assert out[0].queries.tolist() == [0, 1, 0, 1]  # copies 0 and 1 of query 3, both groups
    assert out[0].scores[:, 0, 0].tolist() == [0.0, 0.0, 4.0, 4.0]
    assert out[1].count == 0
    # query 5 once, query 3 once: ids 0 (query 3) and 1 (query 5), shared by the prompts
    out = resample(groups, np.array([3, 5]), np.array([1, 1]))
    assert out[0].queries.tolist() == [0, 1, 0] and out[1].queries.tolist() == [1]


def test_the_bootstrap_verdict_by_hand() -> None:
    # B = 4 resamples, one context, two arms (prompts 0 and 1 at N = 1)
    draws = np.array([[0.50, 0.55], [0.60, 0.50], [0.40, 0.45], [0.70, 0.70]])
    conf = confidence(draws.reshape(4, 1, 2, 1), [Choice(0, 1, 0.55, 1)], margins=(0.01, 0.06))
    # arm 0 is the highest in resamples 1 and 3 (a tie counts), arm 1 in 0, 2 and 3
    assert conf.p_best[0, :, 0].tolist() == [0.5, 0.75]
    # within 0.01 of the highest: resamples 1 and 3; within 0.06: all four
    assert conf.p_within[:, 0].tolist() == [0.5, 1.0]
    # numpy's linear percentile of [0.4, 0.5, 0.6, 0.7] at 2.5%: 0.4 + 0.075 x 0.1
    assert conf.low[0, 0, 0] == pytest.approx(0.4075)
    assert conf.high[0, 0, 0] == pytest.approx(0.7 - 0.075 * 0.1)


def test_the_bootstrap_of_one_query_has_no_spread_and_of_many_covers_the_estimate() -> None:
    problem = mv_problem()
    one = [Observation(0, 3, np.array([4, 4]), np.full((2, 3, 2), [1.0, 0.1]),
                       np.array([[0, 0, 1], [1, 2, 1]], dtype=np.int16),
                       np.zeros(2, dtype=np.int16))]
    draws, per_prompt = bootstrap(lambda pr: QTable(pr), problem, one,
                                  np.random.default_rng(0), rounds=20)
    assert per_prompt.tolist() == [1, 0]
    assert np.ptp(draws[:, 0, 0, 0]) == 0.0  # every resample is the one query, twice
    rng = np.random.default_rng(1)
    labels = (rng.random((200, 3)) < 0.4).astype(np.int16)  # gold (0) 60% of the time
    many = [Observation(0, 3, np.arange(200), np.full((200, 3, 2), [1.0, 0.1]), labels,
                        np.zeros(200, dtype=np.int16))]
    draws, _ = bootstrap(lambda pr: QTable(pr), problem, many, np.random.default_rng(2),
                         rounds=200)
    q = arm_table(lambda pr: QTable(pr), problem, many).q
    # the bootstrap mean of a mean is the mean; its spread is the standard error
    assert draws[:, 0, 0, 0].mean() == pytest.approx(q[0, 0, 0], abs=0.01)
    se = np.sqrt(q[0, 0, 0] * (1 - q[0, 0, 0]) / 600)
    assert draws[:, 0, 0, 0].std() == pytest.approx(se, rel=0.25)


def test_a_context_without_any_estimate_leaves_the_next_ones_judged() -> None:
    draws = np.full((2, 2, 1, 1), np.nan)
    draws[:, 1, 0, 0] = [0.4, 0.6]  # context 0 has no estimate at all
    conf = confidence(draws, [Choice(0, 1, 0.5, 1)] * 2)
    assert np.isnan(conf.p_best[0]).all() and np.isnan(conf.p_within[:, 0]).all()
    assert conf.p_best[1, 0, 0] == 1.0 and conf.p_within[0, 1] == 1.0


def test_the_bootstrap_verdict_of_two_contexts_unseen_arms_and_margin_ties_by_hand() -> None:
    # B = 2 resamples, two contexts, one prompt at N = 1, 2 (n_max = 2) and a second prompt
    # never seen (NaN): it is never the best, and never counts against the chosen arm
    draws = np.full((2, 2, 2, 2), np.nan)
    draws[:, :, 0, 0] = [[0.50, 0.50], [0.25, 0.25]]  # [B, C] of arm (0, 1)
    draws[:, :, 0, 1] = [[0.75, 0.75], [0.25, 0.25]]  # arm (0, 2)
    choices = [Choice(0, None, 0.5, 1), Choice(0, 1, 0.5, 1)]  # context 0: N random
    conf = confidence(draws, choices, margins=(0.25, 0.1))
    assert np.isnan(conf.p_within[:, 0]).all()  # no single arm to judge in context 0
    # context 1, arm (0, 1): 0.50 against the best 0.75 (a tie at margin 0.25 counts), then
    # 0.25 against 0.25
    assert conf.p_within[:, 1].tolist() == [1.0, 0.5]
    assert conf.p_best[1, 0].tolist() == [0.5, 1.0]  # tied in resample 1
    assert conf.p_best[1, 1].tolist() == [0.0, 0.0]  # the unseen prompt
    assert np.isnan(conf.low[1, 1]).all()


def test_groups_of_one_arm_from_several_pulls_are_all_resampled() -> None:
    first = Observation(0, 1, np.array([3]), np.full((1, 1, 2), 1.0))
    second = Observation(0, 1, np.array([5]), np.full((1, 1, 2), 2.0))
    draws, per_prompt = bootstrap(lambda pr: QTable(pr), mv_like_bon_problem(),
                                  [first, second], np.random.default_rng(0), rounds=50)
    assert per_prompt.tolist() == [2, 0]
    # Q of a resample is the mean of 1.0 and 2.0 weighted by how often each query was drawn
    assert set(np.round(draws[:, 0, 0, 0], 9)) == {1.0, 1.5, 2.0}


def mv_like_bon_problem() -> Problem:
    """Best-of-N, one objective in [0, 2], cost weight 0 (Q is the best score)."""
    grid = ContextGrid.product([Objective("s", 0.0, 2.0)], [(1.0,)], {"free": 0.0})
    return Problem("b", "bon", ("a", "b"), 1, grid, CostObjective("cost", 1.0))


def test_quality_and_cost_of_best_of_n_with_two_objectives_and_two_weightings() -> None:
    grid = ContextGrid.product([Objective("x", 0.0, 1.0), Objective("y", 0.0, 1.0)],
                               [(1.0, 0.0), (0.0, 1.0)], {"mid": 0.5})
    problem = Problem("b", "bon", ("a",), 2, grid, CostObjective("cost", 1.0))
    # one group of two completions: (x, y, cost) = (1, 0, 0.1) and (0, 0.5, 0.3)
    obs = Observation(0, 2, np.array([0]), np.array([[[1.0, 0.0, 0.1], [0.0, 0.5, 0.3]]]))
    table = arm_table(lambda pr: QTable(pr), problem, [obs])
    # N = 1: the mean of the two completions' weighted scores; N = 2: the better one
    assert table.quality[:, 0].tolist() == [pytest.approx([0.5, 1.0]),
                                            pytest.approx([0.25, 0.5])]
    assert table.paid[0].tolist() == pytest.approx([1.0, 2.0])
    assert table.cost[0].tolist() == pytest.approx([0.2, 0.4])  # mean cost 0.2 per completion
    cw = problem.grid.cost_weights
    assert table.q[:, 0, 1].tolist() == pytest.approx(
        (table.quality[:, 0, 1] - cw * 0.4).tolist())


def test_the_estimator_takes_the_learners_own_alpha_and_estimator() -> None:
    env, train, _ = run_queries("commonsenseqa", 0, 2, 0.2)
    for spec in (get_learner("psst-model").configure(alpha=2.0), get_learner("psst:subsets")):
        oracle, rng = run_oracle(env, train, spec.name, 600, 0, 2)
        recorder = Recorder(oracle)
        result = spec.learner(env.problem, recorder, 600, rng)
        name, make = estimator_for(spec.learner, env.problem)
        assert name in ("model (alpha = 2.0)", "subsets")
        table = arm_table(make, env.problem, recorder.observations)
        for i, ch in enumerate(result.choices):
            assert table.q[i, ch.prompt, ch.n - 1] == pytest.approx(ch.q_hat, abs=1e-12)
        # not the blocks: the two tables differ where groups are larger than N
        blocks = arm_table(lambda pr: QTable(pr), env.problem, recorder.observations).q
        seen = np.isfinite(blocks)
        assert np.abs(table.q[seen] - blocks[seen]).max() > 1e-6


def test_q_values_within_an_ulp_are_one_tie_and_a_real_gap_is_not() -> None:
    """Majority voting between two answers gives an even N exactly the Q of N - 1; floating
    point may miss that by an ulp, which must not decide which arm is best."""
    base = 0.7
    draws = np.array([[[[base, base + 1e-15, base - 1e-6]]]])  # [B=1, C=1, P=1, N=3]
    conf = confidence(draws, [Choice(0, 1, base, 1)], margins=(0.0,))
    np.testing.assert_array_equal(conf.p_best[0, 0], [1.0, 1.0, 0.0])
    assert conf.p_within[0, 0] == 1.0  # within margin 0 of the best: the tie
    gap = np.array([[[[base, base + 1e-9]]]])
    assert confidence(gap, [Choice(0, 1, base, 1)]).p_best[0, 0].tolist() == [0.0, 1.0]


def test_completion_cost_is_the_mean_recorded_cost_of_each_prompt_s_completions() -> None:
    # two objectives, then the cost, last
    a = Observation(0, 2, np.array([1, 2]), np.array([[[1.0, 4.0, 0.1], [0.0, 3.0, 0.3]],
                                                     [[1.0, 2.0, 0.2], [1.0, 1.0, 0.2]]]))
    b = Observation(0, 1, np.array([3]), np.array([[[0.0, 5.0, 0.6]]]))
    problem = synth_bernoulli(0, n_prompts=2, n_queries=5, n_max=2).problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt never drawn is NaN, without a warning
        got = completion_cost(problem, [a, b])
    assert got[0] == pytest.approx((0.1 + 0.3 + 0.2 + 0.2 + 0.6) / 5)
    assert np.isnan(got[1])


def test_assess_uses_the_posterior_only_where_it_applies() -> None:
    problem = problem_of(2, 3)
    _, make = estimator_for(None, problem)
    binary = [votes_of(0, [1, 2, 0], 2), votes_of(1, [2, 2], 2, first_query=3)]
    choices = [Choice(0, 1, 0.0, 1)] * 3
    rng = np.random.default_rng(0)
    # too few queries answered wrong twice to show binary answers by themselves: the bootstrap,
    # unless the posterior is asked for by name; 30 such queries more show them
    assert assess(make, problem, binary, choices, rng).method == "bootstrap"
    assert assess(make, problem, binary, choices, rng, method="posterior").method == (
        "posterior")
    shown = [*binary, votes_of(0, [0] * 30, 2, first_query=100)]
    assert assess(make, problem, shown, choices, rng).method == "posterior"
    three = [*binary, votes_of(1, [0], 2, first_query=0, wrong=2)]  # query 0: two wrong answers
    assert assess(make, problem, three, choices, rng).method == "bootstrap"
    with pytest.raises(InputError, match="one wrong answer per query"):
        assess(make, problem, three, choices, rng, method="posterior")
    with pytest.raises(InputError, match="unknown"):
        assess(make, problem, binary, choices, rng, method="magic")
    forced = assess(make, problem, binary, choices, rng, margins=(0.0, 0.5),
                    method="bootstrap")
    assert forced.method == "bootstrap" and forced.margins == (0.0, 0.5)
    assert assess(make, problem, binary, choices, rng, margins=(0.2,)).margins == (0.2,)
    assert np.isfinite(assess(make, problem, binary, choices, rng).p_best[0, 0, 0])
