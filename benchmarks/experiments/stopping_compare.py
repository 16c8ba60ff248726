"""Arms that stop once the vote is decided against the paper's arms: two benches compared.

    .venv/bin/iapo bench --envs math,commonsenseqa --learners psst,psst-auto --runs 200 \\
        --workers 2 --reference psst-auto --metric regret --stop all --out docs/stopping-bench/all
    .venv/bin/iapo bench ... --stop decided --wave 1 --out docs/stopping-bench/decided
    .venv/bin/python benchmarks/experiments/stopping_compare.py docs/stopping-bench

Both benches draw the same splits and the same training completions (the seeds depend on the
run, the learner and the budget only), so every run pairs. For every environment, learner and
budget: the mean ACR (the utility actually obtained: accuracy minus the cost weight times the
completions paid) with and without ``decided`` arms, the paired Wilcoxon test of the two, the
regret against each setting's own oracle, and the completions each policy pays per query when
deployed. For the oracle, per context: the best arm of each setting, and the completions the
paper's best arm pays when it stops once decided, at equal accuracy. Writes comparison.md and
one figure per environment (``<env>-stopping.png``) into the folder.

Cited by docs/stopping.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from iapo.bench import read_runs
from iapo.envs import get_environment
from iapo.envs.base import oracle_report
from iapo.problem import Stopping


def oracle_rows(env_name: str, wave: int) -> list[str]:
    """Per context: the best arm paying all N, what it pays when it stops once decided (the
    same accuracy), and the best arm when arms stop: all on every query of the environment
    (:func:`iapo.envs.base.oracle_report`, as ``iapo oracle --stop decided`` prints it)."""
    base = get_environment(env_name)
    stopping = Stopping("decided", wave)
    report = oracle_report(base, stopping)
    paid = base.with_stopping(stopping).query_table(progress=False).completions()
    lines = [
        f"Oracle on all {base.n_queries} queries: ACR {report['acr_all']:.4f} paying "
        f"all N, {report['acr']:.4f} with arms that stop once decided (waves of "
        f"{wave}).", "",
        "| context | best arm, all N | its completions when it stops (same accuracy) | saved "
        "| best arm when arms stop | its completions | Q gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["contexts"]:
        same = paid[r["all_prompt"], r["all_n"] - 1]
        lines.append(
            f"| {r['context']} | prompt {r['all_prompt']}, N {r['all_n']} | {same:.2f} | "
            f"{max(0.0, 1 - same / r['all_n']):.0%} | prompt {r['prompt']}, N {r['n']} | "
            f"{r['paid']:.2f} | {r['gain']:+.4f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="holds the benches all/ and decided/")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {s: read_runs(args.folder / s / "runs.csv") for s in ("all", "decided")}
    meta = json.loads((args.folder / "decided" / "bench.json").read_text())
    wave = int(meta["identity"]["stopping"]["wave"])
    key = ("env", "learner", "budget", "run")
    by = {s: {tuple(r[k] for k in key): r for r in rows} for s, rows in runs.items()}
    common = sorted(set(by["all"]) & set(by["decided"]))
    envs = sorted({c[0] for c in common})
    learners = sorted({c[1] for c in common})
    budgets = sorted({c[2] for c in common})
    out = ["# Majority voting that stops once decided: the bench", "",
           f"Two {max(c[3] for c in common) + 1}-run benches on the same splits and training "
           "completions, one with the paper's arms (all N paid), one with arms that stop once "
           f"no remaining completion can change the vote (waves of {wave}). ACR: the utility "
           "obtained on the test split, accuracy minus the cost weight times the completions "
           "paid (mean, SEM in parentheses). p: two-sided paired Wilcoxon test of the ACRs "
           "(decided against all N); * marks p < 0.05. Regret is against each setting's own "
           "oracle. Completions: what the learned policy pays per query when deployed, "
           "averaged over contexts.", ""]
    for env in envs:
        out += [f"## {env}", ""]
        out += oracle_rows(env, wave) + [""]
        out += ["| learner | T | ACR, all N | ACR, decided | gain | p | regret, all N | "
                "regret, decided | completions, all N | completions, decided |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for learner in learners:
            curves: dict[str, list[float]] = {"all": [], "decided": [], "sa": [], "sd": []}
            for b in budgets:
                cells = [c for c in common if c[:3] == (env, learner, b)]
                if not cells:
                    continue
                a = np.array([by["all"][c]["acr"] for c in cells])
                d = np.array([by["decided"][c]["acr"] for c in cells])
                ra = np.array([by["all"][c]["regret"] for c in cells])
                rd = np.array([by["decided"][c]["regret"] for c in cells])
                ca = np.array([by["all"][c]["completions_per_query"] for c in cells])
                cd = np.array([by["decided"][c]["completions_per_query"] for c in cells])
                p = wilcoxon(d, a).pvalue if np.any(d != a) else 1.0
                sem = np.std(d - a, ddof=1) / np.sqrt(len(cells)) if len(cells) > 1 else 0.0
                out.append(
                    f"| {learner} | {b:,} | {a.mean():.4f} ({a.std(ddof=1) / np.sqrt(a.size):.4f})"
                    f" | {d.mean():.4f} ({d.std(ddof=1) / np.sqrt(d.size):.4f}) | "
                    f"{d.mean() - a.mean():+.4f} ({sem:.4f}) | {p:.2g}{'*' if p < 0.05 else ''}"
                    f" | {ra.mean():.4f} | {rd.mean():.4f} | {ca.mean():.2f} | {cd.mean():.2f} |")
                curves["all"].append(a.mean())
                curves["decided"].append(d.mean())
                curves["sa"].append(ca.mean())
                curves["sd"].append(cd.mean())
            color = f"C{learners.index(learner)}"  # one colour per learner
            for setting, style in (("all", "--"), ("decided", "-")):
                axes[0].plot(budgets, curves[setting], style, marker="o", color=color,
                             label=f"{learner}, {setting}")
                axes[1].plot(budgets, curves["sa" if setting == "all" else "sd"], style,
                             marker="o", color=color, label=f"{learner}, {setting}")
        for ax, title in zip(axes, ("test ACR (higher is better)",
                                    "completions paid per query when deployed"), strict=True):
            ax.set_xscale("log")
            ax.set_xlabel("training budget T (completions)")
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{env}: arms paying all N against arms that stop once decided "
                     f"(waves of {wave})", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.folder / f"{env}-stopping.png", dpi=120)
        plt.close(fig)
        out.append("")
        out.append(f"![{env}]({env}-stopping.png)")
        out.append("")
    (args.folder / "comparison.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
