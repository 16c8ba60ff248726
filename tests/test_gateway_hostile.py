"""`iapo serve` against a hostile client: browsers on other sites, malformed bodies, slow
bodies, departures mid-request, and the small holes of keys and counts.

Every gateway is a real `iapo serve` process on loopback; requests are raw HTTP (httpx, or a
socket where the client must misbehave); the upstream is a real loopback HTTP server that
counts what reaches it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from live_helpers import ScriptedServer
from test_gateway_production import KEY, keys_file
from test_serve import QUESTION, Gateway, mcq_policy

ASK = {"messages": [{"role": "user", "content": QUESTION}], "iapo_context": {"budget": "low"}}


def _post(gw: Gateway, headers: dict[str, str], body: bytes | None = None,
          json_body: object = None) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/chat/completions", headers=headers, content=body,
                      json=json_body, timeout=30)


def _keyless_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "IAPO_API_KEYS"}


# --- item 3: no browser can spend the upstream through a gateway without keys ----------------


def test_the_cross_site_form_post_gets_421_and_the_upstream_sees_nothing(
        tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--default-context",
            "budget=low") as gw:
        # the observed attack, exactly: a form post from another site under a rebound name
        r = _post(gw, {"Content-Type": "text/plain", "Origin": "http://evil.example",
                       "Host": f"attacker.example:{gw.port}"},
                  b'{"messages": [{"role": "user", "content": "hi"}]}')
        assert r.status_code in (415, 421)
        assert r.status_code == 421 and "loopback" in r.json()["error"]["message"]
        # each defence on its own
        assert _post(gw, {"Host": f"attacker.example:{gw.port}"}, json_body=ASK
                     ).status_code == 421
        r = _post(gw, {"Content-Type": "text/plain"}, json.dumps(ASK).encode())
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        r = _post(gw, {"Origin": "http://evil.example"}, json_body=ASK)
        assert r.status_code == 403 and "--cors-origin" in r.json()["error"]["message"]
        assert "access-control-allow-origin" not in r.headers
        assert len(up.requests) == 0  # the upstream's own count did not move
        # loopback names pass, with or without a port, and JSON with a charset parameter
        for host in (f"localhost:{gw.port}", f"127.0.0.1:{gw.port}", "localhost"):
            r = _post(gw, {"Host": host, "Content-Type": "application/json; charset=utf-8"},
                      json.dumps(ASK).encode())
            assert r.status_code == 200, (host, r.text)
        assert len(up.requests) == 3


def test_a_named_cors_origin_is_allowed_and_no_other(tmp_path: Path) -> None:
    app = "https://app.example"
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--cors-origin", app,
            env={"IAPO_API_KEYS": KEY}, api_key=KEY) as gw:
        pre = httpx.options(f"{gw.url}/v1/chat/completions", headers={
            "Origin": app, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == app
        assert "authorization" in pre.headers["access-control-allow-headers"]
        r = _post(gw, {"Origin": app, "Authorization": f"Bearer {KEY}"}, json_body=ASK)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app
        for other in ("https://evil.example", "http://app.example", "null"):
            r = _post(gw, {"Origin": other, "Authorization": f"Bearer {KEY}"}, json_body=ASK)
            assert r.status_code == 403, other
            assert httpx.options(f"{gw.url}/v1/chat/completions",
                                 headers={"Origin": other}).status_code == 403
        assert len(up.requests) == 1
        # with keys the gateway may be reached under any name: the key is what is checked
        r = _post(gw, {"Host": "gateway.internal", "Authorization": f"Bearer {KEY}"},
                  json_body=ASK)
        assert r.status_code == 200 and len(up.requests) == 2


# --- item 4: every malformed body is a 400, never a 500, never charged -------------------------

MALFORMED = {
    "lone surrogate": b'{"messages": [{"role": "user", "content": "hi \\ud800"}], '
                      b'"iapo_context": {"budget": "low"}}',
    "surrogate in the context": b'{"messages": [{"role": "user", "content": "hi"}], '
                                b'"iapo_context": {"budget": "lo\\udfffw"}}',
    "huge integer": b'{"messages": [{"role": "user", "content": "hi"}], "x": '
                    + b"9" * 5000 + b', "iapo_context": {"budget": "low"}}',
    "not UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "truncated": b'{"messages": [{"role": "user", "content": "hi"',
}


def test_malformed_bodies_are_400_uncharged_and_the_connection_lives_on(
        tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [{"name": "team", "key": KEY, "completions_per_day": 100,
                                 "requests_per_minute": 100}])
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 2), (0, 2)]), "--keys", str(keys),
            api_key=KEY) as gw, httpx.Client(base_url=gw.url, headers=auth, timeout=30) as c:
        for name, body in MALFORMED.items():
            r = c.post("/v1/chat/completions", content=body)
            assert r.status_code == 400, (name, r.status_code, r.text[:200])
            assert r.json()["error"]["type"] == "invalid_request_error", name
        usage = c.get("/health").json()["usage"]
        assert usage.get("team", {}).get("completions_today", 0) == 0  # nothing charged
        assert len(up.requests) == 0
        r = c.post("/v1/chat/completions", json=ASK)  # the same keep-alive connection
        assert r.status_code == 200
        assert c.get("/health").json()["usage"]["team"]["completions_today"] == 2


def test_a_failed_upstream_counts_the_request_but_not_its_completions(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, [{"name": "team", "key": KEY, "completions_per_day": 100}])
    auth = {"Authorization": f"Bearer {KEY}"}
    with ScriptedServer(default="500", answer="The answer is (B).") as up, \
            Gateway(mcq_policy(tmp_path, up.base_url, [(0, 2), (0, 2)]), "--keys", str(keys),
                    "--upstream-retries", "0", api_key=KEY) as gw:
        codes = [_post(gw, auth, json_body=ASK).status_code for _ in range(5)]
        assert codes == [502] * 5
        health = httpx.get(f"{gw.url}/health", headers=auth).json()
        assert health["usage"]["team"]["completions_today"] == 0
        assert health["usage"]["team"]["requests_total"] == 5
        assert health["errors"] == 5 and health["served"] == 0
        up.default = "ok"  # the upstream recovers
        assert _post(gw, auth, json_body=ASK).status_code == 200
        health = httpx.get(f"{gw.url}/health", headers=auth).json()
        assert health["usage"]["team"]["completions_today"] == 2  # N = 2, served


# --- item 5: a slow body cannot hold a connection ---------------------------------------------


def _raw(port: int, head: bytes, wait: float = 15.0) -> tuple[bytes, float]:
    """Send ``head`` and read until the server closes or ``wait`` passes: (reply, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    return reply, time.monotonic() - t0


def test_a_body_that_stops_arriving_gets_408_and_the_connection_is_closed(
        tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--body-timeout", "1",
            env={"IAPO_API_KEYS": KEY}, api_key=KEY) as gw:
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n").encode() + b'{"mess'
        reply, seconds = _raw(gw.port, head)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert seconds < 6  # cut at the body timeout, the connection closed by the gateway
        assert len(up.requests) == 0
        assert gw.ask({"budget": "low"}).choices  # and it goes on serving


# --- item 8: keys, usage errors, departures, counts -------------------------------------------


def test_the_bearer_scheme_is_case_insensitive(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]),
            env={"IAPO_API_KEYS": KEY}, api_key=KEY) as gw:
        for scheme in ("bearer", "BEARER", "Bearer"):
            assert _post(gw, {"Authorization": f"{scheme} {KEY}"}, json_body=ASK
                         ).status_code == 200, scheme
        for wrong in (f"Basic {KEY}", KEY, "Bearer", f"Bearer{KEY}"):
            assert _post(gw, {"Authorization": wrong}, json_body=ASK).status_code == 401
        assert len(up.requests) == 3


