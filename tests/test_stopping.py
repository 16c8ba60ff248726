"""Majority voting that stops once the vote is decided (iapo.stopping).

Checked against every answer sequence of small cases replayed in plain Python, every vote
composition at larger N, the binomial closed form of two categories, hand-worked examples,
Monte Carlo on the MATH answer distributions, and the rule's defining property: the stopped
prefix has the same winners as all N answers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import binom

from brute import compositions
from iapo.envs import MVEnvironment, get_environment
from iapo.errors import InputError
from iapo.stopping import (
    expected_paid,
    paid_from_undecided,
    stop_points,
    undecided_probability,
    vote_decided,
    vote_margin,
)

# --- references ---------------------------------------------------------------------------------


def margin(counts: list[int]) -> int:
    """Leader's count minus the runner-up's (0 votes if there is no other category)."""
    top = sorted(counts, reverse=True) + [0]
    return top[0] - top[1]


def replay(seq: tuple[int, ...] | list[int], n: int, wave: int, n_cat: int) -> tuple[int, int]:
    """(completions paid, waves drawn) of the arm (n, wave) on the answers ``seq``, one answer
    at a time in plain Python."""
    counts = [0] * n_cat
    t = waves = 0
    while True:
        for x in seq[t: t + min(wave, n - t)]:
            counts[x] += 1
        t += min(wave, n - t)
        waves += 1
        if t == n or margin(counts) > n - t:
            return t, waves


def seq_prob(q: list[float], seq: tuple[int, ...]) -> float:
    return math.prod(q[x] for x in seq)


def brute_expected(q: list[float], n: int, wave: int) -> tuple[float, float]:
    """Exact E[paid] and E[waves] over all L^n answer sequences."""
    paid = waves = 0.0
    for seq in itertools.product(range(len(q)), repeat=n):
        pr = seq_prob(q, seq)
        p, w = replay(seq, n, wave, len(q))
        paid += pr * p
        waves += pr * w
    return paid, waves


def brute_undecided(q: list[float], n_max: int) -> np.ndarray:
    """P(margin(t) <= N - t) over all L^t prefixes, [N, t] for N, t = 0..n_max (0 for t > N)."""
    out = np.zeros((n_max + 1, n_max + 1))
    for t in range(n_max + 1):
        margins: dict[int, float] = {}
        for seq in itertools.product(range(len(q)), repeat=t):
            mg = margin([seq.count(i) for i in range(len(q))])
            margins[mg] = margins.get(mg, 0.0) + seq_prob(q, seq)
        for n in range(t, n_max + 1):
            out[n, t] = sum(pr for mg, pr in margins.items() if mg <= n - t)
    return out


def composition_undecided(q: np.ndarray, n_max: int) -> np.ndarray:
    """The same table from the multinomial pmf of every vote composition (larger N)."""
    logq = np.log(np.where(q > 0, q, 1.0))
    out = np.zeros((n_max + 1, n_max + 1))
    for t in range(n_max + 1):
        comps = compositions(t, q.size)
        ok = np.all((comps == 0) | (q > 0), axis=1)  # a 0-probability category holds 0 votes
        comps = comps[ok]
        pmf = np.exp(gammaln(t + 1) - gammaln(comps + 1).sum(axis=1) + comps @ logq)
        top = np.sort(comps, axis=1)
        mg = top[:, -1] - top[:, -2]
        for n in range(t, n_max + 1):
            out[n, t] = pmf[mg <= n - t].sum()
    return out


def prefix_margins(labels: np.ndarray) -> np.ndarray:
    """margin(t) of every prefix, t = 0..n: labels [S, n] -> [S, n+1]."""
    onehot = labels[:, :, None] == np.arange(labels.max() + 2)
    counts = np.cumsum(onehot, axis=1)
    top = np.sort(counts, axis=2)
    return np.concatenate([np.zeros((len(labels), 1), int), top[:, :, -1] - top[:, :, -2]], 1)


def numpy_replay(margins: np.ndarray, n: int, wave: int) -> np.ndarray:
    """Completions paid by the arm (n, wave) given prefix margins [S, >= n+1]: checks every
    wave boundary in turn (no use of monotonicity)."""
    paid = np.full(len(margins), n)
    running = np.ones(len(margins), dtype=bool)
    for t in range(wave, n, wave):
        stop = running & (margins[:, t] > n - t)
        paid[stop] = t
        running &= ~stop
    return paid


def stop_index(labels: np.ndarray, n: int, wave: int) -> np.ndarray:
    """Completions paid by the arm (n, wave) when its answers are the first n of each row of
    ``labels`` [B, >= n]: the rows laid end to end, one block each, replayed by stop_points."""
    b, width = labels.shape
    n_cat = int(labels.max()) + 1
    flat = labels.reshape(-1)
    prefix = np.zeros((n_cat, flat.size + 1), dtype=np.int32)
    np.cumsum(flat == np.arange(n_cat)[:, None], axis=1, out=prefix[:, 1:])
    return stop_points(prefix, np.arange(b) * width, np.full(b, n), wave)


def winners(labels: np.ndarray, upto: np.ndarray, n_cat: int) -> np.ndarray:
    """Winner set (bool [S, L]) of the first upto[s] answers of each row."""
    keep = np.arange(labels.shape[1]) < upto[:, None]
    counts = np.stack([((labels == c) & keep).sum(1) for c in range(n_cat)], axis=1)
    return counts == counts.max(axis=1, keepdims=True)


# --- brute force on small cases -----------------------------------------------------------------

SMALL = [
    [0.5, 0.5],
    [0.7, 0.3],
    [1.0, 0.0],
    [0.2, 0.5, 0.3],
    [0.6, 0.4, 0.0],
    [1 / 3, 1 / 3, 1 / 3],
    [0.1, 0.1, 0.8],
]


@pytest.mark.parametrize("q", SMALL)
def test_undecided_table_matches_every_sequence(q: list[float]) -> None:
    np.testing.assert_allclose(undecided_probability([q], 6)[0], brute_undecided(q, 6),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("q", SMALL)
@pytest.mark.parametrize("wave", [1, 2, 3, 6])
def test_expected_cost_matches_every_sequence(q: list[float], wave: int) -> None:
    paid, waves = expected_paid([q], 6, wave)
    for n in range(1, 7):
        want_paid, want_waves = brute_expected(q, n, wave)
        assert paid[0, n - 1] == pytest.approx(want_paid, abs=1e-12)
        assert waves[0, n - 1] == pytest.approx(want_waves, abs=1e-12)


def test_decided_stays_decided_on_every_sequence() -> None:
    # the monotonicity behind P(another wave after t) = P(undecided at t)
    for n in range(1, 8):
        for seq in itertools.product(range(3), repeat=n):
            decided = [margin([seq[:t].count(i) for i in range(3)]) > n - t
                       for t in range(n + 1)]
            first = decided.index(True) if True in decided else n + 1
            assert all(decided[first:])


@pytest.mark.parametrize("q", [[0.05, 0.15, 0.3, 0.5], [0.001, 0.0, 0.299, 0.7],
                               [0.25, 0.25, 0.25, 0.25]])
def test_undecided_table_matches_every_composition_at_larger_n(q: list[float]) -> None:
    want = composition_undecided(np.array(q), 24)
    np.testing.assert_allclose(undecided_probability([q], 24)[0], want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("p", [0.5, 0.62, 0.9, 0.999])
def test_two_categories_match_the_binomial_closed_form_up_to_64(p: float) -> None:
    # margin(t) = |2c - t| with c ~ Binomial(t, p)
    n_max = 64
    got = undecided_probability([[p, 1 - p]], n_max)[0]
    for n in range(n_max + 1):
        for t in range(n + 1):
            c = np.arange(t + 1)
            want = binom.pmf(c, t, p)[np.abs(2 * c - t) <= n - t].sum()
            assert got[n, t] == pytest.approx(want, abs=1e-12)
        assert not got[n, n + 1:].any()  # t > N is never reached


# --- hand-worked examples -----------------------------------------------------------------------


def test_a_sure_answer_by_hand() -> None:
    # q = (1, 0): after t answers the margin is t, decided iff t > N - t.
    # wave 1: N=1 stops at t=N; N=2: t=1 gives 1 > 1? no -> 2; N=4: t=2 gives 2 > 2? no,
    # t=3 gives 3 > 1 -> 3; N=5: t=2 gives 2 > 3? no, t=3 gives 3 > 2 -> 3.
    paid, waves = expected_paid([[1.0, 0.0]], 8, 1)
    np.testing.assert_array_equal(paid[0], [1, 2, 2, 3, 3, 4, 4, 5])
    np.testing.assert_array_equal(waves[0], [1, 2, 2, 3, 3, 4, 4, 5])
    # wave 2: N=3: t=2 gives 2 > 1 -> 2 (1 wave); N=5: t=2 gives 2 > 3? no, t=4 gives 4 > 1
    # -> 4 (2 waves); N=6: t=2 no, t=4 gives 4 > 2 -> 4 (2 waves)
    paid, waves = expected_paid([[1.0, 0.0]], 6, 2)
    np.testing.assert_array_equal(paid[0], [1, 2, 2, 4, 4, 4])
    np.testing.assert_array_equal(waves[0], [1, 1, 1, 2, 2, 2])
    # the closed form of the table: undecided iff 2t <= N
    n, t = np.meshgrid(np.arange(21), np.arange(21), indexing="ij")
    np.testing.assert_array_equal(undecided_probability([[0.0, 1.0]], 20)[0],
                                  (2 * t <= n) & (t <= n))


def test_a_larger_wave_can_pay_more_and_less() -> None:
    # q = (1, 0), N = 7. wave 3: t=3 gives 3 > 4? no, t=6 gives 6 > 1 -> 6. wave 4: t=4 gives
    # 4 > 3 -> 4. So paid is not monotone in the wave size; wave 1 pays 4 (t=4: 4 > 3).
    paid = {w: expected_paid([[1.0, 0.0]], 7, w)[0][0, 6] for w in (1, 3, 4, 7)}
    assert paid == {1: 4.0, 3: 6.0, 4: 4.0, 7: 7.0}


def test_a_fair_coin_by_hand() -> None:
    # N = 3, wave 1: t=1 gives margin 1 > 2? no; t=2 gives margin 2 > 1 when both agree
    # (1/2), else margin 0 -> the third answer. E[paid] = E[waves] = 1 + 1 + 1/2 = 2.5.
    paid, waves = expected_paid([[0.5, 0.5]], 4, 1)
    assert (paid[0, 2], waves[0, 2]) == (2.5, 2.5)
    # N = 4, wave 1: t=2 gives margin <= 2, never > 2; t=3 gives margin 3 (all agree, 1/4)
    # > 1, else margin 1 -> 4. E[paid] = 3 + 3/4.
    assert paid[0, 3] == 3.75
    # N = 3, wave 2: one wave of 2, then a wave of 1 with probability 1/2: paid 2.5, waves 1.5
    paid, waves = expected_paid([[0.5, 0.5]], 3, 2)
    assert (paid[0, 2], waves[0, 2]) == (2.5, 1.5)
    # the table for N = 4: P(margin(t) <= 4 - t) = 1, 1, 1, 3/4, then a tie 2-2: 6/16
    np.testing.assert_allclose(undecided_probability([[0.5, 0.5]], 4)[0, 4],
                               [1, 1, 1, 0.75, 0.375], atol=1e-15)


def test_margin_equal_to_remaining_is_not_decided() -> None:
    # answers 0, 0, 1, 1 with N = 4: after 2 the margin 2 equals the 2 to come; stopping there
    # would return {0}, but all four answers tie {0, 1}
    labels = np.array([[0, 0, 1, 1]])
    assert stop_index(labels, 4, 1)[0] == 4
    assert stop_index(labels, 4, 2)[0] == 4
    # answers 0, 0, 0: after 3 the margin 3 > 1 to come, decided
    assert stop_index(np.array([[0, 0, 0, 1]]), 4, 1)[0] == 3


# --- properties ---------------------------------------------------------------------------------


def test_bounds_and_wave_size_properties() -> None:
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.full(4, 0.7), size=40)
    n_max = 20
    n = np.arange(1, n_max + 1)
    paid = {w: expected_paid(q, n_max, w) for w in (1, 2, 3, 4, 6, 12, 20, 50)}
    for w, (p, waves) in paid.items():
        # margin(t) <= t, so deciding needs t > N - t: at least floor(N/2) + 1 answers
        assert np.all(p <= n + 1e-9) and np.all(p >= n // 2 + 1 - 1e-9)
        assert np.all(waves >= 1 - 1e-9) and np.all(waves <= -(-n // w) + 1e-9)
        assert np.all(p >= paid[1][0] - 1e-9)  # wave 1 notices the decision first
        one_wave = n <= w  # wave >= N: one wave of N
        np.testing.assert_array_equal(p[:, one_wave], np.tile(n[one_wave], (40, 1)))
        np.testing.assert_array_equal(waves[:, one_wave], 1.0)
    # a wave that divides another notices no later (a multiple of w that is >= the first
    # decided t is >= the first multiple of w past it)
    for w, w2 in [(1, 2), (2, 4), (2, 6), (3, 6), (4, 12), (6, 12)]:
        assert np.all(paid[w][0] <= paid[w2][0] + 1e-9)


def test_rows_are_vectorized_and_category_order_does_not_matter() -> None:
    rng = np.random.default_rng(2)
    q = rng.dirichlet(np.ones(3), size=(2, 5))
    q[0, 0] = [0.5, 0.5, 0.0]
    q[1, 4] = q[0, 2][::-1]  # a repeated row, categories reversed
    table = undecided_probability(q, 10)
    assert table.shape == (2, 5, 11, 11)
    one = np.stack([undecided_probability(row[None], 10)[0] for row in q.reshape(-1, 3)])
    np.testing.assert_allclose(table.reshape(-1, 11, 11), one, atol=1e-15)
    np.testing.assert_allclose(table[1, 4], table[0, 2], atol=1e-15)
    paid, waves = expected_paid(q, 10, 3)
    assert paid.shape == waves.shape == (2, 5, 10)
    np.testing.assert_allclose((paid, waves), paid_from_undecided(table, 3), atol=1e-12)


# --- the answer is unchanged --------------------------------------------------------------------


@pytest.mark.parametrize("wave", [1, 3])
def test_stopped_prefix_has_the_winners_of_all_answers(wave: int) -> None:
    rng = np.random.default_rng(3)
    n, n_cat, gold = 15, 3, 1
    for q in ([0.45, 0.35, 0.2], [0.4, 0.4, 0.2], [0.9, 0.05, 0.05]):
        labels = rng.choice(n_cat, size=(20_000, n), p=q)
        stop = stop_index(labels, n, wave)
        assert stop.min() >= n // 2 + 1 and stop.max() <= n and stop.mean() < n
        full = winners(labels, np.full(len(labels), n), n_cat)
        stopped = winners(labels, stop, n_cat)
        np.testing.assert_array_equal(stopped, full)
        # hence the MV credit 1(gold wins) / #winners is unchanged
        np.testing.assert_array_equal(stopped[:, gold] / stopped.sum(1),
                                      full[:, gold] / full.sum(1))


@pytest.mark.parametrize("wave", [1, 2, 3, 4, 10, 15])
def test_stop_points_match_a_plain_replay(wave: int) -> None:
    rng = np.random.default_rng(4)
    labels = rng.choice(3, size=(300, 12), p=[0.5, 0.3, 0.2])
    labels[:5] = 0  # unanimous rows stop as early as allowed
    for n in range(1, 13):
        got = stop_index(labels, n, wave)
        assert got.tolist() == [replay(list(row), n, wave, 3)[0] for row in labels]


def test_stop_points_replay_blocks_of_every_size_in_one_batch() -> None:
    # blocks of sizes 1..6 anywhere in one answer sequence, all at once, as the Q table asks
    rng = np.random.default_rng(6)
    answers = rng.choice(3, size=200, p=[0.6, 0.3, 0.1])
    prefix = np.zeros((3, answers.size + 1), dtype=np.int32)
    np.cumsum(answers == np.arange(3)[:, None], axis=1, out=prefix[:, 1:])
    size = rng.integers(1, 7, 150)
    start = rng.integers(0, answers.size - size + 1)
    for wave in (1, 2, 4):
        got = stop_points(prefix, start, size, wave)
        want = [replay(list(answers[s0:s0 + n]), int(n), wave, 3)[0]
                for s0, n in zip(start, size, strict=True)]
        assert got.tolist() == want
    assert stop_points(prefix, start[:0], size[:0], 1).shape == (0,)


def test_the_decided_rule_by_hand() -> None:
    # margin = leader - runner-up; decided iff margin > remaining
    assert vote_margin([3, 1, 0]) == 2 and vote_margin([2, 2]) == 0
    assert vote_margin([4]) == 4 and vote_margin([]) == 0  # no runner-up: it holds 0
    assert vote_decided([3, 1], 1) and not vote_decided([3, 1], 2)  # 2 > 1; 2 > 2 is not
    assert not vote_decided([], 0) and vote_decided([1], 0)
    # vectorized over rows, along any axis, with a remaining count per row
    counts = np.array([[3, 0, 1], [2, 2, 0], [5, 1, 1]])
    np.testing.assert_array_equal(vote_margin(counts), [2, 0, 4])
    np.testing.assert_array_equal(vote_decided(counts, [1, 0, 4]), [True, False, False])
    np.testing.assert_array_equal(vote_decided(counts.T, 1, axis=0), [True, False, True])


def test_monte_carlo_on_math_answer_distributions() -> None:
    env = get_environment("math")
    assert isinstance(env, MVEnvironment)
    n_max = env.problem.n_max
    flat = env.probs.reshape(-1, env.probs.shape[-1])
    top = flat.max(axis=1)
    # rows from unanimous to split: the leader's probability near 1, 0.8, 0.6, 0.45
    picks = [int(np.argmin(np.abs(top - x))) for x in (0.99, 0.8, 0.6, 0.45)]
    q = flat[picks]
    rng = np.random.default_rng(5)
    sims = 20_000
    for wave in (1, 4):
        paid, _ = expected_paid(q, n_max, wave)
        for row, qr in enumerate(q):
            labels = rng.choice(qr.size, size=(sims, n_max), p=qr / qr.sum())
            margins = prefix_margins(labels)
            for n in range(1, n_max + 1):
                sim = numpy_replay(margins, n, wave)
                se = sim.std() / np.sqrt(sims)
                # + n / sims: an outcome rarer than 1 in sims may go unseen (se 0 then)
                assert abs(sim.mean() - paid[row, n - 1]) <= 4 * se + n / sims, (wave, row, n)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_says_what_to_do() -> None:
    q = [[0.6, 0.4]]
    labels = np.array([[0, 1, 1]])
    with pytest.raises(InputError, match="wave must be at least 1"):
        expected_paid(q, 4, 0)
    with pytest.raises(InputError, match="wave must be an integer"):
        expected_paid(q, 4, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="n_max must be at least 1"):
        undecided_probability(q, 0)
    with pytest.raises(InputError, match="n_max must be at most"):
        undecided_probability(q, 5000)
    with pytest.raises(InputError, match="sums to 0.9.*normalize"):
        expected_paid([[0.5, 0.4]], 4, 1)
    with pytest.raises(InputError, match="probabilities in"):
        undecided_probability([[1.2, -0.2]], 4)
    with pytest.raises(InputError, match="wave must be at least 1"):
        stop_index(labels, 3, -1)
    with pytest.raises(InputError, match="undecided must be"):
        paid_from_undecided(np.ones((3, 4)), 1)


def test_leader_probability_is_the_beta_tail_by_the_binomial_identity() -> None:
    """For integer a, b: P(Beta(a, b) > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1)."""
    from math import comb

    from iapo.stopping import leader_probability

    for v1 in range(0, 12):
        for v2 in range(0, v1 + 1):
            a, b = v1 + 1, v2 + 1
            m = a + b - 1
            exact = sum(comb(m, k) for k in range(a)) / 2**m
            assert leader_probability(v1, v2) == pytest.approx(exact, abs=1e-12)
    assert leader_probability(3, 0) == pytest.approx(1 - 0.5**4)  # Beta(4, 1): 1 - x^4
    assert leader_probability(4, 4) == pytest.approx(0.5)  # symmetric
    np.testing.assert_allclose(leader_probability([5, 1], [0, 1]), [1 - 0.5**6, 0.5])
