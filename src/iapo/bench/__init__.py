"""The paper's evaluation protocol: runs, splits, budgets, statistics, figures, backends."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from iapo.bench.runner import (
    PAPER_BUDGETS,
    RUN_COLUMNS,
    BenchConfig,
    BenchError,
    env_names,
    execute,
    read_runs,
    run_unit,
)
from iapo.bench.stats import markdown_table, paired_wilcoxon, sem, summarize

SUMMARY_COLUMNS = ["env", "learner", "budget", "runs", "mean_acr", "sem_acr", "mean_regret",
                   "sem_regret", "mean_completions_used", "p_vs_reference", "significant"]


def report(rows: list[dict[str, Any]], config: BenchConfig, out: Path,
           metric: str = "acr") -> dict[str, Any]:
    """Write summary.csv, summary.md and the figures for the rows of ``config``'s cells, each
    environment called by its name (:func:`env_names`; a file's path shown beside it)."""
    from iapo.bench.plots import figure_stems, learning_curves

    names = env_names(config.envs)
    wanted = {(e, ln, b) for e in names.values() for ln in config.learners
              for b in config.budgets}
    mine = [r for r in rows if (r["env"], r["learner"], r["budget"]) in wanted
            and r["run"] < config.runs]
    summary = summarize(mine, config.reference)
    with (out / "summary.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        w.writerows(summary)
    parts = [f"# Bench: {', '.join(names.values())}\n",
             f"Mean {metric} over {config.runs} runs (SEM in parentheses); p: two-sided "
             f"Wilcoxon signed-rank test of the paired ACRs against `{config.reference}`; "
             "* marks p < 0.05.\n"]
    figures: list[Path] = []
    stems = figure_stems(list(names.values()))
    for given, env in names.items():
        parts.append(f"## {env}\n" if given == env else f"## {env}\n\nFrom `{given}`.\n")
        parts.append(markdown_table(summary, env, config.reference, metric, config.learners)
                     + "\n")
        figures += learning_curves(summary, env, out, metric, stems[env])
    (out / "summary.md").write_text("\n".join(parts))
    return {"summary": summary, "figures": figures}


__all__ = [
    "PAPER_BUDGETS",
    "RUN_COLUMNS",
    "SUMMARY_COLUMNS",
    "BenchConfig",
    "BenchError",
    "env_names",
    "execute",
    "markdown_table",
    "paired_wilcoxon",
    "read_runs",
    "report",
    "run_unit",
    "sem",
    "summarize",
]
