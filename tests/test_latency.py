"""The latency of majority votes that stop once decided (iapo.latency): the maximum of
discrete times by hand, every answer sequence and every time assignment enumerated on small
cases, and Monte Carlo on real MATH rows."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from brute import brute_latency, brute_law
from iapo.envs import get_environment
from iapo.errors import InputError
from iapo.latency import CompletionTimes, all_times, expected_latency, latency_quantile


def test_longest_of_w_by_hand() -> None:
    """Times 1 s or 3 s, equally likely: the longest of two is 1 s only when both are
    (1/4), so 1/4 x 1 + 3/4 x 3 = 2.5 s; of three, 1/8 x 1 + 7/8 x 3 = 2.75 s."""
    t = CompletionTimes.from_samples([1.0, 3.0])
    assert t.max_of(0) == 0.0 and t.max_of(1) == pytest.approx(2.0)
    assert t.max_of(2) == pytest.approx(2.5) and t.max_of(3) == pytest.approx(2.75)
    # all N sent at once with no limit: the longest of N; one at a time: N x the mean
    assert all_times(t, 3).tolist() == pytest.approx([0.0, 2.0, 2.5, 2.75])
    assert all_times(t, 3, 1).tolist() == pytest.approx([0.0, 2.0, 4.0, 6.0])
    tok = CompletionTimes.from_tokens([10, 30, 30], overhead=0.5, per_token=0.1)
    assert tok.values.tolist() == pytest.approx([1.5, 3.5])
    assert tok.probs.tolist() == pytest.approx([1 / 3, 2 / 3])


def quantile_of(law: dict[float, float], quantile: float) -> float:
    """The smallest value whose probability of not being exceeded reaches ``quantile``."""
    reach = 0.0
    for v in sorted(law):
        reach += law[v]
        if reach >= quantile - 1e-12:
            return v
    raise AssertionError("a law sums to 1")


@pytest.mark.parametrize("q", [[0.6, 0.4], [0.5, 0.3, 0.2], [0.25, 0.25, 0.5]])
def test_expected_latency_equals_enumeration(q: list[float]) -> None:
    """N = 1..4, every wave width and a concurrency of 2 or none, against
    :func:`brute_latency`."""
    values, probs = [1.0, 2.5], [0.7, 0.3]
    times = CompletionTimes(np.array(values), np.array(probs))
    for wave in range(1, 5):
        for conc in (None, 2):
            got = expected_latency(np.array(q), 4, wave, times, conc)
            want = [brute_latency(q, n, wave, values, probs, conc) for n in range(1, 5)]
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_decided_wave_of_n_stops_at_the_answer_that_decides_it() -> None:
    """Times 1 s or 3 s, equally likely; every answer the same, so the vote of N is decided
    by the answer floor(N/2) + 1 back. Of three, the shortest is 1 s unless all are 3 s
    (7/8 x 1 + 1/8 x 3 = 1.25 s), the second 1 s when at least two are (1/2): 2 s, the
    longest 2.75 s. So one wave of N = 1, 2, 3 answers after 2, 2.5 and 2 s, while the
    paper's arm, which pays all N, waits for the longest: 2, 2.5 and 2.75 s."""
    from iapo.latency import LatencyModel

    times = CompletionTimes.from_samples([1.0, 3.0])
    assert times.order_statistics(3).tolist() == pytest.approx([1.25, 2.0, 2.75])
    assert times.order_statistics(1).tolist() == pytest.approx([2.0])
    assert expected_latency(np.array([1.0]), 3, 3, times).tolist() == pytest.approx(
        [2.0, 2.5, 2.0])
    assert LatencyModel((times,)).one_wave(3).tolist() == [pytest.approx([2.0, 2.5, 2.75])]
    # a concurrency of 1 runs the wave one completion at a time: decided after 1, 2 and 2
    assert expected_latency(np.array([1.0]), 3, 3, times, 1).tolist() == pytest.approx(
        [2.0, 4.0, 4.0])


