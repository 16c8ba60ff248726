"""`iapo optimize`, `iapo answer` and `iapo export-env`: the live path end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from iapo.errors import InputError, RunError
from iapo.estimate import QTable
from iapo.files import check_writable, write_atomically, write_text_atomically
from iapo.learners import get_learner
from iapo.live import report as live_report
from iapo.live.batch import ApiBatches, Batcher, FileBatches
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import CompletionStore, store_errors, writer_lock
from iapo.live.task import Record, Task, TaskError, load_records, task_from_dict
from iapo.live.timing import latency_pilot
from iapo.model import ModelQTable
from iapo.policy import Policy
from iapo.problem import Problem, Stopping
from iapo.report import Recorder, arm_table, assess, estimator_for
from iapo.serve.core import serving_section
from iapo.split import train_test_split
from iapo.utility import latency_term

Z95 = 1.959963984540054


def _ci(mean: float, var: float, n: int) -> list[float | None]:
    if n < 2 or not math.isfinite(var):
        return [None, None]
    half = Z95 * math.sqrt(var / n)
    return [mean - half, mean + half]


def check_store_task(task: Task, out: Path, store: CompletionStore, other_task: bool) -> None:
    """Check that the store of ``out`` belongs to ``task`` (or that the caller allows another
    task)."""
    meta = store.get_meta("task")
    if meta is not None and meta.get("name") != task.name and not other_task:
        raise TaskError(f"{out} holds the runs of task '{meta.get('name')}', not "
                        f"'{task.name}'; give another --out, or pass --other-task to share its "
                        "completions (pools are keyed by content, so nothing is mixed up)")


def _open_run(task: Task, out: Path, store: CompletionStore, command: str,
              other_task: bool) -> int:
    """Check that ``out`` belongs to ``task``, then record the start of a run; returns its
    id."""
    check_store_task(task, out, store, other_task)
    return store.start_run(command, task.name, task.digest(), task.seed)


_R = TypeVar("_R")


@dataclass(frozen=True)
class Preflight:
    """What ``optimize`` has once its checks pass: the records, the task's live parts, the
    seeds of the split, the oracle and the learner, and the split (query indices)."""

    records: list[Record]
    runtime: TaskRuntime
    seeds: list[np.random.SeedSequence]
    train: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


def preflight(task: Task, out: Path | None,
              problems: list[str] | None = None) -> Preflight | None:
    """Every check ``optimize`` makes before it writes anything or asks the model: the data
    file, the gold answers the scorers need, the scorers themselves, the ``out`` folder (if
    given), the model's API key and the split.

    Without ``problems`` the first problem raises, as ``optimize`` needs. With a list (``iapo
    validate``, ``--dry-run``), the message of every problem is appended to it instead, in
    the order ``optimize`` meets them, and a check that needs what a failed one gives is
    skipped; None is returned if any failed.
    """
    failed = False

    def check(step: Callable[[], _R]) -> _R | None:
        nonlocal failed
        if problems is None:
            return step()
        try:
            return step()
        except (InputError, RunError) as e:
            problems.append(str(e))
            failed = True
            return None

    records = check(lambda: load_records(task.data_path))
    runtime = check(lambda: TaskRuntime(task, records or []))
    if runtime is not None:
        if records is not None:
            check(runtime.check_golds)
        check(lambda: runtime.scorers)  # a broken scorer fails before any call
    if out is not None:
        check(lambda: check_writable(out, "--out", folder=True))
    check(task.model.api_key)
    seeds = np.random.SeedSequence(task.seed).spawn(3)
    split = None
    if records is not None:
        split = check(lambda: train_test_split(len(records), seeds[0], task.test_fraction))
    if failed or records is None or runtime is None or split is None:
        return None
    return Preflight(records, runtime, seeds, *split)


def _run_history(store: CompletionStore, current: int) -> list[dict[str, Any]]:
    rows = store.runs()
    for r in rows:
        if r["status"] == "running" and r["id"] != current:
            r["status"] = "interrupted"
    return rows


def batcher_for(task: Task, out: Path, batch_files: bool, say: Callable[[str], None],
                other_task: bool = False) -> Batcher | None:
    """How ``optimize`` asks for what the store lacks: as files for a batch runner
    (``batch_files``), through the server's batch API (``model.batch``), or None (at once)."""
    m = task.model
    if batch_files:
        again = " --other-task" if other_task else ""
        return FileBatches(out / "batches", m, f"iapo optimize {task.path} --out {out} "
                           f"--batch-files{again}", say)
    if m.batch:
        return ApiBatches(m, m.batch_poll_seconds, m.batch_window, m.batch_wait_seconds, say)
    return None


