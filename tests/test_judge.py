"""The `judge` scorer: an LLM rates completions on a rubric.

The parser on hand-picked replies, P(yes) from hand-computed log-probabilities, the cache and
retries against a scripted loopback server, bad task files, and end to end with the real
SmolLM2 server as the judge: every judgement is paid once (the server's own request log counts
completions plus judgements), a rerun pays nothing, a rescoring reads every judgement from the
cache, and the judge's tokens are reported apart from the policy's.
"""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import LlamaServer
from iapo.live.judge import JudgeScorer, parse_rating, yes_probability
from iapo.live.oracle import TaskRuntime
from iapo.live.task import Record, TaskError, load_task
from live_helpers import ScriptedServer
from test_live_e2e import iapo, stored
from test_task_validation import base_raw, write_task

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("reply", "expected"), [
    ("7", 7.0),
    ("Rating: 8/10", 8.0),                        # the denominator is the upper bound
    ("I would rate this 6 out of 10.", 6.0),
    ("**9**", 9.0),
    ("Score: 7.5", 7.5),
    ("The response is good. 4", 4.0),
    ("10/10", 10.0),
    ("Question 1: rating 5", 5.0),               # the number after "rating", not the first
    ("Grade = 9/10 because it is right", 9.0),
    ("score: 4/5", 1 + 4 / 5 * 9),               # another scale: rescaled onto 1..10 = 8.2
    ("I give it a 3 (out of 5)", 1 + 3 / 5 * 9),
    ("0", None),                                   # outside 1..10
    ("Rating: 12", None),
    ("-3", None),
    ("nothing to read here", None),
])
def test_ratings_are_read_from_hand_picked_replies(reply: str, expected: float | None) -> None:
    got = parse_rating(reply, 1.0, 10.0)
    assert got == (None if expected is None else pytest.approx(expected))


def test_ratings_on_a_unit_scale() -> None:
    assert parse_rating("0.75", 0.0, 1.0) == 0.75
    assert parse_rating("8/10", 0.0, 1.0) == pytest.approx(0.8)
    assert parse_rating("Score: 1", 0.0, 1.0) == 1.0
    assert parse_rating("7", 0.0, 1.0) is None


def test_the_probability_of_yes_from_log_probabilities() -> None:
    tops = [{"token": "Yes", "logprob": -1.0}, {"token": "No", "logprob": -2.0},
            {"token": " yes", "logprob": -3.0}, {"token": "The", "logprob": -0.5}]
    choice = {"message": {"content": "Yes"},
              "logprobs": {"content": [{"token": "Yes", "logprob": -1.0, "top_logprobs": tops}]}}
    e1, e2, e3 = math.exp(-1), math.exp(-2), math.exp(-3)
    assert yes_probability(choice) == pytest.approx((e1 + e3) / (e1 + e2 + e3), rel=1e-12)
    # no log-probabilities: the reply's first word
    assert yes_probability({"message": {"content": "Yes, it does."}}) == 1.0
    assert yes_probability({"message": {"content": "no."}}) == 0.0
    assert yes_probability({"message": {"content": "Maybe"}}) is None
    # log-probabilities without yes or no among them: fall back to the reply
    other = {"message": {"content": "No"}, "logprobs": {"content": [
        {"token": "No", "logprob": -0.1, "top_logprobs": [{"token": "The", "logprob": -0.2}]}]}}
    assert yes_probability(other) == 0.0


def _judge_options(url: str, **kw: Any) -> dict[str, Any]:
    return {"base_url": url, "model": "judge", "rubric": "Is it right?", "lower": 1.0,
            "upper": 10.0, "max_retries": 2, **kw}


def test_a_judgement_is_paid_once_retried_on_5xx_and_a_bad_reply_is_a_failure(
        tmp_path: Path) -> None:
    replies = {"good": "Rating: 8/10", "vague": "It is fine."}
    with ScriptedServer(["500"], answer_of=lambda body: replies[
            "vague" if "VAGUE" in body["messages"][-1]["content"] else "good"]) as srv:
        judge = JudgeScorer(_judge_options(srv.base_url))
        judge.bind(tmp_path / "store.sqlite")
        # the ScriptedServer appends " seed=None" to its answer; the rating is still read
        assert judge("q", "an answer", None) == 8.0
        assert len(srv.requests) == 2  # a 500, then the retry
        assert judge("q", "an answer", None) == 8.0
        assert len(srv.requests) == 2  # cached: not asked again
        assert judge.usage.to_dict() == {"requests": 1, "cached": 1, "prompt_tokens": 7,
                                         "completion_tokens": 5}
        body = srv.requests[-1]
        assert body["model"] == "judge" and body["temperature"] == 0.0
        assert "Is it right?" in body["messages"][-1]["content"]
        assert "from 1 to 10" in body["messages"][0]["content"]
        with pytest.raises(ValueError, match="no rating"):
            judge("q", "VAGUE", None)
        with pytest.raises(ValueError, match="no rating"):  # the failure is cached too
            judge("q", "VAGUE", None)
        assert len(srv.requests) == 3
        # a second scorer on the same store reads the cache (a rerun, another run)
        again = JudgeScorer(_judge_options(srv.base_url))
        again.bind(tmp_path / "store.sqlite")
        assert again("q", "an answer", None) == 8.0 and len(srv.requests) == 3
        # another rubric is another judgement
        other = JudgeScorer(_judge_options(srv.base_url, rubric="Is it short?"))
        other.bind(tmp_path / "store.sqlite")
        assert other("q", "an answer", None) == 8.0 and len(srv.requests) == 4
        for j in (judge, again, other):
            j.close()
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == 3


