"""``iapo refine`` and ``iapo monitor`` on a real gateway's log: a policy serving a prompt
that answers wrong is replaced, on evidence, by one that answers right; the gateway reloads
it; without gold answers refine says what is missing; a rerun changes nothing and pays
nothing."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from iapo.cli import main
from iapo.live.refine import LEARNING_DRAWN, RETRAINED_AT
from iapo.live.store import SERVED_RUN, CompletionStore
from live_helpers import ScriptedServer
from test_serve import DATA, Gateway, bon_policy, mcq_policy

GOLD = {json.loads(line)["query"]: json.loads(line)["gold"]
        for line in (DATA / "mcq.jsonl").read_text().splitlines()}
WRONG = {"A": "B", "B": "C", "C": "D", "D": "A"}
# the questions reworded: logged queries that are not training queries, each to its original
ASKED = {f"(asked again) {q}": q for q in GOLD}


def by_prompt(body: dict[str, Any]) -> str:
    """The 'short' prompt (its template ends with 'Answer:') answers wrong, the others right."""
    text = body["messages"][-1]["content"]
    query = next(q for q in GOLD if q in text)
    letter = WRONG[GOLD[query]] if text.rstrip().endswith("Answer:") else GOLD[query]
    return f"The answer is ({letter})."


def serve_short(run: Path, up: ScriptedServer) -> None:
    """RUN/policy.json serves the 'short' prompt (index 2) at N = 4 in both contexts, from
    ``up``; RUN/store.sqlite is empty (training left nothing to reuse)."""
    mcq_policy(run, up.base_url, [(2, 4), (2, 4)]).rename(run / "policy.json")
    CompletionStore(run / "store.sqlite").close()


def wait_for(predicate, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def attach_gold(tmp_path: Path, log: Path, served: list[tuple[str, str]]) -> None:
    """Attach each served request's gold answer (by its question) to the log, through
    ``iapo label-log``."""
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": rid, "gold": GOLD[q]}) + "\n"
                              for rid, q in served))
    assert CliRunner().invoke(main, ["label-log", str(log), str(labels)]).exit_code == 0


def test_refine_replaces_a_wrong_prompt_on_evidence_and_the_gateway_reloads(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    queries = list(GOLD)
    with ScriptedServer(answer_of=by_prompt) as up:
        policy = mcq_policy(run, up.base_url, [(2, 4), (2, 4)])
        policy.rename(run / "policy.json")
        CompletionStore(run / "store.sqlite").close()  # training left nothing to reuse
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget",
                     "1.0") as gw:
            served = []
            for i in range(160):
                r = gw.ask({"budget": "low" if i % 2 else "high"}, content=queries[i % 10])
                served.append((r.id, queries[i % 10]))
            health = lambda: httpx.get(f"{gw.url}/health").json()  # noqa: E731
            learned = health()["learning"]["learning_completions"]
            wait_for(lambda: len(up.requests) == 160 * 4 + learned)
            # no gold yet: refine says what is missing and writes nothing
            res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log)])
            assert res.exit_code == 2 and "no gold answer" in res.output
            attach_gold(tmp_path, log, served)
            # majority voting scores by the gold: a person's score of a request is not used
            assert httpx.post(f"{gw.url}/v1/feedback", timeout=10, json={
                "id": served[0][0], "objective": "correct", "score": 1.0}).status_code == 200
            paid_before = len(up.requests)
            res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                            "--refine-every", "10"])
            paid_by_refine = len(up.requests) - paid_before
            assert res.exit_code == 0, res.output
            res_output = res.output
            assert "(replaced)" in res.output
            report = json.loads((run / "refine.json").read_text())
            new = json.loads((run / "policy.json").read_text())
            old = json.loads((run / "policy.previous.json").read_text())
            # the gateway reloads the refined policy
            wait_for(lambda: all(c["prompt"] != "short"
                                 for c in health()["contexts"].values()))
            after = gw.ask({"budget": "low"}, content=queries[0])
    assert learned > 0 and paid_by_refine == 0
    assert after.model_extra["iapo"]["prompt"] != "short"
    assert report["changed"] and report["log"]["left_out"] == 0
    assert (report["log"]["rated"], report["log"]["rated_unused"]) == (0, 1)
    assert "0 feedback scores of shown completions count" in res_output
    assert "; 1 not used" in res_output
    assert [c["prompt"] for c in old["policy"]] == [2, 2]
    assert all(c["prompt"] in (0, 1) for c in new["policy"])
    for c in report["contexts"]:
        assert c["served"]["prompt"] == "short" and c["chosen"]["prompt"] != "short"
        # right every time against wrong every time (and, at a cost weight of 1 with a cost
        # of 1 per completion, N = 1 before N = 4): every step on clear evidence, its lower
        # bound (the fresh samples with one more at each end of their range) below the gain
        gain = c["chosen"]["q"] - c["served"]["q"]
        assert c["switches"] and all(s["reason"] == "evidence" and 0.5 < s["gain_lower"] <= gain
                                     for s in c["switches"])
        # a hand-made policy has no training costs: every completion costs 1
        assert gain >= 1.0
    assert report["flags"] == []
    # a rerun on the same log pays nothing and keeps the refined policy
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "10"])
    assert res.exit_code == 0 and "policy unchanged" in res.output
    assert json.loads((run / "policy.json").read_text())["policy"] == new["policy"]
    # the log names the run it was served from: monitor needs the log alone
    mon = CliRunner().invoke(main, ["monitor", str(log)])
    assert mon.exit_code == 0 and "DRIFT" not in mon.output
    assert f"run: {run.resolve()} (" in mon.output
    assert mon.output.count("served short N=4") == 0  # it replays against the refined policy
    mon = CliRunner().invoke(main, ["monitor", str(run)])
    assert mon.exit_code == 2 and "is a folder: give the log" in mon.output


def ask_and_label(gw: Gateway, i: int, budget: str | None = None) -> Any:
    """Request i of a run: question i % 10 of GOLD, in the context ``budget`` (None: "high"
    for even i, "low" for odd); its gold answer posted at once."""
    query = list(GOLD)[i % 10]
    r = gw.ask({"budget": budget or ("low" if i % 2 else "high")}, content=query)
    got = httpx.post(f"{gw.url}/v1/feedback", json={"id": r.id, "gold": GOLD[query]},
                     timeout=10)
    assert got.status_code == 200, got.text
    return r


@pytest.mark.parametrize("moves", ["evidence", "pessimistic"])
def test_the_gateway_refines_in_the_background_and_reloads(tmp_path: Path,
                                                           moves: str) -> None:
    """``iapo serve --refine-every 40 [--moves pessimistic]``: gold answers posted as the
    requests are answered; a background refine, by the rule asked, replaces the wrong
    prompt, the gateway serves the new policy, and /health says what the last refine did."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget", "1.0",
                     "--refine-every", "40", "--moves", moves) as gw:
            prompts = []
            for i in range(200):
                prompts.append(ask_and_label(gw, i).model_extra["iapo"]["prompt"])
                if prompts[-1] != "short" and i % 2:
                    break
                time.sleep(0.01)  # let the background learning and refine run
            health = httpx.get(f"{gw.url}/health").json()
    assert prompts[0] == "short" and prompts[-1] != "short"  # replaced while serving
    assert health["refine"]["every"] == 40 and health["refine"]["error"] is None
    assert health["refine"]["last"]["changed"] is True and health["drift"] == []
    assert health["refine"]["moves"] == moves
    assert json.loads((run / "policy.previous.json").read_text())["policy"][0]["prompt"] == 2
    report = json.loads((run / "refine.json").read_text())
    assert report["settings"]["moves"] == moves
    reasons = {s["reason"] for c in report["contexts"] for s in c["switches"]}
    assert reasons == ({"model"} if moves == "pessimistic" else {"evidence"})


