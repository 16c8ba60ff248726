"""Each learner's defining selection rule, pinned by behaviour on hand-made environments.

The environments here have no noise: every completion of prompt p scores values[p] and costs
costs[p], so Q(c, p, n) = w_c . values[p] - cost_weight_c * n * costs[p] and every estimate is
exact after one group. What a learner pulls is then worked out by hand (the comments show the
arithmetic) and read back from its trace. Randomized rules (epsilon-greedy, softmax) are checked
against their selection probabilities within a binomial tolerance of 4.5 standard deviations.

Every test of a learner with a Q table also runs its ``:subsets`` variant: on noiseless data
both estimators give the same estimates, so the rule must not change; the last test shows that
the estimator does change what is estimated when completions differ within a group. (The
psst-model learners estimate with their own model and take no estimator: test_estimators.)
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from iapo.envs.base import Environment
from iapo.envs.tabular import environment_from_arrays
from iapo.errors import InputError
from iapo.learners import (
    PSST,
    UCB,
    EpsilonGreedy,
    PSSTModel,
    Softmax,
    TopKScreening,
    TripleSH,
    get_learner,
)
from iapo.learners.base import LearnerResult, Round
from iapo.learners.psst import psst
from iapo.learners.sequential import batch_sizes, sample_rows, sequential
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, Problem
from iapo.pulls import Ledger, Observation, Pull

SUBSETS = ["", ":subsets"]


def noiseless_bon(values: Sequence[float] | Sequence[Sequence[float]], costs: Sequence[float],
                  n_max: int, cost_weights: Mapping[str, float],
                  weight_grid: Sequence[Sequence[float]] | None = None) -> Environment:
    """Best-of-N with one support point per (prompt, query): every completion of prompt p
    scores ``values[p]`` (one number, or one per objective) and costs ``costs[p]``.

    Contexts: every row of ``weight_grid`` (default: weight 1 on the one objective) times every
    budget level of ``cost_weights``, in that order."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    n_prompts, k = v.shape
    x = 3
    scores = np.zeros((n_prompts, x, 1, k + 1))
    scores[:, :, 0, :k] = v[:, None, :]
    scores[:, :, 0, k] = np.asarray(costs, dtype=np.float64)[:, None]
    data = {
        "scores": scores,
        "probs": np.ones((n_prompts, x, 1)),
        "objective_names": np.array([f"o{i}" for i in range(k)]),
        "objective_lower": np.zeros(k),
        "objective_upper": np.ones(k),
        "weight_grid": np.array(weight_grid if weight_grid is not None else [[1.0] * k]),
        "budget_levels": np.array(list(cost_weights)),
        "cost_weights": np.array(list(cost_weights.values()), dtype=np.float64),
        "n_max": np.array(n_max),
    }
    return environment_from_arrays("noiseless", data, cacheable=False)


# equal decision batches of T / 50 (the default), so that the exploration rules below can be
# counted batch by batch; the geometric grid has its own test
EQUAL: dict[str, Any] = {"batches": 50, "growth": 1.0}


def run(name: str, env: Environment, budget: int, seed: int = 0, **params: Any
        ) -> LearnerResult:
    oracle = SimulatedOracle(env, np.arange(env.n_queries), budget, np.random.default_rng(seed))
    spec = get_learner(name)
    learner = spec.configure(**params).learner if params else spec.learner
    result = learner(env.problem, oracle, budget, np.random.default_rng(seed + 1))
    assert oracle.ledger.spent == result.trace.completions_used <= budget
    return result


def pulls(round_: Round) -> list[tuple[int, int, int]]:
    """A round's pulls as sorted (prompt, n, count) tuples."""
    return sorted(round_.pulls)


def pulls_per_prompt(rounds: Sequence[Round]) -> Counter[int]:
    """Completions pulled per prompt over ``rounds`` (with N_max 1: decisions per prompt)."""
    out: Counter[int] = Counter()
    for r in rounds:
        for p, n, m in pulls(r):
            out[p] += n * m
    return out


def within(count: int, trials: int, p: float, sds: float = 4.5) -> bool:
    """``count`` is within ``sds`` standard deviations of Binomial(trials, p)'s mean."""
    return abs(count - trials * p) <= sds * math.sqrt(trials * p * (1 - p))


# ---------------------------------------------------------------- epsilon-greedy


@pytest.mark.parametrize("est", SUBSETS)
def test_egreedy_explores_at_rate_epsilon(est: str) -> None:
    # 4 prompts, N_max 1 (arm = prompt, one completion per decision), one context.
    # Prompt 0 scores 0.9, the others 0.2: once prompt 0 is seen it is the greedy arm for good.
    env = noiseless_bon([0.9, 0.2, 0.2, 0.2], [0.0] * 4, 1, {"only": 0.0})
    result = run(f"egreedy{est}", env, 4000, **EQUAL)
    rounds = result.trace.rounds
    assert [r.spent for r in rounds] == [80] * 50  # 50 decision batches of T / 50
    assert [(r.round, r.allowance, list(r.alive)) for r in rounds] == [
        (i, 80, [4]) for i in range(1, 51)]  # no arm is ever dropped
    assert result.trace.to_dict()["batches"] == 50
    # batch 1 decides from no data (every arm counts as 0): prompt 0 must be in it for the
    # count below to start from a known greedy arm
    assert pulls_per_prompt(rounds[:1])[0] > 0
    later = pulls_per_prompt(rounds[1:])
    k = sum(later.values())  # 4000 - 80 = 3920 decisions
    assert k >= 3000
    # a decision leaves the greedy arm iff it explores (epsilon = 0.15) and the uniform draw
    # over the 4 arms misses prompt 0 (3/4): p = 0.15 * 3/4 = 0.1125; for k = 3920 the mean
    # is 441 with sd sqrt(3920 * 0.1125 * 0.8875) = 19.8. Epsilon 0 would give 0.
    assert within(k - later[0], k, 0.15 * 3 / 4)
    # and the exploring draws are uniform: each other arm gets 0.15 / 4 of the decisions
    for p in (1, 2, 3):
        assert within(later[p], k, 0.15 / 4)
    # every decision explores on its own draw: in a batch of 80 the non-greedy pulls are
    # Binomial(80, 0.1125), none at all with probability 0.8875^80 = 7e-5, and about 9 of them
    # fall on a single arm with probability 3 (1/3)^9 = 1.5e-4 (a draw per batch would leave
    # most batches without exploration, or with all of it on one arm)
    off = [{p: n for p, n in pulls_per_prompt([r]).items() if p != 0} for r in rounds[1:]]
    assert sum(not o for o in off) <= 2
    assert sum(len(o) >= 2 for o in off) >= len(off) - 4
    assert (result.choices[0].prompt, result.choices[0].n) == (0, 1)


# ---------------------------------------------------------------- softmax


@pytest.mark.parametrize("est", SUBSETS)
def test_softmax_pulls_with_boltzmann_probabilities(est: str) -> None:
    # 3 prompts, N_max 1, scores 0.1, 0.05, 0: temperature 0.05 gives weights
    # exp(0.1 / 0.05) = e^2 = 7.389, exp(0.05 / 0.05) = e = 2.718, exp(0) = 1; sum 11.107:
    # probabilities 0.6652, 0.2447, 0.0900 (temperature 0.1 would give 0.506, 0.307, 0.186)
    env = noiseless_bon([0.1, 0.05, 0.0], [0.0] * 3, 1, {"only": 0.0})
    result = run(f"softmax{est}", env, 4000, **EQUAL)
    rounds = result.trace.rounds
    assert [r.spent for r in rounds] == [80] * 50  # 50 decision batches of T / 50
    # batch 1 (no data, all weights equal) must have seen prompts 0 and 1; prompt 2's
    # estimate is 0 seen or not
    first = pulls_per_prompt(rounds[:1])
    assert first[0] > 0 and first[1] > 0
    later = pulls_per_prompt(rounds[1:])
    k = sum(later.values())
    assert k >= 3000
    weights = [math.e**2, math.e, 1.0]
    for p, w in enumerate(weights):
        assert within(later[p], k, w / sum(weights)), (p, later[p], k * w / sum(weights))


# ---------------------------------------------------------------- UCB


