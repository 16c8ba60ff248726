"""Latency as an objective, and the wave width W as part of the arm (iapo.latency,
iapo.envs.base): Q(c, p, N, W) against every answer sequence and every time assignment of a
tiny environment, the oracle's choice against a brute-force search over (p, N, W), the
synthetic latency model's stated properties, contexts that price latency, and ``iapo
oracle`` on MATH against Monte Carlo."""

from __future__ import annotations

import csv
import itertools
import json
import math
from importlib import resources
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from brute import brute_latency, decided_paid, mv_credit, sequences
from iapo.cli import main
from iapo.envs import get_environment
from iapo.envs.base import oracle_report
from iapo.envs.tabular import MVEnvironment, load_environment
from iapo.errors import InputError
from iapo.latency import CompletionTimes, LatencyModel, SyntheticLatency
from iapo.problem import Choice, ProblemError, Stopping, parse_contexts

# --- a tiny environment: 2 prompts, 3 queries, 3 answer categories, N_max 4 -------------------

PROBS = np.array([
    [[0.6, 0.3, 0.1], [0.2, 0.0, 0.8], [0.4, 0.4, 0.2]],
    [[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.1, 0.6, 0.3]],
])
GOLD = np.array([0, 2, 1])
COSTS = (0.3, 0.7)
N_MAX = 4
TIMES = ((1.0, 3.0), (0.5, 2.0))  # each prompt's two completion times, equally likely
CONTEXTS = ["budget=low", "budget=low,latency=0.05", "budget=high,latency=0.01,limit=4.2"]
WIDTHS = (1, 2, 4)


def tiny_env() -> MVEnvironment:
    env = MVEnvironment("tiny-latency", PROBS, GOLD, list(COSTS), {"low": 0.0, "high": 0.5},
                        N_MAX, cacheable=False)
    model = LatencyModel(tuple(CompletionTimes.from_samples(t) for t in TIMES))
    out = env.with_latency(model).with_contexts(CONTEXTS)
    assert isinstance(out, MVEnvironment)
    return out


def brute_arm(p: int, x: int, n: int, wave: int) -> tuple[float, float, float]:
    """(E[credit], E[paid], E[latency]) of the arm (p, n, wave) on query x: every answer
    sequence, its waves replayed one by one (paid at wave boundaries, as priced), and the
    latency as serving draws the arm, every time assignment enumerated
    (:func:`brute.brute_latency`)."""
    credit = paid = 0.0
    for seq, pr in sequences(n, PROBS[p, x]):
        if pr == 0:
            continue
        credit += pr * float(mv_credit(seq, GOLD[x]))
        paid += pr * decided_paid(seq, wave)
    seconds = brute_latency(list(PROBS[p, x]), n, wave, list(TIMES[p]), [0.5, 0.5], None)
    return credit, paid, seconds


def brute_q() -> tuple[np.ndarray, np.ndarray]:
    """(Q [C, P, N, S] with -inf over a limit, E[latency] [P, N, S]) from :func:`brute_arm`,
    averaged over the three queries; contexts as CONTEXTS (cost weights 0, 0, 0.5)."""
    cw, lw, limit = (0.0, 0.0, 0.5), (0.0, 0.05, 0.01), (math.inf, math.inf, 4.2)
    q = np.zeros((3, 2, N_MAX, len(WIDTHS)))
    lat = np.zeros((2, N_MAX, len(WIDTHS)))
    for p, n, (s, w) in itertools.product(range(2), range(1, N_MAX + 1), enumerate(WIDTHS)):
        arms = [brute_arm(p, x, n, w) for x in range(3)]
        credit, paid, seconds = (float(np.mean(v)) for v in zip(*arms, strict=True))
        lat[p, n - 1, s] = seconds
        for c in range(3):
            value = credit - cw[c] * COSTS[p] * paid - lw[c] * seconds
            q[c, p, n - 1, s] = value if seconds <= limit[c] else -math.inf
    return q, lat


