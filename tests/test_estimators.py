"""The subsets (U-statistic) estimator: exact averages over all size-n subsets of a group,
checked against brute-force enumeration, and its use by every learner."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from brute import (
    block_statistics,
    decided_paid,
    mv_credit,
    subset_statistics,
)
from iapo.cli import main
from iapo.envs import get_environment, synth_categorical
from iapo.estimate import QTable, _mv_subset_credit
from iapo.exact import mv_subset_credit
from iapo.learners import LEARNERS, get_learner
from iapo.memo import Memo
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, CostObjective, Objective, Problem, Stopping
from iapo.pulls import Ledger, Observation, Pull


@pytest.mark.parametrize("trial", range(40))
def test_mv_subset_credit_equals_enumeration(trial: int) -> None:
    rng = np.random.default_rng(trial)
    g = int(rng.integers(1, 10))
    n_cat = int(rng.integers(2, 6))
    labels = rng.integers(0, n_cat, g)
    counts = np.bincount(labels, minlength=n_cat)
    got = mv_subset_credit([counts[0]], [sorted(counts[1:], reverse=True)], g)[0]
    want = [np.mean([mv_credit(np.array(s), 0, n_cat) for s in itertools.combinations(labels, n)])
            for n in range(1, g + 1)]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_mv_subset_credit_by_hand() -> None:
    # votes (gold, gold, x, y): pairs {g,g}: 1 of 6 -> 1; {g,x}/{g,y}: 4 of 6 -> 1/2; {x,y}: 0
    got = mv_subset_credit([2], [[1, 1]], 4)[0]
    assert got[0] == pytest.approx(2 / 4)
    assert got[1] == pytest.approx((1 + 4 * 0.5) / 6)
    assert got[3] == pytest.approx(1.0)  # all four: gold has 2 votes, the most


@pytest.mark.parametrize("env_name", ["math", "synth-categorical"])
def test_subsets_statistics_equal_enumeration_of_all_subsets(env_name: str) -> None:
    env = get_environment(env_name) if env_name == "math" else synth_categorical(
        1, n_prompts=4, n_queries=20)
    p = env.problem
    oracle = SimulatedOracle(env, np.arange(20), 10**6, np.random.default_rng(3))
    obs = oracle.pull([Pull(0, 7, 3), Pull(2, 6, 2), Pull(0, 5, 4), Pull(1, 1, 5),
                       Pull(3, 2, 2)])
    stats = QTable(p, "subsets")
    stats.update(obs[:2])
    stats.update(obs[2:])
    sums, _, counts = subset_statistics(p, obs)  # every subset scored by the references
    np.testing.assert_allclose(stats.sums, sums, atol=1e-10)
    assert (stats.counts == counts).all()


def test_subsets_have_less_spread_than_blocks() -> None:
    """Same data, same expectation, less noise: over many groups of 8 on one (prompt, query),
    the per-group estimate of Q(p, 3) varies less with subsets than with blocks."""
    env = get_environment("math")
    gold_p = env.probs[:, np.arange(env.n_queries), env.gold]  # [P, X]
    prompt, query = np.unravel_index(np.argmin(np.abs(gold_p - 0.5)), gold_p.shape)
    oracle = SimulatedOracle(env, np.array([query]), 10**6, np.random.default_rng(0))
    per_group: dict[str, list[float]] = {"blocks": [], "subsets": []}
    for _ in range(300):
        obs = oracle.pull([Pull(int(prompt), 8, 1)])
        for est in per_group:
            s = QTable(env.problem, est)
            s.update(obs)
            per_group[est].append(s.mean[0, prompt, 2])
    b, u = np.array(per_group["blocks"]), np.array(per_group["subsets"])
    assert abs(b.mean() - u.mean()) < 0.05  # both unbiased for Q(p, 3) on that query
    assert u.var() < b.var()


# the psst-model learners estimate Q with their own model (iapo.model): no estimator to pick
MODEL_LEARNERS = ("psst-model", "psst-model4", "psst-auto")
TABLE_LEARNERS = sorted(set(LEARNERS) - set(MODEL_LEARNERS))


class NoPulls:
    """An oracle for a run that must stop before its first pull."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.ledger = Ledger(100)

    def pull(self, requests: Sequence[Pull]) -> list[Observation]:
        raise AssertionError(f"pulled {list(requests)} before refusing the estimator")


