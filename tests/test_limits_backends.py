"""The gateway's per-key limits in both stores: the SQLite file (``Limits``) and Redis
(``RedisLimits``) give the same results, computed by hand.

The Redis tests run against a real ``redis-server`` on a free loopback port, started once per
session (per pytest worker) in a temporary folder, without persistence. It is started by the
first test that needs it, so a missing ``redis-server`` fails those tests (never skips them).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias

import pytest
import redis

from conftest import RedisServer, free_port
from iapo.errors import InputError, RunError
from iapo.serve.keys import ApiKey, Limits
from iapo.serve.redis_limits import LimitsStoreError, RedisLimits, open_limits

Store: TypeAlias = Limits | RedisLimits
T = 86400 * 10 + 120.0  # the start of a minute, 120 s into a UTC day

RPM = ApiKey("rpm", b"x" * 32, requests_per_minute=2)
DAILY = ApiKey("daily", b"y" * 32, completions_per_day=5)
FREE = ApiKey("free", b"z" * 32)


@pytest.fixture(params=["sqlite", "redis"])
def connect(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer
            ) -> Iterator[Callable[[], Store]]:
    """Opens another connection (another gateway worker) to one fresh store."""
    prefix = f"iapo-test:{uuid.uuid4().hex}:"  # every test its own limits in the one server
    opened: list[Store] = []

    def open_one() -> Store:
        lim: Store = (Limits(tmp_path / "limits.sqlite") if request.param == "sqlite"
                      else RedisLimits(redis_server.url, prefix=prefix))
        opened.append(lim)
        return lim

    yield open_one
    for lim in opened:
        lim.close()


def test_limits_count_fixed_windows_by_hand(connect: Callable[[], Store]) -> None:
    lim = connect()
    assert lim.admit(RPM, 1, T)[0] and lim.admit(RPM, 1, T + 1)[0]
    assert lim.admit(RPM, 1, T + 5) == (False, 55.0, "requests_per_minute")
    assert lim.admit(RPM, 1, T + 60)[0]  # the next minute
    assert lim.admit(DAILY, 3, T)[0]
    assert lim.admit(DAILY, 3, T) == (False, 86400 - 120.0, "completions_per_day")
    assert lim.admit(DAILY, 2, T)[0]  # exactly 5
    for _ in range(3):
        assert lim.admit(FREE, 4, T) == (True, 0.0, "")
    # another connection (another worker) sees what this one counted
    other = connect()
    assert not other.admit(DAILY, 1, T)[0]
    usage = lim.usage(T + 60)
    assert usage["rpm"]["requests_total"] == 3 and usage["rpm"]["requests_this_minute"] == 1
    assert usage["daily"]["completions_today"] == 5
    assert usage["free"] == {"requests_this_minute": 0, "completions_today": 12,
                             "requests_total": 3, "completions_total": 12}
    assert set(usage) == {"rpm", "daily", "free"}


def test_requests_are_checked_before_completions(connect: Callable[[], Store]) -> None:
    both = ApiKey("both", b"b" * 32, requests_per_minute=1, completions_per_day=2)
    lim = connect()
    assert lim.admit(both, 3, T + 10) == (False, 86400 - 130.0, "completions_per_day")
    assert lim.admit(both, 2, T + 10)[0]
    # both limits are spent now: the requests per minute are named, with their wait
    assert lim.admit(both, 1, T + 20) == (False, 40.0, "requests_per_minute")
    # a refused request counted nothing
    assert lim.usage(T + 20)["both"] == {"requests_this_minute": 1, "completions_today": 2,
                                         "requests_total": 1, "completions_total": 2}


def test_refund_gives_back_the_completions_of_their_day_never_below_zero(
        connect: Callable[[], Store]) -> None:
    lim = connect()
    assert lim.admit(DAILY, 5, T)[0]
    lim.refund(DAILY, 3, T + 1)  # the same day: 2 left counted
    assert lim.admit(DAILY, 3, T + 2)[0]  # 2 + 3 = 5
    assert lim.admit(DAILY, 1, T + 2) == (False, 86400 - 122.0, "completions_per_day")
    lim.refund(DAILY, 2, T - 86400)  # yesterday counted nothing: nothing to give back
    lim.refund(DAILY, 100, T + 3)  # more than counted: down to 0, not below
    # the two admitted requests still count in their minute
    assert lim.usage(T + 3)["daily"] == {"requests_this_minute": 2, "completions_today": 0,
                                         "requests_total": 2, "completions_total": 0}
    assert lim.admit(DAILY, 5, T + 4)[0]
    never = ApiKey("never", b"n" * 32, completions_per_day=5)
    lim.refund(never, 3, T)  # a key never counted gets no row
    for _ in range(2):
        assert lim.admit(FREE, 4, T)[0]
    lim.refund(FREE, 4, T)
    lim.flush()
    usage = connect().usage(T)
    assert "never" not in usage
    assert usage["free"] == {"requests_this_minute": 2, "completions_today": 4,
                             "requests_total": 2, "completions_total": 4}


def test_gateway_counters_are_shared_and_no_key(connect: Callable[[], Store]) -> None:
    a, b = connect(), connect()
    for _ in range(3):
        a.count_gateway("served")
    a.count_gateway("errors")
    b.count_gateway("served")
    assert b.gateway_total("served") == 1  # a's counts are still in a's memory
    assert a.gateway_total("served") == 4 and a.gateway_total("errors") == 1
    assert b.gateway_total("served") == 4 and b.gateway_total("timeouts") == 0
    assert a.usage(T) == {} and b.usage(T) == {}  # the gateway's own counts are no key's


def test_two_workers_share_one_limit(connect: Callable[[], Store]) -> None:
    three = ApiKey("three", b"3" * 32, requests_per_minute=3)
    a, b = connect(), connect()
    assert [a.admit(three, 1, T)[0], b.admit(three, 1, T + 1)[0], a.admit(three, 1, T + 2)[0]
            ] == [True, True, True]
    assert b.admit(three, 1, T + 3) == (False, 57.0, "requests_per_minute")
    assert a.admit(three, 1, T + 3) == (False, 57.0, "requests_per_minute")
    assert b.admit(three, 1, T + 60)[0]
    # keys without limits: counted in memory, seen by the other worker once written
    assert a.admit(FREE, 2, T)[0]
    assert "free" not in b.usage(T)
    a.flush()
    assert b.usage(T)["free"] == {"requests_this_minute": 1, "completions_today": 2,
                                  "requests_total": 1, "completions_total": 2}
    time.sleep(1.1)  # written at most once a second: the next request after a second writes
    assert a.admit(FREE, 3, T)[0]
    assert b.usage(T)["free"]["completions_today"] == 5
    assert a.admit(FREE, 1, T)[0]
    a.close()  # and at the end
    assert b.usage(T)["free"]["requests_total"] == 3


def test_concurrent_workers_admit_exactly_the_limit(connect: Callable[[], Store]) -> None:
    fifty = ApiKey("fifty", b"5" * 32, requests_per_minute=50)
    hundred = ApiKey("hundred", b"h" * 32, completions_per_day=100)
    workers = [connect() for _ in range(8)]
    admitted = {"fifty": 0, "hundred": 0}
    lock = threading.Lock()
    start = threading.Barrier(len(workers))

    def work(lim: Store) -> None:
        start.wait()
        for _ in range(25):  # 8 x 25 = 200 attempts per key
            for key, completions in ((fifty, 1), (hundred, 3)):
                if lim.admit(key, completions, T)[0]:
                    with lock:
                        admitted[key.name] += 1

    threads = [threading.Thread(target=work, args=(lim,)) for lim in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert admitted == {"fifty": 50, "hundred": 33}  # 33 x 3 = 99 <= 100 < 34 x 3
    usage = workers[0].usage(T)
    assert usage["fifty"]["requests_this_minute"] == 50
    assert usage["hundred"]["completions_today"] == 99


def test_redis_window_counters_expire_and_totals_stay(redis_server: RedisServer) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/3"  # a database no other test writes
    prefix = "tenant-a:"
    lim = RedisLimits(url, prefix=prefix)
    assert lim.admit(RPM, 1, T)[0]
    assert lim.admit(FREE, 4, T)[0]
    lim.flush()
    raw = redis.Redis.from_url(url, decode_responses=True)
    names = list(raw.scan_iter(match="*"))
    assert names and all(n.startswith(prefix) for n in names)
    ttls = sorted(t for t in (raw.ttl(n) for n in names) if t != -1)
    # a minute and a day counter for each of the two keys, each kept for two of its windows
    assert len(ttls) == 4 and 0 < ttls[0] and ttls[1] <= 120 and 86400 < ttls[2] <= ttls[3]
    assert ttls[3] <= 2 * 86400
    # another tenant's prefix shares nothing
    other = RedisLimits(url, prefix="tenant-b:")
    assert other.admit(RPM, 1, T)[0] and other.admit(RPM, 1, T)[0]
    assert lim.admit(RPM, 1, T)[0]  # 1 + 1 <= 2 here, whatever tenant-b counted
    assert other.usage(T)["rpm"]["requests_total"] == 2
    other.close()
    for n in names:  # as if the windows had passed
        if raw.ttl(n) > 0:
            raw.delete(n)
    assert lim.usage(T) == {
        "rpm": {"requests_this_minute": 0, "completions_today": 0, "requests_total": 2,
                "completions_total": 2},
        "free": {"requests_this_minute": 0, "completions_today": 0, "requests_total": 1,
                 "completions_total": 4}}
    lim.close()
    raw.flushdb()
    raw.close()


def test_unreachable_or_refusing_redis_is_one_clear_error(redis_server: RedisServer,
                                                          tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(LimitsStoreError) as info:
        RedisLimits(f"redis://gw:s3cret-pw@127.0.0.1:{port}/0")
    message = str(info.value)
    assert isinstance(info.value, RunError)
    assert f"redis://gw@127.0.0.1:{port}/0" in message and "s3cret" not in message
    # a server that refuses the password: the same error, still without the password
    host_port = redis_server.url.removeprefix("redis://").removesuffix("/0")
    with pytest.raises(LimitsStoreError) as info:
        RedisLimits(f"redis://gw:s3cret-pw@{host_port}/0")
    assert f"redis://gw@{host_port}/0" in str(info.value) and "s3cret" not in str(info.value)
    with pytest.raises(InputError) as bad:
        open_limits("redis://gw:s3cret-pw@127.0.0.1:notaport/0")
    assert "s3cret" not in str(bad.value)


def test_open_limits_picks_the_store_by_its_target(redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    sqlite = open_limits(str(tmp_path / "limits.sqlite"))
    assert isinstance(sqlite, Limits)
    sqlite.close()
    path = open_limits(tmp_path / "other.sqlite")
    assert isinstance(path, Limits)
    path.close()
    shared = open_limits("REDIS" + redis_server.url.removeprefix("redis"))
    assert isinstance(shared, RedisLimits)
    shared.close()
    with pytest.raises(LimitsStoreError):  # rediss:// is Redis too (over TLS)
        open_limits(f"rediss://127.0.0.1:{free_port()}")


# --- two gateway processes on one Redis ---------------------------------------------------------


def test_two_gateways_on_one_redis_admit_exactly_a_keys_limits(
        tmp_path: Path, redis_server: RedisServer) -> None:
    from live_helpers import ScriptedServer
    from test_gateway_production import keys_file, room_in_this_minute
    from test_serve import Gateway, mcq_policy

    url = redis_server.url.rsplit("/", 1)[0] + "/3"  # a database of this test's own
    redis.Redis.from_url(url).flushdb()
    keys = keys_file(tmp_path, [
        {"name": "rpm", "key": "sk-rpm-0123456789", "requests_per_minute": 6},
        {"name": "daily", "key": "sk-daily-0123456789", "completions_per_day": 8}])
    room_in_this_minute(15)  # the minute's window must not turn during the test
    with ScriptedServer(answer="The answer is (B).") as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 2), (0, 2)])  # N = 2 everywhere
        with Gateway(policy, "--keys", str(keys), "--limits", url) as a, \
                Gateway(policy, "--keys", str(keys), "--limits", url) as b:
            def ask(gw: Gateway, key: str) -> int:
                import httpx

                return httpx.post(f"{gw.url}/v1/chat/completions", timeout=30, headers={
                    "Authorization": f"Bearer {key}"}, json={
                    "messages": [{"role": "user", "content": "2 + 3?"}],
                    "iapo_context": {"budget": "low"}}).status_code

            rpm = [ask(gw, "sk-rpm-0123456789") for _ in range(5) for gw in (a, b)]
            daily = [ask(gw, "sk-daily-0123456789") for _ in range(4) for gw in (a, b)]
    # 6 requests a minute between the two gateways, not 6 each; 8 completions a day at N = 2:
    # 4 requests, whichever gateway took them
    assert rpm.count(200) == 6 and rpm.count(429) == 4, rpm
    assert rpm[:6] == [200] * 6
    assert daily.count(200) == 4 and daily.count(429) == 4, daily
    assert len(up.requests) == (6 + 4) * 2
