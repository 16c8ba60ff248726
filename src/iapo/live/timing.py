"""The latency model of a live task, fitted from its store (beyond the paper).

Every stored completion keeps its tokens and the seconds its request took. A task whose
contexts weigh or limit latency, or whose wave width is part of the arm (``train.wave =
"auto"``), is priced with the model of :meth:`iapo.latency.LatencyModel.fit`: one overhead
and one per-token time for the task's model, by least squares over the completions of every
prompt drawn at the first attempt, and each prompt's own token counts.

The task's ``model.concurrency`` is the number of completions the server runs at once: iapo
never has more in flight, so a stored time is the completion's own and not a wait in the
server's queue, and a wave wider than it is drawn as waves of it (:mod:`iapo.latency`).

A server that has read a request's prompt (its prefix cache) answers that request's later
completions sooner: a request pays a ``prefill`` once, in its first round. The model adds it
once per request, and the fit tells it from the per-completion overhead.

Before it learns, ``iapo optimize`` draws a pilot of ``train.latency_pilot`` completions of
each prompt, as serving draws them (:func:`latency_pilot`), and fits the model to them. Those
already stored are replayed, the rest are paid once and stored, and the learner replays them
like any other sample. The policy records the model its choices were priced with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from iapo.errors import RunError
from iapo.latency import LatencyModel
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import CompletionStore


def latency_pilot(runtime: TaskRuntime, store: CompletionStore, train: npt.NDArray[np.int64]
                  ) -> tuple[LatencyModel, dict[str, Any]]:
    """The latency model of the task's prompts, fitted to a pilot of ``train.latency_pilot``
    completions of each, drawn as serving draws them: groups of 2c (c the concurrency) on
    one query at a time, one request per completion, samples 0..c-1 running first, before
    the server has read the prompt (the first round, which pays the prefill), the rest after.
    The queries are the first ``train`` ones, as many as the groups need. Completions
    already stored are replayed; those drawn after a retry are left out of the fit (their
    time holds the failed attempts' waits), as are those of batch jobs (no time of their
    own). Returns the model and the pilot's completions
    drawn, paid and replayed. The same store and split give the same pilot, so a rerun fits
    the same model."""
    task = runtime.task
    c, count = task.model.concurrency, task.latency_pilot
    group = 2 * c
    # group g: samples of one pool, query train[g % X], samples from (g // X) x 2c on
    groups: dict[int, tuple[int, list[int]]] = {}
    for i in range(count):
        g, at = divmod(i, group)
        q, start = int(train[g % train.size]), g // train.size * group
        groups.setdefault(g, (q, []))[1].append(start + at)
    oracle = LiveOracle(runtime, store, train, count * len(task.prompts),
                        np.random.default_rng(0))
    supports_n, runtime.supports_n = runtime.supports_n, False  # one request per completion
    try:
        tokens, seconds, first = [], [], []
        for p, prompt in enumerate(task.prompts):
            rows = []
            for q, samples in groups.values():  # one group at a time, in order
                rows += oracle.serve([(p, q, samples)], rescore=False)[0]
            # a batch job's completion has no time of its own (stored as 0 s)
            timed = [r for r in rows if r.retries == 0
                     and not (r.endpoint or "").startswith("batch")]
            if not timed:
                raise RunError(f"every pilot completion of prompt '{prompt.name}' needed a "
                               "retry, so none times the model alone: its latency cannot be "
                               "fitted; check the server, or raise train.latency_pilot")
            tokens.append([r.completion_tokens for r in timed])
            seconds.append([r.latency for r in timed])
            first.append([r.sample % group < c for r in timed])
    finally:
        runtime.supports_n = supports_n
    model = LatencyModel.fit(tokens, seconds, c, first)
    return model, {"completions": count * len(task.prompts), "paid": oracle.paid,
                   "replayed": oracle.replayed}