def test_q_of_every_width_equals_enumeration() -> None:
    """Q(c, p, N, W) = credit - cost term - latency weight x E[latency], -inf over the
    limit, for every arm and width, as every answer sequence and time assignment gives it;
    and Q(c, p, N) with W in the arm is its best width."""
    env = tiny_env().with_stopping(Stopping("decided", 1, WIDTHS))
    want, _ = brute_q()
    got = env.width_q()
    assert got.shape == want.shape
    assert np.array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=1e-12)
    assert np.isinf(want).any() and np.isfinite(want[2]).any()  # the limit bites, not all
    np.testing.assert_array_equal(env.q(), got.max(axis=-1))


def test_on_a_split_the_limit_judges_the_arm_on_all_queries() -> None:
    """Q on query 0 alone is that query's credit, cost and latency term; which arms are over
    the limit is judged on the three queries (the query distribution), as without a split:
    the arm (1, 4, 1) takes 4.42 s on average, under the 4.2 s limit on query 0 alone."""
    env = tiny_env().with_stopping(Stopping("decided", 1, WIDTHS))
    want, _ = brute_q()
    got = env.width_q([0])
    assert np.array_equal(np.isinf(got), np.isinf(want))
    assert brute_arm(1, 0, 4, 1)[2] < 4.2 and np.isinf(want[2, 1, 3, 0])
    cw, lw = (0.0, 0.0, 0.5), (0.0, 0.05, 0.01)
    for p, n, (s, w) in itertools.product(range(2), range(1, N_MAX + 1), enumerate(WIDTHS)):
        credit, paid, seconds = brute_arm(p, 0, n, w)
        for c in range(3):
            if np.isfinite(want[c, p, n - 1, s]):
                assert got[c, p, n - 1, s] == pytest.approx(
                    credit - cw[c] * COSTS[p] * paid - lw[c] * seconds, abs=1e-12)


def test_the_oracle_picks_the_best_prompt_n_and_width() -> None:
    """oracle_report's (p, N, W) per context is the brute-force argmax over every arm and
    width (W above N is one wave of N: reported as N), with its expected latency; the
    comparison arm sends all N at once (W = N) under the same latency terms."""
    want, lat = brute_q()
    out = oracle_report(tiny_env(), Stopping("decided", 1, WIDTHS))
    for c, row in enumerate(out["contexts"]):
        best = np.unravel_index(int(np.argmax(want[c])), want[c].shape)  # first on ties
        p, n, w = int(best[0]), int(best[1]) + 1, WIDTHS[int(best[2])]
        assert (row["prompt"], row["n"], row["wave"]) == (p, n, min(w, n)), (c, row)
        assert row["q"] == pytest.approx(want[c][best], abs=1e-12)
        assert row["latency"] == pytest.approx(lat[p, n - 1, int(best[2])], abs=1e-12)
        one_wave = [want[c, pp, nn - 1, WIDTHS.index(4)] if nn > 2 else
                    want[c, pp, nn - 1, WIDTHS.index(nn)]
                    for pp in range(2) for nn in range(1, N_MAX + 1)]
        assert row["all_q"] == pytest.approx(max(one_wave), abs=1e-12)
        assert row["gain"] >= 0
    assert out["latency_model"]["mean_seconds"] == [2.0, 1.25]


# --- the synthetic latency model ----------------------------------------------------------------


@pytest.mark.parametrize("cv", [0.0, 0.3, 0.5, 1.0])
def test_synthetic_times_have_the_stated_mean_and_spread(cv: float) -> None:
    """Mean exactly overhead + per_token x tokens_per_cost x cost; the coefficient of
    variation of the tokens within 3% of cv (a discretized Gamma)."""
    params = SyntheticLatency(overhead=0.4, per_token=0.02, tokens_per_cost=30_000, cv=cv)
    model = params.model([0.01, 0.005, 0.0])
    for times, cost in zip(model.times, [0.01, 0.005, 0.0], strict=True):
        assert times.mean() == pytest.approx(0.4 + 0.02 * 30_000 * cost, rel=1e-12)
        tokens = (times.values - 0.4) / 0.02
        mean = tokens @ times.probs
        sd = math.sqrt(max((tokens - mean) ** 2 @ times.probs, 0.0))
        if cost:
            assert sd / mean == pytest.approx(cv, abs=0.03)
    assert model.concurrency is None and "cv=" in model.description


