"""The live path's promises, each against real loopback servers and a real SQLite store.

1. one aggregation from training to serving; 2. reruns pay nothing and write the same policy,
and a resume gives the uninterrupted run's policy; 3. pools keyed by what was asked; 4. one
writer per run folder; 5. timeouts are deadlines; 6. prompt tokens billed once per request;
7. the commands fit together (label answers, no gold at answer time, n probed once).

Expected values are worked out here from the inputs (brute force over tie-breaks, votes
counted by hand from the texts the server sent), never read back from the code under test.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iapo.estimate import QTable
from iapo.live.aggregate import NO_ANSWER, aggregate, answer_categories, answer_labels
from iapo.live.client import ChatClient, LLMError
from iapo.live.oracle import TaskRuntime
from iapo.live.scorers import extract_label, extract_letter
from iapo.live.store import CompletionStore, writer_lock
from iapo.live.task import Record, load_task
from iapo.problem import ContextGrid, CostObjective, Objective, Problem
from iapo.pulls import Observation
from live_helpers import ScriptedServer
from test_live_units import cli, mv_raw, write_task

# --- 1. one aggregation ------------------------------------------------------------------------


class Pick(random.Random):
    """An rng whose tie-break picks the k-th tied answer."""

    def __init__(self, k: int) -> None:
        super().__init__(0)
        self.k = k

    def randrange(self, n: int, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        assert 0 <= self.k < n
        return self.k


def served_expectation(kind: str, answers: list[str | None], scores: np.ndarray,
                       weights: np.ndarray, gold: str) -> float:
    """The utility of the served outcome, averaged over the equally likely tie-breaks."""
    first = aggregate(kind, answers, scores, weights, Pick(0))
    values = []
    for k in range(max(1, len(first.tied))):
        out = aggregate(kind, answers, scores, weights, Pick(k))
        if kind == "bon":
            values.append(float(scores[out.chosen] @ weights))
        else:
            style = float(scores[out.chosen, 1:] @ weights[1:]) if kind == "mixed" else 0.0
            values.append(weights[0] * (out.answer == gold) + style)
    return float(np.mean(values))


@pytest.mark.parametrize("kind", ["mv", "mixed", "bon"])
def test_training_utility_is_the_expected_served_outcome(kind: str) -> None:
    rng = np.random.default_rng(5)
    weights = np.array([[1.0, 0.5], [0.3, 1.0], [0.0, 1.0]])
    k = 1 if kind == "mv" else 2
    objectives = [Objective(f"o{i}") for i in range(k)]
    if k == 1:  # one objective: its weight is no choice (the grid keys only the budget)
        weights = weights[:1]
    grid = ContextGrid.product(objectives, weights[:, :k], {"free": 0.0})
    checked = 0
    for n in range(1, 6):
        problem = Problem("t", kind, ("p",), n, grid, CostObjective("cost", 0.1))  # type: ignore[arg-type]
        for _ in range(40):
            answers = [rng.choice(["A", "B", "C", None]) for _ in range(n)]  # type: ignore[arg-type]
            scores = np.round(rng.uniform(0, 1, (n, k)), 1)  # coarse: ties in value happen
            cats = answer_categories("A", [])
            labels = np.array([answer_labels(cats, answers)], dtype=np.int16)
            obs = Observation(0, n, np.array([0]), np.concatenate(
                [scores, np.zeros((n, 1))], axis=1)[None], labels if kind != "bon" else None,
                np.zeros(1, dtype=np.int16) if kind != "bon" else None,
                np.array([cats.get(NO_ANSWER, -1)], dtype=np.int16) if kind != "bon" else None)
            util, _, sizes = QTable(problem).block_utilities([obs])
            # every block (m, b), completions [b m, (b + 1) m), by where it ends, then m
            spans = sorted(((m, b) for m in range(1, n + 1) for b in range(n // m)),
                           key=lambda mb: ((mb[1] + 1) * mb[0], mb[0]))
            assert sizes.tolist() == [m for m, _ in spans]
            for row, (m, b) in enumerate(spans):
                part = slice(b * m, (b + 1) * m)
                for c in range(len(grid.contexts)):
                    want = served_expectation(kind, answers[part], scores[part],
                                              weights[c, :k], "A")
                    assert util[row, c] == pytest.approx(want), (answers, scores, m, b, c)
                    checked += m == n
    assert checked == 5 * 40 * len(weights)


def test_no_answer_is_a_vote_in_training_and_in_serving_under_the_vote_rule() -> None:
    # the observed disagreement: two unreadable completions outvote one right answer
    answers = [None, "B", None, "C"]
    out = aggregate("mv", answers, np.zeros((4, 1)), [1.0], random.Random(0), "vote")
    assert out.answer is None and out.tied == (None,) and out.chosen == 0
    assert dict(out.votes) == {None: 2, "B": 1, "C": 1}
    cats = answer_categories("B", [])
    labels = np.array([answer_labels(cats, answers)], dtype=np.int16)
    grid = ContextGrid.product([Objective("correct")], [[1.0]], {"free": 0.0})
    problem = Problem("t", "mv", ("p",), 4, grid, no_answer="vote")
    obs = Observation(0, 4, np.array([0]), np.zeros((1, 4, 2)), labels,
                      np.zeros(1, dtype=np.int16), np.array([cats[NO_ANSWER]], dtype=np.int16))
    util, _, sizes = QTable(problem).block_utilities([obs])
    assert util[int(np.flatnonzero(sizes == 4)[0]), 0] == 0.0


def test_bon_ties_go_to_the_first_completion() -> None:
    out = aggregate("bon", [None] * 4, [[0.2], [0.7], [0.7], [0.1]], [1.0], random.Random(3))
    assert out.chosen == 1 and out.values == (0.2, 0.7, 0.7, 0.1)


def test_mixed_returns_the_best_style_among_the_winners_voters() -> None:
    answers = ["A", "B", "B", "A", "B"]  # B wins 3-2
    scores = [[0, 0.9], [0, 0.1], [0, 0.4], [0, 0.8], [0, 0.4]]
    out = aggregate("mixed", answers, scores, [1.0, 1.0], random.Random(0))
    assert out.answer == "B" and out.chosen == 2  # 0.4 beats 0.1; the first of the two 0.4s


def seed_answer(body: dict[str, Any]) -> str:
    """A, B, or nothing readable, by the request's seed."""
    return ["The answer is (A).", "The answer is (B).", "Hmm."][int(body["seed"]) % 3]