@pytest.mark.parametrize("est", SUBSETS)
def test_ucb_pulls_the_less_tried_arm_once_its_bonus_outweighs_the_gap(est: str) -> None:
    # 2 prompts, N_max 1, means 0.5 and 0.44. T = 6 is below the 50 decision batches, so
    # every decision is its own batch (fully sequential). Index: mean + 0.1 sqrt(ln t / n),
    # t all blocks seen, n the arm's blocks; an arm never seen first.
    env = noiseless_bon([0.5, 0.44], [0.0, 0.0], 1, {"only": 0.0})
    result = run(f"ucb{est}", env, 6)
    order = [pulls(r) for r in result.trace.rounds]
    assert all(len(r) == 1 and r[0][1:] == (1, 1) for r in order)
    arms = [r[0][0] for r in order]
    # steps 1, 2: both arms unseen, then the other one
    assert sorted(arms[:2]) == [0, 1]
    # step 3: t = 2, n = (1, 1): 0.5 + 0.1 sqrt(0.693) = 0.5833 > 0.44 + 0.0833 = 0.5233
    # step 4: t = 3, n = (2, 1): 0.5 + 0.1 sqrt(1.099 / 2) = 0.5741 > 0.44 + 0.1048 = 0.5448
    # step 5: t = 4, n = (3, 1): 0.5 + 0.1 sqrt(1.386 / 3) = 0.5680 > 0.44 + 0.1177 = 0.5577
    # step 6: t = 5, n = (4, 1): 0.5 + 0.1 sqrt(1.609 / 4) = 0.5634 < 0.44 + 0.1269 = 0.5669
    # (a subtracted bonus, or c = 0, never returns to arm 1; c = 0.2 returns at step 4)
    assert arms[2:] == [0, 0, 0, 1]


# ---------------------------------------------------------------- PSST


@pytest.mark.parametrize("est", SUBSETS)
def test_psst_keeps_the_better_half_and_pulls_by_eq6(est: str) -> None:
    # 4 prompts, N_max 2, every completion costs 0.3, cost weight 1: Q(p, n) = v_p - 0.3 n
    # with v = (0.9, 0.5, 0.7, 0.1). Ranked: (0,1) 0.6, (2,1) 0.4, (0,2) 0.3, (1,1) 0.2,
    # (2,2) 0.1, (1,2) -0.1, (3,1) -0.2, (3,2) -0.5. |A| = 8, R = 3 rounds, T = 100.
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"only": 1.0})
    result = run(f"psst{est}", env, 100)
    rounds = result.trace.rounds
    got = [(r.allowance, pulls(r), list(r.alive)) for r in rounds]
    assert got == [
        # allowance floor(100/3) = 33; every prompt at its largest N, 2: M = 8 and
        # floor(33 / 8) = 4 groups each (32). Keep 4: (0,1), (2,1), (0,2), (1,1).
        (33, [(0, 2, 4), (1, 2, 4), (2, 2, 4), (3, 2, 4)], [4]),
        # allowance floor(200/3) - 32 = 34; largest active N: prompt 0 2, prompts 1 and 2 1,
        # prompt 3 none: M = 4, floor(34 / 4) = 8 groups each (32). Keep 2: (0,1), (2,1).
        (34, [(0, 2, 8), (1, 1, 8), (2, 1, 8)], [2]),
        # allowance 100 - 64 = 36; M = 1 + 1 = 2, 18 groups each (36). Keep (0,1).
        (36, [(0, 1, 18), (2, 1, 18)], [1]),
    ]
    assert [r.round for r in rounds] == [1, 2, 3]
    assert result.trace.notes == []  # the paper's schedule, nothing done differently
    assert result.trace.to_dict() == {
        "completions_used": 100, "rounds": [r.to_dict() for r in rounds], "notes": [],
        "rounds_paper": 3, "rounds_run": 3}
    (choice,) = result.choices
    assert (choice.prompt, choice.n) == (0, 1)
    assert choice.q_hat == pytest.approx(0.6)
    # its samples: N = 1 blocks of prompt 0, 2 per group of 2 (4 + 8), 1 per group of 1 (18)
    assert choice.samples == 2 * 4 + 2 * 8 + 18


@pytest.mark.parametrize("est", SUBSETS)
def test_psst_trims_every_context_by_its_own_estimates(est: str) -> None:
    # the same prompts; contexts lo (cost weight 0.1) and hi (cost weight 1).
    # lo: Q = v - 0.03 n: (0,1) .87, (0,2) .84, (2,1) .67, (2,2) .64, (1,1) .47, ... keeps
    #     prompts 0 and 2 at both N.  hi: keeps (0,1), (2,1), (0,2), (1,1) as above.
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"lo": 0.1, "hi": 1.0})
    result = run(f"psst{est}", env, 100)
    r1, r2, r3 = result.trace.rounds
    assert list(r1.alive) == [4, 4]
    # round 2 pulls the union at its largest N: prompt 0 at 2, prompt 1 at 1 (hi keeps only
    # (1,1)), prompt 2 at 2 (lo keeps (2,2)): M = 5, floor(34 / 5) = 6 groups each (30)
    assert pulls(r2) == [(0, 2, 6), (1, 1, 6), (2, 2, 6)]
    # lo keeps (0,1), (0,2); hi keeps (0,1), (2,1)
    assert list(r2.alive) == [2, 2]
    # round 3: allowance 100 - 62 = 38; prompt 0 at 2 (lo), prompt 2 at 1 (hi): M = 3,
    # floor(38 / 3) = 12 each (36), then the 2 left over as single groups at N <= 2
    main = [p for p in pulls(r3) if p[2] > 1]
    assert main == [(0, 2, 12), (2, 1, 12)]
    assert list(r3.alive) == [1, 1]
    assert [(c.prompt, c.n) for c in result.choices] == [(0, 1), (0, 1)]


@pytest.mark.parametrize("est", SUBSETS)
def test_uniform_gives_every_prompt_the_same_groups_at_n_max(est: str) -> None:
    # 3 prompts, N_max 4, v = (0.9, 0.6, 0.3), costs (0.4, 0.01, 0.01); cost weights lo 0.1,
    # hi 1. lo: Q(0, 1) = 0.9 - 0.04 = 0.86 is best; hi: Q(0, 1) = 0.5 < Q(1, 1) = 0.59.
    env = noiseless_bon([0.9, 0.6, 0.3], [0.4, 0.01, 0.01], 4, {"lo": 0.1, "hi": 1.0})
    result = run(f"uniform{est}", env, 96)
    (r,) = result.trace.rounds
    # one batch: M = 3 * 4 = 12, floor(96 / 12) = 8 groups of 4 each
    assert pulls(r) == [(0, 4, 8), (1, 4, 8), (2, 4, 8)]
    assert list(r.alive) == [1, 1]
    assert [(c.prompt, c.n) for c in result.choices] == [(0, 1), (1, 1)]
    assert [c.q_hat for c in result.choices] == pytest.approx([0.86, 0.59])
    assert [c.samples for c in result.choices] == [4 * 8, 4 * 8]  # 4 blocks of 1 per group
    # T = 100: the same 8 groups each, and the 4 left over as one group of 4 of one prompt
    extra = pulls(run(f"uniform{est}", env, 100).trace.rounds[0])
    assert [p for p in extra if p[2] == 8] == [(0, 4, 8), (1, 4, 8), (2, 4, 8)]
    assert sum(n * m for _, n, m in extra) == 100
    # T = 97: the one completion left over is a group of 1
    extra = pulls(run(f"uniform{est}", env, 97).trace.rounds[0])
    assert [p for p in extra if p[2] != 8] in ([(0, 1, 1)], [(1, 1, 1)], [(2, 1, 1)])


# ---------------------------------------------------------------- Top-K screening

# ten prompts with two objectives ranked in opposite orders; context 0 weighs the first
# objective only, context 1 the second
FIRST = [0.5, 0.2, 0.9, 0.0, 0.7, 0.4, 0.8, 0.1, 0.6, 0.3]
SECOND = [0.9 - a for a in FIRST]
BY_FIRST = [2, 6, 4, 8, 0, 5, 9, 1, 7, 3]  # prompts by the first objective, best first
BY_SECOND = BY_FIRST[::-1]


@pytest.mark.parametrize("est", SUBSETS)
@pytest.mark.parametrize("k", [1, 4, 8])
def test_top_k_screening_keeps_the_k_best_prompts_of_every_context(k: int, est: str) -> None:
    env = noiseless_bon(np.stack([FIRST, SECOND], axis=1).tolist(), [0.01] * 10, 2,
                        {"b": 0.1}, weight_grid=[[1.0, 0.0], [0.0, 1.0]])
    result = run(f"psst-k{k}{est}", env, 1000)
    screening, first = result.trace.rounds[:2]
    # rho T = 0.2 * 1000 = 200 completions at N = 1: floor(200 / 10) = 20 per prompt
    assert pulls(screening) == [(p, 1, 20) for p in range(10)]
    assert (screening.round, screening.allowance, screening.spent) == (0, 200, 200)
    assert list(screening.alive) == [2 * k, 2 * k]  # K prompts times N_max = 2
    kept = [set(BY_FIRST[:k]), set(BY_SECOND[:k])]
    assert [set(s) for s in result.trace.info["screened_prompts"]] == kept
    # PSST then pulls only kept prompts, at N_max
    assert {(p, n) for p, n, _ in pulls(first)} == {(p, 2) for p in kept[0] | kept[1]}
    # Q = objective - 0.1 * 0.01 n: the best arm is (best prompt, 1) in each context
    assert [(c.prompt, c.n) for c in result.choices] == [(2, 1), (3, 1)]
    assert result.trace.completions_used == 1000
    # the screening's 20 samples at N = 1 are kept for PSST (stockpiling): an arm (p, 1) has
    # one sample per completion of p pulled, screening included
    for c in result.choices:
        pulled = sum(n * m for r in result.trace.rounds for q, n, m in pulls(r) if q == c.prompt)
        assert c.samples == pulled


