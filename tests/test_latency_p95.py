"""A limit on the 95th percentile of an arm's latency (a context's ``p95``, beyond the paper):
P(latency > L) of every arm against every answer sequence and time assignment, the limit
against the quantile it bounds, Q and the oracle's choice against a brute-force search, the
learners' model, the contexts grammar and ``/health``."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from brute import brute_law
from iapo.cli import main
from iapo.envs import get_environment
from iapo.envs.base import oracle_report
from iapo.latency import (
    CompletionTimes,
    LatencyModel,
    all_over,
    latency_from_undecided,
    latency_quantile,
    over_steps,
)
from iapo.problem import ProblemError, Stopping, parse_contexts
from iapo.stopping import undecided_probability
from test_latency_arms import N_MAX, PROBS, TIMES, WIDTHS, brute_q, tiny_env

HALVES = [0.5, 0.5]  # each of a prompt's two completion times equally likely


def brute_over(p: int, n: int, wave: int, limit: float, concurrency: int | None) -> float:
    """P(latency > limit) of the arm (p, n, wave) on a uniformly drawn query of the tiny
    environment, by enumeration (:func:`brute.brute_law`)."""
    return float(np.mean([sum(pr for s, pr in brute_law(list(PROBS[p, x]), n, wave,
                                                         list(TIMES[p]), HALVES,
                                                         concurrency).items()
                              if s > limit + 1e-9) for x in range(3)]))


def brute_p95(p: int, n: int, wave: int, concurrency: int | None = None) -> float:
    """The 95th percentile of that latency: the least value v with P(latency <= v) >= 0.95."""
    law: dict[float, float] = {}
    for x in range(3):
        for s, pr in brute_law(list(PROBS[p, x]), n, wave, list(TIMES[p]), HALVES,
                               concurrency).items():
            law[s] = law.get(s, 0.0) + pr / 3
    reach = 0.0
    for s in sorted(law):
        reach += law[s]
        if reach >= 0.95 - 1e-12:
            return s
    raise AssertionError("the law sums to less than 0.95")


@pytest.mark.parametrize("concurrency", [None, 2])
def test_over_a_limit_equals_enumeration(concurrency: int | None) -> None:
    """P(latency > L) of every arm (p, N, W) that stops once decided, from the queries' mean
    undecided table, equals every answer sequence and time assignment enumerated, at limits
    on, between and beyond the times' sums (1, 2.5, 3, 4 and 6 s)."""
    model = LatencyModel(tuple(CompletionTimes.from_samples(t) for t in TIMES), concurrency)
    undecided = np.stack([undecided_probability(PROBS[p], N_MAX).mean(axis=0)
                          for p in range(2)])
    for limit, wave in itertools.product((1.0, 2.5, 3.0, 4.0, 6.0), WIDTHS):
        over = model.over([math.inf, limit], N_MAX, wave, undecided)
        assert over is not None and over.shape == (2, 2, N_MAX)
        assert np.all(over[0] == 0)  # a context without a p95 limit
        for p, n in itertools.product(range(2), range(1, N_MAX + 1)):
            assert over[1, p, n - 1] == pytest.approx(
                brute_over(p, n, wave, limit, concurrency), abs=1e-12), (limit, wave, p, n)
    assert model.over([math.inf], N_MAX, 1, undecided) is None


