"""The abstain rule: "no answer" wins a majority vote only where every completion abstains.

Priced exactly in training (the exact DP, the blocks and subsets estimators, the model's Polya
credit, the decided rule's expected cost) and served the same way; every value is checked
against enumeration of all outcomes (``tests/brute.py``), never against the code's output."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brute import (
    block_statistics,
    decided_paid_abstain,
    mv_credit_abstain,
    sequences,
    subset_statistics,
)
from iapo.envs.tabular import DataError, MVEnvironment
from iapo.estimate import QTable
from iapo.exact import mv_credit_probability, mv_polya_credit, mv_subset_credit
from iapo.live.aggregate import NO_ANSWER, aggregate, answer_categories, answer_labels
from iapo.live.task import TaskError, load_task
from iapo.live.waves import draw_in_waves
from iapo.oracle import SimulatedOracle
from iapo.policy import Policy
from iapo.problem import Choice, ContextGrid, Objective, Problem, ProblemError, Stopping
from iapo.pulls import Observation, Pull
from iapo.serve.core import served_task, serving_digest, serving_part, serving_section
from iapo.stopping import expected_paid, vote_decided
from iapo.utility import counted_votes, credit_from_votes, vote_counts
from test_live_units import mv_raw, write_task

N_CAT = 4


def _rows(seed: int, rows: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random answer probabilities [rows, 4], gold and a "no answer" category (-1 for some)
    that is never the gold."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(N_CAT, 0.7), size=rows)
    gold = rng.integers(0, N_CAT, rows)
    z = (gold + rng.integers(1, N_CAT, rows)) % N_CAT
    z[0] = -1
    return probs, gold, z


# --- the rule ------------------------------------------------------------------------------------


def test_the_issue_example_serves_an_answer_never_no_answer() -> None:
    # votes {no answer: 3, yes: 2, no: 3}: "no" wins alone; under the vote rule it tied
    answers = [None, "yes", "no", None, "no", "yes", None, "no"]
    for seed in range(20):
        out = aggregate("mv", answers, np.zeros((8, 1)), [1.0], random.Random(seed))
        assert out.answer == "no" and out.tied == ("no",) and out.chosen == 2
        assert dict(out.votes) == {None: 3, "yes": 2, "no": 3}
    vote = aggregate("mv", answers, np.zeros((8, 1)), [1.0], random.Random(0), "vote")
    assert vote.tied == (None, "no")


def test_no_answer_wins_only_where_every_completion_abstains() -> None:
    out = aggregate("mv", [None, None], np.zeros((2, 1)), [1.0], random.Random(0))
    assert out.answer is None and out.tied == (None,)
    one = aggregate("mv", [None, None, None, "B"], np.zeros((4, 1)), [1.0], random.Random(0))
    assert one.answer == "B" and one.chosen == 3


def test_counted_votes_by_hand() -> None:
    votes = np.array([[3, 2, 0, 3], [0, 0, 4, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(counted_votes(votes, [0, 2, -1]),
                                  [[0, 2, 0, 3], [0, 0, 4, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(counted_votes(votes), votes)
    # gold 1 against {no answer: 3, gold: 2, other: 3}: the other wins under both rules
    assert credit_from_votes(votes[0], 1, 0) == 0.0
    assert credit_from_votes([3, 2, 0, 2], 1, 0) == 0.5  # gold ties the other answer
    assert credit_from_votes([3, 2, 0, 2], 1) == 0.0  # the vote rule: "no answer" won


@pytest.mark.parametrize("n", range(1, 7))
def test_training_credit_equals_the_served_expected_credit_on_every_vote(n: int) -> None:
    # every group of n answers over {gold B, C, D, no answer}: the served winner, over every
    # outcome of its tie-break, earns on average what training credits
    names: list[str | None] = ["B", "C", "D", None]
    for group in itertools.product(names, repeat=n):
        answers = list(group)
        cats = answer_categories("B", [])
        labels = answer_labels(cats, answers)
        want = mv_credit_abstain(labels, 0, cats.get(NO_ANSWER, -1))  # by a loop
        trained = credit_from_votes(vote_counts(np.array(labels), len(cats)), 0,
                                    cats.get(NO_ANSWER, -1))
        # 6 picks of the tie-break: each of t <= 3 tied answers equally often
        served = [aggregate("mv", answers, np.zeros((n, 1)), [1.0], _Fixed(pick)).answer == "B"
                  for pick in range(6)]
        assert float(trained) == pytest.approx(want)
        assert np.mean(served) == pytest.approx(want)


class _Fixed(random.Random):
    """A tie-break that picks ``pick`` modulo the number of tied answers."""

    def __init__(self, pick: int) -> None:
        super().__init__(0)
        self.pick = pick

    def randrange(self, stop: int, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        return self.pick % stop


# --- exact pricing -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_exact_credit_equals_enumeration_of_every_draw(seed: int) -> None:
    probs, gold, z = _rows(seed)
    got = mv_credit_probability(probs, gold, 5, no_answer=z)
    for i in range(len(gold)):
        want = [sum(pr * mv_credit_abstain(s, gold[i], z[i]) for s, pr in sequences(n, probs[i]))
                for n in range(1, 6)]
        np.testing.assert_allclose(got[i], want, atol=1e-12)


def test_abstain_never_prices_below_the_vote_rule() -> None:
    # dropping a category that is never gold can only make gold a winner or shrink its tie
    probs, gold, z = _rows(7, rows=40)
    assert (mv_credit_probability(probs, gold, 8, no_answer=z)
            >= mv_credit_probability(probs, gold, 8) - 1e-12).all()


@pytest.mark.parametrize("wave", [1, 2, 5])
def test_expected_paid_equals_enumeration_of_every_draw(wave: int) -> None:
    probs, _, z = _rows(wave)
    paid, _ = expected_paid(probs, 5, wave, no_answer=z)
    for i in range(len(z)):
        want = [sum(pr * decided_paid_abstain(s, wave, z[i]) for s, pr in sequences(n, probs[i]))
                for n in range(1, 6)]
        np.testing.assert_allclose(paid[i], want, atol=1e-12)


def test_a_vote_that_only_abstained_is_not_decided() -> None:
    # 2 of 3 abstained: the last answer, if any, wins; under the vote rule it was decided
    assert not vote_decided([2, 0], 1, no_answer=0)
    assert vote_decided([2, 0], 1)
    assert vote_decided([2, 3, 0], 1, no_answer=0)  # 3 answers to 0 with one to come
    assert not vote_decided([0, 2, 1], 1, no_answer=0)


def test_waves_do_not_stop_on_abstentions_alone() -> None:
    texts = [None, None, "A"]

    async def start(i: int) -> str | None:
        return texts[i]

    drawn = asyncio.run(draw_in_waves(start, 3, 1, lambda a: a))
    assert drawn.answers == [None, None, "A"]  # drawn to the end: "A" wins
    vote = asyncio.run(draw_in_waves(start, 3, 1, lambda a: a, "vote"))
    assert vote.answers == [None, None]  # "no answer" led by 2 with 1 to come


@pytest.mark.parametrize("trial", range(20))
def test_subset_credit_equals_enumeration_of_every_subset(trial: int) -> None:
    rng = np.random.default_rng(trial)
    g = int(rng.integers(1, 9))
    labels = rng.integers(0, N_CAT, g)  # gold 0, "no answer" 3
    counts = np.bincount(labels, minlength=N_CAT)
    got = mv_subset_credit([counts[0]], [sorted(counts[1:3], reverse=True)], g, [counts[3]])[0]
    want = [np.mean([mv_credit_abstain(np.array(s), 0, 3)
                     for s in itertools.combinations(labels, n)]) for n in range(1, g + 1)]
    np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_polya_credit_equals_enumeration_of_the_urn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.3, 3.0, 4)  # gold, "no answer", two others
    a[3] = 0.0 if seed == 1 else a[3]  # an absent category
    got = mv_polya_credit(a[:1], a[None, 2:], 5, a[1:2])[0]
    for n in range(1, 6):
        want = 0.0
        for seq in itertools.product(range(4), repeat=n):
            pr, seen = 1.0, np.zeros(4)
            for t, x in enumerate(seq):  # the urn: each draw adds a ball of its colour
                pr *= (a[x] + seen[x]) / (a.sum() + t)
                seen[x] += 1
            want += pr * mv_credit_abstain(np.array(seq), 0, 1)
        assert got[n - 1] == pytest.approx(want, abs=1e-12)


# --- the estimators ------------------------------------------------------------------------------


def _env(rule: str, stopping: Stopping = Stopping()) -> MVEnvironment:  # noqa: B008 (frozen)
    probs, gold, z = _abstaining(11)
    env = MVEnvironment("abstain-test", probs[None].repeat(2, axis=0), gold, [0.01, 0.02],
                        {"low": 0.0, "high": 1.0}, 6, cacheable=False, no_answer=z)
    return env.with_no_answer(rule).with_stopping(stopping)  # type: ignore[return-value]


def _abstaining(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five queries whose completions abstain often (but for the first, which has no "no
    answer" category)."""
    probs, gold, z = _rows(seed, rows=5)
    probs = np.where(np.arange(N_CAT) == z[:, None], 0.4, 0.0) + probs * np.where(
        z[:, None] >= 0, 0.6, 1.0)
    return probs, gold, z


