"""The Best-of-N environments built from real completions: they load, validate, are listed, and
their exact BoN evaluation agrees with Monte Carlo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from iapo.cli import main
from iapo.envs import get_environment
from iapo.oracle import SimulatedOracle
from iapo.pulls import Pull

NAMES = ["helpful-harmless-smollm2", "summarization-smollm2"]


@pytest.mark.parametrize("name", NAMES)
def test_environment_loads_validates_and_is_listed(name: str) -> None:
    env = get_environment(name)
    p = env.problem
    assert p.aggregator == "bon" and p.n_prompts >= 6 and env.n_queries >= 100
    assert p.n_contexts == 27 and p.n_max == 32 and p.n_objectives == 2
    support = (env.probs > 0).sum(axis=-1)
    assert (support >= 24).all()  # every stored completion of a pair is a support point
    # each of a pair's k completions weighs 1/k
    np.testing.assert_allclose(env.probs.max(axis=-1), 1.0 / support)
    assert ((env.scores[..., :2] >= 0) & (env.scores[..., :2] <= 1)).all()
    listed = json.loads(CliRunner().invoke(main, ["envs", "--json"]).stdout)
    assert name in [row["name"] for row in listed]


@pytest.mark.parametrize("name", NAMES)
def test_exact_best_of_n_agrees_with_monte_carlo(name: str) -> None:
    env = get_environment(name)
    table = env.query_table(progress=False)
    weights, widx = env.problem.grid.distinct_weights()
    rng = np.random.default_rng(0)
    for prompt, query, w in [(0, 0, 0), (3, 5, 4), (5, 17, 8)]:
        oracle = SimulatedOracle(env, np.array([query]), 10**9, rng)
        for n in (1, 4, 16):
            (obs,) = oracle.pull([Pull(prompt, n, 4000)])
            best = (obs.scores[..., :2] @ weights[w]).max(axis=1)  # [4000]
            se = best.std(ddof=1) / np.sqrt(best.size)
            assert abs(best.mean() - table.task[prompt, query, w, n - 1]) < 4 * se + 1e-9
