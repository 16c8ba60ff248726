"""Unit tests of the live path: task files, scorers, the store, the live oracle, and the live
commands (collect, export-env, answer, optimize) against real loopback HTTP servers.

Every expectation is computed here from the inputs (hand-written examples, the scorers'
formulas applied to the texts the server sent), never read back from the code under test.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from iapo import posterior
from iapo.cli import main
from iapo.envs import load_environment
from iapo.learners.base import Choice
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.scorers import (
    EXTRACTORS,
    check_scorer,
    extract_letter,
    extract_number,
    make_scorer,
)
from iapo.live.store import CompletionStore, StoredCompletion, arm_key
from iapo.live.task import TaskError, load_records, load_task
from iapo.policy import Policy
from iapo.pulls import BudgetExceededError, Pull
from live_helpers import ScriptedServer

# --- task files -----------------------------------------------------------------------------

# Scorers as user code: a function of the seed the ScriptedServer writes into every text
# ("... seed=<seed>"), so each completion's scores are known here from its request.
SCORER_CODE = '''
def seed_of(text):
    return int(text.rsplit("seed=", 1)[1])

def frac(query, completion, gold):
    return seed_of(completion) / 2**31

def mod3(query, completion, gold):
    return seed_of(completion) % 3

def mod5(query, completion, gold):
    return (seed_of(completion) % 5) / 4
'''


def seed_of(text: str) -> int:
    return int(text.rsplit("seed=", 1)[1])


def frac(seed: int) -> float:
    return seed / 2**31


def mod3(seed: int) -> float:
    return float(seed % 3)


def mod5(seed: int) -> float:
    return (seed % 5) / 4


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(raw: dict[str, Any]) -> str:
    """A task dict as TOML: scalars, then tables, then arrays of tables."""
    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {toml_value(v)}" for k, v in raw.items()
             if not isinstance(v, dict) and not is_tables(v)]
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += [f"[{k}]", *(f"{kk} = {toml_value(vv)}" for kk, vv in v.items())]
        elif is_tables(v):
            for row in v:
                lines += [f"[[{k}]]", *(f"{kk} = {toml_value(vv)}" for kk, vv in row.items())]
    return "\n".join(lines) + "\n"


def write_records(path: Path, n: int, gold: Any = "B") -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "query": f"question {i}", "gold": gold})
                            + "\n" for i in range(n)))
    return path


def mv_raw(url: str) -> dict[str, Any]:
    return {
        "name": "unit-mv",
        "model": {"base_url": url, "name": "m", "concurrency": 2, "timeout": 5,
                  "max_retries": 1, "supports_n": False},
        "prompts": [
            {"name": "a", "template": "Q: {query}", "max_tokens": 5},
            {"name": "b", "template": "Question: {query} Answer:", "system": "Be brief.",
             "temperature": 0.5},
        ],
        "data": {"path": "q.jsonl", "test_fraction": 0.2},
        "objectives": [{"name": "correct", "scorer": "multiple_choice"}],
        "aggregator": {"kind": "mv", "extractor": "multiple_choice"},
        "contexts": {"weights": [[1.0]], "budgets": {"low": 0.0, "high": 1.0}},
        "train": {"n_max": 3, "learner": "psst", "budget": 20, "seed": 0, "cost_scale": 0.2},
    }


def bon_raw(url: str, scorer_file: Path) -> dict[str, Any]:
    raw = mv_raw(url)
    raw["name"] = "unit-bon"
    raw["objectives"] = [
        {"name": "helpful", "scorer": "python", "callable": f"{scorer_file}:mod3",
         "lower": 0.0, "upper": 2.0},
        {"name": "harmless", "scorer": "python", "callable": f"{scorer_file}:mod5"},
    ]
    raw["aggregator"] = {"kind": "bon"}
    raw["contexts"] = {"weights": [[1.0, 0.0], [0.3, 0.7]], "budgets": {"low": 0.0, "high": 1.0}}
    raw["train"]["n_max"] = 4
    return raw


def write_task(tmp: Path, raw: dict[str, Any], n_records: int = 6, gold: Any = "B") -> Path:
    write_records(tmp / "q.jsonl", n_records, gold)
    path = tmp / "task.toml"
    path.write_text(to_toml(raw))
    return path


@pytest.fixture
def scorer_file(tmp_path: Path) -> Path:
    path = tmp_path / "user_scorers.py"
    path.write_text(SCORER_CODE)
    return path


def runtime_of(task_path: Path) -> TaskRuntime:
    task = load_task(task_path)
    return TaskRuntime(task, load_records(task.data_path))


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


# --- 1. task validation ----------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], object]


def _set(table: str, **kw: Any) -> Mutation:
    return lambda r: r[table].update(kw)


BAD_TASKS: list[tuple[str, Mutation, list[str]]] = [
    ("missing base_url", lambda r: r["model"].pop("base_url"), ["model.base_url", "missing"]),
    ("base_url not http", _set("model", base_url="ftp://host/v1"), ["model.base_url", "http"]),
    ("prompt without template", lambda r: r["prompts"][0].pop("template"),
     ["prompt 'a'", "no template"]),
    ("template without {query}", lambda r: r["prompts"][1].update(template="What now?"),
     ["prompt 'b'", "{query}"]),
    ("unknown prompt field", lambda r: r["prompts"][0].update(temprature=0.3),
     ["prompt 'a'", "temprature"]),
    ("duplicate prompt names", lambda r: r["prompts"][1].update(name="a"),
     ["prompt names", "distinct"]),
    ("unknown scorer", lambda r: r["objectives"][0].update(scorer="bleu"),
     ["objective 'correct'", "bleu"]),
    ("python scorer without callable", lambda r: r["objectives"][0].update(scorer="python"),
     ["objective 'correct'", "callable"]),
    ("http scorer without url", lambda r: r["objectives"][0].update(scorer="http"),
     ["objective 'correct'", "url"]),
    ("aggregator kind unknown", _set("aggregator", kind="vote"), ["aggregator.kind", "vote"]),
    ("mv without extractor", lambda r: r["aggregator"].pop("extractor"),
     ["aggregator.extractor", "missing"]),
    ("mv with two objectives", lambda r: (
        r["objectives"].append({"name": "short", "scorer": "exact_match"}),
        r["contexts"].update(weights=[[1.0, 1.0]])), ["aggregator.kind", "one objective"]),
    ("weights row of the wrong length", _set("contexts", weights=[[1.0], [0.5, 0.5]]),
     ["contexts.weights[1]"]),
    ("weight outside [0, 1]", _set("contexts", weights=[[1.5]]), ["contexts", "weight", "1.5"]),
    ("unknown learner", _set("train", learner="sgd"), ["train.learner", "sgd"]),
    ("negative budget", _set("train", budget=-1), ["train.budget"]),
    ("test_fraction 0", _set("data", test_fraction=0.0), ["data.test_fraction"]),
    ("test_fraction 1", _set("data", test_fraction=1), ["data.test_fraction"]),
    ("test_fraction above 1", _set("data", test_fraction=1.5), ["data.test_fraction"]),
]


@pytest.mark.parametrize("mutate, words", [(m, w) for _, m, w in BAD_TASKS],
                         ids=[name for name, _, _ in BAD_TASKS])
def test_bad_task_file_names_the_field(tmp_path: Path, mutate: Mutation,
                                       words: list[str]) -> None:
    raw = copy.deepcopy(mv_raw("http://127.0.0.1:1/v1"))
    mutate(raw)
    path = write_task(tmp_path, raw)
    with pytest.raises(TaskError) as err:
        load_task(path)
    for word in words:
        assert word in str(err.value)


MALFORMED: list[tuple[str, Mutation, str]] = [
    ("weight not a number", _set("contexts", weights=[["x"]]), "contexts.weights"),
    ("probabilities not a list", _set("contexts", probabilities=0.5), "contexts.probabilities"),
    ("probability not a number", _set("contexts", probabilities=["x", 0.5]),
     "contexts.probabilities"),
    ("bon with an unknown extractor", _set("aggregator", kind="bon", extractor="nope"),
     "aggregator.extractor"),
]


@pytest.mark.parametrize("mutate, field", [(m, f) for _, m, f in MALFORMED],
                         ids=[name for name, _, _ in MALFORMED])
def test_malformed_values_give_a_task_error_naming_the_field(tmp_path: Path, mutate: Mutation,
                                                            field: str) -> None:
    raw = copy.deepcopy(mv_raw("http://127.0.0.1:1/v1"))
    mutate(raw)
    path = write_task(tmp_path, raw)
    with pytest.raises(TaskError) as err:  # found when the file is read, not at run time
        runtime_of(path)
    assert field in str(err.value)


def test_the_unmutated_task_file_is_valid(tmp_path: Path) -> None:
    # the cases above fail because of their one change, not because the base is wrong
    load_task(write_task(tmp_path, mv_raw("http://127.0.0.1:1/v1")))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[model\nbase_url = 1\n')
    with pytest.raises(TaskError, match="not valid TOML"):
        load_task(bad)
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "nowhere.toml")


def test_api_key_env_must_name_a_set_variable(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    raw = mv_raw("http://127.0.0.1:1/v1")
    raw["model"]["api_key_env"] = "IAPO_UNIT_TEST_KEY"
    task = load_task(write_task(tmp_path, raw))
    monkeypatch.delenv("IAPO_UNIT_TEST_KEY", raising=False)
    with pytest.raises(TaskError, match=r"model\.api_key_env.*IAPO_UNIT_TEST_KEY"):
        task.model.api_key()
    monkeypatch.setenv("IAPO_UNIT_TEST_KEY", "sk-123")
    assert task.model.api_key() == "sk-123"


def test_valid_task_gives_the_right_problem(tmp_path: Path, scorer_file: Path) -> None:
    raw = bon_raw("http://127.0.0.1:8080/v1/", scorer_file)
    raw["data"]["path"] = "sub/q.jsonl"
    (tmp_path / "sub").mkdir()
    task = load_task(write_task(tmp_path, raw))
    assert task.model.base_url == "http://127.0.0.1:8080/v1"  # trailing slash dropped
    assert task.data_path == (tmp_path / "sub" / "q.jsonl").resolve()  # relative to the file
    assert task.prompts[0].decoding == {"max_tokens": 5}
    assert task.prompts[1].decoding == {"temperature": 0.5}
    assert task.prompts[1].render("2+2?") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Question: 2+2? Answer:"}]
    p = task.problem()
    assert p.prompts == ("a", "b") and p.n_max == 4 and p.aggregator == "bon"
    # weight vectors outer, budget levels inner
    assert p.grid.keys == [
        "helpful=1,harmless=0,budget=low", "helpful=1,harmless=0,budget=high",
        "helpful=0.3,harmless=0.7,budget=low", "helpful=0.3,harmless=0.7,budget=high"]
    assert p.grid.cost_weights.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert p.grid.probabilities.tolist() == [0.25] * 4
    assert [(o.name, o.lower, o.upper) for o in p.grid.objectives] == [
        ("helpful", 0.0, 2.0), ("harmless", 0.0, 1.0)]
    assert p.cost.upper == 0.2  # the wordiest prompt costs cost_scale


# --- 1b. dataset ------------------------------------------------------------------------------


def test_load_records_reads_ids_queries_and_gold(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "x", "query": "q1", "gold": 1234}\n\n{"query": "q2"}\n')
    recs = load_records(path)
    assert [(r.id, r.query, r.gold) for r in recs] == [("x", "q1", 1234), ("3", "q2", None)]


@pytest.mark.parametrize("text, words", [
    ('{"id": 1, "query": "a"}\n{"id": 2, "query": \n', [":2:", "not valid JSON"]),
    ('{"id": 1, "query": "a"}\n{"id": 2, "query": "b"}\n{"id": 3, "q": "c"}\n',
     [":3:", '"query"']),
    ('{"id": "a", "query": "a"}\n{"id": "a", "query": "b"}\n', [":2:", "'a'", "twice"]),
    ('{"id": "a", "query": "a"}\n', ["at least 2"]),
])
def test_load_records_errors(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    with pytest.raises(TaskError) as err:
        load_records(path)
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_load_records_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"data\.path .* does not exist"):
        load_records(tmp_path / "none.jsonl")


# --- 2. scorers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, letter", [
    ("The answer is (B).", "B"),
    ("B) Mars", "B"),
    ("I think C", "C"),
    ("answer: d", "D"),
    ("Answer: (e)", "E"),
    ("(C) because it is red", "C"),
    ("No idea at all.", None),
    ("", None),
])
def test_extract_letter(text: str, letter: str | None) -> None:
    assert extract_letter(text) == letter


def test_extract_letter_does_not_read_the_article_a_as_a_letter() -> None:
    # "a" here is the English article; the completion's letter is B
    assert extract_letter("The answer is a red planet, so (B).") == "B"


def test_multiple_choice_scorer() -> None:
    s = make_scorer("multiple_choice", {})
    assert s("q", "The answer is (B).", "B") == 1.0
    assert s("q", "The answer is (B).", " b ") == 1.0  # gold is read case-free
    assert s("q", "I think C", "B") == 0.0
    assert s("q", "No idea at all.", "B") == 0.0
    four = make_scorer("multiple_choice", {"choices": "ABCD"})
    assert four("q", "E", "E") == 0.0  # E is not an option here: no letter read
    assert s("q", "E", "E") == 1.0


@pytest.mark.parametrize("text, gold, score", [
    ("  Paris. ", "paris", 1.0),
    ("New   York!", "new york", 1.0),
    ("The Paris", "Paris", 0.0),
    ("4", 4, 1.0),
])
def test_exact_match_normalizes(text: str, gold: Any, score: float) -> None:
    assert make_scorer("exact_match", {})("q", text, gold) == score


@pytest.mark.parametrize("text, gold, options, score", [
    ("the total is 1,234.0", 1234, {}, 1.0),
    ("the total is 1,234.0", "1,234", {}, 1.0),
    ("3 apples, then 5", 3, {}, 0.0),  # the last number wins
    ("3 apples, then 5", "5", {}, 1.0),
    ("1234.0001", 1234, {}, 1.0),  # within the default relative 1e-6
    ("1234.0001", 1234, {"tolerance": 1e-9}, 0.0),
    ("it is 0.30000000000000004", 0.3, {}, 1.0),
    ("no number here", 0, {}, 0.0),
])
def test_numeric_scorer(text: str, gold: Any, options: dict[str, Any], score: float) -> None:
    assert make_scorer("numeric", options)("q", text, gold) == score


@pytest.mark.parametrize("text, canonical", [
    ("42", "42"), ("42.0", "42"), ("x = -0.5", "-0.5"), (".5", "0.5"),
    ("so -3.", "-3"), ("1e3", "1000"), ("1,000,000 and 7", "7"), ("none", None),
])
def test_numeric_extractor_canonical_forms(text: str, canonical: str | None) -> None:
    assert extract_number(text) == canonical
    assert EXTRACTORS["numeric"](text) == canonical


@pytest.mark.parametrize("text, gold, score", [
    ("\\frac{1}{2}", "0.5", 1.0),
    ("$\\frac{1}{2}$", "0.5", 1.0),
    ("0.5", "\\frac{1}{2}", 1.0),
    ("$x=2$", "2", 1.0),
    ("$x=3$", "2", 0.0),
    ("so the answer is \\boxed{7}", 7, 1.0),
    ("so the answer is \\boxed{8}", 7, 0.0),
    ("I do not know", "2", 0.0),
])
def test_math_scorer(text: str, gold: Any, score: float) -> None:
    assert make_scorer("math", {})("q", text, gold) == score


def test_exact_and_math_extractors() -> None:
    assert EXTRACTORS["exact"]("  Yes. ") == "yes"
    assert EXTRACTORS["exact"]("...") is None
    # equivalent forms read as the same answer; a different value as another
    assert EXTRACTORS["math"]("$\\frac{1}{2}$") == EXTRACTORS["math"]("$\\frac{2}{4}$")
    assert EXTRACTORS["math"]("$\\frac{1}{3}$") != EXTRACTORS["math"]("$\\frac{1}{2}$")
    assert EXTRACTORS["math"]("no math") is None


def test_python_scorer_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "my_reward.py"
    f.write_text("def score(query, completion, gold):\n"
                 "    return len(completion) + (10 if gold == query else 0)\n")
    s = make_scorer("python", {"callable": f"{f}:score"})
    assert s("a", "abcd", "b") == 4.0
    assert s("a", "abc", "a") == 13.0
    with pytest.raises(ValueError, match="no function 'nothing'"):
        make_scorer("python", {"callable": f"{f}:nothing"})
    with pytest.raises(ValueError, match="does not exist"):
        make_scorer("python", {"callable": f"{tmp_path / 'gone.py'}:score"})
    with pytest.raises(ValueError, match="module:function"):
        make_scorer("python", {"callable": "no_colon_here"})
    with pytest.raises(ValueError, match="unknown"):
        check_scorer("rouge", {})


class RewardServer:
    """A loopback reward model: /dict answers {"score": len/10}, /bare the bare number
    len/100, /fail HTTP 500. Records every body it receives."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                server.bodies.append(body)
                n = len(body["completion"])
                if self.path == "/fail":
                    self.send_response(500)
                    payload = b"{}"
                elif self.path == "/dict":
                    self.send_response(200)
                    payload = json.dumps({"score": n / 10, "other": 99}).encode()
                else:
                    self.send_response(200)
                    payload = json.dumps(n / 100).encode()
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def reward_server() -> Iterator[RewardServer]:
    srv = RewardServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_http_scorer_against_a_loopback_reward_model(reward_server: RewardServer) -> None:
    s = make_scorer("http", {"url": f"{reward_server.url}/dict"})
    assert s("what?", "abcd", "g") == pytest.approx(0.4)
    assert reward_server.bodies[-1] == {"query": "what?", "completion": "abcd", "gold": "g"}
    bare = make_scorer("http", {"url": f"{reward_server.url}/bare"})
    assert bare("q", "abcde", None) == pytest.approx(0.05)
    assert reward_server.bodies[-1]["gold"] is None


