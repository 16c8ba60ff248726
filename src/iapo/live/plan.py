"""`iapo validate` and `iapo optimize --dry-run`: a task checked and its run planned, with no
model call and nothing written.

The checks are ``optimize``'s own: :func:`iapo.live.task.load_task`, then
:func:`iapo.live.optimize.preflight` (data file, gold answers, scorers, ``--out``, API key,
split), then the run folder's store, opened read-only, as
:func:`iapo.live.optimize.check_store_task` sees it. The task file stops at its first problem;
after it every problem is collected, in the order ``optimize`` meets them, so the first is the
one ``optimize`` stops at.

The plan's numbers, for the run ``optimize`` would make:

- **Schedule**: the rounds of the task's learner, from the learners' own code
  (:func:`iapo.learners.psst.rounds_planned`, what PSST fixes before its first round;
  :func:`iapo.learners.auto.screening_rounds`): exact where they depend on the sizes and T
  alone, a bound where they depend on the answers (which prompts a screening keeps).
- **Completions**: T for training (a hard limit), and at most min(P, C) x N_max x (test
  queries) for the test evaluation (each chosen prompt at its largest chosen N on every test
  query; not counted in T).
- **Tokens**: output at most completions x the largest ``max_tokens``; input estimated as
  characters / 4 (no tokenizer) of the longest prompt on the longest query, one request per
  completion.
- **Money**: those tokens at the task's ``[pricing]``.
- **Store**: the completions the run folder's store holds in this task's pools, which a run
  replays instead of paying for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iapo.errors import InputError, RunError
from iapo.learners import get_learner
from iapo.learners.auto import PSSTAuto, group_size, screening_rounds
from iapo.learners.base import Trace
from iapo.learners.psst import (
    PSST,
    Allocation,
    Groups,
    Halving,
    LargestN,
    PSSTModel,
    Uniform,
    rounds_for,
    rounds_planned,
)
from iapo.learners.screening import TopKScreening
from iapo.learners.triple import TripleSH
from iapo.live.optimize import Preflight, check_store_task, preflight
from iapo.live.store import CompletionStore, store_errors
from iapo.live.task import Task, load_task

CHARS_PER_TOKEN = 4  # the input estimate: no tokenizer of the task's model is at hand


@dataclass(frozen=True)
class Checked:
    """What the checks found: the task and what ``optimize`` would start from (None where a
    check failed), the store's contents (None: no ``out`` or unreadable) and every problem."""

    task: Task | None
    ready: Preflight | None
    store: dict[str, Any] | None
    problems: list[str]


def check(task_path: Path, out: Path | None = None, other_task: bool = False) -> Checked:
    """Run ``optimize``'s checks on the task file and, with ``out``, on its run folder;
    collect every problem instead of stopping at the first (module docstring)."""
    try:
        task = load_task(task_path)
    except InputError as e:
        return Checked(None, None, None, [str(e)])
    problems: list[str] = []
    ready = preflight(task, out, problems)
    store = None if out is None else _read_store(task, out, other_task, ready, problems)
    return Checked(task, ready, store, problems)


def _read_store(task: Task, out: Path, other_task: bool, ready: Preflight | None,
                problems: list[str]) -> dict[str, Any] | None:
    """The store of ``out`` read-only: the completions it holds in this task's training and
    test pools, and whether a finished run of this very task, seed and data is in it."""
    path = out / "store.sqlite"
    if not path.exists():
        return {"path": str(path), "exists": False}
    try:
        with store_errors(path):
            store = CompletionStore(path, create=False)
            try:
                check_store_task(task, out, store, other_task)
                sizes, total = store.pool_sizes(), store.count()
                runs, queries = store.runs(), store.queries()
            finally:
                store.close()
    except (InputError, RunError) as e:
        problems.append(str(e))
        return None
    result: dict[str, Any] = {"path": str(path), "exists": True, "completions": total}
    if ready is None:
        return result
    prompts = range(len(task.prompts))

    def held(queries_: Any) -> int:
        pools = {ready.runtime.pool(p, int(q)) for p in prompts for q in queries_}
        return sum(sizes.get(pool, 0) for pool in pools)

    stored = {i: (q, g) for i, q, g in queries}
    same_data = all(stored.get(r.id) == (r.query, r.gold) for r in ready.records)
    finished = [r["id"] for r in runs if r["command"] == "optimize" and r["status"] == "finished"
                and r["digest"] == task.digest() and r["seed"] == task.seed]
    result.update(train_held=held(ready.train), test_held=held(ready.test),
                  rerun_of=finished[-1] if finished and same_data else None)
    return result


