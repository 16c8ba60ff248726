"""A fake OpenAI-compatible upstream for the gateway benchmarks (rig.py starts it): a raw ASGI
app under uvicorn.

    .venv/bin/python benchmarks/perf/fake_upstream.py --port 8123 [--latency 0.05]

``POST /v1/chat/completions`` sleeps ``--latency`` seconds (a short completion from a fast model
server), then answers one choice ``"The answer is (B). seed=<seed>"`` with usage 7 prompt and 5
completion tokens, like the tests' ``ScriptedServer``; ``n`` is ignored (one choice, as
llama.cpp does). With ``"stream": true`` it sends the same text as server-sent events, one word
a chunk, ``--chunk-delay`` seconds apart, and keeps the monotonic time at which it sent each
request's first chunk (``GET /stats``: ``first_chunks``; the clock is the machine's, so another
process on it can compare). ``GET /health`` and ``GET /v1/models`` answer 200; ``GET /stats``
counts the chat requests answered. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


def make_app(latency: float, chunk_delay: float = 0.02
             ) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    """The ASGI app; ``latency`` in seconds before each chat completion is answered,
    ``chunk_delay`` between the chunks of a streamed one."""
    served: dict[str, Any] = {"chat": 0, "first_chunks": []}

    async def stream(send: Send, body: dict[str, Any]) -> None:
        words = f"The answer is (B). seed={body.get('seed')}".split(" ")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        base = {"id": "x", "object": "chat.completion.chunk", "model": body.get("model")}
        for i, w in enumerate(words):
            if i:
                await asyncio.sleep(chunk_delay)
            else:
                served["first_chunks"].append(time.monotonic())
            event = {**base, "choices": [{"index": 0, "finish_reason": None,
                                          "delta": {"content": (" " if i else "") + w}}]}
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"data: " + json.dumps(event).encode() + b"\n\n"})
        usage = {**base, "choices": [], "usage": {"prompt_tokens": 7,
                                                  "completion_tokens": len(words),
                                                  "total_tokens": 7 + len(words)}}
        await send({"type": "http.response.body", "more_body": False,
                    "body": b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"})

    async def respond(send: Send, status: int, payload: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/v1/chat/completions":
            try:
                body = json.loads(b"".join(chunks) or b"{}")
            except ValueError:
                await respond(send, 400, b'{"error": {"message": "the body is not JSON"}}')
                return
            if latency > 0:
                await asyncio.sleep(latency)
            served["chat"] += 1
            if body.get("stream"):
                await stream(send, body)
                return
            await respond(send, 200, json.dumps({
                "id": "x", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant",
                    "content": f"The answer is (B). seed={body.get('seed')}"}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
            }).encode())
        elif method == "GET" and path in ("/health", "/v1/models"):
            await respond(send, 200, b'{"object": "list", "data": [{"id": "fake"}]}')
        elif method == "GET" and path == "/stats":
            await respond(send, 200, json.dumps(served).encode())
        else:
            await respond(send, 404, b'{"error": {"message": "no such route"}}')

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.05,
                    help="seconds before each chat completion is answered")
    ap.add_argument("--chunk-delay", type=float, default=0.02,
                    help="seconds between the chunks of a streamed completion")
    ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    ap.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"])
    args = ap.parse_args()
    if args.latency < 0:
        ap.error("--latency must be >= 0")
    uvicorn.run(make_app(args.latency, args.chunk_delay), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, lifespan="off", loop=args.loop,
                http=args.http)


if __name__ == "__main__":
    main()
