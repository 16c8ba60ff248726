"""Real loopback HTTP servers for the live-path tests.

``ScriptedServer`` speaks the OpenAI chat-completions protocol and misbehaves on purpose:
each request takes the next action of a script (``"ok"``, ``"429"``, ``"500"``, ``"400"``,
``"slow"``, ``"broken"``), then ``default`` once the script is used up. It records every
request body it receives.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a cancelled request) is no error of the server's."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def chat_completion(model: Any, texts: list[str], finish_reason: str,
                    completion_tokens: int) -> bytes:
    """An OpenAI chat-completion body: one choice per text, 7 prompt tokens."""
    return json.dumps({
        "id": "x", "object": "chat.completion", "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason} for i, text in enumerate(texts)],
        "usage": {"prompt_tokens": 7, "completion_tokens": completion_tokens,
                  "total_tokens": 7 + completion_tokens},
    }).encode()


def send_json(h: BaseHTTPRequestHandler, payload: bytes, status: int = 200,
              headers: dict[str, str] | None = None) -> None:
    """Send ``payload`` as a JSON response."""
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("content-type", "application/json")
    h.send_header("content-length", str(len(payload)))
    h.end_headers()
    h.wfile.write(payload)


class Loopback:
    """A real HTTP server on a free loopback port, serving in a thread inside ``with``."""

    def _listen(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ScriptedServer(Loopback):
    def __init__(self, script: list[str] | None = None, default: str = "ok",
                 honour_n: bool = False, slow_seconds: float = 2.0,
                 answer: str = "The answer is (A).",
                 answer_of: Callable[[dict[str, Any]], str] | None = None,
                 tokens_of: Callable[[int], int] | None = None) -> None:
        self.script = list(script or [])
        self.default = default
        self.honour_n = honour_n
        self.slow_seconds = slow_seconds
        self.answer = answer
        self.answer_of = answer_of  # the answer as a function of the request body
        self.tokens_of = tokens_of  # completion tokens as a function of the seed (else 5)
        self.stream_delay = 0.0  # seconds between the chunks of a streamed answer
        self.chunk_times: list[float] = []  # when each streamed chunk was sent
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client hung up mid-body (a cancelled request)
                    return
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.times.append(time.monotonic())
                    action = server.script.pop(0) if server.script else server.default
                server.respond(self, action, body)

        self._listen(Handler)

    def respond(self, h: BaseHTTPRequestHandler, action: str, body: dict[str, Any]) -> None:
        if action == "slow":
            time.sleep(self.slow_seconds)
            action = "ok"
        if action in ("429", "500", "503", "400"):
            payload = json.dumps({"error": {"message": f"scripted {action}"}}).encode()
            send_json(h, payload, int(action),
                      {"Retry-After": "0"} if action == "429" else {})
            return
        if action == "ok" and body.get("stream"):
            self.stream(h, body)
            return
        if action == "broken":
            payload = b'{"choices": [{"message": {"content": "trunc'
        else:
            n = int(body.get("n", 1)) if self.honour_n else 1
            answer = self.answer_of(body) if self.answer_of else self.answer
            text = f"{answer} seed={body.get('seed')}"
            each = self.tokens_of(int(body.get("seed", 0))) if self.tokens_of else 5
            payload = chat_completion(body.get("model"), [text] * n, "stop", each * n)
        send_json(h, payload)

    def stream(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        """``stream: true``: the text as server-sent events, one word a chunk, ``stream_delay``
        seconds apart (the time each is sent kept in ``chunk_times``), usage last when
        ``stream_options.include_usage`` asks for it."""
        answer = self.answer_of(body) if self.answer_of else self.answer
        words = f"{answer} seed={body.get('seed')}".split(" ")
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.end_headers()

        def send(obj: dict[str, Any]) -> None:
            h.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            h.wfile.flush()

        base = {"id": "x", "object": "chat.completion.chunk", "model": body.get("model")}
        for i, w in enumerate(words):
            if i:
                time.sleep(self.stream_delay)
            with self._lock:
                self.chunk_times.append(time.monotonic())
            send({**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w},
                                       "finish_reason": None}]})
        send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            send({**base, "choices": [], "usage": {"prompt_tokens": 7,
                                                   "completion_tokens": len(words),
                                                   "total_tokens": 7 + len(words)}})
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()
