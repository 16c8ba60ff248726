"""The ``iapo`` command line."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from iapo.settings import DEFAULT_LEARNER, MOVES, PAPER_BUDGETS

if TYPE_CHECKING:
    from iapo.envs.base import Environment
    from iapo.problem import Stopping

# Only click and the standard library at the top: `iapo --help` and every command's --help
# must start at once; each command imports numpy, the environments and the learners itself.

F = TypeVar("F", bound=Callable[..., Any])


def _is_user_error(e: Exception) -> bool:
    """Whether ``e`` is bad input from the user rather than a defect of iapo.

    Exactly three kinds are: :class:`iapo.errors.InputError` (the base of ProblemError,
    DataError, PolicyError, TaskError, BenchError, ... and of every other bad-input error),
    an unknown environment name (a KeyError) and a pull past the budget (a RuntimeError).
    Any other exception, a plain ValueError included, is a defect and keeps its traceback.
    """
    from iapo.errors import InputError

    if isinstance(e, InputError):
        return True
    from iapo.envs.registry import UnknownEnvironmentError
    from iapo.pulls import BudgetExceededError

    return isinstance(e, (UnknownEnvironmentError, BudgetExceededError))


def _user_errors(fn: F) -> F:
    """Turn bad input from the user (see :func:`_is_user_error`) into one clear line and exit
    status 2, and work that could not finish (:class:`iapo.errors.RunError`: the upstream
    failing, a full disk, a damaged store) into one line "Error: ..." and exit status 1; let
    every other exception through with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from iapo.errors import RunError

        try:
            return fn(*args, **kwargs)
        except RunError as e:
            raise click.ClickException(str(e)) from e
        except (ValueError, KeyError, RuntimeError) as e:
            if not _is_user_error(e):
                raise
            raise click.UsageError(str(e)) from e

    return wrapper  # type: ignore[return-value]


def _check_writable(path: str, option: str, folder: bool = False) -> None:
    """Fail now, before any work, unless ``path`` can be written (iapo.files.check_writable)."""
    from iapo.files import UnwritablePath, check_writable

    try:
        check_writable(path, option, folder)
    except UnwritablePath as e:
        raise click.UsageError(str(e)) from e