def batch_section(task: Task, batcher: Batcher | None, oracles: list[LiveOracle]
                  ) -> dict[str, Any] | None:
    """The report's ``batch`` entry: completions and tokens paid, of which by batch jobs,
    and the cost at both prices (money where the task has ``[pricing]``, else tokens)."""
    if batcher is None:
        return None
    paid = sum(o.paid for o in oracles)
    batch = sum(o.paid_batch for o in oracles)
    io = np.sum([o.tokens_io for o in oracles], axis=0)
    io_batch = np.sum([o.tokens_io_batch for o in oracles], axis=0)
    pr = task.pricing
    weights = np.ones(2) if pr is None else \
        np.array([pr.input_per_million, pr.output_per_million]) / 1e6
    sync = float(io @ weights)
    price = task.model.batch_price
    return {"mode": "files" if isinstance(batcher, FileBatches) else "api", "price": price,
            "submissions": batcher.submissions, "read": batcher.read,
            "completions_paid": paid, "completions_batch": batch,
            "tokens_paid": io.tolist(), "tokens_batch": io_batch.tolist(),
            "unit": "tokens" if pr is None else "money",
            "cost_synchronous": sync, "cost_batch": sync - (1 - price) * float(io_batch @ weights)}


def optimize(task: Task, out: Path, progress: bool = True,
             other_task: bool = False, batch_files: bool = False) -> dict[str, Any]:
    """Learn a policy for ``task`` through the live LLM; write policy.json and report.json
    (and report.md) into ``out``; completions go to ``out``/store.sqlite.

    Everything is validated before ``out`` is touched; one writer at a time holds ``out``.
    A rerun replays stored samples (0 paid) and writes the identical policy. With batch jobs
    (``model.batch``, or ``batch_files``: :mod:`iapo.live.batch`) the run may stop with
    :class:`iapo.live.batch.BatchPending` to wait on one; a rerun goes on from there.
    """
    from tqdm.auto import tqdm

    ready = preflight(task, out)
    assert ready is not None  # without a list of problems, preflight raises the first
    records, runtime, train, test = ready.records, ready.runtime, ready.train, ready.test
    _, oracle_seq, learner_seq = ready.seeds
    with store_errors(out / "store.sqlite"), writer_lock(out, "optimize"), \
            CompletionStore(out / "store.sqlite") as store, \
            tqdm(total=task.budget, desc="optimize", unit="compl", disable=not progress) as bar:
        run_id = _open_run(task, out, store, "optimize", other_task)
        runtime.register(store)
        oracle: LiveOracle | None = None

        def on_progress(served: int, paid: int, tokens: int, batch: int) -> None:
            bar.update(served)
            bar.set_postfix(paid=paid, tokens=tokens, batch=batch, refresh=False)
            if oracle is not None:
                store.update_run(run_id, oracle.paid, oracle.replayed, oracle.tokens)

        pilot = None
        if runtime.problem.needs_latency:  # priced with a model of this store's times
            model, pilot = latency_pilot(runtime, store, train)
            runtime.problem = dataclasses.replace(runtime.problem, latency=model)
        batcher = batcher_for(task, out, batch_files, bar.write, other_task)
        oracle = LiveOracle(runtime, store, train, task.budget,
                            np.random.default_rng(oracle_seq), on_progress, batcher=batcher)
        recorder = Recorder(oracle)  # every training observation, for the report
        learner = get_learner(task.learner).learner
        result = learner(runtime.problem, recorder, task.budget,
                         np.random.default_rng(learner_seq))
        bar.n = oracle.ledger.spent
        bar.refresh()
        train_summary = oracle.summary()
        costs = oracle.costs()
        evaluation = _evaluate_on_test(runtime, store, test, result.choices, costs, batcher)
        piloted = {"paid": 0, "replayed": 0} if pilot is None else pilot
        store.update_run(run_id, oracle.paid + evaluation["completions_paid"] + piloted["paid"],
                         oracle.replayed + evaluation["completions_replayed"]
                         + piloted["replayed"],
                         oracle.tokens + evaluation["tokens_paid"], status="finished")
        history = _run_history(store, run_id)
    grid = runtime.problem.grid
    policy = Policy(
        env=task.name, learner=task.learner, budget=task.budget,
        completions_used=int(train_summary["completions_used"]), seed=task.seed,
        split={"seed": task.seed, "test_fraction": task.test_fraction,
               "test": [records[i].id for i in test]},
        contexts=grid.keys, choices=result.choices,
        trace={**result.trace.to_dict(), "costs": costs.tolist(),
               "task": {"path": str(task.path), "digest": task.digest()}},
        stopping=runtime.problem.stopping,
        serving=serving_section(task),  # the policy serves without its task file
        latency=None if runtime.problem.latency is None else runtime.problem.latency.to_dict(),
    )
    policy.save(out / "policy.json")
    problem = runtime.problem
    estimator, make = estimator_for(learner, problem, result.trace.info)
    trained = arm_table(make, problem, recorder.observations)
    conf = assess(make, problem, recorder.observations, result.choices,
                  np.random.default_rng(ready.seeds[2].spawn(1)[0]))
    tested = arm_table(lambda pr: _blocks(pr, None), problem, evaluation["observations"])
    tokens = (oracle.tokens_drawn + evaluation["tokens_drawn"]) / np.maximum(
        oracle.drawn + evaluation["drawn"], 1)[:, None]  # [P, 2] per completion drawn
    report = {
        "task": task.name, "learner": task.learner, "budget": task.budget, "seed": task.seed,
        "train_queries": int(train.size), "test_queries": int(test.size),
        "training": train_summary,
        **live_report.contexts(task, problem, result.choices, trained, tested,
                               [c["q_ci95"] for c in evaluation["per_context"]], conf, tokens,
                               estimator),
        "arms": live_report.all_arms(task, trained, conf, tokens),
        "costs": costs.tolist(),
        "pricing": None if task.pricing is None else dataclasses.asdict(task.pricing),
        "test_acr": evaluation["acr"], "test_acr_ci95": evaluation["acr_ci95"],
        "evaluation": {k: evaluation[k] for k in ("completions_used", "completions_paid",
                                                  "completions_replayed", "tokens_paid",
                                                  "scorer_failures")},
        "runs": history,
        "latency": None if problem.latency is None else {
            "model": problem.latency.to_dict(), "pilot": pilot},
        "batch": batch_section(task, batcher, [oracle, evaluation["oracle"]]),
        "notes": result.trace.notes,
        # which estimator decided, and why (psst-auto's validation; absent for the others)
        "estimator_choice": result.trace.info.get("estimator"),
        # the judge scorers' own requests and tokens, apart from the policy's completions
        "judge": runtime.judge_usage(),
        "truncated": truncation(task, oracle.drawn + evaluation["drawn"],
                                oracle.cut + evaluation["cut"]),
    }
    frontier = None
    if problem.latency is not None:  # every width's completions and latency, predicted
        estimate = make(problem)
        estimate.update(recorder.observations)
        if isinstance(estimate, ModelQTable):
            frontier = estimate.width_table()
    written = live_report.figures(report, problem, trained, conf, out / "figures", frontier)
    pngs = [p for p in written if p.suffix == ".png"]
    write_text_atomically(out / "report.json", json.dumps(report, indent=2) + "\n", "the report")
    write_text_atomically(out / "report.md",
                          live_report.markdown(report, [f"figures/{p.name}" for p in pngs]),
                          "the report")
    write_text_atomically(out / "report.html", live_report.html_page(report, pngs), "the report")
    return report


