"""Batch jobs (iapo.live.batch) against real loopback servers: the OpenAI files and batches
endpoints (tests/batch_server.py) in front of a scripted chat server whose answers follow each
request's seed, so that every mode can be compared with the synchronous one. The real SmolLM2
server is in tests/test_batch_e2e.py."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_server import BatchServer
from iapo.errors import RunError
from iapo.live.batch import (
    ApiBatches,
    BatchPending,
    lines_for,
    parse_results,
    run_lines,
    window_seconds,
)
from iapo.live.client import request_body
from iapo.live.oracle import LiveOracle, sample_seed
from iapo.live.store import CompletionStore
from iapo.live.task import TaskError, load_task
from live_helpers import ScriptedServer, _QuietServer, send_json
from test_live_trust import seed_answer, tokens
from test_live_units import cli, mv_raw, runtime_of, write_task


def batch_task(tmp: Path, url: str, supports_n: Any = False, **batch: Any) -> Path:
    """The optimize task of the trust tests (costs that follow tokens, three budgets) on
    ``url``; with ``batch`` settings, in batch mode. Written at the same path either way, so
    that the policies can be compared byte for byte (the batch settings change no run)."""
    raw = mv_raw(url)
    raw["train"].update(n_max=3, budget=40, cost_scale=0.3)
    raw["contexts"]["budgets"] = {"low": 0.0, "mid": 0.5, "high": 1.0}
    raw["model"]["supports_n"] = supports_n
    if batch:
        raw["model"].update(batch=True, batch_poll_seconds=0.05, **batch)
    return write_task(tmp, raw, n_records=10)


def test_a_line_is_the_synchronous_request_and_names_its_pool_and_samples(tmp_path: Path
                                                                         ) -> None:
    """Each line's body is what the client posts for the same samples (seed of the first
    sample, n where the server may honour it); one line per sample once it does not."""
    runtime = runtime_of(write_task(tmp_path, mv_raw("http://127.0.0.1:9/v1")))
    missing = {(0, 1): [0, 1, 2], (1, 0): [4]}
    for supports, count in ((None, 2), (True, 2), (False, 4)):
        lines = lines_for(runtime, missing, supports)
        assert len(lines) == count
        assert [x.custom_id for x in lines] == sorted(x.custom_id for x in lines)
        for line in lines:
            p, q = line.prompt, line.query
            pool = runtime.pool(p, q)
            assert line.custom_id == f"{pool}:{','.join(map(str, line.samples))}"
            prompt = runtime.task.prompts[p]
            assert line.body == request_body("m", prompt.render(runtime.records[q].query),
                                             prompt.decoding,
                                             sample_seed(pool, line.samples[0]),
                                             len(line.samples))
            row = json.loads(line.to_json())
            assert row["url"] == "/v1/chat/completions" and row["method"] == "POST"


def test_results_are_read_line_by_line_and_bad_lines_named() -> None:
    """An answered line gives its completions; an error line its reason; a malformed line
    and one matching no request give one problem line each (and are asked for again)."""
    from iapo.live.batch import Line

    lines = {x.custom_id: x for x in (Line(0, 0, "p", (0,), {"seed": 5}),
                                      Line(0, 1, "q", (1, 2), {"seed": 6}))}
    body = {"choices": [{"message": {"content": "A"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    text = "\n".join([
        json.dumps({"custom_id": "p:0", "response": {"status_code": 200, "body": body},
                    "error": None}),
        json.dumps({"custom_id": "q:1,2", "response": None,
                    "error": {"code": "batch_expired", "message": "expired"}}),
        "not json",
        json.dumps({"custom_id": "zz:0", "response": {"status_code": 200, "body": body}}),
        "",
    ])
    done, failed, problems = parse_results(text, lines, "out.jsonl")
    assert [c.text for c in done["p:0"]] == ["A"] and done["p:0"][0].prompt_tokens == 3
    assert failed == {"q:1,2": "expired"}
    assert len(problems) == 2
    assert problems[0].startswith("out.jsonl line 3: not a batch result")
    assert problems[1].startswith("out.jsonl line 4: custom_id 'zz:0' matches no request")


@pytest.mark.parametrize(("supports_n", "honour_n"), [(False, False), ("auto", False),
                                                     ("auto", True)])
def test_batch_mode_writes_the_synchronous_policy_and_pays_each_completion_once(
        tmp_path: Path, supports_n: Any, honour_n: bool) -> None:
    """The same task file and seed, synchronous and through the batch API: byte-identical
    policy.json; the upstream answers the same requests in both (each completion once,
    several per request where it honours n); a rerun submits nothing."""
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens, honour_n=honour_n) as up, \
            BatchServer(up.base_url) as bs:
        task = batch_task(tmp_path, bs.base_url, supports_n)
        assert cli("optimize", str(task), "--out", str(tmp_path / "s")).exit_code == 0
        sync = [json.dumps(b, sort_keys=True) for b in up.requests]
        task = batch_task(tmp_path, bs.base_url, supports_n, batch_window="1h")
        result = cli("optimize", str(task), "--out", str(tmp_path / "b"))
        assert result.exit_code == 0, result.output
        batched = [json.dumps(b, sort_keys=True) for b in up.requests[len(sync):]]
        if supports_n == "auto" and not honour_n:
            # the client sends one request with n to learn that it is ignored, the batch a
            # round of them: the same requests but for the n the server ignores
            def ignored(bodies: list[str]) -> list[str]:
                return sorted(json.dumps({k: v for k, v in json.loads(b).items() if k != "n"},
                                         sort_keys=True) for b in bodies)
            assert ignored(batched) == ignored(sync)
        else:
            assert sorted(batched) == sorted(sync)
        created = len(bs.created)
        assert created >= 2 and all(b["metadata"]["iapo_submission"] for b in bs.created)
        b = json.loads((tmp_path / "b" / "report.json").read_text())["batch"]
        assert "Batch jobs (api" in (tmp_path / "b" / "report.md").read_text()
        assert cli("optimize", str(task), "--out", str(tmp_path / "b")).exit_code == 0
        assert len(bs.created) == created and len(up.requests) == 2 * len(sync)
    assert (tmp_path / "b" / "policy.json").read_bytes() == \
        (tmp_path / "s" / "policy.json").read_bytes()
    # every completion paid came from a batch job, priced at half; tokens as the upstream
    # billed them (7 prompt tokens a request, completion tokens by seed)
    assert b["mode"] == "api" and b["completions_batch"] == b["completions_paid"] > 0
    assert b["submissions"] == created
    assert b["tokens_paid"][0] == 7 * len(sync)
    assert b["cost_batch"] == pytest.approx(0.5 * b["cost_synchronous"])
    assert b["cost_synchronous"] == sum(b["tokens_paid"]) == sum(b["tokens_batch"])


def test_failed_and_expired_lines_are_the_only_ones_asked_again(tmp_path: Path) -> None:
    """The first batch expires after 3 of its 18 lines, and each line of sample 2 fails the
    first time it runs: the next submission asks exactly for the expired lines and the
    failed ones, the third for the lines of sample 2 that had expired; every sample is
    stored once, and the upstream answered each once."""
    import numpy as np

    with ScriptedServer(answer_of=seed_answer) as up, \
            BatchServer(up.base_url, expire_first=3,
                        fail_once=lambda cid: cid.endswith(":2")) as bs:
        runtime = runtime_of(write_task(tmp_path, mv_raw(bs.base_url), n_records=6))
        with CompletionStore(tmp_path / "store.sqlite") as store:
            oracle = LiveOracle(runtime, store, np.arange(6), 100, np.random.default_rng(0),
                                batcher=ApiBatches(runtime.task.model, 0.05))
            rows = oracle.serve([(p, q, [0, 1, 2]) for p in range(2) for q in range(3)])
            assert [len(r) for r in rows] == [3] * 6
            assert store.count() == 18 == len(up.requests)
            assert oracle.paid == oracle.paid_batch == 18
    first = bs.created[0]["custom_ids"]
    assert len(first) == 18 and first == sorted(first)
    assert bs.created[1]["custom_ids"] == sorted(
        [c for c in first[:3] if c.endswith(":2")] + first[3:])
    assert bs.created[2]["custom_ids"] == [c for c in first[3:] if c.endswith(":2")]
    assert len(bs.created) == 3


def test_a_batch_not_done_in_time_stops_the_run_with_its_id_and_a_rerun_picks_it_up(
        tmp_path: Path) -> None:
    """With the batch held in progress past batch_wait_seconds, optimize stops with exit
    status 3 naming the batch and its status; once the batch ends, a rerun reads it without
    submitting again, and writes the synchronous run's policy."""
    import re

    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as up, \
            BatchServer(up.base_url) as bs:
        task = batch_task(tmp_path, bs.base_url)
        assert cli("optimize", str(task), "--out", str(tmp_path / "s")).exit_code == 0
        bs.hold.clear()
        task = batch_task(tmp_path, bs.base_url, batch_wait_seconds=0.5)
        stopped = cli("optimize", str(task), "--out", str(tmp_path / "b"))
        assert stopped.exit_code == 3, stopped.output
        found = re.search(r"batch (batch-\d+) is in_progress after 0.5 s; rerun iapo "
                          r"optimize", stopped.output)
        assert found is not None, stopped.output
        assert len(bs.created) == 1 and bs.created[0]["id"] == found.group(1)
        bs.hold.set()
        for _ in range(200):  # the held batch runs its lines now
            if bs.batches[found.group(1)]["status"] == "completed":
                break
            time.sleep(0.05)
        task = batch_task(tmp_path, bs.base_url)  # waits as long as the window now
        done = cli("optimize", str(task), "--out", str(tmp_path / "b"))
        assert done.exit_code == 0, done.output
        assert sum(b["custom_ids"] == bs.created[0]["custom_ids"] for b in bs.created) == 1
    assert (tmp_path / "b" / "policy.json").read_bytes() == \
        (tmp_path / "s" / "policy.json").read_bytes()


