"""Feedback after serving: POST /v1/feedback (a gold answer or an objective's score for a
logged request; the same auth and limits as chat; a key rates only its own requests) and
`iapo label-log` (gold answers in bulk, all lines or none), against a real gateway process
and a real SQLite log."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from iapo.cli import main
from iapo.live.store import CompletionStore
from live_helpers import ScriptedServer
from test_gateway_production import keys_file
from test_serve import Gateway, mcq_policy

KEY_A = "sk-feedback-team-a-0123456789"
KEY_B = "sk-feedback-team-b-0123456789"


def post(gw: Gateway, body: object, key: str | None = KEY_A) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gw.url}/v1/feedback", json=body, headers=headers, timeout=10)


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    keys = keys_file(tmp_path, [{"name": "team-a", "key": KEY_A},
                                {"name": "team-b", "key": KEY_B, "requests_per_minute": 3}])
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (1, 1)]), "--keys", str(keys),
            "--log-store", str(log), api_key=KEY_A) as gw:
        yield gw, log


def test_feedback_is_stored_for_the_caller_s_own_request(served) -> None:  # type: ignore[no-untyped-def]
    gw, log = served
    mine = gw.ask({"budget": "low"}).id
    theirs = gw.as_key(KEY_B).chat.completions.create(
        model="iapo", messages=[{"role": "user", "content": "q"}],
        extra_body={"iapo_context": {"budget": "low"}}).id
    ok = post(gw, {"id": mine, "gold": "B"})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"object": "feedback", "request": mine, "kind": "gold",
                         "objective": None, "value": "B"}
    scored = post(gw, {"id": mine, "objective": "correct", "score": 0.25})
    assert scored.status_code == 200, scored.text
    # another key's request: 403, and nothing stored
    other = post(gw, {"id": theirs, "gold": "A"})
    assert other.status_code == 403 and "own requests" in other.json()["error"]["message"]
    with CompletionStore(log, create=False) as store:
        rows = store.feedback()
    assert [(f.request, f.caller, f.kind, f.objective, f.value, f.source) for f in rows] == [
        (mine, "team-a", "gold", None, "B", "api"),
        (mine, "team-a", "score", "correct", 0.25, "api")]


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"id": "chatcmpl-nope", "gold": "B"}, 404, "id", ["no logged request"]),
    ({"gold": "B"}, 400, "id", ["response's id"]),
    ({"id": "x", "gold": "B", "score": 1}, 400, "gold", ["either gold"]),
    ({"id": "x"}, 400, "gold", ["either gold"]),
    ({"id": "x", "objective": "speed", "score": 1}, 400, "objective", ["['correct']", "speed"]),
    ({"id": "x", "objective": "correct", "score": 1.5}, 400, "score", ["[0, 1]", "1.5"]),
    ({"id": "x", "gold": None}, 400, "gold", ["string or a finite number"]),
    ({"id": "x", "gold": " "}, 400, "gold", ["gold is empty"]),
    ({"id": "x", "gold": "Mars"}, 400, "gold", ["'Mars' gives no answer", "'multiple_choice'"]),
    ({"id": "x", "gold": 3}, 400, "gold", ["3 gives no answer", "no vote can match it"]),
    ({"id": "x", "gold": "B", "note": "hi"}, 400, "note", ["unknown field"]),
    (["not", "an", "object"], 400, None, ["JSON object"]),
])
def test_bad_feedback_says_what_is_wrong_and_stores_nothing(
        served, body: object, status: int, param: str | None, words: list[str]) -> None:  # type: ignore[no-untyped-def]
    gw, log = served
    r = post(gw, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param
    for w in words:
        assert w in err["message"]
    with CompletionStore(log, create=False) as store:
        assert store.feedback() == []


def test_feedback_needs_the_key_and_counts_against_its_rate_limit(served) -> None:  # type: ignore[no-untyped-def]
    from test_gateway_production import room_in_this_minute

    gw, _ = served
    client_b = gw.as_key(KEY_B)
    room_in_this_minute(15)  # its requests in one minute's window
    rid = client_b.chat.completions.create(
        model="iapo", messages=[{"role": "user", "content": "q"}],
        extra_body={"iapo_context": {"budget": "low"}}).id
    assert post(gw, {"id": rid, "gold": "B"}, key=None).status_code == 401
    assert post(gw, {"id": rid, "gold": "B"}, key="sk-wrong-key-0123456789").status_code == 401
    # team-b may make 3 requests a minute: one chat, then two feedbacks, then 429
    assert [post(gw, {"id": rid, "gold": "B"}, key=KEY_B).status_code for _ in range(3)] == \
        [200, 200, 429]


def test_feedback_without_a_log_says_how_to_get_one(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (1, 1)])) as gw:
        rid = gw.ask({"budget": "low"}).id
        r = httpx.post(f"{gw.url}/v1/feedback", json={"id": rid, "gold": "B"}, timeout=10)
    assert r.status_code == 404 and "--log-store" in r.json()["error"]["message"]


def test_label_log_attaches_gold_in_bulk_all_lines_or_none(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, log = served
    ids = [gw.ask({"budget": b}).id for b in ("low", "high", "low")]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join([
        json.dumps({"id": ids[0], "gold": "B"}),
        "{not json",
        json.dumps({"id": "chatcmpl-unknown", "gold": "A"}),
        json.dumps({"id": ids[1], "objective": "correct", "score": 1}),
        "",
        json.dumps({"id": ids[2], "gold": "C"}),
        json.dumps({"id": ids[2], "gold": ""}),
        json.dumps({"id": ids[2], "gold": "Mars"}),
    ]) + "\n")
    runner = CliRunner()
    bad = runner.invoke(main, ["label-log", str(log), str(labels)])
    assert bad.exit_code == 2
    assert "5 bad line(s), nothing attached" in bad.output
    for line in ("line 2: not valid JSON", "line 3: no logged request has id "
                 "'chatcmpl-unknown'", "line 4: label-log attaches gold answers",
                 "line 7: gold is empty", "line 8: gold 'Mars' gives no answer that the "
                 "task's 'multiple_choice' extractor reads"):
        assert line in bad.output
    with CompletionStore(log, create=False) as store:
        assert store.feedback() == []
    # the same gold twice for one request is one gold; a later file may give another
    labels.write_text("".join(json.dumps({"id": i, "gold": g}) + "\n"
                              for i, g in zip(ids, ["B", "A", "B"], strict=True))
                      + json.dumps({"id": ids[0], "gold": "B"}) + "\n")
    good = runner.invoke(main, ["label-log", str(log), str(labels)])
    assert good.exit_code == 0, good.output
    assert "attached 4 gold answers to 3 logged requests" in good.output
    again = runner.invoke(main, ["label-log", str(log), str(labels)])
    assert "(3 had one already: the latest counts)" in again.output
    with CompletionStore(log, create=False) as store:
        rows = store.feedback()
    assert [(f.request, f.value, f.source, f.caller) for f in rows[:4]] == [
        (ids[0], "B", "label-log", None), (ids[1], "A", "label-log", None),
        (ids[2], "B", "label-log", None), (ids[0], "B", "label-log", None)]
    missing = runner.invoke(main, ["label-log", str(tmp_path / "nope.sqlite"), str(labels)])
    assert missing.exit_code == 2 and "--log-store" in missing.output


def test_label_log_refuses_two_golds_for_one_request(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One file that gives a request two different golds is refused, naming the id and both
    lines, and nothing of it is attached (which gold counts would be a guess); the same gold
    given twice passes."""
    gw, log = served
    ids = [gw.ask({"budget": b}).id for b in ("low", "high")]
    labels = tmp_path / "labels.jsonl"
    lines = [(ids[0], "B"), (ids[1], "A"), (ids[0], "C"), None, (ids[0], "B"), (ids[1], "D")]
    labels.write_text("\n".join("" if line is None else json.dumps({"id": line[0],
                                                                     "gold": line[1]})
                                 for line in lines) + "\n")
    bad = CliRunner().invoke(main, ["label-log", str(log), str(labels)])
    assert bad.exit_code == 2
    assert "2 bad line(s), nothing attached" in bad.output
    assert (f"line 3: id '{ids[0]}' is given gold 'C' here and 'B' on line 1: give each "
            "request one gold, the right one") in bad.output
    assert f"line 6: id '{ids[1]}' is given gold 'D' here and 'A' on line 2" in bad.output
    assert "line 5" not in bad.output
    with CompletionStore(log, create=False) as store:
        assert store.feedback() == []


