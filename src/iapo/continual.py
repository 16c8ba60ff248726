"""Continual learning from served traffic (beyond the paper): one core for ``iapo simulate``
and the gateway's continual path.

A deployed policy serves arm (p, N) in every context c. Every group of G completions of a
prompt, served or drawn for learning, is one sample of every arm (p, n), n <= G, in every
context: the mean utility of its floor(G/n) blocks of size n (:meth:`QTable.group_means`;
PSST's nested and cross-context reuse). One sample per group, not per block, because the
blocks of a group share a query: group means are independent across groups, so their
standard errors are honest.

The decisions, each a rule with a test:

- **Learning pulls** (:meth:`Continual.learning_pulls`). Completions drawn for learning total
  at most ``learn_budget`` times the completions served so far, and are never served. Turns
  alternate between the challengers (below) and the *candidates*: per context, the prompts
  whose best upper confidence bound reaches the served arm's lower bound (a prompt without an
  arm seen on MIN_GROUPS groups always does), at most ``candidates`` of them by that bound.
  As PSST pulls every active prompt at its largest active N (Eq. 6), a candidate prompt is
  pulled at the largest N that a context serves or finds close, all candidates in turn.
- **Switches, on fresh evidence** (:meth:`Continual.refit`, every ``refine_every`` requests).
  A context names as challenger the arm most likely better than its served one (seen on
  MIN_GROUPS groups). The challenger is judged only on samples drawn *after* it was named,
  so that the luck that made it the best of many arms (the winner's curse) is not in its
  evidence, and once it has FRESH_GROUPS of them, at every refit: the context switches if
  the lower bound of the gain exceeds ``min_gain``. The gain is the fresh mean (with one
  sample more at each end of the range, :func:`with_ends`) less the served arm's mean
  taken within the traffic the fresh samples came from: per origin, weighted as the fresh
  samples are (so that samples drawn on an easier context's requests, before a traffic
  test could tell the contexts apart, do not count as a gain);
  the challenger is dropped if the gain's estimate does not; otherwise its samples keep
  accumulating. The bound is one-sided at 1 - (1 - ``confidence``) / L, L the refits
  within ``horizon`` (Bonferroni over a context's looks, one per refit), so that a context
  switches on evidence to an arm no better than its own with probability at most about
  1 - ``confidence`` over the horizon of this learner (one simulated run, one replay of
  ``iapo refine``), not at every look: at one look's level, the many looks of a long run
  switched to worse arms about as often as to better ones where arms differ by 0.01 to
  0.03 (docs/continual.md). "About": each look's bound is a normal approximation (for 0/1
  samples near 30 its exact level can be a few times the nominal one; the union bound's
  slack has absorbed it in every measurement). The moves on a drift flag (below) are not
  part of this budget: the served arm has changed, and staying is no longer the safe
  side. A challenger has no age limit: one whose gain is near 0 can hold its context's
  challenger for many refits.
- **Drift** (:class:`DriftMonitor`). At requests refine_every x 2^k (k = 0, 1, ...), every
  context takes baselines: the lower confidence bounds of its served arm (p, N) and of its
  prompt's single completions (p, 1), from the samples seen since the context began to serve
  that arm (again not the luck of its choice), with one sample more at each end of the range
  (as Agresti and Coull add a success and a failure: samples all alike must not put a
  baseline at the top of the range). Each later sample is tested against its baseline by a
  Shiryaev-Roberts e-detector (a mixture over bets). A context whose value left its interval
  is flagged: the flagged prompt keeps only its samples since the baselines, and every
  context serving it moves at once (the flag is the evidence that its arm got worse). For
  majority voting, to the arm that the per-query model (:class:`iapo.model.ModelQTable`,
  psst-auto's estimator for majority voting) ranks first, fitted on every group the context
  learns from (training's and the traffic's; the flagged prompt's since the baselines): the
  model pools a prompt's answers on each query over every N, so it ranks arms never served,
  where the groups seen on one arm would have to wait for evidence. At each of the next
  ``recovery`` refits, such a context moves again to the model's first choice (the flagged
  prompt's answers since the baselines accumulate, and the first move rested on few of
  them); meanwhile its challenger is not judged, and then only evidence moves it. For
  Best-of-N and the
  mixed strategy (where psst-auto decides by blocks, the model being biased on real
  Best-of-N data), to the arm of highest lower bound among those seen on BASELINE_GROUPS
  groups, if that bound exceeds the served arm's upper bound.
- **Pessimistic moves** (``moves="pessimistic"``, majority voting only; the default is
  "evidence"). At every refit every context moves to the arm of highest *pessimistic*
  model estimate: the per-query model's Q less PESSIMISM standard errors of its mean
  credit over the prompt's queries (the per-query credits' variance, shrunk toward the
  median prompt's as below), and no challenger is judged. The estimate is the model's at
  every refit, not a test at a level: it trades the evidence rule's bound on switching to
  a worse arm for power where arms differ by less than its test can see (docs/continual.md
  measures both). Two things keep it from chasing luck: a prompt seen on few queries has
  a wide error, and the fixed prior pulls its large-N credit down.
- **Retraining** (``retrain=K``, an option; 0, the default, is off). The learning budget is
  saved, not drawn request by request (:meth:`Continual.learning_pulls` draws nothing).
  K requests after the last retraining (the first: at request K) the caller spends what was
  saved (:meth:`Continual.retrain_budget`;
  a due retraining waits until it pays one group of N_max completions of every prompt,
  :func:`retraining_floor`) as one run of a learner on the traffic's queries, drawn as
  often as the traffic asked them (:meth:`Continual.retrain`). The run is given first,
  free, the groups the traffic has drawn (served, learning and earlier retrainings'
  groups; of a drift-flagged prompt only those drawn after its flag; not training's, whose
  queries need not be the traffic's): a pull of (p, n) takes the first n completions of
  such a group of p at least n wide, each at most once per run
  (:class:`iapo.pulls.Reusing`), and only the rest is drawn and paid for. The gateway's
  refine reuses nothing yet: its logged groups may be stored samples its draws would
  replay. The paid groups enter the estimates and drift tests as any learning group does
  (the reused ones are there already), and every context moves to the run's choice
  (reason "retrain"), ending any recovery (:meth:`Continual.retrained`).
  PSST's rounds sample every prompt on many queries and trim by estimates of arms sampled
  alike, which the candidates' pulls, a few prompts deep on few queries, do not
  (docs/continual.md measures both). A move to the run's choice is not a test at a level
  either. Drift flags move contexts between retrainings.

Contexts whose traffic differs (:meth:`Continual.estimates`). Reusing a group for every
context assumes the contexts' queries come from one distribution. A caller that knows each
group's *origin* (the context of the request it was drawn on) passes it to
:meth:`Continual.observe`, and the groups of every context's traffic are also kept apart.
At every refit, every pair of contexts that still pool compares its two traffics on the arm
most sampled by both (at least BASELINE_GROUPS groups each): a two-sided z test, at level
``alarm`` with Bonferroni over pairs and refits. Where they differ, the pair *splits*, for
good: each learns from its own traffic and that of the contexts it still pools with (weight
1), never from the other's (weight 0), so its estimates, its challengers' evidence and its
drift tests stay unbiased for its traffic. Each side's challenger is dropped and its drift
tests restart (off until the next baselines). Training's groups, and groups of no known
origin, count only for a context that pools with every other. Without origins nothing
splits.

Standard errors: a variance seen on k groups is shrunk toward the context's typical one
(:func:`shrunk_variance`), so that a few identical 0/1 vote credits do not claim certainty.

False alarms: with no drift, a run flags any context with probability at most ``alarm``
within ``horizon`` requests. Half of ``alarm`` bounds the baselines (Bonferroni over
contexts, tests and baselines); half bounds the detectors: a test sees at most H = horizon x
(1 + learn_budget x N_max) samples (one per served request and per learning group), and
R_t + H - t is a nonnegative supermartingale under the null, so by Ville's inequality
P(max R_t >= A) <= H / A, with A = tests x H / (alarm / 2).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp
from scipy.stats import norm

from iapo.errors import InputError
from iapo.estimate import GroupMeans
from iapo.problem import Choice, Problem, arm_at, arm_index
from iapo.pulls import Observation, Oracle, Pull, Reusing
from iapo.settings import ContinualSettings

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

# the detector's bets, as fractions of the largest safe bet 1 / (1 - m0): a mixture, so no
# single drop size has to be guessed (averaging costs log(5) in the threshold)
BETS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
MIN_GROUPS = 10  # samples an arm needs before its estimate can be served or compared
PRIOR_GROUPS = 5  # weight, in groups, of the typical variance in an arm's (GroupTable.stderr)
BASELINE_GROUPS = 30  # samples an arm needs before its lower bound can be a drift baseline
FRESH_GROUPS = 30  # samples a challenger needs, after it was named, before it is decided
PESSIMISM = 1.0  # standard errors off the model's estimate in a pessimistic move


class GroupTable(GroupMeans):
    """Stockpiled group means (:class:`iapo.estimate.GroupMeans`) with what continual learning
    asks of them; ``stderr`` is honest because groups are independent."""

    def moments_of(self, context: int, prompt: int, n: int) -> FloatArray:
        """The sum, sum of squares and count of the samples of arm (prompt, n) in
        ``context``'s utility: [3], as :func:`moments` gives them."""
        return np.array([self.sums[context, prompt, n - 1], self.sumsq[context, prompt, n - 1],
                         self.counts[prompt, n - 1]], dtype=np.float64)

    def replace(self, prompt: int, other: GroupTable) -> None:
        """What is known about ``prompt`` becomes what ``other`` knows about it."""
        self.sums[:, prompt] = other.sums[:, prompt]
        self.sumsq[:, prompt] = other.sumsq[:, prompt]
        self.counts[prompt] = other.counts[prompt]

    def typical_variance(self) -> FloatArray:
        """Per context, the median variance of the arms seen on two groups or more: [C]."""
        var = self.variance.reshape(self.variance.shape[0], -1)
        has = np.isfinite(var).any(axis=1)
        out = np.zeros(var.shape[0])
        out[has] = np.nanmedian(var[has], axis=1)
        return out

    @property
    def stderr(self) -> FloatArray:
        """Standard error of every mean, from its :func:`shrunk_variance`: [C, P, N] (NaN
        below two groups)."""
        k = self.counts.astype(np.float64)
        var = shrunk_variance(np.nan_to_num(self.variance), k,
                              self.typical_variance()[:, None, None])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(k >= 2, np.sqrt(var / k), np.nan)


