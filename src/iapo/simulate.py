"""Simulated production traffic (``iapo simulate``): a policy trained once, then served to a
stream of requests, frozen or learning continually (:mod:`iapo.continual`), with scripted
drift. Beyond the paper.

A run: the bench protocol's 80/20 split of run r; the learner trains at T completions on the
training queries, with the bench cell's own seeds (the policy is the one `iapo bench` scores
for that learner, T and run); requests then arrive, each a context drawn by the grid's
probabilities and a query drawn uniformly from all the environment's queries: the
population the training queries were drawn from (the test split alone, 63 queries for math,
would make the traffic's truth differ from the training population's by more than the
prompts differ).
Every condition of a run sees the same requests (a paired design): ``frozen`` serves the
trained arms throughout; ``continual`` at learning budget F serves, learns and monitors by
:class:`iapo.continual.Continual`. Labels are known in simulation, so every group is scored.

Regret is exact: a request in context c served by arm a costs Q*(c) - Q(c, a), both on the
traffic's queries as they are at that request (after a drift, against the drifted oracle).
Learning pulls are never served, so they add no regret; their completions are counted.

Scripted drift (both may be set):
- ``drift_at``: after request k, the prompt served by the most contexts (the trained arm's)
  loses ``drop`` accuracy on the traffic: its answer distribution on every query is mixed with
  the worst prompt's, weight drop / (its accuracy - the worst's); where no prompt is that much
  worse, with each query's most common wrong answer (accuracy 0), weight drop / accuracy.
- ``shift_at``: after request k, queries come from a random ``shift_keep`` share of the
  queries only (the query mix shifts).

Traffic that differs by context (``by_context``, on its own): the queries, ordered by how
hard they are (their mean n = 1 value over prompts), are cut into C equal slices, and the
requests of context c come from slice c only; each context's regret is then against the
oracle on its own slice. ``origins`` (SimConfig) says whether the continual learner is told
each group's context of origin (:mod:`iapo.continual`: a context whose traffic differs then
learns from its own); without them every group counts for every context.
Requests are served in steps of ``step`` between which the learner acts; drift and shift
points must fall on a step.

Retraining (``ContinualSettings.retrain``): when the learner says one is due, the run's
learner (the one that trained the policy) is run with the saved learning budget, on the
queries of the requests since the last retraining (as often as they were asked), drawn from
the environment as it is then, after the groups the traffic drew that it reuses
(:meth:`iapo.continual.Continual.retrain`), and the learner takes its choices and groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.continual import Continual, ContinualSettings, Switch
from iapo.envs.base import Environment
from iapo.envs.tabular import MVEnvironment
from iapo.errors import InputError
from iapo.files import OutputError
from iapo.learners import get_learner
from iapo.oracle import SimulatedOracle
from iapo.problem import Choice, arm_at, arm_index
from iapo.pulls import Observation
from iapo.report import Recorder
from iapo.settings import DEFAULT_LEARNER

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
CHECKPOINT = 1000  # requests per row of the regret tables


@dataclass(frozen=True)
class Scenario:
    """The traffic of a run and what changes in it (module docstring)."""

    requests: int = 20_000
    drift_at: int | None = None
    drop: float = 0.1
    shift_at: int | None = None
    shift_keep: float = 0.5
    step: int = 100
    by_context: bool = False

    def __post_init__(self) -> None:
        if self.requests < CHECKPOINT or self.requests % CHECKPOINT:
            raise InputError(f"--requests {self.requests} must be a positive multiple of "
                             f"{CHECKPOINT}")
        if self.step < 1 or CHECKPOINT % self.step:
            raise InputError(f"step={self.step} must divide {CHECKPOINT}")
        for name in ("drift_at", "shift_at"):
            at = getattr(self, name)
            if at is not None and (not 0 <= at < self.requests or at % self.step):
                raise InputError(f"--{name.replace('_', '-')} {at} must be a request in "
                                 f"0..{self.requests - 1} on a step of {self.step}")
        if not 0 < self.drop < 1:
            raise InputError(f"--drop {self.drop} must lie in (0, 1) (an accuracy)")
        if not 0 < self.shift_keep <= 1:
            raise InputError(f"--shift-keep {self.shift_keep} must lie in (0, 1]")
        if self.by_context and (self.drift_at is not None or self.shift_at is not None):
            raise InputError("traffic by context is a scenario of its own: drop --drift-at "
                             "and --shift-at, or run them separately")


@dataclass(frozen=True)
class SimConfig:
    """What ``iapo simulate`` runs: ``runs`` paired runs of ``env`` per condition."""

    env: str
    budgets: tuple[float, ...] = (0.02, 0.05, 0.1)
    runs: int = 50
    seed: int = 0
    train_budget: int = 2000
    learner: str = DEFAULT_LEARNER
    test_fraction: float = 0.2
    scenario: Scenario = field(default_factory=Scenario)
    settings: ContinualSettings = field(default_factory=ContinualSettings)
    origins: bool = True

    def __post_init__(self) -> None:
        k, sc = self.settings.retrain, self.scenario
        if (every := self.settings.refine_every) % sc.step:
            raise InputError(f"--refine-every {every}: the simulation refits between steps of "
                             f"{sc.step} requests: give a multiple of {sc.step}")
        if not k:
            return
        if sc.by_context:
            raise InputError("--retrain trains on every context's queries alike, so it cannot "
                             "serve contexts that ask different ones: drop --by-context or "
                             "--retrain")
        if k % sc.step or k > sc.requests:
            raise InputError(f"--retrain {k}: the simulation retrains between steps of "
                             f"{sc.step} requests, within its {sc.requests:,}: give a multiple "
                             f"of {sc.step} up to {sc.requests}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Truth:
    """Exact Q on the traffic as it is from request ``start`` on: [C, P, N]."""

    start: int
    q: FloatArray

    @property
    def gap(self) -> FloatArray:
        """Q*(c) - Q(c, p, n): [C, P, N]."""
        flat = self.q.reshape(self.q.shape[0], -1)
        return (flat.max(axis=1)[:, None] - flat).reshape(self.q.shape)


def drifted(env: Environment, prompt: int, drop: float, queries: IntArray
            ) -> tuple[MVEnvironment, dict[str, Any]]:
    """``env`` with ``prompt`` ``drop`` less accurate on ``queries`` (module docstring), and
    what was done: {"prompt", "with" (the worse prompt, or "wrong answer"), "weight"}."""
    if not isinstance(env, MVEnvironment):
        raise InputError(f"scripted drift needs a majority-voting environment; '{env.name}' "
                         "is not one")
    probs = env.probs
    q = np.asarray(queries)
    acc = probs[:, q, env.gold[q]].mean(axis=1)  # [P]
    worst = int(acc.argmin())
    new = probs.copy()
    if acc[prompt] - acc[worst] >= drop:
        weight = drop / (acc[prompt] - acc[worst])
        other, how = probs[worst], env.problem.prompts[worst]
    else:
        wrong = probs.sum(axis=0).copy()  # [X, L]: every prompt's answers
        wrong[np.arange(wrong.shape[0]), env.gold] = -np.inf
        other = np.zeros_like(probs[prompt])
        other[np.arange(wrong.shape[0]), wrong.argmax(axis=1)] = 1.0
        weight, how = drop / acc[prompt], "wrong answer"
    if weight > 1:
        raise InputError(f"prompt {prompt} is {acc[prompt]:.3f} accurate; it cannot lose "
                         f"{drop}")
    new[prompt] = (1 - weight) * probs[prompt] + weight * other
    return env.with_answer_probs(new, f"{env.name}-drifted"), {
        "prompt": prompt, "with": how, "weight": float(weight)}


def drift_of(env: Environment, served: Sequence[tuple[int, int]], drop: float,
             queries: IntArray, q: FloatArray) -> tuple[MVEnvironment, FloatArray,
                                                        dict[str, Any]]:
    """The scripted drift of a policy serving ``served`` (prompt, n) per context: the prompt
    the most contexts serve (the first of a tie) loses ``drop`` accuracy (:func:`drifted`).
    Returns the drifted environment, its exact Q on ``queries`` ([C, P, N]: ``q``, the
    undrifted one, with that prompt's rows recomputed) and what was done."""
    counts = np.bincount([p for p, _ in served], minlength=env.problem.n_prompts)
    prompt = int(counts.argmax())
    env2, what = drifted(env, prompt, drop, queries)
    q2 = q.copy()
    q2[:, prompt] = _prompt_q(env2, prompt, queries)
    return env2, q2, what


def _prompt_q(env: MVEnvironment, prompt: int, queries: IntArray) -> FloatArray:
    """Exact Q of one prompt on ``queries``: [C, N] (a one-prompt environment's table)."""
    one = env.with_answer_probs(env.probs[prompt:prompt + 1], prompts=[prompt])
    return one.query_table(progress=False).q(one.problem, queries)[:, 0]


def context_slices(env: Environment, population: IntArray) -> list[IntArray]:
    """``population`` ordered by how hard its queries are (their mean n = 1 value over
    prompts and weights, easiest first, ties by index) and cut into one slice per context."""
    task = env.query_table(progress=False).task[..., 0][:, population]  # [P, X, W]
    order = population[np.argsort(-task.mean(axis=(0, 2)), kind="stable")]
    return [np.sort(part) for part in np.array_split(order, env.problem.n_contexts)]


def traffic(config: SimConfig, run: int, population: IntArray, n_contexts: int,
            probabilities: FloatArray, slices: Sequence[IntArray] | None = None
            ) -> tuple[IntArray, IntArray]:
    """Every request's context and query (from ``population``, or from its context's slice
    of ``slices``): ([R], [R]), the same for every condition."""
    from iapo.bench.runner import seed_sequence

    sc = config.scenario
    rng = np.random.default_rng(seed_sequence(config.seed, run, 3))
    contexts = rng.choice(n_contexts, size=sc.requests, p=probabilities)
    queries = population[rng.integers(0, population.size, sc.requests)]
    if slices is not None:
        for c, part in enumerate(slices):
            mine = contexts == c
            queries[mine] = part[rng.integers(0, part.size, int(mine.sum()))]
    if sc.shift_at is not None:
        keep = rng.permutation(population)[: max(1, round(sc.shift_keep * population.size))]
        after = sc.requests - sc.shift_at
        queries[sc.shift_at:] = keep[rng.integers(0, keep.size, after)]
    return contexts.astype(np.int64), queries.astype(np.int64)


def _groups(env: Environment, arms: Sequence[tuple[int, int]], queries: IntArray,
            origins: IntArray, rng: np.random.Generator) -> tuple[list[Observation], list[int]]:
    """One group per query, arm (prompt, n) and origin (the context of its request) per
    query: drawn by arm and origin, vectorised; the observations and their origins."""
    n_max = env.problem.n_max
    keys = np.array([arm_index(p, n, n_max) for p, n in arms], dtype=np.int64)
    out, where = [], []
    for key, origin in np.unique(np.stack([keys, origins]), axis=1).T:
        prompt, n = arm_at(int(key), n_max)
        qs = queries[(keys == key) & (origins == origin)]
        out.append(Observation.from_sample(prompt, n, qs, env.sample(prompt, qs, n, rng)))
        where.append(int(origin))
    return out, where


def trained_policy(config: SimConfig, run: int
                   ) -> tuple[Environment, Recorder, list[Choice]]:
    """The run's environment, training's oracle (its observations recorded) and the trained
    policy's choices per context: the bench cell's own oracle and learner seeds, so the
    policy is the bench's at T = ``config.train_budget``."""
    from iapo.bench.runner import run_oracle, run_queries

    env, train, _ = run_queries(config.env, config.seed, run, config.test_fraction)
    simulated, learner_rng = run_oracle(env, train, config.learner, config.train_budget,
                                        config.seed, run)
    oracle = Recorder(simulated)
    trained = get_learner(config.learner).learner(env.problem, oracle, config.train_budget,
                                                  learner_rng).choices
    return env, oracle, trained


def simulate_run(config: SimConfig, run: int) -> dict[str, Any]:
    """One paired run: the frozen policy and continual learning at every budget on the same
    requests. Returns cumulative regret per checkpoint, flags, switches and spend."""
    sc = config.scenario
    env, oracle, trained = trained_policy(config, run)
    problem = env.problem
    population = np.arange(env.n_queries, dtype=np.int64)
    slices = context_slices(env, population) if sc.by_context else None
    contexts, queries = traffic(config, run, population, problem.n_contexts,
                                problem.grid.probabilities, slices)
    table = env.query_table(progress=False)
    truths = [Truth(0, table.q(problem, population))]
    if slices is not None:  # each context against the oracle on its own queries
        truths = [Truth(0, np.stack([table.q(problem, part)[c]
                                     for c, part in enumerate(slices)]))]
    live_env: list[tuple[int, Environment]] = [(0, env)]
    served0 = [(c.prompt, int(c.n or 1)) for c in trained]
    info: dict[str, Any] = {"env": env.name, "run": run, "trained": served0}
    if sc.drift_at is not None:
        env2, q2, what = drift_of(env, served0, sc.drop, population, truths[0].q)
        truths.append(Truth(sc.drift_at, q2))
        live_env.append((sc.drift_at, env2))
        info["drift"] = what
    drift_prompt = None if sc.drift_at is None else int(info["drift"]["prompt"])
    if sc.shift_at is not None:
        kept = np.unique(queries[sc.shift_at:])
        base = live_env[-1][1] if sc.drift_at is not None and sc.drift_at <= sc.shift_at else env
        q3 = base.query_table(progress=False).q(problem, kept)
        truths.append(Truth(sc.shift_at, q3))
        truths.sort(key=lambda t: t.start)
    info["frozen"] = _regret_curve(sc, contexts, truths, lambda _t: served0)
    info["optimal_at_start"] = bool(_gap_of(truths[0], served0).max() <= 1e-12)
    for budget in config.budgets:
        settings = replace(config.settings, learn_budget=budget)
        info[f"continual@{budget:g}"] = _continual(
            config, run, budget, settings, oracle.observations, trained, contexts, queries,
            truths, live_env, drift_prompt)
    return info


def _switch_gain(truths: Sequence[Truth], switch: Switch) -> float:
    """Q(c, new) - Q(c, old) of a switch, exact, on the traffic as it was at its request."""
    q = _truth_at(truths, switch.request).q[switch.context]
    (p0, n0), (p1, n1) = switch.old, switch.new
    return float(q[p1, n1 - 1] - q[p0, n0 - 1])


def _gap_of(truth: Truth, arms: Sequence[tuple[int, int]]) -> FloatArray:
    gap = truth.gap
    return np.array([gap[c, p, n - 1] for c, (p, n) in enumerate(arms)])


def _truth_at(truths: Sequence[Truth], t: int) -> Truth:
    return [x for x in truths if x.start <= t][-1]


def _regret_curve(sc: Scenario, contexts: IntArray, truths: Sequence[Truth],
                  arms_at: Any) -> list[float]:
    """Cumulative regret at every checkpoint of a policy whose arms in step t are
    ``arms_at(t)``."""
    out, total = [], 0.0
    n_ctx = truths[0].q.shape[0]
    for start in range(0, sc.requests, sc.step):
        counts = np.bincount(contexts[start:start + sc.step], minlength=n_ctx)
        total += float(counts @ _gap_of(_truth_at(truths, start), arms_at(start)))
        if (start + sc.step) % CHECKPOINT == 0:
            out.append(total)
    return out


def _continual(config: SimConfig, run: int, budget: float, settings: ContinualSettings,
               training: Sequence[Observation], trained: Sequence[Any], contexts: IntArray,
               queries: IntArray, truths: Sequence[Truth],
               live_env: Sequence[tuple[int, Environment]], drift_prompt: int | None
               ) -> dict[str, Any]:
    """One continual condition of a run (same requests as the others); ``drift_prompt``:
    the prompt that drifts (None: none does)."""
    from iapo.bench.runner import seed_sequence

    sc = config.scenario
    env0 = live_env[0][1]
    learner = Continual(env0.problem, settings, training, trained)
    rng = np.random.default_rng(seed_sequence(config.seed, run, 4, int(round(budget * 1e6))))
    arms_by_step: dict[int, list[tuple[int, int]]] = {}
    asked = 0  # the first request whose query a retraining draws on
    for start in range(0, sc.requests, sc.step):
        env = [e for at, e in live_env if at <= start][-1]
        arms = learner.served_arms()
        arms_by_step[start] = arms
        ctx, qs = contexts[start:start + sc.step], queries[start:start + sc.step]
        chosen = [arms[c] for c in ctx]
        served, where = _groups(env, chosen, qs, ctx, rng)
        learner.observe(served, where if config.origins else None)
        learner.record_served(ctx.size, sum(n for _, n in chosen))
        pulls = learner.learning_pulls()
        if pulls:
            on = rng.integers(0, qs.size, len(pulls))  # the requests they are drawn on
            drawn, where = _groups(env, [(p.prompt, p.n) for p in pulls], qs[on], ctx[on], rng)
            learner.observe(drawn, where if config.origins else None)
        if learner.due():
            learner.refit()
        if (saved := learner.retrain_budget()) > 0:
            end = start + sc.step
            seeds = seed_sequence(config.seed, run, 5, int(round(budget * 1e6)), end).spawn(2)
            learner.retrain(SimulatedOracle(env, queries[asked:end], saved,
                                            np.random.default_rng(seeds[0])),
                            saved, np.random.default_rng(seeds[1]), config.learner)
            asked = end
    return {
        "regret": _regret_curve(sc, contexts, truths, lambda t: arms_by_step[t]),
        "served_completions": learner.served_completions,
        "learning_completions": learner.learning_completions,
        "reused_completions": learner.reused_completions,
        "flags": [asdict(f) for f in learner.flags],
        # the contexts the drift hit: those serving the drifted prompt when it drifted
        "drifted_contexts": [] if sc.drift_at is None else [
            c for c, (p, _) in enumerate(arms_by_step[sc.drift_at]) if p == drift_prompt],
        # every switch with its exact gain on the traffic as it was then (> 0: it helped)
        "switches": [dict(asdict(s), exact_gain=_switch_gain(truths, s))
                     for s in learner.switches],
        "splits": [asdict(s) for s in learner.splits],
    }




# ---------------------------------------------------------------- many runs, a summary, a figure


def conditions(config: SimConfig) -> list[str]:
    """The conditions of every run, frozen first."""
    return ["frozen"] + [f"continual@{b:g}" for b in config.budgets]


def run_all(config: SimConfig, workers: int = 1, progress: bool = True
            ) -> list[dict[str, Any]]:
    """Every run of ``config`` (in parallel with ``workers`` processes; the results do not
    depend on it), in run order."""
    import joblib
    from tqdm.auto import tqdm

    from iapo.bench.runner import run_environment

    run_environment(config.env, config.seed, 0).query_table(progress=progress)  # cache once
    jobs = (joblib.delayed(simulate_run)(config, r) for r in range(config.runs))
    out = []
    with tqdm(total=config.runs, desc=f"simulate {config.env}", unit="run",
              disable=not progress) as bar:
        for result in joblib.Parallel(n_jobs=workers, return_as="generator")(jobs):
            out.append(result)
            bar.update(1)
    return out


def _curve(run: dict[str, Any], condition: str) -> FloatArray:
    c = run[condition]
    return np.asarray(c if condition == "frozen" else c["regret"], dtype=np.float64)


def _mean_sem(x: FloatArray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    sem = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
    return float(x.mean()), sem


def summarize(config: SimConfig, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means and SEMs over runs: cumulative regret per checkpoint per condition, each
    continual condition's paired difference from frozen, its spend, and (with drift) the
    window regret, the detection rate and delay; false alarms (flags before any drift)."""
    sc = config.scenario
    names = conditions(config)
    curves = {k: np.stack([_curve(r, k) for r in runs]) for k in names}  # [runs, checkpoints]
    out: dict[str, Any] = {"config": config.to_dict(), "runs": len(runs),
                           "checkpoints": [CHECKPOINT * (i + 1)
                                           for i in range(sc.requests // CHECKPOINT)],
                           "conditions": {}}
    not_optimal = np.array([not r["optimal_at_start"] for r in runs])
    out["runs_not_optimal"] = int(not_optimal.sum())
    window = None
    if sc.drift_at is not None:
        lo = sc.drift_at + 4000
        if lo + CHECKPOINT <= sc.requests:
            window = (lo, lo + CHECKPOINT)
            out["window"] = list(window)
    for k in names:
        cur = curves[k]
        row: dict[str, Any] = {
            "mean": cur.mean(axis=0).tolist(),
            "sem": (cur.std(axis=0, ddof=1) / np.sqrt(len(runs))).tolist()
            if len(runs) > 1 else [float("nan")] * cur.shape[1],
        }
        if k != "frozen":
            diff = cur[:, -1] - curves["frozen"][:, -1]
            row["diff_final"] = _mean_sem(diff)
            if not_optimal.any():
                row["diff_final_not_optimal"] = _mean_sem(diff[not_optimal])
            spend = np.array([r[k]["learning_completions"] / max(r[k]["served_completions"], 1)
                              for r in runs])
            row["learning_share_max"] = float(spend.max())
            row["learning_share_mean"] = float(spend.mean())
            # completions the retrainings took from the traffic's groups, free, per run
            row["reused_per_run"] = float(np.mean([r[k]["reused_completions"]
                                                   for r in runs]))
            row.update(_flags(sc, [r[k]["flags"] for r in runs],
                              [r[k]["drifted_contexts"] for r in runs]))
            # runs where some context split from the others' traffic (a false split unless
            # the scenario is by context)
            row["split_rate"] = float(np.mean([bool(r[k].get("splits")) for r in runs]))
            row.update(_switch_quality([r[k]["switches"] for r in runs]))
        if window is not None:
            a, b = window[0] // CHECKPOINT - 1, window[1] // CHECKPOINT - 1
            per = (cur[:, b] - cur[:, a]) / (window[1] - window[0])
            row["window_regret"] = _mean_sem(per)
        out["conditions"][k] = row
    if window is not None:
        frozen = out["conditions"]["frozen"]["window_regret"][0]
        # what the drift cost the frozen policy: its window regret less its regret per
        # request over the 1,000 requests before the drift
        k0 = sc.drift_at // CHECKPOINT  # type: ignore[operator]
        cur = curves["frozen"]
        before = cur[:, k0 - 1] - (cur[:, k0 - 2] if k0 >= 2 else 0.0)
        out["frozen_before_drift"] = float(before.mean()) / CHECKPOINT if k0 >= 1 else None
        cost = frozen - out["frozen_before_drift"] if k0 >= 1 else None
        for k in names[1:]:
            row = out["conditions"][k]
            row["window_ratio"] = row["window_regret"][0] / frozen if frozen > 0 else None
            row["drift_cost_recovered"] = ((frozen - row["window_regret"][0]) / cost
                                           if cost else None)
    return out


def _switch_quality(switches: Sequence[Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Switches per run, and of those that changed the exact value, how many raised it and
    the share (by reason: "evidence", a gain's lower bound; "model", a pessimistic move;
    "drift", a flagged prompt; "retrain", a retraining's choice)."""
    row: dict[str, Any] = {"switches_per_run": float(np.mean([len(s) for s in switches]))}
    for reason in ("evidence", "model", "drift", "retrain"):
        gains = np.array([s["exact_gain"] for run in switches for s in run
                          if s["reason"] == reason])
        moved = gains[np.abs(gains) > 1e-12]
        row[f"{reason}_switches"] = int(gains.size)
        row[f"{reason}_helped"] = float((moved > 0).mean()) if moved.size else None
        row[f"{reason}_helped_of"] = [int((moved > 0).sum()), int(moved.size)]
    return row


def _flags(sc: Scenario, flags: Sequence[Sequence[dict[str, Any]]],
           drifted_contexts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """False alarms (a flag before the drift, or in a run without one) and, with drift, the
    runs whose drifted contexts were flagged within 5,000 requests, and the delay."""
    changes = [at for at in (sc.drift_at, sc.shift_at) if at is not None]
    start = min(changes) if changes else sc.requests  # a flag after a change may be right
    false = np.array([any(f["request"] < start for f in fl) for fl in flags])
    row: dict[str, Any] = {"false_alarm_rate": float(false.mean())}
    if sc.drift_at is not None:
        delays = []
        for fl, ctx in zip(flags, drifted_contexts, strict=True):
            if not ctx:  # the run no longer served the prompt that drifted: nothing to find
                continue
            hits = [f["request"] - sc.drift_at for f in fl
                    if f["request"] >= sc.drift_at and f["context"] in ctx]
            delays.append(min(hits) if hits else np.inf)
        d = np.array(delays, dtype=np.float64)
        row["runs_hit"] = int(d.size)
        row["detected_within_5000"] = float((d <= 5000).mean()) if d.size else None
        row["median_delay"] = float(np.median(d)) if d.size else None
    return row


def figure(summary: dict[str, Any], out: Path) -> list[Path]:
    """Cumulative regret (left) and regret per request in each window of 1,000 (right)
    against requests, mean ± SEM over runs, every condition; the drift marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iapo.bench.plots import save_figure

    x = np.array(summary["checkpoints"], dtype=np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (k, row) in enumerate(summary["conditions"].items()):
        m, e = np.array(row["mean"]), np.array(row["sem"])
        color = "#444444" if k == "frozen" else plt.get_cmap("viridis")(0.15 + 0.25 * (i - 1))
        axes[0].plot(x, m, color=color, label=k, lw=1.6)
        axes[0].fill_between(x, m - e, m + e, color=color, alpha=0.2, lw=0)
        per = np.diff(np.concatenate([[0.0], m])) / CHECKPOINT
        axes[1].plot(x - CHECKPOINT / 2, per, color=color, label=k, lw=1.6, marker=".")
    sc = summary["config"]["scenario"]
    for ax in axes:
        if sc["drift_at"] is not None:
            ax.axvline(sc["drift_at"], color="#aa3333", ls="--", lw=1, label="drift")
        if sc["shift_at"] is not None:
            ax.axvline(sc["shift_at"], color="#3333aa", ls=":", lw=1, label="query shift")
        ax.set_xlabel("requests")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("cumulative regret (sum of Q* - Q(served))")
    axes[1].set_ylabel("regret per request, per 1,000 requests")
    axes[1].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    cfg = summary["config"]
    traffic = "" if not sc["by_context"] else (
        "; each context asks its own slice of the queries"
        + ("" if cfg["origins"] else ", the learner not told which"))
    moves = "" if cfg["settings"]["moves"] == "evidence" else (
        f"; continual: {cfg['settings']['moves']} moves")
    retrain = cfg["settings"].get("retrain", 0)
    if retrain:
        moves += f"; retrained every {retrain:,} requests"
    fig.suptitle(f"{cfg['env']}: policy trained at T = {cfg['train_budget']:,} "
                 f"({cfg['learner']}), mean ± SEM over {summary['runs']} paired runs{traffic}"
                 f"{moves}",
                 fontsize=10)
    stem = out / ("simulate-" + _env_stem(cfg["env"])
                  + _suffix(sc, cfg["origins"], cfg["settings"]["moves"], retrain))
    return save_figure(fig, stem)


def table(summary: dict[str, Any]) -> str:
    """The summary as Markdown: cumulative regret every 5,000 requests and the measures."""
    cps = summary["checkpoints"]
    pessimistic = summary["config"]["settings"]["moves"] == "pessimistic"
    retrain = bool(summary["config"]["settings"].get("retrain"))
    extra = (["model"] if pessimistic else []) + (["retrain"] if retrain else [])
    show = [i for i, c in enumerate(cps) if c % 5000 == 0 or i == len(cps) - 1]
    show = sorted(set(show))
    head = "| condition | " + " | ".join(f"{cps[i]:,}" for i in show) + " |"
    lines = [head, "|---" * (len(show) + 1) + "|"]
    for k, row in summary["conditions"].items():
        cells = [f"{row['mean'][i]:.1f} ({row['sem'][i]:.1f})" for i in show]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| condition | paired diff. at end (SEM) | ... where T's policy was not "
                 "optimal | learning share (max) | false alarms | traffic splits | "
                 "detected <= 5,000 | window regret/request | ratio to frozen | "
                 "drift's cost recovered | switches per run | on evidence: helped | "
                 + ("pessimistic: helped | " if pessimistic else "")
                 + ("retraining: helped | reused per run | " if retrain else "")
                 + "on drift: helped |")
    lines.append("|---" * (13 + len(extra) + retrain) + "|")
    for k, row in summary["conditions"].items():
        cells = [_cell(row, key, fmt) for key, fmt in (
            ("diff_final", ""), ("diff_final_not_optimal", ""), ("learning_share_max", "{:.4f}"),
            ("false_alarm_rate", "{:.2f}"), ("split_rate", "{:.2f}"),
            ("detected_within_5000", "{:.2f}"),
            ("window_regret", ""), ("window_ratio", "{:.2f}"),
            ("drift_cost_recovered", "{:.2f}"), ("switches_per_run", "{:.2f}"))]
        cells += [_helped(row, reason) for reason in ("evidence", *extra)]
        if retrain:
            cells.append(f"{row['reused_per_run']:,.0f}" if "reused_per_run" in row else "")
        cells.append(_helped(row, "drift"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _helped(row: dict[str, Any], reason: str) -> str:
    """'k of m': of the ``reason`` switches that changed the exact value, those that raised
    it; empty where none did (or the row has no switches)."""
    helped, moved = row.get(f"{reason}_helped_of", (0, 0))
    return f"{helped} of {moved}" if moved else ""


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    """One measure of a summary row as text: a paired difference as +m (SEM), a regret as
    m (SEM), a number by ``fmt``; empty where the row has none."""
    v = row.get(key)
    if v is None:
        return ""
    if isinstance(v, list | tuple):
        return f"{v[0]:+.1f} ({v[1]:.1f})" if "diff" in key else f"{v[0]:.4f} ({v[1]:.4f})"
    return fmt.format(v)


def _env_stem(env: str) -> str:
    """What the output files of ``env`` start with: its name, or for an environment given
    as a path, the file's name without its folder and .npz (the files stay in ``--out``)."""
    path = Path(env)
    return path.name.removesuffix(".npz") if env.endswith(".npz") or path.name != env else env


def _suffix(scenario: dict[str, Any], origins: bool, moves: str = "evidence",
            retrain: int = 0) -> str:
    """What the output files of a scenario (as a dict) add to the environment's name."""
    return ("" if scenario["drift_at"] is None else "-drift") + (
        "" if scenario["shift_at"] is None else "-shift") + (
        "-bycontext" if scenario["by_context"] else "") + ("" if origins else "-pooled") + (
        "" if moves == "evidence" else f"-{moves}") + (
        f"-retrain{retrain}" if retrain else "")


def _stem(config: SimConfig) -> str:
    """What ``config``'s output files are named by (the figure's: simulate-STEM)."""
    return _env_stem(config.env) + _suffix(asdict(config.scenario), config.origins,
                                           config.settings.moves, config.settings.retrain)


# the command-line option each setting a summary records comes from (the rest are named as
# recorded); --workers is not one: the results do not depend on it
OPTIONS = {"env": "--env", "budgets": "--budgets", "runs": "--runs", "seed": "--seed",
           "train_budget": "--train-budget", "learner": "--learner",
           "scenario.requests": "--requests", "scenario.drift_at": "--drift-at",
           "scenario.drop": "--drop", "scenario.shift_at": "--shift-at",
           "scenario.shift_keep": "--shift-keep", "scenario.by_context": "--by-context",
           "settings.refine_every": "--refine-every", "settings.confidence": "--confidence",
           "settings.min_gain": "--min-gain", "settings.alarm": "--alarm",
           "settings.horizon": "--requests", "settings.moves": "--moves",
           "settings.retrain": "--retrain", "origins": "--pooled"}


class OutputTaken(InputError):
    """``--out`` holds the files of a run with other settings, which a run would overwrite;
    the message names them and what to do."""


def check_out(config: SimConfig, out: Path) -> None:
    """Refuse, before any run, to overwrite the files that :func:`write` would write into
    ``out`` where the summary there records other settings than ``config``'s: the file
    names do not tell budgets, seeds, runs, drops or an environment file's folder apart. The
    same settings pass (a rerun writes over its own files), and so do files without a
    summary; a setting recorded on one side only (a summary of an older version) is not
    compared."""
    import json

    summary = out / f"{_stem(config)}-summary.json"
    if not summary.is_file():
        return
    what = (f"--out {out} holds {summary.name}, with the runs, table and figure beside it, "
            "from an earlier run")
    todo = "give another --out, or add --overwrite to replace them"
    try:
        recorded = json.loads(summary.read_text(encoding="utf-8"))["config"]
        if not isinstance(recorded, dict):
            raise TypeError("not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputTaken(f"{what} whose settings cannot be read ({e}): {todo}") from e
    old, new = _flat(recorded), _flat(json.loads(json.dumps(config.to_dict())))
    differ: dict[str, str] = {}
    for key in [k for k in old if k in new]:  # in the recorded order
        a, b = old[key], new[key]
        if a == b or (key == "env" and _env_key(a) == _env_key(b)):
            continue
        name = OPTIONS.get(key, key)
        differ.setdefault(name, f"{name} {_shown(a)} there, {_shown(b)} now")
    if differ:
        raise OutputTaken(f"{what} with other settings ({'; '.join(differ.values())}); this "
                          f"run would overwrite them: {todo}")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recorded config with its nested settings as dotted keys ("scenario.drop")."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _env_key(env: Any) -> Any:
    """An environment as compared: a file by its absolute path (./a/x.npz is a/x.npz), a
    name as it is."""
    if isinstance(env, str) and (env.endswith(".npz") or Path(env).name != env):
        return str(Path(env).absolute().resolve())
    return env


def _shown(value: Any) -> str:
    """A recorded setting as the command line gives it."""
    if isinstance(value, list):
        return ",".join(_shown(v) for v in value)
    return "none" if value is None else str(value)


def write(config: SimConfig, runs: Sequence[dict[str, Any]], out: Path) -> dict[str, Any]:
    """runs.jsonl, summary.json, summary.md and the figure into ``out`` (over any there:
    :func:`check_out` first)."""
    import json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot make the output folder {out} ({e.strerror or e}): give "
                          "--out a folder that can be written") from e
    stem = _stem(config)
    with (out / f"{stem}-runs.jsonl").open("w") as fh:
        for r in runs:
            fh.write(json.dumps(r) + "\n")
    summary = summarize(config, runs)
    (out / f"{stem}-summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / f"{stem}-summary.md").write_text(table(summary))
    summary["figures"] = [str(p) for p in figure(summary, out)]
    return summary


__all__ = ["CHECKPOINT", "OutputTaken", "Scenario", "SimConfig", "Truth", "check_out",
           "conditions", "context_slices", "drift_of", "drifted", "figure", "run_all",
           "simulate_run", "summarize", "table", "traffic", "write"]
