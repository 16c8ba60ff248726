"""The continual-learning core (iapo.continual): group means, the drift detector, learning
pulls, switches on fresh evidence, and the drift response, against hand-worked values and
brute-force recursions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy.stats import norm

from iapo.continual import (
    BASELINE_GROUPS,
    BETS,
    FRESH_GROUPS,
    MIN_GROUPS,
    PRIOR_GROUPS,
    Continual,
    ContinualSettings,
    DriftMonitor,
    Flag,
    GroupTable,
    TrafficSplit,
    retraining_waits,
    shrunk_variance,
    utility_bounds,
)
from iapo.envs.tabular import MVEnvironment
from iapo.errors import InputError
from iapo.problem import (
    Choice,
    ContextGrid,
    CostObjective,
    Objective,
    Problem,
    Stopping,
    arm_at,
)
from iapo.pulls import Observation

COST = (0.01, 0.02, 0.03)
CW = {"low": 0.0, "high": 1.0}


def env3() -> MVEnvironment:
    """Three prompts, four queries, answers 0 (gold) or 1; N_max 4."""
    probs = np.zeros((3, 4, 2))
    probs[:, :, 0] = [[0.9] * 4, [0.6] * 4, [0.3] * 4]
    probs[:, :, 1] = 1 - probs[:, :, 0]
    return MVEnvironment("env3", probs, np.zeros(4, dtype=int), list(COST), CW, 4,
                         cacheable=False)


def group(prompt: int, labels: list[list[int]]) -> Observation:
    """Groups of ``prompt`` with the given answers (gold 0) on query 0."""
    lab = np.array(labels, dtype=np.int16)
    scores = np.empty(lab.shape + (2,))
    scores[..., 0] = lab == 0
    scores[..., 1] = COST[prompt]
    return Observation(prompt, lab.shape[1], np.zeros(lab.shape[0], dtype=np.int64), scores,
                       lab, np.zeros(lab.shape[0], dtype=np.int16))


# ---------------------------------------------------------------- group means


def test_group_means_by_hand() -> None:
    """Answers [gold, gold, wrong, gold] of prompt 1: n=1 blocks 1,1,0,1 -> 3/4; n=2 blocks
    [g,g] credit 1 and [w,g] a tie, credit 1/2 -> 3/4; n=3 [g,g,w] -> 1; n=4 -> 1. In the
    'high' context every sample also pays n x 0.02."""
    env = env3()
    util, prompts, n, grp = GroupTable(env.problem).group_means([group(1, [[0, 0, 1, 0]])])
    assert prompts.tolist() == [1, 1, 1, 1] and n.tolist() == [1, 2, 3, 4]
    assert grp.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(util[:, 0], [0.75, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(util[:, 1], [0.75 - 0.02, 0.75 - 0.04, 1.0 - 0.06, 1.0 - 0.08])


def test_group_table_counts_groups_not_blocks() -> None:
    """Two groups of 4 are two samples of every (p, n <= 4), whatever their blocks."""
    table = GroupTable(env3().problem)
    table.update([group(0, [[0, 0, 0, 0], [1, 1, 1, 1]])])
    assert table.counts[0].tolist() == [2, 2, 2, 2]
    np.testing.assert_allclose(table.mean[0, 0], [0.5, 0.5, 0.5, 0.5])


def test_shrunk_variance_by_hand() -> None:
    """(k v + 5 t) / (k + 5): 10 groups of variance 0 next to a typical 0.2 claim 1/15."""
    assert PRIOR_GROUPS == 5
    assert shrunk_variance(0.0, 10, 0.2) == pytest.approx(10 * 0 / 15 + 5 * 0.2 / 15)
    assert shrunk_variance(0.3, 1000, 0.2) == pytest.approx((300 + 1) / 1005)


def test_utility_bounds_by_hand() -> None:
    """Correctness in [0, 1]; a completion costs at most the largest prompt cost, 0.03, so
    arm (., 3) in 'high' (cost weight 1) ranges over [-0.09, 1], in 'low' over [0, 1]."""
    lo, hi = utility_bounds(env3().problem, 3)
    np.testing.assert_allclose(lo, [0.0, -0.09])
    np.testing.assert_allclose(hi, [1.0, 1.0])


# ---------------------------------------------------------------- the drift detector


def brute_sr(m0: float, xs: list[float], threshold: float) -> int:
    """Shiryaev-Roberts by its recursion, one sample at a time, one R per bet."""
    r = [0.0] * len(BETS)
    for t, x in enumerate(xs):
        for j, f in enumerate(BETS):
            r[j] = (r[j] + 1) * (1 + f / (1 - m0) * (m0 - x))
        if sum(r) / len(r) >= threshold:
            return t
    return -1


@pytest.mark.parametrize("m0,p", [(0.7, 0.4), (0.5, 0.45), (0.9, 0.2)])
def test_detector_matches_its_recursion(m0: float, p: float) -> None:
    rng = np.random.default_rng(3)
    xs = (rng.random(400) < p).astype(float).tolist()
    mon = DriftMonitor(threshold=50.0, m0=np.array([m0]),
                       log_r=np.full((1, len(BETS)), -np.inf))
    # in three chunks: the state carries over
    got, offset = -1, 0
    for chunk in (xs[:7], xs[7:150], xs[150:]):
        hit = mon.update(0, chunk)
        if hit >= 0:
            got = offset + hit
            break
        offset += len(chunk)
    assert got == brute_sr(m0, xs, 50.0)
    assert got >= 0  # a mean well below m0 is found


def test_detector_false_alarms_within_the_bound() -> None:
    """Samples whose mean is m0: the chance of an alarm within H samples is at most
    H / threshold (Ville); with threshold = H / 0.2, at most 0.2 (here well under)."""
    rng = np.random.default_rng(0)
    h, runs, alarms = 300, 400, 0
    for _ in range(runs):
        mon = DriftMonitor.for_tests(1, h, 0.2)
        mon.start(0, 0.6)
        alarms += mon.update(0, (rng.random(h) < 0.6).astype(float)) >= 0
    assert alarms / runs <= 0.2
    assert DriftMonitor.for_tests(3, h, 0.2).threshold == pytest.approx(3 * h / 0.2)


def test_detector_off_until_started() -> None:
    mon = DriftMonitor.for_tests(2, 100, 0.05)
    assert not mon.active(0)
    assert mon.update(0, np.zeros(1000)) == -1
    mon.start(1, 0.5)
    assert mon.active(1) and not mon.active(0)


# ---------------------------------------------------------------- the learner


def learner(settings: ContinualSettings, training: list[Observation] | None = None,
            served: tuple[tuple[int, int], ...] = ((1, 4), (1, 4))) -> Continual:
    env = env3()
    return Continual(env.problem, settings, training or [],
                     [Choice(p, n, 0.0, 0) for p, n in served])


def test_settings_refuse_bad_values() -> None:
    for bad in ({"learn_budget": 1.5}, {"refine_every": 0}, {"confidence": 1.0},
                {"alarm": 0.0}, {"min_gain": -0.1}, {"candidates": 0}, {"recovery": -1},
                {"recovery": 1.5}, {"moves": "model"}, {"retrain": -1}, {"retrain": 1.5},
                {"retrain": True}):
        with pytest.raises(InputError):
            ContinualSettings(**bad)  # type: ignore[arg-type]


def test_learning_never_exceeds_its_budget() -> None:
    """Whatever is served, the completions drawn for learning stay within F x served."""
    rng = np.random.default_rng(1)
    for budget in (0.0, 0.03, 0.5):
        cont = learner(ContinualSettings(learn_budget=budget))
        for _ in range(200):
            cont.record_served(1, int(rng.integers(1, 5)))
            drawn = sum(p.cost for p in cont.learning_pulls())
            assert drawn <= cont.allowance() + drawn  # charged as drawn
            assert cont.learning_completions <= budget * cont.served_completions + 1e-9
        if budget:
            # what is left unspent is less than one group of the largest scale
            assert budget * cont.served_completions - cont.learning_completions < 4 + 1e-9


def test_retraining_saves_the_budget_and_moves_every_context() -> None:
    """With retrain = 100: no learning pull is drawn; after 100 requests of 4 completions
    the saved budget is 10% of 400 = 40; a retraining that spends 38 moves both contexts to
    its choices (reason "retrain"), ends a recovery and takes in its groups; the next one is
    due at request 200, with 10% of 800 less 38 = 42."""
    settings = ContinualSettings(learn_budget=0.1, refine_every=50, retrain=100)
    cont = learner(settings)
    cont.record_served(50, 200)
    assert cont.learning_pulls() == [] and cont.retrain_budget() == 0
    cont.record_served(50, 200)
    assert cont.learning_pulls() == [] and cont.retrain_budget() == 40
    cont._recovering[:] = 2
    with pytest.raises(InputError, match="outside the 40 it was given"):
        cont.retrained([Choice(2, 1, 0.0, 0), Choice(0, 3, 0.0, 0)], [], 41)
    before = cont.table.counts[2, 0]
    moved = cont.retrained([Choice(2, 1, 0.0, 0), Choice(0, 3, 0.0, 0)],
                           [group(2, [[0], [1], [0]])], 38)
    assert cont.served_arms() == [(2, 1), (0, 3)]
    assert [(s.context, s.old, s.new, s.reason) for s in moved] == [
        (0, (1, 4), (2, 1), "retrain"), (1, (1, 4), (0, 3), "retrain")]
    assert all(s.gain_lower == 0.0 for s in moved)  # no evidence asked: no bound
    assert (cont._recovering == 0).all()
    assert cont.table.counts[2, 0] == before + 3
    assert cont.learning_completions == 38 and cont.retrain_budget() == 0
    cont.record_served(99, 396)
    assert cont.retrain_budget() == 0
    cont.record_served(1, 4)
    assert cont.retrain_budget() == 42
    assert not cont.retrained([Choice(2, 1, 0.0, 0), Choice(0, 3, 0.0, 0)], [], 0)
    assert cont.learning_completions == 38  # what retrainings spent adds up


def test_a_retraining_is_checked_against_what_it_was_given() -> None:
    """One fixed-N arm per context, or refused; ``budget``, where given, bounds the spend
    in place of the saved allowance (here 10% of 400 = 40): 50 of 60 given is taken in,
    61 is refused."""
    cont = learner(ContinualSettings(learn_budget=0.1, refine_every=50, retrain=100))
    cont.record_served(100, 400)
    for bad in ([Choice(2, 1, 0.0, 0)], [Choice(2, 1, 0.0, 0), Choice(0, None, 0.0, 0)]):
        with pytest.raises(InputError, match="one arm with a fixed N per context"):
            cont.retrained(bad, [], 0)
    with pytest.raises(InputError, match="outside the 60 it was given"):
        cont.retrained([Choice(2, 1, 0.0, 0)] * 2, [], 61, budget=60)
    cont.retrained([Choice(2, 1, 0.0, 0)] * 2, [], 50, budget=60)
    assert cont.learning_completions == 50 and cont.served_arms() == [(2, 1), (2, 1)]


def test_a_due_retraining_waits_until_the_saved_budget_pays_every_prompt_at_n_max() -> None:
    """Three prompts at N_max 4: the floor is 12 completions. At 10%, 100 requests of one
    completion save 10 (due, but too little: 0), 20 more save 12 (spent now). The next is
    due 100 requests after that one, at 220, not at 200 on a grid of K: at 200 and at 219
    none is, though 20 and 21 are saved (above the floor); at 220, the 22 saved."""
    cont = learner(ContinualSettings(learn_budget=0.1, refine_every=50, retrain=100))
    cont.record_served(100, 100)
    assert cont.allowance() == 10 and cont.retrain_budget() == 0
    cont.record_served(20, 20)
    assert cont.retrain_budget() == 12
    cont.retrained([Choice(0, 1, 0.0, 0)] * 2, [], 12)
    cont.record_served(80, 200)  # at request 200: 20 saved, not due
    assert cont.allowance() == 20 and cont.retrain_budget() == 0
    cont.record_served(19, 19)
    assert cont.retrain_budget() == 0
    cont.record_served(1, 1)  # at request 220
    assert cont.retrain_budget() == 22


def test_no_retraining_once_contexts_ask_differently() -> None:
    """A retraining learns from every context's queries alike: once a pair of contexts has
    split (their traffics differ), none is due, whatever was saved."""
    cont = learner(ContinualSettings(learn_budget=0.5, refine_every=50, retrain=100))
    cont.record_served(100, 400)
    assert cont.retrain_budget() == 200
    cont.pools[0, 1] = cont.pools[1, 0] = False
    cont.splits.append(TrafficSplit(100, 0, 1, 1, 4, 0.9, 30, 0.1, 30, 9.0))
    assert cont.retrain_budget() == 0


def test_the_retraining_rule_by_hand() -> None:
    """Every K = 100 requests, a floor of 12: due at exactly 100 requests since the last with
    exactly 12 saved; one request short or one completion short waits, and says which; a
    split waits whatever else holds."""
    assert retraining_waits(100, 100, 12, 12, False) is None
    assert retraining_waits(100, 250, 40, 12, False) is None
    assert retraining_waits(100, 99, 12, 12, False) == \
        "99 of 100 requests since the last retraining"
    assert retraining_waits(100, 100, 11, 12, False) == (
        "11 completions saved of the 12 that a retraining needs (one group of N_max of every "
        "prompt)")
    split = ("some contexts ask differently (a traffic split, in the report); a retraining "
             "learns from every context's queries alike, so none is run")
    assert retraining_waits(100, 100, 12, 12, True) == split
    assert retraining_waits(100, 0, 0, 12, True) == split


def test_without_retraining_nothing_is_saved_for_it() -> None:
    cont = learner(ContinualSettings(learn_budget=0.5, refine_every=50))
    cont.record_served(1000, 4000)
    assert cont.retrain_budget() == 0 and cont.learning_pulls()


def test_candidates_by_hand() -> None:
    """Prompt 0 is known and better than the served (1, 4), prompt 2 known and clearly
    worse; prompt 1's other N have data too. With candidates=1 the context keeps the prompt
    of the highest upper bound, pulled at the served N = 4."""
    cont = learner(ContinualSettings(candidates=1, confidence=0.95))
    t = cont.table
    # a direct state: 100 groups per arm, means 0.9 / 0.6 / 0.1 for prompts 0, 1, 2
    for p, m in ((0, 0.9), (1, 0.6), (2, 0.1)):
        t.counts[p] = 100
        t.sums[:, p] = 100 * m
        t.sumsq[:, p] = 100 * (m * m + 0.01)
    cand, scale = cont.candidates()
    assert cand.tolist() == [[True, False, False], [True, False, False]]
    assert scale.tolist() == [4, 0, 0]
    cont2 = learner(ContinualSettings(candidates=3))
    cont2.table.counts[:] = 0  # nothing seen: every prompt is a candidate
    cand2, scale2 = cont2.candidates()
    assert cand2.all() and scale2.tolist() == [4, 4, 4]


def test_turns_alternate_between_challengers_and_candidates() -> None:
    cont = learner(ContinualSettings(learn_budget=1.0, candidates=3))
    cont.challenger[:] = [2 * 4 + 1, -1]  # context 0 challenges with (2, 2)
    cont._explore = [(0, 4), (1, 3)]
    cont.record_served(10, 40)
    pulls = [(p.prompt, p.n) for p in cont.learning_pulls()]
    assert pulls[:6] == [(2, 2), (0, 4), (2, 2), (1, 3), (2, 2), (0, 4)]
    assert sum(n for _, n in pulls) <= 40


def z_switch(settings: ContinualSettings) -> float:
    """The switch test's one-sided quantile: Bonferroni over a context's looks, one per
    refit within the horizon."""
    looks = settings.horizon // settings.refine_every
    return float(norm.ppf(1 - (1 - settings.confidence) / looks))


def fresh_by_hand(right: int, wrong: int) -> tuple[float, float, int]:
    """Mean, sample variance and count of fresh 0/1 samples in context 0 (range [0, 1])
    with one sample more at each end: a 0 and a 1."""
    x = np.array([1.0] * right + [0.0] * wrong + [0.0, 1.0])
    return float(x.mean()), float(x.var(ddof=1)), x.size


def served_groups(prompt: int, correct: int, wrong: int, size: int = 4) -> Observation:
    """``correct`` all-gold groups and ``wrong`` all-wrong groups of ``prompt``."""
    return group(prompt, [[0] * size] * correct + [[1] * size] * wrong)


def test_switch_only_on_fresh_evidence() -> None:
    """Prompt 0 looks better on old data: its arm of highest mean, (0, 1) (all its N tie at
    0.9 in 'low', and one completion costs least in 'high'; ties go to the first arm),
    becomes the challenger, but the switch waits for FRESH_GROUPS samples drawn after it was
    named, and their gain's lower bound."""
    settings = ContinualSettings(refine_every=10, confidence=0.95)
    training = [served_groups(1, 60, 40), served_groups(0, 9, 1)]
    cont = learner(settings, training)
    assert cont.table.counts[0, 3] == 10 == MIN_GROUPS
    cont.record_served(10, 40)
    assert cont.refit() == []
    b = 0  # (0, 1)
    assert cont.challenger.tolist() == [b, b]
    # FRESH_GROUPS - 1 fresh samples: undecided
    cont.observe([served_groups(0, FRESH_GROUPS - 1, 0)])
    cont.record_served(10, 40)
    assert cont.refit() == [] and cont.challenger.tolist() == [b, b]
    # one more: fresh mean 1 against the served 0.6; the bound is passed
    cont.observe([served_groups(0, 1, 0)])
    cont.record_served(10, 40)
    switches = cont.refit()
    assert [(s.context, s.old, s.new, s.reason) for s in switches] == [
        (0, (1, 4), (0, 1), "evidence"), (1, (1, 4), (0, 1), "evidence")]
    # the bound, by hand for context 0: 30 fresh samples of 1, with a 0 and a 1 added
    mean_a = 0.6
    typical = float(np.nanmedian(cont.table.variance[0].reshape(-1)))
    m_b, var_b, k = fresh_by_hand(FRESH_GROUPS, 0)
    assert (m_b, k) == (31 / 32, 32)
    se_a = math.sqrt(shrunk_variance(0.24 * 100 / 99, 100, typical) / 100)
    lower = m_b - mean_a - z_switch(settings) * math.sqrt(var_b / k + se_a ** 2)
    assert switches[0].gain_lower == pytest.approx(lower, rel=1e-6)


