"""Which estimator decides: chosen by cross-validation on completions already paid for.

Beyond the paper. Two estimators of Q(c, p, n) compete (docs/default-learner.md):

- ``blocks``: the unbiased block means of :class:`iapo.estimate.QTable`, pulled at each
  prompt's largest live N (Eq. 6);
- ``model``: the per-query model of :class:`iapo.model.ModelQTable`, pulled in small groups on
  many queries. Far more sample-efficient where it is right, biased where it is not.

Which one is right depends on the data, not on the environment's name, so the data are asked.
The groups already drawn are split by *query* into ``folds`` folds (a query's groups stay in
one fold, so a held-out fold holds queries no fit has seen). For every fold, each candidate is
fitted on the other folds and compared with the held-out fold's unbiased block means H(c, p, n),
on the arms that matter: the prompts still alive in each context (the top of its ranking),
at every n that the groups hold a block of (n <= the group size). The error counted is that of
*differences* between those arms, the quantity a ranking depends on: per context the errors
D = Q_fit - H are centred on their mean over the context's arms, and the squares summed,

    err(E) = sum over folds, contexts c, arms a of (D_E(c, a) - mean_a D_E(c, a))^2.

H's own noise adds the same expected amount to every candidate's error, since H is independent
of what was fitted on the other folds; so err(model) - err(blocks) estimates the difference of
their mean squared errors (up to the smaller training set). The first candidate stands (ties
included) unless another's error is smaller: by any amount, or by a one-sided paired t test
over the folds (the folds' errors are the units: a fold's contexts share its data, and are
not independent). Nothing is drawn for the validation itself.

The held-out arms stop at the group size, while Best-of-N decides up to N_max, and the model's
error there grows with N: on the real Best-of-N scores its pooled residuals have heavier tails
than any one query's, so its best of N rises too fast with N. :func:`slope_check` asks the
groups for the start of that rise: per group, its best of g less its mean, against the model's
expected best of g less its expected one. Where the model's rise exceeds the groups' by more
than ``SLOPE_MARGIN`` of it, beyond ``SLOPE_Z`` standard errors, the model is not used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from iapo.estimate import Estimator, QTable
from iapo.problem import Problem
from iapo.pulls import Observation, joined

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
ROUNDING = 1e-24  # a squared error this small is rounding, not a difference of estimators
RISE_ROUNDING = 1e-12  # an excess of the model's rise this small is rounding, not a bias
# the slope check (Best-of-N): the model's rise from 1 to g completions may exceed the groups'
# by this share of it, and by this many standard errors (one-sided, about 60%), before the
# model is rejected (docs/default-learner.md: on the real Best-of-N scores the model's excess
# is 8% to 26%, on synth-categorical, where it is right, 2% to 5%: the margin lies near the top
# of the second range, and the few groups of a small budget give the model little benefit of
# the doubt)
SLOPE_MARGIN = 0.04
SLOPE_Z = 0.25


@dataclass(frozen=True)
class Validation:
    """The outcome: the ``choice``, each candidate's summed centred squared error
    (``errors``), the number of folds and of (fold, context, arm) comparisons behind them, and
    in words why."""

    choice: str
    errors: dict[str, float]
    folds: int
    compared: int
    reason: str
    slope: SlopeCheck | None = None  # Best-of-N, where the held-out errors chose the model

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"choice": self.choice, "errors": self.errors,
                                  "folds": self.folds, "compared": self.compared,
                                  "reason": self.reason}
        if self.slope is not None:
            out["slope"] = self.slope.to_dict()
        return out

    def checked(self, slope: SlopeCheck) -> Validation:
        """This outcome after the model's slope check: blocks where it rejects the model."""
        numbers = (f"{slope.excess:.4g} beyond a margin of {SLOPE_MARGIN:g} of it, standard "
                   f"error {slope.stderr:.4g}, {slope.groups} groups")
        if not slope.rejects:
            return dataclasses.replace(
                self, slope=slope,
                reason=f"{self.reason}; its rise from one completion to the group's best is "
                       f"within the groups' own (excess {numbers})")
        return dataclasses.replace(
            self, choice="blocks", slope=slope,
            reason=f"blocks chosen: the model won the held-out errors ({self.reason}), but its "
                   f"rise from one completion to the group's best exceeds the groups' own by "
                   f"{numbers}: it would overrate large N")


