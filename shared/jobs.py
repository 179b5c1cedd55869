"""The job seam: what happens after a call, run durably.

Four job functions (call started, call ended, analyze, deliver one webhook attempt) run on one of
two queues, chosen by the database:

- PostgreSQL: procrastinate. Any number of `relayx worker` processes (`run_worker`) on any number
  of machines take jobs from the same database; a worker that dies mid-job stops sending heartbeats
  and its job is retried by the others.
- SQLite (the embedded default): the `relayx_jobs` table, run inside the backend by
  `EmbeddedRunner`; jobs left running by a crash are pending again at the next start.

Every job is idempotent per call: the analysis is one row per call (upsert), events are unique per
`dedupe_key`, attempts unique per (event, attempt number). Re-running a job never duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from shared import analysis, webhooks
from shared.call_status import TERMINAL
from shared.errors import ConfigurationError, NotFound
from shared.llm.base import StructuredLLM
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import CallAnalysis, Storage, utcnow

log = logging.getLogger(__name__)

TASK_CALL_STARTED = "relayx.call_started"
TASK_CALL_ENDED = "relayx.call_ended"
TASK_ANALYZE = "relayx.analyze"
TASK_DELIVER = "relayx.deliver_webhook"
# A status callback can say "completed" before the gateway has flushed the last transcript lines:
# the call-ended job it queues waits this long; the gateway's own (after its flush) runs at once.
STATUS_CALLBACK_DELAY_S = 10.0


class Queue(Protocol):
    """Somewhere to put a job: `key` makes a second defer of the same job a no-op."""

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        ...


@dataclass
class JobContext:
    """What the job functions need: settings, storage, a queue for follow-up jobs, the analysis model."""

    settings: Settings
    storage: Storage
    queue: Queue
    llm_factory: Callable[[], StructuredLLM] | None = None
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
    call = await ctx.storage.get_call(call_id)
    await _emit(ctx, call_id, "call.started", webhooks.call_started_data(call), f"call.started:{call_id}")


async def call_ended(ctx: JobContext, call_id: str) -> None:
    """Send call.ended (with the whole transcript) and queue the analysis."""
    call = await ctx.storage.get_call(call_id)
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
        try:
            spec = analysis.spec_from_settings(agent.settings)
        except analysis.SchemaProblem as exc:
            values: dict[str, Any] = {"status": "failed", "error": f"the agent's analysis settings: {exc}"}
        else:
            llm = None if not analysis.has_caller_speech(lines) else await asyncio.to_thread(ctx.llm)
            values = await analysis.analyze(
                llm,  # type: ignore[arg-type]  # unused when nobody spoke
                lines, spec, context_tokens=ctx.settings.analysis_llm_context_tokens, agent_prompt=agent.prompt,
            )
        existing = await ctx.storage.upsert_analysis(call_id, values)
        log.info("call %s: analysis %s (%s)", call_id, existing.status, existing.outcome or existing.error)
    call = await ctx.storage.get_call(call_id)
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
    log.info("webhook %s %s attempt %d: %s", event.type, event_id, attempt, result.error or result.status_code)
    if result.outcome == "pending":
        await ctx.queue.defer(TASK_DELIVER, {"event_id": event_id}, key=f"deliver:{event_id}:{attempt + 1}",
                              delay_s=webhooks.backoff_s(attempt, settings.webhook_backoff_s))


TASKS: dict[str, Callable[..., Awaitable[Any]]] = {
    TASK_CALL_STARTED: call_started,
    TASK_CALL_ENDED: call_ended,
    TASK_ANALYZE: analyze_call,
    TASK_DELIVER: deliver_webhook,
}


async def run_task(ctx: JobContext, task: str, args: dict[str, Any]) -> None:
    try:
        fn = TASKS[task]
    except KeyError:
        raise ConfigurationError(f"unknown job task {task!r}") from None
    await fn(ctx, **args)


# --- the embedded queue (SQLite) -------------------------------------------------------------------


class SQLQueue:
    """Jobs as rows of `relayx_jobs`; `wake` lets a runner in the same process start at once."""

    def __init__(self, storage: Storage, wake: asyncio.Event | None = None) -> None:
        self.storage = storage
        self.wake = wake

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        run_at = utcnow() + timedelta(seconds=delay_s) if delay_s else None
        await self.storage.enqueue_job(task, args, dedupe_key=key, run_at=run_at)
        if self.wake is not None:
            self.wake.set()


class EmbeddedRunner:
    """Runs the `relayx_jobs` queue inside the backend (SQLite): a few jobs at a time, polled.

    The gateway is another process writing to the same file, so the runner polls (JOBS_POLL_S);
    jobs queued by this process wake it at once.
    """

    def __init__(self, ctx: JobContext, wake: asyncio.Event, *, concurrency: int = 4) -> None:
        self.ctx = ctx
        self.wake = wake
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        resumed = await self.ctx.storage.requeue_running_jobs()
        if resumed:
            log.info("resuming %d job(s) interrupted by the last shutdown", resumed)
        self._loop_task = asyncio.create_task(self._loop(), name="relayx-jobs")

    async def aclose(self) -> None:
        """Stop taking jobs; jobs in flight are cancelled and stay `running`, to resume at next start."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            job = await self.ctx.storage.claim_job()
            if job is None:
                self._slots.release()
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.ctx.settings.jobs_poll_s)
                continue
            task = asyncio.create_task(self._run(job.id, job.task, job.args), name=f"job-{job.task}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, job_id: str, task: str, args: dict[str, Any]) -> None:
        try:
            await run_task(self.ctx, task, args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed job is recorded with its reason, never lost
            log.exception("job %s %s failed", task, job_id)
            await self.ctx.storage.finish_job(job_id, error=f"{type(exc).__name__}: {exc}"[:500])
        else:
            await self.ctx.storage.finish_job(job_id)
        finally:
            self._slots.release()


# --- procrastinate (PostgreSQL) --------------------------------------------------------------------


def _require_procrastinate() -> Any:
    try:
        import procrastinate
    except ImportError as exc:
        raise ConfigurationError("jobs on PostgreSQL need procrastinate: pip install 'relayx[queue]'") from exc
    return procrastinate


def _dsn(storage: Storage) -> str:
    return str(storage.dsn)  # type: ignore[attr-defined]


def _is_postgres(storage: Storage) -> bool:
    from shared.storage.postgres import PostgresStorage

    return isinstance(storage, PostgresStorage)


async def ensure_procrastinate_schema(dsn: str) -> None:
    """Create procrastinate's tables once; an advisory lock keeps concurrent starters from racing."""
    _require_procrastinate()
    import asyncpg
    from procrastinate.schema import SchemaManager

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("select pg_advisory_lock(hashtext('relayx.procrastinate_schema'))")
        try:
            present = await conn.fetchval("select to_regclass('public.procrastinate_jobs') is not null")
            if not present:
                await conn.execute(SchemaManager.get_schema())
                log.info("created procrastinate's job tables")
        finally:
            await conn.execute("select pg_advisory_unlock(hashtext('relayx.procrastinate_schema'))")
    finally:
        await conn.close()


def procrastinate_app(dsn: str, ctx: JobContext | None = None, **pool: Any) -> Any:
    """A procrastinate App on `dsn`; with `ctx`, the four tasks are registered to run on it."""
    procrastinate = _require_procrastinate()
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, **pool))
    if ctx is not None:
        for name in TASKS:
            app.task(name=name, pass_context=False)(_bound(ctx, name))
    return app