def test_a_gold_is_checked_as_the_task_reads_it(tmp_path: Path) -> None:
    """Majority voting reads the gold through the task's extractor, as it reads a vote: what
    it reads an answer from passes ('(B)', 'Answer: B'), the rest is named ('b', 'Mars', 3;
    the multiple_choice extractor reads capitals only). Best-of-N compares as its scorers
    do: a multiple_choice letter upper-cased among the objective's choices, a label
    case-folded among its labels; a scorer with no fixed answers lets every gold through."""
    import dataclasses

    from iapo.live.feedback import gold_problem
    from iapo.live.task import ObjectiveSpec, load_task
    from test_serve import mv_task

    mcq = load_task(mv_task(tmp_path, "http://127.0.0.1:9/v1"))
    assert [gold_problem(g, mcq) for g in ("B", " C ", "(B)", "Answer: B")] == [None] * 4
    for bad in ("b", "AB", 3, "Mars"):
        assert "extractor reads" in (gold_problem(bad, mcq) or ""), bad
    bon = dataclasses.replace(mcq, aggregator="bon")  # the mcq objective, choices "ABCD"
    assert gold_problem("b", bon) is None and gold_problem(" D", bon) is None
    assert gold_problem("E", bon) == (
        "gold 'E' can never be right for objective 'correct' (multiple_choice), whose answers "
        "are A, B, C, D: give the right answer as the task's data gives it")
    yes_no = dataclasses.replace(bon, objectives=(ObjectiveSpec(
        "correct", "label", 0.0, 1.0, {"labels": ["yes", "no"]}),))
    assert gold_problem("YES", yes_no) is None and gold_problem(" no", yes_no) is None
    assert "whose answers are yes, no" in (gold_problem("maybe", yes_no) or "")
    exact = dataclasses.replace(bon, objectives=(ObjectiveSpec("correct", "exact_match", 0.0,
                                                               1.0),))
    assert gold_problem("anything at all", exact) is None


