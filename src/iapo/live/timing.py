"""The latency model of a live task, fitted from its store (beyond the paper).

Every stored completion keeps its tokens and the seconds its request took. A task whose
contexts weigh or limit latency, or whose wave width is part of the arm (``train.wave =
"auto"``), is priced with the model of :meth:`iapo.latency.LatencyModel.fit`: one overhead
and one per-token time for the task's model, by least squares over the completions of every
prompt drawn at the first attempt, and each prompt's own token counts.

The task's ``model.concurrency`` is the number of completions the server runs at once: iapo
never has more in flight, so a stored time is the completion's own and not a wait in the
server's queue, and a wave wider than it is drawn as waves of it (:mod:`iapo.latency`).

Before it learns, ``iapo optimize`` draws a pilot of ``train.latency_pilot`` completions of
each prompt, spread over the training queries (sample 0 of each in turn, then sample 1, ...),
and fits the model to them. Those already stored are replayed, the rest are paid once and
stored, and the learner replays them like any other sample. The policy records the model its
choices were priced with.
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
    completions of each, spread over the ``train`` queries (from the store, or else the
    model), those drawn at the first attempt; the task's ``model.concurrency``. Returns it
    and the pilot's completions drawn, paid and replayed. The same store and split give the
    same pilot, so a rerun fits the same model."""
    count, prompts = runtime.task.latency_pilot, runtime.task.prompts
    at = [(int(train[i % train.size]), i // train.size) for i in range(count)]
    oracle = LiveOracle(runtime, store, train, count * len(prompts), np.random.default_rng(0))
    rows = oracle.serve([(p, q, [s]) for p in range(len(prompts)) for q, s in at],
                        rescore=False)
    tokens, seconds = [], []
    for p, prompt in enumerate(prompts):
        first = [r[0] for r in rows[p * count: (p + 1) * count] if r[0].retries == 0]
        if not first:
            raise RunError(f"every pilot completion of prompt '{prompt.name}' needed a retry, "
                           "so none times the model alone: its latency cannot be fitted; "
                           "check the server, or raise train.latency_pilot")
        tokens.append([r.completion_tokens for r in first])
        seconds.append([r.latency for r in first])
    model = LatencyModel.fit(tokens, seconds, runtime.task.model.concurrency)
    return model, {"completions": count * len(prompts), "paid": oracle.paid,
                   "replayed": oracle.replayed}