def test_synthetic_parameters_from_text_file_and_cli(tmp_path: Any) -> None:
    params = SyntheticLatency.parse("per_token=0.05, concurrency=4")
    assert (params.per_token, params.concurrency, params.overhead) == (0.05, 4, 0.5)
    assert SyntheticLatency.parse("concurrency=none", params).concurrency is None
    for bad, needle in [("speed=3", "KEY=VALUE"), ("cv=-1", ">= 0"), ("cv=abc", "number"),
                        ("concurrency=2.5", "integer >= 1")]:
        with pytest.raises(InputError, match=needle):
            SyntheticLatency.parse(bad)
    # the environment file's latency_* keys
    with resources.files("iapo.envs").joinpath("data", "math.npz").open("rb") as fh, \
            np.load(fh) as f:
        data = {k: f[k] for k in f.files}
    path = tmp_path / "math-fast.npz"
    np.savez(path, **data, latency_per_token=np.float64(0.01), latency_concurrency=np.int64(8))
    env = load_environment(path)
    assert (env.latency_params.per_token, env.latency_params.concurrency) == (0.01, 8)
    means = env.latency_model().to_dict()["mean_seconds"]
    assert isinstance(means, list)
    assert max(means) == pytest.approx(0.5 + 0.01 * 50_000 * 0.01, rel=1e-6)
    out = CliRunner().invoke(main, ["oracle", str(path), "--json", "--latency", "overhead=1"])
    assert out.exit_code == 0, out.output
    model = json.loads(out.stdout)["latency_model"]
    assert "overhead=1,per_token=0.01" in model["description"] and model["concurrency"] == 8


# --- contexts that price latency ----------------------------------------------------------------


def test_contexts_with_latency_keys_and_lookup() -> None:
    env = get_environment("math").with_contexts(
        parse_contexts("budget=mid; budget=mid,latency=0.001 ; budget=high,limit=25"))
    grid = env.problem.grid
    assert grid.keys == ["budget=mid", "budget=mid,latency=0.001", "budget=high,limit=25"]
    assert grid.cost_weights.tolist() == [0.2, 0.2, 1.0]
    assert grid.latency_weights.tolist() == [0.0, 0.001, 0.0]
    assert grid.latency_limits.tolist() == [math.inf, math.inf, 25.0]
    assert grid.probabilities.tolist() == pytest.approx([1 / 3] * 3)
    for i, key in enumerate(grid.keys):
        assert grid.find(key) == i
    with pytest.raises(ProblemError, match="no context matches"):
        grid.find("budget=mid,latency=0.002")
    for bad, needle in [("budget=mid,latency=-1", "negative"), ("budget=mid,limit=0",
                        "positive"), ("budget=none", "no context matches"),
                        ("budget=mid,latency=fast", "not a number")]:
        with pytest.raises(ProblemError, match=needle):
            get_environment("math").with_contexts([bad])


@pytest.mark.parametrize(("n_max", "widths"), [(32, (1, 2, 4, 8, 16, 32)), (10, (1, 2, 4, 8, 10)),
                                               (1, (1,)), (2, (1, 2))])
def test_every_width_is_the_powers_of_two_and_n_max(n_max: int, widths: tuple[int, ...]
                                                    ) -> None:
    assert Stopping.every_width(n_max) == Stopping("decided", 1, widths)
    assert Stopping.every_width(n_max).to_dict()["widths"] == list(widths)


@pytest.mark.parametrize("widths", [(2, 1), (1, 1), (0, 2), (1.5,)])
def test_bad_widths_are_refused(widths: tuple[Any, ...]) -> None:
    with pytest.raises(ProblemError, match="ascending"):
        Stopping("decided", 1, widths)
    with pytest.raises(ProblemError, match="decided"):
        Stopping("all", 1, (1, 2))


# --- iapo oracle on MATH ----------------------------------------------------------------------