def test_runtime_score_clips_and_records_failures(tmp_path: Path,
                                                  reward_server: RewardServer) -> None:
    raw = mv_raw("http://127.0.0.1:1/v1")
    raw["aggregator"] = {"kind": "mixed", "extractor": "numeric"}
    raw["objectives"] = [
        {"name": "right", "scorer": "numeric"},
        {"name": "rm", "scorer": "http", "url": f"{reward_server.url}/dict", "lower": -1.0,
         "upper": 2.0},
        {"name": "broken", "scorer": "http", "url": f"{reward_server.url}/fail",
         "lower": -0.5},
    ]
    raw["contexts"]["weights"] = [[1.0, 0.5, 0.5]]
    runtime = runtime_of(write_task(tmp_path, raw, gold=12))
    record = runtime.records[0]
    text = "it is 12 and that is a long answer"  # 34 characters: the reward model says 3.4
    answer, scores, failures = runtime.score(record, text)
    assert answer == "12"
    assert scores == [1.0, 2.0, -0.5]  # 3.4 clipped to the upper bound 2; 500 -> lower bound
    assert len(failures) == 1 and failures[0].startswith("broken:")


# --- 3. store -------------------------------------------------------------------------------


def completion(pool: str = "pool", sample: int = 0, text: str = "t",
               tokens: int = 5) -> StoredCompletion:
    return StoredCompletion(pool, sample, "arm", "q0", text, "A", [1.0, 0.25], ["x: boom"], 7,
                            tokens, 0.5, 1000 + sample, "key", "stop", 1, ["HTTP 503"],
                            "http://h/v1")