@dataclass(frozen=True)
class Folds:
    """Every distinct query (``queries``, sorted) and its fold (``fold``), 0..k-1."""

    queries: npt.NDArray[np.int64]
    fold: npt.NDArray[np.int64]

    def of(self, queries: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The fold of each of ``queries`` (each one of :attr:`queries`)."""
        return self.fold[np.searchsorted(self.queries, queries)]


def query_folds(observations: Sequence[Observation], folds: int,
                rng: np.random.Generator) -> Folds:
    """Each distinct query of ``observations`` -> its fold, 0..folds-1: the queries in random
    order, dealt round-robin, so fold sizes differ by at most one."""
    queries = np.unique(np.concatenate([o.queries for o in observations if o.count]))
    order = rng.permutation(queries.size)
    fold = np.empty(queries.size, dtype=np.int64)
    fold[order] = np.arange(queries.size) % folds
    return Folds(queries.astype(np.int64), fold)


def split_by_fold(observations: Sequence[Observation], folds: Folds,
                  fold: int) -> tuple[list[Observation], list[Observation]]:
    """(the groups of every other fold, the groups of ``fold``), one observation per
    (prompt, n) on each side."""
    train, held = [], []
    for o in observations:
        if not o.count:
            continue
        mine = folds.of(o.queries) == fold
        if mine.any():
            held.append(o.rows(mine))
        if not mine.all():
            train.append(o.rows(~mine))
    return list(joined(train).values()), list(joined(held).values())


def centred_errors(fit: FloatArray, held: FloatArray, arms: BoolArray) -> FloatArray:
    """Per context, the sum over its ``arms`` [C, P, n] of the squared error of ``fit``
    against ``held`` (both [C, P, n]), the errors centred on their mean over the context's
    arms: [C]. A context with fewer than two arms counts 0 (a difference needs two)."""
    d = np.where(arms, fit - held, 0.0)
    k = arms.sum(axis=(1, 2))
    centre = d.sum(axis=(1, 2)) / np.maximum(k, 1)
    sq = np.where(arms, (d - centre[:, None, None]) ** 2, 0.0).sum(axis=(1, 2))
    return np.where(k >= 2, sq, 0.0)


def cross_validate(problem: Problem, observations: Sequence[Observation], alive: BoolArray,
                   candidates: Mapping[str, Callable[[], Estimator]], *, upto: int,
                   folds: int, rng: np.random.Generator,
                   level: float | None = None) -> Validation:
    """Each candidate estimator (a factory of an empty one) fitted on all folds but one and
    scored on the held-out fold's block means, for the ``alive`` [C, P] prompts at n <=
    ``upto`` (module docstring). The first candidate stands unless a later one has a smaller
    summed error: by any amount (``level`` None), or significantly, a one-sided paired t test
    over the folds' error differences at ``level``. The first later candidate that does
    replaces it."""
    names = list(candidates)
    # only the alive prompts' groups: every estimate of a prompt is its own groups' (the
    # queries' gold answers come with every group)
    observations = [o for o in observations if o.count and alive[:, o.prompt].any()]
    if not observations:
        return Validation(names[0], dict.fromkeys(names, 0.0), 0, 0,
                          f"{names[0]}: no groups of the alive prompts to compare; the first "
                          "candidate decides")
    dealt = query_folds(observations, folds, rng)
    per_fold: dict[str, list[float]] = {name: [] for name in names}
    compared = 0
    for f in range(folds):
        train, held = split_by_fold(observations, dealt, f)
        if not train or not held:
            continue
        target = QTable(problem, without_latency=True)
        target.update(held)
        fits = {}
        for name in names:
            est = candidates[name]()
            est.update(train)
            fits[name] = est.mean[:, :, :upto]
        h = target.mean[:, :, :upto]
        arms = alive[:, :, None] & np.isfinite(h)
        for fit in fits.values():
            arms &= np.isfinite(fit)
        k = arms.sum(axis=(1, 2))
        here = int(k[k >= 2].sum())  # the arms of contexts with a difference to compare
        if not here:
            continue
        compared += here
        for name in names:
            per_fold[name].append(float(centred_errors(fits[name], h, arms).sum()))
    used = len(per_fold[names[0]])
    errors = {name: float(np.sum(per_fold[name])) for name in names}
    if not compared:
        return Validation(names[0], errors, used, 0,
                          f"{names[0]}: nothing to compare (no context held two arms with "
                          "held-out data and estimates of both); the first candidate decides")
    first = names[0]
    choice, why = first, "kept"
    for name in names[1:]:
        gain = np.array(per_fold[first]) - np.array(per_fold[name])  # [folds used]
        if beats(gain, compared, level):
            choice, why = name, "chosen"
            break
    test = ("the smaller error wins" if level is None else
            f"another estimator only by a one-sided t test at {level:g} over the folds")
    shown = ", ".join(f"{name} {errors[name]:.4g}" for name in names)
    reason = (f"{choice} {why}: held-out error of arm differences over {used} folds by query, "
              f"the prompts alive at n <= {upto}, {test} ({compared} comparisons; {shown})")
    return Validation(choice, errors, used, compared, reason)


@dataclass(frozen=True)
class SlopeCheck:
    """The slope check's outcome: the mean excess of the model's rise over the groups' (less
    the margin), its standard error, the groups behind it, and whether it rejects the
    model."""

    excess: float
    stderr: float
    groups: int
    rejects: bool

    def to_dict(self) -> dict[str, object]:
        return {"excess": self.excess, "stderr": self.stderr, "groups": self.groups,
                "rejects": self.rejects, "margin": SLOPE_MARGIN, "z": SLOPE_Z}


def slope_check(problem: Problem, task: FloatArray, observations: Sequence[Observation],
                alive: BoolArray, g: int) -> SlopeCheck:
    """Does the model's rise from 1 to ``g`` completions exceed what the groups show
    (Best-of-N)? ``task`` [C, P, N]: the model's task value (:meth:`ModelQTable.bon_task`).
    Each group of at least ``g`` completions of a prompt alive somewhere is one sample: the
    mean, over the contexts where its prompt is alive, of the model's rise from N = 1 to
    N = g (``task[c, p, g - 1] - task[c, p, 0]``) less (1 + SLOPE_MARGIN) times the group's
    own, the best of its first g task values less their mean (whose expectation is the true
    rise). The model is rejected where the samples' mean exceeds SLOPE_Z standard errors (and
    rounding: an exact model's rise may exceed the groups' by 1e-17)."""
    from iapo.utility import task_values

    rise = task[:, :, g - 1] - task[:, :, 0]  # [C, P]
    samples = []
    for o in observations:
        where = alive[:, o.prompt]
        if o.n < g or not o.count or not where.any():
            continue
        v = task_values(o.scores[:, :g], problem.grid.weights)  # [count, g, C]
        own = v.max(axis=1) - v.mean(axis=1)  # [count, C]
        samples.append((rise[None, :, o.prompt] - (1 + SLOPE_MARGIN) * own)[:, where]
                       .mean(axis=1))
    d = np.concatenate(samples) if samples else np.zeros(0)
    if d.size < 2:
        return SlopeCheck(0.0, 0.0, int(d.size), False)
    excess, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))
    return SlopeCheck(excess, se, int(d.size), excess > max(SLOPE_Z * se, RISE_ROUNDING))


def beats(gain: FloatArray, compared: int, level: float | None) -> bool:
    """Whether the folds' error differences ``gain`` (the first candidate's error less the
    challenger's, per fold) show the challenger better: a positive sum, beyond rounding
    (squared errors of 1e-12 per comparison count as exact), and where ``level`` is given, a
    one-sided paired t test over the folds at that level (folds - 1 degrees of freedom)."""
    total = float(gain.sum())
    if total <= compared * ROUNDING:
        return False
    if level is None:
        return True
    if gain.size < 2:
        return False
    se = float(np.sqrt(gain.size * gain.var(ddof=1)))  # of the sum
    return total > float(stats.t.ppf(1 - level, gain.size - 1)) * se
