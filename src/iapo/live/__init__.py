"""The live path: a real OpenAI-compatible model, scorers, a durable completion store, and
the same learners as in simulation, through :class:`~iapo.live.oracle.LiveOracle`."""

from __future__ import annotations

from iapo.live.client import ChatClient, Completion, LLMError
from iapo.live.oracle import LiveOracle, TaskRuntime
from iapo.live.store import CompletionStore
from iapo.live.task import Record, Task, TaskError, load_records, load_task

__all__ = [
    "ChatClient",
    "Completion",
    "CompletionStore",
    "LLMError",
    "LiveOracle",
    "Record",
    "Task",
    "TaskError",
    "TaskRuntime",
    "load_records",
    "load_task",
]