@pytest.mark.parametrize("name", TABLE_LEARNERS)
def test_every_table_learner_hands_subsets_to_its_q_table(name: str) -> None:
    """`name:subsets` reaches the Q table: the subsets estimator refuses mixed problems (and
    blocks does not), so a learner that dropped the estimator would run here instead."""
    grid = ContextGrid.product([Objective("correct"), Objective("style")], [(0.5, 0.5)],
                               {"only": 0.0})
    mixed = Problem("m", "mixed", ("a", "b"), 2, grid)
    with pytest.raises(ValueError, match="subsets estimator supports mv and bon"):
        get_learner(f"{name}:subsets").learner(mixed, NoPulls(mixed), 100, np.random.default_rng(0))


@pytest.mark.parametrize("name", MODEL_LEARNERS)
def test_model_learners_refuse_an_estimator(name: str) -> None:
    """The model is the estimator: `psst-model:subsets` is refused by name rather than run
    with the subsets argument silently ignored; `name:blocks` is the learner itself."""
    with pytest.raises(ValueError, match=f"'{name}' .*no 'subsets' estimator"):
        get_learner(f"{name}:subsets")
    with pytest.raises(ValueError, match="no 'subsets' estimator"):
        get_learner(name, "subsets")
    assert get_learner(f"{name}:blocks").name == name == get_learner(name).name


def test_estimator_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown estimator"):
        get_learner("psst:magic")
    with pytest.raises(ValueError, match="unknown learner"):
        get_learner("nope:subsets")
    with pytest.raises(ValueError, match="estimator"):
        QTable(get_environment("math").problem, "magic")


def test_train_with_subsets_from_the_command_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = CliRunner().invoke(main, ["train", "math", "--learner", "psst", "--budget", "1500",
                                    "--estimator", "subsets", "--out", str(tmp_path / "p.json")])
    assert out.exit_code == 0, out.output
    assert "psst:subsets on math" in out.output
    # the default learner estimates with its own model and blocks: an estimator is refused
    out = CliRunner().invoke(main, ["train", "math", "--budget", "1500", "--estimator",
                                    "subsets", "--out", str(tmp_path / "q.json")])
    assert out.exit_code == 2 and "'psst-auto'" in out.output and "no 'subsets'" in out.output


def test_memoized_subset_credits_fit_batches_of_any_width() -> None:
    # the group [0, 0, 1] with gold 0, worked by hand: n = 1: 2/3 of the answers are gold;
    # n = 2: of the 3 pairs, {0, 0} wins (1) and the two {0, 1} tie (1/2 each): 2/3;
    # n = 3: gold wins 2-1. It is read in a batch padded to 5 (its credit is memoized there),
    # then in batches padded to 3 and 4 (beside a unanimous group as wide as the batch): the
    # memo must fit every width.
    want = np.array([2 / 3, 2 / 3, 1.0])
    for width in (5, 3, 4, 3):
        labels = np.full((2, width), -1, dtype=np.int64)  # -1: padding
        labels[0, :3] = [0, 0, 1]
        labels[1, :] = 1  # every answer gold: credit 1 at every n
        got = _mv_subset_credit(labels, np.array([0, 1]), np.array([3, width]))
        assert got.shape == (2, width)
        assert got[0, :3] == pytest.approx(want) and not got[0, 3:].any()
        assert got[1] == pytest.approx(np.ones(width))