def test_store_is_in_wal_mode(tmp_path: Path) -> None:
    with CompletionStore(tmp_path / "s.sqlite") as store:
        store.put(completion())
        with sqlite3.connect(tmp_path / "s.sqlite") as other:  # an independent connection
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            # committed at once: another connection sees the row
            assert other.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 1


def test_store_put_get_and_first_write_wins(tmp_path: Path) -> None:
    with CompletionStore(tmp_path / "s.sqlite") as store:
        for s in (0, 2, 5):
            store.put(completion(sample=s, text=f"text {s}"))
        store.put(completion(pool="other", sample=1))
        got = store.get("pool", [0])
        assert got == {0: completion(sample=0, text="text 0")}  # every field round-trips
        # only stored samples among those asked: 2 lies between 0 and 5 but was not asked
        assert sorted(store.get("pool", [0, 1, 5])) == [0, 5]
        assert sorted(store.get("pool", range(7))) == [0, 2, 5]
        assert store.get("nothing", [0]) == {} and store.get("pool", []) == {}
        store.put(completion(sample=2, text="a second answer"))
        assert store.get("pool", [2])[2].text == "text 2"
        assert store.count() == 4
        assert store.pool_sizes() == {"pool": 3, "other": 1}


def test_store_meta_round_trip(tmp_path: Path) -> None:
    with CompletionStore(tmp_path / "s.sqlite") as store:
        assert store.get_meta("task", "none") == "none"
        value = {"name": "t", "raw": {"a": [1, 2.5, None], "b": "ü"}}
        store.set_meta("task", value)
        store.set_meta("other", 3)
    with CompletionStore(tmp_path / "s.sqlite") as store:  # it was committed
        assert store.get_meta("task") == value and store.get_meta("other") == 3
        store.set_meta("other", [4])
        assert store.get_meta("other") == [4]


