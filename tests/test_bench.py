"""The evaluation protocol (``iapo bench``, ``iapo plot``), checked through the command line.

Expected values come from outside the code under test: the documented CSV layout, scipy's
Wilcoxon test and SEM on the ACRs read back from runs.csv, the documented seed of a run's split,
and properties of the protocol (paired design, budgets never overspent, results independent of
workers, backends and of which other cells were asked for, resumable output).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from scipy.stats import sem as scipy_sem
from scipy.stats import wilcoxon

from iapo.cli import main
from iapo.envs import acr, best_arms, get_environment
from iapo.split import train_test_split

RUN_COLUMNS = ["env", "learner", "budget", "run", "acr", "oracle_acr", "regret",
               "completions_used", "seconds", "completions_per_query"]
SUMMARY_COLUMNS = ["env", "learner", "budget", "runs", "mean_acr", "sem_acr", "mean_regret",
                   "sem_regret", "mean_completions_used", "p_vs_reference", "significant"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The shared small bench: one real environment, three learners, two budgets, six runs.
ENV = "math"
LEARNERS = ("psst", "uniform", "triple-n1")
BUDGETS = (800, 2000)
RUNS = 6
SMALL = ("--envs", ENV, "--learners", ",".join(LEARNERS),
         "--budgets", ",".join(map(str, BUDGETS)), "--runs", str(RUNS))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def bench(out: Path, *args: str) -> Result:
    result = invoke("bench", "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return result


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def cell(row: dict[str, str]) -> tuple[str, str, int, int]:
    return row["env"], row["learner"], int(row["budget"]), int(row["run"])


def results(rows: list[dict[str, str]]) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples sorted by cell, every column but the wall time."""
    return sorted(
        (*cell(r), float(r["acr"]), float(r["oracle_acr"]), float(r["regret"]),
         int(r["completions_used"]))
        for r in rows
    )


def data_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)[1:]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared small bench, run once with one worker."""
    out = tmp_path_factory.mktemp("small")
    bench(out, *SMALL, "--workers", "1")
    return out


@pytest.fixture(scope="module")
def small_rows(small: Path) -> list[dict[str, str]]:
    return csv_rows(small / "runs.csv")


@pytest.fixture
def copy_of_small(small: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bench"
    shutil.copytree(small, out)
    return out


# --- outputs ------------------------------------------------------------------------------------


def test_runs_csv_has_the_documented_columns_and_one_row_per_cell(
    small: Path, small_rows: list[dict[str, str]]
) -> None:
    assert header(small / "runs.csv") == RUN_COLUMNS
    cells = [cell(r) for r in small_rows]
    expected = {(ENV, ln, b, r) for ln in LEARNERS for b in BUDGETS for r in range(RUNS)}
    assert len(cells) == len(expected) == 36
    assert set(cells) == expected


def test_budgets_are_never_overspent_and_regret_is_oracle_minus_acr(
    small_rows: list[dict[str, str]],
) -> None:
    for r in small_rows:
        assert 0 < int(r["completions_used"]) <= int(r["budget"])
        acr_, oracle_acr = float(r["acr"]), float(r["oracle_acr"])
        assert float(r["regret"]) == oracle_acr - acr_
        # the oracle picks the best arm per context on the test split: no policy beats it
        assert 0.0 <= acr_ <= oracle_acr + 1e-12 <= 1.0 + 1e-12
        assert float(r["seconds"]) >= 0.0
        # what the policy pays per query when deployed: its arms' N, weighted by the contexts
        # (math: budget levels low, mid, high, equally likely), N in 1..32
        per_query = float(r["completions_per_query"])
        assert 1.0 <= per_query <= 32.0
        if r["learner"] == "triple-n1":  # every context at N = 1
            assert per_query == 1.0


def test_paired_design_one_oracle_acr_per_env_and_run(small_rows: list[dict[str, str]]) -> None:
    by_run: dict[int, set[str]] = {}
    for r in small_rows:
        by_run.setdefault(int(r["run"]), set()).add(r["oracle_acr"])
    assert sorted(by_run) == list(range(RUNS))
    assert all(len(v) == 1 for v in by_run.values()), by_run
    # every run draws its own 80/20 split, so the test-split oracle differs between runs
    assert len({next(iter(v)) for v in by_run.values()}) == RUNS


def test_oracle_acr_is_the_best_arm_acr_on_the_documented_split(
    small_rows: list[dict[str, str]],
) -> None:
    """Run r's split comes from SeedSequence(seed).spawn(...)[r].spawn(1)[0] (spawn key (r, 0))."""
    env = get_environment(ENV)
    probs = env.problem.grid.probabilities
    oracle = {int(r["run"]): float(r["oracle_acr"]) for r in small_rows}
    for run in range(RUNS):
        split_seed = np.random.SeedSequence(0).spawn(run + 1)[run].spawn(1)[0]
        _, test = train_test_split(env.n_queries, split_seed, 0.2)
        assert test.size == round(0.2 * env.n_queries)
        q = env.q(test)
        assert oracle[run] == pytest.approx(acr(q, best_arms(q), probs), abs=1e-12)


