"""The paper's two synthetic environments (Table 1), generated from a seed.

Both are built so that inference-awareness matters, as the paper's motivating examples show:
which prompt is best depends on N, and prompts differ in token cost.

``synth-bernoulli`` (MV; 32 prompts, N_max 32, 520 queries, 3 budget contexts). Each answer is
right or wrong (two categories). Prompt p on query x answers correctly with probability
theta[p, x] = sigmoid(mu_p + sigma_p * (0.7 z_x + 0.71 e_px)), with a shared query difficulty
z_x ~ N(0, 1) and pair noise e_px ~ N(0, 1). The *level* mu_p ~ U(-0.3, 1.3) sets single-shot
accuracy; the *spread* sigma_p ~ U(0.3, 3.0) sets how polarized a prompt is across queries.
Majority voting drives theta > 1/2 to success and theta < 1/2 to failure, so a steady prompt
(small spread, theta a little above 1/2 everywhere, like the paper's "62% on both queries")
overtakes a polarized one with a better single shot (like "40% / 90%") as N grows. A
completion of prompt p costs 0.01 * r_p, r_p ~ U(0.35, 1) rescaled so that the largest is 1
(relative tokens, as the paper normalizes cost); budget levels low / mid / high weigh cost by
0.0 / 0.2 / 1.0, as in the paper's MV environments.

``synth-categorical`` (BoN; 32 prompts, N_max 32, 2 objectives scored 0..4 plus cost, 512
queries, 27 contexts: weight pairs (0.1, 0.9) .. (0.9, 0.1) times 3 budget levels). One
completion's score pair is a discretized bivariate normal on the 5 x 5 grid {0..4}^2, with mean
m_p + d_x + e_px (a prompt's style, a query shift, pair noise), standard deviation tau_p and
within-completion correlation rho_p. Prompts trade the two objectives against each other (their
means lie around a line m_1 + m_2 ~ const), and a prompt's *diversity* tau_p ~ U(0.25, 1.6)
decides how much Best-of-N gains: a diverse prompt with a lower mean overtakes a focused one as
N grows, and which prompt is best depends on the weights. A completion costs 0.08 * r_p (r_p as
above); budget levels low / mid / high weigh cost by 0.0 / 0.2 / 1.0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from iapo.envs.tabular import BoNEnvironment, MVEnvironment
from iapo.problem import ContextGrid, Objective

BUDGETS = {"low": 0.0, "mid": 0.2, "high": 1.0}
BON_WEIGHT_PAIRS = [(round(a, 1), round(1 - a, 1)) for a in np.arange(0.1, 0.95, 0.1)]


def _relative_tokens(rng: np.random.Generator, n_prompts: int) -> np.ndarray:
    r = rng.uniform(0.35, 1.0, n_prompts)
    return r / r.max()


def synth_bernoulli(
    seed: int = 0,
    n_prompts: int = 32,
    n_queries: int = 520,
    n_max: int = 32,
    cacheable: bool = False,
) -> MVEnvironment:
    """A fresh ``synth-bernoulli`` instance drawn from ``seed``."""
    level, spread, logit_noise, cost = _bernoulli_draw(seed, n_prompts, n_queries)
    return _bernoulli_env(level[:, None] + spread[:, None] * logit_noise, cost, n_max,
                          f"synthetic Bernoulli MV environment (seed {seed})", cacheable)


# the pair's logit noise 0.7 z_x + 0.71 e_px has this standard deviation, for every prompt
_BERNOULLI_NOISE_SD = float(np.hypot(0.7, 0.71))


def _bernoulli_draw(seed: int, n_prompts: int, n_queries: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A ``synth-bernoulli`` instance's levels [P], spreads [P], logit noise [P, X] and
    completion costs [P], drawn from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([0xB3, seed]))
    level = rng.uniform(-0.3, 1.3, n_prompts)
    spread = rng.uniform(0.3, 3.0, n_prompts)
    difficulty = rng.standard_normal(n_queries)
    noise = rng.standard_normal((n_prompts, n_queries))
    logit_noise = 0.7 * difficulty[None, :] + 0.71 * noise
    cost = 0.01 * _relative_tokens(rng, n_prompts)
    return level, spread, logit_noise, cost


def _bernoulli_env(logit: np.ndarray, cost: np.ndarray, n_max: int, description: str,
                   cacheable: bool) -> MVEnvironment:
    theta = 1.0 / (1.0 + np.exp(-logit))
    probs = np.stack([theta, 1.0 - theta], axis=-1)  # category 0 is the right answer
    return MVEnvironment("synth-bernoulli", probs, np.zeros(logit.shape[1], dtype=np.int16),
                         cost, BUDGETS, n_max, description=description, cacheable=cacheable)


def synth_bernoulli_population_q(seed: int = 0, n_prompts: int = 32, n_queries: int = 520,
                                 n_max: int = 32, nodes: int = 96) -> np.ndarray:
    """Q [C, P, N_max] of the ``synth-bernoulli`` instance of ``seed`` over the distribution
    its queries are drawn from, not over its finite sample of them: the truth an estimate
    from sampled queries aims at.

    Each prompt's logit on a random query is level_p + spread_p * s * Z with Z ~ N(0, 1) and
    s = sqrt(0.7^2 + 0.71^2), so a prompt's expected utility is a one-dimensional normal
    integral, taken by Gauss-Hermite quadrature on ``nodes`` nodes: the environment's own exact
    per-query table on the nodes, weighted. (Q is linear in the per-query table, and a
    prompt's Q needs only its own marginal over queries.)"""
    level, spread, _, cost = _bernoulli_draw(seed, n_prompts, n_queries)
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    logit = level[:, None] + spread[:, None] * _BERNOULLI_NOISE_SD * x[None, :]
    env = _bernoulli_env(logit, cost, n_max, "quadrature nodes", False)
    table = env.query_table(progress=False)
    reward = np.einsum("x,pxwn->pwn", w / w.sum(), table.task)  # [P, W, N]
    # one "query" holding the expectation: Q's own formula then prices it
    population = dataclasses.replace(table, task=reward[:, None], cost=table.cost[:, :1])
    return population.q(env.problem)


def synth_categorical(
    seed: int = 0,
    n_prompts: int = 32,
    n_queries: int = 512,
    n_max: int = 32,
    cacheable: bool = False,
) -> BoNEnvironment:
    """A fresh ``synth-categorical`` instance drawn from ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([0xCA7, seed]))
    levels = np.arange(5.0)
    # prompt styles: a position along the trade-off line and an overall quality
    trade = rng.uniform(-1.0, 1.0, n_prompts)
    quality = rng.uniform(3.2, 4.6, n_prompts)
    mean = np.stack([quality / 2 + trade, quality / 2 - trade], axis=-1)  # [P, 2]
    tau = rng.uniform(0.25, 1.6, n_prompts)
    # diverse prompts pay for their diversity with a lower mean
    mean -= 0.45 * (tau - 0.25)[:, None]
    rho = rng.uniform(-0.6, 0.3, n_prompts)
    shift = 0.5 * rng.standard_normal((n_queries, 2))
    noise = 0.3 * rng.standard_normal((n_prompts, n_queries, 2))
    mu = mean[:, None, :] + shift[None, :, :] + noise  # [P, X, 2]
    g1, g2 = np.meshgrid(levels, levels, indexing="ij")
    grid = np.stack([g1.ravel(), g2.ravel()], axis=-1)  # [25, 2]
    d = grid[None, None, :, :] - mu[:, :, None, :]  # [P, X, 25, 2]
    var = (tau**2)[:, None, None]
    r = rho[:, None, None]
    maha = (d[..., 0] ** 2 - 2 * r * d[..., 0] * d[..., 1] + d[..., 1] ** 2) / (var * (1 - r**2))
    logp = -0.5 * maha
    probs = np.exp(logp - logp.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    cost = 0.08 * _relative_tokens(rng, n_prompts)
    scores = np.empty((n_prompts, n_queries, grid.shape[0], 3))
    scores[..., :2] = grid
    scores[..., 2] = cost[:, None, None]
    objectives = [Objective("obj1", 0.0, 4.0), Objective("obj2", 0.0, 4.0)]
    ctx = ContextGrid.product(objectives, BON_WEIGHT_PAIRS, BUDGETS)
    return BoNEnvironment(
        "synth-categorical",
        scores,
        probs,
        ctx,
        n_max,
        description=f"synthetic categorical BoN environment (seed {seed})",
        cacheable=cacheable,
    )
