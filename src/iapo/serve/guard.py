"""What a browser may not do to the gateway: the checks that run before any route.

A web page the user visits can make the browser send requests to a gateway on loopback: a
cross-site form post (``Content-Type: text/plain``, no preflight) or, through DNS rebinding,
requests under the attacker's host name. Without keys nothing else stops them from spending
the upstream model, so:

- **Host.** Serving without keys, a request whose ``Host`` is not a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``) or the address the gateway is bound to gets 421: a rebound name is
  never one of them.
- **Origin.** A request that carries ``Origin`` (every cross-origin browser request does) gets
  403 unless ``--cors-origin`` names that origin; a preflight (``OPTIONS``) from a named origin
  gets 204 with the CORS headers, and the named origin's responses carry them too.
- **Content type.** A ``POST`` body that is not ``application/json`` gets 415, so a form post
  cannot reach a route (the chat route checks it; see :func:`is_json`).

Programs that are not browsers send neither a rebound ``Host`` nor ``Origin``: the openai
client, curl and httpx pass unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ALLOWED_HEADERS = "authorization, content-type, x-iapo-context"


def host_name(host_header: str) -> str:
    """The name of a ``Host`` header without its port, lower case; IPv6 without brackets."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` is JSON (``application/json``, parameters allowed)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class RequestGuard:
    """ASGI middleware: refuses foreign hosts (when ``allowed_hosts`` is given) and origins
    that ``cors_origins`` does not name, before the app sees the request."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None,
                 cors_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = None if allowed_hosts is None else \
            frozenset(host_name(h) for h in allowed_hosts) | LOOPBACK_NAMES
        self.origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            await _refuse(send, 421, "misdirected_request",
                          "this gateway serves loopback only (no API keys): the Host header must "
                          "be localhost or a loopback address")
            return
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if origin.rstrip("/").lower() not in self.origins:
            await _refuse(send, 403, "permission_error",
                          "cross-origin requests are refused; start the gateway with "
                          "--cors-origin ORIGIN to allow a web page's origin")
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS":  # a preflight of an allowed origin
            await send({"type": "http.response.start", "status": 204, "headers": cors + [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", b"600")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + cors
            await send(message)

        await self.app(scope, receive, send_with_cors)


def error_body(status: int, message: str, kind: str, param: str | None = None
               ) -> dict[str, Any]:
    """An OpenAI-style error object: what every refusal of the gateway answers."""
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


async def _refuse(send: Send, status: int, kind: str, message: str) -> None:
    body = json.dumps(error_body(status, message, kind)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
