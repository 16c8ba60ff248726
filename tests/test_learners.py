"""Learners: budget, PSST's schedule, block reuse, correctness on easy problems, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brute import block_statistics
from iapo.envs import BoNEnvironment, MVEnvironment
from iapo.estimate import QTable
from iapo.learners import LEARNERS, get_learner
from iapo.learners.base import Choice
from iapo.learners.psst import psst
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, Objective
from iapo.pulls import BudgetExceededError, Pull
from iapo.training import evaluate_policy, regret_parts, train_policy


def sure_thing_env() -> MVEnvironment:
    """2 prompts, N_max 4: prompt 0 is always right, prompt 1 always wrong; cost 0.01 each.

    With cost weight 1: Q(0, n) = 1 - 0.01 n and Q(1, n) = -0.01 n, all distinct.
    """
    x = 10
    probs = np.zeros((2, x, 2))
    probs[0, :, 0] = 1.0
    probs[1, :, 1] = 1.0
    return MVEnvironment("sure", probs, np.zeros(x, dtype=np.int16), [0.01, 0.01],
                         {"high": 1.0}, 4, cacheable=False)


def two_context_env() -> BoNEnvironment:
    """2 prompts, N_max 4, contexts lo (cost weight 0) and hi (cost weight 1).

    Prompt 0: utility 1 or 0 with probability 1/2, cost 0.2 -> E[max of n] = 1 - 2^-n.
    Prompt 1: utility 0.6 always, cost 0.05.
    lo: best (0, 4) = 0.9375, next (0, 3) = 0.875.  hi: best (1, 1) = 0.55, next (1, 2) = 0.5.
    """
    x = 20
    scores = np.zeros((2, x, 2, 2))
    probs = np.zeros((2, x, 2))
    scores[0, :, 0] = [1.0, 0.2]
    scores[0, :, 1] = [0.0, 0.2]
    probs[0] = 0.5
    scores[1, :, 0] = [0.6, 0.05]
    scores[1, :, 1] = [0.6, 0.05]
    probs[1, :, 0] = 1.0
    grid = ContextGrid.product([Objective("u", 0.0, 1.0)], [(1.0,)], {"lo": 0.0, "hi": 1.0})
    return BoNEnvironment("two", scores, probs, grid, 4, cacheable=False)


def oracle_for(env, budget, seed=0):  # type: ignore[no-untyped-def]
    return SimulatedOracle(env, np.arange(env.n_queries), budget, np.random.default_rng(seed))


# ---------------------------------------------------------------- schedule


def test_psst_schedule_matches_hand_computed_one() -> None:
    env = sure_thing_env()
    oracle = oracle_for(env, 120)
    result = psst(env.problem, oracle, 120, np.random.default_rng(0))
    rounds = [(r.allowance, r.spent, [list(x) for x in r.pulls], list(r.alive))
              for r in result.trace.rounds]
    # |A| = 8, R = 3, 40 completions a round.
    # r1: both prompts at N=4, floor(40/8) = 5 groups each; keep the 4 arms of prompt 0.
    # r2: prompt 0 at N=4, 10 groups; keep (0,1), (0,2).  r3: prompt 0 at N=2, 20 groups.
    assert rounds == [
        (40, 40, [[0, 4, 5], [1, 4, 5]], [4]),
        (40, 40, [[0, 4, 10]], [2]),
        (40, 40, [[0, 2, 20]], [1]),
    ]
    assert result.trace.completions_used == 120 == oracle.ledger.spent
    assert (result.choices[0].prompt, result.choices[0].n) == (0, 1)


def test_psst_carries_unspent_budget_forward() -> None:
    env = sure_thing_env()
    result = psst(env.problem, oracle_for(env, 100), 100, np.random.default_rng(0))
    # allowances: 33, then 66 - 32 = 34, then 100 - 64 = 36 (the carry of 1, then 2)
    spent = [(r.allowance, r.spent) for r in result.trace.rounds]
    assert spent == [(33, 32), (34, 32), (36, 36)]
    assert result.trace.completions_used == 100


def test_small_budget_fewer_rounds_and_top_up() -> None:
    env = sure_thing_env()
    result = psst(env.problem, oracle_for(env, 10), 10, np.random.default_rng(0))
    assert result.trace.info["rounds_run"] == 1 and result.trace.info["rounds_paper"] == 3
    (r,) = result.trace.rounds
    # one group of each prompt at N=4 (8), then 2 left over: one more group at N=2
    assert r.pulls[:2] == ((0, 4, 1), (1, 4, 1))
    assert r.pulls[2][1:] == (2, 1)
    assert result.trace.completions_used == 10
    assert any("rounds instead of" in note for note in result.trace.notes)


def test_scale_cap_when_one_pull_of_every_prompt_is_unaffordable() -> None:
    env = sure_thing_env()
    result = psst(env.problem, oracle_for(env, 6), 6, np.random.default_rng(0))
    assert result.trace.info["scale_cap"] == 3
    assert result.trace.rounds[0].pulls == ((0, 3, 1), (1, 3, 1))
    assert result.choices[0].n <= 3
    assert any("scale cap" in note for note in result.trace.notes)


def test_budget_below_one_per_prompt_keeps_random_prompts() -> None:
    env = sure_thing_env()
    result = psst(env.problem, oracle_for(env, 1), 1, np.random.default_rng(0))
    assert result.trace.completions_used == 1
    assert result.trace.rounds[0].pulls[0][1:] == (1, 1)
    zero = psst(env.problem, oracle_for(env, 0), 0, np.random.default_rng(0))
    assert zero.trace.completions_used == 0 and len(zero.choices) == 1


def test_no_elimination_on_no_data() -> None:
    """A custom active set with an arm the round does not observe keeps that arm."""
    env = sure_thing_env()
    stats = QTable(env.problem)
    from iapo.learners.psst import trim

    active = np.ones((1, 2, 4), dtype=bool)
    stats.update(oracle_for(env, 100).pull([Pull(1, 2, 3)]))  # only (1,1), (1,2) have data
    kept = trim(active, stats, 3, np.random.default_rng(0))
    # 8 arms -> keep 4: the 6 unobserved ones rank first, so all 4 kept have no data
    assert kept.sum() == 4
    assert not (kept[0, 1, :2]).any()


# ---------------------------------------------------------------- block reuse


@pytest.mark.parametrize("group", [1, 2, 5, 7, 12, 32])
def test_a_pull_of_n_yields_floor_n_over_k_blocks(group: int) -> None:
    env = two_context_env() if group <= 4 else None
    if env is None:
        from iapo.envs import synth_categorical

        env = synth_categorical(1, n_prompts=2, n_queries=4)
    stats = QTable(env.problem)
    stats.update(oracle_for(env, 10_000).pull([Pull(1, group, 3)]))
    expected = np.array([3 * (group // n) for n in range(1, env.problem.n_max + 1)])
    assert stats.counts[1].tolist() == expected.tolist()
    assert stats.counts[0].sum() == 0


@pytest.mark.parametrize("kind", ["mv", "bon"])
def test_block_statistics_equal_a_direct_loop(kind: str) -> None:
    from iapo.envs import synth_bernoulli, synth_categorical

    env = synth_bernoulli(3, n_prompts=4, n_queries=30) if kind == "mv" else synth_categorical(
        3, n_prompts=4, n_queries=30)
    p = env.problem
    obs = oracle_for(env, 10**6, 5).pull(
        [Pull(0, 7, 3), Pull(2, 32, 2), Pull(0, 5, 4), Pull(1, 1, 5), Pull(3, 2, 2)])
    stats = QTable(p)
    stats.update(obs[:2])
    stats.update(obs[2:])
    sums, sumsq, counts = block_statistics(p, obs)
    np.testing.assert_allclose(stats.sums, sums, atol=1e-10)
    np.testing.assert_allclose(stats.sumsq, sumsq, atol=1e-10)
    assert (stats.counts == counts).all()


# ---------------------------------------------------------------- the budget


# every learner, and every one that takes an estimator with the subsets estimator too (the
# psst-model learners estimate with their own model)
EVERY_LEARNER = sorted(LEARNERS) + [f"{name}:subsets" for name in sorted(LEARNERS)
                                    if name not in ("psst-model", "psst-model4", "psst-auto")]


@pytest.mark.parametrize("learner", EVERY_LEARNER)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env_kind=st.sampled_from(["mv", "bon"]),
    budget=st.integers(min_value=0, max_value=3000),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_ledger_never_exceeds_budget(learner: str, env_kind: str, budget: int, seed: int) -> None:
    from iapo.envs import synth_bernoulli, synth_categorical

    env = (synth_bernoulli(seed % 5, n_prompts=6, n_queries=40, n_max=8) if env_kind == "mv"
           else synth_categorical(seed % 5, n_prompts=5, n_queries=40, n_max=8))
    p = env.problem
    oracle = oracle_for(env, budget, seed)
    result = get_learner(learner).learner(p, oracle, budget, np.random.default_rng(seed))
    assert oracle.ledger.spent <= budget
    assert result.trace.completions_used == oracle.ledger.spent
    if budget >= p.n_prompts * p.n_max:
        assert oracle.ledger.spent >= 0.95 * budget
    # an overspending pull is refused and changes nothing
    with pytest.raises(BudgetExceededError):
        oracle.pull([Pull(0, 1, oracle.ledger.remaining + 1)])
    assert oracle.ledger.spent <= budget
    assert len(result.choices) == p.n_contexts
    for ch in result.choices:
        assert 0 <= ch.prompt < p.n_prompts
        assert ch.n is None or 1 <= ch.n <= p.n_max


def test_learner_cannot_be_given_more_than_the_ledger_allows() -> None:
    env = sure_thing_env()
    with pytest.raises(ValueError, match="exceeds"):
        psst(env.problem, oracle_for(env, 10), 11, np.random.default_rng(0))


# ---------------------------------------------------------------- what they learn


def test_psst_finds_the_clearly_best_arm_of_every_context() -> None:
    env = two_context_env()
    hits = 0
    for seed in range(100):
        result = psst(env.problem, oracle_for(env, 8000, seed), 8000,
                      np.random.default_rng(seed))
        arms = [(c.prompt, c.n) for c in result.choices]
        hits += arms == [(0, 4), (1, 1)]
    assert hits >= 95


def test_different_contexts_get_different_arms() -> None:
    env = two_context_env()
    result = psst(env.problem, oracle_for(env, 8000), 8000, np.random.default_rng(1))
    assert (result.choices[0].prompt, result.choices[0].n) != (
        result.choices[1].prompt, result.choices[1].n)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_same_seed_same_policy(learner: str) -> None:
    from iapo.envs import synth_categorical

    env = synth_categorical(2, n_prompts=6, n_queries=50, n_max=8)
    a = train_policy(env, learner, 1500, seed=11)
    b = train_policy(env, learner, 1500, seed=11)
    c = train_policy(env, learner, 1500, seed=12)
    key = lambda pol: [(ch.prompt, ch.n, ch.samples) for ch in pol.choices]  # noqa: E731
    assert key(a) == key(b)
    assert a.split == b.split and a.split != c.split


def test_top_k_screening_keeps_k_prompts_per_context() -> None:
    from iapo.envs import synth_categorical

    env = synth_categorical(0, n_prompts=10, n_queries=50, n_max=8)
    oracle = oracle_for(env, 4000)
    result = get_learner("psst-k4").learner(env.problem, oracle, 4000, np.random.default_rng(0))
    screening = result.trace.rounds[0]
    assert screening.round == 0
    # rho T = 800 at N = 1: 80 per prompt
    assert screening.pulls == tuple((p, 1, 80) for p in range(10))
    assert list(screening.alive) == [4 * 8] * env.problem.n_contexts
    screened = result.trace.info["screened_prompts"]
    for chosen, kept in zip(result.choices, screened, strict=True):
        assert chosen.prompt in kept
    assert oracle.ledger.spent == 4000


def test_triple_deploys_n1_or_random_n() -> None:
    env = two_context_env()
    n1 = train_policy(env, "triple-n1", 400, 0)
    nr = train_policy(env, "triple-nrand", 400, 0)
    assert all(ch.n == 1 for ch in n1.choices)
    assert all(ch.n is None for ch in nr.choices)
    assert [c.prompt for c in n1.choices] == [c.prompt for c in nr.choices]
    # exact value of random N: the mean of Q over N (hand-computed on the test split)
    ev = evaluate_policy(env, nr)
    lo = np.mean([1 - 0.2 * 0 - 0.5**n for n in range(1, 5)])  # prompt 0 at cost weight 0
    hi_p1 = np.mean([0.6 - 0.05 * n for n in range(1, 5)])
    hi_p0 = np.mean([1 - 0.5**n - 0.2 * n for n in range(1, 5)])
    values = {0: (lo, hi_p0), 1: (0.6, hi_p1)}
    expect = 0.5 * values[nr.choices[0].prompt][0] + 0.5 * values[nr.choices[1].prompt][1]
    assert ev["acr"] == pytest.approx(expect, abs=1e-9)
    assert ev["oracle_acr"] == pytest.approx(0.5 * 0.9375 + 0.5 * 0.55, abs=1e-9)


def test_inference_aware_learning_beats_prompt_only_on_math() -> None:
    """PSST's policies on the paper's MATH data beat TRIPLE (N = 1) by a wide margin."""
    from iapo.envs import get_environment

    env = get_environment("math")
    psst_r, triple_r = [], []
    for seed in range(8):
        psst_r.append(evaluate_policy(env, train_policy(env, "psst", 5000, seed))["regret"])
        triple_r.append(evaluate_policy(env, train_policy(env, "triple-n1", 5000, seed))["regret"])
    assert np.mean(psst_r) < np.mean(triple_r) - 0.01


def test_regret_parts_split_a_hand_worked_regret() -> None:
    # Q[c, p, n-1] for 2 contexts, 2 prompts, N = 1..3
    q = np.array([
        [[0.5, 0.6, 0.7], [0.65, 0.66, 0.64]],  # best arm (0, 3): 0.7
        [[0.2, 0.3, 0.1], [0.4, 0.35, 0.3]],   # best arm (1, 1): 0.4
    ])
    chosen = [Choice(1, 3, 0.0, 0), Choice(0, None, 0.0, 0)]
    prompt, scale = regret_parts(q, chosen)
    # context 0: prompt 1 at best reaches 0.66 (prompt part 0.04), N = 3 gives 0.64 (0.02)
    # context 1: prompt 0 at best reaches 0.3 (0.1), the average over N is 0.2 (0.1)
    np.testing.assert_allclose(prompt, [0.04, 0.1])
    np.testing.assert_allclose(scale, [0.02, 0.1])
    np.testing.assert_allclose(prompt + scale, [0.7 - 0.64, 0.4 - 0.2])
    best = [Choice(0, 3, 0.0, 0), Choice(1, 1, 0.0, 0)]
    assert not np.any(np.concatenate(regret_parts(q, best)))


def test_model_learners_refuse_an_estimator_they_would_ignore() -> None:
    from iapo.learners import get_learner

    for name in ("psst-model", "psst-model4"):
        with pytest.raises(ValueError, match="takes no 'subsets' estimator"):
            get_learner(f"{name}:subsets")
        with pytest.raises(ValueError, match="takes no 'subsets' estimator"):
            get_learner(name, "subsets")
        assert get_learner(name).name == name
    assert get_learner("psst:subsets").name == "psst:subsets"