def test_store_records_every_run(tmp_path: Path) -> None:
    with CompletionStore(tmp_path / "s.sqlite") as store:
        first = store.start_run("optimize", "t", "d1", 0)
        store.update_run(first, 5, 2, 40)
        second = store.start_run("optimize", "t", "d1", 0)
        store.update_run(second, 0, 7, 0, "finished")
        runs = store.runs()
    assert [(r["id"], r["status"], r["paid"], r["replayed"], r["tokens"]) for r in runs] == [
        (first, "running", 5, 2, 40), (second, "finished", 0, 7, 0)]
    assert runs[1]["finished"] is not None and runs[0]["finished"] is None


def test_arm_key_depends_on_everything_but_the_query() -> None:
    base = ("m", "Q: {query}", "sys", {"temperature": 0.5, "max_tokens": 8})
    key = arm_key(*base)
    assert arm_key("m", "Q: {query}", "sys", {"max_tokens": 8, "temperature": 0.5}) == key
    assert arm_key("m2", *base[1:]) != key
    assert arm_key("m", "Q:{query}", *base[2:]) != key
    assert arm_key("m", "Q: {query}", None, base[3]) != key
    assert arm_key("m", "Q: {query}", "sys", {"temperature": 0.6, "max_tokens": 8}) != key
    assert arm_key("m", "Q: {query}", "sys", {"temperature": 0.5}) != key


# --- 4. live oracle ---------------------------------------------------------------------------


def test_budget_ledger_refuses_overspending_before_any_request(tmp_path: Path) -> None:
    with ScriptedServer() as srv:
        runtime = runtime_of(write_task(tmp_path, mv_raw(srv.base_url)))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, [0, 1, 2], 5, np.random.default_rng(0))
            with pytest.raises(BudgetExceededError):
                oracle.pull([Pull(0, 2, 2), Pull(1, 1, 2)])  # 6 > 5
            assert len(srv.requests) == 0 and store.count() == 0 and oracle.ledger.spent == 0
            oracle.pull([Pull(0, 1, 3), Pull(1, 2, 1)])  # exactly 5
            assert oracle.ledger.spent == 5 and len(srv.requests) == 5
            with pytest.raises(BudgetExceededError):
                oracle.pull([Pull(1, 1, 1)])
            assert len(srv.requests) == 5 and oracle.ledger.spent == 5


def test_paired_pulls_ask_the_model_on_shared_queries(tmp_path: Path) -> None:
    with ScriptedServer() as srv:
        runtime = runtime_of(write_task(tmp_path, mv_raw(srv.base_url)))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, np.arange(6), 100, np.random.default_rng(4))
            a, alone, b, more = oracle.pull([Pull(0, 1, 12, True), Pull(0, 1, 12),
                                             Pull(1, 2, 5, True), Pull(1, 1, 7, True)])
            np.testing.assert_array_equal(b.queries, a.queries[:5])
            np.testing.assert_array_equal(more.queries, a.queries[5:])  # its prompt's next
            assert not np.array_equal(alone.queries, a.queries)  # 6^-12 by chance
            # every completion asked for, on the queries the observations name
            assert len(srv.requests) == oracle.ledger.spent == 12 + 12 + 10 + 7
            assert store.count() == 41


