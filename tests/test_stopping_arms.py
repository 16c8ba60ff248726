"""Majority-voting arms that stop once the vote is decided, end to end: the problem's rule,
the exact Q of an environment, block replays, the model, the CLI (oracle, train and evaluate,
bench), task files and the live waves.

Expected values come from outside the code under test: every answer sequence of a tiny
environment replayed in plain Python, blocks worked by hand, Monte Carlo on the MATH answer
distributions, and properties (an arm that stops pays at most N and at least floor(N/2) + 1
completions, and is never worse than the same arm paying all N). The exact expected cost of
:mod:`iapo.stopping` has its own tests (test_stopping.py).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iapo.envs import MVEnvironment, acr, best_arms, get_environment
from iapo.errors import InputError
from iapo.estimate import QTable
from iapo.live.task import TaskError, load_task
from iapo.live.waves import draw_in_waves, stop_fields
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, Objective, Problem, ProblemError, Stopping
from iapo.pulls import Observation, Pull
from iapo.split import train_test_split
from test_bench import bench, csv_rows, invoke
from test_task_validation import base_raw, write_task

# --- references in plain Python -----------------------------------------------------------------


def replay(seq: tuple[int, ...] | list[int], n: int, wave: int, n_cat: int) -> tuple[int, int]:
    """(completions paid, waves drawn) by the arm (n, wave) on the answers ``seq``: after each
    wave of t answers, stop if leader - runner-up > n - t; at t = n always."""
    counts = [0] * max(n_cat, 2)
    t = waves = 0
    while True:
        step = min(wave, n - t)
        for x in seq[t: t + step]:
            counts[x] += 1
        t += step
        waves += 1
        top = sorted(counts, reverse=True)
        if t == n or top[0] - top[1] > n - t:
            return t, waves


def credit(seq: tuple[int, ...] | list[int], gold: int, n_cat: int) -> float:
    """Eq. 2: 1 / (number of answers tied for the most votes) if the gold is among them."""
    votes = [list(seq).count(c) for c in range(n_cat)]
    top = max(votes)
    return 1.0 / votes.count(top) if votes[gold] == top else 0.0


def brute_arm(q: tuple[float, ...], gold: int, n: int, wave: int) -> tuple[float, float, float]:
    """E[credit], E[completions paid], E[waves] of the arm (n, wave) on one query, over every
    one of the L^n answer sequences."""
    out = [0.0, 0.0, 0.0]
    for seq in itertools.product(range(len(q)), repeat=n):
        pr = math.prod(q[i] for i in seq)
        if pr == 0.0:
            continue
        paid, waves = replay(seq, n, wave, len(q))
        out[0] += pr * credit(seq, gold, len(q))
        out[1] += pr * paid
        out[2] += pr * waves
    return out[0], out[1], out[2]


def replay_many(labels: np.ndarray, n: int, wave: int) -> np.ndarray:
    """Completions paid by the arm (n, wave) on each row of labels [S, >= n]: every wave
    boundary checked in turn (no use of monotonicity)."""
    onehot = labels[:, :n, None] == np.arange(int(labels.max()) + 2)
    counts = np.sort(np.cumsum(onehot, axis=1), axis=2)  # [S, t-1, L] after t answers
    margin = counts[:, :, -1] - counts[:, :, -2]
    paid = np.full(len(labels), n)
    running = np.ones(len(labels), dtype=bool)
    for t in range(wave, n, wave):
        stop = running & (margin[:, t - 1] > n - t)
        paid[stop] = t
        running &= ~stop
    return paid


# --- a tiny environment: 2 prompts, 3 queries, 3 answer categories ----------------------------

PROBS = (
    ((0.6, 0.3, 0.1), (0.2, 0.0, 0.8), (0.4, 0.4, 0.2)),
    ((1.0, 0.0, 0.0), (0.5, 0.25, 0.25), (0.1, 0.6, 0.3)),
)
GOLD = (0, 2, 1)
COSTS = (0.3, 0.7)
N_MAX = 5
CW = (0.0, 1.0)  # the contexts low and high, in this order


def tiny_env() -> MVEnvironment:
    return MVEnvironment("tiny-stop", np.array(PROBS), np.array(GOLD), list(COSTS),
                         {"low": CW[0], "high": CW[1]}, N_MAX, cacheable=False)


@functools.cache
def tiny_arm(p: int, x: int, n: int, wave: int) -> tuple[float, float, float]:
    return brute_arm(PROBS[p][x], GOLD[x], n, wave)


def decided(problem: Problem, wave: int) -> Problem:
    return dataclasses.replace(problem, stopping=Stopping("decided", wave))


# --- 1. the rule and the problem ---------------------------------------------------------------


@pytest.mark.parametrize(("rule", "wave", "needles"), [
    ("maybe", 1, ["'maybe'", "unknown", "'all'", "'decided'"]),
    ("decided", 0, ["wave=0", "integer >= 1"]),
    ("decided", True, ["wave=True", "integer >= 1"]),
    ("decided", 2.5, ["wave=2.5", "integer >= 1"]),
    ("decided", -3, ["wave=-3", "integer >= 1"]),
])
def test_a_bad_stopping_rule_says_what_to_give(rule: str, wave: Any, needles: list[str]) -> None:
    with pytest.raises(ProblemError) as err:
        Stopping(rule, wave)
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize("wave", [None, "two"])
def test_a_wave_that_is_not_a_number_is_a_problem_error(wave: Any) -> None:
    with pytest.raises(ProblemError, match="integer >= 1"):
        Stopping("decided", wave)


def test_the_default_rule_is_the_papers_arm() -> None:
    assert Stopping() == Stopping("all", 1) and not Stopping().early
    assert Stopping("decided", 3).early
    assert Stopping("decided", 3).to_dict() == {"rule": "decided", "wave": 3}
    assert Stopping("decided", 2.0).wave == 2 and isinstance(Stopping("decided", 2.0).wave, int)
    assert tiny_env().problem.stopping == Stopping()


def test_decided_applies_to_majority_voting_only() -> None:
    grid = ContextGrid.product([Objective("quality", 0.0, 1.0)], [(1.0,)], {"low": 0.0})
    with pytest.raises(ProblemError) as err:
        Problem("best", "bon", ("p0",), 4, grid, stopping=Stopping("decided", 2))
    assert "majority voting" in str(err.value) and "stop 'all'" in str(err.value)
    Problem("best", "bon", ("p0",), 4, grid, stopping=Stopping("all", 3))  # fine
    env = get_environment("synth-categorical")
    with pytest.raises(ProblemError, match="majority voting"):
        env.with_stopping(Stopping("decided", 1))


# --- 2. the exact Q of an environment -----------------------------------------------------------


def test_exact_q_of_an_environment_with_unobserved_pairs_averages_what_was_observed() -> None:
    # prompt 0 observed on queries 0 and 2 only, prompt 1 on all three (as an exported live
    # environment marks them): each prompt's Q and paid completions average its own queries
    env = tiny_env()
    env.observed = np.array([[True, False, True], [True, True, True]])
    dec = env.with_stopping(Stopping("decided", 1))
    q = dec.q()
    table = dec.query_table(progress=False)
    for p, queries in ((0, (0, 2)), (1, (0, 1, 2))):
        for n in range(1, N_MAX + 1):
            credit = np.mean([tiny_arm(p, x, n, 1)[0] for x in queries])
            paid = np.mean([tiny_arm(p, x, n, 1)[1] for x in queries])
            assert table.completions()[p, n - 1] == pytest.approx(paid, abs=1e-12)
            for c, cw in enumerate(CW):
                assert q[c, p, n - 1] == pytest.approx(credit - cw * COSTS[p] * paid,
                                                       abs=1e-12)


@pytest.mark.parametrize("wave", [1, 2, 5])
def test_exact_q_charges_the_expected_completions_paid(wave: int) -> None:
    env = tiny_env()
    dec = env.with_stopping(Stopping("decided", wave))
    assert dec.problem.stopping == Stopping("decided", wave)
    assert env.problem.stopping == Stopping()  # a copy: the original is untouched
    for queries in (None, [0, 2, 2]):
        xs = [0, 1, 2] if queries is None else queries
        want = np.zeros((2, 2, N_MAX))
        want_all = np.zeros((2, 2, N_MAX))
        want_paid = np.zeros((2, N_MAX))
        for p, n in itertools.product(range(2), range(1, N_MAX + 1)):
            arms = [tiny_arm(p, x, n, wave) for x in xs]
            cr = float(np.mean([a[0] for a in arms]))
            want_paid[p, n - 1] = np.mean([a[1] for a in arms])
            for c, cw in enumerate(CW):
                want[c, p, n - 1] = cr - cw * COSTS[p] * want_paid[p, n - 1]
                want_all[c, p, n - 1] = cr - cw * COSTS[p] * n
        np.testing.assert_allclose(dec.q(queries), want, atol=1e-12, rtol=0)
        np.testing.assert_allclose(env.q(queries), want_all, atol=1e-12, rtol=0)
        table = dec.query_table()
        np.testing.assert_allclose(table.completions(queries), want_paid, atol=1e-12, rtol=0)
        np.testing.assert_array_equal(env.query_table().completions(queries),
                                      np.tile(np.arange(1.0, N_MAX + 1), (2, 1)))
    # per query: [P, X, N] expected completions and waves
    assert table.paid is not None and table.waves is not None
    for p, x, n in itertools.product(range(2), range(3), range(1, N_MAX + 1)):
        _, paid, waves = tiny_arm(p, x, n, wave)
        assert table.paid[p, x, n - 1] == pytest.approx(paid, abs=1e-12)
        assert table.waves[p, x, n - 1] == pytest.approx(waves, abs=1e-12)
    if wave >= N_MAX:  # one wave of N: the paper's arm
        np.testing.assert_allclose(dec.q(), env.q(), atol=1e-12, rtol=0)
    # and back: the rule "all" prices every arm at N again
    np.testing.assert_allclose(dec.with_stopping(Stopping()).q(), env.q(), atol=1e-12, rtol=0)
    np.testing.assert_array_equal(env.with_stopping(Stopping()).q(), env.q())


def test_a_decided_arm_is_never_worse_and_pays_between_half_and_n() -> None:
    env = tiny_env()
    n = np.arange(1, N_MAX + 1)
    for wave in (1, 2, 3, 4):
        dec = env.with_stopping(Stopping("decided", wave))
        assert np.all(dec.q() >= env.q() - 1e-12)
        paid = dec.query_table().completions()
        assert np.all(paid <= n + 1e-12) and np.all(paid >= n // 2 + 1 - 1e-12)


# --- 3. blocks by hand --------------------------------------------------------------------------


def observation(prompt: int, labels: list[list[int]], gold: list[int],
                costs: float | list[float], queries: list[int] | None = None) -> Observation:
    lab = np.array(labels, dtype=np.int16)
    count, n = lab.shape
    scores = np.empty((count, n, 2))
    scores[..., 0] = lab == np.array(gold)[:, None]
    scores[..., 1] = np.asarray(costs, dtype=np.float64)
    q = np.zeros(count, dtype=np.int64) if queries is None else np.array(queries)
    return Observation(prompt, n, q, scores, lab, np.array(gold, dtype=np.int16))


def by_size(util: np.ndarray, sizes: np.ndarray, context: int) -> dict[int, list[float]]:
    """Block utilities of one context by block size, each size's blocks in order of start."""
    return {int(k): util[sizes == k, context].tolist() for k in np.unique(sizes)}


