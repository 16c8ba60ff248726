"""Summary statistics of a bench: mean, SEM and paired Wilcoxon tests against a reference."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

ALPHA = 0.05


def sem(values: Sequence[float]) -> float:
    """Standard error of the mean (ddof = 1); NaN below two values."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size >= 2 else float("nan")


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples; 1.0 when all pairs are equal,
    NaN with no pairs."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.size == 0:
        return float("nan")
    if np.all(x == y):
        return 1.0
    return float(wilcoxon(x, y, alternative="two-sided").pvalue)


def summarize(
    rows: Iterable[Mapping[str, Any]], reference: str = "psst"
) -> list[dict[str, Any]]:
    """One row per (env, learner, budget): runs, mean and SEM of ACR and regret, mean
    completions used, and the Wilcoxon p-value of ACR against ``reference`` on the runs both
    have (paired by run index)."""
    cells: dict[tuple[str, str, int], dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for r in rows:
        cells[(str(r["env"]), str(r["learner"]), int(r["budget"]))][int(r["run"])] = r
    out = []
    for (env, learner, budget), by_run in sorted(cells.items()):
        runs = sorted(by_run)
        acr = [float(by_run[i]["acr"]) for i in runs]
        regret = [float(by_run[i]["regret"]) for i in runs]
        used = [float(by_run[i]["completions_used"]) for i in runs]
        ref = cells.get((env, reference, budget), {})
        p = float("nan")
        if learner != reference and ref:
            common = [i for i in runs if i in ref]
            p = paired_wilcoxon(
                [float(by_run[i]["acr"]) for i in common],
                [float(ref[i]["acr"]) for i in common],
            )
        out.append({
            "env": env,
            "learner": learner,
            "budget": budget,
            "runs": len(runs),
            "mean_acr": float(np.mean(acr)),
            "sem_acr": sem(acr),
            "mean_regret": float(np.mean(regret)),
            "sem_regret": sem(regret),
            "mean_completions_used": float(np.mean(used)),
            "p_vs_reference": p,
            "significant": bool(p < ALPHA) if not math.isnan(p) else False,
        })
    return out


def markdown_table(summary: Sequence[Mapping[str, Any]], env: str, reference: str,
                   metric: str = "acr", order: Sequence[str] = ()) -> str:
    """Learners by budgets for one environment: mean (SEM), with the Wilcoxon p-value against
    ``reference``; a star marks p < 0.05."""
    rows = [s for s in summary if s["env"] == env]
    budgets = sorted({int(s["budget"]) for s in rows})
    present = {s["learner"] for s in rows}
    learners = [ln for ln in order if ln in present]
    learners += sorted(present - set(learners))
    by = {(s["learner"], int(s["budget"])): s for s in rows}
    head = "| learner | " + " | ".join(f"T = {b:,}" for b in budgets) + " |"
    lines = [head, "|---|" + "---|" * len(budgets)]
    for ln in learners:
        cells = []
        for b in budgets:
            s = by.get((ln, b))
            if s is None:
                cells.append("")
                continue
            cell = f"{s['mean_' + metric]:.4f} ({s['sem_' + metric]:.4f})"
            p = s["p_vs_reference"]
            if ln != reference and not math.isnan(p):
                cell += f" p={p:.2g}" + ("*" if p < ALPHA else "")
            cells.append(cell)
        lines.append(f"| {ln} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