@pytest.mark.parametrize("fraction,every,retrain,first,drawn", [
    (0.5, 10, 20, 20, 40),  # K decides: 20 saved at request 10 would pay, but it is not due
    (0.1, 10, 10, 30, 12),  # the floor decides: due at 10 and 20, with 4 and 8 saved of 12
])
def test_the_gateway_retrains_in_the_background_with_the_budget_it_saved(
        tmp_path: Path, fraction: float, every: int, retrain: int, first: int,
        drawn: int) -> None:
    """``iapo serve --learn-budget F --refine-every N --retrain K``: no learning pull is
    drawn (the log holds served requests only). A retraining is due K logged requests after
    the last, and waits until the saved budget pays one group of N_max = 4 of each of the 3
    prompts (12): every request is 4 completions, so F = 0.5 and K = 20 retrain at request
    20 with 0.5 x 80 = 40, F = 0.1 and K = 10 at request 30 with 0.1 x 120 = 12. The run of
    psst-auto on the logged queries moves the contexts off the wrong prompt, the gateway
    serves the new policy, and nothing moved before. What the upstream answered beyond the
    served completions is exactly what the run's store holds, within F x served."""
    from iapo.live.refine import saved_budget

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    asked = ASKED
    queries = list(asked)
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget",
                     str(fraction), "--refine-every", str(every), "--retrain",
                     str(retrain)) as gw:
            prompts = []
            for i in range(100):
                r = gw.ask({"budget": "low" if i % 2 else "high"}, content=queries[i % 10])
                prompts.append(r.model_extra["iapo"]["prompt"])
                got = httpx.post(f"{gw.url}/v1/feedback",
                                 json={"id": r.id, "gold": GOLD[asked[queries[i % 10]]]},
                                 timeout=10)
                assert got.status_code == 200
                if prompts[-1] != "short" and i % 2:
                    break
                time.sleep(0.02)  # let the background refine run
            wait_for(lambda: not httpx.get(f"{gw.url}/health").json()["refine"]["running"])
            health = httpx.get(f"{gw.url}/health").json()
    assert prompts[:first] == ["short"] * first and prompts[-1] != "short"
    assert health["refine"]["retrain"] == retrain and health["refine"]["error"] is None
    assert health["learning"]["saved"] is True
    with CompletionStore(log, create=False) as opened:
        rows = opened.served()
    assert {r.reason for r in rows} == {"policy"}
    served = sum(r.n for r in rows)
    with CompletionStore(run / "store.sqlite", create=False) as store:
        held = store.count()  # no training here: all of it drawn on logged queries
    assert held == drawn <= fraction * served and len(up.requests) == served + drawn
    # the one worker's /health counts what its retrainings drew as learning completions,
    # and keeps its one retraining after any refine that came later
    assert health["learning"]["learning_completions"] == drawn
    assert health["refine"]["last_retraining"]["paid"] == drawn
    assert saved_budget(run, log, fraction) == math.floor(fraction * served + 1e-9) - drawn
    # only a retraining could move it: no evidence for another prompt was ever drawn
    moved = json.loads((run / "policy.json").read_text())["policy"]
    assert all(c["prompt"] != 2 for c in moved)
    assert json.loads((run / "policy.previous.json").read_text())["policy"][0]["prompt"] == 2


def test_a_saved_retraining_waits_while_no_logged_query_can_be_drawn_on(
        tmp_path: Path) -> None:
    """The gateway's refine (``saved``): 20 requests, all of them training questions, whose
    pools already hold training's samples: there is nothing to draw on, so the retraining
    waits (no error, nothing spent) and the replay still decides. Once 20 requests of new
    questions are logged it is spent: 0.25 x the 160 completions served = 40."""
    from iapo.continual import ContinualSettings
    from iapo.live.refine import refine

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    settings = ContinualSettings(refine_every=10, retrain=10)
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, list(GOLD), {q: q for q in GOLD}, 20)
        report = refine(run, log, settings, saved=0.25)
        assert report["spent"] is None and len(up.requests) == 80
        assert "no labelled logged request asks a question" in report["retraining_waits"]
        asked = ASKED
        with Gateway(run / "policy.json", "--log-store", str(log)) as gw:
            served = [(gw.ask({"budget": "low" if i % 2 else "high"},
                              content=q).id, q) for i, q in enumerate(list(asked) * 2)]
        attach_gold(tmp_path, log, [(rid, asked[q]) for rid, q in served])
        report = refine(run, log, settings, saved=0.25)
    assert report["spent"]["retrain"] and report["spent"]["drawn"] == 40
    assert report["retraining_waits"] is None


