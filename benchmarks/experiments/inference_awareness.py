"""Does inference-awareness matter on an environment? Exact numbers on all its queries.

    .venv/bin/python benchmarks/experiments/inference_awareness.py ENV [ENV ...]

Per context: the best arm (prompt, N) and its Q, and the best arm restricted to N = 1 (what
inference-agnostic prompt optimization deploys) with its Q and its regret. Then the optimal
ACR, the ACR of the best N = 1 policy, their difference, and how many distinct prompts and N
the optimal policy uses.

Cited by docs/environments.md.
"""

from __future__ import annotations

import sys

import numpy as np

from iapo.envs import acr, best_arms, get_environment


def main() -> None:
    for name in sys.argv[1:] or ["math"]:
        env = get_environment(name)
        q = env.q()
        grid = env.problem.grid
        best = best_arms(q)
        best1 = best_arms(q[:, :, :1])
        names = env.problem.prompts
        print(f"{name}: {env.problem.n_prompts} prompts, {env.n_queries} queries")
        print(f"  {'context':<34} {'best (p, N)':>12} {'Q':>8} {'best N=1 p':>10} {'Q':>8} "
              f"{'regret':>8}")
        for i, key in enumerate(grid.keys):
            a, b = best[i], best1[i]
            qa, qb = q[i, a.prompt, a.n - 1], q[i, b.prompt, 0]
            print(f"  {key:<34} {f'({a.prompt}, {a.n})':>12} {qa:8.4f} {b.prompt:>10} "
                  f"{qb:8.4f} {qa - qb:8.4f}")
        pr = grid.probabilities
        opt, one = acr(q, best, pr), acr(q, best1, pr)
        print(f"  optimal ACR {opt:.4f}; best N = 1 policy {one:.4f}; regret {opt - one:.4f}; "
              f"the optimal policy uses {len({a.prompt for a in best})} prompts and N in "
              f"{sorted({a.n for a in best})}")
        ns = np.array([a.n for a in best])
        print(f"  N of the best arm: min {ns.min()}, median {int(np.median(ns))}, max {ns.max()}")
        # one prompt for every context, N still chosen per context: the most that prompt-only
        # screening down to a single prompt (PSST+K1) can reach
        one_prompt = opt - q.max(axis=2).T @ pr  # [P]
        p = int(np.argmin(one_prompt))
        print(f"  best one-prompt policy (N per context): prompt {p} ({names[p]}), regret "
              f"{one_prompt[p]:.4f}; per prompt "
              + ", ".join(f"{r:.4f}" for r in one_prompt))


if __name__ == "__main__":
    main()