def _blocks(problem: Problem, wave: int | None) -> QTable:
    """The blocks that estimate the test split: quality and cost of arms in waves of
    ``wave`` (a choice's own width; None: the problem's rule), without latency, which they do
    not price (:class:`iapo.estimate.QTable`)."""
    if wave is not None or problem.stopping.widths:
        problem = dataclasses.replace(problem, stopping=Stopping(
            problem.stopping.rule, problem.stopping.wave if wave is None else wave))
    return QTable(problem, without_latency=True)


def _evaluate_on_test(runtime: TaskRuntime, store: CompletionStore, test: np.ndarray,
                      choices: list[Any], costs: np.ndarray, batcher: Batcher | None = None
                      ) -> dict[str, Any]:
    """Estimate each chosen arm's Q on the test queries from one group per test query of the
    chosen prompt at its largest chosen N (pool samples 0..N-1; paid only when not stored),
    with the costs training ended with. Quality and completions paid are the blocks'; where
    contexts price latency, its term is the latency model's prediction for the choice."""
    problem = runtime.problem
    top: dict[int, int] = {}
    for ch in choices:
        n = ch.n if ch.n is not None else problem.n_max
        top[ch.prompt] = max(top.get(ch.prompt, 0), n)
    budget = sum(n * test.size for n in top.values())
    oracle = LiveOracle(runtime, store, test, budget, np.random.default_rng(0), costs=costs,
                        batcher=batcher)
    observations = oracle.groups(list(top.items()), test)
    tables: dict[int | None, QTable] = {}  # by the choices' wave widths
    per, values, variances = [], [], []
    weights = problem.grid.latency_weights
    for i, ch in enumerate(choices):
        stats = tables.get(ch.wave)
        if stats is None:
            stats = tables[ch.wave] = _blocks(problem, ch.wave)
            stats.update(observations)
        mean, var = stats.mean, stats.variance
        if ch.n is None:  # N uniform in 1..N_max: the mean of Q over N
            m = float(np.nanmean(mean[i, ch.prompt]))
            v = float("nan")
            cnt = 0
        else:
            m = float(mean[i, ch.prompt, ch.n - 1])
            v = float(var[i, ch.prompt, ch.n - 1])
            cnt = int(stats.counts[ch.prompt, ch.n - 1])
        if ch.latency is not None:  # the latency term at the model's prediction
            m -= float(latency_term(weights[i], ch.latency))
        per.append({"q_hat": m, "q_ci95": _ci(m, v, cnt)})
        values.append(m)
        variances.append(v / cnt if cnt >= 2 else float("nan"))
    pr = problem.grid.probabilities
    acr = float(np.dot(pr, values))
    se = math.sqrt(float(np.dot(pr**2, variances))) if all(map(math.isfinite, variances)) \
        else float("nan")
    return {
        "per_context": per, "acr": acr,
        "acr_ci95": [acr - Z95 * se, acr + Z95 * se] if math.isfinite(se) else [None, None],
        "completions_used": oracle.ledger.spent, "completions_paid": oracle.paid,
        "completions_replayed": oracle.replayed, "tokens_paid": oracle.tokens,
        "scorer_failures": oracle.failures, "drawn": oracle.drawn, "cut": oracle.cut,
        "tokens_drawn": oracle.tokens_drawn, "observations": observations, "oracle": oracle,
    }