# ---------------------------------------------------------------- the plan


def _psst_rounds(task: Task, budget: int, *, n1_only: bool = False,
                 schedule: Halving | None = None, allocation: Allocation | None = None
                 ) -> dict[str, Any]:
    """PSST's rounds over every prompt's arms (at N = 1 only: TRIPLE's halving), as
    :func:`psst` fixes them before its first (:func:`iapo.learners.psst.rounds_planned`: the
    paper's R, rules 1 and 2). One context stands for all: they share the arms PSST starts
    with."""
    flags = np.zeros((1, len(task.prompts), task.n_max), dtype=bool)
    flags[:, :, : 1 if n1_only else task.n_max] = True
    trace = Trace()
    _, rounds = rounds_planned(flags, budget, schedule or Halving(), allocation or LargestN(),
                               np.random.default_rng(0), trace)
    return {"phase": "psst", "rounds": rounds, "rounds_paper": trace.info["rounds_paper"]}


def schedule(task: Task) -> list[dict[str, Any]]:
    """The phases of the task's learner with their rounds (``rounds``: exact;
    ``rounds_at_most``: a bound, the survivors of a screening being unknown before the run);
    empty for a learner without rounds."""
    learner = get_learner(task.learner).learner
    p, n, t = len(task.prompts), task.n_max, task.budget
    mv = task.aggregator == "mv"
    if isinstance(learner, PSSTAuto) and task.aggregator != "mixed":
        g = group_size(task.aggregator, n)
        screen = int(learner.rho * t)
        rounds = screening_rounds(p, learner.keep, screen, g)
        if rounds == 0:
            return [{"phase": "screening", "rounds": 0, "group": g},
                    _psst_rounds(task, t, allocation=Groups(g) if mv else LargestN())]
        # MV keeps `keep` prompts per context; BoN the union of two top-ceil(keep / 2)
        kept = min(p, learner.keep if mv else 2 * math.ceil(learner.keep / 2))
        return [{"phase": "screening", "rounds": rounds, "group": g,
                 "completions_at_most": screen},
                {"phase": "psst", "rounds_at_most": rounds_for(kept * n)}]
    if isinstance(learner, TopKScreening):
        per_prompt = int(learner.rho * t) // p
        if per_prompt == 0 or learner.k >= p:
            return [{"phase": "screening", "rounds": 0, "group": 1}, _psst_rounds(task, t)]
        return [{"phase": "screening", "rounds": 1, "group": 1, "completions": per_prompt * p},
                {"phase": "psst", "rounds_at_most": rounds_for(learner.k * n)}]
    if isinstance(learner, PSST | PSSTAuto):  # psst-auto on mixed: plain PSST
        return [_psst_rounds(task, t)]
    if isinstance(learner, Uniform):
        return [_psst_rounds(task, t, schedule=Halving(rounds=1))]
    if isinstance(learner, PSSTModel):
        return [_psst_rounds(task, t, allocation=Groups(min(learner.group, n)))]
    if isinstance(learner, TripleSH):  # halving over the prompts at N = 1
        return [_psst_rounds(task, t, n1_only=True)]
    return []


