"""Learners: (problem, oracle, budget T, rng) -> a choice per context and a trace.

Every learner sees the world only through the oracle's batched pulls, so the same code runs
on a simulated environment and on a live LLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from iapo.learners.base import Choice, Learner, LearnerResult, Trace
from iapo.learners.egreedy import learn_egreedy
from iapo.learners.psst import learn_psst, learn_psst_model, learn_uniform, psst
from iapo.learners.screening import top_k_screening
from iapo.learners.softmax import learn_softmax
from iapo.learners.triple import learn_triple_n1, learn_triple_nrand
from iapo.learners.ucb import learn_ucb


@dataclass(frozen=True)
class LearnerSpec:
    """A learner: its name, one line about it, how to run it, and the estimators it honours
    (``run(problem, oracle, budget, rng, estimator=...)``)."""

    name: str
    summary: str
    run: Callable[..., LearnerResult]
    estimators: tuple[str, ...] = ("blocks", "subsets")


LEARNERS: dict[str, LearnerSpec] = {
    s.name: s
    for s in [
        LearnerSpec("psst", "PSST: sequential trimming over all (prompt, N) arms, stockpiling",
                    learn_psst),
        LearnerSpec("psst-k1", "Top-K screening (K=1, rho=0.2) at N=1, then PSST",
                    partial(top_k_screening, k=1)),
        LearnerSpec("psst-k4", "Top-K screening (K=4, rho=0.2) at N=1, then PSST",
                    partial(top_k_screening, k=4)),
        LearnerSpec("psst-k8", "Top-K screening (K=8, rho=0.2) at N=1, then PSST",
                    partial(top_k_screening, k=8)),
        LearnerSpec("uniform", "every prompt at N_max equally often in one batch, best arm per "
                    "context", learn_uniform),
        LearnerSpec("egreedy", "epsilon-greedy over arms (epsilon=0.15), shared estimates",
                    learn_egreedy),
        LearnerSpec("softmax", "softmax over estimated Q (temperature 0.05), shared estimates",
                    learn_softmax),
        LearnerSpec("ucb", "UCB (exploration constant 0.1), shared estimates", learn_ucb),
        LearnerSpec("triple-n1", "TRIPLE-SH: halving over prompts at N=1, deployed at N=1",
                    learn_triple_n1),
        LearnerSpec("triple-nrand", "TRIPLE-SH prompts, deployed with N uniform in 1..N_max",
                    learn_triple_nrand),
        # the model is the estimator: blocks or subsets would be silently ignored
        LearnerSpec("psst-model", "beyond the paper: PSST pulling groups of 2 on many queries, "
                    "Q for every N from a per-query model", learn_psst_model, ("blocks",)),
        LearnerSpec("psst-model4", "beyond the paper: psst-model with groups of 4",
                    partial(learn_psst_model, group=4), ("blocks",)),
    ]
}


# the paper's learners (its Figures 4 and 5); the others go beyond it
PAPER_LEARNERS: tuple[str, ...] = ("psst", "psst-k1", "psst-k4", "psst-k8", "uniform", "egreedy",
                                   "softmax", "ucb", "triple-n1", "triple-nrand")


def get_learner(name: str, estimator: str | None = None) -> LearnerSpec:
    """The learner called ``name``; ``name:estimator`` (e.g. ``psst:subsets``) or
    ``estimator`` picks how its Q table turns groups into estimates (default ``blocks``)."""
    from iapo.estimate import ESTIMATORS

    base, _, suffix = name.partition(":")
    if base not in LEARNERS:
        raise ValueError(f"unknown learner '{base}'; known: {', '.join(LEARNERS)}")
    est = suffix or estimator or "blocks"
    if est not in ESTIMATORS:
        raise ValueError(f"unknown estimator '{est}' in '{name}'; known: {', '.join(ESTIMATORS)}")
    spec = LEARNERS[base]
    if est not in spec.estimators:
        raise ValueError(f"'{base}' estimates Q with its own model and takes no '{est}' "
                         f"estimator; use '{base}'")
    if est == "blocks":
        return spec
    return LearnerSpec(f"{base}:{est}", f"{spec.summary} [{est} estimator]",
                       partial(spec.run, estimator=est))


__all__ = [
    "LEARNERS",
    "PAPER_LEARNERS",
    "Choice",
    "Learner",
    "LearnerResult",
    "LearnerSpec",
    "Trace",
    "get_learner",
    "psst",
]
