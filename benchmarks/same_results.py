"""Same results as an earlier commit, for a change that must not change them:

- `iapo oracle --json` on every environment;
- every learner (the paper's, those beyond it, and the :subsets estimator) on all six
  environments at a small, a middle and a paper budget, two seeds each: its choices (arm,
  estimate, samples) and its whole trace (rounds, pulls, notes, info), compared as JSON;
- a bench on math and commonsenseqa, same seeds, compared row by row (all but wall time).

    .venv/bin/python benchmarks/same_results.py --commit REV [--runs 50]

REV is the commit before the change. It is checked out into a temporary git worktree and run
with this venv's Python (PYTHONPATH at its src). Prints one line per check and exits 1 on any
difference.
"""

from __future__ import annotations

import argparse
import csv
import json
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


# run in each commit's src: every learner on every environment, choices and trace as JSON
TRACES = r"""
import dataclasses, json, sys
import numpy as np
from iapo.envs import get_environment
from iapo.learners import LEARNERS, get_learner
from iapo.oracle import SimulatedOracle
env = get_environment(sys.argv[1])
out = {}
names = [*LEARNERS, *(f"{n}:subsets" for n, s in LEARNERS.items() if "estimator" in s.parameters)]
for name in names:
    for budget in (37, 1000, 20000):
        for seed in (0, 1):
            oracle = SimulatedOracle(env, np.arange(env.n_queries), budget,
                                     np.random.default_rng(seed))
            result = get_learner(name).learner(env.problem, oracle, budget,
                                               np.random.default_rng(100 + seed))
            out[f"{name} T={budget} seed={seed}"] = {
                "choices": [dataclasses.astuple(c) for c in result.choices],
                "trace": result.trace.to_dict()}
print(json.dumps(out, default=str))
"""


def learner_traces(src: Path, env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", TRACES, env], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(src)})
    return dict(json.loads(out.stdout))


def bench_rows(src: Path, out: Path, runs: int) -> dict[tuple[str, ...], dict[str, str]]:
    iapo(src, "bench", "--envs", "math,commonsenseqa", "--learners", LEARNERS, "--runs",
         str(runs), "--out", str(out))
    with (out / "runs.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {(r["env"], r["learner"], r["budget"], r["run"]):
            {k: v for k, v in r.items() if k != "seconds"} for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commit", required=True, help="the commit before the change")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    ok = True
    with worktree(args.commit) as pinned, tempfile.TemporaryDirectory() as tmp:
        for env in ENVS:
            same = iapo(pinned / "src", "oracle", env, "--json") == iapo(
                ROOT / "src", "oracle", env, "--json")
            ok &= same
            print(f"iapo oracle {env} --json: {'identical' if same else 'DIFFERENT'}")
        for env in ENVS:
            then_t, now_t = learner_traces(pinned / "src", env), learner_traces(ROOT / "src", env)
            differ = [k for k in then_t if then_t[k] != now_t.get(k)]
            ok &= not differ
            print(f"learners on {env}, {len(then_t)} runs, choices and traces: "
                  f"{'identical' if not differ else f'{len(differ)} DIFFERENT, e.g. {differ[:3]}'}",
                  flush=True)
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
