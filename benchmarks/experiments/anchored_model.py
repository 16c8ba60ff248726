"""A per-query model anchored on one prompt's answers: whether its error at N_max depends less
on the prompt than the library's model's does, and what its best arm costs.

    .venv/bin/python benchmarks/experiments/anchored_model.py [--env math] [--reps 10]
        [--anchors 0,5,12] [--anchor-answers 0] [--groups 1] [--prompts 6] [--workers 2]

The library's per-query model (:class:`iapo.model.ModelQTable`, the fixed prior psst-auto
keeps on MATH and CommonsenseQA) pulls every prompt's estimate at N_max down by its prior, by
amounts that differ from prompt to prompt by more than the best prompts differ
(``model_bias.py --prompts 6``). Two answers to a query tell of its chance of the right answer
only through two moments, and the prior fills in the rest. A served prompt, sampled on every
request, knows each query far better. This experiment asks what that knowledge is worth, as
a model that is not in the library:

- the **anchor** is one prompt whose answer distribution on every query is known: exactly
  (``--anchor-answers 0``), or from M answers per query (the served groups a gateway logs);
- every prompt p: logit(chance of the right answer on query q) ~ N(a_p + b_p x_q, s_p^2),
  where x_q is the anchor's logit on q (clipped at 1e-3 from 0 and 1), fitted by maximum
  likelihood to p's groups of two answers (Gauss-Hermite over the normal, 16 nodes); p's wrong
  answers on q are split as the anchor's are (evenly over the other categories where the
  anchor has none);
- its Q(p, N_max) on a query is the exact majority-vote credit
  (:func:`iapo.exact.mv_credit_probability`) averaged over that normal, then over the
  training queries.

For repetitions r = 0..R-1 (split r of the queries, 80/20; groups of two answers per
prompt on ``--groups`` times as many uniformly drawn training queries as there are: at 1,
the data of ``model_bias.py``), and the anchor ranked k-th by exact Q(p, N_max) on the
training queries (first context, no cost), it prints:

- the regret at N_max of each estimator's best prompt (exact Q of the best less exact Q of
  the chosen; mean and SEM over repetitions);
- for the ``--prompts`` best prompts, each estimator's mean error and the error's standard
  deviation over repetitions.

Cited by docs/continual.md.
"""

from __future__ import annotations

import argparse

import joblib
import numpy as np
from scipy import special
from scipy.optimize import minimize

from iapo.envs import get_environment
from iapo.exact import mv_credit_probability
from iapo.model import ModelQTable
from iapo.oracle import SimulatedOracle
from iapo.pulls import Pull
from iapo.split import train_test_split

NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(16)
WEIGHTS = WEIGHTS / WEIGHTS.sum()
CLIP = 1e-3


def fit_link(x: np.ndarray, right: np.ndarray) -> tuple[float, float, float]:
    """(a, b, s) of logit(theta) ~ N(a + b x, s^2), by maximum likelihood of ``right`` of two
    answers on queries with anchor logits ``x``."""
    def nll(th: np.ndarray) -> float:
        theta = special.expit(th[0] + th[1] * x[:, None] + np.exp(th[2]) * NODES[None])
        pmf = np.where(right[:, None] == 2, theta ** 2,
                       np.where(right[:, None] == 1, 2 * theta * (1 - theta), (1 - theta) ** 2))
        return float(-np.log(np.maximum(pmf @ WEIGHTS, 1e-300)).sum())
    th = minimize(nll, np.array([0.0, 1.0, np.log(0.5)]), method="Nelder-Mead",
                  options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000}).x
    return float(th[0]), float(th[1]), float(np.exp(th[2]))


def anchored_q(x: np.ndarray, share: np.ndarray, gold: np.ndarray, link: tuple[float, float,
               float], n: int) -> float:
    """Q(p, n) of the anchored model on queries with anchor logits ``x`` [X] and wrong-answer
    shares ``share`` [X, L] (0 at the gold)."""
    a, b, s = link
    theta = special.expit(a + b * x[:, None] + s * NODES[None])  # [X, H]
    rows = (1 - theta)[:, :, None] * share[:, None, :]
    rows[np.arange(x.size), :, gold] = theta
    credit = mv_credit_probability(rows.reshape(-1, share.shape[1]), np.repeat(gold, NODES.size),
                                   n)[:, -1]
    return float((credit.reshape(x.size, -1) @ WEIGHTS).mean())