def test_summary_figures_and_markdown_are_written(small: Path) -> None:
    assert header(small / "summary.csv") == SUMMARY_COLUMNS
    summary = csv_rows(small / "summary.csv")
    assert sorted((s["learner"], int(s["budget"])) for s in summary) == sorted(
        (ln, b) for ln in LEARNERS for b in BUDGETS)
    assert all(s["env"] == ENV and int(s["runs"]) == RUNS for s in summary)
    md = (small / "summary.md").read_text()
    assert "| learner | T = 800 | T = 2,000 |" in md
    for ln in LEARNERS:
        assert f"| {ln} |" in md
    for kind in ("exploration", "inference"):
        png = small / f"{ENV}-{kind}.png"
        svg = small / f"{ENV}-{kind}.svg"
        assert png.read_bytes().startswith(PNG_MAGIC)
        assert png.stat().st_size > 1000
        assert "<svg" in svg.read_text()


def test_summary_statistics_match_scipy_and_numpy_on_runs_csv(
    small: Path, small_rows: list[dict[str, str]]
) -> None:
    acrs: dict[tuple[str, int], dict[int, float]] = {}
    regrets: dict[tuple[str, int], list[float]] = {}
    used: dict[tuple[str, int], list[float]] = {}
    for r in small_rows:
        k = (r["learner"], int(r["budget"]))
        acrs.setdefault(k, {})[int(r["run"])] = float(r["acr"])
        regrets.setdefault(k, []).append(float(r["regret"]))
        used.setdefault(k, []).append(float(r["completions_used"]))
    summary = csv_rows(small / "summary.csv")
    assert len(summary) == len(acrs)
    checked_p = 0
    for s in summary:
        k = (s["learner"], int(s["budget"]))
        a = np.array([acrs[k][i] for i in range(RUNS)])
        assert float(s["mean_acr"]) == pytest.approx(np.mean(a), rel=1e-12)
        assert float(s["sem_acr"]) == pytest.approx(scipy_sem(a), rel=1e-9)
        assert float(s["sem_acr"]) == pytest.approx(np.std(a, ddof=1) / math.sqrt(RUNS), rel=1e-9)
        assert float(s["mean_regret"]) == pytest.approx(np.mean(regrets[k]), rel=1e-12)
        assert float(s["sem_regret"]) == pytest.approx(scipy_sem(regrets[k]), rel=1e-9)
        assert float(s["mean_completions_used"]) == pytest.approx(np.mean(used[k]))
        p_text = s["p_vs_reference"]
        if s["learner"] == "psst":  # the reference is not tested against itself
            assert p_text == "" or math.isnan(float(p_text))
            assert s["significant"] == "False"
            continue
        ref = np.array([acrs[("psst", k[1])][i] for i in range(RUNS)])  # paired by run index
        expected = wilcoxon(a, ref, alternative="two-sided").pvalue
        assert float(p_text) == pytest.approx(expected, rel=1e-9)
        assert s["significant"] == str(bool(expected < 0.05))
        checked_p += 1
    assert checked_p == 4


# --- parallelism and independence ---------------------------------------------------------------


def test_two_workers_give_the_same_results_as_one(
    tmp_path: Path, small_rows: list[dict[str, str]]
) -> None:
    bench(tmp_path, *SMALL, "--workers", "2")
    rows = csv_rows(tmp_path / "runs.csv")
    assert len(rows) == len(small_rows)
    assert results(rows) == results(small_rows)