def test_expected_latency_matches_monte_carlo_on_math_rows() -> None:
    """Five MATH rows of one prompt, N = 9, waves of 3, times from skewed token counts:
    the exact value lies within 3 standard errors of 40,000 simulated requests per row, drawn
    answer by answer and time by time, the vote checked as each completion comes back."""
    env = get_environment("math")
    rows = env.probs[3, :5]  # [5, L]
    times = CompletionTimes.from_tokens([20, 40, 40, 80, 300], overhead=0.3, per_token=0.01)
    sims, n, wave = 40_000, 9, 3
    exact = expected_latency(rows, n, wave, times)[:, n - 1]
    rng = np.random.default_rng(0)
    every = np.arange(sims)
    for row, want in zip(rows, exact, strict=True):
        answers = rng.choice(row.size, size=(sims, n), p=row / row.sum())  # [S, N]
        secs = rng.choice(times.values, size=(sims, n), p=times.probs)
        seconds, back = np.zeros(sims), 0
        counts = np.zeros((sims, row.size), dtype=np.int64)
        live = np.ones(sims, dtype=bool)
        for start in range(0, n, wave):
            order = start + np.argsort(secs[:, start: start + wave], axis=1, kind="stable")
            for i in order.T:  # the round's completions in the order they come back
                counts[every, answers[every, i]] += 1
                back += 1
                top = np.sort(counts, axis=1)[:, ::-1]
                now = live & (top[:, 0] - top[:, 1] > n - back)
                seconds[now] += secs[now, i[now]]
                live &= ~now
            seconds[live] += secs[live, start: start + wave].max(axis=1)
        sem = seconds.std(ddof=1) / math.sqrt(sims)
        assert abs(seconds.mean() - want) <= 3 * sem, (seconds.mean(), want, sem)


def test_bad_times_are_refused() -> None:
    for values, probs in (([2.0, 1.0], [0.5, 0.5]), ([1.0, 2.0], [0.5, 0.6]),
                          ([-1.0], [1.0]), ([1.0, 2.0], [1.0])):
        with pytest.raises(InputError):
            CompletionTimes(np.array(values), np.array(probs))
    with pytest.raises(InputError, match="concurrency 0"):
        all_times(CompletionTimes.from_samples([1.0]), 3, 0)


def test_a_bad_table_or_width_is_refused() -> None:
    from iapo.latency import answer_times, latency_from_undecided

    with pytest.raises(InputError, match="width 0 and n_max 3 must be >= 1"):
        answer_times(CompletionTimes.from_samples([1.0]), 3, 0)
    with pytest.raises(InputError, match="undecided"):
        latency_from_undecided(np.ones((3, 4)), np.ones((3, 4)))
    with pytest.raises(InputError, match="same last two axes"):
        latency_from_undecided(np.ones((5, 5)), np.zeros((4, 4)))
    with pytest.raises(InputError, match="undecided"):
        latency_from_undecided(np.ones(5), np.zeros(5))


@pytest.mark.parametrize("quantile", [0.5, 0.8, 0.95])
def test_latency_quantile_equals_enumeration(quantile: float) -> None:
    """Times on the grid (1 s and 2.5 s, step 0.5 s), two queries asked equally often, N =
    4, every wave and a concurrency of 2 or none: the quantile of the mixture of the two
    enumerated laws, exactly."""
    values, probs = [1.0, 2.5], [0.7, 0.3]
    times = CompletionTimes(np.array(values), np.array(probs))
    rows = [[0.6, 0.4], [0.5, 0.3, 0.2]]
    for wave in range(1, 5):
        for conc in (None, 2):
            mixed: dict[float, float] = {}
            for q in rows:
                for v, p in brute_law(q, 4, wave, values, probs, conc).items():
                    mixed[v] = mixed.get(v, 0.0) + p / 2
            padded = np.array([[0.6, 0.4, 0.0], [0.5, 0.3, 0.2]])
            got = latency_quantile(padded, 4, wave, times, quantile, conc, step=0.5)
            assert got == pytest.approx(quantile_of(mixed, quantile)), (wave, conc)


def test_latency_quantile_is_within_its_stated_error_off_the_grid() -> None:
    """Times 1.0 s and 2.3 s on a grid of 0.5 s (2.3 rounds to 2.5): the answer is within
    rounds x step / 2 of the enumerated quantile, rounds being at most N = 4 here."""
    values, probs = [1.0, 2.3], [0.6, 0.4]
    times = CompletionTimes(np.array(values), np.array(probs))
    for wave in (1, 2, 4):
        want = quantile_of(brute_law([0.55, 0.45], 4, wave, values, probs, None), 0.95)
        got = latency_quantile(np.array([0.55, 0.45]), 4, wave, times, 0.95, step=0.5)
        assert abs(got - want) <= 4 * 0.5 / 2 + 1e-9
    with pytest.raises(InputError, match="quantile"):
        latency_quantile(np.array([0.5, 0.5]), 4, 1, times, 1.0)


