"""The model-based estimator: the Polya-urn MV credit against enumeration, hand-worked model
estimates, and the psst-model learners."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from scipy.special import gammaln

from iapo.envs import MVEnvironment
from iapo.exact import mv_credit_probability, mv_polya_credit
from iapo.learners import get_learner
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, CostObjective, Objective, Problem
from iapo.pulls import Observation


def dirichlet_multinomial(k: tuple[int, ...], a: list[float]) -> float:
    n, big_a = sum(k), sum(a)
    return math.exp(gammaln(n + 1) + gammaln(big_a) - gammaln(big_a + n)
                    + sum(gammaln(ai + ki) - gammaln(ai) - gammaln(ki + 1)
                          for ai, ki in zip(a, k, strict=True)))


def brute_polya(a: list[float], n: int) -> float:
    total = 0.0
    for k in itertools.product(range(n + 1), repeat=len(a)):
        if sum(k) != n:
            continue
        top = max(k)
        if k[0] == top:
            total += dirichlet_multinomial(k, a) / sum(x == top for x in k)
    return total


@pytest.mark.parametrize("a", [[2.5, 0.5, 0.5], [1.0, 3.0], [0.5, 0.5, 0.5, 0.5],
                               [4.2, 1.1, 0.3], [0.7, 2.2, 2.2]])
def test_polya_credit_equals_enumeration(a: list[float]) -> None:
    got = mv_polya_credit([a[0]], [a[1:]], 7)[0]
    want = [brute_polya(a, n) for n in range(1, 8)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_polya_credit_tends_to_the_multinomial_one() -> None:
    q = np.array([0.6, 0.3, 0.1])
    got = mv_polya_credit([q[0] * 1e6], [q[1:] * 1e6], 9)[0]
    np.testing.assert_allclose(got, mv_credit_probability([q], [0], 9)[0], atol=1e-4)


def mv_problem(n_max: int = 4) -> Problem:
    grid = ContextGrid.product([Objective("correct", 0.0, 1.0)], [(1.0,)],
                               {"low": 0.0, "high": 1.0})
    return Problem("t", "mv", ("a", "b"), n_max, grid, CostObjective("cost", 0.1))


def test_mv_model_by_hand() -> None:
    p = mv_problem()
    model = ModelQTable(p, alpha=0.5)
    # prompt 0 on query 3: two answers, both gold (category 0); cost 0.1 each
    model.update([Observation(0, 2, np.array([3]), np.array([[[1.0, 0.1], [1.0, 0.1]]]),
                              np.array([[0, 0]], dtype=np.int16),
                              np.array([0], dtype=np.int16))])
    # posterior: gold 2 + 0.5, one unseen bucket 0.5. Next answer gold: 2.5 / 3.
    # N = 2: both gold 2.5/3 * 3.5/4, one each way 2 * 2.5/3 * 0.5/4 credited 1/2.
    n1 = 2.5 / 3
    n2 = 2.5 / 3 * 3.5 / 4 + 0.5 * 2 * (2.5 / 3) * (0.5 / 4)
    assert model.mean[0, 0, 0] == pytest.approx(n1)
    assert model.mean[0, 0, 1] == pytest.approx(n2)
    assert model.mean[1, 0, 1] == pytest.approx(n2 - 2 * 0.1)  # high: cost weight 1
    assert np.isnan(model.mean[0, 1]).all()  # prompt 1 has no data
    assert model.counts[0].tolist() == [1, 1, 1, 1] and model.counts[1].sum() == 0


def test_mv_model_averages_over_queries_and_pools_answers_of_one_query() -> None:
    p = mv_problem()
    model = ModelQTable(p, alpha=1.0)
    obs = Observation(0, 1, np.array([1, 2, 1]),
                      np.zeros((3, 1, 2)),
                      np.array([[0], [1], [2]], dtype=np.int16), np.array([0, 0, 0], np.int16))
    model.update([obs])
    # query 1: answers 0 (gold) and 2 -> a = (2, 2, unseen 1): P(gold next) = 2/5
    # query 2: answer 1 (not gold) -> a = (gold 1, 2, unseen 1): P(gold next) = 1/4
    assert model.mean[0, 0, 0] == pytest.approx((2 / 5 + 1 / 4) / 2)
    assert model.counts[0, 0] == 2


def test_credit_spread_is_over_queries_by_brute_force() -> None:
    """mv_credit_spread's mean and variance of the per-query credits, against
    :func:`brute_polya` of every query's posterior (alpha 0.5: gold count + 0.5, each wrong
    answer seen + 0.5, one unseen bucket 0.5) and numpy's sample variance."""
    p = mv_problem()
    model = ModelQTable(p, alpha=0.5)
    # prompt 0: query 0 answers [g, g], query 1 [g, w], query 2 [w, w]; prompt 1: query 0 [g]
    labels = np.array([[0, 0], [0, 1], [1, 1]], dtype=np.int16)
    model.update([Observation(0, 2, np.array([0, 1, 2]), np.zeros((3, 2, 2)), labels,
                              np.zeros(3, dtype=np.int16)),
                  Observation(1, 1, np.array([0]), np.zeros((1, 1, 2)),
                              np.array([[0]], dtype=np.int16), np.zeros(1, dtype=np.int16))])
    per_query = np.array([[brute_polya(a, n) for n in range(1, 5)] for a in (
        [2.5, 0.5], [1.5, 1.5, 0.5], [0.5, 2.5, 0.5])])
    mean, var, k = model.mv_credit_spread()
    np.testing.assert_allclose(mean[0], per_query.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(var[0], per_query.var(axis=0, ddof=1), atol=1e-12)
    np.testing.assert_allclose(mean[1], [brute_polya([1.5, 0.5], n) for n in range(1, 5)])
    assert np.isnan(var[1]).all()  # one query: no spread
    assert k.tolist() == [3, 1]
    np.testing.assert_allclose(model.mean[0, 0], mean[0])  # 'low' pays nothing


def test_bon_model_by_hand() -> None:
    grid = ContextGrid.product([Objective("u", 0.0, 1.0)], [(1.0,)], {"only": 0.0})
    p = Problem("b", "bon", ("a",), 3, grid, CostObjective("cost", 1.0))
    model = ModelQTable(p)
    scores = np.array([[[0.2, 0.0], [0.6, 0.0]], [[0.5, 0.0], [0.5, 0.0]]])  # two groups of 2
    model.update([Observation(0, 2, np.array([0, 1]), scores)])
    # group means 0.4 and 0.5 -> 0.45; residuals * sqrt(2): -0.2, 0.2, 0, 0 times 1.4142
    r = np.array([-0.2, 0.2, 0.0, 0.0]) * math.sqrt(2)
    # E[max of n draws from the pooled residuals], by enumerating all 4^n equally likely
    # draws (with replacement)
    for n in (1, 2, 3):
        draws = list(itertools.product(r, repeat=n))
        expect_max = sum(max(d) for d in draws) / len(draws)
        assert model.mean[0, 0, n - 1] == pytest.approx(0.45 + expect_max)
    # by hand: n = 1, the mean residual 0; n = 2, the max is 0.2 sqrt(2) unless neither draw
    # is the 0.2 (9 of 16), then 0 unless both are -0.2 (1 of 16): 0.2 sqrt(2) (7 - 1) / 16
    assert model.mean[0, 0, 0] == pytest.approx(0.45)
    assert model.mean[0, 0, 1] == pytest.approx(0.45 + 0.2 * math.sqrt(2) * 6 / 16)


def test_mixed_problems_are_refused() -> None:
    grid = ContextGrid.product([Objective("c"), Objective("s")], [(0.5, 0.5)], {"x": 0.0})
    p = Problem("m", "mixed", ("a",), 2, grid)
    with pytest.raises(ValueError, match="mixed"):
        ModelQTable(p)


@pytest.mark.parametrize("name", ["psst-model", "psst-model4"])
def test_psst_model_learns_the_easy_problem(name: str) -> None:
    # prompt 0 always right, prompt 1 always wrong; cost 0.1 each, cost weight 1
    probs = np.zeros((2, 10, 2))
    probs[0, :, 0] = 1.0
    probs[1, :, 1] = 1.0
    env = MVEnvironment("sure", probs, np.zeros(10, dtype=np.int16), [0.1, 0.1],
                        {"high": 1.0}, 4, cacheable=False)
    oracle = SimulatedOracle(env, np.arange(10), 200, np.random.default_rng(0))
    result = get_learner(name).learner(env.problem, oracle, 200, np.random.default_rng(1))
    assert (result.choices[0].prompt, result.choices[0].n) == (0, 1)
    assert oracle.ledger.spent == 200
    pulled = {tuple(x[:2]) for r in result.trace.rounds for x in r.pulls}
    group = 2 if name == "psst-model" else 4
    assert all(n <= group for _, n in pulled)


def test_the_prior_biases_a_sure_thing_down() -> None:
    """The model's bias, shown: a prompt that is always right is estimated below 1 at N = 1
    (the prior keeps mass on answers not seen yet), and more so with fewer answers per query;
    a larger N looks better than it is (with a cost of 0.01 it would be chosen wrongly)."""
    probs = np.zeros((1, 10, 2))
    probs[0, :, 0] = 1.0
    env = MVEnvironment("sure1", probs, np.zeros(10, dtype=np.int16), [0.01], {"low": 0.0}, 4,
                        cacheable=False)
    from iapo.pulls import Pull

    est = []
    for per_query in (2, 4):
        oracle = SimulatedOracle(env, np.arange(10), 10**6, np.random.default_rng(0))
        model = ModelQTable(env.problem)
        model.update(oracle.pull([Pull(0, per_query, 10)]))
        est.append(model.mean[0, 0])
    # with every query answered (g, g): a = (2.5, unseen 0.5) -> 2.5 / 3 at N = 1
    assert est[0][0] < est[1][0] < 1.0
    assert est[0][2] > est[0][0]  # N = 3 looks better than N = 1, though both are exactly 1


def test_psst_model_runs_through_the_live_oracle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The model-based learner needs nothing a live oracle lacks (labels per query, gold)."""
    from iapo.live.oracle import LiveOracle, TaskRuntime
    from iapo.live.store import CompletionStore
    from iapo.live.task import load_records, load_task
    from live_helpers import ScriptedServer
    from test_live_faults import write_task

    with ScriptedServer(answer="The answer is (A).") as srv:
        task = load_task(write_task(tmp_path, srv.base_url))
        runtime = TaskRuntime(task, load_records(task.data_path))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, np.arange(6), 24, np.random.default_rng(0))
            result = get_learner("psst-model").learner(runtime.problem, oracle, 24,
                                                   np.random.default_rng(1))
            assert oracle.ledger.spent == 24 == store.count() == len(srv.requests)
            # every answer is gold "A": the model's credit is high for both prompts
            assert all(ch.q_hat > 0.5 for ch in result.choices)


# ------------------------------------------------------------------ the fitted prior (MV)
def binary_env(theta: np.ndarray, cost: list[float], name: str = "binary") -> MVEnvironment:
    """Prompts [P] x queries [X] right with chance theta, else one wrong answer; cost weights
    0 ("low") and 1 ("high")."""
    probs = np.stack([theta, 1.0 - theta], axis=-1)
    return MVEnvironment(name, probs, np.zeros(theta.shape[1], dtype=np.int16), cost,
                         {"low": 0.0, "high": 1.0}, 31, cacheable=False)


def test_the_fitted_prior_reads_binary_votes_as_the_posterior_does() -> None:
    """ModelQTable.binary counts each prompt's right answers per query from its vote table as
    iapo.posterior.binary_votes does from the observations; the fitted model's Q is the
    posterior's expected credit, weighted and less the cost, by hand."""
    from iapo import posterior
    from iapo.pulls import Pull

    rng = np.random.default_rng(2)
    env = binary_env(rng.uniform(0.2, 0.9, (3, 40)), [0.01, 0.02, 0.03])
    oracle = SimulatedOracle(env, np.arange(40), 10**6, np.random.default_rng(3))
    obs = oracle.pull([Pull(0, 2, 30), Pull(1, 3, 12), Pull(0, 2, 10)])  # prompt 2: none
    model = ModelQTable(env.problem, prior="fitted", evidence=0)  # few queries: none asked
    model.update(obs)
    got, want = model.binary(), posterior.binary_votes(env.problem, obs, evidence=0)
    assert got is not None and want is not None
    for (k, n), (k2, n2) in zip(got, want, strict=True):
        assert sorted(zip(k.tolist(), n.tolist(), strict=True)) == sorted(
            zip(k2.tolist(), n2.tolist(), strict=True))
    credit, _ = posterior.expected_credit(env.problem, want)
    q = model.mean
    assert model.fitted
    n = np.arange(1, 32)
    cost = np.array([0.01, 0.02])  # each prompt's cost per completion
    for c, w in enumerate((0.0, 1.0)):
        np.testing.assert_allclose(q[c, :2], credit[:2] - w * cost[:2, None] * n, atol=1e-12)
    assert np.isnan(q[:, 2]).all()


def test_the_fixed_prior_stands_where_a_query_has_two_wrong_answers() -> None:
    """A query answered wrong in two ways is not binary: the fitted model's Q is the fixed
    Dirichlet's to the last digit, and says so (one query: no evidence asked)."""
    p = mv_problem()
    obs = [Observation(0, 2, np.array([1]), np.zeros((1, 2, 2)),
                       np.array([[0, 1]], dtype=np.int16), np.array([0], dtype=np.int16)),
           Observation(1, 2, np.array([1]), np.zeros((1, 2, 2)),
                       np.array([[2, 2]], dtype=np.int16), np.array([0], dtype=np.int16))]
    fitted, fixed = ModelQTable(p, prior="fitted", evidence=0), ModelQTable(p)
    fitted.update(obs)
    fixed.update(obs)
    assert fitted.binary() is None
    np.testing.assert_array_equal(fitted.mean, fixed.mean)
    assert not fitted.fitted
    # one wrong answer per query, over every prompt, is binary
    binary = ModelQTable(p, prior="fitted", evidence=0)
    binary.update(obs[:1])
    assert binary.binary() is not None
    _ = binary.mean
    assert binary.fitted
    with pytest.raises(ValueError, match="prior='flat' is unknown"):
        ModelQTable(p, prior="flat")


def test_binary_answers_need_evidence_enough_queries_answered_wrong_twice() -> None:
    """By hand: queries 0..28 each get two answers, both the same wrong one, from prompt 0;
    query 100 gets one wrong answer from each prompt; queries 300..339 get one right and one
    wrong answer or two right ones (two answers, but not two wrong ones: no evidence). 29
    queries with two or more wrong answers are one short of BINARY_EVIDENCE (30): the fixed
    prior stands. Query 100's two
    wrong answers (one per prompt, the same) make 30: binary. A further query answered wrong
    in two different ways, after that: not binary again."""
    from iapo.posterior import BINARY_EVIDENCE

    assert BINARY_EVIDENCE == 30
    p = mv_problem()

    def obs(prompt: int, queries: list[int], labels: list[list[int]]) -> Observation:
        return Observation(prompt, 2 if len(labels[0]) == 2 else 1, np.array(queries),
                           np.zeros((len(queries), len(labels[0]), 2)),
                           np.array(labels, dtype=np.int16),
                           np.zeros(len(queries), dtype=np.int16))

    model = ModelQTable(p, prior="fitted")
    model.update([obs(0, list(range(29)), [[1, 1]] * 29), obs(0, [100], [[1]]),
                  obs(1, list(range(300, 340)), [[0, 1], [0, 0]] * 20)])
    assert model.binary() is None
    _ = model.mean
    assert model.prior_used == "fixed"
    assert model.prior_reason == ("29 queries answered wrong twice or more; 30 are needed to "
                                  "show that the answers are binary")
    model.update([obs(1, [100], [[1]])])
    votes = model.binary()
    assert votes is not None
    assert model.binary_why()[1] == ("every query's answers were its right answer or one "
                                     "wrong answer, shown by 30 queries answered wrong twice "
                                     "or more")
    assert sorted(votes[0][0].tolist()) == [0] * 30 and sorted(votes[0][1].tolist()) == (
        [1] + [2] * 29)
    assert sorted(votes[1][0].tolist()) == [0] + [1] * 20 + [2] * 20
    assert votes[1][1].tolist().count(2) == 40
    _ = model.mean
    assert model.prior_used == "fitted"
    model.update([obs(1, [200], [[1, 2]])])
    assert model.binary() is None
    _ = model.mean
    assert model.prior_reason == "some query was answered wrong in two ways"
    assert ModelQTable(p, prior="fitted").binary_why() == (None, "no answers yet")


def test_the_model_fits_its_prior_at_once_where_the_problem_declares_two_answers() -> None:
    """With Problem.answers = 2, one query answered wrong once and one answered right twice
    are binary at once (no query answered wrong twice): the prior is fitted; the same answers
    to a problem that declares nothing keep the fixed prior."""
    p = mv_problem()

    def obs(prompt: int, query: int, labels: list[int]) -> Observation:
        return Observation(prompt, len(labels), np.array([query]),
                           np.zeros((1, len(labels), 2)), np.array([labels], dtype=np.int16),
                           np.zeros(1, dtype=np.int16))

    answers = [obs(0, 0, [1]), obs(1, 1, [0, 0])]
    for declared, prior, why in [
            (2, "fitted", "every query's answers were its right answer or one wrong answer, "
             "as the task declares"),
            (None, "fixed", "0 queries answered wrong twice or more; 30 are needed to show that "
             "the answers are binary")]:
        model = ModelQTable(dataclasses.replace(p, answers=declared), prior="fitted")
        model.update(answers)
        _ = model.mean
        assert (model.prior_used, model.prior_reason) == (prior, why)
    # a wrong answer that is "no answer" under the abstain rule is no binary answer, declared
    # or not
    abstained = Observation(1, 1, np.array([2]), np.zeros((1, 1, 2)),
                            np.array([[1]], dtype=np.int16), np.zeros(1, dtype=np.int16),
                            no_answer=np.array([1], dtype=np.int16))
    no_answer = ('some query\'s wrong answer was "no answer", which the abstain rule does not '
                 "count as an answer")
    for declared in (2, None):  # before the evidence: more answers cannot undo it
        model = ModelQTable(dataclasses.replace(p, answers=declared), prior="fitted")
        model.update([*answers, abstained])
        assert model.binary_why() == (None, no_answer)
    # one query answered wrong twice: "query"; no evidence asked; the fixed prior asked for
    model = ModelQTable(p, prior="fitted")
    model.update([obs(0, 5, [1, 1])])
    assert model.binary_why()[1] == ("1 query answered wrong twice or more; 30 are needed to "
                                     "show that the answers are binary")
    model = ModelQTable(p, prior="fitted", evidence=0)
    model.update([obs(0, 5, [1, 1])])
    assert model.binary_why()[1] == ("every query's answers were its right answer or one wrong "
                                     "answer, with no evidence asked")
    model = ModelQTable(p, prior="fixed")
    assert model.prior_reason == "no estimate yet"
    model.update(answers)
    _ = model.mean
    assert (model.prior_used, model.prior_reason) == ("fixed", "the fixed prior was asked for")


def test_the_fitted_prior_ranks_a_steady_prompt_above_a_polarized_one_at_large_n() -> None:
    """Known by construction. A steady prompt is right 62% of the time on every query; a
    polarized one 97% on two thirds of the queries and 3% on the rest: the better single
    shot (0.657), but majority voting of 31 answers wins 0.91 of the steady prompt's queries
    and 0.667 of the polarized one's. Two answers per query show it only across
    queries: how often a query's two answers disagree (0.47 against 0.06) says how spread a
    prompt's chances are. The fitted prior reads it and ranks the steady prompt first at
    N = 31 in every seed; the fixed prior, which judges each query by its own two answers,
    ranks the polarized one first in every seed."""
    from iapo.pulls import Pull

    x = 300
    theta = np.stack([np.full(x, 0.62), np.where(np.arange(x) % 3 < 2, 0.97, 0.03)])
    env = binary_env(theta, [0.01, 0.01], "steady")
    exact = env.q(np.arange(x))[0]
    truth = exact[:, 30]
    assert truth[0] == pytest.approx(0.91, abs=0.01) and truth[1] < 0.7
    for seed in range(5):
        oracle = SimulatedOracle(env, np.arange(x), 10**6, np.random.default_rng(seed))
        obs = oracle.pull([Pull(0, 2, x), Pull(1, 2, x)])
        fitted, fixed = ModelQTable(env.problem, prior="fitted"), ModelQTable(env.problem)
        fitted.update(obs)
        fixed.update(obs)
        assert fitted.mean[0, 0, 30] > fitted.mean[0, 1, 30] + 0.1, seed
        assert fixed.mean[0, 1, 30] > fixed.mean[0, 0, 30], seed
        # at one answer the fitted prior is the mean of the answers: within sampling error
        # (300 queries x 2 answers) of the exact single shot
        np.testing.assert_allclose(fitted.mean[0, :, 0], exact[:, 0], atol=0.05)


@pytest.mark.parametrize("prior", ["fixed", "fitted"])
def test_a_no_answer_category_nobody_chose_is_still_a_category(prior: str) -> None:
    """Under the abstain rule a query names its "no answer" category (here 2) whether or not
    an answer fell in it: the model makes room for it rather than failing. One answer right
    and one wrong on the query, nothing abstained: the same Q as under the vote rule, where
    no category is set apart (by hand, prompt 0's Dirichlet: gold 1.5, the wrong answer 1.5,
    unseen 0.5: next answer right 1.5 / 3.5)."""
    grid = ContextGrid.product([Objective("correct", 0.0, 1.0)], [(1.0,)], {"low": 0.0})
    problem = Problem("t", "mv", ("a", "b"), 3, grid, CostObjective("cost", 0.1),
                      no_answer="abstain")
    obs = Observation(0, 2, np.array([0]), np.zeros((1, 2, 2)),
                      np.array([[0, 1]], dtype=np.int16), np.array([0], dtype=np.int16),
                      no_answer=np.array([2], dtype=np.int16))
    model = ModelQTable(problem, prior=prior, evidence=0)  # one query: no evidence asked
    model.update([obs])
    assert model.binary() is not None
    if prior == "fixed":
        assert model.mean[0, 0, 0] == pytest.approx(1.5 / 3.5)
    else:
        assert 0.0 < model.mean[0, 0, 0] < 1.0 and model.prior_used == "fitted"


def test_the_fitted_prior_depends_on_the_answers_not_on_their_order() -> None:
    """A run's answers (psst-auto, synth-bernoulli, T = 800) fed in the order they came, the
    estimate taken after each batch as a learner does, give the same Q to the last digit as
    the same answers fed at once, and (but for the rounding of the costs' sum) as fed in
    reverse. The fit of the prior behind it, stopped at CREDIT_TOLERANCE, has the marginal
    likelihood of a fit run to 1e-7 within 0.01, and the two fits' Q differ by less than 1e-3
    (test_posterior.py has data where a search from one start stops short)."""
    from iapo import posterior
    from iapo.bench.runner import run_oracle, run_queries
    from iapo.report import Recorder

    env, train, _ = run_queries("synth-bernoulli", 0, 0, 0.2)
    oracle, rng = run_oracle(env, train, "psst-auto", 800, 0, 0)
    recorder = Recorder(oracle)
    get_learner("psst-auto").configure(prior="fitted").learner(env.problem, recorder, 800, rng)
    obs = recorder.observations
    step, once, backward = (ModelQTable(env.problem, prior="fitted") for _ in range(3))
    fitted_steps = 0
    for o in obs:
        step.update([o])
        _ = step.mean
        fitted_steps += step.prior_used == "fitted"
    assert fitted_steps >= 10  # a warm start would have had earlier fits to start from
    once.update(obs)
    backward.update(obs[::-1])
    np.testing.assert_array_equal(step.mean, once.mean)
    np.testing.assert_allclose(backward.mean, once.mean, rtol=0, atol=1e-12)  # costs summed
    assert step.prior_used == once.prior_used == backward.prior_used == "fitted"
    votes = once.binary()
    assert votes is not None
    gm, gs, _ = posterior.coarse_grid()
    loglik, seen, loose = posterior.fit_prior(votes, posterior.CREDIT_TOLERANCE)
    _, _, tight = posterior.fit_prior(votes, 1e-7)
    assert loose is not None and tight is not None
    marginal = posterior.log_marginal(loglik[seen], gm, gs)
    assert marginal(loose) == pytest.approx(marginal(tight), abs=0.01)
    assert marginal(loose) <= marginal(tight) + 1e-9
    credit, _ = posterior.expected_credit(env.problem, votes)
    # the tight fit's credit, by expected_credit's own formula with the tight prior
    original = posterior.CREDIT_TOLERANCE
    try:
        posterior.CREDIT_TOLERANCE = 1e-7
        tight_credit, _ = posterior.expected_credit(env.problem, votes)
    finally:
        posterior.CREDIT_TOLERANCE = original
    np.testing.assert_allclose(credit, tight_credit, atol=1e-3)