def truncation(task: Task, drawn: np.ndarray, cut: np.ndarray) -> list[dict[str, Any]]:
    """Per prompt: the completions this run used (training and test) [P], how many were cut by
    max_tokens (finish reason "length") and their share."""
    return [{"prompt": p.name, "max_tokens": p.decoding.get("max_tokens"),
             "completions": int(d), "truncated": int(c), "share": float(c / d) if d else 0.0}
            for p, d, c in zip(task.prompts, drawn, cut, strict=True)]


def collect(task: Task, out: Path, samples: int, progress: bool = True,
            other_task: bool = False) -> dict[str, Any]:
    """Sample the full grid: ``samples`` completions of every prompt on every query, into
    ``out``/store.sqlite (resumable: stored samples are never requested again)."""
    from tqdm.auto import tqdm

    if samples < 1:
        raise TaskError(f"samples={samples} must be at least 1")
    records = load_records(task.data_path)
    runtime = TaskRuntime(task, records)
    runtime.scorers  # noqa: B018 - load the scorers now: a broken one fails before any call
    check_writable(out, "--out", folder=True)
    total = samples * len(records) * len(task.prompts)
    with store_errors(out / "store.sqlite"), writer_lock(out, "collect"), \
            CompletionStore(out / "store.sqlite") as store, \
            tqdm(total=total, desc="collect", unit="compl", disable=not progress) as bar:
        run_id = _open_run(task, out, store, "collect", other_task)
        runtime.register(store)

        def on_progress(served: int, paid: int, tokens: int, batch: int) -> None:
            bar.update(served)
            bar.set_postfix(paid=paid, tokens=tokens, refresh=False)

        oracle = LiveOracle(runtime, store, np.arange(len(records)), total,
                            np.random.default_rng(0), on_progress)
        idx = list(range(samples))
        for q in range(len(records)):  # one query at a time: progress is committed as it goes
            oracle.serve([(p, q, idx) for p in range(len(task.prompts))])
            store.update_run(run_id, oracle.paid, oracle.replayed, oracle.tokens)
        store.update_run(run_id, oracle.paid, oracle.replayed, oracle.tokens, "finished")
        return {"completions": total, "paid": oracle.paid, "replayed": oracle.replayed,
                "tokens": oracle.tokens, "scorer_failures": oracle.failures,
                "store": str(out / "store.sqlite")}