def _tokens(task: Task, ready: Preflight, completions: int) -> dict[str, Any]:
    """Input tokens estimated, output tokens bounded, for ``completions`` completions."""
    longest = max((r.query for r in ready.records), key=len)
    chars = max(sum(len(m["content"]) for m in pr.render(longest)) for pr in task.prompts)
    per_input = math.ceil(chars / CHARS_PER_TOKEN)
    limits = [pr.decoding.get("max_tokens") for pr in task.prompts]
    unbounded = [pr.name for pr, m in zip(task.prompts, limits, strict=True) if m is None]
    per_output = None if unbounded else int(max(m for m in limits if m is not None))
    return {"method": f"input: characters / {CHARS_PER_TOKEN} of the longest prompt on the "
                      "longest query, one request per completion; output: max_tokens",
            "input_per_completion": per_input, "input": completions * per_input,
            "output_per_completion_at_most": per_output,
            "output_at_most": None if per_output is None else completions * per_output,
            "no_max_tokens": unbounded}


def _money(task: Task, tokens: dict[str, Any]) -> dict[str, Any] | None:
    if task.pricing is None:
        return None
    pricing = task.pricing
    money_in = pricing.money(tokens["input"], 0.0)
    out = tokens["output_at_most"]
    money_out = None if out is None else pricing.money(0.0, out)
    return {"input_per_million": pricing.input_per_million,
            "output_per_million": pricing.output_per_million, "input": money_in,
            "output_at_most": money_out,
            "total_at_most": None if money_out is None else money_in + money_out}


def summary(task: Task, ready: Preflight) -> dict[str, Any]:
    """The task's sizes: prompts, N_max, arms, contexts, T, queries."""
    p = len(task.prompts)
    return {"task": task.name, "path": str(task.path), "model": task.model.name,
            "base_urls": list(task.model.base_urls), "learner": task.learner,
            "seed": task.seed, "prompts": p, "n_max": task.n_max, "arms": p * task.n_max,
            "contexts": ready.runtime.problem.n_contexts, "budget": task.budget,
            "queries": len(ready.records), "train_queries": int(ready.train.size),
            "test_queries": int(ready.test.size)}


def plan(task: Task, ready: Preflight, store: dict[str, Any] | None) -> dict[str, Any]:
    """The dry run's plan (module docstring) as one JSON-ready dict."""
    c = ready.runtime.problem.n_contexts
    evaluation = min(len(task.prompts), c) * task.n_max * int(ready.test.size)
    completions = task.budget + evaluation
    tokens = _tokens(task, ready, completions)
    if store is not None and "train_held" in store:
        store = {**store, "pay_at_most": 0 if store["rerun_of"] is not None else completions,
                 "replay_at_most": min(completions, store["train_held"] + store["test_held"])}
    return {**summary(task, ready),
            "context_keys": ready.runtime.problem.grid.keys,
            "prompt_names": [pr.name for pr in task.prompts],
            "schedule": schedule(task),
            "completions": {"training_at_most": task.budget, "evaluation_at_most": evaluation,
                            "total_at_most": completions},
            "tokens": tokens, "money": _money(task, tokens), "store": store,
            # a judge scorer's own requests, to its own endpoint, are not in the numbers
            "judges": [o.name for o in task.objectives if o.scorer == "judge"]}


# ---------------------------------------------------------------- text


def _number(x: float) -> str:
    """Money and prices: cents above 100, else 4 significant digits, never an exponent."""
    if x >= 100:
        return f"{x:,.2f}"
    if x <= 0:
        return "0"
    digits = max(0, 3 - math.floor(math.log10(x)))
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{x:.0f}"


def _phase(ph: dict[str, Any]) -> str:
    if ph["phase"] == "screening":
        if ph["rounds"] == 0:
            return "no screening"
        spend = ph.get("completions", ph.get("completions_at_most"))
        limit = "" if "completions" in ph else "at most "
        return (f"screening {ph['rounds']} round(s) of groups of {ph['group']} ({limit}"
                f"{spend:,} completions)")
    if "rounds_at_most" in ph:
        return f"PSST at most {ph['rounds_at_most']} round(s) over the survivors' arms"
    paper = "" if ph["rounds"] == ph["rounds_paper"] else \
        f", fewer than the paper's {ph['rounds_paper']}: T pays no more"
    return f"PSST {ph['rounds']} round(s){paper}"


def summary_line(s: dict[str, Any]) -> str:
    return (f"{s['prompts']} prompts x N_max {s['n_max']} = {s['arms']} arms in "
            f"{s['contexts']} contexts; T = {s['budget']:,} completions ({s['learner']}); "
            f"{s['queries']} queries: {s['train_queries']} train, {s['test_queries']} test")


