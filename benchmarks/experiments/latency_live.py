"""Predicted against measured latency of served arms, on the real SmolLM2 server.

    .venv/bin/python benchmarks/experiments/latency_live.py [--requests 50] [--out DIR]

The set-up (a server that runs two completions at once):
- two replicas of llama-cpp-python's server, one thread each, on the SmolLM2-135M model of
  the live tests; the task's ``model.concurrency`` is 2;
- the multiple-choice task of the live tests (``tests/data/mcq_task.toml``), its prompts
  ``direct`` and ``reason``, N_max = ``--n``.

What it does:
1. **The model.** :func:`iapo.live.timing.latency_pilot`, as ``iapo optimize`` runs it, draws
   80 completions of each prompt (8 on each query, in groups of 4 as serving draws them) and
   fits the latency model to them, prefill included. Each replica has answered 6 requests of
   each prompt first: a server's first completions take many times longer than later ones.
2. **The prediction.** The per-query model of the default learner
   (:class:`iapo.model.ModelQTable`) is fed those groups, and predicts each arm's expected
   latency (``arm_latency``).
3. **Serving.** The serving core of ``iapo answer`` and the gateway
   (:class:`iapo.serve.core.Responder`) serves each arm (p, N, W), N = ``--n`` (8), for W = 1
   and 2 (stop once decided) and W = N (the paper's arm, all N paid):
   - ``--requests`` requests per arm, on the queries in turn, fresh samples;
   - the measured latency is the response's ``upstream_seconds``.

   llama-cpp-python's server finishes a request whose client has gone. A completion cancelled
   once the vote is decided therefore holds its replica a while. Requests are spaced by the
   longest completion time of the model (prefill included), as on a gateway that is not
   saturated.

Printed, per arm: predicted and measured mean latency (with its SEM) and their relative
error; the median absolute relative error over the arms; and, per prompt, whether the measured
order of the W values is the predicted one. The figure goes to
``docs/latency/live.png``. Cited by docs/latency.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from truncation import smollm2_server  # the same server, in this folder

from iapo.live.client import ChatClient
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import CompletionStore
from iapo.live.task import load_records, task_from_dict
from iapo.live.timing import latency_pilot
from iapo.model import ModelQTable
from iapo.policy import Policy
from iapo.problem import Choice, Stopping
from iapo.serve.core import Responder

ROOT = Path(__file__).resolve().parents[2]

PROMPTS = ("direct", "reason")
WIDTHS: tuple[int | None, ...] = (1, 2, None)  # None: the paper's arm, all N
SAMPLES = 8  # pilot completions per prompt and query (the task has 10 queries)


def make_task(urls: list[str], folder: Path, n: int) -> Any:
    raw = tomllib.loads((ROOT / "tests" / "data" / "mcq_task.toml").read_text())
    raw["model"].update(base_url=urls, concurrency=len(urls), supports_n=False)
    raw["prompts"] = [p for p in raw["prompts"] if p["name"] in PROMPTS]
    raw["train"].update(n_max=n, learner="psst-auto", stop="decided", wave="auto",
                        latency_pilot=SAMPLES * 10)
    raw["contexts"]["latency"] = ["budget=low,latency=0.01"]
    (folder / "mcq.jsonl").write_text((ROOT / "tests" / "data" / "mcq.jsonl").read_text())
    return task_from_dict(raw, folder / "task.toml")


def warm_up(task: Any, urls: list[str], rounds: int = 6) -> None:
    """A server's first completions read the model in and size its buffers, and take many
    times longer than later ones: each replica answers ``rounds`` requests of every prompt
    first (on made-up questions, so that nothing is cached), not timed."""
    for i in range(rounds):
        for prompt in task.prompts:
            messages = prompt.render(f"Warm-up question {i}: which is larger?\nA) {i}\nB) {i + 1}")
            for url in urls:
                httpx.post(f"{url}/chat/completions", timeout=120,
                           json={"messages": messages, **prompt.decoding})


def predictions(task: Any, store: CompletionStore) -> tuple[Any, dict[tuple[int, int | None],
                                                                       float]]:
    """The fitted model, and each arm's predicted latency from the pilot's groups."""
    records = load_records(task.data_path)
    runtime = TaskRuntime(task, records)
    model, _ = latency_pilot(runtime, store, np.arange(len(records)))  # as optimize fits it
    problem = dataclasses.replace(runtime.problem, latency=model)
    runtime.problem = problem
    oracle = LiveOracle(runtime, store, np.arange(len(records)), 10**9,
                        np.random.default_rng(0))
    table = ModelQTable(problem)
    table.update([oracle.groups(p, SAMPLES, np.arange(len(records)))
                  for p in range(len(task.prompts))])
    return model, {(p, w): float(table.arm_latency(w)[p, task.n_max - 1])
                   for p in range(len(task.prompts)) for w in WIDTHS}


async def serve(task: Any, predicted: dict[tuple[int, int | None], float], requests: int,
                gap: float) -> dict[tuple[int, int | None], list[float]]:
    records = load_records(task.data_path)
    responder = Responder(task)
    grid = task.problem().grid
    measured: dict[tuple[int, int | None], list[float]] = {}
    m = task.model
    async with ChatClient(m.base_url, m.name, None, m.concurrency, m.timeout,
                          m.max_retries, supports_n=False) as client:
        for (p, w), expected in predicted.items():
            policy = Policy(task.name, "fixed", 0, 0, 0, {}, grid.keys,
                            [Choice(p, task.n_max, math.nan, 0, w, expected)],
                            stopping=Stopping("decided", 1, (1, 2, task.n_max)) if w
                            else Stopping())
            seconds = measured.setdefault((p, w), [])
            for i in range(requests):
                r = await responder.respond(client, policy, 0, records[i % len(records)].query)
                assert r.predicted_seconds == expected and r.replayed == 0
                seconds.append(r.upstream_seconds)
                await asyncio.sleep(gap)
    return measured


def figure(rows: list[dict[str, Any]], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["predicted"] for r in rows], 0.4, label="predicted (fitted model)")
    ax.bar(x + 0.2, [r["measured"] for r in rows], 0.4,
           yerr=[1.96 * r["sem"] for r in rows], capsize=3, label="measured (95% CI)")
    ax.set_xticks(x, [f"{r['prompt']}\nW = {r['wave']}" for r in rows])
    ax.set_ylabel("expected latency of a request (s)")
    ax.set_title(f"SmolLM2 on 2 replicas: arms (p, N = {n}, W), "
                 f"{rows[0]['requests']} requests each")
    ax.legend(frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50, help="requests per arm")
    ap.add_argument("--n", type=int, default=8, help="N of every arm")
    ap.add_argument("--out", type=Path, default=None, help="folder of the run (a temporary one)")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "latency" / "live.png")
    args = ap.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="iapo-latency-live-"))
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as servers:
        urls = [servers.enter_context(smollm2_server(folder, 1, f"replica-{i}"))
                for i in range(2)]
        task = make_task(urls, folder, args.n)
        warm_up(task, urls)
        t0 = time.perf_counter()
        with CompletionStore(folder / "store.sqlite") as store:
            model, predicted = predictions(task, store)
        print(f"pilot: {SAMPLES} completions of each prompt on each query "
              f"({time.perf_counter() - t0:.0f} s)")
        print(f"latency model: {model.description}, concurrency {model.concurrency}")
        gap = max(float(t.values.max()) for t in model.times) + model.prefill
        measured = asyncio.run(serve(task, predicted, args.requests, gap))
    rows = []
    for (p, w), secs in measured.items():
        arr = np.array(secs)
        mean = float(arr.mean())
        rows.append({"prompt": task.prompts[p].name, "wave": "N (all)" if w is None else w,
                     "requests": arr.size, "predicted": predicted[(p, w)], "measured": mean,
                     "sem": float(arr.std(ddof=1) / math.sqrt(arr.size)),
                     "error": (predicted[(p, w)] - mean) / mean})
    print(f"{'prompt':8} {'W':>8} {'requests':>8} {'predicted':>10} {'measured':>14} "
          f"{'error':>7}")
    for r in rows:
        print(f"{r['prompt']:8} {r['wave']!s:>8} {r['requests']:>8} {r['predicted']:>9.3f}s "
              f"{r['measured']:>7.3f}s ±{r['sem']:.3f} {r['error']:>+7.1%}")
    mdape = float(np.median([abs(r["error"]) for r in rows]))
    print(f"median absolute relative error over {len(rows)} arms: {mdape:.1%}")
    for name in {r["prompt"] for r in rows}:
        mine = [r for r in rows if r["prompt"] == name]
        by_pred = [str(r["wave"]) for r in sorted(mine, key=lambda r: r["predicted"])]
        by_meas = [str(r["wave"]) for r in sorted(mine, key=lambda r: r["measured"])]
        print(f"{name}: W fastest first, predicted {by_pred}, measured {by_meas}: "
              f"{'same order' if by_pred == by_meas else 'ORDER DIFFERS'}")
    (folder / "latency-live.json").write_text(json.dumps(rows, indent=2))
    figure(rows, args.n, args.figure)
    print(f"figure: {args.figure}; rows: {folder / 'latency-live.json'}")


if __name__ == "__main__":
    main()
