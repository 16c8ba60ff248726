"""Same results as a pinned earlier commit: `iapo oracle --json` on every environment and a
bench on math and commonsenseqa, same seeds, compared row by row (all but wall time).

    .venv/bin/python benchmarks/same_results.py [--commit 7b8be01] [--runs 50]

The pinned commit is checked out into a temporary git worktree and run with this venv's
Python (PYTHONPATH at its src). Prints one line per check and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pinned import ROOT, worktree

ENVS = ("math", "commonsenseqa", "synth-bernoulli", "synth-categorical",
        "helpful-harmless-smollm2", "summarization-smollm2")
LEARNERS = ("psst,psst-k1,psst-k4,psst-k8,uniform,egreedy,softmax,ucb,triple-n1,triple-nrand,"
            "psst-model,psst-model4,psst:subsets")


def iapo(src: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-m", "iapo.cli", *args], env=env, cwd=src.parent,
                         capture_output=True, text=True, check=True)
    return out.stdout


def bench_rows(src: Path, out: Path, runs: int) -> dict[tuple[str, ...], dict[str, str]]:
    iapo(src, "bench", "--envs", "math,commonsenseqa", "--learners", LEARNERS, "--runs",
         str(runs), "--out", str(out))
    with (out / "runs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {(r["env"], r["learner"], r["budget"], r["run"]):
            {k: v for k, v in r.items() if k != "seconds"} for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commit", default="7b8be01")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    ok = True
    with worktree(args.commit) as pinned, tempfile.TemporaryDirectory() as tmp:
        for env in ENVS:
            same = iapo(pinned / "src", "oracle", env, "--json") == iapo(
                ROOT / "src", "oracle", env, "--json")
            ok &= same
            print(f"iapo oracle {env} --json: {'identical' if same else 'DIFFERENT'}")
        then = bench_rows(pinned / "src", Path(tmp) / "then", args.runs)
        now = bench_rows(ROOT / "src", Path(tmp) / "now", args.runs)
        # the columns both commits write (a later one may add some), all but the wall time
        shared = set(next(iter(then.values()))) & set(next(iter(now.values())))
        differ = [k for k in then if k not in now
                  or any(then[k][c] != now[k][c] for c in shared)]
        same = not differ and then.keys() == now.keys()
        ok &= same
        print(f"bench math,commonsenseqa, {args.runs} runs, {len(then)} rows: "
              f"{'identical' if same else f'{len(differ)} rows DIFFERENT, e.g. {differ[:3]}'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