def test_files_mode_round_by_round_writes_the_synchronous_policy(tmp_path: Path) -> None:
    """`optimize --batch-files` writes round-01.jsonl and stops (exit 3) saying what to run;
    `iapo run-batch` runs it against the server; rerunning until done writes the policy of
    the synchronous run; a malformed output line is named and its request asked again."""
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as up:
        task = batch_task(tmp_path, up.base_url)
        assert cli("optimize", str(task), "--out", str(tmp_path / "s")).exit_code == 0
        paid = len(up.requests)
        run = tmp_path / "f"
        rounds, spoiled = 0, ""
        while True:
            step = cli("optimize", str(task), "--out", str(run), "--batch-files")
            if step.exit_code == 0:
                break
            assert step.exit_code == 3, step.output
            rounds += 1
            name = f"round-{rounds:02d}"
            inp, out = (run / "batches" / f"{name}{kind}.jsonl" for kind in ("", ".output"))
            assert f"{inp}" in step.output and f"-o {out}" in step.output
            assert "vllm run-batch" in step.output and "iapo run-batch" in step.output
            assert "--batch-files" in step.output
            if rounds == 2:  # the line spoiled in round 1 is named when round 1 is read
                assert "line 1: not a batch result" in step.output
                assert spoiled in inp.read_text()
            ran = cli("run-batch", str(inp), str(out), "--base-url", up.base_url)
            assert ran.exit_code == 0, ran.output
            if rounds == 1:  # one line spoiled: named, and asked for in the next round
                lines = out.read_text().splitlines()
                spoiled = json.loads(lines[0])["custom_id"]
                out.write_text("\n".join(["{broken", *lines[1:]]) + "\n")
            assert rounds < 40
        assert len(up.requests) == 2 * paid + 1  # the spoiled line was run twice
    assert rounds >= 2
    assert (run / "policy.json").read_bytes() == (tmp_path / "s" / "policy.json").read_bytes()
    assert json.loads((run / "report.json").read_text())["batch"]["mode"] == "files"


