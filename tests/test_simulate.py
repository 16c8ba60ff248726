"""Simulated traffic (iapo.simulate, ``iapo simulate``): exact regret, paired traffic, the
scripted drift, the learning budget, and the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from iapo.cli import main
from iapo.envs import get_environment
from iapo.errors import InputError
from iapo.simulate import (
    Scenario,
    SimConfig,
    context_slices,
    drifted,
    simulate_run,
    summarize,
    traffic,
)

SMALL = Scenario(requests=3000, drift_at=1000, step=100)


@pytest.fixture(scope="module")
def run0() -> dict:
    config = SimConfig("math", budgets=(0.05, 0.2), runs=2, scenario=SMALL)
    return simulate_run(config, 0)


def brute_regret(q: np.ndarray, arms: list[tuple[int, int]], contexts: np.ndarray) -> float:
    """Sum over requests of Q*(c) - Q(c, served arm), one request at a time."""
    total = 0.0
    for c in contexts:
        p, n = arms[c]
        total += q[c].max() - q[c, p, n - 1]
    return total


def test_frozen_regret_is_exact(run0: dict) -> None:
    """The frozen curve, request by request against the exact Q of all queries, before the
    drift and after it (the drifted table computed by the environment from scratch)."""
    env = get_environment("math")
    config = SimConfig("math", runs=2, scenario=SMALL)
    pop = np.arange(env.n_queries)
    contexts, _ = traffic(config, 0, pop, env.problem.n_contexts, env.problem.grid.probabilities)
    arms = [tuple(a) for a in run0["trained"]]
    q = env.q()
    before = brute_regret(q, arms, contexts[:1000])
    assert run0["frozen"][0] == pytest.approx(before, rel=1e-9)
    env2, _ = drifted(env, run0["drift"]["prompt"], 0.1, pop)
    after = brute_regret(env2.q(), arms, contexts[1000:3000])
    assert run0["frozen"][-1] == pytest.approx(before + after, rel=1e-9)


def test_every_switch_carries_its_exact_gain(run0: dict) -> None:
    """A switch's gain is Q(new) - Q(old) in its context on the traffic as it was at its
    request: the exact table of all queries before the drift, the drifted one (computed by
    the environment from scratch) from the drift on."""
    env = get_environment("math")
    pop = np.arange(env.n_queries)
    env2, _ = drifted(env, run0["drift"]["prompt"], 0.1, pop)
    switches = [s for k in ("continual@0.05", "continual@0.2") for s in run0[k]["switches"]]
    assert switches  # the drift moves this run's contexts
    for s in switches:
        q = (env.q() if s["request"] < SMALL.drift_at else env2.q())[s["context"]]
        (p0, n0), (p1, n1) = s["old"], s["new"]
        assert s["exact_gain"] == pytest.approx(q[p1, n1 - 1] - q[p0, n0 - 1], abs=1e-12)


def test_switch_quality_counts_switches_that_changed_the_value() -> None:
    """Worked by hand: 5 switches in 2 runs; of the evidence switches, one raised the value,
    one lowered it and one changed nothing (left out of the share); the drift switch
    lowered it; the pessimistic move and the retraining's move raised it."""
    from iapo.simulate import _switch_quality

    runs = [[{"reason": "evidence", "exact_gain": 0.01}, {"reason": "drift", "exact_gain": -0.02},
             {"reason": "evidence", "exact_gain": 0.0}],
            [{"reason": "evidence", "exact_gain": -0.005}, {"reason": "model", "exact_gain": 0.03},
             {"reason": "retrain", "exact_gain": 0.02}]]
    got = _switch_quality(runs)
    assert got == {"switches_per_run": 3.0, "evidence_switches": 3, "evidence_helped": 0.5,
                   "evidence_helped_of": [1, 2], "drift_switches": 1, "drift_helped": 0.0,
                   "drift_helped_of": [0, 1], "model_switches": 1, "model_helped": 1.0,
                   "model_helped_of": [1, 1], "retrain_switches": 1, "retrain_helped": 1.0,
                   "retrain_helped_of": [1, 1]}
    assert _switch_quality([[], []])["evidence_helped"] is None
    # the table shows the counts: "1 of 2" helped on evidence, "0 of 1" on a drift flag
    from iapo.simulate import _helped

    assert (_helped(got, "evidence"), _helped(got, "drift")) == ("1 of 2", "0 of 1")
    assert _helped(_switch_quality([[], []]), "evidence") == ""