def test_no_switch_when_fresh_samples_disappoint() -> None:
    settings = ContinualSettings(refine_every=10)
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.record_served(10, 40)
    cont.refit()
    cont.observe([served_groups(0, FRESH_GROUPS // 2, FRESH_GROUPS - FRESH_GROUPS // 2)])
    cont.record_served(10, 40)
    assert cont.refit() == []
    assert cont.served_arms() == [(1, 4), (1, 4)]


def test_a_challenger_no_better_on_its_fresh_samples_is_dropped() -> None:
    """Fresh mean 0.5 against the served 0.6: the gain's estimate is not above 0, so the
    challenger is dropped; a challenger named after it counts its fresh samples from 0."""
    settings = ContinualSettings(refine_every=10)
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.record_served(10, 40)
    cont.refit()
    cont.observe([served_groups(0, FRESH_GROUPS // 2, FRESH_GROUPS - FRESH_GROUPS // 2)])
    assert cont._fresh[:, :, 2].sum(axis=1).tolist() == [FRESH_GROUPS] * 2
    cont.record_served(10, 40)
    assert cont.refit() == []
    assert 0 not in cont.challenger.tolist()  # (0, 1) dropped in both contexts
    assert all(cont._fresh[c, :, 2].sum() == 0 for c in range(2) if cont.challenger[c] >= 0)


def test_a_challenger_keeps_its_fresh_samples_until_they_decide() -> None:
    """Horizon 100 requests, a refit every 10: 10 looks, so the bound is one-sided at
    1 - 0.05 / 10. 22 right and 8 wrong fresh samples of (0, 1) against the served 0.6 on
    100 groups: the gain's estimate (0.133) is positive but its lower bound is not, so the
    challenger stays and gathers; 90 right and 10 wrong more (130 in all) clear it. Both
    bounds by hand."""
    settings = ContinualSettings(refine_every=10, horizon=100)
    z = float(norm.ppf(1 - 0.05 / 10))
    assert z_switch(settings) == pytest.approx(z)
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.record_served(10, 40)
    cont.refit()
    b = int(cont.challenger[0])
    cont.observe([served_groups(0, 22, 8)])
    typical = float(np.nanmedian(cont.table.variance[0].reshape(-1)))
    se_a = math.sqrt(shrunk_variance(0.24 * 100 / 99, 100, typical) / 100)

    def lower(right: int, k: int) -> float:
        m_b, var_b, k2 = fresh_by_hand(right, k - right)
        return m_b - 0.6 - z * math.sqrt(var_b / k2 + se_a ** 2)

    assert lower(22, 30) < 0 < fresh_by_hand(22, 8)[0] - 0.6
    cont.record_served(10, 40)
    assert cont.refit() == []
    assert cont.challenger.tolist() == [b, b]
    assert cont._fresh[:, :, 2].sum(axis=1).tolist() == [30, 30]
    cont.observe([served_groups(0, 90, 10)])
    typical = float(np.nanmedian(cont.table.variance[0].reshape(-1)))
    se_a = math.sqrt(shrunk_variance(0.24 * 100 / 99, 100, typical) / 100)
    assert lower(112, 130) > 0
    cont.record_served(10, 40)
    (switch, _) = cont.refit()
    assert switch.new == arm_at(b, 4)
    assert switch.gain_lower == pytest.approx(lower(112, 130), rel=1e-6)


def test_the_switch_level_holds_over_the_horizon_not_each_look() -> None:
    """The same fresh samples (24 right, 6 wrong against the served 0.6) switch when the
    horizon holds one look (the bound at 95%) and not when it holds 2,000 (at
    1 - 0.05 / 2,000)."""
    for horizon, switches in ((10, 1), (20_000, 0)):
        settings = ContinualSettings(refine_every=10, horizon=horizon)
        cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
        cont.record_served(10, 40)
        cont.refit()
        cont.observe([served_groups(0, 24, 6)])
        cont.record_served(10, 40)
        assert len(cont.refit()) == 2 * switches  # both contexts alike


def test_equal_arms_rarely_switch_over_the_horizon() -> None:
    """Known property: where the challenger is no better (both prompts 0.6 accurate), a
    context switches within the horizon (20 refits) with probability at most 5%. 100
    seeded runs of 20 refits, each 60 served groups and 60 of the other prompt in random
    order: in context 0, at most 5% + 3 SEMs switch. At one look's level (a horizon of one
    refit) the same runs switch in about 30%."""

    def groups(prompt: int, right: npt.NDArray[np.int64]) -> Observation:
        return group(prompt, [[0] * 4 if r else [1] * 4 for r in right])

    runs = 100
    share = {}
    for horizon in (1200, 60):
        switched = 0
        for seed in range(runs):
            rng = np.random.default_rng(seed)
            cont = learner(ContinualSettings(refine_every=60, horizon=horizon),
                           [served_groups(1, 60, 40), served_groups(0, 6, 4)])
            for _ in range(20):
                right = rng.binomial(1, 0.6, 120)
                cont.observe([groups(0, right[:60]), groups(1, right[60:])])
                cont.record_served(60, 240)
                cont.refit()
            switched += any(s.context == 0 for s in cont.switches)
        share[horizon] = switched / runs
    assert share[1200] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert share[60] > 0.2


def test_a_challenger_is_compared_on_the_traffic_its_samples_came_from() -> None:
    """Two contexts that still pool (too few groups on a common arm to test their traffic),
    one easy, one hard. The served (1, 4) is 0.9 on context 0's traffic (20 groups) and 0.3
    on context 1's (100); the challenger's fresh samples all come from context 0's traffic,
    at 0.85. Within that traffic it is worse than the served arm in context 0 (0.85 against
    0.9), so it is dropped there (in context 1, where one completion costs less than four,
    it is a little better and not yet decided); judged against the served arm's pooled mean
    (0.4) it would switch in both, as it does where the learner is not told the origins."""

    def run(origins: bool) -> list[tuple[int, int]]:
        cont = learner(ContinualSettings(refine_every=10))
        first = [served_groups(1, 18, 2), served_groups(1, 30, 70), served_groups(0, 9, 1)]
        cont.observe(first, [0, 1, 0] if origins else None)
        cont.record_served(10, 40)
        cont.refit()
        assert cont.shared.all() and [arm_at(int(b), 4)[0] for b in cont.challenger] == [0, 0]
        old = cont.challenger.copy()
        cont.observe([served_groups(0, 34, 6)], [0] if origins else None)
        # the 40 fresh samples sit in context 0's stratum (or in "unknown" without origins)
        assert cont._fresh[:, 0 if origins else 2, 2].tolist() == [40, 40]
        assert cont._fresh[:, :, 2].sum() == 80
        cont.record_served(10, 40)
        cont.refit()
        assert cont.shared.all()
        if origins:  # context 0: judged and dropped, no better within context 0's traffic
            assert cont.challenger[0] != old[0] or cont._fresh[0, :, 2].sum() == 0
        return cont.served_arms()

    assert run(origins=True) == [(1, 4), (1, 4)]
    assert all(p == 0 for p, _ in run(origins=False))


def test_the_served_arm_is_weighted_as_the_fresh_samples_by_hand() -> None:
    """Context 0. The served (1, 4): 100 training groups at 0.6 (no known origin), 40 on
    context 0's traffic at 0.5, 50 on context 1's at 0.8 (too alike to split at this
    level). The challenger's fresh samples: 30 on context 0's traffic, 10 on context 1's
    and 10 of no known origin, 45 right of 50. The served arm's mean within the same
    traffic weighs its three means 0.6 / 0.2 / 0.2 (the unknown one being training's alone,
    not all its groups); the gain's lower bound by hand."""
    settings = ContinualSettings(refine_every=10)
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.observe([served_groups(1, 20, 20), served_groups(1, 40, 10)], [0, 1])
    cont.record_served(10, 40)
    cont.refit()
    assert cont.shared.all() and arm_at(int(cont.challenger[0]), 4)[0] == 0
    cont.observe([served_groups(0, 27, 3), served_groups(0, 9, 1), served_groups(0, 9, 1)],
                 [0, 1, -1])
    typical = float(np.nanmedian(cont.table.variance[0].reshape(-1)))
    cont.record_served(10, 40)
    (switch, _) = cont.refit()
    assert switch.context == 0 and switch.reason == "evidence"
    m_b, var_b, k_b = fresh_by_hand(45, 5)
    w = np.array([30, 10, 10]) / 50
    right = np.array([20, 40, 60])  # the served arm's groups by origin: 0, 1, unknown
    groups = np.array([40, 50, 100])
    m_a = right / groups
    var_a = shrunk_variance(m_a * (1 - m_a) * groups / (groups - 1), groups, typical)
    assert float(w @ m_a) == pytest.approx(0.6 * 0.5 + 0.2 * 0.8 + 0.2 * 0.6)
    want = m_b - float(w @ m_a) - z_switch(settings) * math.sqrt(
        var_b / k_b + float(w * w @ (var_a / groups)))
    assert switch.gain_lower == pytest.approx(want, rel=1e-6)


def test_a_gain_no_larger_than_the_minimum_drops_the_challenger() -> None:
    """min_gain 0.2: fresh samples 21 right of 30 (0.6875 with a 0 and a 1 added) against
    the served 0.6: a gain of 0.0875, above 0 but not above the minimum, drops the
    challenger rather than keeping it."""
    settings = ContinualSettings(refine_every=10, min_gain=0.2)
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.record_served(10, 40)
    cont.refit()
    old = int(cont.challenger[0])
    cont.observe([served_groups(0, 21, 9)])
    assert fresh_by_hand(21, 9)[0] - 0.6 == pytest.approx(0.0875)
    cont.record_served(10, 40)
    assert cont.refit() == []
    assert cont.challenger[0] != old or cont._fresh[0, :, 2].sum() == 0


def test_min_gain_holds_a_switch_back() -> None:
    settings = ContinualSettings(refine_every=10, min_gain=0.5)
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.record_served(10, 40)
    cont.refit()
    cont.observe([served_groups(0, FRESH_GROUPS, 0)])
    cont.record_served(10, 40)
    assert cont.refit() == []  # a gain of at most 0.4 cannot clear 0.5


def test_drift_flags_and_moves_the_contexts() -> None:
    """A baseline from BASELINE_GROUPS served samples at 0.9; then the served prompt answers
    wrong: a flag, the prompt keeps only what came after the baseline, and both contexts move
    to the arm the per-query model ranks first. Prompt 2 answers right 70% of the time on
    query 0 (in groups of one N only, (2, 4)). By hand, a vote of N at 0.7 is right with
    probability 0.7 (N = 1, 2) and 0.784 (N = 3, 4): in 'high' (cost weight 1, 0.03 a
    completion) (2, 3) at 0.694 beats (2, 1) at 0.67 and (2, 4) at 0.664; in 'low' (no cost)
    N = 3 and 4 tie (the model's posterior, which keeps a little mass for a third answer,
    puts 4 ahead by 0.0006). Prompt 0 had answered right 90% of 240 times before the
    baseline: had the model kept those answers, it would rank prompt 0 first."""
    settings = ContinualSettings(refine_every=10, alarm=0.05, horizon=1000)
    training = [served_groups(2, 70, 30)]  # prompt 2 at 0.7 on 100 groups
    cont = learner(settings, training, served=((0, 4), (0, 4)))
    cont.observe([served_groups(0, 54, 6)])  # 60 served samples at 0.9
    cont.record_served(10, 40)
    cont.refit()  # the first baselines
    assert all(cont.monitor.active(t) for t in range(4))
    flags = []
    for _ in range(40):
        flags += cont.observe([served_groups(0, 0, 5)])
        if flags:
            break
    assert flags and {f.context for f in flags} == {0, 1} and cont.flags == flags
    assert flags[0].prompt == 0 and flags[0].live == 0.0
    assert cont.table.counts[0, 3] < BASELINE_GROUPS  # only the samples since the baseline
    low, high = cont.served_arms()
    assert low in ((2, 3), (2, 4)) and high == (2, 3)
    assert [s.reason for s in cont.switches] == ["drift", "drift"]


def test_no_flag_without_drift() -> None:
    settings = ContinualSettings(refine_every=10)
    cont = learner(settings, served=((0, 4), (0, 4)))
    rng = np.random.default_rng(5)
    for _ in range(60):
        right = int(rng.binomial(5, 0.8))
        cont.observe([served_groups(0, right, 5 - right)])
        cont.record_served(5, 20)
        if cont.due():
            cont.refit()
    assert cont.flags == []


def set_arm(cont: Continual, prompt: int, n: int, groups: int, mean: float, var: float
            ) -> None:
    """Put ``groups`` samples of mean ``mean`` and variance ``var`` on arm (prompt, n) in
    every context."""
    t = cont.table
    t.counts[prompt, n - 1] = groups
    t.sums[:, prompt, n - 1] = groups * mean
    t.sumsq[:, prompt, n - 1] = (groups - 1) * var + groups * mean * mean


def test_challenger_is_the_arm_most_likely_better() -> None:
    """Served (1, 4) at 0.6 on 1,000 groups. (0, 4) has the higher mean, 0.75, but on 10
    groups; (2, 4) is 0.65 on 1,000: it is more likely better, so it is the challenger."""
    cont = learner(ContinualSettings())
    cont.table.counts[:] = 0
    set_arm(cont, 1, 4, 1000, 0.6, 0.24)
    set_arm(cont, 0, 4, 10, 0.75, 0.1875)
    set_arm(cont, 2, 4, 1000, 0.65, 0.2275)
    cont.challenger[:] = -1
    cont._name_challengers()
    assert cont.challenger.tolist() == [2 * 4 + 3] * 2
    # with no arm beating the served one, no challenger
    cont.challenger[:] = -1
    set_arm(cont, 2, 4, 1000, 0.55, 0.2475)
    set_arm(cont, 0, 4, 10, 0.5, 0.25)
    cont._name_challengers()
    assert cont.challenger.tolist() == [-1, -1]


def drop_after_baseline(cont: Continual, accuracy: float) -> list[Flag]:
    """Prompt 0 served on 60 groups at 0.9 and the first baselines taken; then groups of 5
    of it right with probability ``accuracy`` (seeded) until a flag (at most 200)."""
    cont.observe([served_groups(0, 54, 6)])
    cont.record_served(10, 40)
    cont.refit()
    rng = np.random.default_rng(2)
    flags: list[Flag] = []
    for _ in range(200):
        right = int(rng.binomial(5, accuracy))
        flags += cont.observe([served_groups(0, right, 5 - right)])
        if flags:
            break
    return flags


@pytest.mark.parametrize("recovery", [0, 1, 2])
def test_after_a_flag_a_context_follows_the_model_for_its_recovery_refits(
        recovery: int) -> None:
    """After the flag (both contexts move to prompt 2, as above), prompt 1 answers right on
    20 groups: too few for evidence (FRESH_GROUPS), but the model now ranks it first, so a
    context still recovering moves to it at the next refit; without recovery it stays. Then
    prompt 1 answers wrong on 200 groups: the model ranks it below prompt 2 again, and only a
    context with a second refit of recovery moves away."""
    settings = ContinualSettings(refine_every=10, alarm=0.05, horizon=1000, recovery=recovery)
    cont = learner(settings, [served_groups(2, 70, 30)], served=((0, 4), (0, 4)))
    assert drop_after_baseline(cont, 0.0)
    assert [p for p, _ in cont.served_arms()] == [2, 2]
    cont.observe([served_groups(1, 20, 0)])
    cont.record_served(10, 40)
    cont.refit()
    assert [p for p, _ in cont.served_arms()] == ([1, 1] if recovery else [2, 2])
    cont.observe([served_groups(1, 0, 200)])
    cont.record_served(10, 40)
    moved = cont.refit()
    assert [p for p, _ in cont.served_arms()] == ([2, 2] if recovery != 1 else [1, 1])
    assert all(s.reason == "drift" for s in moved)
    assert (cont._recovering == 0).all()


@pytest.mark.parametrize("recovering", [False, True])
def test_a_recovering_context_does_not_judge_its_challenger(recovering: bool) -> None:
    """Prompt 1 served at 0.9 on 1,000 groups, and the model sees no other prompt: in 'low'
    (no cost) it ranks (1, 4) first, so a recovering context stays. The challenger (2, 1)
    holds 200 fresh samples all 1 (with a 0 and a 1 added, 0.995 against 0.9): evidence
    enough to switch 'low' (10 looks), but only if it is no longer recovering."""
    settings = ContinualSettings(refine_every=10, horizon=100)
    cont = learner(settings, [served_groups(1, 900, 100)])
    cont.challenger[:] = 2 * 4 + 0  # (2, 1)
    cont._fresh[:, -1] = [200.0, 200.0, 200.0]  # sum, sum of squares, count: 200 ones
    cont._recovering[0] = 1 if recovering else 0
    cont.record_served(10, 40)
    low = [(s.new, s.reason) for s in cont.refit() if s.context == 0]
    if recovering:
        assert low == [] and cont.served_arms()[0] == (1, 4) and cont.challenger[0] == 8
    else:
        assert low == [((2, 1), "evidence")]


def on_queries(prompt: int, right: int, wrong: int, first: int = 0) -> Observation:
    """Groups of 4 of ``prompt``, one per query (``first``, ``first`` + 1, ...): ``right`` all
    gold, then ``wrong`` all wrong."""
    obs = served_groups(prompt, right, wrong)
    return Observation(prompt, 4, np.arange(first, first + right + wrong), obs.scores,
                       obs.labels, obs.gold)


def test_a_pessimistic_estimate_is_the_models_less_one_standard_error() -> None:
    """Prompt 1 on 40 queries (36 all gold, 4 all wrong), prompt 2 on 2 (all gold). Each
    query's credit is that of a model fitted on it alone; by hand, the variance over a
    prompt's queries (ddof 1) is shrunk toward the median prompt's, (k v + 5 t) / (k + 5),
    and the estimate is the model's less PESSIMISM x sqrt(that / k)."""
    training = [on_queries(1, 36, 4), on_queries(2, 2, 0, first=40)]
    cont = learner(ContinualSettings(moves="pessimistic"), training)
    env = env3()
    from iapo.model import ModelQTable

    def alone(obs: Observation, prompt: int) -> npt.NDArray[np.float64]:
        m = ModelQTable(env.problem)
        m.update([obs])
        return np.asarray(m.mean[0, prompt])  # 'low': no cost

    gold, wrong = alone(on_queries(1, 1, 0), 1), alone(on_queries(1, 0, 1), 1)
    c1 = np.array([gold] * 36 + [wrong] * 4)
    v1, v2 = c1.var(axis=0, ddof=1), np.zeros(4)
    typical = (v1 + v2) / 2  # the median of two prompts' variances
    se1 = np.sqrt((40 * v1 + PRIOR_GROUPS * typical) / (40 + PRIOR_GROUPS) / 40)
    se2 = np.sqrt((2 * v2 + PRIOR_GROUPS * typical) / (2 + PRIOR_GROUPS) / 2)
    from iapo.continual import PESSIMISM

    got = cont._model_means(0, {}).reshape(3, 4)
    np.testing.assert_allclose(got[1], c1.mean(axis=0) - PESSIMISM * se1, atol=1e-12)
    np.testing.assert_allclose(got[2], gold - PESSIMISM * se2, atol=1e-12)
    assert np.isnan(got[0]).all()
    plain = learner(ContinualSettings(), training)._model_means(0, {}).reshape(3, 4)
    np.testing.assert_allclose(plain[1], c1.mean(axis=0), atol=1e-12)


def test_pessimistic_moves_wait_for_queries_and_never_judge_challengers() -> None:
    """Prompt 1 (served) on 40 queries, 39 all gold; prompt 2 on 2, all gold. The model's
    credit of prompt 2 beats prompt 1's, by 1/40 of a query's, but on 2 queries its
    pessimistic estimate does not (its error, about 0.055, against prompt 1's 0.021): no
    move at the refit. On 30 queries more, all gold, it does: both contexts move to it,
    reason "model", with no drift flag. The evidence rule (the default) moves neither on the
    same data: the model moves it only after a flag."""
    training = [on_queries(1, 39, 1), on_queries(2, 2, 0, first=40)]
    for moves in ("pessimistic", "evidence"):  # each context serves prompt 1's best arm
        cont = learner(ContinualSettings(refine_every=10, moves=moves), training,
                       served=((1, 3), (1, 1)))
        plain = cont._model_means(0, {}) if moves == "evidence" else None
        assert plain is None or plain.reshape(3, 4)[2, 2] > plain.reshape(3, 4)[1, 2]
        cont.record_served(10, 40)
        assert cont.refit() == []
        cont.observe([on_queries(2, 30, 0, first=50)])
        cont.record_served(10, 40)
        moved = cont.refit()
        if moves == "pessimistic":
            assert cont.served_arms() == [(2, 3), (2, 1)]
            assert {s.reason for s in moved} == {"model"}
        else:
            assert moved == [] and cont.served_arms() == [(1, 3), (1, 1)]


def test_a_pessimistic_estimate_weighs_by_w1_and_fills_one_querys_variance() -> None:
    """w_1 = 0.5 (the task objective at half weight) and prompt 0 on a single query: its
    variance is the typical one (the median of prompts 1 and 2's, as above), and both
    the credit and its error count at w_1 (context 'low' pays nothing)."""
    env = env3()
    grid = ContextGrid.product([Objective("correct")], [[0.5]], CW)
    problem = dataclasses.replace(env.problem, grid=grid)
    training = [on_queries(1, 36, 4), on_queries(2, 2, 0, first=40),
                on_queries(0, 1, 0, first=60)]
    cont = Continual(problem, ContinualSettings(moves="pessimistic"), training,
                     [Choice(1, 4, 0.0, 0)] * 2)
    from iapo.model import ModelQTable

    def alone(obs: Observation, prompt: int) -> npt.NDArray[np.float64]:
        m = ModelQTable(env.problem)  # w_1 = 1: the credit itself
        m.update([obs])
        return np.asarray(m.mean[0, prompt])

    gold, wrong = alone(on_queries(1, 1, 0), 1), alone(on_queries(1, 0, 1), 1)
    v1 = np.array([gold] * 36 + [wrong] * 4).var(axis=0, ddof=1)
    typical = v1 / 2  # the median of prompts 1 (v1) and 2 (0)
    se0 = np.sqrt((typical + PRIOR_GROUPS * typical) / (1 + PRIOR_GROUPS) / 1)
    from iapo.continual import PESSIMISM

    got = cont._model_means(0, {}).reshape(3, 4)
    np.testing.assert_allclose(got[0], 0.5 * (gold - PESSIMISM * se0), atol=1e-12)


def test_pessimistic_moves_judge_no_challenger() -> None:
    """The case of test_a_recovering_context_does_not_judge_its_challenger: 200 fresh
    samples of (2, 1) would switch 'low' on evidence. With pessimistic moves no challenger
    is judged: 'low' follows the model, which sees prompt 1 alone on one query (every
    variance the fallback 0.25, the same error for every N) and keeps (1, 4)."""
    settings = ContinualSettings(refine_every=10, horizon=100, moves="pessimistic")
    cont = learner(settings, [served_groups(1, 900, 100)])
    cont.challenger[:] = 2 * 4 + 0  # (2, 1)
    cont._fresh[:, -1] = [200.0, 200.0, 200.0]
    cont.record_served(10, 40)
    assert [s for s in cont.refit() if s.context == 0] == []
    assert cont.served_arms()[0] == (1, 4) and cont.challenger[0] == 8


def test_pessimistic_moves_need_majority_voting() -> None:
    with pytest.raises(InputError, match="majority"):
        bon_learner(ContinualSettings(moves="pessimistic"), [served_groups(1, 9, 1)],
                    ((1, 4), (1, 4)))


def bon_learner(settings: ContinualSettings, training: list[Observation],
                served: tuple[tuple[int, int], ...]) -> Continual:
    """env3's prompts as a Best-of-N problem: one objective (right 1, wrong 0), the same
    costs and contexts."""
    grid = ContextGrid.product([Objective("correct")], [[1.0]], CW)
    problem = Problem("bon3", "bon", ("a", "b", "c"), 4, grid, CostObjective("cost", 1.0),
                      Stopping())
    return Continual(problem, settings, training, [Choice(p, n, 0.0, 0) for p, n in served])


def test_a_best_of_n_flag_moves_to_the_well_seen_arm_of_highest_lower_bound() -> None:
    """Best-of-N (where psst-auto decides by blocks): as above, but the move is to the arm
    of highest lower bound among those seen on BASELINE_GROUPS groups, when it clears the
    flagged arm's upper bound: prompt 2's groups are all right or all wrong, so every N of
    it is at 0.7 with the same spread, and (2, 1) is first (a tie in 'low', one completion
    costs least in 'high')."""
    settings = ContinualSettings(refine_every=10, alarm=0.05, horizon=1000)
    cont = bon_learner(settings, [served_groups(2, 70, 30)], ((0, 4), (0, 4)))
    assert drop_after_baseline(cont, 0.0) and cont.served_arms() == [(2, 1), (2, 1)]
    lower, upper = cont.bounds(float(norm.ppf(settings.confidence)))
    for s in cont.switches:
        assert s.reason == "drift" and s.gain_lower == pytest.approx(
            lower[s.context, 2 * 4 + 0] - upper[s.context, 0 * 4 + 3])
    # a flagged arm whose upper bound the alternatives do not clear stays
    cont = bon_learner(settings, [served_groups(2, 50, 50)], ((0, 4), (0, 4)))
    assert drop_after_baseline(cont, 0.6)
    assert cont.switches == [] and cont.served_arms() == [(0, 4), (0, 4)]


def test_a_flag_without_a_better_arm_keeps_serving() -> None:
    """The served prompt drops from 0.9 to 0.6: a flag, but the only other prompt is at 0.5,
    below it at every N. By hand, votes of 3 and of 4 at 0.6 are right with probability
    0.648 (more than 0.6 at N = 1, 2): 'low' (no cost) keeps (0, 4) (the model puts 4 a hair
    ahead of 3, as in the test above), and 'high' moves to (0, 3), a gain of one
    completion's cost, 0.01."""
    settings = ContinualSettings(refine_every=10, horizon=1000)
    cont = learner(settings, [served_groups(2, 50, 50)], served=((0, 4), (0, 4)))
    assert drop_after_baseline(cont, 0.6)
    assert cont.served_arms() == [(0, 4), (0, 3)]
    (move,) = cont.switches
    assert move.reason == "drift" and move.gain_lower == pytest.approx(0.01, abs=1e-3)


def test_false_alarm_accounting_by_hand() -> None:
    """Two contexts (four tests), horizon 1,000 requests, refits every 10, F = 0.05, N_max 4:
    baselines at 10, 20, ..., 640 (7 per test), z = Phi^-1(1 - 0.025 / (4 x 7)); a test sees
    at most 1,000 x (1 + 0.05 x 4) = 1,200 samples; threshold 4 x 1,200 / 0.025."""
    cont = learner(ContinualSettings(horizon=1000, refine_every=10, alarm=0.05))
    assert cont._z_baseline == pytest.approx(norm.ppf(1 - 0.025 / 28))
    assert cont.monitor.threshold == pytest.approx(4 * 1200 / 0.025)


def test_utility_bounds_of_a_best_of_n_problem_by_hand() -> None:
    """Objectives in [-1, 2] and [0, 5] weighted (0.5, 0.2), cost bound 3, cost weight 0.1:
    one sample of (., 2) lies in [-0.5 - 0.6, 1 + 1] = [-1.1, 2.0]."""
    from iapo.problem import ContextGrid, CostObjective, Objective, Problem

    grid = ContextGrid.product([Objective("a", -1.0, 2.0), Objective("b", 0.0, 5.0)],
                               [(0.5, 0.2)], {"low": 0.1})
    problem = Problem("bon", "bon", ("p",), 4, grid, CostObjective(upper=3.0))
    lo, hi = utility_bounds(problem, 2)
    np.testing.assert_allclose(lo, [-0.5 + 0.0 - 0.1 * 3.0 * 2])
    np.testing.assert_allclose(hi, [1.0 + 1.0])


def test_a_flag_drops_the_challengers_of_its_prompt() -> None:
    """Context 1 serves prompt 2 and challenges it with (0, 2); prompt 0 (served in context
    0) drifts: the challenger goes, and no arm of the drifted prompt replaces it."""
    settings = ContinualSettings(refine_every=10, horizon=1000)
    cont = learner(settings, [served_groups(2, 70, 30)], served=((0, 4), (2, 4)))
    cont.observe([served_groups(0, 54, 6)])
    cont.record_served(10, 40)
    cont.refit()
    cont.challenger[1] = 0 * 4 + 1  # (0, 2)
    for _ in range(50):
        if cont.observe([served_groups(0, 0, 5)]):
            break
    assert cont.flags and all(f.context == 0 for f in cont.flags)
    assert cont.challenger[1] // 4 != 0


def test_bad_arms_are_refused() -> None:
    with pytest.raises(InputError, match="fixed N per context"):
        learner(ContinualSettings(), served=((1, 4),))
    env = env3()
    with pytest.raises(InputError, match="fixed N per context"):
        Continual(env.problem, ContinualSettings(), [],
                  [Choice(1, None, 0.0, 0), Choice(1, 4, 0.0, 0)])


def test_baselines_double_and_flags_carry_their_numbers() -> None:
    """Baselines at requests 10, 20, 40 (not 30); the flag states the baseline (the lower
    bound of the 60 samples since serving, by hand) and the mean of the samples the test saw,
    through the one that alarmed."""
    settings = ContinualSettings(refine_every=10, horizon=1000)
    cont = learner(settings, served=((0, 4), (0, 4)))
    cont.observe([served_groups(0, 54, 6)])
    starts: list[int] = []
    take = cont._baselines

    def spy() -> None:
        starts.append(cont.requests)
        take()

    cont._baselines = spy  # type: ignore[method-assign]
    for _ in range(5):
        cont.record_served(10, 40)
        cont.refit()
    assert starts == [10, 20, 40]
    z = cont._z_baseline
    # 60 samples of 0/1 with mean 0.9, and one more at each end of [0, 1]: 55 of 62 right
    sd = math.sqrt(55 * 7 / 62 / 61)
    lower = 55 / 62 - z * sd / math.sqrt(62)
    flags: list = []
    for _ in range(200):
        flags = cont.observe([served_groups(0, 0, 1)])
        if flags:
            break
    low = next(f for f in flags if f.context == 0 and f.n == 4)
    assert low.baseline == pytest.approx(lower, rel=1e-9)
    assert low.live == 0.0 and low.request == cont.requests


def test_fresh_variance_by_hand() -> None:
    """27 right and 3 wrong fresh samples, with a 0 and a 1 added: 28 of 32 right, variance
    28 x 4 / 32 / 31; the gain's lower bound by hand."""
    settings = ContinualSettings(refine_every=10, horizon=10)  # one look: at 95%
    cont = learner(settings, [served_groups(1, 60, 40), served_groups(0, 9, 1)])
    cont.record_served(10, 40)
    cont.refit()
    cont.observe([served_groups(0, 27, 3)])
    typical = float(np.nanmedian(cont.table.variance[0].reshape(-1)))
    cont.record_served(10, 40)
    (switch, _) = cont.refit()
    m_b, var_b, k = fresh_by_hand(27, 3)
    assert (m_b, var_b) == pytest.approx((28 / 32, 28 * 4 / 32 / 31))
    se_a = math.sqrt(shrunk_variance(0.24 * 100 / 99, 100, typical) / 100)
    want = m_b - 0.6 - z_switch(settings) * math.sqrt(var_b / k + se_a ** 2)
    assert switch.gain_lower == pytest.approx(want, rel=1e-6)


def test_a_candidate_prompt_is_pulled_at_its_largest_close_n() -> None:
    """Served (1, 2); prompt 0 is close only up to N = 3 (its N = 4 is seen and far worse):
    it is pulled at 3, the larger of 3 and the served 2."""
    cont = learner(ContinualSettings(candidates=3), served=((1, 2), (1, 2)))
    cont.table.counts[:] = 0
    set_arm(cont, 1, 2, 1000, 0.6, 0.24)
    for n, m in ((1, 0.6), (2, 0.62), (3, 0.63), (4, 0.1)):
        set_arm(cont, 0, n, 1000, m, 0.2)
    cand, scale = cont.candidates()
    assert cand[0].tolist() == [True, True, True]  # prompt 2, never seen, is one too
    assert scale.tolist()[0] == 3


def test_a_served_arm_without_an_estimate_is_challenged_by_the_safest() -> None:
    """After a drift left the served arm without samples, the challenger is the arm of
    highest lower bound: (2, 4) on 1,000 groups at 0.6 before (0, 4) at 0.7 on 10."""
    cont = learner(ContinualSettings())
    cont.table.counts[:] = 0
    set_arm(cont, 0, 4, 10, 0.7, 0.21)
    set_arm(cont, 2, 4, 1000, 0.6, 0.24)
    cont.challenger[:] = -1
    cont._name_challengers()
    assert cont.challenger.tolist() == [2 * 4 + 3] * 2


def test_a_challenger_at_n_3_counts_only_its_own_samples() -> None:
    """Groups [right, wrong, right] of prompt 0: N = 1 gives 2/3, N = 2 a tie (1/2), N = 3
    a majority (1). The challenger is (0, 3); 29 fresh groups leave it undecided, the 30th
    decides it: each group is one sample of N = 3, none of another N."""
    settings = ContinualSettings(refine_every=10)
    cont = learner(settings, [served_groups(1, 60, 40), group(0, [[0, 1, 0]] * 10)])
    np.testing.assert_allclose(cont.table.mean[0, 0, :3], [2 / 3, 0.5, 1.0])
    cont.record_served(10, 40)
    cont.refit()
    assert cont.challenger.tolist() == [2, 2]  # (0, 3) in both contexts
    cont.observe([group(0, [[0, 1, 0]] * (FRESH_GROUPS - 1))])
    cont.record_served(10, 40)
    assert cont.refit() == []
    cont.observe([group(0, [[0, 1, 0]])])
    cont.record_served(10, 40)
    assert [s.new for s in cont.refit()] == [(0, 3), (0, 3)]


# ---------------------------------------------------------------- traffic by context


def z_by_hand(mine: list[float], theirs: list[float]) -> float:
    """The traffic test's z: each side's samples (utilities in [0, 1]) with a 0 and a 1
    added, the difference of means over the root of the summed squared standard errors."""
    a, b = np.array(mine + [0.0, 1.0]), np.array(theirs + [0.0, 1.0])
    return float((a.mean() - b.mean())
                 / math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))


def traffic_groups(right_0: int, wrong_0: int, right_1: int, wrong_1: int
                   ) -> tuple[list[Observation], list[int]]:
    """Groups of 4 of prompt 1, all right or all wrong: the first two counts drawn on
    context 0's requests, the last two on context 1's."""
    return ([served_groups(1, right_0, wrong_0), served_groups(1, right_1, wrong_1)], [0, 1])


def test_traffic_level_by_hand() -> None:
    """Two contexts (one pair), refits every 10 requests over a horizon of 20,000: 2,000
    refits, the test two-sided at 0.05 / (2 x 1 x 2,000) each."""
    cont = learner(ContinualSettings(refine_every=10, alarm=0.05, horizon=20_000))
    assert cont._z_traffic == pytest.approx(norm.ppf(1 - 0.05 / 4000), rel=1e-12)


def test_a_context_whose_traffic_differs_learns_from_its_own() -> None:
    """Context 0's requests are all answered right by prompt 1, context 1's half right:
    on (1, 1), 40 groups each way, context 0's mean is 1 against the other's 0.5; with a 0
    and a 1 added to each side (:func:`z_by_hand`), z is about 5.8, beyond the level. The
    pair splits: context 0's estimate of (1, 4) is 1 (pooled it would be 0.75), context 1's
    0.5 - 4 x 0.02."""
    cont = learner(ContinualSettings(refine_every=10, alarm=0.05))
    cont.observe(*traffic_groups(40, 0, 20, 20))
    np.testing.assert_allclose(cont.estimates().mean[:, 1, 3], [0.75, 0.75 - 0.08])
    cont.record_served(10, 40)
    cont.refit()
    z = z_by_hand([1.0] * 40, [1.0] * 20 + [0.0] * 20)
    assert [(s.context, s.other, s.prompt, s.n, s.own_groups, s.other_groups)
            for s in cont.splits] == [(0, 1, 1, 1, 40, 40)]
    assert cont.splits[0].z == pytest.approx(z, rel=1e-9)
    assert (cont.splits[0].own, cont.splits[0].others) == pytest.approx((1.0, 0.5))
    assert cont.shared.tolist() == [False, False]
    assert cont.pools.tolist() == [[True, False], [False, True]]
    est = cont.estimates()
    np.testing.assert_allclose(est.mean[:, 1, 3], [1.0, 0.5 - 0.08])
    assert est.counts[:, 1, 3].tolist() == [40, 40]
    # from now on a group counts only for the context whose request it was drawn on
    cont.observe([served_groups(0, 12, 0)], [1])
    assert cont.estimates().counts[:, 0, 3].tolist() == [0, 12]
    assert cont.table.counts[0, 3] == 12  # the pooled table still has every group


def test_contexts_with_the_same_traffic_keep_sharing() -> None:
    """The same 20 right and 20 wrong groups on both contexts' requests: z = 0, no split;
    and without origins nothing is kept apart at all."""
    cont = learner(ContinualSettings(refine_every=10))
    cont.observe(*traffic_groups(20, 20, 20, 20))
    cont.record_served(10, 40)
    cont.refit()
    assert cont.splits == [] and cont.shared.all()
    np.testing.assert_allclose(cont.estimates().mean, cont.table.mean)
    blind = learner(ContinualSettings(refine_every=10))
    blind.observe(traffic_groups(40, 0, 0, 40)[0])  # very different, but no origins
    blind.record_served(10, 40)
    blind.refit()
    assert blind.splits == [] and all(t.counts.sum() == 0 for t in blind.own)


def three_contexts(training: list[Observation], cost_c: float = 0.5) -> Continual:
    """Contexts 'a', 'b' (no cost) and 'c' (cost weight ``cost_c``), each serving (1, 4);
    after one refit on 'a' and 'b' asking alike (prompt 1 right on 30 of 40 groups each)
    and 'c' asking what it always gets wrong."""
    env = MVEnvironment("env3c", env3().probs, np.zeros(4, dtype=int), list(COST),
                        {"a": 0.0, "b": 0.0, "c": cost_c}, 4, cacheable=False)
    cont = Continual(env.problem, ContinualSettings(refine_every=10), training,
                     [Choice(1, 4, 0.0, 0)] * 3)
    cont.observe([served_groups(1, 30, 10), served_groups(1, 30, 10),
                  served_groups(1, 0, 40)], [0, 1, 2])
    cont.record_served(10, 40)
    cont.refit()
    return cont


def test_pairs_of_contexts_split_and_the_rest_still_pool() -> None:
    """The pairs (a, c) and (b, c) split, (a, b) keeps pooling: a's estimate of (1, 4) is
    60 / 80 from a's and b's traffic, without the training groups (which only a context
    pooling with every other uses), and c's is 0 - 0.5 x 4 x 0.02."""
    cont = three_contexts([served_groups(1, 5, 5)])
    assert [(s.context, s.other) for s in cont.splits] == [(0, 2), (1, 2)]
    z = z_by_hand([1.0] * 30 + [0.0] * 10, [0.0] * 40)  # (1, 1) in a's utility
    assert cont.splits[0].z == pytest.approx(z, rel=1e-9)
    assert cont.pools.tolist() == [[True, True, False], [True, True, False],
                                   [False, False, True]]
    est = cont.estimates()
    np.testing.assert_allclose(est.mean[:, 1, 3], [0.75, 0.75, -0.04])
    assert est.counts[:, 1, 3].tolist() == [80, 80, 40]
    # a's variance from a's and b's groups: 60 right, 20 wrong (every arm of prompt 1 has
    # it, so shrinking toward the typical one changes nothing); c's groups are all alike
    var = 80 * 0.75 * 0.25 / 79
    np.testing.assert_allclose(est.stderr[:, 1, 3], [math.sqrt(var / 80)] * 2 + [0.0],
                               atol=1e-9)
    np.testing.assert_allclose(est.typical, [var, var, 0.0], atol=1e-12)
    assert cont.table.counts[1, 3] == 130  # the pool keeps everything, training too


def test_a_baseline_of_samples_all_alike_sits_below_the_top() -> None:
    """60 all-right groups of the served (0, 4): with one sample more at each end of [0, 1],
    61 of 62 right, so the baseline sits below 1 and one wrong answer does not alarm."""
    cont = learner(ContinualSettings(refine_every=10), served=((0, 4), (0, 4)))
    cont.observe([served_groups(0, 60, 0)])
    cont.record_served(10, 40)
    cont.refit()
    sd = math.sqrt(61 * 1 / 62 / 61)
    lower = 61 / 62 - cont._z_baseline * sd / math.sqrt(62)
    assert cont.monitor.m0[0] == pytest.approx(lower, rel=1e-9)  # context 'low': range [0, 1]
    assert cont.observe([served_groups(0, 0, 1)]) == []


def test_once_traffic_differs_a_switch_restarts_the_drift_tests_that_pool_with_it() -> None:
    """After the splits, a second refit starts every drift test (baselines at request 20).
    When 'a' moves to prompt 0, the tests of 'b' (which pools with 'a' and serves the
    prompt 'a' left) restart, off until the next baselines: the traffic they watch is no
    longer the same mix. Those of 'c', which pools with neither, keep running ('c' pays no
    cost here, so that no smaller N of its prompt beats its arm)."""
    cont = three_contexts([], cost_c=0.0)
    cont.observe([served_groups(1, 30, 10), served_groups(1, 30, 10),
                  served_groups(1, 0, 40)], [0, 1, 2])
    cont.record_served(10, 40)
    cont.refit()
    assert all(cont.monitor.active(t) for t in range(6))
    cont._choose(0, 0 * 4 + 3, "evidence", 0.1)  # 'a' to (0, 4)
    assert [cont.monitor.active(t) for t in range(6)] == [False, False, False, False,
                                                          True, True]
    assert cont._since[2:4].sum() == 0.0  # 'b' starts counting again
    # and 'b', serving prompt 1, restarts again when 'a' comes back to it (its new prompt)
    cont.monitor.start(2, 0.5)
    cont.monitor.start(3, 0.5)
    cont._choose(0, 1 * 4 + 3, "evidence", 0.1)  # 'a' back to (1, 4)
    assert not cont.monitor.active(2) and not cont.monitor.active(3)
    # where no traffic differs, a switch restarts only its own context's tests
    env = MVEnvironment("env3c", env3().probs, np.zeros(4, dtype=int), list(COST),
                        {"a": 0.0, "b": 0.0, "c": 0.0}, 4, cacheable=False)
    alike = Continual(env.problem, ContinualSettings(refine_every=10), [],
                      [Choice(1, 4, 0.0, 0)] * 3)
    for _ in range(2):
        alike.observe([served_groups(1, 30, 10)] * 3, [0, 1, 2])
        alike.record_served(10, 40)
        alike.refit()
    assert alike.splits == [] and all(alike.monitor.active(t) for t in range(6))
    assert alike._since[:, 2].tolist() == [240.0] * 6  # both batches, every origin
    alike._choose(0, 0 * 4 + 3, "evidence", 0.1)
    assert [alike.monitor.active(t) for t in range(6)] == [False, False, True, True, True,
                                                           True]


def test_every_pair_is_tested_at_every_refit_once_both_have_30_groups() -> None:
    """'a' always right, 'c' always wrong (30 groups each: alike within each, yet the test
    stays finite, a 0 and a 1 being added to each side), 'b' half right. Refit 1, before
    'b' has any groups: (a, b) cannot be tested, (a, c) splits at exactly 30 groups each.
    Refit 2, 'b' with 40 groups: (a, b) splits, (a, c) is already apart, and (b, c) is
    still tested, and splits. A split leaves no challenger behind where no arm beats the
    served one."""
    env = MVEnvironment("env3c", env3().probs, np.zeros(4, dtype=int), list(COST),
                        {"a": 0.0, "b": 0.0, "c": 0.0}, 4, cacheable=False)
    cont = Continual(env.problem, ContinualSettings(refine_every=10), [],
                     [Choice(1, 4, 0.0, 0)] * 3)
    cont.observe([served_groups(1, 30, 0), served_groups(1, 0, 30)], [0, 2])
    cont.record_served(10, 40)
    cont.refit()
    assert [(s.request, s.context, s.other, s.own_groups, s.other_groups, s.z)
            for s in cont.splits] == [(10, 0, 2, 30, 30,
                                       pytest.approx(z_by_hand([1.0] * 30, [0.0] * 30)))]
    cont.observe([served_groups(1, 20, 20)], [1])
    cont.record_served(10, 40)
    cont.refit()
    assert [(s.request, s.context, s.other) for s in cont.splits][1:] == [(20, 0, 1), (20, 1, 2)]
    assert cont.pools.tolist() == [[True, False, False], [False, True, False],
                                   [False, False, True]]
    assert cont.challenger.tolist() == [-1, -1, -1]
    # each context's drift tests now count its own groups only
    before = cont._since[:, 2].copy()
    cont.observe([served_groups(1, 5, 0)], [0])
    assert (cont._since[:, 2] - before).tolist() == [5, 5, 0, 0, 0, 0]


def test_traffic_that_is_alike_never_splits_on_rounding() -> None:
    """Both contexts always answered right, on 30 and 41 groups, at a cost weight of 0.5:
    the two means of the same constant differ in their last bit (sums of 30 and 41 equal
    floats), but with a 0 and a 1 added to each side the test is finite, and no split."""
    env = MVEnvironment("env3r", env3().probs, np.zeros(4, dtype=int), list(COST),
                        {"a": 0.5, "b": 0.5}, 4, cacheable=False)
    cont = Continual(env.problem, ContinualSettings(refine_every=10), [],
                     [Choice(1, 4, 0.0, 0)] * 2)
    cont.observe([served_groups(1, 30, 0), served_groups(1, 41, 0)], [0, 1])
    cont.record_served(10, 40)
    cont.refit()
    assert cont.splits == [] and cont.shared.all()


def test_a_flag_leaves_a_split_context_its_own_recent_groups() -> None:
    """After the split (and the baselines at request 10), 5 groups of prompt 1 on context
    0's requests and 7 on context 1's. A flag on prompt 1 keeps only the samples since the
    baselines: 5 for context 0 and 7 for context 1, each from its own traffic; the pool
    keeps all 12."""
    # training's groups (of prompt 2) count for no context that has split off
    cont = learner(ContinualSettings(refine_every=10), [served_groups(2, 10, 10)])
    cont.observe(*traffic_groups(40, 0, 20, 20))
    cont.record_served(10, 40)
    cont.refit()
    assert cont.splits and cont._next_baseline == 20
    cont.observe(*traffic_groups(5, 0, 3, 4))
    cont._drifted(Flag(10, 0, 1, 4, 0.9, 0.5))
    assert np.isnan(cont._model_means(0, {})[2 * 4:]).all()
    assert np.isnan(cont._model_means(1, {})[2 * 4:]).all()
    assert cont.estimates().counts[:, 1, 3].tolist() == [5, 7]
    assert cont.table.counts[1, 3] == 12
    # the drift move's model sees the same: context 0 its 20 right answers of prompt 1,
    # context 1 its 12 right and 16 wrong, each with the model's prior of 0.5 on every
    # answer seen and one unseen; (1, 1) is then right with probability 20.5 / 21 and
    # 12.5 / 29.5 (less one completion's 0.02 at cost weight 1 in 'high')
    assert cont._model_means(0, {})[1 * 4 + 0] == pytest.approx(20.5 / 21, rel=1e-9)
    assert cont._model_means(1, {})[1 * 4 + 0] == pytest.approx(12.5 / 29.5 - 0.02, rel=1e-9)


def test_origins_must_name_a_context_per_observation() -> None:
    cont = learner(ContinualSettings())
    for bad in ([0], [0, 2], [0, -2]):
        with pytest.raises(InputError, match="one context index"):
            cont.observe(traffic_groups(1, 0, 1, 0)[0], bad)
