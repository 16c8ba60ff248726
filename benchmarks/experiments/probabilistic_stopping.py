"""Probabilistic stopping (adaptive self-consistency's Beta rule) against ``decided``.

    .venv/bin/python benchmarks/experiments/probabilistic_stopping.py [--samples 400] [--seed 0]

``decided`` stops only when no remaining answer can change the vote, so its answer is exactly
that of all N. The Beta rule stops once P(p_leader > p_runner-up | votes) >= tau under a
uniform prior (:func:`iapo.stopping.leader_probability`), or once decided: it saves more
completions but can return another answer than all N would, so it changes the answer
distribution and Q does not price it.

For every context of ``math`` and ``commonsenseqa``, the arm (p, N) that is optimal with
``decided`` arms (waves of 1) is drawn ``--samples`` times on every query with the
environment's answer probabilities; the same sequences are read by all N, by ``decided`` and by
the Beta rule at several tau. Printed (and written to docs/stopping-probabilistic.md): the MV
accuracy (1/t credit) of each, the accuracy lost against all N with its standard error over
queries, the completions paid, and the change of Q (accuracy minus the context's cost weight
times the cost of the completions paid) against ``decided``.

Cited by docs/stopping.md and docs/stopping-probabilistic.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from iapo.envs import best_arms, get_environment
from iapo.problem import Stopping
from iapo.stopping import leader_probability

TAUS = (0.8, 0.9, 0.95, 0.99)


def draw(probs: npt.NDArray[np.float64], n: int, samples: int,
         rng: np.random.Generator) -> npt.NDArray[np.int8]:
    """Answer labels [X, S, n] drawn i.i.d. from each query's probabilities [X, L]."""
    cdf = np.cumsum(probs, axis=1)[:, None, None, :-1]
    u = rng.random((probs.shape[0], samples, n, 1))
    return (u > cdf).sum(axis=-1).astype(np.int8)


def read(labels: npt.NDArray[np.int8], gold: npt.NDArray[np.integer], n_cat: int
         ) -> dict[str, npt.NDArray[np.float64]]:
    """Credit and completions paid per sequence [X, S] for all N, decided and each tau."""
    n = labels.shape[-1]
    counts = np.cumsum(labels[..., None] == np.arange(n_cat), axis=2)  # [X, S, t, L]
    top2 = np.sort(counts, axis=-1)[..., -2:]
    lead, second = top2[..., 1], top2[..., 0]
    t = np.arange(1, n + 1)
    decided = (lead - second > n - t) | (t == n)  # [X, S, t]
    posterior = leader_probability(lead, second)

    def credit_at(stop: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        c = np.take_along_axis(counts, stop[..., None, None], axis=2)[:, :, 0, :]  # [X, S, L]
        winners = c == c.max(axis=-1, keepdims=True)
        g = np.take_along_axis(winners, gold[:, None, None].astype(np.intp), axis=-1)[..., 0]
        return g / winners.sum(axis=-1)

    out = {"all": credit_at(np.full(labels.shape[:2], n - 1)),
           "paid_all": np.full(labels.shape[:2], float(n))}
    first = decided.argmax(axis=2)
    out["decided"], out["paid_decided"] = credit_at(first), first + 1.0
    for tau in TAUS:
        stop = (decided | (posterior >= tau)).argmax(axis=2)
        out[f"tau{tau}"], out[f"paid_tau{tau}"] = credit_at(stop), stop + 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/stopping-probabilistic.md"))
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    lines = ["# Probabilistic stopping against `decided`", "",
             "Made by `.venv/bin/python benchmarks/experiments/probabilistic_stopping.py "
             f"--samples {args.samples} --seed {args.seed}` (its docstring says how). The Beta "
             "rule **changes the answer distribution**: its accuracy is not that of all N, and "
             "Q does not price it; `decided` returns exactly the answer of all N. Accuracy: "
             "the MV credit on the same sequences (lost: against all N, SEM over queries in "
             "parentheses). Completions: paid per query. Q change: accuracy change minus the "
             "context's cost weight times the cost of the completions saved, against "
             "`decided`.", ""]
    for name in ("math", "commonsenseqa"):
        base = get_environment(name)
        env = base.with_stopping(Stopping("decided", 1))
        q = env.q()
        grid = env.problem.grid
        lines += [f"## {name}", "",
                  "| context | arm | rule | accuracy | lost vs all N | completions | Q change "
                  "vs decided |", "|---|---|---|---|---|---|---|"]
        for c, arm in enumerate(best_arms(q)):
            probs = base.probs[arm.prompt]
            labels = draw(probs, arm.n, args.samples, rng)
            got = read(labels, base.gold, probs.shape[1])
            per_query = {k: v.mean(axis=1) for k, v in got.items()}  # [X]
            cw = float(grid.cost_weights[c]) * float(base.cost[arm.prompt])
            for rule in ("all", "decided", *(f"tau{t}" for t in TAUS)):
                acc = per_query[rule]
                lost = per_query["all"] - acc
                paid = per_query[f"paid_{rule}"]
                dq = (acc - per_query["decided"]).mean() - cw * (
                    paid - per_query["paid_decided"]).mean()
                label = {"all": "all N", "decided": "decided"}.get(
                    rule, f"Beta, tau = {rule[3:]}")
                lines.append(
                    f"| {grid.keys[c]} | prompt {arm.prompt}, N {arm.n} | {label} | "
                    f"{acc.mean():.4f} | {lost.mean():+.4f} "
                    f"({lost.std(ddof=1) / np.sqrt(lost.size):.4f}) | {paid.mean():.2f} | "
                    f"{dq:+.4f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
