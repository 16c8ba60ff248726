"""The gateway's learning pulls (``iapo serve --learn-budget F``): extra completions drawn
for the arms a learner wants to learn about, on the query of a request already answered.

They are decided by :class:`iapo.continual.Continual` (its candidates, in turn, at their
scales, within F times the completions served), drawn after the response has been sent,
scored, and logged with reason "learn" (:meth:`iapo.serve.core.Responder.learn`). They are
never returned, count against no key's limits and add nothing to a response's latency.
``--learn-per-day K`` also caps them at K a day (UTC), shared out among the workers.

The learner continues from training's estimates: the groups of the run's store (the policy's
folder, ``store.sqlite``, read as ``iapo refine`` reads them, once per worker), so the
candidates are the prompts still close to the served arm by training's own samples (PSST's
rule, Eq. 6), each pulled at the largest N that some context serves or finds close. A policy
without a run's store (one written by hand) starts from the policy alone: every prompt is a
candidate and, no arm being seen yet, every N is close, so each prompt is pulled at N_max in
turn (PSST's first round over all prompts).

The first policy's learner is built when the gateway starts (a policy that cannot learn stops
it there). A reloaded policy's is built in a thread, off the event loop (tens of milliseconds
for a training of 20,000 completions, 25 to 65 ms on the unloaded 2-core development machine:
``benchmarks/experiments/learner_rebuild.py``; the thread shares the interpreter, so requests
may wait a little meanwhile). Until it is ready no learning pull is drawn, and the completions
served meanwhile still count towards the budget, so none of it is lost. A reloaded policy
that cannot learn (N drawn at random) draws none, /health says why from its first request,
and what it serves does not count (no backlog of pulls builds up for a later policy). The
gateway plans by the policy in force when a response ends, so a request begun before a
reload never brings back the old policy's learner. The gateway sees no labels as it serves,
so it does not decide from what it learns: that is ``iapo refine``'s work, offline, on the
labelled log.

With ``save`` (``iapo serve --retrain K``) no learning pull is drawn: the budget is saved, and
every K requests the background refine spends what was saved
(:func:`iapo.live.refine.saved_budget`) as one run of the learner on the logged queries.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from iapo.continual import Continual, ContinualSettings
from iapo.errors import InputError
from iapo.live.task import Task
from iapo.policy import Policy
from iapo.pulls import Observation, Pull

NEEDS = "learning pulls need"  # what a policy that draws N at random is refused for


@dataclass
class LearningPulls:
    """What one gateway worker draws for learning, and what it has drawn."""

    task: Task
    budget: float
    per_day: int | None = None
    served: int = 0  # completions returned in responses (this worker)
    # completions drawn for learning (this worker): learning pulls, charged when planned,
    # and with ``save`` what this worker's background retrainings paid
    drawn: int = 0
    failed: int = 0  # learning pulls that failed upstream (their completions stay charged)
    today: tuple[str, int] = ("", 0)  # (UTC day, completions drawn that day)
    run: Path | None = None  # the policy's folder: training's store.sqlite is read from it
    save: bool = False  # draw nothing: the budget is saved for the background retraining
    _training: list[Observation] | None = field(default=None, repr=False)
    _learner: Continual | None = field(default=None, repr=False)
    _policy: Policy | None = field(default=None, repr=False)
    # a reloaded policy's learner, being built off the event loop: (policy, its future)
    _building: tuple[Policy, Future[Continual]] | None = field(default=None, repr=False)
    error: str | None = None  # why the policy in force draws no learning pulls

    def __post_init__(self) -> None:
        ContinualSettings(learn_budget=self.budget)  # checks the fraction
        if self.per_day is not None and self.per_day < 0:
            raise InputError(f"learn per day {self.per_day} must be >= 0 (completions)")

    def plan(self, policy: Policy, completions: int) -> list[Pull]:
        """A response of ``completions`` completions was sent; ``policy`` is the policy in
        force: the learning pulls to draw now (charged at once, so concurrent requests never
        overspend). While a reloaded policy's learner is being built, what is served still
        counts towards the budget; while the policy in force cannot learn, it does not (no
        backlog of pulls builds up for a later policy). With ``save``, none: the budget is
        saved, and the background refine spends it (``iapo serve --retrain``)."""
        if self.save:
            self.served += completions
            return []
        learner = self._for(policy)
        if learner is None:  # a reloaded policy's learner is not ready (or cannot be)
            if self.error is None:
                self.served += completions
            return []
        self.served += completions
        learner.served_completions = self.served
        learner.learning_completions = self.drawn
        pulls = learner.learning_pulls()
        if self.per_day is not None:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            used = self.today[1] if self.today[0] == day else 0
            kept, cost = [], 0
            for p in pulls:
                if used + cost + p.cost > self.per_day:
                    break
                kept.append(p)
                cost += p.cost
            pulls = kept
            self.today = (day, used + cost)
        self.drawn += sum(p.cost for p in pulls)
        return pulls

    def _for(self, policy: Policy) -> Continual | None:
        """The learner of ``policy``: built here for the first policy (its errors raised),
        in a thread for a reloaded one (None until it is ready, or when it cannot learn)."""
        if self._learner is None:
            self._learner, self._policy = self._build(policy), policy
        if policy is self._policy:
            return self._learner
        if self._building is None or self._building[0] is not policy:
            future: Future[Continual] = Future()
            self._building, self.error = (policy, future), None  # the error was the old one's
            try:
                policy.check_fixed_n(NEEDS)  # at once: /health says so from the first request
                pool = ThreadPoolExecutor(1, thread_name_prefix="iapo-learner")
                self._building = (policy, pool.submit(self._build, policy))
                pool.shutdown(wait=False)  # the build goes on; the thread ends with it
            except Exception as e:  # cannot learn, or no thread to build in
                future.set_exception(e)
        future = self._building[1]
        if not future.done():
            return None
        try:
            self._learner, self._policy, self.error = future.result(), policy, None
        except Exception as e:  # learning never stops serving: /health says why it stopped
            self.error = f"the policy in force draws no learning pulls: {e}"
            return None
        self._building = None
        return self._learner

    def _build(self, policy: Policy) -> Continual:
        """A learner for ``policy``, continued from training's groups."""
        policy.check_fixed_n(NEEDS)
        problem = self.task.problem()
        training = self._training_groups(policy)
        # without training's samples every prompt is a candidate; with them, refine's rule
        settings = ContinualSettings(learn_budget=self.budget) if training else \
            ContinualSettings(learn_budget=self.budget, candidates=problem.n_prompts)
        return Continual(problem, settings, training, policy.choices)

    def _training_groups(self, policy: Policy) -> list[Observation]:
        """Training's groups in the run's store (read once; [] without one), each completion
        priced as the policy's training priced it."""
        if self._training is None:
            training: list[Observation] = []
            path = None if self.run is None else self.run / "store.sqlite"
            # training's groups are read with the task's data (the pools are its queries):
            # a gateway without the data serves, and learns, from the policy alone
            if path is not None and path.is_file() and self.task.data_path.is_file():
                from iapo.live.refine import training_costs, training_observations
                from iapo.live.store import CompletionStore, store_errors
                from iapo.live.task import load_records

                data = load_records(self.task.data_path)
                with store_errors(path), CompletionStore(path, create=False) as store:
                    training = training_observations(self.task, data, store,
                                                     training_costs(policy, self.task))
            self._training = training
        return self._training

    def health(self) -> dict[str, object]:
        """What /health shows: the budget, and this worker's counts."""
        return {"budget": self.budget, "per_day": self.per_day, "saved": self.save,
                "served_completions": self.served, "learning_completions": self.drawn,
                "failed_pulls": self.failed, "counted": "this process", "error": self.error}


__all__ = ["LearningPulls"]