def plan_lines(pl: dict[str, Any]) -> list[str]:
    """The plan as text, one line a fact."""
    comp, tok, money, store = pl["completions"], pl["tokens"], pl["money"], pl["store"]
    phases = "; then ".join(_phase(ph) for ph in pl["schedule"]) or \
        "no rounds (the learner spends T in steps of its own)"
    lines = [
        f"task '{pl['task']}' (model '{pl['model']}' at {', '.join(pl['base_urls'])}), "
        f"seed {pl['seed']}",
        f"contexts ({pl['contexts']}): {', '.join(pl['context_keys'])}",
        f"arms: {pl['prompts']} prompts ({', '.join(pl['prompt_names'])}) x N_max "
        f"{pl['n_max']} = {pl['arms']} per context",
        f"queries: {pl['queries']} ({pl['train_queries']} train, {pl['test_queries']} test)",
        f"learner {pl['learner']}, T = {pl['budget']:,}: {phases}",
        f"completions: at most {comp['training_at_most']:,} for training (T) + "
        f"{comp['evaluation_at_most']:,} for the test evaluation = {comp['total_at_most']:,}",
    ]
    out_tokens = (f"output at most {tok['output_at_most']:,} (max_tokens "
                  f"{tok['output_per_completion_at_most']:,})"
                  if tok["output_at_most"] is not None else
                  f"output unbounded (no max_tokens: {', '.join(tok['no_max_tokens'])})")
    lines.append(f"tokens: input about {tok['input']:,} ({tok['input_per_completion']:,} per "
                 f"completion, characters / {CHARS_PER_TOKEN}), {out_tokens}")
    if money is None:
        lines.append("money: no prices given (add [pricing] input_per_million and "
                     "output_per_million to the task file)")
    else:
        prices = (f"at {_number(money['input_per_million'])} and "
                  f"{_number(money['output_per_million'])} per million input and output tokens")
        if money["total_at_most"] is None:
            lines.append(f"money: input about {_number(money['input'])}, output unbounded "
                         f"({prices})")
        else:
            lines.append(f"money: at most {_number(money['total_at_most'])} (input "
                         f"{_number(money['input'])} + output {_number(money['output_at_most'])}"
                         f", {prices})")
    if pl["judges"]:
        lines.append(f"not counted: the judge scorer's own requests ({', '.join(pl['judges'])})")
    if store is not None:
        lines.append(_store_line(store))
    lines.append("nothing was asked of the model and nothing was written")
    return lines


def _store_line(store: dict[str, Any]) -> str:
    if not store["exists"]:
        return f"store: {store['path']} does not exist yet: every completion is paid"
    head = f"store: {store['path']} holds {store['completions']:,} completions"
    if "train_held" not in store:
        return head
    head += (f", {store['train_held']:,} in this task's training pools and "
             f"{store['test_held']:,} in its test pools")
    if store["rerun_of"] is not None:
        return (f"{head}; run {store['rerun_of']} finished this task with this seed and data: "
                "a rerun replays it and pays nothing")
    return (f"{head}: the run replays up to {store['replay_at_most']:,} of them and pays for "
            f"at most {store['pay_at_most']:,}")


def validate(task_path: Path, out: Path | None = None,
             other_task: bool = False) -> dict[str, Any]:
    """``iapo validate``: every problem, and the task's sizes when there is none."""
    found = check(task_path, out, other_task)
    result: dict[str, Any] = {"valid": not found.problems, "problems": found.problems}
    if found.task is not None and found.ready is not None and not found.problems:
        result.update(summary(found.task, found.ready))
    return result


def dry_run(task_path: Path, out: Path, other_task: bool = False) -> dict[str, Any]:
    """``iapo optimize --dry-run``: every problem, and the plan when there is none."""
    found = check(task_path, out, other_task)
    if found.task is None or found.ready is None or found.problems:
        return {"valid": False, "problems": found.problems}
    return {"valid": True, "problems": [], **plan(found.task, found.ready, found.store)}