# labels 0, 0, 0, 1 with gold 0. Credit: size 1 -> 1, 1, 1, 0; size 2 -> (0, 0) 1, (0, 1) a
# tie 1/2; size 3 (0, 0, 0) -> 1; size 4 (3 votes to 1) -> 1.
CREDIT = {1: [1.0, 1.0, 1.0, 0.0], 2: [1.0, 0.5], 3: [1.0], 4: [1.0]}
# Paid, wave 1: size 2 -> t=1: 1 > 1? no -> 2. size 3 (0,0,0) -> t=1: 1 > 2? no; t=2: 2 > 1
# -> 2. size 4 -> t=2: 2 > 2? no; t=3: 3 > 1 -> 3.
# Paid, wave 2: size 3 -> t=2: 2 > 1 -> 2. size 4 -> t=2: 2 > 2? no -> t=4: 4.
PAID = {1: {1: [1, 1, 1, 1], 2: [2, 2], 3: [2], 4: [3]},
        2: {1: [1, 1, 1, 1], 2: [2, 2], 3: [2], 4: [4]}}
# with costs 1, 2, 4, 8 the paid completions are a block's first ones
PAID_COST = {1: {1: [1, 2, 4, 8], 2: [1 + 2, 4 + 8], 3: [1 + 2], 4: [1 + 2 + 4]},
             2: {1: [1, 2, 4, 8], 2: [1 + 2, 4 + 8], 3: [1 + 2], 4: [1 + 2 + 4 + 8]}}