def shrunk_variance(var: npt.ArrayLike, k: npt.ArrayLike, typical: npt.ArrayLike
                    ) -> FloatArray:
    """A variance ``var`` seen on ``k`` groups, shrunk toward the context's ``typical`` one:
    (k var + PRIOR_GROUPS typical) / (k + PRIOR_GROUPS), so that a few equal samples (a 0/1
    vote credit) do not claim a standard error of 0."""
    k = np.asarray(k, dtype=np.float64)
    return np.asarray((k * np.asarray(var) + PRIOR_GROUPS * np.asarray(typical))
                      / (k + PRIOR_GROUPS), dtype=np.float64)


def moments(u: FloatArray) -> FloatArray:
    """(sum, sum of squares, count) of samples ``u``: what a running mean and variance add."""
    return np.array([u.sum(), (u * u).sum(), u.size], dtype=np.float64)


def mean_and_variance(acc: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The means and sample variances of running :func:`moments` ``acc`` [..., 3] (each of
    two samples or more)."""
    a = np.asarray(acc, dtype=np.float64)
    total, squares, k = a[..., 0], a[..., 1], a[..., 2]
    mean = total / k
    return mean, np.maximum(squares - k * mean * mean, 0.0) / (k - 1)


def with_ends(problem: Problem, context: int, n: int, acc: FloatArray
              ) -> tuple[float, float, float]:
    """Mean, sample variance and count of running :func:`moments` ``acc`` of samples of an
    arm (., n) in ``context``, with one sample more at each end of their range
    (:func:`utility_bounds`), as Agresti and Coull add a success and a failure: samples all
    alike (equal up to rounding) then claim no certainty."""
    lo, hi = utility_bounds(problem, n)
    padded = acc + moments(np.array([lo[context], hi[context]]))
    mean, var = mean_and_variance(padded)
    return float(mean), float(var), float(padded[2])


def utility_bounds(problem: Problem, n: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The range [lo, hi] of one sample of arm (., n) in every context: ([C, ...], [C, ...]):
    the task value's bounds under the context's weights, less at most n completions at the
    cost bound."""
    grid = problem.grid
    lower = np.array([o.lower for o in grid.objectives])
    upper = np.array([o.upper for o in grid.objectives])
    w = grid.weights  # [C, K]
    lo_task = np.minimum(w * lower, w * upper).sum(axis=1)
    hi_task = np.maximum(w * lower, w * upper).sum(axis=1)
    n_arr = np.asarray(n, dtype=np.float64)
    shape = (-1,) + (1,) * n_arr.ndim
    lo = lo_task.reshape(shape) - (grid.cost_weights * problem.cost.upper).reshape(shape) * n_arr
    return lo, np.broadcast_to(hi_task.reshape(shape), lo.shape).copy()


@dataclass
class DriftMonitor:
    """Shiryaev-Roberts e-detectors, one per test (context, arm), against a baseline m0.

    A sample x (normalised to [0, 1]) bets 1 + b (m0 - x), b = f / (1 - m0) for every f in
    :data:`BETS`; R <- (R + 1) x bet per bet size, and a test alarms when the mean of its R
    reaches ``threshold``.
    """

    threshold: float
    m0: FloatArray = field(default_factory=lambda: np.zeros(0))
    log_r: FloatArray = field(default_factory=lambda: np.zeros((0, len(BETS))))

    @classmethod
    def for_tests(cls, tests: int, horizon: int, alarm: float) -> DriftMonitor:
        """A monitor of ``tests`` tests whose detectors together alarm with probability at
        most ``alarm`` within ``horizon`` null samples each: threshold tests x H / alarm."""
        return cls(tests * horizon / alarm, np.full(tests, np.nan),
                   np.full((tests, len(BETS)), -np.inf))

    def start(self, test: int, m0: float) -> None:
        """(Re)start ``test`` against baseline m0 in [0, 1) (NaN: the test is off)."""
        self.m0[test] = m0
        self.log_r[test] = -np.inf

    def stop(self, test: int) -> None:
        self.start(test, np.nan)

    def active(self, test: int) -> bool:
        return bool(np.isfinite(self.m0[test]))

    def update(self, test: int, x: npt.ArrayLike) -> int:
        """Feed ``test`` its samples ``x`` [k] in order; returns the index of the first that
        alarms (-1: none). All k samples are taken in, vectorised: log R_t = C_t +
        log(R_0 + sum_{s<t} exp(-C_s)), C the cumulative log bets."""
        xs = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        m0 = float(self.m0[test])
        if xs.size == 0 or not math.isfinite(m0):
            return -1
        bets = np.asarray(BETS) / (1.0 - m0)  # [J]
        step = np.log1p(bets[None, :] * (m0 - xs[:, None]))  # [k, J]
        cum = np.cumsum(step, axis=0)
        before = np.concatenate([np.zeros((1, bets.size)), -cum[:-1]])  # -C_{t-1}, C_0 = 0
        inner = np.logaddexp.accumulate(
            np.concatenate([self.log_r[test][None, :], before]), axis=0)[1:]
        log_r = cum + inner  # [k, J]
        stat = logsumexp(log_r, axis=1) - math.log(bets.size)
        self.log_r[test] = log_r[-1]
        hit = np.flatnonzero(stat >= math.log(self.threshold))
        return int(hit[0]) if hit.size else -1


@dataclass(frozen=True)
class Estimates:
    """What a learner knows, per context: mean, standard error and groups of every arm [C,
    P, N], and the typical variance [C] (each context's from the groups it uses)."""

    mean: FloatArray
    stderr: FloatArray
    counts: IntArray
    typical: FloatArray


@dataclass(frozen=True)
class TrafficSplit:
    """At request ``request``, the traffic of ``context`` and ``other`` differed on arm
    (prompt, n): mean ``own`` (in ``context``'s utility) on ``own_groups`` groups of
    ``context``'s traffic against ``others`` on ``other_groups`` of ``other``'s, z statistic
    ``z`` (of the means with one sample more at each end of the range); from then on neither
    learns from the other's groups."""

    request: int
    context: int
    other: int
    prompt: int
    n: int
    own: float
    own_groups: int
    others: float
    other_groups: int
    z: float


@dataclass(frozen=True)
class Flag:
    """A drift alarm: ``context``'s test of arm (prompt, n) alarmed at request ``request``;
    its baseline ``baseline`` (the lower bound) and the live mean ``live`` of its samples."""

    request: int
    context: int
    prompt: int
    n: int
    baseline: float
    live: float


@dataclass(frozen=True)
class Switch:
    """At request ``request``, ``context`` moved from arm ``old`` to ``new`` (prompt, n):
    ``reason`` is "evidence" (a gain's lower bound) or "drift" (its prompt was flagged).
    ``gain_lower``: on evidence, the gain's lower bound; on drift, the model's estimate of
    the gain (majority voting) or the new arm's lower bound less the old one's upper bound."""

    request: int
    context: int
    old: tuple[int, int]
    new: tuple[int, int]
    reason: str
    gain_lower: float


def learning_allowance(fraction: float, served: int, drawn: int) -> int:
    """Learning completions still allowed: floor(``fraction`` x ``served``) less ``drawn``
    (completions, all of them; the 1e-9 keeps a product such as 0.1 x 120 from flooring to
    11)."""
    return int(math.floor(fraction * served + 1e-9)) - int(drawn)


def retraining_floor(problem: Problem) -> int:
    """The least a retraining spends: one group of N_max completions of every prompt. With
    less, PSST drops scales before its first round (its budget rule 1), and every context
    would move on a run that could not see each arm once."""
    return problem.n_prompts * problem.n_max


def retraining_waits(every: int, since: int, saved: int, floor: int, split: bool
                     ) -> str | None:
    """Why a retraining every ``every`` requests is not due now, in words (None: it is). It
    is due once ``every`` requests have passed ``since`` the last one (or the start) and the
    ``saved`` learning budget reaches the ``floor`` (:func:`retraining_floor`): one the floor
    holds back waits for it, and the next one is due ``every`` requests after the one that
    ran, not on a grid of ``every``. None is due once some contexts' traffics ``split``: a
    retraining learns from every context's queries alike. The one rule of the simulation
    (:meth:`Continual.retrain_budget`) and of the gateway
    (:func:`iapo.live.refine.reserve_saved`)."""
    if split:
        return ("some contexts ask differently (a traffic split, in the report); a retraining "
                "learns from every context's queries alike, so none is run")
    if since < every:
        return f"{since} of {every} requests since the last retraining"
    if saved < floor:
        return (f"{saved} completions saved of the {floor} that a retraining needs (one group "
                "of N_max of every prompt)")
    return None


def check_moves(problem: Problem, settings: ContinualSettings) -> None:
    """Refuse pessimistic moves where there is no per-query model to follow (a problem that
    does not vote), before any work."""
    if settings.moves == "pessimistic" and problem.aggregator != "mv":
        raise InputError(f"moves='pessimistic' follows the per-query model of majority "
                         f"voting; problem {problem.name!r} aggregates by "
                         f"{problem.aggregator!r}: use moves='evidence' (--moves "
                         "evidence)")


class Continual:
    """The learning state of a deployed policy (the rules are in the module docstring).

    ``training`` is the training run's observations (its estimates continue), ``served`` the
    trained policy's choices. Feed it every served and learning group with :meth:`observe`,
    ask :meth:`learning_pulls` after serving, and call :meth:`refit` every ``refine_every``
    requests (:meth:`due` says when).
    """

    def __init__(self, problem: Problem, settings: ContinualSettings,
                 training: Sequence[Observation], served: Sequence[Choice]) -> None:
        if len(served) != problem.n_contexts or any(c.n is None for c in served):
            raise InputError("continual learning needs one arm with a fixed N per context")
        check_moves(problem, settings)
        self.problem = problem
        self.settings = settings
        n_ctx = problem.n_contexts
        self.table = GroupTable(problem)  # every group: what a context that shares uses
        self.table.update(training)
        # majority voting keeps every observation, for the per-query model of a drift move:
        # (the baselines it came after, -1 for training's; its origin; it)
        self._keeps = problem.aggregator == "mv"
        self._kept: list[tuple[int, int, Observation]] = [
            (-1, -1, o) for o in training if o.count > 0 and self._keeps]
        # what a retraining reuses: every group drawn on the traffic, a flagged prompt's
        # only those drawn after its flag (its earlier ones may predate the drift)
        self._reusable: list[Observation] = []
        self._epoch = 0  # baselines taken so far
        # per context, the refits it still follows the model after a drift flag
        self._recovering = np.zeros(problem.n_contexts, dtype=np.intp)
        self.recent = GroupTable(problem)  # the samples since the last drift baselines
        # per context, the groups drawn on its own traffic (all time, and since the last
        # baselines); pools[c, o]: context c learns from the groups of context o's traffic
        self.own = [GroupTable(problem) for _ in range(n_ctx)]
        self.recent_own = [GroupTable(problem) for _ in range(n_ctx)]
        self.pools = np.ones((n_ctx, n_ctx), dtype=bool)
        self.splits: list[TrafficSplit] = []
        self.prompt = np.array([c.prompt for c in served], dtype=np.intp)  # [C]
        self.n = np.array([c.n for c in served], dtype=np.intp)  # [C]
        self.requests = 0
        self.served_completions = 0
        self.learning_completions = 0
        # groups (and their completions) the retrainings took from the traffic's, free
        self.reused_groups = 0
        self.reused_completions = 0
        self.flags: list[Flag] = []
        self.switches: list[Switch] = []
        # per context: the challenger (flat arm index, -1: none) and the sum, sum of squares
        # and count of its samples since it was chosen, per origin (the context of the
        # request each was drawn on; the last: none known)
        self.challenger = np.full(n_ctx, -1, dtype=np.intp)
        self._fresh = np.zeros((n_ctx, n_ctx + 1, 3))
        self._explore: list[tuple[int, int]] = []  # (prompt, scale) of the candidates
        # the order of candidates with equal bounds: by prompt index
        self.tie_order = np.arange(problem.n_prompts)
        self._turn = 0  # pulls drawn: even turns go to the challengers, odd to the candidates
        self._next = [0, 0]  # the next entry of each queue
        self._next_refit = settings.refine_every
        self._last_retrain = 0  # the request of the last retraining (0: none yet)
        self._next_baseline = settings.refine_every
        # baselines per test: one at every refine_every x 2^k requests within the horizon
        baselines = int(math.log2(max(settings.horizon, settings.refine_every)
                                  / settings.refine_every)) + 1
        self._z_baseline = float(norm.ppf(1 - settings.alarm / 2 / (2 * n_ctx * baselines)))
        # the traffic test, at every refit within the horizon: two-sided, Bonferroni over
        # pairs of contexts and refits, at level ``alarm`` in all
        refits = max(1, settings.horizon // settings.refine_every)
        # the switch test: one look per context at every refit within the horizon,
        # Bonferroni over them (module docstring)
        self._z_switch = float(norm.ppf(1 - (1 - settings.confidence) / refits))
        pairs = max(1, n_ctx * (n_ctx - 1) // 2)
        self._z_traffic = float(norm.ppf(1 - settings.alarm / (2 * pairs * refits)))
        # a test sees at most one sample per served request and per learning group
        samples = int(settings.horizon * (1 + settings.learn_budget * problem.n_max))
        self.monitor = DriftMonitor.for_tests(2 * n_ctx, samples, settings.alarm / 2)
        # per test (2 per context: its arm (p, N), then (p, 1)): the arm, the sum, sum of
        # squares and count of its samples since the context began to serve it, and the sum
        # and count since its baseline
        self._tests = np.zeros((2 * n_ctx, 2), dtype=np.intp)
        self._since = np.zeros((2 * n_ctx, 3))
        self._live = np.zeros((2 * n_ctx, 2))
        for ci in range(n_ctx):
            self._track(ci)
        self._plan()

    # ---------------------------------------------------------------- serving

    def served_arms(self) -> list[tuple[int, int]]:
        """(prompt, n) served in every context, now."""
        return [(int(p), int(n)) for p, n in zip(self.prompt, self.n, strict=True)]

    def record_served(self, requests: int, completions: int) -> None:
        """``requests`` were answered with ``completions`` completions in all."""
        self.requests += int(requests)
        self.served_completions += int(completions)

    def due(self) -> bool:
        return self.requests >= self._next_refit

    # ---------------------------------------------------------------- learning pulls

    def allowance(self) -> int:
        """Completions learning may still draw: learn_budget x served - drawn."""
        return learning_allowance(self.settings.learn_budget, self.served_completions,
                                  self.learning_completions)

    def learning_pulls(self) -> list[Pull]:
        """:meth:`pulls` within the allowance, charged to it here (the caller draws them
        all); none where the budget is saved for retraining (``retrain``)."""
        if self.settings.retrain:
            return []
        out = self.pulls(self.allowance())
        self.learning_completions += sum(p.cost for p in out)
        return out

    def pulls(self, completions: int) -> list[Pull]:
        """Single groups, while ``completions`` pay for the next one: turns alternate between
        the challengers (each at its N) and the candidates (each prompt at its scale), so a
        challenger gets half while one waits."""
        queues = [self._challenges(), self._explore]
        out: list[Pull] = []
        left = completions
        while left > 0 and (queues[0] or queues[1]):
            which = self._turn % 2 if queues[self._turn % 2] else 1 - self._turn % 2
            queue = queues[which]
            prompt, scale = queue[self._next[which] % len(queue)]
            if scale > left:
                break
            out.append(Pull(prompt, scale, 1))
            left -= scale
            self._next[which] += 1
            self._turn += 1
        return out

    def retrain_budget(self) -> int:
        """The completions a retraining may spend now: the allowance where one is due by
        :func:`retraining_waits` (0: none due, or ``retrain`` not set)."""
        if not (every := self.settings.retrain):
            return 0
        saved = self.allowance()
        waits = retraining_waits(every, self.requests - self._last_retrain, saved,
                                 retraining_floor(self.problem), bool(self.splits))
        return saved if waits is None else 0

    def retrained(self, choices: Sequence[Choice], observations: Sequence[Observation],
                  spent: int, budget: int | None = None) -> list[Switch]:
        """A retraining that spent ``spent`` completions and drew ``observations`` (origin
        unknown: they were drawn on the traffic's queries after the fact) chose ``choices``,
        one per context: the groups are taken in, every context moves to its choice (reason
        "retrain"), recoveries end, and with ``retrain`` set the next retraining is due
        ``retrain`` requests after this one (not on a grid of K: one the floor held back
        does not bring the next one closer). ``budget``: what it was given (None: the saved
        learning budget, :meth:`retrain_budget`). Returns the switches made."""
        if len(choices) != self.problem.n_contexts or any(c.n is None for c in choices):
            raise InputError("a retraining must choose one arm with a fixed N per context")
        allowed = self.allowance() if budget is None else budget
        if not 0 <= spent <= allowed:
            raise InputError(f"a retraining spent {spent} completions, outside the "
                             f"{allowed} it was given")
        before = len(self.switches)
        self.learning_completions += int(spent)
        self.observe(observations)
        self._recovering[:] = 0
        n_max = self.problem.n_max
        for ci, choice in enumerate(choices):
            self._choose(ci, int(arm_index(choice.prompt, int(choice.n or 1), n_max)),
                         "retrain", 0.0)
        self._last_retrain = self.requests  # the next is due K requests after this one
        self._name_challengers()
        self._plan()
        return self.switches[before:]

    def retrain(self, oracle: Oracle, budget: int, rng: np.random.Generator,
                learner: str | None = None,
                taken: Callable[[Observation], Observation] | None = None,
                reuse: bool = True) -> list[Switch]:
        """Spend ``budget`` as one run of ``learner`` (the default learner, None) on
        ``oracle`` (seeded by ``rng``) and take it in (:meth:`retrained`). With ``reuse``,
        the run is given first, free, the groups the traffic drew (module docstring;
        :class:`iapo.pulls.Reusing`). ``taken`` maps each group drawn to the one the learner
        and the estimates see (e.g. its query by id), as the traffic's groups already are.
        Returns the switches made."""
        from iapo.learners import get_learner
        from iapo.settings import DEFAULT_LEARNER

        bank = Reusing(oracle, self._reusable if reuse else [], rng.spawn(1)[0], taken)
        choices = get_learner(learner or DEFAULT_LEARNER).learner(
            self.problem, bank, budget, rng).choices
        self.reused_groups += bank.reused_groups
        self.reused_completions += bank.reused_completions
        return self.retrained(choices, bank.paid, oracle.ledger.spent, budget)

    def _challenges(self) -> list[tuple[int, int]]:
        """(prompt, n) of every context's challenger, each once."""
        n_max = self.problem.n_max
        return sorted({arm_at(int(a), n_max) for a in self.challenger if a >= 0})

    @property
    def shared(self) -> npt.NDArray[np.bool_]:
        """Per context: whether it still learns from every group: [C]."""
        return np.asarray(self.pools.all(axis=1))

    def estimates(self) -> Estimates:
        """Every context's estimates: from every group where it pools with every context,
        else from the traffic of the contexts it still pools with (itself among them)."""
        mean, se = self.table.mean.copy(), self.table.stderr.copy()
        counts = np.broadcast_to(self.table.counts, mean.shape).copy()
        typical = self.table.typical_variance()
        for ci in (int(x) for x in np.flatnonzero(~self.shared)):
            pooled = GroupTable(self.problem)
            for o in np.flatnonzero(self.pools[ci]):
                pooled.sums += self.own[o].sums
                pooled.sumsq += self.own[o].sumsq
                pooled.counts += self.own[o].counts
            mean[ci], se[ci], counts[ci] = pooled.mean[ci], pooled.stderr[ci], pooled.counts
            typical[ci] = pooled.typical_variance()[ci]
        return Estimates(mean, se, counts, typical)

    def bounds(self, z: float) -> tuple[FloatArray, FloatArray]:
        """(lower, upper) [C, P x N]: mean -/+ z standard errors; an arm with fewer than
        MIN_GROUPS groups has (-inf, inf)."""
        c = self.problem.n_contexts
        est = self.estimates()
        mean, se = est.mean.reshape(c, -1), est.stderr.reshape(c, -1)
        known = (est.counts >= MIN_GROUPS).reshape(c, -1)
        return (np.where(known, mean - z * se, -np.inf),
                np.where(known, mean + z * se, np.inf))

    def candidates(self) -> tuple[npt.NDArray[np.bool_], IntArray]:
        """The candidate prompts of every context, [C, P], and every prompt's scale, [P]
        (0: no context's candidate): the prompts whose best upper bound reaches the served
        arm's lower bound (one never seen on MIN_GROUPS groups always does), at most
        ``candidates`` by upper bound, equal bounds (the infinite ones of prompts not yet
        seen enough) in :attr:`tie_order`; a prompt is pulled at the largest N that some
        context serves or finds close, as PSST pulls at the largest active N (Eq. 6)."""
        c, p, n_max = self.problem.n_contexts, self.problem.n_prompts, self.problem.n_max
        lower, upper = self.bounds(float(norm.ppf(self.settings.confidence)))
        served = arm_index(self.prompt, self.n, n_max)
        bar = lower[np.arange(c), served][:, None]  # [C, 1]
        close = (upper >= bar).reshape(c, p, n_max)
        best = upper.reshape(c, p, n_max).max(axis=2)  # [C, P]
        out = np.zeros((c, p), dtype=bool)
        for ci in range(c):
            ok = np.flatnonzero(best[ci] >= bar[ci, 0])
            order = np.lexsort((self.tie_order[ok], -best[ci, ok]))
            out[ci, ok[order[: self.settings.candidates]]] = True
        top_close = np.where(close.any(axis=2), n_max - np.argmax(close[:, :, ::-1], axis=2), 0)
        scale = np.where(out, np.maximum(top_close, self.n[:, None]), 0).max(axis=0)
        return out, scale.astype(np.intp)

    def _plan(self) -> None:
        """The candidates' queue, afresh."""
        _, scale = self.candidates()
        self._explore = [(int(q), int(scale[q])) for q in np.flatnonzero(scale > 0)]

    # ---------------------------------------------------------------- data in

    def observe(self, observations: Sequence[Observation],
                origins: Sequence[int] | None = None) -> list[Flag]:
        """Take in groups (in the order drawn): the estimates, the challengers' fresh
        samples, then every active drift test; returns the flags raised (their prompts are
        forgotten, their contexts switched). ``origins``: per observation, the context of
        the request its groups were drawn on (-1: none, as training's); None: unknown."""
        keep = [i for i, o in enumerate(observations) if o.count > 0]
        live = [observations[i] for i in keep]
        if not live:
            return []
        util, prompts, n, group = self.table.group_means(live)
        self.table.add(util, prompts, n)
        self.recent.add(util, prompts, n)
        origin = np.full(util.shape[0], -1, dtype=np.intp)
        if origins is None:
            self._kept.extend((self._epoch, -1, o) for o in live if self._keeps)
        else:
            given = np.asarray(origins, dtype=np.intp)
            if given.shape != (len(observations),) or np.any(given < -1) or np.any(
                    given >= self.pools.shape[0]):
                raise InputError(f"origins must give one context index in -1..."
                                 f"{self.pools.shape[0] - 1} per observation "
                                 f"({len(observations)}); got {given.tolist()}")
            self._kept.extend((self._epoch, int(given[i]), observations[i]) for i in keep
                              if self._keeps)
            by_group = np.repeat(given[keep],
                                 [o.count for o in live])
            origin = by_group[group]
            for ci in (int(x) for x in np.unique(origin[origin >= 0])):
                mine = origin == ci
                self.own[ci].add(util[mine], prompts[mine], n[mine])
                self.recent_own[ci].add(util[mine], prompts[mine], n[mine])
        self._reusable.extend(live)
        # the rows each context learns from: all while it pools with every context, else
        # those of the traffic it still pools with
        uses = np.broadcast_to(self.shared, (origin.size, self.pools.shape[0])).copy()
        known = origin >= 0
        uses[known] |= self.pools[:, origin[known]].T
        n_max = self.problem.n_max
        stratum = np.where(origin >= 0, origin, self.pools.shape[0])
        for ci, b in enumerate(self.challenger):
            if b >= 0:
                bp, bn = arm_at(int(b), n_max)
                rows = (prompts == bp) & (n == bn) & uses[:, ci]
                u = util[rows, ci]
                np.add.at(self._fresh[ci], stratum[rows],
                          np.stack([u, u * u, np.ones_like(u)], axis=1))
        raised: list[Flag] = []
        for test, (p, nn) in enumerate(self._tests):
            if nn == 0:
                continue
            ci = test // 2
            u = util[(prompts == p) & (n == nn) & uses[:, ci], ci]
            self._since[test] += moments(u)
            if not self.monitor.active(test):
                continue
            hit = self.monitor.update(test, self._normalise(ci, int(nn), u))
            upto = u if hit < 0 else u[: hit + 1]
            self._live[test] += (upto.sum(), upto.size)
            if hit >= 0:
                lo, hi = utility_bounds(self.problem, int(nn))
                m0 = float(self.monitor.m0[test])
                total, count = self._live[test]
                raised.append(Flag(self.requests, ci, int(p), int(nn),
                                   float(lo[ci] + m0 * (hi[ci] - lo[ci])), total / count))
        for flag in raised:
            self._drifted(flag)
        return raised

    def _normalise(self, context: int, n: int, util: FloatArray) -> FloatArray:
        lo, hi = utility_bounds(self.problem, n)
        return (util - lo[context]) / (hi[context] - lo[context])

    def _drifted(self, flag: Flag) -> None:
        """The flagged prompt keeps only its samples since the last baselines (what the test
        saw). A context serving it moves at once (module docstring): for majority voting to
        the arm the per-query model ranks first (:meth:`_model_means`), if it is another;
        otherwise to the arm of highest lower bound among those seen on BASELINE_GROUPS
        groups, if that bound exceeds the served arm's upper bound now. A context that does
        not move gets a challenger."""
        self.flags.append(flag)
        self.table.replace(flag.prompt, self.recent)
        for own, recent in zip(self.own, self.recent_own, strict=True):
            own.replace(flag.prompt, recent)
        self._kept = [k for k in self._kept if k[2].prompt != flag.prompt or k[0] == self._epoch]
        self._reusable = [o for o in self._reusable if o.prompt != flag.prompt]
        n_max = self.problem.n_max
        self.challenger[arm_at(self.challenger, n_max)[0] == flag.prompt] = -1
        contexts = [int(x) for x in np.flatnonzero(self.prompt == flag.prompt)]
        if self.problem.aggregator == "mv":
            self._follow_model(contexts)
            self._recovering[contexts] = self.settings.recovery
        else:
            lower, upper = self.bounds(float(norm.ppf(self.settings.confidence)))
            seen = (self.estimates().counts >= BASELINE_GROUPS).reshape(self.pools.shape[0], -1)
            for ci in contexts:
                a = int(arm_index(self.prompt[ci], self.n[ci], n_max))
                alt = np.where(seen[ci], lower[ci], -np.inf)
                alt[a] = -np.inf
                b = int(alt.argmax())
                if alt[b] > upper[ci, a]:
                    self._choose(ci, b, "drift", float(alt[b] - upper[ci, a]))
        self._name_challengers()
        self._plan()

    def _follow_model(self, contexts: Sequence[int], reason: str = "drift",
                      fitted: dict[tuple[Any, ...], FloatArray] | None = None,
                      errors: float | None = None) -> None:
        """Each of ``contexts`` moves to the arm the per-query model ranks first (its
        pessimistic estimate with ``moves="pessimistic"``; ``errors``: as
        :meth:`_model_means`'), if it is not the one it serves (the model's estimate of the
        gain); one fit per set of groups the contexts learn from (``fitted``: as
        :meth:`_model_means`' own, shared by the caller's calls)."""
        n_max = self.problem.n_max
        fitted = {} if fitted is None else fitted
        for ci in contexts:
            a = int(arm_index(self.prompt[ci], self.n[ci], n_max))
            mean = self._model_means(ci, fitted, errors)
            alt = np.where(np.isfinite(mean), mean, -np.inf)
            b = int(alt.argmax())
            if b != a and alt[b] > -np.inf:
                gain = alt[b] - mean[a]
                self._choose(ci, b, reason, float(gain) if math.isfinite(gain) else 0.0)

    def _model_means(self, context: int, fitted: dict[tuple[Any, ...], FloatArray],
                     errors: float | None = None) -> FloatArray:
        """The per-query model's Q of every arm in ``context`` [P x N] (NaN: a prompt without
        a group), fitted on the groups it learns from: all kept ones while it pools with
        every context, else those of the traffic it still pools with. ``fitted``: the
        models' Q [C, P, N] already fitted, by those groups and ``errors``, reused and
        filled. Q less ``errors`` standard errors (None: PESSIMISM with
        ``moves="pessimistic"``, else 0) of the mean credit over each prompt's queries
        (:meth:`ModelQTable.mv_credit_spread`; the variance seen on k queries shrunk toward
        the median prompt's, :func:`shrunk_variance`, or toward 0.25 where no prompt has 2
        queries), times w_1."""
        from iapo.model import ModelQTable

        if errors is None:
            errors = PESSIMISM if self.settings.moves == "pessimistic" else 0.0
        pools = None if self.shared[context] else tuple(
            int(x) for x in np.flatnonzero(self.pools[context]))
        key = (pools, errors)
        if key not in fitted:
            model = ModelQTable(self.problem)
            model.update([o for _, origin, o in self._kept if pools is None
                          or (origin >= 0 and self.pools[context, origin])])
            q = np.asarray(model.mean, dtype=np.float64)
            if errors:
                _, var, k = model.mv_credit_spread()
                seen = ~np.isnan(var)
                # the median prompt's [N]; with no prompt on 2 queries, the largest variance
                # a credit in [0, 1] can have
                typical = np.array([np.median(v[m]) if m.any() else 0.25
                                    for v, m in zip(var.T, seen.T, strict=True)])
                var = shrunk_variance(np.where(seen, var, typical), k[:, None], typical)
                with np.errstate(invalid="ignore", divide="ignore"):
                    se = np.sqrt(var / k[:, None])  # [P, N]
                q = q - errors * self.problem.grid.weights[:, 0, None, None] * se[None]
            fitted[key] = q
        return fitted[key][context].reshape(-1)

    # ---------------------------------------------------------------- refits

    def refit(self) -> list[Switch]:
        """Move every context still recovering from a drift flag to the model's first
        choice, judge every challenger with FRESH_GROUPS fresh samples or more (switch on
        evidence, drop it, or keep gathering), name new challengers, re-plan the candidates,
        and take the drift baselines when due. Returns the switches made."""
        before = len(self.switches)
        self._check_traffic()
        c, n_max = self.problem.n_contexts, self.problem.n_max
        recovering = [int(x) for x in np.flatnonzero(self._recovering > 0)]
        self._recovering[recovering] -= 1
        fitted: dict[tuple[Any, ...], FloatArray] = {}
        self._follow_model(recovering, fitted=fitted)  # after a drift flag (module docstring)
        if self.settings.moves == "pessimistic":  # every other context too
            self._follow_model([ci for ci in range(c) if ci not in recovering], "model",
                               fitted)
            recovering = list(range(c))  # no challenger is judged
        typical = self.estimates().typical
        for ci in range(c):
            a, b = int(arm_index(self.prompt[ci], self.n[ci], n_max)), int(self.challenger[ci])
            if b < 0 or ci in recovering:  # a recovering context follows the model alone
                continue
            # the served arm is compared within each origin of the fresh samples (where it
            # has two samples or more), weighted as the fresh samples are
            fresh, served = self._fresh[ci], self._by_origin(ci, a)
            ok = (fresh[:, 2] > 0) & (served[:, 2] >= 2)
            k = float(fresh[ok, 2].sum())
            if k < FRESH_GROUPS:
                continue
            # one fresh sample more at each end of the range: 30 samples all alike (an easy
            # slice of queries) must not claim a standard error of 0
            m_b, var_b, k_b = with_ends(self.problem, ci, arm_at(b, n_max)[1],
                                        fresh[ok].sum(axis=0))
            w, k_a = fresh[ok, 2] / k, served[ok, 2]
            m_a, v_a = mean_and_variance(served[ok])
            var_a = shrunk_variance(v_a, k_a, float(typical[ci]))
            gain = m_b - float(w @ m_a)
            lower = gain - self._z_switch * math.sqrt(var_b / k_b + float(w * w @ (var_a / k_a)))
            if lower > self.settings.min_gain:
                self.challenger[ci] = -1
                self._choose(ci, b, "evidence", float(lower))
            elif gain <= self.settings.min_gain:  # no better on its own fresh samples
                self.challenger[ci] = -1
        self._name_challengers()
        self._plan()
        while self._next_refit <= self.requests:
            self._next_refit += self.settings.refine_every
        if self.requests >= self._next_baseline:
            self._baselines()
            while self._next_baseline <= self.requests:
                self._next_baseline *= 2
        return self.switches[before:]

    def _by_origin(self, context: int, arm: int) -> FloatArray:
        """The sum, sum of squares and count of the samples of ``arm`` in ``context``'s
        utility, per origin: [C + 1, 3], the last of groups of no known origin (training's
        among them)."""
        p, nn = arm_at(arm, self.problem.n_max)
        rows = [t.moments_of(context, p, nn) for t in self.own]
        total = self.table.moments_of(context, p, nn)
        return np.stack(rows + [total - np.sum(rows, axis=0)])

    def _name_challengers(self) -> None:
        """Every context without a challenger names the arm most likely better than its
        served one: the highest (mean_b - mean_a) / sqrt(se_b^2 + se_a^2) among arms seen on
        MIN_GROUPS groups whose mean beats the served arm's (an arm seen on few groups is
        rarely the most likely, however lucky its mean). A served arm without an estimate
        (its prompt drifted) is challenged by the arm of highest lower bound."""
        c, n_max = self.problem.n_contexts, self.problem.n_max
        est = self.estimates()
        mean, se = est.mean.reshape(c, -1), est.stderr.reshape(c, -1)
        lower, _ = self.bounds(float(norm.ppf(self.settings.confidence)))
        known = (est.counts >= MIN_GROUPS).reshape(c, -1)
        for ci in (int(x) for x in np.flatnonzero(self.challenger < 0)):
            a = int(arm_index(self.prompt[ci], self.n[ci], n_max))
            seen = known[ci]
            if seen[a]:
                with np.errstate(invalid="ignore", divide="ignore"):
                    score = (mean[ci] - mean[ci, a]) / np.hypot(se[ci], se[ci, a])
                score = np.where(seen & (mean[ci] > mean[ci, a]), score, -np.inf)
            else:
                score = np.where(seen, lower[ci], -np.inf)
            score[a] = -np.inf
            b = int(score.argmax())
            if score[b] > -np.inf:  # +inf: better on samples without any spread
                self.challenger[ci] = b
                self._fresh[ci] = 0.0

    def _choose(self, context: int, arm: int, reason: str, gain_lower: float) -> None:
        """Serve ``arm`` in ``context``; its drift tests restart from no samples. Once some
        contexts' traffic is known to differ (a split), so do the tests of the contexts that
        pool with it and serve its old or new prompt: the mix of traffics they watch
        changes with its arm."""
        n_max = self.problem.n_max
        old = (int(self.prompt[context]), int(self.n[context]))
        new = arm_at(arm, n_max)
        if new == old:
            return
        self.prompt[context], self.n[context] = new
        self.switches.append(Switch(self.requests, context, old, new, reason, gain_lower))
        self.challenger[context] = -1
        self._track(context)
        if self.splits:
            for ci in (int(x) for x in np.flatnonzero(self.pools[:, context])):
                if ci != context and self.prompt[ci] in (old[0], new[0]):
                    self._track(ci)

    def _track(self, context: int) -> None:
        """The context's tests follow its served arm (p, N) and (p, 1) (none twice when N =
        1), from no samples; they stay off until the next baseline."""
        p, n = int(self.prompt[context]), int(self.n[context])
        for test, arm_n in ((2 * context, n), (2 * context + 1, 1 if n > 1 else 0)):
            self._tests[test] = (p, arm_n)
            self._since[test] = 0.0
            self.monitor.stop(test)

    def _check_traffic(self) -> None:
        """Every pair of contexts that still pool compares their traffics on the arm most
        sampled by both (at least BASELINE_GROUPS groups each), in the first one's utility:
        a two-sided z test at the traffic level, each side with one sample more at each end
        of the range; a difference splits the pair."""
        for a, b in itertools.combinations(range(self.pools.shape[0]), 2):
            if not self.pools[a, b]:
                continue
            ta, tb = self.own[a], self.own[b]
            both = np.where((ta.counts >= BASELINE_GROUPS) & (tb.counts >= BASELINE_GROUPS),
                            np.minimum(ta.counts, tb.counts), 0)
            if not both.any():
                continue
            p, nn = np.unravel_index(int(both.argmax()), both.shape)
            mine, theirs = (t.moments_of(a, int(p), int(nn) + 1) for t in (ta, tb))
            (m_a, v_a, k_a), (m_b, v_b, k_b) = (with_ends(self.problem, a, int(nn) + 1, acc)
                                                for acc in (mine, theirs))
            z = (m_a - m_b) / math.sqrt(v_a / k_a + v_b / k_b)
            if abs(z) <= self._z_traffic:
                continue
            self.pools[a, b] = self.pools[b, a] = False
            self.splits.append(TrafficSplit(self.requests, a, b, int(p), int(nn) + 1,
                                            mine[0] / mine[2], int(mine[2]),
                                            theirs[0] / theirs[2], int(theirs[2]), z))
            for ci in (a, b):  # what was judged on the other's groups starts again
                self.challenger[ci] = -1
                self._track(ci)

    def _baselines(self) -> None:
        """Every test with BASELINE_GROUPS samples since its arm began to be served restarts
        against their lower bound: samples gathered after the arm was chosen, so the choice's
        own optimism (the winner's curse of its training estimate) is not in the baseline."""
        self.recent = GroupTable(self.problem)
        self.recent_own = [GroupTable(self.problem) for _ in self.own]
        self._epoch += 1
        for test, (_, arm_n) in enumerate(self._tests):
            count = self._since[test, 2]
            self._live[test] = 0.0
            if arm_n == 0 or count < BASELINE_GROUPS:
                self.monitor.stop(test)
                continue
            # with_ends: samples all alike (a context of easy queries) must not put the
            # baseline at the top of the range, where one lesser sample alarms
            mean, var, k = with_ends(self.problem, test // 2, int(arm_n), self._since[test])
            lower = mean - self._z_baseline * math.sqrt(var / k)
            m0 = float(self._normalise(test // 2, int(arm_n), np.array([lower]))[0])
            self.monitor.start(test, min(max(m0, 0.0), 1.0 - 1e-9))


__all__ = ["BETS", "Continual", "ContinualSettings", "DriftMonitor", "Estimates", "Flag",
           "GroupTable", "Switch", "TrafficSplit", "check_moves", "mean_and_variance",
           "moments", "shrunk_variance", "utility_bounds", "with_ends"]