def test_drift_takes_exactly_the_accuracy_asked() -> None:
    """Mixing with the worst prompt removes exactly the drop from the prompt's mean
    accuracy and changes nothing else; where no prompt is that much worse, the mix is with
    each query's most common wrong answer."""
    env = get_environment("math")
    pop = np.arange(env.n_queries)
    acc = env.probs[:, pop, env.gold].mean(axis=1)
    p = int(acc.argmax())
    env2, what = drifted(env, p, 0.1, pop)
    acc2 = env2.probs[:, pop, env.gold].mean(axis=1)
    assert acc[p] - acc2[p] == pytest.approx(0.1, abs=1e-12)
    assert np.array_equal(np.delete(env2.probs, p, 0), np.delete(env.probs, p, 0))
    assert what["with"] == env.problem.prompts[int(acc.argmin())]
    env3, what3 = drifted(env, p, acc[p] - acc.min() + 0.05, pop)
    acc3 = env3.probs[:, pop, env.gold].mean(axis=1)
    assert what3["with"] == "wrong answer"
    assert acc[p] - acc3[p] == pytest.approx(acc[p] - acc.min() + 0.05, abs=1e-12)
    with pytest.raises(InputError, match="cannot lose"):
        drifted(env, p, 0.99, pop)


def test_every_condition_sees_the_same_traffic() -> None:
    env = get_environment("math")
    config = SimConfig("math", runs=2, scenario=SMALL)
    pop = np.arange(env.n_queries)
    a = traffic(config, 1, pop, 3, env.problem.grid.probabilities)
    b = traffic(config, 1, pop, 3, env.problem.grid.probabilities)
    c = traffic(config, 2, pop, 3, env.problem.grid.probabilities)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # contexts by the grid's probabilities (uniform over 3): each near 1/3 of 3,000
    assert np.all(np.abs(np.bincount(a[0], minlength=3) / 3000 - 1 / 3) < 0.04)


def test_learning_stays_within_its_budget(run0: dict) -> None:
    for budget in (0.05, 0.2):
        got = run0[f"continual@{budget:g}"]
        assert got["learning_completions"] <= budget * got["served_completions"]
        assert got["learning_completions"] > 0.8 * budget * got["served_completions"]


def test_query_shift_changes_the_truth() -> None:
    """After --shift-at, the traffic keeps a share of the queries and the truth is Q on them."""
    env = get_environment("math")
    sc = Scenario(requests=2000, shift_at=1000, shift_keep=0.25)
    config = SimConfig("math", budgets=(), runs=2, scenario=sc)
    pop = np.arange(env.n_queries)
    _, queries = traffic(config, 0, pop, 3, env.problem.grid.probabilities)
    kept = np.unique(queries[1000:])
    assert kept.size <= round(0.25 * env.n_queries)
    r = simulate_run(config, 0)
    contexts, _ = traffic(config, 0, pop, 3, env.problem.grid.probabilities)
    arms = [tuple(a) for a in r["trained"]]
    after = brute_regret(env.q(kept), arms, contexts[1000:])
    assert r["frozen"][1] - r["frozen"][0] == pytest.approx(after, rel=1e-9)


