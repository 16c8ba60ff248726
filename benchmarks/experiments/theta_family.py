"""Which distribution of a query's chance of a right answer should the report's posterior
assume? Logit-normal (iapo.posterior) or Beta, judged on the paper's real data.

For every prompt of a real majority-voting environment (the paper's MATH or CommonsenseQA
data), each query's chance theta of the right answer is known from the data. The script draws
``--answers`` answers per query (2: what psst-auto's screening sees; a wrong answer is any
other answer), fits each family to them by maximum likelihood (the per-query binomial mixed
over the family, on iapo.posterior's cells of theta), and compares the fitted Q(N) of majority
voting between a right and a wrong answer with the truth from the known thetas, for
N = 1, 5, 9 and 31: mean error (bias) and mean absolute error over prompts.

    .venv/bin/python benchmarks/experiments/theta_family.py --env commonsenseqa --answers 2

Cited by docs/report.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.special import betainc
from scipy.stats import binom

from iapo import posterior
from iapo.envs import get_environment
from iapo.exact import mv_credit_probability

N_SHOWN = (1, 5, 9, 31)
Weights = Callable[[np.ndarray], np.ndarray]


def beta_weights(h: np.ndarray) -> np.ndarray:
    """Cell masses of Beta(m s, (1 - m) s), h = (logit m, log s)."""
    m, s = 1.0 / (1.0 + np.exp(-h[0])), np.exp(h[1])
    w = np.diff(betainc(m * s, (1 - m) * s, posterior.EDGES))
    return np.asarray(w / w.sum())


def logit_normal_weights(h: np.ndarray) -> np.ndarray:
    """Cell masses of logit(theta) ~ N(mu, sigma^2), h = (mu, log sigma)."""
    return posterior.theta_weights(h[:1], h[1:])[0]


def fit(weights: Weights, k: np.ndarray, n: np.ndarray) -> np.ndarray:
    pmf = binom.pmf(k[:, None], n[:, None], posterior.THETA[None])  # [X, cells]

    def nll(h: np.ndarray) -> float:
        return -float(np.log(np.maximum(pmf @ weights(h), 1e-300)).sum())

    fits = [minimize(nll, np.array(x0), method="Nelder-Mead",
                     options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 2000})
            for x0 in ([0.5, 0.5], [1.5, -0.5], [0.0, 1.5])]
    return np.asarray(min(fits, key=lambda r: r.fun).x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="commonsenseqa", choices=("math", "commonsenseqa"))
    ap.add_argument("--answers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    env = get_environment(args.env)
    rng = np.random.default_rng(args.seed)
    p, x, _ = env.probs.shape
    theta = env.probs[np.arange(p)[:, None], np.arange(x)[None], env.gold[None].astype(int)]
    two = np.stack([posterior.THETA, 1.0 - posterior.THETA], axis=1)
    n_max = max(N_SHOWN)
    cell_credit = mv_credit_probability(two, np.zeros(posterior.THETA.size, dtype=np.int64),
                                        n_max)
    cols = [n - 1 for n in N_SHOWN]
    families: dict[str, Weights] = {"logit-normal": logit_normal_weights, "beta": beta_weights}
    errors: dict[str, list[np.ndarray]] = {name: [] for name in families}
    for prompt in range(p):
        t = theta[prompt]
        truth = mv_credit_probability(np.stack([t, 1.0 - t], axis=1),
                                      np.zeros(t.size, dtype=np.int64), n_max).mean(axis=0)
        k = rng.binomial(args.answers, t)
        n = np.full(k.size, args.answers)
        for name, weights in families.items():
            est = weights(fit(weights, k, n)) @ cell_credit
            errors[name].append(est[cols] - truth[cols])
    out = {"env": args.env, "answers": args.answers, "prompts": p, "queries": x, "N": N_SHOWN}
    for name, e in errors.items():
        arr = np.array(e)
        out[name] = {"bias": arr.mean(axis=0).round(4).tolist(),
                     "mae": np.abs(arr).mean(axis=0).round(4).tolist()}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