# ---------------------------------------------------------------- export-env


def export_env(store_path: Path, out: Path) -> dict[str, Any]:
    """Turn the stored completions into a tabular environment file (iapo.envs.tabular format).

    The store is opened read-only. Every query with stored completions of some prompt is kept;
    the pairs without any are marked unobserved (the file's ``observed`` mask): Q of a prompt
    then averages over its observed queries. MV: answer categories per query as in training
    (the gold first, "no answer" a category of its own), the task's rule for "no answer" and
    the answers it declares (``no_answer_rule``, ``answers``); BoN: every stored completion is a
    support point with probability 1 / (stored completions of its pair). Scores computed
    under another gold are recomputed from the stored texts. The file's ``name`` is the
    task's.
    """
    from iapo.live.aggregate import NO_ANSWER, answer_categories, answer_labels

    with store_errors(store_path):
        store = CompletionStore(store_path, create=False)
        try:
            meta = store.get_meta("task")
            if meta is None:
                raise TaskError(f"{store_path} has no task metadata; was it written by iapo "
                                "optimize?")
            task = task_from_dict(meta["raw"], Path(meta["path"]))
            records = [Record(i, q, g) for i, q, g in store.queries()]
            runtime = TaskRuntime(task, records)
            by_pool: dict[str, list[Any]] = {}
            for c in store.all_completions():
                by_pool.setdefault(c.pool, []).append(c)
        finally:
            store.close()
    arms = runtime.arms
    pools = [[runtime.pool(p, j) for p in range(len(arms))] for j in range(len(records))]
    kept = [j for j in range(len(records)) if any(pl in by_pool for pl in pools[j])]
    if not kept:
        raise TaskError("the store has no completions of this task's prompts; run iapo "
                        "optimize or iapo collect first")
    keep = [records[j] for j in kept]
    observed = np.array([[pools[j][p] in by_pool for j in kept] for p in range(len(arms))])
    missing = [task.prompts[p].name for p in range(len(arms)) if not observed[p].any()]
    if missing:
        raise TaskError(f"prompt(s) {missing} have no stored completions; collect some first "
                        "(iapo collect)")
    groups = {}  # (prompt, kept position) -> completions with current scores
    sums, counts = np.zeros(len(arms)), np.zeros(len(arms))
    for pos, j in enumerate(kept):
        key = runtime.score_key(records[j])
        for p in range(len(arms)):
            rows = []
            for c in by_pool.get(pools[j][p], []):
                if c.score_key != key:
                    answer_, fresh, failures = runtime.score(records[j], c.text,
                                                               c.finish_reason)
                    c = dataclasses.replace(c, answer=answer_, scores=fresh, failures=failures)
                rows.append(c)
            groups[(p, pos)] = rows
            sums[p] += sum(c.completion_tokens for c in rows)
            counts[p] += len(rows)
    costs = runtime.costs(sums, counts)
    budgets = task.budgets
    common: dict[str, Any] = {
        "budget_levels": np.array(list(budgets)), "cost_weights": np.array(list(budgets.values())),
        "n_max": np.array(task.n_max), "prompt_names": np.array([p.name for p in task.prompts]),
        "query_ids": np.array([r.id for r in keep]), "name": np.array(task.name),
        **({} if observed.all() else {"observed": observed}),
    }
    if task.aggregator == "mv":
        cats = []
        for pos, r in enumerate(keep):
            order = answer_categories(runtime.gold_answer(r), [])
            for p in range(len(arms)):
                answer_labels(order, [c.answer for c in groups[(p, pos)]])
            cats.append(order)
        n_cat = max(2, max(len(o) for o in cats))
        probs = np.zeros((len(arms), len(keep), n_cat))
        for pos, order in enumerate(cats):
            for p in range(len(arms)):
                rows = groups[(p, pos)]
                if not rows:  # unobserved: a placeholder row, never drawn
                    probs[p, pos, 0] = 1.0
                    continue
                labels = answer_labels(order, [c.answer for c in rows])
                probs[p, pos] = np.bincount(labels, minlength=n_cat) / len(rows)
        arrays = {"aggregator": np.array("mv"), "answer_probs": probs,
                  "gold": np.zeros(len(keep), dtype=np.int16), "cost_per_completion": costs,
                  "no_answer": np.array([o.get(NO_ANSWER, -1) for o in cats], dtype=np.int16),
                  "no_answer_rule": np.array(task.no_answer),
                  **({} if (answers := task.declared_answers()) is None
                     else {"answers": np.array(answers)}),
                  **common}
    elif task.aggregator == "bon":
        k = len(task.objectives)
        support = max(len(rows) for rows in groups.values())
        bank = np.zeros((len(arms), len(keep), support, k + 1))
        probs = np.zeros((len(arms), len(keep), support))
        for p in range(len(arms)):
            for j in range(len(keep)):
                rows = groups[(p, j)]
                bank[p, j, :, k] = costs[p]
                if not rows:  # unobserved: a placeholder support point, never drawn
                    probs[p, j, 0] = 1.0
                    continue
                bank[p, j, : len(rows), :k] = [c.scores for c in rows]
                probs[p, j, : len(rows)] = 1.0 / len(rows)
        arrays = {"aggregator": np.array("bon"), "scores": bank, "probs": probs,
                  "objective_names": np.array([o.name for o in task.objectives]),
                  "objective_lower": np.array([o.lower for o in task.objectives]),
                  "objective_upper": np.array([o.upper for o in task.objectives]),
                  "weight_grid": np.array(task.weights), **common}
    else:
        raise TaskError("export-env supports mv and bon tasks; the tabular formats have no "
                        "mixed aggregator")
    # numpy.savez adds ".npz" to a name without it; write the file under that name
    path = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
    write_atomically(path, lambda fh: np.savez_compressed(fh, **arrays), "the environment")
    return {"out": str(path), "prompts": len(arms), "queries": len(keep),
            "dropped_queries": len(records) - len(keep),
            "unobserved_pairs": int((~observed).sum()), "aggregator": task.aggregator}
