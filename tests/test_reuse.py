"""A retraining reuses the groups the traffic has drawn (iapo.pulls.Reusing,
Continual.retrain): the first n completions of a banked group, each once, free; the rest
drawn and paid; training's groups and a drift-flagged prompt's earlier ones never given."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import iapo.continual as continual
from iapo.continual import ContinualSettings
from iapo.oracle import SimulatedOracle
from iapo.pulls import BudgetExceededError, Observation, Pull, Reusing
from test_continual import (
    drop_after_baseline,
    env3,
    group,
    learner,
    served_groups,
)


def on_queries(prompt: int, labels: list[list[int]], queries: list[int]) -> Observation:
    """Groups of ``prompt`` with the given answers (gold 0), the i-th on ``queries[i]``."""
    return dataclasses.replace(group(prompt, labels), queries=np.array(queries, dtype=np.int64))


def test_the_first_n_completions_of_every_group_by_hand() -> None:
    o = on_queries(0, [[0, 1, 1, 0], [1, 0, 0, 0]], [2, 3])
    two = o.first(2)
    assert two.n == 2 and two.queries.tolist() == [2, 3]
    assert two.labels.tolist() == [[0, 1], [1, 0]]
    assert two.scores[..., 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert two.gold.tolist() == [0, 0]
    for bad in (0, 5):
        with pytest.raises(ValueError, match="first"):
            o.first(bad)


def bank() -> list[Observation]:
    """Prompt 0: two groups of 4 (queries 1 and 2) and one of 1 (query 3)."""
    return [on_queries(0, [[0, 0, 1, 1], [1, 1, 0, 0]], [1, 2]), on_queries(0, [[1]], [3])]


def test_banked_groups_are_given_first_free_each_once() -> None:
    """Three groups of (0, 2) asked: the two groups of 4 are given (their first two
    answers), the third is drawn and paid (2), as is the group of prompt 1 (2): 4 spent.
    Then two of (0, 1): the group of one is given, one drawn (1 more). Then (0, 4): the bank
    has nothing left of that width (its groups of 4 were given), so it is drawn (4 more)."""
    env = env3()
    oracle = SimulatedOracle(env, [0], 100, np.random.default_rng(0))  # draws on query 0
    reuse = Reusing(oracle, bank(), np.random.default_rng(1))
    first, other = reuse.pull([Pull(0, 2, 3), Pull(1, 2, 1)])
    assert first.count == 3 and first.n == 2 and other.count == 1
    given = {q: first.labels[i].tolist() for i, q in enumerate(first.queries.tolist())}
    assert given[1] == [0, 0] and given[2] == [1, 1] and 0 in given
    assert oracle.ledger.spent == 4 and reuse.ledger is oracle.ledger
    assert (reuse.reused_groups, reuse.reused_completions) == (2, 4)
    assert [(o.prompt, o.n, o.queries.tolist()) for o in reuse.paid] == [
        (0, 2, [0]), (1, 2, [0])]
    (ones,) = reuse.pull([Pull(0, 1, 2)])
    assert sorted(ones.queries.tolist()) == [0, 3] and oracle.ledger.spent == 5
    assert (reuse.reused_groups, reuse.reused_completions) == (3, 5)
    (four,) = reuse.pull([Pull(0, 4, 1)])
    assert four.queries.tolist() == [0] and oracle.ledger.spent == 9
    assert len(reuse.paid) == 4


class Counting(SimulatedOracle):
    """Counts the batches it is asked to draw."""

    batches = 0

    def pull(self, requests):  # type: ignore[no-untyped-def]
        Counting.batches += 1
        return super().pull(requests)


def test_a_refused_batch_gives_nothing_and_a_banked_one_draws_nothing() -> None:
    """All or nothing, as the oracle: a batch past the budget is refused and leaves the
    bank as it was (the two groups of 4 are given by the next batch); a batch the bank
    fills alone asks the oracle for nothing."""
    Counting.batches = 0
    oracle = Counting(env3(), [0], 3, np.random.default_rng(0))
    reuse = Reusing(oracle, bank(), np.random.default_rng(1))
    with pytest.raises(BudgetExceededError):
        reuse.pull([Pull(0, 4, 3)])  # two from the bank, one of 4 drawn: past 3
    assert (reuse.reused_groups, oracle.ledger.spent, reuse.paid) == (0, 0, [])
    (o,) = reuse.pull([Pull(0, 4, 2)])
    assert sorted(o.queries.tolist()) == [1, 2] and oracle.ledger.spent == 0
    assert Counting.batches == 1 and reuse.reused_completions == 8


def test_paired_pulls_and_other_prompts_draw_everything() -> None:
    """A paired pull keeps its queries shared with the batch, so the bank gives it
    nothing; nor does it give a prompt it holds no group of."""
    oracle = SimulatedOracle(env3(), [0], 100, np.random.default_rng(0))
    reuse = Reusing(oracle, bank(), np.random.default_rng(1))
    reuse.pull([Pull(0, 2, 2, paired=True), Pull(2, 1, 3)])
    assert oracle.ledger.spent == 7 and (reuse.reused_groups, reuse.reused_completions) == (0, 0)


def test_a_mapped_draw_is_seen_and_kept_as_mapped() -> None:
    """``taken`` maps what is drawn (here query q to 10 + q) before the learner sees it;
    the bank's groups are given as they are."""
    oracle = SimulatedOracle(env3(), [0], 100, np.random.default_rng(0))

    def taken(o: Observation) -> Observation:
        return dataclasses.replace(o, queries=o.queries + 10)

    reuse = Reusing(oracle, bank(), np.random.default_rng(1), taken)
    (o,) = reuse.pull([Pull(0, 4, 3)])
    assert sorted(o.queries.tolist()) == [1, 2, 10]
    assert [p.queries.tolist() for p in reuse.paid] == [[10]]


