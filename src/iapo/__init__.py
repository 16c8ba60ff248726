"""iapo: inference-aware prompt optimization for black-box LLMs.

Implements the IAPO framework and the PSST algorithm of Mahmud, Nakamura, Wray and Zilberstein,
"Inference-Aware Prompt Optimization for Aligning Black-Box Large Language Models".
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iapo.envs import Environment, get_environment
    from iapo.oracle import BudgetExceededError, Ledger, Observation, Pull, SimulatedOracle
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

# the public names, loaded on first use so that `iapo --help` does not import numpy
_HOME = {
    "Environment": "iapo.envs", "get_environment": "iapo.envs",
    "BudgetExceededError": "iapo.oracle", "Ledger": "iapo.oracle",
    "Observation": "iapo.oracle", "Pull": "iapo.oracle", "SimulatedOracle": "iapo.oracle",
    "Arm": "iapo.problem", "Context": "iapo.problem", "ContextGrid": "iapo.problem",
    "CostObjective": "iapo.problem", "Objective": "iapo.problem", "Problem": "iapo.problem",
    "ProblemError": "iapo.problem", "train_test_split": "iapo.split",
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
    "Arm",
    "BudgetExceededError",
    "Context",
    "ContextGrid",
    "CostObjective",
    "Environment",
    "Ledger",
    "Objective",
    "Observation",
    "Problem",
    "ProblemError",
    "Pull",
    "SimulatedOracle",
    "get_environment",
    "train_test_split",
]
