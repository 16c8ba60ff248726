"""The continual path end to end against the real SmolLM2 server: traffic from a JSONL file
through the gateway, learning pulls, gold answers posted to /v1/feedback, ``iapo refine``
writing a policy on evidence, the gateway reloading it; the server's own log counts the
served plus the learning completions exactly, and refine (and its rerun) pay nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from conftest import LlamaServer
from iapo.cli import main
from iapo.live.store import CompletionStore
from iapo.policy import Policy
from iapo.problem import Choice
from test_serve import Gateway, mv_task

COST = 0.5  # what training would have priced one completion at (the policy's trace)


def direct_at_4(run: Path, task: Path) -> None:
    """A policy written by hand into ``run``: the 'direct' prompt at N = 4 in both contexts,
    each completion priced at COST as training would have."""
    Policy(env="mcq-smollm2", learner="hand", budget=0, completions_used=0, seed=0,
           split={"test": []}, contexts=["budget=low", "budget=high"],
           choices=[Choice(0, 4, 0.0, 0), Choice(0, 4, 0.0, 0)],
           trace={"task": {"path": str(task)}, "costs": [COST] * 3}).save(run / "policy.json")


def test_traffic_feedback_refine_and_reload_on_the_real_model(llama: LlamaServer,
                                                              tmp_path: Path) -> None:
    """The policy serves the 'direct' prompt at N = 4 in both contexts. At a cost weight of
    1 ('high'), four completions at 0.5 each cost 1.5 more than one, more than any accuracy
    one completion could lose: refine moves 'high' to fewer completions, on the evidence of
    the samples logged after the challenger was named (each served group of 4 holds one of
    N = 1), and the gateway serves the new arm."""
    run = tmp_path / "run"
    run.mkdir()
    task = mv_task(tmp_path, llama.url)
    direct_at_4(run, task)
    CompletionStore(run / "store.sqlite").close()  # training left nothing to reuse
    traffic = tmp_path / "traffic.jsonl"
    records = [json.loads(line) for line in (tmp_path / "mcq.jsonl").read_text().splitlines()]
    traffic.write_text("".join(json.dumps({"query": r["query"], "gold": r["gold"],
                                           "context": "budget=high" if i % 3 else "budget=low"})
                               + "\n" for i, r in enumerate(records * 5)))
    log = tmp_path / "log.sqlite"
    before = llama.settle(5)
    with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget", "0.25",
                 "--upstream-timeout", "120") as gw:
        served: list[tuple[str, str]] = []
        for line in traffic.read_text().splitlines():
            item = json.loads(line)
            budget = item["context"].split("=")[1]
            r = gw.ask({"budget": budget}, content=item["query"])
            served.append((r.id, item["gold"]))
        for rid, gold in served:
            ok = httpx.post(f"{gw.url}/v1/feedback", json={"id": rid, "gold": gold},
                            timeout=10)
            assert ok.status_code == 200, ok.text
        learning = httpx.get(f"{gw.url}/health").json()["learning"]
        drawn = llama.settle(30) - before
        res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                        "--refine-every", "5"])
        assert res.exit_code == 0, res.output
        report = json.loads((run / "refine.json").read_text())
        rerun = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                          "--refine-every", "5"])
        end = time.monotonic() + 30
        while True:  # the gateway reloads the written policy
            contexts = httpx.get(f"{gw.url}/health").json()["contexts"]
            if contexts["budget=high"]["n"] != 4 or time.monotonic() > end:
                break
            time.sleep(0.2)
    with CompletionStore(log, create=False) as store:
        rows = store.served()
    policy_rows = [r for r in rows if r.reason == "policy"]
    learn_rows = [r for r in rows if r.reason == "learn"]
    # the server's own log: the served plus the learning completions, exactly, and refine's
    # two runs added none
    assert drawn == sum(r.n for r in policy_rows) + sum(r.n for r in learn_rows)
    assert llama.settle(5) - before == drawn
    assert sum(r.n for r in policy_rows) == 4 * len(served) == learning["served_completions"]
    assert 0 < sum(r.n for r in learn_rows) == learning["learning_completions"] <= \
        0.25 * learning["served_completions"]
    high = report["contexts"][1]
    assert report["log"]["left_out"] == 0 and report["log"]["policy"] == len(served)
    assert "(replaced)" in res.output and high["chosen"]["n"] < 4
    assert high["switches"] and all(s["reason"] == "evidence" and s["gain_lower"] > 0
                                    for s in high["switches"])
    assert contexts["budget=high"]["n"] == high["chosen"]["n"]
    assert (run / "policy.previous.json").is_file()
    assert rerun.exit_code == 0, rerun.output


def test_the_gateway_retrains_with_its_saved_budget_on_the_real_model(
        llama: LlamaServer, tmp_path: Path) -> None:
    """``iapo serve --learn-budget 0.25 --refine-every 20 --retrain 20`` in front of SmolLM2,
    20 requests of new questions (the task's, reworded), the gold answers of the first 19
    posted as they are answered (the last one's would race the refine it sets off): no
    learning pull is drawn; at request 20 the background refine spends the saved budget,
    at most a quarter of the completions served, as one psst-auto run on the logged
    questions. The server's own log counts the served completions plus exactly what the
    run's store holds, and ``iapo refine --budget B --retrain`` with the same budget replays
    that run and pays nothing."""
    run = tmp_path / "run"
    run.mkdir()
    task = mv_task(tmp_path, llama.url)
    direct_at_4(run, task)
    CompletionStore(run / "store.sqlite").close()
    records = [json.loads(line) for line in (tmp_path / "mcq.jsonl").read_text().splitlines()]
    log = tmp_path / "log.sqlite"
    before = llama.settle(5)
    with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget", "0.25",
                 "--refine-every", "20", "--retrain", "20", "--upstream-timeout", "120") as gw:
        for i, rec in enumerate(records * 2):
            r = gw.ask({"budget": "high" if i % 3 else "low"},
                       content=f"Please answer. {rec['query']}")
            if i == 2 * len(records) - 1:
                break  # the last one's gold would race the refine it sets off: none
            ok = httpx.post(f"{gw.url}/v1/feedback", json={"id": r.id, "gold": rec["gold"]},
                            timeout=10)
            assert ok.status_code == 200, ok.text
        end = time.monotonic() + 300
        while True:  # the background refine at request 20
            health = httpx.get(f"{gw.url}/health").json()
            if (health["refine"]["last"] is not None or health["refine"]["error"]) and \
                    not health["refine"]["running"] or time.monotonic() > end:
                break
            time.sleep(0.5)
    assert health["refine"]["error"] is None, health["refine"]
    spent = health["refine"]["last"]["retrained"]
    with CompletionStore(log, create=False) as opened:
        rows = opened.served()
    with CompletionStore(run / "store.sqlite", create=False) as store:
        drawn = store.count()
    served = sum(r.n for r in rows)
    assert {r.reason for r in rows} == {"policy"} and served == 4 * 2 * len(records)
    assert spent["retrain"] and 0 < spent["paid"] == drawn <= 0.25 * served
    assert health["learning"]["learning_completions"] == drawn  # the retraining's, on /health
    assert llama.settle(30) - before == served + drawn
    rerun = CliRunner().invoke(main, ["refine", str(run), "--log", str(log), "--budget",
                                      str(spent["budget"]), "--retrain"])
    assert rerun.exit_code == 0, rerun.output
    again = json.loads((run / "refine.json").read_text())["spent"]
    assert again["paid"] == 0 and again["replayed"] == spent["drawn"]
    assert llama.settle(5) - before == served + drawn
