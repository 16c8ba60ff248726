"""``iapo refine RUN --log LOG``: the deployed policy, re-decided from its own traffic.

It pays nothing: it reads the run's store (training's completions) and the gateway's log
(served groups and learning pulls, with the gold answers that arrived later), and replays
them, oldest first, through the continual-learning core (:class:`iapo.continual.Continual`),
the same rules ``iapo simulate`` measures: a context changes its arm only on fresh evidence
(a challenger's gain, judged on samples logged after it was named, has a lower bound above
``--min-gain``) or when the drift test flags its prompt (majority voting: the per-query
model's first choice, then at the next refits of recovery; Best-of-N: an arm clearly
better). With ``--moves pessimistic`` (majority voting), every refit moves a context to the
arm of highest per-query-model estimate less one standard error instead of judging
evidence.

What counts, and why it stays unbiased:

- a training pool (one prompt on one query) is one group, of its first N_max samples;
- a logged group is one group of its prompt, on its request's query; a learning pull shares
  the gold of the request it was drawn for (the same query);
- a group of G completions is one sample of every (p, n <= G) in every context (PSST's
  reuse), one sample per group because its blocks share a query;
- majority voting scores a group only with the query's gold: logged groups without one are
  left out (and counted), and a log with none is refused, saying so;
- a person's score of a served Best-of-N request (``POST /v1/feedback``, an objective and a
  score; the latest counts) is the value of the completion they were shown, for that
  objective, in place of its scorer's: a block whose scores choose that completion (in a
  context's weights, the first of the best, as the gateway chooses) is worth it, the scores
  still choose (:meth:`iapo.estimate.QTable.grouped_blocks`). Majority voting scores by the
  gold, and a learning pull was never shown: their scores are counted as not used;
- groups of every context count for every context while the contexts' traffic looks alike;
  each logged group carries its request's context, and two contexts whose requests differ
  (the core's traffic test) stop learning from each other's groups from then on
  (:mod:`iapo.continual`, docs/continual.md);
- the per-query model of a drift move (majority voting, :mod:`iapo.continual`) counts a
  query by its text: a training query keeps its index, and a served group, the learning
  pulls drawn on its query and the completions refine draws on it share one id;
- a completion costs what training priced it at (the policy's trace), 1 for a policy
  without training costs (one written by hand).

It writes the new policy over RUN/policy.json (the old one kept as policy.previous.json), so
that a gateway serving it reloads it, only when some context changed its arm; either way
RUN/refine.json says, per context, what was served, what is chosen, the estimates with 95%
intervals and the evidence. The report is written first, so that one that cannot be written
leaves the policy as it was; where the policy then cannot be written, the report is
rewritten to say so (``"changed": false`` and why) and :class:`PolicyNotReplaced` is raised.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.continual import (
    FRESH_GROUPS,
    Continual,
    ContinualSettings,
    check_moves,
    learning_allowance,
    retraining_floor,
    retraining_waits,
)
from iapo.errors import InputError, RunError
from iapo.files import OutputError, write_text_atomically
from iapo.live.optimize import check_store_task
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import (
    SERVED_RUN,
    CompletionStore,
    StoredCompletion,
    store_errors,
    writer_lock,
)
from iapo.live.task import Record, Task, load_records
from iapo.policy import Policy
from iapo.problem import Choice
from iapo.pulls import Observation

ROUNDS = 8  # refine --budget draws in this many rounds, each followed by a refit
# the log's record of its last retraining: the logged requests it came at (a log written
# before the log kept it: the run store's)
RETRAINED_AT = "retrained at logged request"
# the log's ledger of completions refines drew on its requests, reserved before they draw
LEARNING_DRAWN = "completions refines drew on logged requests"


class RefineError(InputError):
    """A refine that cannot decide anything; the message says what is missing."""


def _observations(runtime: TaskRuntime, store: CompletionStore, costs: np.ndarray,
                  groups: list[tuple[int, int, int, list[StoredCompletion]]],
                  categories: dict[int, dict[str, int]],
                  ids: npt.NDArray[np.int64] | None = None) -> list[Observation]:
    """One observation per group (prompt, record index, n, its completions), in order: the
    live oracle's own conversion (answer categories, scores, the cost per prompt), the
    answers numbered per query id (``ids`` per record; None: the record's index) in
    ``categories``, shared by every conversion of one refine."""
    oracle = LiveOracle(runtime, store, np.arange(max(len(runtime.records), 1)), 0,
                        np.random.default_rng(0), costs=costs, categories=categories,
                        query_ids=ids)
    return [oracle.observe(p, n, [(p, q, list(range(n)))], [rows], keep_costs=False)
            for p, q, n, rows in groups]


def training_costs(policy: Policy, task: Task) -> np.ndarray:
    """The cost of one completion of each prompt, as training priced it (the policy's
    trace); 1 for a policy without training costs (one written by hand)."""
    return np.asarray(policy.trace.get("costs") or [1.0] * len(task.prompts), dtype=float)


def training_observations(task: Task, data: list[Record], store: CompletionStore,
                          costs: np.ndarray, categories: dict[int, dict[str, int]] | None = None
                          ) -> list[Observation]:
    """Every (prompt, query) pool of the run's store as one group of its first samples (at
    most N_max, from sample 0 on, none missing); ``data``: the task's records
    (``load_records(task.data_path)``); answers numbered in ``categories`` (by the query's
    index in the task's data, its id, :func:`query_ids`)."""
    runtime = TaskRuntime(task, data)
    groups = []
    for q in range(len(data)):
        for p in range(len(task.prompts)):
            got = store.get(runtime.pool(p, q), list(range(task.n_max)))
            n = 0
            while n in got:
                n += 1
            if n:
                groups.append((p, q, n, [got[s] for s in range(n)]))
    return _observations(runtime, store, costs, groups, {} if categories is None else categories)


def log_observations(task: Task, data: list[Record], log: CompletionStore, costs: np.ndarray,
                     categories: dict[int, dict[str, int]] | None = None
                     ) -> tuple[list[tuple[str, int, Observation]], dict[str, int],
                                list[Record], npt.NDArray[np.int64]]:
    """The logged groups with a gold answer (or every group, where no objective needs one),
    oldest first, each with its reason and its origin (the index of its request's context;
    -1 for a context the task no longer has); the counts of what was read and left out; the
    groups' records (query and gold), which their observations index; and the records'
    query ids (:func:`query_ids`, against the task's records ``data``), by which answers are
    numbered in ``categories``."""
    context_index = {key: i for i, key in enumerate(task.problem().grid.keys)}
    rows = log.served()
    if not rows:
        raise RefineError(f"the log {log.path} holds no served request: give the file that "
                          "iapo serve --log-store wrote, once it has served some")
    queries = {i: q for i, q, _ in log.queries()}
    gold: dict[str, Any] = {}
    names = [o.name for o in task.objectives]
    rated: dict[str, dict[int, float]] = defaultdict(dict)  # request -> objective -> score
    for f in log.feedback():  # the latest counts
        if f.kind == "gold":
            gold[f.request] = f.value
        elif f.objective in names:
            rated[f.request][names.index(f.objective)] = float(f.value)
    by_query = {queries[r.id]: gold[r.id] for r in rows if r.id in gold and r.id in queries}
    runtime = TaskRuntime(task, [])
    needs_gold = bool(runtime.gold_needers())  # the rule training checks
    # a row names the arm that served it (prompt, model, decoding): its prompt is its index
    # where this task has that arm there, else that arm's index (the same prompts in another
    # order); a row of an arm this task lacks is left out and counted
    arms = runtime.arms
    prompt_of = {arm: p for p, arm in enumerate(arms)}
    prompts = [r.prompt if 0 <= r.prompt < len(arms) and arms[r.prompt] == r.arm
               else prompt_of.get(r.arm) for r in rows]
    if all(p is None for p in prompts):
        logged = {a["arm"]: a["prompt_name"] for a in log.arms()}
        raise RefineError(
            f"all {len(rows)} requests in the log {log.path} were served by arms that the "
            f"task {task.name!r} ({task.path}) does not have (the first, request {rows[0].id}, "
            f"by prompt {logged.get(rows[0].arm, rows[0].prompt)!r}): the log was served by "
            "another task, or by a gateway started with --task and --allow-task-change; give "
            "the run whose task served it")
    counts = {"logged": len(rows), "policy": sum(r.reason == "policy" for r in rows),
              "learn": sum(r.reason == "learn" for r in rows), "with_gold": 0, "left_out": 0,
              "rated": 0, "rated_unused": 0,
              "other_arms": sum(p is None for p in prompts)}
    records: list[Record] = []
    groups: list[tuple[int, int, int, list[StoredCompletion]]] = []
    reasons: list[str] = []
    origins: list[int] = []
    ratings: dict[int, tuple[int, dict[int, float]]] = {}  # group -> (shown sample, scores)
    for r, prompt in zip(rows, prompts, strict=True):
        if prompt is None:  # counted in other_arms
            continue
        query = queries.get(r.id)
        label = by_query.get(query) if query is not None else None
        if query is None or (needs_gold and label is None):
            counts["left_out"] += 1
            continue
        counts["with_gold"] += label is not None
        got = log.get(r.id, list(range(r.n)))
        if len(got) < r.n:
            counts["left_out"] += 1
            continue
        records.append(Record(r.id, query, label))
        if r.id in rated:  # a person's scores of the completion they were shown
            if task.aggregator == "bon" and r.reason == "policy" and 0 <= r.chosen < r.n:
                ratings[len(groups)] = (r.chosen, rated[r.id])
                counts["rated"] += 1
            else:
                counts["rated_unused"] += 1
        groups.append((prompt, len(records) - 1, r.n, [got[s] for s in range(r.n)]))
        reasons.append(r.reason)
        origins.append(context_index.get(r.context, -1))
    if needs_gold and rows and not groups:
        raise RefineError(
            f"the log {log.path} has {len(rows)} requests and no gold answer for any: "
            f"{task.aggregator} scoring needs the right answer to learn anything; attach them "
            "with iapo label-log LOG LABELS.jsonl or POST /v1/feedback")
    runtime = TaskRuntime(task, records)  # now with the records the groups index
    ids = query_ids(data, records)
    observations = _observations(runtime, log, costs, groups,
                                 {} if categories is None else categories, ids)
    for g, (shown, values) in ratings.items():
        given = observations[g].rated_or_nan
        given[0, shown, list(values)] = list(values.values())
        observations[g] = dataclasses.replace(observations[g], rated=given)
    return list(zip(reasons, origins, observations, strict=True)), counts, records, ids


def served_run(log_path: Path) -> Path:
    """The run whose policy the gateway served into the log at ``log_path`` (its folder, as
    ``iapo serve --log-store`` records it; the latest gateway's, if several used the log)."""
    if not log_path.is_file():
        raise RefineError(f"the log {str(log_path)!r} does not exist; give the store that "
                          "iapo serve --log-store wrote")
    with store_errors(log_path), CompletionStore(log_path, create=False) as log:
        run = log.get_meta(SERVED_RUN)
    if run is None:
        raise RefineError(f"the log {str(log_path)!r} does not name the run it was served "
                          "from (no gateway of this version wrote to it); name the run: "
                          "iapo monitor RUN --log LOG")
    if not Path(run).is_dir():
        raise RefineError(f"the log {str(log_path)!r} was served from the run {run!r}, which "
                          "is not there now (moved or deleted); name the run: iapo monitor "
                          "RUN --log LOG")
    return Path(run)


def query_ids(data: list[Record], records: list[Record]) -> npt.NDArray[np.int64]:
    """Per logged record, the query's id as the continual core's per-query model counts
    queries: a training query's own index where the text and the gold are one of the task's
    records ``data`` (the first, if the data repeats one), else one id per distinct (text,
    gold) after them, in order of first appearance (a served group and the learning pulls
    drawn on its query share one)."""
    known: dict[tuple[str, str], int] = {}
    for i, r in enumerate(data):
        known.setdefault((r.query, str(r.gold)), i)
    start = len(data)
    out = []
    for r in records:
        key = (r.query, str(r.gold))
        if key not in known:
            known[key] = start
            start += 1
        out.append(known[key])
    return np.array(out, dtype=np.int64)


def by_query(obs: Observation, ids: npt.NDArray[np.int64]) -> Observation:
    """A logged observation (its queries index the log's records) with its queries' ids
    (:func:`query_ids`)."""
    return dataclasses.replace(obs, queries=ids[obs.queries])


def refine(run: Path, log_path: Path, settings: ContinualSettings, write: bool = True,
           budget: int = 0, seed: int = 0, progress: bool = False,
           retrain: bool = False, saved: float | None = None) -> dict[str, Any]:
    """Re-decide ``run``'s policy from the log at ``log_path`` (module docstring); returns
    the report written to RUN/refine.json (``write``: write it and the policy). ``budget``
    more completions are drawn on the logged queries (:func:`spend`, ``seed``), as one run
    of the default learner if ``retrain``. ``saved`` (the gateway's ``--retrain``, with
    ``settings.retrain`` = K): the learning budget F that the gateway saves; once K logged
    requests have passed since the log's last retraining (a manual ``--retrain`` too) and
    :func:`saved_budget` reaches :func:`iapo.continual.retraining_floor`, all of it is
    spent as a retraining, held in the log's ledger first (:func:`reserve_saved`) so that
    no two refines spend the same completions; none while the log's contexts ask
    differently (a traffic split). The report says why none is spent now
    (``retraining_waits``). Any drawing refine holds its budget in the ledger before it
    draws and keeps what it paid, also where it stops (:func:`reserve`, :func:`settle`)."""
    if budget < 0:
        raise RefineError(f"budget {budget} must be >= 0 (completions)")
    if retrain and not budget:
        raise RefineError("--retrain spends --budget as one run of the learner on the logged "
                          "queries: give --budget (completions)")
    if saved is not None and (budget or retrain):
        raise RefineError("a refine spends either --budget or the gateway's saved budget, "
                          "not both")
    if saved is not None and not settings.retrain:
        raise RefineError("spending the gateway's saved budget needs settings.retrain = K "
                          "(iapo serve --retrain K): when it is due")
    if not write:
        if saved is not None:
            raise RefineError("monitor only reads the log: the saved budget is spent by a "
                              "refine that writes (iapo serve --retrain)")
        if budget:
            raise RefineError("--budget draws completions, and monitor only reads the log: "
                              "use iapo refine --budget")
        return _refine(run, log_path, settings, False, 0, seed, progress)
    with writer_lock(run, "refine"):  # one refine of a run at a time
        return _refine(run, log_path, settings, True, budget, seed, progress, retrain, saved)


def _refine(run: Path, log_path: Path, settings: ContinualSettings, write: bool,
            budget: int, seed: int, progress: bool, retrain: bool = False,
            saved: float | None = None) -> dict[str, Any]:
    from iapo.serve.core import load_served

    policy_path = run / "policy.json"
    policy, task = load_served(policy_path)
    policy.check_fixed_n("refine needs", RefineError)
    check_moves(task.problem(), settings)  # before anything is read
    if retrain and budget < (floor := retraining_floor(task.problem())):
        raise RefineError(f"--budget {budget} cannot pay one group of N_max = {task.n_max} "
                          f"completions of each of the {len(task.prompts)} prompts, which "
                          f"a retraining needs: give --budget {floor} or more")
    if not log_path.is_file():
        raise RefineError(f"the log {str(log_path)!r} does not exist; give the store that "
                          "iapo serve --log-store wrote")
    costs = training_costs(policy, task)
    # majority voting's answer numbers per query id: alike in training's groups, the log's
    # and what --budget draws, as the drift move's per-query model counts them
    categories: dict[int, dict[str, int]] = {}
    data = load_records(task.data_path)  # the task's records, read once
    with store_errors(run / "store.sqlite"), CompletionStore(run / "store.sqlite",
                                                             create=False) as store:
        training = training_observations(task, data, store, costs, categories)
    with store_errors(log_path), CompletionStore(log_path, create=False) as log:
        logged, counts, records, ids = log_observations(task, data, log, costs, categories)
    problem = task.problem()
    # the false-alarm levels hold over a horizon that covers the whole log, the last refit
    # and the refits between rounds of a budget
    horizon = counts["policy"] + (ROUNDS + 1) * settings.refine_every
    settings = dataclasses.replace(settings, horizon=max(settings.horizon, horizon))
    learner = Continual(problem, settings, training, policy.choices)
    for reason, origin, obs in logged:
        learner.observe([by_query(obs, ids)], [origin])
        if reason == "policy":
            learner.record_served(1, obs.n)
        if learner.due():
            learner.refit()
    learner.refit()  # decide what the end of the log can decide
    waits = None  # with ``saved``: why no retraining is spent now (None: one is)
    at = 0  # the logged requests a retraining comes at
    if saved is not None:
        asked = {r.query for r in data}
        if not learner.splits and not any(reason == "policy" and records[i].query not in asked
                                          for i, (reason, _, _) in enumerate(logged)):
            waits = ("no labelled logged request asks a question that is not a training "
                     "question: nothing to draw on yet")
        else:
            budget, waits, at = reserve_saved(run, log_path, saved, settings.retrain,
                                              retraining_floor(problem), bool(learner.splits))
            retrain = budget > 0
    elif budget:
        at = reserve(run, log_path, budget)
    spent = None
    if budget:
        # writable now (the replay above found it): what is drawn is stored as training's is
        with store_errors(run / "store.sqlite"), CompletionStore(run / "store.sqlite") as store:
            served = [i for i, (reason, _, _) in enumerate(logged) if reason == "policy"]
            requests = {r.id for r in records}
            before = _drawn_on(store, requests)
            try:
                spent = spend(task, data, store, records, served, [o for _, o, _ in logged],
                              learner, budget, costs, seed, progress, ids, categories,
                              retrain)
            except BaseException:  # the ledger keeps what it paid (committed as drawn)
                settle(log_path, budget, _drawn_on(store, requests) - before)
                raise
        settle(log_path, budget, spent["paid"], at if retrain else None)
    report = _report(task, policy, learner, counts, len(training))
    report["spent"] = spent
    if saved is not None:
        report["retraining_waits"] = waits
    if write:  # the report first: one that cannot be written leaves the policy as it was
        _write_report(run, report)
    if write and report["changed"]:
        est = learner.estimates()
        new = dataclasses.replace(
            policy, choices=[Choice(p, n, float(est.mean[i, p, n - 1]),
                                    int(est.counts[i, p, n - 1]))
                             for i, (p, n) in enumerate(learner.served_arms())],
            learner=f"{policy.learner}+refine",
            trace={**policy.trace, "refined": {"log": str(log_path), "switches": len(
                learner.switches)}})
        try:
            if policy_path.is_file():
                write_text_atomically(run / "policy.previous.json", policy_path.read_text(),
                                      "the previous policy")
            new.save(policy_path)
        except (OSError, OutputError) as e:  # the report said "changed": it says what is
            _not_replaced(run, report, e)
    return report


class PolicyNotReplaced(RunError):
    """A refine chose other arms but could not write the policy: RUN/policy.json is the one
    served before. ``report`` is the refine's, which says so (``"changed": false``)."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def _write_report(run: Path, report: dict[str, Any]) -> None:
    write_text_atomically(run / "refine.json", json.dumps(report, indent=2) + "\n",
                          "the refine report")


def _not_replaced(run: Path, report: dict[str, Any], error: Exception) -> None:
    """Rewrite RUN/refine.json, written as if the policy were replaced, to say it was not and
    why; raise :class:`PolicyNotReplaced`."""
    policy = run / "policy.json"
    report.update(changed=False, why_not=f"the refined policy could not be written ({error}); "
                                         f"{policy} is the policy served before")
    try:
        _write_report(run, report)
    except OutputError as again:
        raise PolicyNotReplaced(
            f"{error}; {policy} was not replaced, and {run / 'refine.json'} still says it "
            f"was: it could not be rewritten ({again}). Rerun iapo refine once the folder "
            "can be written", report) from error
    raise PolicyNotReplaced(f"{error}; {policy} was not replaced (refine.json says so): rerun "
                            "iapo refine once it can be written", report) from error


def _state(log: CompletionStore, run: Path
           ) -> tuple[int, int, int, tuple[int, int] | None]:
    """What the log shows, read before any transaction (rows are only ever added):
    (requests its policy served, their completions, the learning pulls' completions, and
    where its ledger lacks a record (a log written before it kept them) the run store's
    (completions it holds on logged requests, its record of the last retraining), else
    None)."""
    rows = log.served()
    requests = sum(r.reason == "policy" for r in rows)
    served = sum(r.n for r in rows if r.reason == "policy")
    learned = sum(r.n for r in rows if r.reason != "policy")
    fallback = None
    if log.get_meta(LEARNING_DRAWN) is None or log.get_meta(RETRAINED_AT) is None:
        with store_errors(run / "store.sqlite"), CompletionStore(run / "store.sqlite",
                                                                 create=False) as store:
            fallback = (_drawn_on(store, {r.id for r in rows}),
                        int(store.get_meta(RETRAINED_AT, 0)))
    return requests, served, learned, fallback


def _drawn_on(store: CompletionStore, requests: set[str]) -> int:
    """The completions the run's store holds on these logged requests (refine's draws are
    stored under the id of the request they were drawn on)."""
    return sum(k for q, k in store.counts_by_query().items() if q in requests)


def _ledger(meta: dict[str, Any], fallback: tuple[int, int] | None) -> tuple[int, int]:
    """(completions refines drew on logged requests, the logged requests the last
    retraining came at): the log's ledger (``meta``), each record it lacks from
    ``fallback`` (:func:`_state`)."""
    old = fallback or (0, 0)
    drawn, last = meta[LEARNING_DRAWN], meta[RETRAINED_AT]
    return int(old[0] if drawn is None else drawn), int(old[1] if last is None else last)


def saved_budget(run: Path, log_path: Path, fraction: float) -> int:
    """What a gateway that saves its learning budget (``iapo serve --retrain``) may spend
    now: floor(``fraction`` x the completions its log served, whichever run served them),
    less the learning completions logged and what refines drew on logged requests (the
    log's ledger, :func:`reserve`: what a refine may draw is held before it draws; a
    manual ``iapo refine --budget`` among them); never below 0."""
    with store_errors(log_path), CompletionStore(log_path, create=False) as log:
        _, served, learned, fallback = _state(log, run)
        drawn, _ = _ledger({k: log.get_meta(k) for k in (LEARNING_DRAWN, RETRAINED_AT)},
                           fallback)
    return max(0, learning_allowance(fraction, served, learned + drawn))


def reserve_saved(run: Path, log_path: Path, fraction: float, every: int, floor: int,
                  split: bool = False) -> tuple[int, str | None, int]:
    """The gateway's retraining, if one is due: (the completions held for it, None, the
    logged requests it comes at), or (0, why it waits, those requests). Due by the core's
    rule (:func:`iapo.continual.retraining_waits`: ``every`` logged requests since the
    log's last retraining, :func:`saved_budget` at ``floor``, no ``split`` of the contexts'
    traffics); then all of what was saved is held in the log's ledger, in one
    transaction of the log (which reads and writes its ledger alone), so that no other
    refine, of this run or of another gateway's on the same log, spends the same
    completions. The retraining is recorded once it has drawn (:func:`settle`). A split
    waits for good, with the log left as it is."""
    if split:
        return 0, f"{retraining_waits(every, 0, 0, floor, True)}: serve without --retrain, " \
                  "which keeps the contexts' estimates apart", 0
    with store_errors(log_path), CompletionStore(log_path) as log:
        requests, served, learned, fallback = _state(log, run)
        out: list[tuple[int, str | None, int]] = []

        def change(meta: dict[str, Any]) -> dict[str, Any]:
            drawn, last = _ledger(meta, fallback)
            saving = max(0, learning_allowance(fraction, served, learned + drawn))
            if waits := retraining_waits(every, requests - last, saving, floor, split):
                out.append((0, waits, requests))
                return {}
            out.append((saving, None, requests))
            return {LEARNING_DRAWN: drawn + saving}

        log.update_meta((LEARNING_DRAWN, RETRAINED_AT), change)
    return out[0]


def reserve(run: Path, log_path: Path, budget: int) -> int:
    """``iapo refine --budget``: ``budget`` completions held in the log's ledger before
    they are drawn (they count against what a gateway saved). Returns the logged requests
    the log holds (where a retraining among them comes)."""
    with store_errors(log_path), CompletionStore(log_path) as log:
        requests, _, _, fallback = _state(log, run)
        log.update_meta((LEARNING_DRAWN, RETRAINED_AT), lambda meta: {
            LEARNING_DRAWN: _ledger(meta, fallback)[0] + budget})
    return requests


def settle(log_path: Path, held: int, paid: int, retrained_at: int | None = None) -> None:
    """A refine that held ``held`` completions in the log's ledger paid ``paid`` of them
    (the rest were replayed from the run's store, or never drawn): the ledger keeps what
    was paid, and the log's last retraining is ``retrained_at`` (None: no retraining)."""
    with store_errors(log_path), CompletionStore(log_path) as log:
        def change(meta: dict[str, Any]) -> dict[str, Any]:
            new: dict[str, Any] = {LEARNING_DRAWN: int(meta[LEARNING_DRAWN] or 0) - held + paid}
            if retrained_at is not None:
                new[RETRAINED_AT] = retrained_at
            return new

        log.update_meta((LEARNING_DRAWN,), change)


def spend(task: Task, data: list[Record], store: CompletionStore, records: list[Record],
          served: list[int], origins: list[int], learner: Continual, budget: int,
          costs: np.ndarray, seed: int, progress: bool, ids: npt.NDArray[np.int64],
          categories: dict[int, dict[str, int]] | None = None,
          retrain: bool = False) -> dict[str, Any]:
    """Draw at most ``budget`` more completions, PSST-style, on the logged requests. With
    ``retrain``, as one run of the default learner (psst-auto) on them, seeded by ``seed``
    (not given the log's groups, as the simulation's retrainings are: below), after which
    every context moves to its choice (:meth:`Continual.retrained`: no
    evidence asked; docs/continual.md). Otherwise in at most
    ROUNDS rounds (the refits the horizon counts; what the pulls' sizes leave of the budget
    after them is not drawn), each the learner's pulls (its challengers and candidates, in
    turn), each on a served request drawn at random (``served``: their record indices, so
    queries come as often as the traffic asked them), then a refit. A group's origin is its
    request's context (``origins``, per record). Completions go to the run's store (as
    training's do), so a rerun with the same seed replays them and pays nothing; a query
    asked twice shares one pool, and pays for no sample twice. A request whose query is a
    training query is left out: its pools already hold training's samples, which the replay
    counted. The core sees each group's query by its id (``ids``, :func:`query_ids`), and
    its answers are numbered per id in ``categories``, as the replay's were.
    Returns what was drawn, paid and replayed."""
    from tqdm.auto import tqdm

    if retrain and learner.splits:
        raise RefineError("--retrain learns from every context's queries alike, and the log "
                          "shows contexts that ask differently (refine without --retrain "
                          "reports the split): refine without --retrain, which keeps their "
                          "estimates apart")
    training = {r.query for r in data}
    eligible = [i for i in served if records[i].query not in training]
    if not eligible:
        raise RefineError(f"--budget {budget}: the log has no served request to draw on whose "
                          "query is not a training query and has what its scoring needs (a "
                          "gold answer: iapo label-log or POST /v1/feedback)")
    runtime = TaskRuntime(task, records)
    check_store_task(task, store.path.parent, store, False)
    for scorer in runtime.judges():  # judgements are cached in the run's store
        scorer.bind(store.path)
    run_id = store.start_run("refine", task.name, task.digest(), task.seed)
    with tqdm(total=budget, desc="refine", unit="compl", disable=not progress) as bar:
        oracle = LiveOracle(runtime, store, np.array(eligible), budget,
                            np.random.default_rng(seed),
                            lambda served, paid, tokens, batch: bar.update(served),
                            costs=costs, categories=categories, query_ids=ids)
        if retrain:
            # not given the log's groups (Continual.retrain's reuse): a gateway with --store
            # serves the run's stored samples, which this oracle would replay again, and a
            # request with a chat history was drawn on more than its query
            learner.retrain(oracle, budget, np.random.default_rng([seed, 1]),
                            taken=lambda o: by_query(o, ids), reuse=False)
        size = max(task.n_max, math.ceil(budget / ROUNDS))
        for _ in range(0 if retrain else ROUNDS):  # no more refits than the horizon counts
            if (left := budget - oracle.ledger.spent) <= 0:
                break
            pulls = learner.pulls(min(left, size))
            if not pulls:
                break
            drawn = oracle.pull(pulls)
            learner.observe([by_query(o, ids) for o in drawn],
                            [origins[int(o.queries[0])] for o in drawn])
            learner.refit()
        store.update_run(run_id, oracle.paid, oracle.replayed, oracle.tokens)
    return {"budget": budget, "retrain": retrain, "drawn": oracle.ledger.spent,
            "paid": oracle.paid,
            "replayed": oracle.replayed, "requests": len(eligible),
            "queries": len({records[i].query for i in eligible}), "seed": seed}


def _report(task: Task, policy: Policy, learner: Continual, counts: dict[str, int],
            training_groups: int) -> dict[str, Any]:
    """Per context: the arm served and the arm chosen, their estimates with 95% intervals,
    the switch and its evidence, and whose traffic it learns from; the flags and traffic
    splits; what was read."""
    problem = task.problem()
    est = learner.estimates()
    mean, se = est.mean, est.stderr
    switches: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in learner.switches:
        switches[s.context].append(dataclasses.asdict(s))

    def arm(ci: int, p: int, n: int) -> dict[str, Any]:
        m, e = float(mean[ci, p, n - 1]), float(se[ci, p, n - 1])
        return {"prompt": task.prompts[p].name, "n": n,
                "groups": int(est.counts[ci, p, n - 1]),
                "q": None if math.isnan(m) else m,
                "q_ci95": None if math.isnan(e) else [m - 1.96 * e, m + 1.96 * e]}

    contexts = []
    for ci, key in enumerate(problem.grid.keys):
        old = policy.choices[ci]
        p, n = learner.served_arms()[ci]
        contexts.append({"context": key, "served": arm(ci, old.prompt, int(old.n or 1)),
                         "chosen": arm(ci, p, n), "switches": switches.get(ci, []),
                         # the contexts whose traffic it learns from ("all": every group)
                         "traffic": "all" if learner.shared[ci] else [
                             problem.grid.keys[o] for o in np.flatnonzero(learner.pools[ci])]})
    changed = any((c.prompt, c.n) != arm_ for c, arm_ in
                  zip(policy.choices, learner.served_arms(), strict=True))
    return {"task": task.name, "changed": changed, "contexts": contexts,
            "flags": [dataclasses.asdict(f) for f in learner.flags],
            "splits": [dataclasses.asdict(s) for s in learner.splits],
            "log": counts, "training_groups": training_groups,
            "settings": dataclasses.asdict(learner.settings),
            "why_not": None if changed else (
                "no other arm's pessimistic estimate (the per-query model's less one "
                "standard error) is above the served arm's in any context; the policy stays"
                if learner.settings.moves == "pessimistic" else
                "no context had evidence that another arm is better: a challenger needs "
                f"{FRESH_GROUPS} samples logged after it was named, and a gain whose lower bound "
                f"exceeds {learner.settings.min_gain}; the policy stays")}


__all__ = ["PolicyNotReplaced", "RefineError", "log_observations", "refine",
           "training_observations"]
