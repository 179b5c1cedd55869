"""The job seam: what happens after a call, run durably.

- `shared.jobs.enqueue`: queueing, what the services call (`notify_call_started`, `notify_call_ended`,
  `request_analysis`, the process's `Enqueuer`): procrastinate on PostgreSQL, a table elsewhere.
- `shared.jobs.tasks`: the job functions (call started, call ended, analyze, deliver one webhook
  attempt, the campaign tick) and `run_task`.
- `shared.jobs.runners`: what runs them: `relayx worker` on PostgreSQL, the backend's embedded runner
  elsewhere.

The queueing names are imported here; the rest on first use (PEP 562), so that the gateway's
`from shared import jobs` loads none of the analysis and webhook code the job functions need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shared.jobs.enqueue import (
    STATUS_CALLBACK_DELAY_S,
    TASK_ANALYZE,
    TASK_CALL_ENDED,
    TASK_CALL_STARTED,
    TASK_CAMPAIGNS_TICK,
    TASK_DELIVER,
    Enqueuer,
    ProcrastinateQueue,
    Queue,
    SQLQueue,
    enqueuer_for,
    notify_call_ended,
    notify_call_started,
    request_analysis,
)

if TYPE_CHECKING:
    from shared.jobs.runners import Background, EmbeddedRunner, run_worker, start_background
    from shared.jobs.tasks import TASKS, JobContext, run_task

_LATER = {
    "Background": "runners", "EmbeddedRunner": "runners", "run_worker": "runners",
    "start_background": "runners", "TASKS": "tasks", "JobContext": "tasks", "run_task": "tasks",
}

__all__ = [
    "STATUS_CALLBACK_DELAY_S", "TASKS", "TASK_ANALYZE", "TASK_CALL_ENDED", "TASK_CALL_STARTED",
    "TASK_CAMPAIGNS_TICK", "TASK_DELIVER", "Background", "EmbeddedRunner", "Enqueuer", "JobContext",
    "ProcrastinateQueue", "Queue", "SQLQueue", "enqueuer_for", "notify_call_ended", "notify_call_started", "request_analysis", "run_task",
    "run_worker", "start_background",
]


def __getattr__(name: str) -> Any:
    """Import the job functions' and runners' modules only when one of their names is used."""
    module = _LATER.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
