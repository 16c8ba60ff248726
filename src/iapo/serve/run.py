"""Running the gateway: checks before serving, one process or several workers.

Every check runs before "serving on" is printed: the policy and task (fully validated), the
keys, a non-loopback host only with keys, and the port (bound once to see that it is free).

Several workers (``--workers K``): uvicorn starts K processes on one port, each building the
app from the same spec (passed in ``$IAPO_SERVE_SPEC``); the per-key limits live in one SQLite
file in a private folder that every worker opens (``iapo.serve.keys.Limits``), so K workers
enforce one limit together; ``--log-store`` is one SQLite store in WAL mode that every worker
writes with its own connection (writes wait for each other, none is lost).
"""

from __future__ import annotations

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


def check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another "
                             "server using the port? Give another --port") from e


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
    url = f"http://{spec.host}:{spec.port}/v1"
    if spec.workers == 1:
        app = build_app(spec)  # validates the policy, task and keys before anything listens
        check_port(spec.host, spec.port)
        announce(f"serving {spec.policy} on {url} ({who})")
        uvicorn.run(app, host=spec.host, port=spec.port, log_level="warning")
        return
    with tempfile.TemporaryDirectory(prefix="iapo-serve-") as shared:
        full = dataclasses.replace(spec, limits_db=spec.limits or
                                   str(Path(shared) / "limits.sqlite"))
        build_app(full)  # the workers build the same: fail here, once, if it is wrong
        check_port(spec.host, spec.port)
        os.environ[SPEC_ENV] = json.dumps(full.to_json())
        announce(f"serving {spec.policy} on {url} with {spec.workers} workers ({who})")
        uvicorn.run("iapo.serve.run:app_from_env", factory=True, host=spec.host,
                    port=spec.port, workers=spec.workers, log_level="warning")
