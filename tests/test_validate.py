"""`iapo validate` and `iapo optimize --dry-run`: optimize's own checks, every problem named,
the plan's numbers, and never a request to the model nor a file written.

Every broken task file of the validation tests (their lists of cases, imported, not copied)
gets from `validate` and from the dry run the message `optimize` gives, while a real loopback
server counts the requests: none. The plan's numbers are computed by hand in the comments, and
the schedules are also checked against the learners themselves on simulated environments.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import test_live_units as units
import test_task_validation as validation
from iapo.cli import main
from iapo.envs.synthetic import synth_bernoulli, synth_categorical
from iapo.live.plan import schedule
from iapo.live.task import TaskError, load_task, task_from_dict
from iapo.training import train_policy
from live_helpers import ScriptedServer


def cli(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


# --- every broken task file: the same message, no request -------------------------------------

Build = Callable[[Path, str], Path]  # (folder, the server's URL) -> the task file written


def broken(mutate: validation.Mutation, records: str = validation.RECORDS) -> Build:
    """A case of tests/test_task_validation.py: its base task, changed by ``mutate``."""
    def build(tmp: Path, url: str) -> Path:
        raw = copy.deepcopy(validation.base_raw())
        raw["model"]["base_url"] = url
        mutate(raw)
        return validation.write_task(tmp, raw, records)
    return build


def broken_unit(mutate: units.Mutation) -> Build:
    """A case of tests/test_live_units.py: its majority-vote task, changed by ``mutate``."""
    def build(tmp: Path, url: str) -> Path:
        raw = copy.deepcopy(units.mv_raw(url))
        mutate(raw)
        return units.write_task(tmp, raw)
    return build


def parametrized(test: Callable[..., object]) -> list[Any]:
    """The argument tuples of a test's ``pytest.mark.parametrize``."""
    (mark,) = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
    return list(mark.args[1])


def _aggregator(change: dict[str, Any]) -> validation.Mutation:
    return lambda r: r["aggregator"].update(change)


BROKEN: list[tuple[str, Build]] = [
    *[(f"table-{n}", broken(m)) for n, m, _ in validation.NOT_TABLES],
    *[(f"limit-{n}", broken(m)) for n, m, _ in validation.LIMITS],
    *[(f"unknown-{n}", broken(m)) for n, m, _, _ in validation.UNKNOWN],
    *[(f"number-{n}", broken(m)) for n, m, _ in validation.NUMBERS],
    *[(f"labels-{n}", broken(_aggregator(c))) for n, c, _ in validation.LABELS],
    *[(f"learner-{name}", broken(validation._set("train", learner=name)))
      for name, _ in parametrized(validation.test_a_learner_get_learner_refuses_is_refused)],
    *[(f"cli-{n}", broken(m, d)) for n, m, d, _ in validation.CLI_CASES],
    *[(f"record-{n}", broken(lambda r: None, validation.RECORDS + line + "\n"))
      for n, line, _ in validation.BAD_RECORDS],
    *[(f"unit-{n}", broken_unit(m)) for n, m, _ in units.BAD_TASKS],
    *[(f"malformed-{n}", broken_unit(m)) for n, m, _ in units.MALFORMED],
]


def test_the_cases_are_all_there() -> None:
    learners = parametrized(validation.test_a_learner_get_learner_refuses_is_refused)
    assert [name for name, _ in learners] == ["sgd", "psst:magic", "sgd:subsets"]
    assert len(BROKEN) > 100


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    """One counting server for all the cases (each stops in half a second)."""
    with ScriptedServer() as srv:
        yield srv


@pytest.mark.parametrize("build", [b for _, b in BROKEN], ids=[n for n, _ in BROKEN])
def test_validate_and_the_dry_run_give_optimizes_message_and_ask_nothing(
        tmp_path: Path, server: ScriptedServer, build: Build) -> None:
    asked = len(server.requests)
    task = build(tmp_path, server.base_url)
    out = tmp_path / "out"
    optimize = cli("optimize", str(task), "--out", str(out))
    problems = json.loads(cli("validate", str(task), "--json").output)["problems"]
    validate = cli("validate", str(task))
    dry = cli("optimize", str(task), "--out", str(out), "--dry-run")
    assert len(server.requests) == asked == 0
    assert (optimize.exit_code, validate.exit_code, dry.exit_code) == (2, 1, 1)
    assert problems and optimize.output.endswith(f"\nError: {problems[0]}\n")
    assert validate.output == dry.output == "".join(f"Error: {p}\n" for p in problems)
    assert not out.exists()


