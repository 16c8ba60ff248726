"""How soon a streamed N = 1 answer reaches the caller after the upstream's first chunk.

    .venv/bin/python benchmarks/perf/bench_stream.py [--requests 60] [--chunk-delay 0.05]

A fake upstream (fake_upstream.py next to this script, its own process) streams
``"The answer is (B). seed=..."`` one word a chunk, ``--chunk-delay`` seconds apart, and keeps
the time at which it sent each request's first chunk. `iapo serve` runs in front of it (a
subprocess, an MV task, a policy of N = 1). This process asks the gateway with ``stream: true``,
one request at a time, and keeps the time at which the first chunk with text arrived; both
times are the machine's monotonic clock. Reported: the median and 90th percentile of (first
text at the caller - first chunk at the upstream), and the same for the whole answer
against the upstream's last chunk. Target, a ratio measured in the run: the median of the
first at most 0.1 of the upstream's interval between chunks (5 ms of the default 50 ms).
Loopback only; bounded in requests.
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

from rig import QUESTION, fake_upstream, free_port, process, write_policy, write_task
from targets import Target, verdict


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
        policy = write_policy(tmp / "p.json", write_task(tmp, f"{upstream}/v1"), 1)
        with fake_upstream(up_port, 0, tmp / "upstream.log", "--chunk-delay",
                           str(args.chunk_delay)), \
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
           "target_median_over_chunk_delay": 0.1}
    print(f"first text at the caller after the upstream's first chunk: median "
          f"{out['first_chunk_added_ms_median']:.2f} ms, p90 "
          f"{out['first_chunk_added_ms_p90']:.2f} ms over {len(first)} requests")
    print(f"the end of the answer after the upstream's last chunk (estimated): median "
          f"{out['last_chunk_added_ms_median']:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    verdict("bench_stream", [Target(
        "first text's median delay / the upstream's chunk interval",
        out["first_chunk_added_ms_median"] / (1000 * args.chunk_delay), 0.1)])


if __name__ == "__main__":
    main()