def test_label_log_reads_the_task_a_policy_carries(tmp_path: Path) -> None:
    """A policy that embeds its task (as iapo optimize writes it) serves with no task file:
    label-log checks golds against the copy of the task the gateway stored in the log."""
    import shutil

    from iapo.live.task import load_task
    from iapo.policy import Policy
    from iapo.problem import Choice
    from iapo.serve.core import serving_section
    from test_serve import mv_task

    run, log = tmp_path / "run", tmp_path / "log.sqlite"
    run.mkdir()
    with ScriptedServer(answer="The answer is (B).") as up:
        task = load_task(mv_task(tmp_path, up.base_url))
        shutil.copy(tmp_path / "mcq.jsonl", run / "mcq.jsonl")
        grid = task.problem().grid
        Policy(task.name, "test", 10, 10, 0, {}, grid.keys, [Choice(0, 1, 0.5, 1)] * len(grid),
               serving=serving_section(task)).save(run / "policy.json")
        (tmp_path / "task.toml").unlink()  # the policy carries its task
        with Gateway(run / "policy.json", "--log-store", str(log)) as gw:
            rid = gw.ask({"budget": "low"}).id
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": rid, "gold": "Mars"}) + "\n")
    res = CliRunner().invoke(main, ["label-log", str(log), str(labels)])
    assert res.exit_code == 2 and "line 1: gold 'Mars' gives no answer" in res.output
    labels.write_text(json.dumps({"id": rid, "gold": "(B)"}) + "\n")
    res = CliRunner().invoke(main, ["label-log", str(log), str(labels)])
    assert res.exit_code == 0, res.output