def oracle_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["oracle", "math", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


MATH_CONTEXTS = "budget=mid; budget=mid,latency=0.0003; budget=mid,limit=25"


def test_oracle_reports_the_wave_and_latency_of_every_context() -> None:
    """Every context's wave W and expected latency, next to prompt and N; a limited
    context's arm meets its limit; the reported latency and completions lie within 3
    standard errors of 20,000 simulated requests on uniformly drawn MATH queries, answers and
    times drawn one by one (the vote checked as each answer comes back, the price at wave
    boundaries)."""
    out = oracle_json("--stop", "decided", "--wave", "auto", "--contexts", MATH_CONTEXTS)
    assert out["stopping"]["widths"] == [1, 2, 4, 8, 16, 32]
    env = get_environment("math")
    assert isinstance(env, MVEnvironment)
    model = env.latency_model()
    rng = np.random.default_rng(7)
    sims = 20_000
    for row in out["contexts"]:
        assert {"prompt", "n", "wave", "latency", "latency_p95", "paid"} <= row.keys()
        assert 1 <= row["wave"] <= row["n"]
        assert row["latency"] <= row["latency_p95"]
        if "limit" in row["context"]:
            assert row["latency"] <= 25.0
        p, n, w = row["prompt"], row["n"], row["wave"]
        x = rng.integers(0, env.n_queries, sims)
        cdf = np.cumsum(env.probs[p, x], axis=1)
        answers = (rng.random((sims, n, 1)) >= cdf[:, None, :]).sum(-1)
        times = model.times[p]
        secs = rng.choice(times.values, size=(sims, n), p=times.probs)
        seconds, paid = np.zeros(sims), np.zeros(sims)
        counts = np.zeros((sims, 5), dtype=np.int64)
        every = np.arange(sims)
        waiting = np.ones(sims, dtype=bool)  # the caller, as each answer comes back
        paying = np.ones(sims, dtype=bool)  # the price, checked at wave boundaries
        for start in range(0, n, w):
            end = min(start + w, n)
            order = start + np.argsort(secs[:, start:end], axis=1, kind="stable")
            for back, i in enumerate(order.T, start + 1):
                counts[every, answers[every, i]] += 1
                top = np.sort(counts, axis=1)
                now = waiting & (top[:, -1] - top[:, -2] > n - back)
                seconds[now] += secs[now, i[now]]
                waiting &= ~now
            seconds[waiting] += secs[waiting, start:end].max(axis=1)
            paid[paying] = end
            top = np.sort(counts, axis=1)
            paying &= ~(top[:, -1] - top[:, -2] > n - end)
        for sim, want in [(seconds, row["latency"]), (paid, row["paid"])]:
            sem = sim.std(ddof=1) / math.sqrt(sims)
            assert abs(sim.mean() - want) <= 3 * sem + 1e-9, (row, sim.mean(), sem)
        assert np.quantile(seconds, 0.95) == pytest.approx(row["latency_p95"], rel=0.05)


def test_a_tighter_limit_or_heavier_weight_never_waits_longer() -> None:
    """Known properties: raising the latency weight, or tightening the limit, never picks a
    slower arm; and W in the arm never does worse than sending all N at once."""
    out = oracle_json("--stop", "decided", "--wave", "auto", "--contexts",
                      "budget=mid; budget=mid,latency=0.0003; budget=mid,latency=0.003; "
                      "budget=mid,limit=40; budget=mid,limit=25; budget=mid,limit=20")
    rows = out["contexts"]
    seconds = [r["latency"] for r in rows]
    assert seconds[0] >= seconds[1] >= seconds[2]
    assert seconds[3] >= seconds[4] >= seconds[5] and seconds[5] <= 20
    assert all(r["gain"] >= 0 for r in rows) and out["gain"] >= 0


@pytest.mark.parametrize(("args", "needles"), [
    (["--wave", "auto"], ["--wave auto", "--stop decided"]),
    (["--wave", "fast"], ["'fast'", "integer >= 1 or 'auto'"]),
    (["--contexts", "budget=mid,limit=5"], ["limit of 5 s", "fastest", "raise the limit"]),
    (["--contexts", "budget=mid,latency=x"], ["'latency'='x'", "not a number"]),
    (["--latency", "speed=2"], ["'speed=2'", "KEY=VALUE"]),
])
def test_oracle_latency_errors_say_what_to_do(args: list[str], needles: list[str]) -> None:
    result = CliRunner().invoke(main, ["oracle", "math", *args])
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output


# --- learners, policies and evaluation with W in the arm ---------------------------------------


def test_the_model_prices_latency_and_picks_each_arms_best_width() -> None:
    """With many answers per query the per-query model's posterior is the truth, so its
    Q(c, p, N) with W in the arm is the exact one (the tiny environment's, by enumeration
    above) within 0.01, and its width the exact best where the best is clear."""
    from iapo.model import ModelQTable
    from iapo.pulls import Observation

    env = tiny_env().with_stopping(Stopping("decided", 1, WIDTHS))
    rng = np.random.default_rng(3)
    stats = ModelQTable(env.problem, alpha=0.01)
    for p in range(2):
        s = env.sample(p, np.repeat(np.arange(3), 50), 40, rng)
        assert s.labels is not None and s.gold is not None
        stats.update([Observation(p, 40, np.repeat(np.arange(3), 50), s.scores, s.labels,
                                  s.gold)])
    want, _ = brute_q()
    best = want.max(axis=-1)
    finite = np.isfinite(best)
    assert np.array_equal(np.isfinite(stats.mean), finite)
    np.testing.assert_allclose(stats.mean[finite], best[finite], atol=0.01)
    assert stats.width is not None
    order = np.sort(np.where(np.isfinite(want), want, -9), axis=-1)
    clear = finite & (order[..., -1] - order[..., -2] > 0.02)
    chosen = np.asarray(WIDTHS)[np.argmax(want, axis=-1)]
    assert clear.sum() >= 5
    np.testing.assert_array_equal(stats.width[clear], chosen[clear])


def test_the_models_latency_is_the_exact_latency_of_each_querys_posterior_mean() -> None:
    """Prompt 1 with votes on queries 0 and 1 only: the model's predicted latency of every
    arm in waves of W is the mean, over those two queries, of the exact latency
    (:func:`iapo.latency.expected_latency`) of each query's posterior mean answer law
    (counts + alpha on the gold, on each answer seen and on one unseen bucket); the paper's
    arms wait for all N (the model's ``one_wave``)."""
    from iapo.latency import expected_latency
    from iapo.model import ModelQTable
    from iapo.pulls import Observation
    from iapo.stopping import expected_paid

    env = tiny_env().with_stopping(Stopping("decided", 1, WIDTHS))
    stats = ModelQTable(env.problem, alpha=0.5)
    labels = np.array([[0, 0, 1, 0], [2, 1, 1, 1]])  # query 0: gold 0; query 1: gold 2
    stats.update([Observation(1, 4, np.array([0, 1]), np.zeros((2, 4, 2)), labels,
                              np.array([0, 2]))])
    posteriors = [np.array([3.5, 1.5, 0.5]) / 5.5,  # gold 0 x3, answer 1 x1, unseen
                  np.array([1.5, 3.5, 0.5]) / 5.5]  # gold 2 x1, answer 1 x3, unseen
    model = env.problem.latency
    assert model is not None
    for w in WIDTHS:
        want = np.mean([expected_latency(q, N_MAX, w, model.times[1]) for q in posteriors],
                       axis=0)
        np.testing.assert_allclose(stats.arm_latency(w)[1], want, rtol=1e-12)
    np.testing.assert_array_equal(stats.arm_latency(None), model.one_wave(N_MAX))
    # every width at once, for the report's frontier: one wave of N pays all N, waves of 1
    # pay what the exact rule pays on each posterior mean
    widths, paid, latency = stats.width_table()
    assert widths == list(WIDTHS) and paid.shape == latency.shape == (2, N_MAX, 3)
    np.testing.assert_allclose(paid[1, :, 2], np.arange(1, N_MAX + 1), rtol=1e-12)
    want = np.mean([expected_paid(q, N_MAX, 1)[0] for q in posteriors], axis=0)
    np.testing.assert_allclose(paid[1, :, 0], want, rtol=1e-12)
    for s, w in enumerate(WIDTHS):
        np.testing.assert_array_equal(latency[..., s], stats.arm_latency(w))


def test_blocks_refuse_to_price_latency_and_say_what_to_use() -> None:
    """... unless told to leave the latency terms out (what the live test split does), and
    never with the width in the arm."""
    import dataclasses

    from iapo.estimate import QTable

    with pytest.raises(InputError, match="psst-auto"):
        QTable(tiny_env().problem)
    table = QTable(tiny_env().problem, without_latency=True)
    assert table.latency is None
    problem = dataclasses.replace(tiny_env().problem, stopping=Stopping("decided", 1, (1, 2)))
    with pytest.raises(InputError, match="psst-auto"):
        QTable(problem, without_latency=True)


def test_train_and_evaluate_with_w_in_the_arm(tmp_path: Any) -> None:
    """``iapo train --wave auto --contexts``: every choice carries its W (at most N), the
    policy records the contexts and the latency model, and ``iapo evaluate`` values it as
    the exact Q of its (p, N, W) on the test split, by hand from the width table."""
    out = tmp_path / "policy.json"
    run = CliRunner().invoke(main, ["train", "math", "--budget", "2000", "--out", str(out),
                                    "--stop", "decided", "--wave", "auto",
                                    "--contexts", MATH_CONTEXTS])
    assert run.exit_code == 0, run.output
    data = json.loads(out.read_text())
    assert data["stopping"]["widths"] == [1, 2, 4, 8, 16, 32]
    assert [r["context"] for r in data["policy"]] == parse_contexts(MATH_CONTEXTS)
    assert all(1 <= r["wave"] <= r["n"] for r in data["policy"])
    assert data["latency"]["description"].startswith("synthetic: ")
    # every choice's predicted latency meets its context's limit, and is the model's own
    # prediction for the arm, within what the posterior can err on 2,000 completions
    for r in data["policy"]:
        assert r["latency"] > 0
        if "limit=25" in r["context"]:
            assert r["latency"] <= 25.0
    result = CliRunner().invoke(main, ["evaluate", "math", str(out), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    env = get_environment("math").with_contexts(parse_contexts(MATH_CONTEXTS)).with_stopping(
        Stopping.every_width(32))
    env_arms = env.arm_table()
    for r in data["policy"]:
        truth = env_arms.values(env_arms.latency, [Choice(r["prompt"], r["n"], 0.0, 0,
                                                          r["wave"])])[0]
        assert r["latency"] == pytest.approx(truth, rel=0.15)
    q4 = env.width_q(np.asarray(data["split"]["test"]))
    widths = [1, 2, 4, 8, 16, 32]
    mine = [q4[c, r["prompt"], r["n"] - 1, next(i for i, w in enumerate(widths)
                                                  if w >= r["wave"])]
            for c, r in enumerate(data["policy"])]
    assert got["acr"] == pytest.approx(np.mean(mine), abs=1e-12)
    assert got["oracle_acr"] == pytest.approx(q4.reshape(3, -1).max(axis=1).mean(), abs=1e-12)
    # a wave in a policy without widths is refused, as is a wave above N
    data["policy"][0]["wave"] = data["policy"][0]["n"] + 1
    out.write_text(json.dumps(data))
    bad = CliRunner().invoke(main, ["evaluate", "math", str(out)])
    assert bad.exit_code == 2 and "at most N" in bad.output


def test_a_served_choice_stops_in_waves_of_its_own_width() -> None:
    """The serving core runs each choice's W (the width is part of the arm), and the
    policy's rule where the choice has none."""
    from iapo.policy import Policy
    from iapo.serve.core import arm_stopping

    policy = Policy("math", "psst-auto", 10, 10, 0, {}, ["a", "b"],
                    [Choice(0, 8, 0.5, 1, 4), Choice(0, 8, 0.5, 1, None)],
                    stopping=Stopping.every_width(32))
    assert arm_stopping(policy, policy.choices[0]) == Stopping("decided", 4)
    assert arm_stopping(policy, policy.choices[1]) == Stopping.every_width(32)
    fixed = Policy("math", "psst-auto", 10, 10, 0, {}, ["a"], [Choice(0, 8, 0.5, 1)],
                   stopping=Stopping("decided", 2))
    assert arm_stopping(fixed, fixed.choices[0]) == Stopping("decided", 2)


def test_bench_prices_latency_and_w_in_the_arm(tmp_path: Any) -> None:
    """``iapo bench --wave auto --contexts``: every row's oracle ACR is the latency-aware
    oracle on its run's test split (by hand from the width table), its regret >= 0; a
    learner of blocks is refused before anything runs, saying which learners price latency;
    a folder of another setup is refused."""
    from iapo.bench.runner import seed_sequence
    from iapo.split import train_test_split

    args = ["bench", "--envs", "math", "--budgets", "1000", "--runs", "2", "--stop",
            "decided", "--wave", "auto", "--contexts", MATH_CONTEXTS]
    out = tmp_path / "b"
    result = CliRunner().invoke(main, [*args, "--learners", "psst-auto,psst-model",
                                       "--reference", "psst-auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 4
    env = get_environment("math").with_contexts(parse_contexts(MATH_CONTEXTS)).with_stopping(
        Stopping.every_width(32))
    for r in rows:
        _, test = train_test_split(env.n_queries, seed_sequence(0, int(r["run"]), 0), 0.2)
        q4 = env.width_q(test)
        assert float(r["oracle_acr"]) == pytest.approx(q4.reshape(3, -1).max(axis=1).mean(),
                                                       abs=1e-12)
        assert float(r["regret"]) >= -1e-12
    refused = CliRunner().invoke(main, [*args, "--learners", "psst", "--out",
                                        str(tmp_path / "c")])
    assert refused.exit_code == 2 and "psst-auto" in refused.output
    other = CliRunner().invoke(main, ["bench", "--envs", "math", "--budgets", "1000", "--runs",
                                      "1", "--learners", "psst-auto", "--reference",
                                      "psst-auto", "--out", str(out)])
    assert other.exit_code == 2 and "--contexts" in other.output


def test_with_no_arm_predicted_within_the_limit_the_fastest_is_chosen() -> None:
    """A limit under every arm's predicted latency: the learner's choice is the arm it
    predicts fastest (N = 1 of the quicker prompt, 1.25 s against 2 s), its q_hat NaN."""
    from iapo.learners.base import best_choices
    from iapo.model import ModelQTable
    from iapo.pulls import Observation

    env = tiny_env().with_contexts(["budget=low,limit=1"]).with_stopping(
        Stopping("decided", 1, WIDTHS))
    stats = ModelQTable(env.problem)
    rng = np.random.default_rng(0)
    for p in range(2):
        s = env.sample(p, np.arange(3), 4, rng)
        assert s.labels is not None and s.gold is not None
        stats.update([Observation(p, 4, np.arange(3), s.scores, s.labels, s.gold)])
    assert np.all(np.isneginf(stats.mean))
    (choice,) = best_choices(stats, np.ones(stats.mean.shape, dtype=bool), rng)
    assert (choice.prompt, choice.n, choice.latency) == (1, 1, pytest.approx(1.25))
    assert np.isnan(choice.q_hat)


def test_trimming_keeps_arms_over_a_limit_above_arms_no_longer_alive() -> None:
    """An alive arm predicted over its limit (-inf) still ranks above an arm that is not
    alive: keeping 2 of the alive [-inf, 0.5] keeps both, whatever the tie-breaking draw."""
    from iapo.learners.psst import keep_best

    value = np.array([[-np.inf, -np.inf, 0.5, -np.inf]])
    alive = np.array([[True, False, True, False]])
    for seed in range(20):
        kept = keep_best(value, alive, [2], np.random.default_rng(seed))
        assert kept.tolist() == [[True, False, True, False]], seed


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("latency", "fast", "latency must be a number of seconds >= 0"),
    ("latency", -1.0, "latency must be a number of seconds >= 0"),
    ("wave", 0, "wave must be an integer >= 1"),
])
def test_a_bad_latency_or_wave_in_a_policy_row_is_named(field: str, value: Any,
                                                        needle: str) -> None:
    from iapo.policy import Policy, PolicyError

    policy = Policy("math", "psst-auto", 10, 10, 0, {"test": []}, ["budget=mid"],
                    [Choice(0, 8, 0.5, 1, 4, 20.0)], stopping=Stopping.every_width(32),
                    latency={"description": "synthetic: cv=0.5"})
    data = policy.to_dict()
    assert Policy.from_dict(data).choices == policy.choices
    data["policy"][0][field] = value
    with pytest.raises(PolicyError, match=needle):
        Policy.from_dict(data)
    data = policy.to_dict()
    data["latency"] = "fast"
    with pytest.raises(PolicyError, match="latency must be an object"):
        Policy.from_dict(data)
