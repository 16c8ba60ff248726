"""The command line's fit and finish: quick start-up, policies of exported live environments,
benches of environments given as paths, and one clear line for every bad input.

Expected values are computed by hand from a tiny binary majority-voting environment: with
single-answer accuracy p and two answer categories, MV credit is p for N = 1 and 2 and
p^3 + 3 p^2 (1 - p) for N = 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from iapo.cli import main
from iapo.envs import DataError, get_environment
from iapo.policy import Policy, PolicyError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- the tiny environment, as `iapo export-env` writes it --------------------------------------

ACCURACY = np.array([[0.9, 0.6, 0.3, 0.5, 0.8, 0.2],   # prompt 0, per query
                     [0.7, 0.7, 0.7, 0.4, 0.6, 0.5]])  # prompt 1
COST = np.array([1.0, 0.5])
COST_WEIGHTS = {"low": 0.0, "high": 0.1}
IDS = ["q0", "q1", "q2", "q3", "q4", "q5"]


def tiny_arrays(name: str | None = "tiny-task", ids: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "aggregator": np.array("mv"),
        "answer_probs": np.stack([ACCURACY, 1 - ACCURACY], axis=-1),  # (P, X, L = 2)
        "gold": np.zeros(6, dtype=np.int16),
        "cost_per_completion": COST,
        "budget_levels": np.array(list(COST_WEIGHTS)),
        "cost_weights": np.array(list(COST_WEIGHTS.values())),
        "n_max": np.array(3),
        "prompt_names": np.array(["short", "long"]),
    }
    if ids:
        data["query_ids"] = np.array(IDS)
    if name is not None:
        data["name"] = np.array(name)
    return data


def write_tiny(path: Path, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **tiny_arrays(**kwargs))
    return path


def mv_credit(p: np.ndarray, n: int) -> np.ndarray:
    return p if n < 3 else p**3 + 3 * p**2 * (1 - p)


def q_by_hand(context: str, prompt: int, n: int, queries: list[int]) -> float:
    credit = mv_credit(ACCURACY[prompt, queries], n).mean()
    return float(credit - COST_WEIGHTS[context] * COST[prompt] * n)


def live_policy(**changes: Any) -> dict[str, Any]:
    """A policy as `iapo optimize` writes it: the task's name, record ids in the test split."""
    data: dict[str, Any] = {
        "format": "iapo-policy/1", "env": "tiny-task", "learner": "psst", "budget": 100,
        "completions_used": 96, "seed": 0,
        "split": {"seed": 0, "test_fraction": 0.2, "test": ["q4", "q1"]},
        "policy": [
            {"context": "budget=low", "prompt": 0, "n": 3, "q_hat": 0.8, "samples": 4},
            {"context": "budget=high", "prompt": 1, "n": 3, "q_hat": 0.5, "samples": 4},
        ],
        "trace": {},
    }
    data.update(changes)
    return data


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_clear_line(result: Result, *needles: str) -> None:
    """Exit status 2, each needle in the message, and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


# --- start-up -----------------------------------------------------------------------------------

_LOADED = """
import sys
from iapo.cli import main
try:
    main(sys.argv[1:], prog_name="iapo")
except SystemExit as e:
    assert not e.code, e.code