def test_over_steps_and_the_exact_boundary_by_hand() -> None:
    """Edges worked out by hand: a limit below the prefill is exceeded by every arm; the
    steps of one prompt (no prefill, the default grid) against enumeration; and an arm that
    exceeds L with probability exactly 0.05 meets the p95 limit L, its p95 being 1 s (on
    the grid)."""
    times = CompletionTimes.from_samples(TIMES[0])  # 1 s and 3 s
    undecided = undecided_probability(PROBS[0], N_MAX).mean(axis=0)
    got = latency_from_undecided(undecided, over_steps(times, N_MAX, 1, 2.5))
    want = [brute_over(0, n, 1, 2.5, None) for n in range(1, N_MAX + 1)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    instant = CompletionTimes.from_samples([0.0, 2.0])  # even an instant answer waits
    below = over_steps(instant, N_MAX, 2, 0.5, prefill=1.0)
    np.testing.assert_allclose(latency_from_undecided(undecided, below), 1.0)
    np.testing.assert_allclose(all_over(instant, N_MAX, 0.5, prefill=1.0), 1.0)
    edge = CompletionTimes(np.array([1.0, 3.0]), np.array([0.95, 0.05]))
    model = LatencyModel((edge,))
    over = model.over([2.0], 1, None)
    assert over is not None and over[0, 0, 0] == pytest.approx(0.05)
    h = edge.mean() / 200  # 1 s lies half a step or less from the grid
    assert latency_quantile(np.ones((1, 1)), 1, None, edge) == pytest.approx(1.0, abs=h / 2)
    from iapo.utility import within_p95

    assert within_p95(over)[0, 0, 0]


def test_the_paper_arms_over_a_limit_by_hand() -> None:
    """Arms that pay all N and wait for all: P(longest of N > L) = 1 - F(L)^N without a
    concurrency limit; at a concurrency of 1, the sum of N times (by enumeration); a prefill
    shifts the limit."""
    times = CompletionTimes.from_samples([1.0, 3.0])
    np.testing.assert_allclose(all_over(times, 4, 2.0), 1 - 0.5 ** np.arange(1, 5))
    np.testing.assert_allclose(all_over(times, 4, 3.0), 0.0)
    for n in range(1, 5):
        want = np.mean([sum(s) > 5.0 for s in itertools.product((1.0, 3.0), repeat=n)])
        assert all_over(times, 4, 5.0, concurrency=1)[n - 1] == pytest.approx(want)
    np.testing.assert_allclose(all_over(times, 4, 3.5, prefill=1.5), 1 - 0.5 ** np.arange(1, 5))


@pytest.mark.parametrize("seed", range(6))
def test_the_limit_holds_exactly_where_the_quantile_is_within_it(seed: int) -> None:
    """An arm meets a p95 limit L (P(latency > L) <= 0.05) exactly when its reported p95
    (:func:`iapo.latency.latency_quantile`) is at most L: at L = the p95 itself, and one grid
    step below it, for times off the grid, every width, N below the table's N_max and at it,
    with and without a concurrency limit, the paper's arms (pipelined: the same seeded
    draws) included."""
    rng = np.random.default_rng(seed)
    times = CompletionTimes.from_samples(rng.gamma(4.0, 0.5, size=400))
    probs = rng.dirichlet(np.ones(3), size=4)
    n, h = 6, times.mean() / 200
    model = LatencyModel((times,), concurrency=[None, 2, 3][seed % 3], prefill=0.1 * seed)
    undecided = undecided_probability(probs, n).mean(axis=0)[None]
    for wave, arm in itertools.product((1, 2, 4, None), (4, n)):  # N below n_max, and at it
        p95 = latency_quantile(probs, arm, wave, times, 0.95, model.concurrency,
                               prefill=model.prefill)
        for limit, meets in ((p95, True), (p95 - h, False)):
            over = model.over([limit], n, wave, None if wave is None else undecided)
            assert over is not None
            assert (over[0, 0, arm - 1] <= 0.05 + 1e-12) == meets, (wave, arm, limit, p95)
    if model.concurrency is None:  # the same on a finer grid of the caller's step
        p95 = latency_quantile(probs, n, 2, times, 0.95, None, h / 2, prefill=model.prefill)
        for limit, meets in ((p95, True), (p95 - h / 2, False)):
            steps = over_steps(times, n, 2, limit, h / 2, model.prefill)
            assert (latency_from_undecided(undecided[0], steps)[n - 1] <= 0.05 + 1e-12) == meets


def test_the_p95_of_all_n_at_once_by_hand() -> None:
    """The paper's arm without a concurrency limit waits for the longest of N: its p95 is the
    least grid value v (times rounded to the grid) with F(v)^N >= 0.95, worked out here on
    400 times; a prefill shifts every quantile by itself, pipelined arms' included."""
    rng = np.random.default_rng(11)
    samples = rng.gamma(4.0, 0.5, size=400)
    times = CompletionTimes.from_samples(samples)
    h = times.mean() / 200
    grid = np.sort(np.rint(samples / h))  # each sample equally likely
    for n in (1, 3, 6):
        reach = (np.arange(1, 401) / 400) ** n  # F^N at each sorted sample
        want = grid[np.argmax(reach >= 0.95 - 1e-12)] * h
        assert latency_quantile(np.ones((1, 1)), n, None, times) == pytest.approx(want)
    for n in (2, 4):  # one at a time: the sum of N times, exact on the grid (not drawn)
        law = np.bincount(np.rint(samples / h).astype(int)) / 400
        total = law
        for _ in range(n - 1):
            total = np.convolve(total, law)
        want = np.argmax(np.cumsum(total) >= 0.95 - 1e-12) * h
        assert latency_quantile(np.ones((1, 1)), n, None, times, concurrency=1) == \
            pytest.approx(want)
    # as many running as sent: the longest of them, exact (not drawn)
    reach = (np.arange(1, 401) / 400) ** 4
    assert latency_quantile(np.ones((1, 1)), 4, None, times, concurrency=4) == \
        pytest.approx(grid[np.argmax(reach >= 0.95 - 1e-12)] * h)
    probs = rng.dirichlet(np.ones(3), size=3)
    for wave, concurrency in ((None, None), (None, 2), (1, None), (2, 2)):
        base = latency_quantile(probs, 5, wave, times, 0.95, concurrency)
        assert latency_quantile(probs, 5, wave, times, 0.95, concurrency, prefill=1.5) == \
            pytest.approx(base + 1.5)


def test_q_with_a_p95_limit_equals_enumeration() -> None:
    """Q(c, p, N, W) of a context with a p95 limit is the Q of the same context without it,
    and -inf exactly where the arm's p95 (by enumeration) exceeds the limit; a limit that
    some arms meet and some do not."""
    env = tiny_env().with_contexts(["budget=low", "budget=low,p95=3.5"]).with_stopping(
        Stopping("decided", 1, WIDTHS))
    want, _ = brute_q()  # context 0 of CONTEXTS is budget=low
    got = env.width_q()
    np.testing.assert_allclose(got[0], want[0], atol=1e-12)
    over = np.array([[[brute_p95(p, n, w) > 3.5 for w in WIDTHS]
                      for n in range(1, N_MAX + 1)] for p in range(2)])
    assert over.any() and not over.all()
    assert np.array_equal(np.isneginf(got[1]), over)
    np.testing.assert_allclose(got[1][~over], want[0][~over], atol=1e-12)
    # the oracle's arm is the best one within the limit, its p95 reported within it
    row = oracle_report(env, Stopping("decided", 1, WIDTHS))["contexts"][1]
    masked = np.where(over, -np.inf, want[0])
    p, n, s = np.unravel_index(int(np.argmax(masked)), masked.shape)
    assert (row["prompt"], row["n"], row["wave"]) == (p, n + 1, min(WIDTHS[s], n + 1))
    assert row["latency_p95"] <= 3.5


def test_the_model_meets_a_p95_limit_by_its_posterior_means() -> None:
    """The learners' model judges a p95 limit on the same posterior means as its expected
    latency: an arm of prompt 1 (votes on queries 0 and 1) is eligible exactly where the
    p95 of those two posterior mean answer laws (:func:`latency_quantile`) is within it."""
    from iapo.model import ModelQTable
    from iapo.pulls import Observation

    env = tiny_env().with_contexts(["budget=low,p95=3.5"]).with_stopping(
        Stopping("decided", 1, WIDTHS))
    stats = ModelQTable(env.problem, alpha=0.5)
    labels = np.array([[0, 0, 1, 0], [2, 1, 1, 1]])
    stats.update([Observation(1, 4, np.array([0, 1]), np.zeros((2, 4, 2)), labels,
                              np.array([0, 2]))])
    posteriors = np.array([[3.5, 1.5, 0.5], [1.5, 3.5, 0.5]]) / 5.5
    model = env.problem.latency
    assert model is not None
    q = stats.mean[0, 1]  # [N], each N at its best width within the limit
    for n in range(1, N_MAX + 1):
        fits = [latency_quantile(posteriors, n, w, model.times[1]) <= 3.5 for w in WIDTHS]
        assert np.isfinite(q[n - 1]) == any(fits), n
        if any(fits):
            assert stats.width is not None and fits[WIDTHS.index(stats.width[0, 1, n - 1])]


def test_contexts_with_a_p95_limit() -> None:
    grid = get_environment("math").with_contexts(
        parse_contexts("budget=mid; budget=mid,p95=30; budget=mid,limit=20,p95=30")
    ).problem.grid
    assert grid.keys == ["budget=mid", "budget=mid,p95=30", "budget=mid,limit=20,p95=30"]
    assert grid.p95_limits.tolist() == [math.inf, 30.0, 30.0]
    assert grid.latency_limits.tolist() == [math.inf, math.inf, 20.0]
    assert grid.prices_latency
    assert grid.find("budget=mid,p95=30") == 1
    with pytest.raises(ProblemError, match="no context matches"):
        grid.find("budget=mid,p95=31")
    with pytest.raises(ProblemError, match="p95 limit 0.0 must be a positive"):
        get_environment("math").with_contexts(["budget=mid,p95=0"])


def oracle_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["oracle", "math", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_oracle_on_math_meets_p95_limits() -> None:
    """On MATH with W in the arm: each context's arm has its p95 within the limit, a tighter
    limit never gives a higher Q, and the arm of all N at once that it is compared with
    meets the same limit; a limit that no arm meets names the fastest arm's p95."""
    out = oracle_json("--stop", "decided", "--wave", "auto", "--contexts",
                      "budget=mid; budget=mid,p95=60; budget=mid,p95=30; budget=mid,p95=22")
    rows = out["contexts"]
    for row, limit in zip(rows[1:], (60, 30, 22), strict=True):
        assert row["latency_p95"] <= limit
        assert math.isfinite(row["all_q"]) and row["gain"] >= 0
    assert rows[0]["q"] >= rows[1]["q"] >= rows[2]["q"] >= rows[3]["q"]
    assert rows[0]["latency_p95"] > 60  # the limits bite
    result = CliRunner().invoke(main, ["oracle", "math", "--contexts", "budget=mid,p95=2"])
    assert result.exit_code == 2
    assert "2 s at the p95" in result.output and "at the p95; raise the limit" in result.output


def test_health_flags_a_p95_over_its_limit() -> None:
    """/health's latency watch: a context whose served latencies exceed its p95 limit in
    clearly more than 5% of requests is ``over_p95``; 5% at the limit is not."""
    from iapo.serve.core import LatencyWatch, Response

    watch = LatencyWatch()

    def served(context: str, seconds: list[float]) -> None:
        for s in seconds:
            watch.add(Response(context, "p", 0, 4, False, [], {}, {}, 4, 0, s,
                               predicted_seconds=5.0))

    served("slow", [5.0] * 80 + [20.0] * 20)  # 20% over 10 s
    served("fine", [5.0] * 95 + [20.0] * 5)  # 5% over 10 s
    served("few", [20.0] * 19)  # every one over, but too few to say
    health = watch.health({}, {"slow": 10.0, "fine": 10.0, "few": 10.0})
    assert health["slow"]["p95_limit"] == 10.0 and health["slow"]["over_p95"]
    assert not health["fine"]["over_p95"] and not health["few"]["over_p95"]
    # the level by hand: 11 of 100 over is P(Binomial(100, 0.05) >= 11) = 0.0115, not
    # flagged; 14 of 100 is 0.00046, flagged
    for over, flagged in ((11, False), (14, True)):
        edge = LatencyWatch()
        for s in [5.0] * (100 - over) + [20.0] * over:
            edge.add(Response("c", "p", 0, 4, False, [], {}, {}, 4, 0, s,
                              predicted_seconds=5.0))
        assert edge.health({}, {"c": 10.0})["c"]["over_p95"] == flagged, over
