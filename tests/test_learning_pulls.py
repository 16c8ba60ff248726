"""The gateway's learning pulls (``iapo serve --learn-budget``): drawn after the response,
on its query, logged with reason "learn", never returned, within budget, outside the keys'
limits; against a real HTTP upstream that counts every completion it is asked for."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from iapo.errors import InputError
from iapo.live.store import CompletionStore
from iapo.live.task import load_task
from iapo.policy import Policy
from iapo.problem import Choice
from iapo.pulls import Pull
from iapo.serve.learning import LearningPulls
from live_helpers import ScriptedServer
from test_serve import Gateway, mcq_policy

N_MAX = 4  # the mcq task's


def wait_for(predicate, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_learning_pulls_are_logged_never_returned_and_within_budget(tmp_path: Path) -> None:
    """F = 0.5 with arms of N = 3 and 1: the learning completions stay within F x served,
    every one is a logged "learn" group of N_max on the query of a request answered before
    it, the responses carry only the policy's completions, and the upstream was asked for
    exactly the served plus the learning completions."""
    key = "sk-learn-test-0123456789abcdef"
    log = tmp_path / "served.sqlite"
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(1, 3), (0, 1)]), "--log-store", str(log),
            "--learn-budget", "0.5", env={"IAPO_API_KEYS": key}, api_key=key) as gw:
        answers = [gw.ask({"budget": "low" if i % 2 else "high"}, content=f"q{i}")
                   for i in range(12)]
        served = sum(len(a.model_extra["iapo"]["samples"]) for a in answers)
        health = httpx.get(f"{gw.url}/health", headers={"Authorization": f"Bearer {key}"})
        learning = health.json()["learning"]
        wait_for(lambda: len(up.requests) == served + learning["learning_completions"])
        anonymous = httpx.get(f"{gw.url}/health").json()
    assert served == 6 * 3 + 6 * 1
    assert learning["budget"] == 0.5 and learning["served_completions"] == served
    drawn = learning["learning_completions"]
    assert 0 < drawn <= 0.5 * served and drawn % N_MAX == 0
    assert 0.5 * served - drawn < N_MAX  # all of the budget a whole group can use
    assert "learning" not in anonymous
    with CompletionStore(log, create=False) as store:
        rows = store.served()
        queries = {i: q for i, q, _ in store.queries()}
    policy_rows = [r for r in rows if r.reason == "policy"]
    learn_rows = [r for r in rows if r.reason == "learn"]
    assert [r.id for r in policy_rows] == [a.id for a in answers]
    assert sum(r.n for r in learn_rows) == drawn == sum(r.paid for r in learn_rows)
    assert all(r.n == N_MAX and r.caller is None for r in learn_rows)
    asked = [queries[r.id] for r in policy_rows]
    for r in learn_rows:  # on a query already answered, in that request's context
        assert queries[r.id] in asked
        first = next(p for p in policy_rows if queries[p.id] == queries[r.id])
        assert r.context == first.context and r.created >= first.created
    # the prompts are pulled in turn: every prompt once before any twice
    prompts = [r.prompt for r in sorted(learn_rows, key=lambda r: r.created)]
    assert sorted(prompts[:3]) == [0, 1, 2] or len(prompts) < 3


def test_learning_is_charged_to_no_key(tmp_path: Path) -> None:
    """A key allowed 6 completions a day makes 6 requests of N = 1 while the gateway learns
    at F = 1: all 6 are admitted; the 7th is refused (429)."""
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "small"\nkey = "sk-small-0123456789abcdef"\n'
                    'completions_per_day = 6\n')
    log = tmp_path / "served.sqlite"
    with ScriptedServer(answer="The answer is (B).") as up, Gateway(
            mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)]), "--log-store", str(log),
            "--learn-budget", "1.0", "--keys", str(keys),
            api_key="sk-small-0123456789abcdef") as gw:
        for i in range(6):
            gw.ask({"budget": "low"}, content=f"q{i}")
        r = httpx.post(f"{gw.url}/v1/chat/completions",
                       headers={"Authorization": "Bearer sk-small-0123456789abcdef"},
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}],
                             "iapo_context": {"budget": "low"}})
        wait_for(lambda: len(up.requests) >= 6 + N_MAX)
    assert r.status_code == 429


def test_learning_needs_a_log(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from iapo.cli import main

    with ScriptedServer() as up:
        policy = mcq_policy(tmp_path, up.base_url, [(0, 1), (0, 1)])
        res = CliRunner().invoke(main, ["serve", str(policy), "--learn-budget", "0.1",
                                        "--port", "0"])
    assert res.exit_code != 0 and "--log-store" in res.output


def test_a_daily_cap_needs_a_budget_and_a_share_for_every_worker(tmp_path: Path) -> None:
    """--learn-per-day K caps what --learn-budget F allows: alone it would learn nothing,
    and K below the number of workers leaves each worker a share of 0 (K // workers). Both
    are refused when the app is built, saying what to give."""
    from iapo.serve.run import build_app
    from iapo.settings import ServeConfig

    policy = str(mcq_policy(tmp_path, "http://127.0.0.1:9/v1", [(0, 1), (0, 1)]))
    log = str(tmp_path / "log.sqlite")
    with pytest.raises(InputError, match="none is allowed without it: give --learn-budget F"):
        build_app(ServeConfig(policy=policy, log_store=log, learn_per_day=100))
    with pytest.raises(InputError, match="among the 2 workers, which leaves each none"):
        build_app(ServeConfig(policy=policy, log_store=log, learn_budget=0.1, learn_per_day=1,
                              workers=2))
    build_app(ServeConfig(policy=policy, log_store=log, learn_budget=0.1, learn_per_day=2,
                          workers=2))  # one a day for each


def task_and_policy(tmp_path: Path, arms: list[tuple[int | None, int | None]]
                    ) -> tuple[object, Policy]:
    from test_serve import mv_task

    task = load_task(mv_task(tmp_path, "http://127.0.0.1:9/v1"))
    policy = Policy(env="mcq-smollm2", learner="hand", budget=0, completions_used=0, seed=0,
                    split={"test": []}, contexts=["budget=low", "budget=high"],
                    choices=[Choice(p, n, 0.0, 0) for p, n in arms])  # type: ignore[arg-type]
    return task, policy


def test_plan_by_hand(tmp_path: Path) -> None:
    """F = 0.25: 16 served completions allow 4, one group of N_max; the prompts in turn; a
    daily cap of 6 leaves room for one group of 4 only; a reloaded policy gets a new learner
    and keeps the counts."""
    task, policy = task_and_policy(tmp_path, [(1, 3), (0, 1)])
    plan = LearningPulls(task, 0.25)  # type: ignore[arg-type]
    assert plan.plan(policy, 15) == []  # 3.75 < 4
    got = plan.plan(policy, 1)
    assert [(p.prompt, p.n) for p in got] == [(0, 4)]
    got = plan.plan(policy, 16)
    assert [(p.prompt, p.n) for p in got] == [(1, 4)]
    assert (plan.served, plan.drawn) == (32, 8)
    capped = LearningPulls(task, 1.0, per_day=6)  # type: ignore[arg-type]
    assert [(p.prompt, p.n) for p in capped.plan(policy, 40)] == [(0, 4)]
    assert capped.plan(policy, 40) == []
    _, reloaded = task_and_policy(tmp_path, [(2, 2), (2, 2)])
    # its learner is built off the event loop: pulls wait for it, the budget is kept
    got = plan.plan(reloaded, 16) + ready(plan, reloaded, drawn=12)
    assert [(p.prompt, p.n) for p in got] == [(0, 4)]
    assert (plan.served, plan.drawn) == (48, 12)


def ready(plan: LearningPulls, policy: Policy, drawn: int) -> list[Pull]:
    """The learning pulls ``plan`` draws for ``policy``, serving nothing more, until it has
    drawn ``drawn`` completions in all, or says why it draws none."""
    end, got = time.monotonic() + 20, []
    while plan.drawn < drawn and plan.error is None:
        assert time.monotonic() < end, "the learner was never built"
        got += plan.plan(policy, 0)
        time.sleep(0.01)
    return got


def test_a_reloaded_policy_that_cannot_learn_stops_learning_not_serving(
        tmp_path: Path) -> None:
    """A reload to a policy that draws N at random: no learning pull, the reason in
    health() from its first request, and what it serves does not count (no backlog of
    pulls builds up); a reload to a fixed-N policy learns again, what is served while its
    learner is built counting."""
    task, policy = task_and_policy(tmp_path, [(1, 3), (0, 1)])
    plan = LearningPulls(task, 0.25)  # type: ignore[arg-type]
    assert [(p.prompt, p.n) for p in plan.plan(policy, 16)] == [(0, 4)]
    _, random_n = task_and_policy(tmp_path, [(1, None), (0, 1)])
    assert plan.plan(random_n, 16) == [] and "fixed N" in str(plan.health()["error"])
    assert plan.plan(random_n, 16) == [] and plan.served == 16
    _, fixed = task_and_policy(tmp_path, [(2, 2), (2, 2)])
    got = plan.plan(fixed, 16) + ready(plan, fixed, drawn=8)
    assert [(p.prompt, p.n) for p in got] == [(0, 4)]
    assert plan.health()["error"] is None and (plan.served, plan.drawn) == (32, 8)


def test_no_pull_is_drawn_while_a_reloaded_policys_learner_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build held until released: every response meanwhile gets no learning pull and
    counts towards the budget; once built, the learner draws what it accrued (F = 0.25 of
    48 served, less the 4 drawn: two groups of N_max, the prompts in turn)."""
    import threading

    task, policy = task_and_policy(tmp_path, [(1, 3), (0, 1)])
    plan = LearningPulls(task, 0.25)  # type: ignore[arg-type]
    assert [(p.prompt, p.n) for p in plan.plan(policy, 16)] == [(0, 4)]
    release, build = threading.Event(), LearningPulls._build

    def held(self: LearningPulls, policy: Policy):  # type: ignore[no-untyped-def]
        assert release.wait(20)
        return build(self, policy)

    monkeypatch.setattr(LearningPulls, "_build", held)
    _, reloaded = task_and_policy(tmp_path, [(2, 2), (2, 2)])
    assert plan.plan(reloaded, 16) == [] and plan.plan(reloaded, 16) == []
    assert (plan.served, plan.drawn, plan.health()["error"]) == (48, 4, None)
    release.set()
    got = ready(plan, reloaded, drawn=12)
    assert [(p.prompt, p.n) for p in got] == [(0, 4), (1, 4)]


def test_a_random_n_policy_cannot_learn(tmp_path: Path) -> None:
    task, policy = task_and_policy(tmp_path, [(1, None), (0, 1)])
    with pytest.raises(InputError, match="fixed N"):
        LearningPulls(task, 0.1).plan(policy, 1)  # type: ignore[arg-type]


def test_learning_continues_from_trainings_estimates(tmp_path: Path) -> None:
    """The run's store holds 4 completions of every prompt on each of the task's 10
    questions (``iapo collect``, a real HTTP upstream): 'direct' and 'reason' always right,
    'short' always wrong. Serving 'direct' at N = 1, the candidates are the prompts whose
    best upper bound reaches the served arm's lower bound: by hand, 'direct' and 'reason'
    (Q 1 with no cost, 1 - N at a cost of 1 a completion), never 'short' (0, or -N). With no
    store in the policy's folder every prompt is a candidate, 'short' among them."""
    from click.testing import CliRunner

    from iapo.cli import main
    from test_refine import by_prompt
    from test_serve import mv_task

    run = tmp_path / "run"
    with ScriptedServer(answer_of=by_prompt) as up:
        task_path = mv_task(tmp_path, up.base_url)
        res = CliRunner().invoke(main, ["collect", str(task_path), "--out", str(run),
                                        "--samples", "4"])
        assert res.exit_code == 0, res.output
    task = load_task(task_path)
    (tmp_path / "p").mkdir()
    _, policy = task_and_policy(tmp_path / "p", [(0, 1), (0, 1)])
    trained = LearningPulls(task, 1.0, run=run)  # type: ignore[arg-type]
    assert len(trained._training_groups(policy)) == 30  # 3 prompts x 10 questions
    drawn = [p for _ in range(8) for p in trained.plan(policy, 16)]
    assert drawn and {p.prompt for p in drawn} == {0, 1}
    bare = LearningPulls(task, 1.0, run=tmp_path / "nothing here")  # type: ignore[arg-type]
    assert {p.prompt for _ in range(8) for p in bare.plan(policy, 16)} == {0, 1, 2}
    # a gateway without the task's data serves, and learns from the policy alone
    task.data_path.unlink()
    no_data = LearningPulls(task, 1.0, run=run)  # type: ignore[arg-type]
    assert no_data._training_groups(policy) == []
    assert {p.prompt for _ in range(8) for p in no_data.plan(policy, 16)} == {0, 1, 2}


def test_the_gateway_learns_from_its_runs_training_read_once(tmp_path: Path) -> None:
    """``iapo serve --learn-budget 1.0`` of a policy in the folder where ``iapo collect``
    stored 4 completions of every prompt on the 10 questions ('short' always wrong): the
    learning pulls go to 'direct' and 'reason' only (without training's groups every prompt
    would be pulled in turn, 'short' among them). The run's store is then deleted and the
    policy file rewritten: the reloaded policy's learner still starts from training's groups,
    read once when the gateway started, so 'short' is still never pulled."""
    from click.testing import CliRunner

    from iapo.cli import main
    from test_refine import GOLD, by_prompt
    from test_serve import mv_task, write_policy

    run, log, queries = tmp_path / "run", tmp_path / "log.sqlite", list(GOLD)
    contexts = ["budget=low", "budget=high"]
    with ScriptedServer(answer_of=by_prompt) as up:
        task = mv_task(tmp_path, up.base_url)
        res = CliRunner().invoke(main, ["collect", str(task), "--out", str(run),
                                        "--samples", "4"])
        assert res.exit_code == 0, res.output
        write_policy(run / "policy.json", task, "mcq-smollm2", contexts, [(0, 1), (0, 1)])
        with Gateway(run / "policy.json", "--log-store", str(log), "--learn-budget",
                     "1.0") as gw:
            def health() -> dict:  # type: ignore[type-arg]
                return httpx.get(f"{gw.url}/health").json()  # type: ignore[no-any-return]

            for i in range(40):
                gw.ask({"budget": contexts[i % 2].split("=")[1]}, content=queries[i % 10])
            before = health()["learning"]["learning_completions"]
            for f in run.glob("store.sqlite*"):
                f.unlink()
            time.sleep(0.01)  # a new mtime
            write_policy(run / "policy.json", task, "mcq-smollm2", contexts, [(1, 1), (1, 1)])
            wait_for(lambda: all(c["prompt"] == "reason" for c in health()["contexts"].values()))
            for i in range(40):
                gw.ask({"budget": contexts[i % 2].split("=")[1]}, content=queries[i % 10])
            learning = health()["learning"]
            wait_for(lambda: len(up.requests) == 10 * 3 * 4 + 80
                     + learning["learning_completions"])
    with CompletionStore(log, create=False) as store:
        learned = [r.prompt for r in store.served() if r.reason == "learn"]
    assert before > 0 and learning["learning_completions"] > before + 4
    assert learning["error"] is None
    assert learned and set(learned) <= {0, 1}
