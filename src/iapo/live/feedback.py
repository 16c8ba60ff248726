"""Gold answers and scores that arrive after a request was served: one rule for
``POST /v1/feedback`` and ``iapo label-log``.

A feedback item names the served request by its id (the response's ``id``, the key of the
gateway's log, :class:`iapo.live.store.ServedRequest`) and carries either its ``gold`` answer
or a ``score`` for one of the task's objectives, within that objective's bounds. Items are
appended to the log's ``feedback`` table; nothing logged is changed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iapo.errors import InputError
from iapo.live.scorers import fixed_answers, make_extractor, read_answer
from iapo.live.store import CompletionStore, Feedback, store_errors
from iapo.live.task import Task

FEEDBACK_KEYS = ("id", "gold", "objective", "score")


class FeedbackError(InputError):
    """A feedback item is malformed; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse(item: Any, task: Task | None) -> tuple[str, str, str | None, Any]:
    """(request id, kind, objective, value) of one feedback item: ``{"id", "gold"}`` or
    ``{"id", "objective", "score"}`` (scores need the ``task``, for its objectives); a
    :class:`FeedbackError` saying what is wrong."""
    if not isinstance(item, dict):
        raise FeedbackError('feedback must be a JSON object: {"id": ..., "gold": ...} or '
                            '{"id": ..., "objective": ..., "score": ...}')
    unknown = sorted(set(item) - set(FEEDBACK_KEYS))
    if unknown:
        raise FeedbackError(f"unknown field(s) {unknown}; feedback has id and gold, or id, "
                            "objective and score", unknown[0])
    rid = item.get("id")
    if not isinstance(rid, str) or not rid:
        raise FeedbackError("id must be the response's id (a string such as 'chatcmpl-...')",
                            "id")
    has_gold = "gold" in item
    has_score = "score" in item or "objective" in item
    if has_gold == has_score:
        raise FeedbackError("give either gold (the right answer) or objective and score, "
                            "one of the two", "gold")
    if has_gold:
        gold = item["gold"]
        if gold is None or isinstance(gold, (dict, list)) or (
                isinstance(gold, float) and not math.isfinite(gold)):
            raise FeedbackError("gold must be a string or a finite number, as the task's "
                                "data gives it", "gold")
        if isinstance(gold, str) and not gold.strip():
            raise FeedbackError("gold is empty: give the right answer, as the task's data "
                                "gives it", "gold")
        if task is not None and (why := gold_problem(gold, task)):
            raise FeedbackError(why, "gold")
        return rid, "gold", None, gold
    if task is None:
        raise FeedbackError("label-log attaches gold answers; post scores to /v1/feedback",
                            "score")
    names = [o.name for o in task.objectives]
    objective = item.get("objective")
    if objective not in names:
        raise FeedbackError(f"objective must be one of the task's objectives {names}; got "
                            f"{objective!r}", "objective")
    score = item.get("score")
    spec = task.objectives[names.index(objective)]
    if isinstance(score, bool) or not isinstance(score, (int, float)) or \
            not math.isfinite(score) or not spec.lower <= score <= spec.upper:
        raise FeedbackError(f"score must be a number in [{spec.lower:g}, {spec.upper:g}] "
                            f"(objective '{objective}'); got {score!r}", "score")
    return rid, "score", str(objective), float(score)


def gold_problem(gold: Any, task: Task) -> str | None:
    """Why ``gold`` can never be right for ``task`` (None: it can, or the task does not say
    what its answers are), read as the task reads it:

    - majority voting (and mixed): a vote's answer is extracted from the completion and the
      gold's through the same extractor (:meth:`iapo.live.oracle.TaskRuntime.gold_answer`),
      so a gold it reads no answer from matches no vote;
    - Best-of-N (and mixed): a letter outside a multiple_choice objective's choices, or a
      label outside a label objective's labels, compared as those scorers compare.
    """
    if task.aggregator != "bon" and task.extractor and read_answer(
            make_extractor(task.extractor, task.labels), gold) is None:
        return (f"gold {gold!r} gives no answer that the task's {task.extractor!r} "
                "extractor reads (it reads the gold as it reads a completion's vote), so "
                "no vote can match it: give the right answer as the task's data gives it")
    if task.aggregator == "mv":
        return None
    for o in task.objectives:
        fixed = fixed_answers(o.scorer, o.options, gold)
        if fixed is not None and fixed[1] not in fixed[0]:
            return (f"gold {gold!r} can never be right for objective '{o.name}' ({o.scorer}), "
                    f"whose answers are {', '.join(fixed[0])}: give the right answer as the "
                    "task's data gives it")
    return None


