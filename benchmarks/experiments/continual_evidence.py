"""What evidence the continual policy's targets cost: the completions an evidence switch to
the best arm needs, against what the learning budget pays for.

    .venv/bin/python benchmarks/experiments/continual_evidence.py ENV [--runs R] [--groups G]

For the policy `iapo simulate` serves on runs 0..R-1 (psst-auto at T = 2,000 with the bench
cell's seeds), in every context, and for two cases:

- no drift: the trained arm a against the best arm b* on all queries, with 20,000 requests
  at a learning budget of 5%;
- drift (the served prompt loses 0.1 accuracy, as `iapo simulate --drift-at`): the drifted
  arm a against the best arm b* after the drift, with the 4,000 requests before the window
  of docs/continual.md at 10%.

A switch on evidence needs the lower bound of the gain, at 95% one-sided, above 0: with one
look and an oracle that names b* at once (no completion spent finding it: a lower bound on
what any rule pays), k = (z sd / gain)^2 samples of b*, where sd is the standard deviation of
one sample: b*'s group utility alone (unpaired; a's mean taken as known) or the difference
b* - a on the same query (paired). Each sample costs N_b* completions (none where b* is a's
prompt at a smaller N: served groups hold it). The standard deviations are measured: G
groups of each arm drawn from the environment's own sampler on uniformly drawn queries, as
`iapo simulate` draws its traffic, and scored by the estimator's group means.

Printed per case: the median completions needed (unpaired, paired), the median learning
completions available, and the share of (run, context) pairs where the paired need fits
the budget, over the contexts not already at their best arm. Cited by docs/continual.md.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import norm

from iapo.continual import GroupTable
from iapo.problem import arm_at
from iapo.pulls import Observation
from iapo.simulate import SimConfig, drift_of, trained_policy

Z = float(norm.ppf(0.95))


def group_utility(env, table: GroupTable, prompt: int, n: int, queries: np.ndarray,
                  rng: np.random.Generator, arms: tuple[int, ...]) -> list[np.ndarray]:
    """One group of n of ``prompt`` per query, its utility in every context as a sample of
    each arm (prompt, m), m in ``arms`` (each at most n): [G, C] each."""
    obs = Observation.from_sample(prompt, n, queries, env.sample(prompt, queries, n, rng))
    util, _, sizes, _ = table.group_means([obs])
    return [util[sizes == m] for m in arms]


def need(env, q: np.ndarray, arms: list[tuple[int, int]], groups: int,
         rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Per context, the completions (unpaired, paired) an evidence switch from the served
    arm to the best one needs under exact Q ``q`` [C, P, N], and the gain; (0, 0, 0) where
    it is best."""
    problem = env.problem
    table = GroupTable(problem)
    out = []
    for c, (pa, na) in enumerate(arms):
        flat = q[c].reshape(-1)
        pb, nb = arm_at(int(flat.argmax()), problem.n_max)
        gain = float(flat.max() - q[c, pa, na - 1])
        if gain <= 1e-12:
            out.append((0.0, 0.0, 0.0))
            continue
        queries = rng.integers(0, env.n_queries, groups)
        if pa == pb:  # one group of the larger N holds both arms
            ub, ua = (u[:, c] for u in group_utility(env, table, pa, max(na, nb), queries,
                                                     rng, (nb, na)))
            cost = 0.0 if nb <= na else float(nb)
        else:
            ub = group_utility(env, table, pb, nb, queries, rng, (nb,))[0][:, c]
            ua = group_utility(env, table, pa, na, queries, rng, (na,))[0][:, c]
            cost = float(nb)
        k_unpaired = (Z * ub.std(ddof=1) / gain) ** 2
        k_paired = (Z * (ub - ua).std(ddof=1) / gain) ** 2
        out.append((k_unpaired * cost, k_paired * cost, gain))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("env")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[tuple[float, float, float]]] = {"no drift": [], "drift": []}
    # the drift window's regret, per run: every context's gap after the drift, and the part
    # of it that stays where even an oracle-named evidence switch does not fit the budget
    window: list[tuple[float, float]] = []
    for run in range(args.runs):
        env, _, choices = trained_policy(SimConfig(env=args.env, seed=args.seed), run)
        arms = [(c.prompt, int(c.n or 1)) for c in choices]
        population = np.arange(env.n_queries)
        served_n = float(np.mean([n for _, n in arms]))  # contexts equally likely here
        q = env.query_table(progress=False).q(env.problem, population)
        for need_u, need_p, gain in need(env, q, arms, args.groups, rng):
            if gain > 0:  # a context already at its best arm needs no switch
                rows["no drift"].append((need_u, need_p, 0.05 * 20_000 * served_n))
        env2, q2, what = drift_of(env, arms, 0.1, population, q)
        prompt = int(what["prompt"])
        total = kept = 0.0
        for (pa, _), (need_u, need_p, gain) in zip(arms, need(env2, q2, arms, args.groups,
                                                              rng), strict=True):
            # learning completions by the window's start: 4,000 requests since the drift for
            # the contexts it hit, 6,000 since serving began for the others
            available = 0.1 * (4_000 if pa == prompt else 6_000) * served_n
            if pa == prompt and gain > 0:  # the contexts the drift hit, not left best
                rows["drift"].append((need_u, need_p, available))
            total += gain
            kept += gain if need_p > available else 0.0
        window.append((total, kept))
    print(f"{args.env}: {args.runs} runs, psst-auto at T = 2,000; completions an evidence "
          "switch to the best arm needs (95%, one look, oracle-named), medians")
    print(f"  {'case':<9} {'contexts':>8} {'unpaired':>10} {'paired':>10} {'available':>10}"
          f" {'paired fits':>12}")
    for case, got in rows.items():
        a = np.array(got)
        print(f"  {case:<9} {a.shape[0]:>8} {np.median(a[:, 0]):>10,.0f} "
              f"{np.median(a[:, 1]):>10,.0f} {np.median(a[:, 2]):>10,.0f} "
              f"{np.mean(a[:, 1] <= a[:, 2]):>11.0%}")
    w = np.array(window)
    share = w[:, 1].sum() / w[:, 0].sum()
    print(f"  drift window (requests 6,000 to 7,000, 10%): at least {share:.2f} of frozen's "
          "regret stays, where no oracle-named switch fits the budget")


if __name__ == "__main__":
    main()