def _pulls(env: MVEnvironment, seed: int) -> list[Observation]:
    oracle = SimulatedOracle(env, np.arange(5), 10**6, np.random.default_rng(seed))
    return oracle.pull([Pull(0, 6, 4), Pull(1, 5, 3), Pull(0, 3, 5), Pull(1, 1, 4)])


@pytest.mark.parametrize("stop", ["all", "decided"])
def test_blocks_equal_the_loop_reference(stop: str) -> None:
    env = _env("abstain", Stopping(stop, 2))
    obs = _pulls(env, 1)
    assert all(o.no_answer is not None for o in obs)
    table = QTable(env.problem)
    table.update(obs)
    sums, sumsq, counts = block_statistics(env.problem, obs)
    np.testing.assert_allclose(table.sums, sums, atol=1e-12)
    np.testing.assert_allclose(table.sumsq, sumsq, atol=1e-12)
    np.testing.assert_array_equal(table.counts, counts)
    vote = QTable(dataclass_replace(env.problem, no_answer="vote"))
    vote.update(obs)
    assert (table.sums > vote.sums + 1e-9).any()  # the rule matters on these groups
    if stop == "all":  # paying all N, abstain never scores a block lower; stopping once
        assert (table.sums >= vote.sums - 1e-12).all()  # decided, it may pay more


