"""A batch server for the tests: the OpenAI files and batches endpoints in front of a real
chat-completion server (the SmolLM2 server in the real-model tests), to which it passes the
synchronous ``POST /v1/chat/completions`` on, as a provider serves both.

- ``POST /v1/files`` (multipart: ``purpose``, ``file``), ``GET /v1/files/{id}/content``;
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``,
  ``metadata``), ``GET /v1/batches/{id}``, ``GET /v1/batches`` (``limit``, ``after``).

Each batch runs its lines one by one against ``upstream`` (:func:`iapo.live.batch.run_lines`)
in a thread of its own and writes an output file and, for failed lines, an error file, as
OpenAI does. What the tests steer:

- ``hold``: while cleared, a batch stays ``in_progress`` before its first line;
- ``expire_first``: the first batch runs only that many lines, then ends ``expired`` (the
  rest in the error file, code ``batch_expired``);
- ``fail_once``: custom ids whose first appearance fails (an error line, no upstream call);
- ``lose_creates``: that many creations answer HTTP 500 although the batch was created (an
  answer lost on the way);
- ``page_size``: the most batches a page of ``GET /v1/batches`` lists.

``created`` lists every batch created, with its custom ids, in order.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from iapo.live.batch import run_lines
from live_helpers import Loopback, send_json


class BatchServer(Loopback):
    def __init__(self, upstream: str, expire_first: int | None = None,
                 fail_once: Callable[[str], bool] | None = None) -> None:
        self.upstream = upstream
        self.expire_first = expire_first
        self.lose_creates = 0
        self.page_size = 100
        self.fail_once = fail_once
        self.hold = threading.Event()
        self.hold.set()
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.failed_ids: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                path = urlparse(self.path).path
                if path == "/v1/chat/completions":  # the synchronous path, passed on
                    r = httpx.post(f"{server.upstream}/chat/completions", content=raw,
                                   headers={"content-type": "application/json"}, timeout=600)
                    send_json(self, r.content, r.status_code)
                elif path == "/v1/files":
                    server.upload(self, raw)
                elif path == "/v1/batches":
                    server.create(self, json.loads(raw))
                else:
                    send_json(self, b'{"error": {"message": "no route"}}', 404)

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content":
                    text = server.files.get(parts[2])
                    if text is None:
                        send_json(self, b'{"error": {"message": "no such file"}}', 404)
                        return
                    self.send_response(200)
                    self.send_header("content-type", "application/jsonl")
                    self.send_header("content-length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())
                elif parts[:2] == ["v1", "batches"] and len(parts) == 3:
                    batch = server.batches.get(parts[2])
                    send_json(self, json.dumps(batch).encode(), 200 if batch else 404)
                elif parts == ["v1", "batches"]:
                    server.listing(self, parse_qs(url.query))
                else:
                    send_json(self, b'{"error": {"message": "no route"}}', 404)

        self._listen(Handler)

    def __exit__(self, *exc: object) -> None:
        self.hold.set()  # no batch thread waits on a server that is gone
        super().__exit__(*exc)

    # ---------------------------------------------------------------- endpoints
    def upload(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        head = f"Content-Type: {h.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields = {part.get_param("name", header="content-disposition"):
                  part.get_payload(decode=True) for part in message.iter_parts()}
        if fields.get("purpose") != b"batch" or "file" not in fields:
            send_json(h, b'{"error": {"message": "give purpose=batch and a file"}}', 400)
            return
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = fields["file"].decode()
        send_json(h, json.dumps({"id": file_id, "object": "file", "purpose": "batch",
                                 "bytes": len(fields["file"])}).encode())

    def create(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        text = self.files.get(body.get("input_file_id", ""))
        if text is None or body.get("endpoint") != "/v1/chat/completions":
            send_json(h, b'{"error": {"message": "bad input_file_id or endpoint"}}', 400)
            return
        lines = [json.loads(x) for x in text.splitlines() if x.strip()]
        batch_id = f"batch-{next(self._ids)}"
        batch = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                 "input_file_id": body["input_file_id"], "status": "in_progress",
                 "completion_window": body.get("completion_window"),
                 "metadata": body.get("metadata") or {}, "output_file_id": None,
                 "error_file_id": None, "created_at": int(time.time()),
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
        with self._lock:
            self.batches[batch_id] = batch
            self.created.append({"id": batch_id, "custom_ids": [x["custom_id"] for x in lines],
                                 "metadata": batch["metadata"]})
        threading.Thread(target=self.work, args=(batch, lines), daemon=True).start()
        if self.lose_creates > 0:
            self.lose_creates -= 1
            send_json(h, b'{"error": {"message": "lost"}}', 500)
            return
        send_json(h, json.dumps(batch).encode())

    def listing(self, h: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        limit = min(int(query.get("limit", ["20"])[0]), self.page_size)
        rows = sorted(self.batches.values(), key=lambda b: int(b["id"].split("-")[1]),
                      reverse=True)  # newest first
        if "after" in query:
            ids = [b["id"] for b in rows]
            rows = rows[ids.index(query["after"][0]) + 1:]
        page = rows[:limit]
        send_json(h, json.dumps({"object": "list", "data": page,
                                 "has_more": len(rows) > limit}).encode())

    # ---------------------------------------------------------------- running a batch
    def work(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        self.hold.wait()
        out, errors = [], []
        first = batch["id"] == self.created[0]["id"]
        stop = len(lines) if self.expire_first is None or not first else self.expire_first
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if i >= stop:
                errors.append({"id": f"req-{cid}", "custom_id": cid, "response": None,
                               "error": {"code": "batch_expired",
                                         "message": "This request could not be executed "
                                                    "before the completion window expired."}})
                continue
            with self._lock:
                fail = (self.fail_once is not None and self.fail_once(cid)
                        and cid not in self.failed_ids)
                if fail:
                    self.failed_ids.add(cid)
            if fail:
                errors.append({"id": f"req-{cid}", "custom_id": cid,
                               "response": {"status_code": 500, "body": "scripted failure"},
                               "error": {"code": "500", "message": "scripted failure"}})
            else:
                result = json.loads(run_lines(json.dumps(line), self.upstream, concurrency=1))
                (out if result["error"] is None else errors).append(result)
            batch["request_counts"] = {"total": len(lines), "completed": len(out),
                                       "failed": len(errors)}
        with self._lock:
            for kind, rows in (("output_file_id", out), ("error_file_id", errors)):
                if rows:
                    file_id = f"file-{next(self._ids)}"
                    self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows)
                    batch[kind] = file_id
            batch["status"] = "expired" if stop < len(lines) else "completed"
