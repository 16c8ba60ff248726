"""Batch jobs end to end against the real SmolLM2 server: the OpenAI files and batches
endpoints (tests/batch_server.py) run each line against it, and its own request log counts
the completions (it ignores ``n``: one completion per request)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from batch_server import BatchServer
from conftest import LlamaServer
from iapo.live.batch import ApiBatches
from iapo.live.oracle import LiveOracle, TaskRuntime, sample_seed
from iapo.live.store import CompletionStore
from iapo.live.task import load_records, load_task
from test_live_e2e import DATA, iapo, stored

BATCH = "batch = true\nbatch_poll_seconds = 0.2\n"


def write_task(folder: Path, url: str, batch: str = "") -> Path:
    """The small multiple-choice task of the live tests on ``url``, without its slowest
    prompt and at T = 24; with ``batch`` (model settings), in batch mode. The same path
    either way: the policies compare byte for byte."""
    shutil.copy(DATA / "mcq.jsonl", folder / "mcq.jsonl")
    text = (DATA / "mcq_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    reason = text.index('[[prompts]]\nname = "reason"')
    text = text[:reason] + text[text.index("[[prompts]]", reason + 1):]
    path = folder / "task.toml"
    path.write_text(text.replace("[model]\n", "[model]\n" + batch, 1).replace(
        "budget = 36", "budget = 24"))
    return path


@pytest.fixture(scope="module")
def front(llama: LlamaServer) -> Iterator[BatchServer]:
    with BatchServer(llama.url) as server:
        yield server


@pytest.fixture(scope="module")
def synchronous(llama: LlamaServer, front: BatchServer,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synchronous run of the task through the batch server's chat endpoint."""
    folder = tmp_path_factory.mktemp("batch-e2e")
    task = write_task(folder, front.base_url)
    iapo("optimize", str(task), "--out", str(folder / "sync"))
    return folder


def batch_meta(store: Path) -> list[dict[str, object]]:
    """The batches a store records; none while the store's file exists but its tables are
    not written yet (a run that has just started)."""
    with sqlite3.connect(store) as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
            return []
        return [json.loads(v) for (v,) in db.execute(
            "SELECT value FROM meta WHERE key LIKE 'batch %' AND key != 'batch rounds'")]


def test_batch_mode_writes_the_synchronous_policy_paying_each_completion_once(
        llama: LlamaServer, front: BatchServer, synchronous: Path) -> None:
    """A full optimize through the batch API: the synchronous run's policy.json byte for
    byte (SmolLM2's samples are reproducible by seed); the server's log counts exactly the
    completions stored; a rerun submits nothing and pays nothing."""
    task = write_task(synchronous, front.base_url, BATCH)
    run = synchronous / "api"
    before, created = llama.settle(), len(front.created)
    iapo("optimize", str(task), "--out", str(run))
    assert llama.settle() - before == stored(run / "store.sqlite")
    assert stored(run / "store.sqlite") == stored(synchronous / "sync" / "store.sqlite")
    assert len(front.created) - created >= 2
    assert (run / "policy.json").read_bytes() == \
        (synchronous / "sync" / "policy.json").read_bytes()
    report = json.loads((run / "report.json").read_text())
    assert report["batch"]["completions_batch"] == stored(run / "store.sqlite")
    before, created = llama.settle(), len(front.created)
    iapo("optimize", str(task), "--out", str(run))
    assert llama.settle() == before and len(front.created) == created


