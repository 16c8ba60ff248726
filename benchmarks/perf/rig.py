"""What the gateway benchmarks set up: processes on free loopback ports (the fake upstream,
fake_upstream.py, and `iapo serve`), a small multiple-choice task over the fake upstream and
hand-written policies for it. Loopback only; every process is stopped on the way out.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from iapo.policy import Policy
from iapo.problem import Choice

HERE = Path(__file__).resolve().parent
FAKE_UPSTREAM = HERE / "fake_upstream.py"
TASK_NAME = "bench-mcq"
QUESTION = "What is 2 + 3?\nA) 4\nB) 5\nC) 6\nD) 7"
QUERIES = [("q0", "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\n"
                  "D) Saturn", "B"),
           ("q1", "Which of these animals is a mammal?\nA) Shark\nB) Eagle\nC) Dolphin\n"
                  "D) Frog", "C"),
           ("q2", QUESTION, "B")]
TASK = """\
name = "{name}"

[model]
base_url = "{url}"
name = "fake"
concurrency = {concurrency}
timeout = 30
max_retries = 0
supports_n = {supports_n}

[[prompts]]
name = "direct"
template = "{{query}}\\nAnswer with the letter of the correct option only."
temperature = 0.8
max_tokens = 8

[data]
path = "questions.jsonl"
test_fraction = 0.34

[[objectives]]
name = "correct"
scorer = "multiple_choice"
choices = "ABCD"

[aggregator]
kind = "mv"
extractor = "multiple_choice"

[contexts]
weights = [[1.0]]
budgets = {{ low = 0.0, high = 1.0 }}

[train]
n_max = 4
budget = 12
"""
CONTEXTS = ["budget=low", "budget=high"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_task(folder: Path, upstream: str, concurrency: int = 1,
               supports_n: bool = True) -> Path:
    """An MV multiple-choice task (one prompt, three questions) served by ``upstream``
    (its ``.../v1`` URL) in ``folder``; the task file's path."""
    (folder / "questions.jsonl").write_text(
        "".join(json.dumps({"id": i, "query": q, "gold": g}) + "\n" for i, q, g in QUERIES))
    path = folder / "task.toml"
    path.write_text(TASK.format(name=TASK_NAME, url=upstream, concurrency=concurrency,
                                supports_n=str(supports_n).lower()))
    return path


def write_policy(path: Path, task: Path, n: int) -> Path:
    """A hand-written policy over ``task``: its one prompt at N = ``n`` in every context."""
    Policy(env=TASK_NAME, learner="hand", budget=0, completions_used=0, seed=0,
           split={"test": []}, contexts=CONTEXTS, choices=[Choice(0, n, 0.0, 0)] * len(CONTEXTS),
           trace={"task": {"path": str(task)}}).save(path)
    return path


@contextlib.contextmanager
def process(args: list[str], log: Path, what: str, health: str,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A subprocess (``env``: its whole environment, else this one's) with its output in
    ``log``, up once ``health`` answers 200 (within a minute, else an error with the log's
    tail); interrupted, terminated, then killed, on the way out."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while not _answers(health):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
            yield proc
        finally:
            # SIGINT first: uvicorn re-raises the signal it stopped on, and only SIGINT (as
            # KeyboardInterrupt) lets a cProfile'd gateway write its profile on the way out
            stops: list[Callable[[], None]] = [
                lambda: proc.send_signal(signal.SIGINT), proc.terminate, proc.kill]
            for stop in stops:
                if proc.poll() is not None:
                    break
                stop()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def fake_upstream(port: int, latency: float, log: Path, *options: str
                  ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """fake_upstream.py on ``port``, answering after ``latency`` seconds."""
    return process([sys.executable, str(FAKE_UPSTREAM), "--port", str(port), "--latency",
                    str(latency), *options], log, "the fake upstream",
                   f"http://127.0.0.1:{port}/health")