# ---------------------------------------------------------------- TRIPLE


@pytest.mark.parametrize("est", SUBSETS)
@pytest.mark.parametrize("name", ["triple-n1", "triple-nrand"])
def test_triple_halves_the_prompts_at_n_1(name: str, est: str) -> None:
    # 6 prompts, N_max 3, no cost: prompts ranked 1 (.9), 5 (.8), 3 (.7), 4 (.5), 0 (.3), 2 (.1)
    env = noiseless_bon([0.3, 0.9, 0.1, 0.7, 0.5, 0.8], [0.0] * 6, 3, {"only": 0.0})
    result = run(f"{name}{est}", env, 120)
    got = [(r.allowance, pulls(r), list(r.alive)) for r in result.trace.rounds]
    # R = ceil(log2 6) = 3 rounds of 40; only N = 1 is ever pulled
    assert got == [
        # floor(40 / 6) = 6 each (36); keep ceil(6 / 2) = 3: prompts 1, 5, 3
        (40, [(p, 1, 6) for p in range(6)], [3]),
        # allowance 80 - 36 = 44, floor(44 / 3) = 14 each (42); keep ceil(3 / 2) = 2: 1, 5
        (44, [(1, 1, 14), (3, 1, 14), (5, 1, 14)], [2]),
        # allowance 120 - 78 = 42, 21 each; keep 1: prompt 1
        (42, [(1, 1, 21), (5, 1, 21)], [1]),
    ]
    (choice,) = result.choices
    assert choice.prompt == 1 and choice.samples == 6 + 14 + 21
    if name == "triple-n1":
        assert choice.n == 1 and choice.q_hat == pytest.approx(0.9)
    else:  # deployed with N uniform in 1..N_max: no N, and no estimate of that mixture
        assert choice.n is None and math.isnan(choice.q_hat)


# ---------------------------------------------------------------- psst-model


