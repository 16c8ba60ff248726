"""The regret floor of the protocol: a policy that knew the exact Q of its training split
(an infinite training budget) still has regret on the test split, because the best arm on
252 (or 1,200) training queries need not be the best on the other 20%.

    .venv/bin/python benchmarks/bench_floor.py [--runs 200]

Uses the same 80/20 splits as `iapo bench --seed 0` (`iapo.bench.runner.run_split`).
"""

from __future__ import annotations

import argparse

import numpy as np

from iapo.bench.runner import run_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    for name in ("math", "commonsenseqa"):
        regrets = []
        for r in range(args.runs):
            env, train, q_test = run_split(name, 0, r, 0.2)
            pr = env.problem.grid.probabilities
            q_train = env.query_table(progress=False).q(env.problem, train).reshape(len(pr), -1)
            q_test = q_test.reshape(len(pr), -1)
            chosen = q_test[np.arange(len(pr)), q_train.argmax(axis=1)]
            regrets.append(float(q_test.max(axis=1) @ pr - chosen @ pr))
        reg = np.array(regrets)
        print(f"{name}: regret of the training split's exact best arms on the test split "
              f"{reg.mean():.4f} (SEM {reg.std(ddof=1) / np.sqrt(reg.size):.4f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