def dataclass_replace(problem: Problem, **kw: Any) -> Problem:
    import dataclasses

    return dataclasses.replace(problem, **kw)


def test_subsets_equal_the_loop_reference() -> None:
    env = _env("abstain")
    obs = _pulls(env, 2)
    table = QTable(env.problem, "subsets")
    table.update(obs)
    sums, sumsq, counts = subset_statistics(env.problem, obs)
    np.testing.assert_allclose(table.sums, sums, atol=1e-12)
    np.testing.assert_allclose(table.sumsq, sumsq, atol=1e-12)
    np.testing.assert_array_equal(table.counts, counts)


def test_blocks_average_to_the_exact_q() -> None:
    # many groups of one prompt on one query: the block means converge to the exact Q
    env = _env("abstain")
    oracle = SimulatedOracle(env, np.array([2]), 10**7, np.random.default_rng(5))
    table = QTable(env.problem)
    table.update(oracle.pull([Pull(0, 6, 40_000)]))
    q = env.q([2])
    np.testing.assert_allclose(table.mean[:, 0], q[:, 0], atol=0.01)


def test_the_model_prices_with_the_rule() -> None:
    from iapo.model import ModelQTable

    env = _env("abstain")
    obs = _pulls(env, 3)
    model, vote = ModelQTable(env.problem), ModelQTable(dataclass_replace(env.problem,
                                                                          no_answer="vote"))
    model.update(obs)
    vote.update(obs)
    assert np.isfinite(model.mean).all()
    assert (model.mean >= vote.mean - 1e-12).all()


