"""How much the per-query model's rise from one completion to the best of 4 exceeds the truth
(Best-of-N): the size of what psst-auto's slope check looks for.

    .venv/bin/python benchmarks/experiments/slope_bias.py [--runs 6] [--envs a,b]

For runs 0..R-1 of each environment (the bench's split and synthetic instance), the model is
fitted to 20 groups of 4 per training query of every prompt, and its rise task(4) - task(1)
(:meth:`iapo.model.ModelQTable.bon_task`) is compared with the exact rise on the training
queries. Printed per run: the mean excess over contexts and prompts, relative to the exact
rise, and the same at N = 32 (what the decision would see). Cited by docs/default-learner.md:
the slope check's margin and z (``iapo.learners.validate.SLOPE_MARGIN``, ``SLOPE_Z``) are set
against these excesses, small where the model is right and large where it is not.
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.bench.runner import run_queries
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.pulls import Pull


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--envs", default="synth-categorical,summarization-smollm2,"
                                      "helpful-harmless-smollm2")
    args = ap.parse_args()
    for name in args.envs.split(","):
        rel4, rel32 = [], []
        for run in range(args.runs):
            env, train, _ = run_queries(name, 0, run, 0.2)
            p = env.problem
            oracle = SimulatedOracle(env, train, 10**9, np.random.default_rng(run))
            model = ModelQTable(p)
            model.update(oracle.pull([Pull(q, 4, 20 * train.size) for q in range(p.n_prompts)]))
            fit = model.bon_task()  # [C, P, N]
            table = env.query_table(progress=False)  # exact task values [P, X, W, N]
            exact = table.task[:, train].mean(axis=1)[:, table.weight_index].transpose(1, 0, 2)
            for n, out in ((4, rel4), (32, rel32)):
                rise_fit = fit[:, :, n - 1] - fit[:, :, 0]
                rise = exact[:, :, n - 1] - exact[:, :, 0]
                out.append(float((rise_fit - rise).mean() / rise.mean()))
        print(f"{name}: the model's rise exceeds the exact one by "
              + ", ".join(f"{r:+.1%}" for r in rel4) + " (1 to 4); "
              + ", ".join(f"{r:+.1%}" for r in rel32) + " (1 to 32), runs 0.."
              + str(args.runs - 1))


if __name__ == "__main__":
    main()