def test_traffic_by_context_asks_each_context_its_own_slice() -> None:
    """--by-context: the queries ordered by their mean single-completion accuracy over
    prompts (brute force here), cut into thirds; context c asks only slice c, and the
    frozen regret is against each context's oracle on its own slice."""
    env = get_environment("math")
    pop = np.arange(env.n_queries)
    acc = env.probs[:, pop, env.gold].mean(axis=0)  # [X]: mean over prompts
    slices = context_slices(env, pop)
    assert sorted(np.concatenate(slices).tolist()) == pop.tolist()
    assert [s.size for s in slices] == [106, 105, 105]
    assert acc[slices[0]].min() >= acc[slices[1]].max() >= acc[slices[1]].min() >= \
        acc[slices[2]].max()
    sc = Scenario(requests=2000, by_context=True)
    config = SimConfig("math", budgets=(), runs=2, scenario=sc)
    contexts, queries = traffic(config, 0, pop, 3, env.problem.grid.probabilities, slices)
    for c in range(3):
        assert set(queries[contexts == c].tolist()) <= set(slices[c].tolist())
    r = simulate_run(config, 0)
    arms = [tuple(a) for a in r["trained"]]
    q = np.stack([env.q(slices[c])[c] for c in range(3)])
    assert r["frozen"][-1] == pytest.approx(brute_regret(q, arms, contexts), rel=1e-9)


def test_origins_keep_traffic_apart_and_pooling_does_not() -> None:
    """On traffic by context, the learner told each group's context splits contexts apart
    in every run; one not told never does (the same requests)."""
    sc = Scenario(requests=3000, by_context=True)
    told, blind = (summarize(cfg, [simulate_run(cfg, r) for r in range(2)])
                   for cfg in (SimConfig("math", budgets=(0.1,), runs=2, scenario=sc),
                               SimConfig("math", budgets=(0.1,), runs=2, scenario=sc,
                                         origins=False)))
    assert told["conditions"]["continual@0.1"]["split_rate"] == 1.0
    assert blind["conditions"]["continual@0.1"]["split_rate"] == 0.0


def test_scenario_refuses_bad_values() -> None:
    """Each refusal names the command line's option."""
    for bad, says in (({"requests": 1500}, "--requests 1500"),
                      ({"drift_at": 150, "step": 100}, "--drift-at 150 must be a request"),
                      ({"drop": 1.2}, "--drop 1.2"),
                      ({"shift_at": 5000, "requests": 2000}, "--shift-at 5000"),
                      ({"shift_keep": 0.0}, "--shift-keep 0.0"), ({"step": 300}, "step=300"),
                      ({"by_context": True, "drift_at": 1000}, "drop --drift-at")):
        with pytest.raises(InputError, match=says):
            Scenario(**bad)  # type: ignore[arg-type]