# --- every problem, in optimize's order ------------------------------------------------------


def test_independent_problems_are_all_named_the_first_being_optimizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAPO_VALIDATE_UNSET", raising=False)
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"  # a folder under a file cannot be made
    with ScriptedServer() as server:
        raw = units.mv_raw(server.base_url)
        raw["model"]["api_key_env"] = "IAPO_VALIDATE_UNSET"
        raw["objectives"] = [{"name": "correct", "scorer": "python", "callable": "gone.py:f"}]
        task = units.write_task(tmp_path, raw)
        with (tmp_path / "q.jsonl").open("a") as f:
            f.write('{"id": "x", "query": \n')  # line 7: the records' file is broken too
        optimize = cli("optimize", str(task), "--out", str(out))
        validate = cli("validate", str(task), "--out", str(out), "--json")
        assert server.requests == []
    problems = json.loads(validate.output)["problems"]
    assert validate.exit_code == 1 and len(problems) == 4
    data, scorer, folder, key = problems
    assert data.startswith(f"{tmp_path / 'q.jsonl'}:7: not valid JSON")
    assert "gone.py' does not exist" in scorer
    assert "--out" in folder and "a-file" in folder and "is a file, not a folder" in folder
    assert "model.api_key_env names $IAPO_VALIDATE_UNSET" in key
    assert optimize.exit_code == 2 and optimize.output.endswith(f"\nError: {data}\n")


def test_missing_golds_and_a_missing_key_are_both_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IAPO_VALIDATE_UNSET", raising=False)
    raw = units.mv_raw("http://127.0.0.1:9/v1")
    raw["model"]["api_key_env"] = "IAPO_VALIDATE_UNSET"
    task = units.write_task(tmp_path, raw, gold=None)  # majority voting needs a gold answer
    result = cli("validate", str(task))
    lines = result.output.splitlines()
    assert result.exit_code == 1 and len(lines) == 2
    assert lines[0].startswith("Error: 6 record(s) of data.path have no gold (first: id 'q0')")
    assert lines[1].startswith("Error: model.api_key_env names $IAPO_VALIDATE_UNSET")
    monkeypatch.setenv("IAPO_VALIDATE_UNSET", "sk-test")
    assert cli("validate", str(task)).output.splitlines() == lines[:1]


# --- a valid task: its summary and its plan --------------------------------------------------


def plan_raw(url: str) -> dict[str, Any]:
    """Two prompts, N_max 4, T = 40, psst, 2 contexts, priced."""
    raw = units.mv_raw(url)
    raw["prompts"][1]["max_tokens"] = 10  # a: 5, b: 10
    raw["train"].update(n_max=4, budget=40, learner="psst")
    raw["pricing"] = {"input_per_million": 2.5, "output_per_million": 10}
    return raw


