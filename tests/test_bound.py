"""Theorem 1 as a calculator: hand-worked quantities, and PSST's empirical failure rate staying
under the guarantee on a small synthetic environment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from iapo.bound import theorem1
from iapo.cli import main
from iapo.envs import BoNEnvironment
from iapo.learners.psst import psst
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, Objective


def bernoulli_env(thetas: list[float], costs: list[float], n_max: int,
                  budgets: dict[str, float]) -> BoNEnvironment:
    """Prompt p's utility is 1 with probability thetas[p], else 0; a completion costs costs[p].
    Q(c, p, n) = 1 - (1 - theta_p)^n - w_cost n cost_p."""
    p, x = len(thetas), 5
    scores = np.zeros((p, x, 2, 2))
    probs = np.zeros((p, x, 2))
    for i, (t, c) in enumerate(zip(thetas, costs, strict=True)):
        scores[i, :, 0] = [1.0, c]
        scores[i, :, 1] = [0.0, c]
        probs[i, :, 0] = t
        probs[i, :, 1] = 1 - t
    grid = ContextGrid.product([Objective("u", 0.0, 1.0)], [(1.0,)], budgets)
    return BoNEnvironment("bern", scores, probs, grid, n_max, cacheable=False)


def test_hand_worked_quantities() -> None:
    env = bernoulli_env([0.5, 0.3], [0.0, 0.0], 1, {"only": 0.0})
    b = theorem1(env)
    # Q = 0.5 and 0.3, rescaled by 2: gap 0.4; Nbar = (1 + 1) / 2 = 1; |A| = 2 so R = 1
    assert b.rounds == 1 and b.scale == 2.0
    assert b.h1 == pytest.approx(1 / 0.16) and b.h2 == pytest.approx(2 / 0.16)
    assert b.m == pytest.approx(min(2 * 2 * 6.25, 8 * 1 * 12.5))
    assert b.success_probability(100) == pytest.approx(1 - 3 * math.exp(-100 / 25))
    assert b.budget_for(0.05) == pytest.approx(25 * math.log(3 / 0.05))
    assert b.success_probability(0) == 0.0


def test_ties_count_as_best_and_are_left_out_of_the_maxima() -> None:
    # cost weight 0 and theta = 1: every N of prompt 0 has Q = 1 (tied best)
    env = bernoulli_env([1.0, 0.5], [0.0, 0.0], 2, {"only": 0.0})
    (c,) = theorem1(env).contexts
    assert c.tied_best == 2
    # next best: prompt 1 at N = 2, Q = 0.75, rescaled gap 0.5; Nbar = (1 + 2) / 2
    assert c.gap == pytest.approx(0.5)
    assert c.h1 == pytest.approx(1.5 / 0.25)
    # H2: rank 3 (prompt 1, N = 2, gap 0.5) gives 3 * 1.5 / 0.25 = 18, more than rank 4
    # (prompt 1, N = 1, gap 1.0): 4 * 1.5 / 1
    assert c.h2 == pytest.approx(max(3 * 1.5 / 0.25, 4 * 1.5 / 1.0))


def test_psst_fails_less_often_than_the_theorem_allows() -> None:
    env = bernoulli_env([0.9, 0.5, 0.2], [0.4, 0.05, 0.0], 2, {"lo": 0.0, "hi": 1.0})
    b = theorem1(env)
    # lo: best (0, 2) = 0.99 against (0, 1) = 0.9; hi: best (1, 2) = 0.65 against 0.5
    assert [(c.best_prompt, c.best_n) for c in b.contexts] == [(0, 2), (1, 2)]
    budget = 6000
    guaranteed = b.success_probability(budget)
    assert guaranteed > 0.8  # the bound says something at this budget
    q = env.q()
    best = {(ci, int(i)) for ci in range(q.shape[0])
            for i in np.flatnonzero(q[ci].reshape(-1) >= q[ci].max() - 1e-12)}

    def failure_rate(t: int, runs: int = 150) -> float:
        failures = 0
        for seed in range(runs):
            oracle = SimulatedOracle(env, np.arange(env.n_queries), t,
                                     np.random.default_rng(seed))
            result = psst(env.problem, oracle, t, np.random.default_rng(seed + 10_000))
            arms = [(ci, ch.prompt * 2 + ch.n - 1) for ci, ch in enumerate(result.choices)]
            failures += not all(a in best for a in arms)
        return failures / runs

    rates = [failure_rate(t) for t in (30, 120, budget)]
    assert rates[2] <= 1 - guaranteed
    # the check could fail: with a budget too small to tell the arms apart PSST fails more
    # often than the bound allows at T = 6000, and its failures fall as T grows
    assert rates[0] > 1 - guaranteed and rates[0] > rates[1] > rates[2]


def test_bound_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = CliRunner().invoke(main, ["bound", "synth-bernoulli", "--delta", "0.1", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["rounds"] == 10 and len(data["contexts"]) == 3
    # what it prints is Theorem 1 on what it reports: |C| = 3, R = 10
    m = data["m"]
    assert data["budget_for_delta"] == pytest.approx(m * 10 * math.log(3 * 3 * 10 / 0.1))
    assert data["success_probability"]["20000"] == pytest.approx(
        max(0.0, 1 - 3 * 3 * 10 * math.exp(-20000 / (m * 10))))
    text = CliRunner().invoke(main, ["bound", "math"])
    assert text.exit_code == 0 and "T for failure probability 0.05" in text.output
    bad = CliRunner().invoke(main, ["bound", "math", "--delta", "1.5"])
    assert bad.exit_code == 2


def test_bound_command_by_hand(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # majority voting, two prompts right with probability 0.5 and 0.3, N_max 1, no cost:
    # Q = 0.5 and 0.3, as in test_hand_worked_quantities: M = 25, R = 1, |C| = 1
    path = tmp_path / "two.npz"
    np.savez(path, answer_probs=np.array([[[0.5, 0.5]] * 4, [[0.3, 0.7]] * 4]),
             gold=np.zeros(4, dtype=np.int64), cost_per_completion=np.zeros(2),
             budget_levels=np.array(["only"]), cost_weights=np.zeros(1), n_max=np.array(1))
    out = CliRunner().invoke(main, ["bound", str(path), "--delta", "0.05", "--budgets",
                                    "50,100", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert (data["rounds"], data["scale"], data["m"]) == (1, 2.0, pytest.approx(25.0))
    assert data["h1"] == pytest.approx(6.25) and data["h2"] == pytest.approx(12.5)
    # 1 - 3 exp(-T / 25): T = 50 gives 1 - 3 e^-2 = 0.594, T = 100 gives 1 - 3 e^-4 = 0.945
    assert data["success_probability"] == {"50": pytest.approx(0.59399415),
                                           "100": pytest.approx(0.94505308)}
    # 25 ln(3 / 0.05) = 25 ln 60 = 102.3586
    assert data["budget_for_delta"] == pytest.approx(102.3586, abs=1e-4)
    (ctx,) = data["contexts"]
    assert (ctx["best_prompt"], ctx["best_n"], ctx["gap"]) == (0, 1, pytest.approx(0.4))