def test_a_cell_does_not_depend_on_the_other_cells_requested(
    tmp_path: Path, small_rows: list[dict[str, str]]
) -> None:
    bench(tmp_path, "--envs", ENV, "--learners", "psst", "--budgets", "2000",
          "--runs", str(RUNS))
    alone = csv_rows(tmp_path / "runs.csv")
    together = [r for r in small_rows if r["learner"] == "psst" and r["budget"] == "2000"]
    assert len(alone) == len(together) == RUNS
    assert results(alone) == results(together)


def test_learner_and_budget_order_do_not_change_results(
    tmp_path: Path, small_rows: list[dict[str, str]]
) -> None:
    bench(tmp_path, "--envs", ENV, "--learners", ",".join(reversed(LEARNERS)),
          "--budgets", ",".join(map(str, reversed(BUDGETS))), "--runs", "2")
    again = csv_rows(tmp_path / "runs.csv")
    assert results(again) == results([r for r in small_rows if int(r["run"]) < 2])


def test_duplicated_names_do_not_duplicate_cells(tmp_path: Path) -> None:
    """runs.csv holds one row per cell even when a learner or budget is named twice (or the
    command refuses the list)."""
    result = invoke("bench", "--out", str(tmp_path), "--envs", ENV, "--learners", "psst,psst",
                    "--budgets", "800,800", "--runs", "1")
    if result.exit_code == 2:
        return
    assert result.exit_code == 0, result.output
    cells = [cell(r) for r in csv_rows(tmp_path / "runs.csv")]
    assert Counter(cells) == {(ENV, "psst", 800, 0): 1}


# --- resume -------------------------------------------------------------------------------------


def test_rerun_skips_finished_cells(copy_of_small: Path) -> None:
    before = (copy_of_small / "runs.csv").read_bytes()
    result = bench(copy_of_small, *SMALL)
    assert (copy_of_small / "runs.csv").read_bytes() == before  # nothing recomputed or appended
    assert "36 rows" in result.output


def test_more_runs_compute_only_the_missing_runs(copy_of_small: Path) -> None:
    old = data_lines(copy_of_small / "runs.csv")
    bench(copy_of_small, *SMALL[:-2], "--runs", str(RUNS + 2))
    lines = data_lines(copy_of_small / "runs.csv")
    assert lines[: len(old)] == old  # finished rows untouched
    new = csv_rows(copy_of_small / "runs.csv")[len(old):]
    assert len(new) == len(LEARNERS) * len(BUDGETS) * 2
    assert sorted({int(r["run"]) for r in new}) == [RUNS, RUNS + 1]
    assert len({cell(r) for r in csv_rows(copy_of_small / "runs.csv")}) == len(lines)
    summary = csv_rows(copy_of_small / "summary.csv")
    assert {int(s["runs"]) for s in summary} == {RUNS + 2}


def test_an_added_learner_computes_only_its_cells(copy_of_small: Path) -> None:
    old = data_lines(copy_of_small / "runs.csv")
    bench(copy_of_small, *SMALL[:2], "--learners", ",".join((*LEARNERS, "egreedy")),
          *SMALL[4:])
    lines = data_lines(copy_of_small / "runs.csv")
    assert lines[: len(old)] == old
    new = csv_rows(copy_of_small / "runs.csv")[len(old):]
    assert len(new) == len(BUDGETS) * RUNS
    assert {r["learner"] for r in new} == {"egreedy"}
    assert {(int(r["budget"]), int(r["run"])) for r in new} == {
        (b, r) for b in BUDGETS for r in range(RUNS)}
    # the paired design holds across the two invocations: same split, same oracle ACR
    oracle = {int(r["run"]): r["oracle_acr"] for r in csv_rows(copy_of_small / "runs.csv")[:36]}
    assert all(r["oracle_acr"] == oracle[int(r["run"])] for r in new)
    # a later bench with the original learners summarizes only its own cells
    bench(copy_of_small, *SMALL)
    assert {s["learner"] for s in csv_rows(copy_of_small / "summary.csv")} == set(LEARNERS)


