"""The simulated oracle and its budget ledger, and the train/test split of queries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iapo.envs import BoNEnvironment, MVEnvironment
from iapo.errors import InputError
from iapo.oracle import SimulatedOracle
from iapo.problem import ContextGrid, Objective, ProblemError
from iapo.pulls import BudgetExceededError, Ledger, Observation, Pull, draw_queries
from iapo.split import train_test_split


def _mv_env() -> MVEnvironment:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([0.7, 0.7, 0.7], size=(3, 6))
    probs[0, 2] = [0.0, 1.0, 0.0]  # a certain answer and two impossible ones
    probs[2, 4] = [0.5, 0.0, 0.5]
    return MVEnvironment("tiny-mv", probs, np.array([0, 1, 2, 0, 1, 2]), [0.01, 0.02, 0.03],
                         {"low": 0.0, "high": 1.0}, n_max=4, cacheable=False)


def _bon_env() -> BoNEnvironment:
    rng = np.random.default_rng(1)
    scores = rng.uniform(size=(2, 5, 3, 3)).round(3)
    probs = rng.dirichlet([1.0, 1.0, 1.0], size=(2, 5))
    probs[1, 3] = [0.0, 0.4, 0.6]
    grid = ContextGrid.product([Objective("a"), Objective("b")], [(0.3, 0.7), (0.7, 0.3)],
                               {"low": 0.0, "high": 1.0})
    return BoNEnvironment("tiny-bon", scores, probs, grid, n_max=5, cacheable=False)


MV_ENV = _mv_env()
BON_ENV = _bon_env()
ENVS = {"mv": MV_ENV, "bon": BON_ENV}
TRAIN = np.array([1, 2, 4])


def same_observations(a: list[Observation], b: list[Observation]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.prompt, x.n) != (y.prompt, y.n):
            return False
        if not (np.array_equal(x.queries, y.queries) and np.array_equal(x.scores, y.scores)):
            return False
        if (x.labels is None) != (y.labels is None):
            return False
        if x.labels is not None and not np.array_equal(x.labels, y.labels):
            return False
    return True


def check_observation(kind: str, req: Pull, obs: Observation) -> None:
    env = ENVS[kind]
    k1 = env.problem.n_objectives + 1
    assert (obs.prompt, obs.n, obs.count) == (req.prompt, req.n, req.count)
    assert obs.queries.shape == (req.count,)
    assert set(obs.queries.tolist()) <= set(TRAIN.tolist())
    assert obs.scores.shape == (req.count, req.n, k1)
    if kind == "mv":
        assert isinstance(env, MVEnvironment)
        assert obs.labels is not None and obs.gold is not None
        assert obs.labels.shape == (req.count, req.n)
        assert obs.gold.shape == (req.count,)
        np.testing.assert_array_equal(obs.gold, env.gold[obs.queries])
        np.testing.assert_array_equal(obs.scores[..., 0], obs.labels == obs.gold[:, None])
        np.testing.assert_array_equal(obs.scores[..., 1], env.cost[req.prompt])
        # only answers with positive probability on their query
        p = env.probs[req.prompt, obs.queries[:, None], obs.labels]
        assert np.all(p > 0)
    else:
        assert isinstance(env, BoNEnvironment)
        assert obs.labels is None and obs.gold is None
        support = env.scores[req.prompt, obs.queries]  # [count, S, K+1]
        match = (obs.scores[:, :, None, :] == support[:, None, :, :]).all(axis=-1)
        point = match.argmax(axis=-1)
        assert np.all(match.any(axis=-1))
        assert np.all(env.probs[req.prompt, obs.queries[:, None], point] > 0)


def pulls(kind: str) -> st.SearchStrategy[Pull]:
    env = ENVS[kind]
    return st.builds(
        Pull,
        prompt=st.integers(0, env.problem.n_prompts - 1),
        n=st.integers(1, env.problem.n_max),
        count=st.integers(0, 4),
        paired=st.booleans(),
    )


@settings(max_examples=150, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["mv", "bon"]), budget=st.integers(0, 80),
       seed=st.integers(0, 2**32 - 1))
def test_the_ledger_never_exceeds_the_budget(
    data: st.DataObject, kind: str, budget: int, seed: int
) -> None:
    batches = data.draw(st.lists(st.lists(pulls(kind), max_size=4), max_size=8))
    env = ENVS[kind]
    oracle = SimulatedOracle(env, TRAIN, budget, np.random.default_rng(seed))
    # the twin sees only the accepted batches: a refused batch must not have drawn anything
    twin = SimulatedOracle(env, TRAIN, budget, np.random.default_rng(seed))
    spent = 0
    for batch in batches:
        cost = sum(r.n * r.count for r in batch)
        if spent + cost > budget:
            with pytest.raises(BudgetExceededError, match=f"pull of {cost} completions refused"):
                oracle.pull(batch)
        else:
            out = oracle.pull(batch)
            assert same_observations(out, twin.pull(batch))
            assert len(out) == len(batch)
            for req, obs in zip(batch, out, strict=True):
                check_observation(kind, req, obs)
            spent += cost
        assert oracle.ledger.spent == spent
        assert oracle.ledger.spent <= budget
        assert oracle.ledger.remaining == budget - spent
    # and the refused batches left the random stream where it was
    probe = [Pull(0, 1, 3)]
    if oracle.ledger.remaining >= 3:
        assert same_observations(oracle.pull(probe), twin.pull(probe))


def test_spending_the_budget_exactly() -> None:
    oracle = SimulatedOracle(MV_ENV, TRAIN, 10, np.random.default_rng(0))
    out = oracle.pull([Pull(0, 4, 2), Pull(1, 2, 1)])
    assert [o.scores.shape for o in out] == [(2, 4, 2), (1, 2, 2)]
    assert oracle.ledger.spent == 10 and oracle.ledger.remaining == 0
    # a free pull is still served, and returns an empty group
    (empty,) = oracle.pull([Pull(2, 3, 0)])
    assert empty.count == 0 and empty.scores.shape == (0, 3, 2)
    with pytest.raises(BudgetExceededError, match="10 of the budget 10 are spent, 0 remain"):
        oracle.pull([Pull(0, 1, 1)])
    assert oracle.ledger.spent == 10


def test_a_batch_is_all_or_nothing() -> None:
    oracle = SimulatedOracle(BON_ENV, TRAIN, 12, np.random.default_rng(3))
    with pytest.raises(BudgetExceededError):
        oracle.pull([Pull(0, 5, 2), Pull(1, 3, 1)])  # 13 > 12: nothing of it is served
    assert oracle.ledger.spent == 0
    out = oracle.pull([Pull(0, 5, 2), Pull(1, 2, 1)])
    assert oracle.ledger.spent == 12 and len(out) == 2


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (Pull(0, 0, 1), ProblemError, r"N=0 is outside 1\.\.4"),
        (Pull(0, 5, 1), ProblemError, r"N=5 is outside 1\.\.4"),
        (Pull(3, 1, 1), ValueError, r"prompt 3; prompts are 0\.\.2"),
        (Pull(-1, 1, 1), ValueError, r"prompt -1"),
        (Pull(0, 1, -1), ValueError, r"count -1"),
        (Pull(0, 1, 1.5), ValueError, r"count 1.5"),  # type: ignore[arg-type]
    ],
)
def test_invalid_pulls_are_refused_before_anything_happens(
    bad: Pull, error: type[Exception], message: str
) -> None:
    oracle = SimulatedOracle(MV_ENV, TRAIN, 100, np.random.default_rng(9))
    twin = SimulatedOracle(MV_ENV, TRAIN, 100, np.random.default_rng(9))
    with pytest.raises(error, match=message):
        oracle.pull([Pull(1, 2, 2), bad])
    assert oracle.ledger.spent == 0
    probe = [Pull(1, 2, 2)]
    assert same_observations(oracle.pull(probe), twin.pull(probe))


@pytest.mark.parametrize(
    "odd",
    [Pull(0, 2.0, 3), Pull(0, 2, 3.0), Pull(1.0, 2, 3), Pull(0.5, 2, 3)],  # type: ignore[arg-type]
    ids=["float-n", "float-count", "float-prompt", "fractional-prompt"],
)
def test_a_pull_is_served_in_full_or_refused_without_charge(odd: Pull) -> None:
    oracle = SimulatedOracle(MV_ENV, TRAIN, 100, np.random.default_rng(4))
    try:
        out = oracle.pull([odd])
    except Exception:
        assert oracle.ledger.spent == 0  # refused: nothing may be charged
    else:
        assert oracle.ledger.spent == 6 and isinstance(oracle.ledger.spent, int)
        assert out[0].scores.shape == (3, 2, 2)


def test_a_fractional_prompt_is_refused_by_name() -> None:
    oracle = SimulatedOracle(MV_ENV, TRAIN, 100, np.random.default_rng(4))
    with pytest.raises(ValueError, match="prompt 0.5"):
        oracle.pull([Pull(0.5, 2, 3)])  # type: ignore[arg-type]
    assert oracle.ledger.spent == 0


def test_ledger_by_hand() -> None:
    ledger = Ledger(7)
    ledger.charge(3)
    ledger.charge(0)
    ledger.charge(4)
    assert (ledger.spent, ledger.remaining) == (7, 0)
    with pytest.raises(BudgetExceededError, match="pull of 1 completions refused"):
        ledger.charge(1)
    with pytest.raises(ValueError, match="negative"):
        ledger.charge(-2)
    assert ledger.spent == 7
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match=f"budget T={bad}"):
            Ledger(bad)  # type: ignore[arg-type]


def test_oracle_needs_valid_training_queries() -> None:
    with pytest.raises(ValueError, match="at least one training query"):
        SimulatedOracle(MV_ENV, [], 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"0\.\.5"):
        SimulatedOracle(MV_ENV, [0, 6], 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"0\.\.5"):
        SimulatedOracle(MV_ENV, [-1], 10, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["mv", "bon"])
def test_same_seed_same_draws_other_seed_other_draws(kind: str) -> None:
    batch = [Pull(0, 3, 20), Pull(1, 2, 20)]

    def draw(seed: int) -> list[Observation]:
        return SimulatedOracle(ENVS[kind], TRAIN, 1000, np.random.default_rng(seed)).pull(batch)

    assert same_observations(draw(5), draw(5))
    assert not same_observations(draw(5), draw(6))


def test_training_queries_are_drawn_uniformly() -> None:
    oracle = SimulatedOracle(MV_ENV, TRAIN, 6000, np.random.default_rng(2))
    (obs,) = oracle.pull([Pull(1, 1, 6000)])
    freq = np.array([(obs.queries == q).mean() for q in TRAIN])
    se = np.sqrt((1 / 3) * (2 / 3) / 6000)
    assert np.all(np.abs(freq - 1 / 3) <= 4 * se)
    assert set(obs.queries.tolist()) == set(TRAIN.tolist())


def test_paired_pulls_share_their_queries_the_others_draw_their_own() -> None:
    requests = [Pull(0, 2, 40, True), Pull(0, 2, 40), Pull(1, 3, 40, True),
                Pull(2, 1, 10, True), Pull(2, 4, 5, True)]
    oracle = SimulatedOracle(MV_ENV, TRAIN, 1000, np.random.default_rng(3))
    a, alone, b, short, more = oracle.pull(requests)
    np.testing.assert_array_equal(a.queries, b.queries)
    np.testing.assert_array_equal(short.queries, a.queries[:10])  # the first ones
    np.testing.assert_array_equal(more.queries, a.queries[10:15])  # its prompt's next ones
    assert not np.array_equal(alone.queries, a.queries)  # equal with chance 3^-40
    for req, obs in zip(requests, [a, alone, b, short, more], strict=True):
        check_observation("mv", req, obs)


def test_pulls_that_are_not_paired_draw_as_before() -> None:
    # one draw of every group's query from the training queries, in order, then the answers
    oracle = SimulatedOracle(MV_ENV, TRAIN, 1000, np.random.default_rng(8))
    first, second = oracle.pull([Pull(0, 2, 30), Pull(1, 1, 20)])
    expect = TRAIN[np.random.default_rng(8).integers(0, TRAIN.size, 50)]
    np.testing.assert_array_equal(np.concatenate([first.queries, second.queries]), expect)


def test_paired_queries_are_still_uniform() -> None:
    oracle = SimulatedOracle(MV_ENV, TRAIN, 12000, np.random.default_rng(2))
    first, second = oracle.pull([Pull(1, 1, 6000, True), Pull(2, 1, 6000, True)])
    np.testing.assert_array_equal(first.queries, second.queries)
    freq = np.array([(first.queries == q).mean() for q in TRAIN])
    se = np.sqrt((1 / 3) * (2 / 3) / 6000)
    assert np.all(np.abs(freq - 1 / 3) <= 4 * se)


def test_paired_queries_follow_each_pulls_pool() -> None:
    """Where pools differ (prompts observed on different queries), a paired group takes the
    shared query where its pool holds it, else one of its own: by hand from the same draws,
    then by frequency (uniform on the pool; shared where the shared query is in it)."""
    universe = np.array([3, 5, 8, 9])
    pools = [universe, universe, np.array([5, 9])]
    requests = [Pull(0, 1, 6, True), Pull(1, 1, 6, True), Pull(2, 1, 6, True)]
    queries = draw_queries(requests, pools, universe, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    shared = universe[(rng.random(6) * 4).astype(int)]
    third = shared.copy()
    miss = ~((shared == 5) | (shared == 9))
    third[miss] = np.array([5, 9])[rng.integers(0, 2, int(miss.sum()))]
    np.testing.assert_array_equal(queries, np.concatenate([shared, shared, third]))
    m = 20000
    many = draw_queries([Pull(0, 1, m, True), Pull(2, 1, m, True)], pools[1:], universe,
                          np.random.default_rng(12))
    full, narrow = many[:m], many[m:]
    se = np.sqrt(0.25 / m)
    assert abs((narrow == 5).mean() - 0.5) <= 4 * se and set(narrow.tolist()) == {5, 9}
    assert abs((full == narrow).mean() - 0.5) <= 4 * se  # shared where 5 or 9 came up
    with pytest.raises(InputError, match="no query to draw from"):
        draw_queries([Pull(0, 1, 1, True)], [np.zeros(0, dtype=np.int64)], universe,
                       np.random.default_rng(0))


def test_paired_groups_differ_by_the_prompts_alone() -> None:
    """Best-of-N where a completion of prompt p on query x always scores effect(x) +
    offset(p): paired groups differ by the offsets exactly, groups of their own by how good
    their queries are too."""
    effect, offset = np.linspace(0.0, 0.8, 9), np.array([0.0, 0.05])
    scores = np.zeros((2, 9, 1, 2))
    scores[..., 0, 0] = effect[None, :] + offset[:, None]
    grid = ContextGrid.product([Objective("a")], [(1.0,)], {"only": 0.0})
    env = BoNEnvironment("shift", scores, np.ones((2, 9, 1)), grid, n_max=2, cacheable=False)
    oracle = SimulatedOracle(env, np.arange(9), 200, np.random.default_rng(0))
    a, b = oracle.pull([Pull(0, 2, 20, True), Pull(1, 2, 20, True)])
    np.testing.assert_allclose(b.scores[..., 0] - a.scores[..., 0], 0.05)
    a, b = oracle.pull([Pull(0, 2, 20), Pull(1, 2, 20)])
    assert np.ptp(b.scores[..., 0] - a.scores[..., 0]) > 0.5


# --- train/test split ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_queries", "n_test"),
    [(316, 63), (1500, 300), (520, 104), (512, 102), (10, 2), (5, 1), (2, 1)],
)
def test_split_is_80_20_disjoint_and_complete(n_queries: int, n_test: int) -> None:
    train, test = train_test_split(n_queries, seed=0)
    assert test.size == n_test
    assert train.size == n_queries - n_test
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n_queries))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_split_is_reproducible_and_seed_dependent() -> None:
    a = train_test_split(316, seed=1)
    b = train_test_split(316, seed=1)
    c = train_test_split(316, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # the seed may also be a SeedSequence or a Generator
    d = train_test_split(316, seed=np.random.SeedSequence(1))
    e = train_test_split(316, seed=np.random.default_rng(np.random.SeedSequence(1)))
    np.testing.assert_array_equal(d[1], e[1])


def test_split_is_not_a_fixed_cut() -> None:
    # over many seeds every query lands in the test part sometimes
    seen = np.zeros(50, dtype=bool)
    for seed in range(60):
        seen[train_test_split(50, seed=seed)[1]] = True
    assert seen.all()


def test_split_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 queries"):
        train_test_split(1, seed=0)
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            train_test_split(10, seed=0, test_fraction=bad)


def test_ledger_refund_gives_back_only_what_was_charged() -> None:
    from iapo.pulls import Ledger

    ledger = Ledger(10)
    ledger.charge(7)
    ledger.refund(3)
    assert ledger.spent == 4 and ledger.remaining == 6
    with pytest.raises(ValueError, match="cannot refund 5"):
        ledger.refund(5)
    with pytest.raises(ValueError, match="cannot refund -1"):
        ledger.refund(-1)
    assert ledger.spent == 4
