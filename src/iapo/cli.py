"""The ``iapo`` command line."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from iapo.envs import DataError, UnknownEnvironmentError, acr, best_arms, get_environment
from iapo.envs.registry import ENVIRONMENTS
from iapo.learners import LEARNERS
from iapo.oracle import BudgetExceededError
from iapo.policy import Policy, PolicyError, evaluate_policy, train_policy
from iapo.problem import ProblemError

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(fn: F) -> F:
    """Turn the library's validation errors into one clear line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ProblemError, DataError, PolicyError, UnknownEnvironmentError, ValueError,
                BudgetExceededError) as e:
            raise click.UsageError(str(e)) from e

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="iapo")
def main() -> None:
    """Inference-aware prompt optimization (IAPO) for black-box LLMs."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_user_errors
def envs(as_json: bool) -> None:
    """List every environment with its aggregator, sizes and N_max."""
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
    click.echo(
        f"{'name':<18} {'agg':<4} {'prompts':>7} {'queries':>7} {'contexts':>8} {'N_max':>5}  about"
    )
    for r in rows:
        click.echo(
            f"{r['name']:<18} {r['aggregator']:<4} {r['prompts']:>7} {r['queries']:>7} "
            f"{r['contexts']:>8} {r['n_max']:>5}  {r['summary']}"
        )


@main.command()
@click.argument("env_name", metavar="ENV")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_user_errors
def oracle(env_name: str, as_json: bool) -> None:
    """The best arm (prompt, N) per context on all of ENV's queries, and the optimal ACR.

    Computed exactly (no Monte Carlo); prompts are 0-based indices as in the data.
    """
    env = get_environment(env_name)
    q = env.q()
    arms = best_arms(q)
    grid = env.problem.grid
    value = acr(q, arms, grid.probabilities)
    rows = [
        {"context": key, "prompt": a.prompt, "n": a.n, "q": float(q[i, a.prompt, a.n - 1])}
        for i, (key, a) in enumerate(zip(grid.keys, arms, strict=True))
    ]
    if as_json:
        click.echo(json.dumps({"env": env.name, "acr": value, "contexts": rows}, indent=2))
        return
    click.echo(f"{env.name}: optimal ACR {value:.4f} over {env.n_queries} queries")
    width = max(len(str(r["context"])) for r in rows)
    click.echo(f"{'context':<{width}}  {'prompt':>6} {'N':>3} {'Q':>8}")
    for r in rows:
        click.echo(f"{r['context']:<{width}}  {r['prompt']:>6} {r['n']:>3} {r['q']:>8.4f}")


@main.command()
def learners() -> None:
    """List the learners with one line each."""
    width = max(len(n) for n in LEARNERS)
    for name, spec in LEARNERS.items():
        click.echo(f"{name:<{width}}  {spec.summary}")


@main.command()
@click.argument("env_name", metavar="ENV")
@click.option("--learner", "learner", default="psst", show_default=True,
              type=click.Choice(list(LEARNERS)), help="The learner to train.")
@click.option("--budget", "budget", required=True, type=click.IntRange(min=0),
              help="Training budget T in completions (never exceeded).")
@click.option("--seed", "seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the 80/20 split, the oracle and the learner.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the policy JSON.")
@_user_errors
def train(env_name: str, learner: str, budget: int, seed: int, out: str) -> None:
    """Train a policy on the training split of ENV that SEED draws, and write it to OUT."""
    env = get_environment(env_name)
    env.query_table()  # the exact table is not needed to train; computing it here keeps
    # the progress bar out of `evaluate` for the common train-then-evaluate sequence
    policy = train_policy(env, learner, budget, seed)
    policy.save(out)
    click.echo(
        f"{learner} on {env.name}: {policy.completions_used} of {budget} completions used; "
        f"policy written to {out}"
    )
    for key, ch in zip(policy.contexts, policy.choices, strict=True):
        n = "random" if ch.n is None else ch.n
        click.echo(f"  {key}: prompt {ch.prompt}, N {n}")


@main.command()
@click.argument("env_name", metavar="ENV")
@click.argument("policy_path", metavar="POLICY", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_user_errors
def evaluate(env_name: str, policy_path: str, as_json: bool) -> None:
    """Exact ACR of a policy on its test split, the optimal ACR there, and the regret."""
    env = get_environment(env_name)
    policy = Policy.load(policy_path)
    result = evaluate_policy(env, policy)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"{policy.learner} on {env.name} (T={policy.budget}, used {policy.completions_used}): "
        f"ACR {result['acr']:.4f}, oracle ACR {result['oracle_acr']:.4f}, "
        f"regret {result['regret']:.4f}"
    )


if __name__ == "__main__":
    main()
