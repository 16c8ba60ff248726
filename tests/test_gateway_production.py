"""`iapo serve` as a team would expose it: keys, per-key contexts and limits, body limits,
malformed contexts, policy reloads, scoring off the event loop, several workers, and a load
test against a failing upstream. Every gateway is a real `iapo serve` process on loopback,
called with the official openai client (or raw HTTP where the client cannot say it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import free_port
from live_helpers import ScriptedServer
from test_serve import QUESTION, Gateway, mcq_policy

KEY = "sk-test-0123456789"


def room_in_this_minute(seconds: float) -> None:
    """Wait, if need be, until the current UTC minute has ``seconds`` left: per-minute limits
    are fixed windows, and a test whose requests straddle two minutes sees two budgets."""
    while time.time() % 60 > 60 - seconds:
        time.sleep(0.2)


def keys_file(tmp: Path, rows: list[dict[str, Any]]) -> Path:
    lines = []
    for row in rows:
        lines.append("[[keys]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in row.items()]
    path = tmp / "keys.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- authentication ---------------------------------------------------------------------------


def test_keys_are_required_and_checked(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]),
            env={"IAPO_API_KEYS": f"other-key-999,{KEY}"}) as gw:
        with pytest.raises(openai.AuthenticationError) as e:
            gw.as_key("sk-wrong-000000").chat.completions.create(
                model="iapo", messages=[{"role": "user", "content": QUESTION}],
                extra_body={"iapo_context": {"budget": "low"}})
        assert e.value.status_code == 401 and "wrong" in str(e.value)
        body = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": []}).json()
        assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == 401
        assert httpx.get(f"{gw.url}/v1/models").status_code == 401
        assert len(up.requests) == 0  # nobody without a key reached the upstream
        r = gw.as_key(KEY).chat.completions.create(
            model="iapo", messages=[{"role": "user", "content": QUESTION}],
            extra_body={"iapo_context": {"budget": "low"}})
        assert r.choices[0].message.content.startswith("The answer is (B).")
        assert len(up.requests) == 1
        # anonymous /health: the status only; with a key: the setup and the usage
        assert httpx.get(f"{gw.url}/health").json() == {"status": "ok"}
        full = httpx.get(f"{gw.url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
        assert full["task"] == "mcq-smollm2" and full["usage"]["key-2"]["requests_total"] == 1


def test_a_key_limited_to_low_budget_gets_403_for_high(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [
        {"name": "cheap", "key": KEY, "contexts": ["budget=low"],
         "default_context": "budget=low"},
        {"name": "all", "key": "sk-all-0123456789"},
    ])
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (1, 2)]), "--keys", str(keys),
            api_key=KEY) as gw:
        with pytest.raises(openai.PermissionDeniedError) as e:
            gw.ask({"budget": "high"})
        assert e.value.status_code == 403 and "budget=high" in str(e.value)
        # its default context needs no context in the request
        r = gw.client.chat.completions.create(
            model="iapo", messages=[{"role": "user", "content": QUESTION}])
        assert r.model_extra["iapo"]["context"] == "budget=low"  # type: ignore[index]
        r = gw.as_key("sk-all-0123456789").chat.completions.create(
            model="iapo", messages=[{"role": "user", "content": QUESTION}],
            extra_body={"iapo_context": {"budget": "high"}})
        assert r.model_extra["iapo"]["n"] == 2  # type: ignore[index]
        assert len(up.requests) == 1 + 2


def test_rate_and_daily_completion_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [
        {"name": "rpm", "key": KEY, "requests_per_minute": 2},
        {"name": "daily", "key": "sk-daily-0123456", "completions_per_day": 5},
    ])
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 3)]), "--keys", str(keys),
            api_key=KEY) as gw:
        room_in_this_minute(15)
        gw.ask({"budget": "low"})
        gw.ask({"budget": "low"})
        with pytest.raises(openai.RateLimitError) as e:
            gw.ask({"budget": "low"})
        assert e.value.status_code == 429
        wait = int(e.value.response.headers["retry-after"])
        assert 1 <= wait <= 60 and "requests_per_minute" in str(e.value)
        daily = gw.as_key("sk-daily-0123456")
        ask = dict(model="iapo", messages=[{"role": "user", "content": QUESTION}],
                   extra_body={"iapo_context": {"budget": "high"}})
        daily.chat.completions.create(**ask)  # 3 completions of 5
        assert len(up.requests) == 2 + 3
        with pytest.raises(openai.RateLimitError) as e:
            daily.chat.completions.create(**ask)  # 3 more would make 6
        assert "completions_per_day" in str(e.value)
        assert 1 <= int(e.value.response.headers["retry-after"]) <= 86400
        assert len(up.requests) == 2 + 3  # refused requests never reach the upstream
        health = httpx.get(f"{gw.url}/health", headers={"Authorization": f"Bearer {KEY}"}
                           ).json()
        assert health["usage"] == {"rpm": health["usage"]["rpm"]}  # its own key only
        assert health["usage"]["rpm"]["requests_this_minute"] == 2
        usage = httpx.get(f"{gw.url}/health",
                          headers={"Authorization": "Bearer sk-daily-0123456"}).json()["usage"]
        assert usage["daily"]["completions_today"] == 3


def test_a_request_larger_than_the_daily_limit_is_403_not_429(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [{"name": "small", "key": KEY, "completions_per_day": 2}])
    with ScriptedServer() as up, Gateway(mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 3)]),
                                         "--keys", str(keys), api_key=KEY) as gw:
        with pytest.raises(openai.PermissionDeniedError) as e:
            gw.ask({"budget": "high"})  # N = 3 can never fit a day of 2
        assert "3 completions" in str(e.value)
        assert gw.ask({"budget": "low"}).choices and len(up.requests) == 1


def test_without_keys_a_non_loopback_host_is_refused(tmp_path: Path) -> None:
    with ScriptedServer() as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)])
        env = {k: v for k, v in __import__("os").environ.items() if k != "IAPO_API_KEYS"}
        out = subprocess.run([sys.executable, "-m", "iapo.cli", "serve", str(policy), "--host",
                              "0.0.0.0", "--port", str(free_port())], capture_output=True,
                             text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "IAPO_API_KEYS" in out.stderr and "--keys" in out.stderr
    assert "Traceback" not in out.stderr and "serving on" not in out.stdout


# --- limits and errors ------------------------------------------------------------------------


def test_large_bodies_get_413_and_never_reach_the_upstream(tmp_path: Path) -> None:
    with ScriptedServer() as up, Gateway(mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]),
                                         "--max-body", "4096") as gw:
        with pytest.raises(openai.APIStatusError) as e:
            gw.ask({"budget": "low"}, content="x" * 10_000)
        assert e.value.status_code == 413
        # a chunked body without a length is cut off too
        big = (b"{" + b" " * 10_000 + b"}" for _ in range(1))
        r = httpx.post(f"{gw.url}/v1/chat/completions", content=big,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert len(up.requests) == 0
        assert gw.ask({"budget": "low"}).choices  # and it goes on serving


@pytest.mark.parametrize("how, value", [
    ("header", "budget"),                    # no "="
    ("header", "budget=low,budget=high"),    # a key given twice
    ("header", "=low"),                      # no key
    ("body", {"budget": {"a": {"b": 1}}}),   # nested
    ("body", ["budget", "low"]),             # not an object
    ("body", 5),
    ("body", {"budget": True}),
])
def test_every_malformed_context_gets_400(tmp_path: Path, how: str, value: Any) -> None:
    with ScriptedServer() as up, Gateway(mcq_policy(tmp_path, up.base_url,
                                                    [(0, 1), (0, 1)])) as gw:
        body: dict[str, Any] = {"model": "x", "messages": [{"role": "user", "content": "q"}]}
        headers = {}
        if how == "header":
            headers["X-IAPO-Context"] = value
        else:
            body["iapo_context"] = value
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "iapo_context"
        deep = "[" * 100_000 + "]" * 100_000
        r = httpx.post(f"{gw.url}/v1/chat/completions", content=deep,
                       headers={"content-type": "application/json"})
        assert r.status_code in (400, 413) and "Traceback" not in r.text
        assert len(up.requests) == 0


def test_a_bad_reload_keeps_the_old_policy_and_health_says_degraded(tmp_path: Path) -> None:
    with ScriptedServer() as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 1), (1, 2)])
        good = policy.read_text()
        with Gateway(policy) as gw:
            data = json.loads(good)
            data["policy"][1]["n"] = 0  # observed: accepted, then every request failed
            for bad in (json.dumps(data), "{\"format\": \"iapo-policy/1\", \xff}"):
                time.sleep(1.1)
                policy.write_bytes(bad.encode("latin-1") if "\xff" in bad else bad.encode())
                time.sleep(1.1)
                health = httpx.get(f"{gw.url}/health").json()
                assert health["status"] == "degraded"
                assert gw.ask({"budget": "high"}).model_extra["iapo"]["n"] == 2  # type: ignore[index]
            time.sleep(1.1)
            policy.write_text(good)
            time.sleep(1.1)
            assert httpx.get(f"{gw.url}/health").json()["status"] == "ok"


def test_serve_refuses_a_bad_policy_and_a_busy_port_before_serving(tmp_path: Path) -> None:
    with ScriptedServer() as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 1), (1, 2)])
        data = json.loads(policy.read_text())
        data["policy"][0]["n"] = 0
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        out = subprocess.run([sys.executable, "-m", "iapo.cli", "serve", str(bad), "--port",
                              str(free_port())], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "n must be" in out.stderr
        assert "Traceback" not in out.stderr and "serving on" not in out.stdout
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            out = subprocess.run([sys.executable, "-m", "iapo.cli", "serve", str(policy),
                                  "--port", str(port)], capture_output=True, text=True,
                                 timeout=60)
        assert out.returncode == 2 and "cannot listen" in out.stderr
        assert "serving on" not in out.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_port_0_says_the_port_it_listens_on(tmp_path: Path, workers: str) -> None:
    """--port 0 lets the system pick a free port: "serving on" names the port bound, not 0,
    and the gateway answers there (one process, and workers that share the socket)."""
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--workers", workers,
            port=0) as gw:
        assert gw.announced.startswith("serving ") and gw.port > 0
        r = gw.ask({"budget": "low"})
    assert r.model_extra["iapo"]["answer"] == "B" and len(up.requests) == 1


def test_errors_name_neither_the_upstream_nor_files(tmp_path: Path) -> None:
    with ScriptedServer(default="500") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]),
            "--upstream-retries", "0") as gw:
        with pytest.raises(openai.APIStatusError) as e:
            gw.ask({"budget": "low"})
        assert e.value.status_code == 502
        text = e.value.response.text
        port = up.base_url.split(":")[2].split("/")[0]
        assert port not in text and "127.0.0.1" not in text and str(tmp_path) not in text
        assert "HTTP 500" in text  # the reason stays, the upstream's own error body does not
        assert "scripted" not in text


# --- scoring off the event loop ---------------------------------------------------------------


class SlowReward:
    """A reward model that takes ``seconds`` per score."""

    def __init__(self, seconds: float) -> None:
        slow = seconds

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(slow)
                payload = b'{"score": 0.5}'
                self.send_response(200)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def slow_bon_policy(tmp: Path, upstream: str, reward: str, n: int) -> Path:
    """A Best-of-N task scored by the reward model at ``reward``, and a policy of N = n."""
    from test_serve import write_policy

    (tmp / "q.jsonl").write_text('{"id": "a", "query": "q"}\n{"id": "b", "query": "r"}\n')
    task = tmp / "bon.toml"
    task.write_text(textwrap.dedent(f"""
        name = "slow-bon"
        [model]
        base_url = "{upstream}"
        name = "m"
        supports_n = false
        [[prompts]]
        template = "{{query}}"
        [data]
        path = "q.jsonl"
        [[objectives]]
        name = "reward"
        scorer = "http"
        url = "{reward}"
        [aggregator]
        kind = "bon"
        [contexts]
        weights = [[1.0]]
        budgets = {{ low = 0.0 }}
        [train]
        n_max = 2
        budget = 10
    """))
    return write_policy(tmp / "p.json", task, "slow-bon", ["budget=low"], [(0, n)])


def test_health_answers_at_once_while_a_slow_scorer_runs(tmp_path: Path) -> None:
    reward = SlowReward(3.0)
    try:
        with ScriptedServer() as up:
            policy = slow_bon_policy(tmp_path, up.base_url, reward.url, 2)
            with Gateway(policy, "--default-context", "budget=low") as gw:
                with ThreadPoolExecutor(2) as pool:
                    chats = [pool.submit(gw.ask, None) for _ in range(2)]
                    time.sleep(0.5)  # both requests are scoring now
                    times = []
                    with httpx.Client() as http:  # one kept-alive connection
                        for _ in range(7):
                            t0 = time.perf_counter()
                            assert http.get(f"{gw.url}/health").status_code == 200
                            times.append(time.perf_counter() - t0)
                    busy = [c.running() for c in chats]
                    for c in chats:
                        assert c.result().model_extra["iapo"]["values"] == [0.5, 0.5]  # type: ignore[index]
                # the scorers were still at work, and /health answered at once: the median
                # under 50 ms (blocked, it waited the scorers' seconds)
                assert all(busy)
                assert sorted(times)[3] < 0.05 and max(times) < 1.0, times
    finally:
        reward.close()


def test_one_deadline_covers_sampling_and_scoring(tmp_path: Path) -> None:
    reward = SlowReward(3.0)
    try:
        with ScriptedServer() as up:
            policy = slow_bon_policy(tmp_path, up.base_url, reward.url, 1)
            with Gateway(policy, "--default-context", "budget=low", "--deadline", "1") as gw:
                t0 = time.perf_counter()
                with pytest.raises(openai.APIStatusError) as e:
                    gw.ask(None)
                assert e.value.status_code == 504 and "deadline" in str(e.value)
                assert time.perf_counter() - t0 < 2.5
    finally:
        reward.close()


# --- several workers --------------------------------------------------------------------------


def test_two_workers_share_the_key_limits_and_log_every_request(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [{"name": "team", "key": KEY, "requests_per_minute": 12}])
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 2), (0, 2)]), "--keys", str(keys),
            "--workers", "2", "--log-store", str(log), api_key=KEY) as gw:
        room_in_this_minute(20)
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: _ask_status(gw), range(20)))
        # one limit of 12 for both workers together, not 12 per worker
        assert results.count(200) == 12 and results.count(429) == 8
        assert len(up.requests) == 12 * 2
    import sqlite3

    with sqlite3.connect(log) as db:
        assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 12 * 2
        # one row per answered request, each with its own id and its two completions
        rows = db.execute("SELECT id, n, caller, reason FROM served").fetchall()
        assert len(rows) == 12 and len({r[0] for r in rows}) == 12
        assert {r[1:] for r in rows} == {(2, "team", "policy")}
        per = dict(db.execute("SELECT pool, COUNT(*) FROM completions GROUP BY pool"))
        assert per == {r[0]: 2 for r in rows}


def _ask_status(gw: Gateway) -> int:
    try:
        gw.ask({"budget": "low"})
        return 200
    except openai.APIStatusError as e:
        return e.status_code


# --- load ---------------------------------------------------------------------------------------


def test_load_with_keys_and_a_failing_upstream_loses_nothing(tmp_path: Path) -> None:
    import random

    rng = random.Random(4)
    script = ["500" if rng.random() < 0.1 else "ok" for _ in range(600)]
    with ScriptedServer(script, answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 3)]), "--upstream-retries", "0",
            "--upstream-timeout", "5", env={"IAPO_API_KEYS": KEY}, api_key=KEY) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=KEY, max_retries=0,
                               timeout=20)

        def one(i: int) -> int:
            try:
                client.chat.completions.create(
                    model="iapo", messages=[{"role": "user", "content": QUESTION}],
                    extra_body={"iapo_context": {"budget": "high" if i % 2 else "low"}})
                return 200
            except openai.APIStatusError as e:
                return e.status_code

        t0 = time.monotonic()
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(one, range(200)))
        elapsed = time.monotonic() - t0
    assert len(codes) == 200 and set(codes) <= {200, 502}  # every request answered
    assert codes.count(502) > 0 and codes.count(200) > 100
    assert elapsed < 60  # none hung


# --- the limits themselves, by hand -------------------------------------------------------------


def test_keys_are_found_only_by_the_exact_secret() -> None:
    # the limits themselves, by hand on both stores: tests/test_limits_backends.py
    from iapo.serve.keys import KeyRing, keys_from_env

    # keys: found only by the exact secret
    ring = KeyRing(keys_from_env("alpha-key-1, beta-key-2"))
    assert ring.find("Bearer beta-key-2").name == "key-2"  # type: ignore[union-attr]
    assert ring.find("Bearer beta-key-") is None and ring.find("beta-key-2") is None
    assert ring.find(None) is None