def test_answer_with_the_store_replays_training_samples_and_aggregates_them_the_same(
        tmp_path: Path) -> None:
    raw = mv_raw("")
    raw["train"].update(n_max=3, budget=30)
    with ScriptedServer(answer_of=seed_answer) as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw, n_records=6)
        out = tmp_path / "run"
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        policy = json.loads((out / "policy.json").read_text())
        ch = policy["policy"][1]  # budget=high
        runtime_task = load_task(task)
        query = "question 0"
        paid_before = len(srv.requests)
        res = cli("answer", str(out / "policy.json"), query, "--context", "budget=high",
                  "--store", str(out / "store.sqlite"), "--json", "--seed", "1")
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        pool_texts = [s["text"] for s in got["samples"]]
        # the first N samples of the (prompt, query) pool: those training drew first
        rt = TaskRuntime(runtime_task, [Record("x", query, None)])
        with CompletionStore(out / "store.sqlite") as store:
            stored = store.get(rt.pool(ch["prompt"], 0), list(range(ch["n"])))
        asked_now = len(srv.requests) - paid_before
        assert asked_now == ch["n"] - len(stored)  # only samples not stored are paid
        assert got["paid"] == asked_now and got["replayed"] == len(stored)
        assert pool_texts[: len(stored)] == [stored[i].text for i in sorted(stored)]
    # votes counted by hand from the texts; "no answer" only where nothing else was read
    letters = [extract_letter(t, "ABCDE") for t in pool_texts]
    counts: dict[str | None, int] = {}
    for a in letters:
        counts[a] = counts.get(a, 0) + 1
    if len(counts) > 1:
        counts.pop(None, None)
    top = max(counts.values())
    tied = [a for a in counts if counts[a] == top]
    assert got["answer"] in tied
    assert sorted(got["tied"]) == sorted("<no answer>" if a is None else a for a in tied)