@click.group()
@click.version_option(package_name="iapo")
def main() -> None:
    """Inference-aware prompt optimization (IAPO) for black-box LLMs."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_user_errors
def envs(as_json: bool) -> None:
    """List every environment with its aggregator, sizes and N_max."""
    from iapo.envs.registry import ENVIRONMENTS

    rows = []
    for name, spec in ENVIRONMENTS.items():
        env = spec.make(None)
        p = env.problem
        rows.append({
            "name": name,
            "aggregator": p.aggregator,
            "prompts": p.n_prompts,
            "queries": env.n_queries,
            "contexts": p.n_contexts,
            "n_max": p.n_max,
            "objectives": [o.name for o in p.grid.objectives],
            "synthetic": spec.synthetic,
            "summary": spec.summary,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    w = max(len(str(r["name"])) for r in rows)
    head = f"{'agg':<4} {'prompts':>7} {'queries':>7} {'contexts':>8} {'N_max':>5}  about"
    click.echo(f"{'name':<{w}} {head}")
    for r in rows:
        click.echo(
            f"{r['name']:<{w}} {r['aggregator']:<4} {r['prompts']:>7} {r['queries']:>7} "
            f"{r['contexts']:>8} {r['n_max']:>5}  {r['summary']}"
        )


class _Wave(click.ParamType):
    """An integer >= 1, or ``auto`` where the command lets the wave width be part of the arm."""

    name = "wave"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int | str:
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not an integer >= 1 or 'auto'", param, ctx)
        return number


def _stopping_options(fn: F) -> F:
    """``--stop`` and ``--wave``: how majority-voting arms stop (iapo.problem.Stopping);
    ``--wave auto`` makes the width W part of the arm."""
    fn = click.option("--wave", "wave", default=1, show_default=True, type=_Wave(),
                      help="With --stop decided: completions drawn at once (1: one by one; "
                           "N_max or more: all at once, the paper's arm). auto: W is part of "
                           "the arm, (p, N, W), W in 1, 2, 4, ... N_max.")(fn)
    return click.option("--stop", "stop", default="all", show_default=True,
                        type=click.Choice(["all", "decided"]),
                        help="Majority-voting arms draw all N (the paper) or stop once no "
                             "remaining completion can change the vote (same answer, fewer "
                             "completions paid).")(fn)


def _latency_options(fn: F) -> F:
    """``--latency`` and ``--contexts``: the latency model and contexts that price latency."""
    fn = click.option("--contexts", "contexts", default=None, metavar="SPEC;SPEC;...",
                      help="Contexts instead of ENV's: each one of its contexts with a latency "
                           "weight per second, a limit on expected seconds and/or a limit on "
                           "the 95th percentile, e.g. 'budget=mid; budget=mid,latency=0.001; "
                           "budget=mid,limit=25; budget=mid,p95=40'.")(fn)
    return click.option("--latency", "latency", default=None, metavar="KEY=VALUE,...",
                        help="The synthetic latency model's parameters, any of overhead, "
                             "per_token, tokens_per_cost, cv, concurrency (default: the "
                             "environment file's, else iapo.latency.SyntheticLatency's).")(fn)


def _environment(env_name: str, latency: str | None, contexts: str | None) -> Environment:
    """ENV with ``--latency`` and ``--contexts`` applied."""
    from iapo.envs import get_environment
    from iapo.problem import parse_contexts

    return get_environment(env_name).priced_by(latency, parse_contexts(contexts or ""))


@main.command()
@click.argument("env_name", metavar="ENV")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_stopping_options
@_latency_options
@_user_errors
def oracle(env_name: str, as_json: bool, stop: str, wave: int | str, latency: str | None,
           contexts: str | None) -> None:
    """The best arm (prompt, N) per context on all of ENV's queries, and the optimal ACR.

    Computed exactly (no Monte Carlo); prompts are 0-based indices as in the data. Each arm's
    wave width W and expected latency under the latency model are given. With --stop decided,
    also each arm's expected completions paid and waves, and the gain over the best arm that
    sends all N at once (W = N); with --wave auto the best W per context.
    """
    from iapo.envs.base import oracle_report

    env = _environment(env_name, latency, contexts)
    result = oracle_report(env, _stopping(stop, wave, env.problem.n_max))
    value, rows = result["acr"], result["contexts"]
    early = "stopping" in result
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{env.name}: optimal ACR {value:.4f} over {env.n_queries} queries; latency "
               f"model {result['latency_model']['description']}")
    width = max(len(str(r["context"])) for r in rows)
    arm = (f"{'context':<{width}}  {'prompt':>6} {'N':>3} {'W':>3} {'paid':>6} {'waves':>6} "
           f"{'latency':>8} {'p95':>7} {'Q':>8}")
    if not early:
        click.echo(arm)
        for r in rows:
            click.echo(_arm_row(r, width))
        return
    waves = "the best width per context" if wave == "auto" else f"waves of {wave}"
    click.echo(f"arms stop once decided, in {waves}; sending all N at once the optimal ACR is "
               f"{result['acr_all']:.4f}: gain {result['gain']:+.4f}")
    click.echo(f"{arm}   {'W = N: prompt':>13} {'N':>3} {'Q':>8} {'gain':>8}")
    for r in rows:
        click.echo(f"{_arm_row(r, width)}   {r['all_prompt']:>13} {r['all_n']:>3} "
                   f"{r['all_q']:>8.4f} {r['gain']:>+8.4f}")


def _arm_row(r: dict[str, Any], width: int) -> str:
    """One context's arm in ``iapo oracle``'s table."""
    return (f"{r['context']:<{width}}  {r['prompt']:>6} {r['n']:>3} {r['wave']:>3} "
            f"{r['paid']:>6.2f} {r['waves']:>6.2f} {r['latency']:>7.1f}s {r['latency_p95']:>6.1f}s"
            f" {r['q']:>8.4f}")


def _stopping(stop: str, wave: int | str, n_max: int) -> Stopping:
    """The stopping rule of ``--stop`` and ``--wave`` (``auto``: every width)."""
    from iapo.problem import ProblemError, Stopping

    if wave != "auto":
        return Stopping(stop, int(wave))
    if stop != "decided":
        raise ProblemError("--wave auto chooses the wave width of arms that stop once decided; "
                           "add --stop decided")
    return Stopping.every_width(n_max)


@main.command()
def learners() -> None:
    """List the learners with one line each."""
    from iapo.learners import LEARNERS

    width = max(len(n) for n in LEARNERS)
    for name, spec in LEARNERS.items():
        click.echo(f"{name:<{width}}  {spec.summary}")


@main.command()
@click.argument("env_name", metavar="ENV")
@click.option("--learner", "learner", default=DEFAULT_LEARNER, show_default=True,
              help="The learner to train (`iapo learners` lists them; the default is "
                   "iapo.learners.DEFAULT_LEARNER).")
@click.option("--budget", "budget", required=True, type=click.IntRange(min=0),
              help="Training budget T in completions (never exceeded).")
@click.option("--seed", "seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the 80/20 split, the oracle and the learner.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the policy JSON.")
@click.option("--estimator", "estimator", default="blocks", show_default=True,
              type=click.Choice(["blocks", "subsets"]),
              help="How groups become estimates: disjoint blocks (the paper) or U-statistics.")
@click.option("--verbose", "verbose", is_flag=True,
              help="Also print how the run went: its rounds, its notes and, for psst-auto, "
                   "which estimator decided and why.")
@_stopping_options
@_latency_options
@_user_errors
def train(env_name: str, learner: str, budget: int, seed: int, out: str,
          estimator: str, verbose: bool, stop: str, wave: int | str, latency: str | None,
          contexts: str | None) -> None:
    """Train a policy on the training split of ENV that SEED draws, and write it to OUT."""
    from iapo.learners import get_learner
    from iapo.training import train_policy

    _check_writable(out, "--out")
    get_learner(learner, estimator)  # an unknown learner fails before the table is computed
    env = _environment(env_name, latency, contexts)
    env = env.with_stopping(_stopping(stop, wave, env.problem.n_max))
    env.query_table()  # the exact table is not needed to train; computing it here keeps
    # the progress bar out of `evaluate` for the common train-then-evaluate sequence
    policy = train_policy(env, learner, budget, seed, estimator=estimator)
    try:
        policy.save(out)
    except OSError as e:
        raise click.UsageError(f"--out {out!r}: the policy could not be written ({e})") from e
    click.echo(
        f"{policy.learner} on {env.name}: {policy.completions_used} of {budget} completions used; "
        f"policy written to {out}"
    )
    for key, ch in zip(policy.contexts, policy.choices, strict=True):
        n = "random" if ch.n is None else ch.n
        wave = "" if ch.wave is None else f", W {ch.wave}"
        seconds = "" if ch.latency is None else f", {ch.latency:.3g} s predicted"
        click.echo(f"  {key}: prompt {ch.prompt}, N {n}{wave}{seconds}")
    if verbose:
        click.echo(_trace_text(policy.trace))


def _trace_text(trace: dict[str, Any]) -> str:
    """A run's trace in words (``iapo train --verbose``): every round (negative: a
    screening round), whether the rounds' prompts shared their queries, the notes, the
    estimator that decided, with its validation, the prompts a Best-of-N context committed
    to, and where the final choice left the last round's survivors."""
    lines = ["rounds (round: allowance, spent, arms alive per context):"]
    for r in trace.get("rounds", []):
        alive = r["alive"]
        shown = (f"{min(alive)}..{max(alive)}" if len(set(alive)) > 1
                 else str(alive[0]) if alive else "-")
        lines.append(f"  {r['round']:>3}: {r['allowance']}, {r['spent']}, {shown}")
    if trace.get("paired"):  # psst-auto: every round's prompts on shared queries
        lines.append("queries: shared by the prompts of every round")
    # psst-auto, majority voting: fitted on binary answers, fixed elsewhere; and why
    why = f" ({trace['prior_reason']})" if trace.get("prior_reason") else ""
    if trace.get("prior") == "fitted":
        lines.append(f"model prior: fitted to the prompts' answers{why}")
    elif trace.get("prior") == "fixed":
        lines.append(f"model prior: fixed Dirichlet on each query{why}")
    if "screening_ranked_by" in trace:
        lines.append("screening ranked by (per round): "
                     + "; ".join(trace["screening_ranked_by"]))
    chosen = trace.get("estimator")
    if isinstance(chosen, dict):  # its reason starts with the choice
        lines.append(f"estimator: {chosen['reason']}")
    if "committed" in trace:  # Best-of-N with blocks, on a small rest of the budget
        lines.append("committed to one prompt (per context; - where it kept its survivors): "
                     + ", ".join("-" if p is None else str(p) for p in trace["committed"]))
    if "reopened" in trace:  # psst-auto where the model decided: the choice among every arm
        reopened = trace["reopened"]
        lines.append("final choice: the best by the last estimates among every arm of the "
                     "screened prompts; other than Algorithm 1's, among the last round's "
                     f"survivors, in {sum(reopened)} of {len(reopened)} contexts")
    lines += [f"note: {note}" for note in trace.get("notes", [])]
    return "\n".join(lines)


