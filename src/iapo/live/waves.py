"""Majority voting that stops once the vote is decided, live: completions in waves.

An arm (prompt, N) whose policy was priced with ``stop = "decided"`` (:mod:`iapo.stopping`)
asks for its completions in waves of ``wave``: sample indices 0..w-1, then w..2w-1, and so on.
The rule is :func:`iapo.stopping.vote_decided`: once the leader's margin over the runner-up
exceeds the completions not yet back, no remaining completion can change the winner. The answer
is the one all N completions would have given (the same winner set).

Granularity. Live, the votes are checked after every completion that comes back, not once per
wave: the completions of a wave arrive one by one, and the requests still in flight (or waiting
for a connection) when the vote is decided can be cancelled, and no further wave is asked for.
Training priced the arm at wave boundaries (:func:`iapo.stopping.stop_points`,
:func:`iapo.stopping.expected_paid`): a wave once asked for is paid in full there. Deciding
inside a wave stops at the same boundary or earlier: live uses at most the completions priced.

Width. The gateway and ``iapo answer`` draw a wave wider than the task's ``model.concurrency``
(the completions the server runs at once) as waves of it, so that every completion asked for
runs at once and the caller waits as :mod:`iapo.latency` predicts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from iapo.problem import NO_ANSWER_RULES, Stopping
from iapo.stopping import vote_decided

C = TypeVar("C")


@dataclass
class Drawn(Generic[C]):
    """What an arm drew: ``completions`` and their ``answers`` in sample order, their sample
    ``indices``, the ``waves`` asked for and the requests ``cancelled`` once decided."""

    completions: list[C]
    answers: list[str | None]
    indices: list[int]
    waves: int
    cancelled: int


def stop_fields(drawn: Drawn[Any] | None, n: int, used: int, stopping: Stopping
                ) -> dict[str, object]:
    """How an arm of N = ``n`` stopped, as ``iapo answer`` and ``iapo serve`` report it:
    ``used`` completions, drawn in waves (``drawn``) or all at once (None: one wave)."""
    return {"stopping": stopping.to_dict(), "completions_used": used,
            "completions_saved": n - used, "waves": 1 if drawn is None else drawn.waves,
            "cancelled": 0 if drawn is None else drawn.cancelled}


async def draw_in_waves(start: Callable[[int], Awaitable[C]], n: int, wave: int,
                        answer_of: Callable[[C], str | None],
                        no_answer: str = NO_ANSWER_RULES[0]) -> Drawn[C]:
    """Draw sample indices 0..n-1 in waves of ``wave`` with ``start(i)`` (one completion),
    stopping once the vote of ``answer_of`` over the completions back is decided, "no answer"
    (None) counted by the rule ``no_answer`` (under abstain it never decides).

    The votes are counted, and the requests still pending cancelled, in the same step of the
    event loop as the completion that decides the vote arrives: a request waiting for a free
    connection is never sent after that (and a stored sample that ``start`` returns at once
    is read, in sample order, before any later one is asked for)."""
    got: dict[int, tuple[C, str | None]] = {}
    counts: Counter[str | None] = Counter()
    waves = cancelled = 0
    decided = False
    tasks: list[asyncio.Task[None]] = []  # the current wave's requests

    async def one(i: int) -> None:
        nonlocal decided, cancelled
        c = await start(i)
        a = answer_of(c)
        got[i] = (c, a)
        counts[a] += 1
        keys = list(counts)
        abstained = keys.index(None) if no_answer == "abstain" and None in counts else -1
        if not decided and vote_decided([counts[k] for k in keys], n - len(got),
                                        no_answer=abstained):
            decided = True
            for t in tasks:
                if not t.done() and t is not asyncio.current_task():
                    t.cancel()
                    cancelled += 1

    nxt = 0
    while nxt < n and not decided:
        idx = range(nxt, min(n, nxt + wave))
        nxt = idx.stop
        waves += 1
        tasks[:] = [asyncio.ensure_future(one(i)) for i in idx]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:  # an upstream failure propagates (the rest are cancelled below)
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            await asyncio.wait(tasks)  # the cancelled ones, once they have unwound
        finally:
            pending = [t for t in tasks if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
    order = sorted(got)
    return Drawn([got[i][0] for i in order], [got[i][1] for i in order], order, waves,
                 cancelled)
