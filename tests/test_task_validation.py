"""Bad task files and datasets: one TaskError that names the field, raised while the files are
read (before a run creates anything), and through the CLI one line with exit status 2.

Each case starts from a small valid task, written here, and changes one thing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import iapo.live.task as task_module
from iapo.cli import main
from iapo.live.scorers import SCORERS
from iapo.live.task import SCORER_OPTIONS, TaskError, load_records, load_task
from test_live_units import to_toml

ROOT = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:9/v1"  # never contacted: every case fails while the files are read


def base_raw() -> dict[str, Any]:
    return {
        "name": "unit",
        "model": {"base_url": URL, "name": "m", "concurrency": 2, "timeout": 5,
                  "max_retries": 1, "supports_n": False},
        "prompts": [
            {"name": "a", "template": "Q: {query}", "max_tokens": 5},
            {"name": "b", "template": "Question: {query} Answer:", "temperature": 0.5,
             "top_p": 0.9},
        ],
        "data": {"path": "q.jsonl", "test_fraction": 0.2},
        "objectives": [{"name": "correct", "scorer": "multiple_choice", "choices": "ABCD"}],
        "aggregator": {"kind": "mv", "extractor": "multiple_choice"},
        "contexts": {"weights": [[1.0]], "budgets": {"low": 0.0, "high": 1.0}},
        "train": {"n_max": 3, "learner": "psst", "budget": 20, "seed": 0, "cost_scale": 0.2},
    }


RECORDS = "".join(json.dumps({"id": f"q{i}", "query": f"question {i}", "gold": "B"}) + "\n"
                  for i in range(6))


def write_task(tmp: Path, raw: dict[str, Any], records: str = RECORDS) -> Path:
    (tmp / "q.jsonl").write_text(records, encoding="utf-8")
    path = tmp / "task.toml"
    path.write_text(to_toml(raw), encoding="utf-8")
    return path


Mutation = Callable[[dict[str, Any]], object]


def _set(table: str, **kw: Any) -> Mutation:
    return lambda r: r[table].update(kw)


def _row(table: str, i: int, **kw: Any) -> Mutation:
    return lambda r: r[table][i].update(kw)


def _top(**kw: Any) -> Mutation:
    return lambda r: r.update(kw)


def _objective(**kw: Any) -> Mutation:
    """Replace the objective by one named "correct" with the keys ``kw``."""
    return lambda r: r["objectives"].__setitem__(0, {"name": "correct", **kw})


def bad(tmp: Path, mutate: Mutation) -> str:
    """The message of the TaskError that load_task raises on the base task changed by
    ``mutate``."""
    raw = copy.deepcopy(base_raw())
    mutate(raw)
    with pytest.raises(TaskError) as err:
        load_task(write_task(tmp, raw))
    return str(err.value)


def test_the_base_task_is_valid(tmp_path: Path) -> None:
    # every case below fails because of its one change, not because the base is wrong
    task = load_task(write_task(tmp_path, base_raw()))
    assert task.n_max == 3 and task.budget == 20 and task.labels is None
    assert len(load_records(task.data_path)) == 6


@pytest.mark.parametrize("path", sorted(ROOT.glob("tasks/*.toml")) + [
    ROOT / "tests" / "data" / "mcq_task.toml"], ids=lambda p: p.name)
def test_the_shipped_task_files_still_load(path: Path) -> None:
    task = load_task(path)  # their data files need not exist: load_task does not read them
    assert task.prompts and task.objectives


# --- 1. every table is a table, every row of [[prompts]] and [[objectives]] a table ----------

NOT_TABLES: list[tuple[str, Mutation, str]] = [
    ("objectives of numbers", _top(objectives=[1, 2]), "objectives[0]"),
    ("prompts of strings", _top(prompts=["Q: {query}"]), "prompts[0]"),
    ("prompts a string", _top(prompts="Q: {query}"), "task.prompts"),
    ("objectives a number", _top(objectives=3), "task.objectives"),
    ("model a string", _top(model="smollm2"), "task.model"),
    ("data a string", _top(data="q.jsonl"), "task.data"),
    ("aggregator a list", _top(aggregator=["mv"]), "task.aggregator"),
    ("contexts a number", _top(contexts=1), "task.contexts"),
    ("train a string", _top(train="psst"), "task.train"),
    ("budgets a number", _set("contexts", budgets=1.0), "contexts.budgets"),
]


@pytest.mark.parametrize("mutate, field", [(m, f) for _, m, f in NOT_TABLES],
                         ids=[name for name, _, _ in NOT_TABLES])
def test_a_value_that_must_be_a_table_is_one(tmp_path: Path, mutate: Mutation,
                                             field: str) -> None:
    message = bad(tmp_path, mutate)
    assert field in message and "table" in message


# --- 2. sizes and limits -------------------------------------------------------------------

LIMITS: list[tuple[str, Mutation, list[str]]] = [
    ("n_max 10**12", _set("train", n_max=10**12), ["train.n_max", "1,024",
                                                   "[contexts, prompts, n_max]"]),
    ("n_max 1025", _set("train", n_max=1025), ["train.n_max", "1,024"]),
    ("n_max 0", _set("train", n_max=0), ["train.n_max", "at least 1"]),
    ("budget 10**12", _set("train", budget=10**12), ["train.budget", "1,000,000,000"]),
    ("seed negative", _set("train", seed=-1), ["train.seed"]),
    ("concurrency 5000", _set("model", concurrency=5000), ["model.concurrency", "1,024"]),
    ("concurrency 0", _set("model", concurrency=0), ["model.concurrency"]),
    ("max_retries 1000", _set("model", max_retries=1000), ["model.max_retries", "100"]),
    ("max_retries negative", _set("model", max_retries=-1), ["model.max_retries"]),
    ("timeout inf", _set("model", timeout=float("inf")), ["model.timeout", "finite"]),
    ("timeout a week", _set("model", timeout=604800), ["model.timeout", "86400"]),
    ("timeout 0", _set("model", timeout=0), ["model.timeout"]),
    ("timeout a huge int", _set("model", timeout=10**400), ["model.timeout", "finite"]),
    ("test_fraction nan", _set("data", test_fraction=float("nan")), ["data.test_fraction"]),
    ("test_fraction inf", _set("data", test_fraction=float("inf")), ["data.test_fraction"]),
    # 5000 budget levels x 2 prompts x 1024 = 10,240,000 cells in each exact and Q table
    ("tables too large", lambda r: (
        r["contexts"].update(budgets={f"b{i}": 0.0 for i in range(5000)}),
        r["train"].update(n_max=1024)), ["contexts", "train.n_max", "10,240,000"]),
]


@pytest.mark.parametrize("mutate, words", [(m, w) for _, m, w in LIMITS],
                         ids=[name for name, _, _ in LIMITS])
def test_sizes_beyond_the_limits_are_refused(tmp_path: Path, mutate: Mutation,
                                             words: list[str]) -> None:
    message = bad(tmp_path, mutate)
    for word in words:
        assert word in message


def test_sizes_at_the_limits_are_accepted(tmp_path: Path) -> None:
    raw = base_raw()
    raw["model"].update(concurrency=1024, max_retries=100, timeout=86400)
    raw["train"].update(n_max=1024, budget=10**9)
    task = load_task(write_task(tmp_path, raw))
    assert (task.n_max, task.budget, task.model.concurrency) == (1024, 10**9, 1024)


# --- 3. unknown keys, in every table -------------------------------------------------------

UNKNOWN: list[tuple[str, Mutation, str, list[str]]] = [
    ("top level", _top(nmae="x"), "nmae", list(task_module.TASK_KEYS)),
    ("[model]", _set("model", base_ulr=URL), "base_ulr", list(task_module.MODEL_KEYS)),
    ("[[prompts]]", _row("prompts", 0, temprature=0.3), "temprature",
     list(task_module.PROMPT_KEYS)),
    ("[data]", _set("data", test_frac=0.3), "test_frac", ["path", "test_fraction"]),
    ("[aggregator]", _set("aggregator", extractr="numeric"), "extractr",
     ["kind", "extractor", "labels"]),
    ("[contexts]", _set("contexts", weight=[[1.0]]), "weight",
     ["weights", "budgets", "probabilities"]),
    ("[train] lerner", _set("train", lerner="ucb"), "lerner",
     ["n_max", "learner", "budget", "seed", "cost_scale"]),
    ("multiple_choice with tolerance", _row("objectives", 0, tolerance=0.1), "tolerance",
     ["name", "scorer", "lower", "upper", "choices"]),
    ("exact_match with choices", _objective(scorer="exact_match", choices="AB"), "choices",
     ["name", "scorer", "lower", "upper"]),
    ("numeric with choices", _objective(scorer="numeric", choices="AB"), "choices",
     ["tolerance"]),
    ("python with url", _objective(scorer="python", callable="math:sqrt", url="http://x"),
     "url", ["callable"]),
]


@pytest.mark.parametrize("mutate, key, known", [(m, k, w) for _, m, k, w in UNKNOWN],
                         ids=[name for name, _, _, _ in UNKNOWN])
def test_unknown_keys_are_named_with_the_known_ones(tmp_path: Path, mutate: Mutation, key: str,
                                                    known: list[str]) -> None:
    message = bad(tmp_path, mutate)
    assert repr(key) in message
    for k in known:
        assert k in message


def test_every_scorer_has_its_options_listed() -> None:
    assert set(SCORERS) <= set(SCORER_OPTIONS)


# --- 4. numbers: finite, in range ----------------------------------------------------------

NAN, INF = float("nan"), float("inf")
NUMBERS: list[tuple[str, Mutation, str]] = [
    ("temperature nan", _row("prompts", 1, temperature=NAN), "prompts[1].temperature"),
    ("temperature above 10", _row("prompts", 1, temperature=10.5), "prompts[1].temperature"),
    ("temperature negative", _row("prompts", 1, temperature=-0.1), "prompts[1].temperature"),
    ("top_p inf", _row("prompts", 1, top_p=INF), "prompts[1].top_p"),
    ("top_p 0", _row("prompts", 1, top_p=0.0), "prompts[1].top_p"),
    ("top_p above 1", _row("prompts", 1, top_p=1.01), "prompts[1].top_p"),
    ("max_tokens nan", _row("prompts", 0, max_tokens=NAN), "prompts[0].max_tokens"),
    ("max_tokens inf", _row("prompts", 0, max_tokens=INF), "prompts[0].max_tokens"),
    ("lower nan", _row("objectives", 0, lower=NAN), "objectives[0].lower"),
    ("upper -inf", _row("objectives", 0, upper=-INF), "objectives[0].upper"),
    ("lower above upper", _row("objectives", 0, lower=1.0, upper=0.0), "objectives[0].lower"),
    ("lower equal to upper", _row("objectives", 0, lower=0.5, upper=0.5),
     "objectives[0].upper"),
    ("cost_scale inf", _set("train", cost_scale=INF), "train.cost_scale"),
    ("cost_scale 0", _set("train", cost_scale=0.0), "train.cost_scale"),
    ("weight nan", _set("contexts", weights=[[NAN]]), "contexts.weights[0]"),
    ("weight inf", _set("contexts", weights=[[1.0], [INF]]), "contexts.weights[1]"),
    ("budget level inf", _set("contexts", budgets={"low": 0.0, "high": INF}),
     "contexts.budgets.high"),
    ("budget level nan", _set("contexts", budgets={"low": NAN}), "contexts.budgets.low"),
    ("budget level negative", _set("contexts", budgets={"low": -1.0}), "contexts.budgets.low"),
    ("probability nan", _set("contexts", probabilities=[NAN, 0.5]), "contexts.probabilities"),
    ("probability inf", _set("contexts", probabilities=[INF, 0.5]), "contexts.probabilities"),
    ("numeric tolerance nan", _objective(scorer="numeric", tolerance=NAN), "tolerance"),
    ("numeric tolerance negative", _objective(scorer="numeric", tolerance=-0.1), "tolerance"),
    ("http timeout inf", _objective(scorer="http", url="http://127.0.0.1:9/score",
                                    timeout=INF), "timeout"),
    ("choices empty", _row("objectives", 0, choices=""), "choices"),
]


@pytest.mark.parametrize("mutate, field", [(m, f) for _, m, f in NUMBERS],
                         ids=[name for name, _, _ in NUMBERS])
def test_numbers_must_be_finite_and_in_range(tmp_path: Path, mutate: Mutation,
                                             field: str) -> None:
    assert field in bad(tmp_path, mutate)


# --- 5. records ------------------------------------------------------------------------------

GOOD_LINE = '{"id": "ok", "query": "fine"}\n'
BAD_RECORDS: list[tuple[str, str, str]] = [
    ("query null", '{"id": 2, "query": null}', '"query"'),
    ("query a number", '{"id": 2, "query": 5}', '"query"'),
    ("query a list", '{"id": 2, "query": ["a"]}', '"query"'),
    ("query empty", '{"id": 2, "query": ""}', '"query"'),
    ("query blank", '{"id": 2, "query": "  \\n "}', '"query"'),
    ("id null", '{"id": null, "query": "q"}', '"id"'),
    ("id a list", '{"id": [1], "query": "q"}', '"id"'),
    ("id an object", '{"id": {"a": 1}, "query": "q"}', '"id"'),
    ("id a float", '{"id": 1.5, "query": "q"}', '"id"'),
    ("id a boolean", '{"id": true, "query": "q"}', '"id"'),
    ("nested too deeply", '{"query": "q", "gold": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "nested"),
]


@pytest.mark.parametrize("line, field", [(t, f) for _, t, f in BAD_RECORDS],
                         ids=[name for name, _, _ in BAD_RECORDS])
def test_bad_records_name_file_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(GOOD_LINE + line + "\n" + '{"query": "more"}\n', encoding="utf-8")
    with pytest.raises(TaskError) as err:
        load_records(path)
    assert f"{path}:2:" in str(err.value)
    assert field in str(err.value)


def test_good_records_take_any_gold_and_string_or_integer_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [{"id": 7, "query": "a", "gold": None}, {"id": "x", "query": "b", "gold": [1, "2"]},
             {"query": "c", "gold": {"answer": 3.5}}, {"query": "d\u2028e"}]
    path.write_text("\r\n".join(json.dumps(x, ensure_ascii=False) for x in lines),
                    encoding="utf-8")
    recs = load_records(path)
    assert [(r.id, r.query, r.gold) for r in recs] == [
        ("7", "a", None), ("x", "b", [1, "2"]), ("3", "c", {"answer": 3.5}),
        ("4", "d\u2028e", None)]  # a U+2028 inside a string does not end the line


# --- 6. files that are not UTF-8 ---------------------------------------------------------------


def test_a_task_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = write_task(tmp_path, base_raw())
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"unit"', b'"un\xffit"'))
    position = data.index(b'"unit"') + 3
    with pytest.raises(TaskError) as err:
        load_task(path)
    message = str(err.value)
    assert str(path) in message and "not UTF-8" in message
    assert f"byte 0xff at position {position}, line 1" in message


def test_a_data_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD_LINE.encode() + b'{"query": "caf\xe9"}\n')  # Latin-1, not UTF-8
    with pytest.raises(TaskError) as err:
        load_records(path)
    message = str(err.value)
    assert str(path) in message and "not UTF-8" in message and "line 2" in message


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write_task(tmp_path, base_raw())
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    (tmp_path / "q.jsonl").write_bytes(b"\xef\xbb\xbf" + RECORDS.encode())
    assert len(load_records(load_task(path).data_path)) == 6


# --- 7. nesting and size -----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_toml_is_reported(tmp_path: Path, depth: int) -> None:
    path = write_task(tmp_path, base_raw())
    path.write_text(f"deep = {'[' * depth}{']' * depth}\n" + path.read_text())
    with pytest.raises(TaskError, match="nested too deeply") as err:
        load_task(path)
    assert str(path) in str(err.value)


def test_a_nested_value_tomllib_can_read_is_a_type_error(tmp_path: Path) -> None:
    message = bad(tmp_path, _set("train", seed=[[[[[[[[[[0]]]]]]]]]] * 1000))
    assert "train.seed" in message and "an integer" in message
    assert len(message) < 200  # the value is quoted shortened, not whole


def test_a_huge_task_file_is_refused_before_it_is_read(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_task(tmp_path, base_raw())
    monkeypatch.setattr(task_module, "MAX_TASK_BYTES", 100)
    with pytest.raises(TaskError, match="right file") as err:
        load_task(path)
    assert str(path) in str(err.value)


# --- 8. aggregator.labels ----------------------------------------------------------------------


def test_label_extractor_reads_its_labels(tmp_path: Path) -> None:
    raw = base_raw()
    raw["aggregator"] = {"kind": "mv", "extractor": "label", "labels": ["yes", "no"]}
    task = load_task(write_task(tmp_path, raw))
    assert task.extractor == "label" and task.labels == ("yes", "no")
    # two labels declare two answers (iapo.posterior.evidence_needed); under the vote rule
    # "no answer" is a third; one label, a mixed aggregator or another extractor declare none
    assert task.problem().answers == 2
    for labels, no_answer, answers in [(["yes", "no", "maybe"], "abstain", 3),
                                       (["yes", "no"], "vote", 3), (["yes"], "abstain", None),
                                       (["yes"], "vote", 2)]:
        raw["aggregator"].update(labels=labels, no_answer=no_answer)
        assert load_task(write_task(tmp_path, raw)).problem().answers == answers
    raw["aggregator"] = {"kind": "mixed", "extractor": "label", "labels": ["yes", "no"]}
    mixed = base_raw()
    mixed["aggregator"] = raw["aggregator"]
    mixed["objectives"] = [{"name": "correct", "scorer": "label", "labels": ["yes", "no"]},
                           {"name": "same", "scorer": "exact_match"}]
    mixed["contexts"] = {"weights": [[1.0, 0.0]], "budgets": {"low": 0.0}}
    assert load_task(write_task(tmp_path, mixed)).problem().answers is None
    assert load_task(write_task(tmp_path, base_raw())).problem().answers is None


LABELS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("label without labels", {"extractor": "label"},
     ['aggregator.extractor = "label"', "aggregator.labels = [\"yes\", \"no\", ...]"]),
    ("labels without label", {"labels": ["yes", "no"]}, ["aggregator.labels", "label"]),
    ("labels empty", {"extractor": "label", "labels": []}, ["aggregator.labels"]),
    ("labels a string", {"extractor": "label", "labels": "yes"}, ["aggregator.labels"]),
    ("labels twice", {"extractor": "label", "labels": ["yes", "yes"]},
     ["aggregator.labels", "twice"]),
    ("labels twice but for case", {"extractor": "label", "labels": ["Yes", "yes"]},
     ["aggregator.labels", "twice"]),
    ("label empty", {"extractor": "label", "labels": ["yes", ""]}, ["aggregator.labels"]),
    ("label a number", {"extractor": "label", "labels": ["yes", 1]}, ["aggregator.labels"]),
]


@pytest.mark.parametrize("change, words", [(c, w) for _, c, w in LABELS],
                         ids=[name for name, _, _ in LABELS])
def test_bad_labels_are_named(tmp_path: Path, change: dict[str, Any], words: list[str]) -> None:
    message = bad(tmp_path, lambda r: r["aggregator"].update(change))
    for word in words:
        assert word in message


# --- 9. learners -------------------------------------------------------------------------------


@pytest.mark.parametrize("learner, word", [("sgd", "sgd"), ("psst:magic", "magic"),
                                           ("sgd:subsets", "sgd")])
def test_a_learner_get_learner_refuses_is_refused(tmp_path: Path, learner: str,
                                                  word: str) -> None:
    message = bad(tmp_path, _set("train", learner=learner))
    assert "train.learner" in message and word in message


@pytest.mark.parametrize("learner", ["psst:subsets", "ucb:blocks"])
def test_a_learner_with_a_known_estimator_is_accepted(tmp_path: Path, learner: str) -> None:
    raw = base_raw()
    raw["train"]["learner"] = learner
    assert load_task(write_task(tmp_path, raw)).learner == learner


# --- the CLI: one line, exit status 2, nothing written -----------------------------------------

CLI_CASES: list[tuple[str, Mutation, str, str]] = [
    ("unknown key in [train]", _set("train", lerner="ucb"), RECORDS, "lerner"),
    ("n_max too large", _set("train", n_max=10**12), RECORDS, "train.n_max"),
    ("a null query", lambda r: None, RECORDS + '{"id": "z", "query": null}\n', '"query"'),
]


@pytest.mark.parametrize("mutate, records, field", [(m, d, f) for _, m, d, f in CLI_CASES],
                         ids=[name for name, _, _, _ in CLI_CASES])
def test_cli_reports_one_line_and_writes_nothing(tmp_path: Path, mutate: Mutation,
                                                 records: str, field: str) -> None:
    raw = copy.deepcopy(base_raw())
    mutate(raw)
    task = write_task(tmp_path, raw, records)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["optimize", str(task), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


# --- 10. latency -------------------------------------------------------------------------------


def test_latency_contexts_and_the_width_in_the_arm_are_read(tmp_path: Path) -> None:
    """contexts.latency names the contexts (each a grid context with a weight per second
    and/or a limit), equally likely; train.wave = "auto" makes W part of the arm; the pilot
    defaults to 16 completions per prompt."""
    from iapo.problem import Stopping

    raw = base_raw()
    raw["contexts"]["latency"] = ["budget=low", "budget=high,latency=0.01,limit=20"]
    raw["train"].update(learner="psst-auto", stop="decided", wave="auto", latency_pilot=3)
    task = load_task(write_task(tmp_path, raw))
    grid = task.problem().grid
    assert grid.keys == ["budget=low", "budget=high,latency=0.01,limit=20"]
    assert grid.latency_weights.tolist() == [0.0, 0.01]
    assert grid.latency_limits.tolist() == [float("inf"), 20.0]
    assert grid.probabilities.tolist() == [0.5, 0.5]
    assert task.stopping == Stopping.every_width(3) and task.latency_pilot == 3
    assert task.problem().needs_latency and task.problem().latency is None
    del raw["train"]["latency_pilot"]
    assert load_task(write_task(tmp_path, raw)).latency_pilot == 16


@pytest.mark.parametrize("mutate, words", [
    (_set("contexts", latency="budget=low"), ["contexts.latency", "list"]),
    (_set("contexts", latency=["budget=mid"]), ["contexts", "'mid'", "the grid has"]),
    (_set("contexts", latency=["budget=low,latency=-1"]), ["latency"]),
    (_set("contexts", latency=["budget=low"], probabilities=[0.5, 0.5]),
     ["contexts.probabilities"]),
    (_set("train", wave="auto"), ["train.wave", "decided"]),
    (_set("train", stop="decided", wave="fast"), ["train.wave"]),
    (_set("train", latency_pilot=0), ["train.latency_pilot"]),
    (lambda r: (r["contexts"].update(latency=["budget=low,limit=5"]),
                r["train"].update(learner="psst")),
     ["per-query model", "psst-auto", "'psst'"]),
])
def test_bad_latency_settings_are_named(tmp_path: Path, mutate: Mutation,
                                        words: list[str]) -> None:
    message = bad(tmp_path, lambda r: (r["train"].update(learner="psst-auto"), mutate(r)))
    for word in words:
        assert word in message, (word, message)