def _bound(ctx: JobContext, name: str) -> Callable[..., Awaitable[None]]:
    async def job(**args: Any) -> None:
        await run_task(ctx, name, args)

    job.__name__ = name.replace(".", "_")
    return job


class ProcrastinateQueue:
    """Defers onto procrastinate; `key` is its queueing lock (one waiting job per key)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def defer(self, task: str, args: dict[str, Any], *, key: str | None = None, delay_s: float = 0.0) -> None:
        procrastinate = _require_procrastinate()
        if key is not None and await self._ever_queued(key):
            # Procrastinate's queueing lock only covers waiting jobs; a job re-run after a crash must not
            # queue a second copy of work that is already running or done (as the SQLite queue's key).
            log.debug("job %s %s was queued before", task, key)
            return
        options: dict[str, Any] = {"queueing_lock": key}
        if task == TASK_ANALYZE:
            options["lock"] = f"analyze:{args['call_id']}"  # one analysis of a call at a time
        if delay_s:
            options["schedule_in"] = {"seconds": delay_s}
        try:
            await self.app.configure_task(name=task, **options).defer_async(**args)
        except procrastinate.exceptions.AlreadyEnqueued:
            log.debug("job %s %s is already queued", task, key)


    async def _ever_queued(self, key: str) -> bool:
        row = await self.app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE queueing_lock = %(key)s", key=key
        )
        return bool(row and row["n"])


async def _recover_stalled(app: Any, settings: Settings) -> None:
    """Requeue jobs of workers whose heartbeat stopped (killed, lost their machine)."""
    while True:
        await asyncio.sleep(settings.worker_heartbeat_s)  # a period, not a wait for an event
        try:
            for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=settings.worker_stalled_after_s):
                log.warning("job %s (%s) was interrupted with its worker: running it again", job.id, job.task_name)
                await app.job_manager.retry_job(job)
        except Exception:  # a failed sweep is retried at the next period
            log.exception("stalled-job sweep failed")


async def run_worker(settings: Settings, *, llm_factory: Callable[[], StructuredLLM] | None = None) -> None:
    """`relayx worker`: run post-call jobs from PostgreSQL until cancelled (SIGINT/SIGTERM stop it gracefully)."""
    storage = build_storage(settings)
    if not _is_postgres(storage):
        raise ConfigurationError("relayx worker needs PostgreSQL; on SQLite the backend runs the jobs itself")
    await storage.open()
    try:
        await storage.migrate()
        dsn = _dsn(storage)
        await ensure_procrastinate_schema(dsn)
        ctx = JobContext(settings, storage, queue=None, llm_factory=llm_factory)  # type: ignore[arg-type]
        app = procrastinate_app(dsn, ctx)
        ctx.queue = ProcrastinateQueue(app)
        async with app.open_async():
            sweeper = asyncio.create_task(_recover_stalled(app, settings))
            try:
                await app.run_worker_async(
                    concurrency=settings.worker_concurrency,
                    fetch_job_polling_interval=settings.jobs_poll_s,  # scheduled retries are found by polling
                    update_heartbeat_interval=settings.worker_heartbeat_s,
                    stalled_worker_timeout=settings.worker_stalled_after_s,
                    install_signal_handlers=True,
                )
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
    finally:
        await storage.close()


# --- what the services call ------------------------------------------------------------------------


async def _defer(storage: Storage, task: str, args: dict[str, Any], *, key: str | None, delay_s: float = 0.0) -> None:
    """Queue a job from any process: a row on SQLite, a procrastinate job on PostgreSQL."""
    if not _is_postgres(storage):
        await SQLQueue(storage).defer(task, args, key=key, delay_s=delay_s)
        return
    dsn = _dsn(storage)
    await ensure_procrastinate_schema(dsn)
    app = procrastinate_app(dsn, min_size=1, max_size=1)
    async with app.open_async():
        await ProcrastinateQueue(app).defer(task, args, key=key, delay_s=delay_s)


async def notify_call_started(storage: Storage, call_id: str) -> None:
    """The call is connected: queue call.started."""
    await _defer(storage, TASK_CALL_STARTED, {"call_id": call_id}, key=f"call_started:{call_id}")


async def notify_call_ended(storage: Storage, call_id: str, *, delay_s: float = 0.0) -> None:
    """The call reached a terminal status: queue call.ended and, after it, the analysis."""
    await _defer(storage, TASK_CALL_ENDED, {"call_id": call_id}, key=f"call_ended:{call_id}", delay_s=delay_s)


async def request_analysis(storage: Storage, call_id: str) -> str:
    """POST /calls/{id}/analysis: analyse again (replacing the row), whatever was stored before."""
    call = await storage.get_call(call_id)
    if call.status not in TERMINAL:
        raise ValueError(f"call {call_id} has not ended yet ({call.status})")
    request = uuid.uuid4().hex
    await _defer(storage, TASK_ANALYZE, {"call_id": call_id, "request": request, "force": True},
                 key=f"analyze:{call_id}:{request}")
    return request


@dataclass
class Background:
    """What the backend's lifespan holds: the embedded runner on SQLite, nothing on PostgreSQL."""

    runner: EmbeddedRunner | None = None

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()


async def start_background(
    settings: Settings, storage: Storage, *, llm_factory: Callable[[], StructuredLLM] | None = None
) -> Background:
    """Backend start-up: on SQLite run the jobs here; on PostgreSQL make sure procrastinate's tables exist
    (workers run them: `relayx worker`)."""
    if _is_postgres(storage):
        try:
            await ensure_procrastinate_schema(_dsn(storage))
        except ConfigurationError as exc:
            log.warning("post-call jobs are off: %s", exc)
        return Background()
    wake = asyncio.Event()
    ctx = JobContext(settings, storage, SQLQueue(storage, wake), llm_factory=llm_factory)
    runner = EmbeddedRunner(ctx, wake, concurrency=settings.worker_concurrency)
    await runner.start()
    return Background(runner)
