"""How sure a run can be of its choice, for majority voting with a right and a wrong answer:
a hierarchical logit-normal posterior of every arm's Q.

A plain bootstrap of the learner's estimate is not calibrated (docs/report.md): it keeps the
learner's selection (the chosen arm's estimate is the luckiest one), its model's prior (the
Dirichlet model leans towards 1/2 with few answers per query), and it cannot see the
uncertainty of a prompt tried on one or two queries. This posterior answers the three:

- **Per query**, prompt p answers right with chance theta; across the queries of the task,
  logit(theta) ~ N(mu_p, sigma_p^2): the random-effects logistic model of item response
  theory, a query's difficulty shifting every answer to it. (Fitted to two answers per query of
  the paper's MATH and CommonsenseQA data, it extrapolates Q to large N closer to the truth
  than a Beta does; docs/report.md.) A query's k right of n answers are binomial given theta.
  Q(p, N) for a new query is the exact majority-voting credit of N answers
  (:func:`iapo.exact.mv_credit_probability`, ties 1/t) averaged over theta's distribution,
  by its exact mass on each cell of ``THETA``; arms that stop once decided pay the exact
  expected completions (:func:`iapo.stopping.expected_paid`) averaged the same way.
- **Across prompts**, (mu, log sigma) ~ N(mean, diag(sd^2)), the hyperparameters chosen by
  the marginal likelihood of every prompt's answers on a grid (empirical Bayes; Gelman et al.,
  *Bayesian Data Analysis*, Section 5.3). A prompt seen on few queries borrows from the
  others; one seen on many stands on its own.
- **The posterior** of each prompt's (mu, sigma) is taken on a fine grid around its mass;
  draws of it give draws of the whole curve Q(p, 1..N_max), so the arms of one prompt move
  together.

The likelihood is the same whichever rule chose the queries and arms (adaptive sampling is
ignorable for it), which is why it does not inherit the learner's selection. It applies when
every completion is the query's gold answer or its one other answer, and enough queries show
it (:func:`binary_votes`);
``benchmarks/experiments/p_best.py --method posterior`` measures its calibration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp, ndtr
from scipy.stats import binom

from iapo.exact import mv_credit_probability
from iapo.memo import Memo
from iapo.problem import Problem
from iapo.pulls import Observation, abstain_categories
from iapo.utility import cost_term, unique_rows

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
# every prompt's distinct (k, n) once: owner, pairs, which, counts (tally)
Tally = tuple[IntArray, IntArray, IntArray, FloatArray]

THETA = (np.arange(400) + 0.5) / 400  # quadrature nodes (cell midpoints) of a query's chance
# of a right answer, and the cells' edges
EDGES = np.linspace(0.0, 1.0, THETA.size + 1)
LOGIT_MEAN = np.linspace(-6.0, 6.0, 61)  # the coarse grid of (mu, log sigma)
LOG_SD = np.linspace(-3.0, 1.8, 35)
STEP = np.array([LOGIT_MEAN[1] - LOGIT_MEAN[0], LOG_SD[1] - LOG_SD[0]])  # the coarse cells
# expected_credit's fit of the prior stops once a step would move its parameters by less than
# this: a point estimate moves by far less than its noise (the report's draws fit to
# fit_hyper's default, 1e-5)
CREDIT_TOLERANCE = 1e-3
# fit_hyper's search over (mean of mu, mean of log sigma, log sd of mu, log sd of log sigma):
# its bounds, the points it starts from (the best of them, every one inside the bounds), and
# the longest step it takes in each parameter
BOUNDS = (np.array([LOGIT_MEAN[0], LOG_SD[0], np.log(STEP[0]), np.log(STEP[1])]),
          np.array([LOGIT_MEAN[-1], LOG_SD[-1], np.log(LOGIT_MEAN[-1] - LOGIT_MEAN[0]),
                    np.log(LOG_SD[-1] - LOG_SD[0])]))
STARTS = np.array([[m, s, a, b] for m in (-4.0, -2.0, 0.0, 2.0, 4.0)
                   for s in (-2.0, -1.0, 0.0, 1.0)
                   for a in (np.log(0.5), np.log(2.0)) for b in (np.log(0.3), 0.0)])
START_STEP = np.array([1.0, 0.5, 0.7, 0.7])
# the search's central differences: their step, the planes of two parameters they cross, and
# the most steps it takes
DIFF_STEP = 1e-3
_PLANES = np.array([(i, j) for i in range(4) for j in range(4) if i < j])
_OFFSETS = DIFF_STEP * np.vstack(
    [np.zeros(4)]
    + [s * np.eye(4)[i] for i in range(4) for s in (1.0, -1.0)]
    + [a * np.eye(4)[i] + b * np.eye(4)[j] for i, j in _PLANES
       for a, b in ((1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0))])
MAX_STEPS = 500
# the answers are binary (one wrong answer per query) only once at least this many queries got
# two or more wrong answers, each query's all the same: a task with several wrong answers shows
# a second one on some of them (commonsenseqa's five choices on 21% to 34% of them in
# psst-auto's runs, benchmarks/experiments/binary_evidence.py; docs/default-learner.md), so
# that sparse answers to such a task do not look binary by chance
BINARY_EVIDENCE = 30
# theta_pmf's rows by (k, n), at most this many (3.2 KB each)
_PMF = Memo(5_000)
# coarse_log_likelihoods' rows by (k, n), at most this many (17 KB each: 51 MB)
_COARSE = Memo(3_000)
# expected_credit leaves out the coarse points of less posterior weight than this (2e-9 of the
# mass in all, at most)
MASS_FLOOR = 1e-12
LOCAL = 25  # the fine grid around a prompt's posterior mass: LOCAL x LOCAL points
LOCAL_SPAN = 14.0  # ... covering the coarse cells within this log density of its top


def evidence_needed(problem: Problem, evidence: int | None = None) -> int:
    """How many queries answered wrong twice or more binary-looking answers need to count as
    binary: none where the problem declares two answers (``Problem.answers``, a live task's
    two labels), else ``evidence`` (None: :data:`BINARY_EVIDENCE`)."""
    if problem.answers == 2:
        return 0
    return BINARY_EVIDENCE if evidence is None else evidence


def wrong_twice(wrong: npt.ArrayLike) -> int:
    """How many queries got two or more wrong answers, ``wrong`` [X] per query: the evidence
    that binary answers need (:func:`shown_binary`)."""
    return int((np.asarray(wrong) >= 2).sum())


def shown_binary(wrong: npt.ArrayLike, evidence: int | None = None) -> bool:
    """Whether answers whose every query got one distinct wrong answer at most (over every
    prompt) show that the task is binary: at least ``evidence`` (:data:`BINARY_EVIDENCE`)
    queries got two or more wrong answers, ``wrong`` [X] per query."""
    need = BINARY_EVIDENCE if evidence is None else evidence
    return wrong_twice(wrong) >= need


def binary_votes(problem: Problem, observations: Sequence[Observation],
                 evidence: int | None = None) -> list[tuple[IntArray, IntArray]] | None:
    """Per prompt, its queries' right answers k and answers n (two arrays [X_p]), or None when
    the run is not majority voting between a right and one wrong answer: some query got two
    different wrong answers, or one that the abstain rule does not count, or too few queries
    could have shown it (:func:`shown_binary`, :func:`evidence_needed`)."""
    if problem.aggregator != "mv":
        return None
    other: dict[int, int] = {}
    per: list[dict[int, list[int]]] = [{} for _ in range(problem.n_prompts)]
    for o in observations:
        if o.count == 0:
            continue
        if o.labels is None or o.gold is None:
            return None
        labels = o.labels.astype(np.int64)
        gold = o.gold.astype(np.int64)
        wrong = labels != gold[:, None]
        abstain = abstain_categories(problem, [o])
        if abstain is not None and np.any(wrong & (labels == abstain[:, None])):
            return None
        for q, row, bad in zip(o.queries.tolist(), labels, wrong, strict=True):
            for label in set(row[bad].tolist()):
                if other.setdefault(q, label) != label:
                    return None
            k, n = per[o.prompt].setdefault(q, [0, 0])
            per[o.prompt][q] = [k + int((~bad).sum()), n + int(row.size)]
    wrong_per_query: dict[int, int] = {}  # over every prompt
    for d in per:
        for q, (k, n) in d.items():
            wrong_per_query[q] = wrong_per_query.get(q, 0) + n - k
    if not shown_binary(list(wrong_per_query.values()), evidence_needed(problem, evidence)):
        return None
    return [(np.array([v[0] for v in d.values()], dtype=np.int64),
             np.array([v[1] for v in d.values()], dtype=np.int64)) for d in per]


def theta_weights(mu: npt.ArrayLike, log_sd: npt.ArrayLike) -> FloatArray:
    """The mass [G, len(THETA)] of each cell of ``THETA`` under logit(theta) ~ N(mu, sigma^2),
    for grid points (mu, log sigma) [G]: exact cell masses, rows summing to 1."""
    mu = np.asarray(mu, dtype=np.float64)[:, None]
    sd = np.exp(np.asarray(log_sd, dtype=np.float64))[:, None]
    with np.errstate(divide="ignore"):
        logit = np.log(EDGES) - np.log1p(-EDGES)  # -inf .. inf
    w = np.diff(ndtr((logit[None] - mu) / sd), axis=1)
    return np.asarray(w / w.sum(axis=1, keepdims=True))


def theta_pmf(pairs: IntArray) -> FloatArray:
    """P(k right of n answers | theta) on each node of ``THETA``, for each row (k, n) of
    ``pairs`` [M, 2]: [M, len(THETA)]. Rows are memoized (:data:`_PMF`): a run's fits meet
    the same pairs at every estimate."""
    keys = np.asarray(pairs, dtype=np.int64)

    def compute(idx: npt.NDArray[np.intp]) -> list[FloatArray]:  # rows of their own
        return [row.copy() for row in binom.pmf(keys[idx, :1], keys[idx, 1:], THETA[None])]

    return _PMF.rows(keys, THETA.size, compute)


def log_likelihood(k: IntArray, n: IntArray, weights: FloatArray) -> FloatArray:
    """log P(k right of n on each query) summed over the queries, theta distributed by each
    row of ``weights`` [G, len(THETA)]: [G]."""
    return log_likelihoods([(k, n)], weights)[0]


def log_likelihoods(votes: Sequence[tuple[IntArray, IntArray]], weights: FloatArray
                    ) -> FloatArray:
    """:func:`log_likelihood` of every prompt's ``votes`` at once: [P, G] (0 for a prompt with
    none); one product over the pairs (k, n) that occur in any prompt."""
    return _summed(tally(votes), len(votes), weights.shape[0], lambda pairs: np.log(
        np.maximum(weights @ theta_pmf(pairs).T, 1e-300)).T)


def coarse_log_likelihoods(pairs: IntArray) -> FloatArray:
    """log P(k right of n answers | the coarse grid's (mu, sigma)) for each row (k, n) of
    ``pairs`` [M, 2]: [M, G] (floored at 1e-300 as :func:`log_likelihoods` floors it). Rows
    are memoized (:data:`_COARSE`): every fit of a run meets the same pairs again."""
    keys = np.asarray(pairs, dtype=np.int64)
    _, _, coarse_w = coarse_grid()

    def compute(idx: npt.NDArray[np.intp]) -> list[FloatArray]:
        # row by row, so that a row's value (to the last bit) does not depend on which other
        # rows were computed with it, nor the run's results on what ran before in the process
        return [np.log(np.maximum(coarse_w @ row, 1e-300)) for row in theta_pmf(keys[idx])]

    return _COARSE.rows(keys, coarse_w.shape[0], compute)


def tally(votes: Sequence[tuple[IntArray, IntArray]]) -> Tally:
    """Every prompt's distinct (k, n) once: (owner [M], the prompt of each distinct row; pairs
    [K, 2], each (k, n) once whoever had it; which [M], each row's pair; counts [M], how many
    of the prompt's queries had it). ``votes`` from :func:`binary_votes`."""
    sizes = [k.size for k, _ in votes]
    if not sum(sizes):
        none = np.zeros(0, dtype=np.int64)
        return none, np.zeros((0, 2), dtype=np.int64), none, np.zeros(0)
    rows = np.stack([np.repeat(np.arange(len(votes)), sizes),
                     np.concatenate([k for k, _ in votes]),
                     np.concatenate([n for _, n in votes])], axis=1)
    distinct, inverse = unique_rows(rows)
    counts = np.bincount(inverse, minlength=distinct.shape[0]).astype(np.float64)
    pairs, which = unique_rows(distinct[:, 1:])
    return distinct[:, 0], pairs, which, counts


def _summed(counted: Tally, n_prompts: int, width: int,
            per_pair: Callable[[IntArray], FloatArray]) -> FloatArray:
    """Each prompt's sum over its queries of ``per_pair`` [pairs, width], the log likelihood
    of each distinct (k, n) of the :func:`tally` ``counted``: [P, width] (0 for a prompt with
    no answers)."""
    owner, pairs, which, counts = counted
    if not owner.size:
        return np.zeros((n_prompts, width))
    size = pairs.shape[0]
    times = np.bincount(owner * size + which, counts, n_prompts * size).reshape(n_prompts,
                                                                                size)
    return np.asarray(times @ per_pair(pairs))


def _normal_logpdf(x: FloatArray, mean: float | FloatArray, sd: float | FloatArray
                   ) -> FloatArray:
    return np.asarray(-0.5 * ((x - mean) / sd) ** 2 - np.log(sd))


class Hyper:
    """The normal prior of (mu, log sigma) across prompts; ``x``: the parameters it was fitted
    as (:func:`fit_hyper`)."""

    def __init__(self, mean: tuple[float, float], sd: tuple[float, float],
                 x: FloatArray | None = None) -> None:
        self.mean, self.sd, self.x = mean, sd, x

    def log_density(self, mu: FloatArray, log_sd: FloatArray) -> FloatArray:
        return (_normal_logpdf(mu, self.mean[0], self.sd[0])
                + _normal_logpdf(log_sd, self.mean[1], self.sd[1]))


def log_marginals(loglik: FloatArray, gm: FloatArray, gs: FloatArray
                  ) -> Callable[[FloatArray, FloatArray], FloatArray]:
    """log P(every prompt's answers | a prior) for many priors at once, as a function of their
    means and sds [S, 2] (of mu, of log sigma; :class:`Hyper`'s): [S]. Per prompt
    log sum_g exp(loglik + log mass(g)) over the coarse grid (gm, gs) [G], a cell's mass its
    normalized density, summed over the prompts ``loglik`` [P, G]. By one product per call,
    top + log(scaled @ masses); a prompt whose sum underflows there is summed in logs."""
    top = loglik.max(axis=1)
    # the density is a sum of one term in mu and one in log sigma, so on a product grid a
    # cell's mass is the product of one mass of its mu and one of its log sigma, and the sum
    # over the grid is a product with each in turn
    coarse = coarse_grid()
    if gm is coarse[0] and gs is coarse[1]:  # the coarse grid's own: its axes
        mus, sds = LOGIT_MEAN, LOG_SD
    else:
        mus, sds = np.unique(gm), np.unique(gs)
        if not (np.array_equal(gm, np.repeat(mus, sds.size))
                and np.array_equal(gs, np.tile(sds, mus.size))):
            raise ValueError("log_marginals needs a product grid of (mu, log sigma), mu the "
                             "slower index (coarse_grid's)")
    p = loglik.shape[0]
    scaled = np.exp(loglik - top[:, None]).reshape(p * mus.size, sds.size)  # [P x mu, sd]

    def of(mean: FloatArray, sd: FloatArray) -> FloatArray:
        in_mu = _normal_logpdf(mus[None], mean[:, :1], sd[:, :1])  # [S, distinct mu]
        in_sd = _normal_logpdf(sds[None], mean[:, 1:], sd[:, 1:])  # [S, distinct log sd]
        top_mu, top_sd = in_mu.max(axis=1, keepdims=True), in_sd.max(axis=1, keepdims=True)
        # a spread too wide (or too narrow) to be a density: no mass
        finite = np.isfinite(top_mu[:, 0] + top_sd[:, 0])
        if not finite.all():  # such a prior's row is left out of the sums below
            in_mu, in_sd, top_mu, top_sd = (np.where(finite[:, None], x, 0.0)
                                            for x in (in_mu, in_sd, top_mu, top_sd))
        mass_mu, mass_sd = np.exp(in_mu - top_mu), np.exp(in_sd - top_sd)
        norm_mu, norm_sd = mass_mu.sum(axis=1, keepdims=True), mass_sd.sum(axis=1, keepdims=True)
        mass_mu /= norm_mu  # each sums to 1
        mass_sd /= norm_sd
        by_mu = (scaled @ mass_sd.T).reshape(p, mus.size, mean.shape[0])  # [P, mu, S]
        total = (by_mu * mass_mu.T[None]).sum(axis=1)  # [P, S]
        low = total < 1e-250
        if not low.any():
            out = (top[:, None] + np.log(total)).sum(axis=0)
        else:
            per = top[:, None] + np.log(np.where(low, 1.0, total))
            for j in np.flatnonzero(low.any(axis=0) & finite).tolist():
                rows = low[:, j]
                lp = ((in_mu[j] - top_mu[j] - np.log(norm_mu[j]))[:, None]
                      + (in_sd[j] - top_sd[j] - np.log(norm_sd[j]))[None, :]).ravel()
                per[rows, j] = logsumexp(loglik[rows] + lp[None], axis=1)
            out = per.sum(axis=0)
        return out if finite.all() else np.where(finite, out, -np.inf)

    return of


def log_marginal(loglik: FloatArray, gm: FloatArray, gs: FloatArray
                 ) -> Callable[[Hyper], float]:
    """:func:`log_marginals` of one prior at a time, a :class:`Hyper`."""
    of = log_marginals(loglik, gm, gs)
    return lambda prior: _of_one(of, prior)


def _of_one(of: Callable[[FloatArray, FloatArray], FloatArray], prior: Hyper) -> float:
    """A batch function of priors' means and sds (:func:`log_marginals`) at one prior."""
    return float(of(np.array([prior.mean]), np.array([prior.sd]))[0])


def fit_hyper(loglik: FloatArray, gm: FloatArray, gs: FloatArray,
              tolerance: float = 1e-5) -> Hyper:
    """The prior maximizing the marginal likelihood of every prompt's answers, each prompt's
    likelihood ``loglik`` [P, G] on the coarse grid (gm, gs) [G] (a cell's prior mass is its
    normalized density). The search starts from the best of :data:`STARTS` and stays within
    :data:`BOUNDS`: means on the grid, spreads from one grid step (a narrower prior is one
    the grid cannot tell from a point) to the grid's width (a wider one the grid cannot tell
    from a uniform one: the flat stretch where a search wanders). It depends on the answers
    alone, not on the order they came in. ``tolerance``: it stops once its next step is
    shorter than this in every parameter.

    The search is Levenberg-Marquardt's damped Newton ascent: each step solves
    (shift I - H) d = g on the parameters that no bound holds (one at a bound that the
    gradient, or its own step, pushes outward stays there), g and H the gradient and
    Hessian by central differences (:data:`DIFF_STEP`), the shift the least that makes the
    system positive definite plus a damping that grows fourfold after a step that does not raise the
    likelihood and falls fourfold after one that does; no step is longer than
    :data:`START_STEP` in any parameter, and the step's end is clipped to the bounds. Each
    step's point and its differences are one batch of :func:`log_marginals` (about 10
    batches a fit, against about 160 single evaluations of the Nelder-Mead search it
    replaced)."""

    def hyper(h: FloatArray) -> Hyper:
        sd = np.exp(np.clip(h[2:], BOUNDS[0][2:], BOUNDS[1][2:]))
        return Hyper((float(h[0]), float(h[1])), (float(sd[0]), float(sd[1])), h)

    marginal = log_marginals(loglik, gm, gs)

    def at(points: FloatArray) -> FloatArray:  # [S, 4] -> [S]
        return marginal(points[:, :2], np.exp(points[:, 2:]))

    # every start at once (each inside BOUNDS); a stencil's centre always is, its other
    # points at most DIFF_STEP outside, where the marginal is as smooth
    x = STARTS[int(np.argmax(at(STARTS)))].copy()
    value, grad, hess = _differences(at(_stencil(x)))
    damping = 0.0
    for _ in range(MAX_STEPS):
        if not (np.isfinite(grad).all() and np.isfinite(hess).all()):
            break
        # a parameter at a bound that the gradient, or then the step, pushes outward stays
        # there; the step is the damped Newton step of the others (each pass holds one more,
        # so the last of at most five has none to hold)
        free = ~(((x <= BOUNDS[0]) & (grad < 0)) | ((x >= BOUNDS[1]) & (grad > 0)))
        for _ in range(x.size + 1):
            step = np.zeros(x.size)
            if free.any():
                h = hess[np.ix_(free, free)]
                top = np.linalg.eigvalsh(h)
                shift = max(0.0, top.max() + 1e-9 * max(1.0, np.abs(top).max())) + damping
                step[free] = np.linalg.solve(shift * np.eye(h.shape[0]) - h, grad[free])
            out = free & (((x <= BOUNDS[0]) & (step < 0)) | ((x >= BOUNDS[1]) & (step > 0)))
            if not out.any():
                break
            free &= ~out
        step /= max(1.0, float(np.max(np.abs(step) / START_STEP)))
        end = np.clip(x + step, *BOUNDS)
        if np.max(np.abs(end - x)) < tolerance:
            break
        tried = at(_stencil(end))
        if tried[0] > value:
            x = end
            value, grad, hess = _differences(tried)
            damping /= 4
        else:
            damping = max(4 * damping, 1e-3 * max(1.0, float(np.abs(np.diag(hess)).max())))
    return hyper(x)


def _stencil(x: FloatArray) -> FloatArray:
    """``x`` [4], then x +- DIFF_STEP along each axis, then x + DIFF_STEP (+-1, +-1) in each
    plane of two axes: [1 + 8 + 24, 4], what :func:`_differences` reads."""
    return x[None] + _OFFSETS


def _differences(f: FloatArray) -> tuple[float, FloatArray, FloatArray]:
    """The value, gradient and Hessian at the centre of :func:`_stencil` from its values
    ``f``, by central differences."""
    d = DIFF_STEP
    up, down = f[1:9:2], f[2:9:2]
    grad = (up - down) / (2 * d)
    hess = np.diag((up - 2 * f[0] + down) / d**2)
    pp, pm, mp, mm = f[9:].reshape(-1, 4).T  # per plane
    i, j = _PLANES.T
    hess[i, j] = hess[j, i] = (pp - pm - mp + mm) / (4 * d * d)
    return float(f[0]), grad, hess


def theta_curves(problem: Problem) -> tuple[FloatArray, FloatArray]:
    """The credit of N = 1..N_max answers, and the completions they pay, on a query whose
    chance of a right answer is each node of ``THETA``: two arrays [len(THETA), N_max]
    (a distribution's curves are its ``theta_weights`` @ these)."""
    from iapo.stopping import expected_paid

    n_max = problem.n_max
    credit = theta_credit(n_max)
    if problem.stopping.early:
        probs = np.stack([THETA, 1.0 - THETA], axis=1)  # category 0 is the right answer
        no_answer = None if problem.no_answer == "vote" else np.full(THETA.size, -1)
        paid = expected_paid(probs, n_max, problem.stopping.wave, no_answer)[0]
    else:
        paid = np.broadcast_to(np.arange(1, n_max + 1, dtype=np.float64), credit.shape)
    return credit, np.asarray(paid)


@functools.cache
def theta_credit(n_max: int) -> FloatArray:
    """The credit of N = 1..N_max answers on a query whose chance of a right answer is each
    node of ``THETA`` (its one other answer the rest): [len(THETA), N_max], read-only,
    computed once per N_max."""
    probs = np.stack([THETA, 1.0 - THETA], axis=1)  # category 0 is the right answer
    credit = mv_credit_probability(probs, np.zeros(THETA.size, dtype=np.int64), n_max)
    credit.flags.writeable = False
    return credit


@functools.cache
def coarse_grid() -> tuple[FloatArray, FloatArray, FloatArray]:
    """The coarse grid of (mu, log sigma): its points (gm, gs) [G] and their cell masses of
    ``THETA`` [G, len(THETA)], read-only, computed once."""
    gm, gs = (x.ravel() for x in np.meshgrid(LOGIT_MEAN, LOG_SD, indexing="ij"))
    grid = (gm, gs, theta_weights(gm, gs))
    for a in grid:
        a.flags.writeable = False
    return grid


def fit_prior(votes: Sequence[tuple[IntArray, IntArray]], tolerance: float = 1e-5,
              counted: Tally | None = None) -> tuple[FloatArray, BoolArray, Hyper | None]:
    """Every prompt's log likelihood on the coarse grid [P, G], which prompts have answers [P],
    and the prior fitted to them (:func:`fit_hyper`, to ``tolerance``; None where no prompt
    has any). ``votes`` from :func:`binary_votes`; ``counted``: their :func:`tally`, if at
    hand."""
    gm, gs, coarse_w = coarse_grid()
    counted = tally(votes) if counted is None else counted
    loglik = _summed(counted, len(votes), coarse_w.shape[0], coarse_log_likelihoods)  # [P, G]
    seen = np.array([k.size > 0 for k, _ in votes])
    return (loglik, seen,
            fit_hyper(loglik[seen], gm, gs, tolerance) if seen.any() else None)


def expected_credit(problem: Problem, votes: Sequence[tuple[IntArray, IntArray]]
                    ) -> tuple[FloatArray, Hyper | None]:
    """Each prompt's majority-voting credit of N = 1..N_max answers on its queries, [P, N_max]
    (NaN for a prompt with no answers): per query, the credit's expectation under theta's
    posterior given all the prompt's answers, under the prior fitted to every prompt
    (:func:`fit_prior`); averaged over the prompt's queries. Given the prompt's (mu, sigma), a
    query's theta depends on its own k right of n answers only, so its posterior is that
    conditional averaged over the posterior of (mu, sigma) on the coarse grid: each query's
    answers count once. Few answers per query lean on the distribution fitted across the
    prompt's queries (and, through the prior, on the other prompts'); many, on the query's
    own. Returns the credit and the fitted prior.
    """
    gm, gs, coarse_w = coarse_grid()
    counted = tally(votes)
    loglik, seen, hyper = fit_prior(votes, CREDIT_TOLERANCE, counted)
    credit = theta_credit(problem.n_max)  # [len(THETA), N]
    out = np.full((len(votes), problem.n_max), np.nan)
    if hyper is None:
        return out, None
    log_post = loglik + hyper.log_density(gm, gs)[None]
    weight = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    weight /= weight.sum(axis=1, keepdims=True)  # [P, G]
    # the grid points that hold some answered prompt's posterior: those left out hold less
    # than G * MASS_FLOOR of each prompt's, which moves its credit by no more
    weight[(weight < MASS_FLOOR) | ~seen[:, None]] = 0.0
    grid = np.flatnonzero(weight.any(axis=0))
    cells = coarse_w[grid]  # [g, len(THETA)]
    owner, pairs, which, counts = counted  # every prompt's distinct (k, n), each counted
    pmf = theta_pmf(pairs)[which]  # [M, len(THETA)]
    # a query's theta given (mu, sigma) = g is pmf * cells[g] / (pmf @ cells[g]); its
    # posterior averages that over g's posterior weight, pmf * sum_g (w_g / (pmf @ cells[g]))
    # cells[g] (each likelihood floored as log_likelihoods floors it; rows renormalized)
    inverse = np.exp(-coarse_log_likelihoods(pairs)[:, grid])[which]  # 1 / (pmf @ cells.T)
    post = pmf * ((weight[:, grid][owner] * inverse) @ cells)
    post /= post.sum(axis=1, keepdims=True)  # [M, len(THETA)]
    each = (post @ credit) * counts[:, None]  # [M, N]
    total = np.zeros((len(votes), problem.n_max))
    np.add.at(total, owner, each)
    out[seen] = total[seen] / np.bincount(owner, counts, len(votes))[seen, None]
    return out, hyper


def draws(problem: Problem, votes: Sequence[tuple[IntArray, IntArray]],
          cost: npt.ArrayLike, rounds: int, rng: np.random.Generator) -> FloatArray:
    """``rounds`` posterior draws of every arm's Q [rounds, C, P, N_max] (module docstring);
    ``votes`` from :func:`binary_votes`; ``cost`` [P] the cost of one completion of each prompt.
    NaN for a prompt with no answers."""
    c, p, n_max = problem.n_contexts, problem.n_prompts, problem.n_max
    cost = np.asarray(cost, dtype=np.float64)
    task_weight = problem.grid.weights[:, 0]  # [C]
    theta_credit, theta_paid = theta_curves(problem)
    out = np.full((rounds, c, p, n_max), np.nan)
    gm, gs, _ = coarse_grid()
    loglik, seen, hyper = fit_prior(votes)
    for i, (k, n) in enumerate(votes):
        if not seen[i] or hyper is None:
            continue
        coarse = loglik[i] + hyper.log_density(gm, gs)
        mass = coarse > coarse.max() - LOCAL_SPAN
        fm, fs = (x.ravel() for x in np.meshgrid(
            np.linspace(gm[mass].min() - STEP[0], gm[mass].max() + STEP[0], LOCAL),
            np.linspace(gs[mass].min() - STEP[1], gs[mass].max() + STEP[1], LOCAL),
            indexing="ij"))
        w = theta_weights(fm, fs)
        log_post = log_likelihood(k, n, w) + hyper.log_density(fm, fs)
        weight = np.exp(log_post - logsumexp(log_post))
        credit, paid = w @ theta_credit, w @ theta_paid  # [G, N]
        pick = rng.choice(weight.size, size=rounds, p=weight)
        task = task_weight[None, :, None] * credit[pick][:, None, :]  # [R, C, N]
        spend = cost_term(problem.grid.cost_weights[None, :, None],
                          (cost[i] * paid[pick])[:, None, :])
        out[:, :, i, :] = task - spend
    return out