def test_simulate_command(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    res = CliRunner().invoke(main, ["simulate", "--runs", "2", "--requests", "7000",
                                    "--drift-at", "1000", "--budgets", "0.1",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| frozen |" in res.output and "continual@0.1" in res.output
    summary = json.loads((out / "math-drift-summary.json").read_text())
    assert summary["window"] == [5000, 6000]
    row = summary["conditions"]["continual@0.1"]
    assert row["learning_share_max"] <= 0.1
    assert (out / "simulate-math-drift.png").stat().st_size > 1000
    assert len((out / "math-drift-runs.jsonl").read_text().splitlines()) == 2
    bad = CliRunner().invoke(main, ["simulate", "--budgets", "2", "--out", str(out)])
    assert bad.exit_code == 2 and "learn budget" in bad.output


def test_an_environment_given_as_a_path_names_its_files_inside_out(tmp_path: Path) -> None:
    """--env path/to/m.npz: the files are m-summary.json and the like, in --out, and
    nothing is written beside the .npz; an --out that cannot be made is a clear error."""
    import shutil

    from iapo.envs import registry

    envs = tmp_path / "envs"
    envs.mkdir()
    shutil.copy(Path(registry.__file__).parent / "data" / "math.npz", envs / "m.npz")
    out = tmp_path / "sim"
    args = ["simulate", "--env", str(envs / "m.npz"), "--runs", "2", "--requests", "2000",
            "--budgets", "0.1"]
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "m-runs.jsonl", "m-summary.json", "m-summary.md", "simulate-m.png", "simulate-m.svg"]
    assert [p.name for p in envs.iterdir()] == ["m.npz"]
    res = CliRunner().invoke(main, [*args, "--out", "/proc/iapo-cannot-make-this"])
    assert res.exit_code != 0 and "cannot make the output folder" in res.output
    assert isinstance(res.exception, SystemExit)


def test_simulate_keeps_the_files_of_a_run_with_other_settings(tmp_path: Path) -> None:
    """The file names tell neither seeds, runs nor budgets apart, nor a/x.npz from b/x.npz: a
    run whose settings differ from those the summary in --out records is refused before it
    runs, naming the file, the settings and what to do, and the files stay as they were. A
    rerun of the same settings writes over its own files, --workers being no setting of the
    results; --overwrite replaces them."""
    import shutil

    from iapo.envs import registry

    out = tmp_path / "sim"
    base = ["simulate", "--runs", "2", "--requests", "1000", "--budgets", "0.1",
            "--out", str(out)]

    def simulate(*more: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*base, *more])

    assert simulate().exit_code == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert simulate("--workers", "2").exit_code == 0  # the same settings: written over
    for more, says in ((["--seed", "1"], "--seed 0 there, 1 now"),
                       (["--runs", "3", "--budgets", "0.05,0.1"],
                        "--budgets 0.1 there, 0.05,0.1 now; --runs 2 there, 3 now"),
                       (["--alarm", "0.1", "--requests", "2000"],
                        "--requests 1000 there, 2000 now; --alarm 0.05 there, 0.1 now")):
        res = simulate(*more)
        assert res.exit_code == 2, res.output
        assert f"--out {out} holds math-summary.json" in res.output
        assert says in res.output and "give another --out, or add --overwrite" in res.output
        assert "| frozen |" not in res.output  # refused before any run
    assert json.loads((out / "math-summary.json").read_text())["config"]["seed"] == 0
    assert sorted(files) == sorted(p.name for p in out.iterdir())
    res = simulate("--seed", "1", "--overwrite")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "math-summary.json").read_text())["config"]["seed"] == 1
    # two environment files of one name write the same files
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(Path(registry.__file__).parent / "data" / "math.npz",
                    tmp_path / folder / "x.npz")
    assert simulate("--env", str(tmp_path / "a" / "x.npz")).exit_code == 0
    res = simulate("--env", str(tmp_path / "a" / ".." / "a" / "x.npz"))  # the same file
    assert res.exit_code == 0, res.output
    res = simulate("--env", str(tmp_path / "b" / "x.npz"))
    assert res.exit_code == 2 and "holds x-summary.json" in res.output
    assert f"--env {tmp_path / 'a' / '..' / 'a' / 'x.npz'} there, " in res.output
    # a summary whose settings cannot be read is not written over either
    (out / "x-summary.json").write_text("{not json")
    res = simulate("--env", str(tmp_path / "a" / "x.npz"))
    assert res.exit_code == 2 and "whose settings cannot be read" in res.output


def test_retraining_spends_the_saved_budget_at_its_requests() -> None:
    """retrain = 1000 over 2,000 requests: no learning pull, and at requests 1,000 and 2,000
    a run of the learner spends all that was saved (psst-auto spends its whole budget), so
    the learning completions are floor(F x served); every move between them is a retraining's
    (no drift) and falls on a multiple of 1,000."""
    from dataclasses import replace

    from iapo.continual import ContinualSettings

    config = SimConfig("math", budgets=(0.1,), runs=2, scenario=Scenario(requests=2000),
                       settings=ContinualSettings(retrain=1000))
    got = simulate_run(config, 1)["continual@0.1"]
    assert got["learning_completions"] == math.floor(0.1 * got["served_completions"] + 1e-9)
    assert got["switches"] and all(s["reason"] == "retrain" and s["request"] % 1000 == 0
                                   for s in got["switches"])
    plain = simulate_run(replace(config, settings=ContinualSettings()), 1)["continual@0.1"]
    assert not any(s["reason"] == "retrain" for s in plain["switches"])


