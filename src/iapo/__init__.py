"""iapo: inference-aware prompt optimization for black-box LLMs.

Implements the IAPO framework and the PSST algorithm of Mahmud, Nakamura, Wray and Zilberstein,
"Inference-Aware Prompt Optimization for Aligning Black-Box Large Language Models".
"""

from __future__ import annotations

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