@pytest.mark.parametrize("keep", [30, -1], ids=["mid-row", "all-but-newline"])
def test_a_torn_last_line_is_repaired_and_its_cell_recomputed(
    copy_of_small: Path, small_rows: list[dict[str, str]], keep: int
) -> None:
    path = copy_of_small / "runs.csv"
    data = path.read_bytes()
    last_start = data.rstrip(b"\r\n").rfind(b"\n") + 1
    # an interrupted write: part of the last row, no final newline
    torn = data[: last_start + keep] if keep > 0 else data[:keep]
    assert not torn.endswith(b"\n") and torn.count(b"\n") == data.count(b"\n") - 1
    path.write_bytes(torn)
    bench(copy_of_small, *SMALL)
    repaired = path.read_bytes()
    assert repaired.startswith(data[:last_start])  # earlier rows untouched
    with path.open(newline="") as fh:
        assert all(len(line) == len(RUN_COLUMNS) for line in csv.reader(fh))
    rows = csv_rows(path)
    assert len(rows) == len({cell(r) for r in rows}) == len(small_rows)
    assert results(rows) == results(small_rows)  # the recomputed cell equals the lost one


def test_a_torn_header_is_repaired(copy_of_small: Path, small_rows: list[dict[str, str]]
                                   ) -> None:
    path = copy_of_small / "runs.csv"
    path.write_bytes(path.read_bytes()[:15])  # interrupted while writing the header
    bench(copy_of_small, *SMALL)
    assert header(path) == RUN_COLUMNS
    assert results(csv_rows(path)) == results(small_rows)


def test_a_bench_written_before_a_column_existed_resumes_with_its_own_columns(
    copy_of_small: Path, small_rows: list[dict[str, str]]
) -> None:
    path = copy_of_small / "runs.csv"
    old_columns = RUN_COLUMNS[:-1]  # as written before completions_per_query
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(small_rows[:-3])
    bench(copy_of_small, *SMALL)
    assert header(path) == old_columns
    with path.open(newline="") as fh:
        assert all(len(line) == len(old_columns) for line in csv.reader(fh))
    assert results(csv_rows(path)) == results(small_rows)  # the three lost cells recomputed


def test_another_seed_in_the_same_folder_is_refused(copy_of_small: Path) -> None:
    before = (copy_of_small / "runs.csv").read_bytes()
    meta = (copy_of_small / "bench.json").read_text()
    result = invoke("bench", "--out", str(copy_of_small), *SMALL, "--seed", "1")
    assert result.exit_code == 2, result.output
    assert "seed" in result.output
    assert (copy_of_small / "runs.csv").read_bytes() == before
    assert (copy_of_small / "bench.json").read_text() == meta
    assert json.loads(meta)["identity"]["seed"] == 0


# --- synthetic environments ---------------------------------------------------------------------


def test_synthetic_runs_draw_fresh_instances_reproducibly(tmp_path: Path) -> None:
    args = ("--envs", "synth-bernoulli", "--learners", "psst,uniform", "--budgets", "800",
            "--runs", "2")
    bench(tmp_path / "a", *args)
    rows = csv_rows(tmp_path / "a" / "runs.csv")
    assert sorted(cell(r) for r in rows) == sorted(
        ("synth-bernoulli", ln, 800, r) for ln in ("psst", "uniform") for r in (0, 1))
    oracle: dict[int, str] = {}
    for r in rows:
        assert int(r["completions_used"]) <= 800
        assert oracle.setdefault(int(r["run"]), r["oracle_acr"]) == r["oracle_acr"]  # paired
    assert oracle[0] != oracle[1]
    bench(tmp_path / "b", *args)
    assert results(csv_rows(tmp_path / "b" / "runs.csv")) == results(rows)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"--envs": "no-such-env"}, "no-such-env"),
        ({"--learners": "psst,no-such-learner"}, "no-such-learner"),
        ({"--budgets": "800,lots"}, "--budgets"),
        ({"--budgets": "800,0"}, "budgets"),
        ({"--budgets": ","}, "budgets"),
        ({"--reference": "ucb"}, "ucb"),
    ],
    ids=["env", "learner", "budgets-not-int", "budgets-zero", "budgets-empty", "reference"],
)
def test_bad_input_exits_2_naming_the_problem(
    tmp_path: Path, change: dict[str, str], needle: str
) -> None:
    opts = {"--envs": ENV, "--learners": "psst,uniform", "--budgets": "800", "--runs": "1"}
    opts.update(change)
    out = tmp_path / "out"
    result = invoke("bench", "--out", str(out), *[t for kv in opts.items() for t in kv])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not (out / "runs.csv").exists()