def test_the_same_judgement_needed_twice_at_once_is_asked_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ScriptedServer(["slow"], slow_seconds=0.5, answer="7") as srv:
        judge = JudgeScorer(_judge_options(srv.base_url))
        judge.bind(tmp_path / "store.sqlite")
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda _: judge("q", "same text", None), range(4)))
        assert got == [7.0] * 4
        assert len(srv.requests) == 1
        assert judge.usage.requests == 1 and judge.usage.cached == 3
        judge.close()


def test_a_failing_judge_scores_the_lower_bound_and_is_counted(tmp_path: Path) -> None:
    with ScriptedServer(default="500") as srv:
        raw = base_raw()
        raw["aggregator"] = {"kind": "bon"}
        raw["objectives"] = [{"name": "judged", "scorer": "judge", "base_url": srv.base_url,
                              "model": "judge", "rubric": "Is it right?", "lower": 1.0,
                              "upper": 10.0, "max_retries": 1}]
        task = load_task(write_task(tmp_path, raw))
        runtime = TaskRuntime(task, [])
        answer, scores, failures = runtime.score(Record("x", "q", None), "text")
        assert scores == [1.0] and len(failures) == 1 and "judge failed" in failures[0]
        assert len(srv.requests) == 2


@pytest.mark.parametrize(("change", "field"), [
    ({"rubric": None}, "rubric"),
    ({"model": None}, "model"),
    ({"base_url": "localhost:8080"}, "base_url"),
    ({"mode": "stars"}, "mode"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"rubric": 3}, "rubric"),
    ({"temperature": 0.5}, "temperature"),   # not an option of the judge
])
def test_a_bad_judge_objective_names_the_field(tmp_path: Path, change: dict[str, Any],
                                               field: str) -> None:
    raw = base_raw()
    raw["aggregator"] = {"kind": "bon"}
    judge = {"name": "judged", "scorer": "judge", "base_url": "http://127.0.0.1:9/v1",
             "model": "m", "rubric": "Is it right?"}
    for k, v in change.items():
        if v is None:
            judge.pop(k)
        else:
            judge[k] = v
    raw["objectives"] = [judge]
    with pytest.raises(TaskError, match=field):
        load_task(write_task(tmp_path, raw))


def judge_task(tmp: Path, url: str) -> Path:
    """A Best-of-N task on the multiple-choice data, scored by SmolLM2 as its own judge: P(yes)
    on one rubric and a 1..10 rating on another."""
    shutil.copy(DATA / "mcq.jsonl", tmp / "mcq.jsonl")
    text = f"""
name = "judged-smollm2"

[model]
base_url = "{url}"
name = "smollm2"
concurrency = 2
timeout = 120
max_retries = 2

[[prompts]]
name = "direct"
template = "{{query}}\\nAnswer with the letter of the correct option only."
temperature = 0.8
max_tokens = 8

[[prompts]]
name = "short"
template = "{{query}}\\nAnswer:"
temperature = 1.0
max_tokens = 6

[data]
path = "mcq.jsonl"

[[objectives]]
name = "right"
scorer = "judge"
base_url = "{url}"
model = "smollm2"
rubric = "The response names one option and that option answers the question correctly."
mode = "yes"

[[objectives]]
name = "clear"
scorer = "judge"
base_url = "{url}"
model = "smollm2"
rubric = "The response is short and clear."
lower = 1
upper = 10
max_tokens = 8

[aggregator]
kind = "bon"

[contexts]
weights = [[0.5, 0.5]]
budgets = {{ low = 0.0, high = 1.0 }}

[train]
n_max = 2
learner = "psst"
budget = 8
seed = 0
"""
    path = tmp / "task.toml"
    path.write_text(text)
    return path


def judgements(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return int(db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0])


def test_smollm2_as_the_judge_is_paid_once_and_reported_apart(llama: LlamaServer,
                                                             tmp_path: Path) -> None:
    task = judge_task(tmp_path, llama.url)
    run = tmp_path / "run"
    store = run / "store.sqlite"
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run))
    requests = llama.settle() - before
    report = json.loads((run / "report.json").read_text())
    judge = report["judge"]
    completions = stored(store)
    # the server saw every completion once and every distinct judgement once
    assert requests == completions + judge["requests"]
    # two judge objectives per completion: asked, or read from the cache (a repeated text)
    assert judge["requests"] + judge["cached"] == 2 * completions
    assert judgements(store) == judge["requests"] > 0
    assert judge["prompt_tokens"] > 0 and judge["completion_tokens"] > 0
    with sqlite3.connect(store) as db:
        policy_tokens = db.execute("SELECT SUM(prompt_tokens + completion_tokens) "
                                   "FROM completions").fetchone()[0]
        scores = [json.loads(s) for (s,) in db.execute("SELECT scores FROM completions")]
    # the policy's tokens are the completions' alone; the judge's are reported apart
    assert report["training"]["tokens_paid"] + report["evaluation"]["tokens_paid"] == \
        policy_tokens
    assert all(0.0 <= s[0] <= 1.0 and 1.0 <= s[1] <= 10.0 for s in scores)
    assert any(0.0 < s[0] < 1.0 for s in scores)  # P(yes) from the server's logprobs
    assert "Judge scorer" in (run / "report.md").read_text()

    # a rerun pays nothing: no completion and no judgement
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run))
    assert llama.settle() - before == 0
    assert json.loads((run / "report.json").read_text())["judge"]["requests"] == 0

    # a changed gold rescores the stored texts: every judgement comes from the cache
    data = tmp_path / "mcq.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({**r, "gold": "A"}) + "\n" for r in rows))
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run))
    assert llama.settle() - before == 0
    again = json.loads((run / "report.json").read_text())["judge"]
    assert again["requests"] == 0 and again["cached"] > 0
    assert judgements(store) == judge["requests"]