def test_runs_that_share_a_log_share_its_learning_budget(tmp_path: Path) -> None:
    """The learning budget is the log's: run A serves 20 requests of 4 completions and its
    retraining spends 0.5 x 80 = 40. Run B (A's first policy in a folder of its own) then
    serves the same log: nothing is left of A's share (0, where B's own count of its store
    would find 40), its K = 30 counts from A's retraining (20 logged requests since, so it
    waits), and after 20 requests of its own, 0.5 x 160 - 40 = 40 is saved, for either."""
    import shutil

    from iapo.continual import ContinualSettings
    from iapo.live.refine import refine, saved_budget

    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, list(ASKED), ASKED, 20)
        assert refine(run, log, ContinualSettings(refine_every=10, retrain=10),
                      saved=0.5)["spent"]["paid"] == 40
        shutil.copy(run / "policy.previous.json", other / "policy.json")
        CompletionStore(other / "store.sqlite").close()
        with Gateway(other / "policy.json", "--log-store", str(log)) as gw:
            assert saved_budget(other, log, 0.5) == 0
            served = [(gw.ask({"budget": "low" if i % 2 else "high"}, content=q).id, q)
                      for i, q in enumerate(list(ASKED) * 2)]
        attach_gold(tmp_path, log, [(rid, ASKED[q]) for rid, q in served])
        assert saved_budget(other, log, 0.5) == 40 == saved_budget(run, log, 0.5)
        before = len(up.requests)
        report = refine(other, log, ContinualSettings(refine_every=10, retrain=30), saved=0.5)
        assert len(up.requests) == before and report["spent"] is None
    assert report["retraining_waits"] == "20 of 30 requests since the last retraining"


def test_a_retraining_that_stops_keeps_what_it_paid_and_is_due_again(
        tmp_path: Path) -> None:
    """20 requests of 4 completions save 0.5 x 80 = 40. The upstream answers 5 of the
    retraining's requests, then refuses the rest: the refine stops, and the log's ledger
    keeps what the run's store holds of it (each paid completion is stored as it comes),
    no more, and records no retraining. So the next refine is due at once, with the rest
    of the 40, and spends it."""
    from iapo.continual import ContinualSettings
    from iapo.live.refine import refine, saved_budget

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    settings = ContinualSettings(refine_every=10, retrain=10)
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, list(ASKED), ASKED, 20)
        up.script = ["ok"] * 5 + ["400"] * 1000
        with pytest.raises(Exception, match="400"):
            refine(run, log, settings, saved=0.5)
        with CompletionStore(run / "store.sqlite", create=False) as store:
            paid = store.count()  # no training: every stored completion was drawn here
        with CompletionStore(log, create=False) as opened:
            assert opened.get_meta(LEARNING_DRAWN) == paid and 0 < paid < 40
            assert opened.get_meta(RETRAINED_AT) is None
        assert saved_budget(run, log, 0.5) == 40 - paid
        up.script = []
        report = refine(run, log, settings, saved=0.5)
    assert report["spent"]["budget"] == 40 - paid and report["retraining_waits"] is None


