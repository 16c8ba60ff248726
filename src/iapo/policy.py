"""The policy artifact (JSON), training on a split, and exact evaluation on the test split."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.envs.base import Environment
from iapo.learners import get_learner
from iapo.learners.base import Choice
from iapo.oracle import SimulatedOracle
from iapo.split import train_test_split

FORMAT = "iapo-policy/1"


class PolicyError(ValueError):
    """A policy file is missing, malformed or does not fit the environment."""


@dataclass
class Policy:
    """A learned policy: context -> (prompt, N), with how it was learned.

    ``split`` holds the seed, the test fraction and the test-query indices; ``choices`` follow
    ``contexts`` (the grid's keys, in order).
    """

    env: str
    learner: str
    budget: int
    completions_used: int
    seed: int | None
    split: dict[str, Any]
    contexts: list[str]
    choices: list[Choice]
    trace: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "env": self.env,
            "learner": self.learner,
            "budget": self.budget,
            "completions_used": self.completions_used,
            "seed": self.seed,
            "split": self.split,
            "policy": [
                {
                    "context": key,
                    "prompt": ch.prompt,
                    "n": ch.n if ch.n is not None else "random",
                    "q_hat": None if math.isnan(ch.q_hat) else ch.q_hat,
                    "samples": ch.samples,
                }
                for key, ch in zip(self.contexts, self.choices, strict=True)
            ],
            "trace": self.trace,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "policy") -> Policy:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PolicyError(f"{source}: not an iapo policy (expected \"format\": \"{FORMAT}\")")
        try:
            rows = data["policy"]
            choices = [
                Choice(
                    int(r["prompt"]),
                    None if r["n"] == "random" else int(r["n"]),
                    float("nan") if r.get("q_hat") is None else float(r["q_hat"]),
                    int(r.get("samples", 0)),
                )
                for r in rows
            ]
            return cls(
                env=str(data["env"]),
                learner=str(data["learner"]),
                budget=int(data["budget"]),
                completions_used=int(data["completions_used"]),
                seed=None if data.get("seed") is None else int(data["seed"]),
                split=dict(data["split"]),
                contexts=[str(r["context"]) for r in rows],
                choices=choices,
                trace=dict(data.get("trace", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{source}: malformed policy ({type(e).__name__}: {e})") from e

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        p = Path(path)
        if not p.is_file():
            raise PolicyError(f"policy file {str(p)!r} does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise PolicyError(f"{p}: not valid JSON ({e})") from e
        return cls.from_dict(data, str(p))

    def test_queries(self) -> npt.NDArray[np.int64]:
        return np.asarray(self.split.get("test", []), dtype=np.int64)


def policy_values(q: npt.NDArray[np.float64], choices: list[Choice]) -> npt.NDArray[np.float64]:
    """Q(c, pi(c)) per context: [C]; N = None averages Q over N = 1..N_max."""
    return np.array([
        q[i, ch.prompt].mean() if ch.n is None else q[i, ch.prompt, ch.n - 1]
        for i, ch in enumerate(choices)
    ])


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
    learner: str,
    budget: int,
    seed: int,
    test_fraction: float = 0.2,
    estimator: str | None = None,
) -> Policy:
    """Split the queries from ``seed`` (80/20 by default), train ``learner`` on the training
    part with budget T through a simulated oracle, and return the policy."""
    spec = get_learner(learner, estimator)
    split_seq, oracle_seq, learner_seq = np.random.SeedSequence(seed).spawn(3)
    train, test = train_test_split(env.n_queries, split_seq, test_fraction)
    oracle = SimulatedOracle(env, train, budget, np.random.default_rng(oracle_seq))
    result = spec.run(env.problem, oracle, budget, np.random.default_rng(learner_seq))
    return Policy(
        env=env.name,
        learner=spec.name,
        budget=int(budget),
        completions_used=int(oracle.ledger.spent),
        seed=int(seed),
        split={"seed": int(seed), "test_fraction": test_fraction, "test": test.tolist()},
        contexts=env.problem.grid.keys,
        choices=result.choices,
        trace=result.trace.to_dict(),
    )


def evaluate_policy(env: Environment, policy: Policy) -> dict[str, float | int]:
    """Exact ACR of ``policy`` on its test split, the optimal ACR there, and the regret."""
    problem = env.problem
    if policy.env != env.name:
        raise PolicyError(
            f"the policy was trained on '{policy.env}', not '{env.name}'; evaluate it there"
        )
    if policy.contexts != problem.grid.keys:
        raise PolicyError(
            f"the policy's contexts {policy.contexts} do not match environment "
            f"'{env.name}' ({problem.grid.keys})"
        )
    for ch in policy.choices:
        if not 0 <= ch.prompt < problem.n_prompts or (
            ch.n is not None and not 1 <= ch.n <= problem.n_max
        ):
            raise PolicyError(f"the policy's arm ({ch.prompt}, {ch.n}) is not an arm of "
                              f"'{env.name}'")
    test = policy.test_queries()
    if test.size == 0 or test.min() < 0 or test.max() >= env.n_queries:
        raise PolicyError("the policy's test split is empty or names queries the environment "
                          "does not have")
    q = env.q(test)
    pr = problem.grid.probabilities
    value = float(policy_values(q, policy.choices) @ pr)
    best = float(q.reshape(q.shape[0], -1).max(axis=1) @ pr)
    return {
        "acr": value,
        "oracle_acr": best,
        "regret": best - value,
        "completions_used": policy.completions_used,
        "budget": policy.budget,
    }