print(" ".join(sorted(sys.modules)), file=sys.stderr)
"""
# what no light command needs: plotting, statistics, the live client, the bench, the policy
NEVER = {"scipy", "matplotlib", "httpx", "tqdm", "joblib", "uvicorn", "iapo.bench",
         "iapo.policy", "iapo.live", "iapo.serve", "iapo.exact"}


def loaded_modules(*args: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", _LOADED, *args], capture_output=True,
                          text=True, check=True)
    return set(proc.stderr.split())


@pytest.mark.parametrize("args", [("--help",), ("learners", "--help"), ("train", "--help"),
                                  ("bench", "--help"), ("evaluate", "--help"), ("envs",)])
def test_help_and_light_commands_import_only_what_they_need(args: tuple[str, ...]) -> None:
    loaded = loaded_modules(*args)
    assert not loaded & NEVER
    assert "iapo.learners" not in loaded  # not even for the learner names in the help


def test_learners_lists_names_and_summaries_without_the_bench() -> None:
    result = invoke("learners")
    assert result.exit_code == 0
    assert result.output.splitlines()[0].split()[:2] == ["psst", "PSST:"]
    assert not loaded_modules("learners") & {"matplotlib", "httpx", "iapo.bench", "iapo.policy"}


# --- a live policy evaluated on its exported environment -----------------------------------------


def test_the_file_names_the_environment_and_keeps_the_query_ids(tmp_path: Path) -> None:
    env = get_environment(str(write_tiny(tmp_path / "export.npz")))
    assert env.name == "tiny-task"
    assert env.query_ids == tuple(IDS)  # type: ignore[attr-defined]
    plain = get_environment(str(write_tiny(tmp_path / "plain.npz", name=None, ids=False)))
    assert plain.name == "plain" and plain.query_ids is None  # type: ignore[attr-defined]


def test_evaluate_a_live_policy_on_its_exported_environment(tmp_path: Path) -> None:
    env = write_tiny(tmp_path / "my.npz")
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps(live_policy()))
    result = invoke("evaluate", str(env), str(pol), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # the exact table's progress bar goes to stderr
    test = [4, 1]  # q4, q1
    low = q_by_hand("low", 0, 3, test)  # (0.896 + 0.648) / 2
    high = q_by_hand("high", 1, 3, test)
    assert out["acr"] == pytest.approx((low + high) / 2, abs=1e-12)
    assert out["acr"] == pytest.approx(0.669, abs=1e-12)
    best = [max(q_by_hand(c, p, n, test) for p in (0, 1) for n in (1, 2, 3))
            for c in COST_WEIGHTS]
    assert out["oracle_acr"] == pytest.approx(float(np.mean(best)), abs=1e-12)
    assert out["oracle_acr"] == pytest.approx(0.686, abs=1e-12)


def test_evaluate_names_the_test_ids_the_environment_lacks(tmp_path: Path) -> None:
    env = write_tiny(tmp_path / "my.npz")
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps(live_policy(split={"test": ["q4", "sqa0", "sqa7"]})))
    one_clear_line(invoke("evaluate", str(env), str(pol)), "'sqa0'", "'sqa7'")
    no_ids = write_tiny(tmp_path / "no-ids.npz", ids=False)
    one_clear_line(invoke("evaluate", str(no_ids), str(pol)), "by id", "'q4'")


def test_a_policy_with_string_ids_gives_its_test_queries_only_through_ids() -> None:
    policy = Policy.from_dict(live_policy())
    assert policy.test_queries(IDS).tolist() == [4, 1]
    with pytest.raises(PolicyError, match="no query ids"):
        policy.test_queries()


def test_check_arms() -> None:
    policy = Policy.from_dict(live_policy())
    policy.check_arms(2, 3, ["budget=low", "budget=high"], "task 'tiny-task'")
    with pytest.raises(PolicyError, match="do not match task 't'"):
        policy.check_arms(2, 3, ["budget=high", "budget=low"], "task 't'")
    with pytest.raises(PolicyError, match=r"policy row 1 \(context 'budget=high'\): prompt 1"):
        policy.check_arms(1, 3, ["budget=low", "budget=high"], "task 't'")
    with pytest.raises(PolicyError, match="N 3 is not an arm of task 't', whose N_max is 2"):
        policy.check_arms(2, 2, ["budget=low", "budget=high"], "task 't'")


# --- bench on environment files --------------------------------------------------------------


def bench_small(out: str, envs: str) -> Result:
    return invoke("bench", "--envs", envs, "--runs", "2", "--budgets", "20,40",
                  "--learners", "psst,uniform", "--out", out)


@pytest.mark.parametrize("where", ["sub/dir/tiny.npz", "tiny.npz"])
def test_bench_of_an_environment_file_writes_both_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_tiny(Path(where))
    result = bench_small("OUT", where)
    assert result.exit_code == 0, result.output
    out = tmp_path / "OUT"
    # called by the name the file stores, the path shown beside it
    assert f"## tiny-task\n\nFrom `{where}`." in (out / "summary.md").read_text()
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["tiny-task-exploration.png", "tiny-task-inference.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert pngs[0].read_bytes() != pngs[1].read_bytes()
    assert sorted(p.name for p in out.glob("*.svg")) == ["tiny-task-exploration.svg",
                                                         "tiny-task-inference.svg"]


def test_bench_of_two_files_of_one_file_name_keeps_both_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_tiny(Path("a/env.npz"), name="task-a")
    write_tiny(Path("b/env.npz"), name="task-b")
    result = bench_small("OUT", "a/env.npz,b/env.npz")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "OUT").glob("*.png")) == [
        "task-a-exploration.png", "task-a-inference.png",
        "task-b-exploration.png", "task-b-inference.png"]


def test_bench_refuses_two_environments_of_one_name_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_tiny(Path("a/env.npz"))  # both exported from the task 'tiny-task'
    write_tiny(Path("b/env.npz"))
    one_clear_line(bench_small("OUT", "a/env.npz,b/env.npz"),
                   "'a/env.npz' and 'b/env.npz' are both named 'tiny-task'", "separate --out")
    write_tiny(Path("c/math.npz"), name=None)  # no stored name: its file name, a registered one
    one_clear_line(bench_small("OUT", "math,c/math.npz"), "both named 'math'")
    assert not (tmp_path / "OUT").exists()


def test_bench_train_and_evaluate_call_an_exported_environment_by_its_stored_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's case: a file `sqa_env.npz` exported from the task 'tiny-task' is
    'tiny-task' in bench's rows, tables and figures and in train's and evaluate's output."""
    monkeypatch.chdir(tmp_path)
    write_tiny(Path("exports/sqa_env.npz"))
    result = bench_small("OUT", "exports/sqa_env.npz")
    assert result.exit_code == 0, result.output
    out = tmp_path / "OUT"
    runs = (out / "runs.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in runs[1:]} == {"tiny-task"} and len(runs) == 1 + 8
    assert {line.split(",")[0] for line in (out / "summary.csv").read_text().splitlines()[1:]
            } == {"tiny-task"}
    assert json.loads((out / "bench.json").read_text())["names"] == {
        "exports/sqa_env.npz": "tiny-task"}  # the path stays on record

    result = invoke("train", "exports/sqa_env.npz", "--budget", "40", "--out", "policy.json")
    assert result.exit_code == 0, result.output
    assert "psst-auto on tiny-task:" in result.output
    assert Policy.load("policy.json").env == "tiny-task"
    result = invoke("evaluate", "exports/sqa_env.npz", "policy.json")
    assert result.exit_code == 0, result.output
    assert " on tiny-task (T=40" in result.output
    result = invoke("evaluate", "exports/sqa_env.npz", "policy.json", "--json")
    assert json.loads(result.stdout)["env"] == "tiny-task"


def test_a_bench_that_keyed_a_file_by_its_path_resumes_under_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_tiny(Path("sqa_env.npz"))
    assert bench_small("OUT", "sqa_env.npz").exit_code == 0
    runs = tmp_path / "OUT" / "runs.csv"
    # as an older version wrote it: the rows keyed by the path given
    old = runs.read_text().replace("\ntiny-task,", "\nsqa_env.npz,")
    runs.write_text(old)
    result = bench_small("OUT", "sqa_env.npz")
    assert result.exit_code == 0, result.output
    assert runs.read_text() == old  # every cell found done: nothing recomputed
    summary = (tmp_path / "OUT" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 4 and all(line.startswith("tiny-task,") for line in summary[1:])


# --- bad input: one line, exit status 2, nothing written ----------------------------------------


def test_train_checks_out_under_a_file_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("keep me")
    for out in (blocker / "policy.json", blocker / "deeper" / "policy.json"):
        # an unknown environment too: the output is checked first, before anything is loaded
        result = invoke("train", "no-such-env", "--budget", "50", "--out", str(out))
        one_clear_line(result, "--out", "somefile.txt", "is a file")
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile.txt"]


def test_train_checks_a_read_only_folder_before_any_work(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = write_tiny(tmp_path / "tiny.npz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    # root may write anywhere: the permission check is what is tested, so it reports the
    # folder as the permission bits say for everyone else
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **kw: (
        Path(path) != locked and real_access(path, mode, *a, **kw)))
    try:
        result = invoke("train", str(env), "--budget", "50", "--out",
                        str(locked / "new" / "policy.json"))
        one_clear_line(result, "--out", "not writable")
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_train_creates_missing_folders_of_out(tmp_path: Path) -> None:
    env = write_tiny(tmp_path / "tiny.npz")
    out = tmp_path / "new" / "deeper" / "policy.json"
    result = invoke("train", str(env), "--budget", "50", "--learner", "uniform", "--out",
                    str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["env"] == "tiny-task"


@pytest.mark.parametrize("content", [
    b"",
    b"\xff\xfe\x00garbage \x80\x81 not utf-8",
    b"env,learner\nmath,psst\n",
])
def test_a_file_that_is_not_an_npz_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"fake\.npz is not an \.npz archive \(numpy\.savez\)"):
        get_environment(str(path))
    one_clear_line(invoke("oracle", str(path)), "fake.npz", "is not an .npz archive")


def test_a_npy_file_renamed_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "array.npy", np.arange(6))
    path = tmp_path / "array.npz"
    (tmp_path / "array.npy").rename(path)
    one_clear_line(invoke("oracle", str(path)), "array.npz", "is not an .npz archive",
                   "single .npy array")
    pol = tmp_path / "p.json"
    one_clear_line(invoke("train", str(path), "--budget", "50", "--out", str(pol)),
                   "array.npz")
    assert not pol.exists()


def _with_row(i: int, **changes: Any) -> dict[str, Any]:
    data = live_policy()
    data["policy"][i].update(changes)
    return data


ROW1 = "policy row 1 (context 'budget=high'): "


@pytest.mark.parametrize(("policy", "needle"), [
    (_with_row(1, n=2.7), ROW1 + 'n must be a positive integer or "random", got 2.7'),
    (_with_row(1, n=0), ROW1 + "n must be a positive integer"),
    (_with_row(1, n="x"), ROW1 + 'n must be a positive integer or "random", got "x"'),
    (_with_row(1, n=True), ROW1 + "n must be a positive integer"),
    (_with_row(1, prompt=True), ROW1 + "prompt must be a non-negative integer, got true"),
    (_with_row(1, prompt=-1), ROW1 + "prompt must be a non-negative integer, got -1"),
    (_with_row(1, prompt=1.0), ROW1 + "prompt must be a non-negative integer, got 1.0"),
    (_with_row(0, q_hat="high"), "policy row 0 (context 'budget=low'): q_hat must be a number"),
    (_with_row(0, samples=-3), "samples must be a non-negative integer"),
    (_with_row(0, prompt=2), "policy row 0 (context 'budget=low'): prompt 2 is not a prompt"),
    (_with_row(1, n=4), ROW1 + "N 4 is not an arm of environment 'tiny-task'"),
    (live_policy(budget="100"), "budget must be a non-negative integer, got \"100\""),
    (live_policy(seed=1.5), "seed must be a non-negative integer"),
    (live_policy(env=7), "env must be a string"),
    (live_policy(policy={}), "policy must be a non-empty list"),
    (live_policy(split={"test": ["q4", 1]}), "mixes query indices and query ids"),
    (live_policy(split={"test": [-1]}), "test must list query indices"),
    ([live_policy()], "the top level must be a JSON object"),
    ("a string", "the top level must be a JSON object"),
])
def test_a_malformed_policy_is_one_line_naming_the_field(
    tmp_path: Path, policy: Any, needle: str
) -> None:
    env = write_tiny(tmp_path / "tiny.npz")
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps(policy))
    one_clear_line(invoke("evaluate", str(env), str(pol)), needle)


@pytest.mark.parametrize(("content", "needle"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"format": "iapo-policy/1", "env": "caf\xe9"}', "not UTF-8"),
    (b"\x00\xff\xfe binary", "not UTF-8"),
])
def test_a_policy_file_that_is_not_json_text(tmp_path: Path, content: bytes,
                                             needle: str) -> None:
    env = write_tiny(tmp_path / "tiny.npz")
    pol = tmp_path / "policy.json"
    pol.write_bytes(content)
    one_clear_line(invoke("evaluate", str(env), str(pol)), "policy.json", needle)
