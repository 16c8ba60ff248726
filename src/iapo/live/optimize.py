"""`iapo optimize`, `iapo answer` and `iapo export-env`: the live path end to end."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from iapo.estimate import QTable
from iapo.learners import get_learner
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import CompletionStore
from iapo.live.task import Task, TaskError, load_records, load_task
from iapo.oracle import Pull
from iapo.policy import Policy, PolicyError
from iapo.split import train_test_split

Z95 = 1.959963984540054


def _ci(mean: float, var: float, n: int) -> list[float | None]:
    if n < 2 or not math.isfinite(var):
        return [None, None]
    half = Z95 * math.sqrt(var / n)
    return [mean - half, mean + half]


def optimize(task: Task, out: Path, progress: bool = True) -> dict[str, Any]:
    """Learn a policy for ``task`` through the live LLM; write policy.json and report.json
    (and report.md) into ``out``; completions go to ``out``/store.sqlite."""
    from tqdm.auto import tqdm

    records = load_records(task.data_path)
    runtime = TaskRuntime(task, records)
    runtime.scorers  # noqa: B018 - load the scorers now: a broken one fails before any call
    out.mkdir(parents=True, exist_ok=True)
    split_seq, oracle_seq, learner_seq = np.random.SeedSequence(task.seed).spawn(3)
    train, test = train_test_split(len(records), split_seq, task.test_fraction)
    with CompletionStore(out / "store.sqlite") as store, tqdm(
        total=task.budget, desc="optimize", unit="compl", disable=not progress
    ) as bar:
        runtime.register(store)

        def on_progress(served: int, paid: int, tokens: int, batch: int) -> None:
            bar.update(served)
            bar.set_postfix(paid=paid, tokens=tokens, batch=batch, refresh=False)

        oracle = LiveOracle(runtime, store, train, task.budget,
                            np.random.default_rng(oracle_seq), on_progress)
        result = get_learner(task.learner).run(runtime.problem, oracle, task.budget,
                                               np.random.default_rng(learner_seq))
        bar.n = oracle.ledger.spent
        bar.refresh()
        train_summary = oracle.summary()
        evaluation = _evaluate_on_test(runtime, store, test, result.choices, oracle.stats)
    grid = runtime.problem.grid
    policy = Policy(
        env=task.name, learner=task.learner, budget=task.budget,
        completions_used=int(train_summary["completions_used"]), seed=task.seed,
        split={"seed": task.seed, "test_fraction": task.test_fraction,
               "test": [records[i].id for i in test]},
        contexts=grid.keys, choices=result.choices,
        trace={**result.trace.to_dict(), "task": {"path": str(task.path),
                                                   "digest": task.digest()}},
    )
    policy.save(out / "policy.json")
    mean, var = oracle.stats.mean, oracle.stats.variance
    rows = []
    for i, (key, ch) in enumerate(zip(grid.keys, result.choices, strict=True)):
        n_idx = (ch.n or 1) - 1
        cnt = int(oracle.stats.counts[ch.prompt, n_idx])
        m = float(mean[i, ch.prompt, n_idx])
        rows.append({
            "context": key, "prompt": task.prompts[ch.prompt].name, "prompt_index": ch.prompt,
            "n": ch.n, "q_hat": m if math.isfinite(m) else None,
            "q_ci95": _ci(m, float(var[i, ch.prompt, n_idx]), cnt), "blocks": cnt,
            "test_q_hat": evaluation["per_context"][i]["q_hat"],
            "test_q_ci95": evaluation["per_context"][i]["q_ci95"],
        })
    report = {
        "task": task.name, "learner": task.learner, "budget": task.budget, "seed": task.seed,
        "train_queries": int(train.size), "test_queries": int(test.size),
        "training": train_summary, "policy": rows,
        "test_acr": evaluation["acr"], "test_acr_ci95": evaluation["acr_ci95"],
        "evaluation": {k: evaluation[k] for k in ("completions_used", "completions_paid",
                                                  "tokens_paid", "scorer_failures")},
        "notes": result.trace.notes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_report_md(report))
    return report


def _evaluate_on_test(runtime: TaskRuntime, store: CompletionStore, test: np.ndarray,
                      choices: list[Any], train_stats: QTable) -> dict[str, Any]:
    """Estimate each chosen arm's Q on the test queries from one group per test query of the
    chosen prompt at its largest chosen N (pool samples 0..N-1; paid only when not stored)."""
    problem = runtime.problem
    top: dict[int, int] = {}
    for ch in choices:
        n = ch.n if ch.n is not None else problem.n_max
        top[ch.prompt] = max(top.get(ch.prompt, 0), n)
    budget = sum(n * test.size for n in top.values())
    oracle = LiveOracle(runtime, store, test, budget, np.random.default_rng(0))
    stats = QTable(problem)
    for p, n in top.items():
        groups = oracle.serve([(p, int(q), list(range(n))) for q in test])
        oracle.ledger.charge(n * test.size)
        fake = Pull(p, n, int(test.size))
        obs = oracle._observations([fake], [(fake, int(q), list(range(n))) for q in test], groups)
        stats.update(obs)
    mean, var = stats.mean, stats.variance
    per, values, variances = [], [], []
    for i, ch in enumerate(choices):
        if ch.n is None:  # N uniform in 1..N_max: the mean of Q over N
            m = float(np.nanmean(mean[i, ch.prompt]))
            v = float("nan")
            cnt = 0
        else:
            m = float(mean[i, ch.prompt, ch.n - 1])
            v = float(var[i, ch.prompt, ch.n - 1])
            cnt = int(stats.counts[ch.prompt, ch.n - 1])
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
        "tokens_paid": oracle.tokens, "scorer_failures": oracle.failures,
    }


def _report_md(r: dict[str, Any]) -> str:
    t = r["training"]
    lines = [
        f"# {r['task']}: {r['learner']} with T = {r['budget']}",
        "",
        f"Training: {t['completions_used']} completions used ({t['completions_paid']} paid, "
        f"{t['tokens_paid']} tokens, {t['scorer_failures']} scorer failures) on "
        f"{r['train_queries']} training queries.",
        "",
        "| context | prompt | N | Q (train, 95% CI) | Q (test, 95% CI) |",
        "|---|---|---|---|---|",
    ]

    def fmt(v: float | None, ci: list[float | None]) -> str:
        if v is None or not math.isfinite(v):
            return "n/a"
        if ci[0] is None or ci[1] is None:
            return f"{v:.4f}"
        return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"

    for row in r["policy"]:
        n = "random" if row["n"] is None else row["n"]
        lines.append(f"| {row['context']} | {row['prompt']} | {n} | "
                     f"{fmt(row['q_hat'], row['q_ci95'])} | "
                     f"{fmt(row['test_q_hat'], row['test_q_ci95'])} |")
    e = r["evaluation"]
    lines += [
        "",
        f"Test-split ACR of the policy, estimated from stored samples: "
        f"{fmt(r['test_acr'], r['test_acr_ci95'])} on {r['test_queries']} test queries "
        f"({e['completions_used']} completions, {e['completions_paid']} paid).",
    ]
    if r["notes"]:
        lines += ["", "Notes:", *[f"- {n}" for n in r["notes"]]]
    return "\n".join(lines) + "\n"


def collect(task: Task, out: Path, samples: int, progress: bool = True) -> dict[str, Any]:
    """Sample the full grid: ``samples`` completions of every prompt on every query, into
    ``out``/store.sqlite (resumable: stored samples are never requested again)."""
    from tqdm.auto import tqdm

    if samples < 1:
        raise TaskError(f"samples={samples} must be at least 1")
    records = load_records(task.data_path)
    runtime = TaskRuntime(task, records)
    runtime.scorers  # noqa: B018 - load the scorers now: a broken one fails before any call
    out.mkdir(parents=True, exist_ok=True)
    total = samples * len(records) * len(task.prompts)
    with CompletionStore(out / "store.sqlite") as store, tqdm(
        total=total, desc="collect", unit="compl", disable=not progress
    ) as bar:
        runtime.register(store)

        def on_progress(served: int, paid: int, tokens: int, batch: int) -> None:
            bar.update(served)
            bar.set_postfix(paid=paid, tokens=tokens, refresh=False)

        oracle = LiveOracle(runtime, store, np.arange(len(records)), total,
                            np.random.default_rng(0), on_progress)
        idx = list(range(samples))
        for q in range(len(records)):  # one query at a time: progress is committed as it goes
            oracle.serve([(p, q, idx) for p in range(len(task.prompts))])
        return {"completions": total, "paid": oracle.paid, "tokens": oracle.tokens,
                "scorer_failures": oracle.failures, "store": str(out / "store.sqlite")}


# ---------------------------------------------------------------- answer


def parse_context(text: str) -> dict[str, str]:
    """``helpful=0.3,harmless=0.7,budget=high`` -> a mapping."""
    spec = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"context part {part!r} must look like KEY=VALUE")
        k, v = part.split("=", 1)
        spec[k.strip()] = v.strip()
    return spec


def policy_task(policy: Policy, task_path: Path | None, source: Path | str) -> Task:
    """The task a live policy was learned with (its trace names the file), or ``task_path``."""
    path = task_path or policy.trace.get("task", {}).get("path")
    if not path:
        raise PolicyError(f"{source} names no task file; pass --task")
    return load_task(path)


def answer(policy_path: Path, context: str, query: str, task_path: Path | None = None,
           seed: int | None = None) -> dict[str, Any]:
    """Run the policy's arm for ``context`` on ``query`` and aggregate (BoN by the scorers, MV
    by the extracted answers, ties broken uniformly at random)."""
    import asyncio

    from iapo.live.task import Record

    policy = Policy.load(policy_path)
    task = policy_task(policy, task_path, policy_path)
    if policy.env != task.name:
        raise PolicyError(f"the policy was learned for task '{policy.env}', not '{task.name}'")
    runtime = TaskRuntime(task, [])
    grid = runtime.problem.grid
    i = grid.index(parse_context(context))
    ch = policy.choices[i]
    rng = random.Random(seed)
    n = ch.n if ch.n is not None else rng.randint(1, task.n_max)
    prompt = task.prompts[ch.prompt]
    record = Record("query", query, None)

    async def run() -> list[Any]:
        async with runtime.client() as client:
            seeds = [rng.randrange(2**31) for _ in range(n)]
            return await client.sample(prompt.render(query), prompt.decoding, seeds)

    comps = asyncio.run(run())
    samples = []
    for c in comps:
        ans, scores, failures = runtime.score(record, c.text)
        samples.append({"text": c.text, "answer": ans, "scores": scores, "failures": failures,
                        "completion_tokens": c.completion_tokens})
    ctx = grid.contexts[i]
    out: dict[str, Any] = {"context": grid.keys[i], "prompt": prompt.name, "n": n,
                           "samples": samples,
                           "usage": {"completion_tokens": sum(c.completion_tokens for c in comps),
                                     "prompt_tokens": sum(c.prompt_tokens for c in comps)}}
    if task.aggregator == "bon":
        failed = [f for s in samples for f in s["failures"]]
        if failed:
            raise TaskError("Best-of-N at answer time needs scorers that work without a gold "
                            f"answer (python or http reward models); they failed: {failed[0]}"
                            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
        values = [float(np.dot(ctx.weights, s["scores"])) for s in samples]
        best = max(range(n), key=lambda j: (values[j], -j))
        out.update({"aggregator": "bon", "choice": best, "text": samples[best]["text"],
                    "values": values})
    else:
        votes = Counter(s["answer"] for s in samples if s["answer"] is not None)
        if votes:
            top = max(votes.values())
            tied = sorted(a for a, v in votes.items() if v == top)
            winner = rng.choice(tied)
            pick = next(j for j, s in enumerate(samples) if s["answer"] == winner)
        else:
            winner, tied, pick = None, [], 0
        out.update({"aggregator": "mv", "answer": winner, "votes": dict(votes), "tied": tied,
                    "choice": pick, "text": samples[pick]["text"]})
    return out


# ---------------------------------------------------------------- export-env


def export_env(store_path: Path, out: Path) -> dict[str, Any]:
    """Turn the stored completions into a tabular environment file (iapo.envs.tabular format).

    Queries lacking a stored completion of some prompt are left out (reported). MV: answer
    categories per query, the gold one first; BoN: every stored completion is a support point
    with probability 1 / (stored completions of its pair).
    """
    if not store_path.is_file():
        raise TaskError(f"store {str(store_path)!r} does not exist")
    store = CompletionStore(store_path)
    try:
        meta = store.get_meta("task")
        if meta is None:
            raise TaskError(f"{store_path} has no task metadata; was it written by iapo optimize?")
        task = _task_from_meta(meta)
        records = [_record(i, q, g) for i, q, g in store.queries()]
        runtime = TaskRuntime(task, records)
        by_pair: dict[tuple[str, str], list[Any]] = {}
        for c in store.all_completions():
            by_pair.setdefault((c.arm, c.query_id), []).append(c)
        mean_tokens = store.mean_tokens()
    finally:
        store.close()
    arms = runtime.arms
    keep = [r for r in records if all((a, r.id) in by_pair for a in arms)]
    if not keep:
        raise TaskError("no query has stored completions of every prompt; collect more first")
    costs = runtime.costs(mean_tokens)
    budgets = task.budgets
    common: dict[str, Any] = {
        "budget_levels": np.array(list(budgets)), "cost_weights": np.array(list(budgets.values())),
        "n_max": np.array(task.n_max), "prompt_names": np.array([p.name for p in task.prompts]),
        "query_ids": np.array([r.id for r in keep]),
    }
    if task.aggregator == "mv":
        cats = []
        for r in keep:
            gold = runtime.gold_answer(r)
            order = {gold if gold is not None else "\x00gold": 0}
            for a in arms:
                for c in by_pair[(a, r.id)]:
                    key = c.answer if c.answer is not None else "\x00none"
                    order.setdefault(key, len(order))
            cats.append(order)
        n_cat = max(2, max(len(o) for o in cats))
        probs = np.zeros((len(arms), len(keep), n_cat))
        for j, (r, order) in enumerate(zip(keep, cats, strict=True)):
            for p, a in enumerate(arms):
                rows = by_pair[(a, r.id)]
                for c in rows:
                    key = c.answer if c.answer is not None else "\x00none"
                    probs[p, j, order[key]] += 1.0 / len(rows)
        arrays = {"aggregator": np.array("mv"), "answer_probs": probs,
                  "gold": np.zeros(len(keep), dtype=np.int16), "cost_per_completion": costs,
                  **common}
    elif task.aggregator == "bon":
        k = len(task.objectives)
        support = max(len(by_pair[(a, r.id)]) for a in arms for r in keep)
        scores = np.zeros((len(arms), len(keep), support, k + 1))
        probs = np.zeros((len(arms), len(keep), support))
        for p, a in enumerate(arms):
            for j, r in enumerate(keep):
                rows = by_pair[(a, r.id)]
                scores[p, j, : len(rows), :k] = [c.scores for c in rows]
                scores[p, j, :, k] = costs[p]
                probs[p, j, : len(rows)] = 1.0 / len(rows)
        arrays = {"aggregator": np.array("bon"), "scores": scores, "probs": probs,
                  "objective_names": np.array([o.name for o in task.objectives]),
                  "objective_lower": np.array([o.lower for o in task.objectives]),
                  "objective_upper": np.array([o.upper for o in task.objectives]),
                  "weight_grid": np.array(task.weights), **common}
    else:
        raise TaskError("export-env supports mv and bon tasks; the tabular formats have no "
                        "mixed aggregator")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {"out": str(out), "prompts": len(arms), "queries": len(keep),
            "dropped_queries": len(records) - len(keep), "aggregator": task.aggregator}


def _task_from_meta(meta: dict[str, Any]) -> Task:
    from iapo.live.task import task_from_dict

    return task_from_dict(meta["raw"], Path(meta["path"]))


def _record(i: str, q: str, g: Any) -> Any:
    from iapo.live.task import Record

    return Record(i, q, g)
