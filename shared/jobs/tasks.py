"""The job functions and how a job name runs one: what `relayx worker` and the embedded runner execute.

Every job is idempotent per call: the analysis is one row per call (upsert), events are unique per
`dedupe_key`, attempts unique per (event, attempt number). Re-running a job never duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared import analysis, webhooks
from shared.errors import ConfigurationError, NotFound
from shared.jobs import metrics as job_metrics
from shared.jobs.enqueue import (
    TASK_ANALYZE,
    TASK_CALL_ENDED,
    TASK_CALL_STARTED,
    TASK_CAMPAIGNS_TICK,
    TASK_DELIVER,
    Queue,
)
from shared.llm.base import StructuredLLM
from shared.settings import Settings
from shared.storage.base import Call, CallAnalysis, Storage

if TYPE_CHECKING:
    from shared.campaigns.dispatch import Dispatcher

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What the job functions need: settings, storage, a queue for follow-up jobs, the analysis model."""

    settings: Settings
    storage: Storage
    queue: Queue
    llm_factory: Callable[[], StructuredLLM] | None = None
    dispatcher: Dispatcher | None = None
    """The campaign dispatcher (it dials, so it needs the backend's telephony); None: no campaign ticks."""
    _llm: StructuredLLM | None = field(default=None, init=False)

    def llm(self) -> StructuredLLM:
        """The analysis model, built on first use (a process that only delivers webhooks never loads it)."""
        if self._llm is None:
            from shared.llm import build_analysis_llm

            self._llm = (self.llm_factory or (lambda: build_analysis_llm(self.settings)))()
        return self._llm


# --- the job functions -----------------------------------------------------------------------------


async def _emit(ctx: JobContext, call_id: str, type: str, data: dict[str, Any], dedupe_key: str) -> None:
    """Store the event once and queue its first delivery (again, if a crash lost the first queueing)."""
    call = await ctx.storage.get_call(call_id)
    agent = await ctx.storage.get_agent(call.agent_id) if call.agent_id else None
    url = webhooks.target_url(agent, ctx.settings.webhook_url) if agent else ctx.settings.webhook_url
    if not url:
        return
    event = await ctx.storage.create_webhook_event(
        call_id=call_id, type=type, url=url, payload=webhooks.envelope(type, data), dedupe_key=dedupe_key
    )
    if event.status == "pending" and event.attempts == 0:
        await ctx.queue.defer(TASK_DELIVER, {"event_id": event.id}, key=f"deliver:{event.id}:1")


async def call_started(ctx: JobContext, call_id: str) -> None:
    """Send call.started."""
    call = await ctx.storage.get_call(call_id)
    await _emit(ctx, call_id, "call.started", webhooks.call_started_data(call), f"call.started:{call_id}")


async def _settle_contact(ctx: JobContext, call: Call, outcome: str | None = None) -> None:
    """Move the call's campaign contact on (retry, done, do-not-call); never fails the job."""
    if call.contact_id is None:
        return
    from shared.campaigns.dispatch import settle_call

    try:
        await settle_call(ctx.storage, call, outcome=outcome)
    except Exception:  # the dispatcher's sweep settles it later
        log.exception("call %s: could not settle its campaign contact", call.id)


async def call_ended(ctx: JobContext, call_id: str) -> None:
    """Send call.ended (with the whole transcript), settle a campaign contact, queue the analysis."""
    call = await ctx.storage.get_call(call_id)
    await _settle_contact(ctx, call)
    transcript = await ctx.storage.list_transcripts(call_id)
    await _emit(ctx, call_id, "call.ended", webhooks.call_ended_data(call, transcript), f"call.ended:{call_id}")
    await ctx.queue.defer(TASK_ANALYZE, {"call_id": call_id, "request": "auto", "force": False},
                          key=f"analyze:{call_id}:auto")