def test_no_answer_never_decides_a_vote_in_latency_either() -> None:
    """Under the abstain rule "no answer" (category 0 here) never counts toward a decision:
    expected latency and its quantile against the enumeration that leaves it out; the
    default quantile is the 95th."""
    values, probs = [1.0, 2.5], [0.7, 0.3]
    times = CompletionTimes(np.array(values), np.array(probs))
    q = [0.6, 0.3, 0.1]
    for wave in (1, 2, 3):
        law = brute_law(q, 4, wave, values, probs, None, abstain=0)
        want = sum(p * v for v, p in law.items())
        got = expected_latency(np.array(q), 4, wave, times, no_answer=0)[3]
        assert got == pytest.approx(want, rel=1e-12)
        assert got != pytest.approx(expected_latency(np.array(q), 4, wave, times)[3])
        quantile = latency_quantile(np.array(q), 4, wave, times, step=0.5, no_answer=0)
        assert quantile == pytest.approx(quantile_of(law, 0.95))
    # mostly "no answer": the vote rule decides on it after three, the abstain rule never
    sure = [0.9, 0.1]
    law = brute_law(sure, 4, 1, values, probs, None, abstain=0)
    median = latency_quantile(np.array(sure), 4, 1, times, 0.5, step=0.5, no_answer=0)
    assert median == pytest.approx(quantile_of(law, 0.5)) == 5.5
    assert latency_quantile(np.array(sure), 4, 1, times, 0.5, step=0.5) == 4.5


def test_a_quantile_reached_exactly_on_a_value_is_that_value() -> None:
    """One completion of 1 s (probability 0.95) or 3 s: its 95th percentile is 1 s, the
    smallest value whose probability of not being exceeded reaches 0.95."""
    times = CompletionTimes(np.array([1.0, 3.0]), np.array([0.95, 0.05]))
    assert latency_quantile(np.array([1.0]), 1, 1, times, 0.95, step=1.0) == 1.0
    assert latency_quantile(np.array([1.0]), 1, 1, times, 0.96, step=1.0) == 3.0
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(InputError, match="strictly between 0 and 1"):
            latency_quantile(np.array([1.0]), 1, 1, times, bad)
    with pytest.raises(InputError, match="step 0 must be > 0"):
        latency_quantile(np.array([1.0]), 1, 1, times, 0.5, step=0)