def test_without_reuse_a_retraining_draws_everything(monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    """``reuse=False`` (the gateway's refine): the bank is empty, nothing reused."""
    monkeypatch.setattr(continual, "Reusing", Spy)
    Spy.banks, Spy.made = [], []
    cont = learner(ContinualSettings(learn_budget=0.1, refine_every=50, retrain=100))
    cont.observe([served_groups(1, 30, 10)])
    cont.record_served(100, 400)
    budget = cont.retrain_budget()
    oracle = SimulatedOracle(env3(), [0, 1, 2, 3], budget, np.random.default_rng(0))
    cont.retrain(oracle, budget, np.random.default_rng(1), reuse=False)
    assert Spy.banks == [[]] and cont.reused_groups == 0
    assert cont.learning_completions == oracle.ledger.spent > 0


class Spy(Reusing):
    """Records the groups each retraining's bank was given."""

    banks: list[list[Observation]] = []
    made: list[Reusing] = []

    def __init__(self, oracle, groups, rng, taken=None):  # type: ignore[no-untyped-def]
        Spy.banks.append(list(groups))
        Spy.made.append(self)
        super().__init__(oracle, groups, rng, taken)


def test_a_retraining_reuses_the_traffics_groups_only(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """Training's groups (prompt 2) are not in the bank, the traffic's are (prompts 0 and
    1). The run pays only for what it draws: its spend is the ledger's, the estimates take
    in only the paid groups, and what it reused is counted."""
    monkeypatch.setattr(continual, "Reusing", Spy)
    Spy.banks, Spy.made = [], []
    training = [served_groups(2, 5, 5)]
    cont = learner(ContinualSettings(learn_budget=0.1, refine_every=50, retrain=100),
                   training)
    traffic = [served_groups(1, 30, 10), served_groups(0, 20, 20)]
    cont.observe(traffic)
    cont.record_served(100, 400)
    budget = cont.retrain_budget()
    counts = cont.table.counts.copy()
    oracle = SimulatedOracle(env3(), [0, 1, 2, 3], budget, np.random.default_rng(0))
    cont.retrain(oracle, budget, np.random.default_rng(1))
    (given,) = Spy.banks
    assert [o is t for o, t in zip(given, traffic, strict=True)] == [True, True]
    assert not any(o is training[0] for o in given)
    (bank,) = Spy.made
    assert cont.learning_completions == oracle.ledger.spent > 0
    assert sum(o.count * o.n for o in bank.paid) == oracle.ledger.spent
    assert 0 < cont.reused_groups == bank.reused_groups <= 80
    assert cont.reused_completions == bank.reused_completions
    # the estimates take in the paid groups, not the reused ones (there already)
    paid = continual.GroupTable(cont.problem)
    paid.update(bank.paid)
    assert (cont.table.counts - counts == paid.counts).all()


def test_a_flagged_prompts_earlier_groups_are_not_reused(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Prompt 0 drifts and is flagged: none of its groups drawn before the flag is in the
    bank (its 60 before the baselines, its drifting ones after them: some may predate the
    drift), only the one drawn after the flag; prompt 1's groups all are."""
    monkeypatch.setattr(continual, "Reusing", Spy)
    Spy.banks, Spy.made = [], []
    settings = ContinualSettings(learn_budget=0.1, refine_every=10, retrain=100)
    cont = learner(settings, served=((0, 4), (0, 4)))
    other = served_groups(1, 3, 1)
    cont.observe([other])
    assert drop_after_baseline(cont, 0.3)
    after = served_groups(0, 1, 0)
    cont.observe([after])
    cont.record_served(90, 360)
    budget = cont.retrain_budget()
    cont.retrain(SimulatedOracle(env3(), [0, 1, 2, 3], budget, np.random.default_rng(0)),
                 budget, np.random.default_rng(1))
    (given,) = Spy.banks
    zero, one = ([o for o in given if o.prompt == p] for p in (0, 1))
    assert len(zero) == 1 and zero[0] is after
    assert len(one) == 1 and one[0] is other


def test_a_retraining_spends_what_it_is_given_maps_its_draws_and_counts_every_reuse(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As refine's ``--budget T2 --retrain``: with no learning budget (nothing saved), a
    retraining given 24 completions spends them (``budget`` bounds it, not the saved 0),
    every group it draws reaches the learner and the estimates mapped by ``taken`` (query q
    as 10 + q), and what two retrainings reused adds up."""
    monkeypatch.setattr(continual, "Reusing", Spy)
    Spy.banks, Spy.made = [], []
    cont = learner(ContinualSettings(learn_budget=0.0, refine_every=50, retrain=100))
    cont.observe([served_groups(1, 30, 10)])
    cont.record_served(100, 400)
    assert cont.allowance() == 0

    def taken(o: Observation) -> Observation:
        return dataclasses.replace(o, queries=o.queries + 10)

    for seed in (0, 1):
        oracle = SimulatedOracle(env3(), [0, 1, 2, 3], 24, np.random.default_rng(seed))
        cont.retrain(oracle, 24, np.random.default_rng(seed), taken=taken)
        assert oracle.ledger.spent > 0
    first, second = Spy.made
    assert cont.learning_completions == sum(o.count * o.n for b in Spy.made for o in b.paid)
    assert all((o.queries >= 10).all() for b in Spy.made for o in b.paid)
    assert first.reused_groups > 0 and second.reused_groups > 0
    assert cont.reused_groups == first.reused_groups + second.reused_groups
    assert cont.reused_completions == first.reused_completions + second.reused_completions