async def analyze_call(ctx: JobContext, call_id: str, request: str = "auto", force: bool = False) -> CallAnalysis:
    """Write the call's one analysis row, then send call.analyzed.

    Without `force`, an existing row is kept (a retried job after a crash does not run the model
    again) but call.analyzed is still ensured, in case the crash came between the two.
    """
    existing: CallAnalysis | None = None
    if not force:
        with contextlib.suppress(NotFound):
            existing = await ctx.storage.get_analysis(call_id)
    if existing is None or existing.status == "pending":
        call = await ctx.storage.get_call(call_id)
        agent = await ctx.storage.get_agent(call.agent_id)
        lines = await ctx.storage.list_transcripts(call_id)
        values: dict[str, Any]
        if analysis.answered_by_machine(call.answered_by):
            values = analysis.voicemail_values(str(call.answered_by), lines, analysis.spec_from_settings(agent.settings))
        elif not analysis.has_caller_speech(lines):
            values = analysis.no_conversation_values()  # no model needed (nor loaded)
        else:
            values = await analysis.analyze(
                await asyncio.to_thread(ctx.llm), lines, analysis.spec_from_settings(agent.settings),
                context_tokens=ctx.settings.analysis_llm_context_tokens, agent_prompt=agent.prompt,
            )
        existing = await ctx.storage.upsert_analysis(call_id, values)
        log.info("call %s: analysis %s (%s)", call_id, existing.status, existing.outcome or existing.error)
    call = await ctx.storage.get_call(call_id)
    if existing.status == "completed" and existing.outcome:
        await _settle_contact(ctx, call, existing.outcome)
    await _emit(ctx, call_id, "call.analyzed", webhooks.call_analyzed_data(call, existing),
                f"call.analyzed:{call_id}:{request}")
    return existing


async def deliver_webhook(ctx: JobContext, event_id: str) -> None:
    """One attempt; a retryable failure queues the next attempt after an exponential backoff."""
    event = await ctx.storage.get_webhook_event(event_id)
    if event.status != "pending":
        return
    attempt = event.attempts + 1
    settings = ctx.settings
    result = await webhooks.attempt_delivery(
        event, secret=settings.webhook_signing_secret, attempt=attempt, max_attempts=settings.webhook_max_attempts,
        timeout_s=settings.webhook_timeout_s, allow_private=settings.webhook_allow_private,
    )
    await ctx.storage.record_webhook_attempt(
        event_id, attempt, status_code=result.status_code, error=result.error, duration_ms=result.duration_ms,
        outcome=result.outcome,
    )
    job_metrics.WEBHOOK_ATTEMPTS.labels(event.type, result.outcome).inc()
    log.info("webhook %s %s attempt %d: %s", event.type, event_id, attempt, result.error or result.status_code)
    if result.outcome == "pending":
        await ctx.queue.defer(TASK_DELIVER, {"event_id": event_id}, key=f"deliver:{event_id}:{attempt + 1}",
                              delay_s=webhooks.backoff_s(attempt, settings.webhook_backoff_s))


async def campaigns_tick(ctx: JobContext, timestamp: int | None = None) -> None:
    """Dispatch due campaign contacts (procrastinate's periodic job passes the tick's `timestamp`)."""
    if ctx.dispatcher is None:
        raise ConfigurationError("this process has no campaign dispatcher (it cannot dial)")
    await ctx.dispatcher.tick()


TASKS: dict[str, Callable[..., Awaitable[Any]]] = {
    TASK_CALL_STARTED: call_started,
    TASK_CALL_ENDED: call_ended,
    TASK_ANALYZE: analyze_call,
    TASK_DELIVER: deliver_webhook,
    TASK_CAMPAIGNS_TICK: campaigns_tick,
}


async def run_task(ctx: JobContext, task: str, args: dict[str, Any]) -> None:
    """Run the job named `task`; an unknown name is a ConfigurationError (a newer process queued it)."""
    try:
        fn = TASKS[task]
    except KeyError:
        raise ConfigurationError(f"unknown job task {task!r}") from None
    try:
        await fn(ctx, **args)
    except BaseException:
        job_metrics.RUN.labels(task, "failed").inc()
        raise
    job_metrics.RUN.labels(task, "succeeded").inc()
