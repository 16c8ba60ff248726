"""Environments: the paper's real MV data, its synthetic generators, and tabular files."""

from __future__ import annotations

from iapo.envs.base import Environment, QueryTable, Sample, acr, best_arms
from iapo.envs.registry import (
    ENVIRONMENTS,
    UnknownEnvironmentError,
    environment_names,
    get_environment,
)
from iapo.envs.synthetic import synth_bernoulli, synth_categorical
from iapo.envs.tabular import (
    BoNEnvironment,
    DataError,
    MVEnvironment,
    environment_from_arrays,
    environment_name,
    load_environment,
)

__all__ = [
    "ENVIRONMENTS",
    "BoNEnvironment",
    "DataError",
    "Environment",
    "MVEnvironment",
    "QueryTable",
    "Sample",
    "UnknownEnvironmentError",
    "acr",
    "best_arms",
    "environment_from_arrays",
    "environment_name",
    "environment_names",
    "get_environment",
    "load_environment",
    "synth_bernoulli",
    "synth_categorical",
]
