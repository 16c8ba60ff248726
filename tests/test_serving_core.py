"""One serving core for `iapo answer` and `iapo serve`, and the policy as a deployable artifact.

- The command and the gateway call the same core (``iapo.serve.core.Responder``): on the same
  policy, context, query and stored samples they give the same outcome; no serve module
  imports a command module.
- ``policy.json`` from ``iapo optimize`` embeds the task it serves and a digest of its serving
  part: copied alone to another folder it still serves; a task file edited after training is
  refused, naming the field, unless ``--allow-task-change``; an older policy without the
  embedded task still loads from its task file, and says what it lacks when that is gone.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import httpx
import pytest

from iapo.live.task import load_task
from iapo.serve.core import serving_digest, serving_part
from live_helpers import ScriptedServer
from test_live_trust import seed_answer, tokens
from test_live_units import cli, mv_raw, write_task
from test_serve import Gateway

SRC = Path(__file__).resolve().parents[1] / "src" / "iapo"


def _trained(tmp_path: Path, url: str) -> tuple[Path, Path]:
    raw = mv_raw(url)
    raw["train"].update(n_max=3, budget=40, cost_scale=0.3)
    raw["contexts"]["budgets"] = {"low": 0.0, "mid": 0.5, "high": 1.0}
    task = write_task(tmp_path, raw, n_records=10)
    out = tmp_path / "run"
    res = cli("optimize", str(task), "--out", str(out))
    assert res.exit_code == 0, res.output
    return task, out


def test_no_serve_module_imports_a_command_module() -> None:
    commands = {"iapo.cli", "iapo.live.optimize"}
    for path in sorted((SRC / "serve").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not names & commands, f"{path.name} imports {names & commands}"


def test_answer_and_serve_give_the_same_outcome_on_the_same_stored_samples(
        tmp_path: Path) -> None:
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as up:
        _, out = _trained(tmp_path, up.base_url)
        policy = json.loads((out / "policy.json").read_text())
        store = out / "store.sqlite"
        outcomes = []
        for q in range(4):
            query = f"question {q}"
            for context in ("budget=low", "budget=high"):
                res = cli("answer", str(out / "policy.json"), query, "--context", context,
                          "--store", str(store), "--json", "--seed", "3")
                assert res.exit_code == 0, res.output
                outcomes.append((query, context, json.loads(res.stdout)))
        paid_by_answer = len(up.requests)
        with Gateway(out / "policy.json", "--store", str(store), "--seed", "3") as gw:
            for query, context, by_answer in outcomes:
                r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30, json={
                    "messages": [{"role": "user", "content": query}],
                    "iapo_context": context}).json()
                meta = r["iapo"]
                assert meta["votes"] == by_answer["votes"], (query, context)
                assert meta["completions_used"] == by_answer["completions_used"]
                assert [s["text"] for s in meta["samples"]] == \
                    [s["text"] for s in by_answer["samples"]]
                if len(by_answer["tied"]) == 1:  # no tie to draw: the very same completion
                    assert r["choices"][0]["message"]["content"] == by_answer["text"]
                assert meta["paid"] == 0  # answer stored what it paid; serve replays it
        assert len(up.requests) == paid_by_answer
    assert policy["serving"]["digest"]  # the policy embeds what it serves


def test_a_policy_copied_alone_serves(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up:
        (tmp_path / "train").mkdir()
        _, out = _trained(tmp_path / "train", up.base_url)
        deploy = tmp_path / "deploy"
        deploy.mkdir()
        shutil.copy(out / "policy.json", deploy / "policy.json")
        shutil.rmtree(tmp_path / "train")  # the task file, its data and the run are gone
        res = cli("answer", str(deploy / "policy.json"), "Which?", "--context", "budget=low",
                  "--json")
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["answer"] == "B"
        with Gateway(deploy / "policy.json") as gw:
            r = gw.ask({"budget": "high"}, content="Which?")
            assert r.model_extra["iapo"]["answer"] == "B"  # type: ignore[index]


def test_a_task_edited_after_training_is_refused_naming_the_field(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up:
        task, out = _trained(tmp_path, up.base_url)
        before = len(up.requests)
        text = task.read_text()
        edited = text.replace('template = "Question: {query} Answer:"',
                              'template = "Q. {query} A:"')
        assert edited != text
        task.write_text(edited)
        res = cli("answer", str(out / "policy.json"), "Which?", "--context", "budget=low",
                  "--task", str(task))
        assert res.exit_code == 2
        assert "'prompts[1].template' differs" in res.output
        assert "--allow-task-change" in res.output
        assert len(up.requests) == before  # refused before anything was asked
        res = cli("answer", str(out / "policy.json"), "Which?", "--context", "budget=low",
                  "--task", str(task), "--allow-task-change")
        assert res.exit_code == 0, res.output
        # a task file that only moved the endpoint, or reformatted, serves: same digest
        moved = text.replace(up.base_url, "http://127.0.0.1:1/v1").replace("\n", "\n\n")
        task.write_text(moved)
        assert serving_digest(load_task(task)) == \
            json.loads((out / "policy.json").read_text())["serving"]["digest"]


def test_the_serving_part_leaves_out_the_endpoint_and_training(tmp_path: Path) -> None:
    raw = mv_raw("http://127.0.0.1:9/v1")
    part = serving_part(load_task(write_task(tmp_path, raw)))
    assert "base_url" not in json.dumps(part) and "budget\": 20" not in json.dumps(part)
    assert part["prompts"][1] == {"name": "b", "template": "Question: {query} Answer:",
                                  "system": "Be brief.", "decoding": {"temperature": 0.5}}
    assert part["model"] == "m" and part["aggregator"] == "mv"


def test_an_older_policy_loads_from_its_task_file_and_says_what_it_lacks(
        tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up:
        task, out = _trained(tmp_path, up.base_url)
        old = json.loads((out / "policy.json").read_text())
        old.pop("serving")  # as iapo wrote policies before they embedded their task
        (tmp_path / "old.json").write_text(json.dumps(old))
        res = cli("answer", str(tmp_path / "old.json"), "Which?", "--context", "budget=low",
                  "--json")
        assert res.exit_code == 0, res.output  # from the task file its trace names
        task.unlink()
        res = cli("answer", str(tmp_path / "old.json"), "Which?", "--context", "budget=low")
        assert res.exit_code == 2
        assert "older iapo" in res.output and "embeds no task" in res.output
        assert "--task" in res.output


def test_the_latency_watch_flags_a_context_where_measurement_disagrees() -> None:
    """Per context, responses whose arm the policy predicted and that paid every completion:
    mean, p50 and p95 by hand; a context is flagged (25% off the prediction and beyond 3
    standard errors) only from 20 responses on, and over its limit only beyond 3 standard
    errors; replayed responses and those without a prediction are left out."""
    from iapo.serve.core import LatencyWatch, Response

    def response(context: str, seconds: float, predicted: float | None,
                 replayed: int = 0) -> Response:
        return Response(context, "p", 0, 4, False, [], {}, {}, 4 - replayed, replayed, seconds,
                        predicted_seconds=predicted)

    watch = LatencyWatch()
    for i in range(19):  # 1.0, 1.1, ..., 2.8 s against 1.0 s predicted: off by 90%
        watch.add(response("slow", 1.0 + 0.1 * i, 1.0))
        watch.add(response("fine", 2.0 + (0.1 if i % 2 else -0.1), 2.0))
    watch.add(response("slow", 100.0, None))  # no prediction: not counted
    watch.add(response("slow", 100.0, 1.0, replayed=1))  # a replayed sample: not counted
    limits = {"slow": 1.5, "fine": None}
    early = watch.health(limits)
    assert early["slow"]["requests"] == 19 and not early["slow"]["disagrees"]
    assert not early["slow"]["over_limit"]  # too few to say
    watch.add(response("slow", 2.9, 1.0))
    watch.add(response("fine", 2.1, 2.0))
    got = watch.health(limits)
    slow, fine = got["slow"], got["fine"]
    assert slow["requests"] == 20 and slow["mean"] == pytest.approx(1.95)
    assert slow["p50"] == pytest.approx(1.95) and slow["predicted"] == 1.0
    assert slow["p95"] == pytest.approx(1.0 + 0.1 * 19 * 0.95)  # linear between the points
    assert slow["disagrees"] and slow["over_limit"] and slow["limit"] == 1.5
    assert fine["mean"] == pytest.approx(2.0) and not fine["disagrees"]  # ten 1.9, ten 2.1
    assert not fine["over_limit"] and fine["limit"] is None
    # within 25% of the prediction: not flagged, however many
    close = LatencyWatch()
    for _ in range(50):
        close.add(response("c", 1.2, 1.0))
    assert not close.health({})["c"]["disagrees"]