@pytest.mark.parametrize("wave", [1, 2])
def test_block_utilities_replay_the_rule_by_hand(wave: int) -> None:
    problem = decided(tiny_env().problem, wave)
    util, prompts, sizes = QTable(problem).block_utilities(
        [observation(0, [[0, 0, 0, 1]], [0], 1.0)])
    assert prompts.tolist() == [0] * 8
    assert by_size(util, sizes, 0) == CREDIT  # cost weight 0: the credit alone
    assert by_size(util, sizes, 1) == {
        k: [c - p for c, p in zip(CREDIT[k], PAID[wave][k], strict=True)] for k in CREDIT}
    util, _, sizes = QTable(problem).block_utilities(
        [observation(0, [[0, 0, 0, 1]], [0], [1.0, 2.0, 4.0, 8.0])])
    assert by_size(util, sizes, 1) == {
        k: [c - p for c, p in zip(CREDIT[k], PAID_COST[wave][k], strict=True)] for k in CREDIT}
    # the Q table averages the blocks of each size
    table = QTable(problem)
    table.update([observation(0, [[0, 0, 0, 1]], [0], 1.0)])
    assert table.counts[0].tolist() == [4, 2, 1, 1, 0]
    want = [np.mean(CREDIT[k]) - np.mean(PAID[wave][k]) for k in (1, 2, 3, 4)]
    np.testing.assert_allclose(table.mean[1, 0, :4], want, atol=1e-12)
    np.testing.assert_allclose(table.mean[0, 0, :4], [np.mean(CREDIT[k]) for k in (1, 2, 3, 4)])
    assert np.isnan(table.mean[:, 0, 4]).all() and np.isnan(table.mean[:, 1]).all()