def one(env_name: str, r: int, rank: int, answers: int, groups: int
        ) -> tuple[np.ndarray, ...]:
    """Repetition ``r`` with the anchor ranked ``rank``: exact Q(p, N_max) on the training
    queries (first context), the library model's and the anchored model's, each [P]."""
    env = get_environment(env_name)
    problem = env.problem
    arrays = env._arrays()
    probs, gold = arrays["probs"], arrays["gold"].astype(np.int64)
    n_prompts, n_queries, n_cat = probs.shape
    n = problem.n_max
    train, _ = train_test_split(n_queries, r)
    exact = env.query_table(progress=False).q(problem, train)[0, :, n - 1]
    anchor = int(np.argsort(-exact, kind="stable")[rank])
    rng = np.random.default_rng([r, rank, answers])
    seen = probs[anchor, train]
    if answers:
        seen = rng.multinomial(answers, seen) / answers
    right = seen[np.arange(train.size), gold[train]]
    x = special.logit(np.clip(right, CLIP, 1 - CLIP))
    wrong = seen.copy()
    wrong[np.arange(train.size), gold[train]] = 0
    mass = wrong.sum(1, keepdims=True)
    even = (np.arange(n_cat)[None] != gold[train][:, None]) / (n_cat - 1)
    share = np.where(mass > 0, wrong / np.where(mass > 0, mass, 1), even)
    where = np.full(n_queries, -1)
    where[train] = np.arange(train.size)
    obs = SimulatedOracle(env, train, 10**9, np.random.default_rng(r)).pull(
        [Pull(p, 2, groups * train.size) for p in range(n_prompts)])
    model = ModelQTable(problem)
    model.update(obs)
    base = model.mean[0, :, n - 1]
    est = np.empty(n_prompts)
    for o in obs:  # one fit per prompt, not per completion
        k = (np.asarray(o.labels) == np.asarray(o.gold)[:, None]).sum(1)
        link = fit_link(x[where[o.queries]], k)
        est[o.prompt] = anchored_q(x, share, gold[train], link, n)
    return exact, base, est


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", default="math")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--anchors", default="0,5,12", help="ranks of the anchor prompt")
    ap.add_argument("--anchor-answers", type=int, default=0,
                    help="answers per query the anchor is known from (0: exactly)")
    ap.add_argument("--groups", type=int, default=1,
                    help="groups of two per prompt, in training queries")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    env = get_environment(args.env)
    no_answer = getattr(env, "no_answer", None)
    if env.problem.aggregator != "mv" or getattr(env, "observed", None) is not None or (
            no_answer is not None and np.any(no_answer >= 0)):
        ap.error(f"{args.env}: the anchored model needs a majority-voting environment with "
                 "every (prompt, query) observed and no 'no answer' category (math, "
                 "commonsenseqa)")
    ranks = [int(a) for a in args.anchors.split(",")]
    jobs = [(r, k) for k in ranks for r in range(args.reps)]
    out = joblib.Parallel(n_jobs=args.workers)(
        joblib.delayed(one)(args.env, r, k, args.anchor_answers, args.groups) for r, k in jobs)
    known = "exactly" if not args.anchor_answers else f"from {args.anchor_answers} answers a query"
    print(f"{args.env}, N_max, first context, {args.reps} repetitions, {args.groups} group(s) "
          f"of two per prompt and training query; anchor known {known}")
    for k in ranks:
        runs = [o for (_, kk), o in zip(jobs, out, strict=True) if kk == k]
        exact = np.array([o[0] for o in runs])
        errors = {"model": np.array([o[1] for o in runs]) - exact,
                  "anchored": np.array([o[2] for o in runs]) - exact}
        print(f"anchor ranked {k}:")
        for name, err in errors.items():
            chosen = np.argmax(exact + err, axis=1)
            gap = exact.max(1) - exact[np.arange(len(runs)), chosen]
            print(f"  {name:<9} regret of its best prompt {gap.mean():.4f} "
                  f"({gap.std(ddof=1) / np.sqrt(len(runs)):.4f})")
        top = np.argsort(-exact.mean(0), kind="stable")[:args.prompts]
        for p in top:
            print(f"  prompt {p:>3}: Q {exact[:, p].mean():.4f}; error (sd over repetitions) "
                  + ", ".join(f"{name} {err[:, p].mean():+.4f} ({err[:, p].std(ddof=1):.4f})"
                              for name, err in errors.items()))


if __name__ == "__main__":
    main()
