"""`iapo learners`, `iapo train` and `iapo evaluate` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from iapo.cli import main
from iapo.envs import get_environment
from iapo.learners import LEARNERS
from iapo.split import train_test_split


def test_learners_lists_every_name() -> None:
    out = CliRunner().invoke(main, ["learners"])
    assert out.exit_code == 0
    names = [line.split()[0] for line in out.output.strip().splitlines()]
    assert names == ["psst", "psst-k1", "psst-k4", "psst-k8", "uniform", "egreedy", "softmax",
                     "ucb", "triple-n1", "triple-nrand", "psst-model", "psst-model4",
                     "psst-auto"]
    assert set(names) == set(LEARNERS)


def test_the_default_learner_is_psst_auto_everywhere() -> None:
    # the CLI spells the default out (it must not import the learners to print --help)
    from iapo.learners import DEFAULT_LEARNER

    assert DEFAULT_LEARNER == "psst-auto"
    train = next(p for p in main.commands["train"].params if p.name == "learner")
    assert train.default == DEFAULT_LEARNER


def test_train_then_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    pol = tmp_path / "policy.json"
    out = runner.invoke(main, ["train", "math", "--learner", "psst", "--budget", "3000",
                               "--seed", "4", "--out", str(pol)])
    assert out.exit_code == 0, out.output
    data = json.loads(pol.read_text())
    assert data["env"] == "math" and data["learner"] == "psst" and data["budget"] == 3000
    assert data["seed"] == 4 and data["completions_used"] <= 3000
    assert [r["context"] for r in data["policy"]] == ["budget=low", "budget=mid", "budget=high"]
    for row in data["policy"]:
        assert set(row) == {"context", "prompt", "n", "q_hat", "samples"}
        assert 0 <= row["prompt"] < 25 and 1 <= row["n"] <= 32 and row["samples"] > 0
    # the stored test split is the 20% that seed 4 draws
    _, test = train_test_split(316, np.random.SeedSequence(4).spawn(3)[0])
    assert data["split"]["test"] == test.tolist()

    ev = runner.invoke(main, ["evaluate", "math", str(pol), "--json"])
    assert ev.exit_code == 0, ev.output
    res = json.loads(ev.output)
    assert set(res) == {"env", "acr", "oracle_acr", "regret", "completions_used", "budget"}
    assert res["env"] == "math"
    # recompute from the exact Q on the test split, independently of evaluate_policy
    q = get_environment("math").q(test)
    chosen = [q[i, r["prompt"], r["n"] - 1] for i, r in enumerate(data["policy"])]
    assert abs(res["acr"] - np.mean(chosen)) < 1e-12
    assert abs(res["oracle_acr"] - q.reshape(3, -1).max(axis=1).mean()) < 1e-12
    assert res["regret"] >= 0 and abs(res["regret"] - (res["oracle_acr"] - res["acr"])) < 1e-12


def test_evaluate_rejects_a_policy_of_another_environment(tmp_path: Path) -> None:
    runner = CliRunner()
    pol = tmp_path / "p.json"
    trained = runner.invoke(main, ["train", "math", "--budget", "900", "--out", str(pol)])
    assert trained.exit_code == 0
    out = runner.invoke(main, ["evaluate", "commonsenseqa", str(pol)])
    assert out.exit_code == 2 and "trained on 'math'" in out.output


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["train", "math", "--learner", "nope", "--budget", "10",
                               "--out", str(tmp_path / "x.json")])
    assert out.exit_code == 2 and "nope" in out.output
    out = runner.invoke(main, ["train", "math", "--budget", "-5",
                               "--out", str(tmp_path / "x.json")])
    assert out.exit_code == 2 and "budget" in out.output.lower()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = runner.invoke(main, ["evaluate", "math", str(bad)])
    assert out.exit_code == 2 and "not valid JSON" in out.output
    bad.write_text(json.dumps({"format": "iapo-policy/1", "env": "math"}))
    out = runner.invoke(main, ["evaluate", "math", str(bad)])
    assert out.exit_code == 2 and "malformed policy" in out.output
    out = runner.invoke(main, ["evaluate", "math", str(tmp_path / "missing.json")])
    assert out.exit_code == 2 and "does not exist" in out.output


def test_train_verbose_says_which_estimator_decided_and_why(tmp_path: Path) -> None:
    # synth-categorical (Best-of-N), T = 2,000: screening rounds, then PSST's; the trace the
    # policy stores is what --verbose prints, line for line
    pol = tmp_path / "policy.json"
    out = CliRunner().invoke(main, ["train", "synth-categorical", "--budget", "2000",
                                    "--out", str(pol), "--verbose"])
    assert out.exit_code == 0, out.output
    trace = json.loads(pol.read_text())["trace"]
    chosen = trace["estimator"]
    assert chosen["choice"] in ("model", "blocks") and chosen["folds"] == 5
    assert set(chosen["errors"]) == {"model", "blocks"}
    lines = out.output.splitlines()
    assert f"estimator: {chosen['reason']}" in lines
    assert ("screening ranked by (per round): " + "; ".join(trace["screening_ranked_by"])
            ) in lines
    rounds = [line for line in lines if line.startswith("  ") and line.split(":")[0].strip()
              .lstrip("-").isdigit()]
    assert [int(line.split(":")[0]) for line in rounds] == [r["round"] for r in trace["rounds"]]
    assert min(r["round"] for r in trace["rounds"]) < 0 < max(r["round"] for r in trace["rounds"])
    assert trace["paired"] is True and "queries: shared by the prompts of every round" in lines
    # the model decided here: the final choice was among every arm of the screened prompts,
    # the policy keeps Algorithm 1's beside it, and --verbose counts the contexts where the
    # two differ
    assert chosen["choice"] == "model" and any(trace["reopened"])
    choices = json.loads(pol.read_text())["policy"]
    assert [[c["prompt"], c["n"]] != was for c, was in zip(
        choices, trace["survivors_choice"], strict=True)] == trace["reopened"]
    assert ("final choice: the best by the last estimates among every arm of the screened "
            "prompts; other than Algorithm 1's, among the last round's survivors, in "
            f"{sum(trace['reopened'])} of {len(trace['reopened'])} contexts") in lines
    # summarization (Best-of-N), T = 1,000: blocks decide and contexts commit to one prompt
    # (the rest pays fewer than 30 blocks of 32 for each of their survivors), which --verbose
    # lists
    small = CliRunner().invoke(main, ["train", "summarization-smollm2", "--budget", "1000",
                                      "--out", str(pol), "--verbose", "--seed", "0"])
    assert small.exit_code == 0, small.output
    trace = json.loads(pol.read_text())["trace"]
    assert trace["estimator"]["choice"] == "blocks"
    assert "reopened" not in trace and not any(x.startswith("final choice")
                                               for x in small.output.splitlines())
    assert any(isinstance(p, int) for p in trace["committed"])
    assert ("committed to one prompt (per context; - where it kept its survivors): "
            + ", ".join("-" if p is None else str(p) for p in trace["committed"])
            ) in small.output.splitlines()
    # ... and the screening's rounds, one entry each, some with commas of their own (the union
    # where some contexts rank by one completion): the printed line splits back into them
    ranked = trace["screening_ranked_by"]
    assert len(ranked) == sum(r["round"] < 0 for r in trace["rounds"]) == 2
    assert any("contexts by Q(c, p, 1)" in entry for entry in ranked)
    line = next(x for x in small.output.splitlines() if x.startswith("screening ranked by"))
    assert line.split(": ", 1)[1].split("; ") == ranked
    # without --verbose: the choices only
    quiet = CliRunner().invoke(main, ["train", "synth-categorical", "--budget", "2000",
                                      "--out", str(pol)])
    assert quiet.exit_code == 0 and "estimator:" not in quiet.output
    # majority voting draws each group's query on its own, and says nothing of sharing
    mv = CliRunner().invoke(main, ["train", "math", "--budget", "1000", "--out", str(pol),
                                   "--verbose"])
    assert mv.exit_code == 0 and json.loads(pol.read_text())["trace"]["paired"] is False
    assert "queries: shared" not in mv.output
    # ... and says which prior its majority-voting model ranked by: on MATH, whose queries
    # get several wrong answers, the fixed one
    assert json.loads(pol.read_text())["trace"]["prior"] == "fixed"
    assert ("model prior: fixed Dirichlet on each query (some query was answered wrong in two "
            "ways)") in mv.output.splitlines()
    # where every answer is right or one wrong answer, the prior is fitted, and --verbose says
    binary = CliRunner().invoke(main, ["train", "synth-bernoulli", "--budget", "1000", "--out",
                                       str(pol), "--verbose"])
    assert binary.exit_code == 0, binary.output
    assert json.loads(pol.read_text())["trace"]["prior"] == "fitted"
    prior_lines = [line for line in binary.output.splitlines()
                   if line.startswith("model prior:")]
    shown = re.fullmatch(
        r"model prior: fitted to the prompts' answers \(every query's answers were its right "
        r"answer or one wrong answer, shown by (\d+) queries answered wrong twice or more\)",
        prior_lines[0]) if len(prior_lines) == 1 else None
    assert shown is not None and int(shown.group(1)) >= 30
    reason = json.loads(pol.read_text())["trace"]["prior_reason"]
    assert prior_lines[0] == f"model prior: fitted to the prompts' answers ({reason})"
