"""Throughput of `iapo serve` against the same upstream called directly, in one run.

    .venv/bin/python benchmarks/perf/bench_gateway_throughput.py [--upstream-latency 0.05]
        [--requests 400] [--json OUT.json] [--profile OUT]

A fake OpenAI-compatible upstream (fake_upstream.py next to this script: uvicorn, its own
process)
waits ``--upstream-latency`` seconds per completion. In front of it, `iapo serve` runs as a
subprocess (``--max-concurrency 64``, ``--upstream-retries 0`` so that a failure is counted, not
hidden by a retry) over an MV task with ``supports_n = false``: a request for N samples is N
upstream calls. Two hand-written policies: every context N = 1, and every context N = 3.

The load generator (httpx.AsyncClient, this process) keeps a fixed number of requests in flight
(8 and 50) until ``--requests`` are answered, per cell (target x concurrency x N):
- direct: the gateway's upstream request body (prompt rendered, decoding, a seed) posted to the
  upstream, N of them concurrently per client request, as the gateway does;
- gateway: a chat completion with ``iapo_context`` posted to the gateway.
Per cell: requests/s, p50 and p99 client latency, errors, the CPU each process spent per
request, and for the gateway its own time (``iapo.gateway_seconds - iapo.upstream_seconds``).
Targets, ratios measured in the run: gateway / direct throughput at N = 1 at least 0.8
(concurrency 8 and 50); gateway / direct median latency at N = 1, concurrency 8, at most 1.1
(5 ms added to the upstream's 50 ms); every request of every cell answered, none failed.

If the gateway checks bearer keys (``IAPO_API_KEYS``), it gets ``bench-key`` and every request
sends it; the run says whether a request without a key was refused (``--no-key``: no keys).
Loopback only; every cell is bounded in requests and seconds; every process is stopped on the
way out.

The load generator says how busy it kept its core: near 100% (direct cells with no upstream
latency on a small machine) it sets the pace, and ``--client-processes 2`` splits it. Variants
without touching the gateway's code: ``--gateway-args "--workers 2"``, ``--gateway-concurrency``,
``--no-key``, uvloop and httptools installed or not (uvicorn picks them up; ``--upstream-stack
asyncio-h11`` keeps the fake upstream as it was). ``--profile OUT`` runs each gateway under
cProfile (``OUT-n1.prof``, ``OUT-n3.prof``; read them with ``pstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from iapo.live.task import load_task
from rig import QUESTION, fake_upstream, free_port, process, write_policy, write_task
from targets import Target, verdict

API_KEY = "bench-key"
CONCURRENCIES = (8, 50)
NS = (1, 3)


@dataclass(frozen=True)
class Cell:
    """One measured cell; latencies in milliseconds, CPU in milliseconds per client request."""

    target: str  # "direct" or "gateway"
    n: int
    concurrency: int
    answered: int
    errors: int
    first_error: str | None
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    own_p50_ms: float | None  # gateway only: gateway_seconds - upstream_seconds, median
    upstream_calls: int  # chat requests the upstream answered during the cell
    cpu_ms: dict[str, float | None]  # client (all its processes), upstream, gateway
    client_core: float  # the busiest load-generating process: its CPU seconds per second


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process and its live descendants (Linux /proc:
    ``--workers`` gateways serve from child processes), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
    except (OSError, IndexError, ValueError):
        return None
    for c in children:
        total += cpu_seconds(c) or 0.0  # a child that has just exited counts nothing
    return total


async def drive(workers: list[Callable[[int], Awaitable[float | None]]], requests: int,
                seconds: float) -> tuple[list[float], list[float], list[str]]:
    """``requests`` calls of ``workers[w](i)``, one in flight per worker, none started after
    ``seconds``. A call returns the gateway's own seconds (or None) and raises on error.
    Returns client latencies (s), own times (s) and error messages."""
    latencies: list[float] = []
    own: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    stop = time.perf_counter() + seconds

    async def worker(one: Callable[[int], Awaitable[float | None]]) -> None:
        for i in counter:
            if time.perf_counter() > stop:
                return
            s = time.perf_counter()
            try:
                o = await one(i)
            except (httpx.HTTPError, ValueError, KeyError, TypeError, RuntimeError) as e:
                errors.append(f"{type(e).__name__}: {e}"[:300])
                continue
            latencies.append(time.perf_counter() - s)
            if o is not None:
                own.append(o)

    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in workers)), seconds + 60)
    return latencies, own, errors


def direct_caller(client: httpx.AsyncClient, upstream: str, body: dict[str, Any],
                  n: int) -> Callable[[int], Awaitable[None]]:
    async def post(seed: int) -> None:
        r = await client.post(f"{upstream}/chat/completions", json={**body, "seed": seed})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        if not isinstance(r.json()["choices"][0]["message"]["content"], str):
            raise TypeError("choice content is not text")

    async def one(i: int) -> None:
        await asyncio.gather(*(post(n * i + j) for j in range(n)))

    return one


def gateway_caller(client: httpx.AsyncClient, gateway: str,
                   n: int) -> Callable[[int], Awaitable[float]]:
    async def one(i: int) -> float:
        r = await client.post(f"{gateway}/v1/chat/completions", json={
            "model": "iapo", "messages": [{"role": "user", "content": QUESTION}],
            "iapo_context": {"budget": "low" if i % 2 else "high"}})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        meta = r.json()["iapo"]
        if meta["n"] != n:
            raise RuntimeError(f"the gateway used N = {meta['n']}, not {n}")
        return float(meta["gateway_seconds"] - meta["upstream_seconds"])

    return one


async def upstream_count(upstream: str) -> int:
    async with httpx.AsyncClient() as c:
        return int((await c.get(upstream.removesuffix("/v1") + "/stats")).json()["chat"])


@dataclass(frozen=True)
class Load:
    """What one load-generating process does in a cell."""

    target: str
    n: int
    concurrency: int
    requests: int
    upstream: str
    gateway: str
    body: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class Share:
    """What one load-generating process measured; times in seconds, ``time.monotonic``."""

    latencies: list[float]
    own: list[float]
    errors: list[str]
    start: float
    end: float
    cpu: float


async def generate(load: Load, sync: Callable[[], Awaitable[None]]) -> Share:
    """Warm up, ``await sync()``, then ``load.requests`` measured requests."""
    # One small client per in-flight request: httpcore's pool costs CPU per request in
    # proportion to its connections (encode/httpcore#1035), so one shared pool of 50-150
    # connections made this process the bottleneck, not the servers measured.
    per_client = load.n if load.target == "direct" else 1
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            httpx.AsyncClient(limits=limits, timeout=30, headers=headers))
            for _ in range(load.concurrency)]
        workers: list[Callable[[int], Awaitable[float | None]]] = [
            direct_caller(c, load.upstream, load.body, load.n) if load.target == "direct"
            else gateway_caller(c, load.gateway, load.n) for c in clients]
        await drive(workers, 2 * load.concurrency, load.seconds)  # open the connections
        await sync()
        cpu0, start = time.process_time(), time.monotonic()
        lat, own, errors = await drive(workers, load.requests, load.seconds)
        end, cpu = time.monotonic(), time.process_time() - cpu0
    return Share(lat, own, errors, start, end, cpu)


_BARRIER: Any = None  # in a load-generating child process: the barrier shared with the parent
BARRIER_SECONDS = 90.0


def _init_child(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _child(load: Load) -> Share:
    async def sync() -> None:
        await asyncio.to_thread(_BARRIER.wait, BARRIER_SECONDS)  # all warmed up
        await asyncio.to_thread(_BARRIER.wait, BARRIER_SECONDS)  # the parent has its snapshot

    return asyncio.run(generate(load, sync))


def split(load: Load, k: int) -> list[Load]:
    """``load`` shared by ``k`` processes: concurrency and requests divided as evenly as can be."""
    def part(total: int, i: int) -> int:
        return total // k + (i < total % k)

    return [dataclasses.replace(load, concurrency=part(load.concurrency, i),
                                requests=part(load.requests, i)) for i in range(k)]


async def measure(load: Load, pids: dict[str, int], pool: Pool | None, barrier: Any,
                  processes: int) -> Cell:
    snap: dict[str, Any] = {}

    async def snapshot() -> None:
        snap["calls"] = await upstream_count(load.upstream)
        snap["cpu"] = {k: cpu_seconds(p) for k, p in pids.items()}

    if pool is None:
        shares = [await generate(load, snapshot)]
    else:
        results = [pool.apply_async(_child, (part,)) for part in split(load, processes)]
        try:
            await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
            await snapshot()
            await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
        except threading.BrokenBarrierError:
            for r in results:
                if r.ready() and not r.successful():
                    r.get()  # raises the child's error
            raise
        shares = [await asyncio.to_thread(r.get, load.seconds + 120) for r in results]
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    calls = await upstream_count(load.upstream) - snap["calls"]
    lat = [x for sh in shares for x in sh.latencies]
    own = [x for sh in shares for x in sh.own]
    errors = [x for sh in shares for x in sh.errors]
    wall = max(sh.end for sh in shares) - min(sh.start for sh in shares)
    done = len(lat) + len(errors)
    per = 1000 / max(done, 1)
    cpu: dict[str, float | None] = {"client": sum(sh.cpu for sh in shares) * per}
    for k in pids:
        a, b = snap["cpu"][k], cpu1[k]
        cpu[k] = None if a is None or b is None else (b - a) * per
    ms = 1000 * np.asarray(lat) if lat else np.full(1, np.nan)
    return Cell(load.target, load.n, load.concurrency, len(lat), len(errors),
                errors[0] if errors else None, wall, len(lat) / wall,
                float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                1000 * float(np.median(own)) if own else None, calls, cpu,
                max(sh.cpu / max(sh.end - sh.start, 1e-9) for sh in shares))


def keys_enforced(gateway: str) -> bool:
    """Whether the gateway refuses a request without a bearer key."""
    r = httpx.post(f"{gateway}/v1/chat/completions", timeout=30, json={
        "model": "iapo", "messages": [{"role": "user", "content": QUESTION}],
        "iapo_context": {"budget": "high"}})
    return r.status_code in (401, 403)


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def report(cells: list[Cell], args: argparse.Namespace, enforced: bool) -> dict[str, Any]:
    gateway = " ".join(["--max-concurrency", str(args.gateway_concurrency), args.gateway_args])
    keys = ("no $IAPO_API_KEYS" if args.no_key else
            f"$IAPO_API_KEYS {'checked' if enforced else 'not checked'} by the gateway")
    print(f"\nupstream latency {args.upstream_latency * 1000:g} ms, {args.requests} requests per "
          f"cell, gateway {gateway.strip()}, {keys}")
    head = (f"{'target':8} {'N':>2} {'conc':>4} {'ok':>5} {'err':>4} {'req/s':>8} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'own ms':>7} {'up/req':>6} | CPU ms/req: {'client':>6} "
            f"{'upstrm':>6} {'gatewy':>6}")
    print(head)
    print("-" * len(head))
    for c in cells:
        print(f"{c.target:8} {c.n:>2} {c.concurrency:>4} {c.answered:>5} {c.errors:>4} "
              f"{c.requests_per_s:>8.1f} {c.p50_ms:>8.2f} {c.p99_ms:>8.2f} "
              f"{fmt(c.own_p50_ms, 2):>7} {c.upstream_calls / max(c.answered + c.errors, 1):>6.2f}"
              f" | {'':11} {fmt(c.cpu_ms['client'], 2):>6} {fmt(c.cpu_ms.get('upstream'), 2):>6} "
              f"{fmt(c.cpu_ms.get('gateway'), 2):>6}")
    for c in cells:
        if c.first_error:
            print(f"first error in {c.target} N={c.n} conc={c.concurrency}: {c.first_error}")
    by = {(c.target, c.n, c.concurrency): c for c in cells}
    ratios: dict[str, Any] = {}
    print()
    for n in NS:
        for k in CONCURRENCIES:
            g, d = by[("gateway", n, k)], by[("direct", n, k)]
            ratios[f"throughput_n{n}_c{k}"] = g.requests_per_s / d.requests_per_s
            if n == 1:
                print(f"throughput gateway/direct, N = {n}, concurrency {k}: "
                      f"{g.requests_per_s / d.requests_per_s:.3f}")
    for n in NS:
        g, d = by[("gateway", n, 8)], by[("direct", n, 8)]
        ratios[f"added_p50_ms_n{n}_c8"] = g.p50_ms - d.p50_ms
        ratios[f"own_p50_ms_n{n}_c8"] = g.own_p50_ms
        print(f"median added latency, N = {n}, concurrency 8: {g.p50_ms - d.p50_ms:.2f} ms at "
              f"the client, {fmt(g.own_p50_ms, 2)} ms the gateway's own time")
    busiest = max(cells, key=lambda c: c.client_core)
    print(f"load generator ({args.client_processes} process"
          f"{'es' if args.client_processes > 1 else ''}): the busiest kept "
          f"{busiest.client_core:.0%} of a core busy ({busiest.target} N={busiest.n} "
          f"conc={busiest.concurrency}); near 100% it, not the target, sets the pace")
    return {"config": {"upstream_latency": args.upstream_latency, "requests": args.requests,
                       "max_concurrency": args.gateway_concurrency, "keys_checked": enforced,
                       "client_processes": args.client_processes,
                       "upstream_stack": args.upstream_stack,
                       "gateway_args": args.gateway_args, "key_given": not args.no_key,
                       "cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "uvloop": _installed("uvloop"), "httptools": _installed("httptools")},
            "cells": [asdict(c) for c in cells], "ratios": ratios}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


async def run_cells(n: int, args: argparse.Namespace, upstream: str, gateway: str,
                    body: dict[str, Any], pids: dict[str, int], pool: Pool | None,
                    barrier: Any) -> list[Cell]:
    cells = []
    for k in CONCURRENCIES:
        for target in ("direct", "gateway"):
            load = Load(target, n, k, args.requests, upstream, gateway, body, args.cell_seconds)
            cells.append(await measure(load, pids, pool, barrier, args.client_processes))
            c = cells[-1]
            print(f"  {target:8} N={n} conc={k:<3} {c.requests_per_s:8.1f} req/s  "
                  f"p50 {c.p50_ms:.2f} ms  errors {c.errors}", flush=True)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream-latency", type=float, default=0.05,
                    help="seconds the fake upstream waits per completion (default 0.05)")
    ap.add_argument("--requests", type=int, default=400, help="measured requests per cell")
    ap.add_argument("--cell-seconds", type=float, default=120.0,
                    help="no request is started this long after a cell began")
    ap.add_argument("--upstream-stack", choices=["auto", "asyncio-h11"], default="auto",
                    help="the fake upstream's event loop and HTTP parser: uvicorn's choice "
                         "(uvloop and httptools where installed) or pinned to the pure-Python "
                         "ones, to keep the upstream unchanged while the gateway's vary")
    ap.add_argument("--client-processes", type=int, default=1,
                    help="load-generating processes sharing each cell's requests and "
                         "concurrency (default 1: this process)")
    ap.add_argument("--gateway-concurrency", type=int, default=64,
                    help="the gateway's --max-concurrency (default 64)")
    ap.add_argument("--no-key", action="store_true",
                    help="start the gateway without $IAPO_API_KEYS (no key checks, no limits)")
    ap.add_argument("--gateway-args", default="", metavar="ARGS",
                    help="more options for `iapo serve`, e.g. \"--workers 2\"")
    ap.add_argument("--json", metavar="OUT", help="write the numbers to this JSON file")
    ap.add_argument("--profile", metavar="OUT",
                    help="run each gateway under cProfile, writing OUT-n1.prof and OUT-n3.prof")
    args = ap.parse_args()
    if args.requests < 1 or args.upstream_latency < 0 or args.cell_seconds <= 0:
        ap.error("--requests must be >= 1, --upstream-latency >= 0, --cell-seconds > 0")
    if not 1 <= args.client_processes <= min(CONCURRENCIES):
        ap.error(f"--client-processes must be from 1 to {min(CONCURRENCIES)}")
    tmp = Path(tempfile.mkdtemp(prefix="iapo-bench-gw-"))
    cells: list[Cell] = []
    enforced = False
    pool: Pool | None = None
    barrier: Any = None
    # Ctrl-C stops the run where it is; asyncio's own handler only cancels the main task,
    # and a cancellation that lands as an httpx request completes can be lost
    signal.signal(signal.SIGINT, _interrupt)
    try:
        if args.client_processes > 1:
            ctx = multiprocessing.get_context("spawn")
            barrier = ctx.Barrier(args.client_processes + 1)
            pool = ctx.Pool(args.client_processes, initializer=_init_child, initargs=(barrier,))
        port = free_port()
        upstream = f"http://127.0.0.1:{port}/v1"
        stack = (["--loop", "asyncio", "--http", "h11"] if args.upstream_stack == "asyncio-h11"
                 else [])
        with fake_upstream(port, args.upstream_latency, tmp / "upstream.log", *stack) as up:
            task = write_task(tmp, upstream, concurrency=64, supports_n=False)
            spec = load_task(task)
            prompt = spec.prompts[0]
            body = {"model": spec.model.name, "messages": prompt.render(QUESTION),
                    **prompt.decoding}
            for n in NS:
                policy = write_policy(tmp / f"policy-n{n}.json", task, n)
                gport = free_port()
                gateway = f"http://127.0.0.1:{gport}"
                prof = (["-m", "cProfile", "-o", f"{args.profile}-n{n}.prof"] if args.profile
                        else [])
                cmd = [sys.executable, *prof, "-m", "iapo.cli", "serve", str(policy),
                       "--port", str(gport), "--max-concurrency", str(args.gateway_concurrency),
                       "--upstream-retries", "0", *shlex.split(args.gateway_args)]
                env = {k: v for k, v in os.environ.items() if k != "IAPO_API_KEYS"}
                if not args.no_key:
                    env["IAPO_API_KEYS"] = API_KEY
                with process(cmd, tmp / f"gateway-n{n}.log", "iapo serve", f"{gateway}/health",
                             env) as gw:
                    enforced = keys_enforced(gateway)
                    pids = {"upstream": up.pid, "gateway": gw.pid}
                    cells += asyncio.run(run_cells(n, args, upstream, gateway, body, pids,
                                                   pool, barrier))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
    out = report(cells, args, enforced)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    by = {(c.target, c.n, c.concurrency): c for c in cells}
    asked = len(cells) * args.requests
    verdict("bench_gateway_throughput", [
        *(Target(f"gateway / direct throughput, N = 1, concurrency {k}",
                 by["gateway", 1, k].requests_per_s / by["direct", 1, k].requests_per_s, 0.8,
                 at_least=True) for k in CONCURRENCIES),
        Target("gateway / direct median latency, N = 1, concurrency 8",
               by["gateway", 1, 8].p50_ms / by["direct", 1, 8].p50_ms, 1.1),
        Target(f"answered without error / asked, {len(cells)} cells",
               sum(c.answered for c in cells) / asked, 1.0, at_least=True),
    ])


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; every process started was stopped")
