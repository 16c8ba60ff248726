"""`iapo serve` with the official openai client: arms per context, usage, aggregation, limits,
reload, bad requests, upstream failures, a bounded load test, and the real tiny model."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import LlamaServer, free_port, wait_until_up
from iapo.learners.base import Choice
from iapo.live.scorers import extract_letter
from iapo.policy import Policy
from live_helpers import ScriptedServer
from test_live_units import cli, mv_raw, write_task

DATA = Path(__file__).parent / "data"
DOCS = Path(__file__).resolve().parent.parent / "docs"
QUESTION = "What is 2 + 3?\nA) 4\nB) 5\nC) 6\nD) 7"


class Gateway:
    """`iapo serve` in a subprocess on a loopback port: a free one found first, or with
    ``port=0`` the one the gateway says it bound (its "serving ... on URL" line,
    ``announced``)."""

    def __init__(self, policy: Path, *args: str, env: dict[str, str] | None = None,
                 api_key: str = "unused", port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iapo.cli", "serve", str(policy), "--port", str(self.port),
             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})
        self.announced = ""
        if port == 0 and self.proc.stdout is not None:
            self.announced = self.proc.stdout.readline().decode()
            bound = re.search(r" on http://127\.0\.0\.1:([1-9]\d*)/v1 ", self.announced)
            if bound is None:
                self.close()
                raise RuntimeError(f"iapo serve did not say where it listens: "
                                   f"{self.announced!r}")
            self.port = int(bound.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_up(f"{self.url}/health", self.proc, 60, "iapo serve",
                      lambda: self.proc.stdout.read().decode() if self.proc.stdout else "")
        self.client = self.as_key(api_key)

    def as_key(self, api_key: str) -> openai.OpenAI:
        """An openai client of this gateway that sends ``api_key``."""
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ask(self, context: dict | None = None, content: str = QUESTION, **kw):  # type: ignore[no-untyped-def]
        extra = {"iapo_context": context} if context is not None else None
        return self.client.chat.completions.create(
            model="iapo", messages=[{"role": "user", "content": content}], extra_body=extra, **kw)


def mv_task(tmp: Path, url: str) -> Path:
    shutil.copy(DATA / "mcq.jsonl", tmp / "mcq.jsonl")
    text = (DATA / "mcq_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    (tmp / "task.toml").write_text(text)
    return tmp / "task.toml"


def bon_task(tmp: Path, url: str) -> Path:
    """Two objectives from a python scorer that depends only on the text."""
    (tmp / "reward.py").write_text(textwrap.dedent("""
        def brevity(query, text, gold):
            return 1.0 / (1.0 + len(text))

        def letters(query, text, gold):
            return sum(ch.isalpha() for ch in text) / (1.0 + len(text))
    """))
    shutil.copy(DATA / "mcq.jsonl", tmp / "mcq.jsonl")
    (tmp / "bon.toml").write_text(textwrap.dedent(f"""
        name = "bon-gw"
        [model]
        base_url = "{url}"
        name = "m"
        concurrency = 2
        timeout = 120
        [[prompts]]
        name = "plain"
        template = "{{query}}"
        max_tokens = 12
        [[prompts]]
        name = "explain"
        template = "Explain briefly: {{query}}"
        max_tokens = 16
        [data]
        path = "mcq.jsonl"
        [[objectives]]
        name = "brevity"
        scorer = "python"
        callable = "{tmp / 'reward.py'}:brevity"
        [[objectives]]
        name = "letters"
        scorer = "python"
        callable = "{tmp / 'reward.py'}:letters"
        [aggregator]
        kind = "bon"
        [contexts]
        weights = [[0.2, 0.8], [0.8, 0.2]]
        budgets = {{ low = 0.0, high = 1.0 }}
        [train]
        n_max = 4
        budget = 10
    """))
    return tmp / "bon.toml"


def write_policy(path: Path, task: Path, name: str, contexts: list[str],
                 arms: list[tuple[int, int]]) -> Path:
    Policy(env=name, learner="hand", budget=0, completions_used=0, seed=0,
           split={"test": []}, contexts=contexts,
           choices=[Choice(p, n, 0.0, 0) for p, n in arms],
           trace={"task": {"path": str(task)}}).save(path)
    return path


def mcq_policy(tmp: Path, url: str, arms: list[tuple[int, int]]) -> Path:
    """A hand-made policy over the multiple-choice task served from ``url``: arms[0] for
    budget=low, arms[1] for budget=high."""
    return write_policy(tmp / "p.json", mv_task(tmp, url), "mcq-smollm2",
                        ["budget=low", "budget=high"], arms)


def bon_policy(path: Path, url: str, arms: list[tuple[int, int]]) -> Path:
    """A hand-made policy over the Best-of-N task served from ``url`` (written beside
    ``path``), one arm per context of its grid."""
    contexts = [f"brevity={w},letters={1 - w:g},budget={b}" for w in (0.2, 0.8)
                for b in ("low", "high")]
    return write_policy(path, bon_task(path.parent, url), "bon-gw", contexts, arms)


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[ScriptedServer, Gateway, Path]]:
    with ScriptedServer(answer="The answer is (B).") as up:
        policy = mcq_policy(tmp_path, up.base_url, [(1, 3), (0, 1)])
        with Gateway(policy, "--default-context", "budget=high", "--upstream-timeout", "5",
                     "--upstream-retries", "0", "--max-n", "8") as gw:
            yield up, gw, policy


def test_arm_usage_and_votes_follow_the_policy(scripted) -> None:  # type: ignore[no-untyped-def]
    up, gw, _ = scripted
    before = len(up.requests)
    r = gw.ask({"budget": "low"})
    meta = r.model_extra["iapo"]
    assert (meta["prompt_index"], meta["n"]) == (1, 3) and meta["prompt"] == "reason"
    sent = up.requests[before:]
    assert len(sent) == 3
    # the prompt's system message and template were applied to the user's message
    for body in sent:
        assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
        assert body["messages"][1]["content"] == (
            f"Question: {QUESTION}\nThink briefly, then finish with: The answer is (X).")
        assert body["max_tokens"] == 24 and body["temperature"] == 0.8
    assert len({b["seed"] for b in sent}) == 3  # independent samples
    # usage is the sum over the N completions (the upstream says 7 + 5 tokens each)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (21, 15, 36)
    assert meta["votes"] == {"B": 3} and meta["answer"] == "B"
    assert extract_letter(r.choices[0].message.content) == "B"

    r = gw.ask({"budget": "high"})
    assert (r.model_extra["iapo"]["prompt_index"], r.model_extra["iapo"]["n"]) == (0, 1)
    assert r.usage.completion_tokens == 5


def test_header_and_default_context(scripted) -> None:  # type: ignore[no-untyped-def]
    _, gw, _ = scripted
    r = gw.client.chat.completions.create(
        model="iapo", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-IAPO-Context": "budget=low"})
    assert r.model_extra["iapo"]["context"] == "budget=low"
    r = gw.ask(None)  # no context: the configured default
    assert r.model_extra["iapo"]["context"] == "budget=high"
    models = gw.client.models.list()
    assert [m.id for m in models.data] == ["mcq-smollm2"]  # the task's name


def docs_names() -> tuple[set[str], str]:
    """The model names of docs/gateway.md's Python examples, and the name of the example task
    of docs/live.md (whose policy the gateway page serves)."""
    gateway = (DOCS / "gateway.md").read_text()
    models = {m for block in re.findall(r"```python\n(.*?)```", gateway, re.S)
              for m in re.findall(r'\bmodel="([^"]+)"', block)}
    example = re.search(r"```toml\n(.*?)```", (DOCS / "live.md").read_text(), re.S)
    assert example is not None
    return models, tomllib.loads(example.group(1))["name"]


def test_one_name_in_the_docs_the_gateway_the_exported_env_evaluate_and_bench(
        tmp_path: Path) -> None:
    """The served model id is the task's name: /v1/models lists it, every response (streamed
    or not, whatever model the request named) carries it, the docs' example calls the model by
    it, and `export-env` stores it, so `evaluate` and `bench` call the file by it too."""
    models, name = docs_names()
    assert models == {name}
    raw = mv_raw("")
    raw["name"] = name
    raw["train"].update(n_max=3, budget=30)
    ask = {"messages": [{"role": "user", "content": "question 1"}],
           "extra_body": {"iapo_context": {"budget": "low"}}}
    with ScriptedServer(answer="The answer is (B).") as up:
        raw["model"]["base_url"] = up.base_url
        task = write_task(tmp_path, raw, n_records=6)
        run, env_file = tmp_path / "run", tmp_path / "sqa_env.npz"
        for args in (("optimize", str(task), "--out", str(run)),
                     ("collect", str(task), "--out", str(run), "--samples", "2"),
                     ("export-env", str(run / "store.sqlite"), "--out", str(env_file))):
            res = cli(*args)
            assert res.exit_code == 0, res.output
        with Gateway(run / "policy.json", "--upstream-timeout", "5",
                     "--upstream-retries", "0") as gw:
            listed = [m.id for m in gw.client.models.list().data]
            answered = gw.client.chat.completions.create(model=listed[0], **ask)
            chunks = list(gw.client.chat.completions.create(model=listed[0], stream=True, **ask))
            # the gateway serves one model: another name, or none, is answered by it
            other = gw.client.chat.completions.create(model="iapo", **ask)
            bare = httpx.post(f"{gw.url}/v1/chat/completions",
                              json={"messages": ask["messages"], "iapo_context": "budget=low"})
    assert listed == [name]
    assert answered.model == name and up.requests[-1]["model"] == "m"  # not the upstream's
    assert len(chunks) > 2 and {c.model for c in chunks} == {name}
    assert other.model == name
    assert bare.status_code == 200 and bare.json()["model"] == name

    res = cli("evaluate", str(env_file), str(run / "policy.json"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["env"] == name
    res = cli("evaluate", str(env_file), str(run / "policy.json"))
    assert f" on {name} (T=30" in res.stdout
    out = tmp_path / "bench"
    res = cli("bench", "--envs", str(env_file), "--learners", "psst,uniform", "--budgets", "20",
              "--runs", "2", "--out", str(out))
    assert res.exit_code == 0, res.output
    with (out / "runs.csv").open(newline="") as fh:
        assert {r["env"] for r in csv.DictReader(fh)} == {name}
    assert f"## {name}\n" in (out / "summary.md").read_text()


def test_bad_requests_get_400_and_the_server_keeps_serving(scripted) -> None:  # type: ignore[no-untyped-def]
    _, gw, _ = scripted
    with pytest.raises(openai.BadRequestError) as e:
        gw.ask({"budget": "low", "speed": 3})
    assert e.value.status_code == 400 and "unknown context key" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        gw.ask({"budget": "enormous"})
    assert "no context matches" in str(e.value)
    raw = httpx.post(f"{gw.url}/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    raw = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "x"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "messages"
    raw = httpx.post(f"{gw.url}/v1/chat/completions",
                     json={"messages": [{"role": "assistant", "content": "x"}]})
    assert raw.status_code == 400 and "last message" in raw.json()["error"]["message"]
    assert httpx.get(f"{gw.url}/v1/nothing").status_code == 404
    assert httpx.get(f"{gw.url}/v1/chat/completions").status_code == 405
    assert gw.ask({"budget": "low"}).choices[0].message.content  # still serving
    assert httpx.get(f"{gw.url}/health").json()["errors"] == 5


def test_policy_reload_without_restart(scripted) -> None:  # type: ignore[no-untyped-def]
    _, gw, policy = scripted
    data = json.loads(policy.read_text())
    data["policy"][0]["n"] = 2
    time.sleep(1.1)
    policy.write_text(json.dumps(data))
    time.sleep(1.1)
    assert gw.ask({"budget": "low"}).model_extra["iapo"]["n"] == 2
    policy.write_text("{broken")
    time.sleep(1.1)
    health = httpx.get(f"{gw.url}/health").json()
    assert health["status"] == "degraded" and "reload failed" in health["reload_error"]
    assert gw.ask({"budget": "low"}).model_extra["iapo"]["n"] == 2  # the old one stays


def test_n_is_capped(tmp_path: Path) -> None:
    with ScriptedServer() as up, \
            Gateway(mcq_policy(tmp_path, up.base_url, [(0, 4), (0, 1)]), "--max-n", "2") as gw:
        r = gw.ask({"budget": "low"})
        assert r.model_extra["iapo"]["n"] == 2 and r.model_extra["iapo"]["n_capped"]
        assert len(up.requests) == 2


def test_upstream_failure_is_a_502_with_the_reason(tmp_path: Path) -> None:
    arms = [(0, 2), (0, 1)]
    with ScriptedServer(default="500") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, arms),
            "--upstream-retries", "1", "--upstream-timeout", "2") as gw:
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            gw.ask({"budget": "low"})
        assert e.value.status_code == 502 and "HTTP 500" in str(e.value)
        assert time.monotonic() - t0 < 10
    with ScriptedServer(["slow"] * 10, slow_seconds=3) as up, Gateway(
            mcq_policy(tmp_path, up.base_url, arms),
            "--upstream-retries", "0", "--upstream-timeout", "0.5") as gw:
        with pytest.raises(openai.APIStatusError) as e:
            gw.ask({"budget": "high"})
        assert e.value.status_code == 502 and "deadline" in str(e.value)


def test_bounded_load_no_errors_no_lost_requests(tmp_path: Path) -> None:
    with ScriptedServer() as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 2), (1, 1)]), "--max-concurrency", "16") as gw:
        def one(i: int) -> tuple[str, float, float]:
            t0 = time.perf_counter()
            r = gw.ask({"budget": "low" if i % 2 else "high"}, content=f"question {i}")
            total = time.perf_counter() - t0
            return r.id, total, r.model_extra["iapo"]["upstream_seconds"]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(240)))
        assert len({rid for rid, _, _ in results}) == 240
        assert len(up.requests) == 120 * 2 + 120 * 1
        overhead = statistics.median(t - u for _, t, u in results)
        assert overhead < 0.25  # loose; benchmarks/perf/bench_gateway_throughput.py measures it
        health = httpx.get(f"{gw.url}/health").json()
        assert health["served"] == 240 and health["errors"] == 0


def test_bon_picks_the_best_weighted_sample(tmp_path: Path) -> None:
    with ScriptedServer() as up:
        task = bon_task(tmp_path, up.base_url)
        contexts = ["brevity=0.2,letters=0.8,budget=low", "brevity=0.2,letters=0.8,budget=high",
                    "brevity=0.8,letters=0.2,budget=low", "brevity=0.8,letters=0.2,budget=high"]
        policy = write_policy(tmp_path / "p.json", task, "bon-gw", contexts,
                              [(1, 4), (0, 1), (0, 3), (1, 2)])
        with Gateway(policy) as gw:
            r = gw.ask({"brevity": 0.8, "letters": 0.2, "budget": "low"})
        meta = r.model_extra["iapo"]
        assert (meta["prompt_index"], meta["n"]) == (0, 3)
        texts = [s["text"] for s in meta["samples"]]
        values = [0.8 / (1 + len(t)) + 0.2 * sum(c.isalpha() for c in t) / (1 + len(t))
                  for t in texts]
        best = [t for t, v in zip(texts, values, strict=True) if v == max(values)]
        assert r.choices[0].message.content in best
        assert r.usage.completion_tokens == 15


@pytest.mark.parametrize("kind", ["mv", "bon"])
def test_real_model_behind_the_gateway(kind: str, llama: LlamaServer, tmp_path: Path) -> None:
    if kind == "mv":
        task = mv_task(tmp_path, llama.url)
        contexts = ["budget=low", "budget=high"]
        arms = [(1, 3), (2, 2)]
        specs = [{"budget": "low"}, {"budget": "high"}]
        name = "mcq-smollm2"
    else:
        task = bon_task(tmp_path, llama.url)
        contexts = ["brevity=0.2,letters=0.8,budget=low", "brevity=0.2,letters=0.8,budget=high",
                    "brevity=0.8,letters=0.2,budget=low", "brevity=0.8,letters=0.2,budget=high"]
        arms = [(1, 2), (0, 1), (0, 3), (1, 1)]
        specs = [{"brevity": 0.2, "letters": 0.8, "budget": "low"},
                 {"brevity": 0.8, "letters": 0.2, "budget": "low"},
                 {"brevity": 0.8, "letters": 0.2, "budget": "high"}]
        name = "bon-gw"
    policy = write_policy(tmp_path / "p.json", task, name, contexts, arms)
    with Gateway(policy, "--upstream-timeout", "120") as gw:
        for spec in specs:
            key = ",".join(f"{k}={v}" for k, v in spec.items())
            want = arms[contexts.index(key)]
            before = llama.settle(5)
            r = gw.ask(spec)
            meta = r.model_extra["iapo"]
            assert (meta["prompt_index"], meta["n"]) == want
            assert llama.settle(10) - before == want[1]  # the model answered N requests
            samples = meta["samples"]
            assert r.usage.completion_tokens == sum(s["completion_tokens"] for s in samples)
            assert r.usage.prompt_tokens == sum(s["prompt_tokens"] for s in samples)
            assert r.choices[0].message.content == samples[meta["chosen"]]["text"]
            if kind == "mv":  # the abstain rule: "no answer" wins only if every sample abstains
                answered = {a: c for a, c in meta["votes"].items() if a != "<no answer>"}
                if answered:
                    assert meta["votes"][meta["answer"]] == max(answered.values())
                    assert sorted(meta["tied"]) == sorted(
                        a for a, c in answered.items() if c == max(answered.values()))
                else:
                    assert meta["answer"] is None and meta["tied"] == ["<no answer>"]


def test_served_requests_are_logged_to_the_store(tmp_path: Path) -> None:
    """Every answered request is a row of the log under the response's own id (plain and
    streamed): context, arm, reason, caller (the key's name, never the key), answer, chosen
    sample, tokens, completions paid and latency; its completions under that id, in draw
    order, with their scores, as the response carried them."""
    import sqlite3

    from iapo.live.store import CompletionStore

    key = "sk-log-test-0123456789abcdef"
    log = tmp_path / "served.sqlite"
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 2), (1, 1)]), "--log-store", str(log),
            env={"IAPO_API_KEYS": key}, api_key=key) as gw:
        first = gw.ask({"budget": "low"}, content="first")
        second = gw.ask({"budget": "high"}, content="second")
        chunks = list(gw.ask({"budget": "high"}, content="third", stream=True))
        paid = len(up.requests)
    streamed_id = {c.id for c in chunks}
    assert len(streamed_id) == 1 and first.id != second.id
    with CompletionStore(log, create=False) as store:
        rows = store.served()
        completions: dict[str, list] = {}
        for c in store.all_completions():
            completions.setdefault(c.pool, []).append(c)
        queries = {i: q for i, q, _ in store.queries()}
    assert [r.id for r in rows] == [first.id, second.id, *streamed_id]
    assert [queries[r.id] for r in rows] == ["first", "second", "third"]
    assert [(r.context, r.prompt, r.n, r.reason, r.caller) for r in rows] == [
        ("budget=low", 0, 2, "policy", "key-1"), ("budget=high", 1, 1, "policy", "key-1"),
        ("budget=high", 1, 1, "policy", "key-1")]
    assert sum(r.paid for r in rows) == paid == 4
    for r, resp in zip(rows[:2], (first, second), strict=True):
        meta = resp.model_extra["iapo"]
        logged = completions[r.id]
        assert [c.sample for c in logged] == list(range(r.n))  # draw order
        assert [c.text for c in logged] == [x["text"] for x in meta["samples"]]
        assert [c.answer for c in logged] == meta["answers"]
        assert r.answer == meta["answer"] == "B" and r.chosen == meta["chosen"]
        assert (r.prompt_tokens, r.completion_tokens) == (resp.usage.prompt_tokens,
                                                         resp.usage.completion_tokens)
        assert 0.0 < r.latency < 60.0
    with sqlite3.connect(log) as db:  # the key itself is nowhere in the log
        dump = "\n".join(db.iterdump())
    assert key not in dump