@main.command()
@click.argument("env_name", metavar="ENV")
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_user_errors
def evaluate(env_name: str, policy_path: str, as_json: bool) -> None:
    """Exact ACR of a policy on its test split, the optimal ACR there, and the regret.

    ENV is called by its name, a file by its stored name (an exported one: its task's), as in
    bench's rows and the gateway's model id."""
    from iapo.envs import get_environment
    from iapo.policy import Policy
    from iapo.training import evaluate_policy

    policy = Policy.load(policy_path)
    env = get_environment(env_name)
    result = evaluate_policy(env, policy)
    if as_json:
        click.echo(json.dumps({"env": env.name, **result}, indent=2))
        return
    click.echo(
        f"{policy.learner} on {env.name} (T={policy.budget}, used {policy.completions_used}): "
        f"ACR {result['acr']:.4f}, oracle ACR {result['oracle_acr']:.4f}, "
        f"regret {result['regret']:.4f}"
    )


@main.command()
@click.argument("env_name", metavar="ENV")
@click.option("--delta", "delta", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Target failure probability.")
@click.option("--budgets", "budgets", default=",".join(map(str, PAPER_BUDGETS)),
              show_default=True,
              help="Budgets T at which to print the guaranteed success probability.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_user_errors
def bound(env_name: str, delta: float, budgets: str, as_json: bool) -> None:
    """Theorem 1 of the paper for ENV: gaps, H1, H2, the guaranteed success probability of
    PSST at given budgets, and the budget T that suffices for failure probability DELTA."""
    from iapo.bound import theorem1
    from iapo.envs import get_environment

    b = theorem1(get_environment(env_name))
    try:
        ts = [int(x) for x in _csv_list(budgets)]
    except ValueError as e:
        raise click.UsageError(f"--budgets must be comma-separated integers ({e})") from e
    result = {
        "env": b.env, "rounds": b.rounds, "scale": b.scale, "h1": b.h1, "h2": b.h2, "m": b.m,
        "delta": delta, "budget_for_delta": b.budget_for(delta),
        "success_probability": {str(t): b.success_probability(t) for t in ts},
        "contexts": [vars(c) for c in b.contexts],
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{b.env}: R = {b.rounds} rounds; Q rescaled by {b.scale:g} to the theorem's "
               "[-1, 1]")
    for c in b.contexts:
        tied = f", {c.tied_best} arms tied for best" if c.tied_best > 1 else ""
        click.echo(f"  {c.context}: best arm (prompt {c.best_prompt}, N {c.best_n}){tied}; "
                   f"smallest gap {c.gap:.3g}; H1 {c.h1:.3g}; H2 {c.h2:.3g}")
    click.echo(f"H1 = {b.h1:.4g}, H2 = {b.h2:.4g}, min(2|P|H1, 8|C|H2) = {b.m:.4g}")
    for t in ts:
        click.echo(f"  T = {t:,}: guaranteed success probability {b.success_probability(t):.4f}")
    click.echo(f"T for failure probability {delta:g}: {b.budget_for(delta):,.0f} completions")


def _continual_default(name: str) -> Any:
    """A continual-learning setting's default, written once in
    :class:`iapo.settings.ContinualSettings`."""
    from iapo.settings import continual_default

    return continual_default(name)


def _rule_options(fn: F) -> F:
    """The continual rules' options (simulate, refine, monitor): refits, confidence, gain,
    moves."""
    for opt in reversed([
        click.option("--refine-every", "refine_every",
                     default=_continual_default("refine_every"), show_default=True,
                     type=click.IntRange(min=1),
                     help="Requests between refits (refine, monitor: logged requests of the "
                          "replay)."),
        click.option("--confidence", "confidence", default=_continual_default("confidence"),
                     show_default=True, type=click.FloatRange(0.5, 1.0, max_open=True),
                     help="Of the evidence switches of a run: a context switches on "
                          "evidence to an arm no better with probability at most about 1 - "
                          "this over the horizon (the gain's lower bound, Bonferroni over "
                          "the refits; a normal approximation)."),
        click.option("--min-gain", "min_gain", default=_continual_default("min_gain"),
                     show_default=True, type=click.FloatRange(min=0.0),
                     help="A context changes its arm only if the gain's lower bound exceeds "
                          "this."),
        click.option("--moves", "moves", default=_continual_default("moves"),
                     show_default=True, type=click.Choice(MOVES),
                     help="How a context moves without a drift flag: on a challenger's "
                          "evidence (at the horizon's level), or to the per-query model's "
                          "pessimistic first choice at every refit (majority voting; no "
                          "level; docs/continual.md)."),
    ]):
        fn = opt(fn)
    return fn


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@main.command()
@click.option("--envs", "envs", default="math", show_default=True,
              help="Comma-separated environments.")
@click.option("--learners", "learners", default=None,
              show_default="the paper's learners",
              help="Comma-separated learners; see `iapo learners`, and name:subsets for the "
                   "subsets estimator.")
@click.option("--budgets", "budgets", default=",".join(map(str, PAPER_BUDGETS)),
              show_default=True,
              help="Comma-separated training budgets T.")
@click.option("--runs", "runs", default=200, show_default=True, type=click.IntRange(min=1),
              help="Runs per cell (fresh 80/20 split; fresh instance of synthetic envs).")
@click.option("--seed", "seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Root seed of every run's split, synthetic instance, oracle and learner.")
@click.option("--out", "out", default="bench-out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--workers", "workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Parallel worker processes (results do not depend on it).")
@click.option("--backend", "backend", default="loky", show_default=True,
              type=click.Choice(["loky", "ray", "dask"]),
              help="joblib backend: local processes, or a Ray / Dask cluster.")
@click.option("--reference", "reference", default="psst", show_default=True,
              help="Learner the Wilcoxon tests compare against.")
@click.option("--metric", "metric", default="acr", show_default=True,
              type=click.Choice(["acr", "regret"]), help="What the figures and table show.")
@click.option("--estimator", "estimator", default="blocks", show_default=True,
              type=click.Choice(["blocks", "subsets"]),
              help="Estimator of learners named without one (name:estimator picks per learner).")
@_stopping_options
@_latency_options
@_user_errors
def bench(envs: str, learners: str | None, budgets: str, runs: int, seed: int, out: str,
          workers: int, backend: str, reference: str, metric: str, estimator: str,
          stop: str, wave: int | str, latency: str | None, contexts: str | None) -> None:
    """The paper's evaluation protocol: every learner at every budget over many runs.

    Writes runs.csv, summary.csv, summary.md and two figures per environment (PNG and SVG)
    into OUT; rerunning into the same OUT skips finished cells.
    """
    from iapo.bench import BenchConfig, BenchError, execute, report
    from iapo.learners import PAPER_LEARNERS
    from iapo.problem import Stopping, parse_contexts

    _stopping(stop, wave, 1)  # --wave auto needs --stop decided

    if learners is None:
        learners = ",".join(PAPER_LEARNERS)
    try:
        budget_list = tuple(int(b) for b in _csv_list(budgets))
    except ValueError as e:
        raise click.UsageError(f"--budgets must be comma-separated integers ({e})") from e
    names = [ln if ":" in ln or estimator == "blocks" else f"{ln}:{estimator}"
             for ln in _csv_list(learners)]
    config = BenchConfig(
        envs=tuple(_csv_list(envs)), learners=tuple(names), budgets=budget_list,
        runs=runs, seed=seed, reference=reference, workers=workers, backend=backend,
        stopping=Stopping(stop, 1) if wave == "auto" else Stopping(stop, int(wave)),
        auto_width=wave == "auto", contexts=tuple(parse_contexts(contexts or "")),
        latency=latency,
    )
    if reference not in config.learners:
        raise BenchError(f"reference learner '{reference}' is not among --learners")
    _check_writable(out, "--out", folder=True)
    folder = Path(out)
    rows = execute(config, folder)
    result = report(rows, config, folder, metric)
    click.echo(f"{len(rows)} rows in {folder / 'runs.csv'}")
    click.echo(f"table: {folder / 'summary.md'}  (and summary.csv)")
    for f in result["figures"]:
        if f.suffix == ".png":
            click.echo(f"figure: {f}")


@main.command()
@click.option("--env", "env_name", default="math", show_default=True,
              help="A majority-voting environment (its queries are the traffic).")
@click.option("--runs", "runs", default=50, show_default=True, type=click.IntRange(min=2),
              help="Paired runs (each: a fresh split, training, the same requests for all).")
@click.option("--budgets", "budgets", default="0.02,0.05,0.1", show_default=True,
              help="Comma-separated learning budgets (learning completions per served one).")
@click.option("--requests", "requests", default=20_000, show_default=True,
              type=click.IntRange(min=1000), help="Requests per run (a multiple of 1,000).")
@click.option("--train-budget", "train_budget", default=2000, show_default=True,
              type=click.IntRange(min=1), help="T of the policy trained before serving.")
@click.option("--learner", "learner", default=DEFAULT_LEARNER, show_default=True,
              help="Learner of the trained policy.")
@click.option("--drift-at", "drift_at", default=None, type=click.IntRange(min=0),
              help="After this request the served prompt loses --drop accuracy.")
@click.option("--drop", "drop", default=None, show_default="0.1", type=float,
              help="Accuracy the drifted prompt loses (with --drift-at).")
@click.option("--shift-at", "shift_at", default=None, type=click.IntRange(min=0),
              help="After this request queries come from a random --shift-keep share only.")
@click.option("--shift-keep", "shift_keep", default=None, show_default="0.5", type=float,
              help="Share of the queries the traffic keeps after --shift-at (with it).")
@click.option("--by-context", "by_context", is_flag=True,
              help="Each context's requests come from its own slice of the queries (by "
                   "difficulty); a scenario of its own.")
@click.option("--pooled", "pooled", is_flag=True,
              help="Do not tell the continual learner which context each group came from "
                   "(every group counts for every context).")
@_rule_options
@click.option("--retrain", "retrain", default=_continual_default("retrain"), show_default=True,
              type=click.IntRange(min=0),
              help="Save the learning budget and spend it every this many requests as one run "
                   "of the learner on the traffic's queries, every context moving to its "
                   "choice (0: learning pulls request by request; no level; "
                   "docs/continual.md).")
@click.option("--alarm", "alarm", default=_continual_default("alarm"), show_default=True,
              type=float, help="False-alarm probability of the drift monitor over the run.")
@click.option("--seed", "seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Root seed of the splits, training and traffic.")
@click.option("--workers", "workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Parallel worker processes (results do not depend on it).")
@click.option("--out", "out", default="simulate-out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder.")
@click.option("--overwrite", "overwrite", is_flag=True,
              help="Replace the files of an earlier run in --out whose settings differ (a "
                   "rerun with the same settings replaces its own files anyway).")
@_user_errors
def simulate(env_name: str, runs: int, budgets: str, requests: int, train_budget: int,
             learner: str, drift_at: int | None, drop: float | None, shift_at: int | None,
             shift_keep: float | None, by_context: bool, pooled: bool, refine_every: int,
             confidence: float, min_gain: float, moves: str, retrain: int, alarm: float,
             seed: int, workers: int, out: str, overwrite: bool) -> None:
    """Serve simulated traffic with a trained policy, frozen and learning continually, with
    optional scripted drift: cumulative regret per 1,000 requests as a table and a figure.
    Files of an earlier run in OUT with other settings are kept unless --overwrite."""
    from iapo.continual import ContinualSettings
    from iapo.simulate import Scenario, SimConfig, check_out, run_all, write

    for option, value, at, when in (("--drop", drop, "--drift-at", drift_at),
                                    ("--shift-keep", shift_keep, "--shift-at", shift_at)):
        if value is not None and when is None:  # it would change nothing
            raise click.UsageError(f"{option} says what happens at {at}, which is not given: "
                                   f"add {at} K, or leave {option} out")
    items = [b.strip() for b in budgets.split(",")]
    if not all(items):
        raise click.UsageError(f"--budgets {budgets!r} has an empty item: give comma-separated "
                               "fractions, e.g. 0.02,0.05,0.1")
    try:
        budget_list = tuple(float(b) for b in items)
    except ValueError as e:
        raise click.UsageError(f"--budgets must be comma-separated fractions ({e})") from e
    if len(set(budget_list)) < len(budget_list):
        raise click.UsageError(f"--budgets {budgets!r} names a budget twice: give each once")
    settings = ContinualSettings(refine_every=refine_every, confidence=confidence,
                                 min_gain=min_gain, alarm=alarm, horizon=requests,
                                 moves=moves, retrain=retrain)
    for b in budget_list:
        ContinualSettings(learn_budget=b)  # each checked before any run
    if moves == "pessimistic":  # refused before training, not in a worker
        from iapo.continual import check_moves
        from iapo.envs import get_environment

        check_moves(get_environment(env_name).problem, settings)
    config = SimConfig(env_name, budget_list, runs, seed, train_budget, learner,
                       scenario=Scenario(requests, drift_at,
                                         Scenario.drop if drop is None else drop, shift_at,
                                         Scenario.shift_keep if shift_keep is None
                                         else shift_keep, by_context=by_context),
                       settings=settings, origins=not pooled)
    _check_writable(out, "--out", folder=True)
    if not overwrite:
        check_out(config, Path(out))
    results = run_all(config, workers=workers)
    summary = write(config, results, Path(out))
    from iapo.simulate import table

    click.echo(table(summary), nl=False)
    for f in summary["figures"]:
        if f.endswith(".png"):
            click.echo(f"figure: {f}")


@main.command()
@click.option("--out", "out", default="plots", show_default=True,
              type=click.Path(file_okay=False), help="Output folder.")
@click.option("--env", "env_name", default="math", show_default=True,
              help="MV environment for Figure 2(a).")
@click.option("--prompts", "prompts", default=None,
              help="Comma-separated prompt indices for Figure 2(a) (default: ones that flip).")
@_user_errors
def plot(out: str, env_name: str, prompts: str | None) -> None:
    """The paper's motivating plots: Figure 2(a) (MV accuracy against decoding cost per prompt,
    N = 1..16) and Figure 3 (expected MV and BoN utility against theta, several N)."""
    from iapo.bench.plots import prompt_flip_figure, theta_figure
    from iapo.envs import get_environment

    env = get_environment(env_name)
    if env.problem.aggregator != "mv":
        raise click.UsageError(f"Figure 2(a) needs a majority-voting environment; "
                               f"'{env_name}' is {env.problem.aggregator}")
    chosen = None
    if prompts:
        try:
            chosen = [int(p) for p in _csv_list(prompts)]
        except ValueError as e:
            raise click.UsageError(f"--prompts must be comma-separated integers ({e})") from e
        bad = [p for p in chosen if not 0 <= p < env.problem.n_prompts]
        if bad:
            raise click.UsageError(f"prompts {bad} are out of range 0..{env.problem.n_prompts - 1}")
    _check_writable(out, "--out", folder=True)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = prompt_flip_figure(env, folder, chosen) + theta_figure(folder)
    for f in files:
        if f.suffix == ".png":
            click.echo(f"figure: {f}")


@main.command()
@click.argument("task_path", metavar="TASK", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for store.sqlite, policy.json and report.json / report.md.")
@click.option("--other-task", "other_task", is_flag=True,
              help="Allow a task other than the one OUT was made for (pools are shared by "
                   "content).")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Check everything and print the plan (contexts, arms, rounds, completions, "
                   "tokens, money, what the store holds) without asking the model or writing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--batch-files", "batch_files", is_flag=True,
              help="Write each round's requests to OUT/batches/round-NN.jsonl (the OpenAI Batch "
                   "format) for any batch runner and stop (exit status 3); rerun once "
                   "round-NN.output.jsonl is there.")
@_user_errors
def optimize(task_path: str, out: str, other_task: bool, dry_run: bool, as_json: bool,
             batch_files: bool) -> None:
    """Learn a policy for TASK through its live model (resumable: rerun to continue)."""
    from pathlib import Path

    from iapo.live.batch import BatchPending

    if dry_run:
        from iapo.live.plan import dry_run as plan
        from iapo.live.plan import plan_lines

        result = plan(Path(task_path), Path(out), other_task)
        _report_check(result, as_json, plan_lines)
        return
    if as_json:
        raise click.UsageError("--json goes with --dry-run (the run writes report.json)")
    from iapo.live.optimize import optimize as run
    from iapo.live.task import load_task

    try:
        report = run(load_task(task_path), Path(out), other_task=other_task,
                     batch_files=batch_files)
    except BatchPending as e:  # not a failure: the run waits on a batch
        click.echo(str(e), err=True)
        raise click.exceptions.Exit(e.exit_code) from None
    t = report["training"]
    click.echo(f"{report['learner']}: {t['completions_used']} of {report['budget']} completions "
               f"({t['completions_paid']} paid, {t['completions_replayed']} replayed from the "
               f"store, {t['tokens_paid']} tokens)")
    for row in report["policy"]:
        click.echo(f"  {row['context']}: prompt '{row['prompt']}', N {row['n']}")
    acr = report["test_acr"]
    click.echo(f"test-split ACR (from stored samples): {acr:.4f}")
    if report.get("batch"):
        b = report["batch"]
        click.echo(f"batch jobs: {b['completions_batch']} of {b['completions_paid']} paid "
                   f"completions at {b['price']:g} of the price; cost {b['cost_batch']:.6g} "
                   f"against {b['cost_synchronous']:.6g} synchronously ({b['unit']})")
    click.echo(f"policy: {Path(out) / 'policy.json'}  report: {Path(out) / 'report.md'}")


@main.command("run-batch")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(dir_okay=False))
@click.option("--base-url", "base_url", required=True,
              help="The OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1.")
@click.option("--api-key-env", "api_key_env", default=None,
              help="The environment variable that holds the server's API key.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Requests in flight at once.")
@_user_errors
def run_batch(input_path: str, output_path: str, base_url: str, api_key_env: str | None,
              concurrency: int) -> None:
    """Run a batch file (the OpenAI Batch format, e.g. a round of `optimize --batch-files`)
    against a server without a batch API, writing its output file."""
    import contextlib
    import os
    import threading
    from pathlib import Path

    from iapo.files import write_text_atomically
    from iapo.live.batch import run_lines

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if key is None:
            raise click.UsageError(f"--api-key-env names ${api_key_env}, which is not set; "
                                   "export it")
    if not Path(input_path).is_file():
        raise click.UsageError(f"INPUT {input_path} is not a file; give a batch file, e.g. "
                               "run/batches/round-01.jsonl")
    text = Path(input_path).read_text(errors="replace")
    # each answer is kept as it comes: a rerun after an interruption asks only for the rest
    partial = Path(f"{output_path}.partial")
    done = {}
    if partial.exists():
        for line in partial.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                row = json.loads(line)
                if row["error"] is None:
                    done[row["custom_id"]] = line
    lock = threading.Lock()
    with partial.open("a") as keep:
        def on_line(line: str) -> None:
            with lock:
                keep.write(line + "\n")
                keep.flush()

        result = run_lines(text, base_url, key, concurrency, done=done, on_line=on_line)
    write_text_atomically(Path(output_path), result, "the batch output")
    partial.unlink()
    failed = sum('"error": null' not in line for line in result.splitlines())
    click.echo(f"{len(result.splitlines())} request(s), {len(done)} kept from an earlier run, "
               f"{failed} failed: {output_path}")


def _report_check(result: dict[str, Any], as_json: bool,
                  lines: Callable[[dict[str, Any]], list[str]]) -> None:
    """Print a check's result: JSON, or its ``lines``, or one "Error: ..." line per problem
    (exit status 1)."""
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not result["problems"]:
        for line in lines(result):
            click.echo(line)
    for problem in [] if as_json else result["problems"]:
        click.echo(f"Error: {problem}", err=True)
    if result["problems"]:
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("task_path", metavar="TASK", type=click.Path(dir_okay=False))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Also check the run folder optimize would use: writable, and its store (if "
                   "any) readable and of this task.")
@click.option("--other-task", "other_task", is_flag=True,
              help="With --out: allow a store made for another task.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_user_errors
def validate(task_path: str, out: str | None, other_task: bool, as_json: bool) -> None:
    """Check TASK as optimize does (task file, data, scorers, API key), without a model call.

    Exit status 0 and the task's sizes, or 1 and one "Error: ..." line per problem.
    """
    from pathlib import Path

    from iapo.live.plan import summary_line
    from iapo.live.plan import validate as run

    result = run(Path(task_path), Path(out) if out else None, other_task)
    _report_check(result, as_json, lambda r: [f"{task_path} is valid: {summary_line(r)}"])


@main.command()
@click.argument("task_path", metavar="TASK", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder of the completion store (store.sqlite).")
@click.option("--samples", "samples", default=8, show_default=True, type=click.IntRange(min=1),
              help="Completions per (prompt, query) pair.")
@click.option("--other-task", "other_task", is_flag=True,
              help="Allow a task other than the one OUT was made for.")
@_user_errors
def collect(task_path: str, out: str, samples: int, other_task: bool) -> None:
    """Sample every prompt on every query of TASK (resumable), for export-env."""
    from pathlib import Path

    from iapo.live.optimize import collect as run
    from iapo.live.task import load_task

    info = run(load_task(task_path), Path(out), samples, other_task=other_task)
    click.echo(f"{info['completions']} completions in {info['store']} ({info['paid']} paid now, "
               f"{info['tokens']} tokens, {info['scorer_failures']} scorer failures)")


def _serve_default(name: str) -> Any:
    """A setting's default, written once in :class:`iapo.settings.ServeConfig`."""
    from iapo.settings import serve_default

    return serve_default(name)


def _allow_task_change(fn: F) -> F:
    return click.option(
        "--allow-task-change", "allow_task_change", is_flag=True,
        help="Serve with --task even where its prompts, model, aggregator, scorers or "
             "contexts differ from what the policy was trained with.")(fn)


@main.command()
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.argument("query")
@click.option("--context", "context", required=True,
              help="The caller's context, e.g. budget=high or helpful=0.3,harmless=0.7,budget=low")
@click.option("--task", "task_path", default=None, type=click.Path(dir_okay=False),
              help="Task file (default: the one the policy embeds).")
@click.option("--show-samples", is_flag=True, help="Print all N completions with their scores.")
@click.option("--seed", "seed", default=None, type=int, help="Seed of the samples and ties.")
@click.option("--store", "store", default=None, type=click.Path(dir_okay=False),
              help="A completion store (e.g. RUN/store.sqlite): replay the query's stored "
                   "samples and pay only for missing ones, which are stored.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_allow_task_change
@_user_errors
def answer(policy_path: str, query: str, context: str, task_path: str | None,
           show_samples: bool, seed: int | None, store: str | None, as_json: bool,
           allow_task_change: bool) -> None:
    """Answer QUERY with the policy's arm for the context, aggregated by BoN or MV."""
    from pathlib import Path

    from iapo.serve.core import answer as run

    result = run(Path(policy_path), context, query, Path(task_path) if task_path else None, seed,
                 Path(store) if store else None, allow_task_change)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    predicted = result["predicted_seconds"]
    click.echo(f"[{result['context']}: prompt '{result['prompt']}', N {result['n']}, "
               f"{result['aggregator']}; {result['upstream_seconds']:.2f} s"
               + ("" if predicted is None else f", {predicted:.2f} s expected") + "]")
    if result["aggregator"] == "mv":
        click.echo(f"answer: {result['answer']}  votes: {result['votes']}")
    click.echo(result["text"])
    if show_samples:
        for j, s in enumerate(result["samples"]):
            click.echo(f"--- sample {j}: answer={s['answer']} scores={s['scores']}")
            click.echo(s["text"])


@main.command()
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option("--task", "task_path", default=None, type=click.Path(dir_okay=False),
              help="Task file (default: the one the policy embeds).")
@click.option("--host", "host", default=_serve_default("host"), show_default=True,
              help="Address to listen on; anything but loopback needs API keys.")
@click.option("--port", "port", default=_serve_default("port"), show_default=True,
              type=click.IntRange(0, 65535),
              help="Port to listen on; 0: a free one, which \"serving on\" names.")
@click.option("--keys", "keys_file", default=None, type=click.Path(dir_okay=False),
              help="TOML keys file: per key a name, its contexts, default context and limits "
                   "(else the comma-separated keys of $IAPO_API_KEYS).")
@click.option("--workers", "workers", default=_serve_default("workers"), show_default=True,
              type=click.IntRange(1, 64),
              help="Worker processes on the same port (keys and limits shared).")
@click.option("--default-context", "default_context", default=None,
              help="Context for requests that give none, e.g. budget=low.")
@click.option("--max-n", "max_n", default=_serve_default("max_n"), show_default=True,
              type=click.IntRange(min=1),
              help="Most completions one request may ask upstream for (N is capped).")
@click.option("--upstream-timeout", "upstream_timeout",
              default=_serve_default("upstream_timeout"), show_default=True,
              type=click.FloatRange(min=0.1), help="Seconds per upstream call.")
@click.option("--upstream-retries", "upstream_retries",
              default=_serve_default("upstream_retries"), show_default=True,
              type=click.IntRange(min=0), help="Retries of a failed upstream call.")
@click.option("--deadline", "deadline", default=None, type=click.FloatRange(min=0.1),
              help="Seconds for a whole request, sampling and scoring (default: upstream "
                   "timeout x tries + 5).")
@click.option("--max-concurrency", "max_concurrency",
              default=_serve_default("max_concurrency"), show_default=True,
              type=click.IntRange(min=1), help="Most upstream calls in flight at once.")
@click.option("--max-body", "max_body", default=_serve_default("max_body"), show_default=True,
              type=click.IntRange(min=1024), help="Largest request body in bytes (413 past it).")
@click.option("--body-timeout", "body_timeout",
              default=_serve_default("body_timeout"), show_default=True,
              type=click.FloatRange(min=0.1),
              help="Seconds for a request's body to arrive (408 past it).")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="A web origin (e.g. https://app.example) allowed to call from a browser; "
                   "repeat for more. Other cross-origin requests get 403.")
@click.option("--seed", "seed", default=None, type=int,
              help="Seed of the samples (without --store) and of the ties.")
@click.option("--limits", "limits", default=None, metavar="URL",
              help="Count the keys' limits in Redis (redis://HOST:PORT/DB), shared by every "
                   "gateway that names it; default: an SQLite file on this machine.")
@click.option("--log-store", "log_store", default=None, type=click.Path(dir_okay=False),
              help="SQLite store to log every served request and its completions to.")
@click.option("--store", "replay_store", default=None, type=click.Path(dir_okay=False),
              help="A completion store (e.g. RUN/store.sqlite) to replay: a request identical "
                   "to a stored pool takes its samples and pays only for missing ones.")
@click.option("--learn-budget", "learn_budget", default=_serve_default("learn_budget"),
              show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Learning completions per served one, at most: drawn after a response is "
                   "sent, on its query, logged (needs --log-store), never returned "
                   "(docs/continual.md).")
@click.option("--learn-per-day", "learn_per_day", default=None, type=click.IntRange(min=0),
              help="And at most this many learning completions a day (UTC).")
@click.option("--refine-every", "refine_every", default=None, type=click.IntRange(min=1),
              help="Run iapo refine on the log (needs --log-store) every N requests served, "
                   "in the background; a policy it writes is reloaded.")
@click.option("--moves", "moves", default=_serve_default("moves"), show_default=True,
              type=click.Choice(MOVES),
              help="How the background refine moves a context without a drift flag (needs "
                   "--refine-every): as iapo refine --moves.")
@click.option("--retrain", "retrain", default=_serve_default("retrain"), show_default=True,
              type=click.IntRange(min=0),
              help="Save the learning budget instead of drawing learning pulls, and every "
                   "this many requests let the background refine spend it as iapo refine "
                   "--budget B --retrain does (needs --learn-budget and --refine-every "
                   "dividing it; no evidence asked; docs/continual.md).")
@_allow_task_change
@_user_errors
def serve(policy_path: str, task_path: str | None, host: str, port: int, keys_file: str | None,
          workers: int, default_context: str | None, max_n: int, upstream_timeout: float,
          upstream_retries: int, deadline: float | None, max_concurrency: int, max_body: int,
          body_timeout: float, cors_origins: tuple[str, ...], seed: int | None,
          limits: str | None,
          log_store: str | None, replay_store: str | None, learn_budget: float,
          learn_per_day: int | None, refine_every: int | None, moves: str, retrain: int,
          allow_task_change: bool) -> None:
    """Serve POLICY as an OpenAI-compatible endpoint: each request gets its context's arm."""
    from iapo.serve.run import run_gateway
    from iapo.settings import ServeConfig

    spec = ServeConfig(
        policy=policy_path, task=task_path, host=host, port=port, keys_file=keys_file,
        workers=workers, default_context=default_context, max_n=max_n,
        upstream_timeout=upstream_timeout, upstream_retries=upstream_retries,
        deadline=deadline, max_concurrency=max_concurrency, max_body=max_body,
        body_timeout=body_timeout, cors_origins=tuple(cors_origins), log_store=log_store,
        replay_store=replay_store, allow_task_change=allow_task_change, limits=limits,
        seed=seed, learn_budget=learn_budget, learn_per_day=learn_per_day,
        refine_every=refine_every, moves=moves, retrain=retrain,
    )
    run_gateway(spec, announce=click.echo)


def _refine_options(fn: F) -> F:
    """The arguments refine and monitor share: the run, the log and the rules' options."""
    fn = _rule_options(fn)
    for opt in reversed([
        click.argument("run", type=click.Path(file_okay=False)),
        click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False),
                     help="The gateway's log (iapo serve --log-store), with gold answers "
                          "(iapo label-log, POST /v1/feedback)."),
    ]):
        fn = opt(fn)
    return fn


def _replay(run: str, log_path: str, min_gain: float, confidence: float, refine_every: int,
            moves: str, write: bool, budget: int = 0, seed: int = 0,
            retrain: bool = False) -> dict[str, Any]:
    """Refine's replay of the log (writing the policy and refine.json only if ``write``;
    drawing ``budget`` more completions, as one run of the learner if ``retrain``),
    printed; its report."""
    from iapo.continual import ContinualSettings
    from iapo.live.refine import refine as run_refine

    settings = ContinualSettings(min_gain=min_gain, confidence=confidence,
                                 refine_every=refine_every, moves=moves)
    report = run_refine(Path(run), Path(log_path), settings, write=write, budget=budget,
                        seed=seed, progress=True, retrain=retrain)
    _echo_refine(report)
    return report


@main.command()
@_refine_options
@click.option("--budget", type=click.IntRange(min=0), default=0, show_default=True,
              help="More completions to draw on the logged queries (with gold), PSST-style, "
                   "before deciding; stored in RUN's store, so a rerun replays them.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the queries --budget draws on.")
@click.option("--retrain", is_flag=True,
              help="Spend --budget as one run of the default learner on the logged queries, "
                   "and move every context to its choice: no evidence asked "
                   "(docs/continual.md).")
@_user_errors
def refine(run: str, log_path: str, refine_every: int, confidence: float,
           min_gain: float, moves: str, budget: int, seed: int, retrain: bool) -> None:
    """Re-decide RUN's policy from the gateway's log: a context changes its arm only on
    evidence or a drift flag (with --moves pessimistic, on the per-query model's pessimistic
    estimate instead of evidence; with --retrain, to the choice of one run of the learner
    on --budget completions; docs/continual.md). Pays nothing unless --budget asks for more
    completions. Writes RUN/policy.json (the old one kept as policy.previous.json) only when
    a context changes, and RUN/refine.json always."""
    report = _replay(run, log_path, min_gain, confidence, refine_every, moves, write=True,
                     budget=budget, seed=seed, retrain=retrain)
    click.echo(f"policy: {Path(run) / 'policy.json'} (replaced)" if report["changed"] else
               f"policy unchanged: {report['why_not']}")


@main.command()
@click.argument("target", metavar="LOG")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="The log, when LOG names the run instead (iapo monitor RUN --log LOG).")
@_rule_options
@_user_errors
def monitor(target: str, log_path: str | None, refine_every: int, confidence: float,
            min_gain: float, moves: str) -> None:
    """Replay the gateway's log LOG (iapo serve --log-store) against the policy it served and
    print every drift flag, with its numbers (the drift test of docs/continual.md); writes
    nothing. Exit status 3 if any. The log names the run whose policy the gateway served;
    `iapo monitor RUN --log LOG` names it instead."""
    from iapo.live.refine import served_run

    if log_path is None:
        if Path(target).is_dir():
            raise click.UsageError(f"{target} is a folder: give the log (iapo monitor LOG), "
                                   "or the run and its log (iapo monitor RUN --log LOG)")
        log_path, run = target, str(served_run(Path(target)))
        click.echo(f"run: {run} (the policy's folder, as the log records it)")
    else:
        run = target
    if _replay(run, log_path, min_gain, confidence, refine_every, moves,
               write=False)["flags"]:
        raise SystemExit(3)


def _echo_refine(report: dict[str, Any]) -> None:
    """What refine and monitor print: what was read, every context, every flag."""
    log = report["log"]
    click.echo(f"log: {log['logged']} requests ({log['policy']} served, {log['learn']} "
               f"learning pulls), {log['left_out']} left out without a gold answer; "
               f"{report['training_groups']} training groups")
    if log.get("other_arms"):
        click.echo(f"{log['other_arms']} logged requests left out: served by arms that the "
                   "run's task does not have (another task, or serve --allow-task-change)")
    if log.get("rated") or log.get("rated_unused"):
        click.echo(f"{log['rated']} feedback scores of shown completions count as their "
                   "values (Best-of-N)" + (f"; {log['rated_unused']} not used (a score counts "
                                           "for a Best-of-N request the policy served)"
                                           if log["rated_unused"] else ""))
    for c in report["contexts"]:
        s, ch = c["served"], c["chosen"]

        def q(a: dict[str, Any]) -> str:
            return "no estimate" if a["q"] is None else (
                f"Q {a['q']:.4f}" + ("" if a["q_ci95"] is None else
                                      f" [{a['q_ci95'][0]:.4f}, {a['q_ci95'][1]:.4f}]"))
        click.echo(f"{c['context']}: served {s['prompt']} N={s['n']} ({q(s)}, {s['groups']} "
                   f"groups) -> {ch['prompt']} N={ch['n']} ({q(ch)})")
    spent = report.get("spent")
    if spent:
        click.echo(f"drew {spent['drawn']} of --budget {spent['budget']} completions on "
                   f"{spent['queries']} logged queries"
                   + (" in one run of the learner" if spent.get("retrain") else "")
                   + f": {spent['paid']} paid, {spent['replayed']} replayed from the store")
    for t in report.get("splits", []):
        names = [report["contexts"][t[k]]["context"] for k in ("context", "other")]
        click.echo(f"TRAFFIC at request {t['request']}: contexts {names[0]} and {names[1]} "
                   f"ask differently (prompt {t['prompt']} at N={t['n']}: {t['own']:.4f} on "
                   f"{t['own_groups']} groups against {t['others']:.4f} on "
                   f"{t['other_groups']}, z {t['z']:+.1f}); neither learns from the other's "
                   "traffic from then on")
    for f in report["flags"]:
        click.echo(f"DRIFT at request {f['request']}: context "
                   f"{report['contexts'][f['context']]['context']}, prompt {f['prompt']} at "
                   f"N={f['n']}: live mean {f['live']:.4f} below its baseline {f['baseline']:.4f}")


@main.command(name="label-log")
@click.argument("log_path", metavar="LOG", type=click.Path(dir_okay=False))
@click.argument("labels_path", metavar="LABELS", type=click.Path(dir_okay=False))
@_user_errors
def label_log(log_path: str, labels_path: str) -> None:
    """Attach gold answers to the gateway's logged requests, in bulk: LABELS is JSONL, one
    {"id": RESPONSE_ID, "gold": ANSWER} per line. All lines or none: a bad line is named and
    nothing is attached; one request given two different golds in LABELS is refused. A later
    file's gold for a request counts over an earlier one's."""
    from pathlib import Path

    from iapo.live.feedback import label_log as run

    got = run(Path(log_path), Path(labels_path))
    click.echo(f"attached {got['attached']} gold answers to {got['requests']} logged requests"
               + (f" ({got['relabelled']} had one already: the latest counts)"
                  if got["relabelled"] else ""))


@main.command(name="export-env")
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="The .npz environment file to write.")
@_user_errors
def export_env(store_path: str, out: str) -> None:
    """Turn a live run's stored completions into a tabular environment for bench and train."""
    from pathlib import Path

    from iapo.live.optimize import export_env as run

    info = run(Path(store_path), Path(out))
    click.echo(f"{info['aggregator']} environment with {info['prompts']} prompts and "
               f"{info['queries']} queries written to {info['out']}"
               + (f" ({info['dropped_queries']} queries without any sample were left out)"
                  if info["dropped_queries"] else ""))
    if info["unobserved_pairs"]:
        click.echo(f"{info['unobserved_pairs']} (prompt, query) pairs have no samples: a "
                   "prompt's Q averages over the queries it was sampled on (iapo collect fills "
                   "the grid)")


if __name__ == "__main__":
    main()
