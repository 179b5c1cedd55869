"""What runs the jobs: `relayx worker` on PostgreSQL, the backend's embedded runner elsewhere.

- PostgreSQL: procrastinate. Any number of `relayx worker` processes (`run_worker`) on any number
  of machines take jobs from the same database; a worker that dies mid-job stops sending heartbeats
  and its job is retried by the others.
- Otherwise: the `relayx_jobs` table, run inside the backend by `EmbeddedRunner`; jobs left running
  by a crash are pending again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigurationError
from shared.jobs.enqueue import (
    TASK_CAMPAIGNS_TICK,
    Enqueuer,
    ProcrastinateQueue,
    SQLQueue,
    enqueuer_for,
    ensure_procrastinate_schema,
    procrastinate_app,
)
from shared.jobs.tasks import TASKS, JobContext, run_task
from shared.llm.base import StructuredLLM
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Storage

if TYPE_CHECKING:
    from shared.campaigns.dispatch import Dispatcher

log = logging.getLogger(__name__)


# --- the embedded queue ----------------------------------------------------------------------------


class EmbeddedRunner:
    """Runs the `relayx_jobs` queue inside the backend: a few jobs at a time, polled.

    The gateway is another process writing to the same database, so the runner polls (JOBS_POLL_S);
    jobs queued by this process wake it at once.
    """

    def __init__(self, ctx: JobContext, wake: asyncio.Event, *, concurrency: int = 4) -> None:
        self.ctx = ctx
        self.wake = wake
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Make jobs interrupted by the last shutdown pending again, then start taking jobs."""
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


async def dispatch_periodically(dispatcher: Dispatcher, period_s: float, wake: asyncio.Event) -> None:
    """The embedded campaign dispatcher: a tick every `period_s`, or at once when `wake` is set (a
    campaign started or resumed in this process)."""
    while True:
        try:
            await dispatcher.tick()
        except asyncio.CancelledError:
            raise
        except Exception:  # a failed tick (the database blipped) is retried at the next one
            log.exception("campaign dispatch failed")
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), period_s)


@dataclass
class Background:
    """What the backend's lifespan holds: its Enqueuer, and the embedded runner (and campaign
    dispatcher) unless on PostgreSQL."""

    enqueuer: Enqueuer
    runner: EmbeddedRunner | None = None
    dispatching: asyncio.Task[None] | None = None
    dispatch_wake: asyncio.Event | None = None

    def dispatch_soon(self) -> None:
        """A campaign became runnable: tick now rather than at the next period (embedded only)."""
        if self.dispatch_wake is not None:
            self.dispatch_wake.set()

    async def aclose(self) -> None:
        """Stop dispatching and the runner first (its jobs queue follow-ups), then close the pool."""
        try:
            if self.dispatching is not None:
                self.dispatching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.dispatching
            if self.runner is not None:
                await self.runner.aclose()
        finally:
            await self.enqueuer.aclose()


async def start_background(
    settings: Settings, storage: Storage, *, llm_factory: Callable[[], StructuredLLM] | None = None,
    dispatcher: Dispatcher | None = None,
) -> Background:
    """Backend start-up: on PostgreSQL open the queueing pool, creating procrastinate's tables if missing
    (workers run the jobs and dispatch campaigns: `relayx worker`); elsewhere run both here."""
    enqueuer = enqueuer_for(storage)
    if storage.dsn is not None:
        try:
            await enqueuer.open()
        except ConfigurationError as exc:
            log.warning("post-call jobs are off: %s", exc)
        return Background(enqueuer)
    wake = asyncio.Event()
    enqueuer.wake = wake  # a call that ends through this process starts its jobs at once
    ctx = JobContext(settings, storage, SQLQueue(storage, wake), llm_factory=llm_factory)
    runner = EmbeddedRunner(ctx, wake, concurrency=settings.worker_concurrency)
    await runner.start()
    background = Background(enqueuer, runner)
    if dispatcher is not None and storage.kind == "sqlite":
        background.dispatch_wake = asyncio.Event()
        background.dispatching = asyncio.create_task(
            dispatch_periodically(dispatcher, settings.campaign_tick_s, background.dispatch_wake),
            name="relayx-campaigns",
        )
    return background


# --- procrastinate (PostgreSQL) --------------------------------------------------------------------


def register_tasks(app: Any, ctx: JobContext, *, tick_s: float = 2.0) -> None:
    """Register the tasks on a procrastinate `app`, to run with `ctx`; with a dispatcher, the campaign
    tick as a periodic job every `tick_s` (whole seconds): procrastinate defers each tick once, whatever
    the number of workers, and its queueing lock keeps at most one tick waiting."""
    for name in TASKS:
        if name == TASK_CAMPAIGNS_TICK:
            continue
        app.task(name=name, pass_context=False)(_bound(ctx, name))
    if ctx.dispatcher is not None:
        task = app.task(name=TASK_CAMPAIGNS_TICK, pass_context=False, queueing_lock=TASK_CAMPAIGNS_TICK)(
            _bound(ctx, TASK_CAMPAIGNS_TICK))
        every = max(1, round(tick_s))
        app.periodic(cron=f"* * * * * */{every}", periodic_id="campaigns")(task)


def _bound(ctx: JobContext, name: str) -> Callable[..., Awaitable[None]]:
    async def job(**args: Any) -> None:
        await run_task(ctx, name, args)

    job.__name__ = name.replace(".", "_")
    return job


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


async def run_worker(
    settings: Settings, *, llm_factory: Callable[[], StructuredLLM] | None = None,
    dispatcher_factory: Callable[[Storage], Dispatcher] | None = None,
) -> None:
    """`relayx worker`: run post-call jobs and campaign ticks from PostgreSQL until cancelled (SIGINT/SIGTERM
    stop it gracefully). `dispatcher_factory` builds the campaign dispatcher on the worker's storage."""
    storage = build_storage(settings)
    dsn = storage.dsn
    if dsn is None:
        raise ConfigurationError("relayx worker needs PostgreSQL; on SQLite the backend runs the jobs itself")
    if settings.worker_metrics_port is not None:
        from prometheus_client import start_http_server

        from shared.jobs.metrics import REGISTRY

        start_http_server(settings.worker_metrics_port, registry=REGISTRY)  # a daemon thread
        log.info("worker metrics on :%d/metrics", settings.worker_metrics_port)
    await storage.open()
    try:
        await storage.migrate()
        app = procrastinate_app(dsn)  # the worker's own pool: follow-up jobs are queued through it
        dispatcher = dispatcher_factory(storage) if dispatcher_factory is not None else None
        ctx = JobContext(settings, storage, ProcrastinateQueue(app), llm_factory=llm_factory, dispatcher=dispatcher)
        register_tasks(app, ctx, tick_s=settings.campaign_tick_s)
        async with app.open_async():
            await ensure_procrastinate_schema(app)
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
