"""A bounded load test of `iapo serve` on loopback, and the gateway's own latency.

    .venv/bin/python benchmarks/bench_gateway.py [--requests 400] [--concurrency 8]

The gateway runs in a subprocess in front of a scripted OpenAI-compatible upstream (the tests'
loopback server, answering at once) with an MV policy whose arms ask for N = 1 and N = 3.
Every request is timed at the client; the gateway reports how long its upstream calls took
(``iapo.upstream_seconds``); the difference is the gateway's added latency: parsing, policy
lookup, prompt templating, scoring, aggregation and the extra HTTP hop.
Target: under 5 ms at the median.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from live_helpers import ScriptedServer  # noqa: E402
from test_serve import Gateway, mv_task, write_policy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        with ScriptedServer(answer="The answer is (B).") as upstream:
            task = mv_task(tmp, upstream.base_url)
            policy = write_policy(tmp / "policy.json", task, "mcq-smollm2",
                                  ["budget=low", "budget=high"], [(1, 3), (0, 1)])
            gw = Gateway(policy, "--max-concurrency", "32")
            try:
                for _ in range(20):  # warm up
                    gw.ask({"budget": "high"})

                def one(i: int) -> tuple[str, float, float, int]:
                    t0 = time.perf_counter()
                    r = gw.ask({"budget": "low" if i % 2 else "high"}, content=f"question {i}")
                    total = time.perf_counter() - t0
                    return r.id, total, r.model_extra["iapo"]["upstream_seconds"], \
                        r.model_extra["iapo"]["n"]

                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    results = list(pool.map(one, range(args.requests)))
                wall = time.perf_counter() - t0
            finally:
                gw.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ids = {r[0] for r in results}
    overhead = sorted(1000 * (total - up) for _, total, up, _ in results)
    upstream_ms = statistics.median(1000 * up for _, _, up, _ in results)
    print(f"{args.requests} requests at concurrency {args.concurrency}: {len(ids)} answered, "
          f"{args.requests - len(ids)} lost, {len(results) / wall:.0f} requests/s")
    print(f"gateway added latency: median {statistics.median(overhead):.2f} ms, "
          f"p90 {overhead[int(0.9 * len(overhead))]:.2f} ms (upstream median {upstream_ms:.2f} ms)")


if __name__ == "__main__":
    main()