def test_a_refine_refused_before_it_draws_holds_nothing(tmp_path: Path) -> None:
    """Every logged request asks a training question, so a manual ``--budget 12
    --retrain`` has nothing to draw on and is refused: the log's ledger is as before (0
    drawn) and no retraining is recorded, so a gateway's K does not start again."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, list(GOLD), {q: q for q in GOLD}, 20)
        res, paid = refine_command(run, log, up, "--budget", "12", "--retrain")
    assert res.exit_code == 2 and paid == 0, res.output
    with CompletionStore(log, create=False) as opened:
        assert opened.get_meta(LEARNING_DRAWN) == 0 and opened.get_meta(RETRAINED_AT) is None


def test_two_refines_at_once_never_spend_the_same_completions(tmp_path: Path) -> None:
    """The gateways of two runs share a log that saved 0.5 x 80 = 40, and their refines
    run at the same time: one of them retrains with the 40, the other finds nothing saved
    (the ledger holds it), and the upstream is asked for 40 completions in all."""
    import shutil
    import threading

    from iapo.continual import ContinualSettings
    from iapo.live.refine import refine

    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    log = tmp_path / "log.sqlite"
    settings = ContinualSettings(refine_every=10, retrain=10)
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, list(ASKED), ASKED, 20)
        shutil.copy(run / "policy.json", other / "policy.json")
        CompletionStore(other / "store.sqlite").close()
        before = len(up.requests)
        reports: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda r=r: reports.append(  # type: ignore[misc]
            refine(r, log, settings, saved=0.5))) for r in (run, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        asked = len(up.requests) - before
    spent = sorted((r["spent"] or {}).get("paid", 0) for r in reports)
    assert spent == [0, 40] and asked == 40
    assert any(r["retraining_waits"] == "0 completions saved of the 12 that a retraining "
               "needs (one group of N_max of every prompt)" for r in reports)


def two_traffics(questions: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """An upstream for :func:`serve_two_traffics`: every prompt answers the first five of
    ``questions`` (each rewording the question it maps to) right, the last five wrong."""
    asked = list(questions)
    easy = set(asked[:5])

    def answer(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        q = next(a for a in asked if a in text)
        gold = GOLD[questions[q]]
        return f"The answer is ({gold if q in easy else WRONG[gold]})."

    return answer


def serve_two_traffics(tmp_path: Path, run: Path, log: Path, up: ScriptedServer,
                       questions: dict[str, str]) -> None:
    """The 'short' prompt at N = 4 serves 80 requests into ``log``: 'budget=low' asks the
    first five of ``questions`` in turn, 'budget=high' the last five; gold attached."""
    serve_short(run, up)
    asked = list(questions)
    with Gateway(run / "policy.json", "--log-store", str(log)) as gw:
        served = []
        for i in range(80):
            low = i % 2 == 0
            q = asked[(i // 2) % 5 + (0 if low else 5)]
            served.append((gw.ask({"budget": "low" if low else "high"}, content=q).id,
                           questions[q]))
    attach_gold(tmp_path, log, served)


def test_served_completions_kept_in_the_run_store_are_not_saved_as_drawn(
        tmp_path: Path) -> None:
    """``--store RUN/store.sqlite`` keeps the served completions in the run's store (as
    replays): they are not learning draws, so the 20 requests of 4 completions save 0.5 x
    80 = 40, all of it."""
    from iapo.live.refine import saved_budget

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        with Gateway(run / "policy.json", "--log-store", str(log), "--store",
                     str(run / "store.sqlite"), "--learn-budget", "0.5", "--refine-every",
                     "10", "--retrain", "1000") as gw:
            for i in range(20):
                gw.ask({"budget": "low" if i % 2 else "high"}, content=list(ASKED)[i % 10])
    with CompletionStore(run / "store.sqlite", create=False) as store:
        assert store.count() == 40  # the 10 questions' pools, 4 answers each, replayed after
    assert saved_budget(run, log, 0.5) == 40


def test_a_saved_retraining_is_not_run_where_contexts_ask_differently(
        tmp_path: Path) -> None:
    """The two contexts ask different questions, which the served prompt answers right in
    one and wrong in the other: the replay splits them. A retraining learns from every
    context's queries alike, so the gateway's refine (``saved``) runs none and says why,
    and still decides and writes its report, with nothing drawn."""
    from iapo.continual import ContinualSettings
    from iapo.live.refine import refine

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=two_traffics(ASKED)) as up:
        serve_two_traffics(tmp_path, run, log, up, ASKED)
        before = len(up.requests)
        with CompletionStore(log, create=False) as store:
            ledger = [store.get_meta(k) for k in (LEARNING_DRAWN, RETRAINED_AT)]
        report = refine(run, log, ContinualSettings(refine_every=40, retrain=40), saved=0.5)
        assert len(up.requests) == before
    assert report["splits"] and report["spent"] is None
    assert "ask differently" in report["retraining_waits"]
    assert report["retraining_waits"].endswith("serve without --retrain, which keeps the "
                                               "contexts' estimates apart")
    with CompletionStore(log, create=False) as store:  # nothing held, nothing recorded
        assert [store.get_meta(k) for k in (LEARNING_DRAWN, RETRAINED_AT)] == ledger
    assert json.loads((run / "refine.json").read_text())["retraining_waits"] == \
        report["retraining_waits"]


def test_a_background_refine_skips_while_another_holds_the_run(tmp_path: Path) -> None:
    """Another writer (another worker's refine) holds the run folder: the gateway's refine
    at request 10 skips, counted on /health, not reported as an error; once the folder is
    free, the refine at request 20 runs."""
    from iapo.live.store import writer_lock

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        with Gateway(run / "policy.json", "--log-store", str(log),
                     "--refine-every", "10") as gw:
            def refine_state() -> dict[str, Any]:
                return httpx.get(f"{gw.url}/health").json()["refine"]

            with writer_lock(run, "another refine"):
                for i in range(10):
                    ask_and_label(gw, i, "low")
                wait_for(lambda: refine_state()["skipped_busy"] == 1)
            busy = refine_state()
            for i in range(10):
                ask_and_label(gw, i, "low")
            wait_for(lambda: refine_state()["last"] is not None)
            after = refine_state()
    assert busy["error"] is None and busy["last"] is None
    assert after["skipped_busy"] == 1 and after["last"]["requests"] == 20


def test_the_gateway_refuses_a_retraining_it_cannot_run(tmp_path: Path) -> None:
    """--retrain K needs the background refine every N requests, N dividing K, and a
    learning budget to save; each refused when the app is built, saying what to add."""
    from iapo.errors import InputError
    from iapo.serve.run import build_app
    from iapo.settings import ServeConfig

    policy = mcq_policy(tmp_path, "http://127.0.0.1:9/v1", [(0, 1), (0, 1)])
    log = str(tmp_path / "log.sqlite")
    for more, says in (({}, "add --refine-every N"), ({"refine_every": 15}, "N dividing it"),
                       ({"refine_every": 10}, "give --learn-budget F"),
                       ({"refine_every": 10, "learn_budget": 0.1, "learn_per_day": 5},
                        "drop --learn-per-day")):
        with pytest.raises(InputError, match=says):
            build_app(ServeConfig(policy=str(policy), log_store=log, retrain=20,
                                  **more))  # type: ignore[arg-type]


def test_the_gateway_refuses_moves_it_cannot_make(tmp_path: Path) -> None:
    """``--moves pessimistic`` says how the background refine moves: without
    --refine-every it is refused, and so it is for a task that does not vote, and an
    unknown rule; each when the app is built, before anything listens, saying what to
    do."""
    from iapo.errors import InputError
    from iapo.serve.run import build_app
    from iapo.settings import ServeConfig

    policy = mcq_policy(tmp_path, "http://127.0.0.1:9/v1", [(0, 1), (0, 1)])
    with pytest.raises(InputError, match="add --refine-every N"):
        build_app(ServeConfig(policy=str(policy), moves="pessimistic"))
    with pytest.raises(InputError, match="moves 'bold' is unknown; use one of evidence, "
                                         "pessimistic"):
        build_app(ServeConfig(policy=str(policy), moves="bold"))
    bon = bon_policy(tmp_path / "bon.json", "http://127.0.0.1:9/v1", [(0, 2)] * 4)
    with pytest.raises(InputError, match=r"aggregates by 'bon': use moves='evidence' "
                                         r"\(--moves evidence\)"):
        build_app(ServeConfig(policy=str(bon), moves="pessimistic", refine_every=10,
                              log_store=str(tmp_path / "log.sqlite")))
    # the command line says it in one line, exit status 2, before it listens
    res = CliRunner().invoke(main, ["serve", str(policy), "--moves", "pessimistic"])
    assert res.exit_code == 2 and "add --refine-every N" in res.output


def serve_the_wrong_prompt(tmp_path: Path, run: Path, log: Path, up: ScriptedServer,
                           queries: list[str], asked: dict[str, str], requests: int) -> None:
    """The 'short' prompt at N = 4 in both contexts, served ``requests`` times through a
    gateway logging to ``log`` (the queries in turn, contexts alternating), and each
    request's gold attached: that of the question ``asked`` rewords."""
    serve_short(run, up)
    with Gateway(run / "policy.json", "--log-store", str(log)) as gw:
        served = [(gw.ask({"budget": "low" if i % 2 else "high"},
                          content=queries[i % 10]).id, queries[i % 10])
                  for i in range(requests)]
    attach_gold(tmp_path, log, [(rid, asked[q]) for rid, q in served])


def refine_command(run: Path, log: Path, up: ScriptedServer, *extra: str) -> tuple[Any, int]:
    """``iapo refine RUN --log LOG --refine-every 10 EXTRA``: its result, and the
    completions the upstream was asked for meanwhile."""
    before = len(up.requests)
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "10", *extra])
    return res, len(up.requests) - before