def test_the_exact_q_of_an_environment_follows_its_rule() -> None:
    abstain, vote = _env("abstain"), _env("vote")
    probs, gold, z = _abstaining(11)
    credit = mv_credit_probability(probs, gold, 6, no_answer=z).mean(axis=0)
    np.testing.assert_allclose(abstain.q()[0, 0], credit - 0.0, atol=1e-12)  # low: no cost
    assert (abstain.q() >= vote.q() - 1e-12).all()
    assert abstain.fingerprint() != vote.fingerprint()
    # without a "no answer" category both rules are one environment, one table
    plain = MVEnvironment("plain", probs[None], gold, [0.01], {"low": 0.0}, 6,
                          cacheable=False)
    assert plain.with_no_answer("vote").fingerprint() == plain.fingerprint()


def test_an_environment_refuses_no_answer_as_the_gold() -> None:
    probs, gold, _ = _rows(0, rows=3)
    with pytest.raises(DataError, match="its \"no answer\" category is its gold"):
        MVEnvironment("x", probs[None], gold, [0.01], {"low": 0.0}, 4, no_answer=gold)
    with pytest.raises(DataError, match="must lie in 0..3, or -1"):
        MVEnvironment("x", probs[None], gold, [0.01], {"low": 0.0}, 4, no_answer=[4, 0, 0])


def test_a_problem_refuses_an_unknown_rule() -> None:
    grid = ContextGrid.product([Objective("correct")], [[1.0]], {"low": 0.0})
    with pytest.raises(ProblemError, match=r"no_answer rule 'skip' is unknown; use one of "
                                           r"\['abstain', 'vote'\]"):
        Problem("t", "mv", ("p",), 4, grid, no_answer="skip")
    assert Problem("t", "mv", ("p",), 4, grid).no_answer == "abstain"  # the default


# --- the task file and the served policy ---------------------------------------------------------


def test_the_task_file_reads_the_rule_and_refuses_others(tmp_path: Path) -> None:
    raw = mv_raw("http://127.0.0.1:9/v1")
    assert load_task(write_task(tmp_path, raw)).no_answer == "abstain"
    raw["aggregator"]["no_answer"] = "vote"
    task = load_task(write_task(tmp_path, raw))
    assert task.no_answer == "vote" and task.problem().no_answer == "vote"
    raw["aggregator"]["no_answer"] = "ignore"
    with pytest.raises(TaskError, match="aggregator.no_answer 'ignore' must be \"abstain\""):
        load_task(write_task(tmp_path, raw))


def test_a_policy_serves_its_rule_and_an_older_one_keeps_the_vote(tmp_path: Path) -> None:
    raw = mv_raw("http://127.0.0.1:9/v1")
    task = load_task(write_task(tmp_path, raw))  # the file names no rule: abstain
    section = serving_section(task)
    assert section["task"]["aggregator"]["no_answer"] == "abstain"
    policy = _policy(task, section)
    assert served_task(policy, None, tmp_path / "p.json").no_answer == "abstain"
    # a policy from before the rule: no field, and the digest of the vote rule
    old = dict(raw, aggregator=dict(raw["aggregator"], no_answer="vote"))
    old_task = load_task(write_task(tmp_path, old))
    digest = serving_digest(old_task)
    assert "no_answer" not in serving_part(old_task)
    older = _policy(old_task, {"task": raw, "digest": digest})
    assert served_task(older, None, tmp_path / "p.json").no_answer == "vote"


def _policy(task: Any, serving: dict[str, Any]) -> Policy:
    grid = task.problem().grid
    return Policy(task.name, "test", 10, 10, 0, {}, grid.keys,
                  [Choice(0, 2, 0.5, 1)] * len(grid), serving=serving)
