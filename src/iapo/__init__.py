"""iapo: inference-aware prompt optimization for black-box LLMs.

Implements the IAPO framework and the PSST algorithm of Mahmud, Nakamura, Wray and Zilberstein,
"Inference-Aware Prompt Optimization for Aligning Black-Box Large Language Models".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# the public names and the module each lives in: loaded on first use, so that `iapo --help`
# does not import numpy. __all__ and the type checker's imports below list the same names
# (tests/test_imports.py checks that the three agree and that every name exists)
_HOME = {
    "Environment": "iapo.envs", "get_environment": "iapo.envs", "load_environment": "iapo.envs",
    "BudgetExceededError": "iapo.pulls", "Ledger": "iapo.pulls", "Observation": "iapo.pulls",
    "Pull": "iapo.pulls", "SimulatedOracle": "iapo.oracle",
    "Arm": "iapo.problem", "Context": "iapo.problem", "ContextGrid": "iapo.problem",
    "CostObjective": "iapo.problem", "Objective": "iapo.problem", "Problem": "iapo.problem",
    "ProblemError": "iapo.problem", "Stopping": "iapo.problem",
    "train_test_split": "iapo.split", "Policy": "iapo.policy", "PolicyError": "iapo.policy",
    "train_policy": "iapo.training", "evaluate_policy": "iapo.training",
    "theorem1": "iapo.bound", "InputError": "iapo.errors", "RunError": "iapo.errors",
    **{name: "iapo.learners" for name in (
        "LEARNERS", "DEFAULT_LEARNER", "get_learner", "PSST", "PSSTAuto", "PSSTModel", "UCB",
        "EpsilonGreedy", "LearnerSpec", "LearnerResult", "Choice", "Softmax", "TopKScreening",
        "TripleSH", "Uniform")},
}

if TYPE_CHECKING:
    from iapo.bound import theorem1
    from iapo.envs import Environment, get_environment, load_environment
    from iapo.errors import InputError, RunError
    from iapo.learners import (
        DEFAULT_LEARNER,
        LEARNERS,
        PSST,
        UCB,
        Choice,
        EpsilonGreedy,
        LearnerResult,
        LearnerSpec,
        PSSTAuto,
        PSSTModel,
        Softmax,
        TopKScreening,
        TripleSH,
        Uniform,
        get_learner,
    )
    from iapo.oracle import SimulatedOracle
    from iapo.policy import Policy, PolicyError
    from iapo.problem import (
        Arm,
        Context,
        ContextGrid,
        CostObjective,
        Objective,
        Problem,
        ProblemError,
        Stopping,
    )
    from iapo.pulls import BudgetExceededError, Ledger, Observation, Pull
    from iapo.split import train_test_split
    from iapo.training import evaluate_policy, train_policy


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'iapo' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "Arm",
    "BudgetExceededError",
    "Choice",
    "Context",
    "ContextGrid",
    "CostObjective",
    "DEFAULT_LEARNER",
    "Environment",
    "EpsilonGreedy",
    "InputError",
    "LEARNERS",
    "LearnerResult",
    "LearnerSpec",
    "Ledger",
    "Objective",
    "Observation",
    "PSST",
    "PSSTAuto",
    "PSSTModel",
    "Policy",
    "PolicyError",
    "Problem",
    "ProblemError",
    "Pull",
    "RunError",
    "SimulatedOracle",
    "Softmax",
    "Stopping",
    "TopKScreening",
    "TripleSH",
    "UCB",
    "Uniform",
    "evaluate_policy",
    "get_environment",
    "get_learner",
    "load_environment",
    "theorem1",
    "train_policy",
    "train_test_split",
]
