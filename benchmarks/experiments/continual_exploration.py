"""Where continual learning's learning completions go decides how much of a drift it repairs:
ten rules for them, on `iapo simulate`'s runs with drift.

    .venv/bin/python benchmarks/experiments/continual_exploration.py ENV [--runs R]
        [--workers W] [--rules current,shuffled,oracle,paired,optimistic]
        [--requests 7000] [--no-drift] [--moves evidence|pessimistic] [--budget 0.1]
        [--retrain-at 6000]

Every rule runs `iapo simulate --drift-at 2000 --budgets B` (B: ``--budget``, 0.1 unless
set; `iapo.simulate.simulate_run`, the same requests, training and drift) with the
continual learner's class replaced:

- ``current``: `iapo.continual.Continual` as it is (docs/continual.md's rules).
- ``shuffled``: the same, but candidates of equal bounds (the prompts not yet seen enough,
  whose bounds are infinite) go in a random order drawn once per run, not by prompt index.
- ``modelties``: the same, but candidates of equal bounds go in the order of the per-query
  model's estimate (each prompt's best arm, averaged over the contexts), refitted at every
  re-plan: the untried prompts are swept in the order their few answers suggest. Not in the
  default ``--rules``.
- ``oracle``: a reference, not a rule. The learning pulls that go to the candidates go
  instead to the prompts that are best (in some context) on the traffic as it is at that
  moment, the drifted truth from request 2,000 on, at N_max; everything else, the
  challengers and the switches included, is unchanged. It says how much of the window's
  regret the present switch rules leave when the exploration knows where to look.
- ``paired``: candidates by paired, unbiased comparisons with the served arm, query by
  query, and switches by the same comparisons in addition to the present ones. The served
  prompt is answered on nearly every query of the traffic, tens to hundreds of times, so
  its credit there is estimated closely; another prompt's credit on the same query is the
  U-statistic of its answers there (the average credit over all size-n subsets,
  `iapo.exact.mv_subset_credit`: unbiased for every n up to its answers on that query).
  Past DEEP answers on a query, a prompt's credit there is its Dirichlet posterior's
  (`iapo.model`), nearly unbiased with so many answers. The difference, averaged over the
  queries both were asked, less the cost difference, is the gain, with the query-to-query
  spread as its error (the variance shrunk toward 0.05 with a weight of 5 queries).
  Candidates: per context, the 2 prompts of highest upper bound (z = 1.645) on the gain of
  one of their arms, where it is above 0. An arm asked on fewer than 3 queries deep enough
  has the block estimates' upper bound instead (infinite with few groups); ties go in an
  order drawn at random once per run. They are pulled at N_max. Switch: at every refit,
  after the present rules, every context (one still recovering from a drift flag too)
  moves to the arm of highest lower bound (z = 2, 10 queries or more) where that is above
  0 (logged as "evidence"). It takes the best of hundreds of arms at every look, so it does
  not hold the present rules' level over the horizon. The per-query model cannot make these
  comparisons: a prompt with few answers per query has its large-N credit pulled toward the
  middle by its prior (`model_bias.py`), while the served prompt's is not.
- ``regression``: the paired rule with each gain estimated by regression on the served
  arm's credit on the same queries (a control variate; the paired difference is its slope
  fixed at 1). Not in the default ``--rules``: as slow as ``paired``.
- ``optimistic``: exploration by serving, after a drift flag. A recovering context serves
  the arm of highest *optimistic* per-query-model estimate (its Q plus one standard error,
  as the pessimistic moves subtract one) at every recovery refit but its last, which takes
  the model's first choice, as the present rule does. Recovery refits come every 250
  requests, 12 of them (the same 3,000 requests as the present 3 refits). A served request
  draws N completions of its arm where the learning pulls may draw a tenth of that, so
  serving the arms the model is unsure of learns about them faster; users are served arms
  chosen for what they might be, which the learning pulls never do.
- ``retrain``: from the first drift flag on, no learning pull is drawn; at request 6,000
  (``--retrain-at``), psst-auto is trained afresh with every learning completion left, on
  the traffic's queries after the fact (as `iapo refine --budget` draws on logged
  requests), and every context moves to its choice, without evidence. Not in the default
  ``--rules``.
- ``deferred``: the same, with no learning pull before the retraining at all: the whole
  learning budget of the first 6,000 requests goes to one PSST run. Not in the default
  ``--rules``.
- ``fed``: ``deferred``, with the PSST run's completions given to the learner and every
  context moved to the per-query model's estimate less one standard error, not to PSST's
  choice. Not in the default ``--rules``.

``--moves pessimistic`` runs every rule with pessimistic moves (`iapo simulate --moves`);
``--budget`` sets the learning budget (10%).
The script assumes majority voting that pays all N, with no latency priced (MATH and
CommonsenseQA), and refuses anything else.

Printed per rule: the window's regret per request (requests 6,000 to 7,000; SEM over runs),
the frozen policy's, the ratio of the two (of the means, as docs/continual.md), the paired
difference of cumulative regret against frozen at the last request (SEM), the switches per
run, the largest share of learning completions in the served ones, and the seconds taken;
and where the window's regret lies: the arms served from request 6,000, per (run,
context), their mean gap to the best prompt (at its best N) and to their prompt's best N,
and how often the best prompt is served. ``--no-drift`` runs the same
without the drift (the window is then not printed). Cited by docs/continual.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import joblib
import numpy as np
from scipy.stats import norm

from iapo import simulate
from iapo.bench.runner import run_queries, seed_sequence
from iapo.continual import Continual, ContinualSettings
from iapo.exact import abstain_first, mv_polya_credit, mv_subset_credit
from iapo.learners import get_learner
from iapo.model import ModelQTable, _posterior
from iapo.oracle import SimulatedOracle
from iapo.problem import arm_index
from iapo.report import Recorder
from iapo.settings import DEFAULT_LEARNER, MOVES
from iapo.utility import gold_first, unique_rows

DEEP = 96  # answers on a query past which a prompt's credit there is its posterior's
WINDOW = 6000  # the window's first request (drift at 2,000 + 4,000)


def random_order(learner: Continual) -> np.ndarray:
    """A random order of the prompts, drawn once per learner and seeded by its training's
    queries (the same for every rule on the same run)."""
    seed = sum(int(o.queries.sum()) for _, _, o in learner._kept)
    return np.random.default_rng(seed).permutation(learner.problem.n_prompts)


class OracleExploration(Continual):
    """Candidates: the prompts best on the traffic as it is now, at N_max (a reference)."""

    truths: list[tuple[int, np.ndarray]] = []  # (from request, exact Q [C, P, N])

    def _plan(self) -> None:
        q = [t for start, t in self.truths if start <= self.requests][-1]
        flat = q.reshape(q.shape[0], -1)
        best = sorted({int(a) // self.problem.n_max for a in flat.argmax(axis=1)})
        self._explore = [(p, self.problem.n_max) for p in best]


class PairedExploration(Continual):
    """Candidates and switches by paired U-statistic gains (module docstring)."""

    z_explore, z_switch, top, explore_queries, switch_queries = 1.645, 2.0, 2, 3, 10

    _cached: tuple[np.ndarray, np.ndarray] | None = None

    def observe(self, *args: Any, **kwargs: Any) -> Any:
        self._cached = None
        return super().observe(*args, **kwargs)

    def _drifted(self, flag: Any) -> None:
        self._cached = None  # the flagged prompt's groups before the baselines are forgotten
        super()._drifted(flag)

    def _credits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per (prompt, query) credit for every n [P, X, N] (NaN: fewer answers than n, or
        none) and each prompt's mean cost of one completion [P]; kept until new groups come
        or a drift flag forgets some."""
        if self._cached is None:
            self._cached = self._fit_credits()
        return self._cached

    def _fit_credits(self) -> tuple[np.ndarray, np.ndarray]:
        model = ModelQTable(self.problem)
        model.update([o for _, _, o in self._kept])
        votes, n_max = model._votes, self.problem.n_max
        answers = votes.sum(axis=2)
        out = np.full((*answers.shape, n_max), np.nan)
        pi, xi = np.nonzero(answers > 0)
        abstain = self.problem.no_answer == "abstain"  # gold, "no answer", the others
        rows = (abstain_first(votes[pi, xi], model._gold[xi], model._no_answer[xi]) if abstain
                else gold_first(votes[pi, xi], model._gold[xi]))
        rest = 2 if abstain else 1  # the column the other answers start at
        k = answers[pi, xi]
        deep = k > DEEP
        if deep.any():
            uniq, inverse = unique_rows(rows[deep])
            post = _posterior(uniq, model.alpha)
            out[pi[deep], xi[deep]] = mv_polya_credit(
                post[:, 0], post[:, rest:], n_max, post[:, 1] if abstain else None)[inverse]
        for g in np.unique(k[~deep]):
            sel = np.flatnonzero(~deep & (k == g))
            uniq, inverse = unique_rows(rows[sel])
            credit = mv_subset_credit(uniq[:, 0], uniq[:, rest:], int(g),
                                      uniq[:, 1] if abstain else None)[inverse]
            width = min(int(g), n_max)
            out[pi[sel], xi[sel], :width] = credit[:, :width]
        with np.errstate(invalid="ignore", divide="ignore"):
            cost = model._cost_sum / model._cost_n
        return out, cost

    def _gains(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per context: the gain of every arm over the served one [P, N] (the served
        prompt's: NaN), its standard error and the queries behind it."""
        credit, cost = self._credits()
        grid, n_max = self.problem.grid, self.problem.n_max
        out = []
        for c in range(self.problem.n_contexts):
            s, ns = int(self.prompt[c]), int(self.n[c])
            with np.errstate(invalid="ignore", divide="ignore"):
                mean, var, k = self._task_gain(credit, credit[s, :, ns - 1])
                mean, var = grid.weights[c, 0] * mean, grid.weights[c, 0] ** 2 * var
                paid = grid.cost_weights[c] * np.nan_to_num(cost)[:, None] * np.arange(
                    1, n_max + 1)
                gain = mean - (paid - paid[s, ns - 1])
                se = np.sqrt((var * k + 0.05 * 5) / (k + 5) / np.maximum(k, 1))
            gain[s], k[s] = np.nan, 0
            out.append((gain, se, k))
        return out

    @staticmethod
    def _task_gain(credit: np.ndarray, served: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The mean credit gain of every arm over the served arm's [P, N] (``credit`` [P, X,
        N], ``served`` [X]: its credit per query), the variance of one query's estimate and
        the queries behind it: the paired differences on the queries both were asked."""
        d = credit - served[None, :, None]
        k = np.isfinite(d).sum(axis=1)
        mean = np.nansum(d, axis=1) / k
        return mean, np.nansum((d - mean[:, None, :]) ** 2, axis=1) / np.maximum(k - 1, 1), k

    def _plan(self) -> None:
        """Per context, the ``top`` prompts of highest upper bound on the gain over their
        arms: an arm's paired bound where it has one on ``explore_queries`` queries or more,
        else its block estimates' (:meth:`Continual.bounds`, less the served arm's mean;
        infinite with fewer than MIN_GROUPS groups). Ties (infinite bounds, the prompts not
        yet sampled deep enough) go in an order drawn at random once per learner, seeded by
        its training's queries (the per-query model would rank the served prompt first). All
        are pulled at N_max."""
        c_all, n_max = self.problem.n_contexts, self.problem.n_max
        _, block_upper = self.bounds(float(norm.ppf(self.settings.confidence)))
        mean = self.estimates().mean.reshape(c_all, -1)
        if not hasattr(self, "_order"):  # first called by __init__: training's groups only
            self._order = random_order(self)
        want: dict[int, int] = {}
        for c, (gain, se, k) in enumerate(self._gains()):
            served = int(arm_index(self.prompt[c], self.n[c], n_max))
            by_blocks = (block_upper[c] - mean[c, served]).reshape(-1, n_max)
            upper = np.where(k >= self.explore_queries, gain + self.z_explore * se,
                             by_blocks)
            best = np.nan_to_num(upper, nan=-np.inf).max(axis=1)
            best[int(self.prompt[c])] = -np.inf
            for p in np.lexsort((-self._order, -best))[: self.top]:
                if best[p] > 0:
                    want[int(p)] = n_max
        self._explore = sorted(want.items())

    def refit(self) -> list[Any]:
        before = len(self.switches)
        super().refit()
        for c, (gain, se, k) in enumerate(self._gains()):
            lower = np.where(k >= self.switch_queries, gain - self.z_switch * se, -np.inf)
            lower = np.nan_to_num(lower, nan=-np.inf)
            best = int(lower.argmax())
            if lower.flat[best] > 0:
                p, n = np.unravel_index(best, lower.shape)
                self._choose(c, int(arm_index(int(p), int(n) + 1, self.problem.n_max)),
                             "evidence", float(lower.flat[best]))
        self._plan()
        return self.switches[before:]


class RegressionExploration(PairedExploration):
    """The paired rule with each gain estimated by regression on the served arm's credit on
    the same queries (a control variate): the candidate's mean credit over the queries both
    were asked, less beta times how far the served arm's mean there lies from its mean over
    all its queries, beta the fitted slope (clipped to [0, 2]; 1, the paired difference,
    where the served credit does not vary). Its error is the residuals' spread."""

    @staticmethod
    def _task_gain(credit: np.ndarray, served: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ok = np.isfinite(credit) & np.isfinite(served)[None, :, None]
        k = ok.sum(axis=1)
        y = np.where(ok, credit, 0.0)
        z = np.where(ok, served[None, :, None], 0.0)
        my, mz = y.sum(axis=1) / k, z.sum(axis=1) / k
        dz = (z - mz[:, None]) * ok
        vz = (dz * dz).sum(axis=1) / np.maximum(k - 1, 1)
        cyz = ((y - my[:, None]) * dz).sum(axis=1) / np.maximum(k - 1, 1)
        beta = np.clip(np.where(vz > 1e-9, cyz / vz, 1.0), 0.0, 2.0)
        r = (y - beta[:, None] * z) * ok
        dr = (r - (r.sum(axis=1) / k)[:, None]) * ok
        mu = float(np.nanmean(served))
        return (my - beta * (mz - mu) - mu,
                (dr * dr).sum(axis=1) / np.maximum(k - 1, 1), k)


class ShuffledTies(Continual):
    """The present rules, with candidates of equal bounds in a random order (drawn once per
    learner, seeded by its training's queries) instead of by prompt index."""

    def _plan(self) -> None:
        if not hasattr(self, "_shuffled"):  # first called by __init__
            self.tie_order = random_order(self)
            self._shuffled = True
        super()._plan()


class OptimisticRecovery(Continual):
    """After a drift flag, a recovering context serves the arm of highest *optimistic*
    per-query-model estimate (Q plus ERRORS standard errors, :meth:`Continual._model_means`)
    at every recovery refit but its last, which takes the model's first choice as the
    present rule does; recovery refits come every refine_every / QUARTERS requests, for
    QUARTERS x ``recovery`` of them. The other refits are the present ones."""

    ERRORS, QUARTERS = 1.0, 4

    def __init__(self, problem: Any, settings: ContinualSettings, training: Any,
                 served: Any) -> None:
        super().__init__(problem, dataclasses.replace(
            settings, recovery=settings.recovery * self.QUARTERS), training, served)
        self._next_quarter = 0

    def due(self) -> bool:
        return super().due() or bool(self._recovering.any()) and \
            self.requests >= self._next_quarter

    def refit(self) -> list[Any]:
        before = len(self.switches)
        if self.requests < self._next_refit:  # a quarter refit: recovery moves only
            recovering = [int(x) for x in np.flatnonzero(self._recovering > 0)]
            self._recovering[recovering] -= 1
            self._follow_model(recovering)
            self._plan()
        else:
            super().refit()
        step = self.settings.refine_every // self.QUARTERS
        self._next_quarter = (self.requests // step + 1) * step
        return self.switches[before:]

    def _follow_model(self, contexts: Any, reason: str = "drift", fitted: Any = None,
                      errors: float | None = None) -> None:
        explore = [c for c in contexts if self._recovering[c] > 0]
        super()._follow_model([c for c in contexts if self._recovering[c] <= 0], reason,
                              fitted, errors)
        super()._follow_model(explore, reason, None, -self.ERRORS)


class ModelTies(Continual):
    """The present rules, with candidates of equal bounds (the prompts not yet seen enough)
    in the order of the per-query model's estimate (its best arm's Q, averaged over the
    contexts; a prompt without a group last), refitted at every re-plan."""

    def _plan(self) -> None:
        if self._kept:  # training's groups; none where training drew nothing
            fitted: dict[tuple[Any, ...], np.ndarray] = {}
            q = np.stack([self._model_means(c, fitted, 0.0).reshape(-1, self.problem.n_max)
                          for c in range(self.problem.n_contexts)])
            best = np.where(np.isnan(q), -np.inf, q).max(axis=2).mean(axis=0)  # [P]
            self.tie_order = np.argsort(np.argsort(-best, kind="stable"), kind="stable")
        super()._plan()


class Retrain(Continual):
    """From the first drift flag on, no learning pull is drawn; at the first refit from
    request AT on (the window's first, 6,000, unless --retrain-at), after the present rules'
    own moves, psst-auto is trained afresh with every learning completion left (the
    allowance) on the drifted traffic's queries, and every context moves to its choice
    (logged as "drift", so the tables count them with the drift moves), ending any
    recovery. Its completions are drawn at once from the environment as it is at AT
    (``world``: the drifted environment, its queries and a seed), as completions drawn then
    on logged queries are: from the model as it is when they are drawn. They are not fed
    back to the learner's estimates."""

    world: tuple[Any, np.ndarray, list[int]] | None = None
    SAVE_ALL = FEED = False
    AT = WINDOW  # the request from which the retraining is due (--retrain-at)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._flagged = self._retrained = False
        super().__init__(*args, **kwargs)

    def _drifted(self, flag: Any) -> None:
        self._flagged = True
        super()._drifted(flag)

    def pulls(self, completions: int) -> list[Any]:
        saving = self._flagged or self.SAVE_ALL
        return [] if saving and not self._retrained else super().pulls(completions)

    def refit(self) -> list[Any]:
        before = len(self.switches)
        super().refit()
        if (self._flagged or self.SAVE_ALL) and not self._retrained and \
                self.requests >= self.AT:
            assert self.world is not None
            self._retrained = True
            env, population, seed = self.world
            budget = self.allowance()
            oracle = Recorder(SimulatedOracle(env, population, budget,
                                              np.random.default_rng(seed_sequence(*seed, 0))))
            choices = get_learner(DEFAULT_LEARNER).learner(
                self.problem, oracle, budget,
                np.random.default_rng(seed_sequence(*seed, 1))).choices
            self.learning_completions += oracle.ledger.spent
            self._recovering[:] = 0  # the retraining's choice ends a recovery
            if self.FEED:
                self.observe(oracle.observations)
                self._follow_model(range(self.problem.n_contexts), "model", None, 1.0)
            else:
                for c, ch in enumerate(choices):
                    self._choose(c, int(arm_index(ch.prompt, int(ch.n or 1),
                                                  self.problem.n_max)), "drift", 0.0)
            self._plan()
        return self.switches[before:]


class Deferred(Retrain):
    """:class:`Retrain` with no learning pull at all before it: the whole learning budget of
    the first AT requests goes to the one retraining, drawn on the traffic's queries
    after the fact (as `iapo refine --budget` draws on logged requests)."""

    SAVE_ALL = True


class Fed(Deferred):
    """:class:`Deferred`, with the retraining's completions given to the learner and every
    context moved to the per-query model's estimate less one standard error (the
    pessimistic move), not to PSST's choice."""

    FEED = True


RULES = {"current": Continual, "shuffled": ShuffledTies, "modelties": ModelTies,
         "oracle": OracleExploration, "paired": PairedExploration,
         "regression": RegressionExploration, "optimistic": OptimisticRecovery,
         "retrain": Retrain, "deferred": Deferred, "fed": Fed}
RETRAINING = ("retrain", "deferred", "fed")  # the rules that retrain at --retrain-at


def trained_arms(config: simulate.SimConfig, run: int) -> list[tuple[int, int]]:
    """The arms the run's trained policy serves (`iapo.simulate.trained_policy`)."""
    return [(c.prompt, int(c.n or 1)) for c in simulate.trained_policy(config, run)[2]]


def world_of(config: simulate.SimConfig, run: int, served: list[tuple[int, int]]
             ) -> tuple[Any, np.ndarray, list[tuple[int, np.ndarray]]]:
    """The run's world as simulate_run builds it: the environment from the drift on (the
    drifted one; without drift, the run's own), its queries, and the truths it scores
    against, computed as it does: (from request, exact Q [C, P, N]) before and (with drift)
    after the drift of the prompt ``served`` serves."""
    env = run_queries(config.env, config.seed, run, config.test_fraction)[0]
    population = np.arange(env.n_queries, dtype=np.int64)
    q0 = env.query_table(progress=False).q(env.problem, population)
    truths = [(0, q0)]
    if config.scenario.drift_at is not None:
        env, q1, _ = simulate.drift_of(env, served, config.scenario.drop, population, q0)
        truths.append((config.scenario.drift_at, q1))
    return env, population, truths


def one_run(config: simulate.SimConfig, rule: str, run: int, retrain_at: int = WINDOW
            ) -> dict[str, Any]:
    """`iapo.simulate.simulate_run` with the rule's class as the continual learner, and
    where the window's regret lies: per context, the gap of the arms served from request
    WINDOW on ("window_gaps": the prompt's, to the best prompt at its best N, and the N's,
    the rest), and whether it serves the best prompt."""
    world = None  # the oracle and retraining rules need it before the run; the others, after
    if rule == "oracle":
        world = world_of(config, run, trained_arms(config, run))
        OracleExploration.truths = world[2]
    if rule in RETRAINING:
        world = world_of(config, run, trained_arms(config, run))
        Retrain.world, Retrain.AT = (world[0], world[1], [config.seed, run, 9]), retrain_at
    seen: list[list[tuple[int, int]]] = []

    class Watched(RULES[rule]):  # type: ignore[misc, valid-type]
        def refit(self) -> list[Any]:
            out = super().refit()
            if not seen and self.requests >= WINDOW:
                seen.append(self.served_arms())
            return out

    simulate.Continual = Watched  # type: ignore[misc]
    result = simulate.simulate_run(config, run)
    if seen:  # the truth of the traffic then, for the trained arms simulate_run reports
        if world is None:
            world = world_of(config, run, [tuple(a) for a in result["trained"]])
        q = world[2][-1][1]
        best_prompt = q.max(axis=2)  # [C, P]
        result["window_gaps"] = [
            (float(best_prompt[c].max() - best_prompt[c, p]),
             float(best_prompt[c, p] - q[c, p, n - 1]), bool(best_prompt[c, p] ==
                                                              best_prompt[c].max()))
            for c, (p, n) in enumerate(seen[0])]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("env")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rules", default="current,shuffled,oracle,paired,optimistic")
    ap.add_argument("--requests", type=int, default=7000)
    ap.add_argument("--no-drift", action="store_true")
    ap.add_argument("--retrain-at", type=int, default=WINDOW,
                    help="the request the retrain, deferred and fed rules retrain at")
    ap.add_argument("--budget", type=float, default=0.1,
                    help="the learning budget (a fraction of the served completions)")
    ap.add_argument("--moves", default="evidence", choices=MOVES,
                    help="how a context moves without a drift flag (iapo simulate --moves)")
    args = ap.parse_args()
    if not args.no_drift and args.retrain_at < 2000 and \
            set(RETRAINING) & set(args.rules.split(",")):
        raise SystemExit(f"--retrain-at {args.retrain_at}: the retraining draws from the "
                         "drifted environment; give a request at or after the drift (2000)")
    scenario = simulate.Scenario(requests=args.requests,
                                 drift_at=None if args.no_drift else 2000)
    config = simulate.SimConfig(env=args.env, budgets=(args.budget,), runs=args.runs,
                                scenario=scenario,
                                settings=ContinualSettings(moves=args.moves))
    problem = run_queries(args.env, 0, 0, config.test_fraction)[0].problem
    if problem.aggregator != "mv" or problem.stopping.early or problem.needs_latency:
        raise SystemExit(f"{args.env}: the paired rule here needs majority voting that pays "
                         "all N, with no latency priced")
    key = f"continual@{args.budget:g}"
    for rule in args.rules.split(","):
        start = time.time()
        runs = joblib.Parallel(n_jobs=args.workers)(
            joblib.delayed(one_run)(config, rule, r, args.retrain_at) for r in range(args.runs))
        summary = simulate.summarize(config, runs)
        row = summary["conditions"][key]
        diff, sem = row["diff_final"]
        switches = np.mean([len(r[key]["switches"]) for r in runs])
        window = ""
        if "window_regret" in row:
            w, ws = row["window_regret"]
            frozen = summary["conditions"]["frozen"]["window_regret"][0]
            window = (f"window {w:.4f} ({ws:.4f}), frozen's {frozen:.4f}, ratio to frozen "
                      f"{row['window_ratio']:.2f}, ")
        where = ""
        gaps = [g for r in runs for g in r.get("window_gaps", [])]
        if gaps:
            prompt_gap, n_gap, best = np.array(gaps).T
            where = (f"from request {WINDOW:,}: gap {prompt_gap.mean():.4f} to the best "
                     f"prompt and {n_gap.mean():.4f} to its best N, the best prompt served in "
                     f"{int(best.sum())} of {best.size} (run, context), ")
        print(f"{args.env} {rule}: {window}{where}cumulative vs frozen at {args.requests:,} "
              f"{diff:+.1f} ({sem:.1f}), switches per run {switches:.1f}, learning completions at "
              f"most {row['learning_share_max']:.3f} of the served, "
              f"{time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