def folder_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_valid_task_validates_and_plans_what_hand_computation_gives(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as server:
        task = units.write_task(tmp_path, plan_raw(server.base_url), n_records=10)
        out = tmp_path / "run"
        valid = cli("validate", str(task))
        dry = cli("optimize", str(task), "--out", str(out), "--dry-run")
        plan = json.loads(cli("optimize", str(task), "--out", str(out), "--dry-run",
                              "--json").output)
        assert server.requests == []
    assert not out.exists()
    # 10 records, test_fraction 0.2: 2 test, 8 train; contexts: budgets low and high
    assert valid.exit_code == 0
    assert valid.output == (f"{task} is valid: 2 prompts x N_max 4 = 8 arms in 2 contexts; "
                            "T = 40 completions (psst); 10 queries: 8 train, 2 test\n")
    assert (plan["prompts"], plan["n_max"], plan["arms"], plan["contexts"]) == (2, 4, 8, 2)
    assert plan["context_keys"] == ["budget=low", "budget=high"]
    assert (plan["train_queries"], plan["test_queries"]) == (8, 2)
    # R = ceil(log2 8) = 3; one group of each prompt at N 4 costs 8, and 40 // 8 = 5 >= 3
    assert plan["schedule"] == [{"phase": "psst", "rounds": 3, "rounds_paper": 3}]
    # test evaluation: min(2 prompts, 2 contexts) x N_max 4 x 2 test queries = 16
    assert plan["completions"] == {"training_at_most": 40, "evaluation_at_most": 16,
                                   "total_at_most": 56}
    # every query is "question i", 10 characters; prompt b is the longer: "Be brief." (9) +
    # "Question: " (10) + 10 + " Answer:" (8) = 37 characters, ceil(37 / 4) = 10 tokens
    tokens = plan["tokens"]
    assert (tokens["input_per_completion"], tokens["input"]) == (10, 56 * 10)
    # the larger max_tokens is b's 10
    assert (tokens["output_per_completion_at_most"], tokens["output_at_most"]) == (10, 560)
    # 560 x 2.5 / 10^6 = 0.0014 and 560 x 10 / 10^6 = 0.0056
    money = plan["money"]
    assert money["input"] == pytest.approx(0.0014)
    assert money["output_at_most"] == pytest.approx(0.0056)
    assert money["total_at_most"] == pytest.approx(0.007)
    assert plan["store"] == {"path": str(out / "store.sqlite"), "exists": False}
    text = dry.output
    assert dry.exit_code == 0
    for line in ["learner psst, T = 40: PSST 3 round(s)",
                 "completions: at most 40 for training (T) + 16 for the test evaluation = 56",
                 "tokens: input about 560 (10 per completion, characters / 4), output at most "
                 "560 (max_tokens 10)",
                 "money: at most 0.007 (input 0.0014 + output 0.0056, at 2.5 and 10 per "
                 "million input and output tokens)",
                 "nothing was asked of the model and nothing was written"]:
        assert line in text.splitlines()


def test_the_plan_holds_for_the_run_and_a_filled_store_is_reported(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as server:
        raw = plan_raw(server.base_url)
        task = units.write_task(tmp_path, raw, n_records=10)
        out = tmp_path / "run"
        before = json.loads(cli("optimize", str(task), "--out", str(out), "--dry-run",
                                "--json").output)
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        paid = len(server.requests)  # the server ignores n: one completion a request
        state = folder_state(out)
        after = json.loads(cli("optimize", str(task), "--out", str(out), "--dry-run",
                               "--json").output)
        text = cli("optimize", str(task), "--out", str(out), "--dry-run").output
        raw["train"]["seed"] = 1  # another split and other draws: no longer a rerun
        (tmp_path / "task.toml").write_text(units.to_toml(raw))
        other_seed = json.loads(cli("optimize", str(task), "--out", str(out), "--dry-run",
                                    "--json").output)
        assert len(server.requests) == paid  # the dry runs asked nothing
    assert folder_state(out) == state  # and wrote nothing, not even SQLite's -wal or -shm
    policy = json.loads((out / "policy.json").read_text())
    assert policy["trace"]["rounds_run"] == before["schedule"][0]["rounds"]
    assert paid <= before["completions"]["total_at_most"]
    with sqlite3.connect(out / "store.sqlite") as db:
        stored = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    assert stored == paid
    store = after["store"]
    # every stored completion is of this task's prompts on its queries, train or test
    assert store["completions"] == store["train_held"] + store["test_held"] == stored
    assert (store["rerun_of"], store["pay_at_most"]) == (1, 0)
    assert "run 1 finished this task with this seed and data: a rerun replays it and pays " \
           "nothing" in text
    store = other_seed["store"]
    assert store["rerun_of"] is None and store["pay_at_most"] == 56
    assert store["train_held"] + store["test_held"] == stored
    assert store["replay_at_most"] == min(56, stored)


def test_the_store_of_another_task_is_refused_as_optimize_refuses_it(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as server:
        raw = plan_raw(server.base_url)
        raw["train"]["budget"] = 8
        task = units.write_task(tmp_path, raw, n_records=10)
        out = tmp_path / "run"
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        raw["name"] = "another"
        (tmp_path / "task.toml").write_text(units.to_toml(raw))
        paid = len(server.requests)
        validate = cli("validate", str(task), "--out", str(out))
        dry = cli("optimize", str(task), "--out", str(out), "--dry-run")
        optimize = cli("optimize", str(task), "--out", str(out))
        shared = cli("validate", str(task), "--out", str(out), "--other-task")
        assert len(server.requests) == paid
    assert validate.exit_code == dry.exit_code == 1 and optimize.exit_code == 2
    assert "holds the runs of task 'unit-mv', not 'another'" in validate.output
    assert validate.output == dry.output and optimize.output.endswith("\n" + validate.output)
    assert shared.exit_code == 0


def test_without_prices_or_max_tokens_the_plan_says_so(tmp_path: Path) -> None:
    raw = units.mv_raw("http://127.0.0.1:9/v1")  # prompt b has no max_tokens
    task = units.write_task(tmp_path, raw)
    result = cli("optimize", str(task), "--out", str(tmp_path / "run"), "--dry-run")
    lines = result.output.splitlines()
    assert result.exit_code == 0
    assert "output unbounded (no max_tokens: b)" in lines[6]
    assert lines[7] == ("money: no prices given (add [pricing] input_per_million and "
                        "output_per_million to the task file)")


def test_json_goes_with_the_dry_run_only(tmp_path: Path) -> None:
    task = units.write_task(tmp_path, units.mv_raw("http://127.0.0.1:9/v1"))
    result = cli("optimize", str(task), "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 2 and "--json goes with --dry-run" in result.output


# --- [pricing] -------------------------------------------------------------------------------


@pytest.mark.parametrize("pricing, words", [
    ({"input_per_million": 0.15}, ["pricing.output_per_million", "missing"]),
    ({"input_per_million": -1, "output_per_million": 0.6}, ["pricing.input_per_million"]),
    ({"input_per_million": 0.15, "output_per_million": float("inf")},
     ["pricing.output_per_million", "finite"]),
    ({"input_per_million": 0.15, "output_per_million": 0.6, "currency": "EUR"},
     ["currency", "input_per_million"]),
    ("cheap", ["task.pricing", "table"]),
])
def test_bad_pricing_names_the_field(tmp_path: Path, pricing: Any, words: list[str]) -> None:
    raw = units.mv_raw("http://127.0.0.1:9/v1")
    raw["pricing"] = pricing
    with pytest.raises(TaskError) as err:
        load_task(units.write_task(tmp_path, raw))
    for word in words:
        assert word in str(err.value)


def test_prices_change_no_run(tmp_path: Path) -> None:
    raw = units.mv_raw("http://127.0.0.1:9/v1")
    plain = load_task(units.write_task(tmp_path, raw))
    raw["pricing"] = {"input_per_million": 0, "output_per_million": 1.5}
    priced = load_task(units.write_task(tmp_path, raw))
    assert priced.digest() == plain.digest() and plain.pricing is None
    assert (priced.pricing.input_per_million, priced.pricing.output_per_million) == (0.0, 1.5)


# --- the schedule: by hand, and as the learners run it -----------------------------------------


def sized_task(aggregator: str, prompts: int, n_max: int, budget: int, learner: str) -> Any:
    raw = units.mv_raw("http://127.0.0.1:9/v1")
    raw["prompts"] = [{"name": f"p{i}", "template": f"{i}: {{query}}"} for i in range(prompts)]
    raw["train"].update(n_max=n_max, budget=budget, learner=learner)
    if aggregator == "bon":
        raw["objectives"] = [{"name": "correct", "scorer": "exact_match"}]
        raw["aggregator"] = {"kind": "bon"}
    return task_from_dict(raw, Path("task.toml"))


SCHEDULES: list[tuple[str, int, int, int, str, list[dict[str, Any]]]] = [
    # R = ceil(log2 6) = 3; a round of groups of 3 of each prompt costs 6; 20 // 6 = 3
    ("mv", 2, 3, 20, "psst", [{"phase": "psst", "rounds": 3, "rounds_paper": 3}]),
    # 6 < 2 x 4: scale cap floor(6 / 2) = 3, a round costs 6, 6 // 6 = 1 round of R = 3
    ("mv", 2, 4, 6, "psst", [{"phase": "psst", "rounds": 1, "rounds_paper": 3}]),
    # T = 1 is below a completion per prompt: 1 prompt at N = 1, 1 // 1 = 1 round
    ("mv", 2, 4, 1, "psst", [{"phase": "psst", "rounds": 1, "rounds_paper": 3}]),
    ("mv", 2, 4, 0, "psst", [{"phase": "psst", "rounds": 0, "rounds_paper": 3}]),
    # one batch
    ("mv", 2, 4, 40, "uniform", [{"phase": "psst", "rounds": 1, "rounds_paper": 3}]),
    # groups of 2: a round costs 2 x 2 = 4, 6 // 4 = 1
    ("mv", 2, 4, 6, "psst-model", [{"phase": "psst", "rounds": 1, "rounds_paper": 3}]),
    # 5 prompts at N = 1: R = ceil(log2 5) = 3, a round costs 5, 100 // 5 = 20
    ("mv", 5, 4, 100, "triple-n1", [{"phase": "psst", "rounds": 3, "rounds_paper": 3}]),
    # psst-auto, MV: g = 2, rho T = 50, R_s = min(ceil(log2(5 / 2)) = 2, 50 // (5 x 2) = 5);
    # then each context keeps 2 prompts: at most ceil(log2(2 x 4)) = 3 rounds
    ("mv", 5, 4, 100, "psst-auto", [
        {"phase": "screening", "rounds": 2, "group": 2, "completions_at_most": 50},
        {"phase": "psst", "rounds_at_most": 3}]),
    # T = 18: rho T = 9 pays no round of 5 groups of 2 (9 // 10 = 0): no screening; PSST over
    # all 20 arms: R = ceil(log2 20) = 5; groups of 2 of 5 prompts cost 10, 18 // 10 = 1
    ("mv", 5, 4, 18, "psst-auto", [
        {"phase": "screening", "rounds": 0, "group": 2},
        {"phase": "psst", "rounds": 1, "rounds_paper": 5}]),
    # 2 prompts and keep = 2: nothing to screen; groups of 2 cost 4, 40 // 4 = 10 >= R = 3
    ("mv", 2, 4, 40, "psst-auto", [
        {"phase": "screening", "rounds": 0, "group": 2},
        {"phase": "psst", "rounds": 3, "rounds_paper": 3}]),
    # BoN: g = min(4, 4) = 4, R_s = min(2, 50 // 20 = 2) = 2; survivors: the union of the best
    # ceil(2 / 2) = 1 by the model and 1 by blocks, at most 2: at most 3 rounds
    ("bon", 5, 4, 100, "psst-auto", [
        {"phase": "screening", "rounds": 2, "group": 4, "completions_at_most": 50},
        {"phase": "psst", "rounds_at_most": 3}]),
    # Top-K, K = 1: rho T = 20, 4 per prompt at N = 1: 20 completions; 1 x 4 arms: R <= 2
    ("mv", 5, 4, 100, "psst-k1", [
        {"phase": "screening", "rounds": 1, "group": 1, "completions": 20},
        {"phase": "psst", "rounds_at_most": 2}]),
    ("mv", 5, 4, 100, "egreedy", []),
]


@pytest.mark.parametrize("aggregator, prompts, n_max, budget, learner, expected", SCHEDULES,
                         ids=[f"{a}-{p}x{n}-T{t}-{ln}" for a, p, n, t, ln, _ in SCHEDULES])
def test_the_schedule_is_the_learners(aggregator: str, prompts: int, n_max: int, budget: int,
                                      learner: str, expected: list[dict[str, Any]]) -> None:
    assert schedule(sized_task(aggregator, prompts, n_max, budget, learner)) == expected
    if not expected:
        return
    # the learner itself, on a simulated environment of the same sizes
    make = synth_bernoulli if aggregator == "mv" else synth_categorical
    env = make(seed=3, n_prompts=prompts, n_queries=30, n_max=n_max)
    trace = train_policy(env, learner, budget, seed=5).trace
    screened = [r for r in trace["rounds"] if r["round"] <= 0]  # PSST's are 1, 2, ...
    psst = expected[-1]
    if "rounds" in psst:
        assert trace["rounds_run"] == psst["rounds"]
    else:
        assert trace["rounds_run"] <= psst["rounds_at_most"]
    if len(expected) == 2:
        assert len(screened) == expected[0]["rounds"]
        assert sum(r["spent"] for r in screened) <= expected[0].get(
            "completions", expected[0].get("completions_at_most", 0))
