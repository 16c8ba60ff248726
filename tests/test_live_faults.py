"""The client and the live oracle against a real loopback HTTP server that fails on purpose."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from iapo.live.client import ChatClient, LLMError
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import CompletionStore
from iapo.live.task import load_records, load_task
from iapo.pulls import Pull
from live_helpers import ScriptedServer

MESSAGES = [{"role": "user", "content": "hi"}]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def sample(url: str, seeds: list[int], **kw) -> tuple[list, ChatClient]:  # type: ignore[no-untyped-def]
    async with ChatClient(url, "m", backoff=kw.pop("backoff", 0.01), **kw) as client:
        return await client.sample(MESSAGES, {"max_tokens": 5}, seeds), client


def test_retries_429_500_and_broken_json_then_succeeds() -> None:
    with ScriptedServer(["429", "500", "broken"]) as srv:
        got, client = run(sample(srv.base_url, [7], max_retries=5, backoff=0.05))
    assert len(got) == 1 and got[0].text.endswith("seed=7")
    assert len(srv.requests) == 4 and client.stats.retries == 3
    gaps = np.diff(srv.times)
    # exponential backoff with jitter: attempt k waits in [cap/2, cap], cap = 0.05 * 2^(k-1)
    assert gaps[0] >= 0.025 - 0.005 and gaps[1] >= 0.05 - 0.005 and gaps[2] >= 0.1 - 0.005


def test_slow_response_times_out_and_is_retried() -> None:
    with ScriptedServer(["slow"], slow_seconds=1.5) as srv:
        got, client = run(sample(srv.base_url, [1], timeout=0.3, max_retries=2))
    assert len(got) == 1 and client.stats.retries == 1 and len(srv.requests) == 2


def test_persistent_failure_ends_with_a_clear_error() -> None:
    with ScriptedServer(default="500") as srv, pytest.raises(LLMError) as err:
        run(sample(srv.base_url, [1], max_retries=3))
    assert len(srv.requests) == 4
    assert "failed 4 times" in str(err.value) and "HTTP 500" in str(err.value)


def test_client_error_is_not_retried() -> None:
    with ScriptedServer(["400"]) as srv, pytest.raises(LLMError, match="HTTP 400"):
        run(sample(srv.base_url, [1], max_retries=3))
    assert len(srv.requests) == 1


def test_n_is_used_where_honoured_and_looped_where_ignored() -> None:
    with ScriptedServer(honour_n=True) as srv:
        got, client = run(sample(srv.base_url, [1, 2, 3, 4]))
    assert len(got) == 4 and len(srv.requests) == 1 and srv.requests[0]["n"] == 4
    assert client.supports_n is True
    assert sum(c.completion_tokens for c in got) == 20  # usage split over the choices

    with ScriptedServer(honour_n=False) as srv:
        got, client = run(sample(srv.base_url, [1, 2, 3, 4]))
    assert len(got) == 4 and client.supports_n is False
    # one request with n=4 (one choice back), then one per missing sample, each its own seed
    assert len(srv.requests) == 4
    seeds = [r["seed"] for r in srv.requests]
    assert sorted(seeds) == [1, 2, 3, 4]


def write_task(tmp: Path, url: str, extra: str = "") -> Path:
    data = tmp / "q.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"q{i}", "query": f"question {i}", "gold": "A"})
                              for i in range(6)) + "\n")
    task = tmp / "task.toml"
    task.write_text(textwrap.dedent(f"""
        name = "faulty"
        [model]
        base_url = "{url}"
        name = "m"
        concurrency = 1
        max_retries = 1
        supports_n = false
        timeout = 5
        [[prompts]]
        name = "a"
        template = "Q: {{query}}"
        max_tokens = 5
        [[prompts]]
        name = "b"
        template = "Question: {{query}} Answer:"
        [data]
        path = "q.jsonl"
        [[objectives]]
        name = "correct"
        scorer = "multiple_choice"
        [aggregator]
        kind = "mv"
        extractor = "multiple_choice"
        [contexts]
        weights = [[1.0]]
        budgets = {{ low = 0.0, high = 1.0 }}
        [train]
        n_max = 4
        budget = 24
        {extra}
    """))
    return task


def test_failure_mid_pull_loses_nothing_stored_and_resume_pays_only_the_rest(
        tmp_path: Path) -> None:
    # the server answers 5 requests, then fails for good
    with ScriptedServer(["ok"] * 5, default="503") as srv:
        task = load_task(write_task(tmp_path, srv.base_url))
        runtime = TaskRuntime(task, load_records(task.data_path))
        store = CompletionStore(tmp_path / "store.sqlite")
        oracle = LiveOracle(runtime, store, np.arange(6), 100, np.random.default_rng(0))
        with pytest.raises(LLMError):
            oracle.pull([Pull(0, 4, 2)])  # 8 completions wanted
        assert store.count() == 5  # everything answered was committed
        assert oracle.ledger.spent == 0  # nothing was served: the charge is undone
        store.close()
        served_by_first = len(srv.requests)
    with ScriptedServer() as srv2:
        task = load_task(write_task(tmp_path, srv2.base_url))
        runtime = TaskRuntime(task, load_records(task.data_path))
        store = CompletionStore(tmp_path / "store.sqlite")
        oracle = LiveOracle(runtime, store, np.arange(6), 100, np.random.default_rng(0))
        (obs,) = oracle.pull([Pull(0, 4, 2)])  # same seed: the same queries and samples
        assert obs.scores.shape == (2, 4, 2) and obs.labels is not None
        assert len(srv2.requests) == 3 and store.count() == 8
        # the 3 paid now are exactly the ones the first server never answered
        first_seeds = {r["seed"] for r in srv.requests[:5]}
        assert first_seeds.isdisjoint({r["seed"] for r in srv2.requests})
        store.close()
    assert served_by_first >= 5 + 2  # 5 answers, then the failing request and its one retry


def test_scorer_failure_is_recorded_and_scored_at_the_minimum(tmp_path: Path) -> None:
    scorer = tmp_path / "bad_scorer.py"
    scorer.write_text("def score(query, text, gold):\n    raise RuntimeError('boom')\n")
    with ScriptedServer() as srv:
        path = write_task(tmp_path, srv.base_url)
        text = path.read_text().replace(
            'scorer = "multiple_choice"',
            f'scorer = "python"\ncallable = "{scorer}:score"\nlower = -1.0')
        path.write_text(text)
        task = load_task(path)
        runtime = TaskRuntime(task, load_records(task.data_path))
        with CompletionStore(tmp_path / "s.sqlite") as store:
            oracle = LiveOracle(runtime, store, np.arange(6), 100, np.random.default_rng(0))
            (obs,) = oracle.pull([Pull(1, 2, 2)])
            assert (obs.scores[..., 0] == -1.0).all()
            assert oracle.failures == 4
            assert all("boom" in c.failures[0] for c in store.all_completions())
