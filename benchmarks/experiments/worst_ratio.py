"""How far is each learner from the best, cell by cell? From a bench's runs.csv (or its
summary.csv): per (environment, budget) cell the mean regret of every learner, and per learner
the worst ratio of its mean regret to the best learner's in the same cell, and where.

    .venv/bin/python benchmarks/experiments/worst_ratio.py docs/default-bench/runs.csv [--markdown]
    .venv/bin/python benchmarks/experiments/worst_ratio.py docs/default-bench/summary.csv \\
        NEW/summary.csv --changed psst-auto [--markdown]

Several files are read in order, a later file's rows replacing an earlier one's for the same
(environment, budget, learner): a rerun of one learner (``iapo bench --learners psst-auto``)
is ranked against every other learner's rows kept from the full bench. ``--changed L`` also
prints, cell by cell, L's mean regret in the first file and in the last, the difference and
the first file's SEM, and marks the cells where the last is worse by more than that SEM.

Cited by docs/default-learner.md and docs/measured.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict

Key = tuple[str, int, str]


def read(path: str) -> tuple[dict[Key, float], dict[Key, float]]:
    """(mean regret, its SEM) per (environment, budget, learner) of a runs.csv or a
    summary.csv."""
    regrets: dict[Key, list[float]] = defaultdict(list)
    mean: dict[Key, float] = {}
    sem: dict[Key, float] = {}
    with open(path) as fh:
        for row in csv.DictReader(fh):
            key = (row["env"], int(row["budget"]), row["learner"])
            if "mean_regret" in row:  # a summary
                mean[key], sem[key] = float(row["mean_regret"]), float(row["sem_regret"])
            else:
                regrets[key].append(float(row["regret"]))
    for key, values in regrets.items():
        mean[key] = statistics.mean(values)
        sem[key] = (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1
                    else float("nan"))
    return mean, sem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("csv", nargs="+", help="runs.csv or summary.csv files, later ones win")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--changed", help="a learner to compare between the first file and the last")
    args = ap.parse_args()
    tables = [read(path) for path in args.csv]
    mean: dict[Key, float] = {}
    for m, _ in tables:
        mean.update(m)
    cells = sorted({(e, b) for e, b, _ in mean})
    learners = sorted({name for _, _, name in mean})
    # a best regret of 0 (every run exact) is floored, so the ratio stays defined
    best = {cell: max(min(mean[(*cell, name)] for name in learners if (*cell, name) in mean),
                      1e-12) for cell in cells}
    rows = []
    for name in learners:
        ratios = [(mean[(*cell, name)] / best[cell], cell) for cell in cells
                  if (*cell, name) in mean]
        worst, (env, budget) = max(ratios)
        wins = sum(r == 1.0 for r, _ in ratios)
        over = sum(r > 1.25 for r, _ in ratios)
        rows.append((worst, name, f"{env}, T = {budget:,}", len(ratios), wins, over))
    rows.sort()
    if args.markdown:
        print("| learner | worst ratio | where | cells | cells where best | cells above 1.25 |")
        print("|---|---|---|---|---|---|")
        for worst, name, where, n, wins, over in rows:
            print(f"| {name} | {worst:.2f} | {where} | {n} | {wins} | {over} |")
    else:
        for worst, name, where, n, wins, over in rows:
            print(f"{name:<14} worst {worst:5.2f} at {where:<34} ({wins} of {n} cells best, "
                  f"{over} above 1.25)")
    if args.changed:
        changed(args.changed, tables[0], tables[-1], cells, best, mean, args.markdown)


def changed(name: str, first: tuple[dict[Key, float], dict[Key, float]],
            last: tuple[dict[Key, float], dict[Key, float]], cells: list[tuple[str, int]],
            best: dict[tuple[str, int], float], mean: dict[Key, float], markdown: bool) -> None:
    """Per cell: ``name``'s mean regret before (the first file) and after (the last), the
    difference, the first's SEM, the ratio to the best learner after, and whether it got worse
    by more than one SEM."""
    print()
    if markdown:
        print(f"| environment | T | {name} before (SEM) | after (SEM) | after - before | "
              "ratio to the best | worse by > 1 SEM |")
        print("|---|---|---|---|---|---|---|")
    for env, budget in cells:
        key = (env, budget, name)
        if key not in first[0] or key not in last[0]:
            continue
        before, after = first[0][key], last[0][key]
        diff, sem = after - before, first[1][key]
        worse = "n/a (one run)" if sem != sem else "yes" if diff > sem else "no"
        ratio = mean[key] / best[env, budget]
        if markdown:
            print(f"| {env} | {budget:,} | {before:.4f} ({sem:.4f}) | {after:.4f} "
                  f"({last[1][key]:.4f}) | {diff:+.4f} | {ratio:.2f} | {worse} |")
        else:
            print(f"{env:<26} {budget:>6} before {before:.4f} ({sem:.4f}) after {after:.4f} "
                  f"({last[1][key]:.4f}) diff {diff:+.4f} ratio {ratio:.2f} worse {worse}")


if __name__ == "__main__":
    main()