def test_pool_never_repeats_a_sample_within_a_run_and_a_rerun_replays(
        tmp_path: Path, scorer_file: Path) -> None:
    raw = bon_raw("", scorer_file)
    raw["objectives"] = [{"name": "r", "scorer": "python", "callable": f"{scorer_file}:frac"}]
    raw["contexts"]["weights"] = [[1.0]]
    pulls = [[Pull(0, 2, 1)], [Pull(0, 1, 2)], [Pull(1, 2, 1), Pull(0, 1, 1)]]
    with ScriptedServer() as srv:
        raw["model"]["base_url"] = srv.base_url
        runtime = runtime_of(write_task(tmp_path, raw))
        arm0 = runtime.arms[0]
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, [2], 100, np.random.default_rng(7))
            first = [oracle.pull(b) for b in pulls]
            # prompt 0 was pulled 2 + 2 + 1 times on query 2: samples 0..4, each once
            pool0 = runtime.pool(0, 2)
            assert sorted(store.get(pool0, range(10))) == [0, 1, 2, 3, 4]
            assert len(srv.requests) == 7 and store.count() == 7
            seeds = [r["seed"] for r in srv.requests]
            assert len(set(seeds)) == 7
            seen0 = [v for batch in first for o in batch if o.prompt == 0
                     for v in o.scores[..., 0].ravel()]
            stored0 = [c.scores[0] for c in store.all_completions() if c.arm == arm0]
            assert sorted(seen0) == sorted(stored0)  # every stored sample seen exactly once
            assert sorted(stored0) == sorted(frac(seed_of(c.text))
                                             for c in store.all_completions() if c.arm == arm0)
            assert all((o.queries == 2).all() for batch in first for o in batch)

            again = LiveOracle(runtime, store, [2], 100, np.random.default_rng(7))
            replay = [again.pull(b) for b in pulls]
            assert len(srv.requests) == 7 and again.paid == 0
            for a, b in zip(first, replay, strict=True):
                for oa, ob in zip(a, b, strict=True):
                    assert np.array_equal(oa.scores, ob.scores)
            again.pull([Pull(0, 1, 1)])  # past the pool: sample 5 is new
            assert len(srv.requests) == 8 and 5 in store.get(pool0, [5])


def test_cost_column_is_this_runs_normalized_mean_tokens(tmp_path: Path) -> None:
    with ScriptedServer() as srv:  # 5 completion tokens per answer
        runtime = runtime_of(write_task(tmp_path, mv_raw(srv.base_url)))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            def put(pool: str, s: int, tokens: int) -> None:
                store.put(StoredCompletion(pool, s, runtime.arms[1], "q", "x", None, [0.0], [],
                                           7, tokens, 0.1, s, runtime.score_key(
                                               runtime.records[0])))

            put(runtime.pool(1, 0), 0, 10)  # prompt 1 on query 0: samples of 10 and 30
            put(runtime.pool(1, 0), 1, 30)
            put(runtime.pool(1, 5), 0, 1000)  # a query this run never draws: never counts
            oracle = LiveOracle(runtime, store, [0], 100, np.random.default_rng(0))
            (o,) = oracle.pull([Pull(0, 2, 1)])
            # only prompt 0 seen (mean 5): it is the wordiest so far -> cost_scale
            assert np.allclose(o.scores[..., -1], 0.2)
            (o,) = oracle.pull([Pull(1, 1, 1)])  # replays the 10-token sample
            assert np.allclose(o.scores[..., -1], 0.2)  # prompt 1: mean 10, the largest
            (o,) = oracle.pull([Pull(0, 1, 1)])
            assert np.allclose(o.scores[..., -1], 0.2 * 5 / 10)
            oracle.pull([Pull(1, 1, 1)])  # the 30-token sample: prompt 1's mean is 20
            (o,) = oracle.pull([Pull(0, 1, 1)])
            assert np.allclose(o.scores[..., -1], 0.2 * 5 / 20)
            # each sample keeps the cost first charged for it
            costs = {(c.pool, c.sample): c.cost for c in store.all_completions()}
            assert costs[(runtime.pool(1, 0), 1)] == pytest.approx(0.2)
            assert costs[(runtime.pool(1, 5), 0)] is None


def test_mv_labels_gold_first_then_answers_then_no_answer(tmp_path: Path) -> None:
    with ScriptedServer() as srv:
        runtime = runtime_of(write_task(tmp_path, mv_raw(srv.base_url), gold="B"))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, [1], 100, np.random.default_rng(0))

            def pull_with(answer: str) -> tuple[list[int], list[float], list[int]]:
                srv.answer = answer
                (o,) = oracle.pull([Pull(0, 2, 1)])
                assert o.labels is not None and o.gold is not None
                return o.labels.ravel().tolist(), o.scores[..., 0].ravel().tolist(), \
                    o.gold.tolist()

            assert pull_with("The answer is (B).") == ([0, 0], [1.0, 1.0], [0])
            assert pull_with("The answer is (C).") == ([1, 1], [0.0, 0.0], [0])
            assert pull_with("Nothing to say here.") == ([2, 2], [0.0, 0.0], [0])
            assert pull_with("The answer is (C).") == ([1, 1], [0.0, 0.0], [0])
            assert pull_with("The answer is (D).") == ([3, 3], [0.0, 0.0], [0])
            assert pull_with("Answer: (b)") == ([0, 0], [1.0, 1.0], [0])
            (o,) = oracle.pull([Pull(0, 2, 1)])  # the query's "no answer" is category 2
            assert o.no_answer is not None and o.no_answer.tolist() == [2]