def test_refine_budget_draws_on_logged_queries_and_a_rerun_pays_nothing(
        tmp_path: Path) -> None:
    """The log holds only the served prompt, which answers wrong: refine alone has no
    evidence for another. ``--budget 300`` draws completions of the other prompts on the
    logged queries (counted by the upstream); a rerun replays them from the run's store and
    pays nothing; with the default min gain the policy moves to a prompt that answers
    right. Training's queries are not drawn on (the logged ones are new questions)."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    asked = ASKED
    queries = list(asked)

    def refine(*extra: str) -> tuple[Any, int]:
        res, paid = refine_command(run, log, up, *extra)
        assert res.exit_code == 0, res.output
        return res, paid

    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, queries, asked, 40)
        # without a budget: only N can change (the served prompt's groups hold every
        # smaller N); no other prompt has a sample
        res, paid = refine()
        report = json.loads((run / "refine.json").read_text())
        assert paid == 0 and report["spent"] is None
        assert all(c["chosen"]["prompt"] == "short" for c in report["contexts"])
        # a min gain no gain can clear: it spends, and changes nothing
        res, paid = refine("--budget", "300", "--min-gain", "10")
        spent = json.loads((run / "refine.json").read_text())["spent"]
        assert "policy unchanged" in res.output
        assert 0 < spent["drawn"] <= 300 and spent["paid"] == paid == spent["drawn"]
        drawn_on = {b["messages"][-1]["content"] for b in up.requests[-paid:]}
        assert all(any(q in text for q in queries) for text in drawn_on)
        assert any(not text.rstrip().endswith("Answer:") for text in drawn_on)  # other prompts
        # the same refine again: every completion is replayed from the store
        res, paid = refine("--budget", "300", "--min-gain", "10")
        again = json.loads((run / "refine.json").read_text())["spent"]
        assert paid == 0 and again["paid"] == 0 and again["replayed"] == spent["drawn"]
        # with the default min gain: the evidence moves both contexts off the wrong prompt
        res, paid = refine("--budget", "300")
        report = json.loads((run / "refine.json").read_text())
    assert "(replaced)" in res.output and report["spent"]["paid"] == paid
    assert report["spent"]["drawn"] <= 300
    assert all(c["chosen"]["prompt"] != "short" for c in report["contexts"])
    assert all(s["reason"] == "evidence" for c in report["contexts"] for s in c["switches"])


def test_refine_retrain_spends_the_budget_as_one_run_and_moves_to_its_choice(
        tmp_path: Path) -> None:
    """The log holds only the served prompt, which answers wrong. ``--budget 120 --retrain``
    spends the budget as one run of psst-auto on the logged queries (counted by the
    upstream), and both contexts move to its choice, a prompt that answers right (reason
    'retrain'); a rerun replays every completion and pays nothing; --retrain without
    --budget is refused, saying what to give."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    asked = ASKED
    queries = list(asked)

    def refine(*extra: str) -> tuple[Any, int]:
        return refine_command(run, log, up, *extra)

    with ScriptedServer(answer_of=by_prompt) as up:
        serve_the_wrong_prompt(tmp_path, run, log, up, queries, asked, 20)
        res, paid = refine("--retrain")
        assert res.exit_code == 2 and "give --budget" in res.output and paid == 0
        # a retraining needs one group of N_max = 4 of each of the 3 prompts
        res, paid = refine("--budget", "11", "--retrain")
        assert res.exit_code == 2 and "give --budget 12 or more" in res.output and paid == 0
        res, paid = refine("--budget", "120", "--retrain")
        assert res.exit_code == 0, res.output
        report = json.loads((run / "refine.json").read_text())
        assert "in one run of the learner" in res.output and "(replaced)" in res.output
        spent = report["spent"]
        assert spent["retrain"] and spent["drawn"] == 120  # psst-auto spends all of it
        assert spent["paid"] == paid == spent["drawn"]
        drawn_on = {b["messages"][-1]["content"] for b in up.requests[-paid:]}
        assert all(any(q in text for q in queries) for text in drawn_on)
        assert all(c["chosen"]["prompt"] != "short" for c in report["contexts"])
        assert all(s["reason"] == "retrain" for c in report["contexts"]
                   for s in c["switches"])
        # a gateway's retraining on this log is due K logged requests after this one, and
        # the 120 paid count against what it saved
        with CompletionStore(log, create=False) as opened:
            assert opened.get_meta(RETRAINED_AT) == 20
            assert opened.get_meta(LEARNING_DRAWN) == 120
        # the same retraining again, from the refined policy: everything replayed, no change,
        # and the ledger gives back all it held for it
        res, paid = refine("--budget", "120", "--retrain")
        again = json.loads((run / "refine.json").read_text())["spent"]
        assert res.exit_code == 0 and paid == 0 and again["replayed"] == spent["drawn"]
        with CompletionStore(log, create=False) as opened:
            assert opened.get_meta(LEARNING_DRAWN) == 120


