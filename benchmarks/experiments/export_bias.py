"""How biased is an exported environment's Q for N > 1?

`iapo export-env` turns the S stored answers of every (prompt, query) pair into that pair's
answer distribution, so the exported environment draws N answers *with replacement* from S
samples. For N > 1 this plug-in Q is biased (a majority of N copies of few samples is too
sure of itself). The unbiased estimate from the same samples, for N <= S, is the average over
all size-N subsets drawn *without* replacement (`iapo.exact.mv_subset_credit`).

Here the truth is known: the paper's MATH data (128 answers per pair) stands for the model.
Each trial draws S answers per pair from it, as a live collection would, and compares, averaged
over every prompt and query, the true MV credit Q(N), the plug-in Q(N) of the exported
environment and the subset average. Prints the mean of each and the bias.

    .venv/bin/python benchmarks/experiments/export_bias.py

Cited by docs/live.md.
"""

from __future__ import annotations

import numpy as np

from iapo.envs import get_environment
from iapo.exact import mv_credit_probability, mv_subset_credit


def main(trials: int = 3, seed: int = 0) -> None:
    env = get_environment("math")
    probs = env.probs.reshape(-1, env.probs.shape[-1])  # [P*X, L]
    gold = np.tile(env.gold, env.probs.shape[0]).astype(np.int64)
    rng = np.random.default_rng(seed)
    print("S = stored answers per pair; Q averaged over all 25 prompts x 316 queries of math")
    print(f"{'S':>3} {'N':>3} {'true Q':>8} {'plug-in':>8} {'bias':>8} {'subsets':>8} {'bias':>8}")
    for s in (4, 8, 16):
        ns = [n for n in (1, 2, 3, 4, 8, 16) if n <= s]
        true = mv_credit_probability(probs, gold, s)[:, np.array(ns) - 1].mean(axis=0)
        plug, subs = np.zeros(len(ns)), np.zeros(len(ns))
        for _ in range(trials):
            counts = np.stack([rng.multinomial(s, p) for p in probs])  # [M, L]
            emp = counts / s
            plug += mv_credit_probability(emp, gold, s)[:, np.array(ns) - 1].mean(axis=0)
            others = counts.copy()
            others[np.arange(len(gold)), gold] = 0
            sub = mv_subset_credit(counts[np.arange(len(gold)), gold], others, s)
            subs += sub[:, np.array(ns) - 1].mean(axis=0)
        plug /= trials
        subs /= trials
        for j, n in enumerate(ns):
            print(f"{s:>3} {n:>3} {true[j]:>8.4f} {plug[j]:>8.4f} {plug[j] - true[j]:>+8.4f} "
                  f"{subs[j]:>8.4f} {subs[j] - true[j]:>+8.4f}")


if __name__ == "__main__":
    main()
