"""Training a policy on a split through a simulated oracle, and its exact evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from iapo.envs.base import policy_values
from iapo.errors import InputError
from iapo.learners import LearnerSpec, get_learner
from iapo.learners.base import Choice
from iapo.oracle import SimulatedOracle
from iapo.policy import Policy, PolicyError
from iapo.problem import ProblemError
from iapo.split import train_test_split

if TYPE_CHECKING:
    from iapo.envs.base import Environment


def regret_parts(
    q: npt.NDArray[np.float64], choices: list[Choice]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Split each context's regret max Q(c) - Q(c, pi(c)) in two parts that add up to it.

    Returns ([C], [C]): the prompt part max Q(c) - max_m Q(c, p, m), what choosing prompt p
    costs even at its best N, and the scale part max_m Q(c, p, m) - Q(c, pi(c)), what the
    chosen N (or, for N = None, the average over N) loses on that prompt.
    """
    c = np.arange(q.shape[0])
    per_prompt = q.max(axis=2)  # [C, P]
    at_prompt = per_prompt[c, [ch.prompt for ch in choices]]
    return per_prompt.max(axis=1) - at_prompt, at_prompt - policy_values(q, choices)


def train_policy(
    env: Environment,
    learner: str | LearnerSpec,
    budget: int,
    seed: int,
    test_fraction: float = 0.2,
    estimator: str | None = None,
) -> Policy:
    """Split the queries from ``seed`` (80/20 by default), train ``learner`` (a name, e.g.
    ``"psst:subsets"``, or a spec such as ``get_learner("egreedy").configure(epsilon=0.05)``)
    on the training part with budget T through a simulated oracle, and return the policy. Its
    trace records the learner's parameters."""
    if isinstance(learner, LearnerSpec):
        if estimator is not None:
            raise InputError("give a learner spec its estimator with "
                             "spec.configure(estimator=...), not estimator=")
        spec = learner
    else:
        spec = get_learner(learner, estimator)
    split_seq, oracle_seq, learner_seq = np.random.SeedSequence(seed).spawn(3)
    train, test = train_test_split(env.n_queries, split_seq, test_fraction)
    oracle = SimulatedOracle(env, train, budget, np.random.default_rng(oracle_seq))
    result = spec.learner(env.problem, oracle, budget, np.random.default_rng(learner_seq))
    return Policy(
        env=env.name,
        learner=spec.name,
        budget=int(budget),
        completions_used=int(oracle.ledger.spent),
        seed=int(seed),
        split={"seed": int(seed), "test_fraction": test_fraction, "test": test.tolist()},
        contexts=env.problem.grid.keys,
        choices=result.choices,
        trace={**result.trace.to_dict(), "parameters": spec.parameters},
        stopping=env.problem.stopping,
        latency=None if env.problem.latency is None else env.problem.latency.to_dict(),
    )


def policy_environment(env: Environment, policy: Policy) -> Environment:
    """``env`` as ``policy`` was trained on it: its stopping rule, and where its contexts price
    latency, those contexts and the synthetic latency model it records."""
    from iapo.latency import SyntheticLatency

    env = env.with_stopping(policy.stopping)
    params = SyntheticLatency.from_description(str((policy.latency or {}).get("description", "")))
    if params is not None:
        env = env.with_latency(params)
    if policy.contexts != env.problem.grid.keys:
        try:
            env = env.with_contexts(policy.contexts)
        except ProblemError:
            pass  # not the environment's contexts at all: check_arms says so
    return env


def evaluate_policy(env: Environment, policy: Policy) -> dict[str, float | int]:
    """Exact ACR of ``policy`` on its test split, the optimal ACR there, and the regret, with
    its arms stopping by the rule it was trained with, on its contexts and latency model."""
    env = policy_environment(env, policy)
    problem = env.problem
    if policy.env != env.name:
        raise PolicyError(
            f"the policy was trained on '{policy.env}', not '{env.name}'; evaluate it there"
        )
    policy.check_arms(problem.n_prompts, problem.n_max, problem.grid.keys,
                      f"environment '{env.name}'")
    test = policy.test_queries(getattr(env, "query_ids", None))
    if test.size == 0 or test.min() < 0 or test.max() >= env.n_queries:
        raise PolicyError("the policy's test split is empty or names queries the environment "
                          "does not have")
    arms = env.arm_table(test)
    pr = problem.grid.probabilities
    value = arms.acr(policy.choices, pr)
    best = arms.optimal_acr(pr)
    return {
        "acr": value,
        "oracle_acr": best,
        "regret": best - value,
        "completions_used": policy.completions_used,
        "budget": policy.budget,
    }