def test_mixed_observation_has_labels_and_k_plus_1_scores(tmp_path: Path,
                                                          scorer_file: Path) -> None:
    raw = mv_raw("")
    raw["aggregator"] = {"kind": "mixed", "extractor": "multiple_choice"}
    raw["objectives"].append({"name": "r", "scorer": "python",
                              "callable": f"{scorer_file}:frac"})
    raw["contexts"]["weights"] = [[1.0, 0.5]]
    with ScriptedServer(answer="The answer is (A).") as srv:
        raw["model"]["base_url"] = srv.base_url
        runtime = runtime_of(write_task(tmp_path, raw, gold="B"))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, [0, 1, 2, 3], 100, np.random.default_rng(3))
            (o,) = oracle.pull([Pull(1, 2, 3)])
    assert o.labels is not None and o.labels.shape == (3, 2)
    assert (o.labels == 1).all()  # A, not the gold B
    assert o.gold is not None and (o.gold == 0).all()
    assert o.scores.shape == (3, 2, 3)
    assert (o.scores[..., 0] == 0.0).all()
    assert sorted(o.scores[..., 1].ravel()) == pytest.approx(
        sorted(frac(r["seed"]) for r in srv.requests))
    assert np.allclose(o.scores[..., 2], 0.2)


def test_bon_observation_scores_from_a_python_scorer(tmp_path: Path, scorer_file: Path) -> None:
    with ScriptedServer() as srv:
        runtime = runtime_of(write_task(tmp_path, bon_raw(srv.base_url, scorer_file)))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, [0, 1, 2, 3], 100, np.random.default_rng(1))
            (o,) = oracle.pull([Pull(1, 3, 2)])
    assert o.labels is None and o.gold is None
    assert o.scores.shape == (2, 3, 3)
    got = sorted(map(tuple, o.scores[..., :2].reshape(-1, 2).tolist()))
    want = sorted((mod3(r["seed"]), mod5(r["seed"])) for r in srv.requests)
    assert len(srv.requests) == 6 and got == want


# --- 5. collect and export-env ---------------------------------------------------------------


def test_collect_then_export_env_bon(tmp_path: Path, scorer_file: Path) -> None:
    with ScriptedServer() as srv:
        raw = bon_raw(srv.base_url, scorer_file)
        task = write_task(tmp_path, raw, n_records=4)
        out = tmp_path / "run"
        res = cli("collect", str(task), "--out", str(out), "--samples", "3")
        assert res.exit_code == 0, res.output
        assert len(srv.requests) == 2 * 4 * 3
        res = cli("collect", str(task), "--out", str(out), "--samples", "3")
        assert res.exit_code == 0 and len(srv.requests) == 24  # all stored: nothing asked
    env_path = tmp_path / "env.npz"
    res = cli("export-env", str(out / "store.sqlite"), "--out", str(env_path))
    assert res.exit_code == 0, res.output
    assert "2 prompts and 4 queries" in res.output

    env = load_environment(env_path)
    assert env.problem.n_prompts == 2 and env.n_queries == 4 and env.problem.n_max == 4
    assert env.problem.prompts == ("a", "b")
    assert env.problem.grid.keys == load_task(task).problem().grid.keys
    assert env.scores.shape == (2, 4, 3, 3)
    assert np.allclose(env.probs, 1 / 3)  # 3 stored completions per pair
    assert np.allclose(env.scores[..., -1], 0.2)  # equal tokens: both prompts cost cost_scale
    with sqlite3.connect(out / "store.sqlite") as db:
        runtime = runtime_of(task)
        for p in range(2):
            for j in range(4):
                rows = db.execute("SELECT text, scores FROM completions WHERE pool = ?",
                                  (runtime.pool(p, j),)).fetchall()
                stored = sorted(tuple(json.loads(s)) for _, s in rows)
                # the stored scores are the scorer's formula of the text...
                assert stored == sorted((mod3(seed_of(t)), mod5(seed_of(t))) for t, _ in rows)
                # ...and the exported support points are those vectors
                assert sorted(map(tuple, env.scores[p, j, :, :2].tolist())) == stored


def partial_store(tmp_path: Path, scorer_file: Path, prompt1_queries: list[int]) -> Path:
    """A store with prompt 0 on all 4 queries and prompt 1 on ``prompt1_queries`` only."""
    with ScriptedServer() as srv:
        runtime = runtime_of(write_task(tmp_path, bon_raw(srv.base_url, scorer_file), 4))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            runtime.register(store)
            oracle = LiveOracle(runtime, store, range(4), 100, np.random.default_rng(0))
            oracle.serve([(0, q, [0, 1]) for q in range(4)]
                         + [(1, q, [0]) for q in prompt1_queries])
    return tmp_path / "s.sqlite"


