"""How soon a streamed N = 1 answer reaches the caller after the upstream's first chunk.

    .venv/bin/python benchmarks/bench_stream.py [--requests 60] [--chunk-delay 0.05]

A fake upstream (benchmarks/fake_upstream.py, its own process) streams
``"The answer is (B). seed=..."`` one word a chunk, ``--chunk-delay`` seconds apart, and keeps
the time at which it sent each request's first chunk. `iapo serve` runs in front of it (a
subprocess, an MV task, a policy of N = 1). This process asks the gateway with ``stream: true``,
one request at a time, and keeps the time at which the first chunk with text arrived; both
times are the machine's monotonic clock. Reported: the median and 90th percentile of (first
text at the caller - first chunk at the upstream), and the same for the whole answer
against the upstream's last chunk. Target: median <= 5 ms. Loopback only; bounded in requests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_gateway_throughput import process  # noqa: E402
from conftest import free_port  # noqa: E402
from test_serve import QUESTION, mv_task, write_policy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--chunk-delay", type=float, default=0.05)
    ap.add_argument("--json", metavar="OUT", help="write the numbers to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="iapo-bench-stream-") as tmp_name:
        tmp = Path(tmp_name)
        up_port, gw_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        task = mv_task(tmp, f"{upstream}/v1")
        policy = write_policy(tmp / "p.json", task, "mcq-smollm2",
                              ["budget=low", "budget=high"], [(0, 1), (0, 1)])
        with process([sys.executable, str(HERE / "fake_upstream.py"), "--port", str(up_port),
                      "--latency", "0", "--chunk-delay", str(args.chunk_delay)],
                     tmp / "upstream.log", "the fake upstream", f"{upstream}/health"), \
                process([sys.executable, "-m", "iapo.cli", "serve", str(policy), "--port",
                         str(gw_port)], tmp / "gateway.log", "iapo serve",
                        f"http://127.0.0.1:{gw_port}/health"):
            first, whole = [], []
            with httpx.Client(base_url=f"http://127.0.0.1:{gw_port}", timeout=30) as client:
                for i in range(args.requests + 5):  # the first 5 warm up
                    got_first = None
                    with client.stream("POST", "/v1/chat/completions", json={
                            "messages": [{"role": "user", "content": QUESTION}],
                            "stream": True, "iapo_context": {"budget": "low"}}) as r:
                        for line in r.iter_lines():
                            if got_first is None and '"content": "The' in line:
                                got_first = time.monotonic()
                        done = time.monotonic()
                    sent = httpx.get(f"{upstream}/stats").json()["first_chunks"][-1]
                    if i >= 5 and got_first is not None:
                        first.append((got_first - sent) * 1000)
                        words = 5  # "The answer is (B). seed=N": the last chunk 4 delays on
                        whole.append((done - (sent + (words - 1) * args.chunk_delay)) * 1000)
    out = {"requests": len(first), "chunk_delay_s": args.chunk_delay,
           "first_chunk_added_ms_median": float(np.median(first)),
           "first_chunk_added_ms_p90": float(np.percentile(first, 90)),
           "last_chunk_added_ms_median": float(np.median(whole)),
           "target_median_ms": 5.0}
    print(f"first text at the caller after the upstream's first chunk: median "
          f"{out['first_chunk_added_ms_median']:.2f} ms, p90 "
          f"{out['first_chunk_added_ms_p90']:.2f} ms over {len(first)} requests "
          f"(target: median <= 5 ms)")
    print(f"the end of the answer after the upstream's last chunk (estimated): median "
          f"{out['last_chunk_added_ms_median']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