# --- motivating plots ---------------------------------------------------------------------------


def test_plot_writes_figures_2a_and_3(tmp_path: Path) -> None:
    result = invoke("plot", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    for stem in ("math-prompt-flip", "theta-utility"):
        assert (tmp_path / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
        assert "<svg" in (tmp_path / f"{stem}.svg").read_text()


def test_plot_refuses_a_best_of_n_environment(tmp_path: Path) -> None:
    result = invoke("plot", "--out", str(tmp_path), "--env", "synth-categorical")
    assert result.exit_code == 2, result.output
    assert "synth-categorical" in result.output and "majority" in result.output
    assert not list(tmp_path.glob("*.png"))


def test_plot_refuses_prompts_out_of_range(tmp_path: Path) -> None:
    result = invoke("plot", "--out", str(tmp_path), "--prompts", "0,99")
    assert result.exit_code == 2, result.output
    assert "99" in result.output


# --- cluster backends ---------------------------------------------------------------------------


def test_dask_backend_gives_the_same_results(
    tmp_path: Path, small_rows: list[dict[str, str]]
) -> None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        pytest.skip("dask.distributed is not installed (pip install 'iapo[dask]')")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, \
            Client(cluster):
        bench(tmp_path, *SMALL, "--backend", "dask", "--workers", "2")
    assert results(csv_rows(tmp_path / "runs.csv")) == results(small_rows)


def test_ray_backend_gives_the_same_results(
    tmp_path: Path, small_rows: list[dict[str, str]]
) -> None:
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install 'iapo[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        bench(tmp_path, *SMALL, "--backend", "ray", "--workers", "2")
    finally:
        ray.shutdown()
    assert results(csv_rows(tmp_path / "runs.csv")) == results(small_rows)


# --- the perf suite (benchmarks/perf; `make bench`) ---------------------------------------------

PERF = Path(__file__).resolve().parent.parent / "benchmarks" / "perf"


def perf_module(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"perf_{name}", PERF / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_bench_runs_the_suite_and_the_suite_every_perf_script() -> None:
    suite = perf_module("suite")
    scripts = {p.stem for p in PERF.glob("*.py")} - set(suite.HELPERS)
    assert set(suite.SCRIPTS) == scripts and len(scripts) >= 8
    assert set(suite.PINNED) <= scripts
    makefile = (PERF.parent.parent / "Makefile").read_text()
    recipe = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "benchmarks/perf/suite.py --commit $(BENCH_COMMIT)" in recipe


def test_a_missed_target_exits_1_naming_it() -> None:
    import subprocess
    import sys

    code = ("from targets import Target, verdict; verdict('demo', [Target('a', 0.5, 1.0), "
            "Target('b', 2.0, 3.0, at_least=True), Target('c', 3.0, 3.0, at_least=True)])")
    out = subprocess.run([sys.executable, "-c", code], cwd=PERF, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["PASS  a = 0.500 (target <= 1)",
                                       "MISS  b = 2.000 (target >= 3)",
                                       "PASS  c = 3.000 (target >= 3)"]
    assert out.stderr.strip() == "demo: 1 of 3 targets missed: b = 2.000 (target >= 3)"


def test_the_suite_collects_each_target_and_fails_exactly_on_a_miss() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(PERF / "suite.py"), "--commit", "HEAD",
                          "--only", "bench_cli"], capture_output=True, text=True, timeout=300)
    summary = out.stdout.split("\nscript ", 1)[1].splitlines()
    verdicts = [line for line in summary if " PASS  " in line or " MISS  " in line]
    assert len(verdicts) == 3 and "iapo --help / import click" in verdicts[0]
    missed = any(" MISS  " in line for line in verdicts)
    assert out.returncode == int(missed)
    assert summary[-1].endswith("FAILED: bench_cli" if missed else "every target met")
