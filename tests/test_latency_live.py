"""Latency on the live path: the model fitted from a run's store, and a task whose contexts
price latency trained, answered and served against the real SmolLM2 server (the predicted
latency next to the measured one, and /health's per-context comparison)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import LlamaServer
from iapo.errors import RunError
from iapo.live.oracle import TaskRuntime
from iapo.live.store import CompletionStore, StoredCompletion
from iapo.live.task import load_records, load_task
from iapo.live.timing import latency_pilot
from test_live_e2e import iapo, stored
from test_live_units import mv_raw, write_task
from test_serve import Gateway

DATA = Path(__file__).parent / "data"
CONTEXTS = ["budget=low", "budget=low,latency=0.05", "budget=high,limit=1.5",
            "budget=high,p95=3"]


def test_the_pilot_is_drawn_in_groups_and_fits_the_prefill(tmp_path: Path) -> None:
    """A pilot of 6 completions of each prompt at a concurrency of 2: groups of 4 samples of
    one pool, query 3 (samples 0-3), then query 0 (samples 0-1); samples 0 and 1 of a group
    run first, before the server has read the prompt. All stored: nothing is paid. Times
    exactly 0.3 + 0.01 x tokens, plus 0.5 s in a first round, and a retried one far off (its
    failed attempts' waits): the fit gives back 0.3 s, 0.01 s a token and a 0.5 s prefill,
    each prompt's own tokens and the task's concurrency. A prompt whose every pilot
    completion was retried is named."""
    raw = mv_raw("http://127.0.0.1:9/v1")
    raw["contexts"]["latency"] = ["budget=low,latency=0.1"]
    raw["train"].update(learner="psst-auto", latency_pilot=6)
    task = load_task(write_task(tmp_path, raw))
    runtime = TaskRuntime(task, load_records(task.data_path))
    train = np.array([3, 0, 5, 1])
    at = [(3, 0), (3, 1), (3, 2), (3, 3), (0, 0), (0, 1)]

    def rows(p: int, tokens: list[int], retried: set[int]) -> list[StoredCompletion]:
        return [StoredCompletion(runtime.pool(p, q), s, runtime.arms[p], f"q{q}", "text",
                                 None, [], [], 3, t,
                                 99.0 if i in retried else 0.3 + 0.01 * t + 0.5 * (s < 2),
                                 i, retries=2 if i in retried else 0)
                for i, ((q, s), t) in enumerate(zip(at, tokens, strict=True))]

    first = rows(0, [10, 30, 30, 10, 50, 70], {5})
    with CompletionStore(tmp_path / "retried.sqlite") as store:
        store.put_all(first + rows(1, [20] * 6, set(range(6))))
        with pytest.raises(RunError, match="prompt 'b'"):
            latency_pilot(runtime, store, train)
    with CompletionStore(tmp_path / "store.sqlite") as store:
        store.put_all(first + rows(1, [20] * 6, set()))
        model, pilot = latency_pilot(runtime, store, train)
    assert pilot == {"completions": 12, "paid": 0, "replayed": 12}
    assert model.concurrency == 2 and model.prefill == pytest.approx(0.5)
    assert model.description == ("fitted: overhead=0.3,per_token=0.01,prefill=0.5,"
                                 "completions=11")
    assert model.times[0].values.tolist() == pytest.approx([0.4, 0.6, 0.8])
    assert model.times[0].probs.tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert model.times[1].values.tolist() == pytest.approx([0.5])


def latency_task(tmp: Path, url: str) -> Path:
    """The small multiple-choice task with contexts that price latency, W in the arm."""
    shutil.copy(DATA / "mcq.jsonl", tmp / "mcq.jsonl")
    text = (DATA / "mcq_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    text = text.replace("budgets = { low = 0.0, high = 1.0 }",
                        "budgets = { low = 0.0, high = 1.0 }\nlatency = "
                        + json.dumps(CONTEXTS))
    text = text.replace('learner = "psst"', 'learner = "psst-auto"').replace(
        "cost_scale = 0.01", 'cost_scale = 0.01\nstop = "decided"\nwave = "auto"\n'
        "latency_pilot = 12")
    path = tmp / "task.toml"
    path.write_text(text)
    return path


def test_a_task_that_prices_latency_trains_answers_and_serves_with_predictions(
        llama: LlamaServer, tmp_path: Path) -> None:
    """`iapo optimize`: a pilot of 12 completions of each prompt, in groups of 2 over 6
    training queries, paid once (the server's log counts every stored completion) and
    replayed by the learner; the latency model fitted to them (by hand here: least squares on
    the store's first 36 rows); every choice
    with its W and predicted latency, the limited context's within its limit. A rerun pays
    nothing and writes the same policy. `iapo answer` and the gateway report the measured
    latency next to the choice's prediction, and /health compares them per context."""
    task = latency_task(tmp_path, llama.url)
    run = tmp_path / "run"
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run))
    assert llama.settle() - before == stored(run / "store.sqlite")
    policy = json.loads((run / "policy.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert report["latency"]["pilot"]["completions"] == 3 * 12

    with sqlite3.connect(run / "store.sqlite") as db:  # the pilot's rows, stored first
        rows = np.array(db.execute("SELECT completion_tokens, latency, sample, retries FROM "
                                   "completions ORDER BY created, rowid LIMIT 36").fetchall(),
                        dtype=float)
    rows = rows[rows[:, 3] == 0]
    # groups of 2 samples of a pool at a concurrency of 1: the even ones read the prompt
    design = np.stack([np.ones(len(rows)), rows[:, 0], rows[:, 2] % 2 == 0], axis=1)
    want = np.linalg.lstsq(design, rows[:, 1], rcond=None)[0]
    model = policy["latency"]
    assert model["concurrency"] == 1 and model["description"].startswith("fitted: ")
    parts = dict(p.split("=") for p in model["description"].removeprefix("fitted: ")
                 .split(","))
    assert int(parts["completions"]) == rows.shape[0]
    if np.all(want > 0):  # the constraints do not bind: plain least squares
        got = [float(parts[k]) for k in ("overhead", "per_token", "prefill")]
        np.testing.assert_allclose(got, want, rtol=1e-4)

    assert [row["context"] for row in policy["policy"]] == CONTEXTS
    for row in policy["policy"]:
        assert 1 <= row["wave"] <= row["n"] and row["latency"] > 0
    limited = policy["policy"][2]
    assert limited["latency"] <= 1.5 or limited["q_hat"] is None  # within, or none is
    for row, chosen in zip(report["policy"], policy["policy"], strict=True):
        assert (row["wave"], row["latency"]) == (chosen["wave"], chosen["latency"])
    assert [row["limit"] for row in report["policy"]] == [None, None, 1.5, None]
    assert [row["p95_limit"] for row in report["policy"]] == [None, None, None, 3.0]
    assert (run / "figures" / "quality-vs-latency.png").stat().st_size > 10_000

    again = tmp_path / "again"
    shutil.copytree(run, again)
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(again))
    assert llama.settle() - before == 0
    assert json.loads((again / "policy.json").read_text())["policy"] == policy["policy"]

    question = "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter"
    got = json.loads(iapo("answer", str(run / "policy.json"), question, "--context",
                          CONTEXTS[2], "--json").stdout)
    assert got["predicted_seconds"] == limited["latency"] and got["upstream_seconds"] > 0
    assert got["stopping"] == {"rule": "decided", "wave": limited["wave"]}

    with Gateway(run / "policy.json", "--max-concurrency", "1") as gw:
        for _ in range(2):
            meta = gw.ask({"budget": "high", "limit": "1.5"},
                          content=question).model_extra["iapo"]  # type: ignore[index]
            assert meta["predicted_seconds"] == limited["latency"]
        gw.ask({"budget": "high", "p95": "3"}, content=question)
        health = httpx.get(f"{gw.url}/health").json()["latency"]
    seen = health[CONTEXTS[2]]
    assert seen["requests"] == 2 and seen["predicted"] == pytest.approx(limited["latency"])
    assert seen["limit"] == 1.5 and not seen["disagrees"]  # too few to say
    assert health[CONTEXTS[3]]["p95_limit"] == 3.0 and not health[CONTEXTS[3]]["over_p95"]