def logged_task(store: CompletionStore) -> Task | None:
    """The task that served the log (the copy the gateway stored in it), or None where the
    log holds none that can be read."""
    from iapo.live.task import task_from_dict

    meta = store.get_meta("task")
    try:  # the copy the gateway stored, as export-env reads it
        return task_from_dict(meta["raw"], Path(meta["path"]))
    except (InputError, KeyError, TypeError, ValueError):
        return None


def label_log(log_path: Path, labels_path: Path) -> dict[str, int]:
    """Attach the gold answers of ``labels_path`` (JSONL, one ``{"id", "gold"}`` per line) to
    the requests of the log at ``log_path``, all of them or none: every bad line is named,
    one line each, in one :class:`InputError`, and nothing is written. A line that gives an
    id another gold than an earlier line does is bad (which one counts would be a guess);
    the same gold again is not. Returns the counts."""
    try:
        lines = labels_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise InputError(f"labels file {labels_path} does not exist; give a JSONL file of "
                         '{"id": ..., "gold": ...} lines') from e
    except UnicodeDecodeError as e:
        raise InputError(f"labels file {labels_path} is not UTF-8 text; save it as UTF-8") \
            from e
    if not log_path.is_file():
        raise InputError(f"log {log_path} does not exist; give the file of iapo serve "
                         "--log-store")
    with store_errors(log_path), CompletionStore(log_path) as store:
        task = logged_task(store)  # where it is known, a gold it can never score is refused
        problems: list[str] = []
        rows: list[Feedback] = []
        golds: dict[str, list[tuple[int, Any]]] = {}  # per id, its lines' golds so far
        now = time.time()
        for number, line in _numbered(lines):
            try:
                item = json.loads(line)
            except ValueError as e:
                problems.append(f"line {number}: not valid JSON ({e})")
                continue
            try:
                rid, _, _, value = parse(item, None)
            except FeedbackError as e:
                problems.append(f"line {number}: {e}")
                continue
            if task is not None and (why := gold_problem(value, task)):
                problems.append(f"line {number}: {why}")
            elif store.served_request(rid) is None:
                problems.append(f"line {number}: no logged request has id {rid!r}")
            elif other := [(n, g) for n, g in golds.get(rid, []) if not _same(g, value)]:
                given = " and ".join(f"{g!r} on line {n}" for n, g in other)
                problems.append(f"line {number}: id {rid!r} is given gold {value!r} here and "
                                f"{given}: give each request one gold, the right one")
            else:
                golds.setdefault(rid, []).append((number, value))
                rows.append(Feedback(rid, now, None, "gold", None, value, "label-log"))
        if problems:
            raise InputError(f"{labels_path}: {len(problems)} bad line(s), nothing attached:\n"
                             + "\n".join(problems))
        before = {f.request for f in store.feedback() if f.kind == "gold"}
        store.add_feedback(rows)
    requests = {r.request for r in rows}
    return {"attached": len(rows), "requests": len(requests),
            "relabelled": len(requests & before)}


def _same(a: Any, b: Any) -> bool:
    """Whether two golds, as the file gives them, are the same: equal, and both text or both
    numbers ("1" and 1 are not)."""
    return isinstance(a, str) == isinstance(b, str) and a == b


def _numbered(lines: Iterable[str]) -> Iterable[tuple[int, str]]:
    """The non-blank lines with their 1-based numbers."""
    return ((i, ln) for i, ln in enumerate(lines, start=1) if ln.strip())