def test_export_env_keeps_queries_lacking_a_prompt_as_unobserved_pairs(
        tmp_path: Path, scorer_file: Path) -> None:
    from iapo.oracle import SimulatedOracle

    store = partial_store(tmp_path, scorer_file, [1, 3])
    res = cli("export-env", str(store), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 0, res.output
    assert "4 queries" in res.output and "2 (prompt, query) pairs have no samples" in res.output
    env = load_environment(tmp_path / "e.npz")
    assert env.n_queries == 4
    assert env.observed is not None
    assert env.observed.tolist() == [[True] * 4, [False, True, False, True]]
    # support of 2 (prompt 0 has 2 per pair, prompt 1 one: padded with probability 0)
    assert env.probs[0].tolist() == [[0.5, 0.5]] * 4
    # Q of prompt 1 averages over queries 1 and 3 only: worked out from the stored texts
    with sqlite3.connect(store) as db:
        runtime = runtime_of(tmp_path / "task.toml")
        texts = [db.execute("SELECT text FROM completions WHERE pool = ?",
                            (runtime.pool(1, q),)).fetchone()[0] for q in (1, 3)]
    cost = float(env.scores[1, 1, 0, -1])
    for c, (w, cw) in enumerate(zip(env.problem.grid.weights, env.problem.grid.cost_weights,
                                    strict=True)):
        want = np.mean([w[0] * mod3(seed_of(t)) + w[1] * mod5(seed_of(t)) for t in texts])
        assert env.q()[c, 1, 0] == pytest.approx(want - cw * cost)
        # on a split where prompt 1 is observed once, that query alone
        t1 = texts[0]
        assert env.q([0, 1, 2])[c, 1, 0] == pytest.approx(
            w[0] * mod3(seed_of(t1)) + w[1] * mod5(seed_of(t1)) - cw * cost)
        # a query named twice counts twice, as in the unmasked mean
        t3 = texts[1]
        assert env.q([1, 3, 3])[c, 1, 0] == pytest.approx(np.mean([
            w[0] * mod3(seed_of(t)) + w[1] * mod5(seed_of(t)) for t in (t1, t3, t3)]) - cw * cost)
    # a simulated pull of prompt 1 draws only where it was observed
    oracle = SimulatedOracle(env, np.arange(4), 100, np.random.default_rng(0))
    (obs,) = oracle.pull([Pull(1, 1, 40)])
    assert set(obs.queries.tolist()) == {1, 3}
    oracle = SimulatedOracle(env, np.array([0, 2]), 100, np.random.default_rng(0))
    with pytest.raises(ValueError, match="prompt 1 has no data"):
        oracle.pull([Pull(0, 1, 1), Pull(1, 1, 1)])
    assert oracle.ledger.spent == 0  # all or nothing


@pytest.mark.parametrize(("rule", "answers"), [("abstain", 2), ("vote", 3)])
def test_export_env_carries_the_task_s_rule_and_declared_answers(
        tmp_path: Path, rule: str, answers: int) -> None:
    """A yes/no label task declares two answers under the abstain rule, three under the vote
    rule ("no answer" a third); its exported environment's problem says the same, so a replay
    of two labels skips the evidence that binary-looking answers need, as the live run did."""
    from iapo import posterior

    raw = mv_raw("")
    raw["objectives"] = [{"name": "correct", "scorer": "label", "labels": ["yes", "no"]}]
    raw["aggregator"] = {"kind": "mv", "extractor": "label", "labels": ["yes", "no"],
                         "no_answer": rule}
    with ScriptedServer(answer_of=lambda body: "No." if int(body.get("seed", 0)) % 3
                        else "Yes.") as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw, n_records=4, gold="yes")
        res = cli("collect", str(task), "--out", str(tmp_path / "run"), "--samples", "3")
        assert res.exit_code == 0, res.output
    res = cli("export-env", str(tmp_path / "run" / "store.sqlite"), "--out",
              str(tmp_path / "e.npz"))
    assert res.exit_code == 0, res.output
    env = load_environment(tmp_path / "e.npz")
    assert env.problem.no_answer == rule and env.problem.answers == answers
    assert posterior.evidence_needed(env.problem) == (0 if answers == 2
                                                      else posterior.BINARY_EVIDENCE)