def test_memo_pads_short_rows_and_drops_the_least_recently_used() -> None:
    memo = Memo(maxsize=2)
    calls: list[list[int]] = []

    def compute(idx: np.ndarray) -> list[np.ndarray]:
        calls.append(idx.tolist())
        return [np.full(int(k[0]), float(k[0])) for k in keys[idx]]

    keys = np.array([[1], [2], [3]])
    assert memo.rows(keys[:2], 3, compute).tolist() == [[1, 0, 0], [2, 2, 0]]
    assert memo.rows(keys[1:2], 2, compute).tolist() == [[2, 2]]  # a hit, narrower table
    assert memo.rows(keys, 4, compute).tolist() == [[1, 0, 0, 0], [2, 2, 0, 0], [3, 3, 3, 0]]
    assert calls == [[0, 1], [2]] and len(memo) == 2  # key 1, used least recently, dropped
    memo.rows(keys[:1], 1, compute)
    assert calls[-1] == [0]


def _hand_made_problem(kind: str, stopping: Stopping | None = None) -> Problem:
    """Three prompts, N_max = 6, 2 objectives (1 for MV), correctness weights other than 1
    and cost weights other than 0."""
    objectives = [Objective("correct"), Objective("style")]
    weights = [[1.0, 0.5], [0.3, 1.0], [0.7, 0.2]] if kind != "mv" else [[0.4]]
    grid = ContextGrid.product(objectives if kind != "mv" else objectives[:1], weights,
                               {"low": 0.0, "high": 0.3})
    return Problem("hand", kind, ("a", "b", "c"), 6, grid, CostObjective("cost", 1.0),
                   stopping or Stopping())


def _hand_made_batches(problem: Problem, seed: int = 11) -> list[list[Observation]]:
    """Two batches of groups of 1 to 6 answers over 3 categories (gold varies), coarse
    scores (ties happen) and costs in [0.1, 1]."""
    rng = np.random.default_rng(seed)
    k1 = problem.n_objectives + 1
    mv = problem.aggregator != "bon"
    batches = []
    for _ in range(2):
        batch = []
        for prompt, n, count in [(0, 6, 2), (1, 5, 1), (2, 1, 3), (0, 3, 2), (1, 4, 1)]:
            scores = np.round(rng.uniform(0, 1, (count, n, k1)), 1)  # coarse: ties happen
            scores[..., -1] = rng.uniform(0.1, 1.0, (count, n))
            labels = rng.integers(0, 3, (count, n)).astype(np.int16)
            gold = rng.integers(0, 3, count).astype(np.int16)
            batch.append(Observation(prompt, n, np.zeros(count, dtype=np.int64), scores,
                                     labels if mv else None, gold if mv else None))
        batches.append(batch)
    return batches


@pytest.mark.parametrize("kind", ["mv", "mixed", "bon"])
def test_block_statistics_of_hand_made_groups_equal_a_direct_loop(kind: str) -> None:
    # every block of every group scored by the reference utilities of tests/brute.py, one
    # block at a time
    problem = _hand_made_problem(kind)
    batches = _hand_made_batches(problem)
    stats = QTable(problem)
    for batch in batches:
        stats.update(batch)
    sums, sumsq, counts = block_statistics(problem, [o for batch in batches for o in batch])
    np.testing.assert_allclose(stats.sums, sums, atol=1e-10)
    np.testing.assert_allclose(stats.sumsq, sumsq, atol=1e-10)
    assert (stats.counts == counts).all()
    assert stats.counts.dtype == np.int64  # counts of blocks, as the Estimator protocol says


@pytest.mark.parametrize("kind", ["mv", "bon"])
def test_subsets_statistics_of_hand_made_groups_equal_enumeration(kind: str) -> None:
    # every size-n subset of every group scored by the reference utilities, with a
    # correctness weight of 0.4 (MV) and cost weights 0 and 0.3
    problem = _hand_made_problem(kind)
    batches = _hand_made_batches(problem, seed=5)
    stats = QTable(problem, "subsets")
    for batch in batches:
        stats.update(batch)
    sums, sumsq, counts = subset_statistics(problem, [o for batch in batches for o in batch])
    np.testing.assert_allclose(stats.sums, sums, atol=1e-10)
    np.testing.assert_allclose(stats.sumsq, sumsq, atol=1e-10)
    assert (stats.counts == counts).all()
    assert stats.counts.dtype == np.int64