@pytest.mark.parametrize("name, group", [("psst-model", 2), ("psst-model4", 4)])
def test_psst_model_pulls_small_groups_and_trims_by_the_model(name: str, group: int) -> None:
    # 4 prompts, N_max 8, cost 0.01, cost weight 1: Q(p, n) = v_p - 0.01 n with
    # v = (0.9, 0.5, 0.7, 0.1). |A| = 32, R = 5 rounds of T / 5 = 80. The model sees no noise,
    # so its estimates are exact for every n although only groups of `group` are pulled.
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.01] * 4, 8, {"only": 1.0})
    result = run(name, env, 400)
    got = [(pulls(r), list(r.alive)) for r in result.trace.rounds]
    g = group
    assert got == [
        # every prompt in groups of g: M = 4 g, floor(80 / 4g) groups each; keep 16 arms:
        # all 8 of prompt 0 (0.89 .. 0.82) and of prompt 2 (0.69 .. 0.62)
        ([(p, g, 80 // (4 * g)) for p in range(4)], [16]),
        # prompts 0 and 2: M = 2 g; keep the 8 arms of prompt 0
        ([(0, g, 80 // (2 * g)), (2, g, 80 // (2 * g))], [8]),
        # prompt 0 alone: M = g; keep (0,1..4), then (0,1..2), then (0,1)
        ([(0, g, 80 // g)], [4]),
        ([(0, g, 80 // g)], [2]),
        ([(0, g, 80 // g)], [1]),
    ]
    (choice,) = result.choices
    assert (choice.prompt, choice.n) == (0, 1)
    assert choice.q_hat == pytest.approx(0.89)
    # the model counts groups behind a prompt's estimates
    assert choice.samples == 80 // (4 * g) + 80 // (2 * g) + 3 * (80 // g)


# ---------------------------------------------------------------- the estimator


class FirstIsBestOracle:
    """Every group of n completions: the first scores 1, the others 0; each costs 0.05.

    A block or subset of size n scores 1 iff it holds the first completion."""

    def __init__(self, problem: Problem, budget: int) -> None:
        self.problem = problem
        self.ledger = Ledger(budget)
        self.pulled: list[Pull] = []

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        self.ledger.charge(sum(r.n * r.count for r in requests))
        self.pulled.extend(requests)
        out = []
        for r in requests:
            scores = np.zeros((r.count, r.n, 2))
            scores[:, 0, 0] = 1.0
            scores[..., 1] = 0.05
            out.append(Observation(r.prompt, r.n, np.zeros(r.count, dtype=np.int64), scores))
        return out


@pytest.mark.parametrize("name", ["psst", "uniform", "psst-k1"])
@pytest.mark.parametrize("est, arm, q_hat", [
    # groups of 4, [1, 0, 0, 0], cost 0.05 each with cost weight 1.
    # blocks: n = 1: 4 blocks, mean 1/4; n = 2: [1,0], [0,0] -> 1/2; n = 3: the one block
    # [1,0,0] -> 1; n = 4: 1. Q = 0.25 - 0.05, 0.5 - 0.1, 1 - 0.15, 1 - 0.2: best (0, 3) 0.85
    ("", 3, 0.85),
    # subsets: a size-n subset holds the first completion with probability n / 4:
    # Q = 0.2, 0.4, 0.75 - 0.15 = 0.6, 0.8: best (0, 4) 0.8
    (":subsets", 4, 0.8),
])
def test_the_estimator_decides_what_a_group_says(name: str, est: str, arm: int,
                                                 q_hat: float) -> None:
    # one prompt, N_max 4: PSST (2 rounds), uniform (1) and psst-k1 (screening skipped,
    # K >= |P|) pull it at N = 4 only
    problem = noiseless_bon([0.0], [0.05], 4, {"only": 1.0}).problem
    oracle = FirstIsBestOracle(problem, 40)
    result = get_learner(f"{name}{est}").learner(problem, oracle, 40, np.random.default_rng(0))
    assert {r.n for r in oracle.pulled} == {4} and oracle.ledger.spent == 40
    (choice,) = result.choices
    assert (choice.prompt, choice.n) == (0, arm)
    assert choice.q_hat == pytest.approx(q_hat)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("name, bad, good", [
    ("egreedy", {"epsilon": 1.01}, {"epsilon": 1.0}),
    ("egreedy", {"epsilon": -0.01}, {"epsilon": 0.0}),
    ("softmax", {"temperature": 0.0}, {"temperature": 0.001}),
    ("ucb", {"c": -0.01}, {"c": 0.0}),
    ("ucb", {"batches": 0}, {"batches": 1}),
    ("psst-k1", {"rho": 0.0}, {"rho": 0.01}),
    ("psst-k1", {"rho": 1.0}, {"rho": 0.99}),
    ("psst-k1", {"k": 0}, {"k": 1}),
])
def test_parameters_are_refused_just_outside_their_range(name: str, bad: dict[str, float],
                                                         good: dict[str, float]) -> None:
    env = noiseless_bon([0.5, 0.4], [0.0, 0.0], 2, {"only": 0.0})
    spec = get_learner(name)
    (key,) = bad
    oracle = SimulatedOracle(env, np.arange(env.n_queries), 20, np.random.default_rng(0))
    with pytest.raises(InputError, match=f"(?i){key}={bad[key]}"):
        spec.configure(**bad)
    assert oracle.ledger.spent == 0
    # the bound itself is allowed
    spec.configure(**good).learner(env.problem, oracle, 20, np.random.default_rng(0))
    assert oracle.ledger.spent == 20


# ---------------------------------------------------------------- more of the rules


@pytest.mark.parametrize("name", ["egreedy", "softmax", "ucb"])
def test_sequential_learners_return_their_best_estimated_arm(name: str) -> None:
    # 3 prompts, N_max 1, scores 0.2, 0.5, 0.9: the best is the last arm; T = 4000 sees all
    env = noiseless_bon([0.2, 0.5, 0.9], [0.0] * 3, 1, {"only": 0.0})
    result = run(name, env, 4000, **EQUAL)
    assert [r.spent for r in result.trace.rounds] == [80] * 50  # 50 batches of T / 50
    (choice,) = result.choices
    assert (choice.prompt, choice.n, choice.q_hat) == (2, 1, pytest.approx(0.9))
    assert choice.samples == pulls_per_prompt(result.trace.rounds)[2]


def test_a_learner_chooses_an_observed_arm_over_unseen_ones() -> None:
    # one prompt, N_max 4, Q(n) = -0.1 n: every estimate is below the 0 an unseen arm counts
    # as while exploring. T = 1 pays for (0, 1) alone; the policy must still be (0, 1).
    env = noiseless_bon([0.0], [0.1], 4, {"only": 1.0})
    for name in ("egreedy", "softmax", "ucb"):
        (choice,) = run(name, env, 1).choices
        assert (choice.prompt, choice.n, choice.samples) == (0, 1, 1)
        assert choice.q_hat == pytest.approx(-0.1)


def test_greedy_never_leaves_a_seen_arm_scoring_above_zero_for_an_unseen_one() -> None:
    # epsilon 0: pure greedy, unseen arms count as 0. T = 10 < 50 batches: one decision each.
    # The first decision ties (nothing seen) and picks some arm; it scores > 0, so every
    # later decision repeats it.
    env = noiseless_bon([0.5, 0.4, 0.3], [0.0] * 3, 1, {"only": 0.0})
    for seed in range(3):
        oracle = SimulatedOracle(env, np.arange(3), 10, np.random.default_rng(seed))
        greedy = get_learner("egreedy").configure(epsilon=0.0).learner
        result = greedy(env.problem, oracle, 10, np.random.default_rng(seed))
        assert len(pulls_per_prompt(result.trace.rounds)) == 1


def test_sequential_learners_draw_contexts_by_their_probabilities() -> None:
    # two contexts, probabilities 0.8 and 0.2 (the environment's own grid is uniform): context
    # "a" weighs objective 0 (prompt 0 is best), context "b" objective 1 (prompt 1 is best).
    # Greedy (epsilon 0) pulls the best arm of the context drawn, so after the first batch
    # prompt 0 gets 80% of the decisions.
    env = noiseless_bon([[0.9, 0.1], [0.1, 0.9]], [0.0, 0.0], 1, {"x": 0.0},
                        weight_grid=[[1.0, 0.0], [0.0, 1.0]])
    base = env.problem
    grid = ContextGrid.product(base.grid.objectives, [(1.0, 0.0), (0.0, 1.0)], {"x": 0.0},
                               probabilities=[0.8, 0.2])
    problem = Problem(base.name, base.aggregator, base.prompts, base.n_max, grid, base.cost)
    oracle = SimulatedOracle(env, np.arange(3), 4000, np.random.default_rng(0))
    greedy = get_learner("egreedy").configure(epsilon=0.0).learner
    result = greedy(problem, oracle, 4000, np.random.default_rng(1))
    first = pulls_per_prompt(result.trace.rounds[:1])
    assert first[0] > 0 and first[1] > 0
    later = pulls_per_prompt(result.trace.rounds[1:])
    k = sum(later.values())
    assert within(later[0], k, 0.8)  # 3136 of 3920, sd 25; uniform contexts would give 1960
    assert [(c.prompt, c.n) for c in result.choices] == [(0, 1), (1, 1)]


@pytest.mark.parametrize("name", ["psst", "psst-k4", "uniform", "egreedy", "softmax", "ucb",
                                  "triple-n1", "triple-nrand", "psst-model", "psst-model4"])
def test_a_learner_spends_exactly_t_more_on_an_oracle_that_spent_before(name: str) -> None:
    env = noiseless_bon([0.3, 0.9, 0.1, 0.7, 0.5, 0.8], [0.01] * 6, 4, {"lo": 0.0, "hi": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 1000, np.random.default_rng(0))
    oracle.pull([Pull(0, 4, 10)])  # 40 completions spent before the learner starts
    result = get_learner(name).learner(env.problem, oracle, 500, np.random.default_rng(1))
    assert oracle.ledger.spent == 540 and result.trace.completions_used == 500
    assert sum(r.spent for r in result.trace.rounds) == 500


@pytest.mark.parametrize("budget", [-1, 2.5])
@pytest.mark.parametrize("name", ["psst", "psst-k1", "uniform", "egreedy", "triple-n1",
                                  "psst-model"])
def test_a_budget_must_be_a_whole_non_negative_number(name: str, budget: float) -> None:
    env = noiseless_bon([0.5, 0.4], [0.0, 0.0], 2, {"only": 0.0})
    oracle = SimulatedOracle(env, np.arange(3), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=f"budget T={budget} must be a non-negative integer"):
        get_learner(name).learner(env.problem, oracle, budget, np.random.default_rng(0))
    assert oracle.ledger.spent == 0


@pytest.mark.parametrize("est", SUBSETS)
def test_psst_with_fewer_rounds_than_the_paper_trims_faster(est: str) -> None:
    # the PSST environment above, T = 20: one group of every prompt at N = 2 costs 8, so
    # R_eff = min(3, floor(20 / 8)) = 2 rounds instead of 3. Round 1 (allowance 10, one group
    # each) keeps ceil(8 ** (1/2)) = 3 arms: (0,1), (2,1), (0,2); round 2 (allowance 12,
    # M = 2 + 1 = 3, 4 groups each) keeps 1.
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"only": 1.0})
    result = run(f"psst{est}", env, 20)
    got = [(r.allowance, pulls(r), list(r.alive)) for r in result.trace.rounds]
    assert got == [(10, [(p, 2, 1) for p in range(4)], [3]),
                   (12, [(0, 2, 4), (2, 1, 4)], [1])]
    assert result.trace.info["rounds_run"] == 2 and result.trace.info["rounds_paper"] == 3
    assert result.trace.notes == [
        "2 rounds instead of the paper's 3: T=20 pays for at most 2 rounds of 8 completions"]
    assert (result.choices[0].prompt, result.choices[0].n) == (0, 1)


def test_psst_below_one_completion_per_prompt_keeps_t_distinct_prompts() -> None:
    env = noiseless_bon([0.3, 0.9, 0.1, 0.7, 0.5], [0.0] * 5, 2, {"only": 0.0})
    for seed in range(5):
        result = run("psst", env, 4, seed)
        got = [p for r in result.trace.rounds for p in pulls(r)]
        # 4 < 5 prompts: 4 different prompts, one completion each at N = 1
        assert len({q for q, _, _ in got}) == 4 and all(x[1:] == (1, 1) for x in got)
        assert result.trace.notes[0] == ("T=4 is below one completion per prompt (5); kept 4 "
                                         "random prompts at N = 1")
    # the same rule for TRIPLE, whose prompts are all at N = 1: 4 of 6 prompts, once each
    result = run("triple-n1", noiseless_bon([0.3, 0.9, 0.1, 0.7, 0.5, 0.8], [0.0] * 6, 3,
                                            {"only": 0.0}), 4)
    got = [p for r in result.trace.rounds for p in pulls(r)]
    assert len({q for q, _, _ in got}) == 4 and all(x[1:] == (1, 1) for x in got)


@pytest.mark.parametrize("budget, k, note", [
    (40, 4, "screening skipped: rho*T = 8 cannot give each of 10 prompts a sample"),
    (1000, 10, "screening skipped: K=10 keeps every prompt"),
])
def test_top_k_screening_is_skipped_when_it_cannot_screen(budget: int, k: int,
                                                         note: str) -> None:
    env = noiseless_bon(FIRST, [0.01] * 10, 2, {"b": 0.1})
    oracle = SimulatedOracle(env, np.arange(3), budget, np.random.default_rng(0))
    screen = get_learner("psst-k1").configure(k=k).learner
    result = screen(env.problem, oracle, budget, np.random.default_rng(1))
    assert result.trace.notes[0] == note
    # plain PSST over every arm: its first round pulls every prompt at N_max
    assert result.trace.rounds[0].round == 1
    assert {p[:2] for p in pulls(result.trace.rounds[0])} == {(p, 2) for p in range(10)}
    assert oracle.ledger.spent == budget


def test_top_k_screening_with_one_sample_per_prompt() -> None:
    # T = 50: rho T = 10, one sample per prompt, which is enough to screen on noiseless data
    env = noiseless_bon(FIRST, [0.01] * 10, 2, {"b": 0.1})
    result = run("psst-k4", env, 50)
    assert pulls(result.trace.rounds[0]) == [(p, 1, 1) for p in range(10)]
    assert set(result.trace.info["screened_prompts"][0]) == set(BY_FIRST[:4])


@pytest.mark.parametrize("name", ["psst-model", "psst-model4"])
def test_psst_model_pulls_every_live_prompt_at_min_of_group_and_n_max(name: str) -> None:
    # the PSST environment (N_max 2): groups of min(group, N_max) = 2 for both learners. After
    # round 1 prompts 1 and 2 have only N = 1 alive, yet are pulled in groups of 2.
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"only": 1.0})
    result = run(name, env, 100)
    r1, r2, r3 = result.trace.rounds
    assert pulls(r1) == [(p, 2, 4) for p in range(4)]  # M = 8, floor(33 / 8) = 4
    assert pulls(r2) == [(0, 2, 5), (1, 2, 5), (2, 2, 5)]  # M = 6, floor(34 / 6) = 5
    assert [list(r.alive) for r in (r1, r2, r3)] == [[4], [2], [1]]


def test_psst_model_estimates_mv_with_a_dirichlet_half_prior() -> None:
    # one query, a prompt that is always right: after k answers, the posterior over (gold,
    # an answer not seen yet) is Dirichlet(k + 1/2, 1/2), so the next answer is gold with
    # probability (k + 1/2) / (k + 1). Cost 0.1 with cost weight 1 makes N = 1 the best arm.
    data = {"answer_probs": np.array([[[1.0, 0.0]], [[0.0, 1.0]]]),
            "gold": np.zeros(1, dtype=np.int64), "cost_per_completion": np.array([0.1, 0.1]),
            "budget_levels": np.array(["high"]), "cost_weights": np.ones(1),
            "n_max": np.array(4)}
    env = environment_from_arrays("sure", data, cacheable=False)
    result = run("psst-model", env, 200)
    (choice,) = result.choices
    k = sum(n * m for r in result.trace.rounds for q, n, m in pulls(r) if q == 0)
    assert (choice.prompt, choice.n, choice.samples) == (0, 1, 1)  # samples: queries seen
    assert choice.q_hat == pytest.approx((k + 0.5) / (k + 1) - 0.1)


def test_learner_names_and_estimators() -> None:
    with pytest.raises(ValueError, match="unknown learner 'nope'; known: psst, psst-k1, "):
        get_learner("nope")
    with pytest.raises(ValueError, match="unknown estimator 'magic' in 'psst:magic'; known: "
                                         "blocks, subsets"):
        get_learner("psst:magic")
    assert get_learner("psst:blocks").name == "psst" == get_learner("psst", "blocks").name
    sub = get_learner("psst", "subsets")
    assert sub.name == "psst:subsets" and sub.summary.endswith("[subsets estimator]")


@pytest.mark.parametrize("name", ["egreedy", "softmax", "ucb"])
def test_sequential_batches_stay_within_their_allowance(name: str) -> None:
    # one prompt, N_max 4, T = 100: batches of 2 completions, arms costing up to 4. A batch
    # takes the decisions that fit its allowance, or its first decision alone if that does
    # not fit; every arm stays alive.
    env = noiseless_bon([0.5], [0.01], 4, {"only": 1.0})
    for seed in range(3):
        result = run(name, env, 100, seed)
        for r in result.trace.rounds:
            decisions = sum(m for _, _, m in pulls(r))
            assert r.spent <= r.allowance or decisions == 1
            assert list(r.alive) == [4]
        assert result.trace.completions_used == 100


def test_psst_at_exactly_one_group_of_every_prompt_needs_no_scale_cap() -> None:
    # the PSST environment, T = 8 = 4 prompts x N_max 2: one round of one group each
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"only": 1.0})
    result = run("psst", env, 8)
    assert result.trace.notes == [
        "1 rounds instead of the paper's 3: T=8 pays for at most 1 rounds of 8 completions"]
    assert "scale_cap" not in result.trace.info
    assert pulls(result.trace.rounds[0]) == [(p, 2, 1) for p in range(4)]


def test_top_k_screening_caps_the_scale_by_the_prompts_it_kept() -> None:
    # ten prompts, N_max 32, T = 100: screening spends 20 (2 per prompt) and keeps 4 prompts;
    # PSST's 80 cannot pay a group of 32 of each (128): cap = floor(80 / 4 kept) = 20
    env = noiseless_bon(FIRST, [0.01] * 10, 32, {"b": 0.1})
    result = run("psst-k4", env, 100)
    assert result.trace.info["scale_cap"] == 20
    assert ("T=80 cannot pay one group of every prompt at its largest N (128); arms with "
            "N > 20 were dropped (scale cap)") in result.trace.notes
    # one round (a group of each kept prompt costs 80): N = 20 each
    assert pulls(result.trace.rounds[1]) == sorted((p, 20, 1) for p in BY_FIRST[:4])
    assert result.trace.completions_used == 100


def test_psst_model_caps_its_group_size_on_a_small_budget() -> None:
    # 4 prompts in groups of 2 cost 8 > T = 6: groups of floor(6 / 4) = 1, one round
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"only": 1.0})
    result = run("psst-model", env, 6)
    assert "T=6: groups of 1 (scale cap)" in result.trace.notes
    assert all(n == 1 for r in result.trace.rounds for _, n, _ in pulls(r))
    assert result.trace.completions_used == 6


# ---------------------------------------------------------------- the learners' shape


@pytest.mark.parametrize("stockpile, samples", [(True, 30), (False, 20)])
def test_psst_without_stockpiling_estimates_from_the_last_round_alone(stockpile: bool,
                                                                      samples: int) -> None:
    # 2 prompts, N_max 2, Q(p, n) = v_p - 0.1 n with v = 0.9, 0.1: |A| = 4, R = 2, T = 40.
    # Round 1 (20): both prompts at N = 2, 5 groups each; prompt 0's two arms are kept.
    # Round 2 (20): prompt 0 at N = 2, 10 groups. The choice (0, 1) has 2 blocks per group:
    # 10 + 20 = 30 when stockpiling, 20 from round 2 alone when not.
    env = noiseless_bon([0.9, 0.1], [0.1, 0.1], 2, {"b": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 40, np.random.default_rng(0))
    learner = PSST(stockpile=stockpile)
    result = learner(env.problem, oracle, 40, np.random.default_rng(1))
    assert [(pulls(r), list(r.alive)) for r in result.trace.rounds] == [
        ([(0, 2, 5), (1, 2, 5)], [2]), ([(0, 2, 10)], [1])]
    (choice,) = result.choices
    assert (choice.prompt, choice.n, choice.samples) == (0, 1, samples)
    assert choice.q_hat == pytest.approx(0.8)


def test_a_round_only_model_forgets_every_round_instead_of_falling_back_to_blocks() -> None:
    # psst-model's problem (4 prompts, N_max 8, T = 400, groups of 2: the schedule of
    # test_psst_model_pulls_small_groups_and_trims_by_the_model) composed with an estimator
    # that forgets: the choice's model counts the last round's groups alone, 80 // 2 = 40,
    # not 10 + 20 + 3 * 40 = 150; its value is still exact, 0.9 - 0.01 = 0.89.
    from iapo.learners.psst import Groups, RoundOnly
    from iapo.model import ModelQTable

    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.01] * 4, 8, {"only": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 400, np.random.default_rng(0))
    result = psst(env.problem, oracle, 400, np.random.default_rng(1), allocation=Groups(2),
                  stats=RoundOnly(lambda: ModelQTable(env.problem)))
    assert [list(r.alive) for r in result.trace.rounds] == [[16], [8], [4], [2], [1]]
    (choice,) = result.choices
    assert (choice.prompt, choice.n, choice.samples) == (0, 1, 40)
    assert choice.q_hat == pytest.approx(0.89)


def test_learners_are_frozen_keyword_only_and_validated_when_made() -> None:
    learner = EpsilonGreedy(epsilon=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        learner.epsilon = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        EpsilonGreedy(0.3)  # type: ignore[misc]
    with pytest.raises(InputError, match="epsilon=2"):
        EpsilonGreedy(epsilon=2)
    with pytest.raises(InputError, match="estimator 'magic' is unknown"):
        PSST(estimator="magic")
    with pytest.raises(InputError, match="K=0"):
        TopKScreening(k=0)
    with pytest.raises(InputError, match="group=0"):
        PSSTModel(group=0)
    with pytest.raises(InputError, match="deploy='n2'"):
        TripleSH(deploy="n2")  # type: ignore[arg-type]
    spec = get_learner("egreedy")
    assert spec.parameters == {"epsilon": 0.15, "batches": 50, "estimator": "blocks",
                               "growth": 1.0}
    assert spec.configure(epsilon=0.3).learner == learner
    with pytest.raises(InputError, match="'egreedy' has no parameter k; its parameters: "
                                         "batches, estimator, growth, epsilon"):
        spec.configure(k=3)
    assert get_learner("psst-model").estimators == ("blocks",)
    assert get_learner("psst-model").parameters == {"group": 2, "alpha": 0.5}
    assert get_learner("psst-k4:subsets").learner == TopKScreening(k=4, estimator="subsets")


def test_screening_hands_its_trace_to_psst() -> None:
    # ten prompts, N_max 2, T = 1000: round 0 screens (200 = 20 per prompt at N = 1), then PSST
    # runs on 800 and goes on with the same trace: its rounds follow, numbered from 1, and the
    # completions used are the sum over all rounds
    env = noiseless_bon(FIRST, [0.01] * 10, 2, {"b": 0.1})
    result = run("psst-k4", env, 1000)
    rounds = result.trace.rounds
    assert [r.round for r in rounds] == list(range(len(rounds)))
    assert rounds[0].pulls == tuple((q, 1, 20) for q in range(10))
    assert result.trace.completions_used == sum(r.spent for r in rounds) == 1000
    assert all(isinstance(r, Round) for r in rounds)
    assert result.trace.to_dict()["rounds"][0] == {
        "round": 0, "allowance": 200, "spent": 200, "pulls": [[q, 1, 20] for q in range(10)],
        "alive": [8]}


def test_train_policy_takes_a_configured_learner_and_records_its_parameters() -> None:
    from iapo import get_environment, train_policy

    env = get_environment("math")
    spec = get_learner("psst-k4").configure(rho=0.5)
    policy = train_policy(env, spec, budget=1000, seed=0)
    assert policy.learner == "psst-k4"
    assert policy.trace["parameters"] == {"k": 4, "rho": 0.5, "estimator": "blocks"}
    # rho = 0.5: the screening round spends floor(500 / P) per prompt at N = 1
    (screen, *_) = policy.trace["rounds"]
    assert screen["round"] == 0 and screen["allowance"] == 500
    with pytest.raises(InputError, match=r"spec.configure\(estimator=...\)"):
        train_policy(env, spec, budget=1000, seed=0, estimator="subsets")


# ---------------------------------------------------------------- hyperparameters reach the rule


@pytest.mark.parametrize("name", ["egreedy", "softmax", "ucb"])
def test_sequential_learners_decide_in_the_batches_they_are_given(name: str) -> None:
    # one prompt, N_max 1, T = 400, equal batches: 10 batches of 40 decisions, 400 (fully
    # sequential) of 1
    env = noiseless_bon([0.5], [0.0], 1, {"only": 0.0})
    for batches in (10, 400):
        oracle = SimulatedOracle(env, np.arange(3), 400, np.random.default_rng(0))
        learner = get_learner(name).configure(batches=batches, growth=1.0).learner
        result = learner(env.problem, oracle, 400, np.random.default_rng(1))
        assert [r.spent for r in result.trace.rounds] == [400 // batches] * batches
        assert result.trace.info["batches"] == batches


@pytest.mark.parametrize("name", ["egreedy", "softmax", "ucb"])
def test_sequential_learners_grow_their_batches_geometrically(name: str) -> None:
    # one prompt, N_max 1 (every decision costs 1), T = 700, 3 batches growing by 2: the
    # first is 700 (2 - 1) / (2^3 - 1) = 100, then 200 and 400
    env = noiseless_bon([0.5], [0.0], 1, {"only": 0.0})
    oracle = SimulatedOracle(env, np.arange(3), 700, np.random.default_rng(0))
    learner = get_learner(name).configure(batches=3, growth=2.0).learner
    result = learner(env.problem, oracle, 700, np.random.default_rng(1))
    assert [r.spent for r in result.trace.rounds] == [100, 200, 400]
    assert result.trace.info["growth"] == 2.0
    # T = 710: sizes ceil(101.4) = 102, ceil(202.9) = 203, ceil(405.7) = 406; the last one
    # stops at the budget
    oracle = SimulatedOracle(env, np.arange(3), 710, np.random.default_rng(0))
    result = learner(env.problem, oracle, 710, np.random.default_rng(1))
    assert [r.spent for r in result.trace.rounds] == [102, 203, 405]
    with pytest.raises(InputError, match="growth=0.5 must be a number in"):
        get_learner(name).configure(growth=0.5)


def test_psst_model_uses_its_prior() -> None:
    # as in the test above, with the Dirichlet prior alpha = 2 on gold and on the unseen
    # bucket: the next answer is gold with probability (k + 2) / (k + 4)
    data = {"answer_probs": np.array([[[1.0, 0.0]], [[0.0, 1.0]]]),
            "gold": np.zeros(1, dtype=np.int64), "cost_per_completion": np.array([0.1, 0.1]),
            "budget_levels": np.array(["high"]), "cost_weights": np.ones(1),
            "n_max": np.array(4)}
    env = environment_from_arrays("sure", data, cacheable=False)
    oracle = SimulatedOracle(env, np.arange(env.n_queries), 200, np.random.default_rng(0))
    learner = get_learner("psst-model").configure(alpha=2.0).learner
    result = learner(env.problem, oracle, 200, np.random.default_rng(1))
    (choice,) = result.choices
    k = sum(n * m for r in result.trace.rounds for q, n, m in pulls(r) if q == 0)
    assert (choice.prompt, choice.n) == (0, 1)
    assert choice.q_hat == pytest.approx((k + 2) / (k + 4) - 0.1)


def test_psst_model_checks_its_parameters_at_their_bounds() -> None:
    assert PSSTModel(group=1).group == 1 and PSSTModel(alpha=1e-9).alpha == 1e-9
    for bad in ({"group": 0}, {"group": 1.5}, {"alpha": 0.0}, {"alpha": -1.0}):
        with pytest.raises(InputError, match=f"{next(iter(bad))}="):
            PSSTModel(**bad)  # type: ignore[arg-type]


def test_psst_refuses_an_active_set_that_leaves_a_context_without_arms() -> None:
    env = noiseless_bon([0.5, 0.4], [0.0, 0.0], 2, {"a": 0.0, "b": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 100, np.random.default_rng(0))
    active = np.ones((2, 2, 2), dtype=bool)
    active[1] = False  # context "b" has no arm
    with pytest.raises(InputError, match=r"active must be \[C, P, N\] = \(2, 2, 2\) with an arm "
                                         "in every context"):
        psst(env.problem, oracle, 100, np.random.default_rng(0), active=active)
    with pytest.raises(InputError, match="active must be"):
        psst(env.problem, oracle, 100, np.random.default_rng(0), active=np.ones((2, 2, 3)))
    # the arms of the final choice are checked, by their own name, before anything is paid
    with pytest.raises(InputError, match=r"choose_from must be \[C, P, N\] = \(2, 2, 2\)"):
        psst(env.problem, oracle, 100, np.random.default_rng(0), choose_from=active)
    assert oracle.ledger.spent == 0


def test_psst_with_no_budget_pulls_nothing_and_keeps_no_prompt_in_particular() -> None:
    # T = 0 < #prompts (rule 1): T random prompts are kept, i.e. none; nothing is pulled and
    # the policy is a random arm: over seeds, not always the first prompt
    env = noiseless_bon([0.5, 0.4, 0.3, 0.2], [0.0] * 4, 2, {"only": 0.0})
    chosen = set()
    for seed in range(12):
        oracle = SimulatedOracle(env, np.arange(3), 0, np.random.default_rng(seed))
        result = psst(env.problem, oracle, 0, np.random.default_rng(seed))
        assert oracle.ledger.spent == 0 and result.trace.rounds == []
        chosen.add(result.choices[0].prompt)
    assert len(chosen) > 1


def test_psst_notes_how_many_rounds_a_tiny_budget_pays_for() -> None:
    # one prompt, N_max 4: |A| = 4, R = 2. T = 1: rule 1 caps N at floor(1 / 1) = 1, one group
    # of the prompt costs M_1 = 1, so T pays for min(2, 1 // 1) = 1 round
    env = noiseless_bon([0.5], [0.0], 4, {"only": 0.0})
    oracle = SimulatedOracle(env, np.arange(3), 1, np.random.default_rng(0))
    result = psst(env.problem, oracle, 1, np.random.default_rng(0))
    assert result.trace.notes[-1] == ("1 rounds instead of the paper's 2: T=1 pays for at most "
                                      "1 rounds of 1 completions")


def test_psst_without_stockpiling_keeps_its_estimator() -> None:
    # FirstIsBestOracle, one prompt, N_max 4, T = 40: each round pulls 5 groups of 4. Every
    # round's data say the same, so the last round alone gives the subsets answer (0, 4) 0.8
    # (blocks would give (0, 3) 0.85; see test_the_estimator_decides_what_a_group_says)
    problem = noiseless_bon([0.0], [0.05], 4, {"only": 1.0}).problem
    oracle = FirstIsBestOracle(problem, 40)
    learner = PSST(stockpile=False, estimator="subsets")
    (choice,) = learner(problem, oracle, 40, np.random.default_rng(0)).choices
    assert (choice.n, choice.q_hat) == (4, pytest.approx(0.8))


def test_a_configured_learner_keeps_its_name_and_summary() -> None:
    spec = get_learner("psst-k4")
    configured = spec.configure(rho=0.3)
    assert (configured.name, configured.summary) == (spec.name, spec.summary)
    assert configured.learner == TopKScreening(k=4, rho=0.3)


# ---------------------------------------------------------------- psst-auto


def test_psst_auto_screens_prompts_then_runs_psst_on_the_survivors_by_hand() -> None:
    # Best-of-N without noise: 8 prompts scoring FIRST[:8] = 0.5, 0.2, 0.9, 0.0, 0.7, 0.4, 0.8,
    # 0.1, cost 0.01 each with cost weight 1: the best arm is (2, 1); model and blocks are
    # exact, so both rank the prompts alike. N_max 4: groups of g = 4. T = 200, screening
    # 100: R_s = ceil(log2(8 / 2)) = 2 <= floor(100 / 32) rounds.
    # Blocks decide (fixed; the default's own path: the next test).
    env = noiseless_bon(FIRST[:8], [0.01] * 8, 4, {"b": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 200, np.random.default_rng(0))
    result = get_learner("psst-auto").configure(decide="blocks").learner(
        env.problem, oracle, 200, np.random.default_rng(1))
    rounds = result.trace.rounds
    assert [r.round for r in rounds] == [-2, -1, 1, 2]
    s1, s2, p1, p2 = rounds
    # round -2: allowance floor(100 / 2) = 50, M = 8 x 4: one group each (32). A context keeps
    # half, 4: the union of the best ceil(4 / 2) = 2 by the model and by the blocks, which
    # agree here: prompts 2 and 6, 2 x 4 arms
    assert (s1.allowance, pulls(s1), list(s1.alive)) == (50, [(p, 4, 1) for p in range(8)], [8])
    # (the rest, at least 100, pays 25 blocks of 4: a context keeping 2 prompts will commit, so
    # it ranks by Q(c, p, 1) where its groups tell the prompts apart at one completion; with
    # one group each, as many groups as prompts, they cannot: the union)
    # round -1 (the last): allowance 100 - 32 = 68, M = 2 x 4: 8 groups each (64). Now 9
    # groups each, alike within a prompt and apart between (F infinite): the best keep = 2 by
    # Q(c, p, 1), prompts 2 and 6 (the union would keep the best 1 by each ranking, 2)
    assert (s2.allowance, pulls(s2), list(s2.alive)) == (68, [(2, 4, 8), (6, 4, 8)], [8])
    assert result.trace.info["screening_ranked_by"] == [
        "union", "union, 1 of 1 contexts by Q(c, p, 1)"]
    assert result.trace.info["screened_prompts"] == [[2, 6]]
    # the rest, 200 - 96 = 104, pays 26 blocks of 4, fewer than 30 for each of 2: the context
    # commits to prompt 2 (Q(c, p, 1) 0.89 against 0.79)
    assert result.trace.info["committed"] == [2]
    # PSST on prompt 2's 4 arms with 104: R = 2 rounds of 52; round 1 pulls N = 4, 13 groups,
    # keeps N = 1, 2 (Q falls with N); round 2 pulls N = 2, 26 groups
    assert (p1.allowance, pulls(p1), list(p1.alive)) == (52, [(2, 4, 13)], [2])
    assert (p2.allowance, pulls(p2), list(p2.alive)) == (52, [(2, 2, 26)], [1])
    (choice,) = result.choices
    assert (choice.prompt, choice.n, choice.q_hat) == (2, 1, pytest.approx(0.89))
    assert result.trace.completions_used == oracle.ledger.spent == 200


def test_psst_auto_keeps_the_exact_model_and_screens_by_it_alone_by_hand() -> None:
    # The same noiseless Best-of-N with the default (validation): the model and the blocks
    # are both exact, so their held-out errors are equal and blocks cannot beat the model,
    # which stands; its rise from 1 to 4 completions is 0, as every group's (no spread), so
    # the slope check keeps it. The model alone ranks: round -2 keeps half, the best 4 by
    # value (2 .9, 6 .8, 4 .7, 0 .5); round -1 (allowance 100 - 32 = 68, M = 4 x 4: 4 groups
    # each, 64) keeps 2 and 6. PSST decides with the model in groups of 4 on those two.
    env = noiseless_bon(FIRST[:8], [0.01] * 8, 4, {"b": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 200, np.random.default_rng(0))
    result = get_learner("psst-auto").learner(env.problem, oracle, 200, np.random.default_rng(1))
    info = result.trace.info
    assert info["estimator"]["choice"] == "model"
    assert info["estimator"]["slope"]["rejects"] is False
    assert info["estimator"]["slope"]["excess"] == pytest.approx(0.0, abs=1e-12)
    assert info["screening_ranked_by"] == ["model", "model"]
    s1, s2 = result.trace.rounds[:2]
    assert (s1.round, list(s1.alive)) == (-2, [4 * 4])
    assert (s2.round, s2.allowance, pulls(s2)) == (-1, 68, [(p, 4, 4) for p in (0, 2, 4, 6)])
    assert info["screened_prompts"] == [[2, 6]]
    assert {(p, n) for r in result.trace.rounds[2:] for p, n, _ in pulls(r)} <= {(2, 4), (6, 4)}
    assert "committed" not in info  # the model decides: no commitment
    (choice,) = result.choices
    assert (choice.prompt, choice.n) == (2, 1)


def test_psst_auto_skips_screening_it_cannot_pay_for() -> None:
    # 8 prompts, groups of 4: a screening round needs 32; T = 60 gives the screening 30
    env = noiseless_bon(FIRST[:8], [0.01] * 8, 4, {"b": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 60, np.random.default_rng(0))
    result = get_learner("psst-auto").learner(env.problem, oracle, 60, np.random.default_rng(1))
    assert result.trace.notes[0] == ("screening skipped: 8 prompts, keep=2, and rho*T = 30 "
                                     "cannot pay a round of groups of 4 for every prompt")
    assert all(r.round >= 1 for r in result.trace.rounds) and oracle.ledger.spent == 60


# ---------------------------------------------------------------- messages, bounds, the shared loop


def test_parameter_errors_name_the_parameter_as_written() -> None:
    # the exact message, case included, of every hyperparameter check
    for make, message in [
        (lambda: EpsilonGreedy(batches=0), "batches=0 must be an integer of at least 1"),
        (lambda: Softmax(temperature=0.0), "temperature=0.0 must be positive"),
        (lambda: TopKScreening(k=1, rho=0.0), "rho=0.0 must lie strictly between 0 and 1"),
        (lambda: PSST(estimator="magic"), "estimator 'magic' is unknown; use one of blocks, "
                                          "subsets"),
        (lambda: UCB(growth=0.5), "growth=0.5 must be a number in [1, 10] (the ratio of one "
                                  "decision batch to the one before; 1: equal batches)"),
        (lambda: get_learner("egreedy").configure(k=3, zeta=1),
         "'egreedy' has no parameter k, zeta; its parameters: batches, estimator, growth, "
         "epsilon"),
    ]:
        with pytest.raises(InputError) as error:
            make()
        assert str(error.value) == message


def test_growth_is_allowed_up_to_ten() -> None:
    assert UCB(growth=10.0).growth == 10.0 and Softmax(growth=1.0).growth == 1.0
    for bad in (10.01, 0.99, True):
        with pytest.raises(InputError, match="must be a number in"):
            UCB(growth=bad)


def test_batch_sizes_by_hand() -> None:
    # equal: ceil(T / batches), at least 1
    assert batch_sizes(100, 4, 1.0).tolist() == [25] * 4
    assert batch_sizes(101, 4, 1.0).tolist() == [26] * 4
    assert batch_sizes(3, 5, 1.0).tolist() == [1] * 5
    # geometric, first = T (g - 1) / (g^b - 1): 1300 x 2 / 26 = 100, then x 3
    assert batch_sizes(1300, 3, 3.0).tolist() == [100, 300, 900]
    # 10 x 1 / 31 = 0.32: ceil of 0.32, 0.65, 1.29, 2.58, 5.16, each at least 1
    assert batch_sizes(10, 5, 2.0).tolist() == [1, 1, 2, 3, 6]


def test_sample_rows_draws_each_decision_from_its_own_row() -> None:
    # row 0: weights 1, 3, 0 -> 1/4, 3/4, 0; row 1 is all zero and never used; row 2 sums to
    # 0.8 < 1: 1/4, 1/4, 1/2. 20,000 decisions per used row.
    weights = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.4]])
    contexts = np.repeat([0, 2], 20_000)
    arms = sample_rows(weights, contexts, np.random.default_rng(0))
    for row, probs in [(0, [0.25, 0.75, 0.0]), (2, [0.25, 0.25, 0.5])]:
        counts = np.bincount(arms[contexts == row], minlength=3)
        for arm, p in enumerate(probs):
            assert within(int(counts[arm]), 20_000, p) if p else counts[arm] == 0, (row, arm)


def test_the_shared_loop_defaults_to_50_equal_batches_of_blocks() -> None:
    # one prompt, N_max 1: every decision pulls (0, 1). T = 400 without batches, estimator or
    # growth: 50 equal batches of 400 / 50 = 8, estimated by blocks (one per completion)
    env = noiseless_bon([0.5], [0.0], 1, {"only": 0.0})
    oracle = SimulatedOracle(env, np.arange(3), 400, np.random.default_rng(0))
    result = sequential(env.problem, oracle, 400, np.random.default_rng(1),
                        EpsilonGreedy().select)
    assert result.trace.info == {"batches": 50, "growth": 1.0}
    assert [r.spent for r in result.trace.rounds] == [8] * 50
    assert result.choices[0].samples == 400
    with pytest.raises(InputError) as error:
        sequential(env.problem, oracle, 0, np.random.default_rng(1), EpsilonGreedy().select,
                   batches=0)
    assert str(error.value) == "batches=0 must be an integer of at least 1"


def test_a_sequential_learner_sizes_its_batches_by_its_own_spending() -> None:
    # as test_sequential_learners_grow_their_batches_geometrically (T = 700, 3 batches growing
    # by 2: 100, 200, 400), on an oracle that spent 50 completions before the learner started
    env = noiseless_bon([0.5], [0.0], 1, {"only": 0.0})
    oracle = SimulatedOracle(env, np.arange(3), 750, np.random.default_rng(0))
    oracle.ledger.charge(50)
    learner = get_learner("egreedy").configure(batches=3, growth=2.0).learner
    result = learner(env.problem, oracle, 700, np.random.default_rng(1))
    assert [r.spent for r in result.trace.rounds] == [100, 200, 400]
    assert result.trace.completions_used == 700


def test_softmax_probabilities_in_a_context_depend_on_its_estimates_alone() -> None:
    # as test_softmax_pulls_with_boltzmann_probabilities (scores 0.1, 0.05, 0: e^2, e, 1 over
    # their sum), in two contexts drawn with probability 1/2: cost weight 0, and cost weight 40
    # with a cost of 1 per completion, so Q = score - 40 there. Adding a constant to a row
    # leaves exp(Q / 0.05) normalised per row unchanged, although the two rows' logits are
    # 800 apart (exp(-800) underflows to 0 if the rows are not shifted each by its own max).
    env = noiseless_bon([0.1, 0.05, 0.0], [1.0] * 3, 1, {"free": 0.0, "dear": 40.0})
    result = run("softmax", env, 4000, **EQUAL)
    later = pulls_per_prompt(result.trace.rounds[1:])
    k = sum(later.values())
    weights = [math.e**2, math.e, 1.0]
    for p, w in enumerate(weights):
        assert within(later[p], k, w / sum(weights)), (p, later[p], k * w / sum(weights))


def test_psst_without_stockpiling_and_without_budget_still_returns_a_policy() -> None:
    # T = 0: no round runs, so the round-only estimator is read before any update
    env = noiseless_bon([0.5, 0.4], [0.0, 0.0], 2, {"a": 0.0, "b": 1.0})
    oracle = SimulatedOracle(env, np.arange(3), 0, np.random.default_rng(0))
    result = PSST(stockpile=False)(env.problem, oracle, 0, np.random.default_rng(1))
    assert result.trace.rounds == [] and oracle.ledger.spent == 0
    assert len(result.choices) == 2
    assert all(c.samples == 0 and math.isnan(c.q_hat) for c in result.choices)


def test_psst_reads_an_active_set_of_zeros_and_ones() -> None:
    # v = (0.9, 0.5, 0.7, 0.1), cost 0.3, cost weights lo 0.1 and hi 1. Active: prompt 3 in
    # no context, prompt 0 only in hi, given as a nested list of 0/1.
    # lo: Q = v - 0.03 n over prompts 1, 2: best (2, 1) 0.67. hi: Q = v - 0.3 n: best (0, 1) 0.6.
    env = noiseless_bon([0.9, 0.5, 0.7, 0.1], [0.3] * 4, 2, {"lo": 0.1, "hi": 1.0})
    active = np.ones((2, 4, 2), dtype=int)
    active[:, 3] = 0
    active[0, 0] = 0
    for seed in range(4):
        oracle = SimulatedOracle(env, np.arange(3), 100, np.random.default_rng(seed))
        result = psst(env.problem, oracle, 100, np.random.default_rng(seed),
                      active=active.tolist())
        assert [(c.prompt, c.n) for c in result.choices] == [(2, 1), (0, 1)]
        assert all(p != 3 for r in result.trace.rounds for p, _, _ in r.pulls)


class Scripted:
    """Estimates that follow a script: after the k-th update, ``tables[k - 1]`` [C, P, N]
    (the last one from then on), with a real QTable's counts. A unit test's estimator, for
    which arms the final choice is made among."""

    def __init__(self, env: Environment, tables: Sequence[np.ndarray]) -> None:
        from iapo.estimate import QTable

        self.inner, self.tables, self.updates = QTable(env.problem), tables, 0
        self.width = self.latency = None

    def update(self, observations: Sequence[Observation]) -> None:
        self.inner.update(observations)
        self.updates += 1

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.tables[min(self.updates, len(self.tables)) - 1], dtype=float)

    @property
    def counts(self) -> np.ndarray:
        return self.inner.counts


@pytest.mark.parametrize("choose_from", [None, "all", "first prompt"])
def test_psst_chooses_among_the_arms_it_is_told_by_the_last_estimates(
        choose_from: str | None) -> None:
    """One context, two prompts, N_max 2: four arms, two rounds. After round 1 prompt 0's
    arms look best (0.9, 0.8 against 0.5, 0.4), so they are the two kept; after round 2 they
    fall to 0.3 and 0.2 and the last trim keeps (0, N = 1). Algorithm 1 chooses that
    survivor; told every arm, the choice is the best of the last estimates, (1, N = 1) at
    0.5, outside the survivors (``reopened``); told prompt 0's arms, (0, 1) again."""
    env = noiseless_bon([0.9, 0.5], [0.01, 0.01], 2, {"only": 1.0})
    tables = [[[[0.9, 0.8], [0.5, 0.4]]], [[[0.3, 0.2], [0.5, 0.4]]]]
    allowed = {None: None, "all": np.ones((1, 2, 2), dtype=bool),
               "first prompt": np.array([[[True, True], [False, False]]])}[choose_from]
    oracle = SimulatedOracle(env, np.arange(env.n_queries), 100, np.random.default_rng(0))
    result = psst(env.problem, oracle, 100, np.random.default_rng(1),
                  stats=Scripted(env, tables), choose_from=allowed)
    assert [list(r.alive) for r in result.trace.rounds] == [[2], [1]]
    (choice,) = result.choices
    want = (1, 1, 0.5) if choose_from == "all" else (0, 1, 0.3)
    assert (choice.prompt, choice.n, choice.q_hat) == want
    if choose_from is None:
        assert "reopened" not in result.trace.info
    else:
        assert result.trace.info["reopened"] == [choose_from == "all"]
        assert result.trace.info["survivors_choice"] == [[0, 1]]  # Algorithm 1's


def test_algorithm_1_s_choice_is_recorded_with_the_tie_breaks_it_would_have_had() -> None:
    """With T = 0 no round runs and no arm has data, so the choice is a tie among all of them,
    broken by the generator. Told every arm, PSST chooses what it would have without being
    told (the same draws), records that choice as Algorithm 1's, and reopens nothing; the
    generator is left as Algorithm 1 leaves it, for seeds 0 to 19."""
    env = noiseless_bon([0.9, 0.5, 0.7], [0.01] * 3, 4, {"low": 0.0, "high": 1.0})
    every = np.ones((2, 3, 4), dtype=bool)
    for seed in range(20):
        runs = []
        for allowed in (None, every):
            oracle = SimulatedOracle(env, np.arange(env.n_queries), 0,
                                     np.random.default_rng(0))
            rng = np.random.default_rng(seed)
            result = psst(env.problem, oracle, 0, rng, choose_from=allowed)
            runs.append(([[c.prompt, c.n] for c in result.choices], result.trace.info,
                         rng.random()))
        (plain, _, after), (told, info, after_told) = runs
        assert told == plain == info["survivors_choice"]
        assert info["reopened"] == [False, False]
        assert after_told == after
