"""What the default learner reaches with every learning completion the continual policy could
spend, given at once and told the drift: a reference for the targets of docs/continual.md.

    .venv/bin/python benchmarks/experiments/continual_reference.py ENV [--runs R] [--workers W]
        [--drift-budgets 0.1,0.2,0.4] [--learners psst-auto,psst-model]

For runs 0..R-1, the policy `iapo simulate` serves (psst-auto at T = 2,000 with the bench
cell's seeds), and two cases:

- no drift: psst-auto trained afresh on the traffic's own queries (all of the environment's)
  with T = 2,000 plus 5% of the completions the trained policy serves in 20,000 requests;
- drift (the served prompt loses 0.1 accuracy, as `iapo simulate --drift-at 2000`): psst-auto
  trained afresh on the drifted traffic with T = 2,000 plus 10% of the completions served
  in the 6,000 requests before the window (requests 6,000 to 7,000).

Both are generous to the reference in what it knows and when: the whole learning budget at
once, on the traffic's truth from the first completion, with no drift to detect, no request
served meanwhile and no evidence asked before it acts (PSST's own choice, its estimate's
best). Not in volume: the continual policy also samples its served arm on every request
(10 to 20 times its learning completions), which the reference does not get. The regrets
are expectations over the contexts' probabilities, not the realised traffic (0.0403 here
against simulate's 0.0401 for MATH's frozen window).
Its regret per request is exact (the gap of its arms on the traffic's queries, weighted by
the contexts' probabilities); the frozen policy's is the trained arms' gap on the same truth.

``--drift-budgets``: the drift case at each of these learning budgets instead of 10% alone
(the no-drift case stays at 5%): how large a budget the reference needs for a given window
ratio.

``--learners``: the reference trained by each of these learners of the library
(:data:`iapo.learners.LEARNERS`; default: the default learner alone), on the same oracle
seeds: whether another learner does more with the same completions.

Printed per case: the mean regret per request (SEM over runs) of the frozen policy and of
the reference, and their ratio (of the means, as docs/continual.md's window ratio). Cited
by docs/continual.md.
"""

from __future__ import annotations

import argparse

import joblib
import numpy as np

from iapo.bench.runner import seed_sequence
from iapo.learners import get_learner
from iapo.oracle import SimulatedOracle
from iapo.settings import DEFAULT_LEARNER
from iapo.simulate import SimConfig, Truth, _gap_of, drift_of, trained_policy

TRAIN = 2000
CASES = {"no drift": (0.05, 20_000), "drift": (0.1, 6_000)}  # learning budget, requests


def regret(q: np.ndarray, arms: list[tuple[int, int]], probs: np.ndarray) -> float:
    """Expected regret per request of serving ``arms`` under exact Q ``q`` [C, P, N]: each
    context's gap (as `iapo simulate` counts it), weighted by its probability."""
    return float(np.dot(probs, _gap_of(Truth(0, q), arms)))


def one_run(name: str, seed: int, run: int, cases: dict[str, tuple[float, int]],
            learners: tuple[str, ...] = (DEFAULT_LEARNER,)
            ) -> dict[tuple[str, str], tuple[float, float, int]]:
    """Per (case, learner): (frozen's regret per request, the reference's, its T)."""
    env, _, trained = trained_policy(SimConfig(env=name, seed=seed, train_budget=TRAIN,
                                               test_fraction=0.2), run)
    problem = env.problem
    arms = [(c.prompt, int(c.n or 1)) for c in trained]
    probs = problem.grid.probabilities
    served_n = float(np.dot(probs, [n for _, n in arms]))  # completions per request
    population = np.arange(env.n_queries)
    q = env.query_table(progress=False).q(problem, population)
    env2, q2, _ = drift_of(env, arms, 0.1, population, q)
    out = {}
    for case, (share, requests) in cases.items():
        world, truth = (env, q) if case == "no drift" else (env2, q2)
        budget = TRAIN + int(share * requests * served_n)
        for learner in learners:
            oracle = SimulatedOracle(world, population, budget, np.random.default_rng(
                seed_sequence(seed, run, 5, budget, 0)))
            choices = get_learner(learner).learner(
                problem, oracle, budget,
                np.random.default_rng(seed_sequence(seed, run, 5, budget, 1))).choices
            ref = [(c.prompt, int(c.n or 1)) for c in choices]
            out[case, learner] = (regret(truth, arms, probs), regret(truth, ref, probs),
                                  budget)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("env")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--drift-budgets", default="0.1",
                    help="learning budgets of the drift case, comma-separated")
    ap.add_argument("--learners", default=DEFAULT_LEARNER,
                    help="the learners that train the reference, comma-separated")
    args = ap.parse_args()
    learners = tuple(args.learners.split(","))
    for learner in learners:
        get_learner(learner)  # an unknown name stops here, with the names it knows
    cases = {"no drift": CASES["no drift"]}
    budgets = [float(b) for b in args.drift_budgets.split(",")]
    for b in budgets:
        cases["drift" if budgets == [0.1] else f"drift {b:.0%}"] = (b, CASES["drift"][1])
    results = joblib.Parallel(n_jobs=args.workers)(
        joblib.delayed(one_run)(args.env, args.seed, r, cases, learners)
        for r in range(args.runs))
    print(f"{args.env}: {args.runs} runs; regret per request (SEM) of the T = 2,000 policy "
          f"(frozen) and of {', '.join(learners)} retrained at once with the whole learning "
          "budget")
    width = max(10, *(len(x) for x in learners))
    print(f"  {'case':<10} {'learner':<{width}} {'median T':>9} {'frozen':>16} "
          f"{'reference':>16} {'ratio':>6}")
    for case in cases:
        for learner in learners:
            a = np.array([r[case, learner] for r in results])
            sem = a[:, :2].std(axis=0, ddof=1) / np.sqrt(len(a))
            print(f"  {case:<10} {learner:<{width}} {np.median(a[:, 2]):>9,.0f} "
                  f"{a[:, 0].mean():>9.4f} ({sem[0]:.4f}) {a[:, 1].mean():>9.4f} "
                  f"({sem[1]:.4f}) {a[:, 1].mean() / a[:, 0].mean():>6.2f}")


if __name__ == "__main__":
    main()