@pytest.mark.parametrize("keys", ["a", "sk-team-key,short", "sk-team-key,sk-team-key"])
def test_iapo_api_keys_follow_the_keys_file_rule(tmp_path: Path, keys: str) -> None:
    with ScriptedServer() as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)])
        out = subprocess.run([sys.executable, "-m", "iapo.cli", "serve", str(policy), "--host",
                              "0.0.0.0", "--port", str(free_port())], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "IAPO_API_KEYS": keys})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "IAPO_API_KEYS" in out.stderr
    assert ("at least 8 characters" if keys != "sk-team-key,sk-team-key" else "twice") \
        in out.stderr
    assert "Traceback" not in out.stderr and "serving on" not in out.stdout


def test_a_client_that_leaves_mid_body_is_not_logged_as_a_crash(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up:
        gw = Gateway(mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--default-context",
                     "budget=low", env=_keyless_env())
        try:
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", gw.port)) as s:
                    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n"
                               b'{"messages"')
                    time.sleep(0.2)
            time.sleep(0.5)
            assert _post(gw, {}, json_body=ASK).status_code == 200
        finally:
            gw.close()
        output = gw.proc.stdout.read().decode() if gw.proc.stdout else ""
    assert "Exception in ASGI application" not in output, output
    assert "Traceback" not in output, output


def test_health_counts_every_worker_of_the_gateway(tmp_path: Path) -> None:
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--workers", "2",
            env={"IAPO_API_KEYS": KEY}, api_key=KEY) as gw:
        auth = {"Authorization": f"Bearer {KEY}"}
        for _ in range(10):  # new connections: the kernel spreads them over both workers
            assert _post(gw, auth, json_body=ASK).status_code == 200
        for _ in range(3):
            assert _post(gw, auth, json_body={"messages": []}).status_code == 400
        time.sleep(2.5)  # each worker writes its counts at least once a second
        seen = set()
        for _ in range(12):
            h = httpx.get(f"{gw.url}/health", headers=auth).json()
            seen.add((h["served"], h["errors"], h["workers_counted"]))
        assert seen == {(10, 3, "all")}
        assert len(up.requests) == 10