def test_kill_9_while_polling_then_a_resume_submits_nothing_twice(
        llama: LlamaServer, front: BatchServer, synchronous: Path) -> None:
    """`iapo optimize` is killed (SIGKILL) while it polls a batch held in progress; the batch
    then finishes; the resume picks it up without submitting it again, submits the rest, and
    writes the synchronous policy; the server's log counts each completion once."""
    task = write_task(synchronous, front.base_url, BATCH)
    run = synchronous / "killed"
    before, created = llama.settle(), len(front.created)
    front.hold.clear()
    proc = subprocess.Popen([sys.executable, "-m", "iapo.cli", "optimize", str(task), "--out",
                             str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # polling: the batch id is in the store
            store = run / "store.sqlite"
            if store.exists() and any("batch" in m for m in batch_meta(store)):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no batch was submitted")
        time.sleep(0.5)
        proc.kill()
        proc.wait(30)
    finally:
        proc.kill()
        front.hold.set()
    first = front.created[created]
    assert len(front.created) == created + 1
    iapo("optimize", str(task), "--out", str(run))
    keys = [b["metadata"]["iapo_submission"] for b in front.created[created:]]
    assert len(keys) == len(set(keys))  # every submission once
    assert sum(b["custom_ids"] == first["custom_ids"] for b in front.created[created:]) == 1
    assert llama.settle() - before == stored(run / "store.sqlite")
    assert (run / "policy.json").read_bytes() == \
        (synchronous / "sync" / "policy.json").read_bytes()


def test_an_expired_batch_and_failed_lines_are_retried_for_exactly_the_missing_pulls(
        llama: LlamaServer, tmp_path: Path) -> None:
    """Training's pulls of 3 samples of each prompt on 3 queries (18 requests): the first
    batch expires after 7 lines, and every line of sample 1 fails the first time it runs.
    The second submission asks for exactly the expired lines and the failed ones, the third
    for the lines of sample 1 that had expired; every sample is stored once, as many as the
    server's log counts; each retried sample asked with its own seed."""
    with BatchServer(llama.url, expire_first=7,
                     fail_once=lambda cid: cid.endswith(":1")) as bs:
        task = load_task(write_task(tmp_path, bs.base_url, BATCH))
        runtime = TaskRuntime(task, load_records(task.data_path))
        runtime.supports_n = False
        before = llama.settle()
        with CompletionStore(tmp_path / "store.sqlite") as store:
            oracle = LiveOracle(runtime, store, np.arange(3), 100, np.random.default_rng(0),
                                batcher=ApiBatches(task.model, 0.2))
            rows = oracle.serve([(p, q, [0, 1, 2]) for p in range(2) for q in range(3)])
            assert [len(r) for r in rows] == [3] * 6 and store.count() == 18
        assert llama.settle() - before == 18
    first = bs.created[0]["custom_ids"]
    assert len(bs.created) == 3 and len(first) == 18
    second = bs.created[1]["custom_ids"]
    assert second == sorted([c for c in first[:7] if c.endswith(":1")] + first[7:])
    assert bs.created[2]["custom_ids"] == [c for c in first[7:] if c.endswith(":1")]
    # each retried sample was asked with its own seed, as the synchronous client asks it
    with CompletionStore(tmp_path / "store.sqlite") as store:
        for cid in second:
            pool, sample = cid.split(":")
            assert store.get(pool, [int(sample)])[int(sample)].seed == \
                sample_seed(pool, int(sample))


def test_files_mode_round_by_round_with_a_runner_against_the_real_server(
        llama: LlamaServer, front: BatchServer, synchronous: Path) -> None:
    """`optimize --batch-files`, each round run by `iapo run-batch` against the real server
    (the stand-in for any batch runner), until the policy is written: the synchronous
    run's policy byte for byte, each completion paid once."""
    task = write_task(synchronous, front.base_url)
    run = synchronous / "files"
    before = llama.settle()
    rounds = 0
    while True:
        step = iapo("optimize", str(task), "--out", str(run), "--batch-files", check=False)
        if step.returncode == 0:
            break
        assert step.returncode == 3, step.stdout + step.stderr
        rounds += 1
        inp = run / "batches" / f"round-{rounds:02d}.jsonl"
        assert str(inp) in step.stderr
        iapo("run-batch", str(inp), str(inp.with_suffix(".output.jsonl")), "--base-url",
             llama.url, "--concurrency", "1")
        assert rounds < 40
    assert rounds >= 2
    assert llama.settle() - before == stored(run / "store.sqlite")
    assert (run / "policy.json").read_bytes() == \
        (synchronous / "sync" / "policy.json").read_bytes()