def test_refine_keeps_apart_a_context_whose_traffic_differs(tmp_path: Path) -> None:
    """'budget=low' asks the first five questions, which the served prompt answers right;
    'budget=high' the last five, which it answers wrong. Pooled, the prompt is right half
    the time in both; refine finds that the two contexts' requests differ (the log names
    each request's context) and estimates each from its own: right always in 'low' (Q 1,
    no cost there), never in 'high' (Q 0 - 4 completions x 1)."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    same = {q: q for q in GOLD}
    with ScriptedServer(answer_of=two_traffics(same)) as up:
        serve_two_traffics(tmp_path, run, log, up, same)
    res = CliRunner().invoke(main, ["monitor", str(run), "--log", str(log),
                                    "--refine-every", "40"])
    assert res.exit_code == 0, res.output
    assert res.output.count("TRAFFIC at request 80: contexts budget=low and budget=high") == 1
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "40"])
    report = json.loads((run / "refine.json").read_text())
    assert [c["traffic"] for c in report["contexts"]] == [["budget=low"], ["budget=high"]]
    assert [(t["context"], t["other"], t["own_groups"], t["other_groups"])
            for t in report["splits"]] == [(0, 1, 40, 40)]
    low, high = (c["served"] for c in report["contexts"])
    assert low["q"] == 1.0 and high["q"] == -4.0 and low["groups"] == high["groups"] == 40


def test_refine_reads_each_logged_request_by_the_arm_that_served_it(tmp_path: Path) -> None:
    """A gateway serves 'short' (index 2, wrong every time) at N = 4 in both contexts for 40
    requests, then another serves 'direct' (index 0) for 10, into the same log. A run whose
    task lists the same prompts in another order ('short' first) reads the log as the run
    that served it: 'short' served, right never (Q 0 at no cost, 0 - 4 x 1 at a cost weight
    of 1), on its 40 groups (the contexts' traffics alike, each counts for both). A run whose
    task lacks 'direct' leaves its 10 requests out and says so; one that has neither is
    refused, with nothing written."""
    from test_serve import write_policy

    run, log = tmp_path / "run", tmp_path / "log.sqlite"
    run.mkdir()
    queries = list(GOLD)
    served = []
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        direct = tmp_path / "direct"
        direct.mkdir()
        for policy, count in ((run / "policy.json", 40),
                              (mcq_policy(direct, up.base_url, [(0, 4), (0, 4)]), 10)):
            with Gateway(policy, "--log-store", str(log)) as gw:
                served += [(gw.ask({"budget": "low" if i % 2 else "high"},
                                   content=queries[i % 10]).id, queries[i % 10])
                           for i in range(count)]
    attach_gold(tmp_path, log, served)
    head, *prompts = (run / "task.toml").read_text().split("[[prompts]]")
    rest = prompts[-1][prompts[-1].index("[data]"):]
    prompts[-1] = prompts[-1][:prompts[-1].index("[data]")]
    by_name = {p.split('"')[1]: p for p in prompts}  # name = "..." opens each block
    reports = {}
    for name, order in (("run", None), ("reordered", ["short", "direct", "reason"]),
                        ("without_direct", ["short", "reason"]), ("neither", ["reason"])):
        other = run if order is None else tmp_path / name
        if order is not None:
            other.mkdir()
            (other / "mcq.jsonl").write_text((run / "mcq.jsonl").read_text())
            (other / "task.toml").write_text(head + "".join(
                "[[prompts]]" + by_name[p] for p in order) + rest)
            short = order.index("short") if "short" in order else 0
            write_policy(other / "policy.json", other / "task.toml", "mcq-smollm2",
                         ["budget=low", "budget=high"], [(short, 4), (short, 4)])
            CompletionStore(other / "store.sqlite").close()
        res = CliRunner().invoke(main, ["refine", str(other), "--log", str(log),
                                        "--refine-every", "10"])
        if name == "neither":
            assert res.exit_code == 2 and "all 50 requests" in res.output
            assert "by prompt 'short'" in res.output and "give the run whose task" in res.output
            assert not (other / "refine.json").exists()
            continue
        assert res.exit_code == 0, res.output
        reports[name] = json.loads((other / "refine.json").read_text())
        left = 10 if name == "without_direct" else 0
        assert reports[name]["log"]["other_arms"] == left
        assert (f"{left} logged requests left out: served by arms" in res.output) == bool(left)
    for report in reports.values():
        assert [(c["served"]["prompt"], c["served"]["q"], c["served"]["groups"])
                for c in report["contexts"]] == [("short", 0.0, 40), ("short", -4.0, 40)]


def serve_short_and_label(tmp_path: Path) -> tuple[Path, Path]:
    """RUN and its LOG: 'short' served 80 times and wrong every time, with learning pulls
    of the other prompts and every request's gold attached, so that refine would replace
    the policy."""
    run, log = tmp_path / "run", tmp_path / "log.sqlite"
    run.mkdir()
    queries = list(GOLD)
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget",
                     "1.0") as gw:
            served = [(gw.ask({"budget": "low" if i % 2 else "high"},
                              content=queries[i % 10]).id, queries[i % 10]) for i in range(80)]
            wait_for(lambda: httpx.get(f"{gw.url}/health").json()["learning"][
                "learning_completions"] > 0)
    attach_gold(tmp_path, log, served)
    return run, log


def test_a_refine_that_cannot_write_its_report_leaves_the_policy_as_it_was(
        tmp_path: Path) -> None:
    """With RUN/refine.json a folder, the report cannot be written: an error that names it,
    and policy.json is the one served."""
    run, log = serve_short_and_label(tmp_path)
    before = (run / "policy.json").read_text()
    (run / "refine.json").mkdir()
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "10"])
    assert res.exit_code != 0 and "the refine report" in res.output
    assert (run / "policy.json").read_text() == before
    assert not (run / "policy.previous.json").exists()
    (run / "refine.json").rmdir()
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "10"])
    assert res.exit_code == 0 and "(replaced)" in res.output, res.output


def test_a_refine_that_cannot_write_the_policy_reports_it_unchanged(tmp_path: Path) -> None:
    """With RUN/policy.previous.json a folder, the old policy cannot be kept, so the new one
    is not written: exit status 1 with an error that says policy.json was not replaced, and
    refine.json says "changed": false and why, while its contexts keep the arms chosen.
    Once the folder is gone, a rerun replaces the policy."""
    run, log = serve_short_and_label(tmp_path)
    before = (run / "policy.json").read_text()
    (run / "policy.previous.json").mkdir()
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "10"])
    assert res.exit_code == 1, res.output
    assert "the previous policy" in res.output and "was not replaced" in res.output
    assert (run / "policy.json").read_text() == before
    report = json.loads((run / "refine.json").read_text())
    assert report["changed"] is False
    assert report["why_not"].startswith("the refined policy could not be written")
    assert any((c["chosen"]["prompt"], c["chosen"]["n"]) != ("short", 4)
               for c in report["contexts"])
    (run / "policy.previous.json").rmdir()
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "10"])
    assert res.exit_code == 0 and "(replaced)" in res.output, res.output
    assert json.loads((run / "refine.json").read_text())["changed"] is True
    assert (run / "policy.previous.json").read_text() == before


def test_a_background_refine_that_cannot_write_the_policy_reports_it_unchanged(
        tmp_path: Path) -> None:
    """``iapo serve --refine-every 40`` with RUN/policy.previous.json a folder: the refine
    that would replace the policy cannot, and /health's last refine says "changed": false
    with the error, as refine.json does; the gateway keeps serving the old policy."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    with ScriptedServer(answer_of=by_prompt) as up:
        serve_short(run, up)
        before = (run / "policy.json").read_text()
        (run / "policy.previous.json").mkdir()
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget", "1.0",
                     "--refine-every", "40") as gw:
            def refine_state() -> dict[str, Any]:
                return httpx.get(f"{gw.url}/health").json()["refine"]

            for i in range(200):
                assert ask_and_label(gw, i).model_extra["iapo"]["prompt"] == "short"
                if refine_state()["error"] is not None:
                    break
                time.sleep(0.01)  # let the background learning and refine run
            wait_for(lambda: not refine_state()["running"])
            state = refine_state()
    assert "was not replaced" in state["error"]
    assert state["last"] is not None and state["last"]["changed"] is False
    assert (run / "policy.json").read_text() == before
    report = json.loads((run / "refine.json").read_text())
    assert report["changed"] is False and "could not be written" in report["why_not"]
    assert any((c["chosen"]["prompt"], c["chosen"]["n"]) != ("short", 4)
               for c in report["contexts"])


