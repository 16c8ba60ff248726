"""The paired comparison of the beyond-the-paper learners against the best Top-K variant of each
environment (the one with the lowest mean regret over the five budgets), from the runs of
docs/beyond/runs.csv (made by the `iapo bench` command in docs/beyond.md).

    .venv/bin/python benchmarks/experiments/beyond_vs_topk.py [docs/beyond]

Writes summary-vs-topk.md next to runs.csv: mean regret (SEM) and the two-sided Wilcoxon
p-value of the paired ACRs against that Top-K variant.

Cited by docs/beyond.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from iapo.bench import read_runs, summarize
from iapo.bench.stats import markdown_table

LEARNERS = ("psst", "psst-k1", "psst-k4", "psst-k8", "psst:subsets", "psst-k4:subsets",
            "psst-model", "psst-model4")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/beyond")
    rows = [r for r in read_runs(folder / "runs.csv") if r["learner"] in LEARNERS]
    parts = ["# Beyond the paper against the best Top-K variant\n",
             "Mean regret over the paired runs (SEM); p: two-sided Wilcoxon signed-rank test of "
             "the paired ACRs against the environment's best Top-K variant (lowest mean regret "
             "over the five budgets); * marks p < 0.05.\n"]
    for env in dict.fromkeys(r["env"] for r in rows):
        mine = [r for r in rows if r["env"] == env]
        best = min(("psst-k1", "psst-k4", "psst-k8"),
                   key=lambda k: np.mean([r["regret"] for r in mine if r["learner"] == k]))
        summary = summarize(mine, reference=best)
        parts.append(f"## {env} (reference: {best})\n")
        parts.append(markdown_table(summary, env, best, "regret", LEARNERS) + "\n")
    (folder / "summary-vs-topk.md").write_text("\n".join(parts))
    print(f"written {folder / 'summary-vs-topk.md'}")


if __name__ == "__main__":
    main()
