"""Majority voting that stops once decided, against the real SmolLM2 server.

`iapo optimize` trains a task whose arms stop once the vote is decided (`stop = "decided"`):
the policy records the rule, and the server's request log shows that training asked for exactly
the completions it stored. Then `iapo answer` and `iapo serve` run an arm of N = 8 under that
rule. With greedy decoding (temperature 0) every completion gives the same answer, so the vote
is decided after 5 of 8 (margin 5 > 3 still to come) and the server's own request log shows 5
requests, not 8: 3 completions saved. The task's server runs one completion at a time
(``model.concurrency = 1``), so waves of 4 are drawn as waves of 1 (a wave wider than the
concurrency is drawn as waves of it): 5 waves and 5 requests too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import LlamaServer
from test_live_e2e import iapo, stored
from test_serve import Gateway

DATA = Path(__file__).parent / "data"
QUESTION = "Which planet is known as the Red Planet?\nA) Venus\nB) Mars\nC) Jupiter\nD) Saturn"


def greedy_task(tmp: Path, url: str) -> Path:
    """The small multiple-choice task with greedy decoding, N up to 8, arms that stop."""
    shutil.copy(DATA / "mcq.jsonl", tmp / "mcq.jsonl")
    text = (DATA / "mcq_task.toml").read_text().replace("http://127.0.0.1:8080/v1", url)
    text = text.replace("temperature = 0.8", "temperature = 0.0").replace(
        "temperature = 1.0", "temperature = 0.0")
    text = text.replace("n_max = 4", "n_max = 8").replace(
        "cost_scale = 0.01", 'cost_scale = 0.01\nstop = "decided"\nwave = 1')
    path = tmp / "task.toml"
    path.write_text(text)
    return path


def with_arm(policy: Path, out: Path, n: int, wave: int) -> Path:
    """The trained policy with prompt 0 at N = ``n`` in every context, waves of ``wave``."""
    data = json.loads(policy.read_text())
    for row in data["policy"]:
        row.update(prompt=0, n=n)
    data["stopping"]["wave"] = wave
    out.write_text(json.dumps(data))
    return out


def test_decided_arms_train_answer_and_serve_with_fewer_requests(llama: LlamaServer,
                                                                  tmp_path: Path) -> None:
    task = greedy_task(tmp_path, llama.url)
    run = tmp_path / "run"
    before = llama.settle()
    iapo("optimize", str(task), "--out", str(run))
    assert llama.settle() - before == stored(run / "store.sqlite")
    trained = run / "policy.json"
    assert json.loads(trained.read_text())["stopping"] == {"rule": "decided", "wave": 1}

    # `iapo answer`, waves of 1: 5 requests for N = 8
    policy = with_arm(trained, tmp_path / "n8.json", 8, 1)
    before = llama.settle()
    got = json.loads(iapo("answer", str(policy), QUESTION, "--context", "budget=low",
                          "--json").stdout)
    requests = llama.settle() - before
    assert requests == 5 == got["completions_used"] == got["paid"] == len(got["samples"])
    assert got["n"] == 8 and got["completions_saved"] == 3 and got["waves"] == 5
    assert got["cancelled"] == 0 and got["stopping"] == {"rule": "decided", "wave": 1}
    answers = {s["answer"] for s in got["samples"]}
    assert len(answers) == 1  # greedy: one answer, five votes

    # `iapo serve`, waves of 1 and of 4 (drawn as waves of 1 at the task's concurrency of 1):
    # the log shows 5 requests each time, and the response the arm's measured latency
    for wave, waves, cancelled in ((1, 5, 0), (4, 5, 0)):
        policy = with_arm(trained, tmp_path / f"n8-w{wave}.json", 8, wave)
        with Gateway(policy, "--max-concurrency", "1") as gw:  # one upstream call at a time
            before = llama.settle()
            served = gw.ask({"budget": "low"}, content=QUESTION)
            requests = llama.settle() - before
        meta = served.model_extra["iapo"]  # type: ignore[index]
        assert requests == 5 == meta["completions_used"] == meta["paid"], (wave, meta)
        assert meta["completions_saved"] == 3 and meta["waves"] == waves
        assert meta["cancelled"] == cancelled and meta["n"] == 8
        assert meta["upstream_seconds"] > 0 and meta["predicted_seconds"] is None
        assert sum(meta["votes"].values()) == 5
        assert served.usage is not None and served.usage.completion_tokens == sum(
            s["completion_tokens"] for s in meta["samples"])

    # the paper's arm on the same policy pays all 8
    data = json.loads((tmp_path / "n8.json").read_text())
    data["stopping"] = {"rule": "all", "wave": 1}
    (tmp_path / "all.json").write_text(json.dumps(data))
    before = llama.settle()
    got = json.loads(iapo("answer", str(tmp_path / "all.json"), QUESTION, "--context",
                          "budget=low", "--json").stdout)
    assert llama.settle() - before == 8 == got["completions_used"]
    assert got["completions_saved"] == 0


def test_decided_arms_replay_stored_samples_in_waves(tmp_path: Path) -> None:
    """With a store, the waves take the pool's samples 0, 1, 2, ... in order: what is stored is
    replayed, only the missing ones are asked for (one request each), and a second identical
    request pays nothing. Every answer is (B), N = 8, waves of 2 on a task whose server runs
    one completion at a time (``model.concurrency = 1``), so drawn as waves of 1: once sample
    4 is back (margin 5 > 3) the vote is decided, after five waves, and sample 5 is never
    asked for."""
    from iapo.live.store import CompletionStore
    from iapo.policy import Policy
    from iapo.problem import Stopping
    from live_helpers import ScriptedServer
    from test_serve import write_policy

    with ScriptedServer(answer="The answer is (B).") as up:
        path = write_policy(tmp_path / "p.json", greedy_task(tmp_path, up.base_url),
                            "mcq-smollm2", ["budget=low", "budget=high"], [(0, 8), (0, 8)])
        policy = Policy.load(path)
        policy.stopping = Stopping("decided", 2)
        policy.save(path)
        store = tmp_path / "store.sqlite"
        # one upstream call at a time
        with Gateway(path, "--store", str(store), "--max-n", "8", "--max-concurrency",
                     "1") as gw:
            first = gw.ask({"budget": "low"}, content=QUESTION).model_extra["iapo"]  # type: ignore[index]
            assert len(up.requests) == 5 and all("n" not in b for b in up.requests)
            assert (first["completions_used"], first["paid"], first["replayed"]) == (5, 5, 0)
            assert first["waves"] == 5 and first["cancelled"] == 0
            assert first["completions_saved"] == 3
            again = gw.ask({"budget": "low"}, content=QUESTION).model_extra["iapo"]  # type: ignore[index]
            assert len(up.requests) == 5  # all replayed: sample 5 is never asked for
            assert (again["completions_used"], again["paid"], again["replayed"]) == (5, 0, 5)
            assert again["samples"] == first["samples"] and again["cancelled"] == 0
        with CompletionStore(store) as s:
            assert s.count() == 5