def test_refine_and_monitor_refuse_a_log_that_served_nothing(tmp_path: Path) -> None:
    """A log with no served request (a fresh one, or the run's own training store given by
    mistake) decides nothing: refine and monitor say so, exit status 2, nothing written."""
    run = tmp_path / "run"
    run.mkdir()
    mcq_policy(run, "http://127.0.0.1:9/v1", [(2, 4), (2, 4)]).rename(run / "policy.json")
    CompletionStore(run / "store.sqlite").close()
    CompletionStore(tmp_path / "log.sqlite").close()
    for log in (tmp_path / "log.sqlite", run / "store.sqlite"):
        for command in ("refine", "monitor"):
            res = CliRunner().invoke(main, [command, str(run), "--log", str(log)])
            assert res.exit_code == 2 and "holds no served request" in res.output, res.output
    assert not (run / "refine.json").exists()


def test_monitor_of_a_log_alone_says_what_is_missing(tmp_path: Path) -> None:
    """A log no gateway wrote to (so it names no run), and a log that does not exist: each a
    clear error, exit status 2, nothing written."""
    log = tmp_path / "log.sqlite"
    CompletionStore(log).close()
    res = CliRunner().invoke(main, ["monitor", str(log)])
    assert res.exit_code == 2 and "does not name the run it was served from" in res.output
    assert "iapo monitor RUN --log LOG" in res.output
    res = CliRunner().invoke(main, ["monitor", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "none.sqlite").exists()
    with CompletionStore(log) as store:  # it names a run that has moved since
        store.set_meta(SERVED_RUN, str(tmp_path / "moved"))
    res = CliRunner().invoke(main, ["monitor", str(log)])
    assert res.exit_code == 2 and "which is not there now" in res.output
    assert "iapo monitor RUN --log LOG" in res.output


def test_refine_values_a_shown_completion_at_the_score_a_person_gave_it(
        tmp_path: Path) -> None:
    """Best-of-N, two python scorers (brevity, letters). Every served request gets feedback:
    'letters' 0 for the completion it showed. Refine values a block that chooses it (by the
    scorers, the first of the best, in each context's weights) at the person's score, and a
    block that chooses the other completion at its scorers' values: checked against a direct
    loop over the logged texts, in all four contexts (a cost of 1 per completion where the
    budget is high). Before the feedback, monitor reports the scorers' values."""
    from test_serve import bon_task, write_policy

    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    weights = [(0.2, 0.8), (0.2, 0.8), (0.8, 0.2), (0.8, 0.2)]
    contexts = [f"brevity={w[0]},letters={w[1]},budget={b}"
                for w, b in zip(weights, ["low", "high"] * 2, strict=True)]
    with ScriptedServer(answer_of=lambda body: "Mars" if body["seed"] % 2 else "It is Mars."
                        ) as up:
        task = bon_task(run, up.base_url)
        write_policy(run / "policy.json", task, "bon-gw", contexts, [(0, 2)] * 4)
        CompletionStore(run / "store.sqlite").close()
        with Gateway(run / "policy.json", "--log-store", str(log)) as gw:
            ids = [gw.ask({"brevity": 0.2, "letters": 0.8, "budget": "low"},
                          content=f"question {i}").id for i in range(12)]
            before = CliRunner().invoke(main, ["monitor", str(log), "--refine-every", "6"])
            for score in (1.0, 0.0):  # the latest counts
                for rid in ids:
                    got = httpx.post(f"{gw.url}/v1/feedback", timeout=10,
                                     json={"id": rid, "objective": "letters", "score": score})
                    assert got.status_code == 200, got.text
    assert before.exit_code == 0, before.output
    res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                    "--refine-every", "6"])
    assert res.exit_code == 0, res.output
    assert "12 feedback scores of shown completions" in res.output
    report = json.loads((run / "refine.json").read_text())
    assert report["log"]["rated"] == 12 and report["log"]["rated_unused"] == 0

    def values(text: str) -> np.ndarray:  # the two python scorers, written out
        return np.array([1 / (1 + len(text)), sum(c.isalpha() for c in text) / (1 + len(text))])

    rated, scored = np.zeros(4), np.zeros(4)
    with CompletionStore(log, create=False) as store:
        for r in store.served():
            texts = [c.text for _, c in sorted(store.get(r.id, [0, 1]).items())]
            v = np.array([values(t) for t in texts])
            assert r.chosen == int(np.argmax(v @ weights[0]))  # the gateway's choice
            for ci, w in enumerate(weights):
                pick = int(np.argmax(v @ w))
                scored[ci] += v[pick] @ w / 12
                rated[ci] += (v[pick] * ([1, 0] if pick == r.chosen else [1, 1])) @ w / 12
    cost = np.array([0, 2, 0, 2])
    assert [c["served"]["q"] for c in report["contexts"]] == pytest.approx(rated - cost)
    for ci, key in enumerate(contexts):
        assert f"{key}: served plain N=2 (Q {scored[ci] - cost[ci]:.4f}" in before.output
    assert not np.allclose(rated, scored)
    # whether some context's weights choose the completion not shown depends on the texts'
    # seeds: tests/test_estimators.py pins that case by hand


def test_the_drift_models_query_ids_follow_the_text(tmp_path: Path) -> None:
    """A logged query that is a training query (its text and gold) keeps its index in the
    task's data; other (text, gold) pairs get one id each after the data's, in order of
    first appearance, repeats alike."""
    from iapo.live.refine import query_ids
    from iapo.live.task import Record, load_records, load_task
    from test_serve import mv_task

    task = load_task(mv_task(tmp_path, "http://127.0.0.1:9/v1"))
    data = list(GOLD)  # the task's ten queries, in file order
    asked = [(data[3], GOLD[data[3]]), ("new one", "A"), ("new one", "A"), ("another", "B"),
             (data[0], GOLD[data[0]]), ("another", "B"), (data[0], "D"), ("new one", None)]
    ids = query_ids(load_records(task.data_path),
                    [Record(f"r{i}", t, g) for i, (t, g) in enumerate(asked)])
    # a training query with another gold is another query, as is a text with no gold yet
    assert ids.tolist() == [3, 10, 10, 11, 0, 11, 12, 13]