def test_an_all_n_table_charges_every_completion_of_a_block() -> None:
    util, _, sizes = QTable(tiny_env().problem).block_utilities(
        [observation(0, [[0, 0, 0, 1]], [0], 1.0)])
    assert by_size(util, sizes, 1) == {k: [c - k for c in CREDIT[k]] for k in CREDIT}


@pytest.mark.parametrize("wave", [1, 2, 3])
def test_q_table_statistics_match_a_plain_replay_of_every_block(wave: int) -> None:
    # several pulls of different group sizes, laid end to end in one batch
    rng = np.random.default_rng(11)
    problem = decided(tiny_env().problem, wave)
    batch = []
    for prompt, n, count in [(0, 5, 30), (1, 3, 20), (0, 2, 10), (1, 5, 25), (0, 1, 5)]:
        labels = rng.choice(3, size=(count, n), p=[0.5, 0.3, 0.2]).tolist()
        labels[0] = [2] * n  # one unanimous group
        gold = rng.integers(0, 3, count).tolist()
        costs = rng.uniform(0.1, 1.0, size=(count, n))
        obs = observation(prompt, labels, gold, 0.0, rng.integers(0, 3, count).tolist())
        obs.scores[..., 1] = costs
        batch.append(obs)
    sums = np.zeros((2, 2, N_MAX))
    sumsq = np.zeros((2, 2, N_MAX))
    counts = np.zeros((2, N_MAX), dtype=np.int64)
    for o in batch:
        for g in range(o.count):
            seq = o.labels[g].tolist()
            for n in range(1, o.n + 1):
                for b in range(o.n // n):
                    block = seq[b * n: (b + 1) * n]
                    paid, _ = replay(block, n, wave, 3)
                    spent = float(o.scores[g, b * n: b * n + paid, 1].sum())
                    for c, cw in enumerate(CW):
                        u = credit(block, int(o.gold[g]), 3) - cw * spent
                        sums[c, o.prompt, n - 1] += u
                        sumsq[c, o.prompt, n - 1] += u * u
                    counts[o.prompt, n - 1] += 1
    table = QTable(problem)
    table.update(batch[:2])
    table.update(batch[2:])
    np.testing.assert_array_equal(table.counts, counts)
    np.testing.assert_allclose(table.sums, sums, atol=1e-9, rtol=0)
    np.testing.assert_allclose(table.sumsq, sumsq, atol=1e-9, rtol=0)


# --- 4. unbiased against the exact Q ------------------------------------------------------------


@pytest.mark.parametrize("wave", [1, 2])
def test_blocks_are_unbiased_for_the_exact_q(wave: int) -> None:
    env = tiny_env().with_stopping(Stopping("decided", wave))
    train = np.arange(3)
    groups = 3000
    oracle = SimulatedOracle(env, train, 2 * groups * N_MAX, np.random.default_rng(wave))
    table = QTable(env.problem)
    table.update(oracle.pull([Pull(0, N_MAX, groups), Pull(1, N_MAX, groups)]))
    n = np.arange(1, N_MAX + 1)
    np.testing.assert_array_equal(table.counts, np.tile(groups * (N_MAX // n), (2, 1)))
    # the blocks of one group share its query: count groups, not blocks, for a standard
    # error that holds whatever their correlation (the mean of k blocks has variance <= one's)
    se = np.sqrt(table.variance / groups)
    assert np.all(np.abs(table.mean - env.q(train)) <= 4 * se + 1e-9)


# --- 5. the model -------------------------------------------------------------------------------


def test_the_model_prices_decided_arms_at_the_posterior_mean_probabilities() -> None:
    alpha = 0.5
    base = tiny_env().problem
    batch = [
        # prompt 0, query 0: 100 votes, all for the gold
        observation(0, [[0] * 5] * 20, [0] * 20, COSTS[0]),
        # prompt 1, query 1 (gold 2): 3 gold, 2 for answer 0; query 2 (gold 1): 4 gold, 1 for 0
        observation(1, [[2, 2, 0, 2, 0]], [2], COSTS[1], [1]),
        observation(1, [[1, 0, 1, 1, 1]], [1], COSTS[1], [2]),
    ]
    # the posterior: alpha on the gold, on each answer seen, and on one unseen bucket
    post = {0: [(100 + alpha, alpha)],
            1: [(3 + alpha, 2 + alpha, alpha), (4 + alpha, 1 + alpha, alpha)]}
    n = np.arange(1, N_MAX + 1)
    for wave in (1, 2):
        model_all = ModelQTable(base, alpha)
        model = ModelQTable(decided(base, wave), alpha)
        model_all.update(batch)
        model.update(batch)
        mean_all, mean = model_all.mean, model.mean
        np.testing.assert_allclose(mean[0], mean_all[0], atol=1e-12, rtol=0)  # cost weight 0
        for p in (0, 1):
            np.testing.assert_allclose(mean_all[1, p] - mean_all[0, p], -COSTS[p] * n,
                                       atol=1e-12)
            paid = [np.mean([brute_arm(tuple(np.array(a) / sum(a)), 0, k, wave)[1]
                             for a in post[p]]) for k in n]
            np.testing.assert_allclose(mean[1, p] - mean[0, p], -COSTS[p] * np.array(paid),
                                       atol=1e-12)
        if wave == 1:  # a sure answer: N = 5 stops after 3, as (1, 0) would exactly
            charged = (mean[0, 0, 4] - mean[1, 0, 4]) / COSTS[0]
            assert 3.0 < charged < 3.05


def test_subsets_refuse_an_arm_that_stops_early() -> None:
    with pytest.raises(InputError, match="blocks"):
        QTable(decided(tiny_env().problem, 1), "subsets")
    QTable(tiny_env().problem, "subsets")  # the paper's arms: fine


# --- 6. iapo oracle on MATH ---------------------------------------------------------------------



def oracle_json(*args: str) -> dict[str, Any]:
    result = invoke("oracle", "math", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # progress bars go to stderr


@pytest.fixture(scope="module")
def math_all() -> dict[str, Any]:
    return oracle_json()


@pytest.mark.parametrize("wave", [1, 4])
def test_oracle_decided_on_math(wave: int, math_all: dict[str, Any]) -> None:
    out = oracle_json("--stop", "decided", *(["--wave", str(wave)] if wave != 1 else []))
    assert out["stopping"] == {"rule": "decided", "wave": wave}
    assert out["acr_all"] == pytest.approx(math_all["acr"], abs=1e-12)
    assert out["acr"] >= out["acr_all"] - 1e-12
    assert out["gain"] == pytest.approx(out["acr"] - out["acr_all"], abs=1e-12)
    env = get_environment("math")
    assert isinstance(env, MVEnvironment)
    grid = env.problem.grid
    q_all = env.q()
    assert out["acr"] == pytest.approx(
        sum(pr * r["q"] for pr, r in zip(grid.probabilities, out["contexts"], strict=True)),
        abs=1e-12)
    rng = np.random.default_rng(100 + wave)
    sims = 20_000
    for i, (row, row_all) in enumerate(zip(out["contexts"], math_all["contexts"], strict=True)):
        p, n = row["prompt"], row["n"]
        assert row["context"] == row_all["context"] == grid.keys[i]
        assert n // 2 + 1 - 1e-9 <= row["paid"] <= n + 1e-9
        assert 1 - 1e-9 <= row["waves"] <= -(-n // wave) + 1e-9
        assert row["gain"] >= -1e-12
        assert (row["all_prompt"], row["all_n"]) == (row_all["prompt"], row_all["n"])
        assert row["all_q"] == pytest.approx(row_all["q"], abs=1e-12)
        assert row["gain"] == pytest.approx(row["q"] - row["all_q"], abs=1e-11)
        # the same credit as the arm paying all N, the cost of the completions paid
        assert row["q"] == pytest.approx(
            q_all[i, p, n - 1] + grid.cost_weights[i] * env.cost[p] * (n - row["paid"]),
            abs=1e-9)
        # Monte Carlo of the completions paid, on uniformly drawn queries
        x = rng.integers(0, env.n_queries, sims)
        cdf = np.cumsum(env.probs[p, x], axis=1)
        cdf /= cdf[:, -1:]
        u = rng.random((sims, n))
        labels = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(-1), cdf.shape[1] - 1)
        sim = replay_many(labels, n, wave)
        se = sim.std() / np.sqrt(sims)
        assert abs(sim.mean() - row["paid"]) <= 4 * se + n / sims, (wave, row)


def test_oracle_decided_on_best_of_n_exits_2() -> None:
    result = invoke("oracle", "summarization-smollm2", "--stop", "decided")
    assert result.exit_code == 2, result.output
    assert "majority voting" in result.output


# --- 7. train and evaluate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def decided_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.json"
    out = invoke("train", "math", "--stop", "decided", "--wave", "2", "--budget", "1000",
                 "--out", str(path))
    assert out.exit_code == 0, out.output
    return path


def evaluate_json(path: Path) -> dict[str, Any]:
    result = invoke("evaluate", "math", str(path), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_train_records_the_rule_and_evaluate_uses_it(decided_policy: Path,
                                                     tmp_path: Path) -> None:
    data = json.loads(decided_policy.read_text())
    assert data["stopping"] == {"rule": "decided", "wave": 2}
    assert data["completions_used"] <= 1000
    test = np.array(data["split"]["test"])
    base = get_environment("math")
    probs = base.problem.grid.probabilities
    q = base.with_stopping(Stopping("decided", 2)).q(test)
    res = evaluate_json(decided_policy)
    assert res["oracle_acr"] == pytest.approx(acr(q, best_arms(q), probs), abs=1e-12)
    chosen = [q[i, r["prompt"], r["n"] - 1] for i, r in enumerate(data["policy"])]
    assert res["acr"] == pytest.approx(float(np.dot(probs, chosen)), abs=1e-12)
    # without the key the policy's arms pay all N
    del data["stopping"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(data))
    res_all = evaluate_json(plain)
    q_all = base.q(test)
    assert res_all["oracle_acr"] == pytest.approx(acr(q_all, best_arms(q_all), probs),
                                                  abs=1e-12)
    assert res["oracle_acr"] >= res_all["oracle_acr"] - 1e-12
    assert res["acr"] >= res_all["acr"] - 1e-12  # the same arms, each paying no more


@pytest.mark.parametrize("stopping", [
    {"rule": "maybe"}, 3, "decided", {"rule": "decided", "wave": 0},
    {"rule": "decided", "wave": True}, {"rule": "decided", "wave": "2"}, {"rule": 5},
])
def test_a_malformed_stopping_in_a_policy_exits_2(decided_policy: Path, tmp_path: Path,
                                                  stopping: Any) -> None:
    data = json.loads(decided_policy.read_text())
    data["stopping"] = stopping
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = invoke("evaluate", "math", str(bad))
    assert result.exit_code == 2, result.output
    assert "stopping" in result.output and "Traceback" not in result.output


def test_train_refuses_subsets_with_decided(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = invoke("train", "math", "--learner", "psst", "--estimator", "subsets", "--stop",
                    "decided", "--budget", "500", "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "blocks" in result.output and not out.exists()


# --- 8. bench -----------------------------------------------------------------------------------

BENCH = ("--envs", "math", "--learners", "psst,uniform", "--budgets", "500", "--runs", "2")


@pytest.fixture(scope="module")
def bench_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-all")
    bench(out, *BENCH)
    return out


@pytest.fixture(scope="module")
def bench_decided(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench-decided")
    bench(out, "--envs", "math", "--learners", "psst,uniform,triple-n1", "--budgets", "500",
          "--runs", "2", "--stop", "decided")
    return out


def test_a_decided_bench_on_best_of_n_fails_cleanly(tmp_path: Path) -> None:
    result = invoke("bench", "--out", str(tmp_path / "b"), "--envs", "synth-categorical",
                    "--learners", "psst,uniform", "--budgets", "500", "--runs", "1", "--stop",
                    "decided")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a user error, not a traceback
    assert "majority voting" in result.output and "synth-categorical" in result.output


def test_a_refused_decided_bench_writes_no_results(tmp_path: Path) -> None:
    out = tmp_path / "b"
    result = invoke("bench", "--out", str(out), "--envs", "math,synth-categorical",
                    "--learners", "uniform", "--reference", "uniform", "--budgets", "200",
                    "--runs", "1", "--stop", "decided")
    assert result.exit_code == 2, result.output
    assert "majority voting" in result.output
    runs = out / "runs.csv"
    assert not runs.exists() or csv_rows(runs) == []


def test_a_refused_decided_bench_leaves_the_folder_usable(tmp_path: Path) -> None:
    out = tmp_path / "b"
    args = ("--envs", "synth-categorical", "--learners", "uniform", "--reference", "uniform",
            "--budgets", "200", "--runs", "1")
    assert invoke("bench", "--out", str(out), *args, "--stop", "decided").exit_code == 2
    bench(out, *args)


def test_a_folder_keeps_its_stopping_rule(bench_all: Path, bench_decided: Path,
                                          tmp_path: Path) -> None:
    for source, other in [(bench_all, ("--stop", "decided")),
                          (bench_decided, ()),
                          (bench_decided, ("--stop", "decided", "--wave", "2"))]:
        folder = tmp_path / f"copy-{source.name}-{len(other)}"
        shutil.copytree(source, folder)
        before = (folder / "runs.csv").read_bytes()
        result = invoke("bench", "--out", str(folder), *BENCH, *other)
        assert result.exit_code == 2, result.output
        assert "stopping" in result.output
        assert (folder / "runs.csv").read_bytes() == before
    meta = json.loads((bench_decided / "bench.json").read_text())
    assert meta["identity"]["stopping"] == {"rule": "decided", "wave": 1}
    assert "stopping" not in json.loads((bench_all / "bench.json").read_text())["identity"]


def test_a_decided_bench_is_paired_with_the_all_n_bench(bench_all: Path,
                                                        bench_decided: Path) -> None:
    rows_all, rows = csv_rows(bench_all / "runs.csv"), csv_rows(bench_decided / "runs.csv")
    assert {(r["learner"], r["run"]) for r in rows} == {
        (ln, str(run)) for ln in ("psst", "uniform", "triple-n1") for run in (0, 1)}
    oracle_all = {r["run"]: float(r["oracle_acr"]) for r in rows_all}
    env = get_environment("math")
    probs = env.problem.grid.probabilities
    dec = env.with_stopping(Stopping("decided", 1))
    for r in rows:
        # the same split as the all-N bench's run: its best arms cost no more here
        assert float(r["oracle_acr"]) >= oracle_all[r["run"]] - 1e-12
        split_seed = np.random.SeedSequence(0).spawn(int(r["run"]) + 1)[int(r["run"])]
        _, test = train_test_split(env.n_queries, split_seed.spawn(1)[0], 0.2)
        q = dec.q(test)
        assert float(r["oracle_acr"]) == pytest.approx(acr(q, best_arms(q), probs), abs=1e-12)
        assert int(r["completions_used"]) <= 500
        # (a mean over the test queries: equal to 1 up to rounding where every arm pays 1)
        per_query = float(r["completions_per_query"])
        assert 1.0 - 1e-12 <= per_query <= 32.0
        if r["learner"] == "triple-n1":  # N = 1 everywhere: one completion, always
            assert per_query == pytest.approx(1.0, abs=1e-12)
    for r in rows_all:
        assert 1.0 <= float(r["completions_per_query"]) <= 32.0


# --- 9. task files ------------------------------------------------------------------------------


def load(tmp: Path, aggregator: dict[str, Any] | None = None, **train: Any) -> Any:
    raw = copy.deepcopy(base_raw())
    raw["train"].update(train)
    if aggregator is not None:
        raw["aggregator"] = aggregator
    return load_task(write_task(tmp, raw))


def test_a_task_file_sets_the_stopping_rule(tmp_path: Path) -> None:
    task = load(tmp_path, stop="decided", wave=3)
    assert task.stopping == Stopping("decided", 3)
    assert task.problem().stopping == Stopping("decided", 3)
    assert load(tmp_path).stopping == Stopping()  # absent: all N


@pytest.mark.parametrize(("train", "needle"), [
    ({"stop": "maybe"}, "train.stop"),
    ({"stop": 1}, "train.stop"),
    ({"stop": "decided", "wave": 0}, "train.wave"),
    ({"stop": "decided", "wave": True}, "train.wave"),
    ({"stop": "decided", "wave": 1.5}, "train.wave"),
])
def test_a_bad_stopping_rule_in_a_task_file_names_the_field(tmp_path: Path,
                                                            train: dict[str, Any],
                                                            needle: str) -> None:
    with pytest.raises(TaskError) as err:
        load(tmp_path, **train)
    assert needle in str(err.value)


def test_decided_with_a_best_of_n_task_names_train_stop(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as err:
        load(tmp_path, {"kind": "bon"}, stop="decided")
    assert "majority voting" in str(err.value)
    assert "train.stop" in str(err.value)


# --- 10. live waves -----------------------------------------------------------------------------


def drive(draw: Any) -> Any:
    """Run a draw, failing (not hanging) if it waits on a request that never comes back."""
    return asyncio.run(asyncio.wait_for(draw, 5.0))


class Upstream:
    """Fake completions for draw_in_waves: ``start(i)`` answers ``answers[i]`` after
    ``delay[i]`` seconds; an index in ``hang`` waits until cancelled, one in ``fail`` raises."""

    def __init__(self, answers: str, delay: dict[int, float] | None = None,
                 hang: tuple[int, ...] = (), fail: tuple[int, ...] = ()) -> None:
        self.answers, self.delay = answers, delay or {}
        self.hang, self.fail = hang, fail
        self.started: list[int] = []
        self.cancelled: list[int] = []

    async def start(self, i: int) -> str:
        self.started.append(i)
        try:
            if i in self.fail:
                raise RuntimeError(f"upstream failed on sample {i}")
            if i in self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay.get(i, 0.0))
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        return f"completion {i}"

    def answer_of(self, c: str) -> str:
        return self.answers[int(c.split()[-1])]


def test_waves_of_one_stop_after_three_of_five() -> None:
    up = Upstream("AAABB")
    drawn = drive(draw_in_waves(up.start, 5, 1, up.answer_of))
    assert drawn.completions == ["completion 0", "completion 1", "completion 2"]
    assert drawn.answers == ["A", "A", "A"] and drawn.indices == [0, 1, 2]
    assert up.started == [0, 1, 2] and up.cancelled == []
    assert stop_fields(drawn, 5, len(drawn.completions), Stopping("decided", 1)) == {
        "stopping": {"rule": "decided", "wave": 1}, "completions_used": 3,
        "completions_saved": 2, "waves": 3, "cancelled": 0}


def test_waves_of_two_stop_after_four() -> None:
    # wave 1 (A, A): 2 > 3? no. Wave 2: B back first: A2 B1, 1 > 2? no; then A: 2 > 1, decided
    up = Upstream("AAABB", delay={2: 0.05})
    drawn = drive(draw_in_waves(up.start, 5, 2, up.answer_of))
    assert (len(drawn.completions), drawn.waves, drawn.cancelled) == (4, 2, 0)
    assert drawn.answers == ["A", "A", "A", "B"] and up.started == [0, 1, 2, 3]
    # A back first instead: A3 with 2 to come, 3 > 2, decided inside the wave: B is cancelled
    up = Upstream("AAABB", hang=(3,))
    drawn = drive(draw_in_waves(up.start, 5, 2, up.answer_of))
    assert (len(drawn.completions), drawn.waves, drawn.cancelled) == (3, 2, 1)
    assert up.cancelled == [3]


def test_one_wave_cancels_the_requests_in_flight_once_decided() -> None:
    up = Upstream("AAABB", hang=(3, 4))  # the two Bs never come back on their own
    drawn = drive(draw_in_waves(up.start, 5, 5, up.answer_of))
    assert drawn.indices == [0, 1, 2] and drawn.answers == ["A", "A", "A"]
    assert (drawn.waves, drawn.cancelled) == (1, 2)
    assert sorted(up.cancelled) == [3, 4]
    report = stop_fields(drawn, 5, len(drawn.completions), Stopping("decided", 5))
    assert (report["completions_used"], report["completions_saved"]) == (3, 2)
    # the Bs first, in reverse order: never decided before all five; sample order kept
    up = Upstream("AAABB", delay={i: (5 - i) * 0.02 for i in range(5)})
    drawn = drive(draw_in_waves(up.start, 5, 5, up.answer_of))
    assert drawn.indices == [0, 1, 2, 3, 4] and drawn.answers == list("AAABB")
    assert drawn.completions == [f"completion {i}" for i in range(5)]
    assert (drawn.waves, drawn.cancelled) == (1, 0)


def test_an_upstream_failure_propagates_and_cancels_the_rest() -> None:
    up = Upstream("AAABB", hang=(0, 2, 3, 4), fail=(1,))
    with pytest.raises(RuntimeError, match="sample 1"):
        drive(draw_in_waves(up.start, 5, 5, up.answer_of))
    assert sorted(up.cancelled) == [0, 2, 3, 4]


def test_cancelling_the_draw_cancels_every_request() -> None:
    up = Upstream("AAABB", hang=(0, 1, 2, 3, 4))

    async def go() -> None:
        task = asyncio.ensure_future(draw_in_waves(up.start, 5, 5, up.answer_of))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert sorted(up.cancelled) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("answers", "n"), [("AB", 2), ("AA", 2), ("AABB", 4)])
def test_a_margin_equal_to_the_remaining_is_not_decided(answers: str, n: int) -> None:
    # AB: a tie; AA: after one, 1 > 1? no; AABB: after two, 2 > 2? no (all four tie)
    up = Upstream(answers)
    drawn = drive(draw_in_waves(up.start, n, 1, up.answer_of))
    assert len(drawn.completions) == n and drawn.waves == n


def test_live_checks_never_use_more_than_the_wave_boundaries_priced() -> None:
    # training prices the rule at wave boundaries; live checks after every completion, so on
    # every answer sequence it uses at most the completions of the boundary replay, and the
    # votes it stopped on have the winners of all N
    def at_boundaries(answers: str, wave: int) -> int:
        n = len(answers)
        for t in range(wave, n, wave):
            top = sorted((answers[:t].count(a) for a in "ABC"), reverse=True)
            if top[0] - top[1] > n - t:
                return t
        return n

    for n in (3, 5):
        for seq in itertools.product("ABC", repeat=n):
            answers = "".join(seq)
            for wave in range(1, n + 1):
                drawn = drive(draw_in_waves(Upstream(answers).start, n, wave,
                                            Upstream(answers).answer_of))
                assert len(drawn.completions) <= at_boundaries(answers, wave)
                used = "".join(a or "" for a in drawn.answers)
                full = {a: answers.count(a) for a in "ABC"}
                seen = {a: used.count(a) for a in "ABC"}
                assert ({a for a in full if full[a] == max(full.values())}
                        == {a for a in seen if seen[a] == max(seen.values())})
