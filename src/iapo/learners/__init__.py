"""Learners: (problem, oracle, budget T, rng) -> a choice per context and a trace.

Every learner sees the world only through the oracle's batched pulls, so the same code runs
on a simulated environment and on a live LLM. A learner is a frozen dataclass whose
hyperparameters are keyword-only and validated when it is made (bad values raise
:class:`iapo.errors.InputError`), and which is called as ``learner(problem, oracle, budget,
rng)``::

    from iapo.learners import EpsilonGreedy, get_learner
    learner = EpsilonGreedy(epsilon=0.1)          # or get_learner("egreedy").learner
    result = learner(problem, oracle, 5_000, rng)

:data:`LEARNERS` names the paper's settings and the ones beyond it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from iapo.errors import InputError
from iapo.estimate import ESTIMATORS
from iapo.learners.auto import PSSTAuto
from iapo.learners.base import Choice, Learner, LearnerResult, Round, Trace
from iapo.learners.egreedy import EpsilonGreedy
from iapo.learners.psst import PSST, PSSTModel, Uniform, psst
from iapo.learners.screening import TopKScreening
from iapo.learners.softmax import Softmax
from iapo.learners.triple import TripleSH
from iapo.learners.ucb import UCB
from iapo.settings import DEFAULT_LEARNER

# every learner class; each is a frozen dataclass implementing :class:`Learner`
AnyLearner = (PSST | Uniform | PSSTModel | TopKScreening | EpsilonGreedy | Softmax | UCB
              | TripleSH | PSSTAuto)


@dataclass(frozen=True)
class LearnerSpec:
    """A named learner: its name, one line about it, and the learner itself."""

    name: str
    summary: str
    learner: AnyLearner

    @property
    def parameters(self) -> dict[str, Any]:
        """Its hyperparameters and their values."""
        return {f.name: getattr(self.learner, f.name) for f in dataclasses.fields(self.learner)}

    @property
    def estimators(self) -> tuple[str, ...]:
        """The estimators it can take: both, or none but its own (a model-based learner)."""
        return ESTIMATORS if "estimator" in self.parameters else ("blocks",)

    def configure(self, **params: Any) -> LearnerSpec:
        """The same learner with some hyperparameters changed (validated when made)."""
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise InputError(f"'{self.name}' has no parameter {', '.join(unknown)}; its "
                             f"parameters: {', '.join(self.parameters) or 'none'}")
        return LearnerSpec(self.name, self.summary, dataclasses.replace(self.learner, **params))


LEARNERS: dict[str, LearnerSpec] = {
    s.name: s
    for s in [
        LearnerSpec("psst", "PSST: sequential trimming over all (prompt, N) arms, stockpiling",
                    PSST()),
        LearnerSpec("psst-k1", "Top-K screening (K=1, rho=0.2) at N=1, then PSST",
                    TopKScreening(k=1)),
        LearnerSpec("psst-k4", "Top-K screening (K=4, rho=0.2) at N=1, then PSST",
                    TopKScreening(k=4)),
        LearnerSpec("psst-k8", "Top-K screening (K=8, rho=0.2) at N=1, then PSST",
                    TopKScreening(k=8)),
        LearnerSpec("uniform", "every prompt at N_max equally often in one batch, best arm per "
                    "context", Uniform()),
        LearnerSpec("egreedy", "epsilon-greedy over arms (epsilon=0.15), shared estimates",
                    EpsilonGreedy()),
        LearnerSpec("softmax", "softmax over estimated Q (temperature 0.05), shared estimates",
                    Softmax()),
        LearnerSpec("ucb", "UCB (exploration constant 0.1), shared estimates", UCB()),
        LearnerSpec("triple-n1", "TRIPLE-SH: halving over prompts at N=1, deployed at N=1",
                    TripleSH(deploy="n1")),
        LearnerSpec("triple-nrand", "TRIPLE-SH prompts, deployed with N uniform in 1..N_max",
                    TripleSH(deploy="nrand")),
        # the model is the estimator: it takes no blocks or subsets
        LearnerSpec("psst-model", "beyond the paper: PSST pulling groups of 2 on many queries, "
                    "Q for every N from a per-query model", PSSTModel(group=2)),
        LearnerSpec("psst-model4", "beyond the paper: psst-model with groups of 4",
                    PSSTModel(group=4)),
        LearnerSpec("psst-auto", "the default: prompts screened with a per-query model "
                    "(and blocks for BoN), then PSST over the survivors' arms", PSSTAuto()),
    ]
}

# the learner of `iapo train` and of task files that name none


# the paper's learners (its Figures 4 and 5); the others go beyond it
PAPER_LEARNERS: tuple[str, ...] = ("psst", "psst-k1", "psst-k4", "psst-k8", "uniform", "egreedy",
                                   "softmax", "ucb", "triple-n1", "triple-nrand")


def get_learner(name: str, estimator: str | None = None) -> LearnerSpec:
    """The learner called ``name``; ``name:estimator`` (e.g. ``psst:subsets``) or
    ``estimator`` picks how its Q table turns groups into estimates (default ``blocks``)."""
    base, _, suffix = name.partition(":")
    if base not in LEARNERS:
        raise InputError(f"unknown learner '{base}'; known: {', '.join(LEARNERS)}")
    est = suffix or estimator or "blocks"
    if est not in ESTIMATORS:
        raise InputError(f"unknown estimator '{est}' in '{name}'; known: {', '.join(ESTIMATORS)}")
    spec = LEARNERS[base]
    if est not in spec.estimators:
        raise InputError(f"'{base}' estimates Q with its own model and takes no '{est}' "
                         f"estimator; use '{base}'")
    if est == "blocks":
        return spec
    return LearnerSpec(f"{base}:{est}", f"{spec.summary} [{est} estimator]",
                       spec.configure(estimator=est).learner)


__all__ = [
    "DEFAULT_LEARNER",
    "LEARNERS",
    "PAPER_LEARNERS",
    "PSST",
    "UCB",
    "AnyLearner",
    "Choice",
    "EpsilonGreedy",
    "Learner",
    "LearnerResult",
    "LearnerSpec",
    "PSSTAuto",
    "PSSTModel",
    "Round",
    "Softmax",
    "TopKScreening",
    "Trace",
    "TripleSH",
    "Uniform",
    "get_learner",
    "psst",
]