def test_gateway_and_answer_reproduce_the_same_outcome(tmp_path: Path) -> None:
    from test_serve import Gateway, mcq_policy

    # both ask the same scripted sequence of answers: the same group, the same outcome
    texts = ["The answer is (C).", "Hmm.", "The answer is (C).", "The answer is (A)."]
    queue: list[str] = []

    def next_text(body: dict[str, Any]) -> str:
        return queue.pop(0)

    with ScriptedServer(answer_of=next_text) as up:
        queue.extend(texts)
        with Gateway(mcq_policy(tmp_path, up.base_url, [(0, 4), (0, 4)])) as gw:
            served = gw.ask({"budget": "high"})
        meta = served.model_extra["iapo"]  # type: ignore[index]
    assert meta["answer"] == "C" and meta["tied"] == ["C"] and meta["chosen"] == 0
    assert meta["votes"] == {"C": 2, "<no answer>": 1, "A": 1}


# --- 2. reruns and resumes ---------------------------------------------------------------------


def tokens(seed: int) -> int:
    return 3 + seed % 17  # prompts differ in length: costs matter to the decisions


def optimize_task(tmp_path: Path, url: str) -> Path:
    raw = mv_raw(url)
    raw["train"].update(n_max=3, budget=40, cost_scale=0.3)
    raw["contexts"]["budgets"] = {"low": 0.0, "mid": 0.5, "high": 1.0}
    return write_task(tmp_path, raw, n_records=10)


def test_rerun_pays_nothing_and_writes_the_identical_policy(tmp_path: Path) -> None:
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as srv:
        task = optimize_task(tmp_path, srv.base_url)
        out = tmp_path / "run"
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        first_policy = (out / "policy.json").read_bytes()
        first = json.loads((out / "report.json").read_text())
        paid = len(srv.requests)
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        assert len(srv.requests) == paid  # 0 paid
    assert (out / "policy.json").read_bytes() == first_policy
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["completions_paid"] == 0
    assert report["training"]["completions_replayed"] == report["training"]["completions_used"]
    runs = report["runs"]  # what every run paid is kept
    assert [r["status"] for r in runs] == ["finished", "finished"]
    assert runs[0]["paid"] == paid == first["training"]["completions_paid"] + first[
        "evaluation"]["completions_paid"]
    assert runs[1]["paid"] == 0 and runs[1]["replayed"] == paid
    assert "| 1 | optimize |" in (out / "report.md").read_text()


