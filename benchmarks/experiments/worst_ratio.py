"""How far is each learner from the best, cell by cell? From a bench's runs.csv: per
(environment, budget) cell the mean regret of every learner, and per learner the worst ratio
of its mean regret to the best learner's in the same cell, and where.

    .venv/bin/python benchmarks/experiments/worst_ratio.py docs/default-bench/runs.csv [--markdown]

Cited by docs/default-learner.md and docs/measured.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs_csv")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    regrets: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    with open(args.runs_csv) as fh:
        for row in csv.DictReader(fh):
            regrets[row["env"], int(row["budget"]), row["learner"]].append(float(row["regret"]))
    mean = {k: statistics.mean(v) for k, v in regrets.items()}
    cells = sorted({(e, b) for e, b, _ in mean})
    learners = sorted({name for _, _, name in mean})
    best = {cell: min(mean[(*cell, name)] for name in learners if (*cell, name) in mean)
            for cell in cells}
    rows = []
    for name in learners:
        ratios = [(mean[(*cell, name)] / best[cell], cell) for cell in cells
                  if (*cell, name) in mean]
        worst, (env, budget) = max(ratios)
        wins = sum(r == 1.0 for r, _ in ratios)
        rows.append((worst, name, f"{env}, T = {budget:,}", len(ratios), wins))
    rows.sort()
    if args.markdown:
        print("| learner | worst ratio | where | cells | cells where best |")
        print("|---|---|---|---|---|")
        for worst, name, where, n, wins in rows:
            print(f"| {name} | {worst:.2f} | {where} | {n} | {wins} |")
    else:
        for worst, name, where, n, wins in rows:
            print(f"{name:<14} worst {worst:5.2f} at {where:<34} ({wins} of {n} cells best)")


if __name__ == "__main__":
    main()
