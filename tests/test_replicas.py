"""Several replicas of one model: load spreading, resting a failing replica, a replica that
dies in the middle of ``iapo optimize``, and the task file's list of base URLs.

Every server is a real loopback HTTP server (:class:`live_helpers.ScriptedServer`); every wait
is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from iapo.live.client import ChatClient, Completion, LLMError
from iapo.live.store import CompletionStore
from iapo.live.task import TaskError, load_task
from live_helpers import ScriptedServer
from test_live_units import cli, mv_raw, write_task

MESSAGES = [{"role": "user", "content": "Which letter?"}]


class GatedServer(ScriptedServer):
    """Holds every request until ``gate`` is set (10 s at most), then acts as scripted."""

    def __init__(self, gate: threading.Event, **kw: Any) -> None:
        super().__init__(**kw)
        self.gate = gate

    def respond(self, h: Any, action: str, body: dict[str, Any]) -> None:
        self.gate.wait(10)
        super().respond(h, action, body)


class DyingServer(ScriptedServer):
    """Answers ``lives`` requests and dies on the next: it hangs up on that one and on every
    request after it, and closes its port from another thread (new connections are refused)."""

    def __init__(self, lives: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.lives = lives
        self.answered: list[int] = []  # the seeds of the requests it answered
        self.dropped: list[int] = []  # and of those it hung up on
        self.dead = False
        # a short poll: the port closes within ~10 ms of the death, not 0.5 s
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)

    def respond(self, h: Any, action: str, body: dict[str, Any]) -> None:
        with self._lock:
            if len(self.answered) == self.lives:
                if not self.dead:
                    self.dead = True
                    threading.Thread(target=self._die, daemon=True).start()
                self.dropped.append(int(body["seed"]))
                h.close_connection = True
                return  # no answer: the client sees the connection closed
            self.answered.append(int(body["seed"]))
        super().respond(h, action, body)

    def _die(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Clock:
    """A clock the test moves by hand (the client's rests are read on it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def closed_port_url() -> str:
    """The URL of a loopback port nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def seed_of(server: ScriptedServer) -> list[int]:
    return [int(body["seed"]) for body in server.requests]


def one_by_one(client_args: dict[str, Any], seeds: list[int],
               between: Any = None) -> list[Completion]:
    """Completions for ``seeds``, one request at a time; ``between(i)`` runs before each."""
    async def go() -> list[Completion]:
        out = []
        async with ChatClient(**client_args) as client:
            for i, seed in enumerate(seeds):
                if between is not None:
                    between(i)
                out.append(await client.one(MESSAGES, {}, seed))
        return out
    return asyncio.run(go())


# --- (a) spreading by load ------------------------------------------------------------------

def test_requests_in_flight_spread_over_two_replicas_by_load() -> None:
    gate = threading.Event()
    with GatedServer(gate) as a, GatedServer(gate) as b:

        async def go() -> tuple[tuple[int, int], list[Completion]]:
            async with ChatClient([a.base_url, b.base_url], "m", concurrency=6, timeout=10,
                                  max_retries=0) as client:
                tasks = [asyncio.create_task(client.one(MESSAGES, {}, s)) for s in range(6)]
                for _ in range(200):  # all six held by the servers (10 s at most)
                    if len(a.requests) + len(b.requests) == 6:
                        break
                    await asyncio.sleep(0.05)
                held = (len(a.requests), len(b.requests))
                gate.set()
                return held, list(await asyncio.gather(*tasks))

        held, got = asyncio.run(go())
        # in order: a (0, 0: tie to the first), b (1, 0), a (1, 1), b, a, b
        assert held == (3, 3)
        assert sorted(seed_of(a)) == [0, 2, 4] and sorted(seed_of(b)) == [1, 3, 5]
        assert [c.endpoint for c in got] == [a.base_url, b.base_url] * 3
        assert all(c.retries == 0 for c in got)

        # one request at a time: nothing in flight anywhere, so every one goes to the first
        later = one_by_one({"base_url": [a.base_url, b.base_url], "model": "m"}, [10, 11, 12])
        assert [c.endpoint for c in later] == [a.base_url] * 3
        assert len(a.requests) == 6 and len(b.requests) == 3


def test_one_replica_sends_exactly_what_it_sent_before() -> None:
    """A single URL, given as a string or a list of one: the same requests and retries."""
    for given in ("{url}/", ["{url}"]):
        with ScriptedServer(["500", "429"]) as srv:
            url = srv.base_url
            base = given.format(url=url) if isinstance(given, str) else [given[0].format(url=url)]
            got = one_by_one({"base_url": base, "model": "m", "max_retries": 2,
                              "backoff": 0.01}, [7])
            assert seed_of(srv) == [7, 7, 7]  # two retries, to the only replica
            assert got[0].retries == 2 and got[0].endpoint == url
            assert got[0].errors[0].startswith("HTTP 500")  # no replica named: as before


# --- (b) failing replicas are rested --------------------------------------------------------

def test_a_replica_refusing_connections_is_rested_and_the_other_answers() -> None:
    dead = closed_port_url()
    with ScriptedServer() as b:
        t0 = time.monotonic()
        # a long backoff: a retry that waited for it would take over 2.5 s
        got = one_by_one({"base_url": [dead, b.base_url], "model": "m", "max_retries": 2,
                          "backoff": 5.0, "timeout": 5}, [1, 2, 3, 4, 5])
        elapsed = time.monotonic() - t0
    assert seed_of(b) == [1, 2, 3, 4, 5]
    assert [c.endpoint for c in got] == [b.base_url] * 5
    # the first request tried the dead replica once, then moved at once; the others never
    # tried it: it rests 5 s
    assert [c.retries for c in got] == [1, 0, 0, 0, 0]
    assert got[0].errors[0].startswith(f"{dead}: connection failed")
    assert elapsed < 2.5


def test_a_replica_answering_500_rests_5_s_doubling_and_a_success_ends_it() -> None:
    clock = Clock()
    times = [0, 5, 14, 15, 15, 19, 20]  # when each request is made
    with ScriptedServer(["500", "500", "ok", "500", "500"]) as a, ScriptedServer() as b:

        def at(i: int) -> None:
            clock.now = times[i]

        got = one_by_one({"base_url": [a.base_url, b.base_url], "model": "m",
                          "max_retries": 1, "backoff": 0.01, "clock": clock},
                         list(range(len(times))), at)
    # t=0: a fails, rests until 5; b answers. t=5: a fails again, rests 10 s, until 15; b.
    # t=14: b (a rests). t=15: a answers: its rest is over and reset. t=15: a fails, rests
    # 5 s again (not 20), until 20; b. t=19: b. t=20: a fails, rests 10 s; b.
    assert seed_of(a) == [0, 1, 3, 4, 6]
    assert seed_of(b) == [0, 1, 2, 4, 5, 6]
    assert [c.endpoint == a.base_url for c in got] == [False, False, False, True, False,
                                                        False, False]
    assert [c.retries for c in got] == [1, 1, 0, 0, 1, 0, 1]


def test_every_replica_resting_uses_the_one_whose_rest_ends_first() -> None:
    clock = Clock()  # stands still: no rest ends
    with ScriptedServer(default="500") as a, ScriptedServer(default="500") as b:
        with pytest.raises(LLMError) as err:
            one_by_one({"base_url": [a.base_url, b.base_url], "model": "m", "max_retries": 3,
                        "backoff": 0.01, "clock": clock}, [9])
    # a fails (rests until 5), b (until 5), a (first of the tie; now until 10), b
    assert len(a.requests) == 2 and len(b.requests) == 2
    assert "failed 4 times" in str(err.value)
    assert a.base_url in str(err.value) and b.base_url in str(err.value)


def test_requests_in_flight_at_a_failure_rest_the_replica_once() -> None:
    gate = threading.Event()
    with GatedServer(gate, default="500") as a, ScriptedServer() as b:

        async def go() -> list[Completion]:
            async with ChatClient([a.base_url, b.base_url], "m", concurrency=4, timeout=10,
                                  max_retries=1, backoff=0.01, rest=1.0) as client:
                # a, b, a: two requests held by a, which then fails both
                tasks = [asyncio.create_task(client.one(MESSAGES, {}, s)) for s in range(3)]
                for _ in range(200):
                    if len(a.requests) == 2:
                        break
                    await asyncio.sleep(0.05)
                gate.set()
                got = list(await asyncio.gather(*tasks))
                await asyncio.sleep(1.3)  # past a rest of 1 s, not of 2 s
                got.append(await client.one(MESSAGES, {}, 3))
                return got

        got = asyncio.run(go())
    # the two held requests reach a in either order; then a is asked again after 1 s:
    # rested once, not twice
    assert sorted(seed_of(a)[:2]) == [0, 2] and seed_of(a)[2:] == [3]
    assert sorted(seed_of(b)) == [0, 1, 2, 3]
    assert [c.endpoint for c in got] == [b.base_url] * 4
    assert [c.retries for c in got] == [1, 0, 1, 1]


# --- (c) a replica dies during iapo optimize -------------------------------------------------

def test_optimize_survives_a_replica_dying_and_the_store_names_who_answered(
        tmp_path: Path) -> None:
    lives = 8
    a = DyingServer(lives)
    with a, ScriptedServer() as b:
        raw = mv_raw(a.base_url)
        raw["model"]["base_url"] = [a.base_url, b.base_url]
        raw["train"].update(budget=40, cost_scale=0.3)
        task = write_task(tmp_path, raw, n_records=10)
        out = tmp_path / "run"
        t0 = time.monotonic()
        res = cli("optimize", str(task), "--out", str(out))
        elapsed = time.monotonic() - t0
        assert res.exit_code == 0, res.output
        answered_b = seed_of(b)  # b answers every request it gets
    with CompletionStore(out / "store.sqlite") as store:
        rows = store.all_completions()
    assert a.dead and len(a.answered) == lives and answered_b  # both replicas answered
    # the request a held when it died, and any sent before the client saw it dead, were
    # asked again of b
    assert a.dropped and set(a.dropped) <= set(answered_b)
    by = {url: sorted(r.seed for r in rows if r.endpoint == url)
          for url in (a.base_url, b.base_url)}
    assert by[a.base_url] == sorted(a.answered) and by[b.base_url] == sorted(answered_b)
    assert len(rows) == len(by[a.base_url]) + len(by[b.base_url])  # no other endpoint
    # every answer was stored once: no sample paid twice
    answered = a.answered + answered_b
    assert len(answered) == len(rows) and max(Counter(answered).values()) == 1
    assert elapsed < 60


# --- (d) the task file ------------------------------------------------------------------------

def test_base_url_as_a_list_is_read_and_checked(tmp_path: Path) -> None:
    one, two = "http://127.0.0.1:8080/v1", "http://127.0.0.1:8081/v1"
    raw = mv_raw(one)
    raw["model"]["base_url"] = [f"{one}/", two]
    task = load_task(write_task(tmp_path, raw))
    assert task.model.base_urls == (one, two)
    assert task.model.base_url == f"{one} {two}"
    assert ChatClient(task.model.base_url, "m").base_urls == (one, two)

    # a list of one is the same task as the URL itself
    raw["model"]["base_url"] = [one]
    listed = load_task(write_task(tmp_path, raw))
    raw["model"]["base_url"] = one
    plain = load_task(write_task(tmp_path, raw))
    assert listed.model == plain.model and listed.digest() == plain.digest()

    bad: list[tuple[Any, str]] = [
        ([], "empty list"),
        ([one, two, one], "twice"),
        ([one, f"{one}/"], "twice"),  # the same URL once its trailing slash is dropped
        ([one, "ftp://host/v1"], "http://"),
        ([one, 5], "strings"),
        (f"{one} {two}", "as a list"),
        (5, "a string or a list"),
    ]
    for value, words in bad:
        raw["model"]["base_url"] = value
        with pytest.raises(TaskError) as err:
            load_task(write_task(tmp_path, raw))
        assert "model.base_url" in str(err.value) and words in str(err.value), value
    res = cli("optimize", str(write_task(tmp_path, {**raw, "model": {**raw["model"],
                                                                      "base_url": []}})),
              "--out", str(tmp_path / "run"))
    assert res.exit_code == 2 and "model.base_url is an empty list" in res.output