def test_subset_utilities_weigh_each_size_by_the_disjoint_blocks_of_its_group() -> None:
    # groups of 2 and 3 padded to 3: floor(G/n) for n <= G, 0 beyond the group
    problem = _hand_made_problem("bon")
    obs = [Observation(0, 2, np.zeros(1, dtype=np.int64), np.full((1, 2, 3), 0.5)),
           Observation(1, 3, np.zeros(1, dtype=np.int64), np.full((1, 3, 3), 0.5))]
    _, weight, prompts = QTable(problem, "subsets").subset_utilities(obs)
    np.testing.assert_array_equal(weight, [[2, 1, 0], [3, 1, 1]])
    np.testing.assert_array_equal(prompts, [0, 1])


@pytest.mark.parametrize(("labels", "wave", "paid"), [
    ([0, 0, 0, 1], 1, 3),  # t = 3: margin 3 > 1 answer to come
    ([0, 0, 0, 1], 2, 4),  # t = 2: margin 2, not > 2; then t = 4 = N
    ([0, 0, 0, 0, 1, 1], 1, 4),  # t = 4: margin 4 > 2
    ([0, 0, 0, 0, 1, 1], 3, 6),  # t = 3: margin 3, not > 3; then N
    ([1, 0, 1, 0], 1, 4),  # never ahead by more than what is left
    ([2, 2, 2], 5, 3),  # one wave of N
])
def test_the_decided_rule_reference_by_hand(labels: list[int], wave: int, paid: int) -> None:
    assert decided_paid(labels, wave) == paid


def test_block_statistics_with_the_decided_rule_by_hand() -> None:
    # one group of answers (1, 1, 0), gold 1, costs (0.1, 0.2, 0.4), fully sequential,
    # correctness and cost weight 1. n = 1: blocks 1 - 0.1, 1 - 0.2, 0 - 0.4 (one answer
    # always decides). n = 2: (1, 1) is undecided at t = 1 (margin 1, 1 to come): 1 - 0.3.
    # n = 3: decided at t = 2 (margin 2 > 1), the third answer is never paid: 1 - 0.3.
    grid = ContextGrid.product([Objective("correct")], [[1.0]], {"only": 1.0})
    problem = Problem("hand", "mv", ("a",), 3, grid, CostObjective("cost", 1.0),
                      Stopping("decided", 1))
    scores = np.array([[[1.0, 0.1], [1.0, 0.2], [0.0, 0.4]]])
    stats = QTable(problem)
    stats.update([Observation(0, 3, np.zeros(1, dtype=np.int64), scores,
                              np.array([[1, 1, 0]], dtype=np.int16), np.array([1], np.int16))])
    np.testing.assert_allclose(stats.sums[0, 0], [0.9 + 0.8 - 0.4, 0.7, 0.7])
    np.testing.assert_array_equal(stats.counts[0], [3, 1, 1])