def test_the_edges_of_completion_times() -> None:
    """0 s, a probability of 0, no overhead and no per-token time are allowed; a repeated
    value, a negative time or a negative part is not, and each says what to do."""
    times = CompletionTimes(np.array([0.0, 2.0]), np.array([1.0, 0.0]))
    assert times.max_of(3) == 0.0
    assert CompletionTimes.from_tokens([10], 0.0, 0.5).values.tolist() == [5.0]
    assert CompletionTimes.from_tokens([10], 0.5, 0.0).values.tolist() == [0.5]
    with pytest.raises(InputError, match="distinct and ascending"):
        CompletionTimes(np.array([1.0, 1.0]), np.array([0.5, 0.5]))
    with pytest.raises(InputError, match="one shape"):
        CompletionTimes(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(InputError, match="sum to 1"):
        CompletionTimes(np.array([1.0, 2.0]), np.array([-0.5, 1.5]))
    for overhead, per_token in ((-0.1, 0.1), (0.1, -0.1)):
        with pytest.raises(InputError, match=">= 0 seconds"):
            CompletionTimes.from_tokens([10], overhead, per_token)


def test_a_model_with_a_concurrency_of_one_or_two() -> None:
    """Times 1 s or 3 s, equally likely. A concurrency of 1 runs a wave one completion
    after another (w x 2 s); of 2, in rounds of two (2.5 s each) and the rest; the model
    carries its concurrency into every prompt's wave times; 0 is refused."""
    from iapo.latency import LatencyModel

    t = CompletionTimes.from_samples([1.0, 3.0])
    one = LatencyModel((t, t), concurrency=1)
    assert one.all_times(3).tolist() == [[0.0, 2.0, 4.0, 6.0]] * 2
    two = LatencyModel((t,), concurrency=2)
    assert two.all_times(2).tolist() == [[0.0, 2.0, 2.5]]  # no more than run at once
    assert two.one_wave(3)[0, :2].tolist() == [2.0, 2.5]
    assert LatencyModel((t,)).one_wave(3).tolist() == [[2.0, 2.5, 2.75]]
    with pytest.raises(InputError, match="concurrency 0 must be >= 1"):
        LatencyModel((t,), concurrency=0)
    with pytest.raises(InputError, match="every prompt"):
        LatencyModel(())
    assert LatencyModel([t, t]).times == (t, t)  # a list is kept as a tuple


def test_latency_models_are_equal_exactly_when_their_parts_are() -> None:
    from iapo.latency import LatencyModel

    a = CompletionTimes.from_samples([1.0, 3.0])
    b = CompletionTimes(np.array([1.0, 3.0]), np.array([0.25, 0.75]))
    c = CompletionTimes.from_samples([1.0, 4.0])
    model = LatencyModel((a, a), 2)
    assert model == LatencyModel((CompletionTimes.from_samples([3.0, 1.0]), a), 2)
    for other in (LatencyModel((a, a), 3), LatencyModel((a,), 2), LatencyModel((a, b), 2),
                  LatencyModel((a, c), 2), LatencyModel((a, a))):
        assert model != other
    assert model != "a model"


def test_synthetic_parameters_round_trip_and_refuse_bad_values() -> None:
    """What a model describes parses back to the same parameters (concurrency or none);
    bad costs and bad parameters are refused."""
    from iapo.latency import SyntheticLatency

    for params in (SyntheticLatency(0.25, 0.0125, 1234.5, 0.7, 4), SyntheticLatency()):
        text = params.describe().removeprefix("synthetic: ")
        assert SyntheticLatency.parse(text) == params
    assert SyntheticLatency.parse("concurrency=0.0").concurrency is None
    assert SyntheticLatency.parse("concurrency=0").concurrency is None
    assert SyntheticLatency.parse("concurrency=1").concurrency == 1
    for bad in ([[0.01]], [float("nan")], [-0.01]):
        with pytest.raises(InputError, match="prompt costs"):
            SyntheticLatency().model(bad)
    with pytest.raises(InputError, match="concurrency 0 must be >= 1"):
        SyntheticLatency(concurrency=0)
    with pytest.raises(InputError, match="overhead"):
        SyntheticLatency(overhead=float("inf"))


def brute_pipeline(n: int, c: int, values: list[float], probs: list[float]
                   ) -> dict[float, float]:
    """The law of the time until all n completions sent at once are back, at most c running,
    each started on the slot free first: every time assignment."""
    law: dict[float, float] = {}
    for times in itertools.product(range(len(values)), repeat=n):
        free = [0.0] * c
        for k in times:
            i = free.index(min(free))
            free[i] += values[k]
        key = round(max(free), 9)
        law[key] = law.get(key, 0.0) + math.prod(probs[k] for k in times)
    return law


def test_the_papers_arm_is_drawn_as_the_client_draws_it() -> None:
    """All N sent at once, at most c running, each started as soon as one ends. Times 1 s or
    3 s, equally likely, N = 3, c = 2: the third starts when the first two's shorter ends, so
    2 s (1/8), 3 s (1/4), 4 s (1/2) or 6 s (1/8), 3.75 s on average (rounds of 2 then 1 would
    take 4.5 s). The Monte Carlo estimate lies within 3 standard errors of the enumerated mean
    for every N <= 5 and c = 2, 3; its quantiles are the enumerated ones here, whatever the
    answers."""
    values, probs = [1.0, 3.0], [0.5, 0.5]
    times = CompletionTimes.from_samples(values)
    assert brute_pipeline(3, 2, values, probs) == pytest.approx({2.0: 0.125, 3.0: 0.25,
                                                                 4.0: 0.5, 6.0: 0.125})
    for c in (2, 3):
        got = all_times(times, 5, c)
        for n in range(1, 6):
            law = brute_pipeline(n, c, values, probs)
            mean = sum(v * p for v, p in law.items())
            sd = math.sqrt(sum((v - mean) ** 2 * p for v, p in law.items()))
            assert abs(got[n] - mean) <= 3 * sd / math.sqrt(20_000) + 1e-12, (c, n)
    for rows in (np.array([1.0]), np.array([[0.5, 0.5], [0.9, 0.1]])):
        assert [latency_quantile(rows, 3, None, times, q, 2, step=1.0)
                for q in (0.1, 0.5, 0.95)] == [2.0, 4.0, 6.0]
        # no limit: the longest of three, 1 s only if all three are (1/8)
        assert latency_quantile(rows, 3, None, times, 0.5, step=1.0) == 3.0
        assert latency_quantile(rows, 3, None, times, 0.1, step=1.0) == 1.0


def test_a_model_fitted_to_exact_times_recovers_overhead_and_per_token_time() -> None:
    """Times exactly 0.4 + 0.02 x tokens: the fit gives back 0.4 s and 0.02 s a token, each
    prompt's times are its own token counts at those (each equally likely), and the model
    keeps the concurrency and says where it came from."""
    from iapo.latency import LatencyModel

    tokens = [[10, 20, 20], [5, 50]]
    seconds = [[0.4 + 0.02 * t for t in row] for row in tokens]
    model = LatencyModel.fit(tokens, seconds, concurrency=2)
    assert model.concurrency == 2
    assert model.description == "fitted: overhead=0.4,per_token=0.02,prefill=0,completions=5"
    assert model.prefill == 0.0
    assert model.times[0].values.tolist() == pytest.approx([0.6, 0.8])
    assert model.times[0].probs.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert model.times[1].values.tolist() == pytest.approx([0.5, 1.4])


def test_a_fit_never_gives_a_negative_part() -> None:
    """Times that fall with tokens: the per-token time is 0 (not negative) and the overhead
    the mean time, the least-squares fit under the constraint; no overhead: 0 s."""
    from iapo.latency import LatencyModel

    model = LatencyModel.fit([[10, 30]], [[2.0, 1.0]])
    assert model.description == "fitted: overhead=1.5,per_token=0,prefill=0,completions=2"
    model = LatencyModel.fit([[10, 30]], [[0.2, 0.6]])
    assert model.times[0].values.tolist() == pytest.approx([0.2, 0.6])
    assert model.description.startswith("fitted: overhead=0,")
    for tokens, seconds in (([[1]], [[1.0, 2.0]]), ([[]], [[]]), ([], []),
                            ([[1]], [[-1.0]]), ([[1]], [[float("nan")]])):
        with pytest.raises(InputError):
            LatencyModel.fit(tokens, seconds)


def test_a_prefill_is_fitted_apart_and_paid_once_per_request() -> None:
    """Times 0.3 + 0.01 x tokens, and 0.5 s more in a request's first round: the fit gives
    back all three. Every arm then waits the prefill once more than without it: the expected
    latency of every (N, W), the paper's arms and the quantiles, shifted by 0.5 s."""
    from iapo.latency import LatencyModel, latency_from_undecided
    from iapo.stopping import undecided_probability

    tokens = [[10, 20, 30, 40, 10, 20]]
    first = [[True, True, False, False, True, False]]
    seconds = [[0.3 + 0.01 * t + 0.5 * f for t, f in zip(tokens[0], first[0], strict=True)]]
    model = LatencyModel.fit(tokens, seconds, 2, first)
    assert model.prefill == pytest.approx(0.5) and model.to_dict()["prefill_seconds"] == 0.5
    assert model.description.startswith("fitted: overhead=0.3,per_token=0.01,prefill=0.5,")
    plain = LatencyModel(model.times, 2)
    table = undecided_probability(np.array([0.6, 0.4]), 4)
    for wave in (1, 2, 4):
        with_prefill = latency_from_undecided(table, model.steps(wave, 4)[0])
        without = latency_from_undecided(table, plain.steps(wave, 4)[0])
        np.testing.assert_allclose(with_prefill, without + 0.5, rtol=1e-12)
    np.testing.assert_allclose(model.one_wave(4), plain.one_wave(4) + 0.5)
    assert model != plain
    times = model.times[0]
    q = latency_quantile(np.array([0.6, 0.4]), 4, 2, times, 0.9, 2, prefill=0.5)
    assert q == latency_quantile(np.array([0.6, 0.4]), 4, 2, times, 0.9, 2) + 0.5
    with pytest.raises(InputError, match="prefill"):
        LatencyModel(model.times, prefill=-1.0)