class NoBatches(BaseHTTPRequestHandler):
    """A chat server without the batch endpoints: 404 for every path."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        send_json(self, b'{"error": {"message": "Not Found"}}', 404)


def test_a_server_without_batch_endpoints_is_one_line(tmp_path: Path) -> None:
    httpd = _QuietServer(("127.0.0.1", 0), NoBatches)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        task = batch_task(tmp_path, url, batch_window="24h")
        result = cli("optimize", str(task), "--out", str(tmp_path / "run"))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.exit_code == 1
    assert "takes no batch jobs" in result.output and "--batch-files" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("batch_window", "1d", "hours or minutes"),
    ("batch_price", 1.5, "batch_price"),
    ("batch_poll_seconds", 0, "batch_poll_seconds"),
    ("batch", "yes", "model.batch"),
])
def test_bad_batch_settings_are_named(tmp_path: Path, key: str, value: Any, needle: str
                                      ) -> None:
    raw = mv_raw("http://127.0.0.1:9/v1")
    raw["model"][key] = value
    with pytest.raises(TaskError, match=needle):
        load_task(write_task(tmp_path, raw))


def test_window_seconds_by_hand() -> None:
    assert window_seconds("24h") == 86_400 and window_seconds(" 90m") == 5_400
    for bad in ("0h", "24", "h", "1.5h"):
        with pytest.raises(ValueError, match="hours or minutes"):
            window_seconds(bad)


def test_run_lines_keeps_the_order_and_reports_failures() -> None:
    """`iapo run-batch`'s runner: one result per line in the input's order, the upstream's
    answer as the body, a failing request as an error line."""
    with ScriptedServer(["ok", "400", "ok"], answer_of=seed_answer) as up:
        text = "".join(json.dumps({"custom_id": f"c{i}", "url": "/v1/chat/completions",
                                   "body": {"model": "m", "seed": i, "messages": []}}) + "\n"
                       for i in range(3))
        rows = [json.loads(x) for x in run_lines(text, up.base_url, concurrency=1).splitlines()]
    assert [r["custom_id"] for r in rows] == ["c0", "c1", "c2"]
    assert rows[0]["error"] is None and rows[0]["response"]["status_code"] == 200
    assert rows[0]["response"]["body"]["choices"][0]["message"]["content"].startswith(
        seed_answer({"seed": 0}))
    assert rows[1]["error"]["code"] == "400" and rows[2]["error"] is None



def test_a_lost_create_answer_is_found_not_made_twice(tmp_path: Path) -> None:
    """The first two creations answer HTTP 500 although the server made the batch: iapo
    looks for the batch by its key before asking again, so no submission is made twice, and
    the policy is the synchronous one."""
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as up, \
            BatchServer(up.base_url) as bs:
        task = batch_task(tmp_path, bs.base_url)
        assert cli("optimize", str(task), "--out", str(tmp_path / "s")).exit_code == 0
        bs.lose_creates = 2
        task = batch_task(tmp_path, bs.base_url, batch_window="2h")
        result = cli("optimize", str(task), "--out", str(tmp_path / "b"))
        assert result.exit_code == 0, result.output
        assert bs.lose_creates == 0
        keys = [b["metadata"]["iapo_submission"] for b in bs.created]
        assert len(keys) == len(set(keys)) >= 2
    assert (tmp_path / "b" / "policy.json").read_bytes() == \
        (tmp_path / "s" / "policy.json").read_bytes()


def oracle_with(tmp_path: Path, url: str, **batcher: Any) -> tuple[LiveOracle, CompletionStore]:
    import numpy as np

    runtime = runtime_of(write_task(tmp_path, mv_raw(url), n_records=6))
    runtime.supports_n = False
    store = CompletionStore(tmp_path / "store.sqlite")
    return LiveOracle(runtime, store, np.arange(6), 100, np.random.default_rng(0),
                      batcher=ApiBatches(runtime.task.model, 0.05, **batcher)), store


PLAN = [(p, q, [0, 1]) for p in range(2) for q in range(2)]


def records(store: CompletionStore) -> list[tuple[str, dict[str, Any]]]:
    rows = store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'batch %' AND key "
                            "NOT IN ('batch rounds', 'batch tries')").fetchall()
    return [(k, json.loads(v)) for k, v in rows]


def test_a_batch_created_before_a_crash_is_found_by_its_key_across_pages(tmp_path: Path
                                                                         ) -> None:
    """A crash after the batch was created but before its id was recorded: the resume
    finds it by its key in the server's list (a page of one batch, three newer batches of
    others before it) and creates none."""
    with ScriptedServer(answer_of=seed_answer) as up, BatchServer(up.base_url) as bs:
        bs.hold.clear()
        oracle, store = oracle_with(tmp_path, bs.base_url, wait=0.2)
        with store, pytest.raises(BatchPending):
            oracle.serve(PLAN)
        with CompletionStore(tmp_path / "store.sqlite") as store:
            ((key, rec),) = records(store)
            store.set_meta(key, {k: v for k, v in rec.items() if k != "batch"})  # the crash
        for i in range(3):  # others' batches, newer
            up_file = httpx.post(f"{bs.base_url}/files", data={"purpose": "batch"},
                                 files={"file": ("x.jsonl", b"", "application/jsonl")}).json()
            httpx.post(f"{bs.base_url}/batches", json={
                "input_file_id": up_file["id"], "endpoint": "/v1/chat/completions",
                "metadata": {"iapo_submission": f"other-{i}"}})
        bs.page_size = 1
        bs.hold.set()
        oracle, store = oracle_with(tmp_path, bs.base_url)
        with store:
            assert [len(r) for r in oracle.serve(PLAN)] == [2] * 4
            assert records(store)[0][1]["batch"] == rec["batch"]
        assert len(bs.created) == 4 and len(up.requests) == 8  # ours and the three others


def test_a_crash_while_storing_results_reads_the_same_batch_again(tmp_path: Path) -> None:
    """A store that fails while a batch's results are being kept (a full disk) keeps none
    of them: the rerun reads the same batch again, submits nothing, and stores each
    completion once."""
    with ScriptedServer(answer_of=seed_answer) as up, BatchServer(up.base_url) as bs:
        oracle, store = oracle_with(tmp_path, bs.base_url)
        with store:
            def full(*args: Any, **kw: Any) -> None:
                raise RunError("the disk is full")

            store.put_all = full  # type: ignore[method-assign]
            with pytest.raises(RunError, match="disk is full"):
                oracle.serve(PLAN)
        oracle, store = oracle_with(tmp_path, bs.base_url)
        with store:
            assert store.count() == 0
            assert [len(r) for r in oracle.serve(PLAN)] == [2] * 4 and store.count() == 8
        assert len(bs.created) == 1 and len(up.requests) == 8


def test_a_batch_gone_from_the_server_is_asked_for_again(tmp_path: Path) -> None:
    """A recorded batch that the server no longer has (HTTP 404) is said, and its lines are
    submitted again."""
    with ScriptedServer(answer_of=seed_answer) as up, BatchServer(up.base_url) as bs:
        bs.hold.clear()
        oracle, store = oracle_with(tmp_path, bs.base_url, wait=0.2)
        with store, pytest.raises(BatchPending):
            oracle.serve(PLAN)
        bs.batches.clear()
        bs.hold.set()
        said: list[str] = []
        oracle, store = oracle_with(tmp_path, bs.base_url, say=said.append)
        with store:
            assert [len(r) for r in oracle.serve(PLAN)] == [2] * 4
        assert any("is gone from the server" in line for line in said)
        assert len(bs.created) == 2


def test_files_mode_gives_up_on_a_line_that_always_fails_and_reads_an_error_file_alone(
        tmp_path: Path) -> None:
    """Files mode, one process per round: a round whose requests all failed has only an
    error file, and the run goes on from it; a line that fails in 3 rounds ends the run
    (exit status 1) naming it and its reason, though each round was a process of its own."""
    with ScriptedServer(answer_of=seed_answer, tokens_of=tokens) as up:
        task = batch_task(tmp_path, up.base_url)
        run = tmp_path / "f"
        bad = None
        for rounds in range(1, 10):
            step = cli("optimize", str(task), "--out", str(run), "--batch-files")
            if step.exit_code != 3:
                break
            inp = run / "batches" / f"round-{rounds:02d}.jsonl"
            ids = [json.loads(x)["custom_id"] for x in inp.read_text().splitlines()]
            if rounds == 1:  # every request failed: the provider gives an error file only
                bad = ids[0]
                errors = [{"custom_id": c, "response": None,
                           "error": {"code": "server_error", "message": "down"}} for c in ids]
                (run / "batches" / "round-01.errors.jsonl").write_text(
                    "".join(json.dumps(e) + "\n" for e in errors))
                continue
            out = run / "batches" / f"round-{rounds:02d}.output.jsonl"
            assert cli("run-batch", str(inp), str(out), "--base-url", up.base_url
                       ).exit_code == 0
            if bad in ids:  # that line fails again
                rows = [json.loads(x) for x in out.read_text().splitlines()]
                for r in rows:
                    if r["custom_id"] == bad:
                        r.update(response=None, error={"code": "400", "message": "too long"})
                out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert step.exit_code == 1, step.output
    assert f"batch request {bad[:60]} failed in 3 submissions" in step.output
    assert "too long" in step.output and rounds == 4


def test_run_batch_keeps_each_answer_and_a_rerun_asks_only_for_the_rest(tmp_path: Path
                                                                        ) -> None:
    """`iapo run-batch` interrupted after two answers (their lines in OUTPUT.partial): the
    rerun asks the server for the two others only, and writes all four in order."""
    with ScriptedServer(answer_of=seed_answer) as up:
        inp = tmp_path / "in.jsonl"
        inp.write_text("".join(json.dumps({"custom_id": f"c{i}", "url": "/v1/chat/completions",
                                           "body": {"model": "m", "seed": i, "messages": []}})
                               + "\n" for i in range(4)))
        out = tmp_path / "out.jsonl"
        first = run_lines(inp.read_text(), up.base_url).splitlines()
        Path(f"{out}.partial").write_text("\n".join(first[:2]) + "\n{torn")
        ran = cli("run-batch", str(inp), str(out), "--base-url", up.base_url)
        assert ran.exit_code == 0, ran.output
        assert "2 kept from an earlier run" in ran.output
        assert len(up.requests) == 4 + 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["c0", "c1", "c2", "c3"]
    assert not Path(f"{out}.partial").exists()


def test_run_batch_without_its_input_is_one_line(tmp_path: Path) -> None:
    result = cli("run-batch", str(tmp_path / "none.jsonl"), str(tmp_path / "out.jsonl"),
                 "--base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 2 and "is not a file; give a batch file" in result.output
    assert not (tmp_path / "out.jsonl").exists()
