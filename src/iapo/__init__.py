"""iapo: inference-aware prompt optimization for black-box LLMs.

Implements the IAPO framework and the PSST algorithm of Mahmud, Nakamura, Wray and Zilberstein,
"Inference-Aware Prompt Optimization for Aligning Black-Box Large Language Models".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iapo.bound import theorem1
    from iapo.envs import Environment, get_environment, load_environment
    from iapo.errors import InputError
    from iapo.learners import (
        LEARNERS,
        PSST,
        UCB,
        EpsilonGreedy,
        LearnerSpec,
        PSSTModel,
        Softmax,
        TopKScreening,
        TripleSH,
        Uniform,
        get_learner,
    )
    from iapo.oracle import BudgetExceededError, Ledger, Observation, Pull, SimulatedOracle
    from iapo.policy import Policy, PolicyError
    from iapo.problem import (
        Arm,
        Context,
        ContextGrid,
        CostObjective,
        Objective,
        Problem,
        ProblemError,
    )
    from iapo.split import train_test_split
    from iapo.training import evaluate_policy, train_policy

# the public names, loaded on first use so that `iapo --help` does not import numpy
_HOME = {
    "Environment": "iapo.envs", "get_environment": "iapo.envs",
    "BudgetExceededError": "iapo.oracle", "Ledger": "iapo.oracle",
    "Observation": "iapo.oracle", "Pull": "iapo.oracle", "SimulatedOracle": "iapo.oracle",
    "Arm": "iapo.problem", "Context": "iapo.problem", "ContextGrid": "iapo.problem",
    "CostObjective": "iapo.problem", "Objective": "iapo.problem", "Problem": "iapo.problem",
    "ProblemError": "iapo.problem", "train_test_split": "iapo.split",
    "load_environment": "iapo.envs", "LEARNERS": "iapo.learners", "get_learner": "iapo.learners",
    "Policy": "iapo.policy", "PolicyError": "iapo.policy", "train_policy": "iapo.training",
    "evaluate_policy": "iapo.training", "theorem1": "iapo.bound", "InputError": "iapo.errors",
    **{name: "iapo.learners" for name in ("PSST", "UCB", "EpsilonGreedy", "LearnerSpec",
                                          "PSSTModel", "Softmax", "TopKScreening", "TripleSH",
                                          "Uniform")},
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'iapo' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "LEARNERS",
    "PSST",
    "UCB",
    "Arm",
    "BudgetExceededError",
    "Context",
    "ContextGrid",
    "CostObjective",
    "Environment",
    "EpsilonGreedy",
    "InputError",
    "LearnerSpec",
    "Ledger",
    "Objective",
    "Observation",
    "PSSTModel",
    "Policy",
    "PolicyError",
    "Problem",
    "ProblemError",
    "Pull",
    "SimulatedOracle",
    "Softmax",
    "TopKScreening",
    "TripleSH",
    "Uniform",
    "evaluate_policy",
    "get_environment",
    "get_learner",
    "load_environment",
    "theorem1",
    "train_policy",
    "train_test_split",
]