def test_simulate_with_retraining(tmp_path: Path) -> None:
    """--retrain writes its own files and counts its moves apart; --by-context is refused."""
    out = tmp_path / "sim"
    res = CliRunner().invoke(main, ["simulate", "--runs", "2", "--requests", "2000",
                                    "--budgets", "0.05", "--retrain", "1000",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "retraining: helped" in res.output
    summary = json.loads((out / "math-retrain1000-summary.json").read_text())
    assert summary["config"]["settings"]["retrain"] == 1000
    assert summary["conditions"]["continual@0.05"]["retrain_switches"] > 0
    assert (out / "simulate-math-retrain1000.png").exists()
    bad = CliRunner().invoke(main, ["simulate", "--by-context", "--retrain", "1000",
                                    "--out", str(out)])
    assert bad.exit_code == 2 and "--by-context" in bad.output
    # the simulation checks between steps of 100 requests: K = 150 would retrain at 200,
    # 300, 500, ..., and K beyond the requests never
    for k in ("150", "3000"):
        bad = CliRunner().invoke(main, ["simulate", "--requests", "2000", "--retrain", k,
                                        "--out", str(out)])
        assert bad.exit_code == 2 and "give a multiple of 100 up to 2000" in bad.output


def test_simulate_refuses_options_that_would_change_nothing(tmp_path: Path) -> None:
    """--drop without --drift-at and --shift-keep without --shift-at would be ignored; an
    empty item or a repeated budget in --budgets would run other conditions than listed.
    Each is refused before any run, with exit status 2 and nothing written."""
    out = tmp_path / "sim"
    for args, says in ((["--drop", "0.2"], "--drop says what happens at --drift-at"),
                       (["--shift-keep", "0.3"], "--shift-keep says what happens at --shift-at"),
                       (["--budgets", ""], "has an empty item"),
                       (["--budgets", "0.1,,0.2"], "has an empty item"),
                       (["--budgets", "0.1,0.1"], "names a budget twice")):
        res = CliRunner().invoke(main, ["simulate", "--runs", "2", "--requests", "2000",
                                        *args, "--out", str(out)])
        assert res.exit_code == 2 and says in res.output, (args, res.output)
    assert not out.exists()


def test_sim_config_refuses_refits_between_its_steps() -> None:
    """The simulation refits between steps of 100 requests: a --refine-every off that step
    would count more looks than it makes."""
    from iapo.continual import ContinualSettings

    with pytest.raises(InputError, match="--refine-every 150: .* multiple of 100"):
        SimConfig("math", settings=ContinualSettings(refine_every=150))
    SimConfig("math", settings=ContinualSettings(refine_every=300))


def test_sim_config_refuses_retraining_it_cannot_run() -> None:
    """Built without the command line too: by context, off the step, beyond the requests."""
    from iapo.continual import ContinualSettings

    for scenario, k in ((Scenario(by_context=True), 1000), (Scenario(), 150),
                        (Scenario(requests=2000), 3000)):
        with pytest.raises(InputError):
            SimConfig("math", scenario=scenario, settings=ContinualSettings(retrain=k))
    SimConfig("math", scenario=Scenario(requests=2000), settings=ContinualSettings(retrain=2000))


def test_simulate_with_pessimistic_moves(tmp_path: Path) -> None:
    """--moves pessimistic writes its own files (the default's are not overwritten), counts
    its moves apart ("model") and keeps the learning budget."""
    out = tmp_path / "sim"
    res = CliRunner().invoke(main, ["simulate", "--runs", "2", "--requests", "3000",
                                    "--budgets", "0.05", "--moves", "pessimistic",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "pessimistic: helped" in res.output
    summary = json.loads((out / "math-pessimistic-summary.json").read_text())
    assert summary["config"]["settings"]["moves"] == "pessimistic"
    row = summary["conditions"]["continual@0.05"]
    assert row["learning_share_max"] <= 0.05 and row["evidence_switches"] == 0
    assert (out / "simulate-math-pessimistic.png").exists()
    assert not (out / "math-summary.json").exists()
    bad = CliRunner().invoke(main, ["simulate", "--env", "synth-categorical", "--moves",
                                    "pessimistic", "--out", str(out)])
    assert bad.exit_code == 2 and "majority voting" in bad.output