def test_a_resume_after_a_failure_gives_the_uninterrupted_policy(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as srv:
        task = optimize_task(tmp_path / "a", srv.base_url)
        assert cli("optimize", str(task), "--out", str(tmp_path / "a" / "run")).exit_code == 0
        uninterrupted = (tmp_path / "a" / "run" / "policy.json").read_bytes()
        total = len(srv.requests)
    # the same task, its server failing for good after 13 answers
    with ScriptedServer(["ok"] * 13, default="400", answer_of=seed_answer,
                        tokens_of=tokens) as srv:
        task = optimize_task(tmp_path / "b", srv.base_url)
        res = cli("optimize", str(task), "--out", str(tmp_path / "b" / "run"))
        # the upstream failing is no usage error: one line, exit status 1
        assert res.exit_code == 1 and "HTTP 400" in res.output and "Usage:" not in res.output
    with CompletionStore(tmp_path / "b" / "run" / "store.sqlite") as store:
        kept = store.count()
    # of the 13 answers, at most the one other request in flight (concurrency 2) was lost
    assert 12 <= kept <= 13
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as srv:
        task = optimize_task(tmp_path / "b", srv.base_url)
        assert cli("optimize", str(task), "--out", str(tmp_path / "b" / "run")).exit_code == 0
        assert len(srv.requests) == total - kept  # the resume paid only the rest
    resumed = json.loads((tmp_path / "b" / "run" / "policy.json").read_text())
    want = json.loads(uninterrupted)
    # the task files differ in folder and server port only: the same serving part
    assert resumed["serving"]["digest"] == want["serving"]["digest"]
    for p in (resumed, want):
        p["trace"].pop("task")
        p.pop("serving")
    assert resumed == want
    runs = json.loads((tmp_path / "b" / "run" / "report.json").read_text())["runs"]
    assert [(r["status"], r["paid"]) for r in runs] == [("interrupted", kept),
                                                        ("finished", total - kept)]


# --- 3. pools keyed by what was asked ----------------------------------------------------------


def test_changed_questions_are_new_pools_and_a_changed_gold_is_rescored_for_free(
        tmp_path: Path) -> None:
    raw = mv_raw("")
    raw["train"].update(n_max=2, budget=12)
    with ScriptedServer(answer="The answer is (B).") as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw, n_records=6, gold="B")
        out = tmp_path / "run"
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        paid = len(srv.requests)
        right = json.loads((out / "report.json").read_text())["policy"]

        # the same ids, other golds: nothing is asked, the stored texts are rescored
        write_task(tmp_path, raw, n_records=6, gold="C")
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        assert len(srv.requests) == paid
        report = json.loads((out / "report.json").read_text())
        assert report["training"]["rescored"] > 0
        for before, after in zip(right, report["policy"], strict=True):
            # every answer is B: Q was 1 - cost; against gold C it is 0 - cost
            assert after["q_hat"] == pytest.approx(before["q_hat"] - 1.0) or \
                after["n"] != before["n"] or after["prompt"] != before["prompt"]

        # the same ids, other questions: new pools, paid again, old answers never reused
        records = [{"id": f"q{i}", "query": f"another question {i}", "gold": "B"}
                   for i in range(6)]
        (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        fresh = srv.requests[paid:]
        assert len(fresh) == paid  # the same pulls, all on new pools
        assert all("another question" in r["messages"][-1]["content"] for r in fresh)
    with CompletionStore(out / "store.sqlite") as store:
        rows = store.all_completions()
    assert len(rows) == 2 * paid
    assert {r.finish_reason for r in rows} == {"stop"}
    assert {r.endpoint for r in rows} == {srv.base_url}
    assert all(r.retries == 0 and r.errors == [] and r.cost is not None for r in rows)


# --- 4. one writer per run folder --------------------------------------------------------------


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with ScriptedServer() as srv:
        task = write_task(tmp_path, mv_raw(srv.base_url))
        out = tmp_path / "run"
        with writer_lock(out, "optimize"):
            res = cli("optimize", str(task), "--out", str(out))
            assert res.exit_code == 2 and "in use by iapo optimize" in res.output
            res = cli("collect", str(task), "--out", str(out))
            assert res.exit_code == 2 and "in use" in res.output
        assert len(srv.requests) == 0
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0  # lock released


def test_another_task_into_a_run_folder_is_refused_unless_asked_for(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as srv:
        raw = mv_raw(srv.base_url)
        raw["train"].update(n_max=2, budget=12)
        task = write_task(tmp_path, raw)
        out = tmp_path / "run"
        assert cli("optimize", str(task), "--out", str(out)).exit_code == 0
        raw["name"] = "other-task"
        other = write_task(tmp_path, raw)
        res = cli("optimize", str(other), "--out", str(out))
        assert res.exit_code == 2 and "--other-task" in res.output and "unit-mv" in res.output
        paid = len(srv.requests)
        res = cli("optimize", str(other), "--out", str(out), "--other-task")
        assert res.exit_code == 0, res.output
        assert len(srv.requests) == paid  # the same content: its pools are shared


# --- 5. deadlines ------------------------------------------------------------------------------


class TrickleServer:
    """Answers every request with headers, then one byte of the body every 0.3 s."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 100000\r\n\r\n")
            for _ in range(200):
                if self.stop.is_set():
                    break
                conn.sendall(b" ")
                time.sleep(0.3)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_trickling_server_is_cut_off_at_the_deadline() -> None:
    server = TrickleServer()
    try:
        async def run() -> None:
            async with ChatClient(server.url, "m", timeout=1.0, max_retries=1,
                                  backoff=0.01) as client:
                await client.sample([{"role": "user", "content": "hi"}], {}, [1])

        t0 = time.monotonic()
        with pytest.raises(LLMError, match="deadline"):
            asyncio.run(run())
        # two attempts of 1 s each and a tiny backoff; httpx's per-read timeout alone
        # would wait forever, since a byte arrives every 0.3 s
        assert time.monotonic() - t0 < 4.0
    finally:
        server.close()


# --- 6. prompt tokens once per request ---------------------------------------------------------


def test_prompt_tokens_are_billed_once_per_request_when_n_is_honoured(tmp_path: Path) -> None:
    raw = mv_raw("")
    raw["model"]["supports_n"] = True
    raw["train"].update(n_max=4, budget=24)
    with ScriptedServer(honour_n=True, answer="The answer is (B).") as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw)
        assert cli("optimize", str(task), "--out", str(tmp_path / "run")).exit_code == 0
        requests = srv.requests
    with CompletionStore(tmp_path / "run" / "store.sqlite") as store:
        rows = store.all_completions()
    assert any(int(r.get("n", 1)) > 1 for r in requests)
    # the server billed 7 prompt tokens per request, 5 completion tokens per choice
    assert sum(r.prompt_tokens for r in rows) == 7 * len(requests)
    assert sum(r.completion_tokens for r in rows) == 5 * len(rows)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["training"]["tokens_paid"] + report["evaluation"]["tokens_paid"] == \
        7 * len(requests) + 5 * len(rows)


def test_answer_usage_counts_the_prompt_once(tmp_path: Path) -> None:
    from iapo.learners.base import Choice
    from test_live_units import write_policy

    raw = mv_raw("")
    raw["model"]["supports_n"] = True
    with ScriptedServer(honour_n=True) as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw)
        policy = write_policy(tmp_path / "p.json", task, [Choice(0, 3, 0.0, 1)] * 2)
        res = cli("answer", str(policy), "q", "--context", "budget=low", "--json")
        assert res.exit_code == 0, res.output
        assert len(srv.requests) == 1
    assert json.loads(res.stdout)["usage"] == {"prompt_tokens": 7, "completion_tokens": 15}


# --- 7. the commands fit together --------------------------------------------------------------


@pytest.mark.parametrize("text, label", [
    ("No, because the sky is blue.", "no"),
    ("Yes.", "yes"),
    ("I am not sure. The answer is: yes", "yes"),
    ("Answer: NO", "no"),
    ("Yesterday I said nothing.", None),  # no whole word
    ("Maybe.", None),
])
def test_label_extractor_reads_free_text(text: str, label: str | None) -> None:
    assert extract_label(text, ["yes", "no"]) == label


def test_label_task_trains_on_free_text_answers(tmp_path: Path) -> None:
    raw = mv_raw("")
    raw["objectives"] = [{"name": "correct", "scorer": "label", "labels": ["yes", "no"]}]
    raw["aggregator"] = {"kind": "mv", "extractor": "label", "labels": ["yes", "no"]}
    raw["train"].update(n_max=2, budget=12)
    with ScriptedServer(answer="No, because it is not.") as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw, gold="no")
        assert cli("optimize", str(task), "--out", str(tmp_path / "run")).exit_code == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # every answer is read as "no", the gold: Q = 1 less the cost
    low = report["policy"][0]
    assert low["q_hat"] == pytest.approx(1.0)


def test_answer_without_gold_shows_no_gold_scores_and_no_failures(tmp_path: Path) -> None:
    from iapo.learners.base import Choice
    from test_live_units import write_policy

    with ScriptedServer(answer="The answer is (B).") as srv:
        task = write_task(tmp_path, mv_raw(srv.base_url))
        policy = write_policy(tmp_path / "p.json", task, [Choice(0, 2, 0.0, 1)] * 2)
        res = cli("answer", str(policy), "q", "--context", "budget=low", "--json")
    assert res.exit_code == 0, res.output
    samples = json.loads(res.stdout)["samples"]
    assert [s["scores"] for s in samples] == [{}, {}]
    assert [s["failures"] for s in samples] == [[], []]


def test_supports_n_auto_probes_once_per_store(tmp_path: Path) -> None:
    raw = mv_raw("")
    raw["model"]["supports_n"] = "auto"
    raw["train"].update(n_max=3, budget=30)
    with ScriptedServer(honour_n=False, answer="The answer is (B).") as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw, n_records=8)
        assert cli("optimize", str(task), "--out", str(tmp_path / "run")).exit_code == 0
        assert sum("n" in r for r in srv.requests) == 1  # one probe in a run of many batches
        raw["train"]["budget"] = 60  # more samples needed: the server is not probed again
        write_task(tmp_path, raw, n_records=8)
        before = len(srv.requests)
        assert cli("optimize", str(task), "--out", str(tmp_path / "run")).exit_code == 0
        assert len(srv.requests) > before
        assert sum("n" in r for r in srv.requests) == 1


def test_a_short_answer_to_n_keeps_n(tmp_path: Path) -> None:
    """A server that honours n but once returns fewer choices is asked for the rest with n,
    not switched to one request per sample for good."""
    calls: list[int] = []

    async def run(url: str) -> list[int]:
        async with ChatClient(url, "m", supports_n=None) as client:
            got = await client.sample([{"role": "user", "content": "x"}], {}, [1, 2, 3, 4])
            assert client.supports_n is not False
            return [c.seed for c in got]

    with ScriptedServer(honour_n=True) as srv:
        srv.honour_n = True
        original = srv.respond

        def short_once(h: Any, action: str, body: dict[str, Any]) -> None:
            calls.append(int(body.get("n", 1)))
            if len(calls) == 1:
                body = {**body, "n": 2}  # the first answer brings 2 of the 4
            original(h, action, body)

        srv.respond = short_once  # type: ignore[method-assign]
        assert asyncio.run(run(srv.base_url)) == [1, 2, 3, 4]
    assert calls == [4, 2]


# --- 8. bad input: one line, nothing written ---------------------------------------------------


def test_export_env_leaves_a_foreign_sqlite_file_untouched(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "app.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users VALUES (1, 'ada')")
    before = other.read_bytes()
    res = cli("export-env", str(other), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 2 and "not an iapo completion store" in res.output
    assert "Traceback" not in res.output
    assert other.read_bytes() == before and not (tmp_path / "e.npz").exists()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 50)
    res = cli("export-env", str(tmp_path / "junk.sqlite"), "--out", str(tmp_path / "e.npz"))
    assert res.exit_code == 2 and "not an SQLite database" in res.output
    # where a gateway's log is asked for, the message names it too
    (tmp_path / "labels.jsonl").write_text('{"id": "chatcmpl-1", "gold": "A"}\n')
    res = cli("label-log", str(other), str(tmp_path / "labels.jsonl"))
    assert res.exit_code == 2 and "not an iapo completion store" in res.output
    assert "the file that iapo serve --log-store wrote" in res.output
    assert other.read_bytes() == before


def test_answer_with_an_arm_out_of_range_names_the_context(tmp_path: Path) -> None:
    from iapo.learners.base import Choice
    from test_live_units import write_policy

    with ScriptedServer() as srv:
        task = write_task(tmp_path, mv_raw(srv.base_url))
        policy = write_policy(tmp_path / "p.json", task, [Choice(0, 1, 0.0, 1),
                                                           Choice(5, 2, 0.0, 1)])
        res = cli("answer", str(policy), "q", "--context", "budget=low")
        assert res.exit_code == 2 and "budget=high" in res.output and "prompt 5" in res.output
        policy = write_policy(tmp_path / "p.json", task, [Choice(0, 9, 0.0, 1)] * 2)
        res = cli("answer", str(policy), "q", "--context", "budget=low")
        assert res.exit_code == 2 and "N 9" in res.output
        assert len(srv.requests) == 0 and "Traceback" not in res.output


def test_optimize_out_under_a_file_fails_before_any_request(tmp_path: Path) -> None:
    with ScriptedServer() as srv:
        task = write_task(tmp_path, mv_raw(srv.base_url))
        (tmp_path / "afile").write_text("x")
        res = cli("optimize", str(task), "--out", str(tmp_path / "afile" / "run"))
        assert res.exit_code == 2 and "is a file" in res.output and "--out" in res.output
        assert len(srv.requests) == 0


def test_records_with_the_same_text_share_a_pool_and_pay_once(tmp_path: Path) -> None:
    raw = mv_raw("")
    with ScriptedServer() as srv:
        raw["model"]["base_url"] = srv.base_url
        task = write_task(tmp_path, raw)
        records = [{"id": "a", "query": "same text", "gold": "B"},
                   {"id": "b", "query": "same text", "gold": "B"},
                   {"id": "c", "query": "other", "gold": "B"}]
        (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        from iapo.live.task import load_records

        t = load_task(task)
        runtime = TaskRuntime(t, load_records(t.data_path))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            from iapo.live.oracle import LiveOracle

            oracle = LiveOracle(runtime, store, [0, 1, 2], 100, np.random.default_rng(0))
            rows = oracle.serve([(0, 0, [0, 1]), (0, 1, [0, 1])])
            assert len(srv.requests) == 2 and oracle.paid == 2  # not 4
            assert [c.text for c in rows[0]] == [c.text for c in rows[1]]


def test_completion_token_shares_are_never_negative() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", "m")
    body = {"choices": [{"message": {"content": "a" * 10}}] * 7 + [{"message": {"content": "b"}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 68}}
    got = client._parse(body, 0.1, 1)
    # 68 in proportion to lengths 10 x 7 and 1 (sum 71): 9.58 each and 0.96; the largest
    # remainders get the 4 tokens that rounding down leaves: 10 10 10 10 9 9 9 and 1
    assert [c.completion_tokens for c in got] == [10, 10, 10, 10, 9, 9, 9, 1]
    assert [c.prompt_tokens for c in got] == [2, 1, 1, 1, 1, 1, 1, 1]