def test_refine_numbers_a_querys_answers_alike_in_every_group(tmp_path: Path) -> None:
    """Two questions asked again and again, answered (A), (C) or (D) by the seed: in the
    log's groups (served and learning pulls), every answer of one query has one number
    (the gold 0), and a served group and the learning pulls on its query share one query id,
    as the drift move's per-query model counts them."""
    from iapo.live.refine import log_observations
    from iapo.live.task import load_records, load_task

    log = tmp_path / "log.sqlite"
    queries = list(GOLD)[:2]
    with ScriptedServer(answer_of=lambda body: f"The answer is ({'ACD'[body['seed'] % 3]}).",
                        ) as up:
        policy = mcq_policy(tmp_path, up.base_url, [(2, 4), (2, 4)])
        with Gateway(policy, "--log-store", str(log), "--learn-budget", "1.0") as gw:
            served = [(gw.ask({"budget": "low"}, content=queries[i % 2]).id, queries[i % 2])
                      for i in range(30)]
            learned = httpx.get(f"{gw.url}/health").json()["learning"]["learning_completions"]
            wait_for(lambda: len(up.requests) == 30 * 4 + learned)
    attach_gold(tmp_path, log, served)
    task = load_task(tmp_path / "task.toml")
    categories: dict[int, dict[str, int]] = {}
    with CompletionStore(log, create=False) as store:
        data = load_records(task.data_path)
        logged, counts, records, ids = log_observations(task, data, store, np.ones(3),
                                                        categories)
        rows = store.served()
        answers = [[c.answer for _, c in sorted(store.get(r.id, list(range(r.n))).items())]
                   for r in rows]
    assert counts["learn"] > 0 and len(logged) == len(rows) == len(records)
    assert sorted(set(ids.tolist())) == [0, 1]  # both are the task's own queries
    numbers: dict[tuple[int, str], set[int]] = defaultdict(set)
    for (_, _, obs), qid, said in zip(logged, ids, answers, strict=True):
        assert obs.labels is not None
        for a, label in zip(said, obs.labels[0].tolist(), strict=True):
            numbers[(int(qid), a)].add(label)
    assert all(len(v) == 1 for v in numbers.values())  # one number per answer and query
    for (qid, a), (label,) in numbers.items():
        assert (label == 0) == (a == GOLD[queries[qid]])
    assert set(categories) == {0, 1}


def test_refine_refuses_a_policy_that_draws_n_at_random(tmp_path: Path) -> None:
    """The continual core needs one fixed N per context: refine says so, naming the
    policy's learner, before it reads anything else (and writes nothing)."""
    from iapo.live.refine import RefineError, refine
    from iapo.settings import ContinualSettings

    run = tmp_path / "run"
    run.mkdir()
    mcq_policy(run, "http://127.0.0.1:9/v1", [(0, None), (1, 2)]).rename(  # type: ignore[list-item]
        run / "policy.json")
    with pytest.raises(RefineError, match="policy learner 'hand' draws N at random; refine "
                                          "needs a fixed N per context"):
        refine(run, tmp_path / "no-log.sqlite", ContinualSettings())
    assert not (run / "refine.json").exists()


def test_refine_moves_pessimistic_on_the_models_estimate_where_evidence_cannot(
        tmp_path: Path) -> None:
    """20 requests, the served 'short' prompt wrong on 3 questions of 10, the others always
    right. Too few for the evidence rule (no arm is seen on the 10 groups a challenger
    needs): the policy stays. With --moves pessimistic each context moves to a prompt that
    answers right, on the per-query model's estimate less one standard error (reason
    'model'); monitor replays with the same rule, and a task that does not vote is
    refused, saying which rule to use."""
    run = tmp_path / "run"
    run.mkdir()
    log = tmp_path / "log.sqlite"
    queries = list(GOLD)
    hard = set(queries[7:])

    def answer(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        query = next(q for q in GOLD if q in text)
        wrong = text.rstrip().endswith("Answer:") and query in hard
        return f"The answer is ({WRONG[GOLD[query]] if wrong else GOLD[query]})."

    with ScriptedServer(answer_of=answer) as up:
        serve_short(run, up)
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget",
                     "1.0") as gw:
            served = [(gw.ask({"budget": "low" if i % 2 else "high"},
                              content=queries[i % 10]).id, queries[i % 10])
                      for i in range(20)]
            learned = httpx.get(f"{gw.url}/health").json()["learning"]["learning_completions"]
            wait_for(lambda: len(up.requests) == 20 * 4 + learned)
    attach_gold(tmp_path, log, served)

    def refine(*more: str) -> tuple[Any, dict[str, Any]]:
        res = CliRunner().invoke(main, ["refine", str(run), "--log", str(log),
                                        "--refine-every", "10", *more])
        assert res.exit_code == 0, res.output
        return res, json.loads((run / "refine.json").read_text())

    # monitor replays by the rule asked (and writes nothing): each context stays, or moves
    for moves, to in (("evidence", ("short",)), ("pessimistic", ("direct", "reason"))):
        mon = CliRunner().invoke(main, ["monitor", str(log), "--refine-every", "10",
                                        "--moves", moves])
        assert mon.exit_code == 0 and "DRIFT" not in mon.output
        lines = [x for x in mon.output.splitlines() if x.startswith("budget=")]
        assert len(lines) == 2 and all(" served short N=4 " in x for x in lines)
        assert all(x.split(" -> ")[1].split()[0] in to for x in lines), mon.output
    res, report = refine()
    assert "policy unchanged" in res.output and not report["changed"]
    assert report["settings"]["moves"] == "evidence"
    res, report = refine("--moves", "pessimistic")
    assert "(replaced)" in res.output and report["settings"]["moves"] == "pessimistic"
    assert report["flags"] == [] and learned > 0
    for c in report["contexts"]:
        assert c["chosen"]["prompt"] in ("direct", "reason")
        assert c["switches"] and all(s["reason"] == "model" for s in c["switches"])
    new = json.loads((run / "policy.json").read_text())
    assert all(c["prompt"] in (0, 1) for c in new["policy"])
    # Best-of-N has no per-query model to follow: refused before anything is read
    bon_run = tmp_path / "bon"
    bon_run.mkdir()
    bon_policy(bon_run / "policy.json", "http://127.0.0.1:9/v1", [(0, 2)] * 4)
    CompletionStore(bon_run / "store.sqlite").close()
    res = CliRunner().invoke(main, ["refine", str(bon_run), "--log", str(log),
                                    "--moves", "pessimistic"])
    assert res.exit_code == 2 and "use moves='evidence'" in res.output
    assert not (bon_run / "refine.json").exists()
