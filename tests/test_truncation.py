"""Completions cut by max_tokens (finish reason "length"): the numeric, multiple-choice and
label extractors and scorers read only an explicit answer from them (``aggregator.truncated =
"explicit"``, the default; ``"any"`` reads them as any other), the store keeps the finish
reason, and the report counts the cut completions per prompt.

The motivating texts: a completion cut while restating the question, "9 - 8 = " or
"4 minus 2 is ", used to be read as 8 and 2.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from iapo.live.optimize import collect
from iapo.live.oracle import TaskRuntime
from iapo.live.scorers import extract_label, extract_letter, extract_number, make_extractor
from iapo.live.store import CompletionStore, StoredCompletion
from iapo.live.task import Record, TaskError, load_records, load_task
from iapo.serve.core import serving_digest
from live_helpers import ScriptedServer, chat_completion, send_json
from test_live_units import cli, mv_raw, write_task

# --- the extractors on hand-written texts ----------------------------------------------------

ECHOES = ["9 - 8 = ", "4 minus 2 is "]


@pytest.mark.parametrize(("text", "today"), [("9 - 8 = ", "8"), ("4 minus 2 is ", "2")])
def test_an_echoed_question_is_no_answer_when_cut_and_its_last_number_when_not(
        text: str, today: str) -> None:
    assert extract_number(text, explicit_only=True) is None
    assert extract_number(text) == today  # an uncut text: its last number, as before


@pytest.mark.parametrize(("text", "answer"), [
    ("9 - 8 = 1, so the answer is 1", "1"),
    ("4 minus 2 is 2. The answer is 2. Check: 2 + 2 = 4, and 4 - ", "2"),
    ("Answer: -3.5 because 1 + ", "-3.5"),
    ("**Answer:** $1,250 since 5", "1250"),
    (r"so \boxed{12} and then 7 + ", "12"),
    ("#### 42\n\nWhy: 6 * 7 is 4", "42"),
    ("The answer is 3. Hmm, the answer is 4, since 1 + ", "4"),  # the last explicit one
])
def test_an_explicit_number_counts_in_a_cut_text(text: str, answer: str) -> None:
    assert extract_number(text, explicit_only=True) == answer


@pytest.mark.parametrize(("text", "cut", "whole"), [
    ("Which planet is red? A) Venus B) Mars C", None, "A"),
    ("The answer is (B). Because A) is", "B", "B"),
    ("Answer: C, since option D", "C", "C"),
    (r"Final: \boxed{D} as B", "D", "D"),
    ("The answer is a planet, B", None, "B"),  # "a" the article is no answer
])
def test_the_letter_of_a_cut_text_is_only_an_explicit_one(text: str, cut: str | None,
                                                         whole: str) -> None:
    assert extract_letter(text, explicit_only=True) == cut
    assert extract_letter(text) == whole


@pytest.mark.parametrize(("text", "cut", "whole"), [
    ("Is it yes or no? Well", None, "yes"),
    ("No, because the sky", "no", "no"),  # a label opening the reply is explicit
    ("The sky is blue, so yes or no", None, "yes"),
    ("Let me think. The answer is yes, since no", "yes", "yes"),
    ("Answer: \"No\". Yes, I", "no", "no"),
])
def test_the_label_of_a_cut_text_is_only_an_explicit_one(text: str, cut: str | None,
                                                        whole: str) -> None:
    assert extract_label(text, ["yes", "no"], explicit_only=True) == cut
    assert extract_label(text, ["yes", "no"]) == whole


def test_math_and_exact_read_a_cut_text_as_any_other() -> None:
    exact = make_extractor("exact", explicit_only=True)
    assert exact("9 - 8 = ") == "9 - 8 ="


# --- the task setting, through the runtime -----------------------------------------------------


def numeric_raw(url: str, truncated: str | None = None) -> dict[str, Any]:
    raw = mv_raw(url)
    raw["objectives"] = [{"name": "correct", "scorer": "numeric"}]
    raw["aggregator"] = {"kind": "mv", "extractor": "numeric"}
    if truncated is not None:
        raw["aggregator"]["truncated"] = truncated
    return raw


def runtime(tmp: Path, truncated: str | None) -> TaskRuntime:
    task = load_task(write_task(tmp, numeric_raw("http://127.0.0.1:9/v1", truncated),
                                gold="2"))
    return TaskRuntime(task, load_records(task.data_path))


@pytest.mark.parametrize("truncated", [None, "explicit"])
def test_a_cut_echo_scores_no_answer_and_zero_by_default(tmp_path: Path,
                                                         truncated: str | None) -> None:
    rt = runtime(tmp_path, truncated)
    record = Record("q", "What is 4 minus 2?", "2")
    assert rt.score(record, "4 minus 2 is ", "length") == (None, [0.0], [])
    assert rt.score(record, "4 minus 2 is ", "stop") == ("2", [1.0], [])
    assert rt.score(record, "4 minus 2 is ", None) == ("2", [1.0], [])  # unknown: not cut
    assert rt.score(record, "4 minus 2 is 2. The answer is 2. And ", "length") == \
        ("2", [1.0], [])


def test_truncated_any_restores_todays_reading(tmp_path: Path) -> None:
    rt = runtime(tmp_path, "any")
    record = Record("q", "What is 4 minus 2?", "2")
    assert rt.score(record, "4 minus 2 is ", "length") == ("2", [1.0], [])
    assert rt.score(record, "9 - 8 = ", "length") == ("8", [0.0], [])


def test_the_setting_is_validated_and_keys_the_stored_scores(tmp_path: Path) -> None:
    path = write_task(tmp_path, numeric_raw("http://127.0.0.1:9/v1", "some"))
    with pytest.raises(TaskError, match=r"aggregator.truncated 'some' must be \"explicit\""):
        load_task(path)
    record = Record("q", "x", "2")
    keys = {mode: runtime(tmp_path, mode).score_key(record)
            for mode in (None, "explicit", "any")}
    assert keys[None] == keys["explicit"] != keys["any"]  # a changed setting rescores


def test_the_serving_digest_of_a_default_task_is_unchanged(tmp_path: Path) -> None:
    digests = {mode: serving_digest(runtime(tmp_path, mode).task)
               for mode in (None, "explicit", "any")}
    assert digests[None] == digests["explicit"] != digests["any"]


# --- the store, the report ------------------------------------------------------------------


class CutServer(ScriptedServer):
    """Prompt 'a' (max_tokens 5) is cut while restating the question; prompt 'b' answers."""

    def respond(self, h: BaseHTTPRequestHandler, action: str, body: dict[str, Any]) -> None:
        cut = body.get("max_tokens") == 5
        text, reason = ("4 minus 2 is ", "length") if cut else ("The answer is 2.", "stop")
        send_json(h, chat_completion(body.get("model"), [text], reason, 5))


def test_the_store_keeps_the_finish_reason_and_the_report_counts_cut_completions(
        tmp_path: Path) -> None:
    with CutServer() as srv:
        raw = numeric_raw(srv.base_url)
        raw["train"].update(budget=30)
        task = write_task(tmp_path, raw, n_records=10, gold="2")
        out = tmp_path / "run"
        result = cli("optimize", str(task), "--out", str(out))
        assert result.exit_code == 0, result.output
    with CompletionStore(out / "store.sqlite", create=False) as store:
        rows = store.all_completions()
        names = {a["arm"]: a["prompt_name"] for a in store.arms()}
    by_prompt: dict[str, list[StoredCompletion]] = {"a": [], "b": []}
    for c in rows:
        by_prompt[names[c.arm]].append(c)
    assert {c.finish_reason for c in by_prompt["a"]} == {"length"}
    assert {c.finish_reason for c in by_prompt["b"]} == {"stop"}
    assert {c.answer for c in by_prompt["a"]} == {None}  # "4 minus 2 is " gives no answer
    assert {c.answer for c in by_prompt["b"]} == {"2"}
    report = json.loads((out / "report.json").read_text())
    # a first run replays nothing: the completions it used are the stored ones
    assert report["training"]["completions_replayed"] == 0
    assert report["truncated"] == [
        {"prompt": "a", "max_tokens": 5, "completions": len(by_prompt["a"]),
         "truncated": len(by_prompt["a"]), "share": 1.0},
        {"prompt": "b", "max_tokens": None, "completions": len(by_prompt["b"]),
         "truncated": 0, "share": 0.0}]
    md = (out / "report.md").read_text()
    assert f"| a | 5 | {len(by_prompt['a'])} | {len(by_prompt['a'])} | 100.0% |" in md
    assert "Prompt 'a': 100% of its completions hit max_tokens = 5; give it a larger " \
           "max_tokens (to 10 or more)" in md
    assert "Prompt 'b'" not in md
    assert [ch["prompt"] for ch in report["policy"]] == ["b", "b"]  # the cut prompt scores 0


def test_a_store_without_finish_reasons_reads_as_not_cut(tmp_path: Path) -> None:
    """Completions stored before finish reasons were kept (NULL) are read as uncut."""
    rt = runtime(tmp_path, None)
    path = tmp_path / "store.sqlite"
    with CompletionStore(path) as store:
        store.put(StoredCompletion("p", 0, "arm", "q0", "4 minus 2 is ", None, [], [], 7, 5,
                                   0.1, 1, score_key="old"))
    with CompletionStore(path) as store:  # opens again, the row as it was
        (c,) = store.all_completions()
    assert c.finish_reason is None
    assert rt.score(rt.records[0], c.text, c.finish_reason)[0] == "2"


# --- the real model ---------------------------------------------------------------------------


def test_a_tiny_max_tokens_is_recorded_as_length_by_the_real_model(llama: Any,
                                                                   tmp_path: Path) -> None:
    raw = numeric_raw(llama.url)
    raw["model"].update(name="smollm2", timeout=120)
    raw["prompts"] = [{"name": "tiny", "template": "Count from 1 to 20: {query}",
                       "max_tokens": 2, "temperature": 0.0}]
    task = load_task(write_task(tmp_path, raw, n_records=2, gold="2"))
    collect(task, tmp_path / "run", samples=1, progress=False)
    with CompletionStore(tmp_path / "run" / "store.sqlite", create=False) as store:
        rows = store.all_completions()
    assert len(rows) == 2
    assert {c.finish_reason for c in rows} == {"length"}
    assert all(c.completion_tokens <= 2 for c in rows)