def test_export_env_needs_only_the_store(tmp_path: Path, scorer_file: Path) -> None:
    # the scores are stored: exporting must not need the scorer's code any more
    store = partial_store(tmp_path, scorer_file, [0, 1, 2, 3])
    scorer_file.unlink()
    res = cli("export-env", str(store), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 0, res.output
    assert load_environment(tmp_path / "e.npz").n_queries == 4


def test_export_env_errors(tmp_path: Path, scorer_file: Path) -> None:
    store = partial_store(tmp_path, scorer_file, [])
    res = cli("export-env", str(store), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 2 and "prompt(s) ['b'] have no stored completions" in res.output
    assert not (tmp_path / "e.npz").exists()

    res = cli("export-env", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 2 and "does not exist" in res.output

    CompletionStore(tmp_path / "bare.sqlite").close()
    res = cli("export-env", str(tmp_path / "bare.sqlite"), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 2 and "no task metadata" in res.output


# --- 6. answer --------------------------------------------------------------------------------


def write_policy(path: Path, task_path: Path, choices: list[Choice]) -> Path:
    task = load_task(task_path)
    Policy(env=task.name, learner="psst", budget=0, completions_used=0, seed=0, split={},
           contexts=task.problem().grid.keys, choices=choices,
           trace={"task": {"path": str(task_path)}}).save(path)
    return path


def test_answer_mv_votes(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (A).") as srv:
        task = write_task(tmp_path, mv_raw(srv.base_url))
        policy = write_policy(tmp_path / "p.json", task,
                              [Choice(1, 3, 0.5, 1), Choice(0, 1, 0.5, 1)])
        res = cli("answer", str(policy), "Which planet is red?", "--context", "budget=low",
                  "--json", "--seed", "4")
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["answer"] == "A" and out["votes"] == {"A": 3} and out["n"] == 3
        assert out["prompt"] == "b" and out["context"] == "budget=low"
        assert len(srv.requests) == 3
        assert all(r["messages"] == [{"role": "system", "content": "Be brief."},
                                     {"role": "user",
                                      "content": "Question: Which planet is red? Answer:"}]
                   and r["temperature"] == 0.5 for r in srv.requests)
        assert len({r["seed"] for r in srv.requests}) == 3  # independent samples

        res = cli("answer", str(policy), "Which?", "--context", "budget=high")
        assert res.exit_code == 0, res.output
        assert "answer: A" in res.output and len(srv.requests) == 4


def test_answer_bon_picks_the_best_weighted_score(tmp_path: Path, scorer_file: Path) -> None:
    with ScriptedServer() as srv:
        task = write_task(tmp_path, bon_raw(srv.base_url, scorer_file))
        choices = [Choice(0, 1, 0.0, 1)] * 3 + [Choice(1, 4, 0.0, 1)]
        policy = write_policy(tmp_path / "p.json", task, choices)
        res = cli("answer", str(policy), "Say something", "--context",
                  "helpful=0.3,harmless=0.7,budget=high", "--json", "--seed", "11")
        assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 4 and out["prompt"] == "b" and len(srv.requests) == 4
    seeds = [seed_of(s["text"]) for s in out["samples"]]
    assert sorted(seeds) == sorted(r["seed"] for r in srv.requests)
    values = [0.3 * mod3(s) + 0.7 * mod5(s) for s in seeds]
    assert len(set(values)) > 1  # the choice is a real one
    assert [s["scores"] for s in out["samples"]] == [
        {"helpful": mod3(s), "harmless": mod5(s)} for s in seeds]
    assert out["choice"] == int(np.argmax(values))
    assert out["text"] == out["samples"][int(np.argmax(values))]["text"]
    assert out["values"] == pytest.approx(values)


def test_answer_bon_scorer_failure_scores_the_minimum_as_in_training(tmp_path: Path) -> None:
    flaky = tmp_path / "flaky.py"
    flaky.write_text("calls = []\n"
                     "def score(query, completion, gold):\n"
                     "    calls.append(1)\n"
                     "    if len(calls) == 1:\n"
                     "        raise RuntimeError('reward model boom')\n"
                     "    return 0.5\n")
    with ScriptedServer() as srv:
        raw = mv_raw(srv.base_url)
        raw["objectives"] = [{"name": "r", "scorer": "python", "callable": f"{flaky}:score",
                              "lower": 0.1}]
        raw["aggregator"] = {"kind": "bon"}
        task = write_task(tmp_path, raw)
        policy = write_policy(tmp_path / "p.json", task, [Choice(0, 3, 0.0, 1)] * 2)
        res = cli("answer", str(policy), "q", "--context", "budget=low", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    # the failed sample is scored at the objective's lower bound, as training scores it, and
    # the failure is reported with it; the first of the two 0.5s is chosen
    assert out["values"] == [0.1, 0.5, 0.5]
    assert "reward model boom" in out["samples"][0]["failures"][0]
    assert out["choice"] == 1


@pytest.mark.parametrize("context, words", [
    ("colour=red,budget=low", ["colour"]),
    ("budget=medium", ["no context matches", "medium", "budget=low, budget=high"]),
    ("low", ["KEY=VALUE"]),
])
def test_answer_bad_context_exits_2(tmp_path: Path, context: str, words: list[str]) -> None:
    with ScriptedServer() as srv:
        task = write_task(tmp_path, mv_raw(srv.base_url))
        policy = write_policy(tmp_path / "p.json", task, [Choice(0, 1, 0.0, 1)] * 2)
        res = cli("answer", str(policy), "q", "--context", context)
        assert res.exit_code == 2
        for word in words:
            assert word in res.output
        assert len(srv.requests) == 0


# --- 7. optimize ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["one wrong", "third answer", "two labels"])
def test_optimize_s_confidence_is_the_posterior_only_for_one_wrong_answer_per_query(
        tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompt a always answers B, the gold; prompt b answers A on odd seeds. One wrong answer
    per query: the report's confidence is the posterior, sure that prompt a is within 0.01 of
    the best at cost weight 0, once enough queries show that the answers are binary (here,
    with 16 training queries, none could: the evidence is lowered to 0). Without that, and
    with a third answer (C, prompt b on seeds divisible by 4), it is the bootstrap, and the
    report says so. A label task with two labels (yes, the gold, for A's B; no for A)
    declares two answers: the posterior at once, with no evidence."""
    labels = case == "two labels"

    def answer_of(body: dict[str, Any]) -> str:
        seed = int(body.get("seed", 0))
        if "Be brief." not in json.dumps(body["messages"]):
            return "Yes, it is." if labels else "The answer is (B)."
        if case == "third answer" and seed % 4 == 0:
            return "The answer is (C)."
        if labels:
            return "No, it is not." if seed % 2 else "Yes, it is."
        return "The answer is (A)." if seed % 2 else "The answer is (B)."

    raw = mv_raw("")
    raw["train"].update(n_max=3, budget=60)
    if labels:
        raw["objectives"] = [{"name": "correct", "scorer": "label", "labels": ["yes", "no"]}]
        raw["aggregator"] = {"kind": "mv", "extractor": "label", "labels": ["yes", "no"]}

    def optimize(out: str) -> dict[str, Any]:
        with ScriptedServer(answer_of=answer_of) as srv:
            raw["model"]["base_url"] = srv.base_url
            task = write_task(tmp_path, raw, n_records=20, gold="yes" if labels else "B")
            res = cli("optimize", str(task), "--out", str(tmp_path / out))
            assert res.exit_code == 0, res.output
        return dict(json.loads((tmp_path / out / "report.json").read_text()))

    if not labels:
        report = optimize("sparse")  # 16 queries: too few to show binary answers
        assert report["confidence"] == "bootstrap"
        assert "bootstrap resamples" in report["definitions"]["ci95"]
        if case == "third answer":
            return
        monkeypatch.setattr(posterior, "BINARY_EVIDENCE", 0)
    report = optimize("run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert report["confidence"] == "posterior"
    assert "posterior" in report["definitions"]["ci95"] and "posterior" in md
    low = report["policy"][0]
    assert low["context"] == "budget=low" and low["prompt"] == "a"
    assert low["p_within"]["0.01"] >= 0.9
    assert all(u["p_best"] <= 0.1 for u in low["runner_ups"] if u["prompt"] == "b")


def test_optimize_writes_policy_and_reports_within_budget(tmp_path: Path) -> None:
    raw = mv_raw("")
    raw["train"].update(n_max=2, budget=12)
    with ScriptedServer(answer="The answer is (B).") as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw, n_records=6, gold="B")
        out = tmp_path / "run"
        res = cli("optimize", str(task), "--out", str(out))
        assert res.exit_code == 0, res.output
        requests = len(srv.requests)
    policy = json.loads((out / "policy.json").read_text())
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert report["training"]["completions_used"] <= 12
    assert policy["completions_used"] == report["training"]["completions_used"]
    assert [r["context"] for r in policy["policy"]] == ["budget=low", "budget=high"]
    assert all(r["prompt"] in (0, 1) and r["n"] in (1, 2) for r in policy["policy"])
    assert policy["trace"]["task"] == {"path": str(task.resolve()),
                                       "digest": load_task(task).digest()}
    assert report["train_queries"] + report["test_queries"] == 6
    assert report["test_queries"] == 1  # round(0.2 * 6)
    # every answer is right: Q of the chosen arm is 1 less its cost weight times its cost
    for row, ctx_weight in zip(report["policy"], [0.0, 1.0], strict=True):
        assert row["q_hat"] == pytest.approx(1.0 - ctx_weight * row["n"] * 0.2)
    # one stored completion per request (the server ignores n), none paid twice
    with sqlite3.connect(out / "store.sqlite") as db:
        stored = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
    paid = report["training"]["completions_paid"] + report["evaluation"]["completions_paid"]
    assert requests == stored == paid
    assert md.startswith("# unit-mv: psst with T = 12")
