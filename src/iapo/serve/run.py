"""Running the gateway: checks before serving, one process or several workers.

Every check runs before "serving on" is printed: the policy and task (fully validated), the
keys, a non-loopback host only with keys, and the port: it is bound then, and the server
serves on that socket, so the address printed is the one bound (with ``--port 0``, the free
port the system picked).

Several workers (``--workers K``): uvicorn starts K processes on one port, each building the
app from the same spec (passed in ``$IAPO_SERVE_SPEC``); the per-key limits live in one SQLite
file in a private folder that every worker opens (``iapo.serve.keys.Limits``), so K workers
enforce one limit together; ``--log-store`` is one SQLite store in WAL mode that every worker
writes with its own connection (writes wait for each other, none is lost).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iapo.errors import InputError
from iapo.serve.keys import ApiKey, KeysFileError, keys_from_env, load_keys
from iapo.settings import ServeConfig

SPEC_ENV = "IAPO_SERVE_SPEC"
STARTUP_FAILURE = 3  # uvicorn's exit status for a server that did not start


class ServeError(InputError):
    """The gateway cannot start as asked; the message says what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def spec_keys(spec: ServeConfig) -> list[ApiKey]:
    """The keys: the keys file if given, else $IAPO_API_KEYS."""
    if spec.keys_file:
        return load_keys(spec.keys_file)
    return keys_from_env(os.environ.get("IAPO_API_KEYS"))


def build_app(spec: ServeConfig) -> Any:
    """The gateway app of ``spec`` (validates policy, task, keys and default context)."""
    from iapo.serve.app import create_app
    from iapo.serve.core import load_served

    _, task = load_served(Path(spec.policy), Path(spec.task) if spec.task else None,
                          spec.allow_task_change)
    if spec.default_context:
        task.problem().grid.find(spec.default_context)  # fail now, not per request
    return create_app(task, spec, spec_keys(spec))


def app_from_env() -> Any:
    """uvicorn's factory in each worker process: the app of $IAPO_SERVE_SPEC."""
    return build_app(ServeConfig.from_json(json.loads(os.environ[SPEC_ENV])))


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` and listening, for the server to take over (port
    0: a free one the system picks, which ``getsockname()`` gives); a port in use is a
    :class:`ServeError`."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)  # uvicorn's backlog
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another "
                         "server using the port? Give another --port") from e
    sock.set_inheritable(True)  # the workers of --workers K share it
    return sock


def run_gateway(spec: ServeConfig, announce: Callable[[str], Any] = print) -> None:
    """Check everything, then serve until stopped."""
    import uvicorn

    try:
        keys = spec_keys(spec)
    except KeysFileError as e:
        raise ServeError(str(e)) from e
    if spec.limits is not None and not spec.limits.lower().startswith(("redis://",
                                                                        "rediss://")):
        raise ServeError(f"--limits {spec.limits!r}: give a Redis URL, redis://HOST:PORT/DB "
                         "(without --limits the limits are counted on this machine)")
    if not keys and not is_loopback(spec.host):
        raise ServeError(f"--host {spec.host} without API keys would let anyone who reaches "
                         "the port spend the upstream model; set IAPO_API_KEYS=key1,key2 or "
                         "pass --keys keys.toml (or serve on 127.0.0.1)")
    who = f"{len(keys)} API key(s)" if keys else "no keys: loopback only"
    if spec.workers == 1:
        app = build_app(spec)  # validates the policy, task and keys before anything listens
        with listen(spec.host, spec.port) as sock:
            announce(f"serving {spec.policy} on {_url(spec.host, sock)} ({who})")
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
            with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it, as uvicorn.run
                server.run(sockets=[sock])  # the socket bound, not --port again
        if not server.started:  # uvicorn said why
            raise SystemExit(STARTUP_FAILURE)
        return
    with tempfile.TemporaryDirectory(prefix="iapo-serve-") as shared:
        full = dataclasses.replace(spec, limits_db=spec.limits or
                                   str(Path(shared) / "limits.sqlite"))
        build_app(full)  # the workers build the same: fail here, once, if it is wrong
        with listen(spec.host, spec.port) as sock:
            full = dataclasses.replace(full, port=sock.getsockname()[1])
            os.environ[SPEC_ENV] = json.dumps(full.to_json())
            announce(f"serving {spec.policy} on {_url(spec.host, sock)} with {spec.workers} "
                     f"workers ({who})")
            # uvicorn's workers take over the bound socket by its descriptor (its --fd)
            uvicorn.run("iapo.serve.run:app_from_env", factory=True, fd=sock.fileno(),
                        workers=spec.workers, log_level="warning")


def _url(host: str, sock: socket.socket) -> str:
    """The gateway's base URL on ``sock``: the host as given, the port bound (with --port
    0, the one the system picked)."""
    return f"http://{host}:{sock.getsockname()[1]}/v1"
