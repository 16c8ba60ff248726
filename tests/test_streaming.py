"""`"stream": true` through the gateway, with the official openai client's streaming API.

An arm of N = 1 streams the upstream's tokens as they arrive; an aggregated arm streams the
chosen completion once its group is decided; the ``iapo`` fields come in the last chunk, the
usage after it when asked; a failure after the stream began ends it with an error event; keys,
quotas and deadlines hold as without streaming. Against a scripted upstream that streams word
by word, and against the real SmolLM2 server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import LlamaServer
from live_helpers import ScriptedServer
from test_gateway_production import KEY, keys_file, room_in_this_minute
from test_serve import QUESTION, Gateway, mcq_policy, mv_task, write_policy


def _stream(gw: Gateway, context: dict[str, Any], content: str = QUESTION,
            usage: bool = True, client: openai.OpenAI | None = None
            ) -> tuple[str, list[Any], list[float]]:
    """(the text, every chunk, when each chunk with text arrived)."""
    stream = (client or gw.client).chat.completions.create(
        model="iapo", messages=[{"role": "user", "content": content}], stream=True,
        stream_options={"include_usage": True} if usage else None,
        extra_body={"iapo_context": context})
    chunks, times, text = [], [], ""
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.monotonic())
            text += chunk.choices[0].delta.content
    return text, chunks, times


def test_n1_streams_token_by_token_and_ends_like_the_plain_response(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up:
        up.stream_delay = 0.05
        policy = mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)])
        with Gateway(policy, "--seed", "5") as gw:
            text, chunks, times = _stream(gw, {"budget": "low"})
        with Gateway(policy, "--seed", "5") as gw:  # the same seed: the same sample, whole
            plain = gw.ask({"budget": "low"})
    assert text == plain.choices[0].message.content
    assert text.startswith("The answer is (B). seed=")
    words = len(text.split(" "))
    assert len(times) == words  # one chunk a word, as the upstream sent them
    assert times[-1] - times[0] >= 0.05 * (words - 1) * 0.8  # passed on as they came
    assert up.requests[0]["stream"] is True
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    meta = last.model_extra["iapo"]
    assert meta["n"] == 1 and meta["answer"] == "B" and meta["completions_used"] == 1
    assert meta == {**meta, "context": "budget=low", "prompt_index": 0}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == words
    assert chunks[-1].usage.prompt_tokens == 7


def test_an_aggregated_arm_streams_only_once_its_group_is_decided(tmp_path: Path) -> None:
    with ScriptedServer(["slow"] * 3, answer="The answer is (B).", slow_seconds=0.6) as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 3), (0, 3)])
        with Gateway(policy, "--seed", "2") as gw:
            text, chunks, times = _stream(gw, {"budget": "low"}, usage=False)
        answered = max(up.times) + 0.6  # the last of the three answers left the upstream
    assert len(up.requests) == 3 and not any(r.get("stream") for r in up.requests)
    assert len(times) == 1 and times[0] >= answered - 0.05  # after the group, in one piece
    meta = chunks[-1].model_extra["iapo"]
    assert meta["votes"] == {"B": 3} and meta["n"] == 3
    assert text == meta["samples"][meta["chosen"]]["text"]


def test_a_decided_arm_streams_once_the_vote_is_decided(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up:
        task = mv_task(tmp_path, up.base_url)
        policy = write_policy(tmp_path / "p.json", task, "mcq-smollm2",
                              ["budget=low", "budget=high"], [(0, 4), (0, 4)])
        import json

        data = json.loads(policy.read_text())
        data["stopping"] = {"rule": "decided", "wave": 1}
        policy.write_text(json.dumps(data))
        with Gateway(policy) as gw:
            text, chunks, _ = _stream(gw, {"budget": "low"}, usage=False)
    meta = chunks[-1].model_extra["iapo"]
    # N = 4, every vote for B: decided after three (3 > the 1 left), no fourth asked for
    assert len(up.requests) == 3 and meta["completions_used"] == 3
    assert meta["completions_saved"] == 1 and text.startswith("The answer is (B).")


def test_a_failure_after_the_stream_began_ends_it_with_an_error_and_is_not_charged(
        tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [{"name": "team", "key": KEY, "completions_per_day": 100}])
    with ScriptedServer(default="500") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 2), (0, 2)]), "--keys", str(keys),
            "--upstream-retries", "0", api_key=KEY) as gw:
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=30, headers={
                "Authorization": f"Bearer {KEY}"}, json={
                "messages": [{"role": "user", "content": QUESTION}], "stream": True,
                "iapo_context": {"budget": "low"}}) as r:
            assert r.status_code == 200  # the stream began
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert '"role": "assistant"' in events[0]
        assert '"error"' in events[-1] and '"code": 502' in events[-1]
        assert "[DONE]" not in events[-1]
        with pytest.raises(openai.APIError):  # the openai client raises on the error event
            _stream(gw, {"budget": "low"})
        usage = httpx.get(f"{gw.url}/health", headers={"Authorization": f"Bearer {KEY}"}
                          ).json()["usage"]["team"]
        assert usage["completions_today"] == 0 and usage["requests_total"] == 2


def test_streaming_keeps_keys_quotas_and_deadlines(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [{"name": "team", "key": KEY, "requests_per_minute": 1}])
    with ScriptedServer(["slow"], answer="The answer is (B).", slow_seconds=3) as up, \
            Gateway(mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--keys", str(keys),
                    "--deadline", "1", api_key=KEY) as gw:
        with pytest.raises(openai.AuthenticationError):  # 401 before any event
            _stream(gw, {"budget": "low"}, client=gw.as_key("sk-wrong-0000000"))
        room_in_this_minute(15)  # the two requests below in one minute's window
        t0 = time.monotonic()
        with pytest.raises(openai.APIError) as e:  # the deadline passes mid-stream: 504
            _stream(gw, {"budget": "low"})
        assert time.monotonic() - t0 < 2.5 and "deadline" in str(e.value)
        with pytest.raises(openai.RateLimitError):  # the minute's one request is spent
            _stream(gw, {"budget": "low"})
        assert len(up.requests) == 1
        bad = httpx.post(f"{gw.url}/v1/chat/completions", headers={
            "Authorization": f"Bearer {KEY}"}, json={
            "messages": [{"role": "user", "content": "x"}], "stream": False,
            "stream_options": {"include_usage": True}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_options"


def test_the_real_model_streams_the_same_text_as_without_streaming(
        llama: LlamaServer, tmp_path: Path) -> None:
    task = mv_task(tmp_path, llama.url)
    policy = write_policy(tmp_path / "p.json", task, "mcq-smollm2",
                          ["budget=low", "budget=high"], [(0, 1), (1, 3)])
    # the streamed request pays for its samples and stores them; the plain one replays them
    # (sampling at temperature 0.8 is not repeatable across requests of a llama.cpp server)
    with Gateway(policy, "--upstream-timeout", "120", "--store",
                 str(tmp_path / "store.sqlite")) as gw:
        for context in ({"budget": "low"}, {"budget": "high"}):
            before = llama.settle(5)
            text, chunks, times = _stream(gw, context)
            assert llama.settle(10) - before == (1 if context["budget"] == "low" else 3)
            plain = gw.ask(context)
            assert llama.settle(5) - before == (1 if context["budget"] == "low" else 3)
            meta = chunks[-2].model_extra["iapo"]
            plain_meta = plain.model_extra["iapo"]  # type: ignore[index]
            assert meta["paid"] == meta["n"] and plain_meta["replayed"] == meta["n"]
            assert [x["text"] for x in meta["samples"]] == \
                [x["text"] for x in plain_meta["samples"]]
            assert meta["votes"] == plain_meta["votes"]
            if meta["n"] == 1 or len(meta["tied"]) == 1:  # no tie to draw: the same text
                assert text == plain.choices[0].message.content, context
            else:
                assert text in [x["text"] for x in meta["samples"]]
            if meta["n"] == 1:
                assert len(times) > 1  # token by token, as the model sent them
            assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