@pytest.mark.parametrize("wave", [1, 2])
def test_block_statistics_with_the_decided_rule_equal_a_direct_loop(wave: int) -> None:
    # every block pays what its arm (n, wave) would have drawn: the decided rule replayed on
    # the block's answers one block at a time (brute.decided_paid)
    problem = _hand_made_problem("mv", Stopping("decided", wave))
    batches = _hand_made_batches(problem)
    obs = [o for batch in batches for o in batch]
    early = [decided_paid(o.labels[g, b * n:(b + 1) * n], wave) < n
             for o in obs for g in range(o.count) for n in range(1, o.n + 1)
             for b in range(o.n // n)]
    assert sum(early) >= 5  # the data has blocks that stop early
    stats = QTable(problem)
    for batch in batches:
        stats.update(batch)
    sums, sumsq, counts = block_statistics(problem, obs)
    np.testing.assert_allclose(stats.sums, sums, atol=1e-10)
    np.testing.assert_allclose(stats.sumsq, sumsq, atol=1e-10)
    assert (stats.counts == counts).all()


def test_q_table_refuses_subsets_where_they_do_not_apply_and_says_why() -> None:
    decided = _hand_made_problem("mv", Stopping("decided", 2))
    with pytest.raises(ValueError, match=r"^the subsets estimator prices arms that pay all N; "
                                         r"with stop 'decided' use blocks$"):
        QTable(decided, "subsets")
    with pytest.raises(ValueError, match=r"^the subsets estimator supports mv and bon "
                                         r"problems, not mixed; use blocks$"):
        QTable(_hand_made_problem("mixed"), "subsets")


@pytest.mark.parametrize("estimator", ["blocks", "subsets"])
def test_a_batch_of_empty_pulls_changes_nothing(estimator: str) -> None:
    # pulls of no groups, as the oracle answers them: nothing is added, nothing fails
    env = get_environment("math")
    oracle = SimulatedOracle(env, np.arange(20), 100, np.random.default_rng(0))
    empty = oracle.pull([Pull(0, 3, 0), Pull(1, 5, 0)])
    assert [o.count for o in empty] == [0, 0]
    stats = QTable(env.problem, estimator)
    stats.update(empty)
    assert not stats.counts.any() and not stats.sums.any()


@pytest.mark.parametrize("estimator", ["blocks", "subsets"])
@pytest.mark.parametrize("missing", ["labels", "gold"])
def test_a_majority_voting_observation_needs_labels_and_gold(estimator: str,
                                                            missing: str) -> None:
    problem = _hand_made_problem("mv")
    labels = None if missing == "labels" else np.array([[0, 1]], dtype=np.int16)
    gold = None if missing == "gold" else np.array([0], dtype=np.int16)
    obs = Observation(0, 2, np.zeros(1, dtype=np.int64), np.full((1, 2, 2), 0.5), labels, gold)
    with pytest.raises(ValueError, match="^a majority-voting oracle must return answer labels "
                                         "and gold$"):
        QTable(problem, estimator).update([obs])


def test_best_of_n_blocks_take_a_rated_completion_at_its_rated_value() -> None:
    """Observation.rated (values a person gave a completion they were shown): a block whose
    scores choose a rated completion (the first of its best) is worth its rated value; the
    scores still choose. Against a direct loop over every disjoint block, with coarse scores
    (ties happen, so 'the first of its best' is exercised) and one or two rated completions
    in some groups, objectives rated alone or together."""
    problem = _hand_made_problem("bon")
    rng = np.random.default_rng(3)
    w, cw = problem.grid.weights, problem.grid.cost_weights
    batch = []
    for o in _hand_made_batches(problem, seed=7)[0]:
        rated = np.full(o.scores[..., :-1].shape, np.nan)
        for g in range(o.count):
            for i in rng.choice(o.n, size=min(o.n, int(rng.integers(0, 3))), replace=False):
                k = rng.integers(0, 3)  # objective 0, 1, or both
                rated[g, i, [0, 1] if k == 2 else [k]] = np.round(rng.uniform(0, 1), 1)
        batch.append(dataclasses.replace(o, rated=rated))
    stats = QTable(problem)
    stats.update(batch)
    sums = np.zeros_like(stats.sums)
    for o in batch:
        for g in range(o.count):
            for n in range(1, o.n + 1):
                for b in range(o.n // n):
                    part = slice(b * n, (b + 1) * n)
                    scores = o.scores[g, part]
                    value = np.where(np.isnan(o.rated[g, part]), scores[:, :-1],
                                     o.rated[g, part])
                    for c in range(w.shape[0]):
                        pick = int(np.argmax(scores[:, :-1] @ w[c]))  # the first best
                        sums[c, o.prompt, n - 1] += (value[pick] @ w[c]
                                                     - cw[c] * scores[:, -1].sum())
    np.testing.assert_allclose(stats.sums, sums, atol=1e-10)
    # and unrated, the same groups give the scored values
    plain = QTable(problem)
    plain.update([dataclasses.replace(o, rated=None) for o in batch])
    assert not np.allclose(plain.sums, stats.sums)
    np.testing.assert_allclose(plain.sums, block_statistics(problem, batch)[0], atol=1e-10)
