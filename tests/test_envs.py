"""Environments: the paper's worked example, the real and synthetic environments (Table 1), the
tabular file format and its errors, sampling, and Monte Carlo agreement with the exact Q."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import binom

from iapo.cache import cache_dir
from iapo.envs import (
    BoNEnvironment,
    DataError,
    MVEnvironment,
    UnknownEnvironmentError,
    acr,
    best_arms,
    environment_names,
    get_environment,
    load_environment,
    synth_bernoulli,
    synth_categorical,
)
from iapo.oracle import SimulatedOracle
from iapo.problem import Arm, ContextGrid, Objective
from iapo.pulls import Pull


def mv_binary(p: float, n: int) -> float:
    """P(gold wins) with two answers, half credit on a tie."""
    return float(binom.sf(n // 2, n, p) + (0.5 * binom.pmf(n // 2, n, p) if n % 2 == 0 else 0.0))


# --- the paper's worked example (Motivating Case Study) -----------------------------------------


def worked_example() -> MVEnvironment:
    # prompt 1: 40% and 90% right on the two queries; prompt 2: 62% on both. Category 0 is right.
    probs = [[[0.4, 0.6], [0.9, 0.1]], [[0.62, 0.38], [0.62, 0.38]]]
    return MVEnvironment("worked-example", probs, np.array([0, 0]), [0.01, 0.02],
                         {"free": 0.0, "paid": 1.0}, n_max=10, cacheable=False)


def test_worked_example_single_shot_prefers_prompt_1() -> None:
    q = worked_example().q()
    assert q.shape == (2, 2, 10)
    assert q[0, 0, 0] == pytest.approx(0.65)
    assert q[0, 1, 0] == pytest.approx(0.62)


def test_worked_example_majority_of_ten_prefers_prompt_2() -> None:
    q = worked_example().q()
    assert q[0, 0, 9] == pytest.approx(0.633, abs=5e-4)
    assert q[0, 1, 9] == pytest.approx(0.774, abs=5e-4)
    for n in range(1, 11):
        p1 = (mv_binary(0.4, n) + mv_binary(0.9, n)) / 2
        assert q[0, 0, n - 1] == pytest.approx(p1, abs=1e-12)
        assert q[0, 1, n - 1] == pytest.approx(mv_binary(0.62, n), abs=1e-12)


def test_worked_example_costs_and_single_queries() -> None:
    env = worked_example()
    q = env.q()
    for n in range(1, 11):
        # the paid context pays cost weight 1 times N completions of 0.01 (prompt 1) / 0.02
        assert q[1, 0, n - 1] == pytest.approx(q[0, 0, n - 1] - 0.01 * n)
        assert q[1, 1, n - 1] == pytest.approx(q[0, 1, n - 1] - 0.02 * n)
    # Q on query 0 alone: prompt 1 is right 40% of the time
    q0 = env.q([0])
    assert q0[0, 0, 0] == pytest.approx(0.4)
    assert q0[0, 0, 2] == pytest.approx(mv_binary(0.4, 3))
    with pytest.raises(ValueError, match="at least one query"):
        env.q([])


def test_best_arms_and_acr_by_hand() -> None:
    q = np.zeros((3, 2, 3))
    q[0, 1, 2] = 0.9  # context 0: (1, 3)
    q[1, 0, 1] = q[1, 1, 0] = 0.5  # context 1: a tie, the lower prompt wins
    q[2, 0, 0] = q[2, 0, 2] = 0.2  # context 2: a tie, the lower N wins
    arms = best_arms(q)
    assert arms == [Arm(1, 3), Arm(0, 2), Arm(0, 1)]
    assert acr(q, arms, [0.5, 0.25, 0.25]) == pytest.approx(0.5 * 0.9 + 0.25 * 0.5 + 0.25 * 0.2)
    assert acr(q, [Arm(0, 1)] * 3, [0.5, 0.25, 0.25]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="one arm and one probability per context"):
        acr(q, arms[:2], [0.5, 0.25, 0.25])


# --- the named environments (Table 1) -----------------------------------------------------------

TABLE_1 = {
    # name: (aggregator, prompts, N_max, o_k max, queries, contexts)
    "synth-bernoulli": ("mv", 32, 32, 1.0, 520, 3),
    "math": ("mv", 25, 32, 1.0, 316, 3),
    "commonsenseqa": ("mv", 48, 32, 1.0, 1500, 3),
    "synth-categorical": ("bon", 32, 32, 4.0, 512, 27),
}


def test_the_shipped_environments_are_registered() -> None:
    # the paper's four (Table 1) and the two Best-of-N environments built from real completions
    real_bon = ["helpful-harmless-smollm2", "summarization-smollm2"]
    assert sorted(environment_names()) == sorted([*TABLE_1, *real_bon])


@pytest.mark.parametrize("name", list(TABLE_1))
def test_environment_sizes_match_table_1(name: str) -> None:
    env = get_environment(name)
    agg, n_prompts, n_max, o_max, n_queries, n_contexts = TABLE_1[name]
    p = env.problem
    assert p.aggregator == agg
    assert p.n_prompts == n_prompts
    assert p.n_max == n_max
    assert all(o.upper == o_max for o in p.grid.objectives)
    assert env.n_queries == n_queries
    assert p.n_contexts == n_contexts
    np.testing.assert_allclose(p.grid.probabilities, 1 / n_contexts)
    # the budget levels of the paper: cost weights 0.0 / 0.2 / 1.0
    assert sorted(set(p.grid.cost_weights.tolist())) == [0.0, 0.2, 1.0]


@pytest.mark.parametrize(("name", "n_cat"), [("math", 5), ("commonsenseqa", 4)])
def test_real_environments_are_the_recorded_answer_counts(name: str, n_cat: int) -> None:
    with resources.files("iapo.envs").joinpath("data", f"{name}.npz").open("rb") as fh:
        with np.load(fh) as f:
            raw = {k: f[k] for k in f.files}
    counts = raw["answer_counts"]
    assert counts.shape[-1] == n_cat
    assert int(raw["samples_per_pair"]) == 128
    np.testing.assert_array_equal(counts.sum(axis=-1), 128)
    env = get_environment(name)
    assert isinstance(env, MVEnvironment)
    np.testing.assert_allclose(env.probs, counts / 128.0)
    np.testing.assert_array_equal(env.gold, raw["gold"])
    np.testing.assert_allclose(env.cost, raw["cost_per_completion"])
    assert env.cost.max() == pytest.approx(0.01)
    assert env.problem.grid.keys == ["budget=low", "budget=mid", "budget=high"]
    np.testing.assert_allclose(env.problem.grid.cost_weights, [0.0, 0.2, 1.0])


def test_unknown_environment_names_the_problem() -> None:
    with pytest.raises(UnknownEnvironmentError, match="unknown environment 'nope'") as e:
        get_environment("nope")
    for name in TABLE_1:
        assert name in str(e.value)


def test_missing_environment_file() -> None:
    with pytest.raises(DataError, match="does not exist"):
        get_environment("no/such/file.npz")


# --- synthetic environments ---------------------------------------------------------------------


def test_synth_bernoulli_is_reproducible_and_seeded() -> None:
    a, b, c = synth_bernoulli(7), synth_bernoulli(7), synth_bernoulli(8)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.cost, b.cost)
    assert not np.allclose(a.probs, c.probs)
    np.testing.assert_array_equal(get_environment("synth-bernoulli", seed=7).probs, a.probs)
    np.testing.assert_array_equal(get_environment("synth-bernoulli").probs,
                                  synth_bernoulli(0).probs)


def test_synth_bernoulli_is_as_documented() -> None:
    env = synth_bernoulli(3)
    assert env.probs.shape == (32, 520, 2)
    np.testing.assert_array_equal(env.gold, 0)  # category 0 is the right answer
    np.testing.assert_allclose(env.probs.sum(axis=-1), 1.0)
    assert env.cost.max() == pytest.approx(0.01)
    assert env.cost.min() >= 0.0035 - 1e-12
    # prompts differ in how polarized they are: some queries near-certain, some near-hopeless
    theta = env.probs[..., 0]
    assert theta.min() < 0.05 and theta.max() > 0.95


def test_synth_bernoulli_population_q_is_the_integral_over_queries() -> None:
    """Q over synth-bernoulli's query distribution, against scipy's adaptive quadrature of the
    documented model: theta = sigmoid(level + spread (0.7 z + 0.71 e)), majority of N
    right/wrong draws (a tie of an even N credits 1/2), minus cost weight x cost x N."""
    from scipy.integrate import quad
    from scipy.special import expit

    from iapo.envs.synthetic import synth_bernoulli_population_q
    from test_posterior import majority

    seed, n_prompts, n_queries, n_max = 11, 3, 25, 6
    q = synth_bernoulli_population_q(seed, n_prompts, n_queries, n_max)
    env = synth_bernoulli(seed, n_prompts=n_prompts, n_queries=n_queries, n_max=n_max)
    assert q.shape == (3, n_prompts, n_max)
    rng = np.random.default_rng(np.random.SeedSequence([0xB3, seed]))  # the documented draws
    level, spread = rng.uniform(-0.3, 1.3, n_prompts), rng.uniform(0.3, 3.0, n_prompts)
    sd = math.sqrt(0.7**2 + 0.71**2)

    for p in range(n_prompts):
        for n in (1, 2, 5, 6):
            acc = quad(lambda z, p=p, n=n: majority(expit(level[p] + spread[p] * sd * z), n)
                       * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -12, 12,
                       epsabs=1e-12, limit=200)[0]
            for c, weight in enumerate(env.problem.grid.cost_weights):
                assert q[c, p, n - 1] == pytest.approx(acc - weight * env.cost[p] * n, abs=1e-8)
    # the environment's finite sample of queries scatters around it
    finite = env.query_table(progress=False).q(env.problem)
    assert np.abs(finite - q).max() < 0.25 and np.abs(finite - q).mean() > 1e-4


def test_synth_categorical_is_reproducible_and_seeded() -> None:
    a, b, c = synth_categorical(5), synth_categorical(5), synth_categorical(6)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.allclose(a.probs, c.probs)
    np.testing.assert_array_equal(get_environment("synth-categorical", seed=5).probs, a.probs)


def test_synth_categorical_is_as_documented() -> None:
    env = synth_categorical(2)
    assert env.scores.shape == (32, 512, 25, 3)
    np.testing.assert_allclose(env.probs.sum(axis=-1), 1.0)
    # every (prompt, query) pair has the 5 x 5 grid of score pairs {0..4}^2
    pairs = {(int(a), int(b)) for a, b in env.scores[4, 9, :, :2]}
    assert pairs == set(itertools.product(range(5), range(5)))
    # a completion's cost depends on the prompt only; the most expensive costs 0.08
    cost = env.scores[..., 2]
    np.testing.assert_array_equal(cost, cost[:, :1, :1] * np.ones_like(cost))
    assert cost.max() == pytest.approx(0.08)
    weights = env.problem.grid.weights
    expected = {(round(a / 10, 1), round(1 - a / 10, 1)) for a in range(1, 10)}
    assert {tuple(w) for w in weights.tolist()} == expected


@pytest.mark.parametrize("name", ["synth-bernoulli", "synth-categorical"])
def test_inference_awareness_matters_on_the_default_instance(name: str) -> None:
    q = get_environment(name).q()
    best_at_1 = q[:, :, 0].argmax(axis=1)
    best_at_max = q[:, :, -1].argmax(axis=1)
    # some context's best single-shot prompt is not its best prompt at N_max
    assert np.any(best_at_1 != best_at_max)
    # contexts disagree on the best arm
    flat = q.reshape(q.shape[0], -1)
    best = {int(i) for i in flat.argmax(axis=1)}
    assert len(best) > 1
    # and some context is best served with more than one completion
    assert any(i % q.shape[2] > 0 for i in best)


# --- the tabular file format --------------------------------------------------------------------


def mv_data() -> dict[str, np.ndarray]:
    return {
        "answer_counts": np.array([[[3, 1, 0], [0, 2, 2]], [[4, 0, 0], [1, 1, 2]]]),
        "samples_per_pair": np.array(4),
        "gold": np.array([0, 2]),
        "cost_per_completion": np.array([0.01, 0.02]),
        "budget_levels": np.array(["low", "high"]),
        "cost_weights": np.array([0.0, 1.0]),
        "n_max": np.array(5),
    }


def bon_data() -> dict[str, np.ndarray]:
    # 2 prompts, 2 queries, 3 support points of (a, b, cost); cost varies per completion
    scores = np.array([
        [[[1.0, 0.0, 0.1], [0.0, 1.0, 0.3], [0.5, 0.5, 0.2]],
         [[0.2, 0.2, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.4]]],
        [[[0.6, 0.6, 0.2], [0.0, 0.0, 0.0], [1.0, 1.0, 0.5]],
         [[0.3, 0.7, 0.1], [0.7, 0.3, 0.1], [0.0, 0.0, 0.0]]],
    ])
    probs = np.array([[[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]], [[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]])
    return {
        "aggregator": np.array("bon"),
        "scores": scores,
        "probs": probs,
        "objective_names": np.array(["a", "b"]),
        "objective_lower": np.array([0.0, 0.0]),
        "objective_upper": np.array([1.0, 1.0]),
        "weight_grid": np.array([[0.2, 0.8], [0.8, 0.2]]),
        "budget_levels": np.array(["low", "high"]),
        "cost_weights": np.array([0.0, 1.0]),
        "n_max": np.array(4),
    }


def save(tmp_path: Path, data: dict[str, np.ndarray], name: str = "env.npz") -> Path:
    path = tmp_path / name
    arrays: dict[str, Any] = dict(data)
    np.savez(path, **arrays)
    return path


def test_an_mv_file_s_rule_and_answers_reach_its_problem(tmp_path: Path) -> None:
    data = mv_data()
    plain = load_environment(save(tmp_path, data, "plain.npz"))
    assert plain.problem.no_answer == "abstain" and plain.problem.answers is None
    data["no_answer_rule"], data["answers"] = np.array("vote"), np.array(3)
    env = load_environment(save(tmp_path, data, "ruled.npz"))
    assert env.problem.no_answer == "vote" and env.problem.answers == 3
    # query 1 can get three answers, one of them its "no answer": two count under abstain,
    # three under vote
    data["no_answer"], data["answers"] = np.array([-1, 1]), np.array(2)
    data["no_answer_rule"] = np.array("abstain")
    assert load_environment(save(tmp_path, data, "two.npz")).problem.answers == 2
    data["no_answer_rule"] = np.array("vote")
    with pytest.raises(DataError, match="query 1 can get 3 answers"):
        load_environment(save(tmp_path, data, "three.npz"))
    # an unobserved pair's placeholder row counts for nothing: prompt 1 never answered query
    # 1, whose third answer only its placeholder has
    data = mv_data()
    data["answer_counts"] = np.array([[[3, 1, 0], [0, 2, 2]], [[4, 0, 0], [2, 1, 1]]])
    data["observed"] = np.array([[True, True], [True, False]])
    data["answers"] = np.array(2)
    data["answer_counts"][0, 1] = [2, 0, 2]  # query 1 observed: categories 0 and 2
    assert load_environment(save(tmp_path, data, "masked.npz")).problem.answers == 2
    del data["observed"]
    with pytest.raises(DataError, match="query 1 can get 3 answers"):
        load_environment(save(tmp_path, data, "unmasked.npz"))
    # a Best-of-N file has no majority-voting keys
    for key, value in (("answers", 2), ("no_answer_rule", "vote"), ("no_answer", [-1, -1])):
        bon = bon_data()
        bon[key] = np.array(value)
        with pytest.raises(DataError, match=f"'{key}' belong"):
            load_environment(save(tmp_path, bon, "bon.npz"))


def test_valid_mv_file_loads_with_its_counts(tmp_path: Path) -> None:
    env = load_environment(save(tmp_path, mv_data(), "tiny.npz"))
    assert env.name == "tiny"
    assert isinstance(env, MVEnvironment)
    assert (env.problem.n_prompts, env.n_queries, env.problem.n_max) == (2, 2, 5)
    np.testing.assert_allclose(env.probs, mv_data()["answer_counts"] / 4)
    q = env.q()
    # N = 1: the mean chance of the gold answer; prompt 0: (3/4 + 2/4) / 2, prompt 1: (1 + 1/2) / 2
    np.testing.assert_allclose(q[0, :, 0], [0.625, 0.75])
    np.testing.assert_allclose(q[1, :, 0], [0.625 - 0.01, 0.75 - 0.02])


def bon_brute_force_q(data: dict[str, np.ndarray]) -> np.ndarray:
    """Q[c, p, N] by enumerating every N-tuple of support points, contexts weights x budgets."""
    scores, probs = data["scores"], data["probs"]
    n_prompts, n_queries, n_support, _ = scores.shape
    n_max = int(data["n_max"])
    contexts = [(w, cw) for w in data["weight_grid"] for cw in data["cost_weights"]]
    q = np.zeros((len(contexts), n_prompts, n_max))
    for c, (w, cw) in enumerate(contexts):
        for p in range(n_prompts):
            for n in range(1, n_max + 1):
                total = 0.0
                for x in range(n_queries):
                    for tup in itertools.product(range(n_support), repeat=n):
                        pr = math.prod(probs[p, x, i] for i in tup)
                        task = max(float(scores[p, x, i, :2] @ w) for i in tup)
                        total += pr * (task - cw * sum(scores[p, x, i, 2] for i in tup))
                q[c, p, n - 1] = total / n_queries
    return q


def test_valid_bon_file_has_the_brute_force_q(tmp_path: Path) -> None:
    data = bon_data()
    env = load_environment(save(tmp_path, data))
    assert isinstance(env, BoNEnvironment)
    assert env.problem.grid.keys == ["a=0.2,b=0.8,budget=low", "a=0.2,b=0.8,budget=high",
                                     "a=0.8,b=0.2,budget=low", "a=0.8,b=0.2,budget=high"]
    np.testing.assert_allclose(env.q(), bon_brute_force_q(data), atol=1e-12)


def test_zero_probability_support_points_may_lie_outside_the_bounds(tmp_path: Path) -> None:
    data = bon_data()
    data["probs"][0, 0] = [0.5, 0.5, 0.0]
    data["scores"][0, 0, 2, :2] = 7.0  # padding, never drawn
    env = load_environment(save(tmp_path, data))
    np.testing.assert_allclose(env.q(), bon_brute_force_q(data), atol=1e-12)


Mutation = Callable[[dict[str, np.ndarray]], None]


def _set(key: str, value: object) -> Mutation:
    def mutate(d: dict[str, np.ndarray]) -> None:
        d[key] = np.asarray(value)
    return mutate


def _drop(*keys: str) -> Mutation:
    def mutate(d: dict[str, np.ndarray]) -> None:
        for k in keys:
            del d[k]
    return mutate


def _probs_instead(value: object) -> Mutation:
    def mutate(d: dict[str, np.ndarray]) -> None:
        del d["answer_counts"], d["samples_per_pair"]
        d["answer_probs"] = np.asarray(value)
    return mutate


MV_BAD = {
    "counts-not-3d": (_set("answer_counts", [[4, 0], [2, 2]]), "must be (P, X, L)"),
    "counts-row-sum": (
        _set("answer_counts", [[[3, 1, 0], [0, 2, 1]], [[4, 0, 0], [1, 1, 2]]]),
        "rows must each sum to samples_per_pair = 4; row (0, 1) sums to 3",
    ),
    "counts-negative": (
        _set("answer_counts", [[[5, -1, 0], [0, 2, 2]], [[4, 0, 0], [1, 1, 2]]]),
        "'answer_counts' must hold non-negative integers",
    ),
    "counts-float": (
        _set("answer_counts", [[[3.0, 1, 0], [0, 2, 2]], [[4, 0, 0], [1, 1, 2]]]),
        "'answer_counts' must hold non-negative integers",
    ),
    "one-category": (
        _set("answer_counts", [[[4], [4]], [[4], [4]]]), "at least 2 answer categories"
    ),
    "probs-above-one": (
        _probs_instead([[[1.5, -0.5], [0.5, 0.5]]]), "probabilities outside [0, 1]"
    ),
    "probs-row-sum": (
        _probs_instead([[[0.5, 0.4], [0.5, 0.5]]]), "rows must sum to 1; row (0, 0) sums to 0.9"
    ),
    "probs-nan": (_probs_instead([[[np.nan, 0.5], [0.5, 0.5]]]), "NaN"),
    "missing-gold": (_drop("gold"), "missing array(s) ['gold']"),
    "missing-n-max": (_drop("n_max"), "missing array(s) ['n_max']"),
    "missing-samples": (_drop("samples_per_pair"), "missing array(s) ['samples_per_pair']"),
    "gold-too-big": (_set("gold", [0, 3]), "gold labels must be integers in 0..2"),
    "gold-negative": (_set("gold", [-1, 2]), "gold labels must be integers in 0..2"),
    "gold-float": (_set("gold", [0.0, 2.0]), "gold labels must be integers in 0..2"),
    "gold-shape": (_set("gold", [0, 1, 2]), "gold must have shape (2,)"),
    "cost-shape": (_set("cost_per_completion", [0.01]), "cost_per_completion must have shape (2,)"),
    "cost-negative": (_set("cost_per_completion", [0.01, -0.02]), "cost_per_completion must be"),
    "budgets-mismatch": (_set("cost_weights", [0.0, 0.2, 1.0]), "2 budget levels but 3 cost"),
    "budgets-repeated": (_set("budget_levels", ["low", "low"]), "must be distinct"),
    "cost-weight-negative": (_set("cost_weights", [0.0, -1.0]), "negative"),
    "n-max-zero": (_set("n_max", 0), "N_max=0"),
    "n-max-not-scalar": (_set("n_max", [4, 5]), "'n_max' must be a single number"),
    "n-max-not-integer": (_set("n_max", 4.5), "4.5"),  # not silently cut to 4
    "aggregator": (_set("aggregator", "median"), "aggregator 'median' is unknown"),
    "no-answer-rule": (_set("no_answer_rule", "maybe"),
                       "'no_answer_rule' must be one of abstain, vote"),
    "answers-one": (_set("answers", 1), "'answers' (how many answers a query can get) must be"),
    "answers-not-integer": (_set("answers", 2.5), "'answers' must be a whole number"),
    "answers-below-the-data": (_set("answers", 2), "'answers' = 2, but query 1 can get 3"),
    "prompt-names": (_set("prompt_names", ["only-one"]), "1 prompt names for 2 prompts"),
}


@pytest.mark.parametrize("case", list(MV_BAD))
def test_malformed_mv_files_are_rejected_clearly(tmp_path: Path, case: str) -> None:
    mutate, message = MV_BAD[case]
    data = mv_data()
    data["aggregator"] = np.array("mv")
    mutate(data)
    with pytest.raises(DataError) as e:
        load_environment(save(tmp_path, data))
    assert message in str(e.value)


BON_BAD = {
    "scores-columns": (
        lambda d: d.__setitem__("scores", d["scores"][..., 1:]), "K+1 = 3 (cost last)"
    ),
    "probs-shape": (
        lambda d: d.__setitem__("probs", d["probs"][:, :, :2]), "probs must have shape (2, 2, 3)"
    ),
    "probs-row-sum": (
        lambda d: d["probs"].__setitem__((1, 1, 0), 0.3), "rows must sum to 1; row (1, 1)"
    ),
    "probs-negative": (
        lambda d: d["probs"].__setitem__((0, 0), [1.2, -0.2, 0.0]), "outside [0, 1]"
    ),
    "scores-nan": (lambda d: d["scores"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    "objective-bounds": (
        lambda d: d["scores"].__setitem__((1, 0, 2, 1), 1.5),
        "objective 'b' has scores in [0, 1.5], outside its bounds [0, 1]",
    ),
    "cost-negative": (
        lambda d: d["scores"].__setitem__((1, 0, 0, 2), -0.1), "cost (the last score column)"
    ),
    "weight-above-one": (_set("weight_grid", [[0.2, 1.2]]), "outside [0, 1]"),
    "weight-columns": (_set("weight_grid", [[0.2, 0.3, 0.5]]), "the grid has 2 objectives"),
    "objective-bounds-order": (_set("objective_lower", [0.0, 1.0]), "lower bound must be below"),
    "missing-weights": (_drop("weight_grid"), "missing array(s) ['weight_grid']"),
    "counts-without-total": (
        lambda d: (d.__delitem__("probs"),
                   d.__setitem__("counts", np.full((2, 2, 3), 2))),
        "missing array(s) ['samples_per_pair']",
    ),
    "counts-row-sum": (
        lambda d: (d.__delitem__("probs"),
                   d.__setitem__("counts", np.full((2, 2, 3), 2)),
                   d.__setitem__("samples_per_pair", np.array(5))),
        "'counts' rows must each sum to samples_per_pair = 5",
    ),
}


@pytest.mark.parametrize("case", list(BON_BAD))
def test_malformed_bon_files_are_rejected_clearly(tmp_path: Path, case: str) -> None:
    mutate, message = BON_BAD[case]
    data = bon_data()
    mutate(data)
    with pytest.raises(DataError) as e:
        load_environment(save(tmp_path, data))
    assert message in str(e.value)


def test_bon_counts_are_read_as_frequencies(tmp_path: Path) -> None:
    data = bon_data()
    del data["probs"]
    data["counts"] = np.array([[[3, 3, 4], [5, 2, 3]], [[7, 2, 1], [4, 4, 2]]])
    data["samples_per_pair"] = np.array(10)
    env = load_environment(save(tmp_path, data))
    assert isinstance(env, BoNEnvironment)
    np.testing.assert_allclose(env.probs, data["counts"] / 10)


def test_unreadable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not a readable .npz file"):
        load_environment(junk)
    data = mv_data()
    data["prompt_names"] = np.array(["a", 1], dtype=object)  # pickled: refused
    with pytest.raises(DataError, match="not a readable .npz file"):
        load_environment(save(tmp_path, data, "pickled.npz"))


def test_truncated_file_is_a_data_error(tmp_path: Path) -> None:
    whole = save(tmp_path, mv_data()).read_bytes()
    torn = tmp_path / "torn.npz"
    torn.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="not a readable .npz file"):
        load_environment(torn)


def _cache_entries(prefix: str) -> list[Path]:
    return sorted(cache_dir().glob(f"{prefix}-*.npz"))


def test_a_torn_cache_entry_is_recomputed() -> None:
    def make() -> MVEnvironment:
        return MVEnvironment("torn-cache", [[[0.3, 0.7]]], np.array([0]), [0.01], {"low": 0.0}, 3)

    make().q()
    (entry,) = _cache_entries("torn-cache")
    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 2])  # e.g. a disk that filled up
    np.testing.assert_allclose(make().q()[0, 0], [mv_binary(0.3, n) for n in (1, 2, 3)])


def test_a_foreign_cache_entry_is_recomputed() -> None:
    def make() -> MVEnvironment:
        return MVEnvironment("foreign-cache", [[[0.6, 0.4]]], np.array([0]), [0.01],
                             {"low": 0.0}, 3)

    make().q()
    (entry,) = _cache_entries("foreign-cache")
    with entry.open("wb") as fh:
        np.savez(fh, something_else=np.zeros(3))
    np.testing.assert_allclose(make().q()[0, 0], [mv_binary(0.6, n) for n in (1, 2, 3)])


def test_changed_data_never_reads_a_stale_table() -> None:
    # same name, same shapes, different numbers: each must get its own exact table
    a = MVEnvironment("same-name", [[[0.3, 0.7]]], np.array([0]), [0.01], {"low": 0.0}, 3)
    b = MVEnvironment("same-name", [[[0.8, 0.2]]], np.array([0]), [0.01], {"low": 0.0}, 3)
    qa, qb = a.q(), b.q()
    np.testing.assert_allclose(qa[0, 0], [mv_binary(0.3, n) for n in (1, 2, 3)])
    np.testing.assert_allclose(qb[0, 0], [mv_binary(0.8, n) for n in (1, 2, 3)])
    again = MVEnvironment("same-name", [[[0.3, 0.7]]], np.array([0]), [0.01], {"low": 0.0}, 3)
    np.testing.assert_allclose(again.q(), qa)


# --- sampling -----------------------------------------------------------------------------------


def test_mv_sampling_frequencies_and_zero_probability_answers() -> None:
    probs = [[[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]]  # zero-probability answers first, inside, last
    env = MVEnvironment("draws", probs, np.array([3]), [0.05], {"low": 0.0}, 8, cacheable=False)
    s = env.sample(0, np.zeros(5000, dtype=np.int64), 8, np.random.default_rng(0))
    assert s.labels is not None and s.gold is not None
    assert s.scores.shape == (5000, 8, 2) and s.labels.shape == (5000, 8)
    np.testing.assert_array_equal(s.gold, 3)
    np.testing.assert_array_equal(s.scores[..., 0], s.labels == 3)
    np.testing.assert_array_equal(s.scores[..., 1], 0.05)
    freq = np.bincount(s.labels.ravel(), minlength=6) / s.labels.size
    p = np.array(probs[0][0])
    se = np.sqrt(p * (1 - p) / s.labels.size)
    assert np.all(np.abs(freq - p) <= 4 * se + 1e-12)
    assert freq[[0, 2, 5]].sum() == 0


def test_bon_sampling_frequencies_and_zero_probability_points() -> None:
    data = bon_data()
    data["probs"][1, 0] = [0.0, 0.75, 0.25]
    data["probs"][1, 1] = [0.5, 0.0, 0.5]
    grid = ContextGrid.product([Objective("a"), Objective("b")], [(0.5, 0.5)], {"low": 0.0})
    env = BoNEnvironment("draws", data["scores"], data["probs"], grid, 4, cacheable=False)
    queries = np.repeat([0, 1], 3000)
    s = env.sample(1, queries, 3, np.random.default_rng(1))
    assert s.scores.shape == (6000, 3, 3) and s.labels is None
    for x in (0, 1):
        drawn = s.scores[queries == x].reshape(-1, 3)
        # which support point each draw is (the rows of this pair's support are distinct)
        match = (drawn[:, None, :] == data["scores"][1, x][None, :, :]).all(axis=-1)
        assert np.all(match.sum(axis=1) == 1)
        which = match.argmax(axis=1)
        freq = np.bincount(which, minlength=3) / which.size
        p = data["probs"][1, x]
        se = np.sqrt(p * (1 - p) / which.size)
        assert np.all(np.abs(freq - p) <= 4 * se + 1e-12)
        assert np.all(freq[p == 0] == 0)


# --- Monte Carlo agreement with the exact per-query table ---------------------------------------


@pytest.mark.parametrize(("prompt", "query", "n"), [(3, 10, 1), (21, 100, 4), (7, 300, 32)])
def test_bon_monte_carlo_matches_the_exact_table(prompt: int, query: int, n: int) -> None:
    env = get_environment("synth-categorical")
    table = env.query_table(progress=False)
    grid = env.problem.grid
    # the table's weight index must point at each context's own weights
    uniq, _ = grid.distinct_weights()
    np.testing.assert_array_equal(uniq[table.weight_index], grid.weights)
    groups = 4000
    oracle = SimulatedOracle(env, [query], groups * n, np.random.default_rng(prompt + n))
    (obs,) = oracle.pull([Pull(prompt, n, groups)])
    np.testing.assert_array_equal(obs.queries, query)
    s = obs.scores  # [groups, n, 3]
    utility = (s[..., :2] @ grid.weights.T).max(axis=1) - s[..., 2].sum(axis=1)[:, None] * \
        grid.cost_weights  # [groups, C]
    mean = utility.mean(axis=0)
    se = utility.std(axis=0, ddof=1) / np.sqrt(groups)
    exact = (table.task[prompt, query, table.weight_index, n - 1]
             - grid.cost_weights * n * table.cost[prompt, query])
    assert np.all(np.abs(mean - exact) <= 4 * se + 1e-9), (mean - exact) / se


def _interesting_math_pairs(env: MVEnvironment, count: int) -> list[tuple[int, int]]:
    gp = np.take_along_axis(env.probs, env.gold[None, :, None].astype(np.intp).repeat(
        env.probs.shape[0], axis=0), axis=-1)[..., 0]
    live = (env.probs > 0).sum(axis=-1)
    ok = np.argwhere((gp > 0.3) & (gp < 0.6) & (live >= 3))
    rng = np.random.default_rng(4)
    picked = ok[rng.choice(len(ok), count, replace=False)]
    return [(int(p), int(x)) for p, x in picked]


def test_mv_monte_carlo_matches_the_exact_table() -> None:
    env = get_environment("math")
    assert isinstance(env, MVEnvironment)
    table = env.query_table(progress=False)
    n_cat = env.probs.shape[-1]
    groups = 4000
    for (prompt, query), n in zip(_interesting_math_pairs(env, 3), (3, 5, 16), strict=True):
        oracle = SimulatedOracle(env, [query], groups * n, np.random.default_rng(n))
        (obs,) = oracle.pull([Pull(prompt, n, groups)])
        assert obs.labels is not None and obs.gold is not None
        np.testing.assert_array_equal(obs.gold, env.gold[query])
        votes = (obs.labels[..., None] == np.arange(n_cat)).sum(axis=1)  # [groups, L]
        top = votes.max(axis=1)
        ties = (votes == top[:, None]).sum(axis=1)
        credit = np.where(votes[:, env.gold[query]] == top, 1.0 / ties, 0.0)
        se = credit.std(ddof=1) / np.sqrt(groups)
        assert abs(credit.mean() - table.task[prompt, query, 0, n - 1]) <= 4 * se
        # with its cost, per context: Q on this single query
        q = env.q([query])[:, prompt, n - 1]
        utility = credit[:, None] - env.problem.grid.cost_weights * n * env.cost[prompt]
        assert np.all(np.abs(utility.mean(axis=0) - q) <= 4 * se + 1e-12)
